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
//! be mirrored here and pass unnoticed. One exception, on purpose: id6's profile rules
//! (`POST /user/profile`), stated once and read by both the typed call's check and the mock.
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

/// Moves `id6`'s clock forward by `by`, as if that much time had passed, for everything the
/// handle times: cached answers age (TTLs, the negative TTL, the stale window,
/// refresh-ahead, `max_age`), invalidation marks expire, the miss budget refills, the
/// breaker's and background calls' pauses end, id6's rate-limit window and a token's
/// `issuedAt` (with `jwt_secret`) are read later, and the open sessions' rechecks whose time
/// it passed are woken. So a test of expiry, back-off or rechecks need not sleep; follow it
/// with [`settle`] to wait for the work it woke.
///
/// Not moved: [`MockId6`]'s clock (move it with [`MockId6::advance_clock`]), I/O timeouts
/// (reqwest's, the mock's [`Fault::Delay`]), and Redis's expiries (with Redis, a locally
/// expired answer may come back from it with its real age).
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

/// Stops `id6`'s clock where it stands: from now on only [`advance_clock`] moves it (not the
/// real time that passes, not tokio's paused clock). A test that counts rechecks or refreshes
/// then counts exactly, however loaded the machine: nothing becomes due while the test is not
/// looking. I/O timeouts still run on real time, and so does moka's bookkeeping, which frees
/// an entry's memory once its TTL has passed in real time: keep the TTLs of a frozen test
/// longer than the test runs.
///
/// ```
/// # async fn run() -> Result<(), Box<dyn std::error::Error>> {
/// use std::time::Duration;
/// use id6_tower::testing::{advance_clock, freeze_clock, MockId6};
/// use id6_tower::Id6;
///
/// let mock = MockId6::start().await?;
/// let token = mock.token_for(mock.add_user("Alice", "alice@example.com"));
/// let id6 = Id6::builder(mock.url())
///     .cache_ttl(Duration::from_secs(60))
///     .refresh_after(None) // no refresh ahead of expiry: one call to count
///     .build()?;
/// freeze_clock(&id6);
/// let mut headers = http::HeaderMap::new();
/// headers.insert("cookie", format!("auth={token}").parse()?);
/// id6.authenticate(&headers).await; // a miss, at 0
/// advance_clock(&id6, Duration::from_secs(60) - Duration::from_nanos(1));
/// id6.authenticate(&headers).await; // a hit, to the nanosecond
/// assert_eq!(mock.user_calls(), 1);
/// advance_clock(&id6, Duration::from_nanos(1));
/// id6.authenticate(&headers).await; // expired
/// assert_eq!(mock.user_calls(), 2);
/// # Ok(())
/// # }
/// # tokio::runtime::Runtime::new().unwrap().block_on(run()).unwrap();
/// ```
pub fn freeze_clock(id6: &crate::id6::Id6) {
    id6.freeze_clock();
}

/// Resolves once the background work `id6` has due at its clock's now is done: every open
/// session's recheck due has asked id6 (or the cache) and settled, and every load in flight
/// (a refresh ahead of expiry, a miss) has ended. After [`advance_clock`], it is what makes
/// counts exact: no waiting on the wall clock, no polling.
///
/// It waits on id6 like the work does: an answer held by [`MockId6::hold_user_answers`], or a
/// hanging id6 until the call's timeout, holds it too.
///
/// ```
/// # async fn run() -> Result<(), Box<dyn std::error::Error>> {
/// use std::time::Duration;
/// use id6_tower::testing::{advance_clock, settle, MockId6};
/// use id6_tower::Id6;
///
/// let mock = MockId6::start().await?;
/// let alice = mock.add_user("Alice", "alice@example.com");
/// let token = mock.token_for(alice);
/// let id6 = Id6::builder(mock.url())
///     .cache_ttl(Duration::from_secs(60))
///     .refresh_after(Duration::from_secs(30))
///     .build()?;
/// let mut headers = http::HeaderMap::new();
/// headers.insert("cookie", format!("auth={token}").parse()?);
/// id6.authenticate(&headers).await; // a miss
/// advance_clock(&id6, Duration::from_secs(31));
/// id6.authenticate(&headers).await; // a hit, which starts a refresh in the background
/// settle(&id6).await;
/// assert_eq!(mock.user_calls(), 2);
/// # Ok(())
/// # }
/// # tokio::runtime::Runtime::new().unwrap().block_on(run()).unwrap();
/// ```
pub async fn settle(id6: &crate::id6::Id6) {
    id6.settled().await;
}
