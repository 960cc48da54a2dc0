//! Crash safety: clients rotate tokens for several users while the server is
//! killed with SIGKILL at random moments. After every restart each user's
//! token is the last rotation acknowledged with 200, or the one in flight at
//! the kill; never an older one and never none. The offline checker runs
//! after every kill. A second run, on a larger store, also kills the
//! offline `compact` command midway after each of the server's kills.

mod common;

use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::*;
use reqwest::Method;
use serde_json::Value;

const USERS: usize = 6;

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

async fn me(client: &reqwest::Client, base: &str, jwt: &str) -> Value {
    call(
        client,
        Method::GET,
        &format!("{base}/api/agent-tokens/me"),
        jwt,
    )
    .await
    .1
}

async fn verify_status(client: &reqwest::Client, base: &str, token: &str) -> u16 {
    call(
        client,
        Method::GET,
        &format!("{base}/api/agent-tokens/verify"),
        token,
    )
    .await
    .0
}

/// When each cycle's SIGKILL comes.
#[derive(Clone, Copy)]
enum Kill {
    /// 80–680 ms into the load.
    AnyMoment,
    /// As `AnyMoment`; then `agent-tokens compact` runs on the stopped
    /// store and is killed 0–150 ms into its work.
    AlsoTheCompactCommand,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sigkill_at_random_moments_never_loses_or_resurrects_a_token() {
    sigkill_cycles(&[], 0, Kill::AnyMoment, 12).await;
}

/// The same on a larger store, and the offline compaction killed midway
/// (its memtable flush, its table rewrite, or its sync) after every kill.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sigkill_during_the_compact_command_never_loses_or_resurrects_a_token() {
    sigkill_cycles(&[], 1500, Kill::AlsoTheCompactCommand, 10).await;
}

async fn sigkill_cycles(env: &[(&str, &str)], bystanders: usize, kill: Kill, cycles: usize) {
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64;
    eprintln!("crash test seed: {seed}");
    let mut rng = Lcg(seed);
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path());
    // Users who only hold a token: a larger store to copy, and tokens that
    // must survive every kill untouched.
    let bystanders: Vec<(String, String)> = if bystanders == 0 {
        Vec::new()
    } else {
        let server = Server::start_with_env(&config, env);
        let base = server.base();
        let client = reqwest::Client::new();
        let created = (0..bystanders).map(|n| {
            let (client, base) = (client.clone(), base.clone());
            async move {
                let jwt = hs256_jwt(&format!("bystander-{n}"));
                let resp = client
                    .post(format!("{base}/api/agent-tokens/me/get-or-create"))
                    .bearer_auth(&jwt)
                    .send()
                    .await
                    .unwrap();
                assert_eq!(resp.status().as_u16(), 200);
                let body: Value = resp.json().await.unwrap();
                (jwt, body["token"].as_str().unwrap().to_owned())
            }
        });
        futures::future::join_all(created).await
    };
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
    let mut killed_compacting = 0usize;

    for cycle in 0..cycles {
        let mut server = Server::start_with_env(&config, env);
        let base = Arc::new(server.base());
        let client = reqwest::Client::new();

        // What survived the previous kill.
        for (i, user) in users.iter().enumerate() {
            let mut state = user.lock().unwrap().clone();
            let Some(last) = state.acked.last().cloned() else {
                continue;
            };
            let me = me(&client, &base, &jwts[i]).await;
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
        match kill {
            Kill::AnyMoment => {
                let delay = 80 + rng.next() % 600;
                tokio::time::sleep(Duration::from_millis(delay)).await;
                server.signal("KILL");
                tokio::task::spawn_blocking(move || {
                    server.wait_exit(10);
                })
                .await
                .unwrap();
            }
            Kill::AlsoTheCompactCommand => {
                let delay = 80 + rng.next() % 600;
                tokio::time::sleep(Duration::from_millis(delay)).await;
                server.signal("KILL");
                let compact_after = Duration::from_millis(rng.next() % 150);
                let config = config.clone();
                let cut_short = tokio::task::spawn_blocking(move || {
                    server.wait_exit(10);
                    let mut compact = Command::new(BIN)
                        .args(["compact", "--config"])
                        .arg(&config)
                        .stdout(std::process::Stdio::null())
                        .stderr(std::process::Stdio::null())
                        .spawn()
                        .unwrap();
                    std::thread::sleep(compact_after);
                    let running = compact.try_wait().unwrap().is_none();
                    let _ = compact.kill();
                    let _ = compact.wait();
                    running
                })
                .await
                .unwrap();
                killed_compacting += usize::from(cut_short);
            }
        }
        for c in clients {
            total_acked += c.await.unwrap();
        }

        assert_store_checks_clean(&config, &format!("cycle {cycle}"));
    }
    eprintln!("crash test: {cycles} SIGKILL cycles, {total_acked} rotations acknowledged");
    assert!(total_acked > cycles * 10, "too little load: {total_acked}");
    if matches!(kill, Kill::AlsoTheCompactCommand) {
        eprintln!("crash test: {killed_compacting} compact commands killed midway");
        assert!(killed_compacting >= 2, "too few kills hit a compaction");
    }

    // The bystanders' tokens went through every kill untouched.
    if !bystanders.is_empty() {
        let server = Server::start(&config);
        let client = reqwest::Client::new();
        for (n, (jwt, token)) in bystanders.iter().enumerate() {
            let me = me(&client, &server.base(), jwt).await;
            assert_eq!(
                me["token_prefix"],
                format!("{}...", &token[..15]),
                "bystander {n}"
            );
            assert_eq!(
                verify_status(&client, &server.base(), token).await,
                200,
                "bystander {n}"
            );
        }
    }
}

