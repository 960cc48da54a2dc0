//! User JWT verification (RFC 8725 habits).
//!
//! Keys and their `Validation`s are prepared once at start. The algorithm is
//! pinned by config and never taken from the token: a token whose header
//! names an algorithm outside `jwt.algorithms`, or one the chosen key cannot
//! serve, is refused before any signature check. `exp` is always required;
//! `exp`, `nbf` and `iat` must be NumericDates from 1970 to 9999.
//! This module never logs or returns the token or key material.
//!
//! Verified tokens are remembered by their SHA-256 (never the token itself)
//! with the user id and validity window, so a client presenting the same JWT
//! again skips the signature check and claim parsing (as Envoy's
//! `jwt_cache_config` does). A JWT cannot be revoked and the keys are fixed
//! for the life of the process, so the only thing that can change a cached
//! answer is time: every hit re-checks `exp` and `nbf` with the leeway, and
//! refusals are never cached.

use std::collections::HashMap;
use std::fs;
use std::path::Path;
use std::str::FromStr;

use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, JwkSet, PublicKeyUse};
use jsonwebtoken::{
    decode, decode_header, get_current_timestamp, Algorithm, DecodingKey, Validation,
};
use quick_cache::sync::Cache;
use ring::digest::{digest, SHA256};
use secrecy::{ExposeSecret, SecretBox};
use serde_json::{Map, Value};

use crate::config::{ConfigError, JwtSettings};
use crate::domain::user::{UserId, UserIdError};

/// Shortest accepted HMAC secret, in bytes (RFC 7518 §3.2: at least the hash size).
pub const MIN_HMAC_SECRET_LEN: usize = 32;
/// Longest JWT we try to parse; anything bigger is refused unread.
const MAX_JWT_LEN: usize = 16 * 1024;
/// Verified JWTs remembered: room for 100,000 active users (about 100
/// bytes each; docs/configuration.md, "Memory").
const VERIFIED_CACHE_ENTRIES: usize = 128 * 1024;

/// The validity window of a verified JWT, from its `nbf` to its `exp`.
#[derive(Clone, Copy)]
struct Window {
    exp: u64,
    nbf: Option<u64>,
}

impl Window {
    /// jsonwebtoken's own rule: expired when `exp < now - leeway`, not yet
    /// valid when `nbf > now + leeway`.
    fn check_at(self, now: u64, leeway: u64) -> Result<(), JwtError> {
        if self.exp.saturating_add(leeway) < now {
            return Err(JwtError::Expired);
        }
        if self.nbf.is_some_and(|nbf| nbf > now.saturating_add(leeway)) {
            return Err(JwtError::NotYetValid);
        }
        Ok(())
    }
}

/// What a successful verification established.
#[derive(Clone)]
struct Verified {
    user: UserId,
    window: Window,
}

/// The latest time claim accepted: 9999-12-31T23:59:59Z. Anything later is
/// no date an issuer means, and far past it a float can no longer say
/// which second it names.
pub const MAX_NUMERIC_DATE: u64 = 253_402_300_799;

/// Which way a fractional time claim is rounded: always towards the
/// stricter answer (an earlier `exp`, a later `nbf`).
#[derive(Clone, Copy)]
enum Round {
    Down,
    Up,
}

/// A time claim read as RFC 7519 NumericDate: a JSON number of seconds
/// from 1970 to [`MAX_NUMERIC_DATE`], possibly fractional (RFC 7519 §2).
/// jsonwebtoken skips a time claim it cannot read as a u64 (a string,
/// `1e30`, 2^64, a negative number), which would switch its check off, so
/// the claims are read here and jsonwebtoken checks none of them.
fn numeric_date(
    claims: &Map<String, Value>,
    name: &'static str,
    round: Round,
) -> Result<Option<u64>, JwtError> {
    let Some(value) = claims.get(name) else {
        return Ok(None);
    };
    let refused = || JwtError::BadNumericDate(name);
    if let Some(whole) = value.as_u64() {
        return (whole <= MAX_NUMERIC_DATE)
            .then_some(Some(whole))
            .ok_or_else(refused);
    }
    let seconds = value.as_f64().ok_or_else(refused)?;
    if !(seconds.is_finite() && (0.0..=MAX_NUMERIC_DATE as f64).contains(&seconds)) {
        return Err(refused());
    }
    let whole = match round {
        Round::Down => seconds.floor(),
        Round::Up => seconds.ceil(),
    };
    // In range and whole, so the cast is exact.
    Ok(Some(whole as u64))
}

