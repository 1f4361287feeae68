//! Found by an adversarial probe of sessions and configuration: a session must end on id6's
//! refusal only, never on an answer that is not id6's; and `build()` must refuse what its
//! documented range excludes, rather than accept a value that can never work.
//!
//! Time is driven, never waited for: the handle's clock is frozen and moved by
//! [`advance_clock`], and [`settle`] waits for the rechecks it made due.

use std::convert::Infallible;
use std::time::Duration;

use http::header::COOKIE;
use http::{Request, Response};
use id6_tower::testing::{advance_clock, freeze_clock, settle, Fault, MockId6};
use id6_tower::{Id6, Session};
use tower::{service_fn, Layer, ServiceExt};

/// What a handler behind the layer gets for a request carrying `token`.
async fn session_for(id6: &Id6, token: &str) -> Option<Session> {
    let handler = service_fn(|request: Request<()>| async move {
        let session = Session::of(request.headers(), request.extensions());
        Ok::<_, Infallible>(Response::new(session))
    });
    let mut request = Request::new(());
    request
        .headers_mut()
        .insert(COOKIE, format!("auth={token}").parse().unwrap());
    let response = id6.layer().layer(handler).oneshot(request).await.unwrap();
    response.into_body()
}

/// A proxy in front of id6 (an auth gateway, a maintenance page) answering `401` with an
/// HTML page is not id6 refusing the token: id6's own 401 always carries its error JSON
/// (`id6.md`), and a typed call already treats a 4xx that is not JSON as no refusal. Yet
/// `GET /user` took any 401 as a dead token (`client.rs`: "an unreadable body still is a
/// rejection"): every open session ended at its recheck (and, with `clear_dead_cookie`,
/// every browser lost its cookie) while id6 itself was never asked.
#[tokio::test]
async fn a_proxys_html_401_at_a_recheck_ends_no_session() {
    let ttl = Duration::from_secs(60);
    let mock = MockId6::start().await.unwrap();
    let alice = mock.add_user("Alice", "alice@example.com");
    let token = mock.token_for(alice);
    let id6 = Id6::builder(mock.url()).cache_ttl(ttl).build().unwrap();
    freeze_clock(&id6);
    let session = session_for(&id6, &token).await.expect("signed in");

    // The proxy misbehaves over the recheck, due a tenth of the TTL before expiry.
    mock.set_fault(Fault::StatusHtml(401));
    let calls = mock.user_calls();
    advance_clock(&id6, ttl * 9 / 10);
    settle(&id6).await;
    assert!(mock.user_calls() > calls, "the recheck was made");
    assert_eq!(
        session.end_reason(),
        None,
        "an HTML 401 from in front of id6 ended the session as if id6 had refused the token"
    );
}

/// `ID6_AUTHORIZATION_SECRET` is documented as non-empty visible ASCII (README's table, the
/// setter's doc, the error's own words), but any header-safe bytes were accepted: non-ASCII
/// (which id6, reading headers as Latin-1, can never match), a tab, or white space at either
/// end (which the server trims off). Each would pass `build()` and fail every lookup later.
/// (A space inside, as in `wrong secret`, stays accepted.)
#[test]
fn an_authorization_secret_outside_visible_ascii_is_refused() {
    let url = "http://127.0.0.1:1/api";
    assert!(Id6::builder(url)
        .authorization("http://127.0.0.1:1", "s3cret-Value_1!")
        .build()
        .is_ok());
    for secret in ["sécret", "a\tb", " secret", "secret "] {
        let built = Id6::builder(url)
            .authorization("http://127.0.0.1:1", secret)
            .build();
        let error = built.expect_err(&format!("{secret:?} is not visible ASCII"));
        assert_eq!(error.variable(), Some("ID6_AUTHORIZATION_SECRET"));
        assert!(
            !error.to_string().contains(secret) && !format!("{error:?}").contains(secret),
            "the refusal shows the secret: {error:?}"
        );
    }
}

/// `ID6_DEAD_COOKIE_ATTRIBUTES` is documented as at most 1024 bytes of visible ASCII; a
/// non-ASCII byte or a control character (tab) passed.
#[test]
fn dead_cookie_attributes_outside_visible_ascii_are_refused() {
    let url = "http://127.0.0.1:1/api";
    let with = |attributes: &str| {
        Id6::builder(url)
            .clear_dead_cookie(true)
            .dead_cookie_attributes(attributes)
            .build()
    };
    assert!(with("Max-Age=0; Path=/; Domain=app.example; Secure; SameSite=Lax").is_ok());
    for attributes in ["Max-Age=0; Path=/café", "Max-Age=0;\tPath=/"] {
        let error = with(attributes).expect_err(&format!("{attributes:?} accepted"));
        assert_eq!(error.variable(), Some("ID6_DEAD_COOKIE_ATTRIBUTES"));
    }
}
