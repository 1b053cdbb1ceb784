//! Scenario `flood`: a few calls driven far beyond 50 pps, to find what a forwarder sustains and
//! what each forwarded packet costs the machine.
//!
//! Each call has a caller and a callee endpoint (one connected UDP socket each, in their own
//! namespaces on the topology). One sender thread per side sends G.711-sized RTP packets,
//! round-robin over its calls, in sendmmsg batches: at a fixed total `rate` (spread over 1 ms
//! ticks) or, without one, as fast as it can. One receiver thread per side drains its sockets
//! with recvmmsg. Every payload carries a [`Stamp`], so loss, reordering, cross-talk and one-way
//! latency are measured exactly as in `steady`.
//!
//! The forwarder is either a relay (calls set up with offer/answer in its protocol; the
//! endpoints send to the ports it answers) or the XDP reflector, which turns each packet
//! around to its sender: the floor of what moving a packet through the topology costs.
//!
//! Measurement window: after `warmup` (latching and, with XDP, the handoff to the kernel),
//! for `duration`. CPU is counted for the whole machine minus other tenants: the relay process,
//! the generator (whose sends also pay for the kernel work they trigger in softirq, XDP
//! included) and the kernel threads, from /proc times scaled to the scheduler's runtime. The
//! relay namespace's UDP counters show how many packets still reached a userspace socket, and
//! BPF run-time statistics give the XDP programs' own cost per packet.

use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use hdrhistogram::Histogram;
use serde::Serialize;

use crate::clock::{now_ns, sleep_until_ns, tight_timer_slack};
use crate::kernel::{self, ProgRun};
use crate::meter::{Meter, WindowUsage};
use crate::payload::{PACKET_LEN, RtpPacket, Stamp, rtp_payload};
use crate::procstat;
use crate::rtpp_client::random_u32;
use crate::scenario::Progress;
use crate::signal::{CallIds, Protocol, Req, Signalling};
use crate::stats::{DirectionTotals, LatencySummary, StreamRx, latency_histogram, record};
use crate::sys::{self, Epoll, RecvBatch};
use crate::testbed::Placement;

#[derive(Debug, Clone)]
pub struct FloodOptions {
    pub calls: usize,
    /// Offered packets per second over all streams; None = as fast as the senders can.
    pub rate: Option<f64>,
    pub duration: Duration,
    pub warmup: Duration,
    /// Datagrams per sendmmsg per socket.
    pub batch: usize,
    pub drain: Duration,
    pub timeout: Duration,
    pub tries: u32,
    pub progress: bool,
}

/// What moves the packets between the endpoints.
#[derive(Debug, Clone)]
pub enum Forwarder {
    /// A relay reached at `control` in `protocol` (from the relay's namespace).
    Relay {
        protocol: Protocol,
        control: SocketAddr,
        pid: Option<u32>,
    },
    /// The XDP reflector on the relay's devices: each side's packets come back to it.
    Reflector,
}

/// An XDP program watched during the window.
#[derive(Debug, Clone, Serialize)]
pub struct ProgWindow {
    pub device: String,
    pub id: u32,
    #[serde(flatten)]
    pub run: ProgRun,
    pub ns_per_run: Option<f64>,
}

