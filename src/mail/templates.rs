//! Message templates from `templates/mail/`, compiled into the binary.
//!
//! Each message has a plain-text template, which also sets `subject`, and an HTML
//! template. HTML templates escape every value (minijinja's auto-escape for `.html`),
//! so names and addresses cannot inject markup; subjects are flattened to one line.

use crate::config::Locale;
use minijinja::{Environment, Value};
use serde::Serialize;

const SOURCES: &[(&str, &str)] = &[
    (
        "layout.html",
        include_str!("../../templates/mail/layout.html"),
    ),
    (
        "alert_user.pt-BR.txt",
        include_str!("../../templates/mail/alert_user.pt-BR.txt"),
    ),
    (
        "alert_user.pt-BR.html",
        include_str!("../../templates/mail/alert_user.pt-BR.html"),
    ),
    (
        "alert_user.en.txt",
        include_str!("../../templates/mail/alert_user.en.txt"),
    ),
    (
        "alert_user.en.html",
        include_str!("../../templates/mail/alert_user.en.html"),
    ),
    (
        "alert_admin.pt-BR.txt",
        include_str!("../../templates/mail/alert_admin.pt-BR.txt"),
    ),
    (
        "alert_admin.pt-BR.html",
        include_str!("../../templates/mail/alert_admin.pt-BR.html"),
    ),
    (
        "alert_admin.en.txt",
        include_str!("../../templates/mail/alert_admin.en.txt"),
    ),
    (
        "alert_admin.en.html",
        include_str!("../../templates/mail/alert_admin.en.html"),
    ),
    (
        "sign_in.pt-BR.txt",
        include_str!("../../templates/mail/sign_in.pt-BR.txt"),
    ),
    (
        "sign_in.pt-BR.html",
        include_str!("../../templates/mail/sign_in.pt-BR.html"),
    ),
    (
        "sign_in.en.txt",
        include_str!("../../templates/mail/sign_in.en.txt"),
    ),
    (
        "sign_in.en.html",
        include_str!("../../templates/mail/sign_in.en.html"),
    ),
    (
        "credit_requested.pt-BR.txt",
        include_str!("../../templates/mail/credit_requested.pt-BR.txt"),
    ),
    (
        "credit_requested.pt-BR.html",
        include_str!("../../templates/mail/credit_requested.pt-BR.html"),
    ),
    (
        "credit_requested.en.txt",
        include_str!("../../templates/mail/credit_requested.en.txt"),
    ),
    (
        "credit_requested.en.html",
        include_str!("../../templates/mail/credit_requested.en.html"),
    ),
    (
        "credit_approved.pt-BR.txt",
        include_str!("../../templates/mail/credit_approved.pt-BR.txt"),
    ),
    (
        "credit_approved.pt-BR.html",
        include_str!("../../templates/mail/credit_approved.pt-BR.html"),
    ),
    (
        "credit_approved.en.txt",
        include_str!("../../templates/mail/credit_approved.en.txt"),
    ),
    (
        "credit_approved.en.html",
        include_str!("../../templates/mail/credit_approved.en.html"),
    ),
    (
        "credit_declined.pt-BR.txt",
        include_str!("../../templates/mail/credit_declined.pt-BR.txt"),
    ),
    (
        "credit_declined.pt-BR.html",
        include_str!("../../templates/mail/credit_declined.pt-BR.html"),
    ),
    (
        "credit_declined.en.txt",
        include_str!("../../templates/mail/credit_declined.en.txt"),
    ),
    (
        "credit_declined.en.html",
        include_str!("../../templates/mail/credit_declined.en.html"),
    ),
    (
        "limit_user.pt-BR.txt",
        include_str!("../../templates/mail/limit_user.pt-BR.txt"),
    ),
    (
        "limit_user.pt-BR.html",
        include_str!("../../templates/mail/limit_user.pt-BR.html"),
    ),
    (
        "limit_user.en.txt",
        include_str!("../../templates/mail/limit_user.en.txt"),
    ),
    (
        "limit_user.en.html",
        include_str!("../../templates/mail/limit_user.en.html"),
    ),
    (
        "test.pt-BR.txt",
        include_str!("../../templates/mail/test.pt-BR.txt"),
    ),
    (
        "test.pt-BR.html",
        include_str!("../../templates/mail/test.pt-BR.html"),
    ),
    (
        "test.en.txt",
        include_str!("../../templates/mail/test.en.txt"),
    ),
    (
        "test.en.html",
        include_str!("../../templates/mail/test.en.html"),
    ),
];

