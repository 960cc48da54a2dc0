//! The API's mutations as queued operations, applied by the flusher thread
//! in batches: every operation queued during one flush cycle is applied in
//! order, and what they wrote goes to disk as one fjall write batch (see
//! [`crate::store::durability`] for why that matters).
//!
//! Each operation is a small struct implementing [`Apply`]: its arguments,
//! prepared by the request (encoding happens there, not on the one thread
//! every write goes through), and a function that applies it to the
//! batch's [`BatchView`]. Later operations in a batch read earlier ones'
//! writes, so two rotations of one user in the same batch behave exactly as
//! they would one after the other. An operation that fails (a damaged
//! record) leaves nothing of itself in the batch.
//!
//! While the server runs, the flusher thread is the only writer of every
//! keyspace, so what an operation reads cannot change under it.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::sync::Arc;

use fjall::{Database, Keyspace, PersistMode};
use tokio::sync::oneshot;

use crate::store::audit::{
    decode_event, encode_event, event_key, user_event_key, Actor, Audit, AuditEvent, EventKind,
};
use crate::store::durability::{Applied, Committer, Completion, DurabilityError};
use crate::store::error::StoreError;
use crate::store::records::{
    decode_index, decode_user, encode_index, encode_user, grace_key, ChangeListener, Changes,
    GetOrCreate, GraceToken, IndexEntry, UserRecord,
};
use crate::store::schema::PROBE_KEY;

type TxResult<T> = Result<T, StoreError>;

/// A key's value as the batch will leave it: `None` removes it.
type Pending = HashMap<Vec<u8>, Option<Vec<u8>>>;

/// Keys whose only change in a batch is a last-used stamp, with its time.
type Stamped = HashMap<Vec<u8>, u64>;

/// One keyspace as a batch sees it: the stored state, under what earlier
/// operations of the batch wrote, under what the running operation wrote.
pub(crate) struct Tracked<'a> {
    base: &'a Keyspace,
    batch: RefCell<Pending>,
    op: RefCell<Pending>,
    /// Of `batch` and `op`: the keys only a stamp changed. Reported apart,
    /// so a remembered answer can take the new time instead of being
    /// forgotten and read again once a minute per active token.
    batch_stamped: RefCell<Stamped>,
    op_stamped: RefCell<Stamped>,
}

impl<'a> Tracked<'a> {
    fn new(base: &'a Keyspace) -> Self {
        Self {
            base,
            batch: RefCell::default(),
            op: RefCell::default(),
            batch_stamped: RefCell::default(),
            op_stamped: RefCell::default(),
        }
    }

    pub fn get(&self, key: &[u8]) -> TxResult<Option<Vec<u8>>> {
        if let Some(value) = self.op.borrow().get(key) {
            return Ok(value.clone());
        }
        if let Some(value) = self.batch.borrow().get(key) {
            return Ok(value.clone());
        }
        Ok(self.base.get(key)?.map(|v| v.to_vec()))
    }

    pub fn insert(&self, key: &[u8], value: impl Into<Vec<u8>>) {
        self.op_stamped.borrow_mut().remove(key);
        self.op
            .borrow_mut()
            .insert(key.to_vec(), Some(value.into()));
    }

    /// Writes `value`, which differs from what `key` holds only by its
    /// last-used time `at`. Reported as a stamp unless something else in
    /// the batch also changes `key`.
    pub fn stamp(&self, key: &[u8], value: impl Into<Vec<u8>>, at: u64) {
        let changed_before = self.op.borrow().contains_key(key)
            && !self.op_stamped.borrow().contains_key(key)
            || self.batch.borrow().contains_key(key)
                && !self.batch_stamped.borrow().contains_key(key);
        self.op
            .borrow_mut()
            .insert(key.to_vec(), Some(value.into()));
        if !changed_before {
            self.op_stamped.borrow_mut().insert(key.to_vec(), at);
        }
    }

    /// Removes `key`; returns what it held.
    pub fn remove(&self, key: &[u8]) -> TxResult<Option<Vec<u8>>> {
        let old = self.get(key)?;
        if old.is_some() {
            self.op_stamped.borrow_mut().remove(key);
            self.op.borrow_mut().insert(key.to_vec(), None);
        }
        Ok(old)
    }

