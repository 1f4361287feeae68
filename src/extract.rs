//! axum glue: the extractors [`CurrentUser`] (maybe a user) and [`RequireUser`] (a user or
//! 401), their rejection [`AuthRejection`], and [`Error`] as a response, all answering with
//! id6's error JSON.

use std::fmt;
use std::ops::Deref;
use std::sync::Arc;
use std::time::Duration;

use axum_core::body::Body;
use axum_core::extract::{FromRequestParts, OptionalFromRequestParts};
use axum_core::response::{IntoResponse, Response};
use http::header::{CONTENT_TYPE, RETRY_AFTER};
use http::request::Parts;
use http::{HeaderValue, StatusCode};

use crate::{Authentication, Error, User};

/// Retry-After when id6 gave no wait of its own.
const DEFAULT_RETRY_AFTER: Duration = Duration::from_secs(5);

/// The caller, if signed in. Rejects only when id6 is unavailable (503) or the layer is
/// missing (500).
///
/// ```
/// use id6_tower::CurrentUser;
///
/// async fn home(CurrentUser(user): CurrentUser) -> String {
///     match user {
///         Some(user) => format!("Hello, {}!", user.name),
///         None => "Hello, anonymous!".to_owned(),
///     }
/// }
/// # let _ = axum::Router::<()>::new().route("/", axum::routing::get(home));
/// ```
#[derive(Clone, Debug)]
pub struct CurrentUser(pub Option<Arc<User>>);

/// The signed-in caller; anonymous callers get a 401 with id6's error body
/// (`errorCode: "not_authenticated"`). `Option<RequireUser>` gives `None` instead.
///
/// ```
/// use axum::Json;
/// use id6_tower::{RequireUser, User};
/// use std::sync::Arc;
///
/// async fn me(RequireUser(user): RequireUser) -> Json<Arc<User>> {
///     Json(user)
/// }
/// # let _ = axum::Router::<()>::new().route("/me", axum::routing::get(me));
/// ```
#[derive(Clone, Debug)]
pub struct RequireUser(pub Arc<User>);

impl Deref for RequireUser {
    type Target = User;

    fn deref(&self) -> &User {
        &self.0
    }
}

/// The verdict the layer left in the request, or the rejection for its absence or failure.
fn verdict(parts: &Parts) -> Result<Option<Arc<User>>, AuthRejection> {
    match parts.extensions.get::<Authentication>() {
        Some(Authentication::Authenticated(user)) => Ok(Some(user.clone())),
        Some(Authentication::Anonymous) => Ok(None),
        Some(Authentication::Unavailable(error)) => Err(AuthRejection::unavailable(error, parts)),
        None => {
            tracing::error!(path = parts.uri.path(), "{}", MISSING_LAYER);
            Err(AuthRejection::new(RejectionKind::MissingLayer, parts))
        }
    }
}

impl<S: Sync> FromRequestParts<S> for CurrentUser {
    type Rejection = AuthRejection;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        verdict(parts).map(CurrentUser)
    }
}

impl<S: Sync> FromRequestParts<S> for RequireUser {
    type Rejection = AuthRejection;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        match verdict(parts)? {
            Some(user) => Ok(RequireUser(user)),
            None => Err(AuthRejection::new(RejectionKind::NotAuthenticated, parts)),
        }
    }
}

impl<S: Sync> OptionalFromRequestParts<S> for RequireUser {
    type Rejection = AuthRejection;

    async fn from_request_parts(
        parts: &mut Parts,
        _state: &S,
    ) -> Result<Option<Self>, Self::Rejection> {
        Ok(verdict(parts)?.map(RequireUser))
    }
}

const MISSING_LAYER: &str = "id6-tower: no Authentication in the request extensions; \
     wrap this router or service with `id6.layer()` (e.g. `Router::layer(id6.layer())`) \
     so that CurrentUser and RequireUser can work";

