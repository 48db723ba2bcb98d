//! Plans: create, rename, change the allowance, the models and the request limits,
//! choose the default.

use super::{CsrfOnly, actor, back, locale, one_line, render, with_scoped};
use crate::admin::AdminError;
use crate::admin::session::SignedIn;
use crate::admin::views::{self, Nav};
use crate::config::Locale;
use crate::domain::money::format_micro;
use crate::domain::plan::{Allowance, PLAN_NAME_MAX, PlanModelsError, parse_roles};
use crate::domain::{
    Brl, DistributorId, Overage, PlanChange, PlanModels, PlanName, PlanSpec, PricePer1k,
    RequestLimit, RequestLimits, SideAllowances, TokenAmount,
};
use crate::startup::AppState;
use actix_web::{HttpRequest, HttpResponse, web};
use maud::html;
use serde::Deserialize;

pub async fn list(state: web::Data<AppState>, me: SignedIn) -> Result<HttpResponse, AdminError> {
    let l = locale(&state);
    let plans = with_scoped(&state, &me, |ledger| ledger.plans()).await?;
    let scope = me.admin.scope();
    let offered = super::weights::upstream_models(&state).await;
    let body = html! {
        table.plans {
            thead { tr {
                th { (l.pick("Plano", "Plan")) } th { (l.pick("Tokens por mês (total, entrada, saída)", "Tokens a month (total, input, output)")) }
                th { (l.pick("Modelos", "Models")) }
                th { (l.pick("Mensagens por minuto / dia / mês", "Messages a minute / day / month")) }
                th { (l.pick("Preço por mês", "Price a month")) }
                th.num { (l.pick("Usuários", "Users")) }
                th.num { (l.pick("Tokens usados no ciclo", "Tokens used this cycle")) }
                th.num { (l.pick("Receita no ciclo", "Revenue this cycle")) }
                th.num { (l.pick("Excedente no ciclo", "Overage this cycle")) }
                th { (l.pick("Padrão", "Default")) } th {}
            } }
            tbody {
                @for p in &plans {
                    @let owner = DistributorId::from_db(p.distributor_id);
                    @let editable = scope.reaches(owner);
                    tr {
                        @if !editable {
                            // The install's plans, which a distributor's admin may give
                            // but not change.
                            td { (p.name) " " span.badge { (l.pick("plano geral", "install's plan")) } }
                            td { (views::tokens(p.monthly_allowance, l)) }
                            td { (p.models.to_string()) }
                            td {}
                            td { (p.monthly_price.map(|p| p.to_string()).unwrap_or_default()) }
                        } @else {
                        td colspan="5" {
                            @if scope.is_global() && !owner.is_direct() {
                                span.badge { (l.pick("distribuidor", "distributor")) " #" (owner) } " "
                            }
                            form.inline method="post" action=(format!("/admin/plans/{}", p.id)) {
                                (views::csrf_input(&me.csrf))
                                input type="text" name="name" value=(p.name) required maxlength="60" aria-label=(l.pick("Nome", "Name"));
                                input type="text" name="allowance" value=(views::tokens(p.monthly_allowance, l)) required inputmode="numeric" aria-label=(l.pick("Tokens por mês", "Tokens a month"));
                                (side_inputs(p.sides, l))
                                input type="text" name="models" value=(p.models.to_string()) placeholder=(l.pick("todos", "all")) aria-label=(l.pick("Modelos", "Models"));
                                (limit_inputs(&p.request_limits, l))
                                (overage_inputs(p.overage, l))
                                @if owner.is_direct() {
                                    input.roles type="text" name="roles" value=(p.roles.join(", ")) placeholder=(l.pick("papéis do LibreChat", "LibreChat roles")) aria-label=(l.pick("Papéis do LibreChat", "LibreChat roles"));
                                }
                                input.price type="text" name="price" value=(p.monthly_price.map(|p| p.to_string()).unwrap_or_default()) inputmode="decimal" placeholder="R$" aria-label=(l.pick("Preço por mês (R$)", "Price a month (R$)"));
                                button type="submit" { (l.pick("Salvar", "Save")) }
                            }
                        }
                        }
                        td.num { (p.users) }
                        td.num { (views::tokens(p.used_this_cycle, l)) }
                        td.num.revenue { @if p.monthly_price.is_some() { (views::reais(p.revenue_this_cycle, l)) } }
                        td.num.overage { @if p.overage.is_some() || p.overage_this_cycle > 0 {
                            (views::tokens(p.overage_this_cycle, l)) " tokens · " (format_micro(p.overage_revenue_this_cycle, l == Locale::PtBr)) } }
                        td { @if p.is_default { span.badge.ok { (l.pick("padrão", "default")) } } }
                        td {
                            @if !p.is_default && editable {
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
            "Uma nova franquia total vale a partir do próximo ciclo de cada usuário; as franquias de entrada e de saída, o excedente, os modelos, os limites de mensagens e o preço valem na hora. O excedente é cobrado por 1.000 tokens depois da franquia e dos créditos, até o limite por mês. A receita do ciclo é o preço vezes os usuários não suspensos. Limites em branco: sem limite. O dia vira à meia-noite local; o mês, no início do ciclo. Novos usuários entram no plano padrão.",
            "A new total allowance applies from each user's next cycle; input and output allowances, overage, models, message limits and the price apply at once. Overage is billed per 1,000 tokens past the allowance and the credits, up to its cap a month. The cycle's revenue is the price times the users not suspended. A blank limit is no limit. Days turn at local midnight, months at the cycle's start. New users start on the default plan.")) }
        form.stack method="post" action="/admin/plans" {
            h2 { (l.pick("Novo plano", "New plan")) }
            (views::csrf_input(&me.csrf))
            label { (l.pick("Nome", "Name")) input type="text" name="name" required maxlength="60"; }
            label { (l.pick("Tokens por mês (em branco: entrada mais saída)", "Tokens a month (blank: input plus output)")) input type="text" name="allowance" inputmode="numeric" placeholder="1.500.000"; }
            fieldset.sides {
                legend { (l.pick("Franquias separadas de entrada e de saída (opcional)", "Separate input and output allowances (optional)")) }
                (side_inputs(SideAllowances::default(), l))
            }
            label { (l.pick("Modelos (separados por vírgula; em branco, todos)", "Models (comma-separated; blank for all)"))
                input type="text" name="models" list="models" placeholder="gpt-4o-mini, gpt-4o"; }
            datalist #models { @for m in &offered { option value=(m) {} } }
            fieldset.limits {
                legend { (l.pick("Mensagens (em branco: sem limite)", "Messages (blank: no limit)")) }
                (limit_inputs(&RequestLimits::default(), l))
            }
            fieldset.overage {
                legend { (l.pick("Excedente (em branco: bloqueia ao fim da franquia)", "Overage (blank: block when the allowance ends)")) }
                (overage_inputs(None, l))
            }
            @if scope.is_global() {
                label { (l.pick("Papéis do LibreChat cujos usuários entram neste plano (separados por vírgula; opcional)", "LibreChat roles whose users start on this plan (comma-separated; optional)"))
                    input type="text" name="roles" placeholder="PRO"; }
            }
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

/// The input's and the output's allowance fields, blank for none.
fn side_inputs(sides: SideAllowances, l: Locale) -> maud::Markup {
    let value = |a: Option<Allowance>| a.map(|a| views::tokens(a.get(), l)).unwrap_or_default();
    html! {
        input.side type="text" name="input_allowance" value=(value(sides.input)) inputmode="numeric" placeholder=(l.pick("entrada", "input")) aria-label=(l.pick("Tokens de entrada por mês", "Input tokens a month"));
        input.side type="text" name="output_allowance" value=(value(sides.output)) inputmode="numeric" placeholder=(l.pick("saída", "output")) aria-label=(l.pick("Tokens de saída por mês", "Output tokens a month"));
    }
}

/// The overage's fields: its cap and its price per 1,000 tokens, blank for none.
fn overage_inputs(overage: Option<Overage>, l: Locale) -> maud::Markup {
    html! {
        input.overage type="text" name="overage_cap" value=(overage.map(|o| views::tokens(o.cap.get(), l)).unwrap_or_default()) inputmode="numeric" placeholder=(l.pick("excedente até", "overage up to")) aria-label=(l.pick("Excedente: tokens por mês além da franquia", "Overage: tokens a month past the allowance"));
        input.overage type="text" name="overage_price" value=(overage.map(|o| o.price.to_string()).unwrap_or_default()) inputmode="decimal" placeholder=(l.pick("R$ por 1.000", "R$ per 1,000")) aria-label=(l.pick("Preço do excedente, em reais por 1.000 tokens", "Overage price, in reais per 1,000 tokens"));
    }
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
    /// Absent (a page from before plans had them): the plan keeps its side
    /// allowances; blank is none.
    input_allowance: Option<String>,
    output_allowance: Option<String>,
    /// Absent: the plan keeps its overage; both blank: none.
    overage_cap: Option<String>,
    overage_price: Option<String>,
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
    let side = |field: &Option<String>, what: (&str, &str)| {
        field
            .as_deref()
            .map(|text| match text.trim() {
                "" => Ok(None),
                t => TokenAmount::parse(t).map(|t| Some(t.into())).map_err(|_| {
                    format!(
                        "{} {:?}: {}",
                        l.pick(what.0, what.1),
                        one_line(t, 40),
                        l.pick(
                            "use um número inteiro de tokens maior que zero, ou deixe em branco para não separar",
                            "use a whole number of tokens above zero, or leave it blank for no separate allowance"
                        )
                    )
                }),
            })
            .transpose()
    };
    let input_allowance = side(
        &form.input_allowance,
        ("Franquia de entrada recusada", "Input allowance refused"),
    )?;
    let output_allowance = side(
        &form.output_allowance,
        ("Franquia de saída recusada", "Output allowance refused"),
    )?;
    let overage = overage_of(form, l)?;
    // A blank monthly allowance with both sides given is the two added up.
    let sides_total = SideAllowances {
        input: input_allowance.flatten(),
        output: output_allowance.flatten(),
    }
    .total();
    let allowance = match (form.allowance.trim(), sides_total) {
        ("", Some(total)) => Ok(total),
        (text, _) => TokenAmount::parse(text).map(Allowance::from),
    }
    .map_err(|_| {
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
        monthly_allowance: Some(allowance),
        overage,
        input_allowance,
        output_allowance,
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

/// The overage from its two fields: both blank is none (the plan blocks), both
/// given is an overage; absent (a form from before overage), unchanged.
fn overage_of(form: &PlanForm, l: Locale) -> Result<Option<Option<Overage>>, String> {
    let (Some(cap), Some(price)) = (form.overage_cap.as_deref(), form.overage_price.as_deref())
    else {
        return Ok(None);
    };
    let (cap, price) = (cap.trim(), price.trim());
    if cap.is_empty() && price.is_empty() {
        return Ok(Some(None));
    }
    let cap = TokenAmount::parse(cap).map_err(|_| {
        format!(
            "{} {:?}: {}",
            l.pick("Limite de excedente recusado", "Overage cap refused"),
            one_line(cap, 40),
            l.pick(
                "use um número inteiro de tokens maior que zero, ou deixe os dois campos do excedente em branco",
                "use a whole number of tokens above zero, or leave both overage fields blank"
            )
        )
    })?;
    let price = PricePer1k::parse(price).map_err(|_| {
        format!(
            "{} {:?}: {}",
            l.pick("Preço do excedente recusado", "Overage price refused"),
            one_line(price, 40),
            l.pick(
                "escreva em reais por 1.000 tokens, como 0,10",
                "write it in reais per 1,000 tokens, like 0.10"
            )
        )
    })?;
    Ok(Some(Some(Overage {
        cap: cap.into(),
        price,
    })))
}

/// A new plan from its form: what the form leaves out is the default (every model,
/// no limits).
fn new_plan(change: PlanChange) -> Option<PlanSpec> {
    let limits = change.limits(RequestLimits::default());
    Some(PlanSpec {
        sides: change.sides(SideAllowances::default()),
        overage: change.overage.flatten(),
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
        // Not this admin's plan (or gone): a 404, never a hint that it exists.
        AdminError::NotFound => Err(AdminError::NotFound),
        AdminError::BadRequest => Ok(l
            .pick(
                "Só os planos gerais levam papéis do LibreChat.",
                "Only the install's plans take LibreChat roles.",
            )
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
    match with_scoped(&state, &me, move |ledger| {
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
    match with_scoped(&state, &me, move |ledger| {
        ledger.update_plan(id, &change, &who)
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
    match with_scoped(&state, &me, move |ledger| ledger.set_default_plan(id, &who)).await {
        Ok(()) => Ok(back(
            &me,
            "/admin/plans",
            true,
            l.pick("Plano padrão alterado.", "Default plan changed."),
        )),
        Err(e) => plan_error(e, "", l).map(|t| back(&me, "/admin/plans", false, t)),
    }
}
