//! rtpengine's ng control protocol over UDP (what Kamailio's and OpenSIPS' rtpengine modules
//! speak).
//!
//! Every request is `<cookie> <bencoded dictionary>`, the reply `<cookie> <bencoded
//! dictionary>` with at least `result` (`ok`, `pong`, `error` with an `error-reason`; a `warning`
//! may ride along). Offer and answer carry an SDP body; the reply carries the SDP rewritten to
//! point at the relay, from which [`Reply::media`] takes the relay's address (c= line, media
//! level over session level) and ports (m= line; RTCP from a=rtcp, else port + 1).
//!
//! [`Pipeline`] is the [`crate::pipeline`] core that [`crate::rtpp_client::Pipeline`] also
//! uses: many requests in flight on one connected socket, replies matched by cookie
//! (`<random>_<seq>`), a request retransmitted with the same cookie after a timeout (Kamailio's
//! rtpengine module: 1 s, 5 tries). Replies are read one `recv` at a time into a 64 KiB buffer
//! because a delete reply carries the call's statistics and easily exceeds the 2 KiB slots of
//! the rtpproxy client's batch receiver.
//!
//! Bencode goes through `serde_bencode`: unlike `bendy`, it accepts dictionaries whose keys are
//! not sorted, which is what rtpengine sends (`d3:sdp...6:result2:oke`).

use std::io;
use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::clock::now_ns;
use crate::pipeline::{self, Wire};

/// Offer/answer flags, as a Kamailio config typically passes them
/// (`rtpengine_offer("replace-origin replace-session-connection ICE=remove")`): plain RTP/AVP,
/// the relay's address in o= and the session-level c= line.
const REPLACE: &[&str] = &["origin", "session-connection"];
const ICE: &str = "remove";

/// Largest reply read: a UDP datagram's maximum payload.
const MAX_REPLY: usize = 65_536;

/// A request dictionary (keys are sorted when encoded; rtpengine does not care about order).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Request<'a> {
    pub command: &'a str,
    #[serde(rename = "call-id", skip_serializing_if = "Option::is_none")]
    pub call_id: Option<&'a str>,
    #[serde(rename = "from-tag", skip_serializing_if = "Option::is_none")]
    pub from_tag: Option<&'a str>,
    #[serde(rename = "to-tag", skip_serializing_if = "Option::is_none")]
    pub to_tag: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sdp: Option<&'a str>,
    #[serde(skip_serializing_if = "<[_]>::is_empty")]
    pub replace: &'a [&'a str],
    #[serde(rename = "ICE", skip_serializing_if = "Option::is_none")]
    pub ice: Option<&'a str>,
}

impl<'a> Request<'a> {
    pub fn ping() -> Request<'static> {
        Request {
            command: "ping",
            ..Request::default()
        }
    }

    /// `offer` for the caller's SDP (see [`sdp`]).
    pub fn offer(call_id: &'a str, from_tag: &'a str, sdp: &'a str) -> Request<'a> {
        Request {
            command: "offer",
            call_id: Some(call_id),
            from_tag: Some(from_tag),
            sdp: Some(sdp),
            replace: REPLACE,
            ice: Some(ICE),
            ..Request::default()
        }
    }

    /// `answer` for the callee's SDP.
    pub fn answer(
        call_id: &'a str,
        from_tag: &'a str,
        to_tag: &'a str,
        sdp: &'a str,
    ) -> Request<'a> {
        Request {
            command: "answer",
            call_id: Some(call_id),
            from_tag: Some(from_tag),
            to_tag: Some(to_tag),
            sdp: Some(sdp),
            replace: REPLACE,
            ice: Some(ICE),
        }
    }

    /// `delete` of the whole call (both tags, as Kamailio sends it after a BYE).
    pub fn delete(call_id: &'a str, from_tag: &'a str, to_tag: &'a str) -> Request<'a> {
        Request {
            command: "delete",
            call_id: Some(call_id),
            from_tag: Some(from_tag),
            to_tag: Some(to_tag),
            ..Request::default()
        }
    }

    /// Appends the bencoded dictionary to `out`.
    pub fn encode_into(&self, out: &mut Vec<u8>) {
        // Only strings and lists of strings: serde_bencode cannot fail on this type (the
        // `requests_encode_like_the_recorded_ones` test covers every shape built here).
        let bytes = serde_bencode::to_bytes(self).expect("a Request always bencodes");
        out.extend_from_slice(&bytes);
    }
}

