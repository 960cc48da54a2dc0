//! HTTP routes, one file per area. Handlers extract, call the store, map.

pub mod docs;
pub mod health;
pub mod tokens;
pub mod verify;

use actix_web::{web, HttpRequest, HttpResponse};

use crate::http::error::ApiError;

/// Registers every route. The router tries resources in this order, so the
/// ones called on every request come first: liveness probes, verify (what
/// gateways call for each request they pass), then the management routes.
/// `/metrics` is left out when `server.metrics_bind` gives it a private
/// listener (see [`configure_private`]).
pub fn configure(cfg: &mut web::ServiceConfig, with_metrics: bool) {
    health::configure_liveness(cfg);
    verify::configure(cfg);
    tokens::configure(cfg);
    health::configure(cfg, with_metrics);
    docs::configure(cfg);
}

/// The routes of the private `server.metrics_bind` listener: metrics and
/// the health probes, nothing a user or agent calls.
pub fn configure_private(cfg: &mut web::ServiceConfig) {
    health::configure_liveness(cfg);
    health::configure(cfg, true);
}

/// The JSON 405 for a known path with an unsupported method.
pub async fn method_not_allowed(req: HttpRequest) -> Result<HttpResponse, ApiError> {
    let allow = match req.match_pattern().as_deref() {
        Some("/api/agent-tokens/me") => "GET, POST, DELETE",
        Some("/api/agent-tokens/me/get-or-create") => "POST",
        Some("/api/agent-tokens/verify") => "GET, HEAD",
        _ => "GET",
    };
    Err(ApiError::MethodNotAllowed { allow })
}

/// The JSON 404 for every unknown path.
pub async fn not_found() -> Result<HttpResponse, ApiError> {
    Err(ApiError::NotFound)
}
