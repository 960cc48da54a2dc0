//! Remembered answers for the two hot reads: verify (by token hash) and
//! `GET /me` (by user id). A hit skips the store read, the decoding and the
//! JSON rendering: the answer's bytes are served as they were built.
//!
//! Exact, not "fresh within a TTL": this process is the store's only
//! writer, and every write reports the keys it changed
//! ([`ChangeListener`]) after readers can see it and before any operation
//! in it is answered. So a revoke or rotation acknowledged to its client is
//! never followed by an answer remembered from before it. Time-dependent
//! decisions (expiry, grace end) are made again on every hit.
//!
//! The race that remains is a read that started before a write and finishes
//! after it: it must not remember what it read. A reader takes a
//! [`Ticket`] (the cache's generation) before it reads the store, and
//! remembers only if no change was reported since; reporting a change bumps
//! the generation and forgets the keys under the same lock as that check.

use std::hash::Hash;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use actix_web::http::header::HeaderValue;
use actix_web::web::Bytes;
use quick_cache::sync::Cache;
use quick_cache::Equivalent;

use crate::store::{ChangeListener, Changes, IndexEntry};

/// Entries per cache: the hot working set of tokens (and of users), not
/// every token. About 0.5 KiB each, so at most ~8 MiB per cache.
pub const ANSWER_CACHE_ENTRIES: usize = 16_384;

/// A cache whose entries are forgotten whenever the store changes them.
pub struct AnswerCache<K, V> {
    entries: Cache<K, V>,
    generation: AtomicU64,
    /// Serializes "remember if unchanged" against "bump and forget".
    writes: Mutex<()>,
}

/// Taken before reading the store; see the module documentation.
#[must_use]
pub struct Ticket(u64);

impl<K, V> AnswerCache<K, V>
where
    K: Eq + Hash + Clone,
    V: Clone,
{
    pub fn new(capacity: usize) -> Self {
        Self {
            entries: Cache::new(capacity),
            generation: AtomicU64::new(0),
            writes: Mutex::new(()),
        }
    }

    pub fn get<Q>(&self, key: &Q) -> Option<V>
    where
        Q: Hash + Equivalent<K> + ?Sized,
    {
        self.entries.get(key)
    }

    /// Take before reading what will be remembered.
    pub fn ticket(&self) -> Ticket {
        Ticket(self.generation.load(Ordering::SeqCst))
    }

    /// Remembers `value`, unless a change was reported since `ticket` was
    /// taken (the value may predate it).
    pub fn remember(&self, ticket: Ticket, key: K, value: V) {
        let _writes = self.writes.lock().unwrap_or_else(PoisonError::into_inner);
        if self.generation.load(Ordering::SeqCst) == ticket.0 {
            self.entries.insert(key, value);
        }
    }

    /// Forgets `keys`, and refuses what reads in flight would remember.
    pub fn forget<'a, Q>(&self, keys: impl IntoIterator<Item = &'a Q>)
    where
        Q: Hash + Equivalent<K> + ?Sized + 'a,
    {
        let _writes = self.writes.lock().unwrap_or_else(PoisonError::into_inner);
        self.generation.fetch_add(1, Ordering::SeqCst);
        for key in keys {
            self.entries.remove(key);
        }
    }

    /// Forgets everything.
    pub fn forget_all(&self) {
        let _writes = self.writes.lock().unwrap_or_else(PoisonError::into_inner);
        self.generation.fetch_add(1, Ordering::SeqCst);
        self.entries.clear();
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

/// A live token's verify answer, as built from its index entry.
pub struct VerifyAnswer {
    /// For the time checks made on every hit, and the last-used stamp.
    pub entry: IndexEntry,
    pub user_header: HeaderValue,
    pub body: Bytes,
}

/// The caches of the two hot reads, kept exact by the store's writes.
pub struct Answers {
    /// Token hash → its verify answer.
    pub verify: AnswerCache<[u8; 32], Arc<VerifyAnswer>>,
    /// User id → the `GET /me` body.
    pub status: AnswerCache<Box<[u8]>, Bytes>,
}

impl Answers {
    pub fn new(capacity: usize) -> Self {
        Self {
            verify: AnswerCache::new(capacity),
            status: AnswerCache::new(capacity),
        }
    }
}

impl Default for Answers {
    fn default() -> Self {
        Self::new(ANSWER_CACHE_ENTRIES)
    }
}

impl ChangeListener for Answers {
    fn committed(&self, changes: &Changes) {
        if !changes.tokens.is_empty() {
            self.verify.forget(
                changes
                    .tokens
                    .iter()
                    .filter_map(|key| <&[u8; 32]>::try_from(key.as_slice()).ok()),
            );
        }
        if !changes.users.is_empty() {
            self.status
                .forget(changes.users.iter().map(|key| key.as_slice()));
        }
    }

    fn reopening(&self) {
        self.verify.forget_all();
        self.status.forget_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn remembers_and_forgets_by_key() {
        let cache: AnswerCache<[u8; 32], u32> = AnswerCache::new(16);
        cache.remember(cache.ticket(), [1; 32], 10);
        cache.remember(cache.ticket(), [2; 32], 20);
        assert_eq!(cache.get(&[1; 32]), Some(10));
        cache.forget([&[1u8; 32]]);
        assert_eq!(cache.get(&[1; 32]), None);
        assert_eq!(cache.get(&[2; 32]), Some(20));
        cache.forget_all();
        assert!(cache.is_empty());
    }

    #[test]
    fn a_read_that_overlapped_a_change_is_not_remembered() {
        let cache: AnswerCache<[u8; 32], u32> = AnswerCache::new(16);
        // A reader takes its ticket and reads the old value...
        let ticket = cache.ticket();
        // ...a write to an unrelated key commits meanwhile...
        cache.forget([&[9u8; 32]]);
        // ...so what the reader read is not remembered (it may be stale).
        cache.remember(ticket, [1; 32], 10);
        assert_eq!(cache.get(&[1; 32]), None);
        // A read that started after the change is.
        cache.remember(cache.ticket(), [1; 32], 11);
        assert_eq!(cache.get(&[1; 32]), Some(11));
    }

    #[test]
    fn reported_changes_reach_the_right_cache() {
        let answers = Answers::new(16);
        answers.status.remember(
            answers.status.ticket(),
            b"alice"[..].into(),
            Bytes::from("a"),
        );
        answers
            .status
            .remember(answers.status.ticket(), b"bob"[..].into(), Bytes::from("b"));
        answers.committed(&Changes {
            users: vec![b"alice".to_vec()],
            tokens: vec![],
        });
        assert_eq!(answers.status.get(&b"alice"[..]), None);
        assert_eq!(answers.status.get(&b"bob"[..]), Some(Bytes::from("b")));
        answers.reopening();
        assert!(answers.status.is_empty());
    }
}
