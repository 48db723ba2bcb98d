//! Parsing and rewriting OpenAI request bodies. Everything the client sent is kept;
//! only `user`, `stream_options.include_usage` and the completion limit change.

use super::ApiError;
use super::estimate;
use serde_json::{Map, Value};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Endpoint {
    ChatCompletions,
    Completions,
    Embeddings,
}

impl Endpoint {
    pub fn path(&self) -> &'static str {
        match self {
            Self::ChatCompletions => "/chat/completions",
            Self::Completions => "/completions",
            Self::Embeddings => "/embeddings",
        }
    }

    pub fn name(&self) -> &'static str {
        match self {
            Self::ChatCompletions => "chat.completions",
            Self::Completions => "completions",
            Self::Embeddings => "embeddings",
        }
    }

    fn produces_completion(&self) -> bool {
        !matches!(self, Self::Embeddings)
    }
}

/// A validated request body.
#[derive(Debug)]
pub struct ParsedRequest {
    pub body: Map<String, Value>,
    pub model: String,
    pub stream: bool,
    /// `max_completion_tokens`, else `max_tokens`, if the client named one.
    pub requested_max: Option<i64>,
    pub body_user: Option<String>,
    pub prompt_tokens: i64,
}

pub fn parse(bytes: &[u8], endpoint: Endpoint) -> Result<ParsedRequest, ApiError> {
    let value: Value = serde_json::from_slice(bytes)
        .map_err(|e| ApiError::invalid_body(format!("The request body is not valid JSON: {e}.")))?;
    let Value::Object(body) = value else {
        return Err(ApiError::invalid_body(
            "The request body must be a JSON object.",
        ));
    };
    let model = match body.get("model") {
        Some(Value::String(m))
            if !m.trim().is_empty() && m.len() <= 256 && !m.chars().any(char::is_control) =>
        {
            m.clone()
        }
        _ => {
            return Err(field_error(
                "`model` must be a non-empty string of at most 256 characters.",
                "model",
            ));
        }
    };
    let stream = match body.get("stream") {
        None | Some(Value::Null) => false,
        Some(Value::Bool(b)) => *b,
        Some(_) => return Err(field_error("`stream` must be true or false.", "stream")),
    };
    if stream && !endpoint.produces_completion() {
        return Err(field_error("This endpoint does not stream.", "stream"));
    }
    let mut requested_max = None;
    for key in ["max_tokens", "max_completion_tokens"] {
        match body.get(key) {
            None | Some(Value::Null) => {}
            Some(v) => match v.as_i64() {
                Some(n) if n >= 1 => {
                    // `max_completion_tokens` wins when both are present.
                    if key == "max_completion_tokens" || requested_max.is_none() {
                        requested_max = Some(n);
                    }
                }
                _ => {
                    return Err(ApiError::InvalidBody {
                        message: format!("`{key}` must be a whole number of at least 1."),
                        param: Some(if key == "max_tokens" {
                            "max_tokens"
                        } else {
                            "max_completion_tokens"
                        }),
                    });
                }
            },
        }
    }
    let body_user = match body.get("user") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) => Some(s.clone()),
        Some(_) => return Err(field_error("`user` must be a string.", "user")),
    };
    let prompt_tokens = match endpoint {
        Endpoint::ChatCompletions => match body.get("messages") {
            Some(Value::Array(m)) if !m.is_empty() => estimate::chat_prompt(&body),
            _ => {
                return Err(field_error(
                    "`messages` must be a non-empty array.",
                    "messages",
                ));
            }
        },
        Endpoint::Completions => match body.get("prompt") {
            Some(p @ (Value::String(_) | Value::Array(_))) => estimate::prompt_input(Some(p)),
            _ => {
                return Err(field_error(
                    "`prompt` must be a string or an array.",
                    "prompt",
                ));
            }
        },
        Endpoint::Embeddings => match body.get("input") {
            Some(i @ (Value::String(_) | Value::Array(_))) => estimate::prompt_input(Some(i)),
            _ => {
                return Err(field_error(
                    "`input` must be a string or an array.",
                    "input",
                ));
            }
        },
    };
    Ok(ParsedRequest {
        body,
        model,
        stream,
        requested_max,
        body_user,
        prompt_tokens,
    })
}

fn field_error(message: &str, param: &'static str) -> ApiError {
    ApiError::InvalidBody {
        message: message.to_owned(),
        param: Some(param),
    }
}

