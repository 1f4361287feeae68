//! axum glue: the extractors [`CurrentUser`] (maybe a user) and [`RequireUser`] (a user or
//! 401), their rejection [`AuthRejection`], and [`Error`] as a response, all answering with
//! id6's error JSON.

use std::ops::Deref;
use std::pin::Pin;
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};

use axum_core::body::Body;
use axum_core::extract::{FromRequestParts, OptionalFromRequestParts};
use axum_core::response::{IntoResponse, Response};
use bytes::Bytes;
use http::request::Parts;
use http::StatusCode;
use http_body::{Frame, SizeHint};

use crate::error::Error;
use crate::outcome::{self, Need, UNAVAILABLE};
use crate::rejection::{
    self, error_body, json_response, AuthRejection, NamePath, DEFAULT_RETRY_AFTER,
};
use crate::user::Authentication;
use crate::user::User;

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
/// (`errorCode: "not_authenticated"` without a token, id6's own code for a rejected one:
/// `token_revoked`, `token_expired`...). `Option<RequireUser>` gives `None` instead. The
/// refusal is an [`AuthRejection`].
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

/// The one answer for the request, as far as the extractor needs a user; a refusal dressed
/// as id6's error JSON.
fn answer(parts: &Parts, need: Need) -> Result<Option<Arc<User>>, AuthRejection> {
    outcome::answer(Authentication::of(&parts.extensions), need)
        .map(Option::<&Arc<User>>::cloned)
        .map_err(|refusal| AuthRejection::new(refusal, &parts.uri, &parts.extensions))
}

impl<S: Sync> FromRequestParts<S> for CurrentUser {
    type Rejection = AuthRejection;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        answer(parts, Need::MaybeUser).map(CurrentUser)
    }
}

impl<S: Sync> FromRequestParts<S> for RequireUser {
    type Rejection = AuthRejection;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        outcome::required(Authentication::of(&parts.extensions))
            .map(|user| RequireUser(user.clone()))
            .map_err(|refusal| AuthRejection::new(refusal, &parts.uri, &parts.extensions))
    }
}

impl<S: Sync> OptionalFromRequestParts<S> for RequireUser {
    type Rejection = AuthRejection;

    async fn from_request_parts(
        parts: &mut Parts,
        _state: &S,
    ) -> Result<Option<Self>, Self::Rejection> {
        Ok(answer(parts, Need::MaybeUser)?.map(RequireUser))
    }
}

impl IntoResponse for AuthRejection {
    fn into_response(self) -> Response {
        self.into_http().map(Body::from)
    }
}

macro_rules! into_response_via_auth_rejection {
    ($($name:ident),*) => {$(
        impl IntoResponse for rejection::$name {
            fn into_response(self) -> Response {
                AuthRejection::from(self).into_response()
            }
        }
    )*};
}

into_response_via_auth_rejection!(
    NotAuthenticated,
    DeadToken,
    Forbidden,
    CsrfRejected,
    Id6Unavailable,
    MissingLayer
);

/// `errorCode` of an [`Error`] answered as a response that has none of id6's (a
/// configuration error, an answer of id6 without a code).
const INTERNAL_ERROR: &str = "internal_error";

