//! The keys a [`super::JwtVerifier`] holds, and how they are read: an HMAC
//! secret, a PEM public key, a JWKS file, or a JWK set an identity provider
//! publishes (its bytes are fetched by `crate::idp`; this module only parses).
//!
//! A key is only offered for the configured algorithms it can serve
//! (RFC 8725: the token never picks the algorithm). Key material never
//! reaches an error message, a log line or `Debug` output.

use std::collections::{HashMap, HashSet};
use std::fs;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, Jwk, JwkSet, PublicKeyUse};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use ring::digest::{digest, SHA256};
use secrecy::{ExposeSecret, SecretBox};
use serde_json::Value;

use crate::config::{ConfigError, JwtSettings};

/// Shortest accepted HMAC secret, in bytes (RFC 7518 §3.2: at least the hash size).
pub const MIN_HMAC_SECRET_LEN: usize = 32;

/// What a key can verify: the family and, for EC, the curve.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum KeyKind {
    Hmac,
    Rsa,
    EcP256,
    EcP384,
    Ed25519,
}

impl KeyKind {
    pub(super) fn serves(self, alg: Algorithm) -> bool {
        use Algorithm::*;
        match self {
            KeyKind::Hmac => matches!(alg, HS256 | HS384 | HS512),
            KeyKind::Rsa => matches!(alg, RS256 | RS384 | RS512 | PS256 | PS384 | PS512),
            KeyKind::EcP256 => alg == ES256,
            KeyKind::EcP384 => alg == ES384,
            KeyKind::Ed25519 => alg == EdDSA,
        }
    }

    pub(super) fn describe(self) -> &'static str {
        match self {
            KeyKind::Hmac => "an HMAC secret",
            KeyKind::Rsa => "an RSA key",
            KeyKind::EcP256 => "an EC P-256 key",
            KeyKind::EcP384 => "an EC P-384 key",
            KeyKind::Ed25519 => "an Ed25519 key",
        }
    }
}

#[derive(Clone)]
pub(super) struct VerifyKey {
    pub(super) kind: KeyKind,
    pub(super) key: DecodingKey,
    /// Lists exactly the configured algorithms this key serves.
    pub(super) validation: Validation,
    /// SHA-256 of the key material: tells a replaced key from a kept one.
    fingerprint: [u8; 32],
}

fn fingerprint(bytes: &[u8]) -> [u8; 32] {
    let mut out = [0u8; 32];
    out.copy_from_slice(digest(&SHA256, bytes).as_ref());
    out
}

/// Every key the verifier holds at one moment, replaced whole.
#[derive(Default)]
pub struct KeySet {
    /// From `hmac_secret`/`hmac_secret_file` and `public_key_file`.
    pub(super) static_keys: Vec<VerifyKey>,
    /// From `jwks_file` or an identity provider, by `kid`.
    pub(super) jwks: HashMap<String, VerifyKey>,
    /// Moves on whenever a key leaves the set or changes under its kid, so
    /// answers remembered with an earlier generation are checked again.
    pub(super) generation: u64,
}

impl KeySet {
    /// How many keys the set holds.
    pub fn len(&self) -> usize {
        self.static_keys.len() + self.jwks.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The key ids of the JWK set, sorted (for logs: kids are public).
    pub fn kids(&self) -> Vec<&str> {
        let mut kids: Vec<&str> = self.jwks.keys().map(String::as_str).collect();
        kids.sort_unstable();
        kids
    }

    /// Whether every key of `old` is still here with the same material.
    pub(super) fn keeps_all_of(&self, old: &KeySet) -> bool {
        old.static_keys.iter().all(|k| {
            self.static_keys
                .iter()
                .any(|n| n.fingerprint == k.fingerprint)
        }) && old.jwks.iter().all(|(kid, k)| {
            self.jwks
                .get(kid)
                .is_some_and(|n| n.fingerprint == k.fingerprint)
        })
    }
}

/// The configured algorithms and the claims every token must pass.
pub(super) struct KeyRules {
    pub(super) allowed: Vec<Algorithm>,
    pub(super) base: Validation,
}

impl KeyRules {
    pub(super) fn from_settings(settings: &JwtSettings) -> Result<Self, ConfigError> {
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
        Ok(Self {
            allowed,
            base: base_validation(settings),
        })
    }

