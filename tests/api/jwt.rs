//! The JWT rejection matrix.
//!
//! Every test starts the real application with one key family configured and
//! calls `GET /api/agent-tokens/me`. For each family a valid token must get
//! the status answer, and every classic forgery or failed check must get the
//! page's 401 (`invalid_token`, "Missing or invalid JWT.").

use base64::Engine;
use jsonwebtoken::{encode, Algorithm, EncodingKey, Header};
use serde_json::{json, Value};

use crate::helpers::*;

const ISSUER: &str = "https://issuer.test";
const AUDIENCE: &str = "agent-tokens";
/// A second HMAC secret, as long as the real one.
const OTHER_HMAC_SECRET: &str = "another-secret-that-is-also-32-bytes-long!!";

fn b64(bytes: impl AsRef<[u8]>) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

/// Claims that pass every configured check: `sub`, `iss`, `aud`, `exp` an hour ahead.
fn good_claims(sub: &str) -> Value {
    json!({
        "sub": sub,
        "iss": ISSUER,
        "aud": AUDIENCE,
        "iat": now(),
        "exp": now() + 3600,
    })
}

/// `good_claims("user-1")` with `changes` applied; a `null` value removes the claim.
fn claims_with(changes: Value) -> Value {
    let mut claims = good_claims("user-1");
    let map = claims.as_object_mut().unwrap();
    for (key, value) in changes.as_object().unwrap() {
        if value.is_null() {
            map.remove(key);
        } else {
            map.insert(key.clone(), value.clone());
        }
    }
    claims
}

/// The same token with its payload segment replaced; header and signature are kept.
fn with_payload(token: &str, claims: &Value) -> String {
    let parts: Vec<&str> = token.split('.').collect();
    assert_eq!(parts.len(), 3, "a compact JWS has three segments");
    format!("{}.{}.{}", parts[0], b64(claims.to_string()), parts[2])
}

/// A fresh EC key of the right curve for `alg`, never configured anywhere.
fn fresh_ec_key(alg: Algorithm) -> EncodingKey {
    use ring::signature::{
        EcdsaKeyPair, ECDSA_P256_SHA256_FIXED_SIGNING, ECDSA_P384_SHA384_FIXED_SIGNING,
    };
    let signing = match alg {
        Algorithm::ES256 => &ECDSA_P256_SHA256_FIXED_SIGNING,
        Algorithm::ES384 => &ECDSA_P384_SHA384_FIXED_SIGNING,
        other => panic!("no EC curve for {other:?}"),
    };
    let pkcs8 = EcdsaKeyPair::generate_pkcs8(signing, &ring::rand::SystemRandom::new()).unwrap();
    EncodingKey::from_ec_der(pkcs8.as_ref())
}

fn sign_with_fresh_ec_key(alg: Algorithm, claims: &Value, kid: Option<&str>) -> String {
    let mut header = Header::new(alg);
    header.kid = kid.map(str::to_owned);
    encode(&header, claims, &fresh_ec_key(alg)).unwrap()
}

/// HS256 signed with the bytes of a public key file: the RS/HS key confusion attack.
fn hs256_with_public_key_as_secret(public_pem: &str, claims: &Value, kid: Option<&str>) -> String {
    let pem = std::fs::read(fixture(public_pem)).unwrap();
    let mut header = Header::new(Algorithm::HS256);
    header.kid = kid.map(str::to_owned);
    encode(&header, claims, &EncodingKey::from_secret(&pem)).unwrap()
}

fn iss_aud_lines() -> String {
    format!("issuer = \"{ISSUER}\"\naudience = \"{AUDIENCE}\"")
}

/// A token the verifier must refuse, and a fragment of the reason it gives
/// (the `error_description` of `WWW-Authenticate`).
struct Rejection {
    label: String,
    token: String,
    reason: &'static str,
}

