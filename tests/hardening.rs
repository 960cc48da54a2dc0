//! What a hostile client or a careless deployment could get from the real
//! binary: slow connections, secrets in logs, private routes, file modes.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

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
