//! Several replicas on one PostgreSQL (a real one from Debian's packages,
//! started by tests/common/pg.rs; scripts/test.sh installs it): the binary
//! run twice as an operator runs it, against one database.
//!
//! - concurrent get-or-create requests split between two replicas create
//!   exactly one token;
//! - a token created on A verifies on B; revoked on B, A refuses it on the
//!   very next request;
//! - A killed with SIGKILL in the middle of rotations loses nothing it
//!   acknowledged, and B keeps serving;
//! - PostgreSQL stopped: management routes answer 500 with the page's
//!   messages, verify 503, `/readyz` is not ready; started again, both
//!   replicas recover without a restart;
//! - the URL's password reaches neither the logs nor `check-config`.

mod common;

use std::path::Path;
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::pg::{self, Cluster};
use common::*;
use reqwest::Method;
use serde_json::Value;

/// A replica's config: served as an operator would, on `url`.
fn replica_config(dir: &Path, url: &str) -> std::path::PathBuf {
    TestConfig::served(dir)
        .set("storage", "backend", "postgres")
        .set("storage", "url", url)
        .set("storage", "pool_size", 8)
        .write(dir)
}

/// A replica of its own directory on `url`.
struct Replica {
    server: Server,
    _dir: tempfile::TempDir,
}

impl Replica {
    fn start(url: &str) -> Replica {
        let dir = tempfile::tempdir().unwrap();
        let config = replica_config(dir.path(), url);
        Replica {
            server: Server::start(&config),
            _dir: dir,
        }
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.server.base())
    }
}

fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap()
}

async fn send(client: &reqwest::Client, method: Method, url: &str, bearer: &str) -> (u16, Value) {
    call(client, method, url, bearer).await
}

async fn verify(client: &reqwest::Client, r: &Replica, token: &str) -> u16 {
    send(
        client,
        Method::GET,
        &r.url("/api/agent-tokens/verify"),
        token,
    )
    .await
    .0
}

