//! Alert emails (docs/behaviour.md) through a real SMTP server: thresholds, re-arming,
//! new cycles, both languages, hostile names, concurrency, SMTP outages and
//! rejections, a killed process, and two instances sharing one database.

use crate::fake_provider::prompt_tokens_of;
use crate::helpers::*;
use crate::smtp::{Received, SmtpOptions, SmtpServer, Tls};
use chrono::{TimeZone, Utc};
use std::collections::HashSet;
use std::time::Duration;
use tokengate::alerts::{self, Alert, DeliveryState, OutboxMessage, Role};
use tokengate::domain::{TokenAmount, Weights};
use tokengate::ledger::{Actor, parse_user_ref};

const ADMINS: [&str; 2] = ["ops@iasolaris.com.br", "financeiro@iasolaris.com.br"];
const ALLOWANCE: i64 = 1_000_000;

#[derive(Clone, Copy)]
struct Person {
    id: &'static str,
    email: Option<&'static str>,
    name: Option<&'static str>,
}

const ANA: Person = Person {
    id: "ana-0001",
    email: Some("ana@example.com"),
    name: Some("Ana Souza"),
};

fn mail_env(smtp: &SmtpServer) -> Vec<(&'static str, String)> {
    vec![
        ("TOKENGATE_SMTP_URL", smtp.url()),
        ("TOKENGATE_ADMIN_EMAILS", ADMINS.join(",")),
        ("TOKENGATE_MAIL_FROM", "avisos@iasolaris.com.br".into()),
        ("TOKENGATE_MAIL_RETRY_BASE_SECS", "0.05".into()),
        ("TOKENGATE_MAIL_RETRY_MAX_SECS", "0.2".into()),
        ("TOKENGATE_MAIL_MAX_ATTEMPTS", "3".into()),
        (
            "TOKENGATE_PUBLIC_URL",
            "https://tokens.iasolaris.com.br".into(),
        ),
    ]
}

