//! `sluice-bench prog-cost`: the XDP program's cost per packet through BPF_PROG_TEST_RUN, side
//! by side with the XDP_TX reflector (the floor) and the pass-through program, in alternating
//! rounds of one run.
//!
//! The flood benchmark measures the same ratio on a live veth with `kernel.bpf_stats_enabled`;
//! this one needs no traffic, no generator and no relay process, so it is quiet enough to tell
//! a few nanoseconds apart while working on the program. The kernel reruns the program on the
//! same buffer, which the fast path rewrites in place: two flows are installed so that each
//! rewritten packet matches the other flow and comes back (198.18.2.3 stands in for a second
//! remote on the callee link), and every run takes the full forwarding path (lookup, source
//! check, cached route, rewrite, checksums, redirect). A second pair does the same on the
//! caller link alone (198.18.1.3 and .4 stand in for two remotes there), so its packets go back
//! out of the device they came in on: the XDP_TX verdict of a one-armed relay, the same
//! verdict as the reflector's. The redirecting reflector (the same turn-around sent with a
//! DEVMAP redirect to the ingress device) is the floor for the redirect verdict.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;

use anyhow::{Context, bail};
use aya::programs::{TestRun, TestRunOptions, Xdp};
use sluice::datapath::xdp::FastPath;
use sluice::datapath::xdp::aux_prog::{AuxKind, AuxProgram};
use sluice::session::stats::StreamShared;
use sluice::session::{Component, FlowSpec};
use sluice_common::{Stat, csum};

use crate::kernel::BpfStats;
use crate::topo::{self, Role, Topology};

const XDP_PASS: u32 = 2;
const XDP_TX: u32 = 3;
const XDP_REDIRECT: u32 = 4;
/// A second remote on the callee link (static neighbour), where the ping-pong flow sends.
const FAR_V4: Ipv4Addr = Ipv4Addr::new(198, 18, 2, 3);
const FAR_MAC: &str = "02:00:00:00:02:03";
const CALLEE_MAC: &str = "02:00:00:00:02:02";
/// Two remotes on the caller link, for the pair of flows whose packets leave by XDP_TX.
const TX_FAR_V4: Ipv4Addr = Ipv4Addr::new(198, 18, 1, 3);
const TX_FAR_MAC: &str = "02:00:00:00:01:03";
const TX_PEER_V4: Ipv4Addr = Ipv4Addr::new(198, 18, 1, 4);
const TX_PEER_MAC: &str = "02:00:00:00:01:04";

#[derive(clap::Args, Debug, Clone)]
pub struct ProgCostArgs {
    /// Program runs per measurement (the kernel's `repeat`).
    #[arg(long, default_value_t = 1_000_000)]
    pub repeat: u32,
    /// Alternating rounds per program; the median is reported.
    #[arg(long, default_value_t = 5)]
    pub rounds: usize,
    /// UDP payload bytes of the test packet (an RTP header and G.711 20 ms by default).
    #[arg(long, default_value_t = 172)]
    pub payload: usize,
}

/// Median ns per run of each program.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ProgCost {
    pub pass_ns: f64,
    pub reflector_ns: f64,
    /// Packets of a flow that leaves through another device (DEVMAP redirect).
    pub sluice_ns: f64,
    /// Packets of a flow that leaves through the device it came in on (XDP_TX).
    pub sluice_tx_ns: f64,
    /// The reflector sending with a DEVMAP redirect instead of XDP_TX.
    pub reflector_redirect_ns: f64,
    /// The same five (pass-through, reflector, redirect, XDP_TX, redirecting reflector) from
    /// bpf_stats.
    pub stats_ns: [f64; 5],
    pub rounds: usize,
    pub repeat: u32,
}

impl ProgCost {
    pub fn human(&self) -> String {
        format!(
            "BPF_PROG_TEST_RUN, median of {} rounds x {} runs, ns per packet\n\
             (as the test run reports it; and from bpf_stats, which adds two clock reads):\n  \
             pass-through           {:5.1}          {:5.1}\n  \
             XDP_TX reflector       {:5.1}          {:5.1}\n  \
             redirect reflector     {:5.1}          {:5.1}\n  \
             sluice_xdp, redirect   {:5.1} {:5.2}x   {:5.1} {:5.2}x the reflector \
             ({:.2}x the redirect reflector)\n  \
             sluice_xdp, XDP_TX     {:5.1} {:5.2}x   {:5.1} {:5.2}x the reflector\n",
            self.rounds,
            self.repeat,
            self.pass_ns,
            self.stats_ns[0],
            self.reflector_ns,
            self.stats_ns[1],
            self.reflector_redirect_ns,
            self.stats_ns[4],
            self.sluice_ns,
            self.sluice_ns / self.reflector_ns,
            self.stats_ns[2],
            self.stats_ns[2] / self.stats_ns[1],
            self.stats_ns[2] / self.stats_ns[4],
            self.sluice_tx_ns,
            self.sluice_tx_ns / self.reflector_ns,
            self.stats_ns[3],
            self.stats_ns[3] / self.stats_ns[1],
        )
    }
}

