//! `MockId6`'s handle: the builder, starting both servers, and what tests ask of it.

use std::fmt;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::Value;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use super::state::{lock, Fault, MockUser, RecordedRequest, State};

/// Configures a [`MockId6`] before it starts.
///
/// ```
/// use std::time::Duration;
/// use id6_tower::testing::MockId6;
///
/// # async fn run() -> std::io::Result<()> {
/// let mock = MockId6::builder()
///     .jwt_secret("the id6 secret") // for apps that verify tokens locally
///     .rate_limit(100, Duration::from_secs(60)) // id6's own default, per client IP
///     .start()
///     .await?;
/// # let _ = mock;
/// # Ok(())
/// # }
/// # tokio::runtime::Runtime::new().unwrap().block_on(run()).unwrap();
/// ```
#[must_use]
#[derive(Debug, Clone)]
pub struct MockId6Builder {
    secret: Vec<u8>,
    authorization_secret: String,
    token_lifetime: Duration,
    rate_limit: Option<(u32, Duration)>,
    redirect_origins: Vec<String>,
}

impl Default for MockId6Builder {
    fn default() -> Self {
        MockId6Builder {
            secret: b"mock-id6-jwt-secret".to_vec(),
            authorization_secret: "mock-id6-authorization-secret".to_owned(),
            token_lifetime: Duration::from_secs(30 * 24 * 3600),
            rate_limit: None,
            redirect_origins: Vec::new(),
        }
    }
}

impl MockId6Builder {
    /// The HS256 secret tokens are signed with.
    pub fn jwt_secret(mut self, secret: impl Into<Vec<u8>>) -> Self {
        self.secret = secret.into();
        self
    }

    /// The secret the authorization server expects in `Authorization`.
    pub fn authorization_secret(mut self, secret: impl Into<String>) -> Self {
        self.authorization_secret = secret.into();
        self
    }

    /// How long after `issuedAt` a token expires (id6's default: 30 days).
    pub fn token_lifetime(mut self, lifetime: Duration) -> Self {
        self.token_lifetime = lifetime;
        self
    }

    /// id6's rate limit: at most `limit` requests per `window` per client IP on each of the
    /// two servers (each counts its own), a fixed window counting every request (refused
    /// ones too), with id6's headers and 429. id6's
    /// default is 100 per 60 s; the mock's default is no limit.
    pub fn rate_limit(mut self, limit: u32, window: Duration) -> Self {
        self.rate_limit = Some((limit, window));
        self
    }

    /// Binds two ports on `127.0.0.1` (authentication and authorization servers) and starts
    /// serving on the current tokio runtime.
    ///
    /// # Errors
    ///
    /// When a loopback port cannot be bound.
    pub async fn start(self) -> std::io::Result<MockId6> {
        let state = Arc::new(State {
            secret: self.secret,
            authorization_secret: self.authorization_secret,
            token_lifetime: self.token_lifetime,
            users: Mutex::default(),
            next_id: AtomicU64::new(1),
            fault: Mutex::default(),
            requests: Mutex::default(),
            rate_limit: self.rate_limit,
            windows: Mutex::default(),
            hold: watch::Sender::new(false),
            held: watch::Sender::new(0),
            in_flight: AtomicU64::new(0),
            max_in_flight: AtomicU64::new(0),
            skew_ns: AtomicU64::new(0),
            redirect_origins: Mutex::new(self.redirect_origins),
        });
        let public = tokio::net::TcpListener::bind(("127.0.0.1", 0)).await?;
        let private = tokio::net::TcpListener::bind(("127.0.0.1", 0)).await?;
        let addr = public.local_addr()?;
        let authorization_addr = private.local_addr()?;
        let (stop, stopped) = watch::channel(false);
        let tasks = vec![
            tokio::spawn(super::server::serve(
                "authentication",
                public,
                super::routes::authentication(state.clone()),
                state.clone(),
                stopped.clone(),
            )),
            tokio::spawn(super::server::serve(
                "authorization",
                private,
                super::routes::authorization(state.clone()),
                state.clone(),
                stopped,
            )),
        ];
        Ok(MockId6 {
            state,
            addr,
            authorization_addr,
            stop,
            tasks: Mutex::new(tasks),
        })
    }
}

