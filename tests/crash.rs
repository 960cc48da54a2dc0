//! Crash safety: clients rotate tokens for several users while the server is
//! killed with SIGKILL at random moments. After every restart each user's
//! token is the last rotation acknowledged with 200, or the one in flight at
//! the kill; never an older one and never none. The offline checker runs
//! after every kill.

mod common;

use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::*;
use serde_json::Value;

const USERS: usize = 6;
const CYCLES: usize = 12;

#[derive(Default, Clone)]
struct UserState {
    /// Tokens acknowledged with 200, oldest first (the last is current).
    acked: Vec<String>,
    /// A rotation was sent and its answer never arrived.
    in_flight: bool,
}

/// A small deterministic generator; the seed is printed so a failure can be replayed.
struct Lcg(u64);

impl Lcg {
    fn next(&mut self) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        self.0 >> 33
    }
}

async fn verify_status(client: &reqwest::Client, base: &str, token: &str) -> u16 {
    client
        .get(format!("{base}/api/agent-tokens/verify"))
        .bearer_auth(token)
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sigkill_at_random_moments_never_loses_or_resurrects_a_token() {
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64;
    eprintln!("crash test seed: {seed}");
    let mut rng = Lcg(seed);
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path());
    let users: Arc<Vec<Mutex<UserState>>> = Arc::new(
        (0..USERS)
            .map(|_| Mutex::new(UserState::default()))
            .collect(),
    );
    let jwts: Arc<Vec<String>> = Arc::new(
        (0..USERS)
            .map(|i| hs256_jwt(&format!("crash-{i}")))
            .collect(),
    );
    let mut total_acked = 0usize;

    for cycle in 0..CYCLES {
        let mut server = Server::start(&config);
        let base = Arc::new(server.base());
        let client = reqwest::Client::new();

        // What survived the previous kill.
        for (i, user) in users.iter().enumerate() {
            let mut state = user.lock().unwrap().clone();
            let Some(last) = state.acked.last().cloned() else {
                continue;
            };
            let me: Value = client
                .get(format!("{base}/api/agent-tokens/me"))
                .bearer_auth(&jwts[i])
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            assert_eq!(
                me["has_token"], true,
                "cycle {cycle}, user {i}: the token is gone"
            );
            let current_ok = verify_status(&client, &base, &last).await == 200;
            if !current_ok {
                assert!(
                    state.in_flight,
                    "cycle {cycle}, user {i}: the last acknowledged token no longer verifies"
                );
                assert_ne!(me["token_prefix"], format!("{}...", &last[..15]));
            }
            let older = state.acked.len().saturating_sub(4)..state.acked.len() - 1;
            for old in &state.acked[older] {
                assert_eq!(
                    verify_status(&client, &base, old).await,
                    401,
                    "cycle {cycle}, user {i}: an older token came back"
                );
            }
            if !current_ok {
                // The in-flight rotation landed: its token is unknown to us,
                // so the next acknowledged one becomes the reference.
                state.acked.clear();
            }
            state.in_flight = false;
            *user.lock().unwrap() = state;
        }

        // Load: every user rotates in a loop until the kill.
        let mut clients = Vec::new();
        for i in 0..USERS {
            let (base, users, jwts) = (base.clone(), users.clone(), jwts.clone());
            clients.push(tokio::spawn(async move {
                let client = reqwest::Client::new();
                let mut acked = 0usize;
                loop {
                    users[i].lock().unwrap().in_flight = true;
                    let resp = client
                        .post(format!("{base}/api/agent-tokens/me"))
                        .bearer_auth(&jwts[i])
                        .timeout(Duration::from_secs(10))
                        .send()
                        .await;
                    let Ok(resp) = resp else { return acked };
                    assert_eq!(resp.status().as_u16(), 200);
                    let Ok(body) = resp.json::<Value>().await else {
                        return acked;
                    };
                    let mut state = users[i].lock().unwrap();
                    state.acked.push(body["token"].as_str().unwrap().to_owned());
                    state.in_flight = false;
                    acked += 1;
                }
            }));
        }
        let delay = 80 + rng.next() % 600;
        tokio::time::sleep(Duration::from_millis(delay)).await;
        server.signal("KILL");
        tokio::task::spawn_blocking(move || {
            server.wait_exit(10);
        })
        .await
        .unwrap();
        for c in clients {
            total_acked += c.await.unwrap();
        }

        let out = Command::new(BIN)
            .args(["check", "--config"])
            .arg(&config)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "cycle {cycle}: check found problems:\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    eprintln!("crash test: {CYCLES} SIGKILL cycles, {total_acked} rotations acknowledged");
    assert!(total_acked > CYCLES * 10, "too little load: {total_acked}");
}
