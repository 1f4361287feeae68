//! The builder and the validated settings it produces.
//!
//! Every value a person or an environment can type reaches the crate through here, and
//! `validate` range-checks each one: no value accepted here can make a library panic later
//! (moka's TTL limit, `Instant` overflow, the semaphore's permit limit).

use std::borrow::Cow;
use std::ffi::OsString;
use std::fmt;
use std::ops::Deref;
use std::str::FromStr;
use std::time::Duration;

use http::HeaderValue;
use reqwest::Url;

use crate::jwt::Screen;
use crate::token::{TokenFinder, TokenLocation};
use crate::{Error, Id6};

/// A setting as people meet it: the builder's setter, and the environment variable that
/// sets it too. Config errors name both, so whichever way it was set, the fix is findable.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Setting {
    pub(crate) setter: &'static str,
    pub(crate) var: &'static str,
}

macro_rules! settings {
    ($($name:ident = $setter:literal, $var:literal;)*) => {
        /// Every setting of [`Id6Builder`], by name.
        pub(crate) mod setting {
            use super::Setting;
            // Some exist only with a feature (`redis`).
            $(#[allow(dead_code)]
            pub(crate) const $name: Setting = Setting { setter: $setter, var: $var };)*
            /// All of them, for the tests that walk every setting.
            #[cfg(test)]
            pub(crate) const ALL: &[Setting] = &[$($name),*];
        }
    };
}

settings! {
    URL = "url", "ID6_URL";
    COOKIE_NAME = "cookie_name", "ID6_COOKIE_NAME";
    CACHE_TTL = "cache_ttl", "ID6_CACHE_TTL";
    NEGATIVE_TTL = "negative_ttl", "ID6_NEGATIVE_TTL";
    MAX_CAPACITY = "max_capacity", "ID6_CACHE_CAPACITY";
    TIMEOUT = "timeout", "ID6_TIMEOUT";
    CONNECT_TIMEOUT = "connect_timeout", "ID6_CONNECT_TIMEOUT";
    QUEUE_TIMEOUT = "queue_timeout", "ID6_QUEUE_TIMEOUT";
    MAX_BACKOFF = "max_backoff", "ID6_MAX_BACKOFF";
    MAX_BODY_BYTES = "max_body_bytes", "ID6_MAX_BODY_BYTES";
    MAX_PICTURE_BYTES = "max_picture_bytes", "ID6_MAX_PICTURE_BYTES";
    TOKEN_LOCATIONS = "token_locations", "ID6_TOKEN_SOURCES";
    JWT_SECRET = "jwt_secret", "ID6_JWT_SECRET";
    TOKEN_LIFETIME = "token_lifetime", "ID6_TOKEN_LIFETIME";
    ON_UNAVAILABLE = "on_unavailable", "ID6_ON_UNAVAILABLE";
    MAX_CONCURRENT_CALLS = "max_concurrent_calls", "ID6_MAX_CONCURRENT_CALLS";
    AUTHORIZATION_URL = "authorization", "ID6_AUTHORIZATION_URL";
    AUTHORIZATION_SECRET = "authorization", "ID6_AUTHORIZATION_SECRET";
    CLEAR_DEAD_COOKIE = "clear_dead_cookie", "ID6_CLEAR_DEAD_COOKIE";
    DEAD_COOKIE_ATTRIBUTES = "dead_cookie_attributes", "ID6_DEAD_COOKIE_ATTRIBUTES";
    REDIS_URL = "redis", "ID6_REDIS_URL";
    REDIS_PREFIX = "redis_prefix", "ID6_REDIS_PREFIX";
    REDIS_TIMEOUT = "redis_timeout", "ID6_REDIS_TIMEOUT";
}

const DAY: Duration = Duration::from_secs(24 * 3600);

/// The accepted range of each bounded setting. Upper bounds sit far above any sensible
/// value and far below what would overflow a clock or a library's own limit.
mod limits {
    use super::DAY;
    use std::time::Duration;

    /// A cached answer outliving a year is a revocation never seen (moka's limit: 1000 y).
    pub(super) const TTL: Duration = Duration::from_secs(365 * DAY.as_secs());
    /// A wait on id6, a call slot or Redis: Envoy and nginx bound theirs in seconds.
    pub(super) const WAIT: Duration = Duration::from_secs(300);
    /// id6's own rate-limit window is 60 s; an hour is the longest pause worth honouring.
    pub(super) const BACKOFF_MIN: Duration = Duration::from_secs(1);
    pub(super) const BACKOFF: Duration = Duration::from_secs(3600);
    /// id6's tokens live 30 days by default; a century keeps every expiry representable.
    pub(super) const TOKEN_LIFETIME: Duration = Duration::from_secs(36_500 * DAY.as_secs());
    pub(super) const CONCURRENT_CALLS: usize = 10_000;
    pub(super) const CAPACITY: u64 = 100_000_000;
    /// A user is a few hundred bytes.
    pub(super) const BODY_BYTES: usize = 16 * 1024 * 1024;
    pub(super) const PICTURE_BYTES: u64 = 1024 * 1024 * 1024;
    /// Names, prefixes and cookie attributes: a header's worth at most.
    pub(super) const TEXT_BYTES: usize = 1024;
}

