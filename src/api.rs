//! The rest of id6's Authentication API as typed calls on [`Id6`], each forwarding the end
//! user's token, and each keeping the cache as truthful as the call made the world.
//!
//! | call | id6 | what it does to the cache |
//! |---|---|---|
//! | [`Id6::user`] | `GET /user` | stores the fresh user; a 401 evicts the token |
//! | [`Id6::sign_out`] | `POST /auth/signout` | evicts that token |
//! | [`Id6::update_profile`] | `POST /user/profile` | evicts every cached token of the user |
//! | `Id6::update_picture` (feature `pictures`) | `POST /user/picture` | evicts every cached token of the user |
//! | `Id6::picture` (feature `pictures`) | `GET /user/picture` | nothing |
//! | [`Id6::disconnect`] | `GET /user/disconnect` | evicts every cached token of the user, and no id6 answer already in flight can put the user back |
//!
//! Any call that id6 answers with 401 evicts the token it carried, and remembers id6's
//! refusal as a miss would.
//!
//! Every call passes the door a miss passes, so that no route to id6 is cheaper for a
//! stranger than the layer: a token that cannot be id6's (its shape; with the JWT secret,
//! its signature and age) is refused without a call, and so is one id6 refused a moment ago
//! (the negative cache); a token the cache does not know costs a call of the caller's miss
//! budget, charged when the call starts; one it knows as a user costs nothing. Give the calls the request (or its `Parts`) rather than
//! its headers, so that the caller is found as the layer finds it; calls that cannot tell
//! their caller share one budget.

use http::header::CONTENT_TYPE;
use http::{HeaderMap, HeaderValue, Method};
use serde::Serialize;
use serde_json::json;

use crate::error::TokenRejection;
use crate::error::{Error, Kind};
use crate::id6::Id6;
use crate::resolve::{Payer, Scope};
use crate::token::UserToken;
use crate::user::Authentication;
use crate::user::User;

/// A whole profile for [`Id6::update_profile`]: id6 replaces the previous one, so a `None`
/// bio clears it and a `None` language resets it to `"en"`.
///
/// ```
/// let profile = id6_tower::Profile::new("Alice").bio("Down the rabbit hole").language("fr");
/// # let _ = profile;
/// ```
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct Profile {
    /// Display name: required, at most 128 characters.
    pub name: String,
    /// At most 256 characters; not empty (`None` clears it).
    pub bio: Option<String>,
    /// An ISO 639-1 code such as `"en"` (`None` resets to `"en"`).
    pub language: Option<String>,
}

impl Profile {
    /// A profile with a name and neither bio nor language.
    pub fn new(name: impl Into<String>) -> Self {
        Profile {
            name: name.into(),
            bio: None,
            language: None,
        }
    }

    /// Sets the bio.
    #[must_use]
    pub fn bio(mut self, bio: impl Into<String>) -> Self {
        self.bio = Some(bio.into());
        self
    }

    /// Sets the language.
    #[must_use]
    pub fn language(mut self, language: impl Into<String>) -> Self {
        self.language = Some(language.into());
        self
    }

    /// A profile from a JSON body, read as id6 reads `POST /user/profile` (for an app that
    /// passes its own clients' profile edits on): an object with a string `name`, and
    /// optionally `bio` and `language` (strings, or `null`); other fields are ignored, as
    /// id6 ignores them. Anything else is id6's `400 invalid_body`, with `errorDetails` in
    /// id6's shape, before anything is sent; the rules of [`Id6::update_profile`] follow.
    ///
    /// ```
    /// use id6_tower::Profile;
    ///
    /// let profile = Profile::from_json(br#"{"name": "Alice", "language": "fr"}"#).unwrap();
    /// assert_eq!(profile.language.as_deref(), Some("fr"));
    /// let refused = Profile::from_json(br#"{"bio": "no name"}"#).unwrap_err();
    /// assert_eq!(refused.error_code(), Some("invalid_body"));
    /// assert_eq!(refused.error_details().unwrap()[0]["type"], "any.required");
    /// ```
    ///
    /// # Errors
    ///
    /// A validation [`Error`] (`is_validation`, code `invalid_body`).
    pub fn from_json(body: &[u8]) -> Result<Profile, Error> {
        let not_json =
            || json!([{ "message": "the body is not JSON", "path": [], "type": "object.base" }]);
        let value: serde_json::Value =
            serde_json::from_slice(body).map_err(|_| invalid_body(not_json()))?;
        let Some(object) = value.as_object() else {
            return Err(invalid_body(
                json!([{ "message": "\"value\" must be of type object", "path": [], "type": "object.base" }]),
            ));
        };
        profile_rules(object).map_err(invalid_body)
    }

