//! Reply cache for retransmitted rtpproxy commands (sans-IO).
//!
//! Datagram clients retransmit a command with the same cookie when the reply is late (Kamailio:
//! every `rtpproxy_tout`, 1 s, up to `rtpproxy_retr`, 5, times). rtpproxy looks the cookie up
//! before executing and re-sends the stored reply instead of running the command twice
//! (`rtpp_command_guard_retrans`, `src/rtpp_command.c`); entries live 32 s + 3 s
//! (`rtpp_cmd_rcache_ctor`, `src/rtpp_command_async.c`). [`ReplyCache`] does the same with a
//! caller-chosen key (typically the peer address and the cookie) and a caller-supplied clock.
//!
//! Every operation is O(1) amortised: a `HashMap` holds the entries and a `VecDeque` their keys in
//! insertion order, so expiry and eviction pop from the front. A re-inserted key gets a new
//! generation; its older queue record is stale and skipped when it reaches the front.

use std::collections::{HashMap, VecDeque};
use std::hash::Hash;
use std::time::{Duration, Instant};

/// How long a reply is kept: rtpproxy's 32 s + 3 s.
pub const DEFAULT_TTL: Duration = Duration::from_secs(35);
/// Default bound on the number of remembered replies.
pub const DEFAULT_CAPACITY: usize = 65_536;

#[derive(Debug)]
struct Entry {
    reply: String,
    inserted: Instant,
    generation: u64,
}

/// Encoded replies by key, expiring after a TTL, at most `capacity` of them (the oldest is evicted
/// first). `now` is always passed in; it is expected not to go backwards between inserts.
#[derive(Debug)]
pub struct ReplyCache<K> {
    entries: HashMap<K, Entry>,
    /// Keys in insertion order with the generation they were inserted with.
    order: VecDeque<(K, u64)>,
    ttl: Duration,
    capacity: usize,
    next_generation: u64,
}

impl<K: Hash + Eq + Clone> Default for ReplyCache<K> {
    fn default() -> Self {
        Self::new(DEFAULT_TTL, DEFAULT_CAPACITY)
    }
}

impl<K: Hash + Eq + Clone> ReplyCache<K> {
    /// A cache keeping replies for `ttl`, at most `capacity` of them (0 disables the cache).
    pub fn new(ttl: Duration, capacity: usize) -> Self {
        // Sized up front, twice over: growing a table of tens of thousands of entries rehashes
        // it all at once, a multi-millisecond stall of command handling (measured: 4-34 ms at
        // 15k, 30k, 60k entries); with at most half the table live, the tombstones eviction
        // leaves behind are cleared by rare in-place rehashes instead of a resize.
        ReplyCache {
            entries: HashMap::with_capacity(capacity.saturating_mul(2)),
            order: VecDeque::with_capacity(capacity.saturating_mul(2)),
            ttl,
            capacity,
            next_generation: 0,
        }
    }

    pub fn ttl(&self) -> Duration {
        self.ttl
    }

    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Entries held, expired ones not yet purged included.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The stored reply for `key`, unless it is older than the TTL at `now`.
    pub fn get(&self, key: &K, now: Instant) -> Option<&str> {
        self.entries
            .get(key)
            .filter(|e| !self.expired(e, now))
            .map(|e| e.reply.as_str())
    }

    /// Remembers `reply` for `key` as of `now`, replacing what the key held (its TTL restarts).
    /// Purges expired entries and, when full, evicts the oldest.
    pub fn insert(&mut self, key: K, reply: String, now: Instant) {
        if self.capacity == 0 {
            return;
        }
        self.purge(now);
        if !self.entries.contains_key(&key) {
            while self.entries.len() >= self.capacity {
                if !self.pop_front() {
                    break;
                }
            }
        }
        let generation = self.next_generation;
        self.next_generation = self.next_generation.wrapping_add(1);
        self.order.push_back((key.clone(), generation));
        self.entries.insert(
            key,
            Entry {
                reply,
                inserted: now,
                generation,
            },
        );
        // Re-inserts leave stale records behind the live ones; keep the queue within a constant
        // factor of the live entries (amortised O(1): a compaction follows >= capacity pushes).
        if self.order.len() > 2 * self.capacity.max(self.entries.len()) {
            let entries = &self.entries;
            self.order
                .retain(|(k, g)| entries.get(k).is_some_and(|e| e.generation == *g));
        }
    }

    /// Drops the entries older than the TTL at `now` (call it periodically, as rtpproxy does
    /// every 3 s, or rely on `insert` doing it).
    pub fn purge(&mut self, now: Instant) {
        while let Some((key, generation)) = self.order.front() {
            match self.entries.get(key) {
                Some(e) if e.generation == *generation => {
                    if !self.expired(e, now) {
                        break;
                    }
                    self.entries.remove(key);
                }
                // Stale record of a re-inserted or already removed key.
                _ => {}
            }
            self.order.pop_front();
        }
    }

    /// Removes the oldest live entry; false when there is none.
    fn pop_front(&mut self) -> bool {
        while let Some((key, generation)) = self.order.pop_front() {
            if self
                .entries
                .get(&key)
                .is_some_and(|e| e.generation == generation)
            {
                self.entries.remove(&key);
                return true;
            }
        }
        false
    }

