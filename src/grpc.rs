//! tonic glue (feature `tonic`): read the caller in a gRPC method, or reject whole services.
//!
//! The same [`Id6Layer`](crate::Id6Layer) wraps a tonic server:
//! `Server::builder().layer(id6.layer())`. tonic carries the request extensions into
//! `tonic::Request`, so a method reads the caller with [`current_user`] or [`require_user`].
//! A guard answering gRPC's way, [`id6.require_user().grpc()`](GuardLayer::grpc), rejects
//! every call of the services it wraps unless the caller is signed in, with a proper gRPC
//! trailers-only error.
//!
//! | [`Authentication`] | [`require_user`] / guard | [`current_user`] |
//! |---|---|---|
//! | `Authenticated` | the user | `Some(user)` |
//! | `Authenticated`, refused by `require_user_where(..).grpc()` | `PERMISSION_DENIED` (7) | — |
//! | `Anonymous` | `UNAUTHENTICATED` (16) | `None` |
//! | `Rejected` (id6 refused the token) | `UNAUTHENTICATED` (16), id6's words (`Token revoked`...) | `None` |
//! | `Unavailable` | `UNAVAILABLE` (14) | `UNAVAILABLE` (14) |
//! | missing layer (the fix in an error log, `Internal error` to the client) | `INTERNAL` (13) | `INTERNAL` (13) |
//!
//! `csrf().grpc()` answers `PERMISSION_DENIED` (7) too. For a server stream that ends when the
//! caller's token dies, take the caller's [`session`] and wrap the stream in
//! [`Session::grpc_stream`].
//!
//! ```
//! use id6_tower::grpc::require_user;
//!
//! async fn who_am_i(request: tonic::Request<()>) -> Result<tonic::Response<String>, tonic::Status> {
//!     let user = require_user(&request)?;
//!     Ok(tonic::Response::new(user.name.clone()))
//! }
//! ```

use std::sync::Arc;
use std::task::{Context, Poll};

use http::{Request, Response};
use tonic::Status;
use tower_service::Service;

use crate::guard::{Guard, GuardFuture, GuardLayer, Http};
use crate::outcome::{self, Need, Refusal, UNAVAILABLE};
use crate::session::Session;
use crate::user::{Authentication, User};

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
    outcome::answer(Authentication::of(request.extensions()), Need::MaybeUser)
        .map(Option::<&Arc<User>>::cloned)
        .map_err(status)
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
    outcome::required(Authentication::of(request.extensions()))
        .cloned()
        .map_err(status)
}

/// The signed-in caller's [`Session`], for a server stream that ends when their token dies
/// ([`Session::grpc_stream`]).
///
/// # Errors
///
/// As [`require_user`].
pub fn session<T>(request: &tonic::Request<T>) -> Result<Session, Status> {
    require_user(request)?;
    Session::of(request.metadata().as_ref(), request.extensions())
        .ok_or_else(|| status(Refusal::MissingLayer))
}

/// The crate's one answer to a refusal, as a gRPC status: id6's words for a refused token,
/// no detail for an unavailable id6 (the layer logged it), a loud `INTERNAL` for a missing
/// layer (an error log naming the fix; the client, as over HTTP, learns nothing internal).
fn status(refusal: Refusal<'_>) -> Status {
    match refusal {
        Refusal::NotAuthenticated | Refusal::DeadToken(_) => {
            Status::unauthenticated(refusal.message())
        }
        Refusal::Forbidden | Refusal::CsrfRejected => Status::permission_denied(refusal.message()),
        Refusal::Id6Unavailable(_) => Status::unavailable(UNAVAILABLE),
        Refusal::MissingLayer => {
            tracing::error!("{MISSING_LAYER}");
            Status::internal(refusal.message())
        }
    }
}

/// What the error log says when a tonic request reached a helper or guard without the layer.
const MISSING_LAYER: &str = "id6-tower: no Authentication in the request extensions: the \
     request reached `grpc::require_user`, `grpc::current_user`, `grpc::session` or a \
     `.grpc()` guard without passing through `id6.layer()`. Add it to the tonic Server \
     (`Server::builder().layer(id6.layer())`); if it is there already, put the guard inside \
     it, on the service: `add_service(id6.require_user().grpc().layer(service))`";

/// How a [`GuardLayer`] answers a refusal to a gRPC client: a trailers-only error (HTTP 200
/// with `grpc-status`), `UNAUTHENTICATED` (16), `PERMISSION_DENIED` (7), `UNAVAILABLE` (14)
/// or `INTERNAL` (13). Made by [`GuardLayer::grpc`].
#[derive(Clone, Copy, Debug, Default)]
pub struct Grpc;

impl GuardLayer<Http> {
    /// The same guard, answering gRPC's way: it rejects every call of the services it wraps
    /// with a trailers-only gRPC error, never an HTTP 401 (feature `tonic`). The guarded
    /// service keeps its gRPC name; the guard goes inside the [`Id6Layer`](crate::Id6Layer).
    ///
    /// ```
    /// use id6_tower::guard::Guard;
    /// use id6_tower::grpc::Grpc;
    /// use tower::Layer;
    ///
    /// fn guard<S>(id6: &id6_tower::Id6, service: S) -> Guard<S, Grpc> {
    ///     // Then: Server::builder().layer(id6.layer()).add_service(guard(&id6, service)).
    ///     id6.require_user().grpc().layer(service)
    /// }
    /// ```
    #[cfg_attr(docsrs, doc(cfg(feature = "tonic")))]
    pub fn grpc(self) -> GuardLayer<Grpc> {
        self.answering()
    }
}

impl<S: tonic::server::NamedService> tonic::server::NamedService for Guard<S, Grpc> {
    const NAME: &'static str = S::NAME;
}

impl<S, B, ResBody> Service<Request<B>> for Guard<S, Grpc>
where
    S: Service<Request<B>, Response = Response<ResBody>>,
    ResBody: Default,
{
    type Response = Response<ResBody>;
    type Error = S::Error;
    type Future = GuardFuture<S::Future, ResBody>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.poll_inner(cx)
    }

    fn call(&mut self, request: Request<B>) -> Self::Future {
        // A trailers-only answer: HTTP 200 with `grpc-status` in the headers.
        self.guard(request, |_, refusal, _| status(refusal).into_http())
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
        use tower_layer::Layer as _;
        let inner = tower::service_fn(|_: Request<()>| async {
            Ok::<_, std::convert::Infallible>(Response::new(String::from("called")))
        });
        let id6 = crate::id6::Id6::builder("http://127.0.0.1:9")
            .build()
            .unwrap();
        let mut guard = id6.require_user().grpc().layer(inner);
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
