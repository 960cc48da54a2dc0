//! Prometheus metrics (the `prometheus` crate, text format 0.0.4).
//!
//! One process-wide registry: the flusher thread, the store and the HTTP
//! middleware all record into it, and `GET /metrics` renders it. Labels are
//! bounded: routes are the app's route patterns (or `unmatched`), never raw
//! paths, and no label ever carries a user id or a credential.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::LazyLock;
use std::time::Duration;

use actix_web::http::Method;
use prometheus::{
    register_histogram_vec_with_registry, register_histogram_with_registry,
    register_int_counter_vec_with_registry, register_int_counter_with_registry,
    register_int_gauge_with_registry, Encoder, Histogram, HistogramVec, IntCounter, IntCounterVec,
    IntGauge, Registry, TextEncoder,
};

pub struct Metrics {
    registry: Registry,
    /// One resolved counter per operation, indexed by `TokenOperation as usize`:
    /// no label lookup on the verify hot path.
    operation_counters: Vec<IntCounter>,
    /// Where operations are counted first: one row per thread slot, so the
    /// workers never write the same cache line (an atomic every worker
    /// increments on every verify bounces between cores). Folded into
    /// `operation_counters` when the metrics are rendered.
    operation_rows: Box<[OperationRow]>,
    /// What has been folded so far, per operation.
    operations_folded: std::sync::Mutex<[u64; OPERATIONS]>,
    pub http_requests: IntCounterVec,
    pub http_duration: HistogramVec,
    pub token_operations: IntCounterVec,
    pub flush_duration: Histogram,
    pub flush_batch: Histogram,
    pub storage_bytes: IntGauge,
    pub storage_background: IntGauge,
    /// Live tokens that stop verifying within 7 days, as last counted.
    pub tokens_expiring: IntGauge,
    pub audit_events: IntCounter,
    pub admin_actions: IntCounterVec,
    /// Fetches of an identity provider's keys, by `result`.
    pub idp_fetches: IntCounterVec,
    pub jwt_keys_loaded: IntGauge,
    jwt_key_set_age: IntGauge,
    /// When the key set in use was loaded or fetched (Unix seconds; 0: none).
    jwt_key_set_since: AtomicU64,
}

/// Token operations counted in `agent_tokens_token_operations_total{operation}`.
#[derive(Debug, Clone, Copy)]
#[repr(usize)]
pub enum TokenOperation {
    Created,
    Rotated,
    Revoked,
    VerifyOk,
    VerifyFailed,
    IntrospectActive,
    IntrospectInactive,
}

const OPERATIONS: usize = 7;

/// One thread slot's operation counts, alone on its cache lines.
#[repr(align(128))]
#[derive(Default)]
struct OperationRow([AtomicU64; OPERATIONS]);

/// How many rows: threads share a row when there are more of them.
const ROWS: usize = 16;

static NEXT_ROW: AtomicUsize = AtomicUsize::new(0);

thread_local! {
    static ROW: usize = NEXT_ROW.fetch_add(1, Ordering::Relaxed) % ROWS;
}

impl TokenOperation {
    const ALL: [TokenOperation; OPERATIONS] = [
        TokenOperation::Created,
        TokenOperation::Rotated,
        TokenOperation::Revoked,
        TokenOperation::VerifyOk,
        TokenOperation::VerifyFailed,
        TokenOperation::IntrospectActive,
        TokenOperation::IntrospectInactive,
    ];

    fn label(self) -> &'static str {
        match self {
            TokenOperation::Created => "created",
            TokenOperation::Rotated => "rotated",
            TokenOperation::Revoked => "revoked",
            TokenOperation::VerifyOk => "verify_ok",
            TokenOperation::VerifyFailed => "verify_failed",
            TokenOperation::IntrospectActive => "introspect_active",
            TokenOperation::IntrospectInactive => "introspect_inactive",
        }
    }
}

pub static METRICS: LazyLock<Metrics> = LazyLock::new(Metrics::new);

