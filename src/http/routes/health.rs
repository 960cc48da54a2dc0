//! Liveness, readiness and metrics: the operator's routes.

use std::time::{Duration, Instant};

use actix_web::{web, HttpResponse};

use crate::http::app::AppState;
use crate::http::error::ApiError;
use crate::metrics::METRICS;
use crate::store::live::LiveStore;
use crate::store::StoreError;

/// How long a successful durable-write probe answers for `/readyz`.
const PROBE_REUSE: Duration = Duration::from_secs(1);

/// `/readyz` needs no credential: a flood of probes must not become a
/// flood of disk syncs. A success is reused for [`PROBE_REUSE`]; a failed
/// store answers not-ready at once, without a probe.
#[derive(Debug, Default)]
pub struct Readiness {
    /// When the last probe succeeded; callers queue here while one probes.
    last_success: tokio::sync::Mutex<Option<Instant>>,
}

impl Readiness {
    pub async fn check(&self, store: &LiveStore, now: u64) -> Result<(), StoreError> {
        if store.is_failed() {
            return Err(StoreError::Recovering);
        }
        let mut last = self.last_success.lock().await;
        if last.is_some_and(|at| at.elapsed() < PROBE_REUSE) {
            return Ok(());
        }
        store.probe_write(now).await?;
        *last = Some(Instant::now());
        Ok(())
    }
}

/// Registers `/healthz`; other methods get a JSON 405.
pub fn configure_liveness(cfg: &mut web::ServiceConfig) {
    register(cfg, "/healthz", web::get().to(healthz));
}

/// Registers `/readyz`, and `/metrics` unless it has its own listener;
/// other methods get a JSON 405.
pub fn configure(cfg: &mut web::ServiceConfig, with_metrics: bool) {
    register(cfg, "/readyz", web::get().to(readyz));
    if with_metrics {
        register(cfg, "/metrics", web::get().to(metrics));
    }
}

fn register(cfg: &mut web::ServiceConfig, path: &'static str, handler: actix_web::Route) {
    cfg.service(
        web::resource(path)
            .name(path)
            .route(handler)
            .default_service(web::to(super::method_not_allowed)),
    );
}

/// Handles `GET /healthz`.
#[utoipa::path(
    get,
    path = "/healthz",
    tag = "health",
    operation_id = "healthz",
    summary = "Liveness: the process answers (storage is not touched)",
    responses((status = 200, description = "Always `ok`.", body = String, content_type = "text/plain")),
)]
pub async fn healthz() -> HttpResponse {
    HttpResponse::Ok()
        .content_type("text/plain; charset=utf-8")
        .body("ok")
}

/// Handles `GET /readyz`: 200 only when the store accepts a durable write now.
#[utoipa::path(
    get,
    path = "/readyz",
    tag = "health",
    operation_id = "readyz",
    summary = "Readiness: storage accepts a durable write now",
    responses(
        (status = 200, description = "Always `ready`.", body = String, content_type = "text/plain"),
        (status = 503, description = "Storage is not accepting writes.", body = crate::http::error::ErrorBody),
    ),
)]
pub async fn readyz(state: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    state
        .readiness
        .check(&state.store, state.clock.now())
        .await
        .map_err(ApiError::NotReady)?;
    Ok(HttpResponse::Ok()
        .content_type("text/plain; charset=utf-8")
        .body("ready"))
}

/// Handles `GET /metrics`: Prometheus text format. Bind the server privately
/// (or filter this path at the gateway): it reveals traffic volumes.
#[utoipa::path(
    get,
    path = "/metrics",
    tag = "health",
    operation_id = "metrics",
    summary = "Metrics in the Prometheus text format",
    responses(
        (status = 200, description = "Prometheus text exposition format 0.0.4.", body = String, content_type = "text/plain"),
        (status = 500, description = "Internal server error.", body = crate::http::error::ErrorBody),
    ),
)]
pub async fn metrics(state: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    let (bytes, background_jobs) = state.store.storage_state();
    METRICS.storage_state(bytes, background_jobs);
    let body = METRICS
        .render()
        .map_err(|_| ApiError::Internal("cannot render metrics"))?;
    Ok(HttpResponse::Ok()
        .content_type("text/plain; version=0.0.4; charset=utf-8")
        .body(body))
}
