//! What in a request would make the provider bill beyond what tokengate can reserve
//! for (docs/behaviour.md, "What is refused, and why"): work the provider does
//! itself (web search, code execution, remote MCP servers, a second model), content
//! kept at the provider, output limits set somewhere tokengate does not lower them,
//! and LiteLLM's own options that make more calls.
//!
//! Every rule here is written to stay safe as providers and LiteLLM add features:
//! - a top-level field goes upstream only when it is one tokengate knows to be
//!   billed by the tokens it can see (`known`), or one the operator allows
//!   (`TOKENGATE_EXTRA_FIELDS`); a field nobody here has heard of is refused, not
//!   passed on (LiteLLM forwards unknown fields to the provider, and merges
//!   `extra_body` over the whole request, its limits included);
//! - a `tools` entry goes upstream only when it is a function (or custom tool) the
//!   client runs itself, in exactly that shape: a tool type invented tomorrow, or a
//!   provider's key beside `"type": "function"` (LiteLLM maps Gemini's
//!   `{"type": "function", "googleSearch": {}}` to Google Search), is refused;
//! - the fields that switch a provider's own work on, and models that search on
//!   every call, are allowed only with the admin's worst-case extra cost for the
//!   model, which is then reserved.

use super::ApiError;
use super::body::Endpoint;
use super::error::{Problem, Unreservable};
use serde_json::{Map, Value};

/// Fields every metered route takes: they shape how tokens are produced and billed,
/// never how many may be.
const COMMON: &[&str] = &[
    "model",
    "user",
    "stream",
    "stream_options",
    "metadata",
    "temperature",
    "top_p",
    "seed",
    "store",
    "service_tier",
    "prompt_cache_key",
    "safety_identifier",
];
/// Chat Completions, as OpenAI documents it and LibreChat sends it, and the sampling
/// parameters of other providers that LiteLLM passes on (Anthropic's `thinking`
/// spends within `max_tokens`).
const CHAT: &[&str] = &[
    "messages",
    "max_tokens",
    "max_completion_tokens",
    "n",
    "stop",
    "presence_penalty",
    "frequency_penalty",
    "logit_bias",
    "logprobs",
    "top_logprobs",
    "response_format",
    "tools",
    "tool_choice",
    "parallel_tool_calls",
    "functions",
    "function_call",
    "reasoning_effort",
    "reasoning",
    "verbosity",
    "modalities",
    "audio",
    "top_k",
    "min_p",
    "repetition_penalty",
    "typical_p",
    "safe_prompt",
    "thinking",
    "include_reasoning",
    "safety_settings",
];
const COMPLETIONS: &[&str] = &[
    "prompt",
    "suffix",
    "max_tokens",
    "n",
    "best_of",
    "echo",
    "logprobs",
    "stop",
    "presence_penalty",
    "frequency_penalty",
    "logit_bias",
    "top_k",
    "min_p",
    "repetition_penalty",
];
const EMBEDDINGS: &[&str] = &["input", "encoding_format", "dimensions", "input_type"];
const RESPONSES: &[&str] = &[
    "input",
    "instructions",
    "max_output_tokens",
    "tools",
    "tool_choice",
    "parallel_tool_calls",
    "text",
    "reasoning",
    "include",
    "truncation",
    "top_logprobs",
    "max_tool_calls",
];

/// Top-level fields that turn on a provider's web search: OpenAI's (which LiteLLM
/// also maps to Anthropic's, Gemini's, xAI's, Groq's and Perplexity's), LibreChat's
/// switch, OpenRouter's plugins and xAI's live search.
const WEB_SEARCH: [&str; 4] = [
    "web_search_options",
    "web_search",
    "plugins",
    "search_parameters",
];
/// Top-level fields that have the provider do more than generate from what it is
/// sent: Anthropic's remote MCP servers and code container, OpenAI's predicted
/// output (its rejected tokens are billed as output, over the limit).
const FEATURES: [&str; 3] = ["mcp_servers", "container", "prediction"];
/// Content kept at the provider: a cached context (Gemini); on the Responses API
/// also a stored conversation, response or prompt (`prompt` is the text itself on
/// the completions route).
const STORED: [&str; 2] = ["cached_content", "cachedContent"];
const STORED_RESPONSES: [&str; 3] = ["previous_response_id", "conversation", "prompt"];

/// Fields no request may send and no operator may allow: each lets a request
/// escape the limit tokengate sets (LiteLLM merges `extra_body` over the request;
/// Gemini reads its own output limits wherever they are) or have LiteLLM call again,
/// on another model or the same (`fallbacks`, retries), or read what it is sent
/// from elsewhere.
pub const NEVER: &[&str] = &[
    "extra_body",
    "max_output_tokens",
    "maxOutputTokens",
    "generationConfig",
    "generation_config",
    "fallbacks",
    "context_window_fallback_dict",
    "num_retries",
    "max_retries",
    "allowed_openai_params",
    "api_base",
    "base_url",
    "api_key",
    "prompt_id",
    "prompt_variables",
    "user_continue_message",
];

