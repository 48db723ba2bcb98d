//! The user's own page (`/me`): the link in alert mails, the sign-in by email, the
//! session, and what a hostile visitor can and cannot reach. Mail goes through the
//! real SMTP server of the tests.

use crate::helpers::*;
use crate::smtp::{Received, SmtpOptions, SmtpServer};
use futures_util::future::join_all;
use std::time::{Duration, Instant};
use tokengate::domain::Weights;
use tokengate::ledger::Actor;
use tokengate::me::store::{self, TokenKind};

/// Not https: the tests speak plain HTTP, and a Secure cookie would not come back.
pub const PUBLIC_URL: &str = "http://tokens.example.test";

pub async fn me_app(smtp: &SmtpServer) -> TestApp {
    let app = spawn_app(TestOptions {
        env: vec![
            ("TOKENGATE_SMTP_URL", smtp.url()),
            ("TOKENGATE_MAIL_FROM", "avisos@iasolaris.com.br".into()),
            ("TOKENGATE_PUBLIC_URL", PUBLIC_URL.into()),
        ],
        start: mid_november(),
        ..TestOptions::default()
    })
    .await;
    app.ledger()
        .set_weights(
            "w1000",
            Weights::from_milli(1000, 1_000_000).unwrap().into(),
            &Actor::Cli,
        )
        .unwrap();
    app
}

/// A browser: keeps cookies, follows no redirects (the tests look at each one).
pub fn browser() -> reqwest::Client {
    reqwest::Client::builder()
        .cookie_store(true)
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
}

/// A chat as LibreChat sends it for a user with an email and a name.
pub async fn chat_user(app: &TestApp, id: &str, email: &str, name: &str, model: &str, max: i64) {
    let res = app
        .post("/v1/chat/completions")
        .header("x-librechat-user-id", id)
        .header("x-librechat-user-email", email)
        .header("x-librechat-user-name", name)
        .body(chat_body(model, "oi", false, Some(max)).to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200, "{}", res.text().await.unwrap());
}

/// The path of the first `/me/link/` URL in a text.
pub fn link_path(text: &str) -> String {
    let at = text
        .find(&format!("{PUBLIC_URL}/me/link/"))
        .unwrap_or_else(|| panic!("no link to the page in: {text}"));
    text[at + PUBLIC_URL.len()..]
        .split(|c: char| c.is_whitespace() || c == '"' || c == '<')
        .next()
        .unwrap()
        .to_owned()
}

pub fn token_of(path: &str) -> &str {
    path.trim_start_matches("/me/link/")
}

