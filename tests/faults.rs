//! id6 down, slow, rate-limiting or attacked: the app keeps answering, in bounded time, and
//! id6 is left alone when asking it cannot help.

mod common;

use std::time::{Duration, Instant};

use axum::body::Body;
use common::{now_ms, Setup};
use id6_tower::testing::{advance_clock, freeze_clock, settle, Fault, MockId6};
use id6_tower::{Health, Id6, OnUnavailable};
use tower::ServiceExt;

const TIMEOUT: Duration = Duration::from_millis(300);

/// A hang detector, not a benchmark: far above the configured timeout.
const HANG: Duration = Duration::from_secs(10);

async fn timed(s: &Setup, path: &str, token: &str) -> (u16, Duration, usize) {
    let (started, calls) = (Instant::now(), s.mock.user_calls());
    let (status, _, _) = tokio::time::timeout(HANG, s.get(path, Some(token)))
        .await
        .unwrap_or_else(|_| panic!("{path}: no answer within {HANG:?}"));
    (status, started.elapsed(), s.mock.user_calls() - calls)
}

/// Every way id6 can fail, each on a fresh handle: `/me` and `/` answer 503, the
/// identity-free `/health` 200, and no request waits on more than one id6 call (so on more
/// than one timeout: a hanging id6 still gets every request answered). The latencies are
/// printed (`--nocapture`) for the record, never asserted: timing is the benches'.
#[tokio::test]
async fn fault_matrix() {
    let faults: Vec<(&str, Option<Fault>)> = vec![
        ("down (port closed)", None),
        ("hanging", Some(Fault::Delay(Duration::from_secs(3600)))),
        (
            "slow (2 s, over the timeout)",
            Some(Fault::Delay(Duration::from_secs(2))),
        ),
        ("500 JSON", Some(Fault::Status(500))),
        ("502 HTML", Some(Fault::StatusHtml(502))),
        ("429", Some(Fault::RateLimited)),
        ("dropped before answering", Some(Fault::DropConnection)),
        ("dropped mid-body", Some(Fault::DropMidBody)),
        ("truncated JSON", Some(Fault::MalformedBody)),
        ("10 MiB body", Some(Fault::HugeBody(10 * 1024 * 1024))),
        ("wrong content type", Some(Fault::WrongContentType)),
        ("HTML page with 200", Some(Fault::HtmlPage)),
    ];
    println!(
        "{:<30} {:>5} {:>5} {:>8} {:>10} {:>12}",
        "fault", "/me", "/", "/health", "worst", "id6 calls"
    );
    for (name, fault) in faults {
        let mock = MockId6::start().await.unwrap();
        let alice = mock.add_user("Alice", "a@example.com");
        let token = mock.token_for(alice);
        match fault {
            Some(fault) => mock.set_fault(fault),
            None => mock.shutdown().await,
        }
        let id6 = Id6::builder(mock.url()).timeout(TIMEOUT).build().unwrap();
        let s = Setup::with(mock, id6).await;
        let (me, me_took, me_calls) = timed(&s, "/me", &token).await;
        let (home, home_took, home_calls) = timed(&s, "/", &token).await;
        let (health, health_took, health_calls) = timed(&s, "/health", &token).await;
        let worst = me_took.max(home_took).max(health_took);
        let calls = [me_calls, home_calls, health_calls];
        println!(
            "{name:<30} {me:>5} {home:>5} {health:>8} {:>7.0} ms {calls:?}",
            worst.as_secs_f64() * 1e3
        );
        assert_eq!((me, home, health), (503, 503, 200), "{name}");
        assert!(
            calls.iter().all(|&calls| calls <= 1),
            "{name}: a request waited on {calls:?} id6 calls, not at most one each"
        );
    }
}

