//! The verify route: 200 only for a live agent token, 401 for anything else,
//! HEAD without a body, rotation grace, expiry and last-used.

use std::sync::Arc;
use std::time::Instant;

use reqwest::Method;
use serde_json::Value;

use crate::helpers::*;

const VERIFY: &str = "/api/agent-tokens/verify";

fn with_tokens(toml: &str) -> TestConfig {
    TestConfig::hs256().with(&format!("[tokens]\n{toml}"))
}

/// Asserts verify's 401: the challenge, `active: false`, and no echo of the credential.
async fn assert_refused(resp: reqwest::Response, presented: &str) -> Value {
    assert_eq!(resp.status().as_u16(), 401, "verify must answer 401");
    let www = resp
        .headers()
        .get("www-authenticate")
        .expect("WWW-Authenticate")
        .to_str()
        .unwrap()
        .to_owned();
    assert!(www.starts_with("Bearer "), "{www}");
    assert!(www.contains("error=\"invalid_token\""), "{www}");
    assert!(resp.headers().get("x-agent-user-id").is_none());
    let headers = format!("{:?}", resp.headers());
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["active"], false, "{body}");
    assert_eq!(body["error"], "invalid_token");
    assert!(body["message"].is_string());
    if presented.len() > 16 {
        let tail = &presented[presented.len() - 16..];
        assert!(
            !body.to_string().contains(tail),
            "body echoes the credential"
        );
        assert!(!headers.contains(tail), "headers echo the credential");
    }
    body
}

#[tokio::test]
async fn a_live_token_verifies_with_the_user_id_header_and_body() {
    let app = spawn_app().await;
    let token = app.new_token(&user_jwt("alice")).await;
    let resp = app.verify(&token).await;
    assert_eq!(resp.status().as_u16(), 200);
    assert_eq!(resp.headers().get("x-agent-user-id").unwrap(), "alice");
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["active"], true);
    assert_eq!(body["user_id"], "alice");
    assert_eq!(body["token_prefix"], format!("{}...", &token[..15]));
    assert_eq!(
        body["created_at"],
        agent_tokens::domain::clock::rfc3339(app.clock.now())
    );
    assert_eq!(body["expires_at"], Value::Null);
    assert!(!body.to_string().contains(&token[15..]));
}

#[tokio::test]
async fn head_gives_the_same_status_and_headers_without_a_body() {
    let app = spawn_app().await;
    let token = app.new_token(&user_jwt("bob")).await;
    for (credential, status) in [(token.as_str(), 200u16), ("sk_agt_nope", 401)] {
        let get = app.request(Method::GET, VERIFY, Some(credential)).await;
        let head = app.request(Method::HEAD, VERIFY, Some(credential)).await;
        assert_eq!(get.status().as_u16(), status);
        assert_eq!(head.status().as_u16(), status);
        for name in [
            "x-agent-user-id",
            "www-authenticate",
            "content-type",
            "cache-control",
        ] {
            assert_eq!(get.headers().get(name), head.headers().get(name), "{name}");
        }
        assert!(head.bytes().await.unwrap().is_empty(), "HEAD has no body");
    }
}

#[tokio::test]
async fn every_kind_of_bad_credential_gets_401_and_never_another_status() {
    let app = spawn_app().await;
    let token = app.new_token(&user_jwt("carol")).await;
    // Remembered from here on: a near miss of a remembered token must be
    // refused just the same (a hit is found by the whole token's hash).
    assert_eq!(app.verify_status(&token).await, 200);
    let mut flipped = token.clone().into_bytes();
    let last = flipped.len() - 1;
    flipped[last] = if flipped[last] == b'0' { b'1' } else { b'0' };
    let flipped = String::from_utf8(flipped).unwrap();
    let wrong_prefix = token.replacen("sk_agt_", "sk_agx_", 1);
    let upper = format!("sk_agt_{}", token[7..].to_uppercase());
    let truncated = token[..70].to_owned();
    let huge = format!("sk_agt_{}", "a".repeat(10_000));
    let never_issued = {
        // Well-formed with a valid checksum, but never handed out.
        let random = [7u8; 28];
        let sum = sha256_bytes(&random);
        format!("sk_agt_{}{}", hex::encode(random), hex::encode(&sum[..4]))
    };
    let jwt = user_jwt("carol");
    for credential in [
        flipped.as_str(),
        wrong_prefix.as_str(),
        upper.as_str(),
        truncated.as_str(),
        huge.as_str(),
        never_issued.as_str(),
        jwt.as_str(),
        "garbage",
    ] {
        assert_refused(app.verify(credential).await, credential).await;
    }
    // A typo is refused by its checksum, offline, with that reason.
    let body = assert_refused(app.verify(&flipped).await, &flipped).await;
    assert_eq!(body["message"], "The agent token is malformed.");
    // No Authorization header at all, and other schemes.
    assert_refused(app.request(Method::GET, VERIFY, None).await, "").await;
    let resp = app
        .client
        .get(app.url(VERIFY))
        .header("Authorization", format!("Basic {token}"))
        .send()
        .await
        .unwrap();
    assert_refused(resp, &token).await;
    // The real token still works: nothing above changed it.
    assert_eq!(app.verify_status(&token).await, 200);
}