/// Opens a link as a person does: the page, then its button. Returns the answer to
/// the button (a redirect to `/me` with the session cookie when the link was live).
pub async fn use_link(app: &TestApp, client: &reqwest::Client, path: &str) -> reqwest::Response {
    let page = client
        .get(format!("{}{path}", app.address))
        .send()
        .await
        .unwrap();
    assert_eq!(page.status(), 200, "the link's page");
    let html = page.text().await.unwrap();
    assert!(html.contains(r#"action="/me/link""#), "{html}");
    post_link(app, client, token_of(path)).await
}

pub async fn post_link(app: &TestApp, client: &reqwest::Client, token: &str) -> reqwest::Response {
    client
        .post(format!("{}/me/link", app.address))
        .header("origin", &app.address)
        .form(&[("token", token)])
        .send()
        .await
        .unwrap()
}

pub async fn page(app: &TestApp, client: &reqwest::Client) -> reqwest::Response {
    client
        .get(format!("{}/me", app.address))
        .send()
        .await
        .unwrap()
}

fn session_cookie(res: &reqwest::Response) -> String {
    res.headers()
        .get_all("set-cookie")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .find(|c| c.starts_with("tokengate_me="))
        .unwrap_or_else(|| panic!("no session cookie: {res:?}"))
        .to_owned()
}

/// A live link for a user, as the mails carry.
pub async fn link_for(app: &TestApp, user_id: i64) -> String {
    let now = app.now().naive_utc();
    store::issue(
        app.ledger().db(),
        user_id,
        TokenKind::Link,
        now,
        chrono::Duration::days(7),
    )
    .await
    .unwrap()
}

pub async fn signed_in(app: &TestApp, user_id: i64) -> reqwest::Client {
    let client = browser();
    let token = link_for(app, user_id).await;
    let res = use_link(app, &client, &format!("/me/link/{token}")).await;
    assert_eq!(res.status(), 303);
    client
}

#[actix_web::test]
async fn the_alert_mail_opens_the_users_own_page_with_the_figures_in_brazilian_formats() {
    let smtp = SmtpServer::start(SmtpOptions::default()).await;
    let app = me_app(&smtp).await;
    app.default_plan(1_000_000);
    // 21 answers of 40 tokens at 1,000 each: 840 thousand, past 80% of the plan.
    for _ in 0..21 {
        chat_user(
            &app,
            "ana-1",
            "Ana@Example.com",
            "Ana <b>Souza</b>",
            "w1000",
            40,
        )
        .await;
    }
    let mail = smtp.wait_for(1).await;
    let user_mail: &Received = mail
        .iter()
        .find(|m| m.to().eq_ignore_ascii_case("ana@example.com"))
        .unwrap_or_else(|| panic!("{:?}", mail.iter().map(Received::to).collect::<Vec<_>>()));
    let path = link_path(&user_mail.text);
    assert_eq!(
        path,
        link_path(&user_mail.html_text()),
        "text and HTML carry one link"
    );

    let client = browser();
    let res = use_link(&app, &client, &path).await;
    assert_eq!(res.status(), 303);
    assert_eq!(res.headers()["location"], "/me");
    let cookie = session_cookie(&res);
    for attribute in ["HttpOnly", "SameSite=Lax", "Path=/me"] {
        assert!(cookie.contains(attribute), "{cookie}");
    }
    let res = page(&app, &client).await;
    assert_eq!(res.status(), 200);
    assert_eq!(res.headers()["cache-control"], "no-store");
    let html = res.text().await.unwrap();
    let summary = app.summary("ana-1");
    assert!(summary.used_percent >= 80, "{summary:?}");
    let left = tokengate::i18n::tokens(summary.remaining, tokengate::config::Locale::PtBr);
    assert!(
        left.contains('.'),
        "a Brazilian thousands separator: {left}"
    );
    for expected in [
        format!(r#"<span class="figure" id="remaining">{left}</span>"#),
        "tokens restantes".to_owned(),
        "renova em 01/12/2026".to_owned(),
        format!("Você já usou {}%", summary.used_percent),
        "1.000.000 tokens por mês".to_owned(),
        "80% usados".to_owned(),
        // The name is shown as text, never as markup.
        "Ana &lt;b&gt;Souza&lt;/b&gt;".to_owned(),
        "<svg".to_owned(),
        "w1000".to_owned(),
    ] {
        assert!(html.contains(&expected), "missing {expected:?} in {html}");
    }
    assert!(!html.contains("<b>Souza"), "markup from a name");
    // The mail's link is spent: opening it again leads to the sign-in by email.
    let again = browser()
        .get(format!("{}{path}", app.address))
        .send()
        .await
        .unwrap();
    assert_eq!(again.status(), 410);
    assert!(
        again
            .text()
            .await
            .unwrap()
            .contains(r#"action="/me/sign-in""#)
    );
}

#[actix_web::test]
async fn links_work_once_and_tampered_or_expired_links_lead_to_the_sign_in() {
    let smtp = SmtpServer::start(SmtpOptions::default()).await;
    let app = me_app(&smtp).await;
    chat_user(&app, "bia-1", "bia@example.com", "Bia", "fake-model", 5).await;
    let bia = app.user_id("bia-1");

    // Opening the page of a link does not spend it (mail scanners open links).
    let token = link_for(&app, bia).await;
    let client = browser();
    for _ in 0..3 {
        let res = client
            .get(format!("{}/me/link/{token}", app.address))
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 200);
    }
    // One character changed: not a link.
    let mut tampered: Vec<char> = token.chars().collect();
    tampered[10] = if tampered[10] == 'A' { 'B' } else { 'A' };
    let tampered: String = tampered.into_iter().collect();
    let res = post_link(&app, &client, &tampered).await;
    assert_eq!(res.status(), 410);
    assert!(res.headers().get("set-cookie").is_none());
    let res = post_link(&app, &client, &token).await;
    assert_eq!(res.status(), 303, "the real one still works");
    let res = post_link(&app, &browser(), &token).await;
    assert_eq!(res.status(), 410, "used once");

    // Expired: a week and a moment later, by the application's clock.
    let token = link_for(&app, bia).await;
    app.advance_clock(chrono::Duration::days(7) + chrono::Duration::seconds(1));
    let res = browser()
        .get(format!("{}/me/link/{token}", app.address))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 410);
    assert!(
        res.text()
            .await
            .unwrap()
            .contains("já foi usado ou expirou")
    );
    let res = post_link(&app, &browser(), &token).await;
    assert_eq!(res.status(), 410);

    // Junk where a token goes.
    for junk in ["", "x", &"A".repeat(5000), "../../admin", "%00"] {
        let res = post_link(&app, &browser(), junk).await;
        assert_eq!(res.status(), 410, "{junk:?}");
    }
}

#[actix_web::test]
async fn fifty_concurrent_uses_of_one_link_open_one_session() {
    let smtp = SmtpServer::start(SmtpOptions::default()).await;
    let app = me_app(&smtp).await;
    chat_user(&app, "caio-1", "caio@example.com", "Caio", "fake-model", 5).await;
    let token = link_for(&app, app.user_id("caio-1")).await;
    let results = join_all((0..50).map(|_| {
        let (app, token) = (&app, token.clone());
        async move { post_link(app, &browser(), &token).await.status().as_u16() }
    }))
    .await;
    assert_eq!(
        results.iter().filter(|s| **s == 303).count(),
        1,
        "{results:?}"
    );
    assert_eq!(
        results.iter().filter(|s| **s == 410).count(),
        49,
        "{results:?}"
    );
}

#[actix_web::test]
async fn a_session_shows_its_own_user_only_and_never_reaches_the_dashboard() {
    let smtp = SmtpServer::start(SmtpOptions::default()).await;
    let app = me_app(&smtp).await;
    chat_user(&app, "dani-1", "dani@example.com", "Dani", "fake-model", 5).await;
    chat_user(
        &app,
        "edu-1",
        "edu@example.com",
        "Eduardo Secreto",
        "w1000",
        7,
    )
    .await;
    let (dani, edu) = (app.user_id("dani-1"), app.user_id("edu-1"));
    let client = signed_in(&app, dani).await;
    let html = page(&app, &client).await.text().await.unwrap();
    assert!(html.contains("Dani"));
    assert!(!html.contains("Eduardo") && !html.contains("edu@example.com"));
    // Another user's id anywhere in the URL changes nothing, or finds nothing.
    for path in [
        format!("/me?user={edu}"),
        format!("/me?user_id={edu}&id={edu}"),
    ] {
        let res = client
            .get(format!("{}{path}", app.address))
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 200, "{path}");
        let html = res.text().await.unwrap();
        assert!(html.contains("Dani") && !html.contains("Eduardo"), "{path}");
    }
    for path in [format!("/me/{edu}"), format!("/me/users/{edu}")] {
        let res = client
            .get(format!("{}{path}", app.address))
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 404, "{path}");
    }
    // The user's cookie is not an admin session.
    for path in ["/admin", &format!("/admin/users/{edu}")] {
        let res = client
            .get(format!("{}{path}", app.address))
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 303, "{path}");
        assert!(
            res.headers()["location"]
                .to_str()
                .unwrap()
                .starts_with("/admin/login")
        );
    }
    // Without a session, the page sends to the sign-in.
    let res = page(&app, &browser()).await;
    assert_eq!(res.status(), 303);
    assert_eq!(res.headers()["location"], "/me/sign-in");
}

