//! The admin layout and the pieces pages share. Pure functions from data to markup.

use super::session::Flash;
use crate::config::Locale;
use chrono::NaiveDate;
use maud::{DOCTYPE, Markup, html};

/// Which navigation entry is current.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Nav {
    Overview,
    Users,
    Plans,
    Weights,
    Alerts,
    Requests,
    Codes,
    Reports,
    Audit,
    Account,
}

pub struct Page<'a> {
    pub locale: Locale,
    pub title: &'a str,
    pub nav: Nav,
    pub admin_email: &'a str,
    pub csrf: &'a str,
    pub flash: Option<Flash>,
    /// A global admin's pages link to the install-wide settings (model weights).
    pub global: bool,
}

fn head(title: &str) -> Markup {
    html! {
        meta charset="utf-8";
        meta name="viewport" content="width=device-width, initial-scale=1";
        title { (title) " · tokengate" }
        link rel="stylesheet" href="/static/admin.css";
    }
}

/// Every signed-in page: title, navigation, the flash message, then `body`.
pub fn layout(p: Page<'_>, body: Markup) -> Markup {
    let l = p.locale;
    let items = [
        (Nav::Overview, "/admin", l.pick("Visão geral", "Overview")),
        (Nav::Users, "/admin/users", l.pick("Usuários", "Users")),
        (Nav::Plans, "/admin/plans", l.pick("Planos", "Plans")),
        (
            Nav::Weights,
            "/admin/weights",
            l.pick("Pesos dos modelos", "Model weights"),
        ),
        (Nav::Alerts, "/admin/alerts", l.pick("Alertas", "Alerts")),
        (
            Nav::Requests,
            "/admin/requests",
            l.pick("Pedidos", "Requests"),
        ),
        (Nav::Codes, "/admin/codes", l.pick("Códigos", "Codes")),
        (
            Nav::Reports,
            "/admin/reports",
            l.pick("Relatórios", "Reports"),
        ),
        (Nav::Audit, "/admin/audit", l.pick("Auditoria", "Audit log")),
        (
            Nav::Account,
            "/admin/account",
            l.pick("Administradores", "Admins"),
        ),
    ];
    html! {
        (DOCTYPE)
        html lang=(l.html_lang()) {
            head { (head(p.title)) }
            body {
                header.top {
                    a.brand href="/admin" { "tokengate" }
                    nav aria-label=(l.pick("Navegação", "Navigation")) {
                        @for (id, href, label) in items.into_iter().filter(|(id, ..)| p.global || *id != Nav::Weights) {
                            a href=(href) aria-current=[(id == p.nav).then_some("page")] { (label) }
                        }
                    }
                    form.signout method="post" action="/admin/logout" {
                        (csrf_input(p.csrf))
                        span.who { (p.admin_email) }
                        button type="submit" { (l.pick("Sair", "Sign out")) }
                    }
                }
                main {
                    h1 { (p.title) }
                    @if let Some(f) = &p.flash {
                        p class=(if f.ok { "flash ok" } else { "flash error" }) role="status" { (f.text) }
                    }
                    (body)
                }
            }
        }
    }
}

/// Pages outside a session (sign-in) and error pages.
pub fn bare(locale: Locale, title: &str, body: Markup) -> Markup {
    html! {
        (DOCTYPE)
        html lang=(locale.html_lang()) {
            head { (head(title)) }
            body.bare { main.narrow { (body) } }
        }
    }
}

pub fn error_page(title: &str, text: &str) -> Markup {
    html! {
        (DOCTYPE)
        html {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                title { (title) }
                link rel="stylesheet" href="/static/admin.css";
            }
            body.bare { main.narrow {
                h1 { (title) }
                p { (text) }
                p { a href="/admin" { "tokengate" } }
            } }
        }
    }
}

pub fn csrf_input(token: &str) -> Markup {
    html! { input type="hidden" name="csrf" value=(token); }
}

pub fn tokens(n: i64, l: Locale) -> String {
    crate::i18n::tokens(n, l)
}

/// Centavos in reais: "R$ 1.199,90".
pub fn reais(centavos: i64, l: Locale) -> String {
    crate::domain::money::format_centavos(centavos, l == Locale::PtBr)
}

/// A usage bar: how much of the balance is used. A native `<meter>`, so it needs no
/// inline style (the Content-Security-Policy allows none): green, then amber from
/// 80% (a value equal to `low` is still in the good range, hence 79), red at 100%.
pub fn bar(percent: u8, l: Locale) -> Markup {
    let pct = percent.min(100);
    html! {
        meter.bar min="0" max="100" low="79" high="99" optimum="0" value=(pct)
            title=(format!("{pct}% {}", l.pick("usado", "used"))) { (pct) "%" }
    }
}

