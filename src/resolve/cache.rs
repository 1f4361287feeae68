//! The local cache as the resolver sees it: the store ([`Entries`]), one load in flight per
//! key however many requests miss on it at once, and evictions by token, by user or all,
//! kept safe from refills by loads already in flight ([`Marks`]).

use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::lives::Lives;
use super::marks::Marks;
pub(crate) use super::pending::Pending;
use super::policy::{Answer, FailurePolicy};
use super::store::{Entries, Hit};
use super::{Payer, Scope};

use crate::config::ResolverSettings;
use crate::error::{Error, Kind};
use crate::lock::lock;
use crate::telemetry::{self, Eviction, Telemetry};
use crate::token::{KeyMap, TokenKey};
use crate::user::Authentication;

/// What a load fetched: the verdict, and how long ago id6 gave it (zero from id6 itself; a
/// second-level copy may be older).
pub(crate) struct Fetched {
    pub(crate) verdict: Authentication,
    pub(crate) age: Duration,
}

impl From<Authentication> for Fetched {
    fn from(verdict: Authentication) -> Self {
        Fetched {
            verdict,
            age: Duration::ZERO,
        }
    }
}

/// The verdicts cache. Only id6's verdicts (users, rejected tokens) are stored; `Unavailable`
/// never is, so the next request asks id6 again.
///
/// moka's `sync` caches, not `future`: their `get` is a plain call, so a hit resolves inside
/// `Service::call` with no future to box. Their blocking `get_with` must not run on a runtime
/// thread, so concurrent misses are merged here instead, by a small map of in-flight loads.
/// Users and rejected tokens live in two caches, each with its own `time_to_live`: measured
/// 30 ns cheaper per hit than one cache with a per-entry `Expiry`.
#[derive(Clone)]
pub(crate) struct AuthCache {
    entries: Entries,
    shared: Arc<Coordination>,
}

impl std::fmt::Debug for AuthCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuthCache")
            .field("entries", &self.entries.user_count())
            .finish_non_exhaustive()
    }
}

struct Coordination {
    inflight: Mutex<KeyMap<Inflight>>,
    marks: Marks,
    /// The tokens open connections watch: an eviction makes them due for a recheck.
    lives: Arc<Lives>,
    policy: FailurePolicy,
    telemetry: Arc<Telemetry>,
}

struct Inflight {
    pending: Pending,
    started: u64,
}

/// Whose load [`AuthCache::load`] starts or joins.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum LoadBy {
    /// A request's miss.
    Miss,
    /// A session's recheck: background work, no lookup.
    Recheck,
}

impl AuthCache {
    pub(crate) fn new(settings: &ResolverSettings, telemetry: Arc<Telemetry>) -> Self {
        let entries = Entries::new(settings);
        AuthCache {
            entries,
            shared: Arc::new(Coordination {
                inflight: Mutex::default(),
                marks: Marks::new(settings.mark_lifetime),
                lives: Arc::new(Lives::new(settings.clock.clone())),
                policy: FailurePolicy::new(settings.on_unavailable),
                telemetry,
            }),
        }
    }

    /// The cached verdict of the token whose hot key is `hot`, if any: the whole hit path.
    /// `key()` gives its key, asked only past the front of hot entries (`None`: no entry can
    /// hold it, a miss without a lookup). With a `max_age`, a
    /// user confirmed by id6 longer ago counts as a miss.
    pub(crate) fn get(
        &self,
        hot: &TokenKey,
        key: impl FnOnce() -> Option<TokenKey>,
        max_age: Option<Duration>,
    ) -> Option<Hit> {
        self.entries.get(hot, key, max_age)
    }