async fn readyz(client: &reqwest::Client, r: &Replica) -> u16 {
    client
        .get(r.url("/readyz"))
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_replicas_create_one_token_per_user_and_see_each_others_revocations() {
    let cluster = pg::shared();
    let url = cluster.url(&cluster.new_database());
    let (a, b) = (Replica::start(&url), Replica::start(&url));
    let client = client();

    // 40 users, each asked for 16 times at once, half on A, half on B.
    let mut tasks = Vec::new();
    for user in 0..40 {
        for i in 0..16 {
            let target = if i % 2 == 0 { a.url("") } else { b.url("") };
            let client = client.clone();
            tasks.push(tokio::spawn(async move {
                let jwt = hs256_jwt(&format!("user-{user}"));
                let (status, body) = send(
                    &client,
                    Method::POST,
                    &format!("{target}/api/agent-tokens/me/get-or-create"),
                    &jwt,
                )
                .await;
                assert_eq!(status, 200, "{body}");
                (user, body)
            }));
        }
    }
    let mut created: Vec<Vec<String>> = vec![Vec::new(); 40];
    let mut prefixes: Vec<Vec<String>> = vec![Vec::new(); 40];
    for task in tasks {
        let (user, body) = task.await.unwrap();
        if body["is_new"] == true {
            created[user].push(body["token"].as_str().unwrap().to_owned());
        } else {
            assert!(body["token"].is_null(), "{body}");
        }
        prefixes[user].push(body["token_prefix"].as_str().unwrap().to_owned());
    }
    for (user, (created, told)) in created.iter().zip(&prefixes).enumerate() {
        assert_eq!(
            created.len(),
            1,
            "user-{user}: {} tokens created",
            created.len()
        );
        assert!(
            told.iter().all(|p| *p == told[0]),
            "user-{user} was told of two tokens: {told:?}"
        );
    }
    let count = cluster.query(
        url.rsplit('/').next().unwrap(),
        "SELECT count(*) FROM tokens WHERE slot = 0",
    );
    assert_eq!(count, "40", "one current token per user in the database");

    // Created on A, verified on B (and A); revoked on B, refused by A at once.
    for (user, created) in created.iter().enumerate() {
        let token = &created[0];
        assert_eq!(verify(&client, &b, token).await, 200);
        assert_eq!(verify(&client, &a, token).await, 200);
        let jwt = hs256_jwt(&format!("user-{user}"));
        let (status, _) = send(
            &client,
            Method::DELETE,
            &b.url("/api/agent-tokens/me"),
            &jwt,
        )
        .await;
        assert_eq!(status, 204);
        assert_eq!(verify(&client, &a, token).await, 401, "user-{user}");
        assert_eq!(verify(&client, &b, token).await, 401, "user-{user}");
    }

    // A rotation on A ends the old token on B at once (no grace configured).
    let jwt = hs256_jwt("rotator");
    let (_, first) = send(&client, Method::POST, &a.url("/api/agent-tokens/me"), &jwt).await;
    let first = first["token"].as_str().unwrap().to_owned();
    assert_eq!(verify(&client, &b, &first).await, 200);
    let (_, second) = send(&client, Method::POST, &b.url("/api/agent-tokens/me"), &jwt).await;
    let second = second["token"].as_str().unwrap().to_owned();
    assert_eq!(verify(&client, &a, &first).await, 401);
    assert_eq!(verify(&client, &a, &second).await, 200);
    // Both replicas' audit trails are one trail.
    let (status, events) = send(
        &client,
        Method::GET,
        &a.url("/api/agent-tokens/me/events"),
        &jwt,
    )
    .await;
    assert_eq!(status, 200, "{events}");
    let text = events.to_string();
    assert!(
        text.contains("created") && text.contains("rotated"),
        "{text}"
    );
}

#[derive(Default, Clone)]
struct UserState {
    acked: Vec<String>,
    in_flight: Option<()>,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_replica_killed_mid_rotations_loses_nothing_acknowledged_and_the_other_serves() {
    let cluster = pg::shared();
    let url = cluster.url(&cluster.new_database());
    let (mut a, b) = (Replica::start(&url), Replica::start(&url));
    let client = client();
    const USERS: usize = 8;
    let states = Arc::new(Mutex::new(vec![UserState::default(); USERS]));
    let mut tasks = Vec::new();
    for user in 0..USERS {
        let (client, states, base) = (client.clone(), Arc::clone(&states), a.url(""));
        tasks.push(tokio::spawn(async move {
            let jwt = hs256_jwt(&format!("user-{user}"));
            loop {
                states.lock().unwrap()[user].in_flight = Some(());
                let sent = client
                    .post(format!("{base}/api/agent-tokens/me"))
                    .bearer_auth(&jwt)
                    .send()
                    .await;
                let Ok(resp) = sent else { return };
                if resp.status() != 200 {
                    return;
                }
                let Ok(body) = resp.json::<Value>().await else {
                    return;
                };
                let mut states = states.lock().unwrap();
                states[user]
                    .acked
                    .push(body["token"].as_str().unwrap().to_owned());
                states[user].in_flight = None;
            }
        }));
    }
    // Let rotations run, then kill A in the middle of them.
    let deadline = Instant::now() + Duration::from_secs(20);
    while states.lock().unwrap().iter().any(|s| s.acked.len() < 5) {
        assert!(Instant::now() < deadline, "rotations on A are too slow");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    a.server.child.kill().unwrap();
    a.server.child.wait().unwrap();
    for task in tasks {
        task.await.unwrap();
    }
    let states = states.lock().unwrap().clone();
    for (user, state) in states.iter().enumerate() {
        let last = state.acked.last().unwrap();
        let jwt = hs256_jwt(&format!("user-{user}"));
        let (status, me) = send(&client, Method::GET, &b.url("/api/agent-tokens/me"), &jwt).await;
        assert_eq!(status, 200);
        let prefix = me["token_prefix"].as_str().unwrap();
        if state.in_flight.is_none() || last.starts_with(prefix.trim_end_matches('.')) {
            // Nothing in flight (or it never committed): the last
            // acknowledged token is current, and verifies on B.
            assert!(
                last.starts_with(prefix.trim_end_matches('.')),
                "user-{user}"
            );
            assert_eq!(verify(&client, &b, last).await, 200, "user-{user}");
        } else {
            // The rotation in flight committed: never an older acked one.
            assert!(
                !state
                    .acked
                    .iter()
                    .any(|t| t.starts_with(prefix.trim_end_matches('.'))),
                "user-{user} went back to an older token"
            );
            assert_eq!(verify(&client, &b, last).await, 401, "user-{user}");
        }
        for older in &state.acked[..state.acked.len() - 1] {
            assert_eq!(verify(&client, &b, older).await, 401, "user-{user}");
        }
    }
    // B keeps serving: rotations and verifies.
    let jwt = hs256_jwt("user-0");
    let (status, body) = send(&client, Method::POST, &b.url("/api/agent-tokens/me"), &jwt).await;
    assert_eq!(status, 200);
    assert_eq!(
        verify(&client, &b, body["token"].as_str().unwrap()).await,
        200
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn postgres_down_fails_closed_and_both_replicas_recover_when_it_returns() {
    let cluster = Cluster::start();
    let url = cluster.url(&cluster.new_database());
    let (a, b) = (Replica::start(&url), Replica::start(&url));
    let client = client();
    let jwt = hs256_jwt("alice");
    let (_, body) = send(&client, Method::POST, &a.url("/api/agent-tokens/me"), &jwt).await;
    let token = body["token"].as_str().unwrap().to_owned();
    assert_eq!(verify(&client, &b, &token).await, 200);
    assert_eq!(readyz(&client, &a).await, 200);

    cluster.stop_server();
    for r in [&a, &b] {
        // Fails closed: never 200, never 401 for a good token.
        assert_eq!(verify(&client, r, &token).await, 503);
        assert_eq!(verify(&client, r, "not-a-token").await, 401);
        // A probe's success is reused for a second at most.
        let deadline = Instant::now() + Duration::from_secs(5);
        while readyz(&client, r).await != 503 {
            assert!(Instant::now() < deadline, "/readyz stays ready");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        for (method, path, message) in [
            (
                Method::GET,
                "/api/agent-tokens/me",
                "Failed to fetch token status.",
            ),
            (
                Method::POST,
                "/api/agent-tokens/me",
                "Failed to store agent token.",
            ),
            (
                Method::POST,
                "/api/agent-tokens/me/get-or-create",
                "Failed to check or store token.",
            ),
            (
                Method::DELETE,
                "/api/agent-tokens/me",
                "Failed to revoke token.",
            ),
        ] {
            let (status, body) = send(&client, method.clone(), &r.url(path), &jwt).await;
            assert_eq!(status, 500, "{method} {path}: {body}");
            assert_eq!(body["message"], message, "{method} {path}: {body}");
        }
    }

    cluster.start_server();
    for r in [&a, &b] {
        let deadline = Instant::now() + Duration::from_secs(30);
        while verify(&client, r, &token).await != 200 || readyz(&client, r).await != 200 {
            assert!(Instant::now() < deadline, "a replica did not recover");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    // Writes work again on both, and each sees the other's.
    let (status, _) = send(
        &client,
        Method::DELETE,
        &b.url("/api/agent-tokens/me"),
        &jwt,
    )
    .await;
    assert_eq!(status, 204);
    assert_eq!(verify(&client, &a, &token).await, 401);
}

#[test]
fn the_urls_password_reaches_neither_logs_nor_check_config() {
    let cluster = pg::shared();
    let database = cluster.new_database();
    let url = format!(
        "postgres://postgres:pw-never-shown@127.0.0.1:{}/{database}",
        cluster.port
    );
    let dir = tempfile::tempdir().unwrap();
    let config = replica_config(dir.path(), &url);
    let out = Command::new(BIN)
        .args(["check-config", "--config"])
        .arg(&config)
        .output()
        .unwrap();
    let text = output_text(&out);
    assert!(out.status.success(), "{text}");
    assert!(
        text.contains("PostgreSQL") && text.contains(&database),
        "{text}"
    );
    assert!(!text.contains("pw-never-shown"), "{text}");

    // Unreachable: check-config fails, saying so without the password.
    let bad_dir = tempfile::tempdir().unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let bad = replica_config(
        bad_dir.path(),
        &format!("postgres://postgres:pw-never-shown@127.0.0.1:{port}/nowhere"),
    );
    let out = Command::new(BIN)
        .args(["check-config", "--config"])
        .arg(&bad)
        .output()
        .unwrap();
    let text = output_text(&out);
    assert!(!out.status.success(), "{text}");
    assert!(text.contains("storage.url"), "{text}");
    assert!(!text.contains("pw-never-shown"), "{text}");

    // A server's log from start to stop, the URL in storage.url_file
    // (a systemd credential: a trailing newline).
    let url_file = dir.path().join("postgres-url");
    std::fs::write(&url_file, format!("{url}\n")).unwrap();
    let text = std::fs::read_to_string(&config).unwrap().replace(
        &format!("url = \"{url}\""),
        &format!("url_file = \"{}\"", url_file.display()),
    );
    assert!(text.contains("url_file"), "{text}");
    std::fs::write(&config, text).unwrap();
    let mut child = Command::new(BIN)
        .args(["serve", "--config"])
        .arg(&config)
        .env("RUST_LOG", "info")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let lines = lines_of(child.stderr.take().unwrap());
    let server = Server {
        child,
        port: 0,
        log: lines,
    };
    let mut seen = Vec::new();
    wait_for_line(&server.log, "listening on port", &mut seen);
    let mut server = server;
    server.terminate();
    seen.extend(server.drain_log());
    let joined = seen.join("\n");
    assert!(joined.contains("PostgreSQL at 127.0.0.1"), "{joined}");
    assert!(!joined.contains("pw-never-shown"), "{joined}");
}

/// Rotates for `users` on `server` (twice for the first: one token in
/// grace); returns each user's current token.
async fn tokens_on(server: &Server, users: &[&str]) -> Vec<String> {
    let client = client();
    let mut tokens = Vec::new();
    for (i, user) in users.iter().enumerate() {
        let jwt = hs256_jwt(user);
        let url = format!("{}/api/agent-tokens/me", server.base());
        for _ in 0..if i == 0 { 2 } else { 1 } {
            let (status, body) = send(&client, Method::POST, &url, &jwt).await;
            assert_eq!(status, 200, "{body}");
            if tokens.len() == i {
                tokens.push(String::new());
            }
            tokens[i] = body["token"].as_str().unwrap().to_owned();
        }
    }
    tokens
}

async fn verifies_on(server: &Server, token: &str) -> u16 {
    send(
        &client(),
        Method::GET,
        &format!("{}/api/agent-tokens/verify", server.base()),
        token,
    )
    .await
    .0
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn export_and_import_move_tokens_between_the_embedded_store_and_postgresql() {
    let cluster = pg::shared();
    let users = ["alice", "bob", "ünïcødé@example.com"];
    // Embedded -> PostgreSQL.
    let embedded_dir = tempfile::tempdir().unwrap();
    let embedded = TestConfig::served(embedded_dir.path())
        .set("tokens", "rotation_grace_secs", 3600)
        .write(embedded_dir.path());
    let server = Server::start(&embedded);
    let tokens = tokens_on(&server, &users).await;
    server.stop();
    let export = run("export", &embedded, &[], b"");
    assert!(export.status.success(), "{}", output_text(&export));
    let check = run("check", &embedded, &[], b"");
    assert!(check.status.success(), "{}", output_text(&check));

    let pg_dir = tempfile::tempdir().unwrap();
    let database = cluster.new_database();
    let postgres = TestConfig::served(pg_dir.path())
        .set("tokens", "rotation_grace_secs", 3600)
        .set("storage", "backend", "postgres")
        .set("storage", "url", cluster.url(&database))
        .write(pg_dir.path());
    let import = run("import", &postgres, &[], &export.stdout);
    let text = output_text(&import);
    assert!(import.status.success(), "{text}");
    assert!(text.contains("imported 3 users (1 in grace)"), "{text}");
    // Again: refused, the database holds tokens.
    let again = run("import", &postgres, &[], &export.stdout);
    assert_eq!(again.status.code(), Some(73), "{}", output_text(&again));
    let check = run("check", &postgres, &[], b"");
    let text = output_text(&check);
    assert!(check.status.success(), "{text}");
    assert!(
        text.contains("3 users with a token (1 in grace), 4 tokens"),
        "{text}"
    );

    // The imported tokens verify on a replica, the one in grace too.
    let replica = Server::start(&postgres);
    for token in &tokens {
        assert_eq!(verifies_on(&replica, token).await, 200);
    }
    let newer = tokens_on(&replica, &["carol"]).await;
    // PostgreSQL -> embedded, while the replica serves.
    let export = run("export", &postgres, &[], b"");
    assert!(export.status.success(), "{}", output_text(&export));
    let header: Value =
        serde_json::from_slice(export.stdout.split(|&b| b == b'\n').next().unwrap()).unwrap();
    assert_eq!(header["users"], 4);
    replica.stop();

    let back_dir = tempfile::tempdir().unwrap();
    let back = TestConfig::served(back_dir.path())
        .set("tokens", "rotation_grace_secs", 3600)
        .write(back_dir.path());
    let import = run("import", &back, &[], &export.stdout);
    assert!(import.status.success(), "{}", output_text(&import));
    let check = run("check", &back, &[], b"");
    assert!(check.status.success(), "{}", output_text(&check));
    let server = Server::start(&back);
    for token in tokens.iter().chain(&newer) {
        assert_eq!(verifies_on(&server, token).await, 200);
    }
    server.stop();
}

fn admin_ok(config: &Path, args: &[&str]) -> String {
    let out = Command::new(BIN)
        .args(["admin", "--config"])
        .arg(config)
        .args(args)
        .env("RUST_LOG", "warn")
        .output()
        .unwrap();
    assert!(out.status.success(), "{args:?}: {}", output_text(&out));
    String::from_utf8(out.stdout).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_verbs_read_and_revoke_what_every_replica_wrote() {
    let cluster = pg::shared();
    let url = cluster.url(&cluster.new_database());
    let (a, b) = (Replica::start(&url), Replica::start(&url));
    let alice = tokens_on(&a.server, &["alice"]).await.remove(0);
    let bob = tokens_on(&b.server, &["bob"]).await.remove(0);
    let config = a._dir.path().join("agent-tokens.toml");

    let list = admin_ok(&config, &["list", "--json"]);
    assert_eq!(list.lines().count(), 2, "{list}");
    assert!(
        list.contains("\"alice\"") && list.contains("\"bob\""),
        "{list}"
    );
    let prefix = &bob[..15];
    let found = admin_ok(&config, &["lookup", prefix, "--json"]);
    assert!(
        found.contains("\"bob\"") && found.contains("current"),
        "{found}"
    );
    let export = admin_ok(&config, &["export"]);
    assert_eq!(export.lines().count(), 3, "{export}");
    let events = admin_ok(&config, &["events", "--json"]);
    assert!(
        events.contains("\"alice\"") && events.contains("\"bob\""),
        "{events}"
    );

    // With no server of its own, the command acts on the database directly.
    let elsewhere = tempfile::tempdir().unwrap();
    let direct = replica_config(elsewhere.path(), &url);
    let list = admin_ok(&direct, &["list", "--json"]);
    assert_eq!(list.lines().count(), 2, "{list}");
    admin_ok(&direct, &["revoke", "alice"]);
    assert_eq!(verify(&client(), &a, &alice).await, 401);
    assert_eq!(verify(&client(), &b, &bob).await, 200);

    admin_ok(&config, &["revoke-all", "--before", "now"]);
    let client = client();
    for token in [&alice, &bob] {
        assert_eq!(verify(&client, &a, token).await, 401);
        assert_eq!(verify(&client, &b, token).await, 401);
    }
    let events = admin_ok(&config, &["events", "--json"]);
    assert!(events.contains("revoke_all"), "{events}");
    assert!(admin_ok(&config, &["list", "--json"]).trim().is_empty());
}
