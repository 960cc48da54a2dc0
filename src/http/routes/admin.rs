//! App deprovisioning: `DELETE /api/agent-tokens/users/{user_id}` with the
//! admin secret of `admin.token_file`. Registered only when that key is
//! set; otherwise the path does not exist (404).
//!
//! The secret is compared in constant time ([`AdminSecret`]) and never logged.

use actix_web::http::header::AUTHORIZATION;
use actix_web::http::Method;
use actix_web::{web, HttpRequest, HttpResponse};

use super::Resource;
use crate::domain::admin::AdminSecret;
use crate::domain::user::UserId;
use crate::http::auth::parse_bearer;
use crate::http::error::{no_store, ApiError, Operation};
use crate::http::state::app_state;
use crate::metrics::{TokenOperation, METRICS};
use crate::store::audit::Actor;

pub const USERS_PATH: &str = "/api/agent-tokens/users/{user_id}";

/// The route; call only when `admin.token_file` is set.
pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.service(
        Resource::new(USERS_PATH)
            .on(Method::DELETE, deprovision)
            .done(),
    );
}

/// Handles `DELETE /api/agent-tokens/users/{user_id}`.
#[utoipa::path(
    delete,
    path = "/api/agent-tokens/users/{user_id}",
    tag = "administration",
    operation_id = "deprovision_user",
    summary = "Revoke a user's agent token (application deprovisioning; idempotent)",
    description = "For the application, when it deletes or disables a user. Present only when the operator sets `admin.token_file`; otherwise this path answers 404. A user JWT or an agent token gets 401.",
    params(("user_id" = String, Path, description = "The user id, as the user's JWT carries it (percent-encoded).")),
    security(("admin_secret" = [])),
    responses(
        (status = 204, description = "Revoked (with any token in its grace window), or there was no token. No body."),
        (status = 401, description = "Not the admin secret: `invalid_token`.", body = crate::http::error::ErrorBody,
            headers(("WWW-Authenticate" = String, description = "An RFC 6750 Bearer challenge, realm `agent-tokens`."))),
        (status = 500, description = "Failed to revoke token.", body = crate::http::error::ErrorBody),
    )
)]
pub async fn deprovision(
    req: HttpRequest,
    user_id: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let state = app_state(&req)?;
    let secret: &AdminSecret = state.admin_secret.as_ref().ok_or(ApiError::NotFound)?;
    let presented = parse_bearer(req.headers().get(AUTHORIZATION))
        .map_err(|_| ApiError::AdminSecretRequired)?;
    if !secret.matches(presented) {
        METRICS.admin_action("deprovision", false);
        return Err(ApiError::AdminSecretRequired);
    }
    // An id no JWT could carry names no stored token: nothing to revoke.
    let Ok(user) = UserId::parse(&user_id) else {
        METRICS.admin_action("deprovision", true);
        return Ok(HttpResponse::NoContent().insert_header(no_store()).finish());
    };
    let audit = state.audit.context(&req, Actor::Admin, &state.rng);
    let removed = state
        .store
        .revoke_as(&user, state.clock.now(), &audit)
        .await
        .map_err(|e| {
            METRICS.admin_action("deprovision", false);
            ApiError::failed(Operation::Revoke, e)
        })?;
    METRICS.admin_action("deprovision", true);
    if removed {
        METRICS.token_operation(TokenOperation::Revoked);
        log::info!(
            "deprovisioned user {:?}: their agent token is revoked",
            user.as_str()
        );
    }
    Ok(HttpResponse::NoContent().insert_header(no_store()).finish())
}
