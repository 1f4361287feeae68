//! Sessions that end: a connection's hold on its token ends on sign-out, `disconnect` and
//! id6's refusal at a recheck, and open connections cost id6 one call per token per TTL.
//!
//! Time is driven, never waited for: the handle's clock is frozen and moved by
//! [`advance_clock`], and [`settle`] waits for the rechecks it made due.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use http::header::COOKIE;
use http::{HeaderMap, Request, Response};
use id6_tower::testing::{advance_clock, freeze_clock, settle, Fault, MockId6};
use id6_tower::{Id6, Profile, Session, TokenRejection, UserToken};
use tower::{service_fn, Layer, ServiceExt};

/// Well above what any of these takes on loopback (milliseconds), for a loaded machine.
const PROMPTLY: Duration = Duration::from_secs(1);

fn headers(token: &str) -> HeaderMap {
    let mut headers = HeaderMap::new();
    headers.insert(COOKIE, format!("auth={token}").parse().unwrap());
    headers
}

/// What a handler behind the layer gets for a request carrying `token`.
async fn session_for(id6: &Id6, token: Option<&str>) -> Option<Session> {
    let handler = service_fn(|request: Request<()>| async move {
        let session = Session::of(request.headers(), request.extensions());
        Ok::<_, Infallible>(Response::new(session))
    });
    let mut request = Request::new(());
    if let Some(token) = token {
        *request.headers_mut() = headers(token);
    }
    let response = id6.layer().layer(handler).oneshot(request).await.unwrap();
    response.into_body()
}

/// A mock with Alice and her token, and a handle whose clock stands still until a test
/// moves it.
async fn setup(ttl: Duration) -> (MockId6, Id6, u64, String) {
    let mock = MockId6::start().await.unwrap();
    let alice = mock.add_user("Alice", "alice@example.com");
    let token = mock.token_for(alice);
    let id6 = Id6::builder(mock.url()).cache_ttl(ttl).build().unwrap();
    freeze_clock(&id6);
    (mock, id6, alice, token)
}

/// Lets `by` pass on the handle's clock, in `steps` equal steps, each followed by the
/// rechecks it made due.
async fn pass(id6: &Id6, by: Duration, steps: u32) {
    for _ in 0..steps {
        advance_clock(id6, by / steps);
        settle(id6).await;
    }
}

async fn ends_promptly(session: &Session) -> TokenRejection {
    tokio::time::timeout(PROMPTLY, session.ended())
        .await
        .expect("the session ends within a second")
}

#[tokio::test]
async fn only_a_signed_in_request_has_a_session() {
    let (_mock, id6, alice, token) = setup(Duration::from_secs(60)).await;
    let session = session_for(&id6, Some(&token)).await.expect("signed in");
    assert_eq!(session.user().id, alice);
    assert_eq!(session.end_reason(), None);
    assert!(session_for(&id6, None).await.is_none(), "anonymous");
    assert!(
        session_for(&id6, Some("garbage")).await.is_none(),
        "rejected"
    );
}

#[tokio::test]
async fn sign_out_ends_that_tokens_sessions_and_no_other() {
    let (mock, id6, alice, laptop) = setup(Duration::from_secs(60)).await;
    let phone = mock.token_issued_at(alice, now_ms() - 60_000);
    let on_laptop = session_for(&id6, Some(&laptop)).await.unwrap();
    let also_on_laptop = session_for(&id6, Some(&laptop)).await.unwrap();
    let on_phone = session_for(&id6, Some(&phone)).await.unwrap();

    id6.sign_out(&headers(&laptop)).await.unwrap();
    // Not a revocation: id6 still accepts the token, the app let go of it.
    assert_eq!(ends_promptly(&on_laptop).await, TokenRejection::SignedOut);
    assert_eq!(on_laptop.end_reason(), Some(TokenRejection::SignedOut));
    assert_eq!(
        ends_promptly(&also_on_laptop).await,
        TokenRejection::SignedOut
    );
    assert_eq!(on_phone.end_reason(), None, "the phone did not sign out");
}

