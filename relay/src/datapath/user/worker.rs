//! A datapath worker: one thread, one mio `Poll`, the sockets of the streams sharded to it.
//!
//! Fairness under flood: sockets are edge-triggered, and each ready socket gets at most
//! [`BUDGET`] batches per round; one that still has data goes to the back of a ready list and
//! is served again after every other ready socket. A flooded stream therefore keeps forwarding
//! its share, the excess is dropped by the kernel in that socket's own receive queue (and
//! counted from SO_MEMINFO), other streams are unaffected, and nothing is ever deregistered:
//! when the flood stops the queue drains and the stream is back to normal at once.

use std::collections::VecDeque;
use std::io;
use std::net::{SocketAddr, UdpSocket};
use std::os::fd::{AsRawFd, RawFd};
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

use crossbeam_channel::Receiver;
use mio::{Events, Poll, Token, Waker};

use super::batch::{BATCH, Batch};
use super::socket::LegSockets;
use super::{WorkerCmd, WorkerCounters, WorkerEvent};
use crate::clock;
use crate::rtp::{PacketKind, RtpStats, classify};
use crate::session::latch::{Content, Latch, LatchMode, Learned, Verdict};
use crate::session::stats::{LegCounters, LossAccount, StreamShared};
use crate::session::{LegUpdate, StreamId};

/// Batches one socket may read per round before others get their turn.
const BUDGET: usize = 4;
const WAKER: Token = Token(usize::MAX);
const HOUSEKEEPING: Duration = Duration::from_secs(1);
const RTP: usize = 0;
const RTCP: usize = 1;

struct LegSlot {
    /// `[rtp, rtcp]` once the leg has local ports. Registered with the poll by control
    /// (`Datapath::apply`); closing them takes them out of the poll.
    sockets: Option<[UdpSocket; 2]>,
    latch: [Latch; 2],
    rtcp_explicit: bool,
    stats: RtpStats,
    /// What of `stats` the worker's loss totals already hold.
    loss: LossAccount,
    /// RTP arrived since the last housekeeping: sample the jitter then.
    rtp_recent: bool,
}

struct StreamSlot {
    id: StreamId,
    shared: Arc<StreamShared>,
    legs: [LegSlot; 2],
    /// Hit the read budget since the last housekeeping: check the kernel's drop counters.
    flooded: bool,
    /// SO_MEMINFO drop counts already accounted, per leg and component.
    kernel_drops_seen: [[u32; 2]; 2],
}

pub(super) struct Worker {
    index: usize,
    poll: Poll,
    commands: Receiver<WorkerCmd>,
    events: tokio::sync::mpsc::UnboundedSender<WorkerEvent>,
    /// Indexed by the slot control assigned (`handover::SlotMap`).
    streams: Vec<Option<StreamSlot>>,
    batch: Box<Batch>,
    ready: VecDeque<Token>,
    counters: Arc<WorkerCounters>,
    sends: Vec<(usize, SocketAddr)>,
    stopping: bool,
}

enum Drained {
    Yes,
    No,
}

impl Worker {
    pub(super) fn new(
        index: usize,
        poll: Poll,
        commands: Receiver<WorkerCmd>,
        events: tokio::sync::mpsc::UnboundedSender<WorkerEvent>,
        counters: Arc<WorkerCounters>,
    ) -> Worker {
        Worker {
            index,
            poll,
            commands,
            events,
            streams: Vec::new(),
            batch: Batch::new(),
            ready: VecDeque::new(),
            counters,
            sends: Vec::with_capacity(BATCH),
            stopping: false,
        }
    }

    pub(super) fn run(mut self) {
        let mut events = Events::with_capacity(1024);
        let mut last_housekeeping = std::time::Instant::now();
        loop {
            let timeout = if self.ready.is_empty() {
                HOUSEKEEPING
            } else {
                Duration::ZERO
            };
            if let Err(e) = self.poll.poll(&mut events, Some(timeout))
                && e.kind() != io::ErrorKind::Interrupted
            {
                tracing::error!(worker = self.index, error = %e, "poll failed; worker stops");
                return;
            }
            for event in events.iter() {
                match event.token() {
                    WAKER => {}
                    token => self.serve(token),
                }
            }
            // Sockets that used their budget get another turn, after every fresh event.
            for _ in 0..self.ready.len() {
                if let Some(token) = self.ready.pop_front() {
                    self.serve(token);
                }
            }
            if !self.apply_commands() {
                return;
            }
            if last_housekeeping.elapsed() >= HOUSEKEEPING {
                self.housekeeping();
                last_housekeeping = std::time::Instant::now();
            }
        }
    }

