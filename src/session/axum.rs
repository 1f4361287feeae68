//! axum glue for [`Session`]: the extractor, the SSE helper and (feature `ws`) the
//! WebSocket helper.

use axum::response::sse::Event;
use axum_core::extract::{FromRequestParts, OptionalFromRequestParts};
use futures_util::Stream;
use http::request::Parts;

use super::Lifeline;
use super::Session;
use crate::outcome::{self, Need, Refusal};
use crate::rejection::AuthRejection;
use crate::user::Authentication;

/// The signed-in caller (401 otherwise, as [`RequireUser`](crate::extract::RequireUser)), for
/// a handler whose connection outlives the request. A WebSocket handshake (or a write:
/// `POST`, `PUT`...) whose cookie came from another site is refused with 403 `csrf_rejected`
/// by the same check as [`Id6::csrf`](crate::Id6::csrf)'s: cross-site WebSocket hijacking.
impl<S: Sync> FromRequestParts<S> for Session {
    type Rejection = AuthRejection;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        let refuse = |refusal| AuthRejection::new(refusal, &parts.uri, &parts.extensions);
        outcome::required(Authentication::of(&parts.extensions)).map_err(refuse)?;
        let (lifeline, _) = Lifeline::left_by_layer(&parts.extensions)
            .ok_or_else(|| refuse(Refusal::MissingLayer))?;
        if lifeline.is_cross_site(&parts.method, &parts.uri, &parts.headers) {
            return Err(refuse(Refusal::CsrfRejected));
        }
        Session::of(&parts.headers, &parts.extensions).ok_or_else(|| refuse(Refusal::MissingLayer))
    }
}

/// `None` for an anonymous caller (no token, a dead one); the other refusals as `Session`'s.
impl<S: Sync> OptionalFromRequestParts<S> for Session {
    type Rejection = AuthRejection;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &S,
    ) -> Result<Option<Self>, Self::Rejection> {
        let refuse = |refusal| AuthRejection::new(refusal, &parts.uri, &parts.extensions);
        if outcome::answer(Authentication::of(&parts.extensions), Need::MaybeUser)
            .map_err(refuse)?
            .is_none()
        {
            return Ok(None);
        }
        <Session as FromRequestParts<S>>::from_request_parts(parts, state)
            .await
            .map(Some)
    }
}

impl Session {
    /// An SSE stream that sends `event: revoked` (`data:` why: `signed_out` after a
    /// sign-out, else id6's reason, `token_revoked`...) and ends when the token dies.
    ///
    /// ```
    /// use axum::response::sse::{Event, Sse};
    /// use futures_util::stream::{self, Stream, StreamExt};
    /// use id6_tower::Session;
    /// use std::convert::Infallible;
    ///
    /// async fn events(session: Session) -> Sse<impl Stream<Item = Result<Event, Infallible>>> {
    ///     let hello = Event::default().data(format!("hello, {}", session.user().name));
    ///     let events = stream::iter([Ok::<_, Infallible>(hello)]).chain(stream::pending());
    ///     Sse::new(session.sse(events))
    /// }
    /// # let _ = axum::Router::<()>::new().route("/events", axum::routing::get(events));
    /// ```
    #[cfg_attr(docsrs, doc(cfg(feature = "axum")))]
    pub fn sse<S, E>(&self, events: S) -> impl Stream<Item = Result<Event, E>> + Send + 'static
    where
        S: Stream<Item = Result<Event, E>> + Send + 'static,
    {
        self.until_ended(events, |why| {
            Some(Ok(Event::default().event("revoked").data(why.error_code())))
        })
    }
}

#[cfg(feature = "ws")]
pub use ws::LiveSocket;

#[cfg(feature = "ws")]
mod ws {
    use std::pin::Pin;
    use std::task::{ready, Context, Poll};

    use axum::extract::ws::{close_code, CloseFrame, Message, WebSocket};
    use futures_util::future::BoxFuture;
    use futures_util::{FutureExt, Sink, SinkExt, Stream, StreamExt};

    use super::Session;
    use crate::error::TokenRejection;

    impl Session {
        /// `socket`, closed with code 1008 (policy violation) and id6's reason
        /// when the token dies: `signed_out` after a sign-out, else id6's reason
        /// (`token_revoked`...).
        ///
        /// ```
        /// use axum::extract::ws::{Message, WebSocketUpgrade};
        /// use axum::response::Response;
        /// use id6_tower::Session;
        ///
        /// async fn echo(session: Session, upgrade: WebSocketUpgrade) -> Response {
        ///     upgrade.on_upgrade(move |socket| async move {
        ///         let mut socket = session.websocket(socket);
        ///         // `None` once the client left or the token died (the socket is closed).
        ///         while let Some(Ok(message)) = socket.recv().await {
        ///             if socket.send(message).await.is_err() {
        ///                 break;
        ///             }
        ///         }
        ///     })
        /// }
        /// # let _ = axum::Router::<()>::new().route("/ws", axum::routing::get(echo));
        /// ```
        #[cfg_attr(docsrs, doc(cfg(feature = "ws")))]
        pub fn websocket(&self, socket: WebSocket) -> LiveSocket {
            LiveSocket {
                socket,
                ended: Some(self.ended().boxed()),
                session: self.clone(),
                closing: None,
                flushing: false,
            }
        }
    }

