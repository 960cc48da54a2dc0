//! User JWT verification (RFC 8725 habits).
//!
//! Keys and their `Validation`s are prepared when a key set is loaded (at
//! start, on reload, when an identity provider's set is fetched) and
//! swapped in whole, without a lock on the verifying path. The algorithm is
//! pinned by config and never taken from the token: a token whose header
//! names an algorithm outside `jwt.algorithms`, or one the chosen key cannot
//! serve, is refused before any signature check. `exp` is always required;
//! `exp`, `nbf` and `iat` must be NumericDates from 1970 to 9999.
//! This module never logs or returns the token or key material, and does
//! no network I/O (`crate::idp` fetches and hands sets in).
//!
//! Verified tokens are remembered by their SHA-256 (never the token itself)
//! with the user id, validity window and key-set generation, so a client
//! presenting the same JWT again skips the signature check and claim parsing
//! (as Envoy's `jwt_cache_config` does). A JWT cannot be revoked, so what
//! can change a remembered answer is time, checked on every hit with the
//! leeway, and its key leaving the set: then the generation moves on and
//! the token is checked again in full. Refusals are never remembered.

mod keys;

use std::sync::{Arc, Mutex};

use arc_swap::ArcSwap;
use jsonwebtoken::{decode, decode_header, get_current_timestamp, Algorithm};
use quick_cache::sync::Cache;
use ring::digest::{digest, SHA256};
use serde_json::{Map, Value};

use crate::config::{ConfigError, JwtSettings};
use crate::domain::user::{UserId, UserIdError};

pub use keys::{IdpKeys, JwksError, KeySet, MIN_HMAC_SECRET_LEN};
use keys::{KeyFiles, KeyRules, VerifyKey};
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

/// What a successful verification established, with which key set.
#[derive(Clone)]
struct Verified {
    user: UserId,
    window: Window,
    generation: u64,
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
    #[error("the identity provider's keys are not loaded yet")]
    NoKeySet,
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

/// Verifies user JWTs against the current key set.
pub struct JwtVerifier {
    rules: KeyRules,
    /// The files a reload reads again.
    files: KeyFiles,
    /// The key of an inline `jwt.hmac_secret` (kept across reloads).
    inline_hmac: Option<VerifyKey>,
    /// Keys come from an identity provider's URL, fetched by `crate::idp`.
    from_idp: bool,
    keys: ArcSwap<KeySet>,
    /// Serialises replacements (never taken when verifying).
    replacing: Mutex<()>,
    user_claim: String,
    leeway: u64,
    /// SHA-256 of the compact JWT → what verifying it established.
    verified: Cache<[u8; 32], Verified>,
}

impl std::fmt::Debug for JwtVerifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let keys = self.keys.load();
        f.debug_struct("JwtVerifier")
            .field("allowed", &self.rules.allowed)
            .field("static_keys", &keys.static_keys.len())
            .field("jwks_keys", &keys.jwks.len())
            .field("from_idp", &self.from_idp)
            .field("user_claim", &self.user_claim)
            .finish()
    }
}

/// Config keys that name where keys come from; an identity provider's URL
/// excludes the others (its set is all the keys).
const URL_SOURCES: [&str; 2] = ["jwt.jwks_url", "jwt.oidc_discovery_url"];

fn configured_sources(settings: &JwtSettings) -> Vec<&'static str> {
    [
        ("jwt.hmac_secret", settings.hmac_secret.is_some()),
        ("jwt.hmac_secret_file", settings.hmac_secret_file.is_some()),
        ("jwt.public_key_file", settings.public_key_file.is_some()),
        ("jwt.jwks_file", settings.jwks_file.is_some()),
        ("jwt.jwks_url", settings.jwks_url.is_some()),
        (
            "jwt.oidc_discovery_url",
            settings.oidc_discovery_url.is_some(),
        ),
    ]
    .into_iter()
    .filter_map(|(key, set)| set.then_some(key))
    .collect()
}