    /// Every key and value as the batch sees it now: the stored ones under
    /// what the batch and this operation wrote or removed. Unordered.
    pub fn all(&self) -> TxResult<Vec<(Vec<u8>, Vec<u8>)>> {
        let batch = self.batch.borrow();
        let op = self.op.borrow();
        let written = |key: &[u8]| op.get(key).or_else(|| batch.get(key));
        let mut out = Vec::new();
        for item in self.base.iter() {
            let (key, value) = item.into_inner()?;
            match written(&key) {
                Some(Some(value)) => out.push((key.to_vec(), value.clone())),
                Some(None) => {}
                None => out.push((key.to_vec(), value.to_vec())),
            }
        }
        // Keys only written in this batch (the operation's writes first: they win).
        let mut seen = std::collections::HashSet::new();
        for (key, value) in op.iter().chain(batch.iter()) {
            if !seen.insert(key.as_slice()) || self.base.contains_key(key)? {
                continue;
            }
            if let Some(value) = value {
                out.push((key.clone(), value.clone()));
            }
        }
        Ok(out)
    }

    /// The stored keys up to and including `end`, in order (not the batch's).
    pub fn stored_keys_through(&self, end: &[u8]) -> TxResult<Vec<Vec<u8>>> {
        self.base
            .range(..=end)
            .map(|item| Ok(item.key()?.to_vec()))
            .collect()
    }

    /// The running operation succeeded: its writes join the batch.
    fn keep(&self) {
        let op = std::mem::take(&mut *self.op.borrow_mut());
        let op_stamped = std::mem::take(&mut *self.op_stamped.borrow_mut());
        let mut batch_stamped = self.batch_stamped.borrow_mut();
        for key in op.keys().filter(|key| !op_stamped.contains_key(*key)) {
            batch_stamped.remove(key);
        }
        batch_stamped.extend(op_stamped);
        self.batch.borrow_mut().extend(op);
    }

    /// The running operation failed: its writes are dropped.
    fn discard(&self) {
        self.op.borrow_mut().clear();
        self.op_stamped.borrow_mut().clear();
    }

    /// Adds the batch's writes to `batch`; returns the keys changed, and
    /// apart from them the keys only stamped, with their times.
    fn write_into(&self, batch: &mut fjall::OwnedWriteBatch) -> (Vec<Vec<u8>>, Stamped) {
        let pending = std::mem::take(&mut *self.batch.borrow_mut());
        let stamped = std::mem::take(&mut *self.batch_stamped.borrow_mut());
        let mut keys = Vec::with_capacity(pending.len() - stamped.len());
        for (key, value) in pending {
            match value {
                Some(value) => batch.insert(self.base, key.as_slice(), value),
                None => batch.remove(self.base, key.as_slice()),
            }
            if !stamped.contains_key(&key) {
                keys.push(key);
            }
        }
        (keys, stamped)
    }

    fn is_empty(&self) -> bool {
        self.batch.borrow().is_empty()
    }
}

/// The keyspaces a batch writes.
pub(crate) struct BatchView<'a> {
    pub users: Tracked<'a>,
    pub index: Tracked<'a>,
    pub grace: Tracked<'a>,
    /// Only the readiness probe's key.
    pub meta: Tracked<'a>,
    pub events: Tracked<'a>,
    pub event_users: Tracked<'a>,
    /// The next audit event's sequence number.
    next_seq: Cell<u64>,
    /// Events of the running operation, then of the batch.
    op_events: RefCell<Vec<AuditEvent>>,
    batch_events: RefCell<Vec<AuditEvent>>,
}

impl<'a> BatchView<'a> {
    fn new(k: &'a StoreCommitter) -> Self {
        Self {
            users: Tracked::new(&k.users),
            index: Tracked::new(&k.index),
            grace: Tracked::new(&k.grace),
            meta: Tracked::new(&k.meta),
            events: Tracked::new(&k.events),
            event_users: Tracked::new(&k.event_users),
            next_seq: Cell::new(k.next_seq.get()),
            op_events: RefCell::default(),
            batch_events: RefCell::default(),
        }
    }

    fn parts(&self) -> [&Tracked<'a>; 6] {
        [
            &self.users,
            &self.index,
            &self.grace,
            &self.meta,
            &self.events,
            &self.event_users,
        ]
    }

    /// Records an audit event in this operation's writes: it is stored
    /// exactly when the operation's changes are.
    pub fn audit(&self, event: AuditEvent) -> TxResult<()> {
        let seq = self.next_seq.get();
        self.next_seq.set(seq.wrapping_add(1));
        let key = event_key(event.at, seq);
        self.events.insert(&key, encode_event(&event)?);
        if let Some(user) = &event.user_id {
            self.event_users
                .insert(&user_event_key(user, &key), Vec::new());
        }
        self.op_events.borrow_mut().push(event);
        Ok(())
    }

    fn keep(&self) {
        for part in self.parts() {
            part.keep();
        }
        let op = std::mem::take(&mut *self.op_events.borrow_mut());
        self.batch_events.borrow_mut().extend(op);
    }

    fn discard(&self) {
        for part in self.parts() {
            part.discard();
        }
        self.op_events.borrow_mut().clear();
    }

    fn is_empty(&self) -> bool {
        self.parts().iter().all(|part| part.is_empty())
    }
}

