//! Zero overspend: many concurrent requests against a balance that pays for ~10.

use crate::helpers::*;
use futures_util::future::join_all;
use serde_json::Value;

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
    let body = chat_body("fake-model", "um dois três", false, Some(MAX_TOKENS));
    let Value::Object(map) = body else {
        unreachable!()
    };
    tokengate::proxy::estimate::chat_prompt(&map)
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