async fn alert_app(smtp: &SmtpServer, extra: &[(&'static str, String)]) -> TestApp {
    let mut env = mail_env(smtp);
    env.extend(extra.iter().cloned());
    // The messages name the cycle's renewal date.
    let app = spawn_app(TestOptions {
        env,
        start: mid_november(),
        ..TestOptions::default()
    })
    .await;
    heavy_models(&app);
    app
}

/// Models whose output costs 10, 100 and 1000 tokens, to spend a balance quickly.
fn heavy_models(app: &TestApp) {
    for (model, w) in [("w10", 10_000), ("w100", 100_000), ("w1000", 1_000_000)] {
        app.ledger()
            .set_weights(
                model,
                Weights::from_milli(1000, w).unwrap().into(),
                &Actor::Cli,
            )
            .unwrap();
    }
}

async fn chat_person(app: &TestApp, p: Person, model: &str, max: i64) -> reqwest::Response {
    let mut req = app
        .post("/v1/chat/completions")
        .header("x-librechat-user-id", p.id);
    if let Some(e) = p.email {
        req = req.header("x-librechat-user-email", e);
    }
    if let Some(n) = p.name {
        req = req.header("x-librechat-user-name", n);
    }
    req.body(chat_body(model, "oi", false, Some(max)).to_string())
        .send()
        .await
        .unwrap()
}

/// Spends until the user has used at least `target` tokens this cycle (at most a
/// prompt's worth more), with requests that each stay within the balance.
async fn spend_to(app: &TestApp, p: Person, target: i64) {
    let prompt = prompt_tokens_of(&chat_body("w1", "oi", false, None));
    loop {
        let used = match app.ledger().find_user(&parse_user_ref(p.id)).unwrap() {
            Some(id) => app.ledger().user_summary(id).unwrap().used_this_cycle,
            None => 0,
        };
        if used >= target {
            return;
        }
        let need = target - used;
        let (model, weight) = [("w1000", 1000), ("w100", 100), ("w10", 10), ("w1", 1)]
            .into_iter()
            .find(|(_, w)| need >= prompt + w)
            .unwrap_or(("w1", 1));
        let mut max = ((need - prompt) / weight).clamp(1, crate::fake_provider::NATURAL_COMPLETION);
        // Never leave a rest smaller than the cheapest request could hit exactly.
        while max > 1 && (1..=prompt).contains(&(need - prompt - weight * max)) {
            max -= 1;
        }
        let res = chat_person(app, p, model, max).await;
        assert_eq!(res.status(), 200, "{}", res.text().await.unwrap());
    }
}

fn alerts_of(app: &TestApp, p: Person) -> Vec<Alert> {
    let id = app.user_id(p.id);
    let mut list = alerts::list(
        app.ledger().db(),
        tokengate::domain::Scope::All,
        Some(id),
        100,
    )
    .unwrap();
    list.reverse();
    list
}

fn outbox(app: &TestApp) -> Vec<OutboxMessage> {
    alerts::messages(app.ledger().db()).unwrap()
}

/// Waits until no message is pending any more: every one was sent or failed.
async fn outbox_settled(app: &TestApp) -> Vec<OutboxMessage> {
    wait_until(Duration::from_secs(30), || {
        let pending = outbox(app)
            .iter()
            .any(|m| m.state == DeliveryState::Pending);
        async move { !pending }
    })
    .await;
    outbox(app)
}

/// The mail of one alert: the user's and one copy per admin, each exactly once.
fn one_alert_mail<'a>(mail: &'a [Received], user: &str) -> (&'a Received, Vec<&'a Received>) {
    let mut recipients: Vec<&str> = mail.iter().map(Received::to).collect();
    recipients.sort_unstable();
    let mut expected = vec![user, ADMINS[0], ADMINS[1]];
    expected.sort_unstable();
    assert_eq!(recipients, expected, "one message per recipient");
    let user_mail = mail.iter().find(|m| m.to() == user).unwrap();
    let admin_mail = mail.iter().filter(|m| m.to() != user).collect();
    (user_mail, admin_mail)
}

#[actix_web::test]
async fn thresholds_mail_the_user_and_admins_once_per_crossing_and_rearm() {
    let smtp = SmtpServer::start(SmtpOptions::default()).await;
    let app = alert_app(&smtp, &[]).await;

    spend_to(&app, ANA, 700_000).await;
    assert!(alerts_of(&app, ANA).is_empty(), "70% alerts nobody");

    // 80%: the user and each admin get one message, in Portuguese.
    spend_to(&app, ANA, 800_000).await;
    let sent = outbox_settled(&app).await;
    assert_eq!(sent.len(), 3, "{sent:?}");
    assert!(sent.iter().all(|m| m.state == DeliveryState::Sent));
    let mail = smtp.wait_for(3).await;
    assert_eq!(mail.len(), 3);
    let (user_mail, admin_mail) = one_alert_mail(&mail, "ana@example.com");
    assert_eq!(
        user_mail.subject,
        "Aviso: você já usou 80% dos seus tokens deste mês"
    );
    for needle in [
        "Olá, Ana Souza!",
        "80% dos tokens do seu plano Mensal",
        "Usados:     800.000 tokens",
        "Restantes:  200.000 tokens",
        "Renovação:  01/12/2026 (1.000.000 tokens novos)",
        "peça créditos a suporte@iasolaris.com.br",
    ] {
        assert!(
            user_mail.text.contains(needle),
            "{needle:?} not in:\n{}",
            user_mail.text
        );
    }
    for needle in [
        "<html lang=\"pt-BR\">",
        "Você já usou 80% dos seus tokens",
        "<strong>800.000</strong>",
        "01/12/2026",
    ] {
        assert!(
            user_mail.html_text().contains(needle),
            "{needle:?} not in html"
        );
    }
    assert!(user_mail.raw.contains("Auto-Submitted: auto-generated"));
    assert!(user_mail.raw.starts_with("From: avisos@iasolaris.com.br"));
    for copy in &admin_mail {
        assert_eq!(
            copy.subject,
            "[tokengate] ana@example.com usou 80% dos tokens"
        );
        assert!(copy.text.contains("O usuário recebeu um aviso por email."));
        let link = format!(
            "https://tokens.iasolaris.com.br/admin/users/{}",
            app.user_id(ANA.id)
        );
        assert!(copy.text.contains(&link), "{}", copy.text);
        assert!(copy.html_text().contains(&link));
    }

    // More usage under 100% writes nothing: no alert row, nothing queued.
    spend_to(&app, ANA, 950_000).await;
    assert_eq!(alerts_of(&app, ANA).len(), 1);
    assert_eq!(outbox(&app).len(), 3);

    // 100%: blocked, and told so once.
    spend_to(&app, ANA, ALLOWANCE).await;
    assert_eq!(app.summary(ANA.id).remaining, 0);
    let res = chat_person(&app, ANA, "w1", 1).await;
    assert_eq!(res.status(), 429);
    assert_eq!(outbox_settled(&app).await.len(), 6);
    let mail = smtp.wait_for(6).await;
    let (blocked_mail, admin_mail) = one_alert_mail(&mail[3..], "ana@example.com");
    assert_eq!(
        blocked_mail.subject,
        "Seus tokens acabaram: o chat está pausado"
    );
    assert!(
        blocked_mail
            .text
            .contains("novas mensagens no chat estão pausadas")
    );
    assert!(
        blocked_mail
            .text
            .contains("peça mais créditos a suporte@iasolaris.com.br")
    );
    assert!(
        admin_mail
            .iter()
            .all(|m| m.subject
                == "[tokengate] ana@example.com usou 100% dos tokens e está bloqueado")
    );
    let res = chat_person(&app, ANA, "w1", 1).await;
    assert_eq!(res.status(), 429);
    assert_eq!(
        alerts_of(&app, ANA).len(),
        2,
        "blocked requests alert nobody"
    );

    // A top-up under 80% re-arms both thresholds; crossing 80% again mails again.
    app.ledger()
        .grant_credits(
            &parse_user_ref(ANA.id),
            TokenAmount::new(300_000).unwrap(),
            &Actor::Cli,
            None,
        )
        .unwrap();
    assert_eq!(app.summary(ANA.id).used_percent, 76);
    assert!(alerts_of(&app, ANA).iter().all(|a| a.rearmed_at.is_some()));
    spend_to(&app, ANA, 1_040_000).await;
    assert_eq!(outbox_settled(&app).await.len(), 9);
    let mail = smtp.wait_for(9).await;
    let (again, _) = one_alert_mail(&mail[6..], "ana@example.com");
    assert_eq!(
        again.subject,
        "Aviso: você já usou 80% dos seus tokens deste mês"
    );
    assert!(
        again.text.contains("Restantes:  260.000 tokens"),
        "{}",
        again.text
    );

    // A new cycle starts fresh: 80% of the new balance mails again, with the new date.
    app.clock
        .set(Utc.with_ymd_and_hms(2026, 12, 1, 3, 0, 0).unwrap());
    let fresh = app.summary(ANA.id);
    assert_eq!(
        (fresh.cycle.as_str(), fresh.used_this_cycle),
        ("2026-12", 0)
    );
    let total = fresh.allowance_left + fresh.credits;
    spend_to(&app, ANA, total * 8 / 10).await;
    assert_eq!(outbox_settled(&app).await.len(), 12);
    let mail = smtp.wait_for(12).await;
    let (next_cycle, _) = one_alert_mail(&mail[9..], "ana@example.com");
    assert!(
        next_cycle.text.contains("Renovação:  01/01/2027"),
        "{}",
        next_cycle.text
    );
    let all = alerts_of(&app, ANA);
    let summary: Vec<(String, u8)> = all.iter().map(|a| (a.cycle.clone(), a.threshold)).collect();
    assert_eq!(
        summary,
        vec![
            ("2026-11".into(), 80),
            ("2026-11".into(), 100),
            ("2026-11".into(), 80),
            ("2026-12".into(), 80)
        ]
    );
    assert_eq!(smtp.messages().len(), 12, "nothing was sent twice");
    app.assert_invariant(ANA.id);
}

#[actix_web::test]
async fn english_mail_with_english_numbers_and_dates() {
    let smtp = SmtpServer::start(SmtpOptions::default()).await;
    let app = alert_app(&smtp, &[("TOKENGATE_LOCALE", "en".into())]).await;
    spend_to(&app, ANA, 800_000).await;
    outbox_settled(&app).await;
    let mail = smtp.wait_for(3).await;
    let (user_mail, admin_mail) = one_alert_mail(&mail, "ana@example.com");
    assert_eq!(
        user_mail.subject,
        "Heads-up: you have used 80% of your tokens this month"
    );
    for needle in [
        "Hello, Ana Souza!",
        "You have used 80% of the tokens in your Mensal plan",
        "Used:       800,000 tokens",
        "Left:       200,000 tokens",
        "Renewal:    December 1, 2026 (1,000,000 new tokens)",
        "ask suporte@iasolaris.com.br for credits",
    ] {
        assert!(
            user_mail.text.contains(needle),
            "{needle:?} not in:\n{}",
            user_mail.text
        );
    }
    assert!(user_mail.html.contains("<html lang=\"en\">"));
    assert!(user_mail.html.contains("<strong>800,000</strong>"));
    assert_eq!(
        admin_mail[0].subject,
        "[tokengate] ana@example.com used 80% of their tokens"
    );
}

#[actix_web::test]
async fn hostile_names_are_escaped_and_users_without_email_are_recorded() {
    let smtp = SmtpServer::start(SmtpOptions::default()).await;
    let app = alert_app(&smtp, &[]).await;
    let mallory = Person {
        id: "mallory-1",
        email: Some("mallory@example.com"),
        name: Some("<script>alert(1)</script> & \"Bob\""),
    };
    spend_to(&app, mallory, 800_000).await;
    outbox_settled(&app).await;
    let mail = smtp.wait_for(3).await;
    let (user_mail, admins) = one_alert_mail(&mail, "mallory@example.com");
    for m in std::iter::once(user_mail).chain(admins) {
        assert!(!m.html.contains("<script>"), "markup injected:\n{}", m.html);
        assert!(
            m.html
                .contains("&lt;script&gt;alert(1)&lt;&#x2f;script&gt;"),
            "{}",
            m.html
        );
        assert_eq!(m.to_header, m.to(), "headers name only the recipient");
    }
    // The plain-text part shows the name as typed: it is text, not markup.
    assert!(
        user_mail
            .text
            .contains("Olá, <script>alert(1)</script> & \"Bob\"!")
    );

    // No email known: the alert is recorded as such, admins still hear about it.
    let anon = Person {
        id: "anon-2",
        email: None,
        name: None,
    };
    spend_to(&app, anon, 800_000).await;
    let sent = outbox_settled(&app).await;
    assert_eq!(sent.len(), 5, "two admin copies, no user mail: {sent:?}");
    let alert = &alerts_of(&app, anon)[0];
    assert_eq!(
        (alert.delivery.as_str(), alert.recipient.as_deref()),
        ("no_address", None)
    );
    assert!(alert.messages.iter().all(|m| m.role == Role::Admin));
    let mail = smtp.wait_for(5).await;
    let copy = &mail[3..];
    assert!(
        copy.iter().all(|m| m.subject.starts_with(&format!(
            "[tokengate] #{} (anon-2) usou 80%",
            app.user_id(anon.id)
        ))),
        "{:?}",
        copy[0].subject
    );
    assert!(
        copy[0]
            .text
            .contains("O usuário não foi avisado por email: não há endereço conhecido.")
    );
}

/// LibreChat's `b64:` headers can carry any bytes: line breaks in the email or the
/// name must never become mail headers or recipients.
#[actix_web::test]
async fn line_breaks_sent_in_headers_never_reach_mail_headers() {
    use base64::Engine;
    let smtp = SmtpServer::start(SmtpOptions::default()).await;
    let app = alert_app(&smtp, &[]).await;
    let b64 = |s: &str| -> &'static str {
        let encoded = base64::engine::general_purpose::STANDARD.encode(s);
        Box::leak(format!("b64:{encoded}").into_boxed_str())
    };
    let eve = Person {
        id: "eve-1",
        email: Some(b64("eve@example.com\r\nBcc: spy@evil.example")),
        name: Some(b64("Eve\r\nBcc: spy@evil.example\r\n\r\n<b>x</b>")),
    };
    spend_to(&app, eve, 800_000).await;
    let summary = app.summary(eve.id);
    assert_eq!(
        summary.email, None,
        "an address with a line break is no address"
    );
    assert_eq!(
        summary.name.as_deref(),
        Some("Eve Bcc: spy@evil.example <b>x</b>")
    );
    let sent = outbox_settled(&app).await;
    assert_eq!(sent.len(), 2, "the admins' copies only: {sent:?}");
    let mail = smtp.wait_for(2).await;
    for m in &mail {
        assert!(m.rcpt_tos.iter().all(|r| ADMINS.contains(&r.as_str())));
        let head = m.raw.split("\r\n\r\n").next().unwrap();
        assert!(
            !head
                .lines()
                .any(|l| l.to_ascii_lowercase().starts_with("bcc")),
            "{head}"
        );
        assert!(!head.contains("evil"), "{head}");
    }
}

