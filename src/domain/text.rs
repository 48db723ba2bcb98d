//! What free text from outside may not carry into what tokengate shows.

/// Characters that show nothing or change how what is around them shows: direction
/// controls (`is_bidi_control`), and invisible ones (zero-width space, word joiner
/// and the invisible operators, byte order mark, soft hyphen, combining grapheme
/// joiner, Khmer inherent vowels, Hangul fillers, the deprecated format controls,
/// interlinear annotation marks, musical formatting, tag characters) that let a name
/// look blank or like another, or hide text. Mongolian's vowel separator and
/// variation selectors stay (the script's spelling needs them); the joiners follow
/// `without_hidden`'s rule.
pub fn is_hidden(c: char) -> bool {
    is_bidi_control(c)
        || matches!(
            c,
            '\u{200B}'
                | '\u{2060}'..='\u{2065}'
                | '\u{206A}'..='\u{206F}'
                | '\u{FEFF}'
                | '\u{00AD}'
                | '\u{034F}'
                | '\u{17B4}'
                | '\u{17B5}'
                | '\u{115F}'
                | '\u{1160}'
                | '\u{3164}'
                | '\u{FFA0}'
                | '\u{FFF9}'..='\u{FFFB}'
                | '\u{1D173}'..='\u{1D17A}'
                | '\u{E0000}'..='\u{E007F}'
        )
}

/// The zero-width non-joiner and joiner (U+200C, U+200D).
fn is_joiner(c: char) -> bool {
    matches!(c, '\u{200C}' | '\u{200D}')
}

/// `s` without hidden characters (`is_hidden`), and without the joiners except
/// between two letters or signs outside ASCII, where emoji sequences and Persian,
/// Indic and Sinhala text need them: "Ad\u{200C}min" would otherwise show as
/// "Admin", and a name of joiners alone as nothing.
pub fn without_hidden(s: &str) -> String {
    let kept: Vec<char> = s.chars().filter(|c| !is_hidden(*c)).collect();
    let joinable =
        |c: Option<&char>| c.is_some_and(|c| !c.is_ascii() && !c.is_whitespace() && !is_joiner(*c));
    let mut out = String::with_capacity(s.len());
    for (i, c) in kept.iter().enumerate() {
        if is_joiner(*c) && !(joinable(out.chars().last().as_ref()) && joinable(kept.get(i + 1))) {
            continue;
        }
        out.push(*c);
    }
    out
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