/// Whether `key` is a field of `endpoint` that tokengate passes on (or judges
/// itself: `find`).
pub fn known(key: &str, endpoint: Endpoint) -> bool {
    let own = match endpoint {
        Endpoint::ChatCompletions => CHAT,
        Endpoint::Completions => COMPLETIONS,
        Endpoint::Embeddings => EMBEDDINGS,
        // `max_output_tokens` is the Responses API's own limit, which tokengate sets.
        Endpoint::Responses => RESPONSES,
    };
    own.contains(&key) || COMMON.contains(&key) || judged(key, endpoint)
}

/// The fields `find` judges: allowed only with the model's extra cost.
fn judged(key: &str, endpoint: Endpoint) -> bool {
    WEB_SEARCH.contains(&key)
        || FEATURES.contains(&key)
        || STORED.contains(&key)
        || (endpoint == Endpoint::Responses
            && (key == "background" || STORED_RESPONSES.contains(&key)))
}

/// Whether an operator may allow `key` on top of the known fields.
pub fn allowable(key: &str) -> bool {
    !NEVER.contains(&key) && !key.starts_with("litellm_") && !key.is_empty()
}

/// The first thing in the request that the provider would bill beyond what tokengate
/// can reserve for, if any. `field` reads a top-level field; `tools` is that field
/// as already read.
pub fn find(
    field: &impl Fn(&'static str) -> Result<Option<Value>, ApiError>,
    endpoint: Endpoint,
    model: &str,
    tools: Option<&Value>,
) -> Result<Option<Unreservable>, ApiError> {
    let on = |key: &'static str| -> Result<bool, ApiError> {
        Ok(field(key)?.is_some_and(|value| switched_on(key, &value)))
    };
    if endpoint == Endpoint::Responses && on("background")? {
        return Ok(Some(Unreservable::Background));
    }
    if let Some(tool) = tools
        .map(|t| hosted_tool(t, endpoint))
        .transpose()?
        .flatten()
    {
        return Ok(Some(tool));
    }
    if let Some(functions) = field("functions")?
        && let Some(tool) = hosted_function(&functions)?
    {
        return Ok(Some(tool));
    }
    for key in WEB_SEARCH {
        if on(key)? {
            return Ok(Some(Unreservable::WebSearch(key)));
        }
    }
    for key in FEATURES {
        if on(key)? {
            return Ok(Some(Unreservable::Feature(key)));
        }
    }
    let stored: &[&'static str] = match endpoint {
        Endpoint::Responses => &[
            "cached_content",
            "cachedContent",
            "previous_response_id",
            "conversation",
            "prompt",
        ],
        _ => &STORED,
    };
    for key in stored.iter().copied() {
        if on(key)? {
            return Ok(Some(Unreservable::Stored(key)));
        }
    }
    if endpoint != Endpoint::Embeddings && searches_on_every_call(model) {
        return Ok(Some(Unreservable::SearchModel(model.to_owned())));
    }
    Ok(None)
}

/// Whether a field's value switches its feature on: anything but `null`, `false`,
/// an empty list or text, and xAI's `{"mode": "off"}`. An empty object is on: it
/// asks for OpenAI's web search with its defaults.
fn switched_on(key: &str, value: &Value) -> bool {
    match value {
        Value::Null | Value::Bool(false) => false,
        Value::Array(list) => !list.is_empty(),
        Value::String(s) => !s.is_empty(),
        Value::Object(o) if key == "search_parameters" => {
            o.get("mode").and_then(Value::as_str) != Some("off")
        }
        _ => true,
    }
}

/// The first entry of `tools` that is not a tool the client runs itself, named by
/// its type, or by the key that makes it the provider's (Gemini's
/// `{"googleSearch": {}}`, Bedrock's `systemTool`).
fn hosted_tool(tools: &Value, endpoint: Endpoint) -> Result<Option<Unreservable>, ApiError> {
    let list = match tools {
        Value::Null => return Ok(None),
        Value::Array(list) => list,
        _ => return Err(ApiError::body(Problem::Array, "tools")),
    };
    Ok(list.iter().find_map(|tool| {
        let Some(entry) = tool.as_object() else {
            return Some(Unreservable::Tool("?".to_owned()));
        };
        if long_cache(entry.get("cache_control")) {
            return Some(Unreservable::LongCache);
        }
        let kind = entry.get("type").and_then(Value::as_str);
        let shape: &[&str] = match (kind, endpoint) {
            (Some("function"), Endpoint::Responses) => &[
                "type",
                "name",
                "description",
                "parameters",
                "strict",
                "cache_control",
            ],
            (Some("function"), _) => &["type", "function", "cache_control"],
            (Some("custom"), Endpoint::Responses) => &["type", "name", "description", "format"],
            (Some("custom"), _) => &["type", "custom"],
            (Some(other), _) => return Some(Unreservable::Tool(other.to_owned())),
            (None, _) => {
                let first = entry
                    .keys()
                    .next()
                    .cloned()
                    .unwrap_or_else(|| "?".to_owned());
                return Some(Unreservable::Tool(first));
            }
        };
        stranger(entry, shape).map(Unreservable::Tool)
    }))
}

