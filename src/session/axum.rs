//! axum glue for [`Session`]: the extractor, the SSE helper and (feature `ws`) the
//! WebSocket helper.

use axum::response::sse::Event;
use axum_core::extract::{FromRequestParts, OptionalFromRequestParts};
use futures_util::Stream;
use http::request::Parts;

use super::{Lifeline, Session};
use crate::outcome::{self, Need, Refusal};
use crate::rejection::AuthRejection;

/// The signed-in caller (401 otherwise, as [`RequireUser`](crate::extract::RequireUser)), for
/// a handler whose connection outlives the request. A WebSocket handshake whose cookie came
/// from another site (neither the request's own origin nor a trusted one) is refused with
/// 403 `csrf_rejected`: cross-site WebSocket hijacking.
impl<S: Sync> FromRequestParts<S> for Session {
    type Rejection = AuthRejection;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        let refuse = |refusal| AuthRejection::new(refusal, &parts.uri, &parts.extensions);
        outcome::required(parts.extensions.get()).map_err(refuse)?;
        let lifeline = parts.extensions.get::<Lifeline>();
        let lifeline = lifeline.ok_or_else(|| refuse(Refusal::MissingLayer))?;
        if lifeline.is_cross_site(parts) {
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
        if outcome::answer(parts.extensions.get(), Need::MaybeUser)
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
    /// An SSE stream that sends `event: revoked` (`data:` id6's reason, `token_revoked`)
    /// and ends when the token dies.
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
    use axum::extract::ws::{close_code, CloseFrame, Message, WebSocket};
    use futures_util::future::BoxFuture;
    use futures_util::FutureExt;

    use super::Session;
    use crate::error::TokenRejection;

    impl Session {
        /// `socket`, closed with code 1008 (policy violation) and id6's reason
        /// (`token_revoked`) when the token dies.
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
                closing: None,
            }
        }
    }

    /// A WebSocket that closes itself when its [`Session`]'s token dies.
    ///
    /// For a reader and a writer in two tasks, take [`into_inner`](Self::into_inner), split
    /// the socket, and have each task `select!` on [`Session::ended`]; the one that sees it
    /// sends the close frame (1008 and `why.error_code()`).
    #[cfg_attr(docsrs, doc(cfg(feature = "ws")))]
    pub struct LiveSocket {
        socket: WebSocket,
        /// `None` once the token died.
        ended: Option<BoxFuture<'static, TokenRejection>>,
        /// The close frame to send, until it is sent: a `recv` dropped mid-close (in a
        /// `select!`) leaves it for the next call.
        closing: Option<CloseFrame>,
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
            self.finish_close().await;
            let ended = self.ended.as_mut()?;
            let why = {
                let received = std::pin::pin!(self.socket.recv());
                match futures_util::future::select(received, ended).await {
                    futures_util::future::Either::Left((message, _)) => return message,
                    futures_util::future::Either::Right((why, _)) => why,
                }
            };
            self.begin_close(why);
            self.finish_close().await;
            None
        }

        /// Sends `message`, as [`WebSocket::send`]; an error once the token died (the
        /// socket is closed then).
        pub async fn send(&mut self, message: Message) -> Result<(), axum::Error> {
            if let Some(why) = self.ended.as_mut().and_then(|ended| ended.now_or_never()) {
                self.begin_close(why);
            }
            self.finish_close().await;
            if self.ended.is_none() {
                return Err(axum::Error::new(SessionEnded));
            }
            self.socket.send(message).await
        }

        /// The socket itself, no longer watched.
        pub fn into_inner(self) -> WebSocket {
            self.socket
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

        async fn finish_close(&mut self) {
            if let Some(frame) = self.closing.clone() {
                // The client may be gone already: nothing left to tell it.
                let _ = self.socket.send(Message::Close(Some(frame))).await;
                self.closing = None;
            }
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
