//! The built binary, run the way an operator runs it.

mod common;

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::*;
use reqwest::Method;
use serde_json::Value;

fn terminate(child: &mut Child) -> std::process::ExitStatus {
    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    for _ in 0..200 {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    child.kill().unwrap();
    panic!("the server did not stop within 10 s of SIGTERM");
}

#[tokio::test]
async fn the_binary_serves_the_api_from_a_real_config_file_and_stops_cleanly_on_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path());
    let mut server = Server::start(&config);
    let base = server.base();
    let client = reqwest::Client::new();
    let jwt = hs256_jwt("smoke-user");
    let get_or_create = format!("{base}/api/agent-tokens/me/get-or-create");

    let (_, created) = call(&client, Method::POST, &get_or_create, &jwt).await;
    assert_eq!(created["is_new"], true);
    let token = created["token"].as_str().unwrap().to_owned();
    let (_, status) = call(
        &client,
        Method::GET,
        &format!("{base}/api/agent-tokens/me"),
        &jwt,
    )
    .await;
    assert_eq!(status["token_prefix"], created["token_prefix"]);
    // POST /me twice: a creation, then a rotation, each logged as what it is.
    let other = hs256_jwt("smoke user 2");
    let me = format!("{base}/api/agent-tokens/me");
    let (_, first) = call(&client, Method::POST, &me, &other).await;
    let (_, second) = call(&client, Method::POST, &me, &other).await;

    let exit = server.terminate();
    assert!(exit.success(), "exit status {exit:?}");
    // Access lines were written, without secrets.
    let log = server.drain_log().join("\n");
    assert!(
        log.contains("\"POST /api/agent-tokens/me/get-or-create HTTP/1.1\" 200"),
        "{log}"
    );
    assert!(!log.contains(&jwt), "the JWT reached the log");
    assert!(!log.contains(&token[15..]), "the token reached the log");
    assert!(!log.contains(SECRET), "the HMAC secret reached the log");
    for t in [&first, &second] {
        let t = t["token"].as_str().unwrap();
        assert!(!log.contains(&t[15..]), "the token reached the log");
    }
    assert!(
        log.contains(&format!(
            "created an agent token for user \"smoke-user\" ({})",
            created["token_prefix"].as_str().unwrap()
        )),
        "{log}"
    );
    assert!(
        log.contains(&format!(
            "created an agent token for user \"smoke user 2\" ({})",
            first["token_prefix"].as_str().unwrap()
        )),
        "{log}"
    );
    assert!(
        log.contains(&format!(
            "rotated the agent token of user \"smoke user 2\" (now {})",
            second["token_prefix"].as_str().unwrap()
        )),
        "{log}"
    );
    assert!(!log.contains("UserId("), "{log}");

    // Restarted on the same data, the token is still there.
    let mut server = Server::start(&config);
    let get_or_create = format!("{}/api/agent-tokens/me/get-or-create", server.base());
    let (_, again) = call(&client, Method::POST, &get_or_create, &jwt).await;
    assert_eq!(again["is_new"], false);
    assert_eq!(again["token_prefix"], created["token_prefix"]);
    assert!(server.terminate().success());
}

#[tokio::test]
async fn last_used_survives_a_graceful_stop() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path());
    let mut server = Server::start(&config);
    let base = server.base();
    let client = reqwest::Client::new();
    let jwt = hs256_jwt("stamped");
    let (_, rotated) = call(
        &client,
        Method::POST,
        &format!("{base}/api/agent-tokens/me"),
        &jwt,
    )
    .await;
    let token = rotated["token"].as_str().unwrap().to_owned();
    let (status, _) = call(
        &client,
        Method::GET,
        &format!("{base}/api/agent-tokens/verify"),
        &token,
    )
    .await;
    assert_eq!(status, 200);
    let (_, before) = call(
        &client,
        Method::GET,
        &format!("{base}/api/agent-tokens/me"),
        &jwt,
    )
    .await;
    assert!(before["last_used_at"].is_string(), "{before}");
    // Still in memory (written every 10 s): the stop writes it.
    assert!(server.terminate().success());

    let mut server = Server::start(&config);
    let me = format!("{}/api/agent-tokens/me", server.base());
    let (_, after) = call(&client, Method::GET, &me, &jwt).await;
    assert_eq!(after["last_used_at"], before["last_used_at"]);
    assert_eq!(after["token_prefix"], before["token_prefix"]);
    assert!(server.terminate().success());
}

