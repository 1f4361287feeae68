//! id6's routes as the real servers answer them, bodies written by hand from `id6.md`.

use std::sync::Arc;

use axum::body::Body;
use axum::extract::{DefaultBodyLimit, FromRequest, Multipart, State as AxumState};
use axum::http::{header, HeaderMap, HeaderValue, Method, Request, Response, StatusCode, Uri};
use axum::routing::{get, post};
use axum::Router;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

use super::state::{lock, State};

type Shared = AxumState<Arc<State>>;

/// The public authentication server (id6's port 3001).
pub(super) fn authentication(state: Arc<State>) -> Router {
    Router::new()
        .route("/user", get(get_user).fallback(not_found))
        .route("/user/profile", post(update_profile).fallback(not_found))
        .route(
            "/user/picture",
            get(get_picture).post(update_picture).fallback(not_found),
        )
        .route("/user/disconnect", get(disconnect).fallback(not_found))
        .route("/auth/signout", post(sign_out).fallback(not_found))
        .route("/login", get(sign_in_page).fallback(not_found))
        .route("/auth/login", post(sign_in).fallback(not_found))
        .fallback(not_found)
        // id6 sets no size limit on pictures (axum's default would refuse over 2 MB).
        .layer(DefaultBodyLimit::disable())
        .with_state(state)
}

/// The private authorization server (id6's port 3030).
pub(super) fn authorization(state: Arc<State>) -> Router {
    Router::new()
        .route("/authorize", post(authorize).fallback(not_found))
        .fallback(not_found)
        .with_state(state)
}

/// Who calls, as id6's login check sees it: no cookie, a user, or a refusal already
/// rendered (401 with the clearing cookie, on every route).
enum Caller {
    Nobody,
    User(u64),
    Refused(Response<Body>),
}

fn caller(state: &State, headers: &HeaderMap, path: &str) -> Caller {
    let Some(token) = auth_cookie(headers) else {
        return Caller::Nobody;
    };
    match state.verify(&token) {
        Ok(id) if state.user_json(id).is_some() => Caller::User(id),
        Ok(_) => Caller::Refused(refused(state, path, "user_not_found", "User not found")),
        Err(refusal) => Caller::Refused(refused(state, path, refusal.code, refusal.message)),
    }
}

/// The caller, or the 401 id6 answers on routes that need a login.
// The error is the finished answer, returned at once by every handler: no need to box it.
#[allow(clippy::result_large_err)]
fn signed_in(state: &State, headers: &HeaderMap, path: &str) -> Result<u64, Response<Body>> {
    match caller(state, headers, path) {
        Caller::User(id) => Ok(id),
        Caller::Refused(response) => Err(response),
        Caller::Nobody => Err(error(
            StatusCode::UNAUTHORIZED,
            path,
            "You are not authenticated",
            Some("not_authenticated"),
            None,
        )),
    }
}

fn refused(state: &State, path: &str, code: &str, message: &str) -> Response<Body> {
    let mut response = error(StatusCode::UNAUTHORIZED, path, message, Some(code), None);
    response
        .headers_mut()
        .insert(header::SET_COOKIE, clearing_cookie(state));
    response
}

/// id6's clearing cookie: `Expires` is the time of the answer (id6's clock), not 1970.
fn clearing_cookie(state: &State) -> HeaderValue {
    let cookie = format!(
        "auth=; Max-Age=0; Path=/; Expires={}; HttpOnly",
        httpdate::fmt_http_date(state.now())
    );
    HeaderValue::try_from(cookie)
        .unwrap_or_else(|_| HeaderValue::from_static("auth=; Max-Age=0; Path=/; HttpOnly"))
}

/// `GET /user`: `null` without a cookie, the user, or 401 with id6's clearing cookie.
async fn get_user(AxumState(state): Shared, headers: HeaderMap) -> Response<Body> {
    let answer = answer_user(&state, &headers);
    state.wait_if_held().await;
    answer
}

fn answer_user(state: &State, headers: &HeaderMap) -> Response<Body> {
    match caller(state, headers, "/user") {
        Caller::Nobody => json_response(StatusCode::OK, "null".to_owned()),
        Caller::User(id) => {
            let user = state.user_json(id).unwrap_or(Value::Null);
            json_response(StatusCode::OK, user.to_string())
        }
        Caller::Refused(response) => response,
    }
}

