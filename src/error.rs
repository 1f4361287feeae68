//! The crate's one error type: opaque, cheap to clone, never carrying a token.

use std::error::Error as StdError;
use std::fmt;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use http::StatusCode;

type BoxError = Box<dyn StdError + Send + Sync>;

/// A setting as people meet it: the builder's setter, and the environment variable that
/// sets it too (empty for a setter without one). Config errors name both, so whichever way
/// it was set, the fix is findable.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Setting {
    pub(crate) setter: &'static str,
    pub(crate) var: &'static str,
}

/// An error from id6-tower: a bad setting, or id6 that could not give an answer.
///
/// It is one pointer wide and cheap to clone, so the same error can sit in the request
/// extensions of every request that waited on one failed id6 call. Ask what happened with the
/// `is_*` predicates. Neither `Display` nor `Debug` ever shows a token: errors only mention
/// the id6 URL, an HTTP status or what was wrong with id6's reply.
///
/// ```
/// use id6_tower::{Id6, UserToken};
///
/// # async fn run() {
/// // Settings are checked at `build`, naming the setter and the environment variable.
/// let err = Id6::builder("ftp://id6.example.com").build().unwrap_err();
/// assert!(err.is_config());
/// assert_eq!(err.setting(), Some("url"));
/// assert_eq!(err.variable(), Some("ID6_URL"));
///
/// // A token that is no id6 JWT is refused at once, with id6's reason: no call made.
/// let id6 = Id6::builder("http://127.0.0.1:9/api").build().unwrap();
/// let err = id6.user(&UserToken::new("a.b.c").unwrap()).await.unwrap_err();
/// assert!(err.is_unauthenticated());
/// assert_eq!(err.error_code(), Some("invalid_token"));
///
/// // A well-formed one (HS256, a numeric `userId`) against an id6 that cannot be reached:
/// // unavailable, worth retrying.
/// let jwt = format!("eyJhbGciOiJIUzI1NiJ9.eyJ1c2VySWQiOjF9.{}", "s".repeat(43));
/// let err = id6.user(&UserToken::new(&jwt).unwrap()).await.unwrap_err();
/// assert!(err.is_unavailable() && err.is_connect());
/// assert!(!err.to_string().contains(&jwt));
/// # }
/// # tokio::runtime::Runtime::new().unwrap().block_on(run());
/// ```
#[derive(Clone)]
pub struct Error {
    inner: Arc<Inner>,
}

struct Inner {
    kind: Kind,
    source: Option<BoxError>,
}

#[derive(Debug)]
pub(crate) enum Kind {
    /// A setting given to the builder or in the environment is not usable.
    Config { setting: Setting, reason: String },
    /// id6 could not be reached (DNS, refused, reset before an answer).
    Connect,
    /// id6 took longer than the configured timeout.
    Timeout,
    /// id6 answered 429; `reset` is when its window opens again, if it said.
    RateLimited { reset: Option<SystemTime> },
    /// id6 answered with a status that carries no verdict on the token (5xx, 404, 3xx...).
    Status(StatusCode),
    /// id6 answered 200 but not with a user or `null` (HTML, truncated JSON, wrong type).
    Body(&'static str),
    /// id6's answer was longer than the configured cap.
    BodyTooLarge { limit: usize },
    /// Any other failure of the HTTP exchange.
    Request,
    /// The resolution task could not run or did not finish.
    Runtime(&'static str),
    /// id6's authorization server refused our shared secret (401): a configuration error.
    SecretRejected,
    /// The breaker is open: id6 is not called until `until`.
    CircuitOpen {
        until: SystemTime,
        rate_limited: bool,
    },
    /// Every allowed id6 call stayed in flight for the queue timeout.
    Overloaded,
    /// The caller's miss budget is spent until `until`: id6 was not called.
    OverBudget { until: SystemTime },
    /// A typed call needs the end user's token and the request had none.
    NoToken,
    /// A typed call's token was refused without calling id6: it cannot be an id6 token (its
    /// shape, or the JWT secret), or id6 refused it a moment ago (the negative cache).
    Refused(TokenRejection),
    /// id6 refused a typed call with its error JSON (401, 400, 404...).
    Api(Box<ApiError>),
    /// A typed call's input was refused before anything was sent.
    Invalid {
        code: &'static str,
        details: serde_json::Value,
    },
}

/// id6's error JSON: `{"statusCode", "path", "message", "errorCode"?, "errorDetails"?}`.
#[derive(Debug)]
pub(crate) struct ApiError {
    pub(crate) status: StatusCode,
    pub(crate) code: Option<String>,
    pub(crate) message: Option<String>,
    pub(crate) details: Option<serde_json::Value>,
}

impl Error {
    pub(crate) fn new(kind: Kind) -> Self {
        Error {
            inner: Arc::new(Inner { kind, source: None }),
        }
    }

    pub(crate) fn with_source(kind: Kind, source: impl Into<BoxError>) -> Self {
        Error {
            inner: Arc::new(Inner {
                kind,
                source: Some(source.into()),
            }),
        }
    }

    pub(crate) fn config(setting: Setting, reason: impl Into<String>) -> Self {
        Error::new(Kind::Config {
            setting,
            reason: reason.into(),
        })
    }

    /// Classifies a failed reqwest exchange; the URL stays (it holds no token) but loses any
    /// user name and password, the request headers never reach reqwest's error.
    pub(crate) fn from_reqwest(mut err: reqwest::Error) -> Self {
        if let Some(url) = err.url_mut() {
            if url.password().is_some() || !url.username().is_empty() {
                let _ = url.set_password(None);
                let _ = url.set_username("");
            }
        }
        let kind = if err.is_timeout() {
            Kind::Timeout
        } else if err.is_connect() {
            Kind::Connect
        } else {
            Kind::Request
        };
        Error::with_source(kind, err)
    }

    /// A setting of [`Id6Builder`](crate::Id6Builder) or of the environment was rejected.
    pub fn is_config(&self) -> bool {
        matches!(self.inner.kind, Kind::Config { .. })
    }

    /// The rejected setting, by the name of its [`Id6Builder`](crate::Id6Builder) setter
    /// (`"url"`...), for a config error.
    pub fn setting(&self) -> Option<&'static str> {
        match self.inner.kind {
            Kind::Config { setting, .. } => Some(setting.setter),
            _ => None,
        }
    }

    /// The rejected setting, by the name of its environment variable (`"ID6_URL"`...),
    /// for a config error.
    pub fn variable(&self) -> Option<&'static str> {
        match self.inner.kind {
            // A setting only code can set has no variable.
            Kind::Config { setting, .. } => Some(setting.var).filter(|var| !var.is_empty()),
            _ => None,
        }
    }

