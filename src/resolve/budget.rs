//! The miss budget: how many id6 calls one caller's unknown tokens may cost per window, on
//! governor's keyed limiter (GCRA: the whole budget usable at once, then one call back per
//! `window / calls`).

use std::num::NonZeroU32;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::time::{Duration, SystemTime};

use governor::state::keyed::HashMapStateStore;
use governor::{Quota, RateLimiter};

use super::caller::Caller;
use crate::clock::Clock;
use crate::config::MissLimit;
use crate::error::{Error, Kind};

/// Checks between two sweeps of callers whose budget is whole again.
const SWEEP_EVERY: u32 = 4096;

pub(crate) struct MissBudget {
    /// By caller; `None` is the one budget that typed calls of untold callers share. On the
    /// handle's clock.
    limiter: RateLimiter<Option<Caller>, HashMapStateStore<Option<Caller>>, Clock>,
    checks: AtomicU32,
    unknown_warned: AtomicBool,
}

impl std::fmt::Debug for MissBudget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MissBudget")
            .field("callers", &self.limiter.len())
            .finish_non_exhaustive()
    }
}

impl MissBudget {
    /// `None` for a limit `build` would have refused (zero calls or window).
    pub(crate) fn new(limit: MissLimit, clock: Clock) -> Option<Self> {
        let calls = NonZeroU32::new(limit.calls())?;
        let quota = Quota::with_period(limit.window() / calls.get())?.allow_burst(calls);
        Some(MissBudget {
            limiter: RateLimiter::hashmap_with_clock(quota, clock),
            checks: AtomicU32::new(0),
            unknown_warned: AtomicBool::new(false),
        })
    }

    /// Spends one call of `caller`'s budget, or says when the next one is due. A request
    /// whose caller is unknown is let through, with one warning in the process's life.
    pub(crate) fn spend(&self, caller: Option<&Caller>) -> Result<(), Error> {
        let Some(caller) = caller else {
            if !self.unknown_warned.swap(true, Ordering::Relaxed) {
                tracing::warn!(
                    "the id6 miss budget cannot tell callers apart (no connection address in the \
                     request): serve axum with `into_make_service_with_connect_info::<SocketAddr>()`, \
                     insert the peer's `SocketAddr` into each request, or set `caller_key`; \
                     until then, misses are not budgeted"
                );
            }
            return Ok(());
        };
        self.check(Some(caller.clone().budget_key()))
    }

    /// [`spend`](Self::spend) for a typed call: its caller can only be told when the call
    /// was given the request (or its parts); the others share one budget, as one caller.
    pub(crate) fn spend_typed(&self, caller: Option<&Caller>) -> Result<(), Error> {
        self.check(caller.map(|caller| caller.clone().budget_key()))
    }

    fn check(&self, key: Option<Caller>) -> Result<(), Error> {
        if self.checks.fetch_add(1, Ordering::Relaxed) % SWEEP_EVERY == SWEEP_EVERY - 1 {
            // Forget callers whose budget is whole again: the map holds the recent ones only.
            self.limiter.retain_recent();
            self.limiter.shrink_to_fit();
        }
        self.limiter.check_key(&key).map_err(|not_until| {
            let wait = not_until.wait_time_from(self.limiter.clock().now());
            tracing::debug!(
                wait_ms = wait.as_millis() as u64,
                "caller over its id6 miss budget; id6 not called"
            );
            // A wait on the handle's clock, handed out as a real date.
            Error::new(Kind::OverBudget {
                until: SystemTime::now() + wait.max(Duration::from_secs(1)),
            })
        })
    }

    #[cfg(test)]
    fn callers(&self) -> usize {
        self.limiter.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::IpAddr;

    fn caller(i: u32) -> Option<Caller> {
        Some(Caller::Address(IpAddr::from(i.to_be_bytes())))
    }

    #[test]
    fn typed_calls_of_untold_callers_share_one_budget() {
        let budget =
            MissBudget::new(MissLimit::new(2, Duration::from_secs(60)), Clock::default()).unwrap();
        assert!(budget.spend_typed(None).is_ok());
        assert!(budget.spend_typed(None).is_ok());
        assert!(budget.spend_typed(None).unwrap_err().is_over_budget());
        // A told caller has its own, shared by its requests and its typed calls.
        assert!(budget.spend_typed(caller(1).as_ref()).is_ok());
        assert!(budget.spend(caller(1).as_ref()).is_ok());
        assert!(budget.spend(caller(1).as_ref()).is_err());
        assert!(budget.spend_typed(caller(1).as_ref()).is_err());
        // Requests of untold callers are still let through.
        assert!(budget.spend(None).is_ok());
    }

    #[test]
    fn each_caller_has_its_own_budget() {
        let budget =
            MissBudget::new(MissLimit::new(3, Duration::from_secs(60)), Clock::default()).unwrap();
        for _ in 0..3 {
            assert!(budget.spend(caller(1).as_ref()).is_ok());
        }
        let over = budget.spend(caller(1).as_ref()).unwrap_err();
        assert!(over.is_unavailable() && over.is_not_attempted());
        let wait = over.retry_after().unwrap();
        assert!(
            wait > Duration::from_secs(15) && wait <= Duration::from_secs(20),
            "{wait:?}"
        );
        assert!(
            budget.spend(caller(2).as_ref()).is_ok(),
            "another caller is untouched"
        );
        // Unknown callers are not budgeted.
        for _ in 0..10 {
            assert!(budget.spend(None).is_ok());
        }
    }

    /// On a driven clock (feature `testing`): the budgets come back without waiting.
    #[cfg(feature = "testing")]
    #[test]
    fn callers_whose_budget_is_whole_again_are_forgotten() {
        let clock = Clock::default();
        let budget =
            MissBudget::new(MissLimit::new(1, Duration::from_secs(60)), clock.clone()).unwrap();
        for i in 0..SWEEP_EVERY * 2 {
            let _ = budget.spend(caller(i).as_ref());
        }
        assert!(budget.callers() > SWEEP_EVERY as usize, "all remembered");
        // Two windows: a budget is whole again one window after its last spend, and
        // forgotten once nothing tells it from a new one.
        clock.advance(Duration::from_secs(121));
        for _ in 0..SWEEP_EVERY {
            let _ = budget.spend(caller(0).as_ref());
        }
        assert!(budget.callers() < 10, "{} callers kept", budget.callers());
    }
}
