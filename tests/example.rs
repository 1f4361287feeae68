//! The axum example's public contract (its module doc), over loopback: guards, admin,
//! CSRF on every write, id6's `invalid_body`.

mod common;

#[allow(dead_code, unreachable_pub)]
#[path = "../examples/axum.rs"]
mod example;

use std::sync::Arc;

use id6_tower::testing::MockId6;
use id6_tower::Id6;

struct App {
    mock: MockId6,
    base: String,
    login: String,
    http: reqwest::Client,
    alice: String,
    bob: String,
}

async fn start() -> App {
    let mock = MockId6::start().await.unwrap();
    let alice = mock.add_user("Alice", "alice@example.com");
    let bob = mock.add_user("Bob", "bob@example.com");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let login = mock.sign_in_url(&format!("{base}/account"));
    let state = example::AppState {
        id6: Id6::builder(mock.url()).login_url(&login).build().unwrap(),
        login_url: Some(format!("{}/login", mock.url())),
        admin_emails: Arc::from(vec!["alice@example.com".to_owned()]),
    };
    tokio::spawn(async move { axum::serve(listener, example::app(state)).await });
    App {
        alice: format!("auth={}", mock.token_for(alice)),
        bob: format!("auth={}", mock.token_for(bob)),
        mock,
        base,
        login,
        http: common::http_client_no_redirect(),
    }
}

async fn code(response: reqwest::Response) -> (u16, Option<String>) {
    let status = response.status().as_u16();
    let text = response.text().await.unwrap();
    let body: serde_json::Value = serde_json::from_str(&text).unwrap_or_default();
    (status, body["errorCode"].as_str().map(str::to_owned))
}

#[tokio::test]
async fn account_and_admin_are_guarded() {
    let app = start().await;
    let get = |path: &str| app.http.get(format!("{}{path}", app.base));

    let ok = get("/account")
        .header("cookie", &app.alice)
        .send()
        .await
        .unwrap();
    assert_eq!(ok.text().await.unwrap(), "Account of Alice");
    let browser = get("/account")
        .header("accept", "text/html")
        .send()
        .await
        .unwrap();
    assert_eq!(browser.status(), 303);
    assert_eq!(browser.headers()["location"], app.login.as_str());
    assert_eq!(
        code(get("/account").send().await.unwrap()).await,
        (401, Some("not_authenticated".to_owned()))
    );

    let admin = get("/admin")
        .header("cookie", &app.alice)
        .send()
        .await
        .unwrap();
    assert_eq!(admin.text().await.unwrap(), "Admin: Alice");
    assert_eq!(
        code(
            get("/admin")
                .header("cookie", &app.bob)
                .send()
                .await
                .unwrap()
        )
        .await,
        (403, Some("forbidden".to_owned()))
    );
    assert_eq!(get("/admin").send().await.unwrap().status(), 401);
}

#[tokio::test]
async fn every_write_is_behind_the_csrf_check() {
    let app = start().await;
    let post = |path: &str| {
        app.http
            .post(format!("{}{path}", app.base))
            .header("cookie", &app.bob)
    };
    for path in [
        "/me/profile",
        "/me/picture",
        "/logout",
        "/logout-everywhere",
    ] {
        let response = post(path)
            .header("origin", "https://evil.example")
            .header("sec-fetch-site", "cross-site")
            .send()
            .await
            .unwrap();
        assert_eq!(
            code(response).await,
            (403, Some("csrf_rejected".to_owned())),
            "{path}"
        );
    }
    // From the app's own pages, the same write goes through.
    let response = post("/me/profile")
        .header("origin", &app.base)
        .header("sec-fetch-site", "same-origin")
        .header("content-type", "application/json")
        .body(r#"{"name": "Robert"}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 204);
    assert_eq!(app.mock.calls("POST", "/user/profile"), 1);
}

#[tokio::test]
async fn an_invalid_profile_gets_ids_invalid_body() {
    let app = start().await;
    for body in [
        r#"{"bio": "no name"}"#,
        r#"{"name": 42}"#,
        r#"{"name": ""}"#,
        r#"{"name": "Alice", "language": "french"}"#,
        r#"["not", "an", "object"]"#,
        "{not json",
    ] {
        let response = app
            .http
            .post(format!("{}/me/profile", app.base))
            .header("cookie", &app.alice)
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
            .unwrap();
        assert_eq!(
            code(response).await,
            (400, Some("invalid_body".to_owned())),
            "{body}"
        );
    }
    assert_eq!(
        app.mock.calls("POST", "/user/profile"),
        0,
        "refused before sending"
    );
}
