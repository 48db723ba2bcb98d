//! `POST /v1/responses`, the Responses API LibreChat calls when "Use Responses API"
//! is on: metered like a chat (reservation, `max_output_tokens` clamp, block,
//! settlement), streamed with the usage read from `response.completed`, and not.

use crate::fake_provider::{NATURAL_COMPLETION, prompt_tokens_of};
use crate::helpers::*;
use serde_json::{Value, json};

/// A body as LibreChat's client sends it (`@langchain/openai`'s Responses call).
fn responses_body(stream: bool, max_output_tokens: Option<i64>) -> Value {
    let mut body = json!({
        "model": "fake-model",
        "input": [
            {"role": "user", "content": [{"type": "input_text", "text": "Olá, tudo bem com você?"}]},
            {"role": "assistant", "content": "Tudo ótimo!"},
            {"role": "user", "content": "Conte uma história curta"}
        ],
        "instructions": "Responda em português.",
        "stream": stream,
        "reasoning": {"effort": "low"},
        "temperature": 0.7,
    });
    if let Some(max) = max_output_tokens {
        body["max_output_tokens"] = json!(max);
    }
    body
}

async fn send(app: &TestApp, body: &Value) -> reqwest::Response {
    app.post("/v1/responses")
        .header("x-librechat-user-id", USER)
        .body(body.to_string())
        .send()
        .await
        .unwrap()
}

#[actix_web::test]
async fn a_streamed_response_is_passed_through_and_charged_its_usage() {
    let app = spawn_app(TestOptions::default()).await;
    let body = responses_body(true, Some(30));
    let res = send(&app, &body).await;
    assert_eq!(res.status(), 200);
    assert!(
        res.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/event-stream")
    );
    let received = res.bytes().await.unwrap();
    // The provider's bytes, unchanged.
    assert_eq!(received.as_ref(), app.fake.last_stream().as_slice());
    let sent = app.fake.last_request();
    assert_eq!(sent["max_output_tokens"], 30);
    assert_eq!(sent["user"], USER);
    assert!(sent.get("stream_options").is_none(), "{sent}");
    assert!(sent.get("max_tokens").is_none(), "{sent}");
    assert_eq!(sent["reasoning"], json!({"effort": "low"}));
    let records = app.ledger().usage_records(app.user_id(USER)).unwrap();
    let r = &records[0];
    assert_eq!(
        (r.endpoint.as_str(), r.outcome.as_str(), r.estimated),
        ("responses", "completed", 0)
    );
    let prompt = prompt_tokens_of(&sent) + 3;
    assert_eq!((r.prompt_tokens, r.completion_tokens), (prompt, 30));
    assert_eq!(app.charged(USER), prompt + 30);
    app.assert_invariant(USER);
}

#[actix_web::test]
async fn a_whole_response_is_charged_its_usage() {
    let app = spawn_app(TestOptions::default()).await;
    let res = send(&app, &responses_body(false, None)).await;
    assert_eq!(res.status(), 200);
    let answer: Value = res.json().await.unwrap();
    let usage = &answer["usage"];
    let expected =
        usage["input_tokens"].as_i64().unwrap() + usage["output_tokens"].as_i64().unwrap();
    assert_eq!(usage["output_tokens"], NATURAL_COMPLETION);
    // No limit named: the configured default is sent as `max_output_tokens`.
    assert_eq!(app.fake.last_request()["max_output_tokens"], 4096);
    assert_eq!(app.charged(USER), expected);
    app.assert_invariant(USER);
}

