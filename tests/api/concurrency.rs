//! Zero overspend: many concurrent requests against a balance that pays for ~10.

use crate::helpers::*;
use futures_util::future::join_all;
use tokengate::proxy::body::Endpoint;

const MAX_TOKENS: i64 = 20;
const REQUESTS: usize = 200;

/// Fires `REQUESTS` concurrent chats spread over `apps` and checks the books.
async fn fire_and_check(apps: &[&TestApp]) {
    let first = apps[0];
    // "um dois três" is 3 words: the provider reports 10 prompt tokens, so a full
    // request costs 30 and 300 tokens pay for about 10 of them.
    let balance = 300;
    first.default_plan(balance);
    let body = chat_body("fake-model", "um dois três", false, Some(MAX_TOKENS));
    let futures = (0..REQUESTS).map(|i| {
        let app = apps[i % apps.len()];
        let body = body.clone();
        async move {
            let res = app.chat(&body).await;
            let status = res.status().as_u16();
            let _ = res.bytes().await;
            status
        }
    });
    let statuses = join_all(futures).await;
    let ok = statuses.iter().filter(|s| **s == 200).count();
    let blocked = statuses.iter().filter(|s| **s == 429).count();
    assert_eq!(
        ok + blocked,
        REQUESTS,
        "only 200s and 429s expected: {statuses:?}"
    );

    for app in apps {
        app.settled();
    }
    let s = first.summary(USER);
    let charged = first.charged(USER);
    let records = first.ledger().usage_records(first.user_id(USER)).unwrap();
    let prompt_reported: i64 = records.iter().map(|r| r.prompt_tokens).sum();
    // Reservations use the tokenizer's estimate; the charge uses the provider's count.
    let estimate_error = records.len() as i64 * (10 - estimated_prompt());
    println!(
        "concurrency: {ok} served, {blocked} blocked, charged {charged} of {balance} (prompt estimate error {} tokens per request; reported prompt tokens {prompt_reported})",
        10 - estimated_prompt()
    );
    assert!(ok >= 8, "about 10 requests should fit, got {ok}");
    assert!(
        charged <= balance + estimate_error.max(0),
        "overspend: charged {charged} of {balance}"
    );
    assert_eq!(s.used_this_cycle, charged);
    assert_eq!(s.held, 0);
    first.assert_invariant(USER);
}

fn estimated_prompt() -> i64 {
    let body = chat_body("fake-model", "um dois três", false, Some(MAX_TOKENS)).to_string();
    tokengate::proxy::body::parse(body.as_bytes(), Endpoint::ChatCompletions)
        .unwrap()
        .prompt_tokens
}

#[actix_web::test]
async fn two_hundred_concurrent_requests_never_overspend() {
    let app = spawn_app(TestOptions::default()).await;
    fire_and_check(&[&app]).await;
}

#[actix_web::test]
async fn two_instances_on_one_database_never_overspend() {
    let a = spawn_app(TestOptions::default()).await;
    let b = spawn_replica(&a).await;
    fire_and_check(&[&a, &b]).await;
}

/// Settlements are group-committed (`Database::queue`, what the settler uses): each
/// in a savepoint of its own, so one that fails is rolled back alone, whether it
/// returned an error after writing or a statement failed inside it, and one that
/// panics (a bug) fails alone too; the others are written. On both backends.
#[actix_web::test]
async fn writes_done_together_fail_one_at_a_time() {
    use diesel::prelude::*;
    use tokengate::config::DatabaseUrl;
    use tokengate::db::schema::settings;
    use tokengate::db::{Database, StoreError};

    let test_db = TestDb::new();
    let db = Database::new(&DatabaseUrl::parse(&test_db.url).unwrap(), 4);
    db.migrate().unwrap();
    let (tx, rx) = std::sync::mpsc::channel::<(usize, Result<usize, StoreError>)>();
    for i in 0..300usize {
        let tx = tx.clone();
        db.queue(
            i as i64,
            move |c| {
                diesel::insert_into(settings::table)
                    .values((
                        settings::key.eq(format!("k{i:03}")),
                        settings::value.eq("v"),
                    ))
                    .execute(c)?;
                if i % 10 == 7 {
                    return Err(StoreError::Unavailable("refused".into()));
                }
                if i == 20 {
                    diesel::insert_into(settings::table)
                        .values((settings::key.eq("k000"), settings::value.eq("dup")))
                        .execute(c)?;
                }
                if i == 150 {
                    panic!("a bug in one write (test)");
                }
                Ok(i)
            },
            move |r| tx.send((i, r)).unwrap(),
        );
    }
    drop(tx);
    let mut results: Vec<(usize, Result<usize, StoreError>)> = rx.iter().collect();
    results.sort_by_key(|(i, _)| *i);
    let refused = |i: usize| i % 10 == 7 || i == 20 || i == 150;
    assert_eq!(results.len(), 300);
    // On SQLite they went to the writer thread together, and `/metrics` says so.
    if let Some(counts) = db.write_counts() {
        assert_eq!((counts.inline, counts.queued, counts.together), (0, 0, 300));
    }
    for (i, r) in &results {
        match r {
            Ok(n) => assert!(n == i && !refused(*i), "item {i} wrote but should not"),
            Err(e) => assert!(refused(*i), "item {i} failed: {e}"),
        }
    }
    let mut conn = db.conn().unwrap();
    let written: Vec<String> = settings::table
        .filter(settings::key.like("k%"))
        .order(settings::key)
        .select(settings::key)
        .load(&mut conn)
        .unwrap();
    let expected: Vec<String> = (0..300)
        .filter(|&i| !refused(i))
        .map(|i| format!("k{i:03}"))
        .collect();
    assert_eq!(written, expected);
    // The engine goes on writing after the panic.
    db.write(|c| {
        diesel::insert_into(settings::table)
            .values((settings::key.eq("k999"), settings::value.eq("v")))
            .execute(c)?;
        Ok::<_, StoreError>(())
    })
    .await
    .unwrap();
}
