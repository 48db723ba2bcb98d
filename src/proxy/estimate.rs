//! Prompt token estimates with a real tokenizer (o200k_base), never a network call.
//! They size the reservation; the charge uses the usage upstream reports.

use serde_json::Value;

/// Tokens per message for role and separators, as OpenAI counts them.
const PER_MESSAGE: i64 = 3;
/// Tokens that prime the assistant's reply.
const REPLY_PRIMING: i64 = 3;
/// An image part, at the high-detail tile cost (an over- rather than under-estimate).
const PER_IMAGE: i64 = 765;

/// Loads the tokenizer's tables so the first request does not pay for it.
pub fn warm_up() {
    let _ = count_text("warm up");
}

pub fn count_text(text: &str) -> i64 {
    if text.is_empty() {
        return 0;
    }
    let n = tiktoken_rs::o200k_base_singleton()
        .encode_ordinary(text)
        .len();
    i64::try_from(n).unwrap_or(i64::MAX)
}

/// Prompt tokens of a chat request: messages, plus tool and function definitions.
pub fn chat_prompt(body: &serde_json::Map<String, Value>) -> i64 {
    let mut total = REPLY_PRIMING;
    if let Some(Value::Array(messages)) = body.get("messages") {
        for message in messages {
            total += PER_MESSAGE;
            if let Value::Object(m) = message {
                for (key, value) in m {
                    total += match (key.as_str(), value) {
                        ("content", v) => content(v),
                        (_, Value::String(s)) => count_text(s),
                        (_, Value::Null) => 0,
                        (_, other) => count_text(&other.to_string()),
                    };
                }
            }
        }
    }
    for key in ["tools", "functions", "response_format"] {
        if let Some(v) = body.get(key) {
            total += count_text(&v.to_string());
        }
    }
    total
}

/// Prompt tokens of a completions `prompt` or an embeddings `input`: a string, an
/// array of strings, or arrays of token ids.
pub fn prompt_input(value: Option<&Value>) -> i64 {
    match value {
        Some(Value::String(s)) => count_text(s),
        Some(Value::Array(items)) => items
            .iter()
            .map(|item| match item {
                Value::String(s) => count_text(s),
                Value::Number(_) => 1,
                Value::Array(tokens) => i64::try_from(tokens.len()).unwrap_or(i64::MAX),
                other => count_text(&other.to_string()),
            })
            .sum(),
        Some(other) => count_text(&other.to_string()),
        None => 0,
    }
}

fn content(v: &Value) -> i64 {
    match v {
        Value::String(s) => count_text(s),
        Value::Array(parts) => parts
            .iter()
            .map(|part| match part.get("type").and_then(Value::as_str) {
                Some("text") => part
                    .get("text")
                    .and_then(Value::as_str)
                    .map_or(0, count_text),
                Some("image_url") | Some("input_image") | Some("image") => PER_IMAGE,
                _ => count_text(&part.to_string()),
            })
            .sum(),
        Value::Null => 0,
        other => count_text(&other.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn counts_messages_with_overhead() {
        let body = json!({"messages": [{"role": "user", "content": "Hello world"}]});
        let n = body.as_object().map(chat_prompt).unwrap_or(0);
        // "user" (1) + "Hello world" (2) + 3 per message + 3 priming.
        assert_eq!(n, 9);
    }

    #[test]
    fn counts_inputs_of_every_shape() {
        assert_eq!(prompt_input(Some(&json!("Hello world"))), 2);
        assert_eq!(prompt_input(Some(&json!(["Hello", "world"]))), 2);
        assert_eq!(prompt_input(Some(&json!([[1, 2, 3], [4]]))), 4);
        assert_eq!(prompt_input(None), 0);
    }
}
