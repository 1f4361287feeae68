//! Guards for whole routes, rejections the app can shape, id6's own words, and CSRF, over
//! loopback: an axum app, and a bare hyper `service_fn`.

mod common;
#[path = "common/hyper.rs"]
mod hyper_server;

use std::convert::Infallible;

use axum::routing::{get, post};
use axum::Router;
use id6_tower::testing::MockId6;
use id6_tower::{AuthRejection, CurrentUser, Id6, RequireUser, TokenLocation};

const LOGIN: &str = "https://id6.example/login?redirect=https://app.example/account";

fn app(id6: &Id6) -> Router {
    let admins = ["alice@example.com".to_owned()];
    let account = Router::new()
        .route(
            "/account",
            get(
                |RequireUser(user): RequireUser| async move { format!("Account of {}", user.name) },
            ),
        )
        .route_layer(id6.require_user());
    let admin = Router::new()
        .route("/admin", get(|| async { "admin" }))
        .route_layer(id6.require_user_where(move |user| {
            user.email.as_ref().is_some_and(|e| admins.contains(e))
        }));
    let writes = Router::new()
        .route(
            "/write",
            post(|CurrentUser(user): CurrentUser| async move {
                user.map_or("anonymous".to_owned(), |u| format!("written by {}", u.name))
            }),
        )
        .route_layer(id6.csrf());
    account
        .merge(admin)
        .merge(writes)
        .route("/me", get(common::me))
        .layer(id6.layer())
}

struct Guarded {
    mock: MockId6,
    base: String,
    http: reqwest::Client,
}

impl Guarded {
    async fn new(configure: impl FnOnce(id6_tower::Id6Builder) -> id6_tower::Id6Builder) -> Self {
        let mock = MockId6::start().await.unwrap();
        let id6 = configure(common::builder(&mock)).build().unwrap();
        let base = common::serve(app(&id6)).await;
        let http = common::http_client_no_redirect();
        Guarded { mock, base, http }
    }

    fn get(&self, path: &str) -> reqwest::RequestBuilder {
        self.http.get(format!("{}{path}", self.base))
    }

    fn post(&self, path: &str) -> reqwest::RequestBuilder {
        self.http.post(format!("{}{path}", self.base))
    }
}

fn cookie(token: &str) -> String {
    format!("auth={token}")
}

async fn json(response: reqwest::Response) -> (u16, serde_json::Value) {
    let status = response.status().as_u16();
    let body = response.text().await.unwrap();
    (
        status,
        serde_json::from_str(&body).unwrap_or(serde_json::Value::String(body)),
    )
}

#[tokio::test]
async fn the_guard_lets_users_through_and_answers_the_others() {
    let s = Guarded::new(|b| b.login_url(LOGIN)).await;
    let alice = s.mock.add_user("Alice", "alice@example.com");
    let token = s.mock.token_for(alice);

    let ok = s
        .get("/account")
        .header("cookie", cookie(&token))
        .send()
        .await
        .unwrap();
    assert_eq!(ok.status(), 200);
    assert_eq!(ok.text().await.unwrap(), "Account of Alice");

    // An API client: id6's 401 JSON (varying by `Accept`, since browsers get a redirect).
    let response = s.get("/account").send().await.unwrap();
    assert_eq!(response.headers()["vary"], "accept");
    let (status, body) = json(response).await;
    assert_eq!(status, 401);
    assert_eq!(
        body,
        serde_json::json!({"statusCode": 401, "path": "/account",
            "message": "You are not authenticated", "errorCode": "not_authenticated"})
    );

    // A browser: sent to sign in, to the configured page exactly, whatever the request says.
    for path in [
        "/account",
        "/account?redirect=https://evil.example",
        "/account?next=//evil.example",
    ] {
        let response = s
            .get(path)
            .header("accept", "text/html,application/xhtml+xml,*/*;q=0.8")
            .header("x-forwarded-host", "evil.example")
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 303, "{path}");
        assert_eq!(response.headers()["location"], LOGIN, "{path}");
    }
    let response = s
        .get("/account")
        .header("host", "evil.example")
        .header("accept", "text/html")
        .send()
        .await
        .unwrap();
    assert_eq!(response.headers()["location"], LOGIN);

    // A revoked token, from the miss and from the negative cache: id6's code, then to sign in.
    let old = s.mock.token_issued_at(alice, common::now_ms() - 60_000);
    s.mock.revoke_tokens(alice);
    for _ in 0..2 {
        let (status, body) = json(
            s.get("/account")
                .header("cookie", cookie(&old))
                .send()
                .await
                .unwrap(),
        )
        .await;
        assert_eq!(
            (status, body["errorCode"].as_str()),
            (401, Some("token_revoked"))
        );
        let browser = s
            .get("/account")
            .header("cookie", cookie(&old))
            .header("accept", "text/html")
            .send()
            .await
            .unwrap();
        assert_eq!(browser.status(), 303);
    }
    assert_eq!(s.mock.user_calls_for(&old), 1);

    // id6 down: 503 with Retry-After, for browsers too, with nothing internal in the body.
    let bob = s.mock.add_user("Bob", "bob@example.com");
    let bobs = s.mock.token_for(bob);
    s.mock.shutdown().await;
    let response = s
        .get("/account")
        .header("cookie", cookie(&bobs))
        .header("accept", "text/html")
        .send()
        .await
        .unwrap();
    assert!(response.headers().contains_key("retry-after"));
    let (status, body) = json(response).await;
    assert_eq!(
        (status, body["errorCode"].as_str()),
        (503, Some("id6_unavailable"))
    );
    assert_eq!(
        body["message"],
        "The authentication service is unavailable, retry later"
    );
}

