//! The command core every front end drives: one task owns the session table, applies its
//! datapath actions and timers, and answers requests sent over a channel. Front ends hold a
//! cheap, cloneable [`CoreHandle`].
//!
//! The task runs on a single-threaded tokio runtime of its own thread (`sluice-core`), and the
//! control front ends are served on that same runtime ([`Core::runtime`]): the rtpproxy
//! listeners and plaintext gRPC (with TLS, gRPC keeps a thread of its own, see `grpc::serve`).
//! A command then goes from its socket to the core and back without waking another thread.
//! With the core on a thread of its own, each command crossed threads twice more (front end ->
//! core -> front end), and on a small VM each such wake-up costs tens of microseconds.

use std::time::{Duration, Instant};

use tokio::sync::mpsc::{UnboundedReceiver, UnboundedSender, unbounded_channel};
use tokio::sync::{broadcast, oneshot};

use crate::datapath::user::{Datapath, DatapathTotals, SocketOpener, WorkerEvent};
use crate::datapath::xdp::{FastPath, XdpSnapshot};
use crate::ports::PoolUsage;
use crate::session::table::TableCounters;
use crate::session::{
    Action, CoreError, SessionEvent, SessionFilter, SessionInfo, Table, TableConfig, UpdateReply,
    UpdateRequest,
};

/// Global numbers for `G`/`I` replies, gRPC `GetStats` and metrics.
#[derive(Debug, Clone, Default)]
pub struct CoreStats {
    pub counters: TableCounters,
    pub sessions: usize,
    pub streams: usize,
    pub ports: Vec<(String, PoolUsage)>,
    pub datapath: DatapathTotals,
    /// Only from [`CoreHandle::snapshot`], and only while the XDP fast path runs.
    pub xdp: Option<XdpSnapshot>,
}

enum Request {
    Update(
        Box<UpdateRequest>,
        oneshot::Sender<Result<UpdateReply, CoreError>>,
    ),
    Delete {
        call_id: String,
        from_tag: Option<String>,
        to_tag: Option<String>,
        media_index: Option<u32>,
        reply: oneshot::Sender<Result<(), CoreError>>,
    },
    Get(String, oneshot::Sender<Option<SessionInfo>>),
    List(oneshot::Sender<Vec<SessionInfo>>),
    ListPage {
        filter: SessionFilter,
        limit: usize,
        reply: oneshot::Sender<(Vec<SessionInfo>, bool)>,
    },
    DeleteAll(oneshot::Sender<usize>),
    Stats {
        /// Also read the XDP program's counters (system calls; metrics scrapes only).
        xdp: bool,
        reply: oneshot::Sender<CoreStats>,
    },
    /// Stop even while front ends still hold handles (a client connection lingering during
    /// shutdown must not keep the relay alive); they get `Unavailable` afterwards.
    Shutdown,
}

#[derive(Clone)]
pub struct CoreHandle {
    requests: UnboundedSender<Request>,
    events: broadcast::Sender<SessionEvent>,
}

impl CoreHandle {
    pub async fn update(&self, req: UpdateRequest) -> Result<UpdateReply, CoreError> {
        self.call(|tx| Request::Update(Box::new(req), tx)).await?
    }

    pub async fn delete(
        &self,
        call_id: String,
        from_tag: Option<String>,
        to_tag: Option<String>,
        media_index: Option<u32>,
    ) -> Result<(), CoreError> {
        self.call(|reply| Request::Delete {
            call_id,
            from_tag,
            to_tag,
            media_index,
            reply,
        })
        .await?
    }

    pub async fn get(&self, call_id: String) -> Result<Option<SessionInfo>, CoreError> {
        self.call(|tx| Request::Get(call_id, tx)).await
    }

    pub async fn list(&self) -> Result<Vec<SessionInfo>, CoreError> {
        self.call(Request::List).await
    }

    /// Up to `limit` sessions matching `filter` in call-id order, and whether more follow.
    pub async fn list_page(
        &self,
        filter: SessionFilter,
        limit: usize,
    ) -> Result<(Vec<SessionInfo>, bool), CoreError> {
        self.call(|reply| Request::ListPage {
            filter,
            limit,
            reply,
        })
        .await
    }

    pub async fn delete_all(&self) -> Result<usize, CoreError> {
        self.call(Request::DeleteAll).await
    }

    pub async fn stats(&self) -> Result<CoreStats, CoreError> {
        self.call(|reply| Request::Stats { xdp: false, reply })
            .await
    }

    /// [`CoreHandle::stats`] plus the XDP fast path's counters, for metrics.
    pub async fn snapshot(&self) -> Result<CoreStats, CoreError> {
        self.call(|reply| Request::Stats { xdp: true, reply }).await
    }

    /// Session events (created, answered, latched, ended). Slow subscribers may miss some
    /// (`RecvError::Lagged`) rather than slow the core down.
    pub fn subscribe(&self) -> broadcast::Receiver<SessionEvent> {
        self.events.subscribe()
    }

