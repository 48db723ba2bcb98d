//! Parsing and rewriting OpenAI request bodies. Everything the client sent is kept;
//! only `user`, `stream_options.include_usage` and the completion limit change.

use super::ApiError;
use super::error::{BodyError, JsonFault, Problem, Unreservable};
use super::estimate;
use super::unreservable;
use serde::de::{Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::value::RawValue;
use serde_json::{Map, Value};
use std::borrow::Cow;
use std::collections::HashMap;
use std::fmt;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Endpoint {
    ChatCompletions,
    Completions,
    Embeddings,
    /// The Responses API, which LibreChat uses when "Use Responses API" is on.
    Responses,
}

impl Endpoint {
    pub fn path(&self) -> &'static str {
        match self {
            Self::ChatCompletions => "/chat/completions",
            Self::Completions => "/completions",
            Self::Embeddings => "/embeddings",
            Self::Responses => "/responses",
        }
    }

    pub fn name(&self) -> &'static str {
        match self {
            Self::ChatCompletions => "chat.completions",
            Self::Completions => "completions",
            Self::Embeddings => "embeddings",
            Self::Responses => "responses",
        }
    }

    fn produces_completion(&self) -> bool {
        !matches!(self, Self::Embeddings)
    }

    /// The completion-limit fields, the one that wins first, in the order they are
    /// written back; the first is added when the client named none.
    fn limit_fields(&self) -> &'static [&'static str] {
        match self {
            Self::Responses => &["max_output_tokens"],
            _ => &["max_completion_tokens", "max_tokens"],
        }
    }

    /// The smallest completion limit upstream accepts. OpenAI's Responses API (and
    /// LiteLLM in front of it) raises a `max_output_tokens` under 16 to 16, so a
    /// request is reserved for at least that.
    pub fn min_completion(&self) -> i64 {
        match self {
            Self::Responses => 16,
            _ => 1,
        }
    }

    /// The field added when the client named no limit.
    fn default_limit_field(&self) -> &'static str {
        match self {
            Self::Responses => "max_output_tokens",
            _ => "max_tokens",
        }
    }
}

/// A validated request body, borrowing the client's bytes: each field is kept as the
/// JSON text the client sent, so what is not rewritten goes upstream byte for byte
/// (numbers included) without building a tree of the whole body and writing it out
/// again. On a 4,000-token history that halves the cost of this step (BENCHMARKS.md).
#[derive(Debug)]
pub struct ParsedRequest<'a> {
    /// The client's fields in the order sent, each key once, with its last value (as
    /// any JSON parser that keeps one value per key would read it, so a limit field
    /// cannot be sent twice to be read one way here and another way upstream).
    fields: Vec<(Cow<'a, str>, &'a RawValue)>,
    endpoint: Endpoint,
    pub model: String,
    pub stream: bool,
    /// `max_completion_tokens`, else `max_tokens`, if the client named one.
    pub requested_max: Option<i64>,
    pub body_user: Option<String>,
    pub prompt_tokens: i64,
    /// How many completions the provider may generate, each up to the limit, and
    /// bill: `n` choices, `best_of` candidates, for each prompt of a list.
    pub completions: i64,
    /// Image parts in the conversation, priced for the model by the reservation.
    pub images: i64,
    /// What would make the provider bill beyond what the request shows (its own
    /// tools, web search, content kept there), if anything.
    pub unreservable: Option<Unreservable>,
    /// Top-level fields tokengate does not know, in the order sent: refused unless
    /// the operator allows them (`TOKENGATE_EXTRA_FIELDS`).
    pub unknown_fields: Vec<String>,
    /// The conversation's field, rewritten without tokengate's own lines: sent in
    /// place of the client's.
    rewritten: Option<(&'static str, Box<RawValue>)>,
    /// What the client sent in each of the endpoint's limit fields: absent (`None`), `null`
    /// (`Some(None)`) or a count.
    limits: [Option<Option<i64>>; 2],
    /// The client's body length: the body sent upstream is about as long.
    size: usize,
}

