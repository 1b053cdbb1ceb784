//! End to end on loopback against rtpengine: `sluice-bench run --target rtpengine-ng` starts
//! Debian's rtpengine (userspace, `--table=-1`) and drives both scenarios briefly (200 control
//! cycles; 20 calls for 2 s with RTP and RTCP both ways).
//!
//! rtpengine is found on PATH or at /usr/bin/rtpengine (`RTPENGINE_BIN` overrides). When it is
//! missing the test skips, saying why, except as root or with
//! `SLUICE_REQUIRE_PRIVILEGED_TESTS=1` (CI, after `cargo xtask setup` installed it): then it
//! fails, so a machine without rtpengine never passes silently.

use std::path::PathBuf;
use std::process::{Command, Stdio};

const BENCH: &str = env!("CARGO_BIN_EXE_sluice-bench");

fn find_rtpengine() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("RTPENGINE_BIN") {
        return Some(PathBuf::from(p));
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .map(|d| d.join("rtpengine"))
        .chain([PathBuf::from("/usr/bin/rtpengine")])
        .find(|p| p.is_file())
}

fn rtpengine_or_skip() -> Option<PathBuf> {
    if let Some(p) = find_rtpengine() {
        return Some(p);
    }
    let why = "rtpengine is not installed (apt-get install rtpengine-daemon; `cargo xtask setup` installs it)";
    let root = nix::unistd::geteuid().is_root();
    let required = std::env::var("SLUICE_REQUIRE_PRIVILEGED_TESTS").is_ok_and(|v| v == "1");
    assert!(!root && !required, "{why}");
    eprintln!("SKIPPED: {why}");
    None
}

fn bench(rtpengine: &std::path::Path, name: &str, args: &[&str]) -> serde_json::Value {
    let json = std::env::temp_dir().join(format!(
        "sluice-bench-rtpengine-e2e-{}-{name}.json",
        std::process::id()
    ));
    let out = Command::new(BENCH)
        .args(["run", "--target", "rtpengine-ng", "--relay-bin"])
        .arg(rtpengine)
        // Away from the default range, so a Sluice test running at the same time cannot
        // collide with it.
        .args([
            "--relay-ports",
            "33000-33999",
            "--endpoint-ports",
            "45000-45999",
        ])
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
    assert!(out.status.success(), "sluice-bench {name} failed: {stderr}");
    let text = std::fs::read_to_string(&json).expect("JSON report written");
    let _ = std::fs::remove_file(&json);
    serde_json::from_str(&text).expect("valid JSON report")
}

#[test]
fn control_and_steady_against_rtpengine() {
    let Some(rtpengine) = rtpengine_or_skip() else {
        return;
    };

    let r = bench(
        &rtpengine,
        "control",
        &[
            "--scenario",
            "control",
            "--cycles",
            "200",
            "--concurrency",
            "8",
        ],
    );
    assert_eq!(r["target"], "rtpengine-ng");
    assert_eq!(r["relay"]["mode"], "spawned");
    assert!(
        r["relay"]["config"]
            .as_str()
            .is_some_and(|c| c.contains("--table=-1") && c.contains("--interface=127.0.0.1")),
        "{:#}",
        r["relay"]
    );
    let c = &r["control"];
    assert_eq!(c["cycles_ok"], 200, "{c:#}");
    assert_eq!(c["cycles_failed"], 0);
    assert_eq!(c["errors"], serde_json::json!({}));
    assert_eq!(c["latency"]["cycle"]["count"], 200);
    assert_eq!(c["client"]["unparsable_replies"], 0);
    assert!(
        c["usage"]["relay_cpu"].is_object(),
        "rtpengine CPU measured"
    );

    let r = bench(
        &rtpengine,
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
    );
    let s = &r["steady"];
    assert_eq!(s["calls_up"], 20, "{s:#}");
    for d in s["directions"].as_array().expect("directions") {
        let sent = d["sent"].as_u64().expect("sent");
        // 20 calls x 50 pps x >= 2 s.
        assert!(sent >= 20 * 50 * 2, "{d:#}");
        assert_eq!(d["lost"], 0, "loopback must not lose packets: {d:#}");
        assert_eq!(d["received"].as_u64(), Some(sent));
        assert_eq!(d["misrouted"], 0);
        assert_eq!(d["duplicates"], 0);
        assert_eq!(d["wrong_source"], 0, "{d:#}");
        assert!(d["rtcp_sent"].as_u64().is_some_and(|n| n > 0));
        assert_eq!(d["rtcp_received"], d["rtcp_sent"], "{d:#}");
        assert!(d["window_latency"]["count"].as_u64().is_some_and(|n| n > 0));
    }
    assert_eq!(s["teardown_errors"], serde_json::json!({}));
    assert!(
        s["relay_cpu_ns_per_packet"]
            .as_f64()
            .is_some_and(|ns| ns > 0.0)
    );
}
