//! Prompt token estimates in one pass over the bytes, never a network call. They size
//! the reservation; the charge uses the usage upstream reports.
//!
//! Why not a real tokenizer: o200k_base through tiktoken-rs costs about 46 MiB of
//! tables and 150 ns a token, so about 630 µs of CPU for the 4,000-token history
//! LibreChat sends with every message. That was the largest cost per request and
//! most of the memory budget (BENCHMARKS.md). The tokenizer is also only exact for
//! OpenAI's models: Claude, Gemini or Llama behind LiteLLM count differently anyway.
//!
//! The estimate imitates o200k's pre-tokenizer (words split at a capital after a
//! small letter, numbers in groups of three, runs of punctuation, newlines) and
//! charges a word one token plus one per five further letters. Against o200k (checked
//! by `tests/estimate.rs`) it reads 1.1 to 1.6 times the real count on natural text
//! in Portuguese, English, German, Russian, Chinese and Korean, and on code and JSON
//! (single paragraphs down to 0.8): slightly high, which only blocks a nearly empty
//! balance a little early. Random strings read lower, as o200k has no merges for
//! them: at least half for random characters of any script, two fifths for random
//! letters cut into words, a third for random rare CJK ideographs and Hangul. Scripts
//! it is not calibrated for count at the most o200k takes for a random character of
//! their block, so they never read low. What reading low can cost is bounded: the
//! prompt error of the requests in flight when a balance runs out, charged as debt
//! against the user's credits.

use serde::de::value::{MapAccessDeserializer, SeqAccessDeserializer};
use serde::de::{Deserialize, DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::Value;
use std::fmt;

/// Tokens per message for role and separators, as OpenAI counts them.
const PER_MESSAGE: i64 = 3;
/// Tokens that prime the assistant's reply.
const REPLY_PRIMING: i64 = 3;
/// Audio input, at the most a provider bills for it: tokens per second of sound
/// (Gemini's 32; OpenAI's audio models count fewer), over the fewest bytes a second
/// of sound can take (Opus at 6 kbit/s).
const AUDIO_TOKENS_PER_SECOND: i64 = 32;
const AUDIO_MIN_BYTES_PER_SECOND: i64 = 750;
/// Letters per extra token of a word: one token for the first letter, one more for
/// every five after it (calibrated against o200k, see `tests/estimate.rs`).
const LETTERS_PER_TOKEN: usize = 5;
/// Digits per token: o200k splits numbers into groups of at most three.
const DIGITS_PER_TOKEN: usize = 3;
/// Punctuation characters per token.
const PUNCT_PER_TOKEN: usize = 2;

/// What a byte starts, for the scanner.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Class {
    Lower,
    Upper,
    Digit,
    Blank,
    Newline,
    Punct,
    /// Lead byte of a Latin-1 sign (U+0080..U+00BF: no-break space, «, °, ©):
    /// o200k has a token for each.
    Sign2,
    /// Lead byte of a two-byte Latin letter (U+00C0..U+027F: á, ç, ñ, ß, ł, ș, ơ).
    Latin2,
    /// Lead byte of a Greek, Cyrillic, Hebrew or Arabic letter.
    Other2,
    /// Lead byte of another two-byte character (IPA, combining marks, Armenian,
    /// Syriac, Thaana, N'Ko): a token a byte.
    Rare2,
    /// Lead byte of a three-byte character (CJK, Hangul, Thai, Indic, symbols).
    Lead3,
    /// Lead byte of a four-byte character (emoji and rare scripts).
    Lead4,
    /// Continuation bytes, control characters and invalid lead bytes.
    Rest,
}

