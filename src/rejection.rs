//! Every refusal the crate answers for the app — by the extractors, the route guards and the
//! CSRF check — one named type per cause, gathered in [`AuthRejection`], each answering with
//! id6's error JSON (`{"statusCode", "path", "message", "errorCode"}`), its status and
//! headers. Bodies never carry internal detail (that goes to the logs); every rejection is
//! logged at debug on the `id6_tower::rejection` target, as axum logs its own.
//!
//! What is refused is decided once, by the crate's one answer (the same for the gRPC
//! helpers); this module gives it its HTTP form. One place changes them all:
//! [`Id6Builder::on_rejection`](crate::Id6Builder::on_rejection).

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use http::header::{CONTENT_TYPE, LOCATION, RETRY_AFTER, WWW_AUTHENTICATE};
use http::{Extensions, HeaderValue, Response, StatusCode, Uri};

use crate::error::Error;
use crate::error::TokenRejection;
use crate::outcome::Refusal;

/// Retry-After when id6 gave no wait of its own.
pub(crate) const DEFAULT_RETRY_AFTER: Duration = Duration::from_secs(5);

pub(crate) const MISSING_LAYER: &str = "id6-tower: no Authentication in the request extensions: \
     the request reached this extractor or guard without passing through `id6.layer()`. \
     Wrap this router or service with `id6.layer()` (e.g. `Router::layer(id6.layer())`); \
     if it is wrapped already, move this guard inside `id6.layer()`: add the guard first, \
     the layer after (`.route_layer(id6.require_user()).layer(id6.layer())`), since a layer \
     added later runs earlier";

type HookFn = dyn Fn(&AuthRejection) -> Response<String> + Send + Sync;

/// The app's own answer to every rejection
/// ([`Id6Builder::on_rejection`](crate::Id6Builder::on_rejection)), carried to the
/// extractors in the request's extensions by the layer.
#[derive(Clone)]
pub(crate) struct RejectionHook(Arc<HookFn>);

impl RejectionHook {
    pub(crate) fn new(
        hook: impl Fn(&AuthRejection) -> Response<String> + Send + Sync + 'static,
    ) -> Self {
        RejectionHook(Arc::new(hook))
    }
}

impl fmt::Debug for RejectionHook {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("RejectionHook(..)")
    }
}

/// What every rejection knows of its request.
#[derive(Clone, Debug)]
struct Common {
    path: String,
    bearer: bool,
    hook: Option<RejectionHook>,
}

impl Common {
    fn of(uri: &Uri, extensions: &Extensions) -> Self {
        let (bearer, hook) = RejectionHook::left_by_layer(extensions);
        Common {
            path: request_path(uri, extensions).to_owned(),
            bearer,
            hook,
        }
    }
}

/// The URI the client asked for: under axum's `Router::nest`, the URI a nested service
/// sees lacks the prefix, and axum keeps the whole one in `OriginalUri`.
#[inline]
fn request_uri<'a>(uri: &'a Uri, extensions: &'a Extensions) -> &'a Uri {
    #[cfg(feature = "axum")]
    if let Some(axum::extract::OriginalUri(original)) = extensions.get() {
        return original;
    }
    #[cfg(not(feature = "axum"))]
    let _ = extensions;
    uri
}

/// The path the client asked for (see [`request_uri`]).
pub(crate) fn request_path<'a>(uri: &'a Uri, extensions: &'a Extensions) -> &'a str {
    request_uri(uri, extensions).path()
}

