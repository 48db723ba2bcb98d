//! Test harness: a fresh database per test (SQLite file or PostgreSQL database, by
//! `TOKENGATE_TEST_BACKEND`), the real application on port 0, typed helpers.

use crate::fake_provider::FakeProvider;
use chrono::{TimeZone, Utc};
use diesel::Connection;
use serde_json::{Value, json};
use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};
use tokengate::config::Config;
use tokengate::domain::{Clock, ManualClock};
use tokengate::ledger::{Actor, InvariantReport, Ledger, UserSummary, parse_user_ref};
use tokengate::startup::Application;

pub const CLIENT_KEY: &str = "tg-test-client-key-0123456789";
pub const USER: &str = "65f1c0ffee0000000000abcd";

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Backend {
    Sqlite,
    Postgres,
}

pub fn backend() -> Backend {
    match std::env::var("TOKENGATE_TEST_BACKEND").as_deref() {
        Ok("postgres") => Backend::Postgres,
        Ok("sqlite") | Err(_) => Backend::Sqlite,
        Ok(other) => panic!("TOKENGATE_TEST_BACKEND={other:?}: expected sqlite or postgres"),
    }
}

/// A database of its own for one test, and a folder for the local state of the
/// processes that use it (`TOKENGATE_DATA_DIR`: their settlement spools).
pub struct TestDb {
    pub url: String,
    dir: tempfile::TempDir,
}

impl TestDb {
    pub fn new() -> Self {
        match backend() {
            Backend::Sqlite => {
                let dir = tempfile::tempdir().unwrap();
                let url = format!("sqlite://{}/tokengate.db", dir.path().display());
                Self { url, dir }
            }
            Backend::Postgres => {
                let admin = std::env::var("TOKENGATE_TEST_PG_URL").expect(
                    "TOKENGATE_TEST_BACKEND=postgres needs TOKENGATE_TEST_PG_URL (scripts/test.sh starts a cluster and sets it)",
                );
                let name = format!("tg_{}", uuid::Uuid::new_v4().simple());
                let mut conn = diesel::PgConnection::establish(&admin)
                    .expect("cannot reach the test PostgreSQL");
                diesel::RunQueryDsl::execute(
                    diesel::sql_query(format!("CREATE DATABASE {name}")),
                    &mut conn,
                )
                .unwrap();
                let base = admin.rsplit_once('/').map(|(b, _)| b.to_owned()).unwrap();
                Self {
                    url: format!("{base}/{name}"),
                    dir: tempfile::tempdir().unwrap(),
                }
            }
        }
    }
}

/// The data folder its processes used (`process_data_dir`) goes with it: a suite
/// run left hundreds of them in the temporary folder.
impl Drop for TestDb {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(process_data_dir(&self.url));
    }
}

impl TestDb {
    /// A SQLite database at `path`, whatever backend the suite runs on (for tests
    /// of SQLite's own storage).
    pub fn sqlite_at(path: &std::path::Path) -> Self {
        Self {
            url: format!("sqlite://{}", path.display()),
            dir: tempfile::tempdir().unwrap(),
        }
    }

    /// `TOKENGATE_DATA_DIR` for the processes on this database.
    pub fn data_dir(&self) -> &std::path::Path {
        self.dir.path()
    }
}

/// The instant every test's clock starts at: `TOKENGATE_TEST_START` (RFC 3339), else
/// mid-November 2026. Processes and command lines started by a test get the same
/// instant (`TOKENGATE_TEST_NOW`), so nothing a test checks depends on the calendar;
/// scripts/test.sh also runs the date-sensitive tests from a month's last second and
/// from a year's last second.
pub fn test_start() -> chrono::DateTime<Utc> {
    match std::env::var("TOKENGATE_TEST_START") {
        Ok(v) => chrono::DateTime::parse_from_rfc3339(&v)
            .unwrap_or_else(|e| panic!("TOKENGATE_TEST_START={v:?}: {e}"))
            .with_timezone(&Utc),
        Err(_) => mid_november(),
    }
}