/// `serve --dev` with extra arguments: the child, the base URL, the
/// printed JWT and everything printed up to the curl line.
fn start_dev(extra: &[&str], envs: &[(&str, &str)]) -> (Child, String, String, String) {
    let mut child = Command::new(BIN)
        .args(["serve", "--dev"])
        .args(extra)
        .envs(envs.iter().copied())
        .env("AGENT_TOKENS__SERVER__BIND", "127.0.0.1:0")
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = lines_of(child.stdout.take().unwrap());
    let mut seen = Vec::new();
    let banner = wait_for_line(&stdout, "Listening on:", &mut seen);
    let base = banner
        .split("Listening on:")
        .nth(1)
        .unwrap()
        .trim()
        .to_owned();
    let curl = wait_for_line(&stdout, "curl -s -X POST", &mut seen);
    let jwt = curl
        .split("Bearer ")
        .nth(1)
        .unwrap()
        .trim_end_matches('"')
        .to_owned();
    assert!(curl.contains(&format!("{base}/api/agent-tokens/me/get-or-create")));
    (child, base, jwt, seen.join("\n"))
}

#[tokio::test]
async fn dev_mode_prints_a_working_jwt_and_curl_line_and_honours_the_environment() {
    let (mut child, base, jwt, text) = start_dev(&[], &[]);
    assert!(text.contains("DEV MODE"), "{text}");
    assert!(text.contains("Do not use it in production"), "{text}");

    let created: Value = reqwest::Client::new()
        .post(format!("{base}/api/agent-tokens/me/get-or-create"))
        .bearer_auth(&jwt)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(created["is_new"], true, "{created}");
    let data_dir = text
        .lines()
        .find_map(|l| l.split("Data directory:").nth(1))
        .map(|s| std::path::PathBuf::from(s.trim()))
        .unwrap();
    assert!(data_dir.exists());
    assert!(terminate(&mut child).success());
    assert!(
        !data_dir.exists(),
        "the throw-away directory is removed on exit"
    );
}

/// A production config file next to `--dev` (the README's own example):
/// the dev secret takes over the file's key material instead of clashing
/// with it, and the file's issuer and audience still apply (the printed
/// JWT carries them).
#[tokio::test]
async fn dev_mode_takes_over_the_key_of_a_real_config_file() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("agent-tokens.toml");
    std::fs::write(
        &config,
        format!(
            "[storage]\npath = \"{}\"\n[jwt]\nalgorithms = [\"RS256\"]\npublic_key_file = \"{}\"\nhmac_secret_file = \"/nonexistent/secret\"\nissuer = \"https://issuer.example\"\naudience = \"agent-tokens\"\n",
            dir.path().join("db").display(),
            dir.path().join("missing.pem").display(),
        ),
    )
    .unwrap();
    let (mut child, base, jwt, _) = start_dev(&["--config", config.to_str().unwrap()], &[]);
    let client = reqwest::Client::new();
    let (status, created) = call(
        &client,
        Method::POST,
        &format!("{base}/api/agent-tokens/me/get-or-create"),
        &jwt,
    )
    .await;
    assert_eq!(status, 200, "{created}");
    assert_eq!(created["is_new"], true, "{created}");
    // The printed JWT was made for the file's issuer and audience.
    use base64::Engine as _;
    let payload = jwt.split('.').nth(1).unwrap();
    let claims: Value = serde_json::from_slice(
        &base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(payload)
            .unwrap(),
    )
    .unwrap();
    assert_eq!(claims["iss"], "https://issuer.example", "{claims}");
    assert_eq!(claims["aud"], "agent-tokens", "{claims}");
    assert!(terminate(&mut child).success());
    assert!(
        !dir.path().join("db").exists(),
        "dev mode never writes the file's store"
    );
}