#[actix_web::test]
async fn one_usage_across_two_thresholds_sends_one_message() {
    let smtp = SmtpServer::start(SmtpOptions::default()).await;
    let app = alert_app(&smtp, &[("TOKENGATE_ALERT_THRESHOLDS", "80,90,100".into())]).await;
    app.ledger()
        .set_weights(
            "wmax",
            Weights::from_milli(1_000_000, 1_000_000).unwrap().into(),
            &Actor::Cli,
        )
        .unwrap();
    spend_to(&app, ANA, 790_000).await;
    // One request of about 200,000 tokens (its prompt costs 1,000 a token) crosses
    // 80% and 90% at once.
    let long = chat_body("wmax", &"oi ".repeat(170), false, Some(40));
    let res = app
        .post("/v1/chat/completions")
        .header("x-librechat-user-id", ANA.id)
        .header("x-librechat-user-email", "ana@example.com")
        .body(long.to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let pct = app.summary(ANA.id).used_percent;
    assert!((90..100).contains(&pct), "{pct}");
    let sent = outbox_settled(&app).await;
    assert_eq!(sent.len(), 3);
    let alerts = alerts_of(&app, ANA);
    let kinds: Vec<(u8, &str)> = alerts
        .iter()
        .map(|a| (a.threshold, a.delivery.as_str()))
        .collect();
    assert_eq!(kinds, vec![(80, "superseded"), (90, "mail")]);
    let mail = smtp.wait_for(3).await;
    let (user_mail, _) = one_alert_mail(&mail, "ana@example.com");
    assert_eq!(
        user_mail.subject,
        "Aviso: você já usou 90% dos seus tokens deste mês"
    );
}

#[actix_web::test]
async fn concurrent_requests_crossing_at_once_write_one_alert() {
    let smtp = SmtpServer::start(SmtpOptions::default()).await;
    let app = alert_app(&smtp, &[]).await;
    spend_to(&app, ANA, 780_000).await;
    // 40 requests of about 1,000 tokens each, all in flight together, cross 80%.
    let requests = (0..40).map(|_| chat_person(&app, ANA, "w100", 10));
    let statuses: Vec<u16> = futures_util::future::join_all(requests)
        .await
        .iter()
        .map(|r| r.status().as_u16())
        .collect();
    assert!(statuses.iter().all(|s| *s == 200), "{statuses:?}");
    assert!(app.summary(ANA.id).used_percent >= 80);
    let alerts = alerts_of(&app, ANA);
    assert_eq!(alerts.len(), 1, "{alerts:?}");
    assert_eq!(outbox_settled(&app).await.len(), 3);
    let mail = smtp.wait_for(3).await;
    one_alert_mail(&mail, "ana@example.com");
    app.assert_invariant(ANA.id);
}

fn person(i: usize) -> Person {
    let id: &'static str = Box::leak(format!("user-{i}").into_boxed_str());
    let email: &'static str = Box::leak(format!("user{i}@example.com").into_boxed_str());
    Person {
        id,
        email: Some(email),
        name: None,
    }
}

/// Every message arrived exactly once: as many as the outbox holds, no duplicates.
fn assert_each_once(mail: &[Received], outbox: &[OutboxMessage]) {
    let ids: HashSet<&str> = mail.iter().map(|m| m.message_id.as_str()).collect();
    assert_eq!(ids.len(), mail.len(), "a message arrived twice");
    assert_eq!(mail.len(), outbox.len());
    let mut got: Vec<&str> = mail.iter().map(Received::to).collect();
    let mut want: Vec<&str> = outbox.iter().map(|m| m.recipient.as_str()).collect();
    got.sort_unstable();
    want.sort_unstable();
    assert_eq!(got, want);
}

#[actix_web::test]
async fn smtp_down_delays_mail_and_loses_none() {
    let mut smtp = SmtpServer::down(SmtpOptions::default());
    let app = alert_app(&smtp, &[("TOKENGATE_MAIL_MAX_ATTEMPTS", "100".into())]).await;
    let people: Vec<Person> = (0..3).map(person).collect();
    for p in &people {
        spend_to(&app, *p, 800_000).await;
    }
    // Every message was tried and is still pending: the server is down.
    wait_until(Duration::from_secs(30), || {
        let tried = outbox(&app)
            .iter()
            .all(|m| m.attempts >= 2 && m.state == DeliveryState::Pending);
        async move { tried }
    })
    .await;
    let waiting = outbox(&app);
    assert_eq!(waiting.len(), 9);
    assert!(
        waiting[0]
            .last_error
            .as_deref()
            .unwrap_or("")
            .contains("SMTP"),
        "{waiting:?}"
    );

    smtp.up().await;
    let sent = outbox_settled(&app).await;
    assert!(
        sent.iter().all(|m| m.state == DeliveryState::Sent),
        "{sent:?}"
    );
    let mail = smtp.wait_for(9).await;
    assert_each_once(&mail, &sent);
}

/// A server that accepts the connection and then stops answering: chats go on
/// meanwhile, each stalled attempt ends at `TOKENGATE_SMTP_TIMEOUT_SECS` and is
/// retried, and once the server answers again every message arrives exactly once.
#[actix_web::test]
async fn a_stalled_smtp_server_never_holds_up_chat_and_loses_no_mail() {
    let smtp = SmtpServer::start(SmtpOptions {
        stalled: true,
        ..SmtpOptions::default()
    })
    .await;
    let app = alert_app(
        &smtp,
        &[
            ("TOKENGATE_SMTP_TIMEOUT_SECS", "1".into()),
            ("TOKENGATE_MAIL_MAX_ATTEMPTS", "100".into()),
        ],
    )
    .await;
    spend_to(&app, ANA, 800_000).await;
    // The mail worker is now inside an SMTP session that does not answer...
    wait_until(Duration::from_secs(30), || {
        let held = smtp.held();
        async move { held >= 1 }
    })
    .await;
    // ...and chat is served all the same, for this user and for others.
    for p in [ANA, person(1), person(2)] {
        let res = chat_person(&app, p, "fake-model", 5).await;
        assert_eq!(res.status(), 200);
    }
    // Attempts end at the timeout, are recorded and retried; nothing is given up.
    wait_until(Duration::from_secs(30), || {
        let retried = outbox(&app)
            .iter()
            .all(|m| m.attempts >= 2 && m.state == DeliveryState::Pending);
        async move { retried }
    })
    .await;
    let waiting = outbox(&app);
    assert_eq!(waiting.len(), 3, "{waiting:?}");
    let error = waiting[0].last_error.clone().unwrap_or_default();
    assert!(error.to_lowercase().contains("timed out"), "{error}");
    assert!(smtp.messages().is_empty());

    smtp.release();
    let sent = outbox_settled(&app).await;
    assert!(
        sent.iter().all(|m| m.state == DeliveryState::Sent),
        "{sent:?}"
    );
    let mail = smtp.wait_for(3).await;
    assert_each_once(&mail, &sent);
    one_alert_mail(&mail, "ana@example.com");
    app.assert_invariant(ANA.id);
}

#[actix_web::test]
async fn a_rejected_recipient_fails_after_the_retries_without_blocking_others() {
    let smtp = SmtpServer::start(SmtpOptions {
        reject: vec!["recusado@".into()],
        ..SmtpOptions::default()
    })
    .await;
    let app = alert_app(&smtp, &[]).await;
    let refused = Person {
        id: "refused-1",
        email: Some("recusado@example.com"),
        name: None,
    };
    spend_to(&app, refused, 800_000).await;
    spend_to(&app, ANA, 800_000).await;
    let all = outbox_settled(&app).await;
    let (failed, sent): (Vec<_>, Vec<_>) =
        all.iter().partition(|m| m.state == DeliveryState::Failed);
    assert_eq!(failed.len(), 1, "{all:?}");
    let f = failed[0];
    assert_eq!(f.recipient, "recusado@example.com");
    assert_eq!(f.attempts, 3, "failed after the configured attempts");
    assert!(
        f.last_error.as_deref().unwrap_or("").contains("550"),
        "{f:?}"
    );
    assert_eq!(sent.len(), 5);
    // Admins can see it on the alert.
    let alert = &alerts_of(&app, refused)[0];
    assert!(
        alert
            .messages
            .iter()
            .any(|m| m.state == DeliveryState::Failed)
    );
    let mail = smtp.messages();
    assert_eq!(mail.len(), 5);
    assert!(mail.iter().all(|m| m.to() != "recusado@example.com"));
    let metrics = app.metrics().await;
    // The dashboard shows the failure and why.
    let admin = crate::admin::Admin::signed_in(&app).await;
    let page = admin.page("/admin/alerts").await;
    for text in [
        "recusado@example.com",
        "falhou",
        "3 tentativas",
        "550",
        "1 mensagens falharam",
    ] {
        assert!(page.contains(text), "{text:?} not on the alerts page");
    }
    assert!(page.contains("enviado"));
    for line in [
        "tokengate_mail_attempts_total{result=\"sent\"} 5",
        "tokengate_mail_attempts_total{result=\"retrying\"} 2",
        "tokengate_mail_attempts_total{result=\"failed\"} 1",
    ] {
        assert!(metrics.contains(line), "{line} not in:\n{metrics}");
    }
}

#[actix_web::test]
async fn a_restarted_instance_takes_back_what_it_was_sending() {
    let smtp = SmtpServer::start(SmtpOptions::default()).await;
    let app = alert_app(&smtp, &[]).await;
    spend_to(&app, ANA, 800_000).await;
    outbox_settled(&app).await;
    smtp.wait_for(3).await;

    // A message claimed by an instance that died while sending it.
    let dead = "dead-instance";
    {
        use diesel::prelude::*;
        use tokengate::db::schema::outbox;
        let mut conn = app.ledger().db().conn().unwrap();
        let alert_id = alerts_of(&app, ANA)[0].id;
        let far = Utc::now().naive_utc() + chrono::Duration::hours(1);
        diesel::insert_into(outbox::table)
            .values((
                outbox::alert_id.eq(alert_id),
                outbox::role.eq("admin"),
                outbox::recipient.eq("auditoria@iasolaris.com.br"),
                outbox::state.eq("pending"),
                outbox::attempts.eq(0),
                outbox::next_attempt_at.eq(Utc::now().naive_utc()),
                outbox::claimed_by.eq(dead),
                outbox::claimed_until.eq(far),
                outbox::created_at.eq(Utc::now().naive_utc()),
            ))
            .execute(&mut conn)
            .unwrap();
    }
    // Its lease keeps everyone else off it...
    assert_eq!(
        outbox(&app)
            .iter()
            .filter(|m| m.state == DeliveryState::Pending)
            .count(),
        1
    );
    // ...until the same instance starts again.
    let mut env = mail_env(&smtp);
    env.push(("TOKENGATE_INSTANCE_ID", dead.into()));
    let _restarted = spawn_replica_with(
        &app,
        TestOptions {
            env,
            ..TestOptions::default()
        },
    )
    .await;
    let sent = outbox_settled(&app).await;
    assert!(sent.iter().all(|m| m.state == DeliveryState::Sent));
    let mail = smtp.wait_for(4).await;
    assert_eq!(mail.len(), 4);
    assert_eq!(mail[3].to(), "auditoria@iasolaris.com.br");
}

#[actix_web::test]
async fn two_instances_deliver_each_alert_once() {
    let smtp = SmtpServer::start(SmtpOptions::default()).await;
    let a = alert_app(&smtp, &[]).await;
    let b = spawn_replica_with(
        &a,
        TestOptions {
            env: mail_env(&smtp),
            ..TestOptions::default()
        },
    )
    .await;
    // Users spend through both instances at once, so both workers find mail to send.
    let people: Vec<Person> = (0..8).map(person).collect();
    let spending = people.iter().enumerate().map(|(i, p)| {
        let app = if i % 2 == 0 { &a } else { &b };
        spend_to(app, *p, ALLOWANCE)
    });
    futures_util::future::join_all(spending).await;
    let sent = outbox_settled(&a).await;
    assert_eq!(
        sent.len(),
        8 * 2 * 3,
        "80% and 100% for each user, three recipients each"
    );
    assert!(
        sent.iter()
            .all(|m| m.state == DeliveryState::Sent && m.attempts == 1)
    );
    let mail = smtp.wait_for(sent.len()).await;
    assert_each_once(&mail, &sent);
}

#[actix_web::test]
async fn without_smtp_mail_is_written_to_files() {
    let dir = tempfile::tempdir().unwrap();
    let app = spawn_app(TestOptions {
        env: vec![
            ("TOKENGATE_MAIL_DIR", dir.path().display().to_string()),
            ("TOKENGATE_ADMIN_EMAILS", ADMINS[0].into()),
        ],
        ..TestOptions::default()
    })
    .await;
    heavy_models(&app);
    spend_to(&app, ANA, 800_000).await;
    let sent = outbox_settled(&app).await;
    assert_eq!(sent.len(), 2);
    let files: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "eml"))
        .collect();
    assert_eq!(files.len(), 2, "{files:?}");
    let text: String = files
        .iter()
        .map(|f| std::fs::read_to_string(f).unwrap())
        .collect();
    assert!(text.contains("To: ana@example.com"));
    assert!(text.contains(&format!("To: {}", ADMINS[0])));
}

