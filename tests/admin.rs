//! `agent-tokens admin` against the real binary: each verb on a running
//! server over its socket, the socket's permissions, the kill switch under
//! concurrent rotations, an export taken while rotations run, and the
//! verbs on a stopped store.

mod common;

use std::path::Path;
use std::process::{Command, Output};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;
use reqwest::Method;
use serde_json::Value;

fn admin(config: &Path, args: &[&str]) -> Output {
    Command::new(BIN)
        .args(["admin", "--config"])
        .arg(config)
        .args(args)
        .env("RUST_LOG", "warn")
        .output()
        .unwrap()
}

/// Runs a verb that must succeed; its stdout.
fn admin_ok(config: &Path, args: &[&str]) -> String {
    let out = admin(config, args);
    assert!(out.status.success(), "{args:?}: {}", output_text(&out));
    String::from_utf8(out.stdout).unwrap()
}

/// A config whose `[server]` also names the admin socket.
fn config_with_socket(dir: &Path, socket: &Path, extra: &str) -> std::path::PathBuf {
    let config = write_config_with(dir, extra);
    let text = std::fs::read_to_string(&config).unwrap().replacen(
        "[server]\n",
        &format!("[server]\nadmin_socket = \"{}\"\n", socket.display()),
        1,
    );
    std::fs::write(&config, text).unwrap();
    config
}

