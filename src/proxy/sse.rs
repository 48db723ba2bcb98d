//! Incremental Server-Sent Events scanner: reads usage and text from the stream on
//! the side while the bytes go to the client unchanged. Events, lines and even the
//! `data:` prefix may be split across chunks at any byte.

use serde::Deserialize;

/// Token usage as an OpenAI-compatible upstream reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Usage {
    pub prompt_tokens: i64,
    pub completion_tokens: i64,
}

/// A usage object, with Chat Completions' names or the Responses API's
/// (`input_tokens`, `output_tokens`). Each field is read leniently (`Count`): a
/// provider's odd field must not lose the usage it reported.
#[derive(Deserialize)]
struct RawUsage {
    #[serde(default)]
    prompt_tokens: Count,
    #[serde(default)]
    completion_tokens: Count,
    #[serde(default)]
    input_tokens: Count,
    #[serde(default)]
    output_tokens: Count,
}

impl RawUsage {
    fn into_usage(self) -> Option<Usage> {
        let prompt_tokens = self.prompt_tokens.0.or(self.input_tokens.0)?.max(0);
        let completion = self.completion_tokens.0.or(self.output_tokens.0);
        Some(Usage {
            prompt_tokens,
            completion_tokens: completion.unwrap_or(0).max(0),
        })
    }
}

/// One JSON object of an answer: a stream's event or a whole non-streamed body.
/// Every field tolerates shapes it does not expect (they read as absent), so that an
/// answer the provider billed is never taken for garbage.
#[derive(Deserialize)]
struct Chunk {
    #[serde(default)]
    usage: Lenient<RawUsage>,
    #[serde(default)]
    choices: Choices,
    /// LiteLLM reports an error met after its 200 (mid-stream, or as the whole body)
    /// as an object with an `error` key; a failed response of the Responses API has
    /// one too (`null` when it did not fail).
    #[serde(default)]
    error: Option<serde::de::IgnoredAny>,
    /// The Responses API's event type (`response.output_text.delta`, `error`, ...).
    #[serde(default, rename = "type")]
    kind: Text,
    /// The Responses API: what a `*.delta` event generated (text, a tool call's
    /// arguments, a reasoning summary).
    #[serde(default)]
    delta: Text,
    /// The Responses API: the response of a `response.*` event, which carries the
    /// usage in `response.completed` (and `response.incomplete`, `response.failed`).
    #[serde(default)]
    response: Lenient<ResponseObject>,
    /// The Responses API: a whole answer's output items (not streamed).
    #[serde(default)]
    output: Option<serde_json::Value>,
}

#[derive(Deserialize)]
struct ResponseObject {
    #[serde(default)]
    usage: Lenient<RawUsage>,
    #[serde(default)]
    error: Option<serde::de::IgnoredAny>,
}

/// The text of the Responses API's output items: message parts, tool calls'
/// arguments, reasoning summaries.
fn output_texts(output: &serde_json::Value, text: &mut String) {
    let Some(items) = output.as_array() else {
        return;
    };
    for item in items {
        for key in ["arguments", "text"] {
            if let Some(t) = item.get(key).and_then(serde_json::Value::as_str) {
                text.push_str(t);
            }
        }
        for key in ["content", "summary"] {
            for part in item
                .get(key)
                .and_then(serde_json::Value::as_array)
                .into_iter()
                .flatten()
            {
                if let Some(t) = part.get("text").and_then(serde_json::Value::as_str) {
                    text.push_str(t);
                }
            }
        }
    }
}

#[derive(Deserialize)]
struct Choice {
    #[serde(default)]
    finish_reason: Text,
    #[serde(default)]
    delta: Lenient<Message>,
    #[serde(default)]
    message: Lenient<Message>,
    #[serde(default)]
    text: Text,
}

#[derive(Deserialize)]
struct Message {
    #[serde(default)]
    content: Text,
    #[serde(default)]
    reasoning_content: Text,
}

/// Text that may be a string or an array of content parts (`{"type": "text", "text":
/// ...}`), as OpenAI-compatible servers send either; anything else reads as none.
#[derive(Default)]
struct Text(Option<String>);