/// Why a JWT was refused. Shown to the client only as a short description in
/// `WWW-Authenticate` (never the token), and logged at debug level.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum JwtError {
    #[error("the token is not a well-formed JWT")]
    Malformed,
    #[error("the token's algorithm is not allowed")]
    AlgorithmNotAllowed,
    #[error("the token's key id is unknown")]
    UnknownKid,
    #[error("the token has no key id and several keys are configured")]
    MissingKid,
    #[error("no configured key can verify the token")]
    NoKey,
    #[error("the token signature is invalid")]
    BadSignature,
    #[error("the token has expired")]
    Expired,
    #[error("the token is not valid yet")]
    NotYetValid,
    #[error("the token issuer is not accepted")]
    WrongIssuer,
    #[error("the token audience is not accepted")]
    WrongAudience,
    #[error("the token lacks the required claim {0}")]
    MissingClaim(String),
    #[error("the token's {0} claim is not a number of seconds between 1970 and 9999")]
    BadNumericDate(&'static str),
    #[error("the token's user claim is missing or not a string")]
    MissingUserClaim,
    #[error("the token's user claim is invalid: {0}")]
    BadUserClaim(UserIdError),
}

impl From<jsonwebtoken::errors::Error> for JwtError {
    fn from(err: jsonwebtoken::errors::Error) -> Self {
        use jsonwebtoken::errors::ErrorKind as K;
        match err.kind() {
            K::InvalidSignature => JwtError::BadSignature,
            K::ExpiredSignature => JwtError::Expired,
            K::ImmatureSignature => JwtError::NotYetValid,
            K::InvalidIssuer => JwtError::WrongIssuer,
            K::InvalidAudience => JwtError::WrongAudience,
            K::MissingRequiredClaim(c) => JwtError::MissingClaim(c.clone()),
            K::InvalidAlgorithm | K::InvalidAlgorithmName | K::MissingAlgorithm => {
                JwtError::AlgorithmNotAllowed
            }
            _ => JwtError::Malformed,
        }
    }
}

/// What a key can verify: the family and, for EC, the curve.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum KeyKind {
    Hmac,
    Rsa,
    EcP256,
    EcP384,
    Ed25519,
}

impl KeyKind {
    fn serves(self, alg: Algorithm) -> bool {
        use Algorithm::*;
        match self {
            KeyKind::Hmac => matches!(alg, HS256 | HS384 | HS512),
            KeyKind::Rsa => matches!(alg, RS256 | RS384 | RS512 | PS256 | PS384 | PS512),
            KeyKind::EcP256 => alg == ES256,
            KeyKind::EcP384 => alg == ES384,
            KeyKind::Ed25519 => alg == EdDSA,
        }
    }

    fn describe(self) -> &'static str {
        match self {
            KeyKind::Hmac => "an HMAC secret",
            KeyKind::Rsa => "an RSA key",
            KeyKind::EcP256 => "an EC P-256 key",
            KeyKind::EcP384 => "an EC P-384 key",
            KeyKind::Ed25519 => "an Ed25519 key",
        }
    }
}

struct VerifyKey {
    kind: KeyKind,
    key: DecodingKey,
    /// Lists exactly the configured algorithms this key serves.
    validation: Validation,
}

/// Verifies user JWTs against the configured keys. Built once at start.
pub struct JwtVerifier {
    allowed: Vec<Algorithm>,
    /// From `hmac_secret`/`hmac_secret_file` and `public_key_file`.
    static_keys: Vec<VerifyKey>,
    /// From `jwks_file`, by `kid`.
    jwks: HashMap<String, VerifyKey>,
    user_claim: String,
    leeway: u64,
    /// SHA-256 of the compact JWT → what verifying it established.
    verified: Cache<[u8; 32], Verified>,
}