/// Settings checked once by [`Id6Builder::build`]; everything downstream trusts them.
#[derive(Debug, Clone)]
pub(crate) struct Settings {
    /// id6's API base, ending in `/`, to join endpoint paths onto.
    pub(crate) base_url: Endpoint,
    /// `{base}/user`, ready to call.
    pub(crate) user_url: Endpoint,
    /// The private `/authorize` endpoint, when the layer resolves tokens through it.
    pub(crate) authorization: Option<Authorization>,
    /// The `Set-Cookie` value that clears a dead token in the browser, when enabled.
    pub(crate) dead_cookie: Option<HeaderValue>,
    pub(crate) max_picture_bytes: u64,
    /// The local screen every token passes before it costs an id6 call.
    pub(crate) screen: Screen,
    pub(crate) on_unavailable: OnUnavailable,
    pub(crate) max_concurrent_calls: usize,
    /// How long a miss may wait for one of the `max_concurrent_calls`.
    pub(crate) queue_timeout: Duration,
    /// The longest the breaker stays open, whatever id6 or a proxy asks for.
    pub(crate) max_backoff: Duration,
    /// Redis URL, key prefix and per-operation timeout, when instances share answers.
    #[cfg(feature = "redis")]
    pub(crate) redis: Option<(String, String, Duration)>,
    pub(crate) cookie_name: Box<str>,
    /// Where to look for the token, in order.
    pub(crate) finder: TokenFinder,
    pub(crate) cache_ttl: Duration,
    pub(crate) negative_ttl: Duration,
    pub(crate) max_capacity: u64,
    pub(crate) timeout: Duration,
    pub(crate) connect_timeout: Duration,
    pub(crate) max_body_bytes: usize,
}

/// An id6 URL whose `Debug` and `Display` never show a user name or password it carries.
#[derive(Clone)]
pub(crate) struct Endpoint(Url);

impl Endpoint {
    pub(crate) fn to_url(&self) -> Url {
        self.0.clone()
    }
}

impl Deref for Endpoint {
    type Target = Url;
    fn deref(&self) -> &Url {
        &self.0
    }
}

impl fmt::Debug for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&redact_userinfo(self.0.as_str()), f)
    }
}

impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&redact_userinfo(self.0.as_str()))
    }
}

/// `scheme://***@host/..` for a URL (parsable or not) that carries userinfo; as is otherwise.
pub(crate) fn redact_userinfo(url: &str) -> Cow<'_, str> {
    let authority_start = url.find("://").map_or(0, |i| i + 3);
    let rest = &url[authority_start..];
    let authority_len = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    match rest[..authority_len].rfind('@') {
        Some(at) => Cow::Owned(format!("{}***{}", &url[..authority_start], &rest[at..])),
        None => Cow::Borrowed(url),
    }
}

/// `{authz}/authorize` and the shared secret sent raw in `Authorization`.
#[derive(Clone)]
pub(crate) struct Authorization {
    pub(crate) url: Endpoint,
    /// Marked sensitive; never printed.
    pub(crate) secret: HeaderValue,
}

impl fmt::Debug for Authorization {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Authorization")
            .field("url", &self.url)
            .field("secret", &"<redacted>")
            .finish()
    }
}

/// What a request gets when id6 cannot be asked (down, slow, rate limiting, circuit open).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum OnUnavailable {
    /// The identity is unknown: the extractors answer 503 with `Retry-After` (default).
    Reject,
    /// Treat the caller as signed out.
    Anonymous,
    /// Serve the last answer id6 gave for that token for up to this long after its TTL ran
    /// out, only while id6 is unavailable (stale-if-error, RFC 5861); otherwise reject.
    Stale(Duration),
}

impl OnUnavailable {
    /// `reject`, `anonymous` or `stale:<duration>` (e.g. `stale:10m`).
    fn parse(value: &str) -> Option<Self> {
        match value.trim() {
            "reject" => Some(OnUnavailable::Reject),
            "anonymous" => Some(OnUnavailable::Anonymous),
            other => {
                let grace = humantime::parse_duration(other.strip_prefix("stale:")?.trim()).ok()?;
                Some(OnUnavailable::Stale(grace))
            }
        }
    }
}

