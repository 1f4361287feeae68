//! No token ever reaches a log line, an error message, a rejection body or a `Debug` output.

mod common;

use std::io::Write;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use common::Setup;
use id6_tower::testing::Fault;
use id6_tower::{Authentication, Id6};

/// Everything any test in this file logs, at every level.
fn captured() -> &'static Arc<Mutex<Vec<u8>>> {
    static LOGS: OnceLock<Arc<Mutex<Vec<u8>>>> = OnceLock::new();
    LOGS.get_or_init(|| {
        let logs = Arc::new(Mutex::new(Vec::new()));
        let sink = logs.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_max_level(tracing::Level::TRACE)
            .with_ansi(false)
            .with_writer(move || Sink(sink.clone()))
            .finish();
        tracing::subscriber::set_global_default(subscriber).unwrap();
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

/// Fails with the place where the secret showed up.
fn assert_clean(what: &str, text: &str, secrets: &[&str]) {
    for secret in secrets {
        // The signature alone identifies a JWT; look for it as well as the whole token.
        let signature = secret.rsplit('.').next().unwrap_or(secret);
        assert!(
            !text.contains(secret) && !text.contains(signature),
            "a token leaked into {what}: {text}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_stay_out_of_logs_errors_and_debug() {
    let logs = captured();
    let s = Setup::new().await;
    let alice = s.mock.add_user("Alice", "a@example.com");
    let good = s.mock.token_for(alice);
    let expired = s.mock.expired_token_for(alice);
    let garbage = "garbage-token-value-0123456789".to_owned();
    let mut secrets: Vec<String> = vec![good.clone(), expired.clone(), garbage.clone()];
    let mut texts: Vec<(&str, String)> = Vec::new();

    // Miss, hit, refusals.
    for token in [&good, &good, &expired, &garbage] {
        texts.push(("a response body", s.get("/me", Some(token)).await.1));
    }
    // Every failure, each through the app and directly.
    // Each fault on a fresh handle, so that no breaker hides the next one.
    for fault in [
        Fault::Status(500),
        Fault::DropConnection,
        Fault::DropMidBody,
        Fault::MalformedBody,
        Fault::HtmlPage,
        Fault::Delay(Duration::from_secs(60)),
        Fault::RateLimited,
    ] {
        let fresh_handle = common::builder(&s.mock).build().unwrap();
        s.mock.set_fault(fault);
        let fresh = s.mock.token_for(alice);
        let fresher = s.mock.token_for(s.mock.add_user("Bob", "b@example.com"));
        texts.push(("a response body", s.get("/me", Some(&fresh)).await.1));
        let mut headers = http::HeaderMap::new();
        headers.append("cookie", format!("auth={fresher}").parse().unwrap());
        let verdict = fresh_handle.authenticate(&headers).await;
        texts.push(("an Authentication's Debug", format!("{verdict:?}")));
        let error = verdict.unavailable().expect("unavailable").clone();
        texts.push(("an error's Display", error.to_string()));
        texts.push(("an error's Debug", format!("{error:?}")));
        let mut source = std::error::Error::source(&error);
        while let Some(cause) = source {
            texts.push(("an error's source", format!("{cause} / {cause:?}")));
            source = cause.source();
        }
        s.mock.clear_fault();
        secrets.extend([fresh, fresher]);
    }
    // Typed calls and their errors: refused profile, missing picture, dead token, 429,
    // breaker open.
    let h = |token: &str| {
        let mut h = http::HeaderMap::new();
        h.insert("cookie", format!("auth={token}").parse().unwrap());
        h
    };
    let api = common::builder(&s.mock).build().unwrap();
    let mut errors = vec![
        api.update_profile(&h(&good), &id6_tower::Profile::new(""))
            .await
            .unwrap_err(),
        api.picture(&h(&good)).await.unwrap_err(),
        api.user(&h(&expired)).await.unwrap_err(),
        api.update_picture(
            &h(&good),
            id6_tower::PictureUpload::from_bytes("x.gif", &b"GIF"[..]),
        )
        .await
        .unwrap_err(),
    ];
    s.mock.set_fault(Fault::RateLimited);
    errors.push(api.sign_out(&h(&good)).await.unwrap_err());
    errors.push(api.disconnect(&h(&good)).await.unwrap_err()); // breaker open
    s.mock.clear_fault();
    for error in &errors {
        texts.push(("a typed call's error", format!("{error} / {error:?}")));
    }
    // The private backend with a wrong secret, and a locally refused forgery.
    let wrong = Id6::builder(s.mock.url())
        .authorization(s.mock.authorization_url(), "wrong secret")
        .build()
        .unwrap();
    let refused = wrong.authenticate(&h(&good)).await;
    texts.push(("a refused secret's Debug", format!("{refused:?}")));
    let strict = Id6::builder(s.mock.url())
        .jwt_secret("not id6's")
        .build()
        .unwrap();
    let forged = strict.authenticate(&h(&good)).await;
    assert!(forged.is_anonymous());
    texts.push(("the strict handle's Debug", format!("{strict:?}")));

    let mut headers = http::HeaderMap::new();
    headers.insert("cookie", format!("auth={good}").parse().unwrap());
    let verdict = Id6::builder(s.mock.url())
        .build()
        .unwrap()
        .authenticate(&headers)
        .await;
    assert!(matches!(verdict, Authentication::Authenticated(_)));
    texts.push(("a user's Debug", format!("{verdict:?}")));
    texts.push(("the handle's Debug", format!("{:?}", s.id6)));
    texts.push(("the layer's Debug", format!("{:?}", s.id6.layer())));
    // A session keeps the token for its rechecks: never in its Debug.
    let handler = tower::service_fn(|request: http::Request<()>| async move {
        let session = id6_tower::Session::of(request.headers(), request.extensions());
        Ok::<_, std::convert::Infallible>(http::Response::new(session))
    });
    let mut request = http::Request::new(());
    *request.headers_mut() = headers.clone();
    let response =
        tower::ServiceExt::oneshot(tower::Layer::layer(&s.id6.layer(), handler), request)
            .await
            .unwrap();
    let session = response.into_body().expect("signed in");
    texts.push(("a session's Debug", format!("{session:?}")));

    // A password in the id6 URLs: never in a Debug, an error or a log line.
    let with_password = |url: &str| url.replacen("://", "://user:S3CRET-URL-PASSWORD@", 1);
    let builder = Id6::builder(with_password(&s.mock.url())).authorization(
        with_password(&s.mock.authorization_url()),
        s.mock.authorization_secret(),
    );
    texts.push(("a builder's Debug", format!("{builder:?}")));
    let handle = builder.build().unwrap();
    texts.push((
        "a handle's Debug",
        format!("{handle:?} {:?}", handle.layer()),
    ));
    let verdict = handle.authenticate(&h(&good)).await;
    texts.push(("an Authentication's Debug", format!("{verdict:?}")));
    let dead = Id6::builder(with_password("http://127.0.0.1:9/api"))
        .build()
        .unwrap();
    let verdict = dead.authenticate(&h(&good)).await;
    let error = verdict.unavailable().expect("port 9 is closed").clone();
    texts.push(("a connect error", format!("{error} / {error:?}")));
    let mut source = std::error::Error::source(&error);
    while let Some(cause) = source {
        texts.push(("a connect error's source", format!("{cause} / {cause:?}")));
        source = cause.source();
    }
    let bad = Id6::builder(with_password("http://h:notaport/api")).build();
    texts.push(("a config error", format!("{:?}", bad.unwrap_err())));
    secrets.push("S3CRET-URL-PASSWORD".to_owned());

    let secrets: Vec<&str> = secrets.iter().map(String::as_str).collect();
    for (what, text) in &texts {
        assert_clean(what, text, &secrets);
    }

    let logs = String::from_utf8_lossy(&logs.lock().unwrap()).into_owned();
    // The capture works and saw the interesting events, so a clean result means something.
    assert!(logs.contains("id6 named the user"), "{logs}");
    assert!(logs.contains("id6 unavailable"), "{logs}");
    assert!(logs.contains("id6 rejected the token"), "{logs}");
    assert!(logs.contains("refused our authorization secret"), "{logs}");
    assert!(logs.contains("token refused locally"), "{logs}");
    assert!(logs.contains("id6 rate-limits us"), "{logs}");
    assert_clean("the tracing output", &logs, &secrets);
}

#[test]
fn config_errors_do_not_echo_tokens_either() {
    // The only user input in a config error is the setting itself; a URL with credentials
    // is the closest thing to a secret there, and reqwest never sees it (build fails first).
    let err = Id6::builder("http://127.0.0.1:8000/api?token=abc")
        .build()
        .unwrap_err();
    assert!(err.is_config());
    assert!(!err.to_string().contains("token=abc"), "{err}");
}
