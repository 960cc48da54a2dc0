//! The gateway recipes run for real: nginx (`gateway/nginx.conf`,
//! `gateway/nginx-per-user-limit.conf`) on loopback in front of a backend
//! that echoes the headers it receives, asking the real app about every
//! request. Caddy's recipe is in `caddy.rs`, with the same backend.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::helpers::*;

const NGINX: &str = "/usr/sbin/nginx";

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

pub fn recipe(name: &str) -> String {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("gateway")
        .join(name);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Replaces `from` in a recipe, asserting it is there (so a renamed address
/// fails the test instead of leaving the recipe pointed elsewhere).
pub fn point(recipe: String, from: &str, to: &str) -> String {
    assert!(recipe.contains(from), "the recipe no longer has {from}");
    recipe.replace(from, to)
}

/// A backend that answers every request with the request's header lines,
/// one `name: value` per line (names lowercased), so a test sees exactly
/// what the gateway passed on.
pub struct EchoBackend {
    pub port: u16,
    /// The head (request line and headers) of every request received.
    pub requests: Arc<Mutex<Vec<String>>>,
    stop: Arc<AtomicBool>,
}

impl EchoBackend {
    pub fn start() -> EchoBackend {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let stop = Arc::new(AtomicBool::new(false));
        let stopped = stop.clone();
        let requests = Arc::new(Mutex::new(Vec::new()));
        let seen = requests.clone();
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                if stopped.load(Ordering::SeqCst) {
                    break;
                }
                if let Ok(conn) = conn {
                    let seen = seen.clone();
                    std::thread::spawn(move || echo_headers(conn, &seen));
                }
            }
        });
        EchoBackend {
            port,
            requests,
            stop,
        }
    }
}

impl Drop for EchoBackend {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wakes the accept loop so it sees the flag.
        let _ = TcpStream::connect(("127.0.0.1", self.port));
    }
}

