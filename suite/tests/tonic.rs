//! The layer on a real tonic server, called by a real tonic client over loopback.

#[path = "../examples/support/whoami.rs"]
mod whoami;

use std::time::Duration;

use id6_tower::testing::MockId6;
use id6_tower::{Id6, TokenLocation, UserToken};
use tonic::transport::Server;
use tonic::Code;
use tower::Layer;
use whoami::{GetRequest, Identity, WhoAmIClient, WhoAmIServer};

/// Serves `whoami` behind `id6.layer()`: the strict service, or the lenient one guarded by
/// `id6.require_user().grpc()`.
async fn serve(id6: &Id6, guarded: bool) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener);
    let mut server = Server::builder().layer(id6.layer());
    let router = if guarded {
        server.add_service(
            id6.require_user()
                .grpc()
                .layer(WhoAmIServer::new(whoami::Lenient)),
        )
    } else {
        server.add_service(WhoAmIServer::new(whoami::Service))
    };
    tokio::spawn(router.serve_with_incoming(incoming));
    format!("http://{addr}")
}

enum Carry<'a> {
    Nothing,
    Cookie(&'a str),
    Bearer(&'a str),
}

async fn call(url: &str, carry: Carry<'_>) -> Result<Identity, tonic::Status> {
    let mut client = WhoAmIClient::connect(url.to_owned()).await.unwrap();
    let mut request = tonic::Request::new(GetRequest {});
    let metadata = request.metadata_mut();
    match carry {
        Carry::Nothing => {}
        Carry::Cookie(token) => {
            metadata.insert(
                "cookie",
                format!("theme=dark; auth={token}").parse().unwrap(),
            );
        }
        Carry::Bearer(token) => {
            metadata.insert("authorization", format!("Bearer {token}").parse().unwrap());
        }
    }
    client.get(request).await.map(tonic::Response::into_inner)
}

fn id6(mock: &MockId6, locations: &[TokenLocation]) -> Id6 {
    Id6::builder(mock.url())
        .timeout(Duration::from_millis(500))
        .token_locations(locations.iter().copied())
        .build()
        .unwrap()
}

#[tokio::test]
async fn a_signed_in_call_sees_its_user() {
    let mock = MockId6::start().await.unwrap();
    let alice = mock.add_user("Alice", "a@example.com");
    let token = mock.token_for(alice);
    for guarded in [false, true] {
        let url = serve(&id6(&mock, &[TokenLocation::Cookie]), guarded).await;
        let identity = call(&url, Carry::Cookie(&token)).await.unwrap();
        assert_eq!((identity.id, identity.name.as_str()), (alice, "Alice"));
        assert!(identity.signed_in);
    }
}

#[tokio::test]
async fn anonymous_calls_get_unauthenticated_from_the_method_and_the_guard() {
    let mock = MockId6::start().await.unwrap();
    let handle = id6(&mock, &[TokenLocation::Cookie]);
    for guarded in [false, true] {
        let url = serve(&handle, guarded).await;
        for (carry, message) in [
            (Carry::Nothing, "You are not authenticated"),
            // id6's words for a refused token.
            (Carry::Cookie("not.a.token"), "Invalid token"),
        ] {
            let status = call(&url, carry).await.unwrap_err();
            assert_eq!(status.code(), Code::Unauthenticated, "guarded: {guarded}");
            assert_eq!(status.message(), message);
        }
    }
    // The lenient method alone would have served the anonymous caller.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(
        Server::builder()
            .layer(handle.layer())
            .add_service(WhoAmIServer::new(whoami::Lenient))
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
    );
    let identity = call(&format!("http://{addr}"), Carry::Nothing)
        .await
        .unwrap();
    assert!(!identity.signed_in);
}

#[tokio::test]
async fn id6_down_is_unavailable() {
    let mock = MockId6::start().await.unwrap();
    let alice = mock.add_user("Alice", "a@example.com");
    let token = mock.token_for(alice);
    mock.shutdown().await;
    let handle = id6(&mock, &[TokenLocation::Cookie]);
    for guarded in [false, true] {
        let url = serve(&handle, guarded).await;
        let status = call(&url, Carry::Cookie(&token)).await.unwrap_err();
        assert_eq!(status.code(), Code::Unavailable, "guarded: {guarded}");
        // The cause (a refused connection) is for the logs, not the caller.
        assert_eq!(
            status.message(),
            "The authentication service is unavailable, retry later"
        );
    }
}

