//! The builder and the validated settings it produces.
//!
//! Every value a person or an environment can type reaches the crate through here, and
//! `validate` range-checks each one: no value accepted here can make a library panic later
//! (moka's TTL limit, `Instant` overflow, the semaphore's permit limit).

mod builder;
mod env;

use std::borrow::Cow;
use std::fmt;
use std::ops::Deref;
use std::time::Duration;

use http::HeaderValue;
use reqwest::Url;

use crate::clock::Clock;
use crate::csrf::Origin;
use crate::error::Error;
use crate::jwt::Screen;
use crate::rejection::RejectionHook;
use crate::resolve::CallerFinder;
use crate::token::TokenFinder;

pub use builder::Id6Builder;

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
    MISS_LIMIT = "miss_limit", "ID6_MISS_LIMIT";
    TRUSTED_PROXIES = "trusted_proxies", "ID6_TRUSTED_PROXIES";
    REFRESH_AFTER = "refresh_after", "ID6_REFRESH_AFTER";
    LOGIN_URL = "login_url", "ID6_LOGIN_URL";
    TRUSTED_ORIGINS = "trusted_origins", "ID6_TRUSTED_ORIGINS";
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
    /// A miss budget's calls per window: far above id6's own 100 per minute.
    pub(super) const MISS_CALLS: u32 = 1_000_000;
    /// A miss budget's window: id6's is a minute; a day is the longest worth counting.
    pub(super) const MISS_WINDOW: Duration = DAY;
    /// Proxies in front of the app whose `X-Forwarded-For` entries are trusted.
    pub(super) const PROXY_HOPS: usize = 16;
}

/// What [`Id6Builder::build`] checked, handed out part by part: each part of the handle
/// receives its own settings and nothing else.
#[derive(Debug, Clone)]
pub(crate) struct Settings {
    pub(crate) client: ClientSettings,
    pub(crate) resolver: ResolverSettings,
    pub(crate) redis: Option<RedisSettings>,
    pub(crate) http: HttpSettings,
    /// For the typed calls: the cap on a picture, up or down.
    pub(crate) max_picture_bytes: u64,
}

/// Where and how to call id6.
#[derive(Debug, Clone)]
pub(crate) struct ClientSettings {
    /// id6's API base, ending in `/`, to join endpoint paths onto.
    pub(crate) base_url: Endpoint,
    /// `{base}/user`, ready to call.
    pub(crate) user_url: Endpoint,
    /// The private `/authorize` endpoint, when the layer resolves tokens through it.
    pub(crate) authorization: Option<Authorization>,
    /// The cookie id6 reads the token from.
    pub(crate) cookie_name: Box<str>,
    pub(crate) timeout: Duration,
    pub(crate) connect_timeout: Duration,
    pub(crate) max_body_bytes: usize,
    pub(crate) max_concurrent_calls: usize,
    /// How long a miss may wait for one of the `max_concurrent_calls`.
    pub(crate) queue_timeout: Duration,
    /// The longest the breaker stays open, whatever id6 or a proxy asks for.
    pub(crate) max_backoff: Duration,
    /// The user's own client, used instead of building one.
    pub(crate) http: Option<reqwest::Client>,
    /// The handle's clock (the breaker's reopening), shared with the resolver.
    pub(crate) clock: Clock,
}

/// How a request's token is found, screened, cached and answered for when id6 cannot be.
#[derive(Debug, Clone)]
pub(crate) struct ResolverSettings {
    /// Where to look for the token, in order.
    pub(crate) finder: TokenFinder,
    /// The local screen every token passes before it costs an id6 call.
    pub(crate) screen: Screen,
    pub(crate) cache_ttl: Duration,
    pub(crate) negative_ttl: Duration,
    pub(crate) max_capacity: u64,
    pub(crate) on_unavailable: OnUnavailable,
    /// How long an invalidation mark must outlive any load that started before it.
    pub(crate) mark_lifetime: Duration,
    /// Past this age, a cached user is served and refreshed in the background.
    pub(crate) refresh_after: Option<Duration>,
    /// The per-caller budget of id6 calls for unknown tokens, and how callers are told
    /// apart.
    pub(crate) miss_limit: Option<MissLimit>,
    pub(crate) callers: CallerFinder,
    /// The handle's clock (expiry), shared with the client.
    pub(crate) clock: Clock,
}

/// What the layer and the guards answer with.
#[derive(Debug, Clone)]
pub(crate) struct HttpSettings {
    /// The `Set-Cookie` value that clears a dead token, when enabled.
    pub(crate) dead_cookie: Option<HeaderValue>,
    /// Where a guard sends a browser to sign in: this page and no other.
    pub(crate) login_url: Option<HeaderValue>,
    /// Origins besides the request's own whose cookie-carrying writes pass the CSRF check.
    pub(crate) trusted_origins: Box<[Origin]>,
    /// The app's own answer to every rejection.
    pub(crate) rejection_hook: Option<RejectionHook>,
    /// Bearer tokens are accepted: 401s carry a `WWW-Authenticate: Bearer` challenge.
    pub(crate) bearer: bool,
}

