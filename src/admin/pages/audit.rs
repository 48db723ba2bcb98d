//! The audit log: who did what to whom, and when.

use super::{locale, render, with_scoped};
use crate::admin::AdminError;
use crate::admin::session::SignedIn;
use crate::admin::views::{self, Nav};
use crate::config::Locale;
use crate::i18n;
use crate::ledger::audit::{Action, AuditEntry};
use crate::startup::AppState;
use actix_web::{HttpResponse, web};
use chrono_tz::Tz;
use maud::{Markup, html};
use serde::Deserialize;

const PER_PAGE: i64 = 50;

fn action_label(a: Option<Action>, l: Locale) -> &'static str {
    match a {
        Some(Action::GrantCredits) => l.pick("Concedeu créditos", "Granted credits"),
        Some(Action::ChangePlan) => l.pick("Trocou o plano", "Changed the plan"),
        Some(Action::Suspend) => l.pick("Suspendeu", "Suspended"),
        Some(Action::Reactivate) => l.pick("Reativou", "Reactivated"),
        Some(Action::CreatePlan) => l.pick("Criou um plano", "Created a plan"),
        Some(Action::EditPlan) => l.pick("Editou um plano", "Edited a plan"),
        Some(Action::SetDefaultPlan) => l.pick("Mudou o plano padrão", "Changed the default plan"),
        Some(Action::SetWeights) => l.pick("Mudou pesos de modelo", "Changed model weights"),
        Some(Action::AddAdmin) => l.pick("Adicionou um administrador", "Added an admin"),
        Some(Action::DisableAdmin) => l.pick("Desativou um administrador", "Disabled an admin"),
        Some(Action::EnableAdmin) => l.pick("Reativou um administrador", "Enabled an admin"),
        Some(Action::ChangePassword) => l.pick("Trocou a própria senha", "Changed their password"),
        Some(Action::CreateUser) => l.pick("Criou um usuário", "Created a user"),
        Some(Action::ApproveCreditRequest) => {
            l.pick("Aprovou um pedido de créditos", "Approved a credit request")
        }
        Some(Action::DeclineCreditRequest) => {
            l.pick("Recusou um pedido de créditos", "Declined a credit request")
        }
        Some(Action::CreateCodeBatch) => {
            l.pick("Criou um lote de códigos", "Created a batch of codes")
        }
        Some(Action::RedeemCode) => l.pick("Usou um código", "Redeemed a code"),
        Some(Action::CreateDistributor) => l.pick("Criou um distribuidor", "Created a distributor"),
        Some(Action::EditDistributor) => l.pick("Editou um distribuidor", "Edited a distributor"),
        Some(Action::AddClientKey) => l.pick("Criou uma chave de cliente", "Created a client key"),
        Some(Action::RevokeClientKey) => {
            l.pick("Revogou uma chave de cliente", "Revoked a client key")
        }
        None => l.pick("Outra ação", "Other action"),
    }
}

/// The details of an entry, as `key: value` pairs in a stable order.
fn details(raw: &str, l: Locale) -> String {
    let Ok(serde_json::Value::Object(map)) = serde_json::from_str::<serde_json::Value>(raw) else {
        return String::new();
    };
    map.iter()
        .filter(|(_, v)| !v.is_null())
        .map(|(k, v)| {
            let value = match v {
                serde_json::Value::Number(n) => n
                    .as_i64()
                    .map_or_else(|| n.to_string(), |n| views::tokens(n, l)),
                serde_json::Value::String(s) => s.clone(),
                other => other.to_string(),
            };
            format!("{k}: {value}")
        })
        .collect::<Vec<_>>()
        .join(" · ")
}

pub fn table(list: &[AuditEntry], l: Locale, tz: Tz) -> Markup {
    html! {
        @if list.is_empty() {
            p.empty { (l.pick("Nenhuma ação registrada.", "No actions recorded.")) }
        } @else {
            table.audit {
                thead { tr {
                    th { (l.pick("Quando", "When")) } th { (l.pick("Quem", "Who")) } th { (l.pick("O quê", "What")) }
                    th { (l.pick("Usuário", "User")) } th { (l.pick("Detalhes", "Details")) }
                } }
                tbody {
                    @for e in list {
                        tr {
                            td { (i18n::datetime(e.created_at, tz, l)) }
                            td { (e.actor.strip_prefix("admin:").unwrap_or(&e.actor)) }
                            td { (action_label(Action::parse(&e.action), l)) }
                            td { @if let Some(u) = e.user_id { a href=(format!("/admin/users/{u}")) { "#" (u) } } @else { "—" } }
                            td { (details(&e.details, l)) }
                        }
                    }
                }
            }
        }
    }
}

#[derive(Deserialize, Default)]
#[serde(default)]
pub struct PageQuery {
    page: String,
}

pub async fn list(
    state: web::Data<AppState>,
    me: SignedIn,
    q: web::Query<PageQuery>,
) -> Result<HttpResponse, AdminError> {
    let l = locale(&state);
    let page = q.page.parse::<i64>().unwrap_or(1).clamp(1, 1_000_000);
    let (entries, total) = with_scoped(&state, &me, move |ledger| {
        let entries = ledger.audit_entries(PER_PAGE, (page - 1) * PER_PAGE)?;
        let total = ledger.audit_count()?;
        Ok::<_, crate::db::StoreError>((entries, total))
    })
    .await?;
    let body = html! {
        (table(&entries, l, state.config.timezone))
        (views::pagination(page, PER_PAGE, total, "/admin/audit", l))
    };
    Ok(render(
        &state,
        &me,
        l.pick("Auditoria", "Audit log"),
        Nav::Audit,
        body,
    ))
}
