//! SQLite writes for the hot path (reserve, settle): inline when the writer is free,
//! group-committed by a writer thread when it is not.
//!
//! SQLite has one writer at a time. Per request, a pool connection on the blocking
//! pool paid two thread hops per transaction (costly wake-ups on a VM), a lock
//! handover between connections, and a commit that rewrote the same WAL pages. Now
//! one connection does all of it:
//! - **Inline**, when no job is queued and the connection is free: the transaction
//!   runs on the calling thread. It never waits for a lock (`busy_timeout = 0`;
//!   a busy database sends the job to the queue instead), so an async worker is held
//!   only for the transaction's own work, tens of microseconds.
//! - **Queued** otherwise: a writer thread runs everything waiting in one
//!   `BEGIN IMMEDIATE` transaction, each job in its own savepoint, so one commit
//!   covers dozens of requests under load. It waits for other writers (the
//!   dashboard's pool, the command line) with a bounded backoff.
//!
//! Durability is unchanged: nobody hears "done" before the commit. Checkpoints run
//! on a connection of their own (`checkpointer`), never inside a request's commit.

use super::{AnyConnection, ConnectionManager, RetryableError, StoreError};
use diesel::connection::{
    AnsiTransactionManager, Connection, SimpleConnection, TransactionManager,
};
use diesel::result::Error as DieselError;
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, TryLockError, mpsc};
use std::time::{Duration, Instant};

/// Most jobs in one transaction: bounds how long the write lock is held at a time, so
/// other writers (the dashboard, the command line, another process) get their turn.
const MAX_BATCH: usize = 256;
/// Attempts for a job that lost a race (a unique violation), as in `write_tx`.
const ATTEMPTS: usize = 4;
/// How long the writer thread waits for another process's write lock, as SQLite's
/// busy timeout does on the other connections.
const BUSY_PATIENCE: Duration = Duration::from_secs(10);
/// Commits between nudges to the checkpointer; it also runs once a second.
const COMMITS_PER_CHECKPOINT: u32 = 200;

type Work<T> = dyn FnMut(&mut AnyConnection) -> Result<T, StoreError> + Send;

/// A unit of work for the writer thread.
trait Job: Send {
    /// Runs inside the batch's transaction, in a savepoint of its own.
    fn run(&mut self, c: &mut AnyConnection);
    /// Runs alone in a transaction of its own (a batch of one: no savepoint needed).
    /// Errs only when the transaction itself failed.
    fn run_alone(&mut self, c: &mut AnyConnection) -> Result<(), StoreError>;
    /// Delivers the result once the batch committed, or the batch's error.
    fn finish(self: Box<Self>, batch: Result<(), &StoreError>);
}

struct Pending<T> {
    f: Box<Work<T>>,
    result: Option<Result<T, StoreError>>,
    reply: tokio::sync::oneshot::Sender<Result<T, StoreError>>,
}

impl<T: Send> Job for Pending<T> {
    fn run(&mut self, c: &mut AnyConnection) {
        let mut attempt = 0;
        self.result = Some(loop {
            attempt += 1;
            match in_savepoint(c, &mut self.f) {
                Err(e) if attempt < ATTEMPTS && e.is_retryable() => continue,
                other => break other,
            }
        });
    }

    fn run_alone(&mut self, c: &mut AnyConnection) -> Result<(), StoreError> {
        begin_patiently(c)?;
        self.result = Some(alone(c, &mut self.f, true)?);
        Ok(())
    }

    fn finish(self: Box<Self>, batch: Result<(), &StoreError>) {
        let result = match (batch, self.result) {
            (Ok(()), Some(r)) => r,
            (Ok(()), None) => Err(StoreError::Unavailable("the job did not run".into())),
            (Err(e), _) => Err(StoreError::Unavailable(e.to_string())),
        };
        // The caller may have gone away (a client that disconnected); nothing to do.
        let _ = self.reply.send(result);
    }
}

