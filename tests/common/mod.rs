//! Helpers for tests that run the built binary the way an operator does.

#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::Duration;

pub const BIN: &str = env!("CARGO_BIN_EXE_agent-tokens");
pub const SECRET: &str = "smoke-test-secret-of-at-least-32-bytes";

/// Writes a config (with `extra` TOML appended) whose store lives in `dir/db`.
pub fn write_config_with(dir: &Path, extra: &str) -> PathBuf {
    let secret_file = dir.join("jwt-secret");
    // A trailing newline, as `echo` or `openssl rand -hex` leave it.
    std::fs::write(&secret_file, format!("{SECRET}\n")).unwrap();
    let config = dir.join("agent-tokens.toml");
    // Load tests fire many requests from one address; rate-limit tests opt in.
    let rate_limit = if extra.contains("[rate_limit]") {
        ""
    } else {
        "[rate_limit]\nmanagement_per_minute = 0"
    };
    std::fs::write(
        &config,
        format!(
            r#"
[server]
bind = "127.0.0.1:0"
access_log = true

[storage]
path = "{}"
cache_mb = 8

[jwt]
algorithms = ["HS256"]
hmac_secret_file = "{}"
leeway_secs = 30
user_claim = "sub"
{rate_limit}
{extra}
"#,
            dir.join("db").display(),
            secret_file.display()
        ),
    )
    .unwrap();
    config
}

pub fn write_config(dir: &Path) -> PathBuf {
    write_config_with(dir, "")
}

/// Reads the child's stream on a thread and returns lines as they come.
pub fn lines_of(stream: impl std::io::Read + Send + 'static) -> mpsc::Receiver<String> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stream).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    rx
}

pub fn wait_for_line(rx: &mpsc::Receiver<String>, needle: &str, seen: &mut Vec<String>) -> String {
    loop {
        match rx.recv_timeout(Duration::from_secs(30)) {
            Ok(line) => {
                seen.push(line.clone());
                if line.contains(needle) {
                    return line;
                }
            }
            Err(_) => panic!("no line containing {needle:?}; saw {seen:#?}"),
        }
    }
}

pub fn port_from(line: &str) -> u16 {
    line.split("listening on port ")
        .nth(1)
        .and_then(|s| s.split_whitespace().next())
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no port in {line:?}"))
}

/// A running server process; killed if the test panics.
pub struct Server {
    pub child: Child,
    pub port: u16,
    pub log: mpsc::Receiver<String>,
}

impl Server {
    pub fn start(config: &Path) -> Server {
        Self::start_with_env(config, &[])
    }

    /// [`Server::start`] with extra environment (`AGENT_TOKENS__...` overrides).
    pub fn start_with_env(config: &Path, env: &[(&str, &str)]) -> Server {
        let mut child = Command::new(BIN)
            .args(["serve", "--config"])
            .arg(config)
            .envs(env.iter().copied())
            .env("RUST_LOG", "info")
            .env_remove("AGENT_TOKENS__SERVER__BIND")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let log = lines_of(child.stderr.take().unwrap());
        let port = port_from(&wait_for_line(&log, "listening on port", &mut Vec::new()));
        Server { child, port, log }
    }

    pub fn base(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    pub fn signal(&self, name: &str) {
        let status = Command::new("kill")
            .args([&format!("-{name}"), &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
    }

    /// Waits up to `secs` for the process to exit.
    pub fn wait_exit(&mut self, secs: u64) -> ExitStatus {
        for _ in 0..secs * 20 {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        panic!("the server did not exit within {secs} s");
    }

    pub fn terminate(&mut self) -> ExitStatus {
        self.signal("TERM");
        self.wait_exit(15)
    }

    /// Everything logged so far.
    pub fn drain_log(&self) -> Vec<String> {
        let mut out = Vec::new();
        while let Ok(line) = self.log.recv_timeout(Duration::from_millis(200)) {
            out.push(line);
        }
        out
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn hs256_jwt(sub: &str) -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    jsonwebtoken::encode(
        &jsonwebtoken::Header::default(),
        &serde_json::json!({"sub": sub, "exp": now + 600}),
        &jsonwebtoken::EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .unwrap()
}

/// Sends one request with a bearer credential; returns the status and the
/// JSON body (`Null` when there is none).
pub async fn call(
    client: &reqwest::Client,
    method: reqwest::Method,
    url: &str,
    bearer: &str,
) -> (u16, serde_json::Value) {
    let resp = client
        .request(method, url)
        .bearer_auth(bearer)
        .send()
        .await
        .unwrap();
    let status = resp.status().as_u16();
    let body = resp.json().await.unwrap_or(serde_json::Value::Null);
    (status, body)
}

/// The repository's root, for the files tests read from it.
pub fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// A finished command's status and both outputs, for assertion messages.
pub fn output_text(out: &std::process::Output) -> String {
    format!(
        "status {:?}\n--- stdout\n{}\n--- stderr\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}
