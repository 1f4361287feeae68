//! Calls to id6 over reqwest, and the reading of id6's answers: verdicts for the layer
//! (`GET /user` or the private `POST /authorize`), typed results for the API calls.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use http::header::{
    HeaderMap, HeaderName, ACCEPT, AUTHORIZATION, CONTENT_TYPE, COOKIE, RETRY_AFTER,
};
use http::{Method, StatusCode};
use serde::Deserialize;

use crate::admission::{Admission, Health, RateWindow};
use crate::config::{join, Authorization, ClientSettings};
use crate::error::TokenRejection;
use crate::error::{ApiError, Error, Kind};
use crate::telemetry::{Telemetry, Upstream};
use crate::token::UserToken;
use crate::user::{Authentication, User};

/// The HTTP side of the handle: one pooled reqwest client and where to send what.
#[derive(Debug)]
pub(crate) struct Client {
    http: reqwest::Client,
    settings: ClientSettings,
    /// A rejected secret is logged as an error once, then at debug.
    secret_rejection_logged: AtomicBool,
    telemetry: Arc<Telemetry>,
    admission: Admission,
}

impl Client {
    pub(crate) fn new(settings: ClientSettings, telemetry: Arc<Telemetry>) -> Result<Self, Error> {
        let http = match settings.http.clone() {
            Some(own) => own,
            // The whole-call timeout is set per request (`request`), for the user's client too.
            None => prefer_rustls(reqwest::Client::builder())
                .connect_timeout(settings.connect_timeout)
                // A redirect from id6's API means a misconfigured base URL, not an answer.
                .redirect(reqwest::redirect::Policy::none())
                .user_agent(concat!("id6-tower/", env!("CARGO_PKG_VERSION")))
                .build()
                .map_err(|e| Error::with_source(Kind::Runtime("HTTP client could not start"), e))?,
        };
        Ok(Client {
            http,
            secret_rejection_logged: AtomicBool::new(false),
            telemetry,
            admission: Admission::new(
                settings.max_concurrent_calls,
                settings.queue_timeout,
                settings.max_backoff,
                settings.clock.clone(),
            ),
            settings,
        })
    }

    pub(crate) fn settings(&self) -> &ClientSettings {
        &self.settings
    }

    /// Whether id6 is being called or the breaker holds calls back.
    pub(crate) fn health(&self) -> Health {
        self.admission.health()
    }

    /// The layer's question: who owns this token? Through `/authorize` when configured.
    /// `charge` runs once the call is admitted, just before it is sent: refused, nothing is
    /// sent.
    pub(crate) async fn authenticate(
        &self,
        token: &UserToken,
        charge: impl FnOnce() -> Result<(), Error>,
    ) -> Authentication {
        let admitted = match self.admission.admit(charge).await {
            Ok(admitted) => admitted,
            Err(error) => {
                tracing::debug!(%error, "id6 not called");
                return Authentication::Unavailable(error);
            }
        };
        let started = Instant::now();
        let outcome = match &self.settings.authorization {
            Some(authorization) => self.authorize(authorization, token).await,
            None => self.get_user(token).await,
        };
        self.admission.record(&admitted, outcome.unavailable());
        let elapsed = started.elapsed();
        let elapsed_ms = elapsed.as_secs_f64() * 1e3;
        let counted = match &outcome {
            Authentication::Authenticated(user) => {
                tracing::debug!(user_id = user.id, elapsed_ms, "id6 named the user");
                Upstream::Authenticated
            }
            Authentication::Anonymous | Authentication::Rejected(_) => {
                tracing::debug!(elapsed_ms, "id6 rejected the token");
                Upstream::Rejected
            }
            Authentication::Unavailable(error) if error.is_secret_rejected() => {
                if !self.secret_rejection_logged.swap(true, Ordering::Relaxed) {
                    tracing::error!(%error, "id6 refused our authorization secret; every token lookup fails until the configuration is fixed");
                } else {
                    tracing::debug!(%error, elapsed_ms, "id6 refused our authorization secret");
                }
                Upstream::Unavailable
            }
            Authentication::Unavailable(error) => {
                tracing::warn!(%error, elapsed_ms, "id6 unavailable; request identity unknown");
                Upstream::Unavailable
            }
        };
        self.telemetry.upstream(counted, elapsed);
        outcome
    }

