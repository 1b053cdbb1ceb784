//! Scenario `control` against Sluice's gRPC front end (`--target sluice-grpc`): Offer + Answer +
//! Delete cycles over one HTTP/2 connection, `concurrency` cycles in flight. Closed loop unless
//! `rate`; with `rate` cycles start on a fixed schedule and latency is also measured from the
//! scheduled start (no coordinated omission), like the rtpproxy-protocol variant.

use std::collections::BTreeMap;
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Instant;

use hdrhistogram::Histogram;
use sluice_proto::v1::relay_client::RelayClient;
use sluice_proto::v1::{
    AnswerRequest, AnswerResponse, DeleteRequest, DeleteResponse, MediaStream, OfferRequest,
    OfferResponse,
};
use tonic::transport::Channel;

use super::control::{ControlLatency, ControlOptions, ControlResult, GrpcClient, bursts};
use crate::clock::{AsyncSleeper, now_ns, thread_cpu_ns, tight_timer_slack};
use crate::grpc_h2::{CallError, H2Grpc};
use crate::meter::{Meter, TimerProbe};
use crate::rtpp_client::{PipelineStats, random_u32};
use crate::stats::{LatencySummary, latency_histogram, record};

/// HTTP/2 connections to the relay.
const CONNECTIONS: usize = 4;
/// Cycles slower than this are listed (time into the run, latency), as in the rtpproxy
/// variant, to show whether the tail comes in bursts (stalls) or is spread out.
const SLOW_CYCLE_NS: u64 = 2_000_000;
const SLOW_LIST_MAX: usize = 2000;

#[derive(Default)]
struct Histograms {
    offer: Option<Histogram<u64>>,
    answer: Option<Histogram<u64>>,
    delete: Option<Histogram<u64>>,
    cycle: Option<Histogram<u64>>,
    sched: Option<Histogram<u64>>,
    ok: u64,
    failed: u64,
    errors: BTreeMap<String, u64>,
    /// (ms into the run, cycle latency us) of cycles slower than `SLOW_CYCLE_NS`.
    slow: Vec<(f64, f64)>,
    slow_count: u64,
}

impl Histograms {
    fn new() -> Histograms {
        Histograms {
            offer: Some(latency_histogram()),
            answer: Some(latency_histogram()),
            delete: Some(latency_histogram()),
            cycle: Some(latency_histogram()),
            sched: Some(latency_histogram()),
            ..Histograms::default()
        }
    }

    fn summary(h: &Option<Histogram<u64>>) -> LatencySummary {
        LatencySummary::of(h.as_ref().unwrap_or(&latency_histogram()))
    }
}

fn stream(port: u32) -> Vec<MediaStream> {
    vec![MediaStream {
        index: 1,
        address: "127.0.0.1".into(),
        rtp_port: port,
        ..Default::default()
    }]
}

/// One connection's client, of the kind `--grpc-client` chose. Calls return the failure's
/// label for the error tally.
#[derive(Clone)]
enum Client {
    Tonic(RelayClient<Channel>),
    H2(H2Grpc),
}

impl Client {
    async fn connect(kind: GrpcClient, relay: SocketAddr) -> io::Result<Client> {
        let failed = |e: &dyn std::fmt::Display| {
            io::Error::other(format!("connecting to gRPC {relay}: {e}"))
        };
        Ok(match kind {
            GrpcClient::Tonic => {
                let endpoint =
                    Channel::from_shared(format!("http://{relay}")).map_err(io::Error::other)?;
                let channel = endpoint.connect().await.map_err(|e| failed(&e))?;
                Client::Tonic(RelayClient::new(channel))
            }
            GrpcClient::H2 => Client::H2(H2Grpc::connect(relay).await.map_err(|e| failed(&e))?),
        })
    }

    async fn offer(&mut self, req: OfferRequest) -> Result<(), String> {
        match self {
            Client::Tonic(c) => tonic_outcome(c.offer(req).await),
            Client::H2(c) => h2_outcome(
                c.call::<_, OfferResponse>("/sluice.v1.Relay/Offer", &req)
                    .await,
            ),
        }
    }

