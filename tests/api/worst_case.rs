//! What may be billed (docs/behaviour.md): the reservation covers the most the
//! provider can bill for the request as sent, with a provider that bills every
//! choice, every candidate, every prompt of a list and every image. Streamed and
//! not, a balance is never overspent, and what cannot be paid for is never sent.

use crate::fake_provider::prompt_tokens_of;
use crate::helpers::*;
use serde_json::{Value, json};
use tokengate::proxy::Endpoint;

/// What the provider billed for an answer, prompt and completion, from its usage in
/// the body or the stream.
async fn billed(res: reqwest::Response, stream: bool) -> (i64, i64) {
    let text = res.text().await.unwrap();
    let usage = if stream {
        text.split("data: ")
            .filter_map(|e| serde_json::from_str::<Value>(e.trim()).ok())
            .find_map(|e| e.get("usage").cloned())
            .unwrap()
    } else {
        serde_json::from_str::<Value>(&text).unwrap()["usage"].clone()
    };
    (
        usage["prompt_tokens"].as_i64().unwrap(),
        usage["completion_tokens"].as_i64().unwrap_or(0),
    )
}

use crate::helpers::estimated_prompt as estimate;

/// After an answer: the user was charged what the provider billed, and it fits the
/// plan, beyond the error of the prompt's estimate (the guarantee in
/// docs/behaviour.md): what the provider generated plus the prompt as estimated.
fn assert_within(app: &TestApp, user: &str, billed: (i64, i64), estimate: i64, plan: i64) {
    let (prompt, completion) = billed;
    let s = app.summary(user);
    assert_eq!(
        s.used_this_cycle,
        prompt + completion,
        "charged what the provider billed"
    );
    assert!(
        completion + estimate <= plan,
        "the provider generated {completion} tokens beside a prompt of {estimate} on a {plan}-token plan"
    );
    app.assert_invariant(user);
}

/// `n: 8, max_tokens: 90000` with a tenth of the plan left: the limit sent upstream
/// is what the balance pays for all eight choices. It used to be the balance for
/// one, and the provider billed eight times that.
#[actix_web::test]
async fn n_choices_are_reserved_and_the_limit_covers_them_all() {
    let app = spawn_app(TestOptions::default()).await;
    app.default_plan(1_000);
    for (i, stream) in [false, true].into_iter().enumerate() {
        let user = format!("n-choices-{i}");
        let mut body = chat_body("fill", "Conte uma história", stream, Some(90_000));
        body["n"] = json!(8);
        let res = app.chat_as(&user, &body).await;
        assert_eq!(res.status(), 200);
        let sent = app.fake.last_request();
        let limit = sent["max_tokens"].as_i64().unwrap();
        assert!(
            limit >= 1 && 8 * limit + prompt_tokens_of(&body) <= 1_000,
            "{sent}"
        );
        let billed = billed(res, stream).await;
        assert_eq!(billed, (prompt_tokens_of(&body), 8 * limit));
        assert_within(
            &app,
            &user,
            billed,
            estimate(&body, Endpoint::ChatCompletions),
            1_000,
        );
    }
    // More choices than the balance pays a token each for: refused, never sent.
    let mut body = chat_body("fill", "oi", false, Some(10));
    body["n"] = json!(128);
    app.default_plan(100);
    let before = app.fake.request_count();
    let res = app.chat_as("n-choices-2", &body).await;
    assert_eq!(res.status(), 429);
    assert_eq!(app.fake.request_count(), before);
}

/// `/v1/completions`: `best_of` candidates are billed though only `n` come back,
/// and a list of prompts is answered prompt by prompt.
#[actix_web::test]
async fn best_of_and_lists_of_prompts_are_reserved() {
    let app = spawn_app(TestOptions::default()).await;
    app.default_plan(2_000);
    let cases = [
        (
            json!({"model": "fill", "prompt": "Era uma vez", "n": 2, "best_of": 5, "max_tokens": 5000}),
            5,
            false,
        ),
        (
            json!({"model": "fill", "prompt": ["Era uma vez", "No começo", "Certa vez"], "n": 2, "max_tokens": 5000, "stream": true}),
            6,
            true,
        ),
        (
            json!({"model": "fill", "prompt": ["a", "b", "c", "d"], "max_tokens": 5000}),
            4,
            false,
        ),
    ];
    for (i, (body, completions, stream)) in cases.into_iter().enumerate() {
        let user = format!("completions-{i}");
        let res = app
            .post("/v1/completions")
            .header("x-librechat-user-id", &user)
            .body(body.to_string())
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 200, "{body}");
        let limit = app.fake.last_request()["max_tokens"].as_i64().unwrap();
        let billed = billed(res, stream).await;
        assert_eq!(billed, (prompt_tokens_of(&body), completions * limit));
        assert_within(
            &app,
            &user,
            billed,
            estimate(&body, Endpoint::Completions),
            2_000,
        );
    }
}