impl<'de> Deserialize<'de> for Text {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = Text;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("text or content parts")
            }
            fn visit_str<E>(self, v: &str) -> Result<Text, E> {
                Ok(Text(Some(v.to_owned())))
            }
            fn visit_string<E>(self, v: String) -> Result<Text, E> {
                Ok(Text(Some(v)))
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<Text, A::Error> {
                let mut text: Option<String> = None;
                while let Some(part) = seq.next_element::<Lenient<Part>>()? {
                    if let Some(Text(Some(t))) = part.0.map(|p| p.text) {
                        text.get_or_insert_with(String::new).push_str(&t);
                    }
                }
                Ok(Text(text))
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<Text, A::Error> {
                while map
                    .next_entry::<serde::de::IgnoredAny, serde::de::IgnoredAny>()?
                    .is_some()
                {}
                Ok(Text(None))
            }
            fn visit_bool<E>(self, _: bool) -> Result<Text, E> {
                Ok(Text(None))
            }
            fn visit_i64<E>(self, _: i64) -> Result<Text, E> {
                Ok(Text(None))
            }
            fn visit_u64<E>(self, _: u64) -> Result<Text, E> {
                Ok(Text(None))
            }
            fn visit_f64<E>(self, _: f64) -> Result<Text, E> {
                Ok(Text(None))
            }
            fn visit_unit<E>(self) -> Result<Text, E> {
                Ok(Text(None))
            }
        }
        d.deserialize_any(V)
    }
}

#[derive(Deserialize)]
struct Part {
    #[serde(default)]
    text: Text,
}

/// A token count: a whole number (a float is cut to one); anything else reads as none.
#[derive(Default)]
struct Count(Option<i64>);

impl<'de> Deserialize<'de> for Count {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let any = serde_json::Value::deserialize(d)?;
        Ok(Count(match any {
            serde_json::Value::Number(n) => n
                .as_i64()
                .or_else(|| n.as_u64().map(|u| i64::try_from(u).unwrap_or(i64::MAX)))
                .or_else(|| n.as_f64().filter(|f| f.is_finite()).map(|f| f as i64)),
            _ => None,
        }))
    }
}

/// `choices` when it is an array; each element that is not a choice is skipped.
#[derive(Default)]
struct Choices(Vec<Choice>);

impl<'de> Deserialize<'de> for Choices {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = Choices;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a list of choices")
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(
                self,
                mut seq: A,
            ) -> Result<Choices, A::Error> {
                let mut out = Vec::new();
                while let Some(c) = seq.next_element::<Lenient<Choice>>()? {
                    out.extend(c.0);
                }
                Ok(Choices(out))
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut map: A,
            ) -> Result<Choices, A::Error> {
                while map
                    .next_entry::<serde::de::IgnoredAny, serde::de::IgnoredAny>()?
                    .is_some()
                {}
                Ok(Choices::default())
            }
            fn visit_str<E>(self, _: &str) -> Result<Choices, E> {
                Ok(Choices::default())
            }
            fn visit_bool<E>(self, _: bool) -> Result<Choices, E> {
                Ok(Choices::default())
            }
            fn visit_i64<E>(self, _: i64) -> Result<Choices, E> {
                Ok(Choices::default())
            }
            fn visit_u64<E>(self, _: u64) -> Result<Choices, E> {
                Ok(Choices::default())
            }
            fn visit_f64<E>(self, _: f64) -> Result<Choices, E> {
                Ok(Choices::default())
            }
            fn visit_unit<E>(self) -> Result<Choices, E> {
                Ok(Choices::default())
            }
        }
        d.deserialize_any(V)
    }
}

/// An object of type `T`, or none when the value is anything else (`null`, a string,
/// a number, an array).
struct Lenient<T>(Option<T>);

impl<T> Default for Lenient<T> {
    fn default() -> Self {
        Self(None)
    }
}

