//! Last-used stamps waiting to be written: verify records a token's use
//! here, in memory, and never waits for the disk; a background thread
//! ([`crate::store::Store`]) writes what gathered through the flusher queue every
//! [`STAMP_INTERVAL`] and at a graceful stop.
//!
//! So a crash loses at most the last interval's last-used times, never a
//! token or a revocation: writing a stamp changes only a token that is
//! still stored, and the user record only while that token is its current
//! one (see [`crate::store::mutation::Stamp`]).
//!
//! A stamp handed to the writer stays readable here (as "being written")
//! until the next hand-over, so `GET /me`, which reads the record and then
//! the pending stamp, never misses one that was in between.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use crate::domain::policy::needs_touch;

/// How long a last-used stamp may wait in memory before it is written; what
/// a crash may lose of them.
pub const STAMP_INTERVAL: Duration = Duration::from_secs(10);

/// Token hashes are SHA-256 outputs: their first bytes are as good a hash
/// as any, and cost nothing.
#[derive(Default)]
struct FirstBytes(u64);

impl Hasher for FirstBytes {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        // `[u8; 32]` hashes as its length, then its bytes: keep the bytes.
        if bytes.len() >= 8 {
            let mut b = [0u8; 8];
            b.copy_from_slice(&bytes[..8]);
            self.0 = u64::from_le_bytes(b);
        }
    }

    fn write_usize(&mut self, _: usize) {}
}

type ByHash = HashMap<[u8; 32], u64, BuildHasherDefault<FirstBytes>>;

#[derive(Default)]
struct Shard {
    /// Recorded since the last hand-over.
    pending: ByHash,
    /// Handed over at the last hand-over: being (or already) written.
    handed_over: ByHash,
}

impl Shard {
    fn newest(&self, hash: &[u8; 32]) -> Option<u64> {
        let pending = self.pending.get(hash).copied();
        let handed_over = self.handed_over.get(hash).copied();
        pending.max(handed_over)
    }
}

/// Shards, so the two workers rarely wait for each other's lock.
const SHARDS: usize = 16;

/// The stamps not yet known to be written, by token hash.
pub struct PendingStamps {
    shards: Box<[Mutex<Shard>]>,
}

impl Default for PendingStamps {
    fn default() -> Self {
        Self {
            shards: (0..SHARDS).map(|_| Mutex::default()).collect(),
        }
    }
}

impl PendingStamps {
    fn shard(&self, hash: &[u8; 32]) -> MutexGuard<'_, Shard> {
        // A panic elsewhere leaves a map of times, still usable.
        self.shards[usize::from(hash[31]) % SHARDS]
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// Records a use of `hash` at `now` unless a stamp less than a minute
    /// older is already waiting. Returns whether it recorded one.
    pub fn record(&self, hash: &[u8; 32], now: u64) -> bool {
        let mut shard = self.shard(hash);
        if !needs_touch(shard.newest(hash), now) {
            return false;
        }
        shard.pending.insert(*hash, now);
        true
    }

    /// The newest stamp of `hash` not yet known to be written.
    pub fn newest(&self, hash: &[u8; 32]) -> Option<u64> {
        self.shard(hash).newest(hash)
    }

    /// Hands every pending stamp over to the writer (forgetting the ones
    /// handed over before, which are written by now).
    pub fn hand_over(&self) -> Vec<([u8; 32], u64)> {
        let mut out = Vec::new();
        for shard in self.shards.iter() {
            let mut shard = shard.lock().unwrap_or_else(PoisonError::into_inner);
            let shard = &mut *shard;
            shard.handed_over = std::mem::take(&mut shard.pending);
            out.extend(shard.handed_over.iter().map(|(h, t)| (*h, *t)));
        }
        out
    }

    /// Stamps the writer could not write: pending again, for the next try.
    pub fn give_back(&self, stamps: &[([u8; 32], u64)]) {
        for (hash, time) in stamps {
            let mut shard = self.shard(hash);
            let newest = shard.pending.get(hash).copied().max(Some(*time));
            if let Some(newest) = newest {
                shard.pending.insert(*hash, newest);
            }
        }
    }

    pub fn is_empty(&self) -> bool {
        self.shards.iter().all(|shard| {
            let shard = shard.lock().unwrap_or_else(PoisonError::into_inner);
            shard.pending.is_empty()
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_use_is_recorded_once_a_minute_and_stays_readable_while_written() {
        let stamps = PendingStamps::default();
        let h = [7u8; 32];
        assert!(stamps.record(&h, 100));
        assert!(!stamps.record(&h, 159), "within the minute");
        assert_eq!(stamps.newest(&h), Some(100));
        assert_eq!(stamps.hand_over(), vec![(h, 100)]);
        assert!(stamps.is_empty());
        // Handed over, not yet written: still the newest, still coalescing.
        assert_eq!(stamps.newest(&h), Some(100));
        assert!(!stamps.record(&h, 150));
        assert!(stamps.record(&h, 160));
        assert_eq!(stamps.newest(&h), Some(160));
        assert_eq!(stamps.hand_over(), vec![(h, 160)]);
        assert!(stamps.hand_over().is_empty());
        assert_eq!(stamps.newest(&h), None, "written two hand-overs ago");
    }

    #[test]
    fn stamps_given_back_keep_the_newest_time() {
        let stamps = PendingStamps::default();
        let (a, b) = ([1u8; 32], [2u8; 32]);
        stamps.record(&a, 100);
        let failed = stamps.hand_over();
        stamps.record(&a, 200);
        stamps.give_back(&failed);
        stamps.give_back(&[(b, 50)]);
        let mut again = stamps.hand_over();
        again.sort();
        assert_eq!(again, vec![(a, 200), (b, 50)]);
    }
}
