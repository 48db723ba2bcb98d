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
