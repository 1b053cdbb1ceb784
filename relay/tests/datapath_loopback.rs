//! The command core and the userspace datapath with real UDP sockets on 127.0.0.1: forwarding
//! both ways, RTCP on port + 1, NAT latching, RTP Bleed protection, delete, media timeout.

mod common;

use common::{recv, request, rtp};
use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::time::{Duration, Instant};

use sluice::control::core::{Core, CoreHandle};
use sluice::datapath::user::SocketOpener;
use sluice::session::latch::LatchPolicy;
use sluice::session::table::InterfaceSpec;
use sluice::session::{InterfaceSel, TableConfig, UpdateKind, UpdateReply, UpdateRequest};

const LOCALHOST: [u8; 4] = [127, 0, 0, 1];

fn config(port_base: u16, media_timeout: Duration) -> TableConfig {
    TableConfig {
        interfaces: vec![InterfaceSpec {
            name: "lo".into(),
            address: IpAddr::from(LOCALHOST),
            advertise: None,
            port_min: port_base,
            port_max: port_base + 199,
        }],
        quarantine: Duration::ZERO,
        latch: LatchPolicy::default(),
        dscp: 46,
        setup_timeout: Duration::from_secs(30),
        media_timeout,
        session_ttl: None,
        max_sessions: 0,
        workers: 2,
        offload: false,
    }
}