/// A URL source stands alone: two sources of one issuer's keys would
/// disagree at the first rotation.
fn check_sources(sources: &[&'static str]) -> Result<bool, ConfigError> {
    let urls: Vec<&str> = sources
        .iter()
        .copied()
        .filter(|s| URL_SOURCES.contains(s))
        .collect();
    if urls.is_empty() {
        return Ok(false);
    }
    if sources.len() > 1 {
        return Err(ConfigError::new(format!(
            "Set only one JWT key source: {} are all set, and {} brings every key the identity provider publishes; remove the others.",
            sources.join(", "),
            urls[0]
        )));
    }
    Ok(true)
}

impl JwtVerifier {
    /// Loads every key file and checks that keys and algorithms fit
    /// together. With an identity provider's URL the set starts empty:
    /// `crate::idp` fetches it and calls [`JwtVerifier::replace_keys`].
    pub fn from_settings(settings: &JwtSettings) -> Result<Self, ConfigError> {
        let rules = KeyRules::from_settings(settings)?;
        let sources = configured_sources(settings);
        let from_idp = check_sources(&sources)?;
        let inline_hmac = rules.inline_hmac(settings)?;
        let files = KeyFiles::from_settings(settings);
        let set = rules.load_files(&files, inline_hmac.as_ref())?;
        if from_idp {
            if rules.allowed.iter().all(|a| keys::KeyKind::Hmac.serves(*a)) {
                return Err(ConfigError::new(format!(
                    "{} is set but jwt.algorithms lists only HMAC algorithms; list the identity provider's signing algorithm (RS256 for most).",
                    sources[0]
                )));
            }
        } else {
            if set.is_empty() {
                return Err(ConfigError::new(
                    "No JWT key is configured: set jwt.hmac_secret, jwt.hmac_secret_file, jwt.public_key_file, jwt.jwks_file, jwt.jwks_url or jwt.oidc_discovery_url.",
                ));
            }
            rules.check_served(&set)?;
        }
        check_audience(settings)?;
        Ok(Self {
            rules,
            files,
            inline_hmac,
            from_idp,
            keys: ArcSwap::from_pointee(set),
            replacing: Mutex::new(()),
            user_claim: settings.user_claim.clone(),
            leeway: settings.leeway_secs,
            verified: Cache::new(VERIFIED_CACHE_ENTRIES),
        })
    }

    /// Whether the keys come from an identity provider's URL.
    pub fn from_idp(&self) -> bool {
        self.from_idp
    }

    /// Whether any key is loaded (an identity provider's set may not be yet).
    pub fn has_keys(&self) -> bool {
        !self.keys.load().is_empty()
    }

    /// How many keys are loaded.
    pub fn key_count(&self) -> usize {
        self.keys.load().len()
    }

    /// The key ids of the current JWK set, sorted (kids are public).
    pub fn kids(&self) -> Vec<String> {
        self.keys
            .load()
            .kids()
            .into_iter()
            .map(str::to_owned)
            .collect()
    }

    /// Reads the key files again (`hmac_secret_file`, `public_key_file`,
    /// `jwks_file`) and swaps them in. A file that no longer loads, or a set
    /// that leaves a configured algorithm without a key, is refused and the
    /// current keys stay. `Ok(None)`: no key file is configured.
    pub fn reload_files(&self) -> Result<Option<usize>, ConfigError> {
        if self.files.is_empty() {
            return Ok(None);
        }
        let set = self
            .rules
            .load_files(&self.files, self.inline_hmac.as_ref())?;
        self.rules.check_served(&set)?;
        let count = set.len();
        self.replace_keys(set);
        Ok(Some(count))
    }

    /// Parses an identity provider's JWK set against `jwt.algorithms` (see
    /// [`IdpKeys`]); nothing changes until [`JwtVerifier::replace_keys`].
    pub fn parse_idp_keys(&self, body: &[u8]) -> Result<IdpKeys, JwksError> {
        self.rules.idp_keys(body)
    }

    /// Makes `set` the current key set. When a key left (or changed under
    /// its kid), answers remembered with the old set are checked again.
    /// Returns whether any key left.
    pub fn replace_keys(&self, mut set: KeySet) -> bool {
        let _one_at_a_time = self
            .replacing
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let old = self.keys.load();
        let lost = !set.keeps_all_of(&old);
        set.generation = old.generation + u64::from(lost);
        self.keys.store(Arc::new(set));
        lost
    }

    /// A one-line description of the loaded keys, for `check-config`.
    pub fn describe_keys(&self) -> String {
        let keys = self.keys.load();
        let mut parts: Vec<String> = keys
            .static_keys
            .iter()
            .map(|k| k.kind.describe().to_owned())
            .collect();
        if !keys.jwks.is_empty() {
            parts.push(format!("{} JWKS key(s)", keys.jwks.len()));
        }
        if self.from_idp && parts.is_empty() {
            parts.push("the identity provider's keys".to_owned());
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
        let keys = self.keys.load();
        if let Some(known) = self.verified.get(&key) {
            // An answer from an earlier set is checked again in full below.
            if known.generation == keys.generation {
                return match known.window.check_at(now, self.leeway) {
                    Ok(()) => Ok(known.user),
                    Err(e) => {
                        self.verified.remove(&key);
                        Err(e)
                    }
                };
            }
            self.verified.remove(&key);
        }
        let verified = self.verify_fully(token, now, &keys)?;
        let user = verified.user.clone();
        self.verified.insert(key, verified);
        Ok(user)
    }

    /// The signature, issuer and audience (by jsonwebtoken), then the time
    /// claims and the user claim (here).
    fn verify_fully(&self, token: &str, now: u64, keys: &KeySet) -> Result<Verified, JwtError> {
        let header = decode_header(token).map_err(|_| JwtError::Malformed)?;
        if !self.rules.allowed.contains(&header.alg) {
            return Err(JwtError::AlgorithmNotAllowed);
        }
        if keys.is_empty() {
            return Err(JwtError::NoKeySet);
        }
        let key = select_key(keys, header.alg, header.kid.as_deref())?;
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
        Ok(Verified {
            user,
            window,
            generation: keys.generation,
        })
    }
}

fn select_key<'k>(
    keys: &'k KeySet,
    alg: Algorithm,
    kid: Option<&str>,
) -> Result<&'k VerifyKey, JwtError> {
    if let (Some(kid), false) = (kid, keys.jwks.is_empty()) {
        return keys.jwks.get(kid).ok_or(JwtError::UnknownKid);
    }
    if let Some(key) = keys.static_keys.iter().find(|k| k.kind.serves(alg)) {
        return Ok(key);
    }
    // No kid: acceptable only when exactly one JWKS key could be meant.
    let mut candidates = keys.jwks.values().filter(|k| k.kind.serves(alg));
    match (candidates.next(), candidates.next()) {
        (Some(only), None) => Ok(only),
        (Some(_), Some(_)) => Err(JwtError::MissingKid),
        (None, _) => Err(JwtError::NoKey),
    }
}

/// A public key or a JWKS usually belongs to an identity provider that signs
/// ID tokens for many applications with the same keys; without an audience
/// check, a token it issued to any of them would be accepted here. An HMAC
/// secret is shared with one application, so `aud` stays optional with it.
fn check_audience(settings: &JwtSettings) -> Result<(), ConfigError> {
    let third_party: Vec<&str> = configured_sources(settings)
        .into_iter()
        .filter(|s| !s.starts_with("jwt.hmac_secret"))
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

#[cfg(test)]
mod tests;
