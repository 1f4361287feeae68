//! `Id6`, the shared handle: settings, HTTP client and cache behind one `Arc`.

use std::fmt;
use std::sync::Arc;

use http::HeaderMap;
use tracing::Instrument;

use std::future::Future;

use crate::cache::{AuthCache, Pending, Scope};
use crate::client::Client;
use crate::clock;
use crate::config::{Id6Builder, Settings};
use crate::telemetry::{self, Stats, Telemetry};
use crate::token::{self, Found, TokenKey, TokenLocation, UserToken};
use crate::{Authentication, Error, Id6Layer};

/// The handle to one id6 deployment: its HTTP client and the cache of its answers.
///
/// Cheap to clone (one `Arc`), so every layer, handler and task can hold its own. Build it
/// once at start-up with [`Id6::builder`] or [`Id6::from_env`]; building never contacts id6.
///
/// ```
/// # async fn run() -> Result<(), id6_tower::Error> {
/// let id6 = id6_tower::Id6::builder("http://127.0.0.1:8000/api").build()?;
/// let layer = id6.layer(); // wrap an axum Router, a tonic server, any tower service
/// # let _ = layer;
/// # Ok(())
/// # }
/// ```
#[derive(Clone)]
pub struct Id6 {
    inner: Arc<Inner>,
}

struct Inner {
    settings: Arc<Settings>,
    client: Client,
    cache: AuthCache,
    telemetry: Arc<Telemetry>,
    #[cfg(feature = "redis")]
    shared: Option<Arc<crate::shared::Shared>>,
}

/// When a load began: the cache generation and the wall clock (ms).
#[derive(Clone, Copy, Debug)]
pub(crate) struct LoadStart {
    generation: u64,
    ms: u64,
}

/// What a request's headers resolve to right away.
pub(crate) enum Lookup {
    /// No token: anonymous without asking anyone.
    NoToken,
    /// A malformed token (anonymous, never sent to id6) or a cache hit.
    Ready {
        verdict: Authentication,
        /// The token came from the cookie (so a dead one may be cleared).
        from_cookie: bool,
    },
    /// A cache miss: id6 is being asked.
    Pending { pending: Pending, from_cookie: bool },
}

impl Id6 {
    /// The end user's token in these headers, found as the layer finds it (configured
    /// places, in order); `None` when there is none or it cannot be an id6 token.
    pub fn token_from(&self, headers: &HeaderMap) -> Option<UserToken> {
        match self.inner.settings.finder.find(headers) {
            Found::Token(token) => Some(UserToken::from_found(token)),
            Found::None | Found::Malformed => None,
        }
    }

    /// Starts configuring a handle for id6's API at `url` (including `/api` when id6 runs
    /// behind its reverse proxy).
    pub fn builder(url: impl Into<String>) -> Id6Builder {
        Id6Builder::new(url)
    }

    /// A handle configured from the environment; see [`Id6Builder::from_env`].
    ///
    /// # Errors
    ///
    /// A config [`Error`] naming the variable that is missing or unreadable.
    pub fn from_env() -> Result<Id6, Error> {
        Id6Builder::from_env().build()
    }

    pub(crate) fn from_settings(settings: Settings) -> Result<Id6, Error> {
        let settings = Arc::new(settings);
        let telemetry = Arc::new(Telemetry::new());
        #[cfg(feature = "redis")]
        let shared = match &settings.redis {
            Some((url, prefix, timeout)) => Some(Arc::new(
                crate::shared::Shared::new(
                    url,
                    prefix.clone(),
                    *timeout,
                    settings.cache_ttl,
                    settings.negative_ttl,
                )
                .map_err(|e| {
                    Error::config(
                        crate::config::setting::REDIS_URL,
                        format!("not a Redis URL: {e}"),
                    )
                })?,
            )),
            None => None,
        };
        let id6 = Id6 {
            inner: Arc::new(Inner {
                client: Client::new(settings.clone(), telemetry.clone())?,
                cache: AuthCache::new(&settings, telemetry.clone()),
                settings,
                telemetry,
                #[cfg(feature = "redis")]
                shared,
            }),
        };
        // Listen to other instances' evictions from the start, when a runtime is there
        // (else from the first miss).
        #[cfg(feature = "redis")]
        id6.subscribe();
        Ok(id6)
    }

    /// The tower layer that puts an [`Authentication`] into every request.
    pub fn layer(&self) -> Id6Layer {
        Id6Layer::new(self.clone())
    }

