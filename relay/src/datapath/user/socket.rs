//! Media sockets: one UDP socket for RTP (even port) and one for RTCP (port + 1) per leg,
//! non-blocking, with DSCP set, and without SO_REUSEADDR so a port held by another program is
//! reported (the allocator then tries another pair).

use std::io;
use std::net::{IpAddr, SocketAddr, UdpSocket};

use socket2::{Domain, Protocol, Socket, Type};

use crate::ports::PortPair;
use crate::session::LegOpener;

/// The two sockets of a leg, index 0 = RTP, 1 = RTCP.
#[derive(Debug)]
pub struct LegSockets {
    pub rtp: UdpSocket,
    pub rtcp: UdpSocket,
}

/// Opens [`LegSockets`] for the session table.
#[derive(Debug, Clone, Copy)]
pub struct SocketOpener {
    /// SO_RCVBUF per socket in bytes; 0 = kernel default. Absorbs bursts while a worker is busy.
    pub recv_buffer: usize,
}

impl Default for SocketOpener {
    fn default() -> Self {
        // rtpproxy uses 256 KiB per socket for the same reason.
        SocketOpener {
            recv_buffer: 256 * 1024,
        }
    }
}

impl LegOpener for SocketOpener {
    type Sockets = LegSockets;

    fn open(&mut self, local: IpAddr, pair: PortPair, dscp: u8) -> io::Result<LegSockets> {
        let rtp = bind(SocketAddr::new(local, pair.rtp), dscp, self.recv_buffer)?;
        let rtcp = bind(SocketAddr::new(local, pair.rtcp()), dscp, self.recv_buffer)?;
        Ok(LegSockets { rtp, rtcp })
    }
}

fn bind(addr: SocketAddr, dscp: u8, recv_buffer: usize) -> io::Result<UdpSocket> {
    let socket = Socket::new(
        Domain::for_address(addr),
        Type::DGRAM.nonblocking().cloexec(),
        Some(Protocol::UDP),
    )?;
    // DSCP is the upper six bits of the TOS / traffic class byte.
    let tos = u32::from(dscp & 0x3f) << 2;
    if addr.is_ipv6() {
        socket.set_only_v6(true)?;
        socket.set_tclass_v6(tos)?;
    } else {
        socket.set_tos_v4(tos)?;
    }
    if recv_buffer > 0 {
        // Best effort: capped by net.core.rmem_max; a smaller buffer still works.
        let _ = socket.set_recv_buffer_size(recv_buffer);
    }
    socket.bind(&addr.into())?;
    Ok(socket.into())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsRawFd;

    #[test]
    fn opens_a_pair_with_dscp_and_reports_taken_ports() {
        let probe = UdpSocket::bind("127.0.0.1:0").unwrap();
        let base = probe.local_addr().unwrap().port();
        drop(probe);
        let even = base & !1;
        let mut opener = SocketOpener::default();
        let pair = PortPair { rtp: even };
        let sockets = match opener.open("127.0.0.1".parse().unwrap(), pair, 46) {
            Ok(s) => s,
            Err(e) if e.kind() == io::ErrorKind::AddrInUse => return, // raced another test
            Err(e) => panic!("{e}"),
        };
        assert_eq!(sockets.rtp.local_addr().unwrap().port(), even);
        assert_eq!(sockets.rtcp.local_addr().unwrap().port(), even + 1);
        let mut tos: libc::c_int = 0;
        let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
        // SAFETY: valid fd and out-pointers sized for an int option.
        let rc = unsafe {
            libc::getsockopt(
                sockets.rtp.as_raw_fd(),
                libc::IPPROTO_IP,
                libc::IP_TOS,
                (&raw mut tos).cast(),
                &mut len,
            )
        };
        assert_eq!(rc, 0);
        assert_eq!(tos, 46 << 2, "EF");
        let again = opener.open("127.0.0.1".parse().unwrap(), pair, 46);
        assert_eq!(again.unwrap_err().kind(), io::ErrorKind::AddrInUse);
    }
}