    /// id6 could not be asked or gave no usable answer: down, slow, rate limiting, 5xx,
    /// garbage, or refusing our shared secret. Retrying later may help.
    pub fn is_unavailable(&self) -> bool {
        !matches!(
            self.inner.kind,
            Kind::Config { .. }
                | Kind::NoToken
                | Kind::Refused(_)
                | Kind::Api(_)
                | Kind::Invalid { .. }
        )
    }

    /// The caller is not signed in: no token, or id6 answered 401 to a typed call.
    pub fn is_unauthenticated(&self) -> bool {
        match &self.inner.kind {
            Kind::NoToken | Kind::Refused(_) => true,
            Kind::Api(api) => api.status == StatusCode::UNAUTHORIZED,
            _ => false,
        }
    }

    /// The input was refused, by id6 (400) or locally before sending (same rules as id6).
    pub fn is_validation(&self) -> bool {
        match &self.inner.kind {
            Kind::Invalid { .. } => true,
            Kind::Api(api) => api.status == StatusCode::BAD_REQUEST,
            _ => false,
        }
    }

    /// id6's authorization server refused our shared secret: fix the configuration.
    pub fn is_secret_rejected(&self) -> bool {
        matches!(self.inner.kind, Kind::SecretRejected)
    }

    /// id6's `errorCode` (`invalid_body`, `token_revoked`, `format_not_allowed`...), or the
    /// code of a local refusal with the same meaning.
    pub fn error_code(&self) -> Option<&str> {
        match &self.inner.kind {
            Kind::Api(api) => api.code.as_deref(),
            Kind::Invalid { code, .. } => Some(code),
            Kind::NoToken => Some("not_authenticated"),
            Kind::Refused(why) => Some(why.error_code()),
            _ => None,
        }
    }

    /// id6's message for its own refusals (or ours with the same meaning): safe to show the
    /// end user, unlike [`Display`](std::fmt::Display), which is for logs.
    pub fn message(&self) -> Option<&str> {
        match &self.inner.kind {
            Kind::Api(api) => api.message.as_deref(),
            Kind::Invalid {
                code: "invalid_body",
                ..
            } => Some("Invalid body"),
            Kind::Invalid { .. } => Some("Invalid request"),
            Kind::NoToken => Some("You are not authenticated"),
            Kind::Refused(why) => Some(why.message()),
            _ => None,
        }
    }

    /// id6's `errorDetails`, or the details of a local refusal.
    pub fn error_details(&self) -> Option<&serde_json::Value> {
        match &self.inner.kind {
            Kind::Api(api) => api.details.as_ref(),
            Kind::Invalid { details, .. } => Some(details),
            _ => None,
        }
    }