    /// id6's rules, checked before sending.
    fn validate(&self) -> Result<(), Error> {
        let value = serde_json::to_value(self).unwrap_or_default();
        let object = value.as_object().cloned().unwrap_or_default();
        profile_rules(&object).map(drop).map_err(invalid_body)
    }
}

/// id6's `400 invalid_body`, with its `errorDetails`.
fn invalid_body(details: serde_json::Value) -> Error {
    Error::new(Kind::Invalid {
        code: "invalid_body",
        details,
    })
}

/// The ISO 639-1 codes, sorted: the only `language` values id6 takes (any other two
/// letters, `"zz"` say, are a `400 invalid_body`).
const ISO_639_1: [&str; 184] = [
    "aa", "ab", "ae", "af", "ak", "am", "an", "ar", "as", "av", "ay", "az", "ba", "be", "bg", "bh",
    "bi", "bm", "bn", "bo", "br", "bs", "ca", "ce", "ch", "co", "cr", "cs", "cu", "cv", "cy", "da",
    "de", "dv", "dz", "ee", "el", "en", "eo", "es", "et", "eu", "fa", "ff", "fi", "fj", "fo", "fr",
    "fy", "ga", "gd", "gl", "gn", "gu", "gv", "ha", "he", "hi", "ho", "hr", "ht", "hu", "hy", "hz",
    "ia", "id", "ie", "ig", "ii", "ik", "io", "is", "it", "iu", "ja", "jv", "ka", "kg", "ki", "kj",
    "kk", "kl", "km", "kn", "ko", "kr", "ks", "ku", "kv", "kw", "ky", "la", "lb", "lg", "li", "ln",
    "lo", "lt", "lu", "lv", "mg", "mh", "mi", "mk", "ml", "mn", "mr", "ms", "mt", "my", "na", "nb",
    "nd", "ne", "ng", "nl", "nn", "no", "nr", "nv", "ny", "oc", "oj", "om", "or", "os", "pa", "pi",
    "pl", "ps", "pt", "qu", "rm", "rn", "ro", "ru", "rw", "sa", "sc", "sd", "se", "sg", "si", "sk",
    "sl", "sm", "sn", "so", "sq", "sr", "ss", "st", "su", "sv", "sw", "ta", "te", "tg", "th", "ti",
    "tk", "tl", "tn", "to", "tr", "ts", "tt", "tw", "ty", "ug", "uk", "ur", "uz", "ve", "vi", "vo",
    "wa", "wo", "xh", "yi", "yo", "za", "zh", "zu",
];

/// id6's rules for the body of `POST /user/profile`, in id6's words: the profile, or the
/// `errorDetails` items of its `400 invalid_body`. `name` a string, required, not empty, at
/// most 128 characters; `bio` a string of 1 to 256 characters, or omitted or `null`;
/// `language` an ISO 639-1 code ([`ISO_639_1`], lowercase), or omitted or `null` (id6 then
/// stores `"en"`); other fields ignored. The one statement of them: the typed calls check a
/// [`Profile`] with it before sending, and `MockId6` answers with it.
pub(crate) fn profile_rules(
    object: &serde_json::Map<String, serde_json::Value>,
) -> Result<Profile, serde_json::Value> {
    use serde_json::Value;
    let mut problems = Vec::new();
    let mut refuse = |field: &str, kind: &str, message: String| {
        problems.push(json!({ "message": message, "path": [field], "type": kind }));
    };
    let mut text = |field: &str, required: bool, max: usize| match object.get(field) {
        None | Some(Value::Null) if !required => None,
        None => {
            refuse(field, "any.required", format!("\"{field}\" is required"));
            None
        }
        Some(Value::String(text)) if text.is_empty() => {
            refuse(
                field,
                "string.empty",
                format!("\"{field}\" is not allowed to be empty"),
            );
            None
        }
        Some(Value::String(text)) if text.chars().count() > max => {
            refuse(
                field,
                "string.max",
                format!("\"{field}\" length must be less than or equal to {max} characters long"),
            );
            None
        }
        Some(Value::String(text)) => Some(text.clone()),
        Some(_) => {
            refuse(
                field,
                "string.base",
                format!("\"{field}\" must be a string"),
            );
            None
        }
    };
    let name = text("name", true, 128);
    let bio = text("bio", false, 256);
    let language = match object.get("language") {
        None | Some(Value::Null) => None,
        Some(Value::String(code)) if ISO_639_1.binary_search(&code.as_str()).is_ok() => {
            Some(code.clone())
        }
        Some(_) => {
            refuse(
                "language",
                "any.only",
                "\"language\" must be a valid ISO 639-1 code".to_owned(),
            );
            None
        }
    };
    if !problems.is_empty() {
        return Err(Value::Array(problems));
    }
    Ok(Profile {
        name: name.unwrap_or_default(),
        bio,
        language,
    })
}

