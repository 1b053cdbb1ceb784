//! Overload behaviour on loopback: a flooded stream keeps forwarding what it can, is never
//! abandoned, and is back to zero loss as soon as the flood stops, while other streams on the
//! same worker keep zero loss. This checks behaviour, not speed: the flood is bounded in count
//! and time, and the assertions are about loss, not throughput.

mod common;

use common::request;
use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::time::{Duration, Instant};

use sluice::control::core::{Core, CoreHandle};
use sluice::datapath::user::SocketOpener;
use sluice::session::latch::LatchPolicy;
use sluice::session::table::InterfaceSpec;
use sluice::session::{TableConfig, UpdateKind};

struct Call {
    caller: UdpSocket,
    callee: UdpSocket,
    to_relay: SocketAddr,
}

fn call(rt: &tokio::runtime::Runtime, core: &CoreHandle, id: &str) -> Call {
    let caller = UdpSocket::bind("127.0.0.1:0").unwrap();
    let callee = UdpSocket::bind("127.0.0.1:0").unwrap();
    callee.set_nonblocking(true).unwrap();
    let (ca, ea) = (caller.local_addr().unwrap(), callee.local_addr().unwrap());
    rt.block_on(core.update(request(UpdateKind::Offer, id, "f", None, ca)))
        .unwrap();
    let answer = rt
        .block_on(core.update(request(UpdateKind::Answer, id, "t", Some("f"), ea)))
        .unwrap();
    Call {
        caller,
        callee,
        to_relay: SocketAddr::new(answer.address, answer.rtp_port),
    }
}

fn packet(seq: u32) -> [u8; 172] {
    let mut p = [0u8; 172];
    p[0] = 0x80;
    p[2..4].copy_from_slice(&(seq as u16).to_be_bytes());
    p[8..12].copy_from_slice(&0x5eedu32.to_be_bytes());
    p[12..16].copy_from_slice(&seq.to_be_bytes());
    p
}

/// Drains what arrived; returns the sequence numbers seen.
fn drain(socket: &UdpSocket, into: &mut Vec<u32>) {
    let mut buf = [0u8; 2048];
    while let Ok(n) = socket.recv(&mut buf) {
        if n >= 16 {
            into.push(u32::from_be_bytes([buf[12], buf[13], buf[14], buf[15]]));
        }
    }
}

#[test]
fn a_flooded_stream_does_not_hurt_others_and_recovers() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let config = TableConfig {
        interfaces: vec![InterfaceSpec {
            name: "lo".into(),
            address: IpAddr::from([127, 0, 0, 1]),
            advertise: None,
            port_min: 42000,
            port_max: 42099,
        }],
        quarantine: Duration::ZERO,
        latch: LatchPolicy::default(),
        dscp: 46,
        setup_timeout: Duration::from_secs(30),
        media_timeout: Duration::from_secs(60),
        session_ttl: None,
        max_sessions: 0,
        // One worker: the quiet calls share it with the flooded one.
        workers: 1,
        offload: false,
    };
    let (core, handle) = Core::start(config, SocketOpener::default(), None).unwrap();
    let flooded = call(&rt, &handle, "flood");
    let quiet: Vec<Call> = (0..3)
        .map(|i| call(&rt, &handle, &format!("quiet{i}")))
        .collect();
    std::thread::sleep(Duration::from_millis(20));

    // Phase 1: flood one stream (bounded: 1.5 s or 1M packets) while the quiet calls send
    // 50 pps each.
    let flood_sender = flooded.caller.try_clone().unwrap();
    let flood_target = flooded.to_relay;
    let flooding = std::thread::spawn(move || {
        let start = Instant::now();
        let mut sent = 0u32;
        while start.elapsed() < Duration::from_millis(1500) && sent < 1_000_000 {
            if flood_sender.send_to(&packet(sent), flood_target).is_ok() {
                sent += 1;
            }
        }
        sent
    });
    let mut quiet_seen: Vec<Vec<u32>> = vec![Vec::new(); quiet.len()];
    let mut flood_seen = Vec::new();
    let mut seq = 0u32;
    let start = Instant::now();
    while start.elapsed() < Duration::from_millis(1500) {
        for c in &quiet {
            c.caller.send_to(&packet(seq), c.to_relay).unwrap();
        }
        seq += 1;
        std::thread::sleep(Duration::from_millis(20));
        for (c, seen) in quiet.iter().zip(&mut quiet_seen) {
            drain(&c.callee, seen);
        }
        drain(&flooded.callee, &mut flood_seen);
    }
    let flood_sent = flooding.join().unwrap();
    std::thread::sleep(Duration::from_millis(200));
    for (c, seen) in quiet.iter().zip(&mut quiet_seen) {
        drain(&c.callee, seen);
        assert_eq!(
            seen.len() as u32,
            seq,
            "a quiet call lost packets during the flood"
        );
    }
    drain(&flooded.callee, &mut flood_seen);
    assert!(!flood_seen.is_empty(), "the flooded stream kept forwarding");
    let info = rt.block_on(handle.get("flood".into())).unwrap().unwrap();
    let leg = &info.streams[0].legs[0].counters;
    eprintln!(
        "flood: sent {flood_sent}, relay received {}, forwarded {}, kernel queue drops {}",
        leg.rx_packets,
        flood_seen.len(),
        leg.dropped_overflow
    );

    // Phase 2: the flood is over; after at most a second the stream is back to zero loss.
    std::thread::sleep(Duration::from_secs(1));
    drain(&flooded.callee, &mut Vec::new());
    let mut after = Vec::new();
    for s in 0..50 {
        flooded
            .caller
            .send_to(&packet(10_000_000 + s), flooded.to_relay)
            .unwrap();
        std::thread::sleep(Duration::from_millis(20));
        drain(&flooded.callee, &mut after);
    }
    std::thread::sleep(Duration::from_millis(200));
    drain(&flooded.callee, &mut after);
    let expected: Vec<u32> = (0..50).map(|s| 10_000_000 + s).collect();
    assert_eq!(
        after, expected,
        "zero loss, in order, once the flood stopped"
    );
    drop(handle);
    core.join();
}
