//! What a provider may bill for inputs the text estimate cannot see (SPEC section 5,
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
/// - Anything else, Claude (about 1,600 at its largest) and Gemini among them:
///   `UNKNOWN_MODEL`, a figure above every documented one but gpt-4o-mini's.
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
    } else {
        UNKNOWN_MODEL
    }
}

/// An image sent to a model tokengate knows nothing about.
pub const UNKNOWN_MODEL: i64 = 5_000;

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
        assert_eq!(image_worst_case("claude-3-5-sonnet"), UNKNOWN_MODEL);
        assert_eq!(image_worst_case("IA Solaris Rápido"), UNKNOWN_MODEL);
    }
}
