//! The one way tokengate writes: every write transaction, on both backends, runs
//! through here, so each concern has one mechanism.
//!
//! - **Lost races** (a unique violation, a serialization failure) are retried here,
//!   up to `ATTEMPTS` times, and nowhere else; a job may therefore run more than once.
//! - **A panic** in a transaction (a bug) is caught here. Its connection is dropped,
//!   which rolls the transaction back, and a group that panicked runs again one job
//!   at a time, so that only the job that panics fails; the others are written.
//! - **Group commit.** Jobs handed to `queue` (settlements) are run by the writer
//!   thread: everything waiting, in one transaction, each job in a savepoint of its
//!   own (one that fails is rolled back alone), in the order of their keys, so that
//!   two replicas lock balance rows in the same order. One commit covers dozens of
//!   settlements under load: on PostgreSQL a commit waits for its WAL flush, on
//!   SQLite it rewrites the same WAL pages.
//! - **SQLite** has one writer at a time, so a process's writes all share one
//!   connection. A `write` runs inline on the caller's thread when that connection
//!   is free and the database is not locked by another process (it never waits for
//!   a lock there: `busy_timeout = 0`), and joins the writer thread's next group
//!   otherwise; only the writer thread waits out another process's lock. No pooled
//!   connection ever writes, so none of them checkpoints: the checkpointer below does,
//!   from a connection of its own, never inside a request's commit.
//! - **PostgreSQL**: a `write` runs on a pooled connection of its own (on the
//!   blocking pool when called from async code), so row locks, not one process, keep
//!   writers and replicas apart; `queue`d jobs share the writer thread's connection.
//!
//! Nobody hears "done" before the commit.

use super::{AnyConnection, ConnectionManager, Pool, StoreError};
use diesel::connection::{
    AnsiTransactionManager, Connection, SimpleConnection, TransactionManager,
};
use diesel::result::{DatabaseErrorKind, Error as DieselError};
use std::panic::AssertUnwindSafe;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, TryLockError, mpsc};
use std::time::{Duration, Instant};

/// Most jobs in one transaction: bounds how long its locks are held, so other writers
/// (another process, the command line) get their turn.
const MAX_GROUP: usize = 256;
/// Runs of a job that lost a race, in all.
const ATTEMPTS: usize = 4;
/// How long the writer thread waits for another process's SQLite write lock, as
/// SQLite's own busy timeout would.
const BUSY_PATIENCE: Duration = Duration::from_secs(10);
/// SQLite commits between nudges to the checkpointer; it also runs once a second.
const COMMITS_PER_CHECKPOINT: u32 = 200;
/// WAL frames (64 MiB of 4 KiB pages) past which the log is started over
/// (`checkpointer`, `restart_log`). Each restart holds writes back for a few ms;
/// at 16 MiB they came four times as often and a stream's p99 at 1,000 chats/s
/// was 1.5 ms worse (`BENCHMARKS.md`).
const WAL_RESTART_FRAMES: i64 = 16_384;
/// Fewer commits a second than this is light traffic (a group of settlements is
/// one commit).
const LIGHT_COMMITS: u32 = 50;
/// The `-wal` file a quiet database may keep.
const SMALL_LOG_BYTES: u64 = 4 << 20;
/// How long the idle checkpoint that truncates the log may wait for readers.
const CHECKPOINT_PATIENCE_MS: u32 = 100;
/// How long the writer thread's restarting checkpoint may wait for readers to leave
/// the log (the writes behind it wait as long).
const RESTART_PATIENCE_MS: u32 = 20;
/// After a restart that a reader kept from happening (a backup, a long report), the
/// next waits this long, doubling up to `RESTART_BACKOFF_MAX`: every attempt holds
/// writes back, and a reader that stays keeps the log from starting over anyway.
const RESTART_BACKOFF: Duration = Duration::from_secs(1);
const RESTART_BACKOFF_MAX: Duration = Duration::from_secs(60);

type Work<T, E> = dyn FnMut(&mut AnyConnection) -> Result<T, E> + Send;
type Done<T, E> = Box<dyn FnOnce(Result<T, E>) + Send>;

/// Errors that mean "another transaction won a race; running again will succeed".
pub trait RetryableError {
    fn is_retryable(&self) -> bool;
}

impl RetryableError for DieselError {
    fn is_retryable(&self) -> bool {
        matches!(
            self,
            DieselError::DatabaseError(
                DatabaseErrorKind::UniqueViolation | DatabaseErrorKind::SerializationFailure,
                _
            )
        )
    }
}

