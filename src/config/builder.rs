//! `Id6Builder`: setters that only record, and `build`, which checks every value and hands
//! each part of the handle its own settings.

use std::fmt;
use std::time::Duration;

use http::HeaderValue;

use super::{
    base_url, between, count, is_cookie_name_byte, join, limits, redact_userinfo, setting,
    Authorization, ClientSettings, Endpoint, HttpSettings, MissLimit, OnUnavailable, RedisSettings,
    ResolverSettings, Setting, Settings,
};
use crate::clock::Clock;
use crate::csrf::Origin;
use crate::jwt::Screen;
use crate::rejection::{AuthRejection, RejectionHook};
use crate::resolve::{CallerFinder, CallerKey};

/// Whether this build can speak HTTPS on its own.
const TLS: bool = cfg!(any(feature = "rustls", feature = "native-tls"));

/// An `https` URL is refused, naming the features to enable, when no TLS can serve it.
pub(super) fn https_possible(setting: Setting, url: &reqwest::Url, tls: bool) -> Result<(), Error> {
    if url.scheme() == "https" && !tls {
        return Err(Error::config(
            setting,
            "is https, but id6-tower was built without TLS: enable its `rustls` (default) \
             or `native-tls` feature, or pass your own client (`http_client`)",
        ));
    }
    Ok(())
}
use crate::error::Error;
use crate::id6::Id6;
use crate::token::{TokenFinder, TokenLocation};

/// A secret held by the builder: `Debug` never shows it.
#[derive(Clone)]
pub(super) struct Secret(pub(super) String);

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

/// A URL held by the builder: `Debug` hides its userinfo, even when it does not parse.
#[derive(Clone)]
pub(super) struct RawUrl(pub(super) String);

impl fmt::Debug for RawUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&redact_userinfo(&self.0), f)
    }
}

/// Builds an [`Id6`] handle. Infallible until [`build`](Self::build), which reports the first
/// unusable setting by name.
///
/// ```
/// use std::time::Duration;
///
/// let id6 = id6_tower::Id6::builder("http://127.0.0.1:8000/api")
///     .cache_ttl(Duration::from_secs(60))
///     .negative_ttl(Duration::from_secs(5))
///     .max_capacity(100_000)
///     .timeout(Duration::from_secs(3))
///     .build()?;
/// # Ok::<(), id6_tower::Error>(())
/// ```
#[must_use = "a builder does nothing until `build` is called"]
#[derive(Debug, Clone)]
pub struct Id6Builder {
    pub(super) url: RawUrl,
    pub(super) cookie_name: String,
    pub(super) cache_ttl: Duration,
    pub(super) negative_ttl: Duration,
    pub(super) max_capacity: u64,
    pub(super) timeout: Duration,
    pub(super) connect_timeout: Option<Duration>,
    pub(super) max_body_bytes: usize,
    pub(super) max_picture_bytes: u64,
    pub(super) authorization_url: Option<RawUrl>,
    pub(super) authorization_secret: Option<Secret>,
    pub(super) clear_dead_cookie: bool,
    pub(super) dead_cookie_attributes: String,
    pub(super) token_locations: Vec<TokenLocation>,
    pub(super) jwt_secret: Option<Secret>,
    pub(super) token_lifetime: Duration,
    pub(super) on_unavailable: OnUnavailable,
    pub(super) max_concurrent_calls: usize,
    pub(super) queue_timeout: Option<Duration>,
    pub(super) max_backoff: Duration,
    /// The user's own HTTP client, if any.
    pub(super) http_client: Option<reqwest::Client>,
    /// A Redis URL may carry a password: kept out of `Debug`.
    pub(super) redis_url: Option<Secret>,
    pub(super) redis_prefix: String,
    pub(super) redis_timeout: Duration,
    pub(super) miss_limit: Option<MissLimit>,
    pub(super) trusted_proxies: usize,
    pub(super) caller_key: Option<CallerKey>,
    /// `None`: the default, a share of the TTL; `Some(None)`: off.
    pub(super) refresh_after: Option<Option<Duration>>,
    pub(super) login_url: Option<String>,
    pub(super) trusted_origins: Vec<String>,
    pub(super) rejection_hook: Option<RejectionHook>,
    /// The first setting that could not even be parsed (from the environment).
    pub(super) deferred: Option<Error>,
}

