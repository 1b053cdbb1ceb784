//! Daemon lifecycle: bind every listener up front (so a taken port fails startup, not later),
//! serve until told to stop, then shut down gracefully.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinSet;

use crate::config::Config;
use crate::control::grpc::{self, GrpcError, RelayService};
use crate::metrics::Metrics;

/// How long in-flight requests get to finish after a shutdown signal.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    #[error("cannot listen for {what} on {addr}: {source}")]
    Bind {
        what: &'static str,
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("metrics: {0}")]
    Metrics(#[from] prometheus::Error),
    #[error("metrics endpoint: {0}")]
    MetricsServe(std::io::Error),
    #[error(transparent)]
    Grpc(#[from] GrpcError),
    #[error("a daemon task failed: {0}")]
    Task(#[from] tokio::task::JoinError),
    #[error("shutdown did not finish within {0:?}")]
    ShutdownTimeout(Duration),
}

pub struct Daemon {
    metrics_addr: SocketAddr,
    grpc_addr: SocketAddr,
    stop: watch::Sender<bool>,
    tasks: JoinSet<Result<(), DaemonError>>,
}

impl Daemon {
    /// Binds all listeners and starts serving. Must run inside a tokio runtime.
    pub async fn start(config: &Config) -> Result<Daemon, DaemonError> {
        let started = Instant::now();
        let metrics = Metrics::new()?;
        let metrics_listener = bind("metrics", config.metrics.listen).await?;
        let grpc_listener = bind("gRPC", config.grpc.listen).await?;
        let metrics_addr = local_addr("metrics", &metrics_listener, config.metrics.listen)?;
        let grpc_addr = local_addr("gRPC", &grpc_listener, config.grpc.listen)?;

        let (stop, stopped) = watch::channel(false);
        let until_stopped = move || {
            let mut rx = stopped.clone();
            async move {
                // An error means the sender is gone, which also means stop.
                let _ = rx.wait_for(|stop| *stop).await;
            }
        };
        let mut tasks = JoinSet::new();
        let metrics_stop = until_stopped();
        tasks.spawn(async move {
            metrics
                .serve(metrics_listener, metrics_stop)
                .await
                .map_err(DaemonError::MetricsServe)
        });
        let grpc_stop = until_stopped();
        tasks.spawn(async move {
            grpc::serve(grpc_listener, RelayService::new(started), grpc_stop)
                .await
                .map_err(DaemonError::from)
        });
        tracing::info!(
            metrics = %format!("http://{metrics_addr}/metrics"),
            grpc = %grpc_addr,
            "sluice {} ready",
            crate::metrics::VERSION
        );
        Ok(Daemon {
            metrics_addr,
            grpc_addr,
            stop,
            tasks,
        })
    }

    pub fn metrics_addr(&self) -> SocketAddr {
        self.metrics_addr
    }

    pub fn grpc_addr(&self) -> SocketAddr {
        self.grpc_addr
    }

    /// Serves until `signal` resolves (then shuts down gracefully) or a task fails.
    pub async fn run_until(mut self, signal: impl Future<Output = ()>) -> Result<(), DaemonError> {
        let failure = tokio::select! {
            () = signal => None,
            Some(result) = self.tasks.join_next() => Some(flatten(result)),
        };
        let stopped = self.shutdown().await;
        match failure {
            Some(Err(e)) => Err(e),
            _ => stopped,
        }
    }

    /// Stops every listener and waits (bounded) for in-flight work to finish.
    pub async fn shutdown(mut self) -> Result<(), DaemonError> {
        tracing::info!("shutting down");
        let _ = self.stop.send(true);
        let drain = async {
            let mut first_error = None;
            while let Some(result) = self.tasks.join_next().await {
                if let Err(e) = flatten(result) {
                    first_error.get_or_insert(e);
                }
            }
            first_error.map_or(Ok(()), Err)
        };
        match tokio::time::timeout(SHUTDOWN_GRACE, drain).await {
            Ok(result) => result,
            Err(_) => Err(DaemonError::ShutdownTimeout(SHUTDOWN_GRACE)),
        }
    }
}

fn flatten(
    result: Result<Result<(), DaemonError>, tokio::task::JoinError>,
) -> Result<(), DaemonError> {
    result.map_err(DaemonError::Task).and_then(|r| r)
}

async fn bind(what: &'static str, addr: SocketAddr) -> Result<TcpListener, DaemonError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| DaemonError::Bind { what, addr, source })
}

fn local_addr(
    what: &'static str,
    listener: &TcpListener,
    addr: SocketAddr,
) -> Result<SocketAddr, DaemonError> {
    listener
        .local_addr()
        .map_err(|source| DaemonError::Bind { what, addr, source })
}
