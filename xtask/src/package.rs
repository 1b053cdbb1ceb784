//! The Debian package: build it with cargo-deb (`[package.metadata.deb]` in relay/Cargo.toml)
//! and, as root, check it the way an operator uses it: `dpkg -i` (twice: the maintainer
//! scripts must be idempotent), `sluice --check-config` on the packaged config,
//! `systemd-analyze verify` on the installed unit, the packaged daemon started as the
//! package's `sluice` user with exactly the unit's capabilities (XDP attached in a private
//! network namespace), then `dpkg -P`, leaving the machine as it was.

use std::io::{BufRead as _, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};

const PACKAGE: &str = "sluice";
const CONFIG: &str = "/etc/sluice/sluice.toml";
/// Where cargo-deb installs the unit (`/lib` is the same directory on merged-/usr Debian).
const UNIT: &str = "/usr/lib/systemd/system/sluice.service";
const BINARIES: [&str; 2] = ["/usr/bin/sluice", "/usr/bin/sluicectl"];
/// How long the packaged daemon may take to load and attach the XDP program.
const START_TIMEOUT: Duration = Duration::from_secs(30);

/// Which build goes into the package.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Build {
    /// `cargo deb` builds the release profile: the package to ship.
    Release,
    /// The dev-profile binaries `cargo test` just built (no second build of the workspace in
    /// CI; cargo-deb 3.8 warns that it prefers release builds). Same package otherwise.
    ExistingDev,
}

/// Runs cargo-deb and returns the path of the .deb it wrote.
pub fn build(build: Build) -> Result<PathBuf> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned());
    let mut cmd = Command::new(&cargo);
    cmd.args(["deb", "--package", PACKAGE]);
    if build == Build::ExistingDev {
        cmd.args(["--profile", "dev", "--no-build", "--fast"]);
    }
    eprintln!("xtask: building the Debian package (cargo deb)");
    let out = cmd
        .stderr(Stdio::inherit())
        .output()
        .with_context(|| format!("cannot run `{cargo} deb` (cargo xtask setup installs it)"))?;
    if !out.status.success() {
        bail!("`cargo deb` failed ({})", out.status);
    }
    // cargo-deb prints the package's path as its last line.
    let stdout = String::from_utf8_lossy(&out.stdout);
    let deb = stdout
        .lines()
        .rev()
        .map(str::trim)
        .find(|l| l.ends_with(".deb"))
        .map(PathBuf::from)
        .with_context(|| format!("cargo deb printed no .deb path: {stdout}"))?;
    ensure!(
        deb.is_file(),
        "cargo deb reported {}, which does not exist",
        deb.display()
    );
    eprintln!("xtask: built {}", deb.display());
    Ok(deb)
}

/// Installs, checks and purges `deb`. Needs root; every missing piece is an error.
pub fn check(deb: &Path) -> Result<()> {
    if dpkg_status(PACKAGE).is_some() {
        bail!(
            "the `{PACKAGE}` package is already installed here; this check installs and purges \
             it, so it will not touch an existing installation (remove it with `dpkg -P {PACKAGE}` \
             to run the check)"
        );
    }
    let user_existed = getent("passwd", PACKAGE).is_some();
    let group_existed = getent("group", PACKAGE).is_some();
    let _cleanup = Cleanup {
        remove_user: !user_existed,
        remove_group: !group_existed,
    };

    for round in ["install", "reinstall (maintainer scripts run again)"] {
        eprintln!("xtask: package check: dpkg -i ({round})");
        run(Command::new("dpkg").arg("-i").arg(deb))?;
    }
    ensure!(
        dpkg_status(PACKAGE).as_deref() == Some("install ok installed"),
        "after dpkg -i the package status is {:?}",
        dpkg_status(PACKAGE)
    );
    let listed = capture(Command::new("dpkg").args(["-L", PACKAGE]))?;
    for path in BINARIES.iter().chain([&CONFIG, &UNIT]) {
        ensure!(
            listed.lines().any(|l| l == *path),
            "the package does not install {path}"
        );
    }
    let conffiles = capture(Command::new("dpkg-query").args(["-W", "-f=${Conffiles}", PACKAGE]))?;
    ensure!(
        conffiles.contains(CONFIG),
        "{CONFIG} is not a conffile: {conffiles}"
    );

    let user = getent("passwd", PACKAGE).context("postinst did not create the `sluice` user")?;
    let fields: Vec<&str> = user.split(':').collect();
    let uid: u32 = fields.get(2).and_then(|u| u.parse().ok()).unwrap_or(0);
    ensure!(
        (1..1000).contains(&uid) && fields.get(6) == Some(&"/usr/sbin/nologin"),
        "the `sluice` user is not a system user without a shell: {user}"
    );

    eprintln!("xtask: package check: sluice --check-config {CONFIG}");
    run(Command::new(BINARIES[0]).args(["--check-config", CONFIG]))?;
    run(Command::new(BINARIES[1]).arg("--version"))?;

    eprintln!("xtask: package check: systemd-analyze verify {UNIT}");
    verify_unit()?;

    eprintln!(
        "xtask: package check: the packaged daemon as user sluice with the unit's capabilities"
    );
    run_as_unit()?;

    eprintln!("xtask: package check: dpkg -P");
    run(Command::new("dpkg").args(["-P", PACKAGE]))?;
    for path in BINARIES.iter().chain([&CONFIG, &UNIT]) {
        ensure!(!Path::new(path).exists(), "{path} is left after dpkg -P");
    }
    eprintln!("xtask: package check passed");
    Ok(())
}