/// `POST /user/profile`: login check, then JSON, then id6's rules (the typed calls' own,
/// [`crate::api::profile_rules`]); 204.
async fn update_profile(
    AxumState(state): Shared,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response<Body> {
    const PATH: &str = "/user/profile";
    let id = match signed_in(&state, &headers, PATH) {
        Ok(id) => id,
        Err(response) => return response,
    };
    // JSON only: id6's body parser reads `application/json` and leaves any other body
    // unread, as `{}`, which then fails the rules ("name" is required).
    let is_json = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|t| t.trim().eq_ignore_ascii_case("application/json"));
    let profile = if is_json {
        let Ok(Value::Object(profile)) = serde_json::from_slice::<Value>(&body) else {
            // id6 answers malformed JSON with a bare 400 and no errorCode.
            return error(StatusCode::BAD_REQUEST, PATH, "Internal error", None, None);
        };
        profile
    } else {
        serde_json::Map::new()
    };
    let profile = match crate::api::profile_rules(&profile) {
        Ok(profile) => profile,
        Err(details) => {
            return error(
                StatusCode::BAD_REQUEST,
                PATH,
                "Invalid body",
                Some("invalid_body"),
                Some(details),
            )
        }
    };
    if let Some(user) = lock(&state.users).get_mut(&id) {
        user.name = profile.name;
        user.bio = profile.bio;
        user.language = profile.language.unwrap_or_else(|| "en".to_owned());
        user.updated_at = state.now();
    }
    no_content()
}

/// `POST /user/picture`: multipart field `picture`, checked by file-name extension only.
async fn update_picture(AxumState(state): Shared, request: Request<Body>) -> Response<Body> {
    const PATH: &str = "/user/picture";
    let id = match signed_in(&state, request.headers(), PATH) {
        Ok(id) => id,
        Err(response) => return response,
    };
    let Ok(mut multipart) = Multipart::from_request(request, &()).await else {
        return error(StatusCode::BAD_REQUEST, PATH, "Internal error", None, None);
    };
    while let Ok(Some(field)) = multipart.next_field().await {
        if field.name() != Some("picture") {
            continue;
        }
        // A part without a file name is a text field, not a file: no file part.
        let Some(file_name) = field.file_name().map(str::to_owned) else {
            continue;
        };
        let allowed = [".png", ".jpg", ".jpeg"]
            .iter()
            .any(|ext| file_name.ends_with(ext));
        if !allowed {
            let details = json!({
                "allowedFormats": ["png", "jpg", "jpeg"],
                "allowedMimeTypes": ["image/png", "image/jpeg"],
            });
            return error(
                StatusCode::BAD_REQUEST,
                PATH,
                "Format not allowed",
                Some("format_not_allowed"),
                Some(details),
            );
        }
        let Ok(bytes) = field.bytes().await else {
            return error(StatusCode::BAD_REQUEST, PATH, "Internal error", None, None);
        };
        // A new version at each upload, even of the same bytes: the previous one goes in.
        let previous = lock(&state.users)
            .get(&id)
            .and_then(|u| u.picture.as_ref().map(|(_, version)| version.clone()))
            .unwrap_or_default();
        let digest = Sha256::new()
            .chain_update(previous.as_bytes())
            .chain_update(&bytes)
            .finalize();
        let version: String = digest[..16].iter().map(|b| format!("{b:02x}")).collect();
        if let Some(user) = lock(&state.users).get_mut(&id) {
            user.picture = Some((bytes.to_vec(), version.clone()));
        }
        let body = json!({"picture": format!("/api/user/picture?v={version}")});
        return json_response(StatusCode::OK, body.to_string());
    }
    // No file part: id6 answers an empty object and changes nothing.
    json_response(StatusCode::OK, "{}".to_owned())
}

