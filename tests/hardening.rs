//! What a hostile client or a careless deployment could get from the real
//! binary: slow connections, secrets in logs, private routes, file modes.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use common::{write_config_with, Server};

/// Sends `request` on a fresh connection and returns the whole answer.
fn exchange(port: u16, request: &str) -> String {
    let mut conn = TcpStream::connect(("127.0.0.1", port)).unwrap();
    conn.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    conn.write_all(request.as_bytes()).unwrap();
    let mut answer = Vec::new();
    let _ = conn.read_to_end(&mut answer);
    String::from_utf8_lossy(&answer).into_owned()
}

#[test]
fn the_access_log_never_shows_a_token_sent_in_the_query_string() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config_with(dir.path(), "");
    let mut server = Server::start(&config);
    let token = format!("sk_agt_{}", "5e".repeat(32));
    let answer = exchange(
        server.port,
        &format!(
            "GET /api/agent-tokens/verify?access_token={token}&x=1 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
        ),
    );
    assert!(answer.starts_with("HTTP/1.1 401"), "{answer}");
    assert!(server.terminate().success());
    let log = server.drain_log().join("\n");
    assert!(
        log.contains("\"GET /api/agent-tokens/verify HTTP/1.1\" 401"),
        "no access-log line for the request: {log}"
    );
    assert!(
        !log.contains(&token[..20]),
        "the token reached the log: {log}"
    );
    assert!(
        !log.contains("access_token"),
        "the query reached the log: {log}"
    );
}

/// Reads one answer (head and `content-length` body) from a kept-alive connection.
fn read_answer(conn: &mut TcpStream) -> String {
    let mut answer = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let text = String::from_utf8_lossy(&answer).into_owned();
        if let Some(end) = text.find("\r\n\r\n") {
            let length = text[..end]
                .lines()
                .find_map(|l| {
                    l.to_ascii_lowercase()
                        .strip_prefix("content-length:")
                        .map(|v| v.trim().parse::<usize>().unwrap())
                })
                .unwrap_or(0);
            if answer.len() >= end + 4 + length {
                return text;
            }
        }
        let n = conn.read(&mut buf).expect("an answer");
        assert!(n > 0, "closed before a whole answer: {text:?}");
        answer.extend_from_slice(&buf[..n]);
    }
}

/// Waits for the server to end the connection: `Some(elapsed)` once it
/// closed it (after a 408 or nothing), `None` if it still held it at `give_up`.
fn closed_within(conn: &mut TcpStream, give_up: Duration) -> Option<Duration> {
    let started = Instant::now();
    conn.set_read_timeout(Some(give_up)).unwrap();
    let mut seen = Vec::new();
    let mut buf = [0u8; 1024];
    loop {
        match conn.read(&mut buf) {
            Ok(0) | Err(_) if started.elapsed() < give_up => break,
            Ok(0) | Err(_) => return None,
            Ok(n) => seen.extend_from_slice(&buf[..n]),
        }
    }
    let seen = String::from_utf8_lossy(&seen);
    assert!(
        seen.is_empty() || seen.starts_with("HTTP/1.1 408"),
        "{seen}"
    );
    Some(started.elapsed())
}

/// A kept-alive connection that has had one whole request answered.
fn after_one_answer(port: u16) -> TcpStream {
    let mut conn = TcpStream::connect(("127.0.0.1", port)).unwrap();
    conn.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    conn.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    let answer = read_answer(&mut conn);
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    conn
}

const SLOW_LIMITS: &str = "[limits]\nclient_request_timeout_ms = 1000\nkeep_alive_secs = 30\n";

#[test]
fn one_byte_of_a_second_request_holds_the_connection_no_longer_than_the_timeout() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&write_config_with(dir.path(), SLOW_LIMITS));
    let mut conn = after_one_answer(server.port);
    conn.write_all(b"G").unwrap();
    let held = closed_within(&mut conn, Duration::from_secs(8));
    assert!(
        held.is_some_and(|held| held < Duration::from_secs(3)),
        "a 1 s request timeout held the connection {held:?}"
    );
}

#[test]
fn a_connection_that_never_sends_is_closed_at_the_timeout_without_a_408() {
    // HTTP clients keep spare connections in their pools; a 408 written to
    // one would be read as the answer to whatever they send on it later.
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&write_config_with(dir.path(), SLOW_LIMITS));
    let mut conn = TcpStream::connect(("127.0.0.1", server.port)).unwrap();
    conn.set_read_timeout(Some(Duration::from_secs(8))).unwrap();
    let started = Instant::now();
    let mut received = Vec::new();
    let _ = conn.read_to_end(&mut received);
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "an unused connection was held {:?}",
        started.elapsed()
    );
    assert_eq!(String::from_utf8_lossy(&received), "");
}

