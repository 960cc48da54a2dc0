//! `agent-tokens export` and `import`, run as an operator runs them: against
//! real config files and stores, with the built binary and a real server.

mod common;

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Output;

use common::{hs256_jwt, run, write_config, Server, TestConfig, SECRET};
use serde_json::{json, Value};

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn export(config: &Path) -> String {
    let out = run("export", config, &[], b"");
    assert!(out.status.success(), "export failed: {}", stderr(&out));
    String::from_utf8(out.stdout).unwrap()
}

fn import(config: &Path, extra: &[&str], input: &str) -> Output {
    run("import", config, extra, input.as_bytes())
}

/// The user lines of an export, parsed (the header carries the export time).
fn user_lines(export: &str) -> Vec<Value> {
    export
        .lines()
        .skip(1)
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

async fn call(client: &reqwest::Client, method: &str, url: String, bearer: &str) -> (u16, Value) {
    let request = match method {
        "GET" => client.get(url),
        "POST" => client.post(url),
        "DELETE" => client.delete(url),
        _ => unreachable!(),
    };
    let response = request.bearer_auth(bearer).send().await.unwrap();
    let status = response.status().as_u16();
    let text = response.text().await.unwrap();
    (status, serde_json::from_str(&text).unwrap_or(Value::Null))
}

/// A verify answer: status, the X-Agent-User-Id header and the body.
async fn verify(client: &reqwest::Client, base: &str, token: &str) -> (u16, Option<String>, Value) {
    let response = client
        .get(format!("{base}/api/agent-tokens/verify"))
        .bearer_auth(token)
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    let user = response
        .headers()
        .get("x-agent-user-id")
        .map(|v| String::from_utf8(v.as_bytes().to_vec()).unwrap());
    (status, user, response.json().await.unwrap())
}

#[tokio::test]
async fn an_export_restores_every_token_into_a_new_store_with_another_config() {
    let a = tempfile::tempdir().unwrap();
    let config_a = TestConfig::served(a.path())
        .set("tokens", "rotation_grace_secs", 3600)
        .write(a.path());
    let server = Server::start(&config_a);
    let base = server.base();
    let client = reqwest::Client::new();
    let users = ["alice", "bob", "carol", "dave", "ünïcødé@example.com"];
    let mut tokens: BTreeMap<&str, String> = BTreeMap::new();
    for user in users {
        let (status, body) = call(
            &client,
            "POST",
            format!("{base}/api/agent-tokens/me/get-or-create"),
            &hs256_jwt(user),
        )
        .await;
        assert_eq!(status, 200, "{body}");
        tokens.insert(user, body["token"].as_str().unwrap().to_owned());
    }
    // bob rotates: his first token stays valid for an hour.
    let (status, body) = call(
        &client,
        "POST",
        format!("{base}/api/agent-tokens/me"),
        &hs256_jwt("bob"),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let bob_old = tokens
        .insert("bob", body["token"].as_str().unwrap().to_owned())
        .unwrap();
    // dave revokes: his token must stay dead after the restore.
    let (status, _) = call(
        &client,
        "DELETE",
        format!("{base}/api/agent-tokens/me"),
        &hs256_jwt("dave"),
    )
    .await;
    assert_eq!(status, 204);
    let dave = tokens.remove("dave").unwrap();
    // Some tokens are used, so last_used_at is set for them and not for carol.
    for user in ["alice", "bob", "ünïcødé@example.com"] {
        assert_eq!(verify(&client, &base, &tokens[user]).await.0, 200);
    }
    assert_eq!(verify(&client, &base, &bob_old).await.0, 200);

    // Verify answers first (carol's token stays unused), then /me, so the
    // last-used stamps are settled before /me records them.
    let mut before_verify = BTreeMap::new();
    for (user, token) in tokens
        .iter()
        .map(|(u, t)| (*u, t))
        .chain([("bob", &bob_old)])
        .filter(|(u, _)| *u != "carol")
    {
        let answer = verify(&client, &base, token).await;
        assert_eq!(answer.0, 200);
        assert_eq!(answer.1.as_deref(), Some(user));
        before_verify.insert(token.clone(), answer);
    }
    let mut before_me = BTreeMap::new();
    for user in users {
        let (status, me) = call(
            &client,
            "GET",
            format!("{base}/api/agent-tokens/me"),
            &hs256_jwt(user),
        )
        .await;
        assert_eq!(status, 200);
        before_me.insert(user, me);
    }
    assert!(before_me["alice"]["last_used_at"].is_string());
    assert!(before_me["carol"]["last_used_at"].is_null());
    assert_eq!(before_me["dave"]["has_token"], false);
    server.stop();

    let out = run("export", &config_a, &[], b"");
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("exported 4 users (1 in grace)"),
        "{}",
        stderr(&out)
    );
    let exported = String::from_utf8(out.stdout).unwrap();
    let header: Value = serde_json::from_str(exported.lines().next().unwrap()).unwrap();
    assert_eq!(header["format"], "agent-tokens-export");
    assert_eq!(header["version"], 1);
    assert_eq!(header["users"], 4);
    assert_eq!(user_lines(&exported).len(), 4);
    // Hashes and prefixes only: no token body, and no key material.
    for token in tokens.values().chain([&bob_old, &dave]) {
        assert!(
            !exported.contains(&token[15..]),
            "a token reached the export"
        );
    }
    assert!(!exported.contains(SECRET));
    let bob: Value = user_lines(&exported)
        .into_iter()
        .find(|v| v["user_id"] == "bob")
        .unwrap();
    assert_eq!(bob["token_prefix"], before_me["bob"]["token_prefix"]);
    assert_eq!(
        bob["grace"]["token_prefix"],
        format!("{}...", &bob_old[..15])
    );
    assert!(bob["grace"]["grace_until"].as_u64().unwrap() > bob["created_at"].as_u64().unwrap());

    // Restore into an empty directory with a different config (no grace window).
    let b = tempfile::tempdir().unwrap();
    let config_b = TestConfig::served(b.path())
        .set("tokens", "rotation_grace_secs", 0)
        .write(b.path());
    let out = import(&config_b, &[], &exported);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("imported 4 users (1 in grace)"),
        "{}",
        stderr(&out)
    );

    // The restored store exports to the same records.
    assert_eq!(user_lines(&export(&config_b)), user_lines(&exported));

    let server = Server::start(&config_b);
    let base = server.base();
    // /me first: a verify could stamp a new last-used minute.
    for user in users {
        let (status, me) = call(
            &client,
            "GET",
            format!("{base}/api/agent-tokens/me"),
            &hs256_jwt(user),
        )
        .await;
        assert_eq!(status, 200);
        assert_eq!(me, before_me[user], "{user}");
    }
    for (token, expected) in &before_verify {
        assert_eq!(&verify(&client, &base, token).await, expected);
    }
    let carol = verify(&client, &base, &tokens["carol"]).await;
    assert_eq!((carol.0, carol.1.as_deref()), (200, Some("carol")));
    assert_eq!(
        verify(&client, &base, &dave).await.0,
        401,
        "a revoked token came back"
    );
    server.stop();
}

