//! Daemon lifecycle: bind every listener up front (so a taken port fails startup, not later),
//! serve until told to stop, then shut down gracefully.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinSet;

use crate::config::Config;
use crate::control::core::{Core, CoreHandle};
use crate::control::grpc::{self, GrpcError, RelayService};
use crate::control::rtpp::handler::Handler;
use crate::control::rtpp::server::{self as rtpp_server, Acl, Listener};
use crate::datapath::user::SocketOpener;
use crate::datapath::xdp;
use crate::metrics::Metrics;
use crate::session::TableConfig;
use crate::session::latch::LatchPolicy;
use crate::session::table::InterfaceSpec;

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
    #[error("XDP fast path: {0}")]
    Xdp(#[from] crate::datapath::xdp::XdpError),
    #[error("metrics: {0}")]
    Metrics(#[from] prometheus::Error),
    #[error("metrics endpoint: {0}")]
    MetricsServe(std::io::Error),
    #[error("cannot listen for rtpproxy commands on {spec}: {source}")]
    RtppBind {
        spec: String,
        source: std::io::Error,
    },
    #[error("rtpproxy listener {spec}: {source}")]
    RtppServe {
        spec: String,
        source: std::io::Error,
    },
    #[error(transparent)]
    Grpc(#[from] GrpcError),
    #[error("a daemon task failed: {0}")]
    Task(#[from] tokio::task::JoinError),
    #[error("shutdown did not finish within {0:?}")]
    ShutdownTimeout(Duration),
    #[error("cannot start the datapath: {0}")]
    Datapath(std::io::Error),
}

pub struct Daemon {
    core: Option<Core>,
    handle: CoreHandle,
    rtpp_udp: Option<SocketAddr>,
    metrics_addr: SocketAddr,
    grpc_addr: SocketAddr,
    stop: watch::Sender<bool>,
    tasks: JoinSet<Result<(), DaemonError>>,
}

impl Daemon {
    /// Binds all listeners and starts serving. Must run inside a tokio runtime.
    pub async fn start(config: &Config) -> Result<Daemon, DaemonError> {
        let started = Instant::now();
        raise_fd_limit(config);
        let metrics = Metrics::new()?;
        let metrics_listener = bind("metrics", config.metrics.listen).await?;
        let grpc_listener = bind("gRPC", config.grpc.listen).await?;
        let grpc_security =
            grpc::Security::from_config(&config.grpc)?.with_metrics(metrics.control().clone());
        let metrics_addr = local_addr("metrics", &metrics_listener, config.metrics.listen)?;
        let grpc_addr = local_addr("gRPC", &grpc_listener, config.grpc.listen)?;
        let mut rtpp_listeners = Vec::new();
        for spec in &config.rtpproxy.listen {
            let listener = Listener::bind(spec)
                .await
                .map_err(|source| DaemonError::RtppBind {
                    spec: spec.to_string(),
                    source,
                })?;
            rtpp_listeners.push(listener);
        }
        let opener = SocketOpener {
            recv_buffer: config.media.recv_buffer,
        };
        let table_config = table_config(config);
        let latch = table_config.latch;
        let addresses: Vec<_> = table_config.interfaces.iter().map(|i| i.address).collect();
        let (fast_path, xdp_status) = xdp::start(&config.xdp, &addresses)?;
        for (device, mode) in &xdp_status.attached {
            tracing::info!(%device, %mode, "XDP fast path attached");
        }
        for why in &xdp_status.fallback {
            tracing::info!("XDP fast path not used: {why}");
        }
        metrics.set_xdp_status(&xdp_status);
        let (core, handle) =
            Core::start(table_config, opener, fast_path).map_err(DaemonError::Datapath)?;
        let notify_socket = (!config.rtpproxy.notify_socket.is_empty())
            .then(|| config.rtpproxy.notify_socket.clone());
        let rtpp = Arc::new(
            Handler::new(handle.clone(), latch, notify_socket.clone())
                .with_metrics(metrics.control().clone()),
        );
        let acl = Arc::new(Acl::new(config.rtpproxy.allow.clone()));
        let rtpp_addrs: Vec<String> = rtpp_listeners
            .iter()
            .map(Listener::local_description)
            .collect();
        let rtpp_udp = rtpp_listeners.iter().find_map(Listener::udp_addr);

        let (stop, stopped) = watch::channel(false);
        let until_stopped = move || {
            let mut rx = stopped.clone();
            async move {
                // An error means the sender is gone, which also means stop.
                let _ = rx.wait_for(|stop| *stop).await;
            }
        };
        let mut tasks = JoinSet::new();
        // The control front ends run on the session core's runtime: a command is parsed,
        // executed and answered on one thread (see control::core).
        let core_runtime = core.runtime().clone();
        for listener in rtpp_listeners {
            let spec = listener.local_description();
            let (handler, acl, stop) = (rtpp.clone(), acl.clone(), stop.subscribe());
            tasks.spawn_on(
                async move {
                    listener
                        .serve(handler, acl, stop)
                        .await
                        .map_err(|source| DaemonError::RtppServe { spec, source })
                },
                &core_runtime,
            );
        }
        if let Some(target) = notify_socket {
            let events = handle.subscribe();
            let mut stop_rx = stop.subscribe();
            tasks.spawn(async move {
                tokio::select! {
                    () = rtpp_server::notifier(target, events) => {},
                    _ = stop_rx.wait_for(|s| *s) => {},
                }
                Ok(())
            });
        }
        let metrics_stop = until_stopped();
        let grpc_service = RelayService::new(handle.clone(), started, latch, stop.subscribe())
            .with_metrics(metrics.control().clone());
        let metrics = metrics.with_core(handle.clone());
        tasks.spawn(async move {
            metrics
                .serve(metrics_listener, metrics_stop)
                .await
                .map_err(DaemonError::MetricsServe)
        });
        let grpc_stop = until_stopped();
        tasks.spawn(async move {
            grpc::serve(
                &core_runtime,
                grpc_listener,
                grpc_service,
                grpc_security,
                grpc_stop,
            )
            .await
            .map_err(DaemonError::from)
        });
        tracing::info!(
            metrics = %format!("http://{metrics_addr}/metrics"),
            grpc = %grpc_addr,
            rtpproxy = %rtpp_addrs.join(","),
            "sluice {} ready",
            crate::metrics::VERSION
        );
        Ok(Daemon {
            core: Some(core),
            handle,
            rtpp_udp,
            metrics_addr,
            grpc_addr,
            stop,
            tasks,
        })
    }

    /// The command core, for front ends and tests.
    pub fn core(&self) -> &CoreHandle {
        &self.handle
    }

    /// The first UDP rtpproxy listener's bound address.
    pub fn rtpp_udp_addr(&self) -> Option<SocketAddr> {
        self.rtpp_udp
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
        let served = match tokio::time::timeout(SHUTDOWN_GRACE, drain).await {
            Ok(result) => result,
            Err(_) => Err(DaemonError::ShutdownTimeout(SHUTDOWN_GRACE)),
        };
        // Front ends are gone: stop the core (it ends every session and closes the sockets).
        drop(self.handle);
        if let Some(core) = self.core.take() {
            let _ = tokio::task::spawn_blocking(move || core.join()).await;
        }
        served
    }
}

/// Every media port is a socket: raise the soft open-file limit to the hard limit (the usual
/// soft default of 1024 caps a relay at ~250 calls) and warn when even that is too small.
fn raise_fd_limit(config: &Config) {
    let media = &config.media;
    let ports: u64 = media
        .interfaces
        .iter()
        .map(|i| {
            let (min, max) = (
                i.port_min.unwrap_or(media.port_min),
                i.port_max.unwrap_or(media.port_max),
            );
            u64::from(max.saturating_sub(min)) + 1
        })
        .sum();
    let wanted = ports + 1024;
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: plain syscalls on a stack struct.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) != 0 {
            return;
        }
        if limit.rlim_cur < limit.rlim_max {
            let raised = libc::rlimit {
                rlim_cur: limit.rlim_max,
                rlim_max: limit.rlim_max,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &raised) == 0 {
                limit = raised;
            }
        }
    }
    if limit.rlim_cur < wanted {
        tracing::warn!(
            limit = limit.rlim_cur,
            wanted,
            "open-file limit is below the media port count: calls will fail with E71/E72 \
             before the port range is used up (raise LimitNOFILE / ulimit -n)"
        );
    }
}

/// The session table's view of the configuration.
pub fn table_config(config: &Config) -> TableConfig {
    let media = &config.media;
    let workers = match media.workers {
        0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
        n => n,
    };
    TableConfig {
        interfaces: media
            .interfaces
            .iter()
            .map(|i| InterfaceSpec {
                name: i.name.clone(),
                address: i.address,
                advertise: i.advertise,
                port_min: i.port_min.unwrap_or(media.port_min),
                port_max: i.port_max.unwrap_or(media.port_max),
            })
            .collect(),
        quarantine: media.quarantine,
        latch: LatchPolicy {
            mode: config.session.latch,
            relatch: config.session.relatch,
            window_ns: u64::try_from(config.session.relatch_window.as_nanos()).unwrap_or(u64::MAX),
        },
        dscp: media.dscp,
        setup_timeout: config.session.setup_timeout,
        media_timeout: config.session.media_timeout,
        session_ttl: (!config.session.session_ttl.is_zero()).then_some(config.session.session_ttl),
        max_sessions: config.session.max_sessions,
        workers,
        // Core::start turns it on when the fast path is running.
        offload: false,
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
