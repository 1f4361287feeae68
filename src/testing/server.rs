//! `MockId6`'s HTTP plumbing: the accept loop, then for each request the rate limiter, the
//! fault and the routes, in id6's order.

use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use axum::body::Body;
use axum::http::{header, HeaderValue, Method, Request, Response, StatusCode};
use axum::Router;
use hyper_util::rt::TokioIo;
use serde_json::json;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tower_service::Service;

use super::routes::{html, json_response};
use super::state::{Fault, RecordedRequest, State};

/// Serves one of id6's servers; `server` names it (`"authentication"`, `"authorization"`)
/// for its own rate limit.
pub(super) async fn serve(
    server: &'static str,
    listener: TcpListener,
    router: Router,
    state: Arc<State>,
    mut stop: watch::Receiver<bool>,
) {
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(_) => continue,
            },
            _ = stop.changed() => break,
        };
        let state = state.clone();
        let router = router.clone();
        let mut stop = stop.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |request| {
                handle(state.clone(), router.clone(), server, peer.ip(), request)
            });
            let connection = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service);
            tokio::select! {
                _ = connection => {}
                _ = stop.changed() => {}
            }
        });
    }
    // The listener drops here: the port is closed once `serve` returns.
}

/// Records the request, counts it against the rate limit (checked before anything else, as
/// id6 does), applies the fault, then routes.
async fn handle(
    state: Arc<State>,
    mut router: Router,
    server: &'static str,
    peer: IpAddr,
    request: Request<hyper::body::Incoming>,
) -> Result<Response<Body>, std::io::Error> {
    let cookies: Vec<&str> = request
        .headers()
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .collect();
    state.record(RecordedRequest {
        method: request.method().to_string(),
        path: request.uri().path().to_owned(),
        cookie: (!cookies.is_empty()).then(|| cookies.join("; ")),
    });
    let in_flight = state.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
    state.max_in_flight.fetch_max(in_flight, Ordering::SeqCst);
    let _leaving = Leaving(&state.in_flight);
    let conditional = Conditional::of(&request);
    let window = state.count_request(server, peer);
    let mut response = match (&window, state.fault()) {
        (Some(w), _) if w.exceeded => rate_limited(w.reset_epoch_s),
        (_, Some(fault)) => match apply(fault, request.uri().path(), &state).await? {
            Some(response) => response,
            None => route(&mut router, request).await,
        },
        (_, None) => route(&mut router, request).await,
    };
    if conditional.fresh(&response) {
        response = not_modified(response);
    }
    if let Some(w) = window {
        let h = response.headers_mut();
        h.insert("x-ratelimit-limit", HeaderValue::from(w.limit));
        h.insert("x-ratelimit-remaining", HeaderValue::from(w.remaining));
        h.insert("x-ratelimit-reset", HeaderValue::from(w.reset_epoch_s));
    }
    Ok(response)
}

/// What Express's freshness check reads of a request: `GET`/`HEAD`, `If-None-Match`, and
/// whether `Cache-Control: no-cache` asks for the full answer anyway.
struct Conditional {
    if_none_match: Option<String>,
}

impl Conditional {
    fn of<B>(request: &Request<B>) -> Self {
        let headers = request.headers();
        let no_cache = headers
            .get_all(header::CACHE_CONTROL)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .any(|v| v.to_ascii_lowercase().contains("no-cache"));
        let readable = matches!(*request.method(), Method::GET | Method::HEAD);
        let if_none_match = headers
            .get(header::IF_NONE_MATCH)
            .and_then(|v| v.to_str().ok())
            .filter(|_| readable && !no_cache)
            .map(str::to_owned);
        Conditional { if_none_match }
    }

    /// Whether the client's copy is the answer (a 2xx whose `ETag` it names, weakly compared,
    /// or `*`): Express then sends 304 without a body.
    fn fresh(&self, response: &Response<Body>) -> bool {
        let (Some(tags), Some(etag)) = (
            self.if_none_match.as_deref(),
            response
                .headers()
                .get(header::ETAG)
                .and_then(|v| v.to_str().ok()),
        ) else {
            return false;
        };
        let weak = |tag: &str| tag.trim().trim_start_matches("W/").to_owned();
        response.status().is_success()
            && (tags.trim() == "*" || tags.split(',').any(|tag| weak(tag) == weak(etag)))
    }
}