/// `GET /user/picture`: the bytes as an attachment, or 404 `picture_not_set`.
async fn get_picture(AxumState(state): Shared, headers: HeaderMap) -> Response<Body> {
    const PATH: &str = "/user/picture";
    let id = match signed_in(&state, &headers, PATH) {
        Ok(id) => id,
        Err(response) => return response,
    };
    let picture = lock(&state.users).get(&id).and_then(|u| u.picture.clone());
    let Some((bytes, version)) = picture else {
        return error(
            StatusCode::NOT_FOUND,
            PATH,
            "Picture not set",
            Some("picture_not_set"),
            Some(json!({"type": "Resource"})),
        );
    };
    let mut response = Response::new(Body::from(bytes));
    let h = response.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/octet-stream"),
    );
    if let Ok(v) = HeaderValue::try_from(format!("attachment; filename=\"{version}\"")) {
        h.insert(header::CONTENT_DISPOSITION, v);
    }
    response
}

/// `GET /user/disconnect`: revokes every token issued before now (ms), clears the cookie.
async fn disconnect(AxumState(state): Shared, headers: HeaderMap) -> Response<Body> {
    let id = match signed_in(&state, &headers, "/user/disconnect") {
        Ok(id) => id,
        Err(response) => return response,
    };
    if let Some(user) = lock(&state.users).get_mut(&id) {
        user.invalidate_tokens_at = Some(state.now_ms());
    }
    let mut response = no_content();
    response
        .headers_mut()
        .insert(header::SET_COOKIE, clearing_cookie(&state));
    response
}

/// `POST /auth/signout`: clears the cookie in the browser; the token stays valid.
async fn sign_out(AxumState(state): Shared, headers: HeaderMap) -> Response<Body> {
    if let Err(response) = signed_in(&state, &headers, "/auth/signout") {
        return response;
    }
    let mut response = no_content();
    response
        .headers_mut()
        .insert(header::SET_COOKIE, clearing_cookie(&state));
    response
}

#[derive(serde::Deserialize)]
struct SignInQuery {
    redirect: Option<String>,
}

/// The sign-in page: a "sign in as" button per seeded user, posting to `/auth/login`.
async fn sign_in_page(
    AxumState(state): Shared,
    axum::extract::Query(query): axum::extract::Query<SignInQuery>,
) -> Response<Body> {
    let redirect = query.redirect.unwrap_or_else(|| "/".to_owned());
    let buttons: String = state
        .user_list()
        .into_iter()
        .map(|(id, name, email)| {
            format!(
                "<form method=\"post\" action=\"/auth/login\">\
                 <input type=\"hidden\" name=\"userId\" value=\"{id}\">\
                 <input type=\"hidden\" name=\"redirect\" value=\"{}\">\
                 <button type=\"submit\" id=\"sign-in-as-{id}\">Sign in as {} &lt;{}&gt;</button></form>\n",
                escape(&redirect),
                escape(&name),
                escape(&email)
            )
        })
        .collect();
    html(
        StatusCode::OK,
        &format!(
            "<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>Sign in · id6 (mock)</title></head>\n\
             <body><h1>Sign in to id6</h1>\n{buttons}</body></html>\n"
        ),
    )
}

#[derive(serde::Deserialize)]
#[serde(rename_all = "camelCase")]
struct SignInForm {
    user_id: u64,
    redirect: Option<String>,
}

/// `POST /auth/login`: sets the cookie as id6 does, then returns the browser to `redirect`,
/// which must be on the allow-list (never an open redirect). A bad cookie is refused first,
/// as on every route of id6's authentication server.
async fn sign_in(
    AxumState(state): Shared,
    headers: HeaderMap,
    axum::Form(form): axum::Form<SignInForm>,
) -> Response<Body> {
    const PATH: &str = "/auth/login";
    if let Caller::Refused(response) = caller(&state, &headers, PATH) {
        return response;
    }
    let redirect = form.redirect.as_deref().unwrap_or("/");
    let Some(redirect) = state.redirect_target(redirect) else {
        return error(
            StatusCode::BAD_REQUEST,
            PATH,
            "Redirect not allowed",
            Some("redirect_not_allowed"),
            None,
        );
    };
    if state.user_json(form.user_id).is_none() {
        return error(
            StatusCode::NOT_FOUND,
            PATH,
            "User not found",
            Some("user_not_found"),
            None,
        );
    }
    let token = state.token(form.user_id, state.now_ms());
    // As id6 sets it by default: no `Secure`, no `SameSite`.
    let cookie = format!("auth={token}; Max-Age=2592000; Path=/; HttpOnly");
    let mut response = Response::new(Body::empty());
    *response.status_mut() = StatusCode::SEE_OTHER;
    let headers = response.headers_mut();
    if let (Ok(cookie), Ok(location)) = (
        HeaderValue::try_from(cookie),
        HeaderValue::try_from(redirect),
    ) {
        headers.insert(header::SET_COOKIE, cookie);
        headers.insert(header::LOCATION, location);
    }
    response
}