    /// Returns false on shutdown.
    fn apply_commands(&mut self) -> bool {
        if self.stopping {
            return false;
        }
        while let Ok(cmd) = self.commands.try_recv() {
            match cmd {
                WorkerCmd::Leg { slot, update } => self.upsert_leg(slot, update),
                WorkerCmd::Remove { slot, stream } => self.remove(slot, stream),
                WorkerCmd::Shutdown => {
                    self.stopping = true;
                    return false;
                }
            }
        }
        true
    }

    fn upsert_leg(&mut self, slot: usize, update: LegUpdate<LegSockets>) {
        let LegUpdate {
            stream: id,
            leg,
            sockets,
            remote,
            remote_rtcp,
            policy,
            shared,
        } = update;
        if leg > 1 {
            return;
        }
        let now_ns = clock::now_ns();
        let rtcp_sdp = remote_rtcp.or_else(|| remote.map(rtcp_of));
        if self.streams.len() <= slot {
            self.streams.resize_with(slot + 1, || None);
        }
        let entry = &mut self.streams[slot];
        if entry.as_ref().is_some_and(|s| s.id != id) {
            // Control removes a stream before reusing its slot; this is a bug, not input.
            tracing::error!(stream = id, slot, "slot still taken; replacing its stream");
            *entry = None;
            self.counters.streams.fetch_sub(1, Relaxed);
        }
        let stream = entry.get_or_insert_with(|| {
            let new_leg = || LegSlot {
                sockets: None,
                latch: [Latch::new(policy, None), Latch::new(policy, None)],
                rtcp_explicit: false,
                stats: RtpStats::new(),
                loss: LossAccount::default(),
                rtp_recent: false,
            };
            self.counters.streams.fetch_add(1, Relaxed);
            StreamSlot {
                id,
                shared,
                legs: [new_leg(), new_leg()],
                flooded: false,
                kernel_drops_seen: [[0; 2]; 2],
            }
        });
        let l = &mut stream.legs[leg];
        l.latch[RTP].update(policy, remote, now_ns);
        l.latch[RTCP].update(policy, rtcp_sdp, now_ns);
        l.rtcp_explicit = remote_rtcp.is_some();
        if let Some(sockets) = sockets {
            l.sockets = Some([sockets.rtp, sockets.rtcp]);
            // Packets may have been queued before control registered the sockets, and their
            // readiness may have been consumed by a wake-up that found no stream here yet:
            // look once.
            for component in [RTP, RTCP] {
                self.ready.push_back(token(slot, leg, component));
            }
        }
    }

    fn remove(&mut self, slot: usize, id: StreamId) {
        let Some(entry) = self.streams.get_mut(slot) else {
            return;
        };
        if entry.as_ref().is_some_and(|s| s.id == id) {
            // The sockets close as the stream drops here, which also takes them out of the
            // poll (no other descriptor refers to them). Stale tokens in `ready` find no
            // slot or a new stream's socket, where a spurious read is harmless.
            *entry = None;
            self.counters.streams.fetch_sub(1, Relaxed);
        }
    }

    fn serve(&mut self, token: Token) {
        // A command sent before this packet arrived (the answer that gives the other leg its
        // sockets) must be in effect before the packet is handled: control replies only after
        // enqueuing it, so checking here closes the race. An empty try_recv is one atomic load.
        self.apply_commands();
        if self.stopping {
            return;
        }
        for _ in 0..BUDGET {
            match self.read_batch(token) {
                Drained::Yes => return,
                Drained::No => {}
            }
        }
        if let Some(Some(stream)) = self.streams.get_mut(token.0 >> 2) {
            stream.flooded = true;
        }
        self.ready.push_back(token);
    }

