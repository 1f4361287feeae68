//! The builder and the validated settings it produces.

use std::fmt;
use std::time::Duration;

use http::HeaderValue;
use reqwest::Url;

use crate::jwt::Screen;
use crate::token::{TokenFinder, TokenLocation};
use crate::{Error, Id6};

/// Settings checked once by [`Id6Builder::build`]; everything downstream trusts them.
#[derive(Debug, Clone)]
pub(crate) struct Settings {
    /// id6's API base, ending in `/`, to join endpoint paths onto.
    pub(crate) base_url: Url,
    /// `{base}/user`, ready to call.
    pub(crate) user_url: Url,
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

/// `{authz}/authorize` and the shared secret sent raw in `Authorization`.
#[derive(Clone)]
pub(crate) struct Authorization {
    pub(crate) url: Url,
    /// Marked sensitive; never printed.
    pub(crate) secret: HeaderValue,
}

impl fmt::Debug for Authorization {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Authorization")
            .field("url", &self.url.as_str())
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
    url: String,
    cookie_name: String,
    cache_ttl: Duration,
    negative_ttl: Duration,
    max_capacity: u64,
    timeout: Duration,
    connect_timeout: Option<Duration>,
    max_body_bytes: usize,
    max_picture_bytes: u64,
    authorization_url: Option<String>,
    authorization_secret: Option<Secret>,
    clear_dead_cookie: bool,
    dead_cookie_attributes: String,
    token_locations: Vec<TokenLocation>,
    jwt_secret: Option<Secret>,
    token_lifetime: Duration,
    on_unavailable: OnUnavailable,
    max_concurrent_calls: usize,
    queue_timeout: Option<Duration>,
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
    /// Default cap on an uploaded picture (id6 itself has none).
    pub const DEFAULT_MAX_PICTURE_BYTES: u64 = 10 * 1024 * 1024;
    /// id6's default token lifetime: 30 days after `issuedAt`.
    pub const DEFAULT_TOKEN_LIFETIME: Duration = Duration::from_secs(30 * 24 * 3600);
    /// Default cap on id6 calls in flight at once.
    pub const DEFAULT_MAX_CONCURRENT_CALLS: usize = 32;
    /// Default attributes of the cookie that clears a dead token, as id6's own.
    pub const DEFAULT_DEAD_COOKIE_ATTRIBUTES: &'static str = "Max-Age=0; Path=/; HttpOnly";

    pub(crate) fn new(url: impl Into<String>) -> Self {
        Id6Builder {
            url: url.into(),
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
            #[cfg(feature = "redis")]
            redis_url: None,
            #[cfg(feature = "redis")]
            redis_prefix: "id6:".to_owned(),
            #[cfg(feature = "redis")]
            redis_timeout: Duration::from_millis(100),
            deferred: None,
        }
    }

    /// A builder from the environment: `ID6_URL` (required), `ID6_COOKIE_NAME`,
    /// `ID6_CACHE_TTL`, `ID6_NEGATIVE_TTL`, `ID6_CACHE_CAPACITY`, `ID6_TIMEOUT`,
    /// `ID6_TOKEN_SOURCES` (`cookie`, `bearer` or both, comma-separated, in order), and the
    /// private authorization backend `ID6_AUTHORIZATION_URL` + `ID6_AUTHORIZATION_SECRET`.
    ///
    /// Durations read like `60s`, `1500ms` or `5m`. A missing or unreadable variable is
    /// reported by [`build`](Self::build), naming the variable. Setters called afterwards
    /// override what the environment said.
    pub fn from_env() -> Self {
        Self::from_lookup(|name| std::env::var(name).ok())
    }

