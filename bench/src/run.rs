//! `sluice-bench run`: options, relay setup, scenario dispatch, report.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use clap::{Args, ValueEnum};

use crate::kernel;
use crate::relay::{self, Relay, RelayProcess, SpawnOptions};
use crate::report::{Machine, RelayInfo, Report};
use crate::rtpengine::{self, RtpengineOptions, RtpengineProcess};
use crate::scenario::control::{self, ControlOptions, GrpcClient};
use crate::scenario::control_grpc;
use crate::scenario::flood::{self, FloodOptions, Forwarder};
use crate::scenario::steady::{self, SteadyOptions};
use crate::signal::Protocol;
use crate::testbed::{Placement, Testbed};
use crate::topo::Shape;
use sluice::datapath::xdp::aux_prog::AuxKind;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Target {
    /// Sluice through its rtpproxy-protocol front end (started by the harness unless --connect).
    SluiceRtpp,
    /// Sluice through its gRPC front end (sluice.v1; started by the harness; control only).
    SluiceGrpc,
    /// Any other relay speaking the rtpproxy protocol (e.g. sippy/rtpproxy); needs --connect.
    Rtpproxy,
    /// rtpengine (Debian's rtpengine-daemon, userspace) over its ng protocol; started by the
    /// harness unless --connect (--relay-bin: the rtpengine binary).
    RtpengineNg,
    /// No relay: steady's endpoints send straight to each other (the generator's own floor).
    Direct,
    /// No relay: the minimal XDP_TX reflector on the relay's devices turns every packet
    /// around to its sender (flood on `--net netns`: the floor for any forwarder's cost).
    Reflector,
    /// No relay: the same reflector sending with a DEVMAP redirect to the ingress device, the
    /// helper the fast path uses when a flow leaves through another device (the floor for a
    /// redirecting forwarder).
    ReflectorRedirect,
}

/// Where the relay's devices run their receive processing (NAPI), which is where XDP runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, ValueEnum)]
pub enum Napi {
    /// In softirq, on the CPU that queued the frame: on a veth, that is the sender's, right
    /// after each send, so every program run follows the generator's send path.
    #[default]
    Softirq,
    /// In a kernel thread per device queue: frames queued while it runs are processed back to
    /// back, as a NIC's receive batches are, with the generator's work out of the way.
    Threaded,
}

/// Where the traffic flows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Net {
    /// Everything on 127.0.0.1 in the harness's namespace.
    Loopback,
    /// Caller, relay and callee in namespaces joined by veth pairs (198.18.0.0/15; needs
    /// root), so the relay's XDP fast path can forward: the relay routes between a caller link
    /// and a callee link (XDP redirects).
    Netns,
    /// The same namespaces on one bridged segment: the relay has one device and answers on it
    /// (XDP_TX), like a single-NIC media relay.
    OneArm,
}

impl Net {
    /// As on the command line.
    pub fn name(self) -> String {
        self.to_possible_value()
            .map_or_else(|| format!("{self:?}"), |v| v.get_name().to_owned())
    }

