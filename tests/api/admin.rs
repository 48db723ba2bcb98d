//! The admin dashboard over HTTP: sessions, CSRF and Origin checks, rate-limited
//! sign-in, escaping, and every action writing the ledger and the audit log.

use crate::helpers::*;
use reqwest::StatusCode;
use reqwest::header::LOCATION;

pub const ADMIN_EMAIL: &str = "admin@localhost";
pub const ADMIN_PASSWORD: &str = "test-admin-password";
/// The password of the admins tests add.
pub const PASSWORD_FOR_TESTS: &str = "uma-senha-bem-longa-123";

/// Signs in as `email` (an admin added with `PASSWORD_FOR_TESTS`).
pub async fn signed_in_admin_of(app: &TestApp, email: &str) -> Admin {
    let admin = Admin::new(app);
    let res = admin.sign_in_as(email, PASSWORD_FOR_TESTS).await;
    assert_eq!(res.status(), StatusCode::SEE_OTHER, "{email} signs in");
    admin
}

/// A browser-like client: keeps cookies, does not follow redirects, sends Origin.
pub struct Admin {
    pub client: reqwest::Client,
    pub base: String,
    pub origin: String,
}

pub fn csrf_of(html: &str) -> String {
    let at = html
        .find("name=\"csrf\" value=\"")
        .unwrap_or_else(|| panic!("no CSRF token in:\n{html}"));
    let rest = &html[at + "name=\"csrf\" value=\"".len()..];
    rest[..rest.find('"').unwrap()].to_owned()
}

impl Admin {
    pub fn new(app: &TestApp) -> Self {
        Self {
            client: reqwest::Client::builder()
                .cookie_store(true)
                .redirect(reqwest::redirect::Policy::none())
                .build()
                .unwrap(),
            base: app.address.clone(),
            origin: app.address.clone(),
        }
    }

    pub async fn get(&self, path: &str) -> (StatusCode, String) {
        let res = self
            .client
            .get(format!("{}{path}", self.base))
            .send()
            .await
            .unwrap();
        let status = res.status();
        (status, res.text().await.unwrap())
    }

    /// A page that must render: 200 and its HTML.
    pub async fn page(&self, path: &str) -> String {
        let (status, body) = self.get(path).await;
        assert_eq!(status, StatusCode::OK, "{path}: {body}");
        body
    }

    pub async fn post(&self, path: &str, form: &[(&str, &str)]) -> reqwest::Response {
        self.client
            .post(format!("{}{path}", self.base))
            .header("origin", &self.origin)
            .form(form)
            .send()
            .await
            .unwrap()
    }

    /// Posts a form with the CSRF token of `from` (a page), expecting a redirect, and
    /// returns the page it leads to.
    pub async fn submit(&self, from: &str, path: &str, form: &[(&str, &str)]) -> String {
        let csrf = csrf_of(&self.page(from).await);
        let mut fields = form.to_vec();
        fields.push(("csrf", &csrf));
        let res = self.post(path, &fields).await;
        assert_eq!(
            res.status(),
            StatusCode::SEE_OTHER,
            "{path}: {}",
            res.text().await.unwrap()
        );
        let to = res.headers()[LOCATION].to_str().unwrap().to_owned();
        self.page(&to).await
    }

    pub async fn sign_in_as(&self, email: &str, password: &str) -> reqwest::Response {
        let csrf = csrf_of(&self.page("/admin/login").await);
        self.post(
            "/admin/login",
            &[
                ("email", email),
                ("password", password),
                ("csrf", &csrf),
                ("next", "/admin"),
            ],
        )
        .await
    }

    /// A client of the server at `base` (a separate process).
    pub fn at(base: &str) -> Self {
        Self {
            client: reqwest::Client::builder()
                .cookie_store(true)
                .redirect(reqwest::redirect::Policy::none())
                .build()
                .unwrap(),
            base: base.to_owned(),
            origin: base.to_owned(),
        }
    }

