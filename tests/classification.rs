//! Every verdict id6 can give, and every way it can fail, as the app's routes answer them.

mod common;

use std::time::Duration;

use common::Setup;
use id6_tower::testing::{advance_clock, Fault, MockId6};
use id6_tower::Id6;

#[tokio::test]
async fn a_valid_token_is_the_user() {
    let s = Setup::new().await;
    let alice = s.mock.add_user("Alice", "alice@example.com");
    let token = s.mock.token_for(alice);
    let (status, body, _) = s.get("/me", Some(&token)).await;
    assert_eq!(status, 200);
    let user: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(user["id"], alice);
    assert_eq!(user["name"], "Alice");
    assert_eq!(user["email"], "alice@example.com");
    assert_eq!(s.get("/", Some(&token)).await.1, "Hello, Alice!");
}

#[tokio::test]
async fn no_cookie_is_anonymous_without_asking_id6() {
    let s = Setup::new().await;
    let (status, body, _) = s.get("/me", None).await;
    assert_eq!(status, 401);
    let body: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(body["statusCode"], 401);
    assert_eq!(body["errorCode"], "not_authenticated");
    assert_eq!(body["path"], "/me");
    assert_eq!(s.get("/", None).await.1, "Hello, anonymous!");
    assert_eq!(s.get("/", Some("")).await.1, "Hello, anonymous!");
    assert_eq!(s.mock.user_calls(), 0);
}

#[tokio::test]
async fn every_refusal_of_id6_is_anonymous() {
    let s = Setup::new().await;
    let alice = s.mock.add_user("Alice", "a@example.com");
    let bob = s.mock.add_user("Bob", "b@example.com");
    let carol = s.mock.add_user("Carol", "c@example.com");
    // id6's revocation is strict (tokens issued in the same millisecond survive): this one
    // is a minute older than it.
    let revoked = s.mock.token_issued_at(bob, common::now_ms() - 60_000);
    let gone = s.mock.token_for(carol);
    s.mock.revoke_tokens(bob);
    s.mock.remove_user(carol);
    let foreign = MockId6::builder()
        .jwt_secret("another secret")
        .start()
        .await
        .unwrap()
        .token_for(alice);
    // Each answered in id6's own words, as id6 answers them, from the miss and again from
    // the negative cache.
    let cases = [
        (
            "garbage",
            "not-a-jwt".to_owned(),
            "invalid_token",
            "Invalid token",
        ),
        ("wrong signature", foreign, "invalid_token", "Invalid token"),
        (
            "expired",
            s.mock.expired_token_for(alice),
            "token_expired",
            "Token expired",
        ),
        ("revoked", revoked, "token_revoked", "Token revoked"),
        ("user gone", gone, "user_not_found", "User not found"),
    ];
    for (what, token, code, message) in &cases {
        for _miss_then_hit in 0..2 {
            let (status, body, _) = s.get("/me", Some(token)).await;
            assert_eq!(status, 401, "{what}: {body}");
            let body: serde_json::Value = serde_json::from_str(&body).unwrap();
            assert_eq!(
                body,
                serde_json::json!({"statusCode": 401, "path": "/me",
                    "message": message, "errorCode": code}),
                "{what}"
            );
        }
        assert_eq!(
            s.get("/", Some(token)).await.1,
            "Hello, anonymous!",
            "{what}"
        );
    }
    // Each refusal asked id6 once (the second request was a negative cache hit), except the
    // garbage, which is no JWT and never reaches id6.
    assert_eq!(s.mock.user_calls(), cases.len() - 1);
}

/// What `/me`, `/` and `/health` answer while id6 misbehaves in each way, each with a fresh
/// handle (so that one fault's breaker does not hide the next).
#[tokio::test]
async fn id6_failures_are_503_and_never_cached() {
    let faults = [
        Fault::Status(500),
        Fault::Status(502),
        Fault::Status(404),
        Fault::RateLimited,
        Fault::DropConnection,
        Fault::MalformedBody,
        Fault::HtmlPage,
        Fault::Delay(Duration::from_secs(3600)), // hanging: bounded by the 500 ms timeout
    ];
    for fault in faults {
        let s = Setup::new().await;
        let alice = s.mock.add_user("Alice", "a@example.com");
        s.mock.set_fault(fault.clone());
        let token = s.mock.token_for(alice);
        let (status, body, retry) =
            tokio::time::timeout(Duration::from_secs(20), s.get("/me", Some(&token)))
                .await
                .unwrap_or_else(|_| {
                    panic!("{fault:?}: the request was not bounded by the timeout")
                });
        assert_eq!(status, 503, "{fault:?}: {body}");
        assert!(
            body.contains("\"errorCode\":\"id6_unavailable\""),
            "{fault:?}: {body}"
        );
        let retry: u64 = retry.expect("503 carries Retry-After").parse().unwrap();
        if fault == Fault::RateLimited {
            // X-RateLimit-Reset is 60 s away, not the default.
            assert!((55..=61).contains(&retry), "{fault:?}: Retry-After {retry}");
        } else {
            assert!(retry >= 1, "{fault:?}");
        }
        assert_eq!(s.get("/", Some(&token)).await.0, 503, "{fault:?}");
        assert_eq!(
            s.get("/health", Some(&token)).await,
            (200, "ok".to_owned(), None)
        );
        let calls = s.mock.user_calls();
        if fault == Fault::RateLimited {
            // After a 429, id6 is left alone until its window opens.
            assert_eq!(calls, 1, "{fault:?}");
            continue;
        }
        // Not cached: /me, / and /health each asked id6 (the layer resolves before routing).
        assert_eq!(calls, 3, "{fault:?}");
        s.mock.clear_fault();
        if let Fault::Delay(_) = fault {
            // Three timeouts in a row: id6 is left alone for a short while.
            let id6_tower::Health::Open {
                until,
                rate_limited,
                ..
            } = s.id6.health()
            else {
                panic!("the breaker opens after repeated timeouts");
            };
            assert!(!rate_limited);
            assert_eq!(s.get("/me", Some(&token)).await.0, 503);
            assert_eq!(s.mock.user_calls(), 3, "not called while open");
            let wait = until
                .duration_since(std::time::SystemTime::now())
                .unwrap_or_default();
            advance_clock(&s.id6, wait + Duration::from_millis(50));
        }
        // Once id6 is back, the same token works at once.
        assert_eq!(
            s.get("/me", Some(&token)).await.0,
            200,
            "{fault:?} then healthy"
        );
    }
}

