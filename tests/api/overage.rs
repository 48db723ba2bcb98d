//! Overage: past the allowance and the credits, a plan that allows it goes on up to
//! its cap and never past it, exactly, at any concurrency and across processes;
//! each request records the overage it was billed and its price; the pages and the
//! command line show it.

use crate::admin::Admin;
use crate::cli::{text, tokengate};
use crate::helpers::*;
use crate::instances::read_tokens;
use futures_util::future::join_all;
use serde_json::Value;
use tokengate::domain::plan::Allowance;
use tokengate::domain::{Overage, PlanSpec, PricePer1k, TokenAmount};
use tokengate::ledger::{Actor, parse_user_ref};

/// R$ 0,10 per 1,000 tokens: R$ 0,0001 a token, 100 micro-reais.
const PRICE_MICRO: i64 = 100_000;

/// A default plan of `allowance` tokens that goes on for `cap` more at R$ 0,10 per
/// 1,000.
fn with_overage(app: &TestApp, name: &str, allowance: i64, cap: i64) -> i64 {
    app.ledger()
        .create_plan(
            &PlanSpec {
                overage: Some(Overage {
                    cap: Allowance::new(cap).unwrap(),
                    price: PricePer1k::from_micro(PRICE_MICRO).unwrap(),
                }),
                ..plan_spec(name, allowance)
            },
            true,
            &Actor::Cli,
        )
        .unwrap()
}

/// A chat whose answer runs to `max_tokens`; the provider counts its prompt as 10.
async fn fill(app: &TestApp, user: &str, max_tokens: i64) -> (u16, Value) {
    let res = app
        .chat_as(
            user,
            &chat_body("fill", "palavra palavra palavra", false, Some(max_tokens)),
        )
        .await;
    let status = res.status().as_u16();
    (status, res.json::<Value>().await.unwrap_or(Value::Null))
}

/// Past the allowance, requests go on, each billed the overage it used at the
/// plan's price, until the cap; then the user is refused as exhausted, and not one
/// token was billed past the cap nor taken from credits they do not have.
#[actix_web::test]
async fn overage_goes_on_up_to_the_cap_priced_per_request_and_never_past_it() {
    let app = spawn_app(TestOptions::default()).await;
    with_overage(&app, "Pro", 2_000, 3_000);
    let mut served = 0;
    let refusal = loop {
        let (status, body) = fill(&app, "ana", 1_000).await;
        app.settled();
        if status != 200 {
            break body;
        }
        served += 1;
        assert!(
            served <= 5,
            "5,000 tokens pay for at most 5 answers of 1,010"
        );
        if served == 2 {
            // Past the allowance: over 80%, not blocked.
            let s = app.summary("ana");
            assert!(s.overage.tokens > 0 && !s.blocked, "{s:?}");
        }
    };
    assert_eq!(
        refusal["error"]["message"],
        "Seus tokens acabaram: você usou todo o seu plano Pro. Para continuar, peça mais créditos a suporte@iasolaris.com.br.",
        "{refusal}"
    );
    let s = app.summary("ana");
    assert!(s.blocked, "{s:?}");
    assert_eq!(s.credits, 0, "no debt");
    assert!(
        (2_950..=3_000).contains(&s.overage.tokens),
        "the cap is spent, not passed: {s:?}"
    );
    assert_eq!(s.used_this_cycle, 2_000 + s.overage.tokens);
    // Each request's overage and its price, adding up to the cycle's.
    let records = app.ledger().usage_records(app.user_id("ana")).unwrap();
    let billed: Vec<(i64, i64)> = records
        .iter()
        .map(|r| (r.overage_tokens, r.overage_cost))
        .collect();
    assert_eq!(billed[0], (0, 0), "the first answer was in the allowance");
    assert!(
        billed.iter().all(|(t, c)| *c == t * PRICE_MICRO / 1_000),
        "{billed:?}"
    );
    assert_eq!(
        billed.iter().map(|b| b.0).sum::<i64>(),
        s.overage.tokens,
        "{billed:?}"
    );
    assert_eq!(s.overage.cost, s.overage.tokens * 100);
    app.assert_invariant("ana");

    // Credits pay before the overage does: a top-up is spent first.
    app.ledger()
        .grant_credits(
            &parse_user_ref("ana"),
            TokenAmount::new(1_010).unwrap(),
            &Actor::Cli,
            None,
        )
        .unwrap();
    let before = app.summary("ana").overage.tokens;
    let (status, body) = fill(&app, "ana", 1_000).await;
    assert_eq!(status, 200, "{body}");
    app.settled();
    let s = app.summary("ana");
    assert_eq!((s.credits, s.overage.tokens), (0, before));
}

