//! Executes parsed rtpproxy commands against the command core and builds the replies the
//! Kamailio and OpenSIPS modules expect.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Instant;

use super::proto::{
    self, Command, DEFAULT_QUERY_STATS, ErrorCode, InfoReply, LocalAddr, Reply, Side, StatValue,
    Symmetry, UpdateCommand,
};
use crate::control::core::{CoreHandle, CoreStats};
use crate::metrics::{ControlMetrics, Outcome, Protocol};
use crate::session::latch::{LatchMode, LatchPolicy};
use crate::session::table::SessionInfo;
use crate::session::{
    CoreError, InterfaceSel, LegOptions, Notify, SessionOptions, UpdateKind, UpdateRequest,
};

/// Interface names the `i`/`e` bridging modifiers select.
pub const INTERNAL_INTERFACE: &str = "internal";
pub const EXTERNAL_INTERFACE: &str = "external";

/// Capabilities (`VF` datestamps) Sluice implements; everything else is answered 0.
/// 20081224 (timeout notification) is added when a notify socket is configured.
const CAPABILITIES: &[&str] = &[
    "20040107", // basic protocol
    "20050322", // multiple streams per session, `;N` tags
    "20060704", // VF itself
    "20080403", // Q session statistics
    "20081102", // codec list in U/L (accepted; the relay is payload-agnostic)
    "20141004", // G with named counters
    "20150420", // sequence tracking, rtpa_* counters, extended Q
    "20230205", // rtpa_nlost
];
const NOTIFY_CAPABILITY: &str = "20081224";

#[derive(Debug, Default)]
pub struct CommandCounters {
    pub received: AtomicU64,
    pub succeeded: AtomicU64,
    pub errors: AtomicU64,
    /// Retransmissions answered from the reply cache.
    pub replayed: AtomicU64,
}

pub struct Handler {
    core: CoreHandle,
    latch: LatchPolicy,
    notify_socket: Option<String>,
    pub counters: CommandCounters,
    metrics: ControlMetrics,
}

impl Handler {
    pub fn new(core: CoreHandle, latch: LatchPolicy, notify_socket: Option<String>) -> Handler {
        Handler {
            core,
            latch,
            notify_socket,
            counters: CommandCounters::default(),
            metrics: ControlMetrics::default(),
        }
    }

    /// Records into `metrics` (the daemon's registered set) instead of a private one.
    pub fn with_metrics(mut self, metrics: ControlMetrics) -> Handler {
        self.metrics = metrics;
        self
    }

    pub fn metrics(&self) -> &ControlMetrics {
        &self.metrics
    }

    /// Runs one command; the reply is never absent (errors are `E<n>` replies).
    pub async fn execute(&self, command: Command) -> Reply {
        let started = Instant::now();
        self.counters.received.fetch_add(1, Relaxed);
        let name = command_name(&command);
        let unsupported = matches!(command, Command::Unsupported { .. });
        let reply = self.dispatch(command).await;
        let counter = if matches!(reply, Reply::Error(_)) {
            &self.counters.errors
        } else {
            &self.counters.succeeded
        };
        counter.fetch_add(1, Relaxed);
        let outcome = match &reply {
            _ if unsupported => Outcome::Unsupported,
            Reply::Error(code) => Outcome::from_rtpp(*code),
            // `L` for an unknown session: "not proxied".
            Reply::Port { port: 0, .. } => Outcome::NotFound,
            _ => Outcome::Ok,
        };
        self.metrics
            .observe(Protocol::Rtpp, name, outcome, started.elapsed());
        reply
    }

    /// A datagram or line that did not parse as a command.
    pub fn malformed(&self) {
        self.counters.received.fetch_add(1, Relaxed);
        self.counters.errors.fetch_add(1, Relaxed);
        self.metrics
            .count(Protocol::Rtpp, "malformed", Outcome::Invalid);
    }

