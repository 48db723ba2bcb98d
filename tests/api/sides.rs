//! Separate input and output allowances: each binds on its own, exactly, at any
//! concurrency and across processes; credits pay past them; a move or an edit
//! applies at once and carries the cycle's use; a new cycle starts each side over.

use crate::admin::Admin;
use crate::cli::{text, tokengate};
use crate::helpers::*;
use chrono::{TimeZone, Utc};
use futures_util::future::join_all;
use serde_json::Value;
use tokengate::domain::plan::Allowance;
use tokengate::domain::{PlanChange, PlanSpec, SideAllowances, TokenAmount};
use tokengate::ledger::{Actor, PlanRef, parse_user_ref};

fn sides(input: Option<i64>, output: Option<i64>) -> SideAllowances {
    SideAllowances {
        input: input.and_then(Allowance::new),
        output: output.and_then(Allowance::new),
    }
}

/// A plan with a large monthly allowance and these side allowances; the default
/// when `default`.
fn sided(app: &TestApp, name: &str, input: Option<i64>, output: Option<i64>, default: bool) -> i64 {
    app.ledger()
        .create_plan(
            &PlanSpec {
                sides: sides(input, output),
                ..plan_spec(name, 10_000_000)
            },
            default,
            &Actor::Cli,
        )
        .unwrap()
}

/// A chat whose answer runs to `max_tokens` ("fill"); its prompt is `words` words
/// (the provider counts words + 7).
async fn fill(app: &TestApp, user: &str, words: usize, max_tokens: i64) -> (u16, Value) {
    let content = vec!["palavra"; words.max(1)].join(" ");
    let res = app
        .chat_as(user, &chat_body("fill", &content, false, Some(max_tokens)))
        .await;
    let status = res.status().as_u16();
    (status, res.json::<Value>().await.unwrap_or(Value::Null))
}

fn message(body: &Value) -> &str {
    body["error"]["message"].as_str().unwrap_or("")
}

fn grant(app: &TestApp, user: &str, tokens: i64) {
    app.ledger()
        .grant_credits(
            &parse_user_ref(user),
            TokenAmount::new(tokens).unwrap(),
            &Actor::Cli,
            None,
        )
        .unwrap();
}

/// The output's allowance ends a user's answers while the input's and the month's
/// have plenty; the input's ends their prompts while the output's has plenty. Each
/// says which in the block, counts as blocked, and credits pay past it: the ledger
/// takes the side's part from credits and the rest from the allowance.
#[actix_web::test]
async fn each_allowance_binds_on_its_own_and_credits_pay_past_it() {
    let app = spawn_app(TestOptions::default()).await;
    sided(&app, "Saída", None, Some(3_000), true);
    for _ in 0..3 {
        let (status, body) = fill(&app, "ana", 3, 1_000).await;
        assert_eq!(status, 200, "{body}");
    }
    app.settled();
    let s = app.summary("ana");
    assert_eq!(s.sides.output_used, 3_000);
    assert_eq!(s.sides.input_used, 30);
    assert_eq!(s.sides.left(tokengate::domain::Side::Output), Some(0));
    assert!(s.remaining > 9_000_000, "{s:?}");
    let (status, body) = fill(&app, "ana", 3, 1_000).await;
    assert_eq!(status, 429, "{body}");
    assert_eq!(
        message(&body),
        "Seus tokens de saída (respostas) do plano Saída acabaram. Para continuar, peça mais créditos a suporte@iasolaris.com.br."
    );
    assert!(app.summary("ana").blocked);
    assert_eq!(
        app.ledger()
            .usage_records(app.user_id("ana"))
            .unwrap()
            .len(),
        3,
        "the refused request was not forwarded"
    );

    // Credits pay the output past its allowance; the plan still pays the input.
    grant(&app, "ana", 1_000);
    assert!(!app.summary("ana").blocked);
    let (status, body) = fill(&app, "ana", 3, 1_000).await;
    assert_eq!(status, 200, "{body}");
    app.settled();
    let usage = app
        .ledger()
        .ledger_entries(app.user_id("ana"))
        .unwrap()
        .into_iter()
        .rfind(|e| e.kind == "usage")
        .unwrap();
    assert_eq!((usage.delta_allowance, usage.delta_credits), (-10, -1_000));
    // The credits are spent: used up again.
    let (status, body) = fill(&app, "ana", 3, 1_000).await;
    assert_eq!(status, 429, "{body}");
    assert!(
        message(&body).starts_with("Seus tokens de saída (respostas)"),
        "{body}"
    );
    app.assert_invariant("ana");

    // The input's allowance: prompts of 307 tokens (by the provider's count; the
    // reservation holds its estimate) until one no longer fits in 1,000, whatever
    // the output and the month have left.
    sided(&app, "Entrada", Some(1_000), None, true);
    let mut served = 0;
    let refusal = loop {
        let (status, body) = fill(&app, "bia", 300, 10).await;
        app.settled();
        if status != 200 {
            break (status, body);
        }
        served += 1;
        assert!(served <= 3, "{served} prompts of 307 tokens in 1,000");
    };
    assert!(served >= 1);
    assert_eq!(refusal.0, 429, "{}", refusal.1);
    assert_eq!(
        message(&refusal.1),
        "Seus tokens de entrada (mensagens) do plano Entrada acabaram. Para continuar, peça mais créditos a suporte@iasolaris.com.br."
    );
    assert_eq!(app.summary("bia").sides.input_used, 307 * served);
    // A short message still fits in what the input has left.
    let (status, body) = fill(&app, "bia", 3, 10).await;
    assert_eq!(status, 200, "{body}");
    app.settled();
    let s = app.summary("bia");
    assert_eq!(s.sides.input_used, 307 * served + 10);
    assert_eq!(s.credits, 0);
    app.assert_invariant("bia");
}

