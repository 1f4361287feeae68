//! No single answer from id6, no setting and no header can take the layer down: a hostile 429,
//! a hostile picture download, and every setting at the edge of its range, over loopback.

mod common;

use std::time::{Duration, SystemTime};

use common::Setup;
use id6_tower::testing::{advance_clock, Fault, MockId6};
use id6_tower::{Health, Id6, OnUnavailable, UserToken};

fn hostile_429(reset: Option<&str>, retry_after: Option<&str>) -> Fault {
    Fault::RateLimitedWith {
        reset: reset.map(str::to_owned),
        retry_after: retry_after.map(str::to_owned),
    }
}

/// The breaker is closed once `cap` has passed (the handle's clock is moved: no waiting).
fn closed_after(id6: &Id6, cap: Duration) {
    advance_clock(id6, cap);
    assert_eq!(id6.health(), Health::Closed, "still open past the cap");
}

#[tokio::test]
async fn no_429_switches_authentication_off_past_the_cap() {
    let mock = MockId6::start().await.unwrap();
    let cap = Duration::from_secs(1);
    let id6 = common::builder(&mock).max_backoff(cap).build().unwrap();
    let s = Setup::with(mock, id6).await;
    let alice = s.mock.add_user("Alice", "a@example.com");
    let far = (SystemTime::now() + Duration::from_secs(10 * 365 * 24 * 3600))
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        .to_string();
    let epoch_ms = (common::now_ms() + 30_000).to_string();
    for (i, (reset, retry_after)) in [
        (Some(epoch_ms.as_str()), Some("60")), // epoch milliseconds, as some proxies send
        (Some(far.as_str()), None),            // a far-future date
        (None, Some("99999999999")),           // a thousand years
        (Some("18446744073709551615"), Some("18446744073709551615")),
    ]
    .into_iter()
    .enumerate()
    {
        let i = i as u64;
        s.mock.set_fault(hostile_429(reset, retry_after));
        // Distinct tokens (issued at distinct milliseconds), so that none is a cache hit.
        let token = s.mock.token_issued_at(alice, common::now_ms() - 1000 - i);
        let (status, _, wait) = s.get("/me", Some(&token)).await;
        assert_eq!(status, 503, "{reset:?} {retry_after:?}");
        let wait: u64 = wait.expect("a Retry-After").parse().unwrap();
        assert!(wait <= cap.as_secs(), "callers told to wait {wait} s");
        match s.id6.health() {
            Health::Open { until, .. } => assert!(until <= SystemTime::now() + cap),
            Health::Closed => panic!("a 429 must open the breaker"),
            other => panic!("{other:?}"),
        }
        // id6 recovers: within the cap, a new token is served again.
        s.mock.clear_fault();
        closed_after(&s.id6, cap);
        let fresh = s.mock.token_issued_at(alice, common::now_ms() - 2000 - i);
        assert_eq!(s.get("/me", Some(&fresh)).await.0, 200);
    }
}

#[tokio::test]
async fn a_picture_read_whole_stops_at_the_cap() {
    let mock = MockId6::start().await.unwrap();
    let id6 = common::builder(&mock)
        .max_picture_bytes(1024 * 1024)
        .build()
        .unwrap();
    let alice = mock.add_user("Alice", "a@example.com");
    let token = UserToken::new(&mock.token_for(alice)).unwrap();
    mock.set_fault(Fault::HugeBody(8 * 1024 * 1024));
    let err = id6
        .picture(&token)
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap_err();
    assert!(err.is_body(), "{err}");
    assert!(err.to_string().contains("1048576"), "{err}");
    // The stream form is the caller's to bound: it sees every byte.
    let mut total = 0;
    let mut stream = std::pin::pin!(id6.picture(&token).await.unwrap().into_stream());
    while let Some(chunk) = futures_util::StreamExt::next(&mut stream).await {
        total += chunk.unwrap().len();
    }
    assert!(total > 8 * 1024 * 1024 - 64, "{total}");
}

/// Every setting at the top of its range builds, and the handle then serves a correctly
/// signed token, a rate limit and a typed call without a panic (moka's TTL limit, `Instant`
/// arithmetic and the semaphore's permit limit are all out of reach).
#[tokio::test]
async fn settings_at_the_edge_of_their_range_never_panic_later() {
    let secret = "edge-secret";
    let year = Duration::from_secs(365 * 24 * 3600);
    let mock = MockId6::builder()
        .jwt_secret(secret)
        .token_lifetime(100 * year)
        .start()
        .await
        .unwrap();
    let id6 = Id6::builder(mock.url())
        .cache_ttl(year)
        .negative_ttl(year)
        .on_unavailable(OnUnavailable::Stale(year))
        .timeout(Duration::from_secs(300))
        .connect_timeout(Duration::from_secs(300))
        .queue_timeout(Duration::from_secs(300))
        .max_backoff(Duration::from_secs(3600))
        .jwt_secret(secret)
        .token_lifetime(100 * year)
        .max_concurrent_calls(10_000)
        .max_capacity(100_000_000)
        .max_body_bytes(16 * 1024 * 1024)
        .max_picture_bytes(1024 * 1024 * 1024)
        .build()
        .unwrap();
    let s = Setup::with(mock, id6).await;
    let alice = s.mock.add_user("Alice", "a@example.com");
    let old = s.mock.token_issued_at(alice, 1);
    assert_eq!(s.get("/me", Some(&old)).await.0, 200, "a 56-year-old token");
    let token = s.mock.token_for(alice);
    assert_eq!(s.get("/me", Some(&token)).await.0, 200);
    s.mock
        .set_fault(hostile_429(Some("18446744073709551615"), None));
    let other = s.mock.token_issued_at(alice, common::now_ms() - 60_000);
    assert_eq!(s.get("/me", Some(&other)).await.0, 503);
    // The stale window serves what id6 said before.
    assert_eq!(s.get("/me", Some(&token)).await.0, 200);
    s.mock.clear_fault();
    let user = s
        .id6
        .user(&UserToken::new(&token).unwrap())
        .await
        .unwrap_err();
    assert!(user.is_unavailable(), "the breaker is still open: {user}");
}
