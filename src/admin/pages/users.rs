//! The user list and a user's page, with its actions: grant credits, change plan,
//! suspend or reactivate.

use super::{actor, back, locale, one_line, render, with_scoped};
use crate::admin::AdminError;
use crate::admin::session::SignedIn;
use crate::admin::views::{self, Nav};
use crate::config::Locale;
use crate::domain::money::format_micro;
use crate::domain::{Cycle, TokenAmount};
use crate::i18n;
use crate::ledger::LedgerError;
use crate::ledger::stats::{UserQuery, UserSort, UserState};
use crate::startup::AppState;
use actix_web::{HttpRequest, HttpResponse, web};
use maud::{Markup, html};
use serde::Deserialize;

const PER_PAGE: i64 = 25;

pub fn state_label(s: UserState, l: Locale) -> &'static str {
    match s {
        UserState::Ok => l.pick("Ok", "Ok"),
        UserState::Over80 => l.pick("Acima de 80%", "Over 80%"),
        UserState::Blocked => l.pick("Bloqueado", "Blocked"),
        UserState::Suspended => l.pick("Suspenso", "Suspended"),
    }
}

fn sort_label(s: UserSort, l: Locale) -> &'static str {
    match s {
        UserSort::Used => l.pick("Mais uso", "Most used"),
        UserSort::Remaining => l.pick("Menos saldo", "Least left"),
        UserSort::Name => l.pick("Nome", "Name"),
        UserSort::Newest => l.pick("Mais recentes", "Newest"),
    }
}

#[derive(Deserialize, Default)]
#[serde(default)]
pub struct ListQuery {
    q: String,
    state: String,
    sort: String,
    page: String,
}

pub async fn list(
    state: web::Data<AppState>,
    me: SignedIn,
    q: web::Query<ListQuery>,
) -> Result<HttpResponse, AdminError> {
    let l = locale(&state);
    let search = one_line(&q.q, 200);
    let filter = UserState::parse(&q.state);
    let sort = UserSort::parse(&q.sort).unwrap_or_default();
    let page = q.page.parse::<i64>().unwrap_or(1).clamp(1, 1_000_000);
    let query = UserQuery {
        // The scoped ledger sets it to the admin's, whatever is written here.
        scope: me.admin.scope(),
        search: Some(search.clone()).filter(|s| !s.is_empty()),
        state: filter,
        sort,
        page,
        per_page: PER_PAGE,
    };
    let (rows, total) =
        with_scoped(&state, &me, move |ledger| ledger.list_users_page(query)).await?;
    let base = format!(
        "/admin/users?q={}&state={}&sort={}",
        views::url_encode(&search),
        filter.map_or("", |s| s.as_str()),
        sort.as_str()
    );
    let body = html! {
        form.filters method="get" action="/admin/users" role="search" {
            label { (l.pick("Buscar", "Search"))
                input type="search" name="q" value=(search) placeholder=(l.pick("email, nome ou #id", "email, name or #id")); }
            label { (l.pick("Situação", "State"))
                select name="state" {
                    option value="" { (l.pick("Todas", "All")) }
                    @for s in UserState::ALL {
                        option value=(s.as_str()) selected[filter == Some(s)] { (state_label(s, l)) }
                    }
                }
            }
            label { (l.pick("Ordem", "Sort"))
                select name="sort" {
                    @for s in UserSort::ALL {
                        option value=(s.as_str()) selected[sort == s] { (sort_label(s, l)) }
                    }
                }
            }
            button type="submit" { (l.pick("Filtrar", "Filter")) }
        }
        @if rows.is_empty() {
            p.empty { (l.pick("Nenhum usuário encontrado.", "No users found.")) }
        } @else {
            table.users {
                thead { tr {
                    th { (l.pick("Usuário", "User")) }
                    th { (l.pick("Plano", "Plan")) }
                    th.num { (l.pick("Usado", "Used")) }
                    th.num { (l.pick("Restante", "Left")) }
                    th { (l.pick("Uso", "Use")) }
                    th { (l.pick("Situação", "State")) }
                } }
                tbody {
                    @for u in &rows {
                        tr {
                            td {
                                a href=(format!("/admin/users/{}", u.id)) {
                                    (crate::ledger::stats::label(u.id, u.email.as_deref(), u.name.as_deref(), u.external_id.as_deref()))
                                }
                                @if let (Some(n), Some(_)) = (&u.name, &u.email) { br; small.muted { (n) } }
                            }
                            td { (u.plan) }
                            td.num { (views::tokens(u.used, l)) }
                            td.num { (views::tokens(u.remaining, l)) }
                            td { (views::bar(u.used_percent, l)) " " (u.used_percent) "%" }
                            td { span class=(format!("badge {}", u.state.as_str())) { (state_label(u.state, l)) } }
                        }
                    }
                }
            }
            (views::pagination(page, PER_PAGE, total, &base, l))
        }
    };
    Ok(render(
        &state,
        &me,
        l.pick("Usuários", "Users"),
        Nav::Users,
        body,
    ))
}