/// With a monthly allowance below its side allowances added up, a request must fit
/// all three: the month's ends a user's answers while each side has room.
#[actix_web::test]
async fn the_monthly_allowance_binds_beside_the_sides() {
    let app = spawn_app(TestOptions::default()).await;
    app.ledger()
        .create_plan(
            &PlanSpec {
                sides: sides(Some(100_000), Some(100_000)),
                ..plan_spec("Mês", 2_100)
            },
            true,
            &Actor::Cli,
        )
        .unwrap();
    let mut served = 0;
    let refusal = loop {
        let (status, body) = fill(&app, "dani", 3, 1_000).await;
        app.settled();
        if status != 200 {
            break body;
        }
        served += 1;
        assert!(
            served <= 3,
            "2,100 tokens pay for two answers and a cut one"
        );
    };
    assert!(
        message(&refusal).starts_with("Seus tokens acabaram: você usou todo o seu plano Mês"),
        "{refusal}"
    );
    let s = app.summary("dani");
    assert!(s.allowance_left < 100, "{s:?}");
    assert!(
        s.sides.left(tokengate::domain::Side::Input) > Some(99_000),
        "{s:?}"
    );
    assert!(
        s.sides.left(tokengate::domain::Side::Output) > Some(97_000),
        "{s:?}"
    );
}

/// 100 answers at once, half through a second process on the same database, on a
/// plan whose output allowance pays for 25 of them: 25 served, not one more, not one
/// fewer, and the output used is the allowance to the token.
#[actix_web::test]
async fn an_output_allowance_is_exact_under_a_hundred_concurrent_requests() {
    let a = spawn_app(TestOptions::default()).await;
    let b = spawn_replica(&a).await;
    sided(&a, "Exato", Some(1_000_000), Some(2_500), true);
    let results = join_all((0..100).map(|i| {
        let app = if i % 2 == 0 { &a } else { &b };
        async move { fill(app, "exato", 3, 100).await }
    }))
    .await;
    a.settled();
    b.settled();
    let served = results.iter().filter(|(s, _)| *s == 200).count();
    let refusals: Vec<&str> = results.iter().map(|(_, b)| message(b)).collect();
    assert_eq!(served, 25, "{refusals:?}");
    for (status, body) in results.iter().filter(|(s, _)| *s != 200) {
        assert_eq!(*status, 429, "{body}");
    }
    let s = a.summary("exato");
    assert_eq!(s.sides.output_used, 2_500);
    assert_eq!(s.held, 0);
    assert_eq!(s.credits, 0);
    let records = a.ledger().usage_records(a.user_id("exato")).unwrap();
    assert_eq!(records.len(), 25);
    assert!(records.iter().all(|r| r.completion_tokens == 100));
    a.assert_invariant("exato");
}

