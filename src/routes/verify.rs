//! The verify route for gateways (nginx `auth_request`, Traefik `forwardAuth`,
//! Caddy `forward_auth`) and APIs. Answers 200 for a live agent token and 401
//! for anything else, never another 4xx. Checks the checksum before any
//! lookup, then one index read; no cache, so a revoked or rotated-out token
//! fails on the very next request.

use actix_web::http::header::{CacheControl, CacheDirective, HeaderName, HeaderValue};
use actix_web::{web, HttpRequest, HttpResponse};
use serde::Serialize;

use crate::app::AppState;
use crate::auth::bearer_credential;
use crate::clock::rfc3339;
use crate::error::{ApiError, Operation, VerifyRefusal};
use crate::policy::needs_touch;
use crate::token::{looks_like_agent_token, TokenHash};

use super::tokens::BASE;

/// The header carrying the verified user id to the upstream.
pub const USER_ID_HEADER: HeaderName = HeaderName::from_static("x-agent-user-id");

pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.service(
        web::resource(format!("{BASE}/verify"))
            .route(web::get().to(verify))
            .route(web::head().to(verify))
            .default_service(web::to(super::method_not_allowed)),
    );
}

#[derive(Debug, Serialize)]
pub struct ActiveResponse<'a> {
    pub active: bool,
    pub user_id: &'a str,
    pub token_prefix: &'a str,
    pub created_at: String,
    pub expires_at: Option<String>,
}

/// Handles `GET` and `HEAD /api/agent-tokens/verify` (HEAD: same status and
/// headers, no body, which lets nginx keep upstream connections alive).
async fn verify(req: HttpRequest, state: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    let credential = bearer_credential(&req).map_err(|e| {
        ApiError::InvalidAgentToken(match e {
            ApiError::MissingCredentials => VerifyRefusal::Missing,
            _ => VerifyRefusal::MalformedHeader,
        })
    })?;
    if !looks_like_agent_token(credential) {
        let refusal = if credential.matches('.').count() == 2 {
            VerifyRefusal::UserJwt
        } else {
            VerifyRefusal::Malformed(crate::token::TokenError::WrongPrefix)
        };
        return Err(ApiError::InvalidAgentToken(refusal));
    }
    let hash = TokenHash::of_presented(credential)
        .map_err(|e| ApiError::InvalidAgentToken(VerifyRefusal::Malformed(e)))?;
    let entry = state
        .store
        .lookup(&hash)
        .map_err(|e| ApiError::failed(Operation::Verify, e))?
        .ok_or(ApiError::InvalidAgentToken(VerifyRefusal::Unknown))?;
    let now = state.clock.now();
    let active = state
        .policy
        .assess(&entry, now)
        .map_err(|inactive| ApiError::InvalidAgentToken(inactive.into()))?;
    if needs_touch(entry.last_used_at, now) {
        // A failed stamp must not fail a valid token: log it and answer.
        if let Err(e) = state.store.touch(&hash, now) {
            log::warn!("cannot record the last use of {}: {e}", entry.prefix);
        }
    }
    let user_header = HeaderValue::from_bytes(entry.user_id.as_bytes())
        .map_err(|e| ApiError::failed(Operation::Verify, e))?;
    Ok(HttpResponse::Ok()
        .insert_header((USER_ID_HEADER, user_header))
        .insert_header(CacheControl(vec![CacheDirective::NoStore]))
        .json(ActiveResponse {
            active: true,
            user_id: &entry.user_id,
            token_prefix: &entry.prefix,
            created_at: rfc3339(entry.created_at),
            expires_at: active.expires_at.map(rfc3339),
        }))
}
