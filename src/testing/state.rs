//! What the mock server knows and both its servers share: users, tokens, faults, the rate
//! limit, counters. The bottom of the test kit: it imports nothing of its own.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::AtomicU64;
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde_json::{json, Value};
use tokio::sync::watch;

/// How id6 misbehaves, for every route, until
/// [`MockId6::clear_fault`](super::MockId6::clear_fault).
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Fault {
    /// Answer normally, but only after this long (a long one is a hanging id6).
    Delay(Duration),
    /// Answer this status with id6's error JSON (`{"statusCode", "path", "message"}`).
    Status(u16),
    /// Answer 429 exactly as id6's rate limiter does (HTML body, `Retry-After: 60`,
    /// `X-RateLimit-*`).
    RateLimited,
    /// Answer 429 as a proxy in front of id6 might: HTML body, with these raw
    /// `X-RateLimit-Reset` and `Retry-After` values (each left out when `None`), such as a
    /// reset in epoch milliseconds or a wait of a thousand years.
    RateLimitedWith {
        /// The `X-RateLimit-Reset` value, as sent.
        reset: Option<String>,
        /// The `Retry-After` value, as sent.
        retry_after: Option<String>,
    },
    /// Read the request, then close the connection without answering.
    DropConnection,
    /// Answer 200 `application/json` with a truncated JSON body.
    MalformedBody,
    /// Answer 200 `text/html`, as id6's UI does for `/user` when `/api` is missing.
    HtmlPage,
    /// Answer this status with an HTML page, as a reverse proxy does (e.g. 502).
    StatusHtml(u16),
    /// Answer normally but with `Content-Type: text/plain`.
    WrongContentType,
    /// Start a 200 JSON answer, then drop the connection halfway through the body.
    DropMidBody,
    /// Answer 200 JSON of this many bytes, streamed (no `Content-Length`).
    HugeBody(usize),
}

/// One request MockId6 received, as it arrived.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct RecordedRequest {
    /// HTTP method.
    pub method: String,
    /// Path, without the query.
    pub path: String,
    /// Every `Cookie` header, joined with `; ` (`None` without any).
    pub cookie: Option<String>,
}

pub(super) struct MockUser {
    pub(super) name: String,
    pub(super) email: String,
    pub(super) bio: Option<String>,
    pub(super) language: String,
    /// The picture's bytes and its version (hex digest).
    pub(super) picture: Option<(Vec<u8>, String)>,
    pub(super) created_at: SystemTime,
    pub(super) updated_at: SystemTime,
    /// Tokens with `issuedAt` strictly before this (ms) are revoked.
    pub(super) invalidate_tokens_at: Option<u64>,
}

/// When a rate-limit window started, and how many requests it counted.
pub(super) type Started = (Instant, u32);

/// Shared state behind the servers and the handle.
pub(super) struct State {
    pub(super) secret: Vec<u8>,
    pub(super) authorization_secret: String,
    pub(super) token_lifetime: Duration,
    pub(super) users: Mutex<HashMap<u64, MockUser>>,
    pub(super) next_id: AtomicU64,
    pub(super) fault: Mutex<Option<Fault>>,
    pub(super) requests: Mutex<Vec<RecordedRequest>>,
    pub(super) rate_limit: Option<(u32, Duration)>,
    /// Fixed windows per server (`"authentication"`, `"authorization"`) and client IP: each
    /// of id6's servers counts its own.
    pub(super) windows: Mutex<HashMap<(&'static str, IpAddr), Started>>,
    /// While true, `GET /user` answers are computed, then wait before being sent.
    pub(super) hold: watch::Sender<bool>,
    /// How many `GET /user` answers are waiting.
    pub(super) held: watch::Sender<usize>,
    /// Origins `POST /auth/login` may redirect to (anything else is refused: no open
    /// redirect).
    pub(super) redirect_origins: Mutex<Vec<String>>,
    /// Requests being handled now, and the most at once so far.
    pub(super) in_flight: AtomicU64,
    pub(super) max_in_flight: AtomicU64,
    /// How far [`MockId6::advance_clock`](super::MockId6::advance_clock) moved id6's
    /// clock (ns): its own, never the handle's.
    pub(super) skew_ns: AtomicU64,
}

/// Why id6 refuses a token: its `errorCode`, message, and the user when id6 knows it.
pub(super) struct Refusal {
    pub(super) code: &'static str,
    pub(super) message: &'static str,
    pub(super) user_id: Option<u64>,
}

/// What the rate limiter says of one request: `X-RateLimit-*` values and whether to refuse.
pub(super) struct Window {
    pub(super) limit: u32,
    pub(super) remaining: u32,
    pub(super) reset_epoch_s: u64,
    pub(super) exceeded: bool,
}

pub(super) fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

fn millis(t: SystemTime) -> u64 {
    let since = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    u64::try_from(since.as_millis()).unwrap_or(u64::MAX)
}

fn iso(t: SystemTime) -> String {
    humantime::format_rfc3339_millis(t).to_string()
}

impl State {
    fn skew(&self) -> Duration {
        Duration::from_nanos(self.skew_ns.load(std::sync::atomic::Ordering::SeqCst))
    }

