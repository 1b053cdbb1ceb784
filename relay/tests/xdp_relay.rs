//! The daemon with its XDP fast path on a namespace topology (198.18.0.0/15): a call is set up
//! over the rtpproxy protocol, both endpoints stream RTP, and once both legs have latched the
//! kernel forwards the stream: the relay's sockets see no more of it, every packet arrives
//! (none lost across the handoff) from the relay's address with a valid checksum, with the
//! senders' TX checksum offload on and off. A spoofed source is not forwarded, and a delete
//! stops forwarding. Run on both shapes of the topology: routed (the relay between a caller
//! link and a callee link: the program redirects) and one-armed (everyone on one bridged
//! segment: the program answers with XDP_TX on the device the packet came in on). Root only; skips with a message when unprivileged, fails instead under
//! `cargo xtask test` as root (CI).

use std::collections::BTreeSet;
use std::fs;
use std::net::{SocketAddr, UdpSocket};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use sluice::datapath::xdp::{AttachMode, FastPath};
use sluice_bench::privileged::privileged_or_skip;
use sluice_bench::topo::{self, Role, Shape, Topology};
use sluice_common::DEFAULT_MAX_FLOWS;

const CONTROL: &str = "127.0.0.1:22222";
const BATCH: u16 = 10;

/// `Udp:` counters of the calling thread's network namespace.
fn udp_snmp(field: &str) -> u64 {
    let text = fs::read_to_string("/proc/thread-self/net/snmp").unwrap();
    let mut udp = text.lines().filter(|l| l.starts_with("Udp:"));
    let (names, values) = (udp.next().unwrap(), udp.next().unwrap());
    let i = names
        .split_whitespace()
        .position(|n| n == field)
        .unwrap_or_else(|| panic!("no Udp {field}"));
    values.split_whitespace().nth(i).unwrap().parse().unwrap()
}

fn command(control: &UdpSocket, cmd: &str) -> String {
    // Unique per command: the relay answers a repeated cookie from its retransmission cache.
    static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(1);
    let cookie = format!(
        "c{}",
        NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    );
    control
        .send_to(format!("{cookie} {cmd}").as_bytes(), CONTROL)
        .unwrap();
    let mut buf = [0u8; 1024];
    let n = control.recv(&mut buf).expect("rtpproxy reply");
    let reply = String::from_utf8_lossy(&buf[..n]).into_owned();
    reply
        .strip_prefix(&format!("{cookie} "))
        .unwrap_or(&reply)
        .trim()
        .to_owned()
}

fn port_of(reply: &str) -> u16 {
    reply
        .split_whitespace()
        .next()
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("no port in reply {reply:?}"))
}

fn rtp(seq: u16) -> [u8; 172] {
    let mut p = [0u8; 172];
    p[0] = 0x80;
    p[2..4].copy_from_slice(&seq.to_be_bytes());
    p[8..12].copy_from_slice(&0x5eed_0001u32.to_be_bytes());
    p
}

/// Receives until the timeout; the sequence numbers and sources seen.
fn drain(socket: &UdpSocket) -> Vec<(u16, SocketAddr)> {
    let mut got = Vec::new();
    let mut buf = [0u8; 2048];
    while let Ok((n, from)) = socket.recv_from(&mut buf) {
        if n >= 12 {
            got.push((u16::from_be_bytes([buf[2], buf[3]]), from));
        }
    }
    got
}

struct Daemon(Child);

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn ethtool_tx(ns: &str, on: bool) {
    let status = Command::new("ip")
        .args([
            "netns",
            "exec",
            ns,
            "ethtool",
            "-K",
            topo::ENDPOINT_DEV,
            "tx",
        ])
        .arg(if on { "on" } else { "off" })
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .expect("ethtool (cargo xtask setup installs it)");
    assert!(status.success(), "ethtool -K tx in {ns}");
}

/// `rx_queue_*_{name}` summed from `ethtool -S dev` in `ns`: the veth driver's XDP counters.
fn veth_xdp_stat(ns: &str, dev: &str, name: &str) -> u64 {
    let out = Command::new("ip")
        .args(["netns", "exec", ns, "ethtool", "-S", dev])
        .output()
        .expect("ethtool (cargo xtask setup installs it)");
    let suffix = format!("_{name}");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.trim().split_once(": "))
        .filter(|(k, _)| k.starts_with("rx_queue_") && k.ends_with(&suffix))
        .map(|(_, v)| v.trim().parse::<u64>().unwrap_or(0))
        .sum()
}

/// The relay between the caller's and the callee's link: packets leave through the other
/// device, by DEVMAP redirect.
#[test]
fn latched_stream_is_forwarded_in_the_kernel() {
    if !privileged_or_skip("latched_stream_is_forwarded_in_the_kernel") {
        return;
    }
    latched_stream_on(Shape::Routed);
}

