//! What the benches and the `hit_latency` example share: the one-worker runtime a server
//! would run on, an id6 stand-in with one user, a handle that keeps that user for an hour,
//! and the request a browser sends. Each includer uses its part (`#[path]`, not a library).
//!
//! The stand-in, not MockId6: MockId6 comes with the crate's `testing` feature, which
//! changes what a hit runs (an exact clock); the crate is measured here as an app builds it.
#![allow(dead_code)]

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use http::{header, HeaderMap, StatusCode};
use id6_tower::{Id6, Id6Builder};

/// A multi-thread runtime with one worker: one core, as each side of a bench gets.
pub fn one_worker() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap()
}

/// Alice's token: an HS256 JWT of id6's shape and length (171 bytes), `userId` 1.
const TOKEN: &str = "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJ1c2VySWQiOjEsImlzc3VlZEF0IjoxNzY1MDAwMDAwMDAwLCJpYXQiOjE3NjUwMDAwMDAsIm4iOiJ4eHh4eHgifQ.gL3fs6PvJxgTHxnWP95MoP0SwczTlLRhpvclGRYnQl0";
/// The same claims signed with another secret: well-formed, and refused by id6.
const FORGED: &str = "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJ1c2VySWQiOjEsImlzc3VlZEF0IjoxNzY1MDAwMDAwMDAwLCJpYXQiOjE3NjUwMDAwMDAsIm4iOiJ4eHh4eHgifQ.HvG1xGDiOZl4zIpTwAHOLQjXnfEHY8bmFgaGZtakDDE";
/// What id6's `GET /user` answers for her.
const USER: &str = r#"{"id":1,"authType":"local","name":"Alice","email":"alice@example.com","bio":null,"language":"en"}"#;

/// id6's `GET /user` on loopback, as far as the benches ask it: Alice for her token, id6's
/// 401 for any other, each answer with id6's rate-limit headers.
pub struct StandIn {
    url: String,
    calls: Arc<AtomicUsize>,
}

impl StandIn {
    /// Started on `rt`, listening on `127.0.0.1:0`.
    pub fn start(rt: &tokio::runtime::Runtime) -> Self {
        let calls = Arc::new(AtomicUsize::new(0));
        let counted = calls.clone();
        let app = axum::Router::new().route(
            "/user",
            get(move |headers: HeaderMap| {
                counted.fetch_add(1, Ordering::Relaxed);
                async move { answer(&headers) }
            }),
        );
        let listener = rt
            .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
            .unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        rt.spawn(async move { axum::serve(listener, app).await });
        StandIn { url, calls }
    }

    /// Its base URL, for `Id6::builder`.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// `GET /user` calls it answered.
    pub fn user_calls(&self) -> usize {
        self.calls.load(Ordering::Relaxed)
    }
}

fn answer(headers: &HeaderMap) -> Response {
    let token = headers
        .get(header::COOKIE)
        .and_then(|value| value.to_str().ok())
        .and_then(|cookies| cookies.split("; ").find_map(|c| c.strip_prefix("auth=")));
    let (status, body) = match token {
        Some(TOKEN) => (StatusCode::OK, USER),
        _ => (
            StatusCode::UNAUTHORIZED,
            r#"{"message":"Invalid token","errorCode":"invalid_token"}"#,
        ),
    };
    let reset = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        + 60;
    (
        status,
        [
            (
                header::CONTENT_TYPE,
                "application/json; charset=utf-8".to_owned(),
            ),
            (
                header::HeaderName::from_static("x-ratelimit-limit"),
                "1000000".to_owned(),
            ),
            (
                header::HeaderName::from_static("x-ratelimit-remaining"),
                "999999".to_owned(),
            ),
            (
                header::HeaderName::from_static("x-ratelimit-reset"),
                reset.to_string(),
            ),
        ],
        body,
    )
        .into_response()
}

/// The stand-in with Alice, her token, and the cookie header a browser sends with it.
pub struct Alice {
    pub id6: StandIn,
    pub token: String,
    /// A browser sends other cookies too; the token is 171 bytes, as id6's.
    pub cookie: String,
    /// A token of her shape that id6 refuses (another secret signed it).
    pub forged: String,
}

impl Alice {
    /// Started on `rt`.
    pub fn start(rt: &tokio::runtime::Runtime) -> Self {
        Alice {
            id6: StandIn::start(rt),
            token: TOKEN.to_owned(),
            cookie: format!("_ga=GA1.1.123456789.1700000000; theme=dark; auth={TOKEN}; lang=fr"),
            forged: FORGED.to_owned(),
        }
    }

    /// A handle on the stand-in that keeps an answer for an hour: every request after the
    /// first is a hit.
    pub fn handle(&self) -> Id6 {
        self.builder().build().unwrap()
    }

    /// [`handle`](Self::handle)'s builder, to set more.
    pub fn builder(&self) -> Id6Builder {
        Id6::builder(self.id6.url()).cache_ttl(Duration::from_secs(3600))
    }
}

/// `GET /`, with `cookie` as its `Cookie` header.
pub fn request(cookie: Option<&str>) -> http::Request<Body> {
    let mut builder = http::Request::get("/");
    if let Some(cookie) = cookie {
        builder = builder.header("cookie", cookie);
    }
    builder.body(Body::empty()).unwrap()
}

/// An axum app as a tower service, which a bench serves or calls from threads of its own.
pub trait App:
    tower::Service<
        http::Request<Body>,
        Response = axum::response::Response,
        Error = std::convert::Infallible,
        Future: Send,
    > + Clone
    + Send
{
}

impl<S> App for S
where
    S: tower::Service<
            http::Request<Body>,
            Response = axum::response::Response,
            Error = std::convert::Infallible,
        > + Clone
        + Send,
    S::Future: Send,
{
}
