//! A test kit: [`MockId6`], an id6 look-alike HTTP server on `127.0.0.1:0` (feature `testing`).
//!
//! It follows the real server's observed behaviour, not this crate's client: it mints HS256
//! JWTs `{userId, issuedAt, iat}` for the users you seed, answers `GET /user` with `null`
//! without a cookie, with the user's JSON for a good token, and with `401` plus a clearing
//! `Set-Cookie` and id6's `errorCode` (`invalid_token`, `token_expired`, `user_not_found`,
//! `token_revoked`) for a bad one, on every route. It serves the rest of the Authentication
//! API (`POST /user/profile` with id6's validation, `POST`/`GET /user/picture`,
//! `GET /user/disconnect` with millisecond revocation, `POST /auth/signout`) and, on a second
//! port, the authorization server (`POST /authorize` with its secret and its own user shape).
//! It can rate-limit like id6 ([`MockId6Builder::rate_limit`]), count the calls it receives,
//! misbehave ([`Fault`]), hold answers in flight ([`MockId6::hold_user_answers`]) or go away
//! ([`MockId6::shutdown`]).
//!
//! It shares no code with the client side of the crate (no `User`, no token finder, no
//! serde types): it writes id6's JSON and headers by hand, so a mistake in the client cannot
//! be mirrored here and pass unnoticed.
//!
//! ```
//! use id6_tower::testing::MockId6;
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let mock = MockId6::start().await?;
//! let alice = mock.add_user("Alice", "alice@example.com");
//! let token = mock.token_for(alice);
//!
//! let id6 = id6_tower::Id6::builder(mock.url()).build()?;
//! let mut headers = http::HeaderMap::new();
//! headers.insert(http::header::COOKIE, format!("auth={token}").parse()?);
//! let who = id6.authenticate(&headers).await;
//! assert_eq!(who.user().map(|u| u.name.as_str()), Some("Alice"));
//! assert_eq!(mock.user_calls(), 1);
//! # Ok(())
//! # }
//! ```

mod mock;
mod routes;
mod server;
mod state;

pub use mock::{MockId6, MockId6Builder};
pub use state::{Fault, RecordedRequest};

/// Moves `id6`'s clock forward by `by`, as if that much time had passed: cached answers age
/// (TTLs, the negative TTL, the stale window, refresh-ahead, `max_age`) and the breaker's
/// pause after a 429 or failures ends sooner, so a test of expiry or back-off need not sleep. id6's clock, the wall clock in
/// `Retry-After` and Redis's expiries are not moved (with Redis, a locally expired answer
/// may come back from it with its real age).
///
/// ```
/// # async fn run() -> Result<(), Box<dyn std::error::Error>> {
/// use std::time::Duration;
/// use id6_tower::testing::{advance_clock, MockId6};
/// use id6_tower::{Id6, UserToken};
///
/// let mock = MockId6::start().await?;
/// let alice = mock.add_user("Alice", "alice@example.com");
/// let token = UserToken::new(&mock.token_for(alice)).unwrap();
/// let id6 = Id6::builder(mock.url()).build()?; // answers cached for 60 s
/// let mut headers = http::HeaderMap::new();
/// headers.insert("cookie", format!("auth={}", token.expose()).parse()?);
/// id6.authenticate(&headers).await;
/// id6.authenticate(&headers).await; // a hit
/// advance_clock(&id6, Duration::from_secs(61));
/// id6.authenticate(&headers).await; // expired: id6 is asked again
/// assert_eq!(mock.user_calls(), 2);
/// # Ok(())
/// # }
/// # tokio::runtime::Runtime::new().unwrap().block_on(run()).unwrap();
/// ```
pub fn advance_clock(id6: &crate::id6::Id6, by: std::time::Duration) {
    id6.advance_clock(by);
}