    async fn call<T>(
        &self,
        make: impl FnOnce(oneshot::Sender<T>) -> Request,
    ) -> Result<T, CoreError> {
        let (tx, rx) = oneshot::channel();
        self.requests
            .send(make(tx))
            .map_err(|_| CoreError::Unavailable)?;
        rx.await.map_err(|_| CoreError::Unavailable)
    }
}

/// The running core thread. Dropping it (or every handle) stops it.
pub struct Core {
    thread: Option<std::thread::JoinHandle<()>>,
    stop: Option<UnboundedSender<Request>>,
    runtime: tokio::runtime::Handle,
}

impl Core {
    /// Starts the core; with `fast_path`, latched streams are offloaded to the kernel.
    pub fn start(
        mut config: TableConfig,
        opener: SocketOpener,
        fast_path: Option<FastPath>,
    ) -> std::io::Result<(Core, CoreHandle)> {
        let (requests_tx, requests_rx) = unbounded_channel();
        let (events_tx, events_rx) = unbounded_channel();
        let (broadcast_tx, _) = broadcast::channel(4096);
        let datapath = Datapath::start(config.workers, events_tx)?;
        config.offload = fast_path.is_some();
        let table = Table::new(config, Instant::now());
        let out = broadcast_tx.clone();
        let runtime = tokio::runtime::Builder::new_current_thread()
            // Each tick also looks at the tasks woken from other threads (requests from the
            // metrics endpoint, or from the gRPC thread when TLS is on) before polling the I/O
            // driver again, so replies that are ready go out together.
            .global_queue_interval(1)
            .enable_all()
            .build()?;
        let runtime_handle = runtime.handle().clone();
        let thread = std::thread::Builder::new()
            .name("sluice-core".into())
            .spawn(move || {
                let core = CoreLoop {
                    table,
                    datapath,
                    opener,
                    events: out,
                    actions: Vec::new(),
                    fast_path,
                    next_poll: Instant::now() + XDP_POLL,
                };
                // Tasks spawned onto this runtime (the control front ends) stop with the core:
                // the daemon drains them before it stops the core.
                runtime.block_on(core.run(requests_rx, events_rx));
            })?;
        let handle = CoreHandle {
            requests: requests_tx.clone(),
            events: broadcast_tx,
        };
        Ok((
            Core {
                thread: Some(thread),
                stop: Some(requests_tx),
                runtime: runtime_handle,
            },
            handle,
        ))
    }

    /// The core's runtime: front ends spawned onto it reach the core without a thread hop.
    pub fn runtime(&self) -> &tokio::runtime::Handle {
        &self.runtime
    }

    /// Stops the core (ending every session; sockets close as the datapath stops) and waits.
    pub fn join(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(Request::Shutdown);
        }
        if let Some(t) = self.thread.take()
            && t.join().is_err()
        {
            tracing::error!("session core panicked");
        }
    }
}

/// How often kernel flow counters are copied into the streams' statistics (liveness for the
/// media timeout, counters for queries).
const XDP_POLL: Duration = Duration::from_secs(1);

struct CoreLoop {
    table: Table,
    datapath: Datapath,
    opener: SocketOpener,
    events: broadcast::Sender<SessionEvent>,
    actions: Vec<Action<crate::datapath::user::LegSockets>>,
    fast_path: Option<FastPath>,
    next_poll: Instant,
}

impl CoreLoop {
    async fn run(
        mut self,
        mut requests: UnboundedReceiver<Request>,
        mut worker_events: UnboundedReceiver<WorkerEvent>,
    ) {
        // One timer, re-armed each round (no allocation per request).
        let timer = tokio::time::sleep_until(Instant::now().into());
        tokio::pin!(timer);
        let mut workers_running = true;
        loop {
            let mut next = self.table.next_tick_at();
            if self.fast_path.is_some() {
                next = next.min(self.next_poll);
            }
            if let Some(wake) = self.datapath.wake_deadline() {
                next = next.min(wake);
            }
            let next = next.max(Instant::now() + Duration::from_millis(1));
            timer.as_mut().reset(next.into());
            // Biased, in this order: latch events are few (a handful per call) and cannot
            // starve requests, while a steady stream of requests polled first could starve
            // them; the timer comes last and is served by the tick below on every round anyway.
            tokio::select! {
                biased;
                ev = worker_events.recv(), if workers_running => match ev {
                    Some(WorkerEvent::Latched { stream, leg, rtcp, addr, .. }) => {
                        self.table.on_latched(stream, leg, rtcp, addr, &mut self.actions);
                    }
                    // Workers only stop at shutdown; without this the branch would spin.
                    None => workers_running = false,
                },
                req = requests.recv() => match req {
                    Some(Request::Shutdown) | None => break,
                    Some(req) => self.handle(req),
                },
                () = &mut timer => {},
            }
            let now = Instant::now();
            if now >= self.next_poll {
                self.next_poll = now + XDP_POLL;
                if let Some(fast_path) = &mut self.fast_path {
                    fast_path.flows().poll();
                }
            }
            self.table.tick(now, &mut self.actions);
            self.flush();
            self.datapath.wake_due(now);
        }
        let mut actions = std::mem::take(&mut self.actions);
        self.table.delete_all(Instant::now(), &mut actions);
        self.actions = actions;
        self.flush();
        self.datapath.shutdown();
        if let Some(mut fast_path) = self.fast_path.take()
            && let Err(e) = fast_path.detach_all()
        {
            tracing::warn!(error = %e, "XDP detach failed");
        }
    }