impl std::fmt::Debug for JwtVerifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JwtVerifier")
            .field("allowed", &self.allowed)
            .field("static_keys", &self.static_keys.len())
            .field("jwks_keys", &self.jwks.len())
            .field("user_claim", &self.user_claim)
            .finish()
    }
}

impl JwtVerifier {
    /// Loads every key and checks that keys and algorithms fit together.
    pub fn from_settings(settings: &JwtSettings) -> Result<Self, ConfigError> {
        let mut allowed = Vec::new();
        for name in &settings.algorithms {
            let alg = Algorithm::from_str(name).map_err(|_| {
                ConfigError::new(format!(
                    "jwt.algorithms lists {name:?}, which is not one of HS256, HS384, HS512, RS256, RS384, RS512, PS256, PS384, PS512, ES256, ES384, EdDSA."
                ))
            })?;
            if !allowed.contains(&alg) {
                allowed.push(alg);
            }
        }
        let base = base_validation(settings);
        let validation_for = |kind: KeyKind, pinned: Option<Algorithm>| -> Option<Validation> {
            let algs: Vec<Algorithm> = allowed
                .iter()
                .copied()
                .filter(|a| kind.serves(*a) && pinned.is_none_or(|p| p == *a))
                .collect();
            if algs.is_empty() {
                return None;
            }
            let mut v = base.clone();
            v.algorithms = algs;
            Some(v)
        };

        let mut static_keys = Vec::new();
        if let Some(secret) = load_hmac_secret(settings)? {
            let key_name = if settings.hmac_secret.is_some() {
                "jwt.hmac_secret"
            } else {
                "jwt.hmac_secret_file"
            };
            let validation = validation_for(KeyKind::Hmac, None).ok_or_else(|| {
                ConfigError::new(format!(
                    "{key_name} is set but jwt.algorithms lists no HS256, HS384 or HS512."
                ))
            })?;
            static_keys.push(VerifyKey {
                kind: KeyKind::Hmac,
                key: DecodingKey::from_secret(secret.expose_secret()),
                validation,
            });
        }
        if let Some(path) = &settings.public_key_file {
            let (kind, key) = load_public_key(path)?;
            let validation = validation_for(kind, None).ok_or_else(|| {
                ConfigError::new(format!(
                    "jwt.public_key_file holds {} but jwt.algorithms lists no algorithm it can verify.",
                    kind.describe()
                ))
            })?;
            static_keys.push(VerifyKey {
                kind,
                key,
                validation,
            });
        }

        let mut jwks = HashMap::new();
        if let Some(path) = &settings.jwks_file {
            for (kid, kind, pinned, key) in load_jwks(path)? {
                // A key the configured algorithms cannot use is simply not offered.
                let Some(validation) = validation_for(kind, pinned) else {
                    continue;
                };
                jwks.insert(
                    kid,
                    VerifyKey {
                        kind,
                        key,
                        validation,
                    },
                );
            }
            if jwks.is_empty() {
                return Err(ConfigError::new(
                    "jwt.jwks_file has no signing key usable with jwt.algorithms.",
                ));
            }
        }

        if static_keys.is_empty() && jwks.is_empty() {
            return Err(ConfigError::new(
                "No JWT key is configured: set jwt.hmac_secret, jwt.hmac_secret_file, jwt.public_key_file or jwt.jwks_file.",
            ));
        }
        for alg in &allowed {
            let served = static_keys
                .iter()
                .chain(jwks.values())
                .any(|k| k.kind.serves(*alg) && k.validation.algorithms.contains(alg));
            if !served {
                return Err(ConfigError::new(format!(
                    "jwt.algorithms lists {alg:?} but no configured key can verify it."
                )));
            }
        }

        check_audience(settings)?;
        Ok(Self {
            allowed,
            static_keys,
            jwks,
            user_claim: settings.user_claim.clone(),
            leeway: settings.leeway_secs,
            verified: Cache::new(VERIFIED_CACHE_ENTRIES),
        })
    }

    /// A one-line description of the loaded keys, for `check-config`.
    pub fn describe_keys(&self) -> String {
        let mut parts: Vec<String> = self
            .static_keys
            .iter()
            .map(|k| k.kind.describe().to_owned())
            .collect();
        if !self.jwks.is_empty() {
            parts.push(format!("{} JWKS key(s)", self.jwks.len()));
        }
        parts.join(" and ")
    }

