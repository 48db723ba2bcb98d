//! The user-facing texts of a refusal (docs/behaviour.md): one plain line, action first,
//! at most `MAX_CHARS`, no braces (LibreChat parses `{...}` as JSON) and no words
//! LibreChat mistakes for a context-length problem ("context", "too long", "too
//! large").

use crate::config::Locale;
use crate::i18n;
use crate::ledger::{BlockReason, Blocked};

/// LibreChat folds a longer text under a toggle.
pub const MAX_CHARS: usize = 185;
/// Longest plan name and support contact a text shows.
const MAX_PLAN: usize = 40;
const MAX_CONTACT: usize = 50;

/// The operator's own text for an exhausted balance (`TOKENGATE_BLOCK_TEXT`), with
/// the placeholders `{plan}`, `{contact}` and `{page}` (the address of the user's
/// page, where they see their balance and get more tokens).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlockText {
    template: String,
    page: String,
}

const PLACEHOLDERS: [&str; 3] = ["{plan}", "{contact}", "{page}"];

impl BlockText {
    /// Checks the text once, at start: known placeholders only, one line, no braces
    /// or context words, and at most `MAX_CHARS` with the longest plan name shown.
    pub fn parse(raw: &str, public_url: &str, contact: Option<&str>) -> Result<Self, String> {
        let text = Self {
            template: raw.trim().to_owned(),
            page: format!("{}/me", public_url.trim_end_matches('/')),
        };
        let mut rest = text.template.clone();
        for p in PLACEHOLDERS {
            rest = rest.replace(p, "");
        }
        if rest.contains(['{', '}']) {
            return Err(format!(
                "only the placeholders {} may be written in braces",
                PLACEHOLDERS.join(", ")
            ));
        }
        if text.template.is_empty() || text.template.chars().any(char::is_control) {
            return Err("must be one line of text".into());
        }
        let lower = text.template.to_lowercase();
        if let Some(word) = CONTEXT_WORDS.iter().find(|w| lower.contains(*w)) {
            return Err(format!(
                "LibreChat reads {word:?} as a context-length problem"
            ));
        }
        // The longest it can be: the longest plan name, in either language (without a
        // contact each says "the administrator" its own way).
        let n = [Locale::PtBr, Locale::En]
            .into_iter()
            .map(|l| {
                text.render(&"W".repeat(MAX_PLAN), contact, l)
                    .chars()
                    .count()
            })
            .max()
            .unwrap_or(0);
        if n > MAX_CHARS {
            return Err(format!(
                "is {n} characters with a plan name of {MAX_CHARS} and the page's address; at most {MAX_CHARS} are shown whole"
            ));
        }
        Ok(text)
    }

    fn render(&self, plan: &str, contact: Option<&str>, locale: Locale) -> String {
        let contact = contact
            .map(|c| sanitize(c, MAX_CONTACT))
            .filter(|c| !c.is_empty())
            .unwrap_or_else(|| {
                locale
                    .pick("o administrador", "your administrator")
                    .to_owned()
            });
        self.template
            .replace("{plan}", &sanitize(plan, MAX_PLAN))
            .replace("{contact}", &contact)
            .replace("{page}", &self.page)
    }
}

/// Words LibreChat takes for a context-length problem, whatever the status.
const CONTEXT_WORDS: [&str; 3] = ["context", "too long", "too large"];

/// What the user reads when the balance cannot pay: why, and what to do. `custom`
/// replaces the text for an exhausted balance.
pub fn block_message(
    locale: Locale,
    blocked: &Blocked,
    contact: Option<&str>,
    custom: Option<&BlockText>,
) -> String {
    if let (Some(text), BlockReason::Exhausted) = (custom, blocked.reason) {
        return text
            .render(&blocked.plan_name, contact, locale)
            .chars()
            .take(MAX_CHARS)
            .collect();
    }
    let plan = sanitize(&blocked.plan_name, MAX_PLAN);
    let contact = contact
        .map(|c| sanitize(c, MAX_CONTACT))
        .filter(|c| !c.is_empty());
    let ask = match (locale, &contact) {
        (Locale::PtBr, Some(c)) => format!("peça mais créditos a {c}"),
        (Locale::PtBr, None) => "peça mais créditos ao administrador".to_owned(),
        (Locale::En, Some(c)) => format!("ask {c} for more credits"),
        (Locale::En, None) => "ask your administrator for more credits".to_owned(),
    };
    let msg = match (locale, blocked.reason) {
        (Locale::PtBr, BlockReason::Exhausted) => format!(
            "Seus tokens acabaram: você usou todo o seu plano {plan}. Para continuar, {ask}."
        ),
        (Locale::En, BlockReason::Exhausted) => format!(
            "You are out of tokens: you have used all of your {plan} plan. To continue, {ask}."
        ),
        (Locale::PtBr, BlockReason::InFlight) => "Seu saldo está reservado para as respostas em andamento: espere que terminem e envie de novo.".to_owned(),
        (Locale::En, BlockReason::InFlight) => "Your balance is set aside for the answers still in progress: wait for them to finish, then send again.".to_owned(),
        (Locale::PtBr, BlockReason::TooLarge) => format!(
            "Esta mensagem é maior que o saldo restante de {} tokens. Comece uma conversa nova ou {ask}.",
            i18n::tokens(blocked.remaining, locale)
        ),
        (Locale::En, BlockReason::TooLarge) => format!(
            "This message costs more than the {} tokens you have left. Start a new conversation or {ask}.",
            i18n::tokens(blocked.remaining, locale)
        ),
    };
    msg.chars().take(MAX_CHARS).collect()
}