fn random_hash() -> String {
    let mut bytes = [0u8; 32];
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut bytes).unwrap();
    hex::encode(bytes)
}

fn prefix_of(hash: &str) -> String {
    format!("sk_agt_{}...", &hash[..8])
}

fn user_value(user: &str) -> Value {
    let hash = random_hash();
    json!({
        "user_id": user,
        "token_hash": hash,
        "token_prefix": prefix_of(&hash),
        "created_at": 1_795_000_000u64,
        "last_used_at": null,
        "grace": null,
    })
}

fn with_grace(mut user: Value) -> Value {
    let hash = random_hash();
    user["grace"] = json!({
        "token_hash": hash,
        "token_prefix": prefix_of(&hash),
        "grace_until": 4_000_000_000u64,
        "created_at": 1_794_000_000u64,
        "last_used_at": 1_794_500_000u64,
    });
    user
}

fn backup_text(users: &[Value]) -> String {
    let mut text =
        json!({"format": "agent-tokens-export", "version": 1, "users": users.len()}).to_string();
    for user in users {
        text.push('\n');
        text.push_str(&user.to_string());
    }
    text.push('\n');
    text
}

#[test]
fn import_refuses_a_non_empty_store_without_force_and_replaces_it_with_force() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path());
    let first = backup_text(&[user_value("one"), with_grace(user_value("two"))]);
    let second = backup_text(&[user_value("three")]);
    let out = import(&config, &[], &first);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("imported 2 users (1 in grace)"),
        "{}",
        stderr(&out)
    );

    let out = import(&config, &[], &second);
    assert_eq!(out.status.code(), Some(73), "{}", stderr(&out));
    assert_eq!(
        stderr(&out).trim(),
        format!(
            "agent-tokens: the store at {} is not empty; use --force to replace its content",
            dir.path().join("db").display()
        )
    );
    assert_eq!(user_lines(&export(&config)), user_lines(&first));

    let out = import(&config, &["--force"], &second);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("imported 1 users (0 in grace)"),
        "{}",
        stderr(&out)
    );
    // Replaced, not merged: the earlier users and their grace entries are gone.
    assert_eq!(user_lines(&export(&config)), user_lines(&second));
}