impl RetryableError for StoreError {
    fn is_retryable(&self) -> bool {
        matches!(self, StoreError::Query(e) if e.is_retryable())
    }
}

/// A unit of work: a transaction body and where its result goes.
trait Job: Send {
    /// The order of jobs within a group: settlements use their balance row's id.
    fn key(&self) -> i64;
    /// Runs inside the group's transaction, in a savepoint of its own.
    fn run_in_savepoint(&mut self, c: &mut AnyConnection);
    /// Runs in a transaction of its own; errs only when that transaction failed.
    fn run_alone(&mut self, c: &mut AnyConnection) -> Result<(), StoreError>;
    /// Delivers the result once the group committed, or the group's error.
    fn finish(self: Box<Self>, group: Result<(), &StoreError>);
}

struct Pending<T, E> {
    key: i64,
    f: Box<Work<T, E>>,
    result: Option<Result<T, E>>,
    done: Done<T, E>,
}

/// What a transaction body may fail with: its own errors, and the store's.
pub trait WriteError: From<StoreError> + RetryableError + Send + 'static {}
impl<E: From<StoreError> + RetryableError + Send + 'static> WriteError for E {}

impl<T: Send, E: WriteError> Job for Pending<T, E> {
    fn key(&self) -> i64 {
        self.key
    }

    fn run_in_savepoint(&mut self, c: &mut AnyConnection) {
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
        self.result = Some(transaction(c, &mut self.f, Begin::Patient)?);
        Ok(())
    }

    fn finish(self: Box<Self>, group: Result<(), &StoreError>) {
        let result = match (group, self.result) {
            (Ok(()), Some(r)) => r,
            (Ok(()), None) => Err(StoreError::Unavailable("the write did not run".into()).into()),
            (Err(e), _) => Err(StoreError::Unavailable(e.to_string()).into()),
        };
        (self.done)(result);
    }
}

/// How a transaction begins.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Begin {
    /// At once, or not at all: the inline path, which hands a busy database to the
    /// writer thread instead of waiting for it.
    AtOnce,
    /// Waiting out another process's lock for up to `BUSY_PATIENCE`.
    Patient,
}

/// `BEGIN IMMEDIATE` on SQLite, so the write lock is taken up front and a
/// read-then-write can never fail on a stale snapshot; a plain `BEGIN` on PostgreSQL,
/// whose first statement locks the rows it touches. The one place a write begins.
fn begin(c: &mut AnyConnection, how: Begin) -> Result<(), DieselError> {
    let deadline = Instant::now() + BUSY_PATIENCE;
    let mut pause = Duration::from_micros(200);
    loop {
        let begun = match c {
            AnyConnection::Sqlite(s) => {
                AnsiTransactionManager::begin_transaction_sql(s, "BEGIN IMMEDIATE")
            }
            AnyConnection::Postgresql(p) => AnsiTransactionManager::begin_transaction(p),
        };
        match begun {
            Err(e) if how == Begin::Patient && is_busy(&e) && Instant::now() < deadline => {
                std::thread::sleep(pause);
                pause = (pause * 2).min(Duration::from_millis(20));
            }
            other => return other,
        }
    }
}

/// Another connection holds SQLite's write lock.
fn is_busy(e: &DieselError) -> bool {
    matches!(e, DieselError::DatabaseError(_, info)
        if info.message().contains("database is locked") || info.message().contains("database is busy"))
}

/// Runs `f` in a transaction of its own, again in a new one after a lost race. The
/// outer error means a transaction itself failed (and nothing was written).
fn transaction<T, E: WriteError>(
    c: &mut AnyConnection,
    f: &mut Box<Work<T, E>>,
    how: Begin,
) -> Result<Result<T, E>, StoreError> {
    begin(c, how)?;
    run_begun(c, f, how)
}

/// `transaction` once the first transaction has begun.
fn run_begun<T, E: WriteError>(
    c: &mut AnyConnection,
    f: &mut Box<Work<T, E>>,
    how: Begin,
) -> Result<Result<T, E>, StoreError> {
    let mut attempt = 0;
    loop {
        attempt += 1;
        let failed: E = match f(c) {
            Ok(v) => match <AnyConnection as Connection>::TransactionManager::commit_transaction(c)
            {
                Ok(()) => return Ok(Ok(v)),
                Err(e) => {
                    // A serialization failure may surface at commit on PostgreSQL.
                    let e = StoreError::from(e);
                    if !e.is_retryable() {
                        let _ = rollback(c);
                        return Err(e);
                    }
                    e.into()
                }
            },
            Err(e) => e,
        };
        rollback(c)?;
        if attempt < ATTEMPTS && failed.is_retryable() {
            begin(c, how)?;
            continue;
        }
        return Ok(Err(failed));
    }
}

