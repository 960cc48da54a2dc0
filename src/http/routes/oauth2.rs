//! The OAuth routes for resource servers that speak OAuth rather than
//! forward-auth (MCP servers, Apache mod_oauth2, API frameworks): RFC 7662
//! introspection, RFC 7009 revocation and the RFC 8414 metadata naming
//! them. Registered only with `introspection.clients_file`; without it
//! every one of them is the JSON 404.
//!
//! Introspection decides exactly as verify does (the same remembered
//! answers, kept exact by every write), so a revocation takes effect on the
//! next introspection. Its answers never say why a token is inactive:
//! anything but a live agent token is `{"active":false}`.

use actix_web::http::header::{HeaderValue, AUTHORIZATION, CONTENT_TYPE};
use actix_web::http::Method;
use actix_web::{web, HttpRequest, HttpResponse};
use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use secrecy::zeroize::Zeroizing;
use serde::Serialize;

use super::verify::live_token;
use super::Resource;
use crate::domain::token::PresentedToken;
use crate::http::error::{no_store, ApiError, Operation};
use crate::http::state::{app_state, AppState, OAuthClients};
use crate::metrics::{TokenOperation, METRICS};
use crate::store::audit::Actor;
use crate::store::TokenRevoked;

pub const INTROSPECT_PATH: &str = "/oauth2/introspect";
pub const REVOKE_PATH: &str = "/oauth2/revoke";
pub const METADATA_PATH: &str = "/.well-known/oauth-authorization-server";

/// The client authentication methods both endpoints take (RFC 8414 names).
pub const AUTH_METHODS: [&str; 2] = ["client_secret_basic", "client_secret_post"];

/// `client_id` of every active answer: the service that issued the token.
pub const ISSUING_CLIENT: &str = "agent-tokens";

/// The routes; call only when `introspection.clients_file` is set.
pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.service(
        Resource::new(INTROSPECT_PATH)
            .on(Method::POST, introspect)
            .done(),
    );
    cfg.service(Resource::new(REVOKE_PATH).on(Method::POST, revoke).done());
    cfg.service(
        Resource::new(METADATA_PATH)
            .on(Method::GET, metadata)
            .done(),
    );
}

/// An RFC 7662 answer. Inactive: `{"active":false}` and nothing else.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct IntrospectionResponse<'a> {
    pub active: bool,
    /// The token's user id.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sub: Option<&'a str>,
    /// The token's user id again, for clients that read this field.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub username: Option<&'a str>,
    /// Always `Bearer`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub token_type: Option<&'a str>,
    /// When the token was issued (Unix seconds).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub iat: Option<u64>,
    /// When the token stops being active (Unix seconds); only for a token
    /// that expires.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub exp: Option<u64>,
    /// Always `agent-tokens`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub client_id: Option<&'a str>,
}

const INACTIVE: &str = r#"{"active":false}"#;