/// `/v1/embeddings` with a list of inputs: every input is billed, so all are
/// reserved; a list the balance cannot pay for is refused and never sent.
#[actix_web::test]
async fn lists_of_embedding_inputs_are_reserved() {
    let app = spawn_app(TestOptions::default()).await;
    app.default_plan(100);
    let embed = |user: &'static str, input: Value| {
        app.post("/v1/embeddings")
            .header("x-librechat-user-id", user)
            .body(json!({"model": "embed", "input": input}).to_string())
            .send()
    };
    let input = json!(["uma frase curta", "outra frase"]);
    let res = embed("embed-ok", input.clone()).await.unwrap();
    assert_eq!(res.status(), 200);
    let billed = billed(res, false).await;
    let body = json!({"model": "embed", "input": input});
    assert_within(
        &app,
        "embed-ok",
        billed,
        estimate(&body, Endpoint::Embeddings),
        100,
    );
    let many: Vec<String> = (0..60).map(|i| format!("documento número {i}")).collect();
    let before = app.fake.request_count();
    let res = embed("embed-many", json!(many)).await.unwrap();
    assert_eq!(res.status(), 429);
    assert_eq!(
        app.fake.request_count(),
        before,
        "nothing is sent that the balance cannot pay"
    );
}

/// Images are reserved at the most the model may bill for one: 1,445 tokens for
/// gpt-4o's largest high-detail image, 48,169 for gpt-4o-mini's. They used to be
/// reserved at 765 whatever the model, and two images overspent a small balance.
#[actix_web::test]
async fn images_are_reserved_at_the_worst_case_for_the_model() {
    let app = spawn_app(TestOptions::default()).await;
    app.default_plan(2_500);
    let with_images = |model: &str, images: usize, stream: bool| {
        let mut content = vec![json!({"type": "text", "text": "O que há nestas fotos?"})];
        for i in 0..images {
            // As LibreChat sends an upload: the picture itself, as a data URL.
            content.push(json!({"type": "image_url", "image_url": {"url": format!("data:image/jpeg;base64,/9j/{i}AAQSkZJRg=="), "detail": "high"}}));
        }
        json!({"model": model, "messages": [{"role": "user", "content": content}], "stream": stream, "max_tokens": 500})
    };
    // One image fits, streamed and not: the limit is what is left beside it.
    for (i, stream) in [false, true].into_iter().enumerate() {
        let user = format!("one-image-{i}");
        let body = with_images("gpt-4o", 1, stream);
        let res = app.chat_as(&user, &body).await;
        assert_eq!(res.status(), 200);
        let billed = billed(res, stream).await;
        assert_within(
            &app,
            &user,
            billed,
            estimate(&body, Endpoint::ChatCompletions),
            2_500,
        );
    }
    // Two do not: refused with a text that says why, and never sent.
    let before = app.fake.request_count();
    let res = app
        .chat_as("two-images", &with_images("gpt-4o", 2, false))
        .await;
    assert_eq!(res.status(), 429);
    let err: Value = res.json().await.unwrap();
    assert!(
        err["error"]["message"]
            .as_str()
            .unwrap()
            .starts_with("Esta mensagem é maior que o saldo restante de 2.500 tokens."),
        "{err}"
    );
    // Nor one for gpt-4o-mini, which bills 48,169 for it.
    let res = app
        .chat_as("mini-image", &with_images("gpt-4o-mini", 1, true))
        .await;
    assert_eq!(res.status(), 429);
    assert_eq!(app.fake.request_count(), before);

    // An alias the provider's name is hidden behind: the admin's figure counts.
    app.ledger()
        .set_weights(
            "IA Solaris Visão",
            tokengate::ledger::ModelCost {
                weights: tokengate::domain::Weights::default(),
                image_tokens: Some(100),
                call_extra: None,
            },
            &tokengate::ledger::Actor::Cli,
        )
        .unwrap();
    let res = app
        .chat_as("alias-image", &with_images("IA Solaris Visão", 2, false))
        .await;
    assert_eq!(res.status(), 200);
}

