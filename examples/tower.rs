//! The layer on a bare `tower::service_fn`, served by hyper-util: no axum at all. The
//! handler reads the caller from `http::Extensions`.
//!
//! Starts an embedded MockId6, serves on 127.0.0.1:0, calls itself as a signed-in and as an
//! anonymous caller, prints the answers and exits 0.
//!
//! ```text
//! cargo run --example tower
//! ```

use std::convert::Infallible;

use hyper_util::rt::TokioIo;
use hyper_util::service::TowerToHyperService;
use id6_tower::testing::MockId6;
use id6_tower::{Authentication, Id6};
use tower::{service_fn, Layer};

async fn hello(
    request: http::Request<hyper::body::Incoming>,
) -> Result<http::Response<String>, Infallible> {
    let text = match Authentication::of(request.extensions()) {
        Some(Authentication::Authenticated(user)) => format!("Hello, {}!", user.name),
        Some(Authentication::Unavailable(_)) => {
            "Who are you? id6 cannot tell right now.".to_owned()
        }
        _ => "Hello, anonymous!".to_owned(),
    };
    Ok(http::Response::new(text))
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mock = MockId6::start().await?;
    let alice = mock.add_user("Alice", "alice@example.com");
    let token = mock.token_for(alice);
    let id6 = Id6::builder(mock.url()).build()?;

    let service = id6.layer().layer(service_fn(hello));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let service = TowerToHyperService::new(service.clone());
            tokio::spawn(
                hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service),
            );
        }
    });
    println!("service_fn behind id6.layer() on http://{addr}\n");

    let client = reqwest::Client::new();
    for cookie in [Some(format!("auth={token}")), None] {
        let mut request = client.get(format!("http://{addr}/"));
        if let Some(cookie) = &cookie {
            request = request.header("cookie", cookie);
        }
        let text = request.send().await?.text().await?;
        let shown = if cookie.is_some() {
            "auth=<token>"
        } else {
            "none"
        };
        println!("cookie: {shown:<13} -> {text}");
    }
    println!("\nid6 was asked {} time(s).", mock.user_calls());
    Ok(())
}
