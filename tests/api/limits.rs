//! Request limits per plan: a minute's, a day's and a cycle's, each exact at any
//! concurrency and across replicas, starting over at local midnight and at the
//! cycle's start, with their own answers, texts and one mail per window.

use crate::admin::Admin;
use crate::cli::{text, tokengate};
use crate::helpers::*;
use chrono::{TimeZone, Utc};
use futures_util::future::join_all;
use serde_json::Value;
use tokengate::domain::{PlanSpec, RequestLimit, RequestLimits};
use tokengate::ledger::Actor;

fn limit(n: i64) -> Option<RequestLimit> {
    RequestLimit::new(n)
}

/// A default plan with plenty of tokens and these limits.
fn limited(app: &TestApp, name: &str, limits: RequestLimits) -> i64 {
    app.ledger()
        .create_plan(
            &PlanSpec {
                limits,
                ..plan_spec(name, 100_000_000)
            },
            true,
            &Actor::Cli,
        )
        .unwrap()
}

/// A small chat of `user`, as LibreChat sends it (with their email).
async fn chat(app: &TestApp, user: &str) -> reqwest::Response {
    app.post("/v1/chat/completions")
        .header("x-librechat-user-id", user)
        .header("x-librechat-user-email", format!("{user}@example.com"))
        .body(chat_body("fake-model", "olá", false, Some(20)).to_string())
        .send()
        .await
        .unwrap()
}

/// `n` chats of `user` at once, spread over `apps`: their statuses and bodies.
async fn burst(apps: &[&TestApp], user: &str, n: usize) -> Vec<(u16, Value)> {
    join_all((0..n).map(|i| async move {
        let res = chat(apps[i % apps.len()], user).await;
        let status = res.status().as_u16();
        (status, res.json::<Value>().await.unwrap_or(Value::Null))
    }))
    .await
}

/// The messages queued about request limits.
fn limit_mails(app: &TestApp) -> Vec<tokengate::alerts::OutboxMessage> {
    tokengate::alerts::messages(app.ledger().db())
        .unwrap()
        .into_iter()
        .filter(|m| m.kind == "request_limit")
        .collect()
}

/// Each limit holds exactly under 100 requests at once, half of them through a
/// second process on the same database: as many served as the limit, not one more,
/// not one fewer, and every other refused with that limit's answer.
#[actix_web::test]
async fn each_limit_is_exact_under_a_hundred_concurrent_requests() {
    let a = spawn_app(TestOptions::default()).await;
    let b = spawn_replica(&a).await;
    // Fixed at the start of a minute, so the minute's window holds the whole burst.
    let minute = Utc.with_ymd_and_hms(2026, 12, 9, 15, 0, 0).unwrap();
    a.set_clock(minute);
    b.set_clock(minute);
    for (period, limits, allowed) in [
        (
            "requests_per_minute",
            RequestLimits {
                per_minute: limit(23),
                ..RequestLimits::default()
            },
            23,
        ),
        (
            "requests_per_day",
            RequestLimits {
                per_day: limit(37),
                per_minute: limit(90),
                ..RequestLimits::default()
            },
            37,
        ),
        (
            "requests_per_month",
            RequestLimits {
                per_month: limit(41),
                per_day: limit(60),
                ..RequestLimits::default()
            },
            41,
        ),
    ] {
        limited(&a, period, limits);
        let user = format!("exact-{period}");
        let results = burst(&[&a, &b], &user, 100).await;
        let served = results.iter().filter(|(s, _)| *s == 200).count();
        assert_eq!(served, allowed, "{period}: {results:?}");
        for (status, body) in results.iter().filter(|(s, _)| *s != 200) {
            assert_eq!(*status, 429, "{period}: {body}");
            assert_eq!(body["error"]["param"], period, "{body}");
            assert_eq!(body["error"]["code"], "insufficient_quota", "{body}");
        }
        a.settled();
        b.settled();
        let summary = a.summary(&user);
        let counted = match period {
            "requests_per_minute" => summary.requests.this_minute,
            "requests_per_day" => summary.requests.today,
            _ => summary.requests.this_cycle,
        };
        assert_eq!(counted as usize, allowed, "{period}");
        assert_eq!(
            a.ledger().usage_records(a.user_id(&user)).unwrap().len(),
            allowed,
            "{period}: only the served are charged"
        );
        assert_eq!(summary.held, 0);
        a.assert_invariant(&user);
    }
}