    /// Waits on the load of `key` already in flight, or starts one with `fetch`.
    ///
    /// # Concurrent calls on the same key
    ///
    /// Only the first caller's `fetch` runs; it runs in its own task, so it completes (and
    /// fills the cache) even when every waiting request is dropped. The verdict is stored
    /// before the in-flight entry goes, and both are checked under one lock, so a caller
    /// never misses both and starts a second call. A load that started before an
    /// invalidation is not joined: its answer may predate what the invalidation reflects.
    /// With a `max_age`, a cached user confirmed longer ago does not count: id6 is asked
    /// again (or the call already in flight is joined).
    ///
    /// `payer` (found before, outside the lock: finding it may run the app's own
    /// `caller_key`) pays only for a new call for a token the cache does not know: `fetch`
    /// gets who pays ([`Payer::Nobody`] for a token the cache holds, too old for a `max_age`
    /// route: id6's word already, not a stranger's guess). Nothing is spent before `fetch`
    /// runs, so joining a call in flight spends nothing. One pass under the lock: finding
    /// the payer inside it would take a second round of lookups. `by` says whose load it is:
    /// only a request's miss counts its join as a coalesced miss.
    pub(crate) fn load<F, Fut>(
        &self,
        key: TokenKey,
        max_age: Option<Duration>,
        payer: Payer,
        by: LoadBy,
        fetch: F,
    ) -> Pending
    where
        F: FnOnce(Payer) -> Fut,
        Fut: Future + Send + 'static,
        Fut::Output: Into<Fetched>,
    {
        let mut inflight = lock(&self.shared.inflight);
        if let Some(done) = self.entries.lookup(&key, max_age, false) {
            return ready(done.verdict);
        }
        let generation = self.generation();
        if let Some(joined) = self.joined(&inflight, &key, generation) {
            if by == LoadBy::Miss {
                self.coalesced();
            }
            return joined;
        }
        let payer = match self.entries.has_user(&key) {
            true => Payer::Nobody,
            false => payer,
        };
        self.start(&mut inflight, key, generation, || fetch(payer))
    }

    /// The load of `key` in flight, if one started under the current generation: what
    /// [`load`](Self::load) would join, found without the work that precedes a new call.
    /// Only a request's miss joins this way: the join is counted as a coalesced miss.
    pub(crate) fn join(&self, key: &TokenKey) -> Option<Pending> {
        let inflight = lock(&self.shared.inflight);
        let joined = self.joined(&inflight, key, self.generation());
        if joined.is_some() {
            self.coalesced();
        }
        joined
    }

    /// A request's miss joined a call in flight.
    fn coalesced(&self) {
        self.shared
            .telemetry
            .lookup(telemetry::LookupOutcome::Coalesced);
        tracing::trace!("joining an id6 call in flight");
    }

    /// Joins the load of `key` in `inflight` if it started under `generation` (a load that
    /// started before an eviction may predate what the eviction reflects).
    fn joined(
        &self,
        inflight: &KeyMap<Inflight>,
        key: &TokenKey,
        generation: u64,
    ) -> Option<Pending> {
        let load = inflight
            .get(key)
            .filter(|load| load.started == generation)?;
        Some(load.pending.clone())
    }

    /// What the cache holds for `key` now, without claiming a refresh: for a typed call's
    /// door and a connection's recheck, which are no request's hit.
    pub(crate) fn peek(&self, key: &TokenKey) -> Option<Hit> {
        self.entries.lookup(key, None, false)
    }

    /// What was evicted of `key` (or of its user, or everything) since `generation`.
    pub(crate) fn evicted_since(
        &self,
        key: &TokenKey,
        user_id: u64,
        generation: u64,
    ) -> Option<Scope> {
        self.shared.marks.evicted_since(key, user_id, generation)
    }

    /// The tokens open connections watch.
    pub(crate) fn lives(&self) -> &Arc<Lives> {
        &self.shared.lives
    }

