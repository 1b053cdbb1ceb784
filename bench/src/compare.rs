//! `sluice-bench compare`: one scenario matrix against Sluice (XDP and userspace), rtpengine
//! (when installed) and the XDP reflector floor, in one invocation; writes `report.md`,
//! `results.json` and SVG charts.
//!
//! The matrix (each case is one `sluice-bench run`, so every number can be reproduced alone
//! with the command line the report prints):
//!
//! - `flood-rate`: a fixed offered load on the namespace topology: machine CPU per forwarded
//!   packet, minus the reflector's (the forwarder's share), XDP program cost, latency.
//! - `flood-one-arm`: the same load through a one-armed relay (one device on a bridged segment),
//!   reflector and Sluice XDP only: both programs answer with XDP_TX on the same veth, the
//!   program-cost comparison the fast path is held to without the redirect it needs on the
//!   routed topology.
//! - `flood-max`: the same unpaced: what each forwarder delivers when the generator pushes as
//!   hard as it can, and the loss.
//! - `load-routed` and `load-one-arm`: the program-cost comparison in the regime where the
//!   program's cost decides throughput: unpaced, with the relay devices' receive processing in
//!   kernel threads (`--napi threaded`), so frames are processed back to back as a NIC's
//!   receive batches are. Routed, Sluice redirects, so the redirecting reflector is its
//!   same-verdict floor next to the XDP_TX one; one-armed, both answer with XDP_TX.
//! - The XDP program cost through BPF_PROG_TEST_RUN (`prog-cost`), which needs no traffic and
//!   is the quietest of the three program-cost measurements.
//! - `control`: offer + answer + delete cycles per second at concurrency 16 (loopback).
//! - `steady`: concurrent 50 pps calls with RTCP on the namespace topology: the realistic load,
//!   relay and machine CPU per packet, latency.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, Result};
use clap::{Args, Parser};
use serde::Serialize;

use crate::charts;
use crate::prog_cost::{self, ProgCost, ProgCostArgs};
use crate::report::{Machine, Report};
use crate::run::{RunArgs, execute};
use crate::scenario::flood::FloodResult;

#[derive(Debug, Clone, Args)]
pub struct CompareArgs {
    /// The short matrix (about 2 minutes): shorter windows, fewer calls.
    #[arg(long)]
    pub quick: bool,
    /// Where to write report.md, results.json and the charts [default:
    /// bench-results/compare-YYYYMMDDTHHMMSSZ].
    #[arg(long, value_name = "DIR")]
    pub out: Option<PathBuf>,
    /// Sluice binary (default: `sluice` next to this executable).
    #[arg(long, value_name = "PATH")]
    pub relay_bin: Option<PathBuf>,
    /// Leave rtpengine out even when it is installed.
    #[arg(long)]
    pub no_rtpengine: bool,
}

/// Rounds of `prog-cost` (BPF_PROG_TEST_RUN) in the full and the quick matrix: each round is
/// a fraction of a second.
const PROG_COST_ROUNDS: (usize, usize) = (21, 7);

/// One run of the matrix.
#[derive(Debug, Clone, Serialize)]
pub struct Case {
    /// flood-rate, flood-one-arm, flood-max, load-routed, load-one-arm, control, steady.
    pub scenario: &'static str,
    /// reflector, reflector-redirect, sluice-xdp, sluice-user, sluice-grpc, rtpengine.
    pub forwarder: &'static str,
    /// flood-rate, flood-one-arm and load-* runs are repeated, alternating forwarders; 0 for
    /// the rest.
    pub round: u32,
    /// The equivalent `sluice-bench run` command line.
    pub command: String,
    pub seconds: f64,
    pub report: Option<Report>,
    pub error: Option<String>,
}

#[derive(Debug, Serialize)]
pub struct Comparison {
    pub date_utc: String,
    pub git_commit: Option<String>,
    pub quick: bool,
    pub machine: Machine,
    pub rtpengine: Option<String>,
    /// The XDP program cost through BPF_PROG_TEST_RUN, or why it could not be measured.
    pub prog_cost: Result<ProgCost, String>,
    pub cases: Vec<Case>,
}

/// One entry of the matrix: scenario, forwarder, round, `sluice-bench run` arguments.
pub type MatrixCase = (&'static str, &'static str, u32, Vec<String>);

/// Rounds of `flood-rate` in the full matrix: the forwarder's share is a small difference of
/// two totals, so it is taken per round against that round's reflector and the median quoted.
const RATE_ROUNDS: u32 = 3;

