//! Storage failures: each route's 500 carries the page's message, and a
//! failed request changes nothing.

use reqwest::Method;

use crate::helpers::*;

/// Starts an app whose stored record for `victim` cannot be decoded.
async fn app_with_a_damaged_record(victim: &str) -> TestApp {
    let app = spawn_app().await;
    app.rotate(&user_jwt(victim)).await;
    let (dir, config) = app.stop().await;
    agent_tokens::store::raw::put(
        &dir.path().join("db"),
        "user_token",
        victim.as_bytes(),
        b"\x07garbage",
    )
    .unwrap();
    TestApp::start_in(config, dir, agent_tokens::domain::clock::Clock::manual()).await
}

#[tokio::test]
async fn each_route_answers_its_page_message_when_storage_fails_and_nothing_changes() {
    if crate::helpers::on_postgres() {
        eprintln!("embedded store only: this test damages the embedded store's files; PostgreSQL failures are tests/postgres.rs");
        return;
    }
    let app = app_with_a_damaged_record("victim").await;
    let jwt = user_jwt("victim");
    for (method, path, message) in [
        (
            Method::GET,
            "/api/agent-tokens/me",
            "Failed to fetch token status.",
        ),
        (
            Method::POST,
            "/api/agent-tokens/me",
            "Failed to store agent token.",
        ),
        (
            Method::POST,
            "/api/agent-tokens/me/get-or-create",
            "Failed to check or store token.",
        ),
        (
            Method::DELETE,
            "/api/agent-tokens/me",
            "Failed to revoke token.",
        ),
    ] {
        let resp = app.request(method.clone(), path, Some(&jwt)).await;
        let body = assert_error(resp, 500, "internal_error").await;
        assert_eq!(body["message"], message, "{method} {path}");
    }
    // Other users are unaffected.
    let resp = app.get_or_create(&user_jwt("bystander")).await;
    assert_eq!(resp.status().as_u16(), 200);

    let (dir, _) = app.stop().await;
    let path = dir.path().join("db");
    let value = agent_tokens::store::raw::get(&path, "user_token", b"victim")
        .unwrap()
        .unwrap();
    assert_eq!(
        &value[..],
        b"\x07garbage",
        "the failed requests changed nothing"
    );
    assert_eq!(
        agent_tokens::store::raw::len(&path, "tokenhash_user").unwrap(),
        2
    );
}