/// What the layer keeps of the request it serves, to name its path in an [`Error`] answered
/// as a response ([`name_path`]): the path (and query) the client asked for; a clone shares
/// its bytes, and it is half a `Uri`'s size in the layer's future. Without axum, no `Error`
/// is answered as a response: nothing.
pub(crate) struct Kept(#[cfg(feature = "axum")] Option<http::uri::PathAndQuery>);

/// See [`Kept`].
pub(crate) fn keep<B>(request: &http::Request<B>) -> Kept {
    #[cfg(feature = "axum")]
    return Kept(
        request_uri(request.uri(), request.extensions())
            .path_and_query()
            .cloned(),
    );
    #[cfg(not(feature = "axum"))]
    {
        let _ = request;
        Kept()
    }
}

/// An [`Error`]'s body asks, in its response's extensions, for the path of the request
/// its handler served (the handler saw no request): the layer that served it names it on
/// the way out, before the body is written. Only such a response costs anything.
pub(crate) fn name_path<B>(response: &mut Response<B>, kept: &Kept) {
    #[cfg(feature = "axum")]
    if let Some(NamePath(path)) = response.extensions_mut().remove::<NamePath>() {
        let _ = path.set(kept.0.as_ref().map_or("/", |kept| kept.path()).to_owned());
    }
    #[cfg(not(feature = "axum"))]
    let _ = (response, kept);
}

/// The request of an [`Error`] answered as a response: its path, once named.
#[cfg(feature = "axum")]
#[derive(Clone)]
pub(crate) struct NamePath(pub(crate) Arc<std::sync::OnceLock<String>>);

macro_rules! define_rejection {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Clone, Debug)]
        pub struct $name {
            common: Common,
        }

        impl From<$name> for AuthRejection {
            fn from(rejection: $name) -> Self {
                AuthRejection::$name(rejection)
            }
        }
    };
}

define_rejection! {
    /// 401 `not_authenticated`: the request carries no token.
    NotAuthenticated
}

define_rejection! {
    /// 403 `forbidden`: signed in, but the route's condition refused the user.
    Forbidden
}

define_rejection! {
    /// 403 `csrf_rejected`: a write with the cookie's token came from another site.
    CsrfRejected
}

define_rejection! {
    /// 500 `id6_layer_missing`: the request did not pass through an
    /// [`Id6Layer`](crate::Id6Layer); a bug in the app's wiring, logged as an error.
    MissingLayer
}

/// 401 with id6's own `errorCode` for a dead token: `invalid_token`, `token_expired`,
/// `token_revoked` or `user_not_found` (the [`TokenRejection`]).
#[derive(Clone, Debug)]
pub struct DeadToken {
    common: Common,
    reason: TokenRejection,
}

impl DeadToken {
    /// id6's reason.
    pub fn reason(&self) -> TokenRejection {
        self.reason
    }
}

impl From<DeadToken> for AuthRejection {
    fn from(rejection: DeadToken) -> Self {
        AuthRejection::DeadToken(rejection)
    }
}

/// 503 `id6_unavailable` with `Retry-After`: id6 could not be asked (down, slow, rate
/// limiting, the caller over its miss budget). The cause is [`error`](Self::error), for
/// logs; the body never shows it.
#[derive(Clone, Debug)]
pub struct Id6Unavailable {
    common: Common,
    retry_after: Duration,
    source: Error,
}

impl Id6Unavailable {
    /// How long the client is asked to wait.
    pub fn retry_after(&self) -> Duration {
        self.retry_after
    }

    /// Why id6 could not be asked.
    pub fn error(&self) -> &Error {
        &self.source
    }
}

impl From<Id6Unavailable> for AuthRejection {
    fn from(rejection: Id6Unavailable) -> Self {
        AuthRejection::Id6Unavailable(rejection)
    }
}

/// Why an extractor, a guard or the CSRF check refused a request: one variant per cause,
/// each a type of its own, answering with id6's error JSON.
///
/// Take `Result<RequireUser, AuthRejection>` in a handler to answer one route your way, or
/// set [`Id6Builder::on_rejection`](crate::Id6Builder::on_rejection) to answer every
/// rejection of the app your way:
///
/// ```
/// # #[cfg(feature = "axum")] {
/// use axum::response::{IntoResponse, Response};
/// use id6_tower::{AuthRejection, RequireUser};
///
/// async fn page(user: Result<RequireUser, AuthRejection>) -> Response {
///     match user {
///         Ok(RequireUser(user)) => format!("Hello, {}!", user.name).into_response(),
///         // No token, or a dead one: your own answer instead of id6's 401 JSON.
///         Err(AuthRejection::NotAuthenticated(_) | AuthRejection::DeadToken(_)) => {
///             (http::StatusCode::UNAUTHORIZED, "please sign in").into_response()
///         }
///         // id6 unavailable (503 with Retry-After), no layer (500)...: as they are.
///         Err(rejection) => rejection.into_response(),
///     }
/// }
/// # let _: axum::Router = axum::Router::new().route("/", axum::routing::get(page));
/// # }
/// ```
#[derive(Clone, Debug)]
#[non_exhaustive]
pub enum AuthRejection {
    /// No token: 401 `not_authenticated`.
    NotAuthenticated(NotAuthenticated),
    /// A token id6 (or the local screen) refused: 401 with id6's `errorCode`.
    DeadToken(DeadToken),
    /// A user the route's condition refused: 403 `forbidden`.
    Forbidden(Forbidden),
    /// A cross-site write carrying the cookie: 403 `csrf_rejected`.
    CsrfRejected(CsrfRejected),
    /// id6 could not be asked: 503 `id6_unavailable`, with `Retry-After`.
    Id6Unavailable(Id6Unavailable),
    /// The layer is missing: 500 `id6_layer_missing`.
    MissingLayer(MissingLayer),
}

