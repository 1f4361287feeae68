//! `MockId6`'s HTTP side: the accept loop, faults, and id6's routes and bodies.

use std::convert::Infallible;
use std::sync::Arc;

use axum::body::Body;
use axum::extract::State as AxumState;
use axum::http::{header, HeaderMap, Request, Response, StatusCode, Uri};
use axum::routing::get;
use axum::Router;
use hyper_util::rt::TokioIo;
use serde_json::json;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tower_service::Service;

use super::mock::{Fault, RecordedRequest, State};

type Shared = Arc<State>;

pub(super) async fn serve(listener: TcpListener, state: Shared, mut stop: watch::Receiver<bool>) {
    let router = Router::new()
        .route("/user", get(get_user))
        .fallback(not_found)
        .with_state(state.clone());
    loop {
        let stream = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(_) => continue,
            },
            _ = stop.changed() => break,
        };
        let state = state.clone();
        let router = router.clone();
        let mut stop = stop.clone();
        tokio::spawn(async move {
            let service =
                hyper::service::service_fn(move |request: Request<hyper::body::Incoming>| {
                    handle(state.clone(), router.clone(), request)
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

/// Records the request, applies the fault, then routes.
async fn handle(
    state: Shared,
    mut router: Router,
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
    match state.fault() {
        None => {}
        Some(Fault::Delay(delay)) => tokio::time::sleep(delay).await,
        Some(Fault::DropConnection) => {
            return Err(std::io::Error::other("fault: drop the connection"));
        }
        Some(Fault::Status(code)) => {
            let status = StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
            let body = json!({
                "statusCode": status.as_u16(),
                "path": request.uri().path(),
                "message": "Internal error",
            });
            return Ok(json_response(status, body.to_string()));
        }
        Some(Fault::RateLimited) => return Ok(rate_limited()),
        Some(Fault::MalformedBody) => {
            return Ok(json_response(
                StatusCode::OK,
                r#"{"id":1,"name":"Tru"#.to_owned(),
            ));
        }
        Some(Fault::HtmlPage) => {
            return Ok(html(
                StatusCode::OK,
                "<!DOCTYPE html><html><head><title>id6</title></head><body><div id=\"root\"></div></body></html>",
            ));
        }
    }
    match router.call(request).await {
        Ok(response) => Ok(response),
        Err(never) => match never {},
    }
}

/// `GET /user`: `null` without a cookie, the user, or 401 with id6's clearing cookie.
async fn get_user(AxumState(state): AxumState<Shared>, headers: HeaderMap) -> Response<Body> {
    let Some(token) = auth_cookie(&headers) else {
        return json_response(StatusCode::OK, "null".to_owned());
    };
    let refusal = match state.verify(&token) {
        Ok(id) => match state.user_json(id) {
            Some(user) => return json_response(StatusCode::OK, user.to_string()),
            None => super::mock::Refusal {
                code: "user_not_found",
                message: "User not found",
            },
        },
        Err(refusal) => refusal,
    };
    let body = json!({
        "statusCode": 401,
        "path": "/user",
        "message": refusal.message,
        "errorCode": refusal.code,
    });
    let mut response = json_response(StatusCode::UNAUTHORIZED, body.to_string());
    response.headers_mut().insert(
        header::SET_COOKIE,
        header::HeaderValue::from_static(
            "auth=; Max-Age=0; Path=/; Expires=Thu, 01 Jan 1970 00:00:00 GMT; HttpOnly",
        ),
    );
    response
}

/// The first `auth` cookie across all `Cookie` headers, parsed by the `cookie` crate as
/// id6's cookie parser would; `auth=` counts as none.
fn auth_cookie(headers: &HeaderMap) -> Option<String> {
    let first = headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| cookie::Cookie::split_parse(v).filter_map(Result::ok))
        .find(|c| c.name() == "auth")?;
    let value = first.value_trimmed();
    (!value.is_empty()).then(|| value.to_owned())
}

/// Express's HTML 404 for unknown routes.
async fn not_found(uri: Uri, method: axum::http::Method) -> Result<Response<Body>, Infallible> {
    Ok(html(
        StatusCode::NOT_FOUND,
        &format!(
            "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n<title>Error</title>\n</head>\n<body>\n<pre>Cannot {method} {}</pre>\n</body>\n</html>\n",
            uri.path()
        ),
    ))
}

/// id6's limiter answer: HTML body, `Retry-After: 60`, the window in `X-RateLimit-*`.
fn rate_limited() -> Response<Body> {
    let reset = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() + 60)
        .unwrap_or_default();
    let mut response = html(
        StatusCode::TOO_MANY_REQUESTS,
        "Too many requests, please try again later.",
    );
    let h = response.headers_mut();
    h.insert(header::RETRY_AFTER, header::HeaderValue::from_static("60"));
    h.insert("x-ratelimit-limit", header::HeaderValue::from_static("100"));
    h.insert(
        "x-ratelimit-remaining",
        header::HeaderValue::from_static("0"),
    );
    h.insert("x-ratelimit-reset", header::HeaderValue::from(reset));
    response
}

fn json_response(status: StatusCode, body: String) -> Response<Body> {
    with_type(status, "application/json; charset=utf-8", body)
}

fn html(status: StatusCode, body: &str) -> Response<Body> {
    with_type(status, "text/html; charset=utf-8", body.to_owned())
}

fn with_type(status: StatusCode, content_type: &'static str, body: String) -> Response<Body> {
    let mut response = Response::new(Body::from(body));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static(content_type),
    );
    response
}
