//! id6-tower beside its peers: what each adds to one request over the same bare axum Router
//! (one static handler), all in one run.
//!
//! ```text
//! cargo bench -p id6-tower-peers          # criterion medians, then the tail, then the table
//! python3 peers/chart.py                  # target/peers.json -> docs/peers.svg
//! ```
//!
//! The cases, each with a credential it accepts:
//! - `bare`: the Router alone (with id6-tower's request, whose cookie it ignores);
//! - `id6-tower`: the layer over the `overhead` bench's id6 stand-in with a hot cookie (a
//!   cache hit), as that bench builds it (`id6.layer().layer(router)`, a browser's cookie
//!   header), and as an app builds the crate (without `testing`: see `bench/Cargo.toml`);
//! - `axum-login`: axum-login's `AuthManagerLayer` over tower-sessions' `MemoryStore`, a
//!   logged-in session cookie, a trivial in-memory `AuthnBackend`;
//! - `jwt-authorizer`: HS256 from a secret (no JWKS, no network), a valid bearer token;
//! - `tower-http-bearer`: tower-http's `ValidateRequestHeaderLayer::bearer`.
//!
//! Each request goes through `tower::ServiceExt::oneshot` on a one-worker tokio runtime, as in
//! the `overhead` bench. Before any timing, each case is shown to authenticate (its handler
//! sees the user, or the request gets through) and to refuse a request without credentials,
//! so that no case measures a refusal.
//!
//! Medians are criterion's. The tail comes from requests timed one by one (`Instant` around
//! one `oneshot`, as `bench/examples/hit_latency.rs` does), the cases interleaved in rounds:
//! `PEERS_ROUNDS` rounds (10) of `PEERS_REQUESTS` requests (50 000) per case, so that a burst
//! of load from elsewhere falls on every case alike; the quantiles are over all rounds. The
//! table at the end gives both, and `target/peers.json` holds them for `chart.py`.

use std::collections::HashMap;
use std::convert::Infallible;
use std::fmt::Debug;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use axum::body::Body;
use axum::extract::Extension;
use axum::routing::{get, post};
use axum::Router;
use axum_login::{AuthManagerLayerBuilder, AuthSession, AuthUser, AuthnBackend, UserId};
use criterion::{criterion_group, Criterion};
use http::{header, Request, Response, StatusCode};
use id6_tower::RequireUser;
use jsonwebtoken::TokenData;
use jwt_authorizer::layer::AuthorizationLayer;
use jwt_authorizer::{IntoLayer, JwtAuthorizer, RegisteredClaims};
use tower::{Layer, Service, ServiceExt};
use tower_http::validate_request::ValidateRequestHeaderLayer;
use tower_sessions::{MemoryStore, SessionManagerLayer};

/// A browser sends other cookies too (the same around id6's `auth` and axum-login's `id`).
// The `overhead` bench's id6 stand-in and one-worker runtime.
#[path = "../../bench/benches/support/mod.rs"]
mod support;

const BEFORE: &str = "_ga=GA1.1.123456789.1700000000; theme=dark";
const AFTER: &str = "lang=fr";

/// The one handler every case serves.
fn bare() -> Router {
    Router::new().route("/", get(|| async { "ok" }))
}

type Credential<'a> = Option<(header::HeaderName, &'a str)>;

fn request(credential: &Credential<'_>) -> Request<Body> {
    let mut builder = Request::get("/");
    if let Some((name, value)) = credential {
        builder = builder.header(name, *value);
    }
    builder.body(Body::empty()).unwrap()
}

async fn send<S>(service: &S, request: Request<Body>) -> (StatusCode, String)
where
    S: Service<Request<Body>, Response = Response<Body>> + Clone,
    S::Error: Debug,
{
    let response = service.clone().oneshot(request).await.unwrap();
    let status = response.status();
    let body = axum::body::to_bytes(response.into_body(), 1 << 16)
        .await
        .unwrap();
    (status, String::from_utf8_lossy(&body).into_owned())
}

// ---- axum-login: a trivial in-memory backend ----

#[derive(Clone, Debug)]
struct Member {
    id: u64,
    name: String,
    password_hash: Vec<u8>,
}

impl AuthUser for Member {
    type Id = u64;

    fn id(&self) -> u64 {
        self.id
    }

    fn session_auth_hash(&self) -> &[u8] {
        &self.password_hash
    }
}

#[derive(Clone)]
struct Members(Arc<HashMap<u64, Member>>);

struct SignIn(u64);

