//! What reaches id6: the `auth` cookie alone, whatever else the caller sent.

mod common;

use common::Setup;
use id6_tower::Id6;

#[tokio::test]
async fn only_the_auth_cookie_reaches_id6() {
    let s = Setup::new().await;
    let alice = s.mock.add_user("Alice", "a@example.com");
    let token = s.mock.token_for(alice);
    // common::Setup::get sends `theme=dark; auth=<token>; lang=fr`.
    assert_eq!(s.get("/me", Some(&token)).await.0, 200);
    let sent = s.mock.requests();
    assert_eq!(sent.len(), 1);
    assert_eq!(sent[0].method, "GET");
    assert_eq!(sent[0].path, "/user");
    assert_eq!(
        sent[0].cookie.as_deref(),
        Some(format!("auth={token}").as_str())
    );
    assert_eq!(s.mock.user_calls_for(&token), 1);
}

#[tokio::test]
async fn the_first_auth_cookie_wins_across_headers() {
    let s = Setup::new().await;
    let alice = s.mock.add_user("Alice", "a@example.com");
    let bob = s.mock.add_user("Bob", "b@example.com");
    let (alice_token, bob_token) = (s.mock.token_for(alice), s.mock.token_for(bob));
    let mut headers = http::HeaderMap::new();
    headers.append("cookie", "session=x".parse().unwrap());
    headers.append("cookie", format!("auth={alice_token}").parse().unwrap());
    headers.append("cookie", format!("auth={bob_token}").parse().unwrap());
    let who = s.id6.authenticate(&headers).await;
    assert_eq!(who.user().unwrap().name, "Alice");
    assert_eq!(s.mock.user_calls_for(&bob_token), 0);
}

#[tokio::test]
async fn a_custom_cookie_name_is_read_and_forwarded() {
    let s = Setup::new().await;
    let alice = s.mock.add_user("Alice", "a@example.com");
    let token = s.mock.token_for(alice);
    let id6 = Id6::builder(s.mock.url())
        .cookie_name("sid")
        .build()
        .unwrap();
    let mut headers = http::HeaderMap::new();
    headers.insert(
        "cookie",
        format!("auth=ignored; sid={token}").parse().unwrap(),
    );
    // The mock knows only `auth`, so a renamed cookie reaches it as `sid` and is not a user:
    // this checks what was sent, not that the mock accepts it.
    let _ = id6.authenticate(&headers).await;
    let last = s.mock.requests().pop().unwrap();
    assert_eq!(
        last.cookie.as_deref(),
        Some(format!("sid={token}").as_str())
    );
}
