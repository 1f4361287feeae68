//! Admission of calls to id6 (`Admission`): a cap on calls in flight, and a breaker that stops calling
//! while id6 rate-limits us (until its window opens) or cannot be reached (for a short,
//! growing interval), and holds background calls back while id6 answers without a verdict
//! (5xx, garbage) or its budget runs low. id6 is one small process with one rate-limit bucket
//! per client IP: hammering it while it is down or limiting only prolongs the outage.
//!
//! Each call learns from its own state: an outcome counts only if no opening or pause began
//! since the call was admitted. The calls a stall caught in flight all fail together; the
//! first three open the breaker, and the rest, which say nothing new, leave its back-off
//! alone (else 32 of them doubled it up to the cap, and one second of stall kept sign-ins
//! out for thirty).

use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, SystemTime};

use tokio::sync::{Semaphore, SemaphorePermit};
// The handle's clock, as tokio's instant: a test moves it with `advance_clock` (or by
// pausing tokio's) to see the breaker close without waiting.
use tokio::time::Instant;

use crate::clock::Clock;
use crate::error::{Error, Kind};

/// Consecutive connect failures or timeouts that open the breaker.
const FAILURES_TO_OPEN: u32 = 3;
/// First open interval after failures; doubled each time it opens again, up to the max. Also
/// the first pause of background calls after an answer without a verdict.
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
    /// When the window opens again (already held to the backoff cap), on the handle's
    /// clock's wall ([`Clock::wall`]).
    pub(crate) reset: SystemTime,
}

impl RateWindow {
    /// Under a tenth of the limit left at `now` (on [`Clock::wall`]): kept for requests that
    /// wait on id6 (new sign-ins), not spent on background refreshes.
    fn low(&self, now: SystemTime) -> bool {
        self.remaining.saturating_mul(10) < self.limit && now < self.reset
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
    /// Background calls wait until then: id6 answered without a verdict (5xx, garbage).
    quiet_until: Option<Instant>,
    /// The last such pause, doubled by the next one, up to `max_backoff`.
    quiet_backoff: Option<Duration>,
    /// Bumped whenever an opening or a pause begins: a call admitted before it says nothing
    /// about id6 that the breaker has not already acted on.
    epoch: u64,
}

/// A call let through: its slot under the cap, and the breaker's state when it was admitted
/// (for [`Admission::record`]).
#[derive(Debug)]
pub(crate) struct Admitted<'a> {
    _permit: SemaphorePermit<'a>,
    epoch: u64,
}

#[derive(Clone, Copy, Debug)]
struct Open {
    until: Instant,
    /// `until`'s real date, as it was when the breaker opened.
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
        if window.low(self.clock.wall()) && seen.warned != Some(window.reset) {
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

    /// How long a call nobody waits on (a refresh ahead of expiry, a session's recheck) must
    /// wait, `None` when it may be made now: the breaker open, a pause after id6 answered
    /// without a verdict, or id6's remaining budget under its reserve (until its window
    /// opens again).
    pub(crate) fn background_pause(&self) -> Option<Duration> {
        let now = self.clock.tokio_now();
        let breaker = self.breaker();
        let open = breaker.open.map(|o| o.until);
        let quiet = breaker.quiet_until;
        drop(breaker);
        let wall = self.clock.wall();
        let low = self
            .window()
            .filter(|w| w.low(wall))
            .map(|w| w.reset.duration_since(wall).unwrap_or_default());
        [open, quiet]
            .into_iter()
            .flatten()
            .filter(|until| *until > now)
            .map(|until| until - now)
            .chain(low)
            .max()
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
    ) -> Result<Admitted<'_>, Error> {
        self.closed()?;
        let permit = match tokio::time::timeout(self.queue_timeout, self.permits.acquire()).await {
            Ok(Ok(permit)) => permit,
            // The semaphore is never closed; either way, no call is made.
            Ok(Err(_)) | Err(_) => return Err(Error::new(Kind::Overloaded)),
        };
        // Asked again: the breaker may have opened (a 429) while this call waited its turn.
        let epoch = self.closed()?;
        charge()?;
        Ok(Admitted {
            _permit: permit,
            epoch,
        })
    }

    /// The breaker's state now, unless it is open.
    fn closed(&self) -> Result<u64, Error> {
        let now = self.clock.tokio_now();
        let breaker = self.breaker();
        match breaker.open.filter(|o| o.until > now) {
            Some(open) => Err(Error::new(Kind::CircuitOpen {
                until: self.clock.real_at(open.until, open.until_wall),
                rate_limited: open.rate_limited,
            })),
            None => Ok(breaker.epoch),
        }
    }

