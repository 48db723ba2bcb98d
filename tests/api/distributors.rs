//! Distributors: a user belongs to the distributor of the key that brought them (the
//! same LibreChat id under two distributors is two users), a shared LibreChat names
//! the distributor only with a key allowed to, and a distributor's monthly pool is
//! exact under concurrency, across processes, and never touches another's.

use crate::helpers::*;
use crate::smtp::{SmtpOptions, SmtpServer};
use futures_util::future::join_all;
use serde_json::Value;
use tokengate::domain::{DistributorId, DistributorName, Pool, TenantId, TokenAmount};
use tokengate::ledger::distributors::{DistributorChange, DistributorRow};
use tokengate::ledger::{Actor, parse_user_ref};

const KEY_A: &str = "tg-distributor-a-key-0123456789";
const KEY_B: &str = "tg-distributor-b-key-0123456789";
const SHARED_KEY: &str = "tg-shared-librechat-key-0123456789";

/// Makes a distributor, with a pool of `pool` tokens when given, and stores `key`
/// for it.
/// Its contact is `suporte@{name}.com.br`.
fn distributor(
    app: &TestApp,
    name: &str,
    pool: Option<i64>,
    tenant: Option<&str>,
    key: &str,
) -> DistributorId {
    let change = DistributorChange {
        name: DistributorName::parse(name),
        contact: Some(Some(format!("suporte@{}.com.br", name.to_lowercase()))),
        tenant: Some(tenant.and_then(TenantId::parse)),
        pool: Some(pool.map(|n| Pool {
            cap: TokenAmount::new(n).unwrap(),
        })),
    };
    make_distributor(app.ledger(), change, key)
}

fn store_key(app: &TestApp, distributor: Option<&str>, key: &str, names_distributors: bool) {
    store_client_key(app.ledger(), distributor, key, names_distributors);
}

fn row(app: &TestApp, name: &str) -> DistributorRow {
    app.ledger()
        .list_distributors()
        .unwrap()
        .into_iter()
        .find(|d| d.name == name)
        .unwrap()
}

/// A chat as a LibreChat with `key` sends it, with extra headers.
async fn chat_with(
    app: &TestApp,
    key: &str,
    user: &str,
    headers: &[(&str, &str)],
    body: &Value,
) -> (u16, Value) {
    let mut req = app
        .client
        .post(format!("{}/v1/chat/completions", app.address))
        .bearer_auth(key)
        .header("content-type", "application/json")
        .header("x-librechat-user-id", user);
    for (name, value) in headers {
        req = req.header(*name, *value);
    }
    let res = req.body(body.to_string()).send().await.unwrap();
    let status = res.status().as_u16();
    (status, res.json::<Value>().await.unwrap_or(Value::Null))
}

fn fill() -> Value {
    chat_body("fill", "palavra palavra palavra", false, Some(100))
}

/// Every user of a distributor, with what they were charged in all.
fn charged_by(app: &TestApp, distributor_id: i64) -> (usize, i64) {
    let ledger = app.ledger();
    let users: Vec<_> = ledger
        .list_users()
        .unwrap()
        .into_iter()
        .filter(|u| u.distributor_id == distributor_id)
        .collect();
    let charged = users
        .iter()
        .map(|u| {
            ledger
                .usage_records(u.id)
                .unwrap()
                .iter()
                .map(|r| r.charged)
                .sum::<i64>()
        })
        .sum();
    (users.len(), charged)
}

