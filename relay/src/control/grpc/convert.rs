//! sluice.v1 messages <-> command-core types: validation of everything that comes off the wire
//! (nothing here trusts a request field), error mapping, and the views the core returns.

use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use sluice_proto::v1 as pb;
use tonic::Status;

use crate::control::core::CoreStats;
use crate::session::latch::{LatchMode, LatchPolicy, Relatch};
use crate::session::table::{LegInfo, MAX_SESSION_TIMEOUT, StreamInfo};
use crate::session::{
    CoreError, EndReason, InterfaceSel, LegOptions, SessionEvent, SessionInfo, SessionOptions,
    SessionState, UpdateKind, UpdateReply,
};

/// Longest call-id or tag accepted, bytes.
pub const MAX_ID_LEN: usize = 1024;
/// Most media streams in one Offer/Answer.
pub const MAX_STREAMS: usize = 64;
/// Most labels in one request.
pub const MAX_LABELS: usize = 32;
pub const MAX_LABEL_KEY_LEN: usize = 63;
pub const MAX_LABEL_VALUE_LEN: usize = 256;
/// Longest interface name accepted, bytes (longer cannot name a configured one anyway).
const MAX_INTERFACE_LEN: usize = 256;
pub const DEFAULT_PAGE_SIZE: usize = 100;
pub const MAX_PAGE_SIZE: usize = 1000;
/// Page tokens start with this version mark, so their format can change later.
const PAGE_TOKEN_PREFIX: &str = "p1.";

fn invalid(message: impl Into<String>) -> Status {
    Status::invalid_argument(message)
}

/// A required identifier (call-id, tag): non-empty, bounded.
pub fn required_id(field: &str, value: String) -> Result<String, Status> {
    if value.is_empty() {
        return Err(invalid(format!("{field} is required")));
    }
    optional_id(field, Some(value)).map(|v| v.unwrap_or_default())
}

/// An optional identifier; empty counts as absent.
pub fn optional_id(field: &str, value: Option<String>) -> Result<Option<String>, Status> {
    match value {
        Some(v) if v.len() > MAX_ID_LEN => Err(invalid(format!(
            "{field} is {} bytes long; the limit is {MAX_ID_LEN}",
            v.len()
        ))),
        Some(v) if v.is_empty() => Ok(None),
        v => Ok(v),
    }
}

/// One validated media stream of an Offer/Answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamSpec {
    pub index: u32,
    pub remote: Option<SocketAddr>,
    pub remote_rtcp: Option<SocketAddr>,
    pub ipv6: bool,
    pub interface: InterfaceSel,
}

fn port(value: u32, what: impl FnOnce() -> String) -> Result<u16, Status> {
    u16::try_from(value)
        .map_err(|_| invalid(format!("{} {value} is not a UDP port (0-65535)", what())))
}

pub fn streams(list: &[pb::MediaStream]) -> Result<Vec<StreamSpec>, Status> {
    if list.is_empty() {
        return Err(invalid("at least one media stream is required"));
    }
    if list.len() > MAX_STREAMS {
        return Err(invalid(format!(
            "{} media streams; the limit is {MAX_STREAMS}",
            list.len()
        )));
    }
    let mut specs: Vec<StreamSpec> = Vec::with_capacity(list.len());
    for s in list {
        let index = s.index;
        if index == 0 {
            return Err(invalid(
                "stream index must be 1 or more (the 1-based SDP m-line number)",
            ));
        }
        if specs.iter().any(|p| p.index == index) {
            return Err(invalid(format!("stream index {index} appears twice")));
        }
        let ip: Option<IpAddr> = if s.address.is_empty() {
            None
        } else {
            Some(s.address.parse().map_err(|_| {
                invalid(format!(
                    "stream {index}: address `{}` is not an IPv4 or IPv6 address",
                    s.address.escape_debug()
                ))
            })?)
        };
        let rtp_port = port(s.rtp_port, || format!("stream {index}: rtp_port"))?;
        let rtcp_port = match s.rtcp_port {
            None => None,
            Some(0) => return Err(invalid(format!("stream {index}: rtcp_port 0"))),
            Some(p) => Some(port(p, || format!("stream {index}: rtcp_port"))?),
        };
        if rtp_port == u16::MAX && rtcp_port.is_none() {
            return Err(invalid(format!(
                "stream {index}: rtp_port 65535 leaves no room for RTCP on port + 1; \
                 give rtcp_port"
            )));
        }
        // An unspecified address or port 0 is a stream on hold (or not known yet): nothing
        // to send to until latching learns it.
        let remote = ip
            .filter(|ip| !ip.is_unspecified() && rtp_port != 0)
            .map(|ip| SocketAddr::new(ip, rtp_port));
        let interface = match s.interface.as_deref() {
            None | Some("") => InterfaceSel::Auto,
            Some(name) if name.len() > MAX_INTERFACE_LEN => {
                return Err(invalid(format!(
                    "stream {index}: interface name longer than {MAX_INTERFACE_LEN} bytes"
                )));
            }
            Some(name) => InterfaceSel::Named(name.to_owned()),
        };
        specs.push(StreamSpec {
            index,
            remote,
            remote_rtcp: remote
                .zip(rtcp_port)
                .map(|(r, p)| SocketAddr::new(r.ip(), p)),
            ipv6: ip.is_some_and(|ip| ip.is_ipv6()),
            interface,
        });
    }
    Ok(specs)
}

