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
//! time it passed; a test that counts exactly first
//! [freezes](crate::testing::freeze_clock) it, so that only those moves move it. I/O keeps
//! real time. Without `testing`, a reading is the bare `Instant::now()` it always was, and
//! the cache's ages (on every hit) read the kernel's coarse clock, a third of the cost (see
//! [`Clock::stamp`]).
//!
//! What stays on real time, on purpose: measured durations (an id6 call's latency, a load's
//! age handed to the second level), the admission queue's wait for a permit (a wait on other
//! calls), reqwest's timeouts (I/O), and Redis (its own clock, the server's).

use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// The handle's clock, shared by every part of one [`Id6`](crate::Id6): the real one, plus
/// (feature `testing`) however far [`testing::advance_clock`](crate::testing::advance_clock)
/// moved it, or, once [frozen](crate::testing::freeze_clock), only what it moved it.
#[derive(Clone, Debug, Default)]
pub(crate) struct Clock {
    #[cfg(feature = "testing")]
    driven: std::sync::Arc<Driven>,
}

/// What a test drives: the skew, and the signals that go with moving it.
#[cfg(feature = "testing")]
#[derive(Debug, Default)]
struct Driven {
    /// The skew in nanoseconds, and [`FROZEN`]: one load tells a reading both.
    skew_ns: std::sync::atomic::AtomicU64,
    /// Where the clock stood when it was frozen (without the skew).
    frozen: std::sync::OnceLock<(tokio::time::Instant, SystemTime)>,
    /// Woken when the skew moves: timers recompute their deadline.
    moved: tokio::sync::Notify,
    /// Woken when background work progressed (a recheck settled, a load ended): what
    /// [`Clock::settled`] waits on.
    progress: tokio::sync::Notify,
}

#[cfg(feature = "testing")]
impl Driven {
    /// The skew as one load tells it: how far the clock was moved, and where it stood when
    /// it was frozen (`None` while it follows the real one).
    #[inline]
    fn skew(&self) -> (Duration, Option<&(tokio::time::Instant, SystemTime)>) {
        let skew = self.skew_ns.load(std::sync::atomic::Ordering::Acquire);
        let frozen = (skew & FROZEN != 0).then(|| self.frozen.get()).flatten();
        (Duration::from_nanos(skew & !FROZEN), frozen)
    }
}

/// The skew's top bit: the clock no longer follows the real one.
#[cfg(feature = "testing")]
const FROZEN: u64 = 1 << 63;

impl Clock {
    /// Now, as a `std` instant (the cache's entries): on the hit path, so without `testing`
    /// it is the bare `std` reading, no more.
    #[inline]
    pub(crate) fn now(&self) -> std::time::Instant {
        #[cfg(feature = "testing")]
        return self.tokio_now().into_std();
        #[cfg(not(feature = "testing"))]
        std::time::Instant::now()
    }

    /// Now, as a tokio instant (the breaker, the rechecks' schedule): the same reading.
    /// Without `testing`, tokio's `Instant::now()` (std's, unless tokio's `test-util` paused
    /// the runtime's clock).
    #[inline]
    pub(crate) fn tokio_now(&self) -> tokio::time::Instant {
        #[cfg(feature = "testing")]
        {
            match self.driven.skew() {
                // Never moved nor frozen (every handle outside a test that drives it): the
                // real reading, with no addition.
                (by, None) if by.is_zero() => tokio::time::Instant::now(),
                (by, Some((at, _))) => *at + by,
                (by, None) => tokio::time::Instant::now() + by,
            }
        }
        #[cfg(not(feature = "testing"))]
        tokio::time::Instant::now()
    }

    /// Now, as the cache dates its entries and reads their ages, as a [`Stamp`]. On Linux
    /// it is the kernel's coarse monotonic clock (its last tick, at most a tick behind: a
    /// few ms), read in a third of the time of an exact reading, on every hit; ages are
    /// seconds. With `testing`, it is [`now`](Self::now) exactly, on the same scale: a
    /// runtime's paused clock, [`advance`](Self::advance) and [`freeze`](Self::freeze) age
    /// the cache as they move everything else (tokio's paused time cannot be told from a
    /// coarse reading). So the benches, which need `testing` for MockId6, read the exact
    /// clock on a hit where a build without it reads the coarse one.
    #[inline]
    pub(crate) fn stamp(&self) -> Stamp {
        #[cfg(feature = "testing")]
        return Stamp::of(self.now());
        #[cfg(not(feature = "testing"))]
        Stamp::coarse()
    }

