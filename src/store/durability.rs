//! Group commit: one thread applies queued mutations and makes them durable.
//!
//! Requests queue their mutations; each cycle the flusher thread applies
//! everything queued ([`Committer::apply`]) and writes the result as one
//! fjall write batch, fdatasynced into the journal before the memtables
//! take it. Every request of the cycle shares that one sync: measured, the
//! sync dominates a rotation's cost, so sharing it is what lets concurrent
//! rotations outrun the disk's own sync rate.
//!
//! Writes made outside a batch (the readiness probe's key) bump `written`
//! after they are in the journal; the flusher reads `written` *before* a
//! batch's sync or its own `persist`, so a completed sync covers every
//! write counted at that point. Waiters are only woken after the sync.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use fjall::{Database, PersistMode};
use tokio::sync::oneshot;

/// A flush or sync failed; every request waiting on it gets this.
#[derive(Debug, Clone, thiserror::Error)]
pub enum DurabilityError {
    #[error("flushing the store to disk failed: {0}")]
    Flush(Arc<str>),
    #[error("the flusher thread has stopped")]
    Stopped,
}

/// How long a write that nobody waits for may stay unflushed.
pub const IDLE_FLUSH: Duration = Duration::from_secs(1);

/// Most operations applied in one batch; the rest wait for the next cycle.
const MAX_BATCH: usize = 4096;

type Waiter = oneshot::Sender<Result<(), DurabilityError>>;

/// Runs once the flush covering an applied operation is done (or failed).
pub type Completion = Box<dyn FnOnce(Result<(), DurabilityError>) + Send>;

/// What [`Committer::apply`] did with a batch.
#[derive(Default)]
pub struct Applied {
    /// Whether the batch wrote and synced (so everything written before it
    /// is durable too).
    pub synced: bool,
    /// How long that write and sync took.
    pub sync_took: Duration,
    /// One per operation that answers only once it is durable.
    pub completions: Vec<Completion>,
}

/// Applies queued operations on the flusher thread, all of one cycle's
/// operations in one write batch.
pub trait Committer: Send + 'static {
    type Op: Send + 'static;
    fn apply(&mut self, ops: Vec<Self::Op>) -> Applied;
    /// Storage upkeep, run on the flusher thread about every [`UPKEEP`].
    fn upkeep(&mut self) {}
}

/// How often [`Committer::upkeep`] runs (at most; an idle flusher waits).
pub const UPKEEP: Duration = Duration::from_secs(1);

struct State<O> {
    /// Highest write sequence known to be on stable storage.
    durable: u64,
    waiters: Vec<Waiter>,
    ops: Vec<O>,
    /// An operation somebody waits for is queued: do not wait for the idle timer.
    urgent: bool,
    shutdown: bool,
}

struct Shared<O> {
    written: AtomicU64,
    state: Mutex<State<O>>,
    wake: Condvar,
    stats: FlushStats,
}

/// Counters for metrics and benchmarks.
#[derive(Default)]
pub struct FlushStats {
    pub flushes: AtomicU64,
    pub flush_micros_total: AtomicU64,
    pub waiters_served: AtomicU64,
}

pub struct Flusher<O> {
    shared: Arc<Shared<O>>,
    thread: Option<JoinHandle<()>>,
}

fn lock<O>(m: &Mutex<State<O>>) -> MutexGuard<'_, State<O>> {
    // The state is a counter and a list of senders; a panic elsewhere cannot
    // leave it half-updated in a way that matters, so poisoning is ignored.
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

fn sync(db: &Database) -> Result<(), DurabilityError> {
    db.persist(PersistMode::SyncData)
        .map_err(|e| DurabilityError::Flush(e.to_string().into()))
}