#[test]
fn a_bad_line_is_refused_with_its_number_and_nothing_is_written() {
    let alice = user_value("alice");
    let bob = with_grace(user_value("bob"));
    let carol = user_value("carol");
    let good = [alice.clone(), bob.clone(), carol.clone()];
    let valid = backup_text(&good);
    let full_token = format!("sk_agt_{}", random_hash());
    let changed = |line: usize, edit: &dyn Fn(&mut Value)| {
        let mut users = good.to_vec();
        edit(&mut users[line - 2]);
        backup_text(&users)
    };
    let replace_line = |line: usize, with: &str| {
        let mut lines: Vec<String> = valid.lines().map(str::to_owned).collect();
        lines[line - 1] = with.to_owned();
        lines.join("\n") + "\n"
    };
    let cases: Vec<(String, usize, String)> = vec![
        (String::new(), 1, "the backup is empty".into()),
        (replace_line(1, "hello"), 1, "not valid JSON".into()),
        (replace_line(1, "[1,2]"), 1, "not a JSON object".into()),
        (
            replace_line(1, r#"{"format":"something-else","version":1,"users":3}"#),
            1,
            "not an agent-tokens export".into(),
        ),
        (
            replace_line(
                1,
                r#"{"format":"agent-tokens-export","version":2,"users":3}"#,
            ),
            1,
            "version 2 is not supported".into(),
        ),
        (
            replace_line(1, r#"{"format":"agent-tokens-export","version":1}"#),
            1,
            "the header's users".into(),
        ),
        (
            {
                let line = valid.lines().nth(2).unwrap();
                replace_line(3, &line[..line.len() / 2])
            },
            3,
            "the JSON ends early".into(),
        ),
        (
            valid.lines().take(3).collect::<Vec<_>>().join("\n") + "\n",
            4,
            "the header announces 3 users but the file has 2".into(),
        ),
        (replace_line(3, ""), 3, "the line is empty".into()),
        (
            changed(2, &|u| u["user_id"] = json!("")),
            2,
            "user_id is not allowed: the user id is empty".into(),
        ),
        (
            changed(3, &|u| u["user_id"] = json!("a\r\nX-Evil: 1")),
            3,
            "control characters".into(),
        ),
        (
            changed(4, &|u| u["user_id"] = json!("x".repeat(256))),
            4,
            "longer than 255 bytes".into(),
        ),
        (
            changed(2, &|u| u["user_id"] = json!(42)),
            2,
            "user_id must be a string".into(),
        ),
        (
            changed(2, &|u| {
                u.as_object_mut().unwrap().remove("user_id");
            }),
            2,
            "user_id is missing".into(),
        ),
        (
            changed(2, &|u| {
                u["token_hash"] = json!(u["token_hash"].as_str().unwrap().to_uppercase())
            }),
            2,
            "token_hash must be 64 lowercase hex characters".into(),
        ),
        (
            changed(3, &|u| {
                u["token_hash"] = json!(u["token_hash"].as_str().unwrap()[1..].to_owned())
            }),
            3,
            "token_hash must be 64 lowercase hex characters".into(),
        ),
        (
            changed(4, &|u| u["token_hash"] = json!("g".repeat(64))),
            4,
            "token_hash must be 64 lowercase hex".into(),
        ),
        (
            changed(2, &|u| u["token_prefix"] = json!("sk_xyz_01234567...")),
            2,
            "token_prefix must be sk_agt_".into(),
        ),
        (
            changed(2, &|u| u["token_prefix"] = json!("sk_agt_ABCDEF01...")),
            2,
            "token_prefix must be sk_agt_".into(),
        ),
        (
            changed(2, &|u| u["token_prefix"] = json!("sk_agt_01234567")),
            2,
            "token_prefix must be sk_agt_".into(),
        ),
        (
            changed(4, &|u| u["token_prefix"] = json!(full_token.clone())),
            4,
            "token_prefix must be sk_agt_".into(),
        ),
        (
            changed(2, &|u| u["created_at"] = json!(-1)),
            2,
            "created_at must be a non-negative integer".into(),
        ),
        (
            changed(2, &|u| u["created_at"] = json!("2026-11-28T16:24:28Z")),
            2,
            "created_at must be a non-negative integer".into(),
        ),
        (
            changed(2, &|u| u["created_at"] = json!(1.5)),
            2,
            "created_at must be a non-negative integer".into(),
        ),
        (
            changed(3, &|u| u["last_used_at"] = json!("yesterday")),
            3,
            "last_used_at must be null or a non-negative integer".into(),
        ),
        (
            changed(2, &|u| u["token"] = json!(full_token.clone())),
            2,
            "unknown field \"token\"".into(),
        ),
        (
            changed(2, &|u| u["grace"] = json!("soon")),
            2,
            "grace must be null or an object".into(),
        ),
        (
            changed(3, &|u| u["grace"]["token_hash"] = u["token_hash"].clone()),
            3,
            "grace.token_hash is the same as token_hash".into(),
        ),
        (
            changed(3, &|u| u["grace"]["token_prefix"] = json!("sk_agt_...")),
            3,
            "grace.token_prefix must be".into(),
        ),
        (
            changed(3, &|u| {
                u["grace"].as_object_mut().unwrap().remove("grace_until");
            }),
            3,
            "grace.grace_until is missing".into(),
        ),
        (
            changed(3, &|u| u["grace"]["extra"] = json!(1)),
            3,
            "unknown field \"extra\" in grace".into(),
        ),
        (
            changed(4, &|u| u["user_id"] = json!("alice")),
            4,
            "user_id \"alice\" already appears on line 2".into(),
        ),
        (
            changed(4, &|u| u["token_hash"] = alice["token_hash"].clone()),
            4,
            "token_hash already appears on line 2".into(),
        ),
        (
            changed(3, &|u| {
                u["grace"]["token_hash"] = alice["token_hash"].clone()
            }),
            3,
            "grace.token_hash already appears on line 2".into(),
        ),
        (
            changed(4, &|u| u["token_hash"] = bob["grace"]["token_hash"].clone()),
            4,
            "token_hash already appears on line 3".into(),
        ),
    ];
    let mut invalid_utf8 = valid.clone().into_bytes();
    let at = valid.find("alice").unwrap();
    invalid_utf8[at] = 0xff;

    // A target that already holds data: even with --force, a bad file changes nothing.
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path());
    let existing = backup_text(&[user_value("existing"), with_grace(user_value("other"))]);
    assert!(import(&config, &[], &existing).status.success());
    let before = export(&config);
    // A target that does not exist yet: it is not even created.
    let fresh = tempfile::tempdir().unwrap();
    let fresh_config = write_config(fresh.path());

    let mut inputs: Vec<(Vec<u8>, usize, String)> = cases
        .into_iter()
        .map(|(text, line, message)| (text.into_bytes(), line, message))
        .collect();
    inputs.push((invalid_utf8, 2, "the line is not valid UTF-8".into()));
    for (input, line, message) in &inputs {
        let shown = String::from_utf8_lossy(input);
        for (config, extra) in [(&config, &["--force"][..]), (&fresh_config, &[][..])] {
            let out = run("import", config, extra, input);
            let err = stderr(&out);
            assert_eq!(out.status.code(), Some(65), "{shown}\n{err}");
            assert_eq!(err.lines().count(), 1, "{err}");
            assert!(
                err.starts_with(&format!(
                    "agent-tokens: nothing was imported: line {line}: "
                )),
                "{shown}\n{err}"
            );
            assert!(
                err.contains(message.as_str()),
                "expected {message:?}: {err}"
            );
            assert!(
                !err.contains(&full_token[7..]),
                "a token-like value was echoed: {err}"
            );
        }
        assert_eq!(
            user_lines(&export(&config)),
            user_lines(&before),
            "a refused import changed the store"
        );
        assert!(
            !fresh.path().join("db").exists(),
            "a refused import created the store"
        );
    }
    // Sanity: the unmodified file imports.
    assert!(import(&fresh_config, &[], &valid).status.success());
}

#[tokio::test]
async fn export_and_import_say_plainly_when_the_server_holds_the_store() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path());
    let server = Server::start(&config);
    let expected = format!(
        "agent-tokens: the store at {} is in use (is the server running?)",
        dir.path().join("db").display()
    );
    let out = run("export", &config, &[], b"");
    assert_eq!(out.status.code(), Some(75), "{}", stderr(&out));
    assert_eq!(stderr(&out).trim(), expected);
    assert!(out.stdout.is_empty());
    let out = import(&config, &["--force"], &backup_text(&[user_value("x")]));
    assert_eq!(out.status.code(), Some(75), "{}", stderr(&out));
    assert_eq!(stderr(&out).trim(), expected);
    for command in ["check", "compact"] {
        let out = run(command, &config, &[], b"");
        assert_eq!(out.status.code(), Some(75), "{command}: {}", stderr(&out));
    }
    // A second server on the same store says so in one sentence, not in
    // sled's words.
    let second = std::process::Command::new(env!("CARGO_BIN_EXE_agent-tokens"))
        .args(["serve", "--config", config.to_str().unwrap()])
        .env("RUST_LOG", "warn")
        .output()
        .unwrap();
    assert_eq!(second.status.code(), Some(1));
    assert_eq!(
        stderr(&second).trim(),
        format!(
            "agent-tokens: the store at {} is in use (is another agent-tokens running on it?); every server needs its own storage.path",
            dir.path().join("db").display()
        )
    );
    server.stop();
    // Once stopped, the same export works.
    assert_eq!(export(&config).lines().count(), 1);
}

#[test]
fn export_of_a_missing_store_says_so_and_creates_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path());
    let out = run("export", &config, &[], b"");
    assert_eq!(out.status.code(), Some(66), "{}", stderr(&out));
    assert_eq!(
        stderr(&out).trim(),
        format!(
            "agent-tokens: there is no store at {} (check storage.path)",
            dir.path().join("db").display()
        )
    );
    assert!(!dir.path().join("db").exists());
    // The other offline commands that read a store agree on the exit status.
    for command in ["check", "compact"] {
        let out = run(command, &config, &[], b"");
        assert_eq!(out.status.code(), Some(66), "{command}: {}", stderr(&out));
        assert!(!dir.path().join("db").exists(), "{command} created a store");
    }
}