#[test]
fn a_chunked_body_trickled_after_the_answer_is_cut_off() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&write_config_with(dir.path(), SLOW_LIMITS));
    let mut conn = TcpStream::connect(("127.0.0.1", server.port)).unwrap();
    conn.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    conn.write_all(
        b"GET /healthz HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n1\r\na\r\n",
    )
    .unwrap();
    let answer = read_answer(&mut conn);
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    let started = Instant::now();
    let mut cut = false;
    while started.elapsed() < Duration::from_secs(8) {
        if conn.write_all(b"1\r\nb\r\n").is_err() {
            cut = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(
        cut && started.elapsed() < Duration::from_secs(4),
        "the trickling client was held {:?}",
        started.elapsed()
    );
}

#[test]
fn idle_kept_alive_connections_close_after_keep_alive_secs() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&write_config_with(
        dir.path(),
        "[limits]\nclient_request_timeout_ms = 10000\nkeep_alive_secs = 1\n",
    ));
    let mut conn = after_one_answer(server.port);
    let held = closed_within(&mut conn, Duration::from_secs(8));
    assert!(
        held.is_some_and(|held| held < Duration::from_secs(3)),
        "a 1 s keep-alive held the idle connection {held:?}"
    );
}

#[test]
fn verify_answers_again_once_slow_clients_holding_every_slot_are_cut_off() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config_with(
        dir.path(),
        "[limits]\nclient_request_timeout_ms = 1000\nkeep_alive_secs = 30\nmax_connections = 2\n",
    );
    // One worker, so two connections hold every slot.
    let server = Server::start_with_env(&config, &[("AGENT_TOKENS__SERVER__WORKERS", "1")]);
    let mut slow: Vec<TcpStream> = (0..2).map(|_| after_one_answer(server.port)).collect();
    for conn in &mut slow {
        conn.write_all(b"G").unwrap();
    }
    let started = Instant::now();
    let answer = exchange(
        server.port,
        &format!(
            "GET /api/agent-tokens/verify HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer sk_agt_{}\r\nConnection: close\r\n\r\n",
            "0".repeat(64)
        ),
    );
    assert!(answer.starts_with("HTTP/1.1 401"), "{answer:?}");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "verify waited {:?} behind slow clients",
        started.elapsed()
    );
}

#[test]
fn serve_raises_its_open_file_soft_limit_to_the_hard_limit() {
    use std::os::unix::process::CommandExt;
    use std::process::{Command, Stdio};
    let dir = tempfile::tempdir().unwrap();
    let config = write_config_with(dir.path(), "");
    let hard = rustix::process::getrlimit(rustix::process::Resource::Nofile).maximum;
    assert!(
        hard.is_none_or(|h| h > 256),
        "this test needs a hard limit above 256"
    );
    let mut command = Command::new(common::BIN);
    command
        .args(["serve", "--config"])
        .arg(&config)
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    // SAFETY: setrlimit is async-signal-safe; nothing else runs in the child.
    unsafe {
        command.pre_exec(move || {
            let low = rustix::process::Rlimit {
                current: Some(256),
                maximum: hard,
            };
            rustix::process::setrlimit(rustix::process::Resource::Nofile, low)
                .map_err(std::io::Error::from)
        });
    }
    let mut child = command.spawn().unwrap();
    let log = common::lines_of(child.stderr.take().unwrap());
    let port = common::port_from(&common::wait_for_line(
        &log,
        "listening on port",
        &mut Vec::new(),
    ));
    let mut server = Server { child, port, log };
    let limits = std::fs::read_to_string(format!("/proc/{}/limits", server.child.id())).unwrap();
    let open_files = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .unwrap()
        .split_whitespace()
        .skip(3)
        .take(2)
        .collect::<Vec<_>>();
    assert_eq!(open_files[0], open_files[1], "{limits}");
    assert_ne!(open_files[0], "256", "{limits}");
    assert!(server.terminate().success());
}