/// The `sluice-bench run` arguments of every case, in run order.
pub fn matrix(quick: bool, rtpengine: bool) -> Vec<MatrixCase> {
    let (window, warmup, rate, control_s, calls, steady_s) = if quick {
        ("4s", "1s", "40000", "3s", "200", "5s")
    } else {
        ("10s", "2s", "50000", "10s", "1000", "30s")
    };
    let mut forwarders: Vec<(&str, Vec<&str>)> = vec![
        ("reflector", vec!["--target", "reflector"]),
        (
            "sluice-xdp",
            vec!["--target", "sluice-rtpp", "--xdp", "native"],
        ),
        (
            "sluice-user",
            vec!["--target", "sluice-rtpp", "--xdp", "off"],
        ),
    ];
    if rtpengine {
        forwarders.push(("rtpengine", vec!["--target", "rtpengine-ng"]));
    }
    let mut cases = Vec::new();
    let flood = ["--scenario", "flood", "--net", "netns", "--warmup", warmup];
    let rounds = if quick { 1 } else { RATE_ROUNDS };
    let runs = (1..=rounds)
        .map(|r| ("flood-rate", Some(rate), r))
        .chain([("flood-max", None, 0)]);
    for (scenario, rate, round) in runs {
        for (name, target) in &forwarders {
            let mut args: Vec<String> = flood.iter().map(|s| s.to_string()).collect();
            args.extend(target.iter().map(|s| s.to_string()));
            args.extend(["--duration".to_string(), window.to_string()]);
            if let Some(r) = rate {
                args.extend(["--rate".to_string(), r.to_string()]);
            }
            cases.push((scenario, *name, round, args));
        }
    }
    let one_arm = [
        "--scenario",
        "flood",
        "--net",
        "one-arm",
        "--warmup",
        warmup,
    ];
    for round in 1..=rounds {
        for (name, target) in &forwarders[..2] {
            let args = one_arm
                .iter()
                .chain(target)
                .chain(&["--duration", window, "--rate", rate])
                .map(|s| s.to_string())
                .collect();
            cases.push(("flood-one-arm", *name, round, args));
        }
    }
    let load_window = if quick { "3s" } else { "5s" };
    let redirecting = ("reflector-redirect", vec!["--target", "reflector-redirect"]);
    let (reflector, xdp) = (&forwarders[0], &forwarders[1]);
    let load = [
        ("load-routed", "netns", vec![reflector, &redirecting, xdp]),
        ("load-one-arm", "one-arm", vec![reflector, xdp]),
    ];
    for round in 1..=rounds {
        for (scenario, net, set) in &load {
            for (name, target) in set {
                let args = ["--scenario", "flood", "--net", net, "--napi", "threaded"]
                    .iter()
                    .chain(&["--warmup", warmup, "--duration", load_window])
                    .chain(target)
                    .map(|s| s.to_string())
                    .collect();
                cases.push((*scenario, *name, round, args));
            }
        }
    }
    let mut control: Vec<(&str, &str)> = vec![
        ("sluice-user", "sluice-rtpp"),
        ("sluice-grpc", "sluice-grpc"),
    ];
    let mut steady: Vec<(&str, Vec<&str>)> = vec![
        (
            "sluice-xdp",
            vec!["--target", "sluice-rtpp", "--xdp", "native"],
        ),
        (
            "sluice-user",
            vec!["--target", "sluice-rtpp", "--xdp", "off"],
        ),
    ];
    if rtpengine {
        control.push(("rtpengine", "rtpengine-ng"));
        steady.push(("rtpengine", vec!["--target", "rtpengine-ng"]));
    }
    for (name, target) in control {
        let args = [
            "--scenario",
            "control",
            "--target",
            target,
            "--concurrency",
            "16",
        ]
        .iter()
        .map(|s| s.to_string())
        .chain(["--duration".to_string(), control_s.to_string()])
        .collect();
        cases.push(("control", name, 0, args));
    }
    for (name, target) in steady {
        let args = ["--scenario", "steady", "--net", "netns", "--calls", calls]
            .iter()
            .chain(&target)
            .map(|s| s.to_string())
            .chain(["--duration".to_string(), steady_s.to_string()])
            .collect();
        cases.push(("steady", name, 0, args));
    }
    cases
}

#[derive(Parser)]
struct RunOnly {
    #[command(flatten)]
    run: RunArgs,
}

/// `prog-cost`'s arguments with their defaults, as the command line would give them.
#[derive(Parser)]
struct ProgCostOnly {
    #[command(flatten)]
    args: ProgCostArgs,
}