/// A file named by its id or URL at the provider (a PDF uploaded there, say) can cost
/// anything: tokengate cannot see it to reserve for it, so it is refused with a
/// clear error and never sent. It used to be reserved as ten tokens of JSON and
/// billed 40,000. A file sent inline is refused too: providers bill a document by
/// its pages, not its size (a 7 KB PDF of a hundred pages bills as much as 160,000
/// tokens), and so is any part whose size does not tell its bill: a document, a
/// video, an image the provider fetches from an address. With the admin's extra
/// cost for the model, they go, reserved at it.
#[actix_web::test]
async fn files_documents_videos_and_fetched_images_are_refused_unless_the_model_has_an_extra() {
    let app = spawn_app(TestOptions::default()).await;
    app.default_plan(999);
    let before = app.fake.request_count();
    let stored = [
        json!({"type": "file", "file": {"file_id": "file-abc123"}}),
        json!({"type": "file", "file": {"file_url": "https://example.com/a.pdf"}}),
        json!({"type": "input_file", "file_id": "file-abc123"}),
        // Data beside the name: the provider may still bill the file it names.
        json!({"type": "file", "file": {"file_data": "", "file_id": "file-abc123"}}),
    ];
    for part in stored {
        for stream in [false, true] {
            let body = json!({"model": "gpt-4o", "stream": stream, "max_tokens": 100, "messages": [
                {"role": "user", "content": [{"type": "text", "text": "Resuma o PDF"}, part]}]});
            let res = app.chat(&body).await;
            assert_eq!(res.status(), 400, "{part}");
            let err: Value = res.json().await.unwrap();
            assert_eq!(err["error"]["code"], "not_reservable");
            assert_eq!(err["error"]["param"], "messages");
            assert!(
                err["error"]["message"]
                    .as_str()
                    .unwrap()
                    .contains("Envie o próprio conteúdo"),
                "{err}"
            );
        }
    }
    assert_eq!(app.fake.request_count(), before, "nothing was sent");
    let unpriced = [
        json!({"type": "file", "file": {"filename": "a.pdf", "file_data": format!("data:application/pdf;base64,{}", "QUJD".repeat(100))}}),
        json!({"type": "document", "source": {"type": "url", "url": "https://example.com/a.pdf"}}),
        json!({"type": "video_url", "video_url": {"url": "https://example.com/a.mp4"}}),
        json!({"type": "image_url", "image_url": {"url": "data:application/pdf;base64,QUJD"}}),
        json!({"type": "image_url", "image_url": {"url": "gs://bucket/video.mp4"}}),
        json!({"type": "image_url", "image_url": {"url": "https://example.com/a.png"}}),
        json!({"type": "something_new", "data": "x"}),
    ];
    for part in &unpriced {
        for stream in [false, true] {
            let body = json!({"model": "gpt-4o", "stream": stream, "max_tokens": 100, "messages": [
                {"role": "user", "content": [{"type": "text", "text": "Resuma"}, part]}]});
            let res = app.chat(&body).await;
            assert_eq!(res.status(), 400, "{part}");
            let err: Value = res.json().await.unwrap();
            assert_eq!(err["error"]["code"], "not_reservable", "{part}");
            assert!(
                err["error"]["message"]
                    .as_str()
                    .unwrap()
                    .contains("cobra por páginas ou duração"),
                "{err}"
            );
        }
    }
    assert_eq!(app.fake.request_count(), before, "nothing was sent");
    // The admin's extra cost per call lets them through, reserved at it.
    app.ledger()
        .set_weights(
            "gpt-4o",
            tokengate::ledger::ModelCost {
                weights: tokengate::domain::Weights::default(),
                image_tokens: None,
                call_extra: Some(500),
            },
            &tokengate::ledger::Actor::Cli,
        )
        .unwrap();
    let body = json!({"model": "gpt-4o", "max_tokens": 5000, "messages": [
        {"role": "user", "content": [{"type": "text", "text": "Resuma o PDF"}, unpriced[0]]}]});
    let res = app.chat(&body).await;
    assert_eq!(res.status(), 200);
    let sent = app.fake.last_request()["max_tokens"].as_i64().unwrap();
    assert_eq!(sent, 999 - 500 - estimate(&body, Endpoint::ChatCompletions));
    app.assert_invariant(USER);
}