#[tokio::test]
async fn disconnect_from_another_token_ends_every_session_of_the_user() {
    let (mock, id6, alice, laptop) = setup(Duration::from_secs(60)).await;
    let phone = mock.token_issued_at(alice, now_ms() - 60_000);
    let on_laptop = session_for(&id6, Some(&laptop)).await.unwrap();
    let bob = mock.add_user("Bob", "bob@example.com");
    let bobs = session_for(&id6, Some(&mock.token_for(bob))).await.unwrap();

    id6.disconnect(&UserToken::new(&phone).unwrap())
        .await
        .unwrap();
    assert_eq!(
        ends_promptly(&on_laptop).await,
        TokenRejection::TokenRevoked
    );
    assert_eq!(bobs.end_reason(), None, "another user");
}

#[tokio::test]
async fn a_profile_change_keeps_the_session_after_asking_id6() {
    let (mock, id6, _alice, token) = setup(Duration::from_secs(60)).await;
    let session = session_for(&id6, Some(&token)).await.unwrap();
    let calls = mock.user_calls();
    id6.update_profile(&headers(&token), &Profile::new("Alice Liddell"))
        .await
        .unwrap();
    // The eviction makes the token due: id6 is asked once, and vouches for it.
    settle(&id6).await;
    assert_eq!(mock.user_calls(), calls + 1, "one recheck");
    assert_eq!(session.end_reason(), None);
}

#[tokio::test]
async fn a_token_revoked_in_id6_alone_ends_at_its_recheck() {
    let ttl = Duration::from_secs(60);
    let (mock, id6, alice, token) = setup(ttl).await;
    let session = session_for(&id6, Some(&token)).await.unwrap();
    // Not through the app: only the recheck, a tenth of the TTL before expiry, can tell.
    mock.advance_clock(Duration::from_secs(1));
    mock.revoke_tokens(alice);
    let recheck = ttl * 9 / 10;
    advance_clock(&id6, recheck - Duration::from_nanos(1));
    settle(&id6).await;
    assert_eq!(session.end_reason(), None, "not due yet");
    advance_clock(&id6, Duration::from_nanos(1));
    settle(&id6).await;
    assert_eq!(session.end_reason(), Some(TokenRejection::TokenRevoked));
    assert_eq!(ends_promptly(&session).await, TokenRejection::TokenRevoked);
}

/// A disconnect made elsewhere shows in `/authorize`'s answer for a token issued after it
/// (a newer `invalidateTokensAt`): the app evicts the user's other tokens, and their open
/// sessions are asked about now, not at their next recheck.
#[tokio::test]
async fn a_revocation_seen_in_an_answer_rechecks_the_users_sessions_now() {
    let ttl = Duration::from_secs(60);
    let mock = MockId6::start().await.unwrap();
    let alice = mock.add_user("Alice", "alice@example.com");
    let laptop = mock.token_for(alice);
    let id6 = Id6::builder(mock.url())
        .authorization(mock.authorization_url(), mock.authorization_secret())
        .cache_ttl(ttl)
        .build()
        .unwrap();
    freeze_clock(&id6);
    let session = session_for(&id6, Some(&laptop)).await.unwrap();

    mock.advance_clock(Duration::from_secs(1));
    mock.revoke_tokens(alice);
    mock.advance_clock(Duration::from_secs(1));
    settle(&id6).await;
    assert_eq!(session.end_reason(), None, "nothing told the app yet");
    // A request of the phone's that opens no session of its own.
    let phone = mock.token_for(alice);
    assert!(id6.authenticate(&headers(&phone)).await.user().is_some());
    settle(&id6).await;
    assert_eq!(session.end_reason(), Some(TokenRejection::TokenRevoked));
}

/// A proxy in front of id6 (an auth gateway, a maintenance page) answering 401 in HTML has
/// said nothing of the token: id6's own 401 always carries its error JSON. The session
/// stays open, as when id6 is down.
#[tokio::test]
async fn a_proxys_html_401_at_a_recheck_ends_no_session() {
    let ttl = Duration::from_secs(60);
    let (mock, id6, _, token) = setup(ttl).await;
    let session = session_for(&id6, Some(&token)).await.expect("signed in");

    mock.set_fault(Fault::StatusHtml(401));
    let calls = mock.user_calls();
    pass(&id6, ttl * 9 / 10, 1).await;
    assert!(mock.user_calls() > calls, "the recheck was made");
    assert_eq!(session.end_reason(), None, "an HTML 401 ended the session");
}