/// The attributes id6 clears its cookie with (`POST /auth/signout`).
const CLEARING_ATTRIBUTES: &str = "Max-Age=0; Path=/; HttpOnly";

impl Id6 {
    /// The token in `from`, let through the typed calls' door (see the module docs), and
    /// who pays for its call.
    fn admitted(&self, from: &(impl TokenSource + ?Sized)) -> Result<(UserToken, Payer), Error> {
        let (headers, extensions) = caller_parts(from);
        self.resolver()
            .admit_call(headers, extensions, from.user_token(self))
    }

    /// The token's user, for the evictions that follow a change: cached, or read from the
    /// JWT payload (id6 just accepted the token, so the payload is genuine).
    fn owner_of(&self, token: &UserToken) -> Option<u64> {
        self.resolver()
            .user_id_of(&self.resolver().key_of(token))
            .or_else(|| token.unverified_user_id())
    }

    /// Runs a typed call for the token `from` holds, once through the door; a 401 means the
    /// token is dead: its cached verdict goes everywhere, and id6's refusal is remembered.
    pub(crate) async fn call(
        &self,
        method: Method,
        path: &str,
        from: &(impl TokenSource + ?Sized),
        build: impl FnOnce(reqwest::RequestBuilder) -> reqwest::RequestBuilder,
    ) -> Result<(UserToken, reqwest::Response), Error> {
        let (token, payer) = self.admitted(from)?;
        let resolver = self.resolver();
        let charge = || resolver.charge(&payer);
        match self
            .client()
            .call(method, path, &token, charge, build)
            .await
        {
            Ok(response) => Ok((token, response)),
            Err(error) => {
                if error.is_unauthenticated() {
                    let key = resolver.key_of(&token);
                    let refused = TokenRejection::from_code(error.error_code());
                    resolver.end_watched(&key, refused);
                    resolver.evict(Scope::Token(key)).await;
                    let started = resolver.load_start();
                    resolver
                        .remember(&token, &Authentication::Rejected(refused), started)
                        .await;
                }
                Err(error)
            }
        }
    }

    /// Asks id6 afresh who owns the token (`GET /user`), bypassing the cache and refreshing
    /// it with the answer.
    ///
    /// # Errors
    ///
    /// Unauthenticated (no token, id6's 401 with its `errorCode`), or unavailable.
    pub async fn user(&self, from: &(impl TokenSource + ?Sized)) -> Result<User, Error> {
        let started = self.resolver().load_start();
        let (token, response) = self.call(Method::GET, "user", from, |r| r).await?;
        match self.client().read_json::<Option<User>>(response).await? {
            Some(user) => {
                let user = std::sync::Arc::new(user);
                let verdict = Authentication::Authenticated(user.clone());
                self.resolver().remember(&token, &verdict, started).await;
                Ok(User::clone(&user))
            }
            None => Err(Error::new(Kind::NoToken)),
        }
    }