/// Runs `f` in the transaction the caller began, retrying a lost race in a new one.
/// The outer error means the transaction itself failed (and nothing was written).
/// Only a `patient` caller (the writer thread) waits for another writer's lock.
fn alone<T>(
    c: &mut AnyConnection,
    f: &mut Box<Work<T>>,
    patient: bool,
) -> Result<Result<T, StoreError>, StoreError> {
    let mut attempt = 0;
    loop {
        attempt += 1;
        match f(c) {
            Ok(v) => {
                <AnyConnection as Connection>::TransactionManager::commit_transaction(c)?;
                return Ok(Ok(v));
            }
            Err(e) => {
                <AnyConnection as Connection>::TransactionManager::rollback_transaction(c)?;
                if attempt < ATTEMPTS && e.is_retryable() {
                    if patient {
                        begin_patiently(c)?;
                    } else {
                        begin_immediate(c)?;
                    }
                    continue;
                }
                return Ok(Err(e));
            }
        }
    }
}

fn in_savepoint<T>(c: &mut AnyConnection, f: &mut Box<Work<T>>) -> Result<T, StoreError> {
    <AnyConnection as Connection>::TransactionManager::begin_transaction(c)?;
    match f(c) {
        Ok(v) => {
            <AnyConnection as Connection>::TransactionManager::commit_transaction(c)?;
            Ok(v)
        }
        Err(e) => {
            <AnyConnection as Connection>::TransactionManager::rollback_transaction(c)?;
            Err(e)
        }
    }
}

fn begin_immediate(c: &mut AnyConnection) -> Result<(), DieselError> {
    match c {
        AnyConnection::Sqlite(s) => {
            AnsiTransactionManager::begin_transaction_sql(s, "BEGIN IMMEDIATE")
        }
        AnyConnection::Postgresql(p) => AnsiTransactionManager::begin_transaction(p),
    }
}

/// Another connection holds the write lock (SQLITE_BUSY with `busy_timeout = 0`).
fn is_busy(e: &DieselError) -> bool {
    matches!(e, DieselError::DatabaseError(_, info)
        if info.message().contains("database is locked") || info.message().contains("database is busy"))
}

/// `BEGIN IMMEDIATE`, waiting out another writer with a growing pause, for at most
/// `BUSY_PATIENCE`: the writer thread's own busy handler.
fn begin_patiently(c: &mut AnyConnection) -> Result<(), StoreError> {
    let deadline = Instant::now() + BUSY_PATIENCE;
    let mut pause = Duration::from_micros(200);
    loop {
        match begin_immediate(c) {
            Err(e) if is_busy(&e) && Instant::now() < deadline => {
                std::thread::sleep(pause);
                pause = (pause * 2).min(Duration::from_millis(20));
            }
            other => return other.map_err(StoreError::from),
        }
    }
}

/// Writes submitted here so far (the hot path's: reservations and settlements), by how
/// they ran. A growing share of `queued` writes means requests wait for each other's
/// commits.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct WriteCounts {
    /// At once, on the caller's thread.
    pub inline: u64,
    /// In the writer thread's next group commit, because the connection was busy:
    /// another write in progress, others already waiting, or another connection
    /// holding the lock.
    pub queued: u64,
    /// In the writer thread's group commit because several were submitted together
    /// (`submit_each`: a batch of settlements).
    pub together: u64,
}

/// What the inline path and the writer thread share.
struct Shared {
    manager: ConnectionManager,
    conn: Mutex<Option<AnyConnection>>,
    /// Jobs sent to the writer thread and not finished yet.
    queued: AtomicUsize,
    /// Writes so far by how they ran (see `WriteCounts`).
    ran_inline: AtomicU64,
    ran_queued: AtomicU64,
    ran_together: AtomicU64,
    commits: AtomicU32,
    checkpoint: Option<mpsc::SyncSender<()>>,
}

