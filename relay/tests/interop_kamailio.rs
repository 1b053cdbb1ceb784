//! Interop test with real peers from Debian: stock Kamailio 5.6 (its `rtpproxy` module, config
//! `deploy/kamailio/kamailio.cfg`) and sipp calls, with RTP both ways through the relay.
//!
//! ```text
//!  caller ns 198.18.1.2          relay ns 198.18.1.1 | 198.18.2.1          callee ns 198.18.2.2
//!  sipp UAC (uac.xml) ──SIP──▶ Kamailio :5060 ──SIP──────────────────▶ sipp UAS (uas.xml)
//!  RTP endpoints (this test) ◀──RTP──▶ relay (media 198.18.1.1) ◀──RTP──▶ RTP endpoints
//!                                      ▲ rtpproxy protocol, udp:127.0.0.1:22222
//!                                      └── Kamailio, and this test (Q, I)
//! ```
//!
//! sipp does the signalling only; the RTP endpoints are UDP sockets of this test inside the
//! caller/callee namespaces, bound before the calls start on the ports the SDP advertises. The
//! scenarios `<log>` the relay's address/port from the SDP they received; the endpoints send
//! G.711-sized RTP (12 + 160 bytes, 50 packets/s) to it and count what comes back. One call's
//! caller is "behind a NAT": its SDP names 10.0.0.1 and a port it does not use, and the relay must
//! latch on where its media really comes from.
//!
//! The relay is chosen with `SLUICE_INTEROP_RELAY`: `sluice` (default, the binary of this
//! package) or `rtpproxy` (sippy/rtpproxy, the reference implementation, run from the `rtp-io`
//! PyPI wheel by `tests/interop/rtpproxy_host.py`; set `SLUICE_INTEROP_PYTHON` to a python that
//! has it). Other knobs: `SLUICE_INTEROP_KEEP=1` keeps the work directory (logs, configs) and
//! `SLUICE_INTEROP_XDP` sets Sluice's `xdp.mode` (default "auto", which picks generic XDP on
//! these veths).
//!
//! Needs root (namespaces); skips otherwise, fails instead under `cargo xtask test` (CI). Needs
//! `kamailio` and `sipp` (Debian `kamailio`, `sip-tester`; `cargo xtask setup` installs them).

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;
use std::fs::{self, File};
use std::io::{BufRead as _, BufReader};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, SocketAddrV4, UdpSocket};
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use sluice_bench::privileged::privileged_or_skip;
use sluice_bench::topo::{
    CALLEE_V4, CALLER_V4, RELAY_CALLEE_SIDE_V4, RELAY_CALLER_SIDE_V4, Role, Topology,
};

/// Calls in the run, and how many at once.
const CALLS: usize = 10;
const CONCURRENT: usize = 5;
/// Call index whose caller advertises a private address and a port it does not send from.
const NAT_CALL: usize = 7;
const NAT_SDP_ADDR: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 1);
/// RTP per direction per call: 3 s of 20 ms G.711 frames.
const PACKETS: u16 = 150;
const PTIME: Duration = Duration::from_millis(20);
const RTP_HEADER: usize = 12;
const G711_FRAME: usize = 160;
/// Each endpoint keeps receiving this long after its last packet, for the peer's tail.
const LINGER: Duration = Duration::from_millis(700);
/// sipp holds each call this long between ACK and BYE; media (3 s + linger) and the relay
/// query fit well inside.
const HOLD_MS: u64 = 5_500;
/// Ports of the endpoints (caller and callee namespaces): call i uses BASE + 2i.
const CALLER_RTP_BASE: u16 = 20_000;
const CALLEE_RTP_BASE: u16 = 22_000;
/// Port the NAT caller puts in its SDP (nothing listens there).
const NAT_SDP_PORT_BASE: u16 = 24_000;
/// The relay's rtpproxy control socket, inside the relay namespace.
const CONTROL: SocketAddrV4 = SocketAddrV4::new(Ipv4Addr::LOCALHOST, 22_222);
const SIP_PORT: u16 = 5060;
/// Hard cap on every process the test starts (coreutils `timeout`), so nothing outlives a
/// test that was killed before its guards could run.
const PROCESS_CAP_SECS: u32 = 240;
/// Deadline for the whole call phase.
const CALL_PHASE: Duration = Duration::from_secs(90);

const KAMAILIO_CFG: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../deploy/kamailio/kamailio.cfg"
);
const INTEROP_DIR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/interop");

// ---------------------------------------------------------------------------------------------
// The relay under test
// ---------------------------------------------------------------------------------------------

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum RelayKind {
    Sluice,
    Rtpproxy,
}

impl RelayKind {
    fn from_env() -> RelayKind {
        match std::env::var("SLUICE_INTEROP_RELAY").as_deref() {
            Err(_) | Ok("" | "sluice") => RelayKind::Sluice,
            Ok("rtpproxy") => RelayKind::Rtpproxy,
            Ok(other) => panic!("SLUICE_INTEROP_RELAY={other}: expected `sluice` or `rtpproxy`"),
        }
    }
}

