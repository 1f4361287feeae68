//! A real browser signs in on (mock) id6 and the app knows who it is: headless Chromium
//! driven over WebDriver, against the `axum` example's `/app` page.
//!
//! Needs Debian's `chromium` and `chromium-driver` (`.ci/run` installs them). Without them
//! the test says loudly that it did not run; in CI (`CI` set) their absence is a failure.
//! Screenshots of each step land in `target/browser-e2e/`.

#[allow(dead_code, unreachable_pub)]
#[path = "../../examples/axum.rs"]
mod example;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use fantoccini::{ClientBuilder, Locator};
use id6_tower::testing::MockId6;
use id6_tower::Id6;

const CHROMIUM: &str = "/usr/bin/chromium";
const CHROMEDRIVER: &str = "/usr/bin/chromedriver";

/// chromedriver, ended with the test.
struct Driver(Child);

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The browser profile of this test: on drop (even after a failed assertion) every
/// Chromium process using it is ended and the profile removed, so none outlives the test.
struct Profile(PathBuf);

impl Drop for Profile {
    fn drop(&mut self) {
        let needle = self.0.to_string_lossy().into_owned();
        if let Ok(entries) = std::fs::read_dir("/proc") {
            for entry in entries.flatten() {
                let cmdline = std::fs::read(entry.path().join("cmdline")).unwrap_or_default();
                if String::from_utf8_lossy(&cmdline).contains(&needle) {
                    let pid = entry.file_name().to_string_lossy().into_owned();
                    let _ = Command::new("kill").arg("-9").arg(pid).status();
                }
            }
        }
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free loopback port")
}

fn screenshots() -> PathBuf {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/browser-e2e");
    std::fs::create_dir_all(&dir).expect("target/browser-e2e");
    dir
}

#[tokio::test]
async fn a_browser_signs_in_and_out() {
    if !Path::new(CHROMIUM).exists() || !Path::new(CHROMEDRIVER).exists() {
        let message = "SKIPPED: browser test: install Debian's chromium and chromium-driver \
                       (apt-get install chromium chromium-driver); .ci/run does";
        if std::env::var_os("CI").is_some() {
            panic!("{message}");
        }
        // Straight to stderr: the test harness captures `eprintln!` of passing tests.
        use std::io::Write;
        let _ = writeln!(std::io::stderr(), "{message}");
        return;
    }

    // id6 (mock) and the app, on two loopback ports of one host: the cookie id6 sets is
    // the app's too, since cookies ignore ports.
    let mock = MockId6::start().await.unwrap();
    let alice = mock.add_user("Alice", "alice@example.com");
    mock.add_user("Bob", "bob@example.com");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let app_url = format!("http://{}", listener.local_addr().unwrap());
    mock.allow_redirect(&app_url);
    let state = example::AppState {
        id6: Id6::builder(mock.url()).build().unwrap(),
        login_url: Some(format!("{}/login", mock.url())),
        public_url: app_url.clone(),
        admin_emails: std::sync::Arc::from(vec!["alice@example.com".to_owned()]),
    };
    tokio::spawn(async move { axum::serve(listener, example::app(state)).await });

    let port = free_port();
    let _driver = Driver(
        Command::new(CHROMEDRIVER)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("chromedriver starts"),
    );
    let profile =
        Profile(std::env::temp_dir().join(format!("id6-tower-chromium-{}", std::process::id())));
    let mut capabilities = serde_json::Map::new();
    capabilities.insert(
        "goog:chromeOptions".to_owned(),
        serde_json::json!({
            "binary": CHROMIUM,
            "args": [
                "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--disable-quic", "--no-first-run", "--disable-background-networking",
                "--disable-component-update", "--disable-sync",
                format!("--user-data-dir={}", profile.0.display()),
            ],
        }),
    );
    let webdriver = format!("http://127.0.0.1:{port}");
    let connector = hyper_util::client::legacy::connect::HttpConnector::new();
    // chromedriver needs a moment to listen: bounded retries, then fail.
    let mut browser = None;
    for _ in 0..100 {
        match ClientBuilder::new(connector.clone())
            .capabilities(capabilities.clone())
            .connect(&webdriver)
            .await
        {
            Ok(client) => {
                browser = Some(client);
                break;
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
    let browser = browser.expect("a WebDriver session within 10 s");
    let shots = screenshots();
    let shot = |name: &'static str| {
        let browser = browser.clone();
        let path = shots.join(name);
        async move {
            let png = browser.screenshot().await.expect("a screenshot");
            std::fs::write(&path, png).expect("screenshot saved");
        }
    };
    // The page's element `id` once it reads `want`: clicks that navigate return before the
    // next page is there, so wait for it (WebDriver-style, bounded), then compare.
    let text_of = |id: &'static str, want: &'static str| {
        let browser = browser.clone();
        async move {
            let mut seen = String::new();
            for _ in 0..100 {
                if let Ok(element) = browser.find(Locator::Id(id)).await {
                    seen = element.text().await.unwrap_or_default();
                    if seen == want {
                        break;
                    }
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            seen
        }
    };
    let status = |want: &'static str| text_of("status", want);

    // 1. Anonymous.
    browser.goto(&format!("{app_url}/app")).await.unwrap();
    assert_eq!(status("Anonymous").await, "Anonymous");
    shot("1-anonymous.png").await;

    // 2. To id6's sign-in page, and sign in as Alice.
    browser
        .find(Locator::Id("sign-in"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    assert!(browser
        .current_url()
        .await
        .unwrap()
        .as_str()
        .starts_with(&mock.url()));
    shot("2-id6-sign-in.png").await;
    browser
        .find(Locator::Id(&format!("sign-in-as-{alice}")))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();

    // 3. Back on the app, signed in; several page loads, one id6 call.
    assert_eq!(status("Signed in as Alice").await, "Signed in as Alice");
    assert_eq!(
        browser.current_url().await.unwrap().as_str(),
        format!("{app_url}/app")
    );
    shot("3-signed-in.png").await;
    for _ in 0..3 {
        browser.refresh().await.unwrap();
        assert_eq!(status("Signed in as Alice").await, "Signed in as Alice");
    }
    assert_eq!(
        mock.user_calls(),
        1,
        "four page loads, one id6 call: the layer's cache"
    );
    let cookie = browser
        .get_named_cookie("auth")
        .await
        .expect("the auth cookie");
    assert_eq!(cookie.http_only(), Some(true));

    // 3b. The page's live line, fed by `/ws`; signed out elsewhere (another tab, a script
    // with the same cookie), the socket is closed and the line says so within 2 s (50 ms
    // polls, 100 of them at most: the bound is the helper's).
    assert_eq!(
        text_of("live", "Live: signed in as Alice").await,
        "Live: signed in as Alice"
    );
    let elsewhere = reqwest::Client::new()
        .post(format!("{app_url}/logout"))
        .header("cookie", format!("auth={}", cookie.value()))
        .send()
        .await
        .unwrap();
    assert_eq!(elsewhere.status(), 204);
    let since = std::time::Instant::now();
    let signed_out = "Live: signed out (signed_out)";
    assert_eq!(text_of("live", signed_out).await, signed_out);
    assert!(
        since.elapsed() < Duration::from_secs(2),
        "the live line turned after {:?}",
        since.elapsed()
    );
    shot("3b-live-signed-out-elsewhere.png").await;

    // 4. Sign out: anonymous again, and the browser no longer holds the cookie.
    browser
        .find(Locator::Id("sign-out"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    assert_eq!(status("Anonymous").await, "Anonymous");
    shot("4-signed-out.png").await;
    let cookies = browser.get_all_cookies().await.unwrap();
    assert!(
        cookies.iter().all(|c| c.name() != "auth"),
        "auth cookie left: {cookies:?}"
    );

    browser.close().await.unwrap();
    drop(profile);
}

/// The sign-in page refuses to send the browser anywhere not allowed: no open redirect.
#[tokio::test]
async fn the_sign_in_page_is_no_open_redirect() {
    let mock = MockId6::start().await.unwrap();
    let alice = mock.add_user("Alice", "alice@example.com");
    mock.allow_redirect("http://127.0.0.1:3000");
    let client = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let login = |redirect: &str| {
        client
            .post(format!("{}/auth/login", mock.url()))
            .header("content-type", "application/x-www-form-urlencoded")
            .body(form(&[
                ("userId", &alice.to_string()),
                ("redirect", redirect),
            ]))
            .send()
    };
    for evil in [
        "https://evil.example/steal",
        "//evil.example/steal",
        "http://127.0.0.1:3001/app",
        "http://127.0.0.1:3000.evil.example/",
        "javascript:alert(1)",
        "/\\evil.example",
    ] {
        let response = login(evil).await.unwrap();
        assert_eq!(response.status(), 400, "{evil}");
        assert!(
            response.headers().get("set-cookie").is_none(),
            "{evil}: no cookie either"
        );
    }
    let response = login("http://127.0.0.1:3000/app").await.unwrap();
    assert_eq!(response.status(), 303);
    assert_eq!(response.headers()["location"], "http://127.0.0.1:3000/app");
    let cookie = response.headers()["set-cookie"].to_str().unwrap();
    assert!(cookie.starts_with("auth=ey"), "{cookie}");
    assert!(
        cookie.ends_with("; Max-Age=2592000; Path=/; HttpOnly"),
        "{cookie}"
    );

    // The sign-in page escapes what it shows.
    mock.add_user("<script>x</script>", "x@example.com");
    let page = client
        .get(mock.sign_in_url("http://127.0.0.1:3000/app\"><b>"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        !page.contains("<script>") && !page.contains("\"><b>"),
        "{page}"
    );
}

/// An `application/x-www-form-urlencoded` body.
fn form(fields: &[(&str, &str)]) -> String {
    let url = reqwest::Url::parse_with_params("http://form.invalid/", fields).expect("a URL");
    url.query().unwrap_or_default().to_owned()
}
