//! The audit trail as a user sees it (`GET /me/events`) and as an operator
//! ships it (`audit.file`): every change, its actor and request, never a secret.

use reqwest::Method;
use serde_json::Value;

use crate::helpers::*;

const EVENTS: &str = "/api/agent-tokens/me/events";

fn prefix_of(token: &str) -> String {
    format!("{}...", &token[..15])
}

async fn events(app: &TestApp, jwt: &str) -> Vec<Value> {
    let resp = app.request(Method::GET, EVENTS, Some(jwt)).await;
    assert_eq!(resp.status().as_u16(), 200);
    assert_eq!(resp.headers().get("cache-control").unwrap(), "no-store");
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body.as_object().unwrap().len(), 1, "{body}");
    body["events"].as_array().unwrap().clone()
}

/// The events once the background sweep (run at start) has caught up.
async fn events_after_sweep(app: &TestApp, jwt: &str, expected: &[&str]) -> Vec<Value> {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let seen = events(app, jwt).await;
        if types(&seen) == expected || std::time::Instant::now() > deadline {
            assert_eq!(types(&seen), expected);
            return seen;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

fn types(events: &[Value]) -> Vec<&str> {
    events.iter().map(|e| e["type"].as_str().unwrap()).collect()
}

/// Asserts that nothing secret appears in `text`: the tokens, their
/// SHA-256 hashes (hex), and the JWTs.
fn assert_no_secret(text: &str, tokens: &[&str], jwts: &[&str]) {
    for token in tokens {
        assert!(!text.contains(token), "a token in {text}");
        assert!(!text.contains(&token[7..]), "a token's hex in {text}");
        assert!(
            !text.contains(&hex::encode(sha256(token))),
            "a token hash in {text}"
        );
    }
    for jwt in jwts {
        assert!(!text.contains(jwt), "a JWT in {text}");
    }
}

#[tokio::test]
async fn a_user_sees_each_change_to_their_token_newest_first() {
    let app = spawn_app().await;
    let jwt = user_jwt("alice");
    assert!(events(&app, &jwt).await.is_empty());
    let created = app
        .client
        .post(app.url("/api/agent-tokens/me/get-or-create"))
        .bearer_auth(&jwt)
        .header("X-Request-Id", "req-create-1")
        .send()
        .await
        .unwrap();
    let first: Value = created.json().await.unwrap();
    let first = first["token"].as_str().unwrap().to_owned();
    // An existing token changes nothing: no event.
    assert_eq!(app.get_or_create(&jwt).await.status().as_u16(), 200);
    let second = app.new_token(&jwt).await;
    assert_eq!(app.revoke(&jwt).await.status().as_u16(), 204);
    // Nothing left to revoke: no event.
    assert_eq!(app.revoke(&jwt).await.status().as_u16(), 204);
    // Another user's changes are theirs alone.
    app.new_token(&user_jwt("bob")).await;

    let seen = events(&app, &jwt).await;
    assert_eq!(types(&seen), ["revoked", "rotated", "created"], "{seen:?}");
    for e in &seen {
        assert_eq!(e["actor"], "user", "{e}");
        assert!(e["at"].as_str().unwrap().ends_with('Z'), "{e}");
        assert!(e.get("address").is_none(), "addresses are off by default");
        assert!(e.get("user_id").is_none(), "{e}");
    }
    assert_eq!(seen[2]["token_prefix"], prefix_of(&first));
    assert_eq!(seen[2]["request_id"], "req-create-1");
    assert_eq!(seen[1]["token_prefix"], prefix_of(&second));
    assert_eq!(seen[1]["previous_prefix"], prefix_of(&first));
    let generated = seen[1]["request_id"].as_str().unwrap();
    assert_eq!(generated.len(), 16, "a random id when none was sent");
    assert_eq!(seen[0]["token_prefix"], prefix_of(&second));
    assert_eq!(types(&events(&app, &user_jwt("bob")).await), ["created"]);
    assert_no_secret(
        &serde_json::to_string(&seen).unwrap(),
        &[&first, &second],
        &[&jwt],
    );
}

#[tokio::test]
async fn events_need_a_user_jwt_and_an_agent_token_is_refused() {
    let app = spawn_app().await;
    let jwt = user_jwt("alice");
    let token = app.new_token(&jwt).await;
    let resp = app.request(Method::GET, EVENTS, Some(&token)).await;
    assert_error(resp, 401, "user_jwt_required").await;
    let resp = app.request(Method::GET, EVENTS, None).await;
    assert_error(resp, 401, "missing_credentials").await;
    let resp = app.request(Method::POST, EVENTS, Some(&jwt)).await;
    assert_eq!(resp.status().as_u16(), 405);
}

#[tokio::test]
async fn a_grace_window_that_ends_is_an_event_of_the_system() {
    let config = TestConfig::hs256().with("[tokens]\nrotation_grace_secs = 60");
    let app = spawn_app_with(config).await;
    let jwt = user_jwt("alice");
    let first = app.new_token(&jwt).await;
    app.new_token(&jwt).await;
    app.clock.advance(61);
    // The sweep runs at start (and every 30 s).
    let app = app.restart().await;
    let seen = events_after_sweep(&app, &jwt, &["grace_ended", "rotated", "created"]).await;
    assert_eq!(seen[0]["actor"], "system");
    assert_eq!(seen[0]["token_prefix"], prefix_of(&first));
    assert!(seen[0].get("request_id").is_none());
}

#[tokio::test]
async fn events_past_the_retention_are_swept_and_the_rest_kept() {
    let config = TestConfig::hs256().with("[audit]\nretention_days = 2");
    let app = spawn_app_with(config).await;
    let jwt = user_jwt("alice");
    app.new_token(&jwt).await;
    app.clock.advance(86_400 + 1);
    app.new_token(&jwt).await;
    app.clock.advance(86_400);
    let app = app.restart().await;
    events_after_sweep(&app, &jwt, &["rotated"]).await;
}

#[tokio::test]
async fn addresses_are_recorded_only_when_asked_and_from_the_trusted_header() {
    let config = TestConfig::hs256().with("[audit]\nrecord_addresses = true");
    let app = spawn_app_with(config).await;
    let jwt = user_jwt("alice");
    app.new_token(&jwt).await;
    assert_eq!(events(&app, &jwt).await[0]["address"], "127.0.0.1");
    app.stop().await;

    let config = TestConfig::hs256().with(
        "[audit]\nrecord_addresses = true\n[rate_limit]\nmanagement_per_minute = 0\nclient_ip_header = \"X-Real-IP\"",
    );
    let app = spawn_app_with(config).await;
    let resp = app
        .client
        .post(app.url("/api/agent-tokens/me"))
        .bearer_auth(&jwt)
        .header("X-Real-IP", "203.0.113.7")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 200);
    assert_eq!(events(&app, &jwt).await[0]["address"], "203.0.113.7");
}

#[tokio::test]
async fn the_audit_file_gets_every_event_as_a_json_line_and_no_secret() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("audit.jsonl");
    let config = TestConfig::hs256().with(&format!("[audit]\nfile = \"{}\"", file.display()));
    let app = spawn_app_with(config).await;
    let jwt = user_jwt("alice");
    let first = app.new_token(&jwt).await;
    let second = app.new_token(&jwt).await;
    assert_eq!(app.revoke(&jwt).await.status().as_u16(), 204);
    let text = std::fs::read_to_string(&file).unwrap();
    let lines: Vec<Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(types(&lines), ["created", "rotated", "revoked"]);
    for line in &lines {
        assert_eq!(line["user_id"], "alice");
        assert_eq!(line["actor"], "user");
    }
    assert_no_secret(&text, &[&first, &second], &[&jwt]);
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&file).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600);
    // Rotated away by a log rotator: the next event starts a new file.
    std::fs::rename(&file, dir.path().join("audit.jsonl.1")).unwrap();
    app.new_token(&jwt).await;
    let text = std::fs::read_to_string(&file).unwrap();
    assert_eq!(text.lines().count(), 1, "{text}");
    assert!(text.contains("\"created\""), "{text}");
}
