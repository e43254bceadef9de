//! What every tpc gRPC server has around its own services: the standard health service, server
//! reflection (so `grpcurl list` works), a request size limit, and graceful shutdown.

use std::future::Future;

use tokio::net::TcpListener;
use tokio_stream::StreamExt;
use tokio_stream::wrappers::TcpListenerStream;
use tonic::transport::server::Router;
use tonic_health::ServingStatus;

/// A server builder with health and reflection already added. `services` are the fully qualified names
/// reported as SERVING by the health service (the empty name, the whole server, always is).
pub async fn router(services: &[&str]) -> Router {
    let (reporter, health) = tonic_health::server::health_reporter();
    for name in services {
        reporter
            .set_service_status(*name, ServingStatus::Serving)
            .await;
    }
    let reflection = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(tpc_proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()
        // The descriptor sets are compiled into the binary; failing to parse them is a build bug.
        .expect("compiled-in descriptor sets are valid");
    tonic::transport::Server::builder()
        .add_service(health)
        .add_service(reflection)
}

/// Serves `router` on `listener` until `shutdown` completes, then lets in-flight RPCs finish.
///
/// Every accepted socket gets `TCP_NODELAY`: gRPC writes a reply as several small frames, and with
/// Nagle's algorithm the last one waits for the peer's delayed ACK (~40 ms on Linux) — that alone made one
/// client's change take 44 ms instead of 2. (tonic sets it only on listeners it binds itself.)
pub async fn run(
    router: Router,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), tonic::transport::Error> {
    let incoming = TcpListenerStream::new(listener).map(|accepted| {
        accepted.inspect(|stream| {
            if let Err(e) = stream.set_nodelay(true) {
                tracing::warn!(cause = %e, "cannot set TCP_NODELAY on an accepted connection");
            }
        })
    });
    router
        .serve_with_incoming_shutdown(incoming, shutdown)
        .await
}
