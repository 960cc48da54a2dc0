//! `agent_tokens_tokens_expiring_within_7d` on the real binary: counted in
//! the background at start (and every few minutes), from what is stored.

mod common;

use common::*;
use reqwest::Method;

/// The gauge's value once the count at start has run.
async fn expiring(server: &Server, expected: u64) -> u64 {
    let client = reqwest::Client::new();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        let text = client
            .get(format!("{}/metrics", server.base()))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        let value = text
            .lines()
            .find_map(|l| l.strip_prefix("agent_tokens_tokens_expiring_within_7d "))
            .map(|v| v.trim().parse::<u64>().unwrap())
            .expect("the gauge is exported");
        if value == expected || std::time::Instant::now() > deadline {
            return value;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}

async fn rotate(server: &Server, user: &str) {
    let url = format!("{}/api/agent-tokens/me", server.base());
    let (status, _) = call(
        &reqwest::Client::new(),
        Method::POST,
        &url,
        &hs256_jwt(user),
    )
    .await;
    assert_eq!(status, 200);
}

#[tokio::test]
async fn tokens_expiring_within_a_week_are_counted_from_the_store() {
    // Grace windows only: two users rotate twice, one token each in grace.
    let dir = tempfile::tempdir().unwrap();
    let config = write_config_with(dir.path(), "[tokens]\nrotation_grace_secs = 3600");
    let mut server = Server::start(&config);
    assert_eq!(expiring(&server, 0).await, 0);
    for user in ["alice", "bob", "alice", "bob", "carol"] {
        rotate(&server, user).await;
    }
    assert!(server.terminate().success());
    let mut server = Server::start(&config);
    assert_eq!(expiring(&server, 2).await, 2);
    assert!(server.terminate().success());

    // With an age limit of a day every live token expires within a week;
    // with one of 30 days, only the grace tokens do.
    let short = write_config_with(
        dir.path(),
        "[tokens]\nrotation_grace_secs = 3600\nmax_age_days = 1",
    );
    let mut server = Server::start(&short);
    assert_eq!(expiring(&server, 5).await, 5);
    assert!(server.terminate().success());
    let long = write_config_with(
        dir.path(),
        "[tokens]\nrotation_grace_secs = 3600\nmax_age_days = 30",
    );
    let mut server = Server::start(&long);
    assert_eq!(expiring(&server, 2).await, 2);
    assert!(server.terminate().success());
}

/// A token created `days` ago, imported as `agent-tokens import` reads it.
fn old_token_line(user: &str, days: u64) -> (String, String) {
    let rng = ring::rand::SystemRandom::new();
    let token = agent_tokens::domain::token::PlainToken::generate(&rng).unwrap();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let line = serde_json::json!({
        "user_id": user,
        "token_hash": hex::encode(token.hash().as_bytes()),
        "token_prefix": token.display_prefix(),
        "created_at": now - days * 86_400,
        "last_used_at": null,
        "grace": null,
    });
    (token.expose().to_owned(), line.to_string())
}

#[tokio::test]
async fn a_token_past_max_age_is_removed_with_an_expired_event() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config_with(dir.path(), "[tokens]\nmax_age_days = 3");
    let (old, old_line) = old_token_line("olga", 10);
    let (young, young_line) = old_token_line("yann", 1);
    let backup = format!(
        "{}\n{old_line}\n{young_line}\n",
        serde_json::json!({"format": "agent-tokens-export", "version": 1, "users": 2})
    );
    let out = run("import", &config, &[], backup.as_bytes());
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let server = Server::start(&config);
    let client = reqwest::Client::new();
    let verify = |token: String| {
        let client = client.clone();
        let url = format!("{}/api/agent-tokens/verify", server.base());
        async move {
            client
                .get(url)
                .bearer_auth(token)
                .send()
                .await
                .unwrap()
                .status()
                .as_u16()
        }
    };
    assert_eq!(verify(old.clone()).await, 401);
    assert_eq!(verify(young.clone()).await, 200);

    // The sweep at start removes it and says so in the user's trail.
    let events_url = format!("{}/api/agent-tokens/me/events", server.base());
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    let events = loop {
        let (status, body) = call(&client, Method::GET, &events_url, &hs256_jwt("olga")).await;
        assert_eq!(status, 200);
        let events = body["events"].as_array().unwrap().clone();
        if !events.is_empty() || std::time::Instant::now() > deadline {
            break events;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    };
    assert_eq!(events.len(), 1, "{events:?}");
    assert_eq!(events[0]["type"], "expired");
    assert_eq!(events[0]["actor"], "system");
    assert_eq!(events[0]["token_prefix"], old[..15].to_owned() + "...");
    let me = format!("{}/api/agent-tokens/me", server.base());
    let (status, body) = call(&client, Method::GET, &me, &hs256_jwt("olga")).await;
    assert_eq!(status, 200);
    assert_eq!(body["has_token"], false, "{body}");
    assert_eq!(verify(old).await, 401);
    // The younger token is untouched, and nothing else was recorded.
    assert_eq!(verify(young).await, 200);
    let (_, body) = call(&client, Method::GET, &events_url, &hs256_jwt("yann")).await;
    assert_eq!(body["events"], serde_json::json!([]));
    server.stop();
}