    pub async fn signed_in(app: &TestApp) -> Self {
        let admin = Self::new(app);
        let res = admin.sign_in_as(ADMIN_EMAIL, ADMIN_PASSWORD).await;
        assert_eq!(res.status(), StatusCode::SEE_OTHER);
        assert_eq!(res.headers()[LOCATION], "/admin");
        admin
    }
}

/// A user who spent everything: the next request is refused.
async fn blocked_user(app: &TestApp, id: &str) {
    app.default_plan(40);
    let res = app
        .chat_as(id, &chat_body("fake-model", "oi", false, Some(200)))
        .await;
    assert_eq!(res.status(), 200);
    let res = app
        .chat_as(id, &chat_body("fake-model", "oi", false, Some(5)))
        .await;
    assert_eq!(res.status(), 429);
}

#[actix_web::test]
async fn every_page_needs_a_session() {
    let app = spawn_app(TestOptions::default()).await;
    app.chat(&chat_body("fake-model", "oi", false, Some(5)))
        .await;
    let id = app.user_id(USER);
    let anon = Admin::new(&app);
    for path in [
        "/admin".to_owned(),
        "/admin/users".into(),
        format!("/admin/users/{id}"),
        "/admin/plans".into(),
        "/admin/weights".into(),
        "/admin/alerts".into(),
        "/admin/audit".into(),
        "/admin/account".into(),
    ] {
        let (status, _) = anon.get(&path).await;
        assert_eq!(status, StatusCode::SEE_OTHER, "{path}");
    }
    let res = anon
        .client
        .get(format!("{}/admin/users", app.address))
        .send()
        .await
        .unwrap();
    assert_eq!(res.headers()[LOCATION], "/admin/login?next=/admin/users");
    // A POST without a session changes nothing.
    let before = app.summary(USER).credits;
    let res = anon
        .post(
            &format!("/admin/users/{id}/credits"),
            &[("tokens", "1000"), ("csrf", "x")],
        )
        .await;
    assert_eq!(res.status(), StatusCode::SEE_OTHER);
    assert_eq!(app.summary(USER).credits, before);
    // The sign-in page itself is public, and says what it is.
    let login = anon.page("/admin/login").await;
    assert!(login.contains("<html lang=\"pt-BR\">"));
    assert!(login.contains("Entrar no tokengate"));
}

#[actix_web::test]
async fn sign_in_sets_a_strict_cookie_and_sign_out_ends_it() {
    let app = spawn_app(TestOptions::default()).await;
    let admin = Admin::new(&app);
    let res = admin.sign_in_as(ADMIN_EMAIL, ADMIN_PASSWORD).await;
    assert_eq!(res.status(), StatusCode::SEE_OTHER);
    let cookie = res.headers()["set-cookie"].to_str().unwrap().to_owned();
    for part in [
        "tokengate_admin=",
        "HttpOnly",
        "SameSite=Strict",
        "Path=/admin",
    ] {
        assert!(cookie.contains(part), "{part} missing from {cookie}");
    }
    assert!(!cookie.contains("Secure"), "plain http here: {cookie}");
    let overview = admin.page("/admin").await;
    assert!(overview.contains("Visão geral"));
    let after = admin.submit("/admin", "/admin/logout", &[]).await;
    assert!(after.contains("Entrar no tokengate"));
    let (status, _) = admin.get("/admin").await;
    assert_eq!(status, StatusCode::SEE_OTHER);
}

