//! Per-CPU flow counters from the kernel, merged into one view (pure: unit-tested here).

use sluice_common::FlowStats;

use crate::session::stats::LossAccount;

/// One flow's counters summed over CPUs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FlowTotals {
    pub packets: u64,
    pub bytes: u64,
    pub rtp_received: u64,
    /// RTP packets the sequence numbers say were sent (RFC 3550 A.3: highest - first + 1).
    pub rtp_expected: u64,
}

impl FlowTotals {
    pub fn add(&mut self, other: &FlowTotals) {
        self.packets += other.packets;
        self.bytes += other.bytes;
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

/// What the kernel path forwarded since the daemon started, per ingress leg: monotonic, fed
/// from every flow slot's counters by [`FlowAccount`] whether the flow is still installed or
/// long removed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PathTotals {
    pub packets: [u64; 2],
    /// UDP payload bytes, as the userspace path counts them.
    pub bytes: [u64; 2],
    pub rtp_expected: u64,
    pub rtp_lost: u64,
}

/// What one flow slot has contributed to the [`PathTotals`] so far. A slot's counters only grow
/// until the daemon zeroes it (a relatch, or reuse for another flow), so each read adds just
/// the growth: a flow polled many times and then removed is counted once, and its counters
/// stay in the totals after it is gone.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FlowAccount {
    packets: u64,
    bytes: u64,
    loss: LossAccount,
}

impl FlowAccount {
    /// Adds what `now` (the slot's current merged counters) holds beyond the last call.
    pub fn account(&mut self, now: &FlowTotals, ingress_leg: usize, totals: &mut PathTotals) {
        let leg = ingress_leg.min(1);
        totals.packets[leg] += now.packets.saturating_sub(self.packets);
        totals.bytes[leg] += now.bytes.saturating_sub(self.bytes);
        self.packets = self.packets.max(now.packets);
        self.bytes = self.bytes.max(now.bytes);
        let lost = i64::try_from(now.rtp_expected).unwrap_or(i64::MAX)
            - i64::try_from(now.rtp_received).unwrap_or(i64::MAX);
        let (expected, lost) = self.loss.update(now.rtp_expected, lost, 0);
        totals.rtp_expected += expected;
        totals.rtp_lost += lost;
    }

    /// The slot was zeroed: its counters start again from nothing.
    pub fn reset(&mut self) {
        *self = FlowAccount::default();
    }
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
    fn polled_then_removed_flows_count_once_and_stay_counted() {
        let mut totals = PathTotals::default();
        let (mut a, mut b) = (FlowAccount::default(), FlowAccount::default());
        let at = |packets: u64, expected: u64, received: u64| FlowTotals {
            packets,
            bytes: packets * 160,
            rtp_expected: expected,
            rtp_received: received,
        };
        // Polls of two flows in opposite directions.
        a.account(&at(10, 10, 10), 0, &mut totals);
        b.account(&at(5, 0, 0), 1, &mut totals);
        a.account(&at(25, 26, 24), 0, &mut totals);
        assert_eq!(totals.packets, [25, 5]);
        assert_eq!(totals.bytes, [25 * 160, 5 * 160]);
        assert_eq!((totals.rtp_expected, totals.rtp_lost), (26, 2));
        // Final read at removal, then the flow is gone: nothing more is added, nothing
        // vanishes.
        a.account(&at(30, 31, 29), 0, &mut totals);
        assert_eq!(totals.packets, [30, 5]);
        assert_eq!((totals.rtp_expected, totals.rtp_lost), (31, 2));
        // A relatch zeroes b's slot: its old counts stay, the new ones add on top.
        b.account(&at(7, 0, 0), 1, &mut totals);
        b.reset();
        b.account(&at(3, 3, 3), 1, &mut totals);
        assert_eq!(totals.packets, [30, 10]);
        assert_eq!(totals.rtp_expected, 34);
    }

    #[test]
    fn no_rtp_means_no_expectation() {
        let s = FlowStats {
            packets: 5,
            ..FlowStats::default()
        };
        let t = merge(&[s, s]);
        assert_eq!((t.packets, t.rtp_expected), (10, 0));
    }
}