/// Machine CPU during the window, s.
#[derive(Debug, Clone, Default, Serialize)]
pub struct FloodCpu {
    pub relay_s: f64,
    pub generator_s: f64,
    /// Kernel threads (ksoftirqd, kworkers, threaded NAPI): deferred softirq work lands here.
    pub kernel_threads_s: f64,
    /// relay + generator + kernel threads.
    pub total_s: f64,
    /// total / packets delivered in the window, ns.
    pub ns_per_delivered_packet: Option<f64>,
    /// Everything else on the machine (other tenants): the numbers are clean when this is ~0.
    pub other_processes_s: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct FloodDirection {
    pub direction: &'static str,
    #[serde(flatten)]
    pub totals: DirectionTotals,
}

#[derive(Debug, Clone, Serialize)]
pub struct FloodResult {
    pub calls: usize,
    pub forwarder: String,
    pub rate_requested_pps: Option<f64>,
    pub batch: usize,
    pub window_s: f64,
    /// Packets the generator handed to the kernel per second, in the window.
    pub sent_pps: f64,
    /// Packets the endpoints received per second, in the window.
    pub delivered_pps: f64,
    /// Over the whole run (warmup included); the reflector's directions are "caller->caller"
    /// and "callee->callee".
    pub directions: Vec<FloodDirection>,
    /// One-way latency of both directions together: (quantile, us) at fixed quantiles, for
    /// CDF charts.
    pub latency_cdf_us: Vec<(f64, f64)>,
    /// Datagrams that reached a userspace socket in the relay's namespace during the window
    /// (0 when the kernel forwards everything). Topology only.
    pub relay_userspace_datagrams: Option<u64>,
    /// Datagrams the endpoints' sockets dropped for want of buffer (generator-side loss).
    pub endpoint_rcvbuf_errors: u64,
    pub send_errors: u64,
    pub xdp_programs: Vec<ProgWindow>,
    pub cpu: FloodCpu,
    pub usage: WindowUsage,
}

/// One endpoint socket and the streams it sends and expects.
struct Endpoint {
    socket: UdpSocket,
    sends: u32,
    expects: u32,
}

/// Counters shared between the threads and the main thread.
#[derive(Default)]
struct Shared {
    stop_send: AtomicBool,
    stop_recv: AtomicBool,
    sent: AtomicU64,
    received: AtomicU64,
    send_errors: AtomicU64,
}

struct StopOnDrop(Arc<Shared>);

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        self.0.stop_send.store(true, Ordering::Relaxed);
        self.0.stop_recv.store(true, Ordering::Relaxed);
    }
}

struct SideResult {
    rx: Vec<StreamRx>,
    misrouted: u64,
    foreign: u64,
    latency: Histogram<u64>,
}

