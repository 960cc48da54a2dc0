//! Hostile HTTP input against the real binary: oversized headers, huge
//! bearer values, non-UTF-8 bytes, large bodies, slow clients, floods.
//! Each gets a clear 4xx (or a closed connection), memory stays bounded,
//! nothing panics, and the verify route only ever answers 200 or 401.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use common::*;

/// Sends raw bytes and returns the status code of the answer (0 if the
/// connection closed without one).
fn raw_status(port: u16, request: &[u8]) -> u16 {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    // The server may answer and close before reading everything we send.
    let _ = stream.write_all(request);
    let mut buf = vec![0u8; 4096];
    let mut got = Vec::new();
    loop {
        match stream.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                got.extend_from_slice(&buf[..n]);
                if got.windows(4).any(|w| w == b"\r\n\r\n") {
                    break;
                }
            }
        }
    }
    let head = String::from_utf8_lossy(&got);
    head.split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0)
}

fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap()
}

fn get(path: &str, extra_headers: &str) -> Vec<u8> {
    format!("GET {path} HTTP/1.1\r\nHost: localhost\r\n{extra_headers}Connection: close\r\n\r\n")
        .into_bytes()
}

#[test]
fn hostile_requests_get_clear_answers_with_bounded_memory_and_no_panic() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config_with(
        dir.path(),
        "[limits]\nclient_request_timeout_ms = 1000\nmax_header_bytes = 32768\nmax_body_bytes = 4096\n",
    );
    let mut server = Server::start(&config);
    let port = server.port;
    let jwt = hs256_jwt("hostile");
    assert_eq!(
        raw_status(
            port,
            &get(
                "/api/agent-tokens/me",
                &format!("Authorization: Bearer {jwt}\r\n")
            )
        ),
        200
    );
    let rss_before = rss_kib(server.child.id());

    for round in 0..20 {
        // Headers over the configured cap: 431 on management routes.
        let big = format!("X-Filler: {}\r\n", "a".repeat(40_000));
        assert_eq!(
            raw_status(port, &get("/api/agent-tokens/me", &big)),
            431,
            "round {round}"
        );
        // Headers over the parser's hard cap (128 KiB): refused on every route.
        let huge = format!("X-Filler: {}\r\n", "a".repeat(140_000));
        assert_eq!(
            raw_status(port, &get("/api/agent-tokens/verify", &huge)),
            431
        );
        // A 10,000-byte bearer value: an ordinary 401 on both kinds of route.
        let long = format!("Authorization: Bearer {}\r\n", "x".repeat(10_000));
        assert_eq!(raw_status(port, &get("/api/agent-tokens/me", &long)), 401);
        assert_eq!(
            raw_status(port, &get("/api/agent-tokens/verify", &long)),
            401
        );
        let long_token = format!("Authorization: Bearer sk_agt_{}\r\n", "a".repeat(10_000));
        assert_eq!(
            raw_status(port, &get("/api/agent-tokens/verify", &long_token)),
            401
        );
        // Non-UTF-8 bytes in the Authorization header.
        let mut request = b"GET /api/agent-tokens/me HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer \xff\xfe\x80abc\r\nConnection: close\r\n\r\n".to_vec();
        assert_eq!(raw_status(port, &request), 401);
        request = request.replace_path(b"/api/agent-tokens/me", b"/api/agent-tokens/verify");
        assert_eq!(raw_status(port, &request), 401);
        // A large declared body on a POST route: 413 before it is read.
        let mut post = format!(
            "POST /api/agent-tokens/me HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {jwt}\r\nContent-Length: 10000000\r\nConnection: close\r\n\r\n"
        )
        .into_bytes();
        post.extend(std::iter::repeat_n(b'z', 256 * 1024));
        assert_eq!(raw_status(port, &post), 413);
    }

    // A slow client trickling its request head is cut off.
    let mut slow = TcpStream::connect(("127.0.0.1", port)).unwrap();
    slow.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let started = Instant::now();
    let mut closed = false;
    for byte in b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: "
        .iter()
        .chain(b"aaaaaaaaaaaaaaaaaaaaaaaa")
    {
        if slow.write_all(&[*byte]).is_err() {
            closed = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(150));
        if started.elapsed() > Duration::from_secs(3) {
            break;
        }
    }
    if !closed {
        let mut buf = [0u8; 256];
        // Either a 408 then close, or a plain close.
        let n = slow.read(&mut buf).unwrap_or(0);
        let answer = String::from_utf8_lossy(&buf[..n]).to_string();
        assert!(n == 0 || answer.starts_with("HTTP/1.1 408"), "{answer}");
    }
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "the slow client was held for {:?}",
        started.elapsed()
    );

    // Still healthy, memory bounded, and nothing panicked.
    assert_eq!(raw_status(port, &get("/healthz", "")), 200);
    let rss_after = rss_kib(server.child.id());
    assert!(
        rss_after < rss_before + 64 * 1024,
        "RSS grew from {rss_before} KiB to {rss_after} KiB"
    );
    assert!(server.terminate().success());
    let log = server.drain_log().join("\n");
    assert!(!log.contains("panicked"), "{log}");
}

trait ReplacePath {
    fn replace_path(self, from: &[u8], to: &[u8]) -> Vec<u8>;
}

impl ReplacePath for Vec<u8> {
    fn replace_path(self, from: &[u8], to: &[u8]) -> Vec<u8> {
        let at = self.windows(from.len()).position(|w| w == from).unwrap();
        let mut out = self[..at].to_vec();
        out.extend_from_slice(to);
        out.extend_from_slice(&self[at + from.len()..]);
        out
    }
}

#[tokio::test]
async fn with_per_address_on_management_routes_are_limited_per_client_but_verify_never_is() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config_with(
        dir.path(),
        "[rate_limit]\nper_address = true\naddress_per_minute = 1\naddress_burst = 5\n",
    );
    let server = Server::start(&config);
    let client = reqwest::Client::new();
    let jwt = hs256_jwt("flooder");
    let mut statuses = Vec::new();
    let mut retry_after = None;
    let mut body = serde_json::Value::Null;
    for _ in 0..8 {
        let resp = client
            .get(format!("{}/api/agent-tokens/me", server.base()))
            .bearer_auth(&jwt)
            .send()
            .await
            .unwrap();
        statuses.push(resp.status().as_u16());
        if resp.status().as_u16() == 429 {
            retry_after = resp
                .headers()
                .get("retry-after")
                .map(|v| v.to_str().unwrap().parse::<u64>().unwrap());
            body = resp.json().await.unwrap();
        }
    }
    assert_eq!(&statuses[..5], &[200; 5], "{statuses:?}");
    assert!(statuses[5..].iter().all(|s| *s == 429), "{statuses:?}");
    assert!(
        retry_after.is_some_and(|s| (1..=60).contains(&s)),
        "{retry_after:?}"
    );
    assert_eq!(body["error"], "rate_limited");
    // Invalid JWTs count too: the limit is checked before any signature work.
    let resp = client
        .get(format!("{}/api/agent-tokens/me", server.base()))
        .bearer_auth("not-a-jwt")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 429);

    // The verify route answers only 200 or 401, however fast it is hit.
    for _ in 0..300 {
        let resp = client
            .get(format!("{}/api/agent-tokens/verify", server.base()))
            .bearer_auth("sk_agt_flood")
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status().as_u16(), 401);
    }
}
