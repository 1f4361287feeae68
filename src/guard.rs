//! Guards for whole routes, in any tower stack over `http` (axum's `route_layer`,
//! `ServiceBuilder`, a bare hyper service): [`Id6::require_user`] and
//! [`Id6::require_user_where`] let signed-in (and qualifying) users through; [`Id6::csrf`]
//! refuses cross-site writes that carry the cookie. They go inside [`Id6::layer`], whose
//! verdict they read; refusals are [`AuthRejection`]s, answered with id6's error JSON (or the
//! app's [`on_rejection`](crate::Id6Builder::on_rejection) hook).
//!
//! A refusal is a body built from a `String`: the inner service's body type must be
//! `From<String>` (axum's `Body`, `http_body_util::Full<Bytes>`, `String`...).

use std::fmt;
use std::future::{ready, Ready};
use std::task::{Context, Poll};

use futures_util::future::Either;
use http::header::{ACCEPT, HOST, ORIGIN, REFERER, VARY};
use http::{HeaderMap, HeaderValue, Method, Request, Response};
use tower_layer::Layer;
use tower_service::Service;

use crate::config::Origin;
use crate::id6::Id6;
use crate::rejection::{sign_in_redirect, AuthRejection};
use crate::token::TokenLocation;
use crate::user::Authentication;
use crate::user::User;

/// A guard: lets a request through to the inner service unless its check refuses it, then
/// answers in the check's place. [`RequireUserLayer`] and [`CsrfLayer`] are the two kinds.
#[derive(Clone)]
pub struct GuardLayer<C> {
    id6: Id6,
    check: C,
}

/// Lets a request through when its user qualifies; see [`Id6::require_user`] and
/// [`Id6::require_user_where`].
pub type RequireUserLayer<F = AnyUser> = GuardLayer<UserCheck<F>>;

/// Refuses a write (`POST`, `PUT`, `PATCH`, `DELETE`...) carrying the cookie's token when it
/// comes from another site; see [`Id6::csrf`].
pub type CsrfLayer = GuardLayer<CsrfCheck>;

impl<C> GuardLayer<C> {
    pub(crate) fn new(id6: Id6, check: C) -> Self {
        GuardLayer { id6, check }
    }
}

impl<C> fmt::Debug for GuardLayer<C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GuardLayer").finish_non_exhaustive()
    }
}

impl<S, C: Clone> Layer<S> for GuardLayer<C> {
    type Service = Guard<S, C>;

    fn layer(&self, inner: S) -> Self::Service {
        Guard {
            inner,
            id6: self.id6.clone(),
            check: self.check.clone(),
        }
    }
}

/// The service of a [`GuardLayer`].
#[derive(Clone)]
pub struct Guard<S, C> {
    inner: S,
    id6: Id6,
    check: C,
}

impl<S, C> fmt::Debug for Guard<S, C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Guard").finish_non_exhaustive()
    }
}

/// The future of a [`Guard`]: the refusal at once, or the inner service's future.
pub type GuardFuture<F, ResBody, E> = Either<Ready<Result<Response<ResBody>, E>>, F>;

impl<S, C, B, ResBody> Service<Request<B>> for Guard<S, C>
where
    S: Service<Request<B>, Response = Response<ResBody>>,
    C: Check,
    ResBody: From<String>,
{
    type Response = Response<ResBody>;
    type Error = S::Error;
    type Future = GuardFuture<S::Future, ResBody, S::Error>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<B>) -> Self::Future {
        match self.check.refusal(&self.id6, &request) {
            Some(response) => Either::Left(ready(Ok(response.map(ResBody::from)))),
            None => Either::Right(self.inner.call(request)),
        }
    }
}

mod sealed {
    pub trait Sealed {}
}

/// What a [`Guard`] checks: [`UserCheck`] or [`CsrfCheck`] (sealed).
pub trait Check: sealed::Sealed + Clone {
    /// The answer instead of the route's, or `None` to let the request through.
    #[doc(hidden)]
    fn refusal<B>(&self, id6: &Id6, request: &Request<B>) -> Option<Response<String>>;
}

/// The condition of [`Id6::require_user`]: any signed-in user.
#[derive(Clone, Copy, Debug, Default)]
pub struct AnyUser;