pub fn suspended_message(locale: Locale, contact: Option<&str>) -> String {
    let contact = contact.map(|c| sanitize(c, MAX_CONTACT));
    match (locale, contact) {
        (Locale::PtBr, Some(c)) => {
            format!("Seu acesso foi suspenso. Para voltar a usar, fale com {c}.")
        }
        (Locale::PtBr, None) => {
            "Seu acesso foi suspenso. Para voltar a usar, fale com o administrador.".into()
        }
        (Locale::En, Some(c)) => format!("Your access is suspended. To use it again, contact {c}."),
        (Locale::En, None) => {
            "Your access is suspended. To use it again, contact your administrator.".into()
        }
    }
}

/// One line, no braces, bounded length.
fn sanitize(s: &str, max: usize) -> String {
    s.chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .filter(|c| !matches!(c, '{' | '}'))
        .take(max)
        .collect::<String>()
        .trim()
        .to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn blocked(reason: BlockReason, plan: &str, remaining: i64) -> Blocked {
        Blocked {
            reason,
            plan_name: plan.into(),
            used_percent: 99,
            remaining,
        }
    }

    #[test]
    fn the_exhausted_text_matches_the_spec() {
        assert_eq!(
            block_message(
                Locale::PtBr,
                &blocked(BlockReason::Exhausted, "Mensal", 3),
                Some("suporte@iasolaris.com.br"),
                None
            ),
            "Seus tokens acabaram: você usou todo o seu plano Mensal. Para continuar, peça mais créditos a suporte@iasolaris.com.br."
        );
        assert_eq!(
            block_message(
                Locale::PtBr,
                &blocked(BlockReason::TooLarge, "Mensal", 250_000),
                None,
                None
            ),
            "Esta mensagem é maior que o saldo restante de 250.000 tokens. Comece uma conversa nova ou peça mais créditos ao administrador."
        );
    }

    #[test]
    fn every_text_is_one_safe_line_that_fits() {
        let nasty = "{\"a\":1}\r\nPlan ".repeat(40);
        for locale in [Locale::PtBr, Locale::En] {
            for reason in [
                BlockReason::Exhausted,
                BlockReason::InFlight,
                BlockReason::TooLarge,
            ] {
                for contact in [None, Some("{evil}\nline"), Some(&*"x".repeat(1000))] {
                    let b = blocked(reason, &nasty, i64::MAX);
                    let m = block_message(locale, &b, contact, None);
                    assert!(m.chars().count() <= MAX_CHARS, "{}: {m}", m.chars().count());
                    assert!(!m.contains(['{', '}', '\n', '\r']), "{m}");
                    assert!(!m.contains("99%"), "{m}");
                    // The longest plan and contact still leave the whole sentence.
                    assert!(m.ends_with('.'), "cut short: {m}");
                    let lower = m.to_lowercase();
                    for word in CONTEXT_WORDS {
                        assert!(!lower.contains(word), "{m}");
                    }
                }
            }
        }
    }

    #[test]
    fn the_operators_text_carries_the_page_and_is_checked_at_start() -> Result<(), String> {
        let url = "https://tokens.iasolaris.com.br";
        let text = BlockText::parse(
            "Seus tokens do plano {plan} acabaram. Consiga mais em {page} ou fale com {contact}.",
            url,
            Some("suporte@iasolaris.com.br"),
        )?;
        let b = blocked(BlockReason::Exhausted, "Mensal {x}\n", 0);
        let m = block_message(
            Locale::PtBr,
            &b,
            Some("suporte@iasolaris.com.br"),
            Some(&text),
        );
        assert_eq!(
            m,
            "Seus tokens do plano Mensal x acabaram. Consiga mais em https://tokens.iasolaris.com.br/me ou fale com suporte@iasolaris.com.br."
        );
        // Other refusals keep their own texts, which say what happened.
        let large = blocked(BlockReason::TooLarge, "Mensal", 250_000);
        assert!(
            block_message(Locale::PtBr, &large, None, Some(&text)).starts_with("Esta mensagem")
        );
        for bad in [
            "Acabou {saldo}",
            "Acabou { page }",
            "Linha um\nlinha dois",
            "Your context is used up: {page}",
            "",
            &format!("{} {{page}}", "x".repeat(151)),
            // Fits with the Portuguese "o administrador", not the English "your
            // administrator", which would cut the page's address short.
            &format!("{} {{contact}}: {{page}}.", "A".repeat(130)),
        ] {
            assert!(BlockText::parse(bad, url, None).is_err(), "{bad:?}");
        }
        Ok(())
    }
}