/// The second level on Redis (feature `redis`; refused by `build` without it).
#[derive(Clone)]
#[allow(dead_code)] // read by the `redis` module, which only the feature compiles
pub(crate) struct RedisSettings {
    /// May carry a password: never printed.
    pub(crate) url: String,
    /// Prefix of every key and of the invalidation channel.
    pub(crate) prefix: String,
    /// Bound on one Redis operation.
    pub(crate) timeout: Duration,
    /// Expiries of shared answers: the local TTLs.
    pub(crate) positive_ttl: Duration,
    pub(crate) negative_ttl: Duration,
    /// The cap on a value read back: id6's own body cap, as what is stored came from id6.
    pub(crate) max_value_bytes: usize,
}

impl fmt::Debug for RedisSettings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisSettings")
            .field("url", &"<redacted>")
            .field("prefix", &self.prefix)
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
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
    let userinfo_end = match Url::parse(url.trim()).ok().filter(Url::has_host) {
        // A URL that parses says whether it has userinfo; it ends before the host.
        Some(parsed) if parsed.username().is_empty() && parsed.password().is_none() => None,
        Some(_) => rest[..rest.find(['/', '?', '#']).unwrap_or(rest.len())].rfind('@'),
        // One that does not (a password with an unencoded `/`, `?` or `#`, say): everything
        // up to the last `@` may be userinfo. Hiding a host too beats showing a password.
        None => rest.rfind('@'),
    };
    match userinfo_end {
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

/// How many id6 calls one caller's unknown tokens may cost, at once and per window
/// ([`Id6Builder::miss_limit`]): a flood of forged tokens from one address spends at most
/// this much of id6's rate limit, and the other callers keep the rest.
///
/// ```
/// use std::time::Duration;
/// use id6_tower::MissLimit;
///
/// let limit = MissLimit::new(30, Duration::from_secs(60)); // `ID6_MISS_LIMIT=30/1m`
/// assert_eq!(limit.calls(), 30);
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MissLimit {
    calls: u32,
    window: Duration,
}

impl MissLimit {
    /// `calls` id6 calls for one caller, all of them usable at once, given back at `calls`
    /// per `window` (one every `window / calls`): a caller that starts with its whole
    /// budget gets up to `2 × calls − 1` in its first window, `calls` per window after that
    /// (`build` checks: 1 to 10⁶ calls, a window up to a day).
    pub const fn new(calls: u32, window: Duration) -> Self {
        MissLimit { calls, window }
    }

    /// The calls allowed per window.
    pub const fn calls(&self) -> u32 {
        self.calls
    }

    /// The window.
    pub const fn window(&self) -> Duration {
        self.window
    }

    /// `off`, or `<calls>/<window>` (e.g. `30/1m`); `None` when it is neither.
    fn parse(value: &str) -> Option<Option<Self>> {
        let value = value.trim();
        if value.eq_ignore_ascii_case("off") {
            return Some(None);
        }
        let (calls, window) = value.split_once('/')?;
        let calls = calls.trim().parse().ok()?;
        let window = humantime::parse_duration(window.trim()).ok()?;
        Some(Some(MissLimit::new(calls, window)))
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
    use crate::id6::Id6;
    use crate::token::TokenLocation;
    use std::collections::HashMap;
    use std::ffi::OsString;

    fn env(vars: &[(&str, &str)]) -> Id6Builder {
        let vars: Vec<(&str, OsString)> = vars.iter().map(|&(k, v)| (k, v.into())).collect();
        env_os(&vars)
    }

    fn env_os(vars: &[(&str, OsString)]) -> Id6Builder {
        let map: HashMap<String, OsString> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.clone()))
            .collect();
        Id6Builder::from_lookup(move |name| map.get(name).cloned(), None)
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
        assert_eq!(s.client.user_url.as_str(), "http://127.0.0.1:9/api/user");
        assert_eq!(&*s.client.cookie_name, "sid");
        assert_eq!(s.resolver.cache_ttl, Duration::from_secs(90));
        assert_eq!(s.resolver.negative_ttl, Duration::from_millis(1500));
        assert_eq!(s.resolver.max_capacity, 42);
        assert_eq!(s.client.timeout, Duration::from_secs(2));
        assert_eq!(s.client.connect_timeout, Duration::from_secs(2));
        assert!(s.client.authorization.is_none());

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
                .map(|s| s.resolver.on_unavailable)
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
        assert_eq!(s.client.max_concurrent_calls, 4);
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
        let authz = s.client.authorization.unwrap();
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
        let builder = Id6Builder::new("http://h").redis("redis://:s3cret@127.0.0.1:6379");
        assert!(!format!("{builder:?}").contains("s3cret"));

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
        assert_eq!(s.client.timeout, Duration::from_secs(1));
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
            for (what, value) in &values {
                let mut vars = companions(setting);
                vars.push((setting.var, value.clone()));
                match env_os(&vars).validate() {
                    Ok(settings) => {
                        // What is accepted builds, or is refused by name (a Redis URL that
                        // does not parse, or Redis without its feature): never a panic.
                        if let Err(err) = Id6::from_settings(settings) {
                            assert_eq!(err.variable(), Some("ID6_REDIS_URL"), "{err}");
                        }
                        let numeric = !is_text(setting) && setting.var != "ID6_URL";
                        // `0` is a switch's off, or no proxy in front.
                        let accepted_zero =
                            matches!(setting.var, "ID6_CLEAR_DEAD_COOKIE" | "ID6_TRUSTED_PROXIES")
                                && *what == "zero";
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
            // A glob would widen `clear`'s SCAN to other applications' keys.
            (b().redis("redis://h").redis_prefix("app*"), "redis_prefix"),
            (b().redis("redis://h").redis_prefix("a[b]"), "redis_prefix"),
            (
                b().miss_limit(MissLimit::new(0, Duration::from_secs(60))),
                "miss_limit",
            ),
            (
                b().miss_limit(MissLimit::new(30, Duration::ZERO)),
                "miss_limit",
            ),
            (b().miss_limit(MissLimit::new(u32::MAX, year)), "miss_limit"),
            // Less than a millisecond per call: governor would round the period to nothing.
            (
                b().miss_limit(MissLimit::new(1000, Duration::from_nanos(999))),
                "miss_limit",
            ),
            (b().trusted_proxies(usize::MAX), "trusted_proxies"),
            (b().refresh_after(Duration::ZERO), "refresh_after"),
            // Not shorter than the TTL: it would never be served before expiring.
            (b().refresh_after(Duration::from_secs(60)), "refresh_after"),
            (b().refresh_after(Duration::MAX), "refresh_after"),
        ];
        for (builder, setter) in cases {
            let err = builder.validate().unwrap_err();
            assert_eq!(err.setting(), Some(setter), "{err}");
        }
    }

    #[test]
    fn budget_and_refresh_settings_read_as_documented() {
        let s = env(&[("ID6_URL", "http://h")]).validate().unwrap().resolver;
        assert_eq!(s.miss_limit, Some(Id6Builder::DEFAULT_MISS_LIMIT));
        assert_eq!(
            s.refresh_after,
            Some(Duration::from_secs(45)),
            "3/4 of 60 s"
        );
        let s = env(&[
            ("ID6_URL", "http://h"),
            ("ID6_MISS_LIMIT", " 5 / 10s "),
            ("ID6_REFRESH_AFTER", "20s"),
            ("ID6_CACHE_TTL", "30s"),
            ("ID6_TRUSTED_PROXIES", "2"),
        ])
        .validate()
        .unwrap()
        .resolver;
        assert_eq!(
            s.miss_limit,
            Some(MissLimit::new(5, Duration::from_secs(10)))
        );
        assert_eq!(s.refresh_after, Some(Duration::from_secs(20)));
        let s = env(&[
            ("ID6_URL", "http://h"),
            ("ID6_MISS_LIMIT", "OFF"),
            ("ID6_REFRESH_AFTER", "off"),
        ])
        .validate()
        .unwrap()
        .resolver;
        assert_eq!((s.miss_limit, s.refresh_after), (None, None));
        for (var, value) in [
            ("ID6_MISS_LIMIT", "30"),
            ("ID6_MISS_LIMIT", "30/soon"),
            ("ID6_MISS_LIMIT", "0/1m"),
            ("ID6_REFRESH_AFTER", "2m"),
            ("ID6_TRUSTED_PROXIES", "17"),
        ] {
            let err = env(&[("ID6_URL", "http://h"), (var, value)])
                .validate()
                .unwrap_err();
            assert_eq!(err.variable(), Some(var), "{value}: {err}");
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
            ("http://u:pa?ss@host/api", "http://***@host/api"),
            ("http://u:pa/ss@host", "http://***@host"),
            ("http://u:pa#ss@host:8/api", "http://***@host:8/api"),
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

    #[test]
    fn https_without_tls_names_the_features() {
        let url = reqwest::Url::parse("https://id6.example.com/api/").unwrap();
        let err = builder::https_possible(setting::URL, &url, false).unwrap_err();
        assert_eq!(err.variable(), Some("ID6_URL"));
        assert!(err.to_string().contains("`rustls`"), "{err}");
        assert!(err.to_string().contains("`native-tls`"), "{err}");
        assert!(builder::https_possible(setting::URL, &url, true).is_ok());
        let plain = reqwest::Url::parse("http://10.0.0.2:3001/").unwrap();
        assert!(builder::https_possible(setting::URL, &plain, false).is_ok());
        // Your own client speaks whatever TLS your build has.
        let own =
            Id6Builder::new("https://id6.example.com/api").http_client(reqwest::Client::new());
        assert!(own.validate().unwrap().client.http.is_some());
    }
}