    async fn dispatch(&self, command: Command) -> Reply {
        match command {
            Command::Update(cmd) => self.update(cmd, UpdateKind::Offer).await,
            Command::Lookup(cmd) => self.update(cmd, UpdateKind::Answer).await,
            Command::Delete {
                call_id,
                from_tag,
                to_tag,
                ..
            } => {
                let media_index = from_tag
                    .media_index
                    .or(to_tag.as_ref().and_then(|t| t.media_index));
                match self
                    .core
                    .delete(
                        call_id,
                        Some(from_tag.name),
                        to_tag.map(|t| t.name),
                        media_index,
                    )
                    .await
                {
                    Ok(()) => Reply::Ok,
                    Err(e) => Reply::Error(error_code(&e, false)),
                }
            }
            Command::Query {
                verbose,
                call_id,
                from_tag,
                to_tag,
                stats,
            } => self.query(verbose, call_id, from_tag, to_tag, stats).await,
            Command::Version => Reply::Version,
            Command::VersionFeature(date) => Reply::Feature(
                CAPABILITIES.contains(&date.as_str())
                    || (date == NOTIFY_CAPABILITY && self.notify_socket.is_some()),
            ),
            Command::Info { .. } => match self.core.stats().await {
                Ok(stats) => Reply::Info(InfoReply {
                    sessions_created: stats.counters.sessions_created,
                    active_sessions: stats.sessions as u64,
                    active_streams: stats.streams as u64,
                    packets_received: stats.datapath.received,
                    packets_transmitted: stats.datapath.forwarded,
                    average_load: None,
                }),
                Err(e) => Reply::Error(error_code(&e, false)),
            },
            Command::GlobalStats { verbose, names } => match self.core.stats().await {
                Ok(stats) => self.global_stats(verbose, &names, &stats),
                Err(e) => Reply::Error(error_code(&e, false)),
            },
            Command::DeleteAll => match self.core.delete_all().await {
                Ok(_) => Reply::Ok,
                Err(e) => Reply::Error(error_code(&e, false)),
            },
            Command::Unsupported { command } => Reply::Error(ErrorCode::for_unsupported(command)),
        }
    }

    async fn update(&self, cmd: UpdateCommand, kind: UpdateKind) -> Reply {
        let creating = kind == UpdateKind::Offer;
        if cmd.notify.is_some() && self.notify_socket.is_none() {
            return Reply::Error(ErrorCode::NotifyDisabled);
        }
        // rtpproxy answers E11/E12 when bridging is asked of a relay without both sides.
        let bridge_error = cmd.modifiers.bridge_error();
        let interface = interface_selection(&cmd);
        // `U` carries the SDP of the from-tag's endpoint; `L` that of the to-tag's endpoint
        // (Kamailio swaps the tags when the offer is in a reply or the answer in a request, so
        // this holds in every direction).
        let (own, other) = match (kind, cmd.to_tag) {
            (UpdateKind::Answer, Some(to)) => (to, Some(cmd.from_tag)),
            (_, to) => (cmd.from_tag, to),
        };
        let media_index = own
            .media_index
            .or(other.as_ref().and_then(|t| t.media_index))
            .unwrap_or(1);
        let latch = match cmd.modifiers.symmetry {
            Some(Symmetry::Asymmetric) => LatchPolicy {
                mode: LatchMode::Asymmetric,
                ..self.latch
            },
            _ => self.latch,
        };
        let request = UpdateRequest {
            kind,
            call_id: cmd.call_id,
            from_tag: own.name,
            to_tag: other.map(|t| t.name),
            media_index,
            // Port 0 is a disabled m-line: nothing to send to.
            remote: cmd
                .remote
                .ip
                .filter(|_| cmd.remote.port != 0)
                .map(|ip| SocketAddr::new(ip, cmd.remote.port)),
            remote_rtcp: None,
            ipv6: cmd.modifiers.ipv6,
            interface,
            options: LegOptions {
                latch: Some(latch),
                dscp: None,
            },
            notify: cmd.notify.map(|n| Notify {
                socket: n.socket,
                tag: n.tag,
            }),
            session: SessionOptions::default(),
        };
        match self.core.update(request).await {
            Ok(reply) => Reply::Port {
                port: reply.rtp_port,
                addr: Some(reply.address),
            },
            // `L` for an unknown session is not an error for the modules: "not proxied".
            Err(CoreError::NotFound) if !creating => Reply::Port {
                port: 0,
                addr: None,
            },
            Err(e) => {
                // Resource trouble is the operator's business; a bad request is the client's.
                match e {
                    CoreError::PortsExhausted { .. }
                    | CoreError::Socket { .. }
                    | CoreError::SessionLimit(_) => {
                        tracing::warn!(error = %e, "rtpproxy offer/answer failed")
                    }
                    _ => tracing::debug!(error = %e, "rtpproxy offer/answer refused"),
                }
                Reply::Error(match (&e, bridge_error) {
                    (CoreError::NoInterface(_), Some(code)) => code,
                    _ => error_code(&e, creating),
                })
            }
        }
    }

