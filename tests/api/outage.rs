//! The database going away under traffic: fail closed, recover by itself, lose no
//! settlement that was acknowledged.

use crate::helpers::*;
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;
use tokengate::ledger::parse_user_ref;

/// A PostgreSQL server of the test's own, so stopping it disturbs no other test.
pub struct OwnPostgres {
    bin: PathBuf,
    data: PathBuf,
    port: u16,
    _dir: tempfile::TempDir,
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| o.stdout.trim_ascii() == b"0")
}

fn as_postgres(cmd: &Path) -> Command {
    // initdb and postgres refuse to run as root.
    if is_root() {
        let mut c = Command::new("runuser");
        c.args(["-u", "postgres", "--"]).arg(cmd);
        c
    } else {
        Command::new(cmd)
    }
}

impl OwnPostgres {
    pub fn start() -> Self {
        let bin = PathBuf::from(std::env::var("TOKENGATE_TEST_PG_BIN").expect(
            "TOKENGATE_TEST_PG_BIN is not set: run the suite with scripts/test.sh, which finds PostgreSQL's binaries",
        ));
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        std::fs::create_dir(&data).unwrap();
        if is_root() {
            let owned = Command::new("chown")
                .args(["-R", "postgres"])
                .arg(dir.path())
                .status()
                .unwrap();
            assert!(owned.success());
        }
        let status = as_postgres(&bin.join("initdb"))
            .args([
                "-U",
                "postgres",
                "--auth=trust",
                "-E",
                "UTF8",
                "--no-locale",
                "-D",
            ])
            .arg(&data)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .unwrap();
        assert!(status.success(), "initdb failed");
        let pg = Self {
            bin,
            data,
            port: free_port(),
            _dir: dir,
        };
        pg.up();
        pg
    }

    pub fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }

    fn ctl(&self, args: &[&str]) {
        let status = as_postgres(&self.bin.join("pg_ctl"))
            .arg("-D")
            .arg(&self.data)
            .args(args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .unwrap();
        assert!(status.success(), "pg_ctl {args:?} failed");
    }

    pub fn up(&self) {
        let opts = format!(
            "-p {} -k {} -c listen_addresses=127.0.0.1",
            self.port,
            self.data.display()
        );
        self.ctl(&["-w", "-o", &opts, "-l", "/dev/null", "start"]);
    }

    pub fn down(&self) {
        self.ctl(&["-w", "-m", "fast", "stop"]);
    }
}

