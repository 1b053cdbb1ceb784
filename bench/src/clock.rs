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

/// An async sleep with the precision of [`sleep_until_ns`], for schedules on a tokio runtime.
///
/// tokio's timers round deadlines up to whole milliseconds, so a schedule of 5,000 starts per
/// second would release them in bursts of five every millisecond, each up to 1 ms late, and the
/// relay would see that burstiness rather than the offered rate. A timerfd armed with the
/// absolute deadline wakes the runtime through its reactor instead (one fd per sleeper).
pub struct AsyncSleeper {
    fd: tokio::io::unix::AsyncFd<TimerFdHandle>,
}

/// `AsyncFd` wants `AsRawFd`; nix's `TimerFd` only offers `AsFd`.
struct TimerFdHandle(nix::sys::timerfd::TimerFd);

impl std::os::fd::AsRawFd for TimerFdHandle {
    fn as_raw_fd(&self) -> std::os::fd::RawFd {
        use std::os::fd::AsFd;
        self.0.as_fd().as_raw_fd()
    }
}

impl AsyncSleeper {
    /// Must be called within a tokio runtime with IO enabled. The calling thread's timer slack
    /// applies to the wake-ups (see [`tight_timer_slack`]).
    pub fn new() -> std::io::Result<AsyncSleeper> {
        use nix::sys::timerfd::{ClockId, TimerFd, TimerFlags};
        let fd = TimerFd::new(
            ClockId::CLOCK_MONOTONIC,
            TimerFlags::TFD_NONBLOCK | TimerFlags::TFD_CLOEXEC,
        )?;
        // SAFETY: the handle owns the timerfd and hands out that same descriptor until the
        // `AsyncFd` (its only owner) drops it.
        let fd = unsafe { tokio::io::unix::AsyncFd::register(TimerFdHandle(fd)) }
            .map_err(|e| e.into_parts().1)?;
        Ok(AsyncSleeper { fd })
    }

    /// Returns at `deadline_ns` ([`now_ns`] time), at once if it has passed.
    pub async fn sleep_until_ns(&mut self, deadline_ns: u64) -> std::io::Result<()> {
        use nix::sys::time::TimeSpec;
        use nix::sys::timerfd::{Expiration, TimerSetTimeFlags};
        if now_ns() >= deadline_ns {
            return Ok(());
        }
        let epoch = *EPOCH.get_or_init(monotonic_raw_ns);
        let abs = epoch + deadline_ns;
        let at = TimeSpec::new(
            (abs / 1_000_000_000) as libc::time_t,
            (abs % 1_000_000_000) as libc::c_long,
        );
        let timer = &self.fd.get_ref().0;
        timer.set(
            Expiration::OneShot(at),
            TimerSetTimeFlags::TFD_TIMER_ABSTIME,
        )?;
        loop {
            let mut ready = self.fd.readable().await?;
            // Non-blocking read of the expiry count: EAGAIN until the deadline.
            match ready.get_inner().0.wait() {
                Ok(()) => return Ok(()),
                Err(nix::errno::Errno::EAGAIN) => ready.clear_ready(),
                Err(e) => return Err(e.into()),
            }
        }
    }
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

    #[test]
    fn async_sleeper_wakes_at_sub_millisecond_deadlines() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        rt.block_on(async {
            let mut sleeper = AsyncSleeper::new().expect("timerfd");
            let start = now_ns();
            // Deadlines 200 us apart, finer than tokio's millisecond timer: each one is
            // reached, never early. (How late is a benchmark question: see the control run's
            // "cycle from schedule".)
            for i in 1..=20u64 {
                let deadline = start + i * 200_000;
                sleeper.sleep_until_ns(deadline).await.expect("sleep");
                let now = now_ns();
                assert!(now >= deadline, "woke {} ns early", deadline - now);
            }
            assert!(now_ns() - start < 1_000_000_000);
            sleeper.sleep_until_ns(0).await.expect("past deadline");
        });
    }
}
