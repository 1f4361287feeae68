//! Guards for whole routes, in any tower stack over `http` (axum's `route_layer`,
//! `ServiceBuilder`, a bare hyper service): [`Id6::require_user`] and
//! [`Id6::require_user_where`] let signed-in (and qualifying) users through; [`Id6::csrf`]
//! refuses cross-site writes that carry the cookie. They go inside [`Id6::layer`], whose
//! verdict they read (add the guard, then the layer: one outside it answers 500
//! `id6_layer_missing` and logs how to fix it); refusals are [`AuthRejection`]s, answered with id6's error JSON (or the
//! app's [`on_rejection`](crate::Id6Builder::on_rejection) hook).
//!
//! A refusal is a body built from a `String`: the inner service's body type must be
//! `From<String>` (axum's `Body`, `http_body_util::Full<Bytes>`, `String`...). With the
//! `tonic` feature, `.grpc()` turns a guard into one that answers gRPC's way (a
//! trailers-only error, `grpc::Grpc`).
//!
//! Every guard is one [`GuardLayer`] making [`Guard`] services; what it checks is set by the
//! constructor, and the same refusal as the extractors' comes from the crate's one answer.

use std::fmt;
use std::future::Future;
use std::marker::PhantomData;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use http::header::{ACCEPT, VARY};
use http::{HeaderMap, HeaderValue, Request, Response};
use pin_project_lite::pin_project;
use tower_layer::Layer;
use tower_service::Service;

use crate::id6::Id6;
use crate::outcome::{self, Refusal};
use crate::rejection::{sign_in_redirect, AuthRejection};
use crate::user::Authentication;
use crate::user::User;

impl Id6 {
    /// A guard for whole routes (inside [`layer`](Self::layer)): signed-in users pass;
    /// anonymous callers get 401 with id6's error JSON (its own `errorCode` for a rejected
    /// token), or, when a [`login_url`](crate::Id6Builder::login_url) is set and the caller
    /// is a browser (`Accept: text/html`), a `303` to that page and nowhere else; 503 while
    /// id6 cannot be asked. Works in any tower stack whose response body is `From<String>`.
    ///
    /// ```
    /// use axum::{routing::get, Router};
    /// use id6_tower::RequireUser;
    ///
    /// # fn app(id6: id6_tower::Id6) -> Router {
    /// Router::new()
    ///     .route("/account", get(|RequireUser(user): RequireUser| async move {
    ///         format!("Account of {}", user.name)
    ///     }))
    ///     .route_layer(id6.require_user())
    ///     .layer(id6.layer())
    /// # }
    /// ```
    pub fn require_user(&self) -> GuardLayer {
        GuardLayer::new(self.clone(), Check::User(None))
    }

    /// A guard with a condition: id6 has no roles, so the app decides by user (a list of
    /// ids or emails, a domain). Signed-in users who do not qualify get `403` with id6's
    /// error shape and `errorCode: "forbidden"`; the others are answered as by
    /// [`require_user`](Self::require_user).
    ///
    /// ```
    /// use axum::{routing::get, Router};
    ///
    /// # fn app(id6: id6_tower::Id6) -> Router {
    /// let admins = ["alice@example.com".to_owned()];
    /// // Routes added after `route_layer` are not guarded (axum's rule): add them before.
    /// let admin = Router::new()
    ///     .route("/", get(|| async { "admin" }))
    ///     .route("/stats", get(|| async { "stats" }))
    ///     .route_layer(id6.require_user_where(move |user| {
    ///         // Emails compare in any case.
    ///         let email = user.email.as_deref().unwrap_or_default();
    ///         admins.iter().any(|admin| admin.eq_ignore_ascii_case(email))
    ///     }));
    /// Router::new()
    ///     .nest("/admin", admin)
    ///     .layer(id6.layer())
    /// # }
    /// ```
    pub fn require_user_where<F>(&self, condition: F) -> GuardLayer
    where
        F: Fn(&User) -> bool + Send + Sync + 'static,
    {
        GuardLayer::new(self.clone(), Check::User(Some(Arc::new(condition))))
    }