/// Two distributors with pools, the same ten LibreChat ids under each, 100 answers
/// each at once through two processes on one database: each pool is spent to within
/// one request and never past it, what it counts is exactly what its users were
/// charged, and one distributor's use never touches the other's pool.
#[actix_web::test]
async fn each_pool_is_exact_under_concurrency_across_two_distributors_and_processes() {
    let a = spawn_app(TestOptions::default()).await;
    let b = spawn_replica(&a).await;
    a.default_plan(10_000_000);
    distributor(&a, "Alfa", Some(2_750), None, KEY_A);
    distributor(&a, "Beta", Some(5_500), None, KEY_B);
    let requests = (0..200).map(|i| {
        let app = if i % 2 == 0 { &a } else { &b };
        let key = if i % 4 < 2 { KEY_A } else { KEY_B };
        let user = format!("65f1c0ffee00000000000{:03}", i % 10);
        async move { (key, chat_with(app, key, &user, &[], &fill()).await) }
    });
    let results = join_all(requests).await;
    a.settled();
    b.settled();
    for (pool_key, cap, name) in [(KEY_A, 2_750, "Alfa"), (KEY_B, 5_500, "Beta")] {
        let mine: Vec<_> = results.iter().filter(|(k, _)| *k == pool_key).collect();
        let served = mine.iter().filter(|(_, (s, _))| *s == 200).count();
        for (_, (status, body)) in mine.iter().filter(|(_, (s, _))| *s != 200) {
            assert_eq!(*status, 429, "{body}");
            assert_eq!(
                body["error"]["message"],
                format!(
                    "O limite mensal de uso do seu provedor foi atingido. Para continuar, fale com suporte@{}.com.br.",
                    name.to_lowercase()
                )
            );
        }
        let d = row(&a, name);
        let (users, charged) = charged_by(&a, d.id);
        assert_eq!(users, 10, "the same ten ids are ten users of each");
        assert_eq!(d.pool_used, charged, "the pool counts every charge");
        assert!(d.pool_used <= cap, "{name}: {} past {cap}", d.pool_used);
        // Each answer costs 110 (10 in, 100 out): refusing while a whole one fit
        // would be refusing early.
        assert!(
            d.pool_used > cap - 110,
            "{name}: refused early at {}",
            d.pool_used
        );
        // The last answers may be cut to what the pool has left, never refused
        // while a whole one fits.
        assert!(served as i64 >= cap / 110, "{name}: {served} served");
    }
    // Nothing in flight is left holding either pool, and every balance adds up.
    for i in 0..10 {
        for summary in
            a.ledger().list_users().unwrap().into_iter().filter(|u| {
                u.external_id.as_deref() == Some(&format!("65f1c0ffee00000000000{i:03}"))
            })
        {
            assert_eq!(summary.held, 0);
            let report = a.ledger().check_invariant(summary.id).unwrap();
            assert!(report.holds(), "{report:?}");
        }
    }
}

/// The same LibreChat id through the install's key and a distributor's is two
/// users: neither spends the other's balance, and a user an admin created by email
/// is linked only by a chat of the install's own.
#[actix_web::test]
async fn the_same_librechat_id_under_two_distributors_is_two_users() {
    let app = spawn_app(TestOptions::default()).await;
    app.default_plan(1_000);
    distributor(&app, "Alfa", None, None, KEY_A);
    let shared_id = "65f1c0ffee0000000000aaaa";
    let (status, _) = chat_with(&app, CLIENT_KEY, shared_id, &[], &fill()).await;
    assert_eq!(status, 200);
    let (status, _) = chat_with(&app, KEY_A, shared_id, &[], &fill()).await;
    assert_eq!(status, 200);
    let users: Vec<_> = app
        .ledger()
        .list_users()
        .unwrap()
        .into_iter()
        .filter(|u| u.external_id.as_deref() == Some(shared_id))
        .collect();
    assert_eq!(users.len(), 2, "{users:?}");
    let alfa = row(&app, "Alfa");
    let mut owners: Vec<i64> = users.iter().map(|u| u.distributor_id).collect();
    owners.sort_unstable();
    assert_eq!(owners, vec![1, alfa.id]);
    // Each paid for their own answer only.
    for u in &users {
        assert_eq!(u.used_this_cycle, 110, "{u:?}");
    }
    assert_eq!(alfa.users, 1);
}

/// A distributor is named in `X-LibreChat-Tenant-Id` only by a key allowed to: the
/// install's key and a distributor's are refused (403, nothing forwarded, nobody
/// created), a shared key reaches the named distributor, an unknown tenant is a 400,
/// and a blank or unfilled placeholder is no name at all.
#[actix_web::test]
async fn the_tenant_header_is_refused_from_a_key_not_allowed_to_use_it() {
    let app = spawn_app(TestOptions::default()).await;
    app.default_plan(1_000_000);
    distributor(&app, "Alfa", None, Some("tenant-alfa"), KEY_A);
    distributor(&app, "Beta", None, Some("tenant-beta"), KEY_B);
    store_key(&app, None, SHARED_KEY, true);
    let user = "65f1c0ffee0000000000bbbb";
    let calls_before = app.fake.request_count();
    for key in [CLIENT_KEY, KEY_A] {
        let (status, body) = chat_with(
            &app,
            key,
            user,
            &[("x-librechat-tenant-id", "tenant-beta")],
            &fill(),
        )
        .await;
        assert_eq!(status, 403, "{body}");
        assert_eq!(body["error"]["code"], "tenant_not_allowed");
        assert!(
            body["error"]["message"]
                .as_str()
                .unwrap()
                .starts_with("Esta chave de cliente não pode indicar um distribuidor")
        );
        // The models list refuses it the same way.
        let res = app
            .client
            .get(format!("{}/v1/models", app.address))
            .bearer_auth(key)
            .header("x-librechat-user-id", user)
            .header("x-librechat-tenant-id", "tenant-beta")
            .send()
            .await
            .unwrap();
        assert_eq!(res.status().as_u16(), 403);
    }
    assert_eq!(
        app.fake.request_count(),
        calls_before,
        "nothing was forwarded"
    );
    assert!(
        app.ledger().list_users().unwrap().is_empty(),
        "nobody was created"
    );

    let (status, body) = chat_with(
        &app,
        SHARED_KEY,
        user,
        &[("x-librechat-tenant-id", "tenant-beta")],
        &fill(),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let (status, body) = chat_with(
        &app,
        SHARED_KEY,
        user,
        &[("x-librechat-tenant-id", "tenant-gama")],
        &fill(),
    )
    .await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["error"]["code"], "unknown_tenant");
    for blank in ["", "{{LIBRECHAT_USER_TENANTID}}"] {
        let (status, body) = chat_with(
            &app,
            KEY_A,
            user,
            &[("x-librechat-tenant-id", blank)],
            &fill(),
        )
        .await;
        assert_eq!(status, 200, "{blank:?}: {body}");
    }
    let beta = row(&app, "Beta");
    let alfa = row(&app, "Alfa");
    assert_eq!((beta.users, alfa.users), (1, 1));
    assert_eq!(app.ledger().list_users().unwrap().len(), 2);

    // The shared key naming no tenant: the key's own distributor (the install's).
    let (status, body) = chat_with(&app, SHARED_KEY, user, &[], &fill()).await;
    assert_eq!(status, 200, "{body}");
    let users = app.ledger().list_users().unwrap();
    assert_eq!(users.len(), 3);
    assert!(users.iter().any(|u| u.distributor_id == 1));
}

