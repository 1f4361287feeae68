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
use http::header::{ACCEPT, HOST, ORIGIN};
use http::{HeaderMap, Method, Request, Response};
use tower_layer::Layer;
use tower_service::Service;

use crate::rejection::{sign_in_redirect, AuthRejection};
use crate::token::TokenLocation;
use crate::{Authentication, Id6, User};

/// Lets a request through when its user qualifies; see [`Id6::require_user`] and
/// [`Id6::require_user_where`].
#[derive(Clone)]
pub struct RequireUserLayer<F = AnyUser> {
    id6: Id6,
    condition: F,
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

impl<F> fmt::Debug for RequireUserLayer<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RequireUserLayer").finish_non_exhaustive()
    }
}

impl<F> RequireUserLayer<F> {
    pub(crate) fn new(id6: Id6, condition: F) -> Self {
        RequireUserLayer { id6, condition }
    }
}

impl<S, F: Clone> Layer<S> for RequireUserLayer<F> {
    type Service = RequireUserService<S, F>;

    fn layer(&self, inner: S) -> Self::Service {
        RequireUserService {
            inner,
            id6: self.id6.clone(),
            condition: self.condition.clone(),
        }
    }
}

/// The service of [`RequireUserLayer`].
#[derive(Clone)]
pub struct RequireUserService<S, F = AnyUser> {
    inner: S,
    id6: Id6,
    condition: F,
}

impl<S, F> fmt::Debug for RequireUserService<S, F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RequireUserService").finish_non_exhaustive()
    }
}

/// The future of the guards: the refusal at once, or the inner service's future.
pub type GuardFuture<F, ResBody, E> = Either<Ready<Result<Response<ResBody>, E>>, F>;

impl<S, F, B, ResBody> Service<Request<B>> for RequireUserService<S, F>
where
    S: Service<Request<B>, Response = Response<ResBody>>,
    F: Condition,
    ResBody: From<String>,
{
    type Response = Response<ResBody>;
    type Error = S::Error;
    type Future = GuardFuture<S::Future, ResBody, S::Error>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<B>) -> Self::Future {
        match self.refusal(&request) {
            Some(response) => Either::Left(ready(Ok(response.map(ResBody::from)))),
            None => Either::Right(self.inner.call(request)),
        }
    }
}

impl<S, F: Condition> RequireUserService<S, F> {
    /// The answer instead of the route's, unless the user qualifies.
    fn refusal<B>(&self, request: &Request<B>) -> Option<Response<String>> {
        let (uri, extensions) = (request.uri(), request.extensions());
        let settings = self.id6.http_settings();
        let rejection = match extensions.get::<Authentication>() {
            Some(Authentication::Authenticated(user)) if self.condition.allows(user) => {
                return None
            }
            Some(Authentication::Authenticated(_)) => AuthRejection::forbidden(uri, extensions),
            _ => AuthRejection::for_verdict(uri, extensions)?,
        };
        let anonymous = matches!(
            rejection,
            AuthRejection::NotAuthenticated(_) | AuthRejection::TokenRejected(_)
        );
        match settings.login_url.as_ref() {
            // A browser is sent to sign in; never anywhere but the configured page.
            Some(login) if anonymous && wants_html(request.headers()) => {
                Some(sign_in_redirect(login))
            }
            _ => Some(
                rejection
                    .with_hook(settings.rejection_hook.as_ref())
                    .into_http(),
            ),
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

/// Refuses a write (`POST`, `PUT`, `PATCH`, `DELETE`...) carrying the cookie's token when it
/// comes from another site; see [`Id6::csrf`].
#[derive(Clone)]
pub struct CsrfLayer {
    id6: Id6,
}

impl fmt::Debug for CsrfLayer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CsrfLayer").finish_non_exhaustive()
    }
}

impl CsrfLayer {
    pub(crate) fn new(id6: Id6) -> Self {
        CsrfLayer { id6 }
    }
}

impl<S> Layer<S> for CsrfLayer {
    type Service = CsrfService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        CsrfService {
            inner,
            id6: self.id6.clone(),
        }
    }
}

/// The service of [`CsrfLayer`].
#[derive(Clone)]
pub struct CsrfService<S> {
    inner: S,
    id6: Id6,
}

impl<S> fmt::Debug for CsrfService<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CsrfService").finish_non_exhaustive()
    }
}

impl<S, B, ResBody> Service<Request<B>> for CsrfService<S>
where
    S: Service<Request<B>, Response = Response<ResBody>>,
    ResBody: From<String>,
{
    type Response = Response<ResBody>;
    type Error = S::Error;
    type Future = GuardFuture<S::Future, ResBody, S::Error>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<B>) -> Self::Future {
        if self.is_cross_site_write(&request) {
            let rejection = AuthRejection::csrf(request.uri(), request.extensions())
                .with_hook(self.id6.http_settings().rejection_hook.as_ref());
            return Either::Left(ready(Ok(rejection.into_http().map(ResBody::from))));
        }
        Either::Right(self.inner.call(request))
    }
}

