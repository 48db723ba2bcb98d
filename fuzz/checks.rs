//! The properties the fuzz targets check, shared with `tests/fuzz_regressions.rs`,
//! which replays the seeds and every case the fuzzer found. Each takes arbitrary
//! bytes and panics when tokengate's parsing breaks a promise.

use serde_json::{Map, Value};
use tokengate::domain::identity::decode_header_value;
use tokengate::domain::{DisplayName, Email, UserKey};
use tokengate::proxy::body::{self, Endpoint};
use tokengate::proxy::estimate;
use tokengate::proxy::sse::{SseScanner, scan_json_response};

/// The SSE scanner reads the same usage, text and event count however the stream is
/// cut into chunks. The first byte picks the cut points; the rest is the stream.
pub fn sse(data: &[u8]) {
    let Some((&seed, stream)) = data.split_first() else {
        return;
    };
    let mut whole = SseScanner::new();
    whole.feed(stream);
    whole.finish();

    let mut cut = SseScanner::new();
    let step = usize::from(seed % 13) + 1;
    let mut rest = stream;
    let mut i = 0;
    while !rest.is_empty() {
        // Chunks of varying length, one byte among them, so a cut lands inside
        // `data:`, inside a CRLF and inside multi-byte characters.
        let n = ((i * 7 + step) % (step * 3 + 1)).max(1).min(rest.len());
        cut.feed(&rest[..n]);
        rest = &rest[n..];
        i += 1;
    }
    cut.finish();
    assert_eq!(whole.usage(), cut.usage(), "usage depends on chunking");
    assert_eq!(whole.text(), cut.text(), "text depends on chunking");
    assert_eq!(whole.events(), cut.events(), "events depend on chunking");
    if let Some(u) = whole.usage() {
        assert!(u.prompt_tokens >= 0 && u.completion_tokens >= 0);
    }
    if let Some(u) = scan_json_response(stream).and_then(|a| a.usage) {
        assert!(u.prompt_tokens >= 0 && u.completion_tokens >= 0);
    }
}

/// A body the parser accepts is rewritten into a JSON object that keeps everything
/// the client sent except `user` (the LibreChat id), `stream_options` (usage forced
/// on streams) and the completion limit, which never exceeds what was reserved. The
/// first byte picks the endpoint and the reserved limit; the rest is the body.
pub fn body(data: &[u8]) {
    let Some((&seed, bytes)) = data.split_first() else {
        return;
    };
    let endpoint = match seed % 3 {
        0 => Endpoint::ChatCompletions,
        1 => Endpoint::Completions,
        _ => Endpoint::Embeddings,
    };
    let Ok(parsed) = body::parse(bytes, endpoint) else {
        return;
    };
    assert!(!parsed.model.trim().is_empty() && !parsed.model.chars().any(char::is_control));
    assert!(parsed.requested_max.is_none_or(|n| n >= 1));
    assert!(parsed.prompt_tokens >= 0);
    // The reference: what a JSON parser keeping one value per key reads. The body was
    // accepted, so it reads it too, except a field nested exactly one level deeper
    // than serde_json allows (each field is checked on its own).
    let original: Map<String, Value> = match serde_json::from_slice(bytes) {
        Ok(Value::Object(m)) => m,
        Err(e) if e.to_string().contains("recursion limit") => return,
        other => panic!("accepted a body a JSON parser refuses: {other:?}"),
    };
    let allowed = i64::from(seed / 3) + 1;
    let completes = endpoint != Endpoint::Embeddings;
    let prepared = parsed
        .prepare("user-1")
        .expect("an accepted body is written out");
    let out = prepared.finish(completes.then_some(allowed));
    let out: Map<String, Value> = match serde_json::from_slice(&out) {
        Ok(Value::Object(m)) => m,
        other => panic!("the upstream body is not a JSON object: {other:?}"),
    };
    assert_eq!(out.get("user"), Some(&Value::from("user-1")));
    if parsed.stream {
        assert_eq!(out["stream_options"]["include_usage"], Value::Bool(true));
    }
    let limit_fields = ["max_tokens", "max_completion_tokens"];
    if completes {
        let limits: Vec<i64> = limit_fields
            .iter()
            .filter_map(|k| out.get(*k).and_then(Value::as_i64))
            .collect();
        assert!(!limits.is_empty(), "no explicit limit upstream: {out:?}");
        assert!(
            limits.iter().all(|&n| (1..=allowed).contains(&n)),
            "{out:?}"
        );
        if let Some(n) = parsed.requested_max {
            assert!(limits.contains(&n.min(allowed)), "{out:?}");
        }
    }
    for (key, value) in &original {
        let rewritten = key == "user"
            || (parsed.stream && key == "stream_options")
            || (completes && limit_fields.contains(&key.as_str()));
        if !rewritten {
            assert_eq!(out.get(key), Some(value), "{key} changed");
        }
    }
    for key in out.keys() {
        let added =
            key == "user" || key == "stream_options" || limit_fields.contains(&key.as_str());
        assert!(added || original.contains_key(key), "{key} appeared");
    }
}

/// Header values decode to text whose parsed parts can never carry a line break or
/// a control character into a log line, a SQL row or a mail header, and the prompt
/// estimate of any text is a sane count.
pub fn headers(data: &[u8]) {
    let Some(text) = decode_header_value(data) else {
        return;
    };
    if let Ok(key) = UserKey::parse(&text) {
        let k = key.as_str();
        assert!(!k.is_empty() && k.len() <= UserKey::MAX_LEN);
        assert!(k.bytes().all(|b| b.is_ascii_graphic()), "{k:?}");
    }
    if let Ok(email) = Email::parse(&text) {
        let e = email.as_str();
        assert!(e.len() <= 254 && e.matches('@').count() == 1, "{e:?}");
        assert!(
            !e.chars().any(|c| c.is_whitespace() || c.is_control()),
            "{e:?}"
        );
        assert!(!e.contains(['<', '>', ',', ';', '"', '\\']), "{e:?}");
    }
    if let Some(name) = DisplayName::parse(&text) {
        let n = name.as_str();
        assert!(!n.is_empty() && n.chars().count() <= DisplayName::MAX_CHARS);
        assert!(!n.chars().any(char::is_control), "{n:?}");
        assert!(!n.contains("  ") && n.trim() == n, "{n:?}");
    }
    let tokens = estimate::count_text(&text);
    assert!(
        tokens >= 0 && tokens <= text.len() as i64 + 1,
        "{tokens} for {text:?}"
    );
}
