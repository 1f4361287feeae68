//! The typed calls of the Authentication API, their errors, and what each does to the cache.

mod common;

use std::time::Duration;

use common::{now_ms, while_held, Setup};
use id6_tower::testing::{Fault, MockId6};
use id6_tower::{Id6, PictureUpload, Profile, UserToken};

fn headers(token: &str) -> http::HeaderMap {
    let mut h = http::HeaderMap::new();
    h.insert("cookie", format!("other=1; auth={token}").parse().unwrap());
    h
}

/// A setup with Alice signed in and her answer cached.
async fn alice_cached() -> (Setup, u64, String) {
    let s = Setup::new().await;
    let alice = s.mock.add_user("Alice", "alice@example.com");
    let token = s.mock.token_for(alice);
    assert_eq!(s.get("/", Some(&token)).await.1, "Hello, Alice!");
    assert_eq!(s.mock.user_calls(), 1);
    (s, alice, token)
}

#[tokio::test]
async fn user_asks_afresh_and_reports_ids_refusals() {
    let (s, alice, token) = alice_cached().await;
    s.mock.rename_user(alice, "Alice L.");
    let user = s.id6.user(&headers(&token)).await.unwrap();
    assert_eq!((user.id, user.name.as_str()), (alice, "Alice L."));
    // The fresh answer replaced the cached one.
    assert_eq!(s.get("/", Some(&token)).await.1, "Hello, Alice L.!");
    assert_eq!(s.mock.user_calls(), 2);

    let err = s.id6.user(&http::HeaderMap::new()).await.unwrap_err();
    assert!(err.is_unauthenticated() && !err.is_unavailable(), "{err}");
    let expired = s.mock.expired_token_for(alice);
    let err = s.id6.user(&headers(&expired)).await.unwrap_err();
    assert!(err.is_unauthenticated());
    assert_eq!(err.error_code(), Some("token_expired"));
    assert_eq!(err.status(), Some(http::StatusCode::UNAUTHORIZED));
    assert!(err.to_string().contains("token_expired"), "{err}");
}

#[tokio::test]
async fn sign_out_evicts_the_token_but_id6_still_accepts_it() {
    let (s, _alice, token) = alice_cached().await;
    s.id6.sign_out(&headers(&token)).await.unwrap();
    assert_eq!(s.mock.calls("POST", "/auth/signout"), 1);
    // Evicted: the next request asks id6, which (as the real one) still accepts the token.
    assert_eq!(s.get("/", Some(&token)).await.1, "Hello, Alice!");
    assert_eq!(s.mock.user_calls(), 2);
}

/// id6's sign-out revokes nothing (the token stays valid there), so the app's part of it
/// does not wait on id6: with id6 unavailable, a cached token leaves the cache all the same
/// (the error says id6 was not told).
#[tokio::test]
async fn sign_out_with_id6_down_still_evicts_the_token() {
    let (s, _alice, token) = alice_cached().await;
    s.mock.set_fault(Fault::Status(503));
    let err = s.id6.sign_out(&headers(&token)).await.unwrap_err();
    assert!(err.is_unavailable(), "{err}");
    s.mock.clear_fault();
    assert_eq!(s.get("/", Some(&token)).await.1, "Hello, Alice!");
    assert_eq!(
        s.mock.user_calls(),
        2,
        "the token was still served from the cache after its sign-out"
    );
}

#[test]
fn the_clearing_cookie_follows_the_configured_name_and_attributes() {
    let url = "http://127.0.0.1:9/api";
    let id6 = Id6::builder(url).build().unwrap();
    assert_eq!(id6.clearing_cookie(), "auth=; Max-Age=0; Path=/; HttpOnly");
    let id6 = Id6::builder(url).cookie_name("sid").build().unwrap();
    assert_eq!(id6.clearing_cookie(), "sid=; Max-Age=0; Path=/; HttpOnly");
    let id6 = Id6::builder(url)
        .cookie_name("sid")
        .clear_dead_cookie(true)
        .dead_cookie_attributes("Max-Age=0; Path=/; Domain=example.com; Secure; HttpOnly")
        .build()
        .unwrap();
    assert_eq!(
        id6.clearing_cookie(),
        "sid=; Max-Age=0; Path=/; Domain=example.com; Secure; HttpOnly"
    );
}

