//! A distributor's admin reaches only that distributor: every route of the
//! dashboard, taken from the router's own list, is tried with another
//! distributor's ids (users, plans, requests, admins) and answers 404, changing
//! nothing; every page it can open shows nothing of the other distributor's.

use crate::admin::{Admin, PASSWORD_FOR_TESTS, csrf_of};
use crate::helpers::*;
use reqwest::StatusCode;
use tokengate::domain::{DistributorId, TokenAmount};
use tokengate::ledger::Actor;

const KEY_ALFA: &str = "tg-isolation-alfa-key-0123456789";
const KEY_BETA: &str = "tg-isolation-beta-key-0123456789";

/// Two distributors, each with a user, a plan, a credit request, codes and an
/// admin; Beta's user also has an alert and an audit trail.
struct World {
    alfa: DistributorId,
    alfa_user: i64,
    alfa_plan: i64,
    global_plan: i64,
    beta_user: i64,
    beta_plan: i64,
    beta_request: i64,
    beta_admin: i64,
    global_admin: i64,
}

/// What of Beta's must never be shown to Alfa's admin.
const BETA_SECRETS: [&str; 6] = [
    "bruno@beta.com.br",
    "Plano Beta Secreto",
    "lote beta secreto",
    "nota beta secreta",
    "admin@beta.com.br",
    "admin@localhost",
];

fn distributor(app: &TestApp, name: &str, key: &str) -> DistributorId {
    named_distributor(app.ledger(), name, key)
}

