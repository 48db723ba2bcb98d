//! What free text from outside may not carry into what tokengate shows.

/// Characters that change the direction text is shown in (the embeddings,
/// overrides and isolates U+202A..U+202E and U+2066..U+2069, and the marks U+061C,
/// U+200E, U+200F): in a name or a note they could make a line read as something
/// else, in the dashboard and in mails.
pub fn is_bidi_control(c: char) -> bool {
    matches!(
        c,
        '\u{202A}'..='\u{202E}' | '\u{2066}'..='\u{2069}' | '\u{061C}' | '\u{200E}' | '\u{200F}'
    )
}