/// A typed call's error as an answer to the app's own client, in the rejections' shape
/// (id6's error JSON: `statusCode`, `path`, `message`, `errorCode`, and id6's `errorDetails`
/// when it gave some): unauthenticated 401, validation 400, `picture_not_set` 404,
/// unavailable 503 with `Retry-After`, configuration 500 (`internal_error`). id6's own
/// refusals keep its message; for the others (id6 unavailable, a configuration error) the
/// body says only that, and the detail goes to the log (`id6_tower::rejection`, debug).
/// `path` is the request's (axum's original URI under `Router::nest`) when the handler runs
/// inside [`Id6::layer`](crate::Id6::layer), as it does to have a token to pass.
///
/// ```
/// use axum::extract::State;
/// use axum::http::{header, request::Parts, StatusCode};
/// use axum::response::IntoResponse;
/// use axum::{routing::post, Router};
/// use id6_tower::Id6;
///
/// // No token: 401 `not_authenticated`; id6 down: 503 with `Retry-After`.
/// async fn logout(State(id6): State<Id6>, parts: Parts) -> Result<impl IntoResponse, id6_tower::Error> {
///     id6.sign_out(&parts).await?;
///     Ok((StatusCode::NO_CONTENT, [(header::SET_COOKIE, id6.clearing_cookie())]))
/// }
/// # fn app(id6: Id6) -> Router {
/// #     Router::new().route("/logout", post(logout)).layer(id6.layer()).with_state(id6)
/// # }
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
        let (message, code) = match (status, self.error_code()) {
            (StatusCode::SERVICE_UNAVAILABLE, _) => (UNAVAILABLE, "id6_unavailable"),
            // id6's refusals, or ours with the same meaning: their own words.
            (_, Some(code)) => (self.message().unwrap_or("Request refused"), code),
            _ => ("Internal error", INTERNAL_ERROR),
        };
        let retry = (status == StatusCode::SERVICE_UNAVAILABLE)
            .then(|| self.retry_after().unwrap_or(DEFAULT_RETRY_AFTER));
        // The body names the request's path, as the rejections do: the layer that served
        // the request names it on the way out (this handler sees no request).
        let path = Arc::new(OnceLock::new());
        let body = ErrorJson {
            status,
            message: message.to_owned(),
            code: code.to_owned(),
            details: self.error_details().cloned(),
            error: self.to_string(),
            path: path.clone(),
            written: OnceLock::new(),
            sent: false,
        };
        let mut response = json_response(status, String::new(), retry).map(|_| Body::new(body));
        response.extensions_mut().insert(NamePath(path));
        response
    }
}

/// An [`Error`]'s JSON body, written when first read: by then the layer has named the
/// request's path (see [`rejection::name_path`]); outside the layer, it has no path.
struct ErrorJson {
    status: StatusCode,
    message: String,
    code: String,
    details: Option<serde_json::Value>,
    /// For the log line, written with the body (when the path is known).
    error: String,
    path: Arc<OnceLock<String>>,
    written: OnceLock<Bytes>,
    sent: bool,
}

impl ErrorJson {
    fn bytes(&self) -> &Bytes {
        self.written.get_or_init(|| {
            let path = self.path.get().map(String::as_str);
            tracing::debug!(
                target: "id6_tower::rejection",
                status = self.status.as_u16(),
                error_code = self.code,
                path,
                error = self.error,
                "typed call failed"
            );
            let code = Some(self.code.as_str());
            let details = self.details.as_ref();
            error_body(self.status, path, &self.message, code, details).into()
        })
    }
}

