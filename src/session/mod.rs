//! Connections that end when their token dies: [`Session`].
//!
//! A WebSocket, an SSE stream or a gRPC server stream is checked once, when it opens; after
//! a sign-out it would stay open for as long as it likes. A [`Session`] hands the connection
//! the token's life instead: it ends at once when the token alone is evicted (a sign-out,
//! `invalidate_token`, a typed call id6 refused; here or, through Redis, on another
//! instance), and when id6 refuses the token at a recheck: right after a user's eviction
//! (`disconnect`), or a tenth of the TTL before its cached answer expires. One check per
//! token however many connections share it, through the cache; a watching connection costs
//! bytes, not a task or a timer.
//!
//! The helpers end a connection as its protocol expects, saying why ([`Session::ended`]:
//! `signed_out` after a sign-out, else id6's reason, `token_revoked`...): a WebSocket
//! closes with code 1008 and that reason ([`Session::websocket`], feature `ws`), an SSE
//! stream sends
//! `event: revoked` and ends ([`Session::sse`], feature `axum`), a gRPC server stream ends
//! with `unauthenticated` ([`Session::grpc_stream`], feature `tonic`); any other stream
//! ends through [`Session::until_ended`].

#[cfg(feature = "axum")]
mod axum;
#[cfg(feature = "ws")]
pub use self::axum::LiveSocket;

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use futures_util::future::BoxFuture;
use futures_util::{FutureExt, Stream};
use http::{Extensions, HeaderMap};

use crate::error::TokenRejection;
use crate::id6::{Id6, Reach};
use crate::resolve::Watcher;
use crate::user::User;

/// What the layer leaves in a signed-in request, for [`Session::of`]: what a session
/// needs of the handle (its resolver, which watches tokens; not the handle itself, whose
/// reference count every core would write), and where the cache stood when it answered (an
/// eviction since then ends the session as if it had been watched already).
#[derive(Clone)]
pub(crate) struct Lifeline {
    reach: Arc<Reach>,
    generation: u64,
}

impl Lifeline {
    /// For a verdict `id6` gave a request that arrived when its cache stood at `generation`
    /// (read before the lookup: an eviction after it, and so any eviction after a hit,
    /// reaches the session).
    #[inline]
    pub(crate) fn new(id6: &Id6, generation: u64) -> Self {
        Lifeline {
            generation,
            reach: id6.reach(),
        }
    }

    /// Whether the request's cookie may have come from another site (see
    /// [`Id6::is_cross_site`]).
    #[cfg(feature = "axum")]
    pub(crate) fn is_cross_site(
        &self,
        method: &http::Method,
        uri: &http::Uri,
        headers: &HeaderMap,
    ) -> bool {
        self.reach.is_cross_site(method, uri, headers)
    }
}

/// A signed-in caller whose connection outlives its request: the user, and a watch on the
/// life of the token that signed the request in. Cheap to clone; the token is forgotten
/// when the last clone of every session on it is dropped.
///
/// An axum extractor (feature `axum`): 401 for an anonymous caller, as
/// [`RequireUser`](crate::extract::RequireUser); `Option<Session>` gives `None` instead; a
/// WebSocket handshake or a write (`POST`, `PUT`...) carrying the cookie from another site
/// gets 403 `csrf_rejected`, as [`Id6::csrf`](crate::id6::Id6::csrf) would answer it.
/// Elsewhere, [`Session::of`] (any tower stack) or `grpc::session` (tonic).
///
/// ```
/// use axum::response::sse::{Event, Sse};
/// use futures_util::stream::{self, Stream, StreamExt};
/// use id6_tower::Session;
/// use std::convert::Infallible;
///
/// // Ticks for as long as the caller's token lives; `event: revoked` and the end after.
/// async fn ticks(session: Session) -> Sse<impl Stream<Item = Result<Event, Infallible>>> {
///     let ticks = stream::repeat_with(|| Ok(Event::default().data("tick")))
///         .then(|tick| async { tokio::time::sleep(std::time::Duration::from_secs(1)).await; tick });
///     Sse::new(session.sse(ticks))
/// }
/// # let _ = axum::Router::<()>::new().route("/ticks", axum::routing::get(ticks));
/// ```
#[derive(Clone, Debug)]
pub struct Session {
    user: Arc<User>,
    watcher: Arc<Watcher>,
}