/// An id6 look-alike server on loopback; see the [module docs](super).
///
/// Dropping it stops the server.
///
/// ```
/// use id6_tower::testing::{Fault, MockId6};
/// use id6_tower::Id6;
///
/// # async fn run() -> Result<(), Box<dyn std::error::Error>> {
/// let mock = MockId6::start().await?;
/// let alice = mock.add_user("Alice", "alice@example.com");
/// let id6 = Id6::builder(mock.url()).build()?;
///
/// let mut headers = http::HeaderMap::new();
/// headers.insert("cookie", format!("auth={}", mock.token_for(alice)).parse()?);
/// assert_eq!(id6.authenticate(&headers).await.user().unwrap().name, "Alice");
/// assert_eq!(mock.user_calls(), 1);
///
/// // id6 breaks: a fresh token (a cache miss) cannot be resolved.
/// mock.set_fault(Fault::Status(500));
/// headers.insert("cookie", format!("auth={}", mock.expired_token_for(alice)).parse()?);
/// assert!(id6.authenticate(&headers).await.unavailable().is_some());
/// # Ok(())
/// # }
/// # tokio::runtime::Runtime::new().unwrap().block_on(run()).unwrap();
/// ```
pub struct MockId6 {
    state: Arc<State>,
    addr: SocketAddr,
    authorization_addr: SocketAddr,
    stop: watch::Sender<bool>,
    tasks: Mutex<Vec<JoinHandle<()>>>,
}

impl fmt::Debug for MockId6 {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MockId6")
            .field("addr", &self.addr)
            .field("authorization_addr", &self.authorization_addr)
            .finish_non_exhaustive()
    }
}

impl MockId6 {
    /// Starts a mock with the default settings; see [`MockId6Builder::start`].
    ///
    /// # Errors
    ///
    /// When a loopback port cannot be bound.
    pub async fn start() -> std::io::Result<MockId6> {
        MockId6Builder::default().start().await
    }

    /// A builder, to change the secrets, the token lifetime or the rate limit.
    pub fn builder() -> MockId6Builder {
        MockId6Builder::default()
    }

    /// The base URL to give [`Id6::builder`](crate::Id6::builder): `http://127.0.0.1:<port>`
    /// (the authentication server, as reached directly rather than behind `/api`).
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The authorization server's base URL, for
    /// [`Id6Builder::authorization`](crate::Id6Builder::authorization).
    pub fn authorization_url(&self) -> String {
        format!("http://{}", self.authorization_addr)
    }

    /// The secret the authorization server expects.
    pub fn authorization_secret(&self) -> &str {
        &self.state.authorization_secret
    }

    /// Lets the sign-in page send the browser back to `origin` (`http://127.0.0.1:3000`):
    /// `POST /auth/login` refuses any other redirect.
    pub fn allow_redirect(&self, origin: &str) {
        lock(&self.state.redirect_origins).push(origin.trim_end_matches('/').to_owned());
    }

    /// The sign-in page, which returns the browser to `redirect` once signed in.
    pub fn sign_in_url(&self, redirect: &str) -> String {
        let page = format!("{}/login", self.url());
        reqwest::Url::parse_with_params(&page, [("redirect", redirect)])
            .map(String::from)
            .unwrap_or(page)
    }

    /// Adds a local user and returns its id.
    pub fn add_user(&self, name: &str, email: &str) -> u64 {
        let id = self.state.next_id.fetch_add(1, Ordering::Relaxed);
        let now = self.state.now();
        lock(&self.state.users).insert(
            id,
            MockUser {
                name: name.to_owned(),
                email: email.to_owned(),
                bio: None,
                language: "en".to_owned(),
                picture: None,
                created_at: now,
                updated_at: now,
                invalidate_tokens_at: None,
            },
        );
        id
    }