    /// The wall clock, moved as the rest: for times that come as dates (JWT `issuedAt`,
    /// id6's `X-RateLimit-Reset`). Never handed out as is: see [`real`](Self::real).
    pub(crate) fn wall(&self) -> SystemTime {
        self.walls().0
    }

    /// This clock's wall and the real one, read together.
    fn walls(&self) -> (SystemTime, SystemTime) {
        let real = SystemTime::now();
        #[cfg(feature = "testing")]
        {
            let (by, frozen) = self.driven.skew();
            if let Some((_, wall)) = frozen {
                return (*wall + by, real);
            }
            // As far from the real wall as tokio's clock is from std's: a paused runtime
            // moves the wall too.
            let (tokio, std) = (
                tokio::time::Instant::now().into_std(),
                std::time::Instant::now(),
            );
            let wall = match tokio.checked_duration_since(std) {
                Some(ahead) => real + ahead,
                None => real.checked_sub(std - tokio).unwrap_or(real),
            };
            (wall + by, real)
        }
        #[cfg(not(feature = "testing"))]
        (real, real)
    }

    /// [`wall`](Self::wall) in milliseconds since the epoch; 0 before it, `u64::MAX` past
    /// what fits.
    pub(crate) fn wall_ms(&self) -> u64 {
        millis(self.wall())
    }

    /// A date read on this clock's wall, as the real wall clock dates it: what a caller
    /// compares with `SystemTime::now()` (`Retry-After`, [`Health`](crate::Health)).
    pub(crate) fn real(&self, wall: SystemTime) -> SystemTime {
        let (now, real) = self.walls();
        match wall.duration_since(now) {
            Ok(ahead) => real + ahead,
            Err(behind) => real.checked_sub(behind.duration()).unwrap_or(real),
        }
    }

    /// When this clock reads `at`, as a real date; `dated` is that date as it was read when
    /// `at` was set. Outside tests, `dated` is the answer: a fixed date, the same at every
    /// call. With `testing` it is read again now, since a test may have moved the clock.
    pub(crate) fn real_at(&self, at: tokio::time::Instant, dated: SystemTime) -> SystemTime {
        #[cfg(not(feature = "testing"))]
        {
            let _ = at;
            dated
        }
        #[cfg(feature = "testing")]
        {
            let _ = dated;
            self.read_at(at)
        }
    }

    /// [`real_at`](Self::real_at), read now.
    #[cfg(feature = "testing")]
    fn read_at(&self, at: tokio::time::Instant) -> SystemTime {
        let now = self.tokio_now();
        let real = SystemTime::now();
        if at >= now {
            real + (at - now)
        } else {
            real.checked_sub(now - at).unwrap_or(real)
        }
    }

