//! Compaction, as an operator meets it: the server compacts a grown store
//! on its own while clients keep rotating and verifying, `agent-tokens
//! compact` does it offline, and neither loses or resurrects a token.

mod common;

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use common::*;
use reqwest::Method;

const USERS: usize = 60;

/// Every user's tokens, oldest first, as the API handed them out.
struct Issued {
    tokens: Vec<Vec<String>>,
}

impl Issued {
    async fn create(client: &reqwest::Client, base: &str) -> Self {
        let mut tokens = Vec::new();
        for n in 0..USERS {
            let url = format!("{base}/api/agent-tokens/me/get-or-create");
            let (status, body) = call(client, Method::POST, &url, &hs256_jwt(&user(n))).await;
            assert_eq!(status, 200, "{body}");
            tokens.push(vec![body["token"].as_str().unwrap().to_owned()]);
        }
        Self { tokens }
    }

    /// Rotates every user once, concurrently.
    async fn rotate_all(&mut self, client: &reqwest::Client, base: &str) {
        let url = format!("{base}/api/agent-tokens/me");
        let rotations = (0..USERS).map(|n| {
            let (client, url) = (client.clone(), url.clone());
            async move { call(&client, Method::POST, &url, &hs256_jwt(&user(n))).await }
        });
        for (n, (status, body)) in futures::future::join_all(rotations)
            .await
            .into_iter()
            .enumerate()
        {
            assert_eq!(status, 200, "{body}");
            self.tokens[n].push(body["token"].as_str().unwrap().to_owned());
        }
    }

    /// The current token and the one in its grace window verify as their
    /// user; every older one is refused.
    async fn assert_verified(&self, client: &reqwest::Client, base: &str) {
        let url = format!("{base}/api/agent-tokens/verify");
        for (n, tokens) in self.tokens.iter().enumerate() {
            for (age, token) in tokens.iter().rev().enumerate() {
                let resp = client.get(&url).bearer_auth(token).send().await.unwrap();
                let expected = if age <= 1 { 200 } else { 401 };
                assert_eq!(
                    resp.status().as_u16(),
                    expected,
                    "user {n}, token {age} rotations old"
                );
                if expected == 200 {
                    assert_eq!(resp.headers()["x-agent-user-id"], user(n).as_str());
                }
            }
        }
    }
}

fn user(n: usize) -> String {
    format!("compaction-user-{n:03}")
}

fn entries(path: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(path)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    names
}

fn run(args: &[&str], config: &Path) -> std::process::Output {
    Command::new(BIN)
        .args(args)
        .arg("--config")
        .arg(config)
        .output()
        .unwrap()
}

#[tokio::test]
async fn the_server_compacts_a_grown_store_while_it_serves_and_loses_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config_with(dir.path(), "[tokens]\nrotation_grace_secs = 3600\n");
    // Compact at any growth, so a small store qualifies within a check interval.
    let env = [
        ("AGENT_TOKENS__STORAGE__COMPACT_GROWTH_PERCENT", "1"),
        ("AGENT_TOKENS__STORAGE__COMPACT_MIN_GROWTH_MB", "0"),
    ];
    let mut server = Server::start_with_env(&config, &env);
    let base = server.base();
    let client = reqwest::Client::new();
    let mut issued = Issued::create(&client, &base).await;

    // Clients keep rotating until the server reports a compaction.
    let started = Instant::now();
    let mut log = Vec::new();
    let compacted = loop {
        issued.rotate_all(&client, &base).await;
        while let Ok(line) = server.log.try_recv() {
            log.push(line);
        }
        if let Some(line) = log.iter().find(|l| l.contains("compacted the store")) {
            break line.clone();
        }
        assert!(
            started.elapsed() < Duration::from_secs(90),
            "no compaction; log: {:#?}",
            log.iter()
                .filter(|l| !l.contains("HTTP/1.1"))
                .collect::<Vec<_>>()
        );
    };
    assert!(compacted.contains("writes waited"), "{compacted}");
    // A few more rotations land on the new copy.
    issued.rotate_all(&client, &base).await;
    issued.assert_verified(&client, &base).await;

    let metrics = client.get(format!("{base}/metrics")).send().await.unwrap();
    let metrics = metrics.text().await.unwrap();
    let compactions = metrics
        .lines()
        .find_map(|l| l.strip_prefix("agent_tokens_storage_compactions_total "))
        .expect("the compaction counter is exported");
    assert!(
        compactions.trim().parse::<u64>().unwrap() >= 1,
        "{compactions}"
    );

    // Stopped, the store holds only the current copy, checks clean, and
    // serves the same answers after a restart.
    assert!(server.terminate().success());
    let store = dir.path().join("db");
    let left = entries(&store);
    assert_eq!(left.len(), 2, "{left:?}");
    assert_eq!(left[0], "CURRENT");
    assert!(left[1].starts_with("gen-"), "{left:?}");
    let check = run(&["check"], &config);
    assert!(
        check.status.success(),
        "{}",
        String::from_utf8_lossy(&check.stdout)
    );

    let server = Server::start(&config);
    let base = server.base();
    issued.assert_verified(&client, &base).await;
    let (_, me) = call(
        &client,
        Method::GET,
        &format!("{base}/api/agent-tokens/me"),
        &hs256_jwt(&user(0)),
    )
    .await;
    let current = issued.tokens[0].last().unwrap();
    assert_eq!(
        me["token_prefix"].as_str().unwrap(),
        format!("{}...", &current[..15])
    );
}

#[tokio::test]
async fn the_compact_command_shrinks_a_stopped_store_and_refuses_a_running_one() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config_with(dir.path(), "[tokens]\nrotation_grace_secs = 3600\n");
    let server = Server::start(&config);
    let base = server.base();
    let client = reqwest::Client::new();
    let mut issued = Issued::create(&client, &base).await;
    for _ in 0..10 {
        issued.rotate_all(&client, &base).await;
    }

    // While the server holds the store: refused, and nothing changes.
    let store = dir.path().join("db");
    let before = entries(&store);
    let busy = run(&["compact"], &config);
    assert_eq!(busy.status.code(), Some(75), "{busy:?}");
    assert!(
        String::from_utf8_lossy(&busy.stderr).contains("in use"),
        "{}",
        String::from_utf8_lossy(&busy.stderr)
    );
    assert_eq!(entries(&store), before);
    drop(server);

    let grown = std::fs::metadata(store.join("db")).unwrap().len();
    let out = run(&["compact"], &config);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(stderr.contains("compacted"), "{stderr}");
    assert_eq!(entries(&store), ["CURRENT", "gen-1"]);
    let compacted = std::fs::metadata(store.join("gen-1").join("db"))
        .unwrap()
        .len();
    assert!(compacted < grown, "{compacted} !< {grown}");

    // Twice in a row is fine: the next generation replaces this one.
    let again = run(&["compact"], &config);
    assert!(
        again.status.success(),
        "{}",
        String::from_utf8_lossy(&again.stderr)
    );
    assert_eq!(entries(&store), ["CURRENT", "gen-2"]);

    let server = Server::start(&config);
    issued.assert_verified(&client, &server.base()).await;
}