/// The first entry of the legacy `functions` that carries more than a function's
/// definition (LiteLLM reads `{"googleSearch": {}}` there too).
fn hosted_function(functions: &Value) -> Result<Option<Unreservable>, ApiError> {
    let list = match functions {
        Value::Null => return Ok(None),
        Value::Array(list) => list,
        _ => return Err(ApiError::body(Problem::Array, "functions")),
    };
    Ok(list.iter().find_map(|f| match f.as_object() {
        Some(entry) => stranger(entry, &["name", "description", "parameters", "strict"])
            .map(Unreservable::Tool),
        None => Some(Unreservable::Tool("?".to_owned())),
    }))
}

/// The first key of `entry` that is not one of `shape`.
fn stranger(entry: &Map<String, Value>, shape: &[&str]) -> Option<String> {
    entry.keys().find(|k| !shape.contains(&k.as_str())).cloned()
}

/// A `cache_control` that keeps content at the provider longer than its prompt
/// caches do on their own (Anthropic's 5 minutes or an hour): through LiteLLM, a
/// Gemini model stores it as a context cache for as long as asked, billed by the hour
/// out of sight.
pub fn long_cache(cache_control: Option<&Value>) -> bool {
    cache_control
        .and_then(|c| c.get("ttl"))
        .is_some_and(|ttl| !matches!(ttl.as_str(), Some("5m" | "1h")) && !ttl.is_null())
}