#[test]
fn check_config_accepts_a_good_file_with_a_one_line_summary() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path());
    let out = Command::new(BIN)
        .args(["check-config", "--config"])
        .arg(&config)
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let stdout = String::from_utf8(out.stdout).unwrap();
    assert_eq!(stdout.lines().count(), 1, "{stdout}");
    assert!(stdout.starts_with("config OK"), "{stdout}");
    assert!(!stdout.contains(SECRET));
}

#[test]
fn check_config_names_the_bad_key_in_one_sentence_and_exits_non_zero() {
    let dir = tempfile::tempdir().unwrap();
    let cases = [
        (
            "[server]\nbnid = \"x\"\n",
            "Unknown config key server.bnid.",
        ),
        (
            "[jwt]\nhmac_secret = \"short\"\n",
            "jwt.hmac_secret must be at least 32 bytes long.",
        ),
        (
            "[jwt]\nalgorithms = [\"RS256\"]\nhmac_secret = \"0123456789abcdef0123456789abcdef\"\n",
            "jwt.hmac_secret is set but jwt.algorithms lists no HS256, HS384 or HS512.",
        ),
        (
            "[jwt]\nalgorithms = [\"none\"]\n",
            "jwt.algorithms lists \"none\"",
        ),
    ];
    for (toml, expected) in cases {
        let file = dir.path().join("bad.toml");
        std::fs::write(&file, toml).unwrap();
        let out = Command::new(BIN)
            .args(["check-config", "--config"])
            .arg(&file)
            .output()
            .unwrap();
        assert!(!out.status.success(), "{toml}");
        let stderr = String::from_utf8(out.stderr).unwrap();
        assert_eq!(stderr.lines().count(), 1, "{stderr}");
        assert!(stderr.contains(expected), "{toml}: {stderr}");
        assert!(!stderr.contains("panicked"), "{stderr}");
        assert!(!stderr.contains("short"), "secret echoed: {stderr}");
    }
}

#[test]
fn a_public_key_without_audience_is_refused_unless_opted_out_with_a_warning() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("rs256.toml");
    let base = format!(
        "[server]\nbind = \"127.0.0.1:0\"\n[storage]\npath = \"{}\"\n[jwt]\nalgorithms = [\"RS256\"]\npublic_key_file = \"{}\"\n",
        dir.path().join("db").display(),
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures/rsa_public.pem")
            .display()
    );
    std::fs::write(&file, &base).unwrap();
    let sentence = "jwt.audience is required with jwt.public_key_file (the issuer's tokens for other applications would pass): set it to the aud your application's tokens carry, or set jwt.require_audience = false to accept any audience.";
    for command in ["check-config", "serve"] {
        let out = Command::new(BIN)
            .args([command, "--config"])
            .arg(&file)
            .output()
            .unwrap();
        assert!(!out.status.success(), "{command}");
        let stderr = String::from_utf8(out.stderr).unwrap();
        assert_eq!(stderr.lines().count(), 1, "{command}: {stderr}");
        assert!(stderr.contains(sentence), "{command}: {stderr}");
    }
    std::fs::write(&file, format!("{base}require_audience = false\n")).unwrap();
    let out = Command::new(BIN)
        .args(["check-config", "--config"])
        .arg(&file)
        .output()
        .unwrap();
    assert!(out.status.success());
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert!(
        stderr.contains("WARN") && stderr.contains("jwt.require_audience = false"),
        "{stderr}"
    );
    std::fs::write(&file, format!("{base}audience = \"my-app\"\n")).unwrap();
    let out = Command::new(BIN)
        .args(["check-config", "--config"])
        .arg(&file)
        .output()
        .unwrap();
    assert!(out.status.success());
    assert!(!String::from_utf8(out.stderr).unwrap().contains("WARN"));
}