/// The body sent upstream: `user` set to the LibreChat id, usage asked for on
/// streams, and the completion limit set to what the reservation pays for.
/// The completion-limit fields, in the order they are written back.
const LIMIT_FIELDS: [&str; 2] = ["max_completion_tokens", "max_tokens"];

/// A body ready for upstream except for its completion limit, which depends on the
/// reservation. Serialized before the reservation so that neither the client's bytes
/// nor the parsed tree (several times the body's size) stay alive while it waits:
/// under a burst of long conversations that was most of the memory.
#[derive(Debug)]
pub struct Prepared {
    /// The JSON object without the limit fields, ending with its closing brace.
    json: Vec<u8>,
    /// What the client sent in each of `LIMIT_FIELDS`: absent (`None`), `null`
    /// (`Some(None)`) or a count. `None` for endpoints without a completion, whose
    /// fields were left in place.
    limits: Option<[Option<Option<i64>>; 2]>,
}

/// Sets `user`, forces usage into streams and takes the limit fields out, to be put
/// back by `Prepared::finish`. Everything else the client sent is kept.
/// `size_hint` is the client's body length: the output is about as long, and sizing
/// the buffer once avoids growing it by doubling (up to twice the memory per request).
pub fn prepare(
    mut body: Map<String, Value>,
    user: &str,
    stream: bool,
    endpoint: Endpoint,
    size_hint: usize,
) -> Result<Prepared, ApiError> {
    body.insert("user".into(), Value::String(user.to_owned()));
    if stream {
        let options = body
            .entry("stream_options")
            .or_insert_with(|| Value::Object(Map::new()));
        if !options.is_object() {
            *options = Value::Object(Map::new());
        }
        if let Value::Object(o) = options {
            o.insert("include_usage".into(), Value::Bool(true));
        }
    }
    let limits = endpoint.produces_completion().then(|| {
        LIMIT_FIELDS.map(|key| {
            body.remove(key)
                .map(|v| if v.is_null() { None } else { v.as_i64() })
        })
    });
    // Room for `user`, `stream_options` and the limit fields added here.
    let mut json = Vec::with_capacity(size_hint + user.len() + 128);
    serde_json::to_writer(&mut json, &body).map_err(|_| ApiError::Internal)?;
    Ok(Prepared { json, limits })
}

