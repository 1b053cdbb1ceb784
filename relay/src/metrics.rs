//! Prometheus registry and the `/metrics` HTTP endpoint.
//!
//! Sluice's own metrics start with `sluice_`; the standard `process_*` metrics (CPU, RSS, open
//! file descriptors) keep their conventional names so stock dashboards and alerts apply.
//!
//! Two kinds of sources, neither of which costs the packet path anything per packet:
//! - registered metrics the control plane records into as it works ([`ControlMetrics`], the
//!   XDP attach status);
//! - counters the session core, the datapath workers and the XDP program keep anyway, read at
//!   scrape time through one [`CoreHandle::snapshot`] request and turned into families then
//!   ([`families`]). docs/metrics.md lists them all.

mod control;
mod families;

use std::time::Duration;

use axum::{Router, http::StatusCode, http::header, response::IntoResponse, routing::get};
use prometheus::proto::MetricFamily;
use prometheus::{Encoder, IntGaugeVec, Opts, Registry, TextEncoder};
use tokio::net::TcpListener;

pub use control::{ControlMetrics, Outcome, Protocol, Rejection};

use crate::control::core::{CoreHandle, CoreStats};

/// How long a scrape waits for the session core's snapshot before answering without it.
const SNAPSHOT_TIMEOUT: Duration = Duration::from_secs(2);

/// Version of the running build, for `sluice_build_info`.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
/// Git commit the binary was built from ("unknown" outside a git checkout).
pub const GIT_COMMIT: &str = env!("SLUICE_GIT_COMMIT");

#[derive(Clone)]
pub struct Metrics {
    registry: Registry,
    xdp_attached: IntGaugeVec,
    xdp_fallback: IntGaugeVec,
    control: ControlMetrics,
    /// Where scrapes get the session, datapath and XDP counters; None = registry only.
    core: Option<CoreHandle>,
}

impl Metrics {
    pub fn new() -> Result<Metrics, prometheus::Error> {
        let registry = Registry::new();
        let build_info = IntGaugeVec::new(
            Opts::new(
                "sluice_build_info",
                "Build of the running relay; the value is always 1.",
            ),
            &["version", "commit"],
        )?;
        build_info.with_label_values(&[VERSION, GIT_COMMIT]).set(1);
        registry.register(Box::new(build_info))?;
        registry.register(Box::new(
            prometheus::process_collector::ProcessCollector::for_self(),
        ))?;
        let xdp_attached = IntGaugeVec::new(
            Opts::new(
                "sluice_xdp_attached",
                "1 for every device the XDP fast path is attached to, by attach mode.",
            ),
            &["interface", "mode"],
        )?;
        let xdp_fallback = IntGaugeVec::new(
            Opts::new(
                "sluice_xdp_fallback",
                "1 for every reason media stays on the userspace path (XDP off, unavailable, \
                 or a device skipped).",
            ),
            &["reason"],
        )?;
        registry.register(Box::new(xdp_attached.clone()))?;
        registry.register(Box::new(xdp_fallback.clone()))?;
        let control = ControlMetrics::new()?;
        control.register(&registry)?;
        Ok(Metrics {
            registry,
            xdp_attached,
            xdp_fallback,
            control,
            core: None,
        })
    }

    /// Scrapes read the core's counters through `core` from now on.
    pub fn with_core(mut self, core: CoreHandle) -> Metrics {
        self.core = Some(core);
        self
    }

    /// What the control front ends record into.
    pub fn control(&self) -> &ControlMetrics {
        &self.control
    }

    /// Exports where the fast path runs and why not elsewhere.
    pub fn set_xdp_status(&self, status: &crate::datapath::xdp::XdpStatus) {
        for (device, mode) in &status.attached {
            self.xdp_attached
                .with_label_values(&[device.as_str(), &mode.to_string()])
                .set(1);
        }
        for reason in &status.fallback {
            self.xdp_fallback
                .with_label_values(&[reason.as_str()])
                .set(1);
        }
    }

    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    /// The registered metrics in the Prometheus text exposition format.
    pub fn render(&self) -> Result<String, prometheus::Error> {
        self.render_with(None)
    }

