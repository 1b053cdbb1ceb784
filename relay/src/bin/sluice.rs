//! `sluice`: the relay daemon.

use std::io::IsTerminal as _;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;
use clap::Parser;
use sluice::config::{Config, ConfigError, DEFAULT_TOML, InterfaceConfig, ListenSpec};
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

    /// Media interface `[NAME/]ADDR[!ADVERTISED]`, repeatable; replaces media.interface
    /// (rtpengine's syntax: ADVERTISED is the address put in SDP, e.g. behind 1:1 NAT).
    #[arg(long = "interface", value_name = "SPEC")]
    interfaces: Vec<InterfaceArg>,

    /// Lowest media port (overrides media.port_min).
    #[arg(long, value_name = "N")]
    port_min: Option<u16>,

    /// Highest media port (overrides media.port_max).
    #[arg(long, value_name = "N")]
    port_max: Option<u16>,

    /// rtpproxy control listener, repeatable: udp:ADDR:PORT, unix:/path, unix-dgram:/path
    /// (replaces rtpproxy.listen).
    #[arg(long = "rtpp-listen", value_name = "SPEC")]
    rtpp_listen: Vec<ListenSpec>,

    /// Datapath worker threads, 0 = one per core (overrides media.workers).
    #[arg(long, value_name = "N")]
    workers: Option<usize>,

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

// The control planes allocate per request (HTTP/2 frames, protobuf, strings); glibc's malloc
// showed up at ~10% of the gRPC path's profile.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    disable_transparent_huge_pages();
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
    if !cli.interfaces.is_empty() {
        config.media.interfaces = cli.interfaces.iter().map(|i| i.0.clone()).collect();
        overridden.push("--interface");
    }
    if let Some(port) = cli.port_min {
        config.media.port_min = port;
        overridden.push("--port-min");
    }
    if let Some(port) = cli.port_max {
        config.media.port_max = port;
        overridden.push("--port-max");
    }
    if !cli.rtpp_listen.is_empty() {
        config.rtpproxy.listen.clone_from(&cli.rtpp_listen);
        overridden.push("--rtpp-listen");
    }
    if let Some(workers) = cli.workers {
        config.media.workers = workers;
        overridden.push("--workers");
    }
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
    // First, while this is the only thread.
    presize_fd_table();
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

/// Descriptor slots reserved before any thread starts (see [`presize_fd_table`]): 512 KiB of
/// table, room for ~16,000 calls (four sockets each).
const FD_TABLE_PRESIZE: libc::rlim_t = 65_536;

/// Grows the file descriptor table now, while the process has a single thread. The kernel
/// grows it by doubling as descriptors are opened (every media port is a socket), and in a
/// multi-threaded process each growth waits for an RCU grace period (`synchronize_rcu` in
/// `expand_files`): the session core, which opens the sockets, sat blocked in `socket()` for
/// 14 ms, stalling every control request (seen with `perf record -e sched:sched_switch -g`
/// early in a gRPC 5,000 cycles/s benchmark run, as the table grew). Tables never shrink, so
/// doing it once is enough. Up to the current soft limit (the daemon may raise it later;
/// growth beyond that is rare: it doubles each time).
fn presize_fd_table() {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: plain syscalls on a stack struct and on a descriptor this function owns. The
    // duplicate takes the lowest free slot at or above `top` (nothing open is replaced) and
    // is closed at once; only the table's size remains.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) != 0 {
            return;
        }
        let Ok(top) = libc::c_int::try_from(limit.rlim_cur.min(FD_TABLE_PRESIZE).saturating_sub(1))
        else {
            return;
        };
        if top < 3 {
            return;
        }
        for source in 0..=2 {
            let fd = libc::fcntl(source, libc::F_DUPFD_CLOEXEC, top);
            if fd >= 0 {
                libc::close(fd);
                return;
            }
        }
    }
}

/// Opts this process out of transparent huge pages, before the allocator has grown.
///
/// mimalloc asks for huge pages on its arenas (`MADV_HUGEPAGE`), so under THP "madvise" (the
/// common distribution default) or "always" the first touch of each 2 MiB region faults in and
/// zeroes a whole huge page. When load starts every thread's heap grows that way at once:
/// `perf record -e sched:sched_switch -g` at the start of a 5,000 cycles/s control benchmark
/// showed the session core, the control threads and the datapath workers preempted in
/// `folio_zero_user` under `do_huge_pmd_anonymous_page` for 4-8 ms each, 40-50 ms of stalled
/// replies in all. The relay's heap is tens of MiB, where huge pages save little; steady latency
/// matters more (the same reason Redis and most databases tell operators to turn THP off).
fn disable_transparent_huge_pages() {
    // SAFETY: PR_SET_THP_DISABLE takes a flag and ignores the rest; it affects only this
    // process (and is inherited by children, of which the daemon has none).
    // Kernels before 3.15 refuse it (EINVAL); huge pages there cost latency, nothing breaks.
    unsafe { libc::prctl(libc::PR_SET_THP_DISABLE, 1, 0, 0, 0) };
}

/// `--interface [NAME/]ADDR[!ADVERTISED]`.
#[derive(Debug, Clone)]
struct InterfaceArg(InterfaceConfig);

impl std::str::FromStr for InterfaceArg {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (name, rest) = match s.split_once('/') {
            Some((name, rest)) => (Some(name), rest),
            None => (None, s),
        };
        let (addr, advertise) = match rest.split_once('!') {
            Some((addr, adv)) => (addr, Some(adv)),
            None => (rest, None),
        };
        let address = addr
            .parse()
            .map_err(|_| format!("`{addr}` is not an IP address"))?;
        let advertise = advertise
            .map(|a| a.parse().map_err(|_| format!("`{a}` is not an IP address")))
            .transpose()?;
        Ok(InterfaceArg(InterfaceConfig {
            name: name.map_or_else(|| addr.to_owned(), str::to_owned),
            address,
            advertise,
            port_min: None,
            port_max: None,
        }))
    }
}
