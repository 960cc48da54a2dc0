//! The verify route for gateways (nginx `auth_request`, Traefik `forwardAuth`,
//! Caddy `forward_auth`) and APIs. Answers 200 for a live agent token and 401
//! for anything else, never another 4xx. Answers from the remembered
//! answers (found by the token's hash, which only an issued token has) or,
//! after the checksum refused typos and garbage, one index read. The
//! remembered answers are forgotten by every write before it is
//! acknowledged (see [`crate::http::answers`]), so a revoked or rotated-out token
//! fails on the very next request.

use actix_web::http::header::{HeaderName, HeaderValue, AUTHORIZATION, CONTENT_TYPE};
use actix_web::web::Bytes;
use actix_web::{web, HttpRequest, HttpResponse};
use serde::Serialize;

use super::Resource;
use crate::domain::clock::{rfc3339, Timestamp};
use crate::domain::policy::{needs_touch, Active};
use crate::domain::token::PresentedToken;
use crate::http::answers::VerifyAnswer;
use crate::http::auth::{presented_agent_token, presented_bare_token, BasicScratch};
use crate::http::error::{ApiError, Operation, VerifyRefusal};
use crate::http::state::AppState;
use crate::metrics::{TokenOperation, METRICS};
use crate::store::records::IndexEntry;
use actix_web::http::Method;

pub const VERIFY_PATH: &str = "/api/agent-tokens/verify";

/// The header carrying the verified user id to the upstream.
pub const USER_ID_HEADER: HeaderName = HeaderName::from_static("x-agent-user-id");

/// When the verified token stops verifying (RFC 3339), on answers for
/// tokens that expire (`tokens.max_age_days`, or a rotation's grace window).
pub const EXPIRES_AT_HEADER: HeaderName = HeaderName::from_static("x-agent-token-expires-at");

pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.service(
        Resource::new(VERIFY_PATH)
            .on(Method::GET, verify)
            .on(Method::HEAD, verify)
            .done(),
    );
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ActiveResponse<'a> {
    pub active: bool,
    pub user_id: &'a str,
    pub token_prefix: &'a str,
    #[schema(value_type = String, format = DateTime)]
    pub created_at: Timestamp,
    // Always sent (null when the token never expires), so required and nullable.
    #[schema(required = true, value_type = Option<String>, format = DateTime)]
    pub expires_at: Option<Timestamp>,
}

/// Handles `GET` and `HEAD /api/agent-tokens/verify` (HEAD: same status and
/// headers, no body, which lets nginx keep upstream connections alive).
#[utoipa::path(
    method(get, head),
    path = "/api/agent-tokens/verify",
    tag = "verification",
    operation_id = "verify_agent_token",
    summary = "Is this agent token valid? (HEAD: the same status and headers, no body)",
    security(("agent_token" = []), ("agent_token_basic" = [])),
    responses(
        (status = 200, description = "A live agent token.", body = ActiveResponse,
            headers(
                ("X-Agent-User-Id" = String, description = "The id of the token's user, as its UTF-8 bytes."),
                ("X-Agent-Token-Expires-At" = String, description = "When the token stops verifying (RFC 3339 UTC), only for a token that expires: by `tokens.max_age_days` or at the end of a rotation's grace window."),
            )),
        (status = 401, description = "Anything but a live agent token (never another 4xx).",
            body = crate::http::error::InactiveBody,
            headers(("WWW-Authenticate" = String, description = "`Bearer realm=\"agent-tokens\", error=\"invalid_token\", error_description=\"...\"`"))),
        (status = 500, description = "Failed to verify token.", body = crate::http::error::ErrorBody),
        (status = 503, description = "The shared store (PostgreSQL) is unreachable: the token can be neither vouched for nor refused. Retry.", body = crate::http::error::ErrorBody),
    )
)]
async fn verify(req: HttpRequest) -> Result<HttpResponse, ApiError> {
    let answer = answer(&req, crate::http::state::app_state(&req)?).await;
    METRICS.token_operation(match answer {
        Ok(_) => TokenOperation::VerifyOk,
        Err(_) => TokenOperation::VerifyFailed,
    });
    answer
}

