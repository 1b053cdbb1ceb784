//! Kernel tests of the XDP program (root: BPF, network namespaces). They skip with a message when
//! unprivileged, and fail instead under `cargo xtask test` as root (CI).

use std::net::{SocketAddr, UdpSocket};
use std::process::Command;
use std::time::Duration;

use aya::programs::{TestRun, TestRunOptions};
use sluice::datapath::xdp::{AttachMode, FastPath};
use sluice_bench::privileged::privileged_or_skip;
use sluice_bench::topo::{self, Role, Topology};
use sluice_common::{Counter, DEFAULT_MAX_FLOWS, Stat};

const XDP_PASS: u32 = 2;

/// Minimal frame builder: only the fields the classifier reads are meaningful.
fn eth(ethertype: u16, vlan: bool) -> Vec<u8> {
    let mut f = vec![0x02, 0, 0, 0, 0, 1, 0x02, 0, 0, 0, 0, 2];
    if vlan {
        f.extend_from_slice(&0x8100u16.to_be_bytes());
        f.extend_from_slice(&100u16.to_be_bytes());
    }
    f.extend_from_slice(&ethertype.to_be_bytes());
    f
}

fn ipv4(proto: u8, ihl_words: u8) -> Vec<u8> {
    let mut h = vec![0u8; usize::from(ihl_words.max(5)) * 4];
    h[0] = 0x40 | ihl_words;
    h[8] = 64;
    h[9] = proto;
    h[12..16].copy_from_slice(&[198, 18, 1, 2]);
    h[16..20].copy_from_slice(&[198, 18, 1, 1]);
    h
}

fn ipv6(next: u8) -> Vec<u8> {
    let mut h = vec![0u8; 40];
    h[0] = 0x60;
    h[6] = next;
    h[7] = 64;
    h
}

fn udp(payload: usize) -> Vec<u8> {
    let mut h = vec![0u8; 8 + payload];
    h[0..2].copy_from_slice(&4000u16.to_be_bytes());
    h[2..4].copy_from_slice(&30000u16.to_be_bytes());
    h[4..6].copy_from_slice(&u16::try_from(8 + payload).unwrap().to_be_bytes());
    h
}

fn frame(parts: &[Vec<u8>]) -> Vec<u8> {
    parts.concat()
}

fn delta(before: &[(Stat, Counter)], after: &[(Stat, Counter)], stat: Stat) -> u64 {
    let get = |v: &[(Stat, Counter)]| {
        v.iter()
            .find(|(s, _)| *s == stat)
            .map_or(0, |(_, c)| c.packets)
    };
    get(after) - get(before)
}

#[test]
fn program_passes_verifier_and_classifies_frames() {
    if !privileged_or_skip("program_passes_verifier_and_classifies_frames") {
        return;
    }
    let fast_path =
        FastPath::load(DEFAULT_MAX_FLOWS).expect("XDP program loads and passes the verifier");
    let program = fast_path.program().unwrap();
    let cases: Vec<(&str, Vec<u8>, Stat)> = vec![
        (
            "udp/ipv4",
            frame(&[eth(0x0800, false), ipv4(17, 5), udp(160)]),
            Stat::PassNoFlow,
        ),
        (
            "udp/ipv6",
            frame(&[eth(0x86dd, false), ipv6(17), udp(160)]),
            Stat::PassNoFlow,
        ),
        (
            "udp/ipv4 in 802.1Q",
            frame(&[eth(0x0800, true), ipv4(17, 5), udp(160)]),
            Stat::PassNoFlow,
        ),
        (
            "udp/ipv4 with options",
            frame(&[eth(0x0800, false), ipv4(17, 6), udp(20)]),
            Stat::PassIpOptions,
        ),
        (
            "tcp/ipv4",
            frame(&[eth(0x0800, false), ipv4(6, 5), vec![0; 20]]),
            Stat::PassNotUdp,
        ),
        (
            "arp",
            frame(&[eth(0x0806, false), vec![0; 28]]),
            Stat::PassNotIp,
        ),
        (
            "ipv4 header cut",
            frame(&[eth(0x0800, false), vec![0x45; 8]]),
            Stat::PassTruncated,
        ),
        (
            "ipv4 ihl < 5",
            frame(&[eth(0x0800, false), ipv4(17, 3), udp(8)]),
            Stat::PassTruncated,
        ),
        (
            "udp header cut",
            frame(&[eth(0x0800, false), ipv4(17, 5), vec![0; 4]]),
            Stat::PassTruncated,
        ),
        (
            "vlan tag cut",
            frame(&[eth(0x8100, false), vec![0; 1]]),
            Stat::PassTruncated,
        ),
    ];
    for (name, data, expected) in cases {
        let before = fast_path.stats().unwrap();
        let mut out = vec![0u8; data.len() + 256];
        let result = program
            .test_run(TestRunOptions {
                data_in: Some(&data),
                data_out: Some(&mut out),
                ..Default::default()
            })
            .unwrap_or_else(|e| panic!("{name}: BPF_PROG_TEST_RUN failed: {e}"));
        assert_eq!(result.return_value, XDP_PASS, "{name}: verdict");
        assert_eq!(
            &out[..result.data_size_out as usize],
            &data[..],
            "{name}: a passed frame is unchanged"
        );
        let after = fast_path.stats().unwrap();
        assert_eq!(
            delta(&before, &after, Stat::Received),
            1,
            "{name}: received"
        );
        for stat in Stat::ALL.into_iter().filter(|s| *s != Stat::Received) {
            let want = u64::from(stat == expected);
            assert_eq!(delta(&before, &after, stat), want, "{name}: {stat:?}");
        }
    }
}

