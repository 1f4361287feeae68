//! The values settings hold, and how one is read and range-checked: plain data and plain
//! functions, shared by every row of the table in `mod.rs`.

use std::borrow::Cow;
use std::ffi::OsString;
use std::fmt;
use std::io::Read;
use std::ops::Deref;
use std::path::Path;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use http::{Extensions, HeaderMap, HeaderValue};
use reqwest::Url;

use crate::error::{Error, Setting};
use crate::token::TokenLocation;

pub(super) const DAY: Duration = Duration::from_secs(24 * 3600);

/// The accepted range of each bounded setting. Upper bounds sit far above any sensible
/// value and far below what would overflow a clock or a library's own limit.
pub(super) mod limits {
    use super::DAY;
    use std::time::Duration;

    /// A cached answer outliving a year is a revocation never seen (moka's limit: 1000 y).
    pub(in crate::config) const TTL: Duration = Duration::from_secs(365 * DAY.as_secs());
    /// A wait on id6, a call slot or Redis: Envoy and nginx bound theirs in seconds.
    pub(in crate::config) const WAIT: Duration = Duration::from_secs(300);
    /// id6's own rate-limit window is 60 s; an hour is the longest pause worth honouring.
    pub(in crate::config) const BACKOFF_MIN: Duration = Duration::from_secs(1);
    pub(in crate::config) const BACKOFF: Duration = Duration::from_secs(3600);
    /// id6's tokens live 30 days by default; a century keeps every expiry representable.
    pub(in crate::config) const TOKEN_LIFETIME: Duration =
        Duration::from_secs(36_500 * DAY.as_secs());
    pub(in crate::config) const CONCURRENT_CALLS: usize = 10_000;
    pub(in crate::config) const CAPACITY: u64 = 100_000_000;
    /// A user is a few hundred bytes.
    pub(in crate::config) const BODY_BYTES: usize = 16 * 1024 * 1024;
    pub(in crate::config) const PICTURE_BYTES: u64 = 1024 * 1024 * 1024;
    /// Names, prefixes and cookie attributes: a header's worth at most.
    pub(in crate::config) const TEXT_BYTES: usize = 1024;
    /// A miss budget's calls per window: far above id6's own 100 per minute.
    pub(in crate::config) const MISS_CALLS: u32 = 1_000_000;
    /// A miss budget's window: id6's is a minute; a day is the longest worth counting.
    pub(in crate::config) const MISS_WINDOW: Duration = DAY;
    /// Proxies in front of the app whose `X-Forwarded-For` entries are trusted.
    pub(in crate::config) const PROXY_HOPS: usize = 16;
    /// A PEM file (a CA bundle, a certificate chain, a key): the whole public-root bundle is
    /// a quarter of this; past it, the path names something else (`/dev/zero`, a log).
    pub(in crate::config) const PEM_BYTES: u64 = 1024 * 1024;
}

/// Whether this build can speak HTTPS on its own.
pub(super) const TLS: bool = cfg!(any(feature = "rustls", feature = "native-tls"));

/// A secret held by the builder and the settings: `Debug` never shows it.
#[derive(Clone)]
pub(crate) struct Secret(pub(crate) String);

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

/// A URL held by the builder: `Debug` hides its userinfo, even when it does not parse.
#[derive(Clone)]
pub(crate) struct RawUrl(pub(crate) String);

impl fmt::Debug for RawUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&redact_userinfo(&self.0), f)
    }
}

/// An id6 URL whose `Debug` and `Display` never show a user name or password it carries.
#[derive(Clone)]
pub(crate) struct Endpoint(pub(super) Url);

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

/// How many id6 calls one caller's unknown tokens may cost, at once and per window: a flood
/// of forged tokens from one address spends at most this much of id6's rate limit, and the
/// other callers keep the rest.
///
/// ```
/// use std::time::Duration;
/// use id6_tower::MissLimit;
///
/// let limit = MissLimit::new(30, Duration::from_secs(60)); // `30/1m` in the environment
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
}

/// A web origin, normalised: lowercase scheme and host, default port left out.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Origin {
    scheme: String,
    /// `host[:port]`, the port only when not the scheme's default.
    authority: String,
}