#[actix_web::test]
async fn wrong_passwords_are_refused_then_rate_limited() {
    let app = spawn_app(TestOptions::default()).await;
    let admin = Admin::new(&app);
    for _ in 0..5 {
        let res = admin.sign_in_as(ADMIN_EMAIL, "wrong-password-123").await;
        assert_eq!(res.status(), StatusCode::UNAUTHORIZED);
        assert!(
            res.text()
                .await
                .unwrap()
                .contains("Email ou senha incorretos.")
        );
    }
    // Locked for this account now, even with the right password.
    let res = admin.sign_in_as(ADMIN_EMAIL, ADMIN_PASSWORD).await;
    assert_eq!(res.status(), StatusCode::TOO_MANY_REQUESTS);
    assert!(res.text().await.unwrap().contains("Muitas tentativas"));
    let (status, _) = admin.get("/admin").await;
    assert_eq!(status, StatusCode::SEE_OTHER, "not signed in");
    // Unknown accounts from the same address add up to the per-address limit.
    for i in 0..15 {
        let res = admin
            .sign_in_as(&format!("nobody{i}@example.com"), "whatever-password")
            .await;
        assert_eq!(res.status(), StatusCode::UNAUTHORIZED);
    }
    let res = admin
        .sign_in_as("other@example.com", "whatever-password")
        .await;
    assert_eq!(res.status(), StatusCode::TOO_MANY_REQUESTS);
}

/// Wrong passwords sent all at once: each attempt is counted before its password is
/// checked, so no more than the limit are ever checked. They used to be checked
/// first and counted after, and all thirty got through to the password check.
#[actix_web::test]
async fn a_burst_of_parallel_wrong_passwords_gets_no_more_tries_than_the_limit() {
    let app = spawn_app(TestOptions::default()).await;
    let mut browsers = Vec::new();
    for _ in 0..30 {
        let admin = Admin::new(&app);
        let csrf = csrf_of(&admin.page("/admin/login").await);
        browsers.push((admin, csrf));
    }
    let attempts = browsers.iter().map(|(admin, csrf)| async move {
        let form = [
            ("email", ADMIN_EMAIL),
            ("password", "wrong-password-123"),
            ("csrf", csrf.as_str()),
            ("next", "/admin"),
        ];
        admin.post("/admin/login", &form).await
    });
    let statuses: Vec<StatusCode> = futures_util::future::join_all(attempts)
        .await
        .iter()
        .map(reqwest::Response::status)
        .collect();
    let checked = statuses
        .iter()
        .filter(|s| **s == StatusCode::UNAUTHORIZED)
        .count();
    let refused = statuses
        .iter()
        .filter(|s| **s == StatusCode::TOO_MANY_REQUESTS)
        .count();
    assert_eq!((checked, refused), (5, 25), "{statuses:?}");
    let res = Admin::new(&app)
        .sign_in_as(ADMIN_EMAIL, ADMIN_PASSWORD)
        .await;
    assert_eq!(res.status(), StatusCode::TOO_MANY_REQUESTS);
}

#[actix_web::test]
async fn posts_without_the_csrf_token_or_from_another_site_change_nothing() {
    let app = spawn_app(TestOptions::default()).await;
    blocked_user(&app, USER).await;
    let id = app.user_id(USER);
    let admin = Admin::signed_in(&app).await;
    let page = admin.page(&format!("/admin/users/{id}")).await;
    let csrf = csrf_of(&page);
    let path = format!("/admin/users/{id}/credits");

    let res = admin.post(&path, &[("tokens", "5000")]).await;
    assert_eq!(res.status(), StatusCode::FORBIDDEN);
    assert!(res.text().await.unwrap().contains("Ação recusada"));
    let res = admin
        .post(&path, &[("tokens", "5000"), ("csrf", "forged")])
        .await;
    assert_eq!(res.status(), StatusCode::FORBIDDEN);
    let foreign = admin
        .client
        .post(format!("{}{path}", app.address))
        .header("origin", "https://evil.example")
        .form(&[("tokens", "5000"), ("csrf", csrf.as_str())])
        .send()
        .await
        .unwrap();
    assert_eq!(foreign.status(), StatusCode::FORBIDDEN);
    let no_origin = admin
        .client
        .post(format!("{}{path}", app.address))
        .form(&[("tokens", "5000"), ("csrf", csrf.as_str())])
        .send()
        .await
        .unwrap();
    assert_eq!(no_origin.status(), StatusCode::FORBIDDEN);
    assert_eq!(app.summary(USER).credits, 0);
    assert!(grants(&app).is_empty());
}