    async fn query(
        &self,
        verbose: bool,
        call_id: String,
        from_tag: proto::Tag,
        to_tag: Option<proto::Tag>,
        names: Vec<String>,
    ) -> Reply {
        if let Some(bad) = names.iter().find(|n| !proto::is_known_query_stat(n)) {
            tracing::debug!(stat = %bad, "unknown Q statistic");
            return Reply::Error(ErrorCode::QueryFailed);
        }
        let session = match self.core.get(call_id).await {
            Ok(Some(s)) => s,
            Ok(None) => return Reply::Error(ErrorCode::SessionNotFound),
            Err(e) => return Reply::Error(error_code(&e, false)),
        };
        let Some(q) = QueryTotals::collect(&session, &from_tag, to_tag.as_ref()) else {
            return Reply::Error(ErrorCode::SessionNotFound);
        };
        let names: Vec<String> = if names.is_empty() {
            DEFAULT_QUERY_STATS
                .iter()
                .map(|s| (*s).to_owned())
                .collect()
        } else {
            names
        };
        let stats = names
            .into_iter()
            .map(|name| {
                let value = q.value(&name);
                (name, value)
            })
            .collect();
        Reply::Query { verbose, stats }
    }

    fn global_stats(&self, verbose: bool, names: &[String], stats: &CoreStats) -> Reply {
        if let Some(bad) = names.iter().find(|n| !proto::is_known_global_stat(n)) {
            tracing::debug!(stat = %bad, "unknown G counter");
            return Reply::Error(ErrorCode::StatsFailed);
        }
        let names: Vec<&str> = if names.is_empty() {
            proto::GLOBAL_STATS.to_vec()
        } else {
            names.iter().map(String::as_str).collect()
        };
        let c = &stats.counters;
        let cmds = &self.counters;
        let value = |name: &str| -> StatValue {
            StatValue::Count(match name {
                "nsess_created" => c.sessions_created,
                "nsess_destroyed" => c.ended(),
                "nsess_timeout" => {
                    c.sessions_setup_timeout + c.sessions_media_timeout + c.sessions_ttl
                }
                "nsess_nortp" => c.sessions_setup_timeout,
                "npkts_rcvd" => stats.datapath.received,
                "npkts_relayed" => stats.datapath.forwarded,
                "npkts_discard" => stats
                    .datapath
                    .received
                    .saturating_sub(stats.datapath.forwarded),
                "ncmds_rcvd" => cmds.received.load(Relaxed),
                "ncmds_succd" => cmds.succeeded.load(Relaxed),
                "ncmds_errs" => cmds.errors.load(Relaxed),
                "ncmds_repld" => cmds.replayed.load(Relaxed),
                // Players, resizers, per-direction RTP/RTCP session outcomes and durations are
                // not tracked by Sluice.
                _ => 0,
            })
        };
        Reply::GlobalStats {
            verbose,
            stats: names
                .into_iter()
                .map(|n| (n.to_owned(), value(n)))
                .collect(),
        }
    }
}

/// `Q` numbers over the streams the tags select, oriented so that "a" is the from-tag's side.
struct QueryTotals {
    ttl: u64,
    from_a: u64,
    from_o: u64,
    relayed: u64,
    dropped: u64,
    rtp_lost: i64,
    rtp_expected: u64,
    jitter_ms: f64,
}

