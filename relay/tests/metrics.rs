//! Metrics on loopback: a call set up over the rtpproxy protocol and one over gRPC, media both
//! ways with a lost packet and an RTP Bleed attempt, then `/metrics` is scraped and checked:
//! the counters moved by exactly what happened, every metric the Grafana dashboard and the
//! Prometheus alerts use exists in the live output, and promtool accepts the output, the rules,
//! the scrape config and the alert unit tests.
//!
//! promtool comes from Debian's `prometheus` package (`cargo xtask setup` installs it). Without
//! it these tests fail when run as root (CI) and are skipped with a message otherwise.

mod common;

use common::{control_socket, recv, rtp, start_daemon};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use sluice::daemon::Daemon;
use sluice_proto::v1 as pb;
use sluice_proto::v1::relay_client::RelayClient;

fn deploy(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../deploy")
        .join(path)
}

// ---------------------------------------------------------------------------------------------
// The Prometheus text format, as far as these checks need it.

#[derive(Debug)]
struct Sample {
    name: String,
    labels: BTreeMap<String, String>,
    value: f64,
}

#[derive(Debug, Default)]
struct Exposition {
    samples: Vec<Sample>,
    /// Family name -> type, from the `# TYPE` lines.
    types: HashMap<String, String>,
}

impl Exposition {
    fn parse(text: &str) -> Exposition {
        let mut e = Exposition::default();
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix("# TYPE ") {
                let (name, kind) = rest.split_once(' ').expect("TYPE line");
                e.types.insert(name.to_owned(), kind.to_owned());
                continue;
            }
            if line.starts_with('#') || line.trim().is_empty() {
                continue;
            }
            e.samples.push(parse_sample(line));
        }
        e
    }

    /// Sum of the samples of `name` carrying at least `labels`; None when there are none.
    fn get(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        let matching: Vec<f64> = self
            .samples
            .iter()
            .filter(|s| {
                s.name == name
                    && labels
                        .iter()
                        .all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v))
            })
            .map(|s| s.value)
            .collect();
        (!matching.is_empty()).then(|| matching.iter().sum())
    }

    fn value(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.get(name, labels)
            .unwrap_or_else(|| panic!("no sample {name}{labels:?}"))
    }

    /// A name an expression may use: a sample name, or a histogram's `_bucket`/`_sum`/`_count`.
    fn has(&self, name: &str) -> bool {
        if self.samples.iter().any(|s| s.name == name) {
            return true;
        }
        ["_bucket", "_sum", "_count"].iter().any(|suffix| {
            name.strip_suffix(suffix)
                .is_some_and(|base| self.types.get(base).map(String::as_str) == Some("histogram"))
        })
    }
}

/// `name{a="x",b="y \"quoted\", with comma"} 12.5`
fn parse_sample(line: &str) -> Sample {
    let name_end = line
        .find(['{', ' '])
        .unwrap_or_else(|| panic!("sample line `{line}`"));
    let name = line[..name_end].to_owned();
    let mut labels = BTreeMap::new();
    let mut rest = &line[name_end..];
    if let Some(inner) = rest.strip_prefix('{') {
        let mut chars = inner.char_indices();
        let mut key = String::new();
        let end = loop {
            let (i, c) = chars.next().unwrap_or_else(|| panic!("unclosed `{line}`"));
            match c {
                '}' => break i,
                ',' => {}
                '=' => {
                    assert_eq!(chars.next().map(|(_, c)| c), Some('"'), "`{line}`");
                    let mut value = String::new();
                    loop {
                        match chars.next().map(|(_, c)| c) {
                            Some('"') => break,
                            Some('\\') => match chars.next().map(|(_, c)| c) {
                                Some('n') => value.push('\n'),
                                Some(c) => value.push(c),
                                None => panic!("`{line}`"),
                            },
                            Some(c) => value.push(c),
                            None => panic!("unterminated value in `{line}`"),
                        }
                    }
                    labels.insert(std::mem::take(&mut key), value);
                }
                c => key.push(c),
            }
        };
        rest = &inner[end + 1..];
    }
    let value = rest
        .split_whitespace()
        .next()
        .and_then(|v| match v {
            "+Inf" => Some(f64::INFINITY),
            "-Inf" => Some(f64::NEG_INFINITY),
            v => v.parse().ok(),
        })
        .unwrap_or_else(|| panic!("no value in `{line}`"));
    Sample {
        name,
        labels,
        value,
    }
}