/// Tokens per day as an SVG bar chart, readable without JavaScript.
pub fn daily_chart(days: &[(NaiveDate, i64)], l: Locale) -> Markup {
    daily_chart_titled(
        days,
        l.pick("Uso nos últimos 30 dias", "Usage over the last 30 days"),
        l,
    )
}

/// [`daily_chart`] with its own caption.
pub fn daily_chart_titled(days: &[(NaiveDate, i64)], caption: &str, l: Locale) -> Markup {
    const W: f64 = 600.0;
    const H: f64 = 160.0;
    const TOP: f64 = 16.0;
    const BOTTOM: f64 = 20.0;
    let max = days.iter().map(|d| d.1).max().unwrap_or(0).max(1);
    let n = days.len().max(1) as f64;
    let slot = W / n;
    let plot = H - TOP - BOTTOM;
    let total: i64 = days.iter().map(|d| d.1).sum();
    let summary = format!("{caption}: {} tokens", tokens(total, l));
    html! {
        figure.chart {
            svg viewBox=(format!("0 0 {W} {H}")) role="img" aria-label=(summary) {
                title { (summary) }
                line x1="0" y1=(H - BOTTOM) x2=(W) y2=(H - BOTTOM) class="axis" {}
                text x="2" y="11" class="label" { (tokens(max, l)) }
                @for (i, (day, value)) in days.iter().enumerate() {
                    @let h = (*value as f64 / max as f64) * plot;
                    @let x = i as f64 * slot;
                    rect x=(format!("{:.1}", x + slot * 0.15)) y=(format!("{:.1}", H - BOTTOM - h))
                        width=(format!("{:.1}", slot * 0.7)) height=(format!("{:.1}", h)) {
                        title { (crate::i18n::date(*day, l)) ": " (tokens(*value, l)) " tokens" }
                    }
                    @if i % 5 == 0 || i + 1 == days.len() {
                        @let anchor = if i == 0 { "start" } else if i + 1 == days.len() { "end" } else { "middle" };
                        @let at = match anchor { "start" => x, "end" => x + slot, _ => x + slot / 2.0 };
                        text x=(format!("{at:.1}")) y=(H - 4.0) class="label" text-anchor=(anchor) {
                            (day.format("%d/%m").to_string())
                        }
                    }
                }
            }
            figcaption { (summary) }
        }
    }
}

/// Links to the pages of a long list, keeping the other query parameters.
pub fn pagination(page: i64, per_page: i64, total: i64, base: &str, l: Locale) -> Markup {
    let pages = ((total + per_page - 1) / per_page).max(1);
    let link = |p: i64| {
        let sep = if base.contains('?') { '&' } else { '?' };
        format!("{base}{sep}page={p}")
    };
    html! {
        nav.pagination aria-label=(l.pick("Páginas", "Pages")) {
            @if page > 1 { a href=(link(page - 1)) { "‹ " (l.pick("Anterior", "Previous")) } }
            span { (l.pick("Página", "Page")) " " (page) " / " (pages) " · " (total) " " (l.pick("no total", "in all")) }
            @if page < pages { a href=(link(page + 1)) { (l.pick("Próxima", "Next")) " ›" } }
        }
    }
}

/// Percent-encodes a query value.
pub fn url_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~' | b'/') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn user_text_is_escaped() {
        let page = layout(
            Page {
                locale: Locale::PtBr,
                title: "<script>alert(1)</script>",
                nav: Nav::Users,
                admin_email: "a@b.c",
                csrf: "t\"oken",
                flash: Some(Flash {
                    ok: false,
                    text: "<b>x</b>".into(),
                }),
                global: true,
            },
            html! {},
        )
        .into_string();
        assert!(!page.contains("<script>alert"));
        assert!(page.contains("&lt;script&gt;"));
        assert!(page.contains("&lt;b&gt;x&lt;/b&gt;"));
        assert!(page.contains("value=\"t&quot;oken\""));
    }

    #[test]
    fn chart_has_one_bar_per_day() {
        let d = NaiveDate::from_ymd_opt(2026, 11, 1).unwrap_or_default();
        let days: Vec<_> = (0..30)
            .map(|i| (d + chrono::Duration::days(i), i * 10))
            .collect();
        let svg = daily_chart(&days, Locale::PtBr).into_string();
        assert_eq!(svg.matches("<rect").count(), 30);
        assert!(svg.contains("290"));
    }

    #[test]
    fn query_values_are_encoded() {
        assert_eq!(
            url_encode("/admin/users?q=a b&x"),
            "/admin/users%3Fq%3Da%20b%26x"
        );
    }
}
