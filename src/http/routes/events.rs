//! The user's own audit trail: `GET /api/agent-tokens/me/events` (user JWT).

use actix_web::http::Method;
use actix_web::{web, HttpRequest, HttpResponse};
use serde::Serialize;

use super::Resource;
use crate::domain::clock::Timestamp;
use crate::http::auth::UserJwt;
use crate::http::error::{no_store, ApiError, Operation};
use crate::store::audit::AuditEvent;

pub const EVENTS_PATH: &str = "/api/agent-tokens/me/events";
/// Events in one answer: the newest ones.
pub const MAX_EVENTS: usize = 100;

pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.service(Resource::new(EVENTS_PATH).on(Method::GET, events).done());
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct EventsResponse {
    /// Newest first; at most 100, within the server's retention (`audit.retention_days`).
    pub events: Vec<UserEvent>,
}

/// One change to the user's token. Never a token: display prefixes only.
#[derive(Serialize, utoipa::ToSchema)]
pub struct UserEvent {
    /// `created`, `rotated`, `revoked`, `grace_ended` or `expired`.
    #[serde(rename = "type")]
    #[schema(examples("rotated"))]
    pub kind: &'static str,
    #[schema(value_type = String, format = DateTime)]
    pub at: Timestamp,
    #[schema(required = true, examples("sk_agt_1a2b3c4d..."))]
    pub token_prefix: Option<String>,
    /// A rotation's replaced token (or, for a revocation, the token still in its grace window).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub previous_prefix: Option<String>,
    /// `user`, `admin`, `leak_report` or `system`.
    #[schema(examples("user"))]
    pub actor: &'static str,
    /// The request that made the change (`X-Request-Id` when the caller sent one).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub request_id: Option<String>,
    /// The client address, only when the operator records addresses.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub address: Option<String>,
    /// For a leak report, where the reporter says the token was found.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
}

impl From<AuditEvent> for UserEvent {
    fn from(e: AuditEvent) -> Self {
        Self {
            kind: e.kind.as_str(),
            at: Timestamp(e.at),
            token_prefix: e.token_prefix,
            previous_prefix: e.previous_prefix,
            actor: e.actor.as_str(),
            request_id: e.request_id,
            address: e.address,
            detail: e.detail,
        }
    }
}

/// Handles `GET /api/agent-tokens/me/events`.
#[utoipa::path(
    get,
    path = "/api/agent-tokens/me/events",
    tag = "token management",
    operation_id = "get_token_events",
    summary = "The audit trail of the user's agent token, newest first",
    security(("user_jwt" = [])),
    responses(
        (status = 200, description = "The user's events, newest first (at most 100).", body = EventsResponse),
        super::tokens::ManagementRefusals,
        (status = 500, description = "Failed to fetch token status.", body = crate::http::error::ErrorBody),
    )
)]
async fn events(req: HttpRequest, UserJwt(user): UserJwt) -> Result<HttpResponse, ApiError> {
    let state = crate::http::state::app_state(&req)?;
    let events = state
        .store
        .events_of(&user, MAX_EVENTS)
        .await
        .map_err(|e| ApiError::failed(Operation::FetchStatus, e))?;
    Ok(HttpResponse::Ok()
        .insert_header(no_store())
        .json(EventsResponse {
            events: events.into_iter().map(UserEvent::from).collect(),
        }))
}
