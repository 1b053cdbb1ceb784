//! The relay under test: started by the harness (a `sluice` child process with a config file
//! the harness writes, killed on drop), or an already running one reached with `--connect`.

use std::fs;
use std::io;
use std::net::{SocketAddr, TcpListener, UdpSocket};
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use crate::child::ChildProcess;
use crate::rtpp_client;

/// How the harness configures a relay it starts.
#[derive(Debug, Clone)]
pub struct SpawnOptions {
    pub bin: PathBuf,
    /// `media.workers` (0 = one per core).
    pub workers: u32,
    pub port_min: u16,
    pub port_max: u16,
    /// `media.quarantine`, as a TOML duration string ("0s", "10s").
    pub quarantine: String,
    /// `xdp.mode`.
    pub xdp: String,
    /// `log.level`.
    pub log_level: String,
    /// The media interface's address (127.0.0.1 on loopback, the relay's address on the
    /// namespace topology).
    pub address: std::net::IpAddr,
    /// `xdp.interfaces` (empty: the relay's default, the devices of the media addresses).
    pub xdp_interfaces: Vec<String>,
    /// Network namespace to start the relay in (`ip netns exec`); its control, gRPC and
    /// metrics listeners are then on that namespace's loopback.
    pub netns: Option<String>,
}

impl SpawnOptions {
    /// Loopback defaults around `bin`.
    pub fn loopback(bin: PathBuf) -> SpawnOptions {
        SpawnOptions {
            bin,
            workers: 0,
            port_min: 20000,
            port_max: 31999,
            quarantine: "10s".into(),
            xdp: "off".into(),
            log_level: "warn".into(),
            address: std::net::Ipv4Addr::LOCALHOST.into(),
            xdp_interfaces: Vec::new(),
            netns: None,
        }
    }
}

/// The `sluice` binary next to the running executable (target/{debug,release}/sluice when the
/// harness runs from the same target dir; tests run from target/*/deps, one level below).
pub fn default_relay_bin() -> Option<PathBuf> {
    let exe = std::env::current_exe().ok()?;
    let dir = exe.parent()?;
    [dir.join("sluice"), dir.parent()?.join("sluice")]
        .into_iter()
        .find(|p| p.is_file())
}

/// A free loopback port (the kernel picks one; it is released at once, so another process
/// could take it before the relay binds it: unlikely on a test machine, and startup fails
/// loudly if it happens).
fn free_port(udp: bool) -> io::Result<u16> {
    if udp {
        Ok(UdpSocket::bind("127.0.0.1:0")?.local_addr()?.port())
    } else {
        Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
    }
}

/// The config file the harness writes.
pub fn config_text(o: &SpawnOptions, rtpp: u16, grpc: u16, metrics: u16) -> String {
    format!(
        r#"# written by sluice-bench
[log]
level = "{log}"

[media]
workers = {workers}
port_min = {pmin}
port_max = {pmax}
quarantine = "{quarantine}"

[[media.interface]]
name = "default"
address = "{address}"

[rtpproxy]
listen = ["udp:127.0.0.1:{rtpp}"]

[grpc]
listen = "127.0.0.1:{grpc}"

[metrics]
listen = "127.0.0.1:{metrics}"

[xdp]
mode = "{xdp}"
{xdp_interfaces}"#,
        log = o.log_level,
        workers = o.workers,
        pmin = o.port_min,
        pmax = o.port_max,
        quarantine = o.quarantine,
        xdp = o.xdp,
        address = o.address,
        xdp_interfaces = if o.xdp_interfaces.is_empty() {
            String::new()
        } else {
            // The fast path's FIB lookup needs forwarding on where packets enter.
            format!(
                "interfaces = {:?}\nenable_forwarding = true\n",
                o.xdp_interfaces
            )
        },
    )
}

/// A relay child process; SIGTERM then SIGKILL on drop, and its temporary directory removed.
pub struct RelayProcess {
    /// The process: pid, log tail, liveness, stop.
    pub child: ChildProcess,
    pub rtpp: SocketAddr,
    pub grpc: SocketAddr,
    pub metrics: SocketAddr,
    pub config: String,
}

