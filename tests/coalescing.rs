//! One id6 call per token per TTL, however many requests arrive at once.

mod common;

use std::time::Duration;

use common::Setup;
use id6_tower::testing::{advance_clock, Fault, MockId6};
use id6_tower::Authentication;
use tower::ServiceExt;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hundred_concurrent_requests_make_one_call() {
    let s = Setup::new().await;
    let alice = s.mock.add_user("Alice", "a@example.com");
    let token = s.mock.token_for(alice);
    // id6 answers slowly, so every request arrives while the first call is in flight.
    s.mock.set_fault(Fault::Delay(Duration::from_millis(300)));
    let requests = (0..200).map(|_| {
        let app = common::app(&s.id6);
        let token = token.clone();
        tokio::spawn(async move {
            let request = http::Request::get("/")
                .header("cookie", format!("auth={token}"))
                .body(axum::body::Body::empty())
                .unwrap();
            let response = app.oneshot(request).await.unwrap();
            axum::body::to_bytes(response.into_body(), 1024)
                .await
                .unwrap()
        })
    });
    for answer in futures_util::future::join_all(requests).await {
        assert_eq!(&answer.unwrap()[..], b"Hello, Alice!");
    }
    assert_eq!(s.mock.user_calls(), 1);
}

#[tokio::test]
async fn a_bad_token_is_asked_once_per_negative_ttl() {
    let s = Setup::new().await; // the default negative TTL: 5 s

    // Well-formed, so only id6 can tell it is dead.
    let expired = s
        .mock
        .expired_token_for(s.mock.add_user("Alice", "a@example.com"));
    for _ in 0..20 {
        assert_eq!(s.get("/me", Some(&expired)).await.0, 401);
    }
    assert_eq!(s.mock.user_calls(), 1);
    // Within the TTL: still remembered; past it, id6 is asked again (no waiting: the
    // cache's clock is moved).
    advance_clock(&s.id6, Duration::from_secs(4));
    assert_eq!(s.get("/me", Some(&expired)).await.0, 401);
    assert_eq!(s.mock.user_calls(), 1);
    advance_clock(&s.id6, Duration::from_secs(1));
    assert_eq!(s.get("/me", Some(&expired)).await.0, 401);
    assert_eq!(s.mock.user_calls(), 2);
}

#[tokio::test]
async fn a_user_is_asked_once_per_ttl() {
    let mock = MockId6::start().await.unwrap();
    let id6 = common::builder(&mock)
        .cache_ttl(Duration::from_secs(60))
        .refresh_after(None)
        .build()
        .unwrap();
    let s = Setup::with(mock, id6).await;
    let alice = s.mock.add_user("Alice", "a@example.com");
    let token = s.mock.token_for(alice);
    for _ in 0..20 {
        assert_eq!(s.get("/me", Some(&token)).await.0, 200);
    }
    assert_eq!(s.mock.user_calls(), 1);
    s.mock.rename_user(alice, "Alice Liddell");
    advance_clock(&s.id6, Duration::from_secs(50));
    assert_eq!(
        s.get("/", Some(&token)).await.1,
        "Hello, Alice!",
        "within the TTL"
    );
    advance_clock(&s.id6, Duration::from_secs(10));
    assert_eq!(s.get("/", Some(&token)).await.1, "Hello, Alice Liddell!");
    assert_eq!(s.mock.user_calls(), 2);
}

#[tokio::test]
async fn malformed_cookies_never_reach_id6() {
    let s = Setup::new().await;
    for header in [
        "auth=has space",
        "auth=back\\slash",
        "auth=\"unterminated",
        "auth",
        "=auth",
        ";;;",
    ] {
        let response = s
            .http
            .get(format!("{}/", s.base))
            .header("cookie", header)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200, "{header}");
        assert_eq!(response.text().await.unwrap(), "Hello, anonymous!");
    }
    let long = format!("auth={}", "a".repeat(64 * 1024));
    let request = http::Request::get("/")
        .header("cookie", long)
        .body(axum::body::Body::empty())
        .unwrap();
    let response = common::app(&s.id6).oneshot(request).await.unwrap();
    assert_eq!(response.status(), 200);
    // Non-UTF-8 bytes are legal in a header value: still anonymous, no panic.
    let request = http::Request::get("/")
        .header(
            "cookie",
            http::HeaderValue::from_bytes(b"auth=\xff\xfe; x=\x80").unwrap(),
        )
        .body(axum::body::Body::empty())
        .unwrap();
    let response = common::app(&s.id6).oneshot(request).await.unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(s.mock.user_calls(), 0);

    // Directly, too.
    let mut headers = http::HeaderMap::new();
    headers.insert("cookie", http::HeaderValue::from_static("auth=a b"));
    assert!(matches!(
        s.id6.authenticate(&headers).await,
        Authentication::Rejected(id6_tower::TokenRejection::InvalidToken)
    ));
}

/// A request joins the id6 call in flight for its token without screening the token again
/// only when the screen cannot change its mind: with a JWT secret, a token that expired since
/// the call began is refused locally, as it would be with no call in flight.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_token_is_refused_even_while_its_load_is_in_flight() {
    let (secret, lifetime) = ("coalescing-secret", Duration::from_secs(3600));
    let mock = MockId6::builder()
        .jwt_secret(secret)
        .token_lifetime(lifetime)
        .start()
        .await
        .unwrap();
    let id6 = common::builder(&mock)
        .timeout(Duration::from_secs(10))
        .jwt_secret(secret)
        .token_lifetime(lifetime)
        .build()
        .unwrap();
    let s = Setup::with(mock, id6).await;
    let alice = s.mock.add_user("Alice", "a@example.com");
    // Expires 2 s from now.
    let token = s
        .mock
        .token_issued_at(alice, common::now_ms() - 3_600_000 + 2_000);
    s.mock.hold_user_answers();
    let first = s.spawn_get("/me", &token);
    // id6 is asked before the expiry...
    s.mock.wait_for_held_answers(1).await;
    // ...and the second request comes after it, by the handle's clock, while the call waits.
    advance_clock(&s.id6, Duration::from_secs(5));
    let second = s.spawn_get("/me", &token);
    // Refused at once: joined to the held call instead, it would wait for id6's timeout.
    let refused = second.await.unwrap();
    s.mock.release_user_answers();
    assert_eq!(refused, 401, "an expired token joined the call in flight");
    assert_eq!(first.await.unwrap(), 200, "id6 vouched before the expiry");
}
