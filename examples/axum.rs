//! A small profile service behind `id6.layer()`.
//!
//! With `ID6_URL` set it talks to that id6; without it, it starts an embedded MockId6 with
//! two users, Alice (an admin) and Bob (not one), and prints a ready `curl` line for each. Either way the other `ID6_*` variables apply
//! (see `Id6Builder::from_env`), `ID6_MISS_LIMIT` and `ID6_REFRESH_AFTER` among them: it is
//! served with each connection's address (`ConnectInfo`), so the miss budget counts calls
//! per caller.
//! Binds `BIND` (default `127.0.0.1:3000`). Logs go to stderr as `RUST_LOG` says (`info`
//! without it), so the crate's warnings show: `RUST_LOG=id6_tower=debug,info` for more.
//!
//! ```text
//! cargo run --example axum
//! curl -H 'cookie: auth=<token>' http://127.0.0.1:3000/me
//! ```
//!
//! Routes (a public contract: kept stable):
//! - `GET /` → `Hello, <name>!` or `Hello, anonymous!`
//! - `GET /me` → the user's JSON, or 401 / 503 with id6's error JSON
//! - `GET /health` → always 200, JSON: `{"id6": {"state": "calling" | "held back", ..},
//!   "redis": {"state": "off" | "starting" | "up" | "degraded" | "down", "topology",
//!   "sinceMs"?}}`
//! - `POST /me/profile` (JSON `{name, bio?, language?}`) → 204, or 400 with id6's error body
//!   (`invalid_body` for any invalid body, as id6 answers it)
//! - `POST /me/picture` (multipart field `picture`) → `{"picture": "<url>"}`
//! - `GET /me/picture` → the picture, streamed from id6
//! - `POST /logout` → 204, signs out (the token leaves the cache, the cookie the browser);
//!   from a browser form, 303 back to `/app`. The cookie is cleared whatever id6 answered:
//!   with id6 unavailable the token leaves the cache all the same (and the answer is id6's
//!   503); a dead or missing token from a form is signed out already (303 to `/app`)
//! - `POST /logout-everywhere` → 204, revokes every token of the user on id6 and here
//! - `GET /app` → an HTML page: "Signed in as <name>" with a sign-out button, or
//!   "Anonymous" with a link to id6's sign-in page (`ID6_LOGIN_URL`, or the embedded
//!   MockId6's) that comes back to `/app` at the app's public address (`PUBLIC_URL`, default
//!   `http://<BIND>`; never the request's `Host`, which a client writes)
//! - `GET /account` (behind `id6.require_user()`) → `Account of <name>`; anonymous with
//!   `Accept: text/html` → `303` to the sign-in page (`ID6_LOGIN_URL`, or the embedded
//!   MockId6's, coming back to `/account`); anonymous otherwise → 401 JSON
//! - `GET /admin` (behind `id6.require_user_where(..)`) → `Admin: <name>` for users whose
//!   email is in `ADMIN_EMAILS` (comma-separated; embedded MockId6: Alice); other users →
//!   403 `forbidden`; anonymous → 401
//! - every write (`POST /me/profile`, `/me/picture`, `/logout`, `/logout-everywhere`) is behind
//!   `id6.csrf()`: a cross-site one carrying the cookie → 403 `csrf_rejected` (the app's own
//!   origin and `ID6_TRUSTED_ORIGINS` are trusted)
//! - `GET /ws` (a WebSocket, signed-in users only: 401 otherwise) → first `signed in as
//!   <name>`, then an echo of every message; closed with 1008 and the reason when the token
//!   dies: `signed_out` after `/logout`, `token_revoked` after `/logout-everywhere` or a
//!   revocation on id6
//! - `GET /events` (SSE, signed-in users only) → `data: tick <n>` each second; `event:
//!   revoked` (`data:` the same reason) and the end when the token dies
//! - `/app`'s page shows a live line fed by `/ws`: "Live: signed in as <name>", then "Live:
//!   signed out (<reason>)" when the socket is closed
//! - the handlers that call id6 with the user's token hand it the request's `Parts`, so a
//!   token the cache does not know is charged to the caller's miss budget, as the layer's
//!   misses are: a flood of forged cookies through `/logout` or `/me/picture` costs id6 no
//!   more than one through `/me`

