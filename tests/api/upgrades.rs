//! Rolling upgrades: while replicas of the previous release still run, one of this
//! release starts and migrates the database; the previous release keeps serving,
//! metering and sending mail against it (docs/upgrades.md: every migration expands,
//! and contracts only a release later). The previous release's binary is built from
//! its own commit by `scripts/test.sh` (`TOKENGATE_TEST_PREVIOUS_BIN`). Before, a
//! credit mail written by a new release made the previous one's mail worker fail on
//! every claim, and it sent nothing at all until replaced.

use crate::helpers::*;
use crate::smtp::{SmtpOptions, SmtpServer};
use serde_json::Value;
use tokengate::domain::TokenAmount;
use tokengate::ledger::parse_user_ref;

fn previous_binary() -> String {
    std::env::var("TOKENGATE_TEST_PREVIOUS_BIN").expect(
        "TOKENGATE_TEST_PREVIOUS_BIN: the previous release's binary (scripts/test.sh builds it)",
    )
}

async fn chat(client: &reqwest::Client, base: &str, user: &str, body: &Value) {
    let res = chat_process(client, base, user, body).await;
    assert_eq!(res.status(), 200, "{base}");
    res.bytes().await.unwrap();
}

#[actix_web::test]
async fn the_previous_release_serves_and_mails_beside_this_one_after_it_migrates() {
    let db = TestDb::new();
    let fake = crate::fake_provider::FakeProvider::start();
    let smtp = SmtpServer::start(SmtpOptions::default()).await;
    let client = reqwest::Client::new();
    let mail = |instance: &str| {
        vec![
            ("TOKENGATE_INSTANCE_ID", instance.to_owned()),
            ("TOKENGATE_SMTP_URL", smtp.url()),
            ("TOKENGATE_ADMIN_EMAILS", "admin@example.com".to_owned()),
            ("TOKENGATE_MAIL_RETRY_BASE_SECS", "0.2".to_owned()),
        ]
    };
    // The previous release runs alone, on its own schema.
    let (p_port, n_port) = (free_port(), free_port());
    let previous = process_of(
        &previous_binary(),
        p_port,
        &db.url,
        &fake.base_url(),
        &mail("previous"),
    );
    let p_base = format!("http://127.0.0.1:{p_port}");
    wait_ready(&client, &p_base).await;
    let small = chat_body("fake-model", "Olá, tudo bem?", true, Some(20));
    chat(&client, &p_base, "antes-1", &small).await;

    // This release starts beside it and migrates; both serve.
    let new = tokengate_process(n_port, &db.url, &fake.base_url(), &mail("new"));
    let n_base = format!("http://127.0.0.1:{n_port}");
    wait_ready(&client, &n_base).await;
    for i in 0..6 {
        let user = format!("durante-{}", i % 3);
        let base = if i % 2 == 0 { &p_base } else { &n_base };
        chat(&client, base, &user, &small).await;
    }
    let ledger = observer_ledger(&db.url, &fake.base_url());
    no_holds_left(&ledger).await;

    // The previous release alone again (this one stopped, as in a rollback or a
    // deploy still under way): a credit request written by this release's code,
    // whose mail has no alert, is mailed by the previous release's worker, and so
    // is the alert of a user it takes past 80%.
    drop(new);
    let asker = ledger
        .find_user(&parse_user_ref("durante-0"))
        .unwrap()
        .unwrap();
    // This release's code writes it: mailed to the admins, with no alert.
    let writer = observer_ledger(&db.url, &fake.base_url()).with_alert_policy(
        tokengate::alerts::AlertPolicy {
            thresholds: vec![80, 100],
            admin_emails: vec!["admin@example.com".into()],
        },
    );
    writer
        .request_credits(
            asker,
            TokenAmount::new(50_000).unwrap(),
            Some("para o projeto"),
        )
        .unwrap();
    ledger
        .create_plan(
            &crate::helpers::plan_spec("Pequeno", 1_000),
            true,
            &tokengate::ledger::Actor::Cli,
        )
        .unwrap();
    // `fill` writes to its limit: past 80% of the plan's 1,000.
    let heavy = chat_body("fill", "Olá", false, Some(800));
    chat(&client, &p_base, "perto-do-fim", &heavy).await;
    let received = smtp.wait_for(2).await;
    let subjects: Vec<&str> = received.iter().map(|m| m.subject.as_str()).collect();
    assert!(
        subjects
            .iter()
            .any(|s| s.starts_with("Pedido de créditos") && s.contains("50.000")),
        "the credit request was not mailed: {subjects:?}"
    );
    assert!(
        subjects.iter().any(|s| s.contains("80%")),
        "the alert was not mailed: {subjects:?}"
    );

    // Everything both releases charged adds up.
    for user in [
        "antes-1",
        "durante-0",
        "durante-1",
        "durante-2",
        "perto-do-fim",
    ] {
        let id = ledger.find_user(&parse_user_ref(user)).unwrap().unwrap();
        assert!(ledger.check_invariant(id).unwrap().holds(), "{user}");
        assert!(!ledger.usage_records(id).unwrap().is_empty(), "{user}");
    }
    drop(previous);
}

