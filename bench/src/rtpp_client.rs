//! rtpproxy control protocol client over UDP (the datagram mode Kamailio and OpenSIPS use).
//!
//! Every request is `<cookie> <command>\n` with a unique cookie `<random>_<seq>` (Kamailio's
//! `gencookie` format); the reply is `<cookie> <result>\n`. [`Pipeline`] (the shared
//! [`crate::pipeline`] core) keeps many requests in flight on one connected socket
//! (sendmmsg/recvmmsg), matches replies by cookie, and retransmits a request with the same
//! cookie after a timeout (Kamailio: 1 s, 5 tries), counting retries. [`Pipeline::call`] is the
//! one-at-a-time form.
//!
//! Replies ([`parse_reply`]): `port addr` / `port addr 6` / `port` for U and L, `0` for a
//! successful D (and for L on an unknown session), `E<n>` for errors, anything else as text
//! (`20040107` for V).

use std::io;
use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::os::fd::AsRawFd;
use std::time::Duration;

use crate::clock::now_ns;
use crate::pipeline::{self, Wire};
use crate::sys;

pub use crate::pipeline::PipelineStats;

/// The base protocol version `V` returns.
pub const PROTOCOL_VERSION: &str = "20040107";

/// The result part of a reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReplyBody {
    /// `E<n>`.
    Error(u32),
    /// A number that fits a port (`0` included), with the address when one follows.
    Port { port: u16, addr: Option<IpAddr> },
    /// Anything else (`V` -> `20040107`, `Q` statistics, ...).
    Text(String),
}

impl ReplyBody {
    /// The media address of a U/L reply; port 0 (L on an unknown session) is an error here.
    /// `default_ip` is used when the relay answers a bare port (wildcard bind).
    pub fn media_addr(&self, default_ip: IpAddr) -> Result<SocketAddr, ReplyError> {
        match self {
            ReplyBody::Port { port: 0, .. } => Err(ReplyError::PortZero),
            ReplyBody::Port { port, addr } => {
                Ok(SocketAddr::new(addr.unwrap_or(default_ip), *port))
            }
            ReplyBody::Error(code) => Err(ReplyError::Code(*code)),
            ReplyBody::Text(t) => Err(ReplyError::Unexpected(t.clone())),
        }
    }

