//! A miss served from the shared tier (feature `redis`), against the Redis round trip it
//! makes, measured in the same run on a redis-server of the bench's own (loopback), found
//! by URL or through a Sentinel.
//!
//! ```text
//! cargo bench -p id6-tower-suite --features redis --bench shared_tier
//! ```
//!
//! - `redis/get_direct`: redis-rs alone, the pipeline a shared lookup sends (`GETRANGE` and
//!   `PTTL`) for a sealed entry of the same size: the floor.
//! - `redis/miss_from_redis`: `Id6::authenticate` on instance B for a token A shared, B's
//!   local cache cold for it: the whole miss (key, lookup, the Redis round trip, opening the
//!   seal, JSON, the local fill). Each token is shared by A before the timed loop.
//! - `redis/miss_via_sentinel`: the same miss on an instance that found that server through
//!   a Sentinel (the master is asked once per connection, not per miss).
//! - `redis/miss_from_cluster`: the same miss on a three-master Redis Cluster of the bench's
//!   own (two instances of their own on it).
//! - `seal/open`: opening one sealed entry (HKDF of the token, ChaCha20-Poly1305) as
//!   `src/redis/seal.rs` does, with the same crates and parameters: sealing's part of a miss.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use criterion::{criterion_group, Criterion};
use id6_tower::testing::MockId6;
use id6_tower::Id6;

struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn redis_server(extra: &[String]) -> (Server, u16) {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap();
    redis_server_on(port, extra)
}

