//! One binary, two databases: SQLite (embedded default) and PostgreSQL, chosen by URL.

mod batch;
pub use batch::WriteCounts;
pub mod schema;
pub(crate) mod statement;

use crate::config::DatabaseUrl;
use diesel::connection::{AnsiTransactionManager, SimpleConnection, TransactionManager};
use diesel::pg::PgConnection;
use diesel::prelude::*;
use diesel::r2d2::R2D2Connection;
use diesel::result::{DatabaseErrorKind, Error as DieselError};
use diesel::sqlite::SqliteConnection;
use diesel_migrations::{EmbeddedMigrations, MigrationHarness, embed_migrations};
use secrecy::ExposeSecret;
use std::path::Path;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

pub const SQLITE_MIGRATIONS: EmbeddedMigrations = embed_migrations!("migrations/sqlite");
pub const POSTGRES_MIGRATIONS: EmbeddedMigrations = embed_migrations!("migrations/postgres");

/// Key of the PostgreSQL advisory lock that serializes migrations across replicas.
const MIGRATION_LOCK_KEY: i64 = 0x746f_6b65_6e67; // "tokeng"

#[derive(diesel::MultiConnection)]
pub enum AnyConnection {
    Postgresql(PgConnection),
    Sqlite(SqliteConnection),
}

pub type Pool = r2d2::Pool<ConnectionManager>;
pub type PooledConnection = r2d2::PooledConnection<ConnectionManager>;

/// Storage-layer failures. `Unavailable` means the database cannot be reached or is
/// too busy right now: the proxy fails closed with 503.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("database unavailable: {0}")]
    Unavailable(String),
    #[error("database error: {0}")]
    Query(DieselError),
}

impl From<DieselError> for StoreError {
    fn from(e: DieselError) -> Self {
        let unavailable = match &e {
            DieselError::DatabaseError(kind, info) => {
                matches!(
                    kind,
                    DatabaseErrorKind::ClosedConnection | DatabaseErrorKind::UnableToSendCommand
                ) || is_transient_message(info.message())
            }
            DieselError::BrokenTransactionManager => true,
            _ => false,
        };
        if unavailable {
            Self::Unavailable(e.to_string())
        } else {
            Self::Query(e)
        }
    }
}

impl From<r2d2::Error> for StoreError {
    fn from(e: r2d2::Error) -> Self {
        Self::Unavailable(e.to_string())
    }
}

fn is_transient_message(msg: &str) -> bool {
    let msg = msg.to_ascii_lowercase();
    [
        "database is locked",
        "readonly database",
        "disk is full",
        "terminating connection",
        "server closed the connection",
        "could not connect",
        "connection refused",
    ]
    .iter()
    .any(|m| msg.contains(m))
}

/// r2d2 manager that picks the backend from the URL scheme, so a bad URL reports the
/// real connection error instead of "no backend accepted it".
#[derive(Debug, Clone)]
pub struct ConnectionManager {
    url: DatabaseUrl,
}

#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error(transparent)]
    Connection(#[from] diesel::ConnectionError),
    #[error(transparent)]
    Query(#[from] DieselError),
    #[error("cannot create the database folder {0}: {1}")]
    Folder(String, std::io::Error),
    #[error("the SQLite database {path} cannot be written: {source}")]
    NotWritable {
        path: String,
        source: std::io::Error,
    },
}

impl r2d2::ManageConnection for ConnectionManager {
    type Connection = AnyConnection;
    type Error = ConnectError;

    fn connect(&self) -> Result<AnyConnection, ConnectError> {
        match &self.url {
            DatabaseUrl::Sqlite(path) => {
                if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
                    std::fs::create_dir_all(dir)
                        .map_err(|e| ConnectError::Folder(dir.display().to_string(), e))?;
                }
                if let Some(e) = not_writable(path) {
                    return Err(e);
                }
                connect_sqlite(path).map(AnyConnection::Sqlite)
            }
            DatabaseUrl::Postgres(url) => {
                let conn = PgConnection::establish(url.expose_secret())?;
                Ok(AnyConnection::Postgresql(conn))
            }
        }
    }

    fn is_valid(&self, conn: &mut AnyConnection) -> Result<(), ConnectError> {
        conn.batch_execute("SELECT 1").map_err(ConnectError::from)
    }

    fn has_broken(&self, conn: &mut AnyConnection) -> bool {
        match conn {
            AnyConnection::Postgresql(c) => c.is_broken(),
            AnyConnection::Sqlite(c) => c.is_broken(),
        }
    }
}

