//! `User`, as id6's `GET /user` describes it, and the per-request `Authentication`.

use std::sync::Arc;

use serde::{Deserialize, Deserializer, Serialize};

use crate::error::{Error, TokenRejection};

/// A signed-in id6 user, as `GET /user` answers it.
///
/// Deserializing is tolerant: unknown fields are ignored, and every field but `id` may be
/// absent or `null`. Serializing writes id6's own shape (`authType`, `bio: null`, no
/// `picture` when unset), so a handler can answer `Json(user)`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
#[non_exhaustive]
pub struct User {
    /// id6's numeric user id.
    pub id: u64,
    /// Display name (empty when id6 gave none).
    #[serde(default, deserialize_with = "null_as_empty")]
    pub name: String,
    /// Email address, when id6 has one.
    #[serde(default)]
    pub email: Option<String>,
    /// How the user signs in (`"local"`, `"github"`...); `/authorize` calls it
    /// `authProvider`.
    #[serde(default, alias = "authProvider")]
    pub auth_type: Option<String>,
    /// Free-text biography.
    #[serde(default)]
    pub bio: Option<String>,
    /// Relative URL of the picture (`/api/user/picture?v=<md5>`), changing at each upload.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub picture: Option<String>,
    /// ISO 639-1 language code; id6 defaults it to `"en"`.
    #[serde(default)]
    pub language: Option<String>,
    /// When id6 last revoked this user's tokens (ms since the epoch); only the private
    /// `/authorize` answer carries it.
    #[serde(
        default,
        deserialize_with = "lenient_millis",
        skip_serializing_if = "Option::is_none"
    )]
    pub invalidate_tokens_at: Option<u64>,
}

impl User {
    /// A user with an id and a name and nothing else, for tests and fixtures.
    pub fn new(id: u64, name: impl Into<String>) -> Self {
        User {
            id,
            name: name.into(),
            email: None,
            auth_type: None,
            bio: None,
            picture: None,
            language: None,
            invalidate_tokens_at: None,
        }
    }
}

/// Milliseconds as a number, a numeric string or an ISO date; anything else is `None`, since
/// it only serves to evict.
fn lenient_millis<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
    Ok(match serde_json::Value::deserialize(d)? {
        serde_json::Value::Number(n) => n.as_u64(),
        serde_json::Value::String(s) => s.parse().ok().or_else(|| {
            humantime::parse_rfc3339_weak(&s)
                .ok()
                .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
                .and_then(|d| u64::try_from(d.as_millis()).ok())
        }),
        _ => None,
    })
}

fn null_as_empty<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    Ok(Option::<String>::deserialize(d)?.unwrap_or_default())
}

/// Who is calling, as the [`Id6Layer`](crate::Id6Layer) found out: left in every request's
/// `http::Extensions`.
///
/// Any framework can read it: [`Authentication::of`]`(request.extensions())` gives
/// `Option<&Authentication>` (`None` only when the layer is missing), and
/// [`user`](Self::user) turns it into the `Option<&User>` view. The user sits in an `Arc`,
/// so the cache hands it to each request without copying it.
///
/// ```
/// use id6_tower::{Authentication, User};
///
/// fn greet(request: &http::Request<()>) -> String {
///     match Authentication::of(request.extensions()).and_then(Authentication::user) {
///         Some(user) => format!("Hello, {}!", user.name),
///         None => "Hello, anonymous!".to_owned(),
///     }
/// }
/// ```
#[derive(Clone, Debug)]
#[non_exhaustive]
pub enum Authentication {
    /// id6 named the user who owns the request's token.
    Authenticated(Arc<User>),
    /// No token at all.
    Anonymous,
    /// A token, refused: by id6 (invalid, expired, revoked, user gone), or locally before
    /// asking (not an id6 token, a bad signature or an expiry seen with the JWT secret).
    /// Anonymous too: [`is_anonymous`](Self::is_anonymous) is true.
    Rejected(TokenRejection),
    /// id6 could not be asked or gave no usable answer; the request's identity is unknown.
    Unavailable(Error),
}

impl Authentication {
    /// The user, when there is one.
    pub fn user(&self) -> Option<&User> {
        self.user_arc().map(|user| &**user)
    }

    /// The shared user, to keep beyond the request without copying it.
    pub fn user_arc(&self) -> Option<&Arc<User>> {
        match self {
            Authentication::Authenticated(user) => Some(user),
            _ => None,
        }
    }

    /// True when the request is known to have no valid token: none, or a rejected one.
    pub fn is_anonymous(&self) -> bool {
        matches!(
            self,
            Authentication::Anonymous | Authentication::Rejected(_)
        )
    }

    /// Why the request's token was refused, when it was.
    pub fn rejection(&self) -> Option<TokenRejection> {
        match self {
            Authentication::Rejected(why) => Some(*why),
            _ => None,
        }
    }

    /// Why the identity could not be known, when id6 was unavailable.
    pub fn unavailable(&self) -> Option<&Error> {
        match self {
            Authentication::Unavailable(error) => Some(error),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn reads_ids_shape_tolerantly() {
        let full: User = serde_json::from_value(json!({
            "id": 1, "authType": "local", "name": "Alice", "email": "alice@example.com",
            "bio": null, "language": "en", "picture": "/api/user/picture?v=abc",
            "somethingNew": {"nested": [1, 2]}
        }))
        .unwrap();
        assert_eq!(full.id, 1);
        assert_eq!(full.auth_type.as_deref(), Some("local"));
        assert_eq!(full.picture.as_deref(), Some("/api/user/picture?v=abc"));
        assert_eq!(full.bio, None);

        let sparse: User = serde_json::from_value(json!({"id": 7, "name": null})).unwrap();
        assert_eq!(sparse, User::new(7, ""));
        assert!(serde_json::from_value::<User>(json!({"name": "no id"})).is_err());
    }

    #[test]
    fn writes_ids_shape() {
        let mut user = User::new(1, "Alice");
        user.auth_type = Some("local".into());
        let value = serde_json::to_value(&user).unwrap();
        assert_eq!(
            value,
            json!({"id": 1, "name": "Alice", "email": null, "authType": "local",
                   "bio": null, "language": null})
        );
    }
}
