//! The token-management API (user JWT): the product page's four endpoints.

use actix_web::http::header::ContentType;
use actix_web::web::Bytes;
use actix_web::{web, HttpRequest, HttpResponse};

use super::Resource;
use crate::http::error::no_store;
use actix_web::http::Method;
use serde::Serialize;

use crate::domain::clock::Timestamp;
use crate::domain::token::PlainToken;
use crate::http::auth::UserJwt;
use crate::http::error::{ApiError, Operation};
use crate::http::state::AppState;
use crate::metrics::{TokenOperation, METRICS};
use crate::store::audit::Actor;
use crate::store::records::{GetOrCreate, NewToken};

pub const ME_PATH: &str = "/api/agent-tokens/me";
pub const GET_OR_CREATE_PATH: &str = "/api/agent-tokens/me/get-or-create";

pub const ROTATE_MESSAGE: &str = "Store this token securely — it will not be shown again.";
pub const CREATED_MESSAGE: &str = "Token created. Store it securely — it will not be shown again.";
pub const EXISTS_MESSAGE: &str =
    "Token already exists. Rotate it from Settings if you need a new one.";

pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.service(
        Resource::new(ME_PATH)
            .on(Method::GET, status)
            .on(Method::POST, rotate)
            .on(Method::DELETE, revoke)
            .done(),
    )
    .service(
        Resource::new(GET_OR_CREATE_PATH)
            .on(Method::POST, get_or_create)
            .done(),
    );
}