/// With `stale:<grace>`, a user cached before id6 died keeps being served for the grace
/// window after the TTL, and not after.
#[tokio::test]
async fn stale_if_error_serves_the_last_answer_for_the_grace_window() {
    let mock = MockId6::start().await.unwrap();
    let alice = mock.add_user("Alice", "a@example.com");
    let token = mock.token_for(alice);
    let ttl = Duration::from_secs(60);
    let grace = Duration::from_secs(600);
    let id6 = Id6::builder(mock.url())
        .timeout(TIMEOUT)
        .cache_ttl(ttl)
        .on_unavailable(OnUnavailable::Stale(grace))
        .build()
        .unwrap();
    let s = Setup::with(mock, id6).await;
    assert_eq!(s.get("/", Some(&token)).await.1, "Hello, Alice!");
    s.mock.shutdown().await;

    // Past the TTL, within the grace window: id6 is down, the last answer is served.
    advance_clock(&s.id6, ttl + Duration::from_secs(1));
    assert_eq!(s.get("/", Some(&token)).await.1, "Hello, Alice!");
    assert_eq!(s.get("/me", Some(&token)).await.0, 200);
    // A token never seen before has no last answer: 503.
    let stranger = s.mock.token_for(alice);
    assert_eq!(s.get("/me", Some(&stranger)).await.0, 503);

    // Past TTL + grace: no longer.
    advance_clock(&s.id6, grace);
    assert_eq!(s.get("/me", Some(&token)).await.0, 503);
}

#[tokio::test]
async fn stale_answers_are_never_served_while_id6_answers() {
    let mock = MockId6::start().await.unwrap();
    let alice = mock.add_user("Alice", "a@example.com");
    let token = mock.token_issued_at(alice, now_ms() - 10);
    let id6 = Id6::builder(mock.url())
        .cache_ttl(Duration::from_secs(60))
        .on_unavailable(OnUnavailable::Stale(Duration::from_secs(600)))
        .build()
        .unwrap();
    let s = Setup::with(mock, id6).await;
    assert_eq!(s.get("/me", Some(&token)).await.0, 200);
    s.mock.revoke_tokens(alice);
    advance_clock(&s.id6, Duration::from_secs(61));
    // id6 answers "revoked": that answer wins over the stale one.
    assert_eq!(s.get("/me", Some(&token)).await.0, 401);
    // And a revoked user is not served stale later either.
    s.mock.shutdown().await;
    assert_eq!(s.get("/me", Some(&token)).await.0, 401);
}

/// A refresh ahead of expiry that finds the token revoked on id6 ends it, however many
/// unrelated evictions came while id6 was asked: past 4096 marks they collapse into one
/// floor that refuses every fill started before it, a user's (one more id6 call) and, here,
/// id6's "revoked" too, which left the cached user served until its TTL, and stale after it.
#[tokio::test]
async fn a_refreshs_revoked_is_kept_whatever_else_was_evicted_meanwhile() {
    let mock = MockId6::start().await.unwrap();
    let alice = mock.add_user("Alice", "a@example.com");
    let token = mock.token_issued_at(alice, now_ms() - 10);
    let ttl = Duration::from_secs(60);
    let id6 = Id6::builder(mock.url())
        .timeout(TIMEOUT)
        .cache_ttl(ttl)
        .refresh_after(Duration::from_secs(30))
        .on_unavailable(OnUnavailable::Stale(Duration::from_secs(600)))
        .build()
        .unwrap();
    freeze_clock(&id6);
    let s = Setup::with(mock, id6).await;
    assert_eq!(s.get("/me", Some(&token)).await.0, 200);
    s.mock.revoke_tokens(alice);
    s.mock.hold_user_answers();
    advance_clock(&s.id6, Duration::from_secs(31));
    // Still the cached answer; this hit starts the refresh, whose "revoked" is held.
    assert_eq!(s.get("/me", Some(&token)).await.0, 200);
    s.mock.wait_for_held_answers(1).await;
    // Meanwhile the app evicts other users, many of them.
    for other in 0..5_000 {
        s.id6.invalidate_user(1_000_000 + other);
    }
    s.mock.release_user_answers();
    settle(&s.id6).await;
    assert_eq!(s.mock.user_calls(), 2);
    assert_eq!(
        s.get("/me", Some(&token)).await.0,
        401,
        "id6 said the token is revoked; the cached user is still served"
    );
    // Nor is the revoked user served stale once id6 is down.
    s.mock.shutdown().await;
    advance_clock(&s.id6, ttl);
    assert_ne!(
        s.get("/me", Some(&token)).await.0,
        200,
        "a token id6 said is revoked was served stale"
    );
}

