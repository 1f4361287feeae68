//! A bounded soak: 200 000 requests over 2 000 users, with evictions and revocations mixed
//! in, through a cache smaller than the user base. No answer may name the wrong user, no
//! revoked token may be served once `disconnect` returned, the cache stays within capacity.

mod common;

use std::collections::HashSet;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::routing::get;
use axum::Router;
use id6_tower::testing::MockId6;
use id6_tower::{CurrentUser, Id6, UserToken};
use tower::ServiceExt;

const USERS: usize = 2_000;
const REQUESTS: usize = 200_000;
const WORKERS: usize = 32;
const CAPACITY: u64 = 1_500;

/// xorshift64*: a reproducible stream of choices, no dependency.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

struct World {
    /// Per user: id and current token.
    users: RwLock<Vec<(u64, String)>>,
    /// Tokens whose `disconnect` has returned.
    revoked: RwLock<HashSet<String>>,
    wrong_user: AtomicUsize,
    revoked_served: AtomicUsize,
    unavailable: AtomicUsize,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn soak() {
    let mock = MockId6::start().await.unwrap();
    let id6 = Id6::builder(mock.url())
        .max_capacity(CAPACITY)
        .timeout(Duration::from_secs(5))
        .queue_timeout(Duration::from_secs(30))
        .max_concurrent_calls(16)
        .build()
        .unwrap();
    let app = Router::new()
        .route(
            "/",
            get(|CurrentUser(user): CurrentUser| async move {
                user.map_or_else(|| "anonymous".to_owned(), |u| u.id.to_string())
            }),
        )
        .layer(id6.layer());
    let users = (0..USERS)
        .map(|i| {
            let id = mock.add_user(&format!("user-{i}"), &format!("u{i}@example.com"));
            (id, mock.token_for(id))
        })
        .collect();
    let world = Arc::new(World {
        users: RwLock::new(users),
        revoked: RwLock::default(),
        wrong_user: AtomicUsize::new(0),
        revoked_served: AtomicUsize::new(0),
        unavailable: AtomicUsize::new(0),
    });
    let mock = Arc::new(mock);
    let started = Instant::now();

    let workers = (0..WORKERS).map(|w| {
        let (app, world, id6, mock) = (app.clone(), world.clone(), id6.clone(), mock.clone());
        tokio::spawn(async move {
            let mut rng = Rng(0x9E37_79B9_7F4A_7C15 ^ (w as u64 + 1));
            let mut revocations = 0;
            for n in 0..REQUESTS / WORKERS {
                // Most traffic goes to a hot fifth of the users, the rest anywhere.
                let index = if rng.below(10) < 8 {
                    rng.below(USERS / 5)
                } else {
                    rng.below(USERS)
                };
                let (user, mut token) = world.users.read().unwrap()[index].clone();
                // Now and then an old, revoked token comes back.
                if rng.below(50) == 0 {
                    if let Some(old) = world.revoked.read().unwrap().iter().next().cloned() {
                        token = old;
                    }
                }
                let revoked_before = world.revoked.read().unwrap().contains(&token);
                let request = http::Request::get("/")
                    .header("cookie", format!("theme=dark; auth={token}"))
                    .body(Body::empty())
                    .unwrap();
                let response = app.clone().oneshot(request).await.unwrap();
                let status = response.status();
                let body = axum::body::to_bytes(response.into_body(), 64)
                    .await
                    .unwrap();
                let body = std::str::from_utf8(&body).unwrap();
                if status != 200 {
                    world.unavailable.fetch_add(1, Ordering::Relaxed);
                } else if body != "anonymous" {
                    let seen: u64 = body.parse().unwrap();
                    if revoked_before {
                        world.revoked_served.fetch_add(1, Ordering::Relaxed);
                    } else if seen != user && !world.revoked.read().unwrap().contains(&token) {
                        world.wrong_user.fetch_add(1, Ordering::Relaxed);
                    }
                }
                // Mixed in: revocations (disconnect) and evictions.
                match n % 500 {
                    0 => {
                        let (victim, old) = world.users.read().unwrap()[rng.below(USERS)].clone();
                        if id6.disconnect(&UserToken::new(&old).unwrap()).await.is_ok() {
                            world.revoked.write().unwrap().insert(old);
                            // A new session for the user, issued after the revocation.
                            let fresh = mock.token_issued_at(victim, common::now_ms() + 10);
                            let mut users = world.users.write().unwrap();
                            if let Some(slot) = users.iter_mut().find(|(id, _)| *id == victim) {
                                slot.1 = fresh;
                            }
                            revocations += 1;
                        }
                    }
                    250 => id6.invalidate_user(world.users.read().unwrap()[rng.below(USERS)].0),
                    125 | 375 => {
                        let token = world.users.read().unwrap()[rng.below(USERS)].1.clone();
                        id6.invalidate_token(&UserToken::new(&token).unwrap());
                    }
                    _ => {}
                }
            }
            revocations
        })
    });
    let revocations: usize = futures_util::future::join_all(workers)
        .await
        .into_iter()
        .map(|r| r.unwrap())
        .sum();
    let elapsed = started.elapsed();
    let stats = id6.stats();
    let revoked_tokens = world.revoked.read().unwrap().len() as u64;
    println!(
        "soak: {REQUESTS} requests, {USERS} users, {revocations} revocations in {elapsed:?}; \
         id6 calls {}, hits {}, misses {}, coalesced {}, evictions {}; entries {} (capacity {CAPACITY}); \
         wrong user {}, revoked served {}, unavailable {}",
        mock.user_calls(),
        stats.hits,
        stats.misses,
        stats.coalesced,
        stats.evictions,
        stats.entries,
        world.wrong_user.load(Ordering::Relaxed),
        world.revoked_served.load(Ordering::Relaxed),
        world.unavailable.load(Ordering::Relaxed),
    );
    assert_eq!(
        stats.hits + stats.negative_hits + stats.misses,
        REQUESTS as u64
    );
    assert_eq!(
        world.wrong_user.load(Ordering::Relaxed),
        0,
        "an answer named another user"
    );
    assert_eq!(
        world.revoked_served.load(Ordering::Relaxed),
        0,
        "a revoked token was served"
    );
    assert_eq!(world.unavailable.load(Ordering::Relaxed), 0);
    assert!(
        revocations >= 100,
        "revocations were mixed in: {revocations}"
    );
    // Users within capacity; rejected (revoked) tokens have their own bound.
    assert!(
        stats.entries <= CAPACITY + revoked_tokens,
        "{} entries",
        stats.entries
    );
}