impl Shared {
    /// The connection, opened on first use with the settings this module relies on.
    fn connection<'a>(
        &self,
        slot: &'a mut Option<AnyConnection>,
    ) -> Result<&'a mut AnyConnection, StoreError> {
        if slot.is_none() {
            let mut conn = r2d2::ManageConnection::connect(&self.manager)
                .map_err(|e| StoreError::Unavailable(e.to_string()))?;
            if let AnyConnection::Sqlite(c) = &mut conn {
                // `temp_store = MEMORY` keeps the savepoints' sub-journal in memory. By
                // default SQLite spills it to a new temporary file once it passes
                // 64 KiB, which a batch of settlements does: creating and writing that
                // file cost about 15% of tokengate's CPU under load (BENCHMARKS.md).
                // In memory it is emptied after each job's savepoint, so it stays
                // the size of one job's pages.
                c.batch_execute(
                    "PRAGMA busy_timeout = 0; PRAGMA wal_autocheckpoint = 0; \
                     PRAGMA temp_store = MEMORY;",
                )?;
            }
            *slot = Some(conn);
        }
        slot.as_mut()
            .ok_or_else(|| StoreError::Unavailable("no database connection".into()))
    }

    fn lock(&self) -> MutexGuard<'_, Option<AnyConnection>> {
        self.conn
            .lock()
            .unwrap_or_else(|poisoned| self.recover(poisoned.into_inner()))
    }

    /// After a panic in a transaction (the mutex is then poisoned): that transaction
    /// may still be open on the connection, so the connection is dropped, which rolls
    /// it back, and the next use opens a fresh one. Without this, `try_lock` would
    /// fail for good and every later write would take the writer thread's queue.
    fn recover<'a>(
        &self,
        mut slot: MutexGuard<'a, Option<AnyConnection>>,
    ) -> MutexGuard<'a, Option<AnyConnection>> {
        *slot = None;
        self.conn.clear_poison();
        slot
    }

    fn committed(&self) {
        let n = self.commits.fetch_add(1, Ordering::Relaxed) + 1;
        if n.is_multiple_of(COMMITS_PER_CHECKPOINT)
            && let Some(nudge) = &self.checkpoint
        {
            // Full means a nudge is already pending.
            let _ = nudge.try_send(());
        }
    }

    /// Runs `f` on the calling thread if the writer is idle and the database is not
    /// locked by anyone else; `None` sends the job to the queue instead.
    fn try_inline<T>(&self, f: &mut Box<Work<T>>) -> Option<Result<T, StoreError>> {
        if self.queued.load(Ordering::Acquire) > 0 {
            return None;
        }
        let mut slot = match self.conn.try_lock() {
            Ok(slot) => slot,
            Err(TryLockError::Poisoned(poisoned)) => self.recover(poisoned.into_inner()),
            Err(TryLockError::WouldBlock) => return None,
        };
        let c = match self.connection(&mut slot) {
            Ok(c) => c,
            Err(_) => return None,
        };
        match begin_immediate(c) {
            Ok(()) => {}
            Err(e) if is_busy(&e) => return None,
            Err(e) => {
                *slot = None;
                return Some(Err(e.into()));
            }
        }
        self.ran_inline.fetch_add(1, Ordering::Relaxed);
        match alone(c, f, false) {
            Ok(result) => {
                self.committed();
                Some(result)
            }
            Err(e) => {
                // The connection may be broken; a fresh one replaces it.
                *slot = None;
                Some(Err(e))
            }
        }
    }
}

/// The way in: `submit`. Dropping the last handle ends the writer thread.
pub struct WriteQueue {
    tx: mpsc::Sender<Box<dyn Job>>,
    shared: Arc<Shared>,
}

impl WriteQueue {
    pub fn start(manager: ConnectionManager) -> Self {
        let (nudge, wake) = mpsc::sync_channel::<()>(1);
        let checkpoint = {
            let manager = manager.clone();
            std::thread::Builder::new()
                .name("tokengate-checkpoint".into())
                .spawn(move || checkpointer(&manager, &wake))
                .map_err(|e| tracing::error!(error = %e, "cannot start the checkpoint thread"))
                .ok()
                .map(|_| nudge)
        };
        let shared = Arc::new(Shared {
            manager,
            conn: Mutex::new(None),
            queued: AtomicUsize::new(0),
            ran_inline: AtomicU64::new(0),
            ran_queued: AtomicU64::new(0),
            ran_together: AtomicU64::new(0),
            commits: AtomicU32::new(0),
            checkpoint,
        });
        let (tx, rx) = mpsc::channel::<Box<dyn Job>>();
        let for_writer = shared.clone();
        let spawned = std::thread::Builder::new()
            .name("tokengate-writer".into())
            .spawn(move || writer(&for_writer, &rx));
        if let Err(e) = spawned {
            // Queued jobs then fail with Unavailable; the inline path still works.
            tracing::error!(error = %e, "cannot start the database writer thread");
        }
        Self { tx, shared }
    }