    /// Who the request with these headers is, through the cache: the layer's own resolution,
    /// for code that does not run behind it.
    ///
    /// ```
    /// # async fn run(id6: id6_tower::Id6, request: http::Request<()>) {
    /// let who = id6.authenticate(request.headers()).await;
    /// if let Some(user) = who.user() {
    ///     println!("{} is calling", user.name);
    /// }
    /// # }
    /// ```
    pub async fn authenticate(&self, headers: &HeaderMap) -> Authentication {
        match self.lookup(headers) {
            Lookup::NoToken => Authentication::Anonymous,
            Lookup::Ready { verdict, .. } => verdict,
            Lookup::Pending { pending, .. } => pending.await,
        }
    }

    pub(crate) fn settings(&self) -> &Settings {
        &self.inner.settings
    }

    pub(crate) fn client(&self) -> &Client {
        &self.inner.client
    }

    pub(crate) fn cache(&self) -> &AuthCache {
        &self.inner.cache
    }

    #[cfg(feature = "redis")]
    fn subscribe(&self) {
        if let Some(shared) = &self.inner.shared {
            shared.subscribe(self.inner.cache.clone());
        }
    }

    /// The one way anything is evicted, whoever asks (typed calls, `invalidate_*`, a 401 on a
    /// typed call): here at once, with the refill protection, then, with Redis, the shared
    /// entries and every other instance. The returned future is that second part: typed
    /// calls await it; the synchronous API runs it in the background
    /// ([`evict_in_background`](Self::evict_in_background)).
    pub(crate) fn evict(&self, scope: Scope) -> impl Future<Output = ()> + Send + 'static {
        self.inner.cache.evict(scope);
        #[cfg(feature = "redis")]
        let shared = self.inner.shared.clone();
        async move {
            #[cfg(feature = "redis")]
            if let Some(shared) = shared {
                shared.evict(scope).await;
            }
        }
    }

    /// [`evict`](Self::evict) for callers that cannot wait: the local part now, the rest
    /// spawned (dropped without a runtime, when there is nothing to share anyway).
    pub(crate) fn evict_in_background(&self, scope: Scope) {
        let everywhere = self.evict(scope);
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(everywhere);
        }
    }

    /// Where a load stands when it begins: what [`remember`](Self::remember) needs to refuse
    /// storing an answer that an eviction made since has outdated.
    pub(crate) fn load_start(&self) -> LoadStart {
        LoadStart {
            generation: self.inner.cache.generation(),
            ms: clock::now_ms(),
        }
    }

    /// Stores what id6 said outside a miss (`Id6::user`) exactly as a miss does: locally,
    /// then in the second level.
    pub(crate) async fn remember(
        &self,
        key: TokenKey,
        verdict: &Authentication,
        started: LoadStart,
    ) {
        self.inner.cache.fill(key, verdict, started.generation);
        self.share(&key, verdict, started.ms).await;
    }

    /// The second-level part of storing an answer (nothing without Redis); a newer
    /// revocation it shows is broadcast first.
    async fn share(&self, key: &TokenKey, verdict: &Authentication, started_ms: u64) {
        #[cfg(feature = "redis")]
        if let Some(shared) = &self.inner.shared {
            if let Some(user) = verdict.user() {
                if let Some(revoked_at) = user.invalidate_tokens_at {
                    shared.note_revocation(user.id, revoked_at).await;
                }
            }
            shared.store(key, verdict, started_ms).await;
        }
        let _ = (key, verdict, started_ms);
    }

    /// The `Set-Cookie` that clears a dead token, when the builder enabled it.
    pub(crate) fn dead_cookie(&self) -> Option<&http::HeaderValue> {
        self.inner.settings.dead_cookie.as_ref()
    }

    /// Whether id6 is being called, or held back by the breaker (after a 429, until id6's
    /// window opens; after repeated connect failures or timeouts, for a short, growing
    /// interval). For health checks.
    pub fn health(&self) -> crate::Health {
        self.inner.client.health()
    }

    /// What the handle did since it was built: lookups by result, id6 calls by outcome,
    /// evictions, entries. Cheap: a few atomic loads, and moka settling its counts.
    pub fn stats(&self) -> Stats {
        #[allow(unused_mut)]
        let mut stats = self
            .inner
            .telemetry
            .snapshot(self.inner.cache.entry_count());
        #[cfg(feature = "redis")]
        if let Some(shared) = &self.inner.shared {
            stats.shared_errors = shared.errors();
        }
        stats
    }

    /// A layer for sensitive routes (payments, password changes): like
    /// [`layer`](Self::layer), but a cached user confirmed by id6 longer ago than `max_age`
    /// is asked about again first, coalesced like any miss, so that a revocation on id6 is
    /// seen within `max_age` there.
    ///
    /// ```
    /// use std::time::Duration;
    /// use axum::{routing::post, Router};
    ///
    /// # fn app(id6: id6_tower::Id6) -> Router {
    /// Router::new()
    ///     .route("/pay", post(|| async { "paid" }))
    ///     .route_layer(id6.layer_with_max_age(Duration::from_secs(30)))
    ///     .layer(id6.layer())
    /// # }
    /// ```
    pub fn layer_with_max_age(&self, max_age: std::time::Duration) -> Id6Layer {
        Id6Layer::with_max_age(self.clone(), max_age)
    }

    /// The synchronous part of a resolution: everything but waiting on id6.
    pub(crate) fn lookup(&self, headers: &HeaderMap) -> Lookup {
        self.lookup_within(headers, None)
    }

    /// [`lookup`](Self::lookup), where a cached user older than `max_age` counts as a miss.
    pub(crate) fn lookup_within(
        &self,
        headers: &HeaderMap,
        max_age: Option<std::time::Duration>,
    ) -> Lookup {
        let inner = &*self.inner;
        let Some((raw, location)) = inner.settings.finder.find_raw(headers) else {
            inner.telemetry.lookup(telemetry::Lookup::NoToken);
            return Lookup::NoToken;
        };
        let from_cookie = location == TokenLocation::Cookie;
        let refuse = |why: &str| {
            inner.telemetry.lookup(telemetry::Lookup::Malformed);
            tracing::debug!(why, "token refused locally; anonymous without asking id6");
            Lookup::Ready {
                verdict: Authentication::Anonymous,
                from_cookie,
            }
        };
        // Bound the hashing work a stranger can cause; such a value is no token anyway.
        if raw.len() > token::MAX_TOKEN_LEN {
            return refuse("too long");
        }
        let key = TokenKey::of(raw);
        if let Some(verdict) = inner.cache.get(&key, max_age) {
            let hit = match verdict {
                Authentication::Authenticated(_) => telemetry::Lookup::Hit,
                _ => telemetry::Lookup::NegativeHit,
            };
            inner.telemetry.lookup(hit);
            return Lookup::Ready {
                verdict,
                from_cookie,
            };
        }
        // Only values that pass `check` and the screen are ever stored, so a hit needs
        // neither.
        let Found::Token(token) = token::check(raw) else {
            return refuse("not cookie-octets");
        };
        if let Err(refusal) = inner.settings.screen.check(token) {
            return refuse(refusal.as_str());
        }
        inner.telemetry.lookup(telemetry::Lookup::Miss);
        let token = UserToken::from_found(token);
        let this = self.clone();
        #[cfg(feature = "redis")]
        self.subscribe();
        let pending = inner.cache.load(key, max_age, move || {
            let span = tracing::debug_span!("id6.authenticate");
            async move { this.ask(key, &token, max_age.is_some()).await }.instrument(span)
        });
        Lookup::Pending {
            pending,
            from_cookie,
        }
    }
}

impl Id6 {
    /// A miss: the shared cache first (unless the route wants a fresh answer), then id6,
    /// whose answer is shared in turn (the local fill is the cache's, when the load ends).
    async fn ask(&self, key: TokenKey, token: &UserToken, fresh: bool) -> Authentication {
        #[cfg(feature = "redis")]
        if let Some(shared) = &self.inner.shared {
            if !fresh {
                if let Some(verdict) = shared.get(&key).await {
                    return verdict;
                }
            }
        }
        let _ = fresh;
        let started_ms = clock::now_ms();
        let verdict = self.inner.client.authenticate(token).await;
        self.share(&key, &verdict, started_ms).await;
        verdict
    }
}

impl fmt::Debug for Id6 {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = &self.inner.settings;
        f.debug_struct("Id6")
            .field("user_url", &s.user_url)
            .field("cookie_name", &s.cookie_name)
            .field("cache_ttl", &s.cache_ttl)
            .field("negative_ttl", &s.negative_ttl)
            .field("max_capacity", &s.max_capacity)
            .field("timeout", &s.timeout)
            .finish_non_exhaustive()
    }
}
