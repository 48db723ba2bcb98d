//! The user-facing block message (SPEC section 5): one plain line, action first, no
//! braces and no words LibreChat mistakes for a context-length problem.

use crate::config::Locale;

pub const MAX_CHARS: usize = 300;

pub fn block_message(
    locale: Locale,
    used_percent: u8,
    plan: &str,
    contact: Option<&str>,
) -> String {
    let plan = sanitize(plan, 60);
    let msg = match (locale, contact) {
        (Locale::PtBr, Some(c)) => format!(
            "Seus tokens acabaram: você já usou {used_percent}% do seu plano {plan}. Para continuar, peça mais créditos a {}.",
            sanitize(c, 120)
        ),
        (Locale::PtBr, None) => format!(
            "Seus tokens acabaram: você já usou {used_percent}% do seu plano {plan}. Para continuar, peça mais créditos ao administrador."
        ),
        (Locale::En, Some(c)) => format!(
            "You are out of tokens: you have used {used_percent}% of your {plan} plan. To continue, ask {} for more credits.",
            sanitize(c, 120)
        ),
        (Locale::En, None) => format!(
            "You are out of tokens: you have used {used_percent}% of your {plan} plan. To continue, ask your administrator for more credits."
        ),
    };
    msg.chars().take(MAX_CHARS).collect()
}

pub fn suspended_message(locale: Locale, contact: Option<&str>) -> String {
    let contact = contact.map(|c| sanitize(c, 120));
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

/// One line, no braces (LibreChat would parse `{...}` as JSON), bounded length.
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

    #[test]
    fn default_message_matches_the_spec() {
        assert_eq!(
            block_message(
                Locale::PtBr,
                100,
                "Mensal",
                Some("suporte@iasolaris.com.br")
            ),
            "Seus tokens acabaram: você já usou 100% do seu plano Mensal. Para continuar, peça mais créditos a suporte@iasolaris.com.br."
        );
    }

    #[test]
    fn message_is_one_safe_line_in_every_case() {
        let nasty_plan = "{\"a\":1}\r\nPlan ".repeat(40);
        for locale in [Locale::PtBr, Locale::En] {
            for contact in [None, Some("{evil}\nline"), Some(&*"x".repeat(1000))] {
                let m = block_message(locale, 100, &nasty_plan, contact);
                assert!(m.chars().count() <= MAX_CHARS);
                assert!(!m.contains(['{', '}', '\n', '\r']), "{m}");
                let lower = m.to_lowercase();
                for word in ["context", "too long", "too large"] {
                    assert!(!lower.contains(word), "{m}");
                }
            }
        }
    }
}
