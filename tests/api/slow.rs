//! Slow clients: a request body that trickles in is cut off by a deadline (408, the
//! connection closed), and one client cannot hold more than a few requests open on
//! the pages that face the internet, whoever else is waiting. Before, a body that
//! sent a byte every two seconds held its connection for as long as it liked: 150
//! such connections on `/me/sign-in` and 180 on `/v1` stayed open for a whole 45 s
//! test.

use crate::helpers::*;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// A request whose headers arrive at once and whose body then trickles, a byte
/// every 250 ms, for as long as the server reads it.
async fn trickle(address: &str, path: &str, headers: &[(&str, &str)]) -> TcpStream {
    let host = address.trim_start_matches("http://");
    let mut conn = TcpStream::connect(host).await.unwrap();
    let mut head = format!("POST {path} HTTP/1.1\r\nHost: {host}\r\nContent-Length: 400\r\n");
    for (k, v) in headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str("\r\n");
    conn.write_all(head.as_bytes()).await.unwrap();
    conn.write_all(b"e").await.unwrap();
    conn
}

/// Keeps trickling into `conn` until the server answers; returns the answer's
/// status line and how long it took from the first byte.
async fn answer(mut conn: TcpStream) -> (String, Duration) {
    let started = Instant::now();
    let mut response = Vec::new();
    let mut buf = [0u8; 4096];
    while started.elapsed() < Duration::from_secs(20) {
        // The client's next byte, then whatever the server has said meanwhile.
        let _ = conn.write_all(b"m").await;
        match tokio::time::timeout(Duration::from_millis(250), conn.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => break,
            Ok(Ok(n)) => {
                response.extend_from_slice(&buf[..n]);
                if response.windows(4).any(|w| w == b"\r\n\r\n") {
                    break;
                }
            }
            Err(_) => {}
        }
    }
    let text = String::from_utf8_lossy(&response);
    (
        text.lines().next().unwrap_or("").to_owned(),
        started.elapsed(),
    )
}

#[actix_web::test]
async fn a_body_that_does_not_arrive_is_cut_off_everywhere() {
    let app = spawn_app(TestOptions {
        env: vec![("TOKENGATE_BODY_TIMEOUT_SECS", "2".into())],
        ..TestOptions::default()
    })
    .await;
    let auth = format!("Bearer {CLIENT_KEY}");
    let cases: [(&str, Vec<(&str, &str)>); 3] = [
        (
            "/me/sign-in",
            vec![("Content-Type", "application/x-www-form-urlencoded")],
        ),
        (
            "/v1/chat/completions",
            vec![
                ("Content-Type", "application/json"),
                ("Authorization", &auth),
                ("X-LibreChat-User-Id", USER),
            ],
        ),
        (
            "/admin/login",
            vec![("Content-Type", "application/x-www-form-urlencoded")],
        ),
    ];
    for (path, headers) in &cases {
        let conn = trickle(&app.address, path, headers).await;
        let (status, took) = answer(conn).await;
        assert_eq!(status, "HTTP/1.1 408 Request Timeout", "{path}");
        assert!(
            took < Duration::from_secs(6),
            "{path}: answered after {took:?}"
        );
    }
    // What the user of LibreChat reads, in their language.
    let conn = trickle(&app.address, "/v1/chat/completions", &cases[1].1).await;
    let mut conn = conn;
    let mut all = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), conn.read_to_end(&mut all)).await;
    let text = String::from_utf8_lossy(&all);
    assert!(text.contains("\"code\":\"body_timeout\""), "{text}");
    assert!(
        text.contains("A mensagem não chegou inteira a tempo"),
        "{text}"
    );
    assert!(
        text.to_ascii_lowercase().contains("connection: close"),
        "{text}"
    );
    assert_eq!(app.fake.request_count(), 0, "nothing went upstream");
}