/// The page's two fields, plus timestamps (RFC 3339 UTC, null when unknown).
#[derive(Debug, Serialize, utoipa::ToSchema)]
#[schema(
    description = "Whether the user has an agent token, its display prefix and timestamps (RFC 3339 UTC, null when unknown)."
)]
pub struct StatusResponse {
    pub has_token: bool,
    // Always sent (null when absent), so required and nullable.
    #[schema(required = true, examples("sk_agt_1a2b3c4d..."))]
    pub token_prefix: Option<String>,
    #[schema(required = true, value_type = Option<String>, format = DateTime)]
    pub created_at: Option<Timestamp>,
    #[schema(required = true, value_type = Option<String>, format = DateTime)]
    pub last_used_at: Option<Timestamp>,
    #[schema(required = true, value_type = Option<String>, format = DateTime)]
    pub expires_at: Option<Timestamp>,
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct RotateResponse {
    #[schema(pattern = "^sk_agt_[0-9a-f]{64}$")]
    pub token: String,
    pub token_prefix: String,
    pub message: &'static str,
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct GetOrCreateResponse {
    pub is_new: bool,
    #[schema(required = true, pattern = "^sk_agt_[0-9a-f]{64}$")]
    pub token: Option<String>,
    pub token_prefix: String,
    pub message: &'static str,
}

/// The refusals every management route shares (authentication, limits),
/// documented once for all four operations.
#[derive(utoipa::IntoResponses)]
#[allow(dead_code)] // Only its OpenAPI description is used.
pub(super) enum ManagementRefusals {
    /// Missing or invalid JWT, or an agent token: `error` is `missing_credentials`, `invalid_request`, `invalid_token` or `user_jwt_required`.
    #[response(
        status = 401,
        headers(("WWW-Authenticate" = String, description = "An RFC 6750 Bearer challenge, realm `agent-tokens`."))
    )]
    Unauthorized(crate::http::error::ErrorBody<'static>),
    /// A declared body over `limits.max_body_bytes`: `payload_too_large`.
    #[response(status = 413)]
    PayloadTooLarge(crate::http::error::ErrorBody<'static>),
    /// Over a rate limit: `rate_limited`. Changes (a create, rotate or revoke that changes something) are limited per user (`rate_limit.management_per_minute`, `rate_limit.management_burst`); a revoke is counted but never refused, and reads and no-op answers count nothing. Requests per client address are limited only when the operator sets `rate_limit.client_ip_header` or `rate_limit.per_address`. `rate_limit.management_per_minute = 0` turns both off.
    #[response(
        status = 429,
        headers(("Retry-After" = u64, description = "Seconds to wait before retrying (at least 1)."))
    )]
    RateLimited(crate::http::error::ErrorBody<'static>),
    /// Request headers over `limits.max_header_bytes`: `headers_too_large`.
    #[response(status = 431)]
    HeadersTooLarge(crate::http::error::ErrorBody<'static>),
}

fn fresh_token(state: &AppState, op: Operation) -> Result<(PlainToken, NewToken), ApiError> {
    let token = PlainToken::generate(&state.rng).map_err(|e| ApiError::failed(op, e))?;
    let new = NewToken::of(&token);
    Ok((token, new))
}

/// Handles `GET /api/agent-tokens/me`.
#[utoipa::path(
    get,
    path = "/api/agent-tokens/me",
    tag = "token management",
    operation_id = "get_token_status",
    summary = "Whether the user has an agent token (prefix and timestamps only)",
    security(("user_jwt" = [])),
    responses(
        (status = 200, description = "The token status; the full token is never returned here.", body = StatusResponse),
        ManagementRefusals,
        (status = 500, description = "Failed to fetch token status.", body = crate::http::error::ErrorBody),
    )
)]
async fn status(req: HttpRequest, UserJwt(user): UserJwt) -> Result<HttpResponse, ApiError> {
    let state = crate::http::state::app_state(&req)?;
    let key = user.as_str().as_bytes();
    let body = match state.answers.status(key) {
        Some(body) => body,
        None => {
            let ticket = state.answers.status_ticket();
            let record = state
                .store
                .get_with_last_use(&user)
                .await
                .map_err(|e| ApiError::failed(Operation::FetchStatus, e))?;
            let response = match record {
                Some(r) => StatusResponse {
                    has_token: true,
                    created_at: Some(Timestamp(r.created_at)),
                    last_used_at: r.last_used_at.map(Timestamp),
                    expires_at: state.policy.expires_at(r.created_at).map(Timestamp),
                    token_prefix: Some(r.prefix),
                },
                None => StatusResponse {
                    has_token: false,
                    token_prefix: None,
                    created_at: None,
                    last_used_at: None,
                    expires_at: None,
                },
            };
            let body = serde_json::to_vec(&response)
                .map_err(|e| ApiError::failed(Operation::FetchStatus, e))?;
            state.answers.remember_status(ticket, key, &body);
            Bytes::from(body)
        }
    };
    Ok(HttpResponse::Ok()
        .insert_header(no_store())
        .content_type(ContentType::json())
        .body(body))
}

/// Handles `POST /api/agent-tokens/me`: generate or rotate.
#[utoipa::path(
    post,
    path = "/api/agent-tokens/me",
    tag = "token management",
    operation_id = "rotate_token",
    summary = "Generate or rotate the agent token (shown once)",
    security(("user_jwt" = [])),
    responses(
        (status = 200, description = "The new token, shown only in this answer.", body = RotateResponse),
        ManagementRefusals,
        (status = 500, description = "Failed to store agent token.", body = crate::http::error::ErrorBody),
    )
)]
async fn rotate(
    req: HttpRequest,
    UserJwt(user): UserJwt,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    // Every rotate changes something (it creates or replaces).
    let reservation = state.limits.reserve_change(&user)?;
    let (token, new) = fresh_token(&state, Operation::StoreToken)?;
    let audit = state.audit.context(&req, Actor::User, &state.rng);
    let (_, replaced) = state
        .store
        .rotate_as(
            &user,
            &new,
            state.clock.now(),
            state.policy.rotation_grace_secs,
            &audit,
        )
        .await
        .map_err(|e| ApiError::failed(Operation::StoreToken, e))?;
    reservation.commit();
    METRICS.token_operation(if replaced {
        TokenOperation::Rotated
    } else {
        TokenOperation::Created
    });
    // The user's id only, quoted (ids may hold spaces); the token never.
    if replaced {
        log::info!(
            "rotated the agent token of user {:?} (now {})",
            user.as_str(),
            new.prefix
        );
    } else {
        log::info!(
            "created an agent token for user {:?} ({})",
            user.as_str(),
            new.prefix
        );
    }
    Ok(HttpResponse::Ok()
        .insert_header(no_store())
        .json(RotateResponse {
            token: token.expose().to_owned(),
            token_prefix: new.prefix,
            message: ROTATE_MESSAGE,
        }))
}