    fn shape(self) -> Option<Shape> {
        match self {
            Net::Loopback => None,
            Net::Netns => Some(Shape::Routed),
            Net::OneArm => Some(Shape::OneArm),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Scenario {
    /// Offer + answer + delete cycles, no media.
    Control,
    /// Concurrent calls with RTP/RTCP both ways.
    Steady,
    /// A few calls driven as fast as the generator can (or at --rate pps): saturation point
    /// and CPU per forwarded packet.
    Flood,
}

/// Parses "10", "10s", "1.5s", "500ms", "2m".
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let (num, mult) = if let Some(n) = s.strip_suffix("ms") {
        (n, 1e-3)
    } else if let Some(n) = s.strip_suffix('s') {
        (n, 1.0)
    } else if let Some(n) = s.strip_suffix('m') {
        (n, 60.0)
    } else {
        (s, 1.0)
    };
    let v: f64 = num
        .trim()
        .parse()
        .map_err(|_| format!("`{s}`: expected a duration like 10s, 500ms, 2m"))?;
    if !(v.is_finite() && v >= 0.0) {
        return Err(format!("`{s}`: must be >= 0"));
    }
    Ok(Duration::from_secs_f64(v * mult))
}

/// Parses "MIN-MAX".
pub fn parse_range(s: &str) -> Result<(u16, u16), String> {
    let (a, b) = s
        .split_once('-')
        .ok_or_else(|| format!("`{s}`: expected MIN-MAX"))?;
    let a: u16 = a.trim().parse().map_err(|_| format!("`{s}`: bad port"))?;
    let b: u16 = b.trim().parse().map_err(|_| format!("`{s}`: bad port"))?;
    if a >= b || a < 1024 {
        return Err(format!("`{s}`: need 1024 <= MIN < MAX"));
    }
    Ok((a, b))
}

#[derive(Debug, Clone, Args)]
pub struct RunArgs {
    /// Relay under test.
    #[arg(long, value_enum, default_value = "sluice-rtpp")]
    pub target: Target,
    #[arg(long, value_enum)]
    pub scenario: Scenario,

    /// Relay binary to start (default: `sluice` next to this executable; for rtpengine-ng,
    /// `rtpengine` on PATH or /usr/bin/rtpengine).
    #[arg(long, value_name = "PATH")]
    pub relay_bin: Option<PathBuf>,
    /// Use a running relay at udp:127.0.0.1:PORT instead of starting one.
    #[arg(long, value_name = "udp:ADDR:PORT")]
    pub connect: Option<String>,
    /// With --connect: the relay's pid, for CPU/memory/fd accounting.
    #[arg(long, value_name = "PID")]
    pub relay_pid: Option<u32>,
    /// media.workers of the started relay (0 = one per core); rtpengine: --num-threads.
    #[arg(long, default_value_t = 0)]
    pub workers: u32,
    /// media.port_min-port_max of the started relay.
    #[arg(long, default_value = "20000-31999", value_parser = parse_range)]
    pub relay_ports: (u16, u16),
    /// media.quarantine of the started relay [default: 0s for control (at 20k cycles/s a 10 s
    /// quarantine would need 400k port pairs), 10s for steady]. rtpengine: --delete-delay in
    /// whole seconds [default 0, so its ports and fds are free at once after a delete].
    #[arg(long, value_parser = parse_duration)]
    pub quarantine: Option<Duration>,
    /// xdp.mode of the started relay (the userspace relay is measured with "off").
    #[arg(long, default_value = "off")]
    pub xdp: String,
    /// log.level of the started relay.
    #[arg(long, default_value = "warn")]
    pub relay_log_level: String,

    /// How long to run: control, until cycles start no more [default 10s unless --cycles];
    /// steady, the measurement window after the ramp [default 30s].
    #[arg(long, value_parser = parse_duration)]
    pub duration: Option<Duration>,
    /// control: cycles in flight at once.
    #[arg(long, default_value_t = 16)]
    pub concurrency: usize,
    /// control: stop after this many cycles.
    #[arg(long)]
    pub cycles: Option<u64>,
    /// control: start cycles at this fixed rate (per second) instead of back to back;
    /// flood: offered packets per second over all streams (default: as fast as possible).
    #[arg(long, value_name = "PER_S")]
    pub rate: Option<f64>,
    /// Control command retransmission timeout (Kamailio: 1 s).
    #[arg(long, default_value = "1s", value_parser = parse_duration)]
    pub timeout: Duration,
    /// Control command tries before giving up (Kamailio: 5).
    #[arg(long, default_value_t = 5)]
    pub tries: u32,
    /// control, sluice-grpc: the gRPC client. `h2` frames calls itself on h2 (a third of
    /// tonic's client CPU, which shares the machine with the relay); `tonic` is the stock
    /// client.
    #[arg(long, value_enum, default_value = "h2")]
    pub grpc_client: GrpcClient,

    /// Where the traffic flows (flood and steady; control always runs on loopback).
    #[arg(long, value_enum, default_value = "loopback")]
    pub net: Net,
    /// With --net netns|one-arm: where the relay's devices do their receive processing.
    #[arg(long, value_enum, default_value = "softirq")]
    pub napi: Napi,
    /// steady: concurrent calls [default 1000]; flood: calls [default 4].
    #[arg(long)]
    pub calls: Option<usize>,
    /// flood: datagrams per sendmmsg per socket.
    #[arg(long, default_value_t = 32)]
    pub batch: usize,
    /// flood: traffic before the window (latching, hand-off to the kernel).
    #[arg(long, default_value = "2s", value_parser = parse_duration)]
    pub warmup: Duration,
    /// steady: calls set up per second.
    #[arg(long, value_name = "CALLS_PER_S", default_value_t = 500.0)]
    pub ramp: f64,
    /// steady: RTP packets per second per direction.
    #[arg(long, default_value_t = 50)]
    pub pps: u32,
    /// steady: RTCP sender report interval per direction.
    #[arg(long, default_value = "5s", value_parser = parse_duration)]
    pub rtcp_interval: Duration,
    /// steady: sender threads.
    #[arg(long, default_value_t = 1)]
    pub send_threads: usize,
    /// steady: receiver threads.
    #[arg(long, default_value_t = 1)]
    pub recv_threads: usize,
    /// steady: local ports of the generator's endpoints (4 per call).
    #[arg(long, default_value = "10000-19999", value_parser = parse_range)]
    pub endpoint_ports: (u16, u16),
    /// steady: sender wakeups per packet period; calls are spread evenly over them (20 = a
    /// wakeup every 1 ms at 50 pps, i.e. 1/20 of the calls per wakeup).
    #[arg(long, default_value_t = 20)]
    pub phases: u64,
    /// steady: wait after the last packet before counting.
    #[arg(long, default_value = "500ms", value_parser = parse_duration)]
    pub drain: Duration,

    /// Also write the report as JSON here.
    #[arg(long, value_name = "FILE")]
    pub json: Option<PathBuf>,
    /// No progress lines.
    #[arg(long)]
    pub quiet: bool,
}

/// Runs one benchmark and returns its report.
pub fn execute(a: &RunArgs) -> Result<Report> {
    crate::clock::now_ns(); // fix the epoch
    // The relay inherits the limit: 4 sockets per call on each side.
    crate::sys::raise_nofile_limit().context("raising RLIMIT_NOFILE")?;
    let machine = Machine::probe();
    if a.scenario == Scenario::Flood || (a.scenario == Scenario::Steady && a.net != Net::Loopback) {
        return execute_media(a, machine);
    }
    if a.net != Net::Loopback {
        bail!(
            "--net {} is implemented for --scenario flood and steady",
            a.net.name()
        );
    }
    let protocol = match a.target {
        Target::RtpengineNg => Protocol::Ng,
        _ => Protocol::Rtpp,
    };
    // rtpengine is not a `Relay::Spawned` (that is a sluice with its config); it lives here
    // for the run and is reached like a connected relay.
    let mut engine: Option<RtpengineProcess> = None;
    let relay = match (&a.connect, a.target) {
        (_, Target::Direct) => {
            if a.scenario != Scenario::Steady {
                bail!("--target direct only makes sense with --scenario steady");
            }
            // Never contacted: the endpoints talk to each other.
            Relay::Connected {
                rtpp: "127.0.0.1:9".parse().unwrap(),
                pid: None,
            }
        }
        (_, Target::Reflector | Target::ReflectorRedirect) => {
            bail!("--target reflector* only works with --scenario flood")
        }
        (Some(_), Target::SluiceGrpc) => bail!("--target sluice-grpc starts its own relay"),
        (Some(spec), _) => Relay::Connected {
            rtpp: relay::parse_connect(spec)?,
            pid: a.relay_pid,
        },
        (None, Target::Rtpproxy) => bail!("--target rtpproxy needs --connect udp:127.0.0.1:PORT"),
        (None, Target::RtpengineNg) => {
            let e = RtpengineProcess::spawn(&rtpengine_options(a), Duration::from_secs(15))?;
            let r = Relay::Connected {
                rtpp: e.ng,
                pid: Some(e.child.pid()),
            };
            engine = Some(e);
            r
        }
        (None, Target::SluiceRtpp | Target::SluiceGrpc) => {
            let bin = match &a.relay_bin {
                Some(b) => b.clone(),
                None => relay::default_relay_bin().context(
                    "no `sluice` binary next to sluice-bench; build it (cargo build --release -p sluice) \
                     or pass --relay-bin",
                )?,
            };
            let quarantine = a.quarantine.unwrap_or(match a.scenario {
                Scenario::Control => Duration::ZERO,
                Scenario::Steady | Scenario::Flood => Duration::from_secs(10),
            });
            let o = SpawnOptions {
                bin,
                workers: a.workers,
                port_min: a.relay_ports.0,
                port_max: a.relay_ports.1,
                quarantine: format!("{}ms", quarantine.as_millis()),
                xdp: a.xdp.clone(),
                log_level: a.relay_log_level.clone(),
                address: std::net::Ipv4Addr::LOCALHOST.into(),
                xdp_interfaces: Vec::new(),
                netns: None,
            };
            Relay::Spawned(RelayProcess::spawn(&o, Duration::from_secs(15))?)
        }
    };
    if let Relay::Connected { rtpp, .. } = &relay
        && a.target != Target::Direct
        && !crate::signal::probe(protocol, *rtpp, Duration::from_millis(500))
    {
        match protocol {
            Protocol::Rtpp => bail!("the relay at udp:{rtpp} does not answer V with 20040107"),
            Protocol::Ng => bail!("the relay at udp:{rtpp} does not answer the ng ping"),
        }
    }
    let mut info = RelayInfo {
        mode: match &relay {
            Relay::Spawned(_) => "spawned".into(),
            Relay::Connected { .. } => "connected".into(),
        },
        bin: match &relay {
            Relay::Spawned(_) => a
                .relay_bin
                .clone()
                .or_else(relay::default_relay_bin)
                .map(|p| p.display().to_string()),
            Relay::Connected { .. } => None,
        },
        pid: relay.pid(),
        rtpp: format!("udp:{}", relay.rtpp()),
        config: match &relay {
            Relay::Spawned(p) => Some(p.config.clone()),
            Relay::Connected { .. } => None,
        },
        build: match &relay {
            Relay::Spawned(p) => relay::build_info(p.metrics),
            Relay::Connected { .. } => None,
        },
    };
    if let Some(e) = &engine {
        info.mode = "spawned".into();
        info.bin = Some(e.bin.display().to_string());
        info.config = Some(e.command.clone());
        info.build = e.version.clone();
    }
    let progress = !a.quiet;
    let (control, steady) = match a.scenario {
        Scenario::Control => {
            let duration = match (a.duration, a.cycles) {
                (None, None) => Some(Duration::from_secs(10)),
                (d, _) => d,
            };
            let o = ControlOptions {
                concurrency: a.concurrency,
                duration,
                cycles: a.cycles,
                rate: a.rate,
                timeout: a.timeout,
                tries: a.tries,
                progress,
                grpc_client: a.grpc_client,
            };
            let result = match (a.target, relay.grpc()) {
                (Target::SluiceGrpc, Some(grpc)) => control_grpc::run(grpc, relay.pid(), &o)?,
                _ => control::run(relay.rtpp(), protocol, relay.pid(), &o)?,
            };
            (Some(result), None)
        }
        Scenario::Flood => bail!("flood runs in execute_media"),
        Scenario::Steady => {
            let o = steady_options(a, Placement::loopback());
            (
                None,
                Some(steady::run(relay.rtpp(), protocol, relay.pid(), &o)?),
            )
        }
    };
    let relay_log_tail = match (&relay, &engine) {
        (Relay::Spawned(p), _) => Some(p.child.log_tail(20)),
        (Relay::Connected { .. }, Some(e)) => Some(e.child.log_tail(20)),
        (Relay::Connected { .. }, None) => None,
    };
    if let Some(e) = &mut engine
        && !e.child.alive()
    {
        bail!(
            "rtpengine exited during the run; its stderr:\n{}",
            e.child.log_tail(30)
        );
    }
    drop(engine);
    let mut relay = relay;
    if let Relay::Spawned(p) = &mut relay
        && !p.child.alive()
    {
        bail!(
            "the relay exited during the run; log:\n{}",
            p.child.log_tail(30)
        );
    }
    drop(relay);
    Ok(Report {
        tool: format!("sluice-bench {}", env!("CARGO_PKG_VERSION")),
        scenario: format!("{:?}", a.scenario).to_lowercase(),
        target: match a.target {
            Target::SluiceRtpp => "sluice-rtpp".into(),
            Target::SluiceGrpc => "sluice-grpc".into(),
            Target::Rtpproxy => "rtpproxy".into(),
            Target::RtpengineNg => "rtpengine-ng".into(),
            Target::Direct => "direct (no relay)".into(),
            Target::Reflector => "xdp reflector (no relay)".into(),
            Target::ReflectorRedirect => "xdp redirecting reflector (no relay)".into(),
        },
        date_utc: crate::report::date_utc(),
        git_commit: crate::report::git_commit(),
        command_line: std::env::args().collect::<Vec<_>>().join(" "),
        machine,
        relay: info,
        control,
        steady,
        flood: None,
        relay_log_tail,
    })
}

/// `--scenario steady` as `a` asks for, with endpoints and control where `place` says.
fn steady_options(a: &RunArgs, place: Placement) -> SteadyOptions {
    SteadyOptions {
        calls: a.calls.unwrap_or(1000),
        ramp: a.ramp,
        duration: a.duration.unwrap_or(Duration::from_secs(30)),
        pps: a.pps,
        rtcp_interval: a.rtcp_interval,
        send_threads: a.send_threads,
        recv_threads: a.recv_threads,
        endpoint_ports: a.endpoint_ports,
        drain: a.drain,
        timeout: a.timeout,
        tries: a.tries,
        progress: !a.quiet,
        phases: a.phases,
        direct: a.target == Target::Direct,
        place,
    }
}

/// rtpengine as `a` asks for, on loopback.
fn rtpengine_options(a: &RunArgs) -> RtpengineOptions {
    let bin = match &a.relay_bin {
        Some(b) => b.clone(),
        None => {
            rtpengine::find_bin().unwrap_or_else(|| std::path::PathBuf::from(rtpengine::DEBIAN_BIN))
        }
    };
    let mut o = RtpengineOptions::loopback(bin, a.relay_ports.0, a.relay_ports.1);
    o.threads = a.workers;
    o.log_level = rtpengine::log_level(&a.relay_log_level);
    o.delete_delay_s = a.quarantine.map_or(0, |q| q.as_secs() as u32);
    o
}

/// `--scenario flood` (loopback or the namespace topology; a relay or the XDP reflector) and
/// `--scenario steady --net netns`.
fn execute_media(a: &RunArgs, machine: Machine) -> Result<Report> {
    if a.napi == Napi::Threaded && a.net == Net::Loopback {
        bail!("--napi threaded needs --net netns or one-arm");
    }
    let mut bed = a.net.shape().map(Testbed::up).transpose()?;
    let place = bed.as_ref().map_or_else(Placement::loopback, Placement::on);
    let relay_ns = place.relay_ns.clone();
    let mut relay = None;
    let mut engine: Option<RtpengineProcess> = None;
    let (forwarder, progs, info) = match (a.target, &a.connect) {
        (Target::Reflector | Target::ReflectorRedirect, _) => {
            let kind = match a.target {
                Target::ReflectorRedirect => AuxKind::ReflectRedirect,
                _ => AuxKind::Reflect,
            };
            let bed = bed.as_mut().context(
                "--target reflector* needs --net netns or one-arm (it runs on the relay's veths)",
            )?;
            let ids = bed.attach_reflectors(kind)?;
            let progs = bed
                .topo()
                .relay_devs()
                .iter()
                .map(|d| d.to_string())
                .zip(ids)
                .collect();
            let info = RelayInfo {
                mode: match kind {
                    AuxKind::ReflectRedirect => "xdp reflector, redirect".into(),
                    _ => "xdp reflector".into(),
                },
                bin: None,
                pid: None,
                rtpp: String::new(),
                config: None,
                build: None,
            };
            (Forwarder::Reflector, progs, info)
        }
        (Target::SluiceRtpp, None) => {
            let bin = match &a.relay_bin {
                Some(b) => b.clone(),
                None => relay::default_relay_bin().context(
                    "no `sluice` binary next to sluice-bench; build it or pass --relay-bin",
                )?,
            };
            let mut o = SpawnOptions::loopback(bin.clone());
            o.workers = a.workers;
            (o.port_min, o.port_max) = a.relay_ports;
            let quarantine = a.quarantine.unwrap_or(match a.scenario {
                Scenario::Steady => Duration::from_secs(10),
                _ => Duration::ZERO,
            });
            o.quarantine = format!("{}ms", quarantine.as_millis());
            o.xdp = a.xdp.clone();
            o.log_level = a.relay_log_level.clone();
            o.address = place.relay_ip_for_caller;
            let relay_devs = bed.as_ref().map_or(&[][..], |b| b.topo().relay_devs());
            o.xdp_interfaces = relay_devs.iter().map(|d| d.to_string()).collect();
            o.netns = relay_ns.clone();
            let p = RelayProcess::spawn(&o, Duration::from_secs(15))?;
            let progs = match &relay_ns {
                Some(ns) if a.xdp != "off" => {
                    let mut progs = Vec::new();
                    for &dev in relay_devs {
                        match kernel::xdp_prog_id(ns, dev) {
                            // One program serves both devices: its counters are counted once.
                            Ok(id) => match progs.iter_mut().find(|(_, i)| *i == id) {
                                Some((devs, _)) => *devs = format!("{devs}+{dev}"),
                                None => progs.push((dev.to_string(), id)),
                            },
                            // `auto` may have chosen the userspace path: measured as such.
                            Err(e) => eprintln!(
                                "sluice-bench: {e}; the relay forwards in userspace there"
                            ),
                        }
                    }
                    progs
                }
                _ => Vec::new(),
            };
            let metrics = p.metrics;
            let info = RelayInfo {
                mode: "spawned".into(),
                bin: Some(bin.display().to_string()),
                pid: Some(p.child.pid()),
                rtpp: format!("udp:{}", p.rtpp),
                config: Some(p.config.clone()),
                build: Placement::run_in(relay_ns.as_deref(), || relay::build_info(metrics))?,
            };
            let forwarder = Forwarder::Relay {
                protocol: Protocol::Rtpp,
                control: p.rtpp,
                pid: Some(p.child.pid()),
            };
            relay = Some(p);
            (forwarder, progs, info)
        }
        (Target::RtpengineNg, None) => {
            let mut o = rtpengine_options(a);
            o.interfaces = vec![rtpengine::MediaInterface::new(place.relay_ip_for_caller)];
            o.netns = relay_ns.clone();
            let e = RtpengineProcess::spawn(&o, Duration::from_secs(15))?;
            let info = RelayInfo {
                mode: "spawned".into(),
                bin: Some(e.bin.display().to_string()),
                pid: Some(e.child.pid()),
                rtpp: format!("ng:{}", e.ng),
                config: Some(e.command.clone()),
                build: e.version.clone(),
            };
            let forwarder = Forwarder::Relay {
                protocol: Protocol::Ng,
                control: e.ng,
                pid: Some(e.child.pid()),
            };
            engine = Some(e);
            (forwarder, Vec::new(), info)
        }
        (Target::SluiceRtpp | Target::Rtpproxy, Some(spec)) if bed.is_none() => {
            let rtpp = relay::parse_connect(spec)?;
            let info = RelayInfo {
                mode: "connected".into(),
                bin: None,
                pid: a.relay_pid,
                rtpp: format!("udp:{rtpp}"),
                config: None,
                build: None,
            };
            (
                Forwarder::Relay {
                    protocol: Protocol::Rtpp,
                    control: rtpp,
                    pid: a.relay_pid,
                },
                Vec::new(),
                info,
            )
        }
        (target, _) => bail!(
            "--scenario flood runs against sluice-rtpp or rtpengine-ng (started here), a relay on \
             loopback via --connect, or the reflector (--net netns); not {target:?}"
        ),
    };
    // Only now: a veth has NAPI instances (and so something to thread) once XDP is attached.
    if a.napi == Napi::Threaded
        && let Some(bed) = &bed
    {
        bed.thread_relay_napi()?;
    }
    let o = FloodOptions {
        calls: a.calls.unwrap_or(4),
        rate: a.rate,
        duration: a.duration.unwrap_or(Duration::from_secs(10)),
        warmup: a.warmup,
        batch: a.batch,
        drain: a.drain,
        timeout: a.timeout,
        tries: a.tries,
        progress: !a.quiet,
    };
    let (flood, steady) = match (a.scenario, &forwarder) {
        (
            Scenario::Steady,
            Forwarder::Relay {
                protocol,
                control,
                pid,
            },
        ) => {
            let o = steady_options(a, place.clone());
            (None, Some(steady::run(*control, *protocol, *pid, &o)?))
        }
        (Scenario::Steady, Forwarder::Reflector) => {
            bail!("--target reflector only works with --scenario flood")
        }
        _ => (Some(flood::run(&forwarder, &place, &progs, &o)?), None),
    };
    let relay_log_tail = relay
        .as_ref()
        .map(|p| p.child.log_tail(20))
        .or_else(|| engine.as_ref().map(|e| e.child.log_tail(20)));
    if let Some(p) = &mut relay
        && !p.child.alive()
    {
        bail!(
            "the relay exited during the run; log:\n{}",
            p.child.log_tail(30)
        );
    }
    if let Some(e) = &mut engine
        && !e.child.alive()
    {
        bail!(
            "rtpengine exited during the run; log:\n{}",
            e.child.log_tail(30)
        );
    }
    // The relays go before the namespaces they live in.
    drop(relay);
    drop(engine);
    drop(bed);
    Ok(Report {
        tool: format!("sluice-bench {}", env!("CARGO_PKG_VERSION")),
        scenario: format!("{:?}", a.scenario).to_lowercase(),
        target: match a.target {
            Target::Reflector => format!("xdp reflector (no relay), {}", a.net.name()),
            Target::ReflectorRedirect => {
                format!("xdp redirecting reflector (no relay), {}", a.net.name())
            }
            Target::RtpengineNg => format!("rtpengine-ng, {}", a.net.name()),
            _ if a.connect.is_some() => "rtpproxy protocol relay (connected)".into(),
            _ => format!("sluice-rtpp, xdp {}, {}", a.xdp, a.net.name()),
        },
        date_utc: crate::report::date_utc(),
        git_commit: crate::report::git_commit(),
        command_line: std::env::args().collect::<Vec<_>>().join(" "),
        machine,
        relay: info,
        control: None,
        steady,
        flood,
        relay_log_tail,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_and_ranges() {
        assert_eq!(parse_duration("10"), Ok(Duration::from_secs(10)));
        assert_eq!(parse_duration("1.5s"), Ok(Duration::from_millis(1500)));
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert!(parse_duration("x").is_err());
        assert!(parse_duration("-1s").is_err());
        assert_eq!(parse_range("20000-31999"), Ok((20000, 31999)));
        assert!(parse_range("31999-20000").is_err());
        assert!(parse_range("80-90").is_err());
    }
}