    /// Signs the user out (`POST /auth/signout`), evicts the token from the cache (with
    /// Redis, from the shared cache and every instance) and ends the connections watching it
    /// ([`Session`](crate::Session)) with `signed_out`.
    ///
    /// id6 only clears the cookie in the browser, and this call has no browser: the token
    /// itself stays valid on id6 until it expires. Clear the cookie in your response with
    /// [`clearing_cookie`](Self::clearing_cookie). To end every session of the user, use
    /// [`disconnect`](Self::disconnect).
    ///
    /// ```
    /// use axum::http::{header, request::Parts, StatusCode};
    /// use axum::{extract::State, response::IntoResponse, routing::post, Router};
    /// use id6_tower::Id6;
    ///
    /// // Pass the request's `Parts`: the caller is then found as the layer finds it. The
    /// // cookie goes whatever id6 answers (with id6 down, the token left the cache anyway).
    /// async fn logout(State(id6): State<Id6>, parts: Parts) -> impl IntoResponse {
    ///     if let Err(error) = id6.sign_out(&parts).await {
    ///         eprintln!("id6 was not told of a sign-out: {error}");
    ///     }
    ///     (StatusCode::NO_CONTENT, [(header::SET_COOKIE, id6.clearing_cookie())])
    /// }
    ///
    /// # fn app(id6: Id6) -> Router {
    /// Router::new()
    ///     .route("/logout", post(logout).route_layer(id6.csrf()))
    ///     .layer(id6.layer())
    ///     .with_state(id6)
    /// # }
    /// ```
    ///
    /// # Errors
    ///
    /// Unauthenticated or unavailable. id6's sign-out revokes nothing, so the app's part does
    /// not wait on it: with id6 unavailable, a token the cache holds is evicted (and its
    /// connections end) all the same, and the error says id6 was not told.
    pub async fn sign_out(&self, from: &(impl TokenSource + ?Sized)) -> Result<(), Error> {
        let resolver = self.resolver();
        let key = match self.call(Method::POST, "auth/signout", from, |r| r).await {
            Ok((token, _)) => resolver.key_of(&token),
            // id6 refused the token (a 401 evicted it already): nothing more to do here.
            Err(error) if !error.is_unavailable() => return Err(error),
            // id6 gave no answer: out of the cache all the same, but only a token the cache
            // holds as a user's (a stranger's junk must not cost a broadcast each).
            Err(error) => {
                let held = from
                    .user_token(self)
                    .map(|token| resolver.key_of(&token))
                    .filter(|key| resolver.user_id_of(key).is_some());
                if let Some(key) = held {
                    resolver.evict(Scope::SignedOut(key)).await;
                }
                return Err(error);
            }
        };
        // Its connections end saying what happened, here and on every instance.
        resolver.evict(Scope::SignedOut(key)).await;
        Ok(())
    }

    /// The `Set-Cookie` value that clears id6's cookie in the browser, for the response to a
    /// sign-out ([`sign_out`](Self::sign_out), [`disconnect`](Self::disconnect)): the
    /// configured [`cookie_name`](crate::Id6Builder::cookie_name) with the
    /// [`dead_cookie_attributes`](crate::Id6Builder::dead_cookie_attributes) when
    /// [`clear_dead_cookie`](crate::Id6Builder::clear_dead_cookie) is on, else with id6's
    /// own `Max-Age=0; Path=/; HttpOnly` (`auth=; Max-Age=0; Path=/; HttpOnly` by default).
    /// The attributes must match the cookie's `Path` and `Domain` for the browser to drop it.
    pub fn clearing_cookie(&self) -> HeaderValue {
        if let Some(configured) = self.dead_cookie() {
            return configured.clone();
        }
        let name = &self.resolver().settings().cookie_name;
        // A checked cookie name (letters, digits, `-`, `_`, `.`) makes a valid value.
        HeaderValue::try_from(format!("{name}=; {CLEARING_ATTRIBUTES}"))
            .unwrap_or_else(|_| HeaderValue::from_static("auth=; Max-Age=0; Path=/; HttpOnly"))
    }

