//! rtpproxy control protocol client over UDP (the datagram mode Kamailio and OpenSIPS use).
//!
//! Every request is `<cookie> <command>\n` with a unique cookie `<random>_<seq>` (Kamailio's
//! `gencookie` format); the reply is `<cookie> <result>\n`. [`Pipeline`] keeps many requests in
//! flight on one connected socket (sendmmsg/recvmmsg), matches replies by cookie, and
//! retransmits a request with the same cookie after a timeout (Kamailio: 1 s, 5 tries), counting
//! retries. [`Pipeline::call`] is the one-at-a-time form.
//!
//! Replies ([`parse_reply`]): `port addr` / `port addr 6` / `port` for U and L, `0` for a
//! successful D (and for L on an unknown session), `E<n>` for errors, anything else as text
//! (`20040107` for V).

use std::collections::HashMap;
use std::fmt::Write as _;
use std::io;
use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::os::fd::AsRawFd;
use std::time::Duration;

use crate::clock::now_ns;
use crate::sys;

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

/// How a request ended.
#[derive(Debug, Clone)]
pub struct Completion {
    /// The caller's tag given to [`Pipeline::submit`].
    pub tag: u64,
    pub result: Result<ReplyBody, ReplyError>,
    /// First send to reply (or to giving up), ns.
    pub latency_ns: u64,
    /// Retransmissions made (0 when the first send was answered).
    pub retries: u32,
}

struct Pending {
    tag: u64,
    datagram: Vec<u8>,
    first_sent_ns: u64,
    deadline_ns: u64,
    attempts: u32,
}

/// Counters of the pipeline's own activity.
#[derive(Debug, Clone, Copy, Default, serde::Serialize)]
pub struct PipelineStats {
    pub requests: u64,
    pub datagrams_sent: u64,
    pub retransmits: u64,
    pub timeouts: u64,
    /// Replies whose cookie matched nothing in flight (answers to retransmits arriving late,
    /// or foreign cookies).
    pub stray_replies: u64,
    pub unparsable_replies: u64,
}

/// Many requests in flight on one UDP socket.
pub struct Pipeline {
    sock: UdpSocket,
    prefix: String,
    next_seq: u64,
    pending: HashMap<u64, Pending>,
    to_send: Vec<u64>,
    timeout_ns: u64,
    tries: u32,
    rx: sys::RecvBatch,
    pub stats: PipelineStats,
}

