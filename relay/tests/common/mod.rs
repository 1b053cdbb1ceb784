//! Helpers shared by the loopback test binaries.
#![allow(dead_code)] // each test binary uses a subset

use std::net::{SocketAddr, UdpSocket};
use std::time::Duration;

use sluice::config::Config;
use sluice::daemon::Daemon;

use sluice::session::{InterfaceSel, LegOptions, UpdateKind, UpdateRequest};

/// An offer (`to` None) or answer for m-line 1, with default options.
pub fn request(
    kind: UpdateKind,
    call: &str,
    from: &str,
    to: Option<&str>,
    remote: SocketAddr,
) -> UpdateRequest {
    UpdateRequest {
        kind,
        call_id: call.into(),
        from_tag: from.into(),
        to_tag: to.map(Into::into),
        media_index: 1,
        remote: Some(remote),
        remote_rtcp: None,
        ipv6: false,
        interface: InterfaceSel::Auto,
        options: LegOptions::default(),
        notify: None,
        session: Default::default(),
    }
}

/// A G.711-sized RTP packet (PT 0, 160-byte payload) with the given SSRC and sequence number.
pub fn rtp(ssrc: u32, seq: u16) -> Vec<u8> {
    let mut p = vec![0u8; 172];
    p[0] = 0x80;
    p[2..4].copy_from_slice(&seq.to_be_bytes());
    p[4..8].copy_from_slice(&(u32::from(seq) * 160).to_be_bytes());
    p[8..12].copy_from_slice(&ssrc.to_be_bytes());
    p
}

/// One datagram and its source, or None when the socket's read timeout expires.
pub fn recv(socket: &UdpSocket) -> Option<(Vec<u8>, SocketAddr)> {
    let mut buf = [0u8; 2048];
    socket
        .recv_from(&mut buf)
        .ok()
        .map(|(n, a)| (buf[..n].to_vec(), a))
}

/// A daemon on 127.0.0.1 (media ports `port_min..=port_max`, quarantine 0, control listeners
/// on ephemeral ports) with `extra` TOML appended, and the runtime it runs on.
pub fn start_daemon(
    port_min: u16,
    port_max: u16,
    extra: &str,
) -> (tokio::runtime::Runtime, Daemon) {
    let toml = format!(
        "[log]\nlevel = \"warn\"\n\
         [media]\nport_min = {port_min}\nport_max = {port_max}\nquarantine = \"0s\"\nworkers = 2\n\
         [[media.interface]]\nname = \"lo\"\naddress = \"127.0.0.1\"\n\
         [grpc]\nlisten = \"127.0.0.1:0\"\n[metrics]\nlisten = \"127.0.0.1:0\"\n{extra}"
    );
    let mut config = Config::from_toml(&toml, "test").expect("test config");
    // Unless `extra` chose listeners, use an ephemeral UDP port instead of the default 22222.
    if config.rtpproxy.listen == Config::default().rtpproxy.listen {
        config.rtpproxy.listen = vec!["udp:127.0.0.1:0".parse().expect("valid spec")];
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let daemon = rt.block_on(Daemon::start(&config)).expect("daemon starts");
    (rt, daemon)
}

/// A UDP socket for rtpproxy commands, with a 2 s read timeout.
pub fn control_socket() -> UdpSocket {
    let control = UdpSocket::bind("127.0.0.1:0").expect("bind");
    control
        .set_read_timeout(Some(Duration::from_secs(2)))
        .expect("timeout");
    control
}

/// RFC 1071 sum of big-endian 16-bit words (an odd last byte padded with zero), written from
/// scratch so the XDP tests check the program's checksums independently of
/// `sluice_common::csum`.
pub fn sum16(bytes: &[u8]) -> u64 {
    bytes
        .chunks(2)
        .map(|c| u64::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)])))
        .sum()
}

/// Folds a sum to 16 bits with end-around carry.
pub fn fold(mut s: u64) -> u16 {
    while s > 0xffff {
        s = (s & 0xffff) + (s >> 16);
    }
    s as u16
}

/// This process's thread names (the daemons under test run in it).
pub fn thread_names() -> Vec<String> {
    std::fs::read_dir("/proc/self/task")
        .unwrap()
        .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("comm")).ok())
        .map(|n| n.trim_end().to_owned())
        .collect()
}
