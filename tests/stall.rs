//! id6's faults measured in time, on a driven clock: a stall counts once (sign-ins come back
//! within a couple of seconds of id6's return, however many calls it caught), and the
//! rechecks of open sessions back off while id6 answers 5xx or garbage, and pause while its
//! rate-limit budget is low (but for the one a `disconnect` asks for).
//!
//! Time is driven, never waited for: the handle's clock is frozen and moved by
//! [`advance_clock`], which wakes the rechecks it made due, and [`settle`] waits for them.
//! The stall test runs on tokio's paused clock as well, for the one thing the handle's clock
//! does not drive: the call timeouts of a hanging id6 (I/O).

use std::convert::Infallible;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use http::header::COOKIE;
use http::{HeaderMap, Request, Response};
use id6_tower::testing::{advance_clock, freeze_clock, settle, Fault, MockId6};
use id6_tower::{Id6, Session, TokenRejection, UserToken};
use tower::{service_fn, Layer, ServiceExt};

/// The probe: `ID6_TIMEOUT=1s` against a hanging id6.
const TIMEOUT: Duration = Duration::from_secs(1);
/// A hang: far longer than any test here drives the clock.
const HANG: Duration = Duration::from_secs(24 * 3600);

fn headers(token: &str) -> HeaderMap {
    let mut headers = HeaderMap::new();
    headers.insert(COOKIE, format!("auth={token}").parse().unwrap());
    headers
}

/// A new user's token: a miss, whatever the cache holds.
fn new_token(mock: &MockId6) -> String {
    static USERS: AtomicUsize = AtomicUsize::new(0);
    let n = USERS.fetch_add(1, Ordering::Relaxed);
    let user = mock.add_user(&format!("User {n}"), &format!("u{n}@example.com"));
    mock.token_for(user)
}

/// Lets `by` pass on the handle's clock, in steps of 100 ms, each followed by the rechecks
/// it made due: everything due meanwhile runs, in order.
async fn pass(id6: &Id6, by: Duration) {
    let step = Duration::from_millis(100);
    let mut passed = Duration::ZERO;
    while passed < by {
        advance_clock(id6, step);
        settle(id6).await;
        passed += step;
    }
}

/// What a handler behind the layer gets for a request carrying `token`.
async fn session_for(id6: &Id6, token: &str) -> Session {
    let handler = service_fn(|request: Request<()>| async move {
        let session = Session::of(request.headers(), request.extensions());
        Ok::<_, Infallible>(Response::new(session))
    });
    let mut request = Request::new(());
    *request.headers_mut() = headers(token);
    let response = id6.layer().layer(handler).oneshot(request).await.unwrap();
    response.into_body().expect("signed in")
}

/// `width` sign-ins caught by a hanging id6 all time out; id6 comes back; how long on the
/// handle's clock until the first new sign-in is served (stepping 100 ms, up to a minute).
async fn recovery_after_a_stall(width: usize) -> Duration {
    let mock = MockId6::start().await.unwrap();
    let id6 = Id6::builder(mock.url()).timeout(TIMEOUT).build().unwrap();
    let tokens: Vec<String> = (0..width).map(|_| new_token(&mock)).collect();
    mock.set_fault(Fault::Delay(HANG));
    let calls = tokens.iter().map(|token| {
        let id6 = id6.clone();
        let headers = headers(token);
        async move { id6.authenticate(&headers).await }
    });
    for who in futures_util::future::join_all(calls).await {
        let error = who.unavailable().expect("id6 hangs: no verdict");
        assert!(error.is_unavailable(), "{error}");
    }
    mock.clear_fault();
    let step = Duration::from_millis(100);
    let mut waited = Duration::ZERO;
    while waited <= Duration::from_secs(60) {
        let who = id6.authenticate(&headers(&new_token(&mock))).await;
        if who.user().is_some() {
            return waited;
        }
        advance_clock(&id6, step);
        waited += step;
    }
    panic!("width {width}: no sign-in served a minute after id6 came back");
}

/// A stall counts once: the calls it caught in flight time out together, and only the
/// first of them may open the breaker; the rest say nothing new. Seen before the fix: 3
/// calls recovered in 0.5 s, 32 in 30 s (the back-off doubled on every third timeout).
#[tokio::test(start_paused = true)]
async fn a_stall_of_any_width_recovers_within_a_couple_of_seconds() {
    for width in [3, 32, 100] {
        let recovered = recovery_after_a_stall(width).await;
        println!("stall width {width:>3}: first sign-in served {recovered:?} after id6's return");
        assert!(
            recovered <= Duration::from_secs(2),
            "width {width}: sign-ins locked out for {recovered:?} after id6 came back"
        );
    }
}

/// `tokens` sessions of as many users, each signed in once.
async fn sessions(mock: &MockId6, id6: &Id6, tokens: usize) -> Vec<Session> {
    let mut sessions = Vec::new();
    for _ in 0..tokens {
        sessions.push(session_for(id6, &new_token(mock)).await);
    }
    sessions
}