/// A request served from the cache while another task evicts its token: the eviction
/// came after the verdict (the hit found the entry), so the session the request opens
/// ends, however the two interleave. Racy by nature: many rounds, on two worker threads.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_opened_on_a_hit_racing_an_eviction_ends() {
    let mock = MockId6::start().await.unwrap();
    let alice = mock.add_user("Alice", "alice@example.com");
    let token = mock.token_for(alice);
    let id6 = Id6::builder(mock.url()).build().unwrap();
    let (mut hits, mut missed) = (0, 0);
    for _ in 0..4_000 {
        id6.authenticate(&headers(&token)).await;
        let hits_before = id6.stats().hits;
        let go = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let evict = tokio::spawn({
            let (id6, go, token) = (id6.clone(), go.clone(), token.clone());
            async move {
                while !go.load(std::sync::atomic::Ordering::Acquire) {
                    std::hint::spin_loop();
                }
                id6.invalidate_token(&headers(&token));
            }
        });
        go.store(true, std::sync::atomic::Ordering::Release);
        let session = session_for(&id6, Some(&token)).await;
        evict.await.unwrap();
        if id6.stats().hits == hits_before + 1 {
            hits += 1;
            let session = session.expect("a hit names Alice");
            if tokio::time::timeout(PROMPTLY, session.ended())
                .await
                .is_err()
            {
                missed += 1;
            }
        }
    }
    assert!(hits > 0, "no round was a hit");
    assert_eq!(
        missed, 0,
        "{missed} of {hits} hits opened a session the eviction never ended"
    );
}

#[tokio::test]
async fn thirty_sessions_of_a_token_cost_one_call_per_ttl() {
    let ttl = Duration::from_secs(60);
    let (mock, id6, _alice, token) = setup(ttl).await;
    let mut sessions = Vec::new();
    for _ in 0..30 {
        sessions.push(session_for(&id6, Some(&token)).await.unwrap());
    }
    assert_eq!(mock.user_calls_for(&token), 1, "one miss");
    // Three TTLs in steps of a twentieth: rechecks at 0.9, 1.8 and 2.7 TTL.
    pass(&id6, ttl * 3, 60).await;
    assert_eq!(
        mock.user_calls_for(&token),
        1 + 3,
        "30 sessions over 3 TTLs: one recheck per 0.9 TTL"
    );
    assert!(sessions.iter().all(|s| s.end_reason().is_none()));

    // Dropped, the sessions stop costing anything.
    drop(sessions);
    pass(&id6, ttl * 2, 40).await;
    assert_eq!(mock.user_calls_for(&token), 4);
}

