//! One owner of a request's resolution: finding and screening the token, the local tiers,
//! the optional second level, the upstream call, the failure policy, and every eviction.
//!
//! A request goes down one way and comes back; nothing here calls up into [`Id6`](crate::Id6):
//!
//! ```text
//! Id6Service::call ──► Resolver::lookup(headers)
//!   TokenFinder: no token ─────────────────────────────────► Ready(Anonymous)
//!   TokenKey (Keying) ─► AuthCache::get (store): hit ──────► Ready(verdict)
//!   token::check + jwt::Screen: refused ───────────────────► Ready(Rejected)
//!   AuthCache::load: one spawned load per key ─────────────► Pending ─┐
//!     └ Resolver::ask: SecondLevel::get ─► Client::authenticate       │
//!         ─► Admission::admit (cap, breaker, then the caller's        │
//!            MissBudget, charged as the call starts) ─► id6           │
//!       SecondLevel::store ─► marks: fill the store ─► policy ────────┘
//! layer::future awaits Pending, inserts the verdict ─► inner service
//! ```
//!
//! The files, one concern each: `store` (moka tiers), `cache` (loads in flight), `marks`
//! (evictions that loads in flight cannot undo), `policy` (what waiters get when id6 gave
//! no verdict), `budget` and `caller` (who pays for a miss), `second_level` (Redis's seat),
//! `lives` (the tokens open connections watch, rechecked ahead of expiry and told of
//! evictions).
//!
//! Evictions come in through one door, [`Resolver::evict`]: the local tiers at once (with the
//! refill protection), then the second level and every other instance.

mod budget;
mod cache;
mod caller;
mod lives;
mod marks;
mod pending;
mod policy;
mod second_level;
mod store;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use http::{Extensions, HeaderMap};
use tracing::Instrument;

use budget::MissBudget;
use cache::{AuthCache, LoadBy};
pub(crate) use cache::{Fetched, Pending};
use caller::Caller;
use caller::CallerFinder;
use lives::Checked;
pub(crate) use lives::Watcher;
pub(crate) use second_level::{EvictionSink, SecondLevel, SharedCounts};

use crate::client::Client;
use crate::config::ResolverSettings;
use crate::error::TokenRejection;
use crate::error::{Error, Kind};
use crate::jwt::{self, Screen};
use crate::telemetry::{LookupOutcome, Refresh, Telemetry};
use crate::token::{self, Found, Keying, TokenFinder, TokenKey, TokenLocation, UserToken};
use crate::user::Authentication;

/// A watched token is rechecked when this part of its cached answer's TTL is left
/// (refresh-ahead): the cache never goes cold for a user with an open connection, and a
/// token revoked on id6 alone is seen within a TTL of id6's last answer.
const AHEAD_OF_EXPIRY: u32 = 10;

/// What an eviction covers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Scope {
    /// One token.
    Token(TokenKey),
    /// One token, signed out (its connections end saying `signed_out`, on every instance).
    SignedOut(TokenKey),
    /// Every cached token of a user.
    User(u64),
    /// Everything.
    All,
}

/// Who pays for an id6 call about a token, out of the miss budget. Charged when the call
/// starts, never before: a call held back by the breaker or the call cap, or answered by
/// the second level, costs nothing.
#[derive(Clone, Debug)]
pub(crate) enum Payer {
    /// Nobody: the token is id6's word already (cached, refreshed, re-asked for a
    /// `max_age` route), or no request asks (`Id6::authenticate`).
    Nobody,
    /// A request's caller; one that cannot be told is not budgeted (one warning).
    Request(Option<Caller>),
    /// A typed call's caller; the typed calls of callers that cannot be told share one
    /// budget, so that no source of tokens is unbudgeted.
    TypedCall(Option<Caller>),
}

/// What a request's headers resolve to right away.
pub(crate) enum Lookup {
    /// No token: anonymous without asking anyone.
    NoToken,
    /// A malformed token (rejected, never sent to id6) or a cache hit.
    Ready {
        verdict: Authentication,
        /// The token came from the cookie (so a dead one may be cleared).
        from_cookie: bool,
    },
    /// A cache miss: id6 is being asked.
    Pending { pending: Pending, from_cookie: bool },
}

