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

/// How often an instance proves it is alive, and when it counts as dead.
const HEARTBEAT_EVERY: Duration = Duration::from_secs(5);
const INSTANCE_DEAD_AFTER: Duration = Duration::from_secs(30);
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
        let db = Database::new(&config.database_url, config.db_pool_size);
        let applied = until_reachable(&db, "migrating", || db.migrate())?;
        // This instance's lock, and the settlements a previous run could not write,
        // before anything touches its holds.
        let spool = Spool::open(&config.data_dir, &config.instance_id)?;
        if !applied.is_empty() {
            tracing::info!(migrations = ?applied, "database migrated");
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
        let released = ledger.register_instance()?;
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
        let mailer = Mailer::from_config(&config).map_err(|e| StartupError::Mail(e.to_string()))?;
        let templates = Templates::new().map_err(|e| StartupError::Mail(e.to_string()))?;
        let config = Arc::new(config);
        let mail_worker = MailWorker::new(
            db,
            Arc::new(mailer),
            Arc::new(templates),
            config.clone(),
            config.instance_id.clone(),
            ledger.outbox_signal(),
            metrics.clone(),
        );
        let state = web::Data::new(AppState {
            config,
            ledger,
            keys,
            upstream,
            metrics,
            settler,
        });
        let session_key = crate::admin::session::load_key(state.ledger.db())?;
        let secure_cookie = state.config.public_url.starts_with("https://");
        let static_dir = state.config.static_dir.clone();
        let app_state = state.clone();
        let server = HttpServer::new(move || {
            App::new()
                .app_data(app_state.clone())
                .configure(crate::ops::configure)
                .configure(crate::proxy::configure)
                .configure(|cfg| crate::admin::configure(cfg, session_key.clone(), secure_cookie))
                .service(actix_files::Files::new("/static", &static_dir).prefer_utf8(true))
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
        let ledger = self.state.ledger.clone();
        let background = actix_web::rt::spawn(async move {
            let mut tick = actix_web::rt::time::interval(HEARTBEAT_EVERY);
            loop {
                tick.tick().await;
                let l = ledger.clone();
                match web::block(move || {
                    l.heartbeat()?;
                    l.sweep_stale_holds(INSTANCE_DEAD_AFTER)
                })
                .await
                {
                    Ok(Ok(0)) => {}
                    Ok(Ok(n)) => tracing::warn!(released = n, "released stale holds"),
                    Ok(Err(e)) => tracing::warn!(error = %e, "heartbeat or sweep failed"),
                    Err(_) => tracing::warn!("heartbeat task was cancelled"),
                }
            }
        });
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