/// `systemd-analyze verify` exits 0 on unknown keys (it only warns), so any line about the
/// unit is a failure too.
fn verify_unit() -> Result<()> {
    let out = Command::new("systemd-analyze")
        .args(["verify", UNIT])
        .output()
        .context("cannot run systemd-analyze (Debian package `systemd`)")?;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let about_unit: Vec<&str> = text
        .lines()
        .filter(|l| l.contains("sluice.service") || l.contains("/usr/bin/sluice"))
        .collect();
    if !out.status.success() || !about_unit.is_empty() {
        bail!(
            "systemd-analyze verify {UNIT} failed ({}):\n{text}",
            out.status
        );
    }
    if !text.trim().is_empty() {
        eprintln!("xtask: systemd-analyze verify said (about other units):\n{text}");
    }
    Ok(())
}

/// The unit's `Key=` values (last assignment wins, as in systemd; an empty one resets).
fn unit_value(unit: &str, key: &str) -> Option<String> {
    unit.lines()
        .rev()
        .find_map(|l| l.trim().strip_prefix(key)?.strip_prefix('='))
        .map(|v| v.trim().to_owned())
}

/// Starts the installed binary the way the unit does (its User, Group, AmbientCapabilities
/// and CapabilityBoundingSet, no new privileges), in a private network namespace with
/// `xdp.mode = "generic"` on its loopback: the daemon must load and attach the XDP program
/// with those capabilities alone, then detach it and exit 0 on SIGTERM. The systemd sandbox
/// itself (namespaces, seccomp) needs a running systemd and is not exercised here.
fn run_as_unit() -> Result<()> {
    let unit = std::fs::read_to_string(UNIT).with_context(|| format!("reading {UNIT}"))?;
    let user = unit_value(&unit, "User").context("the unit has no User=")?;
    let group = unit_value(&unit, "Group").context("the unit has no Group=")?;
    let ambient = unit_value(&unit, "AmbientCapabilities").unwrap_or_default();
    let bounding = unit_value(&unit, "CapabilityBoundingSet").unwrap_or_default();
    let exec = unit_value(&unit, "ExecStart").context("the unit has no ExecStart=")?;
    ensure!(
        exec.split_whitespace().next() == Some(BINARIES[0]),
        "ExecStart does not run {}: {exec}",
        BINARIES[0]
    );
    let caps = |list: &str| -> String {
        let names: Vec<String> = list
            .split_whitespace()
            .map(|c| format!("+{}", c.trim_start_matches("CAP_").to_lowercase()))
            .collect();
        std::iter::once("-all".to_owned())
            .chain(names)
            .collect::<Vec<_>>()
            .join(",")
    };
    let (ambient, bounding) = (caps(&ambient), caps(&bounding));

    let dir = std::env::temp_dir().join(format!("sluice-package-check-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let config = dir.join("xdp-lo.toml");
    std::fs::write(
        &config,
        "[xdp]\nmode = \"generic\"\ninterfaces = [\"lo\"]\n",
    )?;
    set_mode(&dir, 0o755)?;
    set_mode(&config, 0o644)?;

    let netns = Netns::create(&format!("sluice-pkg-{}", std::process::id()))?;
    let result = (|| -> Result<()> {
        run(&mut netns.exec(["ip", "link", "set", "lo", "up"]))?;
        let mut cmd = netns.exec(["setpriv"]);
        cmd.arg(format!("--reuid={user}"))
            .arg(format!("--regid={group}"))
            .arg("--init-groups")
            .arg(format!("--inh-caps={ambient}"))
            .arg(format!("--ambient-caps={ambient}"))
            .arg(format!("--bounding-set={bounding}"))
            .arg("--no-new-privs")
            .arg("--")
            .arg(BINARIES[0])
            .arg("--config")
            .arg(&config)
            // The "ready" line is logged at info; an inherited RUST_LOG could hide it.
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        let mut daemon = Daemon::spawn(&mut cmd)?;
        daemon.wait_ready()?;
        let link = capture(&mut netns.exec(["ip", "link", "show", "dev", "lo"]))?;
        ensure!(
            link.contains("xdpgeneric"),
            "the daemon started but lo has no generic XDP program:\n{link}\n{}",
            daemon.log
        );
        let (status, log) = daemon.stop()?;
        ensure!(
            status.success(),
            "the daemon exited with {status} on SIGTERM:\n{log}"
        );
        let link = capture(&mut netns.exec(["ip", "link", "show", "dev", "lo"]))?;
        ensure!(
            !link.contains("xdp"),
            "the XDP program is still attached after the daemon stopped:\n{link}"
        );
        Ok(())
    })();
    drop(netns);
    let _ = std::fs::remove_dir_all(&dir);
    result
}

/// The daemon under test; its stderr is read to the end by a thread (a reader that stopped
/// early would leave the daemon writing its log into a closed pipe).
struct Daemon {
    child: Child,
    lines: mpsc::Receiver<String>,
    log: String,
}

impl Daemon {
    fn spawn(cmd: &mut Command) -> Result<Daemon> {
        let mut child = cmd.spawn().context("cannot start setpriv (util-linux)")?;
        let stderr = child.stderr.take().context("no stderr pipe")?;
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                // The receiver may be gone (check over): keep draining anyway.
                let _ = tx.send(line);
            }
        });
        Ok(Daemon {
            child,
            lines,
            log: String::new(),
        })
    }

    /// Waits for the "ready" log line.
    fn wait_ready(&mut self) -> Result<()> {
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    let ready = line.contains(" ready");
                    self.log.push_str(&line);
                    self.log.push('\n');
                    if ready {
                        return Ok(());
                    }
                }
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    let status = self.child.wait()?;
                    bail!(
                        "the packaged daemon exited ({status}) before it was ready:\n{}",
                        self.log
                    );
                }
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    bail!(
                        "the packaged daemon was not ready within {START_TIMEOUT:?}:\n{}",
                        self.log
                    );
                }
            }
        }
    }

    /// SIGTERM, then the exit status and the whole log.
    fn stop(&mut self) -> Result<(std::process::ExitStatus, String)> {
        // setpriv execs the daemon, so the child is the daemon itself.
        run(Command::new("kill").args(["-TERM", &self.child.id().to_string()]))?;
        let deadline = Instant::now() + Duration::from_secs(20);
        let status = loop {
            if let Some(status) = self.child.try_wait()? {
                break status;
            }
            if Instant::now() > deadline {
                bail!(
                    "the daemon did not stop within 20 s of SIGTERM:\n{}",
                    self.log
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        };
        // The pipe closes with the daemon: read the rest of its log.
        while let Ok(line) = self.lines.recv_timeout(Duration::from_secs(2)) {
            self.log.push_str(&line);
            self.log.push('\n');
        }
        Ok((status, self.log.clone()))
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// A named network namespace, deleted on drop.
struct Netns(String);

impl Netns {
    fn create(name: &str) -> Result<Netns> {
        run(Command::new("ip").args(["netns", "add", name]))?;
        Ok(Netns(name.to_owned()))
    }

    fn exec<const N: usize>(&self, argv: [&str; N]) -> Command {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.0]).args(argv);
        cmd
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "delete", &self.0])
            .status();
    }
}

