//! The `sluice` and `sluicectl` binaries end to end on loopback: startup with the embedded
//! defaults, /metrics, gRPC health, graceful shutdown on SIGTERM, config checking.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const SLUICE: &str = env!("CARGO_BIN_EXE_sluice");
const SLUICECTL: &str = env!("CARGO_BIN_EXE_sluicectl");

struct Running {
    child: Child,
    metrics: SocketAddr,
    grpc: SocketAddr,
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts the daemon on ephemeral loopback ports and reads the addresses from its ready line.
fn start(extra: &[&str]) -> Running {
    let mut child = Command::new(SLUICE)
        .args([
            "--metrics-listen",
            "127.0.0.1:0",
            "--grpc-listen",
            "127.0.0.1:0",
        ])
        .args(extra)
        .env_remove("RUST_LOG")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn sluice");
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if line.contains("ready") {
                let _ = tx.send(line);
            }
        }
    });
    let line = rx
        .recv_timeout(Duration::from_secs(20))
        .expect("daemon logs its ready line");
    let field = |name: &str| -> SocketAddr {
        let start = line.find(&format!("{name}=")).expect(name) + name.len() + 1;
        let rest = line[start..].trim_start_matches("http://");
        let end = rest.find(['/', ' ']).unwrap_or(rest.len());
        rest[..end].parse().expect("socket address")
    };
    Running {
        metrics: field("metrics"),
        grpc: field("grpc"),
        child,
    }
}

fn http_get(addr: SocketAddr, path: &str) -> String {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    write!(stream, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    response
}

#[test]
fn runs_with_defaults_serves_metrics_and_health_and_stops_on_sigterm() {
    let mut daemon = start(&[]);
    let response = http_get(daemon.metrics, "/metrics");
    assert!(response.starts_with("HTTP/1.0 200") || response.starts_with("HTTP/1.1 200"));
    assert!(response.contains("sluice_build_info{"), "{response}");
    assert!(response.contains("process_cpu_seconds_total"), "{response}");
    assert!(http_get(daemon.metrics, "/nope").contains(" 404 "));

    let endpoint = format!("http://{}", daemon.grpc);
    let health = Command::new(SLUICECTL)
        .args(["--endpoint", &endpoint, "--output", "json", "health"])
        .output()
        .unwrap();
    assert!(health.status.success(), "{health:?}");
    assert_eq!(
        String::from_utf8_lossy(&health.stdout).trim(),
        r#"{"status":"SERVING"}"#
    );
    let info = Command::new(SLUICECTL)
        .args(["--endpoint", &endpoint, "info"])
        .output()
        .unwrap();
    let info = String::from_utf8_lossy(&info.stdout);
    assert!(info.contains(env!("CARGO_PKG_VERSION")), "{info}");

    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(daemon.child.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    let status = loop {
        if let Some(status) = daemon.child.try_wait().unwrap() {
            break status;
        }
        assert!(Instant::now() < deadline, "daemon did not stop on SIGTERM");
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(status.success(), "clean exit after SIGTERM: {status:?}");
    assert!(
        TcpStream::connect(daemon.metrics).is_err(),
        "listener closed"
    );
}

#[test]
fn sluicectl_reports_unreachable_relay() {
    let out = Command::new(SLUICECTL)
        .args(["--endpoint", "http://127.0.0.1:1", "health"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot connect"));
}

#[test]
fn taken_port_fails_startup_with_a_clear_error() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let out = Command::new(SLUICE)
        .args(["--metrics-listen", &addr, "--grpc-listen", "127.0.0.1:0"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("cannot listen for metrics") && stderr.contains(&addr),
        "{stderr}"
    );
}

#[test]
fn check_config_names_file_key_and_line_of_a_typo() {
    let dir = std::env::temp_dir().join(format!("sluice-cfg-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("typo.toml");
    std::fs::write(&path, "[media]\nport_min = 30000\nprot_max = 39999\n").unwrap();
    let out = Command::new(SLUICE)
        .arg("--check-config")
        .arg(&path)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(&format!("{}:3:", path.display())),
        "{stderr}"
    );
    assert!(stderr.contains("prot_max"), "{stderr}");

    std::fs::write(&path, "[metrics]\nlisten = \"127.0.0.1:9999\"\n").unwrap();
    let ok = Command::new(SLUICE)
        .arg("--check-config")
        .arg(&path)
        .output()
        .unwrap();
    assert!(ok.status.success(), "{ok:?}");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn printed_default_config_is_valid_and_checkable() {
    let out = Command::new(SLUICE)
        .arg("--print-default-config")
        .output()
        .unwrap();
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    assert_eq!(text, sluice::config::DEFAULT_TOML);
    let mut check = Command::new(SLUICE)
        .args(["--check-config", "/dev/stdin"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    check
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    assert!(check.wait().unwrap().success());
}

#[test]
fn bad_flag_value_is_rejected() {
    let out = Command::new(SLUICE)
        .args(["--check-config", "--log-level", "=["])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--log-level"));
}