/// Chat Completions fields the Responses API does not take; a proxy that bridges it
/// to Chat Completions (LiteLLM, for some providers) would pass them on unreserved.
const NOT_RESPONSES_FIELDS: [&str; 4] = ["n", "best_of", "max_tokens", "max_completion_tokens"];
/// The most choices (`n`) and candidates (`best_of`) OpenAI accepts.
const MAX_CHOICES: i64 = 128;
const MAX_BEST_OF: i64 = 20;

pub fn parse(bytes: &[u8], endpoint: Endpoint) -> Result<ParsedRequest<'_>, ApiError> {
    parse_for(bytes, endpoint, None)
}

/// `parse`, taking out of the conversation the lines tokengate added to earlier
/// answers on the user's page `page` (`notice::strip`), before it is estimated and
/// sent: LibreChat sends them back as history, and they would be billed every turn.
pub fn parse_for<'a>(
    bytes: &'a [u8],
    endpoint: Endpoint,
    page: Option<&str>,
) -> Result<ParsedRequest<'a>, ApiError> {
    let fields = top_level(bytes)?;
    let get = |key: &str| fields.iter().find(|(k, _)| k == key).map(|(_, v)| *v);
    let model = match value_of(get("model"), "model")? {
        // One model: LiteLLM sends a request naming several (`"a,b"`) to each of
        // them, and answers with something that is not one answer.
        Some(Value::String(m)) if crate::domain::plan::is_model_name(&m) => m,
        _ => return Err(ApiError::body(Problem::Model, "model")),
    };
    let stream = match value_of(get("stream"), "stream")? {
        None | Some(Value::Null) => false,
        Some(Value::Bool(b)) => b,
        Some(_) => return Err(ApiError::body(Problem::Boolean, "stream")),
    };
    if stream && !endpoint.produces_completion() {
        return Err(ApiError::body(Problem::DoesNotStream, "stream"));
    }
    let mut limits = [None, None];
    for (slot, key) in limits
        .iter_mut()
        .zip(endpoint.limit_fields().iter().copied())
    {
        *slot = match value_of(get(key), key)? {
            None => None,
            Some(Value::Null) => Some(None),
            Some(v) => match v.as_i64() {
                Some(n) if n >= 1 => Some(Some(n)),
                _ => return Err(ApiError::body(Problem::AtLeastOne, key)),
            },
        };
    }
    // `max_completion_tokens` wins when both are present.
    let requested_max = limits.iter().find_map(|l| l.flatten());
    let body_user = match value_of(get("user"), "user")? {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) => Some(s),
        Some(_) => return Err(ApiError::body(Problem::String, "user")),
    };
    let count = |key: &'static str, max: i64| -> Result<i64, ApiError> {
        match value_of(get(key), key)? {
            None | Some(Value::Null) => Ok(1),
            Some(v) => match v.as_i64() {
                Some(n) if (1..=max).contains(&n) => Ok(n),
                _ => Err(ApiError::body(Problem::Between { max }, key)),
            },
        }
    };
    let (choices, best_of) = match endpoint {
        Endpoint::ChatCompletions => (count("n", MAX_CHOICES)?, 1),
        Endpoint::Completions => (count("n", MAX_CHOICES)?, count("best_of", MAX_BEST_OF)?),
        Endpoint::Embeddings | Endpoint::Responses => (1, 1),
    };
    let mut images = 0;
    let mut prompts = 1;
    // Content kept at the provider, named in the conversation.
    let mut stored: Option<Unreservable> = None;
    // `tools`, once read for the estimate.
    let mut tools: Option<Value> = None;
    // The conversation without tokengate's own lines, when it had some.
    let mut rewritten: Option<(&'static str, Box<RawValue>)> = None;
    let without_lines = |raw: &RawValue| -> Result<Option<Box<RawValue>>, ApiError> {
        page.and_then(|page| super::notice::strip(raw.get(), page))
            .map(|text| RawValue::from_string(text).map_err(|_| ApiError::Internal))
            .transpose()
    };
    let prompt_tokens = match endpoint {
        Endpoint::ChatCompletions => {
            let messages = get("messages")
                .filter(|m| m.get().starts_with('['))
                .ok_or_else(|| ApiError::body(Problem::NonEmptyArray, "messages"))?;
            let stripped = without_lines(messages)?;
            let messages = stripped.as_deref().unwrap_or(messages);
            let estimate = message_list(messages, "messages", Problem::NonEmptyArray)?;
            rewritten = stripped.map(|raw| ("messages", raw));
            images = estimate.images;
            stored = estimate.stored;
            let mut tokens = estimate.tokens;
            for key in estimate::DEFINITION_FIELDS {
                if let Some(v) = value_of(get(key), key)? {
                    tokens = tokens.saturating_add(estimate::definitions(&v));
                    if key == "tools" {
                        tools = Some(v);
                    }
                }
            }
            tokens
        }
        Endpoint::Completions => match value_of(get("prompt"), "prompt")? {
            Some(Value::Array(list)) if list.is_empty() => {
                return Err(ApiError::body(Problem::NotEmpty, "prompt"));
            }
            Some(p @ (Value::String(_) | Value::Array(_))) => {
                // A list of prompts is answered prompt by prompt; a list of numbers
                // is one prompt of token ids.
                if let Value::Array(list) = &p
                    && !list.iter().all(Value::is_number)
                {
                    prompts = i64::try_from(list.len()).unwrap_or(i64::MAX);
                }
                // A fill-in-the-middle `suffix` is prompt too, with each prompt.
                let suffix = match value_of(get("suffix"), "suffix")? {
                    None | Some(Value::Null) => 0,
                    Some(Value::String(text)) => estimate::count_text(&text),
                    Some(_) => return Err(ApiError::body(Problem::String, "suffix")),
                };
                estimate::prompt_input(Some(&p)).saturating_add(suffix.saturating_mul(prompts))
            }
            _ => return Err(ApiError::body(Problem::StringOrArray, "prompt")),
        },
        Endpoint::Responses => {
            for key in NOT_RESPONSES_FIELDS {
                if get(key).is_some() {
                    return Err(ApiError::body(Problem::NotResponses, key));
                }
            }
            let mut tokens = match get("input") {
                Some(raw) if raw.get().starts_with('[') => {
                    let stripped = without_lines(raw)?;
                    let raw = stripped.as_deref().unwrap_or(raw);
                    let items = message_list(raw, "input", Problem::StringOrNonEmptyArray)?;
                    rewritten = stripped.map(|raw| ("input", raw));
                    images = items.images;
                    stored = items.stored;
                    items.tokens
                }
                Some(raw) => match value_of(Some(raw), "input")? {
                    Some(Value::String(text)) => estimate::single_message(&text),
                    _ => return Err(ApiError::body(Problem::StringOrNonEmptyArray, "input")),
                },
                None => return Err(ApiError::body(Problem::StringOrNonEmptyArray, "input")),
            };
            match value_of(get("instructions"), "instructions")? {
                None | Some(Value::Null) => {}
                Some(Value::String(text)) => {
                    tokens = tokens.saturating_add(estimate::extra_message(&text));
                }
                Some(_) => return Err(ApiError::body(Problem::String, "instructions")),
            }
            // Tool definitions and a structured output's schema are prompt too.
            for key in estimate::DEFINITION_FIELDS.iter().copied().chain(["text"]) {
                if let Some(v) = value_of(get(key), key)? {
                    tokens = tokens.saturating_add(estimate::definitions(&v));
                    if key == "tools" {
                        tools = Some(v);
                    }
                }
            }
            tokens
        }
        Endpoint::Embeddings => match value_of(get("input"), "input")? {
            Some(i @ (Value::String(_) | Value::Array(_))) => estimate::prompt_input(Some(&i)),
            _ => return Err(ApiError::body(Problem::StringOrArray, "input")),
        },
    };
    // Every other field goes upstream as sent: checked here as a whole JSON parser
    // would check it (depth, escapes, numbers), so upstream never gets what this
    // proxy would have refused.
    for (key, value) in &fields {
        if !is_read_above(key, endpoint) {
            serde_json::from_str::<Valid>(value.get()).map_err(|e| json_error(&e, ""))?;
        }
    }
    if tools.is_none() {
        tools = value_of(get("tools"), "tools")?;
    }
    // What would make the provider bill beyond the reservation. A background
    // response is refused whatever the model; the rest only without an extra cost
    // set for it.
    let field = |key: &'static str| value_of(get(key), key);
    let found = unreservable::find(&field, endpoint, &model, tools.as_ref())?;
    let unreservable = match (&stored, &found) {
        (_, Some(never)) if !never.coverable() => found,
        _ => stored.or(found),
    };
    // Fields tokengate does not pass on unless the operator allows them.
    let unknown_fields = fields
        .iter()
        .filter(|(key, _)| !unreservable::known(key, endpoint))
        .map(|(key, _)| key.to_string())
        .collect();
    Ok(ParsedRequest {
        fields,
        endpoint,
        model,
        stream,
        requested_max,
        body_user,
        prompt_tokens,
        completions: prompts.saturating_mul(choices.max(best_of)),
        images,
        unreservable,
        unknown_fields,
        rewritten,
        limits,
        size: bytes.len(),
    })
}

