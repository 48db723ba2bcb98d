//! More tokens from the user's page: a credit request decided by an admin, and codes
//! made by admins (dashboard or command line) that users redeem.

use crate::admin::{Admin, csrf_of};
use crate::helpers::*;
use crate::me::{PUBLIC_URL, browser, chat_user, link_path, page, signed_in, use_link};
use crate::smtp::{Received, SmtpOptions, SmtpServer};
use futures_util::future::join_all;
use reqwest::StatusCode;
use tokengate::ledger::Actor;
use tokengate::ledger::audit::Action;

const ADMIN_MAIL: &str = "financeiro@iasolaris.com.br";

async fn credits_app(smtp: &SmtpServer) -> TestApp {
    let app = spawn_app(TestOptions {
        env: vec![
            ("TOKENGATE_SMTP_URL", smtp.url()),
            ("TOKENGATE_ADMIN_EMAILS", ADMIN_MAIL.into()),
            ("TOKENGATE_PUBLIC_URL", PUBLIC_URL.into()),
            ("TOKENGATE_MAIL_RETRY_BASE_SECS", "0.05".into()),
        ],
        start: mid_november(),
        ..TestOptions::default()
    })
    .await;
    app.default_plan(1_000);
    app
}

/// Posts a form of the user's page (with its CSRF token); returns where it led.
async fn user_form(
    app: &TestApp,
    client: &reqwest::Client,
    path: &str,
    form: &[(&str, &str)],
) -> String {
    let html = page(app, client).await.text().await.unwrap();
    let csrf = csrf_of(&html);
    let mut fields = form.to_vec();
    fields.push(("csrf", &csrf));
    let res = client
        .post(format!("{}{path}", app.address))
        .header("origin", &app.address)
        .form(&fields)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::SEE_OTHER, "{path}");
    res.headers()["location"].to_str().unwrap().to_owned()
}

fn audit_actions(app: &TestApp) -> Vec<String> {
    app.ledger()
        .audit_entries(None, 100, 0)
        .unwrap()
        .into_iter()
        .map(|e| e.action)
        .collect()
}