fn label_key_ok(key: &str) -> bool {
    !key.is_empty()
        && key.len() <= MAX_LABEL_KEY_LEN
        && key
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'/' | b'-'))
}

/// Labels of an Offer/Answer or a ListSessions filter.
pub fn labels(map: &HashMap<String, String>) -> Result<BTreeMap<String, String>, Status> {
    if map.len() > MAX_LABELS {
        return Err(invalid(format!(
            "{} labels; the limit is {MAX_LABELS}",
            map.len()
        )));
    }
    let mut out = BTreeMap::new();
    for (k, v) in map {
        if !label_key_ok(k) {
            return Err(invalid(format!(
                "label key `{}`: 1-{MAX_LABEL_KEY_LEN} characters of A-Z a-z 0-9 . _ / -",
                k.escape_debug()
            )));
        }
        if v.len() > MAX_LABEL_VALUE_LEN {
            return Err(invalid(format!(
                "label `{k}`: value longer than {MAX_LABEL_VALUE_LEN} bytes"
            )));
        }
        if v.chars().any(char::is_control) {
            return Err(invalid(format!(
                "label `{k}`: value has control characters"
            )));
        }
        out.insert(k.clone(), v.clone());
    }
    Ok(out)
}

fn timeout(field: &str, seconds: Option<u32>) -> Result<Option<Duration>, Status> {
    let max = MAX_SESSION_TIMEOUT.as_secs();
    match seconds {
        None => Ok(None),
        Some(s) if s == 0 || u64::from(s) > max => Err(invalid(format!(
            "{field} must be between 1 and {max} seconds"
        ))),
        Some(s) => Ok(Some(Duration::from_secs(u64::from(s)))),
    }
}

/// The per-leg and per-session options of an Offer/Answer. `defaults` fills the half of the
/// latch policy a request leaves unspecified.
pub fn options(
    opts: Option<&pb::SessionOptions>,
    defaults: LatchPolicy,
) -> Result<(LegOptions, SessionOptions), Status> {
    let Some(o) = opts else {
        return Ok((LegOptions::default(), SessionOptions::default()));
    };
    let mode = match pb::LatchMode::try_from(o.latch_mode) {
        Ok(pb::LatchMode::Unspecified) => None,
        Ok(pb::LatchMode::FirstPacket) => Some(LatchMode::FirstPacket),
        Ok(pb::LatchMode::Strict) => Some(LatchMode::Strict),
        Ok(pb::LatchMode::Asymmetric) => Some(LatchMode::Asymmetric),
        Err(_) => return Err(invalid(format!("unknown latch_mode {}", o.latch_mode))),
    };
    let relatch = match pb::Relatch::try_from(o.relatch) {
        Ok(pb::Relatch::Unspecified) => None,
        Ok(pb::Relatch::OnUpdate) => Some(Relatch::OnUpdate),
        Ok(pb::Relatch::SsrcContinuity) => Some(Relatch::SsrcContinuity),
        Ok(pb::Relatch::Never) => Some(Relatch::Never),
        Err(_) => return Err(invalid(format!("unknown relatch {}", o.relatch))),
    };
    let latch = (mode.is_some() || relatch.is_some()).then(|| LatchPolicy {
        mode: mode.unwrap_or(defaults.mode),
        relatch: relatch.unwrap_or(defaults.relatch),
        window_ns: defaults.window_ns,
    });
    let dscp = match o.dscp {
        None => None,
        Some(d) => Some(
            u8::try_from(d)
                .ok()
                .filter(|d| *d <= 63)
                .ok_or_else(|| invalid(format!("dscp {d}: DSCP is 6 bits (0-63)")))?,
        ),
    };
    Ok((
        LegOptions { latch, dscp },
        SessionOptions {
            labels: labels(&o.labels)?,
            setup_timeout: timeout("setup_timeout_seconds", o.setup_timeout_seconds)?,
            media_timeout: timeout("media_timeout_seconds", o.media_timeout_seconds)?,
        },
    ))
}

