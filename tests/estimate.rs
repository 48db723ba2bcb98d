//! The prompt estimator against OpenAI's o200k tokenizer: it may read high on every
//! kind of real text, and reads low only on random strings, within a known bound.

use tokengate::proxy::estimate::count_text;

fn o200k(text: &str) -> usize {
    tiktoken_rs::o200k_base_singleton()
        .encode_ordinary(text)
        .len()
}

fn ratio(text: &str) -> f64 {
    count_text(text) as f64 / o200k(text) as f64
}

/// A deterministic generator, so a failure can be reproduced.
struct Lcg(u64);
impl Lcg {
    fn next(&mut self) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        self.0 >> 33
    }
    fn pick(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

fn natural_texts() -> Vec<(&'static str, String)> {
    let tools = serde_json::json!([{"type": "function", "function": {
        "name": "get_weather", "description": "Get the current weather for a city",
        "parameters": {"type": "object", "properties": {
            "city": {"type": "string", "description": "City name, e.g. São Paulo"},
            "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]}},
            "required": ["city"]}}}]);
    vec![
        (
            "pt-BR",
            include_str!("fixtures/estimate/pt-BR.txt").to_owned(),
        ),
        (
            "English (docs/behaviour.md)",
            include_str!("../docs/behaviour.md").to_owned(),
        ),
        (
            "German",
            include_str!("fixtures/estimate/de.txt").to_owned(),
        ),
        (
            "Russian",
            include_str!("fixtures/estimate/ru.txt").to_owned(),
        ),
        (
            "Chinese",
            include_str!("fixtures/estimate/zh.txt").to_owned(),
        ),
        (
            "Korean",
            include_str!("fixtures/estimate/ko.txt").to_owned(),
        ),
        ("Rust", include_str!("../src/proxy/mod.rs").to_owned()),
        ("TOML", include_str!("../Cargo.toml").to_owned()),
        ("JSON tools", tools.to_string().repeat(10)),
    ]
}

#[test]
fn reads_slightly_high_on_real_text() {
    for (name, text) in natural_texts() {
        let r = ratio(&text);
        eprintln!("{name}: estimate/o200k = {r:.2}");
        assert!(
            (1.0..=1.6).contains(&r),
            "{name}: estimate/o200k = {r:.2}, outside 1.0..=1.6"
        );
    }
}

#[test]
fn single_paragraphs_stay_close() {
    for (name, text) in natural_texts() {
        for para in text.split("\n\n").filter(|p| p.len() >= 200) {
            let r = ratio(para);
            assert!(
                (0.8..=2.0).contains(&r),
                "{name}: a paragraph reads {r:.2}: {para:.80}"
            );
        }
    }
}

#[test]
fn random_strings_read_low_but_not_below_half() {
    let mut rng = Lcg(7);
    let alnum: Vec<char> = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789+/"
        .chars()
        .collect();
    let base64: String = (0..8000).map(|_| alnum[rng.pick(alnum.len())]).collect();
    let cjk: String = (0..2000)
        .map(|_| char::from_u32(0x4e00 + rng.pick(0x51ff) as u32).unwrap_or('一'))
        .collect();
    let numbers: String = (0..1000)
        .map(|_| rng.next().to_string())
        .collect::<Vec<_>>()
        .join(" ");
    let emoji = "😀🎉👍🏽🚀❤️ ".repeat(200);
    for (name, text) in [
        ("base64", base64),
        ("random CJK", cjk),
        ("numbers", numbers),
        ("emoji", emoji),
    ] {
        let r = ratio(&text);
        eprintln!("{name}: estimate/o200k = {r:.2}");
        assert!(r >= 0.5, "{name}: estimate/o200k = {r:.2}, below 0.5");
    }
}

/// `count` characters drawn from `chars`.
fn random_text(rng: &mut Lcg, chars: &[char], count: usize) -> String {
    (0..count).map(|_| chars[rng.pick(chars.len())]).collect()
}

/// Random characters of every block of the Basic Multilingual Plane past ASCII,
/// 256 code points at a time, and of the planes above: the estimate reads at least
/// half of o200k's count, a third for the rarest CJK ideographs and Hangul
/// syllables (which it counts as natural text, one a character).
#[test]
fn random_characters_of_every_script_read_at_least_half() {
    let mut rng = Lcg(11);
    let mut worst = (f64::MAX, 0u32);
    let starts = (0x80..0xd800)
        .chain(0xe000..0x1_0000)
        .step_by(256)
        .chain([0x1_0000, 0x1_0300, 0x1_d400, 0x1_f300, 0x1_f600, 0x1_f900])
        .chain([0x2_0000, 0x2_a700, 0xe_0000, 0xf_0000]);
    for start in starts {
        let chars: Vec<char> = (start..start + 256)
            .filter_map(char::from_u32)
            .filter(|c| !c.is_control())
            .collect();
        let text = random_text(&mut rng, &chars, 1000);
        let r = ratio(&text);
        let han_or_hangul = (0x4e00..0xa000).contains(&start) || (0xac00..0xd800).contains(&start);
        let floor = if han_or_hangul { 1.0 / 3.0 } else { 0.5 };
        assert!(
            r >= floor,
            "U+{start:04X}..: estimate/o200k = {r:.2}, below {floor:.2}"
        );
        if r < worst.0 && !han_or_hangul {
            worst = (r, start);
        }
    }
    eprintln!(
        "lowest outside CJK and Hangul: {:.2} at U+{:04X}",
        worst.0, worst.1
    );
}

/// Random letters split into words of natural length: o200k has no merges for
/// them either.
#[test]
fn random_words_read_at_least_two_fifths() {
    let mut rng = Lcg(5);
    for (name, range) in [
        ("Latin-1", 0xc0..0x100),
        ("Latin Extended", 0x100..0x250),
        ("Cyrillic", 0x400..0x460),
        ("Greek", 0x391..0x3ca),
        ("Arabic", 0x621..0x64b),
    ] {
        let letters: Vec<char> = range.filter_map(char::from_u32).collect();
        let words: Vec<String> = (0..300)
            .map(|_| {
                let len = 3 + rng.pick(6);
                random_text(&mut rng, &letters, len)
            })
            .collect();
        let r = ratio(&words.join(" "));
        eprintln!("{name} words: estimate/o200k = {r:.2}");
        assert!(r >= 0.4, "{name} words: estimate/o200k = {r:.2}");
    }
}
