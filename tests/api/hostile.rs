//! Hostile input on /v1, each answered with the right status and a clear OpenAI-style
//! error, nothing forwarded and nothing written; and input that is odd but harmless
//! (SQL-looking ids, NUL bytes in content) served without being misread.

use crate::helpers::*;
use base64::Engine;
use serde_json::{Value, json};
use std::io::{Read, Write};
use tokengate::ledger::parse_user_ref;

/// Sends `body` as USER with extra headers and returns status and error JSON.
async fn send(app: &TestApp, headers: &[(&str, &[u8])], body: &[u8]) -> (u16, Value) {
    let mut req = app.post("/v1/chat/completions");
    for (name, value) in headers {
        req = req.header(
            *name,
            reqwest::header::HeaderValue::from_bytes(value).unwrap(),
        );
    }
    let res = req.body(body.to_vec()).send().await.unwrap();
    let status = res.status().as_u16();
    let text = res.text().await.unwrap();
    let json = serde_json::from_str(&text).unwrap_or(Value::String(text));
    (status, json)
}

fn assert_clear(status: u16, err: &Value, want: u16, code: &str, case: &str) {
    assert_eq!(status, want, "{case}: {err}");
    assert_eq!(err["error"]["code"], code, "{case}: {err}");
    let message = err["error"]["message"].as_str().unwrap_or("");
    assert!(message.len() > 10, "{case}: no readable message: {err}");
    assert!(err["error"]["type"].is_string(), "{case}: {err}");
}

fn nothing_happened(app: &TestApp) {
    assert_eq!(app.fake.request_count(), 0, "forwarded");
    assert!(
        app.ledger().list_users().unwrap().is_empty(),
        "a user was written"
    );
}

fn nested(depth: usize) -> String {
    format!(
        r#"{{"model":"m","messages":[{{"role":"user","content":"x"}}],"extra":{}1{}}}"#,
        "[".repeat(depth),
        "]".repeat(depth)
    )
}

