//! `Id6Service`: resolves the caller, then calls the inner service.

use std::task::{Context, Poll};
use std::time::Duration;

use http::{Request, Response};
use tower_service::Service;

use super::{ResponseFuture, Served};
use crate::id6::Id6;
use crate::resolve::Lookup;
use crate::session::Lifeline;
use crate::user::Authentication;

/// Leaves an [`Authentication`](crate::Authentication) in each request's extensions (read
/// with [`Authentication::of`](crate::Authentication::of)), then calls `S`.
///
/// On a cache hit, or without a token, the inner service is called at once and its own
/// future is returned unboxed; only a miss waits on id6 first. With
/// [`clear_dead_cookie`](crate::Id6Builder::clear_dead_cookie), a response to a request whose
/// token id6 rejected gets a `Set-Cookie` that clears it.
///
/// Usually built by [`Id6Layer`](crate::Id6Layer); by hand:
///
/// ```
/// use id6_tower::{Id6, Id6Service};
/// use tower::service_fn;
///
/// # fn run() -> Result<(), id6_tower::Error> {
/// let id6 = Id6::builder("http://127.0.0.1:8000/api").build()?;
/// let inner = service_fn(|_: http::Request<()>| async {
///     Ok::<_, std::convert::Infallible>(http::Response::new(()))
/// });
/// let service = Id6Service::new(inner, id6);
/// # let _ = service;
/// # Ok(())
/// # }
/// ```
#[must_use]
#[derive(Clone, Debug)]
pub struct Id6Service<S> {
    pub(super) inner: S,
    pub(super) id6: Id6,
    /// Set by [`Id6::layer_with_max_age`]: older cached users are asked about again.
    pub(super) max_age: Option<Duration>,
}

impl<S> Id6Service<S> {
    /// Wraps `inner`; usually through [`Id6Layer`](crate::Id6Layer).
    pub fn new(inner: S, id6: Id6) -> Self {
        Id6Service {
            inner,
            id6,
            max_age: None,
        }
    }

    /// The wrapped service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// The wrapped service, mutably.
    pub fn get_mut(&mut self) -> &mut S {
        &mut self.inner
    }

    /// Unwraps the inner service.
    pub fn into_inner(self) -> S {
        self.inner
    }
}

impl<S, B, ResBody> Service<Request<B>> for Id6Service<S>
where
    S: Service<Request<B>, Response = Response<ResBody>> + Clone,
{
    type Response = Response<ResBody>;
    type Error = S::Error;
    type Future = ResponseFuture<S, B>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: Request<B>) -> Self::Future {
        let resolver = self.id6.resolver();
        // Read before the lookup, for a `Session`: an eviction after a hit found its entry
        // then counts as one since the verdict.
        let generation = resolver.generation();
        let lookup = resolver.lookup(request.headers(), Some(request.extensions()), self.max_age);
        match lookup {
            Lookup::NoToken => {
                let served = Served::new(&self.id6, Authentication::Anonymous, None);
                request.extensions_mut().insert(served);
                ResponseFuture::called(&mut self.inner, request, None)
            }
            Lookup::Ready {
                verdict,
                from_cookie,
            } => {
                // A cookie that is anonymous here is dead (negative hit) or malformed.
                let clear = (from_cookie && verdict.is_anonymous())
                    .then(|| self.id6.dead_cookie().cloned())
                    .flatten();
                let lifeline = verdict
                    .user_arc()
                    .map(|_| Lifeline::new(&self.id6, generation));
                let served = Served::new(&self.id6, verdict, lifeline);
                request.extensions_mut().insert(served);
                ResponseFuture::called(&mut self.inner, request, clear)
            }
            Lookup::Pending {
                pending,
                from_cookie,
            } => {
                // `poll_ready` readied `self.inner`, so that instance must make the call;
                // keep a fresh clone for the next `poll_ready`.
                let clone = self.inner.clone();
                let inner = std::mem::replace(&mut self.inner, clone);
                let dead_cookie = self.id6.dead_cookie().filter(|_| from_cookie).cloned();
                let lifeline = Lifeline::new(&self.id6, generation);
                let id6 = self.id6.clone();
                ResponseFuture::resolving(pending, inner, request, dead_cookie, id6, lifeline)
            }
        }
    }
}
