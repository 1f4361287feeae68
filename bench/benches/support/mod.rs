//! What the benches and the `hit_latency` example share: the one-worker runtime a server
//! would run on, MockId6 with one user, a handle that keeps that user for an hour, and the
//! request a browser sends. Each includer uses its part (`#[path]`, not a library: this
//! package's library is the README's doctests).
#![allow(dead_code)]

use std::time::Duration;

use axum::body::Body;
use id6_tower::testing::MockId6;
use id6_tower::{Id6, Id6Builder};

/// A multi-thread runtime with one worker: one core, as each side of a bench gets.
pub fn one_worker() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap()
}

/// MockId6 with Alice, her token, and the cookie header a browser sends with it.
pub struct Alice {
    pub mock: MockId6,
    /// Her id at the mock.
    pub id: u64,
    pub token: String,
    /// A browser sends other cookies too; the token is 171 bytes, as id6's.
    pub cookie: String,
}

impl Alice {
    /// Started on `rt`.
    pub fn start(rt: &tokio::runtime::Runtime) -> Self {
        let mock = rt.block_on(MockId6::start()).unwrap();
        let id = mock.add_user("Alice", "alice@example.com");
        let token = mock.token_for(id);
        let cookie = format!("_ga=GA1.1.123456789.1700000000; theme=dark; auth={token}; lang=fr");
        Alice {
            mock,
            id,
            token,
            cookie,
        }
    }

    /// A handle on this MockId6 that keeps an answer for an hour: every request after the
    /// first is a hit.
    pub fn handle(&self) -> Id6 {
        self.builder().build().unwrap()
    }

    /// [`handle`](Self::handle)'s builder, to set more.
    pub fn builder(&self) -> Id6Builder {
        Id6::builder(self.mock.url()).cache_ttl(Duration::from_secs(3600))
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