    /// The validation for a key of `kind` (pinned to one algorithm by its
    /// JWK's `alg`), or `None` when no configured algorithm fits it.
    fn validation_for(&self, kind: KeyKind, pinned: Option<Algorithm>) -> Option<Validation> {
        let algs: Vec<Algorithm> = self
            .allowed
            .iter()
            .copied()
            .filter(|a| kind.serves(*a) && pinned.is_none_or(|p| p == *a))
            .collect();
        if algs.is_empty() {
            return None;
        }
        let mut v = self.base.clone();
        v.algorithms = algs;
        Some(v)
    }

    /// Refuses a set that leaves a configured algorithm without a key.
    pub(super) fn check_served(&self, set: &KeySet) -> Result<(), ConfigError> {
        for alg in &self.allowed {
            let served = set
                .static_keys
                .iter()
                .chain(set.jwks.values())
                .any(|k| k.kind.serves(*alg) && k.validation.algorithms.contains(alg));
            if !served {
                return Err(ConfigError::new(format!(
                    "jwt.algorithms lists {alg:?} but no configured key can verify it."
                )));
            }
        }
        Ok(())
    }

    /// The HMAC key of an inline `jwt.hmac_secret`, which a reload cannot change.
    pub(super) fn inline_hmac(
        &self,
        settings: &JwtSettings,
    ) -> Result<Option<VerifyKey>, ConfigError> {
        if settings.hmac_secret.is_some() && settings.hmac_secret_file.is_some() {
            return Err(ConfigError::new(
                "Set only one of jwt.hmac_secret and jwt.hmac_secret_file.",
            ));
        }
        let Some(secret) = &settings.hmac_secret else {
            return Ok(None);
        };
        let secret: SecretBox<[u8]> = SecretBox::new(secret.expose_secret().as_bytes().into());
        self.hmac_key("jwt.hmac_secret", &secret).map(Some)
    }

    fn hmac_key(&self, key_name: &str, secret: &SecretBox<[u8]>) -> Result<VerifyKey, ConfigError> {
        if secret.expose_secret().len() < MIN_HMAC_SECRET_LEN {
            return Err(ConfigError::new(format!(
                "{key_name} must be at least {MIN_HMAC_SECRET_LEN} bytes long."
            )));
        }
        let validation = self.validation_for(KeyKind::Hmac, None).ok_or_else(|| {
            ConfigError::new(format!(
                "{key_name} is set but jwt.algorithms lists no HS256, HS384 or HS512."
            ))
        })?;
        Ok(VerifyKey {
            kind: KeyKind::Hmac,
            key: DecodingKey::from_secret(secret.expose_secret()),
            validation,
            fingerprint: fingerprint(secret.expose_secret()),
        })
    }

    /// Reads every key file (`hmac_secret_file`, `public_key_file`,
    /// `jwks_file`) and adds `inline` (from `jwt.hmac_secret`).
    pub(super) fn load_files(
        &self,
        files: &KeyFiles,
        inline: Option<&VerifyKey>,
    ) -> Result<KeySet, ConfigError> {
        let mut set = KeySet::default();
        set.static_keys.extend(inline.cloned());
        if let Some(path) = &files.hmac_secret_file {
            let secret = read_hmac_secret_file(path)?;
            set.static_keys
                .push(self.hmac_key("jwt.hmac_secret_file", &secret)?);
        }
        if let Some(path) = &files.public_key_file {
            let (kind, key, bytes) = load_public_key(path)?;
            let validation = self.validation_for(kind, None).ok_or_else(|| {
                ConfigError::new(format!(
                    "jwt.public_key_file holds {} but jwt.algorithms lists no algorithm it can verify.",
                    kind.describe()
                ))
            })?;
            set.static_keys.push(VerifyKey {
                kind,
                key,
                validation,
                fingerprint: fingerprint(&bytes),
            });
        }
        if let Some(path) = &files.jwks_file {
            set.jwks = self.load_jwks_file(path)?;
        }
        Ok(set)
    }

