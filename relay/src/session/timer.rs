//! Hashed timing wheel for session timers (setup timeout, media timeout, TTL).
//!
//! Insertion is O(1); advancing touches only the slots whose time has come. Cancellation is
//! lazy: the owner re-validates a key when it fires (a generation number, a recomputed
//! deadline), which is cheaper than finding and removing entries.

use std::time::{Duration, Instant};

pub struct TimerWheel<K> {
    slots: Vec<Vec<(u64, K)>>,
    tick: Duration,
    epoch: Instant,
    /// Next tick to process; every tick before it has been expired.
    next_tick: u64,
    len: usize,
}

impl<K> TimerWheel<K> {
    /// `tick` is the resolution; a wheel of `slots` slots covers `tick * slots` per revolution
    /// (later deadlines simply stay in their slot for more revolutions).
    pub fn new(tick: Duration, slots: usize, now: Instant) -> TimerWheel<K> {
        let tick = tick.max(Duration::from_millis(1));
        TimerWheel {
            slots: (0..slots.max(1)).map(|_| Vec::new()).collect(),
            tick,
            epoch: now,
            next_tick: 0,
            len: 0,
        }
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Schedules `key` to fire at the first tick at or after `deadline`.
    pub fn insert(&mut self, deadline: Instant, key: K) {
        let tick = self.tick_of_ceil(deadline).max(self.next_tick);
        let slot = (tick % self.slots.len() as u64) as usize;
        self.slots[slot].push((tick, key));
        self.len += 1;
    }

    /// Moves every key whose deadline is at or before `now` into `out`.
    pub fn advance(&mut self, now: Instant, out: &mut Vec<K>) {
        let now_tick = self.tick_of_floor(now);
        if now_tick < self.next_tick {
            return;
        }
        let n = self.slots.len() as u64;
        // After a long gap one revolution visits every slot; no need to walk every tick.
        let first = self.next_tick.max(now_tick.saturating_sub(n - 1));
        for tick in first..=now_tick {
            let slot = &mut self.slots[(tick % n) as usize];
            let mut i = 0;
            while i < slot.len() {
                if slot[i].0 <= now_tick {
                    let (_, key) = slot.swap_remove(i);
                    out.push(key);
                    self.len -= 1;
                } else {
                    i += 1;
                }
            }
        }
        self.next_tick = now_tick + 1;
    }

    /// When the next tick is due: an upper bound on how long the owner may sleep.
    pub fn next_tick_at(&self) -> Instant {
        self.epoch + self.tick * u32::try_from(self.next_tick).unwrap_or(u32::MAX)
    }

    fn tick_of_floor(&self, t: Instant) -> u64 {
        (t.saturating_duration_since(self.epoch).as_nanos() / self.tick.as_nanos()) as u64
    }

    fn tick_of_ceil(&self, t: Instant) -> u64 {
        let ns = t.saturating_duration_since(self.epoch).as_nanos();
        ns.div_ceil(self.tick.as_nanos()) as u64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn fires_at_or_after_deadline_never_before() {
        let t0 = Instant::now();
        let mut w = TimerWheel::new(ms(100), 8, t0);
        w.insert(t0 + ms(250), "a");
        w.insert(t0 + ms(100), "b");
        let mut out = Vec::new();
        w.advance(t0 + ms(99), &mut out);
        assert!(out.is_empty());
        w.advance(t0 + ms(100), &mut out);
        assert_eq!(out, ["b"]);
        out.clear();
        w.advance(t0 + ms(299), &mut out);
        assert!(out.is_empty(), "250 rounds up to the 300 ms tick");
        w.advance(t0 + ms(300), &mut out);
        assert_eq!(out, ["a"]);
        assert!(w.is_empty());
    }

    #[test]
    fn deadlines_beyond_one_revolution_wait_their_turn() {
        let t0 = Instant::now();
        let mut w = TimerWheel::new(ms(10), 4, t0); // 40 ms per revolution
        w.insert(t0 + ms(130), 1);
        let mut out = Vec::new();
        for step in 0..13 {
            w.advance(t0 + ms(step * 10), &mut out);
            assert!(out.is_empty(), "fired early at {} ms", step * 10);
        }
        w.advance(t0 + ms(130), &mut out);
        assert_eq!(out, [1]);
    }

    #[test]
    fn long_gap_expires_everything_due() {
        let t0 = Instant::now();
        let mut w = TimerWheel::new(ms(10), 4, t0);
        for i in 0..100u64 {
            w.insert(t0 + ms(i * 7), i);
        }
        let mut out = Vec::new();
        w.advance(t0 + ms(10_000), &mut out);
        out.sort();
        assert_eq!(out, (0..100).collect::<Vec<_>>());
        assert!(w.is_empty());
    }

    #[test]
    fn past_deadline_fires_on_next_advance() {
        let t0 = Instant::now();
        let mut w = TimerWheel::new(ms(10), 16, t0);
        let mut out = Vec::new();
        w.advance(t0 + ms(500), &mut out);
        w.insert(t0 + ms(100), "late");
        w.advance(t0 + ms(505), &mut out);
        assert!(out.is_empty(), "scheduled into the next tick");
        w.advance(t0 + ms(510), &mut out);
        assert_eq!(out, ["late"]);
    }

    #[test]
    fn next_tick_moves_forward() {
        let t0 = Instant::now();
        let mut w: TimerWheel<()> = TimerWheel::new(ms(100), 8, t0);
        assert_eq!(w.next_tick_at(), t0);
        w.advance(t0 + ms(250), &mut Vec::new());
        assert_eq!(w.next_tick_at(), t0 + ms(300));
    }
}
