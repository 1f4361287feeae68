//! Clocks: the wall clock in id6's unit, milliseconds since the epoch (`issuedAt`,
//! `invalidateTokensAt`, Redis revocation marks); and the handle's [`Clock`], the monotonic
//! time by which cached answers expire and the breaker reopens.

use std::time::Duration;

/// The handle's monotonic clock, shared by the cache and the breaker: the real one, plus
/// (feature `testing`) however far [`testing::advance_clock`](crate::testing::advance_clock) moved
/// it, so that expiry and back-off can be tested without waiting.
#[derive(Clone, Debug, Default)]
pub(crate) struct Clock {
    #[cfg(feature = "testing")]
    skew_ns: std::sync::Arc<std::sync::atomic::AtomicU64>,
}

impl Clock {
    /// How far the clock was moved forward (always zero without the `testing` feature).
    #[inline]
    pub(crate) fn skew(&self) -> Duration {
        #[cfg(feature = "testing")]
        return Duration::from_nanos(self.skew_ns.load(std::sync::atomic::Ordering::Relaxed));
        #[cfg(not(feature = "testing"))]
        Duration::ZERO
    }

    /// Moves the clock forward by `by`.
    #[cfg(feature = "testing")]
    pub(crate) fn advance(&self, by: Duration) {
        use std::sync::atomic::Ordering;
        let ns = u64::try_from(by.as_nanos()).unwrap_or(u64::MAX);
        let _ = self
            .skew_ns
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |s| {
                Some(s.saturating_add(ns))
            });
    }

    /// Now, for the cache.
    pub(crate) fn now(&self) -> std::time::Instant {
        std::time::Instant::now() + self.skew()
    }

    /// Now, for the breaker: tokio's clock, which a test may also pause and advance.
    pub(crate) fn tokio_now(&self) -> tokio::time::Instant {
        tokio::time::Instant::now() + self.skew()
    }
}

/// Milliseconds since the epoch; 0 before it, `u64::MAX` past what fits: the wall clock,
/// which JWT expiry and Redis's retry back-off read.
pub(crate) fn now_ms() -> u64 {
    use std::time::{SystemTime, UNIX_EPOCH};
    let since = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    u64::try_from(since.as_millis()).unwrap_or(u64::MAX)
}
