//! Which flows of a stream the kernel fast path may forward: decided here, without IO, from the
//! stream's latched addresses. A flow is one direction of one component (RTP or RTCP); a
//! stream offers up to four.

use std::net::SocketAddr;

use super::latch::{LatchMode, LatchPolicy};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Component {
    Rtp,
    Rtcp,
}

/// One direction of one component: packets from `remote` to the relay's `local` go out from
/// `egress_local` to `egress_remote`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FlowSpec {
    pub component: Component,
    /// The leg the packets come from (0 or 1); they go out on the other one.
    pub ingress_leg: usize,
    pub local: SocketAddr,
    pub remote: SocketAddr,
    pub egress_local: SocketAddr,
    pub egress_remote: SocketAddr,
    /// DSCP of the egress packets.
    pub dscp: u8,
}

/// What one leg contributes: its local RTP address (RTCP is port + 1), its latched remotes and
/// its latch policy.
#[derive(Debug, Clone, Copy)]
pub struct LegView {
    pub local_rtp: Option<SocketAddr>,
    pub latched_rtp: Option<SocketAddr>,
    pub latched_rtcp: Option<SocketAddr>,
    pub policy: LatchPolicy,
}

/// The flows the kernel may forward for a stream whose legs look like `legs`: per component,
/// both directions once both legs have latched it, else none. Legs that never latch
/// (`asymmetric`), addresses of different families (bridging needs a header size change) and
/// wildcard local addresses stay in userspace.
pub fn stream_flows(legs: &[LegView; 2], dscp: u8) -> Vec<FlowSpec> {
    let mut flows = Vec::new();
    let (Some(l0), Some(l1)) = (legs[0].local_rtp, legs[1].local_rtp) else {
        return flows;
    };
    if legs.iter().any(|l| l.policy.mode == LatchMode::Asymmetric)
        || l0.ip().is_unspecified()
        || l1.ip().is_unspecified()
    {
        return flows;
    }
    let rtcp = |a: SocketAddr| SocketAddr::new(a.ip(), a.port().wrapping_add(1));
    let locals = [l0, l1];
    for component in [Component::Rtp, Component::Rtcp] {
        let remotes = legs.map(|l| match component {
            Component::Rtp => l.latched_rtp,
            Component::Rtcp => l.latched_rtcp,
        });
        let [Some(r0), Some(r1)] = remotes else {
            continue;
        };
        let remotes = [r0, r1];
        let local = |i: usize| match component {
            Component::Rtp => locals[i],
            Component::Rtcp => rtcp(locals[i]),
        };
        let v6 = l0.is_ipv6();
        if [l1, r0, r1].iter().any(|a| a.is_ipv6() != v6) {
            continue;
        }
        for ingress in 0..2 {
            let egress = 1 - ingress;
            flows.push(FlowSpec {
                component,
                ingress_leg: ingress,
                local: local(ingress),
                remote: remotes[ingress],
                egress_local: local(egress),
                egress_remote: remotes[egress],
                dscp,
            });
        }
    }
    flows
}

#[cfg(test)]
mod tests {
    use super::*;

    fn a(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    fn leg(local: &str, rtp: Option<&str>, rtcp: Option<&str>) -> LegView {
        LegView {
            local_rtp: Some(a(local)),
            latched_rtp: rtp.map(a),
            latched_rtcp: rtcp.map(a),
            policy: LatchPolicy::default(),
        }
    }

    #[test]
    fn both_directions_once_both_legs_latched() {
        let legs = [
            leg("198.18.1.1:30000", Some("198.18.1.2:4000"), None),
            leg("198.18.2.1:30002", None, None),
        ];
        assert!(stream_flows(&legs, 46).is_empty(), "one leg latched");
        let legs = [
            leg("198.18.1.1:30000", Some("198.18.1.2:4000"), None),
            leg("198.18.2.1:30002", Some("198.18.2.2:5000"), None),
        ];
        let flows = stream_flows(&legs, 46);
        assert_eq!(flows.len(), 2, "RTP only: RTCP has not latched");
        assert_eq!(
            flows[0],
            FlowSpec {
                component: Component::Rtp,
                ingress_leg: 0,
                local: a("198.18.1.1:30000"),
                remote: a("198.18.1.2:4000"),
                egress_local: a("198.18.2.1:30002"),
                egress_remote: a("198.18.2.2:5000"),
                dscp: 46,
            }
        );
        assert_eq!(flows[1].local, a("198.18.2.1:30002"));
        assert_eq!(flows[1].egress_remote, a("198.18.1.2:4000"));
    }

    #[test]
    fn rtcp_flows_use_port_plus_one_locally() {
        let legs = [
            leg(
                "198.18.1.1:30000",
                Some("198.18.1.2:4000"),
                Some("198.18.1.2:4001"),
            ),
            leg(
                "198.18.2.1:30002",
                Some("198.18.2.2:5000"),
                Some("198.18.2.2:5001"),
            ),
        ];
        let flows = stream_flows(&legs, 0);
        assert_eq!(flows.len(), 4);
        let rtcp: Vec<_> = flows
            .iter()
            .filter(|f| f.component == Component::Rtcp)
            .collect();
        assert_eq!(rtcp[0].local, a("198.18.1.1:30001"));
        assert_eq!(rtcp[0].egress_local, a("198.18.2.1:30003"));
        assert_eq!(rtcp[0].egress_remote, a("198.18.2.2:5001"));
    }

    #[test]
    fn bridging_wildcards_and_asymmetric_stay_in_userspace() {
        let bridged = [
            leg("198.18.1.1:30000", Some("198.18.1.2:4000"), None),
            leg("[2001:2:0:2::1]:30002", Some("[2001:2:0:2::2]:5000"), None),
        ];
        assert!(stream_flows(&bridged, 0).is_empty());
        let wildcard = [
            leg("0.0.0.0:30000", Some("198.18.1.2:4000"), None),
            leg("198.18.2.1:30002", Some("198.18.2.2:5000"), None),
        ];
        assert!(stream_flows(&wildcard, 0).is_empty());
        let mut asym = [
            leg("198.18.1.1:30000", Some("198.18.1.2:4000"), None),
            leg("198.18.2.1:30002", Some("198.18.2.2:5000"), None),
        ];
        asym[1].policy.mode = LatchMode::Asymmetric;
        assert!(stream_flows(&asym, 0).is_empty());
        let v6 = [
            leg("[2001:2:0:1::1]:30000", Some("[2001:2:0:1::2]:4000"), None),
            leg("[2001:2:0:2::1]:30002", Some("[2001:2:0:2::2]:5000"), None),
        ];
        assert_eq!(stream_flows(&v6, 0).len(), 2);
    }
}