/// 100 answers at once, half through a second process on the same database: the
/// allowance and the overage's cap pay for what they pay, not a token more (no debt
/// on credits, no overage past the cap), and what is left is less than one answer.
#[actix_web::test]
async fn overage_is_exact_under_a_hundred_concurrent_requests() {
    let a = spawn_app(TestOptions::default()).await;
    let b = spawn_replica(&a).await;
    with_overage(&a, "Exato", 1_000, 2_500);
    let results = join_all((0..100).map(|i| {
        let app = if i % 2 == 0 { &a } else { &b };
        async move { fill(app, "exato", 100).await }
    }))
    .await;
    a.settled();
    b.settled();
    let served = results.iter().filter(|(s, _)| *s == 200).count();
    assert!(served >= 30, "{served} served");
    for (status, body) in results.iter().filter(|(s, _)| *s != 200) {
        assert_eq!(*status, 429, "{body}");
    }
    let s = a.summary("exato");
    assert_eq!(s.held, 0);
    assert_eq!(s.credits, 0, "no debt: {s:?}");
    assert!(s.overage.tokens <= 2_500, "{s:?}");
    assert!(
        s.used_this_cycle > 3_500 - 110,
        "nothing refused early: {s:?}"
    );
    let records = a.ledger().usage_records(a.user_id("exato")).unwrap();
    assert_eq!(records.len(), served);
    assert_eq!(
        records.iter().map(|r| r.overage_tokens).sum::<i64>(),
        s.overage.tokens
    );
    a.assert_invariant("exato");
}

