//! The handle's one clock: every time the crate reads (the cache's ages, invalidation marks,
//! session rechecks, the miss budget, the breaker, id6's rate-limit window, JWT expiry) is a
//! reading of [`Clock`], and every timer that waits on such a time sleeps on it.
//!
//! Why a seam of our own rather than tokio's paused time: tokio's `pause` works on
//! `current_thread` runtimes only, auto-advances whenever the runtime idles (so a reqwest
//! timeout fires while the runtime waits on a real socket: MockId6, Redis, a browser), and
//! moves neither `SystemTime` (JWT expiry, id6's rate-limit reset) nor `std::time::Instant`.
//! The clock here reads tokio's `Instant` (so a paused runtime still moves it, as the
//! breaker's tests do) plus, with the `testing` feature, a skew that
//! [`testing::advance_clock`](crate::testing::advance_clock) moves, waking the timers whose
//! time it passed; I/O keeps real time. Without `testing`, a reading is the bare
//! `Instant::now()` it always was: no cost on the hit path.
//!
//! What stays on real time, on purpose: measured durations (an id6 call's latency, a load's
//! age handed to the second level), the admission queue's wait for a permit (a wait on other
//! calls), reqwest's timeouts (I/O), and Redis (its own clock, the server's).

use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// The handle's clock, shared by every part of one [`Id6`](crate::Id6): the real one, plus
/// (feature `testing`) however far [`testing::advance_clock`](crate::testing::advance_clock)
/// moved it.
#[derive(Clone, Debug, Default)]
pub(crate) struct Clock {
    #[cfg(feature = "testing")]
    driven: std::sync::Arc<Driven>,
}

/// What a test drives: the skew, and the signals that go with moving it.
#[cfg(feature = "testing")]
#[derive(Debug, Default)]
struct Driven {
    skew_ns: std::sync::atomic::AtomicU64,
    /// Woken when the skew moves: timers recompute their deadline.
    moved: tokio::sync::Notify,
    /// Woken when background work progressed (a recheck settled, a load ended): what
    /// [`Clock::settled`] waits on.
    progress: tokio::sync::Notify,
}

impl Clock {
    /// How far the clock was moved forward (always zero without the `testing` feature).
    #[inline]
    fn skew(&self) -> Duration {
        #[cfg(feature = "testing")]
        return Duration::from_nanos(
            self.driven
                .skew_ns
                .load(std::sync::atomic::Ordering::Relaxed),
        );
        #[cfg(not(feature = "testing"))]
        Duration::ZERO
    }

    /// Now, as a `std` instant (the cache's entries).
    #[inline]
    pub(crate) fn now(&self) -> std::time::Instant {
        self.tokio_now().into_std()
    }

    /// Now, as a tokio instant (the breaker, the rechecks' schedule): the same reading.
    #[inline]
    pub(crate) fn tokio_now(&self) -> tokio::time::Instant {
        tokio::time::Instant::now() + self.skew()
    }

    /// The wall clock, moved as the rest: for times that come as dates (JWT `issuedAt`,
    /// id6's `X-RateLimit-Reset`). Never handed out as is: see [`real`](Self::real).
    pub(crate) fn wall(&self) -> SystemTime {
        SystemTime::now() + self.skew()
    }

    /// [`wall`](Self::wall) in milliseconds since the epoch; 0 before it, `u64::MAX` past
    /// what fits.
    pub(crate) fn wall_ms(&self) -> u64 {
        millis(self.wall())
    }

    /// A date read on this clock's wall, as the real wall clock dates it: what a caller
    /// compares with `SystemTime::now()` (`Retry-After`, [`Health`](crate::Health)).
    pub(crate) fn real(&self, wall: SystemTime) -> SystemTime {
        wall.checked_sub(self.skew()).unwrap_or(wall)
    }

    /// When this clock reads `at`, as a real date.
    pub(crate) fn real_at(&self, at: tokio::time::Instant) -> SystemTime {
        let now = self.tokio_now();
        let real = SystemTime::now();
        if at >= now {
            real + (at - now)
        } else {
            real.checked_sub(now - at).unwrap_or(real)
        }
    }

    /// Waits until this clock reads `at` or later: a tokio sleep for what is left, started
    /// again whenever a test moves the clock.
    pub(crate) async fn sleep_until(&self, at: tokio::time::Instant) {
        #[cfg(feature = "testing")]
        loop {
            let moved = self.driven.moved.notified();
            let mut moved = std::pin::pin!(moved);
            // Registered before the clock is read: a move in between still wakes it.
            moved.as_mut().enable();
            let now = self.tokio_now();
            if at <= now {
                return;
            }
            let sleep = std::pin::pin!(tokio::time::sleep(at - now));
            futures_util::future::select(sleep, moved).await;
        }
        #[cfg(not(feature = "testing"))]
        tokio::time::sleep_until(at).await;
    }

    /// Moves the clock forward by `by`, and wakes the timers.
    #[cfg(feature = "testing")]
    pub(crate) fn advance(&self, by: Duration) {
        use std::sync::atomic::Ordering;
        let ns = u64::try_from(by.as_nanos()).unwrap_or(u64::MAX);
        let _ = self
            .driven
            .skew_ns
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |s| {
                Some(s.saturating_add(ns))
            });
        self.driven.moved.notify_waiters();
    }

    /// Background work progressed: whoever waits for it to settle looks again.
    #[inline]
    pub(crate) fn progressed(&self) {
        #[cfg(feature = "testing")]
        self.driven.progress.notify_waiters();
    }

    /// Waits until `done` holds, asked again after each [`progressed`](Self::progressed).
    #[cfg(feature = "testing")]
    pub(crate) async fn settled(&self, mut done: impl FnMut() -> bool) {
        loop {
            let progress = self.driven.progress.notified();
            let mut progress = std::pin::pin!(progress);
            progress.as_mut().enable();
            if done() {
                return;
            }
            progress.await;
        }
    }
}

/// The miss budget's limiter reads this clock too.
impl governor::clock::Clock for Clock {
    type Instant = std::time::Instant;

    fn now(&self) -> Self::Instant {
        Clock::now(self)
    }
}

/// Milliseconds since the epoch by the real wall clock; 0 before it, `u64::MAX` past what
/// fits: for Redis's marks and back-off, which other instances and the server compare.
pub(crate) fn now_ms() -> u64 {
    millis(SystemTime::now())
}

fn millis(t: SystemTime) -> u64 {
    let since = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    u64::try_from(since.as_millis()).unwrap_or(u64::MAX)
}