/// Media address of the relay: one interface, reachable from both sides through the relay
/// namespace's routing. Everything the test checks is relative to what the SDP says, so a relay
/// that also uses 198.18.2.1 toward the callee passes too.
const RELAY_MEDIA: Ipv4Addr = RELAY_CALLER_SIDE_V4;

/// How to start the relay inside the relay namespace.
struct RelayCommand {
    argv: Vec<String>,
    /// Give it a pipe as stdin (held open by the test; the process exits when it closes).
    stdin_pipe: bool,
}

/// The relay's command line for `kind`, writing any config it needs into `dir`. The only
/// relay-specific part of the test: control socket `udp:127.0.0.1:22222`, media address
/// 198.18.1.1, ports 30000-39999.
fn relay_command(kind: RelayKind, dir: &Path) -> RelayCommand {
    match kind {
        RelayKind::Sluice => {
            let xdp = std::env::var("SLUICE_INTEROP_XDP").unwrap_or_else(|_| "auto".into());
            let config = format!(
                r#"# Written by relay/tests/interop_kamailio.rs
[log]
level = "debug"

[media]
port_min = 30000
port_max = 39999

[[media.interface]]
name = "default"
address = "{RELAY_MEDIA}"

[rtpproxy]
listen = ["udp:{CONTROL}"]

[xdp]
mode = "{xdp}"
# Media arrives on both veths of the relay namespace; forwarding is a namespace-local sysctl.
interfaces = ["caller", "callee"]
enable_forwarding = true
"#
            );
            let path = dir.join("sluice.toml");
            fs::write(&path, config).unwrap();
            let argv = vec![
                env!("CARGO_BIN_EXE_sluice").to_owned(),
                "--config".to_owned(),
                path.display().to_string(),
            ];
            RelayCommand {
                argv,
                stdin_pipe: false,
            }
        }
        RelayKind::Rtpproxy => {
            let python =
                std::env::var("SLUICE_INTEROP_PYTHON").unwrap_or_else(|_| "python3".into());
            let mut argv = vec![
                python,
                format!("{INTEROP_DIR}/rtpproxy_host.py"),
                PROCESS_CAP_SECS.to_string(),
            ];
            // -F: run as root; -s: control socket; -l: media address; -d DBUG logs every
            // command and reply.
            for arg in [
                "-F",
                "-s",
                &format!("udp:{CONTROL}"),
                "-l",
                &RELAY_MEDIA.to_string(),
                "-m",
                "30000",
                "-M",
                "39999",
                "-d",
                "DBUG",
            ] {
                argv.push(arg.to_owned());
            }
            // The host exits when the test goes away and the pipe closes.
            RelayCommand {
                argv,
                stdin_pipe: true,
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Work directory, processes, cleanup
// ---------------------------------------------------------------------------------------------

/// Temp directory with every log and config; printed (and kept) when the test fails.
struct WorkDir {
    path: PathBuf,
}

impl WorkDir {
    fn new() -> WorkDir {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let path = std::env::temp_dir().join(format!(
            "sluice-interop-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = fs::remove_dir_all(&path);
        fs::create_dir_all(&path).unwrap();
        WorkDir { path }
    }

    fn file(&self, name: &str) -> PathBuf {
        self.path.join(name)
    }

    fn dump_logs(&self) {
        let Ok(entries) = fs::read_dir(&self.path) else {
            return;
        };
        let mut files: Vec<PathBuf> = entries.flatten().map(|e| e.path()).collect();
        files.sort();
        for file in files.iter().filter(|f| f.is_file()) {
            let text = fs::read(file).unwrap_or_default();
            let text = String::from_utf8_lossy(&text);
            let lines: Vec<&str> = text.lines().collect();
            let skip = lines.len().saturating_sub(200);
            eprintln!(
                "======== {} ({} lines{}) ========",
                file.display(),
                lines.len(),
                if skip > 0 { ", last 200" } else { "" }
            );
            for line in &lines[skip..] {
                eprintln!("{line}");
            }
        }
    }
}

impl Drop for WorkDir {
    fn drop(&mut self) {
        let keep = std::env::var("SLUICE_INTEROP_KEEP").is_ok_and(|v| v == "1");
        if thread::panicking() {
            self.dump_logs();
            eprintln!("interop: logs kept in {}", self.path.display());
        } else if keep {
            eprintln!("interop: logs kept in {}", self.path.display());
        } else {
            let _ = fs::remove_dir_all(&self.path);
        }
    }
}

/// A process started by the test in its own process group, inside a namespace, capped by
/// `timeout`; dropping it terminates the whole group (SIGTERM, then SIGKILL).
struct Proc {
    name: &'static str,
    child: Child,
    /// Held open for processes that exit when their stdin closes.
    _stdin: Option<ChildStdin>,
    log: PathBuf,
    status: Option<ExitStatus>,
}

impl Proc {
    fn spawn(name: &'static str, ns: &str, argv: &[String], dir: &WorkDir, stdin: bool) -> Proc {
        let log = dir.file(&format!("{name}.log"));
        let out = File::create(&log).unwrap();
        let err = out.try_clone().unwrap();
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", ns, "timeout", "-k", "5"])
            .arg(PROCESS_CAP_SECS.to_string())
            .args(argv)
            .current_dir(&dir.path)
            .stdin(if stdin { Stdio::piped() } else { Stdio::null() })
            .stdout(out)
            .stderr(err)
            .process_group(0);
        let mut child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {name} ({}): {e}", argv.join(" ")));
        let stdin = child.stdin.take();
        Proc {
            name,
            child,
            _stdin: stdin,
            log,
            status: None,
        }
    }

    /// Exit status if it has exited.
    fn exited(&mut self) -> Option<ExitStatus> {
        if self.status.is_none() {
            self.status = self.child.try_wait().unwrap();
        }
        self.status
    }

    /// Waits up to `limit` for the process to exit.
    fn wait_exit(&mut self, limit: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(status) = self.exited() {
                return Some(status);
            }
            if Instant::now() >= deadline {
                return None;
            }
            thread::sleep(Duration::from_millis(50));
        }
    }

    fn assert_running(&mut self) {
        if let Some(status) = self.exited() {
            panic!(
                "{} exited early ({status}); see {}",
                self.name,
                self.log.display()
            );
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if self.exited().is_none() {
            let group = Pid::from_raw(self.child.id() as i32);
            let _ = killpg(group, Signal::SIGTERM);
            if self.wait_exit(Duration::from_secs(3)).is_none() {
                let _ = killpg(group, Signal::SIGKILL);
                let _ = self.child.wait();
            }
        }
    }
}

/// Everything a test run owns. Field order is drop order: processes stop before the
/// topology goes away, and the work directory (and its log dump) comes last.
struct Rig {
    procs: Vec<Proc>,
    topo: Topology,
    dir: WorkDir,
}

impl Rig {
    fn proc(&mut self, name: &str) -> &mut Proc {
        self.procs.iter_mut().find(|p| p.name == name).unwrap()
    }
}

// ---------------------------------------------------------------------------------------------
// rtpproxy control client
// ---------------------------------------------------------------------------------------------

/// A UDP rtpproxy-protocol client living in the relay namespace.
struct Control {
    socket: UdpSocket,
}

/// Cookies must be unique across all clients of one relay: rtpproxy answers a repeated cookie
/// from its retransmission cache (for >= 35 s) without executing the command.
static NEXT_COOKIE: AtomicU32 = AtomicU32::new(1);

impl Control {
    fn new(topo: &Topology) -> Control {
        let socket = topo
            .run_in(Role::Relay, || UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)))
            .unwrap()
            .unwrap();
        socket.connect(CONTROL).unwrap();
        socket
            .set_read_timeout(Some(Duration::from_millis(500)))
            .unwrap();
        Control { socket }
    }

    /// Sends `command` with a fresh cookie; returns the reply without the cookie, or None
    /// after 3 tries without an answer.
    fn command(&mut self, command: &str) -> Option<String> {
        let cookie = format!(
            "t{}_{}",
            std::process::id(),
            NEXT_COOKIE.fetch_add(1, Ordering::Relaxed)
        );
        let line = format!("{cookie} {command}");
        let mut buf = [0u8; 4096];
        for _ in 0..3 {
            self.socket.send(line.as_bytes()).ok()?;
            let deadline = Instant::now() + Duration::from_millis(500);
            while Instant::now() < deadline {
                let Ok(n) = self.socket.recv(&mut buf) else {
                    break;
                };
                let reply = String::from_utf8_lossy(&buf[..n]);
                if let Some(rest) = reply.strip_prefix(&format!("{cookie} ")) {
                    return Some(rest.trim_end().to_owned());
                }
            }
        }
        None
    }
}

/// rtpproxy `I` reply: "active sessions: N".
fn active_sessions(info: &str) -> Option<u64> {
    info.lines()
        .find_map(|l| l.trim().strip_prefix("active sessions:"))
        .and_then(|n| n.trim().parse().ok())
}

// ---------------------------------------------------------------------------------------------
// sipp log events
// ---------------------------------------------------------------------------------------------

/// What the caller saw in the 200 OK.
#[derive(Debug, Clone)]
struct Answer {
    call_id: String,
    from_tag: String,
    to_tag: String,
    /// Relay address/port from the answer SDP: where the caller sends.
    sdp: SocketAddr,
}

/// What the callee saw in the INVITE.
#[derive(Debug, Clone)]
struct Offer {
    call_id: String,
    /// Relay address/port from the offer SDP: where the callee sends.
    sdp: SocketAddr,
}

#[derive(Debug, Default)]
struct Events {
    answers: BTreeMap<usize, Answer>,
    acked: BTreeMap<usize, Offer>,
    bye_ok: BTreeMap<usize, String>,
    bye: BTreeMap<usize, String>,
}

fn sdp_addr(addr: &str, port: &str, line: &str) -> SocketAddr {
    let ip: IpAddr = addr
        .parse()
        .unwrap_or_else(|_| panic!("bad SDP address in sipp log line `{line}`"));
    let port: u16 = port
        .parse()
        .unwrap_or_else(|_| panic!("bad SDP port in sipp log line `{line}`"));
    SocketAddr::new(ip, port)
}

/// Parses the `<log>` lines of both scenarios (see the XML files for the format).
fn read_events(uac_log: &Path, uas_log: &Path) -> Events {
    let mut events = Events::default();
    for path in [uac_log, uas_log] {
        let Ok(file) = File::open(path) else {
            continue;
        };
        for line in BufReader::new(file).lines() {
            let Ok(line) = line else { break };
            let f: Vec<&str> = line.split_whitespace().collect();
            let idx = || -> usize {
                f[1].parse()
                    .unwrap_or_else(|_| panic!("bad call index in sipp log line `{line}`"))
            };
            match f.first().copied() {
                Some("ANSWER") if f.len() == 7 => {
                    events.answers.insert(
                        idx(),
                        Answer {
                            call_id: f[2].to_owned(),
                            from_tag: f[3].to_owned(),
                            to_tag: f[4].to_owned(),
                            sdp: sdp_addr(f[5], f[6], &line),
                        },
                    );
                }
                Some("ACKED") if f.len() == 5 => {
                    events.acked.insert(
                        idx(),
                        Offer {
                            call_id: f[2].to_owned(),
                            sdp: sdp_addr(f[3], f[4], &line),
                        },
                    );
                }
                Some("BYE_OK") if f.len() == 3 => {
                    events.bye_ok.insert(idx(), f[2].to_owned());
                }
                Some("BYE") if f.len() == 3 => {
                    events.bye.insert(idx(), f[2].to_owned());
                }
                // A line still being written, OFFER (ACKED repeats it), DEBUG.
                _ => {}
            }
        }
    }
    events
}

// ---------------------------------------------------------------------------------------------
// RTP endpoints
// ---------------------------------------------------------------------------------------------

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Side {
    Caller = 1,
    Callee = 2,
}

/// SSRC of one direction of one call (never 0: rtpproxy refuses to latch on SSRC 0).
fn ssrc(call: usize, from: Side) -> u32 {
    0x5e1c_0000 | ((call as u32) << 8) | from as u32
}

fn rtp_packet(call: usize, from: Side, seq: u16) -> [u8; RTP_HEADER + G711_FRAME] {
    let mut p = [0xffu8; RTP_HEADER + G711_FRAME]; // 0xff: mu-law silence
    p[0] = 0x80; // V=2
    p[1] = 0; // PT 0 (PCMU)
    p[2..4].copy_from_slice(&seq.to_be_bytes());
    p[4..8].copy_from_slice(&(u32::from(seq) * G711_FRAME as u32).to_be_bytes());
    p[8..12].copy_from_slice(&ssrc(call, from).to_be_bytes());
    p[12..16].copy_from_slice(b"SLCE");
    p
}

/// What one endpoint of one call did.
#[derive(Debug, Default)]
struct EndpointReport {
    sent: u64,
    /// Valid packets of the peer's stream, by source address.
    received: HashMap<SocketAddr, u64>,
    /// Sequence numbers seen more than once.
    duplicates: u64,
    /// Datagrams that were not the peer's stream of this call (first few).
    foreign: Vec<String>,
    /// The endpoint waited for the peer's first packet before sending, and none came.
    first_packet_timeout: bool,
}

impl EndpointReport {
    fn total_received(&self) -> u64 {
        self.received.values().sum()
    }
}

/// One RTP endpoint of one call: a socket in the caller or callee namespace.
struct Endpoint<'a> {
    socket: &'a UdpSocket,
    call: usize,
    me: Side,
    seen: Vec<bool>,
    report: EndpointReport,
}

impl<'a> Endpoint<'a> {
    fn new(socket: &'a UdpSocket, call: usize, me: Side) -> Endpoint<'a> {
        Endpoint {
            socket,
            call,
            me,
            seen: vec![false; usize::from(PACKETS)],
            report: EndpointReport::default(),
        }
    }

    fn peer(&self) -> Side {
        match self.me {
            Side::Caller => Side::Callee,
            Side::Callee => Side::Caller,
        }
    }

    fn on_datagram(&mut self, p: &[u8], from: SocketAddr) {
        let ours = p.len() == RTP_HEADER + G711_FRAME
            && p[0] == 0x80
            && p[8..12] == ssrc(self.call, self.peer()).to_be_bytes()
            && &p[12..16] == b"SLCE";
        let seq = if ours {
            usize::from(u16::from_be_bytes([p[2], p[3]]))
        } else {
            usize::MAX
        };
        match self.seen.get_mut(seq) {
            Some(true) => self.report.duplicates += 1,
            Some(seen) => {
                *seen = true;
                *self.report.received.entry(from).or_default() += 1;
            }
            None if self.report.foreign.len() < 5 => self.report.foreign.push(format!(
                "{} bytes from {from}: {:02x?}",
                p.len(),
                &p[..p.len().min(16)]
            )),
            None => {}
        }
    }

    /// Receives until `until`, or until the first valid packet with `stop_on_first`.
    fn receive_until(&mut self, until: Instant, stop_on_first: bool) {
        let mut buf = [0u8; 2048];
        loop {
            let now = Instant::now();
            if now >= until {
                return;
            }
            let wait = (until - now).max(Duration::from_millis(1));
            self.socket.set_read_timeout(Some(wait)).unwrap();
            match self.socket.recv_from(&mut buf) {
                Ok((n, from)) => {
                    self.on_datagram(&buf[..n], from);
                    if stop_on_first && self.report.total_received() > 0 {
                        return;
                    }
                }
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) => {}
                // An ICMP error for an earlier datagram (peer port not open yet): harmless.
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => {}
                Err(e) => panic!("call {} {:?}: recv: {e}", self.call, self.me),
            }
        }
    }

    /// Sends PACKETS RTP packets to `dest`, one per PTIME, counting what arrives meanwhile and
    /// for LINGER after the last one. With `wait_first`, sends nothing before the peer's first
    /// packet arrived (the callee of the NAT call: before the relay latched on the caller's
    /// real address it would forward to the SDP port, where nothing listens).
    fn run(mut self, dest: SocketAddr, wait_first: bool) -> EndpointReport {
        if wait_first {
            self.receive_until(Instant::now() + Duration::from_secs(3), true);
            if self.report.total_received() == 0 {
                self.report.first_packet_timeout = true;
                return self.report;
            }
        }
        let start = Instant::now();
        for seq in 0..PACKETS {
            self.receive_until(start + PTIME * u32::from(seq), false);
            let packet = rtp_packet(self.call, self.me, seq);
            match self.socket.send_to(&packet, dest) {
                Ok(_) => self.report.sent += 1,
                // ICMP error of an earlier datagram surfacing on send: retry once.
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => {
                    self.socket.send_to(&packet, dest).unwrap();
                    self.report.sent += 1;
                }
                Err(e) => panic!("call {} {:?}: send to {dest}: {e}", self.call, self.me),
            }
        }
        self.receive_until(Instant::now() + LINGER, false);
        self.report
    }
}

// ---------------------------------------------------------------------------------------------
// The test
// ---------------------------------------------------------------------------------------------

/// One call as planned, then as observed.
#[derive(Debug)]
struct CallPlan {
    caller: SocketAddr,
    callee: SocketAddr,
    /// What the caller's SDP says (differs from `caller` for the NAT call).
    caller_sdp: SocketAddr,
    nat: bool,
}

fn plan(call: usize) -> CallPlan {
    let i = u16::try_from(call).unwrap();
    let caller = SocketAddr::new(CALLER_V4.into(), CALLER_RTP_BASE + 2 * i);
    let nat = call == NAT_CALL;
    CallPlan {
        caller,
        callee: SocketAddr::new(CALLEE_V4.into(), CALLEE_RTP_BASE + 2 * i),
        caller_sdp: if nat {
            SocketAddr::new(NAT_SDP_ADDR.into(), NAT_SDP_PORT_BASE + 2 * i)
        } else {
            caller
        },
        nat,
    }
}

#[derive(Debug)]
struct CallResult {
    answer: Answer,
    offer: Offer,
    caller: EndpointReport,
    callee: EndpointReport,
    /// The relay's `Q <call-id> <from-tag>;1 <to-tag>;1` reply after the media, before BYE.
    query: Option<String>,
}

fn require_tool(tool: &str, package: &str) {
    let found = std::env::var_os("PATH").is_some_and(|paths| {
        std::env::split_paths(&paths).any(|dir| dir.join(tool).is_file())
            || Path::new("/usr/sbin").join(tool).is_file()
    });
    assert!(
        found,
        "`{tool}` not found: install Debian's `{package}` (`cargo xtask setup` does)"
    );
}

/// Polls `ready` every 100 ms for up to `limit` while `proc` keeps running.
fn wait_ready(
    rig: &mut Rig,
    proc: &str,
    limit: Duration,
    what: &str,
    mut ready: impl FnMut(&Rig) -> bool,
) {
    let deadline = Instant::now() + limit;
    loop {
        rig.proc(proc).assert_running();
        if ready(rig) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{proc}: {what} not ready within {limit:?}"
        );
        thread::sleep(Duration::from_millis(100));
    }
}

/// True when something listens on UDP `port` in namespace `ns`.
fn udp_listening(ns: &str, port: u16) -> bool {
    Command::new("ip")
        .args(["netns", "exec", ns, "ss", "-Hlun"])
        .arg(format!("sport = :{port}"))
        .output()
        .is_ok_and(|o| o.status.success() && !o.stdout.is_empty())
}

#[test]
fn kamailio_sipp_calls_relay_media_both_ways() {
    if !privileged_or_skip("kamailio_sipp_calls_relay_media_both_ways") {
        return;
    }
    require_tool("kamailio", "kamailio");
    require_tool("sipp", "sip-tester");
    require_tool("timeout", "coreutils");
    let kind = RelayKind::from_env();
    eprintln!("interop: relay under test: {kind:?}");

    let topo = Topology::up(&Topology::unique_prefix("ki")).expect("topology up");
    let mut rig = Rig {
        procs: Vec::new(),
        topo,
        dir: WorkDir::new(),
    };
    let relay_ns = rig.topo.ns(Role::Relay);
    let caller_ns = rig.topo.ns(Role::Caller);
    let callee_ns = rig.topo.ns(Role::Callee);

    // 1. The relay, answering the rtpproxy protocol.
    let relay = relay_command(kind, &rig.dir.path);
    let relay = Proc::spawn("relay", &relay_ns, &relay.argv, &rig.dir, relay.stdin_pipe);
    rig.procs.push(relay);
    let mut control = Control::new(&rig.topo);
    wait_ready(
        &mut rig,
        "relay",
        Duration::from_secs(15),
        &format!("`V` -> `20040107` on the rtpproxy control socket udp:{CONTROL}"),
        |_| control.command("V").as_deref() == Some("20040107"),
    );
    assert_eq!(
        control.command("VF 20050322").as_deref(),
        Some("1"),
        "Kamailio refuses a relay without capability 20050322"
    );

    // 2. Kamailio with the deploy config, parameterised from the command line.
    let runtime = rig.dir.file("kamailio-run");
    fs::create_dir_all(&runtime).unwrap();
    let kamailio: Vec<String> = [
        "kamailio",
        "-f",
        KAMAILIO_CFG,
        "-DD",
        "-E",
        "-m",
        "64",
        "-M",
        "8",
        "-Y",
        &runtime.display().to_string(),
        "-w",
        &rig.dir.path.display().to_string(),
        "-P",
        &rig.dir.file("kamailio.pid").display().to_string(),
        "-A",
        &format!("SIP_LISTEN=udp:{RELAY_CALLER_SIDE_V4}:{SIP_PORT}"),
        "-A",
        &format!("RTPPROXY_SOCK=\"udp:{CONTROL}\""),
        "-A",
        &format!("CALLEE_URI=\"sip:{CALLEE_V4}:{SIP_PORT}\""),
    ]
    .iter()
    .map(|s| (*s).to_owned())
    .collect();
    let kamailio = Proc::spawn("kamailio", &relay_ns, &kamailio, &rig.dir, false);
    rig.procs.push(kamailio);
    let probe = rig
        .topo
        .run_in(Role::Caller, || UdpSocket::bind((CALLER_V4, 0)))
        .unwrap()
        .unwrap();
    probe
        .set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let kamailio_addr = SocketAddr::new(RELAY_CALLER_SIDE_V4.into(), SIP_PORT);
    wait_ready(
        &mut rig,
        "kamailio",
        Duration::from_secs(20),
        "SIP (OPTIONS)",
        |_| {
            let local = probe.local_addr().unwrap();
            let options = format!(
                "OPTIONS sip:{kamailio_addr} SIP/2.0\r\n\
             Via: SIP/2.0/UDP {local};branch=z9hG4bK-probe{}\r\n\
             From: <sip:probe@{local}>;tag=probe\r\n\
             To: <sip:{kamailio_addr}>\r\n\
             Call-ID: probe-{}@{local}\r\n\
             CSeq: 1 OPTIONS\r\n\
             Max-Forwards: 70\r\n\
             Content-Length: 0\r\n\r\n",
                std::process::id(),
                std::process::id(),
            );
            let _ = probe.send_to(options.as_bytes(), kamailio_addr);
            let mut buf = [0u8; 2048];
            probe
                .recv(&mut buf)
                .is_ok_and(|n| buf[..n].starts_with(b"SIP/2.0 200"))
        },
    );

    // 3. The RTP endpoints, bound before any SDP names them.
    let plans: Vec<CallPlan> = (0..CALLS).map(plan).collect();
    let caller_sockets: Vec<UdpSocket> = plans
        .iter()
        .map(|p| {
            rig.topo
                .run_in(Role::Caller, || UdpSocket::bind(p.caller))
                .unwrap()
                .unwrap_or_else(|e| panic!("bind {}: {e}", p.caller))
        })
        .collect();
    let callee_sockets: Vec<UdpSocket> = plans
        .iter()
        .map(|p| {
            rig.topo
                .run_in(Role::Callee, || UdpSocket::bind(p.callee))
                .unwrap()
                .unwrap_or_else(|e| panic!("bind {}: {e}", p.callee))
        })
        .collect();

    // 4. sipp: UAS in the callee namespace, then the UAC in the caller namespace.
    let mut csv = String::from("SEQUENTIAL\n");
    for (i, p) in plans.iter().enumerate() {
        writeln!(
            csv,
            "{i};{};{};{}",
            p.caller_sdp.ip(),
            p.caller_sdp.port(),
            p.callee.port()
        )
        .unwrap();
    }
    fs::write(rig.dir.file("calls.csv"), csv).unwrap();
    let uac_log = rig.dir.file("uac-actions.log");
    let uas_log = rig.dir.file("uas-actions.log");
    let dir = rig.dir.path.clone();
    let sipp_common = |side: &str, log: &Path| -> Vec<String> {
        [
            "-nostdin",
            "-trace_logs",
            "-log_file",
            &log.display().to_string(),
            "-trace_err",
            "-error_file",
            &dir.join(format!("{side}-errors.log")).display().to_string(),
            "-trace_msg",
            "-message_file",
            &dir.join(format!("{side}-messages.log"))
                .display()
                .to_string(),
            "-timeout",
            &format!("{}s", CALL_PHASE.as_secs()),
            "-timeout_error",
            "-m",
            &CALLS.to_string(),
        ]
        .iter()
        .map(|s| (*s).to_owned())
        .collect()
    };
    let mut uas = vec![
        "sipp".to_owned(),
        "-sf".to_owned(),
        format!("{INTEROP_DIR}/uas.xml"),
        "-i".to_owned(),
        CALLEE_V4.to_string(),
        "-p".to_owned(),
        SIP_PORT.to_string(),
    ];
    uas.extend(sipp_common("uas", &uas_log));
    let uas = Proc::spawn("sipp-uas", &callee_ns, &uas, &rig.dir, false);
    rig.procs.push(uas);
    wait_ready(
        &mut rig,
        "sipp-uas",
        Duration::from_secs(10),
        "UDP 5060",
        |_| udp_listening(&callee_ns, SIP_PORT),
    );
    let mut uac = vec![
        "sipp".to_owned(),
        "-sf".to_owned(),
        format!("{INTEROP_DIR}/uac.xml"),
        "-inf".to_owned(),
        rig.dir.file("calls.csv").display().to_string(),
        "-i".to_owned(),
        CALLER_V4.to_string(),
        "-p".to_owned(),
        SIP_PORT.to_string(),
        "-l".to_owned(),
        CONCURRENT.to_string(),
        "-r".to_owned(),
        "2".to_owned(),
        "-d".to_owned(),
        HOLD_MS.to_string(),
    ];
    uac.extend(sipp_common("uac", &uac_log));
    uac.push(kamailio_addr.to_string());
    let uac = Proc::spawn("sipp-uac", &caller_ns, &uac, &rig.dir, false);
    rig.procs.push(uac);

    // 5. Media: each call's endpoints start when both sides have logged the SDP they got,
    // exchange RTP, then the relay's per-session counters are read before sipp sends BYE.
    let mut results: BTreeMap<usize, CallResult> = BTreeMap::new();
    let topo = &rig.topo;
    let deadline = Instant::now() + CALL_PHASE;
    thread::scope(|scope| {
        let mut running = HashMap::new();
        loop {
            let events = read_events(&uac_log, &uas_log);
            for (&call, answer) in &events.answers {
                let Some(offer) = events.acked.get(&call) else {
                    continue;
                };
                if running.contains_key(&call) || results.contains_key(&call) {
                    continue;
                }
                assert!(call < CALLS, "unexpected call index {call}");
                let (answer, offer) = (answer.clone(), offer.clone());
                let caller_socket = &caller_sockets[call];
                let callee_socket = &callee_sockets[call];
                let nat = plans[call].nat;
                running.insert(
                    call,
                    scope.spawn(move || {
                        let (caller, callee) = thread::scope(|s| {
                            let caller = s.spawn(|| {
                                Endpoint::new(caller_socket, call, Side::Caller)
                                    .run(answer.sdp, false)
                            });
                            let callee = s.spawn(|| {
                                Endpoint::new(callee_socket, call, Side::Callee).run(offer.sdp, nat)
                            });
                            (caller.join().unwrap(), callee.join().unwrap())
                        });
                        let query = Control::new(topo).command(&format!(
                            "Q {} {};1 {};1",
                            answer.call_id, answer.from_tag, answer.to_tag
                        ));
                        CallResult {
                            answer,
                            offer,
                            caller,
                            callee,
                            query,
                        }
                    }),
                );
            }
            let done: Vec<usize> = running
                .iter()
                .filter(|(_, h)| h.is_finished())
                .map(|(c, _)| *c)
                .collect();
            for call in done {
                let result = running.remove(&call).unwrap().join().unwrap();
                results.insert(call, result);
            }
            let uac_exited = rig
                .procs
                .iter_mut()
                .any(|p| p.name == "sipp-uac" && p.exited().is_some());
            if (uac_exited && running.is_empty()) || Instant::now() >= deadline {
                // Let running media threads finish (they are bounded in time).
                for (call, handle) in running.drain() {
                    results.insert(call, handle.join().unwrap());
                }
                break;
            }
            thread::sleep(Duration::from_millis(10));
        }
    });

    let uac_status = rig
        .proc("sipp-uac")
        .wait_exit(Duration::from_secs(30))
        .expect("sipp UAC did not finish");
    let uas_status = rig
        .proc("sipp-uas")
        .wait_exit(Duration::from_secs(15))
        .expect("sipp UAS did not finish");
    let events = read_events(&uac_log, &uas_log);

    // 6. After BYE the relay holds no session of any call.
    let mut control = Control::new(&rig.topo);
    let mut after_bye = BTreeMap::new();
    for (call, r) in &results {
        let q = control.command(&format!(
            "Q {} {};1 {};1",
            r.answer.call_id, r.answer.from_tag, r.answer.to_tag
        ));
        after_bye.insert(*call, q);
    }
    let info = control.command("I");

    // 7. Report, then check.
    let mut summary = String::new();
    for (call, r) in &results {
        writeln!(
            summary,
            "call {call}{}: caller->{} sent {} got {:?} | callee->{} sent {} got {:?} | Q during: {:?} | Q after BYE: {:?}",
            if plans[*call].nat { " (NAT)" } else { "" },
            r.answer.sdp,
            r.caller.sent,
            r.caller.received,
            r.offer.sdp,
            r.callee.sent,
            r.callee.received,
            r.query,
            after_bye.get(call).cloned().flatten(),
        )
        .unwrap();
    }
    eprintln!("interop ({kind:?}):\n{summary}I after the calls: {info:?}");

    assert!(
        uac_status.success(),
        "sipp UAC failed ({uac_status}): not every call completed; see sipp-uac.log, uac-errors.log"
    );
    assert!(
        uas_status.success(),
        "sipp UAS failed ({uas_status}); see sipp-uas.log, uas-errors.log"
    );
    assert_eq!(results.len(), CALLS, "calls with media: {summary}");
    assert_eq!(events.bye_ok.len(), CALLS, "BYEs answered");
    assert_eq!(events.bye.len(), CALLS, "BYEs reaching the callee");

    let relay_addrs: [IpAddr; 2] = [RELAY_CALLER_SIDE_V4.into(), RELAY_CALLEE_SIDE_V4.into()];
    for (call, r) in &results {
        let p = &plans[*call];
        let ctx = format!("call {call}{}", if p.nat { " (NAT)" } else { "" });
        assert_eq!(r.answer.call_id, r.offer.call_id, "{ctx}: call-ids");
        // The SDP each side got names the relay, not the other endpoint.
        for (side, sdp) in [("caller", r.answer.sdp), ("callee", r.offer.sdp)] {
            assert!(
                relay_addrs.contains(&sdp.ip()),
                "{ctx}: the {side} was given {sdp} in SDP, not a relay address: media bypasses the relay"
            );
        }
        assert!(
            !r.callee.first_packet_timeout,
            "{ctx}: no media reached the callee"
        );
        for (side, report) in [("caller", &r.caller), ("callee", &r.callee)] {
            assert!(
                report.foreign.is_empty(),
                "{ctx}: {side} got foreign datagrams: {:?}",
                report.foreign
            );
            assert_eq!(report.duplicates, 0, "{ctx}: {side} got duplicates");
            assert_eq!(report.sent, u64::from(PACKETS), "{ctx}: {side} sent");
        }
        // Every packet arrived, from the address and port the SDP advertised.
        assert_eq!(
            r.caller.received,
            HashMap::from([(r.answer.sdp, r.callee.sent)]),
            "{ctx}: what the caller received (by source) vs what the callee sent"
        );
        assert_eq!(
            r.callee.received,
            HashMap::from([(r.offer.sdp, r.caller.sent)]),
            "{ctx}: what the callee received (by source) vs what the caller sent"
        );
        // The relay's counters: Q -> "ttl npkts_ina npkts_ino nrelayed ndropped", where ina
        // counts packets from the from-tag side (caller), ino from the to-tag side (callee).
        let q = r
            .query
            .as_deref()
            .unwrap_or_else(|| panic!("{ctx}: no reply to Q during the call"));
        let n: Vec<u64> = q
            .split_whitespace()
            .map(|v| v.parse().unwrap_or_else(|_| panic!("{ctx}: Q reply `{q}`")))
            .collect();
        assert_eq!(n.len(), 5, "{ctx}: Q reply `{q}`");
        assert_eq!(
            (n[1], n[2], n[3], n[4]),
            (
                r.caller.sent,
                r.callee.sent,
                r.caller.sent + r.callee.sent,
                0
            ),
            "{ctx}: Q `{q}`: npkts_ina, npkts_ino, nrelayed, ndropped vs what the endpoints sent"
        );
        // Gone after BYE.
        assert_eq!(
            after_bye.get(call).cloned().flatten().as_deref(),
            Some("E50"),
            "{ctx}: Q after BYE must answer E50 (session not found)"
        );
    }
    let info = info.expect("no reply to I");
    assert_eq!(
        active_sessions(&info),
        Some(0),
        "active sessions after every BYE, I reply:\n{info}"
    );
    eprintln!("interop ({kind:?}): {CALLS} calls, media both ways, all checks passed");
}