/// The previous release knows no scope: every admin it lets in is a global admin.
/// A distributor's admin is therefore never let in there, neither by password nor
/// by the session this release gave them, while a global admin's session and
/// password work on both (so a rollback cannot make a reseller an admin of
/// everyone).
#[actix_web::test]
async fn a_distributors_admin_is_never_an_admin_of_the_previous_release() {
    use crate::admin::{Admin, PASSWORD_FOR_TESTS};
    use reqwest::StatusCode;
    let db = TestDb::new();
    let fake = crate::fake_provider::FakeProvider::start();
    let client = reqwest::Client::new();
    let (p_port, n_port) = (free_port(), free_port());
    let new = tokengate_process(n_port, &db.url, &fake.base_url(), &[]);
    let n_base = format!("http://127.0.0.1:{n_port}");
    wait_ready(&client, &n_base).await;
    let ledger = observer_ledger(&db.url, &fake.base_url());
    let sul = named_distributor(&ledger, "Rede Sul", "tg-upgrade-sul-key-0123456789");
    add_admin_of(&ledger, "gerente@sul.com.br", Some(sul));
    add_admin_of(&ledger, "dona@solaris.com.br", None);
    let (manager, owner) = (Admin::at(&n_base), Admin::at(&n_base));
    for (admin, email) in [
        (&manager, "gerente@sul.com.br"),
        (&owner, "dona@solaris.com.br"),
    ] {
        let res = admin.sign_in_as(email, PASSWORD_FOR_TESTS).await;
        assert_eq!(res.status(), StatusCode::SEE_OTHER, "{email} signs in here");
        assert_eq!(admin.get("/admin/users").await.0, StatusCode::OK);
    }
    // A password the distributor's admin sets is stored the same way.
    const NEW_PASSWORD: &str = "outra-senha-bem-longa-456";
    manager
        .submit(
            "/admin/account",
            "/admin/account/password",
            &[
                ("current", PASSWORD_FOR_TESTS),
                ("new", NEW_PASSWORD),
                ("confirm", NEW_PASSWORD),
            ],
        )
        .await;

    // The previous release, on the same database, reached with the same cookies.
    let previous = process_of(&previous_binary(), p_port, &db.url, &fake.base_url(), &[]);
    let p_base = format!("http://127.0.0.1:{p_port}");
    wait_ready(&client, &p_base).await;
    let there = |admin: &Admin| Admin {
        client: admin.client.clone(),
        base: p_base.clone(),
        origin: p_base.clone(),
    };
    assert_eq!(
        there(&owner).get("/admin/users").await.0,
        StatusCode::OK,
        "a global admin's session works on both releases"
    );
    let (status, _) = there(&manager).get("/admin/users").await;
    assert_eq!(
        status,
        StatusCode::SEE_OTHER,
        "the previous release took a distributor's admin's session as a global admin's"
    );
    let fresh = Admin::at(&p_base);
    let res = fresh.sign_in_as("gerente@sul.com.br", NEW_PASSWORD).await;
    assert_ne!(
        res.status(),
        StatusCode::SEE_OTHER,
        "the previous release signed a distributor's admin in as a global admin"
    );
    assert_eq!(fresh.get("/admin/users").await.0, StatusCode::SEE_OTHER);
    let res = Admin::at(&p_base)
        .sign_in_as("dona@solaris.com.br", PASSWORD_FOR_TESTS)
        .await;
    assert_eq!(res.status(), StatusCode::SEE_OTHER);

    // This release still lets the distributor's admin in, to its own scope.
    let again = Admin::at(&n_base);
    let res = again.sign_in_as("gerente@sul.com.br", NEW_PASSWORD).await;
    assert_eq!(res.status(), StatusCode::SEE_OTHER);
    assert_eq!(again.get("/admin/weights").await.0, StatusCode::NOT_FOUND);
    drop((previous, new));
}