    /// id6 could not be reached at all.
    pub fn is_connect(&self) -> bool {
        matches!(self.inner.kind, Kind::Connect)
    }

    /// id6 did not answer within the configured timeout.
    pub fn is_timeout(&self) -> bool {
        matches!(self.inner.kind, Kind::Timeout)
    }

    /// The call may have reached id6 and no answer came back (a timeout, an exchange cut
    /// short): what it asked for may have been done.
    pub(crate) fn may_have_reached_id6(&self) -> bool {
        matches!(self.inner.kind, Kind::Timeout | Kind::Request)
    }

    /// id6 answered `429 Too Many Requests`; see [`retry_after`](Self::retry_after).
    pub fn is_rate_limited(&self) -> bool {
        matches!(
            self.inner.kind,
            Kind::RateLimited { .. }
                | Kind::CircuitOpen {
                    rate_limited: true,
                    ..
                }
        )
    }

    /// id6 was not called at all: the breaker is open after a 429 or repeated failures, or
    /// too many calls were already in flight.
    pub fn is_not_attempted(&self) -> bool {
        matches!(
            self.inner.kind,
            Kind::CircuitOpen { .. } | Kind::Overloaded | Kind::OverBudget { .. }
        )
    }

    /// id6 was not called because this caller's tokens already cost their miss budget of
    /// calls; see [`retry_after`](Self::retry_after).
    pub fn is_over_budget(&self) -> bool {
        matches!(self.inner.kind, Kind::OverBudget { .. })
    }

    /// id6 answered something that is neither a user nor `null`, or too much of it.
    pub fn is_body(&self) -> bool {
        matches!(self.inner.kind, Kind::Body(_) | Kind::BodyTooLarge { .. })
    }

    /// The HTTP status id6 answered with, when that status is the problem.
    pub fn status(&self) -> Option<StatusCode> {
        match &self.inner.kind {
            Kind::Status(status) => Some(*status),
            Kind::Api(api) => Some(api.status),
            Kind::RateLimited { .. } => Some(StatusCode::TOO_MANY_REQUESTS),
            Kind::SecretRejected => Some(StatusCode::UNAUTHORIZED),
            _ => None,
        }
    }

    /// How long until id6 will answer again, when known: `X-RateLimit-Reset` of a 429, the
    /// breaker's reopening, or the caller's next call in its miss budget.
    pub fn retry_after(&self) -> Option<Duration> {
        match self.inner.kind {
            Kind::RateLimited { reset: Some(reset) }
            | Kind::CircuitOpen { until: reset, .. }
            | Kind::OverBudget { until: reset } => Some(
                reset
                    .duration_since(SystemTime::now())
                    .unwrap_or(Duration::ZERO),
            ),
            _ => None,
        }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.inner.kind {
            Kind::Config { setting, reason } if setting.var.is_empty() => {
                write!(f, "invalid id6 setting `{}`: {}", setting.setter, reason)
            }
            Kind::Config { setting, reason } => write!(
                f,
                "invalid id6 setting `{}` ({}): {}",
                setting.setter, setting.var, reason
            ),
            Kind::Connect => f.write_str("id6 unavailable: could not connect"),
            Kind::Timeout => f.write_str("id6 unavailable: no answer within the timeout"),
            Kind::RateLimited { .. } => f.write_str("id6 unavailable: rate limited (429)"),
            Kind::Status(status) => write!(f, "id6 unavailable: unexpected status {status}"),
            Kind::Body(what) => write!(f, "id6 unavailable: unusable answer ({what})"),
            Kind::BodyTooLarge { limit } => {
                write!(f, "id6 unavailable: answer longer than {limit} bytes")
            }
            Kind::Request => f.write_str("id6 unavailable: request failed"),
            Kind::Runtime(what) => write!(f, "id6 unavailable: {what}"),
            Kind::SecretRejected => f.write_str(
                "id6 unavailable: the authorization server refused our secret \
                 (check ID6_AUTHORIZATION_SECRET)",
            ),
            Kind::CircuitOpen { rate_limited, .. } => write!(
                f,
                "id6 unavailable: not calling it for now ({})",
                if *rate_limited {
                    "rate limited"
                } else {
                    "unreachable"
                }
            ),
            Kind::Overloaded => f.write_str("id6 unavailable: too many calls in flight"),
            Kind::OverBudget { .. } => f.write_str(
                "id6 not asked: this caller's unknown tokens already cost their budget of id6 calls",
            ),
            Kind::NoToken => f.write_str("not authenticated: the request has no id6 token"),
            Kind::Refused(why) => write!(
                f,
                "not authenticated: the token was refused without calling id6 ({})",
                why.error_code()
            ),
            Kind::Api(api) => {
                write!(f, "id6 refused the call ({}", api.status.as_u16())?;
                if let Some(code) = &api.code {
                    write!(f, " {code}")?;
                }
                f.write_str(")")?;
                if let Some(message) = &api.message {
                    write!(f, ": {message}")?;
                }
                Ok(())
            }
            Kind::Invalid { code, details } => {
                write!(f, "refused before sending ({code}): {details}")
            }
        }
    }
}