    /// Renews `key` in the background, unless a load of it is already in flight (whose
    /// answer renews it anyway); the answer is stored as a miss's is, so an eviction since
    /// the start wins over it.
    pub(crate) fn refresh<F, Fut>(&self, key: TokenKey, fetch: F) -> bool
    where
        F: FnOnce() -> Fut,
        Fut: Future + Send + 'static,
        Fut::Output: Into<Fetched>,
    {
        let mut inflight = lock(&self.shared.inflight);
        let generation = self.generation();
        if inflight.get(&key).is_some_and(|l| l.started == generation) {
            return false;
        }
        drop(self.start(&mut inflight, key, generation, fetch));
        true
    }

    /// Spawns a load of `key` under `generation` and lists it in flight.
    fn start<F, Fut>(
        &self,
        inflight: &mut KeyMap<Inflight>,
        key: TokenKey,
        generation: u64,
        fetch: F,
    ) -> Pending
    where
        F: FnOnce() -> Fut,
        Fut: Future + Send + 'static,
        Fut::Output: Into<Fetched>,
    {
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return ready(Authentication::Unavailable(Error::new(Kind::Runtime(
                "no tokio runtime to call id6 from",
            ))));
        };
        let guard = InflightGuard {
            cache: self.clone(),
            key,
            started: generation,
        };
        let (pending, completion) = Pending::new();
        let fetch = fetch();
        // Not awaited: the task answers `pending` itself (or, dropped unfinished, with an
        // `Unavailable`), and runs on when every waiter is gone.
        drop(runtime.spawn(async move {
            let Fetched { verdict, age } = fetch.await.into();
            guard.cache.fill_aged(key, &verdict, generation, age);
            // Policy answers are for the waiters only: computed after the fill, never stored.
            let answer = guard
                .cache
                .shared
                .policy
                .answer(verdict, || guard.cache.entries.stale(&key));
            drop(guard);
            completion.finish(answer);
        }));
        inflight.insert(
            key,
            Inflight {
                pending: pending.clone(),
                started: generation,
            },
        );
        pending
    }

    /// Stores what a load that started under generation `started` learnt, unless an
    /// invalidation since then makes it stale.
    pub(crate) fn fill(&self, key: TokenKey, verdict: &Authentication, started: u64) {
        self.fill_aged(key, verdict, started, Duration::ZERO);
    }

    /// [`fill`](Self::fill) with an answer id6 gave `age` ago.
    fn fill_aged(&self, key: TokenKey, verdict: &Authentication, started: u64, age: Duration) {
        let marks = &self.shared.marks;
        if let Some(user_id) = marks.fill(&self.entries, key, verdict, started, age) {
            // As an eviction of the user: their sessions are asked about now (a session of
            // a token the revocation killed ends on id6's answer).
            self.shared.telemetry.eviction(Eviction::User);
            self.shared.lives.evicted(Scope::User(user_id));
        }
    }

    /// Forgets what `scope` covers, locally; no load already in flight can put it back.
    /// [`Resolver::evict`](super::Resolver::evict) adds the second level and the other
    /// instances.
    pub(crate) fn evict(&self, scope: Scope) {
        self.forget(scope);
        if let Scope::User(user_id) = scope {
            tracing::debug!(user_id, "evicted every cached token of the user");
        }
        let eviction = match scope {
            Scope::Token(_) | Scope::SignedOut(_) => Eviction::Token,
            Scope::User(_) => Eviction::User,
            Scope::All => Eviction::All,
        };
        self.shared.telemetry.eviction(eviction);
        self.shared.lives.evicted(scope);
    }

    /// [`evict`](Self::evict) without counting it or telling the sessions: the eviction
    /// itself, and, once the second level's part of one is done, that eviction again (what
    /// a miss read back from the second level in between, before its entry there was
    /// deleted, goes, and no load that started in between stores its answer).
    pub(crate) fn forget(&self, scope: Scope) {
        let (marks, entries) = (&self.shared.marks, &self.entries);
        match scope {
            Scope::Token(key) => marks.invalidate_token(entries, &key, false),
            Scope::SignedOut(key) => marks.invalidate_token(entries, &key, true),
            Scope::User(user_id) => marks.invalidate_user(entries, user_id),
            Scope::All => marks.clear(entries),
        }
    }

    /// The user a cached token belongs to.
    pub(crate) fn user_id_of(&self, key: &TokenKey) -> Option<u64> {
        self.entries.user(key).map(|user| user.id)
    }

    /// Whether an answer given this long ago may still be served as a user's.
    pub(crate) fn within_ttl(&self, age: Duration) -> bool {
        self.entries.within_ttl(age)
    }

    /// How long a user's answer is served.
    pub(crate) fn user_ttl(&self) -> Duration {
        self.entries.user_ttl()
    }

    /// Number of cached verdicts.
    pub(crate) fn entry_count(&self) -> u64 {
        self.entries.entry_count()
    }

    /// The generation a load starting now runs under; see [`fill`](Self::fill).
    #[inline]
    pub(crate) fn generation(&self) -> u64 {
        self.shared.marks.generation()
    }

    #[cfg(any(test, feature = "testing"))]
    pub(crate) fn inflight_len(&self) -> usize {
        lock(&self.shared.inflight).len()
    }
}