// `tokengate mail test`, through each kind of SMTP connection.

fn tokengate_cmd(env: &[(&str, String)], args: &[&str]) -> std::process::Output {
    let db = tempfile::tempdir().unwrap();
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_tokengate"));
    cmd.args(args)
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env(
            "TOKENGATE_DATABASE_URL",
            format!("sqlite://{}/t.db", db.path().display()),
        );
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().unwrap()
}

async fn run_mail_test(env: Vec<(&'static str, String)>, address: &str) -> std::process::Output {
    let address = address.to_owned();
    actix_web::rt::task::spawn_blocking(move || tokengate_cmd(&env, &["mail", "test", &address]))
        .await
        .unwrap()
}

#[actix_web::test]
async fn check_command_reaches_the_smtp_server() {
    let fake = crate::fake_provider::FakeProvider::start();
    let mut smtp = SmtpServer::down(SmtpOptions::default());
    let env = vec![
        ("TOKENGATE_UPSTREAM_URL", fake.base_url()),
        ("TOKENGATE_SMTP_URL", smtp.url()),
    ];
    let run = |env: Vec<(&'static str, String)>| {
        actix_web::rt::task::spawn_blocking(move || tokengate_cmd(&env, &["check"]))
    };
    let out = run(env.clone()).await.unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(!out.status.success());
    assert!(
        stdout.contains(&format!("mail ({}): FAILED", smtp.url())),
        "{stdout}"
    );

    smtp.up().await;
    let out = run(env).await.unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains(&format!("mail ({}): ok", smtp.url())));
    assert!(smtp.messages().is_empty(), "check sends nothing");
}