#[tokio::test]
async fn the_anonymous_policy_treats_unknown_as_signed_out() {
    let mock = MockId6::start().await.unwrap();
    let alice = mock.add_user("Alice", "a@example.com");
    let token = mock.token_for(alice);
    mock.shutdown().await;
    let id6 = Id6::builder(mock.url())
        .timeout(TIMEOUT)
        .on_unavailable(OnUnavailable::Anonymous)
        .build()
        .unwrap();
    let s = Setup::with(mock, id6).await;
    assert_eq!(s.get("/", Some(&token)).await.1, "Hello, anonymous!");
    assert_eq!(s.get("/me", Some(&token)).await.0, 401);
}

/// After a 429, id6 is not called again until its window opens, whatever arrives.
#[tokio::test]
async fn after_a_429_no_call_until_the_reset() {
    let mock = MockId6::builder()
        .rate_limit(3, Duration::from_secs(2))
        .start()
        .await
        .unwrap();
    let alice = mock.add_user("Alice", "a@example.com");
    let id6 = Id6::builder(mock.url()).timeout(TIMEOUT).build().unwrap();
    // The handle's clock moves only when the test says (the mock's runs on, from real time).
    freeze_clock(&id6);
    let s = Setup::with(mock, id6).await;
    // Three cold tokens spend the window, the fourth gets the 429.
    for i in 0..4 {
        // Distinct tokens: issued a second apart.
        let token = s.mock.token_issued_at(alice, now_ms() - 1000 * (i + 1));
        s.get("/me", Some(&token)).await;
    }
    let Health::Open {
        until,
        rate_limited,
        ..
    } = s.id6.health()
    else {
        panic!("a 429 opens the breaker");
    };
    assert!(rate_limited);
    let calls = s.mock.requests().len();
    assert_eq!(calls, 4);
    // Time passes for both (10 ms a request, and for id6 real time too), short of the
    // window's end on the handle's clock.
    let wait = until
        .duration_since(std::time::SystemTime::now())
        .unwrap_or_default();
    let step = Duration::from_millis(10);
    let steps = u32::try_from(wait.as_millis() / 10).unwrap() - 1;
    for _ in 0..steps {
        let token = s.mock.token_for(alice);
        advance_clock(&s.id6, step);
        s.mock.advance_clock(step);
        let (status, _, retry) = s.get("/me", Some(&token)).await;
        assert_eq!(status, 503);
        // The window (2 s), id6's reset in whole epoch seconds (up to 1 s more), and the
        // handle's frozen clock, behind the real one by the setup's few ms (the reset is
        // read against it), rounded up to whole seconds: at most 4, never a minute.
        assert!(retry.unwrap().parse::<u64>().unwrap() <= 4);
    }
    assert_eq!(
        s.mock.requests().len(),
        calls,
        "no id6 call while the window is closed"
    );
    // Once the window opens, id6 is asked again (two steps on: `until` is a real date, read
    // a moment before `wait` was).
    advance_clock(&s.id6, wait - step * steps + step);
    s.mock.advance_clock(wait - step * steps + step);
    assert_eq!(s.id6.health(), Health::Closed);
    let token = s.mock.token_for(alice);
    assert_eq!(s.get("/me", Some(&token)).await.0, 200);
    assert_eq!(s.mock.requests().len(), calls + 1);
}