impl Id6Builder {
    /// Default time a user answer is trusted without asking id6 again.
    pub const DEFAULT_CACHE_TTL: Duration = Duration::from_secs(60);
    /// Default time a rejected token is remembered as anonymous.
    pub const DEFAULT_NEGATIVE_TTL: Duration = Duration::from_secs(5);
    /// Default number of tokens kept in the cache.
    pub const DEFAULT_MAX_CAPACITY: u64 = 100_000;
    /// Default bound on one call to id6, connection included.
    pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(3);
    /// Default cap on the body read from id6 (a user is a few hundred bytes).
    pub const DEFAULT_MAX_BODY_BYTES: usize = 64 * 1024;
    /// Default cap on a picture uploaded or downloaded in memory (id6 itself has none).
    pub const DEFAULT_MAX_PICTURE_BYTES: u64 = 10 * 1024 * 1024;
    /// id6's default token lifetime: 30 days after `issuedAt`.
    pub const DEFAULT_TOKEN_LIFETIME: Duration = Duration::from_secs(30 * 24 * 3600);
    /// Default cap on id6 calls in flight at once.
    pub const DEFAULT_MAX_CONCURRENT_CALLS: usize = 32;
    /// Default longest pause of id6 calls after a 429 or repeated failures: id6's own
    /// rate-limit window.
    pub const DEFAULT_MAX_BACKOFF: Duration = Duration::from_secs(60);
    /// Default attributes of the cookie that clears a dead token, as id6's own.
    pub const DEFAULT_DEAD_COOKIE_ATTRIBUTES: &'static str = "Max-Age=0; Path=/; HttpOnly";
    /// Default budget of id6 calls per caller for tokens the cache does not know: 30 a
    /// minute, under a third of id6's default 100 for the whole app, so one address alone
    /// cannot spend it all, and far above what a browser needs (one call per sign-in and
    /// per [`cache_ttl`](Self::cache_ttl)).
    pub const DEFAULT_MISS_LIMIT: MissLimit = MissLimit::new(30, Duration::from_secs(60));

    pub(crate) fn new(url: impl Into<String>) -> Self {
        Id6Builder {
            url: RawUrl(url.into()),
            cookie_name: "auth".to_owned(),
            cache_ttl: Self::DEFAULT_CACHE_TTL,
            negative_ttl: Self::DEFAULT_NEGATIVE_TTL,
            max_capacity: Self::DEFAULT_MAX_CAPACITY,
            timeout: Self::DEFAULT_TIMEOUT,
            connect_timeout: None,
            max_body_bytes: Self::DEFAULT_MAX_BODY_BYTES,
            max_picture_bytes: Self::DEFAULT_MAX_PICTURE_BYTES,
            authorization_url: None,
            authorization_secret: None,
            clear_dead_cookie: false,
            dead_cookie_attributes: Self::DEFAULT_DEAD_COOKIE_ATTRIBUTES.to_owned(),
            token_locations: vec![TokenLocation::Cookie],
            jwt_secret: None,
            token_lifetime: Self::DEFAULT_TOKEN_LIFETIME,
            on_unavailable: OnUnavailable::Reject,
            max_concurrent_calls: Self::DEFAULT_MAX_CONCURRENT_CALLS,
            queue_timeout: None,
            max_backoff: Self::DEFAULT_MAX_BACKOFF,
            http_client: None,
            redis_url: None,
            redis_prefix: "id6:".to_owned(),
            redis_timeout: Duration::from_millis(100),
            miss_limit: Some(Self::DEFAULT_MISS_LIMIT),
            trusted_proxies: 0,
            caller_key: None,
            refresh_after: None,
            login_url: None,
            trusted_origins: Vec::new(),
            rejection_hook: None,
            deferred: None,
        }
    }

    /// Name of id6's cookie, read from requests and forwarded to id6 (default `auth`).
    pub fn cookie_name(mut self, name: impl Into<String>) -> Self {
        self.cookie_name = name.into();
        self
    }

    /// How long an id6 answer naming a user is served from the cache (default 60 s, at most
    /// 365 days).
    pub fn cache_ttl(mut self, ttl: Duration) -> Self {
        self.cache_ttl = ttl;
        self
    }

    /// How long a token id6 rejected is remembered as anonymous (default 5 s, at most 365
    /// days).
    pub fn negative_ttl(mut self, ttl: Duration) -> Self {
        self.negative_ttl = ttl;
        self
    }

