//! Builds the application: database, bootstrap, background tasks, HTTP server.

use crate::alerts::AlertPolicy;
use crate::alerts::worker::MailWorker;
use crate::bootstrap::{self, Generated};
use crate::config::Config;
use crate::db::Database;
use crate::domain::Clock;
use crate::ledger::Ledger;
use crate::mail::{Mailer, Templates};
use crate::proxy::auth::ClientKeys;
use crate::proxy::settler::Settler;
use crate::proxy::spool::Spool;
use crate::proxy::upstream::Upstream;
use crate::telemetry::Metrics;
use actix_web::dev::Server;
use actix_web::{App, HttpServer, web};
use std::net::TcpListener;
use std::sync::Arc;
use std::time::Duration;

/// How long a stopping instance waits for settlements still being written.
const SETTLE_DRAIN_LIMIT: Duration = Duration::from_secs(10);

/// Shared by every request handler.
pub struct AppState {
    pub config: Arc<Config>,
    pub ledger: Ledger,
    pub keys: ClientKeys,
    pub upstream: Upstream,
    pub metrics: Arc<Metrics>,
    pub settler: Settler,
    /// For the mails a request sends itself (the sign-in link).
    pub mailer: Arc<Mailer>,
    pub templates: Arc<Templates>,
    /// Requests each client has open on the public pages (`limits`).
    pub client_slots: crate::limits::ClientSlots,
}

