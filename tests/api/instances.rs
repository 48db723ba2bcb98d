//! Instances and the holds of their requests: who is alive is judged by the
//! database's clock, with a grace after an outage; a long generation keeps its hold;
//! two processes never share an instance id.

use crate::helpers::*;
use crate::outage::OwnPostgres;
use std::time::Duration;
use tokengate::ledger::parse_user_ref;

/// Fast heartbeats, so that a test sees many of them.
fn liveness_env() -> Vec<(&'static str, String)> {
    vec![
        ("TOKENGATE_HEARTBEAT_SECS", "0.1".into()),
        ("TOKENGATE_INSTANCE_TIMEOUT_SECS", "1".into()),
    ]
}

/// The sweeps an instance has done, from its `/metrics`.
async fn sweeps(client: &reqwest::Client, base: &str) -> u64 {
    let Ok(res) = client.get(format!("{base}/metrics")).send().await else {
        return 0;
    };
    let text = res.text().await.unwrap_or_default();
    text.lines()
        .find_map(|l| l.strip_prefix("tokengate_hold_sweeps_total "))
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or(0)
}

/// Reads a stream until `tokens` of the provider's "tok " pieces have come.
pub(crate) async fn read_tokens(res: &mut reqwest::Response, tokens: usize) -> Vec<u8> {
    let mut got = Vec::new();
    while String::from_utf8_lossy(&got).matches("tok ").count() < tokens {
        let chunk = res.chunk().await.unwrap().expect("stream ended early");
        got.extend_from_slice(&chunk);
    }
    got
}

/// A replica whose own clock runs two minutes ahead: it used to compare the other
/// instance's heartbeat with its own clock, find it two minutes old, and release
/// that instance's live holds uncharged. Heartbeats are now judged by the
/// database's clock.
#[actix_web::test]
async fn a_replica_with_a_clock_ahead_releases_no_live_hold() {
    let a = spawn_app(TestOptions {
        env: liveness_env(),
        ..Default::default()
    })
    .await;
    let b = spawn_replica_with(
        &a,
        TestOptions {
            env: liveness_env(),
            start: test_start() + chrono::Duration::minutes(2),
            ..Default::default()
        },
    )
    .await;
    let mut res = a.chat(&chat_body("trickle", "olá mundo", true, None)).await;
    assert_eq!(res.status(), 200);
    read_tokens(&mut res, 3).await;
    // B sweeps a few times, each more than its instance timeout after it started.
    let before = sweeps(&b.client, &b.address).await;
    wait_until(Duration::from_secs(20), || async {
        sweeps(&b.client, &b.address).await >= before + 3
    })
    .await;
    assert_eq!(
        a.ledger().holds().unwrap().len(),
        1,
        "A's live hold was released"
    );
    drop(res);
    a.wait_for_no_holds(USER).await;
    let records = a.ledger().usage_records(a.user_id(USER)).unwrap();
    assert_eq!(records[0].outcome, "client_disconnected");
    assert!(records[0].charged > 0);
    a.assert_invariant(USER);
}