/// A condition on the signed-in user: any `Fn(&User) -> bool`, or [`AnyUser`].
pub trait Condition: Clone + Send + Sync + 'static {
    /// Whether `user` may use the route.
    fn allows(&self, user: &User) -> bool;
}

impl Condition for AnyUser {
    fn allows(&self, _: &User) -> bool {
        true
    }
}

impl<F> Condition for F
where
    F: Fn(&User) -> bool + Clone + Send + Sync + 'static,
{
    fn allows(&self, user: &User) -> bool {
        self(user)
    }
}

/// The check of [`RequireUserLayer`]: a signed-in user who meets the condition.
#[derive(Clone, Copy, Debug, Default)]
pub struct UserCheck<F = AnyUser>(pub(crate) F);

impl<F> sealed::Sealed for UserCheck<F> {}

impl<F: Condition> Check for UserCheck<F> {
    fn refusal<B>(&self, id6: &Id6, request: &Request<B>) -> Option<Response<String>> {
        let (uri, extensions) = (request.uri(), request.extensions());
        let settings = id6.http_settings();
        let rejection = match extensions.get::<Authentication>() {
            Some(Authentication::Authenticated(user)) if self.0.allows(user) => return None,
            Some(Authentication::Authenticated(_)) => AuthRejection::forbidden(uri, extensions),
            _ => AuthRejection::for_verdict(uri, extensions)?,
        };
        let anonymous = matches!(
            rejection,
            AuthRejection::NotAuthenticated(_) | AuthRejection::TokenRejected(_)
        );
        let mut response = match settings.login_url.as_ref() {
            // A browser is sent to sign in; never anywhere but the configured page.
            Some(login) if anonymous && wants_html(request.headers()) => sign_in_redirect(login),
            _ => rejection.with_hook(id6.rejection_hook()).into_http(),
        };
        if settings.login_url.is_some() && anonymous {
            // The answer depends on `Accept`: caches must not give a browser the API's.
            response
                .headers_mut()
                .append(VARY, HeaderValue::from_static("accept"));
        }
        Some(response)
    }
}

/// The check of [`CsrfLayer`].
#[derive(Clone, Copy, Debug, Default)]
pub struct CsrfCheck;

impl sealed::Sealed for CsrfCheck {}