const CLASSES: [Class; 256] = {
    let mut t = [Class::Rest; 256];
    let mut b = 0usize;
    while b < 256 {
        let c = b as u8;
        t[b] = match c {
            b'a'..=b'z' => Class::Lower,
            b'A'..=b'Z' => Class::Upper,
            b'0'..=b'9' => Class::Digit,
            b' ' | b'\t' => Class::Blank,
            b'\n' | b'\r' => Class::Newline,
            0x21..=0x2f | 0x3a..=0x40 | 0x5b..=0x60 | 0x7b..=0x7e => Class::Punct,
            0xc2 => Class::Sign2,
            0xc3..=0xc9 => Class::Latin2,
            0xce..=0xd3 | 0xd6..=0xdb => Class::Other2,
            0xca..=0xcd | 0xd4 | 0xd5 | 0xdc..=0xdf => Class::Rare2,
            0xe0..=0xef => Class::Lead3,
            0xf0..=0xf4 => Class::Lead4,
            _ => Class::Rest,
        };
        b += 1;
    }
    t
};

/// Letters of Greek, Cyrillic, Hebrew or Arabic in one unbroken run past which
/// each costs a token: natural words are shorter, and o200k reads a long run of
/// random letters at one to two tokens each.
const NATURAL_RUN: usize = 16;

/// Tokens of a three-byte character. The scripts the estimate is calibrated for on
/// natural text cost one: general punctuation (curly quotes, dashes, bullets), CJK
/// punctuation and kana, the common CJK ideographs, Hangul syllables, variation
/// selectors and full-width forms. Any other costs the most o200k reads a random
/// string of its block at: two for Indic scripts, Thai, Myanmar, Georgian,
/// Vietnamese letters, math and box drawing; three, a token a byte (the most a
/// byte-level tokenizer can take), for the rest (Braille, Yi, private use...).
fn three_byte_tokens(lead: u8, second: u8) -> usize {
    // The code point divided by 64.
    let block = (u32::from(lead & 0x0f) << 6) | u32::from(second & 0x3f);
    match block {
        0x80..=0x81 // U+2000..U+207F
        | 0xc0..=0xc3 // U+3000..U+30FF
        | 0x138..=0x27f // U+4E00..U+9FFF
        | 0x2b0..=0x35e // U+AC00..U+D7BF
        | 0x3f8 // U+FE00..U+FE3F
        | 0x3fc..=0x3ff // U+FF00..U+FFFF
        => 1,
        0x24..=0x43 // U+0900..U+10FF
        | 0x78..=0x7b // U+1E00..U+1EFF
        | 0x82..=0x8b // U+2080..U+22FF
        | 0x94..=0x97 // U+2500..U+25FF
        => 2,
        _ => 3,
    }
}

/// Tokens of a four-byte character: an emoji (U+1F000 and up) two, as o200k
/// mostly reads them; anything else a token a byte.
fn four_byte_tokens(second: u8) -> usize {
    if second == 0x9f { 2 } else { 4 }
}

fn div_ceil(n: usize, d: usize) -> usize {
    n.div_ceil(d)
}

fn word_tokens(letters: usize) -> usize {
    if letters == 0 {
        0
    } else {
        1 + (letters - 1) / LETTERS_PER_TOKEN
    }
}

/// Estimated tokens of a text.
/// One message of `text` with its role and separators, as a whole prompt (the
/// reply's priming included): a Responses API `input` given as a string.
pub fn single_message(text: &str) -> i64 {
    REPLY_PRIMING
        .saturating_add(PER_MESSAGE)
        .saturating_add(count_text(text))
}

/// A message of `text` added to a prompt: the Responses API's `instructions`.
pub fn extra_message(text: &str) -> i64 {
    PER_MESSAGE.saturating_add(count_text(text))
}