/// `agent-tokens check` on the (stopped) server's store finds nothing wrong.
fn assert_store_checks_clean(config: &std::path::Path, when: &str) {
    let out = Command::new(BIN)
        .args(["check", "--config"])
        .arg(config)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{when}: check found problems:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The store's newest journal file (fjall numbers them `0.jnl`, `1.jnl`, ...).
fn active_journal(store: &std::path::Path) -> std::path::PathBuf {
    let mut journals = Vec::new();
    let mut dirs = vec![store.to_owned()];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                dirs.push(path);
            } else if path.extension().is_some_and(|e| e == "jnl") {
                let n: u64 = path.file_stem().unwrap().to_str().unwrap().parse().unwrap();
                journals.push((n, path));
            }
        }
    }
    journals
        .into_iter()
        .max()
        .expect("the store has a journal")
        .1
}

async fn rotate(client: &reqwest::Client, base: &str, jwt: &str) -> String {
    let (status, body) = call(
        client,
        Method::POST,
        &format!("{base}/api/agent-tokens/me"),
        jwt,
    )
    .await;
    assert_eq!(status, 200, "{body}");
    body["token"].as_str().unwrap().to_owned()
}

/// A kill mid-write can leave part of a batch at the journal's end. The next
/// start must cut it off (not stop reading there forever): every token
/// acknowledged before it is kept, and what is written after it survives the
/// next kill too. Journal replay is where third_party/fjall differs from
/// crates.io's fjall (PATCHED.md), so this pins what it must still do.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_torn_journal_tail_is_cut_and_what_follows_it_survives_the_next_kill() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path());
    let client = reqwest::Client::new();
    let jwts: Vec<String> = (0..4).map(|i| hs256_jwt(&format!("torn-{i}"))).collect();

    let mut server = Server::start(&config);
    let mut before = Vec::new();
    for jwt in &jwts {
        let mut last = String::new();
        for _ in 0..25 {
            last = rotate(&client, &server.base(), jwt).await;
        }
        before.push(last);
    }
    server.signal("KILL");
    server.wait_exit(10);

    // A batch torn where the next one would go: the journal's own first
    // bytes (a batch start marker and part of its first item), the rest of
    // the file as it was. fjall creates a journal at 64 MiB of zeros and
    // fills it from the front, so the data ends at the last non-zero byte
    // (every batch ends with a checksummed end marker).
    let journal = active_journal(&dir.path().join("db"));
    let bytes = std::fs::read(&journal).unwrap();
    let end = bytes.iter().rposition(|&b| b != 0).map_or(0, |i| i + 1);
    assert!(
        end > 1000,
        "the rotations reached the journal ({end} bytes)"
    );
    let tail = &bytes[..37];
    {
        use std::io::{Seek, SeekFrom, Write};
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .open(&journal)
            .unwrap();
        file.seek(SeekFrom::Start(end as u64)).unwrap();
        file.write_all(tail).unwrap();
    }

    let mut server = Server::start(&config);
    let base = server.base();
    let mut after = Vec::new();
    for (i, (jwt, token)) in jwts.iter().zip(&before).enumerate() {
        assert_eq!(
            verify_status(&client, &base, token).await,
            200,
            "user {i}: the last acknowledged token before the torn tail"
        );
        after.push(rotate(&client, &base, jwt).await);
        assert_eq!(verify_status(&client, &base, token).await, 401);
    }
    server.signal("KILL");
    server.wait_exit(10);

    let mut server = Server::start(&config);
    for (i, (old, new)) in before.iter().zip(&after).enumerate() {
        assert_eq!(
            verify_status(&client, &server.base(), new).await,
            200,
            "user {i}: a rotation written after the torn tail was lost"
        );
        assert_eq!(
            verify_status(&client, &server.base(), old).await,
            401,
            "user {i}: a replaced token came back"
        );
    }
    assert!(server.terminate().success());
    assert_store_checks_clean(&config, "after the torn tail");
}