/// Handles `POST /oauth2/introspect` (RFC 7662).
#[utoipa::path(
    post,
    path = "/oauth2/introspect",
    tag = "oauth",
    operation_id = "introspect_token",
    summary = "RFC 7662 introspection: is this agent token active?",
    description = "For resource servers listed in `introspection.clients_file`, authenticated by \
                   `client_secret_basic` or `client_secret_post`. Anything but a live agent token \
                   (unknown, revoked, expired, rotated out, malformed, a user JWT) is exactly \
                   `{\"active\":false}`. A revocation takes effect on the next introspection: \
                   do not cache the answers. Absent (404) without `introspection.clients_file`.",
    security(("introspection_client" = [])),
    request_body(content = inline(IntrospectionRequest), content_type = "application/x-www-form-urlencoded"),
    responses(
        (status = 200, description = "The token's state. `Cache-Control: no-store`.", body = IntrospectionResponse),
        (status = 400, description = "Not a form, no `token`, or two client authentication methods.", body = crate::http::error::ErrorBody),
        (status = 401, description = "The client did not authenticate.", body = crate::http::error::ErrorBody,
            headers(("WWW-Authenticate" = String, description = "`Basic realm=\"agent-tokens\", charset=\"UTF-8\"`"))),
        (status = 413, description = "The form is larger than `limits.max_body_bytes`.", body = crate::http::error::ErrorBody),
        (status = 500, description = "Failed to verify token.", body = crate::http::error::ErrorBody),
    )
)]
async fn introspect(req: HttpRequest, payload: web::Payload) -> Result<HttpResponse, ApiError> {
    let state = app_state(&req)?;
    let oauth = oauth(state)?;
    let form = Form::read(&req, payload, oauth).await?;
    form.authenticate(&req, oauth)?;
    let token = form.token()?;
    let Ok(presented) = PresentedToken::new(token) else {
        METRICS.token_operation(TokenOperation::IntrospectInactive);
        return Ok(answer(INACTIVE.as_bytes().to_vec()));
    };
    let (known, active) = match live_token(state, &presented).await {
        Ok(live) => live,
        Err(ApiError::InvalidAgentToken(_)) => {
            METRICS.token_operation(TokenOperation::IntrospectInactive);
            return Ok(answer(INACTIVE.as_bytes().to_vec()));
        }
        Err(e) => return Err(e),
    };
    let user =
        std::str::from_utf8(known.user_id()).map_err(|e| ApiError::failed(Operation::Verify, e))?;
    let body = serde_json::to_vec(&IntrospectionResponse {
        active: true,
        sub: Some(user),
        username: Some(user),
        token_type: Some("Bearer"),
        iat: Some(known.created_at()),
        exp: active.expires_at,
        client_id: Some(ISSUING_CLIENT),
    })
    .map_err(|e| ApiError::failed(Operation::Verify, e))?;
    METRICS.token_operation(TokenOperation::IntrospectActive);
    Ok(answer(body))
}

/// Handles `POST /oauth2/revoke` (RFC 7009).
#[utoipa::path(
    post,
    path = "/oauth2/revoke",
    tag = "oauth",
    operation_id = "revoke_token_oauth",
    summary = "RFC 7009 revocation of an agent token",
    description = "For the same clients as introspection. A user's current token is revoked with \
                   any token of theirs still in its rotation grace window; a token in grace ends \
                   alone. The answer is 200 whether or not the token was known, so it reveals \
                   nothing. Absent (404) without `introspection.clients_file`.",
    security(("introspection_client" = [])),
    request_body(content = inline(RevocationRequest), content_type = "application/x-www-form-urlencoded"),
    responses(
        (status = 200, description = "Done (or nothing to do). No body."),
        (status = 400, description = "Not a form, no `token`, or two client authentication methods.", body = crate::http::error::ErrorBody),
        (status = 401, description = "The client did not authenticate.", body = crate::http::error::ErrorBody,
            headers(("WWW-Authenticate" = String, description = "`Basic realm=\"agent-tokens\", charset=\"UTF-8\"`"))),
        (status = 413, description = "The form is larger than `limits.max_body_bytes`.", body = crate::http::error::ErrorBody),
        (status = 500, description = "Failed to revoke token.", body = crate::http::error::ErrorBody),
    )
)]
async fn revoke(req: HttpRequest, payload: web::Payload) -> Result<HttpResponse, ApiError> {
    let state = app_state(&req)?;
    let oauth = oauth(state)?;
    let form = Form::read(&req, payload, oauth).await?;
    form.authenticate(&req, oauth)?;
    let token = form.token()?;
    // Only a well-formed token can name a stored one; anything else
    // changes nothing and gets the same answer.
    if let Ok(presented) = PresentedToken::new(token) {
        if presented.check().is_ok() {
            // The client is a resource server the operator configured.
            let audit = state
                .audit
                .context(&req, Actor::Admin, &state.rng)
                .with_detail("RFC 7009 revocation by an introspection client".to_owned());
            let revoked = state
                .store
                .revoke_token(presented.hash(), state.clock.now(), &audit)
                .await
                .map_err(|e| ApiError::failed(Operation::Revoke, e))?;
            if revoked != TokenRevoked::Unknown {
                METRICS.token_operation(TokenOperation::Revoked);
            }
        }
    }
    Ok(HttpResponse::Ok().insert_header(no_store()).finish())
}