impl AuthnBackend for Members {
    type User = Member;
    type Credentials = SignIn;
    type Error = Infallible;

    async fn authenticate(&self, SignIn(id): SignIn) -> Result<Option<Member>, Infallible> {
        Ok(self.0.get(&id).cloned())
    }

    async fn get_user(&self, id: &UserId<Self>) -> Result<Option<Member>, Infallible> {
        Ok(self.0.get(id).cloned())
    }
}

// ---- jwt-authorizer (on axum 0.7): its refusal, as an axum 0.8 response ----

/// The inner Router's response, wrapped so that jwt-authorizer can build a refusal
/// (`S::Response: From<AuthError>`); unwrapped again outside. No allocation either way.
struct JwtResponse(Response<Body>);

impl From<jwt_authorizer::AuthError> for JwtResponse {
    fn from(_: jwt_authorizer::AuthError) -> Self {
        let mut response = Response::new(Body::empty());
        *response.status_mut() = StatusCode::UNAUTHORIZED;
        JwtResponse(response)
    }
}

/// `router` behind jwt-authorizer's layer, its responses wrapped and unwrapped around it.
fn jwt_wrap(
    layer: &AuthorizationLayer<RegisteredClaims>,
    router: Router,
) -> impl Service<Request<Body>, Response = Response<Body>, Error = Infallible> + Clone {
    let inner = ServiceExt::<Request<Body>>::map_response(router, JwtResponse);
    ServiceExt::<Request<Body>>::map_response(layer.layer(inner), |JwtResponse(response)| response)
}

#[derive(serde::Serialize)]
struct Claims {
    sub: String,
    iat: u64,
    exp: u64,
}

// ---- timing ----

const GROUP: &str = "peers";
const CASES: [&str; 5] = [
    "bare",
    "id6-tower",
    "axum-login",
    "jwt-authorizer",
    "tower-http-bearer",
];

fn bench_case<S>(
    c: &mut Criterion,
    rt: &tokio::runtime::Runtime,
    id: &str,
    service: &S,
    credential: &Credential<'_>,
) where
    S: Service<Request<Body>, Response = Response<Body>> + Clone,
    S::Error: Debug,
{
    let mut group = c.benchmark_group(GROUP);
    group.bench_function(id, |b| {
        b.to_async(rt)
            .iter(|| service.clone().oneshot(request(credential)))
    });
    group.finish();
}