    /// Verifies a user JWT and returns the user id from the configured claim.
    pub fn verify(&self, token: &str) -> Result<UserId, JwtError> {
        if token.len() > MAX_JWT_LEN {
            return Err(JwtError::Malformed);
        }
        let mut key = [0u8; 32];
        key.copy_from_slice(digest(&SHA256, token.as_bytes()).as_ref());
        let now = get_current_timestamp();
        if let Some(known) = self.verified.get(&key) {
            return match known.window.check_at(now, self.leeway) {
                Ok(()) => Ok(known.user),
                Err(e) => {
                    self.verified.remove(&key);
                    Err(e)
                }
            };
        }
        let verified = self.verify_fully(token, now)?;
        let user = verified.user.clone();
        self.verified.insert(key, verified);
        Ok(user)
    }

    /// The signature, issuer and audience (by jsonwebtoken), then the time
    /// claims and the user claim (here).
    fn verify_fully(&self, token: &str, now: u64) -> Result<Verified, JwtError> {
        let header = decode_header(token).map_err(|_| JwtError::Malformed)?;
        if !self.allowed.contains(&header.alg) {
            return Err(JwtError::AlgorithmNotAllowed);
        }
        let key = self.select_key(header.alg, header.kid.as_deref())?;
        if !key.validation.algorithms.contains(&header.alg) {
            return Err(JwtError::AlgorithmNotAllowed);
        }
        let claims = decode::<Map<String, Value>>(token, &key.key, &key.validation)?.claims;
        let exp = numeric_date(&claims, "exp", Round::Down)?
            .ok_or_else(|| JwtError::MissingClaim("exp".to_owned()))?;
        let nbf = numeric_date(&claims, "nbf", Round::Up)?;
        // Not checked against the clock (issuers' clocks drift), only read.
        numeric_date(&claims, "iat", Round::Down)?;
        let window = Window { exp, nbf };
        window.check_at(now, self.leeway)?;
        let claim = claims
            .get(&self.user_claim)
            .and_then(Value::as_str)
            .ok_or(JwtError::MissingUserClaim)?;
        let user = UserId::from_claim(claim).map_err(JwtError::BadUserClaim)?;
        Ok(Verified { user, window })
    }

    fn select_key(&self, alg: Algorithm, kid: Option<&str>) -> Result<&VerifyKey, JwtError> {
        if let (Some(kid), false) = (kid, self.jwks.is_empty()) {
            return self.jwks.get(kid).ok_or(JwtError::UnknownKid);
        }
        if let Some(key) = self.static_keys.iter().find(|k| k.kind.serves(alg)) {
            return Ok(key);
        }
        // No kid: acceptable only when exactly one JWKS key could be meant.
        let mut candidates = self.jwks.values().filter(|k| k.kind.serves(alg));
        match (candidates.next(), candidates.next()) {
            (Some(only), None) => Ok(only),
            (Some(_), Some(_)) => Err(JwtError::MissingKid),
            (None, _) => Err(JwtError::NoKey),
        }
    }
}

/// A public key or a JWKS usually belongs to an identity provider that signs
/// ID tokens for many applications with the same keys; without an audience
/// check, a token it issued to any of them would be accepted here. An HMAC
/// secret is shared with one application, so `aud` stays optional with it.
fn check_audience(settings: &JwtSettings) -> Result<(), ConfigError> {
    let third_party: Vec<&str> = [
        ("jwt.public_key_file", settings.public_key_file.is_some()),
        ("jwt.jwks_file", settings.jwks_file.is_some()),
    ]
    .into_iter()
    .filter_map(|(key, set)| set.then_some(key))
    .collect();
    if third_party.is_empty() || settings.audience.is_some() {
        return Ok(());
    }
    if settings.require_audience {
        return Err(ConfigError::new(format!(
            "jwt.audience is required with {} (the issuer's tokens for other applications would pass): set it to the aud your application's tokens carry, or set jwt.require_audience = false to accept any audience.",
            third_party.join(" and ")
        )));
    }
    log::warn!(
        "jwt.require_audience = false: user JWTs are accepted whatever their aud, including tokens the issuer minted for other applications; set jwt.audience"
    );
    Ok(())
}