fn sha256_bytes(data: &[u8]) -> Vec<u8> {
    ring::digest::digest(&ring::digest::SHA256, data)
        .as_ref()
        .to_vec()
}

#[tokio::test]
async fn revocation_takes_effect_on_the_very_next_verify() {
    let app = spawn_app().await;
    let jwt = user_jwt("dave");
    let token = app.new_token(&jwt).await;
    assert_eq!(app.verify_status(&token).await, 200);
    assert_eq!(app.revoke(&jwt).await.status().as_u16(), 204);
    let body = assert_refused(app.verify(&token).await, &token).await;
    assert_eq!(
        body["message"],
        "The agent token is not valid (unknown or revoked)."
    );
}

#[tokio::test]
async fn without_grace_a_rotated_out_token_dies_at_once() {
    let app = spawn_app().await;
    let jwt = user_jwt("erin");
    let old = app.new_token(&jwt).await;
    // Answered (and remembered) before the rotation.
    assert_eq!(app.verify_status(&old).await, 200);
    let new = app.new_token(&jwt).await;
    assert_refused(app.verify(&old).await, &old).await;
    assert_eq!(app.verify_status(&new).await, 200);
}

#[tokio::test]
async fn with_grace_the_previous_token_verifies_until_the_window_ends() {
    let app = spawn_app_with(with_tokens("rotation_grace_secs = 60")).await;
    let jwt = user_jwt("frank");
    let old = app.new_token(&jwt).await;
    let before: Value = app.verify(&old).await.json().await.unwrap();
    assert_eq!(before["expires_at"], Value::Null);
    let new = app.new_token(&jwt).await;
    let resp = app.verify(&old).await;
    assert_eq!(resp.status().as_u16(), 200);
    let body: Value = resp.json().await.unwrap();
    let until = agent_tokens::domain::clock::rfc3339(app.clock.now() + 60);
    assert_eq!(body["expires_at"], until, "the grace end is when it stops");

    app.clock.advance(59);
    assert_eq!(app.verify_status(&old).await, 200, "just inside the window");
    app.clock.advance(1);
    let body = assert_refused(app.verify(&old).await, &old).await;
    assert_eq!(body["message"], "The agent token was rotated out.");
    assert_eq!(app.verify_status(&new).await, 200);
}

#[tokio::test]
async fn delete_ends_every_token_of_the_user_grace_included() {
    let app = spawn_app_with(with_tokens("rotation_grace_secs = 3600")).await;
    let jwt = user_jwt("gina");
    let old = app.new_token(&jwt).await;
    let new = app.new_token(&jwt).await;
    assert_eq!(app.verify_status(&old).await, 200);
    app.revoke(&jwt).await;
    assert_refused(app.verify(&old).await, &old).await;
    assert_refused(app.verify(&new).await, &new).await;
    let (stored, _dir) = app.stop_and_inspect().await;
    assert!(stored.users.is_empty());
    assert!(stored.index.is_empty());
    assert_eq!(stored.grace_entries, 0);
}

