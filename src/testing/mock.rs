//! `MockId6`'s handle: users, tokens, faults and counters.

use std::collections::HashMap;
use std::fmt;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde_json::{json, Value};
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// How id6 misbehaves, for every route, until [`MockId6::clear_fault`].
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
    /// Read the request, then close the connection without answering.
    DropConnection,
    /// Answer 200 `application/json` with a truncated JSON body.
    MalformedBody,
    /// Answer 200 `text/html`, as id6's UI does for `/user` when `/api` is missing.
    HtmlPage,
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
    /// Tokens with `issuedAt` strictly before this (ms) are revoked.
    pub(super) invalidate_tokens_at: Option<u64>,
}

/// Shared state behind the server and the handle.
pub(super) struct State {
    secret: Vec<u8>,
    token_lifetime: Duration,
    users: Mutex<HashMap<u64, MockUser>>,
    next_id: AtomicU64,
    fault: Mutex<Option<Fault>>,
    requests: Mutex<Vec<RecordedRequest>>,
}

/// Why id6 refuses a token: its `errorCode` and message.
pub(super) struct Refusal {
    pub(super) code: &'static str,
    pub(super) message: &'static str,
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

fn now_ms() -> u64 {
    let since = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    u64::try_from(since.as_millis()).unwrap_or(u64::MAX)
}

impl State {
    pub(super) fn fault(&self) -> Option<Fault> {
        lock(&self.fault).clone()
    }

    pub(super) fn record(&self, request: RecordedRequest) {
        lock(&self.requests).push(request);
    }

    /// id6's `GET /user` body for a user, written by hand from id6's observed shape.
    pub(super) fn user_json(&self, id: u64) -> Option<Value> {
        let users = lock(&self.users);
        let user = users.get(&id)?;
        Some(json!({
            "id": id,
            "authType": "local",
            "name": user.name,
            "email": user.email,
            "bio": null,
            "language": "en",
        }))
    }

    /// Checks a token as id6 does: signature, then user, expiry, revocation.
    pub(super) fn verify(&self, token: &str) -> Result<u64, Refusal> {
        let invalid = Refusal {
            code: "invalid_token",
            message: "Invalid token",
        };
        let mut validation = Validation::new(Algorithm::HS256);
        validation.required_spec_claims.clear();
        validation.validate_exp = false;
        let claims = jsonwebtoken::decode::<Value>(
            token,
            &DecodingKey::from_secret(&self.secret),
            &validation,
        )
        .map_err(|_| invalid)?
        .claims;
        // id6 trusts odd payloads: `userId` as a string, no `issuedAt` (never expires).
        let user_id = match &claims["userId"] {
            Value::Number(n) => n.as_u64(),
            Value::String(s) => s.parse().ok(),
            _ => None,
        }
        .ok_or(Refusal {
            code: "invalid_token",
            message: "Invalid token",
        })?;
        let issued_at = claims["issuedAt"].as_u64();
        let users = lock(&self.users);
        let user = users.get(&user_id).ok_or(Refusal {
            code: "user_not_found",
            message: "User not found",
        })?;
        if let Some(issued_at) = issued_at {
            let lifetime = u64::try_from(self.token_lifetime.as_millis()).unwrap_or(u64::MAX);
            if issued_at.saturating_add(lifetime) < now_ms() {
                return Err(Refusal {
                    code: "token_expired",
                    message: "Token expired",
                });
            }
            if user.invalidate_tokens_at.is_some_and(|at| issued_at < at) {
                return Err(Refusal {
                    code: "token_revoked",
                    message: "Token revoked",
                });
            }
        }
        Ok(user_id)
    }
}

/// Configures a [`MockId6`] before it starts.
#[must_use]
#[derive(Debug, Clone)]
pub struct MockId6Builder {
    secret: Vec<u8>,
    token_lifetime: Duration,
}

impl Default for MockId6Builder {
    fn default() -> Self {
        MockId6Builder {
            secret: b"mock-id6-jwt-secret".to_vec(),
            token_lifetime: Duration::from_secs(30 * 24 * 3600),
        }
    }
}

impl MockId6Builder {
    /// The HS256 secret tokens are signed with.
    pub fn jwt_secret(mut self, secret: impl Into<Vec<u8>>) -> Self {
        self.secret = secret.into();
        self
    }

    /// How long after `issuedAt` a token expires (id6's default: 30 days).
    pub fn token_lifetime(mut self, lifetime: Duration) -> Self {
        self.token_lifetime = lifetime;
        self
    }

