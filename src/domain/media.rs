//! What a provider may bill for inputs the text estimate cannot see (docs/behaviour.md,
//! "What may be billed").

/// The most tokens one image may cost with a model, as its provider documents it,
/// by the model's name (after any `provider/` prefix). An admin may set the figure
/// per model (the dashboard's model weights), as a LiteLLM alias may hide the name.
///
/// - OpenAI's tile-priced models: 85 tokens plus 170 a 512-pixel tile, at most eight
///   tiles (an image is fitted to 2048 by 2048, then its short side to 768): 1,445.
/// - gpt-4o-mini prices the same tiles at 2,833 plus 5,667 each: 48,169.
/// - The patch-priced models (gpt-4.1-mini and -nano, o4-mini, gpt-5-mini and
///   -nano): at most 1,536 patches of 32 pixels, times the model's multiplier (up to
///   2.46 for the nano models): 3,779.
/// - Claude: about width × height / 750 tokens, at most 1.15 megapixels: 1,600; 1,800
///   is kept.
/// - Gemini: 258 tokens a 768-pixel tile (or 1,120 at its highest media
///   resolution); 5,000 is kept.
/// - A name tokengate cannot place (a LiteLLM alias, say): the largest figure above,
///   gpt-4o-mini's, since it may be any of them. An admin sets the real one.
pub fn image_worst_case(model: &str) -> i64 {
    let name = model
        .rsplit('/')
        .next()
        .unwrap_or(model)
        .to_ascii_lowercase();
    let has = |s: &str| name.contains(s);
    if has("gpt-4o-mini") {
        48_169
    } else if has("gpt-4.1-mini")
        || has("gpt-4.1-nano")
        || has("o4-mini")
        || has("gpt-5-mini")
        || has("gpt-5-nano")
    {
        3_779
    } else if has("gpt-4o")
        || has("gpt-4.1")
        || has("gpt-4-turbo")
        || has("gpt-4.5")
        || has("gpt-4-vision")
        || has("gpt-5")
        || name.starts_with("o1")
        || name.starts_with("o3")
    {
        1_445
    } else if has("claude") {
        1_800
    } else if has("gemini") {
        5_000
    } else {
        UNKNOWN_MODEL
    }
}

/// An image sent to a model tokengate cannot place: the most any known one bills.
pub const UNKNOWN_MODEL: i64 = 48_169;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn images_cost_what_the_provider_documents_at_worst() {
        assert_eq!(image_worst_case("gpt-4o"), 1_445);
        assert_eq!(image_worst_case("openai/gpt-4o-2024-08-06"), 1_445);
        assert_eq!(image_worst_case("gpt-4o-mini"), 48_169);
        assert_eq!(image_worst_case("azure/GPT-4o-mini"), 48_169);
        assert_eq!(image_worst_case("gpt-4.1-nano"), 3_779);
        assert_eq!(image_worst_case("anthropic/claude-sonnet-4-5"), 1_800);
        assert_eq!(image_worst_case("gemini-2.5-flash"), 5_000);
        // An alias may hide any model: the most any bills.
        assert_eq!(image_worst_case("IA Solaris Rápido"), 48_169);
    }
}
