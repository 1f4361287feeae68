//! `Id6`, the thin handle users hold: the output of the builder, the layer factory, the entry
//! to the typed calls (in `api.rs`), stats and health. The path of a request belongs to
//! [`resolve`](crate::resolve).

use std::fmt;
use std::sync::Arc;

use http::{HeaderMap, HeaderValue, Method, Uri};

use crate::client::Client;
#[cfg(feature = "axum")]
use crate::config::Origin;
use crate::config::{HttpSettings, Id6Builder, RedisSettings, Settings};
use crate::csrf;
use crate::error::Error;
use crate::rejection::RejectionHook;
use crate::resolve::{Resolver, SecondLevel};
use crate::stripe;
use crate::telemetry::{Stats, Telemetry};
use crate::token::UserToken;
use crate::user::Authentication;

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
    resolver: Resolver,
    client: Arc<Client>,
    telemetry: Arc<Telemetry>,
    /// For the layer and the guards: what they answer with.
    http: HttpSettings,
    /// The app's own answer to every rejection, when it has one.
    rejection_hook: Option<RejectionHook>,
    /// For the typed calls.
    max_picture_bytes: u64,
    /// Ways back to this handle, one per stripe of threads: see [`Reach`].
    reaches: Box<[Arc<Reach>]>,
}

/// What a signed-in request keeps for its `Session`: the handle's resolver (which watches
/// tokens) and the origins its CSRF check trusts. Not the handle: cloning an [`Id6`] in
/// every request would write its one reference count from every core. Each thread clones
/// its stripe's `Reach` instead (a count that only its stripe's threads write). It holds
/// nothing of the handle itself, so it keeps working after the app's last handle is gone
/// (a service that owned the only one, dropped as soon as it was called). Aligned so that
/// no two stripes' counts share a cache line.
#[repr(align(128))]
pub(crate) struct Reach {
    resolver: Resolver,
    /// For the axum `Session` extractor's CSRF check.
    #[cfg(feature = "axum")]
    trusted_origins: Arc<[Origin]>,
}

impl Reach {
    pub(crate) fn resolver(&self) -> &Resolver {
        &self.resolver
    }

    /// [`Id6::is_cross_site`], for the handle this was reached from.
    #[cfg(feature = "axum")]
    pub(crate) fn is_cross_site(&self, method: &Method, uri: &Uri, headers: &HeaderMap) -> bool {
        let finder = self.resolver.finder();
        csrf::is_cross_site(finder, &self.trusted_origins, method, uri, headers)
    }
}

impl Id6 {
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

    /// Hands each part its own settings.
    pub(crate) fn from_settings(settings: Settings) -> Result<Id6, Error> {
        let Settings {
            client,
            resolver,
            redis,
            http,
            rejection_hook,
            max_picture_bytes,
        } = settings;
        let telemetry = Arc::new(Telemetry::new());
        let client = Arc::new(Client::new(client, telemetry.clone())?);
        let second_level = second_level(redis)?;
        let resolver = Resolver::new(resolver, client.clone(), second_level, telemetry.clone());
        // Inside a runtime, the shared tier is asked at once: broadcasts are heard from the
        // start, and a Redis that cannot be reached (or refuses our password) says so now.
        if tokio::runtime::Handle::try_current().is_ok() {
            resolver.subscribe();
        }
        #[cfg(feature = "axum")]
        let trusted_origins: Arc<[Origin]> = http.trusted_origins.iter().cloned().collect();
        let reaches = (0..stripe::STRIPES)
            .map(|_| {
                Arc::new(Reach {
                    resolver: resolver.clone(),
                    #[cfg(feature = "axum")]
                    trusted_origins: trusted_origins.clone(),
                })
            })
            .collect();
        Ok(Id6 {
            inner: Arc::new(Inner {
                resolver,
                client,
                telemetry,
                http,
                rejection_hook,
                max_picture_bytes,
                reaches,
            }),
        })
    }

    /// This thread's [`Reach`], for a signed-in request to keep.
    pub(crate) fn reach(&self) -> Arc<Reach> {
        self.inner.reaches[stripe::this_thread()].clone()
    }