/// Signs claims into a compact JWT.
type Signer = Box<dyn Fn(&Value) -> String>;
/// Labelled tokens whose header names an algorithm the config refuses for the key.
type WrongAlgorithms = Box<dyn Fn(&Value) -> Vec<(&'static str, String)>>;

/// One way of configuring the verifier, and how an issuer (or an attacker) signs for it.
struct Family {
    name: &'static str,
    /// `[jwt]` lines; issuer and audience are added by [`Family::config`].
    lines: String,
    /// Signs as the configured issuer does.
    sign: Signer,
    /// Signs with another key of the same family.
    sign_other_key: Signer,
    /// Tokens whose header names an algorithm the config does not allow for this key.
    wrong_algorithm: WrongAlgorithms,
    /// The public key file an attacker could use as an HMAC secret, if any.
    public_pem: Option<&'static str>,
    /// The JWKS key the family's tokens name: algorithm, private key fixture, kid.
    jwks_key: Option<(Algorithm, &'static str, &'static str)>,
}

impl Family {
    fn kid(&self) -> Option<&'static str> {
        self.jwks_key.map(|(_, _, kid)| kid)
    }

    fn config(&self) -> TestConfig {
        TestConfig::jwt(&format!("{}\n{}", self.lines, iss_aud_lines()))
    }

    /// Every token the verifier must refuse, with a label for the failure message.
    fn rejected_tokens(&self) -> Vec<Rejection> {
        let sign = &self.sign;
        let valid = sign(&good_claims("user-1"));
        let mut cases: Vec<Rejection> = Vec::new();
        let mut add = |label: &str, token: String, reason: &'static str| {
            cases.push(Rejection {
                label: label.to_owned(),
                token,
                reason,
            })
        };

        const MALFORMED: &str = "not a well-formed JWT";
        const WRONG_ALG: &str = "algorithm is not allowed";
        const BAD_SIGNATURE: &str = "signature is invalid";
        let claims = claims_with;

        for none in ["none", "None", "NONE", "nOnE"] {
            let mut header = json!({ "alg": none, "typ": "JWT" });
            if let Some(kid) = self.kid() {
                header["kid"] = json!(kid);
            }
            add(
                &format!("alg {none:?} and an empty signature"),
                forge(&header, &good_claims("user-1"), b""),
                MALFORMED,
            );
        }
        let mut header = json!({ "alg": "none" });
        if let Some(kid) = self.kid() {
            header["kid"] = json!(kid);
        }
        let signature = valid.rsplit('.').next().unwrap();
        let forged = forge(&header, &good_claims("user-1"), b"");
        add(
            "alg none and the signature of a valid token",
            format!("{forged}{signature}"),
            MALFORMED,
        );

        if let Some(pem) = self.public_pem {
            add(
                "HS256 keyed by the public key PEM (key confusion)",
                hs256_with_public_key_as_secret(pem, &good_claims("user-1"), self.kid()),
                WRONG_ALG,
            );
        }
        for (label, token) in (self.wrong_algorithm)(&good_claims("user-1")) {
            add(label, token, WRONG_ALG);
        }
        add(
            "a signature by another key of the same family",
            (self.sign_other_key)(&good_claims("user-1")),
            BAD_SIGNATURE,
        );
        add(
            "exp two minutes ago (leeway 30 s)",
            sign(&claims(json!({ "exp": now() - 120 }))),
            "has expired",
        );
        add(
            "nbf two minutes ahead (leeway 30 s)",
            sign(&claims(json!({ "nbf": now() + 120 }))),
            "not valid yet",
        );
        add(
            "no exp",
            sign(&claims(json!({ "exp": null }))),
            "required claim exp",
        );
        add(
            "an exp that is a string",
            sign(&claims(json!({ "exp": (now() + 3600).to_string() }))),
            "exp claim is not a number",
        );
        for (claim, value) in [
            ("nbf", json!(1e30)),
            ("nbf", json!(18_446_744_073_709_551_616.0_f64)),
            ("nbf", json!(-1)),
            ("exp", json!(1e30)),
            ("exp", json!(u64::MAX)),
            ("exp", json!(-1)),
            ("iat", json!(1e30)),
            ("iat", json!(-5)),
        ] {
            add(
                &format!("{claim} {value}"),
                sign(&claims(json!({ claim: value }))),
                match claim {
                    "nbf" => "nbf claim is not a number",
                    "exp" => "exp claim is not a number",
                    _ => "iat claim is not a number",
                },
            );
        }
        add(
            "a wrong iss",
            sign(&claims(json!({ "iss": "https://evil.test" }))),
            "issuer is not accepted",
        );
        add(
            "an iss with a trailing slash",
            sign(&claims(json!({ "iss": format!("{ISSUER}/") }))),
            "issuer is not accepted",
        );
        add(
            "no iss",
            sign(&claims(json!({ "iss": null }))),
            "required claim iss",
        );
        add(
            "a wrong aud",
            sign(&claims(json!({ "aud": "someone-else" }))),
            "audience is not accepted",
        );
        add(
            "an aud list without the audience",
            sign(&claims(json!({ "aud": ["a", "b"] }))),
            "audience is not accepted",
        );
        add(
            "no aud",
            sign(&claims(json!({ "aud": null }))),
            "required claim aud",
        );
        add(
            "no sub",
            sign(&claims(json!({ "sub": null }))),
            "user claim is missing",
        );
        add(
            "an empty sub",
            sign(&claims(json!({ "sub": "" }))),
            "user id is empty",
        );
        add(
            "a sub of 256 bytes",
            sign(&claims(json!({ "sub": "x".repeat(256) }))),
            "longer than 255 bytes",
        );
        add(
            "a sub that is a number",
            sign(&claims(json!({ "sub": 42 }))),
            "user claim is missing",
        );
        add(
            "a sub with a control character",
            sign(&claims(json!({ "sub": "a\r\nX-Injected: 1" }))),
            "control characters",
        );
        for sub in [" alice", "alice ", " ", "alice\t"] {
            add(
                &format!("the sub {sub:?} (a gateway strips the spaces)"),
                sign(&claims(json!({ "sub": sub }))),
                if sub.ends_with('\t') {
                    "control characters"
                } else {
                    "starts or ends with whitespace"
                },
            );
        }
        for sub in [
            "ali\u{200B}ce",
            "\u{202E}ecila",
            "al\u{2028}ice",
            "alice\u{FEFF}x",
        ] {
            add(
                &format!("the sub {sub:?} (an invisible character)"),
                sign(&claims(json!({ "sub": sub }))),
                "invisible or non-printing character",
            );
        }
        add(
            "its payload changed to another sub, signature kept",
            with_payload(&valid, &good_claims("user-2")),
            BAD_SIGNATURE,
        );
        add(
            "its payload changed to a later exp, signature kept",
            with_payload(&valid, &claims(json!({ "exp": now() + 7200 }))),
            BAD_SIGNATURE,
        );
        let parts: Vec<&str> = valid.split('.').collect();
        add(
            "its signature removed",
            format!("{}.{}.", parts[0], parts[1]),
            BAD_SIGNATURE,
        );
        add(
            "only two segments",
            format!("{}.{}", parts[0], parts[1]),
            MALFORMED,
        );
        if let Some((alg, key, _)) = self.jwks_key {
            // The right key and algorithm, but a kid the JWKS does not have.
            for kid in ["no-such-kid", "", "RSA-1"] {
                add(
                    &format!("the unknown kid {kid:?}"),
                    sign_with_key(alg, &good_claims("user-1"), key, Some(kid)),
                    "key id is unknown",
                );
            }
        }
        cases
    }
}

