//! The rest of id6's Authentication API as typed calls on [`Id6`], each forwarding the end
//! user's token, and each keeping the cache as truthful as the call made the world.
//!
//! | call | id6 | what it does to the cache |
//! |---|---|---|
//! | [`Id6::user`] | `GET /user` | stores the fresh answer (user, or anonymous on 401) |
//! | [`Id6::sign_out`] | `POST /auth/signout` | evicts that token |
//! | [`Id6::update_profile`] | `POST /user/profile` | evicts every cached token of the user |
//! | [`Id6::update_picture`] | `POST /user/picture` | evicts every cached token of the user |
//! | [`Id6::picture`] | `GET /user/picture` | nothing |
//! | [`Id6::disconnect`] | `GET /user/disconnect` | evicts every cached token of the user, and no id6 answer already in flight can put the user back |
//!
//! Any call that id6 answers with 401 evicts the token it carried.

use std::path::Path;

use bytes::Bytes;
use futures_util::{Stream, TryStreamExt};
use http::header::{CONTENT_DISPOSITION, CONTENT_TYPE};
use http::Method;
use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::client::read_capped;
use crate::error::{Error, Kind};
use crate::resolve::Scope;
use crate::token::{TokenSource, UserToken};
use crate::{Authentication, Id6, User};

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

    /// id6's rules, checked before sending; the details follow id6's `errorDetails` items.
    fn validate(&self) -> Result<(), Error> {
        let mut problems = Vec::new();
        let mut refuse = |field: &str, kind: &str, message: String| {
            problems.push(json!({ "message": message, "path": [field], "type": kind }));
        };
        let name = self.name.chars().count();
        if name == 0 {
            refuse(
                "name",
                "string.empty",
                "\"name\" is not allowed to be empty".into(),
            );
        } else if name > 128 {
            refuse(
                "name",
                "string.max",
                "\"name\" must be at most 128 characters".into(),
            );
        }
        if let Some(bio) = &self.bio {
            let len = bio.chars().count();
            if len == 0 {
                refuse(
                    "bio",
                    "string.empty",
                    "\"bio\" is not allowed to be empty".into(),
                );
            } else if len > 256 {
                refuse(
                    "bio",
                    "string.max",
                    "\"bio\" must be at most 256 characters".into(),
                );
            }
        }
        if let Some(language) = &self.language {
            if language.len() != 2 || !language.bytes().all(|b| b.is_ascii_lowercase()) {
                refuse(
                    "language",
                    "any.only",
                    "\"language\" must be an ISO 639-1 code".into(),
                );
            }
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(Error::new(Kind::Invalid {
                code: "invalid_body",
                details: serde_json::Value::Array(problems),
            }))
        }
    }
}

/// A picture for [`Id6::update_picture`]: a file name ending in `.png`, `.jpg` or `.jpeg`
/// (what id6 checks) and the bytes, in memory or streamed from a file.
pub struct PictureUpload {
    file_name: String,
    body: UploadBody,
}

enum UploadBody {
    Bytes(Bytes),
    File { file: tokio::fs::File, len: u64 },
}

impl std::fmt::Debug for PictureUpload {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PictureUpload")
            .field("file_name", &self.file_name)
            .field("len", &self.len())
            .finish()
    }
}

const ALLOWED_FORMATS: [&str; 3] = ["png", "jpg", "jpeg"];

impl PictureUpload {
    /// A picture already in memory.
    pub fn from_bytes(file_name: impl Into<String>, bytes: impl Into<Bytes>) -> Self {
        PictureUpload {
            file_name: file_name.into(),
            body: UploadBody::Bytes(bytes.into()),
        }
    }

    /// A picture streamed from a file; its name is the file's.
    ///
    /// # Errors
    ///
    /// When the file cannot be opened or has no usable name.
    pub async fn from_file(path: impl AsRef<Path>) -> std::io::Result<Self> {
        let path = path.as_ref();
        let file_name = path
            .file_name()
            .and_then(|n| n.to_str())
            .ok_or_else(|| std::io::Error::new(std::io::ErrorKind::InvalidInput, "no file name"))?
            .to_owned();
        let file = tokio::fs::File::open(path).await?;
        let len = file.metadata().await?.len();
        Ok(PictureUpload {
            file_name,
            body: UploadBody::File { file, len },
        })
    }

    fn len(&self) -> u64 {
        match &self.body {
            UploadBody::Bytes(bytes) => bytes.len() as u64,
            UploadBody::File { len, .. } => *len,
        }
    }