impl Metrics {
    fn new() -> Self {
        // Registration only fails on duplicate or malformed names, which
        // are fixed at compile time here and covered by tests.
        let registry = Registry::new_custom(Some("agent_tokens".into()), None)
            .unwrap_or_else(|_| Registry::new());
        let latency = vec![
            0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
            2.5,
        ];
        let mut metrics = Metrics {
            operation_counters: Vec::new(),
            operation_rows: (0..ROWS).map(|_| OperationRow::default()).collect(),
            operations_folded: std::sync::Mutex::new([0; OPERATIONS]),
            http_requests: register_int_counter_vec_with_registry!(
                "http_requests_total",
                "HTTP requests by route pattern, method and status.",
                &["route", "method", "status"],
                registry
            )
            .expect("metric registers"),
            http_duration: register_histogram_vec_with_registry!(
                "http_request_duration_seconds",
                "HTTP request latency by route pattern and method.",
                &["route", "method"],
                latency.clone(),
                registry
            )
            .expect("metric registers"),
            token_operations: register_int_counter_vec_with_registry!(
                "token_operations_total",
                "Token operations: created, rotated, revoked, verify_ok, verify_failed, introspect_active, introspect_inactive.",
                &["operation"],
                registry
            )
            .expect("metric registers"),
            flush_duration: register_histogram_with_registry!(
                "storage_flush_duration_seconds",
                "Time of one durable flush (the batch written to the journal plus fdatasync).",
                latency,
                registry
            )
            .expect("metric registers"),
            flush_batch: register_histogram_with_registry!(
                "storage_flush_waiters",
                "Requests acknowledged by one durable flush (group commit).",
                vec![0.0, 1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0],
                registry
            )
            .expect("metric registers"),
            storage_bytes: register_int_gauge_with_registry!(
                "storage_disk_bytes",
                "What the store takes on disk (tables and journal), in bytes.",
                registry
            )
            .expect("metric registers"),
            storage_background: register_int_gauge_with_registry!(
                "storage_background_jobs",
                "Memtable flushes waiting and table merges running in the store's background.",
                registry
            )
            .expect("metric registers"),
            tokens_expiring: register_int_gauge_with_registry!(
                "tokens_expiring_within_7d",
                "Live tokens (current or in a rotation's grace window) that stop verifying within 7 days, counted in the background every few minutes.",
                registry
            )
            .expect("metric registers"),
            audit_events: register_int_counter_with_registry!(
                "audit_events_written_total",
                "Audit events stored (each in the write batch of the change it describes).",
                registry
            )
            .expect("metric registers"),
            admin_actions: register_int_counter_vec_with_registry!(
                "admin_actions_total",
                "Operator actions by verb (admin socket and the deprovisioning route) and outcome (ok, error).",
                &["action", "outcome"],
                registry
            )
            .expect("metric registers"),
            idp_fetches: register_int_counter_vec_with_registry!(
                "idp_key_fetches_total",
                "Fetches of the identity provider's keys by result: ok, timeout, network_error, http_error, too_large, invalid, issuer_mismatch.",
                &["result"],
                registry
            )
            .expect("metric registers"),
            jwt_keys_loaded: register_int_gauge_with_registry!(
                "jwt_keys_loaded",
                "User JWT verification keys in use.",
                registry
            )
            .expect("metric registers"),
            jwt_key_set_age: register_int_gauge_with_registry!(
                "jwt_key_set_age_seconds",
                "Seconds since the key set in use was loaded or fetched from the identity provider; -1 while none is loaded.",
                registry
            )
            .expect("metric registers"),
            jwt_key_set_since: AtomicU64::new(0),
            registry,
        };
        // Present from the start, so rate() works before the first event.
        metrics.operation_counters = TokenOperation::ALL
            .iter()
            .map(|op| metrics.token_operations.with_label_values(&[op.label()]))
            .collect();
        metrics
    }

