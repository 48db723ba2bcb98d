//! Distributors: a user belongs to the distributor of the key that brought them (the
//! same LibreChat id under two distributors is two users), a shared LibreChat names
//! the distributor only with a key allowed to, and a distributor's monthly pool is
//! exact under concurrency, across processes, and never touches another's.

use crate::helpers::*;
use futures_util::future::join_all;
use serde_json::Value;
use tokengate::domain::{DistributorName, Pool, TenantId, TokenAmount};
use tokengate::ledger::Actor;
use tokengate::ledger::distributors::{DistributorChange, DistributorRow, NewKey};
use tokengate::proxy::auth::ClientKeys;

const KEY_A: &str = "tg-distributor-a-key-0123456789";
const KEY_B: &str = "tg-distributor-b-key-0123456789";
const SHARED_KEY: &str = "tg-shared-librechat-key-0123456789";

/// Makes a distributor, with a pool of `pool` tokens when given, and stores `key`
/// for it.
fn distributor(app: &TestApp, name: &str, pool: Option<i64>, tenant: Option<&str>, key: &str) {
    let change = DistributorChange {
        name: DistributorName::parse(name),
        contact: Some(Some(format!("suporte@{}.com.br", name.to_lowercase()))),
        tenant: Some(tenant.and_then(TenantId::parse)),
        pool: Some(pool.map(|n| Pool {
            cap: TokenAmount::new(n).unwrap(),
        })),
    };
    app.ledger()
        .create_distributor(&change, &Actor::Cli)
        .unwrap();
    store_key(app, Some(name), key, false);
}

fn store_key(app: &TestApp, distributor: Option<&str>, key: &str, names_distributors: bool) {
    let new = NewKey {
        digest_hex: hex::encode(ClientKeys::digest(key)),
        label: key.chars().take(11).collect(),
        names_distributors,
    };
    app.ledger()
        .add_client_key(distributor, &new, &Actor::Cli)
        .unwrap();
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
