//! A signed-in request's `Session` works whoever holds the handle: the service alone (the
//! `app.oneshot(request)` idiom, the app building its own `Id6`) included. A request keeps
//! what its `Session` needs, not a handle that may be gone by the time the handler runs.

use std::convert::Infallible;

use axum::body::Body;
use axum::routing::get;
use axum::Router;
use http::header::COOKIE;
use http::{Request, Response, StatusCode};
use id6_tower::testing::MockId6;
use id6_tower::{Id6, Session};
use tower::{service_fn, Layer, ServiceExt};

fn signed_in_request(token: &str) -> Request<()> {
    let mut request = Request::new(());
    request
        .headers_mut()
        .insert(COOKIE, format!("auth={token}").parse().unwrap());
    request
}

async fn session_behind<S>(service: S, token: &str) -> Option<Session>
where
    S: tower::Service<Request<()>, Response = Response<Option<Session>>, Error = Infallible>,
{
    service
        .oneshot(signed_in_request(token))
        .await
        .unwrap()
        .into_body()
}

fn handler() -> impl tower::Service<
    Request<()>,
    Response = Response<Option<Session>>,
    Error = Infallible,
    Future = impl Send,
> + Clone {
    service_fn(|request: Request<()>| async move {
        let session = Session::of(request.headers(), request.extensions());
        Ok::<_, Infallible>(Response::new(session))
    })
}

/// A miss: the service holds the only handle.
#[tokio::test]
async fn miss_session_when_the_service_owns_the_only_handle() {
    let mock = MockId6::start().await.unwrap();
    let token = mock.token_for(mock.add_user("Alice", "alice@example.com"));
    let service = Id6::builder(mock.url())
        .build()
        .unwrap()
        .layer()
        .layer(handler());
    assert!(
        session_behind(service, &token).await.is_some(),
        "signed in, yet no Session (miss path)"
    );
}

/// A hit: the cache is warm, then the service holds the only handle.
#[tokio::test]
async fn hit_session_when_the_service_owns_the_only_handle() {
    let mock = MockId6::start().await.unwrap();
    let token = mock.token_for(mock.add_user("Alice", "alice@example.com"));
    let id6 = Id6::builder(mock.url()).build().unwrap();
    assert!(session_behind(id6.layer().layer(handler()), &token)
        .await
        .is_some());
    let service = id6.layer().layer(handler());
    drop(id6);
    assert!(
        session_behind(service, &token).await.is_some(),
        "signed in, yet no Session (hit path)"
    );
}

/// axum's own testing idiom: `app().oneshot(request)`, the app building its handle.
#[tokio::test]
async fn axum_session_extractor_with_app_oneshot() {
    let mock = MockId6::start().await.unwrap();
    let token = mock.token_for(mock.add_user("Alice", "alice@example.com"));
    let app = || {
        let id6 = Id6::builder(mock.url()).build().unwrap();
        Router::new()
            .route(
                "/",
                get(|session: Session| async move { session.user().name.clone() }),
            )
            .layer(id6.layer())
    };
    let request = Request::get("/")
        .header(COOKIE, format!("auth={token}"))
        .body(Body::empty())
        .unwrap();
    let response = app().oneshot(request).await.unwrap();
    assert_eq!(
        response.status(),
        StatusCode::OK,
        "Session extractor refused a signed-in user"
    );
}
