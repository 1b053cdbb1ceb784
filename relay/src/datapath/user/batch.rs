//! Batched UDP I/O with recvmmsg(2)/sendmmsg(2). Buffers are allocated once per worker; a
//! received datagram is forwarded straight from its receive buffer (no copy).

use std::io;
use std::mem::{MaybeUninit, size_of};
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};
use std::os::fd::RawFd;

/// Datagrams per system call.
pub const BATCH: usize = 32;
/// Largest datagram forwarded: a jumbo frame's UDP payload. Larger ones are truncated by the
/// kernel (MSG_TRUNC), counted and dropped.
pub const MAX_DATAGRAM: usize = 9216;

pub struct Batch {
    bufs: Vec<[u8; MAX_DATAGRAM]>,
    lens: [usize; BATCH],
    truncated: [bool; BATCH],
    sources: [Option<SocketAddr>; BATCH],
    // Scratch space the kernel writes into / reads from; rebuilt per call since it holds
    // pointers into `bufs` (the struct itself may move).
    names: [libc::sockaddr_storage; BATCH],
    iovs: [libc::iovec; BATCH],
    hdrs: [libc::mmsghdr; BATCH],
}

impl Batch {
    pub fn new() -> Box<Batch> {
        // SAFETY: all-zero is a valid value for these plain C structs (null pointers, zero
        // lengths); they are fully rewritten before every system call.
        let zeroed = |_| unsafe { MaybeUninit::<libc::sockaddr_storage>::zeroed().assume_init() };
        Box::new(Batch {
            bufs: vec![[0u8; MAX_DATAGRAM]; BATCH],
            lens: [0; BATCH],
            truncated: [false; BATCH],
            sources: [None; BATCH],
            names: std::array::from_fn(zeroed),
            iovs: std::array::from_fn(|_| libc::iovec {
                iov_base: std::ptr::null_mut(),
                iov_len: 0,
            }),
            // SAFETY: as above.
            hdrs: std::array::from_fn(|_| unsafe {
                MaybeUninit::<libc::mmsghdr>::zeroed().assume_init()
            }),
        })
    }

    /// Receives up to [`BATCH`] datagrams without blocking. `Ok(0)` never happens for UDP;
    /// `WouldBlock` means the socket is drained.
    pub fn recv(&mut self, fd: RawFd) -> io::Result<usize> {
        for i in 0..BATCH {
            self.iovs[i] = libc::iovec {
                iov_base: self.bufs[i].as_mut_ptr().cast(),
                iov_len: MAX_DATAGRAM,
            };
            let hdr = &mut self.hdrs[i].msg_hdr;
            hdr.msg_name = (&raw mut self.names[i]).cast();
            hdr.msg_namelen = size_of::<libc::sockaddr_storage>() as libc::socklen_t;
            hdr.msg_iov = &raw mut self.iovs[i];
            hdr.msg_iovlen = 1;
            hdr.msg_control = std::ptr::null_mut();
            hdr.msg_controllen = 0;
            hdr.msg_flags = 0;
            self.hdrs[i].msg_len = 0;
        }
        // SAFETY: every header points at live buffers of the advertised sizes, owned by self.
        let n = unsafe {
            libc::recvmmsg(
                fd,
                self.hdrs.as_mut_ptr(),
                BATCH as libc::c_uint,
                libc::MSG_DONTWAIT,
                std::ptr::null_mut(),
            )
        };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        let n = n as usize;
        for i in 0..n {
            let hdr = &self.hdrs[i];
            self.lens[i] = (hdr.msg_len as usize).min(MAX_DATAGRAM);
            self.truncated[i] = hdr.msg_hdr.msg_flags & libc::MSG_TRUNC != 0;
            self.sources[i] = from_sockaddr(&self.names[i]);
        }
        Ok(n)
    }

    /// Datagram `i` of the last [`Batch::recv`]: bytes, source, truncated flag.
    pub fn datagram(&self, i: usize) -> (&[u8], Option<SocketAddr>, bool) {
        (
            &self.bufs[i][..self.lens[i]],
            self.sources[i],
            self.truncated[i],
        )
    }