/// A model that searches the web on every call, whatever the request says: OpenAI's
/// search and deep-research models, Perplexity's Sonar and `-online` models, Groq's
/// compound systems, OpenRouter's `:online` variants and presets. A LiteLLM alias
/// hides the name; the admin's per-model extra cost covers such a model
/// (docs/behaviour.md).
pub fn searches_on_every_call(model: &str) -> bool {
    let model = model.to_ascii_lowercase();
    let token = |word: &str| {
        model.match_indices(word).any(|(at, _)| {
            let before = model[..at].chars().next_back();
            let after = model[at + word.len()..].chars().next();
            before.is_none_or(|c| "/:._-".contains(c)) && after.is_none_or(|c| "/:._-".contains(c))
        })
    };
    // "search" but not inside "research", unless it is a deep research model.
    let searches = model
        .match_indices("search")
        .any(|(at, _)| !model[..at].ends_with("re"));
    searches
        || model.contains("deep-research")
        || model.contains("deep_research")
        || token("sonar")
        || model.ends_with(":online")
        || model.ends_with("-online")
        || model.contains("-online-")
        || token("compound")
        || token("compound-mini")
        || model.starts_with("preset/")
        || model.contains("/preset/")
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use serde_json::json;

    fn found(body: Value, endpoint: Endpoint) -> Option<Unreservable> {
        let field = |key: &'static str| Ok(body.get(key).cloned());
        let model = body["model"].as_str().unwrap_or("m");
        find(&field, endpoint, model, body.get("tools")).unwrap()
    }

    #[test]
    fn a_tool_that_is_not_the_clients_is_the_providers() {
        let chat = Endpoint::ChatCompletions;
        let function = json!({"type": "function", "function": {"name": "f", "parameters": {}}});
        let cached = json!({"type": "function", "function": {"name": "g"}, "cache_control": {"type": "ephemeral"}});
        assert_eq!(
            found(json!({"model": "m", "tools": [function, cached]}), chat),
            None
        );
        assert_eq!(found(json!({"model": "m", "tools": []}), chat), None);
        assert_eq!(found(json!({"model": "m", "tools": null}), chat), None);
        for (tool, name) in [
            (json!({"type": "web_search_preview"}), "web_search_preview"),
            (
                json!({"type": "web_search_20250305", "name": "web_search", "max_uses": 5}),
                "web_search_20250305",
            ),
            (json!({"googleSearch": {}}), "googleSearch"),
            (
                json!({"type": "function", "googleSearch": {}}),
                "googleSearch",
            ),
            (
                json!({"type": "function", "function": {"name": "f"}, "systemTool": {"name": "nova_grounding"}}),
                "systemTool",
            ),
            (json!({"name": "x", "input_schema": {}}), "input_schema"),
            (
                json!({"type": "a_tool_invented_tomorrow"}),
                "a_tool_invented_tomorrow",
            ),
            (json!("web_search"), "?"),
            (json!({}), "?"),
        ] {
            assert_eq!(
                found(json!({"model": "m", "tools": [function, tool]}), chat),
                Some(Unreservable::Tool(name.into())),
                "{tool}"
            );
        }
        let responses_function =
            json!({"type": "function", "name": "f", "parameters": {}, "strict": true});
        assert_eq!(
            found(
                json!({"model": "m", "tools": [responses_function]}),
                Endpoint::Responses
            ),
            None
        );
        assert_eq!(
            found(
                json!({"model": "m", "functions": [{"googleSearch": {}}]}),
                chat
            ),
            Some(Unreservable::Tool("googleSearch".into()))
        );
        assert_eq!(
            found(
                json!({"model": "m", "functions": [{"name": "f", "parameters": {}}]}),
                chat
            ),
            None
        );
        let forever = json!({"type": "function", "function": {"name": "g"}, "cache_control": {"type": "ephemeral", "ttl": "87600h"}});
        assert_eq!(
            found(json!({"model": "m", "tools": [forever]}), chat),
            Some(Unreservable::LongCache)
        );
    }

    #[test]
    fn fields_that_switch_on_a_providers_own_work() {
        let chat = Endpoint::ChatCompletions;
        for (body, want) in [
            (
                json!({"web_search_options": {}}),
                Some(Unreservable::WebSearch("web_search_options")),
            ),
            (json!({"web_search_options": null}), None),
            (
                json!({"plugins": [{"id": "web"}]}),
                Some(Unreservable::WebSearch("plugins")),
            ),
            (json!({"plugins": []}), None),
            (
                json!({"web_search": true}),
                Some(Unreservable::WebSearch("web_search")),
            ),
            (json!({"web_search": false}), None),
            (
                json!({"search_parameters": {"mode": "auto"}}),
                Some(Unreservable::WebSearch("search_parameters")),
            ),
            (json!({"search_parameters": {"mode": "off"}}), None),
            (
                json!({"mcp_servers": [{"type": "url", "url": "https://x"}]}),
                Some(Unreservable::Feature("mcp_servers")),
            ),
            (
                json!({"prediction": {"type": "content", "content": "x"}}),
                Some(Unreservable::Feature("prediction")),
            ),
            (
                json!({"cached_content": "cachedContents/1"}),
                Some(Unreservable::Stored("cached_content")),
            ),
        ] {
            let mut body = body;
            body["model"] = json!("m");
            assert_eq!(found(body.clone(), chat), want, "{body}");
        }
        assert_eq!(
            found(
                json!({"model": "m", "background": true}),
                Endpoint::Responses
            ),
            Some(Unreservable::Background)
        );
        assert_eq!(
            found(
                json!({"model": "m", "background": false}),
                Endpoint::Responses
            ),
            None
        );
    }

    #[test]
    fn fields_tokengate_does_not_know_are_not_passed_on() {
        let chat = Endpoint::ChatCompletions;
        for key in [
            "messages",
            "temperature",
            "reasoning_effort",
            "tools",
            "web_search_options",
        ] {
            assert!(known(key, chat), "{key}");
        }
        for key in [
            "extra_body",
            "max_output_tokens",
            "fallbacks",
            "num_retries",
            "litellm_system_prompt",
            "deep_search",
        ] {
            assert!(!known(key, chat), "{key}");
        }
        assert!(known("max_output_tokens", Endpoint::Responses));
        assert!(!known("max_tokens", Endpoint::Embeddings));
        assert!(allowable("top_a"));
        for key in ["extra_body", "fallbacks", "litellm_metadata", ""] {
            assert!(!allowable(key), "{key}");
        }
    }

    #[test]
    fn models_that_search_on_every_call() {
        for model in [
            "gpt-4o-search-preview",
            "openai/gpt-4o-mini-search-preview",
            "gpt-5-search-api",
            "o3-deep-research",
            "azure/o4-mini-deep-research-2025-06-26",
            "perplexity/sonar-pro",
            "sonar",
            "sonar-reasoning",
            "pplx-70b-online",
            "groq/compound",
            "groq/compound-mini",
            "openrouter/openai/gpt-4o:online",
            "perplexity/preset/pro-search",
        ] {
            assert!(searches_on_every_call(model), "{model}");
        }
        for model in [
            "gpt-4o",
            "gpt-4o-mini",
            "claude-sonnet-4",
            "gemini-2.5-pro",
            "o3",
            "NousResearch/Hermes-3",
            "grok-4",
            "text-embedding-3-small",
        ] {
            assert!(!searches_on_every_call(model), "{model}");
        }
    }
}