/// Runs the matrix and writes the results; returns the output directory.
pub fn run(c: &CompareArgs) -> Result<PathBuf> {
    crate::clock::now_ns();
    let rtpengine = if c.no_rtpengine {
        None
    } else {
        crate::rtpengine::find_bin()
    };
    if rtpengine.is_none() && !c.no_rtpengine {
        eprintln!(
            "sluice-bench: rtpengine is not installed (apt-get install rtpengine-daemon, or cargo \
             xtask setup): comparing Sluice only"
        );
    }
    let out = c.out.clone().unwrap_or_else(|| {
        PathBuf::from("bench-results").join(format!(
            "compare-{}",
            crate::report::date_utc().replace([':', '-'], "")
        ))
    });
    std::fs::create_dir_all(&out).with_context(|| format!("creating {}", out.display()))?;
    let rounds = if c.quick {
        PROG_COST_ROUNDS.1
    } else {
        PROG_COST_ROUNDS.0
    };
    let prog_cost = ProgCostOnly::try_parse_from(["prog-cost", "--rounds", &rounds.to_string()])
        .map_err(anyhow::Error::from)
        .and_then(|p| prog_cost::run(&p.args))
        .map_err(|e| {
            eprintln!("sluice-bench: prog-cost: {e:#}");
            format!("{e:#}")
        });
    let cases = matrix(c.quick, rtpengine.is_some());
    let bar = indicatif::ProgressBar::new(cases.len() as u64);
    bar.set_style(
        indicatif::ProgressStyle::with_template("{elapsed_precise} [{bar:30}] {pos}/{len} {msg}")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
            .progress_chars("=> "),
    );
    let mut done = Vec::new();
    for (scenario, forwarder, round, args) in cases {
        bar.set_message(format!("{scenario} {forwarder}"));
        let mut argv = vec!["run".to_string()];
        argv.extend(args.iter().cloned());
        argv.push("--quiet".into());
        if let Some(bin) = &c.relay_bin
            && !forwarder.starts_with("rtpengine")
            && !forwarder.starts_with("reflector")
        {
            argv.extend(["--relay-bin".to_string(), bin.display().to_string()]);
        }
        let command = format!("sluice-bench {}", argv.join(" "));
        let started = Instant::now();
        let result = RunOnly::try_parse_from(&argv)
            .map_err(anyhow::Error::from)
            .and_then(|r| execute(&r.run));
        let (report, error) = match result {
            Ok(r) => (Some(r), None),
            Err(e) => {
                bar.println(format!("{scenario} {forwarder}: {e:#}"));
                (None, Some(format!("{e:#}")))
            }
        };
        done.push(Case {
            scenario,
            forwarder,
            round,
            command,
            seconds: started.elapsed().as_secs_f64(),
            report,
            error,
        });
        bar.inc(1);
    }
    bar.finish_and_clear();
    let comparison = Comparison {
        date_utc: crate::report::date_utc(),
        git_commit: crate::report::git_commit(),
        quick: c.quick,
        machine: Machine::probe(),
        rtpengine: rtpengine.as_deref().and_then(crate::rtpengine::version),
        prog_cost,
        cases: done,
    };
    std::fs::write(
        out.join("results.json"),
        serde_json::to_string_pretty(&comparison)? + "\n",
    )?;
    let md = markdown(&comparison);
    std::fs::write(out.join("report.md"), &md)?;
    draw(&comparison, &out)?;
    print!("{md}");
    Ok(out)
}

fn find<'a>(c: &'a Comparison, scenario: &str, forwarder: &str) -> Option<&'a Report> {
    c.cases
        .iter()
        .find(|k| k.scenario == scenario && k.forwarder == forwarder)
        .and_then(|k| k.report.as_ref())
}

/// Machine CPU per delivered packet of a flood run, ns.
fn cpu_per_packet(r: &Report) -> Option<f64> {
    r.flood.as_ref()?.cpu.ns_per_delivered_packet
}

fn find_round<'a>(
    c: &'a Comparison,
    scenario: &str,
    forwarder: &str,
    round: u32,
) -> Option<&'a Report> {
    c.cases
        .iter()
        .find(|k| k.scenario == scenario && k.forwarder == forwarder && k.round == round)
        .and_then(|k| k.report.as_ref())
}

fn loss_percent(f: &FloodResult) -> f64 {
    let (sent, lost) = f
        .directions
        .iter()
        .fold((0, 0), |(s, l), d| (s + d.totals.sent, l + d.totals.lost));
    if sent > 0 {
        100.0 * lost as f64 / sent as f64
    } else {
        0.0
    }
}

/// The forwarder's share in one round: its machine CPU per packet minus the reflector's.
fn share_in(c: &Comparison, forwarder: &str, round: u32) -> Option<f64> {
    let floor = cpu_per_packet(find_round(c, "flood-rate", "reflector", round)?)?;
    Some(cpu_per_packet(find_round(c, "flood-rate", forwarder, round)?)? - floor)
}

/// The forwarder's share over the rounds: the median, and the lowest and highest.
fn shares(c: &Comparison, forwarder: &str) -> Option<(f64, f64, f64)> {
    let v = c
        .cases
        .iter()
        .filter(|k| k.scenario == "flood-rate" && k.forwarder == forwarder)
        .filter_map(|k| share_in(c, forwarder, k.round))
        .collect();
    median_range(v)
}

/// The median (the upper one of an even count), lowest and highest value.
fn median_range(mut v: Vec<f64>) -> Option<(f64, f64, f64)> {
    v.sort_by(f64::total_cmp);
    Some((*v.get(v.len() / 2)?, *v.first()?, *v.last()?))
}

/// The median share.
fn share(c: &Comparison, forwarder: &str) -> Option<f64> {
    shares(c, forwarder).map(|(median, _, _)| median)
}

