//! Users' credit requests: the open queue (approve or decline with a reason) and the
//! latest decisions.

use super::{actor, back, locale, one_line, render, with_scoped};
use crate::admin::AdminError;
use crate::admin::session::SignedIn;
use crate::admin::views::{self, Nav};
use crate::i18n;
use crate::ledger::credits::{RequestError, RequestState, Which};
use crate::startup::AppState;
use actix_web::{HttpRequest, HttpResponse, web};
use maud::html;
use serde::Deserialize;

pub async fn list(state: web::Data<AppState>, me: SignedIn) -> Result<HttpResponse, AdminError> {
    let l = locale(&state);
    let tz = state.config.timezone;
    let (open, decided, open_count) = with_scoped(&state, &me, |ledger| {
        Ok::<_, crate::db::StoreError>((
            ledger.credit_requests(Which::Open, 200)?,
            ledger.credit_requests(Which::Decided, 50)?,
            ledger.open_credit_requests()?,
        ))
    })
    .await?;
    let who = |r: &crate::ledger::credits::CreditRequest| {
        crate::ledger::stats::label(
            r.user_id,
            r.user_email.as_deref(),
            r.user_name.as_deref(),
            r.user_external_id.as_deref(),
        )
    };
    let body = html! {
        section {
            h2 { (l.pick("Aguardando resposta", "Waiting for an answer")) " (" (open_count) ")" }
            @if open_count > open.len() as i64 { p.muted { (l.pick("Os 200 mais antigos:", "The 200 oldest:")) } }
            @if open.is_empty() { p.empty { (l.pick("Nenhum pedido aberto.", "No open requests.")) } }
            @else {
                table #open-requests {
                    thead { tr {
                        th { (l.pick("Pedido", "Request")) } th { (l.pick("Usuário", "User")) } th.num { "Tokens" }
                        th { (l.pick("Observação", "Note")) } th { (l.pick("Desde", "Since")) } th { (l.pick("Decisão", "Decision")) }
                    } }
                    tbody { @for r in &open { tr {
                        td { "#" (r.id) }
                        td { a href=(format!("/admin/users/{}", r.user_id)) { (who(r)) }
                             @if r.user_suspended { " " span.badge.suspended { (l.pick("suspenso", "suspended")) } } }
                        td.num { (views::tokens(r.tokens, l)) }
                        td { (r.note.as_deref().unwrap_or("")) }
                        td { (i18n::datetime(r.created_at, tz, l)) }
                        td {
                            form.inline method="post" action=(format!("/admin/requests/{}/approve", r.id)) {
                                (views::csrf_input(&me.csrf))
                                button type="submit" { (l.pick("Aprovar", "Approve")) }
                            }
                            form.inline method="post" action=(format!("/admin/requests/{}/decline", r.id)) {
                                (views::csrf_input(&me.csrf))
                                input type="text" name="reason" maxlength="300" placeholder=(l.pick("Motivo (vai para o usuário)", "Reason (sent to the user)"));
                                button.danger type="submit" { (l.pick("Recusar", "Decline")) }
                            }
                        }
                    } } }
                }
            }
        }
        section {
            h2 { (l.pick("Decididos recentemente", "Recently decided")) }
            @if decided.is_empty() { p.empty { (l.pick("Nenhum ainda.", "None yet.")) } }
            @else {
                table {
                    thead { tr {
                        th { (l.pick("Pedido", "Request")) } th { (l.pick("Usuário", "User")) } th.num { "Tokens" }
                        th { (l.pick("Decisão", "Decision")) } th { (l.pick("Por", "By")) } th { (l.pick("Quando", "When")) }
                    } }
                    tbody { @for r in &decided { tr {
                        td { "#" (r.id) }
                        td { a href=(format!("/admin/users/{}", r.user_id)) { (who(r)) } }
                        td.num { (views::tokens(r.tokens, l)) }
                        td { @if r.state == RequestState::Approved { span.badge.ok { (l.pick("Aprovado", "Approved")) } }
                             @else { span.badge.blocked { (l.pick("Recusado", "Declined")) } @if let Some(reason) = &r.reason { " " (reason) } } }
                        td { (r.decided_by.as_deref().unwrap_or("")) }
                        td { @if let Some(at) = r.decided_at { (i18n::datetime(at, tz, l)) } }
                    } } }
                }
            }
        }
    };
    Ok(render(
        &state,
        &me,
        l.pick("Pedidos de créditos", "Credit requests"),
        Nav::Requests,
        body,
    ))
}

#[derive(Deserialize, Default)]
#[serde(default)]
pub struct DecideForm {
    csrf: String,
    reason: String,
}

async fn decide(
    state: web::Data<AppState>,
    me: SignedIn,
    req: HttpRequest,
    id: i64,
    approve: bool,
    form: DecideForm,
) -> Result<HttpResponse, AdminError> {
    me.check_post(&req, &state, &form.csrf)?;
    let l = locale(&state);
    let reason = Some(one_line(&form.reason, 300)).filter(|r| !r.is_empty() && !approve);
    let who = actor(&me);
    let ledger = state.ledger.scoped(me.admin.scope());
    let label = l.pick("pedido de créditos", "credit request");
    let result = web::block(move || {
        ledger.decide_credit_request(id, approve, reason.as_deref(), &who, label)
    })
    .await?;
    let text = match result {
        Ok(r) if approve => format!(
            "{} #{}: {} tokens {}",
            l.pick("Pedido", "Request"),
            r.id,
            views::tokens(r.tokens, l),
            l.pick(
                "concedidos; o usuário recebe um email.",
                "granted; the user gets an email."
            )
        ),
        Ok(r) => format!(
            "{} #{} {}",
            l.pick("Pedido", "Request"),
            r.id,
            l.pick(
                "recusado; o usuário recebe um email.",
                "declined; the user gets an email."
            )
        ),
        Err(RequestError::AlreadyDecided) => {
            return Ok(back(
                &me,
                "/admin/requests",
                false,
                l.pick(
                    "Este pedido já foi decidido.",
                    "This request was already decided.",
                ),
            ));
        }
        Err(RequestError::NotFound) => return Err(AdminError::NotFound),
        Err(RequestError::AlreadyOpen) => return Err(AdminError::Internal("unexpected".into())),
        Err(RequestError::Ledger(e)) => return Err(e.into()),
    };
    Ok(back(&me, "/admin/requests", true, text))
}

pub async fn approve(
    state: web::Data<AppState>,
    me: SignedIn,
    req: HttpRequest,
    path: web::Path<i64>,
    form: web::Form<DecideForm>,
) -> Result<HttpResponse, AdminError> {
    decide(state, me, req, path.into_inner(), true, form.into_inner()).await
}

pub async fn decline(
    state: web::Data<AppState>,
    me: SignedIn,
    req: HttpRequest,
    path: web::Path<i64>,
    form: web::Form<DecideForm>,
) -> Result<HttpResponse, AdminError> {
    decide(state, me, req, path.into_inner(), false, form.into_inner()).await
}
