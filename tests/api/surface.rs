//! The HTTP surface: keys, identity, errors in the OpenAI shape, operations routes,
//! and recovery of holds after a killed process.

use crate::helpers::*;
use base64::Engine;
use serde_json::{Value, json};
use tokengate::domain::Email;
use tokengate::ledger::{Actor, parse_user_ref};

async fn error_of(res: reqwest::Response) -> (u16, Value) {
    let status = res.status().as_u16();
    (status, res.json().await.unwrap())
}

#[actix_web::test]
async fn client_key_is_required_everywhere_on_v1() {
    let app = spawn_app(TestOptions::default()).await;
    let body = chat_body("fake-model", "olá", false, None).to_string();
    for auth in [
        None,
        Some("Bearer wrong-key-0123456789"),
        Some("Basic dGc6dGc="),
        Some("Bearer "),
    ] {
        let mut req = app
            .client
            .post(format!("{}/v1/chat/completions", app.address))
            .header("x-librechat-user-id", USER)
            .body(body.clone());
        if let Some(a) = auth {
            req = req.header("authorization", a);
        }
        let (status, err) = error_of(req.send().await.unwrap()).await;
        assert_eq!(status, 401, "{auth:?}");
        assert_eq!(err["error"]["code"], "invalid_api_key");
        assert_eq!(err["error"]["type"], "invalid_request_error");
    }
    let res = app
        .client
        .get(format!("{}/v1/models", app.address))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 401);
    assert_eq!(app.fake.request_count(), 0);
}

