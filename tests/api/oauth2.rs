//! RFC 7662 introspection, RFC 7009 revocation and RFC 8414 metadata, as
//! a resource server sees them: client authentication, the exact answers,
//! and revocations that take effect on the next introspection.

use std::path::PathBuf;

use reqwest::Method;
use serde_json::{json, Value};

use crate::helpers::*;

pub const CLIENT_ID: &str = "mcp-server";
pub const CLIENT_SECRET: &str = "introspection-secret-0123456789abcdef";
const INTROSPECT: &str = "/oauth2/introspect";
const REVOKE: &str = "/oauth2/revoke";
const METADATA: &str = "/.well-known/oauth-authorization-server";

/// A clients file with [`CLIENT_ID`] and another client, in its own directory.
pub fn clients_file() -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("introspection-clients");
    std::fs::write(
        &path,
        format!(
            "# resource servers\n{CLIENT_ID}:{CLIENT_SECRET}\napache:other+secret/with%chars-0123456789abcdef\n"
        ),
    )
    .unwrap();
    (dir, path)
}

pub fn with_introspection(config: TestConfig, path: &std::path::Path) -> TestConfig {
    config.with(&format!(
        "[introspection]\nclients_file = \"{}\"",
        path.display()
    ))
}

async fn oauth_app(tokens: &str) -> (TestApp, tempfile::TempDir) {
    let (dir, path) = clients_file();
    let config = with_introspection(
        TestConfig::hs256().with(&format!("[tokens]\n{tokens}")),
        &path,
    );
    (spawn_app_with(config).await, dir)
}

/// POSTs a form with Basic client authentication.
async fn post_form(app: &TestApp, path: &str, form: &[(&str, &str)]) -> reqwest::Response {
    app.client
        .post(app.url(path))
        .basic_auth(CLIENT_ID, Some(CLIENT_SECRET))
        .form(form)
        .send()
        .await
        .unwrap()
}

async fn introspect(app: &TestApp, token: &str) -> Value {
    let resp = post_form(
        app,
        INTROSPECT,
        &[("token", token), ("token_type_hint", "access_token")],
    )
    .await;
    assert_eq!(resp.status().as_u16(), 200);
    assert_eq!(resp.headers()["cache-control"], "no-store");
    assert_eq!(resp.headers()["content-type"], "application/json");
    resp.json().await.unwrap()
}

#[tokio::test]
async fn without_a_clients_file_the_oauth_routes_are_404() {
    let app = spawn_app().await;
    for (method, path) in [
        (Method::POST, INTROSPECT),
        (Method::GET, INTROSPECT),
        (Method::POST, REVOKE),
        (Method::GET, METADATA),
    ] {
        let resp = app.request(method, path, None).await;
        assert_error(resp, 404, "not_found").await;
    }
}

#[tokio::test]
async fn a_live_token_introspects_active_with_its_user_and_times() {
    let (app, _dir) = oauth_app("").await;
    let token = app.new_token(&user_jwt("alice")).await;
    let body = introspect(&app, &token).await;
    assert_eq!(
        body,
        json!({
            "active": true,
            "sub": "alice",
            "username": "alice",
            "token_type": "Bearer",
            "iat": app.clock.now(),
            "client_id": "agent-tokens",
        })
    );
}

#[tokio::test]
async fn an_expiring_token_carries_exp_and_is_inactive_from_then_on() {
    let (app, _dir) = oauth_app("max_age_days = 1").await;
    let token = app.new_token(&user_jwt("alice")).await;
    let created = app.clock.now();
    let body = introspect(&app, &token).await;
    assert_eq!(body["active"], true);
    assert_eq!(body["exp"], created + 86_400);
    app.clock.advance(86_400);
    assert_eq!(introspect(&app, &token).await, json!({"active": false}));
}

