//! `revoke-all`: revoke every token created before a time, or every token
//! that exists now, while rotations go on.
//!
//! One queued operation first takes the list of tokens to revoke (a fence:
//! the flusher applies operations in order, so this list is exactly the
//! tokens that existed when it ran, after everything queued before it and
//! before anything queued after). Then bounded operations revoke the listed
//! tokens, each durable: a token created after the fence is never listed,
//! so it survives; a listed token is revoked even if its user rotated
//! meanwhile (it is then in its grace window, which ends).

use crate::store::audit::{Actor, Audit, AuditEvent, EventKind};
use crate::store::db::Db;
use crate::store::error::StoreError;
use crate::store::mutation::{Apply, BatchView};
use crate::store::records::{decode_index, decode_user, encode_user, grace_key, UserRecord};

/// Tokens revoked per queued operation.
const REVOKE_BATCH: usize = 2048;

/// A token to revoke: its user and its hash.
type Target = (String, [u8; 32]);

/// Lists the current and in-grace tokens created before `before` (all
/// of them when `None`).
struct Fence {
    before: Option<u64>,
}

impl Apply for Fence {
    type Output = Vec<Target>;

    fn apply(&self, t: &BatchView<'_>) -> Result<Vec<Target>, StoreError> {
        let older = |created_at: u64| self.before.is_none_or(|before| created_at < before);
        let mut targets = Vec::new();
        for (key, value) in t.users.all()? {
            let user =
                String::from_utf8(key).map_err(|_| StoreError::Corrupt { what: "user key" })?;
            let record = decode_user(&value)?;
            if let Some(prev) = &record.previous {
                if let Some(bytes) = t.index.get(&prev.hash)? {
                    if older(decode_index(&bytes)?.created_at) {
                        targets.push((user.clone(), prev.hash));
                    }
                }
            }
            if older(record.created_at) {
                targets.push((user, record.hash));
            }
        }
        Ok(targets)
    }

    /// A read: nothing to wait for.
    fn durable(&self) -> bool {
        false
    }
}

/// Revokes listed tokens that are still there; returns how many.
struct RevokeListed {
    targets: Vec<Target>,
    now: u64,
    audit: Audit,
}

impl Apply for RevokeListed {
    type Output = usize;

    fn apply(&self, t: &BatchView<'_>) -> Result<usize, StoreError> {
        let mut revoked = 0;
        for (user, hash) in &self.targets {
            let key = user.as_bytes();
            let Some(bytes) = t.users.get(key)? else {
                continue;
            };
            let record = decode_user(&bytes)?;
            let event = self.audit.event(EventKind::Revoked, self.now, user);
            if record.hash == *hash {
                t.users.remove(key)?;
                t.index.remove(hash)?;
                let mut event = event.with_prefix(&record.prefix);
                if let Some(prev) = &record.previous {
                    t.index.remove(&prev.hash)?;
                    t.grace.remove(&grace_key(prev.until, &prev.hash))?;
                    event = event.with_previous(&prev.prefix);
                }
                t.audit(event)?;
                revoked += 1;
            } else if let Some(prev) = record.previous.as_ref().filter(|p| p.hash == *hash) {
                t.index.remove(hash)?;
                t.grace.remove(&grace_key(prev.until, hash))?;
                t.audit(event.with_prefix(&prev.prefix))?;
                let record = UserRecord {
                    previous: None,
                    ..record
                };
                t.users.insert(key, encode_user(&record)?);
                revoked += 1;
            }
        }
        Ok(revoked)
    }
}

/// Stores one audit event of its own (an admin action's summary).
struct Note {
    event: AuditEvent,
}

impl Apply for Note {
    type Output = ();

    fn apply(&self, t: &BatchView<'_>) -> Result<(), StoreError> {
        t.audit(self.event.clone())
    }
}

impl Db {
    /// Revokes every token created before `before` (every token when
    /// `None`), current or in grace; see the module. Durable when it
    /// returns; returns how many tokens were revoked. The last event
    /// (`revoke_all`, no user) says what was asked and done.
    pub async fn revoke_all(
        &self,
        before: Option<u64>,
        now: u64,
        audit: &Audit,
    ) -> Result<usize, StoreError> {
        let targets = self.run(Fence { before }).await?;
        let listed = targets.len();
        let mut revoked = 0;
        let mut targets = targets.into_iter();
        loop {
            let chunk: Vec<Target> = targets.by_ref().take(REVOKE_BATCH).collect();
            if chunk.is_empty() {
                break;
            }
            revoked += self
                .run(RevokeListed {
                    targets: chunk,
                    now,
                    audit: audit.clone(),
                })
                .await?;
        }
        if audit.actor == Actor::System {
            // Expiry (tokens.max_age_days): each token's `expired` event
            // says it all; there is no operator's action to sum up.
            return Ok(revoked);
        }
        let asked = match before {
            Some(before) => format!("created before {}", crate::domain::clock::rfc3339(before)),
            None => "existing when it ran".to_owned(),
        };
        let mut event = Audit {
            actor: Actor::Admin,
            ..audit.clone()
        }
        .event(EventKind::RevokeAll, now, "")
        .with_detail(format!(
            "revoked {revoked} of the {listed} token(s) {asked}"
        ));
        event.user_id = None;
        self.run(Note { event }).await?;
        Ok(revoked)
    }

    /// Stores one admin-action event with no user (an export).
    pub async fn note(&self, event: AuditEvent) -> Result<(), StoreError> {
        self.run(Note { event }).await
    }
}