/// The database keeps every distributor's admin's hash marked: it refuses one
/// written without the mark (by hand, or by a build that does not mark), and the
/// migration marks those stored before it (and only those); they still sign in.
#[actix_web::test]
async fn the_database_keeps_every_distributors_admins_hash_marked() {
    use diesel::RunQueryDsl;
    use tokengate::admin::accounts::by_email;
    let app = spawn_app(TestOptions::default()).await;
    let ledger = app.ledger();
    let sul = named_distributor(ledger, "Rede Sul", "tg-upgrade-sul-key-0123456789");
    add_admin_of(ledger, "gerente@sul.com.br", Some(sul));
    add_admin_of(ledger, "dona@solaris.com.br", None);
    let hash = |email: &str| by_email(ledger.db(), email).unwrap().unwrap().password_hash;
    let global = hash("dona@solaris.com.br");
    let run = |sql: &str| {
        diesel::sql_query(sql)
            .execute(&mut *ledger.db().conn().unwrap())
            .map_err(|e| e.to_string())
    };
    let unmark = "UPDATE admins SET password_hash = substr(password_hash, 8) \
                  WHERE password_hash LIKE 'scoped:%'";
    let refused = run(unmark).unwrap_err();
    assert!(refused.contains("marked"), "{refused}");
    let insert = format!(
        "INSERT INTO admins (email, password_hash, created_at, distributor_id) \
         VALUES ('outro@sul.com.br', '{global}', '2026-11-15 12:00:00', {})",
        sul.get()
    );
    assert!(
        run(&insert).is_err(),
        "an unmarked distributor's admin was stored"
    );
    // The mark is exact (SQLite's LIKE would take any case).
    assert!(
        run(
            "UPDATE admins SET password_hash = 'SCOPED:' || substr(password_hash, 8) \
             WHERE password_hash LIKE 'scoped:%'"
        )
        .is_err()
    );
    assert!(
        run(&format!(
            "UPDATE admins SET distributor_id = {} WHERE email = 'dona@solaris.com.br'",
            sul.get()
        ))
        .is_err()
    );
    assert!(hash("gerente@sul.com.br").starts_with("scoped:$argon2id$"));

    // Hashes stored unmarked before the migration: it marks them.
    let lift = match backend() {
        Backend::Sqlite => {
            "DROP TRIGGER admins_distributor_hash_marked_insert; \
             DROP TRIGGER admins_distributor_hash_marked_update"
        }
        Backend::Postgres => "ALTER TABLE admins DROP CONSTRAINT admins_distributor_hash_marked",
    };
    let mut conn = ledger.db().conn().unwrap();
    diesel::connection::SimpleConnection::batch_execute(&mut *conn, lift).unwrap();
    diesel::sql_query(unmark).execute(&mut *conn).unwrap();
    assert!(hash("gerente@sul.com.br").starts_with("$argon2id$"));
    diesel::sql_query("DELETE FROM __diesel_schema_migrations WHERE version = '20261210000003'")
        .execute(&mut *conn)
        .unwrap();
    let applied = tokengate::db::run_migrations(&mut conn).unwrap();
    assert_eq!(applied, ["20261210000003"]);
    drop(conn);
    assert!(hash("gerente@sul.com.br").starts_with("scoped:$argon2id$"));
    assert_eq!(hash("dona@solaris.com.br"), global);
    assert!(run(unmark).is_err(), "the migration refuses them again");
    crate::admin::signed_in_admin_of(&app, "gerente@sul.com.br").await;
    crate::admin::signed_in_admin_of(&app, "dona@solaris.com.br").await;
}