fn base_validation(settings: &JwtSettings) -> Validation {
    let mut v = Validation::new(Algorithm::HS256);
    // The time claims are read and checked by `numeric_date` and `Verified`.
    v.validate_exp = false;
    v.validate_nbf = false;
    let mut required = Vec::new();
    if let Some(iss) = &settings.issuer {
        v.set_issuer(&[iss]);
        required.push("iss");
    }
    // jsonwebtoken rejects any `aud` when no audience is set and validate_aud
    // is on, so the check follows the config exactly.
    match &settings.audience {
        Some(aud) => {
            v.set_audience(&[aud]);
            v.validate_aud = true;
            required.push("aud");
        }
        None => v.validate_aud = false,
    }
    v.set_required_spec_claims(&required);
    v
}

fn load_hmac_secret(settings: &JwtSettings) -> Result<Option<SecretBox<[u8]>>, ConfigError> {
    let secret: SecretBox<[u8]> = match (&settings.hmac_secret, &settings.hmac_secret_file) {
        (Some(_), Some(_)) => {
            return Err(ConfigError::new(
                "Set only one of jwt.hmac_secret and jwt.hmac_secret_file.",
            ))
        }
        (None, None) => return Ok(None),
        (Some(s), None) => SecretBox::new(s.expose_secret().as_bytes().into()),
        (None, Some(path)) => {
            let mut bytes = fs::read(path).map_err(|e| {
                ConfigError::new(format!(
                    "jwt.hmac_secret_file {} cannot be read: {e}.",
                    path.display()
                ))
            })?;
            // `echo secret > file` and `openssl rand -hex 32 > file` add a newline.
            while bytes.last().is_some_and(|b| b.is_ascii_whitespace()) {
                bytes.pop();
            }
            SecretBox::new(bytes.into_boxed_slice())
        }
    };
    let key = if settings.hmac_secret.is_some() {
        "jwt.hmac_secret"
    } else {
        "jwt.hmac_secret_file"
    };
    if secret.expose_secret().len() < MIN_HMAC_SECRET_LEN {
        return Err(ConfigError::new(format!(
            "{key} must be at least {MIN_HMAC_SECRET_LEN} bytes long."
        )));
    }
    Ok(Some(secret))
}

const OID_P256: &[u8] = &[0x06, 0x08, 0x2A, 0x86, 0x48, 0xCE, 0x3D, 0x03, 0x01, 0x07];
const OID_P384: &[u8] = &[0x06, 0x05, 0x2B, 0x81, 0x04, 0x00, 0x22];

fn load_public_key(path: &Path) -> Result<(KeyKind, DecodingKey), ConfigError> {
    let bytes = fs::read(path).map_err(|e| {
        ConfigError::new(format!(
            "jwt.public_key_file {} cannot be read: {e}.",
            path.display()
        ))
    })?;
    let not_a_key = || {
        ConfigError::new(format!(
            "jwt.public_key_file {} is not a PEM public key (RSA, EC P-256/P-384 or Ed25519).",
            path.display()
        ))
    };
    // jsonwebtoken also takes an RSA *private* key here; an issuer's private
    // key has no business on the verifying host, so refuse anything but a public key.
    let parsed = pem::parse(&bytes).map_err(|_| not_a_key())?;
    if !matches!(parsed.tag(), "PUBLIC KEY" | "RSA PUBLIC KEY") {
        return Err(not_a_key());
    }
    if let Ok(key) = DecodingKey::from_rsa_pem(&bytes) {
        return Ok((KeyKind::Rsa, key));
    }
    if let Ok(key) = DecodingKey::from_ed_pem(&bytes) {
        return Ok((KeyKind::Ed25519, key));
    }
    if let Ok(key) = DecodingKey::from_ec_pem(&bytes) {
        // The curve is named by its OID in the SubjectPublicKeyInfo.
        let contents = parsed.contents();
        let has = |oid: &[u8]| contents.windows(oid.len()).any(|w| w == oid);
        let kind = if has(OID_P256) {
            KeyKind::EcP256
        } else if has(OID_P384) {
            KeyKind::EcP384
        } else {
            return Err(ConfigError::new(format!(
                "jwt.public_key_file {} is an EC key on a curve other than P-256 or P-384.",
                path.display()
            )));
        };
        return Ok((kind, key));
    }
    Err(not_a_key())
}