#[tokio::test]
async fn a_second_rotation_ends_the_earlier_grace_token() {
    let app = spawn_app_with(with_tokens("rotation_grace_secs = 3600")).await;
    let jwt = user_jwt("hank");
    let first = app.new_token(&jwt).await;
    let second = app.new_token(&jwt).await;
    let third = app.new_token(&jwt).await;
    assert_refused(app.verify(&first).await, &first).await;
    assert_eq!(app.verify_status(&second).await, 200);
    assert_eq!(app.verify_status(&third).await, 200);
    let (stored, _dir) = app.stop_and_inspect().await;
    assert_eq!(stored.index.len(), 2);
    assert_eq!(stored.grace_entries, 1);
}

#[tokio::test]
async fn expired_grace_entries_are_removed_from_storage() {
    let app = spawn_app_with(with_tokens("rotation_grace_secs = 10")).await;
    for i in 0..5 {
        let jwt = user_jwt(&format!("user-{i}"));
        app.new_token(&jwt).await;
        app.new_token(&jwt).await;
    }
    app.clock.advance(11);
    // The sweep runs at start (and every 30 s while running).
    let app = app.restart().await;
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    let (stored, _dir) = app.stop_and_inspect().await;
    assert_eq!(stored.users.len(), 5);
    assert_eq!(stored.index.len(), 5, "only the current tokens remain");
    assert_eq!(stored.grace_entries, 0);
    assert!(stored.users.iter().all(|(_, r)| r.previous.is_none()));
    assert!(stored.index.iter().all(|(_, e)| e.grace_until.is_none()));
}

#[tokio::test]
async fn get_me_shows_created_and_last_used_times() {
    let app = spawn_app().await;
    let jwt = user_jwt("ivy");
    let token = app.new_token(&jwt).await;
    let created = app.clock.now();
    let me: Value = app.get_me(&jwt).await.json().await.unwrap();
    assert_eq!(
        me["created_at"],
        agent_tokens::domain::clock::rfc3339(created)
    );
    assert_eq!(me["last_used_at"], Value::Null, "never used yet");
    assert_eq!(me["expires_at"], Value::Null);
    assert_eq!(me["has_token"], true);

    app.clock.advance(5);
    assert_eq!(app.verify_status(&token).await, 200);
    let me: Value = app.get_me(&jwt).await.json().await.unwrap();
    let first_use = agent_tokens::domain::clock::rfc3339(created + 5);
    assert_eq!(me["last_used_at"], first_use);

    // Within the minute: not stamped again (verify stays a read).
    app.clock.advance(59);
    assert_eq!(app.verify_status(&token).await, 200);
    let me: Value = app.get_me(&jwt).await.json().await.unwrap();
    assert_eq!(me["last_used_at"], first_use);

    app.clock.advance(1);
    assert_eq!(app.verify_status(&token).await, 200);
    let me: Value = app.get_me(&jwt).await.json().await.unwrap();
    let second_use = agent_tokens::domain::clock::rfc3339(created + 65);
    assert_eq!(me["last_used_at"], second_use);

    let app = app.restart().await;
    let me: Value = app.get_me(&jwt).await.json().await.unwrap();
    assert_eq!(
        me["last_used_at"], second_use,
        "last-used survives a restart"
    );
}

#[tokio::test]
async fn max_age_expires_tokens_and_rotation_starts_a_fresh_lifetime() {
    let app = spawn_app_with(with_tokens("max_age_days = 1")).await;
    let jwt = user_jwt("kate");
    let token = app.new_token(&jwt).await;
    let created = app.clock.now();
    let expires = agent_tokens::domain::clock::rfc3339(created + 86_400);
    let me: Value = app.get_me(&jwt).await.json().await.unwrap();
    assert_eq!(me["expires_at"], expires);
    let body: Value = app.verify(&token).await.json().await.unwrap();
    assert_eq!(body["expires_at"], expires);

    app.clock.advance(86_399);
    assert_eq!(
        app.verify_status(&token).await,
        200,
        "one second before expiry"
    );
    app.clock.advance(1);
    let body = assert_refused(app.verify(&token).await, &token).await;
    assert_eq!(body["message"], "The agent token has expired.");

    let fresh = app.new_token(&jwt).await;
    assert_eq!(app.verify_status(&fresh).await, 200);
    let me: Value = app.get_me(&jwt).await.json().await.unwrap();
    assert_eq!(
        me["expires_at"],
        agent_tokens::domain::clock::rfc3339(app.clock.now() + 86_400)
    );
}