/// Runs the scenario. `progs` are the XDP programs to account (device, program id); BPF
/// run-time statistics are switched on for the run when there are any.
pub fn run(
    forwarder: &Forwarder,
    place: &Placement,
    progs: &[(String, u32)],
    o: &FloodOptions,
) -> Result<FloodResult> {
    if o.calls == 0 || o.batch == 0 {
        bail!("flood needs at least one call and a batch of at least one packet");
    }
    let (callers, callees) = open_endpoints(forwarder, place, o)?;
    let shared = Arc::new(Shared::default());
    // An error return below must not leave the threads flooding (compare goes on to the next
    // case): they stop when this goes out of scope, whichever way.
    let _stop = StopOnDrop(shared.clone());
    let per_side_rate = o.rate.map(|r| r / 2.0);

    let bpf_stats = if progs.is_empty() {
        None
    } else {
        Some(kernel::BpfStats::enable()?)
    };
    let mut receivers = Vec::new();
    let mut senders = Vec::new();
    // The sockets live until the receivers are done with their fds.
    let sides = [Arc::new(callers), Arc::new(callees)];
    for (side, eps) in sides.iter().enumerate() {
        let eps = eps.clone();
        let fds = fds(&eps);
        let expects: Vec<u32> = eps.iter().map(|e| e.expects).collect();
        let rx_shared = shared.clone();
        let rx_fds = fds.clone();
        let calls = o.calls;
        receivers.push(
            std::thread::Builder::new()
                .name(format!("flood-rx{side}"))
                .spawn(move || receive(&rx_fds, &expects, calls, &rx_shared))?,
        );
        let tx_shared = shared.clone();
        let batch = o.batch;
        senders.push(
            std::thread::Builder::new()
                .name(format!("flood-tx{side}"))
                .spawn(move || send(&eps, per_side_rate, batch, &tx_shared))?,
        );
    }

    std::thread::sleep(o.warmup);
    let snmp = |ns: Option<&str>| Placement::run_in(ns, kernel::udp_snmp);
    let relay_rx = |ns: &Option<String>| -> Result<Option<u64>> {
        Ok(match ns {
            Some(ns) => snmp(Some(ns))?.get("InDatagrams").copied(),
            None => None,
        })
    };
    let rcvbuf_errors = || -> Result<u64> {
        let mut n = snmp(place.caller_ns.as_deref())?
            .get("RcvbufErrors")
            .copied()
            .unwrap_or(0);
        if place.callee_ns != place.caller_ns {
            n += snmp(place.callee_ns.as_deref())?
                .get("RcvbufErrors")
                .copied()
                .unwrap_or(0);
        }
        Ok(n)
    };
    let read_progs = || -> Result<Vec<ProgRun>> {
        progs
            .iter()
            .map(|(_, id)| Ok(ProgRun::read(*id)?))
            .collect()
    };
    let relay_pid = match forwarder {
        Forwarder::Relay { pid, .. } => *pid,
        Forwarder::Reflector => None,
    };

    // Window.
    let kthreads = procstat::kthread_pids();
    let progs_before = read_progs()?;
    let relay_rx_before = relay_rx(&place.relay_ns)?;
    let rcvbuf_before = rcvbuf_errors()?;
    let kthread_ticks = procstat::ticks_of(&kthreads);
    let meter = Meter::start(relay_pid);
    let (sent0, recv0, t0) = (
        shared.sent.load(Ordering::Relaxed),
        shared.received.load(Ordering::Relaxed),
        now_ns(),
    );
    let mut progress = Progress::new(o.progress, 1_000_000_000);
    let end = t0 + o.duration.as_nanos() as u64;
    while now_ns() < end {
        sleep_until_ns((now_ns() + 100_000_000).min(end));
        let (s, r) = (
            shared.sent.load(Ordering::Relaxed),
            shared.received.load(Ordering::Relaxed),
        );
        progress.tick(|t| {
            format!(
                "{t:.0} s: sent {:.0} pps, delivered {:.0} pps",
                (s - sent0) as f64 / t,
                (r - recv0) as f64 / t
            )
        });
    }
    let (sent1, recv1, t1) = (
        shared.sent.load(Ordering::Relaxed),
        shared.received.load(Ordering::Relaxed),
        now_ns(),
    );
    let usage = meter.finish();
    let kthread_ticks = procstat::ticks_of(&kthreads).saturating_sub(kthread_ticks);
    let relay_rx_after = relay_rx(&place.relay_ns)?;
    let progs_after = read_progs()?;
    let rcvbuf_after = rcvbuf_errors()?;
    drop(bpf_stats);

    shared.stop_send.store(true, Ordering::Relaxed);
    let mut sent_per_side = Vec::new();
    for s in senders {
        sent_per_side.push(
            s.join()
                .map_err(|_| anyhow::anyhow!("sender thread panicked"))??,
        );
    }
    std::thread::sleep(o.drain);
    shared.stop_recv.store(true, Ordering::Relaxed);
    let mut rx_per_side = Vec::new();
    for r in receivers {
        rx_per_side.push(
            r.join()
                .map_err(|_| anyhow::anyhow!("receiver thread panicked"))??,
        );
    }

    drop(sides);

    // Streams: 2i = caller's, 2i + 1 = callee's. Side 0 sends the even ones; which side
    // receives them depends on the forwarder.
    let reflect = matches!(forwarder, Forwarder::Reflector);
    let names: [&'static str; 2] = if reflect {
        ["caller->caller", "callee->callee"]
    } else {
        ["caller->callee", "callee->caller"]
    };
    let mut directions = Vec::new();
    for (dir, name) in names.into_iter().enumerate() {
        let rx_side = if reflect { dir } else { 1 - dir };
        let side = &rx_per_side[rx_side];
        let mut totals = DirectionTotals::default();
        for (call, &sent) in sent_per_side[dir].iter().enumerate() {
            totals.add_stream(sent, &side.rx[2 * call + dir]);
        }
        totals.misrouted = side.misrouted;
        totals.foreign = side.foreign;
        totals.latency = LatencySummary::of(&side.latency);
        directions.push(FloodDirection {
            direction: name,
            totals,
        });
    }

    let mut all = latency_histogram();
    for side in &rx_per_side {
        // Same bounds and precision: adding cannot fail.
        let _ = all.add(&side.latency);
    }
    let latency_cdf_us = cdf_points(&all);
    let window_s = (t1 - t0) as f64 / 1e9;
    let delivered = recv1 - recv0;
    let tck = procstat::clk_tck() as f64;
    let relay_s = usage.relay_cpu.as_ref().map_or(0.0, |c| c.total_s);
    let generator_s = usage.generator_cpu.as_ref().map_or(0.0, |c| c.total_s);
    let kernel_threads_s = kthread_ticks as f64 / tck;
    let total_s = relay_s + generator_s + kernel_threads_s;
    let cpu = FloodCpu {
        relay_s,
        generator_s,
        kernel_threads_s,
        total_s,
        ns_per_delivered_packet: (delivered > 0).then(|| total_s * 1e9 / delivered as f64),
        other_processes_s: usage.other_processes_cpu_s,
    };
    let xdp_programs = progs
        .iter()
        .zip(progs_before.iter().zip(&progs_after))
        .map(|((device, id), (a, b))| {
            let run = a.delta(b);
            ProgWindow {
                device: device.clone(),
                id: *id,
                run,
                ns_per_run: run.ns_per_run(),
            }
        })
        .collect();

    if let Forwarder::Relay {
        protocol, control, ..
    } = forwarder
    {
        delete_calls(*protocol, *control, place, o)?;
    }
    Ok(FloodResult {
        calls: o.calls,
        forwarder: match forwarder {
            Forwarder::Relay { .. } => "relay".into(),
            Forwarder::Reflector => "xdp reflector".into(),
        },
        rate_requested_pps: o.rate,
        batch: o.batch,
        window_s,
        sent_pps: (sent1 - sent0) as f64 / window_s,
        delivered_pps: delivered as f64 / window_s,
        directions,
        latency_cdf_us,
        relay_userspace_datagrams: match (relay_rx_before, relay_rx_after) {
            (Some(a), Some(b)) => Some(b.saturating_sub(a)),
            _ => None,
        },
        endpoint_rcvbuf_errors: rcvbuf_after.saturating_sub(rcvbuf_before),
        send_errors: shared.send_errors.load(Ordering::Relaxed),
        xdp_programs,
        cpu,
        usage,
    })
}

