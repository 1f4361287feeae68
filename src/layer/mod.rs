//! The tower middleware: [`Id6Layer`] wraps a service in an [`Id6Service`], which leaves an
//! [`Authentication`](crate::Authentication) in every request's extensions before calling it
//! (read with [`Authentication::of`](crate::Authentication::of)).
//!
//! It works for any `S: Service<http::Request<B>>` and any body `B`, never changes
//! `S::Error`, and never rejects a request itself: deciding what an anonymous or unknown
//! caller may do belongs to the handler (see the axum extractors).
//!
//! ```
//! use std::convert::Infallible;
//! use id6_tower::Authentication;
//! use tower::{service_fn, Layer};
//!
//! # fn run() -> Result<(), id6_tower::Error> {
//! let id6 = id6_tower::Id6::builder("http://127.0.0.1:8000/api").build()?;
//! let service = id6.layer().layer(service_fn(|request: http::Request<String>| async move {
//!     let name = match Authentication::of(request.extensions()).and_then(Authentication::user) {
//!         Some(user) => user.name.clone(),
//!         None => "anonymous".to_owned(),
//!     };
//!     Ok::<_, Infallible>(http::Response::new(format!("Hello, {name}!")))
//! }));
//! # let _ = service;
//! # Ok(())
//! # }
//! ```

mod future;
#[allow(clippy::module_inception)]
mod layer;
mod served;
mod service;

pub(crate) use served::Served;

pub use future::ResponseFuture;
pub use layer::Id6Layer;
pub use service::Id6Service;
