//! Revocation by possession (`POST /api/agent-tokens/revoke`) against the
//! real binary: whoever holds a token can kill it, the answer says nothing
//! about which tokens were live, and the revocation survives SIGKILL.

mod common;

use common::*;
use reqwest::Method;
use serde_json::{json, Value};

const REVOKE: &str = "/api/agent-tokens/revoke";

struct Running {
    server: Server,
    client: reqwest::Client,
    _dir: tempfile::TempDir,
}

fn start(extra: &str) -> (Running, std::path::PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config_with(dir.path(), extra);
    let server = Server::start(&config);
    (
        Running {
            server,
            client: reqwest::Client::new(),
            _dir: dir,
        },
        config,
    )
}

impl Running {
    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.server.base())
    }

    async fn report(&self, body: &str) -> (u16, String) {
        let resp = self
            .client
            .post(self.url(REVOKE))
            .header("content-type", "application/json")
            .body(body.to_owned())
            .send()
            .await
            .unwrap();
        let status = resp.status().as_u16();
        (status, resp.text().await.unwrap())
    }

    async fn new_token(&self, user: &str) -> String {
        let (status, body) = call(
            &self.client,
            Method::POST,
            &self.url("/api/agent-tokens/me"),
            &hs256_jwt(user),
        )
        .await;
        assert_eq!(status, 200, "{body}");
        body["token"].as_str().unwrap().to_owned()
    }

    async fn verify(&self, token: &str) -> u16 {
        call(
            &self.client,
            Method::GET,
            &self.url("/api/agent-tokens/verify"),
            token,
        )
        .await
        .0
    }

    async fn me(&self, user: &str) -> Value {
        call(
            &self.client,
            Method::GET,
            &self.url("/api/agent-tokens/me"),
            &hs256_jwt(user),
        )
        .await
        .1
    }
}

/// A well-formed token (valid checksum) that no server issued.
fn unknown_token() -> String {
    agent_tokens::domain::token::PlainToken::generate(&ring::rand::SystemRandom::new())
        .unwrap()
        .expose()
        .to_owned()
}

fn bad_checksum(token: &str) -> String {
    let mut s = token.to_owned();
    let last = s.pop().unwrap();
    s.push(if last == '0' { '1' } else { '0' });
    s
}

#[tokio::test]
async fn a_reported_token_is_dead_at_once_and_stays_dead_after_sigkill() {
    let (mut app, config) = start("");
    let token = app.new_token("alice").await;
    let other = app.new_token("bob").await;
    assert_eq!(app.verify(&token).await, 200);

    let (status, body) = app.report(&json!({ "tokens": [token] }).to_string()).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(app.verify(&token).await, 401);
    assert_eq!(
        app.verify(&other).await,
        200,
        "only the reported token goes"
    );
    assert_eq!(app.me("alice").await["has_token"], false);

    // Acknowledged, so durable: a SIGKILL right after loses nothing.
    app.server.signal("KILL");
    app.server.wait_exit(10);
    app.server = Server::start(&config);
    assert_eq!(app.verify(&token).await, 401);
    assert_eq!(app.verify(&other).await, 200);
    assert_eq!(app.me("alice").await["has_token"], false);
    // The user makes a new one.
    let fresh = app.new_token("alice").await;
    assert_eq!(app.verify(&fresh).await, 200);
}

