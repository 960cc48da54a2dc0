//! Authentication: the decisions for both kinds of credential as pure
//! functions of the `Authorization` header (fuzzed and property-tested), and
//! `UserJwt`, the extractor the management routes use.
//!
//! Missing or malformed headers, agent tokens and invalid JWTs each map to
//! their own `ApiError`; the credential itself is never logged or echoed.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use actix_web::dev::Payload;
use actix_web::http::header::{HeaderValue, AUTHORIZATION};
use actix_web::{web, FromRequest, HttpRequest};
use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use secrecy::zeroize::Zeroizing;

use crate::domain::jwt::{JwtError, JwtVerifier};
use crate::domain::token::{looks_like_agent_token, PresentedToken, TokenError};
use crate::domain::user::UserId;
use crate::http::error::{ApiError, VerifyRefusal};
use crate::http::state::AppState;

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
    jwt.verify(credential).map_err(|e| match e {
        JwtError::NoKeySet => ApiError::KeysNotLoaded,
        e => ApiError::InvalidJwt(e),
    })
}

/// Where the verify route decodes a Basic credential: empty (and free)
/// unless one is presented, wiped when dropped.
pub type BasicScratch = Zeroizing<Vec<u8>>;

/// Longest Basic credential decoded (a user name and a 71-character
/// token fit many times over); longer ones are refused undecoded.
const MAX_BASIC_BASE64: usize = 1024;

/// The verify route's first step: an agent token from the `Authorization`
/// header, hashed, or why it is refused. Its checksum is checked by
/// [`PresentedToken::check`] before any storage lookup.
///
/// `Bearer <token>`, or `Basic base64(<any user name>:<token>)` for
/// clients that only speak Basic (git, registries, WebDAV); a Basic
/// credential with an empty password may carry the token as its user
/// name. A Basic credential is decoded into `scratch`.
pub fn presented_agent_token<'a>(
    header: Option<&'a HeaderValue>,
    scratch: &'a mut BasicScratch,
) -> Result<PresentedToken<'a>, VerifyRefusal> {
    let credential = match parse_bearer(header) {
        Ok(credential) => credential,
        Err(ApiError::MissingCredentials) => return Err(VerifyRefusal::Missing),
        Err(_) => basic_password(header, scratch)?,
    };
    presented_credential(credential)
}

/// The verify route's first step for `verify.api_key_header`: the header's
/// whole value (surrounding blanks aside) is the token.
pub fn presented_bare_token(value: &HeaderValue) -> Result<PresentedToken<'_>, VerifyRefusal> {
    let bytes = value.as_bytes().trim_ascii();
    if bytes.is_empty() {
        return Err(VerifyRefusal::Missing);
    }
    let credential = std::str::from_utf8(bytes).map_err(|_| VerifyRefusal::MalformedHeader)?;
    presented_credential(credential)
}

/// A credential of an agent token's shape, hashed.
fn presented_credential(credential: &str) -> Result<PresentedToken<'_>, VerifyRefusal> {
    if !looks_like_agent_token(credential) {
        return Err(if credential.matches('.').count() == 2 {
            VerifyRefusal::UserJwt
        } else {
            VerifyRefusal::Malformed(TokenError::WrongPrefix)
        });
    }
    PresentedToken::new(credential).map_err(VerifyRefusal::Malformed)
}

/// The password of `Authorization: Basic base64(user:password)` (RFC
/// 7617), or the user name when the password is empty.
fn basic_password<'a>(
    header: Option<&HeaderValue>,
    scratch: &'a mut BasicScratch,
) -> Result<&'a str, VerifyRefusal> {
    let encoded = header
        .map(HeaderValue::as_bytes)
        .and_then(|bytes| {
            let (scheme, rest) = bytes.split_at_checked(6)?;
            scheme.eq_ignore_ascii_case(b"basic ").then_some(rest)
        })
        .ok_or(VerifyRefusal::MalformedHeader)?
        .trim_ascii();
    if encoded.is_empty() {
        return Err(VerifyRefusal::Missing);
    }
    if encoded.len() > MAX_BASIC_BASE64 {
        return Err(VerifyRefusal::MalformedHeader);
    }
    scratch.clear();
    STANDARD
        .decode_vec(encoded, scratch)
        .map_err(|_| VerifyRefusal::MalformedHeader)?;
    let decoded: &'a [u8] = scratch.as_slice();
    let (user, password) = match decoded.iter().position(|&b| b == b':') {
        Some(colon) => (&decoded[..colon], &decoded[colon + 1..]),
        None => return Err(VerifyRefusal::MalformedHeader),
    };
    let token = if password.is_empty() { user } else { password };
    if token.is_empty() {
        return Err(VerifyRefusal::Missing);
    }
    std::str::from_utf8(token).map_err(|_| VerifyRefusal::MalformedHeader)
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

    /// After a token named a key the set lacks: once the identity
    /// provider's set is fetched again (or the cooldown says no), verify
    /// again. Only this request waits; the others go on with the set in use.
    async fn after_refetch(
        state: web::Data<AppState>,
        header: Option<HeaderValue>,
    ) -> Result<Self, ApiError> {
        if let Some(idp) = &state.idp {
            idp.after_unknown_kid().await;
        }
        authenticate_user(header.as_ref(), &state.jwt).map(UserJwt)
    }
}

