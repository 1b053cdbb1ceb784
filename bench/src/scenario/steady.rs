//! Scenario `steady`: `calls` concurrent calls with RTP both ways at `pps` (default 50, one
//! packet per 20 ms) and an RTCP sender report every `rtcp_interval` per direction.
//!
//! Each call has two endpoints, caller and callee (on 127.0.0.1, or with `--net netns` in the
//! caller and callee namespaces of the topology), each an RTP socket on an even
//! port and an RTCP socket on the next one (so the SDP address + 1 convention holds). The call
//! is set up with an offer (`U`: caller's address; the reply is where the callee sends) and an
//! answer (`L`: callee's address; the reply is where the caller sends) at `ramp` calls per
//! second, in the relay's protocol ([`crate::signal`]: rtpproxy or rtpengine ng), and its media
//! starts as soon as both replies are in. RTCP goes to the reply's RTCP port: RTP + 1 for
//! rtpproxy, the SDP's a=rtcp (else RTP + 1) for ng.
//!
//! Threads: the main thread signals and measures; `send_threads` senders, each owning a share
//! of the calls, wake `phases` times per packet period (every 1 ms at 50 pps by default) on an
//! absolute clock and send one packet per call-direction of the calls in that phase, so the load
//! is spread evenly over the period instead of in one burst; `recv_threads` receivers wait on a
//! level-triggered epoll set of their calls' sockets. Every payload carries a [`Stamp`] (stream,
//! 64-bit sequence, send time), from which the receivers count loss, reordering, duplicates and
//! cross-talk, and measure the one-way latency (receive time - send time, same clock).
//!
//! Measurement window: from the moment every call is up until `duration` later. Delivered pps,
//! CPU (relay and generator) and the "window" latency histogram cover the window; loss and the
//! other counters cover the whole run (ramp included), measured after a drain pause. At the end
//! every call is deleted.
//!
//! `direct` is a baseline without a relay: caller and callee send straight to each other, so
//! the generator's own latency and CPU floor can be told apart from the relay's.

use std::collections::BTreeMap;
use std::io;
use std::net::{IpAddr, Ipv4Addr, SocketAddr, SocketAddrV4, UdpSocket};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, OnceLock};
use std::thread::JoinHandle;
use std::time::Duration;

use hdrhistogram::Histogram;
use serde::Serialize;

use crate::clock::{now_ns, sleep_until_ns, tight_timer_slack};
use crate::meter::{Meter, WindowUsage};
use crate::ng_client::MediaAddrs;
use crate::payload::{self, RtpPacket, Stamp};
use crate::procstat::{self, MemFd};
use crate::rtpp_client::{PipelineStats, random_u32};
use crate::scenario::Progress;
use crate::signal::{CallIds, Completion, Protocol, Req, SignalError, Signalling};
use crate::stats::{DirectionTotals, LatencySummary, StreamRx, latency_histogram, record};
use crate::sys::{self, Epoll};
use crate::testbed::Placement;

#[derive(Debug, Clone)]
pub struct SteadyOptions {
    pub calls: usize,
    /// Calls set up per second during the ramp.
    pub ramp: f64,
    pub duration: Duration,
    /// Packets per second per direction.
    pub pps: u32,
    pub rtcp_interval: Duration,
    pub send_threads: usize,
    pub recv_threads: usize,
    /// Local ports for the generator's endpoints (4 per call).
    pub endpoint_ports: (u16, u16),
    /// Pause between the last packet sent and the final count.
    pub drain: Duration,
    pub timeout: Duration,
    pub tries: u32,
    pub progress: bool,
    /// Sender wakeups per packet period (20 = every 1 ms at 50 pps); the calls are spread
    /// evenly over them.
    pub phases: u64,
    /// Baseline without a relay: caller and callee send straight to each other, no signalling.
    pub direct: bool,
    /// Where the endpoints and the relay's control socket live (loopback, or the namespace
    /// topology).
    pub place: Placement,
}

/// Direction names, index = direction.
pub const DIRECTIONS: [&str; 2] = ["caller->callee", "callee->caller"];