    fn read_batch(&mut self, token: Token) -> Drained {
        let (slot, leg, component) = (token.0 >> 2, (token.0 >> 1) & 1, token.0 & 1);
        let other = 1 - leg;
        let Some(Some(stream)) = self.streams.get_mut(slot) else {
            return Drained::Yes;
        };
        let Some(fd) = socket_fd(&stream.legs[leg], component) else {
            return Drained::Yes;
        };
        let n = match self.batch.recv(fd) {
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Drained::Yes,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => return Drained::No,
            Err(e) => {
                // ICMP errors from earlier sends surface here (ECONNREFUSED); not fatal.
                tracing::debug!(stream = stream.id, error = %e, "recv");
                return Drained::No;
            }
        };
        let now_ns = clock::now_ns();
        let stream_id = stream.id;
        let shared = &*stream.shared;
        let (rx_counters, tx_counters) = (&shared.legs[leg], &shared.legs[other]);
        let [leg0, leg1] = &mut stream.legs;
        let (from, to) = if leg == 0 { (leg0, leg1) } else { (leg1, leg0) };
        let destination = destination(to, component);
        let out_fd = socket_fd(to, component);
        self.sends.clear();
        let mut rx_bytes = 0u64;
        let mut accepted = 0u64;
        let mut rtp_seen = false;
        // Drops are counted once per batch, into the stream's and the worker's counters.
        let (mut bad_source, mut no_destination, mut oversize) = (0u64, 0u64, 0u64);
        for i in 0..n {
            let (data, src, truncated) = self.batch.datagram(i);
            let Some(src) = src else { continue };
            if truncated {
                oversize += 1;
                continue;
            }
            let rtp = match (component, classify(data)) {
                (RTP, PacketKind::Rtp(p)) => Some(p),
                _ => None,
            };
            let content = rtp.map_or(Content::Other, |p| Content::Rtp {
                ssrc: p.ssrc(),
                seq: p.sequence(),
            });
            match from.latch[component].on_packet(src, content, now_ns) {
                Verdict::Drop(_) => {
                    // Bleed attempts, strict-mode strangers and SSRC 0 alike: not the
                    // leg's endpoint.
                    bad_source += 1;
                    continue;
                }
                Verdict::Accept { learned } => {
                    if let Some(learned) = learned {
                        let counter = match learned {
                            Learned::Latched => &self.counters.latched,
                            Learned::Relatched => &self.counters.relatched,
                        };
                        LegCounters::bump(counter, 1);
                        let _ = self.events.send(WorkerEvent::Latched {
                            stream: stream_id,
                            leg,
                            rtcp: component == RTCP,
                            addr: src,
                            relatched: learned == Learned::Relatched,
                        });
                    }
                }
            }
            accepted += 1;
            rx_bytes += data.len() as u64;
            match rtp {
                Some(p) => {
                    from.stats.on_packet(&p, now_ns);
                    rtp_seen = true;
                }
                None if component == RTP => LegCounters::bump(&rx_counters.non_rtp, 1),
                None => {}
            }
            match destination {
                Some(dest) if out_fd.is_some() => self.sends.push((i, dest)),
                _ => no_destination += 1,
            }
        }
        for (count, stream_counter, worker_counter) in [
            (
                bad_source,
                &rx_counters.dropped_source,
                &self.counters.dropped_source,
            ),
            (
                no_destination,
                &rx_counters.dropped_no_destination,
                &self.counters.dropped_no_destination,
            ),
        ] {
            if count > 0 {
                LegCounters::bump(stream_counter, count);
                LegCounters::bump(worker_counter, count);
            }
        }
        if oversize > 0 {
            LegCounters::bump(&self.counters.dropped_oversize, oversize);
        }
        if accepted > 0 {
            LegCounters::bump(&rx_counters.rx_packets, accepted);
            LegCounters::bump(&rx_counters.rx_bytes, rx_bytes);
            rx_counters.last_rx_ns.store(now_ns, Relaxed);
        }
        if rtp_seen {
            // Once per batch, not per packet: the snapshot is for queries, not for forwarding.
            let s = from.stats.snapshot();
            rx_counters.rtp_expected.store(s.expected, Relaxed);
            rx_counters.rtp_lost.store(s.lost, Relaxed);
            rx_counters.rtp_out_of_order.store(s.out_of_order, Relaxed);
            rx_counters
                .rtp_jitter_us
                .store((s.jitter_ms * 1000.0) as u64, Relaxed);
            let (expected, lost) = from.loss.update_from(&s);
            LegCounters::bump(&self.counters.rtp_expected, expected);
            if lost > 0 {
                LegCounters::bump(&self.counters.rtp_lost, lost);
            }
            from.rtp_recent = true;
        }
        if let (Some(fd), false) = (out_fd, self.sends.is_empty()) {
            let sent = self.batch.send(fd, &self.sends);
            let bytes: u64 = self.sends[..sent]
                .iter()
                .map(|&(i, _)| self.batch.datagram(i).0.len() as u64)
                .sum();
            LegCounters::bump(&tx_counters.tx_packets, sent as u64);
            LegCounters::bump(&tx_counters.tx_bytes, bytes);
            let failed = (self.sends.len() - sent) as u64;
            if failed > 0 {
                LegCounters::bump(&rx_counters.dropped_send, failed);
                LegCounters::bump(&self.counters.dropped_send, failed);
            }
            LegCounters::bump(&self.counters.forwarded_packets[leg], sent as u64);
            LegCounters::bump(&self.counters.forwarded_bytes[leg], bytes);
        }
        LegCounters::bump(&self.counters.received, n as u64);
        if n < BATCH { Drained::Yes } else { Drained::No }
    }

