//! Per-request overhead of the id6 layer, against a bare axum Router measured in the same run.
//!
//! ```text
//! cargo bench -p id6-tower-bench --bench overhead
//! NO_REFRESH=1 cargo bench -p id6-tower-bench --bench overhead   # refresh-ahead off (its check skipped)
//! ```
//!
//! Each group times the bare service and the layered one on the same request; the table
//! printed at the end gives each layered figure as overhead over its bare figure and as a
//! ratio, and a hit's p50 and p99 with each request timed alone (criterion's medians are
//! of batches, which hide a slow hit).

use std::time::Duration;

use axum::routing::get;
use axum::Router;
use criterion::{criterion_group, BenchmarkId, Criterion};
use id6_tower::{Id6, MissLimit, UserToken};
use support::{one_worker, request, Alice, App};
use tower::{Layer, ServiceExt};

mod support;

fn bare() -> Router {
    Router::new().route("/", get(|| async { "ok" }))
}

fn benches(c: &mut Criterion) {
    let rt = one_worker();
    let alice = Alice::start(&rt);
    let id6 = alice
        .builder()
        .negative_ttl(Duration::from_secs(3600))
        .refresh_after(
            std::env::var_os("NO_REFRESH")
                .map(|_| None)
                .unwrap_or(Some(Duration::from_secs(2700))),
        )
        .build()
        .unwrap();
    let (id6_url, token, hit) = (alice.id6.url(), alice.token.clone(), alice.cookie.clone());
    // Well-formed but signed by someone else: id6 rejects it, the cache remembers.
    let negative = format!("theme=dark; auth={}", alice.forged);
    let negative = negative.as_str();
    // No JWT at all: refused locally, never cached, never sent.
    let garbage = "theme=dark; auth=garbage-cookie-value-0123456789";
    let no_cookie_but_others = "_ga=GA1.1.123456789.1700000000; theme=dark; lang=fr";

    let wrapped = id6.layer().layer(bare());
    let router_layer = bare().layer(id6.layer());
    rt.block_on(async {
        for cookie in [hit.as_str(), negative] {
            let _ = wrapped.clone().oneshot(request(Some(cookie))).await;
        }
        // Before any timing: the hot cookie is Alice and the forged one a refusal, both
        // from the cache, so that the hit rows time hits and the negative rows refusals.
        let calls = alice.id6.user_calls();
        let hot = id6.authenticate(request(Some(&hit)).headers()).await;
        assert_eq!(hot.user().map(|u| u.name.as_str()), Some("Alice"));
        let forged = id6.authenticate(request(Some(negative)).headers()).await;
        assert!(forged.rejection().is_some(), "{forged:?}");
        assert_eq!(
            alice.id6.user_calls(),
            calls,
            "both answered from the cache"
        );
    });

    let router = bare();
    let mut group = c.benchmark_group("no_cookie");
    for cookie in [None, Some(no_cookie_but_others)] {
        let label = if cookie.is_some() {
            "other_cookies"
        } else {
            "none"
        };
        group.bench_function(BenchmarkId::new("bare", label), |b| {
            b.to_async(&rt)
                .iter(|| router.clone().oneshot(request(cookie)))
        });
        group.bench_function(BenchmarkId::new("wrapped", label), |b| {
            b.to_async(&rt)
                .iter(|| wrapped.clone().oneshot(request(cookie)))
        });
    }
    group.finish();

    let mut group = c.benchmark_group("hit");
    group.bench_function("bare", |b| {
        b.to_async(&rt)
            .iter(|| router.clone().oneshot(request(Some(&hit))))
    });
    group.bench_function("wrapped", |b| {
        b.to_async(&rt)
            .iter(|| wrapped.clone().oneshot(request(Some(&hit))))
    });
    group.bench_function("router_layer", |b| {
        b.to_async(&rt)
            .iter(|| router_layer.clone().oneshot(request(Some(&hit))))
    });
    group.finish();

    // The same user's requests on both cores at once (a hot API client, say): whatever
    // the hit writes that both share passes its cache line from core to core.
    let mut group = c.benchmark_group("hit_two_cores");
    group.bench_function("bare", |b| {
        b.iter_custom(|iters| on_two_cores(&router, &hit, iters))
    });
    group.bench_function("wrapped", |b| {
        b.iter_custom(|iters| on_two_cores(&wrapped, &hit, iters))
    });
    group.finish();

    // A hit's tail: criterion times batches, so its medians hide the slow hits; here each
    // request is timed alone, bare and wrapped alternately, for the table's last rows.
    rt.block_on(async {
        let mut bare = Vec::with_capacity(TAIL_REQUESTS);
        let mut layered = Vec::with_capacity(TAIL_REQUESTS);
        for _ in 0..TAIL_REQUESTS {
            let one = request(Some(&hit));
            let start = std::time::Instant::now();
            let response = router.clone().oneshot(one).await;
            bare.push(start.elapsed().as_nanos() as f64);
            drop(response);
            let one = request(Some(&hit));
            let start = std::time::Instant::now();
            let response = wrapped.clone().oneshot(one).await;
            layered.push(start.elapsed().as_nanos() as f64);
            drop(response);
        }
        let at = |times: &mut Vec<f64>, q: f64| {
            times.sort_by(f64::total_cmp);
            times[(times.len() as f64 * q) as usize]
        };
        let _ = TAIL.set([
            (at(&mut bare, 0.5), at(&mut layered, 0.5)),
            (at(&mut bare, 0.99), at(&mut layered, 0.99)),
        ]);
    });

    let mut group = c.benchmark_group("negative_hit");
    group.bench_function("bare", |b| {
        b.to_async(&rt)
            .iter(|| router.clone().oneshot(request(Some(negative))))
    });
    group.bench_function("wrapped", |b| {
        b.to_async(&rt)
            .iter(|| wrapped.clone().oneshot(request(Some(negative))))
    });
    group.finish();

    let mut group = c.benchmark_group("garbage_cookie");
    group.bench_function("bare", |b| {
        b.to_async(&rt)
            .iter(|| router.clone().oneshot(request(Some(garbage))))
    });
    group.bench_function("wrapped", |b| {
        b.to_async(&rt)
            .iter(|| wrapped.clone().oneshot(request(Some(garbage))))
    });
    group.finish();

    // A miss: the baseline is the bare app plus the stand-in's own `GET /user` over loopback.
    // Each iteration runs as a task on the runtime's worker, as a server's request does: the
    // layer's load then starts and wakes its waiter on that worker. Driven from criterion's
    // thread instead, a miss paid two wake-ups across threads where the direct call paid one,
    // each tens of µs on an idle VM (+46 µs over the direct call there, +10 µs with the cores
    // kept busy).
    let mut group = c.benchmark_group("miss");
    group
        .sample_size(30)
        .measurement_time(Duration::from_secs(5));
    let http = reqwest::Client::new();
    let user_url = format!("{id6_url}/user");
    let direct_call = {
        let (http, user_url, token) = (http.clone(), user_url.clone(), token.clone());
        move || {
            let (http, user_url, token) = (http.clone(), user_url.clone(), token.clone());
            async move {
                let answer = http
                    .get(&user_url)
                    .header("cookie", format!("auth={token}"))
                    .send()
                    .await
                    .unwrap();
                answer.bytes().await.unwrap();
            }
        }
    };
    let key = UserToken::new(&token).unwrap();
    group.bench_function("bare", |b| {
        b.to_async(&rt).iter(|| {
            let (call, router, hit) = (direct_call(), router.clone(), hit.clone());
            on_worker(&rt, async move {
                call.await;
                router.oneshot(request(Some(&hit))).await
            })
        })
    });
    group.bench_function("wrapped", |b| {
        b.to_async(&rt).iter(|| {
            let (id6, key, wrapped, hit) = (id6.clone(), key.clone(), wrapped.clone(), hit.clone());
            on_worker(&rt, async move {
                id6.invalidate_token(&key);
                wrapped.oneshot(request(Some(&hit))).await
            })
        })
    });
    group.finish();

    // The same misses back to back in one task on the worker, as a busy server meets them:
    // one wake-up per sample rather than one per miss, so this is the CPU a miss costs,
    // without the scheduler's wake-up latency, which swings by tens of µs on an idle VM.
    let mut group = c.benchmark_group("miss_back_to_back");
    group
        .sample_size(30)
        .measurement_time(Duration::from_secs(5));
    group.bench_function("bare", |b| {
        b.iter_custom(|iters| {
            let (direct_call, router, hit) = (direct_call.clone(), router.clone(), hit.clone());
            rt.block_on(on_worker(&rt, async move {
                let start = std::time::Instant::now();
                for _ in 0..iters {
                    direct_call().await;
                    let _ = router.clone().oneshot(request(Some(&hit))).await;
                }
                start.elapsed()
            }))
        })
    });
    group.bench_function("wrapped", |b| {
        b.iter_custom(|iters| {
            let (id6, key, wrapped, hit) = (id6.clone(), key.clone(), wrapped.clone(), hit.clone());
            rt.block_on(on_worker(&rt, async move {
                let start = std::time::Instant::now();
                for _ in 0..iters {
                    id6.invalidate_token(&key);
                    let _ = wrapped.clone().oneshot(request(Some(&hit))).await;
                }
                start.elapsed()
            }))
        })
    });
    group.finish();

    // 64 requests with one cold token at once: one id6 call between them.
    let mut group = c.benchmark_group("miss_x64_coalesced");
    group
        .sample_size(20)
        .measurement_time(Duration::from_secs(5));
    group.bench_function("bare", |b| {
        b.to_async(&rt).iter(|| {
            let (call, router, hit) = (direct_call(), router.clone(), hit.clone());
            on_worker(&rt, async move {
                call.await;
                let calls = (0..64).map(|_| router.clone().oneshot(request(Some(&hit))));
                futures_util::future::join_all(calls).await
            })
        })
    });
    group.bench_function("wrapped", |b| {
        b.to_async(&rt).iter(|| {
            let (id6, key, wrapped, hit) = (id6.clone(), key.clone(), wrapped.clone(), hit.clone());
            on_worker(&rt, async move {
                id6.invalidate_token(&key);
                let calls = (0..64).map(|_| wrapped.clone().oneshot(request(Some(&hit))));
                futures_util::future::join_all(calls).await
            })
        })
    });
    group.finish();

    // A miss behind one trusted proxy, with a short `X-Forwarded-For` and with a 200 KB one a
    // client padded: finding the caller must not grow with what the client wrote.
    let behind_proxy = Id6::builder(id6_url)
        .trusted_proxies(1)
        .miss_limit(MissLimit::new(1_000_000, Duration::from_secs(3600)))
        .build()
        .unwrap();
    let proxied = behind_proxy.layer().layer(bare());
    // Parsed once: a header value clones by reference count, so only the layer reads it.
    let short_xff = http::HeaderValue::from_static("198.51.100.77, 203.0.113.9");
    let mut long_xff = "198.51.100.77, ".repeat(200_000 / 15);
    long_xff.push_str("203.0.113.9");
    let long_xff = http::HeaderValue::from_str(&long_xff).unwrap();
    let mut group = c.benchmark_group("miss_forwarded_for");
    group
        .sample_size(30)
        .measurement_time(Duration::from_secs(5));
    for (label, xff) in [("short", &short_xff), ("200KB", &long_xff)] {
        group.bench_function(BenchmarkId::new("wrapped", label), |b| {
            b.to_async(&rt).iter(|| {
                let (id6, key, proxied) = (behind_proxy.clone(), key.clone(), proxied.clone());
                let mut request = request(Some(&hit));
                request.headers_mut().insert("x-forwarded-for", xff.clone());
                on_worker(&rt, async move {
                    id6.invalidate_token(&key);
                    proxied.oneshot(request).await
                })
            })
        });
    }
    group.finish();
    drop(alice);
}