impl<S> CsrfService<S> {
    /// OWASP's Fetch Metadata and Origin checks, for unsafe methods whose token is the
    /// cookie's (the one a browser attaches on its own): refused when `Sec-Fetch-Site` says
    /// `cross-site`, or when `Origin` is neither the request's own (by `Host`) nor trusted.
    /// A request with neither header (not a browser) passes, as does a bearer token (which a
    /// browser never attaches by itself) or no token at all.
    fn is_cross_site_write<B>(&self, request: &Request<B>) -> bool {
        if is_safe(request.method()) {
            return false;
        }
        let headers = request.headers();
        let finder = &self.id6.resolver().settings().finder;
        if !matches!(finder.find_raw(headers), Some((_, TokenLocation::Cookie))) {
            return false;
        }
        let fetch_site = headers
            .get("sec-fetch-site")
            .and_then(|v| v.to_str().ok())
            .map(str::trim);
        if fetch_site.is_some_and(|site| site.eq_ignore_ascii_case("cross-site")) {
            return true;
        }
        let Some(origin) = headers.get(ORIGIN) else {
            return false;
        };
        let Some(origin) = origin.to_str().ok().and_then(Origin::parse) else {
            // `null` (a sandboxed frame, a privacy redirect) or garbage: not an origin we know.
            return true;
        };
        let own = headers
            .get(HOST)
            .and_then(|host| host.to_str().ok())
            .is_some_and(|host| origin.has_authority(host));
        let trusted = self.id6.http_settings().trusted_origins.contains(&origin);
        !(own || trusted)
    }
}

fn is_safe(method: &Method) -> bool {
    matches!(
        *method,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::TRACE
    )
}

/// A web origin, normalised: lowercase scheme and host, default port left out.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Origin {
    scheme: String,
    /// `host[:port]`, the port only when not the scheme's default.
    authority: String,
}

impl Origin {
    /// `scheme://host[:port]` and nothing else (no path, userinfo, query); `None` otherwise.
    pub(crate) fn parse(text: &str) -> Option<Self> {
        let (scheme, rest) = text.trim().split_once("://")?;
        let scheme = scheme.to_ascii_lowercase();
        let default_port = match scheme.as_str() {
            "http" => "80",
            "https" => "443",
            _ => return None,
        };
        if rest.is_empty() || rest.contains(['/', '?', '#', '@', ' ']) {
            return None;
        }
        let authority = rest.to_ascii_lowercase();
        let authority = match authority.rsplit_once(':') {
            // Not the inside of an IPv6 literal: a port.
            Some((host, port)) if !port.contains(']') => {
                if port.is_empty() || !port.bytes().all(|b| b.is_ascii_digit()) {
                    return None;
                }
                if port == default_port {
                    host.to_owned()
                } else {
                    authority.clone()
                }
            }
            _ => authority,
        };
        Some(Origin { scheme, authority })
    }

    /// Whether `host` (a `Host` header) names this origin's host and port. The scheme is not
    /// in `Host`: behind a TLS terminator, `https://app` and a `Host: app` are the same site.
    fn has_authority(&self, host: &str) -> bool {
        let host = host.trim().to_ascii_lowercase();
        let host = host
            .strip_suffix(":80")
            .filter(|_| self.scheme == "http")
            .or_else(|| host.strip_suffix(":443").filter(|_| self.scheme == "https"))
            .unwrap_or(&host);
        host == self.authority
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn origins_are_normalised_and_strict() {
        let o = |t: &str| Origin::parse(t);
        assert_eq!(o("HTTPS://App.Example:443"), o("https://app.example"));
        assert_ne!(o("https://app.example:8443"), o("https://app.example"));
        assert_ne!(o("http://app.example"), o("https://app.example"));
        for bad in [
            "null",
            "app.example",
            "ftp://app.example",
            "https://app.example/",
            "https://u@app.example",
            "https://app.example:x",
            "https://",
        ] {
            assert_eq!(o(bad), None, "{bad}");
        }
        let origin = o("https://app.example").unwrap();
        assert!(origin.has_authority("app.example"));
        assert!(origin.has_authority("APP.example:443"));
        assert!(!origin.has_authority("app.example:8443"));
        assert!(!origin.has_authority("evil.example"));
        let v6 = o("http://[::1]:3000").unwrap();
        assert!(v6.has_authority("[::1]:3000"));
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
