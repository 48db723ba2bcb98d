//! Replicas: three tokengate processes started at the same moment on one fresh
//! database (the pass's backend), then concurrent load on the same users through all
//! three. Migrations run once, nobody overspends, every settlement is written once.

use crate::helpers::*;
use futures_util::future::join_all;
use std::collections::HashSet;
use tokengate::ledger::{Actor, parse_user_ref};

const REPLICAS: usize = 3;
const USERS: [&str; 3] = ["replica-user-a", "replica-user-b", "replica-user-c"];
const BALANCE: i64 = 300;
const REQUESTS: usize = 240;

#[actix_web::test]
async fn three_processes_started_together_migrate_once_and_never_overspend() {
    let fake = crate::fake_provider::FakeProvider::start();
    let db = TestDb::new();
    let ports: Vec<u16> = (0..REPLICAS).map(|_| free_port()).collect();
    // All three start on an empty database at once and race to migrate it.
    let mut children: Vec<_> = ports
        .iter()
        .enumerate()
        .map(|(i, port)| {
            let id = [("TOKENGATE_INSTANCE_ID", format!("replica-{i}"))];
            tokengate_process(*port, &db.url, &fake.base_url(), &id)
        })
        .collect();
    let client = reqwest::Client::new();
    let bases: Vec<String> = ports
        .iter()
        .map(|p| format!("http://127.0.0.1:{p}"))
        .collect();
    for base in &bases {
        wait_ready(&client, base).await;
    }
    for child in &mut children {
        assert!(child.try_wait().unwrap().is_none(), "a replica exited");
    }
    let ledger = observer_ledger(&db.url, &fake.base_url());
    ledger
        .create_plan(
            &crate::helpers::plan_spec("Réplicas", BALANCE),
            true,
            &Actor::Cli,
        )
        .unwrap();

    // "um dois três": the provider reports 10 prompt tokens, so a request costs 30
    // and each balance pays for about 10; 80 requests per user, spread over all
    // replicas, try to spend it many times over.
    let body = chat_body("fake-model", "um dois três", false, Some(20));
    let statuses = join_all((0..REQUESTS).map(|i| {
        let (client, body) = (client.clone(), body.clone());
        let base = bases[i % REPLICAS].clone();
        let user = USERS[i % USERS.len()];
        async move {
            let res = chat_process(&client, &base, user, &body).await;
            (user, res.status().as_u16())
        }
    }))
    .await;
    assert!(
        statuses.iter().all(|(_, s)| *s == 200 || *s == 429),
        "only 200s and 429s expected: {statuses:?}"
    );
    let served = statuses.iter().filter(|(_, s)| *s == 200).count();
    assert_eq!(fake.request_count(), served, "forwarded = served");
    no_holds_left(&ledger).await;

    let mut request_ids = HashSet::new();
    for user in USERS {
        let ok = statuses
            .iter()
            .filter(|(u, s)| *u == user && *s == 200)
            .count();
        let id = ledger.find_user(&parse_user_ref(user)).unwrap().unwrap();
        let records = ledger.usage_records(id).unwrap();
        assert_eq!(records.len(), ok, "{user}: one record per served request");
        request_ids.extend(records.iter().map(|r| r.request_id.clone()));
        let charged: i64 = records.iter().map(|r| r.charged).sum();
        let summary = ledger.user_summary(id).unwrap();
        // The estimate of these 3 words is at least the 10 tokens reported, so the
        // reservations alone keep the charge within the balance.
        assert!(
            charged <= BALANCE,
            "{user} overspent: {charged} of {BALANCE}"
        );
        assert!(ok >= 8, "{user}: about 10 requests should fit, {ok} did");
        assert_eq!(summary.used_this_cycle, charged);
        assert_eq!(summary.held, 0);
        assert!(ledger.check_invariant(id).unwrap().holds());
        let usage_entries = ledger
            .ledger_entries(id)
            .unwrap()
            .into_iter()
            .filter(|e| e.kind == "usage")
            .count();
        assert_eq!(usage_entries, ok, "{user}: each settlement written once");
    }
    assert_eq!(request_ids.len(), served, "request ids are unique");
    for child in &mut children {
        assert!(child.try_wait().unwrap().is_none(), "a replica exited");
        child.kill().unwrap();
        child.wait().unwrap();
    }
}

/// `tokengate migrate` three times at once on a fresh database, ten times over: each
/// run succeeds, exactly one applies the migrations, the others find them applied.
#[test]
fn migrations_started_at_the_same_moment_run_once() {
    for round in 0..10 {
        let db = TestDb::new();
        let runs: Vec<_> = (0..REPLICAS)
            .map(|_| {
                std::process::Command::new(env!("CARGO_BIN_EXE_tokengate"))
                    .arg("migrate")
                    .env("TOKENGATE_DATABASE_URL", &db.url)
                    .stdout(std::process::Stdio::piped())
                    .stderr(std::process::Stdio::piped())
                    .spawn()
                    .unwrap()
            })
            .collect();
        let outputs: Vec<String> = runs
            .into_iter()
            .map(|child| {
                let out = child.wait_with_output().unwrap();
                let text = format!(
                    "{}{}",
                    String::from_utf8_lossy(&out.stdout),
                    String::from_utf8_lossy(&out.stderr)
                );
                assert!(out.status.success(), "round {round}: {text}");
                text
            })
            .collect();
        let all = std::fs::read_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/migrations/sqlite"))
            .unwrap()
            .count();
        let applied = outputs
            .iter()
            .filter(|o| o.contains(&format!("Applied {all} migration(s)")))
            .count();
        let current = outputs.iter().filter(|o| o.contains("up to date")).count();
        assert_eq!((applied, current), (1, REPLICAS - 1), "{outputs:?}");
    }
}
