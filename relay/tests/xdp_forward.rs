//! The XDP program's forwarding on hand-built frames, through BPF_PROG_TEST_RUN: verdicts,
//! every rewritten header field, and checksums recomputed here from scratch. Root only (BPF and
//! a namespace whose routes and neighbours the program's FIB lookups use); skips with a message
//! when unprivileged, fails instead under `cargo xtask test` as root (CI).

mod common;
use common::{fold, sum16};

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::process::Command;
use std::sync::Arc;

use aya::programs::{TestRun, TestRunOptions};
use sluice::datapath::xdp::FastPath;
use sluice::session::stats::StreamShared;
use sluice::session::{Component, FlowSpec};
use sluice_bench::privileged::privileged_or_skip;
use sluice_bench::topo::{self, Role, Topology};
use sluice_common::{Counter, DEFAULT_MAX_FLOWS, Stat};

const XDP_PASS: u32 = 2;
const XDP_TX: u32 = 3;
const XDP_REDIRECT: u32 = 4;

const CALLER_MAC: [u8; 6] = [0x02, 0, 0, 0, 1, 2];
/// MACs of the static neighbours the test installs in the relay namespace.
const CALLEE_MAC: [u8; 6] = [0x02, 0, 0, 0, 2, 2];
const SIDE_MAC: [u8; 6] = [0x02, 0, 0, 0, 1, 3];
/// A second endpoint on the caller's link (egress = ingress device: XDP_TX).
const SIDE_V4: Ipv4Addr = Ipv4Addr::new(198, 18, 1, 3);
const VLAN_ID: u16 = 100;

fn pseudo(src: IpAddr, dst: IpAddr, len: usize) -> u64 {
    let bytes = |a: IpAddr| match a {
        IpAddr::V4(a) => a.octets().to_vec(),
        IpAddr::V6(a) => a.octets().to_vec(),
    };
    sum16(&bytes(src)) + sum16(&bytes(dst)) + 17 + len as u64
}

/// How the sender filled the UDP checksum.
#[derive(Clone, Copy, PartialEq)]
enum Check {
    Full,
    /// IPv4 "no checksum".
    Zero,
    /// TX offload left the pseudo-header sum for the device (CHECKSUM_PARTIAL).
    Partial,
}

struct Udp {
    src: SocketAddr,
    dst: SocketAddr,
    payload: Vec<u8>,
    check: Check,
    vlan: Option<u16>,
    dst_mac: [u8; 6],
    tos: u8,
    fragment: bool,
}

impl Udp {
    fn new(src: SocketAddr, dst: SocketAddr) -> Udp {
        let mut payload = vec![0u8; 172];
        payload[0] = 0x80;
        payload[2..4].copy_from_slice(&1234u16.to_be_bytes());
        payload[8..12].copy_from_slice(&0x1122_3344u32.to_be_bytes());
        for (i, b) in payload[12..].iter_mut().enumerate() {
            *b = i as u8;
        }
        Udp {
            src,
            dst,
            payload,
            check: Check::Full,
            vlan: None,
            dst_mac: [0x02, 0, 0, 0, 1, 1],
            tos: 0x01, // ECN ECT(1), must survive the DSCP rewrite
            fragment: false,
        }
    }