fn rollback(c: &mut AnyConnection) -> Result<(), DieselError> {
    <AnyConnection as Connection>::TransactionManager::rollback_transaction(c)
}

fn in_savepoint<T, E: WriteError>(c: &mut AnyConnection, f: &mut Box<Work<T, E>>) -> Result<T, E> {
    let store = |e: DieselError| E::from(StoreError::from(e));
    <AnyConnection as Connection>::TransactionManager::begin_transaction(c).map_err(store)?;
    match f(c) {
        Ok(v) => {
            <AnyConnection as Connection>::TransactionManager::commit_transaction(c)
                .map_err(store)?;
            Ok(v)
        }
        Err(e) => {
            rollback(c).map_err(store)?;
            Err(e)
        }
    }
}

/// Writes so far on SQLite's write connection (reservations, settlements, the
/// dashboard's and the command line's changes), by how they ran. A growing share of
/// `queued` writes means requests wait for each other's commits.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct WriteCounts {
    /// At once, on the caller's thread.
    pub inline: u64,
    /// In the writer thread's next group commit, because the connection was busy:
    /// another write in progress, others already waiting, or another process holding
    /// the lock.
    pub queued: u64,
    /// In the writer thread's group commit by design: settlements.
    pub together: u64,
    /// Times the writer thread started SQLite's log over (`restart_log`), each
    /// holding writes back for a few milliseconds.
    pub log_restarts: u64,
}

struct Shared {
    manager: ConnectionManager,
    /// PostgreSQL's writes other than the writer thread's take pooled connections.
    pool: Pool,
    /// SQLite's one write connection, or the PostgreSQL writer thread's.
    conn: Mutex<Option<AnyConnection>>,
    /// Jobs sent to the writer thread and not finished yet.
    queued: AtomicUsize,
    ran_inline: AtomicU64,
    ran_queued: AtomicU64,
    ran_together: AtomicU64,
    log_restarts: AtomicU64,
    log: Arc<LogState>,
    checkpoint: Option<mpsc::SyncSender<()>>,
}

/// What the writer thread and the checkpointer know of SQLite's log.
#[derive(Default)]
struct LogState {
    commits: AtomicU32,
    /// The log is past `WAL_RESTART_FRAMES`: the writer thread starts it over.
    restart_due: AtomicBool,
}

impl Shared {
    fn sqlite(&self) -> bool {
        matches!(self.manager.url(), crate::config::DatabaseUrl::Sqlite(_))
    }

    /// The shared connection, opened on first use with the settings this module
    /// relies on.
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
                // 64 KiB, which a group of settlements does: creating and writing that
                // file cost about 15% of tokengate's CPU under load (BENCHMARKS.md).
                c.batch_execute("PRAGMA busy_timeout = 0; PRAGMA temp_store = MEMORY;")?;
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
    /// it back, and the next use opens a fresh one.
    fn recover<'a>(
        &self,
        mut slot: MutexGuard<'a, Option<AnyConnection>>,
    ) -> MutexGuard<'a, Option<AnyConnection>> {
        *slot = None;
        self.conn.clear_poison();
        slot
    }

    fn committed(&self) {
        let n = self.log.commits.fetch_add(1, Ordering::Relaxed) + 1;
        if n.is_multiple_of(COMMITS_PER_CHECKPOINT)
            && let Some(nudge) = &self.checkpoint
        {
            // Full means a nudge is already pending.
            let _ = nudge.try_send(());
        }
    }

    /// SQLite: runs `f` on the calling thread if nothing is queued, the connection
    /// is free and the database is not locked by another process; `None` hands it
    /// to the writer thread instead.
    fn try_inline<T, E: WriteError>(&self, f: &mut Box<Work<T, E>>) -> Option<Result<T, E>> {
        if self.queued.load(Ordering::Acquire) > 0 {
            return None;
        }
        let mut slot = match self.conn.try_lock() {
            Ok(slot) => slot,
            Err(TryLockError::Poisoned(poisoned)) => self.recover(poisoned.into_inner()),
            Err(TryLockError::WouldBlock) => return None,
        };
        let c = self.connection(&mut slot).ok()?;
        match begin(c, Begin::AtOnce) {
            Ok(()) => {}
            Err(e) if is_busy(&e) => return None,
            Err(e) => {
                *slot = None;
                return Some(Err(StoreError::from(e).into()));
            }
        }
        self.ran_inline.fetch_add(1, Ordering::Relaxed);
        match run_begun(c, f, Begin::AtOnce) {
            Ok(result) => {
                self.committed();
                Some(result)
            }
            Err(e) => {
                // The connection may be broken; a fresh one replaces it.
                *slot = None;
                Some(Err(e.into()))
            }
        }
    }

    /// PostgreSQL: runs `f` on a pooled connection of its own. Should `f` panic, the
    /// connection is not returned to the pool in its transaction: r2d2 asks
    /// `has_broken`, which diesel answers yes for a connection inside one.
    fn on_pooled<T, E: WriteError>(&self, f: &mut Box<Work<T, E>>) -> Result<T, E> {
        let mut conn = self.pool.get().map_err(StoreError::from)?;
        transaction(&mut conn, f, Begin::Patient)?
    }
}