/// A flood of random well-formed tokens never has more id6 calls in flight than the cap;
/// a flood of garbage makes no id6 call at all.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn floods_are_capped_and_garbage_is_free() {
    let mock = MockId6::start().await.unwrap();
    // Tokens signed by someone else: well-formed, so only id6 can refuse them.
    let forger = MockId6::builder()
        .jwt_secret("not id6's")
        .start()
        .await
        .unwrap();
    let id6 = Id6::builder(mock.url())
        .timeout(Duration::from_secs(2))
        .max_concurrent_calls(4)
        .queue_timeout(Duration::from_millis(50))
        .build()
        .unwrap();
    let app = common::app(&id6);
    let flood = |tokens: Vec<String>| {
        let app = app.clone();
        async move {
            let requests = tokens.into_iter().map(|token| {
                let request = http::Request::get("/")
                    .header("cookie", format!("auth={token}"))
                    .body(Body::empty())
                    .unwrap();
                let app = app.clone();
                tokio::spawn(async move { app.oneshot(request).await.unwrap().status().as_u16() })
            });
            let mut statuses = std::collections::HashMap::<u16, usize>::new();
            for status in futures_util::future::join_all(requests).await {
                *statuses.entry(status.unwrap()).or_default() += 1;
            }
            statuses
        }
    };

    let garbage: Vec<String> = (0..10_000)
        .map(|i| format!("garbage-{i}-{}", i * 7919))
        .collect();
    let statuses = flood(garbage).await;
    assert_eq!(
        statuses.get(&200),
        Some(&10_000),
        "garbage is anonymous: {statuses:?}"
    );
    assert_eq!(mock.user_calls(), 0);

    let forged: Vec<String> = (0..10_000)
        .map(|i| forger.token_issued_at(i, now_ms()))
        .collect();
    let started = Instant::now();
    let statuses = flood(forged).await;
    let calls = mock.user_calls();
    println!(
        "10 000 forged tokens: {calls} id6 calls, at most {} at once, statuses {statuses:?}, {:?}",
        mock.max_concurrent_requests(),
        started.elapsed()
    );
    assert!(mock.max_concurrent_requests() <= 4, "the cap held");
    assert!(calls <= 10_000);
    // Each request is anonymous (id6 refused the token) or 503 (shed by the queue timeout).
    assert_eq!(statuses.values().sum::<usize>(), 10_000);
    assert!(
        statuses.keys().all(|s| *s == 200 || *s == 503),
        "{statuses:?}"
    );
}

/// With id6's secret, forged and expired tokens are refused without an id6 call.
#[tokio::test]
async fn with_the_secret_forgeries_cost_nothing() {
    let mock = MockId6::builder()
        .jwt_secret("id6-secret")
        .start()
        .await
        .unwrap();
    let forger = MockId6::builder()
        .jwt_secret("guess")
        .start()
        .await
        .unwrap();
    let alice = mock.add_user("Alice", "a@example.com");
    let id6 = Id6::builder(mock.url())
        .jwt_secret("id6-secret")
        .build()
        .unwrap();
    let s = Setup::with(mock, id6).await;
    let forged = forger.token_for(alice);
    let expired = s.mock.expired_token_for(alice);
    assert_eq!(s.get("/me", Some(&forged)).await.0, 401);
    assert_eq!(s.get("/me", Some(&expired)).await.0, 401);
    assert_eq!(s.mock.user_calls(), 0);
    // A genuine token is still checked with id6, for revocation.
    let token = s.mock.token_issued_at(alice, now_ms() - 10);
    assert_eq!(s.get("/me", Some(&token)).await.0, 200);
    s.mock.revoke_tokens(alice);
    s.id6.clear();
    assert_eq!(s.get("/me", Some(&token)).await.0, 401);
    assert_eq!(s.mock.user_calls(), 2);
}