impl<O: Send + 'static> Flusher<O> {
    /// Starts the flusher thread for `db`.
    pub fn start<C: Committer<Op = O>>(
        db: Database,
        committer: C,
    ) -> Result<Self, DurabilityError> {
        // What open wrote (the schema key of a new store) is durable before we serve.
        db.persist(PersistMode::SyncAll)
            .map_err(|e| DurabilityError::Flush(e.to_string().into()))?;
        let shared = Arc::new(Shared {
            written: AtomicU64::new(0),
            state: Mutex::new(State {
                durable: 0,
                waiters: Vec::new(),
                ops: Vec::new(),
                urgent: false,
                shutdown: false,
            }),
            wake: Condvar::new(),
            stats: FlushStats::default(),
        });
        let thread_shared = Arc::clone(&shared);
        let thread = std::thread::Builder::new()
            .name("agent-tokens-flusher".into())
            .spawn(move || run(thread_shared, db, committer))
            .map_err(|e| DurabilityError::Flush(e.to_string().into()))?;
        Ok(Self {
            shared,
            thread: Some(thread),
        })
    }

    /// Queues an operation for the next cycle, which starts at once.
    pub fn submit(&self, op: O) {
        let mut state = lock(&self.shared.state);
        state.ops.push(op);
        state.urgent = true;
        self.shared.wake.notify_one();
    }

    /// Waits until every mutation applied so far is durable.
    pub async fn wait_for_all_writes(&self) -> Result<(), DurabilityError> {
        let seq = self.shared.written.load(Ordering::SeqCst);
        self.wait_for(seq).await
    }

    pub fn stats(&self) -> &FlushStats {
        &self.shared.stats
    }

    /// Queues a waiter for `seq` unless it is already durable.
    fn register(&self, seq: u64) -> Option<oneshot::Receiver<Result<(), DurabilityError>>> {
        let mut state = lock(&self.shared.state);
        if state.durable >= seq {
            return None;
        }
        let (tx, rx) = oneshot::channel();
        state.waiters.push(tx);
        self.shared.wake.notify_one();
        Some(rx)
    }

    async fn wait_for(&self, seq: u64) -> Result<(), DurabilityError> {
        match self.register(seq) {
            None => Ok(()),
            Some(rx) => rx.await.map_err(|_| DurabilityError::Stopped)?,
        }
    }
}

impl<O> Drop for Flusher<O> {
    fn drop(&mut self) {
        lock(&self.shared.state).shutdown = true;
        self.shared.wake.notify_one();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn run<C: Committer>(shared: Arc<Shared<C::Op>>, db: Database, mut committer: C) {
    let mut last_upkeep = Instant::now();
    loop {
        if last_upkeep.elapsed() >= UPKEEP {
            committer.upkeep();
            last_upkeep = Instant::now();
        }
        let (waiters, ops, shutdown) = {
            let mut state = lock(&shared.state);
            while state.waiters.is_empty() && !state.urgent && !state.shutdown {
                let (next, timeout) = shared
                    .wake
                    .wait_timeout(state, IDLE_FLUSH)
                    .unwrap_or_else(PoisonError::into_inner);
                state = next;
                // Unwaited writes still reach the disk.
                if timeout.timed_out() && shared.written.load(Ordering::SeqCst) > state.durable {
                    break;
                }
            }
            let ops = if state.ops.len() > MAX_BATCH {
                let rest = state.ops.split_off(MAX_BATCH);
                std::mem::replace(&mut state.ops, rest)
            } else {
                std::mem::take(&mut state.ops)
            };
            state.urgent = !state.ops.is_empty();
            (std::mem::take(&mut state.waiters), ops, state.shutdown)
        };
        let completions = if ops.is_empty() {
            Vec::new()
        } else {
            let before = shared.written.load(Ordering::SeqCst);
            let applied = committer.apply(ops);
            if applied.synced {
                record(
                    &shared.stats,
                    applied.sync_took,
                    waiters.len() + applied.completions.len(),
                );
                // The batch's sync covered the journal up to its own end,
                // so every write counted before it too.
                let mut state = lock(&shared.state);
                state.durable = state.durable.max(before);
            }
            applied.completions
        };
        let target = shared.written.load(Ordering::SeqCst);
        // Only this thread raises `durable`, so reading it here is stable.
        let result = if lock(&shared.state).durable >= target {
            Ok(())
        } else {
            let started = Instant::now();
            let result = sync(&db);
            record(
                &shared.stats,
                started.elapsed(),
                waiters.len() + completions.len(),
            );
            match &result {
                Ok(()) => lock(&shared.state).durable = target,
                Err(e) => log::error!("{e}"),
            }
            result
        };
        for waiter in waiters {
            let _ = waiter.send(result.clone());
        }
        for complete in completions {
            complete(result.clone());
        }
        if shutdown {
            let state = lock(&shared.state);
            if state.waiters.is_empty() && state.ops.is_empty() {
                break;
            }
        }
    }
}

fn record(stats: &FlushStats, took: Duration, waiters: usize) {
    crate::metrics::METRICS.observe_flush(took, waiters);
    stats.flushes.fetch_add(1, Ordering::Relaxed);
    stats.flush_micros_total.fetch_add(
        u64::try_from(took.as_micros()).unwrap_or(u64::MAX),
        Ordering::Relaxed,
    );
    stats
        .waiters_served
        .fetch_add(waiters as u64, Ordering::Relaxed);
}
