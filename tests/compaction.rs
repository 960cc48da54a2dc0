//! Compaction, as an operator meets it: a store rotated many times keeps
//! every answer (the engine compacts it on its own), `agent-tokens compact`
//! does it fully offline, and neither loses or resurrects a token.

mod common;

use std::path::Path;
use std::process::Command;

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
async fn a_store_rotated_many_times_keeps_every_answer_and_an_old_config_still_loads() {
    let dir = tempfile::tempdir().unwrap();
    // A config file of an earlier release, with its online-compaction keys.
    let config = write_config_with(dir.path(), "[tokens]\nrotation_grace_secs = 3600\n");
    let text = std::fs::read_to_string(&config).unwrap().replace(
        "[storage]\n",
        "[storage]\ncompact_growth_percent = 40\ncompact_check_secs = 10\n",
    );
    std::fs::write(&config, text).unwrap();
    let mut server = Server::start(&config);
    let base = server.base();
    let client = reqwest::Client::new();
    let mut issued = Issued::create(&client, &base).await;
    for _ in 0..30 {
        issued.rotate_all(&client, &base).await;
    }
    issued.assert_verified(&client, &base).await;

    let metrics = client.get(format!("{base}/metrics")).send().await.unwrap();
    let metrics = metrics.text().await.unwrap();
    let bytes = metrics
        .lines()
        .find_map(|l| l.strip_prefix("agent_tokens_storage_disk_bytes "))
        .expect("the store's size is exported");
    assert!(bytes.trim().parse::<u64>().unwrap() > 0, "{bytes}");

    assert!(server.terminate().success());
    let checked = run(&["check-config"], &config);
    assert!(checked.status.success(), "{checked:?}");
    let stderr = String::from_utf8_lossy(&checked.stderr);
    for key in [
        "storage.compact_growth_percent",
        "storage.compact_check_secs",
    ] {
        assert!(
            stderr
                .lines()
                .any(|l| l.contains(key) && l.contains("no longer has an effect")),
            "{key}: {stderr}"
        );
    }
    let store = dir.path().join("db");
    assert_eq!(entries(&store), ["CURRENT", "LOCK", "gen-1"]);
    let check = run(&["check"], &config);
    assert!(
        check.status.success(),
        "{}",
        String::from_utf8_lossy(&check.stdout)
    );
    let server = Server::start(&config);
    issued.assert_verified(&client, &server.base()).await;
}

#[tokio::test]
async fn the_compact_command_runs_on_a_stopped_store_and_refuses_a_running_one() {
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
    // Stopped as systemd stops it, which also removes the admin socket.
    server.stop();

    let out = run(&["compact"], &config);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    // "... compacted <path>: <before> -> <after> bytes on disk"
    let sizes: Vec<u64> = stderr
        .rsplit(": ")
        .next()
        .unwrap()
        .split(|c: char| !c.is_ascii_digit())
        .filter_map(|n| n.parse().ok())
        .collect();
    assert_eq!(sizes.len(), 2, "{stderr}");
    assert_eq!(entries(&store), ["CURRENT", "LOCK", "gen-1"]);

    // Twice in a row is fine.
    let again = run(&["compact"], &config);
    assert!(
        again.status.success(),
        "{}",
        String::from_utf8_lossy(&again.stderr)
    );
    assert_eq!(entries(&store), ["CURRENT", "LOCK", "gen-1"]);
    let check = run(&["check"], &config);
    assert!(check.status.success(), "{check:?}");

    let server = Server::start(&config);
    issued.assert_verified(&client, &server.base()).await;
}
