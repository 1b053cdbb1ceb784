//! The retransmitting request pipeline both UDP control clients share
//! ([`crate::rtpp_client`], [`crate::ng_client`]).
//!
//! Many requests in flight on one connected loopback socket (sends batched with sendmmsg);
//! every request is `<cookie> <body>` with a unique cookie `<random>_<seq>` (Kamailio's
//! `gencookie` format, which both protocols use), replies are matched by cookie, and a request
//! is retransmitted with the same cookie after a timeout until its tries run out (Kamailio:
//! 1 s, 5 tries), counting retries. [`Pipeline::call`] is the one-at-a-time form.
//!
//! A [`Wire`] supplies what differs between the protocols: the body written after the cookie,
//! how a reply splits into cookie and outcome, and how replies are read off the socket (the
//! rtpproxy client reads batches with recvmmsg into 2 KiB slots; an ng delete reply carries
//! the call's statistics, which do not fit those, so the ng client reads one datagram at a
//! time into 64 KiB).

use std::collections::HashMap;
use std::io::{self, Write as _};
use std::net::{SocketAddr, UdpSocket};
use std::os::fd::AsRawFd;
use std::time::Duration;

use crate::clock::now_ns;
use crate::rtpp_client::random_u32;
use crate::sys;

/// One control protocol's side of a [`Pipeline`].
pub trait Wire {
    /// What a caller submits (a command line, a request dictionary).
    type Request<'a>: ?Sized;
    /// A successful reply.
    type Reply;
    /// A refusal, or giving up (see [`Wire::timeout`]).
    type Error;
    /// The receive buffer, kept for the pipeline's life so reading replies allocates nothing.
    type Rx;

    fn new_rx() -> Self::Rx;