impl<'de, T: Deserialize<'de>> Deserialize<'de> for Lenient<T> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V<T>(std::marker::PhantomData<T>);
        impl<'de, T: Deserialize<'de>> serde::de::Visitor<'de> for V<T> {
            type Value = Lenient<T>;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("an object")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                map: A,
            ) -> Result<Lenient<T>, A::Error> {
                T::deserialize(serde::de::value::MapAccessDeserializer::new(map))
                    .map(|t| Lenient(Some(t)))
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(
                self,
                mut seq: A,
            ) -> Result<Lenient<T>, A::Error> {
                while seq.next_element::<serde::de::IgnoredAny>()?.is_some() {}
                Ok(Lenient(None))
            }
            fn visit_str<E>(self, _: &str) -> Result<Lenient<T>, E> {
                Ok(Lenient(None))
            }
            fn visit_bool<E>(self, _: bool) -> Result<Lenient<T>, E> {
                Ok(Lenient(None))
            }
            fn visit_i64<E>(self, _: i64) -> Result<Lenient<T>, E> {
                Ok(Lenient(None))
            }
            fn visit_u64<E>(self, _: u64) -> Result<Lenient<T>, E> {
                Ok(Lenient(None))
            }
            fn visit_f64<E>(self, _: f64) -> Result<Lenient<T>, E> {
                Ok(Lenient(None))
            }
            fn visit_unit<E>(self) -> Result<Lenient<T>, E> {
                Ok(Lenient(None))
            }
        }
        d.deserialize_any(V(std::marker::PhantomData))
    }
}

/// Longest event kept for parsing; larger ones pass through unparsed, but for the
/// usage at their end (`TAIL_BYTES`).
const MAX_EVENT_BYTES: usize = 1 << 20;
/// The end of an oversized event kept to find its usage in: the Responses API's
/// `response.completed` carries the whole response (output items, a generated
/// image's base64, the tools echoed back) and its usage near the end, followed only
/// by `user` and `metadata` (at most 16 short pairs).
const TAIL_BYTES: usize = 64 << 10;
/// Most completion text kept for the fallback estimate.
const MAX_TEXT_BYTES: usize = 8 << 20;

#[derive(Debug, Default)]
pub struct SseScanner {
    line: Vec<u8>,
    /// The current line outgrew `MAX_EVENT_BYTES`; `line` keeps its start, enough
    /// to tell a `data` field from a comment.
    line_truncated: bool,
    /// The last `TAIL_BYTES` of a line past `MAX_EVENT_BYTES`, and how many bytes
    /// went past it in all.
    line_tail: Vec<u8>,
    line_overflow: usize,
    /// The end of the current event's data when it was too long to parse.
    oversized_tail: Vec<u8>,
    data: Vec<u8>,
    has_data: bool,
    oversized: bool,
    after_cr: bool,
    usage: Option<Usage>,
    text: String,
    events: u64,
    /// An event carried an `error` object (LiteLLM's mid-stream error).
    error_seen: bool,
    /// An event carried at least one choice.
    choices_seen: bool,
    /// The stream's `data: [DONE]` line.
    done_seen: bool,
    /// A choice ended at its token limit (`finish_reason: "length"`).
    hit_limit: bool,
}

impl SseScanner {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn feed(&mut self, chunk: &[u8]) {
        let mut rest = chunk;
        while !rest.is_empty() {
            if self.after_cr {
                self.after_cr = false;
                if rest[0] == b'\n' {
                    rest = &rest[1..];
                    continue;
                }
            }
            match rest.iter().position(|&b| b == b'\n' || b == b'\r') {
                Some(i) => {
                    self.push_line_bytes(&rest[..i]);
                    self.after_cr = rest[i] == b'\r';
                    self.end_line();
                    rest = &rest[i + 1..];
                }
                None => {
                    self.push_line_bytes(rest);
                    rest = &[];
                }
            }
        }
    }

    /// Call at the end of the stream: an event not followed by a blank line still counts.
    pub fn finish(&mut self) {
        if !self.line.is_empty() {
            self.end_line();
        }
        self.dispatch();
    }

    pub fn usage(&self) -> Option<Usage> {
        self.usage
    }

    /// The completion text seen so far (for an estimate when no usage came).
    pub fn text(&self) -> &str {
        &self.text
    }

    pub fn events(&self) -> u64 {
        self.events
    }

    /// Whether the stream reported an error and nothing else: no choice, no usage.
    /// Nothing was generated, so nothing is charged.
    pub fn error_only(&self) -> bool {
        self.error_seen && !self.choices_seen && self.usage.is_none()
    }