/// On a route with a max age, a cached answer older than that is checked with id6 again
/// (once for concurrent requests), so a revocation done elsewhere shows there quickly.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sensitive_routes_revalidate_old_answers() {
    use axum::routing::get;
    let mock = MockId6::start().await.unwrap();
    let alice = mock.add_user("Alice", "a@example.com");
    let token = mock.token_issued_at(alice, now_ms() - 10);
    let id6 = Id6::builder(mock.url())
        .cache_ttl(Duration::from_secs(3600))
        .build()
        .unwrap();
    let app = axum::Router::new()
        .route("/pay", get(common::me))
        .route_layer(id6.layer_with_max_age(Duration::from_millis(200)))
        .route("/me", get(common::me))
        .layer(id6.layer());
    let s = Setup {
        base: common::serve(app).await,
        mock,
        id6,
        http: common::http_client(),
    };
    assert_eq!(s.get("/me", Some(&token)).await.0, 200);
    assert_eq!(s.get("/pay", Some(&token)).await.0, 200, "fresh enough");
    assert_eq!(s.mock.user_calls(), 1);

    // Revoked on id6 behind our back (another instance, another app).
    s.mock.revoke_tokens(alice);
    advance_clock(&s.id6, Duration::from_millis(300));
    assert_eq!(
        s.get("/me", Some(&token)).await.0,
        200,
        "ordinary routes trust the TTL"
    );
    assert_eq!(s.mock.user_calls(), 1);
    let payments: Vec<_> = (0..20).map(|_| s.spawn_get("/pay", &token)).collect();
    for p in payments {
        assert_eq!(
            p.await.unwrap(),
            401,
            "the revocation is seen on the sensitive route"
        );
    }
    assert_eq!(s.mock.user_calls(), 2, "twenty revalidations, one id6 call");
    // And the fresh answer replaced the old one for every route.
    assert_eq!(s.get("/me", Some(&token)).await.0, 401);
}

/// A picture upload takes as long as its size and the link to id6 make it (up to
/// `max_picture_bytes`, 10 MiB by default): one that outlasts the timeout says nothing of
/// whether id6 answers, and must not open the breaker that keeps every sign-in out. Here the
/// upload's bytes come from a FIFO nobody writes to (an upload slower than any timeout),
/// while id6 itself answers at once.
#[cfg(unix)]
#[tokio::test]
async fn slow_picture_uploads_never_lock_sign_ins_out() {
    use id6_tower::PictureUpload;
    let dir = std::env::temp_dir().join(format!("id6-tower-fifo-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let fifo = dir.join("slow.png");
    let _ = std::fs::remove_file(&fifo);
    let made = std::process::Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .unwrap();
    assert!(made.success());
    // Held open for writing (read-write: Linux opens a FIFO so without waiting), never written:
    // readers open at once and their reads wait. Dropped before the test ends, so that the
    // reads left waiting see the end of the file.
    let writer = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&fifo)
        .unwrap();

    let mock = MockId6::start().await.unwrap();
    let alice = mock.add_user("Alice", "a@example.com");
    let id6 = common::builder(&mock).build().unwrap();
    // An opening of the breaker lasts until the test moves the handle's clock.
    freeze_clock(&id6);
    let s = Setup::with(mock, id6).await;
    let token = s.mock.token_for(alice);
    assert_eq!(s.get("/me", Some(&token)).await.0, 200);
    let headers = {
        let mut h = http::HeaderMap::new();
        h.insert("cookie", format!("auth={token}").parse().unwrap());
        h
    };
    let upload = || async {
        let picture = PictureUpload::from_file(&fifo).await.unwrap();
        s.id6.update_picture(&headers, picture).await.unwrap_err()
    };
    let (a, b, c) = tokio::join!(upload(), upload(), upload());
    for err in [a, b, c] {
        assert!(err.is_timeout(), "{err}");
    }
    // A new sign-in is asked of id6, which answers it.
    let bob = s.mock.add_user("Bob", "b@example.com");
    let (status, body, _) = s.get("/me", Some(&s.mock.token_for(bob))).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        s.id6.health(),
        Health::Closed,
        "id6 answers: the breaker stays closed"
    );
    drop(writer);
    let _ = std::fs::remove_dir_all(&dir);
}
