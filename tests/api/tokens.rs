//! The product page's tables, row by row: each status, field, type and message.

use reqwest::Method;
use serde_json::Value;

use crate::helpers::*;

const ROTATE_MESSAGE: &str = "Store this token securely — it will not be shown again.";
const CREATED_MESSAGE: &str = "Token created. Store it securely — it will not be shown again.";
const EXISTS_MESSAGE: &str = "Token already exists. Rotate it from Settings if you need a new one.";

fn assert_token_shape(token: &str) {
    assert_eq!(token.len(), 71, "{token}");
    assert!(token.starts_with("sk_agt_"), "{token}");
    assert!(
        token[7..]
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)),
        "{token}"
    );
}

/// The page's fields for "no token"; the added timestamps are null too.
fn assert_no_token(body: &Value) {
    assert_eq!(body["has_token"], false, "{body}");
    assert_eq!(body["token_prefix"], Value::Null, "{body}");
    for field in ["created_at", "last_used_at", "expires_at"] {
        assert_eq!(body[field], Value::Null, "{field} in {body}");
    }
}

fn prefix_of(token: &str) -> String {
    format!("{}...", &token[..15])
}

async fn json(resp: reqwest::Response) -> Value {
    assert_eq!(resp.status().as_u16(), 200);
    assert_eq!(
        resp.headers().get("content-type").unwrap(),
        "application/json"
    );
    assert_eq!(resp.headers().get("cache-control").unwrap(), "no-store");
    resp.json().await.unwrap()
}

#[tokio::test]
async fn get_me_without_a_token_says_so_with_a_null_prefix() {
    let app = spawn_app().await;
    let body = json(app.get_me(&user_jwt("alice")).await).await;
    assert_no_token(&body);
}

#[tokio::test]
async fn post_me_generates_a_token_shown_once_with_its_prefix_and_message() {
    let app = spawn_app().await;
    let jwt = user_jwt("alice");
    let body = json(app.rotate(&jwt).await).await;
    let obj = body.as_object().unwrap();
    assert_eq!(obj.len(), 3, "{body}");
    let token = body["token"].as_str().unwrap();
    assert_token_shape(token);
    assert_eq!(body["token_prefix"], prefix_of(token));
    assert_eq!(body["message"], ROTATE_MESSAGE);

    let status = json(app.get_me(&jwt).await).await;
    assert_eq!(status["has_token"], true);
    assert_eq!(status["token_prefix"], prefix_of(token));
    assert!(
        !status.to_string().contains(&token[15..]),
        "GET never returns the token"
    );
}

#[tokio::test]
async fn post_me_again_replaces_the_token() {
    let app = spawn_app().await;
    let jwt = user_jwt("alice");
    let first = json(app.rotate(&jwt).await).await;
    let second = json(app.rotate(&jwt).await).await;
    assert_ne!(first["token"], second["token"]);
    let status = json(app.get_me(&jwt).await).await;
    assert_eq!(status["token_prefix"], second["token_prefix"]);

    let (stored, _dir) = app.stop_and_inspect().await;
    assert_eq!(stored.users.len(), 1);
    assert_eq!(stored.index.len(), 1, "the old hash left the index");
    let second_token = second["token"].as_str().unwrap();
    assert_eq!(stored.users[0].1.hash, sha256(second_token));
    assert_eq!(stored.index[0].0.as_bytes(), &sha256(second_token));
}

#[tokio::test]
async fn get_or_create_creates_once_then_returns_the_prefix_with_a_null_token() {
    let app = spawn_app().await;
    let jwt = user_jwt("bob");
    let created = json(app.get_or_create(&jwt).await).await;
    assert_eq!(created.as_object().unwrap().len(), 4, "{created}");
    assert_eq!(created["is_new"], true);
    let token = created["token"].as_str().unwrap();
    assert_token_shape(token);
    assert_eq!(created["token_prefix"], prefix_of(token));
    assert_eq!(created["message"], CREATED_MESSAGE);

    let existing = json(app.get_or_create(&jwt).await).await;
    assert_eq!(existing.as_object().unwrap().len(), 4, "{existing}");
    assert_eq!(existing["is_new"], false);
    assert_eq!(existing["token"], Value::Null);
    assert_eq!(existing["token_prefix"], prefix_of(token));
    assert_eq!(existing["message"], EXISTS_MESSAGE);
}