    /// CSRF protection for routes that write (inside or outside [`layer`](Self::layer)):
    /// a `POST`, `PUT`, `PATCH` or `DELETE` whose token came from the cookie is refused with
    /// `403` (`errorCode: "csrf_rejected"`) when `Origin` is neither the request's own (by
    /// `Host`) nor one of the [`trusted_origins`](crate::Id6Builder::trusted_origins), or
    /// `null` without Fetch Metadata saying `same-origin`; when `Sec-Fetch-Site` says
    /// `cross-site` and `Origin` is not a trusted one; without `Origin`, when `Referer` names
    /// another site.
    /// A WebSocket handshake (`GET` with `Upgrade: websocket`) is checked as a write: it
    /// opens a channel that acts for the user (cross-site WebSocket hijacking). Requests
    /// without any of these headers (not a browser), bearer tokens and other safe requests
    /// pass (OWASP's Fetch Metadata and Origin checks).
    ///
    /// ```
    /// use axum::{routing::post, Router};
    ///
    /// # fn app(id6: id6_tower::Id6) -> Router {
    /// Router::new()
    ///     .route("/logout", post(|| async { "bye" }))
    ///     .route_layer(id6.csrf())
    ///     .layer(id6.layer())
    /// # }
    /// ```
    pub fn csrf(&self) -> GuardLayer {
        GuardLayer::new(self.clone(), Check::Csrf)
    }
}

/// A guard: lets a request through to the inner service unless its check refuses it, then
/// answers in the check's place. Made by [`Id6::require_user`],
/// [`Id6::require_user_where`] and [`Id6::csrf`]; it answers over HTTP ([`Http`], id6's
/// error JSON) or, with the `tonic` feature and `.grpc()`, gRPC's way.
#[must_use]
#[derive(Clone)]
pub struct GuardLayer<A = Http> {
    id6: Id6,
    check: Check,
    answer: PhantomData<A>,
}

/// How a [`GuardLayer`] answers a refusal over HTTP: id6's error JSON, the app's
/// [`on_rejection`](crate::Id6Builder::on_rejection) hook, or a redirect to sign in.
#[derive(Clone, Copy, Debug, Default)]
pub struct Http;

/// A condition on the signed-in user ([`Id6::require_user_where`]).
type Condition = Arc<dyn Fn(&User) -> bool + Send + Sync>;

/// What a guard checks.
#[derive(Clone)]
pub(crate) enum Check {
    /// A signed-in user who meets the condition, if any.
    User(Option<Condition>),
    /// Not a cross-site write carrying the cookie.
    Csrf,
}

impl Check {
    /// Why the request may not go on, if it may not: the crate's one answer for a user,
    /// then the route's condition; or the CSRF check.
    fn refusal<'a, B>(&self, id6: &Id6, request: &'a Request<B>) -> Option<Refusal<'a>> {
        match self {
            Check::User(condition) => {
                match outcome::required(Authentication::of(request.extensions())) {
                    Ok(user) => condition
                        .as_ref()
                        .is_some_and(|allows| !allows(user))
                        .then_some(Refusal::Forbidden),
                    Err(refusal) => Some(refusal),
                }
            }
            Check::Csrf => id6
                .is_cross_site(request.method(), request.uri(), request.headers())
                .then_some(Refusal::CsrfRejected),
        }
    }
}

impl<A> GuardLayer<A> {
    /// The same guard, answering another way (gRPC's, in `grpc`).
    #[cfg(feature = "tonic")]
    pub(crate) fn answering<B>(self) -> GuardLayer<B> {
        GuardLayer {
            id6: self.id6,
            check: self.check,
            answer: PhantomData,
        }
    }
}

impl GuardLayer {
    fn new(id6: Id6, check: Check) -> Self {
        GuardLayer {
            id6,
            check,
            answer: PhantomData,
        }
    }
}

impl<A> fmt::Debug for GuardLayer<A> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GuardLayer").finish_non_exhaustive()
    }
}

impl<S, A> Layer<S> for GuardLayer<A> {
    type Service = Guard<S, A>;

    fn layer(&self, inner: S) -> Self::Service {
        Guard {
            inner,
            id6: self.id6.clone(),
            check: self.check.clone(),
            answer: PhantomData,
        }
    }
}

/// The service of a [`GuardLayer`].
#[must_use]
#[derive(Clone)]
pub struct Guard<S, A = Http> {
    inner: S,
    id6: Id6,
    check: Check,
    answer: PhantomData<A>,
}

impl<S, A> fmt::Debug for Guard<S, A> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Guard").finish_non_exhaustive()
    }
}

