//! Reading the builder's settings from environment variables: one per setter, named in every
//! error.

use std::ffi::OsString;
use std::str::FromStr;
use std::time::Duration;

use super::builder::{RawUrl, Secret};
use super::{quoted, setting, MissLimit, OnUnavailable, Setting};
use crate::config::Id6Builder;
use crate::error::Error;
use crate::token::TokenLocation;

impl Id6Builder {
    /// A builder from the environment. Every setter has its variable (see the README's
    /// configuration table): `ID6_URL` (required), `ID6_COOKIE_NAME`, `ID6_CACHE_TTL`,
    /// `ID6_NEGATIVE_TTL`, `ID6_CACHE_CAPACITY`, `ID6_TIMEOUT`, `ID6_CONNECT_TIMEOUT`,
    /// `ID6_QUEUE_TIMEOUT`, `ID6_MAX_BACKOFF`, `ID6_MAX_BODY_BYTES`, `ID6_MAX_PICTURE_BYTES`,
    /// `ID6_TOKEN_SOURCES` (`cookie`, `bearer` or both, comma-separated, in order),
    /// `ID6_JWT_SECRET`, `ID6_TOKEN_LIFETIME`, `ID6_ON_UNAVAILABLE`,
    /// `ID6_MAX_CONCURRENT_CALLS`, `ID6_AUTHORIZATION_URL` + `ID6_AUTHORIZATION_SECRET`,
    /// `ID6_CLEAR_DEAD_COOKIE`, `ID6_DEAD_COOKIE_ATTRIBUTES`, and with feature `redis`
    /// `ID6_REDIS_URL`, `ID6_REDIS_PREFIX`, `ID6_REDIS_TIMEOUT`; `ID6_MISS_LIMIT` (`30/1m` or
    /// `off`), `ID6_TRUSTED_PROXIES`, `ID6_REFRESH_AFTER` (a duration or `off`);
    /// `ID6_LOGIN_URL`, `ID6_TRUSTED_ORIGINS` (comma-separated).
    ///
    /// Durations read like `60s`, `1500ms` or `5m`. A missing, unreadable (not UTF-8) or
    /// out-of-range variable is reported by [`build`](Self::build), naming the variable.
    /// Setters called afterwards override what the environment said.
    pub fn from_env() -> Self {
        Self::from_lookup(|name| std::env::var_os(name), None)
    }

    /// [`from_env`](Self::from_env), with `url` when `ID6_URL` is unset: a development
    /// default (say, an embedded `MockId6`) that still honours
    /// every other variable.
    pub fn from_env_or(url: impl Into<String>) -> Self {
        Self::from_lookup(|name| std::env::var_os(name), Some(url.into()))
    }

    /// [`from_env`](Self::from_env) over any lookup, so tests need not touch the process
    /// environment.
    pub(crate) fn from_lookup(
        lookup: impl Fn(&str) -> Option<OsString>,
        default_url: Option<String>,
    ) -> Self {
        use setting::*;
        let mut env = Env {
            lookup,
            first_error: None,
        };
        let mut b = Id6Builder::new(String::new());
        match (env.text(URL), default_url) {
            (Some(url), _) | (None, Some(url)) => b.url = RawUrl(url),
            (None, None) if env.first_error.is_none() => env.fail(URL, "is not set"),
            (None, None) => {}
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
        b.redis_url = env.text(REDIS_URL).map(Secret);
        if let Some(prefix) = env.text(REDIS_PREFIX) {
            b.redis_prefix = prefix;
        }
        if let Some(d) = env.duration(REDIS_TIMEOUT) {
            b.redis_timeout = d;
        }
        b.login_url = env.text(LOGIN_URL);
        if let Some(value) = env.text(TRUSTED_ORIGINS) {
            b.trusted_origins = value
                .split(',')
                .map(str::trim)
                .filter(|origin| !origin.is_empty())
                .map(str::to_owned)
                .collect();
        }
        if let Some(value) = env.text(MISS_LIMIT) {
            match MissLimit::parse(&value) {
                Some(limit) => b.miss_limit = limit,
                None => env.fail(
                    MISS_LIMIT,
                    format!(
                        "{} is not `<calls>/<window>` (e.g. `30/1m`) or `off`",
                        quoted(&value)
                    ),
                ),
            }
        }
        if let Some(hops) = env.number(TRUSTED_PROXIES) {
            b.trusted_proxies = hops;
        }
        if let Some(value) = env.text(REFRESH_AFTER) {
            if value.trim().eq_ignore_ascii_case("off") {
                b.refresh_after = Some(None);
            } else {
                match humantime::parse_duration(value.trim()) {
                    Ok(after) => b.refresh_after = Some(Some(after)),
                    Err(_) => env.fail(
                        REFRESH_AFTER,
                        format!("{} is not a duration like `45s`, or `off`", quoted(&value)),
                    ),
                }
            }
        }
        b.deferred = env.first_error;
        b
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
