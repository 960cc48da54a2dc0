//! Rate limits as a deployment behind one proxy sees them: changes limited
//! per user, an address-keyed limit only when the operator asks for it.

use futures::future::join_all;
use reqwest::Method;
use serde_json::Value;

use crate::helpers::*;

const ME: &str = "/api/agent-tokens/me";

/// The defaults: a `[rate_limit]` section with nothing in it.
fn defaults() -> TestConfig {
    TestConfig::hs256().with("[rate_limit]")
}

async fn assert_rate_limited(resp: reqwest::Response, message: &str) -> u64 {
    let retry_after: u64 = resp
        .headers()
        .get("retry-after")
        .expect("a 429 carries Retry-After")
        .to_str()
        .unwrap()
        .parse()
        .expect("Retry-After is whole seconds");
    assert!(retry_after >= 1, "{retry_after}");
    let body = assert_error(resp, 429, "rate_limited").await;
    assert_eq!(body["message"], message);
    retry_after
}

const TOO_MANY_CHANGES: &str = "Too many token changes for this user. Retry later.";
const TOO_MANY_FROM_ADDRESS: &str = "Too many requests from this address. Retry later.";

/// A request with a client address set by a (pretend) trusted proxy.
async fn from_address(
    app: &TestApp,
    method: Method,
    bearer: &str,
    address: Option<&str>,
) -> reqwest::Response {
    let mut req = app.client.request(method, app.url(ME)).bearer_auth(bearer);
    if let Some(address) = address {
        req = req.header("X-Real-IP", address);
    }
    req.send().await.unwrap()
}

#[tokio::test]
async fn with_defaults_300_requests_by_60_users_from_one_address_all_succeed() {
    let app = spawn_app_with(defaults()).await;
    // Each user creates, reads, rotates, reads and revokes: five requests,
    // three changes; all 60 users at once, as behind one proxy.
    let users = (0..60).map(|n| {
        let app = &app;
        async move {
            let jwt = user_jwt(&format!("user-{n}"));
            let mut statuses = vec![app.get_or_create(&jwt).await.status().as_u16()];
            statuses.push(app.get_me(&jwt).await.status().as_u16());
            statuses.push(app.rotate(&jwt).await.status().as_u16());
            statuses.push(app.get_me(&jwt).await.status().as_u16());
            statuses.push(app.revoke(&jwt).await.status().as_u16());
            statuses
        }
    });
    let statuses: Vec<u16> = join_all(users).await.into_iter().flatten().collect();
    assert_eq!(statuses.len(), 300);
    assert!(
        statuses.iter().all(|s| *s == 200 || *s == 204),
        "{statuses:?}"
    );
}

#[tokio::test]
async fn with_defaults_100_bad_jwts_from_one_address_get_401_and_then_a_good_request_succeeds() {
    let app = spawn_app_with(defaults()).await;
    let forged = sign_hs(
        jsonwebtoken::Algorithm::HS256,
        &claims("mallory"),
        b"not-the-secret-but-at-least-32-bytes-long",
    );
    for bad in ["not-a-jwt", forged.as_str()] {
        for _ in 0..50 {
            assert_invalid_jwt(app.get_me(bad).await).await;
        }
    }
    let resp = app.rotate(&user_jwt("alice")).await;
    assert_eq!(resp.status().as_u16(), 200);
}

#[tokio::test]
async fn with_defaults_a_user_rotating_in_a_tight_loop_is_limited_and_others_are_not() {
    let app = spawn_app_with(defaults()).await;
    let looping = user_jwt("looper");
    let started = std::time::Instant::now();
    let mut rotations = 0;
    let retry_after = loop {
        let resp = app.rotate(&looping).await;
        if resp.status().as_u16() == 429 {
            break assert_rate_limited(resp, TOO_MANY_CHANGES).await;
        }
        assert_eq!(resp.status().as_u16(), 200);
        rotations += 1;
        // The default burst, plus one a second refilled while it ran.
        let allowed = 101 + started.elapsed().as_secs();
        assert!(rotations <= allowed, "a tight loop must reach the limit");
    };
    assert!(rotations >= 100, "{rotations} rotations before the 429");
    assert!(retry_after <= 2, "{retry_after}");
    // Reads and no-op answers are free for the limited user.
    assert_eq!(app.get_me(&looping).await.status().as_u16(), 200);
    let resp = app.get_or_create(&looping).await;
    assert_eq!(resp.status().as_u16(), 200);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["is_new"], false);
    // Another user is not affected, from the same address.
    let other = user_jwt("bystander");
    assert_eq!(app.rotate(&other).await.status().as_u16(), 200);
    assert_eq!(app.get_or_create(&other).await.status().as_u16(), 200);
    assert_eq!(app.revoke(&other).await.status().as_u16(), 204);
}