use std::sync::Arc;

use axum::body::Body;
use axum::body::Bytes;
use axum::extract::ws::{Message, WebSocketUpgrade};
use axum::extract::{FromRef, Multipart, State};
use axum::http::request::Parts;
use axum::http::{header, StatusCode};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{Html, IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use futures_util::Stream;
use id6_tower::testing::MockId6;
use id6_tower::{
    CurrentUser, Id6, Id6Builder, PictureUpload, Profile, RequireUser, Session, SharedHealth, User,
};

/// What the handlers share: the id6 handle, where browsers sign in, and who is an admin.
#[derive(Clone)]
pub struct AppState {
    /// The id6 handle (its layer wraps the routes).
    pub id6: Id6,
    /// id6's sign-in page, to which `?redirect=<this app's /app>` is appended.
    pub login_url: Option<String>,
    /// Where browsers reach this app (`PUBLIC_URL`), for the way back from signing in.
    pub public_url: String,
    /// Emails allowed on `/admin` (`ADMIN_EMAILS`, comma-separated).
    pub admin_emails: Arc<[String]>,
}

/// `ADMIN_EMAILS`, comma-separated; `default` when unset.
fn admin_emails(default: &[&str]) -> Arc<[String]> {
    match std::env::var("ADMIN_EMAILS") {
        Ok(list) => list
            .split(',')
            .map(str::trim)
            .filter(|e| !e.is_empty())
            .map(str::to_owned)
            .collect(),
        Err(_) => default.iter().map(|e| (*e).to_owned()).collect(),
    }
}

impl FromRef<AppState> for Id6 {
    fn from_ref(state: &AppState) -> Id6 {
        state.id6.clone()
    }
}

/// A shared tier failing (in part, or wholly) since `since`, as JSON.
fn failing(
    state: &str,
    topology: id6_tower::Topology,
    since: std::time::SystemTime,
) -> serde_json::Value {
    let since_ms = since
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis());
    serde_json::json!({ "state": state, "topology": topology.as_str(), "sinceMs": since_ms })
}

/// Readiness: how id6 and the shared tier are doing, as JSON; always 200, since the app
/// serves requests whatever they say (a Redis outage means more id6 calls, not errors).
async fn health(State(id6): State<Id6>) -> Json<serde_json::Value> {
    let id6_state = match id6.health() {
        id6_tower::Health::Closed => serde_json::json!({ "state": "calling" }),
        id6_tower::Health::Open { rate_limited, .. } => {
            serde_json::json!({ "state": "held back", "rateLimited": rate_limited })
        }
        _ => serde_json::json!({ "state": "unknown" }),
    };
    let shared = match id6.shared_health() {
        SharedHealth::Off => serde_json::json!({ "state": "off" }),
        SharedHealth::Starting { topology } => {
            serde_json::json!({ "state": "starting", "topology": topology.as_str() })
        }
        SharedHealth::Up { topology } => {
            serde_json::json!({ "state": "up", "topology": topology.as_str() })
        }
        SharedHealth::Degraded {
            topology, since, ..
        } => failing("degraded", topology, since),
        SharedHealth::Down {
            topology, since, ..
        } => failing("down", topology, since),
        _ => serde_json::json!({ "state": "unknown" }),
    };
    Json(serde_json::json!({ "id6": id6_state, "redis": shared }))
}

async fn home(CurrentUser(user): CurrentUser) -> String {
    match user {
        Some(user) => format!("Hello, {}!", user.name),
        None => "Hello, anonymous!".to_owned(),
    }
}

async fn me(RequireUser(user): RequireUser) -> Json<Arc<User>> {
    Json(user)
}

