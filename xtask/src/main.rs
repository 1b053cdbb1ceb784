//! Project tasks: `cargo xtask setup | run | test | package`.
//!
//! `run` and `test` are the README's two quick-start commands; both call `setup` first, which
//! installs only what is missing (Debian packages, the nightly `rust-src` component, bpf-linker
//! built against the system LLVM, cargo-deb) and fails naming the piece it could not install.

mod package;
mod setup;

use std::process::{Command, ExitCode};

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(about = "Sluice project tasks")]
struct Cli {
    #[command(subcommand)]
    task: Task,
}

#[derive(Subcommand)]
enum Task {
    /// Install what the build and the tests need and is missing (idempotent).
    Setup,
    /// Set up, build and run the relay; extra arguments go to `sluice` (e.g. `-- --config FILE`).
    Run {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Set up and run the whole test suite, privileged (root, namespace, XDP) tests included,
    /// then build the Debian package from the tested binaries and (as root) install, check and
    /// purge it.
    Test {
        /// Extra arguments for `cargo test` (e.g. a test name filter).
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Build the release Debian package (target/debian/sluice_VERSION_ARCH.deb).
    Package {
        /// Then install it, check it and purge it again, as the test suite does (root).
        #[arg(long)]
        check: bool,
    },
}

fn main() -> ExitCode {
    match real_main() {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("xtask: error: {err:#}");
            ExitCode::FAILURE
        }
    }
}

fn real_main() -> Result<()> {
    match Cli::parse().task {
        Task::Setup => setup::run(),
        Task::Run { args } => {
            setup::run()?;
            cargo(
                &[
                    "run",
                    "--release",
                    "--package",
                    "sluice",
                    "--bin",
                    "sluice",
                    "--",
                ],
                &args,
                &[],
            )
        }
        Task::Test { args } => {
            setup::run()?;
            let root = setup::is_root();
            // As root nothing may be skipped: a privileged test that cannot run fails instead.
            let env: &[(&str, &str)] = if root {
                &[("SLUICE_REQUIRE_PRIVILEGED_TESTS", "1")]
            } else {
                &[]
            };
            let mut cmd = vec!["test", "--workspace", "--all-targets"];
            if !args.is_empty() {
                cmd.push("--");
            }
            cargo(&cmd, &args, env)?;
            // The package of the binaries just tested (`cargo test` built them; no second,
            // release build of the workspace in CI).
            let deb = package::build(package::Build::ExistingDev)?;
            if root {
                package::check(&deb)?;
            } else {
                eprintln!(
                    "xtask: warning: not root, so the namespace/XDP tests and the package \
                     install check were skipped; run `sudo -E cargo xtask test` (CI runs as \
                     root and skips nothing)"
                );
            }
            Ok(())
        }
        Task::Package { check } => {
            setup::run()?;
            let deb = package::build(package::Build::Release)?;
            if check {
                if !setup::is_root() {
                    bail!("--check installs the package: run it as root");
                }
                package::check(&deb)?;
            }
            println!("{}", deb.display());
            Ok(())
        }
    }
}

fn cargo(base: &[&str], extra: &[String], env: &[(&str, &str)]) -> Result<()> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned());
    let mut cmd = Command::new(&cargo);
    cmd.args(base).args(extra).envs(env.iter().copied());
    let status = cmd
        .status()
        .with_context(|| format!("cannot start {cargo}"))?;
    if !status.success() {
        bail!("`cargo {}` failed ({status})", base.join(" "));
    }
    Ok(())
}
