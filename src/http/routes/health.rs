//! Liveness, readiness and metrics: the operator's routes.

use actix_web::{web, HttpResponse};

use super::Resource;
use crate::http::error::ApiError;
use crate::http::state::AppState;
use crate::metrics::METRICS;
use actix_web::http::Method;

/// Registers `/healthz`; other methods get a JSON 405.
pub fn configure_liveness(cfg: &mut web::ServiceConfig) {
    cfg.service(Resource::new("/healthz").on(Method::GET, healthz).done());
}

/// Registers `/readyz`, and `/metrics` unless it has its own listener;
/// other methods get a JSON 405.
pub fn configure(cfg: &mut web::ServiceConfig, with_metrics: bool) {
    cfg.service(Resource::new("/readyz").on(Method::GET, readyz).done());
    if with_metrics {
        cfg.service(Resource::new("/metrics").on(Method::GET, metrics).done());
    }
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

/// Handles `GET /readyz`: 200 only when a JWT key set is loaded and the
/// store accepts a durable write now.
#[utoipa::path(
    get,
    path = "/readyz",
    tag = "health",
    operation_id = "readyz",
    summary = "Readiness: a JWT key set is loaded and storage accepts a durable write now",
    responses(
        (status = 200, description = "Always `ready`.", body = String, content_type = "text/plain"),
        (status = 503, description = "No JWT key set is loaded yet (the identity provider has not answered and no saved copy exists), or storage is not accepting writes.", body = crate::http::error::ErrorBody),
    ),
)]
pub async fn readyz(state: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    if !state.jwt.has_keys() {
        return Err(ApiError::KeysNotLoaded);
    }
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