/// Median over the rounds of the XDP program cost of `forwarder`'s runs of `scenario`.
fn median_program_ns(c: &Comparison, scenario: &str, forwarder: &str) -> Option<f64> {
    let mut v: Vec<f64> = c
        .cases
        .iter()
        .filter(|k| k.scenario == scenario && k.forwarder == forwarder)
        .filter_map(|k| program_ns(k.report.as_ref()?))
        .collect();
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied()
}

fn program_ns(r: &Report) -> Option<f64> {
    let progs = &r.flood.as_ref()?.xdp_programs;
    let (time, runs) = progs.iter().fold((0u64, 0u64), |(t, n), p| {
        (t + p.run.run_time_ns, n + p.run.run_cnt)
    });
    (runs > 0).then(|| time as f64 / runs as f64)
}

/// Over the rounds of `scenario`: `forwarder`'s program cost divided by `floor`'s in the same
/// round (the rounds drift together); the median, lowest and highest.
fn round_ratios(
    c: &Comparison,
    scenario: &str,
    forwarder: &str,
    floor: &str,
) -> Option<(f64, f64, f64)> {
    let v = c
        .cases
        .iter()
        .filter(|k| k.scenario == scenario && k.forwarder == forwarder)
        .filter_map(|k| {
            let prog = program_ns(k.report.as_ref()?)?;
            let floor = program_ns(find_round(c, scenario, floor, k.round)?)?;
            (floor > 0.0).then_some(prog / floor)
        })
        .collect();
    median_range(v)
}

/// Another forwarder's share over Sluice XDP's. XDP's share is a difference of two totals a
/// few hundred ns apart and can come out at or below zero (XDP as cheap as the reflector
/// within the noise); a ratio over that would be meaningless, so the bound from XDP's highest
/// round is given instead.
fn over_xdp_share(other: Option<f64>, xdp: Option<(f64, f64, f64)>) -> String {
    match (other, xdp) {
        (Some(_), Some((median, _, _))) if median > 0.0 => ratio(other, Some(median), 1),
        (Some(other), Some((median, lo, hi))) if hi > 0.0 => format!(
            "at least {:.1}x (Sluice XDP's share is within the noise of the floor: median \
             {median:.0} ns, rounds {lo:.0} to {hi:.0} ns; bound from the highest round)",
            other / hi
        ),
        (Some(_), Some(_)) => "XDP's share at or below the floor in every round".into(),
        _ => "n/a".into(),
    }
}

/// A median ratio with its range when there were several rounds.
fn ratio_range(r: Option<(f64, f64, f64)>) -> String {
    match r {
        Some((m, lo, hi)) if lo < hi => format!("{m:.2}x (rounds {lo:.2}-{hi:.2}x)"),
        Some((m, _, _)) => format!("{m:.2}x"),
        None => "n/a".into(),
    }
}

/// `a / b` to `digits` decimals (program costs differ by tenths, the rest by more).
fn ratio(a: Option<f64>, b: Option<f64>, digits: usize) -> String {
    match (a, b) {
        (Some(a), Some(b)) if b > 0.0 => format!("{:.digits$}x", a / b),
        _ => "n/a".into(),
    }
}

fn opt(v: Option<f64>, digits: usize) -> String {
    v.map_or("-".into(), |v| format!("{v:.digits$}"))
}

