//! One signalling interface over the two UDP control protocols the scenarios speak: the
//! rtpproxy protocol ([`crate::rtpp_client`]: Sluice, rtpproxy) and rtpengine's ng protocol
//! ([`crate::ng_client`]). `control` and `steady` submit [`Req`]s (offer, answer, delete) and
//! read [`Completion`]s whose [`Reply`] gives the relay's media address or says the delete
//! succeeded, whatever the protocol. Both pipelines keep their own cookies, retransmission and
//! counters ([`PipelineStats`]); this layer only builds the protocol's request and converts
//! its completion.

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use crate::ng_client::{self, MediaAddrs, NgError};
use crate::rtpp_client::{self, PipelineStats, ReplyBody, ReplyError, cmd};

/// Which control protocol a relay speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    /// rtpproxy protocol (U/L/D).
    Rtpp,
    /// rtpengine ng protocol (offer/answer/delete, bencode + SDP).
    Ng,
}

/// The identifiers of one call.
#[derive(Debug, Clone, Copy)]
pub struct CallIds<'a> {
    pub call_id: &'a str,
    pub from_tag: &'a str,
    pub to_tag: &'a str,
}

/// A request, in protocol-neutral terms.
#[derive(Debug, Clone, Copy)]
pub enum Req<'a> {
    /// The caller's media address; the reply is where the callee sends.
    Offer(CallIds<'a>, SocketAddr),
    /// The callee's media address; the reply is where the caller sends.
    Answer(CallIds<'a>, SocketAddr),
    Delete(CallIds<'a>),
}

impl Req<'_> {
    /// `U`/`L`/`D`: the labels error counters and reports use for both protocols.
    pub fn label(&self) -> &'static str {
        match self {
            Req::Offer(..) => "U",
            Req::Answer(..) => "L",
            Req::Delete(_) => "D",
        }
    }
}

/// A reply that was not an error.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply {
    Rtpp(ReplyBody),
    Ng(ng_client::Reply),
}

impl Reply {
    /// RTP and RTCP address of an offer/answer reply. rtpproxy has no RTCP port in its reply:
    /// RTP + 1 by convention; `default_ip` is used when it answers a bare port.
    pub fn media(&self, default_ip: IpAddr) -> Result<MediaAddrs, SignalError> {
        match self {
            Reply::Rtpp(b) => {
                let rtp = b.media_addr(default_ip)?;
                let rtcp_port = rtp.port().checked_add(1).ok_or_else(|| {
                    SignalError::Rtpp(ReplyError::Unexpected(format!("RTP port {}", rtp.port())))
                })?;
                Ok(MediaAddrs {
                    rtp,
                    rtcp: SocketAddr::new(rtp.ip(), rtcp_port),
                })
            }
            Reply::Ng(r) => Ok(r.media()?),
        }
    }

    /// The RTP address of an offer/answer reply.
    pub fn media_addr(&self, default_ip: IpAddr) -> Result<SocketAddr, SignalError> {
        match self {
            Reply::Rtpp(b) => Ok(b.media_addr(default_ip)?),
            Reply::Ng(r) => Ok(r.media()?.rtp),
        }
    }

