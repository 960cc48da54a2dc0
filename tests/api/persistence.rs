//! What is stored, and what survives closing and reopening the store.

use std::path::Path;

use serde_json::Value;

use crate::helpers::*;

#[tokio::test]
async fn tokens_survive_a_restart() {
    let app = spawn_app().await;
    let alice = user_jwt("alice");
    let bob = user_jwt("bob");
    let a: Value = app.rotate(&alice).await.json().await.unwrap();
    let b: Value = app.get_or_create(&bob).await.json().await.unwrap();
    app.revoke(&user_jwt("carol")).await;

    let app = app.restart().await;
    let sa: Value = app.get_me(&alice).await.json().await.unwrap();
    assert_eq!(sa["token_prefix"], a["token_prefix"]);
    let again: Value = app.get_or_create(&bob).await.json().await.unwrap();
    assert_eq!(again["is_new"], false);
    assert_eq!(again["token_prefix"], b["token_prefix"]);
    let sc: Value = app.get_me(&user_jwt("carol")).await.json().await.unwrap();
    assert_eq!(sc["has_token"], false);
}

#[tokio::test]
async fn a_revocation_survives_a_restart() {
    let app = spawn_app().await;
    let jwt = user_jwt("dora");
    app.rotate(&jwt).await;
    app.revoke(&jwt).await;
    let app = app.restart().await;
    let s: Value = app.get_me(&jwt).await.json().await.unwrap();
    assert_eq!(s["has_token"], false);
    let (stored, _dir) = app.stop_and_inspect().await;
    assert!(stored.index.is_empty());
}

fn files_under(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            out.extend(files_under(&path));
        } else {
            out.push(path);
        }
    }
    out
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    // (The journal is preallocated: tens of MiB, mostly zeros.)
    memchr::memmem::find(haystack, needle).is_some()
}

#[tokio::test]
async fn no_file_in_the_data_directory_contains_an_issued_token() {
    let app = spawn_app().await;
    let mut issued = Vec::new();
    for i in 0..20 {
        let jwt = user_jwt(&format!("user-{i}"));
        let body: Value = app.get_or_create(&jwt).await.json().await.unwrap();
        issued.push(body["token"].as_str().unwrap().to_owned());
        let body: Value = app.rotate(&jwt).await.json().await.unwrap();
        issued.push(body["token"].as_str().unwrap().to_owned());
        if i % 3 == 0 {
            app.revoke(&jwt).await;
        }
    }
    let (_, dir, _) = {
        let (dir, config) = app.stop().await;
        ((), dir, config)
    };
    let files = files_under(dir.path());
    assert!(!files.is_empty());
    let mut scanned = 0;
    for file in files {
        let bytes = std::fs::read(&file).unwrap();
        scanned += bytes.len();
        for token in &issued {
            let body_hex = &token[7..];
            let raw = hex::decode(body_hex).unwrap();
            assert!(!contains(&bytes, token.as_bytes()), "raw token in {file:?}");
            assert!(
                !contains(&bytes, body_hex.as_bytes()),
                "token hex in {file:?}"
            );
            assert!(!contains(&bytes, &raw), "token bytes in {file:?}");
            // The display prefix is stored on purpose; the rest never is.
            assert!(
                !contains(&bytes, &token.as_bytes()[15..]),
                "token tail in {file:?}"
            );
        }
    }
    assert!(scanned > 0);
}

#[tokio::test]
async fn a_store_from_a_newer_release_is_refused_with_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("db");
    {
        agent_tokens::store::offline::Offline::open(&path, 8).unwrap();
        agent_tokens::store::raw::put(&path, "meta", b"schema_version", &99u32.to_be_bytes())
            .unwrap();
    }
    let err = agent_tokens::store::offline::Offline::open(&path, 8).unwrap_err();
    assert!(err.to_string().contains("schema version 99"), "{err}");
    // Nor is one of an earlier release (sled) that a newer release wrote.
    let old = dir.path().join("old");
    {
        let db = legacy_db(&old);
        db.open_tree("meta")
            .unwrap()
            .insert("schema_version", &99u32.to_be_bytes())
            .unwrap();
        close_legacy(db, &old);
    }
    let err = agent_tokens::store::offline::Offline::open(&old, 8).unwrap_err();
    assert!(err.to_string().contains("schema version 99"), "{err}");
    assert!(
        old.join("db").is_file(),
        "the refused store is left as it was"
    );
}
