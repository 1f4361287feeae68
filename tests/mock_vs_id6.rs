//! `MockId6` against `docs/id6.md`, over real HTTP on loopback: each test asserts what the
//! real id6 was observed to do, where the mock once answered otherwise.

mod common;

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use id6_tower::testing::MockId6;
use serde_json::{json, Value};

fn http() -> reqwest::Client {
    common::http_client_no_redirect()
}

fn now_s() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// An IMF-fixdate (`Thu, 01 Jan 1970 00:00:00 GMT`), in seconds since the epoch.
fn http_date_s(date: &str) -> u64 {
    let parts: Vec<&str> = date.split(' ').collect();
    assert_eq!(parts.len(), 6, "{date:?}");
    assert_eq!(parts[5], "GMT", "{date:?}");
    let months = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    let month = months.iter().position(|m| *m == parts[2]).expect("a month") + 1;
    let rfc3339 = format!("{}-{month:02}-{}T{}Z", parts[3], parts[1], parts[4]);
    let secs = humantime::parse_rfc3339(&rfc3339)
        .unwrap()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs();
    // 1970-01-01 was a Thursday.
    let weekday = ["Thu", "Fri", "Sat", "Sun", "Mon", "Tue", "Wed"][(secs / 86_400 % 7) as usize];
    assert_eq!(parts[0], format!("{weekday},"), "{date:?}");
    secs
}

async fn body_json(answer: reqwest::Response) -> Value {
    serde_json::from_slice(&answer.bytes().await.unwrap()).unwrap()
}

/// id6.md: a bad token is answered with `Set-Cookie: auth=; Max-Age=0; Path=/;
/// Expires=<now>; HttpOnly`, and disconnect and sign-out clear the cookie the same way. The
/// mock sent `Expires=Thu, 01 Jan 1970 00:00:00 GMT`.
#[tokio::test]
async fn the_clearing_cookie_expires_now() {
    let mock = MockId6::start().await.unwrap();
    let alice = mock.add_user("Alice", "alice@example.com");
    let http = http();
    for (method, path, token) in [
        ("GET", "/user", "garbage".to_owned()),
        ("POST", "/auth/signout", mock.token_for(alice)),
        ("GET", "/user/disconnect", mock.token_for(alice)),
    ] {
        let before = now_s();
        let answer = http
            .request(method.parse().unwrap(), format!("{}{path}", mock.url()))
            .header("cookie", format!("auth={token}"))
            .send()
            .await
            .unwrap();
        let after = now_s();
        assert!(
            answer.status() == 401 || answer.status() == 204,
            "{path}: {}",
            answer.status()
        );
        let set_cookie = answer.headers()["set-cookie"].to_str().unwrap().to_owned();
        let attributes: Vec<&str> = set_cookie.split("; ").collect();
        assert_eq!(attributes[0], "auth=", "{path}: {set_cookie}");
        for attribute in ["Max-Age=0", "Path=/", "HttpOnly"] {
            assert!(attributes.contains(&attribute), "{path}: {set_cookie}");
        }
        let expires = attributes
            .iter()
            .find_map(|a| a.strip_prefix("Expires="))
            .expect("an Expires attribute");
        let expires = http_date_s(expires);
        assert!(
            before <= expires && expires <= after,
            "{path}: Expires is not the time of the answer: {set_cookie}"
        );
    }
}

/// id6.md: "A bad cookie makes **every** route of the authentication server answer 401 this
/// way, even sign-out and login." The mock's `POST /auth/login` signed the browser in anyway.
#[tokio::test]
async fn login_with_a_bad_cookie_is_refused_like_every_route() {
    let mock = MockId6::start().await.unwrap();
    let alice = mock.add_user("Alice", "alice@example.com");
    let revoked = mock.token_for(alice);
    mock.revoke_tokens_at(alice, common::now_ms() + 1);
    for (cookie, code) in [
        ("auth=garbage".to_owned(), "invalid_token"),
        (format!("auth={revoked}"), "token_revoked"),
    ] {
        let answer = http()
            .post(format!("{}/auth/login", mock.url()))
            .header("cookie", &cookie)
            .header("content-type", "application/x-www-form-urlencoded")
            .body(format!("userId={alice}&redirect=%2F"))
            .send()
            .await
            .unwrap();
        assert_eq!(answer.status(), 401, "{code}");
        assert!(answer.headers().get("location").is_none(), "{code}");
        let set_cookie = answer.headers()["set-cookie"].to_str().unwrap().to_owned();
        assert!(set_cookie.starts_with("auth=;"), "{code}: {set_cookie}");
        let body = body_json(answer).await;
        assert_eq!(body["statusCode"], 401);
        assert_eq!(body["path"], "/auth/login");
        assert_eq!(body["errorCode"], code);
    }
}