    /// A delete reply: rtpproxy `0`; ng `ok` (also with a warning such as "Call-ID not
    /// found", which rtpengine itself treats as success).
    pub fn delete_ok(&self) -> Result<(), SignalError> {
        match self {
            Reply::Rtpp(b) => Ok(b.delete_ok()?),
            Reply::Ng(r) if !r.pong => Ok(()),
            Reply::Ng(_) => Err(SignalError::Ng(NgError::UnexpectedResult("pong".into()))),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SignalError {
    #[error(transparent)]
    Rtpp(#[from] ReplyError),
    #[error(transparent)]
    Ng(#[from] NgError),
    /// A media address the scenario cannot use (e.g. not loopback).
    #[error("unusable media address: {0}")]
    Unusable(String),
}

impl SignalError {
    /// A short label for error counters (`E50`, `timeout`, `refused(Unknown call-id)`, ...).
    pub fn label(&self) -> String {
        match self {
            SignalError::Rtpp(e) => e.label(),
            SignalError::Ng(e) => e.label(),
            SignalError::Unusable(_) => "unusable-addr".into(),
        }
    }

    /// The relay answered with an error (it did not time out): after a refused offer there
    /// is no session to delete.
    pub fn refused(&self) -> bool {
        matches!(
            self,
            SignalError::Rtpp(ReplyError::Code(_)) | SignalError::Ng(NgError::Refused(_))
        )
    }
}

/// How a request ended.
#[derive(Debug, Clone)]
pub struct Completion {
    pub tag: u64,
    pub result: Result<Reply, SignalError>,
    /// First send to reply (or to giving up), ns.
    pub latency_ns: u64,
    /// Retransmissions made.
    pub retries: u32,
}

/// A control connection in one of the protocols; each variant keeps a reusable buffer for
/// its pipeline's own completions.
pub enum Signalling {
    Rtpp(rtpp_client::Pipeline, Vec<rtpp_client::Completion>),
    Ng(ng_client::Pipeline, Vec<ng_client::Completion>),
}

impl Signalling {
    /// Connects to `relay` (loopback only; in a network namespace, on a thread inside it).
    pub fn connect(
        protocol: Protocol,
        relay: SocketAddr,
        timeout: Duration,
        tries: u32,
    ) -> io::Result<Signalling> {
        Ok(match protocol {
            Protocol::Rtpp => Signalling::Rtpp(
                rtpp_client::Pipeline::connect(relay, timeout, tries)?,
                Vec::with_capacity(64),
            ),
            Protocol::Ng => Signalling::Ng(
                ng_client::Pipeline::connect(relay, timeout, tries)?,
                Vec::with_capacity(64),
            ),
        })
    }

    pub fn protocol(&self) -> Protocol {
        match self {
            Signalling::Rtpp(..) => Protocol::Rtpp,
            Signalling::Ng(..) => Protocol::Ng,
        }
    }

    /// Queues a request; it goes out at the next `poll`.
    pub fn submit(&mut self, tag: u64, req: Req<'_>) {
        match self {
            Signalling::Rtpp(p, _) => {
                let text = match req {
                    Req::Offer(c, m) => cmd::offer(c.call_id, m.ip(), m.port(), c.from_tag),
                    Req::Answer(c, m) => {
                        cmd::answer(c.call_id, m.ip(), m.port(), c.from_tag, c.to_tag)
                    }
                    Req::Delete(c) => cmd::delete(c.call_id, c.from_tag, c.to_tag),
                };
                p.submit(tag, &text);
            }
            Signalling::Ng(p, _) => match req {
                Req::Offer(c, m) => {
                    let sdp = ng_client::sdp(m);
                    p.submit(tag, &ng_client::Request::offer(c.call_id, c.from_tag, &sdp));
                }
                Req::Answer(c, m) => {
                    let sdp = ng_client::sdp(m);
                    p.submit(
                        tag,
                        &ng_client::Request::answer(c.call_id, c.from_tag, c.to_tag, &sdp),
                    );
                }
                Req::Delete(c) => p.submit(
                    tag,
                    &ng_client::Request::delete(c.call_id, c.from_tag, c.to_tag),
                ),
            },
        }
    }

    /// Sends what is queued, waits up to `max_wait_ns` for replies, and appends finished
    /// requests to `out`.
    pub fn poll(&mut self, max_wait_ns: u64, out: &mut Vec<Completion>) -> io::Result<()> {
        match self {
            Signalling::Rtpp(p, buf) => {
                buf.clear();
                p.poll(max_wait_ns, buf)?;
                out.extend(buf.drain(..).map(|c| Completion {
                    tag: c.tag,
                    result: c.result.map(Reply::Rtpp).map_err(SignalError::Rtpp),
                    latency_ns: c.latency_ns,
                    retries: c.retries,
                }));
            }
            Signalling::Ng(p, buf) => {
                buf.clear();
                p.poll(max_wait_ns, buf)?;
                out.extend(buf.drain(..).map(|c| Completion {
                    tag: c.tag,
                    result: c.result.map(Reply::Ng).map_err(SignalError::Ng),
                    latency_ns: c.latency_ns,
                    retries: c.retries,
                }));
            }
        }
        Ok(())
    }

    /// One request, waiting for its completion (other completions are dropped: use it only
    /// when nothing else is in flight).
    pub fn call(&mut self, req: Req<'_>) -> io::Result<Completion> {
        const TAG: u64 = u64::MAX;
        self.submit(TAG, req);
        let wait = self.give_up_after().as_nanos() as u64;
        let mut out = Vec::new();
        // Each poll returns by the next retransmission deadline, and the pipeline gives the
        // request up after its tries.
        loop {
            self.poll(wait, &mut out)?;
            if let Some(i) = out.iter().position(|c| c.tag == TAG) {
                return Ok(out.swap_remove(i));
            }
            out.clear();
        }
    }

    pub fn in_flight(&self) -> usize {
        match self {
            Signalling::Rtpp(p, _) => p.in_flight(),
            Signalling::Ng(p, _) => p.in_flight(),
        }
    }

    /// The longest a request can take before it is given up.
    pub fn give_up_after(&self) -> Duration {
        match self {
            Signalling::Rtpp(p, _) => p.give_up_after(),
            Signalling::Ng(p, _) => p.give_up_after(),
        }
    }

    pub fn stats(&self) -> PipelineStats {
        match self {
            Signalling::Rtpp(p, _) => p.stats,
            Signalling::Ng(p, _) => p.stats,
        }
    }
}

/// True when the relay at `relay` answers the protocol's liveness probe (rtpproxy `V` with
/// the base version, ng `ping` with `pong`), with one short try.
pub fn probe(protocol: Protocol, relay: SocketAddr, timeout: Duration) -> bool {
    match protocol {
        Protocol::Rtpp => rtpp_client::probe_version(relay, timeout),
        Protocol::Ng => ng_client::probe_ping(relay, timeout),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::UdpSocket;

    const IDS: CallIds<'static> = CallIds {
        call_id: "C",
        from_tag: "F",
        to_tag: "T",
    };

    /// What each protocol puts on the wire for the same requests.
    #[test]
    fn requests_in_both_protocols() {
        let server = UdpSocket::bind("127.0.0.1:0").unwrap();
        server
            .set_read_timeout(Some(Duration::from_secs(2)))
            .unwrap();
        let media: SocketAddr = "127.0.0.1:40000".parse().unwrap();
        let mut got = Vec::new();
        for proto in [Protocol::Rtpp, Protocol::Ng] {
            let mut s = Signalling::connect(
                proto,
                server.local_addr().unwrap(),
                Duration::from_secs(1),
                1,
            )
            .unwrap();
            assert_eq!(s.protocol(), proto);
            s.submit(1, Req::Offer(IDS, media));
            s.submit(2, Req::Answer(IDS, media));
            s.submit(3, Req::Delete(IDS));
            s.poll(0, &mut Vec::new()).unwrap();
            assert_eq!(s.in_flight(), 3);
            let mut buf = [0u8; 2048];
            for _ in 0..3 {
                let n = server.recv(&mut buf).unwrap();
                let text = String::from_utf8_lossy(&buf[..n]).into_owned();
                got.push(text.split_once(' ').unwrap().1.to_owned());
            }
        }
        assert_eq!(got[0], "Uc0,8 C 127.0.0.1 40000 F;1\n");
        assert_eq!(got[1], "Lc0 C 127.0.0.1 40000 F;1 T;1\n");
        assert_eq!(got[2], "D C F T\n");
        assert!(got[3].contains("7:command5:offer"), "{}", got[3]);
        assert!(got[3].contains("m=audio 40000 RTP/AVP 0 8 101\r\n"));
        assert!(got[4].contains("7:command6:answer") && got[4].contains("6:to-tag1:T"));
        assert_eq!(
            got[5],
            "d7:call-id1:C7:command6:delete8:from-tag1:F6:to-tag1:Te"
        );
    }

    #[test]
    fn replies_in_both_protocols() {
        let lo = IpAddr::from([127, 0, 0, 1]);
        let r = Reply::Rtpp(ReplyBody::Port {
            port: 30000,
            addr: None,
        });
        let m = r.media(lo).unwrap();
        assert_eq!(m.rtp, "127.0.0.1:30000".parse().unwrap());
        assert_eq!(m.rtcp, "127.0.0.1:30001".parse().unwrap());
        assert!(r.delete_ok().is_err());
        let zero = Reply::Rtpp(ReplyBody::Port {
            port: 0,
            addr: None,
        });
        assert_eq!(zero.delete_ok(), Ok(()));
        assert_eq!(zero.media(lo), Err(SignalError::Rtpp(ReplyError::PortZero)));

        let ok = Reply::Ng(ng_client::Reply {
            pong: false,
            sdp: Some(ng_client::sdp("127.0.0.1:35000".parse().unwrap())),
            warning: None,
        });
        assert_eq!(
            ok.media_addr(lo).unwrap(),
            "127.0.0.1:35000".parse().unwrap()
        );
        assert_eq!(ok.delete_ok(), Ok(()));
        let pong = Reply::Ng(ng_client::Reply {
            pong: true,
            sdp: None,
            warning: None,
        });
        assert_eq!(pong.media(lo), Err(SignalError::Ng(NgError::NoSdp)));
        assert!(pong.delete_ok().is_err());
    }

    #[test]
    fn error_labels_and_refusals() {
        assert!(SignalError::Rtpp(ReplyError::Code(7)).refused());
        assert!(SignalError::Ng(NgError::Refused("x".into())).refused());
        assert!(!SignalError::Ng(NgError::Timeout { tries: 5 }).refused());
        assert!(!SignalError::Rtpp(ReplyError::Timeout { tries: 5 }).refused());
        assert_eq!(SignalError::Rtpp(ReplyError::Code(7)).label(), "E7");
        assert_eq!(
            SignalError::Ng(NgError::Timeout { tries: 5 }).label(),
            "timeout"
        );
        assert_eq!(SignalError::Unusable("x".into()).label(), "unusable-addr");
        assert_eq!(Req::Delete(IDS).label(), "D");
    }
}
