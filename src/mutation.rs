//! The API's mutations as queued operations, applied by the flusher thread
//! in batches: every operation queued during one flush cycle runs in one
//! sled transaction (see [`crate::durability`] for why that matters).
//!
//! Each operation is a small struct implementing [`Apply`]: its arguments,
//! prepared by the request (encoding happens there, not on the one thread
//! every write goes through), and a function that applies it inside the
//! batch's transaction. Later operations in a batch see earlier ones'
//! writes, so two rotations of one user in the same batch behave exactly as
//! they would one after the other.

use std::cell::RefCell;
use std::collections::HashSet;
use std::sync::{Arc, Mutex, PoisonError};

use sled::transaction::{
    ConflictableTransactionError, TransactionError, TransactionalTree, UnabortableTransactionError,
};
use sled::{IVec, Transactional, Tree};
use tokio::sync::oneshot;

use crate::durability::{Applied, Committer, Completion, DurabilityError};
use crate::store::{
    decode_index, decode_user, encode_index, encode_user, grace_key, ChangeListener, Changes,
    GetOrCreate, GraceToken, IndexEntry, StoreError, UserRecord,
};

type TxResult<T> = Result<T, ConflictableTransactionError<StoreError>>;

/// Decodes inside a transaction, aborting it on damaged bytes.
pub(crate) fn tx_decode<T>(result: Result<T, StoreError>) -> TxResult<T> {
    result.map_err(ConflictableTransactionError::Abort)
}

/// The trees a batch's transaction spans. Every write is recorded, so
/// whoever remembers answers (or copies the store) hears what changed.
pub(crate) struct TxTrees<'a> {
    pub users: Tracked<'a>,
    pub index: Tracked<'a>,
    pub grace: Tracked<'a>,
}

/// A tree inside a transaction that records the keys written to it.
pub(crate) struct Tracked<'a> {
    tree: &'a TransactionalTree,
    written: &'a RefCell<Vec<Vec<u8>>>,
}

type TxOutcome<T> = Result<T, UnabortableTransactionError>;

impl<'a> Tracked<'a> {
    pub fn new(tree: &'a TransactionalTree, written: &'a RefCell<Vec<Vec<u8>>>) -> Self {
        Self { tree, written }
    }

    pub fn get<K: AsRef<[u8]>>(&self, key: K) -> TxOutcome<Option<IVec>> {
        self.tree.get(key)
    }

    pub fn insert<K, V>(&self, key: K, value: V) -> TxOutcome<Option<IVec>>
    where
        K: AsRef<[u8]> + Into<IVec>,
        V: Into<IVec>,
    {
        self.written.borrow_mut().push(key.as_ref().to_vec());
        self.tree.insert(key, value)
    }

    pub fn remove<K>(&self, key: K) -> TxOutcome<Option<IVec>>
    where
        K: AsRef<[u8]> + Into<IVec>,
    {
        self.written.borrow_mut().push(key.as_ref().to_vec());
        self.tree.remove(key)
    }
}

/// The keys a transaction attempt wrote, as [`Changes`] once it commits.
#[derive(Default)]
pub(crate) struct Written {
    pub users: RefCell<Vec<Vec<u8>>>,
    pub index: RefCell<Vec<Vec<u8>>>,
    pub grace: RefCell<Vec<Vec<u8>>>,
}

impl Written {
    /// Starts an attempt over (a transaction closure may run more than once).
    pub fn restart(&self) {
        self.users.borrow_mut().clear();
        self.index.borrow_mut().clear();
        self.grace.borrow_mut().clear();
    }

    pub fn trees<'a>(
        &'a self,
        users: &'a TransactionalTree,
        index: &'a TransactionalTree,
        grace: &'a TransactionalTree,
    ) -> TxTrees<'a> {
        TxTrees {
            users: Tracked::new(users, &self.users),
            index: Tracked::new(index, &self.index),
            grace: Tracked::new(grace, &self.grace),
        }
    }

    /// Tells `listener` what was written, if anything.
    pub fn report(&self, listener: &dyn ChangeListener) {
        let changes = Changes {
            users: self.users.take(),
            tokens: self.index.take(),
            grace: self.grace.take(),
        };
        if !changes.is_empty() {
            listener.committed(&changes);
        }
    }
}

