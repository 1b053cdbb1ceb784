//! The daemon driven over the rtpproxy control protocol on loopback, as the Kamailio module
//! drives it: offer/answer, media both ways with RTCP on +1, NAT latching, RTP Bleed, delete,
//! timeouts with notification, port exhaustion, malformed input, retransmissions, unix sockets,
//! the source ACL.

mod common;

use common::{control_socket, recv, rtp, start_daemon};
use std::io::{Read, Write};
use std::net::{SocketAddr, UdpSocket};
use std::os::unix::net::{UnixListener, UnixStream};
use std::time::{Duration, Instant};

use sluice::daemon::Daemon;

struct Relay {
    rt: tokio::runtime::Runtime,
    daemon: Option<Daemon>,
    control: UdpSocket,
    rtpp: SocketAddr,
    cookie: u32,
}

impl Relay {
    /// Starts a daemon with `extra` TOML appended to a loopback base config.
    fn start(port_min: u16, port_max: u16, extra: &str) -> Relay {
        let (rt, daemon) = start_daemon(port_min, port_max, extra);
        let rtpp = daemon.rtpp_udp_addr().expect("a UDP rtpproxy listener");
        let control = control_socket();
        Relay {
            rt,
            daemon: Some(daemon),
            control,
            rtpp,
            cookie: 0,
        }
    }

    /// Sends `command` with a fresh cookie; returns the reply without cookie and newline.
    fn cmd(&mut self, command: &str) -> String {
        self.cookie += 1;
        let cookie = format!("t{}", self.cookie);
        self.raw(&format!("{cookie} {command}"))
            .and_then(|r| r.strip_prefix(&format!("{cookie} ")).map(str::to_owned))
            .unwrap_or_else(|| panic!("no reply with cookie {cookie} to `{command}`"))
    }

    fn raw(&self, datagram: &str) -> Option<String> {
        self.control
            .send_to(datagram.as_bytes(), self.rtpp)
            .unwrap();
        let mut buf = [0u8; 4096];
        let n = self.control.recv(&mut buf).ok()?;
        Some(String::from_utf8_lossy(&buf[..n]).trim_end().to_owned())
    }

    fn port(&mut self, command: &str) -> u16 {
        let reply = self.cmd(command);
        let mut parts = reply.split(' ');
        let port: u16 = parts
            .next()
            .and_then(|p| p.parse().ok())
            .unwrap_or_else(|| panic!("`{command}` -> `{reply}`"));
        assert_eq!(parts.next(), Some("127.0.0.1"), "`{command}` -> `{reply}`");
        port
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        if let Some(d) = self.daemon.take() {
            let _ = self.rt.block_on(d.shutdown());
        }
    }
}

fn endpoint() -> (UdpSocket, UdpSocket) {
    for _ in 0..100 {
        let rtp = UdpSocket::bind("127.0.0.1:0").unwrap();
        let port = rtp.local_addr().unwrap().port();
        if port % 2 == 1 {
            continue;
        }
        if let Ok(rtcp) = UdpSocket::bind(("127.0.0.1", port + 1)) {
            for s in [&rtp, &rtcp] {
                s.set_read_timeout(Some(Duration::from_millis(500)))
                    .unwrap();
            }
            return (rtp, rtcp);
        }
    }
    panic!("no free even/odd port pair");
}

fn count_until_quiet(socket: &UdpSocket) -> usize {
    socket
        .set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    std::iter::from_fn(|| recv(socket)).count()
}

