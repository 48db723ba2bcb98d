//! No way past the meter through what a provider runs or bills by itself: web
//! search, tools of the provider's, search models, fields tokengate does not know.
//! Each is refused, streamed or not, on every metered route, with a message in the
//! user's language, and nothing reaches upstream; or, where the admin has set the
//! model's extra cost per call, it is reserved and the balance is never overspent.

use crate::fake_provider::SEARCH_TOKENS;
use crate::helpers::*;
use serde_json::{Value, json};
use tokengate::domain::Weights;
use tokengate::ledger::{Actor, ModelCost};

fn chat(model: &str, stream: bool, extra: Value) -> Value {
    let mut body = chat_body(model, "Quais as notícias de hoje?", stream, Some(200));
    for (k, v) in extra.as_object().unwrap() {
        body[k] = v.clone();
    }
    body
}

/// Every way a chat can ask a provider for work it bills by itself, as clients
/// send them (the list, and what LiteLLM maps them to).
fn provider_work() -> Vec<(Value, &'static str)> {
    let function = json!({"type": "function", "function": {"name": "hora", "parameters": {"type": "object", "properties": {}}}});
    vec![
        (json!({"web_search_options": {}}), "web_search_options"),
        (
            json!({"web_search_options": {"search_context_size": "high"}}),
            "web_search_options",
        ),
        (
            json!({"tools": [function, {"type": "web_search_preview"}]}),
            "tools",
        ),
        (
            json!({"tools": [{"type": "web_search_20250305", "name": "web_search", "max_uses": 5}]}),
            "tools",
        ),
        (json!({"tools": [{"googleSearch": {}}]}), "tools"),
        // Gemini's search beside "type": "function" (LiteLLM drops the type).
        (
            json!({"tools": [{"type": "function", "googleSearch": {}}]}),
            "tools",
        ),
        (json!({"functions": [{"googleSearch": {}}]}), "tools"),
        (json!({"plugins": [{"id": "web"}]}), "plugins"),
        (json!({"web_search": true}), "web_search"),
        (
            json!({"search_parameters": {"mode": "on"}}),
            "search_parameters",
        ),
        (
            json!({"mcp_servers": [{"type": "url", "url": "https://mcp.example", "name": "x"}]}),
            "mcp_servers",
        ),
    ]
}

#[actix_web::test]
async fn provider_work_is_refused_streamed_or_not_and_never_sent() {
    let app = spawn_app(TestOptions::default()).await;
    let before = app.fake.request_count();
    for (extra, param) in provider_work() {
        for stream in [false, true] {
            let body = chat("gpt-4o", stream, extra.clone());
            let res = app.chat(&body).await;
            assert_eq!(res.status(), 400, "{body}");
            let err: Value = res.json().await.unwrap();
            assert_eq!(err["error"]["code"], "not_reservable", "{body}");
            assert_eq!(err["error"]["param"], param, "{body}");
            let message = err["error"]["message"].as_str().unwrap();
            assert!(
                message.contains("não está disponível aqui"),
                "in the user's language: {message}"
            );
        }
    }
    // A model that searches on every call, without asking for it.
    for model in [
        "gpt-4o-search-preview",
        "openrouter/openai/gpt-4o:online",
        "perplexity/sonar",
    ] {
        let res = app.chat(&chat(model, true, json!({}))).await;
        assert_eq!(res.status(), 400, "{model}");
        let err: Value = res.json().await.unwrap();
        assert_eq!(err["error"]["param"], "model");
        assert!(
            err["error"]["message"]
                .as_str()
                .unwrap()
                .contains("Escolha outro modelo")
        );
    }
    // The legacy completions route and the Responses API refuse them too.
    let completion = json!({"model": "gpt-4o", "prompt": "oi", "web_search_options": {}});
    let res = app
        .post("/v1/completions")
        .header("x-librechat-user-id", USER)
        .body(completion.to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 400);
    for tools in [
        json!([{"type": "web_search"}]),
        json!([{"googleSearch": {}}]),
    ] {
        let body = json!({"model": "gpt-4o", "input": "oi", "tools": tools});
        let res = app
            .post("/v1/responses")
            .header("x-librechat-user-id", USER)
            .body(body.to_string())
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 400, "{body}");
        let err: Value = res.json().await.unwrap();
        assert_eq!(err["error"]["code"], "not_reservable");
    }
    assert_eq!(app.fake.request_count(), before, "nothing reached upstream");
    // Function tools, as LibreChat sends them, still go.
    let function =
        json!({"tools": [{"type": "function", "function": {"name": "hora", "parameters": {}}}]});
    let res = app.chat(&chat("gpt-4o", false, function)).await;
    assert_eq!(res.status(), 200);
    assert_eq!(app.fake.request_count(), before + 1);
    assert_eq!(app.summary(USER).held, 0);
    app.assert_invariant(USER);
}

#[actix_web::test]
async fn refusals_are_in_english_when_configured() {
    let app = spawn_app(TestOptions {
        env: vec![("TOKENGATE_LOCALE", "en".into())],
        ..TestOptions::default()
    })
    .await;
    let res = app
        .chat(&chat("gpt-4o", true, json!({"web_search_options": {}})))
        .await;
    let err: Value = res.json().await.unwrap();
    assert_eq!(
        err["error"]["message"],
        "Web search is not available here: the AI provider bills it separately. Turn web search off and send again."
    );
}