#[tokio::test]
async fn bearer_metadata_counts_only_when_enabled() {
    let mock = MockId6::start().await.unwrap();
    let alice = mock.add_user("Alice", "a@example.com");
    let token = mock.token_for(alice);

    let cookie_only = serve(&id6(&mock, &[TokenLocation::Cookie]), false).await;
    let status = call(&cookie_only, Carry::Bearer(&token)).await.unwrap_err();
    assert_eq!(status.code(), Code::Unauthenticated);
    assert_eq!(
        mock.user_calls(),
        0,
        "an ignored source is never sent to id6"
    );

    let with_bearer = serve(
        &id6(&mock, &[TokenLocation::Cookie, TokenLocation::Bearer]),
        false,
    )
    .await;
    let identity = call(&with_bearer, Carry::Bearer(&token)).await.unwrap();
    assert_eq!(identity.id, alice);
    // id6 received the bearer token as its cookie.
    assert_eq!(mock.user_calls_for(&token), 1);
    let sent = mock.requests().pop().unwrap();
    assert_eq!(
        sent.cookie.as_deref(),
        Some(format!("auth={token}").as_str())
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_grpc_calls_with_one_cold_token_make_one_id6_call() {
    let mock = MockId6::start().await.unwrap();
    let alice = mock.add_user("Alice", "a@example.com");
    let token = mock.token_for(alice);
    let handle = id6(&mock, &[TokenLocation::Cookie]);
    let url = serve(&handle, false).await;
    mock.hold_user_answers();
    let calls: Vec<_> = (0..50)
        .map(|_| {
            let (url, token) = (url.clone(), token.clone());
            tokio::spawn(async move { call(&url, Carry::Cookie(&token)).await })
        })
        .collect();
    // Every call has missed the cache and waits on the one id6 call.
    let all_waiting = async {
        mock.wait_for_held_answers(1).await;
        while handle.stats().misses < 50 {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    };
    tokio::time::timeout(Duration::from_secs(10), all_waiting)
        .await
        .expect("fifty calls waiting on one id6 call");
    mock.release_user_answers();
    for c in calls {
        assert_eq!(c.await.unwrap().unwrap().id, alice);
    }
    assert_eq!(mock.user_calls(), 1);
    assert_eq!(handle.stats().coalesced, 49);
}

#[tokio::test]
async fn a_server_stream_ends_with_unauthenticated_after_sign_out() {
    let mock = MockId6::start().await.unwrap();
    let alice = mock.add_user("Alice", "alice@example.com");
    let token = mock.token_for(alice);
    let id6 = id6(&mock, &[TokenLocation::Cookie]);
    let url = serve(&id6, false).await;

    let mut client = WhoAmIClient::connect(url).await.unwrap();
    let mut request = tonic::Request::new(GetRequest {});
    let cookie = format!("auth={token}").parse().unwrap();
    request.metadata_mut().insert("cookie", cookie);
    let mut stream = client.watch(request).await.unwrap().into_inner();
    let first = stream.message().await.unwrap().expect("an identity");
    assert_eq!(first.name, "Alice");

    id6.sign_out(&UserToken::new(&token).unwrap())
        .await
        .unwrap();
    let ended = tokio::time::timeout(Duration::from_secs(1), async {
        loop {
            match stream.message().await {
                Ok(Some(_)) => continue,
                other => return other,
            }
        }
    })
    .await
    .expect("the stream ends within a second");
    let status = ended.unwrap_err();
    assert_eq!(status.code(), Code::Unauthenticated);
    // Ended by a sign-out, in its own words (id6 would still accept the token).
    assert_eq!(
        status.message(),
        id6_tower::TokenRejection::SignedOut.message()
    );
}

#[tokio::test]
async fn a_condition_or_csrf_guard_answers_permission_denied() {
    let mock = MockId6::start().await.unwrap();
    let alice = mock.add_user("Alice", "alice@example.com");
    let bob = mock.add_user("Bob", "bob@example.com");
    let handle = id6(&mock, &[TokenLocation::Cookie]);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let only_alice = handle
        .require_user_where(|user: &id6_tower::User| user.name == "Alice")
        .grpc();
    tokio::spawn(
        Server::builder()
            .layer(handle.layer())
            .add_service(only_alice.layer(WhoAmIServer::new(whoami::Lenient)))
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
    );
    let url = format!("http://{addr}");
    let alice = mock.token_for(alice);
    assert_eq!(
        call(&url, Carry::Cookie(&alice)).await.unwrap().name,
        "Alice"
    );
    let status = call(&url, Carry::Cookie(&mock.token_for(bob)))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::PermissionDenied);

    // A gRPC call is a POST: from a browser page of another site, with the cookie, refused.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(
        Server::builder()
            .layer(handle.layer())
            .add_service(
                handle
                    .csrf()
                    .grpc()
                    .layer(WhoAmIServer::new(whoami::Lenient)),
            )
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
    );
    let mut client = WhoAmIClient::connect(format!("http://{addr}"))
        .await
        .unwrap();
    let mut request = tonic::Request::new(GetRequest {});
    let metadata = request.metadata_mut();
    metadata.insert("cookie", format!("auth={alice}").parse().unwrap());
    metadata.insert("origin", "https://evil.example".parse().unwrap());
    let status = client.get(request).await.unwrap_err();
    assert_eq!(status.code(), Code::PermissionDenied);
    let mut request = tonic::Request::new(GetRequest {});
    request
        .metadata_mut()
        .insert("cookie", format!("auth={alice}").parse().unwrap());
    assert_eq!(
        client.get(request).await.unwrap().into_inner().name,
        "Alice"
    );
}

/// Without the layer, a method's `require_user` and a `.grpc()` guard answer `INTERNAL`, as
/// the HTTP side answers 500: the client is told nothing of the wiring (the fix goes to the
/// log, an error event), the message being the HTTP body's.
#[tokio::test]
async fn a_missing_layer_is_internal_and_says_nothing_internal() {
    let mock = MockId6::start().await.unwrap();
    let alice = mock.add_user("Alice", "alice@example.com");
    let token = mock.token_for(alice);
    let handle = id6(&mock, &[TokenLocation::Cookie]);
    for guarded in [false, true] {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener);
        // No `.layer(id6.layer())`.
        let mut server = Server::builder();
        let router = if guarded {
            server.add_service(
                handle
                    .require_user()
                    .grpc()
                    .layer(WhoAmIServer::new(whoami::Lenient)),
            )
        } else {
            server.add_service(WhoAmIServer::new(whoami::Service))
        };
        tokio::spawn(router.serve_with_incoming(incoming));
        let status = call(&format!("http://{addr}"), Carry::Cookie(&token))
            .await
            .unwrap_err();
        assert_eq!(status.code(), Code::Internal, "guarded: {guarded}");
        assert_eq!(status.message(), "Internal error", "guarded: {guarded}");
    }
}