/// A self-signed certificate for `localhost`, trusted through SSL_CERT_FILE.
fn self_signed(dir: &std::path::Path) -> (std::path::PathBuf, std::path::PathBuf) {
    let cert = dir.join("cert.pem");
    let key = dir.join("key.pem");
    let status = std::process::Command::new("openssl")
        .args([
            "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
        ])
        .args([
            "-subj",
            "/CN=localhost",
            "-addext",
            "subjectAltName=DNS:localhost",
        ])
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .stderr(std::process::Stdio::null())
        .status()
        .unwrap();
    assert!(status.success());
    (cert, key)
}

#[actix_web::test]
async fn mail_test_command_over_plain_starttls_and_implicit_tls() {
    let plain = SmtpServer::start(SmtpOptions::default()).await;
    let out = run_mail_test(vec![("TOKENGATE_SMTP_URL", plain.url())], "ana@example.com").await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mail = plain.wait_for(1).await;
    assert_eq!(mail[0].subject, "tokengate: mensagem de teste");
    assert_eq!(mail[0].to(), "ana@example.com");

    let certs = tempfile::tempdir().unwrap();
    let (cert, key) = self_signed(certs.path());
    for (tls, url) in [
        (
            Tls::Starttls,
            "smtp://tg:s3cret@localhost:{port}?tls=required",
        ),
        (Tls::Implicit, "smtps://tg:s3cret@localhost:{port}"),
    ] {
        let server = SmtpServer::start(SmtpOptions {
            tls,
            cert: Some((cert.clone(), key.clone())),
            auth: Some(("tg".into(), "s3cret".into())),
            ..SmtpOptions::default()
        })
        .await;
        let url = url.replace("{port}", &server.port.to_string());
        let env = vec![
            ("TOKENGATE_SMTP_URL", url.clone()),
            ("SSL_CERT_FILE", cert.display().to_string()),
            ("TOKENGATE_LOCALE", "en".into()),
        ];
        let out = run_mail_test(env.clone(), "ana@example.com").await;
        let stdout = String::from_utf8_lossy(&out.stdout).to_string();
        assert!(
            out.status.success(),
            "{url}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(!stdout.contains("s3cret"), "password shown: {stdout}");
        let mail = server.wait_for(1).await;
        assert_eq!(mail[0].subject, "tokengate: test message");

        // A wrong password is a clear failure, and the password is not echoed.
        let bad = url.replace("s3cret", "wrong-pass");
        let mut env = env;
        env[0] = ("TOKENGATE_SMTP_URL", bad);
        let out = run_mail_test(env, "ana@example.com").await;
        let stderr = String::from_utf8_lossy(&out.stderr).to_string();
        assert!(!out.status.success());
        assert!(stderr.contains("SMTP"), "{stderr}");
        assert!(!stderr.contains("wrong-pass"), "{stderr}");
    }
}

#[actix_web::test]
async fn mail_test_command_refuses_bad_input_clearly() {
    let out = run_mail_test(vec![], "not-an-address").await;
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("not-an-address"));

    let out = run_mail_test(
        vec![(
            "TOKENGATE_SMTP_URL",
            "smtp://127.0.0.1:25?tls=sometimes".into(),
        )],
        "ana@example.com",
    )
    .await;
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("TOKENGATE_SMTP_URL"));

    // Nothing configured: the message is written where an operator can read it.
    let dir = tempfile::tempdir().unwrap();
    let out = run_mail_test(
        vec![("TOKENGATE_MAIL_DIR", dir.path().display().to_string())],
        "ana@example.com",
    )
    .await;
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains("was written to"));
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
}