/// Why [`CurrentUser`] or [`RequireUser`] refused a request. Answers with id6's error JSON:
/// `{"statusCode", "path", "message", "errorCode"}`.
///
/// Take `Result<RequireUser, AuthRejection>` to answer in your own way:
///
/// ```
/// use axum::response::{IntoResponse, Response};
/// use id6_tower::{AuthRejection, RejectionKind, RequireUser};
///
/// async fn page(user: Result<RequireUser, AuthRejection>) -> Response {
///     match user {
///         Ok(RequireUser(user)) => format!("Hello, {}!", user.name).into_response(),
///         // Anonymous: your own answer instead of id6's 401 JSON.
///         Err(rejection) if rejection.kind() == RejectionKind::NotAuthenticated => {
///             (http::StatusCode::UNAUTHORIZED, "please sign in").into_response()
///         }
///         // id6 unavailable (503 with Retry-After), or no layer (500): as they are.
///         Err(rejection) => rejection.into_response(),
///     }
/// }
/// # let _: axum::Router = axum::Router::new().route("/", axum::routing::get(page));
/// ```
#[derive(Debug)]
pub struct AuthRejection {
    kind: RejectionKind,
    path: String,
    retry_after: Duration,
    source: Option<Error>,
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

fn json_response(status: StatusCode, body: String, retry_after: Option<Duration>) -> Response {
    let mut response = Response::new(Body::from(body));
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

/// A typed call's error as an answer to the app's own client, in id6's error JSON:
/// unauthenticated 401, validation 400 (with id6's `errorCode` and `errorDetails`),
/// `picture_not_set` 404, unavailable 503 with `Retry-After`, configuration 500.
///
/// ```
/// use axum::http::{HeaderMap, StatusCode};
/// use id6_tower::Id6;
///
/// async fn logout(id6: Id6, headers: HeaderMap) -> Result<StatusCode, id6_tower::Error> {
///     id6.sign_out(&headers).await?;
///     Ok(StatusCode::NO_CONTENT)
/// }
/// ```
impl IntoResponse for Error {
    fn into_response(self) -> Response {
        let status = if self.is_secret_rejected() || self.is_unavailable() {
            StatusCode::SERVICE_UNAVAILABLE
        } else if self.is_config() {
            StatusCode::INTERNAL_SERVER_ERROR
        } else if self.is_unauthenticated() {
            StatusCode::UNAUTHORIZED
        } else if self.is_validation() {
            StatusCode::BAD_REQUEST
        } else {
            self.status().unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
        };
        let message = self.to_string();
        let code = if status == StatusCode::SERVICE_UNAVAILABLE {
            Some("id6_unavailable")
        } else {
            self.error_code()
        };
        let body = ErrorBody {
            status_code: status.as_u16(),
            path: None,
            message: &message,
            error_code: code,
            error_details: self.error_details(),
        };
        let retry = (status == StatusCode::SERVICE_UNAVAILABLE)
            .then(|| self.retry_after().unwrap_or(DEFAULT_RETRY_AFTER));
        json_response(
            status,
            serde_json::to_string(&body).unwrap_or_default(),
            retry,
        )
    }
}

/// What an [`AuthRejection`] is about.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum RejectionKind {
    /// 401: the caller has no valid token.
    NotAuthenticated,
    /// 503: id6 could not be asked; retry later.
    Unavailable,
    /// 500: the request did not pass through an [`Id6Layer`](crate::Id6Layer).
    MissingLayer,
}

impl AuthRejection {
    fn new(kind: RejectionKind, parts: &Parts) -> Self {
        AuthRejection {
            kind,
            path: parts.uri.path().to_owned(),
            retry_after: DEFAULT_RETRY_AFTER,
            source: None,
        }
    }

    fn unavailable(error: &Error, parts: &Parts) -> Self {
        let mut rejection = AuthRejection::new(RejectionKind::Unavailable, parts);
        if let Some(wait) = error.retry_after() {
            rejection.retry_after = wait.max(Duration::from_secs(1));
        }
        rejection.source = Some(error.clone());
        rejection
    }

    /// What the rejection is about.
    pub fn kind(&self) -> RejectionKind {
        self.kind
    }

    /// The status it answers with: 401, 503 or 500.
    pub fn status(&self) -> StatusCode {
        match self.kind {
            RejectionKind::NotAuthenticated => StatusCode::UNAUTHORIZED,
            RejectionKind::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
            RejectionKind::MissingLayer => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    fn message_and_code(&self) -> (&'static str, &'static str) {
        match self.kind {
            RejectionKind::NotAuthenticated => ("You are not authenticated", "not_authenticated"),
            RejectionKind::Unavailable => (
                "The authentication service is unavailable, retry later",
                "id6_unavailable",
            ),
            RejectionKind::MissingLayer => (MISSING_LAYER, "id6_layer_missing"),
        }
    }

    /// The JSON body it answers with, in id6's error shape.
    pub fn body_text(&self) -> String {
        let (message, error_code) = self.message_and_code();
        let body = ErrorBody {
            status_code: self.status().as_u16(),
            path: Some(&self.path),
            message,
            error_code: Some(error_code),
            error_details: None,
        };
        serde_json::to_string(&body).unwrap_or_default()
    }

    /// Seconds a 503 asks the client to wait (`Retry-After`); `None` for other kinds.
    pub fn retry_after(&self) -> Option<Duration> {
        (self.kind == RejectionKind::Unavailable).then_some(self.retry_after)
    }
}

impl fmt::Display for AuthRejection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.message_and_code().0)
    }
}

impl std::error::Error for AuthRejection {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.source.as_ref().map(|e| e as _)
    }
}

