//! The user's pages: sign-in by email, the one-time link, the balance page, sign-out.

use super::session::{self, UserSession};
use super::store::{self, Allowance, Limit, TokenKind};
use super::{MeError, SESSION_TTL};
use crate::admin::views as shared;
use crate::alerts::{self, Role};
use crate::config::Locale;
use crate::domain::money::format_micro;
use crate::domain::{Cycle, Side};
use crate::i18n;
use crate::startup::AppState;
use actix_web::http::StatusCode;
use actix_web::{HttpRequest, HttpResponse, web};
use maud::{DOCTYPE, Markup, html};
use serde::Deserialize;

pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.route("", web::get().to(home))
        .route("/", web::get().to(home))
        .route("/sign-in", web::get().to(sign_in_form))
        .route("/sign-in", web::post().to(sign_in_submit))
        .route("/link/{token}", web::get().to(link_show))
        .route("/link", web::post().to(link_use))
        .route("/sign-out", web::post().to(sign_out))
        .route("/redeem", web::post().to(super::credits::redeem))
        .route("/credit-request", web::post().to(super::credits::ask));
}

/// Sign-in mails asked for: per address typed and per client, in 15 minutes. The
/// address's limit only stops the mails (the answer stays the same, so it tells
/// nothing); the client's limit is said, since it tells nothing about an address.
const SIGN_IN_LIMIT: Limit = Limit {
    kind: "sign_in",
    per_subject: 3,
    per_client: 10,
    window: chrono::Duration::minutes(15),
};

/// Longest address a form may carry (RFC 5321's limit on a path).
const MAX_EMAIL: usize = 254;

fn html_response(status: StatusCode, page: Markup) -> HttpResponse {
    HttpResponse::build(status)
        .content_type("text/html; charset=utf-8")
        .body(page.into_string())
}

/// Every user page: the same stylesheet as the dashboard, a narrow column.
fn layout(l: Locale, title: &str, signed_in: Option<&str>, body: Markup) -> Markup {
    html! {
        (DOCTYPE)
        html lang=(l.html_lang()) {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                meta name="robots" content="noindex";
                title { (title) }
                link rel="stylesheet" href="/static/admin.css";
            }
            body.me {
                header.me-top {
                    span.brand { (l.pick("Seus tokens", "Your tokens")) }
                    @if let Some(csrf) = signed_in {
                        form.signout method="post" action="/me/sign-out" {
                            (shared::csrf_input(csrf))
                            button type="submit" { (l.pick("Sair", "Sign out")) }
                        }
                    }
                }
                main.me-main { (body) }
            }
        }
    }
}

/// A short page for errors no handler renders itself.
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
            body.me { main.me-main {
                h1 { (title) }
                p { (text) }
                p { a href="/me" { "← Voltar / Back" } }
            } }
        }
    }
}

/// The sign-in form, with an optional notice above it.
fn sign_in_page(l: Locale, notice: Option<Markup>, status: StatusCode) -> HttpResponse {
    let title = l.pick("Ver meu saldo de tokens", "See my token balance");
    let body = html! {
        h1 { (title) }
        @if let Some(n) = notice { (n) }
        p { (l.pick(
            "Digite o email que você usa no chat. Enviaremos um link para abrir sua página, sem senha.",
            "Type the email you use in the chat. We will send you a link that opens your page, no password needed.",
        )) }
        form.stack method="post" action="/me/sign-in" {
            label { "Email"
                input type="email" name="email" required maxlength=(MAX_EMAIL) autocomplete="email" inputmode="email" autofocus; }
            button type="submit" { (l.pick("Enviar o link", "Send the link")) }
        }
    };
    html_response(status, layout(l, title, None, body))
}

pub async fn sign_in_form(state: web::Data<AppState>) -> HttpResponse {
    sign_in_page(state.config.locale, None, StatusCode::OK)
}

#[derive(Deserialize, Default)]
#[serde(default)]
pub struct SignInForm {
    email: String,
}

