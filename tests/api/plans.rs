//! Plans as they are sold: the models each may use (on requests and on
//! `/v1/models`), made and changed from the dashboard and the command line.

use crate::admin::Admin;
use crate::cli::{text, tokengate};
use crate::helpers::*;
use serde_json::Value;
use tokengate::domain::{PlanChange, PlanModels, PlanSpec};
use tokengate::ledger::{Actor, PlanRef};

fn with_models(name: &str, allowance: i64, models: &str) -> PlanSpec {
    PlanSpec {
        models: PlanModels::parse(models).unwrap(),
        ..plan_spec(name, allowance)
    }
}

/// The model ids `/v1/models` lists, for `user` (or without a user).
async fn listed(app: &TestApp, user: Option<&str>) -> Vec<String> {
    let mut req = app
        .client
        .get(format!("{}/v1/models", app.address))
        .bearer_auth(CLIENT_KEY);
    if let Some(user) = user {
        req = req.header("x-librechat-user-id", user);
    }
    let res = req.send().await.unwrap();
    assert_eq!(res.status(), 200);
    let list: Value = res.json().await.unwrap();
    assert_eq!(list["object"], "list");
    list["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_str().unwrap().to_owned())
        .collect()
}

#[actix_web::test]
async fn a_plan_serves_only_its_models_and_lists_only_them() {
    let app = spawn_app(TestOptions::default()).await;
    let plan = app
        .ledger()
        .create_plan(
            &with_models("Básico", 100_000, "fake-model"),
            true,
            &Actor::Cli,
        )
        .unwrap();

    let forwarded = app.fake.request_count();
    for stream in [false, true] {
        let res = app
            .chat(&chat_body("gpt-4o", "olá", stream, Some(50)))
            .await;
        assert_eq!(res.status(), 403, "stream: {stream}");
        let err: Value = res.json().await.unwrap();
        assert_eq!(err["error"]["code"], "model_not_in_plan");
        assert_eq!(err["error"]["type"], "permission_error");
        assert_eq!(err["error"]["param"], "model");
        let message = err["error"]["message"].as_str().unwrap();
        assert_eq!(
            message,
            "O modelo gpt-4o não faz parte do seu plano. Seu plano inclui: fake-model."
        );
    }
    assert_eq!(app.fake.request_count(), forwarded, "never forwarded");
    let refused = app.summary(USER);
    assert_eq!((refused.used_this_cycle, refused.held), (0, 0));

    let res = app
        .chat(&chat_body("fake-model", "olá", false, Some(50)))
        .await;
    assert_eq!(res.status(), 200);
    assert!(app.charged(USER) > 0);
    app.assert_invariant(USER);

    // The user's page says which models the plan includes.
    let summary = app.summary(USER);
    assert_eq!(summary.plan_models, ["fake-model"]);
    let client = crate::me::signed_in(&app, app.user_id(USER)).await;
    let html = crate::me::page(&app, &client).await.text().await.unwrap();
    assert!(
        html.contains("<dt>Modelos do plano</dt><dd id=\"models\">fake-model</dd>"),
        "{html}"
    );

    // LibreChat fetches the list naming the user: they see their plan's models. A
    // user tokengate has not met yet sees the default plan's; without a user, all.
    assert_eq!(listed(&app, Some(USER)).await, ["fake-model"]);
    assert_eq!(listed(&app, Some("nunca-visto")).await, ["fake-model"]);
    assert_eq!(
        listed(&app, None).await,
        ["fake-model", "gpt-4o-mini", "gpt-4o"]
    );

    // A user an admin created by email sees their own plan's list before their
    // first chat (which will link them to it).
    let pro = app
        .ledger()
        .create_plan(&with_models("Pro", 100_000, "gpt-4o"), false, &Actor::Cli)
        .unwrap();
    let ana = app
        .ledger()
        .create_user_by_email(
            &tokengate::domain::Email::parse("ana@example.com").unwrap(),
            None,
            &Actor::Cli,
        )
        .unwrap();
    app.ledger().change_plan(ana, pro, &Actor::Cli).unwrap();
    let res = app
        .client
        .get(format!("{}/v1/models", app.address))
        .bearer_auth(CLIENT_KEY)
        .header("x-librechat-user-id", "ana-na-librechat")
        .header("x-librechat-user-email", "ana@example.com")
        .send()
        .await
        .unwrap();
    let list: Value = res.json().await.unwrap();
    assert_eq!(list["data"][0]["id"], "gpt-4o");
    assert_eq!(list["data"].as_array().unwrap().len(), 1);

    // A change of models applies at once, to requests and to the list.
    let models = |list: &str| PlanChange {
        models: Some(PlanModels::parse(list).unwrap()),
        ..PlanChange::default()
    };
    app.ledger()
        .update_plan(
            &PlanRef::Id(plan),
            &models("fake-model, gpt-4o"),
            &Actor::Cli,
        )
        .unwrap();
    let res = app.chat(&chat_body("gpt-4o", "olá", true, Some(50))).await;
    assert_eq!(res.status(), 200);
    assert_eq!(listed(&app, Some(USER)).await, ["fake-model", "gpt-4o"]);
    // Back to every model.
    app.ledger()
        .update_plan(&PlanRef::Id(plan), &models(""), &Actor::Cli)
        .unwrap();
    assert_eq!(listed(&app, Some(USER)).await.len(), 3);
    let res = app
        .chat(&chat_body("gpt-4o-mini", "olá", false, Some(50)))
        .await;
    assert_eq!(res.status(), 200);

    let audit = app.ledger().audit_entries(None, 10, 0).unwrap();
    let edit = audit.iter().find(|e| e.action == "edit_plan").unwrap();
    let details: Value = serde_json::from_str(&edit.details).unwrap();
    assert_eq!(
        details["old_models"],
        serde_json::json!(["fake-model", "gpt-4o"])
    );
    assert_eq!(details["models"], serde_json::json!([]));
    assert_eq!(details["models_from"], "now");
    assert_eq!(details["allowance_from"], "next_cycle");
}

#[actix_web::test]
async fn a_model_outside_the_plan_is_explained_in_english_too() {
    let app = spawn_app(TestOptions {
        env: vec![("TOKENGATE_LOCALE", "en".into())],
        ..TestOptions::default()
    })
    .await;
    app.ledger()
        .create_plan(
            &with_models("Basic", 100_000, "gpt-4o-mini, fake-model"),
            true,
            &Actor::Cli,
        )
        .unwrap();
    let res = app.chat(&chat_body("gpt-4o", "hi", false, Some(50))).await;
    assert_eq!(res.status(), 403);
    let err: Value = res.json().await.unwrap();
    assert_eq!(
        err["error"]["message"],
        "The model gpt-4o is not part of your plan. Your plan includes: fake-model, gpt-4o-mini."
    );
}

/// The README's plan commands, run as an operator would copy them: each succeeds,
/// and the plans they make are the ones the README describes.
#[actix_web::test]
async fn the_readmes_plans_are_one_command_each() {
    let app = spawn_app(TestOptions::default()).await;
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
    let commands: Vec<Vec<&str>> = readme
        .lines()
        .filter_map(|l| l.trim().strip_prefix("tokengate plans "))
        .map(|rest| {
            let mut args = vec!["plans"];
            args.extend(rest.split_whitespace());
            args
        })
        .collect();
    assert!(commands.len() >= 4, "{commands:?}");
    for args in &commands {
        let out = tokengate(&app.db, args, None);
        assert!(out.status.success(), "{args:?}: {}", text(&out.stderr));
    }
    let plan = |name: &str| -> Value {
        let out = tokengate(&app.db, &["plans", "show", name, "--json"], None);
        assert!(out.status.success(), "{name}: {}", text(&out.stderr));
        serde_json::from_slice(&out.stdout).unwrap()
    };
    let basico = plan("Básico");
    assert_eq!(basico["input_allowance"], 1_000_000);
    assert_eq!(basico["output_allowance"], 500_000);
    assert_eq!(basico["monthly_allowance"], 1_500_000);
    assert_eq!(basico["monthly_price_centavos"], 9_990);
    assert_eq!(basico["request_limits"]["per_day"], 50);
    assert_eq!(basico["is_default"], true);
    let pro = plan("Pro");
    assert_eq!(pro["monthly_allowance"], 4_500_000);
    assert_eq!(pro["monthly_price_centavos"], 19_990);
    let enterprise = plan("Enterprise");
    assert_eq!(enterprise["monthly_allowance"], 15_000_000);
    assert_eq!(enterprise["monthly_price_centavos"], 39_990);
    assert_eq!(
        enterprise["overage"],
        serde_json::json!({"cap": 5_000_000, "price_per_1k_micro": 100_000})
    );
}

#[actix_web::test]
async fn plans_from_the_command_line() {
    let app = spawn_app(TestOptions::default()).await;
    let db = &app.db;

    let out = tokengate(
        db,
        &[
            "plans",
            "create",
            "Pro",
            "--allowance",
            "3.000.000",
            "--models",
            "gpt-4o-mini, gpt-4o",
        ],
        None,
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    let shown = text(&out.stdout);
    assert!(shown.contains("Plan #"), "{shown}");
    assert!(
        shown.contains("models:         gpt-4o, gpt-4o-mini"),
        "{shown}"
    );

    let out = tokengate(db, &["plans", "list", "--json"], None);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let plans: Value = serde_json::from_slice(&out.stdout).unwrap();
    let pro = plans
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == "Pro")
        .unwrap();
    assert_eq!(pro["monthly_allowance"], 3_000_000);
    assert_eq!(pro["models"], serde_json::json!(["gpt-4o", "gpt-4o-mini"]));
    assert_eq!(pro["is_default"], false);

    // What is not given stays; "*" is every model again.
    let out = tokengate(
        db,
        &[
            "plans",
            "edit",
            "Pro",
            "--rename",
            "Pro+",
            "--models",
            "*",
            "--default",
        ],
        None,
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    let out = tokengate(db, &["plans", "show", "Pro+", "--json"], None);
    let pro: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(pro["monthly_allowance"], 3_000_000);
    assert_eq!(pro["models"], serde_json::json!([]));
    assert_eq!(pro["is_default"], true);
    let out = tokengate(db, &["plans", "list"], None);
    let list = text(&out.stdout);
    assert!(list.contains("all (default)"), "{list}");
    // An edit that changes nothing writes nothing.
    let audited = app
        .ledger()
        .scoped(tokengate::domain::Scope::All)
        .audit_count()
        .unwrap();
    let out = tokengate(db, &["plans", "edit", "Pro+", "--default"], None);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(
        app.ledger()
            .scoped(tokengate::domain::Scope::All)
            .audit_count()
            .unwrap(),
        audited
    );

    // Refused, each with a clear reason and nothing changed.
    for (args, reason) in [
        (
            vec!["plans", "create", "Pro+", "--allowance", "10"],
            "already exists",
        ),
        (
            vec![
                "plans",
                "create",
                "X",
                "--allowance",
                "10",
                "--models",
                "a\u{7}b",
            ],
            "is not a model name",
        ),
        (
            vec!["plans", "create", "X", "--allowance", "0"],
            "--allowance",
        ),
        (
            vec!["plans", "create", " ", "--allowance", "10"],
            "plan name",
        ),
        (vec!["plans", "show", "Nenhum"], "no plan named"),
        (
            vec!["plans", "edit", "Nenhum", "--allowance", "5"],
            "no plan named",
        ),
    ] {
        let out = tokengate(db, &args, None);
        assert!(!out.status.success(), "{args:?}");
        let err = text(&out.stderr);
        assert!(err.contains(reason), "{args:?}: {err}");
        assert!(!err.contains("panicked"), "{err}");
    }
    assert_eq!(app.ledger().plans().unwrap().len(), 2);

    let audit = app.ledger().audit_entries(None, 10, 0).unwrap();
    let actions: Vec<&str> = audit.iter().map(|e| e.action.as_str()).collect();
    assert_eq!(actions, ["set_default_plan", "edit_plan", "create_plan"]);
    let created: Value = serde_json::from_str(&audit[2].details).unwrap();
    assert_eq!(
        created["models"],
        serde_json::json!(["gpt-4o", "gpt-4o-mini"])
    );
}

#[actix_web::test]
async fn plans_models_from_the_dashboard() {
    let app = spawn_app(TestOptions::default()).await;
    let admin = Admin::signed_in(&app).await;
    let page = admin
        .submit(
            "/admin/plans",
            "/admin/plans",
            &[
                ("name", "Pro"),
                ("allowance", "3.000.000"),
                ("models", "gpt-4o, fake-model"),
            ],
        )
        .await;
    assert!(page.contains("Plano criado: Pro."), "{page}");
    assert!(page.contains("value=\"fake-model, gpt-4o\""), "{page}");
    let pro = app.ledger().plan("Pro").unwrap();
    assert_eq!(pro.models.listed(), ["fake-model", "gpt-4o"]);

    let too_many: Vec<String> = (0..101).map(|i| format!("m{i}")).collect();
    for (models, refusal) in [
        ("gpt-4o, <script>\u{1}".to_owned(), "Modelo recusado"),
        ("*, gpt-4o".to_owned(), "só um * sozinho"),
        (too_many.join(","), "no máximo 100 modelos"),
    ] {
        let page = admin
            .submit(
                "/admin/plans",
                &format!("/admin/plans/{}", pro.id),
                &[
                    ("name", "Pro"),
                    ("allowance", "3.000.000"),
                    ("models", &models),
                ],
            )
            .await;
        assert!(page.contains(refusal), "{page}");
        assert!(!page.contains("<script>"), "escaped: {page}");
    }
    assert_eq!(app.ledger().plan("Pro").unwrap().models, pro.models);

    // A form without the field (a page from before plans had models, a script)
    // keeps the plan's list: it never widens to every model.
    let page = admin
        .submit(
            "/admin/plans",
            &format!("/admin/plans/{}", pro.id),
            &[("name", "Pro"), ("allowance", "4.000.000")],
        )
        .await;
    assert!(page.contains("Plano salvo: Pro."), "{page}");
    let kept = app.ledger().plan("Pro").unwrap();
    assert_eq!(
        (kept.monthly_allowance, &kept.models),
        (4_000_000, &pro.models)
    );

    // Blank is every model.
    let page = admin
        .submit(
            "/admin/plans",
            &format!("/admin/plans/{}", pro.id),
            &[("name", "Pro"), ("allowance", "3.000.000"), ("models", "")],
        )
        .await;
    assert!(page.contains("Plano salvo: Pro."), "{page}");
    assert_eq!(app.ledger().plan("Pro").unwrap().models, PlanModels::All);
}

/// A model no admin has weighted costs `TOKENGATE_UNPRICED_MODELS` (1 by default),
/// or is refused until it has weights.
#[actix_web::test]
async fn an_unpriced_model_costs_the_set_weight_or_is_refused() {
    let app = spawn_app(TestOptions {
        env: vec![("TOKENGATE_UNPRICED_MODELS", "refuse".into())],
        ..TestOptions::default()
    })
    .await;
    let forwarded = app.fake.request_count();
    for stream in [false, true] {
        let res = app
            .chat(&chat_body("fake-model", "olá", stream, Some(50)))
            .await;
        assert_eq!(res.status(), 403);
        let err: Value = res.json().await.unwrap();
        assert_eq!(err["error"]["code"], "model_not_priced");
        assert_eq!(
            err["error"]["message"],
            "O modelo fake-model ainda não tem preço definido aqui. Escolha outro modelo ou fale com o administrador."
        );
    }
    assert_eq!(app.fake.request_count(), forwarded, "never forwarded");
    assert_eq!(app.summary(USER).used_this_cycle, 0);
    app.ledger()
        .set_weights(
            "fake-model",
            tokengate::ledger::ModelCost::from(tokengate::domain::Weights::default()),
            &Actor::Cli,
        )
        .unwrap();
    let res = app
        .chat(&chat_body("fake-model", "olá", false, Some(50)))
        .await;
    assert_eq!(res.status(), 200);

    // At a weight of 2,5, each token of an unweighted model costs 2.5.
    let app = spawn_app(TestOptions {
        env: vec![("TOKENGATE_UNPRICED_MODELS", "2,5".into())],
        ..TestOptions::default()
    })
    .await;
    let res = app
        .chat(&chat_body("fake-model", "olá", false, Some(40)))
        .await;
    assert_eq!(res.status(), 200);
    let answer: Value = res.json().await.unwrap();
    let tokens = answer["usage"]["prompt_tokens"].as_i64().unwrap()
        + answer["usage"]["completion_tokens"].as_i64().unwrap();
    assert_eq!(app.charged(USER), (tokens * 5 + 1) / 2, "rounded up");
    app.assert_invariant(USER);
}

/// Every metered route checks the plan's models, and so does a service's key (its
/// account is on a plan like a user's), and `/v1/models` answers a service with its
/// own plan's models. The refusals are counted in /metrics.
#[actix_web::test]
async fn every_route_and_a_service_key_meet_the_plans_models() {
    const RAG_KEY: &str = "tg-rag-key-for-tests-0123456789";
    let app = spawn_app(TestOptions {
        env: vec![("TOKENGATE_SERVICE_KEYS", format!("rag-api={RAG_KEY}"))],
        ..TestOptions::default()
    })
    .await;
    app.ledger()
        .create_plan(
            &with_models("Só chat", 100_000, "fake-model"),
            true,
            &Actor::Cli,
        )
        .unwrap();
    let forwarded = app.fake.request_count();
    let routes = [
        (
            "/v1/completions",
            serde_json::json!({"model": "gpt-4o", "prompt": "olá", "max_tokens": 5}),
        ),
        (
            "/v1/embeddings",
            serde_json::json!({"model": "fake-embed", "input": ["um trecho"]}),
        ),
        (
            "/v1/responses",
            serde_json::json!({"model": "gpt-4o", "input": "olá", "max_output_tokens": 16, "stream": true}),
        ),
    ];
    for (path, body) in &routes {
        let res = app
            .post(path)
            .header("x-librechat-user-id", USER)
            .body(body.to_string())
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 403, "{path}");
        let err: Value = res.json().await.unwrap();
        assert_eq!(err["error"]["code"], "model_not_in_plan", "{path}");
    }
    let embed = app
        .client
        .post(format!("{}/v1/embeddings", app.address))
        .bearer_auth(RAG_KEY)
        .header("content-type", "application/json")
        .body(serde_json::json!({"model": "fake-embed", "input": ["um trecho"]}).to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(
        embed.status(),
        403,
        "the service's account is on the default plan"
    );
    assert_eq!(app.fake.request_count(), forwarded, "nothing forwarded");
    let metrics = app.metrics().await;
    assert!(
        metrics.contains("tokengate_requests_rejected_total{code=\"model_not_in_plan\"} 4"),
        "{metrics}"
    );

    // Its own plan lets it embed, and its list shows that plan's models.
    let service = app.user_id("service:rag-api");
    let rag = app
        .ledger()
        .create_plan(
            &with_models("RAG", 100_000, "fake-embed"),
            false,
            &Actor::Cli,
        )
        .unwrap();
    app.ledger().change_plan(service, rag, &Actor::Cli).unwrap();
    let res = app
        .client
        .get(format!("{}/v1/models", app.address))
        .bearer_auth(RAG_KEY)
        .header("x-librechat-user-id", USER)
        .send()
        .await
        .unwrap();
    assert_eq!(
        res.headers()["content-type"],
        "application/json",
        "the list tokengate wrote"
    );
    let list: Value = res.json().await.unwrap();
    assert_eq!(
        list["data"],
        serde_json::json!([]),
        "fake-embed is not listed upstream"
    );
    let embed = app
        .client
        .post(format!("{}/v1/embeddings", app.address))
        .bearer_auth(RAG_KEY)
        .header("content-type", "application/json")
        .body(serde_json::json!({"model": "fake-embed", "input": ["um trecho"]}).to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(embed.status(), 200);
}

/// A plan's monthly price: set from the command line and the dashboard (refused when
/// it is not a price), audited; the plans page and the overview show each plan's
/// users, tokens used this cycle and revenue (price times users who pay: neither
/// the suspended nor a service's account).
#[actix_web::test]
async fn plans_have_prices_and_the_dashboard_shows_revenue() {
    const RAG_KEY: &str = "tg-rag-key-for-tests-0123456789";
    let app = spawn_app(TestOptions {
        env: vec![("TOKENGATE_SERVICE_KEYS", format!("rag-api={RAG_KEY}"))],
        ..TestOptions::default()
    })
    .await;
    let db = &app.db;
    for args in [
        [
            "Básico",
            "--allowance",
            "1.500.000",
            "--price",
            "99,90",
            "--default",
        ],
        [
            "Pro",
            "--allowance",
            "4.500.000",
            "--price",
            "R$ 199,90",
            "",
        ],
    ] {
        let mut args: Vec<&str> = args.iter().copied().filter(|a| !a.is_empty()).collect();
        args.splice(0..0, ["plans", "create"]);
        let out = tokengate(db, &args, None);
        assert!(out.status.success(), "{}", text(&out.stderr));
    }
    let out = tokengate(db, &["plans", "show", "Pro"], None);
    assert!(
        text(&out.stdout).contains("price a month:  R$ 199.90"),
        "{}",
        text(&out.stdout)
    );
    for bad in ["19,999", "-5", "1.5.0", "dez reais"] {
        let out = tokengate(
            db,
            &["plans", "edit", "Pro", &format!("--price={bad}")],
            None,
        );
        assert!(!out.status.success(), "{bad}");
        assert!(
            text(&out.stderr).contains("is not a price in reais"),
            "{}",
            text(&out.stderr)
        );
    }

    // Three users on Básico (one suspended) and the RAG API's account, which pays
    // nothing; one on Pro.
    for user in ["ana", "bia", "caio"] {
        assert_eq!(
            app.chat_as(user, &chat_body("fake-model", "olá", false, Some(10)))
                .await
                .status(),
            200
        );
    }
    let res = app
        .client
        .post(format!("{}/v1/embeddings", app.address))
        .bearer_auth(RAG_KEY)
        .header("content-type", "application/json")
        .body(serde_json::json!({"model": "fake-embed", "input": "olá"}).to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let pro = app.ledger().plan("Pro").unwrap();
    app.ledger()
        .change_plan(app.user_id("caio"), pro.id, &Actor::Cli)
        .unwrap();
    app.ledger()
        .set_suspended(
            &tokengate::ledger::UserRef::External("bia".into()),
            true,
            &Actor::Cli,
        )
        .unwrap();
    let basico = app.ledger().plan("Básico").unwrap();
    assert_eq!((basico.users, basico.active_users), (3, 1));
    assert_eq!(basico.revenue_this_cycle, 9_990);
    assert!(basico.used_this_cycle > 0);
    assert_eq!(app.ledger().plan("Pro").unwrap().revenue_this_cycle, 19_990);

    let admin = Admin::signed_in(&app).await;
    let page = admin.page("/admin/plans").await;
    assert!(
        page.contains("R$ 99,90") && page.contains("R$ 199,90"),
        "{page}"
    );
    let overview = admin.page("/admin").await;
    assert!(
        overview.contains("<th class=\"num\" id=\"revenue\">R$ 299,80</th>"),
        "{overview}"
    );

    // The dashboard changes the price, refuses what is not one, and clears it.
    let page = admin
        .submit(
            "/admin/plans",
            &format!("/admin/plans/{}", pro.id),
            &[
                ("name", "Pro"),
                ("allowance", "4.500.000"),
                ("price", "dez"),
            ],
        )
        .await;
    assert!(page.contains("Preço recusado"), "{page}");
    admin
        .submit(
            "/admin/plans",
            &format!("/admin/plans/{}", pro.id),
            &[
                ("name", "Pro"),
                ("allowance", "4.500.000"),
                ("price", "249,90"),
            ],
        )
        .await;
    assert_eq!(app.ledger().plan("Pro").unwrap().revenue_this_cycle, 24_990);
    // A form without the field keeps the price.
    admin
        .submit(
            "/admin/plans",
            &format!("/admin/plans/{}", pro.id),
            &[("name", "Pro"), ("allowance", "4.500.000")],
        )
        .await;
    assert_eq!(app.ledger().plan("Pro").unwrap().revenue_this_cycle, 24_990);
    let audit = app.ledger().audit_entries(None, 10, 0).unwrap();
    let edit: Value = serde_json::from_str(
        &audit
            .iter()
            .find(|a| a.action == "edit_plan")
            .unwrap()
            .details,
    )
    .unwrap();
    assert_eq!(edit["monthly_price_centavos"], 24_990);
    assert_eq!(edit["old_monthly_price_centavos"], 19_990);
    admin
        .submit(
            "/admin/plans",
            &format!("/admin/plans/{}", pro.id),
            &[("name", "Pro"), ("allowance", "4.500.000"), ("price", "")],
        )
        .await;
    let pro = app.ledger().plan("Pro").unwrap();
    assert_eq!((pro.monthly_price, pro.revenue_this_cycle), (None, 0));
}

/// A chat as LibreChat sends it, with the user's role.
async fn chat_with_role(app: &TestApp, user: &str, role: &str) -> reqwest::Response {
    app.post("/v1/chat/completions")
        .header("x-librechat-user-id", user)
        .header("x-librechat-user-role", role)
        .body(chat_body("fake-model", "olá", false, Some(10)).to_string())
        .send()
        .await
        .unwrap()
}

/// A plan takes the users of LibreChat roles: a new user with the role starts on
/// it (and `/v1/models` lists its models before their first chat), a user whose
/// role changes, or whose role a plan takes later, moves to it with the cycle's use
/// carried over, and an admin's choice of plan then wins over the role. A role takes its users to one plan at
/// most; the dashboard and the command line set roles and refuse bad ones.
#[actix_web::test]
async fn plans_take_the_users_of_librechat_roles_until_an_admin_chooses() {
    let app = spawn_app(TestOptions::default()).await;
    let db = &app.db;
    let out = tokengate(
        db,
        &[
            "plans",
            "create",
            "Pro",
            "--allowance",
            "3.000.000",
            "--models",
            "gpt-4o",
            "--roles",
            "PRO, VIP",
        ],
        None,
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        text(&out.stdout).contains("roles:          PRO, VIP"),
        "{}",
        text(&out.stdout)
    );
    let pro = app.ledger().plan("Pro").unwrap();
    assert_eq!(pro.roles, ["PRO", "VIP"]);

    // LibreChat lists the models of the plan the role will give.
    let res = app
        .client
        .get(format!("{}/v1/models", app.address))
        .bearer_auth(CLIENT_KEY)
        .header("x-librechat-user-id", "novo-pro")
        .header("x-librechat-user-role", "PRO")
        .send()
        .await
        .unwrap();
    let list: Value = res.json().await.unwrap();
    assert_eq!(list["data"].as_array().unwrap().len(), 1, "{list}");
    assert_eq!(list["data"][0]["id"], "gpt-4o");

    // A new user with the role starts on Pro; one without, on the default plan.
    let res = app
        .post("/v1/chat/completions")
        .header("x-librechat-user-id", "novo-pro")
        .header("x-librechat-user-role", "PRO")
        .body(chat_body("gpt-4o", "olá", false, Some(10)).to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(app.summary("novo-pro").plan, "Pro");
    assert_eq!(app.summary("novo-pro").monthly_allowance, 3_000_000);
    assert_eq!(chat_with_role(&app, "comum", "USER").await.status(), 200);
    assert_eq!(app.summary("comum").plan, "Mensal");

    // Promoted in LibreChat: the next request is on Pro, what the cycle used carried.
    let used = app.summary("comum").used_this_cycle;
    assert!(used > 0);
    let res = app
        .post("/v1/chat/completions")
        .header("x-librechat-user-id", "comum")
        .header("x-librechat-user-role", "VIP")
        .body(chat_body("gpt-4o", "olá", false, Some(10)).to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200, "served on the role's plan at once");
    let promoted = app.summary("comum");
    assert_eq!(promoted.plan, "Pro");
    assert!(
        promoted.allowance_left < 3_000_000 - used,
        "the cycle's use carried over"
    );
    app.assert_invariant("comum");

    // An admin moves them back: the admin's choice stays, whatever role LibreChat
    // sends afterwards.
    let mensal = app.ledger().plan("Mensal").unwrap();
    let admin = Admin::signed_in(&app).await;
    let comum = app.user_id("comum");
    admin
        .submit(
            &format!("/admin/users/{comum}"),
            &format!("/admin/users/{comum}/plan"),
            &[("plan_id", &mensal.id.to_string())],
        )
        .await;
    assert_eq!(app.summary("comum").plan, "Mensal");
    assert_eq!(chat_with_role(&app, "comum", "PRO").await.status(), 200);
    assert_eq!(chat_with_role(&app, "comum", "USER").await.status(), 200);
    assert_eq!(app.summary("comum").plan, "Mensal");

    // A user their role placed goes back to the default plan when their role no
    // longer names one.
    // Pro serves only gpt-4o: the refusal names it, and the user is on Pro.
    assert_eq!(chat_with_role(&app, "rebaixado", "PRO").await.status(), 403);
    assert_eq!(app.summary("rebaixado").plan, "Pro");
    assert_eq!(
        chat_with_role(&app, "rebaixado", "USER").await.status(),
        200
    );
    assert_eq!(app.summary("rebaixado").plan, "Mensal");
    app.assert_invariant("rebaixado");

    // A role given to a plan later takes the users who have it at their next
    // request.
    assert_eq!(chat_with_role(&app, "antigo", "TEAM").await.status(), 200);
    assert_eq!(app.summary("antigo").plan, "Mensal");
    let out = tokengate(
        db,
        &[
            "plans",
            "create",
            "Equipe",
            "--allowance",
            "2.000.000",
            "--roles",
            "TEAM",
        ],
        None,
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(chat_with_role(&app, "antigo", "TEAM").await.status(), 200);
    assert_eq!(app.summary("antigo").plan, "Equipe");

    // One plan per role; bad roles are refused with a reason.
    let page = admin
        .submit(
            "/admin/plans",
            &format!("/admin/plans/{}", mensal.id),
            &[
                ("name", "Mensal"),
                ("allowance", "1.000.000"),
                ("roles", "VIP"),
            ],
        )
        .await;
    assert!(
        page.contains("O papel &quot;VIP&quot; já leva ao plano &quot;Pro&quot;."),
        "{page}"
    );
    let page = admin
        .submit(
            "/admin/plans",
            &format!("/admin/plans/{}", mensal.id),
            &[
                ("name", "Mensal"),
                ("allowance", "1.000.000"),
                ("roles", "USER\u{202E}"),
            ],
        )
        .await;
    assert!(page.contains("Papel recusado"), "{page}");
    let out = tokengate(db, &["plans", "edit", "Mensal", "--roles", "PRO"], None);
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("already takes its users to the plan"),
        "{}",
        text(&out.stderr)
    );
    let out = tokengate(db, &["plans", "edit", "Pro", "--roles", "none"], None);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(app.ledger().plan("Pro").unwrap().roles.is_empty());
    let audit = app.ledger().audit_entries(None, 10, 0).unwrap();
    let edit: Value = serde_json::from_str(
        &audit
            .iter()
            .find(|a| a.action == "edit_plan")
            .unwrap()
            .details,
    )
    .unwrap();
    assert_eq!(edit["old_roles"], serde_json::json!(["PRO", "VIP"]));
}
