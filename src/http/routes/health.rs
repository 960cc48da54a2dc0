//! Liveness, readiness and metrics: the operator's routes.

use actix_web::{web, HttpResponse};

use crate::http::error::ApiError;
use crate::http::state::AppState;
use crate::metrics::METRICS;

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