fn grants(app: &TestApp) -> Vec<tokengate::ledger::audit::AuditEntry> {
    let all = app.ledger().audit_entries(None, 100, 0).unwrap();
    all.into_iter()
        .filter(|e| e.action == "grant_credits")
        .collect()
}

#[actix_web::test]
async fn a_grant_writes_the_ledger_and_audit_and_the_next_request_passes() {
    let app = spawn_app(TestOptions::default()).await;
    blocked_user(&app, USER).await;
    let id = app.user_id(USER);
    let admin = Admin::signed_in(&app).await;
    let blocked = admin.page("/admin/users?state=blocked").await;
    assert!(blocked.contains(&format!("/admin/users/{id}")), "{blocked}");

    let after = admin
        .submit(
            &format!("/admin/users/{id}"),
            &format!("/admin/users/{id}/credits"),
            &[("tokens", "250.000"), ("note", "Pedido do suporte #42")],
        )
        .await;
    assert!(
        after.contains("Créditos concedidos: 250.000 tokens."),
        "{after}"
    );
    assert_eq!(app.summary(USER).credits, 250_000);
    let topup = app
        .ledger()
        .ledger_entries(id)
        .unwrap()
        .into_iter()
        .find(|e| e.kind == "topup")
        .unwrap();
    assert_eq!(topup.delta_credits, 250_000);
    assert_eq!(topup.actor, "admin:admin@localhost");
    assert_eq!(topup.note.as_deref(), Some("Pedido do suporte #42"));
    let audit = grants(&app);
    assert_eq!(audit.len(), 1);
    assert_eq!(
        (audit[0].action.as_str(), audit[0].user_id),
        ("grant_credits", Some(id))
    );
    assert!(audit[0].details.contains("250000"));
    let log = admin.page("/admin/audit").await;
    assert!(
        log.contains("Concedeu créditos") && log.contains("admin@localhost"),
        "{log}"
    );

    let res = app
        .chat(&chat_body("fake-model", "oi", false, Some(5)))
        .await;
    assert_eq!(
        res.status(),
        200,
        "the grant takes effect on the next request"
    );
    app.assert_invariant(USER);
}

#[actix_web::test]
async fn bad_amounts_are_refused_with_a_message_and_change_nothing() {
    let app = spawn_app(TestOptions::default()).await;
    app.chat(&chat_body("fake-model", "oi", false, Some(5)))
        .await;
    let id = app.user_id(USER);
    let admin = Admin::signed_in(&app).await;
    for (amount, message) in [
        ("0", "precisa ser maior que zero"),
        ("-500", "precisa ser maior que zero"),
        ("abc", "use só números"),
        ("1e9", "use só números"),
        ("99999999999999999999", "o máximo é 1.000.000.000.000"),
        ("", "use só números"),
        // A decimal is never guessed at: "1.5" used to grant 15 tokens.
        ("1.5", "ponto ou vírgula só separam milhares"),
        ("2,50", "ponto ou vírgula só separam milhares"),
        ("1.000,5", "ponto ou vírgula só separam milhares"),
    ] {
        let page = admin
            .submit(
                &format!("/admin/users/{id}"),
                &format!("/admin/users/{id}/credits"),
                &[("tokens", amount)],
            )
            .await;
        assert!(page.contains("Quantidade recusada"), "{amount}: no message");
        assert!(page.contains(message), "{amount}: {message:?} missing");
    }
    assert_eq!(app.summary(USER).credits, 0);
    assert!(app.ledger().audit_entries(None, 10, 0).unwrap().is_empty());
    // Thousands grouped the Brazilian way or the English way are both understood.
    for (amount, credits) in [("250.000", 250_000), ("250,000", 500_000)] {
        let page = admin
            .submit(
                &format!("/admin/users/{id}"),
                &format!("/admin/users/{id}/credits"),
                &[("tokens", amount)],
            )
            .await;
        assert!(page.contains("Créditos concedidos"), "{amount}");
        assert_eq!(app.summary(USER).credits, credits);
    }
}