/// Purges the package (if still installed) and the user/group the check created.
struct Cleanup {
    remove_user: bool,
    remove_group: bool,
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        if dpkg_status(PACKAGE).is_some() {
            let _ = Command::new("dpkg")
                .args(["-P", PACKAGE])
                .stdout(Stdio::null())
                .status();
        }
        if self.remove_user && getent("passwd", PACKAGE).is_some() {
            let _ = Command::new("userdel").arg(PACKAGE).status();
        }
        if self.remove_group && getent("group", PACKAGE).is_some() {
            let _ = Command::new("groupdel").arg(PACKAGE).status();
        }
    }
}

/// dpkg's status line for a package it knows (installed, or removed with conffiles left).
fn dpkg_status(pkg: &str) -> Option<String> {
    let out = Command::new("dpkg-query")
        .args(["-W", "-f=${Status}", pkg])
        .stderr(Stdio::null())
        .output()
        .ok()?;
    let status = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    (out.status.success() && !status.is_empty() && !status.ends_with("not-installed"))
        .then_some(status)
}

fn getent(db: &str, key: &str) -> Option<String> {
    let out = Command::new("getent").args([db, key]).output().ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

fn set_mode(path: &Path, mode: u32) -> Result<()> {
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .with_context(|| format!("chmod {}", path.display()))
}

fn run(cmd: &mut Command) -> Result<()> {
    let status = cmd
        .status()
        .with_context(|| format!("cannot run {cmd:?}"))?;
    if !status.success() {
        bail!("{cmd:?} failed ({status})");
    }
    Ok(())
}

fn capture(cmd: &mut Command) -> Result<String> {
    let out = cmd
        .stderr(Stdio::inherit())
        .output()
        .with_context(|| format!("cannot run {cmd:?}"))?;
    if !out.status.success() {
        bail!("{cmd:?} failed ({})", out.status);
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

#[cfg(test)]
mod tests {
    use super::unit_value;

    #[test]
    fn unit_values_last_assignment_wins() {
        let unit = "[Service]\nUser=a\n# User=b\nAmbientCapabilities=CAP_BPF\nUser=c\n";
        assert_eq!(unit_value(unit, "User").as_deref(), Some("c"));
        assert_eq!(
            unit_value(unit, "AmbientCapabilities").as_deref(),
            Some("CAP_BPF")
        );
        assert_eq!(unit_value(unit, "Group"), None);
    }
}