    async fn answer(&mut self, req: AnswerRequest) -> Result<(), String> {
        match self {
            Client::Tonic(c) => tonic_outcome(c.answer(req).await),
            Client::H2(c) => h2_outcome(
                c.call::<_, AnswerResponse>("/sluice.v1.Relay/Answer", &req)
                    .await,
            ),
        }
    }

    async fn delete(&mut self, req: DeleteRequest) -> Result<(), String> {
        match self {
            Client::Tonic(c) => tonic_outcome(c.delete(req).await),
            Client::H2(c) => h2_outcome(
                c.call::<_, DeleteResponse>("/sluice.v1.Relay/Delete", &req)
                    .await,
            ),
        }
    }
}

/// A call's outcome as the scenario tallies it: the reply is not needed, a failure is labelled
/// by its gRPC code.
fn tonic_outcome<T>(r: Result<T, tonic::Status>) -> Result<(), String> {
    r.map(drop).map_err(|s| format!("{:?}", s.code()))
}

fn h2_outcome<T>(r: Result<T, CallError>) -> Result<(), String> {
    r.map(drop).map_err(|e| e.label())
}

fn lock(h: &Mutex<Histograms>) -> std::sync::MutexGuard<'_, Histograms> {
    h.lock().unwrap_or_else(PoisonError::into_inner)
}

fn ns(since: Instant) -> u64 {
    since.elapsed().as_nanos() as u64
}