/// Every `sluice_*` metric name in a PromQL expression (not in its string literals).
fn metric_names(expr: &str) -> BTreeSet<String> {
    let mut code = String::with_capacity(expr.len());
    let mut chars = expr.chars();
    while let Some(c) = chars.next() {
        if c != '"' {
            code.push(c);
            continue;
        }
        code.push(' ');
        while let Some(c) = chars.next() {
            match c {
                '\\' => {
                    chars.next();
                }
                '"' => break,
                _ => {}
            }
        }
    }
    let expr = code.as_str();
    let mut names = BTreeSet::new();
    let bytes = expr.as_bytes();
    let mut i = 0;
    while let Some(pos) = expr[i..].find("sluice_") {
        let start = i + pos;
        let boundary = start == 0 || {
            let b = bytes[start - 1];
            !(b.is_ascii_alphanumeric() || b == b'_' || b == b':')
        };
        let len = expr[start..]
            .find(|c: char| !(c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_'))
            .unwrap_or(expr.len() - start);
        if boundary {
            names.insert(expr[start..start + len].to_owned());
        }
        i = start + len;
    }
    names
}

/// The strings under `keys` anywhere in a Grafana dashboard: `expr` for the panels' PromQL,
/// `query` and `definition` for the template variables' queries.
fn dashboard_strings(value: &serde_json::Value, keys: &[&str], out: &mut Vec<String>) {
    match value {
        serde_json::Value::Object(map) => {
            for (k, v) in map {
                match v {
                    serde_json::Value::String(s) if keys.contains(&k.as_str()) => {
                        out.push(s.clone())
                    }
                    _ => dashboard_strings(v, keys, out),
                }
            }
        }
        serde_json::Value::Array(items) => {
            items.iter().for_each(|v| dashboard_strings(v, keys, out))
        }
        _ => {}
    }
}

fn dashboard() -> serde_json::Value {
    serde_json::from_str(
        &std::fs::read_to_string(deploy("grafana/sluice.json")).expect("dashboard"),
    )
    .expect("the dashboard is JSON")
}

/// The `expr:` values of a Prometheus rules file (one-line or `|`/`>` block scalars).
fn rule_exprs(yaml: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut lines = yaml.lines().peekable();
    while let Some(line) = lines.next() {
        let trimmed = line.trim_start();
        let Some(rest) = trimmed.strip_prefix("expr:") else {
            continue;
        };
        let rest = rest.trim();
        if rest.starts_with('|') || rest.starts_with('>') {
            let indent = line.len() - trimmed.len();
            let mut block = String::new();
            while let Some(next) = lines.peek() {
                let next_indent = next.len() - next.trim_start().len();
                if !next.trim().is_empty() && next_indent <= indent {
                    break;
                }
                block.push_str(next.trim());
                block.push(' ');
                lines.next();
            }
            out.push(block);
        } else {
            out.push(rest.to_owned());
        }
    }
    out
}

// ---------------------------------------------------------------------------------------------
// promtool

fn is_root() -> bool {
    // SAFETY: geteuid cannot fail and touches no memory.
    unsafe { libc::geteuid() == 0 }
}

/// promtool, or None (after saying why) when it is missing and the tests may skip.
fn promtool() -> Option<&'static str> {
    match Command::new("promtool").arg("--version").output() {
        Ok(out) if out.status.success() => Some("promtool"),
        result => {
            let why = format!(
                "promtool not runnable ({result:?}); install Debian's `prometheus` package \
                 (`cargo xtask setup`)"
            );
            assert!(!is_root(), "{why}");
            eprintln!("skipping the promtool checks: {why}");
            None
        }
    }
}

/// Runs promtool with `args` (and `stdin`), failing the test with its output unless it succeeds.
fn run_promtool(promtool: &str, args: &[&str], stdin: Option<&str>) {
    let mut child = Command::new(promtool)
        .args(args)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool starts");
    if let Some(input) = stdin {
        let mut pipe = child.stdin.take().expect("stdin");
        pipe.write_all(input.as_bytes()).expect("write to promtool");
    }
    let out = child.wait_with_output().expect("promtool runs");
    assert!(
        out.status.success(),
        "promtool {args:?} failed ({}):\n{}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

// ---------------------------------------------------------------------------------------------
// The relay

struct Relay {
    rt: tokio::runtime::Runtime,
    daemon: Option<Daemon>,
    control: UdpSocket,
    rtpp: SocketAddr,
    metrics: SocketAddr,
    cookie: u32,
}

impl Relay {
    fn start(port_min: u16, port_max: u16) -> Relay {
        let (rt, daemon) = start_daemon(port_min, port_max, "");
        Relay {
            rtpp: daemon.rtpp_udp_addr().expect("a UDP rtpproxy listener"),
            metrics: daemon.metrics_addr(),
            daemon: Some(daemon),
            rt,
            control: control_socket(),
            cookie: 0,
        }
    }

    fn cmd(&mut self, command: &str) -> String {
        self.cookie += 1;
        let cookie = format!("m{}", self.cookie);
        self.control
            .send_to(format!("{cookie} {command}").as_bytes(), self.rtpp)
            .unwrap();
        let mut buf = [0u8; 4096];
        let n = self.control.recv(&mut buf).expect("rtpproxy reply");
        let reply = String::from_utf8_lossy(&buf[..n]).trim_end().to_owned();
        reply
            .strip_prefix(&format!("{cookie} "))
            .unwrap_or_else(|| panic!("`{command}` -> `{reply}`"))
            .to_owned()
    }

    fn port(&mut self, command: &str) -> u16 {
        let reply = self.cmd(command);
        reply
            .split(' ')
            .next()
            .and_then(|p| p.parse().ok())
            .unwrap_or_else(|| panic!("`{command}` -> `{reply}`"))
    }

    fn scrape_text(&self) -> String {
        let mut stream = TcpStream::connect_timeout(&self.metrics, Duration::from_secs(5)).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        write!(
            stream,
            "GET /metrics HTTP/1.0\r\nHost: {}\r\n\r\n",
            self.metrics
        )
        .unwrap();
        let mut response = String::new();
        stream.read_to_string(&mut response).unwrap();
        let (head, body) = response.split_once("\r\n\r\n").expect("HTTP response");
        assert!(head.contains(" 200 "), "{head}");
        assert!(head.contains("text/plain"), "{head}");
        body.to_owned()
    }

    fn scrape(&self) -> Exposition {
        Exposition::parse(&self.scrape_text())
    }

    /// Scrapes until `done` holds (workers count a packet just after sending it; the jitter is
    /// sampled once a second); panics with the last scrape after 10 s.
    fn scrape_until(&self, what: &str, done: impl Fn(&Exposition) -> bool) -> Exposition {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let e = self.scrape();
            if done(&e) {
                return e;
            }
            assert!(Instant::now() < deadline, "{what}: {e:#?}");
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        if let Some(d) = self.daemon.take() {
            let _ = self.rt.block_on(d.shutdown());
        }
    }
}

fn udp() -> UdpSocket {
    let s = UdpSocket::bind("127.0.0.1:0").unwrap();
    s.set_read_timeout(Some(Duration::from_millis(500)))
        .unwrap();
    s
}

fn lo(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

fn grpc_stream(addr: SocketAddr) -> pb::MediaStream {
    pb::MediaStream {
        index: 1,
        address: addr.ip().to_string(),
        rtp_port: u32::from(addr.port()),
        rtcp_port: None,
        interface: None,
    }
}

const USER: (&str, &str) = ("path", "user");
const XDP: (&str, &str) = ("path", "xdp");

#[test]
fn a_call_moves_the_counters_and_every_dashboard_and_alert_metric_exists() {
    let mut relay = Relay::start(44600, 44699);
    let before = relay.scrape();
    assert_eq!(before.value("sluice_sessions_active", &[]), 0.0);
    assert_eq!(
        before.value("sluice_port_pairs_capacity", &[("interface", "lo")]),
        50.0
    );

    // A call over the rtpproxy protocol, media both ways; the caller loses packet 25.
    let (caller, callee, attacker) = (udp(), udp(), udp());
    let (cp, ep) = (
        caller.local_addr().unwrap().port(),
        callee.local_addr().unwrap().port(),
    );
    let to_callee = relay.port(&format!("U m1@h 127.0.0.1 {cp} ft;1"));
    let to_caller = relay.port(&format!("L m1@h 127.0.0.1 {ep} ft;1 tt;1"));
    let during = relay.scrape();
    assert_eq!(during.value("sluice_sessions_active", &[]), 1.0);
    assert_eq!(
        during.value("sluice_port_pairs_in_use", &[("interface", "lo")]),
        2.0
    );
    for seq in 0..50u16 {
        if seq != 25 {
            caller.send_to(&rtp(1, seq), lo(to_caller)).unwrap();
        }
        callee.send_to(&rtp(2, seq), lo(to_callee)).unwrap();
        // RTP pacing, so the receivers see a real (small) jitter.
        std::thread::sleep(Duration::from_millis(2));
    }
    let (mut to_callee_got, mut to_caller_got) = (0, 0);
    while recv(&callee).is_some() {
        to_callee_got += 1;
    }
    while recv(&caller).is_some() {
        to_caller_got += 1;
    }
    assert_eq!((to_callee_got, to_caller_got), (49, 50));
    // Both legs are latched now: a third party's packets are RTP Bleed attempts.
    for seq in 0..10u16 {
        attacker.send_to(&rtp(66, seq), lo(to_caller)).unwrap();
    }
    assert!(
        recv(&callee).is_none(),
        "nothing from the attacker gets through"
    );

    // Control traffic: errors of several kinds, and a call over gRPC.
    assert_eq!(relay.cmd("D nosuch@h ft tt"), "E50");
    assert_eq!(relay.cmd("Q m1@h ft;1 tt;1 bogus_stat"), "E62");
    relay
        .control
        .send_to(b"m0 U\n", relay.rtpp)
        .expect("send a malformed command");
    let mut buf = [0u8; 512];
    let _ = relay.control.recv(&mut buf);
    let grpc = relay.daemon.as_ref().unwrap().grpc_addr();
    relay.rt.block_on(async {
        let mut client = RelayClient::connect(format!("http://{grpc}"))
            .await
            .expect("gRPC connects");
        client
            .offer(pb::OfferRequest {
                call_id: "g1".into(),
                from_tag: "a".into(),
                to_tag: None,
                streams: vec![grpc_stream(lo(4000))],
                options: None,
            })
            .await
            .expect("offer");
        client
            .answer(pb::AnswerRequest {
                call_id: "g1".into(),
                from_tag: "a".into(),
                to_tag: "b".into(),
                streams: vec![grpc_stream(lo(5000))],
                options: None,
            })
            .await
            .expect("answer");
        let missing = client
            .get_session(pb::GetSessionRequest {
                call_id: "nosuch".into(),
            })
            .await
            .expect_err("no such session");
        assert_eq!(missing.code(), tonic::Code::NotFound);
        client
            .delete(pb::DeleteRequest {
                call_id: "g1".into(),
                ..Default::default()
            })
            .await
            .expect("delete");
    });

    let dir = |d: &'static str| ("direction", d);
    let fwd = "sluice_forwarded_packets_total";
    let after = relay.scrape_until("media counted and jitter sampled", |e| {
        e.get(fwd, &[USER, dir("caller_to_callee")]) == Some(49.0)
            && e.get(fwd, &[USER, dir("callee_to_caller")]) == Some(50.0)
            && e.get(
                "sluice_dropped_packets_total",
                &[("reason", "source_mismatch")],
            ) == Some(10.0)
            && e.get("sluice_rtp_jitter_seconds_count", &[]) >= Some(2.0)
    });
    let v = |name: &str, labels: &[(&str, &str)]| after.value(name, labels);
    assert_eq!(
        v(
            "sluice_forwarded_bytes_total",
            &[USER, dir("caller_to_callee")]
        ),
        49.0 * 172.0
    );
    assert_eq!(
        v(
            "sluice_forwarded_bytes_total",
            &[USER, dir("callee_to_caller")]
        ),
        50.0 * 172.0
    );
    // No XDP on loopback: the kernel path forwarded nothing, and says why.
    assert_eq!(v(fwd, &[XDP]), 0.0);
    assert_eq!(v("sluice_xdp_flows_capacity", &[]), 0.0);
    assert!(
        after
            .samples
            .iter()
            .any(|s| s.name == "sluice_xdp_fallback" && s.value == 1.0),
        "a fallback reason is exported"
    );
    assert_eq!(
        v("sluice_user_received_packets_total", &[]),
        49.0 + 50.0 + 10.0
    );
    assert_eq!(
        v(
            "sluice_dropped_packets_total",
            &[("reason", "no_destination")]
        ),
        0.0
    );
    // RFC 3550: the first packet is probation, so 2..=49 are expected of the caller's, 25 lost.
    assert_eq!(v("sluice_rtp_lost_packets_total", &[USER]), 1.0);
    assert_eq!(v("sluice_rtp_lost_packets_total", &[XDP]), 0.0);
    let expected = v("sluice_rtp_expected_packets_total", &[USER]);
    assert!((90.0..=100.0).contains(&expected), "expected {expected}");
    assert_eq!(v("sluice_latch_events_total", &[("event", "latched")]), 2.0);
    assert_eq!(
        v("sluice_latch_events_total", &[("event", "relatched")]),
        0.0
    );
    let jitter_sum = v("sluice_rtp_jitter_seconds_sum", &[]);
    assert!(
        (0.0..1.0).contains(&jitter_sum),
        "jitter sum {jitter_sum} s over a handful of samples"
    );

    let rtpp = ("protocol", "rtpp");
    let grpc = ("protocol", "grpc");
    let requests = |labels: &[(&str, &str)]| after.get("sluice_control_requests_total", labels);
    let cmd = |c: &'static str| ("command", c);
    let res = |r: &'static str| ("result", r);
    assert_eq!(requests(&[rtpp, cmd("offer"), res("ok")]), Some(1.0));
    assert_eq!(requests(&[rtpp, cmd("answer"), res("ok")]), Some(1.0));
    assert_eq!(
        requests(&[rtpp, cmd("delete"), res("not_found")]),
        Some(1.0)
    );
    assert_eq!(requests(&[rtpp, cmd("query"), res("invalid")]), Some(1.0));
    assert_eq!(
        requests(&[rtpp, cmd("malformed"), res("invalid")]),
        Some(1.0)
    );
    assert_eq!(requests(&[grpc, cmd("offer"), res("ok")]), Some(1.0));
    assert_eq!(requests(&[grpc, cmd("answer"), res("ok")]), Some(1.0));
    assert_eq!(requests(&[grpc, cmd("delete"), res("ok")]), Some(1.0));
    assert_eq!(
        requests(&[grpc, cmd("get_session"), res("not_found")]),
        Some(1.0)
    );
    let latency = "sluice_control_request_duration_seconds_count";
    assert_eq!(after.value(latency, &[rtpp, cmd("offer")]), 1.0);
    assert_eq!(after.value(latency, &[grpc, cmd("answer")]), 1.0);
    assert_eq!(
        after.value(
            "sluice_control_request_duration_seconds_bucket",
            &[grpc, cmd("offer"), ("le", "+Inf")]
        ),
        1.0
    );
    assert_eq!(
        v("sluice_control_rejected_total", &[rtpp, ("reason", "acl")]),
        0.0
    );

    // Sessions: both created; the gRPC one deleted, the rtpproxy one still up.
    assert_eq!(v("sluice_sessions_created_total", &[]), 2.0);
    assert_eq!(v("sluice_sessions_active", &[]), 1.0);
    assert_eq!(
        v("sluice_sessions_ended_total", &[("reason", "deleted")]),
        1.0
    );
    assert_eq!(relay.cmd("D m1@h ft tt"), "0");
    let ended = relay.scrape();
    assert_eq!(ended.value("sluice_sessions_active", &[]), 0.0);
    assert_eq!(ended.value("sluice_streams_active", &[]), 0.0);
    assert_eq!(
        ended.value("sluice_sessions_ended_total", &[("reason", "deleted")]),
        2.0
    );
    assert_eq!(
        ended.value(
            "sluice_sessions_ended_total",
            &[("reason", "media_timeout")]
        ),
        0.0
    );
    assert_eq!(
        ended.value("sluice_port_pairs_in_use", &[("interface", "lo")]),
        0.0
    );
    // Counters of ended calls stay.
    assert_eq!(ended.value(fwd, &[USER]), 99.0);

    // Every metric the dashboard and the alerts use is in the live output.
    let mut exprs = Vec::new();
    dashboard_strings(&dashboard(), &["expr", "query", "definition"], &mut exprs);
    let dashboard_names: BTreeSet<String> = exprs.iter().flat_map(|e| metric_names(e)).collect();
    let alerts = std::fs::read_to_string(deploy("prometheus/alerts.yml")).expect("alerts");
    let alert_exprs = rule_exprs(&alerts);
    assert_eq!(alert_exprs.len(), 4, "{alert_exprs:?}");
    let alert_names: BTreeSet<String> = alert_exprs.iter().flat_map(|e| metric_names(e)).collect();
    for (what, names, required) in [
        (
            "dashboard",
            &dashboard_names,
            &[
                "sluice_sessions_active",
                "sluice_forwarded_packets_total",
                "sluice_dropped_packets_total",
                "sluice_rtp_lost_packets_total",
                "sluice_rtp_jitter_seconds_bucket",
                "sluice_port_pairs_in_use",
                "sluice_control_request_duration_seconds_bucket",
            ][..],
        ),
        (
            "alerts",
            &alert_names,
            &[
                "sluice_port_pairs_capacity",
                "sluice_xdp_fallback",
                "sluice_control_requests_total",
                "sluice_dropped_packets_total",
            ][..],
        ),
    ] {
        for r in required {
            assert!(names.contains(*r), "the {what} shows {r}: {names:?}");
        }
        let missing: Vec<&String> = names.iter().filter(|n| !ended.has(n)).collect();
        assert!(
            missing.is_empty(),
            "the {what} uses metrics /metrics does not have: {missing:?}"
        );
    }

    // promtool's linter (names, units, help, types) accepts the live output.
    if let Some(promtool) = promtool() {
        run_promtool(promtool, &["check", "metrics"], Some(&relay.scrape_text()));
    }
}

#[test]
fn promtool_accepts_the_rules_the_scrape_config_and_the_alert_tests() {
    let Some(promtool) = promtool() else {
        return;
    };
    let path = |p: &str| deploy(p).to_string_lossy().into_owned();
    run_promtool(
        promtool,
        &["check", "rules", &path("prometheus/alerts.yml")],
        None,
    );
    run_promtool(
        promtool,
        &["check", "config", &path("prometheus/prometheus.yml")],
        None,
    );
    run_promtool(
        promtool,
        &["test", "rules", &path("prometheus/alerts_test.yml")],
        None,
    );

    // Every dashboard query parses: promtool checks them as recording rules, with Grafana's
    // variables replaced by what they expand to.
    let mut exprs = Vec::new();
    dashboard_strings(&dashboard(), &["expr"], &mut exprs);
    assert!(exprs.len() > 10, "{exprs:?}");
    let mut rules = String::from("groups:\n  - name: dashboard\n    rules:\n");
    for (i, expr) in exprs.iter().enumerate() {
        let expr = expr
            .replace("$__rate_interval", "5m")
            .replace("$instance", ".*");
        assert!(!expr.contains('$'), "unexpanded variable in `{expr}`");
        rules.push_str(&format!(
            "      - record: dashboard:panel_{i}\n        expr: '{}'\n",
            expr.replace('\'', "''")
        ));
    }
    let file =
        std::env::temp_dir().join(format!("sluice-dashboard-rules-{}.yml", std::process::id()));
    std::fs::write(&file, rules).unwrap();
    run_promtool(promtool, &["check", "rules", &file.to_string_lossy()], None);
    let _ = std::fs::remove_file(&file);
}

#[test]
fn the_fallback_alert_exempts_xdp_off_and_loopback_media() {
    let config = sluice::config::Config::from_toml("[xdp]\nmode = \"off\"\n", "test").unwrap();
    let (fast_path, status) = sluice::datapath::xdp::start(&config.xdp, &[]).unwrap();
    assert!(fast_path.is_none());
    let [reason] = status.fallback.as_slice() else {
        panic!("one reason: {:?}", status.fallback);
    };
    // As it appears inside a PromQL string in the rule.
    let quoted = reason.replace('\\', "\\\\").replace('"', "\\\"");
    let alerts = std::fs::read_to_string(deploy("prometheus/alerts.yml")).unwrap();
    let rule = rule_exprs(&alerts)
        .into_iter()
        .find(|e| e.contains("sluice_xdp_fallback"))
        .expect("the fallback alert");
    assert!(
        rule.contains(&format!("reason!=\"{quoted}\"")),
        "`{rule}` must exempt `{reason}`"
    );
    // A relay whose media address is on loopback (the embedded default) has nothing to
    // offload: not a fallback to alert on either.
    let config = sluice::config::Config::from_toml("", "test").unwrap();
    let (fast_path, status) =
        sluice::datapath::xdp::start(&config.xdp, &["127.0.0.1".parse().unwrap()]).unwrap();
    assert!(fast_path.is_none());
    let [reason] = status.fallback.as_slice() else {
        panic!("one reason: {:?}", status.fallback);
    };
    assert!(
        reason.contains(": loopback device: ") && rule.contains(r#"reason!~".*loopback device.*""#),
        "`{rule}` must exempt `{reason}`"
    );
}

#[test]
fn the_exposition_parser_handles_escapes_and_histograms() {
    let e = Exposition::parse(
        "# TYPE h histogram\nh_bucket{le=\"+Inf\"} 3\nh_sum 1.5\nh_count 3\n\
         g{reason=\"xdp.mode = \\\"off\\\", x\",b=\"\"} 1\n",
    );
    assert_eq!(e.value("g", &[("reason", "xdp.mode = \"off\", x")]), 1.0);
    assert_eq!(e.value("g", &[("b", "")]), 1.0);
    assert!(e.has("h_bucket") && e.has("h_sum") && !e.has("h"));
    assert_eq!(
        metric_names("sum(rate(sluice_a_total{x=\"sluice_not\"}[5m])) / sluice_b"),
        ["sluice_a_total", "sluice_b"]
            .into_iter()
            .map(String::from)
            .collect()
    );
}