    async fn get_user(&self, token: &UserToken) -> Authentication {
        let request = self.with_cookie(
            self.request(Method::GET, self.settings.user_url.to_url()),
            token,
        );
        let response = match request.header(ACCEPT, "application/json").send().await {
            Ok(response) => self.observe(response),
            Err(e) => return Authentication::Unavailable(Error::from_reqwest(e)),
        };
        match response.status() {
            StatusCode::OK => {}
            // Not id6's: its 401 always carries its error JSON. A proxy in front of it (an
            // auth gateway, a maintenance page) answering 401 in HTML has said nothing of the
            // token, as a typed call's HTML 4xx is no refusal either.
            StatusCode::UNAUTHORIZED if !is_json(response.headers()) => {
                return Authentication::Unavailable(self.unavailable(&response));
            }
            // id6's verdict on the token: invalid, expired, revoked or user gone, by its
            // `errorCode` (a JSON body that does not read still is a rejection).
            StatusCode::UNAUTHORIZED => {
                #[derive(Deserialize)]
                #[serde(rename_all = "camelCase")]
                struct Refusal {
                    error_code: Option<String>,
                }
                let code = self.read_json::<Refusal>(response).await.ok();
                let code = code.as_ref().and_then(|r| r.error_code.as_deref());
                return Authentication::Rejected(TokenRejection::from_code(code));
            }
            _ => return Authentication::Unavailable(self.unavailable(&response)),
        }
        match self.read_json::<Option<User>>(response).await {
            Ok(Some(user)) => Authentication::Authenticated(Arc::new(user)),
            // id6 answers `null` for a request without a token: we never send one.
            Ok(None) => Authentication::Rejected(TokenRejection::InvalidToken),
            Err(error) => Authentication::Unavailable(error),
        }
    }

    /// `POST {authz}/authorize`: every token outcome is a 200; `error` wins over `user`.
    async fn authorize(&self, authorization: &Authorization, token: &UserToken) -> Authentication {
        #[derive(Deserialize)]
        struct Answer {
            #[serde(default)]
            user: Option<User>,
            #[serde(default)]
            error: Option<serde_json::Value>,
        }
        let body = serde_json::json!({ "token": token.expose() }).to_string();
        let sent = self
            .request(Method::POST, authorization.url.to_url())
            .header(AUTHORIZATION, authorization.secret.clone())
            .header(CONTENT_TYPE, "application/json")
            .header(ACCEPT, "application/json")
            .body(body)
            .send()
            .await;
        let response = match sent {
            Ok(response) => self.observe(response),
            Err(e) => return Authentication::Unavailable(Error::from_reqwest(e)),
        };
        match response.status() {
            StatusCode::OK => {}
            // Our secret, not the user's token: never an anonymous user.
            StatusCode::UNAUTHORIZED => {
                return Authentication::Unavailable(Error::new(Kind::SecretRejected))
            }
            _ => return Authentication::Unavailable(self.unavailable(&response)),
        }
        match self.read_json::<Answer>(response).await {
            Ok(Answer {
                error: Some(error), ..
            }) if !error.is_null() => {
                let code = error.get("code").and_then(|c| c.as_str());
                tracing::debug!(code, "id6 /authorize refused the token");
                Authentication::Rejected(TokenRejection::from_code(code))
            }
            Ok(Answer {
                user: Some(user), ..
            }) => Authentication::Authenticated(Arc::new(user)),
            Ok(_) => Authentication::Unavailable(Error::new(Kind::Body("neither user nor error"))),
            Err(error) => Authentication::Unavailable(error),
        }
    }