/// HTML text and attribute escaping.
fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// `POST /authorize`: the secret first (401 is ours to fix), then every token outcome is a
/// 200 — and on a revoked token both `error` and `user`.
async fn authorize(
    AxumState(state): Shared,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response<Body> {
    const PATH: &str = "/authorize";
    match headers.get(header::AUTHORIZATION) {
        None => {
            return error(
                StatusCode::UNAUTHORIZED,
                PATH,
                "No token provided",
                Some("no_token_provided"),
                None,
            )
        }
        Some(secret) if secret.as_bytes() != state.authorization_secret.as_bytes() => {
            return error(
                StatusCode::UNAUTHORIZED,
                PATH,
                "Invalid secret",
                Some("invalid_token"),
                None,
            );
        }
        Some(_) => {}
    }
    let token = serde_json::from_slice::<Value>(&body)
        .ok()
        .and_then(|v| v.get("token").and_then(Value::as_str).map(str::to_owned));
    let Some(token) = token else {
        return error(
            StatusCode::BAD_REQUEST,
            PATH,
            "Invalid body",
            Some("invalid_body"),
            None,
        );
    };
    let answer = match state.verify(&token) {
        Ok(id) => match state.authz_user_json(id) {
            Some(user) => json!({ "user": user }),
            None => json!({"error": {"message": "User not found", "code": "user_not_found"}}),
        },
        Err(refusal) => {
            let mut answer = json!({"error": {"message": refusal.message, "code": refusal.code}});
            if refusal.code == "token_revoked" {
                if let Some(user) = refusal.user_id.and_then(|id| state.authz_user_json(id)) {
                    answer["user"] = user;
                }
            }
            answer
        }
    };
    json_response(StatusCode::OK, answer.to_string())
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

/// Express's HTML 404 for unknown routes and methods.
async fn not_found(method: Method, uri: Uri) -> Response<Body> {
    html(
        StatusCode::NOT_FOUND,
        &format!(
            "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n<title>Error</title>\n</head>\n<body>\n<pre>Cannot {method} {}</pre>\n</body>\n</html>\n",
            uri.path()
        ),
    )
}

/// id6's error JSON: `{"statusCode", "path", "message", "errorCode"?, "errorDetails"?}`.
fn error(
    status: StatusCode,
    path: &str,
    message: &str,
    code: Option<&str>,
    details: Option<Value>,
) -> Response<Body> {
    let mut body = json!({"statusCode": status.as_u16(), "path": path, "message": message});
    if let Some(code) = code {
        body["errorCode"] = json!(code);
    }
    if let Some(details) = details {
        body["errorDetails"] = details;
    }
    json_response(status, body.to_string())
}

fn no_content() -> Response<Body> {
    let mut response = Response::new(Body::empty());
    *response.status_mut() = StatusCode::NO_CONTENT;
    response
}

/// JSON as Express's `res.json` sends it: with a weak `ETag` of the body (the server answers
/// a matching `If-None-Match` with 304).
pub(super) fn json_response(status: StatusCode, body: String) -> Response<Body> {
    let digest = Sha256::digest(body.as_bytes());
    let hash: String = digest[..16].iter().map(|b| format!("{b:02x}")).collect();
    let etag = HeaderValue::try_from(format!("W/\"{:x}-{hash}\"", body.len()));
    let mut response = with_type(status, "application/json; charset=utf-8", body);
    if let Ok(etag) = etag {
        response.headers_mut().insert(header::ETAG, etag);
    }
    response
}

pub(super) fn html(status: StatusCode, body: &str) -> Response<Body> {
    with_type(status, "text/html; charset=utf-8", body.to_owned())
}

fn with_type(status: StatusCode, content_type: &'static str, body: String) -> Response<Body> {
    let mut response = Response::new(Body::from(body));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    response
}