/// A key stored beside the running server (the command line) works on its first
/// request, and one revoked stops working within seconds.
#[actix_web::test]
async fn a_key_made_or_revoked_beside_the_running_server_counts_within_seconds() {
    let app = spawn_app(TestOptions::default()).await;
    app.default_plan(1_000_000);
    let user = "65f1c0ffee0000000000cccc";
    let (status, _) = chat_with(&app, KEY_A, user, &[], &fill()).await;
    assert_eq!(status, 401);
    distributor(&app, "Alfa", None, None, KEY_A);
    let (status, body) = chat_with(&app, KEY_A, user, &[], &fill()).await;
    assert_eq!(status, 200, "{body}");
    let label: String = KEY_A.chars().take(11).collect();
    assert_eq!(
        app.ledger().revoke_client_key(&label, &Actor::Cli).unwrap(),
        1
    );
    let revoked_at = std::time::Instant::now();
    wait_until(std::time::Duration::from_secs(15), || async {
        chat_with(&app, KEY_A, user, &[], &fill()).await.0 == 401
    })
    .await;
    assert!(revoked_at.elapsed() < std::time::Duration::from_secs(10));
    // The install's own key never depends on the stored ones.
    let (status, _) = chat_with(&app, CLIENT_KEY, user, &[], &fill()).await;
    assert_eq!(status, 200);
}

/// A pool set in the middle of a month counts what the distributor's users have
/// already used this month: setting it never hands out the month again.
#[actix_web::test]
async fn a_pool_set_mid_month_counts_what_was_used_before() {
    let app = spawn_app(TestOptions::default()).await;
    app.default_plan(1_000_000);
    distributor(&app, "Alfa", None, None, KEY_A);
    for i in 0..3 {
        let user = format!("65f1c0ffee0000000000000{i}");
        let (status, body) = chat_with(&app, KEY_A, &user, &[], &fill()).await;
        assert_eq!(status, 200, "{body}");
    }
    app.settled();
    let change = DistributorChange {
        pool: Some(Some(Pool {
            cap: TokenAmount::new(3 * 110 + 150).unwrap(),
        })),
        ..DistributorChange::default()
    };
    app.ledger()
        .edit_distributor("Alfa", &change, &Actor::Cli)
        .unwrap();
    assert_eq!(row(&app, "Alfa").pool_used, 330, "the month so far counts");
    // 150 left: a whole answer, one cut to what is left, then the pool's block.
    let mut served = 0;
    let refusal = loop {
        let (status, body) = chat_with(&app, KEY_A, "65f1c0ffee00000000000009", &[], &fill()).await;
        app.settled();
        if status != 200 {
            break body;
        }
        served += 1;
        assert!(served <= 2, "served past the pool: {body}");
    };
    assert!(
        refusal["error"]["message"]
            .as_str()
            .unwrap()
            .starts_with("O limite mensal de uso do seu provedor foi atingido"),
        "{refusal}"
    );
    let used = row(&app, "Alfa").pool_used;
    assert!((330 + 110..=480).contains(&used), "{used}");
}

