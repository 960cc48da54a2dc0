//! Operator routes: readiness and Prometheus metrics.

use reqwest::Method;

use crate::helpers::*;

#[tokio::test]
async fn readyz_is_200_when_the_store_takes_a_durable_write() {
    let app = spawn_app().await;
    let resp = app.request(Method::GET, "/readyz", None).await;
    assert_eq!(resp.status().as_u16(), 200);
    assert_eq!(resp.text().await.unwrap(), "ready");
}

/// Parses the text format strictly enough to catch a bad name or label.
/// One exposition line: metric name, labels, value.
type Sample = (String, Vec<(String, String)>, f64);

fn samples(text: &str) -> Vec<Sample> {
    let name_ok = |n: &str| {
        !n.is_empty()
            && n.chars()
                .next()
                .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
            && n.chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
    };
    let mut out = Vec::new();
    for line in text.lines() {
        if line.starts_with("# HELP ") || line.starts_with("# TYPE ") {
            let name = line.split_whitespace().nth(2).unwrap();
            assert!(name_ok(name), "bad metric name in {line:?}");
            assert!(name.starts_with("agent_tokens_"), "unprefixed: {line:?}");
            continue;
        }
        assert!(
            !line.starts_with('#') && !line.is_empty(),
            "stray line {line:?}"
        );
        let (series, value) = line.rsplit_once(' ').unwrap();
        let value: f64 = value
            .parse()
            .unwrap_or_else(|_| panic!("bad value in {line:?}"));
        let (name, labels) = match series.split_once('{') {
            Some((name, rest)) => {
                let rest = rest.strip_suffix('}').unwrap();
                let labels = rest
                    .split("\",")
                    .filter(|p| !p.is_empty())
                    .map(|pair| {
                        let (k, v) = pair.split_once('=').unwrap();
                        assert!(name_ok(k), "bad label name in {line:?}");
                        (k.to_owned(), v.trim_matches('"').to_owned())
                    })
                    .collect();
                (name.to_owned(), labels)
            }
            None => (series.to_owned(), Vec::new()),
        };
        assert!(name_ok(&name), "bad metric name in {line:?}");
        out.push((name, labels, value));
    }
    out
}

fn value_of(samples: &[Sample], name: &str, labels: &[(&str, &str)]) -> f64 {
    samples
        .iter()
        .filter(|(n, l, _)| {
            n == name
                && labels
                    .iter()
                    .all(|(k, v)| l.iter().any(|(lk, lv)| lk == k && lv == v))
        })
        .map(|(_, _, v)| *v)
        .sum()
}

#[tokio::test]
async fn metrics_count_requests_by_route_token_operations_and_flushes() {
    if crate::helpers::on_postgres() {
        eprintln!("embedded store only: this test counts the embedded store's flushes");
        return;
    }
    let app = spawn_app().await;
    let before = samples(
        &app.request(Method::GET, "/metrics", None)
            .await
            .text()
            .await
            .unwrap(),
    );
    let jwt = user_jwt("metered");
    let token = app.new_token(&jwt).await;
    app.get_or_create(&jwt).await;
    assert_eq!(app.verify_status(&token).await, 200);
    assert_eq!(app.verify_status("sk_agt_bad").await, 401);
    app.revoke(&jwt).await;
    app.request(Method::GET, "/no/such/route", None).await;

    let resp = app.request(Method::GET, "/metrics", None).await;
    assert_eq!(resp.status().as_u16(), 200);
    assert_eq!(
        resp.headers().get("content-type").unwrap(),
        "text/plain; version=0.0.4; charset=utf-8"
    );
    let after = samples(&resp.text().await.unwrap());
    let delta = |name: &str, labels: &[(&str, &str)]| {
        value_of(&after, name, labels) - value_of(&before, name, labels)
    };
    // Tests in this binary share the process-wide registry: compare deltas, at least.
    for op in ["created", "revoked", "verify_ok", "verify_failed"] {
        assert!(
            delta("agent_tokens_token_operations_total", &[("operation", op)]) >= 1.0,
            "{op}"
        );
    }
    assert!(
        delta(
            "agent_tokens_http_requests_total",
            &[
                ("route", "/api/agent-tokens/verify"),
                ("method", "GET"),
                ("status", "401")
            ]
        ) >= 1.0
    );
    assert!(
        delta(
            "agent_tokens_http_requests_total",
            &[
                ("route", "/api/agent-tokens/me"),
                ("method", "POST"),
                ("status", "200")
            ]
        ) >= 1.0
    );
    assert!(
        delta(
            "agent_tokens_http_requests_total",
            &[("route", "unmatched"), ("status", "404")]
        ) >= 1.0
    );
    assert!(delta("agent_tokens_storage_flush_duration_seconds_count", &[]) >= 1.0);
    assert!(delta("agent_tokens_storage_flush_waiters_count", &[]) >= 1.0);
    // Every HTTP series carries route, method (and status for the counter).
    for (name, labels, _) in &after {
        if name.starts_with("agent_tokens_http_") {
            let keys: Vec<&str> = labels.iter().map(|(k, _)| k.as_str()).collect();
            assert!(keys.contains(&"route"), "{name} {labels:?}");
            assert!(keys.contains(&"method"), "{name} {labels:?}");
            assert!(
                labels
                    .iter()
                    .all(|(_, v)| !v.contains("sk_agt_") && !v.contains("metered")),
                "no credential or user id in labels: {labels:?}"
            );
        }
    }
}

/// The method is the client's to choose: any run of letters is one. Each
/// would be a new series for the life of the process (memory an anonymous
/// client could grow at will), so unknown methods share one label.
#[tokio::test]
async fn invented_methods_share_one_metrics_label() {
    let app = spawn_app().await;
    let invented: Vec<String> = (0..50).map(|i| format!("INVENTED{i:02}XQ")).collect();
    for name in &invented {
        let method = Method::from_bytes(name.as_bytes()).unwrap();
        let resp = app
            .request(method.clone(), "/api/agent-tokens/me", None)
            .await;
        assert_eq!(resp.status().as_u16(), 405, "{name}");
        app.request(method, "/no/such/route", None).await;
    }
    let text = app
        .request(Method::GET, "/metrics", None)
        .await
        .text()
        .await
        .unwrap();
    assert!(
        !text.contains("INVENTED"),
        "an invented method became a label"
    );
    let after = samples(&text);
    assert!(
        value_of(
            &after,
            "agent_tokens_http_requests_total",
            &[
                ("route", "/api/agent-tokens/me"),
                ("method", "other"),
                ("status", "405")
            ]
        ) >= 50.0
    );
}