/// The report: the ratios first, then one table per scenario, then the commands.
pub fn markdown(c: &Comparison) -> String {
    let mut o = String::new();
    let _ = writeln!(
        o,
        "# sluice-bench compare{}\n",
        if c.quick { " --quick" } else { "" }
    );
    let _ = writeln!(
        o,
        "{} UTC, commit {}, {} x {}, kernel {}{}.\n",
        c.date_utc,
        c.git_commit.as_deref().unwrap_or("?"),
        c.machine.nproc,
        c.machine.cpu_model,
        c.machine.kernel,
        c.rtpengine
            .as_deref()
            .map_or(String::from(", rtpengine not installed"), |v| format!(
                ", rtpengine {v}"
            ))
    );
    let xdp_shares = shares(c, "sluice-xdp");
    let user_share = share(c, "sluice-user");
    let engine_share = share(c, "rtpengine");
    let reflector_prog = median_program_ns(c, "flood-rate", "reflector");
    let xdp_prog = median_program_ns(c, "flood-rate", "sluice-xdp");
    let reflector_tx_prog = median_program_ns(c, "flood-one-arm", "reflector");
    let xdp_tx_prog = median_program_ns(c, "flood-one-arm", "sluice-xdp");
    let max =
        |f: &str| find(c, "flood-max", f).and_then(|r| r.flood.as_ref().map(|f| f.delivered_pps));
    let cycles =
        |f: &str| find(c, "control", f).and_then(|r| r.control.as_ref().map(|c| c.cycles_per_s));
    let _ = writeln!(o, "## Ratios\n");
    let _ = writeln!(o, "| comparison | ratio |\n|---|---|");
    let _ = writeln!(
        o,
        "| CPU per forwarded packet, userspace / XDP (forwarder's share) | {} |",
        over_xdp_share(user_share, xdp_shares)
    );
    if c.rtpengine.is_some() {
        let _ = writeln!(
            o,
            "| CPU per forwarded packet, rtpengine / Sluice XDP | {} |",
            over_xdp_share(engine_share, xdp_shares)
        );
        let _ = writeln!(
            o,
            "| CPU per forwarded packet, rtpengine / Sluice userspace | {} |",
            ratio(engine_share, user_share, 1)
        );
    }
    if let Ok(p) = &c.prog_cost {
        let [_, reflector, redirect, tx, reflector_redirect] = p.stats_ns;
        let _ = writeln!(
            o,
            "| XDP program cost, BPF_PROG_TEST_RUN: XDP_TX / XDP_TX reflector | {:.2}x |",
            tx / reflector
        );
        let _ = writeln!(
            o,
            "| XDP program cost, BPF_PROG_TEST_RUN: redirect / redirecting reflector | {:.2}x \
             (/ XDP_TX reflector {:.2}x) |",
            redirect / reflector_redirect,
            redirect / reflector
        );
    }
    let _ = writeln!(
        o,
        "| XDP program cost under load, one-armed: Sluice / XDP_TX reflector (both XDP_TX) | {} |",
        ratio_range(round_ratios(c, "load-one-arm", "sluice-xdp", "reflector"))
    );
    let _ = writeln!(
        o,
        "| XDP program cost under load, routed: Sluice / redirecting reflector (both redirect) \
         | {} |",
        ratio_range(round_ratios(
            c,
            "load-routed",
            "sluice-xdp",
            "reflector-redirect"
        ))
    );
    let _ = writeln!(
        o,
        "| XDP program cost under load, routed: Sluice (redirect) / XDP_TX reflector | {} |",
        ratio_range(round_ratios(c, "load-routed", "sluice-xdp", "reflector"))
    );
    let _ = writeln!(
        o,
        "| XDP program cost at a fixed rate, routed: Sluice (redirect) / XDP_TX reflector | {} |",
        ratio(xdp_prog, reflector_prog, 2)
    );
    let _ = writeln!(
        o,
        "| XDP program cost at a fixed rate, one-armed: Sluice / XDP_TX reflector | {} |",
        ratio(xdp_tx_prog, reflector_tx_prog, 2)
    );
    let _ = writeln!(
        o,
        "| packets delivered at saturation, XDP / userspace | {} |",
        ratio(max("sluice-xdp"), max("sluice-user"), 1)
    );
    if c.rtpengine.is_some() {
        let _ = writeln!(
            o,
            "| packets delivered at saturation, XDP / rtpengine | {} |",
            ratio(max("sluice-xdp"), max("rtpengine"), 1)
        );
        let _ = writeln!(
            o,
            "| control cycles per second, Sluice (rtpproxy protocol) / rtpengine (ng) | {} |",
            ratio(cycles("sluice-user"), cycles("rtpengine"), 1)
        );
    }
    let _ = writeln!(
        o,
        "\nThe forwarder's share is the machine's CPU per delivered packet (relay, generator and \
         kernel threads) minus the same for the XDP_TX reflector, which moves each packet with \
         the cheapest possible XDP program: what remains is what forwarding through the relay \
         adds. Generator and relay share the machine.\n"
    );

    let _ = writeln!(o, "## Flood at a fixed rate (namespace topology)\n");
    let _ = writeln!(
        o,
        "| round | forwarder | delivered pps | loss | CPU/packet (machine) | forwarder's share | XDP program | userspace datagrams | latency p50 / p99 (us) |\n|---|---|---|---|---|---|---|---|---|"
    );
    for k in c.cases.iter().filter(|k| k.scenario == "flood-rate") {
        let Some(f) = k.report.as_ref().and_then(|r| r.flood.as_ref()) else {
            let _ = write!(o, "| {} ", k.round);
            failed_row(&mut o, k, 8);
            continue;
        };
        let lat = |p: fn(&crate::stats::LatencySummary) -> f64| {
            f.directions
                .iter()
                .map(|d| p(&d.totals.latency))
                .fold(0.0_f64, f64::max)
        };
        let _ = writeln!(
            o,
            "| {} | {} | {:.0} | {:.3} % | {} ns | {} | {} | {} | {:.0} / {:.0} |",
            k.round,
            k.forwarder,
            f.delivered_pps,
            loss_percent(f),
            opt(f.cpu.ns_per_delivered_packet, 0),
            if k.forwarder == "reflector" {
                "(floor)".into()
            } else {
                share_in(c, k.forwarder, k.round).map_or("-".into(), |s| format!("{s:.0} ns"))
            },
            k.report
                .as_ref()
                .and_then(program_ns)
                .map_or("-".into(), |p| format!("{p:.1} ns")),
            f.relay_userspace_datagrams
                .map_or("-".into(), |n| n.to_string()),
            lat(|l| l.p50_us),
            lat(|l| l.p99_us),
        );
    }

    let _ = writeln!(o);
    for f in ["sluice-xdp", "sluice-user", "rtpengine"] {
        if let Some((median, lo, hi)) = shares(c, f) {
            let _ = writeln!(
                o,
                "- {f}: forwarder's share {median:.0} ns per packet (median of the rounds; \
                 {lo:.0} to {hi:.0})"
            );
        }
    }
    let _ = writeln!(
        o,
        "\n## Flood at a fixed rate, one-armed relay (XDP_TX on one veth)\n"
    );
    let _ = writeln!(
        o,
        "| round | forwarder | delivered pps | loss | XDP program | program / reflector |\n|---|---|---|---|---|---|"
    );
    for k in c.cases.iter().filter(|k| k.scenario == "flood-one-arm") {
        let Some(f) = k.report.as_ref().and_then(|r| r.flood.as_ref()) else {
            let _ = write!(o, "| {} ", k.round);
            failed_row(&mut o, k, 5);
            continue;
        };
        let prog = k.report.as_ref().and_then(program_ns);
        // Against the reflector of the same round: the rounds drift together.
        let floor = find_round(c, k.scenario, "reflector", k.round).and_then(program_ns);
        let _ = writeln!(
            o,
            "| {} | {} | {:.0} | {:.3} % | {} | {} |",
            k.round,
            k.forwarder,
            f.delivered_pps,
            loss_percent(f),
            prog.map_or("-".into(), |p| format!("{p:.1} ns")),
            if k.forwarder == "reflector" {
                "(floor)".into()
            } else {
                ratio(prog, floor, 2)
            },
        );
    }
    program_cost(&mut o, c);
    let _ = writeln!(o, "\n## Flood at saturation (namespace topology)\n");
    let _ = writeln!(
        o,
        "| forwarder | sent pps | delivered pps | loss | relay CPU | generator CPU |\n|---|---|---|---|---|---|"
    );
    for k in c.cases.iter().filter(|k| k.scenario == "flood-max") {
        let Some(f) = k.report.as_ref().and_then(|r| r.flood.as_ref()) else {
            failed_row(&mut o, k, 6);
            continue;
        };
        let _ = writeln!(
            o,
            "| {} | {:.0} | {:.0} | {:.2} % | {:.2} s | {:.2} s |",
            k.forwarder,
            f.sent_pps,
            f.delivered_pps,
            loss_percent(f),
            f.cpu.relay_s,
            f.cpu.generator_s
        );
    }

    let _ = writeln!(o, "\n## Control plane (loopback, concurrency 16)\n");
    let _ = writeln!(
        o,
        "| target | cycles/s | failed | cycle p50 / p99 (ms) | relay CPU per cycle |\n|---|---|---|---|---|"
    );
    for k in c.cases.iter().filter(|k| k.scenario == "control") {
        let Some(r) = k.report.as_ref().and_then(|r| r.control.as_ref()) else {
            failed_row(&mut o, k, 5);
            continue;
        };
        let cpu = r
            .usage
            .relay_cpu
            .as_ref()
            .map(|u| u.total_s * 1e6 / r.cycles_ok.max(1) as f64);
        let _ = writeln!(
            o,
            "| {} | {:.0} | {} | {:.2} / {:.2} | {} us |",
            k.forwarder,
            r.cycles_per_s,
            r.cycles_failed,
            r.latency.cycle.p50_us / 1000.0,
            r.latency.cycle.p99_us / 1000.0,
            opt(cpu, 0)
        );
    }

    let _ = writeln!(
        o,
        "\n## Steady calls (namespace topology, 50 pps each way, RTCP every 5 s)\n"
    );
    let _ = writeln!(
        o,
        "| target | calls up | delivered pps | lost | latency p50 / p99 (us) | relay CPU per packet | machine CPU per packet |\n|---|---|---|---|---|---|---|"
    );
    for k in c.cases.iter().filter(|k| k.scenario == "steady") {
        let Some(s) = k.report.as_ref().and_then(|r| r.steady.as_ref()) else {
            failed_row(&mut o, k, 7);
            continue;
        };
        let lost: u64 = s.directions.iter().map(|d| d.totals.lost).sum();
        // Relay + generator + ksoftirqd over the packets delivered in the window.
        let machine = {
            let u = &s.usage;
            let cpu = u.relay_cpu.as_ref().map_or(0.0, |c| c.total_s)
                + u.generator_cpu.as_ref().map_or(0.0, |c| c.total_s)
                + u.ksoftirqd_cpu_s;
            let packets = s.delivered_pps * s.window_s;
            (packets > 0.0).then(|| cpu * 1e9 / packets)
        };
        let lat = |p: fn(&crate::stats::LatencySummary) -> f64| {
            s.directions
                .iter()
                .map(|d| p(&d.window_latency))
                .fold(0.0_f64, f64::max)
        };
        let _ = writeln!(
            o,
            "| {} | {} / {} | {:.0} | {} | {:.0} / {:.0} | {} ns | {} ns |",
            k.forwarder,
            s.calls_up,
            s.calls_requested,
            s.delivered_pps,
            lost,
            lat(|l| l.p50_us),
            lat(|l| l.p99_us),
            opt(s.relay_cpu_ns_per_packet, 0),
            opt(machine, 0)
        );
    }

    let _ = writeln!(o, "\n## Charts\n");
    let _ = writeln!(
        o,
        "![CPU per packet](cpu_per_packet.svg)\n![throughput](throughput.svg)\n![latency](latency_cdf.svg)\n"
    );
    let _ = writeln!(o, "## Commands\n");
    for k in &c.cases {
        let _ = writeln!(o, "- `{}` ({:.0} s)", k.command, k.seconds);
    }
    o
}

