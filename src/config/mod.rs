//! The builder and the validated settings it produces: plain data, at the bottom of the
//! house. The handle ([`crate::Id6`]) builds its runtime parts from [`Settings`].
//!
//! Every setting is one row of the `settings!` table below: its setter and doc, its
//! environment variable and how it reads, its default (and the default as the README's
//! configuration table shows it), and the check of its accepted range. The setter, the
//! reading of the environment and the validation all follow from the rows. No value accepted
//! here can make a library panic later (moka's TTL limit, `Instant` overflow, the
//! semaphore's permit limit).

mod values;

use std::ffi::OsString;
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use http::HeaderValue;
use reqwest::Url;

use crate::clock::Clock;
use crate::error::{Error, Setting};
use crate::rejection::{AuthRejection, RejectionHook};
use crate::token::TokenLocation;
use values::{
    base_url, between, count, is_cookie_name_byte, limits, quoted, read, unknown_vars, Env, RawUrl,
    DAY, TLS,
};

pub(crate) use values::{join, Authorization, CallerKey, Endpoint, Origin, Secret};
pub use values::{MissLimit, OnUnavailable};

/// A setter, from a row: none, one that stores what `=>` says, or one written out.
macro_rules! setter {
    ([$($doc:literal)*] [$($env:tt)*] $field:ident) => {};
    ([$($doc:literal)*] [$($env:tt)*] $field:ident fn $($fn:tt)+) => {
        $(#[doc = $doc])*
        #[doc = ""]
        #[doc = $($env)*]
        pub fn $($fn)+
    };
    (
        [$($doc:literal)*] [$($env:tt)*] $field:ident
        $name:ident $(<$($g:ident),+>)? ($($arg:ident: $aty:ty),*) $(where [$($wc:tt)+])?
        => $store:expr
    ) => {
        $(#[doc = $doc])*
        #[doc = ""]
        #[doc = $($env)*]
        pub fn $name $(<$($g),+>)? (mut self, $($arg: $aty),*) -> Self $(where $($wc)+)? {
            self.$field = $store;
            self
        }
    };
}

/// The line every setter's doc ends with: the environment variable that sets it too
/// (docs.rs shows no README; the row's doc says the default).
macro_rules! env_doc {
    ("") => {
        ""
    };
    ($var:literal) => {
        concat!("Environment variable: `", $var, "`.")
    };
}

/// The table of settings: one row each, from which the builder's fields and setters, the
/// reading of the environment and the checks of `build` follow.
///
/// A row: its doc (the setter's); `NAME = "setter", "ID6_VAR", default "<as the README
/// shows it>"` (the variable is empty for a setter the environment cannot set); the field,
/// its default and, with `read`, how the variable's text becomes it; `check`, what `build`
/// makes of it (a value out of range is an error naming the setter and the variable); and
/// `set`, the setter.
macro_rules! settings {
    ($(
        $(#[doc = $doc:literal])*
        $konst:ident = $setter:literal, $var:tt, default $shown:literal;
        $field:ident: $ty:ty = $default:expr $(, read $parse:expr)?;
        check -> $out:ty = $check:expr;
        set { $($set:tt)* }
    )*) => {
        /// Every setting, as config errors name it.
        pub(crate) mod setting {
            use crate::error::Setting;
            $(
                #[allow(dead_code)] // Some are named only with a feature (`redis`).
                pub(crate) const $konst: Setting = Setting { setter: $setter, var: $var };
            )*
            /// Every variable the environment can set (empty for a setter without one).
            pub(crate) const VARS: &[&str] = &[$($var),*];
            /// Every row, with its default as the README's configuration table shows it.
            #[cfg(test)]
            pub(crate) const ALL: &[(Setting, &str)] = &[$(($konst, $shown)),*];
        }

        /// Builds an [`Id6`](crate::Id6) handle. Infallible until
        /// [`build`](Self::build), which reports the first unusable setting by name. Every
        /// setter has its environment variable (see [`from_env`](Self::from_env)) but
        /// [`http_client`](Self::http_client), [`caller_key`](Self::caller_key) and
        /// [`on_rejection`](Self::on_rejection).
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
            $($field: $ty,)*
            /// The first setting the environment gave that could not even be read.
            deferred: Option<Error>,
        }

        impl Id6Builder {
    /// Whether a shared tier is configured (whichever topology).
    fn shares(&self) -> bool {
        self.redis.is_some() || !self.redis_sentinels.is_empty() || !self.redis_cluster.is_empty()
    }

            $(setter!([$($doc)*] [env_doc!($var)] $field $($set)*);)*

            /// Every setting at its default.
            fn defaults() -> Self {
                Id6Builder {
                    $($field: $default,)*
                    deferred: None,
                }
            }

            /// Every variable the environment sets, read into its field.
            fn read_env<F: Fn(&str) -> Option<OsString>>(&mut self, env: &mut Env<F>) {
                $($(
                    if let Some(value) = env.read(setting::$konst, $parse) {
                        self.$field = value;
                    }
                )?)*
            }

            /// Every row checked, in the table's order: the first unusable value is the
            /// error. A row whose check reads another row's value (`connect_timeout` and
            /// `queue_timeout` read `timeout`, `refresh_after` reads `cache_ttl`, the dead
            /// cookie reads `cookie_name`) stands below it: keep that order when moving rows.
            fn check(mut self) -> Result<Checked, Error> {
                if let Some(error) = self.deferred.take() {
                    return Err(error);
                }
                let b = &self;
                Ok(Checked {
                    $($field: checked(b, setting::$konst, $check)?,)*
                })
            }
        }

        /// Each row's value as its check made it.
        #[allow(dead_code)] // The authorization secret is checked with its URL's row.
        struct Checked {
            $($field: $out,)*
        }
    };
}

/// Runs a row's check (a closure, so that the table needs no types for it).
fn checked<T>(
    builder: &Id6Builder,
    setting: Setting,
    check: impl FnOnce(&Id6Builder, Setting) -> Result<T, Error>,
) -> Result<T, Error> {
    check(builder, setting)
}

settings! {
    /// id6's API base, with `/api` behind id6's proxy: [`Id6::builder`](crate::Id6::builder).
    URL = "url", "ID6_URL", default "required";
    url: RawUrl = RawUrl(String::new());
    check -> Url = |b, s| base_url(s, &b.url.0, TLS || b.http_client.is_some());
    set {}

    /// Name of id6's cookie, read from requests and forwarded to id6 (default `auth`).
    COOKIE_NAME = "cookie_name", "ID6_COOKIE_NAME", default "`auth`";
    cookie_name: String = "auth".to_owned(), read read::text;
    check -> Box<str> = |b, s| {
        let name = &b.cookie_name;
        let valid = !name.is_empty()
            && name.len() <= limits::TEXT_BYTES
            && name.bytes().all(is_cookie_name_byte);
        if !valid {
            return Err(Error::config(
                s,
                "must be a cookie name of at most 1024 letters, digits, `-`, `_` or `.`",
            ));
        }
        Ok(name.clone().into_boxed_str())
    };
    set { cookie_name(name: impl Into<String>) => name.into() }

    /// How long an id6 answer naming a user is served from the cache (default 60 s; 1 ms to
    /// 365 days).
    CACHE_TTL = "cache_ttl", "ID6_CACHE_TTL", default "`60s`";
    cache_ttl: Duration = Duration::from_secs(60), read read::duration;
    check -> Duration = |b, s| between(s, b.cache_ttl, Duration::ZERO, limits::TTL);
    set { cache_ttl(ttl: Duration) => ttl }

    /// How long a token id6 rejected is remembered as anonymous (default 5 s; 1 ms to 365
    /// days).
    NEGATIVE_TTL = "negative_ttl", "ID6_NEGATIVE_TTL", default "`5s`";
    negative_ttl: Duration = Duration::from_secs(5), read read::duration;
    check -> Duration = |b, s| between(s, b.negative_ttl, Duration::ZERO, limits::TTL);
    set { negative_ttl(ttl: Duration) => ttl }

    /// How many tokens the cache holds at most (default 100 000, at most 10⁸), for users
    /// and for rejected tokens each.
    MAX_CAPACITY = "max_capacity", "ID6_MAX_CAPACITY", default "`100000`";
    max_capacity: u64 = 100_000, read read::number;
    check -> u64 = |b, s| count(s, b.max_capacity, limits::CAPACITY);
    set { max_capacity(entries: u64) => entries }

    /// Bound on one whole call to id6, from connecting to the last byte (default 3 s; 1 ms
    /// to 5 minutes).
    TIMEOUT = "timeout", "ID6_TIMEOUT", default "`3s`";
    timeout: Duration = Duration::from_secs(3), read read::duration;
    check -> Duration = |b, s| between(s, b.timeout, Duration::ZERO, limits::WAIT);
    set { timeout(timeout: Duration) => timeout }

    /// Bound on connecting to id6 (default: the [`timeout`](Self::timeout); 1 ms to 5
    /// minutes).
    CONNECT_TIMEOUT = "connect_timeout", "ID6_CONNECT_TIMEOUT", default "the `timeout`";
    connect_timeout: Option<Duration> = None, read |v| read::duration(v).map(Some);
    check -> Duration = |b, s| {
        between(s, b.connect_timeout.unwrap_or(b.timeout), Duration::ZERO, limits::WAIT)
    };
    set { connect_timeout(timeout: Duration) => Some(timeout) }

    /// How long a miss may wait for a free id6 call (default: the [`timeout`](Self::timeout);
    /// 1 ms to 5 minutes).
    QUEUE_TIMEOUT = "queue_timeout", "ID6_QUEUE_TIMEOUT", default "the `timeout`";
    queue_timeout: Option<Duration> = None, read |v| read::duration(v).map(Some);
    check -> Duration = |b, s| {
        between(s, b.queue_timeout.unwrap_or(b.timeout), Duration::ZERO, limits::WAIT)
    };
    set { queue_timeout(timeout: Duration) => Some(timeout) }

    /// The longest id6 goes uncalled after a 429 or repeated connection failures (default
    /// 60 s, id6's own window; between 1 s and 1 h). A `429` asking for a longer wait (a
    /// proxy's reset in milliseconds, a far-future date) is held to it, and so is the
    /// `Retry-After` that callers are given.
    MAX_BACKOFF = "max_backoff", "ID6_MAX_BACKOFF", default "`60s`";
    max_backoff: Duration = Duration::from_secs(60), read read::duration;
    check -> Duration = |b, s| between(s, b.max_backoff, limits::BACKOFF_MIN, limits::BACKOFF);
    set { max_backoff(max: Duration) => max }

    /// Cap on the bytes read from one id6 answer (default 64 KiB, at most 16 MiB); longer
    /// is unavailable. Values read back from Redis are capped alike.
    MAX_BODY_BYTES = "max_body_bytes", "ID6_MAX_BODY_BYTES", default "`65536`";
    max_body_bytes: usize = 64 * 1024, read read::number;
    check -> usize = |b, s| count(s, b.max_body_bytes, limits::BODY_BYTES);
    set { max_body_bytes(bytes: usize) => bytes }

    /// Where requests carry the token, in the order to look (default: the cookie only).
    /// Add [`TokenLocation::Bearer`] for `Authorization: Bearer` / gRPC `authorization`
    /// metadata (401s then carry a `WWW-Authenticate: Bearer` challenge). Wherever found,
    /// id6 receives the token as its cookie. In the environment: `cookie`, `bearer` or
    /// both, comma-separated, in order.
    TOKEN_LOCATIONS = "token_locations", "ID6_TOKEN_LOCATIONS", default "`cookie`";
    token_locations: Vec<TokenLocation> = vec![TokenLocation::Cookie],
        read read::token_locations;
    check -> Box<[TokenLocation]> = |b, s| {
        let mut locations = Vec::new();
        for location in &b.token_locations {
            if locations.contains(location) {
                return Err(Error::config(s, "lists a place twice"));
            }
            locations.push(*location);
        }
        if locations.is_empty() {
            return Err(Error::config(s, "must name at least one place"));
        }
        Ok(locations.into_boxed_slice())
    };
    set {
        token_locations(locations: impl IntoIterator<Item = TokenLocation>)
            => locations.into_iter().collect()
    }

    /// Share id6's answers between instances through Redis, and broadcast every eviction to
    /// them (feature `redis`). See the crate README, "Running several instances". Starting
    /// never needs Redis to be up. Without the feature, `build()` refuses a Redis URL,
    /// saying which feature to enable. `redis://user:password@host:port` logs in as that ACL
    /// user; `rediss://…` speaks TLS (with the `rustls` feature too), verifying Redis against
    /// the public roots or [`redis_ca_file`](Self::redis_ca_file), with an optional
    /// [`redis_client_cert`](Self::redis_client_cert).
    REDIS_URL = "redis", "ID6_REDIS_URL", default "off";
    redis: Option<Secret> = None, read |v| Ok(Some(Secret(v.to_owned())));
    check -> Option<String> = |b, _| Ok(b.redis.as_ref().map(|Secret(url)| url.clone()));
    set { redis(url: impl Into<String>) => Some(Secret(url.into())) }

    /// Find Redis through Sentinel (feature `redis`): the Sentinels' URLs (`redis://` or
    /// `rediss://`, comma-separated in the environment; the master is reached with the
    /// first one's user and password) and the name of the master they watch. When the master
    /// dies and the Sentinels promote a replica, the instances find the new master by
    /// themselves. One topology at a time: not with [`redis`](Self::redis).
    REDIS_SENTINELS = "redis_sentinels", "ID6_REDIS_SENTINELS", default "off";
    redis_sentinels: Vec<Secret> = Vec::new(),
        read |v| read::list(v).map(|urls| urls.into_iter().map(Secret).collect());
    check -> Vec<String> = |b, s| {
        if b.redis.is_some() && !b.redis_sentinels.is_empty() {
            return Err(Error::config(
                s,
                format!(
                    "one Redis topology at a time: {} and {} are both set",
                    setting::REDIS_URL.var,
                    setting::REDIS_SENTINELS.var
                ),
            ));
        }
        if !b.redis_sentinels.is_empty() && b.redis_sentinel_master.is_none() {
            return Err(Error::config(
                s,
                format!(
                    "the Sentinels need the name of their master ({})",
                    setting::REDIS_SENTINEL_MASTER.var
                ),
            ));
        }
        Ok(b.redis_sentinels.iter().map(|Secret(url)| url.clone()).collect())
    };
    set {
        fn redis_sentinels<I>(mut self, urls: I, master: impl Into<String>) -> Self
        where
            I: IntoIterator,
            I::Item: Into<String>,
        {
            self.redis_sentinels = urls.into_iter().map(|url| Secret(url.into())).collect();
            self.redis_sentinel_master = Some(master.into());
            self
        }
    }

    /// The name of the master the Sentinels watch (`sentinel monitor <name> …`); set with
    /// [`redis_sentinels`](Self::redis_sentinels).
    REDIS_SENTINEL_MASTER = "redis_sentinels", "ID6_REDIS_SENTINEL_MASTER", default "none";
    redis_sentinel_master: Option<String> = None, read |v| read::text(v).map(Some);
    check -> Option<String> = |b, s| match &b.redis_sentinel_master {
        Some(_) if b.redis_sentinels.is_empty() => Err(Error::config(
            s,
            format!("names a master, but no Sentinel ({})", setting::REDIS_SENTINELS.var),
        )),
        Some(name) if name.is_empty() || name.len() > limits::TEXT_BYTES => {
            Err(Error::config(s, "must be 1 to 1024 bytes"))
        }
        master => Ok(master.clone()),
    };
    set {}

    /// Reach a Redis Cluster (feature `redis`): seed nodes' URLs (`redis://` or `rediss://`,
    /// comma-separated in the environment; every node is reached with the first one's user,
    /// password and TLS); the rest of the cluster is discovered from them. Each user's keys
    /// share one hash slot; the users spread over the masters. A master down fails only its
    /// users' operations, fast, and those requests ask id6. One topology at a time: not with
    /// [`redis`](Self::redis) nor [`redis_sentinels`](Self::redis_sentinels).
    REDIS_CLUSTER = "redis_cluster", "ID6_REDIS_CLUSTER", default "off";
    redis_cluster: Vec<Secret> = Vec::new(),
        read |v| read::list(v).map(|urls| urls.into_iter().map(Secret).collect());
    check -> Vec<String> = |b, s| {
        let other = if b.redis.is_some() {
            Some(setting::REDIS_URL)
        } else if !b.redis_sentinels.is_empty() {
            Some(setting::REDIS_SENTINELS)
        } else {
            None
        };
        if let Some(other) = other.filter(|_| !b.redis_cluster.is_empty()) {
            return Err(Error::config(
                s,
                format!(
                    "one Redis topology at a time: {} and {} are both set",
                    other.var,
                    setting::REDIS_CLUSTER.var
                ),
            ));
        }
        Ok(b.redis_cluster.iter().map(|Secret(url)| url.clone()).collect())
    };
    set {
        fn redis_cluster<I>(mut self, seeds: I) -> Self
        where
            I: IntoIterator,
            I::Item: Into<String>,
        {
            self.redis_cluster = seeds.into_iter().map(|url| Secret(url.into())).collect();
            self
        }
    }

    /// Prefix of every Redis key and of the invalidation channel (default `id6:`; at most
    /// 1024 bytes, and no glob character: one would widen `clear`'s `SCAN` to other keys;
    /// with [`redis_cluster`](Self::redis_cluster), no `{` or `}` either: a hash tag of its
    /// own would put every key in one slot, or split a user's keys over several).
    REDIS_PREFIX = "redis_prefix", "ID6_REDIS_PREFIX", default "`id6:`";
    redis_prefix: String = "id6:".to_owned(), read read::text;
    check -> String = |b, s| {
        let prefix = &b.redis_prefix;
        let globless = !prefix.contains(['*', '?', '[', ']', '\\']);
        if b.shares() && (prefix.len() > limits::TEXT_BYTES || !globless) {
            return Err(Error::config(
                s,
                "must be at most 1024 bytes, without `*`, `?`, `[`, `]` or `\\`",
            ));
        }
        if !b.redis_cluster.is_empty() && prefix.contains(['{', '}']) {
            return Err(Error::config(
                s,
                "must not hold `{` or `}` with a Redis Cluster: the keys carry their own hash tags",
            ));
        }
        Ok(prefix.clone())
    };
    set { redis_prefix(prefix: impl Into<String>) => prefix.into() }

    /// Bound on one Redis operation (default 100 ms, at most 5 minutes); past it, the layer
    /// carries on without.
    REDIS_TIMEOUT = "redis_timeout", "ID6_REDIS_TIMEOUT", default "`100ms`";
    redis_timeout: Duration = Duration::from_millis(100), read read::duration;
    check -> Duration = |b, s| match b.shares() {
        true => between(s, b.redis_timeout, Duration::ZERO, limits::WAIT),
        false => Ok(b.redis_timeout),
    };
    set { redis_timeout(timeout: Duration) => timeout }

    /// The CA certificates (one PEM file, at most 1 MiB) that a `rediss://` Redis's
    /// certificate must chain to, instead of the usual public roots (webpki-roots): a private
    /// CA, or a managed Redis's own. Read by `build`, which refuses a file that cannot be read
    /// or holds no certificate. Needs a `rediss://` URL in [`redis`](Self::redis).
    REDIS_CA_FILE = "redis_ca_file", "ID6_REDIS_CA_FILE", default "the public roots";
    redis_ca_file: Option<PathBuf> = None, read |v| Ok(Some(PathBuf::from(v)));
    check -> Option<Vec<u8>> = |b, s| tls_file(b, s, b.redis_ca_file.as_deref());
    set { redis_ca_file(path: impl Into<PathBuf>) => Some(path.into()) }

    /// A client certificate (its chain, PEM) and its private key (PEM; environment
    /// variable `ID6_REDIS_CLIENT_KEY`), presented to a `rediss://` Redis that asks for one
    /// (mutual TLS, Redis's `tls-auth-clients`). Read by `build`, which refuses a file that
    /// cannot be read, a key that does not match the certificate, or one without the other.
    REDIS_CLIENT_CERT = "redis_client_cert", "ID6_REDIS_CLIENT_CERT", default "none";
    redis_client_cert: Option<PathBuf> = None, read |v| Ok(Some(PathBuf::from(v)));
    check -> Option<Vec<u8>> = |b, s| match (&b.redis_client_cert, &b.redis_client_key) {
        (None, Some(_)) => Err(Error::config(s, "is needed with ID6_REDIS_CLIENT_KEY")),
        (Some(_), None) => Err(Error::config(
            setting::REDIS_CLIENT_KEY,
            "is needed with ID6_REDIS_CLIENT_CERT",
        )),
        (cert, _) => tls_file(b, s, cert.as_deref()),
    };
    set {
        fn redis_client_cert(mut self, cert: impl Into<PathBuf>, key: impl Into<PathBuf>) -> Self {
            self.redis_client_cert = Some(cert.into());
            self.redis_client_key = Some(key.into());
            self
        }
    }

    /// The private key of the client certificate: read and checked with its certificate's
    /// row (never printed).
    REDIS_CLIENT_KEY = "redis_client_cert", "ID6_REDIS_CLIENT_KEY", default "none";
    redis_client_key: Option<PathBuf> = None, read |v| Ok(Some(PathBuf::from(v)));
    check -> Option<Vec<u8>> = |b, s| tls_file(b, s, b.redis_client_key.as_deref());
    set {}

    /// What a request gets when id6 cannot be asked (default [`OnUnavailable::Reject`]; a
    /// stale window of 1 ms to 365 days). In the environment: `reject`, `anonymous` or
    /// `stale:<duration>`.
    ON_UNAVAILABLE = "on_unavailable", "ID6_ON_UNAVAILABLE", default "`reject`";
    on_unavailable: OnUnavailable = OnUnavailable::Reject, read read::on_unavailable;
    check -> OnUnavailable = |b, s| {
        if let OnUnavailable::Stale(grace) = b.on_unavailable {
            between(s, grace, Duration::ZERO, limits::TTL)?;
        }
        Ok(b.on_unavailable)
    };
    set { on_unavailable(policy: OnUnavailable) => policy }

    /// Cap on id6 calls in flight at once (default 32, at most 10 000); beyond it, misses
    /// wait up to [`queue_timeout`](Self::queue_timeout), then resolve as id6 unavailable.
    MAX_CONCURRENT_CALLS = "max_concurrent_calls", "ID6_MAX_CONCURRENT_CALLS", default "`32`";
    max_concurrent_calls: usize = 32, read read::number;
    check -> usize = |b, s| count(s, b.max_concurrent_calls, limits::CONCURRENT_CALLS);
    set { max_concurrent_calls(calls: usize) => calls }

    /// id6's JWT secret, to verify tokens' signature and age locally (feature `jwt`): a
    /// forged or expired token is then anonymous without an id6 call (id6 is still asked
    /// about the others, for revocation). Without it, only the shape of a token is checked
    /// locally, and any well-formed forgery costs an id6 call.
    JWT_SECRET = "jwt_secret", "ID6_JWT_SECRET", default "none";
    jwt_secret: Option<Secret> = None, read |v| Ok(Some(Secret(v.to_owned())));
    check -> Option<Secret> = |b, s| match &b.jwt_secret {
        Some(Secret(secret)) if secret.is_empty() => Err(Error::config(s, "must not be empty")),
        Some(_) if !cfg!(feature = "jwt") => Err(Error::config(
            s,
            "needs the `jwt` feature of id6-tower (local HS256 verification)",
        )),
        secret => Ok(secret.clone()),
    };
    set { jwt_secret(secret: impl Into<String>) => Some(Secret(secret.into())) }

    /// How long after `issuedAt` id6 considers a token expired (default 30 days, as id6;
    /// 1 ms to 100 years); used with [`jwt_secret`](Self::jwt_secret).
    TOKEN_LIFETIME = "token_lifetime", "ID6_TOKEN_LIFETIME", default "`30d`";
    token_lifetime: Duration = Duration::from_secs(30 * DAY.as_secs()), read read::duration;
    check -> Duration = |b, s| between(s, b.token_lifetime, Duration::ZERO, limits::TOKEN_LIFETIME);
    set { token_lifetime(lifetime: Duration) => lifetime }

    /// Resolve tokens through id6's private authorization server, `POST {url}/authorize`
    /// with `secret`, instead of the public `GET /user`. The typed calls still use the public
    /// API. A 401 from it means the secret is wrong: logged as an error, requests get 503.
    AUTHORIZATION_URL = "authorization", "ID6_AUTHORIZATION_URL", default "off";
    authorization_url: Option<RawUrl> = None, read |v| Ok(Some(RawUrl(v.to_owned())));
    check -> Option<Authorization> = authorization;
    set {
        fn authorization(mut self, url: impl Into<String>, secret: impl Into<String>) -> Self {
            self.authorization_url = Some(RawUrl(url.into()));
            self.authorization_secret = Some(Secret(secret.into()));
            self
        }
    }

    /// The shared secret of the authorization server: non-empty visible ASCII, checked with
    /// its URL's row.
    AUTHORIZATION_SECRET = "authorization", "ID6_AUTHORIZATION_SECRET", default "off";
    authorization_secret: Option<Secret> = None, read |v| Ok(Some(Secret(v.to_owned())));
    check -> () = |_, _| Ok(());
    set {}

    /// When id6 says a request's token is dead (invalid, expired, revoked), append
    /// `Set-Cookie: <cookie_name>=; Max-Age=0; Path=/; HttpOnly` to the response, as id6 does,
    /// so the browser stops sending it (default off).
    CLEAR_DEAD_COOKIE = "clear_dead_cookie", "ID6_CLEAR_DEAD_COOKIE", default "off";
    clear_dead_cookie: bool = false, read read::switch;
    check -> bool = |b, _| Ok(b.clear_dead_cookie);
    set { clear_dead_cookie(enabled: bool) => enabled }

    /// The attributes of that clearing cookie (default `Max-Age=0; Path=/; HttpOnly`; at
    /// most 1024 bytes of visible ASCII): match the `Path`, `Domain`, `Secure`, `SameSite`
    /// id6 sets the cookie with.
    DEAD_COOKIE_ATTRIBUTES = "dead_cookie_attributes", "ID6_DEAD_COOKIE_ATTRIBUTES",
        default "`Max-Age=0; Path=/; HttpOnly`";
    dead_cookie_attributes: String = "Max-Age=0; Path=/; HttpOnly".to_owned(), read read::text;
    check -> Option<HeaderValue> = |b, s| {
        if !b.clear_dead_cookie {
            return Ok(None);
        }
        let attributes = b.dead_cookie_attributes.trim();
        // Visible ASCII and spaces, as documented: a header accepts non-ASCII bytes and tabs.
        let visible = attributes.bytes().all(|b| b == b' ' || b.is_ascii_graphic());
        HeaderValue::try_from(format!("{}=; {attributes}", b.cookie_name))
            .ok()
            .filter(|_| visible && attributes.len() <= limits::TEXT_BYTES)
            .map(Some)
            .ok_or_else(|| Error::config(s, "must be at most 1024 bytes of visible ASCII"))
    };
    set { dead_cookie_attributes(attributes: impl Into<String>) => attributes.into() }

    /// Cap on a picture given to [`Id6::update_picture`](crate::Id6::update_picture),
    /// checked before sending, and on one read whole by `PictureDownload::bytes` (default
    /// 10 MiB, at most 1 GiB).
    MAX_PICTURE_BYTES = "max_picture_bytes", "ID6_MAX_PICTURE_BYTES", default "10 MiB";
    max_picture_bytes: u64 = 10 * 1024 * 1024, read read::number;
    check -> u64 = |b, s| count(s, b.max_picture_bytes, limits::PICTURE_BYTES);
    set { max_picture_bytes(bytes: u64) => bytes }

    /// A budget of id6 calls for tokens the cache does not know, per caller (default 30 at
    /// once, then one every 2 s, so up to 59 in a minute that starts with a full budget:
    /// under a third of id6's default 100 for the whole app, far above what a browser
    /// needs; `None` turns it off; in the environment `30/1m` or `off`). Over it, the
    /// request resolves as id6 unavailable (503 with `Retry-After`, or per
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
    MISS_LIMIT = "miss_limit", "ID6_MISS_LIMIT", default "`30/1m`";
    miss_limit: Option<MissLimit> = Some(MissLimit::new(30, Duration::from_secs(60))),
        read read::calls_per_window;
    check -> Option<MissLimit> = miss_limit;
    set { miss_limit(limit: impl Into<Option<MissLimit>>) => limit.into() }

    /// How many proxies in front of the app append to `X-Forwarded-For` (default 0: the
    /// connection's address is the caller; at most 16). With `n`, the caller is the `n`-th
    /// address from the right, the one the outermost trusted proxy saw: entries further
    /// left are whatever the client wrote, never trusted. Only `X-Forwarded-For` is read,
    /// never `Forwarded` (a client could send whichever header its proxies do not write);
    /// behind proxies that write `Forwarded` only, name callers with
    /// [`caller_key`](Self::caller_key).
    TRUSTED_PROXIES = "trusted_proxies", "ID6_TRUSTED_PROXIES", default "`0`";
    trusted_proxies: usize = 0, read read::number;
    check -> usize = |b, s| {
        if b.trusted_proxies > limits::PROXY_HOPS {
            return Err(Error::config(
                s,
                format!("{} is more than {}", b.trusted_proxies, limits::PROXY_HOPS),
            ));
        }
        Ok(b.trusted_proxies)
    };
    set { trusted_proxies(hops: usize) => hops }

    /// Names the caller of a request for the [`miss_limit`](Self::miss_limit) your own way
    /// (an API key's owner, a header your edge sets and strips from clients), from its
    /// headers and extensions; `None` falls back to the address. The first 64 characters of
    /// a name are its key.
    CALLER_KEY = "caller_key", "", default "the caller's address";
    caller_key: Option<CallerKey> = None;
    check -> Option<CallerKey> = |b, _| Ok(b.caller_key.clone());
    set {
        caller_key<F>(key: F)
            where [F: Fn(&http::HeaderMap, &http::Extensions) -> Option<String> + Send + Sync + 'static]
            => Some(CallerKey::new(key))
    }

    /// Once a cached user is older than this, the next request is served from the cache at
    /// once and one background call to id6 renews the entry (default: three quarters of the
    /// [`cache_ttl`](Self::cache_ttl); `None` turns it off, as `off` does in the
    /// environment; must be shorter than the TTL). So a user who keeps clicking never
    /// waits on id6 after the first request. The refresh joins any call already in flight
    /// for the token, goes through the breaker and the call cap, pauses while id6's
    /// remaining rate limit is under a tenth, evicts a token id6 now rejects, and never puts
    /// back a user evicted meanwhile.
    REFRESH_AFTER = "refresh_after", "ID6_REFRESH_AFTER", default "¾ of `cache_ttl`";
    refresh_after: Option<Option<Duration>> = None, read |v| read::duration_or_off(v).map(Some);
    check -> Option<Duration> = |b, s| match b.refresh_after {
        None => Ok(Some(b.cache_ttl / 4 * 3).filter(|after| !after.is_zero())),
        Some(None) => Ok(None),
        Some(Some(after)) if after >= b.cache_ttl => Err(Error::config(
            s,
            format!(
                "{} is not shorter than the cache TTL ({}); use `off` to disable",
                humantime::format_duration(after),
                humantime::format_duration(b.cache_ttl)
            ),
        )),
        Some(Some(after)) => between(s, after, Duration::ZERO, limits::TTL).map(Some),
    };
    set { refresh_after(after: impl Into<Option<Duration>>) => Some(after.into()) }

    /// id6's sign-in page, where [`Id6::require_user`](crate::Id6::require_user) sends a
    /// browser that is not signed in (`303`): an absolute `http(s)` URL without user name or
    /// password, at most 2048 bytes, used verbatim, so bake the way back into it if id6
    /// should return there (`…/login?redirect=https://app/account`). Nothing from the
    /// request ever changes where the redirect points. Unset, guards answer 401 to
    /// browsers too.
    LOGIN_URL = "login_url", "ID6_LOGIN_URL", default "none";
    login_url: Option<String> = None, read |v| Ok(Some(v.to_owned()));
    check -> Option<HeaderValue> = |b, s| match &b.login_url {
        None => Ok(None),
        Some(url) => Url::parse(url.trim())
            .ok()
            .filter(|u| matches!(u.scheme(), "http" | "https") && u.has_host())
            .filter(|u| u.username().is_empty() && u.password().is_none())
            .filter(|u| u.as_str().len() <= limits::TEXT_BYTES * 2)
            .and_then(|u| HeaderValue::try_from(u.as_str()).ok())
            .map(Some)
            .ok_or_else(|| {
                Error::config(
                    s,
                    "must be an absolute http(s) URL without user name or password, \
                     at most 2048 bytes",
                )
            }),
    };
    set { login_url(url: impl Into<String>) => Some(url.into()) }

    /// Origins (`scheme://host[:port]`) whose writes carrying the cookie pass
    /// [`Id6::csrf`](crate::Id6::csrf) besides the request's own (comma-separated in the
    /// environment): a front end on another host of yours, say.
    TRUSTED_ORIGINS = "trusted_origins", "ID6_TRUSTED_ORIGINS", default "none";
    trusted_origins: Vec<String> = Vec::new(), read read::list;
    check -> Box<[Origin]> = |b, s| {
        let parse = |origin: &String| {
            Origin::parse(origin).ok_or_else(|| {
                Error::config(
                    s,
                    format!(
                        "{} is not an origin like `https://app.example` or \
                         `http://localhost:3000`",
                        quoted(origin)
                    ),
                )
            })
        };
        b.trusted_origins.iter().map(parse).collect()
    };
    set {
        trusted_origins<I>(origins: I) where [I: IntoIterator, I::Item: Into<String>]
            => origins.into_iter().map(Into::into).collect()
    }

    /// Answers every rejection of the app your way — the extractors', the guards' and the
    /// CSRF check's — in one place: `hook` gets the [`AuthRejection`] (status, id6's code,
    /// message, path, `Retry-After`) and returns the response, whose `String` body becomes
    /// the service's body. [`AuthRejection::default_response`] is the crate's own answer.
    /// (A guard's `303` to the [`login_url`](Self::login_url) is no rejection: not passed
    /// here. The extractors find the hook in what the layer left in the request: without the
    /// layer, their 500 `id6_layer_missing` is the crate's own. A guard turned to gRPC with
    /// `.grpc()` answers with a gRPC status, not through the hook.)
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
    ON_REJECTION = "on_rejection", "", default "id6's error JSON";
    on_rejection: Option<RejectionHook> = None;
    check -> Option<RejectionHook> = |b, _| Ok(b.on_rejection.clone());
    set {
        on_rejection<F>(hook: F)
            where [F: Fn(&AuthRejection) -> http::Response<String> + Send + Sync + 'static]
            => Some(RejectionHook::new(hook))
    }

    /// Calls id6 through your own `reqwest::Client` (your roots, proxy, pool, or TLS stack)
    /// instead of one built here. [`timeout`](Self::timeout) still bounds every call; the
    /// connect timeout and redirect policy are your client's (id6 never redirects its API:
    /// `reqwest::redirect::Policy::none()` is advised). With it, an `https` id6 URL needs no
    /// TLS feature of this crate.
    HTTP_CLIENT = "http_client", "", default "";
    http_client: Option<reqwest::Client> = None;
    check -> Option<reqwest::Client> = |b, _| Ok(b.http_client.clone());
    set { http_client(client: reqwest::Client) => Some(client) }
}

/// Both halves of the authorization server's settings, or neither.
fn authorization(b: &Id6Builder, s: Setting) -> Result<Option<Authorization>, Error> {
    let secret_setting = setting::AUTHORIZATION_SECRET;
    match (&b.authorization_url, &b.authorization_secret) {
        (None, None) => Ok(None),
        (Some(_), None) => Err(Error::config(
            secret_setting,
            "is needed with ID6_AUTHORIZATION_URL",
        )),
        (None, Some(_)) => Err(Error::config(s, "is needed with ID6_AUTHORIZATION_SECRET")),
        (Some(url), Some(Secret(secret))) => {
            let base = base_url(s, &url.0, TLS || b.http_client.is_some())?;
            let url = Endpoint(join(&base, "authorize"));
            // Visible ASCII (spaces inside it too), as documented: a header takes other bytes
            // (non-ASCII, a tab, white space at either end), which id6 reads as Latin-1 or
            // trims off, so that such a secret would pass here and fail every lookup.
            let visible = !secret.is_empty()
                && secret.trim() == secret
                && secret.bytes().all(|b| b == b' ' || b.is_ascii_graphic());
            let mut secret = HeaderValue::try_from(secret.as_str())
                .ok()
                .filter(|_| visible)
                .ok_or_else(|| Error::config(secret_setting, "must be non-empty visible ASCII"))?;
            secret.set_sensitive(true);
            Ok(Some(Authorization { url, secret }))
        }
    }
}

/// A Redis TLS file's bytes, when the row is set: only with a `rediss://` Redis URL (a file
/// given for a plain-text Redis would promise TLS and give none).
fn tls_file(b: &Id6Builder, s: Setting, path: Option<&Path>) -> Result<Option<Vec<u8>>, Error> {
    let Some(path) = path else {
        return Ok(None);
    };
    let tls_url = b
        .redis
        .as_ref()
        .or(b.redis_cluster.first())
        .or(b.redis_sentinels.first())
        .is_some_and(|Secret(url)| {
            let scheme = url.trim_start().split("://").next().unwrap_or_default();
            scheme.eq_ignore_ascii_case("rediss") || scheme.eq_ignore_ascii_case("valkeys")
        });
    if !tls_url {
        return Err(Error::config(
            s,
            "needs `rediss://` Redis URLs (ID6_REDIS_URL, ID6_REDIS_SENTINELS or \
             ID6_REDIS_CLUSTER): it is for TLS to Redis",
        ));
    }
    values::pem_file(s, path).map(Some)
}

/// 1 to 10⁶ calls over a window of up to a day, at most one per millisecond.
fn miss_limit(b: &Id6Builder, s: Setting) -> Result<Option<MissLimit>, Error> {
    let Some(limit) = b.miss_limit else {
        return Ok(None);
    };
    let calls = count(s, limit.calls(), limits::MISS_CALLS)?;
    let window = between(s, limit.window(), Duration::ZERO, limits::MISS_WINDOW)?;
    // governor counts in whole periods of `window / calls`.
    if window < Duration::from_millis(1) * calls {
        return Err(Error::config(
            s,
            "allows more than one call per millisecond: a longer window, or `off`",
        ));
    }
    Ok(Some(limit))
}

/// One warning for each `ID6_*` variable of the process environment that no setting reads.
fn warn_unknown_vars() {
    let names = std::env::vars_os().map(|(name, _)| name);
    for warning in unknown_vars(names, setting::VARS) {
        tracing::warn!("{warning}");
    }
}

impl Id6Builder {
    pub(crate) fn new(url: impl Into<String>) -> Self {
        let mut builder = Self::defaults();
        builder.url = RawUrl(url.into());
        builder
    }

    /// A builder from the environment: every setter but [`http_client`](Self::http_client),
    /// [`caller_key`](Self::caller_key) and [`on_rejection`](Self::on_rejection) has its
    /// variable, `ID6_URL` (required) for the URL, `ID6_CACHE_TTL` for
    /// [`cache_ttl`](Self::cache_ttl) and so on: the README's configuration table lists
    /// them all, with their defaults and accepted values.
    ///
    /// Durations read like `60s`, `1500ms` or `5m`. A missing, unreadable (not UTF-8) or
    /// out-of-range variable is reported by [`build`](Self::build), naming the variable.
    /// Setters called afterwards override what the environment said.
    ///
    /// An `ID6_*` variable that is none of these (a typo: `ID6_CACHE_TLL`) would be ignored
    /// without a word: each is logged once, as a `tracing` warning naming the nearest known
    /// variable (`ID6_CACHE_TTL`); install a subscriber first to see it.
    pub fn from_env() -> Self {
        warn_unknown_vars();
        Self::from_lookup(|name| std::env::var_os(name), None)
    }

    /// [`from_env`](Self::from_env), with `url` when `ID6_URL` is unset: a development
    /// default (say, an embedded `MockId6`) that still honours every other variable.
    pub fn from_env_or(url: impl Into<String>) -> Self {
        warn_unknown_vars();
        Self::from_lookup(|name| std::env::var_os(name), Some(url.into()))
    }

    /// [`from_env`](Self::from_env) over any lookup, so tests need not touch the process
    /// environment.
    pub(crate) fn from_lookup(
        lookup: impl Fn(&str) -> Option<OsString>,
        default_url: Option<String>,
    ) -> Self {
        let mut env = Env {
            lookup,
            first_error: None,
        };
        let mut builder = Id6Builder::defaults();
        match (env.text(setting::URL), default_url) {
            (Some(url), _) | (None, Some(url)) => builder.url = RawUrl(url),
            (None, None) if env.first_error.is_none() => env.fail(setting::URL, "is not set"),
            (None, None) => {}
        }
        builder.read_env(&mut env);
        builder.deferred = env.first_error;
        builder
    }

    /// Every setting checked, handed out part by part as plain data.
    pub(crate) fn validate(self) -> Result<Settings, Error> {
        let c = self.check()?;
        // The server's URL, or with Sentinel the first Sentinel's (whose user and password
        // reach the master too).
        let sentinels = c.redis_sentinel_master.map(|master| Sentinels {
            urls: c.redis_sentinels.clone(),
            master,
        });
        let cluster = (!c.redis_cluster.is_empty()).then(|| c.redis_cluster.clone());
        let url = c
            .redis
            .or_else(|| c.redis_sentinels.first().cloned())
            .or_else(|| c.redis_cluster.first().cloned());
        let redis = url.map(|url| RedisSettings {
            url,
            sentinels,
            cluster,
            prefix: c.redis_prefix,
            timeout: c.redis_timeout,
            positive_ttl: c.cache_ttl,
            negative_ttl: c.negative_ttl,
            max_value_bytes: c.max_body_bytes,
            ca_pem: c.redis_ca_file,
            client_pem: c.redis_client_cert.zip(c.redis_client_key),
        });
        let http = HttpSettings {
            dead_cookie: c.dead_cookie_attributes,
            login_url: c.login_url,
            trusted_origins: c.trusted_origins,
            bearer: c.token_locations.contains(&TokenLocation::Bearer),
        };
        // One clock for the cache and the breaker, so a test moves both.
        let clock = Clock::default();
        let resolver = ResolverSettings {
            cookie_name: c.cookie_name.clone(),
            token_locations: c.token_locations,
            jwt_secret: c.jwt_secret,
            token_lifetime: c.token_lifetime,
            cache_ttl: c.cache_ttl,
            negative_ttl: c.negative_ttl,
            max_capacity: c.max_capacity,
            on_unavailable: c.on_unavailable,
            // An invalidation mark must outlive any load that started before it: a wait for a
            // call slot, the call, and with Redis up to four operations (get, revocation
            // check and eviction, store).
            mark_lifetime: c.timeout * 2
                + c.queue_timeout
                + redis.as_ref().map_or(Duration::ZERO, |r| r.timeout * 4)
                + Duration::from_secs(1),
            refresh_after: c.refresh_after,
            miss_limit: c.miss_limit,
            trusted_proxies: c.trusted_proxies,
            caller_key: c.caller_key,
            clock: clock.clone(),
        };
        let client = ClientSettings {
            user_url: Endpoint(join(&c.url, "user")),
            base_url: Endpoint(c.url),
            authorization: c.authorization_url,
            cookie_name: c.cookie_name,
            timeout: c.timeout,
            connect_timeout: c.connect_timeout,
            max_body_bytes: c.max_body_bytes,
            max_concurrent_calls: c.max_concurrent_calls,
            queue_timeout: c.queue_timeout,
            max_backoff: c.max_backoff,
            http: c.http_client,
            clock,
        };
        Ok(Settings {
            client,
            resolver,
            redis,
            http,
            rejection_hook: c.on_rejection,
            max_picture_bytes: c.max_picture_bytes,
        })
    }
}

/// What the builder checked, handed out part by part: each part of the handle receives its
/// own settings and nothing else.
#[derive(Debug, Clone)]
pub(crate) struct Settings {
    pub(crate) client: ClientSettings,
    pub(crate) resolver: ResolverSettings,
    pub(crate) redis: Option<RedisSettings>,
    pub(crate) http: HttpSettings,
    /// The app's own answer to every rejection.
    pub(crate) rejection_hook: Option<RejectionHook>,
    /// For the typed calls: the cap on a picture, up or down.
    pub(crate) max_picture_bytes: u64,
}

/// Where and how to call id6.
#[derive(Clone)]
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

impl fmt::Debug for ClientSettings {
    /// Every value but the user's own client (whose `Debug` is reqwest's to decide) and the
    /// clock.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientSettings")
            .field("base_url", &self.base_url)
            .field("user_url", &self.user_url)
            .field("authorization", &self.authorization)
            .field("cookie_name", &self.cookie_name)
            .field("timeout", &self.timeout)
            .field("connect_timeout", &self.connect_timeout)
            .field("max_body_bytes", &self.max_body_bytes)
            .field("max_concurrent_calls", &self.max_concurrent_calls)
            .field("queue_timeout", &self.queue_timeout)
            .field("max_backoff", &self.max_backoff)
            .field("own_client", &self.http.is_some())
            .finish_non_exhaustive()
    }
}

/// How a request's token is found, screened, cached and answered for when id6 cannot be:
/// the resolver builds its token finder, screen and caller finder from these.
#[derive(Debug, Clone)]
pub(crate) struct ResolverSettings {
    /// The cookie that carries the token.
    pub(crate) cookie_name: Box<str>,
    /// Where to look for the token, in order.
    pub(crate) token_locations: Box<[TokenLocation]>,
    /// id6's secret, to verify tokens locally (never printed).
    pub(crate) jwt_secret: Option<Secret>,
    pub(crate) token_lifetime: Duration,
    pub(crate) cache_ttl: Duration,
    pub(crate) negative_ttl: Duration,
    pub(crate) max_capacity: u64,
    pub(crate) on_unavailable: OnUnavailable,
    /// How long an invalidation mark must outlive any load that started before it.
    pub(crate) mark_lifetime: Duration,
    /// Past this age, a cached user is served and refreshed in the background.
    pub(crate) refresh_after: Option<Duration>,
    /// The per-caller budget of id6 calls for unknown tokens, and how callers are told
    /// apart: the address behind this many proxies, or the user's key.
    pub(crate) miss_limit: Option<MissLimit>,
    pub(crate) trusted_proxies: usize,
    pub(crate) caller_key: Option<CallerKey>,
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
    /// Bearer tokens are accepted: 401s carry a `WWW-Authenticate: Bearer` challenge.
    pub(crate) bearer: bool,
}

/// The second level on Redis (feature `redis`; refused by `build` without it).
#[derive(Clone)]
#[allow(dead_code)] // read by the `redis` module, which only the feature compiles
pub(crate) struct RedisSettings {
    /// May carry a password: never printed. With Sentinel, the first Sentinel's.
    pub(crate) url: String,
    /// Redis found through these Sentinels, if set.
    pub(crate) sentinels: Option<Sentinels>,
    /// A Redis Cluster's seed nodes, if set (may carry passwords: never printed).
    pub(crate) cluster: Option<Vec<String>>,
    /// Prefix of every key and of the invalidation channel.
    pub(crate) prefix: String,
    /// Bound on one Redis operation.
    pub(crate) timeout: Duration,
    /// Expiries of shared answers: the local TTLs.
    pub(crate) positive_ttl: Duration,
    pub(crate) negative_ttl: Duration,
    /// The cap on a value read back: id6's own body cap, as what is stored came from id6.
    pub(crate) max_value_bytes: usize,
    /// For `rediss://`: the CA bundle to verify Redis against instead of the public roots.
    pub(crate) ca_pem: Option<Vec<u8>>,
    /// For mutual TLS: the client certificate chain and its key (the key is never printed).
    pub(crate) client_pem: Option<(Vec<u8>, Vec<u8>)>,
}

/// A Sentinel group: where its Sentinels listen, and the name of the master they watch.
#[derive(Clone)]
#[allow(dead_code)] // read by the `redis` module, which only the feature compiles
pub(crate) struct Sentinels {
    /// May carry passwords: never printed.
    pub(crate) urls: Vec<String>,
    pub(crate) master: String,
}

impl fmt::Debug for RedisSettings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisSettings")
            .field("url", &"<redacted>")
            .field("cluster_seeds", &self.cluster.as_ref().map(Vec::len))
            .field("prefix", &self.prefix)
            .field("timeout", &self.timeout)
            .field("own_ca", &self.ca_pem.is_some())
            .field("client_cert", &self.client_pem.is_some())
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::values::redact_userinfo;
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
    fn one_redis_topology_at_a_time_and_sentinels_with_their_master() {
        let both = env(&[
            ("ID6_URL", "http://h"),
            ("ID6_REDIS_URL", "redis://:s3cret@127.0.0.1:6379"),
            ("ID6_REDIS_SENTINELS", "redis://:s3cret@127.0.0.1:26379"),
            ("ID6_REDIS_SENTINEL_MASTER", "mymaster"),
        ]);
        let line = both.validate().unwrap_err().to_string();
        assert!(
            line.contains("ID6_REDIS_URL") && line.contains("ID6_REDIS_SENTINELS"),
            "{line}"
        );
        assert!(!line.contains('\n') && !line.contains("s3cret"), "{line}");
        let no_master = env(&[
            ("ID6_URL", "http://h"),
            ("ID6_REDIS_SENTINELS", "redis://127.0.0.1:26379"),
        ]);
        let error = no_master.validate().unwrap_err();
        assert_eq!(error.variable(), Some("ID6_REDIS_SENTINELS"));
        assert!(
            error.to_string().contains("ID6_REDIS_SENTINEL_MASTER"),
            "{error}"
        );
        let builder = Id6Builder::new("http://h")
            .redis_sentinels(["redis://:s3cret@a:26379", "redis://:s3cret@b:26379"], "m");
        assert!(!format!("{builder:?}").contains("s3cret"));
        let settings = builder.validate().unwrap();
        let redis = settings.redis.unwrap();
        assert!(!format!("{redis:?}").contains("s3cret"));
        let sentinels = redis.sentinels.unwrap();
        assert_eq!((sentinels.urls.len(), sentinels.master.as_str()), (2, "m"));
    }

    #[test]
    fn a_cluster_is_one_topology_and_its_prefix_has_no_hash_tag() {
        for (other, value) in [
            ("ID6_REDIS_URL", "redis://:s3cret@127.0.0.1:6379"),
            ("ID6_REDIS_SENTINELS", "redis://:s3cret@127.0.0.1:26379"),
        ] {
            let mut vars = vec![
                ("ID6_URL", "http://h"),
                (other, value),
                ("ID6_REDIS_CLUSTER", "redis://:s3cret@127.0.0.1:7000"),
            ];
            if other == "ID6_REDIS_SENTINELS" {
                vars.push(("ID6_REDIS_SENTINEL_MASTER", "mymaster"));
            }
            let both = env(&vars);
            let line = both.validate().unwrap_err().to_string();
            assert!(
                line.contains(other) && line.contains("ID6_REDIS_CLUSTER"),
                "{line}"
            );
            assert!(!line.contains('\n') && !line.contains("s3cret"), "{line}");
        }
        let braces = env(&[
            ("ID6_URL", "http://h"),
            ("ID6_REDIS_CLUSTER", "redis://127.0.0.1:7000"),
            ("ID6_REDIS_PREFIX", "{app}:"),
        ]);
        assert_eq!(
            braces.validate().unwrap_err().variable(),
            Some("ID6_REDIS_PREFIX")
        );
        let builder = Id6Builder::new("http://h")
            .redis_cluster(["redis://:s3cret@a:7000", "redis://:s3cret@b:7001"]);
        assert!(!format!("{builder:?}").contains("s3cret"));
        let redis = builder.validate().unwrap().redis.unwrap();
        assert!(!format!("{redis:?}").contains("s3cret"));
        assert_eq!(redis.cluster.map(|seeds| seeds.len()), Some(2));
        assert!(redis.sentinels.is_none());
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
            let user = join(&base_url(setting::URL, base, true).unwrap(), "user");
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
            ("ID6_MAX_CAPACITY", "42"),
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
            ("ID6_TOKEN_LOCATIONS", "bearer, cookie"),
        ]);
        assert!(both.validate().is_ok());
        let bad = env(&[
            ("ID6_URL", "http://h"),
            ("ID6_TOKEN_LOCATIONS", "cookie,header"),
        ]);
        assert_eq!(
            bad.validate().unwrap_err().variable(),
            Some("ID6_TOKEN_LOCATIONS")
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
        let bad = env(&[("ID6_URL", "http://h"), ("ID6_MAX_CAPACITY", "-1")])
            .validate()
            .unwrap_err();
        assert_eq!(bad.variable(), Some("ID6_MAX_CAPACITY"));
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
            // Files are read by `build`: the partner is any readable file, so that the row
            // under test is the one that refuses (no value tried here names a readable file).
            "ID6_REDIS_CA_FILE" | "ID6_REDIS_CLIENT_CERT" | "ID6_REDIS_CLIENT_KEY" => {
                vars.push(("ID6_REDIS_URL", "rediss://127.0.0.1:9".into()));
                let readable = concat!(env!("CARGO_MANIFEST_DIR"), "/Cargo.toml");
                match setting.var {
                    "ID6_REDIS_CLIENT_CERT" => vars.push(("ID6_REDIS_CLIENT_KEY", readable.into())),
                    "ID6_REDIS_CLIENT_KEY" => vars.push(("ID6_REDIS_CLIENT_CERT", readable.into())),
                    _ => {}
                }
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
                | "ID6_REDIS_CLUSTER"
                | "ID6_REDIS_PREFIX"
                | "ID6_REDIS_CA_FILE"
                | "ID6_REDIS_CLIENT_CERT"
                | "ID6_REDIS_CLIENT_KEY"
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
        for &(setting, _) in setting::ALL.iter().filter(|(s, _)| !s.var.is_empty()) {
            for (what, value) in &values {
                let mut vars = companions(setting);
                vars.push((setting.var, value.clone()));
                match env_os(&vars).validate() {
                    Ok(settings) => {
                        // What is accepted builds, or is refused by name (a Redis URL that
                        // does not parse, or Redis without its feature): never a panic.
                        if let Err(err) = Id6::from_settings(settings) {
                            assert!(
                                matches!(
                                    err.variable(),
                                    Some("ID6_REDIS_URL" | "ID6_REDIS_CLUSTER")
                                ),
                                "{err}"
                            );
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
            // Under the documented minimum of 1 ms.
            (b().timeout(Duration::from_micros(999)), "timeout"),
            (b().cache_ttl(Duration::from_nanos(1)), "cache_ttl"),
            (
                b().token_lifetime(Duration::from_nanos(1)),
                "token_lifetime",
            ),
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
        assert_eq!(
            s.miss_limit,
            Some(MissLimit::new(30, Duration::from_secs(60)))
        );
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
    fn redis_tls_files_are_read_by_build_and_need_rediss() {
        let readable = concat!(env!("CARGO_MANIFEST_DIR"), "/Cargo.toml");
        let tls = || Id6Builder::new("http://h").redis("rediss://u:S3CRET@127.0.0.1:9");
        let s = tls()
            .redis_ca_file(readable)
            .redis_client_cert(readable, readable)
            .validate()
            .unwrap();
        let redis = s.redis.as_ref().unwrap();
        assert!(redis.ca_pem.is_some() && redis.client_pem.is_some());
        // The key's bytes (here the manifest) and the URL's password stay out of Debug.
        let shown = format!("{s:?}");
        assert!(
            !shown.contains("S3CRET") && !shown.contains("[package]"),
            "{shown}"
        );
        let refused = |builder: Id6Builder| builder.validate().unwrap_err();
        for (builder, var) in [
            (
                tls().redis_ca_file("/nonexistent/ca.pem"),
                "ID6_REDIS_CA_FILE",
            ),
            (tls().redis_ca_file("/"), "ID6_REDIS_CA_FILE"),
            (tls().redis_ca_file("/dev/null"), "ID6_REDIS_CA_FILE"),
            (tls().redis_ca_file("/dev/zero"), "ID6_REDIS_CA_FILE"),
            (
                tls().redis_client_cert("/nonexistent/c.pem", readable),
                "ID6_REDIS_CLIENT_CERT",
            ),
            (
                tls().redis_client_cert(readable, "/nonexistent/k.pem"),
                "ID6_REDIS_CLIENT_KEY",
            ),
            // A file for a plain-text Redis would promise TLS and give none.
            (
                Id6Builder::new("http://h")
                    .redis("redis://127.0.0.1:9")
                    .redis_ca_file(readable),
                "ID6_REDIS_CA_FILE",
            ),
            (
                Id6Builder::new("http://h").redis_client_cert(readable, readable),
                "ID6_REDIS_CLIENT_CERT",
            ),
        ] {
            let err = refused(builder);
            assert_eq!(err.variable(), Some(var), "{err}");
            let line = err.to_string();
            assert!(!line.contains('\n') && !line.contains("S3CRET"), "{line}");
        }
        // One of the pair without the other, from the environment: the missing one is named.
        let half = |var: &str, missing: &str| {
            let err = env(&[
                ("ID6_URL", "http://h"),
                ("ID6_REDIS_URL", "rediss://127.0.0.1:9"),
                (var, readable),
            ])
            .validate()
            .unwrap_err();
            assert_eq!(err.variable(), Some(missing), "{err}");
        };
        half("ID6_REDIS_CLIENT_CERT", "ID6_REDIS_CLIENT_KEY");
        half("ID6_REDIS_CLIENT_KEY", "ID6_REDIS_CLIENT_CERT");
    }

    #[test]
    fn https_without_tls_names_the_features() {
        let url = reqwest::Url::parse("https://id6.example.com/api/").unwrap();
        let err = values::https_possible(setting::URL, &url, false).unwrap_err();
        assert_eq!(err.variable(), Some("ID6_URL"));
        assert!(err.to_string().contains("`rustls`"), "{err}");
        assert!(err.to_string().contains("`native-tls`"), "{err}");
        assert!(values::https_possible(setting::URL, &url, true).is_ok());
        let plain = reqwest::Url::parse("http://10.0.0.2:3001/").unwrap();
        assert!(values::https_possible(setting::URL, &plain, false).is_ok());
        // Your own client speaks whatever TLS your build has.
        let own =
            Id6Builder::new("https://id6.example.com/api").http_client(reqwest::Client::new());
        assert!(own.validate().unwrap().client.http.is_some());
    }

    /// The README's configuration table is the rows' public face: every variable and default
    /// of the table is in it, and it names no setter or variable the table lacks.
    #[test]
    fn the_readme_table_and_the_rows_agree() {
        let lines = readme_table();
        let cells = readme_cells;
        for &(setting, shown) in setting::ALL {
            if shown.is_empty() {
                continue; // Not in the table (`http_client`).
            }
            let wanted = if setting.var.is_empty() {
                format!("`.{}(", setting.setter)
            } else {
                format!("`{}`", setting.var)
            };
            let column = usize::from(!setting.var.is_empty());
            let line = lines
                .iter()
                .find(|line| cells(line)[column].contains(&wanted))
                .unwrap_or_else(|| panic!("{wanted} is not in the README's table"));
            let row = cells(line);
            let setter = match setting.setter {
                "url" => "Id6::builder(url)".to_owned(),
                setter => format!(".{setter}("),
            };
            assert!(
                row[0].contains(&setter),
                "{wanted}: the README names the setter {}",
                row[0]
            );
            assert!(
                row[2].contains(shown),
                "{wanted}: the README's default is {}, the row's {shown}",
                row[2]
            );
        }
        for line in &lines {
            let row = cells(line);
            for var in row[1].split('`').filter(|word| word.starts_with("ID6_")) {
                assert!(
                    setting::ALL.iter().any(|(s, _)| s.var == var),
                    "the README's {var} is no row"
                );
            }
            let setter = row[0]
                .trim_start_matches('`')
                .trim_start_matches("Id6::builder(")
                .trim_start_matches('.');
            let setter = setter.split(['(', '`']).next().unwrap();
            let setter = if setter == "url)" || setter.is_empty() {
                "url"
            } else {
                setter
            };
            assert!(
                setting::ALL.iter().any(|(s, _)| s.setter == setter),
                "the README's {} is no row",
                row[0]
            );
        }
    }

    /// The lines of the README's configuration table, below its header.
    fn readme_table() -> Vec<&'static str> {
        let readme = include_str!("../../README.md");
        let section = readme.split("\n## Configuration\n").nth(1).unwrap();
        let lines: Vec<&str> = section
            .lines()
            .skip_while(|line| !line.starts_with("| builder"))
            .skip(2)
            .take_while(|line| line.starts_with('|'))
            .collect();
        assert!(lines.len() > 20, "the table was not found");
        lines
    }

    /// A line of the README's table, cut into its cells.
    fn readme_cells(line: &str) -> Vec<String> {
        line.trim_matches('|')
            .split(" | ")
            .map(|c| c.trim().to_owned())
            .collect()
    }

    /// Every minimum the README's table documents ("1 ms – 5 min", "1 – 10⁸",
    /// `stale:<1 ms – 365 d>`) is the one `build` enforces: a value just below it, given in
    /// the environment, is refused naming the variable.
    #[test]
    fn a_value_below_each_documented_minimum_is_refused_by_name() {
        let mut tried = 0;
        for line in readme_table() {
            let row = readme_cells(line);
            let accepted = row[3].as_str();
            let below: &[&str] = if accepted.starts_with("1 ms –") {
                &["999us", "1ns"]
            } else if accepted.starts_with("1 s –") {
                &["999ms"]
            } else if accepted.starts_with("1 –") {
                &["0"]
            } else if accepted.contains("`stale:<1 ms –") {
                &["stale:999us", "stale:1ns"]
            } else if accepted.starts_with("`<1 – 10⁶>/<1 ms –") {
                &["0/1m", "1/999us", "1/1ns"]
            } else {
                // No minimum, or 0 (`trusted_proxies`): nothing below it can be typed.
                assert!(
                    !accepted.starts_with(|c: char| c.is_ascii_digit())
                        || accepted.starts_with("0 –"),
                    "a minimum this test does not know: {accepted}"
                );
                continue;
            };
            for var in row[1].split('`').filter(|word| word.starts_with("ID6_")) {
                let setting = setting::ALL
                    .iter()
                    .map(|(s, _)| *s)
                    .find(|s| s.var == var)
                    .unwrap();
                for value in below {
                    let mut vars = companions(setting);
                    vars.push((var, OsString::from(value)));
                    match env_os(&vars).validate() {
                        Ok(_) => panic!("{var}={value} is below the README's {accepted}, accepted"),
                        Err(err) => assert_eq!(err.variable(), Some(var), "{var}={value}: {err}"),
                    }
                    tried += 1;
                }
            }
        }
        assert!(tried >= 20, "only {tried} values tried");
    }

    /// `ID6_AUTHORIZATION_SECRET` is non-empty visible ASCII, as documented: a header value
    /// takes more (non-ASCII, which id6 reads as Latin-1 and never matches; a tab; white
    /// space at either end, which the server trims off), and each would fail every lookup.
    /// A space inside stays accepted.
    #[test]
    fn an_authorization_secret_outside_visible_ascii_is_refused() {
        let with = |secret: &str| {
            Id6Builder::new("http://127.0.0.1:1/api")
                .authorization("http://127.0.0.1:1", secret)
                .validate()
        };
        assert!(with("s3cret-Value_1!").is_ok() && with("two words").is_ok());
        for secret in ["", "sécret", "a\tb", " secret", "secret "] {
            let error = with(secret).expect_err(&format!("{secret:?} accepted"));
            assert_eq!(error.variable(), Some("ID6_AUTHORIZATION_SECRET"));
            if !secret.is_empty() {
                let shown = format!("{error} {error:?}");
                assert!(
                    !shown.contains(secret),
                    "the refusal shows the secret: {shown}"
                );
            }
        }
    }

    /// `ID6_DEAD_COOKIE_ATTRIBUTES` is at most 1024 bytes of visible ASCII: a non-ASCII byte
    /// or a tab would go out in `Set-Cookie`.
    #[test]
    fn dead_cookie_attributes_outside_visible_ascii_are_refused() {
        let with = |attributes: &str| {
            Id6Builder::new("http://127.0.0.1:1/api")
                .clear_dead_cookie(true)
                .dead_cookie_attributes(attributes)
                .validate()
        };
        assert!(with("Max-Age=0; Path=/; Domain=app.example; Secure; SameSite=Lax").is_ok());
        for attributes in ["Max-Age=0; Path=/café", "Max-Age=0;\tPath=/"] {
            let error = with(attributes).expect_err(&format!("{attributes:?} accepted"));
            assert_eq!(error.variable(), Some("ID6_DEAD_COOKIE_ATTRIBUTES"));
        }
    }
}
