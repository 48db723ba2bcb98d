//! Plans: create, rename, change the allowance, the models and the request limits,
//! choose the default.

use super::{CsrfOnly, actor, back, locale, one_line, render, with_ledger};
use crate::admin::AdminError;
use crate::admin::session::SignedIn;
use crate::admin::views::{self, Nav};
use crate::config::Locale;
use crate::domain::plan::{PLAN_NAME_MAX, PlanModelsError, parse_roles};
use crate::domain::{
    Brl, PlanChange, PlanModels, PlanName, PlanSpec, RequestLimit, RequestLimits, TokenAmount,
};
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
                th { (l.pick("Mensagens por minuto / dia / mês", "Messages a minute / day / month")) }
                th { (l.pick("Preço por mês", "Price a month")) }
                th.num { (l.pick("Usuários", "Users")) }
                th.num { (l.pick("Tokens usados no ciclo", "Tokens used this cycle")) }
                th.num { (l.pick("Receita no ciclo", "Revenue this cycle")) }
                th { (l.pick("Padrão", "Default")) } th {}
            } }
            tbody {
                @for p in &plans {
                    tr {
                        td colspan="5" {
                            form.inline method="post" action=(format!("/admin/plans/{}", p.id)) {
                                (views::csrf_input(&me.csrf))
                                input type="text" name="name" value=(p.name) required maxlength="60" aria-label=(l.pick("Nome", "Name"));
                                input type="text" name="allowance" value=(views::tokens(p.monthly_allowance, l)) required inputmode="numeric" aria-label=(l.pick("Tokens por mês", "Tokens a month"));
                                input type="text" name="models" value=(p.models.to_string()) placeholder=(l.pick("todos", "all")) aria-label=(l.pick("Modelos", "Models"));
                                (limit_inputs(&p.request_limits, l))
                                input.roles type="text" name="roles" value=(p.roles.join(", ")) placeholder=(l.pick("papéis do LibreChat", "LibreChat roles")) aria-label=(l.pick("Papéis do LibreChat", "LibreChat roles"));
                                input.price type="text" name="price" value=(p.monthly_price.map(|p| p.to_string()).unwrap_or_default()) inputmode="decimal" placeholder="R$" aria-label=(l.pick("Preço por mês (R$)", "Price a month (R$)"));
                                button type="submit" { (l.pick("Salvar", "Save")) }
                            }
                        }
                        td.num { (p.users) }
                        td.num { (views::tokens(p.used_this_cycle, l)) }
                        td.num.revenue { @if p.monthly_price.is_some() { (views::reais(p.revenue_this_cycle, l)) } }
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
            "Uma nova franquia vale a partir do próximo ciclo de cada usuário; os modelos, os limites de mensagens e o preço valem na hora. A receita do ciclo é o preço vezes os usuários não suspensos. Limites em branco: sem limite. O dia vira à meia-noite local; o mês, no início do ciclo. Novos usuários entram no plano padrão.",
            "A new allowance applies from each user's next cycle; models, message limits and the price apply at once. The cycle's revenue is the price times the users not suspended. A blank limit is no limit. Days turn at local midnight, months at the cycle's start. New users start on the default plan.")) }
        form.stack method="post" action="/admin/plans" {
            h2 { (l.pick("Novo plano", "New plan")) }
            (views::csrf_input(&me.csrf))
            label { (l.pick("Nome", "Name")) input type="text" name="name" required maxlength="60"; }
            label { (l.pick("Tokens por mês", "Tokens a month")) input type="text" name="allowance" required inputmode="numeric" placeholder="1.000.000"; }
            label { (l.pick("Modelos (separados por vírgula; em branco, todos)", "Models (comma-separated; blank for all)"))
                input type="text" name="models" list="models" placeholder="gpt-4o-mini, gpt-4o"; }
            datalist #models { @for m in &offered { option value=(m) {} } }
            fieldset.limits {
                legend { (l.pick("Mensagens (em branco: sem limite)", "Messages (blank: no limit)")) }
                (limit_inputs(&RequestLimits::default(), l))
            }
            label { (l.pick("Papéis do LibreChat cujos usuários entram neste plano (separados por vírgula; opcional)", "LibreChat roles whose users start on this plan (comma-separated; optional)"))
                input type="text" name="roles" placeholder="PRO"; }
            label { (l.pick("Preço por mês, em reais (para relatórios; opcional)", "Price a month, in reais (for reports; optional)"))
                input type="text" name="price" inputmode="decimal" placeholder="199,90"; }
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

/// The three request limits' fields, blank for none.
fn limit_inputs(limits: &RequestLimits, l: Locale) -> maud::Markup {
    let value = |n: Option<RequestLimit>| n.map(|n| n.to_string()).unwrap_or_default();
    html! {
        input.limit type="text" name="per_minute" value=(value(limits.per_minute)) inputmode="numeric" placeholder=(l.pick("por minuto", "a minute")) aria-label=(l.pick("Mensagens por minuto", "Messages a minute"));
        input.limit type="text" name="per_day" value=(value(limits.per_day)) inputmode="numeric" placeholder=(l.pick("por dia", "a day")) aria-label=(l.pick("Mensagens por dia", "Messages a day"));
        input.limit type="text" name="per_month" value=(value(limits.per_month)) inputmode="numeric" placeholder=(l.pick("por mês", "a month")) aria-label=(l.pick("Mensagens por mês", "Messages a month"));
    }
}

#[derive(Deserialize, Default)]
#[serde(default)]
pub struct PlanForm {
    csrf: String,
    name: String,
    allowance: String,
    /// Absent (a page from before plans had models, a script): the plan keeps its
    /// list; blank is every model. The same for each limit: blank is none.
    models: Option<String>,
    per_minute: Option<String>,
    per_day: Option<String>,
    per_month: Option<String>,
    price: Option<String>,
    roles: Option<String>,
    make_default: String,
}

/// The form as a change to a plan: name and allowance always; the models and each
/// limit when the form has their field, so that an edit from a form without them
/// keeps what the plan has (a new plan starts with every model and no limits).
fn parse_plan(form: &PlanForm, l: Locale) -> Result<PlanChange, String> {
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
    let limit = |field: &Option<String>, what: (&str, &str)| {
        field
            .as_deref()
            .map(|text| {
                RequestLimit::parse(text).map_err(|_| {
                    format!(
                        "{} {:?}: {}",
                        l.pick(what.0, what.1),
                        one_line(text, 40),
                        l.pick(
                            "use um número inteiro maior que zero, ou deixe em branco para não limitar",
                            "use a whole number above zero, or leave it blank for no limit"
                        )
                    )
                })
            })
            .transpose()
    };
    let monthly_price = form
        .price
        .as_deref()
        .map(|text| match text.trim() {
            "" => Ok(None),
            t => Brl::parse(t).map(Some).map_err(|_| {
                format!(
                    "{} {:?}: {}",
                    l.pick("Preço recusado", "Price refused"),
                    one_line(t, 40),
                    l.pick(
                        "escreva em reais, como 199,90, ou deixe em branco",
                        "write it in reais, like 199.90, or leave it blank"
                    )
                )
            }),
        })
        .transpose()?;
    let roles = form
        .roles
        .as_deref()
        .map(|text| {
            parse_roles(text).map_err(|_| {
                format!(
                    "{} {:?}: {}",
                    l.pick("Papel recusado", "Role refused"),
                    one_line(text, 40),
                    l.pick(
                        "escreva os nomes dos papéis do LibreChat separados por vírgula, como PRO",
                        "write LibreChat role names separated by commas, like PRO"
                    )
                )
            })
        })
        .transpose()?;
    Ok(PlanChange {
        name: Some(name),
        monthly_price,
        roles,
        monthly_allowance: Some(allowance.into()),
        models,
        per_minute: limit(
            &form.per_minute,
            ("Limite por minuto recusado", "Limit a minute refused"),
        )?,
        per_day: limit(
            &form.per_day,
            ("Limite por dia recusado", "Limit a day refused"),
        )?,
        per_month: limit(
            &form.per_month,
            ("Limite por mês recusado", "Limit a month refused"),
        )?,
        make_default: false,
    })
}

/// A new plan from its form: what the form leaves out is the default (every model,
/// no limits).
fn new_plan(change: PlanChange) -> Option<PlanSpec> {
    let limits = change.limits(RequestLimits::default());
    Some(PlanSpec {
        name: change.name?,
        monthly_allowance: change.monthly_allowance?,
        models: change.models.unwrap_or_default(),
        limits,
        monthly_price: change.monthly_price.flatten(),
        roles: change.roles.unwrap_or_default(),
    })
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
        AdminError::RoleTaken { role, plan } => Ok(match l {
            Locale::PtBr => format!("O papel {role:?} já leva ao plano {plan:?}."),
            Locale::En => {
                format!("The role {role:?} already takes its users to the plan {plan:?}.")
            }
        }),
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
    let spec = match parse_plan(&form, l).map(new_plan) {
        Ok(Some(spec)) => spec,
        Ok(None) => return Err(AdminError::BadRequest),
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
        Ok(change) => change,
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
