//! Admission of calls to id6 (`Admission`): a cap on calls in flight, and a breaker that stops calling
//! while id6 rate-limits us (until its window opens) or cannot be reached (for a short,
//! growing interval). id6 is one small process with one rate-limit bucket per client IP:
//! hammering it while it is down or limiting only prolongs the outage.

use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, SystemTime};

use tokio::sync::{Semaphore, SemaphorePermit};
// tokio's clock, not std's: the same reading outside tests, and one a test can pause and
// advance (`tokio::time::pause`) to see the breaker close without waiting.
use tokio::time::Instant;

use crate::clock::Clock;
use crate::error::{Error, Kind};

/// Consecutive connect failures or timeouts that open the breaker.
const FAILURES_TO_OPEN: u32 = 3;
/// First open interval after failures; doubled each time it opens again, up to the max.
const FIRST_BACKOFF: Duration = Duration::from_millis(500);
/// Longest interval after connect failures (the configured `max_backoff` may be shorter).
const MAX_FAILURE_BACKOFF: Duration = Duration::from_secs(30);

/// Whether the layer is calling id6, for health checks ([`Id6::health`](crate::Id6::health)).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Health {
    /// id6 is called as needed.
    Closed,
    /// id6 is not called until `until`; misses resolve per the
    /// [`OnUnavailable`](crate::OnUnavailable) policy meanwhile.
    #[non_exhaustive]
    Open {
        /// When calls resume.
        until: SystemTime,
        /// Opened by id6's 429 (else by connect failures or timeouts).
        rate_limited: bool,
    },
}

#[derive(Debug)]
pub(crate) struct Admission {
    permits: Semaphore,
    queue_timeout: Duration,
    /// No opening lasts longer, whatever a 429 asks for: one answer must never be able to
    /// switch authentication off for good.
    max_backoff: Duration,
    breaker: Mutex<Breaker>,
    window: Mutex<Window>,
    clock: Clock,
}

/// id6's rate limit as its last answer showed it (`X-RateLimit-*`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct RateWindow {
    pub(crate) limit: u64,
    pub(crate) remaining: u64,
    /// When the window opens again (already held to the backoff cap).
    pub(crate) reset: SystemTime,
}

impl RateWindow {
    /// Under a tenth of the limit left: kept for requests that wait on id6 (new sign-ins),
    /// not spent on background refreshes.
    fn low(&self) -> bool {
        self.remaining.saturating_mul(10) < self.limit && SystemTime::now() < self.reset
    }
}

#[derive(Debug, Default)]
struct Window {
    last: Option<RateWindow>,
    /// The window already warned about: one warning per window.
    warned: Option<SystemTime>,
}

#[derive(Debug, Default)]
struct Breaker {
    open: Option<Open>,
    failures: u32,
    backoff: Option<Duration>,
}

#[derive(Clone, Copy, Debug)]
struct Open {
    until: Instant,
    until_wall: SystemTime,
    rate_limited: bool,
}

impl Admission {
    /// `max_concurrent` is at most `Semaphore::MAX_PERMITS` and `max_backoff` is small
    /// enough to add to any clock reading: `Id6Builder::build` checks both.
    pub(crate) fn new(
        max_concurrent: usize,
        queue_timeout: Duration,
        max_backoff: Duration,
        clock: Clock,
    ) -> Self {
        Admission {
            permits: Semaphore::new(max_concurrent),
            queue_timeout,
            max_backoff,
            breaker: Mutex::default(),
            window: Mutex::default(),
            clock,
        }
    }

    /// Learns id6's rate limit from an answer; says once per window when it runs low.
    pub(crate) fn note_window(&self, window: RateWindow) {
        let mut seen = crate::lock::lock(&self.window);
        seen.last = Some(window);
        if window.low() && seen.warned != Some(window.reset) {
            seen.warned = Some(window.reset);
            drop(seen);
            tracing::warn!(
                limit = window.limit,
                remaining = window.remaining,
                "id6's rate limit is the bottleneck: under a tenth of its calls are left in this \
                 window, background refreshes pause; a longer ID6_CACHE_TTL, sharing answers \
                 through Redis (ID6_REDIS_URL) or a higher limit on id6 would help"
            );
        }
    }

    /// id6's rate limit as last seen.
    pub(crate) fn window(&self) -> Option<RateWindow> {
        crate::lock::lock(&self.window).last
    }

    /// Whether a call nobody waits on (a refresh ahead of expiry) may be made now: not while
    /// the breaker is open, nor while id6's remaining budget is under its reserve.
    pub(crate) fn background_allowed(&self) -> bool {
        self.open_now().is_none() && !self.window().is_some_and(|w| w.low())
    }