/// Near the end of the balance the limit is lowered to what the balance pays for,
/// and with nothing left the block is the same as a chat's.
#[actix_web::test]
async fn the_limit_is_clamped_and_an_empty_balance_is_blocked() {
    let app = spawn_app(TestOptions {
        env: vec![("TOKENGATE_BLOCK_STATUS", "402".into())],
        ..Default::default()
    })
    .await;
    app.default_plan(60);
    for stream in [false, true] {
        let res = send(
            &app,
            &json!({"model": "fill", "input": "oi", "stream": stream, "max_output_tokens": 5000}),
        )
        .await;
        if res.status() == 402 {
            break;
        }
        assert_eq!(res.status(), 200);
        let _ = res.bytes().await.unwrap();
        let limit = app.fake.last_request()["max_output_tokens"]
            .as_i64()
            .unwrap();
        assert!(limit < 60, "max_output_tokens must be clamped, got {limit}");
    }
    // Within the balance, beyond the error of the prompt's estimate.
    let sent = json!({"model": "fill", "input": "oi", "max_output_tokens": 5000});
    let estimated = tokengate::proxy::body::parse(
        sent.to_string().as_bytes(),
        tokengate::proxy::Endpoint::Responses,
    )
    .unwrap()
    .prompt_tokens;
    let estimate_error = (prompt_tokens_of(&sent) - estimated).max(0);
    let s = app.summary(USER);
    assert!(
        s.remaining >= -2 * estimate_error,
        "{s:?}, estimate error {estimate_error}"
    );
    let before = app.fake.request_count();
    let res = send(&app, &responses_body(true, None)).await;
    assert_eq!(res.status(), 402);
    let err: Value = res.json().await.unwrap();
    assert_eq!(err["error"]["code"], "insufficient_quota");
    assert_eq!(app.fake.request_count(), before);
    app.assert_invariant(USER);
}

/// Without usage from upstream the streamed text is estimated, never past the limit.
#[actix_web::test]
async fn a_response_without_usage_is_estimated_within_its_limit() {
    let app = spawn_app(TestOptions::default()).await;
    let res = send(
        &app,
        &json!({"model": "no-usage-long", "input": "oi", "stream": true, "max_output_tokens": 20}),
    )
    .await;
    assert_eq!(res.status(), 200);
    let _ = res.bytes().await.unwrap();
    let r = &app.ledger().usage_records(app.user_id(USER)).unwrap()[0];
    assert_eq!((r.estimated, r.completion_tokens), (1, 20));
    app.assert_invariant(USER);
}

/// What the provider would bill from something tokengate cannot see is refused:
/// a stored conversation, a stored prompt, a file kept at the provider, its own
/// tools, a background response (`tests/api/unreservable.rs` has the rest).
#[actix_web::test]
async fn stored_context_is_refused_and_never_sent() {
    let app = spawn_app(TestOptions::default()).await;
    let before = app.fake.request_count();
    let cases = [
        (
            json!({"model": "fake-model", "input": "continue", "previous_response_id": "resp_123"}),
            "previous_response_id",
        ),
        (
            json!({"model": "fake-model", "input": "oi", "conversation": "conv_1"}),
            "conversation",
        ),
        (
            json!({"model": "fake-model", "input": "oi", "prompt": {"id": "pmpt_1"}}),
            "prompt",
        ),
        (
            json!({"model": "fake-model", "input": [{"role": "user", "content": [{"type": "input_file", "file_id": "file-1"}]}]}),
            "input",
        ),
        (json!({"model": "fake-model", "input": []}), "input"),
        (json!({"model": "fake-model"}), "input"),
        (json!({"model": "fake-model", "input": 42}), "input"),
        (
            json!({"model": "fake-model", "input": "oi", "max_output_tokens": 0}),
            "max_output_tokens",
        ),
        (
            json!({"model": "fake-model", "input": "oi", "instructions": ["x"]}),
            "instructions",
        ),
        // An item kept at the provider, referenced.
        (
            json!({"model": "fake-model", "input": [{"type": "item_reference", "id": "msg_1"}]}),
            "input",
        ),
        // A file in a tool's result.
        (
            json!({"model": "fake-model", "input": [{"type": "function_call_output", "call_id": "c1",
            "output": [{"type": "input_file", "file_id": "file-1"}]}]}),
            "input",
        ),
        // Answered later, out of sight (and its answer carries no usage).
        (
            json!({"model": "fake-model", "input": "oi", "background": true}),
            "background",
        ),
        // Chat Completions fields: a bridge to Chat Completions would pass them on.
        (json!({"model": "fake-model", "input": "oi", "n": 8}), "n"),
        (
            json!({"model": "fake-model", "input": "oi", "max_tokens": 100}),
            "max_tokens",
        ),
        // Tools run at the provider bill what cannot be reserved.
        (
            json!({"model": "fake-model", "input": "oi", "tools": [{"type": "web_search"}]}),
            "tools",
        ),
        (
            json!({"model": "fake-model", "input": "oi", "tools": [{"type": "function", "name": "f", "parameters": {}}, {"type": "image_generation"}]}),
            "tools",
        ),
    ];
    for (body, param) in cases {
        let res = send(&app, &body).await;
        assert_eq!(res.status(), 400, "{body}");
        let err: Value = res.json().await.unwrap();
        // What the provider would bill beyond the reservation has its own code;
        // the rest is a malformed body.
        let billed_apart = body.get("previous_response_id").is_some()
            || body.get("conversation").is_some()
            || body.get("prompt").is_some()
            || body.get("background").is_some()
            || body.get("tools").is_some()
            || body.to_string().contains("file_id")
            || body.to_string().contains("item_reference");
        let code = if billed_apart {
            "not_reservable"
        } else {
            "invalid_body"
        };
        assert_eq!(err["error"]["code"], code, "{body}");
        assert_eq!(err["error"]["param"], param, "{body}");
    }
    assert_eq!(app.fake.request_count(), before);
    // Routes that are not metered are refused, never forwarded.
    for path in [
        "/v1/responses/resp_123",
        "/v1/files",
        "/v1/audio/speech",
        "/v1/images/generations",
    ] {
        let res = app.post(path).body("{}").send().await.unwrap();
        assert_eq!(res.status(), 404, "{path}");
    }
    assert_eq!(app.fake.request_count(), before);
}