#[actix_web::test]
async fn malformed_bodies_are_refused_field_by_field() {
    let app = spawn_app(TestOptions::default()).await;
    let user: &[(&str, &[u8])] = &[("x-librechat-user-id", b"hostile-1")];
    let msg = json!([{"role": "user", "content": "x"}]);
    let cases: Vec<(&str, String, &str)> = vec![
        ("deeply nested", nested(10_000), "invalid_body"),
        ("nested past serde's limit", nested(200), "invalid_body"),
        ("messages a string", json!({"model": "m", "messages": "oi"}).to_string(), "invalid_body"),
        ("messages empty", json!({"model": "m", "messages": []}).to_string(), "invalid_body"),
        ("model missing", json!({"messages": msg}).to_string(), "invalid_body"),
        ("model a number", json!({"model": 4, "messages": msg}).to_string(), "invalid_body"),
        ("model with a bell", json!({"model": "gpt\u{7}", "messages": msg}).to_string(), "invalid_body"),
        // LiteLLM would send it to each model named, and tokengate could not read the answer.
        ("several models", json!({"model": "gpt-4o,gpt-4o,gpt-4o", "messages": msg}).to_string(), "invalid_body"),
        ("model too long", json!({"model": "m".repeat(300), "messages": msg}).to_string(), "invalid_body"),
        ("stream a string", json!({"model": "m", "messages": msg, "stream": "yes"}).to_string(), "invalid_body"),
        ("max_tokens a string", json!({"model": "m", "messages": msg, "max_tokens": "10"}).to_string(), "invalid_body"),
        ("max_tokens a fraction", json!({"model": "m", "messages": msg, "max_tokens": 1.5}).to_string(), "invalid_body"),
        ("max_tokens zero", json!({"model": "m", "messages": msg, "max_tokens": 0}).to_string(), "invalid_body"),
        ("max_tokens negative", json!({"model": "m", "messages": msg, "max_tokens": -100}).to_string(), "invalid_body"),
        ("max_tokens past i64", r#"{"model":"m","messages":[{"role":"user","content":"x"}],"max_tokens":18446744073709551615}"#.into(), "invalid_body"),
        ("max_tokens 1e30", r#"{"model":"m","messages":[{"role":"user","content":"x"}],"max_tokens":1e30}"#.into(), "invalid_body"),
        ("max_completion_tokens negative", json!({"model": "m", "messages": msg, "max_completion_tokens": -1}).to_string(), "invalid_body"),
        ("user a number", json!({"model": "m", "messages": msg, "user": 7}).to_string(), "invalid_body"),
        ("an array", "[1,2,3]".into(), "invalid_body"),
        ("truncated", r#"{"model":"m","messages":[{"role""#.into(), "invalid_body"),
        ("a byte-order mark first", "\u{feff}{}".into(), "invalid_body"),
    ];
    for (case, body, code) in cases {
        let (status, err) = send(&app, user, body.as_bytes()).await;
        assert_clear(status, &err, 400, code, case);
    }
    for (case, body) in [
        (
            "invalid UTF-8",
            b"{\"model\":\"m\xff\",\"messages\":[]}".to_vec(),
        ),
        ("NUL bytes", b"\0\0\0\0".to_vec()),
        ("empty", Vec::new()),
    ] {
        let (status, err) = send(&app, user, &body).await;
        assert_clear(status, &err, 400, "invalid_body", case);
    }
    nothing_happened(&app);
}

#[actix_web::test]
async fn hostile_identities_are_refused_before_anything_is_written() {
    let app = spawn_app(TestOptions::default()).await;
    let body = chat_body("fake-model", "olá", false, Some(3)).to_string();
    let b64 = |s: &str| {
        format!(
            "b64:{}",
            base64::engine::general_purpose::STANDARD.encode(s)
        )
    };
    let huge = "a".repeat(10_000);
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("blank", b"   ".to_vec()),
        ("too long", huge.into_bytes()),
        ("a tab inside", b"ab\tcd".to_vec()),
        ("Latin-1 bytes", b"usu\xe1rio".to_vec()),
        ("invalid UTF-8 sequence", b"\xff\xfe\xfd".to_vec()),
        (
            "CRLF through base64",
            b64("evil\r\nX-Admin: 1").into_bytes(),
        ),
        ("NUL through base64", b64("evil\0id").into_bytes()),
        ("spaces, SQL-style", b"1' OR '1'='1".to_vec()),
        ("undecodable base64", b"b64:!!!".to_vec()),
    ];
    for (case, id) in cases {
        let (status, err) = send(&app, &[("x-librechat-user-id", &id)], body.as_bytes()).await;
        // docs/behaviour.md has one code for identity errors; the message says which.
        assert_clear(status, &err, 400, "missing_user", case);
        if !matches!(case, "blank" | "undecodable base64") {
            let message = err["error"]["message"].as_str().unwrap();
            assert!(
                message.contains("1 a 128 caracteres ASCII"),
                "{case}: {message}"
            );
        }
    }
    // The body's `user` is checked the same way.
    let mut with_user = chat_body("fake-model", "olá", false, Some(3));
    with_user["user"] = json!("evil\u{0}id");
    let (status, err) = send(&app, &[], with_user.to_string().as_bytes()).await;
    assert_clear(status, &err, 400, "missing_user", "NUL in body user");
    nothing_happened(&app);
}

/// Raw bytes on the socket, for what an HTTP client library refuses to send.
async fn raw_request(app: &TestApp, head: Vec<u8>) -> String {
    let addr = app.address.trim_start_matches("http://").to_owned();
    actix_web::rt::task::spawn_blocking(move || {
        let mut s = std::net::TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(std::time::Duration::from_secs(10)))
            .unwrap();
        s.write_all(&head).unwrap();
        let mut out = Vec::new();
        let _ = s.read_to_end(&mut out);
        String::from_utf8_lossy(&out).into_owned()
    })
    .await
    .unwrap()
}

fn raw_chat(extra_header: &[u8]) -> Vec<u8> {
    let body = chat_body("fake-model", "olá", false, Some(3)).to_string();
    let mut req = format!(
        "POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {CLIENT_KEY}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n",
        body.len()
    )
    .into_bytes();
    req.extend_from_slice(extra_header);
    req.extend_from_slice(b"\r\n\r\n");
    req.extend_from_slice(body.as_bytes());
    req
}

#[actix_web::test]
async fn huge_and_broken_headers_are_refused_at_the_door() {
    let app = spawn_app(TestOptions::default()).await;
    let status_of = |res: &str| res.split(' ').nth(1).unwrap_or("").to_owned();

    // A request head past actix-web's 128 KiB: refused before the body is read.
    let mut big = b"X-LibreChat-User-Name: ".to_vec();
    big.extend(std::iter::repeat_n(b'a', 200_000));
    let res = raw_request(&app, raw_chat(&big)).await;
    assert_eq!(status_of(&res), "431", "{}", &res[..res.len().min(200)]);

    // Many headers: more than the server parses.
    let many: Vec<u8> = (0..200)
        .flat_map(|i| format!("X-Pad-{i}: 1\r\n").into_bytes())
        .chain(b"X-LibreChat-User-Id: many-headers".to_vec())
        .collect();
    let res = raw_request(&app, raw_chat(&many)).await;
    assert!(
        ["431", "400"].contains(&status_of(&res).as_str()),
        "{}",
        &res[..res.len().min(200)]
    );

    // A NUL byte or a bare CR inside a header value: a malformed request.
    for broken in [
        &b"X-LibreChat-User-Id: ab\0cd"[..],
        b"X-LibreChat-User-Id: ab\rX-Evil: 1",
    ] {
        let res = raw_request(&app, raw_chat(broken)).await;
        assert_eq!(status_of(&res), "400", "{res}");
    }
    // A client key of 8 KB is just a wrong key.
    let long_key = format!("Authorization: Bearer {}", "k".repeat(8_000));
    let req = raw_chat(b"X-LibreChat-User-Id: long-key");
    let req = String::from_utf8(req)
        .unwrap()
        .replace(&format!("Authorization: Bearer {CLIENT_KEY}"), &long_key);
    let res = raw_request(&app, req.into_bytes()).await;
    assert_eq!(status_of(&res), "401", "{}", &res[..res.len().min(200)]);
    assert!(res.contains("invalid_api_key"));
    nothing_happened(&app);

    // Within that limit, a 100 KB name is cut to 200 characters, never stored whole.
    let mut long = b"X-LibreChat-User-Id: long-name\r\nX-LibreChat-User-Name: ".to_vec();
    long.extend(std::iter::repeat_n(b'n', 100_000));
    let res = raw_request(&app, raw_chat(&long)).await;
    assert_eq!(status_of(&res), "200", "{}", &res[..res.len().min(200)]);
    assert_eq!(app.summary("long-name").name.map(|n| n.len()), Some(200));
}

#[actix_web::test]
async fn odd_but_harmless_input_is_served_and_stored_verbatim() {
    let app = spawn_app(TestOptions::default()).await;
    // SQL-looking id and name: bound parameters, stored as typed, nothing dropped.
    let sql_id = "x';DROP_TABLE_users;--";
    let sql_name = "Robert'); DROP TABLE users;--";
    let (status, _) = send(
        &app,
        &[
            ("x-librechat-user-id", sql_id.as_bytes()),
            ("x-librechat-user-name", sql_name.as_bytes()),
        ],
        chat_body("fake-model", "olá", false, Some(3))
            .to_string()
            .as_bytes(),
    )
    .await;
    assert_eq!(status, 200);
    let s = app.summary(sql_id);
    assert_eq!(s.external_id.as_deref(), Some(sql_id));
    assert_eq!(s.name.as_deref(), Some(sql_name));
    // NUL and control characters inside the conversation are the user's text: they
    // pass through to the provider untouched.
    let content = "linha 1\u{0}\u{1b}[31m linha 2";
    let (status, _) = send(
        &app,
        &[("x-librechat-user-id", b"nul-content")],
        chat_body("fake-model", content, false, Some(3))
            .to_string()
            .as_bytes(),
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(app.fake.last_request()["messages"][0]["content"], content);
    // An email with CRLF is no email; the user is still served, without one.
    let b64 = format!(
        "b64:{}",
        base64::engine::general_purpose::STANDARD.encode("a@b.com\r\nBcc: evil@x.com")
    );
    let (status, _) = send(
        &app,
        &[
            ("x-librechat-user-id", b"crlf-email"),
            ("x-librechat-user-email", b64.as_bytes()),
        ],
        chat_body("fake-model", "olá", false, Some(3))
            .to_string()
            .as_bytes(),
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(app.summary("crlf-email").email, None);
    assert_eq!(app.ledger().list_users().unwrap().len(), 3);
    for user in [sql_id, "nul-content", "crlf-email"] {
        app.assert_invariant(user);
    }
}

#[actix_web::test]
async fn a_huge_max_tokens_reserves_only_what_the_balance_pays_for() {
    let app = spawn_app(TestOptions::default()).await;
    app.default_plan(1_000);
    for max in [i64::MAX, 1_000_000_000_000] {
        let (status, _) = send(
            &app,
            &[("x-librechat-user-id", b"big-spender")],
            chat_body("fake-model", "olá", false, Some(max))
                .to_string()
                .as_bytes(),
        )
        .await;
        assert_eq!(status, 200);
        let sent = app.fake.last_request();
        let limit = sent["max_tokens"].as_i64().unwrap();
        let left = app.summary("big-spender").remaining;
        assert!(
            (1..=1_000).contains(&limit),
            "upstream was allowed {limit} tokens"
        );
        assert!(left >= 0, "overspent: {left}");
    }
    app.assert_invariant("big-spender");
}

/// A chat request in `Transfer-Encoding: chunked`, its body cut into `pieces` chunks
/// at fixed byte offsets, whatever characters they cut through.
fn chunked_chat(user: &str, body: &str, pieces: usize) -> Vec<u8> {
    let mut req = format!(
        "POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {CLIENT_KEY}\r\nContent-Type: application/json\r\nx-librechat-user-id: {user}\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
    )
    .into_bytes();
    for piece in body.as_bytes().chunks(body.len().div_ceil(pieces)) {
        req.extend_from_slice(format!("{:x}\r\n", piece.len()).as_bytes());
        req.extend_from_slice(piece);
        req.extend_from_slice(b"\r\n");
    }
    req.extend_from_slice(b"0\r\n\r\n");
    req
}

#[actix_web::test]
async fn a_body_sent_in_pieces_is_read_whole_and_held_to_the_limit() {
    let app = spawn_app(TestOptions {
        env: vec![("TOKENGATE_MAX_BODY_BYTES", "4096".into())],
        ..Default::default()
    })
    .await;
    let content = "olá, ação e coração: ".repeat(20);
    let body = chat_body("fake-model", &content, false, Some(3)).to_string();
    let answer = raw_request(&app, chunked_chat("in-pieces", &body, 7)).await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert_eq!(app.fake.last_request()["messages"][0]["content"], content);
    app.assert_invariant("in-pieces");
    // Without a Content-Length nothing can be refused up front: the limit holds as the
    // pieces add up, and nothing reaches the provider or the ledger.
    let body = chat_body("fake-model", &"x".repeat(5000), false, Some(3)).to_string();
    let answer = raw_request(&app, chunked_chat("too-big", &body, 4)).await;
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
    assert!(answer.contains("body_too_large"), "{answer}");
    assert_eq!(app.fake.request_count(), 1);
    assert!(
        app.ledger()
            .find_user(&parse_user_ref("too-big"))
            .unwrap()
            .is_none()
    );
}

/// A name that turns itself around on screen ("Ana" then a right-to-left override)
/// loses its direction controls before it is stored, so the dashboard and the mails
/// show what was really sent.
#[actix_web::test]
async fn names_lose_their_direction_controls() {
    let app = spawn_app(TestOptions::default()).await;
    let spoof = format!(
        "b64:{}",
        base64::engine::general_purpose::STANDARD.encode("Ana \u{202E}nimdA\u{2066}x\u{2069}")
    );
    let res = app
        .post("/v1/chat/completions")
        .header("x-librechat-user-id", "bidi-1")
        .header("x-librechat-user-name", spoof)
        .body(chat_body("fake-model", "oi", false, Some(5)).to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(app.summary("bidi-1").name.as_deref(), Some("Ana nimdAx"));
}