fn json_lines(text: &str) -> Vec<Value> {
    text.lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

fn prefix_of(token: &str) -> String {
    format!("{}...", &token[..15])
}

async fn rotate(client: &reqwest::Client, base: &str, user: &str) -> String {
    let (status, body) = call(
        client,
        Method::POST,
        &format!("{base}/api/agent-tokens/me"),
        &hs256_jwt(user),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    body["token"].as_str().unwrap().to_owned()
}

async fn verify(client: &reqwest::Client, base: &str, token: &str) -> u16 {
    call(
        client,
        Method::GET,
        &format!("{base}/api/agent-tokens/verify"),
        token,
    )
    .await
    .0
}

fn assert_no_secret(text: &str, tokens: &[&str]) {
    for token in tokens {
        assert!(!text.contains(&token[7..]), "a token in {text}");
        let hash = hex::encode(ring::digest::digest(
            &ring::digest::SHA256,
            token.as_bytes(),
        ));
        assert!(!text.contains(&hash), "a token hash in {text}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_verb_works_against_a_running_server() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config_with(
        dir.path(),
        "[tokens]\nrotation_grace_secs = 3600\nmax_age_days = 30",
    );
    let server = Server::start(&config);
    let (client, base) = (reqwest::Client::new(), server.base());
    let alice = rotate(&client, &base, "alice").await;
    let bob_old = rotate(&client, &base, "bob").await;
    let bob = rotate(&client, &base, "bob").await;

    // list, with and without --json and its filters
    let listed = json_lines(&admin_ok(&config, &["list", "--json"]));
    assert_eq!(listed.len(), 2);
    assert_eq!(listed[0]["user_id"], "alice");
    assert_eq!(listed[0]["token_prefix"], prefix_of(&alice));
    let mut keys: Vec<_> = listed[0].as_object().unwrap().keys().cloned().collect();
    keys.sort();
    assert_eq!(
        keys,
        [
            "created_at",
            "expires_at",
            "last_used_at",
            "token_prefix",
            "user_id"
        ]
    );
    assert!(listed[0]["expires_at"].as_str().unwrap().ends_with('Z'));
    let human = admin_ok(&config, &["list"]);
    assert_eq!(human.lines().count(), 2, "{human}");
    assert!(human.contains("never used"), "{human}");
    assert_eq!(
        admin_ok(&config, &["list", "--expiring-within", "31d"])
            .lines()
            .count(),
        2
    );
    assert_eq!(admin_ok(&config, &["list", "--expiring-within", "29d"]), "");
    assert_eq!(admin_ok(&config, &["list", "--unused-for", "1d"]), "");

    // show
    let shown = json_lines(&admin_ok(&config, &["show", "bob", "--json"]));
    assert_eq!(shown.len(), 1);
    assert_eq!(shown[0]["token_prefix"], prefix_of(&bob));
    let out = admin(&config, &["show", "nobody"]);
    assert_eq!(out.status.code(), Some(1), "{}", output_text(&out));
    assert!(String::from_utf8_lossy(&out.stderr).contains("has no token"));

    // lookup: the current and the in-grace token, with or without "..."
    let found = json_lines(&admin_ok(&config, &["lookup", &bob[..15], "--json"]));
    assert_eq!(found[0]["user_id"], "bob");
    assert_eq!(found[0]["state"], "current");
    let found = json_lines(&admin_ok(
        &config,
        &["lookup", &prefix_of(&bob_old), "--json"],
    ));
    assert_eq!(found[0]["state"], "in_grace");
    let out = admin(&config, &["lookup", "sk_agt_00000000"]);
    assert_eq!(out.status.code(), Some(1), "{}", output_text(&out));
    let out = admin(&config, &["lookup", "sk_agt_zz"]);
    assert_eq!(out.status.code(), Some(65), "{}", output_text(&out));

    // revoke: the next verify answers 401, the grace token's too
    assert_eq!(verify(&client, &base, &bob_old).await, 200);
    admin_ok(&config, &["revoke", "bob"]);
    assert_eq!(verify(&client, &base, &bob).await, 401);
    assert_eq!(verify(&client, &base, &bob_old).await, 401);
    assert_eq!(verify(&client, &base, &alice).await, 200);
    admin_ok(&config, &["revoke", "bob"]);

    // export while serving, in the format import reads
    let file = dir.path().join("export.jsonl");
    admin_ok(&config, &["export", file.to_str().unwrap()]);
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&file).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600);
    let exported = std::fs::read_to_string(&file).unwrap();
    assert_eq!(exported.lines().count(), 2, "{exported}");
    assert!(exported.contains("\"alice\""));

    // events: everything, and one user's; never a secret
    let events = admin_ok(&config, &["events", "--json"]);
    let types: Vec<String> = json_lines(&events)
        .iter()
        .map(|e| {
            format!(
                "{}:{}",
                e["type"].as_str().unwrap(),
                e["actor"].as_str().unwrap()
            )
        })
        .collect();
    assert_eq!(
        types,
        [
            "created:user",
            "created:user",
            "rotated:user",
            "revoked:admin",
            "export:admin"
        ]
    );
    assert_no_secret(&events, &[&alice, &bob, &bob_old]);
    let of_bob = json_lines(&admin_ok(&config, &["events", "bob", "--json"]));
    assert_eq!(of_bob.len(), 3);
    assert!(of_bob.iter().all(|e| e["user_id"] == "bob"));
    let since_future = admin_ok(&config, &["events", "--since", "2999-01-01T00:00:00Z"]);
    assert_eq!(since_future, "");
    drop(server);

    // The export imports into a new store where the tokens verify.
    let other = tempfile::tempdir().unwrap();
    let other_config = write_config(other.path());
    let out = Command::new(BIN)
        .args(["import", "--config"])
        .arg(&other_config)
        .stdin(std::fs::File::open(&file).unwrap())
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", output_text(&out));
    let server = Server::start(&other_config);
    assert_eq!(verify(&client, &server.base(), &alice).await, 200);
    assert_eq!(verify(&client, &server.base(), &bob).await, 401);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_the_server_stopped_the_verbs_work_on_the_store() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path());
    let mut server = Server::start(&config);
    let client = reqwest::Client::new();
    let alice = rotate(&client, &server.base(), "alice").await;
    assert!(server.terminate().success());
    assert!(
        !dir.path().join("db/admin.sock").exists(),
        "removed at stop"
    );

    let listed = json_lines(&admin_ok(&config, &["list", "--json"]));
    assert_eq!(listed[0]["token_prefix"], prefix_of(&alice));
    admin_ok(&config, &["revoke", "alice"]);
    assert_eq!(admin_ok(&config, &["list"]), "");
    let events = json_lines(&admin_ok(&config, &["events", "--json"]));
    assert_eq!(events.last().unwrap()["actor"], "admin");

    let server = Server::start(&config);
    assert_eq!(verify(&client, &server.base(), &alice).await, 401);
}