#[tokio::test]
async fn disconnect_signs_out_every_session_at_once() {
    let (s, alice, laptop) = alice_cached().await;
    // Another session, issued a minute ago: never the laptop's token, however slow the
    // setup was (a token issued "5 ms ago" could be the laptop's own).
    let phone = s.mock.token_issued_at(alice, now_ms() - 60_000);
    assert_eq!(s.get("/", Some(&phone)).await.1, "Hello, Alice!");
    s.id6
        .disconnect(&UserToken::new(&laptop).unwrap())
        .await
        .unwrap();
    for token in [&laptop, &phone] {
        let (status, body, _) = s.get("/me", Some(token)).await;
        assert_eq!(status, 401, "{body}");
    }
    // Both asked id6 again: nothing stale was served.
    assert_eq!(s.mock.user_calls(), 4);
}

#[tokio::test]
async fn a_profile_change_is_seen_on_the_next_request() {
    let (s, alice, token) = alice_cached().await;
    let profile = Profile::new("Alice Liddell")
        .bio("Curiouser")
        .language("fr");
    s.id6
        .update_profile(&headers(&token), &profile)
        .await
        .unwrap();
    let (status, body, _) = s.get("/me", Some(&token)).await;
    assert_eq!(status, 200);
    let me: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(me["name"], "Alice Liddell");
    assert_eq!(me["bio"], "Curiouser");
    assert_eq!(me["language"], "fr");
    assert_eq!(s.mock.user_json(alice).unwrap()["bio"], "Curiouser");

    // A profile id6 would refuse is refused before sending anything.
    let err = s
        .id6
        .update_profile(&headers(&token), &Profile::new("x").bio(""))
        .await
        .unwrap_err();
    assert!(err.is_validation());
    assert_eq!(err.error_code(), Some("invalid_body"));
    assert_eq!(s.mock.calls("POST", "/user/profile"), 1);
}

#[tokio::test]
async fn pictures_go_up_and_come_down() {
    let (s, alice, token) = alice_cached().await;
    let h = headers(&token);
    let err = s.id6.picture(&h).await.unwrap_err();
    assert_eq!(err.error_code(), Some("picture_not_set"), "{err}");
    assert!(!err.is_unavailable(), "{err}");
    assert_eq!(err.status(), Some(http::StatusCode::NOT_FOUND));

    let png = b"\x89PNG\r\n\x1a\n fake image bytes".to_vec();
    let url = s
        .id6
        .update_picture(&h, PictureUpload::from_bytes("me.png", png.clone()))
        .await
        .unwrap()
        .expect("id6 answers the new URL");
    assert!(url.starts_with("/api/user/picture?v="), "{url}");
    assert_eq!(s.mock.picture_of(alice).unwrap(), png);
    // The cached user is evicted: the next request sees the picture.
    let me: serde_json::Value = serde_json::from_str(&s.get("/me", Some(&token)).await.1).unwrap();
    assert_eq!(me["picture"], url.as_str());

    let download = s.id6.picture(&h).await.unwrap();
    assert_eq!(download.content_type(), Some("application/octet-stream"));
    assert_eq!(download.file_name(), url.split("v=").nth(1));
    assert_eq!(download.bytes().await.unwrap(), png);

    // From a file, streamed.
    let path = std::env::temp_dir().join(format!("id6-tower-test-{}.jpg", std::process::id()));
    tokio::fs::write(&path, b"jpeg bytes").await.unwrap();
    let upload = PictureUpload::from_file(&path).await.unwrap();
    s.id6.update_picture(&h, upload).await.unwrap();
    let _ = tokio::fs::remove_file(&path).await;
    assert_eq!(s.mock.picture_of(alice).unwrap(), b"jpeg bytes");
}

#[tokio::test]
async fn pictures_id6_would_refuse_are_refused_before_sending() {
    let mock = MockId6::start().await.unwrap();
    let alice = mock.add_user("Alice", "a@example.com");
    let token = mock.token_for(alice);
    let id6 = Id6::builder(mock.url())
        .max_picture_bytes(16)
        .build()
        .unwrap();
    let h = headers(&token);
    let err = id6
        .update_picture(&h, PictureUpload::from_bytes("me.gif", &b"GIF89a"[..]))
        .await
        .unwrap_err();
    assert_eq!(err.error_code(), Some("format_not_allowed"));
    assert!(err.error_details().unwrap()["allowedFormats"].is_array());
    let err = id6
        .update_picture(&h, PictureUpload::from_bytes("me.png", vec![0u8; 17]))
        .await
        .unwrap_err();
    assert!(err.is_validation());
    assert_eq!(err.error_code(), Some("picture_too_large"));
    assert_eq!(mock.calls("POST", "/user/picture"), 0);
}