/// The command line and the dashboard set an overage (cap and price per 1,000
/// tokens), refuse half of one or a bad price, and clear it; the plans page shows
/// the cycle's overage per plan, the user's page and the admin's the user's, in
/// tokens and reais.
#[actix_web::test]
async fn overage_from_the_command_line_and_the_dashboard_and_on_the_pages() {
    let app = spawn_app(TestOptions::default()).await;
    let db = &app.db;
    let out = tokengate(
        db,
        &[
            "plans",
            "create",
            "Pro",
            "--allowance",
            "2.000",
            "--overage-cap",
            "1.000.000",
            "--overage-price",
            "0,10",
            "--default",
        ],
        None,
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        text(&out.stdout)
            .contains("overage:        up to 1000000 tokens a month at R$ 0.10 per 1,000"),
        "{}",
        text(&out.stdout)
    );
    let out = tokengate(db, &["plans", "show", "Pro", "--json"], None);
    let plan: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        plan["overage"],
        serde_json::json!({"cap": 1_000_000, "price_per_1k_micro": 100_000})
    );
    for (args, reason) in [
        (
            vec![
                "plans",
                "create",
                "Meio",
                "--allowance",
                "10",
                "--overage-cap",
                "100",
            ],
            "give both --overage-cap and --overage-price",
        ),
        (
            vec!["plans", "edit", "Pro", "--overage-price", "0,1234567"],
            "is not a price in reais per 1,000 tokens",
        ),
        (
            vec!["plans", "edit", "Pro", "--overage-price=-1"],
            "is not a price in reais per 1,000 tokens",
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
    // One of the two changes alone, the other kept.
    let out = tokengate(
        db,
        &["plans", "edit", "Pro", "--overage-price", "0,2"],
        None,
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    let pro = app.ledger().plan("Pro").unwrap();
    assert_eq!(
        pro.overage.map(|o| (o.cap.get(), o.price.micro())),
        Some((1_000_000, 200_000))
    );
    // "none" blocks again; a new cap and price go on again.
    let out = tokengate(db, &["plans", "edit", "Pro", "--overage-cap", "none"], None);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(app.ledger().plan("Pro").unwrap().overage, None);
    let out = tokengate(
        db,
        &[
            "plans",
            "edit",
            "Pro",
            "--overage-cap",
            "1.000.000",
            "--overage-price",
            "0,2",
        ],
        None,
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(app.ledger().plan("Pro").unwrap().overage, pro.overage);

    // 2,000 in the allowance, then overage at R$ 0,20 per 1,000.
    for _ in 0..3 {
        assert_eq!(fill(&app, "ana", 1_000).await.0, 200);
    }
    app.settled();
    let s = app.summary("ana");
    assert_eq!(s.overage.tokens, 1_030);
    assert_eq!(s.overage.cost, 206_000);
    let client = crate::me::signed_in(&app, app.user_id("ana")).await;
    let html = crate::me::page(&app, &client).await.text().await.unwrap();
    assert!(
        html.contains("<dd id=\"overage\">1.030 tokens · R$ 0,21 <span class=\"muted\">(depois da franquia e dos créditos, cobrado a R$ 0,20 por 1.000 tokens, até 1.000.000 tokens por mês)</span>"),
        "{html}"
    );
    let admin = Admin::signed_in(&app).await;
    let user_page = admin
        .page(&format!("/admin/users/{}", app.user_id("ana")))
        .await;
    assert!(
        user_page.contains("excedente 1.030/1.000.000 tokens (R$ 0,21)"),
        "{user_page}"
    );
    let plans_page = admin.page("/admin/plans").await;
    assert!(
        plans_page.contains("1.030 tokens · R$ 0,21"),
        "{plans_page}"
    );

    // The dashboard: half an overage and a bad price are refused; both blank
    // clears it, and the plan blocks again at the end of the balance.
    for (cap, price, reason) in [
        ("1.000", "", "Preço do excedente recusado"),
        ("", "0,10", "Limite de excedente recusado"),
        ("1.000", "dez", "Preço do excedente recusado"),
    ] {
        let page = admin
            .submit(
                "/admin/plans",
                &format!("/admin/plans/{}", pro.id),
                &[
                    ("name", "Pro"),
                    ("allowance", "2.000"),
                    ("overage_cap", cap),
                    ("overage_price", price),
                ],
            )
            .await;
        assert!(page.contains(reason), "{cap}/{price}: {page}");
    }
    assert_eq!(app.ledger().plan("Pro").unwrap().overage, pro.overage);
    admin
        .submit(
            "/admin/plans",
            &format!("/admin/plans/{}", pro.id),
            &[
                ("name", "Pro"),
                ("allowance", "2.000"),
                ("overage_cap", ""),
                ("overage_price", ""),
            ],
        )
        .await;
    assert_eq!(app.ledger().plan("Pro").unwrap().overage, None);
    assert_eq!(fill(&app, "ana", 1_000).await.0, 429);
    assert!(app.summary("ana").blocked);
}

/// A hold released as abandoned is charged its prompt, as overage on a plan past its
/// allowance. Its request's own settlement, arriving later, bills the rest as
/// overage too when it cost more, and takes the overage back (not as free credits)
/// when it cost less.
#[actix_web::test]
async fn a_late_settlement_bills_or_takes_back_overage() {
    let app = spawn_app(TestOptions::default()).await;
    with_overage(&app, "Excedente", 0, 100_000);
    let late = |request_id: String, charge: i64, outcome| tokengate::ledger::Settlement {
        request_id,
        prompt_tokens: 10,
        completion_tokens: charge - 10,
        charge,
        output_charge: (charge - 10).max(0),
        estimated: false,
        outcome,
        status: 200,
        latency: std::time::Duration::from_secs(1),
        ttfb: None,
        can_carry_notice: false,
        conversation: None,
    };
    let released = |app: &TestApp| {
        let request_id = app.ledger().holds().unwrap()[0].request_id.clone();
        assert_eq!(
            app.ledger()
                .sweep_stale_holds(std::time::Duration::ZERO)
                .unwrap(),
            1
        );
        request_id
    };

    // Cost more than its prompt: the rest is overage, on the same record.
    let mut res = app
        .chat(&chat_body("trickle", "olá mundo", true, None))
        .await;
    assert_eq!(res.status(), 200);
    read_tokens(&mut res, 3).await;
    let first = released(&app);
    let id = app.user_id(USER);
    let prompt = app.summary(USER).overage.tokens;
    assert!(prompt > 0, "the release billed the prompt as overage");
    app.ledger()
        .settle_blocking(&late(
            first.clone(),
            100,
            tokengate::ledger::Outcome::Completed,
        ))
        .unwrap();
    drop(res);
    let s = app.summary(USER);
    assert_eq!(
        (s.overage.tokens, s.overage.cost, s.credits),
        (100, 10_000, 0)
    );
    let record = |request_id: &str| {
        app.ledger()
            .usage_records(id)
            .unwrap()
            .into_iter()
            .find(|r| r.request_id == request_id)
            .unwrap()
    };
    assert_eq!(
        (record(&first).overage_tokens, record(&first).overage_cost),
        (100, 10_000)
    );

    // Cost nothing after all (failed upstream): the prompt's overage is taken back.
    let mut res = app
        .chat(&chat_body("trickle", "olá mundo", true, None))
        .await;
    assert_eq!(res.status(), 200);
    read_tokens(&mut res, 3).await;
    let second = released(&app);
    assert!(app.summary(USER).overage.tokens > 100);
    app.ledger()
        .settle_blocking(&late(
            second.clone(),
            0,
            tokengate::ledger::Outcome::UpstreamError,
        ))
        .unwrap();
    drop(res);
    let s = app.summary(USER);
    assert_eq!(
        (s.overage.tokens, s.overage.cost, s.credits),
        (100, 10_000, 0),
        "taken back, not given as credits"
    );
    assert_eq!(
        (record(&second).overage_tokens, record(&second).overage_cost),
        (0, 0)
    );
    app.assert_invariant(USER);
}

/// A request admitted under a plan's overage is paid by it, even when its user is
/// moved meanwhile to a plan without overage whose allowance is used up: no debt.
#[actix_web::test]
async fn a_request_in_flight_is_paid_by_the_plan_that_admitted_it() {
    let app = spawn_app(TestOptions::default()).await;
    with_overage(&app, "Pro", 0, 100_000);
    let basico = app
        .ledger()
        .create_plan(&plan_spec("Básico", 0), false, &Actor::Cli)
        .unwrap();
    let mut res = app
        .chat(&chat_body("trickle", "olá mundo", true, None))
        .await;
    assert_eq!(res.status(), 200);
    read_tokens(&mut res, 3).await;
    app.ledger()
        .change_plan(app.user_id(USER), basico, &Actor::Cli)
        .unwrap();
    read_tokens(&mut res, 6).await;
    // The user stops it: charged what was delivered, by Pro's rules.
    drop(res);
    app.wait_for_no_holds(USER).await;
    app.settled();
    let s = app.summary(USER);
    assert_eq!(s.plan, "Básico");
    assert!(s.used_this_cycle > 0, "{s:?}");
    assert_eq!(s.credits, 0, "no debt: {s:?}");
    assert_eq!(s.overage.tokens, s.used_this_cycle, "{s:?}");
    app.assert_invariant(USER);
}

/// Past a side's allowance, overage pays that side while the month's allowance is
/// far from used: the first overage is the 100% alert, which says it is billed.
#[actix_web::test]
async fn overage_past_a_side_allowance_is_the_full_alert() {
    let app = spawn_app(TestOptions::default()).await;
    app.ledger()
        .create_plan(
            &PlanSpec {
                sides: tokengate::domain::SideAllowances {
                    input: None,
                    output: Allowance::new(1_000),
                },
                overage: Some(Overage {
                    cap: Allowance::new(10_000).unwrap(),
                    price: PricePer1k::from_micro(PRICE_MICRO).unwrap(),
                }),
                ..plan_spec("Saída", 1_000_000)
            },
            true,
            &Actor::Cli,
        )
        .unwrap();
    let thresholds = |app: &TestApp| -> Vec<u8> {
        tokengate::alerts::list(
            app.ledger().db(),
            tokengate::domain::Scope::All,
            Some(app.user_id("ana")),
            20,
        )
        .unwrap()
        .iter()
        .map(|a| a.threshold)
        .collect()
    };
    assert_eq!(fill(&app, "ana", 1_000).await.0, 200);
    app.settled();
    assert!(thresholds(&app).is_empty());
    assert_eq!(fill(&app, "ana", 1_000).await.0, 200);
    app.settled();
    let s = app.summary("ana");
    assert_eq!(s.overage.tokens, 1_000, "{s:?}");
    assert!(!s.blocked);
    assert!(thresholds(&app).contains(&100), "{:?}", thresholds(&app));
}