#[tokio::test]
async fn anything_but_a_live_agent_token_is_exactly_inactive() {
    let (app, _dir) = oauth_app("rotation_grace_secs = 60").await;
    let jwt = user_jwt("bob");
    let rotated_out = app.new_token(&jwt).await;
    let current = app.new_token(&jwt).await;
    let unknown = {
        let other = spawn_app().await;
        other.new_token(&jwt).await
    };
    // One character changed: always different from the token itself.
    let last = if current.ends_with('0') { '1' } else { '0' };
    let typo = format!("{}{last}", &current[..70]);
    for token in [
        unknown.as_str(),
        typo.as_str(),
        "sk_agt_short",
        jwt.as_str(),
        "not a token at all",
    ] {
        assert_eq!(
            introspect(&app, token).await,
            json!({"active": false}),
            "{token}"
        );
    }
    // In grace it is active until the window ends, then inactive.
    assert_eq!(
        introspect(&app, &rotated_out).await["exp"],
        app.clock.now() + 60
    );
    app.clock.advance(60);
    assert_eq!(
        introspect(&app, &rotated_out).await,
        json!({"active": false})
    );
    // Revoked through the management API: inactive on the next introspection.
    assert_eq!(introspect(&app, &current).await["active"], true);
    assert_eq!(app.revoke(&jwt).await.status().as_u16(), 204);
    assert_eq!(introspect(&app, &current).await, json!({"active": false}));
}

#[tokio::test]
async fn clients_authenticate_by_basic_or_by_the_form_and_nothing_else() {
    let (app, _dir) = oauth_app("").await;
    let token = app.new_token(&user_jwt("carol")).await;
    let url = app.url(INTROSPECT);
    // client_secret_post.
    let resp = app
        .client
        .post(&url)
        .form(&[
            ("token", token.as_str()),
            ("client_id", CLIENT_ID),
            ("client_secret", CLIENT_SECRET),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(resp.json::<Value>().await.unwrap()["active"], true);
    // client_secret_basic with the form-encoding RFC 6749 §2.3.1 asks for,
    // and without it.
    for secret in [
        "other%2Bsecret%2Fwith%25chars-0123456789abcdef",
        "other+secret/with%chars-0123456789abcdef",
    ] {
        let resp = app
            .client
            .post(&url)
            .basic_auth("apache", Some(secret))
            .form(&[("token", token.as_str())])
            .send()
            .await
            .unwrap();
        assert_eq!(
            resp.json::<Value>().await.unwrap()["active"],
            true,
            "{secret}"
        );
    }
    // Refused: no credentials, a wrong secret, an unknown client, a
    // secret of another client, an agent token as the credential.
    let refused = [
        (None, vec![]),
        (
            Some((CLIENT_ID, "wrong-secret-0123456789abcdef0123456")),
            vec![],
        ),
        (Some(("nobody", CLIENT_SECRET)), vec![]),
        (Some(("apache", CLIENT_SECRET)), vec![]),
        (None, vec![("client_id", CLIENT_ID)]),
        (None, vec![("client_id", CLIENT_ID), ("client_secret", "x")]),
    ];
    for (basic, extra) in refused {
        let mut req = app.client.post(&url);
        if let Some((id, secret)) = basic {
            req = req.basic_auth(id, Some(secret));
        }
        let mut form = vec![("token", token.as_str())];
        form.extend(extra);
        let resp = req.form(&form).send().await.unwrap();
        assert_eq!(resp.status().as_u16(), 401, "{basic:?}");
        assert_eq!(resp.headers()["cache-control"], "no-store");
        assert_eq!(
            resp.headers()["www-authenticate"],
            "Basic realm=\"agent-tokens\", charset=\"UTF-8\""
        );
        let body: Value = resp.json().await.unwrap();
        assert_eq!(body["error"], "invalid_client");
    }
    let resp = app
        .client
        .post(&url)
        .bearer_auth(&token)
        .form(&[("token", token.as_str())])
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 401);
}

#[tokio::test]
async fn malformed_requests_get_400_and_say_why() {
    let (app, _dir) = oauth_app("").await;
    let url = app.url(INTROSPECT);
    let cases: Vec<(reqwest::RequestBuilder, &str)> = vec![
        (
            app.client
                .post(&url)
                .basic_auth(CLIENT_ID, Some(CLIENT_SECRET))
                .json(&json!({"token": "x"})),
            "The body must be application/x-www-form-urlencoded.",
        ),
        (
            app.client
                .post(&url)
                .basic_auth(CLIENT_ID, Some(CLIENT_SECRET))
                .form(&[("token_type_hint", "access_token")]),
            "The token parameter is required.",
        ),
        (
            app.client
                .post(&url)
                .basic_auth(CLIENT_ID, Some(CLIENT_SECRET))
                .header("content-type", "application/x-www-form-urlencoded")
                .body("token=a&token=b"),
            "A parameter was sent more than once.",
        ),
    ];
    for (req, message) in cases {
        let resp = req.send().await.unwrap();
        let body = assert_error(resp, 400, "invalid_request").await;
        assert_eq!(body["message"], message);
    }
    // An empty token is one that is not live, not a malformed request.
    let resp = app
        .client
        .post(&url)
        .basic_auth(CLIENT_ID, Some(CLIENT_SECRET))
        .form(&[("token", "")])
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 200);
    assert_eq!(
        resp.json::<Value>().await.unwrap(),
        json!({"active": false})
    );
    // Both methods at once: taken only when the form names the Basic client.
    for (form_id, form_secret, status) in [
        (CLIENT_ID, CLIENT_SECRET, 200),
        ("", "", 200),
        ("another-client", "", 401),
        (CLIENT_ID, "not-the-secret-of-this-client-at-all", 401),
    ] {
        let resp = app
            .client
            .post(&url)
            .basic_auth(CLIENT_ID, Some(CLIENT_SECRET))
            .form(&[
                ("token", "x"),
                ("client_id", form_id),
                ("client_secret", form_secret),
            ])
            .send()
            .await
            .unwrap();
        assert_eq!(
            resp.status().as_u16(),
            status,
            "{form_id:?} {form_secret:?}"
        );
    }
    let resp = app
        .client
        .post(&url)
        .basic_auth(CLIENT_ID, Some(CLIENT_SECRET))
        .form(&[("token", "x".repeat(8 * 1024))])
        .send()
        .await
        .unwrap();
    // The route takes a body: the message must not say otherwise.
    let body = assert_error(resp, 413, "payload_too_large").await;
    assert_eq!(body["message"], "The request body is too large.");
    let resp = app.request(Method::GET, INTROSPECT, None).await;
    assert_eq!(resp.status().as_u16(), 405);
    assert_eq!(resp.headers()["allow"], "POST");
}

