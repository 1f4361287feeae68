//! A tiny gRPC service, `whoami.WhoAmI/Get`, written by hand: what tonic-build would generate
//! from the proto below, so that building needs no `protoc`.
//!
//! ```proto
//! syntax = "proto3";
//! package whoami;
//! message GetRequest {}
//! message Identity { uint64 id = 1; string name = 2; bool signed_in = 3; }
//! service WhoAmI {
//!   rpc Get(GetRequest) returns (Identity);
//!   // The caller's identity every 100 ms, until their token dies (then `unauthenticated`).
//!   rpc Watch(GetRequest) returns (stream Identity);
//! }
//! ```
#![allow(dead_code)] // the example and the tests each use their own part

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use futures_util::Stream;
use tonic::{Request, Response, Status};

/// `GetRequest {}`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct GetRequest {}

/// `Identity { id, name, signed_in }`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Identity {
    #[prost(uint64, tag = "1")]
    pub id: u64,
    #[prost(string, tag = "2")]
    pub name: String,
    #[prost(bool, tag = "3")]
    pub signed_in: bool,
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

/// A server stream of identities.
pub type Identities = Pin<Box<dyn Stream<Item = Result<Identity, Status>> + Send>>;

/// The service's methods.
pub trait WhoAmI: Send + Sync + 'static {
    fn get(&self, request: Request<GetRequest>) -> BoxFuture<Result<Response<Identity>, Status>>;

    fn watch(
        &self,
        _request: Request<GetRequest>,
    ) -> BoxFuture<Result<Response<Identities>, Status>> {
        Box::pin(async { Err(Status::unimplemented("no watching here")) })
    }
}

/// The server side, as tonic-build writes it.
pub struct WhoAmIServer<T> {
    inner: Arc<T>,
}

impl<T> WhoAmIServer<T> {
    pub fn new(inner: T) -> Self {
        WhoAmIServer {
            inner: Arc::new(inner),
        }
    }
}

impl<T> Clone for WhoAmIServer<T> {
    fn clone(&self) -> Self {
        WhoAmIServer {
            inner: self.inner.clone(),
        }
    }
}

impl<T> tonic::server::NamedService for WhoAmIServer<T> {
    const NAME: &'static str = "whoami.WhoAmI";
}

struct GetSvc<T>(Arc<T>);

impl<T: WhoAmI> tonic::server::UnaryService<GetRequest> for GetSvc<T> {
    type Response = Identity;
    type Future = BoxFuture<Result<Response<Identity>, Status>>;

    fn call(&mut self, request: Request<GetRequest>) -> Self::Future {
        self.0.get(request)
    }
}

struct WatchSvc<T>(Arc<T>);

impl<T: WhoAmI> tonic::server::ServerStreamingService<GetRequest> for WatchSvc<T> {
    type Response = Identity;
    type ResponseStream = Identities;
    type Future = BoxFuture<Result<Response<Identities>, Status>>;

    fn call(&mut self, request: Request<GetRequest>) -> Self::Future {
        self.0.watch(request)
    }
}

impl<T, B> tower::Service<http::Request<B>> for WhoAmIServer<T>
where
    T: WhoAmI,
    B: http_body::Body + Send + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>> + Send + 'static,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = Infallible;
    type Future = BoxFuture<Result<Self::Response, Infallible>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        let inner = self.inner.clone();
        match request.uri().path() {
            "/whoami.WhoAmI/Get" => Box::pin(async move {
                let mut grpc = tonic::server::Grpc::new(tonic_prost::ProstCodec::default());
                Ok(grpc.unary(GetSvc(inner), request).await)
            }),
            "/whoami.WhoAmI/Watch" => Box::pin(async move {
                let mut grpc = tonic::server::Grpc::new(tonic_prost::ProstCodec::default());
                Ok(grpc.server_streaming(WatchSvc(inner), request).await)
            }),
            _ => Box::pin(async { Ok(Status::unimplemented("no such method").into_http()) }),
        }
    }
}

/// The client side, as tonic-build writes it.
pub struct WhoAmIClient {
    inner: tonic::client::Grpc<tonic::transport::Channel>,
}

impl WhoAmIClient {
    pub async fn connect(url: String) -> Result<Self, tonic::transport::Error> {
        let channel = tonic::transport::Endpoint::from_shared(url)?
            .connect()
            .await?;
        Ok(WhoAmIClient {
            inner: tonic::client::Grpc::new(channel),
        })
    }

    pub async fn get(
        &mut self,
        request: Request<GetRequest>,
    ) -> Result<Response<Identity>, Status> {
        self.inner
            .ready()
            .await
            .map_err(|e| Status::unknown(format!("service not ready: {e}")))?;
        let path = http::uri::PathAndQuery::from_static("/whoami.WhoAmI/Get");
        self.inner
            .unary(request, path, tonic_prost::ProstCodec::default())
            .await
    }
}

impl WhoAmIClient {
    pub async fn watch(
        &mut self,
        request: Request<GetRequest>,
    ) -> Result<Response<tonic::codec::Streaming<Identity>>, Status> {
        self.inner
            .ready()
            .await
            .map_err(|e| Status::unknown(format!("service not ready: {e}")))?;
        let path = http::uri::PathAndQuery::from_static("/whoami.WhoAmI/Watch");
        self.inner
            .server_streaming(request, path, tonic_prost::ProstCodec::default())
            .await
    }
}

/// The implementation the example and the tests serve: the caller's identity, or the
/// error `require_user` gives.
pub struct Service;

impl WhoAmI for Service {
    fn get(&self, request: Request<GetRequest>) -> BoxFuture<Result<Response<Identity>, Status>> {
        let answer = id6_tower::grpc::require_user(&request).map(|user| {
            Response::new(Identity {
                id: user.id,
                name: user.name.clone(),
                signed_in: true,
            })
        });
        Box::pin(async move { answer })
    }

    /// The caller's identity every 100 ms, for as long as their token lives: the stream
    /// ends with `unauthenticated` (id6's reason) after a sign-out.
    fn watch(
        &self,
        request: Request<GetRequest>,
    ) -> BoxFuture<Result<Response<Identities>, Status>> {
        let answer = id6_tower::grpc::session(&request).map(|session| {
            let user = session.user();
            let identity = Identity {
                id: user.id,
                name: user.name.clone(),
                signed_in: true,
            };
            let ticks = futures_util::stream::unfold(identity, |identity| async move {
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                Some((Ok(identity.clone()), identity))
            });
            let stream: Identities = Box::pin(session.grpc_stream(ticks));
            Response::new(stream)
        });
        Box::pin(async move { answer })
    }
}

/// Another implementation: anonymous callers are welcome, via `current_user`.
pub struct Lenient;

impl WhoAmI for Lenient {
    fn get(&self, request: Request<GetRequest>) -> BoxFuture<Result<Response<Identity>, Status>> {
        let answer = id6_tower::grpc::current_user(&request).map(|user| {
            Response::new(match user {
                Some(user) => Identity {
                    id: user.id,
                    name: user.name.clone(),
                    signed_in: true,
                },
                None => Identity {
                    id: 0,
                    name: "anonymous".to_owned(),
                    signed_in: false,
                },
            })
        });
        Box::pin(async move { answer })
    }
}