/// id6.md: `GET /user` "Supports `ETag` / `If-None-Match` → `304` without a body." The mock
/// sent no `ETag` and answered every conditional request in full.
#[tokio::test]
async fn get_user_answers_304_to_a_matching_if_none_match() {
    let mock = MockId6::start().await.unwrap();
    let alice = mock.add_user("Alice", "alice@example.com");
    let token = mock.token_for(alice);
    let http = http();
    let get = |if_none_match: Option<String>| {
        let mut request = http
            .get(format!("{}/user", mock.url()))
            .header("cookie", format!("auth={token}"));
        if let Some(tag) = if_none_match {
            request = request.header("if-none-match", tag);
        }
        request.send()
    };
    let first = get(None).await.unwrap();
    assert_eq!(first.status(), 200);
    let etag = first
        .headers()
        .get("etag")
        .expect("id6 sends an ETag with the user")
        .to_str()
        .unwrap()
        .to_owned();
    let again = get(Some(etag.clone())).await.unwrap();
    assert_eq!(again.status(), 304);
    assert!(again.bytes().await.unwrap().is_empty());
    // Another user JSON, another tag: the old one no longer matches.
    mock.rename_user(alice, "Alicia");
    let changed = get(Some(etag)).await.unwrap();
    assert_eq!(changed.status(), 200);
    assert_eq!(body_json(changed).await["name"], "Alicia");
}

/// id6.md: `errorCode` `invalid_token` covers "garbage, wrong signature, alg none, past
/// `exp`". The mock ignored `exp` and let a token past it through.
#[tokio::test]
async fn a_token_past_its_exp_is_invalid() {
    const SECRET: &[u8] = b"the id6 secret";
    let mock = MockId6::builder().jwt_secret(SECRET).start().await.unwrap();
    let alice = mock.add_user("Alice", "alice@example.com");
    let sign = |exp: u64| {
        let now = common::now_ms();
        let claims = json!({"userId": alice, "issuedAt": now, "iat": now / 1000, "exp": exp});
        jsonwebtoken::encode(
            &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
            &claims,
            &jsonwebtoken::EncodingKey::from_secret(SECRET),
        )
        .unwrap()
    };
    let http = http();
    let user = |token: String| {
        http.get(format!("{}/user", mock.url()))
            .header("cookie", format!("auth={token}"))
            .send()
    };
    // Control: an `exp` an hour ahead is honoured.
    assert_eq!(user(sign(now_s() + 3600)).await.unwrap().status(), 200);

    let past = sign(now_s() - 60);
    let answer = user(past.clone()).await.unwrap();
    assert_eq!(answer.status(), 401);
    assert_eq!(body_json(answer).await["errorCode"], "invalid_token");

    let answer = http
        .post(format!("{}/authorize", mock.authorization_url()))
        .header("authorization", mock.authorization_secret())
        .header("content-type", "application/json")
        .body(json!({ "token": past }).to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), 200);
    let body = body_json(answer).await;
    assert_eq!(body["error"]["code"], "invalid_token", "{body}");
    assert!(body.get("user").is_none(), "{body}");
}

