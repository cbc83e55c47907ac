//! Prometheus metrics, all named `portcullis_*`.
//!
//! Counters on the hot path are resolved to concrete children once, so
//! counting a request is an atomic increment, not a label lookup.

use prometheus::{
    Encoder, Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, Opts, Registry,
    TextEncoder,
};

pub struct Metrics {
    pub registry: Registry,
    pub allowed: IntCounter,
    pub public: IntCounter,
    pub login_required: IntCounter,
    pub forbidden: IntCounter,
    pub rejected: IntCounter,
    pub gateway: IntCounter,
    pub status: IntCounterVec,
    pub logins: IntCounterVec,
    pub throttled: IntCounter,
    pub sessions_active: IntGauge,
    pub hash_queue: IntGauge,
    pub policy_reloads: IntCounterVec,
    pub policy_last_good: IntGauge,
    pub upstream_latency: Histogram,
    pub password_check: Histogram,
    pub upstream_errors: IntCounter,
    pub audit_dropped: IntGauge,
    pub access_dropped: IntGauge,
    /// Status counters resolved once: common codes, then classes.
    by_code: Vec<(u16, IntCounter)>,
    by_class: [IntCounter; 6],
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let registry = Registry::new();
        let requests = IntCounterVec::new(
            Opts::new("portcullis_requests_total", "Requests by access decision"),
            &["decision"],
        )
        .expect("static metric definition");
        let status = IntCounterVec::new(
            Opts::new("portcullis_responses_total", "Responses by status code"),
            &["status"],
        )
        .expect("static metric definition");
        let logins = IntCounterVec::new(
            Opts::new("portcullis_logins_total", "Login attempts by outcome"),
            &["outcome"],
        )
        .expect("static metric definition");
        let throttled = IntCounter::new(
            "portcullis_login_throttled_total",
            "Login attempts refused by throttling",
        )
        .expect("static metric definition");
        let sessions_active = IntGauge::new("portcullis_sessions_active", "Sessions in the store")
            .expect("static metric definition");
        let hash_queue = IntGauge::new(
            "portcullis_argon2_queue_depth",
            "Password checks queued or running",
        )
        .expect("static metric definition");
        let policy_reloads = IntCounterVec::new(
            Opts::new(
                "portcullis_policy_reloads_total",
                "Policy reloads by outcome",
            ),
            &["outcome"],
        )
        .expect("static metric definition");
        let policy_last_good = IntGauge::new(
            "portcullis_policy_last_good_timestamp_seconds",
            "Unix time of the last good policy load",
        )
        .expect("static metric definition");
        let upstream_latency = Histogram::with_opts(
            HistogramOpts::new(
                "portcullis_upstream_latency_seconds",
                "Time from request to upstream response header",
            )
            .buckets(vec![
                0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
                10.0,
            ]),
        )
        .expect("static metric definition");
        // Around argon2id's OWASP cost (~10-50 ms on one core); the top
        // buckets catch an overloaded or throttled machine.
        let password_check = Histogram::with_opts(
            HistogramOpts::new(
                "portcullis_password_check_seconds",
                "Time one password check or hash runs on a hashing thread",
            )
            .buckets(vec![
                0.005, 0.01, 0.015, 0.02, 0.03, 0.05, 0.075, 0.1, 0.25, 0.5, 1.0,
            ]),
        )
        .expect("static metric definition");
        let upstream_errors = IntCounter::new(
            "portcullis_upstream_errors_total",
            "Requests the upstream failed",
        )
        .expect("static metric definition");
        let audit_dropped = IntGauge::new(
            "portcullis_audit_dropped_total",
            "Audit events dropped because the writer fell behind",
        )
        .expect("static metric definition");
        let access_dropped = IntGauge::new(
            "portcullis_access_log_dropped_total",
            "Access log lines dropped because the log writer fell behind",
        )
        .expect("static metric definition");
        for c in [
            Box::new(access_dropped.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(requests.clone()),
            Box::new(status.clone()),
            Box::new(logins.clone()),
            Box::new(throttled.clone()),
            Box::new(sessions_active.clone()),
            Box::new(hash_queue.clone()),
            Box::new(policy_reloads.clone()),
            Box::new(policy_last_good.clone()),
            Box::new(upstream_latency.clone()),
            Box::new(password_check.clone()),
            Box::new(upstream_errors.clone()),
            Box::new(audit_dropped.clone()),
        ] {
            let _ = registry.register(c);
        }
        for o in ["success", "invalid_credentials", "throttled", "busy"] {
            logins.with_label_values(&[o]);
        }
        for o in ["ok", "refused"] {
            policy_reloads.with_label_values(&[o]);
        }
        const CODES: [u16; 17] = [
            200, 204, 301, 302, 303, 304, 400, 401, 403, 404, 405, 413, 415, 429, 502, 503, 504,
        ];
        let by_code = CODES
            .iter()
            .map(|c| (*c, status.with_label_values(&[&c.to_string()])))
            .collect();
        let by_class =
            ["0", "1xx", "2xx", "3xx", "4xx", "5xx"].map(|c| status.with_label_values(&[c]));
        Metrics {
            by_code,
            by_class,
            allowed: requests.with_label_values(&["allowed"]),
            public: requests.with_label_values(&["public"]),
            login_required: requests.with_label_values(&["login_required"]),
            forbidden: requests.with_label_values(&["forbidden"]),
            rejected: requests.with_label_values(&["bad_request"]),
            gateway: requests.with_label_values(&["gateway"]),
            registry,
            status,
            logins,
            throttled,
            sessions_active,
            hash_queue,
            policy_reloads,
            policy_last_good,
            upstream_latency,
            password_check,
            upstream_errors,
            audit_dropped,
            access_dropped,
        }
    }

    /// Counts a response status without a label lookup.
    pub fn count_status(&self, code: u16) {
        match self.by_code.iter().find(|(c, _)| *c == code) {
            Some((_, counter)) => counter.inc(),
            None => self.by_class[usize::from(code / 100).min(5)].inc(),
        }
    }

    pub fn render(&self) -> String {
        let mut buf = Vec::new();
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut buf);
        String::from_utf8(buf).unwrap_or_default()
    }
}