/// While id6 answers 5xx or garbage, rechecks back off: they come back later and later (as
/// id6's back-off grows, up to `max_backoff`), not every TTL/2. Before the fix: 10 sessions
/// made 230 calls in 2 minutes of a TTL of 10 s (one per session every 5 s), more than the
/// 130 they cost while id6 answered; after it, 42 to 58 (the rechecks' waves fall as the
/// loopback's timing lets them), then a call per session a minute.
#[tokio::test]
async fn rechecks_back_off_while_id6_answers_without_a_verdict() {
    const TOKENS: usize = 10;
    let ttl = Duration::from_secs(10);
    let window = Duration::from_secs(120);
    for fault in [
        Fault::Status(500),
        Fault::StatusHtml(502),
        Fault::MalformedBody,
    ] {
        let mock = MockId6::start().await.unwrap();
        let id6 = Id6::builder(mock.url())
            .cache_ttl(ttl)
            .timeout(TIMEOUT)
            .build()
            .unwrap();
        freeze_clock(&id6);
        let open = sessions(&mock, &id6, TOKENS).await;

        // Healthy: each session costs one call per 0.9 TTL.
        let before = mock.user_calls();
        pass(&id6, window).await;
        let healthy = mock.user_calls() - before;
        assert_eq!(healthy, 13 * TOKENS, "{fault:?}: 120 s / 9 s, a call each");

        // id6 answers without a verdict: nothing is refilled, and once every cached answer
        // is past its TTL, every due recheck would ask id6.
        mock.set_fault(fault.clone());
        advance_clock(&id6, ttl);
        let before = mock.user_calls();
        pass(&id6, window).await;
        let failing = mock.user_calls() - before;
        println!(
            "{fault:?}: {failing} calls in {window:?} from {TOKENS} sessions (healthy: {healthy})"
        );
        assert!(
            failing < healthy,
            "{fault:?}: rechecks kept asking a failing id6: {failing} calls, {healthy} healthy"
        );
        // Then the back-off is at its cap (`max_backoff`, 60 s): a call per session a minute
        // at most, 6 in 5 minutes (where TTL/2 made 60).
        let before = mock.user_calls();
        pass(&id6, Duration::from_secs(300)).await;
        let later = mock.user_calls() - before;
        println!("{fault:?}: then {later} calls in 300s");
        assert!(
            later <= 6 * TOKENS,
            "{fault:?}: {later} calls in the next 5 minutes"
        );
        for session in &open {
            assert_eq!(session.end_reason(), None, "a failing id6 ends nobody");
        }

        // id6 is back: rechecks resume within the longest back-off, and find the sessions
        // good.
        mock.clear_fault();
        let before = mock.user_calls();
        pass(&id6, Duration::from_secs(61)).await;
        assert!(
            mock.user_calls() - before >= TOKENS,
            "{fault:?}: rechecks did not resume"
        );
        for session in &open {
            assert_eq!(session.end_reason(), None);
        }
    }
}

/// While id6's rate-limit budget is under its reserve, rechecks are background work and
/// pause, as refresh-ahead does: the budget is kept for sign-ins. Before the fix they spent
/// it (and then ran into id6's 429).
#[tokio::test]
async fn rechecks_pause_while_id6s_budget_is_low() {
    const TOKENS: usize = 10;
    let ttl = Duration::from_secs(10);
    // Ten calls of eleven spent by the sign-ins: one left, under a tenth of the limit.
    let mock = MockId6::builder()
        .rate_limit(TOKENS as u32 + 1, Duration::from_secs(3600))
        .start()
        .await
        .unwrap();
    let id6 = Id6::builder(mock.url()).cache_ttl(ttl).build().unwrap();
    freeze_clock(&id6);
    let open = sessions(&mock, &id6, TOKENS).await;
    assert_eq!(mock.user_calls(), TOKENS);
    // Every cached answer past its TTL: each due recheck would ask id6. The window stays
    // low until its reset, which the handle holds to `max_backoff` (60 s): short of it.
    advance_clock(&id6, ttl);
    pass(&id6, Duration::from_secs(45)).await;
    assert_eq!(
        mock.user_calls(),
        TOKENS,
        "rechecks spent the budget kept for sign-ins"
    );
    for session in &open {
        assert_eq!(session.end_reason(), None);
    }
    // The budget's last call is there for a sign-in.
    let who = id6.authenticate(&headers(&new_token(&mock))).await;
    assert!(who.user().is_some(), "{who:?}");
}

/// A disconnect makes every session of the user due now, and id6's answer ends them: that
/// recheck is a user's action, not background work, and goes even while the budget is low.
#[tokio::test]
async fn a_disconnect_ends_sessions_while_the_budget_is_low() {
    let mock = MockId6::builder()
        .rate_limit(30, Duration::from_secs(3600))
        .start()
        .await
        .unwrap();
    let alice = mock.add_user("Alice", "alice@example.com");
    let now_ms = || {
        let since = SystemTime::now().duration_since(UNIX_EPOCH).unwrap();
        u64::try_from(since.as_millis()).unwrap()
    };
    let laptop = mock.token_issued_at(alice, now_ms() - 10);
    let phone = mock.token_issued_at(alice, now_ms() - 60_000);
    let id6 = Id6::builder(mock.url()).build().unwrap();
    let on_laptop = session_for(&id6, &laptop).await;
    // Sign-ins spend id6's budget: after the disconnect, two calls of thirty are left.
    while mock.requests().len() < 27 {
        id6.authenticate(&headers(&new_token(&mock))).await;
    }
    id6.disconnect(&UserToken::new(&phone).unwrap())
        .await
        .unwrap();
    let ended = tokio::time::timeout(Duration::from_secs(1), on_laptop.ended()).await;
    assert_eq!(ended, Ok(TokenRejection::TokenRevoked));
}