pub fn run(args: &ProgCostArgs) -> anyhow::Result<ProgCost> {
    if args.rounds == 0 || args.repeat == 0 {
        bail!("--rounds and --repeat must be at least 1");
    }
    let topo = Topology::up(&Topology::unique_prefix("pc")).context("namespace topology")?;
    for (addr, mac) in [(topo::CALLEE_V4, CALLEE_MAC), (FAR_V4, FAR_MAC)] {
        topo.static_neighbour(Role::Relay, addr.into(), mac, topo::RELAY_CALLEE_DEV)?;
    }
    for (addr, mac) in [(TX_FAR_V4, TX_FAR_MAC), (TX_PEER_V4, TX_PEER_MAC)] {
        topo.static_neighbour(Role::Relay, addr.into(), mac, topo::RELAY_CALLER_DEV)?;
    }
    topo.enable_forwarding(Role::Relay)?;
    topo.run_in(Role::Relay, || measure(args))?
}

fn measure(args: &ProgCostArgs) -> anyhow::Result<ProgCost> {
    let caller_if = ifindex(topo::RELAY_CALLER_DEV)?;
    let caller = SocketAddr::new(IpAddr::V4(topo::CALLER_V4), 4000);
    let relay_a = SocketAddr::new(IpAddr::V4(FAR_V4), 30_000);
    let relay_b = SocketAddr::new(IpAddr::V4(topo::RELAY_CALLEE_SIDE_V4), 30_002);
    let callee = SocketAddr::new(IpAddr::V4(topo::CALLEE_V4), 5000);

    let mut fast_path = FastPath::load(1024)?;
    fast_path.add_device(topo::RELAY_CALLER_DEV)?;
    fast_path.add_device(topo::RELAY_CALLEE_DEV)?;
    let shared = Arc::new(StreamShared::default());
    let flow = |local, remote, egress_local, egress_remote| FlowSpec {
        component: Component::Rtp,
        ingress_leg: 0,
        local,
        remote,
        egress_local,
        egress_remote,
        dscp: 46,
    };
    // caller -> relay_a is sent relay_b -> callee; that packet matches the second flow, which
    // sends it caller -> relay_a again (via the callee link, so both runs redirect). The same
    // on the caller link alone: both runs go back out of it (XDP_TX).
    let caller_tx = SocketAddr::new(IpAddr::V4(topo::CALLER_V4), 4010);
    let far_tx = SocketAddr::new(IpAddr::V4(TX_FAR_V4), 30_010);
    let relay_tx = SocketAddr::new(IpAddr::V4(topo::RELAY_CALLER_SIDE_V4), 30_012);
    let peer_tx = SocketAddr::new(IpAddr::V4(TX_PEER_V4), 5010);
    for (stream, [a, b, c, d]) in [
        (1, [relay_a, caller, relay_b, callee]),
        (3, [far_tx, caller_tx, relay_tx, peer_tx]),
    ] {
        fast_path
            .flows()
            .apply(stream, &[flow(a, b, c, d)], &shared)?;
        fast_path
            .flows()
            .apply(stream + 1, &[flow(d, c, b, a)], &shared)?;
    }
    let reflector = AuxProgram::load(AuxKind::Reflect)?;
    let mut reflector_redirect = AuxProgram::load(AuxKind::ReflectRedirect)?;
    reflector_redirect.allow_redirect_to(caller_if)?;
    let pass = AuxProgram::load(AuxKind::Pass)?;

    let frame_redirect = frame(caller, relay_a, args.payload);
    let frame_tx = frame(caller_tx, far_tx, args.payload);
    let ctx: Vec<u8> = [0, frame_redirect.len() as u32, 0, caller_if, 0, 0]
        .iter()
        .flat_map(|v| v.to_ne_bytes())
        .collect();
    let sluice = fast_path.program()?;
    // Warm the route cache and check the path taken is the forwarding one.
    let before = [Stat::Redirect, Stat::Tx].map(|s| fast_path.stat(s).map(|c| c.packets));
    for (frame, want) in [(&frame_redirect, XDP_REDIRECT), (&frame_tx, XDP_TX)] {
        for _ in 0..2 {
            let (verdict, ..) = test_run(sluice, frame, &ctx, 1)?;
            if verdict != want {
                bail!(
                    "sluice_xdp returned {verdict}, not {want}: {:?}",
                    fast_path.stats()?
                );
            }
        }
    }
    let mut samples: [Vec<f64>; 5] = Default::default();
    let mut stats_samples: [Vec<f64>; 5] = Default::default();
    // Each round twice: the test run's own timing without bpf_stats (whose clock reads would
    // be in it), then bpf_stats' timing.
    for with_stats in (0..args.rounds).flat_map(|_| [false, true]) {
        let _stats = with_stats.then(BpfStats::enable).transpose()?;
        for (i, (program, frame, want)) in [
            (pass.program()?, &frame_redirect, XDP_PASS),
            (reflector.program()?, &frame_redirect, XDP_TX),
            (sluice, &frame_redirect, XDP_REDIRECT),
            (sluice, &frame_tx, XDP_TX),
            (reflector_redirect.program()?, &frame_redirect, XDP_REDIRECT),
        ]
        .into_iter()
        .enumerate()
        {
            let (verdict, ns, stats_ns) = test_run(program, frame, &ctx, args.repeat)?;
            if verdict != want {
                bail!("program {i} returned {verdict}, expected {want}");
            }
            if with_stats {
                stats_samples[i].push(stats_ns);
            } else {
                samples[i].push(ns);
            }
        }
    }
    let expected = 2 + 2 * u64::from(args.repeat) * args.rounds as u64;
    for (stat, before) in [Stat::Redirect, Stat::Tx].into_iter().zip(before) {
        let forwarded = fast_path.stat(stat)?.packets - before?;
        if forwarded != expected {
            bail!("sluice_xdp forwarded {forwarded} of {expected} runs with {stat:?}");
        }
    }
    let [
        pass_ns,
        reflector_ns,
        sluice_ns,
        sluice_tx_ns,
        reflector_redirect_ns,
    ] = samples.map(|mut s| median(&mut s));
    let stats_ns = stats_samples.map(|mut s| median(&mut s));
    Ok(ProgCost {
        pass_ns,
        reflector_ns,
        sluice_ns,
        sluice_tx_ns,
        reflector_redirect_ns,
        stats_ns,
        rounds: args.rounds,
        repeat: args.repeat,
    })
}

