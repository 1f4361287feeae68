//! Three instances, one Redis, one id6: shared answers, evictions broadcast, Redis optional.

#[path = "../../tests/common/mod.rs"]
mod common;

#[allow(dead_code, unreachable_pub)]
#[path = "../../examples/axum.rs"]
mod example;

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use id6_tower::testing::MockId6;
use id6_tower::{Id6, UserToken};

/// A redis-server of the test's own, on a free loopback port, so it can be stopped and
/// started again; ended with the test.
struct Redis {
    binary: &'static str,
    port: u16,
    /// Arguments of this server's own (`--replicaof`, or a Sentinel's config file).
    extra: Vec<String>,
    process: Option<Child>,
    /// This test's turn (see [`ONE_AT_A_TIME`]), given back after the server stops.
    _turn: Option<tokio::sync::MutexGuard<'static, ()>>,
}

impl Redis {
    fn start() -> Option<Redis> {
        Redis::start_with(Vec::new())
    }

    fn start_with(extra: Vec<String>) -> Option<Redis> {
        let binary = ["/usr/bin/redis-server", "/usr/local/bin/redis-server"]
            .into_iter()
            .find(|p| Path::new(p).exists())?;
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .ok()?;
        let mut redis = Redis {
            binary,
            port,
            extra,
            process: None,
            _turn: None,
        };
        redis.spawn();
        Some(redis)
    }