#[tokio::test]
async fn a_user_id_with_unicode_reaches_the_header_intact() {
    let app = spawn_app().await;
    let token = app.new_token(&user_jwt("zoë@example.com")).await;
    let resp = app.verify(&token).await;
    assert_eq!(resp.status().as_u16(), 200);
    assert_eq!(
        resp.headers().get("x-agent-user-id").unwrap().as_bytes(),
        "zoë@example.com".as_bytes()
    );
}

#[tokio::test]
async fn other_methods_on_verify_are_405_not_another_4xx_for_tokens() {
    let app = spawn_app().await;
    let resp = app.request(Method::POST, VERIFY, None).await;
    assert_eq!(resp.status().as_u16(), 405);
}

/// One rotation: the token, when the request was sent and when its answer came.
struct Rotation {
    token: String,
    sent: Instant,
    answered: Instant,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_verifies_during_rotations_accept_only_tokens_live_at_that_moment() {
    let app = Arc::new(spawn_app().await);
    let jwt = user_jwt("racer");
    let rotations = Arc::new(tokio::sync::Mutex::new(Vec::<Rotation>::new()));
    let done = Arc::new(std::sync::atomic::AtomicBool::new(false));

    let rotator = {
        let (app, rotations, done) = (app.clone(), rotations.clone(), done.clone());
        tokio::spawn(async move {
            for _ in 0..40 {
                let sent = Instant::now();
                let token = app.new_token(&jwt).await;
                let answered = Instant::now();
                rotations.lock().await.push(Rotation {
                    token,
                    sent,
                    answered,
                });
            }
            done.store(true, std::sync::atomic::Ordering::SeqCst);
        })
    };
    let mut verifiers = Vec::new();
    for v in 0..8 {
        let (app, rotations, done) = (app.clone(), rotations.clone(), done.clone());
        verifiers.push(tokio::spawn(async move {
            let mut observations = Vec::new();
            let mut n = 0usize;
            while !done.load(std::sync::atomic::Ordering::SeqCst) {
                let known: Vec<String> = rotations
                    .lock()
                    .await
                    .iter()
                    .map(|r| r.token.clone())
                    .collect();
                if known.is_empty() {
                    tokio::task::yield_now().await;
                    continue;
                }
                // Mostly recent tokens, sometimes old ones.
                let k = if n.is_multiple_of(3) {
                    (n * 7 + v) % known.len()
                } else {
                    known.len() - 1
                };
                n += 1;
                let start = Instant::now();
                let status = app.verify_status(&known[k]).await;
                observations.push((k, start, Instant::now(), status));
            }
            observations
        }));
    }
    rotator.await.unwrap();
    let rotations = rotations.lock().await;
    let mut checked = 0;
    for verifier in verifiers {
        for (k, start, end, status) in verifier.await.unwrap() {
            checked += 1;
            let died_by = rotations.get(k + 1).map(|r| r.answered);
            let dying_from = rotations.get(k + 1).map(|r| r.sent);
            match status {
                200 => assert!(
                    died_by.is_none_or(|d| start < d),
                    "token {k} verified although its successor was answered before the check began"
                ),
                401 => assert!(
                    dying_from.is_some_and(|d| end > d),
                    "token {k} refused although no rotation had started before the check ended"
                ),
                other => panic!("unexpected status {other}"),
            }
        }
    }
    assert!(checked > 100, "only {checked} verifies ran");
}

#[tokio::test]
async fn a_store_written_by_schema_1_is_migrated_and_its_tokens_still_verify() {
    if crate::helpers::on_postgres() {
        eprintln!("embedded store only: this test migrates an embedded store of schema 1");
        return;
    }
    #[derive(serde::Serialize)]
    struct UserV1 {
        hash: [u8; 32],
        prefix: String,
        created_at: u64,
    }
    #[derive(serde::Serialize)]
    struct IndexV1 {
        user_id: String,
        prefix: String,
        created_at: u64,
    }
    fn v1_bytes<T: serde::Serialize>(value: &T) -> Vec<u8> {
        let mut out = vec![1u8];
        out.extend(bincode::serde::encode_to_vec(value, bincode::config::standard()).unwrap());
        out
    }
    // A token the old version would have issued.
    let random = [42u8; 28];
    let sum = sha256_bytes(&random);
    let token = format!("sk_agt_{}{}", hex::encode(random), hex::encode(&sum[..4]));
    let prefix = format!("{}...", &token[..15]);
    let created_at = 1_790_000_000u64;

    let dir = tempfile::tempdir().unwrap();
    {
        let db = legacy_db(&dir.path().join("db"));
        db.open_tree("meta")
            .unwrap()
            .insert("schema_version", &1u32.to_be_bytes())
            .unwrap();
        db.open_tree("user_token")
            .unwrap()
            .insert(
                "legacy-user",
                v1_bytes(&UserV1 {
                    hash: sha256(&token),
                    prefix: prefix.clone(),
                    created_at,
                }),
            )
            .unwrap();
        db.open_tree("tokenhash_user")
            .unwrap()
            .insert(
                sha256(&token),
                v1_bytes(&IndexV1 {
                    user_id: "legacy-user".into(),
                    prefix: prefix.clone(),
                    created_at,
                }),
            )
            .unwrap();
        close_legacy(db, &dir.path().join("db"));
    }
    let app = TestApp::start_in(
        TestConfig::hs256(),
        dir,
        agent_tokens::domain::clock::Clock::manual(),
    )
    .await;
    let resp = app.verify(&token).await;
    assert_eq!(resp.status().as_u16(), 200);
    assert_eq!(
        resp.headers().get("x-agent-user-id").unwrap(),
        "legacy-user"
    );
    let me: Value = app
        .get_me(&user_jwt("legacy-user"))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(me["token_prefix"], prefix);
    assert_eq!(
        me["created_at"],
        agent_tokens::domain::clock::rfc3339(created_at)
    );
    // Rotation works on a migrated record.
    let fresh = app.new_token(&user_jwt("legacy-user")).await;
    assert_refused(app.verify(&token).await, &token).await;
    assert_eq!(app.verify_status(&fresh).await, 200);

    let (dir, _) = app.stop().await;
    let version = agent_tokens::store::raw::get(&dir.path().join("db"), "meta", b"schema_version")
        .unwrap()
        .unwrap();
    assert_eq!(&version[..], &3u32.to_be_bytes());
}

/// A token the way any release issues it, with its display prefix.
fn legacy_token(seed: u8) -> (String, String) {
    let random = [seed; 28];
    let sum = sha256_bytes(&random);
    let token = format!("sk_agt_{}{}", hex::encode(random), hex::encode(&sum[..4]));
    let prefix = format!("{}...", &token[..15]);
    (token, prefix)
}

#[tokio::test]
async fn a_store_written_by_schema_2_is_migrated_with_its_grace_token_and_last_use() {
    if crate::helpers::on_postgres() {
        eprintln!("embedded store only: this test migrates an embedded store of schema 2");
        return;
    }
    #[derive(serde::Serialize)]
    struct GraceV2 {
        hash: [u8; 32],
        prefix: String,
        until: u64,
    }
    #[derive(serde::Serialize)]
    struct UserV2 {
        hash: [u8; 32],
        prefix: String,
        created_at: u64,
        last_used_at: Option<u64>,
        previous: Option<GraceV2>,
    }
    #[derive(serde::Serialize)]
    struct IndexV2 {
        user_id: String,
        prefix: String,
        created_at: u64,
        last_used_at: Option<u64>,
        grace_until: Option<u64>,
    }
    fn v2_bytes<T: serde::Serialize>(value: &T) -> Vec<u8> {
        let mut out = vec![2u8];
        out.extend(bincode::serde::encode_to_vec(value, bincode::config::standard()).unwrap());
        out
    }
    let (current, current_prefix) = legacy_token(7);
    let (previous, previous_prefix) = legacy_token(8);
    let clock = agent_tokens::domain::clock::Clock::manual();
    let now = clock.now();
    // Used within the last minute: the verifies below do not stamp it again.
    let (created_at, used_at, until) = (now - 600, now - 30, now + 3600);
    let user_bytes = v2_bytes(&UserV2 {
        hash: sha256(&current),
        prefix: current_prefix.clone(),
        created_at,
        last_used_at: Some(used_at),
        previous: Some(GraceV2 {
            hash: sha256(&previous),
            prefix: previous_prefix.clone(),
            until,
        }),
    });

    let dir = tempfile::tempdir().unwrap();
    {
        let db = legacy_db(&dir.path().join("db"));
        db.open_tree("meta")
            .unwrap()
            .insert("schema_version", &2u32.to_be_bytes())
            .unwrap();
        db.open_tree("user_token")
            .unwrap()
            .insert("v2-user", user_bytes.clone())
            .unwrap();
        let index = db.open_tree("tokenhash_user").unwrap();
        for (token, prefix, grace_until) in [
            (&current, &current_prefix, None),
            (&previous, &previous_prefix, Some(until)),
        ] {
            let entry = IndexV2 {
                user_id: "v2-user".into(),
                prefix: prefix.clone(),
                created_at,
                last_used_at: Some(used_at),
                grace_until,
            };
            index.insert(sha256(token), v2_bytes(&entry)).unwrap();
        }
        let mut grace_key = until.to_be_bytes().to_vec();
        grace_key.extend_from_slice(&sha256(&previous));
        db.open_tree("grace_expiry")
            .unwrap()
            .insert(grace_key, "v2-user")
            .unwrap();
        drop(index);
        close_legacy(db, &dir.path().join("db"));
    }
    let app = TestApp::start_in(TestConfig::hs256(), dir, clock).await;
    let body: Value = app.verify(&current).await.json().await.unwrap();
    assert_eq!(body["user_id"], "v2-user");
    assert_eq!(body["token_prefix"], current_prefix);
    let body: Value = app.verify(&previous).await.json().await.unwrap();
    assert_eq!(body["token_prefix"], previous_prefix);
    assert_eq!(
        body["expires_at"],
        agent_tokens::domain::clock::rfc3339(until)
    );
    let me: Value = app.get_me(&user_jwt("v2-user")).await.json().await.unwrap();
    assert_eq!(me["token_prefix"], current_prefix);
    assert_eq!(
        me["created_at"],
        agent_tokens::domain::clock::rfc3339(created_at)
    );
    assert_eq!(
        me["last_used_at"],
        agent_tokens::domain::clock::rfc3339(used_at)
    );

    let (stored, dir) = app.stop_and_inspect().await;
    let (_, record) = &stored.users[0];
    assert_eq!(record.prefix, current_prefix);
    assert_eq!(record.previous.as_ref().unwrap().prefix, previous_prefix);
    let path = dir.path().join("db");
    let version = agent_tokens::store::raw::get(&path, "meta", b"schema_version").unwrap();
    assert_eq!(&version.unwrap()[..], &3u32.to_be_bytes());
    let migrated = agent_tokens::store::raw::get(&path, "user_token", b"v2-user").unwrap();
    let migrated = migrated.unwrap();
    assert!(
        migrated.len() + 2 * 14 <= user_bytes.len(),
        "both prefixes are stored in 5 bytes each, not 19: {} then {} bytes",
        user_bytes.len(),
        migrated.len()
    );
}

fn basic_auth(user: &str, password: &str) -> String {
    use base64::Engine;
    let pair = format!("{user}:{password}");
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(pair)
    )
}