/// The `type`, `actor` and `user_id` of each line of an `audit.file`.
fn audit_lines(path: &Path) -> Vec<(String, String, String)> {
    json_lines(&std::fs::read_to_string(path).unwrap())
        .iter()
        .map(|e| {
            let field = |k: &str| e[k].as_str().unwrap_or("").to_owned();
            (field("type"), field("actor"), field("user_id"))
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_the_server_stopped_changes_still_reach_the_audit_file() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let audit = dir.path().join("audit.jsonl");
    let config = write_config_with(
        dir.path(),
        &format!("[audit]\nfile = \"{}\"", audit.display()),
    );
    let mut server = Server::start(&config);
    let client = reqwest::Client::new();
    rotate(&client, &server.base(), "alice").await;
    let bob = rotate(&client, &server.base(), "bob").await;
    assert!(server.terminate().success());
    let entry =
        |kind: &str, actor: &str, user: &str| (kind.to_owned(), actor.to_owned(), user.to_owned());
    assert_eq!(
        audit_lines(&audit),
        [
            entry("created", "user", "alice"),
            entry("created", "user", "bob")
        ]
    );

    admin_ok(&config, &["revoke", "alice"]);
    // TIMEs with an offset: before 2026 nothing goes, before 2100 bob's.
    let out = admin(
        &config,
        &["revoke-all", "--before", "2026-01-01T05:00:00+05:00"],
    );
    assert!(out.status.success(), "{}", output_text(&out));
    assert!(
        output_text(&out).contains("revoked 0 token(s) created before 2026-01-01T00:00:00Z"),
        "{}",
        output_text(&out)
    );
    admin_ok(
        &config,
        &["revoke-all", "--before", "2099-12-31T23:00:00.5-05:00"],
    );
    // An existing file readable by others ends up private.
    let export = dir.path().join("export.jsonl");
    std::fs::write(&export, "old content\n").unwrap();
    std::fs::set_permissions(&export, std::fs::Permissions::from_mode(0o644)).unwrap();
    admin_ok(&config, &["export", export.to_str().unwrap()]);
    let mode = std::fs::metadata(&export).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    assert!(!std::fs::read_to_string(&export)
        .unwrap()
        .contains("old content"));
    // The read-only verbs add nothing.
    admin_ok(&config, &["list"]);
    let events = admin_ok(&config, &["events", "--json"]);

    assert_eq!(
        audit_lines(&audit),
        [
            entry("created", "user", "alice"),
            entry("created", "user", "bob"),
            entry("revoked", "admin", "alice"),
            entry("revoke_all", "admin", ""),
            entry("revoked", "admin", "bob"),
            entry("revoke_all", "admin", ""),
            entry("export", "admin", ""),
        ]
    );
    // The file holds what the store holds, and no token.
    let file_text = std::fs::read_to_string(&audit).unwrap();
    assert_eq!(json_lines(&file_text), json_lines(&events));
    assert_no_secret(&file_text, &[&bob]);

    let server = Server::start(&config);
    assert_eq!(verify(&client, &server.base(), &bob).await, 401);
}

#[test]
fn an_export_file_that_cannot_be_created_exits_74() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path());
    let missing = dir.path().join("no-such-dir/export.jsonl");
    let out = admin(&config, &["export", missing.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(74), "{}", output_text(&out));
    assert!(
        output_text(&out).contains("cannot create the export file"),
        "{}",
        output_text(&out)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_unix_user_is_refused_at_the_socket() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    // Everything but the socket readable by others, so only the socket's
    // own permissions stand between `nobody` and the server.
    let open = |p: &Path, mode| std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode));
    open(dir.path(), 0o755).unwrap();
    let run = dir.path().join("run");
    std::fs::create_dir(&run).unwrap();
    open(&run, 0o755).unwrap();
    let socket = run.join("admin.sock");
    let config = config_with_socket(dir.path(), &socket, "");
    open(&config, 0o644).unwrap();
    let server = Server::start(&config);
    let client = reqwest::Client::new();
    let alice = rotate(&client, &server.base(), "alice").await;
    let mode = std::fs::metadata(&socket).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600);

    let out = Command::new("setpriv")
        .args([
            "--reuid=nobody",
            "--regid=nogroup",
            "--clear-groups",
            "--",
            BIN,
            "admin",
            "--config",
        ])
        .arg(&config)
        .args(["revoke", "alice"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(77), "{}", output_text(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("permission denied"),
        "{}",
        output_text(&out)
    );
    assert_eq!(verify(&client, &server.base(), &alice).await, 200);
    // The server's own user gets in.
    admin_ok(&config, &["revoke", "alice"]);
    assert_eq!(verify(&client, &server.base(), &alice).await, 401);
}

#[test]
fn an_admin_group_that_does_not_exist_is_refused_by_check_config_and_serve() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config_with(dir.path(), "[server]\nadmin_group = \"no-such-group-x\"");
    for command in ["check-config", "serve"] {
        let out = Command::new(BIN)
            .args([command, "--config"])
            .arg(&config)
            .env("RUST_LOG", "warn")
            .output()
            .unwrap();
        assert_eq!(
            out.status.code(),
            Some(78),
            "{command}: {}",
            output_text(&out)
        );
        assert!(
            String::from_utf8_lossy(&out.stderr).contains(
                "server.admin_group: there is no group named \"no-such-group-x\" in /etc/group"
            ),
            "{command}: {}",
            output_text(&out)
        );
    }
}

