//! The private authorization backend: `POST /authorize` with the shared secret.

mod common;

use common::{now_ms, Setup};
use id6_tower::testing::MockId6;

async fn setup(secret: Option<&str>) -> Setup {
    let mock = MockId6::start().await.unwrap();
    let secret = secret.unwrap_or(mock.authorization_secret()).to_owned();
    let id6 = common::builder(&mock)
        .authorization(mock.authorization_url(), secret)
        .build()
        .unwrap();
    Setup::with(mock, id6).await
}

fn headers(token: &str) -> http::HeaderMap {
    let mut h = http::HeaderMap::new();
    h.insert("cookie", format!("auth={token}").parse().unwrap());
    h
}

#[tokio::test]
async fn a_valid_token_is_the_user_in_one_shape() {
    let s = setup(None).await;
    let alice = s.mock.add_user("Alice", "alice@example.com");
    let token = s.mock.token_for(alice);
    let who = s.id6.authenticate(&headers(&token)).await;
    let user = who.user().expect("a user");
    assert_eq!(user.id, alice);
    assert_eq!(user.name, "Alice");
    assert_eq!(user.email.as_deref(), Some("alice@example.com"));
    // `authProvider` there is `authType` here; fields /authorize lacks are None.
    assert_eq!(user.auth_type.as_deref(), Some("local"));
    assert_eq!((user.bio.as_deref(), user.picture.as_deref()), (None, None));
    assert_eq!(s.get("/", Some(&token)).await.1, "Hello, Alice!");
    assert_eq!((s.mock.authorize_calls(), s.mock.user_calls()), (1, 0));
}

#[tokio::test]
async fn invalid_and_revoked_tokens_are_anonymous() {
    let s = setup(None).await;
    let alice = s.mock.add_user("Alice", "alice@example.com");
    let old = s.mock.token_issued_at(alice, now_ms() - 10);
    s.mock.revoke_tokens(alice);
    for (token, code) in [
        // Refused locally, as id6 would.
        ("garbage.token.x".to_owned(), "invalid_token"),
        // id6's own reasons, through /authorize's `error.code`.
        (old.clone(), "token_revoked"),
        (s.mock.expired_token_for(alice), "token_expired"),
    ] {
        let verdict = s.id6.authenticate(&headers(&token)).await;
        assert_eq!(verdict.rejection().map(|r| r.error_code()), Some(code));
        assert!(verdict.is_anonymous());
        let (status, body, _) = s.get("/me", Some(&token)).await;
        assert_eq!(status, 401);
        assert!(
            body.contains(&format!("\"errorCode\":\"{code}\"")),
            "{body}"
        );
    }
    // The revoked answer carried a user too, and `error` won.
    let raw = common::http_client()
        .post(format!("{}/authorize", s.mock.authorization_url()))
        .header("authorization", s.mock.authorization_secret())
        .body(format!(r#"{{"token":"{old}"}}"#))
        .send()
        .await
        .unwrap();
    let body: serde_json::Value = serde_json::from_str(&raw.text().await.unwrap()).unwrap();
    assert_eq!(body["error"]["code"], "token_revoked");
    assert_eq!(body["user"]["id"], alice);
}

#[tokio::test]
async fn a_wrong_secret_is_a_loud_503_never_anonymous() {
    let s = setup(Some("not the secret")).await;
    let alice = s.mock.add_user("Alice", "alice@example.com");
    let token = s.mock.token_for(alice);
    let who = s.id6.authenticate(&headers(&token)).await;
    let error = who.unavailable().expect("unavailable, not anonymous");
    assert!(error.is_secret_rejected() && error.is_unavailable());
    assert!(
        error.to_string().contains("ID6_AUTHORIZATION_SECRET"),
        "{error}"
    );
    let (status, body, _) = s.get("/me", Some(&token)).await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(s.get("/", Some(&token)).await.0, 503);
}

#[tokio::test]
async fn the_authorization_server_refuses_a_missing_secret() {
    // What the mock (like id6) answers without a secret; our client always sends one.
    let mock = MockId6::start().await.unwrap();
    let raw = common::http_client()
        .post(format!("{}/authorize", mock.authorization_url()))
        .body(r#"{"token":"x"}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(raw.status(), 401);
    let body: serde_json::Value = serde_json::from_str(&raw.text().await.unwrap()).unwrap();
    assert_eq!(body["errorCode"], "no_token_provided");
}

#[tokio::test]
async fn a_newer_revocation_evicts_the_users_other_cached_tokens() {
    let s = setup(None).await;
    let alice = s.mock.add_user("Alice", "alice@example.com");
    let laptop = s.mock.token_issued_at(alice, now_ms() - 10);
    assert_eq!(s.get("/", Some(&laptop)).await.1, "Hello, Alice!");
    // Alice disconnects through another app: id6 revokes, our cache does not know...
    s.mock.revoke_tokens(alice);
    // A token issued after the revocation (strictly later, as id6 compares).
    let phone = s.mock.token_issued_at(alice, now_ms() + 10);
    // ...until an answer shows the newer invalidateTokensAt: then the laptop's entry goes.
    assert_eq!(s.get("/", Some(&phone)).await.1, "Hello, Alice!");
    assert_eq!(s.get("/me", Some(&laptop)).await.0, 401);
    assert_eq!(s.mock.authorize_calls(), 3);
}

#[tokio::test]
async fn typed_calls_still_use_the_public_api() {
    let s = setup(None).await;
    let alice = s.mock.add_user("Alice", "alice@example.com");
    let token = s.mock.token_for(alice);
    let user = s.id6.user(&headers(&token)).await.unwrap();
    assert_eq!(user.id, alice);
    assert_eq!((s.mock.user_calls(), s.mock.authorize_calls()), (1, 0));
}
