//! The axum example's public contract (its module doc), over loopback: guards, admin,
//! CSRF on every write, id6's `invalid_body`.

mod common;

#[allow(dead_code, unreachable_pub)]
#[path = "../examples/axum.rs"]
mod example;

use std::sync::Arc;

use id6_tower::testing::MockId6;
use id6_tower::Id6;

struct App {
    mock: MockId6,
    base: String,
    login: String,
    http: reqwest::Client,
    alice: String,
    bob: String,
}

async fn start() -> App {
    start_with(|builder| builder, false).await
}

/// The example app on a mock; `configure` adds settings, `addresses` serves it with each
/// connection's address (`ConnectInfo`), as its `main` does.
async fn start_with(
    configure: impl FnOnce(id6_tower::Id6Builder) -> id6_tower::Id6Builder,
    addresses: bool,
) -> App {
    let mock = MockId6::start().await.unwrap();
    let alice = mock.add_user("Alice", "alice@example.com");
    let bob = mock.add_user("Bob", "bob@example.com");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let login = mock.sign_in_url(&format!("{base}/account"));
    let state = example::AppState {
        id6: configure(Id6::builder(mock.url()).login_url(&login))
            .build()
            .unwrap(),
        login_url: Some(format!("{}/login", mock.url())),
        public_url: base.clone(),
        admin_emails: Arc::from(vec!["alice@example.com".to_owned()]),
    };
    let app = example::app(state);
    if addresses {
        let app = app.into_make_service_with_connect_info::<std::net::SocketAddr>();
        tokio::spawn(async move { axum::serve(listener, app).await });
    } else {
        tokio::spawn(async move { axum::serve(listener, app).await });
    }
    App {
        alice: format!("auth={}", mock.token_for(alice)),
        bob: format!("auth={}", mock.token_for(bob)),
        mock,
        base,
        login,
        http: common::http_client_no_redirect(),
    }
}

async fn code(response: reqwest::Response) -> (u16, Option<String>) {
    let status = response.status().as_u16();
    let text = response.text().await.unwrap();
    let body: serde_json::Value = serde_json::from_str(&text).unwrap_or_default();
    (status, body["errorCode"].as_str().map(str::to_owned))
}

#[tokio::test]
async fn account_and_admin_are_guarded() {
    let app = start().await;
    let get = |path: &str| app.http.get(format!("{}{path}", app.base));

    let ok = get("/account")
        .header("cookie", &app.alice)
        .send()
        .await
        .unwrap();
    assert_eq!(ok.text().await.unwrap(), "Account of Alice");
    let browser = get("/account")
        .header("accept", "text/html")
        .send()
        .await
        .unwrap();
    assert_eq!(browser.status(), 303);
    assert_eq!(browser.headers()["location"], app.login.as_str());
    assert_eq!(
        code(get("/account").send().await.unwrap()).await,
        (401, Some("not_authenticated".to_owned()))
    );

    let admin = get("/admin")
        .header("cookie", &app.alice)
        .send()
        .await
        .unwrap();
    assert_eq!(admin.text().await.unwrap(), "Admin: Alice");
    assert_eq!(
        code(
            get("/admin")
                .header("cookie", &app.bob)
                .send()
                .await
                .unwrap()
        )
        .await,
        (403, Some("forbidden".to_owned()))
    );
    assert_eq!(get("/admin").send().await.unwrap().status(), 401);
}

