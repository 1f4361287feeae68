//! What the layer did, counted: a cheap [`Stats`] snapshot from the handle, and the same
//! figures through the `metrics` facade, plus `tracing` events (never a token).
//!
//! The hit path only bumps one counter stripe and one pre-registered `metrics` handle: the
//! handles are registered when the [`Id6`](crate::Id6) is built, so install your `metrics`
//! recorder before building it.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use facade::{Counter, Gauge, Histogram};

use crate::stripe::{self, STRIPES};

/// A snapshot of what the handle did since it was built ([`Id6::stats`](crate::Id6::stats)).
///
/// ```
/// # async fn run() -> Result<(), id6_tower::Error> {
/// let id6 = id6_tower::Id6::builder("http://127.0.0.1:8000/api").build()?;
/// let anonymous = id6.authenticate(&http::HeaderMap::new()).await;
/// assert!(anonymous.is_anonymous());
/// let stats = id6.stats();
/// assert_eq!(stats.no_token, 1); // no cookie: nothing looked up, id6 not asked
/// assert_eq!(stats.upstream_authenticated + stats.upstream_rejected, 0);
/// # Ok(())
/// # }
/// # tokio::runtime::Runtime::new().unwrap().block_on(run()).unwrap();
/// ```
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Stats {
    /// Requests without a token: anonymous, nothing looked up.
    pub no_token: u64,
    /// Requests whose token no id6 could have issued: anonymous, id6 not asked.
    pub malformed: u64,
    /// Cache hits naming a user.
    pub hits: u64,
    /// Cache hits of a token id6 rejected.
    pub negative_hits: u64,
    /// Cache misses (each then starts or joins an id6 call, unless over budget).
    pub misses: u64,
    /// Misses refused because their caller's miss budget was spent: id6 not asked, the
    /// request resolved as unavailable. (A typed call the budget refuses is no lookup: its
    /// error says so, [`Error::is_over_budget`](crate::Error::is_over_budget).)
    pub over_budget: u64,
    /// Background refreshes of cached users started ahead of their expiry (past the refresh
    /// age).
    pub refreshes: u64,
    /// Refreshes not made because id6's remaining rate limit was under its reserve (or the
    /// breaker was open).
    pub refreshes_paused: u64,
    /// Misses that joined an id6 call already in flight instead of making one.
    pub coalesced: u64,
    /// id6 calls that named a user.
    pub upstream_authenticated: u64,
    /// id6 calls that rejected the token.
    pub upstream_rejected: u64,
    /// id6 calls that gave no usable answer.
    pub upstream_unavailable: u64,
    /// Invalidations (token, user or all): explicit (`invalidate_*`, `clear`), by a typed
    /// call, by an id6 answer showing a newer `invalidateTokensAt` (the user's other tokens),
    /// and with Redis, those broadcast by other instances and the clear after a resubscription.
    pub evictions: u64,
    /// Verdicts in the cache now.
    pub entries: u64,
    /// Redis operations that failed or timed out (feature `redis`; 0 without Redis).
    pub redis_errors: u64,
    /// Shared entries that did not open with the request's own token (written by someone
    /// without it, or damaged): each a miss, never a user.
    pub redis_unopened: u64,
    /// Evictions given up while Redis did not answer (more were queued than the bound) for
    /// one clear of every instance's cache, sent when Redis answers again.
    pub redis_evictions_given_up: u64,
    /// Redis subscriptions established again after one was cut or stopped answering pings
    /// (each clears the local cache: broadcasts may have been missed).
    pub redis_resubscribed: u64,
    /// Redis command connections replaced after an operation timed out on them.
    pub redis_reconnected: u64,
    /// id6's rate limit per window, as its last answer said (`X-RateLimit-Limit`).
    pub id6_rate_limit: Option<u64>,
    /// What was left of it then (`X-RateLimit-Remaining`).
    pub id6_rate_remaining: Option<u64>,
}

/// How the shared tier (Redis, feature `redis`) is doing, for readiness probes
/// ([`Id6::shared_health`](crate::Id6::shared_health)). The app works without it: a tier
/// that is down means more id6 calls and broadcasts delayed, never a refused request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum SharedHealth {
    /// No shared tier configured: each instance asks id6 on its own.
    Off,
    /// Configured, and nothing asked of it yet (it is asked at start when the handle is
    /// built inside a runtime, else at the first miss).
    Starting {
        /// How the instances reach Redis.
        topology: Topology,
    },
    /// Its last operation was answered.
    Up {
        /// How the instances reach Redis.
        topology: Topology,
    },
    /// Some of its operations fail since `since` while others are answered: a cluster
    /// with a master down. Its users' requests go to the local cache and id6; the other
    /// masters' users are still shared.
    #[non_exhaustive]
    Degraded {
        /// How the instances reach Redis.
        topology: Topology,
        /// When the first failure of this spell was seen.
        since: std::time::SystemTime,
    },
    /// Its operations fail (or time out) since `since`; the layer carries on with its local
    /// cache and id6 meanwhile, and tries again by itself.
    #[non_exhaustive]
    Down {
        /// How the instances reach Redis.
        topology: Topology,
        /// When the first failure of this outage was seen.
        since: std::time::SystemTime,
    },
}