/// The fields `parse` reads (and so checks) itself.
fn is_read_above(key: &str, endpoint: Endpoint) -> bool {
    matches!(key, "model" | "stream" | "user")
        || endpoint.limit_fields().contains(&key)
        || (matches!(endpoint, Endpoint::ChatCompletions | Endpoint::Completions) && key == "n")
        || (endpoint == Endpoint::Completions && key == "best_of")
        || match endpoint {
            Endpoint::ChatCompletions => {
                key == "messages" || estimate::DEFINITION_FIELDS.contains(&key)
            }
            Endpoint::Completions => matches!(key, "prompt" | "suffix"),
            Endpoint::Embeddings => key == "input",
            Endpoint::Responses => {
                matches!(key, "input" | "instructions" | "text")
                    || estimate::DEFINITION_FIELDS.contains(&key)
                    || NOT_RESPONSES_FIELDS.contains(&key)
            }
        }
}

/// The top-level object's fields as raw JSON text, last value of each key kept.
fn top_level(bytes: &[u8]) -> Result<Vec<(Cow<'_, str>, &RawValue)>, ApiError> {
    let mut fields = match serde_json::from_slice::<TopLevel<'_>>(bytes) {
        Ok(TopLevel(fields)) => fields,
        Err(e) => {
            // Tell "not an object" from "not JSON"; only an error pays for a second look.
            let problem = match serde_json::from_slice::<Valid>(bytes) {
                Ok(_) => Problem::NotObject,
                Err(_) => Problem::NotJson(JsonFault::of(&e, true)),
            };
            return Err(BodyError::whole(problem).into());
        }
    };
    let mut last: HashMap<&str, usize> = HashMap::with_capacity(fields.len());
    for (i, (key, _)) in fields.iter().enumerate() {
        last.insert(key, i);
    }
    if last.len() < fields.len() {
        let keep: Vec<bool> = fields
            .iter()
            .enumerate()
            .map(|(i, (key, _))| last.get(key.as_ref()) == Some(&i))
            .collect();
        // A value that a later copy of its key replaces is not sent, but a body that
        // is not valid JSON is refused whole, wherever the fault is.
        for ((_, value), kept) in fields.iter().zip(&keep) {
            if !kept {
                serde_json::from_str::<Valid>(value.get()).map_err(|e| json_error(&e, ""))?;
            }
        }
        let mut flags = keep.into_iter();
        fields.retain(|_| flags.next().unwrap_or(false));
    }
    Ok(fields)
}

