//! Unit tests for jwt.rs (config errors and key selection).

use super::*;

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use jsonwebtoken::jwk::JwkSet;
use jsonwebtoken::{encode, DecodingKey, EncodingKey, Header};
use secrecy::SecretString;
use serde_json::json;
use tempfile::NamedTempFile;

const SECRET_32: &str = "0123456789abcdef0123456789abcdef";
const SECRET_31: &str = "0123456789abcdef0123456789abcde";

const ALGORITHM_LIST: &str =
    "HS256, HS384, HS512, RS256, RS384, RS512, PS256, PS384, PS512, ES256, ES384, EdDSA";

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

fn settings(algorithms: &[&str]) -> JwtSettings {
    JwtSettings {
        algorithms: algorithms.iter().map(|a| a.to_string()).collect(),
        ..Default::default()
    }
}

fn with_secret(algorithms: &[&str], secret: &str) -> JwtSettings {
    JwtSettings {
        hmac_secret: Some(SecretString::from(secret.to_owned())),
        ..settings(algorithms)
    }
}

/// The audience third-party keys require.
const AUDIENCE: &str = "agent-tokens";

fn with_public_key(algorithms: &[&str], file: PathBuf) -> JwtSettings {
    JwtSettings {
        public_key_file: Some(file),
        audience: Some(AUDIENCE.to_owned()),
        ..settings(algorithms)
    }
}

fn with_jwks(algorithms: &[&str], file: PathBuf) -> JwtSettings {
    JwtSettings {
        jwks_file: Some(file),
        audience: Some(AUDIENCE.to_owned()),
        ..settings(algorithms)
    }
}

fn temp_file(contents: &[u8]) -> NamedTempFile {
    let mut file = NamedTempFile::new().unwrap();
    file.write_all(contents).unwrap();
    file.flush().unwrap();
    file
}

/// The fixture JWKS as JSON, to be edited by a test.
fn fixture_jwks() -> serde_json::Value {
    serde_json::from_str(&fs::read_to_string(fixture("jwks.json")).unwrap()).unwrap()
}

fn jwks_file(set: &serde_json::Value) -> NamedTempFile {
    temp_file(set.to_string().as_bytes())
}

/// The fixture key with this kid, as JSON.
fn fixture_jwk(kid: &str) -> serde_json::Value {
    fixture_jwks()["keys"]
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["kid"] == kid)
        .unwrap_or_else(|| panic!("no fixture key {kid}"))
        .clone()
}

fn config_error(s: &JwtSettings) -> String {
    JwtVerifier::from_settings(s).unwrap_err().to_string()
}

fn io_error(path: &Path) -> std::io::Error {
    fs::read(path).unwrap_err()
}

fn sign(alg: Algorithm, key: &str, kid: Option<&str>) -> String {
    let pem = fs::read(fixture(&format!("{key}_private.pem"))).unwrap();
    let encoding = match alg {
        Algorithm::RS256 | Algorithm::RS384 | Algorithm::PS256 => {
            EncodingKey::from_rsa_pem(&pem).unwrap()
        }
        Algorithm::ES256 | Algorithm::ES384 => EncodingKey::from_ec_pem(&pem).unwrap(),
        Algorithm::EdDSA => EncodingKey::from_ed_pem(&pem).unwrap(),
        other => panic!("no private key fixture for {other:?}"),
    };
    let mut header = Header::new(alg);
    header.kid = kid.map(str::to_owned);
    let exp = jsonwebtoken::get_current_timestamp() + 3600;
    let claims = json!({ "sub": "user-1", "exp": exp, "aud": AUDIENCE });
    encode(&header, &claims, &encoding).unwrap()
}

// --- algorithms ---

#[test]
fn an_unknown_algorithm_name_is_refused_with_the_list_of_known_ones() {
    for name in ["HS257", "none", "hs256", "RS256 ", "ES512", ""] {
        let err = config_error(&with_secret(&["HS256", name], SECRET_32));
        assert_eq!(
            err,
            format!("jwt.algorithms lists {name:?}, which is not one of {ALGORITHM_LIST}.")
        );
    }
}

#[test]
fn a_repeated_algorithm_is_accepted_once() {
    let verifier =
        JwtVerifier::from_settings(&with_secret(&["HS256", "HS256"], SECRET_32)).unwrap();
    assert_eq!(verifier.rules.allowed, vec![Algorithm::HS256]);
}

// --- HMAC secret ---

#[test]
fn an_hmac_secret_shorter_than_32_bytes_is_refused() {
    let err = config_error(&with_secret(&["HS256"], SECRET_31));
    assert_eq!(err, "jwt.hmac_secret must be at least 32 bytes long.");
    JwtVerifier::from_settings(&with_secret(&["HS256"], SECRET_32)).unwrap();
}

#[test]
fn an_hmac_secret_file_shorter_than_32_bytes_is_refused() {
    for contents in [
        SECRET_31.to_owned(),
        format!("{SECRET_31}\n"),
        String::new(),
    ] {
        let file = temp_file(contents.as_bytes());
        let s = JwtSettings {
            hmac_secret_file: Some(file.path().to_owned()),
            ..settings(&["HS256"])
        };
        assert_eq!(
            config_error(&s),
            "jwt.hmac_secret_file must be at least 32 bytes long.",
            "for file contents {contents:?}"
        );
    }
}

