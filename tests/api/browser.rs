//! The dashboard in a real browser: Debian's headless Chromium driven over WebDriver
//! (chromedriver + fantoccini). An admin signs in, finds a blocked user, grants
//! credits and sees the balance change. Screenshots of the overview, the users list
//! and the user page are saved under `test-artifacts/screenshots/` for review.

use crate::admin::{ADMIN_EMAIL, ADMIN_PASSWORD};
use crate::helpers::*;
use fantoccini::{ClientBuilder, Locator};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

struct Driver {
    child: Child,
    port: u16,
    _profile: tempfile::TempDir,
}

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn chromedriver() -> Driver {
    let bin = std::env::var("TOKENGATE_TEST_CHROMEDRIVER")
        .unwrap_or_else(|_| "/usr/bin/chromedriver".into());
    let port = free_port();
    let child = Command::new(&bin)
        .arg(format!("--port={port}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| {
            panic!("cannot start {bin} (scripts/test.sh installs chromium-driver): {e}")
        });
    wait_until(Duration::from_secs(30), || async move {
        tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_ok()
    })
    .await;
    Driver {
        child,
        port,
        _profile: tempfile::tempdir().unwrap(),
    }
}

/// A headless Chromium session on `driver`, with a window of `width` x `height`.
async fn chromium(driver: &Driver, width: u32, height: u32) -> fantoccini::Client {
    chromium_saving_to(driver, width, height, None).await
}

