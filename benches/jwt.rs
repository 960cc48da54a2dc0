//! User-JWT verification through `agent_tokens::domain::jwt::JwtVerifier`, one
//! algorithm per key family: HS256 (HMAC secret), RS256 (RSA 2048), ES256
//! (EC P-256) and EdDSA (Ed25519). Tokens are signed with the private keys in
//! tests/fixtures/; the verifier loads the public halves, as `serve` does.
//!
//! `cargo bench --bench jwt` (add `-- --quick` for a short run).

use std::hint::black_box;
use std::path::PathBuf;
use std::time::{SystemTime, UNIX_EPOCH};

use agent_tokens::config::JwtSettings;
use agent_tokens::domain::jwt::JwtVerifier;
use criterion::{criterion_group, criterion_main, Criterion};
use jsonwebtoken::{encode, Algorithm, EncodingKey, Header};
use secrecy::SecretString;
use serde_json::json;

const HMAC_SECRET: &str = "bench-hmac-secret-0123456789abcdef";

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

fn read(name: &str) -> Vec<u8> {
    std::fs::read(fixture(name)).expect("the key fixture exists")
}

/// A user JWT valid for an hour, like one an application would issue.
fn sign(alg: Algorithm, key: &EncodingKey) -> String {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("the clock is after 1970")
        .as_secs();
    let claims = json!({ "sub": "user-0000042", "iat": now, "exp": now + 3600 });
    encode(&Header::new(alg), &claims, key).expect("the fixture key signs")
}

fn settings(alg: &str) -> JwtSettings {
    JwtSettings {
        algorithms: vec![alg.to_owned()],
        ..Default::default()
    }
}

/// (name, verifier, a valid token)
fn cases() -> Vec<(&'static str, JwtVerifier, String)> {
    let hs = JwtSettings {
        hmac_secret: Some(SecretString::from(HMAC_SECRET.to_owned())),
        ..settings("HS256")
    };
    // The bench's tokens carry no aud; the check would only add a compare.
    let with_key = |alg: &str, public: &str| JwtSettings {
        public_key_file: Some(fixture(public)),
        require_audience: false,
        ..settings(alg)
    };
    let rsa = EncodingKey::from_rsa_pem(&read("rsa_private.pem")).expect("RSA fixture");
    let ec = EncodingKey::from_ec_pem(&read("ec256_private.pem")).expect("EC fixture");
    let ed = EncodingKey::from_ed_pem(&read("ed25519_private.pem")).expect("Ed25519 fixture");
    vec![
        (
            "HS256",
            JwtVerifier::from_settings(&hs).expect("HS256 settings"),
            sign(
                Algorithm::HS256,
                &EncodingKey::from_secret(HMAC_SECRET.as_bytes()),
            ),
        ),
        (
            "RS256",
            JwtVerifier::from_settings(&with_key("RS256", "rsa_public.pem"))
                .expect("RS256 settings"),
            sign(Algorithm::RS256, &rsa),
        ),
        (
            "ES256",
            JwtVerifier::from_settings(&with_key("ES256", "ec256_public.pem"))
                .expect("ES256 settings"),
            sign(Algorithm::ES256, &ec),
        ),
        (
            "EdDSA",
            JwtVerifier::from_settings(&with_key("EdDSA", "ed25519_public.pem"))
                .expect("EdDSA settings"),
            sign(Algorithm::EdDSA, &ed),
        ),
    ]
}

fn jwt_verify(c: &mut Criterion) {
    let mut group = c.benchmark_group("jwt verify");
    for (name, verifier, token) in cases() {
        let user = verifier.verify(&token).expect("the signed token verifies");
        assert_eq!(user.as_str(), "user-0000042");
        group.bench_function(name, |b| {
            b.iter(|| verifier.verify(black_box(&token)).expect("valid"))
        });
        // A forged signature (its first character changed) is fully
        // checked, then refused.
        let at = token.rfind('.').expect("a JWT has three parts") + 1;
        let mut forged = token.clone();
        let flipped = if &token[at..=at] == "A" { "B" } else { "A" };
        forged.replace_range(at..=at, flipped);
        group.bench_function(format!("{name} (bad signature)"), |b| {
            b.iter(|| verifier.verify(black_box(&forged)).expect_err("forged"))
        });
    }
    group.finish();
}

criterion_group!(benches, jwt_verify);
criterion_main!(benches);