impl Pipeline {
    /// Connects to `relay` (which must be loopback: this harness never sends elsewhere).
    pub fn connect(relay: SocketAddr, timeout: Duration, tries: u32) -> io::Result<Pipeline> {
        if !sys::is_loopback(&relay) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("refusing non-loopback control address {relay}"),
            ));
        }
        let bind: SocketAddr = if relay.is_ipv4() {
            "127.0.0.1:0".parse().unwrap()
        } else {
            "[::1]:0".parse().unwrap()
        };
        let sock = UdpSocket::bind(bind)?;
        sock.connect(relay)?;
        sock.set_nonblocking(true)?;
        sys::set_recv_buffer(sock.as_raw_fd(), 4 << 20)?;
        Ok(Pipeline {
            sock,
            prefix: random_u32().to_string(),
            next_seq: 0,
            pending: HashMap::new(),
            to_send: Vec::new(),
            timeout_ns: timeout.as_nanos() as u64,
            tries: tries.max(1),
            rx: sys::RecvBatch::new(64),
            stats: PipelineStats::default(),
        })
    }

    pub fn in_flight(&self) -> usize {
        self.pending.len()
    }

    /// The longest a request can take before it is given up.
    pub fn give_up_after(&self) -> Duration {
        Duration::from_nanos(self.timeout_ns * self.tries as u64)
    }

    /// Queues a request; it goes out at the next [`Pipeline::flush`] (or `poll`).
    pub fn submit(&mut self, tag: u64, command: &str) {
        let seq = self.next_seq;
        self.next_seq += 1;
        let mut datagram = String::with_capacity(self.prefix.len() + 24 + command.len());
        let _ = writeln!(datagram, "{}_{} {}", self.prefix, seq, command);
        self.pending.insert(
            seq,
            Pending {
                tag,
                datagram: datagram.into_bytes(),
                first_sent_ns: 0,
                deadline_ns: 0,
                attempts: 0,
            },
        );
        self.to_send.push(seq);
        self.stats.requests += 1;
    }

    /// Sends everything queued (first sends and retransmissions).
    pub fn flush(&mut self) -> io::Result<()> {
        if self.to_send.is_empty() {
            return Ok(());
        }
        let now = now_ns();
        let seqs = std::mem::take(&mut self.to_send);
        let bufs: Vec<&[u8]> = seqs
            .iter()
            .filter_map(|s| self.pending.get(s).map(|p| p.datagram.as_slice()))
            .collect();
        let n = match sys::send_batch(self.sock.as_raw_fd(), &bufs) {
            Ok(n) => n,
            // ECONNREFUSED from an earlier ICMP port unreachable: the relay is not (yet) there;
            // the retransmit timer handles it.
            Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => 0,
            Err(e) => return Err(e),
        };
        drop(bufs);
        self.stats.datagrams_sent += n as u64;
        // Unsent ones (socket buffer full) count as sent and are retried on timeout.
        for s in &seqs {
            if let Some(p) = self.pending.get_mut(s) {
                if p.attempts == 0 {
                    p.first_sent_ns = now;
                } else {
                    self.stats.retransmits += 1;
                }
                p.attempts += 1;
                p.deadline_ns = now + self.timeout_ns;
            }
        }
        Ok(())
    }

    /// Sends what is queued, waits up to `max_wait_ns` for replies (less when a retransmission
    /// is due), and appends finished requests to `out`.
    pub fn poll(&mut self, max_wait_ns: u64, out: &mut Vec<Completion>) -> io::Result<()> {
        self.flush()?;
        let now = now_ns();
        let next_deadline = self
            .pending
            .values()
            .map(|p| p.deadline_ns)
            .min()
            .unwrap_or(u64::MAX);
        let wait = max_wait_ns.min(next_deadline.saturating_sub(now));
        let fd = self.sock.as_raw_fd();
        let readable = wait == 0 || sys::wait_readable(fd, wait)?;
        if readable {
            loop {
                let n = match self.rx.recv(fd) {
                    Ok(n) => n,
                    Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => 0,
                    Err(e) => return Err(e),
                };
                let at = now_ns();
                for i in 0..n {
                    self.on_datagram(i, at, out);
                }
                if n < 64 {
                    break;
                }
            }
        }
        self.expire(now_ns(), out);
        Ok(())
    }

    fn on_datagram(&mut self, i: usize, at: u64, out: &mut Vec<Completion>) {
        let Ok((cookie, body)) = parse_reply(self.rx.get(i)) else {
            self.stats.unparsable_replies += 1;
            return;
        };
        let seq = cookie
            .split_once('_')
            .filter(|(p, _)| *p == self.prefix)
            .and_then(|(_, s)| s.parse::<u64>().ok());
        let Some(p) = seq.and_then(|s| self.pending.remove(&s)) else {
            self.stats.stray_replies += 1;
            return;
        };
        out.push(Completion {
            tag: p.tag,
            result: match body {
                ReplyBody::Error(c) => Err(ReplyError::Code(c)),
                other => Ok(other),
            },
            latency_ns: at.saturating_sub(p.first_sent_ns),
            retries: p.attempts.saturating_sub(1),
        });
    }

    fn expire(&mut self, now: u64, out: &mut Vec<Completion>) {
        let due: Vec<u64> = self
            .pending
            .iter()
            .filter(|(_, p)| p.attempts > 0 && p.deadline_ns <= now)
            .map(|(s, _)| *s)
            .collect();
        for seq in due {
            let p = &self.pending[&seq];
            if p.attempts >= self.tries {
                let p = self.pending.remove(&seq).unwrap();
                self.stats.timeouts += 1;
                out.push(Completion {
                    tag: p.tag,
                    result: Err(ReplyError::Timeout { tries: p.attempts }),
                    latency_ns: now.saturating_sub(p.first_sent_ns),
                    retries: p.attempts.saturating_sub(1),
                });
            } else if !self.to_send.contains(&seq) {
                self.to_send.push(seq);
            }
        }
    }

    /// One request, waiting for its completion (other completions are dropped: use it only
    /// when nothing else is in flight).
    pub fn call(&mut self, command: &str) -> io::Result<Completion> {
        const TAG: u64 = u64::MAX;
        self.submit(TAG, command);
        let mut out = Vec::new();
        loop {
            self.poll(self.timeout_ns, &mut out)?;
            if let Some(i) = out.iter().position(|c| c.tag == TAG) {
                return Ok(out.swap_remove(i));
            }
            out.clear();
        }
    }
}

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

    /// A fake relay on loopback: answers by cookie, drops the first copy of every third
    /// request, so retransmission and matching are exercised.
    #[test]
    fn pipeline_matches_cookies_and_retransmits() {
        let server = UdpSocket::bind("127.0.0.1:0").unwrap();
        server
            .set_read_timeout(Some(Duration::from_millis(20)))
            .unwrap();
        let addr = server.local_addr().unwrap();
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let stop2 = stop.clone();
        let t = std::thread::spawn(move || {
            let mut seen = std::collections::HashSet::new();
            let mut buf = [0u8; 512];
            let deadline = std::time::Instant::now() + Duration::from_secs(10);
            while !stop2.load(std::sync::atomic::Ordering::Relaxed)
                && std::time::Instant::now() < deadline
            {
                let Ok((n, from)) = server.recv_from(&mut buf) else {
                    continue;
                };
                let text = std::str::from_utf8(&buf[..n])
                    .unwrap()
                    .trim_end()
                    .to_owned();
                let (cookie, command) = text.split_once(' ').unwrap();
                let seq: u64 = cookie.split_once('_').unwrap().1.parse().unwrap();
                if seq.is_multiple_of(3) && seen.insert(seq) {
                    continue; // drop the first copy
                }
                let reply = match command.chars().next().unwrap() {
                    'U' => format!("{cookie} {} 127.0.0.1\n", 30000 + seq),
                    'D' => format!("{cookie} 0\n"),
                    _ => format!("{cookie} E1\n"),
                };
                server.send_to(reply.as_bytes(), from).unwrap();
            }
        });
        let mut p = Pipeline::connect(addr, Duration::from_millis(50), 3).unwrap();
        for i in 0..10 {
            p.submit(i, &cmd::offer("c", IpAddr::V4(Ipv4Addr::LOCALHOST), 1, "f"));
        }
        p.submit(10, "D c f t");
        p.submit(11, "X");
        let mut out = Vec::new();
        let until = now_ns() + 5_000_000_000;
        while out.len() < 12 && now_ns() < until {
            p.poll(10_000_000, &mut out).unwrap();
        }
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        t.join().unwrap();
        assert_eq!(out.len(), 12);
        out.sort_by_key(|c| c.tag);
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
        let silent = UdpSocket::bind("127.0.0.1:0").unwrap();
        let mut p =
            Pipeline::connect(silent.local_addr().unwrap(), Duration::from_millis(20), 3).unwrap();
        let c = p.call("V").unwrap();
        assert_eq!(c.result, Err(ReplyError::Timeout { tries: 3 }));
        assert_eq!(c.retries, 2);
        assert!(c.latency_ns >= 60_000_000);
        // All three copies reached the socket, with the same cookie.
        silent.set_nonblocking(true).unwrap();
        let mut buf = [0u8; 128];
        let mut cookies = Vec::new();
        while let Ok(n) = silent.recv(&mut buf) {
            cookies.push(String::from_utf8_lossy(&buf[..n]).into_owned());
        }
        assert_eq!(cookies.len(), 3);
        assert!(cookies.iter().all(|c| c == &cookies[0]));
        assert!(cookies[0].ends_with(" V\n"));
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
