//! Receive-side accounting per stream (loss, reordering, duplicates) and latency summaries.

use hdrhistogram::Histogram;
use serde::Serialize;

/// How far back (in packets) duplicates are recognised.
const WINDOW: u64 = 1024;
const WORDS: usize = (WINDOW / 64) as usize;

/// What a received sequence number turned out to be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Arrival {
    /// Newer than anything seen (possibly after a gap).
    InOrder,
    /// Older than the newest seen, first copy.
    OutOfOrder,
    /// Seen before.
    Duplicate,
}

/// One stream's receive state: the newest sequence number and a bitmap of the `WINDOW`
/// numbers below it.
#[derive(Debug, Clone, Default)]
pub struct StreamRx {
    newest: Option<u64>,
    /// Bit i set = sequence `newest - i` received.
    seen: [u64; WORDS],
    /// Distinct packets received.
    pub received: u64,
    pub out_of_order: u64,
    pub duplicates: u64,
}

impl StreamRx {
    fn bit(&self, back: u64) -> bool {
        self.seen[(back / 64) as usize] >> (back % 64) & 1 == 1
    }

    fn set(&mut self, back: u64) {
        self.seen[(back / 64) as usize] |= 1 << (back % 64);
    }

    /// Shifts the window so that bit 0 is `newest + by`.
    fn advance(&mut self, by: u64) {
        if by >= WINDOW {
            self.seen = [0; WORDS];
            return;
        }
        let words = (by / 64) as usize;
        let bits = by % 64;
        for i in (0..WORDS).rev() {
            let src = i.checked_sub(words);
            let hi = src.map_or(0, |s| self.seen[s]);
            let lo = src
                .and_then(|s| s.checked_sub(1))
                .map_or(0, |s| self.seen[s]);
            self.seen[i] = if bits == 0 {
                hi
            } else {
                (hi << bits) | (lo >> (64 - bits))
            };
        }
    }

    /// Accounts one received packet.
    pub fn on_packet(&mut self, seq: u64) -> Arrival {
        match self.newest {
            None => {
                self.newest = Some(seq);
                self.set(0);
                self.received += 1;
                Arrival::InOrder
            }
            Some(newest) if seq > newest => {
                self.advance(seq - newest);
                self.newest = Some(seq);
                self.set(0);
                self.received += 1;
                Arrival::InOrder
            }
            Some(newest) => {
                let back = newest - seq;
                if back < WINDOW {
                    if self.bit(back) {
                        self.duplicates += 1;
                        return Arrival::Duplicate;
                    }
                    self.set(back);
                }
                // Beyond the window a duplicate cannot be told apart: counted as reordered.
                self.received += 1;
                self.out_of_order += 1;
                Arrival::OutOfOrder
            }
        }
    }

    /// Sent packets that never arrived (0 when more distinct ones arrived than were sent).
    pub fn lost(&self, sent: u64) -> u64 {
        sent.saturating_sub(self.received)
    }
}

/// A latency histogram in ns, 1 ns .. 60 s, 3 significant digits.
pub fn latency_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 60_000_000_000, 3).expect("valid histogram bounds")
}

/// Records `ns`, clamped into the histogram's range.
pub fn record(h: &mut Histogram<u64>, ns: u64) {
    let v = ns.clamp(1, h.high());
    h.record(v).expect("value clamped into range");
}

/// Percentiles of a latency histogram, in microseconds.
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct LatencySummary {
    pub count: u64,
    pub mean_us: f64,
    pub p50_us: f64,
    pub p90_us: f64,
    pub p99_us: f64,
    pub p999_us: f64,
    pub max_us: f64,
}

impl LatencySummary {
    pub fn of(h: &Histogram<u64>) -> LatencySummary {
        if h.is_empty() {
            return LatencySummary::default();
        }
        let us = |ns: u64| ns as f64 / 1000.0;
        LatencySummary {
            count: h.len(),
            mean_us: h.mean() / 1000.0,
            p50_us: us(h.value_at_quantile(0.50)),
            p90_us: us(h.value_at_quantile(0.90)),
            p99_us: us(h.value_at_quantile(0.99)),
            p999_us: us(h.value_at_quantile(0.999)),
            max_us: us(h.max()),
        }
    }
}

/// Totals for one direction of all calls.
#[derive(Debug, Clone, Default, Serialize)]
pub struct DirectionTotals {
    pub sent: u64,
    pub received: u64,
    pub lost: u64,
    pub out_of_order: u64,
    pub duplicates: u64,
    /// Packets whose stamp named another call's stream (cross-talk in the relay).
    pub misrouted: u64,
    /// Packets that did not come from the relay address the call was given.
    pub wrong_source: u64,
    /// Packets without our stamp.
    pub foreign: u64,
    pub rtcp_sent: u64,
    pub rtcp_received: u64,
    /// Calls (of this direction) that lost at least one packet.
    pub streams_with_loss: u64,
    pub latency: LatencySummary,
}

impl DirectionTotals {
    /// Adds one stream's counts (latency is filled separately).
    pub fn add_stream(&mut self, sent: u64, rx: &StreamRx) {
        self.sent += sent;
        self.received += rx.received;
        let lost = rx.lost(sent);
        self.lost += lost;
        self.streams_with_loss += u64::from(lost > 0);
        self.out_of_order += rx.out_of_order;
        self.duplicates += rx.duplicates;
    }