pub fn count_text(text: &str) -> i64 {
    let b = text.as_bytes();
    let n = b.len();
    let mut tokens = 0usize;
    let mut i = 0usize;
    let mut after_blank = false;
    while i < n {
        let class = CLASSES[usize::from(b[i])];
        let was_blank = after_blank;
        after_blank = false;
        match class {
            Class::Lower | Class::Upper | Class::Latin2 => {
                // A word. A leading blank joins it, as in o200k; a capital after a
                // small letter starts a new piece ("camelCase" is two). Past two
                // accented letters in a row ("ção"), each costs a token of its own:
                // natural words seldom have three, random strings little else.
                let mut letters = 0usize;
                let mut prev_lower = false;
                let mut accented_run = 0usize;
                while i < n {
                    let (width, upper, accented) = match CLASSES[usize::from(b[i])] {
                        Class::Lower => (1, false, false),
                        Class::Upper => (1, true, false),
                        Class::Latin2 => (2, false, true),
                        _ => break,
                    };
                    if upper && prev_lower {
                        tokens += word_tokens(letters);
                        letters = 0;
                    }
                    accented_run = if accented { accented_run + 1 } else { 0 };
                    if accented_run > 2 {
                        tokens += 1;
                    } else {
                        letters += 1;
                    }
                    prev_lower = !upper;
                    i += width;
                }
                tokens += word_tokens(letters);
            }
            Class::Digit => {
                let start = i;
                while i < n && CLASSES[usize::from(b[i])] == Class::Digit {
                    i += 1;
                }
                // A blank before a number is a token of its own.
                tokens += div_ceil(i - start, DIGITS_PER_TOKEN) + usize::from(was_blank);
            }
            Class::Blank => {
                let start = i;
                while i < n && CLASSES[usize::from(b[i])] == Class::Blank {
                    i += 1;
                }
                // One blank joins the next word; a run (indentation), or blanks that
                // end the text, are a token.
                tokens += usize::from(i - start > 1 || i == n);
                after_blank = true;
            }
            Class::Newline => {
                while i < n && CLASSES[usize::from(b[i])] == Class::Newline {
                    i += 1;
                }
                tokens += 1;
            }
            Class::Punct => {
                let start = i;
                while i < n && CLASSES[usize::from(b[i])] == Class::Punct {
                    i += 1;
                }
                tokens += div_ceil(i - start, PUNCT_PER_TOKEN);
            }
            Class::Sign2 => {
                tokens += 1;
                i += 2;
            }
            Class::Other2 => {
                // Letters of Greek, Cyrillic, Hebrew or Arabic: about 2.7 a token in
                // words, one each past a natural word's length.
                let mut letters = 0usize;
                while i < n && CLASSES[usize::from(b[i])] == Class::Other2 {
                    letters += 1;
                    i += 2;
                }
                let worded = letters.min(NATURAL_RUN);
                tokens += div_ceil(worded * 3, 8) + (letters - worded);
            }
            Class::Rare2 => {
                tokens += 2;
                i += 2;
            }
            Class::Lead3 => {
                let second = b.get(i + 1).copied().unwrap_or(0);
                tokens += three_byte_tokens(b[i], second);
                i += 3;
            }
            Class::Lead4 => {
                let second = b.get(i + 1).copied().unwrap_or(0);
                tokens += four_byte_tokens(second);
                i += 4;
            }
            Class::Rest => {
                tokens += 1;
                i += 1;
            }
        }
    }
    i64::try_from(tokens).unwrap_or(i64::MAX)
}

/// Fields of a chat request that the model reads besides `messages`, counted as
/// their compact JSON text.
pub const DEFINITION_FIELDS: [&str; 3] = ["tools", "functions", "response_format"];

/// Tokens of one of `DEFINITION_FIELDS`.
pub fn definitions(v: &Value) -> i64 {
    count_text(&v.to_string())
}

/// A chat's `messages`, estimated while they are read, without building a tree of
/// the conversation: each message costs `PER_MESSAGE` plus its fields (`content`
/// as text or parts; any other string as text; anything else as its JSON text), and
/// the reply `REPLY_PRIMING`. Anything in the array that is not an object costs only
/// `PER_MESSAGE`. Deserializing checks the JSON as `Value` would.
#[derive(Debug, Default)]
pub struct Messages {
    pub tokens: i64,
    pub count: usize,
    /// Image parts: their cost depends on the model, so the reservation prices them
    /// (`media::image_tokens`).
    pub images: i64,
    /// File parts that name a file kept at the provider (`file_id`, `file_url`)
    /// instead of carrying it: nothing here tells what the provider bills for them.
    pub stored_files: i64,
    /// A `cache_control` (of a message or a part) that keeps content at the
    /// provider for longer than an hour (`unreservable::long_cache`).
    pub long_cache: bool,
    /// The first part the provider bills in a way its size does not tell (a file
    /// read by pages, a video by its length, an image it fetches itself), by type.
    pub apart: Option<String>,
}