/// Answers the same whether or not the address is known, and before any mail is
/// looked up or sent: the mail goes out from a background task.
pub async fn sign_in_submit(
    state: web::Data<AppState>,
    req: HttpRequest,
    form: web::Form<SignInForm>,
) -> Result<HttpResponse, MeError> {
    session::check_origin(&req, &state)?;
    let l = state.config.locale;
    let email = form.email.trim().to_lowercase();
    let plausible = email.len() <= MAX_EMAIL
        && !email.chars().any(|c| c.is_control() || c.is_whitespace())
        && email
            .split_once('@')
            .is_some_and(|(local, domain)| !local.is_empty() && domain.contains('.'));
    if !plausible {
        let notice = html! { p.flash.error role="alert" { (l.pick(
            "Isso não parece um endereço de email. Confira e tente de novo.",
            "That does not look like an email address. Check it and try again.",
        )) } };
        return Ok(sign_in_page(l, Some(notice), StatusCode::BAD_REQUEST));
    }
    let now = state.ledger.now().naive_utc();
    let address = crate::net::client_address(&req, &state.config.trusted_proxies);
    let allowance = store::attempt(state.ledger.db(), SIGN_IN_LIMIT, &email, &address, now).await?;
    match allowance {
        Allowance::ClientLimited => {
            tracing::warn!(%address, "sign-in mail refused: too many from this client");
            let notice = html! { p.flash.error role="alert" { (l.pick(
                "Muitos pedidos seguidos. Espere 15 minutos e tente de novo.",
                "Too many requests in a row. Wait 15 minutes and try again.",
            )) } };
            return Ok(sign_in_page(l, Some(notice), StatusCode::TOO_MANY_REQUESTS));
        }
        Allowance::SubjectLimited => {
            tracing::info!("sign-in mail not sent: the address had its share");
        }
        Allowance::Allowed { .. } => {
            actix_web::rt::spawn(super::mail::send_sign_in(state.clone(), email));
        }
    }
    let title = l.pick("Confira seu email", "Check your email");
    let body = html! {
        h1 { (title) }
        p { (l.pick(
            "Se este email for de uma conta do chat, enviamos para ele um link que abre sua página. O link vale por 30 minutos.",
            "If this email belongs to a chat account, we sent it a link that opens your page. The link works for 30 minutes.",
        )) }
        p.muted { (l.pick(
            "Não chegou? Olhe a caixa de spam, ou peça de novo em alguns minutos.",
            "Nothing arrived? Look in the spam folder, or ask again in a few minutes.",
        )) }
        p { a href="/me/sign-in" { (l.pick("Pedir outro link", "Ask for another link")) } }
    };
    Ok(html_response(StatusCode::OK, layout(l, title, None, body)))
}

/// The page a used, expired or unknown link leads to.
fn link_dead(l: Locale) -> HttpResponse {
    let notice = html! { p.flash.error role="alert" { (l.pick(
        "Este link já foi usado ou expirou. Peça um novo abaixo.",
        "This link was already used or has expired. Ask for a new one below.",
    )) } };
    sign_in_page(l, Some(notice), StatusCode::GONE)
}

/// A link from a mail. Opening it does not use it: mail scanners open links too, and
/// would spend it before the user could. The button does.
pub async fn link_show(
    state: web::Data<AppState>,
    path: web::Path<String>,
) -> Result<HttpResponse, MeError> {
    let l = state.config.locale;
    let token = path.into_inner();
    if token.len() > 64 {
        return Ok(link_dead(l));
    }
    let now = state.ledger.now().naive_utc();
    let db = state.ledger.db().clone();
    let t = token.clone();
    let live = web::block(move || store::holder(&db, &t, TokenKind::Link, now)).await??;
    if live.is_none() {
        return Ok(link_dead(l));
    }
    let title = l.pick("Abrir minha página", "Open my page");
    let body = html! {
        h1 { (l.pick("Seu saldo de tokens", "Your token balance")) }
        form.stack method="post" action="/me/link" {
            input type="hidden" name="token" value=(token);
            button.primary type="submit" { (title) }
        }
        p.muted { (l.pick(
            "O link funciona uma vez. Depois, este aparelho fica conectado por 14 dias.",
            "The link works once. After that, this device stays signed in for 14 days.",
        )) }
    };
    Ok(html_response(StatusCode::OK, layout(l, title, None, body)))
}

#[derive(Deserialize, Default)]
#[serde(default)]
pub struct LinkForm {
    token: String,
}