/// 2026-11-15 12:00 UTC, for tests whose expectations name dates (a cycle's rollover,
/// an email's renewal date).
pub fn mid_november() -> chrono::DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 11, 15, 12, 0, 0).unwrap()
}

/// `TOKENGATE_TEST_NOW` for a process or command line of this test run.
pub fn test_now_env() -> (&'static str, String) {
    ("TOKENGATE_TEST_NOW", test_start().to_rfc3339())
}

pub struct TestOptions {
    pub upstream: Option<String>,
    pub env: Vec<(&'static str, String)>,
    pub start: chrono::DateTime<Utc>,
    /// The first settlement attempt panics (`SettlementBug`).
    pub settlement_panics_once: bool,
}

impl Default for TestOptions {
    fn default() -> Self {
        Self {
            upstream: None,
            env: Vec::new(),
            start: test_start(),
            settlement_panics_once: false,
        }
    }
}

/// A stand-in for a bug in a settlement: the test's clock, which panics the first
/// time the write engine's writer thread reads it (settlements read it there, when
/// they are written).
struct SettlementBug {
    clock: Arc<ManualClock>,
    armed: AtomicBool,
}

impl Clock for SettlementBug {
    fn now(&self) -> chrono::DateTime<Utc> {
        let settling = std::thread::current().name() == Some("tokengate-writer");
        if settling && self.armed.swap(false, Ordering::SeqCst) {
            panic!("a bug on the settlement thread (test)");
        }
        self.clock.now()
    }
}

pub struct TestApp {
    pub address: String,
    pub db: Arc<TestDb>,
    /// Read through `ledger()`, which first waits for the settlements submitted.
    raw_ledger: Ledger,
    pub clock: Arc<ManualClock>,
    pub fake: Arc<FakeProvider>,
    pub client: reqwest::Client,
    pub state: actix_web::web::Data<tokengate::startup::AppState>,
    /// Stops the server (`stop(false)`: at once, dropping the requests in flight).
    pub server: actix_web::dev::ServerHandle,
}

pub fn config_for(db_url: &str, upstream: &str, extra: &[(&'static str, String)]) -> Config {
    let mut vars: HashMap<String, String> = HashMap::new();
    vars.insert("TOKENGATE_LISTEN".into(), "127.0.0.1:0".into());
    vars.insert("TOKENGATE_DATABASE_URL".into(), db_url.into());
    vars.insert("TOKENGATE_UPSTREAM_URL".into(), upstream.into());
    vars.insert("TOKENGATE_CLIENT_KEYS".into(), CLIENT_KEY.into());
    vars.insert(
        "TOKENGATE_ADMIN_PASSWORD".into(),
        "test-admin-password".into(),
    );
    vars.insert(
        "TOKENGATE_SUPPORT_CONTACT".into(),
        "suporte@iasolaris.com.br".into(),
    );
    vars.insert(
        "TOKENGATE_INSTANCE_ID".into(),
        format!("test-{}", uuid::Uuid::new_v4()),
    );
    for (k, v) in extra {
        vars.insert((*k).into(), v.clone());
    }
    Config::from_lookup(|k| vars.get(k).cloned()).unwrap()
}

pub async fn spawn_app(opts: TestOptions) -> TestApp {
    let fake = Arc::new(FakeProvider::start());
    let db = Arc::new(TestDb::new());
    spawn_on(db, fake, opts).await
}

/// Another instance on the same database and provider (a replica).
pub async fn spawn_replica(of: &TestApp) -> TestApp {
    spawn_replica_with(of, TestOptions::default()).await
}

pub async fn spawn_replica_with(of: &TestApp, opts: TestOptions) -> TestApp {
    spawn_on(of.db.clone(), of.fake.clone(), opts).await
}

/// An instance on a database of the test's choosing.
pub async fn spawn_app_on(db: TestDb, opts: TestOptions) -> TestApp {
    spawn_on(Arc::new(db), Arc::new(FakeProvider::start()), opts).await
}

async fn spawn_on(db: Arc<TestDb>, fake: Arc<FakeProvider>, opts: TestOptions) -> TestApp {
    let upstream = opts.upstream.clone().unwrap_or_else(|| fake.base_url());
    let mut env = vec![("TOKENGATE_DATA_DIR", db.data_dir().display().to_string())];
    env.extend(opts.env.iter().cloned());
    let config = config_for(&db.url, &upstream, &env);
    let clock = Arc::new(ManualClock::new(opts.start));
    let app_clock: Arc<dyn Clock> = if opts.settlement_panics_once {
        Arc::new(SettlementBug {
            clock: clock.clone(),
            armed: AtomicBool::new(true),
        })
    } else {
        clock.clone()
    };
    let app = Application::build_with_clock(config, app_clock).unwrap();
    let port = app.port();
    let state = app.state();
    let server = app.server_handle();
    actix_web::rt::spawn(app.run_until_stopped());
    TestApp {
        address: format!("http://127.0.0.1:{port}"),
        db,
        raw_ledger: state.ledger.clone(),
        clock,
        fake,
        client: reqwest::Client::builder()
            .pool_max_idle_per_host(0)
            .build()
            .unwrap(),
        state,
        server,
    }
}

/// tokengate's estimate of a request's prompt, images at the model's worst case.
pub fn estimated_prompt(body: &Value, endpoint: tokengate::proxy::Endpoint) -> i64 {
    let bytes = body.to_string();
    let parsed = tokengate::proxy::body::parse(bytes.as_bytes(), endpoint).unwrap();
    let model = body["model"].as_str().unwrap();
    parsed.prompt_tokens + parsed.images * tokengate::domain::media::image_worst_case(model)
}

pub fn chat_body(model: &str, content: &str, stream: bool, max_tokens: Option<i64>) -> Value {
    let mut body = json!({"model": model, "messages": [{"role": "user", "content": content}], "stream": stream});
    if let Some(m) = max_tokens {
        body["max_tokens"] = json!(m);
    }
    body
}

impl TestApp {
    /// The application's clock.
    pub fn now(&self) -> chrono::DateTime<Utc> {
        Clock::now(&*self.clock)
    }

    pub fn set_clock(&self, to: chrono::DateTime<Utc>) {
        self.clock.set(to);
    }

    pub fn advance_clock(&self, by: chrono::Duration) {
        self.clock.set(self.now() + by);
    }

    pub fn post(&self, path: &str) -> reqwest::RequestBuilder {
        self.client
            .post(format!("{}{}", self.address, path))
            .bearer_auth(CLIENT_KEY)
            .header("content-type", "application/json")
    }

    /// The Prometheus text of `/metrics`, once the settlements submitted are attempted.
    pub async fn metrics(&self) -> String {
        self.settled();
        self.client
            .get(format!("{}/metrics", self.address))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    }

    /// A chat request as LibreChat sends it, for user `user`.
    pub async fn chat_as(&self, user: &str, body: &Value) -> reqwest::Response {
        self.post("/v1/chat/completions")
            .header("x-librechat-user-id", user)
            .body(body.to_string())
            .send()
            .await
            .unwrap()
    }

    pub async fn chat(&self, body: &Value) -> reqwest::Response {
        self.chat_as(USER, body).await
    }

    pub fn user_id(&self, user: &str) -> i64 {
        self.ledger()
            .find_user(&parse_user_ref(user))
            .unwrap()
            .expect("user not provisioned")
    }

    /// Waits (bounded) until the settlements of the answers given so far are written
    /// or gone to retry: an answer goes out before its settlement is written
    /// (`tokengate::proxy::settler`).
    pub fn settled(&self) {
        assert!(
            self.state
                .settler
                .attempted_blocking(Duration::from_secs(20)),
            "settlements still unwritten after 20 s"
        );
    }

    /// The ledger, once every settlement submitted so far has been attempted.
    pub fn ledger(&self) -> &Ledger {
        self.settled();
        &self.raw_ledger
    }

    pub fn summary(&self, user: &str) -> UserSummary {
        self.ledger().user_summary(self.user_id(user)).unwrap()
    }

    /// Total charged to a user over all usage records.
    pub fn charged(&self, user: &str) -> i64 {
        self.ledger()
            .usage_records(self.user_id(user))
            .unwrap()
            .iter()
            .map(|r| r.charged)
            .sum()
    }

    /// The ledger invariant: stored balance equals the sum of the ledger, and `held`
    /// equals the holds in flight.
    pub fn assert_invariant(&self, user: &str) -> InvariantReport {
        let report = self.ledger().check_invariant(self.user_id(user)).unwrap();
        assert!(report.holds(), "ledger invariant broken: {report:?}");
        report
    }

    /// Makes new users start with exactly `allowance` tokens.
    pub fn default_plan(&self, allowance: i64) {
        self.ledger()
            .create_plan(
                &plan_spec(&format!("Teste {allowance}"), allowance),
                true,
                &Actor::Cli,
            )
            .unwrap();
    }

    /// Waits (bounded) until the user has no hold in flight: settlement after a client
    /// disconnect happens in the background.
    pub async fn wait_for_no_holds(&self, user: &str) {
        let id = self.user_id(user);
        wait_until(Duration::from_secs(20), || {
            let ledger = self.ledger().clone();
            async move { ledger.holds().unwrap().iter().all(|h| h.user_id != id) }
        })
        .await;
    }
}

/// Waits (bounded) until no hold is in flight in the database: another process's
/// answers go out before their settlements are written.
pub async fn no_holds_left(ledger: &Ledger) {
    wait_until(Duration::from_secs(20), || {
        let empty = ledger.holds().unwrap().is_empty();
        async move { empty }
    })
    .await;
}

/// Polls `check` until it is true or `limit` passes (then fails the test). Waits on a
/// condition, never a fixed time.
pub async fn wait_until<F, Fut>(limit: Duration, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + limit;
    let mut pause = Duration::from_millis(5);
    loop {
        if check().await {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "condition not met within {limit:?}"
        );
        actix_web::rt::time::sleep(pause).await;
        pause = (pause * 2).min(Duration::from_millis(200));
    }
}

/// A port for a server a test starts in another process (or binds later).
///
/// Chosen below the kernel's ephemeral range, so no outgoing connection of another
/// test can take it before the server binds it (a port from `bind(0)` can be handed
/// to any `connect` once released). A lock file, held until this test process ends,
/// keeps the tests that run in parallel from choosing the same one.
pub fn free_port() -> u16 {
    static HELD: std::sync::Mutex<Vec<std::fs::File>> = std::sync::Mutex::new(Vec::new());
    let dir = std::env::temp_dir().join("tokengate-test-ports");
    std::fs::create_dir_all(&dir).unwrap();
    for _ in 0..1000 {
        let port = 20_000 + (uuid::Uuid::new_v4().as_u128() % 12_000) as u16;
        let file = std::fs::File::create(dir.join(port.to_string())).unwrap();
        if file.try_lock().is_err() {
            continue;
        }
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            HELD.lock().unwrap().push(file);
            return port;
        }
    }
    panic!("no free port between 20000 and 32000");
}

/// A tokengate process that is killed when dropped, so a test that fails halfway
/// leaves no server running. Its log goes to a file that a failing test prints.
pub struct TokengateProcess {
    child: std::process::Child,
    log: Option<tempfile::NamedTempFile>,
}

impl TokengateProcess {
    /// A process whose output the caller arranged (no log kept).
    pub fn adopt(child: std::process::Child) -> Self {
        Self { child, log: None }
    }

    /// What the process logged so far, its last 8 KiB.
    pub fn log_tail(&self) -> String {
        let Some(log) = &self.log else {
            return "(no log kept)".into();
        };
        let text = std::fs::read(log.path()).unwrap_or_default();
        let start = text.len().saturating_sub(8 * 1024);
        String::from_utf8_lossy(&text[start..]).into_owned()
    }
}

impl std::ops::Deref for TokengateProcess {
    type Target = std::process::Child;
    fn deref(&self) -> &Self::Target {
        &self.child
    }
}

impl std::ops::DerefMut for TokengateProcess {
    fn deref_mut(&mut self) -> &mut Self::Target {
        &mut self.child
    }
}

impl Drop for TokengateProcess {
    fn drop(&mut self) {
        // Already gone when the test stopped or killed it: nothing to do then.
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() && self.log.is_some() {
            eprintln!(
                "--- log of tokengate process {} ---\n{}",
                self.child.id(),
                self.log_tail()
            );
        }
    }
}

/// The tokengate binary on 127.0.0.1:`port` with the test client key, for tests that
/// kill, stop or restart the process; `env` adds or overrides variables.
pub fn tokengate_process(
    port: u16,
    db_url: &str,
    upstream: &str,
    env: &[(&str, String)],
) -> TokengateProcess {
    process_of(env!("CARGO_BIN_EXE_tokengate"), port, db_url, upstream, env)
}

/// `tokengate_process` of another build of tokengate (the previous release's).
pub fn process_of(
    binary: &str,
    port: u16,
    db_url: &str,
    upstream: &str,
    env: &[(&str, String)],
) -> TokengateProcess {
    let mut cmd = std::process::Command::new(binary);
    cmd.env("TOKENGATE_LISTEN", format!("127.0.0.1:{port}"))
        .env("TOKENGATE_DATABASE_URL", db_url)
        .env("TOKENGATE_UPSTREAM_URL", upstream)
        .env("TOKENGATE_CLIENT_KEYS", CLIENT_KEY)
        .env("TOKENGATE_ADMIN_PASSWORD", "test-admin-password")
        .env("NO_COLOR", "1");
    let (k, v) = test_now_env();
    cmd.env(k, v);
    cmd.env("TOKENGATE_DATA_DIR", process_data_dir(db_url));
    for (k, v) in env {
        cmd.env(k, v);
    }
    let log = tempfile::NamedTempFile::new().unwrap();
    // Appending, so the two streams do not write over each other.
    let append = || {
        std::fs::OpenOptions::new()
            .append(true)
            .open(log.path())
            .unwrap()
    };
    let child = cmd.stdout(append()).stderr(append()).spawn().unwrap();
    TokengateProcess {
        child,
        log: Some(log),
    }
}

/// `TOKENGATE_DATA_DIR` of the processes on `db_url` (unless a test names another): a
/// folder of the database's own, the same across the restarts of a test.
pub fn process_data_dir(db_url: &str) -> std::path::PathBuf {
    let digest = <sha2::Sha256 as sha2::Digest>::digest(db_url.as_bytes());
    std::env::temp_dir().join(format!("tokengate-test-{}", hex::encode(&digest[..8])))
}

/// A chat sent as `user` to the tokengate process at `base`.
pub async fn chat_process(
    client: &reqwest::Client,
    base: &str,
    user: &str,
    body: &Value,
) -> reqwest::Response {
    client
        .post(format!("{base}/v1/chat/completions"))
        .bearer_auth(CLIENT_KEY)
        .header("x-librechat-user-id", user)
        .header("content-type", "application/json")
        .body(body.to_string())
        .send()
        .await
        .unwrap()
}

/// Waits until the tokengate process at `base` is ready (its database reachable).
pub async fn wait_ready(client: &reqwest::Client, base: &str) {
    wait_until(Duration::from_secs(30), || async {
        client
            .get(format!("{base}/readyz"))
            .send()
            .await
            .is_ok_and(|r| r.status() == 200)
    })
    .await;
}

/// A ledger on the database of a separately running tokengate, to read its books.
pub fn observer_ledger(db_url: &str, upstream: &str) -> tokengate::ledger::Ledger {
    let config = config_for(db_url, upstream, &[]);
    tokengate::ledger::Ledger::new(
        tokengate::db::Database::new(&config.database_url, 2),
        // The processes of a test run on its clock (`test_now_env`): were the
        // observer on the calendar's, it would roll their users into another cycle.
        std::sync::Arc::new(ManualClock::new(test_start())),
        config.timezone,
        "observer".into(),
        config.hold_max_age,
    )
}

/// The database stalling for tokengate's settlements, from another connection:
/// SQLite's write lock held (a `BEGIN IMMEDIATE` left open), or on PostgreSQL the
/// usage records locked against inserts. Reads go on. Released when dropped.
pub struct SettlementStall {
    _conn: tokengate::db::AnyConnection,
}

impl SettlementStall {
    pub fn take(db_url: &str) -> Self {
        use diesel::connection::SimpleConnection;
        let mut conn = match db_url.strip_prefix("sqlite://") {
            Some(path) => tokengate::db::AnyConnection::Sqlite(
                diesel::SqliteConnection::establish(path).unwrap(),
            ),
            None => tokengate::db::AnyConnection::Postgresql(
                diesel::PgConnection::establish(db_url).unwrap(),
            ),
        };
        let lock = match conn {
            tokengate::db::AnyConnection::Sqlite(_) => "BEGIN IMMEDIATE",
            tokengate::db::AnyConnection::Postgresql(_) => {
                "BEGIN; LOCK TABLE usage_records IN SHARE ROW EXCLUSIVE MODE"
            }
        };
        conn.batch_execute(lock).unwrap();
        Self { _conn: conn }
    }
}

/// A plan of `allowance` tokens a month, for every model.
pub fn plan_spec(name: &str, allowance: i64) -> tokengate::domain::PlanSpec {
    tokengate::domain::PlanSpec {
        name: tokengate::domain::PlanName::parse(name).unwrap(),
        monthly_allowance: tokengate::domain::plan::Allowance::new(allowance).unwrap(),
        sides: Default::default(),
        overage: None,
        models: tokengate::domain::PlanModels::All,
        limits: tokengate::domain::RequestLimits::default(),
        monthly_price: None,
        roles: Default::default(),
    }
}

/// Makes a distributor as `tokengate distributors create` does, with `key` stored
/// for it (a key that may not name distributors).
pub fn make_distributor(
    ledger: &Ledger,
    change: tokengate::ledger::distributors::DistributorChange,
    key: &str,
) -> tokengate::domain::DistributorId {
    let id = ledger.create_distributor(&change, &Actor::Cli).unwrap();
    let name = change.name.as_ref().expect("a distributor has a name");
    store_client_key(ledger, Some(name.as_str()), key, false);
    tokengate::domain::DistributorId::from_db(id)
}

/// A distributor named `name`, with nothing else set, and `key` stored for it.
pub fn named_distributor(
    ledger: &Ledger,
    name: &str,
    key: &str,
) -> tokengate::domain::DistributorId {
    let change = tokengate::ledger::distributors::DistributorChange {
        name: tokengate::domain::DistributorName::parse(name),
        ..Default::default()
    };
    make_distributor(ledger, change, key)
}

/// Stores `key` for a distributor (the install's with `None`), as `tokengate
/// distributors add-key` does.
pub fn store_client_key(
    ledger: &Ledger,
    distributor: Option<&str>,
    key: &str,
    names_distributors: bool,
) {
    let new = tokengate::ledger::distributors::NewKey {
        digest_hex: hex::encode(tokengate::proxy::auth::ClientKeys::digest(key)),
        label: key.chars().take(11).collect(),
        names_distributors,
    };
    ledger
        .add_client_key(distributor, &new, &Actor::Cli)
        .unwrap();
}

/// Adds an admin with `crate::admin::PASSWORD_FOR_TESTS`: a distributor's, or a
/// global one with `None`.
pub fn add_admin_of(
    ledger: &Ledger,
    email: &str,
    distributor: Option<tokengate::domain::DistributorId>,
) {
    tokengate::bootstrap::add_admin(
        ledger.db(),
        email,
        crate::admin::PASSWORD_FOR_TESTS,
        distributor.map(|d| d.get()),
        ledger.now().naive_utc(),
    )
    .unwrap();
}