/// OpenAI's Responses API (and LiteLLM before it) raises a `max_output_tokens` under
/// 16 to 16: a request is reserved for at least 16, and a balance that cannot pay
/// for them is refused rather than overspent.
#[actix_web::test]
async fn a_balance_under_the_smallest_limit_is_refused() {
    let app = spawn_app(TestOptions::default()).await;
    app.default_plan(20);
    let before = app.fake.request_count();
    let res = send(
        &app,
        &json!({"model": "fake-model", "input": "oi", "max_output_tokens": 5}),
    )
    .await;
    assert_eq!(res.status(), 429);
    assert_eq!(app.fake.request_count(), before);
    // A chat with the same balance is served: the minimum is the Responses API's.
    let res = app
        .chat(&chat_body("fake-model", "oi", false, Some(5)))
        .await;
    assert_eq!(res.status(), 200);
    app.assert_invariant(USER);
}

/// What LibreChat's Responses API calls carry besides text: images (reserved at the
/// most the model bills for one, as on chats, in a message or in a tool's result) and
/// function tools (passed on, their definitions counted in the prompt). Built-in
/// tools are refused (`stored_context_is_refused_and_never_sent`).
#[actix_web::test]
async fn images_and_tools_of_librechats_responses_calls() {
    let app = spawn_app(TestOptions::default()).await;
    app.default_plan(2_000);
    let with_image = |model: &str| {
        json!({"model": model, "stream": true, "max_output_tokens": 100,
            "tools": [{"type": "function", "name": "buscar", "description": "Busca na web",
                "parameters": {"type": "object", "properties": {"q": {"type": "string"}}}}],
            "input": [{"role": "user", "content": [
                {"type": "input_text", "text": "O que há nesta foto?"},
                {"type": "input_image", "image_url": "data:image/png;base64,iVBORw0KGgo=", "detail": "high"}]}]})
    };
    // gpt-4o bills at most 1,445 for the image: it fits in 2,000.
    let res = send(&app, &with_image("gpt-4o")).await;
    assert_eq!(res.status(), 200);
    let _ = res.bytes().await.unwrap();
    let sent = app.fake.last_request();
    assert_eq!(sent["tools"][0]["name"], "buscar");
    let limit = sent["max_output_tokens"].as_i64().unwrap();
    assert!(
        limit < 2_000 - 1_445,
        "the image is reserved for: limit {limit}"
    );
    // gpt-4o-mini bills up to 48,169 for it: refused, never sent.
    let before = app.fake.request_count();
    let res = send(&app, &with_image("gpt-4o-mini")).await;
    assert_eq!(res.status(), 429);
    // Nor when the image comes back in a tool's result.
    let in_tool_result = json!({"model": "gpt-4o-mini", "max_output_tokens": 100, "input": [
        {"type": "function_call_output", "call_id": "c1", "output": [
            {"type": "input_image", "image_url": "data:image/png;base64,iVBORw0KGgo="}]}]});
    let res = send(&app, &in_tool_result).await;
    assert_eq!(res.status(), 429);
    assert_eq!(app.fake.request_count(), before);
    app.assert_invariant(USER);
}
