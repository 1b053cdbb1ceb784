//! The daemon driven over gRPC (sluice.v1) on loopback: offer/answer with media both ways,
//! GetSession counters and latched addresses, delete; sessions shared with the rtpproxy
//! protocol in both directions; Watch events including a setup timeout; every error code;
//! ListSessions paging and filters; sluicectl against the daemon.

mod common;

use common::{control_socket, recv, rtp, start_daemon};
use std::collections::HashMap;
use std::net::{SocketAddr, UdpSocket};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use sluice::config::Config;
use sluice::daemon::Daemon;
use sluice_proto::v1 as pb;
use sluice_proto::v1::relay_client::RelayClient;
use tonic::Code;
use tonic::transport::Channel;

const SLUICECTL: &str = env!("CARGO_BIN_EXE_sluicectl");

struct Relay {
    rt: tokio::runtime::Runtime,
    daemon: Option<Daemon>,
    client: RelayClient<Channel>,
    grpc: SocketAddr,
    control: UdpSocket,
    rtpp: SocketAddr,
    cookie: u32,
}

impl Relay {
    /// A daemon on 127.0.0.1 with media ports `port_min..=port_max` and `extra` TOML appended.
    fn start(port_min: u16, port_max: u16, extra: &str) -> Relay {
        let (rt, daemon) = start_daemon(port_min, port_max, extra);
        let grpc = daemon.grpc_addr();
        let rtpp = daemon.rtpp_udp_addr().expect("a UDP rtpproxy listener");
        let client = rt
            .block_on(RelayClient::connect(format!("http://{grpc}")))
            .expect("gRPC connects");
        let control = control_socket();
        Relay {
            rt,
            daemon: Some(daemon),
            client,
            grpc,
            control,
            rtpp,
            cookie: 0,
        }
    }

    fn client(&self) -> RelayClient<Channel> {
        self.client.clone()
    }

    fn offer(&self, req: pb::OfferRequest) -> Result<pb::OfferResponse, tonic::Status> {
        self.rt
            .block_on(self.client().offer(req))
            .map(|r| r.into_inner())
    }

    fn answer(&self, req: pb::AnswerRequest) -> Result<pb::AnswerResponse, tonic::Status> {
        self.rt
            .block_on(self.client().answer(req))
            .map(|r| r.into_inner())
    }

    fn delete(&self, call_id: &str) -> Result<(), tonic::Status> {
        self.rt
            .block_on(self.client().delete(pb::DeleteRequest {
                call_id: call_id.into(),
                ..Default::default()
            }))
            .map(|_| ())
    }

    fn session(&self, call_id: &str) -> Result<pb::Session, tonic::Status> {
        self.rt
            .block_on(self.client().get_session(pb::GetSessionRequest {
                call_id: call_id.into(),
            }))
            .map(|r| r.into_inner().session.expect("a session"))
    }

    fn list(
        &self,
        req: pb::ListSessionsRequest,
    ) -> Result<pb::ListSessionsResponse, tonic::Status> {
        self.rt
            .block_on(self.client().list_sessions(req))
            .map(|r| r.into_inner())
    }

    fn stats(&self) -> pb::GetStatsResponse {
        self.rt
            .block_on(self.client().get_stats(pb::GetStatsRequest {}))
            .unwrap()
            .into_inner()
    }

    fn watch(&self, call_id: &str) -> tonic::Streaming<pb::Event> {
        self.rt
            .block_on(self.client().watch(pb::WatchRequest {
                call_id: call_id.into(),
            }))
            .expect("Watch opens")
            .into_inner()
    }

    /// The next event within `within`; None on timeout; panics on stream errors.
    fn next_event(
        &self,
        stream: &mut tonic::Streaming<pb::Event>,
        within: Duration,
    ) -> Option<pb::Event> {
        self.rt
            .block_on(async { tokio::time::timeout(within, stream.message()).await })
            .ok()
            .map(|r| r.expect("no stream error").expect("stream still open"))
    }

    /// Sends an rtpproxy command; returns the reply without cookie and newline.
    fn rtpp(&mut self, command: &str) -> String {
        self.cookie += 1;
        let cookie = format!("g{}", self.cookie);
        self.control
            .send_to(format!("{cookie} {command}").as_bytes(), self.rtpp)
            .unwrap();
        let mut buf = [0u8; 4096];
        let n = self.control.recv(&mut buf).expect("rtpproxy reply");
        let reply = String::from_utf8_lossy(&buf[..n]).trim_end().to_owned();
        reply
            .strip_prefix(&format!("{cookie} "))
            .unwrap_or_else(|| panic!("`{command}` -> `{reply}`"))
            .to_owned()
    }