    fn frame(&self) -> Vec<u8> {
        let mut f = Vec::new();
        f.extend_from_slice(&self.dst_mac);
        f.extend_from_slice(&CALLER_MAC);
        if let Some(vid) = self.vlan {
            f.extend_from_slice(&0x8100u16.to_be_bytes());
            f.extend_from_slice(&(0x6000 | vid).to_be_bytes()); // priority 3
        }
        let udp_len = 8 + self.payload.len();
        let mut udp = Vec::new();
        udp.extend_from_slice(&self.src.port().to_be_bytes());
        udp.extend_from_slice(&self.dst.port().to_be_bytes());
        udp.extend_from_slice(&(udp_len as u16).to_be_bytes());
        udp.extend_from_slice(&[0, 0]);
        udp.extend_from_slice(&self.payload);
        let p = pseudo(self.src.ip(), self.dst.ip(), udp_len);
        let check = match self.check {
            Check::Zero => 0,
            Check::Partial => fold(p),
            Check::Full => match !fold(p + sum16(&udp)) {
                0 => 0xffff,
                c => c,
            },
        };
        udp[6..8].copy_from_slice(&check.to_be_bytes());
        match (self.src.ip(), self.dst.ip()) {
            (IpAddr::V4(s), IpAddr::V4(d)) => {
                f.extend_from_slice(&0x0800u16.to_be_bytes());
                let mut ip = vec![0x45, self.tos];
                ip.extend_from_slice(&((20 + udp_len) as u16).to_be_bytes());
                ip.extend_from_slice(&[0x12, 0x34]);
                ip.extend_from_slice(if self.fragment {
                    &[0x20, 0]
                } else {
                    &[0x40, 0]
                });
                ip.extend_from_slice(&[7, 17, 0, 0]); // TTL 7: the relay must reset it
                ip.extend_from_slice(&s.octets());
                ip.extend_from_slice(&d.octets());
                let c = !fold(sum16(&ip));
                ip[10..12].copy_from_slice(&c.to_be_bytes());
                f.extend_from_slice(&ip);
            }
            (IpAddr::V6(s), IpAddr::V6(d)) => {
                f.extend_from_slice(&0x86ddu16.to_be_bytes());
                let tc = self.tos;
                f.extend_from_slice(&[0x60 | (tc >> 4), (tc << 4) | 0x0a, 0xbc, 0xde]);
                f.extend_from_slice(&(udp_len as u16).to_be_bytes());
                f.extend_from_slice(&[if self.fragment { 44 } else { 17 }, 7]);
                f.extend_from_slice(&s.octets());
                f.extend_from_slice(&d.octets());
            }
            _ => unreachable!("one family per frame"),
        }
        f.extend_from_slice(&udp);
        f
    }
}

/// What the program sent, parsed back, with every checksum verified from scratch.
#[derive(Debug)]
struct Out {
    dst_mac: [u8; 6],
    src_mac: [u8; 6],
    #[allow(dead_code)] // read by the Debug output of failures
    tci: Option<u16>,
    src: SocketAddr,
    dst: SocketAddr,
    tos: u8,
    ttl: u8,
    udp_check: u16,
    payload: Vec<u8>,
}

fn parse(f: &[u8]) -> Out {
    let mut off = 12;
    let mut tci = None;
    if f[12..14] == [0x81, 0x00] {
        tci = Some(u16::from_be_bytes([f[14], f[15]]));
        off += 4;
    }
    let ethertype = u16::from_be_bytes([f[off], f[off + 1]]);
    let l3 = off + 2;
    let (src_ip, dst_ip, l4, tos, ttl): (IpAddr, IpAddr, usize, u8, u8) = if ethertype == 0x0800 {
        let ip = &f[l3..l3 + 20];
        assert_eq!(fold(sum16(ip)), 0xffff, "IPv4 header checksum");
        (
            Ipv4Addr::from(<[u8; 4]>::try_from(&ip[12..16]).unwrap()).into(),
            Ipv4Addr::from(<[u8; 4]>::try_from(&ip[16..20]).unwrap()).into(),
            l3 + 20,
            ip[1],
            ip[8],
        )
    } else {
        let ip = &f[l3..l3 + 40];
        assert_eq!(ip[0] >> 4, 6);
        assert_eq!(ip[1] & 0x0f, 0x0a, "flow label kept");
        (
            Ipv6Addr::from(<[u8; 16]>::try_from(&ip[8..24]).unwrap()).into(),
            Ipv6Addr::from(<[u8; 16]>::try_from(&ip[24..40]).unwrap()).into(),
            l3 + 40,
            (ip[0] << 4) | (ip[1] >> 4),
            ip[7],
        )
    };
    let udp_len = usize::from(u16::from_be_bytes([f[l4 + 4], f[l4 + 5]]));
    let udp = &f[l4..l4 + udp_len];
    let udp_check = u16::from_be_bytes([udp[6], udp[7]]);
    if udp_check != 0 {
        assert_eq!(
            fold(pseudo(src_ip, dst_ip, udp_len) + sum16(udp)),
            0xffff,
            "UDP checksum verifies"
        );
    }
    Out {
        dst_mac: f[0..6].try_into().unwrap(),
        src_mac: f[6..12].try_into().unwrap(),
        tci,
        src: SocketAddr::new(src_ip, u16::from_be_bytes([udp[0], udp[1]])),
        dst: SocketAddr::new(dst_ip, u16::from_be_bytes([udp[2], udp[3]])),
        tos,
        ttl,
        udp_check,
        payload: udp[8..].to_vec(),
    }
}