impl Origin {
    /// `scheme://host[:port]` and nothing else (no path, userinfo, query); `None` otherwise.
    pub(crate) fn parse(text: &str) -> Option<Self> {
        let (scheme, rest) = text.trim().split_once("://")?;
        let scheme = scheme.to_ascii_lowercase();
        let default_port = match scheme.as_str() {
            "http" => "80",
            "https" => "443",
            _ => return None,
        };
        if rest.is_empty() || rest.contains(['/', '?', '#', '@', ' ']) {
            return None;
        }
        let authority = rest.to_ascii_lowercase();
        let authority = match authority.rsplit_once(':') {
            // Not the inside of an IPv6 literal: a port.
            Some((host, port)) if !port.contains(']') => {
                if port.is_empty() || !port.bytes().all(|b| b.is_ascii_digit()) {
                    return None;
                }
                if port == default_port {
                    host.to_owned()
                } else {
                    authority.clone()
                }
            }
            _ => authority,
        };
        Some(Origin { scheme, authority })
    }

    /// Whether `host` (a `Host` header) names this origin's host and port. The scheme is not
    /// in `Host`: behind a TLS terminator, `https://app` and a `Host: app` are the same site.
    pub(crate) fn has_authority(&self, host: &str) -> bool {
        let host = host.trim().to_ascii_lowercase();
        let host = host
            .strip_suffix(":80")
            .filter(|_| self.scheme == "http")
            .or_else(|| host.strip_suffix(":443").filter(|_| self.scheme == "https"))
            .unwrap_or(&host);
        host == self.authority
    }
}

type KeyFn = dyn Fn(&HeaderMap, &Extensions) -> Option<String> + Send + Sync;

/// The user's function naming a request's caller.
#[derive(Clone)]
pub(crate) struct CallerKey(Arc<KeyFn>);

impl CallerKey {
    pub(crate) fn new(
        key: impl Fn(&HeaderMap, &Extensions) -> Option<String> + Send + Sync + 'static,
    ) -> Self {
        CallerKey(Arc::new(key))
    }

    /// The caller's name, as the user's function gives it.
    pub(crate) fn name(&self, headers: &HeaderMap, extensions: &Extensions) -> Option<String> {
        (self.0)(headers, extensions)
    }
}

impl fmt::Debug for CallerKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("CallerKey(..)")
    }
}

/// A typed value as an error message quotes it: at most 64 characters, so that a pasted
/// blob does not become a log line of its own.
pub(super) fn quoted(value: &str) -> String {
    match value.char_indices().nth(64) {
        Some((end, _)) => format!("`{}…`", &value[..end]),
        None => format!("`{value}`"),
    }
}

/// The shortest duration any setting accepts, as the README's table documents: a wait or a
/// TTL under a millisecond is a unit mistaken (`from_nanos` for `from_millis`), not a choice.
const SHORTEST: Duration = Duration::from_millis(1);

