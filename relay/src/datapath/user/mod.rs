//! Userspace datapath: N mio worker threads, each owning the sockets of the streams sharded to
//! it. The control side talks to a worker through a crossbeam channel plus a mio `Waker`, and
//! registers new sockets with the worker's `Poll` itself so that handing a stream over wakes
//! nobody (see [`handover`]); workers report latch events back on a shared channel.

mod batch;
mod handover;
pub mod socket;
mod worker;

use std::net::SocketAddr;
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::thread::JoinHandle;
use std::time::Instant;

use crossbeam_channel::{Receiver, Sender};
use mio::unix::SourceFd;
use mio::{Interest, Poll, Registry, Waker};

use handover::{LazyWake, SlotMap};

pub use batch::{BATCH, MAX_DATAGRAM};
pub use socket::{LegSockets, SocketOpener};

use crate::session::stats::{JitterHistogram, JitterSnapshot};
use crate::session::{Action, LegUpdate, StreamId};

/// Control to worker.
#[derive(Debug)]
pub enum WorkerCmd {
    /// `slot` is the stream's place in the worker's table, chosen by control; the sockets (if
    /// any) are already registered with the worker's poll under that slot's tokens.
    Leg {
        slot: usize,
        update: LegUpdate<LegSockets>,
    },
    Remove {
        slot: usize,
        stream: StreamId,
    },
    Shutdown,
}

/// Worker to control.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WorkerEvent {
    Latched {
        stream: StreamId,
        leg: usize,
        rtcp: bool,
        addr: SocketAddr,
        relatched: bool,
    },
}

/// Per-worker totals since start (single writer: the worker, per batch or per event, never a
/// locked read-modify-write). They outlive the streams they count, unlike the per-stream
/// counters in [`crate::session::stats`], which go with their stream.
#[derive(Debug, Default)]
pub struct WorkerCounters {
    /// Every datagram read from a media socket.
    pub received: AtomicU64,
    /// Sent on, per ingress leg (0 = the leg facing the endpoint that made the first offer).
    pub forwarded_packets: [AtomicU64; 2],
    pub forwarded_bytes: [AtomicU64; 2],
    pub dropped_oversize: AtomicU64,
    pub dropped_source: AtomicU64,
    pub dropped_no_destination: AtomicU64,
    pub dropped_overflow: AtomicU64,
    pub dropped_send: AtomicU64,
    pub latched: AtomicU64,
    pub relatched: AtomicU64,
    pub rtp_expected: AtomicU64,
    pub rtp_lost: AtomicU64,
    /// One sample per RTP-carrying leg per housekeeping round (about a second).
    pub jitter: JitterHistogram,
    pub streams: AtomicU64,
}

struct WorkerHandle {
    commands: Sender<WorkerCmd>,
    waker: Waker,
    /// The worker's poll registry, to register the sockets of new legs from here.
    registry: Registry,
    slots: SlotMap,
    lazy: LazyWake,
    thread: Option<JoinHandle<()>>,
    counters: Arc<WorkerCounters>,
}

/// Totals over all workers.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DatapathTotals {
    pub received: u64,
    /// Both directions.
    pub forwarded: u64,
    pub forwarded_packets: [u64; 2],
    pub forwarded_bytes: [u64; 2],
    pub dropped_oversize: u64,
    pub dropped_source: u64,
    pub dropped_no_destination: u64,
    pub dropped_overflow: u64,
    pub dropped_send: u64,
    pub latched: u64,
    pub relatched: u64,
    pub rtp_expected: u64,
    pub rtp_lost: u64,
    pub jitter: JitterSnapshot,
    pub streams: u64,
}

impl DatapathTotals {
    /// Adds one worker's counters.
    pub fn add(&mut self, c: &WorkerCounters) {
        let load = |a: &AtomicU64| a.load(Relaxed);
        self.received += load(&c.received);
        for leg in 0..2 {
            let packets = load(&c.forwarded_packets[leg]);
            self.forwarded += packets;
            self.forwarded_packets[leg] += packets;
            self.forwarded_bytes[leg] += load(&c.forwarded_bytes[leg]);
        }
        self.dropped_oversize += load(&c.dropped_oversize);
        self.dropped_source += load(&c.dropped_source);
        self.dropped_no_destination += load(&c.dropped_no_destination);
        self.dropped_overflow += load(&c.dropped_overflow);
        self.dropped_send += load(&c.dropped_send);
        self.latched += load(&c.latched);
        self.relatched += load(&c.relatched);
        self.rtp_expected += load(&c.rtp_expected);
        self.rtp_lost += load(&c.rtp_lost);
        self.jitter.add(&c.jitter.snapshot());
        self.streams += load(&c.streams);
    }
}

pub struct Datapath {
    workers: Vec<WorkerHandle>,
}

