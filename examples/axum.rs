//! A small profile service behind `id6.layer()`.
//!
//! With `ID6_URL` set it talks to that id6 (see `Id6::from_env` for the other variables);
//! without it, it starts an embedded MockId6 with one user and prints a ready `curl` line.
//! Binds `BIND` (default `127.0.0.1:3000`).
//!
//! ```text
//! cargo run --example axum
//! curl -H 'cookie: auth=<token>' http://127.0.0.1:3000/me
//! ```
//!
//! Routes (a public contract: kept stable):
//! - `GET /` → `Hello, <name>!` or `Hello, anonymous!`
//! - `GET /me` → the user's JSON, or 401 / 503 with id6's error JSON
//! - `POST /me/profile` (JSON `{name, bio?, language?}`) → 204, or 400 with id6's error body
//! - `POST /me/picture` (multipart field `picture`) → `{"picture": "<url>"}`
//! - `GET /me/picture` → the picture, streamed from id6
//! - `POST /logout` → 204, signs out (the token leaves the cache, the cookie the browser)
//! - `POST /logout-everywhere` → 204, revokes every token of the user on id6 and here

use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Multipart, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use id6_tower::testing::MockId6;
use id6_tower::{CurrentUser, Id6, PictureUpload, Profile, RequireUser, User};
use serde::Deserialize;

async fn home(CurrentUser(user): CurrentUser) -> String {
    match user {
        Some(user) => format!("Hello, {}!", user.name),
        None => "Hello, anonymous!".to_owned(),
    }
}

async fn me(RequireUser(user): RequireUser) -> Json<Arc<User>> {
    Json(user)
}

#[derive(Deserialize)]
struct ProfileForm {
    name: String,
    bio: Option<String>,
    language: Option<String>,
}

async fn update_profile(
    State(id6): State<Id6>,
    headers: HeaderMap,
    Json(form): Json<ProfileForm>,
) -> Result<StatusCode, id6_tower::Error> {
    let mut profile = Profile::new(form.name);
    profile.bio = form.bio;
    profile.language = form.language;
    id6.update_profile(&headers, &profile).await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn update_picture(
    State(id6): State<Id6>,
    headers: HeaderMap,
    mut multipart: Multipart,
) -> Result<Response, id6_tower::Error> {
    while let Ok(Some(field)) = multipart.next_field().await {
        if field.name() != Some("picture") {
            continue;
        }
        let file_name = field.file_name().unwrap_or_default().to_owned();
        let Ok(bytes) = field.bytes().await else {
            return Ok((StatusCode::BAD_REQUEST, "unreadable upload").into_response());
        };
        let url = id6
            .update_picture(&headers, PictureUpload::from_bytes(file_name, bytes))
            .await?;
        return Ok(Json(serde_json::json!({ "picture": url })).into_response());
    }
    Ok((StatusCode::BAD_REQUEST, "no `picture` field").into_response())
}

async fn picture(State(id6): State<Id6>, headers: HeaderMap) -> Result<Response, id6_tower::Error> {
    let download = id6.picture(&headers).await?;
    let content_type = download
        .content_type()
        .unwrap_or("application/octet-stream")
        .to_owned();
    let body = Body::from_stream(download.into_stream());
    Ok(([(header::CONTENT_TYPE, content_type)], body).into_response())
}

/// The browser's cookie goes too; id6 would clear it the same way.
const CLEAR_COOKIE: &str = "auth=; Max-Age=0; Path=/; HttpOnly";

async fn logout(State(id6): State<Id6>, headers: HeaderMap) -> Result<Response, id6_tower::Error> {
    id6.sign_out(&headers).await?;
    Ok((StatusCode::NO_CONTENT, [(header::SET_COOKIE, CLEAR_COOKIE)]).into_response())
}

async fn logout_everywhere(
    State(id6): State<Id6>,
    headers: HeaderMap,
) -> Result<Response, id6_tower::Error> {
    id6.disconnect(&headers).await?;
    Ok((StatusCode::NO_CONTENT, [(header::SET_COOKIE, CLEAR_COOKIE)]).into_response())
}

/// The app, for any `Id6` handle.
fn app(id6: Id6) -> Router {
    Router::new()
        .route("/", get(home))
        .route("/me", get(me))
        .route("/me/profile", post(update_profile))
        .route("/me/picture", get(picture).post(update_picture))
        .route("/logout", post(logout))
        .route("/logout-everywhere", post(logout_everywhere))
        .layer(id6.layer())
        .with_state(id6)
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let bind = std::env::var("BIND").unwrap_or_else(|_| "127.0.0.1:3000".to_owned());

    // Keep the mock alive for as long as the server runs.
    let (id6, _mock, token) = if std::env::var_os("ID6_URL").is_some() {
        (Id6::from_env()?, None, None)
    } else {
        let mock = MockId6::start().await?;
        let alice = mock.add_user("Alice", "alice@example.com");
        let token = mock.token_for(alice);
        println!(
            "ID6_URL is unset: using an embedded MockId6 at {}",
            mock.url()
        );
        (Id6::builder(mock.url()).build()?, Some(mock), Some(token))
    };

    let listener = tokio::net::TcpListener::bind(&bind).await?;
    let addr = listener.local_addr()?;
    println!("listening on http://{addr}");
    if let Some(token) = token {
        println!("try: curl -H 'cookie: auth={token}' http://{addr}/me");
    }
    axum::serve(listener, app(id6))
        .with_graceful_shutdown(async {
            let _ = tokio::signal::ctrl_c().await;
        })
        .await?;
    Ok(())
}