/// RFC 8414 metadata: where the two endpoints are, and how clients authenticate.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ServerMetadata {
    /// This server's base URL, as the request reached it.
    pub issuer: String,
    pub introspection_endpoint: String,
    pub introspection_endpoint_auth_methods_supported: [&'static str; 2],
    pub revocation_endpoint: String,
    pub revocation_endpoint_auth_methods_supported: [&'static str; 2],
    /// Empty: agent tokens are issued by the management API, not by OAuth flows.
    pub response_types_supported: [&'static str; 0],
    pub grant_types_supported: [&'static str; 0],
}

/// Handles `GET /.well-known/oauth-authorization-server` (RFC 8414).
#[utoipa::path(
    get,
    path = "/.well-known/oauth-authorization-server",
    tag = "oauth",
    operation_id = "oauth_metadata",
    summary = "RFC 8414 metadata naming the introspection and revocation endpoints",
    description = "URLs are built from the request's scheme and host (as `X-Forwarded-Proto`, \
                   `X-Forwarded-Host` or `Forwarded` say behind a proxy). Absent (404) without \
                   `introspection.clients_file`.",
    responses(
        (status = 200, description = "The metadata.", body = ServerMetadata),
    )
)]
async fn metadata(req: HttpRequest) -> Result<HttpResponse, ApiError> {
    oauth(app_state(&req)?)?;
    let info = req.connection_info();
    let issuer = format!("{}://{}", info.scheme(), info.host());
    let body = serde_json::to_vec(&ServerMetadata {
        introspection_endpoint: format!("{issuer}{INTROSPECT_PATH}"),
        introspection_endpoint_auth_methods_supported: AUTH_METHODS,
        revocation_endpoint: format!("{issuer}{REVOKE_PATH}"),
        revocation_endpoint_auth_methods_supported: AUTH_METHODS,
        response_types_supported: [],
        grant_types_supported: [],
        issuer,
    })
    .map_err(|e| ApiError::failed(Operation::Verify, e))?;
    Ok(answer(body))
}

fn answer(body: Vec<u8>) -> HttpResponse {
    HttpResponse::Ok()
        .insert_header(no_store())
        .insert_header((CONTENT_TYPE, HeaderValue::from_static("application/json")))
        .body(body)
}

fn oauth(state: &AppState) -> Result<&OAuthClients, ApiError> {
    state.oauth.as_ref().ok_or(ApiError::NotFound)
}

/// The form both endpoints take (RFC 7662 §2.1, RFC 7009 §2.1).
#[derive(utoipa::ToSchema)]
#[allow(dead_code)]
struct IntrospectionRequest {
    /// The agent token.
    token: String,
    /// Accepted and ignored: there is one kind of token.
    token_type_hint: Option<String>,
    /// With `client_secret_post`.
    client_id: Option<String>,
    /// With `client_secret_post`.
    client_secret: Option<String>,
}

/// The same form as [`IntrospectionRequest`].
#[derive(utoipa::ToSchema)]
#[allow(dead_code)]
struct RevocationRequest {
    /// The agent token to revoke.
    token: String,
    /// Accepted and ignored: there is one kind of token.
    token_type_hint: Option<String>,
    /// With `client_secret_post`.
    client_id: Option<String>,
    /// With `client_secret_post`.
    client_secret: Option<String>,
}

/// A parsed form body; its values are wiped when dropped (they hold
/// tokens and client secrets).
struct Form(Vec<(Zeroizing<String>, Zeroizing<String>)>);

impl Form {
    async fn read(
        req: &HttpRequest,
        payload: web::Payload,
        oauth: &OAuthClients,
    ) -> Result<Self, ApiError> {
        let is_form = req
            .headers()
            .get(CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split(';').next())
            .is_some_and(|essence| {
                essence
                    .trim()
                    .eq_ignore_ascii_case("application/x-www-form-urlencoded")
            });
        if !is_form {
            return Err(ApiError::InvalidRequest(
                "The body must be application/x-www-form-urlencoded.",
            ));
        }
        let body = payload
            .to_bytes_limited(oauth.max_body_bytes)
            .await
            .map_err(|_| ApiError::PayloadTooLarge)?
            .map_err(|_| ApiError::InvalidRequest("The request body could not be read."))?;
        let pairs: Vec<(String, String)> = serde_urlencoded::from_bytes(&body)
            .map_err(|_| ApiError::InvalidRequest("The body is not a valid form."))?;
        let form = Form(
            pairs
                .into_iter()
                .map(|(k, v)| (Zeroizing::new(k), Zeroizing::new(v)))
                .collect(),
        );
        // RFC 6749 §3.2: a parameter is sent at most once.
        for name in ["token", "token_type_hint", "client_id", "client_secret"] {
            if form.0.iter().filter(|(k, _)| k.as_str() == name).count() > 1 {
                return Err(ApiError::InvalidRequest(
                    "A parameter was sent more than once.",
                ));
            }
        }
        Ok(form)
    }

    fn get(&self, name: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(k, _)| k.as_str() == name)
            .map(|(_, v)| v.as_str())
    }

    /// The `token` parameter. An empty one is a token like any other that
    /// is not live: inactive, or nothing to revoke.
    fn token(&self) -> Result<&str, ApiError> {
        self.get("token")
            .ok_or(ApiError::InvalidRequest("The token parameter is required."))
    }

    /// RFC 6749 §2.3.1: Basic, or the form's `client_id` and
    /// `client_secret`. A client that sends both (§2.3 asks it not to) is
    /// taken at its Basic word only when the form names the same client:
    /// its `client_id`, if not empty, is the Basic one and its
    /// `client_secret`, if not empty, is that client's secret too.
    fn authenticate(&self, req: &HttpRequest, oauth: &OAuthClients) -> Result<(), ApiError> {
        let posted_id = self.get("client_id").filter(|v| !v.is_empty());
        let posted_secret = self.get("client_secret").filter(|v| !v.is_empty());
        let accepted = match req.headers().get(AUTHORIZATION) {
            Some(header) => basic_client(header).is_some_and(|(id, secret)| {
                authenticate(oauth, &id, &secret)
                    && posted_id.is_none_or(|posted| posted == id.as_str())
                    && posted_secret.is_none_or(|posted| oauth.clients.authenticate(&id, posted))
            }),
            None => match (posted_id, posted_secret) {
                (Some(id), Some(secret)) => oauth.clients.authenticate(id, secret),
                _ => false,
            },
        };
        if accepted {
            Ok(())
        } else {
            Err(ApiError::InvalidClient)
        }
    }
}

