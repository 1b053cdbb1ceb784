//! The auxiliary XDP programs through BPF_PROG_TEST_RUN: the reflectors turn UDP packets around
//! with every checksum still valid (one with XDP_TX, one with a DEVMAP redirect to the ingress
//! device), and pass what they do not handle; the pass program passes. Needs root (loading BPF
//! programs); no namespace.

mod common;
use common::{fold, sum16};

use aya::programs::{TestRun, TestRunOptions};
use sluice::datapath::xdp::aux_prog::{AuxKind, AuxProgram};
use sluice_bench::privileged::privileged_or_skip;

const XDP_DROP: u32 = 1;
const XDP_PASS: u32 = 2;
const XDP_TX: u32 = 3;
const XDP_REDIRECT: u32 = 4;
/// The loopback device's ifindex: where a test run's frame comes in.
const LOOPBACK_IFINDEX: u32 = 1;
const MAC_A: [u8; 6] = [0x02, 0, 0, 0, 0, 0xa];
const MAC_B: [u8; 6] = [0x02, 0, 0, 0, 0, 0xb];

/// An Ethernet + IPv4 (`ihl` words of header) or IPv6 + UDP frame from A (port 4000) to B
/// (port 5000), with valid checksums.
fn frame(v6: bool, ihl: u8) -> Vec<u8> {
    let payload: Vec<u8> = (0..160u8).collect();
    let udp_len = 8 + payload.len();
    let (src, dst): (Vec<u8>, Vec<u8>) = if v6 {
        let mut a = vec![0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xa];
        let mut b = a.clone();
        b[15] = 0xb;
        a[1] = 1;
        b[1] = 1;
        (a, b)
    } else {
        (vec![198, 18, 1, 2], vec![198, 18, 1, 1])
    };
    let mut udp = Vec::new();
    udp.extend_from_slice(&4000u16.to_be_bytes());
    udp.extend_from_slice(&5000u16.to_be_bytes());
    udp.extend_from_slice(&(udp_len as u16).to_be_bytes());
    udp.extend_from_slice(&[0, 0]);
    udp.extend_from_slice(&payload);
    let pseudo = sum16(&src) + sum16(&dst) + 17 + udp_len as u64;
    let check = !fold(pseudo + sum16(&udp));
    udp[6..8].copy_from_slice(&check.to_be_bytes());
    let mut f = Vec::new();
    f.extend_from_slice(&MAC_B);
    f.extend_from_slice(&MAC_A);
    if v6 {
        f.extend_from_slice(&0x86ddu16.to_be_bytes());
        f.extend_from_slice(&[0x60, 0, 0, 0]);
        f.extend_from_slice(&(udp_len as u16).to_be_bytes());
        f.extend_from_slice(&[17, 64]);
        f.extend_from_slice(&src);
        f.extend_from_slice(&dst);
    } else {
        f.extend_from_slice(&0x0800u16.to_be_bytes());
        let hlen = usize::from(ihl) * 4;
        let mut ip = vec![0x40 | ihl, 0];
        ip.extend_from_slice(&((hlen + udp_len) as u16).to_be_bytes());
        ip.extend_from_slice(&[0, 1, 0x40, 0, 64, 17, 0, 0]);
        ip.extend_from_slice(&src);
        ip.extend_from_slice(&dst);
        ip.resize(hlen, 1); // options (NOPs), if any
        let c = !fold(sum16(&ip));
        ip[10..12].copy_from_slice(&c.to_be_bytes());
        f.extend_from_slice(&ip);
    }
    f.extend_from_slice(&udp);
    f
}

fn run(program: &AuxProgram, frame: &[u8]) -> (u32, Vec<u8>) {
    let mut out = vec![0u8; frame.len() + 64];
    let r = program
        .program()
        .unwrap()
        .test_run(TestRunOptions {
            data_in: Some(frame),
            data_out: Some(&mut out),
            ..Default::default()
        })
        .expect("BPF_PROG_TEST_RUN");
    out.truncate(r.data_size_out as usize);
    (r.return_value, out)
}

