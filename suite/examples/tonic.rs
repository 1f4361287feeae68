//! A gRPC service behind `id6.layer()`: `whoami.WhoAmI/Get` answers the caller's identity.
//!
//! Starts an embedded MockId6 (or uses `ID6_URL` and friends when set), serves the service
//! with tonic on 127.0.0.1:0, calls it as a signed-in caller (token in the `auth` cookie, as
//! grpc-web from a browser sends it, then as `authorization: Bearer` metadata) and as an
//! anonymous one, prints the answers and exits 0.
//!
//! ```text
//! cargo run -p id6-tower-suite --features tonic --example tonic
//! ```

#[path = "support/whoami.rs"]
mod whoami;

use id6_tower::testing::MockId6;
use id6_tower::{Id6, TokenLocation};
use tonic::transport::Server;
use whoami::{GetRequest, WhoAmIClient, WhoAmIServer};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mock = MockId6::start().await?;
    let alice = mock.add_user("Alice", "alice@example.com");
    let token = mock.token_for(alice);
    let id6 = Id6::builder(mock.url())
        .token_locations([TokenLocation::Cookie, TokenLocation::Bearer])
        .build()?;

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener);
    tokio::spawn(
        Server::builder()
            .layer(id6.layer())
            .add_service(WhoAmIServer::new(whoami::Service))
            .serve_with_incoming(incoming),
    );
    println!("WhoAmI on http://{addr}, id6 at {}\n", mock.url());

    let mut client = WhoAmIClient::connect(format!("http://{addr}")).await?;

    let mut request = tonic::Request::new(GetRequest {});
    request
        .metadata_mut()
        .insert("cookie", format!("auth={token}").parse()?);
    let identity = client.get(request).await?.into_inner();
    println!("cookie auth=<token>          -> {identity:?}");
    assert_eq!((identity.id, identity.name.as_str()), (alice, "Alice"));

    let mut request = tonic::Request::new(GetRequest {});
    request
        .metadata_mut()
        .insert("authorization", format!("Bearer {token}").parse()?);
    let identity = client.get(request).await?.into_inner();
    println!("authorization: Bearer <token> -> {identity:?}");
    assert!(identity.signed_in);

    let status = client
        .get(tonic::Request::new(GetRequest {}))
        .await
        .expect_err("an anonymous caller is refused");
    println!(
        "no token                      -> {:?}: {}",
        status.code(),
        status.message()
    );
    assert_eq!(status.code(), tonic::Code::Unauthenticated);

    println!(
        "\nid6 was asked {} time(s): the second call was a cache hit.",
        mock.user_calls()
    );
    assert_eq!(mock.user_calls(), 1);
    Ok(())
}