impl QueryTotals {
    fn collect(
        session: &SessionInfo,
        from: &proto::Tag,
        to: Option<&proto::Tag>,
    ) -> Option<QueryTotals> {
        let mut q = QueryTotals {
            ttl: session.ttl.as_secs(),
            from_a: 0,
            from_o: 0,
            relayed: 0,
            dropped: 0,
            rtp_lost: 0,
            rtp_expected: 0,
            jitter_ms: 0.0,
        };
        let index = from.media_index.or(to.and_then(|t| t.media_index));
        let mut matched = false;
        for stream in &session.streams {
            if index.is_some_and(|i| i != stream.media_index) {
                continue;
            }
            let Some(a) = stream
                .legs
                .iter()
                .position(|l| l.tag.as_deref() == Some(from.name.as_str()))
            else {
                continue;
            };
            let o = 1 - a;
            if to.is_some_and(|t| {
                stream.legs[o]
                    .tag
                    .as_deref()
                    .is_some_and(|tag| tag != t.name)
            }) {
                continue;
            }
            matched = true;
            let (la, lo) = (&stream.legs[a].counters, &stream.legs[o].counters);
            q.from_a += la.rx_packets;
            q.from_o += lo.rx_packets;
            q.relayed += la.tx_packets + lo.tx_packets;
            q.dropped += la.dropped() + lo.dropped();
            q.rtp_lost += la.rtp_lost;
            q.rtp_expected += la.rtp_expected;
            q.jitter_ms = q.jitter_ms.max(la.rtp_jitter_us as f64 / 1000.0);
        }
        matched.then_some(q)
    }

    fn value(&self, name: &str) -> StatValue {
        match name {
            "ttl" => StatValue::Int(i64::try_from(self.ttl).unwrap_or(i64::MAX)),
            "npkts_ina" => StatValue::Count(self.from_a),
            "npkts_ino" => StatValue::Count(self.from_o),
            "nrelayed" => StatValue::Count(self.relayed),
            "ndropped" => StatValue::Count(self.dropped),
            "rtpa_nrcvd" => StatValue::Count(self.from_a),
            "rtpa_nlost" => StatValue::Count(u64::try_from(self.rtp_lost).unwrap_or(0)),
            "rtpa_nsent" => StatValue::Count(self.rtp_expected),
            "rtpa_jlast" | "rtpa_jmax" | "rtpa_javg" => StatValue::Float(self.jitter_ms),
            // longest_ipi, rtpa_ndups, rtpa_perrs are not tracked.
            "longest_ipi" => StatValue::Float(0.0),
            _ => StatValue::Count(0),
        }
    }
}

/// The `command` label: the same names as the gRPC methods where they mean the same thing.
fn command_name(command: &Command) -> &'static str {
    match command {
        Command::Update(_) => "offer",
        Command::Lookup(_) => "answer",
        Command::Delete { .. } => "delete",
        Command::Query { .. } => "query",
        Command::Version | Command::VersionFeature(_) => "version",
        Command::Info { .. } => "info",
        Command::GlobalStats { .. } => "stats",
        Command::DeleteAll => "delete_all",
        Command::Unsupported { .. } => "unsupported",
    }
}

fn interface_selection(cmd: &UpdateCommand) -> InterfaceSel {
    // The allocated leg faces the *other* endpoint: rtpproxy gives the second bridge letter to
    // that side (the first one when only one is sent).
    if let Some(side) = cmd.modifiers.bridge.get(1).or(cmd.modifiers.bridge.first()) {
        return InterfaceSel::Named(
            match side {
                Side::Internal => INTERNAL_INTERFACE,
                Side::External => EXTERNAL_INTERFACE,
            }
            .to_owned(),
        );
    }
    match &cmd.modifiers.local {
        Some(LocalAddr::Addr(ip)) => InterfaceSel::Address(*ip),
        Some(LocalAddr::Label(label)) => InterfaceSel::Named(label.clone()),
        // The routed choice needs a route lookup; the family is what matters for a relay with
        // one interface per family.
        Some(LocalAddr::RouteTo(_)) | None => InterfaceSel::Auto,
    }
}

fn error_code(e: &CoreError, creating: bool) -> ErrorCode {
    match e {
        CoreError::NotFound => ErrorCode::SessionNotFound,
        CoreError::NoInterfaceForFamily { .. } => ErrorCode::NoLocalAddrForFamily,
        CoreError::NoInterface(_) => ErrorCode::InvalidLocalAddr,
        CoreError::PortsExhausted { .. } | CoreError::Socket { .. } if creating => {
            ErrorCode::SessionCreateFailed
        }
        CoreError::PortsExhausted { .. } | CoreError::Socket { .. } => ErrorCode::ListenerFailed,
        CoreError::SessionLimit(_) => ErrorCode::Overloaded,
        CoreError::Invalid(_) => ErrorCode::InvalidRemoteAddr,
        CoreError::Unavailable => ErrorCode::SlowShutdown,
    }
}
