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

/// What the user reads when the balance cannot pay: why, and what to do.
pub fn block_message(locale: Locale, blocked: &Blocked, contact: Option<&str>) -> String {
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
                Some("suporte@iasolaris.com.br")
            ),
            "Seus tokens acabaram: você usou todo o seu plano Mensal. Para continuar, peça mais créditos a suporte@iasolaris.com.br."
        );
        assert_eq!(
            block_message(
                Locale::PtBr,
                &blocked(BlockReason::TooLarge, "Mensal", 250_000),
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
                    let m = block_message(locale, &b, contact);
                    assert!(m.chars().count() <= MAX_CHARS, "{}: {m}", m.chars().count());
                    assert!(!m.contains(['{', '}', '\n', '\r']), "{m}");
                    assert!(!m.contains("99%"), "{m}");
                    // The longest plan and contact still leave the whole sentence.
                    assert!(m.ends_with('.'), "cut short: {m}");
                    let lower = m.to_lowercase();
                    for word in ["context", "too long", "too large"] {
                        assert!(!lower.contains(word), "{m}");
                    }
                }
            }
        }
    }
}