/// `n` requests timed one by one, in nanoseconds.
async fn time_one_by_one<S>(service: &S, credential: &Credential<'_>, n: usize, into: &mut Vec<u64>)
where
    S: Service<Request<Body>, Response = Response<Body>> + Clone,
    S::Error: Debug,
{
    for _ in 0..n {
        let request = request(credential);
        let start = Instant::now();
        let response = service.clone().oneshot(request).await.unwrap();
        into.push(start.elapsed().as_nanos() as u64);
        assert_eq!(response.status(), StatusCode::OK);
        drop(response);
    }
}

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// The nearest-rank quantile of sorted samples.
fn quantile(sorted: &[u64], q: f64) -> u64 {
    let rank = ((sorted.len() as f64 * q).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1]
}

#[derive(Default)]
struct Tail {
    p50: u64,
    p90: u64,
    p99: u64,
    p999: u64,
    p99_by_round: Vec<u64>,
}

fn peers(c: &mut Criterion) {
    let rt = support::one_worker();

    // id6-tower: as the `overhead` bench builds its hit.
    let alice = support::Alice::start(&rt);
    let id6 = alice
        .builder()
        .negative_ttl(Duration::from_secs(3600))
        .refresh_after(Some(Duration::from_secs(2700)))
        .build()
        .unwrap();
    let id6_cookie = format!("{BEFORE}; auth={}; {AFTER}", alice.token);
    let id6_service = id6.layer().layer(bare());

    // axum-login over tower-sessions' memory store.
    let members = Members(Arc::new(HashMap::from([(
        7,
        Member {
            id: 7,
            name: "Alice".into(),
            password_hash: b"$argon2id$v=19$m=19456,t=2,p=1$c2FsdHNhbHQ$aGFzaGhhc2hoYXNoaGFzaA"
                .to_vec(),
        },
    )])));
    let sessions = SessionManagerLayer::new(MemoryStore::default()).with_secure(false);
    let login_layer = AuthManagerLayerBuilder::new(members, sessions).build();
    let login_service = login_layer.layer(bare());

    // jwt-authorizer: HS256 from a secret.
    const JWT_SECRET: &str = "peers-bench-hs256-secret";
    let authorizer = rt
        .block_on(JwtAuthorizer::<RegisteredClaims>::from_secret(JWT_SECRET).build())
        .unwrap();
    let jwt_layer = authorizer.into_layer();
    let jwt_service = jwt_wrap(&jwt_layer, bare());
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let jwt = jsonwebtoken::encode(
        &jsonwebtoken::Header::default(),
        &Claims {
            sub: "alice".into(),
            iat: now,
            exp: now + 86_400,
        },
        &jsonwebtoken::EncodingKey::from_secret(JWT_SECRET.as_bytes()),
    )
    .unwrap();
    let jwt_bearer = format!("Bearer {jwt}");

    // tower-http: one fixed token, compared. (Deprecated since tower-http 0.6.7 as "too basic
    // to be useful in real applications"; it stands here for the cheapest check there is.)
    const STATIC_TOKEN: &str = "peers-bench-static-bearer-token-0123456789";
    #[allow(deprecated)]
    let bearer_service = ValidateRequestHeaderLayer::bearer(STATIC_TOKEN).layer(bare());
    let static_bearer = format!("Bearer {STATIC_TOKEN}");

    // ---- each case authenticates, and refuses without credentials ----
    let login_cookie = rt.block_on(async {
        let login = Router::new()
            .route(
                "/login",
                post(|mut auth: AuthSession<Members>| async move {
                    let member = auth.authenticate(SignIn(7)).await.unwrap().unwrap();
                    auth.login(&member).await.unwrap();
                    StatusCode::OK
                }),
            )
            .layer(login_layer.clone());
        let response = login
            .oneshot(Request::post("/login").body(Body::empty()).unwrap())
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        let set_cookie = response.headers()[header::SET_COOKIE].to_str().unwrap();
        let session = set_cookie.split(';').next().unwrap().to_owned();
        assert!(
            session.starts_with("id="),
            "axum-login's session cookie is `id`"
        );
        format!("{BEFORE}; {session}; {AFTER}")
    });

    let bare_service = bare();
    let credentials: [Credential<'_>; 5] = [
        Some((header::COOKIE, &id6_cookie)),
        Some((header::COOKIE, &id6_cookie)),
        Some((header::COOKIE, &login_cookie)),
        Some((header::AUTHORIZATION, &jwt_bearer)),
        Some((header::AUTHORIZATION, &static_bearer)),
    ];
    let browser_cookies = format!("{BEFORE}; {AFTER}");
    let no_credential: Credential<'_> = Some((header::COOKIE, &browser_cookies));
    rt.block_on(async {
        // id6-tower: the layer names the caller; `RequireUser` refuses the anonymous.
        let probe = id6.layer().layer(Router::new().route(
            "/",
            get(|RequireUser(user): RequireUser| async move { user.name.clone() }),
        ));
        names_and_refuses(&probe, &credentials[1], "Alice", &no_credential).await;
        // axum-login: the layer loads the session and the user; the handler checks for one
        // (what `login_required!` does).
        let probe = login_layer.layer(Router::new().route(
            "/",
            get(|auth: AuthSession<Members>| async move {
                match auth.user {
                    Some(member) => (StatusCode::OK, member.name),
                    None => (StatusCode::UNAUTHORIZED, String::new()),
                }
            }),
        ));
        names_and_refuses(&probe, &credentials[2], "Alice", &no_credential).await;
        // jwt-authorizer: the verified claims are in the request's extensions.
        let probe = jwt_wrap(
            &jwt_layer,
            Router::new().route(
                "/",
                get(
                    |Extension(token): Extension<TokenData<RegisteredClaims>>| async move {
                        token.claims.sub.unwrap_or_default()
                    },
                ),
            ),
        );
        names_and_refuses(&probe, &credentials[3], "alice", &no_credential).await;
        let forged = format!("Bearer {}", &jwt[..jwt.len() - 2]);
        let forged: Credential<'_> = Some((header::AUTHORIZATION, &forged));
        assert_eq!(
            send(&jwt_service, request(&forged)).await.0,
            StatusCode::UNAUTHORIZED
        );
        // tower-http: the header is the token, or a 401.
        let wrong: Credential<'_> = Some((header::AUTHORIZATION, "Bearer not-the-token"));
        assert_eq!(
            send(&bearer_service, request(&wrong)).await.0,
            StatusCode::UNAUTHORIZED
        );
        assert_eq!(
            send(&bearer_service, request(&no_credential)).await.0,
            StatusCode::UNAUTHORIZED
        );

        // The timed services themselves: 200, and nothing written back (no session saved,
        // no cookie set) on an authenticated request.
        let answers = [
            send_full(&bare_service, request(&credentials[0])).await,
            send_full(&id6_service, request(&credentials[1])).await,
            send_full(&login_service, request(&credentials[2])).await,
            send_full(&jwt_service, request(&credentials[3])).await,
            send_full(&bearer_service, request(&credentials[4])).await,
        ];
        for (case, answer) in CASES.iter().zip(answers) {
            assert_eq!(answer, (StatusCode::OK, None), "{case}");
        }
    });
    let misses_before = id6.stats().misses;

    // ---- criterion medians ----
    bench_case(c, &rt, CASES[0], &bare_service, &credentials[0]);
    bench_case(c, &rt, CASES[1], &id6_service, &credentials[1]);
    bench_case(c, &rt, CASES[2], &login_service, &credentials[2]);
    bench_case(c, &rt, CASES[3], &jwt_service, &credentials[3]);
    bench_case(c, &rt, CASES[4], &bearer_service, &credentials[4]);

    // ---- the tail: one request at a time, the cases interleaved in rounds ----
    let rounds = env_usize("PEERS_ROUNDS", 10).max(1);
    let requests = env_usize("PEERS_REQUESTS", 50_000).max(100);
    let mut samples: Vec<Vec<u64>> = vec![Vec::with_capacity(rounds * requests); CASES.len()];
    let mut p99_by_round: Vec<Vec<u64>> = vec![Vec::new(); CASES.len()];
    rt.block_on(async {
        for _ in 0..rounds {
            for (i, sample) in samples.iter_mut().enumerate() {
                let start = sample.len();
                let credential = &credentials[i];
                match i {
                    0 => time_one_by_one(&bare_service, credential, requests, sample).await,
                    1 => time_one_by_one(&id6_service, credential, requests, sample).await,
                    2 => time_one_by_one(&login_service, credential, requests, sample).await,
                    3 => time_one_by_one(&jwt_service, credential, requests, sample).await,
                    _ => time_one_by_one(&bearer_service, credential, requests, sample).await,
                }
                let mut round = sample[start..].to_vec();
                round.sort_unstable();
                p99_by_round[i].push(quantile(&round, 0.99));
            }
        }
    });
    // Every id6-tower request above was a hit.
    assert_eq!(
        id6.stats().misses,
        misses_before,
        "an id6-tower request missed"
    );

    let tails: Vec<Tail> = samples
        .iter_mut()
        .zip(p99_by_round)
        .map(|(sample, p99_by_round)| {
            sample.sort_unstable();
            Tail {
                p50: quantile(sample, 0.5),
                p90: quantile(sample, 0.9),
                p99: quantile(sample, 0.99),
                p999: quantile(sample, 0.999),
                p99_by_round,
            }
        })
        .collect();
    TAILS.with(|t| *t.borrow_mut() = Some((tails, rounds, requests)));
    drop(alice);
}

/// `probe` answers `credential` with 200 and `name` (the caller it found), and refuses
/// `none` with 401.
async fn names_and_refuses<S>(
    probe: &S,
    credential: &Credential<'_>,
    name: &str,
    none: &Credential<'_>,
) where
    S: Service<Request<Body>, Response = Response<Body>> + Clone,
    S::Error: Debug,
{
    assert_eq!(
        send(probe, request(credential)).await,
        (StatusCode::OK, name.to_owned())
    );
    assert_eq!(send(probe, request(none)).await.0, StatusCode::UNAUTHORIZED);
}

async fn send_full<S>(service: &S, request: Request<Body>) -> (StatusCode, Option<String>)
where
    S: Service<Request<Body>, Response = Response<Body>> + Clone,
    S::Error: Debug,
{
    let response = service.clone().oneshot(request).await.unwrap();
    let set_cookie = response
        .headers()
        .get(header::SET_COOKIE)
        .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned());
    (response.status(), set_cookie)
}