    /// About how many bytes [`Wire::encode`] appends, so the datagram is allocated once.
    fn body_len_hint(request: &Self::Request<'_>) -> usize;

    /// Appends the request's body to `datagram`, which holds the cookie and a space.
    fn encode(request: &Self::Request<'_>, datagram: &mut Vec<u8>);

    /// Splits a reply datagram into cookie and outcome; `None` when it is not a reply.
    fn parse(datagram: &[u8]) -> Option<(&str, Outcome<Self>)>;

    /// The error of a request that got no reply after `tries` sends.
    fn timeout(tries: u32) -> Self::Error;

    /// Reads the datagrams waiting on the non-blocking `sock` and hands each to `on_reply`
    /// with its arrival time (ns). `in_flight` (requests awaiting a reply) is there to bound
    /// the reading, so that a flood of strays cannot keep a poll from returning.
    fn receive(
        rx: &mut Self::Rx,
        sock: &UdpSocket,
        in_flight: usize,
        on_reply: impl FnMut(&[u8], u64),
    ) -> io::Result<()>;
}

/// How a request ended.
#[derive(Debug, Clone)]
pub struct Completion<T, E> {
    /// The caller's tag given to [`Pipeline::submit`].
    pub tag: u64,
    pub result: Result<T, E>,
    /// First send to reply (or to giving up), ns.
    pub latency_ns: u64,
    /// Retransmissions made (0 when the first send was answered).
    pub retries: u32,
}

/// What a request of `W`'s got: its reply or its error.
pub type Outcome<W> = Result<<W as Wire>::Reply, <W as Wire>::Error>;

/// A [`Completion`] of `W`'s requests.
pub type WireCompletion<W> = Completion<<W as Wire>::Reply, <W as Wire>::Error>;

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
pub struct Pipeline<W: Wire> {
    sock: UdpSocket,
    prefix: String,
    next_seq: u64,
    pending: HashMap<u64, Pending>,
    to_send: Vec<u64>,
    timeout_ns: u64,
    tries: u32,
    rx: W::Rx,
    pub stats: PipelineStats,
}

impl<W: Wire> Pipeline<W> {
    /// Connects to `relay` (loopback only: this harness never sends elsewhere; in a network
    /// namespace, call it on a thread inside that namespace).
    pub fn connect(relay: SocketAddr, timeout: Duration, tries: u32) -> io::Result<Self> {
        if !sys::is_loopback(&relay) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("refusing non-loopback control address {relay}"),
            ));
        }
        let bind = if relay.is_ipv4() {
            SocketAddr::from(([127, 0, 0, 1], 0))
        } else {
            SocketAddr::from((std::net::Ipv6Addr::LOCALHOST, 0))
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
            rx: W::new_rx(),
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
    pub fn submit(&mut self, tag: u64, request: &W::Request<'_>) {
        let seq = self.next_seq;
        self.next_seq += 1;
        let mut datagram = Vec::with_capacity(self.prefix.len() + 24 + W::body_len_hint(request));
        // Writing into a Vec cannot fail.
        let _ = write!(datagram, "{}_{} ", self.prefix, seq);
        W::encode(request, &mut datagram);
        self.pending.insert(
            seq,
            Pending {
                tag,
                datagram,
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
    pub fn poll(&mut self, max_wait_ns: u64, out: &mut Vec<WireCompletion<W>>) -> io::Result<()> {
        self.flush()?;
        let now = now_ns();
        let next_deadline = self
            .pending
            .values()
            .map(|p| p.deadline_ns)
            .min()
            .unwrap_or(u64::MAX);
        let wait = max_wait_ns.min(next_deadline.saturating_sub(now));
        let readable = wait == 0 || sys::wait_readable(self.sock.as_raw_fd(), wait)?;
        if readable {
            let in_flight = self.pending.len();
            let (pending, stats, prefix) = (&mut self.pending, &mut self.stats, &self.prefix);
            W::receive(&mut self.rx, &self.sock, in_flight, |datagram, at| {
                on_reply::<W>(pending, stats, prefix, datagram, at, out);
            })?;
        }
        self.expire(now_ns(), out);
        Ok(())
    }

    fn expire(&mut self, now: u64, out: &mut Vec<WireCompletion<W>>) {
        let due: Vec<u64> = self
            .pending
            .iter()
            .filter(|(_, p)| p.attempts > 0 && p.deadline_ns <= now)
            .map(|(s, _)| *s)
            .collect();
        for seq in due {
            let Some(p) = self.pending.get(&seq) else {
                continue;
            };
            if p.attempts >= self.tries {
                let Some(p) = self.pending.remove(&seq) else {
                    continue;
                };
                self.stats.timeouts += 1;
                out.push(Completion {
                    tag: p.tag,
                    result: Err(W::timeout(p.attempts)),
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
    pub fn call(&mut self, request: &W::Request<'_>) -> io::Result<WireCompletion<W>> {
        const TAG: u64 = u64::MAX;
        self.submit(TAG, request);
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

/// Matches one reply to its request. A free function over the pipeline's fields because the
/// receive buffer the reply lives in is borrowed at the same time.
fn on_reply<W: Wire>(
    pending: &mut HashMap<u64, Pending>,
    stats: &mut PipelineStats,
    prefix: &str,
    datagram: &[u8],
    at: u64,
    out: &mut Vec<WireCompletion<W>>,
) {
    let Some((cookie, result)) = W::parse(datagram) else {
        stats.unparsable_replies += 1;
        return;
    };
    let seq = cookie
        .split_once('_')
        .filter(|(p, _)| *p == prefix)
        .and_then(|(_, s)| s.parse::<u64>().ok());
    let Some(p) = seq.and_then(|s| pending.remove(&s)) else {
        stats.stray_replies += 1;
        return;
    };
    out.push(Completion {
        tag: p.tag,
        result,
        latency_ns: at.saturating_sub(p.first_sent_ns),
        retries: p.attempts.saturating_sub(1),
    });
}

/// Test harness shared by the protocols' pipeline tests.
#[cfg(test)]
pub(crate) mod testing {
    use super::*;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::thread::JoinHandle;
    use std::time::Instant;

    /// A fake relay on loopback that answers by cookie and drops the first copy of every
    /// third request (by the cookie's sequence number), so retransmission and matching are
    /// exercised.
    pub(crate) struct FakeRelay {
        pub addr: SocketAddr,
        stop: Arc<AtomicBool>,
        thread: JoinHandle<()>,
    }

    impl FakeRelay {
        /// `reply(cookie, seq, body)` is the whole reply datagram to a request.
        pub(crate) fn start(
            reply: impl Fn(&str, u64, &[u8]) -> Vec<u8> + Send + 'static,
        ) -> FakeRelay {
            let server = UdpSocket::bind("127.0.0.1:0").unwrap();
            server
                .set_read_timeout(Some(Duration::from_millis(20)))
                .unwrap();
            let addr = server.local_addr().unwrap();
            let stop = Arc::new(AtomicBool::new(false));
            let stop2 = stop.clone();
            let thread = std::thread::spawn(move || {
                let mut seen = std::collections::HashSet::new();
                let mut buf = vec![0u8; 65536];
                let deadline = Instant::now() + Duration::from_secs(10);
                while !stop2.load(Ordering::Relaxed) && Instant::now() < deadline {
                    let Ok((n, from)) = server.recv_from(&mut buf) else {
                        continue;
                    };
                    let msg = &buf[..n];
                    let sp = msg.iter().position(|&b| b == b' ').unwrap();
                    let cookie = std::str::from_utf8(&msg[..sp]).unwrap();
                    let seq: u64 = cookie.split_once('_').unwrap().1.parse().unwrap();
                    if seq.is_multiple_of(3) && seen.insert(seq) {
                        continue; // drop the first copy
                    }
                    server
                        .send_to(&reply(cookie, seq, &msg[sp + 1..]), from)
                        .unwrap();
                }
            });
            FakeRelay { addr, stop, thread }
        }

        /// Stops the server; a panic in it fails the test here.
        pub(crate) fn stop(self) {
            self.stop.store(true, Ordering::Relaxed);
            self.thread.join().unwrap();
        }
    }

    /// Polls until `n` requests have completed or 5 s have passed; the completions by tag.
    pub(crate) fn complete<W: Wire>(p: &mut Pipeline<W>, n: usize) -> Vec<WireCompletion<W>> {
        let mut out = Vec::new();
        let until = now_ns() + 5_000_000_000;
        while out.len() < n && now_ns() < until {
            p.poll(10_000_000, &mut out).unwrap();
        }
        out.sort_by_key(|c| c.tag);
        out
    }

    /// Calls `request` (3 tries, 20 ms apart) on a socket that never answers; returns the
    /// completion, checked to have given up after the tries, and the copies the socket got.
    pub(crate) fn call_unanswered<W: Wire>(
        request: &W::Request<'_>,
    ) -> (WireCompletion<W>, Vec<Vec<u8>>) {
        let silent = UdpSocket::bind("127.0.0.1:0").unwrap();
        let mut p =
            Pipeline::<W>::connect(silent.local_addr().unwrap(), Duration::from_millis(20), 3)
                .unwrap();
        let c = p.call(request).unwrap();
        assert_eq!(c.retries, 2);
        assert!(c.latency_ns >= 60_000_000);
        assert_eq!(p.stats.timeouts, 1);
        silent.set_nonblocking(true).unwrap();
        let mut buf = [0u8; 128];
        let mut copies = Vec::new();
        while let Ok(n) = silent.recv(&mut buf) {
            copies.push(buf[..n].to_vec());
        }
        (c, copies)
    }
}
