//! The token-management API (user JWT): the product page's four endpoints.

use actix_web::http::header::{CacheControl, CacheDirective};
use actix_web::{web, HttpResponse};
use serde::Serialize;

use crate::app::AppState;
use crate::auth::UserJwt;
use crate::clock::rfc3339;
use crate::error::{ApiError, Operation};
use crate::store::{GetOrCreate, NewToken};
use crate::token::PlainToken;

pub const BASE: &str = "/api/agent-tokens";

pub const ROTATE_MESSAGE: &str = "Store this token securely — it will not be shown again.";
pub const CREATED_MESSAGE: &str = "Token created. Store it securely — it will not be shown again.";
pub const EXISTS_MESSAGE: &str =
    "Token already exists. Rotate it from Settings if you need a new one.";

pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.service(
        web::resource(format!("{BASE}/me"))
            .route(web::get().to(status))
            .route(web::post().to(rotate))
            .route(web::delete().to(revoke))
            .default_service(web::to(super::method_not_allowed)),
    )
    .service(
        web::resource(format!("{BASE}/me/get-or-create"))
            .route(web::post().to(get_or_create))
            .default_service(web::to(super::method_not_allowed)),
    );
}

/// The page's two fields, plus timestamps (RFC 3339 UTC, null when unknown).
#[derive(Debug, Serialize)]
pub struct StatusResponse {
    pub has_token: bool,
    pub token_prefix: Option<String>,
    pub created_at: Option<String>,
    pub last_used_at: Option<String>,
    pub expires_at: Option<String>,
}

#[derive(Serialize)]
pub struct RotateResponse {
    pub token: String,
    pub token_prefix: String,
    pub message: &'static str,
}

#[derive(Serialize)]
pub struct GetOrCreateResponse {
    pub is_new: bool,
    pub token: Option<String>,
    pub token_prefix: String,
    pub message: &'static str,
}

/// Token answers must never be cached by a proxy or browser (RFC 6749 §5.1).
fn no_store() -> CacheControl {
    CacheControl(vec![CacheDirective::NoStore])
}

fn fresh_token(state: &AppState, op: Operation) -> Result<(PlainToken, NewToken), ApiError> {
    let token = PlainToken::generate(&state.rng).map_err(|e| ApiError::failed(op, e))?;
    let new = NewToken {
        hash: token.hash(),
        prefix: token.display_prefix(),
    };
    Ok((token, new))
}

/// Handles `GET /api/agent-tokens/me`.
async fn status(
    UserJwt(user): UserJwt,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let record = state
        .store
        .get(&user)
        .map_err(|e| ApiError::failed(Operation::FetchStatus, e))?;
    let response = match record {
        Some(r) => StatusResponse {
            has_token: true,
            created_at: Some(rfc3339(r.created_at)),
            last_used_at: r.last_used_at.map(rfc3339),
            expires_at: state.policy.expires_at(r.created_at).map(rfc3339),
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
    Ok(HttpResponse::Ok().insert_header(no_store()).json(response))
}

/// Handles `POST /api/agent-tokens/me`: generate or rotate.
async fn rotate(
    UserJwt(user): UserJwt,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let (token, new) = fresh_token(&state, Operation::StoreToken)?;
    state
        .store
        .rotate(
            &user,
            &new,
            state.clock.now(),
            state.policy.rotation_grace_secs,
        )
        .await
        .map_err(|e| ApiError::failed(Operation::StoreToken, e))?;
    log::info!(
        "rotated the agent token of user {user:?} (now {})",
        new.prefix
    );
    Ok(HttpResponse::Ok()
        .insert_header(no_store())
        .json(RotateResponse {
            token: token.expose().to_owned(),
            token_prefix: new.prefix,
            message: ROTATE_MESSAGE,
        }))
}

/// Handles `POST /api/agent-tokens/me/get-or-create`.
async fn get_or_create(
    UserJwt(user): UserJwt,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let op = Operation::CheckOrStore;
    // The common case is an existing token: answer it without generating one.
    if let Some(existing) = state
        .store
        .get(&user)
        .map_err(|e| ApiError::failed(op, e))?
    {
        state
            .store
            .wait_until_durable()
            .await
            .map_err(|e| ApiError::failed(op, e))?;
        return Ok(existing_answer(existing.prefix));
    }
    let (token, new) = fresh_token(&state, op)?;
    let outcome = state
        .store
        .get_or_create(&user, &new, state.clock.now())
        .await
        .map_err(|e| ApiError::failed(op, e))?;
    Ok(match outcome {
        GetOrCreate::Created(record) => {
            log::info!(
                "created an agent token for user {user:?} ({})",
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
async fn revoke(
    UserJwt(user): UserJwt,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let removed = state
        .store
        .revoke(&user)
        .await
        .map_err(|e| ApiError::failed(Operation::Revoke, e))?;
    if removed {
        log::info!("revoked the agent token of user {user:?}");
    }
    Ok(HttpResponse::NoContent().insert_header(no_store()).finish())
}
