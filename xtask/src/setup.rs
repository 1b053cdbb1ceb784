//! Idempotent machine setup. Every step first checks, then installs only what is missing, so a
//! second run on a ready machine takes a few seconds and changes nothing.

use std::path::PathBuf;
use std::process::{Command, Stdio};

use anyhow::{Context, Result, bail};

/// Debian packages and why the project needs each one.
const APT_PACKAGES: &[(&str, &str)] = &[
    ("llvm-22-dev", "bpf-linker links against LLVM 22"),
    ("libpolly-22-dev", "LLVM 22's static link needs Polly"),
    ("libzstd-dev", "LLVM 22's static link needs zstd"),
    ("iproute2", "`ip netns` / veth topologies in the XDP tests"),
    ("ethtool", "veth offload settings in the XDP tests"),
    (
        "kamailio",
        "interop test: SIP proxy with the stock rtpproxy module",
    ),
    ("sip-tester", "interop test: sipp, the SIP call generator"),
    (
        "rtpengine-daemon",
        "bench: rtpengine, the reference relay of `sluice-bench compare`",
    ),
    (
        "dpkg-dev",
        "cargo-deb: dpkg-shlibdeps computes the package's library dependencies",
    ),
    (
        "adduser",
        "the Debian package depends on it (postinst creates the user)",
    ),
    (
        "systemd",
        "package test: `systemd-analyze verify` of the unit",
    ),
    (
        "prometheus",
        "metrics test: promtool checks rules and the /metrics output",
    ),
];

const BPF_LINKER_VERSION: &str = "0.13.0";
/// Builds the Debian package (`cargo xtask package`, and the package test).
const CARGO_DEB_VERSION: &str = "3.8.0";
const LLVM_PREFIX: &str = "/usr/lib/llvm-22";
/// aya-build compiles the XDP program with `rustup run nightly`.
const NIGHTLY: &str = "nightly";

pub fn run() -> Result<()> {
    apt_packages()?;
    stable_components()?;
    nightly_rust_src()?;
    bpf_linker()?;
    cargo_deb()?;
    Ok(())
}

pub fn is_root() -> bool {
    // /proc/self/status "Uid:\treal\teffective\t..."; no libc needed for one number.
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("Uid:"))
                .and_then(|ids| ids.split_whitespace().nth(1).map(|e| e == "0"))
        })
        .unwrap_or(false)
}

fn apt_packages() -> Result<()> {
    let missing: Vec<&str> = APT_PACKAGES
        .iter()
        .filter(|(pkg, _)| !dpkg_installed(pkg))
        .map(|(pkg, _)| *pkg)
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    for (pkg, why) in APT_PACKAGES.iter().filter(|(p, _)| missing.contains(p)) {
        eprintln!("setup: installing {pkg} ({why})");
    }
    let sudo: &[&str] = if is_root() { &[] } else { &["sudo"] };
    let apt = |args: &[&str]| -> Result<bool> {
        let mut argv: Vec<&str> = sudo.to_vec();
        argv.push("apt-get");
        argv.extend_from_slice(args);
        let status = Command::new(argv[0])
            .args(&argv[1..])
            .env("DEBIAN_FRONTEND", "noninteractive")
            .status()
            .with_context(|| format!("cannot run {}", argv.join(" ")))?;
        Ok(status.success())
    };
    // A fresh machine may have no package lists yet; update once, only when installing.
    if !apt(&["update", "-q"])? {
        bail!(
            "`apt-get update` failed; cannot install {}",
            missing.join(", ")
        );
    }
    let mut args = vec!["install", "-y", "-q", "--no-install-recommends"];
    args.extend_from_slice(&missing);
    apt(&args)?;
    let still: Vec<&str> = missing
        .iter()
        .copied()
        .filter(|p| !dpkg_installed(p))
        .collect();
    if !still.is_empty() {
        bail!("could not install Debian package(s): {}", still.join(", "));
    }
    Ok(())
}

fn dpkg_installed(pkg: &str) -> bool {
    Command::new("dpkg-query")
        .args(["-W", "-f=${db:Status-Abbrev}", pkg])
        .stderr(Stdio::null())
        .output()
        .map(|o| o.status.success() && o.stdout.starts_with(b"ii"))
        .unwrap_or(false)
}