    /// How the writes so far ran.
    pub fn counts(&self) -> WriteCounts {
        WriteCounts {
            inline: self.shared.ran_inline.load(Ordering::Relaxed),
            queued: self.shared.ran_queued.load(Ordering::Relaxed),
            together: self.shared.ran_together.load(Ordering::Relaxed),
        }
    }

    /// Runs `f` as a write transaction and returns its result once committed. `f` may
    /// run more than once (after a lost race), as with `write_tx`.
    pub async fn submit<T, F>(&self, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnMut(&mut AnyConnection) -> Result<T, StoreError> + Send + 'static,
    {
        let mut f: Box<Work<T>> = Box::new(f);
        if let Some(result) = self.shared.try_inline(&mut f) {
            return result;
        }
        let queued = self.enqueue(f);
        if queued.is_ok() {
            self.shared.ran_queued.fetch_add(1, Ordering::Relaxed);
        }
        Self::answer(queued).await
    }

    /// Runs `f` on each item as a job of its own, all queued at once, so that they
    /// share the writer's commits while each has its own savepoint: one that fails is
    /// rolled back alone. Better than one job doing them all, whose savepoints would
    /// nest inside the job's own: SQLite empties the savepoint journal only when the
    /// outermost savepoint is released, so it would hold every page of every item.
    /// Several are always queued (the writer thread runs them in one transaction);
    /// one alone may run inline, as with `submit`.
    pub async fn submit_each<I, T, F>(&self, items: Arc<[I]>, f: F) -> Vec<Result<T, StoreError>>
    where
        I: Send + Sync + 'static,
        T: Send + 'static,
        F: Fn(&mut AnyConnection, &I) -> Result<T, StoreError> + Send + Sync + 'static,
    {
        if let [_] = &*items {
            // One alone may run inline, as `submit` does.
            return vec![self.submit(move |c| f(c, &items[0])).await];
        }
        let f = Arc::new(f);
        let answers: Vec<_> = (0..items.len())
            .map(|i| {
                let (items, f) = (items.clone(), f.clone());
                let queued =
                    self.enqueue(Box::new(move |c: &mut AnyConnection| match items.get(i) {
                        Some(item) => f(c, item),
                        None => Err(StoreError::Unavailable("no such item".into())),
                    }));
                if queued.is_ok() {
                    self.shared.ran_together.fetch_add(1, Ordering::Relaxed);
                }
                queued
            })
            .collect();
        let mut results = Vec::with_capacity(answers.len());
        for answer in answers {
            results.push(Self::answer(answer).await);
        }
        results
    }

    /// Queues a job for the writer thread; the receiver gets its result.
    fn enqueue<T: Send + 'static>(&self, f: Box<Work<T>>) -> Result<Answer<T>, StoreError> {
        let (reply, answer) = tokio::sync::oneshot::channel();
        let job = Box::new(Pending {
            f,
            result: None,
            reply,
        });
        self.shared.queued.fetch_add(1, Ordering::AcqRel);
        if self.tx.send(job).is_err() {
            self.shared.queued.fetch_sub(1, Ordering::AcqRel);
            return Err(StoreError::Unavailable(
                "the database writer stopped".into(),
            ));
        }
        Ok(answer)
    }

    async fn answer<T>(answer: Result<Answer<T>, StoreError>) -> Result<T, StoreError> {
        answer?
            .await
            .map_err(|_| StoreError::Unavailable("the database writer stopped".into()))?
    }
}

type Answer<T> = tokio::sync::oneshot::Receiver<Result<T, StoreError>>;

fn writer(shared: &Shared, rx: &mpsc::Receiver<Box<dyn Job>>) {
    let mut jobs: Vec<Box<dyn Job>> = Vec::with_capacity(MAX_BATCH);
    while let Ok(first) = rx.recv() {
        jobs.push(first);
        while jobs.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(job) => jobs.push(job),
                Err(_) => break,
            }
        }
        let outcome = {
            let mut slot = shared.lock();
            // A panic in a job (a bug) fails its batch, not the thread: were the
            // thread to end, every write that found the connection busy would fail
            // from then on.
            let outcome = std::panic::catch_unwind(AssertUnwindSafe(|| {
                shared
                    .connection(&mut slot)
                    .and_then(|c| run_batch(c, &mut jobs))
            }))
            .unwrap_or_else(|_| Err(StoreError::Unavailable("a ledger write panicked".into())));
            if outcome.is_err() {
                // A broken connection is replaced on the next use.
                *slot = None;
            }
            outcome
        };
        match &outcome {
            Ok(()) => shared.committed(),
            Err(e) => {
                tracing::warn!(error = %e, jobs = jobs.len(), "a batch of ledger writes failed")
            }
        }
        let finished = jobs.len();
        for job in jobs.drain(..) {
            job.finish(outcome.as_ref().map(|_| ()));
        }
        shared.queued.fetch_sub(finished, Ordering::AcqRel);
    }
}