/// The binary, killed with SIGKILL after it wrote alerts it could not send yet,
/// sends them once after it starts again.
#[actix_web::test]
async fn alerts_written_before_a_kill_are_sent_once_after_restart() {
    let fake = crate::fake_provider::FakeProvider::start();
    let db = TestDb::new();
    let port = free_port();
    let mut smtp = SmtpServer::down(SmtpOptions::default());
    let mut env = mail_env(&smtp);
    env.push(("TOKENGATE_INSTANCE_ID", "mail-kill-test".into()));
    env.push(("TOKENGATE_MAIL_MAX_ATTEMPTS", "100".into()));
    let spawn = || tokengate_process(port, &db.url, &fake.base_url(), &env);
    let client = reqwest::Client::new();
    let base = format!("http://127.0.0.1:{port}");
    let mut child = spawn();
    wait_ready(&client, &base).await;
    let ledger = observer_ledger(&db.url, &fake.base_url());
    let observer = ledger.db().clone();
    ledger
        .set_weights(
            "w1000",
            Weights::from_milli(1000, 1_000_000).unwrap().into(),
            &Actor::Cli,
        )
        .unwrap();
    // 20 requests of 40,008 tokens: 80.016% of the allowance.
    for _ in 0..20 {
        let res = client
            .post(format!("{base}/v1/chat/completions"))
            .bearer_auth(CLIENT_KEY)
            .header("x-librechat-user-id", ANA.id)
            .header("x-librechat-user-email", "ana@example.com")
            .body(chat_body("w1000", "oi", false, Some(40)).to_string())
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 200);
    }
    // The alert is written and its mail tried, but SMTP is down.
    wait_until(Duration::from_secs(30), || {
        let tried = alerts::messages(&observer).unwrap();
        async move { tried.len() == 3 && tried.iter().all(|m| m.attempts >= 1) }
    })
    .await;
    child.kill().unwrap();
    child.wait().unwrap();

    smtp.up().await;
    let mut child = spawn();
    wait_ready(&client, &base).await;
    wait_until(Duration::from_secs(30), || {
        let done = alerts::messages(&observer)
            .unwrap()
            .iter()
            .all(|m| m.state == DeliveryState::Sent);
        async move { done }
    })
    .await;
    let sent = alerts::messages(&observer).unwrap();
    let mail = smtp.wait_for(3).await;
    assert_each_once(&mail, &sent);
    one_alert_mail(&mail, "ana@example.com");
    child.kill().unwrap();
    child.wait().unwrap();
}

