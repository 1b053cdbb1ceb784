//! One monotonic clock for the whole run: nanoseconds of CLOCK_MONOTONIC (what
//! `std::time::Instant` uses on Linux) since an epoch taken at start. Sender and receiver threads
//! of one process share it, so `receive time - stamp` is the one-way latency.

use std::sync::OnceLock;

static EPOCH: OnceLock<u64> = OnceLock::new();

/// Raw CLOCK_MONOTONIC in ns.
pub fn monotonic_raw_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: valid pointer to a timespec; CLOCK_MONOTONIC always exists on Linux.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// Nanoseconds since the run's epoch (fixed by the first call).
pub fn now_ns() -> u64 {
    let epoch = *EPOCH.get_or_init(monotonic_raw_ns);
    monotonic_raw_ns().saturating_sub(epoch)
}

/// Sleeps until `deadline_ns` (epoch-relative) with clock_nanosleep(TIMER_ABSTIME), so a
/// sequence of deadlines does not drift. Returns at once when the deadline has passed.
pub fn sleep_until_ns(deadline_ns: u64) {
    let epoch = *EPOCH.get_or_init(monotonic_raw_ns);
    let abs = epoch + deadline_ns;
    let ts = libc::timespec {
        tv_sec: (abs / 1_000_000_000) as libc::time_t,
        tv_nsec: (abs % 1_000_000_000) as libc::c_long,
    };
    loop {
        // SAFETY: valid timespec; a null remainder is allowed with TIMER_ABSTIME.
        let rc = unsafe {
            libc::clock_nanosleep(
                libc::CLOCK_MONOTONIC,
                libc::TIMER_ABSTIME,
                &ts,
                std::ptr::null_mut(),
            )
        };
        if rc != libc::EINTR {
            return;
        }
    }
}

/// Lowers this thread's timer slack (default 50 us) so sleeps wake close to their deadline.
pub fn tight_timer_slack() {
    // SAFETY: PR_SET_TIMERSLACK takes an unsigned long in ns; it only affects this thread.
    unsafe { libc::prctl(libc::PR_SET_TIMERSLACK, 1000 as libc::c_ulong, 0, 0, 0) };
}

/// CPU time consumed by the calling thread, in ns.
pub fn thread_cpu_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: valid pointer.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clock_is_monotonic_and_sleep_reaches_deadline() {
        let a = now_ns();
        let deadline = a + 2_000_000;
        sleep_until_ns(deadline);
        let b = now_ns();
        assert!(b >= deadline, "{b} < {deadline}");
        assert!(b - a < 1_000_000_000);
        sleep_until_ns(0); // in the past: immediate
    }
}
