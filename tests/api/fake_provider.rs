//! A deterministic OpenAI-compatible provider: exact usage, chunked SSE whose events
//! and `data:` prefixes are split across chunks, and failures chosen by model name:
//! `fail-400`, `fail-500`, `hang` (streams 3 tokens then waits forever),
//! `trickle` (streams 3 tokens, then one more every 20 ms until the client leaves),
//! `hang-body` (non-streamed: sends its headers and the start of the body, then
//! waits forever),
//! `fill` (every choice runs to the limit it is given), `gpt-4o` and `gpt-4o-mini`
//! (images billed as OpenAI bills them at most: 1,445 and 48,169 tokens each),
//! `no-usage` (never reports usage), `error-200` (a 200 whose body, or whose only
//! event, is LiteLLM's `{"error": ...}`), `parts` (a non-streamed answer whose
//! `content` is an array of parts), anything else answers normally. A model named
//! like a search model, or a request that asks for web search or a tool of the
//! provider's, bills `SEARCH_TOKENS` more input, as a provider's search does.

use actix_web::{App, HttpRequest, HttpResponse, HttpServer, web};
use bytes::Bytes;
use serde_json::{Value, json};
use std::net::TcpListener;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

/// Completion tokens produced when the request allows more.
pub const NATURAL_COMPLETION: i64 = 40;
/// Input a web search adds: the pages it read.
pub const SEARCH_TOKENS: i64 = 15_000;
/// Bytes per chunk on the wire: small and odd, so every event is split.
const PIECE: usize = 7;

#[derive(Default)]
pub struct FakeState {
    pub requests: Mutex<Vec<Value>>,
    pub streams_sent: Mutex<Vec<Vec<u8>>>,
    pub count: AtomicUsize,
    /// `gated` answers end once it is open (`FakeProvider::open_gate`).
    gate_open: std::sync::atomic::AtomicBool,
    gate: tokio::sync::Notify,
}

impl FakeState {
    /// Waits until the gate is open.
    async fn gate(&self) {
        loop {
            let opened = self.gate.notified();
            if self.gate_open.load(Ordering::SeqCst) {
                return;
            }
            opened.await;
        }
    }
}

pub struct FakeProvider {
    pub port: u16,
    pub state: Arc<FakeState>,
}

impl FakeProvider {
    pub fn start() -> Self {
        let state = Arc::new(FakeState::default());
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let data = web::Data::from(state.clone());
        let server = HttpServer::new(move || {
            App::new()
                .app_data(data.clone())
                .app_data(web::PayloadConfig::new(64 << 20))
                .route("/v1/chat/completions", web::post().to(chat))
                .route("/v1/completions", web::post().to(completions))
                .route("/v1/embeddings", web::post().to(embeddings))
                .route("/v1/responses", web::post().to(responses))
                .route("/v1/models", web::get().to(models))
        })
        .workers(2)
        .listen(listener)
        .unwrap()
        .run();
        actix_web::rt::spawn(server);
        Self { port, state }
    }

    pub fn base_url(&self) -> String {
        format!("http://127.0.0.1:{}/v1", self.port)
    }

    pub fn last_request(&self) -> Value {
        self.state
            .requests
            .lock()
            .unwrap()
            .last()
            .cloned()
            .unwrap_or(Value::Null)
    }

    /// Lets every `gated` answer end, now and from now on.
    pub fn open_gate(&self) {
        self.state.gate_open.store(true, Ordering::SeqCst);
        self.state.gate.notify_waiters();
    }

    pub fn request_count(&self) -> usize {
        self.state.count.load(Ordering::SeqCst)
    }

    pub fn last_stream(&self) -> Vec<u8> {
        self.state
            .streams_sent
            .lock()
            .unwrap()
            .last()
            .cloned()
            .unwrap_or_default()
    }
}