#[actix_web::test]
async fn one_client_cannot_hold_the_public_pages_open() {
    let app = spawn_app(TestOptions {
        env: vec![
            ("TOKENGATE_CLIENT_REQUESTS", "8".into()),
            ("TOKENGATE_TRUSTED_PROXIES", "127.0.0.1".into()),
            ("TOKENGATE_BODY_TIMEOUT_SECS", "60".into()),
        ],
        ..TestOptions::default()
    })
    .await;
    let attacker = [
        ("Content-Type", "application/x-www-form-urlencoded"),
        ("X-Forwarded-For", "198.51.100.7"),
    ];
    let mut held = Vec::new();
    for _ in 0..8 {
        held.push(trickle(&app.address, "/me/sign-in", &attacker).await);
    }
    let slots = &app.state.client_slots;
    wait_until(Duration::from_secs(10), || {
        let open = slots.open("198.51.100.7");
        async move { open == 8 }
    })
    .await;
    // Past its share, the same client is refused at once, however it spells the
    // path (the router decodes `%6D` to `m`).
    for path in ["/me/sign-in", "/%6De/sign-in", "/%61dmin/login"].repeat(4) {
        let conn = trickle(&app.address, path, &attacker).await;
        let (status, took) = answer(conn).await;
        assert_eq!(status, "HTTP/1.1 429 Too Many Requests", "{path}");
        assert!(took < Duration::from_secs(2), "{path}: {took:?}");
    }
    // Everyone else is served meanwhile: a person signing in, and LibreChat's
    // requests, which are never counted per client.
    let res = app
        .client
        .post(format!("{}/me/sign-in", app.address))
        .header("X-Forwarded-For", "198.51.100.8")
        .form(&[("email", "ana@example.com")])
        .send()
        .await
        .unwrap();
    assert_ne!(res.status(), 429);
    for _ in 0..10 {
        let res = app
            .post("/v1/chat/completions")
            .header("x-librechat-user-id", USER)
            .header("X-Forwarded-For", "198.51.100.7")
            .body(chat_body("fake-model", "oi", false, Some(5)).to_string())
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 200);
    }
    // A slot comes back when its request ends.
    drop(held);
    wait_until(Duration::from_secs(10), || {
        let open = slots.open("198.51.100.7");
        async move { open == 0 }
    })
    .await;
}

/// A request whose chunked body starts and never ends: the server answers (401
/// without a key, 404, or 408 when the body is late) and closes the connection.
/// actix-web used to go on reading such a body after answering, to its end, which
/// never came: one client could hold connections, and file descriptors, without
/// limit (993 of 1,024 in an outside test, after which LibreChat's own requests
/// failed).
#[actix_web::test]
async fn a_connection_whose_body_was_not_read_whole_is_closed() {
    let app = spawn_app(TestOptions {
        env: vec![("TOKENGATE_BODY_TIMEOUT_SECS", "2".into())],
        ..TestOptions::default()
    })
    .await;
    let json = "Content-Type: application/json\r\n";
    let form = "Content-Type: application/x-www-form-urlencoded\r\n";
    let key =
        format!("{json}Authorization: Bearer {CLIENT_KEY}\r\nX-LibreChat-User-Id: {USER}\r\n");
    let cases = [
        ("/v1/chat/completions", json.to_owned(), "401"),
        ("/nowhere", json.to_owned(), "404"),
        ("/me/sign-in", form.to_owned(), "408"),
        ("/v1/chat/completions", key, "408"),
    ];
    let host = app.address.trim_start_matches("http://");
    for (path, headers, status) in &cases {
        let mut conn = TcpStream::connect(host).await.unwrap();
        let head = format!(
            "POST {path} HTTP/1.1\r\nHost: {host}\r\n{headers}Transfer-Encoding: chunked\r\n\r\n1\r\n{{\r\n"
        );
        conn.write_all(head.as_bytes()).await.unwrap();
        let mut all = Vec::new();
        let read = tokio::time::timeout(Duration::from_secs(10), conn.read_to_end(&mut all)).await;
        let text = String::from_utf8_lossy(&all);
        assert!(
            read.is_ok(),
            "{path}: the connection stayed open after {text:?}"
        );
        assert!(
            text.starts_with(&format!("HTTP/1.1 {status}")),
            "{path}: {text}"
        );
    }
    assert_eq!(app.fake.request_count(), 0, "nothing went upstream");
}