    fn sluicectl(&self, args: &[&str]) -> std::process::Output {
        let endpoint = format!("http://{}", self.grpc);
        Command::new(SLUICECTL)
            .args(["--endpoint", &endpoint, "--timeout", "5"])
            .args(args)
            .output()
            .expect("run sluicectl")
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        if let Some(d) = self.daemon.take() {
            let _ = self.rt.block_on(d.shutdown());
        }
    }
}

fn stream(index: u32, addr: SocketAddr) -> pb::MediaStream {
    pb::MediaStream {
        index,
        address: addr.ip().to_string(),
        rtp_port: u32::from(addr.port()),
        rtcp_port: None,
        interface: None,
    }
}

fn offer(call: &str, from: &str, addr: SocketAddr) -> pb::OfferRequest {
    pb::OfferRequest {
        call_id: call.into(),
        from_tag: from.into(),
        to_tag: None,
        streams: vec![stream(1, addr)],
        options: None,
    }
}

fn labelled(call: &str, labels: &[(&str, &str)]) -> pb::OfferRequest {
    pb::OfferRequest {
        options: Some(pb::SessionOptions {
            labels: labels
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
            ..Default::default()
        }),
        ..offer(call, "ft", lo(4000))
    }
}

fn answer(call: &str, from: &str, to: &str, addr: SocketAddr) -> pb::AnswerRequest {
    pb::AnswerRequest {
        call_id: call.into(),
        from_tag: from.into(),
        to_tag: to.into(),
        streams: vec![stream(1, addr)],
        options: None,
    }
}