#[tokio::test]
async fn get_or_create_after_post_me_returns_the_existing_prefix() {
    let app = spawn_app().await;
    let jwt = user_jwt("carol");
    let rotated = json(app.rotate(&jwt).await).await;
    let existing = json(app.get_or_create(&jwt).await).await;
    assert_eq!(existing["is_new"], false);
    assert_eq!(existing["token_prefix"], rotated["token_prefix"]);
}

#[tokio::test]
async fn delete_me_revokes_with_204_and_an_empty_body_and_is_idempotent() {
    let app = spawn_app().await;
    let jwt = user_jwt("dave");
    json(app.rotate(&jwt).await).await;
    for _ in 0..2 {
        let resp = app.revoke(&jwt).await;
        assert_eq!(resp.status().as_u16(), 204);
        assert!(resp.bytes().await.unwrap().is_empty());
    }
    let status = json(app.get_me(&jwt).await).await;
    assert_no_token(&status);
    let (stored, _dir) = app.stop_and_inspect().await;
    assert!(stored.users.is_empty());
    assert!(stored.index.is_empty());
}

#[tokio::test]
async fn delete_me_without_a_token_is_still_204() {
    let app = spawn_app().await;
    let resp = app.revoke(&user_jwt("nobody")).await;
    assert_eq!(resp.status().as_u16(), 204);
}

#[tokio::test]
async fn a_new_token_after_revocation_is_new() {
    let app = spawn_app().await;
    let jwt = user_jwt("erin");
    let first = json(app.get_or_create(&jwt).await).await;
    app.revoke(&jwt).await;
    let second = json(app.get_or_create(&jwt).await).await;
    assert_eq!(second["is_new"], true);
    assert_ne!(first["token"], second["token"]);
}

#[tokio::test]
async fn users_are_isolated_from_each_other() {
    let app = spawn_app().await;
    let a = json(app.rotate(&user_jwt("user-a")).await).await;
    let status_b = json(app.get_me(&user_jwt("user-b")).await).await;
    assert_eq!(status_b["has_token"], false);
    app.revoke(&user_jwt("user-b")).await;
    let status_a = json(app.get_me(&user_jwt("user-a")).await).await;
    assert_eq!(status_a["token_prefix"], a["token_prefix"]);
}

#[tokio::test]
async fn every_endpoint_answers_401_without_a_jwt() {
    let app = spawn_app().await;
    for (method, path) in [
        (Method::GET, "/api/agent-tokens/me"),
        (Method::POST, "/api/agent-tokens/me"),
        (Method::POST, "/api/agent-tokens/me/get-or-create"),
        (Method::DELETE, "/api/agent-tokens/me"),
    ] {
        let resp = app.request(method.clone(), path, None).await;
        let www = resp.headers().get("www-authenticate").cloned();
        let body = assert_error(resp, 401, "missing_credentials").await;
        assert_eq!(
            body["message"], "Missing or invalid JWT.",
            "{method} {path}"
        );
        assert_eq!(www.unwrap(), "Bearer realm=\"agent-tokens\"");

        let resp = app.request(method.clone(), path, Some("not-a-jwt")).await;
        assert_invalid_jwt(resp).await;
    }
}