    /// Sends received datagrams `items[k].0` to `items[k].1` from `fd`. Returns how many were
    /// sent; the rest failed (full socket buffer, unreachable) and are the caller's to count.
    pub fn send(&mut self, fd: RawFd, items: &[(usize, SocketAddr)]) -> usize {
        let (mut next, mut ok) = (0, 0);
        while next < items.len() {
            let count = (items.len() - next).min(BATCH);
            for (k, &(i, dest)) in items[next..next + count].iter().enumerate() {
                let namelen = to_sockaddr(dest, &mut self.names[k]);
                self.iovs[k] = libc::iovec {
                    iov_base: self.bufs[i].as_mut_ptr().cast(),
                    iov_len: self.lens[i],
                };
                let hdr = &mut self.hdrs[k].msg_hdr;
                hdr.msg_name = (&raw mut self.names[k]).cast();
                hdr.msg_namelen = namelen;
                hdr.msg_iov = &raw mut self.iovs[k];
                hdr.msg_iovlen = 1;
                hdr.msg_control = std::ptr::null_mut();
                hdr.msg_controllen = 0;
                hdr.msg_flags = 0;
            }
            // SAFETY: headers 0..count point at live buffers and addresses owned by self.
            let n = unsafe {
                libc::sendmmsg(
                    fd,
                    self.hdrs.as_mut_ptr(),
                    count as libc::c_uint,
                    libc::MSG_DONTWAIT,
                )
            };
            if n < 0 {
                if io::Error::last_os_error().kind() != io::ErrorKind::Interrupted {
                    // The first datagram failed (sendmmsg reports an error only when nothing
                    // was sent): skip it so one bad destination does not block the rest.
                    next += 1;
                }
                continue;
            }
            if n == 0 {
                // Cannot happen for count > 0; must not spin if it did.
                next += 1;
                continue;
            }
            ok += n as usize;
            next += n as usize;
        }
        ok
    }
}

fn from_sockaddr(storage: &libc::sockaddr_storage) -> Option<SocketAddr> {
    match libc::c_int::from(storage.ss_family) {
        libc::AF_INET => {
            // SAFETY: ss_family says the storage holds a sockaddr_in, which it is large
            // enough for and aligned for.
            let sin =
                unsafe { &*(storage as *const libc::sockaddr_storage).cast::<libc::sockaddr_in>() };
            Some(SocketAddr::V4(SocketAddrV4::new(
                Ipv4Addr::from(u32::from_be(sin.sin_addr.s_addr)),
                u16::from_be(sin.sin_port),
            )))
        }
        libc::AF_INET6 => {
            // SAFETY: as above, for sockaddr_in6.
            let sin6 = unsafe {
                &*(storage as *const libc::sockaddr_storage).cast::<libc::sockaddr_in6>()
            };
            Some(SocketAddr::V6(SocketAddrV6::new(
                Ipv6Addr::from(sin6.sin6_addr.s6_addr),
                u16::from_be(sin6.sin6_port),
                sin6.sin6_flowinfo,
                sin6.sin6_scope_id,
            )))
        }
        _ => None,
    }
}