#[tokio::test]
async fn id6_down_is_503() {
    let mock = MockId6::start().await.unwrap();
    let alice = mock.add_user("Alice", "a@example.com");
    let token = mock.token_for(alice);
    mock.shutdown().await;
    let id6 = common::builder(&mock).build().unwrap();
    let s = Setup::with(mock, id6).await;
    let (status, body, retry) = s.get("/me", Some(&token)).await;
    assert_eq!((status, retry.as_deref()), (503, Some("5")), "{body}");
    assert_eq!(s.get("/", None).await.0, 200, "no cookie never needs id6");
}

#[tokio::test]
async fn an_answer_over_the_body_cap_is_503() {
    let mock = MockId6::start().await.unwrap();
    let alice = mock.add_user("Alice with a long name", "alice@example.com");
    let token = mock.token_for(alice);
    let id6 = common::builder(&mock).max_body_bytes(32).build().unwrap();
    let s = Setup::with(mock, id6).await;
    assert_eq!(s.get("/me", Some(&token)).await.0, 503);
}

#[tokio::test]
async fn the_api_prefix_is_kept() {
    // Behind id6's proxy the base is `.../api`; the mock serves `/user` at its root, so a
    // base with `/api` reaches the mock's Express-like HTML 404: unavailable, not anonymous.
    let mock = MockId6::start().await.unwrap();
    let alice = mock.add_user("Alice", "a@example.com");
    let token = mock.token_for(alice);
    let id6 = Id6::builder(format!("{}/api", mock.url())).build().unwrap();
    let s = Setup::with(mock, id6).await;
    assert_eq!(s.get("/me", Some(&token)).await.0, 503);
    assert_eq!(s.mock.requests().last().unwrap().path, "/api/user");
}

#[tokio::test]
async fn extractors_without_the_layer_say_how_to_fix_it() {
    use axum::routing::get;
    let app = axum::Router::new().route("/me", get(common::me));
    let base = common::serve(app).await;
    let response = reqwest::get(format!("{base}/me")).await.unwrap();
    assert_eq!(response.status(), 500);
    let body: serde_json::Value = serde_json::from_str(&response.text().await.unwrap()).unwrap();
    assert_eq!(body["errorCode"], "id6_layer_missing");
    // How to fix it goes to the log (an error event); the client learns nothing internal.
    assert_eq!(body["message"], "Internal error");
}

/// A hit skips the shape test (the front holds only values that passed it): a hot token's
/// near misses, as a cookie or a bearer token, are still refused locally, never served as
/// its user, and never sent to id6; her own token, quoted or padded, is her.
#[tokio::test]
async fn near_misses_of_a_hot_token_are_refused_never_served() {
    use http::{HeaderMap, HeaderValue};
    use id6_tower::{Authentication, TokenLocation, TokenRejection, UserToken};

    let headers = |name: &str, value: String| {
        let mut headers = HeaderMap::new();
        headers.insert(
            name.to_owned().parse::<http::HeaderName>().unwrap(),
            HeaderValue::from_str(&value).unwrap(),
        );
        headers
    };
    let cookie = |value: &str| headers("cookie", format!("auth={value}"));
    let bearer = |value: &str| headers("authorization", format!("Bearer {value}"));

    let mock = MockId6::start().await.unwrap();
    let id6 = common::builder(&mock)
        .token_locations([TokenLocation::Cookie, TokenLocation::Bearer])
        .build()
        .unwrap();
    let token = mock.token_for(mock.add_user("Alice", "alice@example.com"));
    // A typed call stores her; every request below is answered from the cache.
    id6.user(&UserToken::new(&token).unwrap()).await.unwrap();
    let calls = mock.user_calls();
    for request in [
        cookie(&format!("\"{token}\"")),
        cookie(&format!(" {token} ")),
        bearer(&token),
        cookie(&token),
    ] {
        assert!(id6.authenticate(&request).await.user().is_some());
    }
    let before = id6.stats();
    assert_eq!(
        (before.hits, before.misses, before.malformed),
        (4, 0, 0),
        "{before:?}"
    );

    let signature = token.rfind('.').unwrap();
    let near_misses = [
        format!("{token}x"),
        format!("\"{token}"),
        format!("{token}\""),
        token[..token.len() - 1].to_owned(),
        format!("{}{}", &token[..signature], &token[signature + 1..]),
        format!("{} {}", &token[..5], &token[5..]),
        "garbage".to_owned(),
    ];
    for value in &near_misses {
        for request in [cookie(value), bearer(value)] {
            let verdict = id6.authenticate(&request).await;
            assert!(
                matches!(
                    verdict,
                    Authentication::Rejected(TokenRejection::InvalidToken)
                ),
                "{value}: {verdict:?}"
            );
        }
    }
    let after = id6.stats();
    assert_eq!(after.hits, before.hits, "no near miss is a hit");
    assert_eq!(
        after.malformed,
        before.malformed + 2 * near_misses.len() as u64
    );
    assert_eq!(mock.user_calls(), calls, "none reached id6");
}