    fn load_jwks_file(&self, path: &Path) -> Result<HashMap<String, VerifyKey>, ConfigError> {
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
        let mut jwks = HashMap::new();
        let mut seen = HashSet::new();
        for (i, jwk) in set.keys.iter().enumerate() {
            let kid = match (&jwk.common.key_id, several) {
                (Some(kid), _) => kid.clone(),
                (None, false) => String::new(),
                (None, true) => {
                    if matches!(jwk.common.public_key_use, Some(PublicKeyUse::Encryption)) {
                        continue;
                    }
                    return Err(ConfigError::new(format!(
                        "jwt.jwks_file key #{} has no kid; every key needs one when the set has several.",
                        i + 1
                    )));
                }
            };
            if matches!(jwk.common.public_key_use, Some(PublicKeyUse::Encryption)) {
                continue;
            }
            if !seen.insert(kid.clone()) {
                return Err(ConfigError::new(format!(
                    "jwt.jwks_file has two keys with kid {kid:?}."
                )));
            }
            let entry = self
                .jwk_key(&kid, jwk)
                .map_err(|e| ConfigError::new(format!("jwt.jwks_file {e}")))?;
            // A key the configured algorithms cannot use is simply not offered.
            if let Some(key) = entry {
                jwks.insert(kid, key);
            }
        }
        if jwks.is_empty() {
            return Err(ConfigError::new(
                "jwt.jwks_file has no signing key usable with jwt.algorithms.",
            ));
        }
        Ok(jwks)
    }

    /// One JWK as a key: `Ok(None)` for an encryption key or one no
    /// configured algorithm fits; `Err` (a sentence after "jwt.jwks_file ")
    /// for a key that is broken or cannot be meant.
    fn jwk_key(&self, kid: &str, jwk: &Jwk) -> Result<Option<VerifyKey>, String> {
        if matches!(jwk.common.public_key_use, Some(PublicKeyUse::Encryption)) {
            return Ok(None);
        }
        let kind = match &jwk.algorithm {
            AlgorithmParameters::RSA(_) => KeyKind::Rsa,
            AlgorithmParameters::EllipticCurve(p) => match p.curve {
                EllipticCurve::P256 => KeyKind::EcP256,
                EllipticCurve::P384 => KeyKind::EcP384,
                _ => {
                    return Err(format!(
                        "key {kid:?} uses an unsupported curve (P-256 and P-384 are supported)."
                    ))
                }
            },
            AlgorithmParameters::OctetKeyPair(p) if p.curve == EllipticCurve::Ed25519 => {
                KeyKind::Ed25519
            }
            AlgorithmParameters::OctetKeyPair(_) => {
                return Err(format!(
                    "key {kid:?} is an OKP key on a curve other than Ed25519."
                ))
            }
            AlgorithmParameters::OctetKey(_) => KeyKind::Hmac,
        };
        let pinned = match jwk.common.key_algorithm {
            Some(a) => Some(Algorithm::from_str(&a.to_string()).map_err(|_| {
                format!("key {kid:?} has alg {a}, which is not a signature algorithm.")
            })?),
            None => None,
        };
        if let Some(p) = pinned {
            if !kind.serves(p) {
                return Err(format!(
                    "key {kid:?} has alg {p:?}, which does not fit {}.",
                    kind.describe()
                ));
            }
        }
        let key = DecodingKey::from_jwk(jwk)
            .map_err(|e| format!("key {kid:?} cannot be loaded: {e}."))?;
        if let AlgorithmParameters::OctetKey(p) = &jwk.algorithm {
            // base64url without padding: 4 characters carry 3 bytes.
            if p.value.len() * 3 / 4 < MIN_HMAC_SECRET_LEN {
                return Err(format!(
                    "key {kid:?} is an HMAC key shorter than {MIN_HMAC_SECRET_LEN} bytes."
                ));
            }
        }
        let Some(validation) = self.validation_for(kind, pinned) else {
            return Ok(None);
        };
        let material = serde_json::to_vec(&jwk.algorithm).unwrap_or_default();
        Ok(Some(VerifyKey {
            kind,
            key,
            validation,
            fingerprint: fingerprint(&material),
        }))
    }