fn connect_sqlite(path: &Path) -> Result<SqliteConnection, ConnectError> {
    let mut conn = SqliteConnection::establish(&path.to_string_lossy())?;
    // busy_timeout makes writers queue instead of failing; it comes first because
    // switching a new file to WAL needs a lock that another process starting at the
    // same moment may hold. WAL + NORMAL survives a killed process (not a power cut)
    // at ~10 µs a commit.
    conn.batch_execute(
        "PRAGMA busy_timeout = 10000; PRAGMA journal_mode = WAL; \
         PRAGMA synchronous = NORMAL; PRAGMA foreign_keys = ON;",
    )?;
    Ok(conn)
}

/// Checked before each new SQLite connection (they are pooled, so rarely): on a file
/// it cannot write, SQLite silently opens read-only and later says only "attempt to
/// write a readonly database", while the OS names the cause (a read-only mount,
/// permissions).
fn not_writable(path: &Path) -> Option<ConnectError> {
    std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(path)
        .err()
        .map(|source| ConnectError::NotWritable {
            path: path.display().to_string(),
            source,
        })
}

/// The connection pool plus what the backend is.
#[derive(Clone)]
pub struct Database {
    pool: Pool,
    url: DatabaseUrl,
    /// SQLite's one write connection and its writer thread, started by the first
    /// `write`.
    writer: Arc<OnceLock<batch::WriteQueue>>,
}

impl Database {
    /// Builds the pool without connecting yet (so a service can start while its
    /// database is still coming up and answer 503 meanwhile).
    pub fn new(url: &DatabaseUrl, pool_size: u32) -> Self {
        let size = match url {
            // One writer at a time anyway; a few readers in WAL.
            DatabaseUrl::Sqlite(_) => pool_size.min(8),
            DatabaseUrl::Postgres(_) => pool_size,
        };
        let pool = r2d2::Pool::builder()
            .max_size(size)
            .min_idle(Some(0))
            .connection_timeout(Duration::from_secs(3))
            .test_on_check_out(false)
            .build_unchecked(ConnectionManager { url: url.clone() });
        Self {
            pool,
            url: url.clone(),
            writer: Arc::new(OnceLock::new()),
        }
    }

    /// How SQLite's writes have run so far; `None` on PostgreSQL, whose writes take
    /// any pooled connection.
    pub fn write_counts(&self) -> Option<WriteCounts> {
        match &self.url {
            DatabaseUrl::Sqlite(_) => Some(
                self.writer
                    .get()
                    .map(batch::WriteQueue::counts)
                    .unwrap_or_default(),
            ),
            DatabaseUrl::Postgres(_) => None,
        }
    }