/// One kind of mutation.
pub(crate) trait Apply: Send + 'static {
    type Output: Send + 'static;
    /// Applies the operation to the batch; on an error nothing of it stays.
    fn apply(&self, trees: &BatchView<'_>) -> TxResult<Self::Output>;
    /// Whether the answer waits until everything before it is durable;
    /// `false` answers as soon as the change is visible to readers.
    fn durable(&self) -> bool {
        true
    }
    /// Runs once the operation is answered or failed.
    fn done(&self) {}
}

/// A queued operation as the flusher thread sees it.
pub(crate) trait Mutation: Send {
    fn apply(&self, trees: &BatchView<'_>) -> TxResult<()>;
    /// Answers now, or returns what answers once the flush is done.
    fn answer(self: Box<Self>) -> Option<Completion>;
    fn fail(self: Box<Self>, err: StoreError);
}

pub(crate) type Reply<T> = oneshot::Sender<Result<T, StoreError>>;
pub(crate) type Answer<T> = oneshot::Receiver<Result<T, StoreError>>;

pub(crate) struct Queued<A: Apply> {
    args: A,
    // Set once the operation is applied.
    output: RefCell<Option<A::Output>>,
    reply: Reply<A::Output>,
}

impl<A: Apply> Queued<A> {
    /// The operation to queue, and where its answer arrives.
    pub fn queue(args: A) -> (Box<dyn Mutation>, Answer<A::Output>) {
        let (reply, rx) = oneshot::channel();
        let queued = Queued {
            args,
            output: RefCell::new(None),
            reply,
        };
        (Box::new(queued), rx)
    }
}

impl<A: Apply> Mutation for Queued<A> {
    fn apply(&self, trees: &BatchView<'_>) -> TxResult<()> {
        let output = self.args.apply(trees)?;
        *self.output.borrow_mut() = Some(output);
        Ok(())
    }

    fn answer(self: Box<Self>) -> Option<Completion> {
        let Queued {
            args,
            output,
            reply,
        } = *self;
        args.done();
        let Some(output) = output.into_inner() else {
            let _ = reply.send(Err(StoreError::NotApplied));
            return None;
        };
        if !args.durable() {
            let _ = reply.send(Ok(output));
            return None;
        }
        Some(Box::new(move |flushed: Result<(), DurabilityError>| {
            let _ = reply.send(flushed.map(|()| output).map_err(StoreError::from));
        }))
    }

    fn fail(self: Box<Self>, err: StoreError) {
        self.args.done();
        let _ = self.reply.send(Err(err));
    }
}

/// Applies batches to the store's keyspaces on the flusher thread.
pub(crate) struct StoreCommitter {
    pub db: Database,
    pub users: Keyspace,
    pub index: Keyspace,
    pub grace: Keyspace,
    /// The schema version and the readiness probe's key.
    pub meta: Keyspace,
    pub events: Keyspace,
    pub event_users: Keyspace,
    /// The next audit event's sequence number (see [`crate::store::audit`]).
    pub next_seq: Cell<u64>,
    /// Hears every committed batch's changes before any answer goes out.
    pub listener: Arc<dyn ChangeListener>,
}

impl Committer for StoreCommitter {
    type Op = Box<dyn Mutation>;

    /// A journal file is deleted only once every keyspace's memtable holding
    /// its writes is flushed. The grace and meta keyspaces fill theirs
    /// slowly (a probe, an expiry), so they would keep every journal until
    /// fjall's 64 MiB limit forces a flush, and a restart after a crash
    /// would replay all of it (measured: 2.6 s). Flushing their few records
    /// once journals pile up keeps the journal at about what the two big
    /// memtables hold.
    fn upkeep(&mut self) {
        if self.db.journal_count() <= 2 {
            return;
        }
        for keyspace in [&self.grace, &self.meta, &self.events, &self.event_users] {
            if let Err(e) = keyspace.rotate_memtable() {
                log::warn!(
                    "cannot flush the {} keyspace's memtable: {e}",
                    keyspace.name()
                );
            }
        }
    }