/// A user who spends a plan down ends a few tokens short of 100% (the clamp stops
/// the last answer there): the next request finds them exhausted. That sends the
/// "Seus tokens acabaram" mail once (it never did), counts them as blocked in the
/// dashboard and the command line, and its text says the plan is used up, not
/// "99%". A refusal because of requests still in flight, or of one message larger
/// than a healthy balance, is not exhaustion: no mail, not blocked, and its own text.
#[actix_web::test]
async fn spending_a_plan_down_sends_the_exhausted_mail_once_and_blocks() {
    let smtp = SmtpServer::start(SmtpOptions::default()).await;
    let app = alert_app(&smtp, &[]).await;
    app.default_plan(10_000);
    let ana = |body: &serde_json::Value| chat_with_email(&app, ANA, body.clone());

    // Spent down in one answer that runs to the limit the balance allows; the
    // prompt's estimate is a little above what the provider counts, as usual.
    let res = ana(&chat_body("fill", "Olá, tudo bem?", false, Some(1_000_000))).await;
    assert_eq!(res.status(), 200);
    let s = app.summary(ANA.id);
    assert!(s.remaining < 1_000 && s.used_percent < 100, "{s:?}");
    // Its settlement crossed 80% only: three messages (the user, two admins).
    assert_eq!(outbox_settled(&app).await.len(), 3);

    let blocked_text = "Seus tokens acabaram: você usou todo o seu plano Teste 10000. Para continuar, peça mais créditos a suporte@iasolaris.com.br.";
    for _ in 0..3 {
        let res = ana(&chat_body("fake-model", "oi", false, Some(10))).await;
        assert_eq!(res.status(), 429);
        let err: serde_json::Value = res.json().await.unwrap();
        assert_eq!(err["error"]["message"], blocked_text);
    }
    // One 100% alert, however many refusals: to the user and each admin.
    let sent = outbox_settled(&app).await;
    assert_eq!(sent.len(), 6, "{sent:?}");
    let mail = smtp.wait_for(6).await;
    let (user_mail, _) = one_alert_mail(&mail[3..], "ana@example.com");
    assert_eq!(
        user_mail.subject,
        "Seus tokens acabaram: o chat está pausado"
    );
    assert!(
        user_mail.text.contains("você já usou 100% do seu plano"),
        "{}",
        user_mail.text
    );
    assert!(!user_mail.text.contains("99%"), "{}", user_mail.text);
    let thresholds: Vec<u8> = alerts_of(&app, ANA).iter().map(|a| a.threshold).collect();
    assert_eq!(thresholds, [80, 100]);
    // Blocked, for the dashboard and the command line.
    assert_eq!(
        app.ledger()
            .overview_in(tokengate::domain::Scope::All)
            .unwrap()
            .blocked,
        1
    );
    assert!(app.summary(ANA.id).blocked);
    // A top-up lifts the block and re-arms the alerts: spent down again, 80% and
    // then exhaustion mail again.
    app.ledger()
        .grant_credits(
            &parse_user_ref(ANA.id),
            TokenAmount::new(5_000).unwrap(),
            &Actor::Cli,
            None,
        )
        .unwrap();
    assert!(!app.summary(ANA.id).blocked);
    assert_eq!(
        app.ledger()
            .overview_in(tokengate::domain::Scope::All)
            .unwrap()
            .blocked,
        0
    );
    assert_eq!(
        ana(&chat_body("fill", "Olá, tudo bem?", false, Some(1_000_000)))
            .await
            .status(),
        200
    );
    assert_eq!(
        ana(&chat_body("fake-model", "oi", false, Some(10)))
            .await
            .status(),
        429
    );
    assert_eq!(outbox_settled(&app).await.len(), 12);
    assert_eq!(smtp.wait_for(12).await.len(), 12);
    app.assert_invariant(ANA.id);
}