#[test]
fn serve_refuses_to_start_without_a_key_and_says_why() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("nokey.toml");
    std::fs::write(
        &file,
        format!(
            "[storage]\npath = \"{}\"\n",
            dir.path().join("db").display()
        ),
    )
    .unwrap();
    let out = Command::new(BIN)
        .args(["serve", "--config"])
        .arg(&file)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert!(stderr.contains("No JWT key is configured"), "{stderr}");
}

#[test]
fn version_and_help_work() {
    let out = Command::new(BIN).arg("--version").output().unwrap();
    assert!(out.status.success());
    assert!(String::from_utf8(out.stdout)
        .unwrap()
        .starts_with("agent-tokens "));
    let out = Command::new(BIN).arg("--help").output().unwrap();
    assert!(out.status.success());
    let help = String::from_utf8(out.stdout).unwrap();
    assert!(
        help.contains("serve") && help.contains("check-config"),
        "{help}"
    );
}

#[test]
fn under_systemd_it_notifies_ready_once_serving_and_stopping_on_sigterm() {
    use std::os::unix::net::UnixDatagram;
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path());
    let socket_path = dir.path().join("notify.sock");
    let socket = UnixDatagram::bind(&socket_path).unwrap();
    socket
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let mut child = Command::new(BIN)
        .args(["serve", "--config"])
        .arg(&config)
        .env("NOTIFY_SOCKET", &socket_path)
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let log = lines_of(child.stderr.take().unwrap());
    let mut buf = [0u8; 256];
    // A signal to the test process (the test harness's own) may interrupt
    // the read: that is not the server's doing, so read again.
    let recv = |buf: &mut [u8]| loop {
        match socket.recv(buf) {
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            other => break other.unwrap(),
        }
    };
    let n = recv(&mut buf);
    let message = String::from_utf8_lossy(&buf[..n]).to_string();
    assert!(message.contains("READY=1"), "{message}");
    // Ready means serving: the port is already bound and answers.
    let port = port_from(&wait_for_line(&log, "listening on port", &mut Vec::new()));
    let health = std::net::TcpStream::connect(("127.0.0.1", port));
    assert!(health.is_ok());
    let status = terminate(&mut child);
    assert!(status.success());
    let n = recv(&mut buf);
    let message = String::from_utf8_lossy(&buf[..n]).to_string();
    assert!(message.contains("STOPPING=1"), "{message}");
}

/// The HTTP worker threads `server.workers` asks for, and one per CPU
/// without it (actix names every worker thread `actix-rt|system:…`).
#[test]
fn server_workers_sets_the_number_of_http_worker_threads() {
    let http_workers = |pid: u32| {
        std::fs::read_dir(format!("/proc/{pid}/task"))
            .unwrap()
            .filter(|task| {
                let comm = task.as_ref().unwrap().path().join("comm");
                std::fs::read_to_string(comm)
                    .unwrap_or_default()
                    .starts_with("actix-rt|system")
            })
            .count()
    };
    let cpus = std::thread::available_parallelism().unwrap().get();
    for (setting, expected) in [("3", 3), ("0", cpus)] {
        let (mut child, ..) = start_dev(&[], &[("AGENT_TOKENS__SERVER__WORKERS", setting)]);
        // Worker threads may still be starting when the banner is printed.
        let mut seen = 0;
        for _ in 0..50 {
            seen = http_workers(child.id());
            if seen == expected {
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        assert_eq!(seen, expected, "server.workers = {setting}");
        assert!(terminate(&mut child).success());
    }
}