    /// The keys of a JWK set an identity provider serves. Lenient per key
    /// (IdPs publish encryption keys, curves and algorithms we do not use:
    /// those are skipped and counted), strict on the whole: it must be a
    /// JWK set, its kids unique, and at least one key usable. Symmetric keys
    /// are never taken from a published set.
    pub fn idp_keys(&self, body: &[u8]) -> Result<IdpKeys, JwksError> {
        let value: Value = serde_json::from_slice(body).map_err(|_| JwksError::NotJson)?;
        let Some(Value::Array(entries)) = value.get("keys") else {
            return Err(JwksError::NotAJwkSet);
        };
        let signing: Vec<&Value> = entries
            .iter()
            .filter(|e| e.get("use").and_then(Value::as_str) != Some("enc"))
            .collect();
        let several = signing.len() > 1;
        let mut seen = HashSet::new();
        let mut out = IdpKeys {
            set: KeySet::default(),
            ignored: entries.len() - signing.len(),
            usable: Vec::new(),
        };
        for entry in signing {
            let Ok(jwk) = serde_json::from_value::<Jwk>(entry.clone()) else {
                out.ignored += 1;
                continue;
            };
            let kid = match (&jwk.common.key_id, several) {
                (Some(kid), _) => kid.clone(),
                (None, false) => String::new(),
                (None, true) => {
                    out.ignored += 1;
                    continue;
                }
            };
            if matches!(jwk.algorithm, AlgorithmParameters::OctetKey(_)) {
                out.ignored += 1;
                continue;
            }
            if !seen.insert(kid.clone()) {
                return Err(JwksError::DuplicateKid(kid));
            }
            match self.jwk_key(&kid, &jwk) {
                Ok(Some(key)) => {
                    out.set.jwks.insert(kid, key);
                    out.usable.push(entry.clone());
                }
                Ok(None) | Err(_) => out.ignored += 1,
            }
        }
        if out.set.jwks.is_empty() {
            return Err(JwksError::NoUsableKey {
                ignored: out.ignored,
            });
        }
        Ok(out)
    }
}

/// The keys taken from an identity provider's JWK set.
pub struct IdpKeys {
    pub set: KeySet,
    /// Keys skipped: encryption keys, unsupported types or curves, keys no
    /// configured algorithm fits, symmetric keys.
    pub ignored: usize,
    /// The JWKs taken, as served: what the last-good copy saves (public keys only).
    pub usable: Vec<Value>,
}

/// Why an identity provider's JWK set was refused as a whole.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum JwksError {
    #[error("the answer is not JSON")]
    NotJson,
    #[error("the answer is not a JWK set (no \"keys\" array)")]
    NotAJwkSet,
    #[error("two keys have the kid {0:?}")]
    DuplicateKid(String),
    #[error("no signing key is usable with jwt.algorithms ({ignored} key(s) ignored)")]
    NoUsableKey { ignored: usize },
}

/// The key files a reload reads again.
#[derive(Debug, Clone, Default)]
pub(super) struct KeyFiles {
    pub(super) hmac_secret_file: Option<PathBuf>,
    pub(super) public_key_file: Option<PathBuf>,
    pub(super) jwks_file: Option<PathBuf>,
}

impl KeyFiles {
    pub(super) fn from_settings(settings: &JwtSettings) -> Self {
        Self {
            hmac_secret_file: settings.hmac_secret_file.clone(),
            public_key_file: settings.public_key_file.clone(),
            jwks_file: settings.jwks_file.clone(),
        }
    }

    pub(super) fn is_empty(&self) -> bool {
        self.hmac_secret_file.is_none()
            && self.public_key_file.is_none()
            && self.jwks_file.is_none()
    }
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

fn read_hmac_secret_file(path: &Path) -> Result<SecretBox<[u8]>, ConfigError> {
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
    Ok(SecretBox::new(bytes.into_boxed_slice()))
}

const OID_P256: &[u8] = &[0x06, 0x08, 0x2A, 0x86, 0x48, 0xCE, 0x3D, 0x03, 0x01, 0x07];
const OID_P384: &[u8] = &[0x06, 0x05, 0x2B, 0x81, 0x04, 0x00, 0x22];

fn load_public_key(path: &Path) -> Result<(KeyKind, DecodingKey, Vec<u8>), ConfigError> {
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
        return Ok((KeyKind::Rsa, key, bytes));
    }
    if let Ok(key) = DecodingKey::from_ed_pem(&bytes) {
        return Ok((KeyKind::Ed25519, key, bytes));
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
        return Ok((kind, key, bytes));
    }
    Err(not_a_key())
}