/// Checks `out` is `input` turned around, with valid checksums.
fn assert_reflected(input: &[u8], out: &[u8], v6: bool) {
    assert_eq!(out.len(), input.len());
    assert_eq!(out[0..6], input[6..12], "destination MAC = former source");
    assert_eq!(out[6..12], input[0..6], "source MAC = former destination");
    let (l3, addr_at, alen, l4) = if v6 {
        (14, 22, 16, 54)
    } else {
        (14, 26, 4, 34)
    };
    assert_eq!(
        out[addr_at..addr_at + alen],
        input[addr_at + alen..addr_at + 2 * alen]
    );
    assert_eq!(
        out[addr_at + alen..addr_at + 2 * alen],
        input[addr_at..addr_at + alen]
    );
    assert_eq!(
        out[l4..l4 + 2],
        input[l4 + 2..l4 + 4],
        "source port = former destination"
    );
    assert_eq!(out[l4 + 2..l4 + 4], input[l4..l4 + 2]);
    assert_eq!(
        out[l4 + 4..],
        input[l4 + 4..],
        "length, checksum and payload unchanged"
    );
    if !v6 {
        assert_eq!(fold(sum16(&out[l3..l4])), 0xffff, "IPv4 header checksum");
    }
    let udp = &out[l4..];
    let pseudo = sum16(&out[addr_at..addr_at + 2 * alen]) + 17 + udp.len() as u64;
    assert_eq!(fold(pseudo + sum16(udp)), 0xffff, "UDP checksum");
}

#[test]
fn reflector_turns_udp_around_and_passes_the_rest() {
    if !privileged_or_skip("reflector_turns_udp_around_and_passes_the_rest") {
        return;
    }
    let reflect = AuxProgram::load(AuxKind::Reflect).expect("load the reflector");
    for v6 in [false, true] {
        let input = frame(v6, 5);
        let (verdict, out) = run(&reflect, &input);
        assert_eq!(verdict, XDP_TX, "v6={v6}");
        assert_reflected(&input, &out, v6);
    }
    // IPv4 options, a non-UDP protocol, ARP and a truncated frame go to the stack untouched.
    let mut tcp = frame(false, 5);
    tcp[14 + 9] = 6;
    let mut arp = frame(false, 5);
    arp[12..14].copy_from_slice(&0x0806u16.to_be_bytes());
    for input in [frame(false, 6), tcp, arp, frame(true, 5)[..50].to_vec()] {
        let (verdict, out) = run(&reflect, &input);
        assert_eq!(verdict, XDP_PASS);
        assert_eq!(out, input);
    }
    assert!(reflect.program_id().unwrap() > 0);

    let pass = AuxProgram::load(AuxKind::Pass).expect("load the pass program");
    let input = frame(true, 5);
    assert_eq!(run(&pass, &input), (XDP_PASS, input));
}

#[test]
fn redirecting_reflector_sends_back_through_the_device_map() {
    if !privileged_or_skip("redirecting_reflector_sends_back_through_the_device_map") {
        return;
    }
    let mut reflect =
        AuxProgram::load(AuxKind::ReflectRedirect).expect("load the redirecting reflector");
    let input = frame(false, 5);
    // The ingress device is not in the map yet: the turned-around frame is dropped, never
    // handed to the stack.
    assert_eq!(run(&reflect, &input).0, XDP_DROP);
    reflect
        .allow_redirect_to(LOOPBACK_IFINDEX)
        .expect("device map entry for lo");
    for v6 in [false, true] {
        let input = frame(v6, 5);
        let (verdict, out) = run(&reflect, &input);
        assert_eq!(verdict, XDP_REDIRECT, "v6={v6}");
        assert_reflected(&input, &out, v6);
    }
    let input = frame(false, 6);
    assert_eq!(run(&reflect, &input), (XDP_PASS, input));
}
