//! The lines tokengate adds to the end of a streamed text answer
//! (docs/behaviour.md, "In the chat"):
//! - the notice: the answer that takes a user past the highest alert threshold
//!   below 100% (or, when that one cannot carry it, the user's next streamed text
//!   answer) ends with one line saying how much is used and left, and where to see
//!   the balance;
//! - why it stopped: an answer whose limit the balance lowered, and that ran to
//!   that limit, ends with one line saying so and where to get more.
//!
//! Each is one more chunk of the answer's stream, so LibreChat shows it under the
//! answer; the usage upstream reported, and what is charged, are unchanged. LibreChat
//! keeps these lines in the conversation and sends them back as history: `strip`
//! takes exactly them out of what comes in, so they are never billed.

use super::meter::EndLine;
use crate::config::Locale;
use crate::i18n;
use crate::ledger::NoticeBase;
use bytes::Bytes;
use serde_json::json;

/// The notice's text for the answer that cost `charge`.
pub fn text(base: NoticeBase, charge: i64, locale: Locale, page: &str) -> String {
    let used = base.used.saturating_add(charge.max(0));
    let percent = if base.total > 0 {
        (used.saturating_mul(100) / base.total).clamp(0, 100)
    } else {
        100
    };
    let left = i18n::tokens(base.total.saturating_sub(used).max(0), locale);
    match locale {
        Locale::PtBr => format!(
            "{SEPARATOR}Atenção: você já usou {percent}% dos seus tokens deste mês; restam {left}. Veja seu saldo: {page}"
        ),
        Locale::En => format!(
            "{SEPARATOR}Note: you have used {percent}% of this month's tokens; {left} left. See your balance: {page}"
        ),
    }
}

/// The text for an answer the balance stopped short.
pub fn stopped_text(locale: Locale, page: &str) -> String {
    match locale {
        Locale::PtBr => format!(
            "{SEPARATOR}Resposta interrompida: seu saldo de tokens não cobria mais do que isso. Veja seu saldo e como conseguir mais: {page}"
        ),
        Locale::En => format!(
            "{SEPARATOR}Answer cut short: your token balance did not cover more than this. See your balance and how to get more: {page}"
        ),
    }
}

/// What sets a line of tokengate's apart from the answer before it.
const SEPARATOR: &str = "\n\n";

/// The end line of one streamed text answer of `model`.
pub fn end_line(
    model: String,
    locale: Locale,
    page: String,
    claimed: Option<NoticeBase>,
    may_cross: bool,
    lowered_to: Option<i64>,
    still_due: impl FnOnce() + 'static,
) -> EndLine {
    let stopped = stopped_text(locale, &page);
    EndLine {
        chunk: Box::new(move |text: &str| {
            let chunk = json!({
                "id": "chatcmpl-tokengate-notice",
                "object": "chat.completion.chunk",
                "created": chrono::Utc::now().timestamp(),
                "model": model,
                "choices": [{
                    "index": 0,
                    "delta": {"content": text},
                    "finish_reason": null,
                }],
            });
            Bytes::from(format!("data: {chunk}\n\n"))
        }),
        notice: Box::new(move |base, charge| text(base, charge, locale, &page)),
        stopped,
        claimed,
        lowered_to,
        may_cross,
        still_due: Some(Box::new(still_due)),
        pending: claimed.is_some(),
    }
}

/// The conversation `messages` (JSON text) without the lines tokengate added to
/// earlier answers, or `None` when it carries none. Only the end of an assistant's
/// message is looked at, and only a line exactly as tokengate writes it, ending
/// with this instance's page: a user's words that merely resemble one, anywhere,
/// stay as they are. Messages without such a line keep their bytes.
pub fn strip(messages: &str, page: &str) -> Option<String> {
    // Most conversations carry no such line: a scan for the page's address decides.
    memchr::memmem::find(messages.as_bytes(), page.as_bytes())?;
    let list: Vec<&serde_json::value::RawValue> = serde_json::from_str(messages).ok()?;
    let mut stripped = false;
    let mut out = String::with_capacity(messages.len());
    out.push('[');
    for (i, raw) in list.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        match without_lines_in(raw.get(), page) {
            Some(message) => {
                out.push_str(&message);
                stripped = true;
            }
            None => out.push_str(raw.get()),
        }
    }
    out.push(']');
    stripped.then_some(out)
}

/// One message (JSON text) without tokengate's line at its end, if it is an
/// assistant's and has one.
fn without_lines_in(message: &str, page: &str) -> Option<String> {
    memchr::memmem::find(message.as_bytes(), page.as_bytes())?;
    let mut message: serde_json::Value = serde_json::from_str(message).ok()?;
    if message.get("role").and_then(serde_json::Value::as_str) != Some("assistant") {
        return None;
    }
    let content = message.get_mut("content")?;
    // The answer's text: a string, or its last text part.
    let text = match content {
        serde_json::Value::String(_) => Some(content),
        serde_json::Value::Array(parts) => parts.iter_mut().rev().find_map(|part| {
            let kind = part.get("type").and_then(serde_json::Value::as_str);
            matches!(kind, Some("text" | "output_text"))
                .then(|| part.get_mut("text"))
                .flatten()
        }),
        _ => None,
    };
    let Some(serde_json::Value::String(text)) = text else {
        return None;
    };
    let kept = without_line(text, page)?;
    text.truncate(kept);
    Some(message.to_string())
}

