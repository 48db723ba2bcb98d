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
    let mut caps = serde_json::Map::new();
    caps.insert(
        "goog:chromeOptions".into(),
        serde_json::json!({
            "binary": std::env::var("TOKENGATE_TEST_CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into()),
            "args": [
                "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--disable-background-networking", "--disable-component-update",
                "--disable-sync", "--no-first-run", "--window-size=1280,1000",
                format!("--user-data-dir={}", driver._profile.path().display()),
            ],
        }),
    );
    let client = ClientBuilder::native()
        .capabilities(caps)
        .connect(&format!("http://127.0.0.1:{}", driver.port))
        .await
        .expect("chromedriver session");

    // Sign in.
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
    expect_text(&client, "main h1", "Visão geral").await;
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
