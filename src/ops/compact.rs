//! `agent-tokens compact`: an offline major compaction of the store.
//!
//! The server never needs it: fjall merges its tables in the background as
//! they accumulate, so the store stays near its live size (figures in
//! docs/benchmarks.md, "Memory and disk"). The command is for an operator
//! who wants the smallest store right now, say after revoking most tokens
//! or before taking a copy of the directory: it rewrites every keyspace
//! into one sorted run, dropping what was removed or overwritten, and
//! syncs it.

use crate::store::error::StoreError;
use crate::store::offline::Offline;

/// Compacts every keyspace of `store` fully; returns its size on disk
/// before and after, in bytes.
pub fn compact_offline(store: Offline) -> Result<(u64, u64), StoreError> {
    store.compact()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::token::PlainToken;
    use crate::domain::user::UserId;
    use crate::store::db::Db;
    use crate::store::records::NewToken;
    use ring::rand::SystemRandom;

    #[tokio::test]
    async fn compaction_keeps_every_live_record_and_drops_the_rest() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db");
        let rng = SystemRandom::new();
        let store = Db::open(&path, 4).unwrap();
        let mut current = Vec::new();
        for n in 0..200 {
            let user = UserId::parse(&format!("user-{n}")).unwrap();
            let mut last = None;
            for _ in 0..5 {
                let token = PlainToken::generate(&rng).unwrap();
                store
                    .rotate(&user, &NewToken::of(&token), 1_790_000_000, 0)
                    .await
                    .unwrap();
                last = Some(token);
            }
            if n % 2 == 0 {
                store.revoke(&user).await.unwrap();
            } else {
                current.push((user, last.unwrap()));
            }
        }
        drop(store);
        let (before, after) = compact_offline(Offline::open(&path, 4).unwrap()).unwrap();
        assert!(before > 0 && after > 0, "{before} -> {after}");

        let store = Offline::open(&path, 4).unwrap();
        let users: std::collections::HashMap<String, _> =
            store.users().map(Result::unwrap).collect();
        assert_eq!(users.len(), 100);
        assert_eq!(store.index_entries().count(), 100);
        for (user, token) in &current {
            let entry = store.lookup(&token.hash()).unwrap().unwrap();
            assert_eq!(&entry.user_id, user.as_str());
            assert_eq!(users[user.as_str()].hash, *token.hash().as_bytes());
        }
    }
}
