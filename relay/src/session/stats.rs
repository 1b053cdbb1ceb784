//! Counters shared between the datapath worker that owns a stream (sole writer, relaxed
//! atomics on its own cache lines) and the control plane (reader: queries, timeouts, metrics).
//! Packets the XDP fast path forwards never reach the worker; the core thread copies their
//! counters from the kernel's maps into [`KernelCounters`] (sole writer there).

use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering::Relaxed};

use crate::rtp::RtpStatsSnapshot;

/// Per leg: what arrived from the leg's remote endpoint and what was sent to it.
#[derive(Debug, Default)]
pub struct LegCounters {
    pub rx_packets: AtomicU64,
    pub rx_bytes: AtomicU64,
    pub tx_packets: AtomicU64,
    pub tx_bytes: AtomicU64,
    /// From a source the latch rules reject (RTP Bleed attempts among them).
    pub dropped_source: AtomicU64,
    /// Received before the other leg had anywhere to send it (offer not yet answered).
    pub dropped_no_destination: AtomicU64,
    /// Lost in the socket receive queue while the stream was flooded (kernel drop counter).
    pub dropped_overflow: AtomicU64,
    /// Send failures (e.g. no route, buffer full).
    pub dropped_send: AtomicU64,
    /// Packets on the RTP port that are not RTP (STUN, DTLS, anything): forwarded unchanged.
    pub non_rtp: AtomicU64,
    pub rtp_expected: AtomicU64,
    pub rtp_lost: AtomicI64,
    pub rtp_out_of_order: AtomicU64,
    pub rtp_jitter_us: AtomicU64,
    /// Last accepted packet, in `clock` nanoseconds; 0 = none yet.
    pub last_rx_ns: AtomicU64,
}

/// Per leg: what the kernel fast path received from the leg's remote and sent to it, as totals
/// since the stream was first offloaded (absolute values, stored by the core's poll).
#[derive(Debug, Default)]
pub struct KernelCounters {
    pub rx_packets: AtomicU64,
    pub rx_bytes: AtomicU64,
    pub tx_packets: AtomicU64,
    pub tx_bytes: AtomicU64,
    pub rtp_expected: AtomicU64,
    pub rtp_received: AtomicU64,
    /// Last packet the kernel forwarded from this leg, in `clock` nanoseconds; 0 = none.
    pub last_rx_ns: AtomicU64,
    /// Packets from this leg's remote are forwarded in the kernel now.
    pub offloaded: AtomicBool,
}

#[derive(Debug, Default)]
pub struct StreamShared {
    pub legs: [LegCounters; 2],
    pub kernel: [KernelCounters; 2],
}

impl StreamShared {
    /// Latest packet seen on either leg by either path, in `clock` nanoseconds (0 = never).
    pub fn last_rx_ns(&self) -> u64 {
        self.legs
            .iter()
            .map(|l| l.last_rx_ns.load(Relaxed))
            .chain(self.kernel.iter().map(|k| k.last_rx_ns.load(Relaxed)))
            .max()
            .unwrap_or(0)
    }

    /// Leg `i`'s counters, userspace and kernel paths added up.
    pub fn leg_snapshot(&self, i: usize) -> LegSnapshot {
        let (Some(user), Some(kernel)) = (self.legs.get(i), self.kernel.get(i)) else {
            return LegSnapshot::default();
        };
        let mut s = user.snapshot();
        let k_rx = kernel.rx_packets.load(Relaxed);
        let k_expected = kernel.rtp_expected.load(Relaxed);
        let k_received = kernel.rtp_received.load(Relaxed);
        s.rx_packets += k_rx;
        s.rx_bytes += kernel.rx_bytes.load(Relaxed);
        s.tx_packets += kernel.tx_packets.load(Relaxed);
        s.tx_bytes += kernel.tx_bytes.load(Relaxed);
        s.rtp_expected += k_expected;
        s.rtp_lost += i64::try_from(k_expected).unwrap_or(i64::MAX)
            - i64::try_from(k_received).unwrap_or(i64::MAX);
        s.last_rx_ns = s.last_rx_ns.max(kernel.last_rx_ns.load(Relaxed));
        s.kernel_rx_packets = k_rx;
        s.offloaded = kernel.offloaded.load(Relaxed);
        s
    }
}