/// How the instances reach the shared tier.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Topology {
    /// One Redis server, named by its URL.
    Single,
    /// The master of a Sentinel group, found through its Sentinels.
    Sentinel,
    /// A Redis Cluster, found from its seed nodes.
    Cluster,
}

impl Topology {
    /// Its name, as a health report shows it: `single`, `sentinel`, `cluster`.
    pub fn as_str(self) -> &'static str {
        match self {
            Topology::Single => "single",
            Topology::Sentinel => "sentinel",
            Topology::Cluster => "cluster",
        }
    }
}

/// Metric names, all prefixed `id6_`.
pub(crate) mod names {
    pub(crate) const LOOKUPS: &str = "id6_lookups_total";
    pub(crate) const UPSTREAM: &str = "id6_upstream_calls_total";
    pub(crate) const UPSTREAM_SECONDS: &str = "id6_upstream_duration_seconds";
    pub(crate) const EVICTIONS: &str = "id6_cache_evictions_total";
    pub(crate) const REFRESHES: &str = "id6_refreshes_total";
    pub(crate) const RATE_LIMIT: &str = "id6_rate_limit";
    pub(crate) const RATE_REMAINING: &str = "id6_rate_limit_remaining";
}

/// The outcome of one lookup, as counted.
#[derive(Clone, Copy, Debug)]
pub(crate) enum LookupOutcome {
    NoToken,
    Malformed,
    Hit,
    NegativeHit,
    Miss,
    Coalesced,
    OverBudget,
}

/// What became of a refresh ahead of expiry, as counted.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Refresh {
    Started,
    Paused,
}

/// The outcome of one id6 call, as counted.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Upstream {
    Authenticated,
    Rejected,
    Unavailable,
}

/// Why entries left the cache.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Eviction {
    Token,
    User,
    All,
}

impl std::fmt::Debug for Telemetry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Telemetry").finish_non_exhaustive()
    }
}

pub(crate) struct Telemetry {
    lookups: [(Striped, Counter); 7],
    upstream: [(AtomicU64, Counter); 3],
    upstream_seconds: Histogram,
    evictions: [Counter; 3],
    eviction_count: AtomicU64,
    refreshes: [(AtomicU64, Counter); 2],
    rate_limit: Gauge,
    rate_remaining: Gauge,
}