    fn apply(&mut self, ops: Vec<Box<dyn Mutation>>) -> Applied {
        let trees = BatchView::new(self);
        let mut kept = Vec::with_capacity(ops.len());
        for op in ops {
            match op.apply(&trees) {
                Ok(()) => {
                    trees.keep();
                    kept.push(op);
                }
                // Nothing of it is in the batch: it alone gets the error.
                Err(err) => {
                    trees.discard();
                    op.fail(err);
                }
            }
        }
        self.next_seq.set(trees.next_seq.get());
        if !trees.is_empty() {
            // Synced into the journal before the memtables take it: no
            // reader sees a change a crash could undo.
            let mut batch = self.db.batch().durability(Some(PersistMode::SyncData));
            let (mut users, users_stamped) = trees.users.write_into(&mut batch);
            // A user record's stamp changes its GET /me answer: a change.
            users.extend(users_stamped.into_keys());
            let (tokens, tokens_stamped) = trees.index.write_into(&mut batch);
            let (grace, _) = trees.grace.write_into(&mut batch);
            let changes = Changes {
                users,
                tokens,
                grace,
                stamped_tokens: tokens_stamped
                    .into_iter()
                    .filter_map(|(key, at)| Some((<[u8; 32]>::try_from(key.as_slice()).ok()?, at)))
                    .collect(),
                events: std::mem::take(&mut *trees.batch_events.borrow_mut()),
            };
            trees.events.write_into(&mut batch);
            trees.event_users.write_into(&mut batch);
            // The probe's key concerns no answer: listeners are not told.
            trees.meta.write_into(&mut batch);
            let started = std::time::Instant::now();
            if let Err(e) = batch.commit() {
                log::error!("writing a batch of changes to the store failed: {e}");
                let failure = DurabilityError::Flush(e.to_string().into());
                for op in kept {
                    op.fail(StoreError::Durability(failure.clone()));
                }
                return Applied::default();
            }
            let sync_took = started.elapsed();
            // Before any answer: a client told "done" must never be
            // served an answer remembered from before its change.
            self.listener.committed(&changes);
            crate::metrics::METRICS.audit_events_written(changes.events.len());
            let completions = kept.into_iter().filter_map(|op| op.answer()).collect();
            return Applied {
                synced: true,
                sync_took,
                completions,
            };
        }
        Applied {
            completions: kept.into_iter().filter_map(|op| op.answer()).collect(),
            ..Applied::default()
        }
    }
}

/// Ends a rotated-out token's grace window now.
fn end_grace(trees: &BatchView<'_>, previous: Option<&GraceToken>) -> TxResult<()> {
    if let Some(prev) = previous {
        trees.index.remove(&prev.hash)?;
        trees.grace.remove(&grace_key(prev.until, &prev.hash))?;
    }
    Ok(())
}

/// Replaces (or creates) a user's token; see [`crate::store::db::Db::rotate_as`].
pub(crate) struct Rotate {
    pub user: String,
    pub hash: [u8; 32],
    pub prefix: String,
    pub now: u64,
    pub grace_secs: u64,
    /// The new token's encoded index entry.
    pub fresh_index: Vec<u8>,
    pub audit: Audit,
}

impl Apply for Rotate {
    type Output = (UserRecord, bool);

    fn apply(&self, t: &BatchView<'_>) -> TxResult<(UserRecord, bool)> {
        let key = self.user.as_bytes();
        let mut previous = None;
        let old = t.users.get(key)?;
        let replaced = old.is_some();
        let mut event = self
            .audit
            .event(EventKind::Created, self.now, &self.user)
            .with_prefix(&self.prefix);
        if let Some(old) = old {
            let old = decode_user(&old)?;
            event = event.with_previous(&old.prefix);
            event.kind = EventKind::Rotated;
            end_grace(t, old.previous.as_ref())?;
            if self.grace_secs == 0 {
                t.index.remove(&old.hash)?;
            } else if let Some(bytes) = t.index.get(&old.hash)? {
                // (A token without an index entry was not verifiable: there
                // is nothing to keep alive.)
                let until = self.now.saturating_add(self.grace_secs);
                let entry = IndexEntry {
                    grace_until: Some(until),
                    ..decode_index(&bytes)?
                };
                t.index.insert(&old.hash, encode_index(&entry)?);
                t.grace.insert(&grace_key(until, &old.hash), key);
                previous = Some(GraceToken {
                    hash: old.hash,
                    prefix: old.prefix,
                    until,
                });
            }
        }
        let record = UserRecord {
            hash: self.hash,
            prefix: self.prefix.clone(),
            created_at: self.now,
            last_used_at: None,
            previous,
        };
        t.users.insert(key, encode_user(&record)?);
        t.index.insert(&self.hash, self.fresh_index.as_slice());
        t.audit(event)?;
        Ok((record, replaced))
    }
}

/// Creates a user's token unless one exists; see [`crate::store::db::Db::get_or_create_as`].
/// An existing record still waits for everything before it to be durable:
/// it may come from a request whose change has not reached the disk yet,
/// and we never report what a crash could undo.
pub(crate) struct Create {
    pub user: String,
    pub record: UserRecord,
    pub record_bytes: Vec<u8>,
    pub index_bytes: Vec<u8>,
    pub audit: Audit,
}

impl Apply for Create {
    type Output = GetOrCreate;

