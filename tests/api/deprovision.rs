//! `DELETE /api/agent-tokens/users/{user_id}`: an application revokes a
//! deleted user's token with the operator's admin secret.

use reqwest::Method;
use serde_json::Value;

use crate::helpers::*;

pub const ADMIN_SECRET: &str = "admin-secret-for-tests-0123456789abcdef";

/// The secret in a file, as a systemd credential holds it (with a newline).
pub fn admin_file() -> (tempfile::TempDir, std::path::PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("admin-token");
    std::fs::write(&path, format!("{ADMIN_SECRET}\n")).unwrap();
    (dir, path)
}

pub fn with_admin(config: TestConfig, path: &std::path::Path) -> TestConfig {
    config.with(&format!("[admin]\ntoken_file = \"{}\"", path.display()))
}

fn users_path(user: &str) -> String {
    format!("/api/agent-tokens/users/{user}")
}

#[tokio::test]
async fn the_admin_secret_revokes_a_users_token_at_once_and_again_is_204() {
    let (_dir, path) = admin_file();
    let config = with_admin(
        TestConfig::hs256().with("[tokens]\nrotation_grace_secs = 3600"),
        &path,
    );
    let app = spawn_app_with(config).await;
    let jwt = user_jwt("leaver@example.com");
    let old = app.new_token(&jwt).await;
    let current = app.new_token(&jwt).await;
    let bystander = app.new_token(&user_jwt("stayer")).await;
    assert_eq!(app.verify_status(&old).await, 200, "in grace");

    let path = users_path("leaver%40example.com");
    for _ in 0..2 {
        let resp = app.request(Method::DELETE, &path, Some(ADMIN_SECRET)).await;
        assert_eq!(resp.status().as_u16(), 204);
        assert_eq!(resp.headers().get("cache-control").unwrap(), "no-store");
        assert!(resp.bytes().await.unwrap().is_empty());
        assert_eq!(app.verify_status(&current).await, 401);
        assert_eq!(app.verify_status(&old).await, 401, "grace ends too");
    }
    assert_eq!(app.verify_status(&bystander).await, 200);
    // A user nobody knows: the same answer.
    let resp = app
        .request(Method::DELETE, &users_path("nobody"), Some(ADMIN_SECRET))
        .await;
    assert_eq!(resp.status().as_u16(), 204);
    // The user sees who did it; the second call changed nothing.
    let events: Value = app
        .request(Method::GET, "/api/agent-tokens/me/events", Some(&jwt))
        .await
        .json()
        .await
        .unwrap();
    let first = &events["events"][0];
    assert_eq!(first["type"], "revoked");
    assert_eq!(first["actor"], "admin");
    assert_eq!(events["events"].as_array().unwrap().len(), 3, "{events}");
}

#[tokio::test]
async fn a_user_jwt_an_agent_token_or_a_wrong_secret_get_401_and_change_nothing() {
    let (_dir, path) = admin_file();
    let app = spawn_app_with(with_admin(TestConfig::hs256(), &path)).await;
    let jwt = user_jwt("alice");
    let token = app.new_token(&jwt).await;
    let path = users_path("alice");
    let wrong = format!("{ADMIN_SECRET}x");
    for credential in [
        Some(jwt.as_str()),
        Some(token.as_str()),
        Some(wrong.as_str()),
        Some(&ADMIN_SECRET[..ADMIN_SECRET.len() - 1]),
        None,
    ] {
        let resp = app.request(Method::DELETE, &path, credential).await;
        let www = resp
            .headers()
            .get("www-authenticate")
            .map(|v| v.to_str().unwrap().to_owned());
        let body = assert_error(resp, 401, "invalid_token").await;
        assert_eq!(body["message"], "This endpoint requires the admin secret.");
        let www = www.unwrap();
        assert!(www.starts_with("Bearer realm=\"agent-tokens\""), "{www}");
        for secret in [ADMIN_SECRET, jwt.as_str(), token.as_str()] {
            assert!(!www.contains(secret) && !body.to_string().contains(secret));
        }
    }
    assert_eq!(app.verify_status(&token).await, 200);
    // Only DELETE.
    let resp = app.request(Method::GET, &path, Some(ADMIN_SECRET)).await;
    assert_eq!(resp.status().as_u16(), 405);
}

#[tokio::test]
async fn without_admin_token_file_the_route_does_not_exist() {
    let app = spawn_app().await;
    let token = app.new_token(&user_jwt("alice")).await;
    for m in [Method::DELETE, Method::GET, Method::PUT] {
        let resp = app
            .request(m, &users_path("alice"), Some(ADMIN_SECRET))
            .await;
        assert_error(resp, 404, "not_found").await;
    }
    assert_eq!(app.verify_status(&token).await, 200);
}

#[tokio::test]
async fn a_short_or_missing_admin_secret_file_refuses_to_start_naming_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let short = dir.path().join("short");
    std::fs::write(&short, "tooshort\n").unwrap();
    for path in [short, dir.path().join("missing")] {
        let settings = settings_for(
            &with_admin(TestConfig::hs256(), &path),
            &dir.path().join("db"),
        );
        let err = match agent_tokens::http::app::Application::build(&settings) {
            Ok(_) => panic!("started with {}", path.display()),
            Err(e) => e.to_string(),
        };
        assert!(err.starts_with("admin.token_file"), "{err}");
        assert!(!err.contains("tooshort"), "{err}");
    }
}