/// Fields tokengate does not know go nowhere: LiteLLM passes unknown fields to the
/// provider and merges `extra_body` over the whole request, its limit included. A
/// harmless one the operator names in `TOKENGATE_EXTRA_FIELDS` goes through.
#[actix_web::test]
async fn unknown_fields_are_refused_unless_the_operator_allows_them() {
    let app = spawn_app(TestOptions {
        env: vec![("TOKENGATE_EXTRA_FIELDS", "top_a, mirostat".into())],
        ..TestOptions::default()
    })
    .await;
    let before = app.fake.request_count();
    for extra in [
        json!({"extra_body": {"max_tokens": 99_999}}),
        json!({"max_output_tokens": 99_999}),
        json!({"generationConfig": {"maxOutputTokens": 99_999}}),
        json!({"fallbacks": ["claude-opus"]}),
        json!({"num_retries": 5}),
        json!({"litellm_system_prompt": "x"}),
        json!({"deep_search": true}),
    ] {
        let field = extra.as_object().unwrap().keys().next().unwrap().clone();
        for stream in [false, true] {
            let res = app.chat(&chat("gpt-4o", stream, extra.clone())).await;
            assert_eq!(res.status(), 400, "{extra}");
            let err: Value = res.json().await.unwrap();
            assert_eq!(err["error"]["code"], "not_reservable", "{extra}");
            assert_eq!(err["error"]["param"], field.as_str());
            assert!(err["error"]["message"].as_str().unwrap().contains(&field));
        }
    }
    assert_eq!(app.fake.request_count(), before);
    let res = app
        .chat(&chat(
            "gpt-4o",
            false,
            json!({"top_a": 0.2, "mirostat": 1, "top_k": 40}),
        ))
        .await;
    assert_eq!(res.status(), 200);
    assert_eq!(app.fake.last_request()["top_a"], 0.2);
}

#[actix_web::test]
async fn an_operator_cannot_allow_a_field_that_escapes_the_limit() {
    for field in [
        "extra_body",
        "max_output_tokens",
        "fallbacks",
        "litellm_metadata",
    ] {
        let db = TestDb::new();
        let config = tokengate::config::Config::from_lookup(|k| match k {
            "TOKENGATE_DATABASE_URL" => Some(db.url.clone()),
            "TOKENGATE_EXTRA_FIELDS" => Some(field.to_owned()),
            _ => None,
        });
        let err = config.unwrap_err().to_string();
        assert!(
            err.contains("TOKENGATE_EXTRA_FIELDS") && err.contains(field),
            "{err}"
        );
    }
}

/// The case: a provider that adds 15,000 input tokens when it searches, a
/// user with 20,000 tokens, three chats with web search at once. Without a figure
/// for the model they are refused; with the admin's figure ("a call of this model
/// costs at most 16,000 more") each is reserved that much more, so the balance pays
/// for what is served and no request goes past it.
#[actix_web::test]
async fn with_the_admins_extra_cost_search_is_reserved_and_never_overspends() {
    let app = spawn_app(TestOptions::default()).await;
    app.default_plan(20_000);
    let search = |stream| {
        chat(
            "gpt-4o-search-preview",
            stream,
            json!({"web_search_options": {}}),
        )
    };
    let res = app.chat(&search(true)).await;
    assert_eq!(res.status(), 400);

    app.ledger()
        .set_weights(
            "gpt-4o-search-preview",
            ModelCost {
                weights: Weights::default(),
                image_tokens: None,
                call_extra: Some(SEARCH_TOKENS + 1_000),
            },
            &Actor::Cli,
        )
        .unwrap();
    let answers = futures_util::future::join_all((0..3).map(|i| {
        let app = &app;
        async move {
            let res = app.chat(&search(i % 2 == 0)).await;
            let status = res.status().as_u16();
            let _ = res.bytes().await;
            status
        }
    }))
    .await;
    let served = answers.iter().filter(|s| **s == 200).count();
    assert_eq!(served, 1, "one search fits in 20,000, not two: {answers:?}");
    app.wait_for_no_holds(USER).await;
    let s = app.summary(USER);
    assert!(
        s.allowance_left + s.credits >= 0,
        "overspent: {} used, {} left",
        s.used_this_cycle,
        s.allowance_left + s.credits
    );
    assert!(s.used_this_cycle > SEARCH_TOKENS, "the search was charged");
    app.assert_invariant(USER);
}

/// The body's own errors are in the user's language too: LibreChat shows them.
#[actix_web::test]
async fn malformed_bodies_are_explained_in_portuguese() {
    let app = spawn_app(TestOptions::default()).await;
    for (body, expected) in [
        (
            "{\"model\":".to_owned(),
            "O corpo do pedido não é um JSON válido",
        ),
        (
            json!({"model": "m", "messages": []}).to_string(),
            "`messages` deve ser uma lista não vazia.",
        ),
        (
            json!({"model": "m", "messages": [{"role": "user", "content": "x"}], "max_tokens": 0})
                .to_string(),
            "`max_tokens` deve ser um número inteiro de pelo menos 1.",
        ),
    ] {
        let res = app
            .post("/v1/chat/completions")
            .header("x-librechat-user-id", USER)
            .body(body.clone())
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 400);
        let err: Value = res.json().await.unwrap();
        assert!(
            err["error"]["message"]
                .as_str()
                .unwrap()
                .starts_with(expected),
            "{body}: {err}"
        );
    }
    let anonymous = chat_body("m", "oi", false, None).to_string();
    let res = app
        .post("/v1/chat/completions")
        .body(anonymous)
        .send()
        .await
        .unwrap();
    let err: Value = res.json().await.unwrap();
    assert_eq!(err["error"]["code"], "missing_user");
    assert!(
        err["error"]["message"]
            .as_str()
            .unwrap()
            .starts_with("Falta a identidade")
    );
}