/// The engine of one database; `Database` holds it.
pub(super) struct Engine {
    shared: Arc<Shared>,
    tx: mpsc::Sender<Box<dyn Job>>,
}

impl Engine {
    pub fn start(manager: ConnectionManager, pool: Pool) -> Self {
        let sqlite = matches!(manager.url(), crate::config::DatabaseUrl::Sqlite(_));
        let log = Arc::new(LogState::default());
        let checkpoint = sqlite.then(|| {
            let (nudge, wake) = mpsc::sync_channel::<()>(1);
            let (manager, log) = (manager.clone(), log.clone());
            std::thread::Builder::new()
                .name("tokengate-checkpoint".into())
                .spawn(move || checkpointer(&manager, &wake, &log))
                .map_err(|e| tracing::error!(error = %e, "cannot start the checkpoint thread"))
                .ok()
                .map(|_| nudge)
        });
        let shared = Arc::new(Shared {
            manager,
            pool,
            conn: Mutex::new(None),
            queued: AtomicUsize::new(0),
            ran_inline: AtomicU64::new(0),
            ran_queued: AtomicU64::new(0),
            ran_together: AtomicU64::new(0),
            log_restarts: AtomicU64::new(0),
            log,
            checkpoint: checkpoint.flatten(),
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
        Self { shared, tx }
    }

    pub fn counts(&self) -> WriteCounts {
        WriteCounts {
            inline: self.shared.ran_inline.load(Ordering::Relaxed),
            queued: self.shared.ran_queued.load(Ordering::Relaxed),
            together: self.shared.ran_together.load(Ordering::Relaxed),
            log_restarts: self.shared.log_restarts.load(Ordering::Relaxed),
        }
    }

    /// Runs `f` as a write transaction, from async code; returns once committed.
    /// Should the caller stop waiting (its future dropped: a client that went away),
    /// the transaction still runs to its end, and `abandoned` gets what it
    /// committed, to undo what nobody will use.
    pub async fn write<T, E, F>(
        &self,
        f: F,
        abandoned: impl FnOnce(T) + Send + 'static,
    ) -> Result<T, E>
    where
        T: Send + 'static,
        E: WriteError,
        F: FnMut(&mut AnyConnection) -> Result<T, E> + Send + 'static,
    {
        let mut f: Box<Work<T, E>> = Box::new(f);
        let (reply, answer) = tokio::sync::oneshot::channel::<Result<T, E>>();
        let deliver = move |r: Result<T, E>| {
            if let Err(Ok(committed)) = reply.send(r) {
                abandoned(committed);
            }
        };
        if !self.shared.sqlite() {
            let shared = self.shared.clone();
            // Not awaited as a JoinHandle: the blocking task outlives this future and
            // delivers its result, or hands it to `abandoned`.
            tokio::task::spawn_blocking(move || deliver(shared.on_pooled(&mut f)));
        } else if let Some(result) = self.shared.try_inline(&mut f) {
            // On the caller's thread: the caller is still there.
            return result;
        } else {
            self.enqueue(0, f, Box::new(deliver), &self.shared.ran_queued);
        }
        answer
            .await
            .map_err(|_| E::from(StoreError::Unavailable("the write task stopped".into())))?
    }

    /// `write` for callers off the async runtime: the dashboard's blocking tasks, the
    /// command line, the heartbeat.
    pub fn write_blocking<T, E, F>(&self, f: F) -> Result<T, E>
    where
        T: Send + 'static,
        E: WriteError,
        F: FnMut(&mut AnyConnection) -> Result<T, E> + Send + 'static,
    {
        let mut f: Box<Work<T, E>> = Box::new(f);
        if !self.shared.sqlite() {
            return self.shared.on_pooled(&mut f);
        }
        if let Some(result) = self.shared.try_inline(&mut f) {
            return result;
        }
        let (reply, answer) = mpsc::sync_channel(1);
        self.enqueue(
            0,
            f,
            Box::new(move |r| {
                let _ = reply.send(r);
            }),
            &self.shared.ran_queued,
        );
        answer.recv().map_err(|_| {
            E::from(StoreError::Unavailable(
                "the database writer stopped".into(),
            ))
        })?
    }

    /// Hands `f` to the writer thread's next group commit and returns at once; `done`
    /// gets the result on that thread once the group committed (keep it short).
    /// Groups run their jobs in the order of `key`.
    pub fn queue<T, E, F, D>(&self, key: i64, f: F, done: D)
    where
        T: Send + 'static,
        E: WriteError,
        F: FnMut(&mut AnyConnection) -> Result<T, E> + Send + 'static,
        D: FnOnce(Result<T, E>) + Send + 'static,
    {
        self.enqueue(key, Box::new(f), Box::new(done), &self.shared.ran_together);
    }

    fn enqueue<T: Send + 'static, E: WriteError>(
        &self,
        key: i64,
        f: Box<Work<T, E>>,
        done: Done<T, E>,
        count: &AtomicU64,
    ) {
        self.shared.queued.fetch_add(1, Ordering::AcqRel);
        let job = Box::new(Pending {
            key,
            f,
            result: None,
            done,
        });
        match self.tx.send(job) {
            Ok(()) => {
                count.fetch_add(1, Ordering::Relaxed);
            }
            Err(mpsc::SendError(job)) => {
                self.shared.queued.fetch_sub(1, Ordering::AcqRel);
                job.finish(Err(&StoreError::Unavailable(
                    "the database writer stopped".into(),
                )));
            }
        }
    }
}

/// The writer thread: takes everything waiting (up to `MAX_GROUP`) and writes it in
/// one transaction.
fn writer(shared: &Shared, rx: &mpsc::Receiver<Box<dyn Job>>) {
    let mut jobs: Vec<Box<dyn Job>> = Vec::with_capacity(MAX_GROUP);
    let mut restarts = Backoff::new();
    loop {
        // Woken at least once a second, so that a log due to start over does even
        // when every write runs inline and nothing is queued.
        match rx.recv_timeout(Duration::from_secs(1)) {
            Ok(first) => write_group(shared, rx, &mut jobs, first),
            Err(mpsc::RecvTimeoutError::Timeout) => {}
            Err(mpsc::RecvTimeoutError::Disconnected) => return,
        }
        if restarts.ready() && shared.log.restart_due.swap(false, Ordering::AcqRel) {
            match restart_log(shared) {
                Restart::Done => {
                    shared.log_restarts.fetch_add(1, Ordering::Relaxed);
                    restarts.after(true);
                }
                Restart::Blocked => restarts.after(false),
                // The checkpointer was copying: after the next group.
                Restart::Later => shared.log.restart_due.store(true, Ordering::Release),
            }
        }
    }
}

/// Writes `first` and what is queued behind it (up to `MAX_GROUP`) in one
/// transaction, and tells each caller how its job went.
fn write_group(
    shared: &Shared,
    rx: &mpsc::Receiver<Box<dyn Job>>,
    jobs: &mut Vec<Box<dyn Job>>,
    first: Box<dyn Job>,
) {
    jobs.push(first);
    while jobs.len() < MAX_GROUP {
        match rx.try_recv() {
            Ok(job) => jobs.push(job),
            Err(_) => break,
        }
    }
    jobs.sort_by_key(|j| j.key());
    let mut slot = shared.lock();
    let group = std::panic::catch_unwind(AssertUnwindSafe(|| {
        shared
            .connection(&mut slot)
            .and_then(|c| run_group(c, jobs))
    }));
    let outcomes = match group {
        Ok(outcome) => {
            if let Err(e) = &outcome {
                tracing::warn!(error = %e, jobs = jobs.len(), "a group of writes failed");
                // A broken connection is replaced on the next use.
                *slot = None;
            }
            Outcomes::Group(outcome)
        }
        Err(_) => {
            // A bug in one job: the group was rolled back with its connection;
            // write the jobs one by one, so that only the one that panics fails.
            *slot = None;
            tracing::error!(
                jobs = jobs.len(),
                "a group of writes panicked; writing each alone"
            );
            Outcomes::Each(
                jobs.iter_mut()
                    .map(|job| {
                        let alone = std::panic::catch_unwind(AssertUnwindSafe(|| {
                            shared.connection(&mut slot).and_then(|c| job.run_alone(c))
                        }));
                        alone.unwrap_or_else(|_| {
                            *slot = None;
                            Err(StoreError::Unavailable("the write panicked".into()))
                        })
                    })
                    .collect(),
            )
        }
    };
    drop(slot);
    if outcomes.any_committed() {
        shared.committed();
    }
    // Counted out before anyone hears of it: a caller that writes again at once
    // must find the queue as it now is.
    shared.queued.fetch_sub(jobs.len(), Ordering::AcqRel);
    for (i, job) in jobs.drain(..).enumerate() {
        // A callback that panics (a bug) must not take the thread, and with it
        // every later write, down.
        let delivered = std::panic::catch_unwind(AssertUnwindSafe(|| job.finish(outcomes.of(i))));
        if delivered.is_err() {
            tracing::error!("delivering a write's result panicked");
        }
    }
}

/// When the writer thread may try to start the log over again.
struct Backoff {
    next: Instant,
    pause: Duration,
}

impl Backoff {
    fn new() -> Self {
        Self {
            next: Instant::now(),
            pause: RESTART_BACKOFF,
        }
    }