/// A minimal audio SDP: PCMU, PCMA and telephone-event on `media`, RTCP on port + 1.
pub fn sdp(media: SocketAddr) -> String {
    let (family, ip) = match media.ip() {
        IpAddr::V4(a) => ("IP4", a.to_string()),
        IpAddr::V6(a) => ("IP6", a.to_string()),
    };
    let port = media.port();
    format!(
        "v=0\r\n\
         o=- 1 1 IN {family} {ip}\r\n\
         s=sluice-bench\r\n\
         c=IN {family} {ip}\r\n\
         t=0 0\r\n\
         m=audio {port} RTP/AVP 0 8 101\r\n\
         a=rtpmap:0 PCMU/8000\r\n\
         a=rtpmap:8 PCMA/8000\r\n\
         a=rtpmap:101 telephone-event/8000\r\n\
         a=fmtp:101 0-16\r\n\
         a=sendrecv\r\n"
    )
}

/// Where the relay wants media for one side: RTP and RTCP.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MediaAddrs {
    pub rtp: SocketAddr,
    pub rtcp: SocketAddr,
}

/// Why an SDP gave no media address.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SdpError {
    #[error("no m=audio line")]
    NoAudio,
    #[error("bad m=audio port")]
    BadPort,
    #[error("m=audio port 0 (stream rejected)")]
    Rejected,
    #[error("no c= line for the audio stream")]
    NoConnection,
    #[error("bad c= line")]
    BadConnection,
    #[error("bad a=rtcp line")]
    BadRtcp,
}

/// What the first audio stream of an SDP says.
struct AudioSection {
    port: u16,
    /// Media-level c= line.
    connection: Option<IpAddr>,
    /// a=rtcp: port and optional address.
    rtcp: Option<(u16, Option<IpAddr>)>,
}

/// Finds the first audio stream's RTP and RTCP addresses in an SDP body.
pub fn parse_sdp_media(sdp: &str) -> Result<MediaAddrs, SdpError> {
    let mut session_c: Option<IpAddr> = None;
    let mut audio: Option<AudioSection> = None;
    let mut in_audio = false;
    for line in sdp.lines() {
        let line = line.trim_end_matches('\r');
        if let Some(m) = line.strip_prefix("m=") {
            if audio.is_some() {
                break; // only the first audio stream counts
            }
            let mut words = m.split_ascii_whitespace();
            in_audio = words.next() == Some("audio");
            if in_audio {
                // "PORT" or "PORT/COUNT".
                let port = words
                    .next()
                    .and_then(|p| p.split('/').next())
                    .and_then(|p| p.parse::<u16>().ok())
                    .ok_or(SdpError::BadPort)?;
                audio = Some(AudioSection {
                    port,
                    connection: None,
                    rtcp: None,
                });
            }
        } else if let Some(c) = line.strip_prefix("c=") {
            let ip = parse_connection(c)?;
            match (&mut audio, in_audio) {
                (None, _) => session_c = Some(ip),
                (Some(a), true) => a.connection = Some(ip),
                (Some(_), false) => {}
            }
        } else if let Some(r) = line.strip_prefix("a=rtcp:")
            && in_audio
            && let Some(a) = &mut audio
        {
            a.rtcp = Some(parse_rtcp_attr(r)?);
        }
    }
    let AudioSection {
        port,
        connection,
        rtcp,
    } = audio.ok_or(SdpError::NoAudio)?;
    if port == 0 {
        return Err(SdpError::Rejected);
    }
    let ip = connection.or(session_c).ok_or(SdpError::NoConnection)?;
    let rtcp = match rtcp {
        Some((p, addr)) => SocketAddr::new(addr.unwrap_or(ip), p),
        None => SocketAddr::new(ip, port.checked_add(1).ok_or(SdpError::BadPort)?),
    };
    Ok(MediaAddrs {
        rtp: SocketAddr::new(ip, port),
        rtcp,
    })
}

