//! One token per user under any interleaving.

use std::collections::HashSet;

use futures::future::join_all;
use serde_json::Value;

use crate::helpers::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_hundred_concurrent_get_or_create_calls_create_exactly_one_token() {
    let app = spawn_app().await;
    let jwt = user_jwt("racer");
    let calls = (0..200).map(|_| app.get_or_create(&jwt));
    let bodies: Vec<Value> = join_all(calls.map(|f| async {
        let resp = f.await;
        assert_eq!(resp.status().as_u16(), 200);
        resp.json::<Value>().await.unwrap()
    }))
    .await;
    let new: Vec<&Value> = bodies.iter().filter(|b| b["is_new"] == true).collect();
    assert_eq!(new.len(), 1, "exactly one is_new: true");
    let prefixes: HashSet<&str> = bodies
        .iter()
        .map(|b| b["token_prefix"].as_str().unwrap())
        .collect();
    assert_eq!(prefixes.len(), 1, "one prefix for everyone: {prefixes:?}");
    assert!(bodies
        .iter()
        .filter(|b| b["is_new"] == false)
        .all(|b| b["token"].is_null()));

    let token = new[0]["token"].as_str().unwrap().to_owned();
    let (stored, _dir) = app.stop_and_inspect().await;
    assert_eq!(stored.users.len(), 1);
    assert_eq!(stored.users[0].1.hash, sha256(&token));
    assert_eq!(stored.index.len(), 1);
    assert_eq!(stored.index[0].0.as_bytes(), &sha256(&token));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_hundred_concurrent_rotations_leave_one_handed_out_token_and_a_matching_index() {
    let app = spawn_app().await;
    let jwt = user_jwt("rotator");
    let tokens: Vec<String> = join_all((0..100).map(|_| async {
        let resp = app.rotate(&jwt).await;
        assert_eq!(resp.status().as_u16(), 200);
        let body: Value = resp.json().await.unwrap();
        body["token"].as_str().unwrap().to_owned()
    }))
    .await;
    let distinct: HashSet<&String> = tokens.iter().collect();
    assert_eq!(
        distinct.len(),
        100,
        "every rotation hands out a fresh token"
    );

    let (stored, _dir) = app.stop_and_inspect().await;
    assert_eq!(stored.users.len(), 1);
    assert_eq!(stored.index.len(), 1, "exactly one stored hash");
    let stored_hash = stored.users[0].1.hash;
    assert!(
        tokens.iter().any(|t| sha256(t) == stored_hash),
        "the stored hash is one that was handed out"
    );
    assert_eq!(stored.index[0].0.as_bytes(), &stored_hash);
    assert_eq!(stored.index[0].1.user_id, "rotator");
    assert_eq!(stored.index[0].1.prefix, stored.users[0].1.prefix);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn mixed_concurrent_operations_across_users_keep_the_trees_in_agreement() {
    let app = spawn_app().await;
    let ops = (0..300).map(|i| {
        let jwt = user_jwt(&format!("user-{}", i % 10));
        let app = &app;
        async move {
            let resp = match i % 4 {
                0 => app.rotate(&jwt).await,
                1 => app.get_or_create(&jwt).await,
                2 => app.revoke(&jwt).await,
                _ => app.get_me(&jwt).await,
            };
            assert!(resp.status().is_success(), "{}", resp.status());
        }
    });
    join_all(ops).await;
    let (stored, _dir) = app.stop_and_inspect().await;
    assert_eq!(stored.users.len(), stored.index.len());
    for (user, record) in &stored.users {
        let entry = stored
            .index
            .iter()
            .find(|(h, _)| h.as_bytes() == &record.hash)
            .expect("every record's hash is in the index");
        assert_eq!(&entry.1.user_id, user);
    }
}

/// GET /me answered while the same user rotates: an answer never shows a
/// token whose successor was acknowledged before the request was sent.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn get_me_during_rotations_never_shows_a_token_replaced_before_it_was_asked() {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::{Arc, Mutex};
    use std::time::Instant;

    let app = Arc::new(spawn_app().await);
    let jwt = user_jwt("watcher");
    // (prefix, when its rotation was answered), in order.
    let issued = Arc::new(Mutex::new(Vec::<(String, Instant)>::new()));
    let done = Arc::new(AtomicBool::new(false));
    let rotator = {
        let (app, issued, done, jwt) = (app.clone(), issued.clone(), done.clone(), jwt.clone());
        tokio::spawn(async move {
            for _ in 0..40 {
                let body: Value = app.rotate(&jwt).await.json().await.unwrap();
                let prefix = body["token_prefix"].as_str().unwrap().to_owned();
                issued.lock().unwrap().push((prefix, Instant::now()));
            }
            done.store(true, Ordering::SeqCst);
        })
    };
    let mut readers = Vec::new();
    for _ in 0..6 {
        let (app, done, jwt) = (app.clone(), done.clone(), jwt.clone());
        readers.push(tokio::spawn(async move {
            let mut seen = Vec::new();
            while !done.load(Ordering::SeqCst) {
                let sent = Instant::now();
                let body: Value = app.get_me(&jwt).await.json().await.unwrap();
                seen.push((sent, body["token_prefix"].as_str().map(str::to_owned)));
            }
            seen
        }));
    }
    rotator.await.unwrap();
    let issued = issued.lock().unwrap().clone();
    let mut checked = 0;
    for reader in readers {
        for (sent, prefix) in reader.await.unwrap() {
            checked += 1;
            // The newest token acknowledged before this request was sent.
            let Some(floor) = issued.iter().rposition(|(_, at)| *at < sent) else {
                continue;
            };
            let prefix = prefix.expect("a token exists once one was acknowledged");
            let shown = issued
                .iter()
                .position(|(p, _)| *p == prefix)
                .expect("GET /me shows an issued token");
            assert!(
                shown >= floor,
                "GET /me showed token {shown} although token {floor} replaced it before the request"
            );
        }
    }
    assert!(checked > 50, "only {checked} reads ran");
}