/// A single-NIC relay: packets leave through the device they came in on, by XDP_TX.
#[test]
fn one_armed_relay_forwards_with_xdp_tx() {
    if !privileged_or_skip("one_armed_relay_forwards_with_xdp_tx") {
        return;
    }
    latched_stream_on(Shape::OneArm);
}

fn latched_stream_on(shape: Shape) {
    let topo =
        Topology::up_shaped(&Topology::unique_prefix("xr"), shape).expect("namespace topology");
    let (caller_ns, relay_ns, callee_ns) = (
        topo.ns(Role::Caller),
        topo.ns(Role::Relay),
        topo.ns(Role::Callee),
    );
    // Native XDP_TX/redirect into a veth needs an XDP program on the receiving end: the
    // endpoints (and on one arm, the bridge port towards the relay) run the same program
    // with no flows (it passes everything).
    let helper = |dev: &str| {
        let mut f = FastPath::load(DEFAULT_MAX_FLOWS).unwrap();
        f.attach(dev, AttachMode::Native).unwrap();
        f
    };
    let mut _helpers: Vec<FastPath> = [Role::Caller, Role::Callee]
        .into_iter()
        .map(|role| topo.run_in(role, || helper(topo::ENDPOINT_DEV)).unwrap())
        .collect();
    if shape == Shape::OneArm {
        _helpers.push(topo::run_in_netns(&topo.lan_ns(), || helper(topo::LAN_RELAY_PORT)).unwrap());
    }
    let relay_devs = topo.relay_devs();
    let xdp_tx = |name| {
        relay_devs
            .iter()
            .map(|dev| veth_xdp_stat(&relay_ns, dev, name))
            .sum::<u64>()
    };
    let dir = tempfile_dir();
    let config = dir.join("sluice.toml");
    fs::write(
        &config,
        format!(
            r#"[log]
level = "debug"
[media]
port_min = 30000
port_max = 30099
quarantine = "0s"
[session]
media_timeout = "3s"
[[media.interface]]
name = "media"
address = "{relay}"
[rtpproxy]
listen = ["udp:{CONTROL}"]
[grpc]
listen = "127.0.0.1:0"
[metrics]
listen = "127.0.0.1:0"
[xdp]
mode = "native"
interfaces = {devs:?}
enable_forwarding = true
"#,
            relay = topo::RELAY_CALLER_SIDE_V4,
            devs = relay_devs,
        ),
    )
    .unwrap();
    let log = fs::File::create(dir.join("sluice.log")).unwrap();
    let _daemon = Daemon(
        Command::new("ip")
            .args([
                "netns",
                "exec",
                &relay_ns,
                env!("CARGO_BIN_EXE_sluice"),
                "--config",
            ])
            .arg(&config)
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("start sluice"),
    );
    let control = topo
        .run_in(Role::Relay, || {
            let s = UdpSocket::bind("127.0.0.1:0").unwrap();
            s.set_read_timeout(Some(Duration::from_millis(300)))
                .unwrap();
            s
        })
        .unwrap();
    // The daemon is up when it answers the version command.
    let up = (0..50).any(|_| {
        control.send_to(b"v1 V", CONTROL).is_ok() && {
            let mut buf = [0u8; 64];
            control.recv(&mut buf).is_ok()
        }
    });
    let log_text = || fs::read_to_string(dir.join("sluice.log")).unwrap_or_default();
    assert!(up, "sluice did not come up:\n{}", log_text());

    let caller_addr = SocketAddr::new(topo::CALLER_V4.into(), 4000);
    let callee_addr = SocketAddr::new(topo::CALLEE_V4.into(), 5000);
    let p1 = port_of(&command(
        &control,
        &format!("U call-x {} 4000 ft", topo::CALLER_V4),
    ));
    let p2 = port_of(&command(
        &control,
        &format!("L call-x {} 5000 ft tt", topo::CALLEE_V4),
    ));
    // The offer's reply goes into the SDP the callee gets, the answer's into the caller's.
    let relay_for_callee = SocketAddr::new(topo::RELAY_CALLER_SIDE_V4.into(), p1);
    let relay_for_caller = SocketAddr::new(topo::RELAY_CALLER_SIDE_V4.into(), p2);
    let open = |role: Role, addr: SocketAddr| {
        topo.run_in(role, || {
            let s = UdpSocket::bind(addr).unwrap();
            s.set_read_timeout(Some(Duration::from_millis(200)))
                .unwrap();
            s
        })
        .unwrap()
    };
    let caller = open(Role::Caller, caller_addr);
    let callee = open(Role::Callee, callee_addr);
    let csum_errors = |role: Role| topo.run_in(role, || udp_snmp("InCsumErrors")).unwrap();
    let relay_rx = || {
        topo.run_in(Role::Relay, || udp_snmp("InDatagrams"))
            .unwrap()
    };

    let mut seq: u16 = 0;
    let mut offloaded_rx_checked = false;
    for tx_offload in [true, false] {
        ethtool_tx(&caller_ns, tx_offload);
        ethtool_tx(&callee_ns, tx_offload);
        let errors_before = (csum_errors(Role::Caller), csum_errors(Role::Callee));
        let tx_before = xdp_tx("xdp_tx");
        let first = seq;
        let mut relay_rx_at = None;
        // Endpoints read as they go, like phones: buffers the kernel forwarded are held until
        // the receiving socket consumes them.
        let (mut at_callee, mut at_caller) = (Vec::new(), Vec::new());
        for batch in 0..20 {
            if batch == 10 {
                relay_rx_at = Some(relay_rx());
            }
            for _ in 0..BATCH {
                caller.send_to(&rtp(seq), relay_for_caller).unwrap();
                callee.send_to(&rtp(seq), relay_for_callee).unwrap();
                seq += 1;
                std::thread::sleep(Duration::from_millis(2));
            }
            at_callee.extend(drain(&callee));
            at_caller.extend(drain(&caller));
        }
        at_callee.extend(drain(&callee));
        at_caller.extend(drain(&caller));
        let want: BTreeSet<u16> = (first..seq).collect();
        for (name, got, relay_addr) in [
            ("callee", at_callee, relay_for_callee),
            ("caller", at_caller, relay_for_caller),
        ] {
            assert!(
                got.iter().all(|(_, from)| *from == relay_addr),
                "{name} (tx offload {tx_offload}): every packet comes from the relay's {relay_addr}"
            );
            let seqs: BTreeSet<u16> = got.iter().map(|(s, _)| *s).collect();
            let missing: Vec<_> = want.difference(&seqs).collect();
            assert!(
                missing.is_empty(),
                "{name} (tx offload {tx_offload}): {} of {} packets missing (first {:?}); relay log:\n{}",
                missing.len(),
                want.len(),
                missing.first(),
                log_text()
            );
        }
        assert_eq!(
            (csum_errors(Role::Caller), csum_errors(Role::Callee)),
            errors_before,
            "receivers counted checksum errors (tx offload {tx_offload})"
        );
        // After the first half the stream is in the kernel: the relay's sockets got nothing
        // of the second half (no control traffic ran meanwhile).
        let rx_half = relay_rx() - relay_rx_at.unwrap();
        assert_eq!(
            rx_half, 0,
            "relay sockets received {rx_half} datagrams after the handoff (tx offload {tx_offload})"
        );
        // The way out: on one arm every kernel-forwarded packet is an XDP_TX of the relay's
        // device (both directions of the second half at least); routed, none is.
        let tx = xdp_tx("xdp_tx") - tx_before;
        match shape {
            Shape::OneArm => assert!(
                tx >= 2 * 10 * u64::from(BATCH),
                "{tx} XDP_TX on the relay's device (tx offload {tx_offload})"
            ),
            Shape::Routed => assert_eq!(tx, 0, "XDP_TX on the routed relay"),
        }
        offloaded_rx_checked = true;
    }
    assert!(offloaded_rx_checked);
    assert_eq!(xdp_tx("xdp_tx_errors"), 0, "XDP_TX frames the veth dropped");

    // A spoofed source (right address, wrong port) goes to userspace and is dropped there.
    let spoofer = open(Role::Caller, SocketAddr::new(topo::CALLER_V4.into(), 4002));
    for _ in 0..5 {
        spoofer.send_to(&rtp(60_000), relay_for_caller).unwrap();
    }
    assert!(
        drain(&callee).iter().all(|(s, _)| *s != 60_000),
        "a spoofed source was forwarded"
    );

    // Longer than the media timeout with the stream only in the kernel: the daemon sees the
    // kernel's packet counts move, so the call stays up.
    let rx_before = relay_rx();
    let until = Instant::now() + Duration::from_millis(4_500);
    while Instant::now() < until {
        caller.send_to(&rtp(seq), relay_for_caller).unwrap();
        callee.send_to(&rtp(seq), relay_for_callee).unwrap();
        seq = seq.wrapping_add(1);
        std::thread::sleep(Duration::from_millis(20));
        drain(&callee);
        drain(&caller);
    }
    assert_eq!(relay_rx(), rx_before, "the stream stayed in the kernel");
    let reply = command(&control, "Q call-x ft tt");
    assert!(
        !reply.starts_with('E'),
        "kernel-forwarded call timed out: Q -> {reply}; relay log:\n{}",
        log_text()
    );

    // Delete: flows and sockets are gone, nothing is forwarded.
    assert_eq!(command(&control, "D call-x ft tt"), "0");
    std::thread::sleep(Duration::from_millis(100));
    for _ in 0..5 {
        caller.send_to(&rtp(61_000), relay_for_caller).unwrap();
    }
    assert!(
        drain(&callee).is_empty(),
        "packets forwarded after the call was deleted"
    );
    let _ = fs::remove_dir_all(&dir);
}

fn tempfile_dir() -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("sluice-xdp-relay-{}", std::process::id()));
    fs::create_dir_all(&dir).unwrap();
    dir
}