/// The client id and secret of `Authorization: Basic ...`, as sent.
fn basic_client(header: &HeaderValue) -> Option<(Zeroizing<String>, Zeroizing<String>)> {
    let bytes = header.as_bytes();
    let (scheme, encoded) = bytes.split_at_checked(6)?;
    if !scheme.eq_ignore_ascii_case(b"basic ") {
        return None;
    }
    let decoded = Zeroizing::new(STANDARD.decode(encoded.trim_ascii()).ok()?);
    let text = std::str::from_utf8(&decoded).ok()?;
    let (id, secret) = text.split_once(':')?;
    Some((
        Zeroizing::new(id.to_owned()),
        Zeroizing::new(secret.to_owned()),
    ))
}

/// RFC 6749 §2.3.1 form-encodes the id and secret before Basic; clients
/// that skip it are accepted too (the two differ only with `%` or `+`).
fn authenticate(oauth: &OAuthClients, id: &str, secret: &str) -> bool {
    if oauth.clients.authenticate(id, secret) {
        return true;
    }
    if !(id.contains(['%', '+']) || secret.contains(['%', '+'])) {
        return false;
    }
    match (form_decode(id), form_decode(secret)) {
        (Some(id), Some(secret)) => oauth.clients.authenticate(&id, &secret),
        _ => false,
    }
}

fn form_decode(value: &str) -> Option<Zeroizing<String>> {
    let form = Zeroizing::new(format!("v={}", value.replace('&', "%26")));
    let pairs: Vec<(String, String)> = serde_urlencoded::from_str(&form).ok()?;
    let (_, decoded) = pairs.into_iter().next()?;
    Some(Zeroizing::new(decoded))
}