    fn apply(&self, t: &BatchView<'_>) -> TxResult<GetOrCreate> {
        let key = self.user.as_bytes();
        if let Some(existing) = t.users.get(key)? {
            return Ok(GetOrCreate::Existing(decode_user(&existing)?));
        }
        t.users.insert(key, self.record_bytes.as_slice());
        t.index
            .insert(&self.record.hash, self.index_bytes.as_slice());
        t.audit(
            self.audit
                .event(EventKind::Created, self.record.created_at, &self.user)
                .with_prefix(&self.record.prefix),
        )?;
        Ok(GetOrCreate::Created(self.record.clone()))
    }
}

/// Removes a user's token and any token in grace; see [`crate::store::db::Db::revoke_as`].
pub(crate) struct Revoke {
    pub user: String,
    pub now: u64,
    pub audit: Audit,
}

impl Apply for Revoke {
    type Output = bool;

    fn apply(&self, t: &BatchView<'_>) -> TxResult<bool> {
        match t.users.remove(self.user.as_bytes())? {
            Some(old) => {
                let old = decode_user(&old)?;
                t.index.remove(&old.hash)?;
                end_grace(t, old.previous.as_ref())?;
                let mut event = self
                    .audit
                    .event(EventKind::Revoked, self.now, &self.user)
                    .with_prefix(&old.prefix);
                if let Some(prev) = &old.previous {
                    event = event.with_previous(&prev.prefix);
                }
                t.audit(event)?;
                Ok(true)
            }
            None => Ok(false),
        }
    }
}

/// What [`RevokeToken`] found behind a token hash, and ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TokenRevoked {
    /// The user's current token: it, and any token of theirs still in
    /// grace, no longer verify (the user has no token now).
    Current { user: String },
    /// A rotated-out token in its grace window: it alone ended; the
    /// user's current token is untouched.
    InGrace { user: String },
    /// No token has this hash (never issued, or already gone).
    Unknown,
}

/// Revokes the token with a given hash, whoever holds it; see
/// [`crate::store::Store::revoke_token`].
pub(crate) struct RevokeToken {
    pub hash: [u8; 32],
    pub now: u64,
    pub audit: Audit,
}

impl Apply for RevokeToken {
    type Output = TokenRevoked;

    fn apply(&self, t: &BatchView<'_>) -> TxResult<TokenRevoked> {
        let Some(bytes) = t.index.get(&self.hash)? else {
            return Ok(TokenRevoked::Unknown);
        };
        let entry = decode_index(&bytes)?;
        let key = entry.user_id.as_bytes();
        let record = t.users.get(key)?.map(|b| decode_user(&b)).transpose()?;
        match record {
            Some(record) if record.hash == self.hash => {
                t.users.remove(key)?;
                t.index.remove(&record.hash)?;
                end_grace(t, record.previous.as_ref())?;
                let mut event = self
                    .audit
                    .event(EventKind::Revoked, self.now, &entry.user_id)
                    .with_prefix(&record.prefix);
                if let Some(prev) = &record.previous {
                    event = event.with_previous(&prev.prefix);
                }
                t.audit(event)?;
                Ok(TokenRevoked::Current {
                    user: entry.user_id,
                })
            }
            Some(record)
                if record
                    .previous
                    .as_ref()
                    .is_some_and(|p| p.hash == self.hash) =>
            {
                end_grace(t, record.previous.as_ref())?;
                if let Some(prev) = &record.previous {
                    t.audit(
                        self.audit
                            .event(EventKind::Revoked, self.now, &entry.user_id)
                            .with_prefix(&prev.prefix),
                    )?;
                }
                let record = UserRecord {
                    previous: None,
                    ..record
                };
                t.users.insert(key, encode_user(&record)?);
                Ok(TokenRevoked::InGrace {
                    user: entry.user_id,
                })
            }
            // An entry no user record names (the keyspaces never leave
            // one, but a damaged store might): it must not verify either.
            _ => {
                t.index.remove(&self.hash)?;
                if let Some(until) = entry.grace_until {
                    t.grace.remove(&grace_key(until, &self.hash))?;
                }
                t.audit(
                    self.audit
                        .event(EventKind::Revoked, self.now, &entry.user_id)
                        .with_prefix(&entry.prefix),
                )?;
                Ok(TokenRevoked::InGrace {
                    user: entry.user_id,
                })
            }
        }
    }
}

/// Writes last-used stamps gathered in memory; see
/// [`crate::store::db::Db::stamp`]. A stamp only changes a token that is
/// still stored (so a revoked or rotated-out token is never brought back),
/// the user record only while the token is the user's current one, and
/// never moves a time backwards.
pub(crate) struct Stamp {
    pub stamps: Vec<([u8; 32], u64)>,
}

impl Apply for Stamp {
    type Output = usize;