/// The body is read as id6 reads it, so an invalid one gets id6's own `400 invalid_body`
/// (not axum's 422 from a typed `Json` extractor).
async fn update_profile(
    State(id6): State<Id6>,
    parts: Parts,
    body: Bytes,
) -> Result<StatusCode, id6_tower::Error> {
    let profile = Profile::from_json(&body)?;
    id6.update_profile(&parts, &profile).await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn account(RequireUser(user): RequireUser) -> String {
    format!("Account of {}", user.name)
}

async fn admin(RequireUser(user): RequireUser) -> String {
    format!("Admin: {}", user.name)
}

async fn update_picture(
    State(id6): State<Id6>,
    parts: Parts,
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
            .update_picture(&parts, PictureUpload::from_bytes(file_name, bytes))
            .await?;
        return Ok(Json(serde_json::json!({ "picture": url })).into_response());
    }
    Ok((StatusCode::BAD_REQUEST, "no `picture` field").into_response())
}

async fn picture(State(id6): State<Id6>, parts: Parts) -> Result<Response, id6_tower::Error> {
    let download = id6.picture(&parts).await?;
    let content_type = download
        .content_type()
        .unwrap_or("application/octet-stream")
        .to_owned();
    let body = Body::from_stream(download.into_stream());
    Ok(([(header::CONTENT_TYPE, content_type)], body).into_response())
}

/// Signs out at id6 and here. The browser's cookie goes whatever id6 answered (id6's own
/// clearing `Set-Cookie` comes to this server, not to the browser): id6 down or rate
/// limiting must not leave a signed-in browser behind (`sign_out` takes the token out of
/// the cache all the same). A token already dead, or none (signed out in another tab), is signed out:
/// a page goes back to `/app`, an API client gets id6's 401.
async fn logout(State(id6): State<Id6>, parts: Parts) -> Response {
    let signed_out = id6.sign_out(&parts).await;
    let from_a_page = parts
        .headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.contains("text/html"));
    let clear = [(header::SET_COOKIE, id6.clearing_cookie())];
    match signed_out {
        Ok(()) if from_a_page => (clear, Redirect::to("/app")).into_response(),
        Ok(()) => (StatusCode::NO_CONTENT, clear).into_response(),
        Err(error) if error.is_unauthenticated() && from_a_page => {
            (clear, Redirect::to("/app")).into_response()
        }
        // id6 not told (down, rate limiting): `sign_out` took the token out of the cache.
        Err(error) => (clear, error).into_response(),
    }
}

/// A WebSocket for signed-in users: a greeting, then an echo, until the client leaves or
/// the token dies (then closed with 1008 and id6's reason).
async fn ws(session: Session, upgrade: WebSocketUpgrade) -> Response {
    upgrade.on_upgrade(move |socket| async move {
        let greeting = format!("signed in as {}", session.user().name);
        let mut socket = session.websocket(socket);
        if socket.send(Message::Text(greeting.into())).await.is_err() {
            return;
        }
        while let Some(Ok(message)) = socket.recv().await {
            let echo = matches!(message, Message::Text(_) | Message::Binary(_));
            if echo && socket.send(message).await.is_err() {
                break;
            }
        }
    })
}

/// Server-sent ticks for signed-in users, until the token dies (`event: revoked`).
async fn events(
    session: Session,
) -> Sse<impl Stream<Item = Result<Event, std::convert::Infallible>>> {
    let ticks = futures_util::stream::unfold(0u64, |n| async move {
        if n > 0 {
            tokio::time::sleep(std::time::Duration::from_secs(1)).await;
        }
        Some((Ok(Event::default().data(format!("tick {n}"))), n + 1))
    });
    Sse::new(session.sse(ticks)).keep_alive(KeepAlive::default())
}

