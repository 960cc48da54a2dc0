//! Helpers for tests that run the built binary the way an operator does.

#![allow(dead_code)]

pub mod pg;

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::mpsc;
use std::time::Duration;

pub const BIN: &str = env!("CARGO_BIN_EXE_agent-tokens");
/// The HS256 key of every test's user JWTs.
pub const SECRET: &str = "test-secret-that-is-at-least-32-bytes-long!";

/// A test's configuration: TOML sections of typed values, written out
/// whole with the store's path. A test starts from a constructor and adds
/// what it needs with [`TestConfig::set`] or a TOML fragment
/// ([`TestConfig::with`]).
#[derive(Clone, Debug, Default)]
pub struct TestConfig {
    sections: toml::Table,
}

impl TestConfig {
    /// User JWTs signed with HS256 and [`SECRET`], given inline.
    pub fn hs256() -> Self {
        Self::default()
            .set("jwt", "algorithms", vec!["HS256"])
            .set("jwt", "hmac_secret", SECRET)
    }

    /// The `[jwt]` section from TOML lines, e.g. `algorithms = ["RS256"]`.
    pub fn jwt(lines: &str) -> Self {
        Self::default().with(&format!("[jwt]\n{lines}"))
    }

    /// What the binary is served with by an operator: HS256 with the secret
    /// in `dir/jwt-secret` (a trailing newline, as `echo` leaves it), and
    /// the access log on.
    pub fn served(dir: &Path) -> Self {
        let secret_file = dir.join("jwt-secret");
        std::fs::write(&secret_file, format!("{SECRET}\n")).unwrap();
        Self::default()
            .set("server", "access_log", true)
            .set("jwt", "algorithms", vec!["HS256"])
            .set("jwt", "hmac_secret_file", secret_file.display().to_string())
            .set("jwt", "leeway_secs", 30)
            .set("jwt", "user_claim", "sub")
    }

    /// Sets `key` of `[section]`.
    pub fn set(mut self, section: &str, key: &str, value: impl Into<toml::Value>) -> Self {
        self.section(section).insert(key.to_owned(), value.into());
        self
    }

    /// Sets `key` of `[section]` unless the test did.
    pub fn or_set(mut self, section: &str, key: &str, value: impl Into<toml::Value>) -> Self {
        self.section(section)
            .entry(key.to_owned())
            .or_insert_with(|| value.into());
        self
    }

    /// Adds the keys of a TOML fragment's sections (`[limits]\nkeep_alive_secs = 1`).
    pub fn with(mut self, fragment: &str) -> Self {
        let parsed: toml::Table = toml::from_str(fragment)
            .unwrap_or_else(|e| panic!("a test's TOML does not parse: {e}\n{fragment}"));
        for (name, value) in parsed {
            let toml::Value::Table(keys) = value else {
                panic!("{name} is not a section");
            };
            self.section(&name).extend(keys);
        }
        self
    }

    /// Whether the test configures `[section]` itself.
    pub fn has(&self, section: &str) -> bool {
        self.sections.contains_key(section)
    }

    fn section(&mut self, name: &str) -> &mut toml::Table {
        let entry = self
            .sections
            .entry(name.to_owned())
            .or_insert_with(|| toml::Value::Table(toml::Table::new()));
        match entry {
            toml::Value::Table(table) => table,
            _ => panic!("{name} is not a section"),
        }
    }

    /// The whole file, with the store in `store`, listening on a free
    /// loopback port. The management rate limit is off unless the test
    /// configures `[rate_limit]`: tests fire many requests from one address.
    pub fn to_toml(&self, store: &Path) -> String {
        let mut config = self
            .clone()
            .set("server", "bind", "127.0.0.1:0")
            .set("storage", "path", store.display().to_string())
            .set("storage", "cache_mb", 8);
        if !self.has("rate_limit") {
            config = config.set("rate_limit", "management_per_minute", 0);
        }
        let mut out = String::new();
        for (name, keys) in &config.sections {
            out.push_str(&format!("[{name}]\n"));
            if let toml::Value::Table(keys) = keys {
                for (key, value) in keys {
                    out.push_str(&format!("{} = {}\n", toml_key(key), toml_literal(value)));
                }
            }
        }
        out
    }

    /// Writes `dir/agent-tokens.toml`, with the store in `dir/db`.
    pub fn write(&self, dir: &Path) -> PathBuf {
        let path = dir.join("agent-tokens.toml");
        std::fs::write(&path, self.to_toml(&dir.join("db"))).unwrap();
        path
    }
}

fn toml_key(key: &str) -> String {
    if !key.is_empty()
        && key
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
    {
        key.to_owned()
    } else {
        toml_literal(&toml::Value::String(key.to_owned()))
    }
}

/// A value as TOML (a JSON string is a valid TOML basic string).
fn toml_literal(value: &toml::Value) -> String {
    match value {
        toml::Value::String(s) => serde_json::to_string(s).unwrap(),
        toml::Value::Integer(i) => i.to_string(),
        toml::Value::Float(f) => format!("{f:?}"),
        toml::Value::Boolean(b) => b.to_string(),
        toml::Value::Datetime(d) => d.to_string(),
        toml::Value::Array(items) => {
            let items: Vec<String> = items.iter().map(toml_literal).collect();
            format!("[{}]", items.join(", "))
        }
        toml::Value::Table(keys) => {
            let keys: Vec<String> = keys
                .iter()
                .map(|(k, v)| format!("{} = {}", toml_key(k), toml_literal(v)))
                .collect();
            format!("{{{}}}", keys.join(", "))
        }
    }
}

/// Writes the config an operator would serve with (plus a TOML fragment)
/// into `dir`, its store in `dir/db`.
pub fn write_config_with(dir: &Path, extra: &str) -> PathBuf {
    TestConfig::served(dir).with(extra).write(dir)
}

pub fn write_config(dir: &Path) -> PathBuf {
    write_config_with(dir, "")
}

/// Runs `agent-tokens <command> --config <config> [extra]` with `input` on stdin.
pub fn run(command: &str, config: &Path, extra: &[&str], input: &[u8]) -> Output {
    let mut child = Command::new(BIN)
        .arg(command)
        .arg("--config")
        .arg(config)
        .args(extra)
        .env("RUST_LOG", "warn")
        .env_remove("AGENT_TOKENS__STORAGE__PATH")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let input = input.to_vec();
    // The import may stop reading early on a bad line: ignore a broken pipe.
    let writer = std::thread::spawn(move || {
        let _ = stdin.write_all(&input);
    });
    let out = child.wait_with_output().unwrap();
    writer.join().unwrap();
    out
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
            .env_remove("AGENT_TOKENS__STORAGE__PATH")
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

    /// SIGTERM, as systemd stops it, and a clean exit.
    pub fn stop(mut self) {
        let status = self.terminate();
        assert!(status.success(), "the server exited with {status:?}");
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