/// Uses the link up and signs this browser in as its user.
pub async fn link_use(
    state: web::Data<AppState>,
    req: HttpRequest,
    form: web::Form<LinkForm>,
) -> Result<HttpResponse, MeError> {
    session::check_origin(&req, &state)?;
    let l = state.config.locale;
    if form.token.is_empty() || form.token.len() > 64 {
        return Ok(link_dead(l));
    }
    let now = state.ledger.now().naive_utc();
    let db = state.ledger.db();
    let Some(user_id) = store::consume_link(db, &form.token, now).await? else {
        return Ok(link_dead(l));
    };
    let token = store::issue(db, user_id, TokenKind::Session, now, SESSION_TTL).await?;
    tracing::info!(user = user_id, "user signed in to their page");
    Ok(HttpResponse::SeeOther()
        .cookie(session::cookie(&token, secure(&state)))
        .insert_header(("location", "/me"))
        .finish())
}

fn secure(state: &AppState) -> bool {
    state.config.public_url.starts_with("https://")
}

#[derive(Deserialize, Default)]
#[serde(default)]
pub struct CsrfForm {
    csrf: String,
}

pub async fn sign_out(
    state: web::Data<AppState>,
    me: UserSession,
    req: HttpRequest,
    form: web::Form<CsrfForm>,
) -> Result<HttpResponse, MeError> {
    me.check_post(&req, &state, &form.csrf)?;
    store::end_session(state.ledger.db(), &me.token).await?;
    Ok(HttpResponse::SeeOther()
        .cookie(session::removal(secure(&state)))
        .insert_header(("location", "/me/sign-in"))
        .finish())
}

/// How many of the newest requests the page lists.
const RECENT: i64 = 20;

#[derive(Deserialize, Default)]
#[serde(default)]
pub struct HomeQuery {
    done: String,
}

