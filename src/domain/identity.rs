//! Who is calling: parsed from the headers LibreChat fills in (docs/behaviour.md).

use super::text;
use base64::Engine;
use std::fmt;

/// LibreChat's user id (a 24-hex Mongo id in practice). Accepts 1-128 visible ASCII
/// characters so other OpenAI clients that send a `user` still work, and nothing that
/// could smuggle whitespace or control characters into logs or emails.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct UserKey(String);

impl UserKey {
    pub const MAX_LEN: usize = 128;

    pub fn parse(raw: &str) -> Result<Self, IdentityError> {
        let s = raw.trim();
        if s.is_empty() || is_placeholder(s) {
            return Err(IdentityError::Missing);
        }
        if s.len() > Self::MAX_LEN || !s.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(IdentityError::InvalidUserId);
        }
        Ok(Self(s.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for UserKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// An email address that is safe to put in a mail header: one `@`, no whitespace or
/// control characters (so no CRLF injection), at most 254 bytes, lower-cased.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Email(String);

impl Email {
    pub fn parse(raw: &str) -> Result<Self, IdentityError> {
        // Checked as stored: lowercasing can lengthen a string (U+023E 'Ⱦ' is two bytes,
        // its lowercase 'ⱦ' three), and the limit is on what is kept and mailed to.
        // Whatever a paste brought around it (a byte order mark, a zero-width
        // space) goes; inside an address it is refused below.
        let unseen =
            |c: char| text::is_hidden(c) || text::is_joiner(c) || text::is_variation_selector(c);
        let s = raw
            .trim_matches(|c: char| c.is_whitespace() || unseen(c))
            .to_lowercase();
        let valid = s.len() <= 254
            && s.chars()
                .all(|c| !c.is_whitespace() && !c.is_control() && !unseen(c))
            && !s.contains(['<', '>', '"', ',', ';', '(', ')', '\\'])
            && match s.split_once('@') {
                Some((local, domain)) => {
                    !local.is_empty()
                        && !domain.is_empty()
                        && !domain.contains('@')
                        && !domain.starts_with('.')
                        && !domain.ends_with('.')
                }
                None => false,
            };
        if valid {
            Ok(Self(s))
        } else {
            Err(IdentityError::InvalidEmail)
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Email {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A display name: control characters removed, whitespace collapsed, at most 200
/// characters. It may contain anything else, HTML included: every output escapes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DisplayName(String);

impl DisplayName {
    pub const MAX_CHARS: usize = 200;

    pub fn parse(raw: &str) -> Option<Self> {
        // Control characters split the name; direction controls and invisible
        // characters go (they could make a name show as something else, or as
        // nothing, in the dashboard and in mails). Cleaned again after the cut, which
        // may leave a joiner with nothing after it.
        let cleaned: String = text::without_hidden(raw)
            .split(|c: char| c.is_whitespace() || c.is_control())
            .filter(|part| !part.is_empty())
            .collect::<Vec<_>>()
            .join(" ")
            .chars()
            .take(Self::MAX_CHARS)
            .collect();
        let cleaned = text::without_hidden(&cleaned);
        // The cut may land just after a space.
        let cleaned = cleaned.trim_end();
        let blank = text::is_blank(cleaned);
        if blank || is_placeholder(cleaned) {
            None
        } else {
            Some(Self(cleaned.to_owned()))
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// The caller of a metered request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    /// Whose user this is: the client key's distributor, or the one a shared
    /// LibreChat named. The same LibreChat id under two distributors is two users.
    pub distributor: super::DistributorId,
    pub key: UserKey,
    pub email: Option<Email>,
    pub name: Option<DisplayName>,
    /// The user's role in LibreChat (`{{LIBRECHAT_USER_ROLE}}`), which may choose
    /// their plan.
    pub role: Option<Role>,
}

/// A LibreChat role name ("USER", "ADMIN", or one an admin made there): 1 to 64
/// visible characters, compared exactly.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Role(String);

impl Role {
    pub const MAX_CHARS: usize = 64;

    pub fn parse(raw: &str) -> Option<Self> {
        let role = raw.trim();
        let ok = !role.is_empty()
            && role.chars().count() <= Self::MAX_CHARS
            && !is_placeholder(role)
            && !role
                .chars()
                .any(|c| c.is_control() || c == ',' || text::is_hidden(c) || text::is_joiner(c));
        ok.then(|| Self(role.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum IdentityError {
    #[error("no user identity: send the X-LibreChat-User-Id header or the `user` field")]
    Missing,
    #[error("the user id must be 1-128 visible ASCII characters")]
    InvalidUserId,
    #[error("user ids that start with `service:` are the accounts of service keys")]
    ServiceAccount,
    #[error("invalid email address")]
    InvalidEmail,
}

/// A value LibreChat failed to resolve: older versions send the placeholder itself.
fn is_placeholder(s: &str) -> bool {
    s.starts_with("{{LIBRECHAT_")
}

/// Decodes a header value as LibreChat sends it (since v0.8.2): `b64:` + base64 of
/// UTF-8 for text beyond Latin-1, otherwise raw bytes. Raw bytes are read as UTF-8
/// when valid, else as Latin-1 (é arrives as the single byte 0xE9). Returns `None`
/// for an empty value, an unresolved placeholder or undecodable base64.
pub fn decode_header_value(bytes: &[u8]) -> Option<String> {
    let text = if let Some(encoded) = bytes.strip_prefix(b"b64:") {
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(encoded.trim_ascii())
            .ok()?;
        String::from_utf8(decoded).ok()?
    } else {
        match std::str::from_utf8(bytes) {
            Ok(s) => s.to_owned(),
            Err(_) => bytes.iter().map(|&b| char::from(b)).collect(),
        }
    };
    let trimmed = text.trim();
    if trimmed.is_empty() || is_placeholder(trimmed) {
        None
    } else {
        Some(trimmed.to_owned())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn latin1_bytes_decode_to_unicode() {
        assert_eq!(decode_header_value(b"Jos\xe9"), Some("José".to_string()));
    }

    #[test]
    fn utf8_bytes_stay_utf8() {
        assert_eq!(
            decode_header_value("José".as_bytes()),
            Some("José".to_string())
        );
    }

    #[test]
    fn b64_values_decode_as_utf8() {
        // "Zoë 李" in UTF-8, base64.
        let encoded = format!(
            "b64:{}",
            base64::engine::general_purpose::STANDARD.encode("Zoë 李")
        );
        assert_eq!(
            decode_header_value(encoded.as_bytes()),
            Some("Zoë 李".to_string())
        );
        assert_eq!(decode_header_value(b"b64:!!!not base64"), None);
    }

    #[test]
    fn placeholders_and_blanks_are_missing() {
        assert_eq!(decode_header_value(b"{{LIBRECHAT_USER_EMAIL}}"), None);
        assert_eq!(decode_header_value(b"   "), None);
        assert_eq!(decode_header_value(b""), None);
        assert_eq!(
            UserKey::parse("{{LIBRECHAT_USER_ID}}"),
            Err(IdentityError::Missing)
        );
    }

    #[test]
    fn user_keys_reject_control_characters_and_huge_values() {
        assert!(UserKey::parse("65f1c0ffee0000000000abcd").is_ok());
        assert_eq!(UserKey::parse("a b"), Err(IdentityError::InvalidUserId));
        assert_eq!(UserKey::parse("a\r\nb"), Err(IdentityError::InvalidUserId));
        assert_eq!(
            UserKey::parse(&"x".repeat(129)),
            Err(IdentityError::InvalidUserId)
        );
    }

    #[test]
    fn emails_cannot_inject_headers() {
        assert_eq!(
            Email::parse("Ana@Example.COM").map(|e| e.to_string()),
            Ok("ana@example.com".to_string())
        );
        assert!(Email::parse("ana@example.com\r\nBcc: x@evil.test").is_err());
        assert!(Email::parse("ana@example.com\nBcc:x@evil.test").is_err());
        assert!(Email::parse("Ana <ana@example.com>").is_err());
        assert!(Email::parse("no-at-sign").is_err());
        assert!(Email::parse("two@@example.com").is_err());
    }

    #[test]
    fn the_length_limit_holds_for_the_lowercased_email() {
        // Found by the headers fuzz target: 'Ⱦ' (two bytes) lowercases to 'ⱦ' (three),
        // so this address fits the limit as sent (248 bytes) and not as stored (366).
        let raw = format!("{}@example.com", "\u{23E}".repeat(118));
        assert!(raw.len() <= 254);
        assert_eq!(Email::parse(&raw), Err(IdentityError::InvalidEmail));
        let fits = format!("{}@example.com", "\u{23E}".repeat(80));
        assert_eq!(
            Email::parse(&fits).map(|e| e.as_str().len()),
            Ok(80 * 3 + 12)
        );
    }

    #[test]
    fn names_lose_control_characters_but_keep_text() {
        let name = DisplayName::parse("  Ana\r\n <b>Maria</b>\u{0}  ");
        assert_eq!(name.map(|n| n.0), Some("Ana <b>Maria</b>".to_string()));
        assert_eq!(DisplayName::parse("\r\n"), None);
        let long = DisplayName::parse(&"é".repeat(500));
        assert_eq!(long.map(|n| n.0.chars().count()), Some(200));
        // Found by the headers fuzz target: a cut just after a space kept it.
        let cut = DisplayName::parse(&format!("{} b", "a".repeat(199)));
        assert_eq!(cut.map(|n| n.0), Some("a".repeat(199)));
    }

    /// A name that reverses itself in the dashboard ("Ana" followed by an override
    /// that shows "nimdA" as "Admin") loses every direction control; the emoji
    /// joiners of a name stay.
    #[test]
    fn names_lose_direction_controls() {
        for control in [
            '\u{202A}', '\u{202B}', '\u{202C}', '\u{202D}', '\u{202E}', '\u{2066}', '\u{2067}',
            '\u{2068}', '\u{2069}', '\u{200E}', '\u{200F}', '\u{061C}',
        ] {
            let name = DisplayName::parse(&format!("Ana {control}nimdA{control}"));
            assert_eq!(
                name.map(|n| n.0),
                Some("Ana nimdA".to_string()),
                "{control:?}"
            );
        }
        let family = "Família 👩\u{200D}👩\u{200D}👧";
        assert_eq!(
            DisplayName::parse(family).map(|n| n.0),
            Some(family.to_string())
        );
    }

    /// Invisible characters go too: a name made only of them is no name, and one
    /// with them inside reads as the name it imitates.
    #[test]
    fn names_and_emails_lose_or_refuse_invisible_characters() {
        for hidden in [
            '\u{200B}',
            '\u{2060}',
            '\u{2063}',
            '\u{2065}',
            '\u{206A}',
            '\u{FEFF}',
            '\u{00AD}',
            '\u{034F}',
            '\u{17B4}',
            '\u{3164}',
            '\u{115F}',
            '\u{FFA0}',
            '\u{FFF9}',
            '\u{1D173}',
            '\u{E0041}',
            '\u{200C}',
            '\u{200D}',
        ] {
            assert_eq!(
                DisplayName::parse(&format!("Ad{hidden}min")).map(|n| n.0),
                Some("Admin".to_string()),
                "{hidden:?}"
            );
            assert_eq!(DisplayName::parse(&hidden.to_string()), None, "{hidden:?}");
            assert!(
                Email::parse(&format!("ana{hidden}@example.com")).is_err(),
                "{hidden:?}"
            );
        }
        assert!(Email::parse("ana\u{202E}moc.elpmaxe@x.com").is_err());
        // What a paste brings around an address is not part of it.
        assert_eq!(
            Email::parse("\u{FEFF}Ana@Example.com\u{200B} ").map(|e| e.0),
            Ok("ana@example.com".to_string())
        );
        // Nothing visible is no name: a Braille cell with no dots, a joiner between
        // them or between C1 controls, a separator or a selector alone.
        for blank in [
            "\u{2800} \u{2800}",
            "\u{2800}\u{200D}\u{2800}",
            "\u{80}\u{200D}\u{80}",
            "\u{180E}",
            "\u{FE0F}",
        ] {
            assert_eq!(DisplayName::parse(blank), None, "{blank:?}");
        }
        // What only shapes a name has no place in an address.
        for unseen in ['\u{180E}', '\u{FE0F}', '\u{200D}'] {
            assert!(
                Email::parse(&format!("an{unseen}é@example.com")).is_err(),
                "{unseen:?}"
            );
        }
        assert_eq!(
            Email::parse("ana@example.com\u{200D}").map(|e| e.0),
            Ok("ana@example.com".to_string())
        );
        // Hidden text in tags after a black flag goes; a subdivision flag stays.
        assert_eq!(
            DisplayName::parse("🏴\u{E0068}\u{E0069} Ana").map(|n| n.0),
            Some("🏴 Ana".to_string())
        );
        // A cut at the limit leaves no joiner at the end.
        let long = format!("{}\u{200D}é", "é".repeat(DisplayName::MAX_CHARS - 1));
        assert_eq!(
            DisplayName::parse(&long).map(|n| n.0),
            Some("é".repeat(DisplayName::MAX_CHARS - 1))
        );
    }

    /// The joiners stay where emoji sequences and scripts need them, and so does
    /// Mongolian's vowel separator.
    #[test]
    fn names_keep_the_joiners_and_separators_that_text_needs() {
        for name in [
            "Família 👨\u{200D}👩\u{200D}👧",
            "❤\u{FE0F}\u{200D}🔥 Ana",
            "می\u{200C}خواهم",
            "क्\u{200D}ष",
            "ᠮᠣᠩᠭᠣᠯ\u{180E}ᠠ",
            // A chillu (legacy Malayalam) and a half form at a word's end.
            "അവന്\u{200D}",
            "क्\u{200D} Ana",
            "🏴\u{E0067}\u{E0062}\u{E0065}\u{E006E}\u{E0067}\u{E007F} Ana",
        ] {
            assert_eq!(
                DisplayName::parse(name).map(|n| n.0),
                Some(name.to_string())
            );
        }
        // Not at an end, not twice, not beside ASCII.
        assert_eq!(
            DisplayName::parse("\u{200D}👨\u{200D}\u{200D}👩\u{200C}").map(|n| n.0),
            Some("👨\u{200D}👩".to_string())
        );
    }
}