#[test]
fn a_trailing_newline_in_the_hmac_secret_file_is_trimmed() {
    for contents in [
        SECRET_32.to_owned(),
        format!("{SECRET_32}\n"),
        format!("{SECRET_32}\r\n"),
    ] {
        let file = temp_file(contents.as_bytes());
        let s = JwtSettings {
            hmac_secret_file: Some(file.path().to_owned()),
            ..settings(&["HS256"])
        };
        let verifier = JwtVerifier::from_settings(&s).unwrap();
        // The key is the 32 bytes without the newline: a token signed with them verifies.
        let exp = jsonwebtoken::get_current_timestamp() + 3600;
        let token = encode(
            &Header::new(Algorithm::HS256),
            &json!({ "sub": "user-1", "exp": exp }),
            &EncodingKey::from_secret(SECRET_32.as_bytes()),
        )
        .unwrap();
        assert_eq!(
            verifier.verify(&token).unwrap().as_str(),
            "user-1",
            "for file contents {contents:?}"
        );
    }
}

#[test]
fn hmac_secret_and_hmac_secret_file_together_are_refused() {
    let file = temp_file(SECRET_32.as_bytes());
    let s = JwtSettings {
        hmac_secret_file: Some(file.path().to_owned()),
        ..with_secret(&["HS256"], SECRET_32)
    };
    assert_eq!(
        config_error(&s),
        "Set only one of jwt.hmac_secret and jwt.hmac_secret_file."
    );
}

#[test]
fn an_hmac_secret_without_any_hs_algorithm_is_refused() {
    let err = config_error(&with_secret(&["RS256"], SECRET_32));
    assert_eq!(
        err,
        "jwt.hmac_secret is set but jwt.algorithms lists no HS256, HS384 or HS512."
    );
}

#[test]
fn an_hmac_secret_file_without_any_hs_algorithm_is_refused_naming_that_key() {
    let file = temp_file(SECRET_32.as_bytes());
    let s = JwtSettings {
        hmac_secret_file: Some(file.path().to_owned()),
        ..settings(&["RS256"])
    };
    assert_eq!(
        config_error(&s),
        "jwt.hmac_secret_file is set but jwt.algorithms lists no HS256, HS384 or HS512."
    );
}

// --- unreadable and unusable files ---

#[test]
fn unreadable_key_files_are_reported_with_their_path_and_cause() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("missing");
    let cause = io_error(&missing);

    let s = JwtSettings {
        hmac_secret_file: Some(missing.clone()),
        ..settings(&["HS256"])
    };
    assert_eq!(
        config_error(&s),
        format!(
            "jwt.hmac_secret_file {} cannot be read: {cause}.",
            missing.display()
        )
    );

    let s = with_public_key(&["RS256"], missing.clone());
    assert_eq!(
        config_error(&s),
        format!(
            "jwt.public_key_file {} cannot be read: {cause}.",
            missing.display()
        )
    );

    let s = with_jwks(&["RS256"], missing.clone());
    assert_eq!(
        config_error(&s),
        format!(
            "jwt.jwks_file {} cannot be read: {cause}.",
            missing.display()
        )
    );

    // A directory is not a key file either.
    let cause = io_error(dir.path());
    let s = with_public_key(&["RS256"], dir.path().to_owned());
    assert_eq!(
        config_error(&s),
        format!(
            "jwt.public_key_file {} cannot be read: {cause}.",
            dir.path().display()
        )
    );
}

#[test]
fn a_public_key_file_that_is_not_a_pem_public_key_is_refused() {
    let not_pem = temp_file(b"this is not a key\n");
    let garbage_pem = temp_file(b"-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n");
    let jwks = fixture("jwks.json");
    for path in [
        not_pem.path().to_owned(),
        garbage_pem.path().to_owned(),
        jwks,
    ] {
        let s = with_public_key(&["RS256"], path.clone());
        assert_eq!(
            config_error(&s),
            format!(
                "jwt.public_key_file {} is not a PEM public key (RSA, EC P-256/P-384 or Ed25519).",
                path.display()
            )
        );
    }
}

#[test]
fn a_private_key_in_public_key_file_is_refused() {
    for (alg, key) in [
        ("RS256", "rsa_private.pem"),
        ("ES256", "ec256_private.pem"),
        ("ES384", "ec384_private.pem"),
        ("EdDSA", "ed25519_private.pem"),
    ] {
        let path = fixture(key);
        let s = with_public_key(&[alg], path.clone());
        assert_eq!(
            JwtVerifier::from_settings(&s)
                .map(|_| ())
                .map_err(|e| e.to_string()),
            Err(format!(
                "jwt.public_key_file {} is not a PEM public key (RSA, EC P-256/P-384 or Ed25519).",
                path.display()
            )),
            "for {key}"
        );
    }
}

#[test]
fn every_public_key_fixture_loads_as_its_own_kind() {
    for (alg, key, kind) in [
        ("RS256", "rsa_public.pem", "an RSA key"),
        ("ES256", "ec256_public.pem", "an EC P-256 key"),
        ("ES384", "ec384_public.pem", "an EC P-384 key"),
        ("EdDSA", "ed25519_public.pem", "an Ed25519 key"),
    ] {
        let verifier = JwtVerifier::from_settings(&with_public_key(&[alg], fixture(key))).unwrap();
        assert_eq!(verifier.describe_keys(), kind);
    }
}

// --- algorithms without a key, keys without an algorithm ---

#[test]
fn a_public_key_no_configured_algorithm_can_use_is_refused() {
    for (algorithms, key, kind) in [
        (&["ES384"][..], "ec256_public.pem", "an EC P-256 key"),
        (&["ES256"][..], "ec384_public.pem", "an EC P-384 key"),
        (&["ES256"][..], "rsa_public.pem", "an RSA key"),
        (&["RS256"][..], "ed25519_public.pem", "an Ed25519 key"),
        (&["EdDSA"][..], "ec256_public.pem", "an EC P-256 key"),
    ] {
        let s = with_public_key(algorithms, fixture(key));
        assert_eq!(
            config_error(&s),
            format!(
                "jwt.public_key_file holds {kind} but jwt.algorithms lists no algorithm it can verify."
            ),
            "for {key} with {algorithms:?}"
        );
    }
}