/// `value` when `min <= value <= max`, and never under [`SHORTEST`] (a zero is never a usable
/// wait or TTL).
pub(super) fn between(
    setting: Setting,
    value: Duration,
    min: Duration,
    max: Duration,
) -> Result<Duration, Error> {
    if value.is_zero() {
        return Err(Error::config(setting, "must be more than zero"));
    }
    let min = min.max(SHORTEST);
    if value < min || value > max {
        return Err(Error::config(
            setting,
            format!(
                "{} is out of range: between {} and {}",
                humantime::format_duration(value),
                human(min),
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
pub(super) fn count<T: PartialOrd + From<u8> + fmt::Display + Copy>(
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

/// An id6 base URL, which may carry a path such as `/api`, normalised to end in `/`; an
/// `https` one is refused, naming the features to enable, when no TLS can serve it.
pub(super) fn base_url(setting: Setting, base: &str, tls: bool) -> Result<Url, Error> {
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
    https_possible(setting, &url, tls)?;
    Ok(url)
}

/// An `https` URL is refused, naming the features to enable, when no TLS can serve it.
pub(super) fn https_possible(setting: Setting, url: &Url, tls: bool) -> Result<(), Error> {
    if url.scheme() == "https" && !tls {
        return Err(Error::config(
            setting,
            "is https, but id6-tower was built without TLS: enable its `rustls` (default) \
             or `native-tls` feature, or pass your own client (`http_client`)",
        ));
    }
    Ok(())
}

/// A PEM file's bytes, read at `build`: unreadable, empty or over the cap is an error naming
/// `setting` (the file's contents are parsed where TLS is compiled, `redis::connect`).
pub(super) fn pem_file(setting: Setting, path: &Path) -> Result<Vec<u8>, Error> {
    let shown = quoted(&path.display().to_string());
    let unreadable =
        |e: std::io::Error| Error::config(setting, format!("cannot read {shown}: {e}"));
    let mut bytes = Vec::new();
    std::fs::File::open(path)
        .and_then(|file| file.take(limits::PEM_BYTES + 1).read_to_end(&mut bytes))
        .map_err(unreadable)?;
    if bytes.is_empty() || bytes.len() as u64 > limits::PEM_BYTES {
        return Err(Error::config(
            setting,
            format!("{shown} is empty or over 1 MiB: not a PEM file"),
        ));
    }
    Ok(bytes)
}

/// `{base}{path}`; `base` ends in `/` and `path` is a fixed relative path of id6's API.
pub(crate) fn join(base: &Url, path: &str) -> Url {
    let mut url = base.clone();
    let joined = format!("{}{path}", base.path());
    url.set_path(&joined);
    url
}

/// RFC 6265 cookie-name characters, minus the separators a config would only get wrong.
pub(super) fn is_cookie_name_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.')
}

/// What to say of each variable among `names` that looks like one of ours (`ID6_*`, in any
/// case) but is none of `known`: it is ignored, and a typo would go unseen. Names the
/// nearest known variable when one is close enough to be the intended one. Sorted, each
/// name once.
pub(super) fn unknown_vars(
    names: impl IntoIterator<Item = OsString>,
    known: &[&str],
) -> Vec<String> {
    let mut unknown: Vec<String> = names
        .into_iter()
        .map(|name| name.to_string_lossy().into_owned())
        .filter(|name| {
            name.get(..4)
                .is_some_and(|prefix| prefix.eq_ignore_ascii_case("ID6_"))
                && !known.contains(&name.as_str())
        })
        .collect();
    unknown.sort();
    unknown.dedup();
    unknown
        .into_iter()
        .map(|name| match nearest(&name, known) {
            Some(near) => format!(
                "id6-tower: the environment variable {name} is not one of its settings and is \
                 ignored; did you mean {near}?"
            ),
            None => format!(
                "id6-tower: the environment variable {name} is not one of its settings and is \
                 ignored (the README's configuration table lists them)"
            ),
        })
        .collect()
}

/// The known name closest to `name` by edit distance, case aside, if within a third of the
/// length after `ID6_` (a typo or two, not another word).
fn nearest<'a>(name: &str, known: &[&'a str]) -> Option<&'a str> {
    let name = name.to_ascii_uppercase();
    let typed = name.len().saturating_sub("ID6_".len()).max(3);
    known
        .iter()
        .filter(|var| !var.is_empty())
        .map(|var| (edit_distance(&name, var), *var))
        .filter(|&(distance, _)| distance * 3 <= typed)
        .min()
        .map(|(_, var)| var)
}

/// Levenshtein distance over bytes (variable names are ASCII), one row at a time.
fn edit_distance(a: &str, b: &str) -> usize {
    let (a, b) = (a.as_bytes(), b.as_bytes());
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, &ca) in a.iter().enumerate() {
        let mut diagonal = row[0];
        row[0] = i + 1;
        for (j, &cb) in b.iter().enumerate() {
            let substitute = diagonal + usize::from(ca != cb);
            diagonal = row[j + 1];
            row[j + 1] = substitute.min(row[j] + 1).min(diagonal + 1);
        }
    }
    row[b.len()]
}

/// Reads settings from environment variables, remembering the first that is unusable.
pub(super) struct Env<F> {
    pub(super) lookup: F,
    pub(super) first_error: Option<Error>,
}

impl<F: Fn(&str) -> Option<OsString>> Env<F> {
    pub(super) fn fail(&mut self, setting: Setting, reason: impl Into<String>) {
        self.first_error
            .get_or_insert_with(|| Error::config(setting, reason));
    }

    /// The variable's text; a value that is not UTF-8 is an error, never silently ignored.
    pub(super) fn text(&mut self, setting: Setting) -> Option<String> {
        match (self.lookup)(setting.var)?.into_string() {
            Ok(text) => Some(text),
            Err(_) => {
                self.fail(setting, "is not valid UTF-8");
                None
            }
        }
    }

    /// The variable, read by `parse`, whose error is the reason the value is refused.
    pub(super) fn read<T>(
        &mut self,
        setting: Setting,
        parse: impl FnOnce(&str) -> Result<T, String>,
    ) -> Option<T> {
        let value = self.text(setting)?;
        match parse(&value) {
            Ok(parsed) => Some(parsed),
            Err(reason) => {
                self.fail(setting, reason);
                None
            }
        }
    }
}

/// How the environment's values read: each parser's error is the reason quoted in the
/// config error.
pub(super) mod read {
    use super::*;

    pub(in crate::config) fn text(value: &str) -> Result<String, String> {
        Ok(value.to_owned())
    }

    pub(in crate::config) fn duration(value: &str) -> Result<Duration, String> {
        humantime::parse_duration(value.trim())
            .map_err(|_| format!("{} is not a duration like `60s` or `1500ms`", quoted(value)))
    }

    pub(in crate::config) fn number<T: FromStr>(value: &str) -> Result<T, String> {
        value
            .trim()
            .parse()
            .map_err(|_| format!("{} is not a whole number in range", quoted(value)))
    }

    /// `on`/`off` and their usual spellings.
    pub(in crate::config) fn switch(value: &str) -> Result<bool, String> {
        match value.trim().to_ascii_lowercase().as_str() {
            "true" | "on" | "1" | "yes" => Ok(true),
            "false" | "off" | "0" | "no" => Ok(false),
            _ => Err(format!("{} is not `on` or `off`", quoted(value))),
        }
    }

    /// Comma-separated, blanks dropped.
    pub(in crate::config) fn list(value: &str) -> Result<Vec<String>, String> {
        Ok(value
            .split(',')
            .map(str::trim)
            .filter(|item| !item.is_empty())
            .map(str::to_owned)
            .collect())
    }

    /// `cookie`, `bearer` or both, comma-separated, in order.
    pub(in crate::config) fn token_locations(value: &str) -> Result<Vec<TokenLocation>, String> {
        let mut locations = Vec::new();
        for name in value.split(',').map(str::trim).filter(|n| !n.is_empty()) {
            match name.to_ascii_lowercase().as_str() {
                "cookie" => locations.push(TokenLocation::Cookie),
                "bearer" => locations.push(TokenLocation::Bearer),
                _ => return Err(format!("{} is neither `cookie` nor `bearer`", quoted(name))),
            }
        }
        Ok(locations)
    }

    /// `reject`, `anonymous` or `stale:<duration>` (e.g. `stale:10m`).
    pub(in crate::config) fn on_unavailable(value: &str) -> Result<OnUnavailable, String> {
        let policy = match value.trim() {
            "reject" => Some(OnUnavailable::Reject),
            "anonymous" => Some(OnUnavailable::Anonymous),
            other => other
                .strip_prefix("stale:")
                .and_then(|grace| humantime::parse_duration(grace.trim()).ok())
                .map(OnUnavailable::Stale),
        };
        policy.ok_or_else(|| {
            format!(
                "{} is not `reject`, `anonymous` or `stale:<duration>`",
                quoted(value)
            )
        })
    }

    /// `off`, or `<calls>/<window>` (e.g. `30/1m`).
    pub(in crate::config) fn calls_per_window(value: &str) -> Result<Option<MissLimit>, String> {
        let trimmed = value.trim();
        if trimmed.eq_ignore_ascii_case("off") {
            return Ok(None);
        }
        let limit = trimmed.split_once('/').and_then(|(calls, window)| {
            let calls = calls.trim().parse().ok()?;
            let window = humantime::parse_duration(window.trim()).ok()?;
            Some(MissLimit::new(calls, window))
        });
        match limit {
            Some(limit) => Ok(Some(limit)),
            None => Err(format!(
                "{} is not `<calls>/<window>` (e.g. `30/1m`) or `off`",
                quoted(value)
            )),
        }
    }

    /// A duration, or `off`.
    pub(in crate::config) fn duration_or_off(value: &str) -> Result<Option<Duration>, String> {
        if value.trim().eq_ignore_ascii_case("off") {
            return Ok(None);
        }
        humantime::parse_duration(value.trim())
            .map(Some)
            .map_err(|_| format!("{} is not a duration like `45s`, or `off`", quoted(value)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_variables_are_named_with_the_nearest_known_one() {
        let known = [
            "ID6_URL",
            "ID6_CACHE_TTL",
            "ID6_NEGATIVE_TTL",
            "ID6_TIMEOUT",
            "",
        ];
        let present = [
            "ID6_CACHE_TLL",
            "PATH",
            "ID6_URL",
            "ID6_NEGATIV_TTL",
            "ID6_SOMETHING_ELSE",
            "ID6_CACHE_TLL",
            "id6_cache_ttl",
        ];
        let warnings = unknown_vars(present.map(OsString::from), &known);
        assert_eq!(warnings.len(), 4, "{warnings:#?}");
        assert!(
            warnings[0].contains("ID6_CACHE_TLL")
                && warnings[0].ends_with("did you mean ID6_CACHE_TTL?")
        );
        assert!(
            warnings[1].contains("ID6_NEGATIV_TTL")
                && warnings[1].ends_with("did you mean ID6_NEGATIVE_TTL?")
        );
        assert!(
            warnings[2].contains("ID6_SOMETHING_ELSE") && !warnings[2].contains("did you mean")
        );
        assert!(
            warnings[3].contains("id6_cache_ttl")
                && warnings[3].ends_with("did you mean ID6_CACHE_TTL?")
        );
        assert!(unknown_vars(known.map(OsString::from), &known).is_empty());
        // Against the real table: the issue's typo, and a real variable is no warning.
        let table = crate::config::setting::VARS;
        let warnings = unknown_vars(
            ["ID6_CACHE_TLL", "ID6_TOKEN_LOCATIONS"].map(OsString::from),
            table,
        );
        assert_eq!(warnings.len(), 1);
        assert!(
            warnings[0].ends_with("did you mean ID6_CACHE_TTL?"),
            "{}",
            warnings[0]
        );
        // The names before 0.1.0 are no settings: nothing was published under them.
        let old = ["ID6_TOKEN_SOURCES", "ID6_CACHE_CAPACITY"].map(OsString::from);
        assert_eq!(unknown_vars(old, table).len(), 2);
        assert_eq!(edit_distance("ID6_CACHE_TLL", "ID6_CACHE_TTL"), 1);
        assert_eq!(edit_distance("kitten", "sitting"), 3);
        assert_eq!(edit_distance("", "abc"), 3);
    }

    #[test]
    fn origins_are_normalised_and_strict() {
        let o = |t: &str| Origin::parse(t);
        assert_eq!(o("HTTPS://App.Example:443"), o("https://app.example"));
        assert_ne!(o("https://app.example:8443"), o("https://app.example"));
        assert_ne!(o("http://app.example"), o("https://app.example"));
        for bad in [
            "null",
            "app.example",
            "ftp://app.example",
            "https://app.example/",
            "https://u@app.example",
            "https://app.example:x",
            "https://",
        ] {
            assert_eq!(o(bad), None, "{bad}");
        }
        let origin = o("https://app.example").unwrap();
        assert!(origin.has_authority("app.example"));
        assert!(origin.has_authority("APP.example:443"));
        assert!(!origin.has_authority("app.example:8443"));
        assert!(!origin.has_authority("evil.example"));
        let v6 = o("http://[::1]:3000").unwrap();
        assert!(v6.has_authority("[::1]:3000"));
    }
}