    /// A WebSocket that closes itself when its [`Session`]'s token dies: a `Stream` of
    /// messages and a `Sink` for them, as axum's [`WebSocket`] (so `split` gives a reader and
    /// a writer for two tasks; whichever polls first after the token died sends the close
    /// frame, 1008 and id6's reason).
    #[cfg_attr(docsrs, doc(cfg(feature = "ws")))]
    pub struct LiveSocket {
        socket: WebSocket,
        /// `None` once the token died. Polled by the reading side only: a future wakes
        /// the last task that polled it, and the reader is the one waiting.
        ended: Option<BoxFuture<'static, TokenRejection>>,
        /// For the writing side, which looks without waiting.
        session: Session,
        /// The close frame to send, until it is handed to the socket: a `recv` dropped
        /// mid-close (in a `select!`) leaves it for the next poll.
        closing: Option<CloseFrame>,
        /// The close frame was handed over; flushing it is left.
        flushing: bool,
    }

    impl std::fmt::Debug for LiveSocket {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.debug_struct("LiveSocket")
                .field("ended", &self.ended.is_none())
                .finish_non_exhaustive()
        }
    }

    impl LiveSocket {
        /// The next message, as [`WebSocket::recv`]; `None` when the client left, or when the
        /// token died (the socket was closed with 1008 and id6's reason).
        ///
        /// Cancel-safe: a `recv` dropped in a `select!` loses no message, and a close it
        /// had begun is finished by the next call.
        pub async fn recv(&mut self) -> Option<Result<Message, axum::Error>> {
            self.next().await
        }

        /// Sends `message`, as [`WebSocket::send`]; an error once the token died (the
        /// socket is closed then).
        pub async fn send(&mut self, message: Message) -> Result<(), axum::Error> {
            SinkExt::send(self, message).await
        }

        /// The socket itself, no longer watched.
        pub fn into_inner(self) -> WebSocket {
            self.socket
        }

        /// Whether the token died, for the reading side (polling its end, so that a wake-up
        /// is registered).
        fn poll_ended(&mut self, cx: &mut Context<'_>) -> bool {
            if let Some(ended) = &mut self.ended {
                if let Poll::Ready(why) = ended.poll_unpin(cx) {
                    self.begin_close(why);
                }
            }
            self.ended.is_none()
        }

        /// Whether the token died, for the writing side (a look, no wake-up taken from the
        /// reader).
        fn looks_ended(&mut self) -> bool {
            if self.ended.is_some() {
                if let Some(why) = self.session.end_reason() {
                    self.begin_close(why);
                }
            }
            self.ended.is_none()
        }

        fn begin_close(&mut self, why: TokenRejection) {
            self.ended = None;
            tracing::debug!(
                reason = why.error_code(),
                "token died; closing its WebSocket"
            );
            self.closing = Some(CloseFrame {
                code: close_code::POLICY,
                reason: why.error_code().into(),
            });
        }

        /// Sends the close frame, if one is due. The client may be gone already: nothing
        /// left to tell it then, and no error to report.
        fn poll_close_frame(&mut self, cx: &mut Context<'_>) -> Poll<()> {
            if self.closing.is_some() {
                if ready!(self.socket.poll_ready_unpin(cx)).is_err() {
                    self.closing = None;
                    return Poll::Ready(());
                }
                if let Some(frame) = self.closing.take() {
                    self.flushing = self
                        .socket
                        .start_send_unpin(Message::Close(Some(frame)))
                        .is_ok();
                }
            }
            if self.flushing {
                let _ = ready!(self.socket.poll_flush_unpin(cx));
                self.flushing = false;
            }
            Poll::Ready(())
        }
    }

    impl Stream for LiveSocket {
        type Item = Result<Message, axum::Error>;

        fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
            let this = self.get_mut();
            if this.poll_ended(cx) {
                ready!(this.poll_close_frame(cx));
                return Poll::Ready(None);
            }
            this.socket.poll_next_unpin(cx)
        }
    }

    impl Sink<Message> for LiveSocket {
        type Error = axum::Error;

        fn poll_ready(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
            let this = self.get_mut();
            if this.looks_ended() {
                ready!(this.poll_close_frame(cx));
                return Poll::Ready(Err(axum::Error::new(SessionEnded)));
            }
            this.socket.poll_ready_unpin(cx)
        }

        fn start_send(self: Pin<&mut Self>, message: Message) -> Result<(), Self::Error> {
            let this = self.get_mut();
            if this.ended.is_none() {
                return Err(axum::Error::new(SessionEnded));
            }
            this.socket.start_send_unpin(message)
        }

        fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
            let this = self.get_mut();
            ready!(this.poll_close_frame(cx));
            this.socket.poll_flush_unpin(cx)
        }

        fn poll_close(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
            let this = self.get_mut();
            ready!(this.poll_close_frame(cx));
            this.socket.poll_close_unpin(cx)
        }
    }

    /// The error of a send after the token died.
    #[derive(Debug)]
    struct SessionEnded;

    impl std::fmt::Display for SessionEnded {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("the session's token died; the socket is closed")
        }
    }

    impl std::error::Error for SessionEnded {}
}