#[actix_web::test]
async fn identity_comes_from_headers_or_body_user() {
    let app = spawn_app(TestOptions::default()).await;
    // No header, no body user: 400 missing_user.
    let res = app
        .post("/v1/chat/completions")
        .body(chat_body("fake-model", "olá", false, None).to_string())
        .send()
        .await
        .unwrap();
    let (status, err) = error_of(res).await;
    assert_eq!(
        (status, err["error"]["code"].as_str()),
        (400, Some("missing_user"))
    );
    // Unresolved placeholders count as missing.
    let res = app
        .post("/v1/chat/completions")
        .header("x-librechat-user-id", "{{LIBRECHAT_USER_ID}}")
        .body(chat_body("fake-model", "olá", false, None).to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 400);
    // Body `user` is the fallback.
    let mut body = chat_body("fake-model", "olá", false, Some(3));
    body["user"] = json!("body-user-42");
    let res = app
        .post("/v1/chat/completions")
        .header("x-librechat-user-id", "")
        .body(body.to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    assert!(
        app.ledger()
            .find_user(&parse_user_ref("body-user-42"))
            .unwrap()
            .is_some()
    );
    // Control characters in the id are refused.
    let mut body = chat_body("fake-model", "olá", false, None);
    body["user"] = json!("evil\r\nid");
    let res = app
        .post("/v1/chat/completions")
        .body(body.to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 400);
}

#[actix_web::test]
async fn latin1_and_b64_headers_are_decoded() {
    let app = spawn_app(TestOptions::default()).await;
    let name = reqwest::header::HeaderValue::from_bytes(b"Jos\xe9 Concei\xe7\xe3o").unwrap();
    let res = app
        .post("/v1/chat/completions")
        .header("x-librechat-user-id", "latin1-user")
        .header("x-librechat-user-name", name)
        .header("x-librechat-user-email", "jose@example.com")
        .body(chat_body("fake-model", "olá", false, Some(2)).to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let s = app.summary("latin1-user");
    assert_eq!(s.name.as_deref(), Some("José Conceição"));
    assert_eq!(s.email.as_deref(), Some("jose@example.com"));

    let b64 = format!(
        "b64:{}",
        base64::engine::general_purpose::STANDARD.encode("Zoë 李 <b>")
    );
    let res = app
        .post("/v1/chat/completions")
        .header("x-librechat-user-id", "b64-user")
        .header("x-librechat-user-name", b64)
        .header("x-librechat-user-email", "{{LIBRECHAT_USER_EMAIL}}")
        .body(chat_body("fake-model", "olá", false, Some(2)).to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let s = app.summary("b64-user");
    assert_eq!(s.name.as_deref(), Some("Zoë 李 <b>"));
    assert_eq!(s.email, None, "a placeholder is no email");

    // A changed name is updated on the next request; a malformed email is ignored.
    let res = app
        .post("/v1/chat/completions")
        .header("x-librechat-user-id", "b64-user")
        .header("x-librechat-user-name", "Zoe")
        .header("x-librechat-user-email", "broken@@example.com")
        .body(chat_body("fake-model", "olá", false, Some(2)).to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(app.summary("b64-user").name.as_deref(), Some("Zoe"));
    assert_eq!(app.summary("b64-user").email, None);
}

#[actix_web::test]
async fn precreated_user_is_linked_by_email_and_suspension_blocks() {
    let app = spawn_app(TestOptions::default()).await;
    let email = Email::parse("maria@example.com").unwrap();
    let id = app
        .ledger()
        .create_user_by_email(&email, Some("Maria"), &Actor::Cli)
        .unwrap();
    let res = app
        .post("/v1/chat/completions")
        .header("x-librechat-user-id", USER)
        .header("x-librechat-user-email", "Maria@Example.com")
        .body(chat_body("fake-model", "olá", false, Some(2)).to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(
        app.user_id(USER),
        id,
        "the first request links to the pre-created user"
    );
    assert_eq!(app.ledger().list_users().unwrap().len(), 1);

    app.ledger()
        .set_suspended(&parse_user_ref(USER), true, &tokengate::ledger::Actor::Cli)
        .unwrap();
    let (status, err) =
        error_of(app.chat(&chat_body("fake-model", "olá", false, None)).await).await;
    assert_eq!(status, 403);
    assert_eq!(err["error"]["type"], "permission_error");
    assert_eq!(err["error"]["code"], "user_suspended");
    app.ledger()
        .set_suspended(&parse_user_ref(USER), false, &tokengate::ledger::Actor::Cli)
        .unwrap();
    assert_eq!(
        app.chat(&chat_body("fake-model", "olá", false, Some(2)))
            .await
            .status(),
        200
    );
    app.assert_invariant(USER);
}

#[actix_web::test]
async fn bad_bodies_get_clear_openai_errors_and_change_nothing() {
    let app = spawn_app(TestOptions {
        env: vec![("TOKENGATE_MAX_BODY_BYTES", "4096".into())],
        ..Default::default()
    })
    .await;
    let cases: Vec<(String, u16, &str)> = vec![
        ("not json".into(), 400, "invalid_body"),
        ("{\"model\": 5}".into(), 400, "invalid_body"),
        (
            json!({"model": "m", "messages": [{"role": "user", "content": "x"}], "max_tokens": 0})
                .to_string(),
            400,
            "invalid_body",
        ),
        (
            json!({"model": "m", "messages": [{"role": "user", "content": "x"}], "max_tokens": -1})
                .to_string(),
            400,
            "invalid_body",
        ),
        ("[".repeat(3000), 400, "invalid_body"),
        (
            json!({"model": "m", "messages": [{"role": "user", "content": "x".repeat(5000)}]})
                .to_string(),
            413,
            "body_too_large",
        ),
    ];
    for (body, status, code) in cases {
        let res = app
            .post("/v1/chat/completions")
            .header("x-librechat-user-id", USER)
            .body(body.clone())
            .send()
            .await
            .unwrap();
        let (got, err) = error_of(res).await;
        assert_eq!(got, status, "{}", &body[..body.len().min(60)]);
        assert_eq!(err["error"]["code"], code);
        assert!(
            err["error"]["message"]
                .as_str()
                .is_some_and(|m| !m.is_empty())
        );
    }
    let res = app
        .post("/v1/chat/completions")
        .header("x-librechat-user-id", USER)
        .body(vec![0xff, 0xfe, 0x00])
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 400);
    assert_eq!(app.fake.request_count(), 0);
    assert!(
        app.ledger()
            .find_user(&parse_user_ref(USER))
            .unwrap()
            .is_none(),
        "nothing was provisioned"
    );
}

#[actix_web::test]
async fn unknown_routes_are_404_and_models_pass_through() {
    let app = spawn_app(TestOptions::default()).await;
    let res = app
        .post("/v1/images/generations")
        .body("{}")
        .send()
        .await
        .unwrap();
    let (status, err) = error_of(res).await;
    assert_eq!(status, 404);
    assert_eq!(err["error"]["type"], "invalid_request_error");
    assert_eq!(app.fake.request_count(), 0, "never forwarded unmetered");

    // /v1/models needs a key but no user, and is never blocked for balance.
    app.default_plan(0);
    let res = app
        .client
        .get(format!("{}/v1/models", app.address))
        .bearer_auth(CLIENT_KEY)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let models: Value = res.json().await.unwrap();
    assert_eq!(models["data"][0]["id"], "fake-model");
}

#[actix_web::test]
async fn health_readiness_and_metrics() {
    let app = spawn_app(TestOptions::default()).await;
    let res = app
        .client
        .get(format!("{}/healthz", app.address))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let res = app
        .client
        .get(format!("{}/readyz", app.address))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let ready: Value = res.json().await.unwrap();
    assert_eq!(
        (ready["database"].as_str(), ready["upstream"].as_str()),
        (Some("ok"), Some("ok"))
    );
    let _ = app
        .chat(&chat_body("fake-model", "olá", false, Some(3)))
        .await
        .bytes()
        .await;
    let metrics = app.metrics().await;
    assert!(
        metrics.contains("tokengate_requests_settled_total{outcome=\"completed\"} 1"),
        "{metrics}"
    );
}

/// A process killed (SIGKILL) with 100 streams in flight leaves their holds; its
/// restart releases them, each charged its prompt (the provider billed it), and
/// what was settled before the kill stays charged once.
#[actix_web::test]
async fn holds_of_a_killed_process_are_released_on_restart() {
    let fake = crate::fake_provider::FakeProvider::start();
    let db = TestDb::new();
    let port = free_port();
    let env = [("TOKENGATE_INSTANCE_ID", "kill-test".to_owned())];
    let spawn = || tokengate_process(port, &db.url, &fake.base_url(), &env);
    let client = reqwest::Client::new();
    let base = format!("http://127.0.0.1:{port}");
    let mut child = spawn();
    wait_ready(&client, &base).await;

    // Settled before the kill: these must stay charged, once each.
    let done = chat_body("fake-model", "olá", true, Some(10));
    for _ in 0..20 {
        let res = chat_process(&client, &base, USER, &done).await;
        assert_eq!(res.status(), 200);
        res.bytes().await.unwrap();
    }
    let ledger = observer_ledger(&db.url, &fake.base_url());
    no_holds_left(&ledger).await;
    let opened = (0..100).map(|_| {
        let (client, base) = (client.clone(), base.clone());
        async move {
            let hang = chat_body("hang", "olá", true, Some(10));
            let mut res = chat_process(&client, &base, USER, &hang).await;
            assert_eq!(res.status(), 200);
            let _ = res.chunk().await.unwrap();
            res
        }
    });
    let streams = futures_util::future::join_all(opened).await;
    assert_eq!(ledger.holds().unwrap().len(), 100);

    child.kill().unwrap();
    child.wait().unwrap();
    drop(streams);
    let mut child = spawn();
    wait_ready(&client, &base).await;
    assert!(
        ledger.holds().unwrap().is_empty(),
        "restart must release the dead process's holds"
    );
    let user = ledger.find_user(&parse_user_ref(USER)).unwrap().unwrap();
    let summary = ledger.user_summary(user).unwrap();
    let per_request = crate::fake_provider::prompt_tokens_of(&done) + 10;
    // The hundred in flight had reached upstream, which bills their prompts: each
    // is charged its prompt, as estimated.
    let in_flight = estimated_prompt(
        &chat_body("hang", "olá", true, Some(10)),
        tokengate::proxy::Endpoint::ChatCompletions,
    );
    assert_eq!(
        (summary.held, summary.used_this_cycle),
        (0, 20 * per_request + 100 * in_flight)
    );
    assert!(ledger.check_invariant(user).unwrap().holds());
    let records = ledger.usage_records(user).unwrap();
    let count = |outcome: &str| records.iter().filter(|r| r.outcome == outcome).count();
    assert_eq!(
        (count("completed"), count("abandoned")),
        (20, 100),
        "{records:?}"
    );
    for r in records.iter().filter(|r| r.outcome == "abandoned") {
        assert_eq!(
            (r.charged, r.estimated, r.completion_tokens),
            (in_flight, 1, 0),
            "{r:?}"
        );
    }
    // Each request is charged once: one usage entry per record.
    let mut every: Vec<String> = records.iter().map(|r| r.request_id.clone()).collect();
    every.sort();
    assert_eq!(charged_request_ids(&ledger, user), every);
    // Back in service: the next chat is served and charged.
    let res = chat_process(&client, &base, USER, &done).await;
    assert_eq!(res.status(), 200);
    res.bytes().await.unwrap();
    no_holds_left(&ledger).await;
    assert_eq!(
        ledger.user_summary(user).unwrap().used_this_cycle,
        21 * per_request + 100 * in_flight
    );
    child.kill().unwrap();
    child.wait().unwrap();
}

/// A deploy stops the process with SIGTERM: streams in flight run to their end and
/// are settled before it exits, and it exits cleanly.
#[actix_web::test]
async fn sigterm_lets_streams_in_flight_finish_and_settle() {
    let fake = crate::fake_provider::FakeProvider::start();
    let db = TestDb::new();
    let port = free_port();
    let mut child = tokengate_process(port, &db.url, &fake.base_url(), &[]);
    let client = reqwest::Client::new();
    let base = format!("http://127.0.0.1:{port}");
    wait_ready(&client, &base).await;

    let body = chat_body("slow", "olá", true, Some(10));
    let mut streams = Vec::new();
    for _ in 0..5 {
        let mut res = chat_process(&client, &base, USER, &body).await;
        assert_eq!(res.status(), 200);
        let first = res.chunk().await.unwrap().unwrap_or_default();
        streams.push((res, first.to_vec()));
    }
    let term = std::process::Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(term.success());

    for (mut res, mut received) in streams {
        while let Some(chunk) = res.chunk().await.expect("the stream must not be cut") {
            received.extend_from_slice(&chunk);
        }
        assert!(
            received.ends_with(b"data: [DONE]\n\n"),
            "cut short: {}",
            String::from_utf8_lossy(&received)
        );
    }
    let mut exited = None;
    wait_until(std::time::Duration::from_secs(30), || {
        exited = child.try_wait().unwrap();
        std::future::ready(exited.is_some())
    })
    .await;
    assert!(exited.unwrap().success(), "{exited:?}");

    let ledger = observer_ledger(&db.url, &fake.base_url());
    assert!(ledger.holds().unwrap().is_empty());
    let user = ledger.find_user(&parse_user_ref(USER)).unwrap().unwrap();
    let records = ledger.usage_records(user).unwrap();
    assert_eq!(records.len(), 5);
    assert!(
        records.iter().all(|r| r.outcome == "completed"),
        "{records:?}"
    );
    let per_request = crate::fake_provider::prompt_tokens_of(&body) + 10;
    assert_eq!(
        ledger.user_summary(user).unwrap().used_this_cycle,
        5 * per_request
    );
    assert!(ledger.check_invariant(user).unwrap().holds());
}

/// The request ids of a user's `usage` ledger entries, one per charged request.
fn charged_request_ids(ledger: &tokengate::ledger::Ledger, user: i64) -> Vec<String> {
    let mut ids: Vec<String> = ledger
        .ledger_entries(user)
        .unwrap()
        .into_iter()
        .filter(|e| e.kind == "usage")
        .filter_map(|e| e.request_id)
        .collect();
    ids.sort();
    ids
}
