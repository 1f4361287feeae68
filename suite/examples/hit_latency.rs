//! A hit's tail: per-request latency of the layered Router on a hot cookie against the bare
//! Router, each timed request by request (`Instant` around one `oneshot`), as p50, p90, p99
//! and p99.9 over 400 000 requests, three rounds. The `overhead` bench gives medians only.
//!
//! ```text
//! cargo run --release -p id6-tower-suite --example hit_latency
//! ```

use std::time::{Duration, Instant};

use axum::body::Body;
use axum::routing::get;
use axum::Router;
use id6_tower::testing::MockId6;
use id6_tower::Id6;
use tower::{Layer, ServiceExt};

const REQUESTS: usize = 400_000;

fn request(cookie: Option<&str>) -> http::Request<Body> {
    let mut builder = http::Request::get("/");
    if let Some(cookie) = cookie {
        builder = builder.header("cookie", cookie);
    }
    builder.body(Body::empty()).unwrap()
}

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let mock = rt.block_on(MockId6::start()).unwrap();
    let id6 = Id6::builder(mock.url())
        .cache_ttl(Duration::from_secs(3600))
        .build()
        .unwrap();
    let alice = mock.add_user("Alice", "alice@example.com");
    let token = mock.token_for(alice);
    let hit = format!("_ga=GA1.1.123456789.1700000000; theme=dark; auth={token}; lang=fr");
    let inner = Router::new().route("/", get(|| async { "ok" }));
    // Both behind one more Router, so that both are the same type.
    let bare = Router::new().fallback_service(inner.clone());
    let layered = Router::new().fallback_service(id6.layer().layer(inner));
    rt.block_on(async {
        let _ = layered.clone().oneshot(request(Some(&hit))).await;
        for round in 0..3 {
            for (name, service, cookie) in [("bare", &bare, None), ("hit", &layered, Some(&*hit))] {
                let mut times = Vec::with_capacity(REQUESTS);
                for _ in 0..REQUESTS {
                    let request = request(cookie);
                    let start = Instant::now();
                    let response = service.clone().oneshot(request).await.unwrap();
                    times.push(start.elapsed().as_nanos() as u64);
                    drop(response);
                }
                times.sort_unstable();
                let at = |q: f64| times[(REQUESTS as f64 * q) as usize];
                println!(
                    "round {round} {name:<4} p50 {:>6} p90 {:>6} p99 {:>6} p99.9 {:>6} ns, p99/p50 {:.2}",
                    at(0.5),
                    at(0.9),
                    at(0.99),
                    at(0.999),
                    at(0.99) as f64 / at(0.5) as f64
                );
            }
        }
    });
}