/// Quantiles a latency CDF is drawn through.
const CDF_QUANTILES: [f64; 14] = [
    0.0, 0.1, 0.25, 0.5, 0.75, 0.9, 0.95, 0.98, 0.99, 0.995, 0.999, 0.9995, 0.9999, 1.0,
];

/// (quantile, us) points of `h` (none when empty).
pub fn cdf_points(h: &Histogram<u64>) -> Vec<(f64, f64)> {
    if h.is_empty() {
        return Vec::new();
    }
    CDF_QUANTILES
        .iter()
        .map(|&q| (q, h.value_at_quantile(q) as f64 / 1000.0))
        .collect()
}

fn fds(eps: &[Endpoint]) -> Vec<i32> {
    eps.iter().map(|e| e.socket.as_raw_fd()).collect()
}

fn call_id(call: usize) -> String {
    format!("flood-{}-{call}", std::process::id())
}

/// Binds the endpoints in their namespaces, sets the calls up and connects each socket to
/// where it must send.
fn open_endpoints(
    forwarder: &Forwarder,
    place: &Placement,
    o: &FloodOptions,
) -> Result<(Vec<Endpoint>, Vec<Endpoint>)> {
    let bind = |ns: Option<&str>, ip: IpAddr| -> Result<Vec<UdpSocket>> {
        Placement::run_in(ns, || {
            (0..o.calls)
                .map(|_| {
                    let s = UdpSocket::bind(SocketAddr::new(ip, 0))?;
                    // Bursts of a flood must not overflow the generator's own sockets.
                    sys::set_recv_buffer(s.as_raw_fd(), 8 << 20)?;
                    Ok(s)
                })
                .collect::<std::io::Result<Vec<_>>>()
        })?
        .context("binding endpoint sockets")
    };
    let caller = bind(place.caller_ns.as_deref(), place.caller_ip)?;
    let callee = bind(place.callee_ns.as_deref(), place.callee_ip)?;
    let mut callers = Vec::new();
    let mut callees = Vec::new();
    match forwarder {
        Forwarder::Reflector => {
            // Any port will do: the reflector answers every UDP packet.
            for (call, (a, b)) in caller.into_iter().zip(callee).enumerate() {
                let port = 40_000 + call as u16;
                a.connect(SocketAddr::new(place.relay_ip_for_caller, port))?;
                b.connect(SocketAddr::new(place.relay_ip_for_callee, port))?;
                let (even, odd) = ((2 * call) as u32, (2 * call + 1) as u32);
                callers.push(Endpoint {
                    socket: a,
                    sends: even,
                    expects: even,
                });
                callees.push(Endpoint {
                    socket: b,
                    sends: odd,
                    expects: odd,
                });
            }
        }
        Forwarder::Relay {
            protocol, control, ..
        } => {
            let mut signalling = Placement::run_in(place.relay_ns.as_deref(), || {
                Signalling::connect(*protocol, *control, o.timeout, o.tries)
            })??;
            for (call, (a, b)) in caller.into_iter().zip(callee).enumerate() {
                let id = call_id(call);
                let ids = ids(&id);
                let offer = signalling
                    .call(Req::Offer(ids, a.local_addr()?))?
                    .result
                    .with_context(|| format!("offer for call {call}"))?;
                let for_callee = offer
                    .media_addr(place.relay_ip_for_caller)
                    .with_context(|| format!("offer reply for call {call}"))?;
                let answer = signalling
                    .call(Req::Answer(ids, b.local_addr()?))?
                    .result
                    .with_context(|| format!("answer for call {call}"))?;
                let for_caller = answer
                    .media_addr(place.relay_ip_for_caller)
                    .with_context(|| format!("answer reply for call {call}"))?;
                a.connect(for_caller)?;
                b.connect(for_callee)?;
                let (even, odd) = ((2 * call) as u32, (2 * call + 1) as u32);
                callers.push(Endpoint {
                    socket: a,
                    sends: even,
                    expects: odd,
                });
                callees.push(Endpoint {
                    socket: b,
                    sends: odd,
                    expects: even,
                });
            }
        }
    }
    Ok((callers, callees))
}