    /// Whether the stream reported an error at some point.
    pub fn error_seen(&self) -> bool {
        self.error_seen
    }

    /// Whether the stream's `data: [DONE]` line has been read.
    pub fn done_seen(&self) -> bool {
        self.done_seen
    }

    /// Whether a choice ended because it reached its token limit.
    pub fn hit_limit(&self) -> bool {
        self.hit_limit
    }

    /// Keeps at most `MAX_EVENT_BYTES` of a line, the same bytes however the line
    /// was split into chunks.
    fn push_line_bytes(&mut self, bytes: &[u8]) {
        let room = MAX_EVENT_BYTES - self.line.len();
        if bytes.len() <= room {
            self.line.extend_from_slice(bytes);
        } else {
            self.line.extend_from_slice(&bytes[..room]);
            self.line_truncated = true;
            let over = &bytes[room..];
            self.line_overflow += over.len();
            let over = &over[over.len().saturating_sub(TAIL_BYTES)..];
            let keep = TAIL_BYTES - over.len();
            if self.line_tail.len() > keep {
                self.line_tail.drain(..self.line_tail.len() - keep);
            }
            self.line_tail.extend_from_slice(over);
        }
    }

    fn end_line(&mut self) {
        let line = std::mem::take(&mut self.line);
        let truncated = std::mem::take(&mut self.line_truncated);
        if truncated {
            // The line's last bytes, in one piece: the kept start's end joins the
            // overflow only when nothing between them was dropped.
            let mut tail = Vec::with_capacity(TAIL_BYTES);
            if self.line_overflow < TAIL_BYTES {
                tail.extend_from_slice(&line[line.len() - (TAIL_BYTES - self.line_overflow)..]);
            }
            tail.append(&mut self.line_tail);
            self.oversized_tail = tail;
        }
        self.line_overflow = 0;
        self.on_line(&line, truncated);
        self.line = line;
        self.line.clear();
    }

    fn on_line(&mut self, line: &[u8], truncated: bool) {
        if line.is_empty() {
            self.dispatch();
            return;
        }
        if line[0] == b':' {
            return;
        }
        let (field, value) = match line.iter().position(|&b| b == b':') {
            Some(i) => {
                let v = &line[i + 1..];
                (&line[..i], v.strip_prefix(b" ").unwrap_or(v))
            }
            None => (line, &b""[..]),
        };
        if field == b"data" {
            if truncated {
                // Too long to parse: the event passes through unread.
                self.oversized = true;
                self.has_data = true;
                return;
            }
            if self.has_data {
                self.data.push(b'\n');
            }
            if self.data.len() + value.len() <= MAX_EVENT_BYTES {
                self.data.extend_from_slice(value);
            } else {
                self.oversized = true;
            }
            self.has_data = true;
        }
    }

    fn dispatch(&mut self) {
        if self.has_data && self.data.as_slice() == b"[DONE]" {
            self.done_seen = true;
        } else if self.has_data && !self.oversized {
            self.events += 1;
            if let Some(chunk) = parse_object(&self.data) {
                self.absorb(chunk);
            }
        } else if self.oversized
            && let Some(usage) = usage_in_tail(&self.oversized_tail)
        {
            self.usage = Some(usage);
        }
        self.oversized_tail.clear();
        self.data.clear();
        self.has_data = false;
        self.oversized = false;
    }

    fn absorb(&mut self, chunk: Chunk) {
        if let Some(usage) = chunk.usage.0.and_then(RawUsage::into_usage) {
            self.usage = Some(usage);
        }
        if chunk.error.is_some() || chunk.kind.0.as_deref() == Some("error") {
            self.error_seen = true;
        }
        if let Some(response) = chunk.response.0 {
            if let Some(usage) = response.usage.0.and_then(RawUsage::into_usage) {
                self.usage = Some(usage);
            }
            if response.error.is_some() {
                self.error_seen = true;
            }
        }
        if let Some(delta) = chunk.delta.0 {
            // Something was generated (a Responses API stream has no choices).
            self.choices_seen = true;
            if self.text.len() + delta.len() <= MAX_TEXT_BYTES {
                self.text.push_str(&delta);
            }
        }
        for choice in chunk.choices.0 {
            self.choices_seen = true;
            if choice.finish_reason.0.as_deref() == Some("length") {
                self.hit_limit = true;
            }
            for part in choice.texts().into_iter().flatten() {
                if self.text.len() + part.len() <= MAX_TEXT_BYTES {
                    self.text.push_str(&part);
                }
            }
        }
    }
}

