//! One monotonic time base shared by control and datapath threads, so a worker's "last packet
//! at" (stored as nanoseconds in an atomic) compares with the control plane's `Instant`s.

use std::sync::OnceLock;
use std::time::{Duration, Instant};

static EPOCH: OnceLock<Instant> = OnceLock::new();

fn epoch() -> Instant {
    *EPOCH.get_or_init(Instant::now)
}

/// Nanoseconds from the process epoch to `t` (0 for instants before it).
pub fn to_ns(t: Instant) -> u64 {
    u64::try_from(t.saturating_duration_since(epoch()).as_nanos()).unwrap_or(u64::MAX)
}

/// The instant `ns` nanoseconds after the process epoch.
pub fn from_ns(ns: u64) -> Instant {
    epoch() + Duration::from_nanos(ns)
}

pub fn now_ns() -> u64 {
    to_ns(Instant::now())
}