impl fmt::Debug for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut d = f.debug_struct("id6_tower::Error");
        d.field("kind", &self.inner.kind);
        if let Some(source) = &self.inner.source {
            d.field("source", source);
        }
        d.finish()
    }
}

impl StdError for Error {
    fn source(&self) -> Option<&(dyn StdError + 'static)> {
        self.inner
            .source
            .as_deref()
            .map(|e| e as &(dyn StdError + 'static))
    }
}

/// Why a token was refused, in id6's words: its `errorCode` and message for a bad token.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum TokenRejection {
    /// `invalid_token`: not a token id6 issued (garbage, a wrong signature), or one id6
    /// refused for a reason it did not name.
    InvalidToken,
    /// `token_expired`: past id6's token lifetime.
    TokenExpired,
    /// `token_revoked`: issued before its user signed out everywhere.
    TokenRevoked,
    /// `user_not_found`: its user no longer exists.
    UserNotFound,
    /// `signed_out`: the app signed it out ([`Id6::sign_out`](crate::Id6::sign_out)). Not
    /// one of id6's answers, and no revocation: id6 only clears the cookie, and still
    /// accepts the token until it expires. A connection's end reason only
    /// ([`Session::end_reason`](crate::Session::end_reason)).
    SignedOut,
}

impl TokenRejection {
    /// id6's `errorCode`.
    pub fn error_code(self) -> &'static str {
        match self {
            TokenRejection::InvalidToken => "invalid_token",
            TokenRejection::TokenExpired => "token_expired",
            TokenRejection::TokenRevoked => "token_revoked",
            TokenRejection::UserNotFound => "user_not_found",
            TokenRejection::SignedOut => "signed_out",
        }
    }

    /// id6's message.
    pub fn message(self) -> &'static str {
        match self {
            TokenRejection::InvalidToken => "Invalid token",
            TokenRejection::TokenExpired => "Token expired",
            TokenRejection::TokenRevoked => "Token revoked",
            TokenRejection::UserNotFound => "User not found",
            TokenRejection::SignedOut => "Signed out",
        }
    }

    /// From id6's `errorCode`; one it does not document reads as `invalid_token`.
    pub(crate) fn from_code(code: Option<&str>) -> Self {
        match code {
            Some("token_expired") => TokenRejection::TokenExpired,
            Some("token_revoked") => TokenRejection::TokenRevoked,
            Some("user_not_found") => TokenRejection::UserNotFound,
            _ => TokenRejection::InvalidToken,
        }
    }
}

impl std::fmt::Display for TokenRejection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.error_code())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn is_small_and_shareable() {
        fn assert_traits<T: Send + Sync + Clone + 'static>() {}
        assert_traits::<Error>();
        assert_eq!(std::mem::size_of::<Error>(), std::mem::size_of::<usize>());
    }

    #[test]
    fn predicates_follow_the_kind() {
        let e = Error::config(
            Setting {
                setter: "url",
                var: "ID6_URL",
            },
            "is not set",
        );
        assert!(e.is_config() && !e.is_unavailable());
        assert_eq!(e.setting(), Some("url"));
        assert_eq!(e.variable(), Some("ID6_URL"));
        assert_eq!(
            e.to_string(),
            "invalid id6 setting `url` (ID6_URL): is not set"
        );

        let reset = SystemTime::now() + Duration::from_secs(30);
        let e = Error::new(Kind::RateLimited { reset: Some(reset) });
        assert!(e.is_rate_limited() && e.is_unavailable());
        assert_eq!(e.status(), Some(StatusCode::TOO_MANY_REQUESTS));
        let wait = e.retry_after().unwrap();
        assert!(wait <= Duration::from_secs(30) && wait > Duration::from_secs(25));

        let e = Error::new(Kind::Status(StatusCode::BAD_GATEWAY));
        assert_eq!(e.status(), Some(StatusCode::BAD_GATEWAY));
        assert!(!e.is_timeout() && !e.is_connect() && e.retry_after().is_none());
    }
}