/// Runs `work` as a task on `rt`'s worker (where a server's requests run) and waits for it.
async fn on_worker<T: Send + 'static>(
    rt: &tokio::runtime::Runtime,
    work: impl std::future::Future<Output = T> + Send + 'static,
) -> T {
    rt.spawn(work).await.unwrap()
}

/// `iters` requests with `cookie` on each of two threads at once, each its own
/// single-threaded runtime: the wall time of the slower (one iteration: a request on each
/// core).
fn on_two_cores<S: App + Sync>(service: &S, cookie: &str, iters: u64) -> Duration {
    let start = std::sync::Barrier::new(2);
    std::thread::scope(|scope| {
        let cores: Vec<_> = (0..2)
            .map(|_| {
                scope.spawn(|| {
                    let rt = tokio::runtime::Builder::new_current_thread()
                        .build()
                        .unwrap();
                    start.wait();
                    let started = std::time::Instant::now();
                    rt.block_on(async {
                        for _ in 0..iters {
                            let _ = service.clone().oneshot(request(Some(cookie))).await;
                        }
                    });
                    started.elapsed()
                })
            })
            .collect();
        cores
            .into_iter()
            .map(|core| core.join().unwrap())
            .max()
            .unwrap_or_default()
    })
}

/// Hits timed one by one for the tail rows: (bare, wrapped) at p50, then at p99.
static TAIL: std::sync::OnceLock<[(f64, f64); 2]> = std::sync::OnceLock::new();
const TAIL_REQUESTS: usize = 200_000;

