//! The Authorization header through to the authentication decision, for
//! both kinds of route: never panics, and never authenticates garbage.
#![no_main]

use std::sync::LazyLock;

use actix_web::http::header::HeaderValue;
use agent_tokens::http::auth::{authenticate_user, presented_agent_token, BasicScratch};
use agent_tokens::config::JwtSettings;
use agent_tokens::domain::jwt::JwtVerifier;
use libfuzzer_sys::fuzz_target;
use secrecy::SecretString;

static VERIFIER: LazyLock<JwtVerifier> = LazyLock::new(|| {
    JwtVerifier::from_settings(&JwtSettings {
        algorithms: vec!["HS256".into(), "HS384".into()],
        hmac_secret: Some(SecretString::from("fuzzing-secret-that-is-32-bytes-long")),
        ..JwtSettings::default()
    })
    .expect("fuzz verifier config is valid")
});

fuzz_target!(|data: &[u8]| {
    let Ok(value) = HeaderValue::from_bytes(data) else {
        return;
    };
    // A random input cannot carry a valid HMAC signature for our secret.
    assert!(authenticate_user(Some(&value), &VERIFIER).is_err());
    // The verify route's own two steps before any lookup (shape, then
    // checksum): only the exact shape of an agent token gets through.
    let mut scratch = BasicScratch::default();
    let accepted = presented_agent_token(Some(&value), &mut scratch).is_ok_and(|p| p.check().is_ok());
    if accepted && !value.as_bytes()[..value.len().min(6)].eq_ignore_ascii_case(b"basic ") {
        let text = value.to_str().expect("accepted tokens are ASCII");
        let credential = text.split_once(' ').map(|(_, c)| c.trim()).unwrap_or("");
        assert!(credential.starts_with("sk_agt_") && credential.len() == 71);
    }
});