#[tokio::test]
async fn rfc7009_revocation_ends_a_token_and_answers_200_for_anything() {
    let (app, _dir) = oauth_app("rotation_grace_secs = 3600").await;
    let jwt = user_jwt("dave");
    let older = app.new_token(&jwt).await;
    let in_grace = app.new_token(&jwt).await;
    let current = app.new_token(&jwt).await;
    // (The second rotation ended the first token's grace already.)
    assert_eq!(introspect(&app, &older).await["active"], false);
    // A token in grace ends alone.
    let resp = post_form(&app, REVOKE, &[("token", &in_grace)]).await;
    assert_eq!(resp.status().as_u16(), 200);
    assert_eq!(resp.headers()["cache-control"], "no-store");
    assert_eq!(resp.text().await.unwrap(), "");
    assert_eq!(introspect(&app, &in_grace).await["active"], false);
    assert_eq!(introspect(&app, &current).await["active"], true);
    // A current token takes the user's grace token with it.
    let newest = app.new_token(&jwt).await;
    assert_eq!(introspect(&app, &current).await["active"], true, "in grace");
    let resp = post_form(
        &app,
        REVOKE,
        &[("token", &newest), ("token_type_hint", "access_token")],
    )
    .await;
    assert_eq!(resp.status().as_u16(), 200);
    for token in [&newest, &current] {
        assert_eq!(introspect(&app, token).await, json!({"active": false}));
        assert_eq!(app.verify_status(token).await, 401);
    }
    let status: Value = app.get_me(&jwt).await.json().await.unwrap();
    assert_eq!(status["has_token"], false);
    // Each revocation is in the user's audit trail, by whoever presented it.
    let resp = app
        .request(Method::GET, "/api/agent-tokens/me/events", Some(&jwt))
        .await;
    let events: Value = resp.json().await.unwrap();
    let revoked: Vec<(&str, &str, Option<&str>)> = events["events"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["type"] == "revoked")
        .map(|e| {
            (
                e["actor"].as_str().unwrap(),
                e["token_prefix"].as_str().unwrap(),
                e["previous_prefix"].as_str(),
            )
        })
        .collect();
    let prefix = |t: &str| format!("{}...", &t[..15]);
    assert_eq!(
        revoked,
        [
            (
                "admin",
                prefix(&newest).as_str(),
                Some(prefix(&current).as_str())
            ),
            ("admin", prefix(&in_grace).as_str(), None),
        ],
        "{events}"
    );
    // Unknown, already revoked or malformed: the same 200, nothing revealed.
    for token in [newest.as_str(), "sk_agt_nope", "garbage"] {
        let resp = post_form(&app, REVOKE, &[("token", token)]).await;
        assert_eq!(resp.status().as_u16(), 200, "{token}");
        assert_eq!(resp.text().await.unwrap(), "");
    }
    // The same client authentication as introspection.
    let other = app.new_token(&user_jwt("erin")).await;
    let resp = app
        .client
        .post(app.url(REVOKE))
        .form(&[("token", other.as_str())])
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 401);
    assert_eq!(app.verify_status(&other).await, 200);
}

