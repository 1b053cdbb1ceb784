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

/// Per-worker totals (single writer: the worker).
#[derive(Debug, Default)]
pub struct WorkerCounters {
    pub received: AtomicU64,
    pub forwarded: AtomicU64,
    pub dropped_oversize: AtomicU64,
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
    pub forwarded: u64,
    pub dropped_oversize: u64,
    pub streams: u64,
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
        self.workers
            .iter()
            .fold(DatapathTotals::default(), |t, w| DatapathTotals {
                received: t.received + w.counters.received.load(Relaxed),
                forwarded: t.forwarded + w.counters.forwarded.load(Relaxed),
                dropped_oversize: t.dropped_oversize + w.counters.dropped_oversize.load(Relaxed),
                streams: t.streams + w.counters.streams.load(Relaxed),
            })
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
