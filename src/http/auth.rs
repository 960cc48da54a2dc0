//! Authentication: the decisions for both kinds of credential as pure
//! functions of the `Authorization` header (fuzzed and property-tested), and
//! `UserJwt`, the extractor the management routes use.
//!
//! Missing or malformed headers, agent tokens and invalid JWTs each map to
//! their own `ApiError`; the credential itself is never logged or echoed.

use std::future::{ready, Ready};

use actix_web::dev::Payload;
use actix_web::http::header::{HeaderValue, AUTHORIZATION};
use actix_web::{FromRequest, HttpRequest};

use crate::domain::jwt::JwtVerifier;
use crate::domain::token::{looks_like_agent_token, PresentedToken, TokenError};
use crate::domain::user::UserId;
use crate::http::error::{ApiError, VerifyRefusal};

/// The bearer credential in an `Authorization` header value.
///
/// Works on the bytes: a header value holds visible ASCII, tabs and
/// obs-text (bytes from 0x80), so "ASCII" is exactly what
/// `HeaderValue::to_str` accepts, checked a word at a time instead of its
/// per-byte loop (measured: the largest cost of a `GET /me` hit).
pub fn parse_bearer(value: Option<&HeaderValue>) -> Result<&str, ApiError> {
    let Some(value) = value else {
        return Err(ApiError::MissingCredentials);
    };
    let bytes = value.as_bytes();
    if !bytes.is_ascii() {
        return Err(ApiError::MalformedAuthorization);
    }
    let (scheme, credential) = match bytes.iter().position(|&b| b == b' ') {
        Some(space) => (&bytes[..space], &bytes[space + 1..]),
        None => (bytes, &[][..]),
    };
    // RFC 7235: the scheme is case-insensitive.
    if !scheme.eq_ignore_ascii_case(b"bearer") {
        return Err(ApiError::MalformedAuthorization);
    }
    let credential = credential.trim_ascii();
    if credential.is_empty() {
        return Err(ApiError::MissingCredentials);
    }
    std::str::from_utf8(credential).map_err(|_| ApiError::MalformedAuthorization)
}

/// The management routes' decision: the user of a valid user JWT, or why not.
pub fn authenticate_user(
    header: Option<&HeaderValue>,
    jwt: &JwtVerifier,
) -> Result<UserId, ApiError> {
    let credential = parse_bearer(header)?;
    if looks_like_agent_token(credential) {
        return Err(ApiError::AgentTokenNotAllowed);
    }
    jwt.verify(credential).map_err(ApiError::InvalidJwt)
}

/// The verify route's first step: a bearer credential of an agent token's
/// shape, hashed, or why it is refused. Its checksum is checked by
/// [`PresentedToken::check`] before any storage lookup.
pub fn presented_agent_token(
    header: Option<&HeaderValue>,
) -> Result<PresentedToken<'_>, VerifyRefusal> {
    let credential = parse_bearer(header).map_err(|e| match e {
        ApiError::MissingCredentials => VerifyRefusal::Missing,
        _ => VerifyRefusal::MalformedHeader,
    })?;
    if !looks_like_agent_token(credential) {
        return Err(if credential.matches('.').count() == 2 {
            VerifyRefusal::UserJwt
        } else {
            VerifyRefusal::Malformed(TokenError::WrongPrefix)
        });
    }
    PresentedToken::new(credential).map_err(VerifyRefusal::Malformed)
}

/// A request authenticated by a valid user JWT.
#[derive(Debug)]
pub struct UserJwt(pub UserId);

impl UserJwt {
    fn authenticate(req: &HttpRequest) -> Result<Self, ApiError> {
        let state = crate::http::state::app_state(req)?;
        state.limits.check(req)?;
        authenticate_user(req.headers().get(AUTHORIZATION), &state.jwt).map(UserJwt)
    }
}

impl FromRequest for UserJwt {
    type Error = ApiError;
    type Future = Ready<Result<Self, ApiError>>;