/// A field parsed as a value, if present.
fn value_of(raw: Option<&RawValue>, param: &'static str) -> Result<Option<Value>, ApiError> {
    raw.map(|r| serde_json::from_str(r.get()).map_err(|e| json_error(&e, param)))
        .transpose()
}

/// A JSON error inside a field (`param`; empty for the body as a whole, whose
/// other fields were read already). Its position would count from the field's
/// start, so only the cause is told.
fn json_error(e: &serde_json::Error, param: &'static str) -> ApiError {
    let problem = Problem::NotJson(JsonFault::of(e, false));
    ApiError::InvalidBody(if param.is_empty() {
        BodyError::whole(problem)
    } else {
        BodyError::new(problem, param)
    })
}

/// A conversation (`messages`, or the Responses API's `input` items) as the estimate
/// reads it, not empty, and whether it names content kept at the provider.
fn message_list(raw: &RawValue, param: &'static str, empty: Problem) -> Result<Listed, ApiError> {
    let list: estimate::Messages =
        serde_json::from_str(raw.get()).map_err(|e| json_error(&e, param))?;
    if list.count == 0 {
        return Err(ApiError::body(empty, param));
    }
    let stored = if list.long_cache {
        Some(Unreservable::LongCache)
    } else if list.stored_files > 0 {
        Some(Unreservable::Stored(param))
    } else {
        list.apart.map(|kind| Unreservable::Content(param, kind))
    };
    Ok(Listed {
        tokens: list.tokens,
        images: list.images,
        stored,
    })
}

