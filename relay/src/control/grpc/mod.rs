//! sluice.v1 gRPC front end (tonic), with the standard grpc.health.v1 service and server
//! reflection so off-the-shelf clients (grpcurl, grpc_health_probe) work without the .proto.

mod convert;
mod gate;
mod service;

use std::path::PathBuf;

pub use gate::Gate;

pub use service::RelayService;
use sluice_proto::v1::FILE_DESCRIPTOR_SET;
use sluice_proto::v1::relay_server::RelayServer;
use tokio::net::TcpListener;
use tonic::transport::{Certificate, Identity, ServerTlsConfig};

use crate::config::GrpcConfig;
use tokio_stream::StreamExt as _;
use tokio_stream::wrappers::TcpListenerStream;

#[derive(Debug, thiserror::Error)]
pub enum GrpcError {
    #[error("gRPC reflection: {0}")]
    Reflection(#[from] tonic_reflection::server::Error),
    #[error("gRPC server: {0}")]
    Transport(#[from] tonic::transport::Error),
    #[error("cannot read {what} {path}: {source}")]
    Read {
        what: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{0} is empty")]
    EmptyToken(PathBuf),
    #[error("gRPC runtime: {0}")]
    Runtime(std::io::Error),
}

/// How the listener is protected: TLS (with optional client certificates) and the gate.
pub struct Security {
    tls: Option<ServerTlsConfig>,
    gate: Gate,
}

impl Security {
    /// Counts rejected calls into `metrics`.
    pub fn with_metrics(mut self, metrics: crate::metrics::ControlMetrics) -> Security {
        self.gate = self.gate.with_metrics(metrics);
        self
    }

    /// Reads the certificate, key, CA and token files the config names.
    pub fn from_config(config: &GrpcConfig) -> Result<Security, GrpcError> {
        let read = |what: &'static str, path: &PathBuf| {
            std::fs::read(path).map_err(|source| GrpcError::Read {
                what,
                path: path.clone(),
                source,
            })
        };
        let tls = match (&config.tls_cert, &config.tls_key) {
            (Some(cert), Some(key)) => {
                let mut tls = ServerTlsConfig::new().identity(Identity::from_pem(
                    read("TLS certificate", cert)?,
                    read("TLS key", key)?,
                ));
                if let Some(ca) = &config.tls_client_ca {
                    tls = tls.client_ca_root(Certificate::from_pem(read("client CA", ca)?));
                }
                Some(tls)
            }
            _ => None,
        };
        let token = match (&config.token, &config.token_file) {
            (Some(token), _) => Some(token.clone()),
            (None, Some(path)) => {
                let text = String::from_utf8_lossy(&read("token file", path)?).into_owned();
                let token = text.lines().next().unwrap_or("").trim().to_owned();
                if token.is_empty() {
                    return Err(GrpcError::EmptyToken(path.clone()));
                }
                Some(token)
            }
            (None, None) => None,
        };
        if !config.listen.ip().is_loopback() && tls.is_none() && token.is_none() {
            tracing::warn!(
                listen = %config.listen,
                "gRPC control plane reachable beyond loopback without TLS or token"
            );
        }
        Ok(Security {
            tls,
            gate: Gate::new(token, config.requests_per_second),
        })
    }
}

/// Serves sluice.v1, health and reflection on `listener` until `shutdown` resolves.
///
/// Plaintext (the default, loopback-only listener) runs on `runtime`, the session core's
/// single-threaded runtime ([`crate::control::core::Core::runtime`]): the HTTP/2 connection,
/// the per-request tasks and the core never cross threads, so a request is decoded, executed
/// and answered without waking another thread, and the replies that are ready go out in one
/// `writev` instead of one each. Measured in BENCHMARKS.md ("gRPC control plane").
///
/// With TLS the server gets a single-threaded runtime on a thread of its own (`sluice-grpc`)
/// instead: a TLS handshake costs about a millisecond of CPU, and a client that keeps opening
/// connections must not be able to stall the session core (timers, rtpproxy commands) with
/// them. Requests then cross to the core and back, as over the rtpproxy protocol.
pub async fn serve(
    runtime: &tokio::runtime::Handle,
    listener: TcpListener,
    service: RelayService,
    security: Security,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), GrpcError> {
    // Registered again with the serving runtime's reactor, on its thread.
    let listener = listener.into_std().map_err(GrpcError::Runtime)?;
    let tls = security.tls.is_some();
    let serve = async move {
        let listener = TcpListener::from_std(listener).map_err(GrpcError::Runtime)?;
        serve_here(listener, service, security, shutdown).await
    };
    if !tls {
        return runtime.spawn(serve).await.unwrap_or_else(|e| {
            Err(GrpcError::Runtime(std::io::Error::other(format!(
                "the gRPC server task ended abnormally: {e}"
            ))))
        });
    }
    let (done_tx, done_rx) = tokio::sync::oneshot::channel();
    std::thread::Builder::new()
        .name("sluice-grpc".into())
        .spawn(move || {
            let result = tokio::runtime::Builder::new_current_thread()
                // Every tick looks at the tasks woken from other threads (core replies) first,
                // so the replies that are ready go out together.
                .global_queue_interval(1)
                .enable_all()
                .build()
                .map_err(GrpcError::Runtime)
                .and_then(|runtime| runtime.block_on(serve));
            // Nobody waits any more when the daemon dropped the serving future.
            let _ = done_tx.send(result);
        })
        .map_err(GrpcError::Runtime)?;
    done_rx.await.unwrap_or_else(|_| {
        Err(GrpcError::Runtime(std::io::Error::other(
            "the gRPC thread panicked",
        )))
    })
}

async fn serve_here(
    listener: TcpListener,
    service: RelayService,
    security: Security,
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
    let mut builder = tonic::transport::Server::builder();
    if let Some(tls) = security.tls {
        builder = builder.tls_config(tls)?;
    }
    // Probes see NOT_SERVING as soon as shutdown starts, while in-flight calls finish.
    let reporter = health_reporter.clone();
    let shutdown = async move {
        shutdown.await;
        reporter
            .set_not_serving::<RelayServer<RelayService>>()
            .await;
    };
    // Our own listener, so tonic cannot set TCP_NODELAY: without it small replies wait for
    // Nagle / delayed ACKs (tens of milliseconds at the tail).
    let incoming = TcpListenerStream::new(listener).map(|conn| {
        conn.and_then(|stream| {
            stream.set_nodelay(true)?;
            Ok(stream)
        })
    });
    builder
        .add_service(health_service)
        .add_service(reflection)
        .add_service(RelayServer::with_interceptor(service, security.gate))
        .serve_with_incoming_shutdown(incoming, shutdown)
        .await?;
    Ok(())
}
