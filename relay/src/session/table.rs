//! The session table: the one owner of every session. Front ends (rtpproxy protocol, gRPC)
//! call it through the command core; it allocates ports, opens sockets through a [`LegOpener`]
//! and returns [`Action`]s for the datapath. Timers run on a [`TimerWheel`].
//!
//! Model: a session (call-id) has streams (SDP m-lines, rtpproxy's `;N` tag suffix); a stream
//! has two legs, one facing each endpoint. A leg has a local RTP/RTCP port pair (the address the
//! *other* side's SDP does not see: the one its own endpoint sends to) and a remote address
//! (from SDP, then latched). An update names the endpoint it comes from by its tag: that leg
//! learns the SDP address, and the reply carries the local port of the opposite leg, which is
//! what goes into the SDP sent to the other endpoint. So an offer (caller's tag, caller's
//! address) allocates the callee-facing leg, and an answer (callee's tag first, as the SIP
//! proxies send it) allocates the caller-facing one.

use std::collections::{BTreeMap, HashMap};
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::latch::LatchPolicy;
use super::offload::{FlowSpec, LegView, stream_flows};
use super::stats::{LegSnapshot, StreamShared};
use super::timer::TimerWheel;
use crate::ports::{PoolUsage, PortError, PortPair, PortPool};

pub type StreamId = u64;

/// Attempts to find a bindable pair when ports of the range are taken by other programs.
const BIND_ATTEMPTS: usize = 16;

/// Longest per-session setup or media timeout an update may ask for (one week).
pub const MAX_SESSION_TIMEOUT: Duration = Duration::from_secs(7 * 24 * 3600);

/// Binds the sockets of a port pair. The datapath implements it with real UDP sockets; tests
/// use a fake. `AddrInUse` makes the table try another pair.
pub trait LegOpener {
    type Sockets;
    fn open(&mut self, local: IpAddr, pair: PortPair, dscp: u8) -> io::Result<Self::Sockets>;
}

#[derive(Debug, Clone)]
pub struct InterfaceSpec {
    pub name: String,
    pub address: IpAddr,
    pub advertise: Option<IpAddr>,
    pub port_min: u16,
    pub port_max: u16,
}

#[derive(Debug, Clone)]
pub struct TableConfig {
    pub interfaces: Vec<InterfaceSpec>,
    pub quarantine: Duration,
    pub latch: LatchPolicy,
    pub dscp: u8,
    pub setup_timeout: Duration,
    pub media_timeout: Duration,
    pub session_ttl: Option<Duration>,
    /// 0 = unlimited.
    pub max_sessions: usize,
    pub workers: usize,
    /// A kernel fast path is active: emit [`Action::Offload`] when a stream's latching changes.
    pub offload: bool,
}

/// Which interface the allocated leg goes on.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum InterfaceSel {
    /// The first interface of the remote's address family (IPv4 unless told otherwise).
    #[default]
    Auto,
    Named(String),
    Address(IpAddr),
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LegOptions {
    /// None = the session's (as an earlier update of the call set it), else the configured
    /// policy.
    pub latch: Option<LatchPolicy>,
    /// DSCP of the packets sent from the port pair this update opens; None = the session's,
    /// else the configured one.
    pub dscp: Option<u8>,
}

/// Where to report a timeout (rtpproxy `notify_socket notify_tag`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Notify {
    pub socket: String,
    pub tag: String,
}

/// Per-session settings an update may carry (gRPC `Offer`/`Answer` options; the rtpproxy
/// protocol has none of these and sends the default).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SessionOptions {
    /// Merged into the session's labels: a key given again replaces its value, keys not given
    /// keep theirs. Labels only describe the session (listing filters); the relay ignores them.
    pub labels: BTreeMap<String, String>,
    /// Replaces the configured setup timeout for this session.
    pub setup_timeout: Option<Duration>,
    /// Replaces the configured media timeout for this session.
    pub media_timeout: Option<Duration>,
}

/// Where a session is in the offer/answer exchange.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SessionState {
    /// Offered, not every leg has its ports yet (the setup timeout applies).
    Offered,
    /// Both legs of a stream have ports (the media timeout applies).
    Answered,
}

impl SessionState {
    pub fn as_str(self) -> &'static str {
        match self {
            SessionState::Offered => "offered",
            SessionState::Answered => "answered",
        }
    }
}

/// Which sessions [`Table::list_page`] returns.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SessionFilter {
    /// Only sessions in this state; None = any.
    pub state: Option<SessionState>,
    /// Only sessions carrying every one of these labels with exactly these values.
    pub labels: BTreeMap<String, String>,
    /// Only call-ids ordered after this one (byte order): the paging cursor.
    pub after: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UpdateKind {
    /// May create the session (rtpproxy `U`, gRPC `Offer`).
    Offer,
    /// Never creates (rtpproxy `L`, gRPC `Answer`).
    Answer,
}

#[derive(Debug, Clone)]
pub struct UpdateRequest {
    pub kind: UpdateKind,
    pub call_id: String,
    /// Tag of the endpoint whose SDP this is.
    pub from_tag: String,
    /// Tag of the other endpoint, when known.
    pub to_tag: Option<String>,
    /// SDP m-line number, 1-based.
    pub media_index: u32,
    /// The endpoint's SDP address; None = on hold / not given.
    pub remote: Option<SocketAddr>,
    /// Explicit RTCP address (a=rtcp); None = RTP port + 1.
    pub remote_rtcp: Option<SocketAddr>,
    /// Address family wanted for the allocated leg when `remote` does not say (rtpproxy `6`).
    pub ipv6: bool,
    pub interface: InterfaceSel,
    pub options: LegOptions,
    pub notify: Option<Notify>,
    /// Labels and timeout overrides for the whole session.
    pub session: SessionOptions,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UpdateReply {
    pub stream: StreamId,
    /// Address to advertise in SDP.
    pub address: IpAddr,
    pub rtp_port: u16,
    pub rtcp_port: u16,
}

#[derive(Debug, thiserror::Error)]
pub enum CoreError {
    #[error("session not found")]
    NotFound,
    #[error("no media interface {0}")]
    NoInterface(String),
    #[error("no {} media interface", if *.ipv6 { "IPv6" } else { "IPv4" })]
    NoInterfaceForFamily { ipv6: bool },
    #[error("interface {interface}: {source}")]
    PortsExhausted {
        interface: String,
        source: PortError,
    },
    #[error("session limit ({0}) reached")]
    SessionLimit(usize),
    #[error("cannot open media sockets on {addr}: {source}")]
    Socket { addr: SocketAddr, source: io::Error },
    #[error("invalid argument: {0}")]
    Invalid(String),
    #[error("the relay is shutting down")]
    Unavailable,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum EndReason {
    Deleted,
    SetupTimeout,
    MediaTimeout,
    Ttl,
}

impl EndReason {
    pub fn as_str(self) -> &'static str {
        match self {
            EndReason::Deleted => "deleted",
            EndReason::SetupTimeout => "setup_timeout",
            EndReason::MediaTimeout => "media_timeout",
            EndReason::Ttl => "ttl",
        }
    }

