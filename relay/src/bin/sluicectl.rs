//! `sluicectl`: command-line client for the relay's gRPC control plane.

use std::process::ExitCode;

use anyhow::Context as _;
use clap::{Parser, Subcommand, ValueEnum};
use serde_json::json;
use sluice_proto::v1::GetInfoRequest;
use sluice_proto::v1::relay_client::RelayClient;
use tonic::transport::Channel;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

#[derive(Parser)]
#[command(
    name = "sluicectl",
    version,
    about = "Inspect and control a Sluice relay"
)]
struct Cli {
    /// gRPC endpoint of the relay.
    #[arg(
        long,
        default_value = "http://127.0.0.1:50051",
        env = "SLUICE_ENDPOINT"
    )]
    endpoint: String,
    /// Output format: a table for people, JSON for scripts.
    #[arg(long, short, value_enum, default_value_t = Output::Table)]
    output: Output,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, ValueEnum)]
enum Output {
    Table,
    Json,
}

#[derive(Subcommand)]
enum Command {
    /// Version and uptime of the relay.
    Info,
    /// grpc.health.v1 status; exits non-zero unless SERVING.
    Health,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("sluicectl: tokio runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("sluicectl: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    let channel = Channel::from_shared(cli.endpoint.clone())
        .with_context(|| format!("invalid endpoint `{}`", cli.endpoint))?
        .connect()
        .await
        .with_context(|| format!("cannot connect to {}", cli.endpoint))?;
    match cli.command {
        Command::Info => {
            let info = RelayClient::new(channel)
                .get_info(GetInfoRequest {})
                .await?
                .into_inner();
            match cli.output {
                Output::Json => println!(
                    "{}",
                    json!({"version": info.version, "uptime_seconds": info.uptime_seconds})
                ),
                Output::Table => print_table(&[
                    ("version", info.version),
                    ("uptime", format_duration(info.uptime_seconds)),
                ]),
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Health => {
            let status = HealthClient::new(channel)
                .check(HealthCheckRequest {
                    service: String::new(),
                })
                .await?
                .into_inner()
                .status();
            let name = status.as_str_name();
            match cli.output {
                Output::Json => println!("{}", json!({ "status": name })),
                Output::Table => print_table(&[("status", name.to_owned())]),
            }
            Ok(if status == ServingStatus::Serving {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            })
        }
    }
}

fn print_table(rows: &[(&str, String)]) {
    let width = rows.iter().map(|(k, _)| k.len()).max().unwrap_or(0);
    for (key, value) in rows {
        println!("{key:<width$}  {value}");
    }
}

fn format_duration(seconds: u64) -> String {
    let (d, h, m, s) = (
        seconds / 86_400,
        seconds / 3600 % 24,
        seconds / 60 % 60,
        seconds % 60,
    );
    if d > 0 {
        format!("{d}d {h}h {m}m {s}s")
    } else if h > 0 {
        format!("{h}h {m}m {s}s")
    } else if m > 0 {
        format!("{m}m {s}s")
    } else {
        format!("{s}s")
    }
}