/// Serves requests on one connection until the peer closes it.
fn echo_headers(mut conn: TcpStream, seen: &Mutex<Vec<String>>) {
    let _ = conn.set_read_timeout(Some(Duration::from_secs(30)));
    let mut buf = Vec::new();
    let mut chunk = [0u8; 8192];
    loop {
        let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
            match conn.read(&mut chunk) {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
            continue;
        };
        let head = String::from_utf8_lossy(&buf[..end]).into_owned();
        buf.drain(..end + 4);
        seen.lock().unwrap().push(head.clone());
        let mut body = String::new();
        let mut length = 0usize;
        for line in head.lines().skip(1) {
            if let Some((name, value)) = line.split_once(':') {
                let name = name.trim().to_ascii_lowercase();
                if name == "content-length" {
                    length = value.trim().parse().unwrap_or(0);
                }
                body.push_str(&format!("{name}: {}\n", value.trim()));
            }
        }
        // The gateways here send no request bodies upstream; skip any anyway.
        while buf.len() < length {
            match conn.read(&mut chunk) {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        }
        buf.drain(..length);
        let answer = format!(
            "HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: {}\r\n\r\n{body}",
            body.len()
        );
        if conn.write_all(answer.as_bytes()).is_err() {
            return;
        }
    }
}

/// Every value of `name` (lowercase) the echo backend reported.
pub fn echoed(body: &str, name: &str) -> Vec<String> {
    body.lines()
        .filter_map(|l| l.split_once(": "))
        .filter(|(n, _)| *n == name)
        .map(|(_, v)| v.to_owned())
        .collect()
}

/// A gateway process started in its own process group, so that dropping it
/// kills its workers too; waits until the whole group is gone.
pub struct Gateway {
    child: Child,
    pub port: u16,
    _dir: tempfile::TempDir,
    log: PathBuf,
}

impl Gateway {
    /// Spawns `command` in a new process group, stdout and stderr to `dir/error.log`,
    /// and waits until `port` accepts connections.
    pub fn spawn(mut command: Command, port: u16, dir: tempfile::TempDir) -> Gateway {
        use std::os::unix::process::CommandExt;
        let log = dir.path().join("error.log");
        let stderr = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .unwrap();
        let child = command
            .process_group(0)
            .stdin(Stdio::null())
            .stdout(stderr.try_clone().unwrap())
            .stderr(stderr)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {command:?}: {e}"));
        let mut gateway = Gateway {
            child,
            port,
            _dir: dir,
            log,
        };
        // Generous: a Python server imports its framework first, on a busy host.
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if TcpStream::connect(("127.0.0.1", port)).is_ok() {
                return gateway;
            }
            if let Ok(Some(status)) = gateway.child.try_wait() {
                panic!("the gateway exited ({status}): {}", gateway.log());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("the gateway did not listen in 30 s: {}", gateway.log());
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        let group = self.child.id() as libc::pid_t;
        // SAFETY: signals the process group this struct created and owns.
        unsafe { libc::kill(-group, libc::SIGKILL) };
        let _ = self.child.wait();
        // Workers are not our children: wait until none is left in the group.
        let deadline = Instant::now() + Duration::from_secs(5);
        // SAFETY: signal 0 only asks whether the group still has members.
        while unsafe { libc::kill(-group, 0) } == 0 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// Starts nginx with a recipe from `gateway/`, its addresses pointed at the
/// test's ports: agent-tokens, the echo backend, and (for recipes with an
/// inner server) `extra` replacements.
fn start_nginx(
    file: &str,
    agent_tokens_port: u16,
    backend: u16,
    extra: &[(&str, String)],
) -> Gateway {
    let front = free_port();
    let mut text = recipe(file);
    text = point(
        text,
        "127.0.0.1:8080",
        &format!("127.0.0.1:{agent_tokens_port}"),
    );
    text = point(text, "127.0.0.1:3000", &format!("127.0.0.1:{backend}"));
    text = point(text, "listen 80;", &format!("listen 127.0.0.1:{front};"));
    for (from, to) in extra {
        text = point(text, from, to);
    }
    start_nginx_text(&text, front)
}

/// Starts nginx with `recipe` (already pointed at the test's ports) in the
/// `http {}` context; `front` is the port it listens on.
pub fn start_nginx_text(recipe: &str, front: u16) -> Gateway {
    assert!(
        Path::new(NGINX).exists(),
        "nginx is not installed: run ./scripts/test.sh, which installs Debian's nginx-light"
    );
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().display();
    std::fs::write(dir.path().join("recipe.conf"), recipe).unwrap();
    let conf = format!(
        r#"{user}
daemon off;
worker_processes 1;
pid {d}/nginx.pid;
error_log {d}/error.log warn;
events {{ worker_connections 512; }}
http {{
    access_log off;
    client_body_temp_path {d}/client_body;
    proxy_temp_path {d}/proxy;
    fastcgi_temp_path {d}/fastcgi;
    uwsgi_temp_path {d}/uwsgi;
    scgi_temp_path {d}/scgi;
    include {d}/recipe.conf;
}}
"#,
        user = if is_root() { "user root;" } else { "" },
    );
    let conf_path = dir.path().join("nginx.conf");
    std::fs::write(&conf_path, conf).unwrap();
    let mut command = Command::new(NGINX);
    command.arg("-p").arg(dir.path()).arg("-c").arg(&conf_path);
    Gateway::spawn(command, front, dir)
}

/// A token with one hex digit changed (fails its checksum).
pub fn flipped(token: &str) -> String {
    let mut flipped = token.to_owned();
    flipped.replace_range(20..21, if &token[20..21] == "0" { "1" } else { "0" });
    flipped
}

/// Asserts a valid token reaches the backend as exactly its user, with or
/// without a client-sent id, and missing, bad, user-JWT and just-revoked
/// credentials get 401 without reaching it.
pub async fn assert_gateway_passes_only_verified_users(
    app: &TestApp,
    front: u16,
    log: impl Fn() -> String,
) {
    let jwt = user_jwt("alice");
    let token = app.new_token(&jwt).await;
    let client = reqwest::Client::new();
    let url = format!("http://127.0.0.1:{front}/api/orders?access_token=not-for-verify");

    for forged in [None, Some("mallory"), Some("alice"), Some("")] {
        for _ in 0..2 {
            let mut req = client.get(&url).bearer_auth(&token);
            if let Some(id) = forged {
                req = req.header("X-Agent-User-Id", id);
            }
            let resp = req.send().await.unwrap();
            assert_eq!(resp.status().as_u16(), 200, "{}", log());
            let body = resp.text().await.unwrap();
            assert_eq!(echoed(&body, "x-agent-user-id"), ["alice"], "{body}");
        }
    }

    // A client-sent id without a token (or with a bad one) never gets through.
    let resp = client
        .get(&url)
        .header("X-Agent-User-Id", "alice")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 401, "{}", log());
    assert!(!resp.text().await.unwrap().contains("x-agent-user-id"));
    for credential in [flipped(&token).as_str(), "sk_agt_garbage", jwt.as_str()] {
        let resp = client
            .get(&url)
            .bearer_auth(credential)
            .header("X-Agent-User-Id", "alice")
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status().as_u16(), 401, "for {}", &credential[..10]);
        assert!(!resp.text().await.unwrap().contains("x-agent-user-id"));
    }

    // Revocation is seen by the very next request through the gateway.
    app.revoke(&jwt).await;
    let resp = client.get(&url).bearer_auth(&token).send().await.unwrap();
    assert_eq!(resp.status().as_u16(), 401, "{}", log());
    assert!(!resp.text().await.unwrap().contains("x-agent-user-id"));
}

#[tokio::test]
async fn nginx_auth_request_passes_valid_tokens_with_the_user_id_and_refuses_the_rest() {
    let app = spawn_app().await;
    let backend = EchoBackend::start();
    let nginx = start_nginx("nginx.conf", app.port, backend.port, &[]);
    assert_gateway_passes_only_verified_users(&app, nginx.port, || nginx.log()).await;
    assert!(
        !nginx.log().contains("auth request unexpected status"),
        "{}",
        nginx.log()
    );
}

/// Sends `count` extra headers with the request.
async fn with_many_headers(url: &str, token: Option<&str>, count: usize) -> (u16, String) {
    let mut req = reqwest::Client::new().get(url);
    for i in 0..count {
        req = req.header(format!("X-Padding-{i}"), "x");
    }
    if let Some(token) = token {
        req = req.bearer_auth(token);
    }
    let resp = req.send().await.unwrap();
    (resp.status().as_u16(), resp.text().await.unwrap())
}

#[tokio::test]
async fn nginx_sends_verify_only_what_it_needs_so_many_headers_never_give_500() {
    let app = spawn_app().await;
    let token = app.new_token(&user_jwt("alice")).await;
    let backend = EchoBackend::start();
    let nginx = start_nginx("nginx.conf", app.port, backend.port, &[]);
    let url = format!("http://127.0.0.1:{}/api/orders", nginx.port);
    // verify itself refuses a request with this many headers (431).
    let (status, body) = with_many_headers(&url, Some(&token), 150).await;
    assert_eq!(status, 200, "{body}\n{}", nginx.log());
    assert_eq!(echoed(&body, "x-agent-user-id"), ["alice"]);
    assert_eq!(
        echoed(&body, "x-padding-149"),
        ["x"],
        "the backend gets them all"
    );
    let (status, _) = with_many_headers(&url, None, 150).await;
    assert_eq!(status, 401, "{}", nginx.log());
    let (status, _) = with_many_headers(&url, Some("sk_agt_garbage"), 150).await;
    assert_eq!(status, 401, "{}", nginx.log());
}

#[tokio::test]
async fn nginx_per_user_limit_throttles_one_user_and_not_another() {
    let app = spawn_app().await;
    let alice = app.new_token(&user_jwt("alice")).await;
    let bob = app.new_token(&user_jwt("bob")).await;
    let backend = EchoBackend::start();
    let inner = free_port();
    let nginx = start_nginx(
        "nginx-per-user-limit.conf",
        app.port,
        backend.port,
        &[("127.0.0.1:8081", format!("127.0.0.1:{inner}"))],
    );
    let client = reqwest::Client::new();
    let url = format!("http://127.0.0.1:{}/api/orders", nginx.port);

    // The recipe's burst is 20 at 10 a second: 60 requests at once overrun it.
    let started = Instant::now();
    let answers = futures::future::join_all((0..60).map(|_| async {
        let resp = client
            .get(&url)
            .bearer_auth(&alice)
            .header("X-Agent-User-Id", "bob")
            .send()
            .await
            .unwrap();
        let status = resp.status().as_u16();
        (status, resp.text().await.unwrap())
    }))
    .await;
    let elapsed = started.elapsed().as_secs_f64();
    let mut statuses = Vec::new();
    for (status, body) in answers {
        if status == 200 {
            assert_eq!(echoed(&body, "x-agent-user-id"), ["alice"], "{body}");
        } else {
            assert!(!body.contains("x-agent-user-id"), "{body}");
        }
        statuses.push(status);
    }
    let limited = statuses.iter().filter(|&&s| s == 429).count();
    let passed = statuses.iter().filter(|&&s| s == 200).count();
    assert_eq!(limited + passed, 60, "only 200 or 429: {statuses:?}");
    assert!(passed >= 20, "the burst passes: {statuses:?}");
    // At most the burst plus what the rate refilled meanwhile gets through.
    let allowed = 21 + (10.0 * elapsed).ceil() as usize;
    assert!(
        limited >= 1 && passed <= allowed,
        "alice is limited: {passed} passed in {elapsed:.1} s: {statuses:?}\n{}",
        nginx.log()
    );

    // bob is not affected by alice's limit.
    for _ in 0..10 {
        let resp = client.get(&url).bearer_auth(&bob).send().await.unwrap();
        assert_eq!(resp.status().as_u16(), 200, "{}", nginx.log());
        let body = resp.text().await.unwrap();
        assert_eq!(echoed(&body, "x-agent-user-id"), ["bob"], "{body}");
    }
    // Unauthenticated requests still get 401, not 429, and never a limit slot.
    let resp = client
        .get(&url)
        .bearer_auth("sk_agt_garbage")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 401);
}