#[derive(Debug, Clone, Serialize)]
pub struct DirectionResult {
    pub direction: &'static str,
    #[serde(flatten)]
    pub totals: DirectionTotals,
    /// Latency of packets sent inside the measurement window.
    pub window_latency: LatencySummary,
    pub loss_ratio: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct SenderHealth {
    /// How late the sender threads woke for their sub-ticks.
    pub wake_lateness: LatencySummary,
    /// Sub-ticks skipped because a sender fell more than 100 ms behind.
    pub skipped_ticks: u64,
    pub send_errors: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct SteadyResult {
    pub calls_requested: usize,
    pub calls_up: usize,
    pub direct: bool,
    pub setup_errors: BTreeMap<String, u64>,
    pub setup_retries: u64,
    pub ramp_s: f64,
    pub offer_latency: LatencySummary,
    pub answer_latency: LatencySummary,
    pub window_s: f64,
    /// RTP + RTCP packets the generator received in the window, per second.
    pub delivered_pps: f64,
    pub sent_pps: f64,
    pub directions: Vec<DirectionResult>,
    /// Relay CPU ns per packet delivered in the window.
    pub relay_cpu_ns_per_packet: Option<f64>,
    pub generator_cpu_ns_per_packet: Option<f64>,
    pub usage: WindowUsage,
    /// Relay memory/fds before any call existed, and after every call was deleted.
    pub relay_before: Option<MemFd>,
    pub relay_after_teardown: Option<MemFd>,
    pub teardown_errors: BTreeMap<String, u64>,
    pub teardown_s: f64,
    /// The control client's counters over setup and teardown.
    pub control_client: PipelineStats,
    pub sender: SenderHealth,
}

struct Endpoint {
    rtp: UdpSocket,
    rtcp: UdpSocket,
    port: u16,
}

struct CallSockets {
    caller: Endpoint,
    callee: Endpoint,
}

/// Where each side sends: the caller to the L reply, the callee to the U reply (RTP, and
/// RTCP on the `_rtcp` address).
#[derive(Debug, Clone, Copy)]
struct Route {
    caller_to: SocketAddrV4,
    callee_to: SocketAddrV4,
    caller_to_rtcp: SocketAddrV4,
    callee_to_rtcp: SocketAddrV4,
}

fn rtcp_of(a: SocketAddrV4) -> SocketAddrV4 {
    SocketAddrV4::new(*a.ip(), a.port().wrapping_add(1))
}

/// Binds `n` endpoint pairs (RTP even port, RTCP the next) on `ip` in `range`, skipping taken
/// ports.
fn bind_endpoints(n: usize, range: (u16, u16), ip: Ipv4Addr) -> io::Result<Vec<Endpoint>> {
    let mut out = Vec::with_capacity(n);
    let mut port = range.0 + range.0 % 2;
    while out.len() < n {
        if port >= range.1 {
            return Err(io::Error::new(
                io::ErrorKind::AddrNotAvailable,
                format!(
                    "only {} of {n} endpoint port pairs free in {}-{} (use --endpoint-ports)",
                    out.len(),
                    range.0,
                    range.1
                ),
            ));
        }
        let bind = |p: u16| UdpSocket::bind(SocketAddrV4::new(ip, p));
        match (bind(port), bind(port + 1)) {
            (Ok(rtp), Ok(rtcp)) => {
                rtp.set_nonblocking(true)?;
                rtcp.set_nonblocking(true)?;
                out.push(Endpoint { rtp, rtcp, port });
            }
            // Taken by someone else: try the next pair.
            (Err(e), _) | (_, Err(e)) if e.kind() == io::ErrorKind::AddrInUse => {}
            (Err(e), _) | (_, Err(e)) => {
                return Err(io::Error::new(
                    e.kind(),
                    format!(
                        "binding endpoint {ip}:{port} ({} of {n} pairs bound): {e} \
                         (4 sockets per call: raise `ulimit -n`)",
                        out.len()
                    ),
                ));
            }
        }
        port += 2;
    }
    Ok(out)
}

/// Counters shared by all threads (progress and window rates).
#[derive(Default)]
struct Shared {
    sent: AtomicU64,
    received: AtomicU64,
    window_start_ns: AtomicU64,
    window_end_ns: AtomicU64,
    stop_send: AtomicBool,
    stop_recv: AtomicBool,
}

struct Activation {
    call: usize,
    route: Route,
}

struct SenderOut {
    /// (stream, packets sent).
    sent: Vec<(u32, u64)>,
    rtcp_sent: [u64; 2],
    lateness: Histogram<u64>,
    skipped_ticks: u64,
    send_errors: u64,
}

struct ActiveCall {
    call: usize,
    route: Route,
    packets: [RtpPacket; 2],
    ssrc: [u32; 2],
}

fn sender(
    calls: Arc<Vec<CallSockets>>,
    rx: mpsc::Receiver<Activation>,
    shared: Arc<Shared>,
    pps: u32,
    rtcp_every: u64,
    phase_seed: usize,
    phases: u64,
) -> SenderOut {
    tight_timer_slack();
    let period_ns = 1_000_000_000 / pps.max(1) as u64;
    let phases = phases.max(1);
    let sub_ns = (period_ns / phases).max(1);
    let mut buckets: Vec<Vec<ActiveCall>> = (0..phases).map(|_| Vec::new()).collect();
    let mut added: usize = phase_seed;
    let mut lateness = latency_histogram();
    let mut skipped_ticks = 0;
    let mut send_errors = 0;
    let mut rtcp_sent = [0u64; 2];
    let mut base = now_ns();
    let mut tick: u64 = 0;
    while !shared.stop_send.load(Ordering::Relaxed) {
        let deadline = base + tick * sub_ns;
        sleep_until_ns(deadline);
        let woke = now_ns();
        record(&mut lateness, woke - deadline.min(woke));
        if woke.saturating_sub(deadline) > 100_000_000 {
            // Far behind (machine stalled): do not burst to catch up; restart the clock.
            let behind = (woke - deadline) / sub_ns;
            skipped_ticks += behind;
            base = woke - tick * sub_ns;
        }
        while let Ok(a) = rx.try_recv() {
            let ssrc = [random_u32() | 1, random_u32() | 1];
            let stream = (a.call * 2) as u32;
            let r = random_u32();
            buckets[added % phases as usize].push(ActiveCall {
                call: a.call,
                route: a.route,
                packets: [
                    RtpPacket::new(stream, ssrc[0], r as u16, r),
                    RtpPacket::new(stream + 1, ssrc[1], (r >> 16) as u16, r.rotate_left(7)),
                ],
                ssrc,
            });
            added += 1;
        }
        let phase = (tick % phases) as usize;
        let mut n = 0u64;
        for ac in &mut buckets[phase] {
            let sockets = &calls[ac.call];
            for (dir, rtcp_count) in rtcp_sent.iter_mut().enumerate() {
                let (from, to, to_rtcp) = if dir == 0 {
                    (&sockets.caller, ac.route.caller_to, ac.route.caller_to_rtcp)
                } else {
                    (&sockets.callee, ac.route.callee_to, ac.route.callee_to_rtcp)
                };
                let pkt = &mut ac.packets[dir];
                let count = pkt.count();
                let sent = sys::send_to_v4(from.rtp.as_raw_fd(), pkt.next(now_ns()), to);
                if !matches!(sent, Ok(true)) {
                    // Not sent: take the packet back so the stream has no generator-side gap.
                    send_errors += 1;
                    pkt.undo();
                    continue;
                }
                n += 1;
                if (count + 1 + ac.call as u64).is_multiple_of(rtcp_every) {
                    let (_, ts) = pkt.rtp_position();
                    let sr = payload::rtcp_sr(
                        ac.ssrc[dir],
                        now_ns(),
                        ts,
                        pkt.count() as u32,
                        (pkt.count() * payload::PAYLOAD_LEN as u64) as u32,
                    );
                    match sys::send_to_v4(from.rtcp.as_raw_fd(), &sr, to_rtcp) {
                        Ok(true) => *rtcp_count += 1,
                        _ => send_errors += 1,
                    }
                }
            }
        }
        if n > 0 {
            shared.sent.fetch_add(n, Ordering::Relaxed);
        }
        tick += 1;
    }
    let sent = buckets
        .iter()
        .flatten()
        .flat_map(|ac| {
            [
                ((ac.call * 2) as u32, ac.packets[0].count()),
                ((ac.call * 2 + 1) as u32, ac.packets[1].count()),
            ]
        })
        .collect();
    SenderOut {
        sent,
        rtcp_sent,
        lateness,
        skipped_ticks,
        send_errors,
    }
}

struct ReceiverOut {
    streams: Vec<(u32, StreamRx)>,
    totals: [DirectionTotals; 2],
    latency: [Histogram<u64>; 2],
    window_latency: [Histogram<u64>; 2],
}

fn receiver(
    calls: Arc<Vec<CallSockets>>,
    routes: Arc<Vec<OnceLock<Route>>>,
    mine: Vec<usize>,
    shared: Arc<Shared>,
) -> io::Result<ReceiverOut> {
    let mut ep = Epoll::new(1024)?;
    for &c in &mine {
        let s = &calls[c];
        let base = (c as u64) << 2;
        ep.add(s.caller.rtp.as_raw_fd(), base)?;
        ep.add(s.caller.rtcp.as_raw_fd(), base | 1)?;
        ep.add(s.callee.rtp.as_raw_fd(), base | 2)?;
        ep.add(s.callee.rtcp.as_raw_fd(), base | 3)?;
    }
    // Dense per-stream state for this thread's calls.
    let mut index = vec![u32::MAX; calls.len()];
    for (i, &c) in mine.iter().enumerate() {
        index[c] = i as u32;
    }
    let mut rx: Vec<[StreamRx; 2]> = vec![Default::default(); mine.len()];
    let mut totals: [DirectionTotals; 2] = Default::default();
    let mut lat = [latency_histogram(), latency_histogram()];
    let mut wlat = [latency_histogram(), latency_histogram()];
    let mut buf = [0u8; 2048];
    let mut ready: Vec<u64> = Vec::with_capacity(1024);
    let mut final_sweeps = 0;
    loop {
        let stopping = shared.stop_recv.load(Ordering::Relaxed);
        ready.clear();
        ready.extend(ep.wait(if stopping { 0 } else { 20 })?);
        if stopping && ready.is_empty() {
            final_sweeps += 1;
            if final_sweeps > 2 {
                break;
            }
            continue;
        }
        let (ws, we) = (
            shared.window_start_ns.load(Ordering::Relaxed),
            shared.window_end_ns.load(Ordering::Relaxed),
        );
        let mut n = 0u64;
        for &token in &ready {
            let call = (token >> 2) as usize;
            let kind = token & 3;
            let s = &calls[call];
            let sock = match kind {
                0 => &s.caller.rtp,
                1 => &s.caller.rtcp,
                2 => &s.callee.rtp,
                _ => &s.callee.rtcp,
            };
            // Caller sockets receive direction 1 (callee -> caller), callee sockets direction 0.
            let dir = usize::from(kind < 2);
            let Some((len, from)) = sys::recv_from_v4(sock.as_raw_fd(), &mut buf)? else {
                continue;
            };
            let at = now_ns();
            n += 1;
            let t = &mut totals[dir];
            let expected_from = routes[call].get().map(|r| {
                // Direction 0 reaches the callee from where the callee sends to (the relay's
                // U port), and the other way round; in direct mode that is the peer.
                match (dir == 0, kind & 1 == 1) {
                    (true, false) => r.callee_to,
                    (true, true) => r.callee_to_rtcp,
                    (false, false) => r.caller_to,
                    (false, true) => r.caller_to_rtcp,
                }
            });
            if expected_from.is_some_and(|e| e != from) {
                t.wrong_source += 1;
            }
            let pkt = &buf[..len];
            if kind & 1 == 1 {
                if payload::is_rtcp_sr(pkt) {
                    t.rtcp_received += 1;
                } else {
                    t.foreign += 1;
                }
                continue;
            }
            let Some(stamp) = Stamp::decode(payload::rtp_payload(pkt)) else {
                t.foreign += 1;
                continue;
            };
            if stamp.stream != (call * 2 + dir) as u32 {
                t.misrouted += 1;
                continue;
            }
            let latency = at.saturating_sub(stamp.sent_ns);
            rx[index[call] as usize][dir].on_packet(stamp.seq);
            record(&mut lat[dir], latency);
            if ws != 0 && stamp.sent_ns >= ws && (we == 0 || stamp.sent_ns < we) {
                record(&mut wlat[dir], latency);
            }
        }
        if n > 0 {
            shared.received.fetch_add(n, Ordering::Relaxed);
        }
    }
    let streams = mine
        .iter()
        .zip(rx)
        .flat_map(|(&c, [a, b])| [((c * 2) as u32, a), ((c * 2 + 1) as u32, b)])
        .collect();
    Ok(ReceiverOut {
        streams,
        totals,
        latency: lat,
        window_latency: wlat,
    })
}

/// Runs commands with up to `in_flight` outstanding; returns the completions in tag order.
fn run_commands(
    p: &mut Signalling,
    commands: &[Req<'_>],
    in_flight: usize,
) -> io::Result<Vec<Completion>> {
    let mut done = Vec::with_capacity(commands.len());
    let mut next = 0;
    let mut out = Vec::new();
    let hard_stop = now_ns()
        + p.give_up_after().as_nanos() as u64 * 2
        + 5_000_000_000
        + commands.len() as u64 * 10_000_000;
    while done.len() < commands.len() && now_ns() < hard_stop {
        while next < commands.len() && p.in_flight() < in_flight {
            p.submit(next as u64, commands[next]);
            next += 1;
        }
        out.clear();
        p.poll(50_000_000, &mut out)?;
        done.append(&mut out);
    }
    done.sort_by_key(|c| c.tag);
    Ok(done)
}

fn add_error(map: &mut BTreeMap<String, u64>, cmd: &str, e: &SignalError) {
    *map.entry(format!("{cmd}:{}", e.label())).or_default() += 1;
}

/// Runs the scenario against the control listener at `relay` (IPv4 loopback), speaking
/// `protocol`; with `o.direct`, `relay` is only checked, never contacted.
pub fn run(
    relay: SocketAddr,
    protocol: Protocol,
    relay_pid: Option<u32>,
    o: &SteadyOptions,
) -> anyhow::Result<SteadyResult> {
    anyhow::ensure!(
        relay.is_ipv4() && relay.ip().is_loopback(),
        "steady needs an IPv4 loopback relay"
    );
    anyhow::ensure!(o.calls > 0, "--calls must be > 0");
    let n = o.calls;
    sys::raise_nofile_limit()?;
    let relay_before = relay_pid.and_then(|p| procstat::mem_fd(p).ok());
    let v4 = |ip: IpAddr| match ip {
        IpAddr::V4(a) if crate::rtpengine::allowed_media_addr(ip) => Ok(a),
        other => Err(anyhow::anyhow!(
            "steady endpoints need an IPv4 loopback or benchmark-range address, not {other}"
        )),
    };
    let (caller_ip, callee_ip) = (v4(o.place.caller_ip)?, v4(o.place.callee_ip)?);
    anyhow::ensure!(
        !o.direct || o.place.caller_ns.is_none(),
        "--target direct runs on loopback only"
    );
    let bind =
        |ns: Option<&str>, ip| Placement::run_in(ns, || bind_endpoints(n, o.endpoint_ports, ip));
    let callers = bind(o.place.caller_ns.as_deref(), caller_ip)??;
    // On loopback both sides share one address: the callees take the ports after the callers'.
    let callee_ports = match o.place.callee_ns {
        Some(_) => o.endpoint_ports,
        None => (
            callers.last().map_or(o.endpoint_ports.0, |e| e.port + 2),
            o.endpoint_ports.1,
        ),
    };
    let callees = Placement::run_in(o.place.callee_ns.as_deref(), || {
        bind_endpoints(n, callee_ports, callee_ip)
    })??;
    let calls: Arc<Vec<CallSockets>> = Arc::new(
        callers
            .into_iter()
            .zip(callees)
            .map(|(caller, callee)| CallSockets { caller, callee })
            .collect(),
    );
    let routes: Arc<Vec<OnceLock<Route>>> = Arc::new((0..n).map(|_| OnceLock::new()).collect());
    let shared = Arc::new(Shared::default());
    let rtcp_every = (o.rtcp_interval.as_secs_f64() * o.pps as f64)
        .round()
        .max(1.0) as u64;

    // Receivers first, so no packet waits for a reader.
    let recv_threads = o.recv_threads.clamp(1, n);
    let mut receivers: Vec<JoinHandle<io::Result<ReceiverOut>>> = Vec::new();
    for r in 0..recv_threads {
        let mine: Vec<usize> = (r..n).step_by(recv_threads).collect();
        let (calls, routes, shared) = (calls.clone(), routes.clone(), shared.clone());
        receivers.push(
            std::thread::Builder::new()
                .name(format!("bench-recv{r}"))
                .spawn(move || receiver(calls, routes, mine, shared))?,
        );
    }
    let send_threads = o.send_threads.clamp(1, n);
    let mut senders = Vec::new();
    let mut activate = Vec::new();
    for s in 0..send_threads {
        let (tx, rx) = mpsc::channel();
        activate.push(tx);
        let (calls, shared) = (calls.clone(), shared.clone());
        let (pps, phases) = (o.pps, o.phases);
        senders.push(
            std::thread::Builder::new()
                .name(format!("bench-send{s}"))
                .spawn(move || sender(calls, rx, shared, pps, rtcp_every, s, phases))?,
        );
    }
    // Make sure threads are stopped on every exit path.
    struct StopGuard(Arc<Shared>);
    impl Drop for StopGuard {
        fn drop(&mut self) {
            self.0.stop_send.store(true, Ordering::Relaxed);
            self.0.stop_recv.store(true, Ordering::Relaxed);
        }
    }
    let guard = StopGuard(shared.clone());

    // Ramp: set up the calls.
    tight_timer_slack();
    let mut p = Placement::run_in(o.place.relay_ns.as_deref(), || {
        Signalling::connect(protocol, relay, o.timeout, o.tries)
    })??;
    let run_id = random_u32();
    let ids = |i: usize| {
        (
            format!("steady-{run_id:08x}-{i}"),
            format!("fc{i}"),
            format!("tc{i}"),
        )
    };
    // Where a reply with a bare port (a relay bound to a wildcard) points.
    let local = o.place.relay_ip_for_caller;
    let mut setup_errors = BTreeMap::new();
    let mut setup_retries = 0;
    let mut h_offer = latency_histogram();
    let mut h_answer = latency_histogram();
    let mut up = vec![false; n];
    let mut progress = Progress::new(o.progress, 2_000_000_000);
    let ramp_iv = (1e9 / o.ramp.max(1e-3)) as u64;
    let t_ramp = now_ns();
    let as_v4 = |m: MediaAddrs| -> Result<(SocketAddrV4, SocketAddrV4), SignalError> {
        match (m.rtp, m.rtcp) {
            // The harness only ever sends to loopback or the namespaces it built.
            (SocketAddr::V4(rtp), SocketAddr::V4(rtcp))
                if crate::rtpengine::allowed_media_addr(m.rtp.ip())
                    && crate::rtpengine::allowed_media_addr(m.rtcp.ip()) =>
            {
                Ok((rtp, rtcp))
            }
            (other, _) => Err(SignalError::Unusable(format!(
                "IPv6 media address or one outside loopback and 198.18.0.0/15: {other}"
            ))),
        }
    };
    for i in 0..n {
        sleep_until_ns(t_ramp + i as u64 * ramp_iv);
        if o.direct {
            let at = |port: u16| SocketAddrV4::new(Ipv4Addr::LOCALHOST, port);
            let route = Route {
                caller_to: at(calls[i].callee.port),
                callee_to: at(calls[i].caller.port),
                caller_to_rtcp: rtcp_of(at(calls[i].callee.port)),
                callee_to_rtcp: rtcp_of(at(calls[i].caller.port)),
            };
            let _ = routes[i].set(route);
            up[i] = true;
            let _ = activate[i % send_threads].send(Activation { call: i, route });
            continue;
        }
        let (call, from, to) = ids(i);
        let call_ids = CallIds {
            call_id: &call,
            from_tag: &from,
            to_tag: &to,
        };
        let caller_media = SocketAddr::new(caller_ip.into(), calls[i].caller.port);
        let c = p.call(Req::Offer(call_ids, caller_media))?;
        setup_retries += c.retries as u64;
        let (callee_to, callee_to_rtcp) =
            match c.result.and_then(|b| b.media(local)).and_then(as_v4) {
                Ok(a) => {
                    record(&mut h_offer, c.latency_ns);
                    a
                }
                Err(e) => {
                    add_error(&mut setup_errors, "U", &e);
                    continue;
                }
            };
        let callee_media = SocketAddr::new(callee_ip.into(), calls[i].callee.port);
        let c = p.call(Req::Answer(call_ids, callee_media))?;
        setup_retries += c.retries as u64;
        let (caller_to, caller_to_rtcp) =
            match c.result.and_then(|b| b.media(local)).and_then(as_v4) {
                Ok(a) => {
                    record(&mut h_answer, c.latency_ns);
                    a
                }
                Err(e) => {
                    add_error(&mut setup_errors, "L", &e);
                    let _ = p.call(Req::Delete(call_ids));
                    continue;
                }
            };
        let route = Route {
            caller_to,
            callee_to,
            caller_to_rtcp,
            callee_to_rtcp,
        };
        let _ = routes[i].set(route);
        up[i] = true;
        let _ = activate[i % send_threads].send(Activation { call: i, route });
        progress.tick(|t| format!("{t:5.1}s  ramp: {} calls up", i + 1));
    }
    let ramp_s = (now_ns() - t_ramp) as f64 / 1e9;
    let calls_up = up.iter().filter(|u| **u).count();

    // Measurement window. Let the last activations reach the senders (two periods).
    sleep_until_ns(now_ns() + 2 * 1_000_000_000 / o.pps.max(1) as u64);
    let meter = Meter::start(relay_pid);
    let w0 = now_ns();
    let (sent0, recv0) = (
        shared.sent.load(Ordering::Relaxed),
        shared.received.load(Ordering::Relaxed),
    );
    shared.window_start_ns.store(w0, Ordering::Relaxed);
    let end = w0 + o.duration.as_nanos() as u64;
    let mut progress = Progress::new(o.progress, 5_000_000_000);
    while now_ns() < end {
        sleep_until_ns((now_ns() + 200_000_000).min(end));
        progress.tick(|t| {
            format!(
                "{t:5.1}s  sent {}  received {}",
                shared.sent.load(Ordering::Relaxed),
                shared.received.load(Ordering::Relaxed)
            )
        });
    }
    let w1 = now_ns();
    let (sent1, recv1) = (
        shared.sent.load(Ordering::Relaxed),
        shared.received.load(Ordering::Relaxed),
    );
    shared.window_end_ns.store(w1, Ordering::Relaxed);
    let usage = meter.finish();

    // Stop sending, let the last packets arrive, stop receiving.
    shared.stop_send.store(true, Ordering::Relaxed);
    let mut sender_outs = Vec::new();
    for h in senders {
        sender_outs.push(
            h.join()
                .map_err(|_| anyhow::anyhow!("sender thread panicked"))?,
        );
    }
    sleep_until_ns(now_ns() + o.drain.as_nanos() as u64);
    shared.stop_recv.store(true, Ordering::Relaxed);
    let mut receiver_outs = Vec::new();
    for h in receivers {
        receiver_outs.push(
            h.join()
                .map_err(|_| anyhow::anyhow!("receiver thread panicked"))??,
        );
    }
    drop(guard);

    // Teardown.
    let t_down = now_ns();
    let delete_ids: Vec<(String, String, String)> =
        (0..n).filter(|&i| up[i] && !o.direct).map(ids).collect();
    let deletes: Vec<Req<'_>> = delete_ids
        .iter()
        .map(|(call, from, to)| {
            Req::Delete(CallIds {
                call_id: call,
                from_tag: from,
                to_tag: to,
            })
        })
        .collect();
    let mut teardown_errors = BTreeMap::new();
    let done = run_commands(&mut p, &deletes, 32)?;
    for c in &done {
        if let Err(e) = c.result.clone().and_then(|b| b.delete_ok()) {
            add_error(&mut teardown_errors, "D", &e);
        }
    }
    let missing = deletes.len().saturating_sub(done.len());
    if missing > 0 {
        *teardown_errors.entry("D:unanswered".into()).or_default() += missing as u64;
    }
    let teardown_s = (now_ns() - t_down) as f64 / 1e9;
    // Give the relay a moment to close sockets, then look at its fds.
    if relay_pid.is_some() {
        std::thread::sleep(Duration::from_millis(1000));
    }
    let relay_after_teardown = relay_pid.and_then(|p| procstat::mem_fd(p).ok());

    // Merge.
    let mut sent_by_stream: Vec<u64> = vec![0; 2 * n];
    let mut rtcp_sent = [0u64; 2];
    let mut lateness = latency_histogram();
    let (mut skipped_ticks, mut send_errors) = (0, 0);
    for s in &sender_outs {
        for &(stream, count) in &s.sent {
            sent_by_stream[stream as usize] += count;
        }
        rtcp_sent[0] += s.rtcp_sent[0];
        rtcp_sent[1] += s.rtcp_sent[1];
        lateness.add(&s.lateness).ok();
        skipped_ticks += s.skipped_ticks;
        send_errors += s.send_errors;
    }
    let mut totals: [DirectionTotals; 2] = Default::default();
    let mut lat = [latency_histogram(), latency_histogram()];
    let mut wlat = [latency_histogram(), latency_histogram()];
    for r in &receiver_outs {
        for (stream, rx) in &r.streams {
            let dir = (*stream % 2) as usize;
            totals[dir].add_stream(sent_by_stream[*stream as usize], rx);
        }
        for d in 0..2 {
            let t = &mut totals[d];
            let o = &r.totals[d];
            t.misrouted += o.misrouted;
            t.wrong_source += o.wrong_source;
            t.foreign += o.foreign;
            t.rtcp_received += o.rtcp_received;
            lat[d].add(&r.latency[d]).ok();
            wlat[d].add(&r.window_latency[d]).ok();
        }
    }
    let directions = (0..2)
        .map(|d| {
            let mut t = totals[d].clone();
            t.rtcp_sent = rtcp_sent[d];
            t.latency = LatencySummary::of(&lat[d]);
            DirectionResult {
                direction: DIRECTIONS[d],
                loss_ratio: t.loss_ratio(),
                totals: t,
                window_latency: LatencySummary::of(&wlat[d]),
            }
        })
        .collect();
    let window_s = (w1 - w0) as f64 / 1e9;
    let delivered = recv1 - recv0;
    let per_packet = |cpu_s: f64| (delivered > 0).then(|| cpu_s * 1e9 / delivered as f64);
    Ok(SteadyResult {
        calls_requested: n,
        calls_up,
        direct: o.direct,
        setup_errors,
        setup_retries,
        ramp_s,
        offer_latency: LatencySummary::of(&h_offer),
        answer_latency: LatencySummary::of(&h_answer),
        window_s,
        delivered_pps: delivered as f64 / window_s,
        sent_pps: (sent1 - sent0) as f64 / window_s,
        directions,
        relay_cpu_ns_per_packet: usage.relay_cpu.as_ref().and_then(|c| per_packet(c.total_s)),
        generator_cpu_ns_per_packet: usage
            .generator_cpu
            .as_ref()
            .and_then(|c| per_packet(c.total_s)),
        usage,
        relay_before,
        relay_after_teardown,
        teardown_errors,
        teardown_s,
        control_client: p.stats(),
        sender: SenderHealth {
            wake_lateness: LatencySummary::of(&lateness),
            skipped_ticks,
            send_errors,
        },
    })
}
