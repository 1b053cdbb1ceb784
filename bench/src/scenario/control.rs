//! Scenario `control`: offer + answer + delete cycles, as a SIP proxy would send them for
//! calls that are set up and torn down at once (no media).
//!
//! `concurrency` cycles are in flight at any time on one UDP socket (one client thread,
//! sendmmsg/recvmmsg, requests matched by cookie). Without `rate` the load is closed-loop: a
//! slot starts its next cycle as soon as the previous one ends, which measures throughput.
//! With `rate` cycles start on a fixed schedule (open loop, at most `concurrency` in flight);
//! then the cycle latency is also measured from the *scheduled* start, so a stalled relay is
//! not hidden by the generator waiting for it (coordinated omission).
//!
//! Per cycle, in the rtpproxy protocol: `Uc0,8 CALLID 127.0.0.1 40000 FROMTAG;1`, `Lc0 CALLID
//! 127.0.0.1 40002 FROMTAG;1 TOTAG;1`, `D CALLID FROMTAG TOTAG`; in rtpengine's ng protocol the
//! same as offer (caller SDP on port 40000), answer (callee SDP on 40002) and delete (both
//! tags), see [`crate::signal`]. A refused offer ends the cycle; after any other failure the
//! delete is still sent so the relay does not keep the session.

use std::collections::BTreeMap;
use std::io;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

use hdrhistogram::Histogram;
use serde::Serialize;

use crate::clock::{now_ns, thread_cpu_ns};
use crate::meter::{Meter, TimerProbe, WindowUsage};
use crate::rtpp_client::{PipelineStats, random_u32};
use crate::scenario::Progress;
use crate::signal::{CallIds, Completion, Protocol, Req, SignalError, Signalling};
use crate::stats::{LatencySummary, latency_histogram, record};

#[derive(Debug, Clone)]
pub struct ControlOptions {
    pub concurrency: usize,
    pub duration: Option<Duration>,
    pub cycles: Option<u64>,
    pub rate: Option<f64>,
    pub timeout: Duration,
    pub tries: u32,
    pub progress: bool,
    /// gRPC target only: which client library drives it.
    pub grpc_client: GrpcClient,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum GrpcClient {
    /// Unary calls framed directly on an `h2` connection (`crate::grpc_h2`).
    #[default]
    H2,
    /// tonic's generated client over a `Channel`.
    Tonic,
}

impl ControlOptions {
    /// A run needs an end: a duration or a cycle count.
    pub fn check(&self) -> io::Result<()> {
        if self.duration.is_none() && self.cycles.is_none() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "control: give --duration or --cycles",
            ));
        }
        Ok(())
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct ControlLatency {
    pub offer: LatencySummary,
    pub answer: LatencySummary,
    pub delete: LatencySummary,
    pub cycle: LatencySummary,
    /// Rate mode: from the cycle's scheduled start to its end.
    pub cycle_from_schedule: Option<LatencySummary>,
}

#[derive(Debug, Clone, Serialize)]
pub struct ControlResult {
    pub cycles_started: u64,
    pub cycles_ok: u64,
    pub cycles_failed: u64,
    pub elapsed_s: f64,
    pub cycles_per_s: f64,
    pub commands_per_s: f64,
    pub latency: ControlLatency,
    /// "U:E71" -> count, "L:timeout" -> count, ...
    pub errors: BTreeMap<String, u64>,
    pub retries: u64,
    pub client: PipelineStats,
    /// CPU of the client thread / wall time, % of one core.
    pub client_thread_cpu_percent: f64,
    /// Rate mode: the largest delay between a cycle's scheduled and actual start, us.
    pub max_start_delay_us: Option<f64>,
    /// Cycles still in flight when the run had to give up waiting for them.
    pub abandoned: u64,
    pub usage: WindowUsage,
    /// Wake-up lateness of a 1 ms sleeper thread during the run: the machine's scheduling
    /// noise floor.
    pub timer_probe: Option<LatencySummary>,
    /// Cycles slower than 2 ms, and how many separate bursts (more than 50 ms apart) they
    /// form; `slow_cycles` lists the first 2000 as (ms into the run, cycle latency us).
    pub slow_cycle_count: u64,
    pub slow_cycle_bursts: usize,
    pub slow_cycles: Vec<(f64, f64)>,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Phase {
    Idle,
    Offer,
    Answer,
    Delete,
}

#[derive(Clone, Copy)]
struct Slot {
    phase: Phase,
    cycle: u64,
    started_ns: u64,
    scheduled_ns: u64,
    failed: bool,
}

struct Run {
    run_id: u32,
    media_ip: IpAddr,
    h_offer: Histogram<u64>,
    h_answer: Histogram<u64>,
    h_delete: Histogram<u64>,
    h_cycle: Histogram<u64>,
    h_sched: Histogram<u64>,
    errors: BTreeMap<String, u64>,
    retries: u64,
    ok: u64,
    failed: u64,
    t0: u64,
    slow: Vec<(f64, f64)>,
    slow_count: u64,
}

/// Cycles slower than this are listed (time into the run, latency) to show whether the tail
/// comes in bursts (stalls) or is spread out.
const SLOW_CYCLE_NS: u64 = 2_000_000;
const SLOW_LIST_MAX: usize = 2000;

/// Groups slow-cycle start times (ms) into bursts separated by more than `gap_ms`.
pub fn bursts(times_ms: &[f64], gap_ms: f64) -> usize {
    let mut n = 0;
    let mut last: Option<f64> = None;
    for &t in times_ms {
        if last.is_none_or(|l| t - l > gap_ms) {
            n += 1;
        }
        last = Some(t);
    }
    n
}

impl Run {
    fn ids(&self, cycle: u64) -> (String, String, String) {
        (
            format!("bench-{:08x}-{cycle}", self.run_id),
            format!("f{cycle}"),
            format!("t{cycle}"),
        )
    }