impl Telemetry {
    /// Registers every handle with the `metrics` recorder in place now.
    pub(crate) fn new() -> Self {
        let lookup = |result: &'static str| {
            (
                Striped::default(),
                facade::counter(names::LOOKUPS, "result", result),
            )
        };
        let upstream = |outcome: &'static str| {
            (
                AtomicU64::new(0),
                facade::counter(names::UPSTREAM, "outcome", outcome),
            )
        };
        let eviction = |reason: &'static str| facade::counter(names::EVICTIONS, "reason", reason);
        let refresh = |outcome: &'static str| {
            (
                AtomicU64::new(0),
                facade::counter(names::REFRESHES, "outcome", outcome),
            )
        };
        Telemetry {
            lookups: [
                lookup("no_token"),
                lookup("malformed"),
                lookup("hit"),
                lookup("negative_hit"),
                lookup("miss"),
                lookup("coalesced"),
                lookup("over_budget"),
            ],
            upstream: [
                upstream("authenticated"),
                upstream("rejected"),
                upstream("unavailable"),
            ],
            upstream_seconds: facade::histogram(names::UPSTREAM_SECONDS),
            evictions: [eviction("token"), eviction("user"), eviction("all")],
            eviction_count: AtomicU64::new(0),
            refreshes: [refresh("started"), refresh("paused")],
            rate_limit: facade::gauge(names::RATE_LIMIT),
            rate_remaining: facade::gauge(names::RATE_REMAINING),
        }
    }

    pub(crate) fn refresh(&self, refresh: Refresh) {
        let (count, counter) = &self.refreshes[refresh as usize];
        count.fetch_add(1, Ordering::Relaxed);
        counter.increment(1);
    }

    /// id6's rate limit as its last answer said.
    pub(crate) fn rate_limit(&self, limit: u64, remaining: u64) {
        self.rate_limit.set(limit as f64);
        self.rate_remaining.set(remaining as f64);
    }

    pub(crate) fn lookup(&self, lookup: LookupOutcome) {
        let (stripes, counter) = &self.lookups[lookup as usize];
        stripes.increment();
        counter.increment(1);
    }

    pub(crate) fn upstream(&self, outcome: Upstream, elapsed: Duration) {
        let (count, counter) = &self.upstream[outcome as usize];
        count.fetch_add(1, Ordering::Relaxed);
        counter.increment(1);
        self.upstream_seconds.record(elapsed.as_secs_f64());
    }

    pub(crate) fn eviction(&self, reason: Eviction) {
        self.eviction_count.fetch_add(1, Ordering::Relaxed);
        self.evictions[reason as usize].increment(1);
    }

    pub(crate) fn snapshot(&self, entries: u64) -> Stats {
        let lookups = |l: LookupOutcome| self.lookups[l as usize].0.sum();
        let upstream = |u: Upstream| self.upstream[u as usize].0.load(Ordering::Relaxed);
        Stats {
            no_token: lookups(LookupOutcome::NoToken),
            malformed: lookups(LookupOutcome::Malformed),
            hits: lookups(LookupOutcome::Hit),
            negative_hits: lookups(LookupOutcome::NegativeHit),
            misses: lookups(LookupOutcome::Miss),
            coalesced: lookups(LookupOutcome::Coalesced),
            over_budget: lookups(LookupOutcome::OverBudget),
            refreshes: self.refreshes[Refresh::Started as usize]
                .0
                .load(Ordering::Relaxed),
            refreshes_paused: self.refreshes[Refresh::Paused as usize]
                .0
                .load(Ordering::Relaxed),
            upstream_authenticated: upstream(Upstream::Authenticated),
            upstream_rejected: upstream(Upstream::Rejected),
            upstream_unavailable: upstream(Upstream::Unavailable),
            evictions: self.eviction_count.load(Ordering::Relaxed),
            entries,
            redis_errors: 0,
            redis_unopened: 0,
            redis_evictions_given_up: 0,
            redis_resubscribed: 0,
            redis_reconnected: 0,
            id6_rate_limit: None,
            id6_rate_remaining: None,
        }
    }
}

/// The `metrics` facade (feature `metrics`), or the same calls doing nothing without it.
#[cfg(feature = "metrics")]
mod facade {
    pub(super) use metrics::{Counter, Gauge, Histogram};

    pub(super) fn gauge(name: &'static str) -> Gauge {
        metrics::gauge!(name)
    }

    pub(super) fn counter(name: &'static str, label: &'static str, value: &'static str) -> Counter {
        metrics::counter!(name, label => value)
    }

    pub(super) fn histogram(name: &'static str) -> Histogram {
        metrics::histogram!(name)
    }
}

#[cfg(not(feature = "metrics"))]
mod facade {
    pub(super) struct Counter;

    impl Counter {
        pub(super) fn increment(&self, _: u64) {}
    }

    pub(super) struct Histogram;

    pub(super) struct Gauge;

    impl Gauge {
        pub(super) fn set(&self, _: f64) {}
    }

    pub(super) fn gauge(_: &'static str) -> Gauge {
        Gauge
    }

    impl Histogram {
        pub(super) fn record(&self, _: f64) {}
    }

    pub(super) fn counter(_: &'static str, _: &'static str, _: &'static str) -> Counter {
        Counter
    }

    pub(super) fn histogram(_: &'static str) -> Histogram {
        Histogram
    }
}

/// A counter split over cache lines, so that cores counting hits at once do not fight over
/// one line; each thread keeps to its stripe.
#[derive(Default)]
struct Striped([Stripe; STRIPES]);

#[derive(Default)]
#[repr(align(128))]
struct Stripe(AtomicU64);

impl Striped {
    fn increment(&self) {
        self.0[stripe::this_thread()]
            .0
            .fetch_add(1, Ordering::Relaxed);
    }

    fn sum(&self) -> u64 {
        self.0.iter().map(|s| s.0.load(Ordering::Relaxed)).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stripes_add_up_across_threads() {
        let counter = std::sync::Arc::new(Striped::default());
        let threads: Vec<_> = (0..4)
            .map(|_| {
                let c = counter.clone();
                std::thread::spawn(move || (0..1000).for_each(|_| c.increment()))
            })
            .collect();
        threads.into_iter().for_each(|t| t.join().unwrap());
        assert_eq!(counter.sum(), 4000);
    }
}
