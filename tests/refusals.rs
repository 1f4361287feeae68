//! What a refusal says. Under `Router::nest`, every refusal names the path the client asked
//! for (axum hands the nested router a URI without the prefix and keeps the original in
//! `OriginalUri`): the extractors, the guards, `Session`, `Error` as a response, and the
//! debug log. A guard the layer does not reach says how to fix it, order included.

mod common;

use std::io::Write;
use std::sync::{Arc, Mutex, OnceLock};

use axum::body::{to_bytes, Body};
use axum::http::{HeaderMap, Request};
use axum::routing::{get, post};
use axum::Router;
use id6_tower::testing::{Fault, MockId6};
use id6_tower::{CurrentUser, Id6, RequireUser, Session};
use tower::ServiceExt;

/// Every refusing part of the crate, each under `/admin`.
fn app(id6: &Id6) -> Router {
    let admins = ["alice@example.com".to_owned()];
    let guarded = Router::new()
        .route("/", get(|| async { "admin" }))
        .route("/stats", get(|| async { "stats" }))
        .route_layer(id6.require_user_where(move |user| {
            user.email.as_ref().is_some_and(|e| admins.contains(e))
        }));
    let signed_in = Router::new()
        .route("/account", get(|| async { "account" }))
        .route_layer(id6.require_user());
    let writes = Router::new()
        .route("/write", post(|| async { "written" }))
        .route_layer(id6.csrf());
    let id6_for_me = id6.clone();
    let open = Router::new()
        .route(
            "/who",
            get(|RequireUser(user): RequireUser| async move { user.name.clone() }),
        )
        .route(
            "/maybe",
            get(|CurrentUser(user): CurrentUser| async move { format!("{}", user.is_some()) }),
        )
        .route("/live", get(|_session: Session| async { "live" }))
        .route(
            "/fresh",
            get(move |headers: HeaderMap| async move {
                id6_for_me.user(&headers).await.map(|user| user.name)
            }),
        );
    Router::new()
        .nest("/admin", guarded.merge(signed_in).merge(writes).merge(open))
        .layer(id6.layer())
}

struct Nested {
    mock: MockId6,
    app: Router,
}

impl Nested {
    async fn new() -> Self {
        let mock = MockId6::start().await.unwrap();
        let id6 = common::builder(&mock).build().unwrap();
        let app = app(&id6);
        Nested { mock, app }
    }

    /// The status and JSON body of `method path` with `headers`.
    async fn ask(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
    ) -> (u16, serde_json::Value) {
        let mut request = Request::builder().method(method).uri(path);
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        let response = self
            .app
            .clone()
            .oneshot(request.body(Body::empty()).unwrap())
            .await
            .unwrap();
        let status = response.status().as_u16();
        let bytes = to_bytes(response.into_body(), 64 * 1024).await.unwrap();
        let body = serde_json::from_slice(&bytes)
            .unwrap_or_else(|_| String::from_utf8_lossy(&bytes).into_owned().into());
        (status, body)
    }
}

fn cookie(token: &str) -> String {
    format!("auth={token}")
}

#[tokio::test]
async fn guards_name_the_nested_path() {
    let s = Nested::new().await;
    let bob = s.mock.add_user("Bob", "bob@example.com");
    let bob = cookie(&s.mock.token_for(bob));

    // The two cases: `/admin` itself, and a route below it.
    for path in ["/admin", "/admin/stats"] {
        let (status, body) = s.ask("GET", path, &[("cookie", &bob)]).await;
        assert_eq!(status, 403, "{body}");
        assert_eq!(body["errorCode"], "forbidden");
        assert_eq!(body["path"], path);
    }
    let (status, body) = s.ask("GET", "/admin/account?x=1", &[]).await;
    assert_eq!(status, 401, "{body}");
    assert_eq!(body["path"], "/admin/account");

    let (status, body) = s
        .ask(
            "POST",
            "/admin/write",
            &[
                ("cookie", &bob),
                ("origin", "https://evil.example"),
                ("host", "app.example"),
            ],
        )
        .await;
    assert_eq!(status, 403, "{body}");
    assert_eq!(body["errorCode"], "csrf_rejected");
    assert_eq!(body["path"], "/admin/write");
}