impl RelayProcess {
    /// Writes the config, starts the relay and waits (up to `ready_timeout`) until it answers
    /// `V` on its rtpproxy port.
    pub fn spawn(o: &SpawnOptions, ready_timeout: Duration) -> Result<RelayProcess> {
        if !o.bin.is_file() {
            bail!(
                "relay binary {} not found (build it: cargo build --release -p sluice, or pass --relay-bin)",
                o.bin.display()
            );
        }
        static SEQ: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = SEQ.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("sluice-bench-{}-{n}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        let (rtpp, grpc, metrics) = (free_port(true)?, free_port(false)?, free_port(false)?);
        let config = config_text(o, rtpp, grpc, metrics);
        let config_path = dir.join("sluice.toml");
        fs::write(&config_path, &config)?;
        let log_file = dir.join("relay.log");
        let log = fs::File::create(&log_file)?;
        // Started through `ip netns exec` rather than from a thread that entered the namespace:
        // PR_SET_PDEATHSIG fires when the *thread* that forked the child exits.
        let mut cmd = match &o.netns {
            Some(ns) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", ns]).arg(&o.bin);
                c
            }
            None => Command::new(&o.bin),
        };
        cmd.arg("--config")
            .arg(&config_path)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log);
        // SAFETY: prctl is async-signal-safe. If the harness dies without running Drop, the
        // kernel kills the relay.
        unsafe {
            cmd.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong);
                Ok(())
            });
        }
        let child = cmd
            .spawn()
            .with_context(|| format!("starting {}", o.bin.display()))?;
        let mut relay = RelayProcess {
            child: ChildProcess::new(child, dir, log_file),
            rtpp: SocketAddr::from(([127, 0, 0, 1], rtpp)),
            grpc: SocketAddr::from(([127, 0, 0, 1], grpc)),
            metrics: SocketAddr::from(([127, 0, 0, 1], metrics)),
            config,
        };
        let deadline = Instant::now() + ready_timeout;
        loop {
            if let Some(status) = relay.child.exited()? {
                bail!(
                    "relay exited during startup ({status}); log:\n{}",
                    relay.child.log_tail(30)
                );
            }
            let probe = || rtpp_client::probe_version(relay.rtpp, Duration::from_millis(200));
            let up = match &o.netns {
                Some(ns) => crate::topo::run_in_netns(ns, probe)?,
                None => probe(),
            };
            if up {
                return Ok(relay);
            }
            if Instant::now() >= deadline {
                bail!(
                    "relay did not answer V on udp:{} within {ready_timeout:?} (is its rtpproxy front end \
                     implemented?); log:\n{}",
                    relay.rtpp,
                    relay.child.log_tail(30)
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// The relay a run talks to.
pub enum Relay {
    Spawned(RelayProcess),
    Connected { rtpp: SocketAddr, pid: Option<u32> },
}

impl Relay {
    pub fn rtpp(&self) -> SocketAddr {
        match self {
            Relay::Spawned(p) => p.rtpp,
            Relay::Connected { rtpp, .. } => *rtpp,
        }
    }

    /// The gRPC listener of a relay the harness started.
    pub fn grpc(&self) -> Option<SocketAddr> {
        match self {
            Relay::Spawned(p) => Some(p.grpc),
            Relay::Connected { .. } => None,
        }
    }

    /// The process to account CPU/memory for, when known.
    pub fn pid(&self) -> Option<u32> {
        match self {
            Relay::Spawned(p) => Some(p.child.pid()),
            Relay::Connected { pid, .. } => *pid,
        }
    }
}

/// The `sluice_build_info{version="..",commit=".."}` labels from the relay's metrics endpoint
/// (loopback), e.g. `version="0.1.0",commit="b727b00"`: which build was measured.
pub fn build_info(metrics: SocketAddr) -> Option<String> {
    use std::io::{Read, Write};
    if !metrics.ip().is_loopback() {
        return None;
    }
    let mut s = std::net::TcpStream::connect_timeout(&metrics, Duration::from_secs(2)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    s.write_all(b"GET /metrics HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")
        .ok()?;
    let mut body = Vec::new();
    let _ = s.take(4 << 20).read_to_end(&mut body);
    parse_build_info(&String::from_utf8_lossy(&body))
}

/// Finds the labels of `sluice_build_info` in a Prometheus text exposition.
pub fn parse_build_info(text: &str) -> Option<String> {
    let line = text.lines().find(|l| l.starts_with("sluice_build_info{"))?;
    let start = line.find('{')? + 1;
    let end = line.rfind('}')?;
    Some(line.get(start..end)?.to_owned())
}

/// Parses `udp:HOST:PORT` (loopback only).
pub fn parse_connect(spec: &str) -> Result<SocketAddr> {
    let rest = spec
        .strip_prefix("udp:")
        .or_else(|| spec.strip_prefix("udp6:"))
        .unwrap_or(spec);
    let addr: SocketAddr = rest.parse().with_context(|| {
        format!("--connect {spec}: expected udp:127.0.0.1:PORT or udp:[::1]:PORT")
    })?;
    if !addr.ip().is_loopback() {
        bail!("--connect {spec}: only loopback addresses are allowed");
    }
    Ok(addr)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn build_info_line() {
        let text = "# HELP x\nsluice_build_info{commit=\"b727b00\",version=\"0.1.0\"} 1\nprocess_cpu_seconds_total 1\n";
        assert_eq!(
            parse_build_info(text).as_deref(),
            Some("commit=\"b727b00\",version=\"0.1.0\"")
        );
        assert_eq!(parse_build_info("nothing"), None);
    }

    #[test]
    fn connect_specs() {
        assert_eq!(
            parse_connect("udp:127.0.0.1:22222").unwrap(),
            "127.0.0.1:22222".parse().unwrap()
        );
        assert_eq!(
            parse_connect("udp:[::1]:7722").unwrap(),
            "[::1]:7722".parse().unwrap()
        );
        assert!(parse_connect("udp:10.0.0.1:22222").is_err());
        assert!(parse_connect("udp:localhost").is_err());
    }

    #[test]
    fn config_has_the_keys_sluice_knows() {
        let mut o = SpawnOptions::loopback("/x".into());
        o.workers = 2;
        let t = config_text(&o, 1, 2, 3);
        assert!(t.contains("listen = [\"udp:127.0.0.1:1\"]"));
        assert!(t.contains("workers = 2"));
        assert!(t.contains("address = \"127.0.0.1\""));
        assert!(!t.contains("interfaces"));
        o.xdp_interfaces = vec!["caller".into(), "callee".into()];
        let t = config_text(&o, 1, 2, 3);
        assert!(t.contains("interfaces = [\"caller\", \"callee\"]\nenable_forwarding = true"));
    }
}