    /// A typed call of the Authentication API, with the user's token as id6's cookie. A 4xx
    /// answer in id6's JSON is id6's refusal; any other answer but a 2xx, id6 unavailable
    /// (see [`Error`]). `charge` runs as for [`authenticate`](Self::authenticate).
    pub(crate) async fn call(
        &self,
        method: Method,
        path: &str,
        token: &UserToken,
        charge: impl FnOnce() -> Result<(), Error>,
        build: impl FnOnce(reqwest::RequestBuilder) -> reqwest::RequestBuilder,
    ) -> Result<reqwest::Response, Error> {
        let admitted = self.admission.admit(charge).await?;
        let url = join(&self.settings.base_url, path);
        let request = build(self.with_cookie(self.request(method, url), token));
        // A streamed body (a picture) cannot be cloned, and takes as long as its size and the
        // link make it: its timeout says how long the upload took, not whether id6 answers.
        let uploading = request.try_clone().is_none();
        let sent = request
            .send()
            .await
            .map(|response| self.observe(response))
            .map_err(Error::from_reqwest);
        // What the breaker learns: no answer, or an answer that is no verdict (429, 5xx).
        let failure = match &sent {
            Err(error) => Some(error.clone()),
            Ok(r)
                if r.status() == StatusCode::TOO_MANY_REQUESTS || r.status().is_server_error() =>
            {
                Some(self.unavailable(r))
            }
            Ok(_) => None,
        };
        match &failure {
            // Not counted either way: an answer would have said id6 is there, and one
            // upload's length must not open the breaker that keeps every sign-in out.
            Some(error) if uploading && error.is_timeout() => {
                tracing::debug!(%error, "an upload to id6 timed out; not counted by the breaker");
            }
            _ => self.admission.record(&admitted, failure.as_ref()),
        }
        if let Some(error) = failure {
            return Err(error);
        }
        let response = sent?;
        let status = response.status();
        if status.is_success() {
            return Ok(response);
        }
        #[derive(Deserialize)]
        #[serde(rename_all = "camelCase")]
        struct Body {
            message: Option<String>,
            error_code: Option<String>,
            error_details: Option<serde_json::Value>,
        }
        // An unknown route answers Express's HTML 404: a wrong base URL, not a refusal. Nor
        // is anything but a 4xx (a redirect, a code past 599): id6 refuses with a 4xx, and an
        // app must not pass a stray status on to its own client.
        if !status.is_client_error() || !is_json(response.headers()) {
            return Err(Error::new(Kind::Status(status)));
        }
        let body = self.read_json::<Body>(response).await?;
        Err(Error::new(Kind::Api(Box::new(ApiError {
            status,
            code: body.error_code,
            message: body.message,
            details: body.error_details,
        }))))
    }

    /// Reads a JSON answer, refusing anything not labelled JSON or over the size cap.
    pub(crate) async fn read_json<T: serde::de::DeserializeOwned>(
        &self,
        response: reqwest::Response,
    ) -> Result<T, Error> {
        if !is_json(response.headers()) {
            // e.g. the UI's HTML page, served with 200 when the base URL lacks `/api`.
            return Err(Error::new(Kind::Body("not JSON")));
        }
        let body = read_capped(response, self.settings.max_body_bytes).await?;
        serde_json::from_slice(&body).map_err(|_| Error::new(Kind::Body("not the expected JSON")))
    }

    /// Reads id6's rate limit off an answer (`X-RateLimit-*`), for the refreshes and the
    /// stats.
    fn observe(&self, response: reqwest::Response) -> reqwest::Response {
        let headers = response.headers();
        if let (Some(limit), Some(remaining)) = (
            header_number(headers, &RATE_LIMIT_LIMIT),
            header_number(headers, &RATE_LIMIT_REMAINING),
        ) {
            // On the handle's clock, where the breaker reads the window.
            let now = self.settings.clock.wall();
            let max_wait = self.settings.max_backoff;
            let reset = rate_limit_reset(headers, now, max_wait).unwrap_or(now + max_wait);
            self.admission.note_window(RateWindow {
                limit,
                remaining: remaining.min(limit),
                reset,
            });
            self.telemetry.rate_limit(limit, remaining.min(limit));
        }
        response
    }

    /// id6's rate limit as last seen.
    pub(crate) fn rate_window(&self) -> Option<RateWindow> {
        self.admission.window()
    }

    /// Whether a background call (a refresh ahead of expiry, a session's recheck) may be
    /// made now.
    pub(crate) fn background_allowed(&self) -> bool {
        self.background_pause().is_none()
    }

    /// How long background calls wait before they may be made, `None` if they may now.
    pub(crate) fn background_pause(&self) -> Option<Duration> {
        self.admission.background_pause()
    }