#[tokio::test]
async fn a_users_429_never_affects_another_user_and_a_revoke_is_never_refused() {
    let app = spawn_app_with(
        TestConfig::hs256().with("[rate_limit]\nmanagement_per_minute = 1\nmanagement_burst = 3"),
    )
    .await;
    let alice = user_jwt("alice");
    let bob = user_jwt("bob");
    let mut token = String::new();
    for _ in 0..3 {
        token = app.new_token(&alice).await;
    }
    let retry_after = assert_rate_limited(app.rotate(&alice).await, TOO_MANY_CHANGES).await;
    assert!((1..=60).contains(&retry_after), "{retry_after}");
    // The refused rotation changed nothing: the third token still works.
    assert_eq!(app.verify_status(&token).await, 200);
    // Bob's quota is his own.
    for _ in 0..3 {
        assert_eq!(app.rotate(&bob).await.status().as_u16(), 200);
    }
    // A revoke is never refused (a leaked token must die), even over the limit...
    assert_eq!(app.revoke(&alice).await.status().as_u16(), 204);
    // ...a revoke with nothing to remove costs nothing and is answered...
    for _ in 0..5 {
        assert_eq!(app.revoke(&alice).await.status().as_u16(), 204);
    }
    // ...and a get-or-create that would create is a change, so it waits.
    assert_rate_limited(app.get_or_create(&alice).await, TOO_MANY_CHANGES).await;
    let resp = app.get_me(&alice).await;
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["has_token"], false);
    // Bob, at his limit too, keeps his token and can read it.
    assert_rate_limited(app.rotate(&bob).await, TOO_MANY_CHANGES).await;
    let body: Value = app.get_me(&bob).await.json().await.unwrap();
    assert_eq!(body["has_token"], true);
}

#[tokio::test]
async fn a_get_or_create_that_finds_a_token_costs_nothing() {
    let app = spawn_app_with(
        TestConfig::hs256().with("[rate_limit]\nmanagement_per_minute = 1\nmanagement_burst = 1"),
    )
    .await;
    let jwt = user_jwt("carol");
    let body: Value = app.get_or_create(&jwt).await.json().await.unwrap();
    assert_eq!(body["is_new"], true);
    for _ in 0..20 {
        let resp = app.get_or_create(&jwt).await;
        assert_eq!(resp.status().as_u16(), 200);
        let body: Value = resp.json().await.unwrap();
        assert_eq!(body["is_new"], false);
        assert_eq!(app.get_me(&jwt).await.status().as_u16(), 200);
    }
    assert_rate_limited(app.rotate(&jwt).await, TOO_MANY_CHANGES).await;
}

#[tokio::test]
async fn with_a_client_ip_header_each_address_is_limited_before_the_jwt() {
    let app = spawn_app_with(TestConfig::hs256().with(
        "[rate_limit]\nclient_ip_header = \"X-Real-IP\"\naddress_per_minute = 1\naddress_burst = 5",
    ))
    .await;
    let good = user_jwt("dave");
    for _ in 0..5 {
        let resp = from_address(&app, Method::GET, "not-a-jwt", Some("203.0.113.7")).await;
        assert_eq!(resp.status().as_u16(), 401);
    }
    // The sixth request from that address is refused before its JWT is read.
    let resp = from_address(&app, Method::GET, &good, Some("203.0.113.7")).await;
    let retry_after = assert_rate_limited(resp, TOO_MANY_FROM_ADDRESS).await;
    assert!((1..=60).contains(&retry_after), "{retry_after}");
    // Another address, and an X-Forwarded-For-style list ending in another
    // address, are not affected.
    let resp = from_address(&app, Method::GET, &good, Some("203.0.113.8")).await;
    assert_eq!(resp.status().as_u16(), 200);
    let resp = from_address(&app, Method::GET, &good, Some("203.0.113.7, 198.51.100.1")).await;
    assert_eq!(resp.status().as_u16(), 200);
    // Without the header the request is not keyed on the proxy's address.
    for _ in 0..20 {
        let resp = from_address(&app, Method::GET, &good, None).await;
        assert_eq!(resp.status().as_u16(), 200);
    }
    // The verify route is never limited.
    for _ in 0..20 {
        let resp = app
            .client
            .get(app.url("/api/agent-tokens/verify"))
            .bearer_auth("sk_agt_nope")
            .header("X-Real-IP", "203.0.113.7")
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status().as_u16(), 401);
    }
}

#[tokio::test]
async fn per_address_on_a_directly_exposed_server_keys_on_the_peer() {
    let app = spawn_app_with(
        TestConfig::hs256()
            .with("[rate_limit]\nper_address = true\naddress_per_minute = 1\naddress_burst = 5"),
    )
    .await;
    for _ in 0..5 {
        assert_invalid_jwt(app.get_me("not-a-jwt").await).await;
    }
    assert_rate_limited(app.get_me(&user_jwt("erin")).await, TOO_MANY_FROM_ADDRESS).await;
}

#[tokio::test]
async fn management_per_minute_0_turns_every_rate_limit_off() {
    let app = spawn_app_with(TestConfig::hs256().with(
        "[rate_limit]\nmanagement_per_minute = 0\nmanagement_burst = 1\nper_address = true\nclient_ip_header = \"X-Real-IP\"\naddress_per_minute = 1\naddress_burst = 1",
    ))
    .await;
    let jwt = user_jwt("frank");
    for _ in 0..40 {
        let resp = from_address(&app, Method::POST, &jwt, Some("203.0.113.9")).await;
        assert_eq!(resp.status().as_u16(), 200);
        let resp = from_address(&app, Method::GET, "not-a-jwt", None).await;
        assert_eq!(resp.status().as_u16(), 401);
    }
}