/// A minute's limit: 429 with `Retry-After` (until the clock minute ends), not to
/// be retried by SDKs, its text in the user's language; the next minute serves
/// again. A request the provider failed is not counted.
#[actix_web::test]
async fn a_minutes_limit_says_when_to_try_again() {
    let app = spawn_app(TestOptions::default()).await;
    app.set_clock(Utc.with_ymd_and_hms(2026, 12, 9, 15, 0, 25).unwrap());
    limited(
        &app,
        "Ritmo",
        RequestLimits {
            per_minute: limit(2),
            ..RequestLimits::default()
        },
    );
    // The provider fails this one: not served, not counted.
    let failed = app
        .post("/v1/chat/completions")
        .header("x-librechat-user-id", "ritmo")
        .body(chat_body("fail-500", "olá", false, Some(20)).to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(failed.status(), 500);
    app.settled();
    assert_eq!(app.summary("ritmo").requests.this_minute, 0);
    for _ in 0..2 {
        assert_eq!(chat(&app, "ritmo").await.status(), 200);
    }
    let forwarded = app.fake.request_count();
    let res = chat(&app, "ritmo").await;
    assert_eq!(res.status(), 429);
    assert_eq!(res.headers()["retry-after"], "35");
    assert_eq!(res.headers()["x-should-retry"], "false");
    let body: Value = res.json().await.unwrap();
    assert_eq!(
        body["error"]["message"],
        "Você chegou ao limite de 2 mensagens por minuto do seu plano. Tente de novo em 35 segundos."
    );
    assert_eq!(body["error"]["type"], "requests");
    assert_eq!(body["error"]["param"], "requests_per_minute");
    assert_eq!(app.fake.request_count(), forwarded, "not forwarded");
    assert!(
        app.metrics()
            .await
            .contains("tokengate_requests_rejected_total{code=\"request_limit\"} 1"),
    );
    // A minute's refusal mails nobody.
    assert!(limit_mails(&app).is_empty());

    app.advance_clock(chrono::Duration::seconds(35));
    assert_eq!(chat(&app, "ritmo").await.status(), 200);
}

/// A day's limit turns at midnight in São Paulo (03:00 UTC), a month's at the
/// cycle's start; each refusal has its own text, at the block's status, and the
/// user is mailed once per window however often they are refused.
#[actix_web::test]
async fn days_turn_at_local_midnight_and_months_at_the_cycle() {
    let app = spawn_app(TestOptions {
        env: vec![("TOKENGATE_BLOCK_STATUS", "402".to_owned())],
        ..TestOptions::default()
    })
    .await;
    // 23:58 on November 30 in São Paulo: the last minutes of a day and of a cycle.
    let evening = Utc.with_ymd_and_hms(2026, 12, 1, 2, 58, 0).unwrap();
    app.set_clock(evening);
    limited(
        &app,
        "Diário",
        RequestLimits {
            per_day: limit(2),
            ..RequestLimits::default()
        },
    );
    for _ in 0..2 {
        assert_eq!(chat(&app, "dia").await.status(), 200);
    }
    for _ in 0..3 {
        let res = chat(&app, "dia").await;
        assert_eq!(res.status(), 402);
        let body: Value = res.json().await.unwrap();
        assert_eq!(
            body["error"]["message"],
            "Você atingiu o limite de 2 mensagens por dia do seu plano; volta amanhã."
        );
        assert_eq!(body["error"]["param"], "requests_per_day");
    }
    let mails = limit_mails(&app);
    assert_eq!(mails.len(), 1, "one mail per day: {mails:?}");
    assert_eq!(mails[0].recipient, "dia@example.com");
    // 23:59:59 is still the same day; midnight in São Paulo is a new one.
    app.set_clock(Utc.with_ymd_and_hms(2026, 12, 1, 2, 59, 59).unwrap());
    assert_eq!(chat(&app, "dia").await.status(), 402);
    app.set_clock(Utc.with_ymd_and_hms(2026, 12, 1, 3, 0, 0).unwrap());
    assert_eq!(chat(&app, "dia").await.status(), 200);
    assert_eq!(chat(&app, "dia").await.status(), 200);
    assert_eq!(chat(&app, "dia").await.status(), 402);
    assert_eq!(limit_mails(&app).len(), 2, "a new day, a new mail");

    // A month's limit: the same evening, then the cycle's start.
    app.set_clock(evening);
    let monthly = app
        .ledger()
        .create_plan(
            &PlanSpec {
                limits: RequestLimits {
                    per_month: limit(3),
                    ..RequestLimits::default()
                },
                ..plan_spec("Mensagens", 100_000_000)
            },
            false,
            &Actor::Cli,
        )
        .unwrap();
    assert_eq!(chat(&app, "mes").await.status(), 200);
    app.ledger()
        .change_plan(app.user_id("mes"), monthly, &Actor::Cli)
        .unwrap();
    // The request made before the move counts: the cycle's use carries over.
    for _ in 0..2 {
        assert_eq!(chat(&app, "mes").await.status(), 200);
    }
    let res = chat(&app, "mes").await;
    assert_eq!(res.status(), 402);
    let body: Value = res.json().await.unwrap();
    assert_eq!(
        body["error"]["message"],
        "Você atingiu o limite de 3 mensagens por mês do seu plano; volta em 01/12/2026."
    );
    assert_eq!(body["error"]["param"], "requests_per_month");
    app.set_clock(Utc.with_ymd_and_hms(2026, 12, 1, 3, 0, 0).unwrap());
    assert_eq!(chat(&app, "mes").await.status(), 200);
    assert_eq!(app.summary("mes").requests.this_cycle, 1);
    app.assert_invariant("mes");
}

/// A plan's limits change at once, counted from what each user has already made:
/// lowered below it, the next request is refused; removed, it is served. An edit
/// from the dashboard without the fields keeps them; the user's page and the
/// admin's show the counts; the command line sets and clears them.
#[actix_web::test]
async fn limits_are_set_from_the_dashboard_and_the_command_line_and_apply_at_once() {
    let app = spawn_app(TestOptions::default()).await;
    app.set_clock(Utc.with_ymd_and_hms(2026, 12, 9, 15, 0, 0).unwrap());
    let admin = Admin::signed_in(&app).await;
    let page = admin
        .submit(
            "/admin/plans",
            "/admin/plans",
            &[
                ("name", "Pro"),
                ("allowance", "3.000.000"),
                ("per_minute", ""),
                ("per_day", "5"),
                ("per_month", "1.000"),
                ("make_default", "1"),
            ],
        )
        .await;
    assert!(page.contains("Plano criado: Pro."), "{page}");
    let pro = app.ledger().plan("Pro").unwrap();
    assert_eq!(pro.request_limits.per_day, limit(5));
    assert_eq!(pro.request_limits.per_month, limit(1000));
    assert_eq!(pro.request_limits.per_minute, None);
    for _ in 0..3 {
        assert_eq!(chat(&app, "ana").await.status(), 200);
    }
    let client = crate::me::signed_in(&app, app.user_id("ana")).await;
    let html = crate::me::page(&app, &client).await.text().await.unwrap();
    assert!(
        html.contains("<dd id=\"messages-today\">restam 2 de 5"),
        "{html}"
    );
    assert!(
        html.contains("<dd id=\"messages-month\">restam 997 de 1.000</dd>"),
        "{html}"
    );
    let user_page = admin
        .page(&format!("/admin/users/{}", app.user_id("ana")))
        .await;
    assert!(user_page.contains("mensagens hoje 3/5"), "{user_page}");

    for (field, value, refusal) in [
        ("per_day", "abc", "Limite por dia recusado"),
        ("per_minute", "0", "Limite por minuto recusado"),
        ("per_month", "-3", "Limite por mês recusado"),
        ("per_day", "99999999999", "Limite por dia recusado"),
    ] {
        let page = admin
            .submit(
                "/admin/plans",
                &format!("/admin/plans/{}", pro.id),
                &[("name", "Pro"), ("allowance", "3.000.000"), (field, value)],
            )
            .await;
        assert!(page.contains(refusal), "{field}={value}: {page}");
    }
    assert_eq!(
        app.ledger().plan("Pro").unwrap().request_limits,
        pro.request_limits
    );

    // Lowered below today's count: refused at once. A form without the fields
    // (a page of an earlier release) keeps them.
    admin
        .submit(
            "/admin/plans",
            &format!("/admin/plans/{}", pro.id),
            &[
                ("name", "Pro"),
                ("allowance", "3.000.000"),
                ("per_day", "3"),
            ],
        )
        .await;
    assert_eq!(chat(&app, "ana").await.status(), 429);
    admin
        .submit(
            "/admin/plans",
            &format!("/admin/plans/{}", pro.id),
            &[("name", "Pro"), ("allowance", "3.000.000")],
        )
        .await;
    assert_eq!(
        app.ledger().plan("Pro").unwrap().request_limits.per_day,
        limit(3)
    );
    let audit = app.ledger().audit_entries(None, 50, 0).unwrap();
    let edit = audit
        .iter()
        .find(|a| a.action == "edit_plan")
        .expect("the edit is audited");
    let details: Value = serde_json::from_str(&edit.details).unwrap();
    assert_eq!(details["request_limits"]["per_day"], 3);
    assert_eq!(details["old_request_limits"]["per_day"], 5);
    assert_eq!(details["request_limits_from"], "now");

    // The command line clears the day's limit and sets a minute's.
    let out = tokengate(
        &app.db,
        &[
            "plans",
            "edit",
            "Pro",
            "--per-day",
            "none",
            "--per-minute",
            "60",
        ],
        None,
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        text(&out.stdout).contains("requests/day:   none"),
        "{}",
        text(&out.stdout)
    );
    assert!(
        text(&out.stdout).contains("requests/min:   60"),
        "{}",
        text(&out.stdout)
    );
    assert_eq!(chat(&app, "ana").await.status(), 200);
    let out = tokengate(
        &app.db,
        &[
            "plans",
            "create",
            "Básico",
            "--allowance",
            "1000000",
            "--per-day",
            "50",
            "--per-month",
            "1000",
        ],
        None,
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    let out = tokengate(&app.db, &["plans", "list", "--json"], None);
    let plans: Value = serde_json::from_slice(&out.stdout).unwrap();
    let basico = plans
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == "Básico")
        .unwrap();
    assert_eq!(basico["request_limits"]["per_day"], 50);
    assert_eq!(basico["request_limits"]["per_minute"], Value::Null);
    for bad in [["--per-day", "0"], ["--per-month", "lots"]] {
        let out = tokengate(&app.db, &["plans", "edit", "Básico", bad[0], bad[1]], None);
        assert!(!out.status.success());
        assert!(
            text(&out.stderr).contains("is not a request limit"),
            "{}",
            text(&out.stderr)
        );
    }
}

/// A replica whose clock is a second behind another's counts into the minute the
/// other has begun: it never starts that minute over (which would serve a second
/// limit's worth in it).
#[actix_web::test]
async fn a_replica_whose_clock_is_behind_never_starts_a_window_over() {
    let ahead = spawn_app(TestOptions::default()).await;
    let behind = spawn_replica(&ahead).await;
    let minute = Utc.with_ymd_and_hms(2026, 12, 9, 3, 0, 0).unwrap();
    ahead.set_clock(minute);
    // 23:59:59 of the day before in São Paulo, on the other replica.
    behind.set_clock(minute - chrono::Duration::seconds(1));
    limited(
        &ahead,
        "Ritmo",
        RequestLimits {
            per_minute: limit(3),
            per_day: limit(3),
            ..RequestLimits::default()
        },
    );
    for _ in 0..3 {
        assert_eq!(chat(&ahead, "skew").await.status(), 200);
    }
    for app in [&behind, &ahead, &behind] {
        let res = chat(app, "skew").await;
        assert_eq!(res.status(), 429, "the new minute and day are full");
    }
    assert_eq!(ahead.summary("skew").requests.today, 3);
}

/// The previous release rolls a balance into a new cycle without knowing of the
/// count (during a roll, or after a rollback): the new cycle's count still starts
/// at zero.
#[actix_web::test]
async fn a_cycle_rolled_by_the_previous_release_starts_its_count_over() {
    use diesel::{Connection, connection::SimpleConnection};
    let app = spawn_app(TestOptions::default()).await;
    app.set_clock(Utc.with_ymd_and_hms(2026, 11, 20, 12, 0, 0).unwrap());
    limited(
        &app,
        "Mensagens",
        RequestLimits {
            per_month: limit(2),
            ..RequestLimits::default()
        },
    );
    for _ in 0..2 {
        assert_eq!(chat(&app, "velho").await.status(), 200);
    }
    assert_eq!(chat(&app, "velho").await.status(), 429);
    app.settled();
    // What the previous release writes when it rolls the cycle.
    let roll = format!(
        "UPDATE balances SET cycle = '2026-12', used_this_cycle = 0 WHERE user_id = {}",
        app.user_id("velho")
    );
    let url = app.db.url.clone();
    match url.strip_prefix("sqlite://") {
        Some(path) => diesel::SqliteConnection::establish(path)
            .unwrap()
            .batch_execute(&roll),
        None => diesel::PgConnection::establish(&url)
            .unwrap()
            .batch_execute(&roll),
    }
    .unwrap();
    app.set_clock(Utc.with_ymd_and_hms(2026, 12, 2, 12, 0, 0).unwrap());
    assert_eq!(chat(&app, "velho").await.status(), 200);
    assert_eq!(app.summary("velho").requests.this_cycle, 1);
}
