//! Reports: use over a period, grouped by distributor, plan, user, model, day or
//! conversation, with a chart per day; and the CSV exports of usage and of the
//! ledger, streamed a page at a time (`ledger::reports`).

use super::{locale, render, with_scoped};
use crate::admin::AdminError;
use crate::admin::session::SignedIn;
use crate::admin::views::{self, Nav};
use crate::config::Locale;
use crate::domain::Cycle;
use crate::domain::money::format_micro;
use crate::ledger::reports::{GroupBy, Period, ReportRow};
use crate::ledger::revenue::RevenueCycles;
use crate::startup::AppState;
use actix_web::http::header;
use actix_web::{HttpResponse, web};
use chrono::NaiveDate;
use maud::html;
use serde::Deserialize;

#[derive(Deserialize, Default)]
#[serde(default)]
pub struct ReportQuery {
    from: String,
    to: String,
    group: String,
}

fn group_label(g: GroupBy, l: Locale) -> &'static str {
    match g {
        GroupBy::Distributor => l.pick("Distribuidor", "Distributor"),
        GroupBy::Plan => l.pick("Plano", "Plan"),
        GroupBy::User => l.pick("Usuário", "User"),
        GroupBy::Model => l.pick("Modelo", "Model"),
        GroupBy::Day => l.pick("Dia", "Day"),
        GroupBy::Conversation => l.pick("Conversa", "Conversation"),
    }
}

/// The period a query names: from the start of the current cycle to today unless
/// both dates are given (and valid).
fn period_of(state: &AppState, q: &ReportQuery) -> Result<Period, AdminError> {
    let tz = state.config.timezone;
    let today = state.ledger.now().with_timezone(&tz).date_naive();
    let cycle_start = state
        .ledger
        .current_cycle()
        .starts_at(tz)
        .with_timezone(&tz)
        .date_naive();
    let day = |s: &str| NaiveDate::parse_from_str(s.trim(), "%Y-%m-%d").ok();
    let (from, to) = match (q.from.trim().is_empty(), q.to.trim().is_empty()) {
        (true, true) => (cycle_start, today),
        _ => (
            day(&q.from).ok_or(AdminError::BadRequest)?,
            day(&q.to).ok_or(AdminError::BadRequest)?,
        ),
    };
    Period::new(from, to).ok_or(AdminError::BadRequest)
}