#[actix_web::test]
async fn a_request_is_approved_in_the_dashboard_granted_once_and_mailed() {
    let smtp = SmtpServer::start(SmtpOptions::default()).await;
    let app = credits_app(&smtp).await;
    chat_user(
        &app,
        "lia-1",
        "lia@example.com",
        "Lia <i>Reis</i>",
        "fake-model",
        5,
    )
    .await;
    let lia = app.user_id("lia-1");
    let client = signed_in(&app, lia).await;

    // Amounts that are not whole tokens are refused, with a message.
    for bad in ["", "1,5", "-3", "mil"] {
        let to = user_form(
            &app,
            &client,
            "/me/credit-request",
            &[("tokens", bad), ("note", "")],
        )
        .await;
        assert_eq!(to, "/me?done=bad-amount", "{bad:?}");
    }
    for too_much in ["1000000001", "99999999999999999999999"] {
        let to = user_form(
            &app,
            &client,
            "/me/credit-request",
            &[("tokens", too_much), ("note", "")],
        )
        .await;
        assert_eq!(to, "/me?done=too-much", "{too_much:?}");
    }
    let to = user_form(
        &app,
        &client,
        "/me/credit-request",
        &[
            ("tokens", "100.000"),
            ("note", "Projeto <b>urgente</b>\r\nBcc: x@evil.example"),
        ],
    )
    .await;
    assert_eq!(to, "/me?done=requested");
    let html = client
        .get(format!("{}{to}", app.address))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(html.contains("Pedido enviado"));
    assert!(html.contains("Seu pedido de 100.000 tokens"), "{html}");
    // One open request at a time: the form is gone, and a second post is refused.
    assert!(!html.contains(r#"action="/me/credit-request""#));
    let res = client
        .post(format!("{}/me/credit-request", app.address))
        .header("origin", &app.address)
        .form(&[("tokens", "5"), ("csrf", &csrf_of(&html))])
        .send()
        .await
        .unwrap();
    assert_eq!(res.headers()["location"], "/me?done=already-requested");

    // The admins are mailed.
    let mail = smtp.wait_for(1).await;
    let to_admin: &Received = mail.iter().find(|m| m.to() == ADMIN_MAIL).unwrap();
    assert_eq!(
        to_admin.subject,
        "Pedido de créditos: lia@example.com pede 100.000 tokens"
    );
    assert!(
        to_admin
            .text
            .contains("Projeto <b>urgente</b> Bcc: x@evil.example"),
        "{}",
        to_admin.text
    );
    assert!(!to_admin.html.contains("<b>urgente"), "escaped in HTML");
    assert!(
        !to_admin.raw.contains("\r\nBcc: x@evil"),
        "no header from a note"
    );
    assert!(
        to_admin
            .text
            .contains(&format!("{PUBLIC_URL}/admin/requests"))
    );

    // The dashboard counts it and shows the queue.
    let admin = Admin::signed_in(&app).await;
    let overview = admin.page("/admin").await;
    assert!(overview.contains("Pedidos de créditos abertos"));
    assert!(
        overview.contains(r#"href="/admin/requests">1<"#),
        "{overview}"
    );
    let queue = admin.page("/admin/requests").await;
    assert!(queue.contains("lia@example.com") && queue.contains("100.000"));
    assert!(queue.contains("Projeto &lt;b&gt;urgente&lt;/b&gt;"));
    let request = app
        .ledger()
        .credit_requests(tokengate::ledger::credits::Which::All, Some(lia), 1)
        .unwrap()
        .remove(0);
    let credits_before = app.summary("lia-1").credits;
    let after = admin
        .submit(
            "/admin/requests",
            &format!("/admin/requests/{}/approve", request.id),
            &[],
        )
        .await;
    assert!(after.contains("100.000 tokens concedidos"), "{after}");
    assert_eq!(app.summary("lia-1").credits, credits_before + 100_000);
    // Approving again (a second tab, a second admin) grants nothing more.
    let again = admin
        .submit(
            "/admin/requests",
            &format!("/admin/requests/{}/approve", request.id),
            &[],
        )
        .await;
    assert!(again.contains("já foi decidido"));
    assert_eq!(app.summary("lia-1").credits, credits_before + 100_000);
    let entries = app.ledger().ledger_entries(lia).unwrap();
    let topup = entries.iter().rev().find(|e| e.kind == "topup").unwrap();
    assert_eq!(topup.delta_credits, 100_000);
    assert_eq!(topup.actor, "admin:admin@localhost");
    assert_eq!(
        topup.note.as_deref(),
        Some(format!("pedido de créditos #{}", request.id).as_str())
    );
    assert_eq!(
        audit_actions(&app)
            .iter()
            .filter(|a| *a == Action::ApproveCreditRequest.as_str())
            .count(),
        1
    );
    app.assert_invariant("lia-1");

    // The user is told, with a link to the page; and may ask again.
    let mail = smtp.wait_for(2).await;
    let to_user = mail.iter().find(|m| m.to() == "lia@example.com").unwrap();
    assert_eq!(
        to_user.subject,
        "Seu pedido foi aprovado: 100.000 tokens a mais"
    );
    let fresh = browser();
    assert_eq!(
        use_link(&app, &fresh, &link_path(&to_user.text))
            .await
            .status(),
        303
    );
    let html = page(&app, &fresh).await.text().await.unwrap();
    assert!(
        html.contains("Último pedido: 100.000 tokens, aprovado"),
        "{html}"
    );
    assert!(html.contains(r#"action="/me/credit-request""#));
}

#[actix_web::test]
async fn a_declined_request_tells_the_user_why_and_grants_nothing() {
    let smtp = SmtpServer::start(SmtpOptions::default()).await;
    let app = credits_app(&smtp).await;
    chat_user(&app, "rui-1", "rui@example.com", "Rui", "fake-model", 5).await;
    let rui = app.user_id("rui-1");
    let client = signed_in(&app, rui).await;
    user_form(
        &app,
        &client,
        "/me/credit-request",
        &[("tokens", "5000000"), ("note", "")],
    )
    .await;
    smtp.wait_for(1).await;
    let request = app
        .ledger()
        .credit_requests(tokengate::ledger::credits::Which::All, Some(rui), 1)
        .unwrap()
        .remove(0);
    let admin = Admin::signed_in(&app).await;
    // Suspended since: the queue says so before anyone decides.
    app.ledger()
        .set_suspended(&tokengate::ledger::UserRef::Id(rui), true, &Actor::Cli)
        .unwrap();
    assert!(admin.page("/admin/requests").await.contains("suspenso"));
    let before = app.summary("rui-1");
    admin
        .submit(
            "/admin/requests",
            &format!("/admin/requests/{}/decline", request.id),
            &[("reason", "Limite do plano <script>x</script>")],
        )
        .await;
    let after = app.summary("rui-1");
    assert_eq!(
        (after.credits, after.remaining),
        (before.credits, before.remaining)
    );
    let mail = smtp.wait_for(2).await;
    let to_user = mail.iter().find(|m| m.to() == "rui@example.com").unwrap();
    assert_eq!(to_user.subject, "Seu pedido de créditos não foi aprovado");
    assert!(
        to_user
            .text
            .contains("Motivo: Limite do plano <script>x</script>")
    );
    assert!(!to_user.html.contains("<script>"));
    assert!(audit_actions(&app).contains(&Action::DeclineCreditRequest.as_str().to_owned()));
    // Another admin's id in the URL of a request that does not exist: a page, no change.
    let csrf = csrf_of(&admin.page("/admin/requests").await);
    let res = admin
        .post("/admin/requests/999999/approve", &[("csrf", &csrf)])
        .await;
    assert_eq!(res.status(), StatusCode::NOT_FOUND);
    let res = admin
        .post("/admin/requests/not-a-number/approve", &[("csrf", &csrf)])
        .await;
    assert_eq!(res.status(), StatusCode::NOT_FOUND);
}

/// A batch made in the dashboard: the CSV once, hashes only in the database.
async fn batch_from_dashboard(
    admin: &Admin,
    tokens: &str,
    count: &str,
    valid_until: &str,
) -> Vec<String> {
    let csrf = csrf_of(&admin.page("/admin/codes").await);
    let res = admin
        .post(
            "/admin/codes",
            &[
                ("tokens", tokens),
                ("count", count),
                ("expires", valid_until),
                ("note", "Black Friday"),
                ("csrf", &csrf),
            ],
        )
        .await;
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(res.headers()["content-type"], "text/csv; charset=utf-8");
    assert!(
        res.headers()["content-disposition"]
            .to_str()
            .unwrap()
            .starts_with("attachment;")
    );
    let csv = res.text().await.unwrap();
    let mut lines = csv.lines();
    assert_eq!(lines.next(), Some("code,tokens,valid_until,batch"));
    lines
        .map(|l| l.split(',').next().unwrap().to_owned())
        .collect()
}

/// `count` codes of 1,000 tokens, valid until 2027, made as the command line makes them.
fn batch_of_thousands(app: &TestApp, count: i64) -> Vec<String> {
    app.ledger()
        .create_code_batch(
            tokengate::domain::TokenAmount::new(1_000).unwrap(),
            count,
            chrono::NaiveDate::from_ymd_opt(2027, 1, 1)
                .unwrap()
                .and_hms_opt(0, 0, 0)
                .unwrap(),
            None,
            &Actor::Cli,
        )
        .unwrap()
        .1
}

async fn redeem(app: &TestApp, client: &reqwest::Client, code: &str) -> String {
    user_form(app, client, "/me/redeem", &[("code", code)]).await
}

#[actix_web::test]
async fn codes_are_made_once_redeemed_once_and_the_next_chat_is_served() {
    let smtp = SmtpServer::start(SmtpOptions::default()).await;
    let app = credits_app(&smtp).await;
    let admin = Admin::signed_in(&app).await;
    let codes = batch_from_dashboard(&admin, "250.000", "3", "2026-11-20").await;
    assert_eq!(codes.len(), 3);
    for c in &codes {
        assert!(c.starts_with("TG-") && c.len() == 27, "{c}");
    }
    let listed = admin.page("/admin/codes").await;
    assert!(
        listed.contains("250.000") && listed.contains("0 / 3") && listed.contains("Black Friday")
    );
    // The database holds no code, only digests.
    {
        use diesel::prelude::*;
        use tokengate::db::schema::redeem_codes;
        let mut c = app.ledger().db().conn().unwrap();
        let stored: Vec<String> = redeem_codes::table
            .select(redeem_codes::code_hash)
            .load(&mut c)
            .unwrap();
        assert_eq!(stored.len(), 3);
        for code in &codes {
            let bare = code.replace('-', "");
            assert!(
                stored
                    .iter()
                    .all(|h| !h.contains(&bare[2..]) && h.len() == 64)
            );
        }
        assert!(!listed.contains(&codes[0]));
    }

    // A user spends the plan down and is blocked; a code brings the chat back.
    chat_user(&app, "eva-1", "eva@example.com", "Eva", "fake-model", 40).await;
    let blocked = loop {
        let res = app
            .chat_as("eva-1", &chat_body("fake-model", "oi", false, Some(40)))
            .await;
        if res.status() != 200 {
            break res;
        }
    };
    assert_eq!(blocked.status(), 429);
    let eva = app.user_id("eva-1");
    let client = signed_in(&app, eva).await;
    // Typed the way people type: lower case, spaces instead of dashes.
    let typed = codes[0].to_lowercase().replace('-', " ");
    assert_eq!(redeem(&app, &client, &typed).await, "/me?done=code-added");
    let summary = app.summary("eva-1");
    assert_eq!(summary.credits, 250_000);
    let res = app
        .chat_as("eva-1", &chat_body("fake-model", "oi", false, Some(40)))
        .await;
    assert_eq!(res.status(), 200, "served again");
    let entries = app.ledger().ledger_entries(eva).unwrap();
    let topup = entries.iter().find(|e| e.kind == "topup").unwrap();
    assert_eq!(topup.actor, format!("user:#{eva}"));
    assert!(
        topup
            .note
            .as_deref()
            .unwrap()
            .starts_with("código do lote #")
    );
    assert!(audit_actions(&app).contains(&Action::RedeemCode.as_str().to_owned()));
    // Used: by the same user or anyone else.
    assert_eq!(redeem(&app, &client, &codes[0]).await, "/me?done=code-used");
    chat_user(&app, "ivo-1", "ivo@example.com", "Ivo", "fake-model", 5).await;
    let other = signed_in(&app, app.user_id("ivo-1")).await;
    assert_eq!(redeem(&app, &other, &codes[0]).await, "/me?done=code-used");
    assert_eq!(app.summary("ivo-1").credits, 0);
    // Expired after its last day (20/11, São Paulo): a code of the same batch says so.
    app.set_clock(chrono::TimeZone::with_ymd_and_hms(&chrono::Utc, 2026, 11, 21, 3, 0, 1).unwrap());
    assert_eq!(
        redeem(&app, &other, &codes[1]).await,
        "/me?done=code-expired"
    );
    let html = client
        .get(format!("{}/me?done=code-expired", app.address))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(html.contains("Este código expirou."));
    assert_eq!(app.summary("ivo-1").credits, 0);
    app.assert_invariant("eva-1");
}

#[actix_web::test]
async fn fifty_users_redeeming_one_code_at_once_add_it_once() {
    let smtp = SmtpServer::start(SmtpOptions::default()).await;
    let app = credits_app(&smtp).await;
    let codes = batch_of_thousands(&app, 1);
    let mut users = Vec::new();
    for i in 0..50 {
        let id = format!("par-{i}");
        chat_user(
            &app,
            &id,
            &format!("par{i}@example.com"),
            "Par",
            "fake-model",
            5,
        )
        .await;
        users.push((id.clone(), signed_in(&app, app.user_id(&id)).await));
    }
    let results = join_all(
        users
            .iter()
            .map(|(_, client)| redeem(&app, client, &codes[0])),
    )
    .await;
    assert_eq!(
        results
            .iter()
            .filter(|r| *r == "/me?done=code-added")
            .count(),
        1,
        "{results:?}"
    );
    assert_eq!(
        results
            .iter()
            .filter(|r| *r == "/me?done=code-used")
            .count(),
        49,
        "{results:?}"
    );
    let credited: i64 = users.iter().map(|(id, _)| app.summary(id).credits).sum();
    assert_eq!(credited, 1_000);
}

#[actix_web::test]
async fn guessing_codes_is_stopped_after_ten_failures() {
    let smtp = SmtpServer::start(SmtpOptions::default()).await;
    let app = credits_app(&smtp).await;
    let codes = batch_of_thousands(&app, 2);
    chat_user(&app, "gus-1", "gus@example.com", "Gus", "fake-model", 5).await;
    let client = signed_in(&app, app.user_id("gus-1")).await;
    // A success does not count against the limit.
    assert_eq!(
        redeem(&app, &client, &codes[0]).await,
        "/me?done=code-added"
    );
    for i in 0..10 {
        let guess = format!("TG-AAAA-AAAA-AAAA-AAAA-AA{i:02}");
        assert_eq!(redeem(&app, &client, &guess).await, "/me?done=code-unknown");
    }
    // The eleventh try waits, even with a real code; the code is not spent.
    assert_eq!(redeem(&app, &client, &codes[1]).await, "/me?done=code-wait");
    assert_eq!(app.summary("gus-1").credits, 1_000);
    app.advance_clock(chrono::Duration::minutes(16));
    assert_eq!(
        redeem(&app, &client, &codes[1]).await,
        "/me?done=code-added"
    );
}

#[actix_web::test]
async fn the_command_line_makes_a_batch_as_csv() {
    let db = TestDb::new();
    let run = |args: &[&str]| {
        let (k, v) = test_now_env();
        std::process::Command::new(env!("CARGO_BIN_EXE_tokengate"))
            .args(args)
            .env("TOKENGATE_DATABASE_URL", &db.url)
            .env(k, v)
            .output()
            .unwrap()
    };
    let out = run(&[
        "codes",
        "create",
        "--tokens",
        "50.000",
        "--count",
        "4",
        "--valid-until",
        "2030-12-31",
        "--note",
        "feira",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let csv = String::from_utf8(out.stdout).unwrap();
    let lines: Vec<&str> = csv.lines().collect();
    assert_eq!(lines[0], "code,tokens,valid_until,batch");
    assert_eq!(lines.len(), 5, "{csv}");
    assert!(
        lines[1..]
            .iter()
            .all(|l| l.starts_with("TG-") && l.contains(",50000,2030-12-31,"))
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("not shown again"));
    for bad in [
        vec![
            "codes",
            "create",
            "--tokens",
            "50",
            "--count",
            "0",
            "--valid-until",
            "2030-12-31",
        ],
        vec![
            "codes",
            "create",
            "--tokens",
            "50",
            "--count",
            "10001",
            "--valid-until",
            "2030-12-31",
        ],
        vec![
            "codes",
            "create",
            "--tokens",
            "50",
            "--count",
            "3",
            "--valid-until",
            "2020-01-01",
        ],
        vec![
            "codes",
            "create",
            "--tokens",
            "1,5",
            "--count",
            "3",
            "--valid-until",
            "2030-12-31",
        ],
    ] {
        let out = run(&bad);
        assert!(!out.status.success(), "{bad:?}");
        assert!(out.stdout.is_empty(), "no codes for {bad:?}");
    }
}
