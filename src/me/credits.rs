//! Getting more tokens from the user's page: redeeming a code, and asking the admins
//! for credits. Each form answers with a redirect to the page and a message key
//! (never user text in the URL).

use super::MeError;
use super::session::UserSession;
use super::store::{self, Allowance, Limit};
use crate::admin::views as shared;
use crate::config::Locale;
use crate::domain::TokenAmount;
use crate::i18n;
use crate::ledger::credits::{CreditRequest, Redeemed, RequestError, RequestState};
use crate::startup::AppState;
use actix_web::{HttpRequest, HttpResponse, web};
use maud::{Markup, html};
use serde::Deserialize;

/// Failed redemptions: per user and per client, in 15 minutes. A code has 100
/// random bits, so guessing cannot work; the limit keeps a script from trying. The
/// client's share is larger: many people may come through one address (an office).
const REDEEM_LIMIT: Limit = Limit {
    kind: "redeem",
    per_subject: 10,
    per_client: 100,
    window: chrono::Duration::minutes(15),
};

/// The most one request may ask for, and the longest note.
const MAX_REQUEST: i64 = 1_000_000_000;
const MAX_NOTE: usize = 500;

/// What a form did, shown once on the page it redirects to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Done {
    CodeAdded,
    CodeUnknown,
    CodeUsed,
    CodeExpired,
    TooManyCodes,
    TooManyFromHere,
    Requested,
    AlreadyRequested,
    BadAmount,
    TooMuch,
}

impl Done {
    const ALL: [Self; 10] = [
        Self::CodeAdded,
        Self::CodeUnknown,
        Self::CodeUsed,
        Self::CodeExpired,
        Self::TooManyCodes,
        Self::TooManyFromHere,
        Self::Requested,
        Self::AlreadyRequested,
        Self::BadAmount,
        Self::TooMuch,
    ];

    fn key(self) -> &'static str {
        match self {
            Self::CodeAdded => "code-added",
            Self::CodeUnknown => "code-unknown",
            Self::CodeUsed => "code-used",
            Self::CodeExpired => "code-expired",
            Self::TooManyCodes => "code-wait",
            Self::TooManyFromHere => "code-wait-network",
            Self::Requested => "requested",
            Self::AlreadyRequested => "already-requested",
            Self::BadAmount => "bad-amount",
            Self::TooMuch => "too-much",
        }
    }

    pub fn parse(key: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|d| d.key() == key)
    }

    /// The message, and whether it is good news.
    pub fn message(self, l: Locale) -> (bool, &'static str) {
        match self {
            Self::CodeAdded => (
                true,
                l.pick(
                    "Código aceito: os tokens já estão no seu saldo.",
                    "Code accepted: the tokens are in your balance.",
                ),
            ),
            Self::CodeUnknown => (
                false,
                l.pick(
                    "Código não encontrado. Confira as letras e os números e tente de novo.",
                    "Code not found. Check the letters and digits and try again.",
                ),
            ),
            Self::CodeUsed => (
                false,
                l.pick("Este código já foi usado.", "This code was already used."),
            ),
            Self::CodeExpired => (
                false,
                l.pick("Este código expirou.", "This code has expired."),
            ),
            Self::TooManyCodes => (
                false,
                l.pick(
                    "Muitas tentativas com códigos inválidos. Espere 15 minutos e tente de novo.",
                    "Too many attempts with invalid codes. Wait 15 minutes and try again.",
                ),
            ),
            Self::TooManyFromHere => (
                false,
                l.pick(
                    "Muitas tentativas com códigos inválidos a partir desta rede. Espere 15 minutos e tente de novo.",
                    "Too many attempts with invalid codes from this network. Wait 15 minutes and try again.",
                ),
            ),
            Self::Requested => (
                true,
                l.pick(
                    "Pedido enviado. Você recebe um email quando for respondido.",
                    "Request sent. You will get an email when it is answered.",
                ),
            ),
            Self::AlreadyRequested => (
                false,
                l.pick(
                    "Você já tem um pedido aguardando resposta.",
                    "You already have a request waiting for an answer.",
                ),
            ),
            Self::BadAmount => (
                false,
                l.pick(
                    "Digite quantos tokens você quer, só com números (por exemplo 100.000).",
                    "Type how many tokens you want, in digits only (for example 100,000).",
                ),
            ),
            Self::TooMuch => (
                false,
                l.pick(
                    "Um pedido pode ser de no máximo 1.000.000.000 tokens.",
                    "A request can be for at most 1,000,000,000 tokens.",
                ),
            ),
        }
    }
}

fn back(done: Done) -> HttpResponse {
    HttpResponse::SeeOther()
        .insert_header(("location", format!("/me?done={}", done.key())))
        .finish()
}

#[derive(Deserialize, Default)]
#[serde(default)]
pub struct RedeemForm {
    code: String,
    csrf: String,
}