    /// Moves id6's clock forward by `by`, as if that much time had passed on id6: its
    /// rate-limit windows, its tokens' expiry, the times it stamps (`issuedAt`,
    /// `invalidateTokensAt`). The handle's clock is the handle's own
    /// ([`advance_clock`](super::advance_clock)): move both to let time pass for both.
    /// [`Fault::Delay`] stays a real wait.
    pub fn advance_clock(&self, by: Duration) {
        let ns = u64::try_from(by.as_nanos()).unwrap_or(u64::MAX);
        let _ = self
            .state
            .skew_ns
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |s| {
                Some(s.saturating_add(ns))
            });
    }

    /// Deletes a user: its tokens then get `user_not_found`.
    pub fn remove_user(&self, id: u64) {
        lock(&self.state.users).remove(&id);
    }

    /// Renames a user behind the app's back (as another app's profile update would).
    pub fn rename_user(&self, id: u64, name: &str) {
        if let Some(user) = lock(&self.state.users).get_mut(&id) {
            user.name = name.to_owned();
        }
    }

    /// The user as `GET /user` would show it, if the user exists.
    pub fn user_json(&self, id: u64) -> Option<Value> {
        self.state.user_json(id)
    }

    /// The bytes of the user's picture, if one was uploaded.
    pub fn picture_of(&self, id: u64) -> Option<Vec<u8>> {
        lock(&self.state.users)
            .get(&id)?
            .picture
            .as_ref()
            .map(|(bytes, _)| bytes.clone())
    }

    /// A token for `user_id`, issued now, as id6's login would set it.
    pub fn token_for(&self, user_id: u64) -> String {
        self.token_issued_at(user_id, self.state.now_ms())
    }

    /// A token for `user_id` whose lifetime ran out a minute ago.
    pub fn expired_token_for(&self, user_id: u64) -> String {
        let lifetime = u64::try_from(self.state.token_lifetime.as_millis()).unwrap_or(u64::MAX);
        self.token_issued_at(
            user_id,
            self.state.now_ms().saturating_sub(lifetime + 60_000),
        )
    }

    /// A token with a chosen `issuedAt` (ms since the epoch).
    pub fn token_issued_at(&self, user_id: u64, issued_at_ms: u64) -> String {
        self.state.token(user_id, issued_at_ms)
    }

    /// Revokes every token of the user issued before now, as id6's `GET /user/disconnect`.
    pub fn revoke_tokens(&self, user_id: u64) {
        self.revoke_tokens_at(user_id, self.state.now_ms());
    }

    /// Revokes every token of the user issued before `at_ms` (ms since the epoch), which may
    /// be in the future: an id6 whose clock runs ahead.
    pub fn revoke_tokens_at(&self, user_id: u64, at_ms: u64) {
        if let Some(user) = lock(&self.state.users).get_mut(&user_id) {
            user.invalidate_tokens_at = Some(at_ms);
        }
    }

    /// From now on, `GET /user` answers are decided at once (as id6 would, at that moment)
    /// but held back until [`release_user_answers`](Self::release_user_answers): to force
    /// an answer to arrive after something else happened.
    pub fn hold_user_answers(&self) {
        self.state.hold.send_replace(true);
    }

    /// Sends every held answer and stops holding.
    pub fn release_user_answers(&self) {
        self.state.hold.send_replace(false);
    }

    /// Waits until `n` `GET /user` answers are decided and held.
    pub async fn wait_for_held_answers(&self, n: usize) {
        let mut held = self.state.held.subscribe();
        let _ = held.wait_for(|held| *held >= n).await;
    }

    /// Makes every route misbehave until [`clear_fault`](Self::clear_fault).
    pub fn set_fault(&self, fault: Fault) {
        *lock(&self.state.fault) = Some(fault);
    }

    /// Back to normal answers.
    pub fn clear_fault(&self) {
        *lock(&self.state.fault) = None;
    }

    /// Every request received so far by either server, oldest first.
    pub fn requests(&self) -> Vec<RecordedRequest> {
        lock(&self.state.requests).clone()
    }

    /// How many `GET /user` requests arrived, whatever their answer.
    pub fn user_calls(&self) -> usize {
        self.calls("GET", "/user")
    }

    /// How many `POST /authorize` requests arrived, whatever their answer.
    pub fn authorize_calls(&self) -> usize {
        self.calls("POST", "/authorize")
    }

    /// How many `method path` requests arrived, whatever their answer.
    pub fn calls(&self, method: &str, path: &str) -> usize {
        self.count(|r| r.method == method && r.path == path)
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

    /// The most requests it was handling at once so far.
    pub fn max_concurrent_requests(&self) -> u64 {
        self.state.max_in_flight.load(Ordering::SeqCst)
    }

    /// Stops both servers and closes their ports and every open connection; afterwards
    /// connecting is refused.
    pub async fn shutdown(&self) {
        let _ = self.stop.send(true);
        let tasks = std::mem::take(&mut *lock(&self.tasks));
        for task in tasks {
            let _ = task.await;
        }
    }
}

impl Drop for MockId6 {
    fn drop(&mut self) {
        let _ = self.stop.send(true);
    }
}