impl Choice {
    /// The completion text of a choice: a stream's delta, a whole message or a
    /// completion's `text`, with any reasoning text.
    fn texts(self) -> [Option<String>; 5] {
        let (delta, message) = (self.delta.0, self.message.0);
        let (dc, dr) = delta.map_or((None, None), |m| (m.content.0, m.reasoning_content.0));
        let (mc, mr) = message.map_or((None, None), |m| (m.content.0, m.reasoning_content.0));
        [dc, dr, mc, mr, self.text.0]
    }
}

/// The usage object of an event too long to parse, from its end: the last
/// `"usage":` followed by an object. The sequence cannot occur inside a JSON string
/// (a quote there is escaped), so it is a key.
fn usage_in_tail(tail: &[u8]) -> Option<Usage> {
    const KEY: &[u8] = b"\"usage\":";
    // From the end, the first that is a usage object (a `metadata` key named
    // "usage" after it holds a string).
    tail.windows(KEY.len())
        .enumerate()
        .filter(|(_, w)| *w == KEY)
        .map(|(at, _)| at)
        .collect::<Vec<_>>()
        .into_iter()
        .rev()
        .find_map(|at| {
            let rest = &tail[at + KEY.len()..];
            let first = rest.iter().find(|b| !b.is_ascii_whitespace())?;
            if *first != b'{' {
                return None;
            }
            let mut objects = serde_json::Deserializer::from_slice(rest).into_iter::<RawUsage>();
            objects.next()?.ok()?.into_usage()
        })
}

/// A JSON object read as a `Chunk`; anything else (an array, which serde would
/// also read into a struct, a string, garbage) is none.
fn parse_object(bytes: &[u8]) -> Option<Chunk> {
    let first = bytes.iter().find(|b| !b.is_ascii_whitespace())?;
    if *first != b'{' {
        return None;
    }
    serde_json::from_slice::<Chunk>(bytes).ok()
}

/// What a non-streamed answer reported.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct JsonAnswer {
    pub usage: Option<Usage>,
    pub text: String,
    /// The body is an error (LiteLLM's `{"error": ...}` under a 200) with no choice in
    /// it: nothing was generated.
    pub error_only: bool,
}