fn ids(call_id: &str) -> CallIds<'_> {
    CallIds {
        call_id,
        from_tag: "ft",
        to_tag: "tt",
    }
}

fn delete_calls(
    protocol: Protocol,
    control: SocketAddr,
    place: &Placement,
    o: &FloodOptions,
) -> Result<()> {
    let mut signalling = Placement::run_in(place.relay_ns.as_deref(), || {
        Signalling::connect(protocol, control, o.timeout, o.tries)
    })??;
    for call in 0..o.calls {
        let id = call_id(call);
        signalling
            .call(Req::Delete(ids(&id)))?
            .result
            .and_then(|r| r.delete_ok())
            .with_context(|| format!("delete for call {call}"))?;
    }
    Ok(())
}

/// One side's sender: round-robin over its endpoints, `batch` packets per sendmmsg, paced to
/// `rate` (per second, this side) in 1 ms ticks, or unpaced. Returns packets sent per call.
fn send(
    eps: &[Endpoint],
    rate: Option<f64>,
    batch: usize,
    shared: &Shared,
) -> std::io::Result<Vec<u64>> {
    tight_timer_slack();
    let mut packets: Vec<RtpPacket> = eps
        .iter()
        .map(|e| RtpPacket::new(e.sends, random_u32(), random_u32() as u16, random_u32()))
        .collect();
    let mut bufs = vec![[0u8; PACKET_LEN]; batch];
    let start = now_ns();
    let mut tick = start;
    let mut sent_total: u64 = 0;
    let mut first = 0;
    // Bounded: the main thread stops us after warmup + window; a day of 1 ms ticks is the
    // hard cap should it never do so.
    for _ in 0..86_400_000u64 {
        if shared.stop_send.load(Ordering::Relaxed) {
            break;
        }
        let mut due = match rate {
            Some(r) => {
                tick += 1_000_000;
                sleep_until_ns(tick);
                let target = ((now_ns() - start) as f64 * r / 1e9) as u64;
                target.saturating_sub(sent_total)
            }
            None => (batch * eps.len()) as u64,
        };
        // Spread what is due evenly over the calls (the first ones in rotation get the
        // remainder), at most `batch` per socket per sendmmsg.
        while due > 0 {
            let n = eps.len() as u64;
            for i in 0..eps.len() {
                let j = (first + i) % eps.len();
                let share = due.div_ceil(n - i as u64);
                let k = (share as usize).min(batch);
                if k == 0 {
                    continue;
                }
                let (ep, pkt) = (&eps[j], &mut packets[j]);
                let now = now_ns();
                for buf in bufs.iter_mut().take(k) {
                    buf.copy_from_slice(pkt.next(now));
                }
                let slices: Vec<&[u8]> = bufs[..k].iter().map(|b| &b[..]).collect();
                let sent = match sys::send_batch(ep.socket.as_raw_fd(), &slices) {
                    Ok(sent) => sent,
                    Err(_) => {
                        shared.send_errors.fetch_add(1, Ordering::Relaxed);
                        0
                    }
                };
                for _ in sent..k {
                    pkt.undo();
                }
                sent_total += sent as u64;
                shared.sent.fetch_add(sent as u64, Ordering::Relaxed);
                due -= k as u64;
            }
            first = (first + 1) % eps.len();
        }
    }
    Ok(packets.iter().map(|p| p.count()).collect())
}

