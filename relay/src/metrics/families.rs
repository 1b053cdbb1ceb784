//! Metric families built at scrape time from one snapshot of the command core
//! ([`CoreStats`]): session table, port pools, the userspace workers' totals and the XDP fast
//! path's counters. Nothing here is updated on the packet path; the workers and the kernel
//! count, and a scrape reads what they counted.
//!
//! Every family is emitted with all its known label values, zeros included (also the XDP ones
//! when the fast path is not running), so dashboards and alerts never see a missing series.

use prometheus::proto::{
    Bucket, Counter, Gauge, Histogram, LabelPair, Metric, MetricFamily, MetricType,
};
use sluice_common::Stat;

use crate::control::core::CoreStats;
use crate::session::EndReason;
use crate::session::stats::{JITTER_BUCKETS_US, JitterSnapshot};

/// `direction` label values, indexed by the ingress leg (leg 0 faces the endpoint whose offer
/// created the session).
const DIRECTIONS: [&str; 2] = ["caller_to_callee", "callee_to_caller"];

const END_REASONS: [EndReason; 4] = [
    EndReason::Deleted,
    EndReason::SetupTimeout,
    EndReason::MediaTimeout,
    EndReason::Ttl,
];

/// One family under construction.
struct Family(MetricFamily);

impl Family {
    fn new(name: &str, help: &str, kind: MetricType) -> Family {
        let mut mf = MetricFamily::default();
        mf.set_name(name.to_owned());
        mf.set_help(help.to_owned());
        mf.set_field_type(kind);
        Family(mf)
    }

    fn counter(name: &str, help: &str) -> Family {
        Family::new(name, help, MetricType::COUNTER)
    }

    fn gauge(name: &str, help: &str) -> Family {
        Family::new(name, help, MetricType::GAUGE)
    }

    /// Adds a sample: a counter or gauge by the family's type.
    fn sample(mut self, labels: &[(&str, &str)], value: u64) -> Family {
        let mut m = Metric::from_label(label_pairs(labels));
        // f64 is exact to 2^53, beyond any packet count this process reaches.
        let value = value as f64;
        if self.0.get_field_type() == MetricType::COUNTER {
            let mut c = Counter::default();
            c.set_value(value);
            m.set_counter(c);
        } else {
            let mut g = Gauge::default();
            g.set_value(value);
            m.set_gauge(g);
        }
        self.0.mut_metric().push(m);
        self
    }

    fn build(self) -> MetricFamily {
        self.0
    }
}

fn label_pairs(labels: &[(&str, &str)]) -> Vec<LabelPair> {
    labels
        .iter()
        .map(|(name, value)| {
            let mut l = LabelPair::default();
            l.set_name((*name).to_owned());
            l.set_value((*value).to_owned());
            l
        })
        .collect()
}

/// The jitter histogram in seconds, from per-bucket (not cumulative) counts in microseconds.
fn jitter_family(j: &JitterSnapshot) -> MetricFamily {
    let mut cumulative = 0;
    let buckets = JITTER_BUCKETS_US
        .iter()
        .zip(j.buckets)
        .map(|(&bound_us, count)| {
            cumulative += count;
            let mut b = Bucket::default();
            b.set_upper_bound(bound_us as f64 / 1e6);
            b.set_cumulative_count(cumulative);
            b
        })
        .collect();
    let mut h = Histogram::default();
    h.set_bucket(buckets);
    h.set_sample_count(j.count());
    h.set_sample_sum(j.sum_us as f64 / 1e6);
    let mut m = Metric::default();
    m.set_histogram(h);
    let mut f = Family::new(
        "sluice_rtp_jitter_seconds",
        "RFC 3550 interarrival jitter of the RTP legs the userspace path forwards, one sample \
         per leg per second with RTP (legs offloaded to XDP are not sampled).",
        MetricType::HISTOGRAM,
    );
    f.0.mut_metric().push(m);
    f.build()
}