/// A plain copy of [`LegCounters`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LegSnapshot {
    pub rx_packets: u64,
    pub rx_bytes: u64,
    pub tx_packets: u64,
    pub tx_bytes: u64,
    pub dropped_source: u64,
    pub dropped_no_destination: u64,
    pub dropped_overflow: u64,
    pub dropped_send: u64,
    pub non_rtp: u64,
    pub rtp_expected: u64,
    pub rtp_lost: i64,
    pub rtp_out_of_order: u64,
    pub rtp_jitter_us: u64,
    pub last_rx_ns: u64,
    /// Of `rx_packets`, those the kernel fast path forwarded.
    pub kernel_rx_packets: u64,
    /// The leg's packets are forwarded in the kernel now.
    pub offloaded: bool,
}

impl LegSnapshot {
    pub fn dropped(&self) -> u64 {
        self.dropped_source
            + self.dropped_no_destination
            + self.dropped_overflow
            + self.dropped_send
    }
}

impl LegCounters {
    pub fn snapshot(&self) -> LegSnapshot {
        LegSnapshot {
            rx_packets: self.rx_packets.load(Relaxed),
            rx_bytes: self.rx_bytes.load(Relaxed),
            tx_packets: self.tx_packets.load(Relaxed),
            tx_bytes: self.tx_bytes.load(Relaxed),
            dropped_source: self.dropped_source.load(Relaxed),
            dropped_no_destination: self.dropped_no_destination.load(Relaxed),
            dropped_overflow: self.dropped_overflow.load(Relaxed),
            dropped_send: self.dropped_send.load(Relaxed),
            non_rtp: self.non_rtp.load(Relaxed),
            rtp_expected: self.rtp_expected.load(Relaxed),
            rtp_lost: self.rtp_lost.load(Relaxed),
            rtp_out_of_order: self.rtp_out_of_order.load(Relaxed),
            rtp_jitter_us: self.rtp_jitter_us.load(Relaxed),
            last_rx_ns: self.last_rx_ns.load(Relaxed),
            kernel_rx_packets: 0,
            offloaded: false,
        }
    }

    /// Single-writer increment: a load and a store, no locked read-modify-write, because only
    /// the owning worker writes.
    #[inline]
    pub fn bump(counter: &AtomicU64, by: u64) {
        counter.store(counter.load(Relaxed).wrapping_add(by), Relaxed);
    }
}

/// Turns one direction's RFC 3550 numbers into additions to monotonic totals. The per-source
/// numbers are not counters: they restart with a new source (SSRC change, sequence restart,
/// a zeroed kernel slot), and `lost` shrinks when a late packet arrives. Only growth beyond
/// what was already counted is added, so a late packet followed by a real loss is not counted
/// twice.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LossAccount {
    expected: u64,
    lost: i64,
    ssrc_changes: u64,
}

impl LossAccount {
    /// Feeds the source's current `expected` and `lost` (`ssrc_changes` cumulative, or 0 where
    /// unknown); returns `(expected, lost)` to add to the totals.
    pub fn update(&mut self, expected: u64, lost: i64, ssrc_changes: u64) -> (u64, u64) {
        if expected < self.expected || ssrc_changes != self.ssrc_changes {
            // A new source or sequence: its numbers start from zero.
            self.expected = 0;
            self.lost = 0;
            self.ssrc_changes = ssrc_changes;
        }
        let more_expected = expected - self.expected;
        self.expected = expected;
        let more_lost = if lost > self.lost {
            let d = lost - self.lost;
            self.lost = lost;
            d.unsigned_abs()
        } else {
            0
        };
        (more_expected, more_lost)
    }

    /// [`LossAccount::update`] from a userspace snapshot.
    pub fn update_from(&mut self, s: &RtpStatsSnapshot) -> (u64, u64) {
        self.update(s.expected, s.lost, s.ssrc_changes)
    }
}