/// Which message to render.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// To the user whose usage crossed a threshold.
    AlertUser,
    /// The admins' copy of an alert.
    AlertAdmin,
    /// `tokengate mail test`.
    Test,
    /// A one-time link to the user's page, asked for on its sign-in page.
    SignIn,
    /// To admins: a user asked for credits.
    CreditRequested,
    /// To the user: their request was approved, or declined (with the reason).
    CreditApproved,
    CreditDeclined,
    /// To the user refused by a day's or a month's request limit (once per window).
    LimitUser,
}

impl Kind {
    fn stem(self) -> &'static str {
        match self {
            Self::AlertUser => "alert_user",
            Self::AlertAdmin => "alert_admin",
            Self::Test => "test",
            Self::SignIn => "sign_in",
            Self::CreditRequested => "credit_requested",
            Self::CreditApproved => "credit_approved",
            Self::CreditDeclined => "credit_declined",
            Self::LimitUser => "limit_user",
        }
    }
}

fn lang(locale: Locale) -> &'static str {
    match locale {
        Locale::PtBr => "pt-BR",
        Locale::En => "en",
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rendered {
    pub subject: String,
    pub text: String,
    pub html: String,
}

#[derive(Debug, thiserror::Error)]
#[error("mail template {name}: {source}")]
pub struct TemplateError {
    name: String,
    #[source]
    source: minijinja::Error,
}

pub struct Templates {
    env: Environment<'static>,
}

impl Templates {
    /// Compiles every template; an error here is a bug in `templates/mail/`.
    pub fn new() -> Result<Self, TemplateError> {
        let mut env = Environment::new();
        let syntax = minijinja::syntax::SyntaxConfig::builder()
            .trim_blocks(true)
            .lstrip_blocks(true)
            .build()
            .map_err(|source| TemplateError {
                name: "syntax".into(),
                source,
            })?;
        env.set_syntax(syntax);
        env.set_undefined_behavior(minijinja::UndefinedBehavior::Strict);
        for (name, source) in SOURCES {
            env.add_template(name, source)
                .map_err(|source| TemplateError {
                    name: (*name).to_owned(),
                    source,
                })?;
        }
        Ok(Self { env })
    }

    pub fn render(
        &self,
        kind: Kind,
        locale: Locale,
        ctx: &impl Serialize,
    ) -> Result<Rendered, TemplateError> {
        let lang = lang(locale);
        let text_name = format!("{}.{lang}.txt", kind.stem());
        let html_name = format!("{}.{lang}.html", kind.stem());
        let fail = |name: &str| {
            let name = name.to_owned();
            move |source| TemplateError { name, source }
        };
        let ctx = Value::from(minijinja::value::Serde(ctx));
        let text_tmpl = self
            .env
            .get_template(&text_name)
            .map_err(fail(&text_name))?;
        let captured = text_tmpl
            .render_captured(ctx.clone())
            .map_err(fail(&text_name))?;
        let subject = captured
            .state()
            .lookup("subject")
            .map(|v| one_line(&v.to_string()))
            .unwrap_or_default();
        let text = tidy(captured.output());
        let html = self
            .env
            .get_template(&html_name)
            .map_err(fail(&html_name))?
            .render(minijinja::context! { subject => &subject, lang => lang, ..ctx })
            .map_err(fail(&html_name))?;
        Ok(Rendered {
            subject,
            text,
            html,
        })
    }
}

/// A header-safe subject: control characters (CR, LF, ...) become spaces.
fn one_line(s: &str) -> String {
    s.split(|c: char| c.is_control())
        .flat_map(str::split_whitespace)
        .collect::<Vec<_>>()
        .join(" ")
}

/// Plain text without the blank lines conditional blocks leave behind.
fn tidy(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut blank_run = 0;
    for line in s.trim().lines() {
        if line.trim().is_empty() {
            blank_run += 1;
            if blank_run > 1 {
                continue;
            }
        } else {
            blank_run = 0;
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn alert_ctx(name: &str, blocked: bool) -> serde_json::Value {
        alert_ctx_with(name, blocked, false, blocked)
    }

    /// With `overage`, an alert on a plan that goes on past 100%, billed; `full`,
    /// at 100%.
    fn alert_ctx_with(name: &str, blocked: bool, overage: bool, full: bool) -> serde_json::Value {
        json!({
            "name": name, "user_label": "ana@example.com", "threshold": if full { 100 } else { 80 },
            "percent": if full { 100 } else { 83 }, "blocked": blocked, "plan_name": "Mensal",
            "overage": overage, "overage_price": if overage { "R$ 0,10" } else { "" },
            "overage_cap": if overage { "500.000" } else { "" },
            "used": "830.000", "left": "170.000", "plan_allowance": "1.000.000",
            "resets_on": "01/12/2026", "contact": "suporte@example.com", "notified": true,
            "dashboard_url": "http://127.0.0.1:8080/admin/users/7",
            "page_link": "http://127.0.0.1:8080/me/link/abc",
        })
    }

    #[test]
    fn every_template_renders_in_both_languages() -> Result<(), TemplateError> {
        let t = Templates::new()?;
        for locale in [Locale::PtBr, Locale::En] {
            for kind in [Kind::AlertUser, Kind::AlertAdmin] {
                for (blocked, overage, full) in [
                    (false, false, false),
                    (true, false, true),
                    (false, true, true),
                    (false, true, false),
                ] {
                    let ctx = alert_ctx_with("Ana", blocked, overage, full);
                    let r = t.render(kind, locale, &ctx)?;
                    // A plan with overage never reads as paused.
                    if overage {
                        assert!(
                            !r.text.contains("pausad") && !r.text.contains("paused"),
                            "{}",
                            r.text
                        );
                    }
                    assert!(!r.subject.is_empty());
                    // The price and the cap are said where overage is on (to the
                    // admins, once it is billed), only there.
                    let said = overage && (full || matches!(kind, Kind::AlertUser));
                    assert_eq!(r.text.contains("R$ 0,10"), said, "{}", r.text);
                    assert_eq!(r.html.contains("500.000"), said, "{}", r.html);
                    assert!(r.text.contains("830"), "{}", r.text);
                    assert!(r.html.contains("<html lang="), "{}", r.html);
                    assert!(!r.text.contains("\n\n\n"), "{}", r.text);
                }
            }
            for per_day in [true, false] {
                let r = t.render(
                    Kind::LimitUser,
                    locale,
                    &json!({"name": "Ana <b>", "plan_name": "Básico", "per_day": per_day, "messages": "1.000 mensagens",
                        "resets_at": "08/12/2026 00:00", "contact": null, "page_link": "http://x/me/link/abc"}),
                )?;
                assert!(
                    r.subject.contains(if per_day { "hoje" } else { "mês" })
                        || locale == Locale::En
                );
                assert!(
                    r.text.contains("1.000") && r.text.contains("08/12/2026 00:00"),
                    "{}",
                    r.text
                );
                assert!(r.html.contains("Ana &lt;b&gt;"), "{}", r.html);
                assert!(!r.text.contains("\n\n\n"), "{}", r.text);
            }
            let r = t.render(
                Kind::Test,
                locale,
                &json!({"transport": "smtp://mail:25", "from": "a@b.c"}),
            )?;
            assert!(r.subject.starts_with("tokengate"));
            let two = t.render(
                Kind::SignIn,
                locale,
                &json!({"name": "Ana", "link": "http://x/me/link/abc", "minutes": 30, "accounts": [
                    {"name": "Ana", "since": "01/11/2026", "link": "http://x/me/link/abc"},
                    {"name": null, "since": "02/11/2026", "link": "http://x/me/link/def"}], "more": true}),
            )?;
            let more = if locale == Locale::PtBr {
                "Há mais contas"
            } else {
                "There are more accounts"
            };
            assert!(
                two.text.contains(more) && two.html.contains(more),
                "{}",
                two.text
            );
            // minijinja escapes "/" in HTML.
            for part in [two.text.clone(), two.html.replace("&#x2f;", "/")] {
                assert!(
                    part.contains("/me/link/def") && part.contains("02/11/2026"),
                    "{part}"
                );
            }
            let r = t.render(
                Kind::SignIn,
                locale,
                &json!({"name": "Ana", "link": "http://x/me/link/abc", "minutes": 30, "accounts": []}),
            )?;
            assert!(r.text.contains("http://x/me/link/abc"), "{}", r.text);
            // minijinja escapes "/" in HTML.
            assert!(
                r.html
                    .replace("&#x2f;", "/")
                    .contains("http://x/me/link/abc"),
                "{}",
                r.html
            );
        }
        Ok(())
    }

    #[test]
    fn the_users_alert_carries_the_link_to_their_page_and_the_admins_copy_does_not()
    -> Result<(), TemplateError> {
        let t = Templates::new()?;
        for locale in [Locale::PtBr, Locale::En] {
            let user = t.render(Kind::AlertUser, locale, &alert_ctx("Ana", false))?;
            assert!(user.text.contains("/me/link/abc"), "{}", user.text);
            assert!(
                user.html.replace("&#x2f;", "/").contains("/me/link/abc"),
                "{}",
                user.html
            );
            let mut ctx = alert_ctx("Ana", false);
            ctx["page_link"] = json!(null);
            let without = t.render(Kind::AlertUser, locale, &ctx)?;
            assert!(!without.text.contains("/me/"), "{}", without.text);
            let admin = t.render(Kind::AlertAdmin, locale, &alert_ctx("Ana", false))?;
            assert!(!admin.text.contains("/me/link"), "{}", admin.text);
        }
        Ok(())
    }

    #[test]
    fn subjects_read_at_a_glance() -> Result<(), TemplateError> {
        let t = Templates::new()?;
        let warn = t.render(Kind::AlertUser, Locale::PtBr, &alert_ctx("Ana", false))?;
        assert_eq!(
            warn.subject,
            "Aviso: você já usou 80% dos seus tokens deste mês"
        );
        let out = t.render(Kind::AlertUser, Locale::En, &alert_ctx("Ana", true))?;
        assert_eq!(out.subject, "You are out of tokens: chat is paused");
        Ok(())
    }

    #[test]
    fn names_cannot_inject_markup_or_headers() -> Result<(), TemplateError> {
        let t = Templates::new()?;
        let mut ctx = alert_ctx("<script>alert(1)</script>", false);
        ctx["user_label"] = json!("x@example.com\r\nBcc: evil@example.com");
        let r = t.render(Kind::AlertAdmin, Locale::PtBr, &ctx)?;
        assert!(!r.html.contains("<script>"), "{}", r.html);
        assert!(r.html.contains("&lt;script&gt;"), "{}", r.html);
        assert!(!r.subject.contains('\n') && !r.subject.contains('\r'));
        Ok(())
    }

    #[test]
    fn a_missing_value_is_an_error_not_a_blank() -> Result<(), TemplateError> {
        let t = Templates::new()?;
        assert!(
            t.render(Kind::AlertUser, Locale::PtBr, &json!({"name": "Ana"}))
                .is_err()
        );
        Ok(())
    }
}