    /// Revokes every token of the user on id6 (`GET /user/disconnect`) and evicts them all
    /// from the cache at once; an id6 answer already in flight cannot put the user back.
    ///
    /// # Errors
    ///
    /// Unauthenticated or unavailable. When no answer came once the call was sent (a
    /// timeout), the user's cached tokens are evicted all the same: id6 may have revoked them.
    pub async fn disconnect(&self, from: &(impl TokenSource + ?Sized)) -> Result<(), Error> {
        // Read before the call: once it succeeds, the cache no longer knows the owner.
        let owner = from
            .user_token(self)
            .and_then(|token| self.owner_of(&token));
        let called = self.call(Method::GET, "user/disconnect", from, |r| r).await;
        let scope = match &called {
            // Unknown owner (not a JWT we can read): the only safe eviction is everything.
            Ok(_) => Some(owner.map_or(Scope::All, Scope::User)),
            // No answer once the call was sent (a timeout, a connection cut): id6 may have
            // revoked the tokens all the same. The owner's are evicted, at one id6 call per
            // token; an owner unknown here is not worth the whole cache.
            Err(error) if error.may_have_reached_id6() => owner.map(Scope::User),
            Err(_) => None,
        };
        if let Some(scope) = scope {
            self.resolver().evict(scope).await;
        }
        called.map(|_| ())
    }

    /// Replaces the user's profile (`POST /user/profile`), checked first with id6's rules;
    /// the user's cached tokens are evicted so the next request sees the new profile.
    ///
    /// # Errors
    ///
    /// Validation (checked locally, or id6's 400 with `errorCode` and `errorDetails`),
    /// unauthenticated, or unavailable.
    pub async fn update_profile(
        &self,
        from: &(impl TokenSource + ?Sized),
        profile: &Profile,
    ) -> Result<(), Error> {
        profile.validate()?;
        let body = serde_json::to_vec(profile).map_err(|e| Error::with_source(Kind::Request, e))?;
        let (token, _) = self
            .call(Method::POST, "user/profile", from, |r| {
                r.header(CONTENT_TYPE, "application/json").body(body)
            })
            .await?;
        self.evict_owner(&token).await;
        Ok(())
    }

    pub(crate) async fn evict_owner(&self, token: &UserToken) {
        let scope = self
            .owner_of(token)
            .map_or(Scope::Token(self.resolver().key_of(token)), Scope::User);
        self.resolver().evict(scope).await;
    }

    /// Forgets the cached verdict of the token in `from`; the next request asks id6. With
    /// Redis, the shared entry and the other instances follow in the background.
    pub fn invalidate_token(&self, from: &(impl TokenSource + ?Sized)) {
        if let Some(token) = from.user_token(self) {
            self.resolver()
                .evict_in_background(Scope::Token(self.resolver().key_of(&token)));
        }
    }

    /// Forgets every cached token of the user; no id6 answer already in flight can put the
    /// user back. With Redis, every instance follows in the background.
    pub fn invalidate_user(&self, user_id: u64) {
        self.resolver().evict_in_background(Scope::User(user_id));
    }

    /// Forgets everything cached. With Redis, everywhere, in the background.
    pub fn clear(&self) {
        self.resolver().evict_in_background(Scope::All);
    }
}

mod sealed {
    /// Keeps [`TokenSource`](super::TokenSource) implemented by this crate only, and carries
    /// what the crate reads besides the token (private: not callable outside the crate).
    pub trait Sealed {
        /// The request's headers and extensions, when the source is a request: where its
        /// caller is found, to charge a typed call about an unknown token to.
        fn request_parts(&self) -> Option<(&http::HeaderMap, &http::Extensions)> {
            None
        }

        /// The headers alone, when the source has no extensions.
        fn request_headers(&self) -> Option<&http::HeaderMap> {
            self.request_parts().map(|(headers, _)| headers)
        }
    }
}

/// Where a typed call's caller is found: the request's headers and extensions, when the
/// source carries them.
pub(crate) fn caller_parts<T: TokenSource + ?Sized>(
    from: &T,
) -> (Option<&HeaderMap>, Option<&http::Extensions>) {
    match from.request_parts() {
        Some((headers, extensions)) => (Some(headers), Some(extensions)),
        None => (from.request_headers(), None),
    }
}