/// Deterministic prompt count: one per whitespace-separated word, plus 7.
pub fn prompt_tokens_of(body: &Value) -> i64 {
    let mut words = 0;
    if let Some(messages) = body["messages"].as_array() {
        for m in messages {
            words += m["content"]
                .as_str()
                .map_or(0, |s| s.split_whitespace().count());
        }
    }
    for key in ["prompt", "input"] {
        match &body[key] {
            Value::String(s) => words += s.split_whitespace().count(),
            Value::Array(list) => {
                for item in list {
                    match item {
                        Value::String(s) => words += s.split_whitespace().count(),
                        Value::Array(ids) => words += ids.len(),
                        // A Responses API item: its text, if it has one.
                        Value::Object(_) => {
                            words += item["content"]
                                .as_str()
                                .map_or(1, |s| s.split_whitespace().count())
                        }
                        _ => words += 1,
                    }
                }
            }
            _ => {}
        }
    }
    words as i64
        + 7
        + images_of(body) * image_cost(body["model"].as_str().unwrap_or(""))
        + if searched(body) { SEARCH_TOKENS } else { 0 }
}

/// Whether the request makes the provider search the web: a search model, web
/// search asked for, or any tool that is not a function.
fn searched(body: &Value) -> bool {
    let model = body["model"].as_str().unwrap_or("");
    let hosted_tool = body["tools"]
        .as_array()
        .is_some_and(|tools| tools.iter().any(|t| t["type"] != "function"));
    model.contains("search")
        || !body["web_search_options"].is_null()
        || body["web_search"] == true
        || body["plugins"].as_array().is_some_and(|p| !p.is_empty())
        || hosted_tool
}

/// Image parts in a chat's messages.
fn images_of(body: &Value) -> i64 {
    let mut images = 0;
    for m in body["messages"].as_array().into_iter().flatten() {
        for part in m["content"].as_array().into_iter().flatten() {
            if part["type"] == "image_url" {
                images += 1;
            }
        }
    }
    images
}

/// What the provider bills for one image: OpenAI's largest high-detail image.
fn image_cost(model: &str) -> i64 {
    if model.contains("gpt-4o-mini") {
        48_169
    } else if model.contains("gpt-4o") {
        1_445
    } else {
        0
    }
}

/// Completion tokens of each choice: the limit sent, up to the provider's natural
/// length (`fill` always runs to the limit).
fn completion_tokens_of(body: &Value) -> i64 {
    let max = body["max_completion_tokens"]
        .as_i64()
        .or_else(|| body["max_tokens"].as_i64());
    if body["model"] == "fill" {
        return max.unwrap_or(4096);
    }
    max.map_or(NATURAL_COMPLETION, |m| m.min(NATURAL_COMPLETION))
}

/// How many completions the provider generates and bills: `n` choices (`best_of`
/// candidates, if more) for each prompt of a list.
fn completions_of(body: &Value) -> i64 {
    let n = body["n"].as_i64().unwrap_or(1);
    let best_of = body["best_of"].as_i64().unwrap_or(1);
    let prompts = match &body["prompt"] {
        Value::Array(list) if !list.iter().all(Value::is_number) => list.len() as i64,
        _ => 1,
    };
    prompts * n.max(best_of)
}

/// Choices returned: `n` for each prompt (the other `best_of` candidates are billed
/// but not returned).
fn returned_of(body: &Value) -> i64 {
    let prompts = match &body["prompt"] {
        Value::Array(list) if !list.iter().all(Value::is_number) => list.len() as i64,
        _ => 1,
    };
    prompts * body["n"].as_i64().unwrap_or(1)
}

fn record(state: &FakeState, body: &Value) {
    state.count.fetch_add(1, Ordering::SeqCst);
    state.requests.lock().unwrap().push(body.clone());
}