pub async fn show(
    state: web::Data<AppState>,
    me: SignedIn,
    q: web::Query<ReportQuery>,
) -> Result<HttpResponse, AdminError> {
    let l = locale(&state);
    let period = period_of(&state, &q)?;
    let global = me.admin.scope().is_global();
    let group = match GroupBy::parse(&q.group) {
        Some(GroupBy::Distributor) if !global => return Err(AdminError::NotFound),
        Some(g) => g,
        None if q.group.is_empty() => GroupBy::Day,
        None => return Err(AdminError::BadRequest),
    };
    let (rows, days, cycles, distributors) = with_scoped(&state, &me, move |ledger| {
        let rows = ledger.report(period, group)?;
        let days = ledger.report(period, GroupBy::Day)?;
        let cycles = ledger.revenue_cycles(period)?;
        let distributors = ledger.distributors()?;
        Ok::<_, crate::db::StoreError>((rows, days, cycles, distributors))
    })
    .await?;
    let with_revenue = matches!(group, GroupBy::Plan | GroupBy::Distributor | GroupBy::User);
    // Every plan and distributor that brought revenue is a row; users only when
    // they used something, so their column has no total.
    let revenue_total = matches!(group, GroupBy::Plan | GroupBy::Distributor)
        .then(|| rows.iter().filter_map(|r| r.revenue).sum::<i64>());
    let chart: Vec<(NaiveDate, i64)> = days
        .iter()
        .filter_map(|d| {
            Some((
                NaiveDate::parse_from_str(&d.key, "%Y-%m-%d").ok()?,
                d.charged,
            ))
        })
        .collect();
    let range = format!("from={}&to={}", period.from, period.to);
    let sum = |f: fn(&ReportRow) -> i64| rows.iter().map(f).sum::<i64>();
    let groups: Vec<GroupBy> = GroupBy::ALL
        .into_iter()
        .filter(|g| global && !distributors.is_empty() || *g != GroupBy::Distributor)
        .collect();
    let pt = l == Locale::PtBr;
    let body = html! {
        form.filters method="get" action="/admin/reports" {
            label { (l.pick("De", "From")) input type="date" name="from" value=(period.from.to_string()); }
            label { (l.pick("Até", "To")) input type="date" name="to" value=(period.to.to_string()); }
            label { (l.pick("Agrupar por", "Group by"))
                select name="group" {
                    @for g in &groups {
                        option value=(g.as_str()) selected[*g == group] { (group_label(*g, l)) }
                    }
                }
            }
            button type="submit" { (l.pick("Ver", "Show")) }
        }
        p.exports {
            (l.pick("Exportar (CSV): ", "Export (CSV): "))
            a #export-usage href=(format!("/admin/reports/usage.csv?{range}")) download { (l.pick("uso por pedido", "usage per request")) }
            " · "
            a #export-ledger href=(format!("/admin/reports/ledger.csv?{range}")) download { (l.pick("extrato (ledger)", "ledger")) }
        }
        section {
            (views::daily_chart_titled(&chart, l.pick("Tokens cobrados por dia", "Tokens charged per day"), l))
        }
        section {
            table.report {
                thead { tr {
                    th { (group_label(group, l)) }
                    th.num { (l.pick("Pedidos", "Requests")) }
                    th.num { (l.pick("Tokens de entrada", "Input tokens")) }
                    th.num { (l.pick("Tokens de saída", "Output tokens")) }
                    th.num { (l.pick("Tokens cobrados", "Tokens charged")) }
                    th.num { (l.pick("Excedente (tokens)", "Overage (tokens)")) }
                    th.num { (l.pick("Excedente (R$)", "Overage (R$)")) }
                    @if with_revenue { th.num { (l.pick("Receita dos planos", "Plan revenue")) } }
                } }
                tbody {
                    @for r in &rows {
                        tr {
                            td { @match (group, r.key.parse::<i64>()) {
                                (GroupBy::User, Ok(id)) => a href=(format!("/admin/users/{id}")) { (r.label) },
                                _ if r.label.is_empty() => span.muted { "—" },
                                _ => (r.label),
                            } }
                            td.num { (views::tokens(r.requests, l)) }
                            td.num { (views::tokens(r.input_tokens, l)) }
                            td.num { (views::tokens(r.output_tokens, l)) }
                            td.num { (views::tokens(r.charged, l)) }
                            td.num { (views::tokens(r.overage_tokens, l)) }
                            td.num { (format_micro(r.overage_cost, pt)) }
                            @if with_revenue { td.num { @if let Some(c) = r.revenue { (views::reais(c, l)) } } }
                        }
                    }
                }
                tfoot { tr {
                    th { (l.pick("Total", "Total")) }
                    th.num #total-requests { (views::tokens(sum(|r| r.requests), l)) }
                    th.num { (views::tokens(sum(|r| r.input_tokens), l)) }
                    th.num { (views::tokens(sum(|r| r.output_tokens), l)) }
                    th.num #total-charged { (views::tokens(sum(|r| r.charged), l)) }
                    th.num { (views::tokens(sum(|r| r.overage_tokens), l)) }
                    th.num { (format_micro(sum(|r| r.overage_cost), pt)) }
                    @if with_revenue { th.num #total-revenue { @if let Some(c) = revenue_total { (views::reais(c, l)) } } }
                } }
            }
            @if with_revenue { p.muted #revenue-note { (revenue_note(&cycles, l)) } }
        }
    };
    Ok(render(
        &state,
        &me,
        l.pick("Relatórios", "Reports"),
        Nav::Reports,
        body,
    ))
}

/// Which export.
#[derive(Clone, Copy)]
enum Export {
    Usage,
    Ledger,
}

pub async fn usage_csv(
    state: web::Data<AppState>,
    me: SignedIn,
    q: web::Query<ReportQuery>,
) -> Result<HttpResponse, AdminError> {
    export(&state, &me, &q, Export::Usage)
}

pub async fn ledger_csv(
    state: web::Data<AppState>,
    me: SignedIn,
    q: web::Query<ReportQuery>,
) -> Result<HttpResponse, AdminError> {
    export(&state, &me, &q, Export::Ledger)
}

/// Streams an export: a blocking task writes it a page at a time into a channel of
/// a few pages, which the response reads. A slow reader holds the writer back, and
/// a reader that leaves stops it; memory holds a few pages whatever the size.
fn export(
    state: &AppState,
    me: &SignedIn,
    q: &ReportQuery,
    which: Export,
) -> Result<HttpResponse, AdminError> {
    let period = period_of(state, q)?;
    let scoped = state.ledger.scoped(me.admin.scope());
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<bytes::Bytes, std::io::Error>>(4);
    let admin = me.admin.email.clone();
    actix_web::rt::task::spawn_blocking(move || {
        let sink = |page: String| tx.blocking_send(Ok(bytes::Bytes::from(page))).is_ok();
        let written = match which {
            Export::Usage => scoped.export_usage(period, sink),
            Export::Ledger => scoped.export_ledger(period, sink),
        };
        match written {
            Ok(rows) => tracing::info!(%admin, rows, "export written"),
            Err(e) => {
                // The response has begun: the reader sees it cut short.
                tracing::error!(error = %e, "export failed");
                let _ = tx.blocking_send(Err(std::io::Error::other("export failed")));
            }
        }
    });
    let stream = futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|chunk| (chunk, rx))
    });
    let name = match which {
        Export::Usage => "uso",
        Export::Ledger => "extrato",
    };
    Ok(HttpResponse::Ok()
        .insert_header((header::CONTENT_TYPE, "text/csv; charset=utf-8"))
        .insert_header((
            header::CONTENT_DISPOSITION,
            format!(
                "attachment; filename=\"tokengate-{name}-{}-{}.csv\"",
                period.from, period.to
            ),
        ))
        .streaming(stream))
}