impl Datapath {
    /// Starts `workers` threads (at least one). Latch events go to `events`.
    pub fn start(
        workers: usize,
        events: tokio::sync::mpsc::UnboundedSender<WorkerEvent>,
    ) -> std::io::Result<Datapath> {
        let mut handles = Vec::new();
        for index in 0..workers.max(1) {
            let poll = Poll::new()?;
            let waker = worker::waker(&poll)?;
            let registry = poll.registry().try_clone()?;
            let (tx, rx): (Sender<WorkerCmd>, Receiver<WorkerCmd>) = crossbeam_channel::unbounded();
            let counters = Arc::new(WorkerCounters::default());
            let (events, worker_counters) = (events.clone(), counters.clone());
            // Built on its own thread: its I/O scratch space holds raw pointers (not Send).
            let thread = std::thread::Builder::new()
                .name(format!("sluice-dp{index}"))
                .spawn(move || {
                    worker::Worker::new(index, poll, rx, events, worker_counters).run()
                })?;
            handles.push(WorkerHandle {
                commands: tx,
                waker,
                registry,
                slots: SlotMap::default(),
                lazy: LazyWake::default(),
                thread: Some(thread),
                counters,
            });
        }
        Ok(Datapath { workers: handles })
    }

    pub fn workers(&self) -> usize {
        self.workers.len()
    }

    /// Carries out a datapath action of the session table; events are not for us.
    ///
    /// Neither new legs nor removals wake the worker: a leg's sockets are registered with the
    /// worker's poll right here (its first packet wakes the worker, which applies queued
    /// commands before reading), and removals are batched ([`Datapath::wake_due`]). Waking a
    /// worker per command cost a context switch per command and preempted the control thread
    /// on a busy machine (BENCHMARKS.md, "gRPC control plane").
    pub fn apply(&mut self, action: Action<LegSockets>) -> Option<crate::session::SessionEvent> {
        let n = self.workers.len().max(1);
        match action {
            Action::Leg { worker, update } => {
                let w = self.workers.get_mut(worker % n)?;
                let slot = w.slots.assign(update.stream);
                let (stream, leg) = (update.stream, update.leg);
                let fds = update
                    .sockets
                    .as_ref()
                    .map(|s| [s.rtp.as_raw_fd(), s.rtcp.as_raw_fd()]);
                // Queued before registering, so any readiness the worker sees for these
                // tokens finds the command; the worker never closes sockets without a later
                // command from here (Remove, Shutdown, another Leg), so the fds stay valid.
                if w.commands.send(WorkerCmd::Leg { slot, update }).is_err() {
                    return None;
                }
                if let (Some(fds), true) = (fds, leg <= 1) {
                    for (component, fd) in fds.into_iter().enumerate() {
                        if let Err(e) = w.registry.register(
                            &mut SourceFd(&fd),
                            worker::token(slot, leg, component),
                            Interest::READABLE,
                        ) {
                            tracing::error!(stream, error = %e, "cannot register media socket");
                        }
                    }
                }
            }
            Action::Remove { stream, worker } => {
                let w = self.workers.get_mut(worker % n)?;
                // Never handed over: nothing to remove.
                let slot = w.slots.release(stream)?;
                if w.commands.send(WorkerCmd::Remove { slot, stream }).is_ok()
                    && w.lazy.defer(Instant::now())
                {
                    wake(worker % n, w);
                }
            }
            Action::Event(e) => return Some(e),
            // The kernel fast path's business; the core applies it.
            Action::Offload { .. } => {}
        }
        None
    }

    /// Wakes the workers whose deferred removals have waited long enough.
    pub fn wake_due(&mut self, now: Instant) {
        for (i, w) in self.workers.iter_mut().enumerate() {
            if w.lazy.due(now) {
                wake(i, w);
            }
        }
    }

    /// When [`Datapath::wake_due`] next has something to do.
    pub fn wake_deadline(&self) -> Option<Instant> {
        self.workers.iter().filter_map(|w| w.lazy.deadline()).min()
    }

    pub fn totals(&self) -> DatapathTotals {
        let mut totals = DatapathTotals::default();
        for w in &self.workers {
            totals.add(&w.counters);
        }
        totals
    }

    /// Stops every worker and waits for it; their sockets close.
    pub fn shutdown(&mut self) {
        for (i, w) in self.workers.iter_mut().enumerate() {
            if w.commands.send(WorkerCmd::Shutdown).is_ok() {
                wake(i, w);
            }
        }
        for w in &mut self.workers {
            if let Some(t) = w.thread.take()
                && t.join().is_err()
            {
                tracing::error!("a datapath worker panicked");
            }
        }
    }
}

fn wake(index: usize, w: &mut WorkerHandle) {
    w.lazy.woken();
    if let Err(e) = w.waker.wake() {
        tracing::error!(worker = index, error = %e, "cannot wake datapath worker");
    }
}

impl Drop for Datapath {
    fn drop(&mut self) {
        self.shutdown();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn totals_add_up_workers_and_directions() {
        let (a, b) = (WorkerCounters::default(), WorkerCounters::default());
        a.forwarded_packets[0].store(3, Relaxed);
        a.forwarded_packets[1].store(4, Relaxed);
        b.forwarded_packets[0].store(10, Relaxed);
        b.forwarded_bytes[1].store(1600, Relaxed);
        a.dropped_source.store(2, Relaxed);
        b.dropped_source.store(5, Relaxed);
        a.jitter.observe(700);
        b.jitter.observe(700);
        let mut t = DatapathTotals::default();
        t.add(&a);
        t.add(&b);
        assert_eq!(t.forwarded_packets, [13, 4]);
        assert_eq!(t.forwarded, 17);
        assert_eq!(t.forwarded_bytes, [0, 1600]);
        assert_eq!(t.dropped_source, 7);
        assert_eq!(t.jitter.buckets[1], 2);
        assert_eq!(t.jitter.sum_us, 1400);
    }
}
