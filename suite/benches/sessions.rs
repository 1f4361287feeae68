//! What open connections cost: 100 000 idle sessions (memory per session, and back to the
//! baseline when they are dropped), and the time from a sign-out to the end of every one of
//! the user's connections.
//!
//! ```text
//! cargo bench -p id6-tower-suite --bench sessions
//! ```
//!
//! Memory is counted by `stats_alloc`'s instrumented system allocator: live heap bytes,
//! exact, not a sample. Sessions come from real requests through the layer, on a MockId6.

use std::alloc::System;
use std::convert::Infallible;
use std::time::{Duration, Instant};

use id6_tower::testing::MockId6;
use id6_tower::{Id6, Session, UserToken};
use stats_alloc::{Region, StatsAlloc, INSTRUMENTED_SYSTEM};
use tower::{service_fn, Layer, ServiceExt};

#[global_allocator]
static GLOBAL: &StatsAlloc<System> = &INSTRUMENTED_SYSTEM;

/// Live heap bytes since `region` began.
fn live(region: &Region<'_, System>) -> isize {
    let change = region.change();
    // A realloc counts its growth as allocated and its shrinking as deallocated already.
    change.bytes_allocated as isize - change.bytes_deallocated as isize
}

/// The session a handler behind the layer gets for a request with `token`.
async fn session(id6: &Id6, token: &str) -> Session {
    let handler = service_fn(|request: http::Request<()>| async move {
        let session = Session::of(request.headers(), request.extensions());
        Ok::<_, Infallible>(http::Response::new(session))
    });
    let request = http::Request::builder()
        .header("cookie", format!("auth={token}"))
        .body(())
        .unwrap();
    let response = id6.layer().layer(handler).oneshot(request).await.unwrap();
    response.into_body().expect("signed in")
}

/// `users` users with `per_user` sessions each (one token per user, as one browser with
/// many tabs): bytes per session, and what is left after dropping them all.
async fn idle(mock: &MockId6, id6: &Id6, users: usize, per_user: usize) {
    let tokens: Vec<String> = (0..users)
        .map(|n| mock.token_for(mock.add_user(&format!("user {n}"), &format!("u{n}@example.com"))))
        .collect();
    // The same requests once, their sessions dropped at once: every token cached and the
    // cache's own bookkeeping grown, so that what follows counts the sessions alone.
    for token in &tokens {
        for _ in 0..per_user {
            drop(session(id6, token).await);
        }
    }
    tokio::time::sleep(Duration::from_millis(50)).await;
    let region = Region::new(GLOBAL);
    let mut sessions = Vec::with_capacity(users * per_user);
    let started = Instant::now();
    for token in &tokens {
        for _ in 0..per_user {
            sessions.push(session(id6, token).await);
        }
    }
    let opened = started.elapsed();
    let vec_bytes = (sessions.capacity() * std::mem::size_of::<Session>()) as isize;
    let held = live(&region) - vec_bytes;
    let n = sessions.len();
    drop(sessions);
    tokio::time::sleep(Duration::from_millis(50)).await;
    let left = live(&region);
    println!(
        "{n:>7} idle sessions on {users:>6} tokens: {:>5.0} bytes each ({:.1} MiB), \
         opened in {:.2?} ({:.1} µs each through the layer); after dropping all: {left:+} bytes",
        held as f64 / n as f64,
        held as f64 / (1 << 20) as f64,
        opened,
        opened.as_secs_f64() * 1e6 / n as f64,
    );
}

/// A user with `sockets` connections on one token signs out: the time until every one of
/// them has seen its end.
async fn end_one_user(mock: &MockId6, id6: &Id6, sockets: usize) {
    let user = mock.add_user("Leaving", "leaving@example.com");
    let token = mock.token_for(user);
    let mut sessions = Vec::with_capacity(sockets);
    for _ in 0..sockets {
        sessions.push(session(id6, &token).await);
    }
    // As connection handlers do: each waits on its own session's end.
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    for session in sessions {
        let tx = tx.clone();
        tokio::spawn(async move {
            session.ended().await;
            let _ = tx.send(Instant::now());
        });
    }
    drop(tx);
    tokio::time::sleep(Duration::from_millis(20)).await;
    let started = Instant::now();
    id6.sign_out(&UserToken::new(&token).unwrap())
        .await
        .unwrap();
    let signed_out = started.elapsed();
    let mut last = started;
    let mut ended = 0;
    while let Some(at) = rx.recv().await {
        last = last.max(at);
        ended += 1;
    }
    println!(
        "sign-out of a user with {sockets:>6} open connections: all {ended} ended {:.2?} after \
         the call began (the call to id6 itself: {signed_out:.2?})",
        last - started
    );
}

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let mock = MockId6::start().await.unwrap();
        let id6 = Id6::builder(mock.url())
            .cache_ttl(Duration::from_secs(3600))
            .build()
            .unwrap();
        idle(&mock, &id6, 1_000, 100).await;
        idle(&mock, &id6, 100_000, 1).await;
        end_one_user(&mock, &id6, 100).await;
        end_one_user(&mock, &id6, 10_000).await;
    });
}