impl<S, A> Guard<S, A> {
    /// Ready when the guarded service is.
    pub(crate) fn poll_inner<B>(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>>
    where
        S: Service<Request<B>>,
    {
        self.inner.poll_ready(cx)
    }

    /// The inner service's future, or the answer `dress` gives the refusal.
    pub(crate) fn guard<B, ResBody>(
        &mut self,
        request: Request<B>,
        dress: impl FnOnce(&Id6, Refusal<'_>, &Request<B>) -> Response<ResBody>,
    ) -> GuardFuture<S::Future, ResBody>
    where
        S: Service<Request<B>, Response = Response<ResBody>>,
    {
        match self.check.refusal(&self.id6, &request) {
            Some(refusal) => GuardFuture::refused(dress(&self.id6, refusal, &request)),
            // `poll_ready` readied this very `inner`: no clone to swap in.
            None => GuardFuture::called(self.inner.call(request)),
        }
    }
}

impl<S, B, ResBody> Service<Request<B>> for Guard<S, Http>
where
    S: Service<Request<B>, Response = Response<ResBody>>,
    ResBody: From<String>,
{
    type Response = Response<ResBody>;
    type Error = S::Error;
    type Future = GuardFuture<S::Future, ResBody>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.poll_inner(cx)
    }

    fn call(&mut self, request: Request<B>) -> Self::Future {
        self.guard(request, |id6, refusal, request| {
            http_answer(id6, refusal, request).map(ResBody::from)
        })
    }
}

/// A refusal dressed for HTTP: a browser that must sign in is sent to the configured page;
/// anything else is an [`AuthRejection`] (through the app's hook).
fn http_answer<B>(id6: &Id6, refusal: Refusal<'_>, request: &Request<B>) -> Response<String> {
    let settings = id6.http_settings();
    let anonymous = matches!(refusal, Refusal::NotAuthenticated | Refusal::DeadToken(_));
    let mut response = match settings.login_url.as_ref() {
        // A browser is sent to sign in; never anywhere but the configured page.
        Some(login) if anonymous && wants_html(request.headers()) => sign_in_redirect(login),
        _ => AuthRejection::new(refusal, request.uri(), request.extensions())
            .with_hook(id6.rejection_hook())
            .into_http(),
    };
    if settings.login_url.is_some() && anonymous {
        // The answer depends on `Accept`: caches must not give a browser the API's.
        response
            .headers_mut()
            .append(VARY, HeaderValue::from_static("accept"));
    }
    response
}

pin_project! {
    /// The future of a [`Guard`]: the refusal at once, or the inner service's future.
    pub struct GuardFuture<F, ResBody> {
        #[pin]
        state: State<F, ResBody>,
    }
}

pin_project! {
    #[project = StateProj]
    enum State<F, ResBody> {
        // Let through: the inner call.
        Called { #[pin] future: F },
        // Refused: the answer, ready (taken once).
        Refused { response: Option<Response<ResBody>> },
    }
}

impl<F, ResBody> GuardFuture<F, ResBody> {
    fn called(future: F) -> Self {
        GuardFuture {
            state: State::Called { future },
        }
    }

    fn refused(response: Response<ResBody>) -> Self {
        GuardFuture {
            state: State::Refused {
                response: Some(response),
            },
        }
    }
}

impl<F, ResBody> fmt::Debug for GuardFuture<F, ResBody> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GuardFuture").finish_non_exhaustive()
    }
}

impl<F, ResBody, E> Future for GuardFuture<F, ResBody>
where
    F: Future<Output = Result<Response<ResBody>, E>>,
{
    type Output = Result<Response<ResBody>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project().state.project() {
            StateProj::Called { future } => future.poll(cx),
            // Polled again after its answer: a contract breach, met without a panic.
            StateProj::Refused { response } => match response.take() {
                Some(response) => Poll::Ready(Ok(response)),
                None => Poll::Pending,
            },
        }
    }
}

/// A browser navigating (`Accept` lists `text/html`), not an API client.
fn wants_html(headers: &HeaderMap) -> bool {
    headers
        .get_all(ACCEPT)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(','))
        .any(|media| {
            let media = media.split(';').next().unwrap_or("").trim();
            media.eq_ignore_ascii_case("text/html")
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn browsers_are_told_by_accept() {
        let with = |accept: &str| {
            let mut headers = HeaderMap::new();
            headers.insert(ACCEPT, accept.parse().unwrap());
            wants_html(&headers)
        };
        assert!(with("text/html,application/xhtml+xml,*/*;q=0.8"));
        assert!(with("TEXT/HTML; q=0.9"));
        assert!(!with("application/json"));
        assert!(!with("*/*"));
        assert!(!wants_html(&HeaderMap::new()));
    }
}