    fn from_request(req: &HttpRequest, _: &mut Payload) -> Self::Future {
        ready(Self::authenticate(req))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::JwtSettings;
    use jsonwebtoken::{encode, EncodingKey, Header};
    use proptest::prelude::*;
    use ring::rand::SystemRandom;
    use secrecy::SecretString;

    const SECRET: &str = "property-test-secret-of-32-bytes-or-more";

    /// What the verify route decides before any lookup, in its own two
    /// steps: the credential's shape, then its checksum.
    fn agent_token_hash(
        header: Option<&HeaderValue>,
    ) -> Result<crate::domain::token::TokenHash, VerifyRefusal> {
        let presented = presented_agent_token(header)?;
        presented.check().map_err(VerifyRefusal::Malformed)?;
        Ok(*presented.hash())
    }

    fn verifier() -> JwtVerifier {
        JwtVerifier::from_settings(&JwtSettings {
            hmac_secret: Some(SecretString::from(SECRET)),
            ..JwtSettings::default()
        })
        .unwrap()
    }

    fn jwt(sub: &str) -> String {
        let exp = crate::domain::clock::Clock::system().now() + 600;
        encode(
            &Header::default(),
            &serde_json::json!({"sub": sub, "exp": exp}),
            &EncodingKey::from_secret(SECRET.as_bytes()),
        )
        .unwrap()
    }

    fn header(value: &str) -> Option<HeaderValue> {
        HeaderValue::from_str(value).ok()
    }

    fn token() -> String {
        crate::domain::token::PlainToken::generate(&SystemRandom::new())
            .unwrap()
            .expose()
            .to_owned()
    }

    #[test]
    fn the_happy_paths_work() {
        let v = verifier();
        let user = authenticate_user(header(&format!("Bearer {}", jwt("alice"))).as_ref(), &v);
        assert_eq!(user.unwrap().as_str(), "alice");
        let t = token();
        assert!(agent_token_hash(header(&format!("Bearer {t}")).as_ref()).is_ok());
    }

    #[test]
    fn each_credential_is_refused_on_the_other_kind_of_route() {
        let v = verifier();
        let t = token();
        assert!(matches!(
            authenticate_user(header(&format!("Bearer {t}")).as_ref(), &v),
            Err(ApiError::AgentTokenNotAllowed)
        ));
        assert_eq!(
            agent_token_hash(header(&format!("Bearer {}", jwt("bob"))).as_ref()).unwrap_err(),
            VerifyRefusal::UserJwt
        );
        assert_eq!(agent_token_hash(None).unwrap_err(), VerifyRefusal::Missing);
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        #[test]
        fn arbitrary_header_bytes_never_authenticate_or_panic(bytes in proptest::collection::vec(any::<u8>(), 0..600)) {
            let v = verifier();
            if let Ok(value) = HeaderValue::from_bytes(&bytes) {
                prop_assert!(authenticate_user(Some(&value), &v).is_err());
                prop_assert!(agent_token_hash(Some(&value)).is_err());
            }
        }

        #[test]
        fn near_valid_tokens_are_refused_before_any_lookup(pos in 7usize..71, replacement in "[0-9a-zA-Z_.-]") {
            let t = token();
            let mut mutated = t.clone();
            mutated.replace_range(pos..pos + 1, &replacement);
            prop_assume!(mutated != t);
            let value = header(&format!("Bearer {mutated}"));
            prop_assert!(agent_token_hash(value.as_ref()).is_err());
        }

        #[test]
        fn truncated_or_extended_tokens_are_refused(cut in 0usize..71, extra in "[0-9a-f]{1,8}") {
            let t = token();
            let refused = agent_token_hash(header(&format!("Bearer {}", &t[..cut])).as_ref()).is_err();
            prop_assert!(refused);
            let refused = agent_token_hash(header(&format!("Bearer {t}{extra}")).as_ref()).is_err();
            prop_assert!(refused);
        }

        #[test]
        fn near_valid_jwts_are_refused(pos in 0usize..400, replacement in "[0-9a-zA-Z_-]") {
            let v = verifier();
            let good = jwt("carol");
            let pos = pos % good.len();
            prop_assume!(good.as_bytes()[pos] != b'.');
            let mut mutated = good.clone();
            mutated.replace_range(pos..pos + 1, &replacement);
            prop_assume!(mutated != good);
            let refused = authenticate_user(header(&format!("Bearer {mutated}")).as_ref(), &v).is_err();
            prop_assert!(refused);
        }

        #[test]
        fn huge_values_are_refused_without_panicking(len in 10_000usize..200_000, c in "[a-zA-Z0-9._-]") {
            let v = verifier();
            let value = header(&format!("Bearer {}", c.repeat(len)));
            prop_assert!(authenticate_user(value.as_ref(), &v).is_err());
            let value = header(&format!("Bearer sk_agt_{}", c.repeat(len)));
            prop_assert!(agent_token_hash(value.as_ref()).is_err());
        }
    }
}