    /// A D reply: `0` is success.
    pub fn delete_ok(&self) -> Result<(), ReplyError> {
        match self {
            ReplyBody::Port {
                port: 0,
                addr: None,
            } => Ok(()),
            ReplyBody::Error(code) => Err(ReplyError::Code(*code)),
            other => Err(ReplyError::Unexpected(format!("{other:?}"))),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReplyError {
    #[error("relay answered E{0}")]
    Code(u32),
    #[error("relay answered port 0 (session not found)")]
    PortZero,
    #[error("unexpected reply {0:?}")]
    Unexpected(String),
    #[error("no reply after {tries} tries")]
    Timeout { tries: u32 },
}

impl ReplyError {
    /// A short label for error counters: `E50`, `port0`, `timeout`, `unexpected`.
    pub fn label(&self) -> String {
        match self {
            ReplyError::Code(c) => format!("E{c}"),
            ReplyError::PortZero => "port0".into(),
            ReplyError::Unexpected(_) => "unexpected".into(),
            ReplyError::Timeout { .. } => "timeout".into(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    #[error("empty reply")]
    Empty,
    #[error("reply has no result after the cookie")]
    NoBody,
    #[error("reply is not UTF-8")]
    NotUtf8,
}

/// Splits a datagram reply into cookie and body (a trailing newline is optional).
pub fn parse_reply(datagram: &[u8]) -> Result<(&str, ReplyBody), ParseError> {
    let text = std::str::from_utf8(datagram).map_err(|_| ParseError::NotUtf8)?;
    let text = text.trim_end_matches(['\n', '\r']);
    let (cookie, rest) = match text.split_once(' ') {
        Some((c, r)) => (c, r),
        None if text.is_empty() => return Err(ParseError::Empty),
        None => return Err(ParseError::NoBody),
    };
    if cookie.is_empty() {
        return Err(ParseError::Empty);
    }
    Ok((cookie, parse_body(rest)))
}

/// Parses the result part of a reply (stream modes have no cookie).
pub fn parse_body(body: &str) -> ReplyBody {
    let body = body.trim();
    let mut words = body.split_ascii_whitespace();
    let Some(first) = words.next() else {
        return ReplyBody::Text(String::new());
    };
    if let Some(code) = first.strip_prefix('E')
        && !code.is_empty()
        && code.bytes().all(|b| b.is_ascii_digit())
        && let Ok(n) = code.parse()
        && words.next().is_none()
    {
        return ReplyBody::Error(n);
    }
    if first.bytes().all(|b| b.is_ascii_digit())
        && let Ok(port) = first.parse::<u16>()
    {
        let addr = match words.next() {
            None => return ReplyBody::Port { port, addr: None },
            Some(a) => a.parse::<IpAddr>().ok(),
        };
        let tail: Vec<&str> = words.collect();
        let ok_tail = tail.is_empty() || (tail.len() == 1 && tail[0] == "6");
        if let Some(addr) = addr
            && ok_tail
            && addr.is_ipv6() == (tail.len() == 1)
        {
            return ReplyBody::Port {
                port,
                addr: Some(addr),
            };
        }
    }
    ReplyBody::Text(body.to_owned())
}

/// Command text builders, in the shape Kamailio sends (see the module docs of the scenarios).
pub mod cmd {
    use std::net::IpAddr;

    /// Offer: `Uc0,8 CALLID IP PORT FROMTAG;1`.
    pub fn offer(call_id: &str, ip: IpAddr, port: u16, from_tag: &str) -> String {
        let six = if ip.is_ipv6() { "6" } else { "" };
        format!("U{six}c0,8 {call_id} {ip} {port} {from_tag};1")
    }

    /// Answer: `Lc0 CALLID IP PORT FROMTAG;1 TOTAG;1` (the address is the callee's).
    pub fn answer(call_id: &str, ip: IpAddr, port: u16, from_tag: &str, to_tag: &str) -> String {
        let six = if ip.is_ipv6() { "6" } else { "" };
        format!("L{six}c0 {call_id} {ip} {port} {from_tag};1 {to_tag};1")
    }

    /// Delete: `D CALLID FROMTAG TOTAG`.
    pub fn delete(call_id: &str, from_tag: &str, to_tag: &str) -> String {
        format!("D {call_id} {from_tag} {to_tag}")
    }
}

/// A random-enough 32-bit number for cookies and SSRCs (no RNG crate needed).
pub fn random_u32() -> u32 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(now_ns());
    h.write_u32(std::process::id());
    h.finish() as u32
}

/// The rtpproxy protocol's side of the shared [`pipeline::Pipeline`]: a command line after
/// the cookie, replies read in recvmmsg batches (they are short).
pub struct RtppWire;

/// Datagrams read per recvmmsg.
const RECV_BATCH: usize = 64;

impl Wire for RtppWire {
    type Request<'a> = str;
    type Reply = ReplyBody;
    type Error = ReplyError;
    type Rx = sys::RecvBatch;

    fn new_rx() -> sys::RecvBatch {
        sys::RecvBatch::new(RECV_BATCH)
    }

    fn body_len_hint(command: &str) -> usize {
        command.len()
    }

    fn encode(command: &str, datagram: &mut Vec<u8>) {
        datagram.extend_from_slice(command.as_bytes());
        datagram.push(b'\n');
    }

    fn parse(datagram: &[u8]) -> Option<(&str, Result<ReplyBody, ReplyError>)> {
        let (cookie, body) = parse_reply(datagram).ok()?;
        let result = match body {
            ReplyBody::Error(c) => Err(ReplyError::Code(c)),
            other => Ok(other),
        };
        Some((cookie, result))
    }

    fn timeout(tries: u32) -> ReplyError {
        ReplyError::Timeout { tries }
    }

    fn receive(
        rx: &mut sys::RecvBatch,
        sock: &UdpSocket,
        _in_flight: usize,
        mut on_reply: impl FnMut(&[u8], u64),
    ) -> io::Result<()> {
        let fd = sock.as_raw_fd();
        loop {
            let n = match rx.recv(fd) {
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => 0,
                Err(e) => return Err(e),
            };
            let at = now_ns();
            for i in 0..n {
                on_reply(rx.get(i), at);
            }
            // A short batch means the socket is drained.
            if n < RECV_BATCH {
                return Ok(());
            }
        }
    }
}

/// Many rtpproxy requests in flight on one UDP socket.
pub type Pipeline = pipeline::Pipeline<RtppWire>;

/// How an rtpproxy request ended.
pub type Completion = pipeline::Completion<ReplyBody, ReplyError>;

/// Asks `V` with one short try; true when the relay answers the rtpproxy base version.
pub fn probe_version(relay: SocketAddr, timeout: Duration) -> bool {
    let Ok(mut p) = Pipeline::connect(relay, timeout, 1) else {
        return false;
    };
    matches!(p.call("V"), Ok(Completion { result: Ok(ReplyBody::Text(ref t)), .. }) if t == PROTOCOL_VERSION)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pipeline::testing::{FakeRelay, call_unanswered, complete};
    use std::net::{Ipv4Addr, Ipv6Addr};

    fn v4(a: u8, b: u8, c: u8, d: u8) -> Option<IpAddr> {
        Some(IpAddr::V4(Ipv4Addr::new(a, b, c, d)))
    }

    #[test]
    fn recorded_kamailio_replies() {
        // Captured from Kamailio <-> rtpproxy.
        let (c, b) = parse_reply(b"1804289383_1 38802 198.18.1.1\n").unwrap();
        assert_eq!(c, "1804289383_1");
        assert_eq!(
            b,
            ReplyBody::Port {
                port: 38802,
                addr: v4(198, 18, 1, 1)
            }
        );
        let (_, b) = parse_reply(b"COOKIE 38442 198.18.1.1\n").unwrap();
        assert_eq!(
            b.media_addr(IpAddr::V4(Ipv4Addr::LOCALHOST)).unwrap(),
            "198.18.1.1:38442".parse().unwrap()
        );
        let (c, b) = parse_reply(b"COOKIE 0\n").unwrap();
        assert_eq!(c, "COOKIE");
        assert_eq!(b.delete_ok(), Ok(()));
        assert_eq!(
            b.media_addr(IpAddr::V4(Ipv4Addr::LOCALHOST)),
            Err(ReplyError::PortZero)
        );
    }

    /// Recorded from Sluice (this repository's relay, userspace, quarantine 0) answering the
    /// commands `cmd` builds, with an IPv4 interface and, for the `6` ones, also ::1.
    #[test]
    fn recorded_sluice_replies() {
        let lo = IpAddr::V4(Ipv4Addr::LOCALHOST);
        let body = |datagram: &[u8]| parse_reply(datagram).unwrap().1;
        // V and VF.
        let (c, b) = parse_reply(b"1804289383_0 20040107\n").unwrap();
        assert_eq!(c, "1804289383_0");
        assert_eq!(b, ReplyBody::Text(PROTOCOL_VERSION.into()));
        assert_eq!(
            body(b"1804289383_1 1\n"),
            ReplyBody::Port {
                port: 1,
                addr: None
            }
        );
        // Uc0,8 rec-1 127.0.0.1 40000 ft1;1 / Lc0 ... tt1;1 / D rec-1 ft1 tt1.
        let u = body(b"1804289383_2 37768 127.0.0.1\n");
        assert_eq!(
            u.media_addr(lo).unwrap(),
            "127.0.0.1:37768".parse().unwrap()
        );
        let l = body(b"1804289383_3 37856 127.0.0.1\n");
        assert_eq!(
            l.media_addr(lo).unwrap(),
            "127.0.0.1:37856".parse().unwrap()
        );
        assert_eq!(body(b"1804289383_4 0\n").delete_ok(), Ok(()));
        // L for an unknown call: port 0; D for an unknown call: E50.
        assert_eq!(
            body(b"1804289383_5 0\n").media_addr(lo),
            Err(ReplyError::PortZero)
        );
        assert_eq!(
            body(b"1804289383_6 E50\n").delete_ok(),
            Err(ReplyError::Code(50))
        );
        // U6 on a relay without an IPv6 interface: E36; with ::1, the `6` form.
        assert_eq!(body(b"1804289383_7 E36\n"), ReplyBody::Error(36));
        let u6 = body(b"1804289383_0 37008 ::1 6\n");
        assert_eq!(u6.media_addr(lo).unwrap(), "[::1]:37008".parse().unwrap());
        // X (delete all): 0; an unknown command: E0.
        assert_eq!(body(b"1804289383_8 0\n").delete_ok(), Ok(()));
        assert_eq!(body(b"1804289383_9 E0\n"), ReplyBody::Error(0));
    }

    #[test]
    fn error_replies() {
        let (c, b) = parse_reply(b"42_7 E50\n").unwrap();
        assert_eq!(c, "42_7");
        assert_eq!(b, ReplyBody::Error(50));
        assert_eq!(b.delete_ok(), Err(ReplyError::Code(50)));
        assert_eq!(ReplyError::Code(50).label(), "E50");
        assert_eq!(parse_reply(b"x E0").unwrap().1, ReplyBody::Error(0));
        assert_eq!(parse_reply(b"x E71\r\n").unwrap().1, ReplyBody::Error(71));
        // Not errors: no digits, or trailing words.
        assert_eq!(
            parse_reply(b"x E\n").unwrap().1,
            ReplyBody::Text("E".into())
        );
        assert_eq!(
            parse_reply(b"x E5x\n").unwrap().1,
            ReplyBody::Text("E5x".into())
        );
    }

    #[test]
    fn port_variants_and_text() {
        assert_eq!(
            parse_body("30000"),
            ReplyBody::Port {
                port: 30000,
                addr: None
            }
        );
        assert_eq!(
            parse_body("30002 ::1 6"),
            ReplyBody::Port {
                port: 30002,
                addr: Some(IpAddr::V6(Ipv6Addr::LOCALHOST))
            }
        );
        // IPv6 address without the 6 marker, or a v4 one with it: not a clean reply.
        assert!(matches!(parse_body("30002 ::1"), ReplyBody::Text(_)));
        assert!(matches!(
            parse_body("30002 127.0.0.1 6"),
            ReplyBody::Text(_)
        ));
        assert!(matches!(parse_body("30002 not-an-ip"), ReplyBody::Text(_)));
        // V: larger than a port.
        assert_eq!(parse_body("20040107"), ReplyBody::Text("20040107".into()));
        assert_eq!(
            parse_body("1"),
            ReplyBody::Port {
                port: 1,
                addr: None
            }
        );
        // Q statistics are text.
        assert!(matches!(parse_body("58 1 2 3 4"), ReplyBody::Text(_)));
        assert_eq!(
            ReplyBody::Port {
                port: 4000,
                addr: None
            }
            .media_addr(IpAddr::V4(Ipv4Addr::LOCALHOST))
            .unwrap(),
            "127.0.0.1:4000".parse().unwrap()
        );
    }

    #[test]
    fn malformed_datagrams() {
        assert_eq!(parse_reply(b""), Err(ParseError::Empty));
        assert_eq!(parse_reply(b"\n"), Err(ParseError::Empty));
        assert_eq!(parse_reply(b"cookieonly\n"), Err(ParseError::NoBody));
        assert_eq!(parse_reply(b" 0\n"), Err(ParseError::Empty));
        assert_eq!(parse_reply(&[0xFF, b' ', b'0']), Err(ParseError::NotUtf8));
    }

    #[test]
    fn command_text() {
        let ip = IpAddr::V4(Ipv4Addr::new(198, 18, 1, 2));
        assert_eq!(
            cmd::offer("CALLID", ip, 20000, "FROMTAG"),
            "Uc0,8 CALLID 198.18.1.2 20000 FROMTAG;1"
        );
        let ip = IpAddr::V4(Ipv4Addr::new(198, 18, 2, 2));
        assert_eq!(
            cmd::answer("CALLID", ip, 22000, "FROMTAG", "TOTAG"),
            "Lc0 CALLID 198.18.2.2 22000 FROMTAG;1 TOTAG;1"
        );
        assert_eq!(
            cmd::delete("CALLID", "FROMTAG", "TOTAG"),
            "D CALLID FROMTAG TOTAG"
        );
        assert!(cmd::offer("c", IpAddr::V6(Ipv6Addr::LOCALHOST), 1, "f").starts_with("U6c0,8 "));
    }

    /// A fake relay answers by cookie and drops the first copy of every third request.
    #[test]
    fn pipeline_matches_cookies_and_retransmits() {
        let relay = FakeRelay::start(|cookie, seq, command| {
            match command.first() {
                Some(b'U') => format!("{cookie} {} 127.0.0.1\n", 30000 + seq),
                Some(b'D') => format!("{cookie} 0\n"),
                _ => format!("{cookie} E1\n"),
            }
            .into_bytes()
        });
        let mut p = Pipeline::connect(relay.addr, Duration::from_millis(50), 3).unwrap();
        for i in 0..10 {
            p.submit(i, &cmd::offer("c", IpAddr::V4(Ipv4Addr::LOCALHOST), 1, "f"));
        }
        p.submit(10, "D c f t");
        p.submit(11, "X");
        let out = complete(&mut p, 12);
        relay.stop();
        assert_eq!(out.len(), 12);
        for c in &out[..10] {
            let port = 30000 + c.tag as u16;
            assert_eq!(
                c.result,
                Ok(ReplyBody::Port {
                    port,
                    addr: v4(127, 0, 0, 1)
                })
            );
            assert_eq!(c.retries, u32::from(c.tag % 3 == 0), "tag {}", c.tag);
        }
        assert_eq!(out[10].result.as_ref().unwrap().delete_ok(), Ok(()));
        assert_eq!(out[11].result, Err(ReplyError::Code(1)));
        assert_eq!(p.stats.retransmits, 4); // seqs 0, 3, 6, 9
        assert_eq!(p.in_flight(), 0);
    }

    #[test]
    fn pipeline_times_out_after_the_tries() {
        let (c, copies) = call_unanswered::<RtppWire>("V");
        assert_eq!(c.result, Err(ReplyError::Timeout { tries: 3 }));
        // All three copies reached the socket, with the same cookie.
        assert_eq!(copies.len(), 3);
        assert!(copies.iter().all(|c| c == &copies[0]));
        assert!(copies[0].ends_with(b" V\n"));
    }

    #[test]
    fn refuses_non_loopback() {
        assert!(
            Pipeline::connect(
                "192.0.2.1:22222".parse().unwrap(),
                Duration::from_secs(1),
                1
            )
            .is_err()
        );
    }
}
