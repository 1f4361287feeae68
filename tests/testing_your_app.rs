//! The README's "Testing your app", verbatim (`tests/docs.rs` holds them equal): a test of
//! an axum app on `MockId6`, as an app's own `tests/` would hold it.

use axum::body::{to_bytes, Body};
use axum::http::{header, Request, StatusCode};
use axum::{routing::get, Router};
use id6_tower::testing::MockId6;
use id6_tower::{Id6, RequireUser};
use tower::ServiceExt; // `oneshot`

/// The app under test: in yours, call your own router.
fn app(id6: &Id6) -> Router {
    let admins = ["alice@example.com".to_owned()];
    let admin = Router::new()
        .route(
            "/stats",
            get(|RequireUser(user): RequireUser| async move { format!("stats for {}", user.name) }),
        )
        .route_layer(id6.require_user_where(move |user| {
            let email = user.email.as_deref().unwrap_or_default();
            admins.iter().any(|admin| admin.eq_ignore_ascii_case(email))
        }));
    Router::new().nest("/admin", admin).layer(id6.layer())
}

/// `GET path` with the cookie id6 sets at sign-in, if any: the status and the body.
async fn ask(app: &Router, path: &str, token: Option<&str>) -> (StatusCode, String) {
    let mut request = Request::get(path);
    if let Some(token) = token {
        request = request.header(header::COOKIE, format!("auth={token}"));
    }
    let request = request.body(Body::empty()).unwrap();
    let response = app.clone().oneshot(request).await.unwrap();
    let status = response.status();
    let body = to_bytes(response.into_body(), 1 << 20).await.unwrap();
    (status, String::from_utf8(body.to_vec()).unwrap())
}

#[tokio::test]
async fn admins_see_the_stats_and_others_are_refused() {
    // An id6 look-alike on 127.0.0.1:0, with two users: an admin (her email in any case)
    // and one who is not.
    let mock = MockId6::start().await.unwrap();
    let alice = mock.add_user("Alice", "Alice@Example.com");
    let bob = mock.add_user("Bob", "bob@example.com");
    let id6 = Id6::builder(mock.url()).build().unwrap();
    let app = app(&id6);

    let alice_token = mock.token_for(alice);
    let (status, body) = ask(&app, "/admin/stats", Some(&alice_token)).await;
    assert_eq!((status, body.as_str()), (StatusCode::OK, "stats for Alice"));

    let (status, body) = ask(&app, "/admin/stats", Some(&mock.token_for(bob))).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let body: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(body["errorCode"], "forbidden");
    assert_eq!(body["path"], "/admin/stats");

    let (status, _) = ask(&app, "/admin/stats", None).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);

    // One `GET /user` per token: Alice's second request is a cache hit.
    ask(&app, "/admin/stats", Some(&alice_token)).await;
    assert_eq!(mock.user_calls(), 2);
}
