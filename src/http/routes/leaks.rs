//! Revocation by possession: whoever holds a leaked agent token can kill
//! it without knowing whose it is. Holding the token is the proof, and
//! revoking a leaked token harms no one, so the route takes no credential.
//!
//! The answer never tells which tokens were live: every well-formed
//! request gets the same status and body shape, after the same durable
//! write, whatever was revoked.

use actix_web::http::header::ContentType;
use actix_web::http::Method;
use actix_web::{web, HttpRequest, HttpResponse};
use serde::{Deserialize, Serialize};

use super::Resource;
use crate::domain::token::{PresentedToken, TokenHash, TOKEN_PREFIX};
use crate::http::error::{no_store, ApiError, Operation};
use crate::http::state::app_state;
use crate::metrics::{TokenOperation, METRICS};
use crate::store::audit::Actor;
use crate::store::TokenRevoked;

pub const REVOKE_PATH: &str = "/api/agent-tokens/revoke";

/// Tokens one request may report.
pub const MAX_REPORTED_TOKENS: usize = 1000;

/// A report's body: room for 1,000 tokens in GitHub's alert shape with
/// long URLs, and no more.
pub const MAX_REPORT_BYTES: usize = 1024 * 1024;

/// The one refusal a malformed report gets; it never echoes the body.
const MALFORMED: &str = "The body must be JSON: {\"tokens\": [\"sk_agt_...\"]} or a list of {\"token\": \"sk_agt_...\", \"type\", \"url\", \"source\"} alerts, with at most 1000 tokens.";

pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.service(Resource::new(REVOKE_PATH).on(Method::POST, revoke).done());
}

/// The two shapes a report may take.
#[derive(Deserialize, utoipa::ToSchema)]
#[serde(untagged)]
pub enum LeakReport {
    /// `{"tokens": ["sk_agt_…", …]}`
    Tokens { tokens: Vec<String> },
    /// GitHub's secret-scanning alert shape: `[{"token", "type", "url", "source"}]`.
    Alerts(Vec<LeakAlert>),
}

#[derive(Deserialize, utoipa::ToSchema)]
pub struct LeakAlert {
    pub token: String,
    #[serde(rename = "type", default)]
    pub kind: Option<String>,
    /// Where the token was found.
    #[serde(default)]
    pub url: Option<String>,
    /// What kind of place it was found in (`content`, `commit`, ...).
    #[serde(default)]
    pub source: Option<String>,
}

/// The same for every well-formed report.
#[derive(Serialize, utoipa::ToSchema)]
pub struct LeakReportResponse {
    /// The number of tokens in the request (not how many were live).
    pub received: usize,
}

/// Longest `url` or `source` kept in the audit trail.
const MAX_FOUND_AT: usize = 512;

impl LeakReport {
    /// Where the tokens were found, as the report says: the alerts' `url`
    /// and `source`, for the audit trail (each cut to a bound).
    fn found_at(&self) -> Option<String> {
        let LeakReport::Alerts(alerts) = self else {
            return None;
        };
        let mut places: Vec<String> = alerts
            .iter()
            .filter_map(|a| match (&a.url, &a.source) {
                (None, None) => None,
                (url, source) => Some(format!(
                    "{}{}",
                    url.as_deref().map(bounded).unwrap_or_default(),
                    source
                        .as_deref()
                        .map(|s| format!(" ({})", bounded(s)))
                        .unwrap_or_default()
                )),
            })
            .collect();
        places.sort();
        places.dedup();
        (!places.is_empty()).then(|| format!("reported found at: {}", places.join(", ")))
    }

    fn tokens(&self) -> Vec<&str> {
        match self {
            LeakReport::Tokens { tokens } => tokens.iter().map(String::as_str).collect(),
            LeakReport::Alerts(alerts) => alerts.iter().map(|a| a.token.as_str()).collect(),
        }
    }
}

/// The distinct hashes of the reported strings that are well-formed agent
/// tokens; the rest cannot be live and are dropped without a lookup.
fn well_formed_hashes(tokens: &[&str]) -> Vec<TokenHash> {
    let mut seen = std::collections::HashSet::new();
    tokens
        .iter()
        .filter_map(|candidate| {
            let presented = PresentedToken::new(candidate).ok()?;
            presented.check().ok()?;
            Some(*presented.hash())
        })
        .filter(|hash| seen.insert(*hash.as_bytes()))
        .collect()
}

