//! The store: moka tiers of id6's verdicts per token key (users, rejected tokens, and the
//! stale users the failure policy may serve), each entry stamped by the handle's clock.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use moka::sync::Cache;

use crate::clock::Clock;
use crate::config::{OnUnavailable, ResolverSettings};
use crate::error::TokenRejection;
use crate::token::TokenKey;
use crate::user::{Authentication, User};

/// Keys are SHA-256 or keyed SipHash-128 outputs: foldhash (seeded per process) is enough to
/// spread them and cheaper than moka's default SipHash.
type Hasher = foldhash::fast::RandomState;

/// The local tiers. Each entry carries when it was stored, by the handle's [`Clock`],
/// which decides expiry; moka's TTLs (the same lengths) only free the memory.
#[derive(Clone)]
pub(super) struct Entries {
    pub(super) users: Cache<TokenKey, Arc<Cached>, Hasher>,
    /// Rejected tokens, with id6's reason and when.
    rejected: Cache<TokenKey, (TokenRejection, Instant), Hasher>,
    /// With [`OnUnavailable::Stale`]: users kept for the grace window past their TTL, served
    /// only when id6 cannot be asked. Invalidated with the rest.
    stale: Option<Cache<TokenKey, (Arc<User>, Instant), Hasher>>,
    cache_ttl: Duration,
    negative_ttl: Duration,
    /// TTL plus the stale grace window.
    stale_ttl: Duration,
    /// Past this age, a hit asks for one refresh.
    refresh_after: Option<Duration>,
    pub(super) clock: Clock,
}

impl Entries {
    pub(super) fn new(settings: &ResolverSettings) -> Self {
        // Past the TTL, the stale tier keeps a user for the grace window.
        let stale_ttl = match settings.on_unavailable {
            OnUnavailable::Stale(grace) => Some(settings.cache_ttl.saturating_add(grace)),
            _ => None,
        };
        Entries {
            users: Cache::builder()
                .max_capacity(settings.max_capacity)
                .time_to_live(settings.cache_ttl)
                .build_with_hasher(Hasher::default()),
            // Rejected tokens are what a stranger can mint at will: bounded the same way.
            rejected: Cache::builder()
                .max_capacity(settings.max_capacity)
                .time_to_live(settings.negative_ttl)
                .build_with_hasher(Hasher::default()),
            stale: stale_ttl.map(|ttl| {
                Cache::builder()
                    .max_capacity(settings.max_capacity)
                    .time_to_live(ttl)
                    .build_with_hasher(Hasher::default())
            }),
            cache_ttl: settings.cache_ttl,
            negative_ttl: settings.negative_ttl,
            stale_ttl: stale_ttl.unwrap_or_default(),
            refresh_after: settings.refresh_after,
            clock: settings.clock.clone(),
        }
    }

    /// Whether an answer given this long ago may still be served as a user's.
    pub(super) fn within_ttl(&self, age: Duration) -> bool {
        age < self.cache_ttl
    }

    /// How long a user's answer is served.
    pub(super) fn user_ttl(&self) -> Duration {
        self.cache_ttl
    }

    /// How long ago `then` was, by the handle's clock.
    pub(super) fn since(&self, then: Instant) -> Duration {
        self.clock.now().saturating_duration_since(then)
    }
}

/// A user as cached: with when id6 said so (for routes that want a recent answer, and for
/// refresh-ahead) and whether this entry's one refresh was claimed.
pub(super) struct Cached {
    pub(super) user: Arc<User>,
    confirmed: Instant,
    refresh_claimed: AtomicBool,
}

/// A cache hit.
pub(crate) struct Hit {
    pub(crate) verdict: Authentication,
    /// The entry is old enough to refresh, and this hit claimed that refresh: one per entry,
    /// whether it is made, paused or fails (then the entry simply expires).
    pub(crate) refresh: bool,
    /// How long the entry stays an answer.
    pub(crate) fresh_for: Duration,
}

impl Entries {
    /// With a `max_age`, a user confirmed by id6 longer ago is no answer: one lookup either
    /// way, and the same lookup says whether to refresh.
    pub(super) fn get(&self, key: &TokenKey, max_age: Option<Duration>) -> Option<Hit> {
        self.lookup(key, max_age, true)
    }

    /// [`get`](Self::get); `claim`: whether a hit due for refresh claims it (a load checking
    /// the cache again does not: it would drop the claim).
    pub(super) fn lookup(
        &self,
        key: &TokenKey,
        max_age: Option<Duration>,
        claim: bool,
    ) -> Option<Hit> {
        if let Some(cached) = self.users.get(key) {
            let age = self.since(cached.confirmed);
            if age >= self.cache_ttl || max_age.is_some_and(|max_age| age > max_age) {
                return None;
            }
            let refresh = claim
                && self.refresh_after.is_some_and(|after| age > after)
                && !cached.refresh_claimed.swap(true, Ordering::Relaxed);
            return Some(Hit {
                verdict: Authentication::Authenticated(cached.user.clone()),
                refresh,
                fresh_for: self.cache_ttl - age,
            });
        }
        let (why, at) = self.rejected.get(key)?;
        let age = self.since(at);
        (age < self.negative_ttl).then(|| Hit {
            verdict: Authentication::Rejected(why),
            refresh: false,
            fresh_for: self.negative_ttl - age,
        })
    }

    /// The last user id6 named for `key`, within the stale grace window.
    pub(super) fn stale(&self, key: &TokenKey) -> Option<Arc<User>> {
        let (user, at) = self.stale.as_ref()?.get(key)?;
        (self.since(at) < self.stale_ttl).then_some(user)
    }

    pub(super) fn contains_key(&self, key: &TokenKey) -> bool {
        self.users.contains_key(key)
            || self.rejected.contains_key(key)
            || self.stale.as_ref().is_some_and(|s| s.contains_key(key))
    }

    /// Stores a verdict id6 gave `age` ago (older than the TTL: nothing to keep).
    pub(super) fn insert(&self, key: TokenKey, verdict: Authentication, age: Duration) {
        match verdict {
            Authentication::Authenticated(user) => {
                let Some(now) = self
                    .clock
                    .now()
                    .checked_sub(age)
                    .filter(|_| age < self.cache_ttl)
                else {
                    return;
                };
                self.rejected.invalidate(&key);
                if let Some(stale) = &self.stale {
                    stale.insert(key, (user.clone(), now));
                }
                let cached = Cached {
                    user,
                    confirmed: now,
                    refresh_claimed: AtomicBool::new(false),
                };
                self.users.insert(key, Arc::new(cached));
            }
            Authentication::Rejected(why) => {
                self.users.invalidate(&key);
                if let Some(stale) = &self.stale {
                    stale.invalidate(&key);
                }
                self.rejected.insert(key, (why, self.clock.now()));
            }
            // Said of no token: never a verdict on one to remember.
            Authentication::Anonymous | Authentication::Unavailable(_) => {}
        }
    }

    pub(super) fn invalidate(&self, key: &TokenKey) {
        self.users.invalidate(key);
        self.rejected.invalidate(key);
        if let Some(stale) = &self.stale {
            stale.invalidate(key);
        }
    }

    pub(super) fn invalidate_all(&self) {
        self.users.invalidate_all();
        self.rejected.invalidate_all();
        if let Some(stale) = &self.stale {
            stale.invalidate_all();
        }
    }

    /// Settles moka's pending bookkeeping first, so the count is current.
    pub(super) fn entry_count(&self) -> u64 {
        self.users.run_pending_tasks();
        self.rejected.run_pending_tasks();
        self.users.entry_count() + self.rejected.entry_count()
    }
}