#[derive(Debug, thiserror::Error)]
pub enum StartupError {
    #[error("cannot listen on {0}: {1}")]
    Bind(String, std::io::Error),
    #[error("database: {0}")]
    Store(#[from] crate::db::StoreError),
    #[error("first-start setup: {0}")]
    Bootstrap(#[from] bootstrap::BootstrapError),
    #[error("upstream client: {0}")]
    Upstream(String),
    #[error("mail: {0}")]
    Mail(String),
    #[error(transparent)]
    Spool(#[from] crate::proxy::spool::SpoolError),
    #[error(transparent)]
    Instance(#[from] crate::ledger::ClaimError),
}

pub struct Application {
    server: Server,
    port: u16,
    state: web::Data<AppState>,
    mail_worker: MailWorker,
}

impl Application {
    pub fn build(config: Config) -> Result<Self, StartupError> {
        if let Some(now) = config.test_now {
            tracing::warn!(%now, "TOKENGATE_TEST_NOW is set: the ledger's clock stands still (for tests only)");
        }
        let clock = config.clock();
        Self::build_with_clock(config, clock)
    }

    /// Connects, migrates, bootstraps and binds. Must run inside an actix system.
    pub fn build_with_clock(config: Config, clock: Arc<dyn Clock>) -> Result<Self, StartupError> {
        make_private(&config);
        let db = Database::new(&config.database_url, config.db_pool_size);
        let applied = until_reachable(&db, "migrating", || db.migrate())?;
        // This instance's lock, and the settlements a previous run could not write,
        // before anything touches its holds.
        let spool = Spool::open(&config.data_dir, &config.instance_id)?;
        if !applied.is_empty() {
            tracing::info!(migrations = ?applied, "database migrated");
        }
        let wide = crate::net::wide_networks(&config.trusted_proxies);
        if !wide.is_empty() {
            tracing::warn!(networks = ?wide, "TOKENGATE_TRUSTED_PROXIES has networks wide enough to hold clients: any client inside them can name its own address in X-Forwarded-For and escape the sign-in and code limits; list only your proxies' addresses");
        }
        if config.admin_emails.is_empty() {
            tracing::warn!(
                "TOKENGATE_ADMIN_EMAILS is empty: the install's admins get no alerts or credit requests by mail (the dashboard still lists them)"
            );
        }
        let mut generated = Generated::default();
        let keys = bootstrap::client_keys(&db, &config, &mut generated)?;
        bootstrap::first_admin(&db, &config, clock.now().naive_utc(), &mut generated)?;
        print_generated(&generated);

        let ledger = Ledger::new(
            db.clone(),
            clock,
            config.timezone,
            config.instance_id.clone(),
            config.hold_max_age,
        )
        .with_alert_policy(AlertPolicy {
            thresholds: config.alert_thresholds.clone(),
            admin_emails: config.admin_emails.clone(),
        });
        let metrics = Arc::new(Metrics::default());
        let settler = Settler::new(ledger.clone(), metrics.clone(), spool);
        let replayed = until_reachable(&db, "writing the spooled settlements", || {
            settler.replay_blocking()
        })?;
        if replayed > 0 {
            tracing::warn!(
                settlements = replayed,
                "wrote the settlements a previous run kept in its spool"
            );
        }
        let owner = format!(
            "{}:{}",
            rustix::system::uname().nodename().to_string_lossy(),
            settler.spool_path().display()
        );
        let released = ledger.claim_instance(&owner, config.instance_timeout)?;
        if released > 0 {
            tracing::warn!(released, instance = %config.instance_id, "released holds left by a previous run of this instance");
        }

        let upstream = Upstream::new(&config).map_err(|e| StartupError::Upstream(e.to_string()))?;
        let listener = TcpListener::bind(&config.listen)
            .map_err(|e| StartupError::Bind(config.listen.clone(), e))?;
        let port = listener
            .local_addr()
            .map_err(|e| StartupError::Bind(config.listen.clone(), e))?
            .port();
        let mailer =
            Arc::new(Mailer::from_config(&config).map_err(|e| StartupError::Mail(e.to_string()))?);
        let templates = Arc::new(Templates::new().map_err(|e| StartupError::Mail(e.to_string()))?);
        let config = Arc::new(config);
        let mail_worker = MailWorker::new(
            ledger.clone(),
            mailer.clone(),
            templates.clone(),
            config.clone(),
            config.instance_id.clone(),
            ledger.outbox_signal(),
            metrics.clone(),
        );
        let state = web::Data::new(AppState {
            client_slots: crate::limits::ClientSlots::new(config.client_requests),
            config,
            ledger,
            keys,
            upstream,
            metrics,
            settler,
            mailer,
            templates,
        });
        let session_key = crate::admin::session::load_key(state.ledger.db())?;
        let secure_cookie = state.config.public_url.starts_with("https://");
        let static_dir = state.config.static_dir.clone();
        let app_state = state.clone();
        let server = HttpServer::new(move || {
            App::new()
                .app_data(app_state.clone())
                .wrap(actix_web::middleware::from_fn(crate::limits::guard))
                .configure(crate::ops::configure)
                .configure(crate::proxy::configure)
                .configure(|cfg| crate::admin::configure(cfg, session_key.clone(), secure_cookie))
                .configure(crate::me::configure)
                .configure(|cfg| crate::assets::configure(cfg, static_dir.as_ref()))
        })
        // Streamed answers are many small writes: without TCP_NODELAY, Nagle's
        // algorithm holds each one until the client's delayed ACK, about 40 ms.
        .on_connect(|conn, _| {
            if let Some(tcp) = conn.downcast_ref::<actix_web::rt::net::TcpStream>() {
                let _ = tcp.set_nodelay(true);
            }
        })
        .listen(listener)
        .map_err(|e| StartupError::Bind(String::from("listener"), e))?
        .shutdown_timeout(30)
        .run();
        tracing::info!(port, database = %state.config.database_url.redacted(), upstream = %state.upstream.base_url(), "tokengate listening");
        Ok(Self {
            server,
            port,
            state,
            mail_worker,
        })
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn state(&self) -> web::Data<AppState> {
        self.state.clone()
    }

    pub fn server_handle(&self) -> actix_web::dev::ServerHandle {
        self.server.handle()
    }

    /// Serves until stopped, keeping the heartbeat, the stale-hold sweeper and the
    /// mail worker running.
    pub async fn run_until_stopped(self) -> std::io::Result<()> {
        let mail = actix_web::rt::spawn(self.mail_worker.run());
        let retries = actix_web::rt::spawn(self.state.settler.clone().retry_spooled());
        let background = actix_web::rt::spawn(keep_alive(self.state.clone(), self.server.handle()));
        let result = self.server.await;
        // No request runs any more; the settlements of the last ones may still be
        // on their way to the database.
        self.state.settler.drain(SETTLE_DRAIN_LIMIT).await;
        background.abort();
        retries.abort();
        mail.abort();
        result
    }
}

/// The instance's background duty, every `TOKENGATE_HEARTBEAT_SECS`: prove it is
/// alive, keep the holds of its long requests alive, turn the cycle when a new one
/// starts (recording what the last one's plans brought), and release the holds of
/// instances that died. Should another process have claimed this instance's id
/// meanwhile, this one stops.
///
/// Another instance is taken for dead only once this one has itself been beating
/// without a gap for `TOKENGATE_INSTANCE_TIMEOUT_SECS`: after a database outage (or
/// a stall of this process) everyone's heartbeats are old, the live ones included,
/// and they need a moment to beat again. Heartbeats are compared by the database's
/// clock, so a replica whose own clock is off judges no one wrongly.
async fn keep_alive(state: web::Data<AppState>, server: actix_web::dev::ServerHandle) {
    let every = state.config.heartbeat_every;
    let dead_after = state.config.instance_timeout;
    let hold_max_age = state.ledger.hold_max_age();
    let mut tick = actix_web::rt::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut healthy_since: Option<std::time::Instant> = None;
    let mut last_beat: Option<std::time::Instant> = None;
    let mut turned: Option<crate::domain::Cycle> = None;
    loop {
        tick.tick().await;
        let ledger = state.ledger.clone();
        let long = state.settler.long_running(hold_max_age / 2);
        let beat = web::block(move || -> Result<bool, crate::db::StoreError> {
            let alive = ledger.heartbeat()?;
            ledger.extend_holds(long)?;
            Ok(alive)
        })
        .await;
        let now = std::time::Instant::now();
        match beat {
            Ok(Ok(alive)) => {
                if !alive {
                    // This process was silent long enough to be taken for dead (a
                    // stall, a partition), and another one started with its id. Two
                    // live processes must never share one: this one stops, letting
                    // its requests in flight end (their holds may be gone: they are
                    // charged late).
                    tracing::error!(instance = %state.config.instance_id, "another process has claimed this instance id; stopping");
                    server.stop(true).await;
                    return;
                }
                let gap = last_beat.map(|t| now - t);
                if healthy_since.is_none() || gap.is_some_and(|g| g > every * 2) {
                    healthy_since = Some(now);
                }
                last_beat = Some(now);
                turned = turn_cycles(&state, turned).await;
            }
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "heartbeat failed");
                healthy_since = None;
                continue;
            }
            Err(_) => {
                tracing::warn!("heartbeat task was cancelled");
                healthy_since = None;
                continue;
            }
        }
        if healthy_since.is_none_or(|t| now - t < dead_after) {
            continue;
        }
        let ledger = state.ledger.clone();
        match web::block(move || ledger.sweep_stale_holds(dead_after)).await {
            Ok(Ok(0)) => {}
            Ok(Ok(n)) => tracing::warn!(released = n, "released stale holds"),
            Ok(Err(e)) => tracing::warn!(error = %e, "sweeping stale holds failed"),
            Err(_) => tracing::warn!("sweep task was cancelled"),
        }
        state.metrics.record_sweep();
    }
}

/// Turns the cycle unless this instance already did for the current one; returns
/// the cycle turned for.
async fn turn_cycles(
    state: &web::Data<AppState>,
    turned: Option<crate::domain::Cycle>,
) -> Option<crate::domain::Cycle> {
    let current = state.ledger.current_cycle();
    if turned == Some(current) {
        return turned;
    }
    let ledger = state.ledger.clone();
    match web::block(move || ledger.turn_cycles()).await {
        Ok(Ok(closed)) => {
            if !closed.is_empty() {
                tracing::info!(cycles = ?closed, "closed cycles: their plans' revenue is recorded");
            }
            Some(current)
        }
        Ok(Err(e)) => {
            tracing::warn!(error = %e, "turning the cycle failed; trying again at the next beat");
            turned
        }
        Err(_) => {
            tracing::warn!("turning the cycle was cancelled; trying again at the next beat");
            turned
        }
    }
}

/// Takes group and others' access away from tokengate's own files made before it
/// created them private (`cli::main`'s umask): an earlier release left the spool
/// 0755 and the database and mails 0644. Only what tokengate names is touched: the
/// database's files, the spool folder and its files, and the mails it wrote; the
/// folders an operator chose (the data folder, by default the database's own, and
/// the mail folder) are left as they are. Only permissions change: no file is
/// opened (opening SQLite's file from outside SQLite would drop its locks).
fn make_private(config: &Config) {
    use std::os::unix::fs::PermissionsExt;
    let spool = crate::proxy::spool::folder(&config.data_dir);
    let mut paths = vec![(spool.clone(), 0o700)];
    if let crate::config::DatabaseUrl::Sqlite(db) = &config.database_url {
        for suffix in ["", "-wal", "-shm"] {
            let mut file = db.clone().into_os_string();
            file.push(suffix);
            paths.push((file.into(), 0o600));
        }
    }
    let files_in = |dir: &std::path::Path, endings: &[&str]| -> Vec<std::path::PathBuf> {
        std::fs::read_dir(dir)
            .into_iter()
            .flatten()
            .flatten()
            .map(|entry| entry.path())
            .filter(|p| {
                let name = p.to_string_lossy();
                p.is_file() && endings.iter().any(|e| name.ends_with(e))
            })
            .collect()
    };
    // A mail being written is `.NAME.eml.tmp` until it is renamed (`mail`).
    for file in files_in(&spool, &[".spool", ".journal"])
        .into_iter()
        .chain(files_in(&config.mail_dir, &[".eml", ".eml.tmp"]))
    {
        paths.push((file, 0o600));
    }
    for (path, mode) in paths {
        let Ok(meta) = std::fs::symlink_metadata(&path) else {
            continue;
        };
        if meta.file_type().is_symlink() || meta.permissions().mode() & 0o077 == 0 {
            continue;
        }
        match std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)) {
            Ok(()) => {
                tracing::info!(path = %path.display(), mode = format!("{mode:o}"), "made private")
            }
            Err(e) => tracing::warn!(path = %path.display(), error = %e, "cannot make private"),
        }
    }
}

/// Runs `f` until the database answers it. PostgreSQL may still be starting, or be
/// down for a while (a restart during an outage): tokengate waits for it, saying so,
/// instead of exiting. SQLite's errors (a read-only file, a missing folder) are
/// final.
fn until_reachable<T>(
    db: &Database,
    what: &str,
    mut f: impl FnMut() -> Result<T, crate::db::StoreError>,
) -> Result<T, crate::db::StoreError> {
    let mut pause = Duration::from_millis(250);
    loop {
        match f() {
            Err(crate::db::StoreError::Unavailable(e))
                if matches!(db.url(), crate::config::DatabaseUrl::Postgres(_)) =>
            {
                tracing::warn!(error = %e, retry_in_ms = pause.as_millis() as u64, "{what}: the database is unreachable; waiting for it");
                std::thread::sleep(pause);
                pause = (pause * 2).min(Duration::from_secs(5));
            }
            other => return other,
        }
    }
}

/// Shown once, on stdout (not in the logs), when first start generated secrets.
fn print_generated(g: &Generated) {
    if let Some(key) = &g.client_key {
        println!(
            "\n==> Generated a client key for LibreChat (shown only now; set TOKENGATE_CLIENT_KEYS to choose your own):\n    {key}\n"
        );
    }
    if let Some((email, password)) = &g.admin {
        println!(
            "==> Created the first admin (shown only now):\n    email:    {email}\n    password: {password}\n"
        );
    }
}