/// The page's live line: fed by `/ws`, it says when the session ends.
const LIVE_SCRIPT: &str = r#"<p id="live">Live: connecting</p>
<script>
(() => {
  const live = document.getElementById("live");
  const socket = new WebSocket(location.origin.replace(/^http/, "ws") + "/ws");
  socket.onmessage = (event) => { if (!live.dataset.ended) live.textContent = "Live: " + event.data; };
  socket.onclose = (event) => {
    live.dataset.ended = "1";
    live.textContent = "Live: signed out (" + (event.reason || "connection closed") + ")";
  };
})();
</script>"#;

/// The browser page: who is signed in, and a way in or out. Plain HTML, no build step.
async fn page(State(state): State<AppState>, CurrentUser(user): CurrentUser) -> Html<String> {
    let body = match user {
        Some(user) => format!(
            "<h1 id=\"status\">Signed in as {}</h1>\n\
             <form method=\"post\" action=\"/logout\"><button id=\"sign-out\" type=\"submit\">Sign out</button></form>\n{LIVE_SCRIPT}",
            escape(&user.name)
        ),
        None => {
            let back = format!("{}/app", state.public_url.trim_end_matches('/'));
            let sign_in = state.login_url.as_deref().and_then(|login| {
                reqwest::Url::parse_with_params(login, [("redirect", back.as_str())]).ok()
            });
            let link = match sign_in {
                Some(url) => format!(
                    "<a id=\"sign-in\" href=\"{}\">Sign in with id6</a>",
                    escape(url.as_str())
                ),
                None => "<p>Set ID6_LOGIN_URL to link to id6's sign-in page.</p>".to_owned(),
            };
            format!("<h1 id=\"status\">Anonymous</h1>\n{link}")
        }
    };
    Html(format!(
        "<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>id6-tower demo</title></head>\n<body>\n{body}\n</body></html>\n"
    ))
}

fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

async fn logout_everywhere(
    State(id6): State<Id6>,
    parts: Parts,
) -> Result<Response, id6_tower::Error> {
    id6.disconnect(&parts).await?;
    let clear = [(header::SET_COOKIE, id6.clearing_cookie())];
    Ok((StatusCode::NO_CONTENT, clear).into_response())
}

/// The app, for any `Id6` handle (the browser test serves it too).
pub fn app(state: AppState) -> Router {
    let id6 = state.id6.clone();
    let admins = state.admin_emails.clone();
    let is_admin = move |user: &User| {
        user.email
            .as_ref()
            .is_some_and(|email| admins.iter().any(|a| a.eq_ignore_ascii_case(email)))
    };
    // Every route that writes, behind the CSRF check (the app's own origin by `Host`, plus
    // ID6_TRUSTED_ORIGINS).
    let writes = Router::new()
        .route("/me/profile", post(update_profile))
        .route("/me/picture", post(update_picture))
        .route("/logout", post(logout))
        .route("/logout-everywhere", post(logout_everywhere))
        .route_layer(id6.csrf());
    Router::new()
        .route("/", get(home))
        .route("/health", get(health))
        .route("/app", get(page))
        .route("/me", get(me))
        .route("/me/picture", get(picture))
        .route("/ws", get(ws))
        .route("/events", get(events))
        .route("/account", get(account).route_layer(id6.require_user()))
        .route(
            "/admin",
            get(admin).route_layer(id6.require_user_where(is_admin)),
        )
        .merge(writes)
        .layer(id6.layer())
        .with_state(state)
}