impl Drop for OwnPostgres {
    fn drop(&mut self) {
        let _ = as_postgres(&self.bin.join("pg_ctl"))
            .arg("-D")
            .arg(&self.data)
            .args(["-m", "immediate", "stop"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

#[actix_web::test]
async fn postgres_down_fails_closed_and_recovers_without_losing_a_settlement() {
    let pg = tokio::task::spawn_blocking(OwnPostgres::start)
        .await
        .unwrap();
    let fake = crate::fake_provider::FakeProvider::start();
    let port = free_port();
    let mut child = tokengate_process(port, &pg.url(), &fake.base_url(), &[]);
    let client = reqwest::Client::new();
    let base = format!("http://127.0.0.1:{port}");
    // A short answer, and a long one (about 1.4 s) that is still streaming when the
    // database goes away.
    let short = chat_body("slow", "olá", true, Some(10)).to_string();
    let long = chat_body("slow", "olá", true, Some(60)).to_string();
    let send = |body: &String| {
        client
            .post(format!("{base}/v1/chat/completions"))
            .bearer_auth(CLIENT_KEY)
            .header("x-librechat-user-id", USER)
            .body(body.clone())
            .send()
    };
    let chat = || send(&short);
    wait_ready(&client, &base).await;

    // Acknowledged before the outage.
    let mut acknowledged = 0;
    for _ in 0..3 {
        let res = chat().await.unwrap();
        assert_eq!(res.status(), 200);
        res.bytes().await.unwrap();
        acknowledged += 1;
    }
    // In flight when the database goes away: their settlement has to wait for it.
    let mut in_flight = Vec::new();
    let mut in_flight_ids = Vec::new();
    for _ in 0..3 {
        let mut res = send(&long).await.unwrap();
        assert_eq!(res.status(), 200);
        in_flight_ids.push(res.headers()["x-request-id"].to_str().unwrap().to_owned());
        let first = res.chunk().await.unwrap().unwrap_or_default();
        in_flight.push((res, first.to_vec()));
    }
    let pg = tokio::task::spawn_blocking(move || {
        pg.down();
        pg
    })
    .await
    .unwrap();

    // Fail closed: no chat reaches upstream without a reservation.
    let upstream_before = fake.request_count();
    let res = chat().await.unwrap();
    assert_eq!(res.status(), 503);
    let err: Value = res.json().await.unwrap();
    assert_eq!(err["error"]["code"], "storage_unavailable");
    assert!(
        err["error"]["message"]
            .as_str()
            .unwrap_or_default()
            .starts_with("O controle de uso está fora do ar agora"),
        "{err}"
    );
    assert_eq!(fake.request_count(), upstream_before);

    // The streams that were in flight still reach their end for the user.
    for (mut res, mut received) in in_flight {
        while let Some(chunk) = res.chunk().await.unwrap() {
            received.extend_from_slice(&chunk);
        }
        assert!(received.ends_with(b"data: [DONE]\n\n"));
    }

    let pg = tokio::task::spawn_blocking(move || {
        pg.up();
        pg
    })
    .await
    .unwrap();

    // Recovers by itself.
    wait_until(Duration::from_secs(30), || async {
        match chat().await {
            Ok(res) if res.status() == 200 => res.bytes().await.is_ok(),
            _ => false,
        }
    })
    .await;
    acknowledged += 1;
    let short_cost =
        crate::fake_provider::prompt_tokens_of(&serde_json::from_str(&short).unwrap()) + 10;
    // The fake provider stops at its natural length, 40 tokens, below the 60 asked.
    let long_cost = short_cost - 10 + crate::fake_provider::NATURAL_COMPLETION;

    // Every acknowledged request is charged once, including those whose settlement
    // waited for the database; nothing stays held.
    let ledger = observer_ledger(&pg.url(), &fake.base_url());
    let user = ledger.find_user(&parse_user_ref(USER)).unwrap().unwrap();
    let completed = || {
        ledger
            .usage_records(user)
            .unwrap()
            .iter()
            .filter(|r| r.outcome == "completed")
            .count()
    };
    wait_until(Duration::from_secs(60), || {
        std::future::ready(completed() == acknowledged + 3 && ledger.holds().unwrap().is_empty())
    })
    .await;
    assert_eq!(
        ledger.user_summary(user).unwrap().used_this_cycle,
        acknowledged as i64 * short_cost + 3 * long_cost
    );
    // The long streams ended while the database was down: their settlements waited
    // and were written, in full, once it came back.
    let records = ledger.usage_records(user).unwrap();
    for id in &in_flight_ids {
        let r = records.iter().find(|r| &r.request_id == id).unwrap();
        assert_eq!((r.outcome.as_str(), r.charged), ("completed", long_cost));
    }
    assert!(ledger.check_invariant(user).unwrap().holds());
    child.kill().unwrap();
    child.wait().unwrap();
    drop(pg);
}

/// Settlements that cannot be written are kept on disk, not in memory: with
/// PostgreSQL stopped, answers that end are spooled; tokengate is then killed
/// (`kill -9`) and started again while the database is still down: it waits for it,
/// writes the spooled settlements before it releases the holds of the run before,
/// and every answered request is charged once. Before the spool, the restart
/// released those holds uncharged.
#[actix_web::test]
async fn a_restart_during_an_outage_loses_no_settlement() {
    let pg = tokio::task::spawn_blocking(OwnPostgres::start)
        .await
        .unwrap();
    let fake = crate::fake_provider::FakeProvider::start();
    let port = free_port();
    let env = [("TOKENGATE_INSTANCE_ID", "spool-test".to_owned())];
    let mut first = tokengate_process(port, &pg.url(), &fake.base_url(), &env);
    let client = reqwest::Client::new();
    let base = format!("http://127.0.0.1:{port}");
    wait_ready(&client, &base).await;

    let short = chat_body("fake-model", "olá", true, Some(10));
    let long = chat_body("slow", "olá", true, Some(60));
    for _ in 0..3 {
        let res = chat_process(&client, &base, USER, &short).await;
        assert_eq!(res.status(), 200);
        res.bytes().await.unwrap();
    }
    let ledger = observer_ledger(&pg.url(), &fake.base_url());
    no_holds_left(&ledger).await;
    let mut in_flight = Vec::new();
    for _ in 0..4 {
        let mut res = chat_process(&client, &base, USER, &long).await;
        assert_eq!(res.status(), 200);
        let first = res.chunk().await.unwrap().unwrap_or_default();
        in_flight.push((res, first.to_vec()));
    }
    let pg = tokio::task::spawn_blocking(move || {
        pg.down();
        pg
    })
    .await
    .unwrap();
    for (mut res, mut received) in in_flight {
        while let Some(chunk) = res.chunk().await.unwrap() {
            received.extend_from_slice(&chunk);
        }
        assert!(received.ends_with(b"data: [DONE]\n\n"));
    }
    // The four answers are out; their settlements wait in the spool.
    wait_until(Duration::from_secs(20), || async {
        let metrics = client.get(format!("{base}/metrics")).send().await;
        match metrics {
            Ok(m) => m
                .text()
                .await
                .unwrap_or_default()
                .contains("tokengate_settlements_spooled 4"),
            Err(_) => false,
        }
    })
    .await;
    first.kill().unwrap();
    first.wait().unwrap();

    // Started again while the database is still down: it waits for it.
    let mut second = tokengate_process(port, &pg.url(), &fake.base_url(), &env);
    let pg = tokio::task::spawn_blocking(move || {
        pg.up();
        pg
    })
    .await
    .unwrap();
    wait_ready(&client, &base).await;

    // A new observer: the old one's connections died with the server.
    let ledger = observer_ledger(&pg.url(), &fake.base_url());
    let user = ledger.find_user(&parse_user_ref(USER)).unwrap().unwrap();
    let records = ledger.usage_records(user).unwrap();
    let count = |outcome: &str| records.iter().filter(|r| r.outcome == outcome).count();
    assert_eq!(
        (count("completed"), count("abandoned")),
        (7, 0),
        "{records:?}"
    );
    let cost =
        |body: &Value, completion: i64| crate::fake_provider::prompt_tokens_of(body) + completion;
    let s = ledger.user_summary(user).unwrap();
    assert_eq!(
        (s.used_this_cycle, s.held),
        (
            3 * cost(&short, 10) + 4 * cost(&long, crate::fake_provider::NATURAL_COMPLETION),
            0
        )
    );
    assert!(ledger.check_invariant(user).unwrap().holds());
    let usage_entries = ledger
        .ledger_entries(user)
        .unwrap()
        .into_iter()
        .filter(|e| e.kind == "usage")
        .count();
    assert_eq!(usage_entries, 7, "each charged once");
    second.kill().unwrap();
    second.wait().unwrap();
    drop(pg);
}

/// A bug that panics on the settlement thread must not stop settlements. The thread
/// used to end there, and from then on every answer went uncharged (its hold
/// released by the sweeper): free service until a restart.
#[actix_web::test]
async fn a_panic_while_settling_loses_neither_that_charge_nor_later_ones() {
    let app = spawn_app(TestOptions {
        settlement_panics_once: true,
        ..Default::default()
    })
    .await;
    let body = chat_body("fake-model", "Qual é a capital do Brasil?", false, Some(25));
    let mut expected = 0;
    for _ in 0..2 {
        let res = app.chat(&body).await;
        assert_eq!(res.status(), 200);
        let json: Value = res.json().await.unwrap();
        let usage = &json["usage"];
        expected +=
            usage["prompt_tokens"].as_i64().unwrap() + usage["completion_tokens"].as_i64().unwrap();
    }

    let s = app.summary(USER);
    assert_eq!(s.used_this_cycle, expected);
    assert_eq!(s.held, 0);
    assert_eq!(app.charged(USER), expected);
    assert_eq!(
        app.ledger().usage_records(app.user_id(USER)).unwrap().len(),
        2
    );
    app.assert_invariant(USER);
}
