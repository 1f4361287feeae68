//! # id6-tower
//!
//! Tower middleware that knows who is calling, by asking id6 (a small self-hosted
//! authentication service; how it behaves is in the package's `docs/id6.md`) — cached,
//! coalesced, and safe when id6 is down.
//!
//! id6 signs users in and leaves an HTTP-only `auth` cookie (a JWT) in their browser. The
//! [`Id6Layer`] reads that cookie from each request, asks id6's `GET /user` who owns it
//! (once per token per TTL, however many requests arrive at once), and inserts the answer,
//! an [`Authentication`], into the request extensions. Handlers read it with the axum
//! extractors [`CurrentUser`] and [`RequireUser`], or from `http::Extensions` in any other
//! tower-based framework.
//!
//! ## Quick start
//!
//! ```no_run
//! use axum::{routing::get, Json, Router};
//! use id6_tower::{CurrentUser, Id6, RequireUser, User};
//! use std::sync::Arc;
//!
//! async fn home(CurrentUser(user): CurrentUser) -> String {
//!     match user {
//!         Some(user) => format!("Hello, {}!", user.name),
//!         None => "Hello, anonymous!".to_owned(),
//!     }
//! }
//!
//! async fn me(RequireUser(user): RequireUser) -> Json<Arc<User>> {
//!     Json(user) // anonymous callers got a 401 before reaching here
//! }
//!
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! // id6's API, `/api` behind its proxy. Every setting has its setter and its variable
//! // (`Id6::from_env()`): the README's configuration table lists them.
//! let id6 = Id6::builder("http://127.0.0.1:8000/api").build()?;
//!
//! let app = Router::new()
//!     .route("/", get(home))
//!     .route("/me", get(me))
//!     .layer(id6.layer());
//!
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:3000").await?;
//! axum::serve(listener, app).await?;
//! # Ok(())
//! # }
//! ```
//!
//! ## What a request gets
//!
//! | id6 says | [`Authentication`] | `CurrentUser` | `RequireUser` | cached for |
//! |---|---|---|---|---|
//! | no `auth` cookie | `Anonymous` | `None` | 401 `not_authenticated` | id6 not asked |
//! | a malformed cookie (refused locally, as id6 would) | `Rejected(InvalidToken)` | `None` | 401 `invalid_token` | id6 not asked |
//! | 200 with a user | `Authenticated(Arc<User>)` | `Some(user)` | the user | `ID6_CACHE_TTL` (60 s) |
//! | 401 `invalid_token`, `token_expired`, `token_revoked`, `user_not_found` | `Rejected(..)`, id6's reason | `None` | 401 with id6's `errorCode` | `ID6_NEGATIVE_TTL` (5 s), reason included |
//! | down, timeout, 5xx, 429, not JSON (a 401 too: a proxy's page, not id6's verdict), over 64 KiB, caller over its miss budget | `Unavailable(Error)` | 503 + `Retry-After` | 503 + `Retry-After` | never |
//!
//! A rejected token is answered in id6's own words, from a miss and from the negative cache
//! alike: after `disconnect`, the app says `token_revoked` as id6 does. Handlers that do not ask
//! for the user run whatever id6 says. A route using the extractors without the layer answers 500
//! (`id6_layer_missing`) and logs an error naming the fix. Bodies never carry internal detail
//! (a 503 says only that the authentication service is unavailable; the cause goes to the log).
//!
//! ## Features
//!
//! - `axum` (default): the extractors (`CurrentUser`, `RequireUser`, `Session`) and
//!   `Session::sse`, on `axum-core`.
//! - `rustls` (default): HTTPS to id6 through rustls; `native-tls` instead: the platform's.
//! - `jwt` (default): local HS256 verification with id6's secret (`jwt_secret`).
//! - `pictures` (default): `Id6::update_picture`, `Id6::picture`.
//! - `metrics` (default): counters and a histogram through the `metrics` facade.
//! - `ws`: `Session::websocket`, a WebSocket that closes when its token dies (axum's `ws`).
//! - `tonic`: `grpc` helpers (`current_user`, `require_user`, `session` with
//!   `Session::grpc_stream`), and guards that answer gRPC's way (`id6.require_user().grpc()`).
//! - `redis`: answers shared and evictions broadcast between instances through Redis.
//! - `testing`: `testing::MockId6`, an id6 look-alike server on loopback for tests.

#![cfg_attr(docsrs, feature(doc_cfg))]

// The house, top down: each module imports only modules below it (no circle, no import
// running back up).
//
//   layer/  grpc  pictures          what wraps a service; typed picture calls
//   api  guard  session/  testing/  typed calls, route guards, connections that end, the mock
//   id6                             the handle: checked settings in, its parts out
//   redis                           the optional second level
//   resolve/                        one owner of a request's resolution: store, loads in
//                                   flight, marks, lives, failure policy, miss budget
//   client  csrf                    calls to id6; the cross-site check
//   config/  extract                settings as rows (plain data); axum extractors
//   rejection  outcome  token       the one answer and its HTTP dress; finding the token
//   jwt  admission  user            the local screen; call cap and breaker; who is calling
//   error  clock  telemetry  lock   the ground floor

mod admission;
mod api;
mod client;
mod clock;
mod config;
mod csrf;
mod error;
#[cfg(feature = "axum")]
mod extract;
#[cfg(feature = "tonic")]
#[cfg_attr(docsrs, doc(cfg(feature = "tonic")))]
pub mod grpc;
pub mod guard;
mod id6;
mod jwt;
mod layer;
mod lock;
mod outcome;
#[cfg(feature = "pictures")]
mod pictures;
#[cfg(feature = "redis")]
mod redis;
pub mod rejection;
mod resolve;
mod session;
mod stripe;
mod telemetry;
mod token;
mod user;

#[cfg(feature = "testing")]
#[cfg_attr(docsrs, doc(cfg(feature = "testing")))]
pub mod testing;

/// The futures of the crate's services, for code that names them (`Service::Future`).
pub mod future {
    pub use crate::layer::ResponseFuture;
}

pub use admission::Health;
pub use api::{Profile, TokenSource};
pub use config::{Id6Builder, MissLimit, OnUnavailable};
pub use error::{Error, TokenRejection};
#[cfg(feature = "axum")]
#[cfg_attr(docsrs, doc(cfg(feature = "axum")))]
pub use extract::{CurrentUser, RequireUser};
pub use id6::Id6;
pub use layer::{Id6Layer, Id6Service};
#[cfg(feature = "pictures")]
#[cfg_attr(docsrs, doc(cfg(feature = "pictures")))]
pub use pictures::{PictureDownload, PictureUpload};
pub use rejection::AuthRejection;
#[cfg(feature = "ws")]
#[cfg_attr(docsrs, doc(cfg(feature = "ws")))]
pub use session::LiveSocket;
pub use session::Session;
pub use telemetry::{SharedHealth, Stats, Topology};
pub use token::{TokenLocation, UserToken};
pub use user::{Authentication, User};