/// A secret held by the builder: `Debug` never shows it.
#[derive(Clone)]
struct Secret(String);

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

/// A URL held by the builder: `Debug` hides its userinfo, even when it does not parse.
#[derive(Clone)]
struct RawUrl(String);

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
    url: RawUrl,
    cookie_name: String,
    cache_ttl: Duration,
    negative_ttl: Duration,
    max_capacity: u64,
    timeout: Duration,
    connect_timeout: Option<Duration>,
    max_body_bytes: usize,
    max_picture_bytes: u64,
    authorization_url: Option<RawUrl>,
    authorization_secret: Option<Secret>,
    clear_dead_cookie: bool,
    dead_cookie_attributes: String,
    token_locations: Vec<TokenLocation>,
    jwt_secret: Option<Secret>,
    token_lifetime: Duration,
    on_unavailable: OnUnavailable,
    max_concurrent_calls: usize,
    queue_timeout: Option<Duration>,
    max_backoff: Duration,
    /// A Redis URL may carry a password: kept out of `Debug`.
    #[cfg(feature = "redis")]
    redis_url: Option<Secret>,
    #[cfg(feature = "redis")]
    redis_prefix: String,
    #[cfg(feature = "redis")]
    redis_timeout: Duration,
    /// The first setting that could not even be parsed (from the environment).
    deferred: Option<Error>,
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
            #[cfg(feature = "redis")]
            redis_url: None,
            #[cfg(feature = "redis")]
            redis_prefix: "id6:".to_owned(),
            #[cfg(feature = "redis")]
            redis_timeout: Duration::from_millis(100),
            deferred: None,
        }
    }

    /// A builder from the environment. Every setter has its variable (see the README's
    /// configuration table): `ID6_URL` (required), `ID6_COOKIE_NAME`, `ID6_CACHE_TTL`,
    /// `ID6_NEGATIVE_TTL`, `ID6_CACHE_CAPACITY`, `ID6_TIMEOUT`, `ID6_CONNECT_TIMEOUT`,
    /// `ID6_QUEUE_TIMEOUT`, `ID6_MAX_BACKOFF`, `ID6_MAX_BODY_BYTES`, `ID6_MAX_PICTURE_BYTES`,
    /// `ID6_TOKEN_SOURCES` (`cookie`, `bearer` or both, comma-separated, in order),
    /// `ID6_JWT_SECRET`, `ID6_TOKEN_LIFETIME`, `ID6_ON_UNAVAILABLE`,
    /// `ID6_MAX_CONCURRENT_CALLS`, `ID6_AUTHORIZATION_URL` + `ID6_AUTHORIZATION_SECRET`,
    /// `ID6_CLEAR_DEAD_COOKIE`, `ID6_DEAD_COOKIE_ATTRIBUTES`, and with feature `redis`
    /// `ID6_REDIS_URL`, `ID6_REDIS_PREFIX`, `ID6_REDIS_TIMEOUT`.
    ///
    /// Durations read like `60s`, `1500ms` or `5m`. A missing, unreadable (not UTF-8) or
    /// out-of-range variable is reported by [`build`](Self::build), naming the variable.
    /// Setters called afterwards override what the environment said.
    pub fn from_env() -> Self {
        Self::from_lookup(|name| std::env::var_os(name))
    }

    /// [`from_env`](Self::from_env) over any lookup, so tests need not touch the process
    /// environment.
    pub(crate) fn from_lookup(lookup: impl Fn(&str) -> Option<OsString>) -> Self {
        use setting::*;
        let mut env = Env {
            lookup,
            first_error: None,
        };
        let mut b = Id6Builder::new(String::new());
        match env.text(URL) {
            Some(url) => b.url = RawUrl(url),
            None if env.first_error.is_none() => env.fail(URL, "is not set"),
            None => {}
        }
        if let Some(name) = env.text(COOKIE_NAME) {
            b.cookie_name = name;
        }
        if let Some(d) = env.duration(CACHE_TTL) {
            b.cache_ttl = d;
        }
        if let Some(d) = env.duration(NEGATIVE_TTL) {
            b.negative_ttl = d;
        }
        if let Some(n) = env.number(MAX_CAPACITY) {
            b.max_capacity = n;
        }
        if let Some(d) = env.duration(TIMEOUT) {
            b.timeout = d;
        }
        if let Some(d) = env.duration(CONNECT_TIMEOUT) {
            b.connect_timeout = Some(d);
        }
        if let Some(d) = env.duration(QUEUE_TIMEOUT) {
            b.queue_timeout = Some(d);
        }
        if let Some(d) = env.duration(MAX_BACKOFF) {
            b.max_backoff = d;
        }
        if let Some(n) = env.number(MAX_BODY_BYTES) {
            b.max_body_bytes = n;
        }
        if let Some(n) = env.number(MAX_PICTURE_BYTES) {
            b.max_picture_bytes = n;
        }
        if let Some(value) = env.text(TOKEN_LOCATIONS) {
            let mut locations = Vec::new();
            for name in value.split(',').map(str::trim).filter(|n| !n.is_empty()) {
                match name.to_ascii_lowercase().as_str() {
                    "cookie" => locations.push(TokenLocation::Cookie),
                    "bearer" => locations.push(TokenLocation::Bearer),
                    _ => env.fail(
                        TOKEN_LOCATIONS,
                        format!("{} is neither `cookie` nor `bearer`", quoted(name)),
                    ),
                }
            }
            b.token_locations = locations;
        }
        b.jwt_secret = env.text(JWT_SECRET).map(Secret);
        if let Some(d) = env.duration(TOKEN_LIFETIME) {
            b.token_lifetime = d;
        }
        if let Some(value) = env.text(ON_UNAVAILABLE) {
            match OnUnavailable::parse(&value) {
                Some(policy) => b.on_unavailable = policy,
                None => env.fail(
                    ON_UNAVAILABLE,
                    format!(
                        "{} is not `reject`, `anonymous` or `stale:<duration>`",
                        quoted(&value)
                    ),
                ),
            }
        }
        if let Some(n) = env.number(MAX_CONCURRENT_CALLS) {
            b.max_concurrent_calls = n;
        }
        b.authorization_url = env.text(AUTHORIZATION_URL).map(RawUrl);
        b.authorization_secret = env.text(AUTHORIZATION_SECRET).map(Secret);
        if let Some(value) = env.text(CLEAR_DEAD_COOKIE) {
            match value.trim().to_ascii_lowercase().as_str() {
                "true" | "on" | "1" | "yes" => b.clear_dead_cookie = true,
                "false" | "off" | "0" | "no" => b.clear_dead_cookie = false,
                _ => env.fail(
                    CLEAR_DEAD_COOKIE,
                    format!("{} is not `on` or `off`", quoted(&value)),
                ),
            }
        }
        if let Some(attributes) = env.text(DEAD_COOKIE_ATTRIBUTES) {
            b.dead_cookie_attributes = attributes;
        }
        #[cfg(feature = "redis")]
        {
            b.redis_url = env.text(REDIS_URL).map(Secret);
            if let Some(prefix) = env.text(REDIS_PREFIX) {
                b.redis_prefix = prefix;
            }
            if let Some(d) = env.duration(REDIS_TIMEOUT) {
                b.redis_timeout = d;
            }
        }
        b.deferred = env.first_error;
        b
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
    /// instances". Starting never needs Redis to be up.
    #[cfg(feature = "redis")]
    pub fn redis(mut self, url: impl Into<String>) -> Self {
        self.redis_url = Some(Secret(url.into()));
        self
    }

    /// Prefix of every Redis key and of the invalidation channel (default `id6:`).
    #[cfg(feature = "redis")]
    pub fn redis_prefix(mut self, prefix: impl Into<String>) -> Self {
        self.redis_prefix = prefix.into();
        self
    }

    /// Bound on one Redis operation (default 100 ms, at most 5 minutes); past it, the layer carries on without.
    #[cfg(feature = "redis")]
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
        let user_url = Endpoint(join(&base, "user"));
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
                let url = Endpoint(join(&base_url(AUTHORIZATION_URL, &url.0)?, "authorize"));
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
        #[cfg(feature = "redis")]
        let redis = match self.redis_url {
            Some(Secret(url)) => {
                if self.redis_prefix.len() > limits::TEXT_BYTES {
                    return Err(Error::config(REDIS_PREFIX, "must be at most 1024 bytes"));
                }
                let timeout = between(
                    REDIS_TIMEOUT,
                    self.redis_timeout,
                    Duration::ZERO,
                    limits::WAIT,
                )?;
                Some((url, self.redis_prefix, timeout))
            }
            None => None,
        };
        Ok(Settings {
            base_url: Endpoint(base),
            user_url,
            authorization,
            dead_cookie,
            max_picture_bytes,
            screen,
            on_unavailable: self.on_unavailable,
            max_concurrent_calls,
            queue_timeout,
            max_backoff,
            #[cfg(feature = "redis")]
            redis,
            finder: TokenFinder::new(&self.cookie_name, &locations),
            cookie_name: self.cookie_name.into_boxed_str(),
            cache_ttl,
            negative_ttl,
            max_capacity,
            timeout,
            connect_timeout,
            max_body_bytes,
        })
    }
}