/// Handles `POST /api/agent-tokens/me/get-or-create`.
#[utoipa::path(
    post,
    path = "/api/agent-tokens/me/get-or-create",
    tag = "token management",
    operation_id = "get_or_create_token",
    summary = "Return the existing token's prefix, or create a token",
    security(("user_jwt" = [])),
    responses(
        (status = 200, description = "`token` is set only when `is_new` is true.", body = GetOrCreateResponse),
        ManagementRefusals,
        (status = 500, description = "Failed to check or store token.", body = crate::http::error::ErrorBody),
    )
)]
async fn get_or_create(
    req: HttpRequest,
    UserJwt(user): UserJwt,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let op = Operation::CheckOrStore;
    // The common case is an existing token: answer it without generating one.
    if let Some(existing) = state
        .store
        .get(&user)
        .await
        .map_err(|e| ApiError::failed(op, e))?
    {
        state
            .store
            .wait_until_durable()
            .await
            .map_err(|e| ApiError::failed(op, e))?;
        return Ok(existing_answer(existing.prefix));
    }
    // It may create: reserve a change, given back if a token turns up.
    let reservation = state.limits.reserve_change(&user)?;
    let (token, new) = fresh_token(&state, op)?;
    let audit = state.audit.context(&req, Actor::User, &state.rng);
    let outcome = state
        .store
        .get_or_create_as(&user, &new, state.clock.now(), &audit)
        .await
        .map_err(|e| ApiError::failed(op, e))?;
    Ok(match outcome {
        GetOrCreate::Created(record) => {
            reservation.commit();
            METRICS.token_operation(TokenOperation::Created);
            log::info!(
                "created an agent token for user {:?} ({})",
                user.as_str(),
                record.prefix
            );
            HttpResponse::Ok()
                .insert_header(no_store())
                .json(GetOrCreateResponse {
                    is_new: true,
                    token: Some(token.expose().to_owned()),
                    token_prefix: record.prefix,
                    message: CREATED_MESSAGE,
                })
        }
        GetOrCreate::Existing(record) => existing_answer(record.prefix),
    })
}

fn existing_answer(token_prefix: String) -> HttpResponse {
    HttpResponse::Ok()
        .insert_header(no_store())
        .json(GetOrCreateResponse {
            is_new: false,
            token: None,
            token_prefix,
            message: EXISTS_MESSAGE,
        })
}

/// Handles `DELETE /api/agent-tokens/me`: 204 whether or not a token existed.
#[utoipa::path(
    delete,
    path = "/api/agent-tokens/me",
    tag = "token management",
    operation_id = "revoke_token",
    summary = "Revoke the agent token (idempotent)",
    security(("user_jwt" = [])),
    responses(
        (status = 204, description = "Revoked, or there was no token. No body."),
        ManagementRefusals,
        (status = 500, description = "Failed to revoke token.", body = crate::http::error::ErrorBody),
    )
)]
async fn revoke(
    req: HttpRequest,
    UserJwt(user): UserJwt,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let audit = state.audit.context(&req, Actor::User, &state.rng);
    let removed = state
        .store
        .revoke_as(&user, state.clock.now(), &audit)
        .await
        .map_err(|e| ApiError::failed(Operation::Revoke, e))?;
    if removed {
        // Counted after the fact and never refused: see `charge_change`.
        state.limits.charge_change(&user);
        METRICS.token_operation(TokenOperation::Revoked);
        log::info!("revoked the agent token of user {:?}", user.as_str());
    }
    Ok(HttpResponse::NoContent().insert_header(no_store()).finish())
}