    fn spawn(&mut self) {
        // A folder of its own for what Redis writes (a replica's synced RDB), never the
        // test's working directory; after `extra` (a Sentinel's config file comes first),
        // unless `extra` names one (a cluster node's).
        let dir = self.dir();
        std::fs::create_dir_all(&dir).unwrap();
        let own_dir = (!self.extra.iter().any(|a| a == "--dir"))
            .then(|| ["--dir".into(), dir.display().to_string()]);
        let child = Command::new(self.binary)
            .args(&self.extra)
            .args(own_dir.iter().flatten())
            .args([
                "--port",
                &self.port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                // `DEBUG SLEEP`: a stalled Redis, on demand.
                "--enable-debug-command",
                "local",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server starts");
        self.process = Some(child);
        // Ready when it accepts connections: bounded retries.
        for _ in 0..100 {
            if std::net::TcpStream::connect(("127.0.0.1", self.port)).is_ok() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!("redis-server did not listen within 2 s");
    }

    fn stop(&mut self) {
        if let Some(mut child) = self.process.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Sends one command over a raw RESP exchange; the reader is at its reply.
    fn send(&self, args: &[&[u8]]) -> std::io::BufReader<std::net::TcpStream> {
        RedisPort(self.port).send(args)
    }

    /// `SET key value PX ms`, as another writer of the shared cache would.
    fn set(&self, key: &str, value: &[u8], ms: u64) {
        use std::io::BufRead;
        let mut reply = String::new();
        self.send(&[
            b"SET",
            key.as_bytes(),
            value,
            b"PX",
            ms.to_string().as_bytes(),
        ])
        .read_line(&mut reply)
        .unwrap();
        assert_eq!(reply.trim(), "+OK");
    }

    /// `GET key`, as another reader of the shared cache would (empty when there is none).
    fn get(&self, key: &str) -> Vec<u8> {
        use std::io::{BufRead, Read};
        let mut reader = self.send(&[b"GET", key.as_bytes()]);
        let mut header = String::new();
        reader.read_line(&mut header).unwrap();
        let Some(len) = header.trim().strip_prefix('$').and_then(|l| l.parse().ok()) else {
            return Vec::new();
        };
        let mut body = vec![0; len];
        reader.read_exact(&mut body).unwrap();
        body
    }

    /// Freezes Redis for `seconds` (`DEBUG SLEEP`), from a thread of its own; joined, it
    /// returns when Redis answers again.
    fn stall(&self, seconds: &str) -> std::thread::JoinHandle<Instant> {
        use std::io::BufRead;
        let port = self.port;
        let seconds = seconds.to_owned();
        let handle = std::thread::spawn(move || {
            let this = RedisPort(port);
            let mut reply = String::new();
            this.send(&[b"DEBUG", b"SLEEP", seconds.as_bytes()])
                .read_line(&mut reply)
                .unwrap();
            assert_eq!(reply.trim(), "+OK");
            Instant::now()
        });
        // Until Redis is asleep: a PING of ours goes unanswered.
        let deadline = Instant::now() + Duration::from_secs(2);
        loop {
            let mut probe = std::net::TcpStream::connect(("127.0.0.1", self.port)).unwrap();
            probe
                .set_read_timeout(Some(Duration::from_millis(50)))
                .unwrap();
            use std::io::{Read, Write};
            probe.write_all(b"PING\r\n").unwrap();
            let mut buf = [0; 16];
            if probe.read(&mut buf).is_err() {
                return handle;
            }
            assert!(Instant::now() < deadline, "redis never went to sleep");
        }
    }

    /// `CLIENT LIST`, one line per connection but the asking one.
    fn clients(&self) -> Vec<String> {
        use std::io::{BufRead, Read};
        let mut reader = self.send(&[b"CLIENT", b"LIST"]);
        let mut header = String::new();
        reader.read_line(&mut header).unwrap();
        let len: usize = header
            .trim()
            .strip_prefix('$')
            .and_then(|len| len.parse().ok())
            .unwrap_or_else(|| panic!("CLIENT LIST answered {header:?}"));
        let mut body = vec![0; len];
        reader.read_exact(&mut body).unwrap();
        String::from_utf8(body)
            .unwrap()
            .lines()
            .filter(|line| !line.contains("cmd=client|list"))
            .map(str::to_owned)
            .collect()
    }

    /// Waits until `n` connections are subscribed to a channel (each instance's listener).
    async fn until_subscribed(&self, n: usize) {
        let deadline = Instant::now() + Duration::from_secs(5);
        while self
            .clients()
            .iter()
            .filter(|c| c.contains(" sub=1"))
            .count()
            < n
        {
            assert!(Instant::now() < deadline, "{n} subscribers never listened");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

/// A Redis server's port, for raw commands from any thread.
struct RedisPort(u16);

impl RedisPort {
    /// Sends one command over a raw RESP exchange; the reader is at its reply.
    fn send(&self, args: &[&[u8]]) -> std::io::BufReader<std::net::TcpStream> {
        use std::io::Write;
        let mut stream = std::net::TcpStream::connect(("127.0.0.1", self.0)).unwrap();
        let mut command = format!("*{}\r\n", args.len()).into_bytes();
        for arg in args {
            command.extend_from_slice(format!("${}\r\n", arg.len()).as_bytes());
            command.extend_from_slice(arg);
            command.extend_from_slice(b"\r\n");
        }
        stream.write_all(&command).unwrap();
        std::io::BufReader::new(stream)
    }
}

impl Redis {
    fn dir(&self) -> std::path::PathBuf {
        std::env::temp_dir().join(format!("id6-redis-{}-{}", std::process::id(), self.port))
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        self.stop();
        let _ = std::fs::remove_dir_all(self.dir());
    }
}

/// Held by each test for its whole run: several instances, a redis-server and hundreds of
/// requests per test are enough load for two cores; in parallel, a 100 ms Redis timeout
/// could fire and turn a shared answer into an id6 call.
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// A redis-server of this test's own, once it is this test's turn.
async fn redis_or_skip() -> Option<Redis> {
    let turn = ONE_AT_A_TIME.lock().await;
    let redis = Redis::start().map(|mut redis| {
        redis._turn = Some(turn);
        redis
    });
    if redis.is_none() {
        let message = "SKIPPED: cluster test: install redis-server (apt-get install redis-server); .ci/run does";
        if std::env::var_os("CI").is_some() {
            panic!("{message}");
        }
        // Straight to stderr: the test harness captures `eprintln!` of passing tests.
        use std::io::Write;
        let _ = writeln!(std::io::stderr(), "{message}");
    }
    redis
}

/// One instance of the app, with its own id6 handle (own moka cache), on its own port.
struct App {
    id6: Id6,
    base: String,
    http: reqwest::Client,
}

impl App {
    async fn get(&self, path: &str, token: &str) -> (u16, String) {
        let response = self
            .http
            .get(format!("{}{path}", self.base))
            .header("cookie", format!("auth={token}"))
            .send()
            .await
            .unwrap();
        (response.status().as_u16(), response.text().await.unwrap())
    }
}

impl App {
    /// The app on `id6`, serving on a port of its own.
    async fn serving(id6: Id6) -> App {
        App {
            base: common::serve(common::app(&id6)).await,
            id6,
            http: common::http_client(),
        }
    }

    /// Polls `/me` with `token` until it is refused (within 2 s, else `panic!(why)`).
    async fn until_refused(&self, token: &str, since: Instant, why: &str) -> Duration {
        loop {
            if self.get("/me", token).await.0 == 401 {
                return since.elapsed();
            }
            // A hang guard, not a timing claim: the TTL is a minute, so any refusal here
            // came by broadcast. The latency itself is printed, and measured in benches.
            assert!(since.elapsed() < Duration::from_secs(10), "{why}");
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }
}

async fn instance(mock: &MockId6, redis: &Redis, prefix: &str) -> Id6 {
    Id6::builder(mock.url())
        .redis(redis.url())
        .redis_prefix(prefix)
        .redis_timeout(Duration::from_millis(100))
        .timeout(Duration::from_secs(2))
        .build()
        .unwrap()
}

/// An instance of the app on the private backend (`/authorize`), serving on its own port.
async fn authorizing_app(mock: &MockId6, redis: &Redis, prefix: &str) -> App {
    let id6 = Id6::builder(mock.url())
        .authorization(mock.authorization_url(), mock.authorization_secret())
        .redis(redis.url())
        .redis_prefix(prefix)
        .redis_timeout(Duration::from_millis(100))
        .timeout(Duration::from_secs(2))
        .build()
        .unwrap();
    App::serving(id6).await
}

/// `n` instances of the app, each serving on its own port, every one's subscriber listening
/// before anything is broadcast.
async fn apps(mock: &MockId6, redis: &Redis, prefix: &str, n: usize) -> Vec<App> {
    let mut apps = Vec::new();
    for _ in 0..n {
        apps.push(App::serving(instance(mock, redis, prefix).await).await);
    }
    redis.until_subscribed(n).await;
    // Each instance opens its Redis connection on its first miss: open them now, so that a
    // test's first shared lookup is not also a connect racing the 100 ms Redis timeout (seen
    // once in ~30 runs on two busy cores).
    let warm_up = mock.token_for(mock.add_user("Warm-up", "warm-up@example.com"));
    for app in &apps {
        assert_eq!(app.get("/", &warm_up).await.1, "Hello, Warm-up!");
    }
    apps
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_instances_share_answers_and_evictions() {
    let Some(mut redis) = redis_or_skip().await else {
        return;
    };
    let mock = MockId6::start().await.unwrap();
    let prefix = format!("id6-test-{}:", std::process::id());
    let alice = mock.add_user("Alice", "a@example.com");
    let token = mock.token_issued_at(alice, common::now_ms() - 10);
    let apps = apps(&mock, &redis, &prefix, 3).await;

    // 300 requests for one user over three instances: one id6 call.
    assert_eq!(apps[0].get("/", &token).await.1, "Hello, Alice!");
    let requests = (0..299).map(|i| {
        let app = &apps[(i + 1) % 3];
        app.get("/", &token)
    });
    for (_, body) in futures_util::future::join_all(requests).await {
        assert_eq!(body, "Hello, Alice!");
    }
    assert_eq!(
        mock.user_calls_for(&token),
        1,
        "the other instances found the answer in Redis"
    );

    // Disconnect through A: B and C refuse the token within 100 ms.
    apps[0]
        .id6
        .disconnect(&UserToken::new(&token).unwrap())
        .await
        .unwrap_or_else(|e| panic!("disconnect: {e}"));
    let returned = Instant::now();
    let mut worst = Duration::ZERO;
    for app in &apps[1..] {
        worst = worst.max(app.until_refused(&token, returned, "never refused").await);
    }
    println!("revocation seen on the other instances after {worst:?} (worst case)");
    a_store_from_before_a_revocation_is_refused(&mock, &prefix, (&apps[0], &apps[1]), |key| {
        redis.set(key, b"60000", 60_000)
    })
    .await;

    // Redis stopped: requests keep succeeding through moka and id6, never waiting long.
    redis.stop();
    let bob = mock.add_user("Bob", "b@example.com");
    let bob_token = mock.token_for(bob);
    let mut slowest = Duration::ZERO;
    for app in &apps {
        for _ in 0..5 {
            let started = Instant::now();
            assert_eq!(app.get("/", &bob_token).await.1, "Hello, Bob!");
            slowest = slowest.max(started.elapsed());
        }
    }
    // Every request succeeded (above); how long the slowest took is a figure, not a test.
    println!("with Redis down, the slowest request took {slowest:?} (Redis timeout 100 ms)");
    assert!(
        apps[0].id6.stats().redis_errors > 0,
        "the outage was counted"
    );

    // Redis back: sharing and broadcasts resume.
    redis.spawn();
    redis.until_subscribed(3).await;
    // The command connections come back on their own schedule (reconnect, then a 500 ms
    // pause after the last failure): try until one instance's answer is another's, each
    // time with a token no instance has seen.
    let carol = mock.add_user("Carol", "c@example.com");
    let others = [&apps[1], &apps[2]];
    let carol_token = until_shared(
        &mock,
        &others,
        (carol, "Carol"),
        Duration::from_secs(10),
        "sharing never resumed",
    )
    .await;
    apps[2]
        .id6
        .disconnect(&UserToken::new(&carol_token).unwrap())
        .await
        .unwrap();
    let returned = Instant::now();
    apps[1]
        .until_refused(&carol_token, returned, "broadcasts did not resume")
        .await;
    println!(
        "after Redis came back, revocation seen in {:?}",
        returned.elapsed()
    );
}

/// With the private backend, an answer showing a newer revocation on one instance evicts the
/// user's other tokens on every instance.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revocation_seen_by_one_instance_reaches_the_others() {
    let Some(redis) = redis_or_skip().await else {
        return;
    };
    let mock = MockId6::start().await.unwrap();
    let prefix = format!("id6-test-authz-{}:", std::process::id());
    let alice = mock.add_user("Alice", "a@example.com");
    let laptop = mock.token_issued_at(alice, common::now_ms() - 10);
    let apps = [
        authorizing_app(&mock, &redis, &prefix).await,
        authorizing_app(&mock, &redis, &prefix).await,
    ];
    redis.until_subscribed(2).await;
    assert_eq!(apps[0].get("/", &laptop).await.1, "Hello, Alice!");
    assert_eq!(apps[1].get("/", &laptop).await.1, "Hello, Alice!");
    assert_eq!(mock.authorize_calls(), 1);

    // Alice disconnects through another app; a new session shows up on instance A.
    mock.revoke_tokens(alice);
    // Issued after the revocation, whatever the clock's resolution.
    let phone = mock.token_issued_at(alice, common::now_ms() + 1000);
    assert_eq!(apps[0].get("/", &phone).await.1, "Hello, Alice!");
    let seen = Instant::now();
    let took = apps[1]
        .until_refused(&laptop, seen, "B kept serving the revoked laptop")
        .await;
    println!("a revocation learnt by A reached B in {took:?}");
}

/// Asks `apps` in turn about fresh tokens of `user` (named `name`), one token each round,
/// until one round costs a single id6 call: the first instance's answer reached the others
/// through Redis. The token of that round; `what` if that takes longer than `within`.
async fn until_shared(
    mock: &MockId6,
    apps: &[&App],
    (user, name): (u64, &str),
    within: Duration,
    what: &str,
) -> String {
    let deadline = Instant::now() + within;
    // Tokens told apart by when they were issued, counting back from now.
    let mut age = 10;
    loop {
        let token = mock.token_issued_at(user, common::now_ms() - age);
        age += 1;
        for app in apps {
            assert_eq!(app.get("/", &token).await.1, format!("Hello, {name}!"));
        }
        if mock.user_calls_for(&token) == 1 {
            return token;
        }
        assert!(Instant::now() < deadline, "{what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The stale-store refusal, on whatever topology: A's load of a token begins; meanwhile
/// another instance's revocation of its user marks Redis (`mark` writes the user's `rev`
/// key, as the first half of a revocation does) and its broadcast never comes; then id6's
/// answer arrives. A's store is refused by Redis itself (the script compares the mark's age
/// with the load's), so B, which never saw the token, asks id6 instead of serving an answer
/// that may predate the revocation.
async fn a_store_from_before_a_revocation_is_refused(
    mock: &MockId6,
    prefix: &str,
    (a, b): (&App, &App),
    mark: impl Fn(&str),
) {
    let user = mock.add_user("Stale", "stale@example.com");
    let token = mock.token_issued_at(user, common::now_ms() - 3);
    // The mark's value is its own lifetime (ms), so its age is that less its PTTL: now.
    let revoked = async { mark(&format!("{prefix}{{u:{user}}}rev")) };
    // A answers its request (id6 said so), then shares it: refused. Then B misses in Redis.
    assert_eq!(
        common::while_held(mock, &a.base, &token, revoked).await,
        "Hello, Stale!"
    );
    assert_eq!(b.get("/", &token).await.1, "Hello, Stale!");
    assert_eq!(
        mock.user_calls_for(&token),
        2,
        "B was served A's answer, stored across a revocation made during its load"
    );
}

/// Polls until `id6` counted more evictions than `before` (a broadcast arrived), within 2 s.
async fn until_evicted(id6: &Id6, before: u64, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(2);
    while id6.stats().evictions <= before {
        assert!(
            Instant::now() < deadline,
            "{what} never reached the other instance"
        );
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

/// `sign_out` on A evicts everywhere: B and C miss and id6 is asked again for that token.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sign_out_on_one_instance_evicts_on_every_instance() {
    let Some(redis) = redis_or_skip().await else {
        return;
    };
    let mock = MockId6::start().await.unwrap();
    let prefix = format!("id6-test-signout-{}:", std::process::id());
    let alice = mock.add_user("Alice", "a@example.com");
    let token = mock.token_issued_at(alice, common::now_ms() - 10);
    let apps = apps(&mock, &redis, &prefix, 3).await;
    for app in &apps {
        assert_eq!(app.get("/", &token).await.1, "Hello, Alice!");
    }
    let calls = mock.user_calls_for(&token);
    let before: Vec<_> = apps.iter().map(|a| a.id6.stats()).collect();
    apps[0]
        .id6
        .sign_out(&UserToken::new(&token).unwrap())
        .await
        .unwrap();
    for (app, before) in apps[1..].iter().zip(&before[1..]) {
        until_evicted(&app.id6, before.evictions, "sign_out").await;
        assert_eq!(app.get("/", &token).await.1, "Hello, Alice!");
        assert_eq!(
            app.id6.stats().misses,
            before.misses + 1,
            "served from a stale entry"
        );
    }
    assert!(
        mock.user_calls_for(&token) > calls,
        "id6 was not asked again"
    );
}

/// An instance hears its own broadcasts on the channel it follows: it counts its own
/// evictions once and tells its sessions once (its echo only evicts again, quietly).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_instance_counts_its_own_broadcast_once() {
    let Some(redis) = redis_or_skip().await else {
        return;
    };
    let mock = MockId6::start().await.unwrap();
    let prefix = format!("id6-test-echo-{}:", std::process::id());
    let (a, b) = (
        instance(&mock, &redis, &prefix).await,
        instance(&mock, &redis, &prefix).await,
    );
    redis.until_subscribed(2).await;
    let alice = mock.add_user("Alice", "a@example.com");
    let (token, marker) = (
        mock.token_issued_at(alice, common::now_ms() - 10),
        mock.token_issued_at(alice, common::now_ms() - 11),
    );
    let headers = |token: &str| {
        let mut headers = http::HeaderMap::new();
        headers.insert("cookie", format!("auth={token}").parse().unwrap());
        headers
    };
    assert!(a.authenticate(&headers(&token)).await.user().is_some());
    assert!(a.authenticate(&headers(&marker)).await.user().is_some());
    let before = a.stats().evictions;

    a.sign_out(&UserToken::new(&token).unwrap()).await.unwrap();
    // B's eviction of the marker reaches A after A's own broadcast (Redis delivers in the
    // order it published): once A dropped the marker, its echo has come too.
    b.invalidate_token(&UserToken::new(&marker).unwrap());
    let deadline = Instant::now() + Duration::from_secs(2);
    loop {
        let calls = mock.user_calls_for(&marker);
        a.authenticate(&headers(&marker)).await;
        if mock.user_calls_for(&marker) > calls {
            break;
        }
        assert!(Instant::now() < deadline, "B's eviction never reached A");
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    assert_eq!(
        a.stats().evictions,
        before + 2,
        "A's own sign-out, then B's eviction: once each"
    );
}

/// A public call of `Id6` that evicts, on the given handle and token.
type EvictingCall = Box<dyn Fn(Id6, UserToken) -> futures_util::future::BoxFuture<'static, ()>>;

/// Every public path that evicts reaches the other instances through Redis.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_public_eviction_reaches_the_other_instances() {
    let Some(redis) = redis_or_skip().await else {
        return;
    };
    let mock = MockId6::start().await.unwrap();
    let prefix = format!("id6-test-paths-{}:", std::process::id());
    let (a, b) = (
        instance(&mock, &redis, &prefix).await,
        instance(&mock, &redis, &prefix).await,
    );
    redis.until_subscribed(2).await;
    let alice = mock.add_user("Alice", "a@example.com");
    let mut issued = common::now_ms() - 1000;
    let mut fresh = || {
        issued += 1;
        UserToken::new(&mock.token_issued_at(alice, issued)).unwrap()
    };
    let paths: Vec<(&str, EvictingCall)> = vec![
        (
            "sign_out",
            Box::new(|id6, t| Box::pin(async move { id6.sign_out(&t).await.unwrap() })),
        ),
        (
            "update_profile",
            Box::new(|id6, t| {
                Box::pin(async move {
                    id6.update_profile(&t, &id6_tower::Profile::new("Alicia"))
                        .await
                        .unwrap()
                })
            }),
        ),
        (
            "update_picture",
            Box::new(|id6, t| {
                Box::pin(async move {
                    let png = id6_tower::PictureUpload::from_bytes("me.png", &b"\x89PNG"[..]);
                    id6.update_picture(&t, png).await.unwrap();
                })
            }),
        ),
        (
            "invalidate_token",
            Box::new(|id6, t| Box::pin(async move { id6.invalidate_token(&t) })),
        ),
        (
            "invalidate_user",
            Box::new(|id6, t| {
                Box::pin(async move {
                    let user = id6.user(&t).await.unwrap();
                    id6.invalidate_user(user.id);
                })
            }),
        ),
        (
            "clear",
            Box::new(|id6, _| Box::pin(async move { id6.clear() })),
        ),
        (
            "disconnect",
            Box::new(|id6, t| Box::pin(async move { id6.disconnect(&t).await.unwrap() })),
        ),
    ];
    for (what, path) in paths {
        let token = fresh();
        let mut headers = http::HeaderMap::new();
        headers.insert(
            "cookie",
            format!("auth={}", token.expose()).parse().unwrap(),
        );
        assert!(b.authenticate(&headers).await.user().is_some(), "{what}");
        let before = b.stats().evictions;
        path(a.clone(), token).await;
        until_evicted(&b, before, what).await;
    }
    // A 401 on a typed call evicts the dead token everywhere too.
    let token = fresh();
    let mut headers = http::HeaderMap::new();
    headers.insert(
        "cookie",
        format!("auth={}", token.expose()).parse().unwrap(),
    );
    b.authenticate(&headers).await;
    let before = b.stats().evictions;
    assert!(a.sign_out(&token).await.unwrap_err().is_unauthenticated());
    until_evicted(&b, before, "a 401 on a typed call").await;
    // Not one Redis operation failed on the way (a `clear` with nothing shared once did).
    assert_eq!(a.stats().redis_errors + b.stats().redis_errors, 0);
}

/// The last handle dropped, its Redis subscriber ends and its connections close.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropping_the_last_handle_ends_the_subscriber_and_closes_redis() {
    let Some(redis) = redis_or_skip().await else {
        return;
    };
    let mock = MockId6::start().await.unwrap();
    let alice = mock.add_user("Alice", "a@example.com");
    let before = redis.clients().len();
    let id6 = instance(&mock, &redis, "id6-test-drop:").await;
    redis.until_subscribed(1).await;
    let mut headers = http::HeaderMap::new();
    let token = mock.token_for(alice);
    headers.insert("cookie", format!("auth={token}").parse().unwrap());
    assert!(id6.authenticate(&headers).await.user().is_some());
    assert!(
        redis.clients().len() >= before + 2,
        "a command and a pub/sub connection"
    );
    let clone = id6.clone();
    drop(id6);
    assert!(
        redis.clients().len() >= before + 2,
        "a clone keeps it all alive"
    );
    drop(clone);
    let deadline = Instant::now() + Duration::from_secs(5);
    while redis.clients().len() > before {
        assert!(
            Instant::now() < deadline,
            "connections left open: {:#?}",
            redis.clients()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Refreshes and `max_age` routes take a shared answer when another instance asked id6
/// recently enough: the answer's age travels with it through Redis.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_young_shared_answer_serves_refreshes_and_sensitive_routes() {
    use tower::ServiceExt;
    let Some(redis) = redis_or_skip().await else {
        return;
    };
    let mock = MockId6::start().await.unwrap();
    let prefix = format!("id6-test-age-{}:", std::process::id());
    let refresh_after = Duration::from_millis(300);
    let make = || {
        Id6::builder(mock.url())
            .redis(redis.url())
            .redis_prefix(&prefix)
            .redis_timeout(Duration::from_millis(100))
            .timeout(Duration::from_secs(2))
            .cache_ttl(Duration::from_secs(60))
            .refresh_after(refresh_after)
            .build()
            .unwrap()
    };
    let (a, b) = (make(), make());
    let headers = |token: &str| {
        let mut headers = http::HeaderMap::new();
        headers.insert("cookie", format!("auth={token}").parse().unwrap());
        headers
    };
    // Open both Redis connections first (see `apps`).
    let warm_up = headers(&mock.token_for(mock.add_user("Warm-up", "w@example.com")));
    a.authenticate(&warm_up).await;
    b.authenticate(&warm_up).await;

    let alice = mock.add_user("Alice", "a@example.com");
    let token = mock.token_issued_at(alice, common::now_ms() - 10);
    let alice_headers = headers(&token);
    assert!(a.authenticate(&alice_headers).await.user().is_some());
    assert!(b.authenticate(&alice_headers).await.user().is_some());
    assert_eq!(
        mock.user_calls_for(&token),
        1,
        "B found A's answer in Redis"
    );

    // Both entries age past `refresh_after` (Redis ages by the wall clock: really wait).
    tokio::time::sleep(refresh_after + Duration::from_millis(100)).await;
    // A's refresh finds only the old shared answer: it asks id6, and shares what it learns.
    let old_entry = redis.get(&entry_of(&prefix, &token));
    assert!(a.authenticate(&alice_headers).await.user().is_some());
    let until = Instant::now() + Duration::from_secs(10);
    // Until A's answer is in Redis (sealed anew), not only counted: the count comes when
    // id6 answers, the store a moment later (B read the old entry in between once).
    while a.stats().upstream_authenticated < 3 || redis.get(&entry_of(&prefix, &token)) == old_entry
    {
        assert!(Instant::now() < until, "A never refreshed");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert_eq!(mock.user_calls_for(&token), 2);
    // B's refresh finds A's young answer: no id6 call.
    assert!(b.authenticate(&alice_headers).await.user().is_some());
    assert_eq!(b.stats().refreshes, 1);
    // A sensitive route on B whose max age B's old entry exceeds: it waits for that
    // refresh, or finds its result (A's answer, a few ms old).
    let route = axum::Router::new()
        .route("/me", axum::routing::get(common::me))
        .layer(b.layer_with_max_age(refresh_after));
    let request = http::Request::get("/me")
        .header("cookie", format!("auth={token}"))
        .body(axum::body::Body::empty())
        .unwrap();
    assert_eq!(route.oneshot(request).await.unwrap().status(), 200);
    assert_eq!(
        mock.user_calls_for(&token),
        2,
        "B asked id6 although A's answer was young"
    );
}

/// Where a token's answer is shared: under its user's hash tag (the `userId` of its JWT
/// payload), `{prefix}{u:<id>}t:` and the SHA-256 of the token, in hex.
fn entry_of(prefix: &str, token: &str) -> String {
    use sha2::Digest;
    let hash = sha2::Sha256::digest(token.as_bytes());
    let hex: String = hash.iter().map(|b| format!("{b:02x}")).collect();
    format!("{prefix}{{u:{}}}t:{hex}", user_id_of(token))
}

/// The `userId` of a JWT's payload (unverified, as the tier reads it to tag its keys).
fn user_id_of(token: &str) -> u64 {
    let payload = token.split('.').nth(1).expect("a JWT");
    let mut bits = Vec::new();
    for c in payload.bytes() {
        let value = match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'-' => 62,
            b'_' => 63,
            _ => panic!("not base64url"),
        };
        bits.push(value);
    }
    let bytes: Vec<u8> = bits
        .chunks(4)
        .flat_map(|chunk| {
            let n = chunk
                .iter()
                .enumerate()
                .fold(0u32, |n, (i, v)| n | (u32::from(*v) << (18 - 6 * i)));
            let len = chunk.len() * 6 / 8;
            n.to_be_bytes()[1..1 + len].to_vec()
        })
        .collect();
    let json: serde_json::Value = serde_json::from_slice(&bytes).expect("a JSON payload");
    json["userId"].as_u64().expect("a numeric userId")
}

/// An id6 whose clock runs ahead (or a hostile one) shows an `invalidateTokensAt` in the
/// future: the revocation is handled once, not again on every answer (which made the user
/// uncachable: one `/authorize` call and one broadcast per request).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revocation_dated_in_the_future_is_handled_once() {
    let Some(redis) = redis_or_skip().await else {
        return;
    };
    let mock = MockId6::start().await.unwrap();
    let prefix = format!("id6-test-future-{}:", std::process::id());
    let app = authorizing_app(&mock, &redis, &prefix).await;
    redis.until_subscribed(1).await;
    let alice = mock.add_user("Alice", "a@example.com");
    let ten_minutes = 10 * 60 * 1000;
    mock.revoke_tokens_at(alice, common::now_ms() + ten_minutes);
    // Issued after that revocation: id6 accepts it.
    let token = mock.token_issued_at(alice, common::now_ms() + ten_minutes + 1000);
    for _ in 0..60 {
        assert_eq!(app.get("/", &token).await.1, "Hello, Alice!");
        // Room for a broadcast to arrive before the next request, as between real requests.
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    // The first answer revokes (and so is not kept); one more (the broadcast may come after
    // a hit) finds the revocation handled and is kept.
    assert!(
        mock.authorize_calls() <= 3,
        "{} /authorize calls for 60 requests of one token",
        mock.authorize_calls()
    );
    assert!(app.id6.stats().evictions <= 2, "{:?}", app.id6.stats());
}

/// Whoever can write to Redis, without a token, cannot name a user: a forged entry, another
/// token's entry copied under this one's name, a truncated one and one over the size cap are
/// each a miss (id6 asked, the right user served) and counted; never an error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shared_entry_not_sealed_by_its_token_is_a_miss() {
    let Some(redis) = redis_or_skip().await else {
        return;
    };
    let mock = MockId6::start().await.unwrap();
    let prefix = format!("id6-test-sealed-{}:", std::process::id());
    let (a, b) = (
        instance(&mock, &redis, &prefix).await,
        instance(&mock, &redis, &prefix).await,
    );
    let headers = |token: &str| {
        let mut headers = http::HeaderMap::new();
        headers.insert("cookie", format!("auth={token}").parse().unwrap());
        headers
    };
    let warm_up = mock.token_for(mock.add_user("Warm-up", "w@example.com"));
    a.authenticate(&headers(&warm_up)).await;
    b.authenticate(&headers(&warm_up)).await;
    let alice = mock.add_user("Alice", "alice@example.com");
    let admin = mock.add_user("Admin", "admin@example.com");
    let issued = common::now_ms();
    let (token, copied, truncated, huge) = (
        mock.token_issued_at(alice, issued - 10),
        mock.token_issued_at(alice, issued - 20),
        mock.token_issued_at(alice, issued - 30),
        mock.token_issued_at(alice, issued - 40),
    );
    let name = |token: &str| {
        let (b, headers) = (b.clone(), headers(token));
        async move {
            b.authenticate(&headers)
                .await
                .user()
                .and_then(|u| u.email.clone())
        }
    };

    // Forged: the plain JSON an earlier version wrote, naming the admin.
    let mut forged = mock.user_json(admin).unwrap();
    forged["id"] = mock.user_json(alice).unwrap()["id"].clone();
    let plain = serde_json::json!({"user": {"user": forged, "ttl": 60_000}});
    redis.set(
        &entry_of(&prefix, &token),
        plain.to_string().as_bytes(),
        60_000,
    );
    assert_eq!(name(&token).await.as_deref(), Some("alice@example.com"));
    assert_eq!(
        mock.user_calls_for(&token),
        1,
        "the forged entry was served"
    );

    // Copied: the admin's real, sealed entry put under Alice's token's name.
    let admin_token = mock.token_for(admin);
    assert!(a
        .authenticate(&headers(&admin_token))
        .await
        .user()
        .is_some());
    let sealed = redis.get(&entry_of(&prefix, &admin_token));
    assert!(!sealed.is_empty(), "A shared the admin's answer");
    redis.set(&entry_of(&prefix, &copied), &sealed, 60_000);
    assert_eq!(name(&copied).await.as_deref(), Some("alice@example.com"));
    assert_eq!(
        mock.user_calls_for(&copied),
        1,
        "another token's entry was served"
    );

    // Truncated: Alice's own entry, cut short.
    assert!(a.authenticate(&headers(&truncated)).await.user().is_some());
    let sealed = redis.get(&entry_of(&prefix, &truncated));
    redis.set(
        &entry_of(&prefix, &truncated),
        &sealed[..sealed.len() - 3],
        60_000,
    );
    assert_eq!(name(&truncated).await.as_deref(), Some("alice@example.com"));
    assert_eq!(
        mock.user_calls_for(&truncated),
        2,
        "a damaged entry was served"
    );
    assert_eq!(b.stats().redis_unopened, 3, "{:?}", b.stats());

    // Over the cap (id6's own body cap, 64 KiB by default): not read at all.
    redis.set(&entry_of(&prefix, &huge), &vec![b'A'; 200_000], 60_000);
    assert_eq!(name(&huge).await.as_deref(), Some("alice@example.com"));
    assert_eq!(mock.user_calls_for(&huge), 1);

    // A sealed entry of its own token is used as before: one id6 call for two instances.
    let shared = mock.token_issued_at(alice, issued - 50);
    assert!(a.authenticate(&headers(&shared)).await.user().is_some());
    assert_eq!(name(&shared).await.as_deref(), Some("alice@example.com"));
    assert_eq!(mock.user_calls_for(&shared), 1, "B asked id6 again");
    assert_eq!(a.stats().redis_errors + b.stats().redis_errors, 0);
}

/// A WebSocket open on B (the axum example's `/ws`) is closed when A signs its token out:
/// the eviction broadcast reaches B's open connections as it reaches B's cache.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sign_out_on_one_instance_closes_a_socket_open_on_another() {
    use futures_util::StreamExt;
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
    use tokio_tungstenite::tungstenite::Message;

    let Some(redis) = redis_or_skip().await else {
        return;
    };
    let mock = MockId6::start().await.unwrap();
    let prefix = format!("id6-test-socket-{}:", std::process::id());
    let alice = mock.add_user("Alice", "a@example.com");
    let token = mock.token_issued_at(alice, common::now_ms() - 10);
    let a = instance(&mock, &redis, &prefix).await;
    let b = instance(&mock, &redis, &prefix).await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let b_url = format!("ws://{}/ws", listener.local_addr().unwrap());
    let state = example::AppState {
        id6: b.clone(),
        login_url: None,
        public_url: "http://127.0.0.1".to_owned(),
        admin_emails: std::sync::Arc::from(Vec::new()),
    };
    tokio::spawn(async move { axum::serve(listener, example::app(state)).await });
    redis.until_subscribed(2).await;

    let mut request = b_url.into_client_request().unwrap();
    let cookie = format!("auth={token}").parse().unwrap();
    request.headers_mut().insert("cookie", cookie);
    let (mut socket, _) = tokio_tungstenite::connect_async(request).await.unwrap();
    let greeting = socket.next().await.unwrap().unwrap();
    assert_eq!(greeting, Message::Text("signed in as Alice".into()));

    let since = Instant::now();
    a.sign_out(&UserToken::new(&token).unwrap()).await.unwrap();
    let closed = tokio::time::timeout(Duration::from_secs(1), async {
        loop {
            match socket.next().await {
                Some(Ok(Message::Close(Some(frame)))) => return frame,
                Some(Ok(_)) => {}
                other => panic!("no close frame: {other:?}"),
            }
        }
    })
    .await
    .expect("B's socket closed within a second of A's sign-out");
    assert_eq!(closed.code, CloseCode::Policy);
    // A sign-out in its own words on every instance (the broadcast says `o:`, not `t:`).
    assert_eq!(closed.reason.as_str(), "signed_out");
    eprintln!(
        "socket on B closed {:?} after A's sign-out",
        since.elapsed()
    );
}

/// A revocation made while Redis stalls (`DEBUG SLEEP`) reaches the other instances once it
/// answers again; so does one made right after a lookup failed on the stall (which pauses
/// lookups, never evictions).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revocation_during_a_redis_stall_reaches_the_other_instances() {
    let Some(redis) = redis_or_skip().await else {
        return;
    };
    let mock = MockId6::start().await.unwrap();
    let prefix = format!("id6-test-stall-{}:", std::process::id());
    let alice = mock.add_user("Alice", "a@example.com");
    let bob = mock.add_user("Bob", "b@example.com");
    let (alice_token, bob_token) = (mock.token_for(alice), mock.token_for(bob));
    let apps = apps(&mock, &redis, &prefix, 2).await;
    for app in &apps {
        assert_eq!(app.get("/", &alice_token).await.1, "Hello, Alice!");
        assert_eq!(app.get("/", &bob_token).await.1, "Hello, Bob!");
    }

    // During the stall: A's sign-out of every Alice session returns (Redis's part waits).
    let awake = redis.stall("1");
    apps[0]
        .id6
        .disconnect(&UserToken::new(&alice_token).unwrap())
        .await
        .unwrap();
    let back = awake.join().unwrap();
    let took = apps[1]
        .until_refused(
            &alice_token,
            back,
            "B kept serving a token revoked during a stall",
        )
        .await;
    println!("revoked during a stall: refused on B {took:?} after Redis's return");

    // Right after a stall in which a lookup failed late enough (0.7 s in, failing at 0.8 s)
    // that its 0.5 s pause of lookups is still on when Redis answers again: that pause
    // must not hold back the eviction.
    let awake = redis.stall("1");
    tokio::time::sleep(Duration::from_millis(700)).await;
    let carol = mock.token_for(mock.add_user("Carol", "c@example.com"));
    assert_eq!(apps[0].get("/", &carol).await.1, "Hello, Carol!");
    let back = awake.join().unwrap();
    apps[0]
        .id6
        .disconnect(&UserToken::new(&bob_token).unwrap())
        .await
        .unwrap();
    let took = apps[1]
        .until_refused(
            &bob_token,
            back,
            "B kept serving a token revoked after a stall",
        )
        .await;
    println!("revoked right after a stall: refused on B {took:?} after Redis's return");
    assert!(
        apps[0].id6.stats().redis_errors > 0,
        "the stall was counted"
    );
}

/// More evictions than the queue holds while Redis stalls: they are given up for one clear,
/// counted, and the clear reaches the other instances when Redis answers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_eviction_queue_overflow_is_sent_as_one_clear() {
    let Some(redis) = redis_or_skip().await else {
        return;
    };
    let mock = MockId6::start().await.unwrap();
    let prefix = format!("id6-test-overflow-{}:", std::process::id());
    let alice = mock.add_user("Alice", "a@example.com");
    let token = mock.token_for(alice);
    let apps = apps(&mock, &redis, &prefix, 2).await;
    assert_eq!(apps[1].get("/", &token).await.1, "Hello, Alice!");
    let evictions = apps[1].id6.stats().evictions;
    // A Redis of some size: the clear's scan outlasts one operation's timeout (100 ms).
    use std::io::BufRead;
    let mut reply = String::new();
    redis
        .send(&[b"DEBUG", b"POPULATE", b"300000", b"other-app"])
        .read_line(&mut reply)
        .unwrap();
    assert_eq!(reply.trim(), "+OK");

    let awake = redis.stall("2");
    // Users that exist nowhere: only the clear they are given up for can touch Alice.
    for id in 1_000_000..1_002_000 {
        apps[0].id6.invalidate_user(id);
    }
    let back = awake.join().unwrap();
    // The revocation A's queue was applying when Redis stalled (if it had taken one yet) is
    // told first, then the clear, then the users queued after it: the second eviction B
    // hears is the clear, or comes after it.
    // The clear deletes the shared entries (a scan of 300 000 keys) before it tells: a
    // hang guard of its own.
    let deadline = Instant::now() + Duration::from_secs(20);
    while apps[1].id6.stats().evictions <= evictions + 1 {
        assert!(Instant::now() < deadline, "the clear never reached B");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    println!(
        "the clear reached B {:?} after Redis's return",
        back.elapsed()
    );
    let calls = mock.user_calls_for(&token);
    assert_eq!(apps[1].get("/", &token).await.1, "Hello, Alice!");
    assert_eq!(
        mock.user_calls_for(&token),
        calls + 1,
        "B's cache was not cleared"
    );
    assert!(
        apps[0].id6.stats().redis_evictions_given_up > 0,
        "{:?}",
        apps[0].id6.stats()
    );
}

/// A TCP proxy on loopback in front of Redis that can go silent: the connections it carries
/// stay open and carry nothing more (a NAT or a load balancer dropping an idle flow without
/// a FIN); connections made after that are carried as usual.
struct SilentProxy {
    addr: std::net::SocketAddr,
    silence: std::sync::Arc<std::sync::Mutex<Vec<std::sync::Arc<std::sync::atomic::AtomicBool>>>>,
}

impl SilentProxy {
    async fn start(redis: &Redis) -> SilentProxy {
        use std::sync::atomic::AtomicBool;
        use std::sync::{Arc, Mutex};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let silence: Arc<Mutex<Vec<Arc<AtomicBool>>>> = Arc::default();
        let port = redis.port;
        let flows = silence.clone();
        tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let Ok(server) = tokio::net::TcpStream::connect(("127.0.0.1", port)).await else {
                    continue;
                };
                let silent = Arc::new(AtomicBool::new(false));
                flows.lock().unwrap().push(silent.clone());
                let (client_read, client_write) = client.into_split();
                let (server_read, server_write) = server.into_split();
                tokio::spawn(carry(client_read, server_write, silent.clone()));
                tokio::spawn(carry(server_read, client_write, silent));
            }
        });
        SilentProxy { addr, silence }
    }

    fn url(&self) -> String {
        format!("redis://{}", self.addr)
    }

    /// Every connection carried so far goes silent (and stays open).
    fn silence(&self) {
        for flow in self.silence.lock().unwrap().iter() {
            flow.store(true, std::sync::atomic::Ordering::SeqCst);
        }
    }
}

/// Copies bytes one way until the flow is silenced: then holds both ends open, forever.
async fn carry(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    silent: std::sync::Arc<std::sync::atomic::AtomicBool>,
) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut buf = vec![0; 16 * 1024];
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        if silent.load(std::sync::atomic::Ordering::SeqCst) {
            let _held = (from, to);
            std::future::pending::<()>().await;
            return;
        }
        if to.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}

/// B reaches Redis through a proxy that goes silent: B notices its dead subscription (by
/// pinging it), subscribes again on a new connection and clears its cache, so a revocation
/// broadcast while it was deaf is not served past that.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_subscription_is_noticed_and_replaced() {
    let Some(redis) = redis_or_skip().await else {
        return;
    };
    let mock = MockId6::start().await.unwrap();
    let prefix = format!("id6-test-silent-{}:", std::process::id());
    let proxy = SilentProxy::start(&redis).await;
    let a = instance(&mock, &redis, &prefix).await;
    let b = Id6::builder(mock.url())
        .redis(proxy.url())
        .redis_prefix(&prefix)
        .redis_timeout(Duration::from_millis(100))
        .timeout(Duration::from_secs(2))
        .build()
        .unwrap();
    let b_app = App::serving(b.clone()).await;
    let alice = mock.add_user("Alice", "a@example.com");
    let token = mock.token_for(alice);
    let mut headers = http::HeaderMap::new();
    headers.insert("cookie", format!("auth={token}").parse().unwrap());
    assert!(b.authenticate(&headers).await.user().is_some());
    redis.until_subscribed(1).await;
    assert!(a.authenticate(&headers).await.user().is_some());
    redis.until_subscribed(2).await;

    proxy.silence();
    let since = Instant::now();
    a.disconnect(&UserToken::new(&token).unwrap())
        .await
        .unwrap();
    // The TTL is a minute: a refusal within 20 s came from the replaced subscription.
    let deadline = since + Duration::from_secs(20);
    while b_app.get("/me", &token).await.0 == 200 {
        assert!(
            Instant::now() < deadline,
            "B never noticed its dead subscription"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    println!(
        "a silent subscription noticed and replaced after {:?}",
        since.elapsed()
    );
    assert!(b.stats().redis_resubscribed >= 1, "{:?}", b.stats());
}

/// A Sentinel group of the test's own: a master, a replica, three Sentinels (quorum 2) that
/// watch it as `id6-master`, each Sentinel with a config file of its own (they rewrite it).
struct SentinelGroup {
    master: Redis,
    replica: Redis,
    sentinels: Vec<Redis>,
    _dir: TempDir,
}

/// A folder removed with the test.
struct TempDir(std::path::PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

impl SentinelGroup {
    async fn start() -> Option<SentinelGroup> {
        let turn = ONE_AT_A_TIME.lock().await;
        let mut master = Redis::start()?;
        master._turn = Some(turn);
        let replica = Redis::start_with(vec![
            "--replicaof".into(),
            "127.0.0.1".into(),
            master.port.to_string(),
        ])?;
        let dir = std::env::temp_dir().join(format!("id6-sentinels-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let mut sentinels = Vec::new();
        for i in 0..3 {
            let conf = dir.join(format!("sentinel-{i}.conf"));
            std::fs::write(
                &conf,
                format!(
                    "sentinel monitor id6-master 127.0.0.1 {} 2\n\
                     sentinel down-after-milliseconds id6-master 1000\n\
                     sentinel failover-timeout id6-master 5000\n",
                    master.port
                ),
            )
            .unwrap();
            let args = vec![conf.display().to_string(), "--sentinel".into()];
            sentinels.push(Redis::start_with(args)?);
        }
        let group = SentinelGroup {
            master,
            replica,
            sentinels,
            _dir: TempDir(dir),
        };
        // Ready when the replica is in sync and every Sentinel knows it.
        let deadline = Instant::now() + Duration::from_secs(20);
        while !group.sentinels.iter().all(|s| {
            s.reply(&[b"SENTINEL", b"REPLICAS", b"id6-master"])
                .contains(&group.replica.port.to_string())
        }) {
            assert!(
                Instant::now() < deadline,
                "the Sentinels never saw the replica"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Some(group)
    }

    fn urls(&self) -> Vec<String> {
        self.sentinels.iter().map(Redis::url).collect()
    }

    /// The master's port, as a Sentinel names it now.
    fn master_port(&self) -> String {
        let reply =
            self.sentinels[0].reply(&[b"SENTINEL", b"GET-MASTER-ADDR-BY-NAME", b"id6-master"]);
        reply.lines().nth(4).unwrap_or_default().to_owned()
    }
}

impl Redis {
    /// One command's whole reply, as RESP text (what the server sent within 200 ms).
    fn reply(&self, args: &[&[u8]]) -> String {
        use std::io::Read;
        let mut reader = self.send(args);
        reader
            .get_ref()
            .set_read_timeout(Some(Duration::from_millis(200)))
            .unwrap();
        let mut reply = Vec::new();
        let mut buf = [0; 4096];
        while let Ok(n) = reader.read(&mut buf) {
            if n == 0 {
                break;
            }
            reply.extend_from_slice(&buf[..n]);
            if reply.ends_with(b"\r\n") && n < buf.len() {
                break;
            }
        }
        String::from_utf8_lossy(&reply).into_owned()
    }
}

/// Two instances on a Sentinel group share answers and evictions; the master is killed
/// while requests run; the Sentinels promote the replica and the instances find it by
/// themselves: requests never fail, a revocation made during the failover is not served
/// once B's subscription is back, and sharing and broadcasts resume.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sentinel_failover_is_followed_without_a_restart() {
    let Some(mut group) = SentinelGroup::start().await else {
        if std::env::var_os("CI").is_some() {
            panic!("SKIPPED: sentinel test: install redis-server");
        }
        return;
    };
    let mock = MockId6::start().await.unwrap();
    let prefix = format!("id6-test-sentinel-{}:", std::process::id());
    let make = || {
        Id6::builder(mock.url())
            .redis_sentinels(group.urls(), "id6-master")
            .redis_prefix(&prefix)
            .redis_timeout(Duration::from_millis(200))
            .timeout(Duration::from_secs(2))
            .build()
            .unwrap()
    };
    let apps = [App::serving(make()).await, App::serving(make()).await];
    group.master.until_subscribed(2).await;
    assert_eq!(
        apps[0].id6.shared_health(),
        id6_tower::SharedHealth::Up {
            topology: id6_tower::Topology::Sentinel
        }
    );
    let alice = mock.add_user("Alice", "a@example.com");
    let token = mock.token_issued_at(alice, common::now_ms() - 5);
    for app in &apps {
        assert_eq!(app.get("/", &token).await.1, "Hello, Alice!");
    }
    assert_eq!(
        mock.user_calls_for(&token),
        1,
        "B found A's answer through the Sentinels' master"
    );
    apps[0]
        .id6
        .disconnect(&UserToken::new(&token).unwrap())
        .await
        .unwrap();
    apps[1]
        .until_refused(&token, Instant::now(), "the broadcast never came")
        .await;
    a_store_from_before_a_revocation_is_refused(&mock, &prefix, (&apps[0], &apps[1]), |key| {
        group.master.set(key, b"60000", 60_000)
    })
    .await;

    // Dave, never revoked, is known to both instances. Then the master dies.
    let dave = mock.add_user("Dave", "d@example.com");
    let fresh = mock.token_issued_at(dave, common::now_ms() - 5);
    for app in &apps {
        assert_eq!(app.get("/", &fresh).await.1, "Hello, Dave!");
    }
    let old_master = group.master.port.to_string();
    let killed = Instant::now();
    group.master.stop();
    // A revocation on A while B's subscription is cut: B may serve it only until its
    // subscription is back on the new master (it clears its cache then), never after.
    apps[0]
        .id6
        .disconnect(&UserToken::new(&fresh).unwrap())
        .await
        .unwrap();
    // Requests keep being served (by moka and id6) while the Sentinels fail over.
    let bob = mock.add_user("Bob", "b@example.com");
    let bob_token = mock.token_for(bob);
    while group.master_port() == old_master {
        for app in &apps {
            assert_eq!(app.get("/", &bob_token).await.1, "Hello, Bob!");
        }
        assert!(
            killed.elapsed() < Duration::from_secs(30),
            "no failover within 30 s"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let promoted = killed.elapsed();
    assert_eq!(group.master_port(), group.replica.port.to_string());
    let refused = apps[1]
        .until_refused(
            &fresh,
            Instant::now(),
            "B served a token revoked during the failover",
        )
        .await;
    // Sharing resumes on the new master: one instance's answer is the other's.
    let carol = mock.add_user("Carol", "c@example.com");
    let both = [&apps[0], &apps[1]];
    until_shared(
        &mock,
        &both,
        (carol, "Carol"),
        Duration::from_secs(40),
        "sharing never resumed",
    )
    .await;
    let shared_again = killed.elapsed();
    let carol_token = mock.token_issued_at(carol, common::now_ms() - 1);
    assert_eq!(apps[1].get("/", &carol_token).await.1, "Hello, Carol!");
    apps[0]
        .id6
        .disconnect(&UserToken::new(&carol_token).unwrap())
        .await
        .unwrap();
    let broadcast = apps[1]
        .until_refused(&carol_token, Instant::now(), "broadcasts did not resume")
        .await;
    println!(
        "sentinel: replica promoted {promoted:?} after the kill; the token revoked meanwhile \
         refused on B {refused:?} later; sharing again {shared_again:?} after the kill; \
         a broadcast then took {broadcast:?}"
    );
    group.replica.stop();
}

/// The axum example's `/health` tells how the shared tier is doing and stays 200 while Redis
/// is down (the app works without it); a Redis that is down at start is one warning at
/// start, and `shared_health` says so before any request.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_reports_the_shared_tier_and_stays_200_while_redis_is_down() {
    let Some(mut redis) = redis_or_skip().await else {
        return;
    };
    let mock = MockId6::start().await.unwrap();
    let id6 = instance(&mock, &redis, "id6-test-health:").await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/health", listener.local_addr().unwrap());
    let state = example::AppState {
        id6: id6.clone(),
        login_url: None,
        public_url: "http://127.0.0.1".to_owned(),
        admin_emails: std::sync::Arc::from(Vec::new()),
    };
    tokio::spawn(async move { axum::serve(listener, example::app(state)).await });
    let http = common::http_client();
    let health = || async {
        let answer = http.get(&url).send().await.unwrap();
        let status = answer.status().as_u16();
        let json: serde_json::Value =
            serde_json::from_slice(&answer.bytes().await.unwrap()).unwrap();
        (status, json["redis"].clone())
    };
    // Asked at build: up without a single request.
    let deadline = Instant::now() + Duration::from_secs(5);
    while health().await.1["state"] != "up" {
        assert!(Instant::now() < deadline, "never up: {:?}", health().await);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(health().await.1["topology"], "single");

    redis.stop();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (status, redis_health) = health().await;
        assert_eq!(
            status, 200,
            "/health follows the app, which works without Redis"
        );
        if redis_health["state"] == "down" {
            assert!(redis_health["sinceMs"].as_u64().unwrap() > 0);
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the outage never showed: {redis_health}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // A Redis that is not there at start: known before any request.
    let unreachable = Id6::builder(mock.url())
        .redis(format!("redis://127.0.0.1:{}", redis.port))
        .redis_timeout(Duration::from_millis(100))
        .build()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    while !matches!(
        unreachable.shared_health(),
        id6_tower::SharedHealth::Down { .. }
    ) {
        assert!(
            Instant::now() < deadline,
            "{:?}",
            unreachable.shared_health()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A Redis Cluster of the test's own: three masters (no replicas), each in a folder of its
/// own (a node writes `nodes.conf` there, and finds its place again on restart). A master
/// down does not stop the others (`cluster-require-full-coverage no`; with the default, the
/// whole cluster refuses once the node is marked failed).
struct ClusterGroup {
    nodes: Vec<Redis>,
    _dir: TempDir,
}

impl ClusterGroup {
    async fn start() -> Option<ClusterGroup> {
        let turn = ONE_AT_A_TIME.lock().await;
        let cli = ["/usr/bin/redis-cli", "/usr/local/bin/redis-cli"]
            .into_iter()
            .find(|p| Path::new(p).exists())?;
        let ports = cluster_ports(3)?;
        let dir = std::env::temp_dir().join(format!("id6-cluster-{}", std::process::id()));
        let mut nodes = Vec::new();
        for port in &ports {
            let folder = dir.join(port.to_string());
            std::fs::create_dir_all(&folder).unwrap();
            let extra = [
                "--cluster-enabled",
                "yes",
                "--cluster-config-file",
                "nodes.conf",
                "--cluster-node-timeout",
                "2000",
                "--cluster-require-full-coverage",
                "no",
                "--dir",
            ]
            .map(String::from)
            .into_iter()
            .chain([folder.display().to_string()])
            .collect();
            nodes.push(Redis::start_on(*port, extra)?);
        }
        nodes[0]._turn = Some(turn);
        let group = ClusterGroup {
            nodes,
            _dir: TempDir(dir),
        };
        let created = Command::new(cli)
            .args(["--cluster", "create"])
            .args(ports.iter().map(|port| format!("127.0.0.1:{port}")))
            .arg("--cluster-yes")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .expect("redis-cli runs");
        assert!(created.success(), "redis-cli --cluster create failed");
        group.until_ok().await;
        Some(group)
    }

    /// Until every node says `cluster_state:ok` (every slot served).
    async fn until_ok(&self) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while !self
            .nodes
            .iter()
            .all(|n| n.reply(&[b"CLUSTER", b"INFO"]).contains("cluster_state:ok"))
        {
            assert!(Instant::now() < deadline, "the cluster never came up");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    fn urls(&self) -> Vec<String> {
        self.nodes.iter().map(Redis::url).collect()
    }

    /// Which node holds `key` (the others answer `MOVED`).
    fn holder(&self, key: &str) -> Option<usize> {
        self.nodes
            .iter()
            .position(|n| n.reply(&[b"EXISTS", key.as_bytes()]).starts_with(":1"))
    }

    /// `SET key value PX ms` on the master that owns `key`'s slot (the others answer MOVED).
    fn set(&self, key: &str, value: &[u8], ms: u64) {
        let ms = ms.to_string();
        let args: [&[u8]; 5] = [b"SET", key.as_bytes(), value, b"PX", ms.as_bytes()];
        assert!(
            self.nodes.iter().any(|n| n.reply(&args).starts_with("+OK")),
            "no master took {key}"
        );
    }

    /// How many keys each node holds.
    fn sizes(&self) -> Vec<u64> {
        self.nodes
            .iter()
            .map(|n| {
                let reply = n.reply(&[b"DBSIZE"]);
                reply.trim().trim_start_matches(':').parse().unwrap_or(0)
            })
            .collect()
    }
}

/// `n` loopback ports, each free with its cluster-bus port (+10 000) free too, all below
/// the kernel's ephemeral range (32 768 and up on Linux), so that no connection of another
/// test takes one meanwhile; picked from the process id, tried until free.
fn cluster_ports(n: usize) -> Option<Vec<u16>> {
    let free = |port: u16| std::net::TcpListener::bind(("127.0.0.1", port)).is_ok();
    let start = 12_000 + (std::process::id() % 2_000) as u16 * 5;
    let ports: Vec<u16> = (start..22_000)
        .filter(|port| free(*port) && free(port + 10_000))
        .take(n)
        .collect();
    (ports.len() == n).then_some(ports)
}

impl Redis {
    /// A redis-server on `port` (a cluster node's must leave room for its bus port).
    fn start_on(port: u16, extra: Vec<String>) -> Option<Redis> {
        let binary = ["/usr/bin/redis-server", "/usr/local/bin/redis-server"]
            .into_iter()
            .find(|p| Path::new(p).exists())?;
        let mut redis = Redis {
            binary,
            port,
            extra,
            process: None,
            _turn: None,
        };
        redis.spawn();
        Some(redis)
    }
}

/// Two instances on a three-master Redis Cluster: one id6 call serves both, entries spread
/// over the masters, a disconnect on A is refused on B; one master killed while requests
/// run: every request is served (by moka and id6 where Redis cannot answer), the failures
/// counted; a revocation made meanwhile is not served by B once its subscription is back
/// (on another node); when the master is back, its users are shared again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_shares_spreads_and_survives_a_master_down() {
    let Some(mut group) = ClusterGroup::start().await else {
        if std::env::var_os("CI").is_some() {
            panic!("SKIPPED: cluster test: install redis-server (and redis-cli)");
        }
        return;
    };
    let mock = MockId6::start().await.unwrap();
    let prefix = format!("id6-test-rc-{}:", std::process::id());
    let make = || {
        Id6::builder(mock.url())
            .redis_cluster(group.urls())
            .redis_prefix(&prefix)
            .redis_timeout(Duration::from_millis(200))
            .timeout(Duration::from_secs(2))
            .build()
            .unwrap()
    };
    let apps = [App::serving(make()).await, App::serving(make()).await];
    // Both subscribe on the first seed.
    group.nodes[0].until_subscribed(2).await;
    let up = id6_tower::SharedHealth::Up {
        topology: id6_tower::Topology::Cluster,
    };
    let deadline = Instant::now() + Duration::from_secs(5);
    while apps[0].id6.shared_health() != up {
        assert!(
            Instant::now() < deadline,
            "{:?}",
            apps[0].id6.shared_health()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // Shared: users spread over the masters, one id6 call for both instances each.
    let mut users = Vec::new();
    for i in 0..30 {
        let id = mock.add_user(&format!("User{i}"), &format!("u{i}@example.com"));
        users.push((id, format!("User{i}"), mock.token_for(id)));
    }
    let mut shared = 0;
    for (_, name, token) in &users {
        for app in &apps {
            assert_eq!(app.get("/", token).await.1, format!("Hello, {name}!"));
        }
        if mock.user_calls_for(token) == 1 {
            shared += 1;
        }
    }
    let sizes = group.sizes();
    println!(
        "cluster: {shared} of {} tokens answered by one id6 call for two instances; keys per \
         master {sizes:?}",
        users.len()
    );
    assert_eq!(shared, users.len(), "an answer was not shared");
    assert!(
        sizes.iter().all(|n| *n > 0),
        "entries on one master only: {sizes:?}"
    );
    // Each user's entry, mark and set share one slot: the entry is on one node.
    let holders: Vec<Option<usize>> = users
        .iter()
        .map(|(_, _, token)| group.holder(&entry_of(&prefix, token)))
        .collect();
    assert!(holders.iter().all(Option::is_some), "{holders:?}");
    for ((id, _, _), holder) in users.iter().zip(&holders) {
        let set = format!("{prefix}{{u:{id}}}set");
        assert_eq!(
            group.holder(&set),
            *holder,
            "a user's set and entry on two nodes"
        );
    }

    // A disconnect on A is refused on B, by broadcast (the TTL is a minute).
    let alice = mock.add_user("Alice", "a@example.com");
    let token = mock.token_issued_at(alice, common::now_ms() - 5);
    for app in &apps {
        assert_eq!(app.get("/", &token).await.1, "Hello, Alice!");
    }
    apps[0]
        .id6
        .disconnect(&UserToken::new(&token).unwrap())
        .await
        .unwrap();
    let broadcast = apps[1]
        .until_refused(&token, Instant::now(), "the broadcast never came")
        .await;
    a_store_from_before_a_revocation_is_refused(&mock, &prefix, (&apps[0], &apps[1]), |key| {
        group.set(key, b"60000", 60_000)
    })
    .await;
    // A sign-out on A: B drops its copy and the shared one is gone (id6 asked again).
    let (_, name, signed_out) = &users[0];
    let calls = mock.user_calls_for(signed_out);
    let before = apps[1].id6.stats();
    apps[0]
        .id6
        .sign_out(&UserToken::new(signed_out).unwrap())
        .await
        .unwrap();
    until_evicted(&apps[1].id6, before.evictions, "sign_out").await;
    assert_eq!(
        apps[1].get("/", signed_out).await.1,
        format!("Hello, {name}!")
    );
    assert_eq!(
        mock.user_calls_for(signed_out),
        calls + 1,
        "served from a stale entry"
    );

    // The first master (where both subscribe) dies while requests run. Dave, known to
    // both, is disconnected on A meanwhile.
    let victim = holders.iter().position(|h| *h == Some(0)).unwrap();
    let dave = mock.add_user("Dave", "d@example.com");
    let dave_token = mock.token_issued_at(dave, common::now_ms() - 5);
    for app in &apps {
        assert_eq!(app.get("/", &dave_token).await.1, "Hello, Dave!");
    }
    let errors_before: u64 = apps.iter().map(|a| a.id6.stats().redis_errors).sum();
    let killed = Instant::now();
    group.nodes[0].stop();
    apps[0]
        .id6
        .disconnect(&UserToken::new(&dave_token).unwrap())
        .await
        .unwrap();
    // B's subscription was on the dead node: B may serve Dave until it has subscribed on
    // another node (clearing its cache then), never after.
    let refused = apps[1]
        .until_refused(
            &dave_token,
            killed,
            "B served a token revoked while its subscription was cut",
        )
        .await;
    let resubscribed = apps[1].id6.stats().redis_resubscribed;
    assert!(resubscribed >= 1, "{:?}", apps[1].id6.stats());
    // Every user, on every instance, for two seconds: never an error.
    let mut requests = 0;
    let running = Instant::now();
    while running.elapsed() < Duration::from_secs(2) {
        for (_, name, token) in users.iter().skip(1) {
            for app in &apps {
                assert_eq!(app.get("/", token).await.1, format!("Hello, {name}!"));
                requests += 1;
            }
        }
    }
    // Fresh tokens during the outage: all served; the users of the living masters shared.
    let (mut fresh_shared, mut fresh) = (0, 0);
    for (id, name, _) in users.iter().skip(1) {
        let token = mock.token_issued_at(*id, common::now_ms() - 7);
        for app in &apps {
            assert_eq!(app.get("/", &token).await.1, format!("Hello, {name}!"));
        }
        fresh += 1;
        if mock.user_calls_for(&token) == 1 {
            fresh_shared += 1;
        }
    }
    let errors: u64 = apps.iter().map(|a| a.id6.stats().redis_errors).sum();
    assert!(
        errors > errors_before,
        "the dead master's failures were not counted"
    );
    // One master of three down, the others answering: degraded, not down (a health that
    // flipped between down and up with each failure and answer, before).
    let health: Vec<_> = apps.iter().map(|a| a.id6.shared_health()).collect();
    assert!(
        health
            .iter()
            .any(|h| matches!(h, id6_tower::SharedHealth::Degraded { .. }))
            && !health
                .iter()
                .any(|h| matches!(h, id6_tower::SharedHealth::Down { .. })),
        "{health:?}"
    );
    println!(
        "cluster, one master of three down: {requests} requests served, none failed; \
         {} Redis errors counted; {fresh_shared} of {fresh} fresh tokens still shared; \
         the token disconnected meanwhile refused on B {refused:?} after the kill",
        errors - errors_before
    );

    // The master is back (empty: no persistence here): its users are shared again.
    group.nodes[0].spawn();
    let restarted = Instant::now();
    group.until_ok().await;
    let ok = restarted.elapsed();
    let (id, name, _) = &users[victim];
    let every: Vec<&App> = apps.iter().collect();
    until_shared(
        &mock,
        &every,
        (*id, name),
        Duration::from_secs(30),
        "sharing never resumed on the master that came back",
    )
    .await;
    let resumed = restarted.elapsed();
    println!(
        "cluster: a broadcast took {broadcast:?}; the restarted master's users shared again \
         {resumed:?} after its restart (cluster_state:ok after {ok:?})"
    );

    // Every master down, then back: requests served meanwhile, and sharing resumes (the
    // cluster connection finds the nodes again by itself).
    for node in &mut group.nodes {
        node.stop();
    }
    for (_, name, token) in users.iter().skip(1).take(5) {
        for app in &apps {
            assert_eq!(app.get("/", token).await.1, format!("Hello, {name}!"));
        }
    }
    for node in &mut group.nodes {
        node.spawn();
    }
    let restarted = Instant::now();
    group.until_ok().await;
    until_shared(
        &mock,
        &every,
        (*id, name),
        Duration::from_secs(30),
        "sharing never resumed after every master was back",
    )
    .await;
    let all_back = restarted.elapsed();
    println!("cluster: every master restarted; shared again {all_back:?} after");
}

/// An eviction asked for just before the last handle of its instance is dropped still
/// reaches the others (the handle's tier lives until it was tried).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_eviction_just_before_the_last_handle_is_dropped_still_reaches_the_others() {
    let Some(redis) = redis_or_skip().await else {
        return;
    };
    let mock = MockId6::start().await.unwrap();
    let prefix = format!("id6-test-last-{}:", std::process::id());
    let (a, b) = (
        instance(&mock, &redis, &prefix).await,
        instance(&mock, &redis, &prefix).await,
    );
    redis.until_subscribed(2).await;
    let alice = mock.add_user("Alice", "a@example.com");
    let token = UserToken::new(&mock.token_for(alice)).unwrap();
    let mut headers = http::HeaderMap::new();
    headers.insert(
        "cookie",
        format!("auth={}", token.expose()).parse().unwrap(),
    );
    assert!(a.authenticate(&headers).await.user().is_some());
    assert!(b.authenticate(&headers).await.user().is_some());
    let before = b.stats().evictions;
    a.invalidate_token(&token);
    drop(a);
    until_evicted(&b, before, "an eviction of a handle dropped at once").await;
}

/// An eviction Redis refuses for good (a writer left a string where the user's set was:
/// `WRONGTYPE`) neither blocks the evictions after it nor is lost: every instance is told at
/// once, and the eviction becomes a clear.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_eviction_redis_refuses_is_told_and_blocks_nothing() {
    let Some(redis) = redis_or_skip().await else {
        return;
    };
    let mock = MockId6::start().await.unwrap();
    let prefix = format!("id6-test-refused-{}:", std::process::id());
    let apps = apps(&mock, &redis, &prefix, 2).await;
    let (alice, bob) = (
        mock.add_user("Alice", "a@example.com"),
        mock.add_user("Bob", "b@example.com"),
    );
    let (alice_token, bob_token) = (mock.token_for(alice), mock.token_for(bob));
    for app in &apps {
        assert_eq!(app.get("/", &alice_token).await.1, "Hello, Alice!");
        assert_eq!(app.get("/", &bob_token).await.1, "Hello, Bob!");
    }
    redis.set(&format!("{prefix}{{u:{alice}}}set"), b"not a set", 60_000);

    let before = apps[1].id6.stats().evictions;
    apps[0].id6.invalidate_user(alice);
    until_evicted(&apps[1].id6, before, "a refused revocation").await;
    // Alice's shared entry went with the clear: B asks id6 again.
    let calls = mock.user_calls_for(&alice_token);
    assert_eq!(apps[1].get("/", &alice_token).await.1, "Hello, Alice!");
    assert_eq!(
        mock.user_calls_for(&alice_token),
        calls + 1,
        "served from Redis"
    );

    // The queue goes on: Bob's disconnect reaches B.
    apps[0]
        .id6
        .disconnect(&UserToken::new(&bob_token).unwrap())
        .await
        .unwrap();
    apps[1]
        .until_refused(
            &bob_token,
            Instant::now(),
            "an eviction after a refused one was held",
        )
        .await;
    assert_eq!(
        apps[0].id6.shared_health(),
        id6_tower::SharedHealth::Up {
            topology: id6_tower::Topology::Single
        },
        "a refusal is no outage"
    );
}

/// A Redis writer who copied a token's own sealed entry cannot put it back for good after a
/// revocation: without an expiry, or with more left than its lifetime, it is refused (a
/// miss, counted); id6 is asked and says the token is revoked.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replayed_entry_does_not_revive_a_revoked_token() {
    let Some(redis) = redis_or_skip().await else {
        return;
    };
    let mock = MockId6::start().await.unwrap();
    let prefix = format!("id6-test-replay-{}:", std::process::id());
    let apps = apps(&mock, &redis, &prefix, 2).await;
    let alice = mock.add_user("Alice", "a@example.com");
    let token = mock.token_for(alice);
    assert_eq!(apps[0].get("/", &token).await.1, "Hello, Alice!");
    let entry = entry_of(&prefix, &token);
    let copied = redis.get(&entry);
    assert!(!copied.is_empty(), "A shared its answer");
    apps[0]
        .id6
        .disconnect(&UserToken::new(&token).unwrap())
        .await
        .unwrap();
    apps[1]
        .until_refused(&token, Instant::now(), "never refused")
        .await;

    // Put back without an expiry, then with ten times its lifetime left: a fresh instance
    // (nothing local) refuses each, and asks id6.
    use std::io::BufRead;
    let mut reply = String::new();
    redis
        .send(&[b"SET", entry.as_bytes(), &copied])
        .read_line(&mut reply)
        .unwrap();
    assert_eq!(reply.trim(), "+OK");
    let fresh = instance(&mock, &redis, &prefix).await;
    let mut headers = http::HeaderMap::new();
    headers.insert("cookie", format!("auth={token}").parse().unwrap());
    assert!(
        fresh.authenticate(&headers).await.user().is_none(),
        "replayed without expiry"
    );
    redis.set(&entry, &copied, 600_000);
    let other = instance(&mock, &redis, &prefix).await;
    assert!(
        other.authenticate(&headers).await.user().is_none(),
        "replayed with a long expiry"
    );
    assert_eq!(
        (fresh.stats().redis_unopened, other.stats().redis_unopened),
        (1, 1)
    );
}

/// A replayed entry is taken only until its sealed expiry (plus the clocks' allowance), and
/// so must its local copy be: a Redis writer who copied a token's sealed entry puts it back
/// just before that bound with its whole lifetime left (`PX` = the TTL, an age of zero by
/// Redis's clock); the instance that reads it must not keep serving the revoked token past
/// the bound for another whole TTL from its own cache.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replayed_entry_is_not_served_past_its_sealed_expiry() {
    let Some(redis) = redis_or_skip().await else {
        return;
    };
    let mock = MockId6::start().await.unwrap();
    let prefix = format!("id6-test-replay-late-{}:", std::process::id());
    let ttl = Duration::from_secs(4);
    let instance = || {
        Id6::builder(mock.url())
            .redis(redis.url())
            .redis_prefix(&prefix)
            .redis_timeout(Duration::from_millis(500))
            .timeout(Duration::from_secs(2))
            .cache_ttl(ttl)
            .refresh_after(None::<Duration>)
            .build()
            .unwrap()
    };
    let a = instance();
    let alice = mock.add_user("Alice", "a@example.com");
    let token = mock.token_issued_at(alice, common::now_ms() - 10);
    let mut headers = http::HeaderMap::new();
    headers.insert("cookie", format!("auth={token}").parse().unwrap());

    // A shares its answer; its sealed expiry is at most a TTL after A answered.
    assert!(a.authenticate(&headers).await.user().is_some());
    let answered = Instant::now();
    let entry = entry_of(&prefix, &token);
    let copied = redis.get(&entry);
    assert!(!copied.is_empty(), "A shared its answer");
    a.disconnect(&UserToken::new(&token).unwrap())
        .await
        .unwrap();

    // Put back late (7 s into the 10 s allowed for the instances' clocks: room for a slow
    // machine), with its whole lifetime left: a fresh instance takes it, as the README says
    // it may. Served for a whole TTL from there, it would outlive the bound by a second.
    let sealed_expiry = answered + ttl;
    tokio::time::sleep_until((sealed_expiry + Duration::from_millis(7_000)).into()).await;
    redis.set(&entry, &copied, ttl.as_millis() as u64);
    let fresh = instance();
    // Subscribed before it caches anything (a late first subscription clears the cache).
    redis.until_subscribed(2).await;
    assert!(
        fresh.authenticate(&headers).await.user().is_some(),
        "the replay was not taken at all (a slow machine?): nothing to check"
    );

    // Past the bound (sealed expiry + 10 s), the revoked token is served no more.
    tokio::time::sleep_until((sealed_expiry + Duration::from_millis(10_300)).into()).await;
    assert!(
        fresh.authenticate(&headers).await.user().is_none(),
        "a replayed entry's local copy served a revoked token past its sealed expiry \
         (and the clocks' allowance): {:?}",
        fresh.stats()
    );
}

/// A revocation finds a user's shared entries through the user's set, which must live as
/// long as every entry it names. A slow load that began before a quick one but stores after
/// it used to cut the set's expiry to its own (shorter) one: once the set expired, a
/// revocation found nothing to delete, and the quick load's entry went on naming the
/// revoked user to every instance until it expired.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_store_does_not_hide_a_users_entries_from_a_revocation() {
    let Some(redis) = redis_or_skip().await else {
        return;
    };
    let mock = MockId6::start().await.unwrap();
    let prefix = format!("id6-test-set-{}:", std::process::id());
    let ttl = Duration::from_secs(4);
    let held_for = Duration::from_secs(2);
    let builder = || {
        Id6::builder(mock.url())
            .redis(redis.url())
            .redis_prefix(&prefix)
            .redis_timeout(Duration::from_millis(500))
            .timeout(Duration::from_secs(5))
            .cache_ttl(ttl)
            .refresh_after(None::<Duration>)
    };
    // S asks `GET /user` (which the mock can hold); F asks `/authorize` (never held).
    let slow = App::serving(builder().build().unwrap()).await;
    let fast = builder()
        .authorization(mock.authorization_url(), mock.authorization_secret())
        .build()
        .unwrap();
    redis.until_subscribed(2).await;
    let alice = mock.add_user("Alice", "a@example.com");
    let issued = common::now_ms() - 10;
    let (laptop, phone) = (
        mock.token_issued_at(alice, issued),
        mock.token_issued_at(alice, issued - 1),
    );
    let headers = |token: &str| {
        let mut headers = http::HeaderMap::new();
        headers.insert("cookie", format!("auth={token}").parse().unwrap());
        headers
    };

    // S's load of the phone begins, and is held; F shares the laptop meanwhile, later.
    let mut loads_began = None;
    let during = async {
        loads_began = Some(Instant::now());
        tokio::time::sleep(held_for).await;
        assert!(fast.authenticate(&headers(&laptop)).await.user().is_some());
        assert!(
            !redis.get(&entry_of(&prefix, &laptop)).is_empty(),
            "F shared the laptop"
        );
    };
    assert_eq!(
        common::while_held(&mock, &slow.base, &phone, during).await,
        "Hello, Alice!"
    );
    let loads_began = loads_began.unwrap();

    // Past the phone's entry's expiry (a TTL after its load began), within the laptop's.
    tokio::time::sleep_until((loads_began + ttl + Duration::from_millis(300)).into()).await;
    fast.disconnect(&UserToken::new(&laptop).unwrap())
        .await
        .unwrap();
    let fresh = builder().build().unwrap();
    assert!(
        fresh.authenticate(&headers(&laptop)).await.user().is_none(),
        "a revocation left the laptop's shared entry: served to an instance that never saw \
         it ({:?})",
        fresh.stats()
    );
}

/// A profile update evicts the user here, then in Redis: a request on the same instance in
/// between misses, reads the old shared entry back from Redis and keeps it, under a
/// generation the local eviction no longer protects. Once `update_profile` returned, that
/// instance kept serving the old name (found by the isolation probe; before the fix, the
/// old name came back in most rounds).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_profile_update_is_not_undone_by_the_old_shared_entry() {
    use id6_tower::Profile;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;
    use tower::ServiceExt;
    let Some(redis) = redis_or_skip().await else {
        return;
    };
    let mock = MockId6::start().await.unwrap();
    let prefix = format!("id6-test-update-{}:", std::process::id());
    let id6 = instance(&mock, &redis, &prefix).await;
    redis.until_subscribed(1).await;
    let app = common::app(&id6);
    let alice = mock.add_user("Alice0", "a@example.com");
    let token = mock.token_issued_at(alice, common::now_ms() - 10);
    let get = |app: axum::Router, token: String| async move {
        let request = http::Request::get("/")
            .header("cookie", format!("auth={token}"))
            .body(axum::body::Body::empty())
            .unwrap();
        let response = app.oneshot(request).await.unwrap();
        let body = axum::body::to_bytes(response.into_body(), 256)
            .await
            .unwrap();
        String::from_utf8(body.to_vec()).unwrap()
    };
    let mut stale_rounds = Vec::new();
    for round in 1..=12 {
        // The current name, asked of id6 and shared in Redis.
        assert_eq!(
            get(app.clone(), token.clone()).await,
            format!("Hello, Alice{}!", round - 1)
        );
        let stop = Arc::new(AtomicBool::new(false));
        let requests = tokio::spawn({
            let (app, token, stop) = (app.clone(), token.clone(), stop.clone());
            async move {
                while !stop.load(Ordering::Relaxed) {
                    get(app.clone(), token.clone()).await;
                    // A hit resolves at once: leave the runtime's other tasks their turn.
                    tokio::task::yield_now().await;
                }
            }
        });
        let name = format!("Alice{round}");
        id6.update_profile(&UserToken::new(&token).unwrap(), &Profile::new(&name))
            .await
            .unwrap();
        stop.store(true, Ordering::Relaxed);
        requests.await.unwrap();
        // Begun after the update returned: the new name, or the update was undone.
        if get(app.clone(), token.clone()).await != format!("Hello, {name}!") {
            stale_rounds.push(round);
        }
        // The next round starts from id6's word, shared once the update's mark in Redis is
        // older than a store's allowance (the Redis timeout, 100 ms).
        id6.invalidate_user(alice);
        tokio::time::sleep(Duration::from_millis(150)).await;
    }
    assert!(
        stale_rounds.is_empty(),
        "the old name served after update_profile returned, in rounds {stale_rounds:?}"
    );
}