    fn breaker(&self) -> MutexGuard<'_, Breaker> {
        crate::lock::lock(&self.breaker)
    }

    /// The breaker's opening, while it lasts.
    fn open_now(&self) -> Option<Open> {
        let now = self.clock.tokio_now();
        self.breaker().open.filter(|o| o.until > now)
    }

    /// A permit to call id6 now, or why not: the breaker is open, every permit stayed taken
    /// for the queue timeout, or `charge` (the caller's miss budget) refuses. `charge` runs
    /// last, once nothing else can hold the call back: a call not made costs nothing.
    pub(crate) async fn admit(
        &self,
        charge: impl FnOnce() -> Result<(), Error>,
    ) -> Result<SemaphorePermit<'_>, Error> {
        self.closed()?;
        let permit = match tokio::time::timeout(self.queue_timeout, self.permits.acquire()).await {
            Ok(Ok(permit)) => permit,
            // The semaphore is never closed; either way, no call is made.
            Ok(Err(_)) | Err(_) => return Err(Error::new(Kind::Overloaded)),
        };
        // Asked again: the breaker may have opened (a 429) while this call waited its turn.
        self.closed()?;
        charge()?;
        Ok(permit)
    }

    fn closed(&self) -> Result<(), Error> {
        match self.open_now() {
            Some(open) => Err(Error::new(Kind::CircuitOpen {
                until: open.until_wall,
                rate_limited: open.rate_limited,
            })),
            None => Ok(()),
        }
    }

    /// Learns from a finished call: `None` when id6 answered usably.
    pub(crate) fn record(&self, failure: Option<&Error>) {
        let mut breaker = self.breaker();
        let Some(error) = failure else {
            breaker.failures = 0;
            breaker.backoff = None;
            return;
        };
        if error.is_rate_limited() {
            // No call until id6's window opens again (a 429 without a wait: a short pause),
            // and never longer than the cap, whatever the answer claimed.
            let wait = error
                .retry_after()
                .unwrap_or(FIRST_BACKOFF)
                .min(self.max_backoff);
            breaker.open_for(self.clock.tokio_now(), wait, true);
            tracing::warn!(
                wait_s = wait.as_secs_f64(),
                "id6 rate-limits us; not calling it until its window opens"
            );
        } else if error.is_connect() || error.is_timeout() {
            breaker.failures += 1;
            if breaker.failures >= FAILURES_TO_OPEN {
                let wait = breaker
                    .backoff
                    .map_or(FIRST_BACKOFF, |b| b.saturating_mul(2))
                    .min(MAX_FAILURE_BACKOFF)
                    .min(self.max_backoff);
                breaker.backoff = Some(wait);
                breaker.failures = 0;
                breaker.open_for(self.clock.tokio_now(), wait, false);
                tracing::warn!(
                    wait_s = wait.as_secs_f64(),
                    "id6 unreachable; not calling it for a while"
                );
            }
        } else {
            // id6 answered (5xx, garbage): reachable, not a reason to stop asking.
            breaker.failures = 0;
        }
    }

    pub(crate) fn health(&self) -> Health {
        match self.open_now() {
            Some(open) => Health::Open {
                until: open.until_wall,
                rate_limited: open.rate_limited,
            },
            None => Health::Closed,
        }
    }
}