#[test]
fn an_algorithm_no_configured_key_can_verify_is_refused() {
    let s = with_public_key(&["ES256", "ES384"], fixture("ec256_public.pem"));
    assert_eq!(
        config_error(&s),
        "jwt.algorithms lists ES384 but no configured key can verify it."
    );

    let s = with_secret(&["HS256", "RS256"], SECRET_32);
    assert_eq!(
        config_error(&s),
        "jwt.algorithms lists RS256 but no configured key can verify it."
    );

    let s = JwtSettings {
        public_key_file: Some(fixture("rsa_public.pem")),
        ..with_secret(&["HS256", "RS256", "EdDSA"], SECRET_32)
    };
    assert_eq!(
        config_error(&s),
        "jwt.algorithms lists EdDSA but no configured key can verify it."
    );

    // A JWKS key pinned to RS256 does not serve RS384.
    let mut rsa = fixture_jwk("rsa-1");
    rsa["alg"] = json!("RS256");
    let file = jwks_file(&json!({ "keys": [rsa] }));
    let s = with_jwks(&["RS256", "RS384"], file.path().to_owned());
    assert_eq!(
        config_error(&s),
        "jwt.algorithms lists RS384 but no configured key can verify it."
    );
}

#[test]
fn no_key_at_all_is_refused() {
    for algorithms in [&["HS256"][..], &["RS256"][..], &["EdDSA", "ES256"][..]] {
        assert_eq!(
            config_error(&settings(algorithms)),
            "No JWT key is configured: set jwt.hmac_secret, jwt.hmac_secret_file, jwt.public_key_file, jwt.jwks_file, jwt.jwks_url or jwt.oidc_discovery_url."
        );
    }
}

// --- JWKS ---

#[test]
fn the_fixture_jwks_loads_all_four_keys() {
    let s = with_jwks(&["RS256", "ES256", "ES384", "EdDSA"], fixture("jwks.json"));
    let verifier = JwtVerifier::from_settings(&s).unwrap();
    assert_eq!(verifier.describe_keys(), "4 JWKS key(s)");
}

#[test]
fn a_jwks_key_without_kid_is_refused_when_the_set_has_several() {
    let mut set = fixture_jwks();
    set["keys"][1].as_object_mut().unwrap().remove("kid");
    let file = jwks_file(&set);
    let s = with_jwks(&["RS256", "ES256"], file.path().to_owned());
    assert_eq!(
        config_error(&s),
        "jwt.jwks_file key #2 has no kid; every key needs one when the set has several."
    );
}

#[test]
fn a_single_jwks_key_needs_no_kid() {
    let mut rsa = fixture_jwk("rsa-1");
    rsa.as_object_mut().unwrap().remove("kid");
    let file = jwks_file(&json!({ "keys": [rsa] }));
    let verifier =
        JwtVerifier::from_settings(&with_jwks(&["RS256"], file.path().to_owned())).unwrap();
    let token = sign(Algorithm::RS256, "rsa", None);
    assert_eq!(verifier.verify(&token).unwrap().as_str(), "user-1");
}

#[test]
fn duplicate_kids_in_the_jwks_are_refused() {
    let mut set = fixture_jwks();
    set["keys"][2]["kid"] = json!("rsa-1");
    let file = jwks_file(&set);
    let s = with_jwks(
        &["RS256", "ES256", "ES384", "EdDSA"],
        file.path().to_owned(),
    );
    assert_eq!(
        config_error(&s),
        "jwt.jwks_file has two keys with kid \"rsa-1\"."
    );
}

#[test]
fn a_jwks_without_a_usable_key_is_refused() {
    const NO_USABLE_KEY: &str = "jwt.jwks_file has no signing key usable with jwt.algorithms.";

    // No key serves the configured algorithm (an HMAC secret serves it instead).
    let s = JwtSettings {
        jwks_file: Some(fixture("jwks.json")),
        ..with_secret(&["HS256"], SECRET_32)
    };
    assert_eq!(config_error(&s), NO_USABLE_KEY);

    // Every key is for encryption.
    let mut set = fixture_jwks();
    for key in set["keys"].as_array_mut().unwrap() {
        key["use"] = json!("enc");
    }
    let file = jwks_file(&set);
    let s = with_jwks(
        &["RS256", "ES256", "ES384", "EdDSA"],
        file.path().to_owned(),
    );
    assert_eq!(config_error(&s), NO_USABLE_KEY);

    // An empty set.
    let file = jwks_file(&json!({ "keys": [] }));
    let s = with_jwks(&["RS256"], file.path().to_owned());
    assert_eq!(config_error(&s), NO_USABLE_KEY);
}

#[test]
fn a_jwks_file_that_is_not_a_jwk_set_is_refused() {
    for text in ["not json", "{}", r#"{"keys": [{"kty": "XYZ"}]}"#] {
        let file = temp_file(text.as_bytes());
        let cause = serde_json::from_str::<JwkSet>(text).unwrap_err();
        let s = with_jwks(&["RS256"], file.path().to_owned());
        assert_eq!(
            config_error(&s),
            format!(
                "jwt.jwks_file {} is not a valid JWK set: {cause}.",
                file.path().display()
            ),
            "for {text:?}"
        );
    }
}

#[test]
fn jwks_keys_on_unsupported_curves_are_refused() {
    let mut p521 = fixture_jwk("ec-1");
    p521["kid"] = json!("p521");
    p521["crv"] = json!("P-521");
    let file = jwks_file(&json!({ "keys": [p521] }));
    let s = with_jwks(&["ES256"], file.path().to_owned());
    assert_eq!(
        config_error(&s),
        "jwt.jwks_file key \"p521\" uses an unsupported curve (P-256 and P-384 are supported)."
    );

    let mut okp = fixture_jwk("ed-1");
    okp["crv"] = json!("P-256");
    let file = jwks_file(&json!({ "keys": [okp] }));
    let s = with_jwks(&["EdDSA"], file.path().to_owned());
    assert_eq!(
        config_error(&s),
        "jwt.jwks_file key \"ed-1\" is an OKP key on a curve other than Ed25519."
    );
}

