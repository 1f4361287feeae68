//! `Id6::stats()` and the `metrics` counters move as they should for every kind of lookup.

#[path = "../../tests/common/mod.rs"]
mod common;

use std::collections::HashMap;

use common::Setup;
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
    s.mock.hold_user_answers();
    let app = common::app(&s.id6);
    let waiting: Vec<_> = (0..10)
        .map(|_| {
            let request = http::Request::get("/")
                .header("cookie", format!("auth={bob_token}"))
                .body(axum::body::Body::empty())
                .unwrap();
            tokio::spawn(app.clone().oneshot(request))
        })
        .collect();
    let all_waiting = async {
        s.mock.wait_for_held_answers(1).await;
        while s.id6.stats().misses < 12 {
            tokio::time::sleep(std::time::Duration::from_millis(1)).await;
        }
    };
    tokio::time::timeout(std::time::Duration::from_secs(10), all_waiting)
        .await
        .expect("ten requests waiting on one id6 call");
    s.mock.release_user_answers();
    for w in waiting {
        assert_eq!(w.await.unwrap().unwrap().status(), 200);
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
