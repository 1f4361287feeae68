//! The axum example's long-lived connections, over loopback: `/ws` and `/events` end when
//! their token dies, and cost id6 one call per token per TTL however many are open.

mod common;

#[allow(dead_code, unreachable_pub)]
#[path = "../examples/axum.rs"]
mod example;

use std::sync::Arc;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use id6_tower::testing::{advance_clock, freeze_clock, settle, MockId6};
use id6_tower::Id6;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::{Error as WsError, Message};

/// Well above what any of these takes on loopback (milliseconds), for a loaded machine.
const PROMPTLY: Duration = Duration::from_secs(1);

type Socket =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

struct App {
    mock: MockId6,
    /// The example's handle, on a frozen clock that the tests move.
    id6: Id6,
    base: String,
    http: reqwest::Client,
    alice: u64,
    /// Alice's cookie value (`auth=…`).
    cookie: String,
}

async fn start(ttl: Duration) -> App {
    let mock = MockId6::start().await.unwrap();
    let alice = mock.add_user("Alice", "alice@example.com");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let id6 = Id6::builder(mock.url()).cache_ttl(ttl).build().unwrap();
    freeze_clock(&id6);
    let state = example::AppState {
        id6: id6.clone(),
        login_url: None,
        public_url: base.clone(),
        admin_emails: Arc::from(Vec::new()),
    };
    let app = example::app(state);
    tokio::spawn(async move { axum::serve(listener, app).await });
    App {
        cookie: format!("auth={}", mock.token_for(alice)),
        id6,
        alice,
        mock,
        base,
        http: common::http_client_no_redirect(),
    }
}

impl App {
    /// Opens `/ws` with `cookie` (and `origin`, if any): the socket, or the refusal's status.
    async fn socket(&self, cookie: Option<&str>, origin: Option<&str>) -> Result<Socket, u16> {
        let url = format!("{}/ws", self.base.replacen("http", "ws", 1));
        let mut request = url.into_client_request().unwrap();
        if let Some(cookie) = cookie {
            request
                .headers_mut()
                .insert("cookie", cookie.parse().unwrap());
        }
        if let Some(origin) = origin {
            request
                .headers_mut()
                .insert("origin", origin.parse().unwrap());
        }
        match tokio_tungstenite::connect_async(request).await {
            Ok((mut socket, response)) => {
                assert_eq!(response.status().as_u16(), 101);
                let greeting = next_text(&mut socket).await;
                assert_eq!(greeting.as_deref(), Some("signed in as Alice"));
                Ok(socket)
            }
            Err(WsError::Http(response)) => Err(response.status().as_u16()),
            Err(other) => panic!("no handshake: {other}"),
        }
    }

    async fn post(&self, path: &str, cookie: &str) -> u16 {
        let response = self
            .http
            .post(format!("{}{path}", self.base))
            .header("cookie", cookie)
            .send()
            .await
            .unwrap();
        response.status().as_u16()
    }
}

async fn next_text(socket: &mut Socket) -> Option<String> {
    loop {
        match socket.next().await? {
            Ok(Message::Text(text)) => return Some(text.to_string()),
            Ok(Message::Close(_)) | Err(_) => return None,
            Ok(_) => {}
        }
    }
}

/// Waits for the server's close frame: its code and reason.
async fn closed(socket: &mut Socket) -> (CloseCode, String) {
    closed_within(socket, PROMPTLY).await
}

/// [`closed`], within `bound`.
async fn closed_within(socket: &mut Socket, bound: Duration) -> (CloseCode, String) {
    let wait = async {
        loop {
            match socket.next().await {
                Some(Ok(Message::Close(Some(frame)))) => {
                    return (frame.code, frame.reason.to_string())
                }
                Some(Ok(_)) => {}
                other => panic!("the socket ended without a close frame: {other:?}"),
            }
        }
    };
    tokio::time::timeout(bound, wait)
        .await
        .unwrap_or_else(|_| panic!("not closed within {bound:?}"))
}

#[tokio::test]
async fn a_signed_in_upgrade_is_served_and_an_anonymous_one_refused() {
    let app = start(Duration::from_secs(60)).await;
    let mut socket = app.socket(Some(&app.cookie), None).await.unwrap();
    socket.send(Message::Text("ping".into())).await.unwrap();
    assert_eq!(next_text(&mut socket).await.as_deref(), Some("ping"));

    assert_eq!(app.socket(None, None).await.err(), Some(401));
    assert_eq!(
        app.socket(Some("auth=garbage"), None).await.err(),
        Some(401)
    );
}

#[tokio::test]
async fn a_cross_site_upgrade_carrying_the_cookie_is_refused() {
    let app = start(Duration::from_secs(60)).await;
    let own = app.base.clone();
    assert_eq!(
        app.socket(Some(&app.cookie), Some("https://evil.example"))
            .await
            .err(),
        Some(403),
        "cross-site WebSocket hijacking"
    );
    assert!(
        app.socket(Some(&app.cookie), Some(&own)).await.is_ok(),
        "own origin"
    );
    assert_eq!(
        app.socket(None, Some("https://evil.example")).await.err(),
        Some(401),
        "no cookie: nothing to hijack, just anonymous"
    );
}

#[tokio::test]
async fn logout_everywhere_from_another_token_closes_the_socket() {
    let app = start(Duration::from_secs(60)).await;
    let mut socket = app.socket(Some(&app.cookie), None).await.unwrap();
    let phone = format!(
        "auth={}",
        app.mock
            .token_issued_at(app.alice, common::now_ms() - 60_000)
    );
    assert_eq!(app.post("/logout-everywhere", &phone).await, 204);
    let (code, reason) = closed(&mut socket).await;
    assert_eq!(code, CloseCode::Policy);
    assert_eq!(reason, "token_revoked");
}

