//! Redis over TLS (rustls) and as an ACL user: instances share answers and evictions through
//! a `rediss://` Redis, mutual TLS, a certificate that does not verify is an outage and never
//! plain text, bad files are refused at build, and a user's password shows nowhere.
//!
//! Each test starts its own redis-server (Debian's 7.0 speaks TLS) on two free loopback ports:
//! TLS for the instances, plain text for the test's own admin commands (`CLIENT LIST`,
//! `ACL SETUSER`, `DBSIZE`). The certificates are made here (rcgen).

#[path = "../../tests/common/mod.rs"]
mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use http::HeaderMap;
use id6_tower::testing::MockId6;
use id6_tower::{Authentication, Id6, Id6Builder, SharedHealth, UserToken};

/// A CA, a server certificate for 127.0.0.1 and a client certificate it signed, and another
/// CA that signed nothing here: PEM files in a folder of the test's own, removed with it.
struct Pki {
    dir: PathBuf,
}

impl Pki {
    fn new(name: &str) -> Pki {
        use rcgen::{
            BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer,
            KeyPair, KeyUsagePurpose,
        };
        let dir = std::env::temp_dir().join(format!("id6-redis-tls-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let write = |file: &str, pem: String| std::fs::write(dir.join(file), pem).unwrap();
        let ca = |name: &str| {
            let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
            params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
            params.distinguished_name.push(DnType::CommonName, name);
            params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
            let key = KeyPair::generate().unwrap();
            let cert = params.self_signed(&key).unwrap();
            (cert.pem(), Issuer::new(params, key))
        };
        let (ca_pem, issuer) = ca("id6-tower test CA");
        write("ca.pem", ca_pem);
        write("other-ca.pem", ca("a CA that signed nothing here").0);
        let leaf = |name: &str, usage: ExtendedKeyUsagePurpose, file: &str| {
            let mut params = CertificateParams::new(vec![name.to_owned()]).unwrap();
            params.extended_key_usages = vec![usage];
            let key = KeyPair::generate().unwrap();
            let cert = params.signed_by(&key, &issuer).unwrap();
            write(&format!("{file}.pem"), cert.pem());
            write(&format!("{file}.key"), key.serialize_pem());
        };
        leaf("127.0.0.1", ExtendedKeyUsagePurpose::ServerAuth, "server");
        leaf("id6-app", ExtendedKeyUsagePurpose::ClientAuth, "client");
        Pki { dir }
    }

    fn path(&self, file: &str) -> PathBuf {
        self.dir.join(file)
    }
}

impl Drop for Pki {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A redis-server of the test's own: TLS on one free port, plain text on another (for the
/// test's admin commands, and to show that `rediss://` never speaks plain text to it).
struct Redis {
    tls: u16,
    plain: u16,
    /// The `default` user's password, when the test set one.
    admin_password: Option<&'static str>,
    process: Child,
    /// This test's turn (see [`ONE_AT_A_TIME`]), given back after the server stops (held by
    /// one server of a test that starts several).
    _turn: Option<tokio::sync::MutexGuard<'static, ()>>,
}

/// Held by each test that starts a server, for its whole run: on two shared cores, parallel
/// servers and instances could turn a shared answer into an id6 call by a timeout.
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// A redis-server speaking TLS with `pki`'s server certificate (and `args`), once it is this
/// test's turn; `None`, said loudly (and a failure under CI), without redis-server.
async fn redis_or_skip(
    pki: &Pki,
    args: &[&str],
    admin_password: Option<&'static str>,
) -> Option<Redis> {
    let turn = ONE_AT_A_TIME.lock().await;
    let mut redis = start_redis(pki, args, admin_password)?;
    redis._turn = Some(turn);
    Some(redis)
}

/// A redis-server speaking TLS with `pki`'s server certificate (and `args`), without taking
/// a turn; `None`, said loudly (and a failure under CI), without redis-server.
fn start_redis(pki: &Pki, args: &[&str], admin_password: Option<&'static str>) -> Option<Redis> {
    let binary = ["/usr/bin/redis-server", "/usr/local/bin/redis-server"]
        .into_iter()
        .find(|p| Path::new(p).exists());
    let Some(binary) = binary else {
        let message = "SKIPPED: redis TLS test: install redis-server (apt-get install redis-server); .ci/run does";
        if std::env::var_os("CI").is_some() {
            panic!("{message}");
        }
        // Straight to stderr: the test harness captures `eprintln!` of passing tests.
        let _ = writeln!(std::io::stderr(), "{message}");
        return None;
    };
    let (tls, plain) = {
        let a = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let b = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        (
            a.local_addr().unwrap().port(),
            b.local_addr().unwrap().port(),
        )
    };
    let file = |name: &str| pki.path(name).to_str().unwrap().to_owned();
    let mut command = Command::new(binary);
    command.args([
        "--port",
        &plain.to_string(),
        "--tls-port",
        &tls.to_string(),
        "--bind",
        "127.0.0.1",
        "--save",
        "",
        "--appendonly",
        "no",
        "--tls-cert-file",
        &file("server.pem"),
        "--tls-key-file",
        &file("server.key"),
        "--tls-ca-cert-file",
        &file("ca.pem"),
        // What Redis writes goes with the test's folder, never its working directory (a
        // cluster node's own `--dir`, among `args`, comes later and wins).
        "--dir",
        pki.dir.to_str().unwrap(),
    ]);
    if let Some(password) = admin_password {
        command.args(["--requirepass", password]);
    }
    let process = command
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("redis-server starts");
    let redis = Redis {
        tls,
        plain,
        admin_password,
        process,
        _turn: None,
    };
    // Ready when both ports accept connections: bounded retries.
    for _ in 0..250 {
        if TcpStream::connect(("127.0.0.1", tls)).is_ok()
            && TcpStream::connect(("127.0.0.1", plain)).is_ok()
        {
            return Some(redis);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    panic!("redis-server did not listen within 5 s (built without TLS?)");
}

impl Redis {
    /// `rediss://[userinfo@]127.0.0.1:<TLS port>`.
    fn tls_url(&self, userinfo: &str) -> String {
        format!("rediss://{userinfo}127.0.0.1:{}", self.tls)
    }

    /// `redis://[userinfo@]127.0.0.1:<plain port>`.
    fn plain_url(&self, userinfo: &str) -> String {
        format!("redis://{userinfo}127.0.0.1:{}", self.plain)
    }

    /// One admin command over the plain port (as `default`, with its password if set); its
    /// reply as text: a status, an error, an integer or a bulk string.
    fn command(&self, args: &[&str]) -> String {
        let mut stream = TcpStream::connect(("127.0.0.1", self.plain)).unwrap();
        let mut commands = Vec::new();
        let mut encode = |args: &[&str]| {
            commands.extend(format!("*{}\r\n", args.len()).into_bytes());
            for arg in args {
                commands.extend(format!("${}\r\n{arg}\r\n", arg.len()).into_bytes());
            }
        };
        if let Some(password) = self.admin_password {
            encode(&["AUTH", password]);
        }
        encode(args);
        stream.write_all(&commands).unwrap();
        let mut reader = BufReader::new(stream);
        if self.admin_password.is_some() {
            assert_eq!(reply(&mut reader), "+OK", "the admin's AUTH");
        }
        reply(&mut reader)
    }

    /// `CLIENT LIST`: one line per connection but the asking one.
    fn clients(&self) -> Vec<String> {
        self.command(&["CLIENT", "LIST"])
            .lines()
            .filter(|line| !line.contains("cmd=client|list"))
            .map(str::to_owned)
            .collect()
    }

    /// Waits until `n` connections on the TLS port are subscribed (each instance's listener).
    async fn until_subscribed_over_tls(&self, n: usize) {
        let deadline = Instant::now() + Duration::from_secs(10);
        let tls = format!(" laddr=127.0.0.1:{} ", self.tls);
        while self
            .clients()
            .iter()
            .filter(|c| c.contains(" sub=1") && c.contains(&tls))
            .count()
            < n
        {
            assert!(
                Instant::now() < deadline,
                "{n} subscribers never listened over TLS"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// How many keys Redis holds.
    fn keys(&self) -> usize {
        let reply = self.command(&["DBSIZE"]);
        reply
            .strip_prefix(':')
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("DBSIZE answered {reply}"))
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        let _ = self.process.kill();
        let _ = self.process.wait();
    }
}

/// One RESP reply, as text.
fn reply(reader: &mut BufReader<TcpStream>) -> String {
    let mut line = String::new();
    reader.read_line(&mut line).unwrap();
    let line = line.trim_end().to_owned();
    match line
        .strip_prefix('$')
        .and_then(|len| len.parse::<usize>().ok())
    {
        Some(len) => {
            let mut body = vec![0; len + 2];
            reader.read_exact(&mut body).unwrap();
            String::from_utf8_lossy(&body[..len]).into_owned()
        }
        None => line,
    }
}

/// An instance's builder: this Redis URL and prefix, a Redis timeout generous enough for a
/// TLS handshake on two busy cores (no figure here depends on it).
fn builder(mock: &MockId6, url: &str, prefix: &str) -> Id6Builder {
    Id6::builder(mock.url())
        .redis(url)
        .redis_prefix(prefix)
        .redis_timeout(Duration::from_secs(1))
        .timeout(Duration::from_secs(2))
}

/// One instance of the app, with its own id6 handle (own moka cache), on its own port.
struct App {
    id6: Id6,
    base: String,
    http: reqwest::Client,
}

impl App {
    async fn new(id6: Id6) -> App {
        App {
            base: common::serve(common::app(&id6)).await,
            id6,
            http: common::http_client(),
        }
    }

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

    /// Polls `/me` with `token` until it is refused (a hang guard of 10 s, not a timing claim:
    /// the TTL is a minute, so a refusal here came by broadcast).
    async fn until_refused(&self, token: &str, why: &str) -> Duration {
        let since = Instant::now();
        while self.get("/me", token).await.0 != 401 {
            assert!(since.elapsed() < Duration::from_secs(10), "{why}");
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        since.elapsed()
    }
}

/// Polls until `id6` counted more evictions than `before` (a broadcast arrived).
async fn until_evicted(id6: &Id6, before: u64, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while id6.stats().evictions <= before {
        assert!(
            Instant::now() < deadline,
            "{what} never reached the other instance"
        );
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

/// Each instance opens its Redis connection on its first miss: open them now, so that a
/// test's first shared lookup is not also a TLS handshake racing the Redis timeout.
async fn warm_up(mock: &MockId6, apps: &[&App]) {
    let token = mock.token_for(mock.add_user("Warm-up", "warm-up@example.com"));
    for app in apps {
        assert_eq!(app.get("/", &token).await.1, "Hello, Warm-up!");
    }
}

/// Alice is asked of id6 once, by `first`; every other instance finds her in Redis.
async fn shared_once(mock: &MockId6, first: &App, others: &[&App]) -> String {
    let alice = mock.add_user("Alice", "a@example.com");
    let token = mock.token_issued_at(alice, common::now_ms() - 10);
    assert_eq!(first.get("/", &token).await.1, "Hello, Alice!");
    for app in others {
        for _ in 0..10 {
            assert_eq!(app.get("/", &token).await.1, "Hello, Alice!");
        }
    }
    assert_eq!(
        mock.user_calls_for(&token),
        1,
        "the other instances found the answer in Redis"
    );
    for app in std::iter::once(first).chain(others.iter().copied()) {
        let health = app.id6.shared_health();
        assert!(matches!(health, SharedHealth::Up { .. }), "{health:?}");
    }
    token
}

/// An instance that cannot use Redis serves every request through id6, counting the outage.
async fn served_without_redis(mock: &MockId6, app: &App, what: &str) {
    let bob = mock.add_user("Bob", "b@example.com");
    let token = mock.token_for(bob);
    for _ in 0..3 {
        assert_eq!(app.get("/", &token).await.1, "Hello, Bob!", "{what}");
    }
    assert!(mock.user_calls_for(&token) >= 1, "{what}: id6 answered");
    assert!(
        app.id6.stats().redis_errors > 0,
        "{what}: the outage was not counted"
    );
    let health = app.id6.shared_health();
    assert!(
        matches!(health, SharedHealth::Down { .. }),
        "{what}: {health:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_instances_share_answers_and_evictions_over_tls() {
    let pki = Pki::new("share");
    let Some(redis) = redis_or_skip(&pki, &["--tls-auth-clients", "no"], None).await else {
        return;
    };
    let mock = MockId6::start().await.unwrap();
    let instance = || {
        builder(&mock, &redis.tls_url(""), "id6-tls:")
            .redis_ca_file(pki.path("ca.pem"))
            .build()
            .unwrap()
    };
    let (a, b) = (App::new(instance()).await, App::new(instance()).await);
    redis.until_subscribed_over_tls(2).await;
    warm_up(&mock, &[&a, &b]).await;
    let token = shared_once(&mock, &a, &[&b]).await;
    // Every connection the instances opened is on the TLS port.
    let clients = redis.clients();
    let tls = format!(" laddr=127.0.0.1:{} ", redis.tls);
    assert!(clients.len() >= 4, "{clients:#?}");
    assert!(clients.iter().all(|c| c.contains(&tls)), "{clients:#?}");
    assert_eq!(a.id6.stats().redis_errors + b.id6.stats().redis_errors, 0);

    // A sign-out on A reaches B: B evicts and asks id6 again.
    let before = b.id6.stats();
    a.id6
        .sign_out(&UserToken::new(&token).unwrap())
        .await
        .unwrap();
    until_evicted(&b.id6, before.evictions, "sign_out").await;
    assert_eq!(b.get("/", &token).await.1, "Hello, Alice!");
    assert_eq!(
        b.id6.stats().misses,
        before.misses + 1,
        "served from a stale entry"
    );

    // A disconnect on A: B refuses the token.
    a.id6
        .disconnect(&UserToken::new(&token).unwrap())
        .await
        .unwrap();
    let took = b.until_refused(&token, "B never refused").await;
    println!("over TLS, a disconnect on A was refused on B after {took:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mutual_tls_needs_the_client_certificate() {
    let pki = Pki::new("mtls");
    let Some(redis) = redis_or_skip(&pki, &["--tls-auth-clients", "yes"], None).await else {
        return;
    };
    let mock = MockId6::start().await.unwrap();
    let with_certificate = || {
        builder(&mock, &redis.tls_url(""), "id6-mtls:")
            .redis_ca_file(pki.path("ca.pem"))
            .redis_client_cert(pki.path("client.pem"), pki.path("client.key"))
            .build()
            .unwrap()
    };
    let (a, b) = (
        App::new(with_certificate()).await,
        App::new(with_certificate()).await,
    );
    redis.until_subscribed_over_tls(2).await;
    warm_up(&mock, &[&a, &b]).await;
    shared_once(&mock, &a, &[&b]).await;
    assert_eq!(a.id6.stats().redis_errors + b.id6.stats().redis_errors, 0);

    let without = builder(&mock, &redis.tls_url(""), "id6-mtls:")
        .redis_ca_file(pki.path("ca.pem"))
        .build()
        .unwrap();
    let logged_before = captured().lock().unwrap().len();
    served_without_redis(&mock, &App::new(without).await, "no client certificate").await;
    assert_eq!(outages_logged_since(logged_before).len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_certificate_that_does_not_verify_is_an_outage_never_plain_text() {
    let logs = captured();
    let pki = Pki::new("verify");
    let Some(redis) = redis_or_skip(&pki, &["--tls-auth-clients", "no"], None).await else {
        return;
    };
    let mock = MockId6::start().await.unwrap();
    let cases = [
        // Redis's certificate chains to a CA other than the one given.
        builder(&mock, &redis.tls_url(""), "id6-verify:").redis_ca_file(pki.path("other-ca.pem")),
        // No CA given: the public roots, which do not know a private CA.
        builder(&mock, &redis.tls_url(""), "id6-verify:"),
        // `rediss://` at a plain-text port: TLS or nothing.
        builder(
            &mock,
            &redis.plain_url("").replace("redis://", "rediss://"),
            "id6-verify:",
        )
        .redis_ca_file(pki.path("ca.pem")),
    ];
    let what = ["another CA", "the public roots", "a plain-text port"];
    let logged_before = logs.lock().unwrap().len();
    for (builder, what) in cases.into_iter().zip(what) {
        let app = App::new(builder.build().unwrap()).await;
        served_without_redis(&mock, &app, what).await;
    }
    assert_eq!(redis.keys(), 0, "nothing reached Redis");
    // Logged once per instance, however many requests met the outage.
    assert_eq!(outages_logged_since(logged_before).len(), 3);
}

/// The outage warnings logged since `offset` into the captured logs (printed: their reasons
/// are what an operator reads).
fn outages_logged_since(offset: usize) -> Vec<String> {
    let logs = captured().lock().unwrap();
    let warnings: Vec<String> = String::from_utf8_lossy(&logs[offset..])
        .lines()
        .filter(|line| line.contains("redis unavailable"))
        .map(str::to_owned)
        .collect();
    for line in &warnings {
        println!("{line}");
    }
    warnings
}

/// Everything any test in this file logs, at every level (installed by the first caller).
fn captured() -> &'static Arc<Mutex<Vec<u8>>> {
    static LOGS: OnceLock<Arc<Mutex<Vec<u8>>>> = OnceLock::new();
    LOGS.get_or_init(|| {
        let logs = Arc::new(Mutex::new(Vec::new()));
        let sink = logs.clone();
        tracing_subscriber::fmt()
            .with_max_level(tracing_subscriber::filter::LevelFilter::TRACE)
            .with_ansi(false)
            .with_writer(move || Sink(sink.clone()))
            .try_init()
            .unwrap();
        logs
    })
}

struct Sink(Arc<Mutex<Vec<u8>>>);

impl Write for Sink {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_acl_user_logs_in_and_its_password_shows_nowhere() {
    const PASSWORD: &str = "S3cret-acl-pw";
    const WRONG: &str = "Wr0ng-acl-pw";
    let logs = captured();
    let pki = Pki::new("acl");
    let Some(redis) = redis_or_skip(&pki, &["--tls-auth-clients", "no"], Some("admin-pw")).await
    else {
        return;
    };
    // A user that may touch only its prefix's keys and channel.
    let created = redis.command(&[
        "ACL",
        "SETUSER",
        "app",
        "on",
        &format!(">{PASSWORD}"),
        "~id6-acl:*",
        "&id6-acl:*",
        "+@all",
    ]);
    assert_eq!(created, "+OK");
    let mock = MockId6::start().await.unwrap();
    let userinfo = format!("app:{PASSWORD}@");
    // One instance over TLS, one over plain text: both authenticate as `app`.
    let over_tls =
        builder(&mock, &redis.tls_url(&userinfo), "id6-acl:").redis_ca_file(pki.path("ca.pem"));
    let shown = format!("{over_tls:?}");
    let a = App::new(over_tls.build().unwrap()).await;
    let b = App::new(
        builder(&mock, &redis.plain_url(&userinfo), "id6-acl:")
            .build()
            .unwrap(),
    )
    .await;
    warm_up(&mock, &[&a, &b]).await;
    shared_once(&mock, &a, &[&b]).await;
    assert_eq!(a.id6.stats().redis_errors + b.id6.stats().redis_errors, 0);
    let clients = redis.clients();
    assert!(clients.len() >= 4, "{clients:#?}");
    assert!(
        clients.iter().all(|c| c.contains(" user=app ")),
        "every connection is the ACL user's: {clients:#?}"
    );

    // A wrong password: an outage, and requests are served by id6.
    let wrong = App::new(
        builder(&mock, &redis.tls_url(&format!("app:{WRONG}@")), "id6-acl:")
            .redis_ca_file(pki.path("ca.pem"))
            .build()
            .unwrap(),
    )
    .await;
    let logged_before = logs.lock().unwrap().len();
    served_without_redis(&mock, &wrong, "a wrong password").await;
    assert_eq!(outages_logged_since(logged_before).len(), 1);

    // Neither password shows in Debug, in an error, or in a log line (the outage was logged).
    let shown = format!("{shown} {:?} {:?} {:?}", a.id6, b.id6, wrong.id6);
    let refused = [
        format!("rediss://app:{PASSWORD}@127.0.0.1:notaport"),
        format!("rediss://app:{PASSWORD}@127.0.0.1:1#insecure"),
        format!("rediss://app:{PASSWORD}@127.0.0.1:1#{PASSWORD}"),
        format!("redis://app:{PASSWORD}@"),
    ]
    .map(|url| {
        let err = builder(&mock, &url, "id6-acl:").build().unwrap_err();
        assert_eq!(err.variable(), Some("ID6_REDIS_URL"), "{err}");
        format!("{err} {err:?}")
    });
    let logged = String::from_utf8_lossy(&logs.lock().unwrap()).into_owned();
    for (what, text) in [
        ("Debug", &shown),
        ("logs", &logged),
        ("errors", &refused.join(" ")),
    ] {
        for secret in [PASSWORD, WRONG] {
            assert!(
                !text.contains(secret),
                "a password leaked into {what}: {text}"
            );
        }
    }
}

#[test]
fn bad_tls_files_are_refused_at_build_naming_the_variable() {
    let pki = Pki::new("files");
    std::fs::write(pki.path("notes.txt"), "not a certificate\n").unwrap();
    let tls = || Id6::builder("http://127.0.0.1:9/api").redis("rediss://127.0.0.1:9");
    let key_body: String = std::fs::read_to_string(pki.path("client.key"))
        .unwrap()
        .lines()
        .filter(|line| !line.starts_with("-----"))
        .collect();
    let cases = [
        (
            tls().redis_ca_file(pki.path("notes.txt")),
            "ID6_REDIS_CA_FILE",
        ),
        (
            tls().redis_ca_file(pki.path("client.key")),
            "ID6_REDIS_CA_FILE",
        ),
        (
            tls().redis_client_cert(pki.path("client.pem"), pki.path("server.key")),
            "ID6_REDIS_CLIENT_KEY",
        ),
        (
            tls().redis_client_cert(pki.path("client.pem"), pki.path("client.pem")),
            "ID6_REDIS_CLIENT_KEY",
        ),
        (
            tls().redis_client_cert(pki.path("client.key"), pki.path("client.key")),
            "ID6_REDIS_CLIENT_CERT",
        ),
        (
            Id6::builder("http://127.0.0.1:9/api").redis("rediss://127.0.0.1:9/#insecure"),
            "ID6_REDIS_URL",
        ),
    ];
    for (builder, var) in cases {
        let err = builder.build().unwrap_err();
        assert_eq!(err.variable(), Some(var), "{err}");
        let line = err.to_string();
        assert!(!line.contains('\n') && line.len() < 300, "{line}");
        assert!(!line.contains(&key_body[..16]), "the key leaked: {line}");
        println!("{line}");
    }
    // The good files build (nothing connects at build).
    tls()
        .redis_ca_file(pki.path("ca.pem"))
        .redis_client_cert(pki.path("client.pem"), pki.path("client.key"))
        .build()
        .unwrap();
}

/// A figure, not a test of speed: a local miss served from Redis over TLS against one over
/// plain text, on the same server in the same run (medians, interleaved rounds).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_miss_served_from_redis_over_tls_against_plain_text() {
    let pki = Pki::new("figure");
    let Some(redis) = redis_or_skip(&pki, &["--tls-auth-clients", "no"], None).await else {
        return;
    };
    let mock = MockId6::start().await.unwrap();
    let pair = |url: String| {
        let build = || {
            builder(&mock, &url, "id6-figure:")
                .redis_ca_file(pki.path("ca.pem"))
                .build()
                .unwrap()
        };
        (build(), build())
    };
    let tls = pair(redis.tls_url(""));
    let plain = {
        let build = || {
            builder(&mock, &redis.plain_url(""), "id6-figure:")
                .build()
                .unwrap()
        };
        (build(), build())
    };
    let alice = mock.add_user("Alice", "a@example.com");
    let headers = |token: &str| {
        let mut headers = HeaderMap::new();
        headers.insert("cookie", format!("auth={token}").parse().unwrap());
        headers
    };
    let mut issued = common::now_ms() - 100_000;
    let (mut over_tls, mut over_plain) = (Vec::new(), Vec::new());
    for round in 0..8 {
        let ((writer, reader), times) = if round % 2 == 0 {
            (&tls, &mut over_tls)
        } else {
            (&plain, &mut over_plain)
        };
        let tokens: Vec<String> = (0..50)
            .map(|_| {
                issued += 1;
                mock.token_issued_at(alice, issued)
            })
            .collect();
        for token in &tokens {
            assert!(matches!(
                writer.authenticate(&headers(token)).await,
                Authentication::Authenticated(_)
            ));
        }
        let calls = mock.user_calls();
        for token in &tokens {
            let started = Instant::now();
            let answer = reader.authenticate(&headers(token)).await;
            times.push(started.elapsed());
            assert!(matches!(answer, Authentication::Authenticated(_)));
        }
        assert_eq!(mock.user_calls(), calls, "every miss was served from Redis");
    }
    let median = |times: &mut Vec<Duration>| {
        times.sort();
        times[times.len() / 2]
    };
    let (tls_median, plain_median) = (median(&mut over_tls), median(&mut over_plain));
    println!(
        "a miss served from Redis: {tls_median:?} over TLS, {plain_median:?} over plain text \
         (median of {} each; ratio {:.2})",
        over_tls.len(),
        tls_median.as_secs_f64() / plain_median.as_secs_f64()
    );
}

/// A Sentinel of the test's own speaking TLS only, watching `master` over TLS as
/// `id6-tls`; ended with the test.
struct TlsSentinel {
    port: u16,
    process: Child,
}

impl TlsSentinel {
    fn start(pki: &Pki, master: &Redis) -> TlsSentinel {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let file = |name: &str| pki.path(name).to_str().unwrap().to_owned();
        let conf = pki.path("sentinel.conf");
        std::fs::write(
            &conf,
            format!(
                "port 0\ntls-port {port}\nbind 127.0.0.1\ntls-cert-file {}\ntls-key-file {}\n\
                 tls-ca-cert-file {}\ntls-auth-clients no\ntls-replication yes\n\
                 sentinel monitor id6-tls 127.0.0.1 {} 1\n",
                file("server.pem"),
                file("server.key"),
                file("ca.pem"),
                master.tls
            ),
        )
        .unwrap();
        let process = Command::new("redis-server")
            .arg(&conf)
            .arg("--sentinel")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server starts as a Sentinel");
        let sentinel = TlsSentinel { port, process };
        for _ in 0..250 {
            if TcpStream::connect(("127.0.0.1", port)).is_ok() {
                return sentinel;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!("the Sentinel did not listen within 5 s");
    }
}

impl Drop for TlsSentinel {
    fn drop(&mut self) {
        let _ = self.process.kill();
        let _ = self.process.wait();
    }
}

/// `rediss://` Sentinels: the instances ask a Sentinel over TLS for the master, reach the
/// master over TLS (verified against the CA file), share one answer and a sign-out.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sentinels_over_tls_name_a_master_reached_over_tls() {
    let pki = Pki::new("sentinel");
    let Some(redis) = redis_or_skip(&pki, &["--tls-auth-clients", "no"], None).await else {
        return;
    };
    let sentinel = TlsSentinel::start(&pki, &redis);
    let mock = MockId6::start().await.unwrap();
    let make = || {
        Id6::builder(mock.url())
            .redis_sentinels([format!("rediss://127.0.0.1:{}", sentinel.port)], "id6-tls")
            .redis_ca_file(pki.path("ca.pem"))
            .redis_prefix("id6-tls-sentinel:")
            .redis_timeout(Duration::from_secs(1))
            .timeout(Duration::from_secs(2))
            .build()
            .unwrap()
    };
    let (a, b) = (App::new(make()).await, App::new(make()).await);
    redis.until_subscribed_over_tls(2).await;
    warm_up(&mock, &[&a, &b]).await;
    let token = shared_once(&mock, &a, &[&b]).await;
    assert_eq!(
        a.id6.shared_health(),
        SharedHealth::Up {
            topology: id6_tower::Topology::Sentinel
        }
    );
    let before = b.id6.stats().evictions;
    a.id6
        .sign_out(&UserToken::new(&token).unwrap())
        .await
        .unwrap();
    until_evicted(&b.id6, before, "a sign-out over TLS Sentinels").await;
}

/// Three masters of a Redis Cluster speaking TLS to clients and to each other
/// (`tls-cluster`), made by `redis-cli --cluster create` over TLS.
struct TlsCluster {
    nodes: Vec<Redis>,
}

impl TlsCluster {
    async fn start(pki: &Pki) -> Option<TlsCluster> {
        let turn = ONE_AT_A_TIME.lock().await;
        let cli = ["/usr/bin/redis-cli", "/usr/local/bin/redis-cli"]
            .into_iter()
            .find(|p| Path::new(p).exists());
        let Some(cli) = cli else {
            assert!(
                std::env::var_os("CI").is_none(),
                "SKIPPED: redis TLS cluster test: install redis-tools"
            );
            return None;
        };
        let mut nodes = Vec::new();
        for i in 0..3 {
            let dir = pki.path(&format!("node-{i}"));
            std::fs::create_dir_all(&dir).unwrap();
            // The bus on a port of its own (Redis 7's `cluster-port`), not the TLS port +
            // 10 000, which a free ephemeral port may leave past 65 535.
            let bus = std::net::TcpListener::bind("127.0.0.1:0")
                .unwrap()
                .local_addr()
                .unwrap()
                .port()
                .to_string();
            // The bus is mutual TLS whatever `tls-auth-clients` says: a node connecting to
            // another shows a client certificate (the server's says ServerAuth only).
            let (cert, key) = (pki.path("client.pem"), pki.path("client.key"));
            let args = [
                "--tls-client-cert-file",
                cert.to_str().unwrap(),
                "--tls-client-key-file",
                key.to_str().unwrap(),
                "--tls-auth-clients",
                "no",
                "--tls-cluster",
                "yes",
                "--cluster-enabled",
                "yes",
                "--cluster-port",
                &bus,
                "--cluster-node-timeout",
                "2000",
                "--dir",
                dir.to_str().unwrap(),
            ];
            nodes.push(start_redis(pki, &args, None)?);
        }
        nodes[0]._turn = Some(turn);
        let mut create = Command::new(cli)
            .args(["--tls", "--cacert"])
            .arg(pki.path("ca.pem"))
            .args(["--cluster", "create"])
            .args(nodes.iter().map(|n| format!("127.0.0.1:{}", n.tls)))
            .arg("--cluster-yes")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-cli runs");
        // It waits for the nodes to meet over the bus: bounded, so that a bus that cannot
        // meet (a certificate it refuses) fails the test instead of hanging the suite.
        let deadline = Instant::now() + Duration::from_secs(30);
        let created = loop {
            if let Some(status) = create.try_wait().unwrap() {
                break status.success();
            }
            if Instant::now() > deadline {
                let _ = create.kill();
                break false;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        assert!(
            created,
            "redis-cli --cluster create over TLS failed or hung"
        );
        let cluster = TlsCluster { nodes };
        let deadline = Instant::now() + Duration::from_secs(20);
        while !cluster
            .nodes
            .iter()
            .all(|n| n.command(&["CLUSTER", "INFO"]).contains("cluster_state:ok"))
        {
            assert!(Instant::now() < deadline, "the TLS cluster never came up");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Some(cluster)
    }

    fn seeds(&self) -> Vec<String> {
        self.nodes.iter().map(|n| n.tls_url("")).collect()
    }

    /// `SET key value PX ms` on the master that owns `key`'s slot (the others answer MOVED).
    fn set(&self, key: &str, value: &str, ms: u64) {
        let ms = ms.to_string();
        assert!(
            self.nodes
                .iter()
                .any(|n| n.command(&["SET", key, value, "PX", &ms]) == "+OK"),
            "no master took {key}"
        );
    }
}

/// A Redis Cluster over TLS (`rediss://` seeds, the CA file): two instances share answers
/// (one id6 call each, entries on every master), every connection is on a TLS port, a
/// disconnect on A is refused on B by broadcast, and a store from a load that began before
/// a revocation is refused by the cluster itself.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_over_tls_shares_answers_and_evictions() {
    let pki = Pki::new("cluster");
    let Some(cluster) = TlsCluster::start(&pki).await else {
        return;
    };
    let mock = MockId6::start().await.unwrap();
    let prefix = "id6-tls-cluster:";
    let make = || {
        Id6::builder(mock.url())
            .redis_cluster(cluster.seeds())
            .redis_ca_file(pki.path("ca.pem"))
            .redis_prefix(prefix)
            .redis_timeout(Duration::from_secs(1))
            .timeout(Duration::from_secs(2))
            .build()
            .unwrap()
    };
    let (a, b) = (App::new(make()).await, App::new(make()).await);
    cluster.nodes[0].until_subscribed_over_tls(2).await;
    warm_up(&mock, &[&a, &b]).await;

    let mut shared = 0;
    let users = 30;
    for i in 0..users {
        let id = mock.add_user(&format!("User{i}"), &format!("u{i}@example.com"));
        let token = mock.token_for(id);
        for app in [&a, &b] {
            assert_eq!(app.get("/", &token).await.1, format!("Hello, User{i}!"));
        }
        if mock.user_calls_for(&token) == 1 {
            shared += 1;
        }
    }
    assert_eq!(shared, users, "an answer was not shared");
    let sizes: Vec<usize> = cluster.nodes.iter().map(Redis::keys).collect();
    assert!(
        sizes.iter().all(|n| *n > 0),
        "entries on some masters only: {sizes:?}"
    );
    assert_eq!(
        a.id6.shared_health(),
        SharedHealth::Up {
            topology: id6_tower::Topology::Cluster
        }
    );
    // Every connection the instances opened, on every node, is on its TLS port.
    for node in &cluster.nodes {
        let tls = format!(" laddr=127.0.0.1:{} ", node.tls);
        let clients = node.clients();
        assert!(
            !clients.is_empty() && clients.iter().all(|c| c.contains(&tls)),
            "{clients:#?}"
        );
    }

    // A disconnect on A: B refuses the token, by broadcast (the TTL is a minute).
    let alice = mock.add_user("Alice", "a@example.com");
    let token = mock.token_issued_at(alice, common::now_ms() - 10);
    for app in [&a, &b] {
        assert_eq!(app.get("/", &token).await.1, "Hello, Alice!");
    }
    a.id6
        .disconnect(&UserToken::new(&token).unwrap())
        .await
        .unwrap();
    let took = b.until_refused(&token, "B never refused").await;

    // A store from a load that began before a revocation (its mark written meanwhile, its
    // broadcast never sent) is refused by the master of the user's slot: B asks id6.
    let stale = mock.add_user("Stale", "stale@example.com");
    let token = mock.token_issued_at(stale, common::now_ms() - 3);
    // The mark's value is its own lifetime (ms), so its age is that less its PTTL: now.
    let revoked = async { cluster.set(&format!("{prefix}{{u:{stale}}}rev"), "60000", 60_000) };
    // A answers its request (id6 said so), then shares it: refused. Then B misses in Redis.
    assert_eq!(
        common::while_held(&mock, &a.base, &token, revoked).await,
        "Hello, Stale!"
    );
    assert_eq!(b.get("/", &token).await.1, "Hello, Stale!");
    assert_eq!(
        mock.user_calls_for(&token),
        2,
        "B was served A's answer, stored across a revocation made during its load"
    );
    println!(
        "cluster over TLS: {shared} of {users} tokens shared by two instances, keys per \
         master {sizes:?}; a disconnect on A refused on B after {took:?}"
    );
}