#[tokio::test]
async fn a_stream_ends_with_its_last_item_when_the_token_dies() {
    use futures_util::StreamExt;
    let (_mock, id6, _alice, token) = setup(Duration::from_secs(60)).await;
    let session = session_for(&id6, Some(&token)).await.unwrap();
    // Ticks when the test says: between two, the stream waits, as a real one would.
    let (tick, ticks) = tokio::sync::mpsc::unbounded_channel::<String>();
    let ticks = futures_util::stream::unfold(ticks, |mut ticks| async move {
        ticks.recv().await.map(|tick| (tick, ticks))
    });
    let mut stream = Box::pin(session.until_ended(ticks, |why| Some(why.error_code().to_owned())));
    tick.send("tick".to_owned()).unwrap();
    assert_eq!(stream.next().await.as_deref(), Some("tick"));
    // The stream waits for its next tick when the token dies.
    id6.sign_out(&headers(&token)).await.unwrap();
    let rest: Vec<String> = tokio::time::timeout(PROMPTLY, stream.collect())
        .await
        .unwrap();
    assert_eq!(rest.last().map(String::as_str), Some("signed_out"));
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

#[tokio::test]
async fn a_sign_out_between_the_verdict_and_the_session_still_ends_it() {
    let (_mock, id6, _alice, token) = setup(Duration::from_secs(60)).await;
    let signer = id6.clone();
    let handler = service_fn(move |request: Request<()>| {
        let signer = signer.clone();
        async move {
            // Signed out after the layer's verdict, before the handler takes its session.
            signer.sign_out(request.headers()).await.unwrap();
            let session = Session::of(request.headers(), request.extensions());
            Ok::<_, Infallible>(Response::new(session))
        }
    });
    let mut request = Request::new(());
    *request.headers_mut() = headers(&token);
    let response = id6.layer().layer(handler).oneshot(request).await.unwrap();
    let session = response
        .into_body()
        .expect("signed in when the layer looked");
    // Ended as a watched session's sign-out ends: with the reason, not a generic one.
    assert_eq!(ends_promptly(&session).await, TokenRejection::SignedOut);
}

#[tokio::test]
async fn an_open_session_keeps_its_tokens_answer_warm() {
    let ttl = Duration::from_secs(60);
    let (_mock, id6, _alice, token) = setup(ttl).await;
    let session = session_for(&id6, Some(&token)).await.unwrap();
    // The recheck, due at 0.9 TTL, runs; then the first answer's expiry passes.
    advance_clock(&id6, ttl * 9 / 10);
    settle(&id6).await;
    advance_clock(&id6, ttl / 10 + Duration::from_nanos(1));
    // Refreshed ahead of expiry by the session's rechecks: the user's next request is a hit.
    let misses = id6.stats().misses;
    let again = session_for(&id6, Some(&token))
        .await
        .expect("still signed in");
    assert_eq!(
        id6.stats().misses,
        misses,
        "the cache went cold under an open session"
    );
    drop((session, again));
}

#[tokio::test]
async fn a_typed_call_id6_refuses_ends_the_session_in_id6s_words() {
    let (mock, id6, alice, token) = setup(Duration::from_secs(60)).await;
    let session = session_for(&id6, Some(&token)).await.unwrap();
    mock.remove_user(alice);
    let refused = id6.user(&headers(&token)).await.unwrap_err();
    assert_eq!(refused.error_code(), Some("user_not_found"));
    assert_eq!(ends_promptly(&session).await, TokenRejection::UserNotFound);
}

#[tokio::test]
async fn an_optional_session_is_none_for_an_anonymous_caller() {
    use axum::routing::get;
    let (_mock, id6, _alice, token) = setup(Duration::from_secs(60)).await;
    let app = axum::Router::new()
        .route(
            "/",
            get(|session: Option<Session>| async move {
                session.map_or("anonymous".to_owned(), |s| s.user().name.clone())
            }),
        )
        .layer(id6.layer());
    let body = |request: Request<axum::body::Body>| {
        let app = app.clone();
        async move {
            let response = app.oneshot(request).await.unwrap();
            let bytes = axum::body::to_bytes(response.into_body(), 1024)
                .await
                .unwrap();
            String::from_utf8(bytes.to_vec()).unwrap()
        }
    };
    let anonymous = Request::get("/").body(axum::body::Body::empty()).unwrap();
    assert_eq!(body(anonymous).await, "anonymous");
    let dead = Request::get("/")
        .header(COOKIE, "auth=garbage")
        .body(axum::body::Body::empty())
        .unwrap();
    assert_eq!(body(dead).await, "anonymous");
    let alice = Request::get("/")
        .header(COOKIE, format!("auth={token}"))
        .body(axum::body::Body::empty())
        .unwrap();
    assert_eq!(body(alice).await, "Alice");
}

/// A session's recheck that joins an id6 call already in flight (here a request's refresh
/// ahead of expiry) is background work, not a request: `stats().coalesced` counts misses
/// that joined a call (each also counted in `misses`), and this is neither.
#[tokio::test]
async fn a_recheck_joining_a_refresh_is_not_counted_as_a_coalesced_miss() {
    let ttl = Duration::from_secs(60);
    let (mock, id6, _alice, token) = setup(ttl).await;
    let session = session_for(&id6, Some(&token)).await.unwrap();
    // Past the refresh age (¾ TTL), before the recheck (0.9 TTL): a hit starts a refresh,
    // whose answer id6 holds.
    advance_clock(&id6, ttl * 8 / 10);
    mock.hold_user_answers();
    let again = session_for(&id6, Some(&token)).await.unwrap();
    mock.wait_for_held_answers(1).await;
    // The recheck comes due while the refresh is in flight, and joins it: on this one
    // thread, the driver and the recheck run while this test yields.
    advance_clock(&id6, ttl / 10);
    for _ in 0..100 {
        tokio::task::yield_now().await;
    }
    mock.release_user_answers();
    settle(&id6).await;
    assert_eq!(
        mock.user_calls(),
        2,
        "the first request's call and the refresh"
    );
    let stats = id6.stats();
    assert_eq!(
        (stats.misses, stats.hits, stats.refreshes, stats.coalesced),
        (1, 1, 1, 0),
        "{stats:?}"
    );
    drop((session, again));
}