    pub fn token_operation(&self, op: TokenOperation) {
        let row = ROW.with(|row| *row);
        if let Some(count) = self
            .operation_rows
            .get(row)
            .and_then(|r| r.0.get(op as usize))
        {
            count.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Adds what the rows counted since the last fold to the exported counters.
    fn fold_operations(&self) {
        let mut folded = self
            .operations_folded
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        for (op, counter) in self.operation_counters.iter().enumerate() {
            let total: u64 = self
                .operation_rows
                .iter()
                .map(|row| row.0[op].load(Ordering::Relaxed))
                .sum();
            counter.inc_by(total.saturating_sub(folded[op]));
            folded[op] = total;
        }
    }

    pub fn audit_events_written(&self, n: usize) {
        if n > 0 {
            self.audit_events.inc_by(n as u64);
        }
    }

    /// Counts an operator action: `action` is a fixed verb name, never input.
    pub fn admin_action(&self, action: &'static str, ok: bool) {
        self.admin_actions
            .with_label_values(&[action, if ok { "ok" } else { "error" }])
            .inc();
    }

    pub fn storage_state(&self, bytes: u64, background_jobs: usize) {
        self.storage_bytes
            .set(i64::try_from(bytes).unwrap_or(i64::MAX));
        self.storage_background
            .set(i64::try_from(background_jobs).unwrap_or(i64::MAX));
    }

    /// A key set of `keys` keys, loaded or fetched at `since` (Unix seconds).
    pub fn jwt_key_set(&self, keys: usize, since: u64) {
        self.jwt_keys_loaded
            .set(i64::try_from(keys).unwrap_or(i64::MAX));
        self.jwt_key_set_since.store(since, Ordering::Relaxed);
    }

    pub fn observe_flush(&self, took: Duration, waiters: usize) {
        self.flush_duration.observe(took.as_secs_f64());
        self.flush_batch.observe(waiters as f64);
    }

    pub fn observe_request(&self, route: &str, method: &Method, status: u16, took: Duration) {
        let method = method_label(method);
        let status_buf = itoa_status(status);
        let status = std::str::from_utf8(&status_buf).unwrap_or("000");
        self.http_requests
            .with_label_values(&[route, method, status])
            .inc();
        self.http_duration
            .with_label_values(&[route, method])
            .observe(took.as_secs_f64());
    }

    /// The registry in Prometheus text format.
    pub fn render(&self) -> Result<String, prometheus::Error> {
        self.fold_operations();
        let since = self.jwt_key_set_since.load(Ordering::Relaxed);
        let age = match since {
            0 => -1,
            since => std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |now| {
                    i64::try_from(now.as_secs().saturating_sub(since)).unwrap_or(i64::MAX)
                }),
        };
        self.jwt_key_set_age.set(age);
        let mut out = Vec::with_capacity(8 * 1024);
        TextEncoder::new().encode(&self.registry.gather(), &mut out)?;
        String::from_utf8(out).map_err(|e| prometheus::Error::Msg(e.to_string()))
    }
}

/// The `method` label: one of the methods HTTP defines, or `other`. A
/// client picks the method freely (any token of letters will do), and each
/// new label value would be a new series kept for the life of the process.
fn method_label(method: &Method) -> &'static str {
    match *method {
        Method::GET => "GET",
        Method::HEAD => "HEAD",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::DELETE => "DELETE",
        Method::PATCH => "PATCH",
        Method::OPTIONS => "OPTIONS",
        Method::CONNECT => "CONNECT",
        Method::TRACE => "TRACE",
        _ => "other",
    }
}

/// Three ASCII digits without allocating (HTTP statuses are 100–999).
fn itoa_status(status: u16) -> [u8; 3] {
    let s = status.clamp(100, 999);
    [
        b'0' + (s / 100) as u8,
        b'0' + (s / 10 % 10) as u8,
        b'0' + (s % 10) as u8,
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_render_as_three_digits() {
        assert_eq!(&itoa_status(200), b"200");
        assert_eq!(&itoa_status(401), b"401");
        assert_eq!(&itoa_status(5), b"100");
    }

    #[test]
    fn operations_counted_on_any_thread_reach_the_exported_counter() {
        let read = || {
            METRICS.render().unwrap();
            METRICS.operation_counters[TokenOperation::Revoked as usize].get()
        };
        let before = read();
        std::thread::scope(|s| {
            for _ in 0..20 {
                s.spawn(|| {
                    for _ in 0..50 {
                        METRICS.token_operation(TokenOperation::Revoked);
                    }
                });
            }
        });
        // Other tests may count revocations too, never fewer than ours.
        assert!(read() >= before + 1000);
    }

    #[test]
    fn every_metric_is_prefixed_and_renders() {
        METRICS.observe_request("/healthz", &Method::GET, 200, Duration::from_micros(50));
        METRICS.observe_flush(Duration::from_micros(150), 3);
        let text = METRICS.render().unwrap();
        for name in [
            "agent_tokens_http_requests_total",
            "agent_tokens_http_request_duration_seconds_bucket",
            "agent_tokens_token_operations_total",
            "agent_tokens_storage_flush_duration_seconds_count",
            "agent_tokens_storage_flush_waiters_sum",
            "agent_tokens_audit_events_written_total",
        ] {
            assert!(text.contains(name), "{name} missing from\n{text}");
        }
    }
}
