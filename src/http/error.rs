//! The one mapping from failures to HTTP responses.
//!
//! Every error body is `{"error": "<snake_case code>", "message": "<text>"}`.
//! 401s carry `WWW-Authenticate: Bearer ...` (RFC 6750). 500s carry the
//! product page's message for the operation and log the cause; no body,
//! header or log line built here ever contains a token, JWT or key.

use std::fmt;

use actix_web::http::header::{self, HeaderName, HeaderValue, CACHE_CONTROL};
use actix_web::http::StatusCode;
use actix_web::{HttpResponse, ResponseError};
use serde::Serialize;

use crate::domain::jwt::JwtError;
use crate::domain::policy::Inactive;
use crate::domain::token::TokenError;

pub const REALM: &str = "agent-tokens";

/// The management operation that failed, which picks the page's 500 message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Operation {
    FetchStatus,
    StoreToken,
    CheckOrStore,
    Revoke,
    Verify,
}

impl Operation {
    pub fn failure_message(self) -> &'static str {
        match self {
            Operation::FetchStatus => "Failed to fetch token status.",
            Operation::StoreToken => "Failed to store agent token.",
            Operation::CheckOrStore => "Failed to check or store token.",
            Operation::Revoke => "Failed to revoke token.",
            Operation::Verify => "Failed to verify token.",
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// No `Authorization` header, or an empty bearer value.
    #[error("no credentials")]
    MissingCredentials,
    /// An `Authorization` header that is not `Bearer <token>` in visible ASCII.
    #[error("malformed Authorization header")]
    MalformedAuthorization,
    /// A user JWT that failed verification.
    #[error("invalid user JWT: {0}")]
    InvalidJwt(#[source] JwtError),
    /// An agent token presented where a user JWT is required.
    #[error("agent token presented to a management route")]
    AgentTokenNotAllowed,
    /// The verify route's answer for anything but a live agent token. Always
    /// a 401: nginx `auth_request` turns any other 4xx into a 500.
    #[error("agent token refused: {0}")]
    InvalidAgentToken(VerifyRefusal),
    /// A storage (or token generation) failure during `op`.
    #[error("{} ({source})", op.failure_message())]
    Failed {
        op: Operation,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// The deprovisioning route without the admin secret (a user JWT, an
    /// agent token, a wrong secret or none).
    #[error("admin secret required")]
    AdminSecretRequired,
    /// An OAuth client (RFC 7662 §2.1, RFC 7009 §2.1) that did not
    /// authenticate: unknown, wrong secret, or no credentials.
    #[error("introspection client authentication failed")]
    InvalidClient,
    /// An OAuth request that is not the form its RFC asks for.
    #[error("invalid OAuth request: {0}")]
    InvalidRequest(&'static str),
    /// A wiring fault in the server itself (never caused by the client).
    #[error("internal error: {0}")]
    Internal(&'static str),
    /// The shared store (PostgreSQL) cannot be reached during `op`: a
    /// verify fails closed with 503, neither vouching for a token nor
    /// calling a good one bad.
    #[error("{} ({source})", op.failure_message())]
    Unavailable {
        op: Operation,
        #[source]
        source: crate::store::StoreError,
    },
    /// Storage cannot take a durable write right now (`/readyz`).
    #[error("storage is not ready: {0}")]
    NotReady(#[source] crate::store::StoreError),
    /// No user JWT key set is loaded: the identity provider has not
    /// answered since start and no saved copy exists.
    #[error("no JWT key set is loaded yet")]
    KeysNotLoaded,
    /// Too many management requests from one client address.
    #[error("rate limited (client address)")]
    RateLimited { retry_after_secs: u64 },
    /// Too many token changes by one user.
    #[error("rate limited (token changes of one user)")]
    TooManyChanges { retry_after_secs: u64 },
    #[error("request headers too large")]
    HeadersTooLarge,
    #[error("request body too large")]
    PayloadTooLarge,
    #[error("route not found")]
    NotFound,
    #[error("method not allowed")]
    /// A known path with another method; `allow` lists the ones it takes.
    MethodNotAllowed { allow: std::sync::Arc<str> },
}

impl ApiError {
    pub fn failed(op: Operation, source: impl std::error::Error + Send + Sync + 'static) -> Self {
        ApiError::Failed {
            op,
            source: Box::new(source),
        }
    }

    /// A failed verify read: 503 while the store is unreachable, else 500.
    pub fn verify_failed(source: crate::store::StoreError) -> Self {
        match source {
            crate::store::StoreError::Unavailable(_) => ApiError::Unavailable {
                op: Operation::Verify,
                source,
            },
            other => ApiError::failed(Operation::Verify, other),
        }
    }

    fn code(&self) -> &'static str {
        match self {
            ApiError::Unavailable { .. } => "temporarily_unavailable",
            ApiError::MissingCredentials => "missing_credentials",
            ApiError::MalformedAuthorization => "invalid_request",
            ApiError::InvalidJwt(_) | ApiError::InvalidAgentToken(_) => "invalid_token",
            ApiError::AgentTokenNotAllowed => "user_jwt_required",
            ApiError::AdminSecretRequired => "invalid_token",
            ApiError::InvalidClient => "invalid_client",
            ApiError::InvalidRequest(_) => "invalid_request",
            ApiError::Failed { .. } | ApiError::Internal(_) => "internal_error",
            ApiError::NotReady(_) | ApiError::KeysNotLoaded => "not_ready",
            ApiError::RateLimited { .. } | ApiError::TooManyChanges { .. } => "rate_limited",
            ApiError::HeadersTooLarge => "headers_too_large",
            ApiError::PayloadTooLarge => "payload_too_large",
            ApiError::NotFound => "not_found",
            ApiError::MethodNotAllowed { .. } => "method_not_allowed",
        }
    }

    fn message(&self) -> &'static str {
        match self {
            ApiError::MissingCredentials
            | ApiError::MalformedAuthorization
            | ApiError::InvalidJwt(_) => "Missing or invalid JWT.",
            ApiError::AgentTokenNotAllowed => {
                "Agent tokens cannot be used here. This endpoint requires a user JWT."
            }
            ApiError::InvalidAgentToken(reason) => reason.message(),
            ApiError::AdminSecretRequired => "This endpoint requires the admin secret.",
            ApiError::InvalidClient => "Client authentication failed.",
            ApiError::InvalidRequest(what) => what,
            ApiError::Failed { op, .. } | ApiError::Unavailable { op, .. } => op.failure_message(),
            ApiError::Internal(_) => "Internal server error.",
            ApiError::NotReady(_) => "Storage is not accepting writes.",
            ApiError::KeysNotLoaded => {
                "The identity provider's keys are not loaded yet. Retry later."
            }
            ApiError::RateLimited { .. } => "Too many requests from this address. Retry later.",
            ApiError::TooManyChanges { .. } => "Too many token changes for this user. Retry later.",
            ApiError::HeadersTooLarge => "The request headers are too large.",
            ApiError::PayloadTooLarge => "The request body is too large.",
            ApiError::NotFound => "No such route.",
            ApiError::MethodNotAllowed { .. } => "This method is not allowed on this route.",
        }
    }

    /// The RFC 6750 challenge; the description never echoes the credential.
    fn challenge(&self) -> Option<String> {
        let (error, description) = match self {
            ApiError::MissingCredentials => return Some(format!("Bearer realm=\"{REALM}\"")),
            ApiError::MalformedAuthorization => (
                "invalid_request",
                "Send Authorization: Bearer <user JWT>".to_owned(),
            ),
            ApiError::InvalidJwt(e) => ("invalid_token", e.to_string()),
            ApiError::AgentTokenNotAllowed => (
                "invalid_token",
                "This endpoint requires a user JWT".to_owned(),
            ),
            ApiError::InvalidAgentToken(reason) => ("invalid_token", reason.to_string()),
            ApiError::AdminSecretRequired => (
                "invalid_token",
                "This endpoint requires the admin secret".to_owned(),
            ),
            _ => return None,
        };
        let bearer = format!(
            "Bearer realm=\"{REALM}\", error=\"{error}\", error_description=\"{}\"",
            quoted_string_safe(&description)
        );
        // Basic-only clients (git, registries) send a credential only after
        // a Basic challenge. In the same header: nginx `auth_request` passes
        // on only the first `WWW-Authenticate`.
        Some(match self {
            ApiError::InvalidAgentToken(VerifyRefusal::Missing) => {
                format!("{bearer}, {BASIC_CHALLENGE}")
            }
            _ => bearer,
        })
    }
}

/// Keeps a header quoted-string valid: visible ASCII without `"` or `\`.
fn quoted_string_safe(s: &str) -> String {
    s.chars()
        .map(|c| match c {
            '"' | '\\' => '\'',
            c if c.is_ascii_graphic() || c == ' ' => c,
            _ => '?',
        })
        .collect()
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct ErrorBody<'a> {
    pub error: &'a str,
    pub message: &'a str,
}

impl ResponseError for ApiError {
    fn status_code(&self) -> StatusCode {
        match self {
            ApiError::MissingCredentials
            | ApiError::MalformedAuthorization
            | ApiError::InvalidJwt(_)
            | ApiError::AgentTokenNotAllowed
            | ApiError::InvalidAgentToken(_)
            | ApiError::AdminSecretRequired
            | ApiError::InvalidClient => StatusCode::UNAUTHORIZED,
            ApiError::InvalidRequest(_) => StatusCode::BAD_REQUEST,
            ApiError::Failed { .. } | ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
            ApiError::NotReady(_) | ApiError::KeysNotLoaded | ApiError::Unavailable { .. } => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            ApiError::RateLimited { .. } | ApiError::TooManyChanges { .. } => {
                StatusCode::TOO_MANY_REQUESTS
            }
            ApiError::HeadersTooLarge => StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            ApiError::PayloadTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::NotFound => StatusCode::NOT_FOUND,
            ApiError::MethodNotAllowed { .. } => StatusCode::METHOD_NOT_ALLOWED,
        }
    }

    fn error_response(&self) -> HttpResponse {
        match self {
            ApiError::Failed { op, source } => {
                log::error!("{}: {}", op.failure_message(), ErrorChain(source.as_ref()));
            }
            ApiError::Unavailable { op, source } => {
                log::error!("{}: {source}", op.failure_message());
            }
            ApiError::Internal(what) => log::error!("internal error: {what}"),
            ApiError::NotReady(e) => log::error!("readiness probe failed: {e}"),
            ApiError::InvalidJwt(e) => log::debug!("rejected user JWT: {e}"),
            _ => {}
        }
        let mut response = HttpResponse::build(self.status_code());
        response.insert_header(no_store());
        if let ApiError::MethodNotAllowed { allow } = self {
            response.insert_header((header::ALLOW, allow.as_ref()));
        }
        if let ApiError::Unavailable { .. } = self {
            response.insert_header((header::RETRY_AFTER, "1"));
        }
        if let ApiError::RateLimited { retry_after_secs }
        | ApiError::TooManyChanges { retry_after_secs } = self
        {
            response.insert_header((header::RETRY_AFTER, retry_after_secs.to_string()));
        }
        if let Some(challenge) = self.challenge() {
            if let Ok(value) = HeaderValue::from_str(&challenge) {
                response.insert_header((header::WWW_AUTHENTICATE, value));
            }
        }
        // OAuth clients authenticate with Basic (RFC 6749 §2.3.1).
        if let ApiError::InvalidClient = self {
            response.insert_header((header::WWW_AUTHENTICATE, basic_challenge()));
        }
        if let ApiError::InvalidAgentToken(_) = self {
            return response.json(InactiveBody {
                active: false,
                error: self.code(),
                message: self.message(),
            });
        }
        response.json(ErrorBody {
            error: self.code(),
            message: self.message(),
        })
    }
}

/// Why the verify route refused a credential. The text goes to the client
/// (body and `WWW-Authenticate`), so it never includes the credential.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum VerifyRefusal {
    #[error("No agent token was presented")]
    Missing,
    #[error("The Authorization header is neither Bearer <agent token> nor Basic with the token as password")]
    MalformedHeader,
    #[error("The agent token is malformed: {0}")]
    Malformed(#[source] TokenError),
    #[error("A user JWT was presented; this endpoint takes an agent token")]
    UserJwt,
    #[error("The agent token is unknown or revoked")]
    Unknown,
    #[error("The agent token was rotated out")]
    RotatedOut,
    #[error("The agent token has expired")]
    Expired,
}

impl VerifyRefusal {
    fn message(self) -> &'static str {
        match self {
            VerifyRefusal::Missing => "An agent token is required.",
            VerifyRefusal::MalformedHeader => {
                "Send Authorization: Bearer <agent token>, or Basic with the agent token as the password."
            }
            VerifyRefusal::Malformed(_) => "The agent token is malformed.",
            VerifyRefusal::UserJwt => {
                "A user JWT cannot be used here. This endpoint takes an agent token."
            }
            VerifyRefusal::Unknown => "The agent token is not valid (unknown or revoked).",
            VerifyRefusal::RotatedOut => "The agent token was rotated out.",
            VerifyRefusal::Expired => "The agent token has expired.",
        }
    }
}

impl From<Inactive> for VerifyRefusal {
    fn from(inactive: Inactive) -> Self {
        match inactive {
            Inactive::RotatedOut => VerifyRefusal::RotatedOut,
            Inactive::Expired => VerifyRefusal::Expired,
        }
    }
}

// Public so the OpenAPI document can name it.
/// The verify route's 401 body: `active` is always false, `error` always `invalid_token`.
#[derive(Serialize, utoipa::ToSchema)]
pub struct InactiveBody<'a> {
    active: bool,
    error: &'a str,
    message: &'a str,
}

/// Formats an error with its whole `source()` chain for the log.
pub struct ErrorChain<'a>(pub &'a (dyn std::error::Error + 'static));

impl fmt::Display for ErrorChain<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)?;
        let mut next = self.0.source();
        while let Some(cause) = next {
            write!(f, ": {cause}")?;
            next = cause.source();
        }
        Ok(())
    }
}

/// The Basic challenge (RFC 7617).
const BASIC_CHALLENGE: &str = "Basic realm=\"agent-tokens\", charset=\"UTF-8\"";

fn basic_challenge() -> HeaderValue {
    HeaderValue::from_static(BASIC_CHALLENGE)
}

/// Token answers and errors must never be cached by a proxy or browser
/// (RFC 6749 §5.1).
pub fn no_store() -> (HeaderName, HeaderValue) {
    (CACHE_CONTROL, HeaderValue::from_static("no-store"))
}