pub fn state_filter(value: i32) -> Result<Option<SessionState>, Status> {
    match pb::SessionState::try_from(value) {
        Ok(pb::SessionState::Unspecified) => Ok(None),
        Ok(pb::SessionState::Offered) => Ok(Some(SessionState::Offered)),
        Ok(pb::SessionState::Answered) => Ok(Some(SessionState::Answered)),
        Err(_) => Err(invalid(format!("unknown session state {value}"))),
    }
}

pub fn page_size(requested: u32) -> usize {
    match usize::try_from(requested) {
        Ok(0) => DEFAULT_PAGE_SIZE,
        Ok(n) => n.min(MAX_PAGE_SIZE),
        Err(_) => MAX_PAGE_SIZE,
    }
}

/// The token for the page after `last_call_id`.
pub fn page_token(last_call_id: &str) -> String {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut token = String::with_capacity(PAGE_TOKEN_PREFIX.len() + 2 * last_call_id.len());
    token.push_str(PAGE_TOKEN_PREFIX);
    for b in last_call_id.bytes() {
        token.push(char::from(HEX[usize::from(b >> 4)]));
        token.push(char::from(HEX[usize::from(b & 0xf)]));
    }
    token
}

/// The call-id a page token continues after; None for the first page.
pub fn parse_page_token(token: &str) -> Result<Option<String>, Status> {
    if token.is_empty() {
        return Ok(None);
    }
    let bad = || invalid("page_token is not one this relay issued");
    let hex = token.strip_prefix(PAGE_TOKEN_PREFIX).ok_or_else(bad)?;
    if hex.is_empty()
        || hex.len() % 2 != 0
        || hex.len() > 2 * MAX_ID_LEN
        || !hex.bytes().all(|b| b.is_ascii_hexdigit())
    {
        return Err(bad());
    }
    let bytes = hex
        .as_bytes()
        .chunks(2)
        .map(|pair| {
            std::str::from_utf8(pair)
                .ok()
                .and_then(|s| u8::from_str_radix(s, 16).ok())
        })
        .collect::<Option<Vec<u8>>>()
        .ok_or_else(bad)?;
    String::from_utf8(bytes).map(Some).map_err(|_| bad())
}

/// Maps a core error; `kind` and `context` say what was being done, for the message.
pub fn update_error(e: CoreError, kind: UpdateKind, call_id: &str, index: u32) -> Status {
    match e {
        CoreError::NotFound if kind == UpdateKind::Answer => Status::failed_precondition(format!(
            "answer before offer: call `{call_id}` has no offered stream {index} with these tags"
        )),
        e => core_error(e, &format!("stream {index}: ")),
    }
}

/// Maps a core error to a status; `prefix` goes before the core's message.
pub fn core_error(e: CoreError, prefix: &str) -> Status {
    let message = format!("{prefix}{e}");
    match e {
        CoreError::NotFound => Status::not_found(message),
        CoreError::Invalid(m) => Status::invalid_argument(format!("{prefix}{m}")),
        CoreError::NoInterface(_) | CoreError::NoInterfaceForFamily { .. } => {
            Status::invalid_argument(message)
        }
        CoreError::PortsExhausted { .. } | CoreError::SessionLimit(_) => {
            Status::resource_exhausted(message)
        }
        CoreError::Socket { ref source, .. } if is_resource_error(source) => {
            Status::resource_exhausted(message)
        }
        CoreError::Socket { .. } => Status::internal(message),
        CoreError::Unavailable => Status::unavailable(message),
    }
}