/// A bad setting ends the process with one line naming it (and status 1), not a panic or a
/// `Debug` dump.
#[tokio::main]
async fn main() -> std::process::ExitCode {
    #[cfg(not(test))]
    log_as_rust_log_says();
    match run().await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("axum example: {error}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// Logs to stderr what `RUST_LOG` asks for, as an app would: comma-separated `target=level`
/// directives or a bare level (`RUST_LOG=id6_tower=debug,info`), `info` without it. The
/// crate's warnings (id6 unavailable or rate-limiting us, Redis down) show by default.
/// Only in the example binary: the suites that include this file for its routes have their
/// own subscriber, or none.
#[cfg(not(test))]
fn log_as_rust_log_says() {
    use tracing_subscriber::filter::{LevelFilter, Targets};
    use tracing_subscriber::layer::SubscriberExt;

    let everything_at_info = || Targets::new().with_default(LevelFilter::INFO);
    let asked = std::env::var("RUST_LOG")
        .ok()
        .filter(|v| !v.trim().is_empty());
    let parsed = asked.as_deref().map(str::parse::<Targets>);
    let filter = match &parsed {
        Some(Ok(targets)) => targets.clone(),
        Some(Err(_)) | None => everything_at_info(),
    };
    let subscriber = tracing_subscriber::registry()
        .with(tracing_subscriber::fmt::layer().with_writer(std::io::stderr))
        .with(filter);
    if tracing::subscriber::set_global_default(subscriber).is_ok() {
        if let Some(Err(error)) = parsed {
            tracing::warn!(%error, "RUST_LOG not understood; logging at info");
        }
    }
}

async fn run() -> Result<(), Box<dyn std::error::Error>> {
    let bind = std::env::var("BIND").unwrap_or_else(|_| "127.0.0.1:3000".to_owned());

    let listener = tokio::net::TcpListener::bind(&bind).await?;
    let addr = listener.local_addr()?;
    let public_url = std::env::var("PUBLIC_URL").unwrap_or_else(|_| format!("http://{addr}"));
    let public_origin = match reqwest::Url::parse(&public_url) {
        Ok(url) if matches!(url.scheme(), "http" | "https") && url.has_host() => {
            url.origin().ascii_serialization()
        }
        _ => {
            return Err(format!("PUBLIC_URL is not an absolute http(s) URL: {public_url:?}").into())
        }
    };
    let public_url = public_url.trim_end_matches('/').to_owned();

    // Keep the mock alive for as long as the server runs.
    let (state, _mock, tokens) = if std::env::var_os("ID6_URL").is_some() {
        let login_url = std::env::var("ID6_LOGIN_URL").ok();
        let state = AppState {
            id6: Id6::from_env()?,
            login_url,
            public_url,
            admin_emails: admin_emails(&[]),
        };
        (state, None, None)
    } else {
        let mock = MockId6::start().await?;
        let alice = mock.add_user("Alice", "alice@example.com");
        let bob = mock.add_user("Bob", "bob@example.com");
        mock.allow_redirect(&public_origin);
        let tokens = [
            ("Alice, an admin", mock.token_for(alice)),
            ("Bob, not an admin: 403", mock.token_for(bob)),
        ];
        println!(
            "ID6_URL is unset: using an embedded MockId6 at {}",
            mock.url()
        );
        let login = format!("{}/login", mock.url());
        // Every other ID6_* variable still applies (ID6_MISS_LIMIT, ID6_REFRESH_AFTER...); the
        // guards send browsers to the mock's sign-in page, which comes back to /account.
        let mut builder = Id6Builder::from_env_or(mock.url());
        if std::env::var_os("ID6_LOGIN_URL").is_none() {
            builder = builder.login_url(mock.sign_in_url(&format!("{public_url}/account")));
        }
        let state = AppState {
            id6: builder.build()?,
            login_url: Some(login),
            public_url,
            admin_emails: admin_emails(&["alice@example.com"]),
        };
        (state, Some(mock), Some(tokens))
    };

    println!("listening on http://{addr} (open http://{addr}/app in a browser)");
    for (who, token) in tokens.iter().flatten() {
        println!("try ({who}): curl -H 'cookie: auth={token}' http://{addr}/admin");
    }
    // With each connection's address: the miss budget counts id6 calls per caller.
    let app = app(state).into_make_service_with_connect_info::<std::net::SocketAddr>();
    axum::serve(listener, app)
        .with_graceful_shutdown(async {
            let _ = tokio::signal::ctrl_c().await;
        })
        .await?;
    Ok(())
}