fn run_batch(c: &mut AnyConnection, jobs: &mut [Box<dyn Job>]) -> Result<(), StoreError> {
    if let [job] = jobs {
        // A batch of one needs no savepoint.
        return job.run_alone(c);
    }
    begin_patiently(c)?;
    for job in jobs.iter_mut() {
        job.run(c);
        // A savepoint that could not be rolled back leaves the transaction unusable:
        // give up the whole batch rather than commit half a job.
        let depth =
            <AnyConnection as Connection>::TransactionManager::transaction_manager_status_mut(c)
                .transaction_depth();
        if !matches!(depth, Ok(Some(d)) if d.get() == 1) {
            let _ = <AnyConnection as Connection>::TransactionManager::rollback_transaction(c);
            return Err(StoreError::Unavailable(
                "a ledger write left its transaction broken".into(),
            ));
        }
    }
    let committed = <AnyConnection as Connection>::TransactionManager::commit_transaction(c);
    if let Err(e) = committed {
        let _ = <AnyConnection as Connection>::TransactionManager::rollback_transaction(c);
        return Err(e.into());
    }
    Ok(())
}

/// Copies the WAL back into the database file from a connection of its own. SQLite
/// would otherwise checkpoint inside the commit that crosses 1,000 WAL pages, with an
/// fsync, and every request behind it would wait. A passive checkpoint never blocks
/// a writer. Nudged every `COMMITS_PER_CHECKPOINT` commits, and once a second.
fn checkpointer(manager: &ConnectionManager, wake: &mpsc::Receiver<()>) {
    let mut conn: Option<AnyConnection> = None;
    loop {
        match wake.recv_timeout(Duration::from_secs(1)) {
            Ok(()) | Err(mpsc::RecvTimeoutError::Timeout) => {}
            // The writer stopped: so does its checkpointer.
            Err(mpsc::RecvTimeoutError::Disconnected) => return,
        }
        if conn.is_none() {
            conn = r2d2::ManageConnection::connect(manager).ok();
        }
        let result = match conn.as_mut() {
            Some(c) => c.batch_execute("PRAGMA wal_checkpoint(PASSIVE);"),
            None => continue,
        };
        if let Err(e) = result {
            tracing::debug!(error = %e, "checkpoint skipped");
            conn = None;
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use crate::config::DatabaseUrl;
    use crate::db::schema::settings;
    use crate::db::{Database, StoreError};
    use diesel::prelude::*;
    use futures_util::FutureExt;

    fn database() -> (tempfile::TempDir, Database) {
        let dir = tempfile::tempdir().unwrap();
        let db = Database::new(&DatabaseUrl::Sqlite(dir.path().join("t.db")), 4);
        db.migrate().unwrap();
        (dir, db)
    }

    fn keys(db: &Database) -> Vec<String> {
        let mut conn = db.conn().unwrap();
        settings::table
            .filter(settings::key.like("k%"))
            .order(settings::key)
            .select(settings::key)
            .load(&mut conn)
            .unwrap()
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_failing_job_rolls_back_alone_and_the_others_commit() {
        let (_dir, db) = database();
        // Queued together, so most of them share a batch.
        let jobs = (0..64).map(|i| {
            let db = db.clone();
            async move {
                db.write(move |c| {
                    diesel::insert_into(settings::table)
                        .values((
                            settings::key.eq(format!("k{i:02}")),
                            settings::value.eq("v"),
                        ))
                        .execute(c)?;
                    if i % 10 == 7 {
                        // Written, then refused: the write must vanish with the job.
                        return Err(StoreError::Unavailable("refused".into()));
                    }
                    if i == 20 {
                        // A statement that fails inside the job.
                        diesel::insert_into(settings::table)
                            .values((settings::key.eq("k00"), settings::value.eq("dup")))
                            .execute(c)?;
                    }
                    Ok(i)
                })
                .await
            }
        });
        let results = futures_util::future::join_all(jobs).await;
        for (i, r) in results.iter().enumerate() {
            let refused = i % 10 == 7 || i == 20;
            assert_eq!(r.is_err(), refused, "job {i}: {r:?}");
        }
        let expected: Vec<String> = (0..64)
            .filter(|i| i % 10 != 7 && *i != 20)
            .map(|i| format!("k{i:02}"))
            .collect();
        assert_eq!(keys(&db), expected);
    }

    fn insert_key(c: &mut crate::db::AnyConnection, key: &str) -> Result<(), StoreError> {
        diesel::insert_into(settings::table)
            .values((settings::key.eq(key), settings::value.eq("v")))
            .execute(c)?;
        Ok(())
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_write_that_panics_leaves_nothing_behind_and_the_next_runs_inline() {
        let (_dir, db) = database();
        let write = db.write(|c| -> Result<(), StoreError> {
            insert_key(c, "k1")?;
            panic!("a bug in a transaction");
        });
        let panicked = std::panic::AssertUnwindSafe(write).catch_unwind().await;
        assert!(panicked.is_err());

        db.write(|c| insert_key(c, "k2")).await.unwrap();
        // The panicked transaction was rolled back, not committed by the next one.
        assert_eq!(keys(&db), vec!["k2".to_owned()]);
        let counts = db.write_counts().unwrap();
        assert_eq!((counts.inline, counts.queued), (2, 0), "{counts:?}");
    }

    /// A write on another thread, inline, that inserts a key and keeps the connection
    /// until released: writes submitted meanwhile find it in use and queue.
    struct Holder {
        release: std::sync::mpsc::Sender<()>,
        thread: std::thread::JoinHandle<Result<(), StoreError>>,
    }

    impl Holder {
        async fn start(db: &Database, key: &'static str) -> Self {
            let (entered, in_use) = tokio::sync::oneshot::channel();
            let (release, wait) = std::sync::mpsc::channel::<()>();
            let db = db.clone();
            let thread = std::thread::spawn(move || {
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .build()
                    .unwrap();
                let mut entered = Some(entered);
                runtime.block_on(db.write(move |c| {
                    insert_key(c, key)?;
                    if let Some(entered) = entered.take() {
                        entered.send(()).unwrap();
                        wait.recv().unwrap();
                    }
                    Ok(())
                }))
            });
            in_use.await.unwrap();
            Self { release, thread }
        }

        fn release(self) {
            self.release.send(()).unwrap();
            self.thread.join().unwrap().unwrap();
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_queued_write_that_panics_fails_alone_and_the_writer_thread_goes_on() {
        let (_dir, db) = database();
        let holder = Holder::start(&db, "k1").await;
        let buggy = db.write(|c| -> Result<(), StoreError> {
            insert_key(c, "k2")?;
            panic!("a bug in a queued transaction");
        });
        tokio::pin!(buggy);
        // Polled once: it finds the connection in use and queues.
        assert!(futures_util::poll!(buggy.as_mut()).is_pending());
        holder.release();
        assert!(buggy.await.is_err());

        // The writer thread still runs what queues next.
        let holder = Holder::start(&db, "k3").await;
        let next = db.write(|c| insert_key(c, "k4"));
        tokio::pin!(next);
        assert!(futures_util::poll!(next.as_mut()).is_pending());
        holder.release();
        next.await.unwrap();

        assert_eq!(keys(&db), vec!["k1", "k3", "k4"]);
        assert_eq!(db.write_counts().unwrap().queued, 2);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_job_alone_rolls_back_its_own_writes_on_error() {
        let (_dir, db) = database();
        let refused = db
            .write(|c| {
                diesel::insert_into(settings::table)
                    .values((settings::key.eq("k1"), settings::value.eq("v")))
                    .execute(c)?;
                Err::<(), _>(StoreError::Unavailable("refused".into()))
            })
            .await;
        assert!(refused.is_err());
        db.write(|c| {
            diesel::insert_into(settings::table)
                .values((settings::key.eq("k2"), settings::value.eq("v")))
                .execute(c)
                .map_err(StoreError::from)
        })
        .await
        .unwrap();
        assert_eq!(keys(&db), vec!["k2".to_owned()]);
    }
}