fn lo(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

#[test]
fn offer_answer_media_both_ways_rtcp_query_and_delete() {
    let mut relay = Relay::start(41000, 41099, "");
    let (caller, caller_rtcp) = endpoint();
    let (callee, callee_rtcp) = endpoint();
    let (cp, ep) = (
        caller.local_addr().unwrap().port(),
        callee.local_addr().unwrap().port(),
    );
    // Exactly what Kamailio sends (captured by the interop test).
    let to_callee = relay.port(&format!("Uc0,8 c1@h 127.0.0.1 {cp} ft;1"));
    let to_caller = relay.port(&format!("Lc0 c1@h 127.0.0.1 {ep} ft;1 tt;1"));
    assert_eq!(to_callee % 2, 0);
    assert_eq!(to_caller % 2, 0);

    for seq in 0..20 {
        caller.send_to(&rtp(1, seq), lo(to_caller)).unwrap();
        callee.send_to(&rtp(2, seq), lo(to_callee)).unwrap();
    }
    for seq in 0..20 {
        let (data, from) = recv(&callee).expect("callee gets caller's RTP");
        assert_eq!((data, from), (rtp(1, seq), lo(to_callee)));
        let (data, from) = recv(&caller).expect("caller gets callee's RTP");
        assert_eq!((data, from), (rtp(2, seq), lo(to_caller)));
    }
    caller_rtcp
        .send_to(b"\x80\xc8\x00\x00sr", lo(to_caller + 1))
        .unwrap();
    let (data, from) = recv(&callee_rtcp).expect("RTCP to port + 1");
    assert_eq!(
        (data.as_slice(), from),
        (&b"\x80\xc8\x00\x00sr"[..], lo(to_callee + 1))
    );

    // The worker counts a packet after sendmmsg returns, so the RTCP packet can reach the
    // callee a moment before it is counted: give the counters that moment.
    let mut q = relay.cmd("Q c1@h ft;1 tt;1");
    for _ in 0..100 {
        if q.split(' ').nth(3) == Some("41") {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
        q = relay.cmd("Q c1@h ft;1 tt;1");
    }
    let fields: Vec<u64> = q.split(' ').map(|f| f.parse().unwrap()).collect();
    assert_eq!(
        fields[1..],
        [21, 20, 41, 0],
        "ttl npkts_ina npkts_ino nrelayed ndropped: {q}"
    );
    assert!(fields[0] > 0 && fields[0] <= 60, "ttl {q}");
    let qv = relay.cmd("Qv c1@h ft;1 tt;1 npkts_ina rtpa_nlost");
    assert_eq!(qv, "npkts_ina=21 rtpa_nlost=0");
    assert_eq!(relay.cmd("Q c1@h ft;1 tt;1 bogus_stat"), "E62");

    // Delete with bare tags, as Kamailio sends it.
    assert_eq!(relay.cmd("D c1@h ft tt"), "0");
    assert_eq!(relay.cmd("Q c1@h ft;1 tt;1"), "E50");
    assert_eq!(relay.cmd("D c1@h ft tt"), "E50");
    caller.send_to(&rtp(1, 99), lo(to_caller)).unwrap();
    assert_eq!(
        count_until_quiet(&callee),
        0,
        "nothing forwarded after delete"
    );
    assert!(relay.cmd("I").contains("active sessions: 0"));
}

#[test]
fn natted_caller_latches_and_a_third_party_gets_nothing_through() {
    let mut relay = Relay::start(41100, 41199, "");
    let (caller, _c) = endpoint();
    let (callee, _e) = endpoint();
    let (attacker, _a) = endpoint();
    let ep = callee.local_addr().unwrap().port();
    // The caller's SDP advertises a private address it does not send from.
    let to_callee = relay.port("U nat@h 10.0.0.1 4000 ft;1");
    let to_caller = relay.port(&format!("L nat@h 127.0.0.1 {ep} ft;1 tt;1"));
    caller.send_to(&rtp(1, 0), lo(to_caller)).unwrap();
    assert!(recv(&callee).is_some());
    callee.send_to(&rtp(2, 0), lo(to_callee)).unwrap();
    let (_, from) = recv(&caller).expect("media reaches the NATed caller after latching");
    assert_eq!(from, lo(to_caller));
    for seq in 0..10 {
        attacker.send_to(&rtp(66, seq), lo(to_caller)).unwrap();
        attacker.send_to(&rtp(66, seq), lo(to_callee)).unwrap();
    }
    assert_eq!(count_until_quiet(&callee), 0);
    assert_eq!(count_until_quiet(&caller), 0);
    let q = relay.cmd("Qv nat@h ft;1 tt;1 ndropped");
    assert_eq!(q, "ndropped=20");
}

#[test]
fn unanswered_offer_times_out_and_notifies() {
    let dir = std::env::temp_dir().join(format!("sluice-notify-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let sock = dir.join("timeout.sock");
    let _ = std::fs::remove_file(&sock);
    let listener = UnixListener::bind(&sock).unwrap();
    let target = format!("unix:{}", sock.display());
    let mut relay = Relay::start(
        41200,
        41299,
        &format!(
            "[session]\nsetup_timeout = \"1s\"\nmedia_timeout = \"1s\"\n\
             [rtpproxy]\nlisten = [\"udp:127.0.0.1:0\"]\nnotify_socket = \"{target}\"\n"
        ),
    );
    assert_eq!(
        relay.cmd("VF 20081224"),
        "1",
        "notification capability announced"
    );
    relay.port(&format!("U to@h 127.0.0.1 4000 ft;1 {target} dialog%2042"));
    listener.set_nonblocking(false).unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        if let Ok((mut s, _)) = listener.accept() {
            let mut line = String::new();
            let _ = s.read_to_string(&mut line);
            let _ = tx.send(line);
        }
    });
    let line = rx
        .recv_timeout(Duration::from_secs(5))
        .expect("timeout notification delivered");
    assert_eq!(line, "dialog 42\n", "URL-decoded tag and a newline");
    assert_eq!(relay.cmd("Q to@h ft;1"), "E50");
    let g = relay.cmd("Gv nsess_created nsess_timeout");
    assert_eq!(g, "nsess_created=1 nsess_timeout=1");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn notify_arguments_are_refused_when_notification_is_off() {
    let mut relay = Relay::start(41300, 41309, "");
    assert_eq!(relay.cmd("VF 20081224"), "0");
    assert_eq!(
        relay.cmd("U n@h 127.0.0.1 4000 ft;1 unix:/tmp/x tag"),
        "E75"
    );
}

#[test]
fn port_exhaustion_is_an_error_and_the_relay_keeps_serving() {
    // Two pairs: 41400/41401 and 41402/41403.
    let mut relay = Relay::start(41400, 41403, "");
    relay.port("U a@h 127.0.0.1 4000 ft;1");
    relay.port("U b@h 127.0.0.1 4000 ft;1");
    assert_eq!(
        relay.cmd("U c@h 127.0.0.1 4000 ft;1"),
        "E72",
        "new session, no port"
    );
    assert_eq!(
        relay.cmd("L a@h 127.0.0.1 4002 ft;1 tt;1"),
        "E71",
        "existing session, no port"
    );
    assert_eq!(relay.cmd("V"), "20040107");
    assert_eq!(relay.cmd("D a@h ft"), "0");
    // The freed pair is usable once the worker has closed its sockets (quarantine is 0 here;
    // with the default 10 s this window never shows).
    let deadline = Instant::now() + Duration::from_secs(2);
    loop {
        let reply = relay.cmd("U c@h 127.0.0.1 4000 ft;1");
        if reply.ends_with(" 127.0.0.1") {
            break;
        }
        assert_eq!(reply, "E72");
        assert!(
            Instant::now() < deadline,
            "the freed port pair never came back"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn malformed_commands_get_error_codes_and_lose_nothing() {
    let mut relay = Relay::start(41500, 41509, "");
    relay.port("U keep@h 127.0.0.1 4000 ft;1");
    for (command, code) in [
        ("Z", "E0"),
        ("U", "E1"),
        ("Ugarbage keep@h 127.0.0.1 4000 ft;1", "E35"),
        ("U keep@h not-an-ip 4000 ft;1", "E37"),
        ("Uz0 keep@h 127.0.0.1 4000 ft;1", "E13"),
        ("Uie x@h 127.0.0.1 4000 ft;1", "E12"),
        ("Uei x@h 127.0.0.1 4000 ft;1", "E11"),
        ("Ul{nope} x@h 127.0.0.1 4000 ft;1", "E31"),
        ("D", "E1"),
        ("Q keep@h ft;1 tt;1 nope", "E62"),
        ("G nope", "E68"),
        ("P10 keep@h prompt session ft;1 tt;1", "E60"),
    ] {
        assert_eq!(relay.cmd(command), code, "`{command}`");
    }
    // Binary garbage and an over-long line: a reply or silence, never a crash.
    let _ = relay.raw("\u{1}\u{2}\u{3}");
    let _ = relay.raw(&format!("x U {}", "a".repeat(20_000)));
    assert_eq!(relay.cmd("V"), "20040107");
    assert!(
        relay.cmd("Q keep@h ft;1").split(' ').count() == 5,
        "session survived"
    );
}

#[test]
fn retransmitted_command_is_answered_from_cache_not_run_twice() {
    let relay = Relay::start(41600, 41609, "");
    let first = relay.raw("dup1 U r@h 127.0.0.1 4000 ft;1").unwrap();
    let again = relay.raw("dup1 U r@h 127.0.0.1 4000 ft;1").unwrap();
    assert_eq!(first, again);
    let mut relay = relay;
    assert_eq!(
        relay.cmd("Gv ncmds_repld nsess_created"),
        "ncmds_repld=1 nsess_created=1"
    );
    // The same cookie after a delete is still the old reply (it is a retransmission).
    assert_eq!(relay.cmd("D r@h ft"), "0");
    assert_eq!(relay.raw("dup1 U r@h 127.0.0.1 4000 ft;1").unwrap(), first);
    assert!(relay.cmd("I").contains("active sessions: 0"));
}

#[test]
fn unix_stream_listener_speaks_without_cookie() {
    let path = std::env::temp_dir().join(format!("sluice-rtpp-{}.sock", std::process::id()));
    let mut relay = Relay::start(
        41700,
        41709,
        &format!(
            "[rtpproxy]\nlisten = [\"udp:127.0.0.1:0\", \"unix:{}\"]\n",
            path.display()
        ),
    );
    // Kamailio's unix mode: connect, write one command, read the reply.
    let mut s = UnixStream::connect(&path).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    s.write_all(b"U ux@h 127.0.0.1 4000 ft;1\nV\n").unwrap();
    let mut buf = [0u8; 256];
    let deadline = Instant::now() + Duration::from_secs(2);
    let mut got = String::new();
    while got.lines().count() < 2 && Instant::now() < deadline {
        let n = s.read(&mut buf).unwrap();
        got.push_str(std::str::from_utf8(&buf[..n]).unwrap());
    }
    let lines: Vec<&str> = got.lines().collect();
    assert!(lines[0].ends_with(" 127.0.0.1"), "{got}");
    assert_eq!(lines[1], "20040107");
    // Visible over UDP too: one command core.
    assert_eq!(relay.cmd("Q ux@h ft;1").split(' ').count(), 5);
    drop(relay);
    assert!(!path.exists(), "socket file removed on shutdown");
}

#[test]
fn sources_outside_the_acl_get_no_answer() {
    let relay = Relay::start(
        41800,
        41809,
        "[rtpproxy]\nlisten = [\"udp:127.0.0.1:0\"]\nallow = [\"198.18.0.0/15\"]\n",
    );
    relay
        .control
        .set_read_timeout(Some(Duration::from_millis(300)))
        .unwrap();
    assert_eq!(relay.raw("c1 V"), None);
}

#[test]
fn unix_datagram_listener_echoes_the_cookie() {
    use std::os::unix::net::UnixDatagram;
    let dir = std::env::temp_dir().join(format!("sluice-dgram-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let server = dir.join("rtpp.dgram");
    let _relay = Relay::start(
        41900,
        41909,
        &format!(
            "[rtpproxy]\nlisten = [\"udp:127.0.0.1:0\", \"unix-dgram:{}\"]\n",
            server.display()
        ),
    );
    let client = UnixDatagram::bind(dir.join("client")).unwrap();
    client
        .set_read_timeout(Some(Duration::from_secs(2)))
        .unwrap();
    client.send_to(b"k1 V", &server).unwrap();
    let mut buf = [0u8; 64];
    let n = client.recv(&mut buf).unwrap();
    assert_eq!(&buf[..n], b"k1 20040107\n");
    drop(_relay);
    std::fs::remove_dir_all(&dir).unwrap();
}
