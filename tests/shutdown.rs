//! Graceful shutdown of the real binary under load: every request answered
//! 200 has its effect on disk after a restart.

mod common;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use common::*;
use reqwest::Method;
use serde_json::Value;

/// What one client saw: its last acknowledged token, and whether a request
/// was still unanswered when the server went away.
#[derive(Default, Debug)]
struct Outcome {
    last_acked: Option<String>,
    acked: usize,
    unanswered_at_end: bool,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sigterm_under_load_loses_no_acknowledged_rotation_and_exits_zero() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path());
    let mut server = Server::start(&config);
    let base = Arc::new(server.base());
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));

    let mut clients = Vec::new();
    for i in 0..16 {
        let (base, stop) = (base.clone(), stop.clone());
        clients.push(tokio::spawn(async move {
            let client = reqwest::Client::new();
            let jwt = hs256_jwt(&format!("load-{i}"));
            let mut outcome = Outcome::default();
            while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                let sent = client
                    .post(format!("{base}/api/agent-tokens/me"))
                    .bearer_auth(&jwt)
                    .timeout(Duration::from_secs(20))
                    .send()
                    .await;
                match sent {
                    Ok(resp) if resp.status().as_u16() == 200 => match resp.json::<Value>().await {
                        Ok(body) => {
                            outcome.last_acked = Some(body["token"].as_str().unwrap().to_owned());
                            outcome.acked += 1;
                        }
                        Err(_) => {
                            outcome.unanswered_at_end = true;
                            break;
                        }
                    },
                    Ok(resp) => panic!("unexpected status {}", resp.status()),
                    // Refused or reset: the server is going away.
                    Err(_) => {
                        outcome.unanswered_at_end = true;
                        break;
                    }
                }
            }
            (format!("load-{i}"), jwt, outcome)
        }));
    }
    tokio::time::sleep(Duration::from_millis(700)).await;
    server.signal("TERM");
    let status = tokio::task::spawn_blocking(move || {
        let status = server.wait_exit(15);
        (status, server.drain_log())
    })
    .await
    .unwrap();
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    let (exit, log) = status;
    assert!(exit.success(), "exit {exit:?}; log: {log:#?}");
    assert!(
        log.iter().any(|l| l.contains("SIGTERM: stopping")),
        "{log:#?}"
    );

    let mut outcomes: HashMap<String, (String, Outcome)> = HashMap::new();
    let mut total_acked = 0;
    for client in clients {
        let (user, jwt, outcome) = client.await.unwrap();
        total_acked += outcome.acked;
        outcomes.insert(user, (jwt, outcome));
    }
    assert!(
        total_acked > 50,
        "too little load: {total_acked} acknowledged rotations"
    );

    let server = Server::start(&config);
    let client = reqwest::Client::new();
    for (user, (jwt, outcome)) in &outcomes {
        let Some(acked) = &outcome.last_acked else {
            continue;
        };
        let me_url = format!("{}/api/agent-tokens/me", server.base());
        let (_, me) = call(&client, Method::GET, &me_url, jwt).await;
        let stored = me["token_prefix"].as_str().unwrap();
        if stored == format!("{}...", &acked[..15]) {
            let verified = client
                .get(format!("{}/api/agent-tokens/verify", server.base()))
                .bearer_auth(acked)
                .send()
                .await
                .unwrap();
            assert_eq!(verified.status().as_u16(), 200, "{user}");
        } else {
            // Only a request whose answer never arrived may have replaced it.
            assert!(
                outcome.unanswered_at_end,
                "{user}: stored {stored}, but the last acknowledged token was {}...",
                &acked[..15]
            );
        }
    }
}