fn to_sockaddr(addr: SocketAddr, storage: &mut libc::sockaddr_storage) -> libc::socklen_t {
    match addr {
        SocketAddr::V4(a) => {
            // SAFETY: sockaddr_storage is large and aligned enough for sockaddr_in.
            let sin = unsafe {
                &mut *(storage as *mut libc::sockaddr_storage).cast::<libc::sockaddr_in>()
            };
            sin.sin_family = libc::AF_INET as libc::sa_family_t;
            sin.sin_port = a.port().to_be();
            sin.sin_addr = libc::in_addr {
                s_addr: u32::from(*a.ip()).to_be(),
            };
            sin.sin_zero = [0; 8];
            size_of::<libc::sockaddr_in>() as libc::socklen_t
        }
        SocketAddr::V6(a) => {
            // SAFETY: as above, for sockaddr_in6.
            let sin6 = unsafe {
                &mut *(storage as *mut libc::sockaddr_storage).cast::<libc::sockaddr_in6>()
            };
            sin6.sin6_family = libc::AF_INET6 as libc::sa_family_t;
            sin6.sin6_port = a.port().to_be();
            sin6.sin6_flowinfo = a.flowinfo();
            sin6.sin6_addr = libc::in6_addr {
                s6_addr: a.ip().octets(),
            };
            sin6.sin6_scope_id = a.scope_id();
            size_of::<libc::sockaddr_in6>() as libc::socklen_t
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::UdpSocket;
    use std::os::fd::AsRawFd;

    #[test]
    fn receives_a_batch_and_forwards_it_unchanged() {
        let rx = UdpSocket::bind("127.0.0.1:0").unwrap();
        rx.set_nonblocking(true).unwrap();
        let out = UdpSocket::bind("127.0.0.1:0").unwrap();
        let sink = UdpSocket::bind("127.0.0.1:0").unwrap();
        let sender = UdpSocket::bind("127.0.0.1:0").unwrap();
        for i in 0..40u8 {
            sender.send_to(&[i; 100], rx.local_addr().unwrap()).unwrap();
        }
        let mut batch = Batch::new();
        let n = batch.recv(rx.as_raw_fd()).unwrap();
        assert_eq!(n, BATCH);
        let (data, src, truncated) = batch.datagram(3);
        assert_eq!(data, &[3u8; 100]);
        assert_eq!(src, Some(sender.local_addr().unwrap()));
        assert!(!truncated);
        let items: Vec<(usize, SocketAddr)> =
            (0..n).map(|i| (i, sink.local_addr().unwrap())).collect();
        assert_eq!(batch.send(out.as_raw_fd(), &items), n);
        let mut buf = [0u8; 200];
        for i in 0..n {
            let (len, from) = sink.recv_from(&mut buf).unwrap();
            assert_eq!(&buf[..len], &[i as u8; 100]);
            assert_eq!(from, out.local_addr().unwrap());
        }
        assert_eq!(batch.recv(rx.as_raw_fd()).unwrap(), 8);
        assert_eq!(
            batch.recv(rx.as_raw_fd()).unwrap_err().kind(),
            io::ErrorKind::WouldBlock
        );
    }

    #[test]
    fn oversized_datagrams_are_flagged() {
        let rx = UdpSocket::bind("127.0.0.1:0").unwrap();
        rx.set_nonblocking(true).unwrap();
        let sender = UdpSocket::bind("127.0.0.1:0").unwrap();
        sender
            .send_to(&vec![7u8; MAX_DATAGRAM + 100], rx.local_addr().unwrap())
            .unwrap();
        let mut batch = Batch::new();
        assert_eq!(batch.recv(rx.as_raw_fd()).unwrap(), 1);
        assert!(batch.datagram(0).2);
    }

    #[test]
    fn ipv6_addresses_round_trip() {
        let addr: SocketAddr = "[2001:2::5]:4000".parse().unwrap();
        let mut storage = unsafe { MaybeUninit::<libc::sockaddr_storage>::zeroed().assume_init() };
        to_sockaddr(addr, &mut storage);
        assert_eq!(from_sockaddr(&storage), Some(addr));
        let v4: SocketAddr = "198.18.1.2:30000".parse().unwrap();
        to_sockaddr(v4, &mut storage);
        assert_eq!(from_sockaddr(&storage), Some(v4));
    }

    #[test]
    fn a_failing_destination_does_not_block_the_rest() {
        let out = UdpSocket::bind("127.0.0.1:0").unwrap();
        let sink = UdpSocket::bind("127.0.0.1:0").unwrap();
        sink.set_read_timeout(Some(std::time::Duration::from_secs(2)))
            .unwrap();
        let rx = UdpSocket::bind("127.0.0.1:0").unwrap();
        rx.set_nonblocking(true).unwrap();
        let sender = UdpSocket::bind("127.0.0.1:0").unwrap();
        for i in 0..3u8 {
            sender.send_to(&[i; 10], rx.local_addr().unwrap()).unwrap();
        }
        let mut batch = Batch::new();
        assert_eq!(batch.recv(rx.as_raw_fd()).unwrap(), 3);
        // An IPv6 destination from an IPv4 socket fails (EAFNOSUPPORT).
        let bad: SocketAddr = "[::1]:9".parse().unwrap();
        let good = sink.local_addr().unwrap();
        let sent = batch.send(out.as_raw_fd(), &[(0, bad), (1, good), (2, good)]);
        assert_eq!(sent, 2);
        let mut buf = [0u8; 16];
        assert_eq!(sink.recv(&mut buf).unwrap(), 10);
        assert_eq!(buf[0], 1);
    }
}
