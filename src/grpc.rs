//! tonic glue (feature `tonic`): read the caller in a gRPC method, or reject whole services.
//!
//! The same [`Id6Layer`](crate::Id6Layer) wraps a tonic server:
//! `Server::builder().layer(id6.layer())`. tonic carries the request extensions into
//! `tonic::Request`, so a method reads the caller with [`current_user`] or [`require_user`].
//! [`RequireUserLayer`] rejects every call of the services it wraps unless the caller is
//! signed in, with a proper gRPC trailers-only error.
//!
//! | [`Authentication`] | [`require_user`] / guard | [`current_user`] |
//! |---|---|---|
//! | `Authenticated` | the user | `Some(user)` |
//! | `Anonymous` | `UNAUTHENTICATED` (16) | `None` |
//! | `Unavailable` | `UNAVAILABLE` (14) | `UNAVAILABLE` (14) |
//! | missing layer | `INTERNAL` (13) | `INTERNAL` (13) |
//!
//! ```
//! use id6_tower::grpc::require_user;
//!
//! async fn who_am_i(request: tonic::Request<()>) -> Result<tonic::Response<String>, tonic::Status> {
//!     let user = require_user(&request)?;
//!     Ok(tonic::Response::new(user.name.clone()))
//! }
//! ```

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use http::{Extensions, Request, Response};
use pin_project_lite::pin_project;
use tonic::Status;
use tower_layer::Layer;
use tower_service::Service;

use crate::error::TokenRejection;
use crate::user::Authentication;
use crate::user::User;

/// The caller, if signed in; `UNAVAILABLE` when id6 could not be asked.
///
/// # Errors
///
/// `UNAVAILABLE` (14) when id6 could not be asked, `INTERNAL` (13) without the layer.
///
/// ```
/// use id6_tower::{grpc, Authentication};
///
/// // What the layer leaves in a request, as tonic hands it to a method.
/// let mut request = tonic::Request::new(());
/// request.extensions_mut().insert(Authentication::Anonymous);
/// assert!(grpc::current_user(&request).unwrap().is_none());
/// ```
pub fn current_user<T>(request: &tonic::Request<T>) -> Result<Option<Arc<User>>, Status> {
    verdict(request.extensions()).map(Result::ok)
}

/// The signed-in caller.
///
/// # Errors
///
/// `UNAUTHENTICATED` (16) for an anonymous caller, `UNAVAILABLE` (14) when id6 could not be
/// asked, `INTERNAL` (13) without the layer.
///
/// ```
/// use id6_tower::{grpc, Authentication};
///
/// let mut request = tonic::Request::new(());
/// request.extensions_mut().insert(Authentication::Anonymous);
/// let status = grpc::require_user(&request).unwrap_err();
/// assert_eq!(status.code(), tonic::Code::Unauthenticated);
/// // Without the layer, a loud INTERNAL rather than a silent anonymous.
/// let bare = tonic::Request::new(());
/// assert_eq!(grpc::require_user(&bare).unwrap_err().code(), tonic::Code::Internal);
/// ```
pub fn require_user<T>(request: &tonic::Request<T>) -> Result<Arc<User>, Status> {
    required(request.extensions())
}

/// The user, or why there is none (`None`: no token at all).
fn verdict(extensions: &Extensions) -> Result<Result<Arc<User>, Option<TokenRejection>>, Status> {
    match extensions.get::<Authentication>() {
        Some(Authentication::Authenticated(user)) => Ok(Ok(user.clone())),
        Some(Authentication::Anonymous) => Ok(Err(None)),
        Some(Authentication::Rejected(why)) => Ok(Err(Some(*why))),
        // The detail is for the logs (the layer logged it), not for the caller.
        Some(Authentication::Unavailable(_)) => Err(Status::unavailable(UNAVAILABLE)),
        None => {
            tracing::error!("id6-tower: no Authentication in the request extensions; add `.layer(id6.layer())` to the tonic Server");
            Err(Status::internal(
                "id6-tower: the id6 layer is missing: Server::builder().layer(id6.layer())",
            ))
        }
    }
}

fn required(extensions: &Extensions) -> Result<Arc<User>, Status> {
    verdict(extensions)?.map_err(|why| {
        // id6's words for a refused token, as its HTTP API gives them.
        Status::unauthenticated(why.map_or("You are not authenticated", TokenRejection::message))
    })
}

const UNAVAILABLE: &str = "The authentication service is unavailable, retry later";

/// Rejects every call of the wrapped services unless the caller is signed in; goes inside
/// the [`Id6Layer`](crate::Id6Layer).
///
/// ```
/// use id6_tower::grpc::RequireUserLayer;
/// use tower::Layer;
///
/// fn guard<S>(service: S) -> id6_tower::grpc::RequireUserService<S> {
///     // Then: Server::builder().layer(id6.layer()).add_service(guard(service)); the guarded
///     // service keeps its gRPC name.
///     RequireUserLayer::new().layer(service)
/// }
/// ```
#[must_use]
#[derive(Clone, Copy, Debug, Default)]
pub struct RequireUserLayer;