impl Breaker {
    fn open_for(&mut self, now: Instant, wait: Duration, rate_limited: bool) {
        self.open = Some(Open {
            until: now + wait,
            until_wall: SystemTime::now() + wait,
            rate_limited,
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    const MAX: Duration = Duration::from_secs(60);

    #[tokio::test]
    async fn a_429_closes_the_door_until_the_reset() {
        let admission = Admission::new(4, Duration::from_secs(1), MAX, Clock::default());
        let reset = SystemTime::now() + Duration::from_secs(30);
        admission.record(Some(&Error::new(Kind::RateLimited { reset: Some(reset) })));
        let err = admission.admit(|| Ok(())).await.unwrap_err();
        assert!(err.is_rate_limited() && err.is_unavailable());
        assert!(err.retry_after().unwrap() > Duration::from_secs(25));
        assert!(matches!(
            admission.health(),
            Health::Open {
                rate_limited: true,
                ..
            }
        ));
    }

    #[tokio::test]
    async fn repeated_connect_failures_open_for_a_growing_interval() {
        let admission = Admission::new(4, Duration::from_secs(1), MAX, Clock::default());
        let connect = Error::new(Kind::Connect);
        for _ in 0..FAILURES_TO_OPEN - 1 {
            admission.record(Some(&connect));
            assert!(admission.admit(|| Ok(())).await.is_ok());
        }
        admission.record(Some(&connect));
        let err = admission.admit(|| Ok(())).await.unwrap_err();
        assert!(err.is_unavailable() && !err.is_rate_limited());
        let Health::Open { until, .. } = admission.health() else {
            panic!("open");
        };
        let first = until.duration_since(SystemTime::now()).unwrap();
        assert!(first <= FIRST_BACKOFF);
        // The next opening lasts twice as long; an answer from id6 resets it.
        for _ in 0..FAILURES_TO_OPEN {
            admission.record(Some(&connect));
        }
        let Health::Open { until, .. } = admission.health() else {
            panic!("open");
        };
        assert!(until.duration_since(SystemTime::now()).unwrap() > FIRST_BACKOFF);
        admission.record(None);
        assert_eq!(admission.breaker().backoff, None);
    }

    #[tokio::test]
    async fn a_call_held_back_is_not_charged() {
        let admission = Admission::new(1, Duration::from_millis(20), MAX, Clock::default());
        let charged = std::sync::atomic::AtomicUsize::new(0);
        let charge = || {
            charged.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            Ok(())
        };
        let held = admission.admit(charge).await.unwrap();
        // The call cap's queue timeout: no call, no charge.
        assert!(admission.admit(charge).await.is_err());
        drop(held);
        // The breaker open: no call, no charge.
        admission.record(Some(&Error::new(Kind::RateLimited { reset: None })));
        assert!(admission.admit(charge).await.is_err());
        assert_eq!(charged.load(std::sync::atomic::Ordering::SeqCst), 1);
        // A refused charge: no permit, so no call.
        let refused = admission.admit(|| Err(Error::new(Kind::Overloaded)));
        assert!(refused.await.is_err());
    }

    #[tokio::test]
    async fn beyond_the_cap_a_call_waits_then_gives_up() {
        let admission = Admission::new(1, Duration::from_millis(20), MAX, Clock::default());
        let held = admission.admit(|| Ok(())).await.unwrap();
        let err = admission.admit(|| Ok(())).await.unwrap_err();
        assert!(err.is_unavailable());
        drop(held);
        assert!(admission.admit(|| Ok(())).await.is_ok());
    }

    #[tokio::test]
    async fn no_429_opens_the_breaker_past_the_cap() {
        let admission = Admission::new(4, Duration::from_secs(1), MAX, Clock::default());
        // What a proxy sending epoch milliseconds as seconds would have us believe.
        let reset = SystemTime::now() + Duration::from_secs(56_000 * 365 * 24 * 3600);
        admission.record(Some(&Error::new(Kind::RateLimited { reset: Some(reset) })));
        let err = admission.admit(|| Ok(())).await.unwrap_err();
        assert!(err.retry_after().unwrap() <= MAX, "{:?}", err.retry_after());
        let Health::Open { until, .. } = admission.health() else {
            panic!("open");
        };
        assert!(until <= SystemTime::now() + MAX);
    }

    #[tokio::test(flavor = "current_thread")]
    async fn calls_queued_for_a_slot_when_a_429_arrives_stay_home() {
        let admission = Arc::new(Admission::new(
            1,
            Duration::from_secs(30),
            MAX,
            Clock::default(),
        ));
        let held = admission.admit(|| Ok(())).await.unwrap();
        let queued: Vec<_> = (0..20)
            .map(|_| {
                let admission = admission.clone();
                tokio::spawn(async move { admission.admit(|| Ok(())).await.map(drop) })
            })
            .collect();
        // On this one thread, each spawned task runs up to its wait for the permit.
        tokio::task::yield_now().await;
        let reset = SystemTime::now() + Duration::from_secs(30);
        admission.record(Some(&Error::new(Kind::RateLimited { reset: Some(reset) })));
        drop(held);
        for call in queued {
            let err = call.await.unwrap().unwrap_err();
            assert!(err.is_rate_limited() && err.is_not_attempted(), "{err}");
        }
    }

    #[tokio::test(start_paused = true)]
    async fn the_breaker_closes_when_its_time_is_up_on_a_paused_clock() {
        let admission = Admission::new(4, Duration::from_secs(1), MAX, Clock::default());
        let reset = SystemTime::now() + Duration::from_secs(30);
        admission.record(Some(&Error::new(Kind::RateLimited { reset: Some(reset) })));
        assert!(admission.admit(|| Ok(())).await.is_err());
        tokio::time::advance(Duration::from_secs(29)).await;
        assert!(
            admission.admit(|| Ok(())).await.is_err(),
            "still within id6's window"
        );
        tokio::time::advance(Duration::from_secs(2)).await;
        assert!(admission.admit(|| Ok(())).await.is_ok());
        assert_eq!(admission.health(), Health::Closed);
        // Connect failures: open for the first back-off, then closed again.
        for _ in 0..FAILURES_TO_OPEN {
            admission.record(Some(&Error::new(Kind::Connect)));
        }
        assert!(admission.admit(|| Ok(())).await.is_err());
        tokio::time::advance(FIRST_BACKOFF).await;
        assert!(admission.admit(|| Ok(())).await.is_ok());
    }
}
