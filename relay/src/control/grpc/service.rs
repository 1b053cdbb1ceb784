//! The sluice.v1 `Relay` service: maps requests onto the command core, the same core the
//! rtpproxy front end drives (see `control::rtpp::handler`), so sessions are shared.

use std::time::{Instant, SystemTime};

use sluice_proto::v1 as pb;
use sluice_proto::v1::relay_server::Relay;
use tokio::sync::broadcast::error::RecvError;
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

use super::convert::{self, StreamSpec};
use crate::control::core::CoreHandle;
use crate::metrics::{ControlMetrics, Outcome, Protocol, VERSION};
use crate::session::latch::LatchPolicy;
use crate::session::{LegOptions, SessionFilter, SessionOptions, UpdateKind, UpdateRequest};

/// Events buffered per Watch client between the core's broadcast and the HTTP/2 stream.
const WATCH_BUFFER: usize = 256;

pub struct RelayService {
    core: CoreHandle,
    started: Instant,
    /// The configured latch policy, completing a request that sets only mode or relatch.
    latch: LatchPolicy,
    /// Turns true when the daemon shuts down: Watch streams end (UNAVAILABLE) so the server
    /// can drain.
    shutdown: watch::Receiver<bool>,
    metrics: ControlMetrics,
}

impl RelayService {
    pub fn new(
        core: CoreHandle,
        started: Instant,
        latch: LatchPolicy,
        shutdown: watch::Receiver<bool>,
    ) -> RelayService {
        RelayService {
            core,
            started,
            latch,
            shutdown,
            metrics: ControlMetrics::default(),
        }
    }

    /// Records calls into `metrics` (the daemon's registered set) instead of a private one.
    pub fn with_metrics(mut self, metrics: ControlMetrics) -> RelayService {
        self.metrics = metrics;
        self
    }

    /// Runs one call's body, recording its command, result and latency.
    async fn timed<T>(
        &self,
        command: &'static str,
        body: impl Future<Output = Result<T, Status>>,
    ) -> Result<T, Status> {
        let started = Instant::now();
        let result = body.await;
        let outcome = match &result {
            Ok(_) => Outcome::Ok,
            Err(status) => Outcome::from_grpc(status.code()),
        };
        self.metrics
            .observe(Protocol::Grpc, command, outcome, started.elapsed());
        result
    }

    /// Applies an Offer or Answer stream by stream. `own` is the tag of the endpoint whose SDP
    /// the streams are, `other` the opposite endpoint's.
    #[allow(clippy::too_many_arguments)]
    async fn update(
        &self,
        kind: UpdateKind,
        call_id: String,
        own: String,
        other: Option<String>,
        streams: Vec<StreamSpec>,
        leg: LegOptions,
        mut session: SessionOptions,
    ) -> Result<Vec<pb::AllocatedStream>, Status> {
        let mut out = Vec::with_capacity(streams.len());
        for s in streams {
            let request = UpdateRequest {
                kind,
                call_id: call_id.clone(),
                from_tag: own.clone(),
                to_tag: other.clone(),
                media_index: s.index,
                remote: s.remote,
                remote_rtcp: s.remote_rtcp,
                ipv6: s.ipv6,
                interface: s.interface,
                options: leg,
                notify: None,
                // Labels and timeouts are per session: the first stream carries them.
                session: std::mem::take(&mut session),
            };
            let reply = self
                .core
                .update(request)
                .await
                .map_err(|e| convert::update_error(e, kind, &call_id, s.index))?;
            out.push(convert::allocated(s.index, &reply));
        }
        Ok(out)
    }
}

#[tonic::async_trait]
impl Relay for RelayService {
    async fn get_info(
        &self,
        _request: Request<pb::GetInfoRequest>,
    ) -> Result<Response<pb::GetInfoResponse>, Status> {
        self.timed("info", async {
            Ok(Response::new(pb::GetInfoResponse {
                version: VERSION.to_owned(),
                uptime_seconds: self.started.elapsed().as_secs(),
            }))
        })
        .await
    }

    async fn offer(
        &self,
        request: Request<pb::OfferRequest>,
    ) -> Result<Response<pb::OfferResponse>, Status> {
        self.timed("offer", async {
            let req = request.into_inner();
            let call_id = convert::required_id("call_id", req.call_id)?;
            let from_tag = convert::required_id("from_tag", req.from_tag)?;
            let to_tag = convert::optional_id("to_tag", req.to_tag)?;
            let streams = convert::streams(&req.streams)?;
            let (leg, session) = convert::options(req.options.as_ref(), self.latch)?;
            let streams = self
                .update(
                    UpdateKind::Offer,
                    call_id,
                    from_tag,
                    to_tag,
                    streams,
                    leg,
                    session,
                )
                .await?;
            Ok(Response::new(pb::OfferResponse { streams }))
        })
        .await
    }