/// The verify decision: a remembered answer or one read (and a
/// once-a-minute last-used stamp, in memory).
async fn answer(req: &HttpRequest, state: &AppState) -> Result<HttpResponse, ApiError> {
    let mut scratch = BasicScratch::default();
    let presented = presented(req, state, &mut scratch)?;
    let (known, active) = live_token(state, &presented).await?;
    let user_header = known
        .user_header()
        .map_err(|e| ApiError::failed(Operation::Verify, e))?;
    let mut response = HttpResponse::Ok();
    response
        .insert_header((USER_ID_HEADER, user_header))
        .insert_header(crate::http::error::no_store())
        .insert_header((CONTENT_TYPE, HeaderValue::from_static("application/json")));
    if let Some(expires_at) = active.expires_at {
        response.insert_header((EXPIRES_AT_HEADER, rfc3339(expires_at)));
    }
    Ok(response.body(Bytes::copy_from_slice(known.body())))
}

/// The agent token a verify request presents: in `verify.api_key_header`
/// when that is set and present, else in `Authorization` (Bearer, or
/// Basic with the token as the password).
fn presented<'a>(
    req: &'a HttpRequest,
    state: &AppState,
    scratch: &'a mut BasicScratch,
) -> Result<PresentedToken<'a>, ApiError> {
    let headers = req.headers();
    let presented = match state
        .api_key_header
        .as_ref()
        .and_then(|name| headers.get(name))
    {
        Some(value) => presented_bare_token(value),
        None => presented_agent_token(headers.get(AUTHORIZATION), scratch),
    };
    presented.map_err(ApiError::InvalidAgentToken)
}

/// Whether a presented token is live now: its remembered (or freshly
/// read) answer and when it stops verifying. Records the use (in memory,
/// written in the background). What verify and introspection share.
pub(crate) async fn live_token(
    state: &AppState,
    presented: &PresentedToken<'_>,
) -> Result<(VerifyAnswer, Active), ApiError> {
    let hash = presented.hash();
    let now = state.clock.now();
    let known = match state.answers.verify.get(hash.as_bytes()) {
        Some(known) => known,
        None => {
            // A typo or garbage is refused here, before the store is read.
            presented
                .check()
                .map_err(|e| ApiError::InvalidAgentToken(VerifyRefusal::Malformed(e)))?;
            let ticket = state.answers.verify.ticket();
            let entry = state
                .store
                .lookup(hash)
                .await
                .map_err(ApiError::verify_failed)?
                .ok_or(ApiError::InvalidAgentToken(VerifyRefusal::Unknown))?;
            let known = render(&entry, state, now)?;
            state
                .answers
                .verify
                .remember(ticket, *hash.as_bytes(), known.clone());
            known
        }
    };
    // Expiry and grace end are decided again on every answer.
    let active = state
        .policy
        .assess(known.created_at(), known.grace_until(), now)
        .map_err(|inactive| ApiError::InvalidAgentToken(inactive.into()))?;
    // Recorded in memory and written in the background: never waited for.
    if needs_touch(known.last_used_at(), now) && state.store.record_use(hash, now) {
        // The user's GET /me answer shows it (when this is the current token).
        state.answers.forget_status(known.user_id());
    }
    Ok((known, active))
}

/// A live token's answer, built once from its index entry. The body only
/// depends on the entry and the (fixed) policy, never on the time.
fn render(entry: &IndexEntry, state: &AppState, now: u64) -> Result<VerifyAnswer, ApiError> {
    let active = state
        .policy
        .assess(entry.created_at, entry.grace_until, now)
        .map_err(|inactive| ApiError::InvalidAgentToken(inactive.into()))?;
    // Sized for the whole answer up front: no regrowth while serializing.
    let mut body = Vec::with_capacity(BODY_CAPACITY + entry.user_id.len());
    serde_json::to_writer(
        &mut body,
        &ActiveResponse {
            active: true,
            user_id: &entry.user_id,
            token_prefix: &entry.prefix,
            created_at: Timestamp(entry.created_at),
            expires_at: active.expires_at.map(Timestamp),
        },
    )
    .map_err(|e| ApiError::failed(Operation::Verify, e))?;
    VerifyAnswer::new(entry, &body).ok_or(ApiError::Internal("a verify answer too long to keep"))
}

/// An active answer's size without its user id (and its JSON escapes).
const BODY_CAPACITY: usize = 160;