    /// id6's wall clock.
    pub(super) fn now(&self) -> SystemTime {
        SystemTime::now() + self.skew()
    }

    /// id6's wall clock, in its unit: milliseconds since the epoch.
    pub(super) fn now_ms(&self) -> u64 {
        millis(self.now())
    }

    /// Waits while answers are held, counted in `held` so tests can see them waiting.
    pub(super) async fn wait_if_held(&self) {
        let mut hold = self.hold.subscribe();
        if !*hold.borrow_and_update() {
            return;
        }
        self.held.send_modify(|n| *n += 1);
        let _ = hold.wait_for(|held| !held).await;
        self.held.send_modify(|n| *n -= 1);
    }

    pub(super) fn fault(&self) -> Option<Fault> {
        lock(&self.fault).clone()
    }

    pub(super) fn record(&self, request: RecordedRequest) {
        lock(&self.requests).push(request);
    }

    /// id6's fixed window per server and client IP, counting every request, refused ones
    /// too.
    pub(super) fn count_request(&self, server: &'static str, ip: IpAddr) -> Option<Window> {
        let (limit, window) = self.rate_limit?;
        let mut windows = lock(&self.windows);
        let now = Instant::now() + self.skew();
        let (start, count) = windows.entry((server, ip)).or_insert((now, 0));
        if now.duration_since(*start) >= window {
            *start = now;
            *count = 0;
        }
        *count = count.saturating_add(1);
        let left = window.saturating_sub(now.duration_since(*start));
        let reset = self.now() + left;
        Some(Window {
            limit,
            remaining: limit.saturating_sub(*count),
            reset_epoch_s: millis(reset).div_ceil(1000),
            exceeded: *count > limit,
        })
    }

    /// Seeded users, for the sign-in page: (id, name, email), by id.
    pub(super) fn user_list(&self) -> Vec<(u64, String, String)> {
        let users = lock(&self.users);
        let mut list: Vec<_> = users
            .iter()
            .map(|(id, u)| (*id, u.name.clone(), u.email.clone()))
            .collect();
        list.sort();
        list
    }

    /// A token as id6 signs it: `{userId, issuedAt (ms), iat (s)}`, HS256.
    pub(super) fn token(&self, user_id: u64, issued_at_ms: u64) -> String {
        let claims = json!({
            "userId": user_id,
            "issuedAt": issued_at_ms,
            "iat": issued_at_ms / 1000,
        });
        jsonwebtoken::encode(
            &Header::new(Algorithm::HS256),
            &claims,
            &EncodingKey::from_secret(&self.secret),
        )
        .unwrap_or_default()
    }