fn hs256() -> Family {
    Family {
        name: "HS256",
        lines: format!("algorithms = [\"HS256\"]\nhmac_secret = \"{HMAC_SECRET}\""),
        sign: Box::new(|c| sign_hs(Algorithm::HS256, c, HMAC_SECRET.as_bytes())),
        sign_other_key: Box::new(|c| sign_hs(Algorithm::HS256, c, OTHER_HMAC_SECRET.as_bytes())),
        wrong_algorithm: Box::new(|c| {
            vec![
                (
                    "HS384 with the right secret (config allows HS256 only)",
                    sign_hs(Algorithm::HS384, c, HMAC_SECRET.as_bytes()),
                ),
                (
                    "HS512 with the right secret (config allows HS256 only)",
                    sign_hs(Algorithm::HS512, c, HMAC_SECRET.as_bytes()),
                ),
                (
                    "RS256 signed by an RSA key (config allows HS256 only)",
                    sign_with_key(Algorithm::RS256, c, "rsa", None),
                ),
            ]
        }),
        public_pem: None,
        jwks_key: None,
    }
}

fn public_key_family(
    name: &'static str,
    alg: Algorithm,
    key: &'static str,
    other_key: Option<&'static str>,
    wrong: fn(&Value) -> Vec<(&'static str, String)>,
) -> Family {
    let public_pem: &'static str = Box::leak(format!("{key}_public.pem").into_boxed_str());
    Family {
        name,
        lines: format!(
            "algorithms = [\"{}\"]\npublic_key_file = \"{}\"",
            name,
            fixture(public_pem).display()
        ),
        sign: Box::new(move |c| sign_with_key(alg, c, key, None)),
        sign_other_key: Box::new(move |c| match other_key {
            Some(other) => sign_with_key(alg, c, other, None),
            None => sign_with_fresh_ec_key(alg, c, None),
        }),
        wrong_algorithm: Box::new(wrong),
        public_pem: Some(public_pem),
        jwks_key: None,
    }
}

fn rs256() -> Family {
    public_key_family("RS256", Algorithm::RS256, "rsa", Some("rsa_other"), |c| {
        vec![
            (
                "RS384 signed by the configured key (config allows RS256 only)",
                sign_with_key(Algorithm::RS384, c, "rsa", None),
            ),
            (
                "PS256 signed by the configured key (config allows RS256 only)",
                sign_with_key(Algorithm::PS256, c, "rsa", None),
            ),
        ]
    })
}

fn es256() -> Family {
    public_key_family("ES256", Algorithm::ES256, "ec256", None, |c| {
        vec![(
            "ES384 signed by a P-384 key (config allows ES256 only)",
            sign_with_key(Algorithm::ES384, c, "ec384", None),
        )]
    })
}

fn es384() -> Family {
    public_key_family("ES384", Algorithm::ES384, "ec384", None, |c| {
        vec![(
            "ES256 signed by a P-256 key (config allows ES384 only)",
            sign_with_key(Algorithm::ES256, c, "ec256", None),
        )]
    })
}

fn eddsa() -> Family {
    public_key_family(
        "EdDSA",
        Algorithm::EdDSA,
        "ed25519",
        Some("ed25519_other"),
        |c| {
            vec![
                (
                    "ES256 signed by a P-256 key (config allows EdDSA only)",
                    sign_with_key(Algorithm::ES256, c, "ec256", None),
                ),
                (
                    "RS256 signed by an RSA key (config allows EdDSA only)",
                    sign_with_key(Algorithm::RS256, c, "rsa", None),
                ),
            ]
        },
    )
}

const JWKS_ALGORITHMS: &str = r#"algorithms = ["RS256", "ES256", "ES384", "EdDSA"]"#;

/// The JWKS fixture, with tokens for one of its keys (all carry a `kid`).
fn jwks(kid: &'static str) -> Family {
    let (name, alg, key, public_pem) = match kid {
        "rsa-1" => ("JWKS rsa-1", Algorithm::RS256, "rsa", "rsa_public.pem"),
        "ec-1" => ("JWKS ec-1", Algorithm::ES256, "ec256", "ec256_public.pem"),
        "ec384-1" => (
            "JWKS ec384-1",
            Algorithm::ES384,
            "ec384",
            "ec384_public.pem",
        ),
        "ed-1" => (
            "JWKS ed-1",
            Algorithm::EdDSA,
            "ed25519",
            "ed25519_public.pem",
        ),
        other => panic!("the JWKS fixture has no kid {other}"),
    };
    Family {
        name,
        lines: format!(
            "{JWKS_ALGORITHMS}\njwks_file = \"{}\"",
            fixture("jwks.json").display()
        ),
        sign: Box::new(move |c| sign_with_key(alg, c, key, Some(kid))),
        sign_other_key: Box::new(move |c| match alg {
            Algorithm::RS256 => sign_with_key(alg, c, "rsa_other", Some(kid)),
            Algorithm::EdDSA => sign_with_key(alg, c, "ed25519_other", Some(kid)),
            _ => sign_with_fresh_ec_key(alg, c, Some(kid)),
        }),
        wrong_algorithm: Box::new(move |c| match alg {
            Algorithm::RS256 => vec![
                (
                    "RS384 with kid rsa-1 (config allows RS256 only)",
                    sign_with_key(Algorithm::RS384, c, "rsa", Some("rsa-1")),
                ),
                (
                    "PS256 with kid rsa-1 (config allows RS256 only)",
                    sign_with_key(Algorithm::PS256, c, "rsa", Some("rsa-1")),
                ),
                (
                    "ES256 signed by the P-256 key but naming kid rsa-1",
                    sign_with_key(Algorithm::ES256, c, "ec256", Some("rsa-1")),
                ),
            ],
            Algorithm::ES256 => vec![(
                "ES384 (allowed) naming kid ec-1, a P-256 key",
                sign_with_key(Algorithm::ES384, c, "ec384", Some("ec-1")),
            )],
            Algorithm::ES384 => vec![(
                "ES256 (allowed) naming kid ec384-1, a P-384 key",
                sign_with_key(Algorithm::ES256, c, "ec256", Some("ec384-1")),
            )],
            _ => vec![(
                "RS256 (allowed) naming kid ed-1, an Ed25519 key",
                sign_with_key(Algorithm::RS256, c, "rsa", Some("ed-1")),
            )],
        }),
        public_pem: Some(public_pem),
        jwks_key: Some((alg, key, kid)),
    }
}

/// Asserts the status answer for a user without a token (other fields may follow).
async fn assert_status_answer(resp: reqwest::Response, what: &str) {
    let status = resp.status().as_u16();
    let body: Value = resp.json().await.unwrap_or(Value::Null);
    assert_eq!(status, 200, "{what}: expected 200, got {status} {body}");
    assert_eq!(body["has_token"], json!(false), "{what}: {body}");
    assert_eq!(body["token_prefix"], Value::Null, "{what}: {body}");
    assert!(
        body.as_object()
            .is_some_and(|o| o.contains_key("token_prefix")),
        "{what}: token_prefix is present as null: {body}"
    );
}

/// Asserts the page's 401 for `token`, refused for `reason` (a fragment of the
/// `WWW-Authenticate` error description, so a case cannot pass by failing early).
async fn assert_rejected(app: &TestApp, family: &str, label: &str, token: &str, reason: &str) {
    let resp = app.get_me(token).await;
    let www = resp
        .headers()
        .get("www-authenticate")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    assert_eq!(
        resp.status().as_u16(),
        401,
        "{family}: a token with {label} must be rejected"
    );
    assert!(
        www.contains(reason),
        "{family}: a token with {label} must be rejected because {reason:?}, got {www:?}"
    );
    assert_invalid_jwt(resp).await;
}

/// Valid tokens (including a 255-byte sub and an aud list) get the status answer.
async fn check_valid_tokens(family: Family) {
    let app = spawn_app_with(family.config()).await;
    let sign = &family.sign;
    let accepted = [
        ("an ordinary sub", good_claims("user-1")),
        ("a sub of 255 bytes", good_claims(&"x".repeat(255))),
        ("a non-ASCII sub", good_claims("ünïcødé@example.com")),
        (
            "an aud list that contains the audience",
            claims_with(json!({ "aud": ["other", AUDIENCE] })),
        ),
        (
            "an nbf just passed",
            claims_with(json!({ "nbf": now() - 5 })),
        ),
    ];
    for (label, claims) in accepted {
        let resp = app.get_me(&sign(&claims)).await;
        assert_status_answer(resp, &format!("{}: a token with {label}", family.name)).await;
    }
}

async fn check_rejections(family: Family) {
    let app = spawn_app_with(family.config()).await;
    // The baseline must pass, or every rejection below proves nothing.
    let resp = app.get_me(&(family.sign)(&good_claims("user-1"))).await;
    assert_status_answer(resp, &format!("{}: the baseline token", family.name)).await;
    for case in family.rejected_tokens() {
        assert_rejected(&app, family.name, &case.label, &case.token, case.reason).await;
    }
}

#[tokio::test]
async fn a_valid_hs256_token_is_accepted() {
    check_valid_tokens(hs256()).await;
}

#[tokio::test]
async fn hs256_tokens_that_fail_any_check_are_rejected() {
    check_rejections(hs256()).await;
}

#[tokio::test]
async fn a_valid_rs256_token_is_accepted() {
    check_valid_tokens(rs256()).await;
}

#[tokio::test]
async fn rs256_tokens_that_fail_any_check_are_rejected() {
    check_rejections(rs256()).await;
}

#[tokio::test]
async fn a_valid_es256_token_is_accepted() {
    check_valid_tokens(es256()).await;
}

#[tokio::test]
async fn es256_tokens_that_fail_any_check_are_rejected() {
    check_rejections(es256()).await;
}

#[tokio::test]
async fn a_valid_es384_token_is_accepted() {
    check_valid_tokens(es384()).await;
}

#[tokio::test]
async fn es384_tokens_that_fail_any_check_are_rejected() {
    check_rejections(es384()).await;
}

#[tokio::test]
async fn a_valid_eddsa_token_is_accepted() {
    check_valid_tokens(eddsa()).await;
}

#[tokio::test]
async fn eddsa_tokens_that_fail_any_check_are_rejected() {
    check_rejections(eddsa()).await;
}

#[tokio::test]
async fn valid_tokens_for_every_jwks_key_are_accepted() {
    for kid in ["rsa-1", "ec-1", "ec384-1", "ed-1"] {
        check_valid_tokens(jwks(kid)).await;
    }
}

#[tokio::test]
async fn jwks_tokens_that_fail_any_check_are_rejected() {
    for kid in ["rsa-1", "ec-1", "ec384-1", "ed-1"] {
        check_rejections(jwks(kid)).await;
    }
}

#[tokio::test]
async fn key_confusion_fails_even_when_hs256_is_also_allowed() {
    let app = spawn_app_with(TestConfig::jwt(&format!(
        "algorithms = [\"RS256\", \"HS256\"]\nhmac_secret = \"{HMAC_SECRET}\"\npublic_key_file = \"{}\"\naudience = \"{AUDIENCE}\"",
        fixture("rsa_public.pem").display()
    )))
    .await;
    // Both configured keys work for their own algorithm.
    let claims = json!({ "sub": "user-1", "exp": now() + 3600, "aud": AUDIENCE });
    let resp = app
        .get_me(&sign_with_key(Algorithm::RS256, &claims, "rsa", None))
        .await;
    assert_status_answer(resp, "RS256 with the RSA key").await;
    let resp = app
        .get_me(&sign_hs(Algorithm::HS256, &claims, HMAC_SECRET.as_bytes()))
        .await;
    assert_status_answer(resp, "HS256 with the HMAC secret").await;
    // The RSA public key is never used as an HMAC secret.
    let token = hs256_with_public_key_as_secret("rsa_public.pem", &claims, None);
    assert_rejected(
        &app,
        "RS256+HS256",
        "HS256 keyed by the RSA public key",
        &token,
        "signature is invalid",
    )
    .await;
}

#[tokio::test]
async fn key_confusion_through_a_jwks_kid_fails_even_when_hs256_is_also_allowed() {
    let app = spawn_app_with(TestConfig::jwt(&format!(
        "algorithms = [\"RS256\", \"HS256\"]\nhmac_secret = \"{HMAC_SECRET}\"\njwks_file = \"{}\"\naudience = \"{AUDIENCE}\"",
        fixture("jwks.json").display()
    )))
    .await;
    let claims = json!({ "sub": "user-1", "exp": now() + 3600, "aud": AUDIENCE });
    let resp = app
        .get_me(&sign_with_key(
            Algorithm::RS256,
            &claims,
            "rsa",
            Some("rsa-1"),
        ))
        .await;
    assert_status_answer(resp, "RS256 with kid rsa-1").await;
    let token = hs256_with_public_key_as_secret("rsa_public.pem", &claims, Some("rsa-1"));
    assert_rejected(
        &app,
        "JWKS+HS256",
        "HS256 keyed by the rsa-1 PEM",
        &token,
        "algorithm is not allowed",
    )
    .await;
    let jwks_bytes = std::fs::read(fixture("jwks.json")).unwrap();
    let mut header = Header::new(Algorithm::HS256);
    header.kid = Some("rsa-1".into());
    let token = encode(&header, &claims, &EncodingKey::from_secret(&jwks_bytes)).unwrap();
    assert_rejected(
        &app,
        "JWKS+HS256",
        "HS256 keyed by the JWKS file",
        &token,
        "algorithm is not allowed",
    )
    .await;
}

#[tokio::test]
async fn an_agent_token_on_a_management_route_asks_for_a_user_jwt() {
    let app = spawn_app().await;
    let agent_token = format!("sk_agt_{}", "0123456789abcdef".repeat(4));
    let resp = app.get_me(&agent_token).await;
    let body = assert_error(resp, 401, "user_jwt_required").await;
    let message = body["message"].as_str().unwrap();
    assert!(message.contains("user JWT"), "message was {message:?}");
}

#[tokio::test]
async fn iss_and_aud_checks_pass_when_they_match_the_config() {
    let app = spawn_app_with(TestConfig::jwt(&format!(
        "algorithms = [\"HS256\"]\nhmac_secret = \"{HMAC_SECRET}\"\n{}",
        iss_aud_lines()
    )))
    .await;
    let token = sign_hs(
        Algorithm::HS256,
        &good_claims("user-1"),
        HMAC_SECRET.as_bytes(),
    );
    assert_status_answer(app.get_me(&token).await, "matching iss and aud").await;
}

#[tokio::test]
async fn without_issuer_or_audience_configured_any_iss_and_aud_are_accepted() {
    let app = spawn_app().await;
    let claims = [
        json!({ "sub": "user-1", "exp": now() + 3600 }),
        json!({ "sub": "user-1", "exp": now() + 3600, "iss": "https://anyone.test" }),
        json!({ "sub": "user-1", "exp": now() + 3600, "aud": "anything" }),
        json!({ "sub": "user-1", "exp": now() + 3600, "aud": ["a", "b"] }),
    ];
    for c in claims {
        let token = sign_hs(Algorithm::HS256, &c, HMAC_SECRET.as_bytes());
        assert_status_answer(app.get_me(&token).await, &format!("claims {c}")).await;
    }
}

fn leeway_config(leeway: u64) -> TestConfig {
    TestConfig::jwt(&format!(
        "algorithms = [\"HS256\"]\nhmac_secret = \"{HMAC_SECRET}\"\nleeway_secs = {leeway}"
    ))
}

#[tokio::test]
async fn leeway_lets_a_token_expired_ten_seconds_ago_pass() {
    let app = spawn_app_with(leeway_config(30)).await;
    let expired = json!({ "sub": "user-1", "exp": now() - 10 });
    let token = sign_hs(Algorithm::HS256, &expired, HMAC_SECRET.as_bytes());
    assert_status_answer(app.get_me(&token).await, "exp 10 s ago, leeway 30").await;
    let early = json!({ "sub": "user-1", "exp": now() + 3600, "nbf": now() + 10 });
    let token = sign_hs(Algorithm::HS256, &early, HMAC_SECRET.as_bytes());
    assert_status_answer(app.get_me(&token).await, "nbf in 10 s, leeway 30").await;
}

#[tokio::test]
async fn without_leeway_a_token_expired_ten_seconds_ago_fails() {
    let app = spawn_app_with(leeway_config(0)).await;
    let expired = json!({ "sub": "user-1", "exp": now() - 10 });
    let token = sign_hs(Algorithm::HS256, &expired, HMAC_SECRET.as_bytes());
    assert_rejected(&app, "leeway 0", "exp 10 s ago", &token, "has expired").await;
    let early = json!({ "sub": "user-1", "exp": now() + 3600, "nbf": now() + 10 });
    let token = sign_hs(Algorithm::HS256, &early, HMAC_SECRET.as_bytes());
    assert_rejected(&app, "leeway 0", "nbf in 10 s", &token, "not valid yet").await;
}

#[tokio::test]
async fn user_claim_takes_the_user_id_from_the_configured_claim() {
    let app = spawn_app_with(TestConfig::jwt(&format!(
        "algorithms = [\"HS256\"]\nhmac_secret = \"{HMAC_SECRET}\"\nuser_claim = \"uid\""
    )))
    .await;
    let jwt = |c: Value| sign_hs(Algorithm::HS256, &c, HMAC_SECRET.as_bytes());

    let only_uid = jwt(json!({ "uid": "alice", "exp": now() + 3600 }));
    assert_status_answer(app.get_me(&only_uid).await, "a token with uid").await;

    let only_sub = jwt(json!({ "sub": "alice", "exp": now() + 3600 }));
    assert_rejected(
        &app,
        "user_claim uid",
        "only sub",
        &only_sub,
        "user claim is missing",
    )
    .await;
    let empty_uid = jwt(json!({ "uid": "", "sub": "alice", "exp": now() + 3600 }));
    assert_rejected(
        &app,
        "user_claim uid",
        "an empty uid",
        &empty_uid,
        "user id is empty",
    )
    .await;

    // The id really is uid: alice's token is found whatever sub says.
    let alice_as_bob = jwt(json!({ "uid": "alice", "sub": "bob", "exp": now() + 3600 }));
    let resp = app.rotate(&alice_as_bob).await;
    assert!(resp.status().is_success(), "rotate: {}", resp.status());
    let alice_as_carol = jwt(json!({ "uid": "alice", "sub": "carol", "exp": now() + 3600 }));
    let body: Value = app.get_me(&alice_as_carol).await.json().await.unwrap();
    assert_eq!(body["has_token"], true, "alice has a token: {body}");
    let bob_as_alice = jwt(json!({ "uid": "bob", "sub": "alice", "exp": now() + 3600 }));
    assert_status_answer(app.get_me(&bob_as_alice).await, "uid bob has no token").await;
}

#[tokio::test]
async fn a_token_that_carries_its_own_key_is_not_trusted() {
    // CVE-2018-0114 style: the attacker signs with their own Ed25519 key and
    // embeds its public half (or a URL to it) in the header.
    let app = spawn_app_with(TestConfig::jwt(&format!(
        "algorithms = [\"EdDSA\"]\npublic_key_file = \"{}\"\naudience = \"{AUDIENCE}\"",
        fixture("ed25519_public.pem").display()
    )))
    .await;
    let spki = pem::parse(std::fs::read(fixture("ed25519_other_public.pem")).unwrap()).unwrap();
    let raw = &spki.contents()[spki.contents().len() - 32..];
    let pem = std::fs::read(fixture("ed25519_other_private.pem")).unwrap();
    let attacker = EncodingKey::from_ed_pem(&pem).unwrap();
    let claims = json!({ "sub": "user-1", "exp": now() + 3600, "aud": AUDIENCE });

    let mut header = Header::new(Algorithm::EdDSA);
    header.jwk = Some(
        serde_json::from_value(json!({ "kty": "OKP", "crv": "Ed25519", "x": b64(raw) })).unwrap(),
    );
    let token = encode(&header, &claims, &attacker).unwrap();
    assert_rejected(
        &app,
        "EdDSA",
        "an embedded jwk",
        &token,
        "signature is invalid",
    )
    .await;

    let mut header = Header::new(Algorithm::EdDSA);
    header.jku = Some("https://attacker.test/jwks.json".into());
    header.x5u = Some("https://attacker.test/cert.pem".into());
    let token = encode(&header, &claims, &attacker).unwrap();
    assert_rejected(&app, "EdDSA", "jku and x5u", &token, "signature is invalid").await;
}

#[tokio::test]
async fn an_oversized_token_is_refused_even_when_validly_signed() {
    let app = spawn_app().await;
    let claims = json!({ "sub": "user-1", "exp": now() + 3600, "pad": "x".repeat(16 * 1024) });
    let token = sign_hs(Algorithm::HS256, &claims, HMAC_SECRET.as_bytes());
    assert_rejected(
        &app,
        "HS256",
        "over 16 KiB",
        &token,
        "not a well-formed JWT",
    )
    .await;
}

#[tokio::test]
async fn an_nbf_an_hour_ahead_is_enforced_whether_fractional_or_a_string() {
    // RFC 7519 §2: a NumericDate may be non-integer, and §4.1.5 requires a
    // number. A token not valid for another hour must not pass because its nbf
    // has a fraction, nor because it is malformed (a string).
    let app = spawn_app().await;
    let later = now() + 3600;
    for nbf in [json!(later as f64 + 0.5), json!(later.to_string())] {
        let claims = json!({ "sub": "user-1", "exp": now() + 7200, "nbf": nbf });
        let token = sign_hs(Algorithm::HS256, &claims, HMAC_SECRET.as_bytes());
        let resp = app.get_me(&token).await;
        assert_eq!(
            resp.status().as_u16(),
            401,
            "a token with nbf {nbf} (an hour ahead) must be rejected"
        );
        assert_invalid_jwt(resp).await;
    }
}

#[tokio::test]
async fn a_user_id_a_gateway_would_rewrite_gets_401_and_no_token() {
    let app = spawn_app().await;
    for sub in [" alice", "alice ", "ali\u{200B}ce"] {
        let token = sign_hs(Algorithm::HS256, &claims(sub), HMAC_SECRET.as_bytes());
        assert_invalid_jwt(app.rotate(&token).await).await;
        assert_invalid_jwt(app.get_or_create(&token).await).await;
    }
    let (stored, _dir) = app.stop_and_inspect().await;
    assert!(stored.users.is_empty(), "no token was stored");
}

#[tokio::test]
async fn an_id_token_the_issuer_minted_for_another_client_is_refused() {
    // The red-team case: an IdP's ID token for an unrelated client.
    let app = spawn_app_with(rs256().config()).await;
    let other_client = claims_with(json!({ "aud": "third-party-client-123" }));
    let token = sign_with_key(Algorithm::RS256, &other_client, "rsa", None);
    assert_rejected(&app, "RS256", "aud of another client", &token, "audience").await;
    assert_invalid_jwt(app.rotate(&token).await).await;
}