/// A move to another plan carries the cycle's use of each side (nothing lost,
/// nothing free, either way); an edit of a side's allowance applies at once and is
/// audited so; a new cycle starts each side over.
#[actix_web::test]
async fn moves_and_edits_apply_at_once_and_a_cycle_starts_the_sides_over() {
    let app = spawn_app(TestOptions::default()).await;
    app.set_clock(Utc.with_ymd_and_hms(2026, 12, 9, 15, 0, 0).unwrap());
    let small = sided(&app, "Pequeno", None, Some(2_000), true);
    let large = sided(&app, "Grande", None, Some(5_000), false);
    for _ in 0..2 {
        assert_eq!(fill(&app, "caio", 3, 1_000).await.0, 200);
    }
    app.settled();
    let user = app.user_id("caio");
    assert_eq!(fill(&app, "caio", 3, 1_000).await.0, 429);

    app.ledger().change_plan(user, large, &Actor::Cli).unwrap();
    let s = app.summary("caio");
    assert_eq!(s.sides.output_used, 2_000, "the use carries over");
    assert_eq!(s.sides.left(tokengate::domain::Side::Output), Some(3_000));
    for _ in 0..3 {
        assert_eq!(fill(&app, "caio", 3, 1_000).await.0, 200);
    }
    app.settled();
    assert_eq!(fill(&app, "caio", 3, 1_000).await.0, 429);
    // Back to the small plan: no more for free.
    app.ledger().change_plan(user, small, &Actor::Cli).unwrap();
    assert_eq!(app.summary("caio").sides.output_used, 5_000);
    assert_eq!(fill(&app, "caio", 3, 1_000).await.0, 429);

    // An edit applies at once, and the audit says so.
    app.ledger()
        .update_plan(
            &PlanRef::Id(small),
            &PlanChange {
                output_allowance: Some(Allowance::new(6_000)),
                ..PlanChange::default()
            },
            &Actor::Cli,
        )
        .unwrap();
    assert_eq!(fill(&app, "caio", 3, 1_000).await.0, 200);
    let audit = app.ledger().audit_entries(None, 50, 0).unwrap();
    let edit = audit.iter().find(|a| a.action == "edit_plan").unwrap();
    let detail: Value = serde_json::from_str(&edit.details).unwrap();
    assert_eq!(detail["output_allowance"], 6_000);
    assert_eq!(detail["old_output_allowance"], 2_000);
    assert_eq!(detail["side_allowances_from"], "now");
    // Removed: the monthly allowance alone governs.
    app.ledger()
        .update_plan(
            &PlanRef::Id(small),
            &PlanChange {
                output_allowance: Some(None),
                ..PlanChange::default()
            },
            &Actor::Cli,
        )
        .unwrap();
    assert_eq!(fill(&app, "caio", 3, 1_000).await.0, 200);
    app.settled();

    // The next cycle starts each side at zero.
    app.ledger()
        .update_plan(
            &PlanRef::Id(small),
            &PlanChange {
                output_allowance: Some(Allowance::new(1_000)),
                ..PlanChange::default()
            },
            &Actor::Cli,
        )
        .unwrap();
    assert_eq!(fill(&app, "caio", 3, 1_000).await.0, 429);
    // A new monthly allowance applies from the next cycle, as its audit line says.
    let before = app.summary("caio").allowance_left;
    app.ledger()
        .update_plan(
            &PlanRef::Id(small),
            &PlanChange {
                monthly_allowance: Allowance::new(5_000_000),
                ..PlanChange::default()
            },
            &Actor::Cli,
        )
        .unwrap();
    assert_eq!(app.summary("caio").allowance_left, before);
    app.set_clock(Utc.with_ymd_and_hms(2027, 1, 2, 12, 0, 0).unwrap());
    assert_eq!(app.summary("caio").sides.output_used, 0);
    assert_eq!(fill(&app, "caio", 3, 1_000).await.0, 200);
    app.settled();
    let s = app.summary("caio");
    assert_eq!((s.sides.input_used, s.sides.output_used), (10, 1_000));
    assert_eq!(s.allowance_left, 5_000_000 - 1_010);
    app.assert_invariant("caio");
}