/// The program-cost section: BPF_PROG_TEST_RUN, then the rounds under load.
fn program_cost(o: &mut String, c: &Comparison) {
    let _ = writeln!(o, "\n## XDP program cost\n");
    let _ = writeln!(
        o,
        "Nanoseconds per program run from `kernel.bpf_stats_enabled` (run_time_ns / run_cnt).\n"
    );
    match &c.prog_cost {
        Ok(p) => {
            let _ = writeln!(
                o,
                "BPF_PROG_TEST_RUN (the program built into this sluice-bench), median of {} \
                 alternating rounds x {} runs:\n",
                p.rounds, p.repeat
            );
            let _ = writeln!(
                o,
                "| program | test run's timing | bpf_stats |\n|---|---|---|"
            );
            for (name, run, stats) in [
                ("pass-through", p.pass_ns, p.stats_ns[0]),
                ("XDP_TX reflector", p.reflector_ns, p.stats_ns[1]),
                (
                    "redirecting reflector",
                    p.reflector_redirect_ns,
                    p.stats_ns[4],
                ),
                ("sluice_xdp, redirect", p.sluice_ns, p.stats_ns[2]),
                ("sluice_xdp, XDP_TX", p.sluice_tx_ns, p.stats_ns[3]),
            ] {
                let _ = writeln!(o, "| {name} | {run:.1} ns | {stats:.1} ns |");
            }
        }
        Err(e) => {
            let _ = writeln!(o, "BPF_PROG_TEST_RUN: failed: {e}");
        }
    }
    let _ = writeln!(
        o,
        "\nUnder load: unpaced flood, the relay devices' receive processing in kernel threads \
         (`--napi threaded`); each ratio against the floor of the same round.\n"
    );
    let _ = writeln!(
        o,
        "| round | topology | forwarder | delivered pps | XDP program | / XDP_TX reflector | / redirecting reflector |\n|---|---|---|---|---|---|---|"
    );
    for k in c.cases.iter().filter(|k| k.scenario.starts_with("load-")) {
        let topology = k.scenario.trim_start_matches("load-");
        let Some(f) = k.report.as_ref().and_then(|r| r.flood.as_ref()) else {
            let _ = write!(o, "| {} | {topology} ", k.round);
            failed_row(o, k, 5);
            continue;
        };
        let prog = k.report.as_ref().and_then(program_ns);
        let against = |floor: &str| {
            if k.forwarder == floor {
                return "(floor)".to_string();
            }
            // One floor against the other says nothing about Sluice.
            if k.forwarder.starts_with("reflector") {
                return String::new();
            }
            match find_round(c, k.scenario, floor, k.round) {
                Some(r) => ratio(prog, program_ns(r), 2),
                None => "".into(),
            }
        };
        let _ = writeln!(
            o,
            "| {} | {topology} | {} | {:.0} | {} | {} | {} |",
            k.round,
            k.forwarder,
            f.delivered_pps,
            prog.map_or("-".into(), |p| format!("{p:.1} ns")),
            against("reflector"),
            against("reflector-redirect"),
        );
    }
}