/// One kind of mutation.
pub(crate) trait Apply: Send + 'static {
    type Output: Send + 'static;
    /// Applies the operation inside the batch's transaction.
    fn apply(&self, trees: &TxTrees<'_>) -> TxResult<Self::Output>;
    /// Whether this outcome changed anything (and so is owed a flush).
    fn wrote(output: &Self::Output) -> bool;
    /// Whether the answer waits for the flush; `false` answers as soon as
    /// the change is visible to readers.
    fn durable(&self) -> bool {
        true
    }
    /// Runs once the operation is answered or failed.
    fn done(&self) {}
}

/// A queued operation as the flusher thread sees it.
pub(crate) trait Mutation: Send {
    fn apply(&self, trees: &TxTrees<'_>) -> TxResult<()>;
    fn wrote(&self) -> bool;
    /// Answers now, or returns what answers once the flush is done.
    fn answer(self: Box<Self>) -> Option<Completion>;
    fn fail(self: Box<Self>, err: StoreError);
}

pub(crate) type Reply<T> = oneshot::Sender<Result<T, StoreError>>;
pub(crate) type Answer<T> = oneshot::Receiver<Result<T, StoreError>>;

pub(crate) struct Queued<A: Apply> {
    args: A,
    // Set by the latest run of the transaction closure (it may be retried).
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
    fn apply(&self, trees: &TxTrees<'_>) -> TxResult<()> {
        let output = self.args.apply(trees)?;
        *self.output.borrow_mut() = Some(output);
        Ok(())
    }