#[actix_web::test]
async fn names_with_markup_are_shown_escaped() {
    let app = spawn_app(TestOptions::default()).await;
    let res = app
        .post("/v1/chat/completions")
        .header("x-librechat-user-id", "xss-user")
        .header("x-librechat-user-name", "<script>alert(1)</script>")
        .header("x-librechat-user-email", "xss@example.com")
        .body(chat_body("fake-model", "oi", false, Some(5)).to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let id = app.user_id("xss-user");
    let admin = Admin::signed_in(&app).await;
    for path in ["/admin/users".to_owned(), format!("/admin/users/{id}")] {
        let page = admin.page(&path).await;
        assert!(
            !page.contains("<script>alert(1)</script>"),
            "{path} injects markup"
        );
        assert!(
            page.contains("&lt;script&gt;alert(1)&lt;/script&gt;"),
            "{path}"
        );
    }
    // A note with markup, too.
    let page = admin
        .submit(
            &format!("/admin/users/{id}"),
            &format!("/admin/users/{id}/credits"),
            &[("tokens", "10"), ("note", "<img src=x onerror=alert(1)>")],
        )
        .await;
    assert!(!page.contains("<img src=x"));
    assert!(page.contains("&lt;img src=x onerror=alert(1)&gt;"));
}

#[actix_web::test]
async fn plans_weights_suspension_and_plan_changes() {
    let app = spawn_app(TestOptions::default()).await;
    app.chat(&chat_body("fake-model", "oi", false, Some(5)))
        .await;
    let id = app.user_id(USER);
    let admin = Admin::signed_in(&app).await;

    let page = admin
        .submit(
            "/admin/plans",
            "/admin/plans",
            &[("name", "Pro"), ("allowance", "5.000.000")],
        )
        .await;
    assert!(page.contains("Plano criado: Pro."), "{page}");
    let page = admin
        .submit(
            "/admin/plans",
            "/admin/plans",
            &[("name", "Pro"), ("allowance", "10")],
        )
        .await;
    assert!(page.contains("Já existe um plano chamado"), "{page}");
    let page = admin
        .submit(
            "/admin/plans",
            "/admin/plans",
            &[("name", "Zero"), ("allowance", "0")],
        )
        .await;
    assert!(page.contains("Franquia recusada"), "{page}");
    let plans = app.ledger().plans().unwrap();
    let pro = plans.iter().find(|p| p.name == "Pro").unwrap();
    assert_eq!((pro.monthly_allowance, plans.len()), (5_000_000, 2));

    // Moving to Pro adds the difference to this cycle's allowance.
    let before = app.summary(USER);
    let page = admin
        .submit(
            &format!("/admin/users/{id}"),
            &format!("/admin/users/{id}/plan"),
            &[("plan_id", &pro.id.to_string())],
        )
        .await;
    assert!(page.contains("Plano alterado."));
    let after = app.summary(USER);
    assert_eq!(after.plan, "Pro");
    assert_eq!(after.allowance_left, before.allowance_left + 4_000_000);
    app.assert_invariant(USER);

    let page = admin
        .submit(
            "/admin/weights",
            "/admin/weights",
            &[("model", "gpt-4o"), ("input", "2,5"), ("output", "10")],
        )
        .await;
    assert!(page.contains("Pesos salvos para gpt-4o."), "{page}");
    assert!(page.contains("2,5"));
    let page = admin
        .submit(
            "/admin/weights",
            "/admin/weights",
            &[("model", "gpt-4o"), ("input", "-1"), ("output", "x")],
        )
        .await;
    assert!(page.contains("Pesos recusados"));
    let w = app.ledger().weights().unwrap();
    assert_eq!(
        (w[0].weights.input_milli(), w[0].weights.output_milli()),
        (2500, 10_000)
    );

    admin
        .submit(
            &format!("/admin/users/{id}"),
            &format!("/admin/users/{id}/suspension"),
            &[("suspend", "1")],
        )
        .await;
    let res = app
        .chat(&chat_body("fake-model", "oi", false, Some(5)))
        .await;
    assert_eq!(res.status(), 403);
    let suspended = admin.page("/admin/users?state=suspended").await;
    assert!(suspended.contains(&format!("/admin/users/{id}")));
    admin
        .submit(
            &format!("/admin/users/{id}"),
            &format!("/admin/users/{id}/suspension"),
            &[("suspend", "0")],
        )
        .await;
    let res = app
        .chat(&chat_body("fake-model", "oi", false, Some(5)))
        .await;
    assert_eq!(res.status(), 200);

    let actions: Vec<String> = app
        .ledger()
        .audit_entries(None, 20, 0)
        .unwrap()
        .into_iter()
        .map(|e| e.action)
        .rev()
        .collect();
    assert_eq!(
        actions,
        [
            "create_plan",
            "change_plan",
            "set_weights",
            "suspend",
            "reactivate"
        ]
    );
}

/// Moving between plans depends only on the plan moved to: A (1,000) with 100 left,
/// to B (500) and back to A leaves 100, as if the user had stayed. It used to leave
/// 500, 400 of it free.
#[actix_web::test]
async fn a_plan_change_and_back_restores_what_was_left() {
    let app = spawn_app(TestOptions::default()).await;
    app.default_plan(1_000);
    let spend = chat_body("fake-model", "olá", false, Some(40));
    let cost = crate::fake_provider::prompt_tokens_of(&spend) + 40;
    let n = 900 / cost;
    for _ in 0..n {
        assert_eq!(app.chat(&spend).await.status(), 200);
    }
    let a_left = 1_000 - n * cost;
    assert_eq!(app.summary(USER).allowance_left, a_left);
    let plan = |name: &str| {
        app.ledger()
            .plans()
            .unwrap()
            .into_iter()
            .find(|p| p.name == name)
            .unwrap()
            .id
    };
    let a = plan("Teste 1000");
    let b = app
        .ledger()
        .create_plan(
            &crate::helpers::plan_spec("B", 500),
            false,
            &tokengate::ledger::Actor::Cli,
        )
        .unwrap();
    let id = app.user_id(USER);
    // `ledger()` waits for the settlements of the answers given so far.
    let change = |plan| {
        app.ledger()
            .change_plan(id, plan, &tokengate::ledger::Actor::Cli)
            .unwrap()
    };
    change(b);
    assert_eq!(app.summary(USER).allowance_left, (500 - n * cost).max(0));
    change(a);
    assert_eq!(app.summary(USER).allowance_left, a_left);
    // Credits used while B had nothing left do not come back as allowance.
    app.ledger()
        .grant_credits(
            &tokengate::ledger::parse_user_ref(USER),
            tokengate::domain::TokenAmount::new(1_000).unwrap(),
            &tokengate::ledger::Actor::Cli,
            None,
        )
        .unwrap();
    change(b);
    assert_eq!(app.chat(&spend).await.status(), 200);
    change(a);
    let s = app.summary(USER);
    assert_eq!(s.allowance_left, a_left);
    assert_eq!(s.credits, 1_000 - cost);
    app.assert_invariant(USER);
}

#[actix_web::test]
async fn admins_change_passwords_add_and_disable_each_other() {
    let app = spawn_app(TestOptions::default()).await;
    let admin = Admin::signed_in(&app).await;
    let other_browser = Admin::signed_in(&app).await;

    let page = admin
        .submit(
            "/admin/account",
            "/admin/account/password",
            &[
                ("current", ADMIN_PASSWORD),
                ("new", "short"),
                ("confirm", "short"),
            ],
        )
        .await;
    assert!(page.contains("pelo menos 12"), "{page}");
    let page = admin
        .submit(
            "/admin/account",
            "/admin/account/password",
            &[
                ("current", ADMIN_PASSWORD),
                ("new", "a-new-long-password"),
                ("confirm", "a-new-long-password"),
            ],
        )
        .await;
    assert!(page.contains("Senha trocada."));
    // This browser stays in; the other session ended with the old password.
    assert_eq!(admin.get("/admin").await.0, StatusCode::OK);
    assert_eq!(other_browser.get("/admin").await.0, StatusCode::SEE_OTHER);

    let page = admin
        .submit(
            "/admin/account",
            "/admin/admins",
            &[
                ("email", "Maria@IASolaris.com.br"),
                ("password", "maria-password-1"),
            ],
        )
        .await;
    assert!(
        page.contains("Administrador adicionado: maria@iasolaris.com.br."),
        "{page}"
    );
    let maria = Admin::new(&app);
    assert_eq!(
        maria
            .sign_in_as("maria@iasolaris.com.br", "maria-password-1")
            .await
            .status(),
        StatusCode::SEE_OTHER
    );
    let accounts = tokengate::admin::accounts::list(
        app.ledger().db(),
        &tokengate::admin::accounts::by_email(app.ledger().db(), "admin@localhost")
            .unwrap()
            .unwrap(),
    )
    .unwrap();
    let maria_id = accounts
        .iter()
        .find(|a| a.email.starts_with("maria"))
        .unwrap()
        .id;
    admin
        .submit(
            "/admin/account",
            &format!("/admin/admins/{maria_id}/status"),
            &[("enable", "0")],
        )
        .await;
    assert_eq!(
        maria.get("/admin").await.0,
        StatusCode::SEE_OTHER,
        "disabled: signed out"
    );
    assert_eq!(
        maria
            .sign_in_as("maria@iasolaris.com.br", "maria-password-1")
            .await
            .status(),
        StatusCode::UNAUTHORIZED
    );
    let log = admin.page("/admin/audit").await;
    for text in [
        "Trocou a própria senha",
        "Adicionou um administrador",
        "Desativou um administrador",
    ] {
        assert!(log.contains(text), "{text}");
    }
}

#[actix_web::test]
async fn pages_render_in_english_with_english_numbers() {
    let app = spawn_app(TestOptions {
        env: vec![("TOKENGATE_LOCALE", "en".into())],
        ..TestOptions::default()
    })
    .await;
    app.chat(&chat_body("fake-model", "oi", false, Some(5)))
        .await;
    let id = app.user_id(USER);
    let admin = Admin::signed_in(&app).await;
    let overview = admin.page("/admin").await;
    assert!(overview.contains("<html lang=\"en\">"));
    for text in [
        "Overview",
        "Tokens used today",
        "Top users this cycle",
        "<svg",
    ] {
        assert!(overview.contains(text), "{text}");
    }
    let detail = admin.page(&format!("/admin/users/{id}")).await;
    assert!(detail.contains("Grant credits"));
    assert!(detail.contains("1,000,000"), "English thousands");
    for path in [
        "/admin/plans",
        "/admin/weights",
        "/admin/alerts",
        "/admin/audit",
        "/admin/account",
    ] {
        let page = admin.page(path).await;
        assert!(page.contains("Sign out"), "{path}");
    }
    let (status, body) = admin.get("/admin/nope").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert!(body.contains("Page not found"));
    let (status, _) = admin.get("/admin/users/999999").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, body) = admin.get("/admin/users/not-a-number").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert!(body.contains("Page not found"));
    let huge = "x".repeat(100_000);
    let res = admin
        .post(
            &format!("/admin/users/{id}/credits"),
            &[("tokens", "10"), ("note", &huge)],
        )
        .await;
    assert_eq!(res.status(), StatusCode::BAD_REQUEST);
    assert!(res.text().await.unwrap().contains("Invalid request"));
    assert_eq!(app.summary(USER).credits, 0);
    let css = app
        .client
        .get(format!("{}/static/admin.css", app.address))
        .send()
        .await
        .unwrap();
    assert_eq!(css.status(), 200);
    assert!(
        css.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/css")
    );
    let etag = css.headers()["etag"].clone();
    assert_eq!(
        css.text().await.unwrap(),
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/static/admin.css")).unwrap()
    );
    // A browser that has it is told so, and an unknown file is a 404.
    let again = app
        .client
        .get(format!("{}/static/admin.css", app.address))
        .header("if-none-match", etag)
        .send()
        .await
        .unwrap();
    assert_eq!(again.status(), 304);
    for path in [
        "/static/nope.css",
        "/static/../Cargo.toml",
        "/static/%2e%2e/Cargo.toml",
    ] {
        let res = app
            .client
            .get(format!("{}{path}", app.address))
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 404, "{path}");
    }
}