/// When a load began: the cache generation (local refill protection) and the instant (the
/// second level is told how long ago, never a wall-clock time: instances' clocks differ).
#[derive(Clone, Copy, Debug)]
pub(crate) struct LoadStart {
    generation: u64,
    at: std::time::Instant,
}

/// The resolver: cheap to clone (one `Arc`), held by the handle.
#[derive(Clone, Debug)]
pub(crate) struct Resolver {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    settings: ResolverSettings,
    /// Where the token is, in the configured places.
    finder: TokenFinder,
    /// How tokens are named: SHA-256 with a second level, else a keyed PRF.
    keying: Keying,
    /// The local screen every token passes before it costs an id6 call.
    screen: Screen,
    /// Who is calling, for the miss budget.
    callers: CallerFinder,
    local: AuthCache,
    second: Option<Arc<dyn SecondLevel>>,
    client: Arc<Client>,
    telemetry: Arc<Telemetry>,
    budget: Option<MissBudget>,
}

impl Resolver {
    pub(crate) fn new(
        settings: ResolverSettings,
        client: Arc<Client>,
        second: Option<Arc<dyn SecondLevel>>,
        telemetry: Arc<Telemetry>,
    ) -> Self {
        let resolver = Resolver {
            inner: Arc::new(Inner {
                local: AuthCache::new(&settings, telemetry.clone()),
                budget: settings
                    .miss_limit
                    .and_then(|limit| MissBudget::new(limit, settings.clock.clone())),
                finder: TokenFinder::new(&settings.cookie_name, &settings.token_locations),
                screen: Screen::new(
                    settings
                        .jwt_secret
                        .as_ref()
                        .map(|secret| secret.0.as_bytes()),
                    settings.token_lifetime,
                    settings.clock.clone(),
                ),
                callers: CallerFinder::new(settings.trusted_proxies, settings.caller_key.clone()),
                keying: if second.is_some() {
                    Keying::shared()
                } else {
                    Keying::local()
                },
                settings,
                second,
                client,
                telemetry,
            }),
        };
        // Listen to other instances' evictions from the start, when a runtime is there
        // (else from the first miss).
        resolver.subscribe();
        resolver
    }

    pub(crate) fn settings(&self) -> &ResolverSettings {
        &self.inner.settings
    }

    /// `token`'s key in this resolver's tiers, marks and lives (see [`Keying`]).
    pub(crate) fn key_of(&self, token: &UserToken) -> TokenKey {
        self.inner.keying.key(token.expose())
    }

    /// Where this resolver looks for the token.
    pub(crate) fn finder(&self) -> &TokenFinder {
        &self.inner.finder
    }

    /// The end user's token in these headers, found as the layer finds it; `None` when there
    /// is none or it cannot be an id6 token.
    pub(crate) fn token_from(&self, headers: &HeaderMap) -> Option<UserToken> {
        match self.inner.finder.find(headers) {
            Found::Token(token) => Some(UserToken::from_found(token)),
            Found::None | Found::Malformed => None,
        }
    }

    /// The whole resolution of a request, waiting on id6 if needed; outside the layer, so
    /// with no caller to charge a miss to.
    pub(crate) async fn authenticate(&self, headers: &HeaderMap) -> Authentication {
        match self.lookup(headers, None, None) {
            Lookup::NoToken => Authentication::Anonymous,
            Lookup::Ready { verdict, .. } => verdict,
            Lookup::Pending { pending, .. } => pending.await.verdict,
        }
    }

