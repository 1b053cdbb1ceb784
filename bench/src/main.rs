//! `sluice-bench`: load tests of RTP relays (`run`), side-by-side comparisons (`compare`) and
//! the namespace topology (`topo`).

use std::process::ExitCode;

use clap::{Parser, Subcommand};
use sluice_bench::run::{RunArgs, execute};
use sluice_bench::topo::{self, Role, Topology};

#[derive(Parser)]
#[command(name = "sluice-bench", version, about = "Load tests for RTP relays")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run a load scenario against a relay (started here unless --connect) and report.
    Run(Box<RunArgs>),
    /// Run the scenario matrix against Sluice (XDP, userspace), rtpengine and the XDP floor;
    /// write report.md, results.json and SVG charts (needs root: namespaces, XDP).
    Compare(sluice_bench::compare::CompareArgs),
    /// The XDP program's cost per packet against the XDP_TX reflector, through
    /// BPF_PROG_TEST_RUN (needs root; no traffic).
    ProgCost(sluice_bench::prog_cost::ProgCostArgs),
    /// Build or remove the caller/relay/callee namespace topology (needs root).
    Topo {
        #[command(subcommand)]
        action: TopoAction,
        /// Namespace name prefix: namespaces are PREFIX-caller, PREFIX-relay, PREFIX-callee.
        #[arg(long, default_value = "sb", global = true)]
        prefix: String,
    },
}

#[derive(Subcommand)]
enum TopoAction {
    /// Create the topology (replacing a previous one with the same prefix).
    Up,
    /// Remove the topology; succeeds when it is already gone.
    Down,
}

fn run(args: &RunArgs) -> anyhow::Result<()> {
    let report = execute(args)?;
    print!("{}", report.human());
    if let Some(path) = &args.json {
        let text = serde_json::to_string_pretty(&report)?;
        std::fs::write(path, text + "\n")
            .map_err(|e| anyhow::anyhow!("writing {}: {e}", path.display()))?;
    }
    Ok(())
}

/// On SIGINT/SIGTERM: remove the namespaces this run built, then exit. Relays the harness
/// started die with it (PR_SET_PDEATHSIG) and its XDP programs detach when their fds close.
fn clean_up_on_signals() {
    use signal_hook::consts::{SIGINT, SIGTERM};
    match signal_hook::iterator::Signals::new([SIGINT, SIGTERM]) {
        Ok(mut signals) => {
            std::thread::spawn(move || {
                if let Some(signal) = signals.forever().next() {
                    eprintln!("sluice-bench: signal {signal}: removing this run's namespaces");
                    topo::down_all_live();
                    std::process::exit(128 + signal);
                }
            });
        }
        Err(e) => {
            eprintln!("sluice-bench: no signal handler ({e}): Ctrl-C leaves namespaces behind")
        }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    clean_up_on_signals();
    let result = match cli.command {
        Command::Run(args) => run(&args),
        Command::Compare(args) => sluice_bench::compare::run(&args).map(|dir| {
            eprintln!("sluice-bench: report in {}", dir.display());
        }),
        Command::ProgCost(args) => {
            sluice_bench::prog_cost::run(&args).map(|cost| print!("{}", cost.human()))
        }
        Command::Topo { action, prefix } => match action {
            TopoAction::Up => Topology::up(&prefix).map(|t| {
                for role in [Role::Caller, Role::Relay, Role::Callee] {
                    println!("{}", t.ns(role));
                }
                t.keep();
            }),
            TopoAction::Down => topo::down(&prefix),
        }
        .map_err(anyhow::Error::from),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("sluice-bench: {e:#}");
            ExitCode::FAILURE
        }
    }
}