    fn handle(&mut self, req: Request) {
        let now = Instant::now();
        // A dropped reply channel means the requester gave up; nothing to do about it.
        match req {
            Request::Update(update, reply) => {
                let result = self
                    .table
                    .update(*update, now, &mut self.opener, &mut self.actions);
                // Workers get their sockets before the requester learns the ports, so media
                // sent in response to the reply always finds them.
                self.flush();
                let _ = reply.send(result);
            }
            Request::Delete {
                call_id,
                from_tag,
                to_tag,
                media_index,
                reply,
            } => {
                let result = self.table.delete(
                    &call_id,
                    from_tag.as_deref(),
                    to_tag.as_deref(),
                    media_index,
                    now,
                    &mut self.actions,
                );
                let _ = reply.send(result);
            }
            Request::Get(call_id, reply) => {
                // rtpproxy `Q` and GetSession report this call's kernel counters as of now,
                // not as of the last periodic poll (up to XDP_POLL ago).
                if let Some(fast_path) = &mut self.fast_path
                    && let Some(info) = self.table.get(&call_id, now)
                {
                    fast_path
                        .flows()
                        .poll_streams(info.streams.iter().map(|s| s.id));
                }
                let _ = reply.send(self.table.get(&call_id, now));
            }
            Request::List(reply) => {
                let _ = reply.send(self.table.list(now));
            }
            Request::ListPage {
                filter,
                limit,
                reply,
            } => {
                let _ = reply.send(self.table.list_page(&filter, limit, now));
            }
            Request::DeleteAll(reply) => {
                let n = self.table.delete_all(now, &mut self.actions);
                let _ = reply.send(n);
            }
            Request::Shutdown => {}
            Request::Stats { xdp, reply } => {
                let _ = reply.send(CoreStats {
                    counters: self.table.counters(),
                    sessions: self.table.session_count(),
                    streams: self.table.stream_count(),
                    ports: self.table.port_usage(now),
                    datapath: self.datapath.totals(),
                    xdp: self
                        .fast_path
                        .as_ref()
                        .filter(|_| xdp)
                        .map(FastPath::snapshot),
                });
            }
        }
    }

    fn flush(&mut self) {
        for action in self.actions.drain(..) {
            let event = match action {
                Action::Offload {
                    stream,
                    call_id,
                    flows,
                    shared,
                } => {
                    let Some(fast_path) = &mut self.fast_path else {
                        continue;
                    };
                    match fast_path.flows().apply(stream, &flows, &shared) {
                        Ok(applied) => {
                            for leg in applied.offloaded {
                                let event = SessionEvent::Offloaded {
                                    call_id: call_id.clone(),
                                    stream,
                                    leg,
                                };
                                log_event(&event);
                                let _ = self.events.send(event);
                            }
                        }
                        Err(e) => {
                            tracing::warn!(%call_id, stream, error = %e, "XDP flow update failed; userspace keeps forwarding");
                        }
                    }
                    continue;
                }
                Action::Remove { stream, worker } => {
                    // Kernel entries go first: no packet may be forwarded for ports about to
                    // be reused.
                    if let Some(fast_path) = &mut self.fast_path {
                        fast_path.flows().remove_stream(stream);
                    }
                    self.datapath.apply(Action::Remove { stream, worker })
                }
                other => self.datapath.apply(other),
            };
            if let Some(event) = event {
                log_event(&event);
                // No subscriber is fine.
                let _ = self.events.send(event);
            }
        }
    }
}

fn log_event(event: &SessionEvent) {
    match event {
        SessionEvent::Created { call_id } => tracing::debug!(%call_id, "session created"),
        SessionEvent::Answered { call_id } => tracing::debug!(%call_id, "session answered"),
        SessionEvent::Latched {
            call_id,
            stream,
            leg,
            rtcp,
            addr,
            relatched,
        } => tracing::debug!(%call_id, stream, leg, rtcp, %addr, relatched, "latched"),
        SessionEvent::Offloaded {
            call_id,
            stream,
            leg,
        } => tracing::debug!(%call_id, stream, leg, "offloaded to XDP"),
        SessionEvent::Ended {
            call_id, reason, ..
        } => tracing::info!(%call_id, reason = reason.as_str(), "session ended"),
    }
}