#[actix_web::test]
async fn refusals_that_are_not_exhaustion_send_nothing_and_say_why() {
    let smtp = SmtpServer::start(SmtpOptions::default()).await;
    let app = alert_app(&smtp, &[]).await;
    app.default_plan(10_000);
    let ana = |body: &serde_json::Value| chat_with_email(&app, ANA, body.clone());

    // Requests in flight hold the balance: wait for them, says the text.
    let mut first = ana(&chat_body("trickle", "oi", true, Some(1_000_000))).await;
    assert_eq!(first.status(), 200);
    let _ = first.chunk().await.unwrap();
    let res = ana(&chat_body("fake-model", "oi", false, Some(10))).await;
    assert_eq!(res.status(), 429);
    let err: serde_json::Value = res.json().await.unwrap();
    assert_eq!(
        err["error"]["message"],
        "Seu saldo está reservado para as respostas em andamento: espere que terminem e envie de novo."
    );
    drop(first);
    app.wait_for_no_holds(ANA.id).await;

    // One message larger than a healthy balance: it says so.
    let long = "palavra ".repeat(20_000);
    let res = ana(&chat_body("fake-model", &long, false, Some(10))).await;
    assert_eq!(res.status(), 429);
    let err: serde_json::Value = res.json().await.unwrap();
    let text = err["error"]["message"].as_str().unwrap();
    assert!(
        text.starts_with("Esta mensagem é maior que o saldo restante de "),
        "{text}"
    );
    assert!(text.chars().count() <= 185, "{text}");

    // Neither is exhaustion: no 100% alert, nothing mailed, not blocked.
    assert!(alerts_of(&app, ANA).iter().all(|a| a.threshold < 100));
    assert!(outbox_settled(&app).await.is_empty());
    assert!(smtp.messages().is_empty());
    assert!(!app.summary(ANA.id).blocked);
    assert_eq!(
        app.ledger()
            .overview_in(tokengate::domain::Scope::All)
            .unwrap()
            .blocked,
        0
    );
    app.assert_invariant(ANA.id);
}

/// A chat as `p`, with LibreChat's email and name headers.
async fn chat_with_email(app: &TestApp, p: Person, body: serde_json::Value) -> reqwest::Response {
    let mut req = app
        .post("/v1/chat/completions")
        .header("x-librechat-user-id", p.id);
    if let Some(e) = p.email {
        req = req.header("x-librechat-user-email", e);
    }
    if let Some(n) = p.name {
        req = req.header("x-librechat-user-name", n);
    }
    req.body(body.to_string()).send().await.unwrap()
}

/// On a plan with overage, the 100% alert says the chat goes on and that overage
/// is now billed, at what price and up to how much, to the user and the admins; the
/// user is not blocked.
#[actix_web::test]
async fn the_full_alert_of_a_plan_with_overage_says_it_is_now_billed() {
    let smtp = SmtpServer::start(SmtpOptions::default()).await;
    let app = alert_app(&smtp, &[]).await;
    app.ledger()
        .create_plan(
            &tokengate::domain::PlanSpec {
                overage: Some(tokengate::domain::Overage {
                    cap: tokengate::domain::plan::Allowance::new(500_000).unwrap(),
                    price: tokengate::domain::PricePer1k::parse("0,10").unwrap(),
                }),
                ..plan_spec("Pro", 10_000)
            },
            true,
            &Actor::Cli,
        )
        .unwrap();
    let ana = |max: i64| chat_with_email(&app, ANA, chat_body("fill", "Olá", false, Some(max)));
    assert_eq!(ana(8_500).await.status(), 200);
    assert_eq!(outbox_settled(&app).await.len(), 3, "80%");
    assert_eq!(ana(3_000).await.status(), 200);
    assert_eq!(outbox_settled(&app).await.len(), 6, "100%");
    let mail = smtp.wait_for(6).await;
    let (user_mail, admin_mail) = one_alert_mail(&mail[3..], "ana@example.com");
    assert_eq!(
        user_mail.subject,
        "Sua franquia acabou: o uso agora é cobrado como excedente"
    );
    for text in [&user_mail.text, &user_mail.html] {
        assert!(
            text.contains("cobrado como excedente, a R$ 0,10 por 1.000 tokens, até 500.000 tokens neste mês")
                || text.contains("cobrado como excedente, a <strong>R$ 0,10 por 1.000 tokens</strong>, até 500.000 tokens neste mês"),
            "{text}"
        );
        assert!(!text.contains("pausad"), "{text}");
    }
    for m in admin_mail {
        assert!(
            m.text.contains("O plano continua com excedente: a R$ 0,10 por 1.000 tokens, até 500.000 tokens neste ciclo."),
            "{}",
            m.text
        );
        assert!(!m.subject.contains("bloqueado"), "{}", m.subject);
    }
    let s = app.summary(ANA.id);
    assert!(!s.blocked && s.overage.tokens > 0, "{s:?}");
}