fn ready(verdict: Authentication) -> Pending {
    Pending::ready(Answer {
        verdict,
        by_policy: false,
    })
}

/// Removes the in-flight entry when the load ends, even by panic or runtime shutdown; only
/// its own entry, not a newer load's of the same key.
struct InflightGuard {
    cache: AuthCache,
    key: TokenKey,
    started: u64,
}

impl Drop for InflightGuard {
    fn drop(&mut self) {
        let mut inflight = lock(&self.cache.shared.inflight);
        if inflight
            .get(&self.key)
            .is_some_and(|l| l.started == self.started)
        {
            inflight.remove(&self.key);
        }
        drop(inflight);
        // A test waiting for background work to settle looks again.
        self.cache.entries.clock.progressed();
    }
}

#[cfg(test)]
mod tests {
    use super::super::marks::MAX_MARKS;
    use super::*;
    use crate::config::Id6Builder;
    use crate::error::TokenRejection;
    use crate::user::User;
    use futures_util::FutureExt;
    use std::sync::atomic::{AtomicUsize, Ordering};

    fn cache() -> AuthCache {
        let settings = Id6Builder::new("http://127.0.0.1:9")
            .negative_ttl(Duration::from_millis(50))
            .validate()
            .unwrap()
            .resolver;
        AuthCache::new(&settings, Arc::new(Telemetry::new()))
    }

    fn user(id: u64) -> Authentication {
        Authentication::Authenticated(Arc::new(User::new(id, "A")))
    }

    #[tokio::test]
    async fn concurrent_loads_share_one_fetch() {
        let cache = cache();
        let key = TokenKey::of("t");
        let calls = Arc::new(AtomicUsize::new(0));
        let (release, gate) = tokio::sync::oneshot::channel::<()>();
        let gate = gate.shared();
        let waiters: Vec<Pending> = (0..50)
            .map(|_| {
                let calls = calls.clone();
                let gate = gate.clone();
                cache.load(
                    key,
                    None,
                    Payer::Nobody,
                    LoadBy::Miss,
                    move |_| async move {
                        calls.fetch_add(1, Ordering::SeqCst);
                        let _ = gate.await;
                        user(1)
                    },
                )
            })
            .collect();
        assert_eq!(cache.inflight_len(), 1);
        release.send(()).unwrap();
        for w in waiters {
            assert_eq!(w.await.verdict.user().map(|u| u.id), Some(1));
        }
        assert_eq!(calls.load(Ordering::SeqCst), 1);
        assert_eq!(cache.inflight_len(), 0);
        assert!(cache.get(&key, || Some(key), None).is_some());
        assert_eq!(cache.user_id_of(&key), Some(1));
    }

