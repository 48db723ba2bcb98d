//! The overview: usage today and this cycle, user states, usage and revenue per plan,
//! top users, 30 days.

use super::{locale, render, with_scoped};
use crate::admin::AdminError;
use crate::admin::session::SignedIn;
use crate::admin::views::{self, Nav};
use crate::startup::AppState;
use actix_web::{HttpResponse, web};
use maud::html;

pub async fn show(state: web::Data<AppState>, me: SignedIn) -> Result<HttpResponse, AdminError> {
    let l = locale(&state);
    let (o, open_requests, plans, distributors) = with_scoped(&state, &me, |ledger| {
        Ok::<_, crate::db::StoreError>((
            ledger.overview()?,
            ledger.open_credit_requests()?,
            ledger.plans()?,
            ledger.distributors()?,
        ))
    })
    .await?;
    let revenue: i64 = plans.iter().map(|p| p.revenue_this_cycle).sum();
    let cycle = state.ledger.current_cycle();
    let cards = [
        (
            l.pick("Tokens usados hoje", "Tokens used today"),
            views::tokens(o.used_today, l),
            None,
        ),
        (
            l.pick("Tokens usados neste ciclo", "Tokens used this cycle"),
            views::tokens(o.used_cycle, l),
            None,
        ),
        (
            l.pick("Usuários ativos no ciclo", "Active users this cycle"),
            views::tokens(o.active_users, l),
            None,
        ),
        (
            l.pick("Acima de 80%", "Over 80%"),
            views::tokens(o.over_80, l),
            Some("/admin/users?state=over80"),
        ),
        (
            l.pick("Bloqueados (sem saldo)", "Blocked (no balance left)"),
            views::tokens(o.blocked, l),
            Some("/admin/users?state=blocked"),
        ),
        (
            l.pick("Suspensos", "Suspended"),
            views::tokens(o.suspended, l),
            Some("/admin/users?state=suspended"),
        ),
        (
            l.pick("Pedidos de créditos abertos", "Open credit requests"),
            views::tokens(open_requests, l),
            Some("/admin/requests"),
        ),
    ];
    let body = html! {
        p.muted {
            (l.pick("Ciclo", "Cycle")) " " (cycle.key()) " · "
            (o.total_users) " " (l.pick("usuários", "users"))
        }
        section.cards {
            @for (label, value, link) in &cards {
                div.card {
                    span.label { (label) }
                    @match link {
                        Some(href) => a.value href=(href) { (value) },
                        None => span.value { (value) },
                    }
                }
            }
        }
        section {
            h2 { (l.pick("Uso por dia", "Usage per day")) }
            (views::daily_chart(&o.daily, l))
        }
        section {
            h2 { (l.pick("Por plano, neste ciclo", "Per plan, this cycle")) }
            table.per-plan {
                thead { tr {
                    th { (l.pick("Plano", "Plan")) }
                    th.num { (l.pick("Usuários que pagam", "Paying users")) }
                    th.num { (l.pick("Tokens usados", "Tokens used")) }
                    th.num { (l.pick("Receita", "Revenue")) }
                } }
                tbody {
                    @for p in &plans {
                        tr {
                            td { a href="/admin/plans" { (p.name) } }
                            td.num { (p.active_users) }
                            td.num { (views::tokens(p.used_this_cycle, l)) }
                            td.num { @match p.monthly_price {
                                Some(_) => (views::reais(p.revenue_this_cycle, l)),
                                None => span.muted { (l.pick("sem preço", "no price")) },
                            } }
                        }
                    }
                }
                tfoot { tr {
                    th { (l.pick("Total", "Total")) }
                    th.num { (plans.iter().map(|p| p.active_users).sum::<i64>()) }
                    th.num { (views::tokens(plans.iter().map(|p| p.used_this_cycle).sum(), l)) }
                    th.num #revenue { (views::reais(revenue, l)) }
                } }
            }
        }
        // Only where there are distributors, and only for global admins.
        @if !distributors.is_empty() {
            section {
                h2 { (l.pick("Por distribuidor, neste ciclo", "Per distributor, this cycle")) }
                table.per-distributor {
                    thead { tr {
                        th { (l.pick("Distribuidor", "Distributor")) }
                        th.num { (l.pick("Usuários", "Users")) }
                        th.num { (l.pick("Tokens usados", "Tokens used")) }
                        th.num { (l.pick("Cota mensal", "Monthly pool")) }
                        th.num { (l.pick("Receita", "Revenue")) }
                    } }
                    tbody {
                        @for d in &distributors {
                            tr {
                                td { (d.name) }
                                td.num { (d.users) }
                                td.num { (views::tokens(d.used_this_cycle, l)) }
                                td.num { @match d.pool_cap {
                                    Some(cap) => { (views::tokens(d.pool_used, l)) " / " (views::tokens(cap, l)) },
                                    None => span.muted { (l.pick("sem cota", "no pool")) },
                                } }
                                td.num { (views::reais(d.revenue_this_cycle, l)) }
                            }
                        }
                    }
                }
            }
        }
        section {
            h2 { (l.pick("Quem mais usou neste ciclo", "Top users this cycle")) }
            @if o.top_users.is_empty() {
                p.empty { (l.pick("Ninguém usou tokens neste ciclo ainda.", "Nobody has used tokens this cycle yet.")) }
            } @else {
                table {
                    thead { tr { th { (l.pick("Usuário", "User")) } th.num { "Tokens" } } }
                    tbody {
                        @for t in &o.top_users {
                            tr {
                                td { a href=(format!("/admin/users/{}", t.user_id)) { (t.label) } }
                                td.num { (views::tokens(t.tokens, l)) }
                            }
                        }
                    }
                }
            }
        }
    };
    Ok(render(
        &state,
        &me,
        l.pick("Visão geral", "Overview"),
        Nav::Overview,
        body,
    ))
}