/// The balance page of the session's user.
pub async fn home(
    state: web::Data<AppState>,
    me: UserSession,
    q: web::Query<HomeQuery>,
) -> Result<HttpResponse, MeError> {
    let l = state.config.locale;
    let tz = state.config.timezone;
    let ledger = state.ledger.clone();
    let id = me.user_id;
    let (summary, daily, models, recent, user_alerts, requests, chats, contact) =
        web::block(move || {
            Ok::<_, crate::ledger::LedgerError>((
                ledger.user_summary(id)?,
                ledger.daily_usage(id)?,
                ledger.usage_by_model(id)?,
                ledger.recent_usage(id, RECENT)?,
                alerts::list(ledger.db(), crate::domain::Scope::All, Some(id), 20)?,
                ledger.credit_requests(crate::ledger::credits::Which::All, Some(id), 5)?,
                ledger.conversations(id)?,
                ledger.contact_of(id)?,
            ))
        })
        .await??;
    // A distributor's users are sent to its contact.
    let contact = contact.or_else(|| state.config.support_contact.clone());
    let done = super::credits::Done::parse(&q.done).map(|d| d.message(l));
    let resets = Cycle::parse(&summary.cycle)
        .map(|c| i18n::date(c.next().starts_at(tz).with_timezone(&tz).date_naive(), l))
        .unwrap_or_default();
    let left = summary.remaining.max(0);
    let title = l.pick("Seus tokens", "Your tokens");
    let hello = summary.name.as_deref().filter(|n| !n.trim().is_empty());
    let body = html! {
        @if let Some((ok, text)) = done {
            p class=(if ok { "flash ok" } else { "flash error" }) role="status" #done { (text) }
        }
        @if let Some(n) = hello { p.hello { (l.pick("Olá, ", "Hello, ")) (n) } }
        section.balance aria-labelledby="left" {
            p #left .big {
                span.figure #remaining { (i18n::tokens(left, l)) }
                " " span.unit { (l.pick("tokens restantes", "tokens left")) }
            }
            p.words { (l.pick("Cerca de ", "About ")) (i18n::tokens_phrase(left, l)) ". "
                (l.pick("Você já usou ", "You have used ")) (summary.used_percent) "%"
                (l.pick(" do que tinha neste mês.", " of what you had this month.")) }
            (shared::bar(summary.used_percent, l))
            @if summary.suspended {
                p.flash.error { (l.pick(
                    "Seu acesso ao chat está suspenso. Fale com o administrador.",
                    "Your access to the chat is suspended. Contact your administrator.",
                )) }
            } @else if summary.blocked && summary.sides.left(Side::Output) == Some(0) && summary.credits <= 0 {
                p.flash.error { (l.pick(
                    "Seus tokens de saída (as respostas) acabaram: o chat está pausado até a renovação ou até você receber mais créditos.",
                    "You are out of output tokens (the answers): the chat is paused until the renewal or until you get more credits.",
                )) }
            } @else if summary.blocked && summary.sides.left(Side::Input) == Some(0) && summary.credits <= 0 {
                p.flash.error { (l.pick(
                    "Seus tokens de entrada (o que você envia) acabaram: o chat está pausado até a renovação ou até você receber mais créditos.",
                    "You are out of input tokens (what you send): the chat is paused until the renewal or until you get more credits.",
                )) }
            } @else if summary.blocked {
                p.flash.error { (l.pick(
                    "Seus tokens acabaram: o chat está pausado até a renovação ou até você receber mais créditos.",
                    "You are out of tokens: the chat is paused until the renewal or until you get more credits.",
                )) }
            }
            dl.facts {
                dt { (l.pick("Plano", "Plan")) }
                dd #plan { (summary.plan) " · " (i18n::tokens(summary.monthly_allowance, l)) " " (l.pick("tokens por mês", "tokens a month")) }
                @for (side, id, name, what) in [
                    (Side::Input, "input-left", l.pick("Tokens de entrada", "Input tokens"), l.pick("o que você envia: mensagens, histórico, imagens", "what you send: messages, history, images")),
                    (Side::Output, "output-left", l.pick("Tokens de saída", "Output tokens"), l.pick("as respostas", "the answers")),
                ] {
                    @if let (Some(left), Some(cap)) = (summary.sides.left(side), summary.sides.allowances.of(side)) {
                        dt { (name) }
                        dd id=(id) { (i18n::tokens(left, l)) (l.pick(" restantes de ", " left of ")) (i18n::tokens(cap.get(), l))
                            " " span.muted { "(" (what) ")" } }
                    }
                }
                @let overage = &summary.overage;
                @if overage.policy.is_some() || overage.tokens > 0 {
                    dt { (l.pick("Excedente neste mês", "Overage this month")) }
                    dd #overage { (i18n::tokens(overage.tokens, l)) " tokens · " (format_micro(overage.cost, l == Locale::PtBr))
                        @if let Some(o) = overage.policy {
                            " " span.muted { "("
                                (l.pick("depois da franquia e dos créditos, cobrado a ", "past your allowance and credits, billed at "))
                                (o.price.in_reais(l == Locale::PtBr))
                                (l.pick(" por 1.000 tokens, até ", " per 1,000 tokens, up to "))
                                (i18n::tokens(o.cap.get(), l)) (l.pick(" tokens por mês)", " tokens a month)")) }
                        } }
                }
                @if !summary.plan_models.is_empty() {
                    dt { (l.pick("Modelos do plano", "Your plan's models")) }
                    dd #models { (summary.plan_models.join(", ")) }
                }
                @let pace = &summary.requests;
                @if let Some(limit) = pace.limits.per_day {
                    dt { (l.pick("Mensagens hoje", "Messages today")) }
                    dd #messages-today { (left_of(limit.get().saturating_sub(pace.today), limit.get(), l))
                        " " span.muted { (l.pick("(recomeça à meia-noite)", "(starts over at midnight)")) } }
                }
                @if let Some(limit) = pace.limits.per_month {
                    dt { (l.pick("Mensagens neste mês", "Messages this month")) }
                    dd #messages-month { (left_of(limit.get().saturating_sub(pace.this_cycle), limit.get(), l)) }
                }
                @if let Some(limit) = pace.limits.per_minute {
                    dt { (l.pick("Ritmo", "Pace")) }
                    dd #messages-minute { (l.pick("até ", "up to ")) (messages(limit.get(), l)) (l.pick(" por minuto", " a minute")) }
                }
                dt { (l.pick("Renovação", "Renewal")) }
                dd #renews { (l.pick("renova em ", "renews on ")) (resets) }
                dt { (l.pick("Créditos extras", "Extra credits")) }
                dd #credits { (i18n::tokens(summary.credits, l)) " tokens"
                    @if summary.credits > 0 { " " span.muted { (l.pick("(não expiram na renovação)", "(they do not expire at the renewal)")) } } }
                dt { (l.pick("Usados neste mês", "Used this month")) }
                dd #used { (i18n::tokens(summary.used_this_cycle, l)) " tokens" }
                @if summary.held > 0 {
                    dt { (l.pick("Reservados agora", "Set aside now")) }
                    dd { (i18n::tokens(summary.held, l)) " " (l.pick("tokens para respostas em andamento", "tokens for answers in progress")) }
                }
            }
            @if let Some(contact) = &contact {
                p.muted { (l.pick("Dúvidas? Fale com ", "Questions? Contact ")) (contact) "." }
            }
        }
        (super::credits::section(l, tz, &me.csrf, &requests))
        section {
            h2 { (l.pick("Uso por dia neste mês", "Use per day this month")) }
            (shared::daily_chart_titled(&daily, l.pick("Uso neste mês", "Use this month"), l))
        }
        section {
            h2 { (l.pick("Uso por modelo neste mês", "Use per model this month")) }
            @if models.is_empty() { p.empty { (l.pick("Nenhum uso neste mês.", "No use this month.")) } }
            @else {
                table.me-table {
                    thead { tr { th { (l.pick("Modelo", "Model")) } th.num { (l.pick("Pedidos", "Requests")) } th.num { "Tokens" } } }
                    tbody { @for m in &models { tr {
                        td { (m.model) } td.num { (i18n::tokens(m.requests, l)) } td.num { (i18n::tokens(m.charged, l)) }
                    } } }
                }
            }
        }
        @if chats.iter().any(|c| !c.key.is_empty()) {
            section {
                h2 { (l.pick("Conversas que mais usaram neste mês", "Conversations that used the most this month")) }
                table.me-table #conversations {
                    thead { tr { th { (l.pick("Conversa", "Conversation")) } th.num { (l.pick("Pedidos", "Requests")) } th.num { "Tokens" } } }
                    tbody { @for c in chats.iter().take(10) { tr {
                        td { @if c.key.is_empty() { span.muted { (l.pick("sem conversa", "no conversation")) } }
                             @else { code title=(c.key) { (c.key.chars().take(8).collect::<String>()) } } }
                        td.num { (i18n::tokens(c.requests, l)) }
                        td.num { (i18n::tokens(c.charged, l)) }
                    } } }
                }
            }
        }
        section {
            h2 { (l.pick("Últimos pedidos", "Latest requests")) }
            @if recent.is_empty() { p.empty { (l.pick("Nenhum pedido ainda.", "No requests yet.")) } }
            @else {
                table.me-table #recent {
                    thead { tr { th { (l.pick("Quando", "When")) } th { (l.pick("Modelo", "Model")) } th.num { "Tokens" } } }
                    tbody { @for r in &recent { tr {
                        td { (i18n::datetime(r.created_at, tz, l)) } td { (r.model) } td.num { (i18n::tokens(r.charged, l)) }
                    } } }
                }
            }
        }
        section {
            h2 { (l.pick("Avisos enviados", "Alerts sent")) }
            @if user_alerts.is_empty() { p.empty { (l.pick("Nenhum aviso enviado até agora.", "No alerts so far.")) } }
            @else {
                ul.me-alerts { @for a in &user_alerts {
                    @let mailed = a.messages.iter().any(|m| m.role == Role::User && m.sent_at.is_some());
                    li {
                        (i18n::datetime(a.created_at, tz, l)) " · "
                        @if a.threshold >= 100 { (l.pick("tokens acabaram", "tokens ran out")) }
                        @else { (a.threshold) "% " (l.pick("usados", "used")) }
                        @if mailed { " · " (l.pick("email enviado", "email sent")) }
                    }
                } }
            }
        }
    };
    Ok(html_response(
        StatusCode::OK,
        layout(l, title, Some(&me.csrf), body),
    ))
}

/// "restam 12 de 50" ("resta 1 de 50") / "12 of 50 left".
fn left_of(left: u32, limit: u32, l: Locale) -> String {
    let verb = if left == 1 { "resta" } else { "restam" };
    let (left, limit) = (
        i18n::tokens(i64::from(left), l),
        i18n::tokens(i64::from(limit), l),
    );
    match l {
        Locale::PtBr => format!("{verb} {left} de {limit}"),
        Locale::En => format!("{left} of {limit} left"),
    }
}

/// "1 mensagem", "50 mensagens" / "1 message", "50 messages".
fn messages(n: u32, l: Locale) -> String {
    let count = i18n::tokens(i64::from(n), l);
    match (l, n) {
        (Locale::PtBr, 1) => "1 mensagem".to_owned(),
        (Locale::PtBr, _) => format!("{count} mensagens"),
        (Locale::En, 1) => "1 message".to_owned(),
        (Locale::En, _) => format!("{count} messages"),
    }
}
