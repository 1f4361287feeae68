//! Picture upload and download (feature `pictures`): multipart out, a stream (or a capped
//! read) in.

use std::path::Path;

use bytes::Bytes;
use futures_util::{Stream, TryStreamExt};
use http::header::{CONTENT_DISPOSITION, CONTENT_TYPE};
use http::Method;
use serde::Deserialize;
use serde_json::json;

use crate::api::TokenSource;
use crate::client::read_capped;
use crate::error::{Error, Kind};
use crate::id6::Id6;

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
    /// Uploads a new picture (`POST /user/picture`, multipart field `picture`) and returns
    /// its new URL; the user's cached tokens are evicted so the next request sees it.
    ///
    /// # Errors
    ///
    /// Validation (`format_not_allowed` for other than `.png`/`.jpg`/`.jpeg`,
    /// `picture_too_large` over [`max_picture_bytes`](crate::Id6Builder::max_picture_bytes),
    /// both before sending), unauthenticated, or unavailable.
    #[cfg_attr(docsrs, doc(cfg(feature = "pictures")))]
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
        let form = reqwest::multipart::Form::new().part("picture", picture.into_part(mime)?);
        let (token, response) = self
            .call(Method::POST, "user/picture", from, |r| r.multipart(form))
            .await?;
        #[derive(Deserialize)]
        struct Answer {
            picture: Option<String>,
        }
        // id6 took the picture (a 2xx): evicted before its answer is read, which may fail.
        self.evict_owner(&token).await;
        let answer: Answer = self.client().read_json(response).await?;
        Ok(answer.picture)
    }

    /// Downloads the user's picture (`GET /user/picture`), streamed.
    ///
    /// # Errors
    ///
    /// id6's 404 `picture_not_set` ([`error_code`](Error::error_code)) when the user has none;
    /// unauthenticated, or unavailable.
    #[cfg_attr(docsrs, doc(cfg(feature = "pictures")))]
    pub async fn picture(
        &self,
        from: &(impl TokenSource + ?Sized),
    ) -> Result<PictureDownload, Error> {
        let (_, response) = self.call(Method::GET, "user/picture", from, |r| r).await?;
        // At most 1 GiB (checked by `build`): fits a usize wherever this crate builds.
        let limit = usize::try_from(self.max_picture_bytes()).unwrap_or(usize::MAX);
        Ok(PictureDownload { response, limit })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
