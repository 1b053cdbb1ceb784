//! Control-plane metrics: requests per protocol, command and result, their latency, and
//! requests turned away before they reach a command. The front ends record into these
//! directly (a control request costs far more than a label lookup).

use std::time::Duration;

use prometheus::{HistogramOpts, HistogramVec, IntCounterVec, Opts, Registry};

use crate::control::rtpp::proto::ErrorCode;

/// Request latency buckets, in seconds: a command is tens of microseconds when the relay is
/// idle; anything near a second means a SIP proxy is retransmitting.
const LATENCY_BUCKETS: &[f64] = &[
    0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
    1.0, 2.5,
];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    Rtpp,
    Grpc,
}

impl Protocol {
    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Rtpp => "rtpp",
            Protocol::Grpc => "grpc",
        }
    }
}

/// The `result` label: a few classes shared by both protocols, so one alert covers both.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Ok,
    /// No such session (routine: SIP proxies delete calls twice, query ended ones).
    NotFound,
    /// The request was wrong (syntax, arguments, unknown interface).
    Invalid,
    /// A command Sluice does not implement.
    Unsupported,
    /// Out of ports, sockets or sessions: the relay's capacity.
    Exhausted,
    /// Shutting down.
    Unavailable,
    /// Anything else: a fault on the relay's side.
    Error,
}

impl Outcome {
    pub const ALL: [Outcome; 7] = [
        Outcome::Ok,
        Outcome::NotFound,
        Outcome::Invalid,
        Outcome::Unsupported,
        Outcome::Exhausted,
        Outcome::Unavailable,
        Outcome::Error,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Ok => "ok",
            Outcome::NotFound => "not_found",
            Outcome::Invalid => "invalid",
            Outcome::Unsupported => "unsupported",
            Outcome::Exhausted => "exhausted",
            Outcome::Unavailable => "unavailable",
            Outcome::Error => "error",
        }
    }

    pub fn from_grpc(code: tonic::Code) -> Outcome {
        use tonic::Code;
        match code {
            Code::Ok => Outcome::Ok,
            Code::NotFound => Outcome::NotFound,
            Code::InvalidArgument
            | Code::FailedPrecondition
            | Code::OutOfRange
            | Code::AlreadyExists => Outcome::Invalid,
            Code::Unimplemented => Outcome::Unsupported,
            Code::ResourceExhausted => Outcome::Exhausted,
            Code::Unavailable => Outcome::Unavailable,
            _ => Outcome::Error,
        }
    }

    pub fn from_rtpp(code: ErrorCode) -> Outcome {
        match code {
            ErrorCode::SessionNotFound => Outcome::NotFound,
            ErrorCode::ListenerFailed
            | ErrorCode::SessionCreateFailed
            | ErrorCode::Overloaded
            | ErrorCode::OutOfMemory(_) => Outcome::Exhausted,
            ErrorCode::SlowShutdown => Outcome::Unavailable,
            ErrorCode::StatsReplyTooBig
            | ErrorCode::QueryReplyTooBig
            | ErrorCode::PlayFailed
            | ErrorCode::CopyFailed => Outcome::Error,
            _ => Outcome::Invalid,
        }
    }
}

/// Why a request was turned away before it became a command.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rejection {
    /// rtpproxy UDP command from a source outside `rtpproxy.allow`.
    Acl,
    /// gRPC call without the configured bearer token.
    Unauthenticated,
    /// gRPC call over the per-client rate limit.
    RateLimited,
}

impl Rejection {
    const ALL: [(Protocol, Rejection); 3] = [
        (Protocol::Rtpp, Rejection::Acl),
        (Protocol::Grpc, Rejection::Unauthenticated),
        (Protocol::Grpc, Rejection::RateLimited),
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Rejection::Acl => "acl",
            Rejection::Unauthenticated => "unauthenticated",
            Rejection::RateLimited => "rate_limited",
        }
    }
}

/// Cheap to clone (the vectors are shared). [`Default`] gives an unregistered set, for front
/// ends built without a daemon (tests, benchmarks).
#[derive(Clone)]
pub struct ControlMetrics {
    requests: IntCounterVec,
    duration: HistogramVec,
    rejected: IntCounterVec,
    retransmissions: IntCounterVec,
}

