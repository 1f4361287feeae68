//! Under concurrency, every request sees its own user and never another's.

mod common;

use std::collections::HashMap;

use axum::body::Body;
use common::Setup;
use tower::ServiceExt;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_thousand_requests_over_two_hundred_users() {
    // 200 cold users at once queue for id6's 32 call slots: on two busy cores that can take
    // longer than the kit's 500 ms timeout, and this test is about isolation, not faults.
    let mock = id6_tower::testing::MockId6::start().await.unwrap();
    let id6 = id6_tower::Id6::builder(mock.url())
        .timeout(std::time::Duration::from_secs(30))
        .build()
        .unwrap();
    let s = Setup::with(mock, id6).await;
    let users: Vec<(u64, String)> = (0..200)
        .map(|i| {
            let id = s
                .mock
                .add_user(&format!("user-{i}"), &format!("u{i}@example.com"));
            (id, s.mock.token_for(id))
        })
        .collect();
    let app = common::app(&s.id6);
    let requests = (0..2000).map(|i| {
        let (id, token) = users[(i * 7919) % users.len()].clone();
        let app = app.clone();
        tokio::spawn(async move {
            let request = http::Request::get("/me")
                .header("cookie", format!("a=1; auth={token}; z=2"))
                .body(Body::empty())
                .unwrap();
            let response = app.oneshot(request).await.unwrap();
            assert_eq!(response.status(), 200);
            let body = axum::body::to_bytes(response.into_body(), 4096)
                .await
                .unwrap();
            let user: serde_json::Value = serde_json::from_slice(&body).unwrap();
            (
                id,
                user["id"].as_u64().unwrap(),
                user["name"].as_str().unwrap().to_owned(),
            )
        })
    });
    let mut seen: HashMap<u64, usize> = HashMap::new();
    for answer in futures_util::future::join_all(requests).await {
        let (asked, got, name) = answer.unwrap();
        assert_eq!(asked, got, "a request for user {asked} saw user {got}");
        assert_eq!(name, format!("user-{}", asked - 1));
        *seen.entry(asked).or_default() += 1;
    }
    assert_eq!(seen.len(), 200);
    assert_eq!(seen.values().sum::<usize>(), 2000);
    // One id6 call per user, however the 2000 requests interleaved.
    assert_eq!(s.mock.user_calls(), 200);
}