    /// [`from_env`](Self::from_env) over any lookup, so tests need not touch the process
    /// environment.
    pub(crate) fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> Self {
        let mut builder = Id6Builder::new(String::new());
        match lookup("ID6_URL") {
            Some(url) => builder.url = url,
            None => builder.defer(Error::config("ID6_URL", "is not set")),
        }
        if let Some(name) = lookup("ID6_COOKIE_NAME") {
            builder.cookie_name = name;
        }
        let duration = |builder: &mut Self, var: &'static str| -> Option<Duration> {
            let value = lookup(var)?;
            match humantime::parse_duration(value.trim()) {
                Ok(d) => Some(d),
                Err(_) => {
                    builder.defer(Error::config(
                        var,
                        format!("`{value}` is not a duration like `60s` or `1500ms`"),
                    ));
                    None
                }
            }
        };
        if let Some(d) = duration(&mut builder, "ID6_CACHE_TTL") {
            builder.cache_ttl = d;
        }
        if let Some(d) = duration(&mut builder, "ID6_NEGATIVE_TTL") {
            builder.negative_ttl = d;
        }
        if let Some(d) = duration(&mut builder, "ID6_TIMEOUT") {
            builder.timeout = d;
        }
        if let Some(value) = lookup("ID6_TOKEN_SOURCES") {
            let mut locations = Vec::new();
            for name in value.split(',').map(str::trim).filter(|n| !n.is_empty()) {
                match name.to_ascii_lowercase().as_str() {
                    "cookie" => locations.push(TokenLocation::Cookie),
                    "bearer" => locations.push(TokenLocation::Bearer),
                    _ => builder.defer(Error::config(
                        "ID6_TOKEN_SOURCES",
                        format!("`{name}` is neither `cookie` nor `bearer`"),
                    )),
                }
            }
            builder.token_locations = locations;
        }
        builder.jwt_secret = lookup("ID6_JWT_SECRET").map(Secret);
        if let Some(d) = duration(&mut builder, "ID6_TOKEN_LIFETIME") {
            builder.token_lifetime = d;
        }
        if let Some(value) = lookup("ID6_ON_UNAVAILABLE") {
            match OnUnavailable::parse(&value) {
                Some(policy) => builder.on_unavailable = policy,
                None => builder.defer(Error::config(
                    "ID6_ON_UNAVAILABLE",
                    format!("`{value}` is not `reject`, `anonymous` or `stale:<duration>`"),
                )),
            }
        }
        if let Some(value) = lookup("ID6_MAX_CONCURRENT_CALLS") {
            match value.trim().parse() {
                Ok(n) => builder.max_concurrent_calls = n,
                Err(_) => builder.defer(Error::config(
                    "ID6_MAX_CONCURRENT_CALLS",
                    format!("`{value}` is not a whole number"),
                )),
            }
        }
        #[cfg(feature = "redis")]
        {
            builder.redis_url = lookup("ID6_REDIS_URL").map(Secret);
        }
        builder.authorization_url = lookup("ID6_AUTHORIZATION_URL");
        builder.authorization_secret = lookup("ID6_AUTHORIZATION_SECRET").map(Secret);
        if let Some(value) = lookup("ID6_CACHE_CAPACITY") {
            match value.trim().parse() {
                Ok(n) => builder.max_capacity = n,
                Err(_) => builder.defer(Error::config(
                    "ID6_CACHE_CAPACITY",
                    format!("`{value}` is not a whole number"),
                )),
            }
        }
        builder
    }

    fn defer(&mut self, error: Error) {
        self.deferred.get_or_insert(error);
    }

    /// Name of id6's cookie, read from requests and forwarded to id6 (default `auth`).
    pub fn cookie_name(mut self, name: impl Into<String>) -> Self {
        self.cookie_name = name.into();
        self
    }

    /// How long an id6 answer naming a user is served from the cache (default 60 s).
    pub fn cache_ttl(mut self, ttl: Duration) -> Self {
        self.cache_ttl = ttl;
        self
    }

    /// How long a token id6 rejected is remembered as anonymous (default 5 s).
    pub fn negative_ttl(mut self, ttl: Duration) -> Self {
        self.negative_ttl = ttl;
        self
    }

    /// How many tokens the cache holds at most (default 100 000), for users and for
    /// rejected tokens each.
    pub fn max_capacity(mut self, entries: u64) -> Self {
        self.max_capacity = entries;
        self
    }