    fn error(&mut self, cmd: &str, e: &SignalError) {
        *self
            .errors
            .entry(format!("{cmd}:{}", e.label()))
            .or_default() += 1;
    }

    /// Handles a completion for `slot`; may submit the slot's next command.
    fn on_completion(&mut self, p: &mut Signalling, slot: &mut Slot, c: Completion, rate: bool) {
        self.retries += c.retries as u64;
        let tag = c.tag;
        let (call, from, to) = self.ids(slot.cycle);
        let ids = CallIds {
            call_id: &call,
            from_tag: &from,
            to_tag: &to,
        };
        match slot.phase {
            Phase::Offer => {
                let outcome = c.result.and_then(|b| b.media_addr(self.media_ip));
                match outcome {
                    Ok(_) => record(&mut self.h_offer, c.latency_ns),
                    Err(e) => {
                        self.error("U", &e);
                        slot.failed = true;
                        if e.refused() {
                            // The relay refused: there is no session to delete.
                            self.failed += 1;
                            slot.phase = Phase::Idle;
                            return;
                        }
                        slot.phase = Phase::Delete;
                        p.submit(tag, Req::Delete(ids));
                        return;
                    }
                }
                slot.phase = Phase::Answer;
                p.submit(tag, Req::Answer(ids, SocketAddr::new(self.media_ip, 40002)));
            }
            Phase::Answer => {
                match c.result.and_then(|b| b.media_addr(self.media_ip)) {
                    Ok(_) => record(&mut self.h_answer, c.latency_ns),
                    Err(e) => {
                        self.error("L", &e);
                        slot.failed = true;
                    }
                }
                slot.phase = Phase::Delete;
                p.submit(tag, Req::Delete(ids));
            }
            Phase::Delete => {
                match c.result.and_then(|b| b.delete_ok()) {
                    Ok(()) => record(&mut self.h_delete, c.latency_ns),
                    Err(e) => {
                        self.error("D", &e);
                        slot.failed = true;
                    }
                }
                let now = now_ns();
                if slot.failed {
                    self.failed += 1;
                } else {
                    self.ok += 1;
                    let took = now.saturating_sub(slot.started_ns);
                    record(&mut self.h_cycle, took);
                    if took > SLOW_CYCLE_NS {
                        self.slow_count += 1;
                        if self.slow.len() < SLOW_LIST_MAX {
                            self.slow.push((
                                slot.started_ns.saturating_sub(self.t0) as f64 / 1e6,
                                took as f64 / 1e3,
                            ));
                        }
                    }
                    if rate {
                        record(&mut self.h_sched, now.saturating_sub(slot.scheduled_ns));
                    }
                }
                slot.phase = Phase::Idle;
            }
            Phase::Idle => {}
        }
    }
}

/// Runs the scenario against the control listener at `relay`, speaking `protocol`.
pub fn run(
    relay: SocketAddr,
    protocol: Protocol,
    relay_pid: Option<u32>,
    o: &ControlOptions,
) -> io::Result<ControlResult> {
    o.check()?;
    crate::clock::tight_timer_slack();
    let mut p = Signalling::connect(protocol, relay, o.timeout, o.tries)?;
    let media_ip = if relay.is_ipv4() {
        IpAddr::V4(Ipv4Addr::LOCALHOST)
    } else {
        IpAddr::V6(std::net::Ipv6Addr::LOCALHOST)
    };
    let mut run = Run {
        run_id: random_u32(),
        media_ip,
        h_offer: latency_histogram(),
        h_answer: latency_histogram(),
        h_delete: latency_histogram(),
        h_cycle: latency_histogram(),
        h_sched: latency_histogram(),
        errors: BTreeMap::new(),
        retries: 0,
        ok: 0,
        failed: 0,
        t0: 0,
        slow: Vec::new(),
        slow_count: 0,
    };
    let concurrency = o.concurrency.max(1);
    let mut slots = vec![
        Slot {
            phase: Phase::Idle,
            cycle: 0,
            started_ns: 0,
            scheduled_ns: 0,
            failed: false,
        };
        concurrency
    ];
    let interval_ns = o.rate.map(|r| (1e9 / r.max(1e-3)) as u64);
    let mut progress = Progress::new(o.progress, 1_000_000_000);
    let probe = TimerProbe::start();
    let meter = Meter::start(relay_pid);
    let cpu0 = thread_cpu_ns();
    let t0 = now_ns();
    run.t0 = t0;
    let deadline = o.duration.map(|d| t0 + d.as_nanos() as u64);
    let mut started: u64 = 0;
    let mut max_start_delay: u64 = 0;
    let mut stop_starting_at: Option<u64> = None;
    let give_up_ns = p.give_up_after().as_nanos() as u64 * 3 + 1_000_000_000;
    let mut abandoned = 0;
    let mut out: Vec<Completion> = Vec::with_capacity(256);
    let mut idle: Vec<usize> = (0..concurrency).rev().collect();
    loop {
        let now = now_ns();
        // Start cycles.
        if stop_starting_at.is_none() {
            let limit_hit = o.cycles.is_some_and(|n| started >= n);
            let time_up = deadline.is_some_and(|d| now >= d);
            if limit_hit || time_up {
                stop_starting_at = Some(now);
            }
        }
        if stop_starting_at.is_none() {
            while let Some(&s) = idle.last() {
                if o.cycles.is_some_and(|n| started >= n) {
                    break;
                }
                let scheduled = match interval_ns {
                    Some(iv) => {
                        let at = t0 + started * iv;
                        if at > now {
                            break;
                        }
                        at
                    }
                    None => now,
                };
                idle.pop();
                max_start_delay = max_start_delay.max(now - scheduled);
                let slot = &mut slots[s];
                *slot = Slot {
                    phase: Phase::Offer,
                    cycle: started,
                    started_ns: now,
                    scheduled_ns: scheduled,
                    failed: false,
                };
                let (call, from, to) = run.ids(started);
                let ids = CallIds {
                    call_id: &call,
                    from_tag: &from,
                    to_tag: &to,
                };
                p.submit(s as u64, Req::Offer(ids, SocketAddr::new(media_ip, 40000)));
                started += 1;
            }
        } else if p.in_flight() == 0 {
            break;
        } else if stop_starting_at.is_some_and(|at| now - at > give_up_ns) {
            abandoned = p.in_flight() as u64;
            break;
        }
        // Wait for replies: until the next scheduled start when a slot is free for it.
        let wait = match interval_ns {
            Some(iv) if !idle.is_empty() && stop_starting_at.is_none() => {
                (t0 + started * iv).saturating_sub(now_ns())
            }
            _ => 50_000_000,
        };
        out.clear();
        p.poll(wait, &mut out)?;
        for c in out.drain(..) {
            let s = c.tag as usize;
            let slot = &mut slots[s];
            run.on_completion(&mut p, slot, c, interval_ns.is_some());
            if slot.phase == Phase::Idle {
                idle.push(s);
            }
        }
        progress.tick(|t| {
            format!(
                "{t:5.1}s  cycles ok {}  failed {}  in flight {}",
                run.ok,
                run.failed,
                p.in_flight()
            )
        });
    }
    let end = now_ns();
    let usage = meter.finish();
    let timer_probe = probe.finish();
    let cpu = thread_cpu_ns() - cpu0;
    let elapsed_s = (end - t0) as f64 / 1e9;
    Ok(ControlResult {
        cycles_started: started,
        cycles_ok: run.ok,
        cycles_failed: run.failed,
        elapsed_s,
        cycles_per_s: run.ok as f64 / elapsed_s,
        commands_per_s: p.stats().requests as f64 / elapsed_s,
        latency: ControlLatency {
            offer: LatencySummary::of(&run.h_offer),
            answer: LatencySummary::of(&run.h_answer),
            delete: LatencySummary::of(&run.h_delete),
            cycle: LatencySummary::of(&run.h_cycle),
            cycle_from_schedule: interval_ns.map(|_| LatencySummary::of(&run.h_sched)),
        },
        errors: run.errors,
        retries: run.retries,
        client: p.stats(),
        client_thread_cpu_percent: 100.0 * cpu as f64 / (end - t0) as f64,
        max_start_delay_us: interval_ns.map(|_| max_start_delay as f64 / 1000.0),
        abandoned,
        usage,
        timer_probe,
        slow_cycle_count: run.slow_count,
        slow_cycle_bursts: {
            let mut times: Vec<f64> = run.slow.iter().map(|s| s.0).collect();
            times.sort_by(f64::total_cmp);
            bursts(&times, 50.0)
        },
        slow_cycles: run.slow,
    })
}

#[cfg(test)]
mod tests {
    #[test]
    fn bursts_split_on_gaps() {
        assert_eq!(super::bursts(&[], 50.0), 0);
        assert_eq!(
            super::bursts(&[1.0, 2.0, 40.0, 200.0, 210.0, 900.0], 50.0),
            3
        );
    }
}