    fn ready(&self) -> bool {
        Instant::now() >= self.next
    }

    fn after(&mut self, restarted: bool) {
        if restarted {
            self.pause = RESTART_BACKOFF;
        } else {
            self.next = Instant::now() + self.pause;
            self.pause = (self.pause * 2).min(RESTART_BACKOFF_MAX);
        }
    }
}

/// Starts SQLite's log over, between two groups: the writes that arrive meanwhile
/// wait for it on the engine's mutex and go in the next group. From the writer's
/// own connection, so no writer is left sleeping on a lock another connection
/// holds: a restarting checkpoint run from elsewhere kept writers out while it ran,
/// and their retries, backing off, added milliseconds to a request's p99.
fn restart_log(shared: &Shared) -> Restart {
    let mut slot = shared.lock();
    let Ok(c) = shared.connection(&mut slot) else {
        return Restart::Blocked;
    };
    let patience = format!("PRAGMA busy_timeout = {RESTART_PATIENCE_MS};");
    let restarted = c
        .batch_execute(&patience)
        .and_then(|()| checkpoint(c, "RESTART"));
    // Back to never waiting, whatever happened: the inline path relies on it.
    let reset = c.batch_execute("PRAGMA busy_timeout = 0;");
    match restarted.and_then(|done| reset.map(|()| done)) {
        Ok(Some(done)) if !done.busy => Restart::Done,
        // SQLite lets one checkpoint run at a time and reports a log of -1 to the
        // one that found another running.
        Ok(Some(done)) if done.log < 0 => Restart::Later,
        Ok(_) => Restart::Blocked,
        Err(e) => {
            tracing::debug!(error = %e, "restarting the log skipped");
            *slot = None;
            Restart::Blocked
        }
    }
}

/// How an attempt to start SQLite's log over went.
enum Restart {
    Done,
    /// A reader kept the log from starting over: back off (`Backoff`).
    Blocked,
    /// The checkpointer's own checkpoint was running: try again soon.
    Later,
}

/// How a group went: as a whole, or job by job after a panic.
enum Outcomes {
    Group(Result<(), StoreError>),
    Each(Vec<Result<(), StoreError>>),
}

impl Outcomes {
    fn of(&self, i: usize) -> Result<(), &StoreError> {
        match self {
            Self::Group(r) => r.as_ref().map(|_| ()),
            Self::Each(each) => each.get(i).map_or(Ok(()), |r| r.as_ref().map(|_| ())),
        }
    }