/// Status, the headers a gateway passes on, and the body of a verify answer.
async fn seen(resp: reqwest::Response) -> (u16, Option<String>, Option<String>, String) {
    let header = |name: &str| {
        resp.headers()
            .get(name)
            .map(|v| v.to_str().unwrap().to_owned())
    };
    let (user, expires) = (
        header("x-agent-user-id"),
        header("x-agent-token-expires-at"),
    );
    (
        resp.status().as_u16(),
        user,
        expires,
        resp.text().await.unwrap(),
    )
}

async fn verify_with(app: &TestApp, name: &str, value: &str) -> reqwest::Response {
    app.client
        .get(app.url(VERIFY))
        .header(name, value)
        .send()
        .await
        .unwrap()
}

#[tokio::test]
async fn a_basic_password_verifies_exactly_as_bearer_does() {
    let app = spawn_app().await;
    let token = app.new_token(&user_jwt("alice")).await;
    let bearer = seen(app.verify(&token).await).await;
    assert_eq!(bearer.0, 200);
    for user in ["x-access-token", "git", ""] {
        let resp = verify_with(&app, "authorization", &basic_auth(user, &token)).await;
        assert_eq!(seen(resp).await, bearer, "user name {user:?}");
    }
    // The token as the user name with an empty password (`curl -u TOKEN:`).
    let resp = verify_with(&app, "authorization", &basic_auth(&token, "")).await;
    assert_eq!(seen(resp).await, bearer);
    // A wrong password is the same 401 as a wrong bearer token.
    let wrong = format!("{}0", &token[..70]);
    let resp = verify_with(&app, "authorization", &basic_auth("git", &wrong)).await;
    assert_refused(resp, &wrong).await;
    app.revoke(&user_jwt("alice")).await;
    let resp = verify_with(&app, "authorization", &basic_auth("git", &token)).await;
    let body = assert_refused(resp, &token).await;
    assert_eq!(
        body["message"],
        "The agent token is not valid (unknown or revoked)."
    );
}

