//! Userspace datapath: N mio worker threads, each owning the sockets of the streams sharded to
//! it. The control side talks to a worker through a crossbeam channel plus a mio `Waker`;
//! workers report latch events back on a shared channel.

mod batch;
pub mod socket;
mod worker;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::thread::JoinHandle;

use crossbeam_channel::{Receiver, Sender};
use mio::{Poll, Waker};

pub use batch::{BATCH, MAX_DATAGRAM};
pub use socket::{LegSockets, SocketOpener};

use crate::session::stats::{JitterHistogram, JitterSnapshot};
use crate::session::{Action, LegUpdate, StreamId};

/// Control to worker.
#[derive(Debug)]
pub enum WorkerCmd {
    Leg(LegUpdate<LegSockets>),
    Remove { stream: StreamId },
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
    pub fn start(workers: usize, events: Sender<WorkerEvent>) -> std::io::Result<Datapath> {
        let mut handles = Vec::new();
        for index in 0..workers.max(1) {
            let poll = Poll::new()?;
            let waker = worker::waker(&poll)?;
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
    pub fn apply(&self, action: Action<LegSockets>) -> Option<crate::session::SessionEvent> {
        let (worker, cmd) = match action {
            Action::Leg { worker, update } => (worker, WorkerCmd::Leg(update)),
            Action::Remove { stream, worker } => (worker, WorkerCmd::Remove { stream }),
            Action::Event(e) => return Some(e),
            // The kernel fast path's business; the core applies it.
            Action::Offload { .. } => return None,
        };
        self.send(worker, cmd);
        None
    }

    fn send(&self, worker: usize, cmd: WorkerCmd) {
        let Some(w) = self.workers.get(worker % self.workers.len().max(1)) else {
            return;
        };
        if w.commands.send(cmd).is_ok()
            && let Err(e) = w.waker.wake()
        {
            tracing::error!(worker, error = %e, "cannot wake datapath worker");
        }
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
        for i in 0..self.workers.len() {
            self.send(i, WorkerCmd::Shutdown);
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