#[test]
fn a_jwks_key_pinned_to_a_non_signature_or_mismatched_algorithm_is_refused() {
    let mut rsa = fixture_jwk("rsa-1");
    rsa["alg"] = json!("RSA-OAEP");
    let file = jwks_file(&json!({ "keys": [rsa] }));
    let s = with_jwks(&["RS256"], file.path().to_owned());
    assert_eq!(
        config_error(&s),
        "jwt.jwks_file key \"rsa-1\" has alg RSA_OAEP, which is not a signature algorithm."
    );

    for (kid, alg, kind) in [
        ("rsa-1", "ES256", "an RSA key"),
        ("ec-1", "ES384", "an EC P-256 key"),
        ("ec384-1", "ES256", "an EC P-384 key"),
        ("ed-1", "RS256", "an Ed25519 key"),
        ("rsa-1", "HS256", "an RSA key"),
    ] {
        let mut key = fixture_jwk(kid);
        key["alg"] = json!(alg);
        let file = jwks_file(&json!({ "keys": [key] }));
        let s = with_jwks(
            &["RS256", "ES256", "ES384", "EdDSA"],
            file.path().to_owned(),
        );
        assert_eq!(
            config_error(&s),
            format!("jwt.jwks_file key {kid:?} has alg {alg}, which does not fit {kind}.")
        );
    }
}

#[test]
fn a_jwks_key_that_cannot_be_loaded_is_refused() {
    let mut ed = fixture_jwk("ed-1");
    ed["x"] = json!("!!!not base64url!!!");
    let jwk: jsonwebtoken::jwk::Jwk = serde_json::from_value(ed.clone()).unwrap();
    let cause = match DecodingKey::from_jwk(&jwk) {
        Ok(_) => panic!("the broken key must not load"),
        Err(e) => e,
    };
    let file = jwks_file(&json!({ "keys": [ed] }));
    let s = with_jwks(&["EdDSA"], file.path().to_owned());
    assert_eq!(
        config_error(&s),
        format!("jwt.jwks_file key \"ed-1\" cannot be loaded: {cause}.")
    );
}

#[test]
fn a_short_hmac_key_in_the_jwks_is_refused() {
    use base64::Engine;
    let b64 = |n: usize| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(vec![7u8; n]);
    let short = json!({ "kty": "oct", "kid": "h", "k": b64(31) });
    let file = jwks_file(&json!({ "keys": [short] }));
    let s = with_jwks(&["HS256"], file.path().to_owned());
    assert_eq!(
        config_error(&s),
        "jwt.jwks_file key \"h\" is an HMAC key shorter than 32 bytes."
    );

    let long_enough = json!({ "kty": "oct", "kid": "h", "k": b64(32) });
    let file = jwks_file(&json!({ "keys": [long_enough] }));
    JwtVerifier::from_settings(&with_jwks(&["HS256"], file.path().to_owned())).unwrap();
}

// --- key selection ---

#[test]
fn a_token_without_kid_is_refused_when_several_jwks_keys_could_verify_it() {
    let rsa = fixture_jwk("rsa-1");
    let mut rsa2 = rsa.clone();
    rsa2["kid"] = json!("rsa-2");
    let file = jwks_file(&json!({ "keys": [rsa, rsa2] }));
    let verifier =
        JwtVerifier::from_settings(&with_jwks(&["RS256"], file.path().to_owned())).unwrap();
    assert_eq!(
        verifier
            .verify(&sign(Algorithm::RS256, "rsa", None))
            .unwrap_err(),
        JwtError::MissingKid
    );
    for kid in ["rsa-1", "rsa-2"] {
        let token = sign(Algorithm::RS256, "rsa", Some(kid));
        assert_eq!(verifier.verify(&token).unwrap().as_str(), "user-1");
    }
}