impl<'de> Deserialize<'de> for Messages {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Messages;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an array of messages")
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Messages, A::Error> {
                let mut m = Messages {
                    tokens: REPLY_PRIMING,
                    ..Messages::default()
                };
                while let Some(Message(counted)) = seq.next_element()? {
                    m.tokens = m
                        .tokens
                        .saturating_add(PER_MESSAGE.saturating_add(counted.tokens));
                    m.images = m.images.saturating_add(counted.images);
                    m.stored_files = m.stored_files.saturating_add(counted.stored_files);
                    m.long_cache |= counted.long_cache;
                    m.apart = m.apart.or(counted.apart);
                    m.count += 1;
                }
                Ok(m)
            }
        }
        d.deserialize_seq(V)
    }
}

/// One element of `messages`: what it costs (nothing unless it is an object).
struct Message(Counted);

impl<'de> Deserialize<'de> for Message {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Message;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a message")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Message, A::Error> {
                let mut total = Counted::default();
                // A key sent twice is counted twice: only ever an over-estimate.
                while let Some(key) = map.next_key()? {
                    match key {
                        MessageKey::Type => {
                            let kind = map.next_value::<Value>()?;
                            // The Responses API's reference to an item kept at the
                            // provider: billed at a size not seen here.
                            if kind == "item_reference" {
                                total.stored_files += 1;
                            }
                            total.add(Counted::text(definitions(&kind)));
                        }
                        MessageKey::Content => {
                            total.add(map.next_value_seed(Counting { content: true })?);
                        }
                        MessageKey::CacheControl => {
                            let control = map.next_value::<Value>()?;
                            total.long_cache |= super::unreservable::long_cache(Some(&control));
                            total.add(Counted::text(definitions(&control)));
                        }
                        MessageKey::Other => {
                            total.add(map.next_value_seed(Counting { content: false })?);
                        }
                    }
                }
                Ok(Message(total))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<Message, A::Error> {
                Value::deserialize(SeqAccessDeserializer::new(seq))
                    .map(|_| Message(Counted::default()))
            }
            fn visit_bool<E>(self, _: bool) -> Result<Message, E> {
                Ok(Message(Counted::default()))
            }
            fn visit_i64<E>(self, _: i64) -> Result<Message, E> {
                Ok(Message(Counted::default()))
            }
            fn visit_u64<E>(self, _: u64) -> Result<Message, E> {
                Ok(Message(Counted::default()))
            }
            fn visit_f64<E>(self, _: f64) -> Result<Message, E> {
                Ok(Message(Counted::default()))
            }
            fn visit_str<E>(self, _: &str) -> Result<Message, E> {
                Ok(Message(Counted::default()))
            }
            fn visit_unit<E>(self) -> Result<Message, E> {
                Ok(Message(Counted::default()))
            }
        }
        d.deserialize_any(V)
    }
}

/// What a message's key is to the count: its `type`; what it carries (`content`, or
/// a Responses API tool result's `output`, which may hold images and files too); or
/// anything else.
enum MessageKey {
    Type,
    Content,
    CacheControl,
    Other,
}

impl<'de> Deserialize<'de> for MessageKey {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = MessageKey;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string")
            }
            fn visit_str<E>(self, v: &str) -> Result<MessageKey, E> {
                Ok(match v {
                    "type" => MessageKey::Type,
                    "content" | "output" => MessageKey::Content,
                    "cache_control" => MessageKey::CacheControl,
                    _ => MessageKey::Other,
                })
            }
        }
        d.deserialize_str(V)
    }
}