    fn wrote(&self) -> bool {
        self.output.borrow().as_ref().is_some_and(A::wrote)
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

/// Applies batches to the store's trees on the flusher thread.
pub(crate) struct TreeCommitter {
    pub users: Tree,
    pub index: Tree,
    pub grace: Tree,
    /// Hears every committed batch's changes before any answer goes out.
    pub listener: Arc<dyn ChangeListener>,
}

impl Committer for TreeCommitter {
    type Op = Box<dyn Mutation>;

    fn apply(&mut self, mut ops: Vec<Box<dyn Mutation>>) -> Applied {
        let mut completions = Vec::with_capacity(ops.len());
        let mut wrote = false;
        let written = Written::default();
        while !ops.is_empty() {
            let result =
                (&self.users, &self.index, &self.grace).transaction(|(users, index, grace)| {
                    written.restart();
                    let trees = written.trees(users, index, grace);
                    for (n, op) in ops.iter().enumerate() {
                        op.apply(&trees).map_err(|e| match e {
                            ConflictableTransactionError::Abort(err) => {
                                ConflictableTransactionError::Abort((n, err))
                            }
                            ConflictableTransactionError::Conflict => {
                                ConflictableTransactionError::Conflict
                            }
                            ConflictableTransactionError::Storage(err) => {
                                ConflictableTransactionError::Storage(err)
                            }
                        })?;
                    }
                    Ok(())
                });
            match result {
                Ok(()) => {
                    // Before any answer: a client told "done" must never be
                    // served an answer remembered from before its change.
                    written.report(&*self.listener);
                    for op in ops.drain(..) {
                        wrote |= op.wrote();
                        completions.extend(op.answer());
                    }
                }
                // Nothing of the aborted transaction was written: the
                // operation that refused gets its error, the rest run again.
                Err(TransactionError::Abort((n, err))) => ops.remove(n).fail(err),
                Err(TransactionError::Storage(err)) => {
                    // Whatever part of it readers may see is forgotten too.
                    written.report(&*self.listener);
                    for op in ops.drain(..) {
                        op.fail(StoreError::Sled(err.clone()));
                    }
                }
            }
        }
        Applied { wrote, completions }
    }
}

/// Ends a rotated-out token's grace window now.
fn end_grace(trees: &TxTrees<'_>, previous: Option<&GraceToken>) -> TxResult<()> {
    if let Some(prev) = previous {
        trees.index.remove(&prev.hash[..])?;
        trees.grace.remove(&grace_key(prev.until, &prev.hash)[..])?;
    }
    Ok(())
}

/// Replaces (or creates) a user's token; see [`crate::store::Store::rotate`].
pub(crate) struct Rotate {
    pub user: String,
    pub hash: [u8; 32],
    pub prefix: String,
    pub now: u64,
    pub grace_secs: u64,
    /// The new token's encoded index entry.
    pub fresh_index: Vec<u8>,
}

impl Apply for Rotate {
    type Output = (UserRecord, bool);

    fn apply(&self, t: &TxTrees<'_>) -> TxResult<(UserRecord, bool)> {
        let key = self.user.as_bytes();
        let mut previous = None;
        let old = t.users.get(key)?;
        let replaced = old.is_some();
        if let Some(old) = old {
            let old = tx_decode(decode_user(&old))?;
            end_grace(t, old.previous.as_ref())?;
            if self.grace_secs == 0 {
                t.index.remove(&old.hash[..])?;
            } else if let Some(bytes) = t.index.get(&old.hash[..])? {
                // (A token without an index entry was not verifiable: there
                // is nothing to keep alive.)
                let until = self.now.saturating_add(self.grace_secs);
                let entry = IndexEntry {
                    grace_until: Some(until),
                    ..tx_decode(decode_index(&bytes))?
                };
                t.index
                    .insert(&old.hash[..], tx_decode(encode_index(&entry))?)?;
                t.grace.insert(&grace_key(until, &old.hash)[..], key)?;
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
        t.users.insert(key, tx_decode(encode_user(&record))?)?;
        t.index
            .insert(&self.hash[..], self.fresh_index.as_slice())?;
        Ok((record, replaced))
    }

    fn wrote(_: &(UserRecord, bool)) -> bool {
        true
    }
}

/// Creates a user's token unless one exists; see [`crate::store::Store::get_or_create`].
pub(crate) struct Create {
    pub user: String,
    pub record: UserRecord,
    pub record_bytes: Vec<u8>,
    pub index_bytes: Vec<u8>,
}

impl Apply for Create {
    type Output = GetOrCreate;

    fn apply(&self, t: &TxTrees<'_>) -> TxResult<GetOrCreate> {
        let key = self.user.as_bytes();
        if let Some(existing) = t.users.get(key)? {
            return Ok(GetOrCreate::Existing(tx_decode(decode_user(&existing))?));
        }
        t.users.insert(key, self.record_bytes.as_slice())?;
        t.index
            .insert(&self.record.hash[..], self.index_bytes.as_slice())?;
        Ok(GetOrCreate::Created(self.record.clone()))
    }

    /// An existing record still waits for the flush: it may come from a
    /// request whose change has not reached the disk yet, and we never
    /// report what a crash could undo.
    fn wrote(output: &GetOrCreate) -> bool {
        matches!(output, GetOrCreate::Created(_))
    }
}

/// Removes a user's token and any token in grace; see [`crate::store::Store::revoke`].
pub(crate) struct Revoke {
    pub user: String,
}

impl Apply for Revoke {
    type Output = bool;

    fn apply(&self, t: &TxTrees<'_>) -> TxResult<bool> {
        match t.users.remove(self.user.as_bytes())? {
            Some(old) => {
                let old = tx_decode(decode_user(&old))?;
                t.index.remove(&old.hash[..])?;
                end_grace(t, old.previous.as_ref())?;
                Ok(true)
            }
            None => Ok(false),
        }
    }

    fn wrote(removed: &bool) -> bool {
        *removed
    }
}

/// Token hashes with a last-used stamp queued, so a token verified many
/// times before its stamp is applied queues it once.
pub(crate) type PendingTouches = Arc<Mutex<HashSet<[u8; 32]>>>;

/// Stamps a token's last use; see [`crate::store::Store::touch`].
pub(crate) struct Touch {
    pub hash: [u8; 32],
    pub now: u64,
    pub pending: PendingTouches,
}

impl Apply for Touch {
    type Output = bool;

    fn apply(&self, t: &TxTrees<'_>) -> TxResult<bool> {
        let Some(bytes) = t.index.get(&self.hash[..])? else {
            return Ok(false);
        };
        let entry = IndexEntry {
            last_used_at: Some(self.now),
            ..tx_decode(decode_index(&bytes))?
        };
        t.index
            .insert(&self.hash[..], tx_decode(encode_index(&entry))?)?;
        let user_key = entry.user_id.as_bytes();
        if let Some(bytes) = t.users.get(user_key)? {
            let record = tx_decode(decode_user(&bytes))?;
            if record.hash == self.hash {
                let record = UserRecord {
                    last_used_at: Some(self.now),
                    ..record
                };
                t.users.insert(user_key, tx_decode(encode_user(&record))?)?;
            }
        }
        Ok(true)
    }

    fn wrote(touched: &bool) -> bool {
        *touched
    }

    /// A stamp is answered once readers see it; the flush follows.
    fn durable(&self) -> bool {
        false
    }

    fn done(&self) {
        self.pending
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(&self.hash);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{GRACE_TREE, INDEX_TREE, USER_TREE};

    fn trees() -> (tempfile::TempDir, TreeCommitter) {
        let dir = tempfile::tempdir().unwrap();
        let db = sled::Config::new()
            .path(dir.path())
            .flush_every_ms(None)
            .open()
            .unwrap();
        let committer = TreeCommitter {
            users: db.open_tree(USER_TREE).unwrap(),
            index: db.open_tree(INDEX_TREE).unwrap(),
            grace: db.open_tree(GRACE_TREE).unwrap(),
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
        }
    }

    #[test]
    fn one_batch_applies_in_order_and_a_refusal_spoils_only_its_own_operation() {
        let (_dir, mut committer) = trees();
        committer.users.insert("bob", &b"\x02garbage"[..]).unwrap();
        let (a1, mut a1_rx) = Queued::queue(rotate("alice", 1, 10));
        let (b, mut b_rx) = Queued::queue(rotate("bob", 2, 10));
        let (a2, mut a2_rx) = Queued::queue(rotate("alice", 3, 11));
        let applied = committer.apply(vec![a1, b, a2]);
        assert!(applied.wrote);
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
        // The second rotation saw the first one's write in the same transaction.
        assert_eq!((second.hash, replaced_second), ([3; 32], true));
        assert!(committer.index.get([1u8; 32]).unwrap().is_none());
        let stored = decode_user(&committer.users.get("alice").unwrap().unwrap()).unwrap();
        assert_eq!(stored.hash, [3; 32]);
    }

    #[test]
    fn answers_carry_a_failed_flush_and_reads_still_wait_for_it() {
        let (_dir, mut committer) = trees();
        let (r, mut r_rx) = Queued::queue(Revoke {
            user: "nobody".into(),
        });
        let applied = committer.apply(vec![r]);
        assert!(!applied.wrote);
        assert_eq!(applied.completions.len(), 1);
        for complete in applied.completions {
            complete(Err(DurabilityError::Flush("disk on fire".into())));
        }
        assert!(matches!(
            r_rx.try_recv(),
            Ok(Err(StoreError::Durability(DurabilityError::Flush(_))))
        ));
    }

    #[test]
    fn a_touch_is_answered_once_visible_and_leaves_the_pending_set() {
        let (_dir, mut committer) = trees();
        let (a, _a_rx) = Queued::queue(rotate("alice", 1, 10));
        for complete in committer.apply(vec![a]).completions {
            complete(Ok(()));
        }
        let pending = PendingTouches::default();
        pending.lock().unwrap().insert([1; 32]);
        let (t, mut t_rx) = Queued::queue(Touch {
            hash: [1; 32],
            now: 70,
            pending: Arc::clone(&pending),
        });
        let applied = committer.apply(vec![t]);
        assert!(applied.wrote && applied.completions.is_empty());
        assert!(t_rx.try_recv().unwrap().unwrap());
        assert!(pending.lock().unwrap().is_empty());
        let entry = decode_index(&committer.index.get([1u8; 32]).unwrap().unwrap()).unwrap();
        assert_eq!(entry.last_used_at, Some(70));
    }
}