    fn apply(&self, t: &BatchView<'_>) -> TxResult<usize> {
        let mut written = 0;
        for &(hash, now) in &self.stamps {
            let Some(bytes) = t.index.get(&hash)? else {
                continue;
            };
            let entry = decode_index(&bytes)?;
            if entry.last_used_at.is_some_and(|t| t >= now) {
                continue;
            }
            let entry = IndexEntry {
                last_used_at: Some(now),
                ..entry
            };
            t.index.stamp(&hash, encode_index(&entry)?, now);
            let user_key = entry.user_id.as_bytes();
            if let Some(bytes) = t.users.get(user_key)? {
                let record = decode_user(&bytes)?;
                if record.hash == hash {
                    let record = UserRecord {
                        last_used_at: Some(now),
                        ..record
                    };
                    t.users.insert(user_key, encode_user(&record)?);
                }
            }
            written += 1;
        }
        Ok(written)
    }

    /// Answered once readers see them (the batch itself is synced).
    fn durable(&self) -> bool {
        false
    }
}

/// Removes rotated-out tokens whose grace window ended; see
/// [`crate::store::db::Db::expire_grace`].
pub(crate) struct ExpireGrace {
    pub now: u64,
}

impl Apply for ExpireGrace {
    type Output = usize;

    fn apply(&self, t: &BatchView<'_>) -> TxResult<usize> {
        let end = grace_key(self.now, &[0xff; 32]);
        let mut removed = 0;
        for key in t.grace.stored_keys_through(&end)? {
            let Ok(hash) = <[u8; 32]>::try_from(&key[8..]) else {
                return Err(StoreError::Corrupt {
                    what: "grace expiry key",
                });
            };
            // An earlier operation of this batch may have ended it already.
            let Some(user) = t.grace.remove(&key)? else {
                continue;
            };
            if let Some(bytes) = t.index.get(&hash)? {
                // Only a grace entry: a current token is never removed here.
                if decode_index(&bytes)?.grace_until.is_some() {
                    t.index.remove(&hash)?;
                }
            }
            if let Some(bytes) = t.users.get(&user)? {
                let record = decode_user(&bytes)?;
                if let Some(prev) = record.previous.as_ref().filter(|p| p.hash == hash) {
                    let user_id = std::str::from_utf8(&user)
                        .map_err(|_| StoreError::Corrupt { what: "user key" })?;
                    t.audit(
                        Audit::by(Actor::System)
                            .event(EventKind::GraceEnded, prev.until, user_id)
                            .with_prefix(&prev.prefix),
                    )?;
                    let record = UserRecord {
                        previous: None,
                        ..record
                    };
                    t.users.insert(&user, encode_user(&record)?);
                }
            }
            removed += 1;
        }
        Ok(removed)
    }

    /// Verify refuses these by time already: nothing waits for the disk.
    fn durable(&self) -> bool {
        false
    }
}

/// Writes the readiness probe's key, so a batch is written and synced
/// right now; see [`crate::store::db::Db::probe_write`].
pub(crate) struct Probe {
    pub now: u64,
}

impl Apply for Probe {
    type Output = ();

    fn apply(&self, t: &BatchView<'_>) -> TxResult<()> {
        t.meta.insert(PROBE_KEY, self.now.to_be_bytes());
        Ok(())
    }
}

/// Removes events older than a time, at most `max` of them per operation
/// so a sweep never holds the flusher long (see `Db::sweep_audit`).
pub(crate) struct SweepAudit {
    pub before: u64,
    pub max: usize,
}

impl Apply for SweepAudit {
    type Output = usize;

    fn apply(&self, t: &BatchView<'_>) -> Result<usize, StoreError> {
        let Some(end) = self.before.checked_sub(1) else {
            return Ok(0);
        };
        let mut removed = 0;
        for key in t.events.stored_keys_through(&event_key(end, u64::MAX))? {
            if removed == self.max {
                break;
            }
            let Some(bytes) = t.events.remove(&key)? else {
                continue;
            };
            let event_key =
                <[u8; 16]>::try_from(key.as_slice()).map_err(|_| StoreError::Corrupt {
                    what: "audit event key",
                })?;
            if let Some(user) = decode_event(&bytes)?.user_id {
                t.event_users.remove(&user_event_key(&user, &event_key))?;
            }
            removed += 1;
        }
        Ok(removed)
    }

