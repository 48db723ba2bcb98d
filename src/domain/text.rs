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
pub fn is_joiner(c: char) -> bool {
    matches!(c, '\u{200C}' | '\u{200D}')
}

/// Characters that only choose how the one before them is drawn: Mongolian's
/// free variation selectors and vowel separator, and the variation selectors.
/// Needed in names (an emoji's colour form, Mongolian spelling), never in an address.
pub fn is_variation_selector(c: char) -> bool {
    matches!(c, '\u{180B}'..='\u{180F}' | '\u{FE00}'..='\u{FE0F}' | '\u{E0100}'..='\u{E01EF}')
}

/// The viramas of the Indic scripts (Devanagari to Malayalam, and Sinhala's al-lakuna),
/// after which a joiner at a word's end makes a half form or a chillu.
fn is_virama(c: char) -> bool {
    matches!(
        c,
        '\u{094D}'
            | '\u{09CD}'
            | '\u{0A4D}'
            | '\u{0ACD}'
            | '\u{0B4D}'
            | '\u{0BCD}'
            | '\u{0C4D}'
            | '\u{0CCD}'
            | '\u{0D4D}'
            | '\u{0DCA}'
    )
}

/// Whether `s` shows nothing: only spaces, hidden characters, joiners, variation
/// selectors and the Braille cell with no dots (U+2800).
pub fn is_blank(s: &str) -> bool {
    s.chars().all(|c| {
        c.is_whitespace()
            || c.is_control()
            || is_hidden(c)
            || is_joiner(c)
            || is_variation_selector(c)
            || c == '\u{2800}'
    })
}

/// The tag characters of an England, Scotland or Wales flag after its black flag
/// (U+1F3F4): two to six tag letters and the cancel tag. How many, if `rest` starts
/// with one; any other run of tags is hidden text.
fn subdivision_tags(rest: &[char]) -> Option<usize> {
    let letters = rest
        .iter()
        .take_while(|c| matches!(c, '\u{E0020}'..='\u{E007E}'))
        .count();
    ((2..=6).contains(&letters) && rest.get(letters) == Some(&'\u{E007F}')).then_some(letters + 1)
}

/// `s` without hidden characters (`is_hidden`), and without the joiners except
/// between two letters or signs outside ASCII, where emoji sequences and Persian,
/// Indic and Sinhala text need them, or after a virama at a word's end (a half form,
/// a chillu): "Ad\u{200C}min" would otherwise show as "Admin", and a name of joiners
/// alone as nothing. A subdivision flag keeps its tags.
pub fn without_hidden(s: &str) -> String {
    let chars: Vec<char> = s.chars().collect();
    let joinable = |c: Option<char>| {
        c.is_some_and(|c| {
            !c.is_ascii() && !c.is_whitespace() && !c.is_control() && !is_joiner(c) && !is_hidden(c)
        })
    };
    let mut out = String::with_capacity(s.len());
    let mut i = 0;
    while let Some(&c) = chars.get(i) {
        let rest = chars.get(i + 1..).unwrap_or_default();
        if c == '\u{1F3F4}'
            && let Some(tags) = subdivision_tags(rest)
        {
            out.extend(chars.iter().skip(i).take(tags + 1));
            i += tags + 1;
            continue;
        }
        i += 1;
        if is_hidden(c) {
            continue;
        }
        if is_joiner(c) {
            let before = out.chars().last();
            let after = rest.iter().copied().find(|c| !is_hidden(*c));
            let joins = joinable(before) && joinable(after);
            let half_form = before.is_some_and(is_virama) && !joinable(after);
            if !(joins || half_form) {
                continue;
            }
        }
        out.push(c);
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