    fn any_committed(&self) -> bool {
        match self {
            Self::Group(r) => r.is_ok(),
            Self::Each(each) => each.iter().any(Result::is_ok),
        }
    }
}

fn run_group(c: &mut AnyConnection, jobs: &mut [Box<dyn Job>]) -> Result<(), StoreError> {
    if let [job] = jobs {
        // A group of one needs no savepoint.
        return job.run_alone(c);
    }
    begin(c, Begin::Patient)?;
    for job in jobs.iter_mut() {
        job.run_in_savepoint(c);
        // A savepoint that could not be rolled back leaves the transaction unusable:
        // give up the whole group rather than commit half a job.
        let depth =
            <AnyConnection as Connection>::TransactionManager::transaction_manager_status_mut(c)
                .transaction_depth();
        if !matches!(depth, Ok(Some(d)) if d.get() == 1) {
            let _ = rollback(c);
            return Err(StoreError::Unavailable(
                "a write left its transaction broken".into(),
            ));
        }
    }
    if let Err(e) = <AnyConnection as Connection>::TransactionManager::commit_transaction(c) {
        let _ = rollback(c);
        return Err(e.into());
    }
    Ok(())
}

/// Copies SQLite's WAL back into the database file from a connection of its own,
/// and keeps the log from growing without bound.
///
/// Every connection of tokengate's turns SQLite's own checkpoints off
/// (`db::connect_sqlite`): SQLite would otherwise checkpoint inside the commit that
/// crosses 1,000 WAL pages, with an fsync, and every request behind it would wait. A
/// passive checkpoint never blocks a writer, but it never lets the log start over
/// either: a writer restarts the log only when it begins with every frame copied
/// back, which under sustained writes never happens, and the file grew by the
/// gigabyte. So:
/// - once a second, or every `COMMITS_PER_CHECKPOINT` commits, a passive checkpoint;
/// - past `WAL_RESTART_FRAMES`, a restarting one, run by the writer thread between
///   two groups (`restart_log`): it copies what is left and waits (at most
///   `RESTART_PATIENCE_MS`) for readers to leave the log, and the next write starts
///   the log over, writing the file over from its start (`db::connect_sqlite`);
/// - when no commit happened since the last round, or fewer than `LIGHT_COMMITS` a
///   second while the file is still over `SMALL_LOG_BYTES` (a burst has passed, a
///   heartbeat goes on), a truncating one, backing off while a reader keeps it from
///   it: a quiet database keeps little or no log.
fn checkpointer(manager: &ConnectionManager, wake: &mpsc::Receiver<()>, log: &LogState) {
    let mut conn: Option<(AnyConnection, Option<PathBuf>)> = None;
    let mut seen = log.commits.load(Ordering::Relaxed);
    // Commits over at least a second, for `LIGHT_COMMITS` (a nudged round can be
    // far shorter).
    let mut window = (Instant::now(), seen);
    // A reader that stays (a backup) would otherwise have every second's truncation
    // hold writers back for its whole patience.
    let mut truncations = Backoff::new();
    loop {
        match wake.recv_timeout(Duration::from_secs(1)) {
            Ok(()) | Err(mpsc::RecvTimeoutError::Timeout) => {}
            // The engine is gone: so is its checkpointer.
            Err(mpsc::RecvTimeoutError::Disconnected) => return,
        }
        if conn.is_none() {
            conn = open_for_checkpoints(manager);
        }
        let Some((c, wal)) = conn.as_mut() else {
            continue;
        };
        let now = log.commits.load(Ordering::Relaxed);
        let idle = now == seen;
        seen = now;
        let mut light = false;
        let elapsed = window.0.elapsed();
        if elapsed >= Duration::from_secs(1) {
            let per_second = f64::from(now.wrapping_sub(window.1)) / elapsed.as_secs_f64();
            light = per_second < f64::from(LIGHT_COMMITS);
            window = (Instant::now(), now);
        }
        let large = || {
            wal.as_deref()
                .and_then(|w| std::fs::metadata(w).ok())
                .is_some_and(|m| m.len() > SMALL_LOG_BYTES)
        };
        let quiet = truncations.ready() && (idle || (light && large()));
        let result = checkpoint(c, "PASSIVE").and_then(|done| match done {
            Some(d) if quiet && d.log > 0 => {
                let truncated = checkpoint(c, "TRUNCATE")?;
                truncations.after(truncated.as_ref().is_some_and(|t| !t.busy));
                Ok(truncated)
            }
            Some(d) if d.log > WAL_RESTART_FRAMES => {
                log.restart_due.store(true, Ordering::Release);
                Ok(Some(d))
            }
            other => Ok(other),
        });
        if let Err(e) = result {
            tracing::debug!(error = %e, "checkpoint skipped");
            conn = None;
        }
    }
}

/// The checkpointer's own connection, and the `-wal` file beside the database as
/// SQLite opened it (after symlinks and URI names, from `PRAGMA database_list`).
fn open_for_checkpoints(manager: &ConnectionManager) -> Option<(AnyConnection, Option<PathBuf>)> {
    #[derive(diesel::QueryableByName)]
    struct Row {
        #[diesel(sql_type = diesel::sql_types::Text)]
        name: String,
        #[diesel(sql_type = diesel::sql_types::Text)]
        file: String,
    }
    let mut c: AnyConnection = r2d2::ManageConnection::connect(manager).ok()?;
    let patience = format!("PRAGMA busy_timeout = {CHECKPOINT_PATIENCE_MS};");
    c.batch_execute(&patience).ok()?;
    let wal = match &mut c {
        AnyConnection::Sqlite(lite) => {
            let rows: Vec<Row> =
                diesel::RunQueryDsl::load(diesel::sql_query("PRAGMA database_list"), lite).ok()?;
            rows.into_iter()
                .find(|r| r.name == "main" && !r.file.is_empty())
                .map(|r| PathBuf::from(r.file + "-wal"))
        }
        _ => None,
    };
    Some((c, wal))
}

/// What a checkpoint reports.
struct Checkpointed {
    /// It could not finish: a writer or a reader was in the way.
    busy: bool,
    /// The log's size in frames.
    log: i64,
}

/// Runs a checkpoint of `mode`; `None` on PostgreSQL. A log of -1 means it could not
/// run: another connection's checkpoint was running (or the file is not in WAL
/// mode, which it always is here).
fn checkpoint(c: &mut AnyConnection, mode: &str) -> Result<Option<Checkpointed>, DieselError> {
    #[derive(diesel::QueryableByName)]
    struct Row {
        #[diesel(sql_type = diesel::sql_types::Integer)]
        busy: i32,
        #[diesel(sql_type = diesel::sql_types::BigInt)]
        log: i64,
    }
    let AnyConnection::Sqlite(lite) = c else {
        return Ok(None);
    };
    let query = format!("PRAGMA wal_checkpoint({mode})");
    let row: Row = diesel::RunQueryDsl::get_result(diesel::sql_query(query), lite)?;
    Ok(Some(Checkpointed {
        busy: row.busy != 0,
        log: row.log,
    }))
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
                    Ok::<_, StoreError>(i)
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
        // Every write went inline on the free connection.
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
            .write(|c| -> Result<(), StoreError> {
                diesel::insert_into(settings::table)
                    .values((settings::key.eq("k1"), settings::value.eq("v")))
                    .execute(c)?;
                Err(StoreError::Unavailable("refused".into()))
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

    /// A result's callback that panics (a bug) takes neither the writer thread nor
    /// the writes after it down.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_callback_that_panics_leaves_the_writer_thread_running() {
        let (_dir, db) = database();
        let (tx, rx) = std::sync::mpsc::channel();
        db.queue(
            1,
            |c| insert_key(c, "k1"),
            |_: Result<(), StoreError>| panic!("a bug in a callback (test)"),
        );
        db.queue(
            2,
            |c| insert_key(c, "k2"),
            move |r: Result<(), StoreError>| tx.send(r.is_ok()).unwrap(),
        );
        assert!(rx.recv().unwrap());
        db.write(|c| insert_key(c, "k3")).await.unwrap();
        assert_eq!(keys(&db), vec!["k1", "k2", "k3"]);
    }

    /// No pooled connection checkpoints inside its own commit: only the engine's
    /// checkpointer does, from a connection of its own.
    #[test]
    fn no_connection_checkpoints_on_its_own() {
        let (_dir, db) = database();
        let mut conn = db.conn().unwrap();
        let pages: Vec<Setting> = diesel::sql_query("PRAGMA wal_autocheckpoint")
            .load(&mut conn)
            .unwrap();
        assert_eq!(pages[0].wal_autocheckpoint, 0);
    }

    #[derive(diesel::QueryableByName)]
    struct Setting {
        #[diesel(sql_type = diesel::sql_types::Integer)]
        wal_autocheckpoint: i32,
    }

    /// A blocking write that finds the connection in use waits for the writer
    /// thread, from any thread, async runtime or not.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_blocking_write_queues_behind_a_busy_connection() {
        let (_dir, db) = database();
        let holder = Holder::start(&db, "k1").await;
        let other = db.clone();
        let blocking = std::thread::spawn(move || other.write_blocking(|c| insert_key(c, "k2")));
        // It cannot run inline while the holder has the connection: it queued.
        while db.write_counts().unwrap().queued == 0 {
            std::thread::yield_now();
        }
        holder.release();
        blocking.join().unwrap().unwrap();
        assert_eq!(keys(&db), vec!["k1", "k2"]);
    }
}