/// PostgreSQL down for longer than the instance timeout, while a generation runs on
/// instance A. When it comes back, every heartbeat is old, A's included: B must give
/// A time to beat again before judging it dead. It used to release A's live hold at
/// its first sweep, and A's answer went uncharged.
#[actix_web::test]
async fn after_an_outage_no_replica_releases_the_holds_of_a_live_one() {
    let pg = tokio::task::spawn_blocking(OwnPostgres::start)
        .await
        .unwrap();
    let fake = crate::fake_provider::FakeProvider::start();
    let client = reqwest::Client::new();
    let (port_a, port_b) = (free_port(), free_port());
    let (base_a, base_b) = (
        format!("http://127.0.0.1:{port_a}"),
        format!("http://127.0.0.1:{port_b}"),
    );
    // A beats seldom, B sweeps often: after the outage B looks many times before
    // A's first heartbeat. Both on the real clock, which heartbeats used to use.
    let env = |heartbeat: &str, id: &str| {
        vec![
            ("TOKENGATE_HEARTBEAT_SECS", heartbeat.to_owned()),
            ("TOKENGATE_INSTANCE_TIMEOUT_SECS", "4".to_owned()),
            ("TOKENGATE_INSTANCE_ID", id.to_owned()),
            ("TOKENGATE_TEST_NOW", String::new()),
        ]
    };
    let env_a = env("1", "outage-a");
    let mut env_b = env("0.1", "outage-b");
    env_b.push((
        "TOKENGATE_DATA_DIR",
        tempfile::tempdir().unwrap().keep().display().to_string(),
    ));
    let _a = tokengate_process(port_a, &pg.url(), &fake.base_url(), &env_a);
    let _b = tokengate_process(port_b, &pg.url(), &fake.base_url(), &env_b);
    wait_ready(&client, &base_a).await;
    wait_ready(&client, &base_b).await;

    let mut res = chat_process(
        &client,
        &base_a,
        USER,
        &chat_body("trickle", "olá", true, None),
    )
    .await;
    assert_eq!(res.status(), 200);
    read_tokens(&mut res, 3).await;
    let pg = tokio::task::spawn_blocking(move || {
        pg.down();
        pg
    })
    .await
    .unwrap();
    // Down for longer than the instance timeout (a token every 20 ms): the stream
    // goes on meanwhile.
    read_tokens(&mut res, 3 + 300).await;
    let pg = tokio::task::spawn_blocking(move || {
        pg.up();
        pg
    })
    .await
    .unwrap();
    let before = sweeps(&client, &base_b).await;
    wait_until(Duration::from_secs(30), || async {
        sweeps(&client, &base_b).await >= before + 5
    })
    .await;
    let ledger = observer_ledger(&pg.url(), &fake.base_url());
    assert_eq!(
        ledger.holds().unwrap().len(),
        1,
        "A's live hold was released"
    );
    drop(res);
    no_holds_left(&ledger).await;
    let user = ledger.find_user(&parse_user_ref(USER)).unwrap().unwrap();
    let records = ledger.usage_records(user).unwrap();
    assert_eq!(records.len(), 1);
    assert_eq!(records[0].outcome, "client_disconnected", "{records:?}");
    assert!(records[0].completion_tokens >= 300, "{records:?}");
    assert!(ledger.check_invariant(user).unwrap().holds());
    drop(pg);
}

/// A generation that runs longer than `TOKENGATE_HOLD_MAX_AGE_SECS` keeps its hold
/// while its stream is alive: it used to be released under the stream, and the
/// answer went uncharged.
#[actix_web::test]
async fn a_generation_longer_than_the_hold_age_keeps_its_hold() {
    let db = TestDb::new();
    let fake = crate::fake_provider::FakeProvider::start();
    let port = free_port();
    let mut env = liveness_env();
    env.push(("TOKENGATE_HOLD_MAX_AGE_SECS", "1".into()));
    // The real clock: hold ages are what this test is about.
    env.push(("TOKENGATE_TEST_NOW", String::new()));
    let _server = tokengate_process(port, &db.url, &fake.base_url(), &env);
    let client = reqwest::Client::new();
    let base = format!("http://127.0.0.1:{port}");
    wait_ready(&client, &base).await;
    let mut res = chat_process(
        &client,
        &base,
        USER,
        &chat_body("trickle", "olá", true, None),
    )
    .await;
    assert_eq!(res.status(), 200);
    // A token every 20 ms: 150 tokens is three times the hold's maximum age, with a
    // sweep every 100 ms.
    read_tokens(&mut res, 150).await;
    let ledger = observer_ledger(&db.url, &fake.base_url());
    assert_eq!(
        ledger.holds().unwrap().len(),
        1,
        "the hold was released under the stream"
    );
    drop(res);
    no_holds_left(&ledger).await;
    let user = ledger.find_user(&parse_user_ref(USER)).unwrap().unwrap();
    let records = ledger.usage_records(user).unwrap();
    assert_eq!(records[0].outcome, "client_disconnected", "{records:?}");
    assert!(records[0].completion_tokens >= 150, "{records:?}");
}