/// The extractor's answer: at once, or after a refetch of the keys.
pub enum UserJwtFuture {
    Ready(Option<Result<UserJwt, ApiError>>),
    Refetching(Pin<Box<dyn Future<Output = Result<UserJwt, ApiError>>>>),
}

impl Future for UserJwtFuture {
    type Output = Result<UserJwt, ApiError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.get_mut() {
            UserJwtFuture::Ready(answer) => Poll::Ready(
                answer
                    .take()
                    .unwrap_or(Err(ApiError::Internal("user JWT answer polled twice"))),
            ),
            UserJwtFuture::Refetching(future) => future.as_mut().poll(cx),
        }
    }
}

impl FromRequest for UserJwt {
    type Error = ApiError;
    type Future = UserJwtFuture;

    fn from_request(req: &HttpRequest, _: &mut Payload) -> Self::Future {
        let answer = Self::authenticate(req);
        if matches!(
            answer,
            Err(ApiError::InvalidJwt(JwtError::UnknownKid) | ApiError::KeysNotLoaded)
        ) {
            if let Some(state) = req
                .app_data::<web::Data<AppState>>()
                .filter(|state| state.idp.is_some())
            {
                let header = req.headers().get(AUTHORIZATION).cloned();
                return UserJwtFuture::Refetching(Box::pin(Self::after_refetch(
                    state.clone(),
                    header,
                )));
            }
        }
        UserJwtFuture::Ready(Some(answer))
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
        let mut scratch = BasicScratch::default();
        let presented = presented_agent_token(header, &mut scratch)?;
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

    fn basic(user: &str, password: &str) -> Option<HeaderValue> {
        use base64::Engine;
        let encoded =
            base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
        header(&format!("Basic {encoded}"))
    }

    #[test]
    fn a_basic_password_or_a_lone_user_name_carries_the_token_as_bearer_does() {
        let t = token();
        let bearer = agent_token_hash(header(&format!("Bearer {t}")).as_ref()).unwrap();
        for value in [
            basic("x-access-token", &t),
            basic("", &t),
            basic("git", &t),
            basic(&t, ""),
        ] {
            assert_eq!(agent_token_hash(value.as_ref()).unwrap(), bearer);
        }
        let value = basic("u", &t).unwrap();
        let lower = header(&value.to_str().unwrap().replacen("Basic", "basic", 1));
        assert_eq!(agent_token_hash(lower.as_ref()).unwrap(), bearer);
    }

    #[test]
    fn basic_credentials_without_a_token_are_refused_with_the_right_reason() {
        assert_eq!(
            agent_token_hash(basic("alice", "hunter2").as_ref()).unwrap_err(),
            VerifyRefusal::Malformed(TokenError::WrongPrefix)
        );
        assert_eq!(
            agent_token_hash(basic("alice", &jwt("alice")).as_ref()).unwrap_err(),
            VerifyRefusal::UserJwt
        );
        assert_eq!(
            agent_token_hash(basic("", "").as_ref()).unwrap_err(),
            VerifyRefusal::Missing
        );
        for bad in ["Basic !!!notbase64", "Basic dXNlcg==", "Digest abc"] {
            assert_eq!(
                agent_token_hash(header(bad).as_ref()).unwrap_err(),
                VerifyRefusal::MalformedHeader,
                "{bad}"
            );
        }
        let huge = format!("Basic {}", "QUFB".repeat(1000));
        assert_eq!(
            agent_token_hash(header(&huge).as_ref()).unwrap_err(),
            VerifyRefusal::MalformedHeader
        );
    }

    #[test]
    fn a_bare_header_value_is_the_token() {
        let t = token();
        let bearer = agent_token_hash(header(&format!("Bearer {t}")).as_ref()).unwrap();
        let bare = header(&format!(" {t} ")).unwrap();
        assert_eq!(*presented_bare_token(&bare).unwrap().hash(), bearer);
        let with_scheme = header(&format!("Bearer {t}")).unwrap();
        assert!(presented_bare_token(&with_scheme).is_err());
        assert_eq!(
            presented_bare_token(&header(" ").unwrap()).err(),
            Some(VerifyRefusal::Missing)
        );
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