    /// The synchronous part of a resolution: everything but waiting on id6. With a
    /// `max_age`, a cached user confirmed by id6 longer ago counts as a miss. The request's
    /// extensions say who the caller is, for the miss budget (a miss looks at them; only a
    /// new call for an unknown token is charged to that caller); without them, nothing is
    /// charged.
    pub(crate) fn lookup(
        &self,
        headers: &HeaderMap,
        extensions: Option<&Extensions>,
        max_age: Option<Duration>,
    ) -> Lookup {
        let inner = &*self.inner;
        let Some((raw, location)) = inner.finder.find_raw(headers) else {
            inner.telemetry.lookup(LookupOutcome::NoToken);
            return Lookup::NoToken;
        };
        let from_cookie = location == TokenLocation::Cookie;
        // Bound the hashing work a stranger can cause; such a value is no token anyway.
        if raw.len() > token::MAX_TOKEN_LEN {
            return self.refuse_shape(from_cookie);
        }
        // The front's key; the tiers' key (with a second level, a SHA-256) only past it.
        let hot = inner.keying.hot(raw);
        // The front holds only values that passed the shape test (keys do not collide), so
        // a hit there needs none; past it, what fails the test was never stored: refused
        // without a lookup, which keeps a refusal cheaper than a hit.
        let mut key = None;
        let mut shaped = true;
        let hit = inner.local.get(
            &hot,
            || {
                shaped = jwt::may_have_shape(raw);
                shaped.then(|| *key.insert(inner.keying.key_beside(&hot, raw)))
            },
            max_age,
        );
        // Computed past the front only (with a second level, a SHA-256).
        let key = || key.unwrap_or_else(|| inner.keying.key_beside(&hot, raw));
        if let Some(hit) = hit {
            let outcome = match hit.verdict {
                Authentication::Authenticated(_) => LookupOutcome::Hit,
                _ => LookupOutcome::NegativeHit,
            };
            inner.telemetry.lookup(outcome);
            if hit.refresh {
                self.refresh(key(), raw);
            }
            return Lookup::Ready {
                verdict: hit.verdict,
                from_cookie,
            };
        }
        if !shaped {
            return self.refuse_shape(from_cookie);
        }
        self.miss(key(), raw, from_cookie, headers, extensions, max_age)
    }

    /// A value that cannot be an id6 token (too long, or not three dot-separated parts with
    /// a signature of HS256's length): refused as the screen refuses a shape.
    #[cold]
    fn refuse_shape(&self, from_cookie: bool) -> Lookup {
        let shape = jwt::Refusal::Shape;
        self.refuse(shape.as_str(), shape.as_rejection(), from_cookie)
    }

    /// What id6 would answer for a token refused locally, without asking it.
    #[cold]
    fn refuse(&self, why: &str, verdict: TokenRejection, from_cookie: bool) -> Lookup {
        self.inner.telemetry.lookup(LookupOutcome::Malformed);
        tracing::debug!(why, "token refused locally; anonymous without asking id6");
        Lookup::Ready {
            verdict: Authentication::Rejected(verdict),
            from_cookie,
        }
    }

    /// A token the cache does not hold: screened, then asked of id6 (or joined to the call
    /// in flight). Out of line: the hit's frame stays small.
    #[inline(never)]
    fn miss(
        &self,
        key: TokenKey,
        raw: &[u8],
        from_cookie: bool,
        headers: &HeaderMap,
        extensions: Option<&Extensions>,
        max_age: Option<Duration>,
    ) -> Lookup {
        let inner = &*self.inner;
        // A load of this very token in flight (keys do not collide) was asked for a value
        // that passed `check`; with a screen that cannot change its mind (no secret, so no
        // expiry), the shape it checked holds too: join it without screening again. With a
        // secret, the token may have expired since (and a refresh or a recheck never
        // screened it): screen first, then `load` joins.
        if !inner.screen.depends_on_time() {
            if let Some(pending) = inner.local.join(&key) {
                inner.telemetry.lookup(LookupOutcome::Miss);
                return Lookup::Pending {
                    pending,
                    from_cookie,
                };
            }
        }
        // Only values that pass `check` and the screen are ever stored, so a hit needs
        // neither.
        let Found::Token(token) = token::check(raw) else {
            return self.refuse(
                "not cookie-octets",
                TokenRejection::InvalidToken,
                from_cookie,
            );
        };
        if let Err(refusal) = inner.screen.check(token) {
            return self.refuse(refusal.as_str(), refusal.as_rejection(), from_cookie);
        }
        inner.telemetry.lookup(LookupOutcome::Miss);
        let token = UserToken::from_found(token);
        self.subscribe();
        let this = self.clone();
        // Charged only for a token the cache does not know; found here, outside the cache's
        // lock (it may run the app's `caller_key`).
        let payer = match (&inner.budget, extensions) {
            (Some(_), Some(extensions)) => Payer::Request(inner.callers.find(headers, extensions)),
            _ => Payer::Nobody,
        };
        let pending = inner
            .local
            .load(key, max_age, payer, LoadBy::Miss, move |payer| {
                let span = tracing::debug_span!("id6.authenticate");
                async move { this.ask(key, &token, max_age, payer).await }.instrument(span)
            });
        Lookup::Pending {
            pending,
            from_cookie,
        }
    }

