//! The disk under SQLite going wrong: full, or remounted read-only while tokengate
//! runs. Chat fails closed with 503 `storage_unavailable`, nothing is forwarded
//! without a reservation, what was answered is charged once, the file stays intact,
//! and service comes back by itself when the disk does.
//!
//! The disk is a small tmpfs mounted by the test, so the suite must run as root (as
//! CI and `scripts/test.sh` do); SQLite is used on both backends' passes.

use crate::helpers::*;
use diesel::{Connection, RunQueryDsl, sql_query};
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

/// A tmpfs of a few MiB, unmounted when dropped.
struct SmallDisk {
    dir: tempfile::TempDir,
}

impl SmallDisk {
    fn mount(mib: u32) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let size = format!("size={mib}m");
        let status = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &size, "tokengate-test"])
            .arg(dir.path())
            .status()
            .unwrap();
        assert!(
            status.success(),
            "cannot mount a tmpfs: the disk tests need root (scripts/test.sh runs as root in CI)"
        );
        Self { dir }
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    fn remount(&self, mode: &str) {
        let status = Command::new("mount")
            .args(["-o", &format!("remount,{mode}")])
            .arg(self.path())
            .status()
            .unwrap();
        assert!(status.success(), "remount {mode} failed");
    }

    /// Writes a file until the disk has no byte left.
    fn fill(&self) -> PathBuf {
        use std::io::Write;
        let path = self.path().join("filler");
        let mut f = std::fs::File::create(&path).unwrap();
        let block = vec![0u8; 64 * 1024];
        loop {
            match f.write(&block) {
                Ok(0) => break,
                Ok(_) => {}
                Err(e) if e.raw_os_error() == Some(28) => break, // ENOSPC
                Err(e) => panic!("filling the disk: {e}"),
            }
        }
        let _ = f.sync_all();
        path
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = Command::new("umount")
            .arg("-l")
            .arg(self.dir.path())
            .status();
    }
}

fn integrity_check(db: &Path) -> String {
    #[derive(diesel::QueryableByName)]
    struct Row {
        #[diesel(sql_type = diesel::sql_types::Text)]
        integrity_check: String,
    }
    let mut conn = diesel::SqliteConnection::establish(&db.display().to_string()).unwrap();
    let rows: Vec<Row> = sql_query("PRAGMA integrity_check").load(&mut conn).unwrap();
    rows.into_iter()
        .map(|r| r.integrity_check)
        .collect::<Vec<_>>()
        .join("; ")
}