fn failure(model: &str) -> Option<HttpResponse> {
    match model {
        "fail-400" => Some(HttpResponse::BadRequest().json(json!({"error": {"message": "fake: invalid parameter", "type": "invalid_request_error", "code": "bad_param", "param": "temperature"}}))),
        "fail-500" => Some(HttpResponse::InternalServerError().json(json!({"error": {"message": "fake: provider exploded", "type": "server_error", "code": null, "param": null}}))),
        // LiteLLM's way to report a provider failure after it has answered 200.
        "error-200" => Some(HttpResponse::Ok().json(json!({"error": {"message": "litellm.APIConnectionError: provider went away", "type": null, "param": null, "code": "500"}}))),
        // A proxy in the way answering 200 with a page instead of JSON.
        "garbage" => Some(HttpResponse::Ok().content_type("text/html").body("<html><body>502 Bad Gateway</body></html>")),
        _ => None,
    }
}

async fn chat(state: web::Data<FakeState>, body: web::Bytes) -> HttpResponse {
    generate(state, body, true).await
}

async fn completions(state: web::Data<FakeState>, body: web::Bytes) -> HttpResponse {
    generate(state, body, false).await
}

async fn generate(state: web::Data<FakeState>, body: web::Bytes, chat: bool) -> HttpResponse {
    let body: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    record(&state, &body);
    let model = body["model"].as_str().unwrap_or("").to_owned();
    let stream = body["stream"].as_bool().unwrap_or(false);
    if model == "error-200" && stream {
        let event = json!({"error": {"message": "litellm.APIConnectionError: provider went away", "code": "500"}});
        return HttpResponse::Ok()
            .content_type("text/event-stream")
            .body(format!("data: {event}\n\n"));
    }
    if let Some(res) = failure(&model) {
        return res;
    }
    let prompt = prompt_tokens_of(&body);
    let completion = completion_tokens_of(&body);
    if !stream {
        if model == "hang" {
            futures_util::future::pending::<()>().await;
        }
        if model == "gated" {
            state.gate().await;
        }
        if model == "slow" {
            // A title at a real provider: a moment, then the whole answer.
            actix_web::rt::time::sleep(std::time::Duration::from_millis(300)).await;
        }
        if model == "slower" {
            // A title at a slow reasoning model.
            actix_web::rt::time::sleep(std::time::Duration::from_secs(4)).await;
        }
        if model == "hang-body" {
            // Headers and the start of the answer, then nothing more.
            let start = futures_util::stream::once(async {
                Ok::<_, actix_web::Error>(Bytes::from_static(b"{\"id\":\"fake-1\",\"choices\":["))
            });
            let never = futures_util::stream::pending();
            return HttpResponse::Ok()
                .content_type("application/json")
                .streaming(start.chain(never));
        }
        let text = word_of(&model).repeat(completion as usize);
        let choices: Vec<Value> = (0..returned_of(&body))
            .map(|i| {
                if chat && model == "parts" {
                    json!({"index": i, "message": {"role": "assistant", "content": [{"type": "text", "text": text}]}, "finish_reason": "stop"})
                } else if chat {
                    json!({"index": i, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"})
                } else {
                    json!({"index": i, "text": text, "finish_reason": "stop"})
                }
            })
            .collect();
        let mut res = json!({"id": "fake-1", "object": if chat { "chat.completion" } else { "text_completion" }, "created": 1_700_000_000, "model": model, "choices": choices});
        // Every completion generated is billed, returned or not.
        let billed = completion * completions_of(&body);
        if !model.starts_with("no-usage") {
            res["usage"] = json!({"prompt_tokens": prompt, "completion_tokens": billed, "total_tokens": prompt + billed});
        }
        return HttpResponse::Ok()
            .content_type("application/json")
            .body(res.to_string());
    }

    let include_usage = body["stream_options"]["include_usage"]
        .as_bool()
        .unwrap_or(false)
        && !model.starts_with("no-usage");
    let mut events = Vec::new();
    let chunk = |i: i64, delta: Value| {
        if chat {
            json!({"id": "fake-1", "object": "chat.completion.chunk", "created": 1_700_000_000, "model": model, "choices": [{"index": i, "delta": delta}]})
        } else {
            json!({"id": "fake-1", "object": "text_completion", "created": 1_700_000_000, "model": model, "choices": [{"index": i, "text": delta["content"].as_str().unwrap_or("")}]})
        }
    };
    let returned = returned_of(&body);
    for i in 0..returned {
        events.push(chunk(i, json!({"role": "assistant", "content": ""})));
    }
    let tokens = if matches!(model.as_str(), "hang" | "trickle") {
        3
    } else {
        completion
    };
    for _ in 0..tokens {
        for i in 0..returned {
            events.push(chunk(i, json!({"content": word_of(&model)})));
        }
    }
    let completion = completion * completions_of(&body);
    let mut wire = Vec::new();
    for e in &events {
        wire.extend_from_slice(format!("data: {e}\n\n").as_bytes());
    }
    // Where the answer's text ends and its usage and [DONE] begin.
    let text_end = wire.len();
    if !matches!(model.as_str(), "hang" | "trickle") {
        if include_usage {
            let usage = json!({"id": "fake-1", "object": "chat.completion.chunk", "created": 1_700_000_000, "model": model, "choices": [{"index": 0, "delta": {}}],
                "usage": {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}});
            wire.extend_from_slice(format!("data: {usage}\r\n\r\n").as_bytes());
        }
        wire.extend_from_slice(b"data: [DONE]\n\n");
    }
    state.streams_sent.lock().unwrap().push(wire.clone());
    // "slow": a healthy answer that takes a while, a piece every 50 ms. "gated": the
    // text at once, the usage and [DONE] once the gate is open.
    let slow = model == "slow";
    let (now, later) = wire.split_at(if model == "gated" {
        text_end
    } else {
        wire.len()
    });
    let in_pieces = |bytes: &[u8], size: usize| -> Vec<Result<Bytes, actix_web::Error>> {
        bytes
            .chunks(size)
            .map(|c| Ok(Bytes::copy_from_slice(c)))
            .collect()
    };
    let pieces = in_pieces(now, if slow { 200 } else { PIECE });
    let later = in_pieces(later, PIECE);
    let pieces = futures_util::stream::iter(pieces).then(move |piece| async move {
        if slow {
            actix_web::rt::time::sleep(std::time::Duration::from_millis(50)).await;
        }
        piece
    });
    let gate = state.clone();
    let gated = futures_util::stream::once(async move {
        if !later.is_empty() {
            gate.gate().await;
        }
        futures_util::stream::iter(later)
    })
    .flatten();
    let hang = model == "hang";
    let trickle = model == "trickle";
    let tail = futures_util::stream::once(async move {
        if hang {
            futures_util::future::pending::<()>().await;
        }
        Ok(Bytes::new())
    });
    // Like a real model still generating: output keeps coming, so a write to a client
    // that left fails and the proxy notices the disconnect.
    let more = futures_util::stream::unfold(trickle, |go| async move {
        if !go {
            return None;
        }
        actix_web::rt::time::sleep(std::time::Duration::from_millis(20)).await;
        let event = json!({"choices": [{"index": 0, "delta": {"content": "tok "}}]});
        Some((Ok(Bytes::from(format!("data: {event}\n\n"))), true))
    });
    let body = pieces.chain(gated).chain(tail).chain(more);
    HttpResponse::Ok()
        .content_type("text/event-stream")
        .insert_header(("cache-control", "no-cache"))
        .streaming(body)
}

use futures_util::StreamExt;

/// The Responses API: the same deterministic counts, `max_output_tokens` as the
/// limit, usage as `input_tokens` / `output_tokens`, in `response.completed` when
/// streamed.
async fn responses(state: web::Data<FakeState>, body: web::Bytes) -> HttpResponse {
    let body: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    record(&state, &body);
    let model = body["model"].as_str().unwrap_or("").to_owned();
    if let Some(res) = failure(&model) {
        return res;
    }
    let prompt = prompt_tokens_of(&body)
        + body["instructions"]
            .as_str()
            .map_or(0, |s| s.split_whitespace().count() as i64);
    let max = body["max_output_tokens"].as_i64();
    let completion = if model == "fill" {
        max.unwrap_or(4096)
    } else {
        max.map_or(NATURAL_COMPLETION, |m| m.min(NATURAL_COMPLETION))
    };
    let text = word_of(&model).repeat(completion as usize);
    let usage = (!model.starts_with("no-usage")).then(|| {
        json!({"input_tokens": prompt, "input_tokens_details": {"cached_tokens": 0},
            "output_tokens": completion, "output_tokens_details": {"reasoning_tokens": 0},
            "total_tokens": prompt + completion})
    });
    let message = json!({"type": "message", "id": "msg_fake", "status": "completed", "role": "assistant",
        "content": [{"type": "output_text", "text": text, "annotations": []}]});
    let response = |status: &str, output: Value, usage: Option<Value>| {
        json!({"id": "resp_fake", "object": "response", "created_at": 1_700_000_000, "status": status,
            "model": model, "output": output, "parallel_tool_calls": true, "tool_choice": "auto",
            "tools": [], "usage": usage, "error": null, "incomplete_details": null})
    };
    if !body["stream"].as_bool().unwrap_or(false) {
        return HttpResponse::Ok().json(response("completed", json!([message]), usage));
    }
    let mut events = vec![
        json!({"type": "response.created", "sequence_number": 0, "response": response("in_progress", json!([]), None)}),
        json!({"type": "response.output_item.added", "sequence_number": 1, "output_index": 0,
            "item": {"type": "message", "id": "msg_fake", "status": "in_progress", "role": "assistant", "content": []}}),
    ];
    for _ in 0..completion {
        events.push(json!({"type": "response.output_text.delta", "sequence_number": events.len(),
            "item_id": "msg_fake", "output_index": 0, "content_index": 0, "delta": word_of(&model), "logprobs": []}));
    }
    events.push(json!({"type": "response.output_item.done", "sequence_number": events.len(), "output_index": 0, "item": message}));
    events.push(
        json!({"type": "response.completed", "sequence_number": events.len(),
        "response": response("completed", json!([message]), usage)}),
    );
    let mut wire = Vec::new();
    for e in &events {
        wire.extend_from_slice(
            format!("event: {}\ndata: {e}\n\n", e["type"].as_str().unwrap_or("")).as_bytes(),
        );
    }
    state.streams_sent.lock().unwrap().push(wire.clone());
    let pieces: Vec<Result<Bytes, actix_web::Error>> = wire
        .chunks(PIECE)
        .map(|c| Ok(Bytes::copy_from_slice(c)))
        .collect();
    HttpResponse::Ok()
        .content_type("text/event-stream")
        .streaming(futures_util::stream::iter(pieces))
}

async fn embeddings(state: web::Data<FakeState>, body: web::Bytes) -> HttpResponse {
    let body: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    record(&state, &body);
    let prompt = prompt_tokens_of(&body);
    HttpResponse::Ok().json(json!({"object": "list", "data": [{"object": "embedding", "index": 0, "embedding": [0.1, 0.2, 0.3]}],
        "model": body["model"], "usage": {"prompt_tokens": prompt, "total_tokens": prompt}}))
}

async fn models(_req: HttpRequest) -> HttpResponse {
    let data: Vec<Value> = ["fake-model", "gpt-4o-mini", "gpt-4o"]
        .iter()
        .map(|id| json!({"id": id, "object": "model", "owned_by": "fake"}))
        .collect();
    HttpResponse::Ok().json(json!({"object": "list", "data": data}))
}

/// The word each generated token is: "tok ", or for "no-usage-long" a word the text
/// estimate counts as several tokens (so an estimate can exceed the limit sent).
fn word_of(model: &str) -> &'static str {
    if model == "no-usage-long" {
        " understanding"
    } else {
        "tok "
    }
}
