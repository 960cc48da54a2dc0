//! `gateway/Caddyfile` run for real with Debian's Caddy: the recipe's
//! forward_auth asks the real app, a backend echoes what reaches it.

use std::path::Path;
use std::process::Command;

use crate::gateway::*;
use crate::helpers::*;

const CADDY: &str = "/usr/bin/caddy";

/// Starts Caddy with the recipe pointed at `auth` (agent-tokens) and `backend`,
/// on a free loopback port, with no admin endpoint and no automatic HTTPS.
fn start_caddy(auth: u16, backend: u16) -> Gateway {
    assert!(
        Path::new(CADDY).exists(),
        "caddy is not installed: run ./scripts/test.sh, which installs Debian's caddy"
    );
    let front = free_port();
    let mut text = recipe("Caddyfile");
    text = point(text, "127.0.0.1:8080", &format!("127.0.0.1:{auth}"));
    text = point(text, "127.0.0.1:3000", &format!("127.0.0.1:{backend}"));
    text = point(
        text,
        "api.example.com {",
        &format!("http://127.0.0.1:{front} {{"),
    );
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("Caddyfile");
    std::fs::write(
        &config,
        format!("{{\n\tadmin off\n\tauto_https off\n}}\n\n{text}"),
    )
    .unwrap();
    let mut command = Command::new(CADDY);
    command
        .args(["run", "--adapter", "caddyfile", "--config"])
        .arg(&config)
        .env("HOME", dir.path())
        .env("XDG_CONFIG_HOME", dir.path().join("config"))
        .env("XDG_DATA_HOME", dir.path().join("data"));
    Gateway::spawn(command, front, dir)
}

#[tokio::test]
async fn caddy_forward_auth_passes_valid_tokens_as_their_user_and_refuses_the_rest() {
    let app = spawn_app().await;
    let backend = EchoBackend::start();
    let caddy = start_caddy(app.port, backend.port);
    assert_gateway_passes_only_verified_users(&app, caddy.port, || caddy.log()).await;
}

#[tokio::test]
async fn caddy_asks_verify_without_the_clients_query_string() {
    // An echo server stands in for agent-tokens to show what verify receives.
    let auth = EchoBackend::start();
    let backend = EchoBackend::start();
    let caddy = start_caddy(auth.port, backend.port);
    let resp = reqwest::Client::new()
        .get(format!(
            "http://127.0.0.1:{}/api/orders?access_token=sk_agt_secret",
            caddy.port
        ))
        .bearer_auth("sk_agt_abc")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 200, "{}", caddy.log());
    let seen = auth.requests.lock().unwrap().clone();
    assert_eq!(seen.len(), 1, "{seen:?}");
    let first_line = seen[0].lines().next().unwrap_or_default();
    assert_eq!(first_line, "GET /api/agent-tokens/verify HTTP/1.1");
    assert!(!seen[0].contains("sk_agt_secret"), "{}", seen[0]);
    assert!(seen[0].contains("Bearer sk_agt_abc"), "{}", seen[0]);
    // The backend still gets the client's full URI.
    let passed = backend.requests.lock().unwrap().clone();
    assert!(
        passed[0].starts_with("GET /api/orders?access_token=sk_agt_secret "),
        "{passed:?}"
    );
}

#[tokio::test]
async fn caddy_answers_a_request_with_many_headers_without_a_500() {
    let app = spawn_app().await;
    let token = app.new_token(&user_jwt("alice")).await;
    let backend = EchoBackend::start();
    let caddy = start_caddy(app.port, backend.port);
    let url = format!("http://127.0.0.1:{}/api/orders", caddy.port);
    for credential in [Some(token.as_str()), None, Some("sk_agt_garbage")] {
        let mut req = reqwest::Client::new().get(&url);
        for i in 0..150 {
            req = req.header(format!("X-Padding-{i}"), "x");
        }
        if let Some(credential) = credential {
            req = req.bearer_auth(credential);
        }
        let resp = req.send().await.unwrap();
        let status = resp.status().as_u16();
        let body = resp.text().await.unwrap();
        println!(
            "150 headers, credential {:?}: {status}",
            credential.map(|c| &c[..8])
        );
        assert!(status < 500, "{status} {body}\n{}", caddy.log());
        assert!(!body.contains("x-agent-user-id") || status == 200, "{body}");
    }
}