/// What `message_list` read.
struct Listed {
    tokens: i64,
    images: i64,
    stored: Option<Unreservable>,
}

/// The top-level object, each value left as the client's JSON text.
struct TopLevel<'a>(Vec<(Cow<'a, str>, &'a RawValue)>);

impl<'de> Deserialize<'de> for TopLevel<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Fields;
        impl<'de> Visitor<'de> for Fields {
            type Value = TopLevel<'de>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                let mut fields = Vec::with_capacity(map.size_hint().unwrap_or(8).min(64));
                while let Some(Key(key)) = map.next_key()? {
                    fields.push((key, map.next_value()?));
                }
                Ok(TopLevel(fields))
            }
        }
        d.deserialize_map(Fields)
    }
}

/// An object key, borrowed from the body unless it had escapes.
struct Key<'a>(Cow<'a, str>);

impl<'de> Deserialize<'de> for Key<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct K;
        impl<'de> Visitor<'de> for K {
            type Value = Key<'de>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string")
            }
            fn visit_borrowed_str<E>(self, v: &'de str) -> Result<Self::Value, E> {
                Ok(Key(Cow::Borrowed(v)))
            }
            fn visit_str<E>(self, v: &str) -> Result<Self::Value, E> {
                Ok(Key(Cow::Owned(v.to_owned())))
            }
        }
        d.deserialize_str(K)
    }
}

/// Any JSON value, checked as `Value` would be and dropped as it is read.
pub(super) struct Valid;

impl<'de> Deserialize<'de> for Valid {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Valid;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("any JSON value")
            }
            fn visit_bool<E>(self, _: bool) -> Result<Valid, E> {
                Ok(Valid)
            }
            fn visit_i64<E>(self, _: i64) -> Result<Valid, E> {
                Ok(Valid)
            }
            fn visit_u64<E>(self, _: u64) -> Result<Valid, E> {
                Ok(Valid)
            }
            fn visit_f64<E>(self, _: f64) -> Result<Valid, E> {
                Ok(Valid)
            }
            fn visit_str<E>(self, _: &str) -> Result<Valid, E> {
                Ok(Valid)
            }
            fn visit_unit<E>(self) -> Result<Valid, E> {
                Ok(Valid)
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Valid, A::Error> {
                while seq.next_element::<Valid>()?.is_some() {}
                Ok(Valid)
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Valid, A::Error> {
                while map.next_entry::<Valid, Valid>()?.is_some() {}
                Ok(Valid)
            }
        }
        d.deserialize_any(V)
    }
}

/// A body ready for upstream except for its completion limit, which depends on the
/// reservation. Written before the reservation so that the client's bytes are not
/// kept alive while it waits: under a burst of long conversations that was most of
/// the memory.
#[derive(Debug)]
pub struct Prepared {
    /// The JSON object without the limit fields, ending with its closing brace.
    json: Vec<u8>,
    endpoint: Endpoint,
    /// The client's limit fields; `None` for endpoints without a completion, whose
    /// fields were left in place.
    limits: Option<[Option<Option<i64>>; 2]>,
}

