//! id6's call budget: a flood of forged tokens from one caller spends at most its miss
//! budget; active users are refreshed ahead of expiry without waiting; background refreshes
//! pause when id6's own rate limit runs low.

mod common;

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use id6_tower::testing::{advance_clock, freeze_clock, settle, Fault, MockId6};
use id6_tower::{Id6, MissLimit};

/// Serves the test app with each connection's address (`ConnectInfo`), as a real app must
/// for the miss budget to tell callers apart.
async fn serve_with_addresses(id6: &Id6) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let app = common::app(id6).into_make_service_with_connect_info::<SocketAddr>();
    tokio::spawn(async move { axum::serve(listener, app).await });
    addr
}

/// A client whose connections come from `ip` (any of 127.0.0.0/8 is loopback on Linux).
fn client_from(ip: [u8; 4]) -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .local_address(IpAddr::from(ip))
        .build()
        .unwrap()
}

async fn get(client: &reqwest::Client, addr: SocketAddr, token: &str) -> (u16, Option<String>) {
    let response = client
        .get(format!("http://{addr}/me"))
        .header("cookie", format!("auth={token}"))
        .send()
        .await
        .unwrap();
    let retry = response
        .headers()
        .get("retry-after")
        .map(|v| v.to_str().unwrap().to_owned());
    (response.status().as_u16(), retry)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forged_token_flood_spends_only_its_callers_budget() {
    let mock = MockId6::start().await.unwrap();
    // No JWT secret: every well-formed forgery passes the local screen. One call back every
    // 60 s (20 per 20 min): a slow machine's flood does not earn the attacker a new one.
    let id6 = common::builder(&mock)
        .miss_limit(MissLimit::new(20, Duration::from_secs(1200)))
        .build()
        .unwrap();
    let addr = serve_with_addresses(&id6).await;
    let alice = mock.add_user("Alice", "alice@example.com");
    let forger = MockId6::builder()
        .jwt_secret("not id6's")
        .start()
        .await
        .unwrap();

    let attacker = client_from([127, 0, 0, 1]);
    let forged: Vec<String> = (0..2000u64)
        .map(|i| forger.token_issued_at(alice, 1_700_000_000_000 + i))
        .collect();
    let mut refused = 0;
    let mut rejected = None;
    for chunk in forged.chunks(50) {
        let answers =
            futures_util::future::join_all(chunk.iter().map(|token| get(&attacker, addr, token)))
                .await;
        for (token, (status, retry)) in chunk.iter().zip(answers) {
            match status {
                // id6 was asked and said no.
                401 => rejected = Some(token),
                // Over budget: unavailable, with when to come back.
                503 => {
                    refused += 1;
                    let wait: u64 = retry.expect("a Retry-After").parse().unwrap();
                    assert!((1..=60).contains(&wait), "Retry-After: {wait}");
                }
                other => panic!("forged token answered {other}"),
            }
        }
    }
    assert_eq!(mock.user_calls(), 20, "the flood cost more than its budget");
    assert_eq!(refused, 1980);
    let stats = id6.stats();
    assert_eq!(stats.over_budget, 1980);
    assert_eq!(stats.upstream_rejected, 20);

    // Meanwhile a signed-in user on another address is served, at the cost of one call.
    let user = client_from([127, 0, 0, 2]);
    assert_eq!(get(&user, addr, &mock.token_for(alice)).await.0, 200);
    assert_eq!(mock.user_calls(), 21);
    // And the attacker is still held back, while rejected tokens it already sent stay
    // negative hits at no cost.
    assert_eq!(get(&attacker, addr, &mock.token_for(alice)).await.0, 503);
    assert_eq!(get(&attacker, addr, rejected.unwrap()).await.0, 401);
    assert_eq!(mock.user_calls(), 21);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_an_address_nothing_is_budgeted() {
    // `common::serve` has no `ConnectInfo`: the budget cannot tell callers apart and lets
    // misses through rather than lump every user into one bucket.
    let mock = MockId6::start().await.unwrap();
    let id6 = common::builder(&mock)
        .miss_limit(MissLimit::new(2, Duration::from_secs(60)))
        .build()
        .unwrap();
    let s = common::Setup::with(mock, id6).await;
    let alice = s.mock.add_user("Alice", "alice@example.com");
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    for i in 0..5 {
        let token = s.mock.token_issued_at(alice, now_ms - i);
        assert_eq!(s.get("/me", Some(&token)).await.0, 200);
    }
    assert_eq!(s.id6.stats().over_budget, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn active_users_are_refreshed_ahead_and_never_wait_again() {
    let mock = MockId6::start().await.unwrap();
    let id6 = common::builder(&mock)
        .cache_ttl(Duration::from_secs(60))
        .refresh_after(Duration::from_secs(6))
        .build()
        .unwrap();
    freeze_clock(&id6);
    let s = common::Setup::with(mock, id6).await;
    let alice = s.mock.add_user("Alice", "alice@example.com");
    let token = s.mock.token_for(alice);
    // A steady stream over two TTLs, a request every 4 s: each that finds the answer 6 s old
    // or more (every other one) starts a refresh, and is served from the cache meanwhile.
    for _ in 0..30 {
        assert_eq!(s.get("/", Some(&token)).await.1, "Hello, Alice!");
        settle(&s.id6).await;
        advance_clock(&s.id6, Duration::from_secs(4));
    }
    let stats = s.id6.stats();
    assert_eq!(
        stats.misses, 1,
        "a request waited on id6 after the first: {stats:?}"
    );
    assert_eq!(stats.hits, 29, "{stats:?}");
    assert_eq!(stats.refreshes, 14, "{stats:?}");
    // One id6 call per refresh, and the first request's.
    assert_eq!(s.mock.user_calls(), 15, "{stats:?}");
}

/// Alice signed in to an app whose entries are due for refresh after 100 ms (TTL a minute),
/// her entry cached and then aged past that: the next hit starts a refresh.
async fn alice_due_for_refresh(mock: MockId6) -> (common::Setup, u64, String) {
    let id6 = common::builder(&mock)
        .cache_ttl(Duration::from_secs(60))
        .refresh_after(Duration::from_millis(100))
        .build()
        .unwrap();
    let s = common::Setup::with(mock, id6).await;
    let alice = s.mock.add_user("Alice", "alice@example.com");
    let token = s.mock.token_for(alice);
    assert_eq!(s.get("/me", Some(&token)).await.0, 200);
    // The entry ages past `refresh_after`, without waiting; id6's clock moves on too (a
    // revocation then postdates the token).
    advance_clock(&s.id6, Duration::from_millis(150));
    s.mock.advance_clock(Duration::from_millis(150));
    (s, alice, token)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revocation_during_a_refresh_is_never_undone() {
    let (s, alice, token) = alice_due_for_refresh(MockId6::start().await.unwrap()).await;
    // id6 decides "Alice" for the refresh, but the answer arrives late...
    s.mock.hold_user_answers();
    assert_eq!(
        s.get("/me", Some(&token)).await.0,
        200,
        "served from the cache"
    );
    s.mock.wait_for_held_answers(1).await;
    // ...after Alice was signed out everywhere and the app evicted her.
    s.mock.revoke_tokens(alice);
    s.id6.invalidate_user(alice);
    s.mock.release_user_answers();
    settle(&s.id6).await;
    assert_eq!(s.id6.stats().upstream_authenticated, 2);
    assert_eq!(s.id6.stats().refreshes, 1);
    // The refresh's answer predates the eviction: not stored, so id6 is asked again.
    assert_eq!(s.get("/me", Some(&token)).await.0, 401);
    assert_eq!(s.mock.user_calls(), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refresh_that_finds_the_token_dead_evicts_it() {
    let (s, alice, token) = alice_due_for_refresh(MockId6::start().await.unwrap()).await;
    // Revoked on id6's side only: the app learns it from the refresh.
    s.mock.revoke_tokens(alice);
    assert_eq!(
        s.get("/me", Some(&token)).await.0,
        200,
        "served from the cache"
    );
    settle(&s.id6).await;
    assert_eq!(s.id6.stats().upstream_rejected, 1);
    assert_eq!(
        s.get("/me", Some(&token)).await.0,
        401,
        "a negative hit now"
    );
    assert_eq!(s.mock.user_calls(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refreshes_pause_when_ids_budget_runs_low() {
    let mock = MockId6::builder()
        .rate_limit(20, Duration::from_secs(60))
        .start()
        .await
        .unwrap();
    // Alice's sign-in took one call of id6's window (19 left)...
    let (s, _, token) = alice_due_for_refresh(mock).await;
    // ...and other work from this address spends it down to 2...
    for _ in 0..17 {
        let answer = s.http.get(format!("{}/user", s.mock.url())).send().await;
        assert!(answer.unwrap().status().is_success());
    }
    // ...and a new sign-in takes one more: the app reads 1 of 20 left in id6's answer,
    // under the reserve of a tenth.
    let carol = s.mock.add_user("Carol", "carol@example.com");
    let carols = s.mock.token_for(carol);
    assert_eq!(s.get("/me", Some(&carols)).await.0, 200);
    let stats = s.id6.stats();
    assert_eq!(
        (stats.id6_rate_limit, stats.id6_rate_remaining),
        (Some(20), Some(1))
    );
    // Alice's entry is due: served, but no refresh is made.
    assert_eq!(s.get("/me", Some(&token)).await.0, 200);
    let stats = s.id6.stats();
    assert_eq!(
        (stats.refreshes, stats.refreshes_paused),
        (0, 1),
        "{stats:?}"
    );
    // The last call is kept for a new sign-in.
    let bob = s.mock.add_user("Bob", "bob@example.com");
    assert_eq!(s.get("/me", Some(&s.mock.token_for(bob))).await.0, 200);
    assert_eq!(s.mock.user_calls(), 1 + 17 + 1 + 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn misses_held_back_while_id6_pauses_cost_nothing() {
    let mock = MockId6::start().await.unwrap();
    let id6 = common::builder(&mock)
        .miss_limit(MissLimit::new(10, Duration::from_secs(60)))
        .build()
        .unwrap();
    let addr = serve_with_addresses(&id6).await;
    let alice = mock.add_user("Alice", "alice@example.com");
    let now_ms = common::now_ms();

    // id6 rate-limits us: the breaker holds every call back for its 60 s window.
    mock.set_fault(Fault::RateLimited);
    let other = client_from([127, 0, 0, 2]);
    assert_eq!(get(&other, addr, &mock.token_for(alice)).await.0, 503);
    let asked = mock.user_calls();

    // Twenty misses of one caller meanwhile: none reaches id6, none is charged.
    let caller = client_from([127, 0, 0, 1]);
    for i in 0..20 {
        let token = mock.token_issued_at(alice, now_ms - 1 - i);
        let (status, retry) = get(&caller, addr, &token).await;
        assert_eq!(status, 503);
        assert!(retry.is_some());
    }
    assert_eq!(
        mock.user_calls(),
        asked,
        "a call went out while the breaker was open"
    );
    assert_eq!(id6.stats().over_budget, 0);

    // id6 is back: the caller signs in at once, its budget whole.
    mock.clear_fault();
    advance_clock(&id6, Duration::from_secs(61));
    assert_eq!(get(&caller, addr, &mock.token_for(alice)).await.0, 200);
}

/// A typed call refused by the miss budget is no lookup: `stats().over_budget` (and
/// `id6_lookups_total{result="over_budget"}`) count misses refused, each also a miss, and a
/// typed call is neither; the call itself answers unavailable (`is_over_budget`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_typed_call_over_budget_is_not_counted_as_a_lookup() {
    let mock = MockId6::start().await.unwrap();
    let id6 = common::builder(&mock)
        .miss_limit(MissLimit::new(1, Duration::from_secs(60)))
        .build()
        .unwrap();
    let alice = mock.add_user("Alice", "alice@example.com");
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    // Two tokens the cache does not know, from callers that cannot be told apart: they share
    // one budget of one call.
    let first = id6_tower::UserToken::new(&mock.token_issued_at(alice, now_ms)).unwrap();
    let second = id6_tower::UserToken::new(&mock.token_issued_at(alice, now_ms - 1)).unwrap();
    id6.user(&first).await.unwrap();
    let refused = id6.user(&second).await.unwrap_err();
    assert!(refused.is_over_budget(), "{refused}");
    let stats = id6.stats();
    assert_eq!(
        (stats.misses, stats.over_budget),
        (0, 0),
        "a typed call counted as a lookup: {stats:?}"
    );
}