    /// Bound on one whole call to id6, from connecting to the last byte (default 3 s).
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// Bound on connecting to id6 (default: the [`timeout`](Self::timeout)).
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = Some(timeout);
        self
    }

    /// Cap on the bytes read from one id6 answer (default 64 KiB); longer is unavailable.
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

    /// How long after `issuedAt` id6 considers a token expired (default 30 days, as id6);
    /// used with [`jwt_secret`](Self::jwt_secret).
    pub fn token_lifetime(mut self, lifetime: Duration) -> Self {
        self.token_lifetime = lifetime;
        self
    }

    /// What a request gets when id6 cannot be asked (default [`OnUnavailable::Reject`]).
    pub fn on_unavailable(mut self, policy: OnUnavailable) -> Self {
        self.on_unavailable = policy;
        self
    }

    /// Cap on id6 calls in flight at once (default 32); beyond it, misses wait up to
    /// [`queue_timeout`](Self::queue_timeout), then resolve as id6 unavailable.
    pub fn max_concurrent_calls(mut self, calls: usize) -> Self {
        self.max_concurrent_calls = calls;
        self
    }

    /// How long a miss may wait for a free id6 call (default: the [`timeout`](Self::timeout)).
    pub fn queue_timeout(mut self, timeout: Duration) -> Self {
        self.queue_timeout = Some(timeout);
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

    /// Bound on one Redis operation (default 100 ms); past it, the layer carries on without.
    #[cfg(feature = "redis")]
    pub fn redis_timeout(mut self, timeout: Duration) -> Self {
        self.redis_timeout = timeout;
        self
    }

    /// Cap on a picture given to [`Id6::update_picture`], checked before sending
    /// (default 10 MiB).
    pub fn max_picture_bytes(mut self, bytes: u64) -> Self {
        self.max_picture_bytes = bytes;
        self
    }

    /// Resolve tokens through id6's private authorization server, `POST {url}/authorize`
    /// with `secret`, instead of the public `GET /user`. The typed calls still use the public
    /// API. A 401 from it means the secret is wrong: logged as an error, requests get 503.
    pub fn authorization(mut self, url: impl Into<String>, secret: impl Into<String>) -> Self {
        self.authorization_url = Some(url.into());
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
    /// A config [`Error`] naming the first unusable setting: a URL that is not `http(s)`, a
    /// zero TTL, timeout or capacity, an empty or invalid cookie name, or an environment
    /// variable that could not be read.
    pub fn build(self) -> Result<Id6, Error> {
        Id6::from_settings(self.validate()?)
    }

    pub(crate) fn validate(self) -> Result<Settings, Error> {
        if let Some(error) = self.deferred {
            return Err(error);
        }
        let base = base_url("url", &self.url)?;
        let user_url = join(&base, "user");
        let authorization = match (self.authorization_url, self.authorization_secret) {
            (None, None) => None,
            (Some(_), None) => {
                return Err(Error::config(
                    "ID6_AUTHORIZATION_SECRET",
                    "is needed with ID6_AUTHORIZATION_URL",
                ))
            }
            (None, Some(_)) => {
                return Err(Error::config(
                    "ID6_AUTHORIZATION_URL",
                    "is needed with ID6_AUTHORIZATION_SECRET",
                ))
            }
            (Some(url), Some(Secret(secret))) => {
                let url = join(&base_url("ID6_AUTHORIZATION_URL", &url)?, "authorize");
                let mut secret = HeaderValue::try_from(secret)
                    .ok()
                    .filter(|s| !s.is_empty())
                    .ok_or_else(|| {
                        Error::config(
                            "ID6_AUTHORIZATION_SECRET",
                            "must be non-empty visible ASCII",
                        )
                    })?;
                secret.set_sensitive(true);
                Some(Authorization { url, secret })
            }
        };
        let valid_name =
            !self.cookie_name.is_empty() && self.cookie_name.bytes().all(is_cookie_name_byte);
        if !valid_name {
            return Err(Error::config(
                "cookie_name",
                "must be a non-empty cookie name (letters, digits, `-`, `_`, `.`)",
            ));
        }
        let mut locations = Vec::new();
        for location in &self.token_locations {
            if locations.contains(location) {
                return Err(Error::config("token_locations", "lists a place twice"));
            }
            locations.push(*location);
        }
        if locations.is_empty() {
            return Err(Error::config(
                "token_locations",
                "must name at least one place",
            ));
        }
        let dead_cookie =
            if self.clear_dead_cookie {
                let value = format!(
                    "{}=; {}",
                    self.cookie_name,
                    self.dead_cookie_attributes.trim()
                );
                Some(HeaderValue::try_from(value).map_err(|_| {
                    Error::config("dead_cookie_attributes", "must be visible ASCII")
                })?)
            } else {
                None
            };
        let positive = |setting: &'static str, d: Duration| {
            if d.is_zero() {
                Err(Error::config(setting, "must be more than zero"))
            } else {
                Ok(d)
            }
        };
        let timeout = positive("timeout", self.timeout)?;
        let connect_timeout = positive("connect_timeout", self.connect_timeout.unwrap_or(timeout))?;
        if self.max_capacity == 0 {
            return Err(Error::config("max_capacity", "must be more than zero"));
        }
        if self.max_concurrent_calls == 0 {
            return Err(Error::config(
                "max_concurrent_calls",
                "must be more than zero",
            ));
        }
        if matches!(self.on_unavailable, OnUnavailable::Stale(grace) if grace.is_zero()) {
            return Err(Error::config(
                "on_unavailable",
                "a stale window must be more than zero",
            ));
        }
        let jwt_secret = match &self.jwt_secret {
            Some(Secret(s)) if s.is_empty() => {
                return Err(Error::config("ID6_JWT_SECRET", "must not be empty"))
            }
            Some(Secret(s)) => Some(s.as_bytes()),
            None => None,
        };
        let token_lifetime = positive("token_lifetime", self.token_lifetime)?;
        let screen = Screen::new(jwt_secret, token_lifetime);
        if self.max_picture_bytes == 0 {
            return Err(Error::config("max_picture_bytes", "must be more than zero"));
        }
        if self.max_body_bytes == 0 {
            return Err(Error::config("max_body_bytes", "must be more than zero"));
        }
        Ok(Settings {
            base_url: base,
            user_url,
            authorization,
            dead_cookie,
            max_picture_bytes: self.max_picture_bytes,
            screen,
            on_unavailable: self.on_unavailable,
            max_concurrent_calls: self.max_concurrent_calls,
            queue_timeout: positive("queue_timeout", self.queue_timeout.unwrap_or(timeout))?,
            #[cfg(feature = "redis")]
            redis: match self.redis_url {
                Some(Secret(url)) => Some((
                    url,
                    self.redis_prefix,
                    positive("redis_timeout", self.redis_timeout)?,
                )),
                None => None,
            },
            finder: TokenFinder::new(&self.cookie_name, &locations),
            cookie_name: self.cookie_name.into_boxed_str(),
            cache_ttl: positive("cache_ttl", self.cache_ttl)?,
            negative_ttl: positive("negative_ttl", self.negative_ttl)?,
            max_capacity: self.max_capacity,
            timeout,
            connect_timeout,
            max_body_bytes: self.max_body_bytes,
        })
    }
}