/// A port range for this test binary run that other tests are unlikely to use.
fn port_base(slot: u16) -> u16 {
    20000 + (std::process::id() % 100) as u16 * 400 + slot * 200
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

struct Endpoint {
    rtp: UdpSocket,
    rtcp: UdpSocket,
}

impl Endpoint {
    fn new() -> Endpoint {
        // RTCP must be RTP + 1 for the "RTCP on port + 1" default; retry until a pair is free.
        for _ in 0..100 {
            let rtp = UdpSocket::bind(SocketAddr::from((LOCALHOST, 0))).unwrap();
            let port = rtp.local_addr().unwrap().port();
            if port == u16::MAX {
                continue;
            }
            if let Ok(rtcp) = UdpSocket::bind(SocketAddr::from((LOCALHOST, port + 1))) {
                for s in [&rtp, &rtcp] {
                    s.set_read_timeout(Some(Duration::from_millis(500)))
                        .unwrap();
                }
                return Endpoint { rtp, rtcp };
            }
        }
        panic!("no consecutive port pair free");
    }

    fn addr(&self) -> SocketAddr {
        self.rtp.local_addr().unwrap()
    }
}

fn drain(socket: &UdpSocket) -> usize {
    socket
        .set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let mut n = 0;
    while recv(socket).is_some() {
        n += 1;
    }
    n
}

struct Call {
    offer: UpdateReply,
    answer: UpdateReply,
}

fn setup_call(
    rt: &tokio::runtime::Runtime,
    core: &CoreHandle,
    call: &str,
    caller: SocketAddr,
    callee: SocketAddr,
) -> Call {
    let offer = rt
        .block_on(core.update(request(UpdateKind::Offer, call, "ft", None, caller)))
        .unwrap();
    let answer = rt
        .block_on(core.update(request(UpdateKind::Answer, call, "tt", Some("ft"), callee)))
        .unwrap();
    Call { offer, answer }
}

fn relay_addr(port: u16) -> SocketAddr {
    SocketAddr::from((LOCALHOST, port))
}

#[test]
fn forwards_rtp_and_rtcp_both_ways_with_the_relay_as_source() {
    let rt = runtime();
    let (core, handle) = Core::start(
        config(port_base(0), Duration::from_secs(60)),
        SocketOpener::default(),
        None,
    )
    .unwrap();
    let (caller, callee) = (Endpoint::new(), Endpoint::new());
    let call = setup_call(&rt, &handle, "fwd", caller.addr(), callee.addr());
    // The caller sends to the port the answer gave it; the callee to the offer's port.
    let to_caller_leg = relay_addr(call.answer.rtp_port);
    let to_callee_leg = relay_addr(call.offer.rtp_port);

    for seq in 0..50u16 {
        caller
            .rtp
            .send_to(&rtp(0x1111, seq), to_caller_leg)
            .unwrap();
        callee
            .rtp
            .send_to(&rtp(0x2222, seq), to_callee_leg)
            .unwrap();
    }
    for seq in 0..50u16 {
        let (data, from) = recv(&callee.rtp).expect("callee receives");
        assert_eq!(data, rtp(0x1111, seq), "payload unchanged, in order");
        assert_eq!(
            from, to_callee_leg,
            "callee sees the relay's offer port as source"
        );
        let Some((data, from)) = recv(&caller.rtp) else {
            let info = rt.block_on(handle.get("fwd".into())).unwrap().unwrap();
            panic!("caller did not receive seq {seq}: {info:#?}");
        };
        assert_eq!(data, rtp(0x2222, seq));
        assert_eq!(from, to_caller_leg);
    }
    // RTCP: to the relay's port + 1, delivered to the endpoint's RTP port + 1.
    caller
        .rtcp
        .send_to(b"\x81\xc9\x00\x01rtcp", relay_addr(call.answer.rtcp_port))
        .unwrap();
    let (data, from) = recv(&callee.rtcp).expect("callee RTCP");
    assert_eq!(&data, b"\x81\xc9\x00\x01rtcp");
    assert_eq!(from, relay_addr(call.offer.rtcp_port));

    // A non-RTP payload on the RTP port (STUN here) is forwarded unchanged and counted.
    let stun = [
        0u8, 1, 0, 0, 0x21, 0x12, 0xa4, 0x42, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12,
    ];
    caller.rtp.send_to(&stun, to_caller_leg).unwrap();
    assert_eq!(recv(&callee.rtp).expect("STUN forwarded").0, stun);

    let info = rt.block_on(handle.get("fwd".into())).unwrap().unwrap();
    let legs = &info.streams[0].legs;
    assert_eq!(legs[0].counters.non_rtp, 1);
    assert_eq!(legs[0].latched_rtp, Some(caller.addr()));
    assert_eq!(legs[1].latched_rtp, Some(callee.addr()));
    assert_eq!(
        legs[0].counters.rx_packets, 52,
        "50 RTP + 1 RTCP + 1 STUN from the caller"
    );
    assert_eq!(
        legs[1].counters.tx_packets, 52,
        "all of it sent to the callee"
    );
    assert_eq!(legs[0].counters.rtp_lost, 0);
    drop(handle);
    core.join();
}

#[test]
fn natted_caller_gets_media_after_latching_and_bleed_is_dropped() {
    let rt = runtime();
    let (core, handle) = Core::start(
        config(port_base(1), Duration::from_secs(60)),
        SocketOpener::default(),
        None,
    )
    .unwrap();
    let (caller, callee, attacker) = (Endpoint::new(), Endpoint::new(), Endpoint::new());
    // The caller's SDP names an address it does not send from (private address behind NAT).
    let sdp_addr: SocketAddr = "127.0.0.1:9".parse().unwrap();
    let call = setup_call(&rt, &handle, "nat", sdp_addr, callee.addr());
    let caller_leg = relay_addr(call.answer.rtp_port);
    let callee_leg = relay_addr(call.offer.rtp_port);

    // Callee speaks first: it goes to the SDP address (lost), nothing reaches the caller.
    callee.rtp.send_to(&rtp(2, 0), callee_leg).unwrap();
    assert!(recv(&caller.rtp).is_none());
    // The caller's first packet latches its leg to the real source...
    caller.rtp.send_to(&rtp(1, 0), caller_leg).unwrap();
    assert!(recv(&callee.rtp).is_some());
    // ...and from then on the callee's media reaches it.
    callee.rtp.send_to(&rtp(2, 1), callee_leg).unwrap();
    let (_, from) = recv(&caller.rtp).expect("two-way media after latching");
    assert_eq!(from, caller_leg);

    // RTP Bleed: a third party sends to both relay ports; nothing reaches the endpoints.
    for seq in 0..20 {
        attacker.rtp.send_to(&rtp(66, seq), caller_leg).unwrap();
        attacker.rtp.send_to(&rtp(66, seq), callee_leg).unwrap();
    }
    assert_eq!(drain(&callee.rtp), 0, "no bleed to callee");
    assert_eq!(drain(&caller.rtp), 0, "no bleed to caller");
    let info = rt.block_on(handle.get("nat".into())).unwrap().unwrap();
    assert_eq!(info.streams[0].legs[0].counters.dropped_source, 20);
    assert_eq!(info.streams[0].legs[1].counters.dropped_source, 20);
    assert_eq!(info.streams[0].legs[0].latched_rtp, Some(caller.addr()));
    drop(handle);
    core.join();
}

#[test]
fn delete_stops_forwarding_and_closes_ports() {
    let rt = runtime();
    let (core, handle) = Core::start(
        config(port_base(2), Duration::from_secs(60)),
        SocketOpener::default(),
        None,
    )
    .unwrap();
    let (caller, callee) = (Endpoint::new(), Endpoint::new());
    let call = setup_call(&rt, &handle, "del", caller.addr(), callee.addr());
    let caller_leg = relay_addr(call.answer.rtp_port);
    caller.rtp.send_to(&rtp(1, 0), caller_leg).unwrap();
    assert!(recv(&callee.rtp).is_some());
    rt.block_on(handle.delete("del".into(), None, None, None))
        .unwrap();
    assert!(rt.block_on(handle.get("del".into())).unwrap().is_none());
    // The worker closes the sockets shortly after; then the port can be bound again.
    let deadline = Instant::now() + Duration::from_secs(2);
    while UdpSocket::bind(caller_leg).is_err() {
        assert!(
            Instant::now() < deadline,
            "relay port still open after delete"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    caller.rtp.send_to(&rtp(1, 1), caller_leg).unwrap();
    assert_eq!(drain(&callee.rtp), 0);
    drop(handle);
    core.join();
}

#[test]
fn media_timeout_ends_a_silent_session() {
    let rt = runtime();
    let (core, handle) = Core::start(
        config(port_base(3), Duration::from_secs(1)),
        SocketOpener::default(),
        None,
    )
    .unwrap();
    let mut events = handle.subscribe();
    let (caller, callee) = (Endpoint::new(), Endpoint::new());
    let call = setup_call(&rt, &handle, "quiet", caller.addr(), callee.addr());
    let caller_leg = relay_addr(call.answer.rtp_port);
    // Media for ~1.5 s keeps it alive past the 1 s timeout...
    for seq in 0..15 {
        caller.rtp.send_to(&rtp(1, seq), caller_leg).unwrap();
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(rt.block_on(handle.get("quiet".into())).unwrap().is_some());
    // ...then silence ends it.
    std::thread::sleep(Duration::from_millis(1500));
    assert!(rt.block_on(handle.get("quiet".into())).unwrap().is_none());
    let ended = rt.block_on(async {
        loop {
            match events.recv().await {
                Ok(sluice::session::SessionEvent::Ended { reason, .. }) => break reason,
                Ok(_) => {}
                Err(e) => panic!("{e}"),
            }
        }
    });
    assert_eq!(ended, sluice::session::EndReason::MediaTimeout);
    drop(handle);
    core.join();
}

fn ep_v6() -> (UdpSocket, SocketAddr) {
    let s = UdpSocket::bind("[::1]:0").unwrap();
    s.set_read_timeout(Some(Duration::from_millis(500)))
        .unwrap();
    let a = s.local_addr().unwrap();
    (s, a)
}

#[test]
fn bridges_an_ipv4_caller_to_an_ipv6_callee() {
    let rt = runtime();
    let base = port_base(4);
    let mut cfg = config(base, Duration::from_secs(60));
    cfg.interfaces.push(InterfaceSpec {
        name: "v6".into(),
        address: "::1".parse().unwrap(),
        advertise: None,
        port_min: base + 100,
        port_max: base + 199,
    });
    cfg.interfaces[0].port_max = base + 99;
    let (core, handle) = Core::start(cfg, SocketOpener::default(), None).unwrap();
    let caller = Endpoint::new();
    let (callee, callee_addr) = ep_v6();
    // The callee-facing leg goes on the IPv6 interface, the caller-facing one on IPv4.
    let offer = rt
        .block_on(handle.update(UpdateRequest {
            interface: InterfaceSel::Named("v6".into()),
            ..request(UpdateKind::Offer, "br", "ft", None, caller.addr())
        }))
        .unwrap();
    assert!(offer.address.is_ipv6());
    let answer = rt
        .block_on(handle.update(UpdateRequest {
            interface: InterfaceSel::Named("lo".into()),
            ..request(UpdateKind::Answer, "br", "tt", Some("ft"), callee_addr)
        }))
        .unwrap();
    assert!(answer.address.is_ipv4());
    caller
        .rtp
        .send_to(&rtp(1, 0), relay_addr(answer.rtp_port))
        .unwrap();
    let (data, from) = recv(&callee).expect("IPv6 callee receives");
    assert_eq!(data, rtp(1, 0));
    assert_eq!(from, SocketAddr::new(offer.address, offer.rtp_port));
    callee
        .send_to(&rtp(2, 0), SocketAddr::new(offer.address, offer.rtp_port))
        .unwrap();
    let (data, from) = recv(&caller.rtp).expect("IPv4 caller receives");
    assert_eq!(data, rtp(2, 0));
    assert_eq!(from, relay_addr(answer.rtp_port));
    drop(handle);
    core.join();
}