/// One side's receiver: drains its sockets (epoll + recvmmsg) until told to stop.
fn receive(
    fds: &[i32],
    expects: &[u32],
    calls: usize,
    shared: &Shared,
) -> std::io::Result<SideResult> {
    let mut epoll = Epoll::new(fds.len())?;
    for (i, fd) in fds.iter().enumerate() {
        epoll.add(*fd, i as u64)?;
    }
    let mut batch = RecvBatch::new(64);
    let mut result = SideResult {
        rx: vec![StreamRx::default(); 2 * calls],
        misrouted: 0,
        foreign: 0,
        latency: latency_histogram(),
    };
    let mut ready = Vec::with_capacity(fds.len());
    // Bounded: 10 ms waits, a day at most.
    for _ in 0..8_640_000u32 {
        if shared.stop_recv.load(Ordering::Relaxed) {
            break;
        }
        ready.clear();
        ready.extend(epoll.wait(10)?);
        for &token in &ready {
            let i = token as usize;
            loop {
                let n = batch.recv(fds[i])?;
                if n == 0 {
                    break;
                }
                let now = now_ns();
                for j in 0..n {
                    match Stamp::decode(rtp_payload(batch.get(j))) {
                        Some(s) if s.stream == expects[i] => {
                            if let Some(rx) = result.rx.get_mut(s.stream as usize) {
                                rx.on_packet(s.seq);
                            }
                            record(&mut result.latency, now.saturating_sub(s.sent_ns));
                        }
                        Some(_) => result.misrouted += 1,
                        None => result.foreign += 1,
                    }
                }
                shared.received.fetch_add(n as u64, Ordering::Relaxed);
            }
        }
    }
    Ok(result)
}