#[tokio::test]
async fn no_credential_is_challenged_for_bearer_and_basic() {
    let app = spawn_app().await;
    let resp = app.client.get(app.url(VERIFY)).send().await.unwrap();
    assert_eq!(resp.status().as_u16(), 401);
    let challenges: Vec<&str> = resp
        .headers()
        .get_all("www-authenticate")
        .iter()
        .map(|v| v.to_str().unwrap())
        .collect();
    // One header: nginx auth_request passes on only the first.
    assert_eq!(
        challenges,
        ["Bearer realm=\"agent-tokens\", error=\"invalid_token\", \
             error_description=\"No agent token was presented\", \
             Basic realm=\"agent-tokens\", charset=\"UTF-8\""]
    );
}

#[tokio::test]
async fn a_configured_api_key_header_carries_the_bare_token() {
    let app =
        spawn_app_with(TestConfig::hs256().with("[verify]\napi_key_header = \"X-API-Key\"")).await;
    let token = app.new_token(&user_jwt("bob")).await;
    let bearer = seen(app.verify(&token).await).await;
    assert_eq!(bearer.0, 200);
    let resp = verify_with(&app, "x-api-key", &token).await;
    assert_eq!(seen(resp).await, bearer);
    // The configured header is read first: it is what the operator named.
    let resp = app
        .client
        .get(app.url(VERIFY))
        .header("x-api-key", &token)
        .header("authorization", "Bearer something-else")
        .send()
        .await
        .unwrap();
    assert_eq!(seen(resp).await, bearer);
    let resp = verify_with(&app, "x-api-key", "sk_agt_nope").await;
    assert_refused(resp, "sk_agt_nope").await;
    // Without the setting, the header means nothing.
    let plain = spawn_app().await;
    let token = plain.new_token(&user_jwt("bob")).await;
    let resp = verify_with(&plain, "x-api-key", &token).await;
    assert_refused(resp, &token).await;
}

