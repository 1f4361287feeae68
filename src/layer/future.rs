//! `ResponseFuture`: the inner service's future, preceded on a cache miss by the wait on id6.

use std::future::Future;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use http::header::SET_COOKIE;
use http::{HeaderValue, Request, Response};
use pin_project_lite::pin_project;
use tower_service::Service;

use super::Served;
use crate::id6::Id6;
use crate::rejection::{self, Kept};
use crate::resolve::Pending;
use crate::session::Lifeline;

pin_project! {
    /// The future of [`Id6Service`](super::Id6Service). `Send` whenever the inner service,
    /// its future and the request body are.
    pub struct ResponseFuture<S, B>
    where
        S: Service<Request<B>>,
    {
        #[pin]
        state: State<S, B>,
    }
}

pin_project! {
    #[project = StateProj]
    enum State<S, B>
    where
        S: Service<Request<B>>,
    {
        Resolving {
            pending: Pending,
            // Both `Option`s are taken exactly once, when `pending` completes.
            inner: Option<S>,
            request: Option<Request<B>>,
            // Appended if the verdict says the token is dead (when enabled).
            dead_cookie: Option<HeaderValue>,
            // Taken once too; kept beside a user, for a `Session`.
            lifeline: Option<Lifeline>,
            // Whose settings the verdict is served with.
            id6: Id6,
        },
        Called {
            #[pin]
            future: S::Future,
            // Boxed: rare, and the future stays small (it is moved whole).
            clear_cookie: Option<Box<HeaderValue>>,
            // The request's URI, for an `Error` answered as a response.
            kept: Kept,
        },
    }
}

impl<S, B> ResponseFuture<S, B>
where
    S: Service<Request<B>>,
{
    /// Calls `inner` with `request` at once.
    pub(crate) fn called(
        inner: &mut S,
        request: Request<B>,
        clear_cookie: Option<HeaderValue>,
    ) -> Self {
        ResponseFuture {
            state: State::Called {
                kept: rejection::keep(&request),
                future: inner.call(request),
                clear_cookie: clear_cookie.map(Box::new),
            },
        }
    }

    pub(crate) fn resolving(
        pending: Pending,
        inner: S,
        request: Request<B>,
        dead_cookie: Option<HeaderValue>,
        id6: Id6,
        lifeline: Lifeline,
    ) -> Self {
        ResponseFuture {
            state: State::Resolving {
                pending,
                inner: Some(inner),
                request: Some(request),
                dead_cookie,
                lifeline: Some(lifeline),
                id6,
            },
        }
    }
}

impl<S, B, ResBody> Future for ResponseFuture<S, B>
where
    S: Service<Request<B>, Response = Response<ResBody>>,
{
    type Output = Result<Response<ResBody>, S::Error>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut state = self.project().state;
        loop {
            match state.as_mut().project() {
                StateProj::Called {
                    future,
                    clear_cookie,
                    kept,
                } => {
                    let mut response = ready!(future.poll(cx))?;
                    rejection::name_path(&mut response, kept);
                    if let Some(cookie) = clear_cookie.take() {
                        response.headers_mut().append(SET_COOKIE, *cookie);
                    }
                    return Poll::Ready(Ok(response));
                }
                StateProj::Resolving {
                    pending,
                    inner,
                    request,
                    dead_cookie,
                    lifeline,
                    id6,
                } => {
                    let answer = ready!(Pin::new(pending).poll(cx));
                    let (Some(mut inner), Some(mut request), Some(lifeline)) =
                        (inner.take(), request.take(), lifeline.take())
                    else {
                        unreachable!("ResponseFuture polled after it was resolved");
                    };
                    // Only id6's own rejection kills the cookie, never the failure policy's
                    // anonymous answer during an outage.
                    let clear_cookie = dead_cookie
                        .take()
                        .filter(|_| !answer.by_policy && answer.verdict.is_anonymous())
                        .map(Box::new);
                    // `lifeline` was taken when the request arrived.
                    let served = Served::new(id6, answer.verdict, Some(lifeline));
                    request.extensions_mut().insert(served);
                    let kept = rejection::keep(&request);
                    state.set(State::Called {
                        future: inner.call(request),
                        clear_cookie,
                        kept,
                    });
                }
            }
        }
    }
}

impl<S, B> std::fmt::Debug for ResponseFuture<S, B>
where
    S: Service<Request<B>>,
{
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ResponseFuture").finish_non_exhaustive()
    }
}