    /// Where login may send the browser for `target`: a path on the mock itself, or an
    /// allowed origin (`scheme://host:port`, compared exactly); `None` anywhere else.
    pub(super) fn redirect_target(&self, target: &str) -> Option<String> {
        // Read as a browser reads a `Location` (WHATWG: tabs and newlines dropped, `\` as
        // `/`), relative to a page of id6's own: `/\t/evil.example` is `//evil.example`.
        const OWN: &str = "http://id6.invalid/";
        let url = reqwest::Url::parse(OWN).ok()?.join(target).ok()?;
        if let Some(path) = url.as_str().strip_prefix(OWN) {
            // One of id6's own paths, sent as the browser would have followed it.
            return Some(format!("/{path}"));
        }
        lock(&self.redirect_origins)
            .contains(&url.origin().ascii_serialization())
            .then(|| url.into())
    }

    /// id6's `GET /user` body for a user, written by hand from id6's observed shape.
    pub(super) fn user_json(&self, id: u64) -> Option<Value> {
        let users = lock(&self.users);
        let user = users.get(&id)?;
        let mut body = json!({
            "id": id,
            "authType": "local",
            "name": user.name,
            "email": user.email,
            "bio": user.bio,
            "language": user.language,
        });
        if let Some((_, version)) = &user.picture {
            body["picture"] = json!(format!("/api/user/picture?v={version}"));
        }
        Some(body)
    }

    /// The authorization server's user shape: `authProvider`, dates, no bio/picture/language.
    pub(super) fn authz_user_json(&self, id: u64) -> Option<Value> {
        let users = lock(&self.users);
        let user = users.get(&id)?;
        let invalidate = user
            .invalidate_tokens_at
            .map(|ms| iso(UNIX_EPOCH + Duration::from_millis(ms)));
        Some(json!({
            "id": id,
            "createdAt": iso(user.created_at),
            "updatedAt": iso(user.updated_at),
            "authProvider": "local",
            "externalUserId": null,
            "name": user.name,
            "email": user.email,
            "invalidateTokensAt": invalidate,
        }))
    }

    /// Checks a token as id6 does: signature, then user, expiry, revocation.
    pub(super) fn verify(&self, token: &str) -> Result<u64, Refusal> {
        let invalid = || Refusal {
            code: "invalid_token",
            message: "Invalid token",
            user_id: None,
        };
        let mut validation = Validation::new(Algorithm::HS256);
        validation.required_spec_claims.clear();
        validation.validate_exp = false;
        let claims = jsonwebtoken::decode::<Value>(
            token,
            &DecodingKey::from_secret(&self.secret),
            &validation,
        )
        .map_err(|_| invalid())?
        .claims;
        // id6's JWT library checks `exp` when there is one (seconds; past once now >= exp,
        // not a number: invalid), and id6 answers `invalid_token` either way.
        if let Some(exp) = claims.get("exp") {
            let now_s = self.now_ms() / 1000;
            if exp.as_f64().is_none_or(|exp| now_s as f64 >= exp) {
                return Err(invalid());
            }
        }
        // id6 trusts odd payloads: `userId` as a string, no `issuedAt` (never expires).
        let user_id = match &claims["userId"] {
            Value::Number(n) => n.as_u64(),
            Value::String(s) => s.parse().ok(),
            _ => None,
        }
        .ok_or_else(invalid)?;
        let issued_at = claims["issuedAt"].as_u64();
        let users = lock(&self.users);
        let user = users.get(&user_id).ok_or(Refusal {
            code: "user_not_found",
            message: "User not found",
            user_id: None,
        })?;
        if let Some(issued_at) = issued_at {
            let lifetime = u64::try_from(self.token_lifetime.as_millis()).unwrap_or(u64::MAX);
            if issued_at.saturating_add(lifetime) < self.now_ms() {
                return Err(Refusal {
                    code: "token_expired",
                    message: "Token expired",
                    user_id: Some(user_id),
                });
            }
            if user.invalidate_tokens_at.is_some_and(|at| issued_at < at) {
                return Err(Refusal {
                    code: "token_revoked",
                    message: "Token revoked",
                    user_id: Some(user_id),
                });
            }
        }
        Ok(user_id)
    }
}