/// What a message field costs: text tokens, images (priced per model later), and
/// files kept at the provider (which cannot be priced).
#[derive(Default)]
struct Counted {
    tokens: i64,
    images: i64,
    stored_files: i64,
    long_cache: bool,
    apart: Option<String>,
}

impl Counted {
    fn text(tokens: i64) -> Self {
        Self {
            tokens,
            ..Self::default()
        }
    }

    fn add(&mut self, other: Counted) {
        self.tokens = self.tokens.saturating_add(other.tokens);
        self.images = self.images.saturating_add(other.images);
        self.stored_files = self.stored_files.saturating_add(other.stored_files);
        self.long_cache |= other.long_cache;
        if self.apart.is_none() {
            self.apart = other.apart;
        }
    }
}

/// Counts a message field: strings as text, `null` as nothing, `content` parts as
/// `content_parts` does, anything else as its JSON text.
struct Counting {
    content: bool,
}

impl<'de> DeserializeSeed<'de> for Counting {
    type Value = Counted;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Counted, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Counting {
    type Value = Counted;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a message field")
    }
    fn visit_str<E>(self, v: &str) -> Result<Counted, E> {
        Ok(Counted::text(count_text(v)))
    }
    fn visit_unit<E>(self) -> Result<Counted, E> {
        Ok(Counted::default())
    }
    fn visit_bool<E>(self, v: bool) -> Result<Counted, E> {
        Ok(Counted::text(definitions(&Value::from(v))))
    }
    fn visit_i64<E>(self, v: i64) -> Result<Counted, E> {
        Ok(Counted::text(definitions(&Value::from(v))))
    }
    fn visit_u64<E>(self, v: u64) -> Result<Counted, E> {
        Ok(Counted::text(definitions(&Value::from(v))))
    }
    fn visit_f64<E>(self, v: f64) -> Result<Counted, E> {
        Ok(Counted::text(definitions(&Value::from(v))))
    }
    fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<Counted, A::Error> {
        let v = Value::deserialize(SeqAccessDeserializer::new(seq))?;
        Ok(if self.content {
            content_parts(&v)
        } else {
            Counted::text(definitions(&v))
        })
    }
    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Counted, A::Error> {
        let v = Value::deserialize(MapAccessDeserializer::new(map))?;
        Ok(if self.content {
            // One part on its own (a computer tool's screenshot).
            content_parts(&Value::Array(vec![v]))
        } else {
            Counted::text(definitions(&v))
        })
    }
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

/// What a `content` array costs. Only what its size prices is priced: text parts as
/// text, an image sent inline (`data:image/...`) at the most the model bills for
/// one (counted here, priced with the model), audio at the most its size allows.
/// A file named at the provider is counted apart (`stored_files`); any other part
/// is billed in a way its size does not tell, and is named in `apart`: a document
/// (billed by its pages: a 7 KB PDF of a hundred pages bills as much as 160,000
/// tokens), a video or audio by their length, an image the provider fetches from
/// an address (which may be a PDF or a video), a type nobody here knows.
fn content_parts(v: &Value) -> Counted {
    let mut total = Counted::default();
    let Value::Array(parts) = v else {
        return Counted::text(count_text(&v.to_string()));
    };
    for part in parts {
        total.long_cache |= super::unreservable::long_cache(part.get("cache_control"));
        let kind = part.get("type").and_then(Value::as_str);
        match kind {
            Some("text" | "input_text" | "output_text" | "refusal") => total.add(Counted::text(
                part.get("text")
                    .and_then(Value::as_str)
                    .map_or(0, count_text),
            )),
            Some("image_url" | "input_image" | "image" | "computer_screenshot")
                if inline_image(part) =>
            {
                total.images += 1;
            }
            Some("input_audio") => {
                let data = part
                    .pointer("/input_audio/data")
                    .and_then(Value::as_str)
                    .unwrap_or_default();
                total.add(Counted::text(audio_tokens(data.len())));
            }
            Some("file" | "input_file") if is_stored_file(part) => total.stored_files += 1,
            other => {
                if total.apart.is_none() {
                    total.apart = Some(other.unwrap_or("?").chars().take(40).collect());
                }
                total.add(Counted::text(count_text(&part.to_string())));
            }
        }
    }
    total
}

/// An image part that carries its image: a `data:` URL of a picture format (the
/// Chat Completions and Responses shapes, a screenshot), or Anthropic's base64
/// source. An address the provider would fetch itself is not one.
fn inline_image(part: &Value) -> bool {
    let url = part
        .get("image_url")
        .and_then(|u| u.as_str().or_else(|| u.get("url").and_then(Value::as_str)));
    let picture = |mime: &str| {
        matches!(
            mime.to_ascii_lowercase().as_str(),
            "image/png" | "image/jpeg" | "image/jpg" | "image/gif" | "image/webp"
        )
    };
    match url {
        Some(url) => url
            .strip_prefix("data:")
            .and_then(|rest| rest.split_once(";base64,"))
            .is_some_and(|(mime, _)| picture(mime)),
        None => {
            part.pointer("/source/type").and_then(Value::as_str) == Some("base64")
                && part
                    .pointer("/source/media_type")
                    .and_then(Value::as_str)
                    .is_some_and(picture)
        }
    }
}

/// A file part that names a file (`file_id`, `file_url`), in the Chat Completions
/// shape (`{"type": "file", "file": {...}}`) or the Responses one (`{"type":
/// "input_file", ...}`): whatever `file_data` it also carries, the provider may bill
/// the file it names.
fn is_stored_file(part: &Value) -> bool {
    let file = part.get("file").unwrap_or(part);
    let has = |key: &str| file.get(key).is_some_and(|v| !v.is_null());
    has("file_id") || has("file_url")
}

/// The most tokens a provider bills for audio sent as `base64_len` characters of
/// base64: as many seconds as the fewest bytes per second allow.
pub fn audio_tokens(base64_len: usize) -> i64 {
    let bytes = i64::try_from(base64_len / 4 * 3).unwrap_or(i64::MAX);
    let seconds =
        (bytes.saturating_add(AUDIO_MIN_BYTES_PER_SECOND - 1) / AUDIO_MIN_BYTES_PER_SECOND).max(1);
    seconds.saturating_mul(AUDIO_TOKENS_PER_SECOND)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn counts_words_numbers_and_punctuation_like_o200k() {
        assert_eq!(count_text(""), 0);
        // o200k: "Hello", " world", "!" = 3.
        assert_eq!(count_text("Hello world!"), 3);
        // Groups of three digits; the blank before a number is its own token.
        assert_eq!(count_text("1234567"), 3);
        assert_eq!(count_text("a 123"), 3);
        // A capital after a small letter starts a new piece.
        assert_eq!(count_text("camelCase"), 2);
        // Accented letters belong to the word; long words cost more.
        assert_eq!(count_text("ação"), 1);
        // Three accented letters in a row are not a natural word.
        assert_eq!(count_text("ÀÑÿþ"), 3);
        assert_eq!(count_text("fotovoltaica"), 3);
        // Trailing blanks are a token of their own.
        assert_eq!(count_text("oi "), 2);
        // Emoji cost two, CJK characters one.
        assert_eq!(count_text("😀"), 2);
        assert_eq!(count_text("你好"), 2);
    }

    #[test]
    fn never_reads_past_the_end_of_a_truncated_character() {
        // Every prefix that ends on a char boundary, including inside long runs.
        let text = "Olá, 世界! Привет 😀 12ab";
        for (i, _) in text.char_indices() {
            assert!(count_text(&text[..i]) >= 0);
        }
    }

    #[test]
    fn counts_messages_with_overhead() {
        let body = json!([{"role": "user", "content": "Hello world"}]).to_string();
        let n = serde_json::from_str::<Messages>(&body).map_or(0, |m| m.tokens);
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