impl Check for CsrfCheck {
    fn refusal<B>(&self, id6: &Id6, request: &Request<B>) -> Option<Response<String>> {
        if !is_cross_site_write(id6, request) {
            return None;
        }
        let rejection = AuthRejection::csrf(request.uri(), request.extensions())
            .with_hook(id6.rejection_hook());
        Some(rejection.into_http())
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

/// OWASP's Fetch Metadata and Origin checks, for unsafe methods whose token is the
/// cookie's (the one a browser attaches on its own). Refused: `Sec-Fetch-Site: cross-site`;
/// an `Origin` neither the request's own (by `Host`) nor trusted; `Origin: null` unless
/// Fetch Metadata says same-origin (a page of ours with `Referrer-Policy: no-referrer`);
/// without `Origin`, a `Referer` of another site. A trusted origin passes even cross-site.
/// A request with none of these headers (not a browser) passes, as does a bearer token
/// (which a browser never attaches by itself) or no token.
fn is_cross_site_write<B>(id6: &Id6, request: &Request<B>) -> bool {
    if is_safe(request.method()) {
        return false;
    }
    let headers = request.headers();
    let finder = id6.resolver().finder();
    if !matches!(finder.find_raw(headers), Some((_, TokenLocation::Cookie))) {
        return false;
    }
    let trusted = &id6.http_settings().trusted_origins;
    // HTTP/1.1 names the host in `Host`; HTTP/2 in `:authority`, which lands in the URI.
    let host = match headers.get(HOST) {
        Some(host) => host.to_str().ok(),
        None => request.uri().authority().map(|a| a.as_str()),
    };
    let is_ours = |origin: &Origin| {
        trusted.contains(origin) || host.is_some_and(|host| origin.has_authority(host))
    };
    let origin = headers
        .get(ORIGIN)
        .map(|o| o.to_str().ok().and_then(Origin::parse));
    // A trusted origin may be another site of yours: trusted whatever Fetch Metadata says.
    if let Some(Some(origin)) = &origin {
        if trusted.contains(origin) {
            return false;
        }
    }
    // Set by the browser, never by a page: what it says about the site is the truth.
    let fetch_site = headers
        .get("sec-fetch-site")
        .and_then(|v| v.to_str().ok())
        .map(str::trim);
    let said = |site: &str| fetch_site.is_some_and(|s| s.eq_ignore_ascii_case(site));
    if said("cross-site") {
        return true;
    }
    match origin {
        Some(Some(origin)) => !is_ours(&origin),
        // `null` (a sandboxed frame, a privacy redirect, a no-referrer page) or garbage:
        // not an origin we know, unless the browser vouches that the page is ours.
        Some(None) => !said("same-origin"),
        // No `Origin` (an older browser): the page that sent it, if named, must be ours.
        None => headers.get(REFERER).is_some_and(|referer| {
            !referer
                .to_str()
                .ok()
                .and_then(|referer| reqwest::Url::parse(referer).ok())
                .and_then(|page| Origin::parse(&page.origin().ascii_serialization()))
                .is_some_and(|origin| is_ours(&origin))
        }),
    }
}

fn is_safe(method: &Method) -> bool {
    matches!(
        *method,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::TRACE
    )
}

/// The guards, built from the handle (their constructors stand here so that the handle
/// need not know them).
impl Id6 {
    /// A guard for whole routes (inside [`layer`](Self::layer)): signed-in users pass;
    /// anonymous callers get 401 with id6's error JSON (its own `errorCode` for a rejected
    /// token), or, when a [`login_url`](crate::Id6Builder::login_url) is set and the caller is a
    /// browser (`Accept: text/html`), a `303` to that page and nowhere else; 503 while id6
    /// cannot be asked. Works in any tower stack whose response body is `From<String>`.
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
    pub fn require_user(&self) -> RequireUserLayer {
        GuardLayer::new(self.clone(), UserCheck(AnyUser))
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
    /// Router::new()
    ///     .route("/admin", get(|| async { "admin" }))
    ///     .route_layer(id6.require_user_where(move |user| {
    ///         user.email.as_ref().is_some_and(|email| admins.contains(email))
    ///     }))
    ///     .layer(id6.layer())
    /// # }
    /// ```
    pub fn require_user_where<F>(&self, condition: F) -> RequireUserLayer<F>
    where
        F: Fn(&User) -> bool + Clone + Send + Sync + 'static,
    {
        GuardLayer::new(self.clone(), UserCheck(condition))
    }

    /// CSRF protection for routes that write (inside or outside [`layer`](Self::layer)):
    /// a `POST`, `PUT`, `PATCH` or `DELETE` whose token came from the cookie is refused with
    /// `403` (`errorCode: "csrf_rejected"`) when `Sec-Fetch-Site` says `cross-site`, or when
    /// `Origin` is neither the request's own (by `Host`) nor one of the
    /// [`trusted_origins`](crate::Id6Builder::trusted_origins), or `null` without Fetch Metadata
    /// saying `same-origin`; without `Origin`, when `Referer` names another site. Requests
    /// without any of these headers (not a browser), bearer tokens and safe methods pass
    /// (OWASP's Fetch Metadata and Origin checks).
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
    pub fn csrf(&self) -> CsrfLayer {
        GuardLayer::new(self.clone(), CsrfCheck)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn csrf_knows_the_own_origin_by_host_or_by_authority() {
        let id6 = Id6::builder("http://127.0.0.1:9").build().unwrap();
        let post = |uri: &str, host: Option<&str>, origin: &str| {
            let mut request = Request::post(uri)
                .header("cookie", "auth=a.b.c")
                .header(ORIGIN, origin);
            if let Some(host) = host {
                request = request.header(HOST, host);
            }
            is_cross_site_write(&id6, &request.body(()).unwrap())
        };
        assert!(!post("/w", Some("app.example"), "https://app.example"));
        assert!(post("/w", Some("app.example"), "https://evil.example"));
        // HTTP/2: no `Host`, the authority is in the URI.
        assert!(!post("https://app.example/w", None, "https://app.example"));
        assert!(post("https://app.example/w", None, "https://evil.example"));
        // Neither: nothing to compare with, so only trusted origins pass.
        assert!(post("/w", None, "https://app.example"));
    }

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
