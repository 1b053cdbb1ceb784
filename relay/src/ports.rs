//! Port-pair allocator: RTP on an even port, RTCP on port + 1, per media interface.
//!
//! Freed pairs wait in quarantine before reuse so late packets of an ended call never reach a
//! new one. Because the quarantine time is the same for every pair, freed pairs can simply be
//! appended to the tail of the one FIFO the allocator takes from: the head is always the pair
//! released longest ago, so "is the head out of quarantine?" decides exhaustion in O(1). A full
//! 64k range costs 32768 x (2 + 8 + 1 bits) ~ 330 KiB.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum PortError {
    #[error("no free port pair ({in_use} in use, {quarantined} in quarantine of {total})")]
    Exhausted {
        total: usize,
        in_use: usize,
        quarantined: usize,
    },
}

/// An allocated pair; `rtp` is even, RTCP is `rtp + 1`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PortPair {
    pub rtp: u16,
}

impl PortPair {
    pub fn rtcp(self) -> u16 {
        self.rtp + 1
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct PoolUsage {
    pub total: usize,
    pub in_use: usize,
    pub quarantined: usize,
}

#[derive(Debug)]
pub struct PortPool {
    first_even: u16,
    /// Pair indexes not in use, oldest release first.
    queue: VecDeque<u16>,
    /// Per pair: when it may be handed out again, in ms since `epoch` (0 = at once).
    ready_at_ms: Vec<u64>,
    in_use: Vec<bool>,
    in_use_count: usize,
    quarantine: Duration,
    epoch: Instant,
}

impl PortPool {
    /// Pairs `[min, max]` rounded inwards to whole even/odd pairs, handed out in a random order
    /// (as rtpproxy does) so ports of new calls are not predictable.
    pub fn new(min: u16, max: u16, quarantine: Duration, now: Instant) -> PortPool {
        let first_even = min.saturating_add(min % 2);
        // Even ports p in [first_even, max - 1], so that p + 1 <= max.
        let pairs = if max > first_even {
            (usize::from(max) - usize::from(first_even) - 1) / 2 + 1
        } else {
            0
        };
        let mut order: Vec<u16> = (0..pairs).filter_map(|i| u16::try_from(i).ok()).collect();
        fastrand::shuffle(&mut order);
        PortPool {
            first_even,
            queue: order.into(),
            ready_at_ms: vec![0; pairs],
            in_use: vec![false; pairs],
            in_use_count: 0,
            quarantine,
            epoch: now,
        }
    }

    pub fn allocate(&mut self, now: Instant) -> Result<PortPair, PortError> {
        let now_ms = self.ms(now);
        match self.queue.front() {
            Some(&idx) if self.ready_at_ms[usize::from(idx)] <= now_ms => {
                self.queue.pop_front();
                self.in_use[usize::from(idx)] = true;
                self.in_use_count += 1;
                Ok(PortPair {
                    rtp: self.first_even + idx * 2,
                })
            }
            _ => {
                let usage = self.usage(now);
                Err(PortError::Exhausted {
                    total: usage.total,
                    in_use: usage.in_use,
                    quarantined: usage.quarantined,
                })
            }
        }
    }

    /// Returns a pair; it becomes available again after the quarantine. Releasing a pair that
    /// is not allocated from this pool is ignored (returns false) rather than corrupting it.
    pub fn release(&mut self, pair: PortPair, now: Instant) -> bool {
        let Some(idx) = self.index(pair) else {
            return false;
        };
        let slot = usize::from(idx);
        if !self.in_use[slot] {
            return false;
        }
        self.in_use[slot] = false;
        self.in_use_count -= 1;
        self.ready_at_ms[slot] = self.ms(now + self.quarantine);
        self.queue.push_back(idx);
        true
    }

    pub fn contains(&self, pair: PortPair) -> bool {
        self.index(pair).is_some()
    }

    pub fn usage(&self, now: Instant) -> PoolUsage {
        let now_ms = self.ms(now);
        // Quarantined pairs are always a suffix of the queue (released last): count from the back.
        let quarantined = self
            .queue
            .iter()
            .rev()
            .take_while(|&&idx| self.ready_at_ms[usize::from(idx)] > now_ms)
            .count();
        PoolUsage {
            total: self.in_use.len(),
            in_use: self.in_use_count,
            quarantined,
        }
    }

    fn index(&self, pair: PortPair) -> Option<u16> {
        let offset = pair.rtp.checked_sub(self.first_even)?;
        if offset % 2 != 0 || usize::from(offset / 2) >= self.in_use.len() {
            return None;
        }
        Some(offset / 2)
    }

    fn ms(&self, t: Instant) -> u64 {
        u64::try_from(t.saturating_duration_since(self.epoch).as_millis()).unwrap_or(u64::MAX)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pool(min: u16, max: u16, q_ms: u64) -> (PortPool, Instant) {
        let now = Instant::now();
        (
            PortPool::new(min, max, Duration::from_millis(q_ms), now),
            now,
        )
    }

    #[test]
    fn pairs_are_even_and_inside_the_range() {
        let (mut p, now) = pool(30001, 30010, 0);
        // Even ports 30002..=30008 whose +1 is <= 30010: 30002, 30004, 30006, 30008.
        let mut got: Vec<u16> = (0..4).map(|_| p.allocate(now).unwrap().rtp).collect();
        got.sort();
        assert_eq!(got, [30002, 30004, 30006, 30008]);
        assert!(matches!(
            p.allocate(now),
            Err(PortError::Exhausted {
                total: 4,
                in_use: 4,
                ..
            })
        ));
    }

    #[test]
    fn trailing_even_port_without_rtcp_is_not_used() {
        let (mut p, now) = pool(30000, 30002, 0);
        assert_eq!(p.allocate(now).unwrap().rtp, 30000);
        assert!(p.allocate(now).is_err());
        let (p, _) = pool(30000, 30000, 0);
        assert_eq!(p.usage(Instant::now()).total, 0);
        let (p, _) = pool(65534, 65535, 0);
        assert_eq!(p.usage(Instant::now()).total, 1);
    }

    #[test]
    fn released_pairs_wait_in_quarantine() {
        let (mut p, t0) = pool(40000, 40003, 10_000);
        let a = p.allocate(t0).unwrap();
        let b = p.allocate(t0).unwrap();
        assert!(p.release(a, t0));
        assert!(
            p.allocate(t0 + Duration::from_secs(9)).is_err(),
            "a still quarantined"
        );
        let usage = p.usage(t0 + Duration::from_secs(9));
        assert_eq!((usage.in_use, usage.quarantined), (1, 1));
        assert_eq!(p.allocate(t0 + Duration::from_secs(10)).unwrap(), a);
        assert!(p.release(b, t0));
    }

    #[test]
    fn reuse_is_least_recently_released_first() {
        let (mut p, t0) = pool(20000, 20009, 0);
        let all: Vec<PortPair> = (0..5).map(|_| p.allocate(t0).unwrap()).collect();
        for (i, pair) in all.iter().enumerate() {
            p.release(*pair, t0 + Duration::from_millis(i as u64));
        }
        let again: Vec<PortPair> = (0..5)
            .map(|_| p.allocate(t0 + Duration::from_secs(1)).unwrap())
            .collect();
        assert_eq!(again, all);
    }

    #[test]
    fn double_and_foreign_release_are_ignored() {
        let (mut p, t0) = pool(20000, 20009, 0);
        let a = p.allocate(t0).unwrap();
        assert!(p.release(a, t0));
        assert!(!p.release(a, t0), "double free");
        assert!(!p.release(PortPair { rtp: 20001 }, t0), "odd port");
        assert!(!p.release(PortPair { rtp: 30000 }, t0), "outside the range");
        assert_eq!(p.usage(t0).in_use, 0);
        assert_eq!(p.queue.len(), 5, "no duplicate queue entries");
    }

    #[test]
    fn full_range_is_small_and_fast() {
        let t0 = Instant::now();
        let mut p = PortPool::new(1024, 65535, Duration::from_secs(10), t0);
        assert_eq!(p.usage(t0).total, 32256);
        let mut seen = vec![false; 65536];
        while let Ok(pair) = p.allocate(t0) {
            assert_eq!(pair.rtp % 2, 0);
            assert!(!seen[usize::from(pair.rtp)], "handed out twice");
            seen[usize::from(pair.rtp)] = true;
        }
        assert_eq!(seen.iter().filter(|s| **s).count(), 32256);
    }

    #[test]
    fn order_is_shuffled() {
        let t0 = Instant::now();
        let mut p = PortPool::new(10000, 19999, Duration::ZERO, t0);
        let first: Vec<u16> = (0..16).map(|_| p.allocate(t0).unwrap().rtp).collect();
        let sequential: Vec<u16> = (0..16).map(|i| 10000 + i * 2).collect();
        assert_ne!(first, sequential);
    }
}