/// Reads settings from environment variables, remembering the first that is unusable.
struct Env<F> {
    lookup: F,
    first_error: Option<Error>,
}

impl<F: Fn(&str) -> Option<OsString>> Env<F> {
    fn fail(&mut self, setting: Setting, reason: impl Into<String>) {
        self.first_error
            .get_or_insert_with(|| Error::config(setting, reason));
    }

    /// The variable's text; a value that is not UTF-8 is an error, never silently ignored.
    fn text(&mut self, setting: Setting) -> Option<String> {
        match (self.lookup)(setting.var)?.into_string() {
            Ok(text) => Some(text),
            Err(_) => {
                self.fail(setting, "is not valid UTF-8");
                None
            }
        }
    }

    fn duration(&mut self, setting: Setting) -> Option<Duration> {
        let value = self.text(setting)?;
        match humantime::parse_duration(value.trim()) {
            Ok(d) => Some(d),
            Err(_) => {
                self.fail(
                    setting,
                    format!(
                        "{} is not a duration like `60s` or `1500ms`",
                        quoted(&value)
                    ),
                );
                None
            }
        }
    }

    fn number<T: FromStr>(&mut self, setting: Setting) -> Option<T> {
        let value = self.text(setting)?;
        match value.trim().parse() {
            Ok(n) => Some(n),
            Err(_) => {
                self.fail(
                    setting,
                    format!("{} is not a whole number in range", quoted(&value)),
                );
                None
            }
        }
    }
}