#[actix_web::test]
async fn signing_out_ends_the_session_and_forms_need_the_token_and_the_origin() {
    let smtp = SmtpServer::start(SmtpOptions::default()).await;
    let app = me_app(&smtp).await;
    chat_user(&app, "fabi-1", "fabi@example.com", "Fabi", "fake-model", 5).await;
    let fabi = app.user_id("fabi-1");
    let client = browser();
    let token = link_for(&app, fabi).await;
    let res = use_link(&app, &client, &format!("/me/link/{token}")).await;
    let cookie = session_cookie(&res);
    let cookie_pair = cookie.split(';').next().unwrap().to_owned();
    let html = page(&app, &client).await.text().await.unwrap();
    let csrf = html
        .split(r#"name="csrf" value=""#)
        .nth(1)
        .and_then(|s| s.split('"').next())
        .unwrap()
        .to_owned();
    let sign_out = |csrf: &str, origin: &str| {
        client
            .post(format!("{}/me/sign-out", app.address))
            .header("origin", origin)
            .form(&[("csrf", csrf.to_owned())])
            .send()
    };
    assert_eq!(sign_out("", &app.address).await.unwrap().status(), 403);
    assert_eq!(
        sign_out(&"0".repeat(32), &app.address)
            .await
            .unwrap()
            .status(),
        403
    );
    assert_eq!(
        sign_out(&csrf, "https://evil.example")
            .await
            .unwrap()
            .status(),
        403
    );
    assert_eq!(page(&app, &client).await.status(), 200, "still signed in");
    let res = sign_out(&csrf, &app.address).await.unwrap();
    assert_eq!(res.status(), 303);
    assert_eq!(res.headers()["location"], "/me/sign-in");
    // The old cookie, sent again by hand, opens nothing.
    let res = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
        .get(format!("{}/me", app.address))
        .header("cookie", &cookie_pair)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 303);

    // A session expires by the application's clock.
    let client = signed_in(&app, fabi).await;
    assert_eq!(page(&app, &client).await.status(), 200);
    app.advance_clock(chrono::Duration::days(14) + chrono::Duration::seconds(1));
    assert_eq!(page(&app, &client).await.status(), 303);

    // A link posted from another site signs nobody in.
    let token = link_for(&app, fabi).await;
    let res = browser()
        .post(format!("{}/me/link", app.address))
        .header("origin", "https://evil.example")
        .form(&[("token", token.as_str())])
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 403);
    assert!(res.headers().get("set-cookie").is_none());
}