    /// Samples the jitter of legs that carried RTP since the last round, and reads the
    /// kernel's per-socket drop counters of streams that were flooded.
    fn housekeeping(&mut self) {
        for stream in self.streams.iter_mut().flatten() {
            for (leg, slot) in stream.legs.iter_mut().enumerate() {
                if std::mem::take(&mut slot.rtp_recent) {
                    let jitter_us = stream.shared.legs[leg].rtp_jitter_us.load(Relaxed);
                    self.counters.jitter.observe(jitter_us);
                }
            }
        }
        for stream in self.streams.iter_mut().flatten().filter(|s| s.flooded) {
            stream.flooded = false;
            for leg in 0..2 {
                for component in [RTP, RTCP] {
                    let Some(fd) = socket_fd(&stream.legs[leg], component) else {
                        continue;
                    };
                    let Some(drops) = kernel_drops(fd) else {
                        continue;
                    };
                    let seen = &mut stream.kernel_drops_seen[leg][component];
                    let new = drops.wrapping_sub(*seen);
                    *seen = drops;
                    LegCounters::bump(&stream.shared.legs[leg].dropped_overflow, u64::from(new));
                    LegCounters::bump(&self.counters.dropped_overflow, u64::from(new));
                }
            }
        }
    }
}

fn socket_fd(leg: &LegSlot, component: usize) -> Option<RawFd> {
    leg.sockets
        .as_ref()
        .and_then(|s| s.get(component))
        .map(|s| s.as_raw_fd())
}

/// Where packets of `component` go for a leg. RTCP that has not latched yet follows a latched
/// RTP address on port + 1 (unless the SDP gave an explicit RTCP address).
fn destination(leg: &LegSlot, component: usize) -> Option<SocketAddr> {
    if component == RTP || leg.latch[RTCP].policy().mode == LatchMode::Asymmetric {
        return leg.latch[component].destination();
    }
    leg.latch[RTCP]
        .latched()
        .or_else(|| match (leg.rtcp_explicit, leg.latch[RTP].latched()) {
            (false, Some(rtp)) => Some(rtcp_of(rtp)),
            _ => leg.latch[RTCP].sdp(),
        })
}

fn rtcp_of(rtp: SocketAddr) -> SocketAddr {
    SocketAddr::new(rtp.ip(), rtp.port().wrapping_add(1))
}

/// SK_MEMINFO_DROPS: datagrams the kernel dropped because this socket's queue was full.
fn kernel_drops(fd: RawFd) -> Option<u32> {
    const SK_MEMINFO_VARS: usize = 9;
    const SK_MEMINFO_DROPS: usize = 8;
    let mut info = [0u32; SK_MEMINFO_VARS];
    let mut len = std::mem::size_of_val(&info) as libc::socklen_t;
    // SAFETY: valid fd; the buffer and its length describe `info`.
    let rc = unsafe {
        libc::getsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_MEMINFO,
            info.as_mut_ptr().cast(),
            &mut len,
        )
    };
    (rc == 0).then_some(info[SK_MEMINFO_DROPS])
}

/// The poll token of a stream's socket: slot, leg (0/1) and component (RTP/RTCP).
pub(super) fn token(slot: usize, leg: usize, component: usize) -> Token {
    Token(slot << 2 | leg << 1 | component)
}

/// Registers the waker on `poll`.
pub(super) fn waker(poll: &Poll) -> io::Result<Waker> {
    Waker::new(poll.registry(), WAKER)
}