#[tokio::test]
async fn without_a_login_url_browsers_get_the_401_too() {
    let s = Guarded::new(|b| b).await;
    let response = s
        .get("/account")
        .header("accept", "text/html")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 401);
}

#[tokio::test]
async fn a_conditional_guard_forbids_who_does_not_qualify() {
    let s = Guarded::new(|b| b.login_url(LOGIN)).await;
    let alice = s.mock.add_user("Alice", "alice@example.com");
    let bob = s.mock.add_user("Bob", "bob@example.com");
    let response = s
        .get("/admin")
        .header("cookie", cookie(&s.mock.token_for(alice)))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let (status, body) = json(
        s.get("/admin")
            .header("cookie", cookie(&s.mock.token_for(bob)))
            .header("accept", "text/html")
            .send()
            .await
            .unwrap(),
    )
    .await;
    // Signed in: no point sending Bob to sign in again.
    assert_eq!(
        (status, body),
        (
            403,
            serde_json::json!({"statusCode": 403, "path": "/admin",
                "message": "You are not allowed to access this resource", "errorCode": "forbidden"})
        )
    );
    assert_eq!(s.get("/admin").send().await.unwrap().status(), 401);
}

#[tokio::test]
async fn csrf_refuses_cross_site_writes_that_carry_the_cookie() {
    let s = Guarded::new(|b| {
        b.trusted_origins(["https://front.example"])
            .token_locations([TokenLocation::Cookie, TokenLocation::Bearer])
    })
    .await;
    let alice = s.mock.add_user("Alice", "alice@example.com");
    let token = s.mock.token_for(alice);
    let own = s.base.clone();
    let own_page = format!("{own}/form?step=2");
    let write = |headers: &[(&str, &str)], by_cookie: bool| {
        let mut request = s
            .post("/write")
            .header("content-type", "application/x-www-form-urlencoded")
            .body("a=1");
        request = if by_cookie {
            request.header("cookie", cookie(&token))
        } else {
            request.header("authorization", format!("Bearer {token}"))
        };
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        request.send()
    };
    // A cross-site form post, as a browser sends it: refused.
    let (status, body) = json(
        write(
            &[
                ("origin", "https://evil.example"),
                ("sec-fetch-site", "cross-site"),
            ],
            true,
        )
        .await
        .unwrap(),
    )
    .await;
    assert_eq!(
        (status, body),
        (
            403,
            serde_json::json!({"statusCode": 403, "path": "/write",
                "message": "Cross-site request refused", "errorCode": "csrf_rejected"})
        )
    );
    for refused in [
        vec![("sec-fetch-site", "cross-site")],
        vec![("origin", "https://evil.example")],
        vec![("origin", "null")],
        // Fetch Metadata says same-origin but the Origin is foreign: the Origin check wins.
        vec![
            ("origin", "https://evil.example"),
            ("sec-fetch-site", "same-origin"),
        ],
        // No Origin (an older browser), a foreign page in `Referer`: the Referer decides.
        vec![("referer", "https://evil.example/form.html")],
        vec![("referer", "not a URL")],
        // `null` and nothing to vouch for it.
        vec![("origin", "null"), ("sec-fetch-site", "same-site")],
    ] {
        let response = write(&refused, true).await.unwrap();
        assert_eq!(response.status(), 403, "{refused:?}");
    }
    let written = "written by Alice";
    for passed in [
        // The same origin, by Host.
        vec![("origin", own.as_str()), ("sec-fetch-site", "same-origin")],
        // A trusted origin, even on another site.
        vec![
            ("origin", "https://front.example"),
            ("sec-fetch-site", "cross-site"),
        ],
        // A page of ours with `Referrer-Policy: no-referrer`: its POSTs say `Origin: null`,
        // and Fetch Metadata, which the page cannot forge, says same-origin.
        vec![("origin", "null"), ("sec-fetch-site", "same-origin")],
        // No Origin, our own page (or a trusted one) in `Referer`.
        vec![("referer", own_page.as_str())],
        vec![("referer", "https://front.example/app")],
        // No browser headers at all: not a browser.
        vec![],
    ] {
        let response = write(&passed, true).await.unwrap();
        assert_eq!(response.status(), 200, "{passed:?}");
        assert_eq!(response.text().await.unwrap(), written);
    }
    // A bearer token is never sent by a browser on its own: never affected.
    let response = write(
        &[
            ("origin", "https://evil.example"),
            ("sec-fetch-site", "cross-site"),
        ],
        false,
    )
    .await
    .unwrap();
    assert_eq!(response.status(), 200);
    // Safe methods pass.
    let response = s
        .get("/me")
        .header("cookie", cookie(&token))
        .header("origin", "https://evil.example")
        .header("sec-fetch-site", "cross-site")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
}