async fn ask_for_link(app: &TestApp, client: &reqwest::Client, email: &str) -> (u16, String) {
    let res = client
        .post(format!("{}/me/sign-in", app.address))
        .header("origin", &app.address)
        .form(&[("email", email)])
        .send()
        .await
        .unwrap();
    (res.status().as_u16(), res.text().await.unwrap())
}

#[actix_web::test]
async fn the_sign_in_answers_alike_for_known_and_unknown_addresses_and_mails_only_the_known() {
    let smtp = SmtpServer::start(SmtpOptions::default()).await;
    let app = me_app(&smtp).await;
    let people: Vec<String> = (0..5).map(|i| format!("pessoa{i}@example.com")).collect();
    for (i, email) in people.iter().enumerate() {
        chat_user(
            &app,
            &format!("pessoa-{i}"),
            email,
            "Pessoa",
            "fake-model",
            5,
        )
        .await;
    }
    let client = browser();
    let (mut known_times, mut unknown_times) = (Vec::new(), Vec::new());
    let mut answers = Vec::new();
    for (i, email) in people.iter().enumerate() {
        // Typed in capitals: the address LibreChat knows still gets the mail.
        let started = Instant::now();
        answers.push(ask_for_link(&app, &client, &email.to_uppercase()).await);
        known_times.push(started.elapsed());
        let started = Instant::now();
        answers.push(ask_for_link(&app, &client, &format!("ninguem{i}@example.com")).await);
        unknown_times.push(started.elapsed());
    }
    let first = answers[0].clone();
    assert_eq!(first.0, 200);
    assert!(first.1.contains("Se este email for de uma conta do chat"));
    assert!(
        answers.iter().all(|a| *a == first),
        "every answer is the same"
    );
    known_times.sort();
    unknown_times.sort();
    let (known, unknown) = (known_times[2], unknown_times[2]);
    assert!(
        known.abs_diff(unknown) < Duration::from_millis(150),
        "median answer times differ: known {known:?}, unknown {unknown:?}"
    );

    let mail = smtp.wait_for(5).await;
    let mut to: Vec<&str> = mail.iter().map(Received::to).collect();
    to.sort_unstable();
    assert_eq!(to, people.iter().map(String::as_str).collect::<Vec<_>>());
    let first_mail = mail.iter().find(|m| m.to() == people[0]).unwrap();
    assert_eq!(first_mail.subject, "Seu link para ver o saldo de tokens");
    assert!(first_mail.text.contains("30 minutos"));
    // The link works, once, for the user it was sent to.
    let client = browser();
    let res = use_link(&app, &client, &link_path(&first_mail.text)).await;
    assert_eq!(res.status(), 303);
    let html = page(&app, &client).await.text().await.unwrap();
    assert!(html.contains("Pessoa"));
    // A sign-in link lasts 30 minutes.
    let second = mail.iter().find(|m| m.to() == people[1]).unwrap();
    app.advance_clock(chrono::Duration::minutes(31));
    let res = browser()
        .get(format!("{}{}", app.address, link_path(&second.text)))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 410);
}