impl ControlMetrics {
    pub fn new() -> Result<ControlMetrics, prometheus::Error> {
        let requests = IntCounterVec::new(
            Opts::new(
                "sluice_control_requests_total",
                "Control requests handled, by protocol (rtpp, grpc), command and result.",
            ),
            &["protocol", "command", "result"],
        )?;
        let duration = HistogramVec::new(
            HistogramOpts::new(
                "sluice_control_request_duration_seconds",
                "Time from a parsed control request to its reply, by protocol and command.",
            )
            .buckets(LATENCY_BUCKETS.to_vec()),
            &["protocol", "command"],
        )?;
        let rejected = IntCounterVec::new(
            Opts::new(
                "sluice_control_rejected_total",
                "Control requests turned away before execution: rtpproxy source ACL, gRPC \
                 token, gRPC rate limit.",
            ),
            &["protocol", "reason"],
        )?;
        let retransmissions = IntCounterVec::new(
            Opts::new(
                "sluice_control_retransmissions_total",
                "Retransmitted rtpproxy commands (same cookie) answered from the reply cache \
                 or while the original was still executing.",
            ),
            &["protocol"],
        )?;
        // Known series exist from the start, so rate() and alerts see zeros, not nothing.
        for (protocol, reason) in Rejection::ALL {
            rejected.with_label_values(&[protocol.as_str(), reason.as_str()]);
        }
        retransmissions.with_label_values(&[Protocol::Rtpp.as_str()]);
        Ok(ControlMetrics {
            requests,
            duration,
            rejected,
            retransmissions,
        })
    }

    pub fn register(&self, registry: &Registry) -> Result<(), prometheus::Error> {
        registry.register(Box::new(self.requests.clone()))?;
        registry.register(Box::new(self.duration.clone()))?;
        registry.register(Box::new(self.rejected.clone()))?;
        registry.register(Box::new(self.retransmissions.clone()))?;
        Ok(())
    }

    /// One request that executed and took `elapsed`.
    pub fn observe(&self, protocol: Protocol, command: &str, outcome: Outcome, elapsed: Duration) {
        self.count(protocol, command, outcome);
        self.duration
            .with_label_values(&[protocol.as_str(), command])
            .observe(elapsed.as_secs_f64());
    }

    /// One request without a meaningful latency (it could not even be parsed).
    pub fn count(&self, protocol: Protocol, command: &str, outcome: Outcome) {
        self.requests
            .with_label_values(&[protocol.as_str(), command, outcome.as_str()])
            .inc();
    }

    pub fn rejected(&self, protocol: Protocol, reason: Rejection) {
        self.rejected
            .with_label_values(&[protocol.as_str(), reason.as_str()])
            .inc();
    }

    pub fn retransmission(&self, protocol: Protocol) {
        self.retransmissions
            .with_label_values(&[protocol.as_str()])
            .inc();
    }
}

impl Default for ControlMetrics {
    fn default() -> Self {
        // The definitions are constants: failing here is a bug in this file, caught by tests.
        ControlMetrics::new().expect("static control metric definitions are valid")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn results_classify_both_protocols_alike() {
        assert_eq!(Outcome::from_grpc(tonic::Code::NotFound), Outcome::NotFound);
        assert_eq!(
            Outcome::from_rtpp(ErrorCode::SessionNotFound),
            Outcome::NotFound
        );
        assert_eq!(
            Outcome::from_grpc(tonic::Code::ResourceExhausted),
            Outcome::Exhausted
        );
        assert_eq!(
            Outcome::from_rtpp(ErrorCode::SessionCreateFailed),
            Outcome::Exhausted
        );
        assert_eq!(
            Outcome::from_rtpp(ErrorCode::Overloaded),
            Outcome::Exhausted
        );
        assert_eq!(Outcome::from_rtpp(ErrorCode::Syntax), Outcome::Invalid);
        assert_eq!(
            Outcome::from_grpc(tonic::Code::InvalidArgument),
            Outcome::Invalid
        );
        assert_eq!(Outcome::from_grpc(tonic::Code::Internal), Outcome::Error);
        assert_eq!(
            Outcome::from_rtpp(ErrorCode::SlowShutdown),
            Outcome::Unavailable
        );
    }

    #[test]
    fn records_into_a_registry() {
        let registry = Registry::new();
        let m = ControlMetrics::new().unwrap();
        m.register(&registry).unwrap();
        m.observe(
            Protocol::Rtpp,
            "offer",
            Outcome::Ok,
            Duration::from_micros(300),
        );
        m.count(Protocol::Rtpp, "malformed", Outcome::Invalid);
        m.rejected(Protocol::Grpc, Rejection::RateLimited);
        let families = registry.gather();
        let names: Vec<&str> = families.iter().map(|f| f.name()).collect();
        assert_eq!(
            names,
            [
                "sluice_control_rejected_total",
                "sluice_control_request_duration_seconds",
                "sluice_control_requests_total",
                "sluice_control_retransmissions_total",
            ]
        );
        let requests = &families[2];
        assert_eq!(requests.get_metric().len(), 2);
        let rejected = &families[0];
        assert_eq!(rejected.get_metric().len(), 3, "pre-created series");
    }
}