fn is_resource_error(e: &std::io::Error) -> bool {
    e.kind() == std::io::ErrorKind::AddrInUse
        || matches!(
            e.raw_os_error(),
            Some(libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM)
        )
}

pub fn allocated(index: u32, reply: &UpdateReply) -> pb::AllocatedStream {
    pb::AllocatedStream {
        index,
        address: reply.address.to_string(),
        rtp_port: u32::from(reply.rtp_port),
        rtcp_port: u32::from(reply.rtcp_port),
        stream_id: reply.stream,
    }
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

fn socket_address(addr: SocketAddr) -> pb::SocketAddress {
    pb::SocketAddress {
        ip: addr.ip().to_string(),
        port: u32::from(addr.port()),
    }
}

fn session_state(state: SessionState) -> pb::SessionState {
    match state {
        SessionState::Offered => pb::SessionState::Offered,
        SessionState::Answered => pb::SessionState::Answered,
    }
}

/// `now_ns` is the current `crate::clock` time, for the idle times.
pub fn session(info: &SessionInfo, now_ns: u64) -> pb::Session {
    pb::Session {
        call_id: info.call_id.clone(),
        state: session_state(info.state()) as i32,
        age_ms: millis(info.age),
        remaining_ms: millis(info.ttl),
        setup_timeout_ms: millis(info.setup_timeout),
        media_timeout_ms: millis(info.media_timeout),
        labels: info
            .labels
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect(),
        streams: info.streams.iter().map(|s| stream(s, now_ns)).collect(),
    }
}

fn stream(s: &StreamInfo, now_ns: u64) -> pb::Stream {
    pb::Stream {
        id: s.id,
        index: s.media_index,
        legs: s.legs.iter().map(|l| leg(l, now_ns)).collect(),
    }
}

fn leg(l: &LegInfo, now_ns: u64) -> pb::Leg {
    let c = &l.counters;
    pb::Leg {
        tag: l.tag.clone().unwrap_or_default(),
        interface: l.interface.clone().unwrap_or_default(),
        local_rtp: l.local.map(socket_address),
        advertised_address: l.advertised.map(|a| a.to_string()).unwrap_or_default(),
        sdp_rtp: l.remote.map(socket_address),
        latched_rtp: l.latched_rtp.map(socket_address),
        latched_rtcp: l.latched_rtcp.map(socket_address),
        path: if c.offloaded {
            pb::ForwardingPath::Kernel
        } else {
            pb::ForwardingPath::Userspace
        } as i32,
        counters: Some(pb::LegCounters {
            rx_packets: c.rx_packets,
            rx_bytes: c.rx_bytes,
            tx_packets: c.tx_packets,
            tx_bytes: c.tx_bytes,
            dropped: Some(pb::DropCounters {
                source: c.dropped_source,
                no_destination: c.dropped_no_destination,
                overflow: c.dropped_overflow,
                send: c.dropped_send,
            }),
            non_rtp: c.non_rtp,
            rtp_expected: c.rtp_expected,
            rtp_lost: c.rtp_lost,
            rtp_out_of_order: c.rtp_out_of_order,
            jitter_ms: c.rtp_jitter_us as f64 / 1000.0,
            idle_ms: (c.last_rx_ns != 0).then(|| now_ns.saturating_sub(c.last_rx_ns) / 1_000_000),
        }),
    }
}

pub fn stats(s: &CoreStats) -> pb::GetStatsResponse {
    let c = &s.counters;
    pb::GetStatsResponse {
        sessions: Some(pb::SessionCounters {
            created: c.sessions_created,
            deleted: c.sessions_deleted,
            setup_timeout: c.sessions_setup_timeout,
            media_timeout: c.sessions_media_timeout,
            ttl: c.sessions_ttl,
            active: s.sessions as u64,
            streams_active: s.streams as u64,
        }),
        datapath: Some(pb::DatapathCounters {
            packets_received: s.datapath.received,
            packets_forwarded: s.datapath.forwarded,
            dropped_oversize: s.datapath.dropped_oversize,
            streams: s.datapath.streams,
        }),
        port_pools: s
            .ports
            .iter()
            .map(|(name, u)| pb::PortPool {
                interface: name.clone(),
                total: u.total as u64,
                in_use: u.in_use as u64,
                quarantined: u.quarantined as u64,
                available: u.total.saturating_sub(u.in_use + u.quarantined) as u64,
            })
            .collect(),
    }
}

pub fn event_call_id(e: &SessionEvent) -> &str {
    match e {
        SessionEvent::Created { call_id }
        | SessionEvent::Answered { call_id }
        | SessionEvent::Latched { call_id, .. }
        | SessionEvent::Ended { call_id, .. }
        | SessionEvent::Offloaded { call_id, .. } => call_id,
    }
}

pub fn event(e: &SessionEvent, at: SystemTime) -> pb::Event {
    let mut out = pb::Event {
        call_id: event_call_id(e).to_owned(),
        unix_time_ms: at
            .duration_since(UNIX_EPOCH)
            .map(millis)
            .unwrap_or_default(),
        ..pb::Event::default()
    };
    match e {
        SessionEvent::Created { .. } => out.set_kind(pb::EventKind::Created),
        SessionEvent::Answered { .. } => out.set_kind(pb::EventKind::Answered),
        SessionEvent::Latched {
            stream,
            leg,
            rtcp,
            addr,
            relatched,
            ..
        } => {
            out.set_kind(if *relatched {
                pb::EventKind::Relatched
            } else {
                pb::EventKind::Latched
            });
            out.stream_id = *stream;
            out.leg = u32::try_from(*leg).unwrap_or(u32::MAX);
            out.rtcp = *rtcp;
            out.address = Some(socket_address(*addr));
            out.relatched = *relatched;
        }
        SessionEvent::Offloaded { stream, leg, .. } => {
            out.set_kind(pb::EventKind::Offloaded);
            out.stream_id = *stream;
            out.leg = u32::try_from(*leg).unwrap_or(u32::MAX);
        }
        SessionEvent::Ended { reason, .. } => {
            out.set_kind(pb::EventKind::Ended);
            out.set_reason(match reason {
                EndReason::Deleted => pb::EndReason::Deleted,
                EndReason::SetupTimeout => pb::EndReason::SetupTimeout,
                EndReason::MediaTimeout => pb::EndReason::MediaTimeout,
                EndReason::Ttl => pb::EndReason::Ttl,
            });
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use tonic::Code;

    use super::*;
    use crate::ports::PortError;

    fn ms(index: u32, address: &str, rtp_port: u32) -> pb::MediaStream {
        pb::MediaStream {
            index,
            address: address.into(),
            rtp_port,
            rtcp_port: None,
            interface: None,
        }
    }

    fn code<T: std::fmt::Debug>(r: Result<T, Status>) -> Code {
        r.expect_err("an error").code()
    }

    #[test]
    fn ids() {
        assert_eq!(required_id("call_id", "c".into()).unwrap(), "c");
        assert_eq!(
            code(required_id("call_id", String::new())),
            Code::InvalidArgument
        );
        let long = "x".repeat(MAX_ID_LEN + 1);
        assert_eq!(
            code(required_id("call_id", long.clone())),
            Code::InvalidArgument
        );
        assert_eq!(
            code(optional_id("to_tag", Some(long))),
            Code::InvalidArgument
        );
        assert_eq!(optional_id("to_tag", Some(String::new())).unwrap(), None);
        assert_eq!(optional_id("to_tag", None).unwrap(), None);
    }

    #[test]
    fn streams_are_validated() {
        let ok = streams(&[
            ms(1, "192.0.2.1", 4000),
            pb::MediaStream {
                rtcp_port: Some(4100),
                interface: Some("pub".into()),
                ..ms(2, "2001:db8::1", 4002)
            },
            ms(3, "", 0),
            ms(4, "0.0.0.0", 4004),
            ms(5, "192.0.2.1", 0),
        ])
        .unwrap();
        assert_eq!(ok[0].remote, Some("192.0.2.1:4000".parse().unwrap()));
        assert_eq!(ok[0].remote_rtcp, None);
        assert!(!ok[0].ipv6);
        assert_eq!(
            ok[1].remote_rtcp,
            Some("[2001:db8::1]:4100".parse().unwrap())
        );
        assert!(ok[1].ipv6);
        assert_eq!(ok[1].interface, InterfaceSel::Named("pub".into()));
        // On hold / unknown: no remote.
        assert!(ok[2..].iter().all(|s| s.remote.is_none()));

        for bad in [
            vec![],
            vec![ms(0, "192.0.2.1", 4000)],
            vec![ms(1, "192.0.2.1", 4000), ms(1, "192.0.2.1", 4002)],
            vec![ms(1, "not-an-ip", 4000)],
            vec![ms(1, "[::1]", 4000)],
            vec![ms(1, "192.0.2.1", 65536)],
            vec![ms(1, "192.0.2.1", u32::MAX)],
            vec![ms(1, "192.0.2.1", 65535)],
            vec![pb::MediaStream {
                rtcp_port: Some(0),
                ..ms(1, "192.0.2.1", 4000)
            }],
            vec![pb::MediaStream {
                rtcp_port: Some(70000),
                ..ms(1, "192.0.2.1", 4000)
            }],
            vec![pb::MediaStream {
                interface: Some("i".repeat(300)),
                ..ms(1, "192.0.2.1", 4000)
            }],
            (1..=65).map(|i| ms(i, "192.0.2.1", 4000)).collect(),
        ] {
            assert_eq!(code(streams(&bad)), Code::InvalidArgument, "{bad:?}");
        }
    }

    #[test]
    fn options_and_labels() {
        let defaults = LatchPolicy::default();
        let (leg, session) = options(None, defaults).unwrap();
        assert_eq!(leg, LegOptions::default());
        assert_eq!(session, SessionOptions::default());

        let o = pb::SessionOptions {
            latch_mode: pb::LatchMode::Strict as i32,
            relatch: 0,
            dscp: Some(46),
            setup_timeout_seconds: Some(5),
            media_timeout_seconds: None,
            labels: [("tenant".to_owned(), "acme".to_owned())].into(),
        };
        let (leg, session) = options(Some(&o), defaults).unwrap();
        let latch = leg.latch.unwrap();
        assert_eq!(latch.mode, LatchMode::Strict);
        assert_eq!(
            latch.relatch, defaults.relatch,
            "unspecified half from config"
        );
        assert_eq!(leg.dscp, Some(46));
        assert_eq!(session.setup_timeout, Some(Duration::from_secs(5)));
        assert_eq!(session.media_timeout, None);
        assert_eq!(session.labels["tenant"], "acme");

        let bad = |f: fn(&mut pb::SessionOptions)| {
            let mut o = pb::SessionOptions::default();
            f(&mut o);
            code(options(Some(&o), defaults))
        };
        assert_eq!(bad(|o| o.latch_mode = 99), Code::InvalidArgument);
        assert_eq!(bad(|o| o.relatch = -1), Code::InvalidArgument);
        assert_eq!(bad(|o| o.dscp = Some(64)), Code::InvalidArgument);
        assert_eq!(bad(|o| o.dscp = Some(u32::MAX)), Code::InvalidArgument);
        assert_eq!(
            bad(|o| o.setup_timeout_seconds = Some(0)),
            Code::InvalidArgument
        );
        assert_eq!(
            bad(|o| o.media_timeout_seconds = Some(u32::MAX)),
            Code::InvalidArgument
        );
        assert_eq!(
            bad(|o| {
                o.labels.insert("bad key".into(), "v".into());
            }),
            Code::InvalidArgument
        );
        assert_eq!(
            bad(|o| {
                o.labels.insert(String::new(), "v".into());
            }),
            Code::InvalidArgument
        );
        assert_eq!(
            bad(|o| {
                o.labels.insert("k".into(), "a\nb".into());
            }),
            Code::InvalidArgument
        );
        assert_eq!(
            bad(|o| {
                o.labels
                    .insert("k".into(), "v".repeat(MAX_LABEL_VALUE_LEN + 1));
            }),
            Code::InvalidArgument
        );
        assert_eq!(
            bad(|o| {
                o.labels = (0..=MAX_LABELS)
                    .map(|i| (format!("k{i}"), String::new()))
                    .collect();
            }),
            Code::InvalidArgument
        );
        assert!(labels(&[("a.b/c-d_E9".to_owned(), "any value ü".to_owned())].into()).is_ok());
    }

    #[test]
    fn page_tokens_round_trip_and_reject_garbage() {
        for id in ["a", "call-1@host", "ü ∑ \u{1}", &"z".repeat(MAX_ID_LEN)] {
            assert_eq!(
                parse_page_token(&page_token(id)).unwrap().as_deref(),
                Some(id)
            );
        }
        assert_eq!(parse_page_token("").unwrap(), None);
        for bad in ["x", "p1.", "p1.6", "p1.zz", "p2.61", "p1.ff", "p1.+1"] {
            assert_eq!(code(parse_page_token(bad)), Code::InvalidArgument, "{bad}");
        }
        assert_eq!(page_size(0), DEFAULT_PAGE_SIZE);
        assert_eq!(page_size(7), 7);
        assert_eq!(page_size(u32::MAX), MAX_PAGE_SIZE);
        assert_eq!(state_filter(0).unwrap(), None);
        assert_eq!(state_filter(2).unwrap(), Some(SessionState::Answered));
        assert_eq!(code(state_filter(3)), Code::InvalidArgument);
    }

    #[test]
    fn error_codes() {
        let exhausted = PortError::Exhausted {
            total: 1,
            in_use: 1,
            quarantined: 0,
        };
        let socket = |e: std::io::Error| CoreError::Socket {
            addr: "127.0.0.1:4000".parse().unwrap(),
            source: e,
        };
        for (e, want) in [
            (CoreError::NotFound, Code::NotFound),
            (CoreError::Invalid("x".into()), Code::InvalidArgument),
            (
                CoreError::NoInterface("named `x`".into()),
                Code::InvalidArgument,
            ),
            (
                CoreError::NoInterfaceForFamily { ipv6: true },
                Code::InvalidArgument,
            ),
            (
                CoreError::PortsExhausted {
                    interface: "lo".into(),
                    source: exhausted,
                },
                Code::ResourceExhausted,
            ),
            (CoreError::SessionLimit(3), Code::ResourceExhausted),
            (
                socket(std::io::Error::from_raw_os_error(libc::EMFILE)),
                Code::ResourceExhausted,
            ),
            (
                socket(std::io::Error::from_raw_os_error(libc::EACCES)),
                Code::Internal,
            ),
            (CoreError::Unavailable, Code::Unavailable),
        ] {
            assert_eq!(core_error(e, "").code(), want);
        }
        let s = update_error(CoreError::NotFound, UpdateKind::Answer, "c1", 1);
        assert_eq!(s.code(), Code::FailedPrecondition);
        assert!(s.message().contains("answer before offer"));
        assert_eq!(
            update_error(CoreError::NotFound, UpdateKind::Offer, "c1", 1).code(),
            Code::NotFound
        );
        assert_eq!(
            update_error(CoreError::SessionLimit(1), UpdateKind::Answer, "c1", 1).code(),
            Code::ResourceExhausted
        );
    }

    #[test]
    fn events() {
        let at = UNIX_EPOCH + Duration::from_millis(1234);
        let e = event(
            &SessionEvent::Latched {
                call_id: "c".into(),
                stream: 7,
                leg: 1,
                rtcp: true,
                addr: "192.0.2.1:4001".parse().unwrap(),
                relatched: true,
            },
            at,
        );
        assert_eq!(e.kind(), pb::EventKind::Relatched);
        assert_eq!(
            (e.stream_id, e.leg, e.rtcp, e.relatched),
            (7, 1, true, true)
        );
        assert_eq!(e.unix_time_ms, 1234);
        assert_eq!(e.address.unwrap().port, 4001);
        let e = event(
            &SessionEvent::Ended {
                call_id: "c".into(),
                reason: EndReason::SetupTimeout,
                notify: None,
            },
            at,
        );
        assert_eq!(e.kind(), pb::EventKind::Ended);
        assert_eq!(e.reason(), pb::EndReason::SetupTimeout);
        assert_eq!(e.call_id, "c");
    }
}