    /// Learns from a finished call: `None` when id6 answered usably. A failure counts only
    /// if nothing began since the call was admitted: an opening or a pause already answered
    /// it.
    pub(crate) fn record(&self, call: &Admitted<'_>, failure: Option<&Error>) {
        let mut breaker = self.breaker();
        let Some(error) = failure else {
            // id6 answered: whatever the call's state, that is news.
            breaker.failures = 0;
            breaker.backoff = None;
            breaker.quiet_until = None;
            breaker.quiet_backoff = None;
            return;
        };
        let current = call.epoch == breaker.epoch;
        if error.is_rate_limited() {
            // No call until id6's window opens again (a 429 without a wait: a short pause),
            // and never longer than the cap, whatever the answer claimed.
            let wait = error
                .retry_after()
                .unwrap_or(FIRST_BACKOFF)
                .min(self.max_backoff);
            // id6's word, whenever the call was admitted.
            breaker.open_for(self.clock.tokio_now(), wait, true);
            tracing::warn!(
                wait_s = wait.as_secs_f64(),
                "id6 rate-limits us; not calling it until its window opens"
            );
        } else if !current {
            tracing::debug!(%error, "a call admitted before the breaker's last move failed: not counted");
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
            // id6 answered (5xx, garbage): reachable, not a reason to refuse a sign-in its
            // answer; but calls nobody waits on hold back, for a growing pause.
            breaker.failures = 0;
            let now = self.clock.tokio_now();
            if breaker.quiet_until.is_none_or(|until| until <= now) {
                let wait = breaker
                    .quiet_backoff
                    .map_or(FIRST_BACKOFF, |b| b.saturating_mul(2))
                    .min(self.max_backoff);
                breaker.quiet_backoff = Some(wait);
                breaker.quiet_until = Some(now + wait);
                breaker.epoch += 1;
                tracing::debug!(
                    %error,
                    wait_s = wait.as_secs_f64(),
                    "id6 answered without a verdict; background calls pause"
                );
            }
        }
    }

    pub(crate) fn health(&self) -> Health {
        match self.open_now() {
            Some(open) => Health::Open {
                until: self.clock.real_at(open.until, open.until_wall),
                rate_limited: open.rate_limited,
            },
            None => Health::Closed,
        }
    }
}