    pub fn is_timeout(self) -> bool {
        self != EndReason::Deleted
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SessionEvent {
    Created {
        call_id: String,
    },
    Answered {
        call_id: String,
    },
    Latched {
        call_id: String,
        stream: StreamId,
        leg: usize,
        rtcp: bool,
        addr: SocketAddr,
        relatched: bool,
    },
    Ended {
        call_id: String,
        reason: EndReason,
        notify: Option<Notify>,
    },
    /// A leg's RTP is forwarded by the kernel fast path from now on.
    Offloaded {
        call_id: String,
        stream: StreamId,
        leg: usize,
    },
}

/// What the IO shell must do after a table call.
#[derive(Debug)]
pub enum Action<S> {
    /// Create or update one leg of a stream on `worker`.
    Leg {
        worker: usize,
        update: LegUpdate<S>,
    },
    /// Close the stream's sockets (its ports are already back in quarantine).
    Remove {
        stream: StreamId,
        worker: usize,
    },
    Event(SessionEvent),
    /// The flows the kernel fast path should forward for a stream now (the whole set: flows
    /// not listed are to be removed). Before [`Action::Remove`] of the same stream, the IO shell
    /// removes its flows itself.
    Offload {
        stream: StreamId,
        call_id: String,
        flows: Vec<FlowSpec>,
        shared: Arc<StreamShared>,
    },
}

/// One leg's full current state, as the datapath needs it.
#[derive(Debug)]
pub struct LegUpdate<S> {
    pub stream: StreamId,
    pub leg: usize,
    /// Set when the leg's local pair was just opened.
    pub sockets: Option<S>,
    pub remote: Option<SocketAddr>,
    pub remote_rtcp: Option<SocketAddr>,
    pub policy: LatchPolicy,
    pub shared: Arc<StreamShared>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct LegInfo {
    pub tag: Option<String>,
    pub interface: Option<String>,
    pub local: Option<SocketAddr>,
    pub advertised: Option<IpAddr>,
    pub remote: Option<SocketAddr>,
    pub latched_rtp: Option<SocketAddr>,
    pub latched_rtcp: Option<SocketAddr>,
    pub counters: LegSnapshot,
}

#[derive(Debug, Clone, PartialEq)]
pub struct StreamInfo {
    pub id: StreamId,
    pub media_index: u32,
    pub legs: [LegInfo; 2],
}

#[derive(Debug, Clone, PartialEq)]
pub struct SessionInfo {
    pub call_id: String,
    pub age: Duration,
    pub answered: bool,
    /// Time left before the media (or setup) timeout ends the session if nothing arrives.
    pub ttl: Duration,
    pub streams: Vec<StreamInfo>,
    pub labels: BTreeMap<String, String>,
    /// The setup and media timeouts in force for this session (configured or overridden).
    pub setup_timeout: Duration,
    pub media_timeout: Duration,
}

impl SessionInfo {
    pub fn state(&self) -> SessionState {
        if self.answered {
            SessionState::Answered
        } else {
            SessionState::Offered
        }
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TableCounters {
    pub sessions_created: u64,
    pub sessions_deleted: u64,
    pub sessions_setup_timeout: u64,
    pub sessions_media_timeout: u64,
    pub sessions_ttl: u64,
}

impl TableCounters {
    pub fn ended(&self) -> u64 {
        self.sessions_deleted
            + self.sessions_setup_timeout
            + self.sessions_media_timeout
            + self.sessions_ttl
    }
}

struct Interface {
    spec: InterfaceSpec,
    pool: PortPool,
}

/// The kernel flows `stream` should have now.
fn offload_action<S>(
    interfaces: &[Interface],
    call_id: &str,
    stream: &Stream,
    dscp: u8,
) -> Action<S> {
    let view = |l: &Leg| LegView {
        local_rtp: l.local.and_then(|(iface, pair)| {
            interfaces
                .get(iface)
                .map(|i| SocketAddr::new(i.spec.address, pair.rtp))
        }),
        latched_rtp: l.latched_rtp,
        latched_rtcp: l.latched_rtcp,
        policy: l.policy,
    };
    Action::Offload {
        stream: stream.id,
        call_id: call_id.to_owned(),
        flows: stream_flows(&[view(&stream.legs[0]), view(&stream.legs[1])], dscp),
        shared: stream.shared.clone(),
    }
}

#[derive(Debug, Clone)]
struct Leg {
    tag: Option<String>,
    local: Option<(usize, PortPair)>,
    remote: Option<SocketAddr>,
    remote_rtcp: Option<SocketAddr>,
    policy: LatchPolicy,
    latched_rtp: Option<SocketAddr>,
    latched_rtcp: Option<SocketAddr>,
}

struct Stream {
    id: StreamId,
    media_index: u32,
    worker: usize,
    legs: [Leg; 2],
    shared: Arc<StreamShared>,
}

struct Session {
    generation: u64,
    created: Instant,
    answered_at: Option<Instant>,
    streams: Vec<Stream>,
    notify: Option<Notify>,
    labels: BTreeMap<String, String>,
    setup_timeout: Duration,
    media_timeout: Duration,
    /// Latch policy and DSCP last asked for explicitly; later requests without them keep them.
    latch: Option<LatchPolicy>,
    dscp: Option<u8>,
}

impl Session {
    fn last_activity(&self) -> Instant {
        let last_ns = self
            .streams
            .iter()
            .map(|s| s.shared.last_rx_ns())
            .max()
            .unwrap_or(0);
        let start = self.answered_at.unwrap_or(self.created);
        if last_ns == 0 {
            start
        } else {
            crate::clock::from_ns(last_ns).max(start)
        }
    }

    fn state(&self) -> SessionState {
        if self.answered_at.is_some() {
            SessionState::Answered
        } else {
            SessionState::Offered
        }
    }

    fn matches(&self, filter: &SessionFilter) -> bool {
        filter.state.is_none_or(|s| s == self.state())
            && filter
                .labels
                .iter()
                .all(|(k, v)| self.labels.get(k) == Some(v))
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum TimerKind {
    Setup,
    Media,
    Ttl,
}

pub struct Table {
    config: TableConfig,
    interfaces: Vec<Interface>,
    sessions: HashMap<String, Session>,
    stream_owner: HashMap<StreamId, String>,
    timers: TimerWheel<(String, u64, TimerKind)>,
    next_stream: StreamId,
    next_generation: u64,
    counters: TableCounters,
}

impl Table {
    pub fn new(config: TableConfig, now: Instant) -> Table {
        let interfaces = config
            .interfaces
            .iter()
            .map(|spec| Interface {
                pool: PortPool::new(spec.port_min, spec.port_max, config.quarantine, now),
                spec: spec.clone(),
            })
            .collect();
        Table {
            interfaces,
            sessions: HashMap::new(),
            stream_owner: HashMap::new(),
            // 100 ms resolution is far below any timeout worth configuring; 4096 slots cover
            // ~7 minutes per revolution.
            timers: TimerWheel::new(Duration::from_millis(100), 4096, now),
            next_stream: 1,
            next_generation: 1,
            counters: TableCounters::default(),
            config,
        }
    }

    pub fn config(&self) -> &TableConfig {
        &self.config
    }

    pub fn counters(&self) -> TableCounters {
        self.counters
    }

    pub fn session_count(&self) -> usize {
        self.sessions.len()
    }

    pub fn stream_count(&self) -> usize {
        self.stream_owner.len()
    }

    /// Port usage per interface name.
    pub fn port_usage(&self, now: Instant) -> Vec<(String, PoolUsage)> {
        self.interfaces
            .iter()
            .map(|i| (i.spec.name.clone(), i.pool.usage(now)))
            .collect()
    }

    /// When the table next needs [`Table::tick`].
    pub fn next_tick_at(&self) -> Instant {
        self.timers.next_tick_at()
    }

    /// Offer or answer for one stream of a call (see the module doc for which leg is which).
    pub fn update<O: LegOpener>(
        &mut self,
        req: UpdateRequest,
        now: Instant,
        opener: &mut O,
        actions: &mut Vec<Action<O::Sockets>>,
    ) -> Result<UpdateReply, CoreError> {
        if req.call_id.is_empty() || req.from_tag.is_empty() {
            return Err(CoreError::Invalid(
                "call-id and from-tag are required".into(),
            ));
        }
        if req.remote.is_some_and(|r| r.port() == 0) {
            return Err(CoreError::Invalid("remote port 0".into()));
        }
        for (name, timeout) in [
            ("setup", req.session.setup_timeout),
            ("media", req.session.media_timeout),
        ] {
            if timeout.is_some_and(|t| t.is_zero() || t > MAX_SESSION_TIMEOUT) {
                return Err(CoreError::Invalid(format!(
                    "{name} timeout must be above zero and at most {} s",
                    MAX_SESSION_TIMEOUT.as_secs()
                )));
            }
        }
        let new_session = !self.sessions.contains_key(&req.call_id);
        if new_session {
            if req.kind == UpdateKind::Answer {
                return Err(CoreError::NotFound);
            }
            if self.config.max_sessions != 0 && self.sessions.len() >= self.config.max_sessions {
                return Err(CoreError::SessionLimit(self.config.max_sessions));
            }
        }

        let (stream_pos, facing) = match self
            .sessions
            .get(&req.call_id)
            .and_then(|s| find_stream(s, &req))
        {
            Some(found) => found,
            None if req.kind == UpdateKind::Answer => return Err(CoreError::NotFound),
            None => (None, 0),
        };
        let other = 1 - facing;
        // Leg options a request leaves out are the session's (set by an earlier request), else
        // the configured ones.
        let existing = self.sessions.get(&req.call_id);
        let policy = req
            .options
            .latch
            .or(existing.and_then(|s| s.latch))
            .unwrap_or(self.config.latch);
        let dscp = req
            .options
            .dscp
            .or(existing.and_then(|s| s.dscp))
            .unwrap_or(self.config.dscp);

        // Allocate the opposite leg's pair first: if that fails nothing has changed.
        let needs_local = match stream_pos {
            Some(pos) => self.sessions[&req.call_id].streams[pos].legs[other]
                .local
                .is_none(),
            None => true,
        };
        let opened = if needs_local {
            let family_v6 = req.remote.map_or(req.ipv6, |r| r.is_ipv6());
            let iface = self.select_interface(&req.interface, family_v6)?;
            Some(self.open_pair(iface, dscp, now, opener)?)
        } else {
            None
        };

        if new_session {
            self.create_session(&req, now, actions);
        }
        let session = self
            .sessions
            .get_mut(&req.call_id)
            .ok_or(CoreError::NotFound)?;
        if !new_session {
            apply_session_options(&req.call_id, session, &req.session, now, &mut self.timers);
        }
        if req.options.latch.is_some() {
            session.latch = req.options.latch;
        }
        if req.options.dscp.is_some() {
            session.dscp = req.options.dscp;
        }
        if req.notify.is_some() {
            session.notify.clone_from(&req.notify);
        }
        let pos = match stream_pos {
            Some(pos) => pos,
            None => {
                let id = self.next_stream;
                self.next_stream += 1;
                let leg = |tag: Option<&String>| Leg {
                    tag: tag.cloned(),
                    local: None,
                    remote: None,
                    remote_rtcp: None,
                    policy,
                    latched_rtp: None,
                    latched_rtcp: None,
                };
                session.streams.push(Stream {
                    id,
                    media_index: req.media_index,
                    worker: (id as usize) % self.config.workers.max(1),
                    legs: [leg(Some(&req.from_tag)), leg(req.to_tag.as_ref())],
                    shared: Arc::new(StreamShared::default()),
                });
                self.stream_owner.insert(id, req.call_id.clone());
                session.streams.len() - 1
            }
        };
        let stream = &mut session.streams[pos];
        let mut sockets = [None, None];
        if let Some((iface, pair, s)) = opened {
            stream.legs[other].local = Some((iface, pair));
            stream.legs[other].policy = policy;
            sockets[other] = Some(s);
        }
        {
            let leg = &mut stream.legs[facing];
            leg.tag.get_or_insert_with(|| req.from_tag.clone());
            if leg.remote != req.remote {
                // A real move (re-INVITE): the worker forgets the latch too (latch::Latch::update).
                leg.latched_rtp = None;
                leg.latched_rtcp = None;
            }
            leg.remote = req.remote;
            leg.remote_rtcp = req.remote_rtcp;
            leg.policy = policy;
        }
        if let Some(to) = &req.to_tag {
            stream.legs[other].tag = Some(to.clone());
        }
        // The facing leg always (its remote may have changed); the other leg when it got
        // sockets just now.
        for leg in [facing, other] {
            let s = sockets[leg].take();
            if leg == other && s.is_none() {
                continue;
            }
            let l = &stream.legs[leg];
            actions.push(Action::Leg {
                worker: stream.worker,
                update: LegUpdate {
                    stream: stream.id,
                    leg,
                    sockets: s,
                    remote: l.remote,
                    remote_rtcp: l.remote_rtcp,
                    policy: l.policy,
                    shared: stream.shared.clone(),
                },
            });
        }
        let (iface, pair) = stream.legs[other]
            .local
            .ok_or_else(|| CoreError::Invalid("leg without local ports".into()))?;
        let reply = UpdateReply {
            stream: stream.id,
            address: self.interfaces[iface].advertised(),
            rtp_port: pair.rtp,
            rtcp_port: pair.rtcp(),
        };
        let complete = stream.legs.iter().all(|l| l.local.is_some());
        if complete && session.answered_at.is_none() {
            session.answered_at = Some(now);
            let generation = session.generation;
            actions.push(Action::Event(SessionEvent::Answered {
                call_id: req.call_id.clone(),
            }));
            self.timers.insert(
                now + session.media_timeout,
                (req.call_id.clone(), generation, TimerKind::Media),
            );
        }
        if self.config.offload {
            let dscp = session.dscp.unwrap_or(self.config.dscp);
            actions.push(offload_action(
                &self.interfaces,
                &req.call_id,
                &session.streams[pos],
                dscp,
            ));
        }
        Ok(reply)
    }

    /// Deletes a whole call (`from_tag` None), or the streams whose legs carry the given tags
    /// (optionally only m-line `media_index`).
    pub fn delete<S>(
        &mut self,
        call_id: &str,
        from_tag: Option<&str>,
        to_tag: Option<&str>,
        media_index: Option<u32>,
        now: Instant,
        actions: &mut Vec<Action<S>>,
    ) -> Result<(), CoreError> {
        let session = self.sessions.get_mut(call_id).ok_or(CoreError::NotFound)?;
        let matches = |s: &Stream| {
            let has = |tag: &str| s.legs.iter().any(|l| l.tag.as_deref() == Some(tag));
            // A call rejected before the answer is deleted with the to-tag of the rejecting
            // response, which no leg has learned yet: an untagged leg matches any to-tag.
            let untagged = s.legs.iter().any(|l| l.tag.is_none());
            from_tag.is_none_or(has)
                && to_tag.is_none_or(|t| has(t) || untagged)
                && media_index.is_none_or(|i| i == s.media_index)
        };
        let before = session.streams.len();
        let mut removed = Vec::new();
        session.streams.retain_mut(|s| {
            if matches(s) {
                removed.push((s.id, s.worker, s.legs.clone()));
                false
            } else {
                true
            }
        });
        if removed.is_empty() && before > 0 {
            return Err(CoreError::NotFound);
        }
        let emptied = session.streams.is_empty();
        for (id, worker, legs) in removed {
            self.release_stream(id, worker, &legs, now, actions);
        }
        if emptied {
            self.end_session(call_id, EndReason::Deleted, now, actions);
        }
        Ok(())
    }

    /// Deletes every session (rtpproxy `X`).
    pub fn delete_all<S>(&mut self, now: Instant, actions: &mut Vec<Action<S>>) -> usize {
        let ids: Vec<String> = self.sessions.keys().cloned().collect();
        for id in &ids {
            self.end_session(id, EndReason::Deleted, now, actions);
        }
        ids.len()
    }

    /// A worker latched (or relatched) a leg.
    pub fn on_latched<S>(
        &mut self,
        stream: StreamId,
        leg: usize,
        rtcp: bool,
        addr: SocketAddr,
        actions: &mut Vec<Action<S>>,
    ) {
        let Some(call_id) = self.stream_owner.get(&stream) else {
            return; // deleted while the event was in flight
        };
        let Some(s) = self
            .sessions
            .get_mut(call_id)
            .and_then(|s| s.streams.iter_mut().find(|st| st.id == stream))
        else {
            return;
        };
        let Some(l) = s.legs.get_mut(leg) else {
            return;
        };
        let slot = if rtcp {
            &mut l.latched_rtcp
        } else {
            &mut l.latched_rtp
        };
        let relatched = slot.is_some();
        *slot = Some(addr);
        actions.push(Action::Event(SessionEvent::Latched {
            call_id: call_id.clone(),
            stream,
            leg,
            rtcp,
            addr,
            relatched,
        }));
        if self.config.offload {
            let session = &self.sessions[call_id];
            let dscp = session.dscp.unwrap_or(self.config.dscp);
            if let Some(s) = session.streams.iter().find(|st| st.id == stream) {
                actions.push(offload_action(&self.interfaces, call_id, s, dscp));
            }
        }
    }

    /// Fires due timers.
    pub fn tick<S>(&mut self, now: Instant, actions: &mut Vec<Action<S>>) {
        let mut due = Vec::new();
        self.timers.advance(now, &mut due);
        for (call_id, generation, kind) in due {
            let Some(session) = self.sessions.get(&call_id) else {
                continue;
            };
            if session.generation != generation {
                continue;
            }
            match kind {
                // A timer of a setup timeout since lengthened is not due yet (the update that
                // lengthened it scheduled another).
                TimerKind::Setup
                    if session.answered_at.is_none()
                        && now >= session.created + session.setup_timeout =>
                {
                    self.end_session(&call_id, EndReason::SetupTimeout, now, actions);
                }
                TimerKind::Setup => {}
                TimerKind::Ttl => self.end_session(&call_id, EndReason::Ttl, now, actions),
                TimerKind::Media => {
                    let idle_since = session.last_activity();
                    let deadline = idle_since + session.media_timeout;
                    if now >= deadline {
                        self.end_session(&call_id, EndReason::MediaTimeout, now, actions);
                    } else {
                        // Media arrived since: check again when it would be stale.
                        self.timers
                            .insert(deadline, (call_id, generation, TimerKind::Media));
                    }
                }
            }
        }
    }

    pub fn get(&self, call_id: &str, now: Instant) -> Option<SessionInfo> {
        let session = self.sessions.get(call_id)?;
        Some(self.info(call_id, session, now))
    }

    /// Every session, in no particular order.
    pub fn list(&self, now: Instant) -> Vec<SessionInfo> {
        self.sessions
            .iter()
            .map(|(id, s)| self.info(id, s, now))
            .collect()
    }

    /// Up to `limit` sessions matching `filter`, ordered by call-id (byte order), and whether
    /// more match after them. Only the returned sessions are snapshotted.
    pub fn list_page(
        &self,
        filter: &SessionFilter,
        limit: usize,
        now: Instant,
    ) -> (Vec<SessionInfo>, bool) {
        let mut ids: Vec<&String> = self
            .sessions
            .iter()
            .filter(|(id, s)| {
                filter.after.as_ref().is_none_or(|after| *id > after) && s.matches(filter)
            })
            .map(|(id, _)| id)
            .collect();
        let more = ids.len() > limit;
        if more {
            // Only the first `limit` in order are needed: partition, then sort those.
            ids.select_nth_unstable(limit);
            ids.truncate(limit);
        }
        ids.sort_unstable();
        let page = ids
            .into_iter()
            .filter_map(|id| self.sessions.get(id).map(|s| self.info(id, s, now)))
            .collect();
        (page, more)
    }

    fn info(&self, call_id: &str, session: &Session, now: Instant) -> SessionInfo {
        let ttl = match session.answered_at {
            Some(_) => {
                (session.last_activity() + session.media_timeout).saturating_duration_since(now)
            }
            None => (session.created + session.setup_timeout).saturating_duration_since(now),
        };
        SessionInfo {
            call_id: call_id.to_owned(),
            age: now.saturating_duration_since(session.created),
            answered: session.answered_at.is_some(),
            labels: session.labels.clone(),
            setup_timeout: session.setup_timeout,
            media_timeout: session.media_timeout,
            ttl,
            streams: session
                .streams
                .iter()
                .map(|s| StreamInfo {
                    id: s.id,
                    media_index: s.media_index,
                    legs: [0, 1].map(|i| self.leg_info(&s.legs[i], &s.shared, i)),
                })
                .collect(),
        }
    }

    fn leg_info(&self, leg: &Leg, shared: &StreamShared, i: usize) -> LegInfo {
        let iface = leg.local.and_then(|(iface, _)| self.interfaces.get(iface));
        LegInfo {
            tag: leg.tag.clone(),
            interface: iface.map(|f| f.spec.name.clone()),
            local: leg
                .local
                .zip(iface)
                .map(|((_, pair), f)| SocketAddr::new(f.spec.address, pair.rtp)),
            advertised: iface.map(Interface::advertised),
            remote: leg.remote,
            latched_rtp: leg.latched_rtp,
            latched_rtcp: leg.latched_rtcp,
            counters: shared.leg_snapshot(i),
        }
    }

    fn create_session<S>(
        &mut self,
        req: &UpdateRequest,
        now: Instant,
        actions: &mut Vec<Action<S>>,
    ) {
        let generation = self.next_generation;
        self.next_generation += 1;
        let setup_timeout = req
            .session
            .setup_timeout
            .unwrap_or(self.config.setup_timeout);
        self.sessions.insert(
            req.call_id.clone(),
            Session {
                generation,
                created: now,
                answered_at: None,
                streams: Vec::new(),
                notify: req.notify.clone(),
                labels: req.session.labels.clone(),
                latch: None,
                dscp: None,
                setup_timeout,
                media_timeout: req
                    .session
                    .media_timeout
                    .unwrap_or(self.config.media_timeout),
            },
        );
        self.counters.sessions_created += 1;
        self.timers.insert(
            now + setup_timeout,
            (req.call_id.clone(), generation, TimerKind::Setup),
        );
        if let Some(ttl) = self.config.session_ttl {
            self.timers
                .insert(now + ttl, (req.call_id.clone(), generation, TimerKind::Ttl));
        }
        actions.push(Action::Event(SessionEvent::Created {
            call_id: req.call_id.clone(),
        }));
    }

    fn end_session<S>(
        &mut self,
        call_id: &str,
        reason: EndReason,
        now: Instant,
        actions: &mut Vec<Action<S>>,
    ) {
        let Some(session) = self.sessions.remove(call_id) else {
            return;
        };
        for stream in &session.streams {
            self.release_stream(stream.id, stream.worker, &stream.legs, now, actions);
        }
        let c = &mut self.counters;
        match reason {
            EndReason::Deleted => c.sessions_deleted += 1,
            EndReason::SetupTimeout => c.sessions_setup_timeout += 1,
            EndReason::MediaTimeout => c.sessions_media_timeout += 1,
            EndReason::Ttl => c.sessions_ttl += 1,
        }
        actions.push(Action::Event(SessionEvent::Ended {
            call_id: call_id.to_owned(),
            reason,
            notify: if reason.is_timeout() {
                session.notify
            } else {
                None
            },
        }));
    }

    fn release_stream<S>(
        &mut self,
        id: StreamId,
        worker: usize,
        legs: &[Leg; 2],
        now: Instant,
        actions: &mut Vec<Action<S>>,
    ) {
        // Sockets close first (the worker drops them), ports wait in quarantine meanwhile.
        actions.push(Action::Remove { stream: id, worker });
        for (iface, pair) in legs.iter().filter_map(|l| l.local) {
            if let Some(i) = self.interfaces.get_mut(iface) {
                i.pool.release(pair, now);
            }
        }
        self.stream_owner.remove(&id);
    }

    fn select_interface(&self, sel: &InterfaceSel, v6: bool) -> Result<usize, CoreError> {
        let found = match sel {
            InterfaceSel::Auto => self
                .interfaces
                .iter()
                .position(|i| i.spec.address.is_ipv6() == v6),
            InterfaceSel::Named(name) => self.interfaces.iter().position(|i| &i.spec.name == name),
            InterfaceSel::Address(addr) => self
                .interfaces
                .iter()
                .position(|i| i.spec.address == *addr || i.spec.advertise == Some(*addr)),
        };
        found.ok_or_else(|| match sel {
            InterfaceSel::Auto => CoreError::NoInterfaceForFamily { ipv6: v6 },
            InterfaceSel::Named(name) => CoreError::NoInterface(format!("named `{name}`")),
            InterfaceSel::Address(addr) => CoreError::NoInterface(format!("with address {addr}")),
        })
    }

    fn open_pair<O: LegOpener>(
        &mut self,
        iface: usize,
        dscp: u8,
        now: Instant,
        opener: &mut O,
    ) -> Result<(usize, PortPair, O::Sockets), CoreError> {
        let interface = &mut self.interfaces[iface];
        let mut last_err = None;
        for _ in 0..BIND_ATTEMPTS {
            let pair =
                interface
                    .pool
                    .allocate(now)
                    .map_err(|source| CoreError::PortsExhausted {
                        interface: interface.spec.name.clone(),
                        source,
                    })?;
            match opener.open(interface.spec.address, pair, dscp) {
                Ok(sockets) => return Ok((iface, pair, sockets)),
                Err(e) => {
                    // Another program holds it (or it is being closed): let it cool down.
                    interface.pool.release(pair, now);
                    let addr = SocketAddr::new(interface.spec.address, pair.rtp);
                    if e.kind() != io::ErrorKind::AddrInUse {
                        return Err(CoreError::Socket { addr, source: e });
                    }
                    last_err = Some(CoreError::Socket { addr, source: e });
                }
            }
        }
        Err(last_err.unwrap_or_else(|| CoreError::Invalid("no bind attempt made".into())))
    }
}

impl Interface {
    fn advertised(&self) -> IpAddr {
        self.spec.advertise.unwrap_or(self.spec.address)
    }
}

/// An update to an existing session: merges its labels and applies changed timeouts, scheduling
/// a check at the new deadline (the timer at the old one re-checks and lets it pass).
fn apply_session_options(
    call_id: &str,
    session: &mut Session,
    options: &SessionOptions,
    now: Instant,
    timers: &mut TimerWheel<(String, u64, TimerKind)>,
) {
    for (k, v) in &options.labels {
        session.labels.insert(k.clone(), v.clone());
    }
    if let Some(t) = options.setup_timeout
        && t != session.setup_timeout
    {
        session.setup_timeout = t;
        if session.answered_at.is_none() {
            timers.insert(
                (session.created + t).max(now),
                (call_id.to_owned(), session.generation, TimerKind::Setup),
            );
        }
    }
    if let Some(t) = options.media_timeout
        && t != session.media_timeout
    {
        session.media_timeout = t;
        if session.answered_at.is_some() {
            timers.insert(
                (session.last_activity() + t).max(now),
                (call_id.to_owned(), session.generation, TimerKind::Media),
            );
        }
    }
}

/// The stream an update addresses, and which of its legs faces the sender: the leg carrying the
/// update's from-tag, or the opposite of the leg carrying its to-tag.
fn find_stream(session: &Session, req: &UpdateRequest) -> Option<(Option<usize>, usize)> {
    session
        .streams
        .iter()
        .enumerate()
        .filter(|(_, s)| s.media_index == req.media_index)
        .find_map(|(pos, s)| {
            let tag_at = |i: usize| s.legs[i].tag.as_deref();
            if let Some(i) = (0..2).find(|&i| tag_at(i) == Some(req.from_tag.as_str())) {
                return Some((Some(pos), i));
            }
            let to = req.to_tag.as_deref()?;
            (0..2)
                .find(|&i| tag_at(i) == Some(to))
                .map(|i| (Some(pos), 1 - i))
        })
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;
    use std::sync::atomic::Ordering::Relaxed;

    use super::*;

    #[derive(Default)]
    struct FakeOpener {
        taken: HashSet<u16>,
        opened: Vec<(IpAddr, u16, u8)>,
    }

    impl LegOpener for FakeOpener {
        type Sockets = u16;
        fn open(&mut self, local: IpAddr, pair: PortPair, dscp: u8) -> io::Result<u16> {
            if self.taken.contains(&pair.rtp) {
                return Err(io::ErrorKind::AddrInUse.into());
            }
            self.opened.push((local, pair.rtp, dscp));
            Ok(pair.rtp)
        }
    }

    fn config() -> TableConfig {
        TableConfig {
            interfaces: vec![
                InterfaceSpec {
                    name: "pub".into(),
                    address: "198.18.1.1".parse().unwrap(),
                    advertise: Some("203.0.113.1".parse().unwrap()),
                    port_min: 30000,
                    port_max: 30099,
                },
                InterfaceSpec {
                    name: "v6".into(),
                    address: "2001:2::1".parse().unwrap(),
                    advertise: None,
                    port_min: 40000,
                    port_max: 40099,
                },
            ],
            quarantine: Duration::from_secs(10),
            latch: LatchPolicy::default(),
            dscp: 46,
            setup_timeout: Duration::from_secs(30),
            media_timeout: Duration::from_secs(60),
            session_ttl: None,
            max_sessions: 0,
            workers: 2,
            offload: false,
        }
    }

    fn offer(call: &str, from: &str, remote: &str) -> UpdateRequest {
        UpdateRequest {
            kind: UpdateKind::Offer,
            call_id: call.into(),
            from_tag: from.into(),
            to_tag: None,
            media_index: 1,
            remote: Some(remote.parse().unwrap()),
            remote_rtcp: None,
            ipv6: false,
            interface: InterfaceSel::Auto,
            options: LegOptions::default(),
            notify: None,
            session: SessionOptions::default(),
        }
    }

    /// An answer as SIP proxies send it: the callee's tag first.
    fn answer(call: &str, callee: &str, caller: &str, remote: &str) -> UpdateRequest {
        UpdateRequest {
            kind: UpdateKind::Answer,
            to_tag: Some(caller.into()),
            ..offer(call, callee, remote)
        }
    }

    struct Fixture {
        table: Table,
        opener: FakeOpener,
        actions: Vec<Action<u16>>,
        t0: Instant,
    }

    impl Fixture {
        fn new(config: TableConfig) -> Fixture {
            let t0 = Instant::now();
            Fixture {
                table: Table::new(config, t0),
                opener: FakeOpener::default(),
                actions: Vec::new(),
                t0,
            }
        }

        fn update(&mut self, req: UpdateRequest) -> Result<UpdateReply, CoreError> {
            self.update_at(req, self.t0)
        }

        fn update_at(
            &mut self,
            req: UpdateRequest,
            now: Instant,
        ) -> Result<UpdateReply, CoreError> {
            self.table
                .update(req, now, &mut self.opener, &mut self.actions)
        }

        fn events(&mut self) -> Vec<SessionEvent> {
            self.actions
                .drain(..)
                .filter_map(|a| match a {
                    Action::Event(e) => Some(e),
                    _ => None,
                })
                .collect()
        }

        fn removes(&self) -> usize {
            self.actions
                .iter()
                .filter(|a| matches!(a, Action::Remove { .. }))
                .count()
        }
    }

    #[test]
    fn offer_then_answer_allocates_one_pair_per_leg() {
        let mut f = Fixture::new(config());
        let o = f.update(offer("c1", "ftag", "10.0.0.1:4000")).unwrap();
        assert_eq!(o.rtp_port % 2, 0);
        assert_eq!(o.rtcp_port, o.rtp_port + 1);
        assert_eq!(
            o.address,
            "203.0.113.1".parse::<IpAddr>().unwrap(),
            "advertised address"
        );
        let a = f
            .update(answer("c1", "ttag", "ftag", "10.0.0.2:5000"))
            .unwrap();
        assert_ne!(a.rtp_port, o.rtp_port);
        assert_eq!(f.opener.opened.len(), 2);
        assert!(f.opener.opened.iter().all(|(_, _, dscp)| *dscp == 46));

        let info = f.table.get("c1", f.t0).unwrap();
        assert!(info.answered);
        let legs = &info.streams[0].legs;
        // Leg 0 faces the caller: its remote is the offer's address and its local port is
        // the one the answer returned (it goes into the SDP sent to the caller).
        assert_eq!(legs[0].tag.as_deref(), Some("ftag"));
        assert_eq!(legs[0].remote, Some("10.0.0.1:4000".parse().unwrap()));
        assert_eq!(legs[0].local.map(|l| l.port()), Some(a.rtp_port));
        assert_eq!(legs[1].tag.as_deref(), Some("ttag"));
        assert_eq!(legs[1].remote, Some("10.0.0.2:5000".parse().unwrap()));
        assert_eq!(legs[1].local.map(|l| l.port()), Some(o.rtp_port));
        let events = f.events();
        assert!(events.contains(&SessionEvent::Created {
            call_id: "c1".into()
        }));
        assert!(events.contains(&SessionEvent::Answered {
            call_id: "c1".into()
        }));
    }

    #[test]
    fn retried_offer_and_answer_return_the_same_ports() {
        let mut f = Fixture::new(config());
        let o1 = f.update(offer("c1", "f", "10.0.0.1:4000")).unwrap();
        let o2 = f.update(offer("c1", "f", "10.0.0.1:4000")).unwrap();
        assert_eq!(o1, o2);
        let a1 = f.update(answer("c1", "t", "f", "10.0.0.2:5000")).unwrap();
        let a2 = f.update(answer("c1", "t", "f", "10.0.0.2:5000")).unwrap();
        assert_eq!(a1, a2);
        // A re-offer after the answer (re-INVITE from the caller) also keeps the ports.
        let mut reinvite = offer("c1", "f", "10.0.0.9:4100");
        reinvite.to_tag = Some("t".into());
        assert_eq!(f.update(reinvite).unwrap(), o1);
        assert_eq!(f.opener.opened.len(), 2);
        assert_eq!(f.table.counters().sessions_created, 1);
    }

    #[test]
    fn reinvite_from_callee_updates_the_callee_leg() {
        let mut f = Fixture::new(config());
        let o = f.update(offer("c1", "f", "10.0.0.1:4000")).unwrap();
        let a = f.update(answer("c1", "t", "f", "10.0.0.2:5000")).unwrap();
        // The callee re-INVITEs: its tag is now the From tag; the reply is the port for the
        // caller, i.e. the answer's port.
        let mut reinvite = offer("c1", "t", "10.0.0.3:5002");
        reinvite.to_tag = Some("f".into());
        assert_eq!(f.update(reinvite).unwrap(), a);
        let legs = f.table.get("c1", f.t0).unwrap().streams[0].legs.clone();
        assert_eq!(legs[1].remote, Some("10.0.0.3:5002".parse().unwrap()));
        assert_eq!(legs[1].local.unwrap().port(), o.rtp_port);
    }

    #[test]
    fn answer_for_unknown_call_or_tags_is_not_found() {
        let mut f = Fixture::new(config());
        assert!(matches!(
            f.update(answer("nope", "t", "f", "10.0.0.2:5000")),
            Err(CoreError::NotFound)
        ));
        f.update(offer("c1", "f", "10.0.0.1:4000")).unwrap();
        assert!(matches!(
            f.update(answer("c1", "t", "other", "10.0.0.2:5000")),
            Err(CoreError::NotFound)
        ));
        assert_eq!(f.table.session_count(), 1);
    }

    #[test]
    fn media_streams_are_separate() {
        let mut f = Fixture::new(config());
        let audio = f.update(offer("c1", "f", "10.0.0.1:4000")).unwrap();
        let video = f
            .update(UpdateRequest {
                media_index: 2,
                ..offer("c1", "f", "10.0.0.1:4002")
            })
            .unwrap();
        assert_ne!(audio.stream, video.stream);
        assert_ne!(audio.rtp_port, video.rtp_port);
        assert_eq!(f.table.stream_count(), 2);
        // Deleting m-line 2 only keeps the call.
        f.table
            .delete::<u16>("c1", Some("f"), None, Some(2), f.t0, &mut f.actions)
            .unwrap();
        assert_eq!(f.table.stream_count(), 1);
        assert_eq!(f.table.session_count(), 1);
    }

    #[test]
    fn delete_releases_ports_into_quarantine() {
        let mut cfg = config();
        cfg.interfaces[0].port_max = 30003; // two pairs
        let mut f = Fixture::new(cfg);
        f.update(offer("c1", "f", "10.0.0.1:4000")).unwrap();
        f.update(answer("c1", "t", "f", "10.0.0.2:5000")).unwrap();
        assert!(matches!(
            f.update(offer("c2", "f", "10.0.0.1:4000")),
            Err(CoreError::PortsExhausted { .. })
        ));
        assert_eq!(
            f.table.session_count(),
            1,
            "failed offer leaves nothing behind"
        );
        f.actions.clear();
        f.table
            .delete::<u16>("c1", Some("f"), Some("t"), None, f.t0, &mut f.actions)
            .unwrap();
        assert_eq!(f.removes(), 1);
        assert_eq!(f.table.session_count(), 0);
        let usage = &f.table.port_usage(f.t0)[0].1;
        assert_eq!((usage.in_use, usage.quarantined), (0, 2));
        assert!(
            f.update(offer("c2", "f", "10.0.0.1:4000")).is_err(),
            "still quarantined"
        );
        let later = f.t0 + Duration::from_secs(10);
        assert!(
            f.update_at(offer("c2", "f", "10.0.0.1:4000"), later)
                .is_ok()
        );
    }

    #[test]
    fn delete_of_an_unanswered_call_with_the_rejecting_to_tag() {
        // INVITE offered, then 486 Busy: Kamailio deletes with the 486's to-tag.
        let mut f = Fixture::new(config());
        f.update(offer("c1", "f", "10.0.0.1:4000")).unwrap();
        f.table
            .delete::<u16>(
                "c1",
                Some("f"),
                Some("busy-tag"),
                None,
                f.t0,
                &mut f.actions,
            )
            .unwrap();
        assert_eq!(f.table.session_count(), 0);
        // Once both tags are known, a foreign to-tag does not match.
        f.update(offer("c2", "f", "10.0.0.1:4000")).unwrap();
        f.update(answer("c2", "t", "f", "10.0.0.2:5000")).unwrap();
        assert!(matches!(
            f.table
                .delete::<u16>("c2", Some("f"), Some("other"), None, f.t0, &mut f.actions),
            Err(CoreError::NotFound)
        ));
    }

    #[test]
    fn delete_by_unknown_tag_or_call_is_not_found() {
        let mut f = Fixture::new(config());
        f.update(offer("c1", "f", "10.0.0.1:4000")).unwrap();
        let mut actions = Vec::<Action<u16>>::new();
        assert!(matches!(
            f.table
                .delete("c1", Some("x"), None, None, f.t0, &mut actions),
            Err(CoreError::NotFound)
        ));
        assert!(matches!(
            f.table.delete("c9", None, None, None, f.t0, &mut actions),
            Err(CoreError::NotFound)
        ));
        assert!(
            f.table
                .delete("c1", None, None, None, f.t0, &mut actions)
                .is_ok()
        );
    }

    #[test]
    fn ports_taken_by_others_are_skipped() {
        let mut cfg = config();
        cfg.interfaces[0].port_max = 30005; // three pairs
        let mut f = Fixture::new(cfg);
        f.opener.taken = [30000, 30002].into();
        let o = f.update(offer("c1", "f", "10.0.0.1:4000")).unwrap();
        assert_eq!(o.rtp_port, 30004);
    }

    #[test]
    fn interface_selection() {
        let mut f = Fixture::new(config());
        let v6 = f.update(offer("c6", "f", "[2001:2::9]:4000")).unwrap();
        assert_eq!(v6.address, "2001:2::1".parse::<IpAddr>().unwrap());
        let named = f
            .update(UpdateRequest {
                interface: InterfaceSel::Named("v6".into()),
                ..offer("cb", "f", "10.0.0.1:4000")
            })
            .unwrap();
        assert!(named.address.is_ipv6(), "bridging: IPv4 caller, IPv6 leg");
        assert!(matches!(
            f.update(UpdateRequest {
                interface: InterfaceSel::Named("nope".into()),
                ..offer("cx", "f", "10.0.0.1:4000")
            }),
            Err(CoreError::NoInterface(_))
        ));
        let hold = f
            .update(UpdateRequest {
                remote: None,
                ipv6: true,
                ..offer("ch", "f", "10.0.0.1:4000")
            })
            .unwrap();
        assert!(hold.address.is_ipv6());
    }

    #[test]
    fn session_limit() {
        let mut cfg = config();
        cfg.max_sessions = 1;
        let mut f = Fixture::new(cfg);
        f.update(offer("c1", "f", "10.0.0.1:4000")).unwrap();
        assert!(matches!(
            f.update(offer("c2", "f", "10.0.0.1:4000")),
            Err(CoreError::SessionLimit(1))
        ));
        assert!(
            f.update(offer("c1", "f", "10.0.0.1:4000")).is_ok(),
            "existing call still ok"
        );
    }

    #[test]
    fn invalid_requests() {
        let mut f = Fixture::new(config());
        assert!(matches!(
            f.update(offer("", "f", "10.0.0.1:4000")),
            Err(CoreError::Invalid(_))
        ));
        assert!(matches!(
            f.update(offer("c", "f", "10.0.0.1:0")),
            Err(CoreError::Invalid(_))
        ));
    }

    #[test]
    fn setup_timeout_ends_unanswered_sessions_and_reports_notify() {
        let mut f = Fixture::new(config());
        f.update(UpdateRequest {
            notify: Some(Notify {
                socket: "unix:/tmp/n".into(),
                tag: "tag1".into(),
            }),
            ..offer("c1", "f", "10.0.0.1:4000")
        })
        .unwrap();
        f.actions.clear();
        f.table.tick(f.t0 + Duration::from_secs(29), &mut f.actions);
        assert_eq!(f.table.session_count(), 1);
        f.table.tick(f.t0 + Duration::from_secs(30), &mut f.actions);
        assert_eq!(f.table.session_count(), 0);
        assert_eq!(f.removes(), 1);
        let events = f.events();
        assert_eq!(
            events,
            [SessionEvent::Ended {
                call_id: "c1".into(),
                reason: EndReason::SetupTimeout,
                notify: Some(Notify {
                    socket: "unix:/tmp/n".into(),
                    tag: "tag1".into()
                }),
            }]
        );
        assert_eq!(f.table.counters().sessions_setup_timeout, 1);
    }

    #[test]
    fn media_timeout_counts_from_the_last_packet() {
        let mut f = Fixture::new(config());
        let o = f.update(offer("c1", "f", "10.0.0.1:4000")).unwrap();
        f.update(answer("c1", "t", "f", "10.0.0.2:5000")).unwrap();
        let stream = f.table.sessions["c1"]
            .streams
            .iter()
            .find(|s| s.id == o.stream)
            .unwrap()
            .shared
            .clone();
        // The setup timer must not end an answered call.
        f.table.tick(f.t0 + Duration::from_secs(31), &mut f.actions);
        assert_eq!(f.table.session_count(), 1);
        // A packet at t0+50s pushes the deadline to t0+110s.
        let at_50 = crate::clock::to_ns(f.t0 + Duration::from_secs(50));
        stream.legs[1].last_rx_ns.store(at_50, Relaxed);
        f.table.tick(f.t0 + Duration::from_secs(60), &mut f.actions);
        assert_eq!(f.table.session_count(), 1, "media seen 10 s ago");
        let info = f.table.get("c1", f.t0 + Duration::from_secs(60)).unwrap();
        assert_eq!(info.ttl, Duration::from_secs(50));
        f.table
            .tick(f.t0 + Duration::from_secs(109), &mut f.actions);
        assert_eq!(f.table.session_count(), 1);
        f.actions.clear();
        f.table
            .tick(f.t0 + Duration::from_secs(110), &mut f.actions);
        assert_eq!(f.table.session_count(), 0);
        assert!(matches!(
            f.events().as_slice(),
            [SessionEvent::Ended {
                reason: EndReason::MediaTimeout,
                notify: None,
                ..
            }]
        ));
    }

    #[test]
    fn ttl_caps_a_session_and_old_timers_do_not_hit_a_new_call() {
        let mut cfg = config();
        cfg.session_ttl = Some(Duration::from_secs(5));
        let mut f = Fixture::new(cfg);
        f.update(offer("c1", "f", "10.0.0.1:4000")).unwrap();
        f.table
            .delete::<u16>("c1", None, None, None, f.t0, &mut f.actions)
            .unwrap();
        // Same call-id again: the first incarnation's timers must not end it.
        let t1 = f.t0 + Duration::from_secs(3);
        f.update_at(offer("c1", "f", "10.0.0.1:4000"), t1).unwrap();
        f.table.tick(f.t0 + Duration::from_secs(6), &mut f.actions);
        assert_eq!(f.table.session_count(), 1);
        f.table.tick(t1 + Duration::from_secs(5), &mut f.actions);
        assert_eq!(f.table.session_count(), 0);
        assert_eq!(f.table.counters().sessions_ttl, 1);
    }

    #[test]
    fn latch_events_are_recorded() {
        let mut f = Fixture::new(config());
        let o = f.update(offer("c1", "f", "10.0.0.1:4000")).unwrap();
        let src: SocketAddr = "198.18.1.2:61000".parse().unwrap();
        f.actions.clear();
        f.table.on_latched(o.stream, 0, false, src, &mut f.actions);
        f.table.on_latched(o.stream, 0, false, src, &mut f.actions);
        f.table.on_latched(999, 0, false, src, &mut f.actions);
        let info = f.table.get("c1", f.t0).unwrap();
        assert_eq!(info.streams[0].legs[0].latched_rtp, Some(src));
        let relatched: Vec<bool> = f
            .events()
            .iter()
            .filter_map(|e| match e {
                SessionEvent::Latched { relatched, .. } => Some(*relatched),
                _ => None,
            })
            .collect();
        assert_eq!(relatched, [false, true]);
    }

    #[test]
    fn actions_carry_sockets_once_and_the_facing_remote() {
        let mut f = Fixture::new(config());
        f.update(offer("c1", "f", "10.0.0.1:4000")).unwrap();
        let legs: Vec<(usize, Option<u16>, Option<SocketAddr>)> = f
            .actions
            .iter()
            .filter_map(|a| match a {
                Action::Leg { update: u, .. } => Some((u.leg, u.sockets, u.remote)),
                _ => None,
            })
            .collect();
        assert_eq!(legs.len(), 2);
        assert_eq!(legs[0], (0, None, Some("10.0.0.1:4000".parse().unwrap())));
        assert_eq!(legs[1].0, 1);
        assert!(legs[1].1.is_some(), "callee-facing leg gets its sockets");
        f.actions.clear();
        f.update(offer("c1", "f", "10.0.0.1:4000")).unwrap();
        let with_sockets = f
            .actions
            .iter()
            .filter(|a| matches!(a, Action::Leg { update, .. } if update.sockets.is_some()))
            .count();
        assert_eq!(with_sockets, 0, "a retry opens nothing");
    }

    #[test]
    fn delete_all() {
        let mut f = Fixture::new(config());
        for c in ["a", "b", "c"] {
            f.update(offer(c, "f", "10.0.0.1:4000")).unwrap();
        }
        let mut actions = Vec::<Action<u16>>::new();
        assert_eq!(f.table.delete_all(f.t0, &mut actions), 3);
        assert_eq!(f.table.session_count(), 0);
        assert_eq!(f.table.stream_count(), 0);
        assert_eq!(f.table.counters().sessions_deleted, 3);
    }

    fn labelled(call: &str, labels: &[(&str, &str)]) -> UpdateRequest {
        UpdateRequest {
            session: SessionOptions {
                labels: labels
                    .iter()
                    .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                    .collect(),
                ..SessionOptions::default()
            },
            ..offer(call, "f", "10.0.0.1:4000")
        }
    }

    #[test]
    fn labels_are_set_at_offer_and_merged_by_later_updates() {
        let mut f = Fixture::new(config());
        f.update(labelled("c1", &[("tenant", "a"), ("trunk", "x")]))
            .unwrap();
        let info = f.table.get("c1", f.t0).unwrap();
        assert_eq!(info.labels.len(), 2);
        assert_eq!(info.labels["tenant"], "a");
        // The answer (or a re-offer) may add or replace labels; unnamed ones stay.
        let mut a = answer("c1", "t", "f", "10.0.0.2:5000");
        a.session.labels = [("trunk".to_owned(), "y".to_owned())].into();
        f.update(a).unwrap();
        let info = f.table.get("c1", f.t0).unwrap();
        assert_eq!(info.labels["tenant"], "a");
        assert_eq!(info.labels["trunk"], "y");
        // The rtpproxy front end sends no labels: nothing changes.
        f.update(offer("c1", "f", "10.0.0.1:4000")).unwrap();
        assert_eq!(f.table.get("c1", f.t0).unwrap().labels.len(), 2);
    }

    #[test]
    fn session_state_follows_the_answer() {
        let mut f = Fixture::new(config());
        f.update(offer("c1", "f", "10.0.0.1:4000")).unwrap();
        assert_eq!(
            f.table.get("c1", f.t0).unwrap().state(),
            SessionState::Offered
        );
        f.update(answer("c1", "t", "f", "10.0.0.2:5000")).unwrap();
        assert_eq!(
            f.table.get("c1", f.t0).unwrap().state(),
            SessionState::Answered
        );
    }

    #[test]
    fn list_page_filters_orders_and_pages() {
        let mut f = Fixture::new(config());
        for (call, tenant) in [("d", "a"), ("b", "a"), ("e", "b"), ("a", "a"), ("c", "a")] {
            f.update(labelled(call, &[("tenant", tenant)])).unwrap();
        }
        f.update(answer("c", "t", "f", "10.0.0.2:5000")).unwrap();
        let ids = |page: &[SessionInfo]| -> Vec<String> {
            page.iter().map(|s| s.call_id.clone()).collect()
        };
        let mut filter = SessionFilter::default();
        let (page, more) = f.table.list_page(&filter, 2, f.t0);
        assert_eq!((ids(&page), more), (vec!["a".into(), "b".into()], true));
        filter.after = Some("b".into());
        let (page, more) = f.table.list_page(&filter, 2, f.t0);
        assert_eq!((ids(&page), more), (vec!["c".into(), "d".into()], true));
        filter.after = Some("d".into());
        let (page, more) = f.table.list_page(&filter, 2, f.t0);
        assert_eq!((ids(&page), more), (vec!["e".into()], false));

        let tenant_a = SessionFilter {
            labels: [("tenant".to_owned(), "a".to_owned())].into(),
            ..SessionFilter::default()
        };
        let (page, more) = f.table.list_page(&tenant_a, 10, f.t0);
        assert_eq!(ids(&page), ["a", "b", "c", "d"]);
        assert!(!more);
        let answered_a = SessionFilter {
            state: Some(SessionState::Answered),
            ..tenant_a.clone()
        };
        assert_eq!(ids(&f.table.list_page(&answered_a, 10, f.t0).0), ["c"]);
        let offered = SessionFilter {
            state: Some(SessionState::Offered),
            ..SessionFilter::default()
        };
        assert_eq!(
            ids(&f.table.list_page(&offered, 10, f.t0).0),
            ["a", "b", "d", "e"]
        );
        let nobody = SessionFilter {
            labels: [("tenant".to_owned(), "z".to_owned())].into(),
            ..SessionFilter::default()
        };
        assert_eq!(f.table.list_page(&nobody, 10, f.t0), (vec![], false));
        assert!(f.table.list_page(&filter, 0, f.t0).1);
    }

    #[test]
    fn per_session_setup_timeout_overrides_the_configured_one() {
        let mut f = Fixture::new(config()); // 30 s configured
        let mut short = offer("short", "f", "10.0.0.1:4000");
        short.session.setup_timeout = Some(Duration::from_secs(5));
        f.update(short).unwrap();
        let mut long = offer("long", "f", "10.0.0.1:4000");
        long.session.setup_timeout = Some(Duration::from_secs(60));
        f.update(long).unwrap();
        f.update(offer("default", "f", "10.0.0.1:4000")).unwrap();
        let info = f.table.get("short", f.t0).unwrap();
        assert_eq!(info.setup_timeout, Duration::from_secs(5));
        assert_eq!(info.ttl, Duration::from_secs(5));
        assert_eq!(info.media_timeout, Duration::from_secs(60));
        f.table.tick(f.t0 + Duration::from_secs(5), &mut f.actions);
        assert!(f.table.get("short", f.t0).is_none());
        f.table.tick(f.t0 + Duration::from_secs(30), &mut f.actions);
        assert!(f.table.get("default", f.t0).is_none());
        assert!(f.table.get("long", f.t0).is_some());
        f.table.tick(f.t0 + Duration::from_secs(60), &mut f.actions);
        assert_eq!(f.table.session_count(), 0);
        assert_eq!(f.table.counters().sessions_setup_timeout, 3);
    }

    #[test]
    fn a_later_update_can_lengthen_or_shorten_the_timeouts() {
        let mut f = Fixture::new(config());
        f.update(offer("c1", "f", "10.0.0.1:4000")).unwrap();
        // Lengthened: the timer at 30 s lets the session live.
        let mut longer = offer("c1", "f", "10.0.0.1:4000");
        longer.session.setup_timeout = Some(Duration::from_secs(40));
        f.update(longer).unwrap();
        f.table.tick(f.t0 + Duration::from_secs(30), &mut f.actions);
        assert_eq!(f.table.session_count(), 1);
        f.table.tick(f.t0 + Duration::from_secs(40), &mut f.actions);
        assert_eq!(f.table.session_count(), 0);

        // Media timeout shortened after the answer: 60 s configured, 10 s asked.
        let mut f = Fixture::new(config());
        f.update(offer("c2", "f", "10.0.0.1:4000")).unwrap();
        f.update(answer("c2", "t", "f", "10.0.0.2:5000")).unwrap();
        let mut shorter = offer("c2", "f", "10.0.0.1:4000");
        shorter.session.media_timeout = Some(Duration::from_secs(10));
        f.update(shorter).unwrap();
        f.table.tick(f.t0 + Duration::from_secs(9), &mut f.actions);
        assert_eq!(f.table.session_count(), 1);
        f.actions.clear();
        f.table.tick(f.t0 + Duration::from_secs(10), &mut f.actions);
        assert_eq!(f.table.session_count(), 0);
        assert!(matches!(
            f.events().as_slice(),
            [SessionEvent::Ended {
                reason: EndReason::MediaTimeout,
                ..
            }]
        ));
    }

    #[test]
    fn out_of_range_timeouts_are_invalid_and_change_nothing() {
        let mut f = Fixture::new(config());
        for bad in [Duration::ZERO, MAX_SESSION_TIMEOUT + Duration::from_secs(1)] {
            let mut req = offer("c1", "f", "10.0.0.1:4000");
            req.session.media_timeout = Some(bad);
            assert!(matches!(f.update(req), Err(CoreError::Invalid(_))));
        }
        assert_eq!(f.table.session_count(), 0);
        assert!(f.opener.opened.is_empty());
    }

    #[test]
    fn latch_and_dscp_of_the_offer_stay_for_the_answer() {
        let mut f = Fixture::new(config()); // DSCP 46, first-packet configured
        let strict = LatchPolicy {
            mode: crate::session::latch::LatchMode::Strict,
            ..LatchPolicy::default()
        };
        let mut o = offer("c1", "f", "10.0.0.1:4000");
        o.options = LegOptions {
            latch: Some(strict),
            dscp: Some(10),
        };
        f.update(o).unwrap();
        f.update(answer("c1", "t", "f", "10.0.0.2:5000")).unwrap();
        assert_eq!(
            f.opener
                .opened
                .iter()
                .map(|(_, _, d)| *d)
                .collect::<Vec<_>>(),
            [10, 10]
        );
        let policies: Vec<LatchPolicy> = f
            .actions
            .iter()
            .filter_map(|a| match a {
                Action::Leg { update, .. } => Some(update.policy),
                _ => None,
            })
            .collect();
        assert_eq!(policies.len(), 4);
        assert!(policies.iter().all(|p| *p == strict), "{policies:?}");
        // Another call without options gets the configuration.
        f.update(offer("c2", "f", "10.0.0.1:4000")).unwrap();
        assert_eq!(f.opener.opened.last().unwrap().2, 46);
    }
}