    /// Waits until this clock reads `at` or later: a tokio sleep for what is left, started
    /// again whenever a test moves the clock (only the moves, once it is frozen).
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
            if self.is_frozen() {
                moved.await;
            } else {
                let sleep = std::pin::pin!(tokio::time::sleep(at - now));
                futures_util::future::select(sleep, moved).await;
            }
        }
        #[cfg(not(feature = "testing"))]
        tokio::time::sleep_until(at).await;
    }

    #[cfg(feature = "testing")]
    fn is_frozen(&self) -> bool {
        self.driven
            .skew_ns
            .load(std::sync::atomic::Ordering::Acquire)
            & FROZEN
            != 0
    }

    /// Moves the clock forward by `by`, and wakes the timers.
    #[cfg(feature = "testing")]
    pub(crate) fn advance(&self, by: Duration) {
        use std::sync::atomic::Ordering;
        let ns = u64::try_from(by.as_nanos()).unwrap_or(u64::MAX);
        let _ = self
            .driven
            .skew_ns
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |s| {
                Some((s & FROZEN) | (s & !FROZEN).saturating_add(ns).min(!FROZEN))
            });
        self.driven.moved.notify_waiters();
    }

    /// Stops the clock where it stands: from now on only [`advance`](Self::advance) moves it.
    #[cfg(feature = "testing")]
    pub(crate) fn freeze(&self) {
        use std::sync::atomic::Ordering;
        let (mono, wall) = (tokio::time::Instant::now(), self.walls().0);
        let by = Duration::from_nanos(self.driven.skew_ns.load(Ordering::Acquire) & !FROZEN);
        // Without the skew, which readings add.
        let wall = wall.checked_sub(by).unwrap_or(wall);
        if self.driven.frozen.set((mono, wall)).is_ok() {
            self.driven.skew_ns.fetch_or(FROZEN, Ordering::AcqRel);
        }
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

/// A reading of [`Clock::stamp`]: signed nanoseconds from the process's first one, on the
/// scale of the kernel's monotonic clock (std's `Instant` on Linux). One word, so a hit's age
/// is one subtraction; signed, since a clock a test froze may read before the origin.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct Stamp(i64);

/// std's `Instant` and, on Linux, the kernel's exact monotonic reading, taken together: the
/// origin of every [`Stamp`], and where an `Instant` falls among them.
static ORIGIN: std::sync::OnceLock<(std::time::Instant, Duration)> = std::sync::OnceLock::new();

fn origin() -> (std::time::Instant, Duration) {
    *ORIGIN.get_or_init(|| (std::time::Instant::now(), coarse::exact()))
}

impl Stamp {
    /// The kernel's last tick: less than a tick behind the exact reading, never ahead.
    #[cfg_attr(feature = "testing", allow(dead_code))]
    #[inline]
    fn coarse() -> Self {
        let (_, exact) = origin();
        Stamp::between(exact, coarse::read())
    }

    /// Where `at` falls (exactly): for a clock a test moves.
    #[cfg(feature = "testing")]
    #[inline]
    fn of(at: std::time::Instant) -> Self {
        let (origin, _) = origin();
        match at.checked_duration_since(origin) {
            Some(after) => Stamp::between(Duration::ZERO, after),
            None => Stamp::between(origin - at, Duration::ZERO),
        }
    }

    /// `to` as seen from `from`.
    #[inline]
    fn between(from: Duration, to: Duration) -> Self {
        let nanos = |d: Duration| i64::try_from(d.as_nanos()).unwrap_or(i64::MAX);
        Stamp(nanos(to).saturating_sub(nanos(from)))
    }

    /// How long after `earlier` this is (zero if it is not after).
    #[inline]
    pub(crate) fn since(self, earlier: Stamp) -> Duration {
        u64::try_from(self.0.saturating_sub(earlier.0)).map_or(Duration::ZERO, Duration::from_nanos)
    }

    /// This, `by` earlier.
    pub(crate) fn checked_sub(self, by: Duration) -> Option<Stamp> {
        let by = i64::try_from(by.as_nanos()).ok()?;
        self.0.checked_sub(by).map(Stamp)
    }
}

/// The kernel's monotonic clocks, through the vDSO (the crate forbids `unsafe`).
#[cfg(target_os = "linux")]
mod coarse {
    use rustix::time::{clock_gettime, ClockId};
    use std::time::Duration;

    fn read_clock(id: ClockId) -> Duration {
        let at = clock_gettime(id);
        Duration::new(
            u64::try_from(at.tv_sec).unwrap_or(0),
            u32::try_from(at.tv_nsec).unwrap_or(0),
        )
    }

    /// The exact reading, as std's `Instant` reads it.
    pub(super) fn exact() -> Duration {
        read_clock(ClockId::Monotonic)
    }

    /// The last tick's reading.
    #[inline]
    pub(super) fn read() -> Duration {
        read_clock(ClockId::MonotonicCoarse)
    }
}

/// Elsewhere, std's exact reading, measured from the origin's.
#[cfg(not(target_os = "linux"))]
mod coarse {
    use std::time::Duration;

    pub(super) fn exact() -> Duration {
        Duration::ZERO
    }

    pub(super) fn read() -> Duration {
        std::time::Instant::now().saturating_duration_since(super::origin().0)
    }
}

/// Milliseconds since the epoch by the real wall clock; 0 before it, `u64::MAX` past what
/// fits: for Redis's marks and back-off, which other instances and the server compare.
#[cfg_attr(not(feature = "redis"), allow(dead_code))]
pub(crate) fn now_ms() -> u64 {
    millis(SystemTime::now())
}

fn millis(t: SystemTime) -> u64 {
    let since = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    u64::try_from(since.as_millis()).unwrap_or(u64::MAX)
}