#[actix_web::test]
async fn overview_counts_usage_and_states() {
    let app = spawn_app(TestOptions::default()).await;
    blocked_user(&app, USER).await;
    app.chat_as(
        "second-user",
        &chat_body("fake-model", "oi", false, Some(5)),
    )
    .await;
    let admin = Admin::signed_in(&app).await;
    let page = admin.page("/admin").await;
    let used = app.summary(USER).used_this_cycle + app.summary("second-user").used_this_cycle;
    let shown = tokengate::i18n::tokens(used, tokengate::config::Locale::PtBr);
    assert!(
        page.contains(&format!("<span class=\"value\">{shown}</span>")),
        "{shown} not in {page}"
    );
    assert!(
        page.contains("<a class=\"value\" href=\"/admin/users?state=blocked\">1</a>"),
        "{page}"
    );
    assert_eq!(page.matches("<rect").count(), 30, "30 days in the chart");
    let ok = admin.page("/admin/users?state=ok").await;
    assert!(ok.contains(&format!("/admin/users/{}", app.user_id("second-user"))));
    assert!(!ok.contains(&format!("/admin/users/{}\"", app.user_id(USER))));
}

#[actix_web::test]
async fn sessions_survive_restarts_and_work_on_replicas() {
    let app = spawn_app(TestOptions::default()).await;
    let admin = Admin::signed_in(&app).await;
    // Another instance on the same database (or this one restarted) reads the same key.
    let replica = spawn_replica(&app).await;
    let on_replica = Admin {
        client: admin.client.clone(),
        base: replica.address.clone(),
        origin: replica.address.clone(),
    };
    let page = on_replica.page("/admin/users").await;
    assert!(
        page.contains("admin@localhost"),
        "signed in on the replica too"
    );
    // A tampered cookie is no session at all.
    let forged = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
        .get(format!("{}/admin", app.address))
        .header("cookie", "tokengate_admin=eyJhZG1pbiI6IjEifQ%3D%3D")
        .send()
        .await
        .unwrap();
    assert_eq!(forged.status(), StatusCode::SEE_OTHER);
}

#[actix_web::test]
async fn the_cookie_is_secure_when_served_over_https() {
    let app = spawn_app(TestOptions {
        env: vec![(
            "TOKENGATE_PUBLIC_URL",
            "https://tokens.iasolaris.com.br".into(),
        )],
        ..TestOptions::default()
    })
    .await;
    let admin = Admin {
        origin: "https://tokens.iasolaris.com.br".into(),
        ..Admin::new(&app)
    };
    // The login page's own cookie (CSRF token) is Secure, so a plain-http client does
    // not send it back: read it from the header instead.
    let res = admin
        .client
        .get(format!("{}/admin/login", app.address))
        .send()
        .await
        .unwrap();
    let cookie = res.headers()["set-cookie"].to_str().unwrap().to_owned();
    assert!(
        cookie.contains("Secure") && cookie.contains("HttpOnly"),
        "{cookie}"
    );
}