    #[tokio::test]
    async fn unavailable_is_not_cached_and_dropped_waiters_do_not_cancel() {
        let cache = cache();
        let key = TokenKey::of("u");
        let pending = cache.load(key, None, Payer::Nobody, LoadBy::Miss, |_| async {
            Authentication::Unavailable(Error::new(Kind::Connect))
        });
        assert!(pending.await.verdict.unavailable().is_some());
        assert!(cache.get(&key, || Some(key), None).is_none());
        assert_eq!(cache.inflight_len(), 0);

        // Nobody awaits this load: it still completes and fills the cache.
        let (done_tx, done_rx) = tokio::sync::oneshot::channel();
        drop(cache.load(
            key,
            None,
            Payer::Nobody,
            LoadBy::Miss,
            move |_| async move {
                let _ = done_tx.send(());
                Authentication::Rejected(TokenRejection::TokenExpired)
            },
        ));
        done_rx.await.unwrap();
        while cache.inflight_len() > 0 {
            tokio::task::yield_now().await;
        }
        let remembered = cache.get(&key, || Some(key), None).unwrap().verdict;
        assert_eq!(remembered.rejection(), Some(TokenRejection::TokenExpired));
    }

    #[cfg(feature = "testing")]
    #[tokio::test]
    async fn a_load_finding_the_entry_leaves_its_refresh_to_the_next_hit() {
        let cache = cache();
        let key = TokenKey::of("k");
        cache.fill(key, &user(1), cache.generation());
        // Past the refresh age (45 s of the default 60 s TTL).
        cache.entries.clock.advance(Duration::from_secs(46));
        // A load that finds the entry (a request that raced the miss) claims nothing...
        let found = cache.load(key, None, Payer::Nobody, LoadBy::Miss, |_| async {
            user(1)
        });
        assert!(found.await.verdict.user().is_some());
        // ...so the next hit still starts the one refresh, and only that hit.
        assert!(cache.get(&key, || Some(key), None).unwrap().refresh);
        assert!(!cache.get(&key, || Some(key), None).unwrap().refresh);
    }

    #[tokio::test]
    async fn only_unknown_tokens_are_paid_for() {
        let cache = cache();
        let (known, unknown) = (TokenKey::of("known"), TokenKey::of("unknown"));
        cache.fill(known, &user(1), cache.generation());
        let stranger = || Payer::Request(None);

        let paid_by = |payer: Payer| async move {
            match payer {
                Payer::Nobody => user(1),
                _ => Authentication::Unavailable(Error::new(Kind::Overloaded)),
            }
        };
        // Too old for a `max_age` route, but id6's word: not a stranger's guess to charge.
        let again = cache.load(
            known,
            Some(Duration::ZERO),
            stranger(),
            LoadBy::Miss,
            paid_by,
        );
        assert_eq!(again.await.verdict.user().map(|u| u.id), Some(1));
        let charged = cache.load(unknown, None, stranger(), LoadBy::Miss, paid_by);
        assert!(charged.await.verdict.unavailable().is_some());
        assert!(cache.get(&unknown, || Some(unknown), None).is_none());
    }

    #[test]
    fn invalidations_beat_fills_that_started_before_them() {
        let cache = cache();
        let (a, b, c) = (TokenKey::of("a"), TokenKey::of("b"), TokenKey::of("c"));
        let before = cache.generation();
        cache.fill(a, &user(1), before);
        cache.fill(b, &user(1), before);
        cache.fill(c, &user(2), before);
        cache.evict(Scope::User(1));
        assert!(
            cache.get(&a, || Some(a), None).is_none() && cache.get(&b, || Some(b), None).is_none()
        );
        assert!(
            cache.get(&c, || Some(c), None).is_some(),
            "another user is untouched"
        );
        // A load of user 1 that started before the invalidation does not refill...
        cache.fill(a, &user(1), before);
        assert!(cache.get(&a, || Some(a), None).is_none());
        // ...one that started after does.
        let after = cache.generation();
        cache.fill(a, &user(1), after);
        assert!(cache.get(&a, || Some(a), None).is_some());

        cache.evict(Scope::Token(a));
        cache.fill(a, &user(1), after);
        assert!(cache.get(&a, || Some(a), None).is_none());

        let now = cache.generation();
        cache.fill(
            b,
            &Authentication::Rejected(TokenRejection::InvalidToken),
            now,
        );
        cache.evict(Scope::All);
        assert!(
            cache.get(&b, || Some(b), None).is_none() && cache.get(&c, || Some(c), None).is_none()
        );
        cache.fill(c, &user(2), now);
        assert!(cache.get(&c, || Some(c), None).is_none());
    }