fn lo(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

fn udp() -> UdpSocket {
    let s = UdpSocket::bind("127.0.0.1:0").unwrap();
    s.set_read_timeout(Some(Duration::from_millis(500)))
        .unwrap();
    s
}

fn addr(a: &Option<pb::SocketAddress>) -> Option<SocketAddr> {
    a.as_ref()
        .map(|a| SocketAddr::new(a.ip.parse().unwrap(), u16::try_from(a.port).unwrap()))
}

fn relay_port(s: &pb::AllocatedStream) -> SocketAddr {
    SocketAddr::new(
        s.address.parse().unwrap(),
        u16::try_from(s.rtp_port).unwrap(),
    )
}

fn code<T: std::fmt::Debug>(r: Result<T, tonic::Status>) -> Code {
    r.expect_err("an error status").code()
}

#[test]
fn offer_answer_media_both_ways_get_session_and_delete() {
    let relay = Relay::start(43000, 43099, "");
    let (caller, callee) = (udp(), udp());
    let (caller_addr, callee_addr) = (caller.local_addr().unwrap(), callee.local_addr().unwrap());
    let mut req = labelled("c1@h", &[("tenant", "acme")]);
    req.streams = vec![stream(1, caller_addr)];
    let offered = relay.offer(req.clone()).unwrap();
    assert_eq!(offered.streams.len(), 1);
    let to_callee = offered.streams[0].clone();
    assert_eq!(to_callee.index, 1);
    assert_eq!(to_callee.address, "127.0.0.1");
    assert_eq!(to_callee.rtp_port % 2, 0);
    assert_eq!(to_callee.rtcp_port, to_callee.rtp_port + 1);
    assert!((43000..=43099).contains(&to_callee.rtp_port));
    // Idempotent: a retried Offer gets the same ports.
    assert_eq!(relay.offer(req).unwrap(), offered);
    // Plaintext gRPC is served on the core's own runtime: no thread of its own (the TLS
    // listener gets one; grpc_security checks that side).
    assert!(
        !common::thread_names().iter().any(|n| n == "sluice-grpc"),
        "{:?}",
        common::thread_names()
    );
    assert_eq!(
        relay.session("c1@h").unwrap().state(),
        pb::SessionState::Offered
    );

    let answer_req = answer("c1@h", "ft", "tt", callee_addr);
    let answered = relay.answer(answer_req.clone()).unwrap();
    let to_caller = answered.streams[0].clone();
    assert_ne!(to_caller.rtp_port, to_callee.rtp_port);
    assert_eq!(to_caller.stream_id, to_callee.stream_id);
    assert_eq!(relay.answer(answer_req).unwrap(), answered, "idempotent");

    for seq in 0..10 {
        caller
            .send_to(&rtp(1, seq), relay_port(&to_caller))
            .unwrap();
        callee
            .send_to(&rtp(2, seq), relay_port(&to_callee))
            .unwrap();
    }
    for seq in 0..10 {
        let (data, from) = recv(&callee).expect("callee gets the caller's RTP");
        assert_eq!((data, from), (rtp(1, seq), relay_port(&to_callee)));
        let (data, from) = recv(&caller).expect("caller gets the callee's RTP");
        assert_eq!((data, from), (rtp(2, seq), relay_port(&to_caller)));
    }

    let s = relay.session("c1@h").unwrap();
    assert_eq!(s.call_id, "c1@h");
    assert_eq!(s.state(), pb::SessionState::Answered);
    assert_eq!(s.labels, HashMap::from([("tenant".into(), "acme".into())]));
    assert_eq!(s.media_timeout_ms, 60_000, "configured default");
    assert!(s.remaining_ms > 0 && s.remaining_ms <= 60_000);
    assert_eq!(s.streams.len(), 1);
    let st = &s.streams[0];
    assert_eq!(
        (st.id, st.index, st.legs.len()),
        (to_callee.stream_id, 1, 2)
    );
    let (caller_leg, callee_leg) = (&st.legs[0], &st.legs[1]);
    assert_eq!(caller_leg.tag, "ft");
    assert_eq!(callee_leg.tag, "tt");
    // Leg 0 faces the caller: its local port is the one the answer returned.
    assert_eq!(addr(&caller_leg.local_rtp), Some(relay_port(&to_caller)));
    assert_eq!(addr(&callee_leg.local_rtp), Some(relay_port(&to_callee)));
    assert_eq!(caller_leg.interface, "lo");
    assert_eq!(caller_leg.advertised_address, "127.0.0.1");
    assert_eq!(addr(&caller_leg.sdp_rtp), Some(caller_addr));
    assert_eq!(addr(&caller_leg.latched_rtp), Some(caller_addr));
    assert_eq!(addr(&callee_leg.latched_rtp), Some(callee_addr));
    assert_eq!(caller_leg.latched_rtcp, None);
    for leg in &st.legs {
        assert_eq!(leg.path(), pb::ForwardingPath::Userspace);
        let c = leg.counters.unwrap();
        assert_eq!((c.rx_packets, c.tx_packets), (10, 10), "{c:?}");
        assert_eq!((c.rx_bytes, c.tx_bytes), (1720, 1720));
        assert_eq!((c.rtp_lost, c.rtp_out_of_order), (0, 0), "{c:?}");
        assert!(c.rtp_expected >= 9, "{c:?}");
        assert_eq!(c.dropped.unwrap(), pb::DropCounters::default());
        assert!(c.idle_ms.is_some_and(|ms| ms < 10_000));
    }

    let stats = relay.stats();
    let sessions = stats.sessions.unwrap();
    assert_eq!(
        (sessions.active, sessions.created, sessions.streams_active),
        (1, 1, 1)
    );
    assert!(stats.datapath.unwrap().packets_forwarded >= 20);
    assert_eq!(stats.port_pools.len(), 1);
    let pool = &stats.port_pools[0];
    assert_eq!(
        (pool.interface.as_str(), pool.total, pool.in_use),
        ("lo", 50, 2)
    );
    assert_eq!(pool.available, 48);

    relay.delete("c1@h").unwrap();
    assert_eq!(code(relay.session("c1@h")), Code::NotFound);
    caller.send_to(&rtp(1, 99), relay_port(&to_caller)).unwrap();
    assert!(recv(&callee).is_none(), "nothing forwarded after delete");
    let sessions = relay.stats().sessions.unwrap();
    assert_eq!((sessions.active, sessions.deleted), (0, 1));
}

#[test]
fn two_streams_named_interface_and_delete_of_one_stream() {
    let relay = Relay::start(43600, 43699, "");
    let mut req = offer("av@h", "ft", lo(4000));
    req.streams.push(pb::MediaStream {
        rtcp_port: Some(4011),
        interface: Some("lo".into()),
        ..stream(2, lo(4010))
    });
    let offered = relay.offer(req).unwrap();
    assert_eq!(offered.streams.len(), 2);
    assert_eq!(offered.streams[1].index, 2);
    assert_ne!(offered.streams[0].stream_id, offered.streams[1].stream_id);
    let s = relay.session("av@h").unwrap();
    assert_eq!(s.streams.len(), 2);
    relay
        .rt
        .block_on(relay.client().delete(pb::DeleteRequest {
            call_id: "av@h".into(),
            from_tag: Some("ft".into()),
            to_tag: None,
            index: Some(2),
        }))
        .unwrap();
    let s = relay.session("av@h").unwrap();
    assert_eq!(s.streams.len(), 1, "the call stays with m-line 1");
    assert_eq!(s.streams[0].index, 1);
}

#[test]
fn sessions_are_shared_with_the_rtpproxy_protocol() {
    let mut relay = Relay::start(43100, 43199, "");
    // Created over rtpproxy, seen and deleted over gRPC.
    let reply = relay.rtpp("U rtpp@h 127.0.0.1 4000 ft;1");
    let port: u32 = reply.split(' ').next().unwrap().parse().unwrap();
    let listed = relay.list(pb::ListSessionsRequest::default()).unwrap();
    assert_eq!(listed.sessions.len(), 1);
    let s = &listed.sessions[0];
    assert_eq!(s.call_id, "rtpp@h");
    assert_eq!(s.state(), pb::SessionState::Offered);
    assert_eq!(s.streams[0].legs[0].tag, "ft");
    assert_eq!(
        addr(&s.streams[0].legs[1].local_rtp).map(|a| u32::from(a.port())),
        Some(port)
    );
    relay.delete("rtpp@h").unwrap();
    assert_eq!(relay.rtpp("Q rtpp@h ft;1"), "E50");

    // Created over gRPC, answered and deleted over rtpproxy.
    let offered = relay.offer(offer("grpc@h", "ft", lo(4000))).unwrap();
    let reply = relay.rtpp("L grpc@h 127.0.0.1 5000 ft;1 tt;1");
    assert!(reply.ends_with(" 127.0.0.1"), "{reply}");
    let s = relay.session("grpc@h").unwrap();
    assert_eq!(s.state(), pb::SessionState::Answered);
    assert_eq!(s.streams[0].id, offered.streams[0].stream_id);
    assert_eq!(s.streams[0].legs[1].tag, "tt");
    assert_eq!(relay.rtpp("D grpc@h ft tt"), "0");
    assert_eq!(code(relay.session("grpc@h")), Code::NotFound);
    assert_eq!(code(relay.delete("grpc@h")), Code::NotFound);
}

#[test]
fn watch_delivers_lifecycle_and_setup_timeout_events() {
    let relay = Relay::start(43200, 43299, "[session]\nsetup_timeout = \"1s\"\n");
    let mut all = relay.watch("");
    let mut only_w2 = relay.watch("w2@h");

    // A session whose caller sends media after the answer: created, answered, latched, ended.
    let (caller, callee) = (udp(), udp());
    relay
        .offer(offer("w1@h", "ft", caller.local_addr().unwrap()))
        .unwrap();
    let answered = relay
        .answer(answer("w1@h", "ft", "tt", callee.local_addr().unwrap()))
        .unwrap();
    caller
        .send_to(&rtp(1, 0), relay_port(&answered.streams[0]))
        .unwrap();
    assert!(recv(&callee).is_some());
    let wait = Duration::from_secs(5);
    let mut kinds: Vec<pb::Event> = (0..3)
        .map(|_| relay.next_event(&mut all, wait).expect("an event"))
        .collect();
    relay.delete("w1@h").unwrap();
    kinds.push(relay.next_event(&mut all, wait).expect("the end event"));
    assert!(kinds.iter().all(|e| e.call_id == "w1@h"));
    assert_eq!(
        kinds.iter().map(pb::Event::kind).collect::<Vec<_>>(),
        [
            pb::EventKind::Created,
            pb::EventKind::Answered,
            pb::EventKind::Latched,
            pb::EventKind::Ended
        ]
    );
    let latched = &kinds[2];
    assert_eq!(latched.leg, 0);
    assert!(!latched.rtcp && !latched.relatched);
    assert_eq!(addr(&latched.address), Some(caller.local_addr().unwrap()));
    assert_eq!(latched.stream_id, answered.streams[0].stream_id);
    assert_eq!(kinds[3].reason(), pb::EndReason::Deleted);
    assert!(kinds[0].unix_time_ms > 1_600_000_000_000);

    // Never answered: the setup timeout (1 s) ends it; a per-session override keeps another.
    let started = Instant::now();
    relay.offer(offer("w2@h", "ft", lo(4000))).unwrap();
    let mut long = offer("w3@h", "ft", lo(4000));
    long.options = Some(pb::SessionOptions {
        setup_timeout_seconds: Some(60),
        ..Default::default()
    });
    relay.offer(long).unwrap();
    let created = relay.next_event(&mut only_w2, wait).expect("created");
    assert_eq!(
        (created.kind(), created.call_id.as_str()),
        (pb::EventKind::Created, "w2@h")
    );
    let ended = relay.next_event(&mut only_w2, wait).expect("timeout event");
    assert_eq!(ended.kind(), pb::EventKind::Ended);
    assert_eq!(ended.reason(), pb::EndReason::SetupTimeout);
    assert_eq!(ended.call_id, "w2@h");
    assert!(started.elapsed() >= Duration::from_millis(900));
    let w3 = relay.session("w3@h").expect("the 60 s override keeps w3");
    assert_eq!(w3.setup_timeout_ms, 60_000);
    assert_eq!(relay.stats().sessions.unwrap().setup_timeout, 1);
    // The unfiltered stream saw both creations and the timeout too.
    let mut seen = Vec::new();
    while let Some(e) = relay.next_event(&mut all, Duration::from_millis(300)) {
        seen.push((e.call_id.clone(), e.kind()));
    }
    assert!(
        seen.contains(&("w3@h".into(), pb::EventKind::Created)),
        "{seen:?}"
    );
    assert!(
        seen.contains(&("w2@h".into(), pb::EventKind::Ended)),
        "{seen:?}"
    );
}

#[test]
fn watch_ends_with_unavailable_when_the_relay_shuts_down() {
    let mut relay = Relay::start(43700, 43799, "");
    let mut events = relay.watch("");
    let daemon = relay.daemon.take().unwrap();
    let started = Instant::now();
    relay
        .rt
        .block_on(daemon.shutdown())
        .expect("shutdown does not wait for the Watch client");
    assert!(started.elapsed() < Duration::from_secs(4));
    let end = relay
        .rt
        .block_on(async { tokio::time::timeout(Duration::from_secs(5), events.message()).await })
        .expect("the stream ends");
    assert_eq!(end.expect_err("an error status").code(), Code::Unavailable);
}

#[test]
fn every_error_code() {
    // Two port pairs, two sessions at most.
    let relay = Relay::start(43300, 43303, "[session]\nmax_sessions = 2\n");

    // INVALID_ARGUMENT
    let invalid: Vec<(&str, pb::OfferRequest)> = vec![
        ("no call-id", offer("", "ft", lo(4000))),
        ("no from-tag", offer("c", "", lo(4000))),
        (
            "no streams",
            pb::OfferRequest {
                streams: vec![],
                ..offer("c", "ft", lo(4000))
            },
        ),
        (
            "index 0",
            pb::OfferRequest {
                streams: vec![stream(0, lo(4000))],
                ..offer("c", "ft", lo(4000))
            },
        ),
        (
            "bad address",
            pb::OfferRequest {
                streams: vec![pb::MediaStream {
                    address: "300.1.1.1".into(),
                    ..stream(1, lo(4000))
                }],
                ..offer("c", "ft", lo(4000))
            },
        ),
        (
            "bad port",
            pb::OfferRequest {
                streams: vec![pb::MediaStream {
                    rtp_port: 70000,
                    ..stream(1, lo(4000))
                }],
                ..offer("c", "ft", lo(4000))
            },
        ),
        (
            "unknown interface",
            pb::OfferRequest {
                streams: vec![pb::MediaStream {
                    interface: Some("nope".into()),
                    ..stream(1, lo(4000))
                }],
                ..offer("c", "ft", lo(4000))
            },
        ),
        (
            "no IPv6 interface",
            offer("c", "ft", "[::1]:4000".parse().unwrap()),
        ),
        ("bad label", labelled("c", &[("white space", "v")])),
        (
            "bad dscp",
            pb::OfferRequest {
                options: Some(pb::SessionOptions {
                    dscp: Some(99),
                    ..Default::default()
                }),
                ..offer("c", "ft", lo(4000))
            },
        ),
    ];
    for (what, req) in invalid {
        let status = relay.offer(req).expect_err(what);
        assert_eq!(status.code(), Code::InvalidArgument, "{what}: {status:?}");
        assert!(!status.message().is_empty());
    }
    let no_to_tag = answer("c", "ft", "", lo(5000));
    assert_eq!(code(relay.answer(no_to_tag)), Code::InvalidArgument);
    let bad_token = relay.list(pb::ListSessionsRequest {
        page_token: "garbage".into(),
        ..Default::default()
    });
    assert_eq!(code(bad_token), Code::InvalidArgument);
    assert_eq!(
        relay.stats().sessions.unwrap().created,
        0,
        "nothing was created"
    );

    // NOT_FOUND
    assert_eq!(code(relay.session("nope")), Code::NotFound);
    assert_eq!(code(relay.delete("nope")), Code::NotFound);

    // FAILED_PRECONDITION: an answer before any offer.
    let status = relay
        .answer(answer("nope", "ft", "tt", lo(5000)))
        .unwrap_err();
    assert_eq!(status.code(), Code::FailedPrecondition);
    assert!(
        status.message().contains("answer before offer"),
        "{status:?}"
    );

    // RESOURCE_EXHAUSTED: the session limit, then the port pool.
    relay.offer(offer("c1", "ft", lo(4000))).unwrap();
    relay.offer(offer("c2", "ft", lo(4000))).unwrap();
    let status = relay.offer(offer("c3", "ft", lo(4000))).unwrap_err();
    assert_eq!(status.code(), Code::ResourceExhausted);
    assert!(status.message().contains("session limit"), "{status:?}");
    let status = relay
        .answer(answer("c1", "ft", "tt", lo(5000)))
        .unwrap_err();
    assert_eq!(status.code(), Code::ResourceExhausted);
    assert!(status.message().contains("no free port pair"), "{status:?}");
}

#[test]
fn unavailable_once_the_core_has_stopped() {
    use sluice::control::core::Core;
    use sluice::control::grpc::RelayService;
    use sluice::datapath::user::SocketOpener;
    use sluice_proto::v1::relay_server::RelayServer;

    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let toml = "[media]\nport_min = 43800\nport_max = 43899\n\
                [[media.interface]]\nname = \"lo\"\naddress = \"127.0.0.1\"\n";
    let config = Config::from_toml(toml, "test").unwrap();
    let table = sluice::daemon::table_config(&config);
    let latch = table.latch;
    let (core, handle) = Core::start(table, SocketOpener::default(), None).unwrap();
    core.join();
    let (_stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let service = RelayService::new(handle, Instant::now(), latch, stop_rx);
    let listener = rt
        .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .unwrap();
    let addr = listener.local_addr().unwrap();
    let (done_tx, done_rx) = tokio::sync::oneshot::channel::<()>();
    let server = rt.spawn(
        tonic::transport::Server::builder()
            .add_service(RelayServer::new(service))
            .serve_with_incoming_shutdown(
                tokio_stream::wrappers::TcpListenerStream::new(listener),
                async {
                    let _ = done_rx.await;
                },
            ),
    );
    let mut client = rt
        .block_on(RelayClient::connect(format!("http://{addr}")))
        .unwrap();
    let status = rt
        .block_on(client.offer(offer("c", "ft", lo(4000))))
        .unwrap_err();
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    assert!(status.message().contains("shutting down"), "{status:?}");
    let status = rt
        .block_on(client.get_stats(pb::GetStatsRequest {}))
        .unwrap_err();
    assert_eq!(status.code(), Code::Unavailable);
    let _ = done_tx.send(());
    rt.block_on(server).unwrap().unwrap();
}

#[test]
fn list_sessions_pages_in_call_id_order_and_filters() {
    let relay = Relay::start(43400, 43499, "");
    let calls = ["g", "c", "a", "f", "b", "e", "d"];
    for (i, call) in calls.iter().enumerate() {
        let tenant = if i % 2 == 0 { "even" } else { "odd" };
        relay
            .offer(labelled(call, &[("tenant", tenant), ("node", "n1")]))
            .unwrap();
    }
    relay.answer(answer("c", "ft", "tt", lo(5000))).unwrap();
    relay.answer(answer("d", "ft", "tt", lo(5000))).unwrap();

    let mut seen = Vec::new();
    let mut token = String::new();
    let mut pages = 0;
    loop {
        let page = relay
            .list(pb::ListSessionsRequest {
                page_size: 3,
                page_token: token.clone(),
                ..Default::default()
            })
            .unwrap();
        pages += 1;
        assert!(page.sessions.len() <= 3);
        seen.extend(page.sessions.into_iter().map(|s| s.call_id));
        if page.next_page_token.is_empty() {
            break;
        }
        token = page.next_page_token;
        assert!(pages < 10, "paging terminates");
    }
    assert_eq!(pages, 3);
    assert_eq!(seen, ["a", "b", "c", "d", "e", "f", "g"]);

    let ids = |req: pb::ListSessionsRequest| -> Vec<String> {
        relay
            .list(req)
            .unwrap()
            .sessions
            .into_iter()
            .map(|s| s.call_id)
            .collect()
    };
    let by_label = |pairs: &[(&str, &str)]| pb::ListSessionsRequest {
        labels: pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect(),
        ..Default::default()
    };
    // Offer order g c a f b e d: even positions g a b d.
    assert_eq!(ids(by_label(&[("tenant", "even")])), ["a", "b", "d", "g"]);
    assert_eq!(
        ids(by_label(&[("tenant", "odd"), ("node", "n1")])),
        ["c", "e", "f"]
    );
    assert!(ids(by_label(&[("tenant", "odd"), ("node", "n2")])).is_empty());
    assert_eq!(
        ids(pb::ListSessionsRequest {
            state: pb::SessionState::Answered as i32,
            ..Default::default()
        }),
        ["c", "d"]
    );
    assert_eq!(
        ids(pb::ListSessionsRequest {
            state: pb::SessionState::Answered as i32,
            ..by_label(&[("tenant", "even")])
        }),
        ["d"]
    );
    let s = &relay.list(by_label(&[("tenant", "odd")])).unwrap().sessions[0];
    assert_eq!(s.labels["node"], "n1");
}

#[test]
fn sluicectl_lists_shows_stats_watches_and_deletes() {
    let relay = Relay::start(43500, 43599, "");
    relay
        .offer(labelled("ctl-1@h", &[("tenant", "acme")]))
        .unwrap();
    relay
        .offer(labelled("ctl-2@h", &[("tenant", "other")]))
        .unwrap();
    relay
        .answer(answer("ctl-1@h", "ft", "tt", lo(5000)))
        .unwrap();

    let json = |args: &[&str]| -> serde_json::Value {
        let mut all = vec!["--output", "json"];
        all.extend_from_slice(args);
        let out = relay.sluicectl(&all);
        assert!(out.status.success(), "{args:?}: {out:?}");
        serde_json::from_slice(&out.stdout).expect("one JSON document")
    };
    let list = json(&["sessions", "list"]);
    let sessions = list["sessions"].as_array().unwrap();
    assert_eq!(sessions.len(), 2);
    assert_eq!(sessions[0]["call_id"], "ctl-1@h");
    assert_eq!(sessions[0]["state"], "answered");
    assert_eq!(sessions[0]["labels"]["tenant"], "acme");
    assert_eq!(sessions[1]["state"], "offered");
    let filtered = json(&["sessions", "list", "--label", "tenant=other"]);
    assert_eq!(filtered["sessions"][0]["call_id"], "ctl-2@h");
    assert_eq!(filtered["sessions"].as_array().unwrap().len(), 1);
    let answered = json(&["sessions", "list", "--state", "answered"]);
    assert_eq!(answered["sessions"].as_array().unwrap().len(), 1);

    let show = json(&["sessions", "show", "ctl-1@h"]);
    assert_eq!(show["call_id"], "ctl-1@h");
    let legs = show["streams"][0]["legs"].as_array().unwrap();
    assert_eq!(legs[0]["tag"], "ft");
    assert_eq!(legs[1]["sdp_rtp"], "127.0.0.1:5000");
    assert_eq!(legs[0]["path"], "userspace");
    assert_eq!(legs[0]["counters"]["rx_packets"], 0);
    assert!(legs[0]["latched_rtp"].is_null());

    let stats = json(&["stats"]);
    assert_eq!(stats["sessions"]["active"], 2);
    assert_eq!(stats["port_pools"][0]["interface"], "lo");
    assert_eq!(stats["port_pools"][0]["in_use"], 3);

    // Tables for people: a header and aligned rows.
    let out = relay.sluicectl(&["sessions", "list"]);
    let text = String::from_utf8_lossy(&out.stdout);
    let lines: Vec<&str> = text.lines().collect();
    assert!(lines[0].starts_with("CALL-ID"), "{text}");
    assert_eq!(lines.len(), 3, "{text}");
    let column = lines[0].find("STATE").unwrap();
    assert_eq!(&lines[1][column..column + 8], "answered", "{text}");
    let out = relay.sluicectl(&["sessions", "show", "ctl-1@h"]);
    assert!(String::from_utf8_lossy(&out.stdout).contains("STREAM/LEG"));
    let out = relay.sluicectl(&["stats"]);
    assert!(String::from_utf8_lossy(&out.stdout).contains("sessions active"));

    // watch: one JSON object per line. Offer new calls until the subscription shows one.
    let endpoint = format!("http://{}", relay.grpc);
    let mut child = Command::new(SLUICECTL)
        .args(["--endpoint", &endpoint, "--output", "json", "watch"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn sluicectl watch");
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        use std::io::BufRead;
        for line in std::io::BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
        {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let mut line = None;
    for i in 0..25 {
        relay
            .offer(offer(&format!("watch-{i}@h"), "ft", lo(4000)))
            .unwrap();
        if let Ok(l) = rx.recv_timeout(Duration::from_millis(200)) {
            line = Some(l);
            break;
        }
    }
    let _ = child.kill();
    let _ = child.wait();
    let event: serde_json::Value =
        serde_json::from_str(&line.expect("sluicectl watch prints an event")).unwrap();
    assert_eq!(event["kind"], "created");
    assert!(event["call_id"].as_str().unwrap().starts_with("watch-"));

    // delete, then show fails with the gRPC code on stderr.
    let out = relay.sluicectl(&["sessions", "delete", "ctl-2@h"]);
    assert!(out.status.success(), "{out:?}");
    assert_eq!(code(relay.session("ctl-2@h")), Code::NotFound);
    let out = relay.sluicectl(&["sessions", "show", "ctl-2@h"]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("NotFound"),
        "{out:?}"
    );
    let out = relay.sluicectl(&["sessions", "delete", "ctl-2@h"]);
    assert!(!out.status.success());
}

#[test]
fn offer_options_strict_latching_and_a_per_session_media_timeout() {
    let relay = Relay::start(43900, 43999, "");
    let (caller, stranger, callee) = (udp(), udp(), udp());
    let mut events = relay.watch("opt@h");
    let mut req = offer("opt@h", "ft", caller.local_addr().unwrap());
    req.options = Some(pb::SessionOptions {
        latch_mode: pb::LatchMode::Strict as i32,
        media_timeout_seconds: Some(1),
        dscp: Some(10),
        ..Default::default()
    });
    relay.offer(req).unwrap();
    // The answer carries no options: the offer's stay.
    let answered = relay
        .answer(answer("opt@h", "ft", "tt", callee.local_addr().unwrap()))
        .unwrap();
    let to_caller = relay_port(&answered.streams[0]);
    // Strict: only the SDP address may send on the caller's leg.
    stranger.send_to(&rtp(9, 0), to_caller).unwrap();
    assert!(recv(&callee).is_none(), "strict latching drops a stranger");
    caller.send_to(&rtp(1, 0), to_caller).unwrap();
    assert!(recv(&callee).is_some());
    let s = relay.session("opt@h").unwrap();
    assert_eq!(s.media_timeout_ms, 1000);
    let c = s.streams[0].legs[0].counters.unwrap();
    assert_eq!((c.rx_packets, c.dropped.unwrap().source), (1, 1));

    // No more media: the 1 s media timeout (60 s configured) ends the call.
    let started = Instant::now();
    let ended = loop {
        let e = relay
            .next_event(&mut events, Duration::from_secs(5))
            .expect("events until the end");
        if e.kind() == pb::EventKind::Ended {
            break e;
        }
        assert!(started.elapsed() < Duration::from_secs(10));
    };
    assert_eq!(ended.reason(), pb::EndReason::MediaTimeout);
    assert_eq!(code(relay.session("opt@h")), Code::NotFound);
}