/// The 304 Express makes of a fresh answer: no body, no `Content-*` of the body it drops.
fn not_modified(response: Response<Body>) -> Response<Body> {
    let (mut parts, _) = response.into_parts();
    parts.status = StatusCode::NOT_MODIFIED;
    for name in [
        header::CONTENT_TYPE,
        header::CONTENT_LENGTH,
        header::TRANSFER_ENCODING,
    ] {
        parts.headers.remove(name);
    }
    Response::from_parts(parts, Body::empty())
}

/// Counts a request out of `in_flight` however its handling ends.
struct Leaving<'a>(&'a AtomicU64);

impl Drop for Leaving<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

async fn route(router: &mut Router, request: Request<hyper::body::Incoming>) -> Response<Body> {
    match router.call(request).await {
        Ok(response) => response,
        Err(never) => match never {},
    }
}

/// The fault's answer, `None` to answer normally (after a delay), or an error that makes
/// hyper close the connection without answering.
async fn apply(
    fault: Fault,
    path: &str,
    state: &State,
) -> Result<Option<Response<Body>>, std::io::Error> {
    Ok(Some(match fault {
        Fault::Delay(delay) => {
            tokio::time::sleep(delay).await;
            return Ok(None);
        }
        Fault::DropConnection => return Err(std::io::Error::other("fault: drop the connection")),
        Fault::Status(code) => {
            let status = StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
            let body = json!({"statusCode": status.as_u16(), "path": path, "message": "Internal error"});
            json_response(status, body.to_string())
        }
        Fault::RateLimited => rate_limited(state.now_ms() / 1000 + 60),
        Fault::RateLimitedWith { reset, retry_after } => {
            let mut response = html(
                StatusCode::TOO_MANY_REQUESTS,
                "Too many requests, please try again later.",
            );
            let h = response.headers_mut();
            for (name, value) in [("x-ratelimit-reset", reset), ("retry-after", retry_after)] {
                if let Some(value) = value.and_then(|v| HeaderValue::try_from(v).ok()) {
                    h.insert(name, value);
                }
            }
            response
        }
        Fault::MalformedBody => json_response(StatusCode::OK, r#"{"id":1,"name":"Tru"#.to_owned()),
        Fault::HtmlPage => html(
            StatusCode::OK,
            "<!DOCTYPE html><html><head><title>id6</title></head><body><div id=\"root\"></div></body></html>",
        ),
        Fault::StatusHtml(code) => html(
            StatusCode::from_u16(code).unwrap_or(StatusCode::BAD_GATEWAY),
            "<html><head><title>502 Bad Gateway</title></head><body><center><h1>502 Bad Gateway</h1></center></body></html>",
        ),
        Fault::WrongContentType => {
            let mut response = json_response(
                StatusCode::OK,
                r#"{"id":1,"authType":"local","name":"Alice","email":"a@example.com","bio":null,"language":"en"}"#.to_owned(),
            );
            response.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
            response
        }
        Fault::DropMidBody => {
            let chunks: Vec<Result<&'static [u8], std::io::Error>> = vec![
                Ok(br#"{"id":1,"authType":"local","name":"#),
                Err(std::io::Error::other("fault: drop mid-body")),
            ];
            let mut response = Response::new(Body::from_stream(futures_util::stream::iter(chunks)));
            response.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
            response
        }
        Fault::HugeBody(bytes) => {
            const CHUNK: usize = 64 * 1024;
            let filler = bytes.saturating_sub(30);
            let head = futures_util::stream::once(async { Ok::<_, std::io::Error>(bytes::Bytes::from_static(br#"{"id":1,"name":""#)) });
            let middle = futures_util::stream::iter((0..filler.div_ceil(CHUNK)).map(move |i| {
                let len = CHUNK.min(filler - i * CHUNK);
                Ok(bytes::Bytes::from(vec![b'a'; len]))
            }));
            let tail = futures_util::stream::once(async { Ok(bytes::Bytes::from_static(br#""}"#)) });
            use futures_util::StreamExt;
            let mut response = Response::new(Body::from_stream(head.chain(middle).chain(tail)));
            response.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
            response
        }
    }))
}

/// id6's limiter answer: HTML body, `Retry-After: 60` always, the window in `X-RateLimit-*`.
fn rate_limited(reset: u64) -> Response<Body> {
    let mut response = html(
        StatusCode::TOO_MANY_REQUESTS,
        "Too many requests, please try again later.",
    );
    let h = response.headers_mut();
    h.insert(header::RETRY_AFTER, HeaderValue::from_static("60"));
    h.insert("x-ratelimit-limit", HeaderValue::from_static("100"));
    h.insert("x-ratelimit-remaining", HeaderValue::from_static("0"));
    h.insert("x-ratelimit-reset", HeaderValue::from(reset));
    response
}