#[tokio::test]
async fn every_write_is_behind_the_csrf_check() {
    let app = start().await;
    let post = |path: &str| {
        app.http
            .post(format!("{}{path}", app.base))
            .header("cookie", &app.bob)
    };
    for path in [
        "/me/profile",
        "/me/picture",
        "/logout",
        "/logout-everywhere",
    ] {
        let response = post(path)
            .header("origin", "https://evil.example")
            .header("sec-fetch-site", "cross-site")
            .send()
            .await
            .unwrap();
        assert_eq!(
            code(response).await,
            (403, Some("csrf_rejected".to_owned())),
            "{path}"
        );
    }
    // From the app's own pages, the same write goes through.
    let response = post("/me/profile")
        .header("origin", &app.base)
        .header("sec-fetch-site", "same-origin")
        .header("content-type", "application/json")
        .body(r#"{"name": "Robert"}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 204);
    assert_eq!(app.mock.calls("POST", "/user/profile"), 1);
}

#[tokio::test]
async fn an_invalid_profile_gets_ids_invalid_body() {
    let app = start().await;
    for body in [
        r#"{"bio": "no name"}"#,
        r#"{"name": 42}"#,
        r#"{"name": ""}"#,
        r#"{"name": "Alice", "language": "french"}"#,
        r#"["not", "an", "object"]"#,
        "{not json",
    ] {
        let response = app
            .http
            .post(format!("{}/me/profile", app.base))
            .header("cookie", &app.alice)
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
            .unwrap();
        assert_eq!(
            code(response).await,
            (400, Some("invalid_body".to_owned())),
            "{body}"
        );
    }
    assert_eq!(
        app.mock.calls("POST", "/user/profile"),
        0,
        "refused before sending"
    );
}

/// A client whose connections come from `ip` (any of 127.0.0.0/8 is loopback on Linux).
fn client_from(ip: [u8; 4]) -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .redirect(reqwest::redirect::Policy::none())
        .local_address(std::net::IpAddr::from(ip))
        .build()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn typed_calls_pass_the_door_of_a_miss() {
    let limit = id6_tower::MissLimit::new(10, std::time::Duration::from_secs(60));
    let app = start_with(|builder| builder.miss_limit(limit), true).await;
    let attacker = client_from([127, 0, 0, 1]);
    let send = |path: &'static str, cookie: String| {
        let request = if path == "/logout" {
            attacker.post(format!("{}{path}", app.base))
        } else {
            attacker.get(format!("{}{path}", app.base))
        };
        request.header("cookie", cookie).send()
    };

    // Malformed cookies: refused where they are read, id6 never asked.
    let malformed = ["x", "not.a.jwt", "a\"b", "\u{7f}", "a.b.c"];
    for i in 0..120 {
        let path = ["/logout", "/me/picture"][i % 2];
        let cookie = format!("auth={}", malformed[i % malformed.len()]);
        let Ok(response) = send(path, cookie).await else {
            continue; // a value reqwest itself refuses to send
        };
        let (status, code) = code(response).await;
        assert_eq!(status, 401, "{path}");
        assert_eq!(code.as_deref(), Some("invalid_token"));
    }
    assert_eq!(
        app.mock.requests().len(),
        0,
        "a malformed cookie reached id6"
    );

    // Forged, well-formed tokens from one address: the layer's misses and the typed calls
    // share that address's budget of 10.
    let forger = MockId6::builder()
        .jwt_secret("not id6's")
        .start()
        .await
        .unwrap();
    let (mut refused, mut rejected) = (0, 0);
    for i in 0..200u64 {
        let path = ["/logout", "/me/picture"][(i % 2) as usize];
        let token = forger.token_issued_at(1, 1_700_000_000_000 + i);
        let (status, code) = code(send(path, format!("auth={token}")).await.unwrap()).await;
        match status {
            401 => rejected += 1,
            503 => refused += 1,
            other => panic!("{path} answered {other} {code:?}"),
        }
    }
    let calls = app.mock.requests().len();
    assert!(calls <= 10, "200 forged tokens cost {calls} id6 calls");
    assert_eq!((rejected, refused), (calls, 200 - calls));

    // Meanwhile another address signs in, and a signed-in user's typed calls work as before.
    let user = client_from([127, 0, 0, 2]);
    let me = user
        .get(format!("{}/me", app.base))
        .header("cookie", &app.alice)
        .send()
        .await
        .unwrap();
    assert_eq!(me.status(), 200);
    let out = user
        .post(format!("{}/logout", app.base))
        .header("cookie", &app.alice)
        .send()
        .await
        .unwrap();
    assert_eq!(out.status(), 204);
    assert_eq!(app.mock.calls("POST", "/auth/signout"), 1);
}

#[tokio::test]
async fn the_way_back_from_signing_in_is_the_public_url() {
    let app = start().await;
    let page = app
        .http
        .get(format!("{}/app", app.base))
        .header("host", "evil.example")
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let back = format!("redirect={}", urlencode(&format!("{}/app", app.base)));
    assert!(page.contains(&back), "{page}");
    assert!(!page.contains("evil.example"), "{page}");
}

fn urlencode(text: &str) -> String {
    reqwest::Url::parse_with_params("http://x/", [("v", text)])
        .unwrap()
        .query()
        .unwrap()
        .trim_start_matches("v=")
        .to_owned()
}

/// `POST /logout` from the page's "Sign out" button clears the browser's cookie whatever id6
/// answered: id6 down or rate limiting (the token then leaves the cache all the same), or
/// the token already dead (signed out in another tab, revoked): that browser is signed out,
/// and goes back to `/app` rather than to a JSON 401.
#[tokio::test]
async fn a_sign_out_clears_the_cookie_whatever_id6_answers() {
    let app = start().await;
    let me = |cookie: &str| {
        app.http
            .get(format!("{}/me", app.base))
            .header("cookie", cookie)
            .send()
    };
    let sign_out = |cookie: &str| {
        app.http
            .post(format!("{}/logout", app.base))
            .header("cookie", cookie)
            .header("accept", "text/html,application/xhtml+xml")
            .header("origin", &app.base)
            .header("sec-fetch-site", "same-origin")
            .send()
    };
    let clears = |response: &reqwest::Response| {
        response
            .headers()
            .get_all("set-cookie")
            .iter()
            .any(|v| v.to_str().unwrap().starts_with("auth=;"))
    };

    // id6 down while Alice's token is cached: the cookie goes, and so does the cached entry.
    assert_eq!(me(&app.alice).await.unwrap().status(), 200);
    app.mock.set_fault(id6_tower::testing::Fault::Status(503));
    let out = sign_out(&app.alice).await.unwrap();
    assert!(
        clears(&out),
        "id6 down: the cookie stayed ({})",
        out.status()
    );
    let after = me(&app.alice).await.unwrap();
    assert_ne!(after.status(), 200, "id6 down: still served from the cache");
    app.mock.clear_fault();

    // A dead token (expired, malformed) or none (signed out in another tab): back to the
    // page, the cookie cleared.
    let carol = app.mock.add_user("Carol", "carol@example.com");
    let expired = format!("auth={}", app.mock.expired_token_for(carol));
    for cookie in [expired.as_str(), "auth=not.a.jwt", ""] {
        let out = sign_out(cookie).await.unwrap();
        assert_eq!(out.status(), 303, "{cookie:?}");
        assert_eq!(out.headers()["location"], "/app", "{cookie:?}");
        assert!(clears(&out), "{cookie:?}");
    }
}
