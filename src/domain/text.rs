//! What free text from outside may not carry into what tokengate shows.

/// Characters that show nothing or change how what is around them shows: direction
/// controls (`is_bidi_control`), and invisible ones (zero-width space, word joiner
/// and the invisible operators, byte order mark, soft hyphen, Mongolian vowel
/// separator, Hangul fillers) that let a name look blank or like another. The joiners
/// U+200C and U+200D stay: emoji and several scripts need them.
pub fn is_hidden(c: char) -> bool {
    is_bidi_control(c)
        || matches!(
            c,
            '\u{200B}' | '\u{2060}'
                ..='\u{2064}'
                    | '\u{FEFF}'
                    | '\u{00AD}'
                    | '\u{180E}'
                    | '\u{115F}'
                    | '\u{1160}'
                    | '\u{3164}'
                    | '\u{FFA0}'
        )
}

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