    /// The image type id6 will infer from the extension, or the refusal id6 would answer.
    fn mime(&self) -> Result<&'static str, Error> {
        match self.file_name.rsplit_once('.').map(|(_, ext)| ext) {
            Some("png") => Ok("image/png"),
            Some("jpg" | "jpeg") => Ok("image/jpeg"),
            _ => Err(Error::new(Kind::Invalid {
                code: "format_not_allowed",
                details: json!({
                    "allowedFormats": ALLOWED_FORMATS,
                    "allowedMimeTypes": ["image/png", "image/jpeg"],
                }),
            })),
        }
    }

    fn into_part(self, mime: &'static str) -> Result<reqwest::multipart::Part, Error> {
        let part = match self.body {
            UploadBody::Bytes(bytes) => reqwest::multipart::Part::stream(bytes),
            UploadBody::File { file, len } => {
                let stream = tokio_util::io::ReaderStream::new(file);
                reqwest::multipart::Part::stream_with_length(
                    reqwest::Body::wrap_stream(stream),
                    len,
                )
            }
        };
        part.file_name(self.file_name)
            .mime_str(mime)
            .map_err(|e| Error::with_source(Kind::Request, e))
    }
}

/// The user's picture as id6 streams it ([`Id6::picture`]).
#[derive(Debug)]
pub struct PictureDownload {
    response: reqwest::Response,
    /// [`max_picture_bytes`](crate::Id6Builder::max_picture_bytes), for [`bytes`](Self::bytes).
    limit: usize,
}

impl PictureDownload {
    /// id6's `Content-Type` (`application/octet-stream`).
    pub fn content_type(&self) -> Option<&str> {
        self.response.headers().get(CONTENT_TYPE)?.to_str().ok()
    }

    /// The size, when id6 said it.
    pub fn content_length(&self) -> Option<u64> {
        self.response.content_length()
    }

    /// The file name of id6's `Content-Disposition`.
    pub fn file_name(&self) -> Option<&str> {
        let disposition = self
            .response
            .headers()
            .get(CONTENT_DISPOSITION)?
            .to_str()
            .ok()?;
        let (_, name) = disposition.split_once("filename=")?;
        Some(name.trim_matches('"'))
    }

    /// All of it in memory, up to [`max_picture_bytes`](crate::Id6Builder::max_picture_bytes)
    /// (id6 sets no limit of its own, so a hostile or broken id6 could send gigabytes).
    ///
    /// # Errors
    ///
    /// When the download fails midway, or the picture is longer than the cap (an error for
    /// which [`is_body`](Error::is_body) is true; nothing past the cap is read).
    pub async fn bytes(self) -> Result<Bytes, Error> {
        read_capped(self.response, self.limit)
            .await
            .map(Bytes::from)
    }

    /// The bytes as they arrive, e.g. for `axum::body::Body::from_stream`. Not capped: the
    /// caller sees each chunk and decides how much to keep (to forward it to a client, say).
    pub fn into_stream(self) -> impl Stream<Item = Result<Bytes, Error>> + Send + 'static {
        self.response.bytes_stream().map_err(Error::from_reqwest)
    }
}

impl Id6 {
    fn token_of(&self, from: &(impl TokenSource + ?Sized)) -> Result<UserToken, Error> {
        from.user_token(self)
            .ok_or_else(|| Error::new(Kind::NoToken))
    }

    /// The token's user, for the evictions that follow a change: cached, or read from the
    /// JWT payload (id6 just accepted the token, so the payload is genuine).
    fn owner_of(&self, token: &UserToken) -> Option<u64> {
        self.resolver()
            .user_id_of(&token.key())
            .or_else(|| token.unverified_user_id())
    }

    /// Runs a typed call; a 401 means the token is dead, so its cached verdict goes.
    async fn call(
        &self,
        method: Method,
        path: &str,
        token: &UserToken,
        build: impl FnOnce(reqwest::RequestBuilder) -> reqwest::RequestBuilder,
    ) -> Result<reqwest::Response, Error> {
        let result = self.client().call(method, path, token, build).await;
        if let Err(error) = &result {
            if error.is_unauthenticated() {
                self.resolver().evict(Scope::Token(token.key())).await;
            }
        }
        result
    }

    /// Asks id6 afresh who owns the token (`GET /user`), bypassing the cache and refreshing
    /// it with the answer.
    ///
    /// # Errors
    ///
    /// Unauthenticated (no token, id6's 401 with its `errorCode`), or unavailable.
    pub async fn user(&self, from: &(impl TokenSource + ?Sized)) -> Result<User, Error> {
        let token = self.token_of(from)?;
        let started = self.resolver().load_start();
        let response = self.call(Method::GET, "user", &token, |r| r).await?;
        match self.client().read_json::<Option<User>>(response).await? {
            Some(user) => {
                let user = std::sync::Arc::new(user);
                let verdict = Authentication::Authenticated(user.clone());
                self.resolver()
                    .remember(token.key(), &verdict, started)
                    .await;
                Ok(User::clone(&user))
            }
            None => Err(Error::new(Kind::NoToken)),
        }
    }

    /// Signs the user out (`POST /auth/signout`) and evicts the token from the cache (with
    /// Redis, from the shared cache and every instance).
    ///
    /// id6 only clears the cookie in the browser: the token itself stays valid on id6 until
    /// it expires. To end every session of the user, use [`disconnect`](Self::disconnect).
    /// Forward id6's clearing `Set-Cookie` yourself, or clear the cookie in your response.
    ///
    /// # Errors
    ///
    /// Unauthenticated or unavailable.
    pub async fn sign_out(&self, from: &(impl TokenSource + ?Sized)) -> Result<(), Error> {
        let token = self.token_of(from)?;
        self.call(Method::POST, "auth/signout", &token, |r| r)
            .await?;
        self.resolver().evict(Scope::Token(token.key())).await;
        Ok(())
    }

