//! The optional tier between the local caches and id6, shared by every instance: a small
//! trait, so that the resolver does not know it is Redis (tower-sessions' caching store over
//! a backing store is the model). The handle (`id6.rs`) is the one place that builds it.

use std::fmt;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::future::BoxFuture;

use super::Scope;
use crate::token::{TokenKey, UserToken};
use crate::user::Authentication;

/// A second-level cache: answers shared between instances, and evictions broadcast to them.
pub(crate) trait SecondLevel: Send + Sync + fmt::Debug {
    /// The shared verdict for `token` (whose key is `key`), if any that `token` vouches for
    /// (and if it answers in time), with how long ago id6 gave it. The age is the tier's
    /// own, never a comparison of two instances' clocks.
    fn get<'a>(
        &'a self,
        key: &'a TokenKey,
        token: &'a UserToken,
    ) -> BoxFuture<'a, Option<(Authentication, Duration)>>;

    /// Shares an id6 verdict, unless an eviction since `started` (when the load that
    /// produced it began) outdated it; a revocation it shows that no instance handled yet is
    /// broadcast first.
    fn store<'a>(
        &'a self,
        key: &'a TokenKey,
        token: &'a UserToken,
        verdict: &'a Authentication,
        started: Instant,
    ) -> BoxFuture<'a, ()>;

    /// Deletes what `scope` covers and tells every instance: queued at once, in call order;
    /// the future waits (boundedly) for it to be applied.
    fn evict(self: Arc<Self>, scope: Scope) -> BoxFuture<'static, ()>;

    /// Applies the other instances' evictions to `local` from now on (once; later calls do
    /// nothing), until the handle that owns this tier is dropped.
    fn subscribe(self: Arc<Self>, local: Arc<dyn EvictionSink>);

    /// What the tier counted since start.
    fn counts(&self) -> SharedCounts;

    /// How the tier is doing now.
    fn health(&self) -> crate::telemetry::SharedHealth;
}

/// What a second level counted since start, for `Id6::stats`.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct SharedCounts {
    /// Operations that failed or timed out.
    pub(crate) errors: u64,
    /// Shared entries that did not open with the request's token (forged, damaged, copied):
    /// each a miss.
    pub(crate) unopened: u64,
    /// Evictions given up (the queue's bound reached while Redis did not answer) for one
    /// clear of every instance's cache.
    pub(crate) evictions_given_up: u64,
    /// Subscriptions established again after one was cut or went silent (each clears the
    /// local cache).
    pub(crate) resubscribed: u64,
    /// Command connections replaced after an operation timed out on them.
    pub(crate) reconnected: u64,
}

/// All the second level sees of this instance's local tiers: where other instances'
/// evictions are applied. Only a second level that broadcasts (Redis) calls it.
// Without a broadcasting second level compiled in (feature `redis`), nothing calls it.
#[allow(dead_code)]
pub(crate) trait EvictionSink: Send + Sync + 'static {
    /// Forgets what `scope` covers, locally (no load in flight puts it back).
    fn evict(&self, scope: Scope);

    /// [`evict`](Self::evict) once more, quietly (not counted, no session told again): for
    /// this instance's own eviction when its second-level part is done, which a miss in
    /// between may have undone by reading the old shared entry back.
    fn evict_again(&self, scope: Scope);

    /// Whether anything is held locally: what a late first subscription must clear.
    fn holds_any(&self) -> bool;
}
