//! sluice.v1 gRPC front end (tonic), with the standard grpc.health.v1 service and server
//! reflection so off-the-shelf clients (grpcurl, grpc_health_probe) work without the .proto.

mod service;

pub use service::RelayService;
use sluice_proto::v1::FILE_DESCRIPTOR_SET;
use sluice_proto::v1::relay_server::RelayServer;
use tokio::net::TcpListener;
use tokio_stream::wrappers::TcpListenerStream;

#[derive(Debug, thiserror::Error)]
pub enum GrpcError {
    #[error("gRPC reflection: {0}")]
    Reflection(#[from] tonic_reflection::server::Error),
    #[error("gRPC server: {0}")]
    Transport(#[from] tonic::transport::Error),
}

/// Serves sluice.v1, health and reflection on `listener` until `shutdown` resolves.
pub async fn serve(
    listener: TcpListener,
    service: RelayService,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), GrpcError> {
    let (health_reporter, health_service) = tonic_health::server::health_reporter();
    health_reporter
        .set_serving::<RelayServer<RelayService>>()
        .await;
    let reflection = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()?;
    tonic::transport::Server::builder()
        .add_service(health_service)
        .add_service(reflection)
        .add_service(RelayServer::new(service))
        .serve_with_incoming_shutdown(TcpListenerStream::new(listener), shutdown)
        .await?;
    Ok(())
}