    /// The registered metrics plus those derived from a core snapshot.
    pub fn render_with(&self, stats: Option<&CoreStats>) -> Result<String, prometheus::Error> {
        let mut all = self.registry.gather();
        if let Some(stats) = stats {
            all.extend(families::core_families(stats));
        }
        // The encoder refuses an empty family (e.g. no interfaces); Prometheus wants a name at
        // most once.
        all.retain(|f| !f.get_metric().is_empty());
        all.sort_by(|a, b| a.name().cmp(b.name()));
        if let Some(twice) = all.windows(2).find(|w| w[0].name() == w[1].name()) {
            return Err(prometheus::Error::Msg(format!(
                "metric family {} defined twice",
                twice[0].name()
            )));
        }
        encode(&all)
    }

    /// Everything, with a fresh snapshot from the core when there is one.
    pub async fn scrape(&self) -> Result<String, prometheus::Error> {
        let stats = match &self.core {
            Some(core) => match tokio::time::timeout(SNAPSHOT_TIMEOUT, core.snapshot()).await {
                Ok(Ok(stats)) => Some(stats),
                Ok(Err(e)) => {
                    tracing::warn!(error = %e, "metrics: no snapshot from the session core");
                    None
                }
                Err(_) => {
                    tracing::warn!(
                        "metrics: the session core did not answer within {SNAPSHOT_TIMEOUT:?}"
                    );
                    None
                }
            },
            None => None,
        };
        self.render_with(stats.as_ref())
    }

    /// Serves `/metrics` on `listener` until `shutdown` resolves.
    pub async fn serve(
        self,
        listener: TcpListener,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> std::io::Result<()> {
        let app = Router::new().route(
            "/metrics",
            get(move || {
                let metrics = self.clone();
                async move { metrics.respond().await }
            }),
        );
        axum::serve(listener, app)
            .with_graceful_shutdown(shutdown)
            .await
    }

    async fn respond(&self) -> axum::response::Response {
        match self.scrape().await {
            Ok(body) => ([(header::CONTENT_TYPE, prometheus::TEXT_FORMAT)], body).into_response(),
            Err(e) => {
                tracing::error!(error = %e, "cannot encode metrics");
                (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response()
            }
        }
    }
}

fn encode(families: &[MetricFamily]) -> Result<String, prometheus::Error> {
    let mut buf = Vec::new();
    TextEncoder::new().encode(families, &mut buf)?;
    String::from_utf8(buf).map_err(|e| prometheus::Error::Msg(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exposes_build_info_and_process_metrics() {
        let text = Metrics::new().unwrap().render().unwrap();
        let line = text
            .lines()
            .find(|l| l.starts_with("sluice_build_info{"))
            .expect("sluice_build_info present");
        assert!(line.contains(&format!("version=\"{VERSION}\"")), "{line}");
        assert!(line.ends_with(" 1"), "{line}");
        assert!(text.contains("process_resident_memory_bytes"), "{text}");
        assert!(text.contains("process_open_fds"), "{text}");
    }

    #[test]
    fn a_snapshot_adds_its_families_once_and_sorted() {
        let m = Metrics::new().unwrap();
        m.control().observe(
            Protocol::Grpc,
            "offer",
            Outcome::Ok,
            Duration::from_millis(1),
        );
        let text = m.render_with(Some(&CoreStats::default())).unwrap();
        for name in [
            "sluice_sessions_active",
            "sluice_forwarded_packets_total",
            "sluice_control_requests_total",
            "sluice_rtp_jitter_seconds",
        ] {
            assert_eq!(
                text.matches(&format!("# TYPE {name} ")).count(),
                1,
                "{name}: {text}"
            );
        }
        assert!(text.contains("sluice_rtp_jitter_seconds_bucket{le=\"+Inf\"} 0"));
        let types: Vec<&str> = text
            .lines()
            .filter_map(|l| l.strip_prefix("# TYPE "))
            .collect();
        let mut sorted = types.clone();
        sorted.sort_unstable();
        assert_eq!(types, sorted);
        // Without a snapshot only the registered metrics are there.
        assert!(!m.render().unwrap().contains("sluice_sessions_active"));
    }
}