#[test]
fn attached_natively_on_veth_counts_udp_and_passes_it() {
    if !privileged_or_skip("attached_natively_on_veth_counts_udp_and_passes_it") {
        return;
    }
    const DATAGRAMS: usize = 200;
    let topo = Topology::up(&Topology::unique_prefix("xk")).expect("namespace topology");
    let relay_addr = SocketAddr::new(topo::RELAY_CALLER_SIDE_V4.into(), 40_000);
    let (fast_path, receiver) = topo
        .run_in(Role::Relay, || {
            let mut fast_path = FastPath::load(DEFAULT_MAX_FLOWS).expect("load");
            fast_path
                .attach(topo::RELAY_CALLER_DEV, AttachMode::Native)
                .expect("native XDP attach on veth");
            let receiver = UdpSocket::bind(relay_addr).expect("bind in relay namespace");
            // Frames that went through XDP on veth carry page-sized buffers, so the default
            // receive buffer holds fewer than DATAGRAMS of them; the test checks delivery, not
            // socket sizing.
            nix::sys::socket::setsockopt(
                &receiver,
                nix::sys::socket::sockopt::RcvBufForce,
                &(8 << 20),
            )
            .expect("SO_RCVBUFFORCE");
            (fast_path, receiver)
        })
        .unwrap();
    assert_eq!(
        xdp_mode_shown(&topo),
        Some("xdp"),
        "ip link reports native XDP"
    );
    let before = fast_path.stats().unwrap();

    topo.run_in(Role::Caller, || {
        let sender = UdpSocket::bind((topo::CALLER_V4, 0)).unwrap();
        for i in 0..DATAGRAMS {
            let mut payload = [0u8; 172];
            payload[..8].copy_from_slice(&(i as u64).to_be_bytes());
            sender.send_to(&payload, relay_addr).unwrap();
        }
    })
    .unwrap();

    receiver
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let mut buf = [0u8; 2048];
    for i in 0..DATAGRAMS {
        let (n, from) = receiver
            .recv_from(&mut buf)
            .unwrap_or_else(|e| panic!("datagram {i} of {DATAGRAMS} not delivered: {e}"));
        assert_eq!(n, 172);
        assert_eq!(from.ip(), std::net::IpAddr::from(topo::CALLER_V4));
    }
    let after = fast_path.stats().unwrap();
    let udp = delta(&before, &after, Stat::PassNoFlow);
    assert!(
        udp >= DATAGRAMS as u64,
        "XDP counted {udp} UDP frames, sent {DATAGRAMS}"
    );
    assert!(delta(&before, &after, Stat::Received) >= udp);

    drop(fast_path);
    assert_eq!(xdp_mode_shown(&topo), None, "program detached on drop");
}

/// The XDP attach mode `ip link` shows for the relay's caller-side device.
fn xdp_mode_shown(topo: &Topology) -> Option<&'static str> {
    let out = Command::new("ip")
        .args([
            "-n",
            &topo.ns(Role::Relay),
            "link",
            "show",
            topo::RELAY_CALLER_DEV,
        ])
        .output()
        .expect("ip link show");
    let text = String::from_utf8_lossy(&out.stdout);
    if text.contains(" xdpgeneric") {
        Some("xdpgeneric")
    } else if text.contains(" xdp ") || text.contains(" xdp/") {
        Some("xdp")
    } else {
        None
    }
}