/// `IN IP4 ADDR` / `IN IP6 ADDR` (a multicast `/ttl` suffix is dropped).
fn parse_connection(c: &str) -> Result<IpAddr, SdpError> {
    let mut words = c.split_ascii_whitespace();
    let (Some("IN"), Some(family), Some(addr)) = (words.next(), words.next(), words.next()) else {
        return Err(SdpError::BadConnection);
    };
    let addr = addr.split('/').next().unwrap_or(addr);
    let ip: IpAddr = addr.parse().map_err(|_| SdpError::BadConnection)?;
    match (family, ip) {
        ("IP4", IpAddr::V4(_)) | ("IP6", IpAddr::V6(_)) => Ok(ip),
        _ => Err(SdpError::BadConnection),
    }
}

/// RFC 3605: `PORT [IN IP4 ADDR]`.
fn parse_rtcp_attr(r: &str) -> Result<(u16, Option<IpAddr>), SdpError> {
    let r = r.trim();
    let (port, rest) = match r.split_once(' ') {
        Some((p, rest)) => (p, Some(rest)),
        None => (r, None),
    };
    let port = port.parse::<u16>().map_err(|_| SdpError::BadRtcp)?;
    let addr = match rest {
        Some(rest) => Some(parse_connection(rest).map_err(|_| SdpError::BadRtcp)?),
        None => None,
    };
    Ok((port, addr))
}

/// What rtpengine answered, when it did not answer `error`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    /// `pong` (to `ping`) instead of `ok`.
    pub pong: bool,
    /// The rewritten SDP of an offer or answer.
    pub sdp: Option<String>,
    /// e.g. `Call-ID not found or tags didn't match` on a delete, which still says `ok`.
    pub warning: Option<String>,
}

