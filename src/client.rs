//! Calls to id6 over reqwest, and the reading of id6's answers into an [`Authentication`].

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use http::header::{HeaderMap, ACCEPT, CONTENT_TYPE, COOKIE, RETRY_AFTER};
use http::StatusCode;

use crate::config::Settings;
use crate::error::{Error, Kind};
use crate::token::Token;
use crate::user::{Authentication, User};

/// The HTTP side of the handle: one pooled reqwest client and where to send what.
#[derive(Debug)]
pub(crate) struct Client {
    http: reqwest::Client,
    settings: Arc<Settings>,
}

impl Client {
    pub(crate) fn new(settings: Arc<Settings>) -> Result<Self, Error> {
        let http = reqwest::Client::builder()
            .timeout(settings.timeout)
            .connect_timeout(settings.connect_timeout)
            // A redirect from `/user` means a misconfigured base URL, not an answer.
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("id6-tower/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| Error::with_source(Kind::Runtime("HTTP client could not start"), e))?;
        Ok(Client { http, settings })
    }

    /// `GET {base}/user` with the token as id6's cookie, and only that cookie.
    pub(crate) async fn authenticate(&self, token: &Token) -> Authentication {
        let started = Instant::now();
        let outcome = self.get_user(token).await;
        let elapsed_ms = started.elapsed().as_secs_f64() * 1e3;
        match &outcome {
            Authentication::Authenticated(user) => {
                tracing::debug!(user_id = user.id, elapsed_ms, "id6 named the user")
            }
            Authentication::Anonymous => tracing::debug!(elapsed_ms, "id6 rejected the token"),
            Authentication::Unavailable(error) => {
                tracing::warn!(%error, elapsed_ms, "id6 unavailable; request identity unknown")
            }
        }
        outcome
    }

    async fn get_user(&self, token: &Token) -> Authentication {
        let Some(cookie) = token.cookie_header(&self.settings.cookie_name) else {
            // `token` holds cookie-octets only, so this is unreachable in practice.
            return Authentication::Anonymous;
        };
        let sent = self
            .http
            .get(self.settings.user_url.clone())
            .header(COOKIE, cookie)
            .header(ACCEPT, "application/json")
            .send()
            .await;
        let response = match sent {
            Ok(response) => response,
            Err(e) => return Authentication::Unavailable(Error::from_reqwest(e)),
        };
        match response.status() {
            StatusCode::OK => {}
            // id6's verdict on the token: invalid, expired, revoked or user gone.
            StatusCode::UNAUTHORIZED => return Authentication::Anonymous,
            StatusCode::TOO_MANY_REQUESTS => {
                let reset = rate_limit_reset(response.headers());
                return Authentication::Unavailable(Error::new(Kind::RateLimited { reset }));
            }
            status => return Authentication::Unavailable(Error::new(Kind::Status(status))),
        }
        if !is_json(response.headers()) {
            // e.g. the UI's HTML page, served with 200 when the base URL lacks `/api`.
            return Authentication::Unavailable(Error::new(Kind::Body("not JSON")));
        }
        match read_capped(response, self.settings.max_body_bytes).await {
            Ok(body) => match serde_json::from_slice::<Option<User>>(&body) {
                Ok(Some(user)) => Authentication::Authenticated(Arc::new(user)),
                Ok(None) => Authentication::Anonymous,
                Err(_) => {
                    Authentication::Unavailable(Error::new(Kind::Body("neither a user nor null")))
                }
            },
            Err(error) => Authentication::Unavailable(error),
        }
    }
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
async fn read_capped(mut response: reqwest::Response, limit: usize) -> Result<Vec<u8>, Error> {
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

/// When id6's rate-limit window opens again: `X-RateLimit-Reset` (epoch seconds) is the real
/// wait; id6's `Retry-After` is always 60 and only a fallback.
fn rate_limit_reset(headers: &HeaderMap) -> Option<SystemTime> {
    let number = |name| -> Option<u64> { headers.get(name)?.to_str().ok()?.trim().parse().ok() };
    if let Some(reset) = number("x-ratelimit-reset") {
        return UNIX_EPOCH.checked_add(Duration::from_secs(reset));
    }
    let retry = number(RETRY_AFTER.as_str())?;
    SystemTime::now().checked_add(Duration::from_secs(retry))
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

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
        let mut h = HeaderMap::new();
        assert_eq!(rate_limit_reset(&h), None);
        h.insert(RETRY_AFTER, HeaderValue::from_static("60"));
        let fallback = rate_limit_reset(&h).unwrap();
        assert!(fallback > SystemTime::now() + Duration::from_secs(50));
        h.insert("X-RateLimit-Reset", HeaderValue::from_static("2000000000"));
        assert_eq!(
            rate_limit_reset(&h),
            Some(UNIX_EPOCH + Duration::from_secs(2_000_000_000))
        );
        h.insert("X-RateLimit-Reset", HeaderValue::from_static("soon"));
        // Unreadable reset: back to Retry-After.
        let again = rate_limit_reset(&h).unwrap();
        assert!(again > SystemTime::now() + Duration::from_secs(50));
        assert!(again < SystemTime::now() + Duration::from_secs(61));
    }
}
