//! `Id6::stats()` and the `metrics` counters move as they should for every kind of lookup.

#[path = "../../tests/common/mod.rs"]
mod common;

use std::collections::HashMap;

use common::Setup;
use futures_util::FutureExt;
use id6_tower::testing::MockId6;
use metrics_util::debugging::{DebugValue, DebuggingRecorder, Snapshotter};
use tower::ServiceExt;

/// Counter values by `name{label=value}`, histograms by their number of samples.
fn metrics(snapshotter: &Snapshotter) -> HashMap<String, u64> {
    snapshotter
        .snapshot()
        .into_vec()
        .into_iter()
        .map(|(key, _, _, value)| {
            let key = key.key();
            let labels: Vec<String> = key
                .labels()
                .map(|l| format!("{}={}", l.key(), l.value()))
                .collect();
            let name = format!("{}{{{}}}", key.name(), labels.join(","));
            let value = match value {
                DebugValue::Counter(n) => n,
                DebugValue::Histogram(samples) => samples.len() as u64,
                DebugValue::Gauge(g) => g.into_inner() as u64,
            };
            (name, value)
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn counters_follow_hits_misses_negatives_and_coalescing() {
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    let mock = MockId6::start().await.unwrap();
    // Handles are registered at build time, with the recorder in place then.
    let id6 = metrics::with_local_recorder(&recorder, || common::builder(&mock).build().unwrap());
    let s = Setup::with(mock, id6).await;
    let alice = s.mock.add_user("Alice", "a@example.com");
    let bob = s.mock.add_user("Bob", "b@example.com");
    let (alice_token, bob_token) = (s.mock.token_for(alice), s.mock.token_for(bob));
    let expired = s.mock.expired_token_for(alice);

    s.get("/", None).await; // no token
    s.get("/", Some("a b")).await; // malformed
    s.get("/", Some(&alice_token)).await; // miss
    s.get("/", Some(&alice_token)).await; // hit
    s.get("/", Some(&alice_token)).await; // hit
    s.get("/", Some("not-a-jwt")).await; // malformed: no JWT, refused locally
    s.get("/", Some(&expired)).await; // miss, rejected by id6
    s.get("/", Some(&expired)).await; // negative hit

    // Ten requests for Bob while id6's answer is held: one miss starts the call, nine join.
    // Each is polled once, here: the layer looks the token up in that first poll, so each
    // has missed (and all but the first joined) before the next starts; no waiting.
    s.mock.hold_user_answers();
    let app = common::app(&s.id6);
    let mut waiting = Vec::new();
    for i in 0..10 {
        let request = http::Request::get("/")
            .header("cookie", format!("auth={bob_token}"))
            .body(axum::body::Body::empty())
            .unwrap();
        let mut response = Box::pin(app.clone().oneshot(request));
        assert!(response.as_mut().now_or_never().is_none(), "waits on id6");
        assert_eq!(s.id6.stats().misses, 3 + i, "request {i} has missed");
        waiting.push(response);
    }
    s.mock.wait_for_held_answers(1).await;
    s.mock.release_user_answers();
    for response in futures_util::future::join_all(waiting).await {
        assert_eq!(response.unwrap().status(), 200);
    }
    s.id6.invalidate_user(alice);

    let stats = s.id6.stats();
    let got = [
        stats.no_token,
        stats.malformed,
        stats.hits,
        stats.negative_hits,
        stats.misses,
        stats.coalesced,
        stats.upstream_authenticated,
        stats.upstream_rejected,
        stats.upstream_unavailable,
        stats.evictions,
    ];
    assert_eq!(got, [1, 2, 2, 1, 12, 9, 2, 1, 0, 1], "{stats:?}");
    assert_eq!(s.mock.user_calls(), 3);

    let m = metrics(&snapshotter);
    let expect = [
        ("id6_lookups_total{result=no_token}", 1),
        ("id6_lookups_total{result=malformed}", 2),
        ("id6_lookups_total{result=hit}", 2),
        ("id6_lookups_total{result=negative_hit}", 1),
        ("id6_lookups_total{result=miss}", 12),
        ("id6_lookups_total{result=coalesced}", 9),
        ("id6_upstream_calls_total{outcome=authenticated}", 2),
        ("id6_upstream_calls_total{outcome=rejected}", 1),
        ("id6_upstream_calls_total{outcome=unavailable}", 0),
        ("id6_upstream_duration_seconds{}", 3),
        ("id6_cache_evictions_total{reason=user}", 1),
    ];
    for (name, value) in expect {
        assert_eq!(m.get(name).copied(), Some(value), "{name} in {m:?}");
    }
}