    /// A hit old enough to renew: one call to id6 in the background, unless id6's remaining
    /// budget is kept for misses (or the breaker is open, or id6 just answered without a
    /// verdict). Not the caller's miss budget: only tokens id6 vouched for are refreshed.
    /// Out of line, as a miss is.
    #[inline(never)]
    fn refresh(&self, key: TokenKey, raw: &[u8]) {
        let inner = &*self.inner;
        if !inner.client.background_allowed() {
            inner.telemetry.refresh(Refresh::Paused);
            tracing::debug!(
                "refresh ahead of expiry paused: id6 is failing or its budget is kept for misses"
            );
            return;
        }
        // Stored tokens passed `check` once: this cannot fail, but costs nothing to ask.
        let Found::Token(token) = token::check(raw) else {
            return;
        };
        let token = UserToken::from_found(token);
        let this = self.clone();
        // Another instance's refresh, shared since, renews this entry as well as id6 would.
        let younger_than = inner.settings.refresh_after;
        let started = inner.local.refresh(key, move || {
            let span = tracing::debug_span!("id6.refresh");
            async move { this.ask(key, &token, younger_than, Payer::Nobody).await }.instrument(span)
        });
        if started {
            inner.telemetry.refresh(Refresh::Started);
        }
    }

    /// A miss: the second level first, then id6, whose answer is shared in turn (the local
    /// fill is the cache's, when the load ends). A second-level answer counts only when id6
    /// gave it less than `younger_than` ago (a `max_age` route, a refresh: another instance
    /// may have asked id6 since); it is kept locally with its age, so a copy never outlives
    /// id6's answer by more than the TTL.
    async fn ask(
        &self,
        key: TokenKey,
        token: &UserToken,
        younger_than: Option<Duration>,
        payer: Payer,
    ) -> Fetched {
        if let Some(second) = &self.inner.second {
            if let Some((verdict, age)) = second.get(&key, token).await {
                // An age past the TTL is no answer to keep, nor one older than a refresh or a
                // `max_age` route asks for.
                let usable = self.inner.local.within_ttl(age)
                    && younger_than.is_none_or(|limit| age <= limit);
                if usable {
                    return Fetched { verdict, age };
                }
            }
        }
        let started = self.load_start();
        let verdict = self
            .inner
            .client
            .authenticate(token, || self.charge(&payer))
            .await;
        self.share(key, token, &verdict, started).await;
        verdict.into()
    }

    /// Stores an answer in the second level, unless an eviction (here, or broadcast by
    /// another instance) came while id6 was asked: the answer may predate it, and the second
    /// level refuses stale stores only per user (`rev:`), not per token or after a `clear`.
    async fn share(
        &self,
        key: TokenKey,
        token: &UserToken,
        verdict: &Authentication,
        started: LoadStart,
    ) {
        let Some(second) = &self.inner.second else {
            return;
        };
        if self.inner.local.generation() != started.generation {
            tracing::debug!("an eviction came while id6 was asked; not sharing its answer");
            return;
        }
        second.store(&key, token, verdict, started.at).await;
    }

    /// Spends one call of `payer`'s miss budget, as the call to id6 starts.
    pub(crate) fn charge(&self, payer: &Payer) -> Result<(), Error> {
        let Some(budget) = &self.inner.budget else {
            return Ok(());
        };
        match payer {
            Payer::Nobody => Ok(()),
            Payer::Request(caller) => budget.spend(caller.as_ref()),
            Payer::TypedCall(caller) => budget.spend_typed(caller.as_ref()),
        }
        .inspect_err(|_| {
            // A request's miss refused. A typed call is no lookup: its caller gets the error.
            if matches!(payer, Payer::Request(_)) {
                self.inner.telemetry.lookup(LookupOutcome::OverBudget)
            }
        })
    }

