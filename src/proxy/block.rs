//! The user-facing texts of a refusal (docs/behaviour.md): one plain line, action first,
//! at most `MAX_CHARS`, no braces (LibreChat parses `{...}` as JSON) and no words
//! LibreChat mistakes for a context-length problem ("context", "too long", "too
//! large").

use crate::config::Locale;
use crate::domain::{Period, Side};
use crate::i18n;
use crate::ledger::{BlockReason, Blocked, LimitReached};
use chrono::{DateTime, Utc};
use chrono_tz::Tz;

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
    if let Some(text) = custom.filter(|_| blocked.reason.used_up()) {
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
        (Locale::PtBr, BlockReason::SideUsedUp(Side::Input)) => format!(
            "Seus tokens de entrada (mensagens) do plano {plan} acabaram. Para continuar, {ask}."
        ),
        (Locale::PtBr, BlockReason::SideUsedUp(Side::Output)) => format!(
            "Seus tokens de saída (respostas) do plano {plan} acabaram. Para continuar, {ask}."
        ),
        (Locale::En, BlockReason::SideUsedUp(Side::Input)) => format!(
            "Your {plan} plan's input tokens (messages) are used up. To continue, {ask}."
        ),
        (Locale::En, BlockReason::SideUsedUp(Side::Output)) => format!(
            "Your {plan} plan's output tokens (answers) are used up. To continue, {ask}."
        ),
        (Locale::PtBr, BlockReason::PoolUsedUp) => match &contact {
            Some(c) => format!("O limite mensal de uso do seu provedor foi atingido. Para continuar, fale com {c}."),
            None => "O limite mensal de uso do seu provedor foi atingido. Para continuar, fale com o administrador.".to_owned(),
        },
        (Locale::En, BlockReason::PoolUsedUp) => match &contact {
            Some(c) => format!("Your provider's monthly usage limit has been reached. To continue, contact {c}."),
            None => "Your provider's monthly usage limit has been reached. To continue, contact your administrator.".to_owned(),
        },
    };
    msg.chars().take(MAX_CHARS).collect()
}

/// What the user reads when a plan's request limit refuses a request: which limit,
/// and when they may write again (`now` counts the minute's seconds).
pub fn limit_message(locale: Locale, reached: &LimitReached, now: DateTime<Utc>, tz: Tz) -> String {
    let n = i64::from(reached.limit.get());
    let count = match (locale, n) {
        (Locale::PtBr, 1) => "1 mensagem".to_owned(),
        (Locale::PtBr, _) => format!("{} mensagens", i18n::tokens(n, locale)),
        (Locale::En, 1) => "1 message".to_owned(),
        (Locale::En, _) => format!("{} messages", i18n::tokens(n, locale)),
    };
    let seconds = reached.seconds_left(now);
    let resets_on = i18n::date(reached.resets_at.with_timezone(&tz).date_naive(), locale);
    match (locale, reached.period) {
        (Locale::PtBr, Period::Minute) => format!(
            "Você chegou ao limite de {count} por minuto do seu plano. Tente de novo em {seconds} {}.",
            if seconds == 1 { "segundo" } else { "segundos" }
        ),
        (Locale::En, Period::Minute) => format!(
            "You have reached your plan's limit of {count} a minute. Try again in {seconds} {}.",
            if seconds == 1 { "second" } else { "seconds" }
        ),
        (Locale::PtBr, Period::Day) => {
            format!("Você atingiu o limite de {count} por dia do seu plano; volta amanhã.")
        }
        (Locale::En, Period::Day) => {
            format!("You have reached your plan's limit of {count} a day; it resets tomorrow.")
        }
        (Locale::PtBr, Period::Month) => {
            format!("Você atingiu o limite de {count} por mês do seu plano; volta em {resets_on}.")
        }
        (Locale::En, Period::Month) => format!(
            "You have reached your plan's limit of {count} a month; it resets on {resets_on}."
        ),
    }
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
            contact: None,
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
                BlockReason::SideUsedUp(Side::Input),
                BlockReason::SideUsedUp(Side::Output),
                BlockReason::PoolUsedUp,
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
    #[allow(clippy::unwrap_used)]
    fn limit_texts_say_which_limit_and_when() {
        use crate::domain::RequestLimit;
        use chrono::TimeZone;
        let sp: Tz = "America/Sao_Paulo".parse().unwrap();
        let now = Utc.with_ymd_and_hms(2026, 12, 7, 15, 0, 25).unwrap();
        let reached = |period, n, resets_at| LimitReached {
            period,
            limit: RequestLimit::new(n).unwrap(),
            resets_at,
        };
        let minute = reached(Period::Minute, 10, now + chrono::Duration::seconds(35));
        assert_eq!(
            limit_message(Locale::PtBr, &minute, now, sp),
            "Você chegou ao limite de 10 mensagens por minuto do seu plano. Tente de novo em 35 segundos."
        );
        let day = reached(Period::Day, 50, now);
        assert_eq!(
            limit_message(Locale::PtBr, &day, now, sp),
            "Você atingiu o limite de 50 mensagens por dia do seu plano; volta amanhã."
        );
        let next_cycle = Utc.with_ymd_and_hms(2027, 1, 1, 3, 0, 0).unwrap();
        let month = reached(Period::Month, 1000, next_cycle);
        assert_eq!(
            limit_message(Locale::PtBr, &month, now, sp),
            "Você atingiu o limite de 1.000 mensagens por mês do seu plano; volta em 01/01/2027."
        );
        assert_eq!(
            limit_message(Locale::En, &month, now, sp),
            "You have reached your plan's limit of 1,000 messages a month; it resets on January 1, 2027."
        );
        let one = reached(Period::Minute, 1, now + chrono::Duration::milliseconds(200));
        assert_eq!(
            limit_message(Locale::En, &one, now, sp),
            "You have reached your plan's limit of 1 message a minute. Try again in 1 second."
        );
        for m in [&minute, &day, &month] {
            for locale in [Locale::PtBr, Locale::En] {
                let text = limit_message(locale, m, now, sp);
                assert!(text.chars().count() <= MAX_CHARS, "{text}");
                assert!(!text.contains(['{', '}']), "{text}");
                let lower = text.to_lowercase();
                assert!(CONTEXT_WORDS.iter().all(|w| !lower.contains(w)), "{text}");
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