#[actix_web::test]
async fn sign_in_mails_are_limited_per_address_and_per_client() {
    let smtp = SmtpServer::start(SmtpOptions::default()).await;
    let app = me_app(&smtp).await;
    chat_user(&app, "gabi-1", "gabi@example.com", "Gabi", "fake-model", 5).await;
    let client = browser();
    let mut answers = Vec::new();
    for _ in 0..5 {
        answers.push(ask_for_link(&app, &client, "gabi@example.com").await);
    }
    assert!(
        answers.iter().all(|a| *a == answers[0] && a.0 == 200),
        "the same answer throughout"
    );
    smtp.wait_for(3).await;
    // Five answers, three mails. Another address is asked for after them, and its
    // mail arrives: the first address's later mails, had they been sent, would have
    // arrived by then (each is sent as its request is answered).
    chat_user(&app, "hugo-1", "hugo@example.com", "Hugo", "fake-model", 5).await;
    let (status, _) = ask_for_link(&app, &client, "hugo@example.com").await;
    assert_eq!(status, 200);
    let mail = smtp.wait_for(4).await;
    assert!(mail.iter().any(|m| m.to() == "hugo@example.com"));
    assert_eq!(
        mail.iter().filter(|m| m.to() == "gabi@example.com").count(),
        3
    );

    // One client (every request here comes from 127.0.0.1): after ten counted
    // requests in fifteen minutes it is told to wait, whatever the address; this
    // says nothing about any address. Counted so far: gabi's three, hugo's one.
    for i in 0..6 {
        let (status, html) = ask_for_link(&app, &client, &format!("outra{i}@example.com")).await;
        assert_eq!(status, 200, "request {} of 10: {html}", 5 + i);
    }
    let (status, html) = ask_for_link(&app, &client, "quase@example.com").await;
    assert_eq!(status, 429, "the eleventh from one client: {html}");
    assert!(html.contains("Espere 15 minutos"));
    // Fifteen minutes later it may ask again.
    app.advance_clock(chrono::Duration::minutes(16));
    let (status, _) = ask_for_link(&app, &client, "quase@example.com").await;
    assert_eq!(status, 200);
}

/// Someone who keeps asking for a user's address cannot keep the user from getting
/// a link: asks that send nothing do not extend the wait, and whenever the address
/// waits, the links of the last fifteen minutes (each valid thirty) are in its inbox.
#[actix_web::test]
async fn asking_for_someone_elses_address_never_locks_them_out() {
    let smtp = SmtpServer::start(SmtpOptions::default()).await;
    let app = me_app(&smtp).await;
    chat_user(&app, "vic-1", "vic@example.com", "Vic", "fake-model", 5).await;
    let attacker = browser();
    for _ in 0..3 {
        ask_for_link(&app, &attacker, "vic@example.com").await;
    }
    let first = smtp.wait_for(3).await;
    for _ in 0..2 {
        app.advance_clock(chrono::Duration::minutes(5));
        for _ in 0..3 {
            let (status, _) = ask_for_link(&app, &attacker, "vic@example.com").await;
            assert_eq!(status, 200);
        }
    }
    // Ten minutes in: no more mail was sent, and the first links still work.
    let client = browser();
    let res = use_link(&app, &client, &link_path(&first[2].text)).await;
    assert_eq!(res.status(), 303);
    // Fifteen minutes after the mails, the address may get one again.
    app.advance_clock(chrono::Duration::minutes(5) + chrono::Duration::seconds(1));
    ask_for_link(&app, &browser(), "vic@example.com").await;
    let mail = smtp.wait_for(4).await;
    assert_eq!(mail.len(), 4, "three, then one after the window");
}

#[actix_web::test]
async fn unknown_pages_under_me_are_readable_and_links_stay_on_this_site() {
    let smtp = SmtpServer::start(SmtpOptions::default()).await;
    let app = me_app(&smtp).await;
    for path in ["/me/foo", "/me/link/", "/me/sign-out", "/me/users/1"] {
        let res = browser()
            .get(format!("{}{path}", app.address))
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 404, "{path}");
        assert!(
            res.text().await.unwrap().contains("Página não encontrada"),
            "{path}"
        );
    }
    // The one-time links never leave this site in a Referer; this site's own forms
    // still get an Origin (with `no-referrer` browsers send `Origin: null`).
    let res = browser()
        .get(format!("{}/me/sign-in", app.address))
        .send()
        .await
        .unwrap();
    assert_eq!(res.headers()["referrer-policy"], "same-origin");
}

