//! Plans: create, rename, change the allowance, choose the default.

use super::{CsrfOnly, actor, back, locale, one_line, render, with_ledger};
use crate::admin::AdminError;
use crate::admin::session::SignedIn;
use crate::admin::views::{self, Nav};
use crate::config::Locale;
use crate::domain::TokenAmount;
use crate::startup::AppState;
use actix_web::{HttpRequest, HttpResponse, web};
use maud::html;
use serde::Deserialize;

pub async fn list(state: web::Data<AppState>, me: SignedIn) -> Result<HttpResponse, AdminError> {
    let l = locale(&state);
    let plans = with_ledger(&state, |ledger| ledger.plans()).await?;
    let body = html! {
        table.plans {
            thead { tr {
                th { (l.pick("Plano", "Plan")) } th { (l.pick("Tokens por mês", "Tokens a month")) }
                th.num { (l.pick("Usuários", "Users")) } th { (l.pick("Padrão", "Default")) } th {}
            } }
            tbody {
                @for p in &plans {
                    tr {
                        td colspan="2" {
                            form.inline method="post" action=(format!("/admin/plans/{}", p.id)) {
                                (views::csrf_input(&me.csrf))
                                input type="text" name="name" value=(p.name) required maxlength="60" aria-label=(l.pick("Nome", "Name"));
                                input type="text" name="allowance" value=(views::tokens(p.monthly_allowance, l)) required inputmode="numeric" aria-label=(l.pick("Tokens por mês", "Tokens a month"));
                                button type="submit" { (l.pick("Salvar", "Save")) }
                            }
                        }
                        td.num { (p.users) }
                        td { @if p.is_default { span.badge.ok { (l.pick("padrão", "default")) } } }
                        td {
                            @if !p.is_default {
                                form method="post" action=(format!("/admin/plans/{}/default", p.id)) {
                                    (views::csrf_input(&me.csrf))
                                    button type="submit" { (l.pick("Tornar padrão", "Make default")) }
                                }
                            }
                        }
                    }
                }
            }
        }
        p.muted { (l.pick(
            "Uma nova franquia vale a partir do próximo ciclo de cada usuário. Novos usuários entram no plano padrão.",
            "A new allowance applies from each user's next cycle. New users start on the default plan.")) }
        form.stack method="post" action="/admin/plans" {
            h2 { (l.pick("Novo plano", "New plan")) }
            (views::csrf_input(&me.csrf))
            label { (l.pick("Nome", "Name")) input type="text" name="name" required maxlength="60"; }
            label { (l.pick("Tokens por mês", "Tokens a month")) input type="text" name="allowance" required inputmode="numeric" placeholder="1.000.000"; }
            label.check { input type="checkbox" name="make_default" value="1"; " " (l.pick("Plano padrão para novos usuários", "Default plan for new users")) }
            button type="submit" { (l.pick("Criar plano", "Create plan")) }
        }
    };
    Ok(render(
        &state,
        &me,
        l.pick("Planos", "Plans"),
        Nav::Plans,
        body,
    ))
}

#[derive(Deserialize, Default)]
#[serde(default)]
pub struct PlanForm {
    csrf: String,
    name: String,
    allowance: String,
    make_default: String,
}

fn parse_plan(form: &PlanForm, l: Locale) -> Result<(String, i64), String> {
    let name = one_line(&form.name, 60);
    if name.is_empty() {
        return Err(l
            .pick("Dê um nome ao plano.", "Give the plan a name.")
            .into());
    }
    let allowance = TokenAmount::parse(&form.allowance).map_err(|_| {
        format!(
            "{} {:?}: {}",
            l.pick("Franquia recusada", "Allowance refused"),
            one_line(&form.allowance, 40),
            l.pick(
                "use um número inteiro de tokens maior que zero, como 1.000.000",
                "use a whole number of tokens above zero, like 1,000,000"
            )
        )
    })?;
    Ok((name, allowance.get()))
}

fn plan_error(e: AdminError, name: &str, l: Locale) -> Result<String, AdminError> {
    match e {
        AdminError::Conflict(_) => Ok(format!(
            "{} {name:?}.",
            l.pick(
                "Já existe um plano chamado",
                "There is already a plan named"
            )
        )),
        AdminError::NotFound => Ok(l
            .pick("Esse plano não existe mais.", "That plan no longer exists.")
            .into()),
        other => Err(other),
    }
}

pub async fn create(
    state: web::Data<AppState>,
    me: SignedIn,
    req: HttpRequest,
    form: web::Form<PlanForm>,
) -> Result<HttpResponse, AdminError> {
    me.check_post(&req, &state, &form.csrf)?;
    let l = locale(&state);
    let (name, allowance) = match parse_plan(&form, l) {
        Ok(v) => v,
        Err(text) => return Ok(back(&me, "/admin/plans", false, text)),
    };
    let make_default = form.make_default == "1";
    let who = actor(&me);
    let n = name.clone();
    match with_ledger(&state, move |ledger| {
        ledger.create_plan(&n, allowance, make_default, &who)
    })
    .await
    {
        Ok(_) => Ok(back(
            &me,
            "/admin/plans",
            true,
            format!("{} {name}.", l.pick("Plano criado:", "Plan created:")),
        )),
        Err(e) => plan_error(e, &name, l).map(|t| back(&me, "/admin/plans", false, t)),
    }
}

pub async fn update(
    state: web::Data<AppState>,
    me: SignedIn,
    req: HttpRequest,
    path: web::Path<i64>,
    form: web::Form<PlanForm>,
) -> Result<HttpResponse, AdminError> {
    me.check_post(&req, &state, &form.csrf)?;
    let l = locale(&state);
    let id = path.into_inner();
    let (name, allowance) = match parse_plan(&form, l) {
        Ok(v) => v,
        Err(text) => return Ok(back(&me, "/admin/plans", false, text)),
    };
    let who = actor(&me);
    let n = name.clone();
    match with_ledger(&state, move |ledger| {
        ledger.update_plan(id, &n, allowance, &who)
    })
    .await
    {
        Ok(()) => Ok(back(
            &me,
            "/admin/plans",
            true,
            format!("{} {name}.", l.pick("Plano salvo:", "Plan saved:")),
        )),
        Err(e) => plan_error(e, &name, l).map(|t| back(&me, "/admin/plans", false, t)),
    }
}

pub async fn make_default(
    state: web::Data<AppState>,
    me: SignedIn,
    req: HttpRequest,
    path: web::Path<i64>,
    form: web::Form<CsrfOnly>,
) -> Result<HttpResponse, AdminError> {
    me.check_post(&req, &state, &form.csrf)?;
    let l = locale(&state);
    let id = path.into_inner();
    let who = actor(&me);
    match with_ledger(&state, move |ledger| ledger.set_default_plan(id, &who)).await {
        Ok(()) => Ok(back(
            &me,
            "/admin/plans",
            true,
            l.pick("Plano padrão alterado.", "Default plan changed."),
        )),
        Err(e) => plan_error(e, "", l).map(|t| back(&me, "/admin/plans", false, t)),
    }
}