/// A server that is not a member of `server.admin_group` cannot give the
/// socket to it: the message says what to change, not to move the socket.
#[test]
fn a_server_outside_its_admin_group_says_to_make_its_user_a_member() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config_with(dir.path(), "[server]\nadmin_group = \"staff\"");
    let nobody = Command::new("chown")
        .args(["-R", "nobody:nogroup"])
        .arg(dir.path())
        .status()
        .unwrap();
    assert!(nobody.success());
    let out = Command::new("setpriv")
        .args([
            "--reuid=nobody",
            "--regid=nogroup",
            "--clear-groups",
            "--",
            BIN,
            "serve",
            "--config",
        ])
        .arg(&config)
        .env("RUST_LOG", "warn")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(78), "{}", output_text(&out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("server.admin_group: cannot give the admin socket")
            && stderr.contains("the server's user must be a member of group \"staff\"")
            && stderr.contains("SupplementaryGroups=staff"),
        "{}",
        output_text(&out)
    );
    assert!(
        !stderr.contains("set server.admin_socket to another path"),
        "{stderr}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_live_socket_stops_a_second_server_and_a_stale_one_is_replaced() {
    let shared = tempfile::tempdir().unwrap();
    let socket = shared.path().join("admin.sock");
    let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let first = Server::start(&config_with_socket(a.path(), &socket, ""));
    let second_config = config_with_socket(b.path(), &socket, "");
    let out = Command::new(BIN)
        .args(["serve", "--config"])
        .arg(&second_config)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(78), "{}", output_text(&out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("server.admin_socket") && stderr.contains("another agent-tokens"),
        "{stderr}"
    );
    // SIGKILL leaves the file behind; the next server replaces it.
    let mut first = first;
    first.signal("KILL");
    first.wait_exit(10);
    assert!(socket.exists());
    let second = Server::start(&second_config);
    admin_ok(&second_config, &["list"]);
    drop(second);
}

/// One rotation as a client saw it.
struct Rotation {
    user: usize,
    sent: Instant,
    acked: Option<Instant>,
    token: Option<String>,
}