    /// How many tokens the cache holds at most (default 100 000, at most 10⁸), for users
    /// and for rejected tokens each.
    pub fn max_capacity(mut self, entries: u64) -> Self {
        self.max_capacity = entries;
        self
    }

    /// Bound on one whole call to id6, from connecting to the last byte (default 3 s, at
    /// most 5 minutes).
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// Bound on connecting to id6 (default: the [`timeout`](Self::timeout)).
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = Some(timeout);
        self
    }

    /// Cap on the bytes read from one id6 answer (default 64 KiB, at most 16 MiB); longer
    /// is unavailable.
    pub fn max_body_bytes(mut self, bytes: usize) -> Self {
        self.max_body_bytes = bytes;
        self
    }

    /// Where requests carry the token, in the order to look (default: the cookie only).
    /// Add [`TokenLocation::Bearer`] for `Authorization: Bearer` / gRPC `authorization`
    /// metadata. Wherever found, id6 receives the token as its cookie.
    pub fn token_locations(mut self, locations: impl IntoIterator<Item = TokenLocation>) -> Self {
        self.token_locations = locations.into_iter().collect();
        self
    }

    /// id6's JWT secret, to verify tokens' signature and age locally: a forged or expired
    /// token is then anonymous without an id6 call (id6 is still asked about the others,
    /// for revocation). Without it, only the shape of a token is checked locally.
    pub fn jwt_secret(mut self, secret: impl Into<String>) -> Self {
        self.jwt_secret = Some(Secret(secret.into()));
        self
    }

    /// How long after `issuedAt` id6 considers a token expired (default 30 days, as id6;
    /// at most 100 years); used with [`jwt_secret`](Self::jwt_secret).
    pub fn token_lifetime(mut self, lifetime: Duration) -> Self {
        self.token_lifetime = lifetime;
        self
    }

    /// What a request gets when id6 cannot be asked (default [`OnUnavailable::Reject`]; a
    /// stale window of at most 365 days).
    pub fn on_unavailable(mut self, policy: OnUnavailable) -> Self {
        self.on_unavailable = policy;
        self
    }

    /// Cap on id6 calls in flight at once (default 32, at most 10 000); beyond it, misses
    /// wait up to [`queue_timeout`](Self::queue_timeout), then resolve as id6 unavailable.
    pub fn max_concurrent_calls(mut self, calls: usize) -> Self {
        self.max_concurrent_calls = calls;
        self
    }

    /// How long a miss may wait for a free id6 call (default: the [`timeout`](Self::timeout)).
    pub fn queue_timeout(mut self, timeout: Duration) -> Self {
        self.queue_timeout = Some(timeout);
        self
    }

    /// Calls id6 through your own `reqwest::Client` (your roots, proxy, pool, or TLS stack)
    /// instead of one built here. [`timeout`](Self::timeout) still bounds every call; the
    /// connect timeout and redirect policy are your client's (id6 never redirects its API:
    /// `reqwest::redirect::Policy::none()` is advised). With it, an `https` id6 URL needs no
    /// TLS feature of this crate.
    pub fn http_client(mut self, client: reqwest::Client) -> Self {
        self.http_client = Some(client);
        self
    }

    /// The longest id6 goes uncalled after a 429 or repeated connection failures (default
    /// 60 s, id6's own window; between 1 s and 1 h). A `429` asking for a longer wait (a
    /// proxy's reset in milliseconds, a far-future date) is held to it, and so is the
    /// `Retry-After` that callers are given.
    pub fn max_backoff(mut self, max: Duration) -> Self {
        self.max_backoff = max;
        self
    }
    /// Share id6's answers between instances through Redis, and broadcast every eviction to
    /// them (feature `redis`; also `ID6_REDIS_URL`). See the crate README, "Running several
    /// instances". Starting never needs Redis to be up. Without the feature, `build()`
    /// refuses a Redis URL, saying which feature to enable.
    pub fn redis(mut self, url: impl Into<String>) -> Self {
        self.redis_url = Some(Secret(url.into()));
        self
    }

    /// Prefix of every Redis key and of the invalidation channel (default `id6:`).
    pub fn redis_prefix(mut self, prefix: impl Into<String>) -> Self {
        self.redis_prefix = prefix.into();
        self
    }

    /// Bound on one Redis operation (default 100 ms, at most 5 minutes); past it, the layer carries on without.
    pub fn redis_timeout(mut self, timeout: Duration) -> Self {
        self.redis_timeout = timeout;
        self
    }

    /// Cap on a picture given to [`Id6::update_picture`], checked before sending, and on
    /// one read whole by [`PictureDownload::bytes`](crate::PictureDownload::bytes) (default
    /// 10 MiB, at most 1 GiB).
    pub fn max_picture_bytes(mut self, bytes: u64) -> Self {
        self.max_picture_bytes = bytes;
        self
    }

    /// Resolve tokens through id6's private authorization server, `POST {url}/authorize`
    /// with `secret`, instead of the public `GET /user`. The typed calls still use the public
    /// API. A 401 from it means the secret is wrong: logged as an error, requests get 503.
    pub fn authorization(mut self, url: impl Into<String>, secret: impl Into<String>) -> Self {
        self.authorization_url = Some(RawUrl(url.into()));
        self.authorization_secret = Some(Secret(secret.into()));
        self
    }

    /// When id6 says a request's token is dead (invalid, expired, revoked), append
    /// `Set-Cookie: <cookie_name>=; Max-Age=0; Path=/; HttpOnly` to the response, as id6 does,
    /// so the browser stops sending it (default off).
    pub fn clear_dead_cookie(mut self, enabled: bool) -> Self {
        self.clear_dead_cookie = enabled;
        self
    }

    /// The attributes of that clearing cookie (default `Max-Age=0; Path=/; HttpOnly`): match
    /// the `Path`, `Domain`, `Secure`, `SameSite` id6 sets the cookie with.
    pub fn dead_cookie_attributes(mut self, attributes: impl Into<String>) -> Self {
        self.dead_cookie_attributes = attributes.into();
        self
    }

    /// A budget of id6 calls for tokens the cache does not know, per caller (default [`DEFAULT_MISS_LIMIT`](Self::DEFAULT_MISS_LIMIT): 30 at once, then one
    /// every 2 s, so up to 59 in a minute that starts with a full budget;
    /// `None` turns it off; also `ID6_MISS_LIMIT`, `30/1m` or `off`). Over it, the request
    /// resolves as id6 unavailable (503 with `Retry-After`, or per
    /// [`on_unavailable`](Self::on_unavailable)) and id6 is not called. Cache hits, and
    /// requests joining a call already in flight, spend nothing.
    ///
    /// A caller is its address: axum's `ConnectInfo<SocketAddr>` (serve with
    /// `into_make_service_with_connect_info`), tonic's `TcpConnectInfo`, or a `SocketAddr`
    /// in the request's extensions (a bare hyper server inserts its peer's); behind proxies
    /// see [`trusted_proxies`](Self::trusted_proxies), or name callers your way with
    /// [`caller_key`](Self::caller_key). IPv6 addresses count per /64. A request whose
    /// caller is unknown is not budgeted (a warning says so, once).
    ///
    /// Without a [`jwt_secret`](Self::jwt_secret) any well-formed forgery costs an id6
    /// call: the secret stops forgeries outright, this budget only limits the damage.
    pub fn miss_limit(mut self, limit: impl Into<Option<MissLimit>>) -> Self {
        self.miss_limit = limit.into();
        self
    }

    /// How many proxies in front of the app append to `X-Forwarded-For` (default 0: the
    /// connection's address is the caller; at most 16; also `ID6_TRUSTED_PROXIES`). With
    /// `n`, the caller is the `n`-th address from the right, the one the outermost trusted
    /// proxy saw: entries further left are whatever the client wrote, never trusted. Only
    /// `X-Forwarded-For` is read, never `Forwarded` (a client could send whichever header its
    /// proxies do not write); behind proxies that write `Forwarded` only, name callers with
    /// [`caller_key`](Self::caller_key).
    pub fn trusted_proxies(mut self, hops: usize) -> Self {
        self.trusted_proxies = hops;
        self
    }

    /// Names the caller of a request for the [`miss_limit`](Self::miss_limit) your own way
    /// (an API key's owner, a header your edge sets and strips from clients), from its
    /// headers and extensions; `None` falls back to the address. The first 64 characters of
    /// a name are its key.
    pub fn caller_key<F>(mut self, key: F) -> Self
    where
        F: Fn(&http::HeaderMap, &http::Extensions) -> Option<String> + Send + Sync + 'static,
    {
        self.caller_key = Some(CallerKey::new(key));
        self
    }

    /// Once a cached user is older than this, the next request is served from the cache at
    /// once and one background call to id6 renews the entry (default: three quarters of the
    /// [`cache_ttl`](Self::cache_ttl); `None` turns it off; also `ID6_REFRESH_AFTER`, a
    /// duration or `off`; must be shorter than the TTL). So a user who keeps clicking never
    /// waits on id6 after the first request. The refresh joins any call already in flight
    /// for the token, goes through the breaker and the call cap, pauses while id6's
    /// remaining rate limit is under a tenth, evicts a token id6 now rejects, and never puts
    /// back a user evicted meanwhile.
    pub fn refresh_after(mut self, after: impl Into<Option<Duration>>) -> Self {
        self.refresh_after = Some(after.into());
        self
    }

    /// id6's sign-in page, where [`Id6::require_user`] sends a browser that is not signed in
    /// (`303`; also `ID6_LOGIN_URL`): an absolute `http(s)` URL, used verbatim, so bake the
    /// way back into it if id6 should return there (`…/login?redirect=https://app/account`).
    /// Nothing from the request ever changes where the redirect points. Unset, guards
    /// answer 401 to browsers too.
    pub fn login_url(mut self, url: impl Into<String>) -> Self {
        self.login_url = Some(url.into());
        self
    }

    /// Origins (`scheme://host[:port]`) whose writes carrying the cookie pass
    /// [`Id6::csrf`] besides the request's own (also `ID6_TRUSTED_ORIGINS`,
    /// comma-separated): a front end on another host of yours, say.
    pub fn trusted_origins<I>(mut self, origins: I) -> Self
    where
        I: IntoIterator,
        I::Item: Into<String>,
    {
        self.trusted_origins = origins.into_iter().map(Into::into).collect();
        self
    }

    /// Answers every rejection of the app your way — the extractors', the guards' and the
    /// CSRF check's — in one place: `hook` gets the [`AuthRejection`] (status, id6's code,
    /// message, path, `Retry-After`) and returns the response, whose `String` body becomes
    /// the service's body. [`AuthRejection::default_response`] is the crate's own answer.
    /// (A guard's `303` to the [`login_url`](Self::login_url) is no rejection: not passed
    /// here.)
    ///
    /// ```
    /// use id6_tower::{AuthRejection, Id6};
    ///
    /// let id6 = Id6::builder("http://127.0.0.1:8000/api")
    ///     .on_rejection(|rejection: &AuthRejection| {
    ///         let mut response = rejection.default_response();
    ///         *response.body_mut() = format!("{}: {}", rejection.status(), rejection.message());
    ///         response
    ///             .headers_mut()
    ///             .insert("content-type", "text/plain".parse().unwrap());
    ///         response
    ///     })
    ///     .build()?;
    /// # Ok::<(), id6_tower::Error>(())
    /// ```
    pub fn on_rejection<F>(mut self, hook: F) -> Self
    where
        F: Fn(&AuthRejection) -> http::Response<String> + Send + Sync + 'static,
    {
        self.rejection_hook = Some(RejectionHook::new(hook));
        self
    }

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

    pub(crate) fn validate(self) -> Result<Settings, Error> {
        use setting::*;
        if let Some(error) = self.deferred {
            return Err(error);
        }
        let base = base_url(URL, &self.url.0)?;
        let own_client = self.http_client.is_some();
        let tls_for = |setting, url: &reqwest::Url| https_possible(setting, url, TLS || own_client);
        tls_for(URL, &base)?;
        let authorization = match (self.authorization_url, self.authorization_secret) {
            (None, None) => None,
            (Some(_), None) => {
                return Err(Error::config(
                    AUTHORIZATION_SECRET,
                    "is needed with ID6_AUTHORIZATION_URL",
                ))
            }
            (None, Some(_)) => {
                return Err(Error::config(
                    AUTHORIZATION_URL,
                    "is needed with ID6_AUTHORIZATION_SECRET",
                ))
            }
            (Some(url), Some(Secret(secret))) => {
                let authz = base_url(AUTHORIZATION_URL, &url.0)?;
                tls_for(AUTHORIZATION_URL, &authz)?;
                let url = Endpoint(join(&authz, "authorize"));
                let mut secret = HeaderValue::try_from(secret)
                    .ok()
                    .filter(|s| !s.is_empty())
                    .ok_or_else(|| {
                        Error::config(AUTHORIZATION_SECRET, "must be non-empty visible ASCII")
                    })?;
                secret.set_sensitive(true);
                Some(Authorization { url, secret })
            }
        };
        let valid_name = !self.cookie_name.is_empty()
            && self.cookie_name.len() <= limits::TEXT_BYTES
            && self.cookie_name.bytes().all(is_cookie_name_byte);
        if !valid_name {
            return Err(Error::config(
                COOKIE_NAME,
                "must be a cookie name of at most 1024 letters, digits, `-`, `_` or `.`",
            ));
        }
        let mut locations = Vec::new();
        for location in &self.token_locations {
            if locations.contains(location) {
                return Err(Error::config(TOKEN_LOCATIONS, "lists a place twice"));
            }
            locations.push(*location);
        }
        if locations.is_empty() {
            return Err(Error::config(
                TOKEN_LOCATIONS,
                "must name at least one place",
            ));
        }
        let dead_cookie = if self.clear_dead_cookie {
            let attributes = self.dead_cookie_attributes.trim();
            let value = HeaderValue::try_from(format!("{}=; {attributes}", self.cookie_name))
                .ok()
                .filter(|_| attributes.len() <= limits::TEXT_BYTES);
            Some(value.ok_or_else(|| {
                Error::config(
                    DEAD_COOKIE_ATTRIBUTES,
                    "must be at most 1024 bytes of visible ASCII",
                )
            })?)
        } else {
            None
        };
        let timeout = between(TIMEOUT, self.timeout, Duration::ZERO, limits::WAIT)?;
        let connect_timeout = between(
            CONNECT_TIMEOUT,
            self.connect_timeout.unwrap_or(timeout),
            Duration::ZERO,
            limits::WAIT,
        )?;
        let queue_timeout = between(
            QUEUE_TIMEOUT,
            self.queue_timeout.unwrap_or(timeout),
            Duration::ZERO,
            limits::WAIT,
        )?;
        let max_backoff = between(
            MAX_BACKOFF,
            self.max_backoff,
            limits::BACKOFF_MIN,
            limits::BACKOFF,
        )?;
        let cache_ttl = between(CACHE_TTL, self.cache_ttl, Duration::ZERO, limits::TTL)?;
        let negative_ttl = between(NEGATIVE_TTL, self.negative_ttl, Duration::ZERO, limits::TTL)?;
        if let OnUnavailable::Stale(grace) = self.on_unavailable {
            between(ON_UNAVAILABLE, grace, Duration::ZERO, limits::TTL)?;
        }
        let max_capacity = count(MAX_CAPACITY, self.max_capacity, limits::CAPACITY)?;
        let max_concurrent_calls = count(
            MAX_CONCURRENT_CALLS,
            self.max_concurrent_calls,
            limits::CONCURRENT_CALLS,
        )?;
        let max_body_bytes = count(MAX_BODY_BYTES, self.max_body_bytes, limits::BODY_BYTES)?;
        let max_picture_bytes = count(
            MAX_PICTURE_BYTES,
            self.max_picture_bytes,
            limits::PICTURE_BYTES,
        )?;
        let jwt_secret = match &self.jwt_secret {
            Some(Secret(s)) if s.is_empty() => {
                return Err(Error::config(JWT_SECRET, "must not be empty"))
            }
            Some(_) if !cfg!(feature = "jwt") => {
                return Err(Error::config(
                    JWT_SECRET,
                    "needs the `jwt` feature of id6-tower (local HS256 verification)",
                ))
            }
            Some(Secret(s)) => Some(s.as_bytes()),
            None => None,
        };
        let token_lifetime = between(
            TOKEN_LIFETIME,
            self.token_lifetime,
            Duration::ZERO,
            limits::TOKEN_LIFETIME,
        )?;
        let screen = Screen::new(jwt_secret, token_lifetime);
        let redis = match self.redis_url {
            Some(Secret(url)) => {
                // A glob character would widen `clear`'s `SCAN MATCH {prefix}t:*` to other keys.
                let globless = !self.redis_prefix.contains(['*', '?', '[', ']', '\\']);
                if self.redis_prefix.len() > limits::TEXT_BYTES || !globless {
                    return Err(Error::config(
                        REDIS_PREFIX,
                        "must be at most 1024 bytes, without `*`, `?`, `[`, `]` or `\\`",
                    ));
                }
                let timeout = between(
                    REDIS_TIMEOUT,
                    self.redis_timeout,
                    Duration::ZERO,
                    limits::WAIT,
                )?;
                Some(RedisSettings {
                    url,
                    prefix: self.redis_prefix,
                    timeout,
                    positive_ttl: cache_ttl,
                    negative_ttl,
                    max_value_bytes: max_body_bytes,
                })
            }
            None => None,
        };
        let miss_limit = match self.miss_limit {
            Some(limit) => {
                let calls = count(MISS_LIMIT, limit.calls(), limits::MISS_CALLS)?;
                let window = between(
                    MISS_LIMIT,
                    limit.window(),
                    Duration::ZERO,
                    limits::MISS_WINDOW,
                )?;
                // governor counts in whole periods of `window / calls`.
                if window < Duration::from_millis(1) * calls {
                    return Err(Error::config(
                        MISS_LIMIT,
                        "allows more than one call per millisecond: a longer window, or `off`",
                    ));
                }
                Some(limit)
            }
            None => None,
        };
        if self.trusted_proxies > limits::PROXY_HOPS {
            return Err(Error::config(
                TRUSTED_PROXIES,
                format!(
                    "{} is more than {}",
                    self.trusted_proxies,
                    limits::PROXY_HOPS
                ),
            ));
        }
        let refresh_after = match self.refresh_after {
            None => Some(cache_ttl / 4 * 3).filter(|after| !after.is_zero()),
            Some(None) => None,
            Some(Some(after)) => {
                if after >= cache_ttl {
                    return Err(Error::config(
                        REFRESH_AFTER,
                        format!(
                            "{} is not shorter than the cache TTL ({}); use `off` to disable",
                            humantime::format_duration(after),
                            humantime::format_duration(cache_ttl)
                        ),
                    ));
                }
                Some(between(REFRESH_AFTER, after, Duration::ZERO, limits::TTL)?)
            }
        };
        let login_url = match self.login_url {
            Some(url) => {
                let parsed = reqwest::Url::parse(url.trim())
                    .ok()
                    .filter(|u| matches!(u.scheme(), "http" | "https") && u.has_host())
                    .filter(|u| u.username().is_empty() && u.password().is_none())
                    .filter(|u| u.as_str().len() <= limits::TEXT_BYTES * 2);
                let value = parsed.and_then(|u| HeaderValue::try_from(u.as_str()).ok());
                Some(value.ok_or_else(|| {
                    Error::config(
                        LOGIN_URL,
                        "must be an absolute http(s) URL without user name or password, \
                         at most 2048 bytes",
                    )
                })?)
            }
            None => None,
        };
        let mut trusted_origins = Vec::new();
        for origin in &self.trusted_origins {
            match Origin::parse(origin) {
                Some(parsed) => trusted_origins.push(parsed),
                None => {
                    return Err(Error::config(
                        TRUSTED_ORIGINS,
                        format!(
                            "{} is not an origin like `https://app.example` or \
                             `http://localhost:3000`",
                            super::quoted(origin)
                        ),
                    ))
                }
            }
        }
        let http = HttpSettings {
            dead_cookie,
            login_url,
            trusted_origins: trusted_origins.into(),
            rejection_hook: self.rejection_hook,
            bearer: locations.contains(&TokenLocation::Bearer),
        };
        // One clock for the cache and the breaker, so a test moves both.
        let clock = Clock::default();
        let resolver = ResolverSettings {
            finder: TokenFinder::new(&self.cookie_name, &locations),
            screen,
            cache_ttl,
            negative_ttl,
            max_capacity,
            on_unavailable: self.on_unavailable,
            // An invalidation mark must outlive any load that started before it: a wait for a
            // call slot, the call, and with Redis up to four operations (get, revocation
            // check and eviction, store).
            mark_lifetime: timeout * 2
                + queue_timeout
                + redis.as_ref().map_or(Duration::ZERO, |r| r.timeout * 4)
                + Duration::from_secs(1),
            refresh_after,
            miss_limit,
            callers: CallerFinder::new(self.trusted_proxies, self.caller_key),
            clock: clock.clone(),
        };
        let client = ClientSettings {
            user_url: Endpoint(join(&base, "user")),
            base_url: Endpoint(base),
            authorization,
            cookie_name: self.cookie_name.into_boxed_str(),
            timeout,
            connect_timeout,
            max_body_bytes,
            max_concurrent_calls,
            queue_timeout,
            max_backoff,
            http: self.http_client,
            clock,
        };
        Ok(Settings {
            client,
            resolver,
            redis,
            http,
            max_picture_bytes,
        })
    }
}
