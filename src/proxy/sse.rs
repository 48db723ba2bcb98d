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

#[derive(Deserialize)]
struct RawUsage {
    prompt_tokens: Option<i64>,
    completion_tokens: Option<i64>,
}

impl RawUsage {
    fn into_usage(self) -> Option<Usage> {
        let prompt_tokens = self.prompt_tokens?.max(0);
        Some(Usage {
            prompt_tokens,
            completion_tokens: self.completion_tokens.unwrap_or(0).max(0),
        })
    }
}

#[derive(Deserialize)]
struct Chunk {
    #[serde(default)]
    usage: Option<RawUsage>,
    #[serde(default)]
    choices: Option<Vec<Choice>>,
}

#[derive(Deserialize)]
struct Choice {
    #[serde(default)]
    delta: Option<Message>,
    #[serde(default)]
    message: Option<Message>,
    #[serde(default)]
    text: Option<String>,
}

#[derive(Deserialize)]
struct Message {
    #[serde(default)]
    content: Option<String>,
    #[serde(default)]
    reasoning_content: Option<String>,
}

/// Longest event kept for parsing; larger ones pass through unparsed.
const MAX_EVENT_BYTES: usize = 1 << 20;
/// Most completion text kept for the fallback estimate.
const MAX_TEXT_BYTES: usize = 8 << 20;

#[derive(Debug, Default)]
pub struct SseScanner {
    line: Vec<u8>,
    /// The current line outgrew `MAX_EVENT_BYTES`; `line` keeps its start, enough
    /// to tell a `data` field from a comment.
    line_truncated: bool,
    data: Vec<u8>,
    has_data: bool,
    oversized: bool,
    after_cr: bool,
    usage: Option<Usage>,
    text: String,
    events: u64,
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

    /// Keeps at most `MAX_EVENT_BYTES` of a line, the same bytes however the line
    /// was split into chunks.
    fn push_line_bytes(&mut self, bytes: &[u8]) {
        let room = MAX_EVENT_BYTES - self.line.len();
        if bytes.len() <= room {
            self.line.extend_from_slice(bytes);
        } else {
            self.line.extend_from_slice(&bytes[..room]);
            self.line_truncated = true;
        }
    }

    fn end_line(&mut self) {
        let line = std::mem::take(&mut self.line);
        let truncated = std::mem::take(&mut self.line_truncated);
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
        if self.has_data && !self.oversized && self.data.as_slice() != b"[DONE]" {
            self.events += 1;
            if let Ok(chunk) = serde_json::from_slice::<Chunk>(&self.data) {
                self.absorb(chunk);
            }
        }
        self.data.clear();
        self.has_data = false;
        self.oversized = false;
    }

    fn absorb(&mut self, chunk: Chunk) {
        if let Some(usage) = chunk.usage.and_then(RawUsage::into_usage) {
            self.usage = Some(usage);
        }
        for choice in chunk.choices.into_iter().flatten() {
            let parts = [
                choice.delta.as_ref().and_then(|d| d.content.as_deref()),
                choice
                    .delta
                    .as_ref()
                    .and_then(|d| d.reasoning_content.as_deref()),
                choice.text.as_deref(),
            ];
            for part in parts.into_iter().flatten() {
                if self.text.len() + part.len() <= MAX_TEXT_BYTES {
                    self.text.push_str(part);
                }
            }
        }
    }
}

/// Usage and text of a non-streamed answer; `None` when the body is not a JSON object.
pub fn scan_json_response(body: &[u8]) -> Option<(Option<Usage>, String)> {
    match serde_json::from_slice::<Chunk>(body) {
        Ok(chunk) => {
            let usage = chunk.usage.and_then(RawUsage::into_usage);
            let mut text = String::new();
            for choice in chunk.choices.into_iter().flatten() {
                let parts = [
                    choice.message.as_ref().and_then(|m| m.content.as_deref()),
                    choice
                        .message
                        .as_ref()
                        .and_then(|m| m.reasoning_content.as_deref()),
                    choice.text.as_deref(),
                ];
                for part in parts.into_iter().flatten() {
                    text.push_str(part);
                }
            }
            Some((usage, text))
        }
        Err(_) => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const STREAM: &str = "data: {\"choices\":[{\"index\":0,\"delta\":{\"content\":\"Olá\"}}]}\n\n\
        : keep-alive\n\n\
        data: {\"choices\":[{\"index\":0,\"delta\":{\"content\":\", mundo\"}}]}\r\n\r\n\
        data: {\"choices\":[{\"index\":0,\"delta\":{}}],\"usage\":{\"prompt_tokens\":12,\"completion_tokens\":3,\"total_tokens\":15}}\r\r\
        data: [DONE]\n\n";

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
        let (usage, text) = scan_json_response(body).unwrap_or_default();
        assert_eq!(
            usage.map(|u| u.prompt_tokens + u.completion_tokens),
            Some(6)
        );
        assert_eq!(text, "Oi");
        let (usage, _) =
            scan_json_response(br#"{"data":[],"usage":{"prompt_tokens":7,"total_tokens":7}}"#)
                .unwrap_or_default();
        assert_eq!(
            usage.map(|u| (u.prompt_tokens, u.completion_tokens)),
            Some((7, 0))
        );
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