    /// The error for an answer that carries no verdict: 429 (with its wait, at most
    /// `max_backoff`), 5xx, anything else.
    fn unavailable(&self, response: &reqwest::Response) -> Error {
        match response.status() {
            StatusCode::TOO_MANY_REQUESTS => {
                // The wait is read on the handle's clock; the date handed out is a real one.
                let clock = &self.settings.clock;
                let reset =
                    rate_limit_reset(response.headers(), clock.wall(), self.settings.max_backoff);
                Error::new(Kind::RateLimited {
                    reset: reset.map(|reset| clock.real(reset)),
                })
            }
            status => Error::new(Kind::Status(status)),
        }
    }

    /// Every call, on our client or the user's, bounded by the configured timeout.
    fn request(&self, method: Method, url: reqwest::Url) -> reqwest::RequestBuilder {
        self.http
            .request(method, url)
            .timeout(self.settings.timeout)
    }

    fn with_cookie(
        &self,
        request: reqwest::RequestBuilder,
        token: &UserToken,
    ) -> reqwest::RequestBuilder {
        // Only id6's cookie is forwarded, never the caller's others. A `UserToken` holds
        // cookie-octets only, so the header always builds.
        match token.cookie_header(&self.settings.cookie_name) {
            Some(cookie) => request.header(COOKIE, cookie),
            None => request,
        }
    }
}

/// With both TLS features compiled in, rustls (the default) wins: reqwest alone would pick
/// native-tls, whose client also takes ~200 ms to build (it loads the system's certificates).
fn prefer_rustls(builder: reqwest::ClientBuilder) -> reqwest::ClientBuilder {
    #[cfg(feature = "rustls")]
    let builder = builder.tls_backend_rustls();
    builder
}

fn is_json(headers: &HeaderMap) -> bool {
    headers
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|mime| {
            let mime = mime.trim();
            mime.eq_ignore_ascii_case("application/json")
                || (mime.len() > 5 && mime[mime.len() - 5..].eq_ignore_ascii_case("+json"))
        })
}