/// CI runs `cargo fmt --check` and `cargo clippy`; minimal rustup profiles lack both.
fn stable_components() -> Result<()> {
    let missing: Vec<&str> = [("rustfmt", "fmt"), ("clippy", "clippy")]
        .into_iter()
        .filter(|(_, sub)| {
            !Command::new("cargo")
                .args([sub, "--version"])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|s| s.success())
        })
        .map(|(component, _)| component)
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    eprintln!("setup: adding rustup component(s) {}", missing.join(", "));
    let status = Command::new("rustup")
        .args(["component", "add"])
        .args(&missing)
        .status()
        .context("cannot run rustup")?;
    if !status.success() {
        bail!(
            "could not install rustup component(s) {}",
            missing.join(", ")
        );
    }
    Ok(())
}

fn nightly_rust_src() -> Result<()> {
    let installed = Command::new("rustup")
        .args(["component", "list", "--installed", "--toolchain", NIGHTLY])
        .stderr(Stdio::null())
        .output()
        .context(
            "rustup is required (the project builds the XDP program with a nightly toolchain)",
        )?;
    let listing = String::from_utf8_lossy(&installed.stdout);
    if installed.status.success() && listing.lines().any(|l| l.starts_with("rust-src")) {
        return Ok(());
    }
    let args: &[&str] = if installed.status.success() {
        eprintln!("setup: adding rust-src to the {NIGHTLY} toolchain (needed for -Z build-std)");
        &["component", "add", "rust-src", "--toolchain", NIGHTLY]
    } else {
        eprintln!(
            "setup: installing the {NIGHTLY} toolchain with rust-src (builds the XDP program)"
        );
        &[
            "toolchain",
            "install",
            NIGHTLY,
            "--profile",
            "minimal",
            "--component",
            "rust-src",
        ]
    };
    let status = Command::new("rustup").args(args).status()?;
    if !status.success() {
        bail!(
            "could not install rust-src for the {NIGHTLY} toolchain (`rustup {}`)",
            args.join(" ")
        );
    }
    Ok(())
}

fn bpf_linker() -> Result<()> {
    let bin = cargo_bin_dir().join("bpf-linker");
    let works = |path: &std::path::Path| {
        Command::new(path)
            .arg("--version")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .map(|s| s.success())
            .unwrap_or(false)
    };
    if works(&bin) || works(std::path::Path::new("bpf-linker")) {
        return Ok(());
    }
    eprintln!(
        "setup: building bpf-linker {BPF_LINKER_VERSION} against {LLVM_PREFIX} (takes a few minutes, once)"
    );
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned());
    let status = Command::new(&cargo)
        .args([
            "install",
            "bpf-linker",
            "--locked",
            "--version",
            BPF_LINKER_VERSION,
            "--no-default-features",
            "--features",
            "llvm-22",
        ])
        .env("LLVM_PREFIX", LLVM_PREFIX)
        .env("LLVM_SYS_221_PREFIX", LLVM_PREFIX)
        .status()
        .context("cannot run cargo install")?;
    if !status.success() || !works(&bin) {
        bail!(
            "could not build bpf-linker with LLVM 22 ({LLVM_PREFIX}); see the cargo output above"
        );
    }
    Ok(())
}

fn cargo_deb() -> Result<()> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned());
    // `cargo deb --version` prints "cargo-deb 3.8.0" (or fails when it is missing).
    let installed = || {
        Command::new(&cargo)
            .args(["deb", "--version"])
            .stderr(Stdio::null())
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
    };
    let wanted = format!("cargo-deb {CARGO_DEB_VERSION}");
    if installed().as_deref() == Some(wanted.as_str()) {
        return Ok(());
    }
    eprintln!("setup: installing cargo-deb {CARGO_DEB_VERSION} (builds the Debian package)");
    let status = Command::new(&cargo)
        .args([
            "install",
            "cargo-deb",
            "--locked",
            "--version",
            CARGO_DEB_VERSION,
        ])
        .status()
        .context("cannot run cargo install")?;
    if !status.success() || installed().as_deref() != Some(wanted.as_str()) {
        bail!("could not install cargo-deb {CARGO_DEB_VERSION}; see the cargo output above");
    }
    Ok(())
}

fn cargo_bin_dir() -> PathBuf {
    std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cargo")))
        .unwrap_or_else(|| PathBuf::from("/root/.cargo"))
        .join("bin")
}