#[test]
fn with_metrics_bind_metrics_leave_the_main_address_for_a_private_one() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config_with(dir.path(), "");
    let server = Server::start_with_env(
        &config,
        &[("AGENT_TOKENS__SERVER__METRICS_BIND", "127.0.0.1:0")],
    );
    let line = common::wait_for_line(&server.log, "listening privately on port", &mut Vec::new());
    let private =
        common::port_from(&line.replace("listening privately on port", "listening on port"));
    assert_ne!(private, server.port);
    let get = |port: u16, path: &str| {
        exchange(
            port,
            &format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"),
        )
    };
    for path in ["/metrics", "/%6detrics", "/%6D%65trics", "//metrics"] {
        let answer = get(server.port, path);
        assert!(
            answer.starts_with("HTTP/1.1 404"),
            "{path} on the main address: {answer}"
        );
    }
    assert!(get(server.port, "/healthz").starts_with("HTTP/1.1 200"));
    let metrics = get(private, "/metrics");
    assert!(metrics.starts_with("HTTP/1.1 200"), "{metrics}");
    assert!(metrics.contains("# TYPE"), "{metrics}");
    assert!(get(private, "/healthz").starts_with("HTTP/1.1 200"));
    assert!(get(private, "/readyz").starts_with("HTTP/1.1 200"));
    let verify = get(private, "/api/agent-tokens/verify");
    assert!(verify.starts_with("HTTP/1.1 404"), "{verify}");
}

/// Write system calls the process has made so far (`syscw` in /proc/PID/io).
fn write_calls(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/io"))
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("syscw:"))
        .unwrap()
        .trim()
        .parse()
        .unwrap()
}

#[test]
fn a_flood_of_readiness_probes_costs_at_most_one_store_write_a_second() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config_with(dir.path(), "");
    // No access-log lines: stderr writes would count.
    let server = Server::start_with_env(&config, &[("AGENT_TOKENS__SERVER__ACCESS_LOG", "false")]);
    let pid = server.child.id();
    let mut conn = TcpStream::connect(("127.0.0.1", server.port)).unwrap();
    conn.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let before = write_calls(pid);
    let started = Instant::now();
    for _ in 0..300 {
        conn.write_all(b"GET /readyz HTTP/1.1\r\nHost: x\r\n\r\n")
            .unwrap();
        let answer = read_answer(&mut conn);
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    }
    let seconds = started.elapsed().as_secs() + 1;
    let writes = write_calls(pid) - before;
    // A probe costs about two write calls (618 for 300 probes before they
    // were reused); the rest is slack for the store's background work.
    assert!(
        writes <= 6 * (seconds + 1) + 10,
        "300 probes in {seconds} s made {writes} write calls"
    );
}

/// Runs the binary with `args` under `umask`, stdin from `input`; returns
/// the exit code, stdout and stderr. With `close_stdout`, its reader is gone
/// before it writes anything.
fn run_tool(args: &[&str], umask: u32, input: &[u8], close_stdout: bool) -> (i32, Vec<u8>, String) {
    use std::os::unix::process::CommandExt;
    use std::process::{Command, Stdio};
    let mut command = Command::new(common::BIN);
    command
        .args(args)
        .env_remove("AGENT_TOKENS__SERVER__BIND")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    // SAFETY: umask is async-signal-safe; nothing else runs in the child.
    unsafe {
        command.pre_exec(move || {
            rustix::process::umask(rustix::fs::Mode::from_raw_mode(umask));
            Ok(())
        });
    }
    let mut child = command.spawn().unwrap();
    let stdout = child.stdout.take().unwrap();
    let reader = if close_stdout {
        drop(stdout);
        None
    } else {
        Some(std::thread::spawn(move || {
            let mut out = Vec::new();
            let mut stdout = stdout;
            stdout.read_to_end(&mut out).unwrap();
            out
        }))
    };
    let mut stdin = child.stdin.take().unwrap();
    stdin.write_all(input).unwrap();
    drop(stdin);
    let mut stderr = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut stderr)
        .unwrap();
    let status = child.wait().unwrap();
    let out = reader.map(|r| r.join().unwrap()).unwrap_or_default();
    (status.code().unwrap_or(-1), out, stderr)
}

