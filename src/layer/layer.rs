//! `Id6Layer`: what `Router::layer`, `ServiceBuilder::layer` and tonic's `Server::layer` take.

use std::time::Duration;

use tower_layer::Layer;

use super::Id6Service;
use crate::id6::Id6;

/// Wraps services in an [`Id6Service`]. Cheap to clone: it holds only the [`Id6`] handle.
///
/// ```
/// use http::{Request, Response};
/// use id6_tower::{Authentication, Id6};
/// use tower::{service_fn, ServiceBuilder, ServiceExt};
///
/// # async fn run() -> Result<(), Box<dyn std::error::Error>> {
/// let id6 = Id6::builder("http://127.0.0.1:8000/api").build()?;
/// // Any tower service of `http::Request`s: here a bare `service_fn`.
/// let service = ServiceBuilder::new()
///     .layer(id6.layer())
///     .service(service_fn(|request: Request<String>| async move {
///         let who = Authentication::of(request.extensions()).cloned();
///         let name = who.and_then(|a| a.user().map(|u| u.name.clone()));
///         Ok::<_, std::convert::Infallible>(Response::new(format!("{name:?}")))
///     }));
/// // No `auth` cookie: anonymous, and id6 is not asked.
/// let response = service.oneshot(Request::new(String::new())).await?;
/// assert_eq!(response.body(), "None");
/// # Ok(())
/// # }
/// # tokio::runtime::Runtime::new().unwrap().block_on(run()).unwrap();
/// ```
#[must_use]
#[derive(Clone, Debug)]
pub struct Id6Layer {
    id6: Id6,
    max_age: Option<Duration>,
}

impl Id6Layer {
    /// A layer resolving identities through `id6`; the same as [`Id6::layer`].
    pub fn new(id6: Id6) -> Self {
        Id6Layer { id6, max_age: None }
    }

    /// See [`Id6::layer_with_max_age`].
    pub fn with_max_age(id6: Id6, max_age: Duration) -> Self {
        Id6Layer {
            id6,
            max_age: Some(max_age),
        }
    }
}

impl<S> Layer<S> for Id6Layer {
    type Service = Id6Service<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Id6Service {
            inner,
            id6: self.id6.clone(),
            max_age: self.max_age,
        }
    }
}

/// The layer, built from the handle (its constructors stand here so that the handle need
/// not know the layer).
impl Id6 {
    /// The tower layer that puts an [`Authentication`](crate::Authentication) into every request.
    pub fn layer(&self) -> Id6Layer {
        Id6Layer::new(self.clone())
    }

    /// A layer for sensitive routes (payments, password changes): like
    /// [`layer`](Self::layer), but a cached user confirmed by id6 longer ago than `max_age`
    /// is asked about again first, coalesced like any miss, so that a revocation on id6 is
    /// seen within `max_age` there.
    ///
    /// ```
    /// use std::time::Duration;
    /// use axum::{routing::post, Router};
    ///
    /// # fn app(id6: id6_tower::Id6) -> Router {
    /// Router::new()
    ///     .route("/pay", post(|| async { "paid" }))
    ///     .route_layer(id6.layer_with_max_age(Duration::from_secs(30)))
    ///     .layer(id6.layer())
    /// # }
    /// ```
    pub fn layer_with_max_age(&self, max_age: std::time::Duration) -> Id6Layer {
        Id6Layer::with_max_age(self.clone(), max_age)
    }
}