    /// The door a typed call passes before carrying a token to id6, as a miss does: the
    /// token `from` holds, screened (shape, JWT secret); one id6 refused a moment ago is
    /// refused again from the cache; one the cache does not know is paid for by the
    /// request's caller (found in its `headers` and `extensions`, when the call has them),
    /// one it knows as a user by nobody.
    ///
    /// # Errors
    ///
    /// No token (`not_authenticated`), or a local refusal in id6's words.
    pub(crate) fn admit_call(
        &self,
        headers: Option<&HeaderMap>,
        extensions: Option<&http::Extensions>,
        token: Option<UserToken>,
    ) -> Result<(UserToken, Payer), Error> {
        let inner = &*self.inner;
        let Some(token) = token else {
            // A value where the token would be, that no id6 token can be.
            let present = headers.is_some_and(|h| inner.finder.find_raw(h).is_some());
            return Err(Error::new(if present {
                Kind::Refused(TokenRejection::InvalidToken)
            } else {
                Kind::NoToken
            }));
        };
        if token.expose().len() > token::MAX_TOKEN_LEN {
            return Err(Error::new(Kind::Refused(TokenRejection::InvalidToken)));
        }
        let key = self.key_of(&token);
        match inner.local.peek(&key).map(|hit| hit.verdict) {
            Some(Authentication::Authenticated(_)) => return Ok((token, Payer::Nobody)),
            Some(Authentication::Rejected(why)) => {
                tracing::debug!("typed call refused: id6 refused this token a moment ago");
                return Err(Error::new(Kind::Refused(why)));
            }
            _ => {}
        }
        if let Err(refusal) = inner.screen.check(token.expose()) {
            tracing::debug!(
                why = refusal.as_str(),
                "typed call refused locally; id6 not called"
            );
            return Err(Error::new(Kind::Refused(refusal.as_rejection())));
        }
        let caller = match (&inner.budget, headers) {
            (None, _) => None,
            (Some(_), Some(headers)) => {
                let none = http::Extensions::new();
                inner.callers.find(headers, extensions.unwrap_or(&none))
            }
            (Some(_), None) => None,
        };
        Ok((token, Payer::TypedCall(caller)))
    }

    /// A watcher on the life of the token in `headers`, which id6 said is `user_id`'s when
    /// the cache stood at `generation`: for a connection that outlives its request. `None`
    /// without a token. An eviction since that answer counts as if the watch had been
    /// there: a sign-out between the verdict and the handler still ends the connection.
    pub(crate) fn watch(
        &self,
        headers: &HeaderMap,
        user_id: u64,
        generation: u64,
    ) -> Option<Watcher> {
        let Found::Token(token) = self.inner.finder.find(headers) else {
            return None;
        };
        let key = self.inner.keying.key(token);
        let local = &self.inner.local;
        let fresh_for = local.peek(&key).map_or(Duration::ZERO, |hit| hit.fresh_for);
        let ahead = local.user_ttl() / AHEAD_OF_EXPIRY;
        let first_check = self.inner.settings.clock.tokio_now() + fresh_for.saturating_sub(ahead);
        let token = || UserToken::from_found(token);
        let lives = local.lives();
        let (watcher, driver) = lives.watch(key, token, user_id, first_check);
        if let Some(driver) = driver {
            self.drive_lives(driver);
        }
        if let Some(missed) = local.evicted_since(&key, user_id, generation) {
            lives.evicted(missed);
        }
        Some(watcher)
    }