#[test]
fn the_classic_attacks_fail_for_the_expected_reason() {
    use base64::Engine;
    let b64 = |s: &str| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(s);
    let s = with_jwks(&["RS256", "ES256", "ES384", "EdDSA"], fixture("jwks.json"));
    let verifier = JwtVerifier::from_settings(&s).unwrap();
    let exp = jsonwebtoken::get_current_timestamp() + 3600;
    let claims = json!({ "sub": "user-1", "exp": exp }).to_string();

    let none = format!(
        "{}.{}.",
        b64(r#"{"alg":"none","kid":"rsa-1"}"#),
        b64(&claims)
    );
    assert_eq!(verifier.verify(&none).unwrap_err(), JwtError::Malformed);

    let pem = fs::read(fixture("rsa_public.pem")).unwrap();
    let mut header = Header::new(Algorithm::HS256);
    header.kid = Some("rsa-1".into());
    let confused = encode(
        &header,
        &json!({ "sub": "user-1", "exp": exp }),
        &EncodingKey::from_secret(&pem),
    )
    .unwrap();
    assert_eq!(
        verifier.verify(&confused).unwrap_err(),
        JwtError::AlgorithmNotAllowed
    );

    let unknown = sign(Algorithm::RS256, "rsa", Some("rsa-9"));
    assert_eq!(verifier.verify(&unknown).unwrap_err(), JwtError::UnknownKid);

    let other = sign(Algorithm::RS256, "rsa_other", Some("rsa-1"));
    assert_eq!(verifier.verify(&other).unwrap_err(), JwtError::BadSignature);

    let oversized = "a".repeat(MAX_JWT_LEN + 1);
    assert_eq!(
        verifier.verify(&oversized).unwrap_err(),
        JwtError::Malformed
    );
}

// --- no secrets in Debug ---

#[test]
fn debug_output_of_the_verifier_never_shows_the_hmac_secret() {
    let secret = "a-very-recognisable-hmac-secret-value-0123456789";
    let verifier = JwtVerifier::from_settings(&with_secret(&["HS256"], secret)).unwrap();
    let debug = format!("{verifier:?}");
    assert!(!debug.contains(secret), "{debug}");
    assert!(!debug.contains("recognisable"), "{debug}");

    let file = temp_file(format!("{secret}\n").as_bytes());
    let s = JwtSettings {
        hmac_secret_file: Some(file.path().to_owned()),
        ..settings(&["HS256"])
    };
    let verifier = JwtVerifier::from_settings(&s).unwrap();
    let debug = format!("{verifier:?}");
    assert!(!debug.contains("recognisable"), "{debug}");
    let debug = format!("{verifier:#?}");
    assert!(!debug.contains("recognisable"), "{debug}");
}

// --- the verified-token cache ---

fn hs256(claims: &serde_json::Value) -> String {
    encode(
        &Header::new(Algorithm::HS256),
        claims,
        &EncodingKey::from_secret(SECRET_32.as_bytes()),
    )
    .unwrap()
}

#[test]
fn a_remembered_token_stops_verifying_when_it_expires() {
    let s = JwtSettings {
        leeway_secs: 0,
        ..with_secret(&["HS256"], SECRET_32)
    };
    let verifier = JwtVerifier::from_settings(&s).unwrap();
    // Two seconds of validity: room for a slow machine to verify it first.
    let exp = jsonwebtoken::get_current_timestamp() + 2;
    let token = hs256(&json!({ "sub": "user-1", "exp": exp }));
    for _ in 0..3 {
        assert_eq!(verifier.verify(&token).unwrap().as_str(), "user-1");
    }
    while jsonwebtoken::get_current_timestamp() <= exp {
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    assert_eq!(verifier.verify(&token).unwrap_err(), JwtError::Expired);
    assert_eq!(verifier.verify(&token).unwrap_err(), JwtError::Expired);
}

#[test]
fn a_remembered_token_honours_the_leeway_and_lookalikes_are_checked_in_full() {
    let s = JwtSettings {
        leeway_secs: 300,
        ..with_secret(&["HS256"], SECRET_32)
    };
    let verifier = JwtVerifier::from_settings(&s).unwrap();
    let now = jsonwebtoken::get_current_timestamp();
    // Expired a minute ago, inside the leeway: valid, and valid again.
    let token = hs256(&json!({ "sub": "user-1", "exp": now - 60 }));
    assert_eq!(verifier.verify(&token).unwrap().as_str(), "user-1");
    assert_eq!(verifier.verify(&token).unwrap().as_str(), "user-1");
    // The same token with its signature altered is not the remembered one.
    let mut forged = token.clone();
    let last = forged.pop().unwrap();
    forged.push(if last == 'A' { 'B' } else { 'A' });
    assert!(verifier.verify(&forged).is_err());
    // A refusal is not remembered either.
    assert!(verifier.verify(&forged).is_err());
    assert_eq!(verifier.verify(&token).unwrap().as_str(), "user-1");
}

#[test]
fn a_token_not_yet_valid_is_refused_every_time() {
    let s = JwtSettings {
        leeway_secs: 0,
        ..with_secret(&["HS256"], SECRET_32)
    };
    let verifier = JwtVerifier::from_settings(&s).unwrap();
    let now = jsonwebtoken::get_current_timestamp();
    let token = hs256(&json!({ "sub": "user-1", "exp": now + 3600, "nbf": now + 600 }));
    for _ in 0..2 {
        assert_eq!(verifier.verify(&token).unwrap_err(), JwtError::NotYetValid);
    }
}

// --- time claims out of range ---

/// An HS256 JWT over claims given as raw JSON text, so numbers no Rust
/// type holds (2^64, 1e400) reach the verifier exactly as an issuer wrote them.
fn hs256_raw(claims: &str) -> String {
    use base64::Engine;
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let signing_input = format!(
        "{}.{}",
        b64.encode(r#"{"alg":"HS256","typ":"JWT"}"#),
        b64.encode(claims)
    );
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, SECRET_32.as_bytes());
    let tag = ring::hmac::sign(&key, signing_input.as_bytes());
    format!("{signing_input}.{}", b64.encode(tag.as_ref()))
}

fn hs256_verifier() -> JwtVerifier {
    JwtVerifier::from_settings(&with_secret(&["HS256"], SECRET_32)).unwrap()
}

/// Values no issuer means as a time: too large for any integer type,
/// negative, not a number, past the year 9999.
const ABSURD_TIMES: &[&str] = &[
    "1e30",
    "18446744073709551616",
    "18446744073709551615",
    "9223372036854775808",
    "1e19",
    "253402300800",
    "-1",
    "-1e30",
    "-0.5",
    "\"1700000000\"",
    "null",
    "true",
];

#[test]
fn an_nbf_too_large_to_represent_is_refused() {
    let verifier = hs256_verifier();
    let exp = jsonwebtoken::get_current_timestamp() + 3600;
    for nbf in ABSURD_TIMES {
        let token = hs256_raw(&format!(r#"{{"sub":"u","exp":{exp},"nbf":{nbf}}}"#));
        for _ in 0..2 {
            assert_eq!(
                verifier.verify(&token).unwrap_err(),
                JwtError::BadNumericDate("nbf"),
                "nbf {nbf}"
            );
        }
    }
    // Beyond f64 (unreadable claims), or not a number at all.
    for nbf in ["1e400", "[1700000000]", "{}"] {
        let token = hs256_raw(&format!(r#"{{"sub":"u","exp":{exp},"nbf":{nbf}}}"#));
        assert!(verifier.verify(&token).is_err(), "nbf {nbf}");
    }
}

#[test]
fn an_absurd_exp_or_iat_is_refused() {
    let verifier = hs256_verifier();
    let now = jsonwebtoken::get_current_timestamp();
    for value in ABSURD_TIMES {
        let token = hs256_raw(&format!(r#"{{"sub":"u","exp":{value}}}"#));
        assert_eq!(
            verifier.verify(&token).unwrap_err(),
            JwtError::BadNumericDate("exp"),
            "exp {value}"
        );
        let token = hs256_raw(&format!(
            r#"{{"sub":"u","exp":{},"iat":{value}}}"#,
            now + 3600
        ));
        assert_eq!(
            verifier.verify(&token).unwrap_err(),
            JwtError::BadNumericDate("iat"),
            "iat {value}"
        );
    }
}

#[test]
fn times_up_to_the_year_9999_and_fractional_times_are_accepted() {
    let verifier = hs256_verifier();
    let now = jsonwebtoken::get_current_timestamp();
    let fine = [
        r#"{"sub":"u","exp":253402300799}"#.to_owned(),
        format!(
            r#"{{"sub":"u","exp":{}.75,"iat":{now}.25,"nbf":{}.5}}"#,
            now + 60,
            now - 60
        ),
        format!(r#"{{"sub":"u","exp":{},"iat":0,"nbf":0}}"#, now + 60),
        format!(r#"{{"sub":"u","exp":{}e0}}"#, now + 60),
    ];
    for claims in fine {
        assert_eq!(
            verifier.verify(&hs256_raw(&claims)).unwrap().as_str(),
            "u",
            "{claims}"
        );
    }
}

#[test]
fn fractional_times_round_towards_refusal() {
    let s = JwtSettings {
        leeway_secs: 0,
        ..with_secret(&["HS256"], SECRET_32)
    };
    let verifier = JwtVerifier::from_settings(&s).unwrap();
    let now = jsonwebtoken::get_current_timestamp();
    // An exp 0.9 s before now is past (rounded down), an nbf in the coming
    // second is ahead (rounded up).
    let token = hs256_raw(&format!(r#"{{"sub":"u","exp":{}.1}}"#, now - 1));
    assert_eq!(verifier.verify(&token).unwrap_err(), JwtError::Expired);
    let token = hs256_raw(&format!(
        r#"{{"sub":"u","exp":{},"nbf":{}.5}}"#,
        now + 60,
        now + 2
    ));
    assert_eq!(verifier.verify(&token).unwrap_err(), JwtError::NotYetValid);
}

#[test]
fn an_exp_too_large_is_refused_even_before_the_signature_would_be_remembered() {
    // A token refused once is never remembered: the refusal repeats.
    let verifier = hs256_verifier();
    let token = hs256_raw(r#"{"sub":"u","exp":1e30}"#);
    for _ in 0..3 {
        assert_eq!(
            verifier.verify(&token).unwrap_err(),
            JwtError::BadNumericDate("exp")
        );
    }
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig::with_cases(512))]

    #[test]
    fn an_integer_nbf_is_honoured_or_refused_never_skipped(nbf in proptest::prelude::any::<i128>()) {
        let verifier = hs256_verifier();
        let now = i128::from(jsonwebtoken::get_current_timestamp());
        let token = hs256_raw(&format!(r#"{{"sub":"u","exp":{},"nbf":{nbf}}}"#, now + 3600));
        let result = verifier.verify(&token);
        if nbf < 0 || nbf > MAX_NUMERIC_DATE as i128 {
            proptest::prop_assert_eq!(result.unwrap_err(), JwtError::BadNumericDate("nbf"));
        } else if nbf > now + 60 {
            proptest::prop_assert_eq!(result.unwrap_err(), JwtError::NotYetValid);
        } else if nbf < now {
            proptest::prop_assert!(result.is_ok());
        }
    }

    #[test]
    fn a_float_nbf_is_honoured_or_refused_never_skipped(nbf in proptest::prelude::any::<f64>()) {
        proptest::prop_assume!(nbf.is_finite());
        let verifier = hs256_verifier();
        let now = jsonwebtoken::get_current_timestamp() as f64;
        let token = hs256_raw(&format!(r#"{{"sub":"u","exp":{},"nbf":{nbf:e}}}"#, now + 3600.0));
        let result = verifier.verify(&token);
        if !(0.0..=MAX_NUMERIC_DATE as f64).contains(&nbf) {
            proptest::prop_assert_eq!(result.unwrap_err(), JwtError::BadNumericDate("nbf"));
        } else if nbf > now + 60.0 {
            proptest::prop_assert_eq!(result.unwrap_err(), JwtError::NotYetValid);
        } else if nbf < now {
            proptest::prop_assert!(result.is_ok());
        }
    }

    #[test]
    fn an_exp_is_honoured_or_refused_never_skipped(exp in proptest::prelude::any::<i128>()) {
        let verifier = hs256_verifier();
        let now = i128::from(jsonwebtoken::get_current_timestamp());
        let token = hs256_raw(&format!(r#"{{"sub":"u","exp":{exp}}}"#));
        let result = verifier.verify(&token);
        if exp < 0 || exp > MAX_NUMERIC_DATE as i128 {
            proptest::prop_assert_eq!(result.unwrap_err(), JwtError::BadNumericDate("exp"));
        } else if exp < now - 60 {
            proptest::prop_assert_eq!(result.unwrap_err(), JwtError::Expired);
        } else if exp > now + 60 {
            proptest::prop_assert!(result.is_ok());
        }
    }
}

#[test]
fn a_user_claim_a_gateway_would_rewrite_is_refused() {
    let verifier = hs256_verifier();
    let exp = jsonwebtoken::get_current_timestamp() + 3600;
    for (sub, why) in [
        (" alice", UserIdError::SurroundingWhitespace),
        ("alice ", UserIdError::SurroundingWhitespace),
        (" ", UserIdError::SurroundingWhitespace),
        ("ali\u{200B}ce", UserIdError::NonPrinting('\u{200B}')),
        ("\u{202E}ecila", UserIdError::NonPrinting('\u{202E}')),
        ("alice\u{2028}", UserIdError::SurroundingWhitespace),
        ("al\u{2028}ice", UserIdError::NonPrinting('\u{2028}')),
    ] {
        let token = hs256(&json!({ "sub": sub, "exp": exp }));
        assert_eq!(
            verifier.verify(&token).unwrap_err(),
            JwtError::BadUserClaim(why),
            "{sub:?}"
        );
    }
}

// --- audience with third-party keys ---

#[test]
fn a_public_key_or_jwks_without_audience_is_refused_naming_the_key() {
    let pem = fixture("rsa_public.pem");
    let jwks = jwks_file(&fixture_jwks());
    let cases = [
        (
            JwtSettings {
                audience: None,
                ..with_public_key(&["RS256"], pem.clone())
            },
            "jwt.public_key_file",
        ),
        (
            JwtSettings {
                audience: None,
                ..with_jwks(&["RS256", "ES256", "EdDSA"], jwks.path().to_owned())
            },
            "jwt.jwks_file",
        ),
        (
            JwtSettings {
                audience: None,
                public_key_file: Some(pem.clone()),
                ..with_jwks(&["RS256", "ES256", "EdDSA"], jwks.path().to_owned())
            },
            "jwt.public_key_file and jwt.jwks_file",
        ),
    ];
    for (settings, keys) in cases {
        assert_eq!(
            config_error(&settings),
            format!(
                "jwt.audience is required with {keys} (the issuer's tokens for other applications would pass): set it to the aud your application's tokens carry, or set jwt.require_audience = false to accept any audience."
            )
        );
    }
}

#[test]
fn require_audience_false_accepts_any_audience_with_a_public_key() {
    let settings = JwtSettings {
        audience: None,
        require_audience: false,
        ..with_public_key(&["RS256"], fixture("rsa_public.pem"))
    };
    let verifier = JwtVerifier::from_settings(&settings).unwrap();
    let exp = jsonwebtoken::get_current_timestamp() + 600;
    let pem = std::fs::read(fixture("rsa_private.pem")).unwrap();
    let token = encode(
        &Header::new(Algorithm::RS256),
        &json!({ "sub": "u", "exp": exp, "aud": "third-party-client-123" }),
        &EncodingKey::from_rsa_pem(&pem).unwrap(),
    )
    .unwrap();
    assert_eq!(verifier.verify(&token).unwrap().as_str(), "u");
}

#[test]
fn with_an_audience_a_token_for_another_client_is_refused() {
    let verifier =
        JwtVerifier::from_settings(&with_public_key(&["RS256"], fixture("rsa_public.pem")))
            .unwrap();
    let exp = jsonwebtoken::get_current_timestamp() + 600;
    let pem = std::fs::read(fixture("rsa_private.pem")).unwrap();
    let sign = |claims: serde_json::Value| {
        encode(
            &Header::new(Algorithm::RS256),
            &claims,
            &EncodingKey::from_rsa_pem(&pem).unwrap(),
        )
        .unwrap()
    };
    let other = sign(json!({ "sub": "u", "exp": exp, "aud": "third-party-client-123" }));
    assert_eq!(
        verifier.verify(&other).unwrap_err(),
        JwtError::WrongAudience
    );
    let none = sign(json!({ "sub": "u", "exp": exp }));
    assert_eq!(
        verifier.verify(&none).unwrap_err(),
        JwtError::MissingClaim("aud".to_owned())
    );
    let ours = sign(json!({ "sub": "u", "exp": exp, "aud": AUDIENCE }));
    assert_eq!(verifier.verify(&ours).unwrap().as_str(), "u");
}

#[test]
fn an_hmac_secret_needs_no_audience() {
    let verifier = hs256_verifier();
    let exp = jsonwebtoken::get_current_timestamp() + 600;
    let token = hs256(&json!({ "sub": "u", "exp": exp, "aud": "anything" }));
    assert_eq!(verifier.verify(&token).unwrap().as_str(), "u");
}

// --- key sets from an identity provider, swapped at run time ---

fn with_jwks_url(algorithms: &[&str]) -> JwtSettings {
    JwtSettings {
        jwks_url: Some("https://sso.example/certs".to_owned()),
        audience: Some(AUDIENCE.to_owned()),
        ..settings(algorithms)
    }
}

fn idp_set(verifier: &JwtVerifier, keys: &[serde_json::Value]) -> KeySet {
    let body = json!({ "keys": keys }).to_string();
    verifier.parse_idp_keys(body.as_bytes()).unwrap().set
}

#[test]
fn a_url_source_starts_without_keys_and_refuses_until_a_set_arrives() {
    let verifier = JwtVerifier::from_settings(&with_jwks_url(&["RS256"])).unwrap();
    assert!(verifier.from_idp() && !verifier.has_keys());
    let token = sign(Algorithm::RS256, "rsa", Some("rsa-1"));
    assert_eq!(verifier.verify(&token).unwrap_err(), JwtError::NoKeySet);
    verifier.replace_keys(idp_set(&verifier, &[fixture_jwk("rsa-1")]));
    assert_eq!(verifier.verify(&token).unwrap().as_str(), "user-1");
}

#[test]
fn a_url_source_excludes_every_other_key_source() {
    let s = JwtSettings {
        oidc_discovery_url: Some("https://sso.example".to_owned()),
        ..with_jwks_url(&["RS256"])
    };
    assert_eq!(
        config_error(&s),
        "Set only one JWT key source: jwt.jwks_url, jwt.oidc_discovery_url are all set, and jwt.jwks_url brings every key the identity provider publishes; remove the others."
    );
    let s = JwtSettings {
        public_key_file: Some(fixture("rsa_public.pem")),
        ..with_jwks_url(&["RS256"])
    };
    assert!(config_error(&s)
        .starts_with("Set only one JWT key source: jwt.public_key_file, jwt.jwks_url are all set"));
    let s = JwtSettings {
        audience: None,
        ..with_jwks_url(&["RS256"])
    };
    assert!(config_error(&s).starts_with("jwt.audience is required with jwt.jwks_url "));
    assert_eq!(
        config_error(&with_jwks_url(&["HS256"])),
        "jwt.jwks_url is set but jwt.algorithms lists only HMAC algorithms; list the identity provider's signing algorithm (RS256 for most)."
    );
}

#[test]
fn a_remembered_answer_goes_with_its_key() {
    let verifier = JwtVerifier::from_settings(&with_jwks_url(&["RS256", "ES256"])).unwrap();
    let (rsa, ec) = (fixture_jwk("rsa-1"), fixture_jwk("ec-1"));
    verifier.replace_keys(idp_set(&verifier, &[rsa.clone(), ec.clone()]));
    let by_rsa = sign(Algorithm::RS256, "rsa", Some("rsa-1"));
    let by_ec = sign(Algorithm::ES256, "ec256", Some("ec-1"));
    assert!(verifier.verify(&by_rsa).is_ok() && verifier.verify(&by_ec).is_ok());

    // The same keys again (a refresh that changed nothing): remembered answers stay.
    assert!(!verifier.replace_keys(idp_set(&verifier, &[ec.clone(), rsa.clone()])));
    assert!(verifier.verify(&by_rsa).is_ok());

    // rsa-1 leaves: its token, remembered a moment ago, is refused at once.
    assert!(verifier.replace_keys(idp_set(&verifier, std::slice::from_ref(&ec))));
    assert_eq!(verifier.verify(&by_rsa).unwrap_err(), JwtError::UnknownKid);
    assert!(verifier.verify(&by_ec).is_ok());

    // A different key under a known kid counts as the old one leaving.
    let mut other = fixture_jwk("rsa-1");
    other["kid"] = json!("ec-1");
    assert!(verifier.replace_keys(idp_set(&verifier, &[other])));
    assert!(verifier.verify(&by_ec).is_err());
}

#[test]
fn a_published_set_skips_keys_it_cannot_use_and_refuses_garbage() {
    let verifier = JwtVerifier::from_settings(&with_jwks_url(&["RS256"])).unwrap();
    let mut enc = fixture_jwk("rsa-1");
    enc["kid"] = json!("enc-1");
    enc["use"] = json!("enc");
    let mut p521 = fixture_jwk("ec-1");
    p521["kid"] = json!("p521");
    p521["crv"] = json!("P-521");
    let hmac =
        json!({ "kty": "oct", "kid": "h", "k": "c2VjcmV0LXNlY3JldC1zZWNyZXQtc2VjcmV0LXNlY3JldA" });
    let odd =
        json!({ "kty": "RSA", "kid": "odd", "alg": "RSA-OAEP-256", "n": "AQAB", "e": "AQAB" });
    let keys = [
        fixture_jwk("rsa-1"),
        fixture_jwk("ec-1"), // ES256 is not configured
        enc,
        p521,
        hmac,
        odd,
        json!({ "kty": "nonsense" }),
    ];
    let body = json!({ "keys": keys }).to_string();
    let parsed = verifier.parse_idp_keys(body.as_bytes()).unwrap();
    assert_eq!(parsed.set.kids(), vec!["rsa-1"]);
    assert_eq!(parsed.ignored, 6);
    assert_eq!(parsed.usable.len(), 1);

    for (body, err) in [
        ("<html>", JwksError::NotJson),
        ("{\"keys\": {}}", JwksError::NotAJwkSet),
        ("[]", JwksError::NotAJwkSet),
        ("{\"keys\": []}", JwksError::NoUsableKey { ignored: 0 }),
    ] {
        assert_eq!(verifier.parse_idp_keys(body.as_bytes()).err(), Some(err));
    }
    let twice = json!({ "keys": [fixture_jwk("rsa-1"), fixture_jwk("rsa-1")] }).to_string();
    assert_eq!(
        verifier.parse_idp_keys(twice.as_bytes()).err(),
        Some(JwksError::DuplicateKid("rsa-1".to_owned()))
    );
}

#[test]
fn a_reload_reads_the_key_file_again_and_a_bad_file_changes_nothing() {
    let file = temp_file(&fs::read(fixture("rsa_public.pem")).unwrap());
    let verifier =
        JwtVerifier::from_settings(&with_public_key(&["RS256"], file.path().to_owned())).unwrap();
    let old = sign(Algorithm::RS256, "rsa", None);
    let new = sign(Algorithm::RS256, "rsa_other", None);
    assert!(verifier.verify(&old).is_ok() && verifier.verify(&new).is_err());

    fs::write(file.path(), b"not a key").unwrap();
    assert!(verifier
        .reload_files()
        .unwrap_err()
        .to_string()
        .contains("is not a PEM public key"));
    assert!(verifier.verify(&old).is_ok());

    fs::write(
        file.path(),
        fs::read(fixture("rsa_other_public.pem")).unwrap(),
    )
    .unwrap();
    assert_eq!(verifier.reload_files().unwrap(), Some(1));
    assert!(verifier.verify(&new).is_ok());
    assert_eq!(verifier.verify(&old).unwrap_err(), JwtError::BadSignature);
}