fn redis_server_on(port: u16, extra: &[String]) -> (Server, u16) {
    let server = Server(
        Command::new("redis-server")
            .args(extra)
            .args([
                "--port",
                &port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
            ])
            .stdout(Stdio::null())
            .spawn()
            .expect("redis-server on the PATH (apt-get install redis-server)"),
    );
    for _ in 0..100 {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return (server, port);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    panic!("redis-server did not listen");
}

/// Three cluster masters (no replicas), each in a folder of its own, on ports that leave
/// room for their bus ports (port + 10 000): below the kernel's ephemeral range.
fn redis_cluster() -> (Vec<Server>, Vec<String>) {
    let free = |port: u16| std::net::TcpListener::bind(("127.0.0.1", port)).is_ok();
    let start = 12_000 + (std::process::id() % 2_000) as u16 * 5;
    let ports: Vec<u16> = (start..22_000)
        .filter(|port| free(*port) && free(port + 10_000))
        .take(3)
        .collect();
    let dir = std::env::temp_dir().join(format!("id6-bench-cluster-{}", std::process::id()));
    let servers = ports
        .iter()
        .map(|port| {
            let folder = dir.join(port.to_string());
            std::fs::create_dir_all(&folder).unwrap();
            let extra = [
                "--cluster-enabled",
                "yes",
                "--cluster-config-file",
                "nodes.conf",
                "--dir",
            ]
            .map(String::from)
            .into_iter()
            .chain([folder.display().to_string()])
            .collect::<Vec<_>>();
            redis_server_on(*port, &extra).0
        })
        .collect();
    let created = Command::new("redis-cli")
        .args(["--cluster", "create"])
        .args(ports.iter().map(|port| format!("127.0.0.1:{port}")))
        .arg("--cluster-yes")
        .stdout(Stdio::null())
        .status()
        .expect("redis-cli on the PATH");
    assert!(created.success(), "redis-cli --cluster create failed");
    // Until every slot is served.
    for _ in 0..200 {
        let ok = ports.iter().all(|port| {
            Command::new("redis-cli")
                .args(["-p", &port.to_string(), "cluster", "info"])
                .output()
                .is_ok_and(|out| String::from_utf8_lossy(&out.stdout).contains("cluster_state:ok"))
        });
        if ok {
            let urls = ports
                .iter()
                .map(|p| format!("redis://127.0.0.1:{p}"))
                .collect();
            return (servers, urls);
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("the cluster never came up");
}

fn headers(token: &str) -> http::HeaderMap {
    let mut headers = http::HeaderMap::new();
    headers.insert("cookie", format!("auth={token}").parse().unwrap());
    headers
}

fn benches(c: &mut Criterion) {
    // One worker: one core, as a server's each side gets.
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let (_server, port) = redis_server(&[]);
    let url = format!("redis://127.0.0.1:{port}");
    // One Sentinel watching that server: a third instance finds it through the Sentinel.
    let conf = std::env::temp_dir().join(format!("id6-bench-sentinel-{}.conf", std::process::id()));
    std::fs::write(
        &conf,
        format!("sentinel monitor bench 127.0.0.1 {port} 1\n"),
    )
    .unwrap();
    let (_sentinel, sentinel_port) =
        redis_server(&[conf.display().to_string(), "--sentinel".to_owned()]);
    let mock = rt.block_on(MockId6::start()).unwrap();
    let instance = || {
        Id6::builder(mock.url())
            .redis(&url)
            .cache_ttl(Duration::from_secs(3600))
            .build()
            .unwrap()
    };
    let (a, b) = (instance(), instance());
    let through_sentinel = Id6::builder(mock.url())
        .redis_sentinels([format!("redis://127.0.0.1:{sentinel_port}")], "bench")
        .cache_ttl(Duration::from_secs(3600))
        .build()
        .unwrap();
    // A cluster of three masters: two instances on it, one storing, one reading.
    let (_cluster, seeds) = redis_cluster();
    let on_cluster = || {
        Id6::builder(mock.url())
            .redis_cluster(seeds.clone())
            .cache_ttl(Duration::from_secs(3600))
            .build()
            .unwrap()
    };
    let (cluster_writer, cluster_reader) = (on_cluster(), on_cluster());
    let alice = mock.add_user("Alice", "alice@example.com");
    // Distinct tokens, issued a moment ago (one millisecond apart, counting back).
    let mut issued = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    let mut fresh = || {
        issued -= 1;
        mock.token_issued_at(alice, issued)
    };
    // Connections open before anything is timed.
    rt.block_on(async {
        let warm = fresh();
        a.authenticate(&headers(&warm)).await;
        b.authenticate(&headers(&warm)).await;
        through_sentinel.authenticate(&headers(&warm)).await;
        cluster_writer.authenticate(&headers(&warm)).await;
        cluster_reader.authenticate(&headers(&warm)).await;
    });

    let mut group = c.benchmark_group("redis");
    group
        .sample_size(20)
        .measurement_time(Duration::from_secs(4));
    let sample = fresh();
    rt.block_on(a.authenticate(&headers(&sample)));
    let entry = {
        use sha2::Digest;
        let hash = sha2::Sha256::digest(sample.as_bytes());
        let hex: String = hash.iter().map(|b| format!("{b:02x}")).collect();
        format!("id6:{{u:{alice}}}t:{hex}")
    };
    let client = redis::Client::open(url.as_str()).unwrap();
    let mut direct = rt
        .block_on(client.get_multiplexed_async_connection())
        .unwrap();
    let size = rt.block_on(async {
        let value: Vec<u8> = redis::cmd("GET")
            .arg(&entry)
            .query_async(&mut direct)
            .await
            .unwrap();
        value.len()
    });
    assert!(size > 0, "A shared its answer");
    group.bench_function("get_direct", |bench| {
        bench.to_async(&rt).iter(|| {
            let mut connection = direct.clone();
            let entry = entry.clone();
            async move {
                let (value, left): (Vec<u8>, i64) = redis::pipe()
                    .atomic()
                    .getrange(&entry, 0, 65_600)
                    .pttl(&entry)
                    .query_async(&mut connection)
                    .await
                    .unwrap();
                assert_eq!((value.len(), left > 0), (size, true));
            }
        })
    });
    let cases = [
        ("miss_via_sentinel", &a, &through_sentinel),
        ("miss_from_redis", &a, &b),
        ("miss_from_cluster", &cluster_writer, &cluster_reader),
    ];
    for (name, writer, reader) in cases {
        group.bench_function(name, |bench| {
            bench.iter_custom(|iters| {
                let tokens: Vec<_> = (0..iters).map(|_| fresh()).collect();
                rt.block_on(async {
                    for token in &tokens {
                        writer.authenticate(&headers(token)).await;
                    }
                    let calls = mock.user_calls();
                    let started = Instant::now();
                    for token in &tokens {
                        assert!(reader.authenticate(&headers(token)).await.user().is_some());
                    }
                    let took = started.elapsed();
                    assert_eq!(mock.user_calls(), calls, "every miss was served by Redis");
                    took
                })
            })
        });
    }
    group.finish();

    let mut group = c.benchmark_group("seal");
    let value = rt.block_on(async {
        let value: Vec<u8> = redis::cmd("GET")
            .arg(&entry)
            .query_async(&mut direct)
            .await
            .unwrap();
        value
    });
    group.bench_function("open", |bench| {
        use chacha20poly1305::aead::{Aead, KeyInit, Payload};
        bench.iter(|| {
            let mut key = chacha20poly1305::Key::default();
            hkdf::Hkdf::<sha2::Sha256>::new(Some(b"id6-tower redis entry seal"), sample.as_bytes())
                .expand(b"v1 chacha20poly1305 key", &mut key)
                .unwrap();
            let nonce = chacha20poly1305::Nonce::from(<[u8; 12]>::try_from(&value[1..13]).unwrap());
            let payload = Payload {
                msg: &value[13..],
                aad: entry.as_bytes(),
            };
            chacha20poly1305::ChaCha20Poly1305::new(&key)
                .decrypt(&nonce, payload)
                .expect("the bench opens what the crate sealed")
        })
    });
    group.finish();
    println!("sealed entry: {size} bytes");
}

criterion_group!(shared_tier, benches);

fn main() {
    shared_tier();
    Criterion::default().configure_from_args().final_summary();
}