/// An id6 base URL, which may carry a path such as `/api`, normalised to end in `/`.
fn base_url(setting: &'static str, base: &str) -> Result<Url, Error> {
    let mut url = Url::parse(base.trim())
        .map_err(|e| Error::config(setting, format!("`{base}` is not a URL: {e}")))?;
    if !matches!(url.scheme(), "http" | "https") || url.host().is_none() {
        return Err(Error::config(
            setting,
            format!("`{base}` is not an http(s) URL"),
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
        let map: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
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
            let user = join(&base_url("url", base).unwrap(), "user");
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
            bad.validate().unwrap_err().setting(),
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
                    .contains("on_unavailable")
                    || policy(bad).unwrap_err().setting() == Some("ID6_ON_UNAVAILABLE"),
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
            half.validate().unwrap_err().setting(),
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
        assert_eq!(missing.setting(), Some("ID6_URL"));
        let bad = env(&[("ID6_URL", "http://h"), ("ID6_CACHE_TTL", "soon")])
            .validate()
            .unwrap_err();
        assert_eq!(bad.setting(), Some("ID6_CACHE_TTL"));
        assert!(bad.to_string().contains("`soon`"));
        let bad = env(&[("ID6_URL", "http://h"), ("ID6_CACHE_CAPACITY", "-1")])
            .validate()
            .unwrap_err();
        assert_eq!(bad.setting(), Some("ID6_CACHE_CAPACITY"));
        // A setter after from_env overrides the environment.
        let s = env(&[("ID6_URL", "http://h"), ("ID6_TIMEOUT", "9s")])
            .timeout(Duration::from_secs(1))
            .validate()
            .unwrap();
        assert_eq!(s.timeout, Duration::from_secs(1));
    }
}
