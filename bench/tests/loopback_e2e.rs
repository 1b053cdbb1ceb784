//! End to end on loopback: `sluice-bench run` starts the real `sluice` binary and drives both
//! scenarios briefly (200 control cycles; 20 calls for 2 s with RTP and RTCP both ways).
//!
//! The relay binary is found as `SLUICE_BIN`, else `sluice` in this test's own profile directory
//! (`target/<profile>/`), else `target/debug/sluice` or `target/release/sluice` of the workspace
//! (or `CARGO_TARGET_DIR`). When none exists the test builds it with `cargo build -p sluice`
//! (a package's tests cannot name another package's binary with `env!("CARGO_BIN_EXE_..")`).
//! The test skips, saying why, when the relay does not answer `V` on its rtpproxy port.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const BENCH: &str = env!("CARGO_BIN_EXE_sluice-bench");

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("bench/ has a parent")
        .to_path_buf()
}

fn find_sluice() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("SLUICE_BIN") {
        return Some(PathBuf::from(p));
    }
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join("target"));
    // This test runs from target/<profile>/deps/.
    let own_profile = std::env::current_exe()
        .ok()
        .and_then(|e| e.parent()?.parent().map(Path::to_path_buf));
    own_profile
        .into_iter()
        .map(|d| d.join("sluice"))
        .chain([
            target.join("debug").join("sluice"),
            target.join("release").join("sluice"),
        ])
        .find(|p| p.is_file())
}

/// `cargo build -p sluice`, bounded to 15 minutes.
fn build_sluice() -> Option<PathBuf> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    eprintln!("building the relay: {cargo} build -p sluice");
    let mut child = Command::new(cargo)
        .args(["build", "-p", "sluice"])
        .current_dir(workspace_root())
        .stdin(Stdio::null())
        .spawn()
        .ok()?;
    let deadline = Instant::now() + Duration::from_secs(900);
    loop {
        if let Ok(Some(status)) = child.try_wait() {
            if !status.success() {
                return None;
            }
            break;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            return None;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    find_sluice()
}

/// Runs the harness; `None` (skip) when the relay never answered `V`.
fn bench(relay: &Path, name: &str, args: &[&str]) -> Option<serde_json::Value> {
    let json = std::env::temp_dir().join(format!(
        "sluice-bench-e2e-{}-{name}.json",
        std::process::id()
    ));
    let out = Command::new(BENCH)
        .arg("run")
        .arg("--relay-bin")
        .arg(relay)
        .args(args)
        .arg("--quiet")
        .arg("--json")
        .arg(&json)
        .stdin(Stdio::null())
        .output()
        .expect("run sluice-bench");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    eprintln!("{stdout}{stderr}");
    if !out.status.success() && stderr.contains("did not answer V") {
        eprintln!("SKIPPED {name}: the relay does not answer V on its rtpproxy port yet");
        return None;
    }
    assert!(out.status.success(), "sluice-bench {name} failed: {stderr}");
    let text = std::fs::read_to_string(&json).expect("JSON report written");
    let _ = std::fs::remove_file(&json);
    Some(serde_json::from_str(&text).expect("valid JSON report"))
}

#[test]
fn control_and_steady_against_sluice() {
    let Some(relay) = find_sluice().or_else(build_sluice) else {
        eprintln!("SKIPPED: no sluice binary and `cargo build -p sluice` failed");
        return;
    };

    let Some(r) = bench(
        &relay,
        "control",
        &[
            "--scenario",
            "control",
            "--cycles",
            "200",
            "--concurrency",
            "8",
        ],
    ) else {
        return;
    };
    let c = &r["control"];
    assert_eq!(c["cycles_ok"], 200, "{c:#}");
    assert_eq!(c["cycles_failed"], 0);
    assert_eq!(c["errors"], serde_json::json!({}));
    assert_eq!(c["latency"]["cycle"]["count"], 200);
    assert!(c["usage"]["relay_cpu"].is_object(), "relay CPU measured");
    assert_eq!(r["relay"]["mode"], "spawned");

    let Some(r) = bench(
        &relay,
        "steady",
        &[
            "--scenario",
            "steady",
            "--calls",
            "20",
            "--ramp",
            "200",
            "--duration",
            "2s",
            "--rtcp-interval",
            "500ms",
        ],
    ) else {
        return;
    };
    let s = &r["steady"];
    assert_eq!(s["calls_up"], 20, "{s:#}");
    for d in s["directions"].as_array().unwrap() {
        let sent = d["sent"].as_u64().unwrap();
        // 20 calls x 50 pps x >= 2 s.
        assert!(sent >= 20 * 50 * 2, "{d:#}");
        assert_eq!(d["lost"], 0, "loopback must not lose packets: {d:#}");
        assert_eq!(d["received"].as_u64().unwrap(), sent);
        assert_eq!(d["misrouted"], 0);
        assert_eq!(d["duplicates"], 0);
        assert_eq!(d["wrong_source"], 0);
        assert!(d["rtcp_sent"].as_u64().unwrap() > 0);
        assert_eq!(d["rtcp_received"], d["rtcp_sent"], "{d:#}");
        assert!(d["window_latency"]["count"].as_u64().unwrap() > 0);
    }
    assert_eq!(s["teardown_errors"], serde_json::json!({}));
    assert!(s["relay_cpu_ns_per_packet"].as_f64().unwrap() > 0.0);
}

#[test]
fn control_over_grpc_with_both_clients() {
    let Some(relay) = find_sluice().or_else(build_sluice) else {
        eprintln!("SKIPPED: no sluice binary and `cargo build -p sluice` failed");
        return;
    };
    for client in ["h2", "tonic"] {
        let Some(r) = bench(
            &relay,
            &format!("grpc-{client}"),
            &[
                "--target",
                "sluice-grpc",
                "--scenario",
                "control",
                "--cycles",
                "200",
                "--concurrency",
                "8",
                "--grpc-client",
                client,
            ],
        ) else {
            return;
        };
        let c = &r["control"];
        assert_eq!(c["cycles_ok"], 200, "{client}: {c:#}");
        assert_eq!(c["cycles_failed"], 0, "{client}");
        assert_eq!(c["errors"], serde_json::json!({}), "{client}");
        assert_eq!(c["latency"]["delete"]["count"], 200, "{client}");
    }
}
