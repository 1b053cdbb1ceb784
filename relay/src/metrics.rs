//! Prometheus registry and the `/metrics` HTTP endpoint.
//!
//! Sluice's own metrics start with `sluice_`; the standard `process_*` metrics (CPU, RSS, open
//! file descriptors) keep their conventional names so stock dashboards and alerts apply.

use axum::{Router, http::StatusCode, http::header, response::IntoResponse, routing::get};
use prometheus::{Encoder, IntGaugeVec, Opts, Registry, TextEncoder};
use tokio::net::TcpListener;

/// Version of the running build, for `sluice_build_info`.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
/// Git commit the binary was built from ("unknown" outside a git checkout).
pub const GIT_COMMIT: &str = env!("SLUICE_GIT_COMMIT");

#[derive(Clone)]
pub struct Metrics {
    registry: Registry,
    xdp_attached: IntGaugeVec,
    xdp_fallback: IntGaugeVec,
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
        Ok(Metrics {
            registry,
            xdp_attached,
            xdp_fallback,
        })
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

    /// Current metrics in the Prometheus text exposition format.
    pub fn render(&self) -> Result<String, prometheus::Error> {
        let mut buf = Vec::new();
        TextEncoder::new().encode(&self.registry.gather(), &mut buf)?;
        String::from_utf8(buf).map_err(|e| prometheus::Error::Msg(e.to_string()))
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
                async move { metrics.respond() }
            }),
        );
        axum::serve(listener, app)
            .with_graceful_shutdown(shutdown)
            .await
    }

    fn respond(&self) -> axum::response::Response {
        match self.render() {
            Ok(body) => ([(header::CONTENT_TYPE, prometheus::TEXT_FORMAT)], body).into_response(),
            Err(e) => {
                tracing::error!(error = %e, "cannot encode metrics");
                (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response()
            }
        }
    }
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
}