#[tokio::test]
async fn bearer_401s_carry_an_rfc_6750_challenge() {
    let s =
        Guarded::new(|b| b.token_locations([TokenLocation::Bearer, TokenLocation::Cookie])).await;
    let response = s.get("/me").send().await.unwrap();
    assert_eq!(response.status(), 401);
    assert_eq!(
        response.headers()["www-authenticate"],
        "Bearer realm=\"id6\""
    );
    let response = s
        .get("/account")
        .header("authorization", "Bearer not.a.token")
        .send()
        .await
        .unwrap();
    assert_eq!(
        response.headers()["www-authenticate"],
        "Bearer realm=\"id6\", error=\"invalid_token\""
    );
    assert_eq!(json(response).await.1["errorCode"], "invalid_token");
}

#[tokio::test]
async fn one_hook_shapes_every_rejection() {
    let s = Guarded::new(|b| {
        b.on_rejection(|rejection: &AuthRejection| {
            let mut response = rejection.default_response();
            *response.body_mut() = format!("{} ({})", rejection.message(), rejection.error_code());
            response
                .headers_mut()
                .insert("content-type", "text/plain".parse().unwrap());
            response
        })
    })
    .await;
    let bob = s.mock.add_user("Bob", "bob@example.com");
    let bobs = s.mock.token_for(bob);
    let cases = [
        (
            s.get("/me"),
            401,
            "You are not authenticated (not_authenticated)",
        ),
        (
            s.get("/account"),
            401,
            "You are not authenticated (not_authenticated)",
        ),
        (
            s.get("/admin").header("cookie", cookie(&bobs)),
            403,
            "You are not allowed to access this resource (forbidden)",
        ),
        (
            s.post("/write")
                .header("cookie", cookie(&bobs))
                .header("sec-fetch-site", "cross-site"),
            403,
            "Cross-site request refused (csrf_rejected)",
        ),
    ];
    for (request, status, text) in cases {
        let response = request.send().await.unwrap();
        assert_eq!(response.status(), status);
        assert_eq!(response.headers()["content-type"], "text/plain");
        assert_eq!(response.text().await.unwrap(), text);
    }
}

#[tokio::test]
async fn the_guard_serves_a_bare_hyper_service() {
    use tower::ServiceBuilder;

    let mock = MockId6::start().await.unwrap();
    let alice = mock.add_user("Alice", "alice@example.com");
    let id6 = common::builder(&mock).login_url(LOGIN).build().unwrap();
    // No axum anywhere: a `service_fn` answering `String` bodies.
    let service = ServiceBuilder::new()
        .layer(id6.layer())
        .layer(id6.require_user())
        .service_fn(|request: http::Request<hyper::body::Incoming>| async move {
            let user = id6_tower::Authentication::of(request.extensions())
                .and_then(|a| a.user())
                .map(|u| u.name.clone())
                .unwrap_or_default();
            Ok::<_, Infallible>(http::Response::new(format!("hello {user}")))
        });
    let addr = hyper_server::serve(service).await;
    let http = common::http_client_no_redirect();
    let url = format!("http://{addr}/");
    let ok = http
        .get(&url)
        .header("cookie", cookie(&mock.token_for(alice)))
        .send()
        .await
        .unwrap();
    assert_eq!(ok.text().await.unwrap(), "hello Alice");
    let (status, body) = json(http.get(&url).send().await.unwrap()).await;
    assert_eq!(
        (status, body["errorCode"].as_str()),
        (401, Some("not_authenticated"))
    );
    let browser = http
        .get(&url)
        .header("accept", "text/html")
        .send()
        .await
        .unwrap();
    assert_eq!(
        (
            browser.status().as_u16(),
            browser.headers()["location"].to_str().unwrap()
        ),
        (303, LOGIN)
    );
}