/// `tokengate serve` on `db` must refuse to start, naming the file and the OS's
/// reason. Run off the test thread: the refusal takes r2d2's connection timeout.
async fn assert_start_refused(db: &Path, upstream: String) {
    let url = format!("sqlite://{}", db.display());
    let out = actix_web::rt::task::spawn_blocking(move || {
        Command::new(env!("CARGO_BIN_EXE_tokengate"))
            .arg("serve")
            .env("TOKENGATE_DATABASE_URL", url)
            .env("TOKENGATE_LISTEN", format!("127.0.0.1:{}", free_port()))
            .env("TOKENGATE_UPSTREAM_URL", upstream)
            .env("TOKENGATE_CLIENT_KEYS", CLIENT_KEY)
            .env("TOKENGATE_ADMIN_PASSWORD", "test-admin-password")
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(&format!("{} cannot be written", db.display())),
        "{stderr}"
    );
    assert!(stderr.contains("Read-only file system"), "{stderr}");
}

/// One small chat through the tokengate process at `base`.
async fn chat_at(client: &reqwest::Client, base: &str) -> u16 {
    let res = chat_process(client, base, USER, &small_chat()).await;
    res.status().as_u16()
}

fn small_chat() -> Value {
    chat_body("fake-model", "olá", false, Some(5))
}

/// What one chat costs, learned from one that succeeded.
fn cost_of_one(app: &TestApp) -> i64 {
    app.summary(USER).used_this_cycle
}

/// Sends chats until the storage refuses one; every answer must be a 200 or a clear
/// 503. Returns how many were answered 200.
async fn chat_until_refused(app: &TestApp, limit: usize) -> usize {
    let mut ok = 0;
    for _ in 0..limit {
        let res = app.chat(&small_chat()).await;
        let status = res.status().as_u16();
        let body: Value = res.json().await.unwrap();
        match status {
            200 => ok += 1,
            503 => {
                assert_eq!(body["error"]["code"], "storage_unavailable", "{body}");
                assert!(
                    body["error"]["message"]
                        .as_str()
                        .is_some_and(|m| !m.is_empty())
                );
                return ok;
            }
            other => panic!("a chat got {other}: {body}"),
        }
    }
    panic!("{limit} chats went through: the storage never refused one");
}

/// Waits until chat is served again, then until every hold is settled.
async fn recovered(app: &TestApp) -> usize {
    let answered = std::cell::Cell::new(0);
    wait_until(Duration::from_secs(30), || async {
        let ok = app.chat(&small_chat()).await.status() == 200;
        answered.set(answered.get() + usize::from(ok));
        ok
    })
    .await;
    wait_until(Duration::from_secs(30), || {
        let held = app.summary(USER).held;
        async move { held == 0 }
    })
    .await;
    answered.get()
}

/// The disk fills while a stream is running: new chats get 503 and never reach the
/// provider, the stream still delivers its whole answer, and its settlement, which
/// met the full disk, is written once the disk has room again.
#[actix_web::test]
async fn a_full_disk_fails_closed_and_loses_no_charge() {
    let disk = SmallDisk::mount(8);
    let db = disk.path().join("tokengate.db");
    let app = spawn_app_on(TestDb::sqlite_at(&db), TestOptions::default()).await;
    assert_eq!(app.chat(&small_chat()).await.status(), 200);
    let cost = cost_of_one(&app);
    assert!(cost > 0);
    let mut stream = app.chat(&chat_body("slow", "olá", true, None)).await;
    assert_eq!(stream.status(), 200);
    let mut received = stream.chunk().await.unwrap().unwrap().to_vec();

    let filler = disk.fill();
    let ok = 1 + chat_until_refused(&app, 5_000).await;
    let res = app.chat(&small_chat()).await;
    assert_eq!(res.status(), 503, "still full");
    // Refused requests never reached the provider: only the answered ones and the
    // stream did.
    assert_eq!(app.fake.request_count(), ok + 1);

    while let Some(chunk) = stream.chunk().await.expect("the stream must not be cut") {
        received.extend_from_slice(&chunk);
    }
    assert!(received.ends_with(b"data: [DONE]\n\n"));
    assert!(
        app.summary(USER).held > 0,
        "the stream's settlement cannot be written yet"
    );

    std::fs::remove_file(filler).unwrap();
    let ok = ok + recovered(&app).await;
    assert_eq!(app.fake.request_count(), ok + 1);
    // Each answered chat is charged once, the stream's late settlement included.
    let records = app.ledger().usage_records(app.user_id(USER)).unwrap();
    assert_eq!(records.len(), ok + 1, "one usage record per answered chat");
    let streamed: Vec<_> = records.iter().filter(|r| r.model == "slow").collect();
    assert_eq!(streamed.len(), 1);
    assert_eq!(
        (streamed[0].outcome.as_str(), streamed[0].completion_tokens),
        ("completed", crate::fake_provider::NATURAL_COMPLETION)
    );
    let used = app.summary(USER).used_this_cycle;
    assert_eq!(used, cost * ok as i64 + streamed[0].charged);
    assert_eq!(app.charged(USER), used);
    app.assert_invariant(USER);
    assert_eq!(integrity_check(&db), "ok");
}

/// A database whose disk is read-only when tokengate starts (a volume mounted `ro`,
/// say) stops the start with a message naming the file and the cause; once the disk
/// is writable again the same database serves, with its books intact.
///
/// (A tmpfs cannot be remounted read-only while files are open for writing, so the
/// disk turns read-only between two runs. Under a running process, SQLite's
/// "readonly database" error maps to 503 `storage_unavailable`, as a full disk does.)
#[actix_web::test]
async fn a_read_only_database_stops_the_start_clearly_and_loses_nothing() {
    let disk = SmallDisk::mount(16);
    let db = disk.path().join("tokengate.db");
    let url = format!("sqlite://{}", db.display());
    let fake = crate::fake_provider::FakeProvider::start();
    let client = reqwest::Client::new();
    let run = |port| tokengate_process(port, &url, &fake.base_url(), &[]);

    let port = free_port();
    let base = format!("http://127.0.0.1:{port}");
    let mut first = run(port);
    wait_ready(&client, &base).await;
    for _ in 0..3 {
        assert_eq!(chat_at(&client, &base).await, 200);
    }
    // Settled (an answer goes out before its settlement is written), then killed.
    no_holds_left(&observer_ledger(&url, &fake.base_url())).await;
    first.kill().unwrap();
    first.wait().unwrap();

    disk.remount("ro");
    assert_start_refused(&db, fake.base_url()).await;

    disk.remount("rw");
    assert_eq!(integrity_check(&db), "ok");
    let ledger = observer_ledger(&url, &fake.base_url());
    let user = ledger
        .find_user(&tokengate::ledger::parse_user_ref(USER))
        .unwrap()
        .unwrap();
    assert_eq!(ledger.usage_records(user).unwrap().len(), 3);
    assert!(ledger.check_invariant(user).unwrap().holds());
    drop(ledger);

    let port = free_port();
    let base = format!("http://127.0.0.1:{port}");
    let mut again = run(port);
    wait_ready(&client, &base).await;
    assert_eq!(chat_at(&client, &base).await, 200);
    again.kill().unwrap();
    again.wait().unwrap();
}

#[actix_web::test]
async fn starting_on_a_read_only_disk_is_a_clear_error() {
    let disk = SmallDisk::mount(4);
    disk.remount("ro");
    assert_start_refused(
        &disk.path().join("tokengate.db"),
        "http://127.0.0.1:9".into(),
    )
    .await;
}

/// SQLite's write-ahead log stays bounded under sustained load, and shrinks back
/// once the load drops to a few chats a second. A passive checkpoint never lets a busy log start over: 40 s
/// of small chats at saturation used to leave a 2.9 GB `-wal` beside a 123 MB
/// database, still 2.9 GB after 15 s idle. (SQLite on both backends' passes.)
#[actix_web::test]
async fn the_write_ahead_log_stays_bounded_under_sustained_load_and_shrinks_when_quiet() {
    const MIB: u64 = 1 << 20;
    let dir = tempfile::tempdir().unwrap();
    let db = TestDb::sqlite_at(&dir.path().join("tokengate.db"));
    let wal = dir.path().join("tokengate.db-wal");
    let fake = crate::fake_provider::FakeProvider::start();
    let port = free_port();
    let server = tokengate_process(port, &db.url, &fake.base_url(), &[]);
    let client = reqwest::Client::new();
    let base = format!("http://127.0.0.1:{port}");
    wait_ready(&client, &base).await;
    let wal_size = || std::fs::metadata(&wal).map_or(0, |m| m.len());
    // The settlements' journal, beside the spool: every answer is noted there.
    let journal_size = || {
        std::fs::read_dir(process_data_dir(&db.url).join("spool"))
            .into_iter()
            .flatten()
            .flatten()
            .filter(|e| e.path().extension().is_some_and(|x| x == "journal"))
            .map(|e| e.metadata().map_or(0, |m| m.len()))
            .sum::<u64>()
    };

    // Small chats back to back from 2,000 users, for 15 s, the log's and the
    // journal's sizes read after every answer.
    let until = std::time::Instant::now() + Duration::from_secs(15);
    let workers = (0..32).map(|w| {
        let (client, base) = (client.clone(), base.clone());
        let (wal_size, journal_size) = (&wal_size, &journal_size);
        async move {
            let (mut answered, mut largest, mut journal) = (0, 0, 0);
            while std::time::Instant::now() < until {
                let user = format!("wal-{}", (w * 131 + answered * 7) % 2_000);
                let res = chat_process(&client, &base, &user, &small_chat()).await;
                assert_eq!(res.status(), 200);
                res.bytes().await.unwrap();
                answered += 1;
                largest = largest.max(wal_size());
                journal = journal.max(journal_size());
            }
            (answered, largest, journal)
        }
    });
    let results = futures_util::future::join_all(workers).await;
    let answered: usize = results.iter().map(|r| r.0).sum();
    let largest = results.iter().map(|r| r.1).max().unwrap_or(0);
    let journal = results.iter().map(|r| r.2).max().unwrap_or(0);
    eprintln!(
        "{answered} chats; the log peaked at {} MiB, the journal at {} KiB",
        largest / MIB,
        journal / 1024
    );
    assert!(answered > 1_000, "not a sustained load: {answered} chats");
    assert!(
        largest <= 96 * MIB,
        "the log grew to {} MiB under load",
        largest / MIB
    );
    assert!(journal > 0, "no answer was noted in the journal");
    assert!(
        journal <= 640 * 1024,
        "the journal grew to {} KiB under load",
        journal / 1024
    );
    // Quiet, but not idle: a few users go on chatting (ten chats a second, and the
    // heartbeat). The log is back to a few MiB all the same.
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
    let stop = std::sync::Arc::new(AtomicBool::new(false));
    let sent = std::sync::Arc::new(AtomicUsize::new(0));
    let trickle = {
        let (client, base, stop, sent) = (client.clone(), base.clone(), stop.clone(), sent.clone());
        tokio::spawn(async move {
            let mut pace = tokio::time::interval(Duration::from_millis(100));
            while !stop.load(Ordering::Relaxed) {
                pace.tick().await;
                let user = format!("wal-{}", sent.load(Ordering::Relaxed) % 2_000);
                let res = chat_process(&client, &base, &user, &small_chat()).await;
                assert_eq!(res.status(), 200);
                res.bytes().await.unwrap();
                sent.fetch_add(1, Ordering::Relaxed);
            }
        })
    };
    // Small while the chats go on: seen after a few of them, not before the first.
    wait_until(Duration::from_secs(10), || {
        let (size, chats) = (wal_size(), sent.load(Ordering::Relaxed));
        async move { size <= 4 * MIB && chats >= 5 }
    })
    .await;
    stop.store(true, Ordering::Relaxed);
    trickle.await.unwrap();
    drop(server);
    assert_eq!(integrity_check(&dir.path().join("tokengate.db")), "ok");
}