fn mac_of(ns: &str, dev: &str) -> [u8; 6] {
    let out = Command::new("ip")
        .args(["-n", ns, "-br", "link", "show", dev])
        .output()
        .expect("ip link");
    let text = String::from_utf8_lossy(&out.stdout);
    let mac = text.split_whitespace().nth(2).expect("MAC column");
    let bytes: Vec<u8> = mac
        .split(':')
        .map(|h| u8::from_str_radix(h, 16).unwrap())
        .collect();
    bytes.try_into().unwrap()
}

fn ifindex(ns: &str, dev: &str) -> u32 {
    let out = Command::new("ip")
        .args(["-n", ns, "-o", "link", "show", dev])
        .output()
        .expect("ip link");
    let text = String::from_utf8_lossy(&out.stdout);
    text.split(':').next().unwrap().trim().parse().unwrap()
}

fn flow(
    local: SocketAddr,
    remote: SocketAddr,
    egress_local: SocketAddr,
    egress_remote: SocketAddr,
) -> FlowSpec {
    FlowSpec {
        component: Component::Rtp,
        ingress_leg: 0,
        local,
        remote,
        egress_local,
        egress_remote,
        dscp: 46,
    }
}

fn sa(ip: impl Into<IpAddr>, port: u16) -> SocketAddr {
    SocketAddr::new(ip.into(), port)
}

struct Bench {
    fast_path: FastPath,
    caller_if: u32,
}

impl Bench {
    fn run(&self, frame: &[u8]) -> (u32, Vec<u8>) {
        let program = self.fast_path.program().unwrap();
        // struct xdp_md: data, data_end, data_meta, ingress_ifindex, rx_queue_index,
        // egress_ifindex.
        let ctx: Vec<u8> = [0, frame.len() as u32, 0, self.caller_if, 0, 0]
            .iter()
            .flat_map(|v| v.to_ne_bytes())
            .collect();
        let mut out = vec![0u8; frame.len() + 256];
        let r = program
            .test_run(TestRunOptions {
                data_in: Some(frame),
                data_out: Some(&mut out),
                ctx_in: Some(&ctx),
                ..Default::default()
            })
            .expect("BPF_PROG_TEST_RUN");
        out.truncate(r.data_size_out as usize);
        (r.return_value, out)
    }

    /// Runs `frame` right after a route epoch change, when the program asks the FIB (its
    /// general path), then again with the route cached (its fast path for plain frames); both
    /// must give the same verdict and bytes.
    fn run_twice(&mut self, frame: &[u8]) -> (u32, Vec<u8>) {
        self.fast_path.flows().poll();
        let first = self.run(frame);
        let second = self.run(frame);
        assert_eq!(first, second, "route lookup and cached route disagree");
        second
    }