/// Rotates tokens of `users` users in a loop until `stop`, recording each.
fn rotate_in_background(
    base: &str,
    users: usize,
    stop: Arc<std::sync::atomic::AtomicBool>,
) -> (Arc<Mutex<Vec<Rotation>>>, Vec<tokio::task::JoinHandle<()>>) {
    let log = Arc::new(Mutex::new(Vec::new()));
    let client = reqwest::Client::new();
    let tasks = (0..users)
        .map(|user| {
            let (log, client, stop, base) =
                (log.clone(), client.clone(), stop.clone(), base.to_owned());
            tokio::spawn(async move {
                let jwt = hs256_jwt(&format!("user-{user}"));
                while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                    let sent = Instant::now();
                    let (status, body) = call(
                        &client,
                        Method::POST,
                        &format!("{base}/api/agent-tokens/me"),
                        &jwt,
                    )
                    .await;
                    let acked = (status == 200).then(Instant::now);
                    let token = body["token"].as_str().map(str::to_owned);
                    log.lock().unwrap().push(Rotation {
                        user,
                        sent,
                        acked,
                        token,
                    });
                }
            })
        })
        .collect();
    (log, tasks)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_kill_switch_under_concurrent_rotations_spares_exactly_what_came_after() {
    const USERS: usize = 6;
    let dir = tempfile::tempdir().unwrap();
    let config = write_config_with(dir.path(), "[tokens]\nrotation_grace_secs = 3600");
    let server = Server::start(&config);
    let base = server.base();
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let (log, tasks) = rotate_in_background(&base, USERS, stop.clone());
    tokio::time::sleep(Duration::from_millis(400)).await;
    let started = Instant::now();
    let config_path = config.clone();
    let out = tokio::task::spawn_blocking(move || {
        admin(&config_path, &["revoke-all", "--before", "now"])
    })
    .await
    .unwrap();
    let ended = Instant::now();
    assert!(out.status.success(), "{}", output_text(&out));
    tokio::time::sleep(Duration::from_millis(400)).await;
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    for task in tasks {
        task.await.unwrap();
    }
    let client = reqwest::Client::new();
    let log = std::mem::take(&mut *log.lock().unwrap());
    let mut before = 0;
    for r in log.iter().filter(|r| r.acked.is_some_and(|a| a < started)) {
        let token = r.token.as_deref().unwrap();
        assert_eq!(verify(&client, &base, token).await, 401, "created before");
        before += 1;
    }
    // Each user's last token, asked for after the command returned, lives.
    for user in 0..USERS {
        let last = log.iter().rfind(|r| r.user == user).unwrap();
        assert!(last.sent > ended, "user {user} rotated after the command");
        let token = last.token.as_deref().unwrap();
        assert_eq!(verify(&client, &base, token).await, 200, "created after");
    }
    assert!(
        before >= USERS,
        "rotations ran before the command: {before}"
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("revoked"), "{stderr}");
    let events = json_lines(&admin_ok(&config, &["events", "--json"]));
    let summary = events.iter().find(|e| e["type"] == "revoke_all").unwrap();
    assert_eq!(summary["actor"], "admin");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_export_taken_while_rotations_run_has_every_acknowledged_token() {
    const USERS: usize = 6;
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path());
    let server = Server::start(&config);
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let (log, tasks) = rotate_in_background(&server.base(), USERS, stop.clone());
    tokio::time::sleep(Duration::from_millis(400)).await;
    let file = dir.path().join("export.jsonl");
    let started = Instant::now();
    let (config_path, file_path) = (config.clone(), file.clone());
    let out = tokio::task::spawn_blocking(move || {
        admin(&config_path, &["export", file_path.to_str().unwrap()])
    })
    .await
    .unwrap();
    let ended = Instant::now();
    assert!(out.status.success(), "{}", output_text(&out));
    tokio::time::sleep(Duration::from_millis(200)).await;
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    for task in tasks {
        task.await.unwrap();
    }
    drop(server);

    let other = tempfile::tempdir().unwrap();
    let other_config = write_config(other.path());
    let out = Command::new(BIN)
        .args(["import", "--config"])
        .arg(&other_config)
        .stdin(std::fs::File::open(&file).unwrap())
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", output_text(&out));
    let server = Server::start(&other_config);
    let client = reqwest::Client::new();
    let log = std::mem::take(&mut *log.lock().unwrap());
    for user in 0..USERS {
        let mine: Vec<&Rotation> = log.iter().filter(|r| r.user == user).collect();
        // The snapshot holds a token acknowledged no earlier than the last
        // one acknowledged before the export began, and no later than
        // what was asked for before it ended.
        let first = mine
            .iter()
            .rposition(|r| r.acked.is_some_and(|a| a < started))
            .unwrap();
        let candidates: Vec<&&Rotation> = mine[first..].iter().filter(|r| r.sent < ended).collect();
        let mut live = 0;
        for r in &candidates {
            if let Some(token) = &r.token {
                if verify(&client, &server.base(), token).await == 200 {
                    live += 1;
                }
            }
        }
        assert_eq!(
            live, 1,
            "user {user}: exactly one of its tokens of that moment"
        );
    }
}