pub async fn redeem(
    state: web::Data<AppState>,
    me: UserSession,
    req: HttpRequest,
    form: web::Form<RedeemForm>,
) -> Result<HttpResponse, MeError> {
    me.check_post(&req, &state, &form.csrf)?;
    let now = state.ledger.now().naive_utc();
    let client = crate::net::client_address(&req, &state.config.trusted_proxies);
    let subject = format!("user:{}", me.user_id);
    let event = match store::attempt(state.ledger.db(), REDEEM_LIMIT, &subject, &client, now)
        .await?
    {
        Allowance::Allowed { event } => event,
        Allowance::SubjectLimited => {
            tracing::warn!(
                user = me.user_id,
                "code redemption refused: too many failures"
            );
            return Ok(back(Done::TooManyCodes));
        }
        Allowance::ClientLimited => {
            tracing::warn!(user = me.user_id, %client, "code redemption refused: too many failures from this client");
            return Ok(back(Done::TooManyFromHere));
        }
    };
    let ledger = state.ledger.clone();
    let (user, code) = (me.user_id, form.code.chars().take(100).collect::<String>());
    let note = state.config.locale.pick("código do lote", "code of batch");
    let outcome = web::block(move || ledger.redeem_code(user, &code, note)).await??;
    let done = match outcome {
        Redeemed::Added { tokens } => {
            // Only failures count against the limit.
            store::forget(state.ledger.db(), event).await?;
            tracing::info!(user = me.user_id, tokens, "code redeemed");
            Done::CodeAdded
        }
        Redeemed::Unknown => Done::CodeUnknown,
        Redeemed::Used => Done::CodeUsed,
        Redeemed::Expired => Done::CodeExpired,
    };
    Ok(back(done))
}

#[derive(Deserialize, Default)]
#[serde(default)]
pub struct AskForm {
    tokens: String,
    note: String,
    csrf: String,
}

pub async fn ask(
    state: web::Data<AppState>,
    me: UserSession,
    req: HttpRequest,
    form: web::Form<AskForm>,
) -> Result<HttpResponse, MeError> {
    me.check_post(&req, &state, &form.csrf)?;
    let tokens = match TokenAmount::parse(&form.tokens) {
        Ok(t) if t.get() <= MAX_REQUEST => t,
        Ok(_) | Err(crate::domain::tokens::TokenAmountError::TooLarge) => {
            return Ok(back(Done::TooMuch));
        }
        Err(_) => return Ok(back(Done::BadAmount)),
    };
    let note = crate::i18n::one_line(&form.note, MAX_NOTE);
    let note = Some(note).filter(|n| !n.is_empty());
    let ledger = state.ledger.clone();
    let user = me.user_id;
    match web::block(move || ledger.request_credits(user, tokens, note.as_deref())).await? {
        Ok(id) => {
            tracing::info!(user = me.user_id, request = id, "credits requested");
            Ok(back(Done::Requested))
        }
        Err(RequestError::AlreadyOpen) => Ok(back(Done::AlreadyRequested)),
        Err(RequestError::Ledger(e)) => Err(e.into()),
        Err(e) => Err(MeError::Internal(e.to_string())),
    }
}

/// The page's section for getting more tokens: the open request if any (else the
/// form to ask), the last decision, and the code form.
pub fn section(l: Locale, tz: chrono_tz::Tz, csrf: &str, requests: &[CreditRequest]) -> Markup {
    let open = requests.iter().find(|r| r.state == RequestState::Open);
    let last_decided = requests.iter().find(|r| r.state != RequestState::Open);
    html! {
        section.more #more {
            h2 { (l.pick("Mais tokens", "More tokens")) }
            form.stack method="post" action="/me/redeem" {
                h3 { (l.pick("Tenho um código", "I have a code")) }
                (shared::csrf_input(csrf))
                label { (l.pick("Código", "Code"))
                    input type="text" name="code" required maxlength="100" autocomplete="off" autocapitalize="characters" spellcheck="false" placeholder="TG-XXXX-XXXX-XXXX-XXXX-XXXX"; }
                button type="submit" { (l.pick("Usar o código", "Redeem the code")) }
            }
            @if let Some(r) = open {
                p.flash.ok #open-request { (l.pick("Seu pedido de ", "Your request for ")) (i18n::tokens(r.tokens, l)) " tokens "
                    (l.pick("está aguardando resposta desde ", "has been waiting since ")) (i18n::datetime(r.created_at, tz, l)) "." }
            } @else {
                form.stack method="post" action="/me/credit-request" {
                    h3 { (l.pick("Pedir mais créditos", "Ask for more credits")) }
                    (shared::csrf_input(csrf))
                    label { (l.pick("Quantos tokens?", "How many tokens?"))
                        input type="text" name="tokens" required inputmode="numeric" maxlength="20" placeholder="100.000"; }
                    label { (l.pick("Observação (opcional)", "Note (optional)"))
                        input type="text" name="note" maxlength=(MAX_NOTE); }
                    button type="submit" { (l.pick("Enviar pedido", "Send the request")) }
                    p.muted { (l.pick("Um administrador responde por email.", "An administrator answers by email.")) }
                }
            }
            @if let Some(r) = last_decided {
                p.muted #last-request {
                    (l.pick("Último pedido: ", "Last request: ")) (i18n::tokens(r.tokens, l)) " tokens, "
                    @if r.state == RequestState::Approved { (l.pick("aprovado", "approved")) }
                    @else { (l.pick("não aprovado", "not approved"))
                        @if let Some(reason) = &r.reason { " (" (reason) ")" } }
                    @if let Some(at) = r.decided_at { " " (l.pick("em ", "on ")) (i18n::datetime(at, tz, l)) }
                    "."
                }
            }
        }
    }
}
