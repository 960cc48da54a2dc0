//! Authentication as an extractor: `UserJwt` for the management routes.
//!
//! Missing or malformed headers, agent tokens and invalid JWTs each map to
//! their own `ApiError`; the credential itself is never logged or echoed.

use std::future::{ready, Ready};

use actix_web::dev::Payload;
use actix_web::http::header::AUTHORIZATION;
use actix_web::{web, FromRequest, HttpRequest};

use crate::app::AppState;
use crate::error::ApiError;
use crate::token::looks_like_agent_token;
use crate::user::UserId;

/// The bearer credential of a request, borrowed from its headers.
pub fn bearer_credential(req: &HttpRequest) -> Result<&str, ApiError> {
    let Some(value) = req.headers().get(AUTHORIZATION) else {
        return Err(ApiError::MissingCredentials);
    };
    let value = value
        .to_str()
        .map_err(|_| ApiError::MalformedAuthorization)?;
    let (scheme, credential) = value.split_once(' ').unwrap_or((value, ""));
    // RFC 7235: the scheme is case-insensitive.
    if !scheme.eq_ignore_ascii_case("bearer") {
        return Err(ApiError::MalformedAuthorization);
    }
    let credential = credential.trim();
    if credential.is_empty() {
        return Err(ApiError::MissingCredentials);
    }
    Ok(credential)
}

/// A request authenticated by a valid user JWT.
#[derive(Debug)]
pub struct UserJwt(pub UserId);

impl UserJwt {
    fn authenticate(req: &HttpRequest) -> Result<Self, ApiError> {
        let state = req
            .app_data::<web::Data<AppState>>()
            .ok_or(ApiError::Internal("application state is not registered"))?;
        state.limits.check(req)?;
        let credential = bearer_credential(req)?;
        if looks_like_agent_token(credential) {
            return Err(ApiError::AgentTokenNotAllowed);
        }
        state
            .jwt
            .verify(credential)
            .map(UserJwt)
            .map_err(ApiError::InvalidJwt)
    }
}

impl FromRequest for UserJwt {
    type Error = ApiError;
    type Future = Ready<Result<Self, ApiError>>;

    fn from_request(req: &HttpRequest, _: &mut Payload) -> Self::Future {
        ready(Self::authenticate(req))
    }
}