    async fn answer(
        &self,
        request: Request<pb::AnswerRequest>,
    ) -> Result<Response<pb::AnswerResponse>, Status> {
        self.timed("answer", async {
            let req = request.into_inner();
            let call_id = convert::required_id("call_id", req.call_id)?;
            let from_tag = convert::required_id("from_tag", req.from_tag)?;
            let to_tag = convert::required_id("to_tag", req.to_tag)?;
            let streams = convert::streams(&req.streams)?;
            let (leg, session) = convert::options(req.options.as_ref(), self.latch)?;
            // The streams are the answering (to-tag) endpoint's SDP, as in rtpproxy `L`: the
            // table wants the SDP's own tag first.
            let streams = self
                .update(
                    UpdateKind::Answer,
                    call_id,
                    to_tag,
                    Some(from_tag),
                    streams,
                    leg,
                    session,
                )
                .await?;
            Ok(Response::new(pb::AnswerResponse { streams }))
        })
        .await
    }

    async fn delete(
        &self,
        request: Request<pb::DeleteRequest>,
    ) -> Result<Response<pb::DeleteResponse>, Status> {
        self.timed("delete", async {
            let req = request.into_inner();
            let call_id = convert::required_id("call_id", req.call_id)?;
            let from_tag = convert::optional_id("from_tag", req.from_tag)?;
            let to_tag = convert::optional_id("to_tag", req.to_tag)?;
            if req.index == Some(0) {
                return Err(Status::invalid_argument(
                    "index must be 1 or more (the 1-based SDP m-line number)",
                ));
            }
            let scoped = from_tag.is_some() || to_tag.is_some() || req.index.is_some();
            self.core
                .delete(call_id.clone(), from_tag, to_tag, req.index)
                .await
                .map_err(|e| {
                    let what = if scoped {
                        format!("call `{call_id}` (or no stream with these tags/index): ")
                    } else {
                        format!("call `{call_id}`: ")
                    };
                    convert::core_error(e, &what)
                })?;
            Ok(Response::new(pb::DeleteResponse {}))
        })
        .await
    }

    async fn get_session(
        &self,
        request: Request<pb::GetSessionRequest>,
    ) -> Result<Response<pb::GetSessionResponse>, Status> {
        self.timed("get_session", async {
            let call_id = convert::required_id("call_id", request.into_inner().call_id)?;
            let info = self
                .core
                .get(call_id.clone())
                .await
                .map_err(|e| convert::core_error(e, ""))?
                .ok_or_else(|| Status::not_found(format!("call `{call_id}`: session not found")))?;
            Ok(Response::new(pb::GetSessionResponse {
                session: Some(convert::session(&info, crate::clock::now_ns())),
            }))
        })
        .await
    }

    async fn list_sessions(
        &self,
        request: Request<pb::ListSessionsRequest>,
    ) -> Result<Response<pb::ListSessionsResponse>, Status> {
        self.timed("list_sessions", async {
            let req = request.into_inner();
            let limit = convert::page_size(req.page_size);
            let filter = SessionFilter {
                state: convert::state_filter(req.state)?,
                labels: convert::labels(&req.labels)?,
                after: convert::parse_page_token(&req.page_token)?,
            };
            let (page, more) = self
                .core
                .list_page(filter, limit)
                .await
                .map_err(|e| convert::core_error(e, ""))?;
            let next_page_token = match page.last() {
                Some(last) if more => convert::page_token(&last.call_id),
                _ => String::new(),
            };
            let now_ns = crate::clock::now_ns();
            Ok(Response::new(pb::ListSessionsResponse {
                sessions: page.iter().map(|s| convert::session(s, now_ns)).collect(),
                next_page_token,
            }))
        })
        .await
    }

    async fn get_stats(
        &self,
        _request: Request<pb::GetStatsRequest>,
    ) -> Result<Response<pb::GetStatsResponse>, Status> {
        self.timed("stats", async {
            let stats = self
                .core
                .stats()
                .await
                .map_err(|e| convert::core_error(e, ""))?;
            Ok(Response::new(convert::stats(&stats)))
        })
        .await
    }

    type WatchStream = ReceiverStream<Result<pb::Event, Status>>;