async fn chat(app: &TestApp, key: &str, user: &str, email: &str) -> u16 {
    app.client
        .post(format!("{}/v1/chat/completions", app.address))
        .bearer_auth(key)
        .header("content-type", "application/json")
        .header("x-librechat-user-id", user)
        .header("x-librechat-user-email", email)
        .body(chat_body("fill", "palavra palavra palavra", false, Some(100)).to_string())
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

fn user_with_email(app: &TestApp, email: &str) -> i64 {
    app.ledger()
        .list_users()
        .unwrap()
        .into_iter()
        .find(|u| u.email.as_deref() == Some(email))
        .unwrap()
        .id
}

fn admin_id(app: &TestApp, email: &str) -> i64 {
    tokengate::admin::accounts::by_email(app.ledger().db(), email)
        .unwrap()
        .unwrap()
        .id
}

async fn world(app: &TestApp) -> World {
    app.default_plan(1_000);
    let global_plan = app.ledger().plans().unwrap()[0].id;
    let alfa = distributor(app, "Alfa", KEY_ALFA);
    let beta = distributor(app, "Beta", KEY_BETA);
    assert_eq!(
        chat(app, KEY_ALFA, "65f1c0ffee00000000000a01", "ana@alfa.com.br").await,
        200
    );
    // Beta's user crosses 80%: an alert of theirs.
    for _ in 0..8 {
        assert_eq!(
            chat(
                app,
                KEY_BETA,
                "65f1c0ffee00000000000b01",
                "bruno@beta.com.br"
            )
            .await,
            200
        );
    }
    let alfa_user = user_with_email(app, "ana@alfa.com.br");
    let beta_user = user_with_email(app, "bruno@beta.com.br");
    let ledger = app.ledger();
    let alfa_plan = ledger
        .create_plan_of(alfa, &plan_spec("Plano Alfa", 5_000), false, &Actor::Cli)
        .unwrap();
    let beta_plan = ledger
        .create_plan_of(
            beta,
            &plan_spec("Plano Beta Secreto", 5_000),
            false,
            &Actor::Cli,
        )
        .unwrap();
    let beta_request = ledger
        .request_credits(
            beta_user,
            TokenAmount::new(5_000).unwrap(),
            Some("nota beta secreta"),
        )
        .unwrap();
    ledger
        .request_credits(
            alfa_user,
            TokenAmount::new(5_000).unwrap(),
            Some("nota alfa"),
        )
        .unwrap();
    let expires = (app.now() + chrono::Duration::days(30)).naive_utc();
    ledger
        .create_code_batch_of(
            beta,
            TokenAmount::new(1_000).unwrap(),
            3,
            expires,
            Some("lote beta secreto"),
            &Actor::Cli,
        )
        .unwrap();
    ledger
        .grant_credits(
            &tokengate::ledger::UserRef::Id(beta_user),
            TokenAmount::new(100).unwrap(),
            &Actor::Cli,
            Some("nota beta secreta"),
        )
        .unwrap();
    for (email, owner) in [("admin@alfa.com.br", alfa), ("admin@beta.com.br", beta)] {
        add_admin_of(ledger, email, Some(owner));
    }
    World {
        alfa,
        alfa_user,
        alfa_plan,
        global_plan,
        beta_user,
        beta_plan,
        beta_request,
        beta_admin: admin_id(app, "admin@beta.com.br"),
        global_admin: admin_id(app, "admin@localhost"),
    }
}

async fn signed_in_as(app: &TestApp, email: &str) -> Admin {
    let admin = Admin::new(app);
    let res = admin.sign_in_as(email, PASSWORD_FOR_TESTS).await;
    assert_eq!(res.status(), StatusCode::SEE_OTHER);
    admin
}

/// Beta's rows as they were: what every refused action must have left alone.
fn beta_state(app: &TestApp, w: &World) -> String {
    let ledger = app.ledger();
    let user = ledger.user_summary(w.beta_user).unwrap();
    let plan = ledger
        .plans()
        .unwrap()
        .into_iter()
        .find(|p| p.id == w.beta_plan)
        .unwrap();
    let requests = ledger
        .credit_requests(tokengate::ledger::credits::Which::Open, None, 100)
        .unwrap();
    let admin = tokengate::admin::accounts::by_id(ledger.db(), w.beta_admin)
        .unwrap()
        .unwrap();
    let global = tokengate::admin::accounts::by_id(ledger.db(), w.global_admin)
        .unwrap()
        .unwrap();
    format!(
        "{} {} {} {} {} {:?} {:?} {}",
        user.credits,
        user.suspended,
        user.plan,
        plan.name,
        plan.monthly_allowance,
        admin.disabled_at,
        global.disabled_at,
        requests.iter().filter(|r| r.id == w.beta_request).count()
    )
}

/// Every route of the dashboard, from the router's own list: those that take an id
/// are tried with each of another distributor's (and the install's) ids of that
/// kind and answer 404; the pages answer without anything of Beta's; the forms
/// without an id act in Alfa's scope only.
#[actix_web::test]
async fn a_distributors_admin_gets_404_for_every_foreign_id_on_every_route() {
    let app = spawn_app(TestOptions::default()).await;
    let w = world(&app).await;
    let before = beta_state(&app, &w);
    let admin = signed_in_as(&app, "admin@alfa.com.br").await;
    let csrf = csrf_of(&admin.page("/admin").await);
    let mut tried = 0;
    for &(method, path) in tokengate::admin::pages::ROUTES {
        let url = format!("/admin{path}");
        match (method, path) {
            // Signing in and out reach no distributor's rows.
            (_, "/login" | "/logout") => continue,
            ("get", _) if !path.contains('{') => {
                let (status, body) = admin.get(&url).await;
                if path == "/weights" {
                    // The install's model prices: a global admin's page only.
                    assert_eq!(status, StatusCode::NOT_FOUND, "{url}");
                } else {
                    assert_eq!(status, StatusCode::OK, "{url}: {body}");
                }
                for secret in BETA_SECRETS {
                    assert!(!body.contains(secret), "{url} shows {secret:?}");
                }
                assert!(!body.contains("Beta"), "{url} names Beta");
            }
            ("get", "/users/{id}") => {
                for id in [w.beta_user] {
                    let (status, _) = admin.get(&format!("/admin/users/{id}")).await;
                    assert_eq!(status, StatusCode::NOT_FOUND, "{url} #{id}");
                }
                assert_eq!(
                    admin.get(&format!("/admin/users/{}", w.alfa_user)).await.0,
                    StatusCode::OK
                );
            }
            ("post", _) if path.contains('{') => {
                let (ids, form): (Vec<i64>, Vec<(&str, String)>) = match path {
                    "/users/{id}/credits" => (vec![w.beta_user], vec![("tokens", "1000".into())]),
                    "/users/{id}/plan" => (
                        vec![w.beta_user],
                        vec![("plan_id", w.global_plan.to_string())],
                    ),
                    "/users/{id}/suspension" => (vec![w.beta_user], vec![("suspend", "1".into())]),
                    // Another distributor's plan, and the install's (given, not changed).
                    "/plans/{id}" => (
                        vec![w.beta_plan, w.global_plan],
                        vec![("name", "Tomado".into()), ("allowance", "1.000".into())],
                    ),
                    "/plans/{id}/default" => (vec![w.beta_plan, w.global_plan], vec![]),
                    "/requests/{id}/approve" | "/requests/{id}/decline" => {
                        (vec![w.beta_request], vec![("reason", "não".into())])
                    }
                    "/admins/{id}/status" => (
                        vec![w.beta_admin, w.global_admin],
                        vec![("enable", "0".into())],
                    ),
                    other => panic!(
                        "the route POST {other} is not covered by the isolation test: add how to try it with another distributor's ids"
                    ),
                };
                for id in ids {
                    let target = url.replace("{id}", &id.to_string());
                    let mut fields: Vec<(&str, &str)> =
                        form.iter().map(|(k, v)| (*k, v.as_str())).collect();
                    fields.push(("csrf", &csrf));
                    let res = admin.post(&target, &fields).await;
                    assert_eq!(res.status(), StatusCode::NOT_FOUND, "{target}");
                }
            }
            ("post", "/plans" | "/codes" | "/admins" | "/account/password" | "/weights") => {
                // Forms without an id: tried below, where what they make is checked.
            }
            (method, path) => panic!(
                "the route {method} {path} is not covered by the isolation test: add how to try it with another distributor's ids"
            ),
        }
        tried += 1;
    }
    assert!(tried >= 20, "only {tried} routes tried");

    // A form naming another distributor's plan for one's own user.
    let res = admin
        .post(
            &format!("/admin/users/{}/plan", w.alfa_user),
            &[("plan_id", &w.beta_plan.to_string()), ("csrf", &csrf)],
        )
        .await;
    assert_eq!(res.status(), StatusCode::NOT_FOUND);
    // The install's settings are not a distributor's to change.
    let res = admin
        .post(
            "/admin/weights",
            &[
                ("model", "gpt-4o"),
                ("input", "1"),
                ("output", "1"),
                ("csrf", &csrf),
            ],
        )
        .await;
    assert_eq!(res.status(), StatusCode::NOT_FOUND);
    assert_eq!(
        beta_state(&app, &w),
        before,
        "a refused action changed Beta's rows"
    );

    // What Alfa's admin makes is Alfa's: a plan, codes, an admin.
    admin
        .submit(
            "/admin/plans",
            "/admin/plans",
            &[("name", "Plano Novo da Alfa"), ("allowance", "2.000")],
        )
        .await;
    let made = app
        .ledger()
        .plans()
        .unwrap()
        .into_iter()
        .find(|p| p.name == "Plano Novo da Alfa")
        .unwrap();
    assert_eq!(made.distributor_id, w.alfa.get());
    admin
        .submit(
            "/admin/account",
            "/admin/admins",
            &[
                ("email", "segundo@alfa.com.br"),
                ("password", PASSWORD_FOR_TESTS),
            ],
        )
        .await;
    let second = tokengate::admin::accounts::by_email(app.ledger().db(), "segundo@alfa.com.br")
        .unwrap()
        .unwrap();
    assert_eq!(second.distributor_id, Some(w.alfa.get()));
    // Alfa's own user and plan are within reach.
    admin
        .submit(
            &format!("/admin/users/{}", w.alfa_user),
            &format!("/admin/users/{}/plan", w.alfa_user),
            &[("plan_id", &w.alfa_plan.to_string())],
        )
        .await;
    assert_eq!(
        app.ledger().user_summary(w.alfa_user).unwrap().plan,
        "Plano Alfa"
    );
}

/// A global admin sees both distributors and their totals; a code sold by one
/// distributor is no code at all to another's user.
#[actix_web::test]
async fn a_global_admin_sees_every_distributor_and_codes_stay_with_their_seller() {
    let app = spawn_app(TestOptions::default()).await;
    let w = world(&app).await;
    let admin = Admin::signed_in(&app).await;
    let overview = admin.page("/admin").await;
    assert!(overview.contains("Por distribuidor"), "{overview}");
    assert!(overview.contains("Alfa") && overview.contains("Beta"));
    let users = admin.page("/admin/users").await;
    assert!(users.contains("ana@alfa.com.br") && users.contains("bruno@beta.com.br"));
    assert_eq!(
        admin.get(&format!("/admin/users/{}", w.beta_user)).await.0,
        StatusCode::OK
    );
    // A code of Beta's, redeemed by Alfa's user, is unknown; by Beta's, it pays.
    let expires = (app.now() + chrono::Duration::days(30)).naive_utc();
    let (_, codes) = app
        .ledger()
        .create_code_batch_of(
            DistributorId::from_db(w.alfa.get() + 1),
            TokenAmount::new(777).unwrap(),
            1,
            expires,
            None,
            &Actor::Cli,
        )
        .unwrap();
    assert_eq!(
        app.ledger()
            .redeem_code(w.alfa_user, &codes[0], "lote")
            .unwrap(),
        tokengate::ledger::credits::Redeemed::Unknown
    );
    assert_eq!(
        app.ledger()
            .redeem_code(w.beta_user, &codes[0], "lote")
            .unwrap(),
        tokengate::ledger::credits::Redeemed::Added { tokens: 777 }
    );
    // An install without distributors never shows the word.
    let plain = spawn_app(TestOptions::default()).await;
    let admin = Admin::signed_in(&plain).await;
    for page in ["/admin", "/admin/users", "/admin/plans", "/admin/account"] {
        let body = admin.page(page).await;
        assert!(!body.to_lowercase().contains("distribuidor"), "{page}");
    }
}
