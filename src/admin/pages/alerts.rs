//! Every alert and the delivery state of each of its messages.

use super::{locale, render, with_scoped};
use crate::admin::AdminError;
use crate::admin::session::SignedIn;
use crate::admin::views::Nav;
use crate::alerts::{Alert, DeliveryState, Role};
use crate::config::Locale;
use crate::i18n;
use crate::startup::AppState;
use actix_web::{HttpResponse, web};
use chrono_tz::Tz;
use maud::{Markup, html};

fn delivery_label(delivery: &str, l: Locale) -> &'static str {
    match delivery {
        "mail" => l.pick("Email ao usuário", "Mailed to the user"),
        "no_address" => l.pick("Sem email conhecido", "No email known"),
        "superseded" => l.pick(
            "Coberto por um limite maior",
            "Covered by a higher threshold",
        ),
        _ => l.pick("Desconhecido", "Unknown"),
    }
}

fn state_label(s: DeliveryState, l: Locale) -> &'static str {
    match s {
        DeliveryState::Pending => l.pick("na fila", "queued"),
        DeliveryState::Sent => l.pick("enviado", "sent"),
        DeliveryState::Failed => l.pick("falhou", "failed"),
    }
}

/// The alerts table, shared with the user page (`with_user` adds a user column).
pub fn table(list: &[Alert], l: Locale, tz: Tz, with_user: bool) -> Markup {
    html! {
        @if list.is_empty() {
            p.empty { (l.pick("Nenhum alerta.", "No alerts.")) }
        } @else {
            table.alerts {
                thead { tr {
                    th { (l.pick("Quando", "When")) }
                    @if with_user { th { (l.pick("Usuário", "User")) } }
                    th { (l.pick("Limite", "Threshold")) }
                    th { (l.pick("Ciclo", "Cycle")) }
                    th { (l.pick("Aviso", "Notice")) }
                    th { (l.pick("Mensagens", "Messages")) }
                } }
                tbody {
                    @for a in list {
                        tr {
                            td { (i18n::datetime(a.created_at, tz, l)) }
                            @if with_user {
                                td { a href=(format!("/admin/users/{}", a.user_id)) {
                                    (a.recipient.clone().unwrap_or_else(|| format!("#{}", a.user_id)))
                                } }
                            }
                            td { (a.threshold) "%" @if a.rearmed_at.is_some() { " " small.muted { (l.pick("(rearmado)", "(re-armed)")) } } }
                            td { (a.cycle) }
                            td { (delivery_label(&a.delivery, l)) }
                            td {
                                @if a.messages.is_empty() { "—" }
                                ul.messages {
                                    @for m in &a.messages {
                                        li class=(format!("delivery {}", m.state.as_str())) {
                                            (m.recipient)
                                            @if m.role == Role::Admin { " " small.muted { (l.pick("(cópia)", "(copy)")) } }
                                            ": " strong { (state_label(m.state, l)) }
                                            @if m.attempts > 1 || m.state == DeliveryState::Failed {
                                                " · " (m.attempts) " " (l.pick("tentativas", "attempts"))
                                            }
                                            @if let Some(e) = &m.last_error {
                                                @if m.state != DeliveryState::Sent { br; small.error { (e) } }
                                            }
                                        }
                                    }
                                }
                            }
                        }
                    }
                }
            }
        }
    }
}

pub async fn list(state: web::Data<AppState>, me: SignedIn) -> Result<HttpResponse, AdminError> {
    let l = locale(&state);
    let all = with_scoped(&state, &me, |ledger| ledger.alerts(200)).await?;
    let failed = all
        .iter()
        .flat_map(|a| &a.messages)
        .filter(|m| m.state == DeliveryState::Failed)
        .count();
    let body = html! {
        p.muted {
            (l.pick("Os 200 alertas mais recentes.", "The 200 most recent alerts."))
            @if failed > 0 { " " strong.error { (failed) " " (l.pick("mensagens falharam: confira o endereço ou o servidor de email.", "messages failed: check the address or the mail server.")) } }
        }
        (table(&all, l, state.config.timezone, true))
    };
    Ok(render(
        &state,
        &me,
        l.pick("Alertas", "Alerts"),
        Nav::Alerts,
        body,
    ))
}