/// Upper bounds of the jitter histogram buckets, in microseconds (the exported histogram is in
/// seconds). From well below a packet interval to far beyond what a jitter buffer hides.
pub const JITTER_BUCKETS_US: [u64; 10] = [
    500, 1_000, 2_000, 5_000, 10_000, 20_000, 30_000, 50_000, 100_000, 200_000,
];

/// A histogram of per-leg jitter samples with one writer (a datapath worker) and readers at
/// scrape time. Buckets are not cumulative here (the last one is +Inf); readers cumulate.
#[derive(Debug, Default)]
pub struct JitterHistogram {
    pub buckets: [AtomicU64; JITTER_BUCKETS_US.len() + 1],
    pub sum_us: AtomicU64,
}

impl JitterHistogram {
    /// Single-writer: see [`LegCounters::bump`].
    pub fn observe(&self, jitter_us: u64) {
        let i = JITTER_BUCKETS_US
            .iter()
            .position(|&bound| jitter_us <= bound)
            .unwrap_or(JITTER_BUCKETS_US.len());
        LegCounters::bump(&self.buckets[i], 1);
        LegCounters::bump(&self.sum_us, jitter_us);
    }

    pub fn snapshot(&self) -> JitterSnapshot {
        JitterSnapshot {
            buckets: std::array::from_fn(|i| self.buckets[i].load(Relaxed)),
            sum_us: self.sum_us.load(Relaxed),
        }
    }
}

/// A plain copy of a [`JitterHistogram`] (per-bucket counts, not cumulative).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct JitterSnapshot {
    pub buckets: [u64; JITTER_BUCKETS_US.len() + 1],
    pub sum_us: u64,
}

impl JitterSnapshot {
    pub fn add(&mut self, other: &JitterSnapshot) {
        for (a, b) in self.buckets.iter_mut().zip(other.buckets) {
            *a += b;
        }
        self.sum_us += other.sum_us;
    }

    pub fn count(&self) -> u64 {
        self.buckets.iter().sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loss_counts_only_growth_and_survives_late_packets() {
        let mut a = LossAccount::default();
        assert_eq!(a.update(10, 2, 0), (10, 2));
        // A late packet: lost shrinks, nothing is taken back.
        assert_eq!(a.update(10, 1, 0), (0, 0));
        // Another loss brings it back to 2: already counted.
        assert_eq!(a.update(12, 2, 0), (2, 0));
        assert_eq!(a.update(20, 5, 0), (8, 3));
        // Duplicates make lost negative: no addition.
        assert_eq!(a.update(21, -1, 0), (1, 0));
    }

    #[test]
    fn a_new_source_starts_from_zero() {
        let mut a = LossAccount::default();
        assert_eq!(a.update(100, 4, 0), (100, 4));
        // Sequence restart: expected falls back.
        assert_eq!(a.update(3, 0, 0), (3, 0));
        assert_eq!(a.update(50, 1, 0), (47, 1));
        // SSRC change even though the new source's numbers look larger.
        assert_eq!(a.update(60, 2, 1), (60, 2));
        // Probation of a new source reports zeros.
        assert_eq!(a.update(0, 0, 2), (0, 0));
        assert_eq!(a.update(5, 0, 2), (5, 0));
    }

    #[test]
    fn jitter_histogram_buckets_by_upper_bound() {
        let h = JitterHistogram::default();
        for us in [0, 500, 501, 20_000, 1_000_000] {
            h.observe(us);
        }
        let s = h.snapshot();
        assert_eq!(s.buckets[0], 2, "0 and 500 (inclusive bound)");
        assert_eq!(s.buckets[1], 1);
        assert_eq!(s.buckets[5], 1, "20 ms");
        assert_eq!(s.buckets[JITTER_BUCKETS_US.len()], 1, "+Inf");
        assert_eq!(s.count(), 5);
        assert_eq!(s.sum_us, 1_021_001);
        let mut total = s;
        total.add(&s);
        assert_eq!(total.count(), 10);
    }
}