/// What one user's client saw across the kills.
#[derive(Default, Clone)]
struct Seen {
    /// Prefixes of the rotations answered 200, in order.
    acked: Vec<String>,
    /// Answered 429: refused, so never an event.
    refused: usize,
    /// A rotation whose answer never came (the kill): it may have landed.
    in_flight: bool,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_audit_trail_survives_sigkill_exactly_as_the_changes_do() {
    const USERS: usize = 4;
    const CYCLES: usize = 5;
    let dir = tempfile::tempdir().unwrap();
    // A small burst, so some rotations are refused (429) between the others.
    let config = write_config_with(
        dir.path(),
        "[rate_limit]\nmanagement_per_minute = 600\nmanagement_burst = 12",
    );
    let seen: Arc<Vec<Mutex<Seen>>> =
        Arc::new((0..USERS).map(|_| Mutex::new(Seen::default())).collect());
    let mut rng = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos() as u64;
    eprintln!("audit crash test seed: {rng}");
    for cycle in 0..CYCLES {
        let mut server = Server::start(&config);
        let base = server.base();
        let clients: Vec<_> = (0..USERS)
            .map(|user| {
                let (seen, base) = (seen.clone(), base.clone());
                tokio::spawn(async move {
                    let client = reqwest::Client::new();
                    let jwt = hs256_jwt(&format!("crash-{user}"));
                    loop {
                        seen[user].lock().unwrap().in_flight = true;
                        let resp = client
                            .post(format!("{base}/api/agent-tokens/me"))
                            .bearer_auth(&jwt)
                            .timeout(Duration::from_secs(10))
                            .send()
                            .await;
                        let Ok(resp) = resp else { return };
                        let status = resp.status().as_u16();
                        let Ok(body) = resp.json::<Value>().await else {
                            return;
                        };
                        let mut seen = seen[user].lock().unwrap();
                        match status {
                            200 => seen
                                .acked
                                .push(body["token_prefix"].as_str().unwrap().into()),
                            429 => seen.refused += 1,
                            other => panic!("rotation answered {other}: {body}"),
                        }
                        seen.in_flight = false;
                    }
                })
            })
            .collect();
        rng = rng
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        tokio::time::sleep(Duration::from_millis(150 + (rng >> 33) % 450)).await;
        server.signal("KILL");
        tokio::task::spawn_blocking(move || {
            server.wait_exit(10);
        })
        .await
        .unwrap();
        for c in clients {
            c.await.unwrap();
        }

        // The server is down: the verb reads the store itself.
        let events = json_lines(&admin_ok(&config, &["events", "--json"]));
        for (user, state) in seen.iter().enumerate() {
            let mut state = state.lock().unwrap();
            let stored: Vec<String> = events
                .iter()
                .filter(|e| e["user_id"] == format!("crash-{user}"))
                .map(|e| {
                    assert!(matches!(e["type"].as_str(), Some("created" | "rotated")));
                    e["token_prefix"].as_str().unwrap().to_owned()
                })
                .collect();
            if stored.len() == state.acked.len() + 1 && state.in_flight {
                // The rotation in flight at the kill landed: it is a change
                // the store has, so it has its event; it is acknowledged
                // from now on.
                state.acked.push(stored.last().unwrap().clone());
            }
            assert_eq!(
                stored, state.acked,
                "cycle {cycle}, user {user}: one event per acknowledged rotation"
            );
            state.in_flight = false;
        }
        let out = Command::new(BIN)
            .args(["check", "--config"])
            .arg(&config)
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", output_text(&out));
    }
    let refused: usize = seen.iter().map(|s| s.lock().unwrap().refused).sum();
    let acked: usize = seen.iter().map(|s| s.lock().unwrap().acked.len()).sum();
    eprintln!("audit crash test: {acked} rotations acknowledged, {refused} refused");
    assert!(
        refused > 0 && acked > USERS * CYCLES,
        "{acked} acked, {refused} refused"
    );
}
