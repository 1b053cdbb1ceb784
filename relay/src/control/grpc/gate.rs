//! Admission for sluice.v1 calls: the optional static bearer token and the per-client request
//! rate limit. Health and reflection stay open so probes and tooling work without credentials.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use tonic::{Request, Status};

use crate::metrics::{ControlMetrics, Protocol, Rejection};

/// Idle clients forgotten once the table holds this many (bounds memory under a scan).
const MAX_TRACKED_CLIENTS: usize = 10_000;

#[derive(Clone, Default)]
pub struct Gate {
    token: Option<Arc<str>>,
    limiter: Option<Arc<RateLimiter>>,
    metrics: ControlMetrics,
}

impl Gate {
    pub fn new(token: Option<String>, requests_per_second: u32) -> Gate {
        Gate {
            token: token.map(Arc::from),
            limiter: (requests_per_second > 0)
                .then(|| Arc::new(RateLimiter::new(requests_per_second))),
            metrics: ControlMetrics::default(),
        }
    }

    /// Counts rejections into `metrics` (the daemon's registered set).
    pub fn with_metrics(mut self, metrics: ControlMetrics) -> Gate {
        self.metrics = metrics;
        self
    }

    pub fn check<T>(&self, request: &Request<T>) -> Result<(), Status> {
        if let Some(token) = &self.token {
            let presented = request
                .metadata()
                .get("authorization")
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.strip_prefix("Bearer "));
            if !presented.is_some_and(|p| constant_time_eq(p.as_bytes(), token.as_bytes())) {
                self.metrics
                    .rejected(Protocol::Grpc, Rejection::Unauthenticated);
                return Err(Status::unauthenticated("missing or invalid bearer token"));
            }
        }
        if let Some(limiter) = &self.limiter {
            let client = request
                .remote_addr()
                .map_or(IpAddr::from([0, 0, 0, 0]), |a| a.ip());
            if !limiter.allow(client, Instant::now()) {
                self.metrics
                    .rejected(Protocol::Grpc, Rejection::RateLimited);
                return Err(Status::resource_exhausted(format!(
                    "rate limit: {} requests per second per client",
                    limiter.rate
                )));
            }
        }
        Ok(())
    }
}

impl tonic::service::Interceptor for Gate {
    fn call(&mut self, request: Request<()>) -> Result<Request<()>, Status> {
        self.check(&request)?;
        Ok(request)
    }
}

/// Token bucket per client address: bursts up to one second's worth, refilled continuously.
pub struct RateLimiter {
    rate: u32,
    buckets: Mutex<HashMap<IpAddr, (f64, Instant)>>,
}

impl RateLimiter {
    pub fn new(rate: u32) -> RateLimiter {
        RateLimiter {
            rate,
            buckets: Mutex::new(HashMap::new()),
        }
    }

    pub fn allow(&self, client: IpAddr, now: Instant) -> bool {
        let rate = f64::from(self.rate);
        let mut buckets = self.buckets.lock().unwrap_or_else(|p| p.into_inner());
        if buckets.len() >= MAX_TRACKED_CLIENTS && !buckets.contains_key(&client) {
            // Full buckets are indistinguishable from new ones: forget those.
            buckets.retain(|_, (tokens, at)| {
                *tokens + now.saturating_duration_since(*at).as_secs_f64() * rate < rate
            });
        }
        let (tokens, at) = buckets.entry(client).or_insert((rate, now));
        *tokens = (*tokens + now.saturating_duration_since(*at).as_secs_f64() * rate).min(rate);
        *at = now;
        if *tokens >= 1.0 {
            *tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn token_is_required_when_set() {
        let gate = Gate::new(Some("s3cret".into()), 0);
        let mut ok = Request::new(());
        ok.metadata_mut()
            .insert("authorization", "Bearer s3cret".parse().unwrap());
        assert!(gate.check(&ok).is_ok());
        let mut wrong = Request::new(());
        wrong
            .metadata_mut()
            .insert("authorization", "Bearer s3cres".parse().unwrap());
        assert_eq!(
            gate.check(&wrong).unwrap_err().code(),
            tonic::Code::Unauthenticated
        );
        assert_eq!(
            gate.check(&Request::new(())).unwrap_err().code(),
            tonic::Code::Unauthenticated
        );
        assert!(Gate::new(None, 0).check(&Request::new(())).is_ok());
    }

    #[test]
    fn rate_limit_per_client_with_refill() {
        let limiter = RateLimiter::new(5);
        let (a, b) = (IpAddr::from([127, 0, 0, 1]), IpAddr::from([127, 0, 0, 2]));
        let t0 = Instant::now();
        assert_eq!((0..10).filter(|_| limiter.allow(a, t0)).count(), 5, "burst");
        assert!(limiter.allow(b, t0), "other clients unaffected");
        assert!(
            !limiter.allow(a, t0 + Duration::from_millis(100)),
            "0.5 token"
        );
        assert!(
            limiter.allow(a, t0 + Duration::from_millis(200)),
            "refilled"
        );
    }

    #[test]
    fn constant_time_compare() {
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abc", b"abd"));
        assert!(!constant_time_eq(b"abc", b"ab"));
    }
}