#[tokio::test]
async fn an_agent_token_cannot_manage_tokens() {
    let app = spawn_app().await;
    let jwt = user_jwt("frank");
    let token = json(app.rotate(&jwt).await).await["token"]
        .as_str()
        .unwrap()
        .to_owned();
    for (method, path) in [
        (Method::GET, "/api/agent-tokens/me"),
        (Method::POST, "/api/agent-tokens/me"),
        (Method::POST, "/api/agent-tokens/me/get-or-create"),
        (Method::DELETE, "/api/agent-tokens/me"),
    ] {
        let resp = app.request(method.clone(), path, Some(&token)).await;
        let www = resp.headers().get("www-authenticate").cloned().unwrap();
        let body = assert_error(resp, 401, "user_jwt_required").await;
        let message = body["message"].as_str().unwrap();
        assert!(
            message.contains("Agent tokens cannot be used here"),
            "{message}"
        );
        assert!(message.contains("user JWT"), "{message}");
        assert!(www.to_str().unwrap().contains("error=\"invalid_token\""));
        assert!(
            !body.to_string().contains(&token[7..]),
            "the token is never echoed"
        );
    }
    // Nothing changed: the same token is still the user's.
    let status = json(app.get_me(&jwt).await).await;
    assert_eq!(status["token_prefix"], prefix_of(&token));
}

#[tokio::test]
async fn other_authorization_schemes_are_refused() {
    let app = spawn_app().await;
    let resp = app
        .client
        .get(app.url("/api/agent-tokens/me"))
        .header("Authorization", "Basic YWxpY2U6c2VjcmV0")
        .send()
        .await
        .unwrap();
    assert_error(resp, 401, "invalid_request").await;
    // The scheme is case-insensitive (RFC 7235).
    let resp = app
        .client
        .get(app.url("/api/agent-tokens/me"))
        .header("Authorization", format!("bearer {}", user_jwt("gina")))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 200);
}

#[tokio::test]
async fn unknown_routes_and_methods_get_json_errors() {
    let app = spawn_app().await;
    let resp = app
        .request(Method::GET, "/api/agent-tokens/nope", None)
        .await;
    assert_error(resp, 404, "not_found").await;
    let resp = app
        .request(Method::PUT, "/api/agent-tokens/me", Some(&user_jwt("h")))
        .await;
    assert_eq!(resp.headers().get("allow").unwrap(), "GET, POST, DELETE");
    assert_error(resp, 405, "method_not_allowed").await;
    let resp = app
        .request(Method::GET, "/api/agent-tokens/me/get-or-create", None)
        .await;
    assert_error(resp, 405, "method_not_allowed").await;
}

#[tokio::test]
async fn healthz_answers_200_without_auth() {
    let app = spawn_app().await;
    let resp = app.request(Method::GET, "/healthz", None).await;
    assert_eq!(resp.status().as_u16(), 200);
}

#[tokio::test]
async fn a_body_sent_to_post_routes_is_ignored() {
    let app = spawn_app().await;
    let resp = app
        .client
        .post(app.url("/api/agent-tokens/me/get-or-create"))
        .bearer_auth(user_jwt("ivy"))
        .header("content-type", "application/json")
        .body(r#"{"token":"sk_agt_attacker_chosen"}"#)
        .send()
        .await
        .unwrap();
    let body = json(resp).await;
    assert_eq!(body["is_new"], true);
    assert_token_shape(body["token"].as_str().unwrap());
}

#[tokio::test]
async fn every_change_shows_on_the_very_next_get_me() {
    let app = spawn_app().await;
    let jwt = user_jwt("oscar");
    // Each answer below is remembered; each change must replace it.
    assert_no_token(&json(app.get_me(&jwt).await).await);
    let first = json(app.get_or_create(&jwt).await).await;
    let status = json(app.get_me(&jwt).await).await;
    assert_eq!(status["has_token"], true);
    assert_eq!(status["token_prefix"], first["token_prefix"]);
    let second = json(app.rotate(&jwt).await).await;
    let status = json(app.get_me(&jwt).await).await;
    assert_eq!(status["token_prefix"], second["token_prefix"]);
    assert_ne!(first["token_prefix"], second["token_prefix"]);
    assert_eq!(app.revoke(&jwt).await.status().as_u16(), 204);
    assert_no_token(&json(app.get_me(&jwt).await).await);
    // Another user's remembered answer is untouched by all of it.
    assert_no_token(&json(app.get_me(&user_jwt("olga")).await).await);
}