#[tokio::test]
async fn typed_call_errors_say_what_happened() {
    let mock = MockId6::start().await.unwrap();
    let alice = mock.add_user("Alice", "a@example.com");
    let token = mock.token_for(alice);
    let id6 = common::builder(&mock).build().unwrap();
    let h = headers(&token);

    let err = id6.sign_out(&http::HeaderMap::new()).await.unwrap_err();
    assert!(err.is_unauthenticated());
    assert_eq!(err.error_code(), Some("not_authenticated"));

    mock.set_fault(Fault::Status(503));
    let err = id6.disconnect(&h).await.unwrap_err();
    assert!(err.is_unavailable());
    assert_eq!(err.status(), Some(http::StatusCode::SERVICE_UNAVAILABLE));

    mock.set_fault(Fault::RateLimited);
    let err = id6.sign_out(&h).await.unwrap_err();
    assert!(err.is_rate_limited() && err.is_unavailable());
    let wait = err.retry_after().unwrap();
    assert!(
        wait > Duration::from_secs(50) && wait <= Duration::from_secs(60),
        "{wait:?}"
    );
    // Until id6's window opens, it is not called again.
    let calls = mock.requests().len();
    mock.clear_fault();
    let err = id6.user(&h).await.unwrap_err();
    assert!(err.is_rate_limited() && err.is_not_attempted(), "{err}");
    assert!(err.retry_after().unwrap() > Duration::from_secs(50));
    assert_eq!(mock.requests().len(), calls);

    let id6 = common::builder(&mock).build().unwrap();
    mock.shutdown().await;
    let err = id6
        .update_profile(&h, &Profile::new("A"))
        .await
        .unwrap_err();
    assert!(err.is_connect() && err.is_unavailable(), "{err}");
}

/// A `GET /user` answer decided before `disconnect` but arriving after it must not put the
/// revoked user back into the cache.
/// A disconnect whose answer never came (a timeout: id6 may have revoked every token of the
/// user) leaves none of the user's tokens cached: the next request asks id6 rather than
/// trust an answer the call may have made wrong.
#[tokio::test]
async fn a_disconnect_without_an_answer_leaves_nothing_cached() {
    let mock = MockId6::start().await.unwrap();
    let alice = mock.add_user("Alice", "a@example.com");
    let token = mock.token_for(alice);
    let id6 = common::builder(&mock).build().unwrap();
    let h = headers(&token);
    assert!(id6.authenticate(&h).await.user().is_some());
    let calls = mock.user_calls();

    mock.set_fault(Fault::Delay(Duration::from_secs(30)));
    let err = id6.disconnect(&h).await.unwrap_err();
    assert!(err.is_timeout(), "{err}");
    mock.clear_fault();
    assert!(id6.authenticate(&h).await.user().is_some());
    assert_eq!(
        mock.user_calls(),
        calls + 1,
        "Alice was served from the cache after a disconnect that may have happened"
    );
}