/// Reads at most `limit` bytes; a longer answer is an error, not a truncated parse.
pub(crate) async fn read_capped(
    mut response: reqwest::Response,
    limit: usize,
) -> Result<Vec<u8>, Error> {
    if response.content_length().is_some_and(|n| n > limit as u64) {
        return Err(Error::new(Kind::BodyTooLarge { limit }));
    }
    let mut body = Vec::new();
    while let Some(chunk) = response.chunk().await.map_err(Error::from_reqwest)? {
        if body.len() + chunk.len() > limit {
            return Err(Error::new(Kind::BodyTooLarge { limit }));
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

/// id6's rate-limit window, on every answer. Named once: a lookup by a `&str` parses the
/// name on each call.
const RATE_LIMIT_LIMIT: HeaderName = HeaderName::from_static("x-ratelimit-limit");
const RATE_LIMIT_REMAINING: HeaderName = HeaderName::from_static("x-ratelimit-remaining");
const RATE_LIMIT_RESET: HeaderName = HeaderName::from_static("x-ratelimit-reset");

/// A header holding a whole number (`X-RateLimit-*`, `Retry-After`), if it does.
fn header_number(headers: &HeaderMap, name: &HeaderName) -> Option<u64> {
    headers.get(name)?.to_str().ok()?.trim().parse().ok()
}

/// When id6's rate-limit window opens again, at least a second and at most `max_wait` from
/// `now`: `X-RateLimit-Reset` is the real wait; id6's `Retry-After` is always 60 and only a
/// fallback. A proxy may say either in any form, so neither is trusted with more than the cap.
fn rate_limit_reset(
    headers: &HeaderMap,
    now: SystemTime,
    max_wait: Duration,
) -> Option<SystemTime> {
    let wait = match header_number(headers, &RATE_LIMIT_RESET) {
        Some(reset) => reset_wait(reset, now),
        None => Duration::from_secs(header_number(headers, &RETRY_AFTER)?),
    };
    now.checked_add(wait.clamp(Duration::from_secs(1), max_wait))
}

/// The wait an `X-RateLimit-Reset` of `value` means: epoch seconds as id6 sends it; epoch
/// milliseconds, as some proxies send it (a value that would be past the year 5000 in
/// seconds); seconds from now, as the IETF RateLimit fields say, for a value too small to be
/// a recent epoch (before 2001).
fn reset_wait(value: u64, now: SystemTime) -> Duration {
    const EPOCH_MILLIS_FROM: u64 = 100_000_000_000;
    const EPOCH_SECONDS_FROM: u64 = 1_000_000_000;
    let since_epoch = now.duration_since(UNIX_EPOCH).unwrap_or_default();
    if value >= EPOCH_MILLIS_FROM {
        Duration::from_millis(value).saturating_sub(since_epoch)
    } else if value >= EPOCH_SECONDS_FROM {
        Duration::from_secs(value).saturating_sub(since_epoch)
    } else {
        Duration::from_secs(value)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    /// However id6's answer is cut into chunks, and without a `Content-Length`: all of it up
    /// to the cap, an error past it (in the first chunk or across several).
    #[cfg(feature = "pictures")]
    #[tokio::test]
    async fn a_body_is_read_whole_up_to_the_cap_however_it_is_chunked() {
        let response = |chunks: &[&'static [u8]]| {
            let chunks = chunks
                .iter()
                .map(|c| Ok::<_, std::io::Error>(bytes::Bytes::from_static(c)));
            let stream = futures_util::stream::iter(chunks.collect::<Vec<_>>());
            reqwest::Response::from(http::Response::new(reqwest::Body::wrap_stream(stream)))
        };
        let within: [&[&'static [u8]]; 5] = [
            &[],
            &[b"abc"],
            &[b"ab", b"c"],
            &[b"a", b"", b"b", b"c"],
            &[b"", b"abc"],
        ];
        for chunks in within {
            let body = read_capped(response(chunks), 3).await.unwrap();
            assert_eq!(body, chunks.concat(), "{chunks:?}");
        }
        let past: [&[&'static [u8]]; 3] = [&[b"abcd"], &[b"ab", b"cd"], &[b"abc", b"", b"d"]];
        for chunks in past {
            let error = read_capped(response(chunks), 3).await.unwrap_err();
            assert!(error.is_body(), "{chunks:?}: {error}");
        }
    }

    #[test]
    fn json_content_types() {
        let mut h = HeaderMap::new();
        assert!(!is_json(&h));
        for (v, want) in [
            ("application/json", true),
            ("application/json; charset=utf-8", true),
            ("Application/JSON", true),
            ("application/problem+json", true),
            ("text/html; charset=utf-8", false),
            ("json", false),
        ] {
            h.insert(CONTENT_TYPE, HeaderValue::from_static(v));
            assert_eq!(is_json(&h), want, "{v}");
        }
    }

    #[test]
    fn rate_limit_reset_prefers_the_real_window() {
        let max = Duration::from_secs(60);
        let now = UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        let wait = |h: &HeaderMap| {
            rate_limit_reset(h, now, max).map(|t| t.duration_since(now).unwrap().as_secs())
        };
        let mut h = HeaderMap::new();
        assert_eq!(wait(&h), None);
        h.insert(RETRY_AFTER, HeaderValue::from_static("60"));
        assert_eq!(wait(&h), Some(60));
        h.insert("X-RateLimit-Reset", HeaderValue::from_static("1800000042"));
        assert_eq!(wait(&h), Some(42), "epoch seconds, as id6");
        h.insert("X-RateLimit-Reset", HeaderValue::from_static("soon"));
        assert_eq!(wait(&h), Some(60), "unreadable reset: back to Retry-After");
    }

    #[test]
    fn no_rate_limit_answer_waits_past_the_cap() {
        let max = Duration::from_secs(60);
        let now = UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        let wait = |name: &'static str, value: &'static str| {
            let mut h = HeaderMap::new();
            h.insert(name, HeaderValue::from_static(value));
            let until = rate_limit_reset(&h, now, max).unwrap();
            until.duration_since(now).unwrap().as_secs()
        };
        let reset = "x-ratelimit-reset";
        // Epoch milliseconds, as some proxies send: read as such, not as 56 000 years.
        assert_eq!(wait(reset, "1800000030000"), 30);
        assert_eq!(wait(reset, "1800000000000000"), 60, "far future: the cap");
        assert_eq!(wait(reset, "18446744073709551615"), 60);
        assert_eq!(
            wait(reset, "99999999999"),
            60,
            "year 5138 in seconds: the cap"
        );
        assert_eq!(wait(reset, "7"), 7, "small: seconds from now");
        assert_eq!(wait(reset, "1700000000"), 1, "in the past: a short pause");
        assert_eq!(wait("retry-after", "99999999999"), 60);
        assert_eq!(wait("retry-after", "0"), 1);
    }
}
