//! The layer around services that are not axum: any body, the inner error type untouched.

mod common;

use std::convert::Infallible;
use std::future::Future;
use std::sync::Arc;

use id6_tower::testing::MockId6;
use id6_tower::{Authentication, Id6, Id6Layer, Id6Service, User};
use tower::{service_fn, Layer, Service, ServiceExt};

#[derive(Debug, PartialEq)]
struct InnerError(&'static str);

#[tokio::test]
async fn any_service_any_body_and_its_own_error_type() {
    let mock = MockId6::start().await.unwrap();
    let alice = mock.add_user("Alice", "a@example.com");
    let token = mock.token_for(alice);
    let id6 = common::builder(&mock).build().unwrap();

    // A bare service_fn over `Vec<u8>` bodies, failing with its own error type.
    let service = id6
        .layer()
        .layer(service_fn(|request: http::Request<Vec<u8>>| async move {
            if request.body() == b"fail" {
                return Err(InnerError("inner failed"));
            }
            let who = Authentication::of(request.extensions()).cloned();
            Ok(http::Response::new(who))
        }));

    let request = |body: &[u8], cookie: Option<&str>| {
        let mut builder = http::Request::post("/");
        if let Some(c) = cookie {
            builder = builder.header("cookie", c);
        }
        builder.body(body.to_vec()).unwrap()
    };

    let signed_in = service
        .clone()
        .oneshot(request(b"", Some(&format!("auth={token}"))))
        .await
        .unwrap()
        .into_body()
        .unwrap();
    assert_eq!(signed_in.user().unwrap().name, "Alice");
    let cached: &Arc<User> = signed_in.user_arc().unwrap();
    let again = service
        .clone()
        .oneshot(request(b"", Some(&format!("auth={token}"))))
        .await
        .unwrap()
        .into_body()
        .unwrap();
    assert!(
        Arc::ptr_eq(cached, again.user_arc().unwrap()),
        "a cache hit shares the user, it does not copy it"
    );

    let anonymous = service.clone().oneshot(request(b"", None)).await.unwrap();
    assert!(anonymous.into_body().unwrap().is_anonymous());

    // The inner error comes back as it was, on the hit path and on the miss path.
    let err = service
        .clone()
        .oneshot(request(b"fail", None))
        .await
        .unwrap_err();
    assert_eq!(err, InnerError("inner failed"));
    let other = mock.token_for(mock.add_user("Bob", "b@example.com"));
    let err = service
        .clone()
        .oneshot(request(b"fail", Some(&format!("auth={other}"))))
        .await
        .unwrap_err();
    assert_eq!(err, InnerError("inner failed"));
}

/// tower's contract: the clone that `poll_ready` readied is the one that gets called.
#[tokio::test]
async fn readiness_is_passed_through() {
    let id6 = Id6::builder("http://127.0.0.1:9").build().unwrap();
    let (inner, mut handle) = tower_test_mock();
    let mut service = Id6Layer::new(id6).layer(inner);
    handle.allow(0);
    let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
    assert!(service.poll_ready(&mut cx).is_pending());
    handle.allow(1);
    service.ready().await.unwrap();
    service.call(http::Request::new(())).await.unwrap();
}

/// A minimal readiness-controlled service, to avoid one more dev-dependency.
fn tower_test_mock() -> (Gate, GateHandle) {
    let permits = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    (Gate(permits.clone()), GateHandle(permits))
}

#[derive(Clone)]
struct Gate(Arc<std::sync::atomic::AtomicUsize>);
struct GateHandle(Arc<std::sync::atomic::AtomicUsize>);

impl GateHandle {
    fn allow(&mut self, n: usize) {
        self.0.store(n, std::sync::atomic::Ordering::SeqCst);
    }
}

impl Service<http::Request<()>> for Gate {
    type Response = http::Response<()>;
    type Error = Infallible;
    type Future = std::future::Ready<Result<http::Response<()>, Infallible>>;

    fn poll_ready(
        &mut self,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Infallible>> {
        if self.0.load(std::sync::atomic::Ordering::SeqCst) > 0 {
            std::task::Poll::Ready(Ok(()))
        } else {
            cx.waker().wake_by_ref();
            std::task::Poll::Pending
        }
    }

    fn call(&mut self, _: http::Request<()>) -> Self::Future {
        std::future::ready(Ok(http::Response::new(())))
    }
}

fn assert_send<T: Send>(_: &T) {}
fn assert_send_sync_clone<T: Send + Sync + Clone + 'static>() {}

/// Every public future is `Send`, every shared type `Send + Sync + Clone`.
#[test]
fn futures_are_send() {
    assert_send_sync_clone::<Id6>();
    assert_send_sync_clone::<Id6Layer>();
    assert_send_sync_clone::<Id6Service<axum::Router>>();
    assert_send_sync_clone::<Authentication>();
    assert_send_sync_clone::<id6_tower::Error>();
    assert_send_sync_clone::<id6_tower::CurrentUser>();
    assert_send_sync_clone::<id6_tower::RequireUser>();

    let id6 = Id6::builder("http://127.0.0.1:9").build().unwrap();
    let headers = http::HeaderMap::new();
    assert_send(&id6.authenticate(&headers));
    let mut service = id6.layer().layer(axum::Router::new());
    let future = Service::call(&mut service, http::Request::new(axum::body::Body::empty()));
    assert_send(&future);
    fn is_future<F: Future>(_: &F) {}
    is_future(&future);
    // The guards: one layer type, its service and its own future.
    assert_send_sync_clone::<id6_tower::guard::GuardLayer>();
    assert_send_sync_clone::<id6_tower::guard::Guard<axum::Router>>();
    let mut guarded = id6.require_user().layer(axum::Router::new());
    let future = Service::call(&mut guarded, http::Request::new(axum::body::Body::empty()));
    assert_send(&future);
    is_future(&future);
    assert_send(&MockId6::start());
}