/// A table row for a case that produced no report: the error spans the remaining columns.
fn failed_row(o: &mut String, k: &Case, columns: usize) {
    let _ = writeln!(
        o,
        "| {} | failed: {} {}",
        k.forwarder,
        k.error.as_deref().unwrap_or("?"),
        "|".repeat(columns - 1)
    );
}

fn draw(c: &Comparison, out: &Path) -> Result<()> {
    let shares: Vec<(String, f64)> = ["sluice-xdp", "sluice-user", "rtpengine"]
        .iter()
        .filter_map(|f| Some((f.to_string(), share(c, f)?)))
        .collect();
    charts::bars(
        &out.join("cpu_per_packet.svg"),
        "Machine CPU per forwarded packet, minus the XDP_TX floor",
        "ns per packet",
        &shares,
    )?;
    let max: Vec<(String, f64)> = c
        .cases
        .iter()
        .filter(|k| k.scenario == "flood-max")
        .filter_map(|k| {
            Some((
                k.forwarder.to_string(),
                k.report.as_ref()?.flood.as_ref()?.delivered_pps,
            ))
        })
        .collect();
    charts::bars(
        &out.join("throughput.svg"),
        "Delivered at saturation (2 vCPUs shared with the generator)",
        "packets per second",
        &max,
    )?;
    let cdfs: Vec<(String, Vec<(f64, f64)>)> = c
        .cases
        .iter()
        .filter(|k| k.scenario == "flood-rate")
        .filter_map(|k| {
            Some((
                k.forwarder.to_string(),
                k.report.as_ref()?.flood.as_ref()?.latency_cdf_us.clone(),
            ))
        })
        .filter(|(_, pts)| !pts.is_empty())
        .collect();
    charts::cdf(
        &out.join("latency_cdf.svg"),
        "One-way latency at a fixed rate",
        &cdfs,
    )?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_matrix_covers_every_forwarder_and_parses() {
        let cases = matrix(true, true);
        for (scenario, forwarder) in [
            ("flood-rate", "reflector"),
            ("flood-rate", "sluice-xdp"),
            ("flood-rate", "sluice-user"),
            ("flood-rate", "rtpengine"),
            ("flood-one-arm", "reflector"),
            ("flood-one-arm", "sluice-xdp"),
            ("load-routed", "reflector"),
            ("load-routed", "reflector-redirect"),
            ("load-routed", "sluice-xdp"),
            ("load-one-arm", "reflector"),
            ("load-one-arm", "sluice-xdp"),
            ("flood-max", "sluice-xdp"),
            ("control", "sluice-grpc"),
            ("control", "rtpengine"),
            ("steady", "rtpengine"),
            ("steady", "sluice-xdp"),
        ] {
            assert!(
                cases
                    .iter()
                    .any(|(s, f, _, _)| *s == scenario && *f == forwarder),
                "{scenario} {forwarder}"
            );
        }
        let rounds = |m: &[MatrixCase]| {
            m.iter()
                .filter(|(s, f, _, _)| *s == "flood-rate" && *f == "sluice-xdp")
                .count()
        };
        assert_eq!(rounds(&cases), 1);
        assert_eq!(rounds(&matrix(false, true)), RATE_ROUNDS as usize);
        // Under load the relay devices' NAPI runs threaded, which needs a namespace topology.
        for (scenario, _, _, args) in &cases {
            if scenario.starts_with("load-") {
                assert!(
                    args.windows(2).any(|w| w == ["--napi", "threaded"]),
                    "{args:?}"
                );
                assert!(!args.iter().any(|a| a == "--rate"), "{args:?}");
            }
        }
        for (_, _, _, args) in &cases {
            let mut argv = vec!["run".to_string()];
            argv.extend(args.iter().cloned());
            RunOnly::try_parse_from(&argv).unwrap_or_else(|e| panic!("{argv:?}: {e}"));
        }
        assert!(
            !matrix(true, false)
                .iter()
                .any(|(_, f, _, _)| f.starts_with("rtpengine"))
        );
    }

    #[test]
    fn ratios_and_markdown_without_results() {
        assert_eq!(ratio(Some(2474.0), Some(447.0), 1), "5.5x");
        assert_eq!(ratio(None, Some(1.0), 1), "n/a");
        assert_eq!(ratio(Some(1.0), Some(0.0), 1), "n/a");
        assert_eq!(ratio(Some(37.3), Some(24.4), 2), "1.53x");
        assert_eq!(median_range(vec![]), None);
        assert_eq!(
            median_range(vec![1.55, 1.48, 1.53]),
            Some((1.53, 1.48, 1.55))
        );
        assert_eq!(
            ratio_range(Some((1.53, 1.48, 1.55))),
            "1.53x (rounds 1.48-1.55x)"
        );
        assert_eq!(ratio_range(Some((1.5, 1.5, 1.5))), "1.50x");
        assert_eq!(ratio_range(None), "n/a");
        assert_eq!(
            over_xdp_share(Some(2900.0), Some((260.0, 140.0, 400.0))),
            "11.2x"
        );
        assert!(
            over_xdp_share(Some(2839.0), Some((-60.0, -320.0, 320.0)))
                .starts_with("at least 8.9x (Sluice XDP's share is within the noise")
        );
        assert_eq!(
            over_xdp_share(Some(2839.0), Some((-60.0, -320.0, -10.0))),
            "XDP's share at or below the floor in every round"
        );
        assert_eq!(over_xdp_share(None, Some((1.0, 1.0, 1.0))), "n/a");
        let c = Comparison {
            date_utc: "2026-11-25T00:00:00Z".into(),
            git_commit: None,
            quick: true,
            machine: Machine::probe(),
            rtpengine: None,
            prog_cost: Err("not run".into()),
            cases: vec![Case {
                scenario: "flood-rate",
                forwarder: "sluice-xdp",
                round: 1,
                command: "sluice-bench run ...".into(),
                seconds: 1.0,
                report: None,
                error: Some("no root".into()),
            }],
        };
        let md = markdown(&c);
        assert!(md.contains("| 1 | sluice-xdp | failed: no root"), "{md}");
        assert!(md.contains("rtpengine not installed"), "{md}");
    }
}