    /// Who the request with these headers is, through the cache: the layer's own resolution,
    /// for code that does not run behind it. Without the request's connection, its misses
    /// are not charged to any caller's miss budget.
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
        self.inner.resolver.authenticate(headers).await
    }

    /// The end user's token in these headers, found as the layer finds it (configured
    /// places, in order); `None` when there is none or it cannot be an id6 token.
    pub fn token_from(&self, headers: &HeaderMap) -> Option<UserToken> {
        self.inner.resolver.token_from(headers)
    }

    /// Whether id6 is being called, or held back by the breaker (after a 429, until id6's
    /// window opens; after repeated connect failures or timeouts, for a short, growing
    /// interval). For health checks.
    pub fn health(&self) -> crate::admission::Health {
        self.inner.client.health()
    }

    /// How the shared tier (Redis) is doing: off, starting, up, or down since when, and its
    /// topology. For readiness probes; the app serves requests whatever it says.
    pub fn shared_health(&self) -> crate::telemetry::SharedHealth {
        self.inner.resolver.second_level_health()
    }

    /// What the handle did since it was built: lookups by result, id6 calls by outcome,
    /// evictions, entries. Cheap: a few atomic loads, and moka settling its counts.
    pub fn stats(&self) -> Stats {
        let mut stats = self
            .inner
            .telemetry
            .snapshot(self.inner.resolver.entry_count());
        let shared = self.inner.resolver.second_level_counts();
        stats.redis_errors = shared.errors;
        stats.redis_unopened = shared.unopened;
        stats.redis_evictions_given_up = shared.evictions_given_up;
        stats.redis_resubscribed = shared.resubscribed;
        stats.redis_reconnected = shared.reconnected;
        if let Some(window) = self.inner.client.rate_window() {
            stats.id6_rate_limit = Some(window.limit);
            stats.id6_rate_remaining = Some(window.remaining);
        }
        stats
    }

    pub(crate) fn resolver(&self) -> &Resolver {
        &self.inner.resolver
    }

    pub(crate) fn client(&self) -> &Client {
        &self.inner.client
    }

    /// The `Set-Cookie` that clears a dead token, when the builder enabled it.
    pub(crate) fn dead_cookie(&self) -> Option<&HeaderValue> {
        self.inner.http.dead_cookie.as_ref()
    }

    /// Moves this handle's clock forward (the test kit's
    /// [`advance_clock`](crate::testing::advance_clock)).
    #[cfg(feature = "testing")]
    pub(crate) fn advance_clock(&self, by: std::time::Duration) {
        self.inner.resolver.settings().clock.advance(by);
    }

    /// Stops this handle's clock (the test kit's
    /// [`freeze_clock`](crate::testing::freeze_clock)).
    #[cfg(feature = "testing")]
    pub(crate) fn freeze_clock(&self) {
        self.inner.resolver.settings().clock.freeze();
    }

    /// Waits for the background work due now (the test kit's
    /// [`settle`](crate::testing::settle)).
    #[cfg(feature = "testing")]
    pub(crate) async fn settled(&self) {
        self.inner.resolver.settled().await;
    }

    /// Whether a request that writes (or opens a WebSocket) with the cookie's token came
    /// from another site than its own or a trusted one: the CSRF guard's and the `Session`
    /// extractor's one check.
    pub(crate) fn is_cross_site(&self, method: &Method, uri: &Uri, headers: &HeaderMap) -> bool {
        let trusted = &self.http_settings().trusted_origins;
        csrf::is_cross_site(self.resolver().finder(), trusted, method, uri, headers)
    }

    pub(crate) fn http_settings(&self) -> &HttpSettings {
        &self.inner.http
    }

    /// The app's own answer to every rejection, when the builder was given one.
    pub(crate) fn rejection_hook(&self) -> Option<&RejectionHook> {
        self.inner.rejection_hook.as_ref()
    }

    #[cfg(feature = "pictures")]
    pub(crate) fn max_picture_bytes(&self) -> u64 {
        self.inner.max_picture_bytes
    }
}

/// The second level `settings` ask for, if any.
///
/// # Errors
///
/// A Redis URL that does not parse, or one given without the `redis` feature compiled in.
// With the feature, the refusal below the `return` is unreachable.
#[allow(unreachable_code)]
fn second_level(settings: Option<RedisSettings>) -> Result<Option<Arc<dyn SecondLevel>>, Error> {
    let Some(settings) = settings else {
        return Ok(None);
    };
    #[cfg(feature = "redis")]
    return Ok(Some(Arc::new(crate::redis::Redis::new(settings)?)));
    let named = if settings.sentinels.is_some() {
        crate::config::setting::REDIS_SENTINELS
    } else if settings.cluster.is_some() {
        crate::config::setting::REDIS_CLUSTER
    } else {
        crate::config::setting::REDIS_URL
    };
    Err(Error::config(
        named,
        "needs the `redis` feature of id6-tower",
    ))
}

impl Id6Builder {
    /// Checks every setting and builds the handle. Never contacts id6.
    ///
    /// # Errors
    ///
    /// A config [`Error`] naming the first unusable setting, by its setter and its
    /// environment variable: a URL that is not `http(s)`, a zero or out-of-range duration
    /// or count, an empty or invalid cookie name, or an environment variable that could not
    /// be read.
    pub fn build(self) -> Result<Id6, Error> {
        Id6::from_settings(self.validate()?)
    }
}

impl fmt::Debug for Id6 {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The parts' settings, whose `Debug` never shows a secret.
        f.debug_struct("Id6")
            .field("client", self.inner.client.settings())
            .field("resolver", self.inner.resolver.settings())
            .field("max_picture_bytes", &self.inner.max_picture_bytes)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What a signed-in request keeps writes no count of the handle's, and holds nothing
    /// of it: the handle is freed when the app lets go of it (no cycle), while what the
    /// request kept still watches tokens.
    #[test]
    fn a_reach_writes_no_count_of_the_handle_and_outlives_it() {
        let id6 = Id6::builder("http://127.0.0.1:9").build().unwrap();
        let reaches: Vec<Arc<Reach>> = (0..100).map(|_| id6.reach()).collect();
        assert_eq!(Arc::strong_count(&id6.inner), 1);
        let handle = Arc::downgrade(&id6.inner);
        drop(id6);
        assert!(handle.upgrade().is_none(), "the handle is freed");
        assert_eq!(reaches[0].resolver().generation(), 0);
    }
}