#[actix_web::test]
async fn hostile_sign_in_forms_are_refused_with_a_readable_page() {
    let smtp = SmtpServer::start(SmtpOptions::default()).await;
    let app = me_app(&smtp).await;
    chat_user(&app, "ivo-1", "ivo@example.com", "Ivo", "fake-model", 5).await;
    let client = browser();
    for email in [
        "ivo@example.com\r\nBcc: spy@evil.example",
        "ivo@example.com\nivo2@example.com",
        "not an address",
        "",
        &format!("{}@example.com", "a".repeat(300)),
    ] {
        let (status, html) = ask_for_link(&app, &client, email).await;
        assert_eq!(status, 400, "{email:?}");
        assert!(html.contains("não parece um endereço de email"), "{html}");
    }
    // From another site: refused before anything is counted or sent.
    let res = client
        .post(format!("{}/me/sign-in", app.address))
        .header("origin", "https://evil.example")
        .form(&[("email", "ivo@example.com")])
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 403);
    assert!(res.text().await.unwrap().contains("Ação recusada"));
    // A form too large to read.
    let res = client
        .post(format!("{}/me/sign-in", app.address))
        .header("origin", &app.address)
        .form(&[("email", "x".repeat(100_000))])
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 400);
    assert!(smtp.messages().is_empty(), "no mail for a hostile form");
}

#[actix_web::test]
async fn the_operators_block_text_leads_to_the_users_page() {
    let smtp = SmtpServer::start(SmtpOptions::default()).await;
    let app = spawn_app(TestOptions {
        env: vec![
            ("TOKENGATE_SMTP_URL", smtp.url()),
            ("TOKENGATE_PUBLIC_URL", PUBLIC_URL.into()),
            (
                "TOKENGATE_BLOCK_TEXT",
                "Seus tokens do plano {plan} acabaram. Veja como conseguir mais em {page}".into(),
            ),
        ],
        ..TestOptions::default()
    })
    .await;
    app.default_plan(1_000);
    chat_user(&app, "joao-1", "joao@example.com", "João", "fake-model", 40).await;
    // Spent down to nothing: the next request is refused with the operator's text.
    let mut last = None;
    for _ in 0..200 {
        let res = app
            .post("/v1/chat/completions")
            .header("x-librechat-user-id", "joao-1")
            .body(chat_body("fake-model", "oi", false, Some(40)).to_string())
            .send()
            .await
            .unwrap();
        if res.status() != 200 {
            last = Some(res);
            break;
        }
    }
    let res = last.expect("the plan never ran out");
    assert_eq!(res.status(), 429);
    let body: serde_json::Value = res.json().await.unwrap();
    assert_eq!(
        body["error"]["message"],
        "Seus tokens do plano Teste 1000 acabaram. Veja como conseguir mais em http://tokens.example.test/me"
    );
}

/// Behind the operator's reverse proxy every request comes from the proxy: with
/// `TOKENGATE_TRUSTED_PROXIES` the limit counts the address the proxy names, so
/// one client cannot lock everyone out; without it, the header is not believed.
#[actix_web::test]
async fn behind_a_trusted_proxy_each_client_has_its_own_limit() {
    let smtp = SmtpServer::start(SmtpOptions::default()).await;
    let app = spawn_app(TestOptions {
        env: vec![
            ("TOKENGATE_SMTP_URL", smtp.url()),
            ("TOKENGATE_PUBLIC_URL", PUBLIC_URL.into()),
            ("TOKENGATE_TRUSTED_PROXIES", "127.0.0.1".into()),
        ],
        ..TestOptions::default()
    })
    .await;
    let ask = |client_ip: &'static str, i: usize| {
        let app = &app;
        async move {
            browser()
                .post(format!("{}/me/sign-in", app.address))
                .header("origin", &app.address)
                .header("x-forwarded-for", format!("6.6.6.6, {client_ip}"))
                .form(&[("email", format!("x{i}@example.com"))])
                .send()
                .await
                .unwrap()
                .status()
                .as_u16()
        }
    };
    for i in 0..10 {
        assert_eq!(ask("203.0.113.1", i).await, 200);
    }
    assert_eq!(ask("203.0.113.1", 10).await, 429, "that client had its ten");
    assert_eq!(
        ask("203.0.113.2", 11).await,
        200,
        "another client behind the proxy"
    );
}