impl AuthRejection {
    /// The refusal, dressed for HTTP: with the request's path, whether bearer tokens are
    /// accepted and the app's hook. A missing layer is a wiring bug, logged as an error.
    pub(crate) fn new(refusal: Refusal<'_>, uri: &Uri, extensions: &Extensions) -> Self {
        let common = Common::of(uri, extensions);
        match refusal {
            Refusal::NotAuthenticated => {
                AuthRejection::NotAuthenticated(NotAuthenticated { common })
            }
            Refusal::DeadToken(reason) => AuthRejection::DeadToken(DeadToken { common, reason }),
            Refusal::Forbidden => AuthRejection::Forbidden(Forbidden { common }),
            Refusal::CsrfRejected => AuthRejection::CsrfRejected(CsrfRejected { common }),
            Refusal::Id6Unavailable(error) => AuthRejection::Id6Unavailable(Id6Unavailable {
                common,
                retry_after: error
                    .retry_after()
                    .unwrap_or(DEFAULT_RETRY_AFTER)
                    .max(Duration::from_secs(1)),
                source: error.clone(),
            }),
            Refusal::MissingLayer => {
                tracing::error!(path = common.path.as_str(), "{}", MISSING_LAYER);
                AuthRejection::MissingLayer(MissingLayer { common })
            }
        }
    }