#[tokio::test]
async fn the_answer_does_not_tell_live_tokens_from_unknown_ones() {
    let (app, _) = start("");
    let live = app.new_token("carol").await;
    let mixed = json!({ "tokens": [live, unknown_token(), bad_checksum(&unknown_token())] });
    let unknown = json!({ "tokens": [unknown_token(), unknown_token(), unknown_token()] });
    let a = app.report(&mixed.to_string()).await;
    let b = app.report(&unknown.to_string()).await;
    assert_eq!(a, b);
    assert_eq!(a, (200, r#"{"received":3}"#.to_owned()));
    assert_eq!(app.verify(&live).await, 401);
    // Reporting it again, now dead, answers the same.
    assert_eq!(app.report(&mixed.to_string()).await, a);
}

#[tokio::test]
async fn github_alerts_are_taken_as_they_come() {
    let (app, _) = start("");
    let token = app.new_token("dave").await;
    let alerts = json!([
        {"token": token, "type": "agent_tokens_agent_token",
         "url": "https://github.com/example/repo/blob/abc/config.env", "source": "content"},
        {"token": unknown_token(), "type": "agent_tokens_agent_token",
         "url": "https://gist.github.com/x", "source": "gist"}
    ]);
    let (status, body) = app.report(&alerts.to_string()).await;
    assert_eq!((status, body.as_str()), (200, r#"{"received":2}"#));
    assert_eq!(app.verify(&token).await, 401);

    // The user sees it in their events, as a leak report, with where.
    let (status, events) = call(
        &app.client,
        Method::GET,
        &app.url("/api/agent-tokens/me/events"),
        &hs256_jwt("dave"),
    )
    .await;
    assert_eq!(status, 200, "{events}");
    let newest = &events["events"][0];
    assert_eq!(newest["type"], "revoked", "{events}");
    assert_eq!(newest["actor"], "leak_report", "{events}");
    assert_eq!(newest["token_prefix"], format!("{}...", &token[..15]));
    let detail = newest["detail"].as_str().unwrap_or_default();
    assert!(
        detail.contains("https://github.com/example/repo/blob/abc/config.env (content)"),
        "{events}"
    );
    assert!(!events.to_string().contains(&token[7..]), "{events}");
}

#[tokio::test]
async fn a_token_in_grace_ends_alone_and_a_current_one_takes_its_grace_token_along() {
    let (app, _) = start("[tokens]\nrotation_grace_secs = 600\n");
    let old = app.new_token("erin").await;
    let current = app.new_token("erin").await;
    assert_eq!(app.verify(&old).await, 200, "in its grace window");
    // The old token leaked: it alone ends.
    app.report(&json!({ "tokens": [old] }).to_string()).await;
    assert_eq!(app.verify(&old).await, 401);
    assert_eq!(app.verify(&current).await, 200);
    // The current token leaked: the user's token in grace goes too.
    let newest = app.new_token("erin").await;
    assert_eq!(app.verify(&current).await, 200, "now in grace");
    app.report(&json!({ "tokens": [newest] }).to_string()).await;
    assert_eq!(app.verify(&newest).await, 401);
    assert_eq!(app.verify(&current).await, 401);
    assert_eq!(app.me("erin").await["has_token"], false);
}

#[tokio::test]
async fn malformed_or_oversized_reports_are_refused_and_change_nothing() {
    let (app, _) = start("");
    let token = app.new_token("frank").await;
    for body in [
        "".to_owned(),
        "not json".to_owned(),
        "{}".to_owned(),
        json!({ "tokens": token }).to_string(),
        json!({ "tokens": [1, 2] }).to_string(),
        json!([{ "url": "https://example.com" }]).to_string(),
    ] {
        let (status, text) = app.report(&body).await;
        assert_eq!(status, 400, "{body}: {text}");
        let error: Value = serde_json::from_str(&text).unwrap();
        assert_eq!(error["error"], "invalid_request");
        assert!(!text.contains(&token), "the body is never echoed");
    }
    let mut many: Vec<String> = (0..1000).map(|_| unknown_token()).collect();
    assert_eq!(
        app.report(&json!({ "tokens": many }).to_string()).await.0,
        200
    );
    many.push(token.clone());
    assert_eq!(
        app.report(&json!({ "tokens": many }).to_string()).await.0,
        400,
        "1001 tokens"
    );
    let huge = json!({ "tokens": [token, "x".repeat(1024 * 1024)] }).to_string();
    assert_eq!(app.report(&huge).await.0, 413);
    assert_eq!(app.verify(&token).await, 200, "nothing was revoked");
}

#[tokio::test]
async fn the_address_limit_applies_when_configured() {
    let (app, _) =
        start("[rate_limit]\nper_address = true\naddress_per_minute = 60\naddress_burst = 3\n");
    let body = json!({ "tokens": [unknown_token()] }).to_string();
    let mut statuses = Vec::new();
    for _ in 0..5 {
        statuses.push(app.report(&body).await.0);
    }
    assert_eq!(&statuses[..3], &[200, 200, 200]);
    assert_eq!(statuses[4], 429, "{statuses:?}");
}

#[tokio::test]
async fn scan_revoke_kills_what_it_finds() {
    let (app, _) = start("");
    let leaked = app.new_token("gina").await;
    let kept = app.new_token("hank").await;
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("transcript.txt"),
        format!("agent: using {leaked}\nagent: again {leaked}\n"),
    )
    .unwrap();
    let out = std::process::Command::new(BIN)
        .args(["scan", "--revoke", &app.server.base()])
        .arg(dir.path())
        .output()
        .unwrap();
    let shown = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(out.status.code(), Some(1), "{shown}");
    assert!(shown.contains("sent 1 token(s)"), "{shown}");
    assert!(!shown.contains(&leaked), "{shown}");
    assert_eq!(app.verify(&leaked).await, 401);
    assert_eq!(app.verify(&kept).await, 200);

    // A server that cannot be reached is an error (exit 2), not a pass.
    let out = std::process::Command::new(BIN)
        .args(["scan", "--revoke", "http://127.0.0.1:9"])
        .arg(dir.path())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("could not revoke"), "{stderr}");
    assert!(!stderr.contains(&leaked), "{stderr}");
}