impl ParsedRequest<'_> {
    /// A streamed chat answer that can only be text, for one person to read: one
    /// choice, no tools or functions the model could call, no structured output. Only
    /// such an answer may end with tokengate's notice line.
    pub fn is_plain_text_stream(&self) -> bool {
        let field = |key: &str| {
            self.fields
                .iter()
                .find(|(k, _)| k == key)
                .map(|(_, v)| v.get().trim())
        };
        let absent = |key: &str| field(key).is_none_or(|v| v == "null" || v == "[]");
        let text_format = field("response_format").is_none_or(|v| {
            v == "null"
                || serde_json::from_str::<Value>(v)
                    .is_ok_and(|f| f.get("type").and_then(Value::as_str) == Some("text"))
        });
        self.endpoint == Endpoint::ChatCompletions
            && self.stream
            && self.completions == 1
            && absent("tools")
            && absent("functions")
            && text_format
    }

    /// Sets `user`, forces usage into streams and takes the limit fields out, to be
    /// put back by `Prepared::finish`. Every other field goes as the client wrote it.
    pub fn prepare(&self, user: &str) -> Result<Prepared, ApiError> {
        let completes = self.endpoint.produces_completion();
        // About the client's length, plus `user`, `stream_options` and the limits.
        let mut json = Vec::with_capacity(self.size + user.len() + 128);
        json.push(b'{');
        let mut stream_options = None;
        for (key, value) in &self.fields {
            if key == "user" || (completes && self.endpoint.limit_fields().contains(&key.as_ref()))
            {
                continue;
            }
            // The Responses API reports usage in every stream and has no
            // `include_usage`; its own `stream_options` go as sent.
            if self.stream && self.endpoint != Endpoint::Responses && key == "stream_options" {
                stream_options = Some(*value);
                continue;
            }
            let value = match &self.rewritten {
                Some((field, text)) if key == field => &**text,
                _ => *value,
            };
            write_key(&mut json, key)?;
            json.extend_from_slice(value.get().as_bytes());
        }
        write_key(&mut json, "user")?;
        serde_json::to_writer(&mut json, user).map_err(|_| ApiError::Internal)?;
        if self.stream && self.endpoint != Endpoint::Responses {
            // The client's options are kept; usage is forced on.
            let mut options = match stream_options.map(|o| serde_json::from_str(o.get())) {
                Some(Ok(Value::Object(o))) => o,
                _ => Map::new(),
            };
            options.insert("include_usage".into(), Value::Bool(true));
            write_key(&mut json, "stream_options")?;
            serde_json::to_writer(&mut json, &options).map_err(|_| ApiError::Internal)?;
        }
        json.push(b'}');
        Ok(Prepared {
            json,
            endpoint: self.endpoint,
            limits: completes.then_some(self.limits),
        })
    }
}