/// A distributor's users are told its contact, in the chat's refusals and in their
/// mails, and its active admins are mailed about its users beside the install's
/// configured addresses; the install's own users keep the install's contact and
/// admins.
#[actix_web::test]
async fn a_distributors_users_hear_its_contact_and_its_admins_hear_of_them() {
    const OWNER: &str = "dona@solaris.com.br";
    const MANAGER: &str = "gerente@sul.com.br";
    let smtp = SmtpServer::start(SmtpOptions::default()).await;
    let app = spawn_app(TestOptions {
        env: vec![
            ("TOKENGATE_SMTP_URL", smtp.url()),
            ("TOKENGATE_ADMIN_EMAILS", OWNER.into()),
            ("TOKENGATE_SUPPORT_CONTACT", "suporte@solaris.com.br".into()),
            ("TOKENGATE_MAIL_RETRY_BASE_SECS", "0.05".into()),
        ],
        ..TestOptions::default()
    })
    .await;
    app.default_plan(1_000);
    let sul = distributor(&app, "Sul", None, None, KEY_A);
    let ledger = app.ledger();
    add_admin_of(ledger, MANAGER, Some(sul));
    add_admin_of(ledger, "antigo@sul.com.br", Some(sul));
    let db = ledger.db();
    let manager = tokengate::admin::accounts::by_email(db, MANAGER)
        .unwrap()
        .unwrap();
    let former = tokengate::admin::accounts::by_email(db, "antigo@sul.com.br")
        .unwrap()
        .unwrap();
    tokengate::admin::accounts::set_disabled(db, &manager, former.id, true, app.now().naive_utc())
        .unwrap();

    // Past 80%: Sara (Sul's) and Davi (the install's).
    let heavy = chat_body("fill", "palavra", false, Some(850));
    for (key, user, email) in [
        (KEY_A, "65f1c0ffee0000000000c001", "sara@sul.com.br"),
        (CLIENT_KEY, "65f1c0ffee0000000000c002", "davi@direto.com.br"),
    ] {
        let (status, body) = chat_with(
            &app,
            key,
            user,
            &[("x-librechat-user-email", email)],
            &heavy,
        )
        .await;
        assert_eq!(status, 200, "{body}");
    }
    let mail = smtp.wait_for(5).await;
    let to = |who: &str| -> Vec<&crate::smtp::Received> {
        mail.iter().filter(|m| m.to() == who).collect::<Vec<_>>()
    };
    let sara_mail = to("sara@sul.com.br");
    assert_eq!(sara_mail.len(), 1);
    assert!(
        sara_mail[0]
            .text
            .contains("peça créditos a suporte@sul.com.br"),
        "{}",
        sara_mail[0].text
    );
    let davi_mail = to("davi@direto.com.br");
    assert!(
        davi_mail[0]
            .text
            .contains("peça créditos a suporte@solaris.com.br")
    );
    let about = |m: &&crate::smtp::Received, who: &str| m.text.contains(who);
    assert_eq!(to(OWNER).len(), 2, "the install's address hears of both");
    let managers = to(MANAGER);
    assert_eq!(managers.len(), 1, "Sul's admin hears of Sul's user only");
    assert!(about(&managers[0], "sara@sul.com.br"));
    assert!(
        to("antigo@sul.com.br").is_empty(),
        "a disabled admin is not mailed"
    );
    assert_eq!(mail.len(), 5);

    // Sara asks for credits: both admins hear; declined, she is told Sul's contact.
    let sara = app.user_id("sara@sul.com.br");
    let request = ledger
        .request_credits(sara, TokenAmount::new(5_000).unwrap(), Some("projeto"))
        .unwrap();
    let mail = smtp.wait_for(7).await;
    let asked: Vec<_> = mail[5..].iter().map(|m| m.to()).collect();
    assert!(
        asked.contains(&OWNER) && asked.contains(&MANAGER),
        "{asked:?}"
    );
    ledger
        .decide_credit_request(
            request,
            false,
            Some("fim do mês"),
            &Actor::Admin(MANAGER.into()),
            "pedido de créditos",
        )
        .unwrap();
    let mail = smtp.wait_for(8).await;
    assert_eq!(mail[7].to(), "sara@sul.com.br");
    assert!(
        mail[7].text.contains("Fale com suporte@sul.com.br"),
        "{}",
        mail[7].text
    );

    // Suspended, Sara is told to talk to Sul.
    ledger
        .set_suspended(&parse_user_ref(&format!("#{sara}")), true, &Actor::Cli)
        .unwrap();
    let (status, body) = chat_with(&app, KEY_A, "65f1c0ffee0000000000c001", &[], &fill()).await;
    assert_eq!(status, 403, "{body}");
    let message = body["error"]["message"].as_str().unwrap();
    assert!(message.contains("fale com suporte@sul.com.br"), "{message}");
}
