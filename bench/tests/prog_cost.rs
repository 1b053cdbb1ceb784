//! `sluice-bench prog-cost` end to end (root: namespaces, BPF): the fast path forwards every
//! test run of its ping-pong flows and each program gets a cost. Skips with a message when
//! unprivileged; fails instead as root or under CI.

use sluice_bench::privileged::privileged_or_skip;
use sluice_bench::prog_cost::{ProgCostArgs, run};

#[test]
fn measures_the_fast_path_and_the_reflector_side_by_side() {
    if !privileged_or_skip("measures_the_fast_path_and_the_reflector_side_by_side") {
        return;
    }
    // `run` checks that every run took the forwarding path (redirect and XDP_TX counts ==
    // runs).
    let cost = run(&ProgCostArgs {
        repeat: 20_000,
        rounds: 3,
        payload: 172,
    })
    .expect("prog-cost");
    assert!(
        cost.reflector_ns > 0.0
            && cost.reflector_redirect_ns > 0.0
            && cost.sluice_ns > 0.0
            && cost.sluice_tx_ns > 0.0,
        "{cost:?}"
    );
    assert!(
        cost.sluice_ns >= cost.pass_ns && cost.sluice_tx_ns >= cost.pass_ns,
        "forwarding cannot be cheaper than passing: {cost:?}"
    );
    assert!(cost.stats_ns.iter().all(|&ns| ns > 0.0), "{cost:?}");
    assert!(cost.human().contains("sluice_xdp, XDP_TX"));
    assert!(cost.human().contains("redirect reflector"));
}