impl http_body::Body for ErrorJson {
    type Data = Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        if std::mem::replace(&mut self.sent, true) {
            return Poll::Ready(None);
        }
        Poll::Ready(Some(Ok(Frame::data(self.bytes().clone()))))
    }

    fn is_end_stream(&self) -> bool {
        self.sent
    }

    fn size_hint(&self) -> SizeHint {
        let left = if self.sent { 0 } else { self.bytes().len() };
        SizeHint::with_exact(left as u64)
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use http::header::{CONTENT_TYPE, RETRY_AFTER, WWW_AUTHENTICATE};

    use super::*;
    use crate::error::Kind;
    use crate::error::TokenRejection;
    use crate::layer::Served;

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
        assert!(matches!(rejection, AuthRejection::NotAuthenticated(_)));
        assert_eq!(rejection.status(), StatusCode::UNAUTHORIZED);
        assert!(current(anon.clone()).await.unwrap().0.is_none());
        assert!(optional(anon).await.unwrap().is_none());

        let revoked = Some(Authentication::Rejected(TokenRejection::TokenRevoked));
        let rejection = require(revoked.clone()).await.unwrap_err();
        let AuthRejection::DeadToken(ref rejected) = rejection else {
            panic!("{rejection:?}");
        };
        assert_eq!(rejected.reason(), TokenRejection::TokenRevoked);
        assert_eq!(rejection.error_code(), "token_revoked");
        assert!(current(revoked.clone()).await.unwrap().0.is_none());
        assert!(optional(revoked).await.unwrap().is_none());

        let down = Some(Authentication::Unavailable(Error::new(Kind::Connect)));
        for rejection in [
            require(down.clone()).await.unwrap_err(),
            current(down.clone()).await.unwrap_err(),
            optional(down).await.unwrap_err(),
        ] {
            assert!(matches!(rejection, AuthRejection::Id6Unavailable(_)));
            assert_eq!(rejection.retry_after(), Some(DEFAULT_RETRY_AFTER));
            // The cause is for logs, never the body.
            assert!(
                !rejection.body_text().contains("connect"),
                "{}",
                rejection.body_text()
            );
        }

        for rejection in [
            require(None).await.unwrap_err(),
            current(None).await.unwrap_err(),
            optional(None).await.unwrap_err(),
        ] {
            assert_eq!(rejection.status(), StatusCode::INTERNAL_SERVER_ERROR);
            assert_eq!(rejection.error_code(), "id6_layer_missing");
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
        assert!(!response.headers().contains_key(WWW_AUTHENTICATE));
        let body = axum_body(response).await;
        assert_eq!(
            body,
            serde_json::json!({"statusCode": 401, "path": "/me",
                "message": "You are not authenticated", "errorCode": "not_authenticated"})
        );

        let response = require(Some(Authentication::Rejected(TokenRejection::TokenExpired)))
            .await
            .unwrap_err()
            .into_response();
        assert_eq!(
            axum_body(response).await,
            serde_json::json!({"statusCode": 401, "path": "/me",
                "message": "Token expired", "errorCode": "token_expired"})
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
        let body = axum_body(response).await;
        assert_eq!(body["errorCode"], "id6_unavailable");
        assert_eq!(body["message"], UNAVAILABLE);
    }

    #[tokio::test]
    async fn bearer_401s_carry_a_challenge() {
        let challenge = |verdict: Authentication| {
            let mut parts = parts_with(None);
            parts.extensions.insert(Served {
                verdict,
                lifeline: None,
                bearer: true,
                hook: None,
            });
            let refusal = outcome::required(Authentication::of(&parts.extensions)).unwrap_err();
            let response =
                AuthRejection::new(refusal, &parts.uri, &parts.extensions).into_response();
            response.headers()[WWW_AUTHENTICATE]
                .to_str()
                .unwrap()
                .to_owned()
        };
        assert_eq!(challenge(Authentication::Anonymous), "Bearer realm=\"id6\"");
        assert_eq!(
            challenge(Authentication::Rejected(TokenRejection::TokenRevoked)),
            "Bearer realm=\"id6\", error=\"invalid_token\""
        );
    }

    #[tokio::test]
    async fn errors_answer_with_their_status_and_no_internal_detail() {
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
            (Error::new(Kind::Connect), 503, Some("id6_unavailable")),
            (
                Error::new(Kind::SecretRejected),
                503,
                Some("id6_unavailable"),
            ),
            (
                Error::config(crate::config::setting::URL, "bad"),
                500,
                Some("internal_error"),
            ),
        ];
        for (error, status, code) in cases {
            let internal = error.to_string();
            let response = error.into_response();
            assert_eq!(response.status().as_u16(), status);
            assert_eq!(response.headers().contains_key(RETRY_AFTER), status == 503);
            let body = axum_body(response).await;
            assert_eq!(body["statusCode"], status);
            assert_eq!(body["errorCode"].as_str(), code);
            if status == 400 {
                assert_eq!(body["errorDetails"][0]["path"][0], "name");
            }
            if status >= 500 {
                let message = body["message"].as_str().unwrap();
                assert_ne!(message, internal);
                for word in ["connect", "timeout", "secret", "setting", "ID6_"] {
                    assert!(!message.contains(word), "{message}");
                }
            }
        }
    }

    async fn axum_body(response: Response) -> serde_json::Value {
        use http_body_util::BodyExt;
        let bytes = response.into_body().collect().await.unwrap().to_bytes();
        serde_json::from_slice(&bytes).unwrap()
    }
}