fn ledger_kind(kind: &str, l: Locale) -> String {
    match kind {
        "usage" => l.pick("Uso", "Usage").into(),
        "topup" => l.pick("Créditos", "Top-up").into(),
        "cycle_grant" => l.pick("Franquia do ciclo", "Cycle allowance").into(),
        "expiry" => l.pick("Expiração", "Expiry").into(),
        "adjustment" => l.pick("Ajuste", "Adjustment").into(),
        other => other.to_owned(),
    }
}

pub async fn detail(
    state: web::Data<AppState>,
    me: SignedIn,
    path: web::Path<i64>,
) -> Result<HttpResponse, AdminError> {
    let l = locale(&state);
    let tz = state.config.timezone;
    let id = path.into_inner();
    let cycle_start = state
        .ledger
        .current_cycle()
        .starts_at(tz)
        .with_timezone(&tz)
        .date_naive();
    let today = state.ledger.now().with_timezone(&tz).date_naive();
    let period = crate::ledger::reports::Period::new(cycle_start, today);
    let (summary, plans, entries, models, user_alerts, audit, chats) =
        with_scoped(&state, &me, move |ledger| {
            let summary = ledger.user_summary(id)?;
            let chats = match period {
                Some(p) => ledger.user_conversations(id, p)?,
                None => Vec::new(),
            };
            let plans = ledger.plans_for_user(id)?;
            let entries = ledger.recent_ledger_entries(id, 100)?;
            let models = ledger.usage_by_model(id)?;
            let user_alerts = ledger.user_alerts(id, 50)?;
            let audit = ledger.user_audit(id, 50)?;
            Ok::<_, LedgerError>((summary, plans, entries, models, user_alerts, audit, chats))
        })
        .await?;
    let cycle = Cycle::parse(&summary.cycle);
    let starts = cycle.map(|c| i18n::date(c.starts_at(tz).with_timezone(&tz).date_naive(), l));
    let resets =
        cycle.map(|c| i18n::date(c.next().starts_at(tz).with_timezone(&tz).date_naive(), l));
    let title = crate::ledger::stats::label(
        summary.id,
        summary.email.as_deref(),
        summary.name.as_deref(),
        summary.external_id.as_deref(),
    );
    let form_url = |what: &str| format!("/admin/users/{id}/{what}");
    let body = html! {
        section.identity {
            dl {
                @if let Some(n) = &summary.name { dt { (l.pick("Nome", "Name")) } dd { (n) } }
                @if let Some(e) = &summary.email { dt { "Email" } dd { (e) } }
                @if let Some(x) = &summary.external_id { dt { (l.pick("ID no LibreChat", "LibreChat id")) } dd { code { (x) } } }
                dt { (l.pick("ID no tokengate", "tokengate id")) } dd { "#" (summary.id) }
                dt { (l.pick("Situação", "State")) }
                dd { @if summary.suspended { span.badge.suspended { (l.pick("Suspenso", "Suspended")) } }
                     @else if summary.blocked { span.badge.blocked { (l.pick("Bloqueado", "Blocked")) } }
                     @else { span.badge.ok { (l.pick("Ativo", "Active")) } } }
            }
        }
        section.cards {
            div.card { span.label { (l.pick("Restante", "Left")) } span.value #remaining { (views::tokens(summary.remaining, l)) } }
            div.card { span.label { (l.pick("Franquia restante", "Allowance left")) } span.value { (views::tokens(summary.allowance_left, l)) } }
            div.card { span.label { (l.pick("Créditos", "Credits")) } span.value #credits { (views::tokens(summary.credits, l)) } }
            div.card { span.label { (l.pick("Reservado agora", "Held now")) } span.value { (views::tokens(summary.held, l)) } }
            div.card { span.label { (l.pick("Usado no ciclo", "Used this cycle")) } span.value { (views::tokens(summary.used_this_cycle, l)) } }
        }
        p {
            (views::bar(summary.used_percent, l)) " " (summary.used_percent) "% · "
            (l.pick("Plano", "Plan")) " " strong { (summary.plan) } " (" (views::tokens(summary.monthly_allowance, l)) " " (l.pick("tokens por mês", "tokens a month")) ")"
            @if !summary.plan_models.is_empty() {
                " · " (l.pick("Modelos: ", "Models: ")) (summary.plan_models.join(", "))
            }
            @let requests = &summary.requests;
            @for (label, used, limit) in [
                (l.pick("mensagens hoje", "messages today"), requests.today, requests.limits.per_day),
                (l.pick("mensagens no mês", "messages this month"), requests.this_cycle, requests.limits.per_month),
                (l.pick("mensagens neste minuto", "messages this minute"), requests.this_minute, requests.limits.per_minute),
            ] {
                @if let Some(limit) = limit {
                    " · " span.requests { (label) " " (used) "/" (limit) }
                }
            }
            @for (label, used, cap) in [
                (l.pick("entrada", "input"), summary.sides.input_used, summary.sides.allowances.input),
                (l.pick("saída", "output"), summary.sides.output_used, summary.sides.allowances.output),
            ] {
                @if let Some(cap) = cap {
                    " · " span.side { (label) " " (views::tokens(used, l)) "/" (views::tokens(cap.get(), l)) }
                }
            }
            @let overage = &summary.overage;
            @if overage.policy.is_some() || overage.tokens > 0 {
                " · " span.overage { (l.pick("excedente ", "overage ")) (views::tokens(overage.tokens, l))
                    @if let Some(o) = overage.policy { "/" (views::tokens(o.cap.get(), l)) }
                    " tokens (" (format_micro(overage.cost, l == Locale::PtBr)) ")" }
            }
            @if let (Some(s), Some(r)) = (&starts, &resets) {
                " · " (l.pick("Ciclo de", "Cycle from")) " " (s) " " (l.pick("até", "to")) " " (r)
            }
        }
        section.actions {
            form.stack method="post" action=(form_url("credits")) {
                h2 { (l.pick("Conceder créditos", "Grant credits")) }
                (views::csrf_input(&me.csrf))
                label { (l.pick("Tokens", "Tokens"))
                    input type="text" name="tokens" inputmode="numeric" required placeholder="250.000"; }
                label { (l.pick("Observação (opcional)", "Note (optional)"))
                    input type="text" name="note" maxlength="500"; }
                button type="submit" { (l.pick("Conceder", "Grant")) }
                p.muted { (l.pick("Vale já na próxima mensagem. Créditos não expiram no fim do ciclo.", "Takes effect on the next message. Credits do not expire at the end of the cycle.")) }
            }
            form.stack method="post" action=(form_url("plan")) {
                h2 { (l.pick("Trocar de plano", "Change plan")) }
                (views::csrf_input(&me.csrf))
                label { (l.pick("Plano", "Plan"))
                    select name="plan_id" {
                        @for p in &plans {
                            option value=(p.id) selected[p.name == summary.plan] {
                                (p.name) " (" (views::tokens(p.monthly_allowance, l)) ")"
                            }
                        }
                    }
                }
                button type="submit" { (l.pick("Trocar", "Change")) }
                p.muted { (l.pick("A franquia deste ciclo muda pela diferença entre os planos.", "This cycle's allowance changes by the difference between the plans.")) }
            }
            form.stack method="post" action=(form_url("suspension")) {
                h2 { (l.pick("Acesso", "Access")) }
                (views::csrf_input(&me.csrf))
                @if summary.suspended {
                    input type="hidden" name="suspend" value="0";
                    button type="submit" { (l.pick("Reativar", "Reactivate")) }
                } @else {
                    input type="hidden" name="suspend" value="1";
                    button.danger type="submit" { (l.pick("Suspender", "Suspend")) }
                }
            }
        }
        section {
            h2 { (l.pick("Uso por modelo neste ciclo", "Usage by model this cycle")) }
            @if models.is_empty() { p.empty { (l.pick("Nenhum uso neste ciclo.", "No usage this cycle.")) } }
            @else {
                table {
                    thead { tr { th { (l.pick("Modelo", "Model")) } th.num { (l.pick("Pedidos", "Requests")) } th.num { "Prompt" } th.num { (l.pick("Resposta", "Completion")) } th.num { (l.pick("Cobrado", "Charged")) } } }
                    tbody { @for m in &models { tr {
                        td { code { (m.model) } } td.num { (views::tokens(m.requests, l)) } td.num { (views::tokens(m.prompt_tokens, l)) }
                        td.num { (views::tokens(m.completion_tokens, l)) } td.num { (views::tokens(m.charged, l)) }
                    } } }
                }
            }
        }
        section {
            h2 { (l.pick("Alertas", "Alerts")) }
            (super::alerts::table(&user_alerts, l, tz, false))
        }
        section {
            h2 { (l.pick("Histórico do saldo (últimos 100)", "Balance history (last 100)")) }
            @if entries.is_empty() { p.empty { (l.pick("Sem lançamentos.", "No entries.")) } }
            @else {
                table.ledger {
                    thead { tr { th { (l.pick("Quando", "When")) } th { (l.pick("Tipo", "Kind")) } th.num { (l.pick("Franquia", "Allowance")) } th.num { (l.pick("Créditos", "Credits")) } th.num { (l.pick("Saldo depois", "Balance after")) } th { (l.pick("Por", "By")) } th { (l.pick("Observação", "Note")) } } }
                    tbody { @for e in &entries { tr {
                        td { (i18n::datetime(e.created_at, tz, l)) }
                        td { (ledger_kind(&e.kind, l)) }
                        td.num { (signed(e.delta_allowance, l)) }
                        td.num { (signed(e.delta_credits, l)) }
                        td.num { (views::tokens(e.allowance_after + e.credits_after, l)) }
                        td { (e.actor) }
                        td { (e.note.as_deref().unwrap_or("")) }
                    } } }
                }
            }
        }
        @if chats.iter().any(|c| !c.key.is_empty()) {
            section {
                h2 { (l.pick("Conversas neste ciclo", "Conversations this cycle")) }
                table #conversations {
                    thead { tr { th { (l.pick("Conversa do LibreChat", "LibreChat conversation")) } th.num { (l.pick("Pedidos", "Requests")) } th.num { (l.pick("Entrada", "Input")) } th.num { (l.pick("Saída", "Output")) } th.num { "Tokens" } } }
                    tbody { @for c in &chats { tr {
                        td { @if c.key.is_empty() { span.muted { (l.pick("sem conversa", "no conversation")) } } @else { code { (c.key) } } }
                        td.num { (views::tokens(c.requests, l)) }
                        td.num { (views::tokens(c.input_tokens, l)) }
                        td.num { (views::tokens(c.output_tokens, l)) }
                        td.num { (views::tokens(c.charged, l)) }
                    } } }
                }
            }
        }
        section {
            h2 { (l.pick("Ações de administradores", "Admin actions")) }
            (super::audit::table(&audit, l, tz))
        }
    };
    Ok(render(&state, &me, &title, Nav::Users, body))
}

fn signed(n: i64, l: Locale) -> Markup {
    html! {
        @if n > 0 { "+" (views::tokens(n, l)) } @else if n == 0 { "·" } @else { (views::tokens(n, l)) }
    }
}

#[derive(Deserialize, Default)]
#[serde(default)]
pub struct GrantForm {
    csrf: String,
    tokens: String,
    note: String,
}

pub async fn grant(
    state: web::Data<AppState>,
    me: SignedIn,
    req: HttpRequest,
    path: web::Path<i64>,
    form: web::Form<GrantForm>,
) -> Result<HttpResponse, AdminError> {
    me.check_post(&req, &state, &form.csrf)?;
    let l = locale(&state);
    let id = path.into_inner();
    let back_to = format!("/admin/users/{id}");
    let amount = match TokenAmount::parse(&form.tokens) {
        Ok(a) => a,
        Err(e) => {
            let text = format!(
                "{} {:?}: {}",
                l.pick("Quantidade recusada", "Amount refused"),
                one_line(&form.tokens, 40),
                token_error(&e, l)
            );
            return Ok(back(&me, &back_to, false, text));
        }
    };
    let note = Some(one_line(&form.note, 500)).filter(|n| !n.is_empty());
    let who = actor(&me);
    let summary = with_scoped(&state, &me, move |ledger| {
        ledger.grant_credits(id, amount, &who, note.as_deref())
    })
    .await?;
    let text = format!(
        "{} {} tokens. {} {} tokens.",
        l.pick("Créditos concedidos:", "Credits granted:"),
        views::tokens(amount.get(), l),
        l.pick("Saldo restante agora:", "Balance left now:"),
        views::tokens(summary.remaining, l)
    );
    Ok(back(&me, &back_to, true, text))
}

fn token_error(e: &crate::domain::tokens::TokenAmountError, l: Locale) -> String {
    use crate::domain::tokens::TokenAmountError as E;
    match e {
        E::NotANumber => l
            .pick(
                "use só números, como 250000 ou 250.000",
                "use digits only, like 250000 or 250,000",
            )
            .into(),
        E::NotPositive => l
            .pick("precisa ser maior que zero", "must be more than zero")
            .into(),
        E::Ambiguous => l
            .pick(
                "use tokens inteiros; ponto ou vírgula só separam milhares, como 250.000",
                "use whole tokens; a comma or a point only separates thousands, like 250,000",
            )
            .into(),
        E::TooLarge => format!(
            "{} {}",
            l.pick("o máximo é", "the most is"),
            views::tokens(TokenAmount::MAX, l)
        ),
    }
}

#[derive(Deserialize, Default)]
#[serde(default)]
pub struct PlanForm {
    csrf: String,
    plan_id: String,
}

pub async fn change_plan(
    state: web::Data<AppState>,
    me: SignedIn,
    req: HttpRequest,
    path: web::Path<i64>,
    form: web::Form<PlanForm>,
) -> Result<HttpResponse, AdminError> {
    me.check_post(&req, &state, &form.csrf)?;
    let l = locale(&state);
    let id = path.into_inner();
    let back_to = format!("/admin/users/{id}");
    let Ok(plan_id) = form.plan_id.parse::<i64>() else {
        return Ok(back(
            &me,
            &back_to,
            false,
            l.pick("Escolha um plano da lista.", "Pick a plan from the list."),
        ));
    };
    let who = actor(&me);
    // A user or a plan out of reach (or gone) is a 404, never a hint that it exists.
    with_scoped(&state, &me, move |ledger| {
        ledger.change_plan(id, plan_id, &who)
    })
    .await?;
    Ok(back(
        &me,
        &back_to,
        true,
        l.pick("Plano alterado.", "Plan changed."),
    ))
}

#[derive(Deserialize, Default)]
#[serde(default)]
pub struct SuspendForm {
    csrf: String,
    suspend: String,
}

pub async fn suspension(
    state: web::Data<AppState>,
    me: SignedIn,
    req: HttpRequest,
    path: web::Path<i64>,
    form: web::Form<SuspendForm>,
) -> Result<HttpResponse, AdminError> {
    me.check_post(&req, &state, &form.csrf)?;
    let l = locale(&state);
    let id = path.into_inner();
    let suspend = form.suspend == "1";
    let who = actor(&me);
    with_scoped(&state, &me, move |ledger| {
        ledger.set_suspended(id, suspend, &who)
    })
    .await?;
    let text = if suspend {
        l.pick(
            "Usuário suspenso: os pedidos dele são recusados.",
            "User suspended: their requests are refused.",
        )
    } else {
        l.pick("Usuário reativado.", "User reactivated.")
    };
    Ok(back(&me, &format!("/admin/users/{id}"), true, text))
}