/// Where tokengate's line at the end of `text` starts, if it ends with one (a
/// client may have added a line break after it, or written its breaks as CRLF).
fn without_line(text: &str, page: &str) -> Option<usize> {
    let body = text.trim_end().strip_suffix(page)?;
    let (start, separator) = [SEPARATOR, "\r\n\r\n"]
        .iter()
        .filter_map(|sep| body.rfind(sep).map(|at| (at, sep.len())))
        .max_by_key(|(at, _)| *at)?;
    let line = &body[start + separator..];
    let written = [
        (
            "Atenção: você já usou ",
            "% dos seus tokens deste mês; restam ",
            ". Veja seu saldo: ",
        ),
        (
            "Note: you have used ",
            "% of this month's tokens; ",
            " left. See your balance: ",
        ),
    ]
    .iter()
    .any(|(first, second, last)| {
        // A percent, then a figure written with thousands separators.
        let Some(rest) = line.strip_prefix(first) else {
            return false;
        };
        let rest = rest.trim_start_matches(|c: char| c.is_ascii_digit());
        let Some(rest) = rest.strip_prefix(second) else {
            return false;
        };
        rest.strip_suffix(last).is_some_and(|figure| {
            !figure.is_empty()
                && figure
                    .chars()
                    .all(|c| c.is_ascii_digit() || c == '.' || c == ',')
        })
    });
    let stopped = [Locale::PtBr, Locale::En]
        .iter()
        .any(|l| stopped_text(*l, "").strip_prefix(SEPARATOR) == Some(line));
    (written || stopped).then_some(start)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn says_what_is_used_and_left_in_the_locale() {
        let base = NoticeBase {
            used: 790_000,
            total: 1_000_000,
        };
        assert_eq!(
            text(base, 40_000, Locale::PtBr, "https://t.example/me"),
            "\n\nAtenção: você já usou 83% dos seus tokens deste mês; restam 170.000. Veja seu saldo: https://t.example/me"
        );
        assert_eq!(
            text(base, 40_000, Locale::En, "https://t.example/me"),
            "\n\nNote: you have used 83% of this month's tokens; 170,000 left. See your balance: https://t.example/me"
        );
        let empty = NoticeBase { used: 0, total: 0 };
        assert!(text(empty, 5, Locale::PtBr, "x").contains("100%"));
    }

    /// What LibreChat sends back as history: the answers as they were shown, with
    /// tokengate's line at their end. Exactly those lines go; a user's own words
    /// that resemble them (quoted, moved, or with another address) stay.
    #[test]
    fn strips_exactly_the_lines_tokengate_added() {
        let page = "https://t.example/me";
        let base = NoticeBase {
            used: 790_000,
            total: 1_000_000,
        };
        let notice_pt = text(base, 40_000, Locale::PtBr, page);
        let notice_en = text(base, 40_000, Locale::En, page);
        let stopped = stopped_text(Locale::PtBr, page);
        let messages = serde_json::json!([
            {"role": "user", "content": format!("Olá{notice_pt}")},
            {"role": "assistant", "content": format!("Resposta um.{notice_pt}")},
            {"role": "assistant", "content": [{"type": "text", "text": format!("Two.{notice_en}")}]},
            {"role": "assistant", "content": format!("Três{stopped}")},
            {"role": "assistant", "content": format!("Citando:{notice_pt} e mais")},
            {"role": "assistant", "content": format!("Outro endereço{}", text(base, 1, Locale::PtBr, "https://other.example/me"))},
            {"role": "assistant", "content": format!("Quase{}", notice_pt.replace("restam 170.000", "restam muitos"))},
            {"role": "assistant", "content": null},
        ]);
        let out = strip(&messages.to_string(), page).unwrap();
        let out: serde_json::Value = serde_json::from_str(&out).unwrap();
        assert_eq!(out[0], messages[0], "a user's message is never touched");
        assert_eq!(out[1]["content"], "Resposta um.");
        assert_eq!(out[2]["content"][0]["text"], "Two.");
        assert_eq!(out[3]["content"], "Três");
        for i in 4..8 {
            assert_eq!(out[i], messages[i], "message {i}");
        }
        let untouched = serde_json::json!([{"role": "assistant", "content": "Nada aqui"}]);
        assert_eq!(strip(&untouched.to_string(), page), None);
        // The other messages keep their bytes (key order, big numbers); a line with a
        // break after it, or CRLF breaks, is still tokengate's.
        let raw = format!(
            r#"[{{"z":1,"role":"user","n":123456789012345678901234567890,"content":"oi"}},{{"role":"assistant","content":{}}},{{"role":"assistant","content":{}}}]"#,
            serde_json::Value::String(format!("A{notice_pt}\n")),
            serde_json::Value::String(format!("B{}", notice_pt.replace("\n\n", "\r\n\r\n"))),
        );
        let out = strip(&raw, page).unwrap();
        assert!(
            out.starts_with(
                r#"[{"z":1,"role":"user","n":123456789012345678901234567890,"content":"oi"}"#
            ),
            "{out}"
        );
        let out: serde_json::Value = serde_json::from_str(&out).unwrap();
        assert_eq!(out[1]["content"], "A");
        assert_eq!(out[2]["content"], "B");
    }
}
