//! SIGHUP on the real binary: `introspection.clients_file` is read again
//! (a rotated client secret takes effect without a restart), and a broken
//! file keeps the clients in force.

mod common;

use common::*;

const OLD_SECRET: &str = "old-introspection-secret-0123456789ab";
const NEW_SECRET: &str = "new-introspection-secret-0123456789ab";

async fn introspect(server: &Server, id: &str, secret: &str, token: &str) -> u16 {
    reqwest::Client::new()
        .post(format!("{}/oauth2/introspect", server.base()))
        .basic_auth(id, Some(secret))
        .form(&[("token", token)])
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

/// Sends SIGHUP and waits until the server logged that it read the file.
fn hangup(server: &Server, expect: &str) {
    server.signal("HUP");
    let mut seen = Vec::new();
    wait_for_line(&server.log, expect, &mut seen);
}

#[tokio::test]
async fn sighup_rereads_the_introspection_clients_and_a_broken_file_keeps_them() {
    let dir = tempfile::tempdir().unwrap();
    let clients = dir.path().join("introspection-clients");
    std::fs::write(&clients, format!("mcp:{OLD_SECRET}\n")).unwrap();
    let config = write_config_with(
        dir.path(),
        &format!("[introspection]\nclients_file = \"{}\"", clients.display()),
    );
    let mut server = Server::start(&config);
    let client = reqwest::Client::new();
    let (status, body) = call(
        &client,
        reqwest::Method::POST,
        &format!("{}/api/agent-tokens/me", server.base()),
        &hs256_jwt("alice"),
    )
    .await;
    assert_eq!(status, 200);
    let token = body["token"].as_str().unwrap().to_owned();
    assert_eq!(introspect(&server, "mcp", OLD_SECRET, &token).await, 200);

    // The secret is rotated: the new one works after SIGHUP, the old one not.
    std::fs::write(
        &clients,
        format!("mcp:{NEW_SECRET}\napache:{OLD_SECRET}x\n"),
    )
    .unwrap();
    hangup(&server, "2 client(s)");
    assert_eq!(introspect(&server, "mcp", NEW_SECRET, &token).await, 200);
    assert_eq!(introspect(&server, "mcp", OLD_SECRET, &token).await, 401);

    // A broken file is reported by key and line, and changes nothing.
    std::fs::write(&clients, "mcp:short\n").unwrap();
    hangup(&server, "The previous clients stay in force.");
    assert_eq!(introspect(&server, "mcp", NEW_SECRET, &token).await, 200);
    let log = server.drain_log().join("\n");
    assert!(
        !log.contains(NEW_SECRET) && !log.contains("mcp:short"),
        "{log}"
    );

    // SIGHUP never stops the server.
    assert!(server.child.try_wait().unwrap().is_none());
    assert!(server.terminate().success());
}
