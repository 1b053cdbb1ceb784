//! Control-side bookkeeping for handing streams to a worker without waking it per command
//! (sans-IO, no threads).
//!
//! The control thread registers a new leg's sockets with the worker's `Poll` itself, under a
//! token whose slot it chose here, so the worker needs no wake-up to start reading them: the
//! first packet on any of its sockets wakes it, and it applies queued commands before reading
//! (see `worker::Worker::serve`). What is left needing a wake-up is removal: the sockets of
//! ended streams should close (file descriptors, ports) soon, but not per call. [`LazyWake`]
//! decides when.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use crate::session::StreamId;

/// Slots of one worker's streams: the index a stream's tokens are built from. Freed slots
/// are reused first, so the worker's slot table stays as large as its busiest moment.
#[derive(Debug, Default)]
pub(crate) struct SlotMap {
    by_stream: HashMap<StreamId, usize>,
    free: Vec<usize>,
    next: usize,
}

impl SlotMap {
    /// The slot of `stream`, assigned on first use.
    pub(crate) fn assign(&mut self, stream: StreamId) -> usize {
        if let Some(&slot) = self.by_stream.get(&stream) {
            return slot;
        }
        let slot = self.free.pop().unwrap_or_else(|| {
            self.next += 1;
            self.next - 1
        });
        self.by_stream.insert(stream, slot);
        slot
    }

    /// Frees the slot of `stream`, if it had one. Reusing it right away is safe: the worker
    /// applies commands in order, so it removes the old stream before it sees the new one.
    pub(crate) fn release(&mut self, stream: StreamId) -> Option<usize> {
        let slot = self.by_stream.remove(&stream)?;
        self.free.push(slot);
        Some(slot)
    }
}

/// Removals queued at most this long before the worker is woken for them.
pub(crate) const LAZY_DELAY: Duration = Duration::from_millis(5);
/// ... or as soon as this many are queued. Larger batches wake less often but close more
/// sockets in one go while the worker has the CPU; 8 did better than 64 or 1 (A/B at c=16,
/// BENCHMARKS.md "gRPC control plane").
pub(crate) const LAZY_MAX: usize = 8;

/// When to wake a worker for commands that may wait a little (removals).
#[derive(Debug, Default)]
pub(crate) struct LazyWake {
    pending: usize,
    since: Option<Instant>,
}

impl LazyWake {
    /// Records one more command; true when the worker should be woken now.
    pub(crate) fn defer(&mut self, now: Instant) -> bool {
        self.pending += 1;
        self.since.get_or_insert(now);
        self.pending >= LAZY_MAX
    }

    /// When the oldest deferred command is due, if any.
    pub(crate) fn deadline(&self) -> Option<Instant> {
        self.since.map(|t| t + LAZY_DELAY)
    }

    /// True when deferred commands have waited long enough.
    pub(crate) fn due(&self, now: Instant) -> bool {
        self.deadline().is_some_and(|d| now >= d)
    }

    /// The worker was woken: everything queued so far will be seen.
    pub(crate) fn woken(&mut self) {
        *self = LazyWake::default();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_are_stable_per_stream_and_reused_after_release() {
        let mut m = SlotMap::default();
        assert_eq!(m.assign(10), 0);
        assert_eq!(m.assign(11), 1);
        assert_eq!(m.assign(10), 0, "same stream, same slot");
        assert_eq!(m.release(10), Some(0));
        assert_eq!(m.release(10), None, "released once");
        assert_eq!(m.assign(12), 0, "freed slot first");
        assert_eq!(m.assign(13), 2);
        assert_eq!(m.release(99), None);
    }

    #[test]
    fn lazy_wake_waits_for_count_or_delay() {
        let t0 = Instant::now();
        let mut w = LazyWake::default();
        assert_eq!(w.deadline(), None);
        assert!(!w.due(t0 + Duration::from_secs(60)), "nothing deferred");
        assert!(!w.defer(t0));
        let later = t0 + Duration::from_millis(1);
        assert!(!w.defer(later));
        assert_eq!(w.deadline(), Some(t0 + LAZY_DELAY), "from the oldest");
        assert!(!w.due(t0 + LAZY_DELAY - Duration::from_micros(1)));
        assert!(w.due(t0 + LAZY_DELAY));
        w.woken();
        assert_eq!(w.deadline(), None);
        let woke = (0..LAZY_MAX).map(|_| w.defer(later)).collect::<Vec<_>>();
        assert_eq!(woke.iter().filter(|&&b| b).count(), 1);
        assert!(woke[LAZY_MAX - 1], "the LAZY_MAX-th command wakes");
    }
}
