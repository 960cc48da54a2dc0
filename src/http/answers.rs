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
use std::sync::{Mutex, PoisonError};

use actix_web::http::header::{HeaderValue, InvalidHeaderValue};
use actix_web::web::{Buf, Bytes};
use quick_cache::sync::Cache;
use quick_cache::{DefaultHashBuilder, Equivalent};

use crate::store::records::{ChangeListener, Changes, IndexEntry};

/// Entries per cache: room for 100,000 active tokens (and users) visited
/// in turn; what it costs is in docs/configuration.md, "Memory".
pub const ANSWER_CACHE_ENTRIES: usize = 131_072;

/// A cache whose entries are forgotten whenever the store changes them.
pub struct AnswerCache<K, V> {
    entries: Cache<K, V>,
    /// Off for a store other processes change (PostgreSQL's replicas):
    /// nothing is remembered, every answer is read.
    enabled: bool,
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
        Self::with(capacity, true)
    }

    fn with(capacity: usize, enabled: bool) -> Self {
        Self {
            entries: Cache::new(capacity),
            enabled,
            generation: AtomicU64::new(0),
            writes: Mutex::new(()),
        }
    }

    pub fn get<Q>(&self, key: &Q) -> Option<V>
    where
        Q: Hash + Equivalent<K> + ?Sized,
    {
        if !self.enabled {
            return None;
        }
        self.entries.get(key)
    }

    /// Take before reading what will be remembered.
    pub fn ticket(&self) -> Ticket {
        Ticket(self.generation.load(Ordering::SeqCst))
    }

    /// Remembers `value`, unless a change was reported since `ticket` was
    /// taken (the value may predate it).
    pub fn remember(&self, ticket: Ticket, key: K, value: V) {
        if !self.enabled {
            return;
        }
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

    /// Replaces what `key` holds by `update` of it, if it holds anything.
    /// For changes that leave the answer valid (a new last-used time): no
    /// read in flight is refused, and one that remembers the older value
    /// only costs an early stamp.
    pub fn update(&self, key: K, update: impl FnOnce(&V) -> V) {
        let _writes = self.writes.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(old) = self.entries.get(&key) {
            // Soft: a background stamp is no sign the entry is in demand.
            let _ = self.entries.replace(key, update(&old), true);
        }
    }

    /// Forgets everything.
    pub fn forget_all(&self) {
        let _writes = self.writes.lock().unwrap_or_else(PoisonError::into_inner);
        self.generation.fetch_add(1, Ordering::SeqCst);
        self.entries.clear();
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

/// A live token's verify answer, as built from its index entry: the times
/// the checks on every hit need, then the user id, display prefix and
/// response body, all in one allocation. Compact on purpose: with ten
/// thousand hot tokens a hit's cost is mostly the cache lines it misses
/// (measured: the first touch of each separate allocation was the largest
/// cost of a hit). A hit copies the answer out (a `Box`, not an `Arc`: a
/// shared reference count is a cache line both workers would write on
/// every hit of a hot token).
#[derive(Clone)]
pub struct VerifyAnswer(Box<[u8]>);

/// Layout: created_at, grace_until, last_used_at (u64 LE, `NONE` for
/// none), user id length, prefix length (u32 LE), then the three texts.
const TIMES: usize = 24;
const HEADER: usize = TIMES + 8;
const NONE: u64 = u64::MAX;

fn u64_at(bytes: &[u8], at: usize) -> u64 {
    let mut b = [0u8; 8];
    b.copy_from_slice(&bytes[at..at + 8]);
    u64::from_le_bytes(b)
}

fn u32_at(bytes: &[u8], at: usize) -> usize {
    let mut b = [0u8; 4];
    b.copy_from_slice(&bytes[at..at + 4]);
    u32::from_le_bytes(b) as usize
}

impl VerifyAnswer {
    /// `None` when the texts are too long to describe (never, in practice:
    /// user ids are bounded far below 4 GiB).
    pub fn new(entry: &IndexEntry, body: &[u8]) -> Option<Self> {
        let user = entry.user_id.as_bytes();
        let prefix = entry.prefix.as_bytes();
        let user_len = u32::try_from(user.len()).ok()?;
        let prefix_len = u32::try_from(prefix.len()).ok()?;
        let mut bytes = Vec::with_capacity(HEADER + user.len() + prefix.len() + body.len());
        for time in [
            Some(entry.created_at),
            entry.grace_until,
            entry.last_used_at,
        ] {
            bytes.extend_from_slice(&time.unwrap_or(NONE).to_le_bytes());
        }
        bytes.extend_from_slice(&user_len.to_le_bytes());
        bytes.extend_from_slice(&prefix_len.to_le_bytes());
        bytes.extend_from_slice(user);
        bytes.extend_from_slice(prefix);
        bytes.extend_from_slice(body);
        Some(Self(bytes.into()))
    }

    fn time(&self, n: usize) -> Option<u64> {
        Some(u64_at(&self.0, n * 8)).filter(|&t| t != NONE)
    }

    pub fn created_at(&self) -> u64 {
        self.time(0).unwrap_or(0)
    }

    pub fn grace_until(&self) -> Option<u64> {
        self.time(1)
    }

    pub fn last_used_at(&self) -> Option<u64> {
        self.time(2)
    }

    /// The same answer, last used at `at` (never earlier than it was).
    pub fn used_at(&self, at: u64) -> Self {
        let mut bytes = self.0.clone();
        if self.last_used_at().is_none_or(|t| t < at) {
            bytes[16..24].copy_from_slice(&at.to_le_bytes());
        }
        Self(bytes)
    }

    fn user_end(&self) -> usize {
        HEADER + u32_at(&self.0, TIMES)
    }

    fn prefix_end(&self) -> usize {
        self.user_end() + u32_at(&self.0, TIMES + 4)
    }

    pub fn user_id(&self) -> &[u8] {
        &self.0[HEADER..self.user_end()]
    }

    pub fn prefix(&self) -> &str {
        std::str::from_utf8(&self.0[self.user_end()..self.prefix_end()]).unwrap_or("")
    }

    pub fn body(&self) -> &[u8] {
        &self.0[self.prefix_end()..]
    }

    /// A copy of the user id as the `X-Agent-User-Id` value.
    pub fn user_header(&self) -> Result<HeaderValue, InvalidHeaderValue> {
        HeaderValue::from_bytes(self.user_id())
    }
}

/// A `GET /me` answer: the user id it belongs to and the body, in one
/// allocation (the user id is checked on every hit, see [`StatusKey`]),
/// copied out on a hit as [`VerifyAnswer`] is.
#[derive(Clone)]
pub struct StatusAnswer(Box<[u8]>);

impl StatusAnswer {
    /// Layout: the user id's length (u32 LE), the user id, the body.
    fn new(user: &[u8], body: &[u8]) -> Option<Self> {
        let len = u32::try_from(user.len()).ok()?;
        let mut bytes = Vec::with_capacity(4 + user.len() + body.len());
        bytes.extend_from_slice(&len.to_le_bytes());
        bytes.extend_from_slice(user);
        bytes.extend_from_slice(body);
        Some(Self(bytes.into()))
    }

    fn is_for(&self, user: &[u8]) -> bool {
        u32_at(&self.0, 0) == user.len() && self.0[4..].starts_with(user)
    }

    /// The body, without a second copy: the answer's own allocation,
    /// advanced past the user id.
    fn into_body(self) -> Bytes {
        let start = 4 + u32_at(&self.0, 0);
        let mut body = Bytes::from(self.0);
        body.advance(start);
        body
    }
}

/// The status cache's key: a per-process keyed hash of the user id, so the
/// key sits inline in the cache's table (a boxed user id would be one more
/// cache miss per hit). Two users whose hashes collide share a slot: a hit
/// is used only when the stored user id matches, so a collision costs a
/// re-read, never a wrong answer.
pub type StatusKey = u64;

/// The caches of the two hot reads, kept exact by the store's writes.
pub struct Answers {
    /// Token hash → its verify answer.
    pub verify: AnswerCache<[u8; 32], VerifyAnswer>,
    /// Hash of a user id → its `GET /me` answer.
    status: AnswerCache<StatusKey, StatusAnswer>,
    /// Keyed per process (aHash, as the cache's own table): fast on short
    /// ids, and a collision only costs a store read.
    status_keys: DefaultHashBuilder,
}

impl Answers {
    pub fn new(capacity: usize) -> Self {
        Self {
            verify: AnswerCache::new(capacity),
            status: AnswerCache::new(capacity),
            status_keys: DefaultHashBuilder::default(),
        }
    }

    /// Remembers nothing: for a store other replicas write too, where an
    /// answer remembered here could outlive a revoke made elsewhere.
    pub fn off() -> Self {
        Self {
            verify: AnswerCache::with(1, false),
            status: AnswerCache::with(1, false),
            status_keys: DefaultHashBuilder::default(),
        }
    }

    fn status_key(&self, user: &[u8]) -> StatusKey {
        self.status_keys.hash_one(user)
    }

    /// The remembered `GET /me` body of `user`, if any.
    pub fn status(&self, user: &[u8]) -> Option<Bytes> {
        let answer = self.status.get(&self.status_key(user))?;
        answer.is_for(user).then(|| answer.into_body())
    }

    /// Take before reading the user record a status answer is built from.
    pub fn status_ticket(&self) -> Ticket {
        self.status.ticket()
    }

    /// Forgets `user`'s `GET /me` answer (a new last-used stamp, not yet written).
    pub fn forget_status(&self, user: &[u8]) {
        self.status.forget([&self.status_key(user)]);
    }

    pub fn remember_status(&self, ticket: Ticket, user: &[u8], body: &[u8]) {
        if let Some(answer) = StatusAnswer::new(user, body) {
            self.status.remember(ticket, self.status_key(user), answer);
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
        // Kept: a stamp only moves the time that decides the next stamp.
        for &(hash, at) in &changes.stamped_tokens {
            self.verify.update(hash, |answer| answer.used_at(at));
        }
        if !changes.tokens.is_empty() {
            self.verify.forget(
                changes
                    .tokens
                    .iter()
                    .filter_map(|key| <&[u8; 32]>::try_from(key.as_slice()).ok()),
            );
        }
        if !changes.users.is_empty() {
            let keys: Vec<StatusKey> = changes
                .users
                .iter()
                .map(|user| self.status_key(user))
                .collect();
            self.status.forget(keys.iter());
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

    /// Gateways cycle through their agents' tokens: each comes back only
    /// after all the others. A working set inside the capacity stays
    /// remembered although no token is seen twice in a row (the cache
    /// admits what it saw recently, not only what it sees often).
    #[test]
    fn a_working_set_visited_in_turn_stays_remembered() {
        let cache: AnswerCache<u64, u64> = AnswerCache::new(ANSWER_CACHE_ENTRIES);
        let working_set = ANSWER_CACHE_ENTRIES as u64 * 3 / 4;
        let mut hits = 0;
        for pass in 0..4 {
            for key in 0..working_set {
                match cache.get(&key) {
                    Some(_) => hits += u64::from(pass == 3),
                    None => cache.remember(cache.ticket(), key, key),
                }
            }
        }
        assert!(
            hits * 100 >= working_set * 99,
            "{hits} hits of {working_set}"
        );
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
        answers.remember_status(answers.status_ticket(), b"alice", b"{\"a\":1}");
        answers.remember_status(answers.status_ticket(), b"bob", b"{\"b\":2}");
        answers.committed(&Changes {
            users: vec![b"alice".to_vec()],
            ..Changes::default()
        });
        assert_eq!(answers.status(b"alice"), None);
        assert_eq!(answers.status(b"bob").as_deref(), Some(&b"{\"b\":2}"[..]));
        answers.reopening();
        assert_eq!(answers.status(b"bob"), None);
    }

    #[test]
    fn a_status_answer_is_only_served_to_its_own_user() {
        let answers = Answers::new(16);
        answers.remember_status(answers.status_ticket(), b"bob", b"{}");
        // Whatever slot another id hashes to, it never gets bob's answer,
        // nor does an id that bob's merely starts with.
        assert_eq!(answers.status(b"bo"), None);
        assert_eq!(answers.status(b"bobby"), None);
        let bob = answers.status.get(&answers.status_key(b"bob")).unwrap();
        assert!(bob.is_for(b"bob") && !bob.is_for(b"bo") && !bob.is_for(b"bobby"));
    }

    #[test]
    fn a_stamp_keeps_the_verify_answer_with_its_new_time() {
        let answers = Answers::new(16);
        let entry = IndexEntry {
            user_id: "dave".into(),
            prefix: "sk_agt_0a1b2c3d...".into(),
            created_at: 1_790_000_000,
            last_used_at: Some(1_790_000_100),
            grace_until: None,
        };
        let answer = VerifyAnswer::new(&entry, b"{}").unwrap();
        answers
            .verify
            .remember(answers.verify.ticket(), [3; 32], answer);
        let before = answers.verify.ticket();
        answers.committed(&Changes {
            users: vec![b"dave".to_vec()],
            stamped_tokens: vec![([3; 32], 1_790_000_200), ([4; 32], 1_790_000_200)],
            ..Changes::default()
        });
        let kept = answers.verify.get(&[3; 32]).expect("still remembered");
        assert_eq!(kept.last_used_at(), Some(1_790_000_200));
        assert_eq!(kept.user_id(), b"dave");
        assert_eq!(kept.body(), b"{}");
        // Nothing was added for a token not remembered.
        assert!(answers.verify.get(&[4; 32]).is_none());
        // A read in flight may still remember what it read.
        answers.verify.remember(before, [5; 32], kept.used_at(1));
        assert_eq!(
            answers.verify.get(&[5; 32]).unwrap().last_used_at(),
            Some(1_790_000_200),
            "a stamp never moves the time back"
        );
        // A change to the token itself still forgets it.
        answers.committed(&Changes {
            tokens: vec![vec![3; 32]],
            ..Changes::default()
        });
        assert!(answers.verify.get(&[3; 32]).is_none());
    }

    #[test]
    fn a_verify_answer_keeps_every_field() {
        let entry = IndexEntry {
            user_id: "carol".into(),
            prefix: "sk_agt_0a1b2c3d...".into(),
            created_at: 1_790_000_000,
            last_used_at: None,
            grace_until: Some(1_790_000_600),
        };
        let answer = VerifyAnswer::new(&entry, b"{\"active\":true}").unwrap();
        assert_eq!(answer.created_at(), entry.created_at);
        assert_eq!(answer.grace_until(), entry.grace_until);
        assert_eq!(answer.last_used_at(), None);
        assert_eq!(answer.user_id(), b"carol");
        assert_eq!(answer.prefix(), "sk_agt_0a1b2c3d...");
        assert_eq!(answer.body(), b"{\"active\":true}");
    }
}
