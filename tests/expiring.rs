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