    pub fn loss_ratio(&self) -> f64 {
        if self.sent == 0 {
            0.0
        } else {
            self.lost as f64 / self.sent as f64
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn feed(seqs: &[u64]) -> StreamRx {
        let mut s = StreamRx::default();
        for &q in seqs {
            s.on_packet(q);
        }
        s
    }

    #[test]
    fn in_order_stream() {
        let s = feed(&(0..5000).collect::<Vec<_>>());
        assert_eq!((s.received, s.out_of_order, s.duplicates), (5000, 0, 0));
        assert_eq!(s.lost(5000), 0);
    }

    #[test]
    fn gaps_are_losses() {
        let s = feed(&[0, 1, 2, 5, 6, 9]);
        assert_eq!(s.received, 6);
        assert_eq!(s.lost(10), 4); // 3, 4, 7, 8
        assert_eq!(s.out_of_order, 0);
        // Trailing loss: sent 12, last two never came.
        assert_eq!(s.lost(12), 6);
    }

    #[test]
    fn reordering_and_late_fill_in() {
        let mut s = StreamRx::default();
        assert_eq!(s.on_packet(0), Arrival::InOrder);
        assert_eq!(s.on_packet(2), Arrival::InOrder);
        assert_eq!(s.on_packet(1), Arrival::OutOfOrder);
        assert_eq!(s.on_packet(3), Arrival::InOrder);
        assert_eq!(s.received, 4);
        assert_eq!(s.out_of_order, 1);
        assert_eq!(s.lost(4), 0, "a reordered packet is not lost");
    }

    #[test]
    fn duplicates_in_and_out_of_order() {
        let mut s = StreamRx::default();
        for q in [0, 1, 1, 2, 0, 5, 3, 3, 5] {
            s.on_packet(q);
        }
        assert_eq!(s.duplicates, 4); // 1, 0, 3, 5
        assert_eq!(s.received, 5); // 0 1 2 5 3
        assert_eq!(s.out_of_order, 1); // 3
        assert_eq!(s.lost(6), 1); // 4
    }

    #[test]
    fn window_shifts_across_word_boundaries() {
        let mut s = StreamRx::default();
        // Jumps of various sizes, then look back at every earlier one: all duplicates.
        let seqs = [0u64, 1, 63, 64, 65, 127, 128, 200, 1000, 1022];
        for q in seqs {
            assert_eq!(s.on_packet(q), Arrival::InOrder);
        }
        for q in seqs {
            assert_eq!(s.on_packet(q), Arrival::Duplicate, "seq {q}");
        }
        // Holes inside the window are still fillable exactly once.
        assert_eq!(s.on_packet(500), Arrival::OutOfOrder);
        assert_eq!(s.on_packet(500), Arrival::Duplicate);
        // A big jump clears the window: very old ones are then counted as reordered.
        assert_eq!(s.on_packet(10_000), Arrival::InOrder);
        assert_eq!(s.on_packet(1), Arrival::OutOfOrder);
        assert_eq!(s.on_packet(9_999 - 1023 + 1), Arrival::OutOfOrder);
        assert_eq!(s.on_packet(9_999 - 1023 + 1), Arrival::Duplicate);
    }

    #[test]
    fn random_shuffles_match_a_set_model() {
        // Deterministic pseudo-random reorder/duplicate/drop of 3000 packets, within the window.
        let mut x: u64 = 0x2545_F491_4F6C_DD1D;
        let mut next = || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        let mut seqs: Vec<u64> = Vec::new();
        for q in 0..3000u64 {
            match next() % 10 {
                0 => {}                   // dropped
                1 => seqs.extend([q, q]), // duplicated
                _ => seqs.push(q),
            }
        }
        // Local swaps (reordering by at most a few positions).
        for i in (1..seqs.len()).step_by(7) {
            if next() % 2 == 0 {
                seqs.swap(i - 1, i);
            }
        }
        let s = feed(&seqs);
        let distinct: std::collections::BTreeSet<u64> = seqs.iter().copied().collect();
        assert_eq!(s.received, distinct.len() as u64);
        assert_eq!(s.duplicates, (seqs.len() - distinct.len()) as u64);
        assert_eq!(s.lost(3000), 3000 - distinct.len() as u64);
        // Model of out-of-order: first copies arriving below the running maximum.
        let (mut max, mut seen, mut ooo) = (None::<u64>, std::collections::HashSet::new(), 0);
        for &q in &seqs {
            if seen.insert(q) {
                if max.is_some_and(|m| q < m) {
                    ooo += 1;
                }
                max = Some(max.map_or(q, |m: u64| m.max(q)));
            }
        }
        assert_eq!(s.out_of_order, ooo);
    }

    #[test]
    fn totals_and_summary() {
        let mut t = DirectionTotals::default();
        t.add_stream(10, &feed(&[0, 1, 2, 3, 4, 5, 6, 7, 8, 9]));
        t.add_stream(10, &feed(&[0, 2, 1, 3]));
        assert_eq!((t.sent, t.received, t.lost, t.out_of_order), (20, 14, 6, 1));
        assert_eq!(t.streams_with_loss, 1);
        assert!((t.loss_ratio() - 0.3).abs() < 1e-9);

        let mut h = latency_histogram();
        for v in 1..=1000u64 {
            record(&mut h, v * 1000);
        }
        record(&mut h, 0); // clamped to 1 ns
        let s = LatencySummary::of(&h);
        assert_eq!(s.count, 1001);
        assert!((s.p50_us - 500.0).abs() < 1.0, "{}", s.p50_us);
        assert!((s.p99_us - 990.0).abs() < 1.5, "{}", s.p99_us);
        assert!((s.max_us - 1000.0).abs() < 1.0);
        assert_eq!(
            LatencySummary::of(&latency_histogram()),
            LatencySummary::default()
        );
    }
}
