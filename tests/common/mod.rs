//! Shared by the integration tests: a MockId6 and an axum app behind the layer, on loopback.
#![allow(dead_code)] // each test file uses its own part of the kit

use std::sync::Arc;
use std::time::Duration;

use axum::{routing::get, Json, Router};
use id6_tower::testing::MockId6;
use id6_tower::{CurrentUser, Id6, Id6Builder, RequireUser, User};

pub async fn home(CurrentUser(user): CurrentUser) -> String {
    match user {
        Some(user) => format!("Hello, {}!", user.name),
        None => "Hello, anonymous!".to_owned(),
    }
}

pub async fn me(RequireUser(user): RequireUser) -> Json<Arc<User>> {
    Json(user)
}

/// The app every test talks to: `/` (maybe a user), `/me` (a user), `/health` (no user).
pub fn app(id6: &Id6) -> Router {
    Router::new()
        .route("/", get(home))
        .route("/me", get(me))
        .route("/health", get(|| async { "ok" }))
        .layer(id6.layer())
}

/// A builder for the mock with a short timeout, so faults resolve quickly.
pub fn builder(mock: &MockId6) -> Id6Builder {
    Id6::builder(mock.url()).timeout(Duration::from_millis(500))
}

/// Serves `app` on `127.0.0.1:0` and returns its base URL.
pub async fn serve(app: Router) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    format!("http://{addr}")
}

/// A started mock with a started app in front of it.
pub struct Setup {
    pub mock: MockId6,
    pub id6: Id6,
    pub base: String,
    pub http: reqwest::Client,
}

impl Setup {
    pub async fn new() -> Self {
        let mock = MockId6::start().await.unwrap();
        let id6 = builder(&mock).build().unwrap();
        Self::with(mock, id6).await
    }

    pub async fn with(mock: MockId6, id6: Id6) -> Self {
        let base = serve(app(&id6)).await;
        Setup {
            mock,
            id6,
            base,
            http: http_client(),
        }
    }

    /// `GET path` with `auth=<token>` (if any) among other cookies: (status, body, retry-after).
    pub async fn get(&self, path: &str, token: Option<&str>) -> (u16, String, Option<String>) {
        let mut request = self.http.get(format!("{}{path}", self.base));
        if let Some(token) = token {
            request = request.header("cookie", format!("theme=dark; auth={token}; lang=fr"));
        }
        let response = request.send().await.unwrap();
        let status = response.status().as_u16();
        let retry = response
            .headers()
            .get("retry-after")
            .map(|v| v.to_str().unwrap().to_owned());
        (status, response.text().await.unwrap(), retry)
    }

    /// [`get`](Self::get)'s status, as a task of its own: for requests in flight together.
    pub fn spawn_get(&self, path: &str, token: &str) -> tokio::task::JoinHandle<u16> {
        let request = self
            .http
            .get(format!("{}{path}", self.base))
            .header("cookie", format!("theme=dark; auth={token}; lang=fr"));
        tokio::spawn(async move { request.send().await.unwrap().status().as_u16() })
    }
}

/// A client for loopback HTTP. With every feature on (`--all-features`), reqwest would pick
/// native-tls and load the system's certificates: ~200 ms per client in a debug build.
pub fn http_client() -> reqwest::Client {
    reqwest::Client::builder()
        .tls_backend_rustls()
        .build()
        .expect("a reqwest client")
}

/// A client that shows redirects instead of following them.
pub fn http_client_no_redirect() -> reqwest::Client {
    reqwest::Client::builder()
        .tls_backend_rustls()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .expect("a reqwest client")
}

/// Milliseconds since the epoch, as id6's `issuedAt`.
pub fn now_ms() -> u64 {
    let since = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap();
    u64::try_from(since.as_millis()).unwrap()
}

/// `GET {base}/` with `token`'s cookie while id6 holds its `GET /user` answers: `during`
/// runs once the answer is held (a revocation, say), then id6 answers. The body the request
/// got (a request already running may see an answer that predates `during`).
pub async fn while_held(
    mock: &MockId6,
    base: &str,
    token: &str,
    during: impl std::future::Future<Output = ()>,
) -> String {
    mock.hold_user_answers();
    let request = http_client()
        .get(format!("{base}/"))
        .header("cookie", format!("auth={token}"))
        .send();
    let in_flight = tokio::spawn(async move { request.await.unwrap().text().await.unwrap() });
    tokio::time::timeout(Duration::from_secs(10), mock.wait_for_held_answers(1))
        .await
        .expect("the answer is held");
    during.await;
    mock.release_user_answers();
    in_flight.await.unwrap()
}