#[tokio::test]
async fn logout_ends_that_tokens_socket_and_event_stream() {
    let app = start(Duration::from_secs(60)).await;
    let mut socket = app.socket(Some(&app.cookie), None).await.unwrap();
    let mut events = app
        .http
        .get(format!("{}/events", app.base))
        .header("cookie", &app.cookie)
        .send()
        .await
        .unwrap();
    assert_eq!(events.status(), 200);
    let first = events.chunk().await.unwrap().unwrap();
    assert!(String::from_utf8_lossy(&first).contains("data: tick 0"));

    assert_eq!(app.post("/logout", &app.cookie).await, 204);
    assert_eq!(
        closed(&mut socket).await,
        (CloseCode::Policy, "signed_out".to_owned())
    );
    let rest = tokio::time::timeout(PROMPTLY, async {
        let mut rest = String::new();
        while let Some(chunk) = events.chunk().await.unwrap() {
            rest.push_str(&String::from_utf8_lossy(&chunk));
        }
        rest
    })
    .await
    .expect("the stream ends within a second");
    assert!(
        rest.contains("event: revoked\ndata: signed_out"),
        "{rest:?}"
    );
}

#[tokio::test]
async fn an_anonymous_event_stream_is_refused() {
    let app = start(Duration::from_secs(60)).await;
    let response = app
        .http
        .get(format!("{}/events", app.base))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 401);
}

#[tokio::test]
async fn a_token_revoked_on_id6_alone_closes_its_sockets_at_its_recheck() {
    let ttl = Duration::from_secs(60);
    let app = start(ttl).await;
    let mut socket = app.socket(Some(&app.cookie), None).await.unwrap();
    // Revoked a second after the token was issued, on id6's clock.
    app.mock.advance_clock(Duration::from_secs(1));
    app.mock.revoke_tokens(app.alice);
    // The recheck, a tenth of the TTL before expiry, asks id6.
    advance_clock(&app.id6, ttl * 9 / 10);
    settle(&app.id6).await;
    let (_, reason) = closed(&mut socket).await;
    assert_eq!(reason, "token_revoked");
}

#[tokio::test]
async fn thirty_sockets_of_one_token_over_three_ttls_cost_four_calls() {
    let ttl = Duration::from_secs(60);
    let app = start(ttl).await;
    let mut sockets = Vec::new();
    for _ in 0..30 {
        sockets.push(app.socket(Some(&app.cookie), None).await.unwrap());
    }
    let token = app.cookie.trim_start_matches("auth=");
    // Opening them cost one call (the first upgrade's miss); then one recheck per 0.9 TTL:
    // at 0.9, 1.8 and 2.7 TTL (three TTLs in steps of a twentieth).
    for _ in 0..60 {
        advance_clock(&app.id6, ttl / 20);
        settle(&app.id6).await;
    }
    assert_eq!(app.mock.user_calls_for(token), 4);
    for socket in &mut sockets {
        socket
            .send(Message::Text("still here".into()))
            .await
            .unwrap();
        assert_eq!(next_text(socket).await.as_deref(), Some("still here"));
    }
}

/// A socket split into a reader and a writer task (axum's usual shape): the token's death
/// wakes the waiting reader, which closes it with 1008; the writer is refused afterwards.
#[tokio::test]
async fn a_split_socket_closes_when_the_token_dies() {
    use axum::extract::ws::{Message as AxumMessage, WebSocketUpgrade};
    use id6_tower::Session;

    async fn ticks(session: Session, upgrade: WebSocketUpgrade) -> axum::response::Response {
        upgrade.on_upgrade(move |socket| async move {
            let (mut writer, mut reader) = session.websocket(socket).split();
            let (read_all, reading_done) = tokio::sync::oneshot::channel::<()>();
            // The writer says hello, then idles: only the reader is waiting when the token
            // dies, and it must be the one woken. Afterwards the writer is refused.
            let writing = tokio::spawn(async move {
                writer.send(AxumMessage::Text("tick".into())).await.unwrap();
                let _ = reading_done.await;
                assert!(writer.send(AxumMessage::Text("late".into())).await.is_err());
            });
            while let Some(Ok(_)) = reader.next().await {}
            let _ = read_all.send(());
            writing.await.unwrap();
        })
    }

    let mock = MockId6::start().await.unwrap();
    let alice = mock.add_user("Alice", "alice@example.com");
    let token = mock.token_for(alice);
    let id6 = Id6::builder(mock.url()).build().unwrap();
    let app = axum::Router::new()
        .route("/ticks", axum::routing::get(ticks))
        .layer(id6.layer());
    let base = common::serve(app).await;
    let mut request = format!("{}/ticks", base.replacen("http", "ws", 1))
        .into_client_request()
        .unwrap();
    let cookie = format!("auth={token}").parse().unwrap();
    request.headers_mut().insert("cookie", cookie);
    let (mut socket, _) = tokio_tungstenite::connect_async(request).await.unwrap();
    assert_eq!(next_text(&mut socket).await.as_deref(), Some("tick"));

    id6.sign_out(&id6_tower::UserToken::new(&token).unwrap())
        .await
        .unwrap();
    let (code, reason) = closed(&mut socket).await;
    assert_eq!(code, CloseCode::Policy);
    assert_eq!(reason, "signed_out");
}
