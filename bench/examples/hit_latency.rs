//! A hit's tail: per-request latency of the layered Router on a hot cookie against the bare
//! Router, each timed request by request (`Instant` around one `oneshot`), as p50, p90, p99
//! and p99.9 over 400 000 requests, three rounds. The `overhead` bench gives medians only.
//!
//! ```text
//! cargo run --release -p id6-tower-bench --example hit_latency
//! ```

use std::time::Instant;

use axum::routing::get;
use axum::Router;
use support::{one_worker, request, Alice};
use tower::{Layer, ServiceExt};

#[path = "../benches/support/mod.rs"]
mod support;

const REQUESTS: usize = 400_000;

fn main() {
    let rt = one_worker();
    let alice = Alice::start(&rt);
    let id6 = alice.handle();
    let hit = alice.cookie.clone();
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