    /// Nobody waits on old events: answered once readers see the change.
    fn durable(&self) -> bool {
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn committer() -> (tempfile::TempDir, StoreCommitter) {
        let dir = tempfile::tempdir().unwrap();
        let db = fjall::Database::builder(dir.path()).open().unwrap();
        let keyspaces = crate::store::keyspaces::Keyspaces::open(&db).unwrap();
        let committer = StoreCommitter {
            db,
            users: keyspaces.users,
            index: keyspaces.index,
            grace: keyspaces.grace,
            meta: keyspaces.meta,
            events: keyspaces.events,
            event_users: keyspaces.event_users,
            next_seq: Cell::new(0),
            listener: Arc::new(crate::store::NoListener),
        };
        (dir, committer)
    }

    fn rotate(user: &str, hash: u8, now: u64) -> Rotate {
        Rotate {
            user: user.into(),
            hash: [hash; 32],
            prefix: format!("sk_agt_{hash:02x}000000..."),
            now,
            grace_secs: 0,
            fresh_index: encode_index(&IndexEntry::fresh(
                user,
                &format!("sk_agt_{hash:02x}000000..."),
                now,
            ))
            .unwrap(),
            audit: Audit::by(Actor::User),
        }
    }

    /// Keeps every reported change.
    #[derive(Default)]
    struct Heard(std::sync::Mutex<Vec<Changes>>);

    impl ChangeListener for Heard {
        fn committed(&self, changes: &Changes) {
            self.0.lock().unwrap().push(changes.clone());
        }
        fn reopening(&self) {}
    }

    #[test]
    fn a_stamp_is_reported_apart_unless_the_batch_also_changes_the_token() {
        let (_dir, mut committer) = committer();
        let heard = Arc::new(Heard::default());
        committer.listener = heard.clone();
        let (a, _) = Queued::queue(rotate("alice", 1, 10));
        let (b, _) = Queued::queue(rotate("bob", 2, 10));
        committer.apply(vec![a, b]);
        // alice's token is only stamped; bob's is stamped, then rotated out.
        let (stamp, _) = Queued::queue(Stamp {
            stamps: vec![([1; 32], 70), ([2; 32], 70)],
        });
        let (bob, _) = Queued::queue(rotate("bob", 3, 71));
        committer.apply(vec![stamp, bob]);
        let changes = heard.0.lock().unwrap().last().cloned().unwrap();
        assert_eq!(changes.stamped_tokens, vec![([1; 32], 70)]);
        let mut tokens = changes.tokens.clone();
        tokens.sort();
        assert_eq!(tokens, vec![vec![2; 32], vec![3; 32]]);
        // The user record's stamp changes alice's GET /me answer.
        assert!(changes.users.contains(&b"alice".to_vec()));
        // A change before a stamp in one batch is reported as a change.
        let (carol, _) = Queued::queue(rotate("carol", 4, 80));
        let (stamp, _) = Queued::queue(Stamp {
            stamps: vec![([4; 32], 140)],
        });
        committer.apply(vec![carol, stamp]);
        let changes = heard.0.lock().unwrap().last().cloned().unwrap();
        assert!(changes.stamped_tokens.is_empty());
        assert_eq!(changes.tokens, vec![vec![4; 32]]);
    }

    #[test]
    fn one_batch_applies_in_order_and_a_refusal_spoils_only_its_own_operation() {
        let (_dir, mut committer) = committer();
        committer.users.insert("bob", &b"\x02garbage"[..]).unwrap();
        let (a1, mut a1_rx) = Queued::queue(rotate("alice", 1, 10));
        let (b, mut b_rx) = Queued::queue(rotate("bob", 2, 10));
        let (a2, mut a2_rx) = Queued::queue(rotate("alice", 3, 11));
        let applied = committer.apply(vec![a1, b, a2]);
        assert!(applied.synced);
        // bob's damaged record refused his rotation at once; nothing of his was written.
        assert!(matches!(
            b_rx.try_recv(),
            Ok(Err(StoreError::Corrupt { .. }))
        ));
        assert!(committer.index.get([2u8; 32]).unwrap().is_none());
        // The others wait for the flush.
        assert!(a1_rx.try_recv().is_err());
        assert_eq!(applied.completions.len(), 2);
        for complete in applied.completions {
            complete(Ok(()));
        }
        let (first, replaced_first) = a1_rx.try_recv().unwrap().unwrap();
        let (second, replaced_second) = a2_rx.try_recv().unwrap().unwrap();
        assert_eq!((first.hash, replaced_first), ([1; 32], false));
        // The second rotation saw the first one's write in the same batch.
        assert_eq!((second.hash, replaced_second), ([3; 32], true));
        assert!(committer.index.get([1u8; 32]).unwrap().is_none());
        let stored = decode_user(&committer.users.get("alice").unwrap().unwrap()).unwrap();
        assert_eq!(stored.hash, [3; 32]);
    }

    #[test]
    fn answers_carry_a_failed_flush_and_reads_still_wait_for_it() {
        let (_dir, mut committer) = committer();
        let (r, mut r_rx) = Queued::queue(Revoke {
            user: "nobody".into(),
            now: 10,
            audit: Audit::by(Actor::User),
        });
        let applied = committer.apply(vec![r]);
        assert!(!applied.synced);
        assert_eq!(applied.completions.len(), 1);
        for complete in applied.completions {
            complete(Err(DurabilityError::Flush("disk on fire".into())));
        }
        assert!(matches!(
            r_rx.try_recv(),
            Ok(Err(StoreError::Durability(DurabilityError::Flush(_))))
        ));
    }

    fn run_one<A: Apply>(committer: &mut StoreCommitter, op: A) -> A::Output {
        let (op, mut rx) = Queued::queue(op);
        for complete in committer.apply(vec![op]).completions {
            complete(Ok(()));
        }
        rx.try_recv().unwrap().unwrap()
    }

    #[test]
    fn revoking_by_hash_ends_a_grace_token_alone_or_a_current_token_with_its_grace() {
        let (_dir, mut committer) = committer();
        run_one(&mut committer, rotate("alice", 1, 10));
        run_one(
            &mut committer,
            Rotate {
                grace_secs: 600,
                ..rotate("alice", 2, 20)
            },
        );
        run_one(&mut committer, rotate("bob", 7, 10));
        assert_eq!(committer.grace.len().unwrap(), 1);
        // The token in grace ends alone; alice keeps her current token.
        assert_eq!(
            run_one(
                &mut committer,
                RevokeToken {
                    hash: [1; 32],
                    now: 100,
                    audit: Audit::by(Actor::LeakReport)
                }
            ),
            TokenRevoked::InGrace {
                user: "alice".into()
            }
        );
        assert!(committer.index.get([1u8; 32]).unwrap().is_none());
        assert_eq!(committer.grace.len().unwrap(), 0);
        let alice = decode_user(&committer.users.get("alice").unwrap().unwrap()).unwrap();
        assert_eq!((alice.hash, alice.previous), ([2; 32], None));
        // A current token takes the user's grace token with it.
        run_one(
            &mut committer,
            Rotate {
                grace_secs: 600,
                ..rotate("alice", 3, 30)
            },
        );
        assert_eq!(
            run_one(
                &mut committer,
                RevokeToken {
                    hash: [3; 32],
                    now: 100,
                    audit: Audit::by(Actor::LeakReport)
                }
            ),
            TokenRevoked::Current {
                user: "alice".into()
            }
        );
        for hash in [[2u8; 32], [3; 32]] {
            assert!(committer.index.get(hash).unwrap().is_none());
        }
        assert!(committer.users.get("alice").unwrap().is_none());
        assert_eq!(committer.grace.len().unwrap(), 0);
        // Unknown or already gone: nothing changes; bob is untouched.
        assert_eq!(
            run_one(
                &mut committer,
                RevokeToken {
                    hash: [3; 32],
                    now: 100,
                    audit: Audit::by(Actor::LeakReport)
                }
            ),
            TokenRevoked::Unknown
        );
        assert!(committer.index.get([7u8; 32]).unwrap().is_some());
    }

    #[test]
    fn stamps_change_only_stored_tokens_and_never_go_back_in_time() {
        let (_dir, mut committer) = committer();
        let (a, _a) = Queued::queue(rotate("alice", 1, 10));
        let (b, _b) = Queued::queue(rotate("bob", 2, 10));
        for complete in committer.apply(vec![a, b]).completions {
            complete(Ok(()));
        }
        // bob revokes; his stamp, queued behind the revoke, must not bring
        // his token back.
        let (r, _r) = Queued::queue(Revoke {
            user: "bob".into(),
            now: 60,
            audit: Audit::by(Actor::User),
        });
        let (s, mut s_rx) = Queued::queue(Stamp {
            stamps: vec![([1; 32], 70), ([2; 32], 70), ([9; 32], 70)],
        });
        let applied = committer.apply(vec![r, s]);
        assert!(applied.synced);
        for complete in applied.completions {
            complete(Ok(()));
        }
        assert_eq!(s_rx.try_recv().unwrap().unwrap(), 1, "alice's alone");
        assert!(committer.index.get([2u8; 32]).unwrap().is_none());
        assert!(committer.users.get("bob").unwrap().is_none());
        let entry = decode_index(&committer.index.get([1u8; 32]).unwrap().unwrap()).unwrap();
        assert_eq!(entry.last_used_at, Some(70));
        let alice = decode_user(&committer.users.get("alice").unwrap().unwrap()).unwrap();
        assert_eq!(alice.last_used_at, Some(70));
        // An older stamp (written late) leaves the newer one.
        let (s, mut s_rx) = Queued::queue(Stamp {
            stamps: vec![([1; 32], 40)],
        });
        let applied = committer.apply(vec![s]);
        assert!(!applied.synced);
        assert_eq!(s_rx.try_recv().unwrap().unwrap(), 0);
    }
}