#[actix_web::test]
async fn the_page_in_english() {
    let smtp = SmtpServer::start(SmtpOptions::default()).await;
    let app = spawn_app(TestOptions {
        env: vec![
            ("TOKENGATE_SMTP_URL", smtp.url()),
            ("TOKENGATE_PUBLIC_URL", PUBLIC_URL.into()),
            ("TOKENGATE_LOCALE", "en".into()),
        ],
        start: mid_november(),
        ..TestOptions::default()
    })
    .await;
    app.default_plan(1_500_000);
    chat_user(&app, "ken-1", "ken@example.com", "Ken", "fake-model", 5).await;
    let client = signed_in(&app, app.user_id("ken-1")).await;
    let html = page(&app, &client).await.text().await.unwrap();
    let left = tokengate::i18n::tokens(
        app.summary("ken-1").remaining,
        tokengate::config::Locale::En,
    );
    for expected in [
        format!(r#"id="remaining">{left}<"#),
        "tokens left".to_owned(),
        "About 1.5 million tokens.".to_owned(),
        "renews on December 1, 2026".to_owned(),
        "1,500,000 tokens a month".to_owned(),
        "Redeem the code".to_owned(),
    ] {
        assert!(html.contains(&expected), "missing {expected:?}");
    }
    let (_, html) = ask_for_link(&app, &browser(), "ken@example.com").await;
    assert!(html.contains("Check your email"));
    let mail = smtp.wait_for(1).await;
    assert_eq!(mail[0].subject, "Your link to see your token balance");
}

/// Two LibreChat accounts with one email (an account made again, or a second way to
/// log in): the sign-in mail offers each its own link, named, and each opens its own
/// page. Before, the link always opened the newest account's page, and the other
/// could never be reached.
#[actix_web::test]
async fn an_email_with_two_accounts_gets_a_link_for_each() {
    let smtp = SmtpServer::start(SmtpOptions::default()).await;
    let app = me_app(&smtp).await;
    chat_user(
        &app,
        "conta-antiga",
        "dupla@example.com",
        "Ana Antiga",
        "fake-model",
        5,
    )
    .await;
    app.advance_clock(chrono::Duration::days(3));
    chat_user(
        &app,
        "conta-nova",
        "Dupla@Example.com",
        "Ana Nova",
        "fake-model",
        9,
    )
    .await;
    let (status, _) = ask_for_link(&app, &browser(), "dupla@example.com").await;
    assert_eq!(status, 200);
    let mail = smtp.wait_for(1).await;
    let text = &mail[0].text;
    assert!(text.contains("mais de uma conta"), "{text}");
    for name in ["Ana Antiga", "Ana Nova"] {
        // Each account's link comes after its name, and opens that account's page.
        let from = text
            .find(name)
            .unwrap_or_else(|| panic!("{name} not offered: {text}"));
        let path = link_path(&text[from..]);
        let client = browser();
        let res = use_link(&app, &client, &path).await;
        assert_eq!(res.status(), 303);
        let html = page(&app, &client).await.text().await.unwrap();
        assert!(html.contains(name), "{name}'s link opened another page");
    }
}

/// More accounts with one email than a mail lists: the accounts tokengate saw
/// first are listed (one made later with someone's address must not push theirs
/// out), and the mail says there are more.
#[actix_web::test]
async fn an_email_with_many_accounts_lists_the_first_and_says_there_are_more() {
    let smtp = SmtpServer::start(SmtpOptions::default()).await;
    let app = me_app(&smtp).await;
    for i in 1..=7 {
        chat_user(
            &app,
            &format!("conta-{i}"),
            "muitas@example.com",
            &format!("Pessoa {i}"),
            "fake-model",
            5,
        )
        .await;
        app.advance_clock(chrono::Duration::hours(1));
    }
    let (status, _) = ask_for_link(&app, &browser(), "muitas@example.com").await;
    assert_eq!(status, 200);
    let mail = smtp.wait_for(1).await;
    let text = &mail[0].text;
    for i in 1..=5 {
        assert!(
            text.contains(&format!("Pessoa {i},")),
            "{i} not listed: {text}"
        );
    }
    for i in 6..=7 {
        assert!(!text.contains(&format!("Pessoa {i}")), "{i} listed: {text}");
    }
    assert!(text.contains("Há mais contas com este email"), "{text}");
}
