//! The in-chat notice (docs/behaviour.md, "The user's page"): after a user crosses
//! an alert threshold below 100%, their next streamed text answer ends with one line
//! saying how much is used and left, and where to see the balance. It is one more
//! chunk of the answer's stream, so LibreChat shows it under the answer; the usage
//! upstream reported, and what is charged, are unchanged.

use super::meter::Notice;
use super::sse::Usage;
use crate::config::Locale;
use crate::domain::Weights;
use crate::i18n;
use crate::ledger::NoticeBase;
use bytes::Bytes;
use serde_json::json;

/// The notice's text for the answer that cost `charge`.
pub fn text(base: NoticeBase, charge: i64, locale: Locale, page: &str) -> String {
    let used = base.used.saturating_add(charge.max(0));
    let percent = if base.total > 0 {
        (used.saturating_mul(100) / base.total).clamp(0, 100)
    } else {
        100
    };
    let left = i18n::tokens(base.total.saturating_sub(used).max(0), locale);
    match locale {
        Locale::PtBr => format!(
            "\n\nAtenção: você já usou {percent}% dos seus tokens deste mês; restam {left}. Veja seu saldo: {page}"
        ),
        Locale::En => format!(
            "\n\nNote: you have used {percent}% of this month's tokens; {left} left. See your balance: {page}"
        ),
    }
}

/// The notice for one answer, as a chat completion chunk of `model`.
pub fn for_answer(
    base: NoticeBase,
    reserved: i64,
    weights: Weights,
    model: String,
    locale: Locale,
    page: String,
    unshown: impl FnOnce() + 'static,
) -> Notice {
    Notice::new(
        move |usage: Option<Usage>| {
            let charge = usage.map_or(reserved, |u| {
                weights.cost(u.prompt_tokens, u.completion_tokens)
            });
            let chunk = json!({
                "id": "chatcmpl-tokengate-notice",
                "object": "chat.completion.chunk",
                "created": chrono::Utc::now().timestamp(),
                "model": model,
                "choices": [{
                    "index": 0,
                    "delta": {"content": text(base, charge, locale, &page)},
                    "finish_reason": null,
                }],
            });
            Bytes::from(format!("data: {chunk}\n\n"))
        },
        unshown,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn says_what_is_used_and_left_in_the_locale() {
        let base = NoticeBase {
            used: 790_000,
            total: 1_000_000,
        };
        assert_eq!(
            text(base, 40_000, Locale::PtBr, "https://t.example/me"),
            "\n\nAtenção: você já usou 83% dos seus tokens deste mês; restam 170.000. Veja seu saldo: https://t.example/me"
        );
        assert_eq!(
            text(base, 40_000, Locale::En, "https://t.example/me"),
            "\n\nNote: you have used 83% of this month's tokens; 170,000 left. See your balance: https://t.example/me"
        );
        let empty = NoticeBase { used: 0, total: 0 };
        assert!(text(empty, 5, Locale::PtBr, "x").contains("100%"));
    }
}