    /// Binds `127.0.0.1:0` and starts serving on the current tokio runtime.
    ///
    /// # Errors
    ///
    /// When the loopback port cannot be bound.
    pub async fn start(self) -> std::io::Result<MockId6> {
        let state = Arc::new(State {
            secret: self.secret,
            token_lifetime: self.token_lifetime,
            users: Mutex::default(),
            next_id: AtomicU64::new(1),
            fault: Mutex::default(),
            requests: Mutex::default(),
        });
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", 0)).await?;
        let addr = listener.local_addr()?;
        let (stop, stopped) = watch::channel(false);
        let task = tokio::spawn(super::server::serve(listener, state.clone(), stopped));
        Ok(MockId6 {
            state,
            addr,
            stop,
            task: Mutex::new(Some(task)),
        })
    }
}

/// An id6 look-alike server on loopback; see the [module docs](super).
///
/// Dropping it stops the server.
pub struct MockId6 {
    state: Arc<State>,
    addr: SocketAddr,
    stop: watch::Sender<bool>,
    task: Mutex<Option<JoinHandle<()>>>,
}

impl fmt::Debug for MockId6 {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MockId6")
            .field("addr", &self.addr)
            .finish_non_exhaustive()
    }
}

impl MockId6 {
    /// Starts a mock with the default settings; see [`MockId6Builder::start`].
    ///
    /// # Errors
    ///
    /// When the loopback port cannot be bound.
    pub async fn start() -> std::io::Result<MockId6> {
        MockId6Builder::default().start().await
    }

    /// A builder, to change the JWT secret or token lifetime.
    pub fn builder() -> MockId6Builder {
        MockId6Builder::default()
    }

    /// The base URL to give [`Id6::builder`](crate::Id6::builder): `http://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The address it listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Adds a local user and returns its id.
    pub fn add_user(&self, name: &str, email: &str) -> u64 {
        let id = self.state.next_id.fetch_add(1, Ordering::Relaxed);
        lock(&self.state.users).insert(
            id,
            MockUser {
                name: name.to_owned(),
                email: email.to_owned(),
                invalidate_tokens_at: None,
            },
        );
        id
    }

    /// Deletes a user: its tokens then get `user_not_found`.
    pub fn remove_user(&self, id: u64) {
        lock(&self.state.users).remove(&id);
    }

    /// Renames a user, as a profile update would.
    pub fn rename_user(&self, id: u64, name: &str) {
        if let Some(user) = lock(&self.state.users).get_mut(&id) {
            user.name = name.to_owned();
        }
    }

    /// A token for `user_id`, issued now, as id6's login would set it.
    pub fn token_for(&self, user_id: u64) -> String {
        self.token_issued_at(user_id, now_ms())
    }

    /// A token for `user_id` whose lifetime ran out a minute ago.
    pub fn expired_token_for(&self, user_id: u64) -> String {
        let lifetime = u64::try_from(self.state.token_lifetime.as_millis()).unwrap_or(u64::MAX);
        self.token_issued_at(user_id, now_ms().saturating_sub(lifetime + 60_000))
    }

    /// A token with a chosen `issuedAt` (ms since the epoch).
    pub fn token_issued_at(&self, user_id: u64, issued_at_ms: u64) -> String {
        let claims = json!({
            "userId": user_id,
            "issuedAt": issued_at_ms,
            "iat": issued_at_ms / 1000,
        });
        jsonwebtoken::encode(
            &Header::new(Algorithm::HS256),
            &claims,
            &EncodingKey::from_secret(&self.state.secret),
        )
        .unwrap_or_default()
    }

    /// Revokes every token of the user issued before now, as id6's `GET /user/disconnect`.
    pub fn revoke_tokens(&self, user_id: u64) {
        if let Some(user) = lock(&self.state.users).get_mut(&user_id) {
            user.invalidate_tokens_at = Some(now_ms());
        }
    }

    /// Makes every route misbehave until [`clear_fault`](Self::clear_fault).
    pub fn set_fault(&self, fault: Fault) {
        *lock(&self.state.fault) = Some(fault);
    }

    /// Back to normal answers.
    pub fn clear_fault(&self) {
        *lock(&self.state.fault) = None;
    }

    /// Every request received so far, oldest first.
    pub fn requests(&self) -> Vec<RecordedRequest> {
        lock(&self.state.requests).clone()
    }

    /// How many `GET /user` requests arrived, whatever their answer.
    pub fn user_calls(&self) -> usize {
        self.count(|r| r.method == "GET" && r.path == "/user")
    }

    /// How many `GET /user` requests carried `token` as their `auth` cookie.
    pub fn user_calls_for(&self, token: &str) -> usize {
        self.count(|r| {
            r.method == "GET"
                && r.path == "/user"
                && r.cookie.as_deref().is_some_and(|c| {
                    cookie::Cookie::split_parse(c)
                        .filter_map(Result::ok)
                        .any(|c| c.name() == "auth" && c.value() == token)
                })
        })
    }

    fn count(&self, pred: impl Fn(&RecordedRequest) -> bool) -> usize {
        lock(&self.state.requests)
            .iter()
            .filter(|r| pred(r))
            .count()
    }

    /// Forgets the requests received so far.
    pub fn reset_counters(&self) {
        lock(&self.state.requests).clear();
    }

    /// Stops the server and closes its port and every open connection; afterwards
    /// connecting to [`addr`](Self::addr) is refused.
    pub async fn shutdown(&self) {
        let _ = self.stop.send(true);
        let task = lock(&self.task).take();
        if let Some(task) = task {
            let _ = task.await;
        }
    }
}

impl Drop for MockId6 {
    fn drop(&mut self) {
        let _ = self.stop.send(true);
    }
}
