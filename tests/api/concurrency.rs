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
