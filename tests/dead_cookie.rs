//! Opt-in clearing of a dead `auth` cookie, as id6 itself clears it.

mod common;

use common::Setup;
use id6_tower::testing::MockId6;

async fn setup(enabled: bool) -> Setup {
    let mock = MockId6::start().await.unwrap();
    let id6 = common::builder(&mock)
        .clear_dead_cookie(enabled)
        .build()
        .unwrap();
    Setup::with(mock, id6).await
}

async fn set_cookie(s: &Setup, path: &str, token: Option<&str>) -> (u16, Vec<String>) {
    let mut request = s.http.get(format!("{}{path}", s.base));
    if let Some(token) = token {
        request = request.header("cookie", format!("auth={token}"));
    }
    let response = request.send().await.unwrap();
    let cookies = response
        .headers()
        .get_all("set-cookie")
        .iter()
        .map(|v| v.to_str().unwrap().to_owned())
        .collect();
    (response.status().as_u16(), cookies)
}

#[tokio::test]
async fn a_dead_token_is_cleared_in_the_browser() {
    let s = setup(true).await;
    let alice = s.mock.add_user("Alice", "a@example.com");
    let good = s.mock.token_for(alice);
    let expired = s.mock.expired_token_for(alice);
    let cleared = vec!["auth=; Max-Age=0; Path=/; HttpOnly".to_owned()];
    // Miss, then negative hit: both clear. Also on routes that don't ask for the user.
    assert_eq!(
        set_cookie(&s, "/me", Some(&expired)).await,
        (401, cleared.clone())
    );
    assert_eq!(
        set_cookie(&s, "/", Some(&expired)).await,
        (200, cleared.clone())
    );
    assert_eq!(
        set_cookie(&s, "/health", Some("bad token")).await,
        (200, cleared.clone())
    );
    // Good token, no token, id6 down: nothing to clear.
    assert_eq!(set_cookie(&s, "/me", Some(&good)).await, (200, vec![]));
    assert_eq!(set_cookie(&s, "/me", None).await, (401, vec![]));
    s.mock.shutdown().await;
    let fresh = s.mock.token_for(alice);
    assert_eq!(set_cookie(&s, "/me", Some(&fresh)).await, (503, vec![]));
}

#[tokio::test]
async fn off_by_default_and_attributes_are_configurable() {
    let s = setup(false).await;
    assert_eq!(set_cookie(&s, "/me", Some("bad")).await, (401, vec![]));

    let mock = MockId6::start().await.unwrap();
    let id6 = common::builder(&mock)
        .cookie_name("sid")
        .clear_dead_cookie(true)
        .dead_cookie_attributes("Max-Age=0; Path=/; HttpOnly; Secure; SameSite=Lax")
        .build()
        .unwrap();
    let s = Setup::with(mock, id6).await;
    let response = s
        .http
        .get(format!("{}/", s.base))
        .header("cookie", "sid=bad")
        .send()
        .await
        .unwrap();
    assert_eq!(
        response.headers()["set-cookie"],
        "sid=; Max-Age=0; Path=/; HttpOnly; Secure; SameSite=Lax"
    );
}

/// With the `anonymous` failure policy, an outage answers anonymous: that is the policy's
/// stand-in, not id6's word on the token, so the cookie stays.
#[tokio::test]
async fn an_outage_never_clears_a_cookie() {
    let mock = MockId6::start().await.unwrap();
    let id6 = common::builder(&mock)
        .clear_dead_cookie(true)
        .on_unavailable(id6_tower::OnUnavailable::Anonymous)
        .build()
        .unwrap();
    let s = Setup::with(mock, id6).await;
    let alice = s.mock.add_user("Alice", "a@example.com");
    s.mock.set_fault(id6_tower::testing::Fault::Status(500));
    let (status, cookies) = set_cookie(&s, "/", Some(&s.mock.token_for(alice))).await;
    assert_eq!(status, 200, "served as anonymous");
    assert!(
        cookies.is_empty(),
        "an outage cleared the cookie: {cookies:?}"
    );
    // id6 back and rejecting a dead token: that one is cleared.
    s.mock.clear_fault();
    let (_, cookies) = set_cookie(&s, "/", Some(&s.mock.expired_token_for(alice))).await;
    assert_eq!(cookies.len(), 1, "{cookies:?}");
}