type JwksEntry = (String, KeyKind, Option<Algorithm>, DecodingKey);

fn load_jwks(path: &Path) -> Result<Vec<JwksEntry>, ConfigError> {
    let text = fs::read_to_string(path).map_err(|e| {
        ConfigError::new(format!(
            "jwt.jwks_file {} cannot be read: {e}.",
            path.display()
        ))
    })?;
    let set: JwkSet = serde_json::from_str(&text).map_err(|e| {
        ConfigError::new(format!(
            "jwt.jwks_file {} is not a valid JWK set: {e}.",
            path.display()
        ))
    })?;
    let several = set.keys.len() > 1;
    let mut out: Vec<JwksEntry> = Vec::new();
    for (i, jwk) in set.keys.iter().enumerate() {
        if matches!(jwk.common.public_key_use, Some(PublicKeyUse::Encryption)) {
            continue;
        }
        let kid = match (&jwk.common.key_id, several) {
            (Some(kid), _) => kid.clone(),
            (None, false) => String::new(),
            (None, true) => {
                return Err(ConfigError::new(format!(
                "jwt.jwks_file key #{} has no kid; every key needs one when the set has several.",
                i + 1
            )))
            }
        };
        if out.iter().any(|(k, ..)| *k == kid) {
            return Err(ConfigError::new(format!(
                "jwt.jwks_file has two keys with kid {kid:?}."
            )));
        }
        let kind = match &jwk.algorithm {
            AlgorithmParameters::RSA(_) => KeyKind::Rsa,
            AlgorithmParameters::EllipticCurve(p) => match p.curve {
                EllipticCurve::P256 => KeyKind::EcP256,
                EllipticCurve::P384 => KeyKind::EcP384,
                _ => {
                    return Err(ConfigError::new(format!(
                        "jwt.jwks_file key {kid:?} uses an unsupported curve (P-256 and P-384 are supported)."
                    )))
                }
            },
            AlgorithmParameters::OctetKeyPair(p) if p.curve == EllipticCurve::Ed25519 => {
                KeyKind::Ed25519
            }
            AlgorithmParameters::OctetKeyPair(_) => {
                return Err(ConfigError::new(format!(
                    "jwt.jwks_file key {kid:?} is an OKP key on a curve other than Ed25519."
                )))
            }
            AlgorithmParameters::OctetKey(_) => KeyKind::Hmac,
        };
        let pinned = match jwk.common.key_algorithm {
            Some(a) => Some(Algorithm::from_str(&a.to_string()).map_err(|_| {
                ConfigError::new(format!(
                    "jwt.jwks_file key {kid:?} has alg {a}, which is not a signature algorithm."
                ))
            })?),
            None => None,
        };
        if let Some(p) = pinned {
            if !kind.serves(p) {
                return Err(ConfigError::new(format!(
                    "jwt.jwks_file key {kid:?} has alg {p:?}, which does not fit {}.",
                    kind.describe()
                )));
            }
        }
        let key = DecodingKey::from_jwk(jwk).map_err(|e| {
            ConfigError::new(format!("jwt.jwks_file key {kid:?} cannot be loaded: {e}."))
        })?;
        if kind == KeyKind::Hmac {
            if let AlgorithmParameters::OctetKey(p) = &jwk.algorithm {
                // base64url without padding: 4 characters carry 3 bytes.
                if p.value.len() * 3 / 4 < MIN_HMAC_SECRET_LEN {
                    return Err(ConfigError::new(format!(
                        "jwt.jwks_file key {kid:?} is an HMAC key shorter than {MIN_HMAC_SECRET_LEN} bytes."
                    )));
                }
            }
        }
        out.push((kid, kind, pinned, key));
    }
    Ok(out)
}

#[cfg(test)]
mod tests;