/// Usage and text of a non-streamed answer; `None` when the body is not a JSON object.
pub fn scan_json_response(body: &[u8]) -> Option<JsonAnswer> {
    let chunk = parse_object(body)?;
    let error = chunk.error.is_some();
    let usage = chunk.usage.0.and_then(RawUsage::into_usage);
    let output = chunk
        .output
        .as_ref()
        .and_then(serde_json::Value::as_array)
        .is_some_and(|items| !items.is_empty());
    let choices = !chunk.choices.0.is_empty() || output;
    let mut text = String::new();
    if let Some(output) = &chunk.output {
        output_texts(output, &mut text);
    }
    for choice in chunk.choices.0 {
        for part in choice.texts().into_iter().flatten() {
            text.push_str(&part);
        }
    }
    Some(JsonAnswer {
        error_only: error && !choices && usage.is_none(),
        usage,
        text,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const STREAM: &str = "data: {\"choices\":[{\"index\":0,\"delta\":{\"content\":\"Olá\"}}]}\n\n\
        : keep-alive\n\n\
        data: {\"choices\":[{\"index\":0,\"delta\":{\"content\":\", mundo\"}}]}\r\n\r\n\
        data: {\"choices\":[{\"index\":0,\"delta\":{}}],\"usage\":{\"prompt_tokens\":12,\"completion_tokens\":3,\"total_tokens\":15}}\r\r\
        data: [DONE]\n\n";

    /// A Responses API stream whose `response.completed` is over the parse limit (a
    /// generated image's base64 in it): its usage is still read from its end, however
    /// the stream is cut into chunks, and a `metadata` key named "usage" after it is
    /// not taken for it.
    #[test]
    fn the_usage_of_an_oversized_final_event_is_read_from_its_end() {
        let image = "A".repeat(MAX_EVENT_BYTES + 300_000);
        let completed = format!(
            "{{\"type\":\"response.completed\",\"response\":{{\"output\":[{{\"type\":\"image_generation_call\",\"result\":\"{image}\"}}],\"usage\":{{\"input_tokens\":1234,\"output_tokens\":5678,\"total_tokens\":6912}},\"user\":null,\"metadata\":{{\"usage\":\"a \\\"usage\\\": note\"}}}}}}"
        );
        let stream = format!(
            "event: response.output_text.delta\ndata: {{\"type\":\"response.output_text.delta\",\"delta\":\"Olá\"}}\n\nevent: response.completed\ndata: {completed}\n\n"
        );
        for piece in [7, 4096, 1 << 16, stream.len()] {
            let mut s = SseScanner::new();
            for chunk in stream.as_bytes().chunks(piece) {
                s.feed(chunk);
            }
            s.finish();
            assert_eq!(
                s.usage(),
                Some(Usage {
                    prompt_tokens: 1234,
                    completion_tokens: 5678
                }),
                "pieces of {piece}"
            );
            assert_eq!(s.text(), "Olá");
        }
        // With nothing after the usage but a huge metadata value, no usage is
        // invented from the middle.
        let mut s = SseScanner::new();
        s.feed(
            format!("data: {{\"usage\":{{\"input_tokens\":1}},\"x\":\"{image}\"}}\n\n").as_bytes(),
        );
        s.finish();
        assert_eq!(s.usage(), None);
    }

    #[test]
    fn reads_usage_and_text() {
        let mut s = SseScanner::new();
        s.feed(STREAM.as_bytes());
        s.finish();
        assert_eq!(
            s.usage(),
            Some(Usage {
                prompt_tokens: 12,
                completion_tokens: 3
            })
        );
        assert_eq!(s.text(), "Olá, mundo");
        assert_eq!(s.events(), 3);
    }

    #[test]
    fn any_split_gives_the_same_result() {
        let bytes = STREAM.as_bytes();
        for i in 0..bytes.len() {
            for j in i..bytes.len() {
                let mut s = SseScanner::new();
                s.feed(&bytes[..i]);
                s.feed(&bytes[i..j]);
                s.feed(&bytes[j..]);
                s.finish();
                assert_eq!(
                    s.usage().map(|u| u.completion_tokens),
                    Some(3),
                    "split {i} {j}"
                );
                assert_eq!(s.text(), "Olá, mundo", "split {i} {j}");
            }
        }
    }

    /// A line longer than an event may be is read the same however it is split: an
    /// oversized `data` line makes its event unreadable (it used to count as a blank
    /// line when it arrived in one chunk, dispatching half an event), while an
    /// oversized comment changes nothing.
    #[test]
    fn oversized_lines_are_read_the_same_whole_or_in_pieces() {
        let big = "x".repeat(MAX_EVENT_BYTES + 10);
        let usage = |p: i64| {
            format!("data: {{\"usage\":{{\"prompt_tokens\":{p},\"completion_tokens\":1}}}}\n")
        };
        let stream = format!(
            "{}data: {big}\n\n{}: {big}\n\n{}\n",
            usage(1),
            usage(2),
            usage(3)
        );
        let whole = {
            let mut s = SseScanner::new();
            s.feed(stream.as_bytes());
            s.finish();
            s
        };
        let pieces = {
            let mut s = SseScanner::new();
            for piece in stream.as_bytes().chunks(4096) {
                s.feed(piece);
            }
            s.finish();
            s
        };
        for s in [&whole, &pieces] {
            assert_eq!(s.usage().map(|u| u.prompt_tokens), Some(3));
            // The first event is too big to read; the others are read.
            assert_eq!(s.events(), 2);
        }
        let first_only = {
            let mut s = SseScanner::new();
            s.feed(format!("{}data: {big}\n\n", usage(1)).as_bytes());
            s.finish();
            s
        };
        assert_eq!(first_only.usage(), None, "half an event is never read");
    }

    #[test]
    fn byte_at_a_time_works() {
        let mut s = SseScanner::new();
        for b in STREAM.as_bytes() {
            s.feed(std::slice::from_ref(b));
        }
        s.finish();
        assert_eq!(s.usage().map(|u| u.prompt_tokens), Some(12));
    }

    #[test]
    fn garbage_does_not_panic_or_invent_usage() {
        let mut s = SseScanner::new();
        s.feed(b"data: {not json\n\ndata: \xff\xfe\n\n\n\n::::\ndata");
        s.finish();
        assert_eq!(s.usage(), None);
    }

    #[test]
    fn json_response_usage() {
        let body = br#"{"choices":[{"message":{"role":"assistant","content":"Oi"}}],"usage":{"prompt_tokens":5,"completion_tokens":1}}"#;
        let a = scan_json_response(body).unwrap_or_default();
        assert_eq!(
            a.usage.map(|u| u.prompt_tokens + u.completion_tokens),
            Some(6)
        );
        assert_eq!(a.text, "Oi");
        let a = scan_json_response(br#"{"data":[],"usage":{"prompt_tokens":7,"total_tokens":7}}"#)
            .unwrap_or_default();
        assert_eq!(
            a.usage.map(|u| (u.prompt_tokens, u.completion_tokens)),
            Some((7, 0))
        );
    }

    /// Content as an array of parts (as some OpenAI-compatible servers answer), and
    /// fields of shapes nobody expected, still give the usage the provider billed.
    #[test]
    fn odd_shapes_keep_the_usage_and_the_text() {
        let parts = br#"{"choices":[{"message":{"role":"assistant","content":[{"type":"text","text":"Ola"},{"type":"image","url":"x"},{"type":"text","text":" mundo"}]}}],"usage":{"prompt_tokens":9,"completion_tokens":2}}"#;
        let a = scan_json_response(parts).unwrap_or_default();
        assert_eq!(
            (a.text.as_str(), a.usage.map(|u| u.completion_tokens)),
            ("Ola mundo", Some(2))
        );
        let odd =
            br#"{"choices":{"0":"x"},"usage":{"prompt_tokens":12.0,"completion_tokens":"3"}}"#;
        let a = scan_json_response(odd).unwrap_or_default();
        assert_eq!(
            a.usage,
            Some(Usage {
                prompt_tokens: 12,
                completion_tokens: 0
            })
        );
        let weird = br#"{"choices":[7,{"message":"hi"},{"message":{"content":{"a":1}},"text":["p"]}],"usage":null}"#;
        assert_eq!(scan_json_response(weird), Some(JsonAnswer::default()));
    }

    /// LiteLLM reports an error met after its 200 as `{"error": ...}`: alone it
    /// generated nothing; after choices, what was generated still counts.
    #[test]
    fn an_error_alone_is_told_apart_from_an_answer() {
        let alone =
            br#"{"error":{"message":"upstream exploded","type":"server_error","code":"500"}}"#;
        assert!(scan_json_response(alone).is_some_and(|a| a.error_only));
        let mut s = SseScanner::new();
        s.feed(b"data: {\"error\":{\"message\":\"boom\"}}\n\ndata: [DONE]\n\n");
        s.finish();
        assert!(s.error_only());
        let mut s = SseScanner::new();
        s.feed(b"data: {\"choices\":[{\"delta\":{\"content\":\"Oi\"}}]}\n\ndata: {\"error\":{\"message\":\"boom\"}}\n\n");
        s.finish();
        assert!(s.error_seen() && !s.error_only());
        assert_eq!(s.text(), "Oi");
    }

    #[test]
    fn a_body_that_is_not_a_json_object_is_not_an_answer() {
        let bodies: [&[u8]; 5] = [
            b"<html>502 Bad Gateway</html>",
            b"",
            b"[1,2]",
            br#""ok""#,
            br#"{"choices": [{"#,
        ];
        for body in bodies {
            assert!(scan_json_response(body).is_none(), "{body:?}");
        }
    }
}