/// A typed value as an error message quotes it: at most 64 characters, so that a pasted
/// blob does not become a log line of its own.
fn quoted(value: &str) -> String {
    match value.char_indices().nth(64) {
        Some((end, _)) => format!("`{}…`", &value[..end]),
        None => format!("`{value}`"),
    }
}

/// `value` when `min < value <= max` (a zero is never a usable wait or TTL).
fn between(
    setting: Setting,
    value: Duration,
    min: Duration,
    max: Duration,
) -> Result<Duration, Error> {
    if value.is_zero() {
        return Err(Error::config(setting, "must be more than zero"));
    }
    if value < min || value > max {
        return Err(Error::config(
            setting,
            format!(
                "{} is out of range: between {} and {}",
                humantime::format_duration(value),
                human(min.max(Duration::from_millis(1))),
                human(max)
            ),
        ));
    }
    Ok(value)
}

/// A limit as people write it (`365d`, not humantime's `11months 30days 3h 50m 24s`).
fn human(limit: Duration) -> String {
    let secs = limit.as_secs();
    match secs {
        _ if limit.subsec_nanos() != 0 || secs == 0 => {
            humantime::format_duration(limit).to_string()
        }
        _ if secs.is_multiple_of(DAY.as_secs()) => format!("{}d", secs / DAY.as_secs()),
        _ if secs.is_multiple_of(3600) => format!("{}h", secs / 3600),
        _ if secs.is_multiple_of(60) => format!("{}m", secs / 60),
        _ => format!("{secs}s"),
    }
}

/// `value` when `1 <= value <= max`.
fn count<T: PartialOrd + From<u8> + fmt::Display + Copy>(
    setting: Setting,
    value: T,
    max: T,
) -> Result<T, Error> {
    if value < T::from(1) {
        return Err(Error::config(setting, "must be more than zero"));
    }
    if value > max {
        return Err(Error::config(
            setting,
            format!("{value} is more than {max}"),
        ));
    }
    Ok(value)
}

/// An id6 base URL, which may carry a path such as `/api`, normalised to end in `/`.
fn base_url(setting: Setting, base: &str) -> Result<Url, Error> {
    let shown = quoted(&redact_userinfo(base));
    let mut url = Url::parse(base.trim())
        .map_err(|e| Error::config(setting, format!("{shown} is not a URL: {e}")))?;
    if !matches!(url.scheme(), "http" | "https") || url.host().is_none() {
        return Err(Error::config(
            setting,
            format!("{shown} is not an http(s) URL"),
        ));
    }
    if url.query().is_some() || url.fragment().is_some() {
        return Err(Error::config(
            setting,
            "must not have a query or a fragment",
        ));
    }
    let path = format!("{}/", url.path().trim_end_matches('/'));
    url.set_path(&path);
    Ok(url)
}

/// `{base}{path}`; `base` ends in `/` and `path` is a fixed relative path of id6's API.
pub(crate) fn join(base: &Url, path: &str) -> Url {
    let mut url = base.clone();
    let joined = format!("{}{path}", base.path());
    url.set_path(&joined);
    url
}