criterion_group!(overhead, benches);

fn main() {
    overhead();
    Criterion::default().configure_from_args().final_summary();
    // Run without `--bench` (`cargo test`, as CI does), criterion runs each case once and
    // writes no estimates: the checks ran, and there is no table to print.
    if std::env::args().any(|arg| arg == "--bench") {
        report();
    }
}

/// Overhead and ratio of every layered figure over its group's bare figure, from the
/// estimates criterion just wrote.
fn report() {
    let Some(dir) = criterion_dir() else {
        return;
    };
    let median = |group: &str, id: &str| -> Option<f64> {
        let path = dir.join(group).join(id).join("new/estimates.json");
        let json: serde_json::Value = serde_json::from_slice(&std::fs::read(path).ok()?).ok()?;
        json["median"]["point_estimate"].as_f64()
    };
    println!(
        "\n{:<34} {:>12} {:>12} {:>12} {:>7}",
        "case", "bare", "layered", "overhead", "ratio"
    );
    let rows = [
        ("no_cookie", "bare/none", "wrapped/none"),
        ("no_cookie", "bare/other_cookies", "wrapped/other_cookies"),
        ("hit", "bare", "wrapped"),
        ("hit", "bare", "router_layer"),
        ("hit_two_cores", "bare", "wrapped"),
        ("negative_hit", "bare", "wrapped"),
        ("garbage_cookie", "bare", "wrapped"),
        ("miss", "bare", "wrapped"),
        ("miss_back_to_back", "bare", "wrapped"),
        ("miss_x64_coalesced", "bare", "wrapped"),
        ("miss_forwarded_for", "wrapped/short", "wrapped/200KB"),
    ];
    for (group, base, layered) in rows {
        if group == "negative_hit" {
            tail_rows();
        }
        if let (Some(b), Some(l)) = (median(group, base), median(group, layered)) {
            println!(
                "{:<34} {:>9.0} ns {:>9.0} ns {:>+9.0} ns {:>6.2}x",
                format!("{group}/{layered}"),
                b,
                l,
                l - b,
                l / b
            );
        }
    }
}

/// A hit's p50 and p99, each request timed alone; the wrapped p99 over its own p50 is the
/// tail figure (the goal: at most 1.5).
fn tail_rows() {
    let Some([(bare50, wrapped50), (bare99, wrapped99)]) = TAIL.get().copied() else {
        return;
    };
    for (label, b, l) in [
        ("hit/one by one, p50", bare50, wrapped50),
        ("hit/one by one, p99", bare99, wrapped99),
    ] {
        println!(
            "{:<34} {:>9.0} ns {:>9.0} ns {:>+9.0} ns {:>6.2}x",
            label,
            b,
            l,
            l - b,
            l / b
        );
    }
    println!(
        "{:<34} {:>9.2}x {:>9.2}x",
        "hit/one by one, p99 / p50",
        bare99 / bare50,
        wrapped99 / wrapped50
    );
}

fn criterion_dir() -> Option<std::path::PathBuf> {
    if let Ok(home) = std::env::var("CRITERION_HOME") {
        return Some(home.into());
    }
    // target/<profile>/deps/overhead-<hash> → target/criterion
    let exe = std::env::current_exe().ok()?;
    Some(exe.parent()?.parent()?.parent()?.join("criterion"))
}
