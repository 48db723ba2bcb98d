//! Plans: create, rename, change the allowance and the models, choose the default.

use super::{CsrfOnly, actor, back, locale, one_line, render, with_ledger};
use crate::admin::AdminError;
use crate::admin::session::SignedIn;
use crate::admin::views::{self, Nav};
use crate::config::Locale;
use crate::domain::plan::{PLAN_NAME_MAX, PlanModelsError};
use crate::domain::{PlanChange, PlanModels, PlanName, PlanSpec, TokenAmount};
use crate::ledger::PlanRef;
use crate::startup::AppState;
use actix_web::{HttpRequest, HttpResponse, web};
use maud::html;
use serde::Deserialize;

pub async fn list(state: web::Data<AppState>, me: SignedIn) -> Result<HttpResponse, AdminError> {
    let l = locale(&state);
    let plans = with_ledger(&state, |ledger| ledger.plans()).await?;
    let offered = super::weights::upstream_models(&state).await;
    let body = html! {
        table.plans {
            thead { tr {
                th { (l.pick("Plano", "Plan")) } th { (l.pick("Tokens por mês", "Tokens a month")) }
                th { (l.pick("Modelos", "Models")) }
                th.num { (l.pick("Usuários", "Users")) } th { (l.pick("Padrão", "Default")) } th {}
            } }
            tbody {
                @for p in &plans {
                    tr {
                        td colspan="3" {
                            form.inline method="post" action=(format!("/admin/plans/{}", p.id)) {
                                (views::csrf_input(&me.csrf))
                                input type="text" name="name" value=(p.name) required maxlength="60" aria-label=(l.pick("Nome", "Name"));
                                input type="text" name="allowance" value=(views::tokens(p.monthly_allowance, l)) required inputmode="numeric" aria-label=(l.pick("Tokens por mês", "Tokens a month"));
                                input type="text" name="models" value=(p.models.to_string()) placeholder=(l.pick("todos", "all")) aria-label=(l.pick("Modelos", "Models"));
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
            "Uma nova franquia vale a partir do próximo ciclo de cada usuário; os modelos valem na hora. Novos usuários entram no plano padrão.",
            "A new allowance applies from each user's next cycle; models apply at once. New users start on the default plan.")) }
        form.stack method="post" action="/admin/plans" {
            h2 { (l.pick("Novo plano", "New plan")) }
            (views::csrf_input(&me.csrf))
            label { (l.pick("Nome", "Name")) input type="text" name="name" required maxlength="60"; }
            label { (l.pick("Tokens por mês", "Tokens a month")) input type="text" name="allowance" required inputmode="numeric" placeholder="1.000.000"; }
            label { (l.pick("Modelos (separados por vírgula; em branco, todos)", "Models (comma-separated; blank for all)"))
                input type="text" name="models" list="models" placeholder="gpt-4o-mini, gpt-4o"; }
            datalist #models { @for m in &offered { option value=(m) {} } }
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
    /// Absent (a page from before plans had models, a script): the plan keeps its
    /// list; blank is every model.
    models: Option<String>,
    make_default: String,
}

/// The plan the form describes. Its models are `None` when the form has no such
/// field: an edit keeps the plan's list, a new plan may use every model.
fn parse_plan(form: &PlanForm, l: Locale) -> Result<(PlanSpec, Option<PlanModels>), String> {
    let Some(name) = PlanName::parse(&one_line(&form.name, PLAN_NAME_MAX + 1)) else {
        return Err(l
            .pick(
                "Dê ao plano um nome de até 60 caracteres.",
                "Give the plan a name of up to 60 characters.",
            )
            .into());
    };
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
    let models = form
        .models
        .as_deref()
        .map(PlanModels::parse)
        .transpose()
        .map_err(|e| match e {
            PlanModelsError::BadName(name) => format!(
                "{} {:?}: {}",
                l.pick("Modelo recusado", "Model refused"),
                one_line(&name, 40),
                l.pick(
                    "um nome de modelo não tem vírgulas nem caracteres de controle",
                    "a model name has no commas or control characters"
                )
            ),
            PlanModelsError::Wildcard(name) => format!(
                "{} {:?}: {}",
                l.pick("Modelo recusado", "Model refused"),
                one_line(&name, 40),
                l.pick(
                    "os nomes são exatos; só um * sozinho quer dizer todos os modelos",
                    "names are exact; only a * on its own means every model"
                )
            ),
            PlanModelsError::TooMany => l
                .pick(
                    "Um plano lista no máximo 100 modelos.",
                    "A plan lists at most 100 models.",
                )
                .to_owned(),
        })?;
    let spec = PlanSpec {
        name,
        monthly_allowance: allowance.into(),
        models: models.clone().unwrap_or_default(),
    };
    Ok((spec, models))
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
    let spec = match parse_plan(&form, l) {
        Ok((spec, _)) => spec,
        Err(text) => return Ok(back(&me, "/admin/plans", false, text)),
    };
    let name = spec.name.to_string();
    let make_default = form.make_default == "1";
    let who = actor(&me);
    match with_ledger(&state, move |ledger| {
        ledger.create_plan(&spec, make_default, &who)
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
    let change = match parse_plan(&form, l) {
        Ok((spec, models)) => PlanChange {
            name: Some(spec.name),
            monthly_allowance: Some(spec.monthly_allowance),
            models,
            make_default: false,
        },
        Err(text) => return Ok(back(&me, "/admin/plans", false, text)),
    };
    let name = change
        .name
        .as_ref()
        .map(ToString::to_string)
        .unwrap_or_default();
    let who = actor(&me);
    match with_ledger(&state, move |ledger| {
        ledger.update_plan(&PlanRef::Id(id), &change, &who)
    })
    .await
    {
        Ok(_) => Ok(back(
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