/// Handles `POST /api/agent-tokens/revoke`.
#[utoipa::path(
    post,
    path = "/api/agent-tokens/revoke",
    tag = "leaks",
    operation_id = "revoke_leaked_tokens",
    summary = "Revoke leaked agent tokens by holding them (no authentication)",
    description = "Every reported token that is live (current, or in its grace window) is revoked at once and durably, and the revocation is audited as a leak report. The answer is the same for every well-formed request, whichever tokens were live. At most 1000 tokens and 1 MiB per request. The per-address rate limit applies when the operator configures one.",
    request_body(content = LeakReport, content_type = "application/json"),
    responses(
        (status = 200, description = "The report was received; which tokens were live is never said.", body = LeakReportResponse),
        (status = 400, description = "A malformed body: `invalid_request`.", body = crate::http::error::ErrorBody),
        (status = 413, description = "A body over 1 MiB: `payload_too_large`.", body = crate::http::error::ErrorBody),
        (status = 429, description = "Over the per-address limit, when configured: `rate_limited`.", body = crate::http::error::ErrorBody,
            headers(("Retry-After" = u64, description = "Seconds to wait before retrying (at least 1)."))),
        (status = 500, description = "Failed to revoke token.", body = crate::http::error::ErrorBody),
    )
)]
pub async fn revoke(req: HttpRequest, payload: web::Payload) -> Result<HttpResponse, ApiError> {
    let state = app_state(&req)?;
    state.limits.check_sized(&req, MAX_REPORT_BYTES as u64)?;
    // Refused as it arrives once over the bound, declared or not.
    let body = payload
        .to_bytes_limited(MAX_REPORT_BYTES)
        .await
        .map_err(|_| ApiError::PayloadTooLarge)?
        .map_err(|_| ApiError::InvalidRequest("The request body could not be read."))?;
    let report: LeakReport =
        serde_json::from_slice(&body).map_err(|_| ApiError::InvalidRequest(MALFORMED))?;
    let tokens = report.tokens();
    if tokens.len() > MAX_REPORTED_TOKENS {
        return Err(ApiError::InvalidRequest(MALFORMED));
    }
    let hashes = well_formed_hashes(&tokens);
    let mut audit = state.audit.context(&req, Actor::LeakReport, &state.rng);
    if let Some(detail) = report.found_at() {
        audit = audit.with_detail(detail);
    }
    let now = state.clock.now();
    // Queued together, so one batch (one sync) takes them all.
    let outcomes = futures_util::future::join_all(
        hashes
            .iter()
            .map(|hash| state.store.revoke_token(hash, now, &audit)),
    )
    .await;
    for outcome in outcomes {
        if outcome.map_err(|e| ApiError::failed(Operation::Revoke, e))? != TokenRevoked::Unknown {
            METRICS.token_operation(TokenOperation::Revoked);
        }
    }
    // The same durable wait whatever was revoked: the time taken tells
    // nothing either.
    state
        .store
        .wait_until_durable()
        .await
        .map_err(|e| ApiError::failed(Operation::Revoke, e))?;
    Ok(HttpResponse::Ok()
        .insert_header(no_store())
        .content_type(ContentType::json())
        .json(LeakReportResponse {
            received: tokens.len(),
        }))
}

/// `text` cut to [`MAX_FOUND_AT`] characters, control characters dropped,
/// and anything after a token prefix hidden: an event never holds a token,
/// even one a reporter pasted into a URL.
fn bounded(text: &str) -> String {
    let mut out: String = text
        .chars()
        .filter(|c| !c.is_control())
        .take(MAX_FOUND_AT)
        .collect();
    let mut from = 0;
    while let Some(at) = out[from..].find(TOKEN_PREFIX) {
        let start = from + at + TOKEN_PREFIX.len();
        let end = out[start..]
            .find(|c: char| !c.is_ascii_alphanumeric())
            .map_or(out.len(), |n| start + n);
        out.replace_range(start..end, "…");
        from = start;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_token_pasted_into_a_report_url_never_reaches_the_audit_trail() {
        // A newline (dropped) cannot end the hidden part early either.
        let url = "https://x.example/?t=sk_agt_0a1b2c3d4e5f&u=sk_agt_ffff\nffff/next";
        assert_eq!(
            bounded(url),
            "https://x.example/?t=sk_agt_…&u=sk_agt_…/next"
        );
        assert_eq!(bounded(&"a".repeat(2000)).len(), MAX_FOUND_AT);
    }
}
