//! Reports and exports: the figures per distributor, plan, user, model, day and
//! conversation add up to what the ledger charged; each admin's reach bounds them;
//! exports are CSV a spreadsheet reads safely; a million usage records stream out
//! of a running server with its memory bounded.

use crate::admin::{Admin, signed_in_admin_of};
use crate::helpers::*;
use reqwest::StatusCode;
use tokengate::domain::DistributorId;
use tokengate::ledger::Actor;

const KEY_ALFA: &str = "tg-reports-alfa-key-0123456789";

fn alfa(app: &TestApp) -> DistributorId {
    named_distributor(app.ledger(), "Alfa", KEY_ALFA)
}

/// A chat of 110 tokens (10 in, 100 out) in LibreChat's conversation `chat`.
async fn chat(app: &TestApp, key: &str, user: &str, email: &str, model: &str, chat: &str) {
    let res = app
        .client
        .post(format!("{}/v1/chat/completions", app.address))
        .bearer_auth(key)
        .header("content-type", "application/json")
        .header("x-librechat-user-id", user)
        .header("x-librechat-user-email", email)
        .header("x-librechat-conversation-id", chat)
        .body(chat_body(model, "palavra palavra palavra", false, Some(100)).to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
}

/// The cells of a report table's rows, as text.
fn cells(html: &str, table: &str) -> Vec<Vec<String>> {
    let start = html
        .find(&format!("<table class=\"{table}\">"))
        .unwrap_or_else(|| panic!("no table {table} in {html}"));
    let body = &html[start..];
    let body = &body[body.find("<tbody>").unwrap()..body.find("</tbody>").unwrap()];
    body.split("<tr>")
        .skip(1)
        .map(|row| {
            row.split("<td")
                .skip(1)
                .map(|cell| {
                    text_of(&cell[cell.find('>').unwrap() + 1..cell.find("</td>").unwrap()])
                })
                .collect()
        })
        .collect()
}

/// The text of an HTML fragment, its tags dropped.
fn text_of(fragment: &str) -> String {
    let mut out = String::new();
    let mut in_tag = false;
    for ch in fragment.chars() {
        match ch {
            '<' => in_tag = true,
            '>' => in_tag = false,
            c if !in_tag => out.push(c),
            _ => {}
        }
    }
    out.trim().to_owned()
}

/// The text of the element with id `id`.
fn by_id(html: &str, id: &str) -> String {
    let at = html
        .find(&format!("id=\"{id}\""))
        .unwrap_or_else(|| panic!("no #{id}"));
    let rest = &html[at..];
    text_of(&rest[rest.find('>').unwrap() + 1..rest.find("</").unwrap()])
}

/// Three users over two distributors, two models and three conversations: every
/// grouping of the report adds up to the ledger's charges, the day's chart has
/// them, conversations are named on the user's pages, and a distributor's admin
/// sees only its own figures.
#[actix_web::test]
async fn reports_add_up_per_grouping_and_stop_at_the_admins_reach() {
    let app = spawn_app(TestOptions::default()).await;
    app.default_plan(1_000_000);
    let alfa = alfa(&app);
    chat(
        &app,
        CLIENT_KEY,
        "65f1c0ffee0000000000d001",
        "dora@direta.com.br",
        "fill",
        "conv-a",
    )
    .await;
    chat(
        &app,
        CLIENT_KEY,
        "65f1c0ffee0000000000d001",
        "dora@direta.com.br",
        "fill",
        "conv-a",
    )
    .await;
    chat(
        &app,
        CLIENT_KEY,
        "65f1c0ffee0000000000d001",
        "dora@direta.com.br",
        "fake-model",
        "conv-b",
    )
    .await;
    chat(
        &app,
        KEY_ALFA,
        "65f1c0ffee0000000000a001",
        "ana@alfa.com.br",
        "fill",
        "conv-c",
    )
    .await;
    app.settled();
    let total: i64 = app
        .ledger()
        .list_users()
        .unwrap()
        .iter()
        .map(|u| app.charged(u.external_id.as_deref().unwrap()))
        .sum();
    assert!(total > 0);
    let admin = Admin::signed_in(&app).await;
    for group in [
        "day",
        "user",
        "plan",
        "model",
        "distributor",
        "conversation",
    ] {
        let html = admin.page(&format!("/admin/reports?group={group}")).await;
        let charged = by_id(&html, "total-charged").replace('.', "");
        assert_eq!(charged, total.to_string(), "{group}");
        assert_eq!(by_id(&html, "total-requests"), "4", "{group}");
        assert!(html.contains("<svg"), "{group}: a chart");
    }
    let by_conversation = cells(
        &admin.page("/admin/reports?group=conversation").await,
        "report",
    );
    let convs: Vec<&str> = by_conversation.iter().map(|r| r[0].as_str()).collect();
    assert_eq!(convs.len(), 3, "{by_conversation:?}");
    assert!(convs.contains(&"conv-a") && convs.contains(&"conv-c"));
    let by_distributor = cells(
        &admin.page("/admin/reports?group=distributor").await,
        "report",
    );
    assert!(
        by_distributor.iter().any(|r| r[0] == "Alfa" && r[1] == "1"),
        "{by_distributor:?}"
    );
    // A bad period or grouping is a readable 400, not a guess.
    for bad in [
        "?from=2026-13-01&to=2026-12-01",
        "?from=2026-12-02&to=2026-12-01",
        "?group=senha",
    ] {
        assert_eq!(
            admin.get(&format!("/admin/reports{bad}")).await.0,
            StatusCode::BAD_REQUEST
        );
    }

    // The user's own page and their admin page name the conversations.
    let dora = app.user_id("dora@direta.com.br");
    let page = admin.page(&format!("/admin/users/{dora}")).await;
    assert!(page.contains("conv-a") && page.contains("conv-b") && !page.contains("conv-c"));

    // Alfa's admin sees Alfa's use only.
    add_admin_of(app.ledger(), "admin@alfa.com.br", Some(alfa));
    let alfa_admin = signed_in_admin_of(&app, "admin@alfa.com.br").await;
    let mine = cells(
        &alfa_admin.page("/admin/reports?group=user").await,
        "report",
    );
    assert_eq!(mine.len(), 1, "{mine:?}");
    assert_eq!(mine[0][0], "ana@alfa.com.br");
    assert_eq!(
        alfa_admin.get("/admin/reports?group=distributor").await.0,
        StatusCode::NOT_FOUND
    );
    let csv = alfa_admin.page("/admin/reports/usage.csv").await;
    let lines: Vec<&str> = csv.lines().collect();
    assert_eq!(lines.len(), 2, "{csv}");
    assert!(lines[1].contains("ana@alfa.com.br") && lines[1].contains("conv-c"));
}

/// The exports: a header, one line per usage record or ledger entry in the
/// period, values a spreadsheet reads as text, and nothing outside the period.
#[actix_web::test]
async fn exports_are_safe_csv_of_the_period() {
    let app = spawn_app(TestOptions::default()).await;
    app.default_plan(1_000_000);
    chat(
        &app,
        CLIENT_KEY,
        "65f1c0ffee0000000000e001",
        "eva@direta.com.br",
        "fill",
        "=SUM(1,2)",
    )
    .await;
    chat(
        &app,
        CLIENT_KEY,
        "65f1c0ffee0000000000e001",
        "eva@direta.com.br",
        "fill",
        "conv,2",
    )
    .await;
    app.settled();
    let admin = Admin::signed_in(&app).await;
    let res = admin
        .client
        .get(format!("{}/admin/reports/usage.csv", app.address))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(res.headers()["content-type"], "text/csv; charset=utf-8");
    assert!(
        res.headers()["content-disposition"]
            .to_str()
            .unwrap()
            .starts_with("attachment; filename=\"tokengate-uso-")
    );
    let csv = res.text().await.unwrap();
    let mut reader = csv::Reader::from_reader(csv.as_bytes());
    let headers = reader.headers().unwrap().clone();
    assert!(
        !headers.iter().any(|h| h == "distributor"),
        "no distributors here: {headers:?}"
    );
    let records: Vec<csv::StringRecord> = reader.records().map(Result::unwrap).collect();
    assert_eq!(records.len(), 2);
    let conv = headers.iter().position(|h| h == "conversation_id").unwrap();
    let charged = headers.iter().position(|h| h == "charged").unwrap();
    // A formula arrives as text; a comma stays inside its field.
    assert!(records.iter().any(|r| &r[conv] == "'=SUM(1,2)"));
    assert!(records.iter().any(|r| &r[conv] == "conv,2"));
    let sum: i64 = records
        .iter()
        .map(|r| r[charged].parse::<i64>().unwrap())
        .sum();
    assert_eq!(sum, app.charged("eva@direta.com.br"));
    let ledger_csv = admin.page("/admin/reports/ledger.csv").await;
    let mut reader = csv::Reader::from_reader(ledger_csv.as_bytes());
    let kinds: Vec<String> = reader.records().map(|r| r.unwrap()[3].to_owned()).collect();
    assert!(
        kinds.contains(&"cycle_grant".to_owned()) && kinds.contains(&"usage".to_owned()),
        "{kinds:?}"
    );
    // A period that holds nothing: the header alone.
    let empty = admin
        .page("/admin/reports/usage.csv?from=2020-01-01&to=2020-01-31")
        .await;
    assert_eq!(empty.lines().count(), 1, "{empty}");
}

/// A million usage records, one a second, leave a running server as CSV while its resident memory
/// grows by less than 64 MiB: the export is written a page at a time, never held.
/// Records the figures (BENCHMARKS.md, "Exports").
#[actix_web::test]
async fn a_million_usage_records_export_with_bounded_memory() {
    // The calendar passes of the suite (a month's and a year's last second) check
    // the same with a tenth: the million is measured once per backend.
    let records: i64 = if std::env::var_os("TOKENGATE_TEST_START").is_some() {
        100_000
    } else {
        1_000_000
    };
    let db = TestDb::new();
    let fake = crate::fake_provider::FakeProvider::start();
    let port = free_port();
    let base = format!("http://127.0.0.1:{port}");
    let mut server = tokengate_process(port, &db.url, &fake.base_url(), &[]);
    let client = reqwest::Client::new();
    wait_ready(&client, &base).await;
    assert_eq!(
        chat_process(
            &client,
            &base,
            USER,
            &chat_body("fill", "oi", false, Some(10))
        )
        .await
        .status(),
        200
    );
    // A million records of that user, written straight into the database, whose
    // statistics are then current (as autovacuum keeps them).
    let ledger = observer_ledger(&db.url, &fake.base_url());
    ledger.db().write_blocking(move |c| {
        let sql = match c {
            tokengate::db::AnyConnection::Sqlite(_) => format!(
                "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < {records}) \
                 INSERT INTO usage_records (request_id, user_id, model, endpoint, stream, prompt_tokens, \
                 completion_tokens, charged, estimated, outcome, status, latency_ms, created_at, conversation_id) \
                 SELECT 'bulk-' || i, (SELECT MIN(id) FROM users), 'fill', 'chat', 0, 10, 100, 110, 0, \
                 'completed', 200, 5, datetime((SELECT MAX(created_at) FROM usage_records), \
                 '-' || i || ' seconds'), 'conv-' || (i % 1000) FROM n; ANALYZE usage_records"
            ),
            tokengate::db::AnyConnection::Postgresql(_) => format!(
                "INSERT INTO usage_records (request_id, user_id, model, endpoint, stream, prompt_tokens, \
                 completion_tokens, charged, estimated, outcome, status, latency_ms, created_at, conversation_id) \
                 SELECT 'bulk-' || i, (SELECT MIN(id) FROM users), 'fill', 'chat', 0, 10, 100, 110, 0, \
                 'completed', 200, 5, date_trunc('second', (SELECT MAX(created_at) FROM usage_records)) - i * interval '1 second', \
                 'conv-' || (i % 1000) FROM generate_series(1, {records}) AS i; ANALYZE usage_records"
            ),
        };
        diesel::connection::SimpleConnection::batch_execute(c, &sql)?;
        Ok::<_, tokengate::db::StoreError>(())
    })
    .unwrap();
    let admin = Admin::at(&base);
    let res = admin
        .sign_in_as(crate::admin::ADMIN_EMAIL, crate::admin::ADMIN_PASSWORD)
        .await;
    assert_eq!(res.status(), StatusCode::SEE_OTHER);
    let pid = server.id();
    let before = peak_rss_kib(pid);
    let started = std::time::Instant::now();
    // A period that holds them all: they reach 12 days back, one a second.
    let today = ledger.now().date_naive();
    let from = today - chrono::Duration::days(40);
    let mut res = admin
        .client
        .get(format!(
            "{base}/admin/reports/usage.csv?from={from}&to={today}"
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    let (mut lines, mut bytes) = (0_i64, 0_usize);
    while let Some(chunk) = res.chunk().await.unwrap() {
        lines += chunk.iter().filter(|b| **b == b'\n').count() as i64;
        bytes += chunk.len();
    }
    let took = started.elapsed();
    let after = peak_rss_kib(pid);
    assert_eq!(lines, records + 2, "the header and every record");
    let grew = after.saturating_sub(before);
    eprintln!(
        "export of {records} usage records: {bytes} bytes in {took:.1?}; peak resident memory {before} KiB before, {after} KiB after (+{grew} KiB)"
    );
    assert!(grew < 64 * 1024, "the export grew the server by {grew} KiB");
    assert!(
        server.try_wait().unwrap().is_none(),
        "the server is still up"
    );
}

/// The highest resident set size process `pid` has had, in KiB (`VmHWM`).
fn peak_rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

/// Revenue from plan prices over any period: the current cycle's is live, a past
/// cycle's is what its paying users' plans were when it closed (a later plan change
/// does not rewrite it), and a cycle without a record says so. Two instances see
/// the month turn; the month is recorded once.
#[actix_web::test]
async fn revenue_of_past_cycles_is_what_their_plans_brought_when_they_closed() {
    use chrono::{TimeZone, Utc};
    use std::time::Duration;
    use tokengate::domain::Brl;
    use tokengate::ledger::parse_user_ref;
    let fast = vec![("TOKENGATE_HEARTBEAT_SECS", "0.1".to_owned())];
    let a = spawn_app(TestOptions {
        env: fast.clone(),
        start: mid_november(),
        ..TestOptions::default()
    })
    .await;
    let b = spawn_replica_with(
        &a,
        TestOptions {
            env: fast,
            start: mid_november(),
            ..TestOptions::default()
        },
    )
    .await;
    let priced = |name: &str, centavos: i64| {
        let mut spec = plan_spec(name, 1_000_000);
        spec.monthly_price = Brl::from_centavos(centavos);
        spec
    };
    let ledger = a.ledger();
    ledger
        .create_plan(&priced("Básico", 3_000), true, &Actor::Cli)
        .unwrap();
    let pro = ledger
        .create_plan(&priced("Pro", 9_000), false, &Actor::Cli)
        .unwrap();
    for (user, email) in [
        ("65f1c0ffee0000000000f101", "u1@direta.com.br"),
        ("65f1c0ffee0000000000f102", "u2@direta.com.br"),
        ("65f1c0ffee0000000000f103", "u3@direta.com.br"),
        ("65f1c0ffee0000000000f104", "u4@direta.com.br"),
    ] {
        chat(&a, CLIENT_KEY, user, email, "fill", "c").await;
    }
    let id = |email: &str| a.user_id(email);
    ledger
        .change_plan(id("u3@direta.com.br"), pro, &Actor::Cli)
        .unwrap();
    // A suspended user pays nothing.
    ledger
        .set_suspended(&parse_user_ref("u4@direta.com.br"), true, &Actor::Cli)
        .unwrap();
    // A user who came on December 2nd, before anything saw the month turn (as
    // after an outage over it): not November's.
    ledger
        .db()
        .write_blocking(|c| {
            diesel::connection::SimpleConnection::batch_execute(
                c,
                "INSERT INTO users (external_id, email, plan_id, created_at, updated_at) \
                 VALUES ('65f1c0ffee0000000000f105', 'u5@direta.com.br', \
                 (SELECT id FROM plans WHERE name = 'Básico'), \
                 '2026-12-02 12:00:00', '2026-12-02 12:00:00')",
            )?;
            Ok::<_, tokengate::db::StoreError>(())
        })
        .unwrap();

    // December: both instances see the month turn.
    let december = Utc.with_ymd_and_hms(2026, 12, 10, 12, 0, 0).unwrap();
    a.set_clock(december);
    b.set_clock(december);
    let admin = Admin::signed_in(&a).await;
    let november = "/admin/reports?group=plan&from=2026-11-01&to=2026-11-30";
    wait_until(Duration::from_secs(30), || {
        let admin = &admin;
        async move { !admin.page(november).await.contains("Sem registro") }
    })
    .await;
    // After November closed, a user moves to Pro: November stays as it was.
    ledger
        .change_plan(id("u2@direta.com.br"), pro, &Actor::Cli)
        .unwrap();
    let revenue_of = |html: &str| -> Vec<(String, String)> {
        cells(html, "report")
            .into_iter()
            .map(|r| (r[0].clone(), r.last().unwrap().clone()))
            .collect()
    };
    let html = admin.page(november).await;
    let mut rows = revenue_of(&html);
    rows.sort();
    assert_eq!(
        rows,
        [
            ("Básico".to_owned(), "R$ 60,00".to_owned()),
            ("Pro".to_owned(), "R$ 90,00".to_owned())
        ],
        "November: Básico twice, Pro once, nobody suspended nor come later"
    );
    assert_eq!(by_id(&html, "total-revenue"), "R$ 150,00");
    assert!(!by_id(&html, "revenue-note").contains("meio de um mês"));
    let december_page = admin
        .page("/admin/reports?group=plan&from=2026-12-01&to=2026-12-31")
        .await;
    assert_eq!(by_id(&december_page, "total-revenue"), "R$ 240,00");
    assert!(by_id(&december_page, "revenue-note").contains("2026-12 (atual, até agora)"));
    let both = admin
        .page("/admin/reports?group=plan&from=2026-11-01&to=2026-12-31")
        .await;
    assert_eq!(by_id(&both, "total-revenue"), "R$ 390,00");
    // A plan with no use in the period is listed for its revenue; a part of a
    // month counts the month whole, and says so.
    let quiet = admin
        .page("/admin/reports?group=plan&from=2026-12-01&to=2026-12-05")
        .await;
    assert_eq!(revenue_of(&quiet).len(), 2, "{quiet}");
    assert!(by_id(&quiet, "revenue-note").contains("começa ou termina no meio de um mês"));
    // Per user: what each one's plan brought.
    let users = cells(
        &admin
            .page("/admin/reports?group=user&from=2026-11-01&to=2026-12-31")
            .await,
        "report",
    );
    let u2 = users.iter().find(|r| r[0] == "u2@direta.com.br").unwrap();
    assert_eq!(u2.last().unwrap(), "R$ 120,00", "{users:?}");
    // October has no record: said, not guessed.
    let october = admin
        .page("/admin/reports?group=plan&from=2026-10-01&to=2026-11-30")
        .await;
    assert!(
        by_id(&october, "revenue-note").contains("Sem registro (não contados): 2026-10"),
        "{october}"
    );
    assert_eq!(by_id(&october, "total-revenue"), "R$ 150,00");
    // A replica whose clock says October opens nothing: October stays unrecorded
    // whoever turns next.
    b.set_clock(Utc.with_ymd_and_hms(2026, 10, 20, 12, 0, 0).unwrap());
    assert!(b.ledger().turn_cycles().unwrap().is_empty());
    assert!(a.ledger().turn_cycles().unwrap().is_empty());
    let october = admin
        .page("/admin/reports?group=plan&from=2026-10-01&to=2026-11-30")
        .await;
    assert!(by_id(&october, "revenue-note").contains("Sem registro (não contados): 2026-10"));
    // One whose clock runs ahead to March closes December early, but the others
    // go on opening and closing the months after.
    b.set_clock(Utc.with_ymd_and_hms(2027, 3, 10, 12, 0, 0).unwrap());
    b.ledger().turn_cycles().unwrap();
    a.set_clock(Utc.with_ymd_and_hms(2027, 1, 10, 12, 0, 0).unwrap());
    a.ledger().turn_cycles().unwrap();
    a.set_clock(Utc.with_ymd_and_hms(2027, 2, 10, 12, 0, 0).unwrap());
    a.ledger().turn_cycles().unwrap();
    // Two months on, the session has long ended.
    let admin = Admin::signed_in(&a).await;
    let january = admin
        .page("/admin/reports?group=plan&from=2027-01-01&to=2027-01-31")
        .await;
    assert!(
        by_id(&january, "revenue-note").contains(": 2027-01."),
        "{january}"
    );
    assert_eq!(by_id(&january, "total-revenue"), "R$ 240,00");
}