/// (verdict, ns per run as BPF_PROG_TEST_RUN reports it, ns per run from the program's
/// `run_time_ns`/`run_cnt`). The first is whole nanoseconds; the second has the resolution to
/// tell fractions apart and is the live benchmark's measure (bpf_stats), with the two clock
/// reads around every run that it adds to both programs alike.
fn test_run(
    program: &Xdp,
    frame: &[u8],
    ctx: &[u8],
    repeat: u32,
) -> anyhow::Result<(u32, f64, f64)> {
    let mut out = vec![0u8; frame.len() + 256];
    let stats = || -> anyhow::Result<(u64, u64)> {
        let info = program.info()?;
        Ok((info.run_time().as_nanos() as u64, info.run_count()))
    };
    let before = stats()?;
    let r = program
        .test_run(TestRunOptions {
            data_in: Some(frame),
            data_out: Some(&mut out),
            ctx_in: Some(ctx),
            repeat,
            ..Default::default()
        })
        .context("BPF_PROG_TEST_RUN")?;
    let after = stats()?;
    let stats_ns = (after.0 - before.0) as f64 / (after.1 - before.1).max(1) as f64;
    Ok((r.return_value, r.duration.as_nanos() as f64, stats_ns))
}

fn median(s: &mut [f64]) -> f64 {
    s.sort_by(f64::total_cmp);
    s[s.len() / 2]
}

/// An Ethernet/IPv4/UDP frame with valid IPv4 and UDP checksums and an RTP-looking payload.
fn frame(src: SocketAddr, dst: SocketAddr, payload: usize) -> Vec<u8> {
    let (IpAddr::V4(s), IpAddr::V4(d)) = (src.ip(), dst.ip()) else {
        unreachable!("IPv4 endpoints")
    };
    let udp_len = (8 + payload) as u16;
    let mut f = vec![0u8; 14 + 20 + usize::from(udp_len)];
    f[..6].copy_from_slice(&[0x02, 0, 0, 0, 1, 1]);
    f[6..12].copy_from_slice(&[0x02, 0, 0, 0, 1, 2]);
    f[12..14].copy_from_slice(&0x0800u16.to_be_bytes());
    let ip = &mut f[14..34];
    ip[0] = 0x45;
    ip[2..4].copy_from_slice(&(20 + udp_len).to_be_bytes());
    ip[8] = 64;
    ip[9] = 17;
    ip[12..16].copy_from_slice(&s.octets());
    ip[16..20].copy_from_slice(&d.octets());
    let check = csum::finish(sum_words(ip));
    ip[10..12].copy_from_slice(&check.to_be_bytes());
    let udp = &mut f[34..];
    udp[..2].copy_from_slice(&src.port().to_be_bytes());
    udp[2..4].copy_from_slice(&dst.port().to_be_bytes());
    udp[4..6].copy_from_slice(&udp_len.to_be_bytes());
    if payload >= 12 {
        udp[8] = 0x80;
        udp[10..12].copy_from_slice(&1234u16.to_be_bytes());
    }
    for (i, b) in udp.iter_mut().enumerate().skip(20) {
        *b = i as u8;
    }
    let sum = csum::pseudo_v4(s.octets(), d.octets(), 17, udp_len) + sum_words(udp);
    let check = csum::udp_wire(csum::finish(sum));
    udp[6..8].copy_from_slice(&check.to_be_bytes());
    f
}

fn sum_words(b: &[u8]) -> u64 {
    b.chunks(2)
        .map(|w| u64::from(u16::from_be_bytes([w[0], *w.get(1).unwrap_or(&0)])))
        .sum()
}

fn ifindex(dev: &str) -> anyhow::Result<u32> {
    // Of this thread's namespace (/sys would show the namespace it was mounted in).
    nix::net::if_::if_nametoindex(dev).with_context(|| format!("ifindex of {dev}"))
}