/// [`chromium`], saving downloads into `downloads` when given.
async fn chromium_saving_to(
    driver: &Driver,
    width: u32,
    height: u32,
    downloads: Option<&std::path::Path>,
) -> fantoccini::Client {
    let mut caps = serde_json::Map::new();
    caps.insert(
        "goog:chromeOptions".into(),
        serde_json::json!({
            "binary": std::env::var("TOKENGATE_TEST_CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into()),
            "args": [
                "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--disable-background-networking", "--disable-component-update",
                "--disable-sync", "--no-first-run", format!("--window-size={width},{height}"),
                format!("--user-data-dir={}", driver._profile.path().display()),
            ],
            "prefs": {
                "download.default_directory": downloads.map(|d| d.display().to_string()),
                "download.prompt_for_download": false,
            },
        }),
    );
    ClientBuilder::native()
        .capabilities(caps)
        .connect(&format!("http://127.0.0.1:{}", driver.port))
        .await
        .expect("chromedriver session")
}

fn screenshot_path(name: &str) -> PathBuf {
    let backend = match backend() {
        Backend::Sqlite => "sqlite",
        Backend::Postgres => "postgres",
    };
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("test-artifacts/screenshots");
    std::fs::create_dir_all(&dir).unwrap();
    dir.join(format!("{backend}-{name}.png"))
}

async fn save(client: &fantoccini::Client, name: &str) {
    let png = client.screenshot().await.unwrap();
    assert!(png.starts_with(b"\x89PNG"), "not a PNG");
    std::fs::write(screenshot_path(name), png).unwrap();
}

/// Waits (bounded) until the element's text satisfies `ok`, and returns it. Polls
/// because a click or submit may return before the next page has replaced this one
/// (an element of the old page then goes stale).
async fn text_when(client: &fantoccini::Client, css: &str, ok: impl Fn(&str) -> bool) -> String {
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let mut last = String::new();
    loop {
        if let Ok(el) = client.find(Locator::Css(css)).await
            && let Ok(text) = el.text().await
        {
            if ok(&text) {
                return text;
            }
            last = text;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{css}: text {last:?} never matched"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn expect_text(client: &fantoccini::Client, css: &str, expected: &str) {
    text_when(client, css, |t| t == expected).await;
}

#[actix_web::test]
async fn an_admin_finds_a_blocked_user_and_grants_credits_in_chromium() {
    let app = spawn_app(TestOptions::default()).await;
    // Some history for the chart and lists, then one user who spent everything.
    for who in ["ana-1", "bruno-2", "carla-3"] {
        app.chat_as(
            who,
            &chat_body("fake-model", "olá, tudo bem?", false, Some(40)),
        )
        .await;
    }
    app.default_plan(40);
    let res = app
        .post("/v1/chat/completions")
        .header("x-librechat-user-id", "maria-blocked")
        .header("x-librechat-user-email", "maria@example.com")
        .header("x-librechat-user-name", "Maria Souza")
        .body(chat_body("fake-model", "oi", false, Some(200)).to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let refused = app
        .chat_as(
            "maria-blocked",
            &chat_body("fake-model", "oi", false, Some(5)),
        )
        .await;
    assert_eq!(refused.status(), 429);
    let maria = app.user_id("maria-blocked");

    let driver = chromedriver().await;
    let client = chromium(&driver, 1280, 1000).await;

    // Sign in.
    sign_in(&client, &app).await;
    save(&client, "overview").await;

    // The overview links to the blocked users; Maria is there.
    client
        .find(Locator::Css("a[href='/admin/users?state=blocked']"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    let link = client
        .wait()
        .for_element(Locator::Css(&format!(
            "table.users a[href='/admin/users/{maria}']"
        )))
        .await
        .unwrap();
    assert_eq!(link.text().await.unwrap(), "maria@example.com");
    client
        .goto(&format!("{}/admin/users", app.address))
        .await
        .unwrap();
    save(&client, "users").await;
    client
        .goto(&format!("{}/admin/users?state=blocked", app.address))
        .await
        .unwrap();
    client
        .wait()
        .for_element(Locator::Css(&format!(
            "table.users a[href='/admin/users/{maria}']"
        )))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    expect_text(&client, "main h1", "maria@example.com").await;
    expect_text(&client, "#remaining", "0").await;

    // Grant credits; the page shows the new balance.
    let grant = client
        .form(Locator::Css(&format!(
            "form[action='/admin/users/{maria}/credits']"
        )))
        .await
        .unwrap();
    grant.set_by_name("tokens", "100.000").await.unwrap();
    grant
        .set_by_name("note", "Liberado pelo suporte")
        .await
        .unwrap();
    grant.submit().await.unwrap();
    text_when(&client, "p.flash.ok", |t| {
        t.contains("Créditos concedidos: 100.000 tokens.")
    })
    .await;
    expect_text(&client, "#credits", "100.000").await;
    expect_text(&client, "#remaining", "100.000").await;
    save(&client, "user-detail").await;

    // The same pages on a phone-sized screen.
    client.set_window_size(390, 844).await.unwrap();
    client
        .goto(&format!("{}/admin", app.address))
        .await
        .unwrap();
    expect_text(&client, "main h1", "Visão geral").await;
    save(&client, "overview-phone").await;

    client.close().await.unwrap();
    assert_eq!(app.summary("maria-blocked").credits, 100_000);
    let res = app
        .chat_as(
            "maria-blocked",
            &chat_body("fake-model", "oi", false, Some(5)),
        )
        .await;
    assert_eq!(res.status(), 200, "the grant works on her next message");
}

/// Signs in to the dashboard as the first admin: the overview is shown.
async fn sign_in(client: &fantoccini::Client, app: &TestApp) {
    client
        .goto(&format!("{}/admin", app.address))
        .await
        .unwrap();
    let form = client
        .form(Locator::Css("form[action='/admin/login']"))
        .await
        .unwrap();
    form.set_by_name("email", ADMIN_EMAIL).await.unwrap();
    form.set_by_name("password", ADMIN_PASSWORD).await.unwrap();
    form.submit().await.unwrap();
    expect_text(client, "main h1", "Visão geral").await;
}

/// Chats until the user is refused, and returns the refusal's status.
async fn spend_until_blocked(app: &TestApp, user: &str) -> u16 {
    loop {
        let res = app
            .chat_as(user, &chat_body("w1000", "oi", false, Some(40)))
            .await;
        if res.status() != 200 {
            return res.status().as_u16();
        }
        app.settled();
    }
}

async fn submit_form(client: &fantoccini::Client, action: &str, fields: &[(&str, &str)]) {
    client
        .wait()
        .for_element(Locator::Css(&format!("form[action='{action}']")))
        .await
        .unwrap();
    let form = client
        .form(Locator::Css(&format!("form[action='{action}']")))
        .await
        .unwrap();
    for (name, value) in fields {
        form.set_by_name(name, value).await.unwrap();
    }
    form.submit().await.unwrap();
}

#[actix_web::test]
async fn a_user_opens_their_page_from_the_alert_redeems_a_code_and_gets_credits_in_chromium() {
    use crate::smtp::{SmtpOptions, SmtpServer};
    const PUBLIC_URL: &str = "http://tokens.example.test";
    let smtp = SmtpServer::start(SmtpOptions::default()).await;
    let app = spawn_app(TestOptions {
        env: vec![
            ("TOKENGATE_SMTP_URL", smtp.url()),
            (
                "TOKENGATE_ADMIN_EMAILS",
                "financeiro@iasolaris.com.br".into(),
            ),
            ("TOKENGATE_PUBLIC_URL", PUBLIC_URL.into()),
        ],
        start: mid_november(),
        ..TestOptions::default()
    })
    .await;
    app.default_plan(1_000_000);
    app.ledger()
        .set_weights(
            "w1000",
            tokengate::domain::Weights::from_milli(1000, 1_000_000)
                .unwrap()
                .into(),
            &tokengate::ledger::Actor::Cli,
        )
        .unwrap();
    // Real chats, as LibreChat sends them, past 80% of the plan.
    let user = "rosa-1";
    for _ in 0..21 {
        let res = app
            .post("/v1/chat/completions")
            .header("x-librechat-user-id", user)
            .header("x-librechat-user-email", "rosa@example.com")
            .header("x-librechat-user-name", "Rosa Lima")
            .body(chat_body("w1000", "oi", false, Some(40)).to_string())
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 200);
    }
    app.settled();
    let alert = smtp.wait_for(2).await;
    let alert = alert
        .iter()
        .find(|m| m.to() == "rosa@example.com")
        .expect("the 80% alert to the user");
    let link = alert
        .text
        .split_whitespace()
        .find(|w| w.starts_with(&format!("{PUBLIC_URL}/me/link/")))
        .expect("a link to the page")
        .trim_start_matches(PUBLIC_URL)
        .to_owned();

    let driver = chromedriver().await;
    let client = chromium(&driver, 390, 844).await;

    // The mail's link, then its button: the user's page, with pt-BR figures.
    client
        .goto(&format!("{}{link}", app.address))
        .await
        .unwrap();
    client
        .wait()
        .for_element(Locator::Css("form[action='/me/link'] button"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    let summary = app.summary(user);
    let left = tokengate::i18n::tokens(summary.remaining, tokengate::config::Locale::PtBr);
    expect_text(&client, "#remaining", &left).await;
    expect_text(&client, "#renews", "renova em 01/12/2026").await;
    expect_text(&client, "#plan", "Teste 1000000 · 1.000.000 tokens por mês").await;
    text_when(&client, "section.balance .words", |t| {
        t.starts_with("Cerca de ") && t.contains(&format!("Você já usou {}%", summary.used_percent))
    })
    .await;
    text_when(&client, "ul.me-alerts", |t| {
        t.contains("80% usados · email enviado")
    })
    .await;
    save(&client, "me-phone").await;
    client.set_window_size(1280, 1000).await.unwrap();
    client.refresh().await.unwrap();
    expect_text(&client, "#remaining", &left).await;
    save(&client, "me-desktop").await;

    // Spent down to nothing; a code brings the chat back.
    assert_eq!(spend_until_blocked(&app, user).await, 429);
    let (_, codes) = app
        .ledger()
        .create_code_batch(
            tokengate::domain::TokenAmount::new(250_000).unwrap(),
            1,
            chrono::NaiveDate::from_ymd_opt(2026, 12, 31)
                .unwrap()
                .and_hms_opt(0, 0, 0)
                .unwrap(),
            None,
            &tokengate::ledger::Actor::Cli,
        )
        .unwrap();
    client.goto(&format!("{}/me", app.address)).await.unwrap();
    submit_form(&client, "/me/redeem", &[("code", &codes[0].to_lowercase())]).await;
    text_when(&client, "#done", |t| t.contains("Código aceito")).await;
    expect_text(
        &client,
        "#credits",
        "250.000 tokens (não expiram na renovação)",
    )
    .await;
    let res = app
        .chat_as(user, &chat_body("w1000", "oi", false, Some(40)))
        .await;
    assert_eq!(res.status(), 200, "served after the code");

    // Spent again; the user asks for credits, an admin approves in the dashboard.
    assert_eq!(spend_until_blocked(&app, user).await, 429);
    client.goto(&format!("{}/me", app.address)).await.unwrap();
    submit_form(
        &client,
        "/me/credit-request",
        &[("tokens", "200.000"), ("note", "Relatório do mês")],
    )
    .await;
    text_when(&client, "#done", |t| t.contains("Pedido enviado")).await;
    text_when(&client, "#open-request", |t| {
        t.contains("Seu pedido de 200.000 tokens")
    })
    .await;
    save(&client, "me-requested").await;

    client
        .goto(&format!("{}/admin", app.address))
        .await
        .unwrap();
    submit_form(
        &client,
        "/admin/login",
        &[("email", ADMIN_EMAIL), ("password", ADMIN_PASSWORD)],
    )
    .await;
    expect_text(&client, "main h1", "Visão geral").await;
    client
        .find(Locator::Css("a[href='/admin/requests']"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    text_when(&client, "#open-requests", |t| {
        t.contains("rosa@example.com") && t.contains("200.000") && t.contains("Relatório do mês")
    })
    .await;
    save(&client, "requests").await;
    client
        .find(Locator::Css(
            "#open-requests form[action$='/approve'] button",
        ))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    text_when(&client, "p.flash.ok", |t| {
        t.contains("200.000 tokens concedidos")
    })
    .await;
    let res = app
        .chat_as(user, &chat_body("w1000", "oi", false, Some(40)))
        .await;
    assert_eq!(res.status(), 200, "served after the approval");
    // The approval's mail comes after the alerts': wait for it, not for a count.
    let approved = |smtp: &SmtpServer| {
        smtp.messages().iter().any(|m| {
            m.to() == "rosa@example.com"
                && m.subject == "Seu pedido foi aprovado: 200.000 tokens a mais"
        })
    };
    wait_until(std::time::Duration::from_secs(30), || {
        let sent = approved(&smtp);
        async move { sent }
    })
    .await;
    client.goto(&format!("{}/me", app.address)).await.unwrap();
    text_when(&client, "#last-request", |t| {
        t.starts_with("Último pedido: 200.000 tokens, aprovado")
    })
    .await;
    // The whole page at once: chart, models, requests, alerts.
    client.set_window_size(1280, 2400).await.unwrap();
    client.refresh().await.unwrap();
    text_when(&client, "#recent", |t| t.contains("w1000")).await;
    save(&client, "me-whole").await;
    client.close().await.unwrap();
}

/// The README's way to the dashboard when only `/me` is published: `ssh -L` and
/// http://localhost:PORT/admin, while `TOKENGATE_PUBLIC_URL` names the https
/// address users know. Signing in and every form after it work there alike.
#[actix_web::test]
async fn an_admin_through_an_ssh_tunnel_signs_in_and_acts() {
    let app = spawn_app(TestOptions {
        env: vec![("TOKENGATE_PUBLIC_URL", "https://tokens.example.test".into())],
        ..TestOptions::default()
    })
    .await;
    let res = app
        .chat_as(
            "tunnel-user",
            &chat_body("fake-model", "oi", false, Some(5)),
        )
        .await;
    assert_eq!(res.status(), 200);
    let user = app.user_id("tunnel-user");
    let local = app.address.replace("127.0.0.1", "localhost");
    let driver = chromedriver().await;
    let client = chromium(&driver, 1280, 1000).await;
    client.goto(&format!("{local}/admin")).await.unwrap();
    let form = client
        .form(Locator::Css("form[action='/admin/login']"))
        .await
        .unwrap();
    form.set_by_name("email", ADMIN_EMAIL).await.unwrap();
    form.set_by_name("password", ADMIN_PASSWORD).await.unwrap();
    form.submit().await.unwrap();
    expect_text(&client, "main h1", "Visão geral").await;
    client
        .goto(&format!("{local}/admin/users/{user}"))
        .await
        .unwrap();
    let grant = client
        .form(Locator::Css(&format!(
            "form[action='/admin/users/{user}/credits']"
        )))
        .await
        .unwrap();
    grant.set_by_name("tokens", "1.000").await.unwrap();
    grant.submit().await.unwrap();
    text_when(&client, "p.flash.ok", |t| t.contains("Créditos concedidos")).await;
    client.close().await.unwrap();
    assert_eq!(app.summary("tunnel-user").credits, 1_000);
}

/// An admin creates the Pro plan in the dashboard (models and message limits), moves
/// a user to it, and the user's own page shows the plan's parts.
#[actix_web::test]
async fn an_admin_creates_pro_moves_a_user_and_their_page_shows_it_in_chromium() {
    let app = spawn_app(TestOptions::default()).await;
    let user = "lia-7";
    let res = app
        .post("/v1/chat/completions")
        .header("x-librechat-user-id", user)
        .header("x-librechat-user-email", "lia@example.com")
        .body(chat_body("fake-model", "oi", false, Some(20)).to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let lia = app.user_id(user);

    let driver = chromedriver().await;
    let client = chromium(&driver, 1280, 1000).await;
    sign_in(&client, &app).await;

    client
        .goto(&format!("{}/admin/plans", app.address))
        .await
        .unwrap();
    submit_form(
        &client,
        "/admin/plans",
        &[
            ("name", "Pro"),
            ("allowance", ""),
            ("input_allowance", "3.000.000"),
            ("output_allowance", "1.500.000"),
            ("overage_cap", "1.000.000"),
            ("overage_price", "0,10"),
            ("models", "fake-model, gpt-4o"),
            ("per_day", "200"),
            ("per_month", "3.000"),
        ],
    )
    .await;
    text_when(&client, "p.flash.ok", |t| t.contains("Plano criado: Pro.")).await;
    save(&client, "plans").await;
    let pro = app.ledger().plan("Pro").unwrap();

    client
        .goto(&format!("{}/admin/users/{lia}", app.address))
        .await
        .unwrap();
    submit_form(
        &client,
        &format!("/admin/users/{lia}/plan"),
        &[("plan_id", &pro.id.to_string())],
    )
    .await;
    text_when(&client, "main", |t| t.contains("Plano Pro")).await;
    assert_eq!(app.summary(user).plan, "Pro");

    // The user's page, from a link as their mails carry.
    let token = crate::me::link_for(&app, lia).await;
    client
        .goto(&format!("{}/me/link/{token}", app.address))
        .await
        .unwrap();
    client
        .wait()
        .for_element(Locator::Css("form[action='/me/link'] button"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    expect_text(&client, "#plan", "Pro · 4.500.000 tokens por mês").await;
    // Each side's tokens left (the chat before the move counts), and the overage.
    text_when(&client, "#input-left", |t| {
        t.contains(" restantes de 3.000.000 (o que você envia")
    })
    .await;
    text_when(&client, "#output-left", |t| {
        t.contains(" restantes de 1.500.000 (as respostas)")
    })
    .await;
    expect_text(
        &client,
        "#overage",
        "0 tokens · R$ 0,00 (depois da franquia e dos créditos, cobrado a R$ 0,10 por 1.000 tokens, até 1.000.000 tokens por mês)",
    )
    .await;
    expect_text(&client, "#models", "fake-model, gpt-4o").await;
    text_when(&client, "#messages-today", |t| {
        t.starts_with("restam 199 de 200")
    })
    .await;
    expect_text(&client, "#messages-month", "restam 2.999 de 3.000").await;
    save(&client, "me-plan").await;
    client.close().await.unwrap();
}

/// A distributor's admin signs in in Chromium, sees its own users and not another
/// distributor's, and downloads its usage report as CSV: the file holds its users'
/// requests only.
#[actix_web::test]
async fn a_distributors_admin_sees_only_its_users_and_downloads_its_report_in_chromium() {
    let app = spawn_app(TestOptions::default()).await;
    app.default_plan(1_000_000);
    let sul = named_distributor(app.ledger(), "Rede Sul", "tg-browser-sul-key-0123456789");
    named_distributor(
        app.ledger(),
        "Rede Norte",
        "tg-browser-norte-key-0123456789",
    );
    for (key, user, email, chat) in [
        (
            "tg-browser-sul-key-0123456789",
            "65f1c0ffee0000000000f001",
            "sara@sul.com.br",
            "conversa-sara",
        ),
        (
            "tg-browser-sul-key-0123456789",
            "65f1c0ffee0000000000f002",
            "saulo@sul.com.br",
            "conversa-saulo",
        ),
        (
            "tg-browser-norte-key-0123456789",
            "65f1c0ffee0000000000f003",
            "nina@norte.com.br",
            "conversa-nina",
        ),
    ] {
        let res = app
            .client
            .post(format!("{}/v1/chat/completions", app.address))
            .bearer_auth(key)
            .header("content-type", "application/json")
            .header("x-librechat-user-id", user)
            .header("x-librechat-user-email", email)
            .header("x-librechat-conversation-id", chat)
            .body(chat_body("fill", "palavra palavra", false, Some(50)).to_string())
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 200);
    }
    app.settled();
    add_admin_of(app.ledger(), "gerente@sul.com.br", Some(sul));

    let downloads = tempfile::tempdir().unwrap();
    let driver = chromedriver().await;
    let client = chromium_saving_to(&driver, 1280, 1000, Some(downloads.path())).await;
    client
        .goto(&format!("{}/admin", app.address))
        .await
        .unwrap();
    let form = client
        .form(Locator::Css("form[action='/admin/login']"))
        .await
        .unwrap();
    form.set_by_name("email", "gerente@sul.com.br")
        .await
        .unwrap();
    form.set_by_name("password", crate::admin::PASSWORD_FOR_TESTS)
        .await
        .unwrap();
    form.submit().await.unwrap();
    expect_text(&client, "main h1", "Visão geral").await;
    // No model weights for a distributor's admin: the install's setting.
    let nav = text_when(&client, "header nav", |t| t.contains("Relatórios")).await;
    assert!(!nav.contains("Pesos"), "{nav}");

    client
        .goto(&format!("{}/admin/users", app.address))
        .await
        .unwrap();
    let list = text_when(&client, "main", |t| t.contains("sara@sul.com.br")).await;
    assert!(list.contains("saulo@sul.com.br"), "{list}");
    assert!(
        !list.contains("nina@norte.com.br"),
        "another distributor's user: {list}"
    );
    save(&client, "distributor-users").await;

    client
        .goto(&format!("{}/admin/reports?group=user", app.address))
        .await
        .unwrap();
    let report = text_when(&client, "table.report", |t| t.contains("sara@sul.com.br")).await;
    assert!(!report.contains("nina"), "{report}");
    save(&client, "distributor-report").await;
    client
        .find(Locator::Css("#export-usage"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    // The browser writes the file when the download ends.
    let mut saved = None;
    wait_until(Duration::from_secs(20), || {
        let found = std::fs::read_dir(downloads.path())
            .unwrap()
            .filter_map(Result::ok)
            .map(|e| e.path())
            .find(|p| p.extension().is_some_and(|x| x == "csv"));
        saved = found.clone();
        async move { found.is_some() }
    })
    .await;
    let csv = std::fs::read_to_string(saved.unwrap()).unwrap();
    let lines: Vec<&str> = csv.lines().collect();
    assert_eq!(
        lines.len(),
        3,
        "the header and Rede Sul's two requests: {csv}"
    );
    assert!(csv.contains("sara@sul.com.br") && csv.contains("conversa-saulo"));
    assert!(!csv.contains("norte"), "{csv}");
    client.close().await.unwrap();
}