/// Every family derived from a core snapshot.
pub fn core_families(s: &CoreStats) -> Vec<MetricFamily> {
    let c = &s.counters;
    let d = &s.datapath;
    let xdp = s.xdp.clone().unwrap_or_default();
    let k = &xdp.forwarded;
    let mut out = Vec::new();

    out.push(
        Family::gauge(
            "sluice_sessions_active",
            "Sessions (calls) in the session table.",
        )
        .sample(&[], s.sessions as u64)
        .build(),
    );
    out.push(
        Family::gauge(
            "sluice_streams_active",
            "Streams (SDP m-lines, two legs each) in the session table.",
        )
        .sample(&[], s.streams as u64)
        .build(),
    );
    out.push(
        Family::counter("sluice_sessions_created_total", "Sessions created.")
            .sample(&[], c.sessions_created)
            .build(),
    );
    let mut ended = Family::counter(
        "sluice_sessions_ended_total",
        "Sessions ended, by reason: deleted (by the control client), setup_timeout (never \
         answered), media_timeout (no media in either path), ttl (session_ttl reached).",
    );
    for reason in END_REASONS {
        let n = match reason {
            EndReason::Deleted => c.sessions_deleted,
            EndReason::SetupTimeout => c.sessions_setup_timeout,
            EndReason::MediaTimeout => c.sessions_media_timeout,
            EndReason::Ttl => c.sessions_ttl,
        };
        ended = ended.sample(&[("reason", reason.as_str())], n);
    }
    out.push(ended.build());

    let (mut capacity, mut in_use, mut quarantined) = (
        Family::gauge(
            "sluice_port_pairs_capacity",
            "RTP/RTCP port pairs in the interface's configured range.",
        ),
        Family::gauge(
            "sluice_port_pairs_in_use",
            "Port pairs allocated to session legs.",
        ),
        Family::gauge(
            "sluice_port_pairs_quarantined",
            "Released port pairs waiting out media.quarantine before reuse (not allocatable).",
        ),
    );
    for (name, usage) in &s.ports {
        let labels = [("interface", name.as_str())];
        capacity = capacity.sample(&labels, usage.total as u64);
        in_use = in_use.sample(&labels, usage.in_use as u64);
        quarantined = quarantined.sample(&labels, usage.quarantined as u64);
    }
    out.extend([capacity.build(), in_use.build(), quarantined.build()]);

    let mut packets = Family::counter(
        "sluice_forwarded_packets_total",
        "Packets forwarded, by path (user: the userspace workers, xdp: the kernel fast path; \
         each packet is forwarded by exactly one) and direction.",
    );
    let mut bytes = Family::counter(
        "sluice_forwarded_bytes_total",
        "UDP payload bytes forwarded, by path and direction.",
    );
    for (leg, direction) in DIRECTIONS.iter().enumerate() {
        let user = [("path", "user"), ("direction", *direction)];
        let kernel = [("path", "xdp"), ("direction", *direction)];
        packets = packets
            .sample(&user, d.forwarded_packets[leg])
            .sample(&kernel, k.packets[leg]);
        bytes = bytes
            .sample(&user, d.forwarded_bytes[leg])
            .sample(&kernel, k.bytes[leg]);
    }
    out.extend([packets.build(), bytes.build()]);
    out.push(
        Family::counter(
            "sluice_user_received_packets_total",
            "Datagrams the userspace workers read from media sockets (packets the XDP program \
             passed up included, packets it forwarded not).",
        )
        .sample(&[], d.received)
        .build(),
    );
    out.push(
        Family::counter(
            "sluice_dropped_packets_total",
            "Media packets dropped, by reason: source_mismatch (not from the leg's latched or \
             allowed source: RTP Bleed attempts among them), no_destination (the other leg has \
             no address yet), overload (socket receive queue overflowed), send_failed, oversize \
             (larger than the receive buffer).",
        )
        .sample(&[("reason", "source_mismatch")], d.dropped_source)
        .sample(&[("reason", "no_destination")], d.dropped_no_destination)
        .sample(&[("reason", "overload")], d.dropped_overflow)
        .sample(&[("reason", "send_failed")], d.dropped_send)
        .sample(&[("reason", "oversize")], d.dropped_oversize)
        .build(),
    );
    out.push(
        Family::counter(
            "sluice_rtp_expected_packets_total",
            "RTP packets the senders' sequence numbers say were sent (RFC 3550), by path.",
        )
        .sample(&[("path", "user")], d.rtp_expected)
        .sample(&[("path", "xdp")], k.rtp_expected)
        .build(),
    );
    out.push(
        Family::counter(
            "sluice_rtp_lost_packets_total",
            "RTP packets lost before reaching the relay (sequence gaps, RFC 3550), by path.",
        )
        .sample(&[("path", "user")], d.rtp_lost)
        .sample(&[("path", "xdp")], k.rtp_lost)
        .build(),
    );
    out.push(jitter_family(&d.jitter));
    out.push(
        Family::counter(
            "sluice_latch_events_total",
            "Legs latched to the address media really comes from (latched), or moved to a new \
             one (relatched).",
        )
        .sample(&[("event", "latched")], d.latched)
        .sample(&[("event", "relatched")], d.relatched)
        .build(),
    );

    out.push(
        Family::gauge(
            "sluice_xdp_flows_active",
            "Flows installed in the XDP program's table (up to four per offloaded stream).",
        )
        .sample(&[], xdp.flows_active as u64)
        .build(),
    );
    out.push(
        Family::gauge(
            "sluice_xdp_flows_capacity",
            "Size of the XDP flow table (xdp.max_flows); 0 when the fast path is not running.",
        )
        .sample(&[], xdp.flows_capacity as u64)
        .build(),
    );
    let verdict = |stat: Stat| {
        xdp.verdicts
            .iter()
            .find(|(s, _)| *s == stat)
            .map(|(_, c)| *c)
            .unwrap_or_default()
    };
    let received = verdict(Stat::Received);
    out.push(
        Family::counter(
            "sluice_xdp_received_packets_total",
            "Frames the XDP program ran on (every frame on the attached devices).",
        )
        .sample(&[], received.packets)
        .build(),
    );
    out.push(
        Family::counter(
            "sluice_xdp_received_bytes_total",
            "Bytes (whole frames) of the frames the XDP program ran on.",
        )
        .sample(&[], received.bytes)
        .build(),
    );
    let (mut v_packets, mut v_bytes) = (
        Family::counter(
            "sluice_xdp_verdict_packets_total",
            "Frames by the XDP program's decision: tx and redirect were forwarded in the \
             kernel, pass_* went up the stack (to the userspace path) for the reason named.",
        ),
        Family::counter(
            "sluice_xdp_verdict_bytes_total",
            "Bytes (whole frames) by the XDP program's decision.",
        ),
    );
    for stat in Stat::ALL.into_iter().filter(|s| *s != Stat::Received) {
        let c = verdict(stat);
        let labels = [("verdict", stat.name())];
        v_packets = v_packets.sample(&labels, c.packets);
        v_bytes = v_bytes.sample(&labels, c.bytes);
    }
    out.extend([v_packets.build(), v_bytes.build()]);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::datapath::xdp::{PathTotals, XdpSnapshot};
    use crate::ports::PoolUsage;
    use sluice_common::Counter;

    fn value(families: &[MetricFamily], name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        let f = families.iter().find(|f| f.name() == name)?;
        f.get_metric()
            .iter()
            .find(|m| {
                labels.iter().all(|(n, v)| {
                    m.get_label()
                        .iter()
                        .any(|l| l.name() == *n && l.value() == *v)
                })
            })
            .map(|m| match f.get_field_type() {
                MetricType::COUNTER => m.get_counter().get_value(),
                _ => m.get_gauge().get_value(),
            })
    }

    #[test]
    fn user_and_kernel_paths_are_separate_series_never_summed() {
        let mut s = CoreStats::default();
        s.datapath.forwarded_packets = [100, 90];
        s.datapath.forwarded_bytes = [16_000, 14_400];
        s.datapath.rtp_lost = 3;
        s.xdp = Some(XdpSnapshot {
            verdicts: vec![
                (
                    Stat::Received,
                    Counter {
                        packets: 1000,
                        bytes: 200_000,
                    },
                ),
                (
                    Stat::Tx,
                    Counter {
                        packets: 990,
                        bytes: 198_000,
                    },
                ),
                (
                    Stat::PassSourceMismatch,
                    Counter {
                        packets: 10,
                        bytes: 2000,
                    },
                ),
            ],
            forwarded: PathTotals {
                packets: [500, 490],
                bytes: [80_000, 78_400],
                rtp_expected: 495,
                rtp_lost: 1,
            },
            flows_active: 4,
            flows_capacity: 65536,
        });
        let f = core_families(&s);
        let fwd = "sluice_forwarded_packets_total";
        let user = [("path", "user"), ("direction", "caller_to_callee")];
        let kernel = [("path", "xdp"), ("direction", "caller_to_callee")];
        assert_eq!(value(&f, fwd, &user), Some(100.0));
        assert_eq!(value(&f, fwd, &kernel), Some(500.0));
        assert_eq!(
            value(
                &f,
                fwd,
                &[("path", "xdp"), ("direction", "callee_to_caller")]
            ),
            Some(490.0)
        );
        let lost = "sluice_rtp_lost_packets_total";
        assert_eq!(value(&f, lost, &[("path", "user")]), Some(3.0));
        assert_eq!(value(&f, lost, &[("path", "xdp")]), Some(1.0));
        // "received" is its own metric, not a verdict: summing verdicts counts each frame once.
        let verdicts = f
            .iter()
            .find(|f| f.name() == "sluice_xdp_verdict_packets_total")
            .unwrap();
        let sum: f64 = verdicts
            .get_metric()
            .iter()
            .map(|m| m.get_counter().get_value())
            .sum();
        assert_eq!(sum, 1000.0);
        assert_eq!(
            value(&f, "sluice_xdp_received_packets_total", &[]),
            Some(1000.0)
        );
        assert_eq!(verdicts.get_metric().len(), Stat::ALL.len() - 1);
        // A source mismatch the kernel passed up is dropped (and counted) by userspace only.
        assert_eq!(
            value(
                &f,
                "sluice_dropped_packets_total",
                &[("reason", "source_mismatch")]
            ),
            Some(0.0)
        );
    }

    #[test]
    fn every_known_series_exists_without_xdp_or_traffic() {
        let s = CoreStats {
            ports: vec![(
                "lo".into(),
                PoolUsage {
                    total: 50,
                    in_use: 2,
                    quarantined: 1,
                },
            )],
            ..CoreStats::default()
        };
        let f = core_families(&s);
        for name in [
            "sluice_sessions_ended_total",
            "sluice_dropped_packets_total",
            "sluice_xdp_verdict_packets_total",
            "sluice_rtp_jitter_seconds",
            "sluice_latch_events_total",
        ] {
            let family = f.iter().find(|x| x.name() == name).expect(name);
            assert!(!family.get_metric().is_empty(), "{name}");
        }
        assert_eq!(
            value(&f, "sluice_port_pairs_capacity", &[("interface", "lo")]),
            Some(50.0)
        );
        assert_eq!(
            value(
                &f,
                "sluice_sessions_ended_total",
                &[("reason", "media_timeout")]
            ),
            Some(0.0)
        );
        let mut names: Vec<&str> = f.iter().map(|x| x.name()).collect();
        let n = names.len();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), n, "no family twice");
    }

    #[test]
    fn jitter_buckets_are_cumulative_and_in_seconds() {
        let mut j = JitterSnapshot::default();
        j.buckets[0] = 2;
        j.buckets[3] = 1;
        j.buckets[JITTER_BUCKETS_US.len()] = 4;
        j.sum_us = 2_500_000;
        let f = jitter_family(&j);
        let h = f.get_metric()[0].get_histogram();
        assert_eq!(h.get_sample_count(), 7);
        assert!((h.get_sample_sum() - 2.5).abs() < 1e-9);
        let b = h.get_bucket();
        assert_eq!(b.len(), JITTER_BUCKETS_US.len());
        assert!((b[0].upper_bound() - 0.0005).abs() < 1e-12);
        assert_eq!(b[0].cumulative_count(), 2);
        assert_eq!(b[3].cumulative_count(), 3);
        assert_eq!(b[JITTER_BUCKETS_US.len() - 1].cumulative_count(), 3);
    }
}