impl Session {
    /// The session of a request that passed the [`Id6Layer`](crate::layer::Id6Layer):
    /// `None` unless id6 said who is calling. It checks no origin: serve WebSocket routes
    /// behind [`Id6::csrf`](crate::id6::Id6::csrf), which refuses a cross-site handshake
    /// carrying the cookie (the axum extractor does both).
    pub fn of(headers: &HeaderMap, extensions: &Extensions) -> Option<Session> {
        let (lifeline, user) = Lifeline::left_by_layer(extensions)?;
        let user = user.clone();
        let resolver = lifeline.reach.resolver();
        let watcher = resolver.watch(headers, user.id, lifeline.generation)?;
        Some(Session {
            user,
            watcher: Arc::new(watcher),
        })
    }

    /// Who is calling.
    pub fn user(&self) -> &Arc<User> {
        &self.user
    }

    /// Resolves when the token stops being good, with why: `SignedOut` after
    /// [`sign_out`](crate::Id6::sign_out) (on this instance or, through Redis, another one,
    /// also between the layer's answer and this session; id6 still accepts the token: the
    /// app let go of it); id6's reason when id6 refused it (`TokenRevoked` after a
    /// `disconnect`); `TokenRevoked` too for a token evicted by itself with no reason given
    /// (`invalidate_token`). Never resolves while the token lives.
    pub fn ended(&self) -> impl Future<Output = TokenRejection> + Send + 'static {
        let watcher = self.watcher.clone();
        async move { watcher.ended().await }
    }

    /// Why the token stopped being good, if it has.
    pub fn end_reason(&self) -> Option<TokenRejection> {
        self.watcher.ending()
    }

    /// `stream` until the token dies; then `last` (given id6's reason) as its final item,
    /// if any, and the end.
    pub fn until_ended<S, F>(
        &self,
        stream: S,
        last: F,
    ) -> impl Stream<Item = S::Item> + Send + 'static
    where
        S: Stream + Send + 'static,
        F: FnOnce(TokenRejection) -> Option<S::Item> + Send + 'static,
    {
        UntilEnded {
            stream: Box::pin(stream),
            ended: Some(self.ended().boxed()),
            last: Some(last),
        }
    }

    /// A gRPC server stream that ends with `unauthenticated` when the token dies, with the
    /// message `grpc::require_user` gives for such a token (`Token revoked`...), or
    /// `Signed out`.
    #[cfg(feature = "tonic")]
    #[cfg_attr(docsrs, doc(cfg(feature = "tonic")))]
    pub fn grpc_stream<S, T>(
        &self,
        stream: S,
    ) -> impl Stream<Item = Result<T, tonic::Status>> + Send + 'static
    where
        S: Stream<Item = Result<T, tonic::Status>> + Send + 'static,
    {
        self.until_ended(stream, |why| {
            Some(Err(tonic::Status::unauthenticated(why.message())))
        })
    }
}

struct UntilEnded<S: Stream, F> {
    stream: Pin<Box<S>>,
    /// `None` once the token died (the stream is over).
    ended: Option<BoxFuture<'static, TokenRejection>>,
    last: Option<F>,
}

impl<S: Stream, F> Unpin for UntilEnded<S, F> {}

impl<S, F> Stream for UntilEnded<S, F>
where
    S: Stream,
    F: FnOnce(TokenRejection) -> Option<S::Item>,
{
    type Item = S::Item;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<S::Item>> {
        let this = &mut *self;
        let Some(ended) = &mut this.ended else {
            return Poll::Ready(None);
        };
        if let Poll::Ready(why) = ended.poll_unpin(cx) {
            this.ended = None;
            tracing::debug!(reason = why.error_code(), "token died; ending its stream");
            return Poll::Ready(this.last.take().and_then(|last| last(why)));
        }
        let next = this.stream.as_mut().poll_next(cx);
        if let Poll::Ready(None) = next {
            this.ended = None;
        }
        next
    }
}