    /// Runs `f` as a write transaction. On SQLite it runs inline when the writer
    /// connection is free, else in the writer thread's next group commit (see
    /// `batch`). On PostgreSQL it runs on the blocking pool, in a transaction of its
    /// own on a pooled connection, so row locks, not a single process, keep replicas
    /// apart. `f` may run more than once after a lost race.
    pub async fn write<T, F>(&self, mut f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnMut(&mut AnyConnection) -> Result<T, StoreError> + Send + 'static,
    {
        match &self.url {
            DatabaseUrl::Sqlite(_) => {
                let manager = ConnectionManager {
                    url: self.url.clone(),
                };
                self.writer
                    .get_or_init(|| batch::WriteQueue::start(manager))
                    .submit(f)
                    .await
            }
            DatabaseUrl::Postgres(_) => {
                let pool = self.pool.clone();
                tokio::task::spawn_blocking(move || {
                    let mut conn = pool.get()?;
                    write_tx(&mut conn, &mut f)
                })
                .await
                .map_err(|e| StoreError::Unavailable(format!("write task failed: {e}")))?
            }
        }
    }

    /// Runs `f` on each item, each in a savepoint of its own so that one that fails
    /// is rolled back alone and reported in its place, with as few commits as the
    /// backend allows. On SQLite the items are jobs of the writer thread's group
    /// commit; on PostgreSQL they share one transaction on a pooled connection. The
    /// outer error means that transaction failed and nothing was written.
    pub async fn write_each<I, T, F>(
        &self,
        items: Arc<[I]>,
        f: F,
    ) -> Result<Vec<Result<T, StoreError>>, StoreError>
    where
        I: Send + Sync + 'static,
        T: Send + 'static,
        F: Fn(&mut AnyConnection, &I) -> Result<T, StoreError> + Send + Sync + 'static,
    {
        match &self.url {
            DatabaseUrl::Sqlite(_) => {
                let manager = ConnectionManager {
                    url: self.url.clone(),
                };
                Ok(self
                    .writer
                    .get_or_init(|| batch::WriteQueue::start(manager))
                    .submit_each(items, f)
                    .await)
            }
            DatabaseUrl::Postgres(_) => {
                self.write(move |c| {
                    Ok(items
                        .iter()
                        .map(|item| c.transaction(|c| f(c, item)))
                        .collect::<Vec<_>>())
                })
                .await
            }
        }
    }

    /// `write` for callers off the async runtime (the dashboard's blocking tasks, the
    /// command line, the sweeper).
    pub fn write_blocking<T, F>(&self, f: F) -> Result<T, StoreError>
    where
        F: FnMut(&mut AnyConnection) -> Result<T, StoreError>,
    {
        let mut conn = self.conn()?;
        write_tx(&mut conn, f)
    }

    pub fn url(&self) -> &DatabaseUrl {
        &self.url
    }

    pub fn conn(&self) -> Result<PooledConnection, StoreError> {
        Ok(self.pool.get()?)
    }

    /// Runs pending migrations; on PostgreSQL under an advisory lock so replicas that
    /// start together do not race. Returns the versions applied.
    pub fn migrate(&self) -> Result<Vec<String>, StoreError> {
        let mut conn = self.conn()?;
        run_migrations(&mut conn)
    }

    pub fn ping(&self) -> Result<(), StoreError> {
        let mut conn = self.conn()?;
        conn.batch_execute("SELECT 1")?;
        Ok(())
    }
}

/// A migration's own error, carried out of the transaction that holds them all.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct MigrationFailed(String);

impl From<DieselError> for MigrationFailed {
    fn from(e: DieselError) -> Self {
        Self(e.to_string())
    }
}

pub fn run_migrations(conn: &mut AnyConnection) -> Result<Vec<String>, StoreError> {
    let to_strings = |v: Vec<diesel::migration::MigrationVersion<'_>>| {
        v.into_iter().map(|m| m.to_string()).collect::<Vec<_>>()
    };
    match conn {
        // One write transaction around them all: processes that start together on
        // one file queue on SQLite's write lock, and those that come second find
        // nothing pending (each migration becomes a savepoint inside it).
        AnyConnection::Sqlite(c) => c
            .immediate_transaction(|c| {
                c.run_pending_migrations(SQLITE_MIGRATIONS)
                    .map(to_strings)
                    .map_err(|e| MigrationFailed(e.to_string()))
            })
            .map_err(|e| StoreError::Unavailable(format!("migration failed: {e}"))),
        AnyConnection::Postgresql(c) => {
            c.batch_execute(&format!("SELECT pg_advisory_lock({MIGRATION_LOCK_KEY})"))?;
            let result = c
                .run_pending_migrations(POSTGRES_MIGRATIONS)
                .map(to_strings)
                .map_err(|e| StoreError::Unavailable(format!("migration failed: {e}")));
            let unlocked =
                c.batch_execute(&format!("SELECT pg_advisory_unlock({MIGRATION_LOCK_KEY})"));
            let applied = result?;
            unlocked?;
            Ok(applied)
        }
    }
}

/// Runs `f` in a write transaction. On SQLite it is `BEGIN IMMEDIATE`, so the write
/// lock is taken up front and a read-then-write can never fail with a stale snapshot;
/// on PostgreSQL it is a plain transaction whose first statement locks the rows it
/// touches. Retries a few times on a lost race (unique violation or serialization
/// failure), which `f` must therefore tolerate being run again.
pub fn write_tx<T, E, F>(conn: &mut AnyConnection, mut f: F) -> Result<T, E>
where
    F: FnMut(&mut AnyConnection) -> Result<T, E>,
    E: From<DieselError> + RetryableError,
{
    let mut attempt = 0;
    loop {
        attempt += 1;
        let result = run_tx(conn, &mut f);
        match result {
            Err(e) if attempt < 4 && e.is_retryable() => continue,
            other => return other,
        }
    }
}

fn run_tx<T, E, F>(conn: &mut AnyConnection, f: &mut F) -> Result<T, E>
where
    F: FnMut(&mut AnyConnection) -> Result<T, E>,
    E: From<DieselError>,
{
    match conn {
        AnyConnection::Sqlite(c) => {
            AnsiTransactionManager::begin_transaction_sql(c, "BEGIN IMMEDIATE")?
        }
        AnyConnection::Postgresql(c) => AnsiTransactionManager::begin_transaction(c)?,
    }
    match f(conn) {
        Ok(value) => {
            <AnyConnection as Connection>::TransactionManager::commit_transaction(conn)?;
            Ok(value)
        }
        Err(e) => {
            <AnyConnection as Connection>::TransactionManager::rollback_transaction(conn)?;
            Err(e)
        }
    }
}

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

/// Flags are stored as INTEGER 0/1 on both backends.
pub fn flag(b: bool) -> i32 {
    i32::from(b)
}