    /// Revokes every token of the user on id6 (`GET /user/disconnect`) and evicts them all
    /// from the cache at once; an id6 answer already in flight cannot put the user back.
    ///
    /// # Errors
    ///
    /// Unauthenticated or unavailable.
    pub async fn disconnect(&self, from: &(impl TokenSource + ?Sized)) -> Result<(), Error> {
        let token = self.token_of(from)?;
        let owner = self.owner_of(&token);
        self.call(Method::GET, "user/disconnect", &token, |r| r)
            .await?;
        // Unknown owner (not a JWT we can read): the only safe eviction is everything.
        self.resolver()
            .evict(owner.map_or(Scope::All, Scope::User))
            .await;
        Ok(())
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
        let token = self.token_of(from)?;
        let body = serde_json::to_vec(profile).map_err(|e| Error::with_source(Kind::Request, e))?;
        self.call(Method::POST, "user/profile", &token, |r| {
            r.header(CONTENT_TYPE, "application/json").body(body)
        })
        .await?;
        self.evict_owner(&token).await;
        Ok(())
    }

    /// Uploads a new picture (`POST /user/picture`, multipart field `picture`) and returns
    /// its new URL; the user's cached tokens are evicted so the next request sees it.
    ///
    /// # Errors
    ///
    /// Validation (`format_not_allowed` for other than `.png`/`.jpg`/`.jpeg`,
    /// `picture_too_large` over [`max_picture_bytes`](crate::Id6Builder::max_picture_bytes),
    /// both before sending), unauthenticated, or unavailable.
    pub async fn update_picture(
        &self,
        from: &(impl TokenSource + ?Sized),
        picture: PictureUpload,
    ) -> Result<Option<String>, Error> {
        let mime = picture.mime()?;
        let limit = self.max_picture_bytes();
        if picture.len() > limit {
            return Err(Error::new(Kind::Invalid {
                code: "picture_too_large",
                details: json!({ "maxBytes": limit, "bytes": picture.len() }),
            }));
        }
        let token = self.token_of(from)?;
        let form = reqwest::multipart::Form::new().part("picture", picture.into_part(mime)?);
        let response = self
            .call(Method::POST, "user/picture", &token, |r| r.multipart(form))
            .await?;
        #[derive(Deserialize)]
        struct Answer {
            picture: Option<String>,
        }
        let answer: Answer = self.client().read_json(response).await?;
        self.evict_owner(&token).await;
        Ok(answer.picture)
    }

    /// Downloads the user's picture (`GET /user/picture`), streamed.
    ///
    /// # Errors
    ///
    /// [`is_picture_not_set`](Error::is_picture_not_set) when the user has none;
    /// unauthenticated, or unavailable.
    pub async fn picture(
        &self,
        from: &(impl TokenSource + ?Sized),
    ) -> Result<PictureDownload, Error> {
        let token = self.token_of(from)?;
        let response = self
            .call(Method::GET, "user/picture", &token, |r| r)
            .await?;
        // At most 1 GiB (checked by `build`): fits a usize wherever this crate builds.
        let limit = usize::try_from(self.max_picture_bytes()).unwrap_or(usize::MAX);
        Ok(PictureDownload { response, limit })
    }

    async fn evict_owner(&self, token: &UserToken) {
        let scope = self
            .owner_of(token)
            .map_or(Scope::Token(token.key()), Scope::User);
        self.resolver().evict(scope).await;
    }

    /// Forgets the cached verdict of the token in `from`; the next request asks id6. With
    /// Redis, the shared entry and the other instances follow in the background.
    pub fn invalidate_token(&self, from: &(impl TokenSource + ?Sized)) {
        if let Some(token) = from.user_token(self) {
            self.resolver()
                .evict_in_background(Scope::Token(token.key()));
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn profile_rules_match_ids() {
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
        assert_eq!(
            serde_json::to_value(Profile::new("A")).unwrap(),
            json!({"name": "A", "bio": null, "language": null})
        );
    }

    #[test]
    fn picture_formats_match_ids() {
        for name in ["a.png", "b.jpg", "c.jpeg", "dir.v2/x.png"] {
            assert!(
                PictureUpload::from_bytes(name, &b"x"[..]).mime().is_ok(),
                "{name}"
            );
        }
        for name in ["a.PNG", "a.gif", "png", "a.png.exe", ""] {
            let err = PictureUpload::from_bytes(name, &b"x"[..])
                .mime()
                .unwrap_err();
            assert_eq!(err.error_code(), Some("format_not_allowed"), "{name}");
            assert_eq!(err.error_details().unwrap()["allowedFormats"][2], "jpeg");
        }
    }
}