impl IntoResponse for AuthRejection {
    fn into_response(self) -> Response {
        json_response(self.status(), self.body_text(), self.retry_after())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::Kind;

    fn parts_with(verdict: Option<Authentication>) -> Parts {
        let mut request = http::Request::builder().uri("/me?x=1").body(()).unwrap();
        if let Some(v) = verdict {
            request.extensions_mut().insert(v);
        }
        request.into_parts().0
    }

    async fn require(v: Option<Authentication>) -> Result<RequireUser, AuthRejection> {
        <RequireUser as FromRequestParts<()>>::from_request_parts(&mut parts_with(v), &()).await
    }

    async fn current(v: Option<Authentication>) -> Result<CurrentUser, AuthRejection> {
        <CurrentUser as FromRequestParts<()>>::from_request_parts(&mut parts_with(v), &()).await
    }

    async fn optional(v: Option<Authentication>) -> Result<Option<RequireUser>, AuthRejection> {
        <RequireUser as OptionalFromRequestParts<()>>::from_request_parts(&mut parts_with(v), &())
            .await
    }

    #[tokio::test]
    async fn each_verdict_maps_to_its_answer() {
        let alice = Authentication::Authenticated(Arc::new(User::new(1, "Alice")));
        assert_eq!(require(Some(alice.clone())).await.unwrap().name, "Alice");
        assert_eq!(current(Some(alice.clone())).await.unwrap().0.unwrap().id, 1);
        assert_eq!(optional(Some(alice)).await.unwrap().unwrap().id, 1);

        let anon = Some(Authentication::Anonymous);
        let rejection = require(anon.clone()).await.unwrap_err();
        assert_eq!(rejection.status(), StatusCode::UNAUTHORIZED);
        assert!(current(anon.clone()).await.unwrap().0.is_none());
        assert!(optional(anon).await.unwrap().is_none());

        let down = Some(Authentication::Unavailable(Error::new(Kind::Connect)));
        for rejection in [
            require(down.clone()).await.unwrap_err(),
            current(down.clone()).await.unwrap_err(),
            optional(down).await.unwrap_err(),
        ] {
            assert_eq!(rejection.kind(), RejectionKind::Unavailable);
            assert_eq!(rejection.retry_after(), Some(DEFAULT_RETRY_AFTER));
        }

        for rejection in [
            require(None).await.unwrap_err(),
            current(None).await.unwrap_err(),
            optional(None).await.unwrap_err(),
        ] {
            assert_eq!(rejection.status(), StatusCode::INTERNAL_SERVER_ERROR);
            assert!(rejection.body_text().contains("id6.layer()"));
        }
    }

    #[tokio::test]
    async fn responses_carry_ids_error_shape() {
        let response = require(Some(Authentication::Anonymous))
            .await
            .unwrap_err()
            .into_response();
        assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
        assert_eq!(response.headers()[CONTENT_TYPE], "application/json");
        let body = axum_body(response).await;
        assert_eq!(
            body,
            serde_json::json!({"statusCode": 401, "path": "/me",
                "message": "You are not authenticated", "errorCode": "not_authenticated"})
        );

        let reset = std::time::SystemTime::now() + Duration::from_millis(42_500);
        let limited = Error::new(Kind::RateLimited { reset: Some(reset) });
        let response = current(Some(Authentication::Unavailable(limited)))
            .await
            .unwrap_err()
            .into_response();
        assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
        let secs: u64 = response.headers()[RETRY_AFTER]
            .to_str()
            .unwrap()
            .parse()
            .unwrap();
        assert!((42..=43).contains(&secs), "{secs}");
        assert_eq!(axum_body(response).await["errorCode"], "id6_unavailable");
    }

    #[tokio::test]
    async fn errors_answer_with_their_status() {
        let api = |status: StatusCode, code: &str| {
            Error::new(Kind::Api(Box::new(crate::error::ApiError {
                status,
                code: Some(code.to_owned()),
                message: Some("m".into()),
                details: Some(serde_json::json!([{"path": ["name"]}])),
            })))
        };
        let cases = [
            (
                api(StatusCode::BAD_REQUEST, "invalid_body"),
                400,
                Some("invalid_body"),
            ),
            (
                api(StatusCode::UNAUTHORIZED, "token_revoked"),
                401,
                Some("token_revoked"),
            ),
            (
                api(StatusCode::NOT_FOUND, "picture_not_set"),
                404,
                Some("picture_not_set"),
            ),
            (Error::new(Kind::NoToken), 401, Some("not_authenticated")),
            (Error::new(Kind::Timeout), 503, Some("id6_unavailable")),
            (
                Error::new(Kind::SecretRejected),
                503,
                Some("id6_unavailable"),
            ),
            (Error::config(crate::config::setting::URL, "bad"), 500, None),
        ];
        for (error, status, code) in cases {
            let response = error.into_response();
            assert_eq!(response.status().as_u16(), status);
            assert_eq!(response.headers().contains_key(RETRY_AFTER), status == 503);
            let body = axum_body(response).await;
            assert_eq!(body["statusCode"], status);
            assert_eq!(body["errorCode"].as_str(), code);
            if status == 400 {
                assert_eq!(body["errorDetails"][0]["path"][0], "name");
            }
        }
    }

    async fn axum_body(response: Response) -> serde_json::Value {
        use http_body_util::BodyExt;
        let bytes = response.into_body().collect().await.unwrap().to_bytes();
        serde_json::from_slice(&bytes).unwrap()
    }
}
