//! A consistent read of a running store: every keyspace as it was at one
//! moment (fjall's cross-keyspace snapshot; a write batch is in it whole
//! or not at all), while the flusher goes on writing. What the admin
//! socket's `export`, `list`, `lookup` and `events` read.
//!
//! [`Records`] is what an export needs, from a snapshot or from a stopped
//! store (`crate::store::offline::Offline`) alike.

use fjall::{Keyspace, Readable};

use crate::domain::token::TokenHash;
use crate::domain::user::UserId;
use crate::store::audit::AuditEvent;
use crate::store::audit::{decode_event, event_key, event_key_of_user_key, user_prefix};
use crate::store::error::StoreError;
use crate::store::records::{decode_index, decode_user, IndexEntry, UserRecord};

/// The token records an export reads.
pub trait Records {
    fn user_count(&self) -> Result<usize, StoreError>;
    /// Every user record, in key order.
    fn each_user(&self) -> Box<dyn Iterator<Item = Result<(String, UserRecord), StoreError>> + '_>;
    /// The index entry of a token hash.
    fn index_entry(&self, hash: &TokenHash) -> Result<Option<IndexEntry>, StoreError>;
}

/// The store at one moment; hold it briefly (what it sees cannot be
/// compacted away meanwhile).
pub struct Snapshot {
    pub(crate) snapshot: fjall::Snapshot,
    pub(crate) users: Keyspace,
    pub(crate) index: Keyspace,
    pub(crate) events: Keyspace,
    pub(crate) event_users: Keyspace,
}

fn user_pair(item: fjall::Guard) -> Result<(String, UserRecord), StoreError> {
    let (k, v) = item.into_inner()?;
    let user =
        String::from_utf8(k.to_vec()).map_err(|_| StoreError::Corrupt { what: "user key" })?;
    Ok((user, decode_user(&v)?))
}

impl Snapshot {
    pub fn get(&self, user: &UserId) -> Result<Option<UserRecord>, StoreError> {
        self.snapshot
            .get(&self.users, user.as_str().as_bytes())?
            .map(|v| decode_user(&v))
            .transpose()
    }

    /// The user's events, newest first, at most `limit`.
    pub fn events_of(&self, user: &UserId, limit: usize) -> Result<Vec<AuditEvent>, StoreError> {
        let mut events = Vec::new();
        for item in self
            .snapshot
            .prefix(&self.event_users, user_prefix(user.as_str()))
            .rev()
            .take(limit)
        {
            let key = event_key_of_user_key(&item.key()?)?;
            if let Some(bytes) = self.snapshot.get(&self.events, key)? {
                events.push(decode_event(&bytes)?);
            }
        }
        Ok(events)
    }

    /// Every event at or after `since`, oldest first.
    pub fn events_since(
        &self,
        since: u64,
    ) -> impl Iterator<Item = Result<AuditEvent, StoreError>> + '_ {
        self.snapshot
            .range(&self.events, event_key(since, 0)..)
            .map(|item| decode_event(&item.value()?))
    }
}

impl Records for Snapshot {
    fn user_count(&self) -> Result<usize, StoreError> {
        Ok(self.snapshot.len(&self.users)?)
    }

    fn each_user(&self) -> Box<dyn Iterator<Item = Result<(String, UserRecord), StoreError>> + '_> {
        Box::new(self.snapshot.iter(&self.users).map(user_pair))
    }

    fn index_entry(&self, hash: &TokenHash) -> Result<Option<IndexEntry>, StoreError> {
        self.snapshot
            .get(&self.index, hash.as_bytes())?
            .map(|v| decode_index(&v))
            .transpose()
    }
}