impl Reply {
    /// The relay's media addresses from the SDP of an offer/answer reply.
    pub fn media(&self) -> Result<MediaAddrs, NgError> {
        let sdp = self.sdp.as_deref().ok_or(NgError::NoSdp)?;
        parse_sdp_media(sdp).map_err(NgError::Sdp)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NgError {
    /// `"result": "error"`.
    #[error("rtpengine refused: {0}")]
    Refused(String),
    #[error("unexpected result {0:?}")]
    UnexpectedResult(String),
    #[error("offer/answer reply without an SDP")]
    NoSdp,
    #[error("reply SDP: {0}")]
    Sdp(SdpError),
    #[error("no reply after {tries} tries")]
    Timeout { tries: u32 },
}

impl NgError {
    /// A short label for error counters: `refused(Unknown call-id)`, `timeout`, ...
    pub fn label(&self) -> String {
        match self {
            NgError::Refused(reason) => {
                let reason: String = reason.chars().take(40).collect();
                format!("refused({reason})")
            }
            NgError::UnexpectedResult(_) => "unexpected".into(),
            NgError::NoSdp => "no-sdp".into(),
            NgError::Sdp(_) => "bad-sdp".into(),
            NgError::Timeout { .. } => "timeout".into(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    #[error("empty reply")]
    Empty,
    #[error("reply has no dictionary after the cookie")]
    NoBody,
    #[error("reply cookie is not UTF-8")]
    NotUtf8,
    #[error("reply is not a bencoded dictionary with a result: {0}")]
    Bencode(String),
}

/// The top-level keys of a reply this client looks at (others, such as a delete's statistics,
/// are skipped).
#[derive(Deserialize)]
struct RawReply {
    result: String,
    #[serde(rename = "error-reason")]
    error_reason: Option<String>,
    sdp: Option<String>,
    warning: Option<String>,
}

/// Splits a reply datagram into cookie and outcome.
pub fn parse_reply(datagram: &[u8]) -> Result<(&str, Result<Reply, NgError>), ParseError> {
    let space = datagram.iter().position(|&b| b == b' ');
    let (cookie, body) = match space {
        Some(i) => (&datagram[..i], &datagram[i + 1..]),
        None if datagram.is_empty() => return Err(ParseError::Empty),
        None => return Err(ParseError::NoBody),
    };
    if cookie.is_empty() {
        return Err(ParseError::Empty);
    }
    if body.is_empty() {
        return Err(ParseError::NoBody);
    }
    let cookie = std::str::from_utf8(cookie).map_err(|_| ParseError::NotUtf8)?;
    let raw: RawReply =
        serde_bencode::from_bytes(body).map_err(|e| ParseError::Bencode(e.to_string()))?;
    let outcome = match raw.result.as_str() {
        "ok" | "pong" => Ok(Reply {
            pong: raw.result == "pong",
            sdp: raw.sdp,
            warning: raw.warning,
        }),
        "error" => Err(NgError::Refused(raw.error_reason.unwrap_or_default())),
        _ => Err(NgError::UnexpectedResult(raw.result)),
    };
    Ok((cookie, outcome))
}

/// The ng protocol's side of the shared [`pipeline::Pipeline`]: a bencoded dictionary after
/// the cookie, replies read one `recv` at a time into a 64 KiB buffer (see the module docs).
pub struct NgWire;

impl Wire for NgWire {
    type Request<'a> = Request<'a>;
    type Reply = Reply;
    type Error = NgError;
    type Rx = Box<[u8]>;

    fn new_rx() -> Box<[u8]> {
        vec![0u8; MAX_REPLY].into_boxed_slice()
    }

    fn body_len_hint(request: &Request<'_>) -> usize {
        request.sdp.map_or(64, |s| s.len() + 160)
    }

    fn encode(request: &Request<'_>, datagram: &mut Vec<u8>) {
        request.encode_into(datagram);
    }

    fn parse(datagram: &[u8]) -> Option<(&str, Result<Reply, NgError>)> {
        parse_reply(datagram).ok()
    }

    fn timeout(tries: u32) -> NgError {
        NgError::Timeout { tries }
    }

    fn receive(
        rx: &mut Box<[u8]>,
        sock: &UdpSocket,
        in_flight: usize,
        mut on_reply: impl FnMut(&[u8], u64),
    ) -> io::Result<()> {
        // Bounded: at most twice what can be in flight, so a flood of strays cannot keep
        // this loop from returning.
        for _ in 0..(2 * in_flight).max(64) {
            let n = match sock.recv(rx) {
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            };
            on_reply(&rx[..n], now_ns());
        }
        Ok(())
    }
}

/// Many ng requests in flight on one UDP socket.
pub type Pipeline = pipeline::Pipeline<NgWire>;

/// How an ng request ended.
pub type Completion = pipeline::Completion<Reply, NgError>;

/// Sends `ping` with one short try; true when rtpengine answers `pong`.
pub fn probe_ping(relay: SocketAddr, timeout: Duration) -> bool {
    let Ok(mut p) = Pipeline::connect(relay, timeout, 1) else {
        return false;
    };
    matches!(
        p.call(&Request::ping()),
        Ok(Completion {
            result: Ok(Reply { pong: true, .. }),
            ..
        })
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pipeline::testing::{FakeRelay, call_unanswered, complete};

    /// Replies recorded from Debian's rtpengine-daemon 10.5.3.5 (userspace, `--table=-1`) to
    /// the requests this client sends; see bench/tests/fixtures/ng/README.md.
    macro_rules! fixture {
        ($name:literal) => {
            include_bytes!(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/tests/fixtures/ng/",
                $name
            ))
            .as_slice()
        };
    }

    fn v4(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    #[test]
    fn recorded_ping() {
        let (cookie, r) = parse_reply(fixture!("ping.reply.txt")).unwrap();
        assert_eq!(cookie, "1_0");
        let r = r.unwrap();
        assert!(r.pong);
        assert_eq!(r.sdp, None);
    }

    #[test]
    fn recorded_offer_and_answer() {
        let (cookie, r) = parse_reply(fixture!("offer.reply.txt")).unwrap();
        assert_eq!(cookie, "1_1");
        let r = r.unwrap();
        assert!(!r.pong);
        let m = r.media().unwrap();
        assert_eq!(m.rtp, v4("127.0.0.1:35000"));
        assert_eq!(m.rtcp, v4("127.0.0.1:35001"));

        let (cookie, r) = parse_reply(fixture!("answer.reply.txt")).unwrap();
        assert_eq!(cookie, "1_2");
        let m = r.unwrap().media().unwrap();
        assert_eq!(m.rtp.ip(), IpAddr::from([127, 0, 0, 1]));
        assert_ne!(m.rtp.port(), 35000);
        assert_eq!(m.rtcp.port(), m.rtp.port() + 1);
    }

    #[test]
    fn recorded_delete_with_statistics() {
        let raw = fixture!("delete.reply.txt");
        // The call's statistics make it longer than the rtpproxy client's 2 KiB receive slots.
        assert!(raw.len() > 1500, "{}", raw.len());
        let (cookie, r) = parse_reply(raw).unwrap();
        assert_eq!(cookie, "1_3");
        let r = r.unwrap();
        assert!(!r.pong);
        assert_eq!(r.warning, None);
        assert_eq!(r.media(), Err(NgError::NoSdp));

        let (cookie, r) = parse_reply(fixture!("delete-after-media.reply.txt")).unwrap();
        assert_eq!(cookie, "2_2");
        assert!(r.is_ok());
        let (_, r) = parse_reply(fixture!("delete-ipv6.reply.txt")).unwrap();
        assert!(r.is_ok());
    }

    #[test]
    fn recorded_errors_and_warnings() {
        let (cookie, r) = parse_reply(fixture!("answer-unknown-call.reply.txt")).unwrap();
        assert_eq!(cookie, "1_4");
        let e = r.unwrap_err();
        assert_eq!(e, NgError::Refused("Unknown call-id".into()));
        assert_eq!(e.label(), "refused(Unknown call-id)");
        assert_eq!(e.to_string(), "rtpengine refused: Unknown call-id");

        let (_, r) = parse_reply(fixture!("delete-unknown-call.reply.txt")).unwrap();
        let r = r.unwrap();
        assert_eq!(
            r.warning.as_deref(),
            Some("Call-ID not found or tags didn't match")
        );

        let (_, r) = parse_reply(fixture!("unknown-command.reply.txt")).unwrap();
        assert_eq!(
            r.unwrap_err(),
            NgError::Refused("Unrecognized command".into())
        );
    }

    #[test]
    fn recorded_ipv6_offer() {
        let (_, r) = parse_reply(fixture!("offer-ipv6.reply.txt")).unwrap();
        let m = r.unwrap().media().unwrap();
        assert_eq!(m.rtp.ip(), IpAddr::V6(std::net::Ipv6Addr::LOCALHOST));
        assert_eq!(m.rtcp.port(), m.rtp.port() + 1);
    }

    /// The recorded replies answer exactly what this client sends (cookie aside).
    #[test]
    fn requests_encode_like_the_recorded_ones() {
        let body = |raw: &'static [u8]| -> Vec<u8> {
            let i = raw.iter().position(|&b| b == b' ').unwrap();
            raw[i + 1..].to_vec()
        };
        let enc = |r: &Request<'_>| {
            let mut v = Vec::new();
            r.encode_into(&mut v);
            v
        };
        let caller = sdp(v4("127.0.0.1:40000"));
        let callee = sdp(v4("127.0.0.1:40002"));
        let caller6 = sdp("[::1]:40000".parse().unwrap());
        assert_eq!(enc(&Request::ping()), body(fixture!("ping.request.txt")));
        assert_eq!(
            enc(&Request::offer("rec-1", "ft1", &caller)),
            body(fixture!("offer.request.txt"))
        );
        assert_eq!(
            enc(&Request::answer("rec-1", "ft1", "tt1", &callee)),
            body(fixture!("answer.request.txt"))
        );
        assert_eq!(
            enc(&Request::delete("rec-1", "ft1", "tt1")),
            body(fixture!("delete.request.txt"))
        );
        assert_eq!(
            enc(&Request::offer("rec-6", "ft6", &caller6)),
            body(fixture!("offer-ipv6.request.txt"))
        );
        assert_eq!(enc(&Request::ping()), b"d7:command4:pinge");
    }

    #[test]
    fn sdp_text() {
        let s = sdp(v4("127.0.0.1:40000"));
        assert!(s.contains("\r\nc=IN IP4 127.0.0.1\r\n"));
        assert!(s.contains("\r\nm=audio 40000 RTP/AVP 0 8 101\r\n"));
        assert!(s.contains("a=rtpmap:101 telephone-event/8000\r\n"));
        let s = sdp("[::1]:40002".parse().unwrap());
        assert!(s.contains("\r\nc=IN IP6 ::1\r\n"));
        // Our own SDP parses back.
        assert_eq!(
            parse_sdp_media(&sdp(v4("127.0.0.1:40000"))).unwrap(),
            MediaAddrs {
                rtp: v4("127.0.0.1:40000"),
                rtcp: v4("127.0.0.1:40001")
            }
        );
    }

    #[test]
    fn sdp_media_variants() {
        // Media-level c= wins over session level; a=rtcp with an address; LF line ends.
        let s = "v=0\nc=IN IP4 127.0.0.9\nm=audio 30000/2 RTP/AVP 0\nc=IN IP4 127.0.0.2/127\n\
                 a=rtcp:30011 IN IP4 127.0.0.3\nm=audio 50000 RTP/AVP 0\nc=IN IP4 127.0.0.4\n";
        assert_eq!(
            parse_sdp_media(s).unwrap(),
            MediaAddrs {
                rtp: v4("127.0.0.2:30000"),
                rtcp: v4("127.0.0.3:30011")
            }
        );
        // Video first, then audio; a=rtcp with only a port.
        let s = "c=IN IP4 127.0.0.1\r\nm=video 4000 RTP/AVP 96\r\na=rtcp:1\r\n\
                 m=audio 4002 RTP/AVP 0\r\na=rtcp:4009\r\n";
        assert_eq!(
            parse_sdp_media(s).unwrap(),
            MediaAddrs {
                rtp: v4("127.0.0.1:4002"),
                rtcp: v4("127.0.0.1:4009")
            }
        );
        assert_eq!(parse_sdp_media("v=0\r\n"), Err(SdpError::NoAudio));
        assert_eq!(
            parse_sdp_media("c=IN IP4 127.0.0.1\r\nm=audio 0 RTP/AVP 0\r\n"),
            Err(SdpError::Rejected)
        );
        assert_eq!(
            parse_sdp_media("m=audio 4000 RTP/AVP 0\r\n"),
            Err(SdpError::NoConnection)
        );
        assert_eq!(
            parse_sdp_media("m=audio x RTP/AVP 0\r\n"),
            Err(SdpError::BadPort)
        );
        assert_eq!(
            parse_sdp_media("c=IN IP4 ::1\r\nm=audio 4000 RTP/AVP 0\r\n"),
            Err(SdpError::BadConnection)
        );
        assert_eq!(
            parse_sdp_media("c=IN IP4 127.0.0.1\r\nm=audio 4000 RTP/AVP 0\r\na=rtcp:x\r\n"),
            Err(SdpError::BadRtcp)
        );
        // RTCP port + 1 must fit.
        assert_eq!(
            parse_sdp_media("c=IN IP4 127.0.0.1\r\nm=audio 65535 RTP/AVP 0\r\n"),
            Err(SdpError::BadPort)
        );
    }

    #[test]
    fn malformed_datagrams() {
        assert_eq!(parse_reply(b""), Err(ParseError::Empty));
        assert_eq!(parse_reply(b" d6:result2:oke"), Err(ParseError::Empty));
        assert_eq!(parse_reply(b"cookie"), Err(ParseError::NoBody));
        assert_eq!(parse_reply(b"cookie "), Err(ParseError::NoBody));
        assert_eq!(
            parse_reply(&[0xFF, b' ', b'd', b'e']),
            Err(ParseError::NotUtf8)
        );
        for bad in [
            &b"c d6:result2:ok"[..], // truncated
            b"c i42e",               // not a dictionary
            b"c de",                 // no result
            b"c d6:resulti1ee",      // result not a string
            b"c 5:hello",
        ] {
            assert!(
                matches!(parse_reply(bad), Err(ParseError::Bencode(_))),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
        // An unknown result is a reply, not garbage.
        let (_, r) = parse_reply(b"c d6:result10:load limite").unwrap();
        assert_eq!(r, Err(NgError::UnexpectedResult("load limit".into())));
        // error without a reason.
        let (_, r) = parse_reply(b"c d6:result5:errore").unwrap();
        assert_eq!(r, Err(NgError::Refused(String::new())));
    }

    /// A fake rtpengine answers by cookie with recorded replies and drops the first copy of
    /// every third request.
    #[test]
    fn pipeline_matches_cookies_and_retransmits() {
        let reply_body = |raw: &[u8]| -> Vec<u8> {
            let i = raw.iter().position(|&b| b == b' ').unwrap();
            raw[i..].to_vec() // keeps the space
        };
        let offer = reply_body(fixture!("offer.reply.txt"));
        let delete = reply_body(fixture!("delete.reply.txt"));
        let error = reply_body(fixture!("answer-unknown-call.reply.txt"));
        let relay = FakeRelay::start(move |cookie, _, body| {
            let contains = |s: &[u8]| body.windows(s.len()).any(|w| w == s);
            let reply = if contains(b"5:offer") {
                &offer
            } else if contains(b"6:delete") {
                &delete
            } else {
                &error
            };
            [cookie.as_bytes(), reply].concat()
        });
        let mut p = Pipeline::connect(relay.addr, Duration::from_millis(50), 3).unwrap();
        let caller = sdp(v4("127.0.0.1:40000"));
        for i in 0..10 {
            p.submit(i, &Request::offer("c", "f", &caller));
        }
        p.submit(10, &Request::delete("c", "f", "t"));
        p.submit(11, &Request::answer("x", "f", "t", &caller));
        let out = complete(&mut p, 12);
        relay.stop();
        assert_eq!(out.len(), 12);
        for c in &out[..10] {
            let m = c.result.as_ref().unwrap().media().unwrap();
            assert_eq!(m.rtp, v4("127.0.0.1:35000"));
            assert_eq!(c.retries, u32::from(c.tag % 3 == 0), "tag {}", c.tag);
        }
        assert!(out[10].result.is_ok());
        assert_eq!(
            out[11].result,
            Err(NgError::Refused("Unknown call-id".into()))
        );
        assert_eq!(p.stats.retransmits, 4); // seqs 0, 3, 6, 9
        assert_eq!(p.stats.unparsable_replies, 0);
        assert_eq!(p.in_flight(), 0);
    }

    #[test]
    fn pipeline_times_out_after_the_tries() {
        let (c, copies) = call_unanswered::<NgWire>(&Request::ping());
        assert_eq!(c.result, Err(NgError::Timeout { tries: 3 }));
        assert_eq!(copies.len(), 3);
        assert!(copies.iter().all(|c| c == &copies[0]));
        assert!(copies[0].ends_with(b"_0 d7:command4:pinge"));
    }

    #[test]
    fn refuses_non_loopback() {
        assert!(Pipeline::connect(v4("192.0.2.1:2223"), Duration::from_secs(1), 1).is_err());
    }
}