/// A second process started with the instance id of a live one (an overlapping
/// deploy, a scale-out with a fixed id) is refused at start, on the same host (its
/// lock) and from another one (its heartbeat); it used to release the first one's
/// live holds as its own. Without configuration, ids are unique.
#[actix_web::test]
async fn a_second_process_with_a_live_instance_id_is_refused() {
    let db = TestDb::new();
    let fake = crate::fake_provider::FakeProvider::start();
    let port = free_port();
    let mut env = liveness_env();
    env.push(("TOKENGATE_INSTANCE_ID", "tokengate-1".into()));
    let _first = tokengate_process(port, &db.url, &fake.base_url(), &env);
    let client = reqwest::Client::new();
    let base = format!("http://127.0.0.1:{port}");
    wait_ready(&client, &base).await;
    let body = chat_body("slow", "olá", true, Some(20));
    let mut res = chat_process(&client, &base, USER, &body).await;
    assert_eq!(res.status(), 200);
    let mut received = res.chunk().await.unwrap().unwrap().to_vec();

    let start_second = |data_dir: Option<&std::path::Path>| {
        let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_tokengate"));
        cmd.env("TOKENGATE_LISTEN", format!("127.0.0.1:{}", free_port()))
            .env("TOKENGATE_DATABASE_URL", &db.url)
            .env("TOKENGATE_UPSTREAM_URL", fake.base_url())
            .env("TOKENGATE_CLIENT_KEYS", CLIENT_KEY)
            .env("TOKENGATE_INSTANCE_ID", "tokengate-1")
            .env("TOKENGATE_HEARTBEAT_SECS", "0.1")
            .env("TOKENGATE_INSTANCE_TIMEOUT_SECS", "1")
            .env(test_now_env().0, test_now_env().1);
        match data_dir {
            Some(dir) => cmd.env("TOKENGATE_DATA_DIR", dir),
            // The first one's folder: as a second container on the same volume.
            None => cmd.env("TOKENGATE_DATA_DIR", process_data_dir(&db.url)),
        };
        let out = cmd.output().unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (ok, err) = start_second(None);
    assert!(!ok && err.contains("is running on this host"), "{err}");
    // Another host: another folder, so only the first one's heartbeat can tell.
    let elsewhere = tempfile::tempdir().unwrap();
    let (ok, err) = start_second(Some(elsewhere.path()));
    assert!(!ok && err.contains("is alive"), "{err}");

    // The first one's request was never touched: it ends and is charged in full.
    while let Some(chunk) = res.chunk().await.unwrap() {
        received.extend_from_slice(&chunk);
    }
    assert!(received.ends_with(b"data: [DONE]\n\n"));
    let ledger = observer_ledger(&db.url, &fake.base_url());
    no_holds_left(&ledger).await;
    let user = ledger.find_user(&parse_user_ref(USER)).unwrap().unwrap();
    let records = ledger.usage_records(user).unwrap();
    assert_eq!(records[0].outcome, "completed", "{records:?}");
    assert_eq!(
        records[0].charged,
        crate::fake_provider::prompt_tokens_of(&body) + 20
    );
}

/// A hold released while its request still ran (its instance was taken for dead: a
/// network partition), charged its prompt, then the answer's settlement arrives: the
/// rest is charged late, logged and counted in `/metrics`, never dropped. It used to
/// find no hold and be dropped as already settled: the answer went free.
#[actix_web::test]
async fn a_settlement_for_a_hold_released_under_it_is_charged_late_and_counted() {
    let app = spawn_app(TestOptions::default()).await;
    let mut res = app
        .chat(&chat_body("trickle", "olá mundo", true, None))
        .await;
    assert_eq!(res.status(), 200);
    read_tokens(&mut res, 5).await;
    // Another replica's sweep, which took this instance for dead.
    let released = app.ledger().sweep_stale_holds(Duration::ZERO).unwrap();
    assert_eq!(released, 1);
    let id = app.user_id(USER);
    assert_eq!(
        app.ledger().usage_records(id).unwrap()[0].outcome,
        "abandoned"
    );
    drop(res);
    wait_until(Duration::from_secs(20), || {
        let ledger = app.ledger().clone();
        async move { ledger.usage_records(id).unwrap()[0].outcome != "abandoned" }
    })
    .await;
    let records = app.ledger().usage_records(id).unwrap();
    assert_eq!(records.len(), 1);
    let r = &records[0];
    assert_eq!(r.outcome, "client_disconnected");
    assert!(r.charged > 0 && r.completion_tokens >= 5, "{r:?}");
    assert_eq!(app.summary(USER).used_this_cycle, r.charged);
    assert!(
        app.metrics()
            .await
            .contains("tokengate_settlements_late_total 1")
    );
    // Two entries: the prompt, charged when the hold was released, and the rest
    // when the settlement came; together what the request cost.
    let usage: Vec<i64> = app
        .ledger()
        .ledger_entries(id)
        .unwrap()
        .into_iter()
        .filter(|e| e.kind == "usage")
        .map(|e| -(e.delta_allowance + e.delta_credits))
        .collect();
    assert_eq!(usage.len(), 2, "{usage:?}");
    assert_eq!(usage.iter().sum::<i64>(), r.charged);
    app.assert_invariant(USER);
}

/// Two late settlements of one request at once (a retry from the spool while the
/// first attempt was still being written): charged once.
#[actix_web::test]
async fn a_late_settlement_written_twice_at_once_is_charged_once() {
    let app = spawn_app(TestOptions::default()).await;
    let mut res = app
        .chat(&chat_body("trickle", "olá mundo", true, None))
        .await;
    assert_eq!(res.status(), 200);
    read_tokens(&mut res, 3).await;
    let request_id = app.ledger().holds().unwrap()[0].request_id.clone();
    assert_eq!(app.ledger().sweep_stale_holds(Duration::ZERO).unwrap(), 1);
    let late = tokengate::ledger::Settlement {
        request_id,
        prompt_tokens: 10,
        completion_tokens: 90,
        charge: 100,
        output_charge: 90,
        estimated: false,
        outcome: tokengate::ledger::Outcome::Completed,
        status: 200,
        latency: Duration::from_secs(1),
        ttfb: None,
        can_carry_notice: false,
        conversation: None,
    };
    let ledger = app.ledger().clone();
    let results = futures_util::future::join_all((0..4).map(|_| ledger.settle(late.clone()))).await;
    let late_ones = results
        .iter()
        .filter(|r| matches!(r, Ok(tokengate::ledger::SettleResult::SettledLate { .. })))
        .count();
    assert_eq!(late_ones, 1, "{results:?}");
    drop(res);
    // The stream's own settlement arrives after: already settled.
    let id = app.user_id(USER);
    wait_until(Duration::from_secs(10), || {
        let ledger = app.ledger().clone();
        async move { ledger.usage_records(id).unwrap()[0].outcome == "completed" }
    })
    .await;
    assert_eq!(app.summary(USER).used_this_cycle, 100);
    app.assert_invariant(USER);
}

/// A process that finds its instance id claimed by another (it was silent long
/// enough to be taken for dead) stops, rather than run beside it under one id.
#[actix_web::test]
async fn a_process_whose_id_was_claimed_by_another_stops() {
    use diesel::prelude::*;
    let db = TestDb::new();
    let fake = crate::fake_provider::FakeProvider::start();
    let port = free_port();
    let mut env = liveness_env();
    env.push(("TOKENGATE_INSTANCE_ID", "claimed".into()));
    let mut server = tokengate_process(port, &db.url, &fake.base_url(), &env);
    let client = reqwest::Client::new();
    wait_ready(&client, &format!("http://127.0.0.1:{port}")).await;
    // Another run takes the row, as a process that found it dead would.
    let url = db.url.clone();
    tokio::task::spawn_blocking(move || {
        use tokengate::db::schema::instances;
        let set = diesel::update(instances::table.filter(instances::id.eq("claimed")))
            .set(instances::run_id.eq("another-run"));
        match url.strip_prefix("sqlite://") {
            Some(path) => set.execute(&mut diesel::SqliteConnection::establish(path).unwrap()),
            None => set.execute(&mut diesel::PgConnection::establish(&url).unwrap()),
        }
        .unwrap();
    })
    .await
    .unwrap();
    let mut exited = None;
    wait_until(Duration::from_secs(20), || {
        exited = server.try_wait().unwrap();
        std::future::ready(exited.is_some())
    })
    .await;
    assert!(exited.unwrap().success(), "{exited:?}");
}