/// What the revenue column covers: the monthly price of each paying user's plan in
/// every cycle the period touches, and which of those cycles have no record.
fn revenue_note(cycles: &RevenueCycles, l: Locale) -> String {
    let month = |c: &Cycle| c.key();
    let mut text = l
        .pick(
            "Receita dos planos: o preço mensal do plano de cada usuário pagante (não suspenso), em cada ciclo que o período toca",
            "Plan revenue: the monthly price of each paying (not suspended) user's plan, in every cycle the period touches",
        )
        .to_owned();
    let mut parts: Vec<String> = cycles.recorded.iter().map(month).collect();
    if let Some(live) = &cycles.live {
        parts.push(format!(
            "{} ({})",
            month(live),
            l.pick("atual, até agora", "current, so far")
        ));
    }
    if !parts.is_empty() {
        text.push_str(": ");
        text.push_str(&parts.join(", "));
    }
    text.push('.');
    if cycles.partial {
        text.push(' ');
        text.push_str(l.pick(
            "O período começa ou termina no meio de um mês: cada mês que ele toca conta inteiro.",
            "The period starts or ends inside a month: each month it touches counts whole.",
        ));
    }
    if !cycles.unrecorded.is_empty() {
        let missing: Vec<String> = cycles.unrecorded.iter().map(month).collect();
        text.push(' ');
        text.push_str(l.pick("Sem registro (não contados): ", "No record (not counted): "));
        text.push_str(&missing.join(", "));
        text.push('.');
    }
    text
}