    /// What a session learns of evictions since its verdict: a token's old mark (from before
    /// the verdict) hides no newer eviction of its user.
    #[test]
    fn an_old_token_mark_hides_no_newer_user_eviction() {
        let cache = cache();
        let a = TokenKey::of("a");
        cache.fill(a, &user(1), cache.generation());
        cache.evict(Scope::Token(a));
        cache.fill(a, &user(1), cache.generation());
        let verdict = cache.generation();
        assert_eq!(cache.evicted_since(&a, 1, verdict), None);
        cache.evict(Scope::User(1));
        assert!(matches!(
            cache.evicted_since(&a, 1, verdict),
            Some(Scope::User(1))
        ));
        cache.evict(Scope::Token(a));
        assert!(
            matches!(cache.evicted_since(&a, 1, verdict), Some(Scope::Token(k)) if k == a),
            "a newer token eviction is the widest for this token"
        );
    }

    #[test]
    fn a_newer_revocation_evicts_the_users_other_tokens() {
        let cache = cache();
        let with = |at: u64| {
            let mut u = User::new(1, "A");
            u.invalidate_tokens_at = Some(at);
            Authentication::Authenticated(Arc::new(u))
        };
        let (a, b, c) = (TokenKey::of("a"), TokenKey::of("b"), TokenKey::of("c"));
        cache.fill(a, &with(100), 0);
        cache.fill(b, &with(100), 0);
        assert!(
            cache.get(&a, || Some(a), None).is_some() && cache.get(&b, || Some(b), None).is_some()
        );
        cache.fill(c, &with(200), 0);
        assert!(
            cache.get(&a, || Some(a), None).is_none() && cache.get(&b, || Some(b), None).is_none()
        );
        assert!(cache.get(&c, || Some(c), None).is_some());
        // An answer for `a` already in flight when `c` showed the revocation: not stored.
        cache.fill(a, &with(200), 0);
        assert!(
            cache.get(&a, || Some(a), None).is_none(),
            "an in-flight answer undid the revocation"
        );
        // Nor, whenever it started, an answer from before the known revocation.
        cache.fill(b, &with(100), cache.generation());
        assert!(
            cache.get(&b, || Some(b), None).is_none(),
            "an older answer was stored"
        );
        cache.fill(b, &with(200), cache.generation());
        assert!(cache.get(&b, || Some(b), None).is_some());
    }

    #[test]
    fn invalidation_marks_stay_bounded_and_still_protect() {
        let cache = cache();
        let before = cache.generation();
        for i in 0..100_000u64 {
            let mut key = [0u8; 8];
            key.copy_from_slice(&i.to_le_bytes());
            cache.evict(Scope::Token(TokenKey::of(key)));
            cache.evict(Scope::User(i));
        }
        let (tokens, users) = cache.shared.marks.len();
        assert!(tokens <= MAX_MARKS, "{tokens} token marks kept");
        assert!(users <= MAX_MARKS, "{users} user entries kept");
        // Collapsed or not, a load that started before those invalidations stores nothing.
        let key = TokenKey::of([1, 0, 0, 0, 0, 0, 0, 0]);
        cache.fill(key, &user(1), before);
        assert!(cache.get(&key, || Some(key), None).is_none());
        cache.fill(key, &user(1), cache.generation());
        assert!(cache.get(&key, || Some(key), None).is_some());
    }
}