/// Only a 4xx is id6 refusing a call; JSON under any other status that is no success (a
/// redirect, a code past 599) says nothing about the caller: id6 is unavailable, and an
/// app answering with the error says 503, never the stray status.
#[tokio::test]
async fn a_stray_status_is_no_refusal() {
    use axum::response::IntoResponse;
    let mock = MockId6::start().await.unwrap();
    let alice = mock.add_user("Alice", "a@example.com");
    let token = mock.token_for(alice);
    let id6 = common::builder(&mock).build().unwrap();
    for code in [302, 308, 999] {
        mock.set_fault(Fault::Status(code));
        let err = id6.user(&headers(&token)).await.unwrap_err();
        assert!(err.is_unavailable(), "{code}: {err}");
        assert_eq!(err.error_code(), None, "{code}");
        assert_eq!(
            err.into_response().status(),
            http::StatusCode::SERVICE_UNAVAILABLE,
            "{code}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_answer_in_flight_during_disconnect_is_not_cached() {
    let s = Setup::new().await;
    let alice = s.mock.add_user("Alice", "a@example.com");
    let old = s.mock.token_issued_at(alice, now_ms() - 10);
    let other = s.mock.token_issued_at(alice, now_ms() - 10);

    // 1. id6 decides "Alice" for `old`, but the answer is held in flight; 2. meanwhile
    // Alice disconnects everywhere (not a `GET /user`: not held); 3. the stale answer
    // arrives. The request that was already running may see it...
    let disconnect = async { s.id6.disconnect(&headers(&other)).await.unwrap() };
    assert_eq!(
        while_held(&s.mock, &s.base, &old, disconnect).await,
        "Hello, Alice!"
    );
    // ...but it was not cached: the next request asks id6 and is refused.
    let calls = s.mock.user_calls();
    assert_eq!(s.get("/me", Some(&old)).await.0, 401);
    assert_eq!(s.mock.user_calls(), calls + 1);
}

#[tokio::test]
async fn invalidation_controls() {
    let (s, alice, token) = alice_cached().await;
    s.id6.invalidate_token(&headers(&token));
    assert_eq!(s.get("/", Some(&token)).await.1, "Hello, Alice!");
    assert_eq!(s.mock.user_calls(), 2);
    s.id6.invalidate_user(alice);
    assert_eq!(s.get("/", Some(&token)).await.1, "Hello, Alice!");
    assert_eq!(s.mock.user_calls(), 3);
    s.id6.clear();
    assert_eq!(s.get("/", Some(&token)).await.1, "Hello, Alice!");
    assert_eq!(s.mock.user_calls(), 4);
    assert_eq!(s.get("/", Some(&token)).await.1, "Hello, Alice!");
    assert_eq!(s.mock.user_calls(), 4);
}

/// The test kit's sign-in sends the browser back only to its own paths or to an allowed
/// origin, judged as a browser reads the address (tabs and newlines dropped, `\` as `/`).
#[tokio::test]
async fn the_mock_sign_in_is_no_open_redirect() {
    let mock = MockId6::start().await.unwrap();
    mock.allow_redirect("https://app.example");
    let alice = mock.add_user("Alice", "alice@example.com");
    let http = common::http_client_no_redirect();
    let sign_in = |redirect: &'static str| {
        // Form-encoded as a query string is.
        let form = reqwest::Url::parse_with_params(
            "http://form.invalid/",
            [
                ("userId", alice.to_string().as_str()),
                ("redirect", redirect),
            ],
        )
        .unwrap()
        .query()
        .unwrap_or_default()
        .to_owned();
        http.post(format!("{}/auth/login", mock.url()))
            .header("content-type", "application/x-www-form-urlencoded")
            .body(form)
            .send()
    };
    for (redirect, location) in [
        ("/", "/"),
        ("/account?tab=1", "/account?tab=1"),
        ("https://app.example/back", "https://app.example/back"),
        // A browser drops the tab: the path it will follow is the one sent.
        ("/acc\tount", "/account"),
    ] {
        let answer = sign_in(redirect).await.unwrap();
        assert_eq!(answer.status(), 303, "{redirect:?}");
        assert_eq!(answer.headers()["location"], location, "{redirect:?}");
    }
    for redirect in [
        "//evil.example",
        "/\t/evil.example",
        "/\n/evil.example",
        "/\\evil.example",
        "\\/evil.example",
        " //evil.example",
        "https://evil.example/",
        "https://app.example.evil.example/",
        "javascript:alert(1)",
    ] {
        let answer = sign_in(redirect).await.unwrap();
        assert_eq!(answer.status(), 400, "{redirect:?}");
        assert!(answer.headers().get("location").is_none(), "{redirect:?}");
    }
}

/// id6's profile rules are written once: for the same body, the mock's `400 invalid_body`
/// and the typed call's check before sending give the same `errorDetails`, in id6's words.
#[tokio::test]
async fn the_mock_and_the_typed_call_refuse_a_profile_alike() {
    let mock = MockId6::start().await.unwrap();
    let alice = mock.add_user("Alice", "alice@example.com");
    let token = mock.token_for(alice);
    let http = common::http_client();
    let long = "n".repeat(129);
    for body in [
        serde_json::json!({ "bio": "no name" }),
        serde_json::json!({ "name": "" }),
        serde_json::json!({ "name": long }),
        serde_json::json!({ "name": 7, "bio": "" }),
        serde_json::json!({ "name": "A", "bio": "b".repeat(257), "language": "EN" }),
    ] {
        let text = body.to_string();
        let answer = http
            .post(format!("{}/user/profile", mock.url()))
            .header("cookie", format!("auth={token}"))
            .header("content-type", "application/json")
            .body(text.clone())
            .send()
            .await
            .unwrap();
        assert_eq!(answer.status(), 400, "{text}");
        let answer: serde_json::Value =
            serde_json::from_slice(&answer.bytes().await.unwrap()).unwrap();
        assert_eq!(answer["errorCode"], "invalid_body", "{text}");
        let refused = Profile::from_json(text.as_bytes()).unwrap_err();
        assert_eq!(refused.error_code(), Some("invalid_body"));
        assert_eq!(
            refused.error_details().unwrap(),
            &answer["errorDetails"],
            "{text}"
        );
    }
}