#[tokio::test]
async fn answers_say_when_an_expiring_token_stops_verifying() {
    let app = spawn_app_with(with_tokens("max_age_days = 1\nrotation_grace_secs = 600")).await;
    let jwt = user_jwt("carol");
    let first = app.new_token(&jwt).await;
    let created = app.clock.now();
    let (status, _, expires, _) = seen(app.verify(&first).await).await;
    assert_eq!(status, 200);
    let by_age = agent_tokens::domain::clock::rfc3339(created + 86_400);
    assert_eq!(expires.as_deref(), Some(by_age.as_str()));
    // Rotated out: it stops at the end of the grace window, the earlier limit.
    app.clock.advance(10);
    let second = app.new_token(&jwt).await;
    let resp = app
        .client
        .head(app.url(VERIFY))
        .bearer_auth(&first)
        .send()
        .await
        .unwrap();
    let (status, _, expires, _) = seen(resp).await;
    assert_eq!(status, 200);
    let grace_end = agent_tokens::domain::clock::rfc3339(created + 10 + 600);
    assert_eq!(expires.as_deref(), Some(grace_end.as_str()));
    let (_, _, expires, body) = seen(app.verify(&second).await).await;
    let body: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(expires.as_deref(), body["expires_at"].as_str());
    // A token that never expires carries no such header.
    let plain = spawn_app().await;
    let token = plain.new_token(&jwt).await;
    let (status, _, expires, _) = seen(plain.verify(&token).await).await;
    assert_eq!((status, expires), (200, None));
}