#[tokio::test]
async fn extractors_and_sessions_name_the_nested_path() {
    let s = Nested::new().await;
    let (status, body) = s.ask("GET", "/admin/who", &[]).await;
    assert_eq!(status, 401, "{body}");
    assert_eq!(body["path"], "/admin/who");

    let (status, body) = s.ask("GET", "/admin/live", &[]).await;
    assert_eq!(status, 401, "{body}");
    assert_eq!(body["path"], "/admin/live");

    // CurrentUser refuses only when id6 cannot be asked.
    let alice = s.mock.add_user("Alice", "alice@example.com");
    let alice = cookie(&s.mock.token_for(alice));
    s.mock.set_fault(Fault::Status(500));
    let (status, body) = s.ask("GET", "/admin/maybe", &[("cookie", &alice)]).await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["path"], "/admin/maybe");
}

#[tokio::test]
async fn an_error_as_a_response_names_the_nested_path() {
    let s = Nested::new().await;
    let (status, body) = s.ask("GET", "/admin/fresh", &[]).await;
    assert_eq!(status, 401, "{body}");
    assert_eq!(body["errorCode"], "not_authenticated");
    assert_eq!(body["path"], "/admin/fresh");

    // One refusal shape: the same fields as an extractor's refusal.
    let (_, rejection) = s.ask("GET", "/admin/who", &[]).await;
    let fields = |body: &serde_json::Value| {
        let mut keys: Vec<String> = body.as_object().unwrap().keys().cloned().collect();
        keys.sort();
        keys
    };
    assert_eq!(fields(&body), fields(&rejection));
    // The same body, but for the path: a missing token is a missing token.
    let mut expected = rejection.clone();
    expected["path"] = "/admin/fresh".into();
    assert_eq!(body, expected);
}

/// Every log line of this test binary (a global subscriber: a thread-local default misses
/// events whose callsite another test's thread registered first).
fn captured() -> &'static Captured {
    static LOGS: OnceLock<Captured> = OnceLock::new();
    LOGS.get_or_init(|| {
        let logs = Captured::default();
        let sink = logs.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_max_level(tracing::Level::DEBUG)
            .with_ansi(false)
            .with_writer(move || sink.clone())
            .finish();
        tracing::subscriber::set_global_default(subscriber).unwrap();
        logs
    })
}

#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[tokio::test]
async fn the_rejection_log_names_the_nested_path() {
    let logs = captured();
    let s = Nested::new().await;
    s.ask("GET", "/admin/who", &[]).await;
    s.ask("GET", "/admin/stats", &[]).await;
    s.ask("GET", "/admin/fresh", &[]).await;

    let logs = String::from_utf8(logs.0.lock().unwrap().clone()).unwrap();
    let rejected: Vec<&str> = logs
        .lines()
        .filter(|line| line.contains("id6_tower::rejection"))
        .collect();
    for path in ["/admin/who", "/admin/stats", "/admin/fresh"] {
        let named = format!("path=\"{path}\"");
        assert!(
            rejected.iter().any(|line| line.contains(&named)),
            "{path}: {logs}"
        );
    }
    for short in ["/who", "/stats", "/fresh"] {
        let named = format!("path=\"{short}\"");
        assert!(!logs.contains(&named), "{short}: {logs}");
    }
}

#[tokio::test]
async fn a_guard_outside_the_layer_is_told_to_move_inside() {
    let logs = captured();
    let mock = MockId6::start().await.unwrap();
    let id6 = common::builder(&mock).build().unwrap();
    // The layer is there, but `route_layer` after it wraps the routes from outside.
    let app = Router::new()
        .route("/outside", get(|| async { "never" }))
        .layer(id6.layer())
        .route_layer(id6.require_user());
    let request = Request::get("/outside").body(Body::empty()).unwrap();
    let response = app.oneshot(request).await.unwrap();
    assert_eq!(response.status(), 500);
    let logs = String::from_utf8(logs.0.lock().unwrap().clone()).unwrap();
    let line = logs
        .lines()
        .find(|line| line.contains("ERROR") && line.contains("path=\"/outside\""))
        .unwrap_or_else(|| panic!("no error logged: {logs}"));
    assert!(
        line.contains("move this guard inside `id6.layer()`"),
        "{line}"
    );
}