    /// What it refuses, as the one answer names it.
    fn refusal(&self) -> Refusal<'_> {
        match self {
            AuthRejection::NotAuthenticated(_) => Refusal::NotAuthenticated,
            AuthRejection::DeadToken(r) => Refusal::DeadToken(r.reason),
            AuthRejection::Forbidden(_) => Refusal::Forbidden,
            AuthRejection::CsrfRejected(_) => Refusal::CsrfRejected,
            AuthRejection::Id6Unavailable(r) => Refusal::Id6Unavailable(&r.source),
            AuthRejection::MissingLayer(_) => Refusal::MissingLayer,
        }
    }

    pub(crate) fn with_hook(mut self, hook: Option<&RejectionHook>) -> Self {
        if let Some(hook) = hook {
            self.common_mut().hook = Some(hook.clone());
        }
        self
    }

    fn common(&self) -> &Common {
        match self {
            AuthRejection::NotAuthenticated(r) => &r.common,
            AuthRejection::DeadToken(r) => &r.common,
            AuthRejection::Forbidden(r) => &r.common,
            AuthRejection::CsrfRejected(r) => &r.common,
            AuthRejection::Id6Unavailable(r) => &r.common,
            AuthRejection::MissingLayer(r) => &r.common,
        }
    }

    fn common_mut(&mut self) -> &mut Common {
        match self {
            AuthRejection::NotAuthenticated(r) => &mut r.common,
            AuthRejection::DeadToken(r) => &mut r.common,
            AuthRejection::Forbidden(r) => &mut r.common,
            AuthRejection::CsrfRejected(r) => &mut r.common,
            AuthRejection::Id6Unavailable(r) => &mut r.common,
            AuthRejection::MissingLayer(r) => &mut r.common,
        }
    }

    /// The status it answers with.
    pub fn status(&self) -> StatusCode {
        self.refusal().status()
    }

    /// The `errorCode` of its body: id6's own for a rejected token.
    pub fn error_code(&self) -> &'static str {
        self.refusal().error_code()
    }

    /// The `message` of its body.
    pub fn message(&self) -> &'static str {
        self.refusal().message()
    }

    /// The path of the refused request, as the body names it.
    pub fn path(&self) -> &str {
        &self.common().path
    }

    /// How long a 503 asks the client to wait (`Retry-After`); `None` for the others.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            AuthRejection::Id6Unavailable(r) => Some(r.retry_after),
            _ => None,
        }
    }

    /// The JSON body it answers with, in id6's error shape.
    pub fn body_text(&self) -> String {
        error_body(
            self.status(),
            Some(self.path()),
            self.message(),
            Some(self.error_code()),
            None,
        )
    }

    /// The response the crate gives by default, before any
    /// [`on_rejection`](crate::Id6Builder::on_rejection) hook: status, id6's error JSON,
    /// `Retry-After` on a 503, `WWW-Authenticate: Bearer` on a 401 when bearer tokens are
    /// accepted (RFC 6750; `error="invalid_token"` for a rejected one).
    pub fn default_response(&self) -> Response<String> {
        let mut response = json_response(self.status(), self.body_text(), self.retry_after());
        if self.common().bearer && self.status() == StatusCode::UNAUTHORIZED {
            let challenge = match self {
                AuthRejection::DeadToken(_) => "Bearer realm=\"id6\", error=\"invalid_token\"",
                _ => "Bearer realm=\"id6\"",
            };
            response
                .headers_mut()
                .insert(WWW_AUTHENTICATE, HeaderValue::from_static(challenge));
        }
        response
    }

    /// The response: the app's [`on_rejection`](crate::Id6Builder::on_rejection) hook's,
    /// or [`default_response`](Self::default_response). Logged at debug on the
    /// `id6_tower::rejection` target.
    pub fn into_http(self) -> Response<String> {
        tracing::debug!(
            target: "id6_tower::rejection",
            status = self.status().as_u16(),
            error_code = self.error_code(),
            path = self.path(),
            source = self.unavailable_source().map(tracing::field::display),
            "request rejected"
        );
        match &self.common().hook {
            Some(hook) => (hook.0)(&self),
            None => self.default_response(),
        }
    }

    fn unavailable_source(&self) -> Option<&Error> {
        match self {
            AuthRejection::Id6Unavailable(r) => Some(&r.source),
            _ => None,
        }
    }
}

impl fmt::Display for AuthRejection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.message())
    }
}

impl std::error::Error for AuthRejection {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.unavailable_source().map(|e| e as _)
    }
}

/// id6's error JSON, fields in id6's order.
#[derive(serde::Serialize)]
#[serde(rename_all = "camelCase")]
struct ErrorBody<'a> {
    status_code: u16,
    #[serde(skip_serializing_if = "Option::is_none")]
    path: Option<&'a str>,
    message: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    error_code: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    error_details: Option<&'a serde_json::Value>,
}

pub(crate) fn error_body(
    status: StatusCode,
    path: Option<&str>,
    message: &str,
    error_code: Option<&str>,
    error_details: Option<&serde_json::Value>,
) -> String {
    let body = ErrorBody {
        status_code: status.as_u16(),
        path,
        message,
        error_code,
        error_details,
    };
    serde_json::to_string(&body).unwrap_or_default()
}

pub(crate) fn json_response(
    status: StatusCode,
    body: String,
    retry_after: Option<Duration>,
) -> Response<String> {
    let mut response = Response::new(body);
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    if let Some(wait) = retry_after {
        // Round up: a client must not come back before id6's window opens.
        let secs = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
        headers.insert(RETRY_AFTER, HeaderValue::from(secs.max(1)));
    }
    response
}

/// `303 See Other` to the configured sign-in page: the one place a guard redirects to.
pub(crate) fn sign_in_redirect(location: &HeaderValue) -> Response<String> {
    let mut response = Response::new(String::new());
    *response.status_mut() = StatusCode::SEE_OTHER;
    response.headers_mut().insert(LOCATION, location.clone());
    response
}