/// The command line sells a plan by its input and output allowances alone (the
/// month's is their sum), shows them, clears one with "none", and refuses a plan
/// with no allowance at all.
#[actix_web::test]
async fn side_allowances_from_the_command_line() {
    let app = spawn_app(TestOptions::default()).await;
    let db = &app.db;
    let out = tokengate(
        db,
        &[
            "plans",
            "create",
            "Básico",
            "--input-allowance",
            "1.000.000",
            "--output-allowance",
            "500.000",
            "--price",
            "99,90",
        ],
        None,
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    let shown = text(&out.stdout);
    assert!(shown.contains("tokens a month: 1500000"), "{shown}");
    assert!(shown.contains("input/month:    1000000"), "{shown}");
    assert!(shown.contains("output/month:   500000"), "{shown}");
    let out = tokengate(db, &["plans", "show", "Básico", "--json"], None);
    let plan: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(plan["monthly_allowance"], 1_500_000);
    assert_eq!(plan["input_allowance"], 1_000_000);
    assert_eq!(plan["output_allowance"], 500_000);

    let out = tokengate(
        db,
        &["plans", "edit", "Básico", "--output-allowance", "none"],
        None,
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    let out = tokengate(db, &["plans", "show", "Básico", "--json"], None);
    let plan: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(plan["output_allowance"], Value::Null);
    assert_eq!(plan["input_allowance"], 1_000_000);

    for (args, reason) in [
        (
            vec!["plans", "create", "Nada", "--input-allowance", "1000"],
            "give --allowance, or both",
        ),
        (
            vec!["plans", "edit", "Básico", "--input-allowance=-5"],
            "invalid value",
        ),
        (
            vec!["plans", "edit", "Básico", "--output-allowance", "1.5"],
            "invalid value",
        ),
    ] {
        let out = tokengate(db, &args, None);
        assert!(!out.status.success(), "{args:?}");
        assert!(
            text(&out.stderr).contains(reason),
            "{args:?}: {}",
            text(&out.stderr)
        );
    }
}

/// The dashboard creates a plan from its input and output allowances alone (the
/// month's is their sum), refuses a bad one with its reason, keeps them when a form
/// has no such fields, and clears one left blank; the user's page and the admin's
/// show each side against its allowance, and say which side ran out.
#[actix_web::test]
async fn side_allowances_from_the_dashboard_and_on_the_pages() {
    let app = spawn_app(TestOptions::default()).await;
    let admin = Admin::signed_in(&app).await;
    let page = admin
        .submit(
            "/admin/plans",
            "/admin/plans",
            &[
                ("name", "Básico"),
                ("allowance", ""),
                ("input_allowance", "100.000"),
                ("output_allowance", "2.000"),
                ("make_default", "1"),
            ],
        )
        .await;
    assert!(page.contains("Plano criado: Básico."), "{page}");
    let plan = app.ledger().plan("Básico").unwrap();
    assert_eq!(plan.monthly_allowance, 102_000);
    assert_eq!(plan.sides, sides(Some(100_000), Some(2_000)));
    for (field, value) in [
        ("input_allowance", "muito"),
        ("output_allowance", "-1"),
        ("output_allowance", "1,5"),
    ] {
        let page = admin
            .submit(
                "/admin/plans",
                &format!("/admin/plans/{}", plan.id),
                &[("name", "Básico"), ("allowance", "102.000"), (field, value)],
            )
            .await;
        let reason = if field == "input_allowance" {
            "Franquia de entrada recusada"
        } else {
            "Franquia de saída recusada"
        };
        assert!(page.contains(reason), "{field}={value}: {page}");
    }
    // A form without the fields keeps them.
    admin
        .submit(
            "/admin/plans",
            &format!("/admin/plans/{}", plan.id),
            &[("name", "Básico"), ("allowance", "102.000")],
        )
        .await;
    assert_eq!(app.ledger().plan("Básico").unwrap().sides, plan.sides);

    for _ in 0..2 {
        assert_eq!(fill(&app, "ana", 3, 1_000).await.0, 200);
    }
    app.settled();
    assert_eq!(fill(&app, "ana", 3, 1_000).await.0, 429);
    let client = crate::me::signed_in(&app, app.user_id("ana")).await;
    let html = crate::me::page(&app, &client).await.text().await.unwrap();
    assert!(
        html.contains("<dd id=\"input-left\">99.980 restantes de 100.000"),
        "{html}"
    );
    assert!(
        html.contains("<dd id=\"output-left\">0 restantes de 2.000"),
        "{html}"
    );
    assert!(
        html.contains("Seus tokens de saída (as respostas) acabaram"),
        "{html}"
    );
    let user_page = admin
        .page(&format!("/admin/users/{}", app.user_id("ana")))
        .await;
    assert!(user_page.contains("entrada 20/100.000"), "{user_page}");
    assert!(user_page.contains("saída 2.000/2.000"), "{user_page}");

    // Blank clears a side: the month's allowance alone governs, and the page no
    // longer lists it.
    admin
        .submit(
            "/admin/plans",
            &format!("/admin/plans/{}", plan.id),
            &[
                ("name", "Básico"),
                ("allowance", "102.000"),
                ("input_allowance", "100.000"),
                ("output_allowance", ""),
            ],
        )
        .await;
    assert_eq!(
        app.ledger().plan("Básico").unwrap().sides,
        sides(Some(100_000), None)
    );
    assert_eq!(fill(&app, "ana", 3, 1_000).await.0, 200);
    let html = crate::me::page(&app, &client).await.text().await.unwrap();
    assert!(!html.contains("output-left"), "{html}");
}
