//! id6's per-IP rate limit: a cache-less loop runs into it, the layer keeps serving hot users.

mod common;

use std::time::Duration;

use common::Setup;
use id6_tower::testing::MockId6;

#[tokio::test]
async fn the_cache_keeps_a_hot_user_served_through_a_429() {
    let mock = MockId6::builder()
        .rate_limit(30, Duration::from_secs(60))
        .start()
        .await
        .unwrap();
    let id6 = common::builder(&mock).build().unwrap();
    let s = Setup::with(mock, id6).await;
    let alice = s.mock.add_user("Alice", "a@example.com");
    let bob = s.mock.add_user("Bob", "b@example.com");
    let (alice_token, bob_token) = (s.mock.token_for(alice), s.mock.token_for(bob));
    assert_eq!(s.get("/", Some(&alice_token)).await.1, "Hello, Alice!");

    // A backend without a cache asks id6 on every request, and soon gets 429s.
    let raw = common::http_client();
    let mut served = 0;
    let limited = loop {
        let response = raw
            .get(format!("{}/user", s.mock.url()))
            .header("cookie", format!("auth={alice_token}"))
            .send()
            .await
            .unwrap();
        if response.status() == 429 {
            break response;
        }
        assert_eq!(response.status(), 200);
        let remaining: u32 = response.headers()["x-ratelimit-remaining"]
            .to_str()
            .unwrap()
            .parse()
            .unwrap();
        assert_eq!(remaining, 30 - 2 - served);
        served += 1;
        assert!(served <= 30, "the limit never hit");
    };
    assert_eq!(served, 29, "one of the 30 went to the layer's first call");
    assert_eq!(limited.headers()["retry-after"], "60");
    assert!(limited.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/html"));
    assert_eq!(
        limited.text().await.unwrap(),
        "Too many requests, please try again later."
    );

    // Meanwhile the layer serves Alice from its cache, without asking id6.
    let calls = s.mock.user_calls();
    for _ in 0..200 {
        assert_eq!(s.get("/", Some(&alice_token)).await.1, "Hello, Alice!");
    }
    assert_eq!(s.mock.user_calls(), calls);

    // A user it does not know yet gets a 503 saying when to come back, never a 401.
    let (status, body, retry) = s.get("/me", Some(&bob_token)).await;
    assert_eq!(status, 503, "{body}");
    let retry: u64 = retry.unwrap().parse().unwrap();
    // The window's end, from X-RateLimit-Reset (whole epoch seconds, rounded up).
    assert!((1..=61).contains(&retry), "Retry-After {retry}");
    let err = s.id6.user(&bob_headers(&bob_token)).await.unwrap_err();
    assert!(err.is_rate_limited());
    assert!(err.retry_after().unwrap() <= Duration::from_secs(61));
}

fn bob_headers(token: &str) -> http::HeaderMap {
    let mut h = http::HeaderMap::new();
    h.insert("cookie", format!("auth={token}").parse().unwrap());
    h
}