    /// Driver `driver`: the one task that rechecks watched tokens when they are due, while
    /// any is watched. It holds the resolver weakly: a dropped handle ends it; so does its
    /// runtime's shutdown, after which the next watcher starts another.
    fn drive_lives(&self, driver: u64) {
        let lives = self.inner.local.lives().clone();
        let clock = self.inner.settings.clock.clone();
        let resolver = Arc::downgrade(&self.inner);
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            tracing::warn!("no tokio runtime: watched tokens are not rechecked");
            lives.driver_ended(driver);
            return;
        };
        /// Tells the registry when the task ends, however it ends.
        struct Ended(Arc<lives::Lives>, u64);
        impl Drop for Ended {
            fn drop(&mut self) {
                self.0.driver_ended(self.1);
            }
        }
        runtime.spawn(async move {
            let _ended = Ended(lives.clone(), driver);
            loop {
                let now = clock.tokio_now();
                let Ok((due, next)) = lives.take_due(now, driver) else {
                    return;
                };
                if !due.is_empty() {
                    let Some(inner) = resolver.upgrade() else {
                        return;
                    };
                    let this = Resolver { inner };
                    for due in due {
                        let this = this.clone();
                        tokio::spawn(async move {
                            let checked = this.recheck(due.key, due.token, due.asked).await;
                            this.inner.local.lives().settle(due.key, due.life, checked);
                        });
                    }
                }
                let woken = std::pin::pin!(lives.woken());
                match next {
                    Some(at) => {
                        // On the handle's clock: a test that moves it wakes this.
                        let sleep = std::pin::pin!(clock.sleep_until(at));
                        futures_util::future::select(sleep, woken).await;
                    }
                    None => woken.await,
                }
            }
        });
    }

    /// Whether a watched token is still good: the cache's answer while it has a young one,
    /// else id6's, through the cache (joining a request's call in flight), a tenth of the
    /// TTL before the cached answer expires. Only id6's refusal ends a connection; while id6
    /// cannot answer, the connection stays and the token is asked about again after half a
    /// TTL, or later while id6's back-off says so.
    ///
    /// A recheck is background work, as a refresh ahead of expiry is: nobody waits on it, so
    /// it waits while the breaker is open, while id6 answers without a verdict, or while
    /// id6's remaining budget is kept for sign-ins. Unless a user's action `asked` for it (a
    /// `disconnect` ends the user's other sessions through it).
    async fn recheck(&self, key: TokenKey, token: UserToken, asked: bool) -> Checked {
        let ttl = self.inner.local.user_ttl();
        let ahead = ttl / AHEAD_OF_EXPIRY;
        let clock = &self.inner.settings.clock;
        // The next check: before the answer expires, and never sooner than an eighth of the
        // TTL (so that a skewed or paused clock cannot make the driver spin).
        let next =
            |fresh_for: Duration| clock.tokio_now() + fresh_for.saturating_sub(ahead).max(ttl / 8);
        let local = &self.inner.local;
        match local.peek(&key).map(|hit| (hit.verdict, hit.fresh_for)) {
            Some((Authentication::Rejected(why), _)) => return Checked::Dead(why),
            // Refreshed since (by a request, or another instance): nothing to ask.
            Some((Authentication::Authenticated(_), fresh_for)) if fresh_for > ahead => {
                return Checked::Good(next(fresh_for));
            }
            _ => {}
        }
        // Never sooner than id6's back-off allows; at the earliest an eighth of the TTL on.
        let paused = || self.inner.client.background_pause();
        if let Some(wait) = paused().filter(|_| !asked) {
            tracing::debug!(
                wait_s = wait.as_secs_f64(),
                "recheck paused: id6 is failing or its budget is kept for misses"
            );
            return Checked::Good(clock.tokio_now() + wait.max(ttl / 8));
        }
        // An answer younger than the refresh point counts; else id6 is asked (or the call in
        // flight joined), and its answer refills the cache for the user's requests too.
        // Strictly younger (`max_age` lets an answer of exactly that age through): a check
        // due at the refresh point finds the answer exactly that old, and must ask.
        let younger_than = Some((ttl - ahead).saturating_sub(Duration::from_nanos(1)));
        let this = self.clone();
        // Not a request's miss: joining a call in flight is no coalesced miss either.
        let pending = local.load(
            key,
            younger_than,
            Payer::Nobody,
            LoadBy::Recheck,
            move |payer| {
                let span = tracing::debug_span!("id6.recheck");
                async move { this.ask(key, &token, younger_than, payer).await }.instrument(span)
            },
        );
        let answer = pending.await;
        match answer.verdict {
            Authentication::Rejected(why) => Checked::Dead(why),
            Authentication::Authenticated(_) if !answer.by_policy => {
                // A second level's answer may be older than id6's own would be.
                let fresh_for = local.peek(&key).map_or(ttl, |hit| hit.fresh_for);
                Checked::Good(next(fresh_for))
            }
            // id6 could not answer: the connection stays, and the token is asked about again
            // once id6's back-off (which this failure may just have grown) allows.
            _ => Checked::Good(clock.tokio_now() + paused().unwrap_or_default().max(ttl / 2)),
        }
    }

    /// Resolves once no background work is due at the handle's clock's now: every recheck
    /// due has been made and settled, every load in flight (a refresh, a miss) has ended.
    #[cfg(feature = "testing")]
    pub(crate) async fn settled(&self) {
        let clock = &self.inner.settings.clock;
        let now = clock.tokio_now();
        let local = &self.inner.local;
        clock
            .settled(|| local.lives().idle_at(now) && local.inflight_len() == 0)
            .await;
    }

    /// Starts listening to the second level's broadcasts (once; it also asks the tier
    /// whether it answers, so that a misconfigured one says so at start).
    pub(crate) fn subscribe(&self) {
        if let Some(second) = &self.inner.second {
            second.clone().subscribe(Arc::new(self.inner.local.clone()));
        }
    }

    /// The one way anything is evicted, whoever asks (typed calls, `invalidate_*`, a 401 on a
    /// typed call, another instance's broadcast excepted): the local tiers at once, with the
    /// refill protection, then the second level and every other instance. The returned
    /// future is that second part: typed calls await it; the synchronous API runs it in the
    /// background ([`evict_in_background`](Self::evict_in_background)).
    ///
    /// Once the second level's part is done, the local tiers are evicted once more, quietly:
    /// a miss here between the two may have read the entry back from the second level before
    /// it was deleted there, and kept it under a generation the first eviction no longer
    /// guards (this instance does not apply its own broadcast).
    pub(crate) fn evict(&self, scope: Scope) -> impl Future<Output = ()> + Send + 'static {
        self.inner.local.evict(scope);
        let everywhere = self.inner.second.clone().map(|second| second.evict(scope));
        let local = self.inner.local.clone();
        async move {
            if let Some(everywhere) = everywhere {
                everywhere.await;
                local.forget(scope);
            }
        }
    }

    /// [`evict`](Self::evict) for callers that cannot wait: the local part now, the rest
    /// spawned; without a second level there is no rest, so no task (and without a runtime
    /// there is no second level to tell anyway).
    pub(crate) fn evict_in_background(&self, scope: Scope) {
        let everywhere = self.evict(scope);
        if self.inner.second.is_none() {
            return;
        }
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(everywhere);
        }
    }

    /// Where a load stands when it begins, for [`remember`](Self::remember).
    pub(crate) fn load_start(&self) -> LoadStart {
        LoadStart {
            generation: self.inner.local.generation(),
            // Real time: the second level is told how long the call took (a measured
            // duration), and Redis's expiries run on the server's clock.
            at: std::time::Instant::now(),
        }
    }

    /// Stores what id6 said outside a miss (`Id6::user`) exactly as a miss does: locally,
    /// then in the second level; an eviction since `started` wins over it in both.
    pub(crate) async fn remember(
        &self,
        token: &UserToken,
        verdict: &Authentication,
        started: LoadStart,
    ) {
        let key = self.key_of(token);
        self.inner.local.fill(key, verdict, started.generation);
        self.share(key, token, verdict, started).await;
    }

    /// Ends the connections watching `key` with id6's reason: a typed call it refused
    /// knows the reason, which the eviction that follows does not carry.
    pub(crate) fn end_watched(&self, key: &TokenKey, why: TokenRejection) {
        self.inner.local.lives().end(key, why);
    }

    /// The cache's generation now (bumped by every eviction once its entries are gone), for
    /// [`watch`](Self::watch): read before a lookup, any eviction that could still find the
    /// lookup's entry bumps it later.
    #[inline]
    pub(crate) fn generation(&self) -> u64 {
        self.inner.local.generation()
    }

    /// The user a cached token belongs to.
    pub(crate) fn user_id_of(&self, key: &TokenKey) -> Option<u64> {
        self.inner.local.user_id_of(key)
    }

    /// Verdicts in the local cache now.
    pub(crate) fn entry_count(&self) -> u64 {
        self.inner.local.entry_count()
    }

    /// How the second level is doing (`Off` without one).
    pub(crate) fn second_level_health(&self) -> crate::telemetry::SharedHealth {
        self.inner
            .second
            .as_ref()
            .map_or(crate::telemetry::SharedHealth::Off, |second| {
                second.health()
            })
    }

    /// What the second level counted since start (zeros without one).
    pub(crate) fn second_level_counts(&self) -> SharedCounts {
        self.inner
            .second
            .as_ref()
            .map(|second| second.counts())
            .unwrap_or_default()
    }
}

impl EvictionSink for AuthCache {
    fn evict(&self, scope: Scope) {
        AuthCache::evict(self, scope);
    }

    fn evict_again(&self, scope: Scope) {
        self.forget(scope);
    }

    fn holds_any(&self) -> bool {
        self.entry_count() > 0
    }
}