/// Where a typed call of [`Id6`] finds the end user's token: a request, its
/// parts, its headers, or a [`UserToken`] already in hand.
///
/// Sealed (as reqwest's `IntoUrl`): pass any of these types; the trait cannot be implemented
/// outside the crate, so that methods can be added to it without a breaking change.
///
/// ```
/// use id6_tower::{Id6, TokenSource, UserToken};
///
/// # fn run() -> Result<(), id6_tower::Error> {
/// let id6 = Id6::builder("http://127.0.0.1:8000/api").build()?;
/// let mut headers = http::HeaderMap::new();
/// headers.insert("cookie", "theme=dark; auth=abc.def.ghi".parse().unwrap());
/// // Found as the layer finds it: from headers, a request, its parts, or a token in hand.
/// assert_eq!(headers.user_token(&id6).unwrap().expose(), "abc.def.ghi");
/// let request = http::Request::builder().header("cookie", "auth=xyz").body(()).unwrap();
/// assert_eq!(request.user_token(&id6).unwrap().expose(), "xyz");
/// assert!(UserToken::new("xyz").unwrap().user_token(&id6).is_some());
/// # Ok(())
/// # }
/// ```
pub trait TokenSource: sealed::Sealed {
    /// The token, found as the layer of `id6` finds it.
    fn user_token(&self, id6: &Id6) -> Option<UserToken>;
}

impl sealed::Sealed for UserToken {}

impl TokenSource for UserToken {
    fn user_token(&self, _id6: &Id6) -> Option<UserToken> {
        Some(self.clone())
    }
}

impl sealed::Sealed for HeaderMap {
    fn request_headers(&self) -> Option<&HeaderMap> {
        Some(self)
    }
}

impl TokenSource for HeaderMap {
    fn user_token(&self, id6: &Id6) -> Option<UserToken> {
        id6.token_from(self)
    }
}

impl<B> sealed::Sealed for http::Request<B> {
    fn request_parts(&self) -> Option<(&HeaderMap, &http::Extensions)> {
        Some((self.headers(), self.extensions()))
    }
}

impl<B> TokenSource for http::Request<B> {
    fn user_token(&self, id6: &Id6) -> Option<UserToken> {
        id6.token_from(self.headers())
    }
}

impl sealed::Sealed for http::request::Parts {
    fn request_parts(&self) -> Option<(&HeaderMap, &http::Extensions)> {
        Some((&self.headers, &self.extensions))
    }
}

impl TokenSource for http::request::Parts {
    fn user_token(&self, id6: &Id6) -> Option<UserToken> {
        id6.token_from(&self.headers)
    }
}

impl<T: TokenSource + ?Sized> sealed::Sealed for &T {
    fn request_parts(&self) -> Option<(&HeaderMap, &http::Extensions)> {
        (**self).request_parts()
    }

    fn request_headers(&self) -> Option<&HeaderMap> {
        (**self).request_headers()
    }
}

impl<T: TokenSource + ?Sized> TokenSource for &T {
    fn user_token(&self, id6: &Id6) -> Option<UserToken> {
        (**self).user_token(id6)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn profile_rules_match_ids() {
        // Sorted, for binary_search.
        assert!(super::ISO_639_1.windows(2).all(|w| w[0] < w[1]));
        assert!(Profile::new("Alice").validate().is_ok());
        assert!(Profile::new("A".repeat(128))
            .bio("é".repeat(256))
            .language("fr")
            .validate()
            .is_ok());
        for (profile, field) in [
            (Profile::new(""), "name"),
            (Profile::new("A".repeat(129)), "name"),
            (Profile::new("A").bio(""), "bio"),
            (Profile::new("A").bio("b".repeat(257)), "bio"),
            (Profile::new("A").language("english"), "language"),
            (Profile::new("A").language("EN"), "language"),
            (Profile::new("A").language("zz"), "language"),
        ] {
            let err = profile.validate().unwrap_err();
            assert!(err.is_validation() && !err.is_unavailable());
            assert_eq!(err.error_code(), Some("invalid_body"));
            assert_eq!(
                err.error_details().unwrap()[0]["path"][0],
                field,
                "{profile:?}"
            );
        }
        // In id6's words (Joi's), as the mock answers too.
        let err = Profile::new("A".repeat(129)).validate().unwrap_err();
        assert_eq!(
            err.error_details().unwrap()[0]["message"],
            "\"name\" length must be less than or equal to 128 characters long"
        );
        assert_eq!(
            serde_json::to_value(Profile::new("A")).unwrap(),
            json!({"name": "A", "bio": null, "language": null})
        );
    }
}
