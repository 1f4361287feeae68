//! `Id6Service`: resolves the caller, then calls the inner service.

use std::task::{Context, Poll};

use http::Request;
use tower_service::Service;

use super::ResponseFuture;
use crate::id6::Lookup;
use crate::Id6;

/// Inserts an [`Authentication`](crate::Authentication) into each request, then calls `S`.
///
/// On a cache hit, or without a token, the inner service is called at once and its own
/// future is returned unboxed; only a miss waits on id6 first.
#[must_use]
#[derive(Clone, Debug)]
pub struct Id6Service<S> {
    inner: S,
    id6: Id6,
}

impl<S> Id6Service<S> {
    /// Wraps `inner`; usually through [`Id6Layer`](crate::Id6Layer).
    pub fn new(inner: S, id6: Id6) -> Self {
        Id6Service { inner, id6 }
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

impl<S, B> Service<Request<B>> for Id6Service<S>
where
    S: Service<Request<B>> + Clone,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = ResponseFuture<S, B>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: Request<B>) -> Self::Future {
        match self.id6.lookup(request.headers()) {
            Lookup::Ready(verdict) => {
                request.extensions_mut().insert(verdict);
                ResponseFuture::called(self.inner.call(request))
            }
            Lookup::Pending(pending) => {
                // `poll_ready` readied `self.inner`, so that instance must make the call;
                // keep a fresh clone for the next `poll_ready`.
                let clone = self.inner.clone();
                let inner = std::mem::replace(&mut self.inner, clone);
                ResponseFuture::resolving(pending, inner, request)
            }
        }
    }
}