/// id6.md: `POST /user/profile`, "JSON only". The mock parsed the body as JSON whatever its
/// `Content-Type` and applied it.
#[tokio::test]
async fn a_profile_not_sent_as_json_is_refused() {
    let mock = MockId6::start().await.unwrap();
    let alice = mock.add_user("Alice", "alice@example.com");
    let token = mock.token_for(alice);
    for content_type in [Some("text/plain"), None] {
        let mut request = http()
            .post(format!("{}/user/profile", mock.url()))
            .header("cookie", format!("auth={token}"))
            .body(r#"{"name":"Mallory"}"#);
        if let Some(content_type) = content_type {
            request = request.header("content-type", content_type);
        }
        let answer = request.send().await.unwrap();
        assert_eq!(answer.status(), 400, "{content_type:?}");
        assert_eq!(
            mock.user_json(alice).unwrap()["name"],
            "Alice",
            "{content_type:?}"
        );
    }
}

/// id6.md: `language` is "an ISO 639-1 code". The mock took any two lowercase letters.
#[tokio::test]
async fn a_language_outside_iso_639_1_is_refused() {
    let mock = MockId6::start().await.unwrap();
    let alice = mock.add_user("Alice", "alice@example.com");
    let token = mock.token_for(alice);
    let update = |language: &str| {
        http()
            .post(format!("{}/user/profile", mock.url()))
            .header("cookie", format!("auth={token}"))
            .header("content-type", "application/json")
            .body(json!({"name": "Alice", "language": language}).to_string())
            .send()
    };
    assert_eq!(update("fr").await.unwrap().status(), 204);
    for language in ["zz", "qq", "xx"] {
        let answer = update(language).await.unwrap();
        assert_eq!(answer.status(), 400, "{language}");
        let body = body_json(answer).await;
        assert_eq!(body["errorCode"], "invalid_body", "{language}");
        assert_eq!(body["errorDetails"][0]["path"][0], "language", "{language}");
    }
    assert_eq!(mock.user_json(alice).unwrap()["language"], "fr");
}

async fn upload(mock: &MockId6, token: &str, form: reqwest::multipart::Form) -> (u16, Value) {
    let answer = http()
        .post(format!("{}/user/picture", mock.url()))
        .header("cookie", format!("auth={token}"))
        .multipart(form)
        .send()
        .await
        .unwrap();
    (answer.status().as_u16(), body_json(answer).await)
}

fn picture(bytes: Vec<u8>, file_name: &str) -> reqwest::multipart::Form {
    let part = reqwest::multipart::Part::bytes(bytes).file_name(file_name.to_owned());
    reqwest::multipart::Form::new().part("picture", part)
}

/// id6.md: the picture's URL is `/api/user/picture?v=<md5>`, "changing at each upload". The
/// mock's version was a digest of the bytes alone: the same picture twice, the same URL.
#[tokio::test]
async fn the_picture_url_changes_at_each_upload() {
    let mock = MockId6::start().await.unwrap();
    let alice = mock.add_user("Alice", "alice@example.com");
    let token = mock.token_for(alice);
    let png = b"\x89PNG\r\n\x1a\n the same bytes".to_vec();
    let (status, first) = upload(&mock, &token, picture(png.clone(), "me.png")).await;
    assert_eq!(status, 200);
    let (status, second) = upload(&mock, &token, picture(png, "me.png")).await;
    assert_eq!(status, 200);
    assert!(first["picture"]
        .as_str()
        .unwrap()
        .starts_with("/api/user/picture?v="));
    assert_ne!(first["picture"], second["picture"]);
    assert_eq!(mock.user_json(alice).unwrap()["picture"], second["picture"]);
}

/// id6.md: "A request with no file part returns `200 {}` and changes nothing." A text field
/// named `picture` is no file part; the mock refused it `400 format_not_allowed`.
#[tokio::test]
async fn a_picture_field_without_a_file_is_no_file_part() {
    let mock = MockId6::start().await.unwrap();
    let alice = mock.add_user("Alice", "alice@example.com");
    let token = mock.token_for(alice);
    let form = reqwest::multipart::Form::new().text("picture", "not a file");
    assert_eq!(upload(&mock, &token, form).await, (200, json!({})));
    assert!(mock.picture_of(alice).is_none());
    assert!(mock.user_json(alice).unwrap().get("picture").is_none());
}

/// id6.md: "No size limit on the server (code)." The mock refused a body over 64 MiB.
#[tokio::test]
async fn a_picture_over_64_mib_is_accepted() {
    let mock = MockId6::start().await.unwrap();
    let alice = mock.add_user("Alice", "alice@example.com");
    let token = mock.token_for(alice);
    let size = 64 * 1024 * 1024 + 1;
    let (status, body) = upload(&mock, &token, picture(vec![7u8; size], "big.png")).await;
    assert_eq!(status, 200, "{body}");
    assert!(body["picture"].is_string(), "{body}");
    assert_eq!(mock.picture_of(alice).map(|p| p.len()), Some(size));
}

/// id6.md: "Both servers: 100 requests per 60 s per client IP": the authentication and the
/// authorization servers each count their own. The mock counted both in one bucket, so calls
/// to `/authorize` used up `/user`'s allowance and the reverse.
#[tokio::test]
async fn each_server_has_its_own_rate_limit() {
    let mock = MockId6::builder()
        .rate_limit(2, Duration::from_secs(3600))
        .start()
        .await
        .unwrap();
    let http = http();
    for remaining in ["1", "0"] {
        let answer = http
            .get(format!("{}/user", mock.url()))
            .send()
            .await
            .unwrap();
        assert_eq!(answer.status(), 200);
        assert_eq!(answer.headers()["x-ratelimit-remaining"], remaining);
    }
    let answer = http
        .post(format!("{}/authorize", mock.authorization_url()))
        .header("authorization", mock.authorization_secret())
        .header("content-type", "application/json")
        .body(r#"{"token":"garbage"}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), 200);
    assert_eq!(answer.headers()["x-ratelimit-remaining"], "1");
    let answer = http
        .get(format!("{}/user", mock.url()))
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), 429);
}
