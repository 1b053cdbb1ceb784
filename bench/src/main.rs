//! `sluice-bench`: namespace topology for load tests (the load scenarios build on it).

use std::process::ExitCode;

use clap::{Parser, Subcommand};
use sluice_bench::topo::{self, Role, Topology};

#[derive(Parser)]
#[command(name = "sluice-bench", version, about = "Load tests for RTP relays")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
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

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Topo { action, prefix } => match action {
            TopoAction::Up => Topology::up(&prefix).map(|t| {
                for role in [Role::Caller, Role::Relay, Role::Callee] {
                    println!("{}", t.ns(role));
                }
                t.keep();
            }),
            TopoAction::Down => topo::down(&prefix),
        },
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("sluice-bench: {e}");
            ExitCode::FAILURE
        }
    }
}