    async fn watch(
        &self,
        request: Request<pb::WatchRequest>,
    ) -> Result<Response<Self::WatchStream>, Status> {
        self.timed("watch", async {
            let call_id = convert::optional_id("call_id", Some(request.into_inner().call_id))?;
            // Subscribed before the response goes out: a client that sees the stream open gets
            // every event published after.
            let mut events = self.core.subscribe();
            let mut shutdown = self.shutdown.clone();
            let (tx, rx) = mpsc::channel(WATCH_BUFFER);
            tokio::spawn(async move {
                let shutting_down = || Status::unavailable("the relay is shutting down");
                loop {
                    let item = tokio::select! {
                        // A dropped sender means the daemon is gone too.
                        _ = shutdown.wait_for(|stop| *stop) => Err(shutting_down()),
                        () = tx.closed() => return,
                        event = events.recv() => match event {
                            Ok(e) => {
                                if call_id.as_deref().is_some_and(|c| c != convert::event_call_id(&e)) {
                                    continue;
                                }
                                Ok(convert::event(&e, SystemTime::now()))
                            }
                            Err(RecvError::Lagged(missed)) => Err(Status::resource_exhausted(format!(
                                "this Watch stream fell {missed} events behind and was ended; \
                                 call Watch again (and ListSessions to resynchronise)"
                            ))),
                            Err(RecvError::Closed) => Err(shutting_down()),
                        },
                    };
                    let last = item.is_err();
                    tokio::select! {
                        sent = tx.send(item) => if sent.is_err() || last { return },
                        // A client that stops reading must not hold up the shutdown.
                        _ = shutdown.wait_for(|stop| *stop) => {
                            let _ = tx.try_send(Err(shutting_down()));
                            return;
                        }
                    }
                }
            });
            Ok(Response::new(ReceiverStream::new(rx)))
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use tokio_stream::StreamExt as _;
    use tonic::Code;

    use super::*;
    use crate::control::core::Core;
    use crate::datapath::user::SocketOpener;
    use crate::session::TableConfig;
    use crate::session::table::InterfaceSpec;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_watch_client_that_falls_behind_gets_resource_exhausted() {
        let config = TableConfig {
            interfaces: vec![InterfaceSpec {
                name: "lo".into(),
                address: "127.0.0.1".parse().unwrap(),
                advertise: None,
                port_min: 43800,
                port_max: 43899,
            }],
            quarantine: Duration::ZERO,
            latch: LatchPolicy::default(),
            dscp: 0,
            setup_timeout: Duration::from_secs(60),
            media_timeout: Duration::from_secs(60),
            session_ttl: None,
            max_sessions: 0,
            workers: 1,
            offload: false,
        };
        let (core, handle) = Core::start(config, SocketOpener::default(), None).unwrap();
        let (_stop, stopped) = watch::channel(false);
        let service = RelayService::new(
            handle.clone(),
            Instant::now(),
            LatchPolicy::default(),
            stopped,
        );
        let mut events = service
            .watch(Request::new(pb::WatchRequest::default()))
            .await
            .unwrap()
            .into_inner();
        // The client reads nothing while 2 x 2500 events (created, ended) go by: more than the
        // core's broadcast buffer plus the stream's own.
        for i in 0..2500 {
            let call_id = format!("lag-{i}");
            let offer = UpdateRequest {
                kind: UpdateKind::Offer,
                call_id: call_id.clone(),
                from_tag: "f".into(),
                to_tag: None,
                media_index: 1,
                remote: None,
                remote_rtcp: None,
                ipv6: false,
                interface: crate::session::InterfaceSel::Auto,
                options: LegOptions::default(),
                notify: None,
                session: SessionOptions::default(),
            };
            // Without quarantine a pair may come back before the worker closed its sockets.
            let mut attempts = 0;
            while let Err(e) = handle.update(offer.clone()).await {
                attempts += 1;
                assert!(attempts < 100, "{e}");
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            handle.delete(call_id, None, None, None).await.unwrap();
        }
        let mut delivered = 0;
        let status = loop {
            match tokio::time::timeout(Duration::from_secs(5), events.next()).await {
                Ok(Some(Ok(_))) => delivered += 1,
                Ok(Some(Err(status))) => break status,
                Ok(None) => panic!("stream ended without a status after {delivered} events"),
                Err(_) => panic!("no lag status after {delivered} events"),
            }
            assert!(delivered <= WATCH_BUFFER + 1, "more than buffered");
        };
        assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
        assert!(status.message().contains("behind"));
        assert!(delivered >= WATCH_BUFFER);
        assert!(
            tokio::time::timeout(Duration::from_secs(5), events.next())
                .await
                .unwrap()
                .is_none(),
            "the stream ends after the status"
        );
        drop((service, handle));
        tokio::task::spawn_blocking(move || core.join())
            .await
            .unwrap();
    }
}