/// Runs the scenario against the gRPC listener at `relay`.
pub fn run(
    relay: SocketAddr,
    relay_pid: Option<u32>,
    o: &ControlOptions,
) -> io::Result<ControlResult> {
    o.check()?;
    // One client thread, as for the rtpproxy variant, so client CPU compares.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    // The runtime runs on this thread (block_on): its timerfd wake-ups get the tight slack.
    tight_timer_slack();
    // Several HTTP/2 connections, as a SIP proxy with several worker processes would open: one
    // connection's frames are handled by one server task, which would serialize the load.
    let mut clients = Vec::new();
    for _ in 0..CONNECTIONS.min(o.concurrency.max(1)) {
        clients.push(rt.block_on(Client::connect(o.grpc_client, relay))?);
    }
    let run_id = random_u32();
    let started = Arc::new(AtomicU64::new(0));
    // On the ns clock of `AsyncSleeper`, as the rtpproxy variant's schedule.
    let interval_ns = o.rate.map(|r| (1e9 / r.max(1e-3)) as u64);
    // Everything a task needs is allocated before the clock starts: one set of histograms for
    // all tasks (they share this thread; 64 sets were 68 MB, zeroed and faulted in while the
    // first cycles were due, which showed as a 40 ms stall at the start of every run), and one
    // timer per task when the schedule is fixed.
    let shared = Arc::new(Mutex::new(Histograms::new()));
    let mut sleepers = {
        let _runtime = rt.enter();
        (0..o.concurrency.max(1))
            .map(|_| interval_ns.map(|_| AsyncSleeper::new()).transpose())
            .collect::<io::Result<Vec<_>>>()?
    };
    let probe = TimerProbe::start();
    let meter = Meter::start(relay_pid);
    let cpu0 = thread_cpu_ns();
    let t0 = Instant::now();
    let deadline = o.duration.map(|d| t0 + d);
    let t0_ns = now_ns();
    let limit = o.cycles;
    rt.block_on(async {
        let mut tasks = Vec::new();
        for (i, mut sleeper) in sleepers.drain(..).enumerate() {
            let mut client = clients[i % clients.len()].clone();
            let started = started.clone();
            let shared = shared.clone();
            tasks.push(tokio::spawn(async move {
                loop {
                    let n = started.fetch_add(1, Relaxed);
                    if limit.is_some_and(|l| n >= l) {
                        break;
                    }
                    let scheduled_ns = match (interval_ns, sleeper.as_mut()) {
                        (Some(iv), Some(sleeper)) => {
                            let at = t0_ns + iv * n;
                            if let Err(e) = sleeper.sleep_until_ns(at).await {
                                let mut h = lock(&shared);
                                h.failed += 1;
                                *h.errors.entry(format!("timerfd:{e}")).or_default() += 1;
                                break;
                            }
                            at
                        }
                        _ => now_ns(),
                    };
                    if deadline.is_some_and(|d| Instant::now() >= d) {
                        break;
                    }
                    let (call_id, from, to) = (
                        format!("g{run_id:08x}-{n}"),
                        format!("f{n}"),
                        format!("t{n}"),
                    );
                    let start = Instant::now();
                    let offer = client
                        .offer(OfferRequest {
                            call_id: call_id.clone(),
                            from_tag: from.clone(),
                            streams: stream(40000),
                            ..Default::default()
                        })
                        .await;
                    let offer_ns = ns(start);
                    let mut failed = offer.err().map(|e| format!("Offer:{e}"));
                    let mut answer_delete_ns = None;
                    if failed.is_none() {
                        let op = Instant::now();
                        let answer = client
                            .answer(AnswerRequest {
                                call_id: call_id.clone(),
                                from_tag: from.clone(),
                                to_tag: to.clone(),
                                streams: stream(40002),
                                ..Default::default()
                            })
                            .await;
                        let answer_ns = ns(op);
                        failed = answer.err().map(|e| format!("Answer:{e}"));
                        let op = Instant::now();
                        let delete = client
                            .delete(DeleteRequest {
                                call_id,
                                ..Default::default()
                            })
                            .await;
                        answer_delete_ns = Some((answer_ns, ns(op)));
                        if failed.is_none() {
                            failed = delete.err().map(|e| format!("Delete:{e}"));
                        }
                    }
                    let took = ns(start);
                    let mut h = lock(&shared);
                    record(h.offer.as_mut().expect("set"), offer_ns);
                    if let Some((answer_ns, delete_ns)) = answer_delete_ns {
                        record(h.answer.as_mut().expect("set"), answer_ns);
                        record(h.delete.as_mut().expect("set"), delete_ns);
                    }
                    match failed {
                        None => {
                            h.ok += 1;
                            record(h.cycle.as_mut().expect("set"), took);
                            if took > SLOW_CYCLE_NS {
                                h.slow_count += 1;
                                if h.slow.len() < SLOW_LIST_MAX {
                                    h.slow.push((
                                        start.duration_since(t0).as_secs_f64() * 1e3,
                                        took as f64 / 1e3,
                                    ));
                                }
                            }
                            if interval_ns.is_some() {
                                record(
                                    h.sched.as_mut().expect("set"),
                                    now_ns().saturating_sub(scheduled_ns),
                                );
                            }
                        }
                        Some(e) => {
                            h.failed += 1;
                            *h.errors.entry(e).or_default() += 1;
                        }
                    }
                }
            }));
        }
        for t in tasks {
            let _ = t.await;
        }
    });
    let mut total = std::mem::take(&mut *lock(&shared));
    let elapsed = t0.elapsed().as_secs_f64();
    let client_cpu = thread_cpu_ns().saturating_sub(cpu0) as f64 / 1e9;
    let usage = meter.finish();
    let timer_probe = probe.finish();
    let cycles_started = started.load(Relaxed).min(total.ok + total.failed);
    // Each task listed its own slow cycles; in time order across tasks, as the rtpproxy
    // variant reports them (the first SLOW_LIST_MAX by time).
    total.slow.sort_by(|a, b| a.0.total_cmp(&b.0));
    total.slow.truncate(SLOW_LIST_MAX);
    let slow_times: Vec<f64> = total.slow.iter().map(|s| s.0).collect();
    Ok(ControlResult {
        cycles_started,
        cycles_ok: total.ok,
        cycles_failed: total.failed,
        elapsed_s: elapsed,
        cycles_per_s: total.ok as f64 / elapsed,
        commands_per_s: 3.0 * total.ok as f64 / elapsed,
        latency: ControlLatency {
            offer: Histograms::summary(&total.offer),
            answer: Histograms::summary(&total.answer),
            delete: Histograms::summary(&total.delete),
            cycle: Histograms::summary(&total.cycle),
            cycle_from_schedule: interval_ns.map(|_| Histograms::summary(&total.sched)),
        },
        errors: total.errors,
        retries: 0,
        client: PipelineStats::default(),
        client_thread_cpu_percent: 100.0 * client_cpu / elapsed,
        max_start_delay_us: None,
        abandoned: 0,
        usage,
        timer_probe,
        slow_cycle_count: total.slow_count,
        slow_cycle_bursts: bursts(&slow_times, 50.0),
        slow_cycles: total.slow,
    })
}
