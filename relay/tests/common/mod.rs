//! Helpers shared by the loopback test binaries.
#![allow(dead_code)] // each test binary uses a subset

use std::net::{SocketAddr, UdpSocket};

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