    /// Non-zero global counters, for failure messages.
    fn dump(&self) -> String {
        let stats = self.fast_path.stats().unwrap();
        stats
            .iter()
            .filter(|(_, c)| c.packets > 0)
            .map(|(s, c)| format!("{}={}", s.name(), c.packets))
            .collect::<Vec<_>>()
            .join(" ")
    }

    fn stat(&self, stat: Stat) -> u64 {
        self.fast_path
            .stat(stat)
            .map(|c: Counter| c.packets)
            .unwrap()
    }
}

#[test]
fn forwards_rewrites_and_checksums_hand_built_frames() {
    if !privileged_or_skip("forwards_rewrites_and_checksums_hand_built_frames") {
        return;
    }
    let topo = Topology::up(&Topology::unique_prefix("xf")).expect("namespace topology");
    let relay = topo.ns(Role::Relay);
    // Static neighbours: the FIB lookup finds MACs without ARP/ND traffic.
    for (addr, mac, dev) in [
        (
            IpAddr::from(topo::CALLEE_V4),
            "02:00:00:00:02:02",
            topo::RELAY_CALLEE_DEV,
        ),
        (
            topo::CALLEE_V6.into(),
            "02:00:00:00:02:02",
            topo::RELAY_CALLEE_DEV,
        ),
        (SIDE_V4.into(), "02:00:00:00:01:03", topo::RELAY_CALLER_DEV),
    ] {
        topo.static_neighbour(Role::Relay, addr, mac, dev).unwrap();
    }
    // 802.1Q egress (a tagged frame out of a VLAN device on the same parent) needs the 8021q
    // module, which the CI kernel does not have; a tagged frame whose route leaves through an
    // untagged device must be passed, which is checked below.
    topo.enable_forwarding(Role::Relay).unwrap();
    let callee_dev_mac = mac_of(&relay, topo::RELAY_CALLEE_DEV);
    let caller_dev_mac = mac_of(&relay, topo::RELAY_CALLER_DEV);
    let caller_if = ifindex(&relay, topo::RELAY_CALLER_DEV);

    let relay_a = sa(topo::RELAY_CALLER_SIDE_V4, 30_000);
    let relay_b = sa(topo::RELAY_CALLEE_SIDE_V4, 30_002);
    let caller = sa(topo::CALLER_V4, 4000);
    let callee = sa(topo::CALLEE_V4, 5000);
    let relay_a6 = sa(topo::RELAY_CALLER_SIDE_V6, 30_010);
    let relay_b6 = sa(topo::RELAY_CALLEE_SIDE_V6, 30_012);
    let caller6 = sa(topo::CALLER_V6, 4000);
    let callee6 = sa(topo::CALLEE_V6, 5000);
    let relay_tx = sa(topo::RELAY_CALLER_SIDE_V4, 30_020);
    let side = sa(SIDE_V4, 6000);

    let shared1 = Arc::new(StreamShared::default());
    let mut bench = topo
        .run_in(Role::Relay, || {
            let mut fast_path = FastPath::load(DEFAULT_MAX_FLOWS).expect("load");
            fast_path.add_device(topo::RELAY_CALLER_DEV).unwrap();
            fast_path.add_device(topo::RELAY_CALLEE_DEV).unwrap();
            let shared = Arc::new(StreamShared::default());
            let flows = fast_path.flows();
            flows
                .apply(1, &[flow(relay_a, caller, relay_b, callee)], &shared1)
                .unwrap();
            flows
                .apply(2, &[flow(relay_a6, caller6, relay_b6, callee6)], &shared)
                .unwrap();
            flows
                .apply(3, &[flow(relay_tx, caller, relay_tx, side)], &shared)
                .unwrap();
            assert_eq!(flows.len(), 3);
            Bench {
                fast_path,
                caller_if,
            }
        })
        .unwrap();
    // FIB lookups resolve in the namespace of the thread running the test.
    topo.run_in(Role::Relay, || {
        // IPv4, other device: redirect, every field rewritten. Each frame twice: the first
        // after a route epoch change, when the program asks the FIB (its general path), then
        // with the route cached (its fast path for plain frames); both must send the same bytes.
        for check in [Check::Full, Check::Partial, Check::Zero] {
            let mut pkt = Udp::new(caller, relay_a);
            pkt.check = check;
            let before = bench.stat(Stat::Redirect);
            let (verdict, out) = bench.run_twice(&pkt.frame());
            assert_eq!(
                verdict,
                XDP_REDIRECT,
                "IPv4 to the callee device: {}",
                bench.dump()
            );
            assert_eq!(bench.stat(Stat::Redirect), before + 2);
            let o = parse(&out);
            assert_eq!((o.src, o.dst), (relay_b, callee));
            assert_eq!((o.dst_mac, o.src_mac), (CALLEE_MAC, callee_dev_mac));
            assert_eq!(o.tos, (46 << 2) | 0x01, "DSCP EF, ECN kept");
            assert_eq!(o.ttl, 64);
            assert_eq!(o.payload, pkt.payload, "payload untouched");
            if check == Check::Zero {
                assert_eq!(o.udp_check, 0, "a zero IPv4 UDP checksum stays zero");
            } else {
                assert_ne!(o.udp_check, 0);
            }
        }
        // IPv6: the checksum is mandatory and must verify (checked in parse), also when the
        // sender left a partial one.
        for check in [Check::Full, Check::Partial] {
            let mut pkt = Udp::new(caller6, relay_a6);
            pkt.check = check;
            let before = bench.stat(Stat::Redirect);
            let (verdict, out) = bench.run_twice(&pkt.frame());
            assert_eq!(verdict, XDP_REDIRECT, "IPv6 to the callee device");
            assert_eq!(bench.stat(Stat::Redirect), before + 2);
            let o = parse(&out);
            assert_eq!((o.src, o.dst), (relay_b6, callee6));
            assert_eq!(o.dst_mac, CALLEE_MAC);
            assert_eq!((o.tos, o.ttl), ((46 << 2) | 0x01, 64));
            assert_ne!(o.udp_check, 0);
        }
        // Egress on the ingress device: XDP_TX.
        let (verdict, out) = bench.run_twice(&Udp::new(caller, relay_tx).frame());
        assert_eq!(verdict, XDP_TX);
        let o = parse(&out);
        assert_eq!((o.src, o.dst), (relay_tx, side));
        assert_eq!((o.dst_mac, o.src_mac), (SIDE_MAC, caller_dev_mac));

        // A relatch that moves a flow's destination to the other device: the next packet takes
        // the new route, not the one this CPU cached for the flow.
        let (verdict, _) = bench.run(&Udp::new(caller, relay_a).frame());
        assert_eq!(verdict, XDP_REDIRECT, "cached route to the callee device");
        bench
            .fast_path
            .flows()
            .apply(1, &[flow(relay_a, caller, relay_tx, side)], &shared1)
            .unwrap();
        let (verdict, out) = bench.run(&Udp::new(caller, relay_a).frame());
        assert_eq!(
            verdict, XDP_TX,
            "relatched to a remote on the ingress device"
        );
        let o = parse(&out);
        assert_eq!((o.src, o.dst), (relay_tx, side));
        assert_eq!((o.dst_mac, o.src_mac), (SIDE_MAC, caller_dev_mac));
        bench
            .fast_path
            .flows()
            .apply(1, &[flow(relay_a, caller, relay_b, callee)], &shared1)
            .unwrap();
        let (verdict, out) = bench.run(&Udp::new(caller, relay_a).frame());
        assert_eq!(verdict, XDP_REDIRECT, "and back");
        assert_eq!(parse(&out).dst_mac, CALLEE_MAC);

        // What the program must leave to the stack, untouched.
        let mut fragment = Udp::new(caller, relay_a);
        fragment.fragment = true;
        let mut fragment6 = Udp::new(caller6, relay_a6);
        fragment6.fragment = true;
        let spoofed = Udp::new(sa(topo::CALLER_V4, 4001), relay_a);
        let no_flow = Udp::new(caller, sa(topo::RELAY_CALLER_SIDE_V4, 39_998));
        let mut truncated = Udp::new(caller, relay_a).frame();
        truncated.truncate(14 + 20 + 4);
        // Parsed through the tag and matched, but the route leaves untagged.
        let mut tagged = Udp::new(caller, relay_a);
        tagged.vlan = Some(VLAN_ID);
        let mut short_udp = Udp::new(caller, relay_a).frame();
        short_udp.truncate(14 + 20 + 8 + 10); // UDP length says 180
        let cases: Vec<(&str, Vec<u8>, Stat)> = vec![
            ("IPv4 fragment", fragment.frame(), Stat::PassFragment),
            (
                "IPv6 fragment header",
                fragment6.frame(),
                Stat::PassFragment,
            ),
            (
                "wrong source port",
                spoofed.frame(),
                Stat::PassSourceMismatch,
            ),
            ("no flow", no_flow.frame(), Stat::PassNoFlow),
            (
                "802.1Q tag, untagged egress",
                tagged.frame(),
                Stat::PassVlan,
            ),
            ("UDP header cut", truncated, Stat::PassTruncated),
            ("UDP length past the frame", short_udp, Stat::PassTruncated),
        ];
        for (name, frame, stat) in cases {
            let before = bench.stat(stat);
            let (verdict, out) = bench.run(&frame);
            assert_eq!(verdict, XDP_PASS, "{name}");
            assert_eq!(out, frame, "{name}: passed unchanged");
            assert_eq!(bench.stat(stat), before + 1, "{name}: counted as {stat:?}");
        }

        // Several local addresses on one port: the port entry holds the first flow, the hash
        // the others; removing the first promotes the next. Every flow forwards throughout.
        let shared = Arc::new(StreamShared::default());
        let relay_b_same_port = sa(topo::RELAY_CALLEE_SIDE_V4, relay_a.port());
        let relay_a6_same_port = sa(topo::RELAY_CALLER_SIDE_V6, relay_a.port());
        let flows = bench.fast_path.flows();
        flows
            .apply(
                4,
                &[flow(relay_b_same_port, callee, relay_tx, side)],
                &shared,
            )
            .unwrap();
        flows
            .apply(
                5,
                &[flow(relay_a6_same_port, caller6, relay_b6, callee6)],
                &shared,
            )
            .unwrap();
        let shared_port = |bench: &Bench| {
            let (verdict, out) = bench.run(&Udp::new(callee, relay_b_same_port).frame());
            assert_eq!(
                verdict,
                XDP_TX,
                "second address on the port: {}",
                bench.dump()
            );
            assert_eq!(parse(&out).dst, side);
            let (verdict, out) = bench.run(&Udp::new(caller6, relay_a6_same_port).frame());
            assert_eq!(verdict, XDP_REDIRECT, "IPv6 address on the port");
            assert_eq!(parse(&out).dst, callee6);
        };
        shared_port(&bench);
        let (verdict, out) = bench.run(&Udp::new(caller, relay_a).frame());
        assert_eq!(verdict, XDP_REDIRECT, "the port's first flow");
        assert_eq!(parse(&out).dst, callee);
        bench.fast_path.flows().remove_stream(1);
        let frame = Udp::new(caller, relay_a).frame();
        let (verdict, out) = bench.run(&frame);
        assert_eq!((verdict, out), (XDP_PASS, frame), "removed");
        shared_port(&bench);
        bench.fast_path.flows().remove_stream(4);
        bench.fast_path.flows().remove_stream(5);
        let frame = Udp::new(caller6, relay_a6_same_port).frame();
        assert_eq!(bench.run(&frame).0, XDP_PASS, "all removed");
    })
    .unwrap();
}