thread_local! {
    static TAILS: std::cell::RefCell<Option<(Vec<Tail>, usize, usize)>> = const { std::cell::RefCell::new(None) };
}

criterion_group!(bench, peers);

fn main() {
    let load_before = load_average();
    bench();
    Criterion::default().configure_from_args().final_summary();
    let load_after = load_average();
    let Some((tails, rounds, requests)) = TAILS.with(|t| t.borrow_mut().take()) else {
        // `cargo bench -- <filter>` or `--list`: no full run, no table.
        return;
    };
    report(&tails, rounds, requests, &load_before, &load_after);
}

/// The one-, five- and fifteen-minute load averages, as the kernel gives them.
fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "unknown".into())
}

/// `YYYY-MM-DD HH:MM` UTC, from the system clock.
fn utc_now() -> String {
    let secs = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    let (days, rest) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02} {:02}:{:02}",
        rest / 3600,
        rest % 3600 / 60
    )
}

fn report(tails: &[Tail], rounds: usize, requests: usize, load_before: &str, load_after: &str) {
    let Some(target) = target_dir() else {
        return;
    };
    let median = |id: &str| -> Option<f64> {
        let path = criterion_dir(&target)
            .join(GROUP)
            .join(id)
            .join("new/estimates.json");
        let json: serde_json::Value = serde_json::from_slice(&std::fs::read(path).ok()?).ok()?;
        json["median"]["point_estimate"].as_f64()
    };
    let medians: Vec<Option<f64>> = CASES.iter().map(|id| median(id)).collect();
    let Some(bare_median) = medians[0] else {
        eprintln!("no criterion estimate for the bare Router: no table");
        return;
    };
    let bare_tail = &tails[0];
    let cpus = std::thread::available_parallelism().map_or(0, |n| n.get());
    let date = utc_now();

    println!(
        "\nid6-tower beside its peers ({date} UTC, {cpus} CPUs, load average {load_before} before, {load_after} after)"
    );
    println!(
        "medians: criterion; tail: {rounds} rounds x {requests} requests per case, timed one by one\n"
    );
    println!(
        "{:<18} {:>9} {:>10} {:>6} {:>9} {:>9} {:>10} {:>7}  p99 of a round",
        "case", "median", "overhead", "ratio", "p50", "p99", "p99 over", "p99/p50"
    );
    let mut rows = Vec::new();
    for ((name, median), tail) in CASES.iter().zip(&medians).zip(tails) {
        let Some(median) = *median else {
            eprintln!("no criterion estimate for {name}");
            continue;
        };
        let overhead = median - bare_median;
        let p99_overhead = tail.p99 as f64 - bare_tail.p99 as f64;
        println!(
            "{:<18} {:>6.0} ns {:>+7.0} ns {:>5.2}x {:>6} ns {:>6} ns {:>+7.0} ns {:>6.2}x  {}-{} ns",
            name,
            median,
            overhead,
            median / bare_median,
            tail.p50,
            tail.p99,
            p99_overhead,
            tail.p99 as f64 / tail.p50 as f64,
            tail.p99_by_round.iter().min().unwrap(),
            tail.p99_by_round.iter().max().unwrap()
        );
        rows.push(serde_json::json!({
            "case": name,
            "median_ns": median,
            "overhead_ns": overhead,
            "ratio": median / bare_median,
            "p50_ns": tail.p50,
            "p90_ns": tail.p90,
            "p99_ns": tail.p99,
            "p999_ns": tail.p999,
            "p99_overhead_ns": p99_overhead,
            "p99_ratio": tail.p99 as f64 / bare_tail.p99 as f64,
            "p99_by_round_ns": tail.p99_by_round,
        }));
    }
    let out = serde_json::json!({
        "date_utc": date,
        "cpus": cpus,
        "load_average_before": load_before,
        "load_average_after": load_after,
        "rounds": rounds,
        "requests_per_round": requests,
        "median": "criterion, one request through ServiceExt::oneshot on a one-worker tokio runtime",
        "tail": "requests timed one by one (Instant around one oneshot), cases interleaved in rounds",
        "cases": rows,
    });
    let path = target.join("peers.json");
    match std::fs::write(&path, serde_json::to_vec_pretty(&out).unwrap()) {
        Ok(()) => println!(
            "\nwritten: {} (python3 peers/chart.py draws it)",
            path.display()
        ),
        Err(e) => eprintln!("could not write {}: {e}", path.display()),
    }
}

fn criterion_dir(target: &std::path::Path) -> std::path::PathBuf {
    std::env::var_os("CRITERION_HOME").map_or_else(|| target.join("criterion"), Into::into)
}

/// `target/`, from this bench's own path (target/<profile>/deps/peers-<hash>).
fn target_dir() -> Option<std::path::PathBuf> {
    let exe = std::env::current_exe().ok()?;
    Some(exe.parent()?.parent()?.parent()?.to_path_buf())
}
