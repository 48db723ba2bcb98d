//! One binary, two databases: SQLite (embedded default) and PostgreSQL, chosen by URL.

mod engine;
pub use engine::{RetryableError, WriteCounts, WriteError};
pub mod schema;
pub(crate) mod statement;

use crate::config::DatabaseUrl;
use diesel::connection::SimpleConnection;
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

impl ConnectionManager {
    pub fn url(&self) -> &DatabaseUrl {
        &self.url
    }
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
                let conn = PgConnection::establish(&with_connect_timeout(url.expose_secret()))?;
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
    // at ~10 µs a commit. No connection checkpoints inside its own commits
    // (`wal_autocheckpoint = 0`): the write engine's checkpointer does, from a
    // connection of its own.
    // A writer that starts the log over (`engine::restart_log`) would cut its file
    // back to `journal_size_limit`; it is set above the size at which the log is
    // started over, so under load the file is written over in place, not cut and
    // grown again (each cut freed megabytes of blocks inside a request's commit).
    // A quiet database truncates it (`engine::checkpointer`).
    conn.batch_execute(
        "PRAGMA busy_timeout = 10000; PRAGMA journal_mode = WAL; \
         PRAGMA synchronous = NORMAL; PRAGMA foreign_keys = ON; \
         PRAGMA wal_autocheckpoint = 0; PRAGMA journal_size_limit = 134217728;",
    )?;
    Ok(conn)
}

/// A PostgreSQL URL with libpq's `connect_timeout` (5 s) unless it names one: without
/// it, connecting to an unreachable host waits for TCP's own timeout, minutes during
/// which the writer thread holds its settlements.
fn with_connect_timeout(url: &str) -> String {
    if url.contains("connect_timeout=") {
        return url.to_owned();
    }
    let separator = if url.contains('?') { '&' } else { '?' };
    format!("{url}{separator}connect_timeout=5")
}

/// Why SQLite could not write `path`, asked of the OS without opening the file.
/// Asked before each new connection: on a file it cannot write, SQLite silently opens
/// read-only and later says only "attempt to write a readonly database", while the OS
/// names the cause (a read-only mount, permissions).
///
/// The file itself is never opened outside SQLite: closing any descriptor of a file
/// drops every POSIX lock this process holds on it, SQLite's included. Another
/// process (the command line) closing its connection would then believe it was the
/// last one, checkpoint and delete the `-wal` under the running server, and every
/// write since would be lost ("How To Corrupt An SQLite Database File", 2.2).
fn not_writable(path: &Path) -> Option<ConnectError> {
    use rustix::fs::{Access, access};
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    // The `-wal` and `-shm` files are created beside the database.
    let checks = [
        (dir, Access::WRITE_OK | Access::EXEC_OK),
        (path, Access::WRITE_OK),
    ];
    checks
        .into_iter()
        .find_map(|(target, mode)| match access(target, mode) {
            Ok(()) => None,
            // The file is created on first open, if the folder allows it.
            Err(rustix::io::Errno::NOENT) if target == path => None,
            Err(errno) => Some(ConnectError::NotWritable {
                path: path.display().to_string(),
                source: std::io::Error::from(errno),
            }),
        })
}

/// The connection pool, the write engine, and what the backend is.
#[derive(Clone)]
pub struct Database {
    pool: Pool,
    url: DatabaseUrl,
    /// Every write goes through it (`engine`); started by the first.
    engine: Arc<OnceLock<engine::Engine>>,
}

impl Database {
    /// Builds the pool without connecting yet (so a service can start while its
    /// database is still coming up and answer 503 meanwhile).
    pub fn new(url: &DatabaseUrl, pool_size: u32) -> Self {
        let size = match url {
            // Readers only: SQLite's writes share the engine's one connection.
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
            engine: Arc::new(OnceLock::new()),
        }
    }

    fn engine(&self) -> &engine::Engine {
        self.engine.get_or_init(|| {
            engine::Engine::start(
                ConnectionManager {
                    url: self.url.clone(),
                },
                self.pool.clone(),
            )
        })
    }

    /// How SQLite's writes have run so far; `None` on PostgreSQL.
    pub fn write_counts(&self) -> Option<WriteCounts> {
        match &self.url {
            DatabaseUrl::Sqlite(_) => Some(
                self.engine
                    .get()
                    .map(engine::Engine::counts)
                    .unwrap_or_default(),
            ),
            DatabaseUrl::Postgres(_) => None,
        }
    }

    /// Runs `f` as a write transaction and returns its result once committed (see
    /// `engine`). `f` may run more than once, after a lost race.
    pub async fn write<T, E, F>(&self, f: F) -> Result<T, E>
    where
        T: Send + 'static,
        E: WriteError,
        F: FnMut(&mut AnyConnection) -> Result<T, E> + Send + 'static,
    {
        self.engine().write(f, drop).await
    }

    /// `write`, and should the caller stop waiting before the result arrives, the
    /// transaction still commits and `abandoned` gets its result.
    pub async fn write_or<T, E, F>(
        &self,
        f: F,
        abandoned: impl FnOnce(T) + Send + 'static,
    ) -> Result<T, E>
    where
        T: Send + 'static,
        E: WriteError,
        F: FnMut(&mut AnyConnection) -> Result<T, E> + Send + 'static,
    {
        self.engine().write(f, abandoned).await
    }

    /// `write` for callers off the async runtime (the dashboard's blocking tasks, the
    /// command line, the heartbeat).
    pub fn write_blocking<T, E, F>(&self, f: F) -> Result<T, E>
    where
        T: Send + 'static,
        E: WriteError,
        F: FnMut(&mut AnyConnection) -> Result<T, E> + Send + 'static,
    {
        self.engine().write_blocking(f)
    }

    /// Hands `f` to the next group commit and returns at once; `done` gets its result
    /// (on the writer thread) once written. Groups run jobs in the order of `key`.
    pub fn queue<T, E, F, D>(&self, key: i64, f: F, done: D)
    where
        T: Send + 'static,
        E: WriteError,
        F: FnMut(&mut AnyConnection) -> Result<T, E> + Send + 'static,
        D: FnOnce(Result<T, E>) + Send + 'static,
    {
        self.engine().queue(key, f, done);
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
        // A migration that rebuilds a table (SQLite's way to drop a constraint) must
        // run with foreign keys off, which SQLite only switches outside a
        // transaction: they are checked by `foreign_key_check` before the commit
        // instead, and switched back on whatever happens.
        AnyConnection::Sqlite(c) => {
            c.batch_execute("PRAGMA foreign_keys = OFF")?;
            let result = c
                .immediate_transaction(|c| {
                    let applied = c
                        .run_pending_migrations(SQLITE_MIGRATIONS)
                        .map(to_strings)
                        .map_err(|e| MigrationFailed(e.to_string()))?;
                    let broken: i64 =
                        diesel::select(diesel::dsl::sql::<diesel::sql_types::BigInt>(
                            "(SELECT COUNT(*) FROM pragma_foreign_key_check)",
                        ))
                        .get_result(c)?;
                    if broken > 0 {
                        return Err(MigrationFailed(format!(
                            "{broken} row(s) would break a foreign key"
                        )));
                    }
                    Ok(applied)
                })
                .map_err(|e| StoreError::Unavailable(format!("migration failed: {e}")));
            let restored = c.batch_execute("PRAGMA foreign_keys = ON");
            let applied = result?;
            restored?;
            Ok(applied)
        }
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

/// Flags are stored as INTEGER 0/1 on both backends.
pub fn flag(b: bool) -> i32 {
    i32::from(b)
}
