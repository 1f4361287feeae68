//! The one answer to "may this request go on": the request's [`Authentication`] and what the
//! route needs give the user, or a [`Refusal`]. The extractors and guards dress a refusal as
//! id6's error JSON ([`rejection`](crate::rejection)), the gRPC helpers as a tonic `Status`.

use std::sync::Arc;

use http::StatusCode;

use crate::error::{Error, TokenRejection};
use crate::user::{Authentication, User};

/// What a route asks of its caller.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Need {
    /// A signed-in user, or a refusal.
    User,
    /// The user if there is one: anonymous callers (no token, a dead one) pass with none.
    // Asked by the extractors and the gRPC helpers, which their features gate; the guards
    // always need a user.
    #[cfg_attr(not(any(feature = "axum", feature = "tonic")), allow(dead_code))]
    MaybeUser,
}

/// Why a request does not go on, before it is dressed for HTTP or gRPC.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Refusal<'a> {
    /// No token.
    NotAuthenticated,
    /// A token id6 (or the local screen) refused, with its reason.
    DeadToken(TokenRejection),
    /// A user the route's condition refused (guards only).
    Forbidden,
    /// A cross-site write carrying the cookie (the CSRF guard only).
    CsrfRejected,
    /// id6 could not be asked; the cause is for the logs.
    Id6Unavailable(&'a Error),
    /// No [`Authentication`] in the request: the layer is missing.
    MissingLayer,
}

/// The user the request's `Authentication` names, as far as the route needs one; `None`
/// only for [`Need::MaybeUser`] and an anonymous caller.
pub(crate) fn answer(
    authentication: Option<&Authentication>,
    need: Need,
) -> Result<Option<&Arc<User>>, Refusal<'_>> {
    match (authentication, need) {
        (Some(Authentication::Authenticated(user)), _) => Ok(Some(user)),
        (Some(Authentication::Unavailable(error)), _) => Err(Refusal::Id6Unavailable(error)),
        (None, _) => Err(Refusal::MissingLayer),
        // No token, or a dead one: anonymous.
        (Some(_), Need::MaybeUser) => Ok(None),
        (Some(Authentication::Rejected(why)), Need::User) => Err(Refusal::DeadToken(*why)),
        (Some(Authentication::Anonymous), Need::User) => Err(Refusal::NotAuthenticated),
    }
}

/// The signed-in user, or why not: [`answer`] for a route that needs one.
pub(crate) fn required(authentication: Option<&Authentication>) -> Result<&Arc<User>, Refusal<'_>> {
    // `Need::User` never answers `Ok(None)`; should it, it would be no user at all.
    answer(authentication, Need::User)?.ok_or(Refusal::NotAuthenticated)
}

/// Said when id6 cannot be asked, over HTTP and gRPC alike.
pub(crate) const UNAVAILABLE: &str = "The authentication service is unavailable, retry later";

impl Refusal<'_> {
    /// Its HTTP status.
    pub(crate) fn status(self) -> StatusCode {
        match self {
            Refusal::NotAuthenticated | Refusal::DeadToken(_) => StatusCode::UNAUTHORIZED,
            Refusal::Forbidden | Refusal::CsrfRejected => StatusCode::FORBIDDEN,
            Refusal::Id6Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            Refusal::MissingLayer => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// Its `errorCode`: id6's own for a dead token.
    pub(crate) fn error_code(self) -> &'static str {
        match self {
            Refusal::NotAuthenticated => "not_authenticated",
            Refusal::DeadToken(why) => why.error_code(),
            Refusal::Forbidden => "forbidden",
            Refusal::CsrfRejected => "csrf_rejected",
            Refusal::Id6Unavailable(_) => "id6_unavailable",
            Refusal::MissingLayer => "id6_layer_missing",
        }
    }

    /// What the caller is told: id6's words for a dead token, never internal detail.
    pub(crate) fn message(self) -> &'static str {
        match self {
            Refusal::NotAuthenticated => "You are not authenticated",
            Refusal::DeadToken(why) => why.message(),
            Refusal::Forbidden => "You are not allowed to access this resource",
            Refusal::CsrfRejected => "Cross-site request refused",
            Refusal::Id6Unavailable(_) => UNAVAILABLE,
            Refusal::MissingLayer => "Internal error",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::Kind;

    #[test]
    fn each_authentication_has_one_answer() {
        let alice = Authentication::Authenticated(Arc::new(User::new(1, "Alice")));
        let revoked = Authentication::Rejected(TokenRejection::TokenRevoked);
        let down = Authentication::Unavailable(Error::new(Kind::Connect));
        let anon = Authentication::Anonymous;

        for need in [Need::User, Need::MaybeUser] {
            assert_eq!(answer(Some(&alice), need).unwrap().unwrap().id, 1);
            assert!(matches!(
                answer(Some(&down), need),
                Err(Refusal::Id6Unavailable(_))
            ));
            assert!(matches!(answer(None, need), Err(Refusal::MissingLayer)));
        }
        assert!(answer(Some(&anon), Need::MaybeUser).unwrap().is_none());
        assert!(answer(Some(&revoked), Need::MaybeUser).unwrap().is_none());
        assert!(matches!(
            required(Some(&anon)),
            Err(Refusal::NotAuthenticated)
        ));
        let refusal = required(Some(&revoked)).unwrap_err();
        assert_eq!(refusal.status(), StatusCode::UNAUTHORIZED);
        assert_eq!(refusal.error_code(), "token_revoked");
        assert_eq!(refusal.message(), "Token revoked");
    }
}
