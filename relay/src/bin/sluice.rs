//! `sluice`: the relay daemon.

use std::io::IsTerminal as _;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;
use clap::Parser;
use sluice::config::{Config, ConfigError, DEFAULT_TOML};
use sluice::daemon::Daemon;
use tokio::signal::unix::{SignalKind, signal};
use tracing_subscriber::EnvFilter;

/// RTP media relay with an XDP fast path.
///
/// Without --config it runs with the embedded defaults (see --print-default-config). Flags
/// override the matching config keys.
#[derive(Parser, Debug)]
#[command(name = "sluice", version)]
struct Cli {
    /// Configuration file (TOML).
    #[arg(short, long, value_name = "FILE")]
    config: Option<PathBuf>,

    /// Print the embedded default configuration and exit.
    #[arg(long)]
    print_default_config: bool,

    /// Validate a configuration file (or --config, or the defaults) and exit: 0 when valid.
    #[arg(long, value_name = "FILE", num_args = 0..=1)]
    check_config: Option<Option<PathBuf>>,

    /// Prometheus endpoint address (overrides metrics.listen).
    #[arg(long, value_name = "ADDR")]
    metrics_listen: Option<SocketAddr>,

    /// gRPC control-plane address (overrides grpc.listen).
    #[arg(long, value_name = "ADDR")]
    grpc_listen: Option<SocketAddr>,

    /// Log filter, e.g. "debug" or "sluice=debug,info" (overrides log.level; RUST_LOG wins).
    #[arg(long, value_name = "FILTER")]
    log_level: Option<String>,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if cli.print_default_config {
        print!("{DEFAULT_TOML}");
        return ExitCode::SUCCESS;
    }
    let config = match load_config(&cli) {
        Ok(config) => config,
        Err(e) => {
            eprintln!("sluice: {e}");
            return ExitCode::FAILURE;
        }
    };
    if cli.check_config.is_some() {
        println!("configuration ok");
        return ExitCode::SUCCESS;
    }
    match run(config) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e:#}");
            eprintln!("sluice: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn load_config(cli: &Cli) -> Result<Config, ConfigError> {
    let file = match &cli.check_config {
        Some(Some(path)) => Some(path),
        _ => cli.config.as_ref(),
    };
    let mut config = match file {
        Some(path) => Config::from_file(path)?,
        None => Config::embedded(),
    };
    let mut overridden = Vec::new();
    if let Some(addr) = cli.metrics_listen {
        config.metrics.listen = addr;
        overridden.push("--metrics-listen");
    }
    if let Some(addr) = cli.grpc_listen {
        config.grpc.listen = addr;
        overridden.push("--grpc-listen");
    }
    if let Some(level) = &cli.log_level {
        config.log.level.clone_from(level);
        overridden.push("--log-level");
    }
    if !overridden.is_empty() {
        config
            .validate()
            .map_err(|(key, message)| ConfigError::Flag {
                flag: format!("{} (key {key})", overridden.join(", ")),
                message,
            })?;
    }
    Ok(config)
}

fn run(config: Config) -> anyhow::Result<()> {
    let filter = EnvFilter::try_from_default_env()
        .or_else(|_| EnvFilter::try_new(&config.log.level))
        .context("log filter")?;
    // Logs go to stderr (journald/docker capture it); stdout stays for command output.
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("sluice-ctl")
        .build()
        .context("tokio runtime")?;
    runtime.block_on(async {
        // Installed before serving so an early SIGTERM is not lost.
        let mut int = signal(SignalKind::interrupt()).context("SIGINT handler")?;
        let mut term = signal(SignalKind::terminate()).context("SIGTERM handler")?;
        let daemon = Daemon::start(&config).await?;
        daemon
            .run_until(async move {
                tokio::select! {
                    _ = int.recv() => tracing::info!("SIGINT received"),
                    _ = term.recv() => tracing::info!("SIGTERM received"),
                }
            })
            .await?;
        tracing::info!("stopped");
        Ok(())
    })
}