/// A store with one user's token in it, written by the server under `umask`.
fn store_with_a_token(dir: &std::path::Path, umask: u32) -> std::path::PathBuf {
    use std::os::unix::process::CommandExt;
    use std::process::{Command, Stdio};
    let config = write_config_with(dir, "");
    let mut command = Command::new(common::BIN);
    command
        .args(["serve", "--config"])
        .arg(&config)
        .env("RUST_LOG", "info")
        .env_remove("AGENT_TOKENS__SERVER__BIND")
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    // SAFETY: umask is async-signal-safe; nothing else runs in the child.
    unsafe {
        command.pre_exec(move || {
            rustix::process::umask(rustix::fs::Mode::from_raw_mode(umask));
            Ok(())
        });
    }
    let mut child = command.spawn().unwrap();
    let log = common::lines_of(child.stderr.take().unwrap());
    let port = common::port_from(&common::wait_for_line(
        &log,
        "listening on port",
        &mut Vec::new(),
    ));
    let mut server = Server { child, port, log };
    let answer = exchange(
        port,
        &format!(
            "POST /api/agent-tokens/me/get-or-create HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
            common::hs256_jwt("alice")
        ),
    );
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(server.terminate().success());
    config
}

/// Every directory and file under `root` whose mode lets group or others in.
fn open_to_others(root: &std::path::Path) -> Vec<String> {
    use std::os::unix::fs::PermissionsExt;
    let mut found = Vec::new();
    let mut pending = vec![root.to_owned()];
    while let Some(path) = pending.pop() {
        let meta = std::fs::symlink_metadata(&path).unwrap();
        let mode = meta.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            found.push(format!("{} {mode:o}", path.display()));
        }
        if meta.is_dir() {
            pending.extend(std::fs::read_dir(&path).unwrap().map(|e| e.unwrap().path()));
        }
    }
    found
}

#[test]
fn the_data_directory_and_its_files_are_private_whatever_the_umask() {
    let dir = tempfile::tempdir().unwrap();
    let config = store_with_a_token(dir.path(), 0o022);
    let exposed = open_to_others(&dir.path().join("db"));
    assert!(
        exposed.is_empty(),
        "written by serve under umask 022: {exposed:#?}"
    );

    // The offline tools too: an import creates a new store.
    let config = config.to_str().unwrap();
    let (code, export, stderr) = run_tool(&["export", "--config", config], 0o022, b"", false);
    assert_eq!(code, 0, "{stderr}");
    let other = tempfile::tempdir().unwrap();
    let other_config = write_config_with(other.path(), "");
    let (code, _, stderr) = run_tool(
        &["import", "--config", other_config.to_str().unwrap()],
        0o022,
        &export,
        false,
    );
    assert_eq!(code, 0, "{stderr}");
    let exposed = open_to_others(&other.path().join("db"));
    assert!(
        exposed.is_empty(),
        "written by import under umask 022: {exposed:#?}"
    );
}

#[test]
fn commands_whose_reader_goes_away_exit_quietly_without_a_panic() {
    let dir = tempfile::tempdir().unwrap();
    let config = store_with_a_token(dir.path(), 0o077);
    let config = config.to_str().unwrap();
    // check's verdict stays its exit code; check-config's too.
    for (args, expected) in [
        (["check", "--config", config], 0),
        (["check-config", "--config", config], 0),
        // An export cut short is not a success, but needs no message.
        (["export", "--config", config], 74),
    ] {
        let (code, _, stderr) = run_tool(&args, 0o077, b"", true);
        assert_eq!(code, expected, "{args:?}: {stderr}");
        assert!(!stderr.contains("panicked"), "{args:?}: {stderr}");
        assert!(!stderr.contains("Broken pipe"), "{args:?}: {stderr}");
    }
}

#[test]
fn serve_dev_keeps_serving_when_the_reader_of_its_banner_goes_away() {
    use std::process::{Command, Stdio};
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut child = Command::new(common::BIN)
        .args(["serve", "--dev"])
        .env("AGENT_TOKENS__SERVER__BIND", format!("127.0.0.1:{port}"))
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    drop(child.stdout.take());
    let deadline = Instant::now() + Duration::from_secs(20);
    let answer = loop {
        if let Some(status) = child.try_wait().unwrap() {
            panic!("serve --dev exited with {status} once its stdout was closed");
        }
        if TcpStream::connect(("127.0.0.1", port)).is_ok() {
            std::thread::sleep(Duration::from_millis(300));
            break exchange(
                port,
                "GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
            );
        }
        assert!(Instant::now() < deadline, "serve --dev never listened");
        std::thread::sleep(Duration::from_millis(50));
    };
    let exited = child.try_wait().unwrap();
    let _ = child.kill();
    let _ = child.wait();
    assert!(exited.is_none(), "serve --dev exited with {exited:?}");
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
}