impl Breaker {
    fn open_for(&mut self, now: Instant, wait: Duration, rate_limited: bool) {
        self.epoch += 1;
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

    /// One call, admitted now, that ends with `failure`.
    async fn call(admission: &Admission, failure: Option<&Error>) {
        let call = admission.admit(|| Ok(())).await.unwrap();
        admission.record(&call, failure);
    }

    #[tokio::test]
    async fn a_429_closes_the_door_until_the_reset() {
        let admission = Admission::new(4, Duration::from_secs(1), MAX, Clock::default());
        let reset = SystemTime::now() + Duration::from_secs(30);
        call(
            &admission,
            Some(&Error::new(Kind::RateLimited { reset: Some(reset) })),
        )
        .await;
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

    #[tokio::test(start_paused = true)]
    async fn repeated_connect_failures_open_for_a_growing_interval() {
        let admission = Admission::new(4, Duration::from_secs(1), MAX, Clock::default());
        let connect = Error::new(Kind::Connect);
        for _ in 0..FAILURES_TO_OPEN - 1 {
            call(&admission, Some(&connect)).await;
            assert!(admission.admit(|| Ok(())).await.is_ok());
        }
        call(&admission, Some(&connect)).await;
        let err = admission.admit(|| Ok(())).await.unwrap_err();
        assert!(err.is_unavailable() && !err.is_rate_limited());
        let Health::Open { until, .. } = admission.health() else {
            panic!("open");
        };
        let first = until.duration_since(SystemTime::now()).unwrap();
        assert!(first <= FIRST_BACKOFF);
        // Failing again once it closes, the next opening lasts twice as long; an answer
        // from id6 resets it.
        tokio::time::advance(FIRST_BACKOFF).await;
        for _ in 0..FAILURES_TO_OPEN {
            call(&admission, Some(&connect)).await;
        }
        assert_eq!(admission.breaker().backoff, Some(FIRST_BACKOFF * 2));
        assert!(admission.admit(|| Ok(())).await.is_err());
        tokio::time::advance(FIRST_BACKOFF * 2).await;
        call(&admission, None).await;
        assert_eq!(admission.breaker().backoff, None);
    }

    /// A stall fails every call in flight at once: the first three open the breaker, the
    /// others (admitted before it opened) leave its back-off alone, whatever their number.
    #[tokio::test(start_paused = true)]
    async fn a_stall_counts_once() {
        let admission = Admission::new(64, Duration::from_secs(1), MAX, Clock::default());
        let timeout = Error::new(Kind::Timeout);
        let mut caught = Vec::new();
        for _ in 0..32 {
            caught.push(admission.admit(|| Ok(())).await.unwrap());
        }
        let late = caught.pop().unwrap();
        for call in &caught {
            admission.record(call, Some(&timeout));
        }
        assert_eq!(admission.breaker().backoff, Some(FIRST_BACKOFF));
        assert!(admission.admit(|| Ok(())).await.is_err());
        assert_eq!(
            admission.background_pause(),
            Some(FIRST_BACKOFF),
            "background calls wait with the rest"
        );
        drop(caught);
        // Closed again, id6 still hanging: the next wave says something new, once.
        tokio::time::advance(FIRST_BACKOFF).await;
        assert_eq!(admission.background_pause(), None);
        let mut wave = Vec::new();
        for _ in 0..32 {
            wave.push(admission.admit(|| Ok(())).await.unwrap());
        }
        for call in &wave {
            admission.record(call, Some(&timeout));
        }
        // A straggler of the first wave, later still: nothing new either.
        admission.record(&late, Some(&timeout));
        assert_eq!(admission.breaker().backoff, Some(FIRST_BACKOFF * 2));
    }

    /// 5xx or garbage: id6 is there, so sign-ins still ask it, but background calls pause
    /// for a back-off that grows once per pause (never per answer) and ends with an answer.
    #[tokio::test(start_paused = true)]
    async fn answers_without_a_verdict_pause_background_calls_only() {
        let admission = Admission::new(64, Duration::from_secs(1), MAX, Clock::default());
        let status = Error::new(Kind::Status(http::StatusCode::BAD_GATEWAY));
        let body = Error::new(Kind::Body("not JSON"));
        let in_flight = admission.admit(|| Ok(())).await.unwrap();
        call(&admission, Some(&status)).await;
        assert_eq!(admission.background_pause(), Some(FIRST_BACKOFF));
        assert_eq!(admission.health(), Health::Closed);
        // Sign-ins still go, and their failures during the pause do not lengthen it; nor
        // does a call admitted before it began.
        for _ in 0..10 {
            call(&admission, Some(&body)).await;
        }
        admission.record(&in_flight, Some(&status));
        assert_eq!(admission.background_pause(), Some(FIRST_BACKOFF));
        // Each pause that fails again doubles, up to the cap.
        let mut pause = FIRST_BACKOFF;
        while pause < MAX {
            tokio::time::advance(pause).await;
            assert_eq!(admission.background_pause(), None);
            call(&admission, Some(&status)).await;
            pause = (pause * 2).min(MAX);
            assert_eq!(admission.background_pause(), Some(pause));
        }
        tokio::time::advance(MAX).await;
        call(&admission, Some(&status)).await;
        assert_eq!(admission.background_pause(), Some(MAX));
        // An answer ends it, whatever the call's state.
        admission.record(&in_flight, None);
        assert_eq!(admission.background_pause(), None);
        call(&admission, Some(&status)).await;
        assert_eq!(admission.background_pause(), Some(FIRST_BACKOFF));
    }

    #[tokio::test]
    async fn a_low_budget_pauses_background_calls_until_its_window_opens() {
        let admission = Admission::new(4, Duration::from_secs(1), MAX, Clock::default());
        let reset = SystemTime::now() + Duration::from_secs(30);
        let window = |remaining| RateWindow {
            limit: 100,
            remaining,
            reset,
        };
        admission.note_window(window(10));
        assert_eq!(admission.background_pause(), None, "a tenth is left");
        admission.note_window(window(9));
        let pause = admission.background_pause().expect("under a tenth");
        assert!(pause > Duration::from_secs(25) && pause <= Duration::from_secs(30));
        assert!(
            admission.admit(|| Ok(())).await.is_ok(),
            "sign-ins still go"
        );
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
        // The breaker open: no call, no charge.
        admission.record(&held, Some(&Error::new(Kind::RateLimited { reset: None })));
        drop(held);
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
        call(
            &admission,
            Some(&Error::new(Kind::RateLimited { reset: Some(reset) })),
        )
        .await;
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
        let error = Error::new(Kind::RateLimited { reset: Some(reset) });
        admission.record(&held, Some(&error));
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
        call(
            &admission,
            Some(&Error::new(Kind::RateLimited { reset: Some(reset) })),
        )
        .await;
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
            call(&admission, Some(&Error::new(Kind::Connect))).await;
        }
        assert!(admission.admit(|| Ok(())).await.is_err());
        tokio::time::advance(FIRST_BACKOFF).await;
        assert!(admission.admit(|| Ok(())).await.is_ok());
    }
}