impl RequireUserLayer {
    /// The guard.
    pub fn new() -> Self {
        RequireUserLayer
    }
}

impl<S> Layer<S> for RequireUserLayer {
    type Service = RequireUserService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        RequireUserService { inner }
    }
}

/// The service of [`RequireUserLayer`].
#[must_use]
#[derive(Clone, Debug)]
pub struct RequireUserService<S> {
    inner: S,
}

impl<S: tonic::server::NamedService> tonic::server::NamedService for RequireUserService<S> {
    const NAME: &'static str = S::NAME;
}

impl<S, B, ResBody> Service<Request<B>> for RequireUserService<S>
where
    S: Service<Request<B>, Response = Response<ResBody>>,
    ResBody: Default,
{
    type Response = Response<ResBody>;
    type Error = S::Error;
    type Future = GuardFuture<S::Future, ResBody>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<B>) -> Self::Future {
        match required(request.extensions()) {
            Ok(_) => GuardFuture {
                state: GuardState::Called {
                    future: self.inner.call(request),
                },
            },
            // A trailers-only answer: HTTP 200 with `grpc-status` in the headers.
            Err(status) => GuardFuture {
                state: GuardState::Rejected {
                    response: Some(status.into_http()),
                },
            },
        }
    }
}

pin_project! {
    /// The future of [`RequireUserService`].
    pub struct GuardFuture<F, ResBody> {
        #[pin]
        state: GuardState<F, ResBody>,
    }
}

pin_project! {
    #[project = GuardProj]
    enum GuardState<F, ResBody> {
        // The caller is signed in: the inner call.
        Called { #[pin] future: F },
        // The caller is not: the gRPC error, ready (taken once).
        Rejected { response: Option<Response<ResBody>> },
    }
}

impl<F, ResBody> std::fmt::Debug for GuardFuture<F, ResBody> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GuardFuture").finish_non_exhaustive()
    }
}

impl<F, ResBody, E> Future for GuardFuture<F, ResBody>
where
    F: Future<Output = Result<Response<ResBody>, E>>,
{
    type Output = Result<Response<ResBody>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project().state.project() {
            GuardProj::Called { future } => future.poll(cx),
            GuardProj::Rejected { response } => match response.take() {
                Some(response) => Poll::Ready(Ok(response)),
                None => Poll::Pending,
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::{Error, Kind};
    use tonic::Code;

    fn request(verdict: Option<Authentication>) -> tonic::Request<()> {
        let mut request = tonic::Request::new(());
        if let Some(v) = verdict {
            request.extensions_mut().insert(v);
        }
        request
    }

    /// The guard answers as gRPC does: HTTP 200, `grpc-status` in the headers, no body.
    #[tokio::test]
    async fn the_guard_answers_trailers_only() {
        use tower_service::Service as _;
        let inner = tower::service_fn(|_: Request<()>| async {
            Ok::<_, std::convert::Infallible>(Response::new(String::from("called")))
        });
        let mut guard = RequireUserLayer::new().layer(inner);
        let with = |verdict: Option<Authentication>| {
            let mut request = Request::new(());
            if let Some(v) = verdict {
                request.extensions_mut().insert(v);
            }
            request
        };
        let alice = Authentication::Authenticated(Arc::new(User::new(1, "Alice")));
        assert_eq!(
            guard.call(with(Some(alice))).await.unwrap().into_body(),
            "called"
        );
        for (verdict, code) in [
            (Some(Authentication::Anonymous), "16"),
            (
                Some(Authentication::Unavailable(Error::new(Kind::Connect))),
                "14",
            ),
            (None, "13"),
        ] {
            let response = guard.call(with(verdict)).await.unwrap();
            assert_eq!(response.status(), http::StatusCode::OK);
            assert_eq!(response.headers()["grpc-status"], code);
            assert_eq!(response.headers()["content-type"], "application/grpc");
            assert_eq!(response.into_body(), "");
        }
    }

    #[test]
    fn verdicts_map_to_grpc_codes() {
        let alice = Authentication::Authenticated(Arc::new(User::new(1, "Alice")));
        assert_eq!(require_user(&request(Some(alice.clone()))).unwrap().id, 1);
        assert_eq!(current_user(&request(Some(alice))).unwrap().unwrap().id, 1);
        let anon = Some(Authentication::Anonymous);
        assert_eq!(
            require_user(&request(anon.clone())).unwrap_err().code(),
            Code::Unauthenticated
        );
        assert!(current_user(&request(anon)).unwrap().is_none());
        let down = Some(Authentication::Unavailable(Error::new(Kind::Timeout)));
        assert_eq!(
            require_user(&request(down.clone())).unwrap_err().code(),
            Code::Unavailable
        );
        assert_eq!(
            current_user(&request(down)).unwrap_err().code(),
            Code::Unavailable
        );
        assert_eq!(
            require_user(&request(None)).unwrap_err().code(),
            Code::Internal
        );
    }
}