    fn expired(&self, entry: &Entry, now: Instant) -> bool {
        now.saturating_duration_since(entry.inserted) >= self.ttl
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::SocketAddr;

    type Key = (SocketAddr, String);

    fn key(port: u16, cookie: &str) -> Key {
        (SocketAddr::from(([127, 0, 0, 1], port)), cookie.to_owned())
    }

    #[test]
    fn hit_and_miss() {
        let t0 = Instant::now();
        let mut cache = ReplyCache::default();
        assert_eq!(cache.ttl(), Duration::from_secs(35));
        assert_eq!(cache.get(&key(1, "a"), t0), None);
        cache.insert(key(1, "a"), "a 35000\n".to_owned(), t0);
        assert_eq!(cache.get(&key(1, "a"), t0), Some("a 35000\n"));
        assert_eq!(
            cache.get(&key(1, "a"), t0 + Duration::from_secs(34)),
            Some("a 35000\n")
        );
        // Same cookie from another peer, another cookie from the same peer: misses.
        assert_eq!(cache.get(&key(2, "a"), t0), None);
        assert_eq!(cache.get(&key(1, "b"), t0), None);
        assert_eq!(cache.len(), 1);
    }

    #[test]
    fn miss_after_ttl_and_purge() {
        let t0 = Instant::now();
        let mut cache = ReplyCache::new(Duration::from_secs(35), 16);
        cache.insert(key(1, "a"), "a 0\n".to_owned(), t0);
        cache.insert(
            key(1, "b"),
            "b 0\n".to_owned(),
            t0 + Duration::from_secs(10),
        );
        let later = t0 + Duration::from_secs(35);
        assert_eq!(cache.get(&key(1, "a"), later), None);
        assert_eq!(cache.get(&key(1, "b"), later), Some("b 0\n"));
        // A clock going backwards does not panic (and does not expire).
        if let Some(before) = t0.checked_sub(Duration::from_secs(1)) {
            assert_eq!(cache.get(&key(1, "a"), before), Some("a 0\n"));
        }
        cache.purge(later);
        assert_eq!(cache.len(), 1);
        cache.purge(t0 + Duration::from_secs(45));
        assert!(cache.is_empty());
        // Insert purges too.
        cache.insert(
            key(1, "c"),
            "c 0\n".to_owned(),
            t0 + Duration::from_secs(50),
        );
        cache.insert(
            key(1, "d"),
            "d 0\n".to_owned(),
            t0 + Duration::from_secs(90),
        );
        assert_eq!(cache.len(), 1);
    }

    #[test]
    fn capacity_evicts_oldest() {
        let t0 = Instant::now();
        let mut cache = ReplyCache::new(DEFAULT_TTL, 3);
        for (i, c) in ["a", "b", "c", "d"].iter().enumerate() {
            cache.insert(
                key(1, c),
                format!("{c} 0\n"),
                t0 + Duration::from_millis(i as u64),
            );
        }
        assert_eq!(cache.len(), 3);
        assert_eq!(cache.get(&key(1, "a"), t0), None);
        for c in ["b", "c", "d"] {
            assert!(cache.get(&key(1, c), t0).is_some(), "{c}");
        }
        // Capacity 0 disables the cache.
        let mut off = ReplyCache::new(DEFAULT_TTL, 0);
        off.insert(key(1, "a"), "x".to_owned(), t0);
        assert_eq!(off.get(&key(1, "a"), t0), None);
    }

    #[test]
    fn reinsert_replaces_and_restarts_ttl() {
        let t0 = Instant::now();
        let mut cache = ReplyCache::new(Duration::from_secs(35), 2);
        cache.insert(key(1, "a"), "a 1\n".to_owned(), t0);
        cache.insert(key(1, "b"), "b 1\n".to_owned(), t0 + Duration::from_secs(1));
        // Re-inserting a present key does not evict anything.
        cache.insert(
            key(1, "a"),
            "a 2\n".to_owned(),
            t0 + Duration::from_secs(20),
        );
        assert_eq!(cache.len(), 2);
        assert_eq!(cache.get(&key(1, "a"), t0), Some("a 2\n"));
        // The stale front record of "a" must not expire the new "a".
        let t40 = t0 + Duration::from_secs(40);
        cache.purge(t40);
        assert_eq!(cache.get(&key(1, "a"), t40), Some("a 2\n"));
        assert_eq!(cache.get(&key(1, "b"), t40), None);
        assert_eq!(cache.len(), 1);
        // Now "a" is the oldest live entry and is the one evicted when full.
        cache.insert(key(1, "c"), "c\n".to_owned(), t40);
        cache.insert(key(1, "d"), "d\n".to_owned(), t40);
        assert_eq!(cache.get(&key(1, "a"), t40), None);
        assert_eq!(cache.len(), 2);
    }

    #[test]
    fn many_reinserts_keep_the_queue_bounded() {
        let t0 = Instant::now();
        let mut cache = ReplyCache::new(DEFAULT_TTL, 4);
        cache.insert(key(9, "old"), "old\n".to_owned(), t0);
        for i in 0..10_000u64 {
            cache.insert(
                key(1, "hot"),
                format!("{i}\n"),
                t0 + Duration::from_millis(i),
            );
            assert!(cache.order.len() <= 2 * 4 + 1);
        }
        assert_eq!(cache.get(&key(1, "hot"), t0), Some("9999\n"));
        assert_eq!(cache.get(&key(9, "old"), t0), Some("old\n"));
        assert_eq!(cache.len(), 2);
    }
}