/// RFC 6265 cookie-name characters, minus the separators a config would only get wrong.
fn is_cookie_name_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.')
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn env(vars: &[(&str, &str)]) -> Id6Builder {
        let vars: Vec<(&str, OsString)> = vars.iter().map(|&(k, v)| (k, v.into())).collect();
        env_os(&vars)
    }

    fn env_os(vars: &[(&str, OsString)]) -> Id6Builder {
        let map: HashMap<String, OsString> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.clone()))
            .collect();
        Id6Builder::from_lookup(move |name| map.get(name).cloned())
    }

    #[test]
    fn user_url_keeps_the_api_prefix() {
        let cases = [
            (
                "http://127.0.0.1:8000/api",
                "http://127.0.0.1:8000/api/user",
            ),
            (
                "http://127.0.0.1:8000/api/",
                "http://127.0.0.1:8000/api/user",
            ),
            ("https://id6.example.com", "https://id6.example.com/user"),
            ("http://localhost:3001/", "http://localhost:3001/user"),
        ];
        for (base, want) in cases {
            let user = join(&base_url(setting::URL, base).unwrap(), "user");
            assert_eq!(user.as_str(), want, "{base}");
        }
    }

    #[test]
    fn bad_settings_name_themselves() {
        let cases: [(Id6Builder, &str); 8] = [
            (Id6Builder::new("not a url"), "url"),
            (Id6Builder::new("ftp://host/api"), "url"),
            (Id6Builder::new("http://h/api?x=1"), "url"),
            (
                Id6Builder::new("http://h").cache_ttl(Duration::ZERO),
                "cache_ttl",
            ),
            (
                Id6Builder::new("http://h").negative_ttl(Duration::ZERO),
                "negative_ttl",
            ),
            (
                Id6Builder::new("http://h").timeout(Duration::ZERO),
                "timeout",
            ),
            (Id6Builder::new("http://h").max_capacity(0), "max_capacity"),
            (
                Id6Builder::new("http://h").cookie_name("a b;"),
                "cookie_name",
            ),
        ];
        for (builder, setting) in cases {
            let err = builder.validate().unwrap_err();
            assert!(err.is_config());
            assert_eq!(err.setting(), Some(setting), "{err}");
            assert!(err.to_string().contains(setting), "{err}");
        }
    }

    #[test]
    fn environment_is_read_and_checked() {
        let s = env(&[
            ("ID6_URL", "http://127.0.0.1:9/api"),
            ("ID6_COOKIE_NAME", "sid"),
            ("ID6_CACHE_TTL", "90s"),
            ("ID6_NEGATIVE_TTL", "1500ms"),
            ("ID6_CACHE_CAPACITY", "42"),
            ("ID6_TIMEOUT", "2s"),
        ])
        .validate()
        .unwrap();
        assert_eq!(s.user_url.as_str(), "http://127.0.0.1:9/api/user");
        assert_eq!(&*s.cookie_name, "sid");
        assert_eq!(s.cache_ttl, Duration::from_secs(90));
        assert_eq!(s.negative_ttl, Duration::from_millis(1500));
        assert_eq!(s.max_capacity, 42);
        assert_eq!(s.timeout, Duration::from_secs(2));
        assert_eq!(s.connect_timeout, Duration::from_secs(2));
        assert!(s.authorization.is_none());

        let both = env(&[
            ("ID6_URL", "http://h"),
            ("ID6_TOKEN_SOURCES", "bearer, cookie"),
        ]);
        assert!(both.validate().is_ok());
        let bad = env(&[
            ("ID6_URL", "http://h"),
            ("ID6_TOKEN_SOURCES", "cookie,header"),
        ]);
        assert_eq!(
            bad.validate().unwrap_err().variable(),
            Some("ID6_TOKEN_SOURCES")
        );
        let policy = |v: &str| {
            env(&[("ID6_URL", "http://h"), ("ID6_ON_UNAVAILABLE", v)])
                .validate()
                .map(|s| s.on_unavailable)
        };
        assert_eq!(policy("reject").unwrap(), OnUnavailable::Reject);
        assert_eq!(policy("anonymous").unwrap(), OnUnavailable::Anonymous);
        assert_eq!(
            policy("stale:10m").unwrap(),
            OnUnavailable::Stale(Duration::from_secs(600))
        );
        for bad in ["stale", "stale:0s", "stale:soon", "maybe"] {
            assert!(
                policy(bad)
                    .unwrap_err()
                    .to_string()
                    .contains("on_unavailable (ID6_ON_UNAVAILABLE)")
                    || policy(bad).unwrap_err().variable() == Some("ID6_ON_UNAVAILABLE"),
                "{bad}"
            );
        }
        let s = env(&[
            ("ID6_URL", "http://h"),
            ("ID6_MAX_CONCURRENT_CALLS", "4"),
            ("ID6_JWT_SECRET", "k"),
        ])
        .validate()
        .unwrap();
        assert_eq!(s.max_concurrent_calls, 4);
        assert!(!format!("{s:?}").contains("\"k\""));
        let twice = Id6Builder::new("http://h").token_locations([TokenLocation::Cookie; 2]);
        assert_eq!(
            twice.validate().unwrap_err().setting(),
            Some("token_locations")
        );
        let none = Id6Builder::new("http://h").token_locations([]);
        assert_eq!(
            none.validate().unwrap_err().setting(),
            Some("token_locations")
        );

        let s = env(&[
            ("ID6_URL", "http://h/api"),
            ("ID6_AUTHORIZATION_URL", "http://h:3030"),
            ("ID6_AUTHORIZATION_SECRET", "s3cret"),
        ])
        .validate()
        .unwrap();
        let authz = s.authorization.unwrap();
        assert_eq!(authz.url.as_str(), "http://h:3030/authorize");
        assert!(authz.secret.is_sensitive());
        assert!(!format!("{authz:?}").contains("s3cret"));
        let half = env(&[
            ("ID6_URL", "http://h"),
            ("ID6_AUTHORIZATION_URL", "http://h:3030"),
        ]);
        assert!(!format!("{half:?}").contains("s3cret"));
        assert_eq!(
            half.validate().unwrap_err().variable(),
            Some("ID6_AUTHORIZATION_SECRET")
        );
        let builder = Id6Builder::new("http://h").authorization("http://h:3030", "s3cret");
        assert!(!format!("{builder:?}").contains("s3cret"));
        #[cfg(feature = "redis")]
        {
            let builder = Id6Builder::new("http://h").redis("redis://:s3cret@127.0.0.1:6379");
            assert!(!format!("{builder:?}").contains("s3cret"));
        }

        let missing = env(&[]).validate().unwrap_err();
        assert_eq!(missing.variable(), Some("ID6_URL"));
        let bad = env(&[("ID6_URL", "http://h"), ("ID6_CACHE_TTL", "soon")])
            .validate()
            .unwrap_err();
        assert_eq!(bad.variable(), Some("ID6_CACHE_TTL"));
        assert!(bad.to_string().contains("`soon`"));
        let bad = env(&[("ID6_URL", "http://h"), ("ID6_CACHE_CAPACITY", "-1")])
            .validate()
            .unwrap_err();
        assert_eq!(bad.variable(), Some("ID6_CACHE_CAPACITY"));
        // A setter after from_env overrides the environment.
        let s = env(&[("ID6_URL", "http://h"), ("ID6_TIMEOUT", "9s")])
            .timeout(Duration::from_secs(1))
            .validate()
            .unwrap();
        assert_eq!(s.timeout, Duration::from_secs(1));
    }

    /// What each setting needs beside it to be checked at all.
    fn companions(setting: Setting) -> Vec<(&'static str, OsString)> {
        let mut vars = vec![("ID6_URL", OsString::from("http://127.0.0.1:9/api"))];
        match setting.var {
            "ID6_URL" => vars.clear(),
            "ID6_AUTHORIZATION_URL" => vars.push(("ID6_AUTHORIZATION_SECRET", "s3cret".into())),
            "ID6_AUTHORIZATION_SECRET" => {
                vars.push(("ID6_AUTHORIZATION_URL", "http://127.0.0.1:9".into()))
            }
            "ID6_DEAD_COOKIE_ATTRIBUTES" => vars.push(("ID6_CLEAR_DEAD_COOKIE", "on".into())),
            "ID6_REDIS_PREFIX" | "ID6_REDIS_TIMEOUT" => {
                vars.push(("ID6_REDIS_URL", "redis://127.0.0.1:9".into()))
            }
            _ => {}
        }
        vars
    }

    /// Settings whose value is free text: any UTF-8 of a sane length may be accepted.
    fn is_text(setting: Setting) -> bool {
        matches!(
            setting.var,
            "ID6_COOKIE_NAME"
                | "ID6_JWT_SECRET"
                | "ID6_AUTHORIZATION_SECRET"
                | "ID6_REDIS_URL"
                | "ID6_REDIS_PREFIX"
                | "ID6_DEAD_COOKIE_ATTRIBUTES"
        )
    }

    #[tokio::test]
    async fn every_variable_survives_zero_huge_negative_and_non_utf8_values() {
        use std::os::unix::ffi::OsStringExt;
        let huge_text = "9".repeat(100_000);
        let values: Vec<(&str, OsString)> = vec![
            ("zero", "0".into()),
            ("zero duration", "0s".into()),
            ("huge number", "18446744073709551615".into()),
            ("past moka's limit", "2000y".into()),
            ("past a clock", "300000000000y".into()),
            ("huge stale window", "stale:2000y".into()),
            ("huge text", huge_text.into()),
            ("negative number", "-1".into()),
            ("negative duration", "-5s".into()),
            ("non-UTF-8", OsString::from_vec(vec![b'6', 0xff, b's'])),
        ];
        for &setting in setting::ALL {
            if !cfg!(feature = "redis") && setting.var.starts_with("ID6_REDIS") {
                continue;
            }
            for (what, value) in &values {
                let mut vars = companions(setting);
                vars.push((setting.var, value.clone()));
                match env_os(&vars).build() {
                    Ok(_) => {
                        let numeric = !is_text(setting) && setting.var != "ID6_URL";
                        let accepted_zero =
                            setting.var == "ID6_CLEAR_DEAD_COOKIE" && *what == "zero";
                        assert!(!numeric || accepted_zero, "{} accepted {what}", setting.var);
                        assert!(*what != "non-UTF-8", "{} accepted {what}", setting.var);
                    }
                    Err(err) => {
                        assert!(err.is_config());
                        assert_eq!(err.variable(), Some(setting.var), "{what}: {err}");
                        assert_eq!(err.setting(), Some(setting.setter), "{what}: {err}");
                        let line = err.to_string();
                        assert!(
                            line.contains(setting.var) && line.contains(setting.setter),
                            "{line}"
                        );
                        assert!(!line.contains('\n') && line.len() < 300, "{line}");
                    }
                }
            }
        }
    }

    #[test]
    fn every_setter_refuses_zero_and_huge() {
        let b = || Id6Builder::new("http://h");
        let year = Duration::from_secs(365 * 24 * 3600);
        let cases: Vec<(Id6Builder, &str)> = vec![
            (b().cache_ttl(Duration::MAX), "cache_ttl"),
            (b().cache_ttl(1000 * year), "cache_ttl"),
            (b().negative_ttl(Duration::MAX), "negative_ttl"),
            (b().timeout(Duration::MAX), "timeout"),
            (b().connect_timeout(Duration::ZERO), "connect_timeout"),
            (b().connect_timeout(Duration::MAX), "connect_timeout"),
            (b().queue_timeout(Duration::ZERO), "queue_timeout"),
            (b().queue_timeout(Duration::MAX), "queue_timeout"),
            (b().max_backoff(Duration::ZERO), "max_backoff"),
            (b().max_backoff(Duration::from_millis(10)), "max_backoff"),
            (b().max_backoff(Duration::MAX), "max_backoff"),
            (b().max_capacity(u64::MAX), "max_capacity"),
            (b().max_concurrent_calls(usize::MAX), "max_concurrent_calls"),
            (b().max_body_bytes(0), "max_body_bytes"),
            (b().max_body_bytes(usize::MAX), "max_body_bytes"),
            (b().max_picture_bytes(0), "max_picture_bytes"),
            (b().max_picture_bytes(u64::MAX), "max_picture_bytes"),
            (b().token_lifetime(Duration::ZERO), "token_lifetime"),
            (b().token_lifetime(Duration::MAX), "token_lifetime"),
            (
                b().on_unavailable(OnUnavailable::Stale(Duration::MAX)),
                "on_unavailable",
            ),
            (b().cookie_name("a".repeat(5000)), "cookie_name"),
            (
                b().clear_dead_cookie(true)
                    .dead_cookie_attributes("P".repeat(5000)),
                "dead_cookie_attributes",
            ),
            (b().authorization("http://h:3030", ""), "authorization"),
            (b().jwt_secret(""), "jwt_secret"),
        ];
        for (builder, setter) in cases {
            let err = builder.validate().unwrap_err();
            assert_eq!(err.setting(), Some(setter), "{err}");
        }
    }

    #[test]
    fn userinfo_never_shows() {
        for (url, shown) in [
            ("http://u:S3CRET@host/api", "http://***@host/api"),
            ("http://u:S3CRET@host", "http://***@host"),
            (
                "https://S3CRET@host:8/a?b=c@d",
                "https://***@host:8/a?b=c@d",
            ),
            ("u:S3CRET@host/api", "***@host/api"),
            ("http://host/a@b", "http://host/a@b"),
            ("http://h:bad port@x", "http://***@x"),
        ] {
            assert_eq!(redact_userinfo(url), shown);
        }
        let builder = Id6Builder::new("http://u:S3CRET@127.0.0.1:9/api")
            .authorization("http://a:S3CRET@127.0.0.1:3030", "other");
        assert!(!format!("{builder:?}").contains("S3CRET"), "{builder:?}");
        let settings = builder.clone().validate().unwrap();
        assert!(!format!("{settings:?}").contains("S3CRET"), "{settings:?}");
        let bad = Id6Builder::new("http://u:S3CRET@host:notaport/api").validate();
        let err = bad.unwrap_err();
        assert!(!format!("{err} {err:?}").contains("S3CRET"), "{err:?}");
    }
}
