//! The crate at work, start to finish, with nothing to install: an embedded MockId6, an axum
//! app behind `id6.layer()`, and a client walking through anonymous → signed in → cache hit →
//! profile change → garbage and expired tokens → disconnect → id6 down. Every answer is checked; the example
//! exits non-zero if one is off.
//!
//! ```text
//! cargo run --example quickstart
//! ```

use std::sync::Arc;
use std::time::Duration;

use axum::{routing::get, Json, Router};
use id6_tower::testing::MockId6;
use id6_tower::{CurrentUser, Id6, Profile, RequireUser, User, UserToken};

async fn home(CurrentUser(user): CurrentUser) -> String {
    match user {
        Some(user) => format!("Hello, {}!", user.name),
        None => "Hello, anonymous!".to_owned(),
    }
}

async fn me(RequireUser(user): RequireUser) -> Json<Arc<User>> {
    Json(user)
}

async fn health() -> &'static str {
    "ok"
}

type Failure = Box<dyn std::error::Error>;

#[tokio::main]
async fn main() -> Result<(), Failure> {
    // 1. An id6 look-alike on loopback, with one user.
    let mock = MockId6::start().await?;
    let alice = mock.add_user("Alice", "alice@example.com");
    let alice_token = mock.token_for(alice);
    let bob = mock.add_user("Bob", "bob@example.com");
    let bob_token = mock.token_for(bob);
    let carol = mock.add_user("Carol", "carol@example.com");
    let carol_token = mock.token_for(carol);
    println!("MockId6 listening at {}", mock.url());
    // The typed calls below (`update_profile`, `disconnect`) are id6 calls too, of other
    // routes: the count is the layer's lookups.
    println!("[GET /user: n] counts the lookups id6 answered so far (`GET /user` only)\n");

    // 2. The app: three routes behind the id6 layer.
    let id6 = Id6::builder(mock.url())
        .cache_ttl(Duration::from_secs(60))
        .negative_ttl(Duration::from_secs(5))
        .timeout(Duration::from_millis(500))
        .build()?;
    let app = Router::new()
        .route("/", get(home))
        .route("/me", get(me))
        .route("/health", get(health))
        .layer(id6.layer());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let base = format!("http://{}", listener.local_addr()?);
    tokio::spawn(async move { axum::serve(listener, app).await });

    let walk = Walk {
        client: reqwest::Client::new(),
        base,
        mock: &mock,
    };

    println!("== anonymous: no cookie, id6 is not asked");
    walk.get("/", None, 200, "Hello, anonymous!", 0).await?;
    walk.get("/me", None, 401, "not_authenticated", 0).await?;

    println!("\n== signed in: the first request asks id6 once");
    walk.get("/me", Some(&alice_token), 200, "\"name\":\"Alice\"", 1)
        .await?;

    println!("\n== cache hit: more requests with the same cookie, no more id6 calls");
    for _ in 0..3 {
        walk.get("/", Some(&alice_token), 200, "Hello, Alice!", 1)
            .await?;
    }

    println!("\n== profile change: the very next request sees it, no TTL to wait out");
    let alice_key = UserToken::new(&alice_token).ok_or("a token")?;
    let profile = Profile::new("Alice Liddell").bio("Curiouser");
    id6.update_profile(&alice_key, &profile).await?;
    println!("id6.update_profile(Alice Liddell) -> ok");
    walk.get("/", Some(&alice_token), 200, "Hello, Alice Liddell!", 2)
        .await?;

    println!("\n== garbage cookie: no id6 token can look like this; id6 is not asked, and the");
    println!("   answer is id6's own");
    walk.get("/me", Some("not-a-jwt"), 401, "invalid_token", 2)
        .await?;

    println!("\n== expired token: id6 says 401 `token_expired`, remembered (reason included) for");
    println!("   the negative TTL");
    let expired = mock.expired_token_for(alice);
    walk.get("/me", Some(&expired), 401, "token_expired", 3)
        .await?;
    walk.get("/me", Some(&expired), 401, "token_expired", 3)
        .await?;
    walk.get("/", Some(&expired), 200, "Hello, anonymous!", 3)
        .await?;

    println!("\n== disconnect: every session of Bob ends at once, on this instance");
    walk.get("/", Some(&bob_token), 200, "Hello, Bob!", 4)
        .await?;
    let bob_key = UserToken::new(&bob_token).ok_or("a token")?;
    id6.disconnect(&bob_key).await?;
    println!("id6.disconnect(Bob) -> ok");
    walk.get("/me", Some(&bob_token), 401, "token_revoked", 5)
        .await?;

    println!("\n== id6 down: the cached user is still served; an unknown token gets 503");
    mock.shutdown().await;
    let alice_json = "\"name\":\"Alice Liddell\"";
    walk.get("/me", Some(&alice_token), 200, alice_json, 5)
        .await?;
    walk.get("/me", Some(&carol_token), 503, "id6_unavailable", 5)
        .await?;
    walk.get("/health", Some(&carol_token), 200, "ok", 5)
        .await?;

    println!("\nid6.stats(): {:#?}", id6.stats());
    println!(
        "\nAll answers as expected; id6 was asked who is calling (`GET /user`) {} times.",
        mock.user_calls()
    );
    Ok(())
}

struct Walk<'a> {
    client: reqwest::Client,
    base: String,
    mock: &'a MockId6,
}

impl Walk<'_> {
    /// One request, printed with its answer and how many `GET /user` id6 answered so far
    /// (the layer's lookups; the typed calls use other routes), and checked.
    async fn get(
        &self,
        path: &str,
        token: Option<&str>,
        want_status: u16,
        want_in_body: &str,
        want_calls: usize,
    ) -> Result<(), Failure> {
        let mut request = self.client.get(format!("{}{path}", self.base));
        if let Some(token) = token {
            request = request.header("cookie", format!("theme=dark; auth={token}"));
        }
        let response = request.send().await?;
        let status = response.status().as_u16();
        let retry = response
            .headers()
            .get("retry-after")
            .map(|v| format!(" (Retry-After: {})", v.to_str().unwrap_or("?")))
            .unwrap_or_default();
        let body = response.text().await?;
        let calls = self.mock.user_calls();
        let cookie = if token.is_some() {
            "auth=<token>"
        } else {
            "none"
        };
        println!(
            "GET {path:<8} cookie: {cookie:<13} -> {status}{retry} {body}    [GET /user: {calls}]"
        );
        if status != want_status || !body.contains(want_in_body) || calls != want_calls {
            return Err(format!(
                "expected {want_status} with `{want_in_body}` after {want_calls} calls of `GET /user`"
            )
            .into());
        }
        Ok(())
    }
}
