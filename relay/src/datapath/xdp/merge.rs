//! Per-CPU flow counters from the kernel, merged into one view (pure: unit-tested here).

use sluice_common::FlowStats;

/// One flow's counters summed over CPUs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FlowTotals {
    pub packets: u64,
    pub bytes: u64,
    /// Kernel monotonic time of the last forwarded packet; 0 = none.
    pub last_seen_ns: u64,
    pub rtp_received: u64,
    /// RTP packets the sequence numbers say were sent (RFC 3550 A.3: highest - first + 1).
    pub rtp_expected: u64,
}

impl FlowTotals {
    pub fn add(&mut self, other: &FlowTotals) {
        self.packets += other.packets;
        self.bytes += other.bytes;
        self.last_seen_ns = self.last_seen_ns.max(other.last_seen_ns);
        self.rtp_received += other.rtp_received;
        self.rtp_expected += other.rtp_expected;
    }
}

/// Sums a flow's per-CPU copies. Each CPU extends sequence numbers with its own wrap count from
/// its own first packet, so before taking the lowest first and the highest last number, every
/// CPU's numbers are moved to the wrap cycle of the CPU that saw most packets (the one nearest
/// within half the sequence space).
pub fn merge(per_cpu: &[FlowStats]) -> FlowTotals {
    let mut t = FlowTotals::default();
    for s in per_cpu {
        t.packets += s.packets;
        t.bytes += s.bytes;
        t.last_seen_ns = t.last_seen_ns.max(s.last_seen_ns);
        t.rtp_received += s.rtp_received;
    }
    let Some(reference) = per_cpu
        .iter()
        .filter(|s| s.rtp_received > 0)
        .max_by_key(|s| s.rtp_received)
    else {
        return t;
    };
    let ref_base = i64::from(reference.rtp_base_seq);
    let (mut first, mut last) = (i64::MAX, i64::MIN);
    for s in per_cpu.iter().filter(|s| s.rtp_received > 0) {
        let base = i64::from(s.rtp_base_seq);
        // Distance of this CPU's first number from the reference's, within +-2^15.
        let delta =
            i64::from((s.rtp_base_seq as u16).wrapping_sub(reference.rtp_base_seq as u16) as i16);
        let shift = ref_base + delta - base;
        first = first.min(base + shift);
        last = last.max(i64::from(s.rtp_max_seq) + shift);
    }
    t.rtp_expected = u64::try_from(last - first + 1).unwrap_or(0);
    t
}

#[cfg(test)]
mod tests {
    use super::*;
    use sluice_common::track_seq;

    fn cpu(seqs: impl IntoIterator<Item = u16>) -> FlowStats {
        let mut s = FlowStats::default();
        for seq in seqs {
            track_seq(&mut s, seq);
            s.packets += 1;
            s.bytes += 160;
        }
        s
    }

    #[test]
    fn one_cpu_counts_loss_from_the_sequence_gap() {
        let seqs = (100u16..200).filter(|s| s % 10 != 0);
        let t = merge(&[cpu(seqs), FlowStats::default()]);
        assert_eq!(t.rtp_received, 90);
        // 101..=199 expected (100 was never seen, so the count starts after it), 9 lost.
        assert_eq!(t.rtp_expected, 99);
        assert_eq!(t.packets, 90);
        assert_eq!(t.bytes, 90 * 160);
    }

    #[test]
    fn a_flow_moving_between_cpus_across_a_wrap_is_not_loss() {
        // CPU 0 sees the stream up to the wrap, CPU 1 after it: both start their own cycle at 0.
        let a = cpu(65_000u16..=65_535);
        let b = cpu(0u16..500);
        let t = merge(&[a, b]);
        assert_eq!(t.rtp_received, 536 + 500);
        assert_eq!(t.rtp_expected, 536 + 500);
    }

    #[test]
    fn no_rtp_means_no_expectation() {
        let s = FlowStats {
            packets: 5,
            last_seen_ns: 42,
            ..FlowStats::default()
        };
        let t = merge(&[s, s]);
        assert_eq!((t.packets, t.last_seen_ns, t.rtp_expected), (10, 42, 0));
    }
}