impl Prepared {
    /// The body to send. The limit is always explicit, so upstream can never generate
    /// more than the reservation covers: each limit field the client used is lowered
    /// to `allowed`, or `max_tokens` is added when it used none.
    pub fn finish(self, allowed: Option<i64>) -> Vec<u8> {
        let (Some(limits), Some(allowed)) = (self.limits, allowed) else {
            return self.json;
        };
        let mut json = self.json;
        if json.last() != Some(&b'}') {
            return json;
        }
        json.pop();
        let mut push = |key: &str, value: Option<i64>| {
            if json.len() > 1 {
                json.push(b',');
            }
            json.push(b'"');
            json.extend_from_slice(key.as_bytes());
            json.extend_from_slice(b"\":");
            match value {
                Some(n) => json.extend_from_slice(n.to_string().as_bytes()),
                None => json.extend_from_slice(b"null"),
            }
        };
        let named_any = limits.iter().any(|l| matches!(l, Some(Some(_))));
        for (key, sent) in LIMIT_FIELDS.iter().zip(limits) {
            match sent {
                Some(Some(n)) => push(key, Some(n.min(allowed))),
                _ if !named_any && *key == "max_tokens" => push(key, Some(allowed)),
                Some(None) => push(key, None),
                None => {}
            }
        }
        json.push(b'}');
        json
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use serde_json::json;

    fn parse_json(v: Value, e: Endpoint) -> Result<ParsedRequest, ApiError> {
        parse(v.to_string().as_bytes(), e)
    }

    /// Found by the body fuzz target: without serde_json's `float_roundtrip`, some
    /// numbers came out one ulp off.
    #[test]
    fn numbers_reach_upstream_unchanged() {
        let sent = r#"{"model":"m","messages":[{"role":"user","content":"x"}],"temperature":1.3333333333333336e+107,"top_p":0.7000000000000001,"seed":18446744073709551615}"#;
        let parsed = parse(sent.as_bytes(), Endpoint::ChatCompletions).unwrap();
        let out = prepare(
            parsed.body,
            "u",
            false,
            Endpoint::ChatCompletions,
            sent.len(),
        )
        .unwrap()
        .finish(Some(10));
        let out: Map<String, Value> = serde_json::from_slice(&out).unwrap();
        assert_eq!(
            out["temperature"].as_f64(),
            Some(1.333_333_333_333_333_6e107)
        );
        assert_eq!(out["top_p"].as_f64(), Some(0.700_000_000_000_000_1));
        assert_eq!(out["seed"].as_u64(), Some(u64::MAX));
    }

    #[test]
    fn rejects_bad_shapes_with_the_field_named() {
        let cases = [
            json!([1, 2]),
            json!({"messages": [{"role": "user", "content": "x"}]}),
            json!({"model": "", "messages": [{"role": "user", "content": "x"}]}),
            json!({"model": "m", "messages": []}),
            json!({"model": "m", "messages": "hi"}),
            json!({"model": "m", "messages": [{"role": "user", "content": "x"}], "stream": "yes"}),
            json!({"model": "m", "messages": [{"role": "user", "content": "x"}], "max_tokens": 0}),
            json!({"model": "m", "messages": [{"role": "user", "content": "x"}], "max_tokens": -5}),
            json!({"model": "m", "messages": [{"role": "user", "content": "x"}], "max_tokens": 1.5}),
            json!({"model": "m", "messages": [{"role": "user", "content": "x"}], "user": 42}),
        ];
        for case in cases {
            assert!(
                matches!(
                    parse_json(case.clone(), Endpoint::ChatCompletions),
                    Err(ApiError::InvalidBody { .. })
                ),
                "{case}"
            );
        }
        assert!(matches!(
            parse(b"{\"model\":", Endpoint::ChatCompletions),
            Err(ApiError::InvalidBody { .. })
        ));
        let deep = "[".repeat(10_000);
        assert!(matches!(
            parse(deep.as_bytes(), Endpoint::ChatCompletions),
            Err(ApiError::InvalidBody { .. })
        ));
    }

    fn prepared(v: Value, e: Endpoint, stream: bool, allowed: Option<i64>) -> Value {
        let Ok(parsed) = parse_json(v, e) else {
            panic!("valid body refused")
        };
        let out = prepare(parsed.body, "u1", stream, e, 64)
            .map(|p| p.finish(allowed))
            .unwrap_or_default();
        serde_json::from_slice(&out).unwrap_or_default()
    }

    #[test]
    fn rewrite_forces_usage_and_clamps() {
        let v = prepared(
            json!({"model": "m", "messages": [{"role": "user", "content": "x"}], "stream": true, "max_tokens": 500, "stream_options": {"foo": 1}, "temperature": 0.2}),
            Endpoint::ChatCompletions,
            true,
            Some(120),
        );
        assert_eq!(v["user"], "u1");
        assert_eq!(
            v["stream_options"],
            json!({"foo": 1, "include_usage": true})
        );
        assert_eq!(v["max_tokens"], 120);
        assert_eq!(v["temperature"], 0.2);
        assert!(v.get("max_completion_tokens").is_none());
    }

    #[test]
    fn rewrite_sets_a_limit_when_the_client_named_none() {
        let v = prepared(
            json!({"model": "m", "prompt": "x"}),
            Endpoint::Completions,
            false,
            Some(4096),
        );
        assert_eq!(v["max_tokens"], 4096);
        assert!(v.get("stream_options").is_none());
        // A null limit counts as none.
        let v = prepared(
            json!({"model": "m", "prompt": "x", "max_tokens": null, "max_completion_tokens": null}),
            Endpoint::Completions,
            false,
            Some(70),
        );
        assert_eq!(v["max_tokens"], 70);
        assert_eq!(v["max_completion_tokens"], Value::Null);
    }

    #[test]
    fn rewrite_lowers_every_limit_the_client_used_and_keeps_smaller_ones() {
        let v = prepared(
            json!({"model": "m", "messages": [{"role": "user", "content": "x"}], "max_completion_tokens": 900, "max_tokens": 50}),
            Endpoint::ChatCompletions,
            false,
            Some(300),
        );
        assert_eq!(v["max_completion_tokens"], 300);
        assert_eq!(v["max_tokens"], 50);
    }

    #[test]
    fn embeddings_are_sent_as_they_came_apart_from_user() {
        let v = prepared(
            json!({"model": "m", "input": "x", "max_tokens": 7}),
            Endpoint::Embeddings,
            false,
            None,
        );
        assert_eq!(
            v,
            json!({"model": "m", "input": "x", "max_tokens": 7, "user": "u1"})
        );
    }
}