/// Writes `,"key":` (no comma after the opening brace).
fn write_key(json: &mut Vec<u8>, key: &str) -> Result<(), ApiError> {
    if json.len() > 1 {
        json.push(b',');
    }
    serde_json::to_writer(&mut *json, key).map_err(|_| ApiError::Internal)?;
    json.push(b':');
    Ok(())
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
        let default = self.endpoint.default_limit_field();
        for (key, sent) in self.endpoint.limit_fields().iter().zip(limits) {
            match sent {
                Some(Some(n)) => push(key, Some(n.min(allowed))),
                _ if !named_any && *key == default => push(key, Some(allowed)),
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

    fn parse_json(v: Value, e: Endpoint) -> Result<i64, ApiError> {
        parse(v.to_string().as_bytes(), e).map(|p| p.prompt_tokens)
    }

    /// Found by the body fuzz target: without serde_json's `float_roundtrip`, some
    /// numbers came out one ulp off.
    #[test]
    fn numbers_reach_upstream_unchanged() {
        let sent = r#"{"model":"m","messages":[{"role":"user","content":"x"}],"temperature":1.3333333333333336e+107,"top_p":0.7000000000000001,"seed":18446744073709551615}"#;
        let parsed = parse(sent.as_bytes(), Endpoint::ChatCompletions).unwrap();
        let out = parsed.prepare("u").unwrap().finish(Some(10));
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
                    Err(ApiError::InvalidBody(_))
                ),
                "{case}"
            );
        }
        assert!(matches!(
            parse(b"{\"model\":", Endpoint::ChatCompletions),
            Err(ApiError::InvalidBody(_))
        ));
        let deep = "[".repeat(10_000);
        assert!(matches!(
            parse(deep.as_bytes(), Endpoint::ChatCompletions),
            Err(ApiError::InvalidBody(_))
        ));
    }

    fn prepared(v: Value, e: Endpoint, stream: bool, allowed: Option<i64>) -> Value {
        let sent = v.to_string();
        let Ok(parsed) = parse(sent.as_bytes(), e) else {
            panic!("valid body refused")
        };
        assert_eq!(parsed.stream, stream);
        let out = parsed
            .prepare("u1")
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

    fn sent_upstream(sent: &str, allowed: i64) -> String {
        let parsed = parse(sent.as_bytes(), Endpoint::ChatCompletions).unwrap();
        String::from_utf8(parsed.prepare("u1").unwrap().finish(Some(allowed))).unwrap()
    }

    #[test]
    fn fields_not_rewritten_go_upstream_byte_for_byte() {
        let sent = r#"{ "model" : "m", "messages":[ {"role":"user","content":"x"} ], "temperature": 1.0e0, "metadata": {"a" : [1, 2.50]}, "user": "client" }"#;
        assert_eq!(
            sent_upstream(sent, 10),
            r#"{"model":"m","messages":[ {"role":"user","content":"x"} ],"temperature":1.0e0,"metadata":{"a" : [1, 2.50]},"user":"u1","max_tokens":10}"#
        );
    }

    /// A key sent twice counts once, with its last value, as upstream reads it: a
    /// limit cannot be smuggled past the clamp in the first copy.
    #[test]
    fn a_key_sent_twice_is_read_and_sent_once_with_its_last_value() {
        for (first, last) in [(5, 900), (900, 5)] {
            let sent = format!(
                r#"{{"model":"m","messages":[{{"role":"user","content":"x"}}],"max_tokens":{first},"max_tokens":{last}}}"#
            );
            let parsed = parse(sent.as_bytes(), Endpoint::ChatCompletions).unwrap();
            assert_eq!(parsed.requested_max, Some(last));
            let out = sent_upstream(&sent, 100);
            assert_eq!(out.matches("max_tokens").count(), 1, "{out}");
            let out: Value = serde_json::from_str(&out).unwrap();
            assert_eq!(out["max_tokens"], last.min(100));
        }
        // The copy that is not sent must still be valid.
        let sent = r#"{"model":"m","messages":[1e400],"messages":[{"role":"user","content":"x"}]}"#;
        assert!(parse(sent.as_bytes(), Endpoint::ChatCompletions).is_err());
        let sent = r#"{"model":"a","messages":[{"role":"user","content":"x"}],"model":"b"}"#;
        let out = sent_upstream(sent, 10);
        assert_eq!(out.matches("model").count(), 1, "{out}");
        assert!(out.contains(r#""model":"b""#), "{out}");
    }

    /// Fields passed through untouched are still checked as a whole JSON parser
    /// would: upstream never gets what this proxy would refuse to read.
    #[test]
    fn fields_passed_through_are_checked_too() {
        let deep = format!("{}{}", "[".repeat(200), "]".repeat(200));
        for bad in [r#""\ud800""#, deep.as_str(), "1e400"] {
            let sent = format!(
                r#"{{"model":"m","messages":[{{"role":"user","content":"x"}}],"metadata":{bad}}}"#
            );
            let err = parse(sent.as_bytes(), Endpoint::ChatCompletions).unwrap_err();
            assert!(
                matches!(&err, ApiError::InvalidBody(e) if e.to_string().starts_with("The request body is not valid JSON")),
                "{bad}: {err:?}"
            );
        }
        let err = parse(b"[1, 2]", Endpoint::ChatCompletions).unwrap_err();
        assert!(
            matches!(&err, ApiError::InvalidBody(e) if e.to_string() == "The request body must be a JSON object."),
            "{err:?}"
        );
        let err = parse(b"{\"model\":", Endpoint::ChatCompletions).unwrap_err();
        assert!(
            matches!(&err, ApiError::InvalidBody(e) if e.to_string().starts_with("The request body is not valid JSON")),
            "{err:?}"
        );
    }

    #[test]
    fn the_estimate_counts_every_kind_of_message_field() {
        let sent = json!({"model": "m", "messages": [
            {"role": "user", "content": [
                {"type": "text", "text": "Hello world"},
                {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBO"}}
            ]},
            "stray",
            {"role": "assistant", "content": null, "tool_calls": [{"id": "1"}]}
        ], "tools": [{"type": "function"}]});
        let tokens = parse_json(sent, Endpoint::ChatCompletions).unwrap();
        let c = estimate::count_text;
        let expected = 3
            + 3 * 3
            + c("user")
            + c("Hello world")
            + c("assistant")
            + c(r#"[{"id":"1"}]"#)
            + c(r#"[{"type":"function"}]"#);
        assert_eq!(tokens, expected);
        // The image is counted apart, to be priced for the model.
        let parsed = parse(
            br#"{"model":"m","messages":[{"role":"user","content":[{"type":"image_url","image_url":{"url":"data:image/png;base64,iVBO"}},{"type":"image_url","image_url":{"url":"data:image/webp;base64,UklG","detail":"low"}}]}]}"#,
            Endpoint::ChatCompletions,
        )
        .unwrap();
        assert_eq!(parsed.images, 2);
    }

    /// Everything that multiplies what the provider generates: `n` choices,
    /// `best_of` candidates, and one completion per prompt of a list.
    #[test]
    fn fields_that_multiply_the_output_are_counted() {
        let completions =
            |body: &str, e: Endpoint| parse(body.as_bytes(), e).map(|p| p.completions);
        let msg = r#""messages":[{"role":"user","content":"x"}]"#;
        let chat = Endpoint::ChatCompletions;
        assert_eq!(
            completions(&format!(r#"{{"model":"m",{msg}}}"#), chat).ok(),
            Some(1)
        );
        assert_eq!(
            completions(&format!(r#"{{"model":"m",{msg},"n":8}}"#), chat).ok(),
            Some(8)
        );
        assert_eq!(
            completions(&format!(r#"{{"model":"m",{msg},"n":null}}"#), chat).ok(),
            Some(1)
        );
        let text = Endpoint::Completions;
        assert_eq!(
            completions(r#"{"model":"m","prompt":"a","n":2,"best_of":5}"#, text).ok(),
            Some(5)
        );
        assert_eq!(
            completions(r#"{"model":"m","prompt":["a","b","c"],"n":2}"#, text).ok(),
            Some(6)
        );
        assert_eq!(
            completions(r#"{"model":"m","prompt":[1,2,3]}"#, text).ok(),
            Some(1)
        );
        assert_eq!(
            completions(r#"{"model":"m","prompt":[[1,2],[3]],"best_of":3}"#, text).ok(),
            Some(6)
        );
        for bad in [
            format!(r#"{{"model":"m",{msg},"n":0}}"#),
            format!(r#"{{"model":"m",{msg},"n":129}}"#),
            format!(r#"{{"model":"m",{msg},"n":2.5}}"#),
            format!(r#"{{"model":"m",{msg},"n":"8"}}"#),
        ] {
            assert!(
                matches!(
                    parse(bad.as_bytes(), chat),
                    Err(ApiError::InvalidBody(BodyError {
                        param: Some("n"),
                        ..
                    }))
                ),
                "{bad}"
            );
        }
        assert!(parse(br#"{"model":"m","prompt":"a","best_of":21}"#, text).is_err());
        assert!(parse(br#"{"model":"m","prompt":[]}"#, text).is_err());
    }

    /// A fill-in-the-middle `suffix` is read by the model as much as the prompt.
    #[test]
    fn a_completions_suffix_is_estimated_with_each_prompt() {
        let tokens = |body: Value| parse_json(body, Endpoint::Completions).unwrap();
        let long = "fn main() { println!(\"oi\"); }\n".repeat(200);
        let without = tokens(json!({"model": "m", "prompt": "a"}));
        let with = tokens(json!({"model": "m", "prompt": "a", "suffix": long}));
        assert_eq!(with - without, estimate::count_text(&long));
        let two = tokens(json!({"model": "m", "prompt": ["a", "b"], "suffix": long}));
        assert!(two >= 2 * estimate::count_text(&long));
        assert!(
            parse_json(
                json!({"model": "m", "prompt": "a", "suffix": 5}),
                Endpoint::Completions
            )
            .is_err()
        );
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
