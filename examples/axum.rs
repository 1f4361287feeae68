//! A small axum server behind `id6.layer()`.
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
//! Routes: `GET /` → `Hello, <name>!` or `Hello, anonymous!`; `GET /me` → the user's JSON,
//! or 401 / 503 with id6's error JSON.

use std::sync::Arc;

use axum::{routing::get, Json, Router};
use id6_tower::testing::MockId6;
use id6_tower::{CurrentUser, Id6, RequireUser, User};

async fn home(CurrentUser(user): CurrentUser) -> String {
    match user {
        Some(user) => format!("Hello, {}!", user.name),
        None => "Hello, anonymous!".to_owned(),
    }
}

async fn me(RequireUser(user): RequireUser) -> Json<Arc<User>> {
    Json(user)
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

    let app = Router::new()
        .route("/", get(home))
        .route("/me", get(me))
        .layer(id6.layer());

    let listener = tokio::net::TcpListener::bind(&bind).await?;
    let addr = listener.local_addr()?;
    println!("listening on http://{addr}");
    if let Some(token) = token {
        println!("try: curl -H 'cookie: auth={token}' http://{addr}/me");
    }
    axum::serve(listener, app)
        .with_graceful_shutdown(async {
            let _ = tokio::signal::ctrl_c().await;
        })
        .await?;
    Ok(())
}
