//! The layer on a bare `tower::service_fn` behind hyper-util's server, no axum at all.

mod common;
#[path = "common/hyper.rs"]
mod hyper_server;

use std::convert::Infallible;

use id6_tower::testing::MockId6;
use id6_tower::{Authentication, Id6};
use tower::{service_fn, Layer};

/// Answers `<id>:<name>`, `anonymous` or `unavailable`, from the extensions alone.
async fn who(
    request: http::Request<hyper::body::Incoming>,
) -> Result<http::Response<String>, Infallible> {
    let text = match Authentication::of(request.extensions()) {
        Some(Authentication::Authenticated(user)) => format!("{}:{}", user.id, user.name),
        Some(verdict) if verdict.is_anonymous() => "anonymous".to_owned(),
        Some(Authentication::Unavailable(_)) => "unavailable".to_owned(),
        Some(_) | None => "no layer".to_owned(),
    };
    Ok(http::Response::new(text))
}

async fn serve(id6: &Id6) -> String {
    let addr = hyper_server::serve(id6.layer().layer(service_fn(who))).await;
    format!("http://{addr}/")
}

async fn get(url: &str, cookie: Option<&str>) -> String {
    let mut request = common::http_client().get(url);
    if let Some(c) = cookie {
        request = request.header("cookie", c);
    }
    request.send().await.unwrap().text().await.unwrap()
}

#[tokio::test]
async fn a_bare_service_reads_the_caller_from_extensions() {
    let mock = MockId6::start().await.unwrap();
    let alice = mock.add_user("Alice", "a@example.com");
    let token = mock.token_for(alice);
    let id6 = Id6::builder(mock.url()).build().unwrap();
    let url = serve(&id6).await;

    let cookie = format!("auth={token}");
    for _ in 0..5 {
        assert_eq!(get(&url, Some(&cookie)).await, format!("{alice}:Alice"));
    }
    assert_eq!(get(&url, None).await, "anonymous");
    assert_eq!(get(&url, Some("auth=bad")).await, "anonymous");
    let expired = format!("auth={}", mock.expired_token_for(alice));
    assert_eq!(get(&url, Some(&expired)).await, "anonymous");
    // One call for Alice, one for the expired token; `bad` is no JWT and never sent.
    assert_eq!(mock.user_calls(), 2);

    mock.shutdown().await;
    let fresh = format!("auth={}", mock.token_for(alice));
    assert_eq!(get(&url, Some(&fresh)).await, "unavailable");
}