#[tokio::test]
async fn the_metadata_names_both_endpoints_and_their_client_authentication() {
    let (app, _dir) = oauth_app("").await;
    let resp = app.request(Method::GET, METADATA, None).await;
    assert_eq!(resp.status().as_u16(), 200);
    let body: Value = resp.json().await.unwrap();
    let base = format!("http://127.0.0.1:{}", app.port);
    assert_eq!(body["issuer"], base);
    assert_eq!(
        body["introspection_endpoint"],
        format!("{base}{INTROSPECT}")
    );
    assert_eq!(body["revocation_endpoint"], format!("{base}{REVOKE}"));
    let methods = json!(["client_secret_basic", "client_secret_post"]);
    assert_eq!(
        body["introspection_endpoint_auth_methods_supported"],
        methods
    );
    assert_eq!(body["revocation_endpoint_auth_methods_supported"], methods);
    // Behind a proxy, the URLs the client used.
    let resp = app
        .client
        .get(app.url(METADATA))
        .header("x-forwarded-proto", "https")
        .header("x-forwarded-host", "auth.example.test")
        .send()
        .await
        .unwrap();
    let body: Value = resp.json().await.unwrap();
    assert_eq!(
        body["introspection_endpoint"],
        "https://auth.example.test/oauth2/introspect"
    );
}

#[tokio::test]
async fn a_bad_clients_file_stops_the_start_with_a_sentence_naming_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("clients");
    let short = "too-short-secret";
    let cases = [
        (
            Some(format!("ok:{CLIENT_SECRET}\nmcp:{short}\n")),
            "line 2 has a secret shorter than 32 characters",
        ),
        (Some("# nobody yet\n".to_owned()), "it lists no client"),
        (None, "Cannot read introspection.clients_file"),
    ];
    for (text, expected) in cases {
        match &text {
            Some(text) => std::fs::write(&path, text).unwrap(),
            None => {
                let _ = std::fs::remove_file(&path);
            }
        }
        let config = with_introspection(TestConfig::hs256(), &path);
        let settings = settings_for(&config, &dir.path().join("db"));
        let err = agent_tokens::http::app::Application::build(&settings)
            .err()
            .expect("the start is refused")
            .to_string();
        assert!(err.contains("introspection.clients_file"), "{err}");
        assert!(err.contains(expected), "{err}");
        assert!(
            !err.contains(short) && !err.contains(CLIENT_SECRET),
            "{err}"
        );
    }
}
