//! Read-only queries: summaries for the CLI and dashboard, and the invariant check.

use super::UserRef;
use crate::db::AnyConnection;
use crate::db::schema::{
    balances, holds, instances, ledger, model_weights, plan_models, plan_roles, plans,
    usage_records, users,
};
use crate::domain::plan::PlanSource;
use crate::domain::requests::Windows;
use crate::domain::{
    Brl, Cycle, DistributorId, Identity, Overage, PlanModels, RequestLimits, Scope, Side,
    SideAllowances,
};
use chrono::{DateTime, NaiveDateTime, Utc};
use chrono_tz::Tz;
use diesel::dsl::sql;
use diesel::prelude::*;
use diesel::sql_types::BigInt;
use serde::Serialize;

type Conn = AnyConnection;

/// A user and their balance, as admins see it.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct UserSummary {
    pub id: i64,
    /// The distributor the user belongs to (1: the install's own).
    pub distributor_id: i64,
    pub external_id: Option<String>,
    pub email: Option<String>,
    pub name: Option<String>,
    pub plan: String,
    pub monthly_allowance: i64,
    /// The models the plan may use; empty for every model.
    pub plan_models: Vec<String>,
    pub suspended: bool,
    pub cycle: String,
    /// When the current cycle's allowance expires (RFC 3339, UTC).
    pub cycle_resets_at: String,
    pub allowance_left: i64,
    pub credits: i64,
    pub held: i64,
    pub used_this_cycle: i64,
    /// `allowance_left + credits - held`: what the next request can use.
    pub remaining: i64,
    pub used_percent: u8,
    /// Refused for balance with nothing left worth a request (docs/behaviour.md), or
    /// nothing left at all: the dashboard and the command line call this blocked.
    pub blocked: bool,
    /// Requests made in this minute, today and this cycle, against the plan's limits.
    pub requests: RequestUse,
    /// The plan's input and output allowances, and each side's use this cycle.
    pub sides: SidesUse,
    /// The plan's overage, and what the user was billed of it this cycle.
    pub overage: OverageUse,
}

/// A user's overage this cycle.
#[derive(Debug, Clone, Copy, Serialize, PartialEq, Eq)]
pub struct OverageUse {
    /// The plan's; `None`: it blocks past the allowances.
    pub policy: Option<Overage>,
    pub tokens: i64,
    #[serde(rename = "cost_micro")]
    pub cost: i64,
}

/// A user's use of each side this cycle, against their plan's side allowances.
#[derive(Debug, Clone, Copy, Serialize, PartialEq, Eq)]
pub struct SidesUse {
    #[serde(flatten)]
    pub allowances: SideAllowances,
    pub input_used: i64,
    pub output_used: i64,
}

impl SidesUse {
    /// What the plan still pays of `side` this cycle; `None` when it does not cap it.
    pub fn left(&self, side: Side) -> Option<i64> {
        let used = match side {
            Side::Input => self.input_used,
            Side::Output => self.output_used,
        };
        self.allowances.left(side, used)
    }
}

/// A user's requests in the current windows, and the plan's limit of each.
#[derive(Debug, Clone, Copy, Serialize, PartialEq, Eq)]
pub struct RequestUse {
    pub limits: RequestLimits,
    pub this_minute: u32,
    pub today: u32,
    pub this_cycle: u32,
}

#[derive(Debug, Clone, Serialize, Queryable)]
pub struct LedgerEntry {
    pub id: i64,
    pub kind: String,
    pub delta_allowance: i64,
    pub delta_credits: i64,
    pub allowance_after: i64,
    pub credits_after: i64,
    pub cycle: String,
    pub actor: String,
    pub note: Option<String>,
    pub request_id: Option<String>,
    pub created_at: NaiveDateTime,
}

#[derive(Debug, Clone, Serialize, Queryable)]
pub struct UsageRecord {
    pub request_id: String,
    pub model: String,
    pub endpoint: String,
    pub stream: i32,
    pub prompt_tokens: i64,
    pub completion_tokens: i64,
    pub charged: i64,
    pub estimated: i32,
    pub outcome: String,
    pub status: i32,
    pub latency_ms: i64,
    pub ttfb_ms: Option<i64>,
    pub created_at: NaiveDateTime,
    /// Overage tokens the request was billed, and their price in micro-reais.
    pub overage_tokens: i64,
    pub overage_cost: i64,
}

#[derive(Debug, Clone, Queryable)]
pub struct HoldRow {
    pub request_id: String,
    pub user_id: i64,
    pub amount: i64,
    pub instance_id: String,
    pub created_at: NaiveDateTime,
    pub expires_at: NaiveDateTime,
    /// What the request's prompt was estimated at and costs: charged when the hold
    /// is released as abandoned (`None` for a hold of a release before this one).
    pub prompt_tokens: Option<i64>,
    pub prompt_charge: Option<i64>,
}

/// Stored balance against the sum of the ledger, and `held` against the holds.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct InvariantReport {
    pub allowance_left: i64,
    pub ledger_allowance: i64,
    pub credits: i64,
    pub ledger_credits: i64,
    pub held: i64,
    pub holds_total: i64,
}

impl InvariantReport {
    pub fn holds(&self) -> bool {
        self.allowance_left == self.ledger_allowance
            && self.credits == self.ledger_credits
            && self.held == self.holds_total
    }
}

pub(super) fn find_user(c: &mut Conn, user: &UserRef) -> QueryResult<Option<i64>> {
    match user {
        UserRef::Id(id) => users::table.find(*id).select(users::id).first(c).optional(),
        // The same LibreChat id may be a user of several distributors: the
        // install's own first, then the oldest (`#id` names one exactly).
        UserRef::External(ext) => users::table
            .filter(users::external_id.eq(ext))
            .order((users::distributor_id.ne(1_i64), users::id.asc()))
            .select(users::id)
            .first(c)
            .optional(),
        UserRef::Email(email) => users::table
            .filter(users::email.eq(email.as_str()))
            .order(users::id.asc())
            .select(users::id)
            .first(c)
            .optional(),
    }
}

pub(super) fn user_ids(c: &mut Conn) -> QueryResult<Vec<i64>> {
    users::table
        .order(users::id.asc())
        .select(users::id)
        .load(c)
}

pub(super) fn balance_cycle(c: &mut Conn, user_id: i64) -> QueryResult<Option<String>> {
    balances::table
        .find(user_id)
        .select(balances::cycle)
        .first(c)
        .optional()
}

type SummaryRow = (
    (
        i64,
        Option<String>,
        Option<String>,
        Option<String>,
        Option<NaiveDateTime>,
    ),
    (i64, String, i64, i64),
    (String, i64, i64, i64, i64, Option<NaiveDateTime>),
    (
        Option<NaiveDateTime>,
        i32,
        Option<String>,
        i32,
        Option<String>,
        i32,
        Option<i32>,
        Option<i32>,
        Option<i32>,
    ),
    (Option<i64>, Option<i64>, Option<String>, i64, i64),
    (Option<i64>, Option<i64>, i64, i64),
);

/// The user's summary at `now` (their requests in the windows that hold it).
pub(super) fn user_summary(
    c: &mut Conn,
    user_id: i64,
    tz: Tz,
    now: DateTime<Utc>,
) -> QueryResult<Option<UserSummary>> {
    let row: Option<SummaryRow> = users::table
        .inner_join(plans::table)
        .inner_join(balances::table)
        .filter(users::id.eq(user_id))
        .select((
            (
                users::id,
                users::external_id,
                users::email,
                users::name,
                users::suspended_at,
            ),
            (
                plans::id,
                plans::name,
                plans::monthly_allowance,
                users::distributor_id,
            ),
            (
                balances::cycle,
                balances::allowance_left,
                balances::credits,
                balances::held,
                balances::used_this_cycle,
                balances::exhausted_at,
            ),
            (
                balances::minute_start,
                balances::minute_requests,
                balances::request_day,
                balances::day_requests,
                balances::request_cycle,
                balances::cycle_requests,
                plans::requests_per_minute,
                plans::requests_per_day,
                plans::requests_per_month,
            ),
            (
                plans::input_allowance,
                plans::output_allowance,
                balances::usage_cycle,
                balances::input_used,
                balances::output_used,
            ),
            (
                plans::overage_cap,
                plans::overage_price,
                balances::overage_used,
                balances::overage_cost,
            ),
        ))
        .first(c)
        .optional()?;
    let Some(row) = row else {
        return Ok(None);
    };
    let windows = Windows::at(now, tz);
    let current_cycle = Cycle::containing(now, tz).key();
    let plan_models: Vec<String> = plan_models::table
        .filter(plan_models::plan_id.eq((row.1).0))
        .order(plan_models::model.asc())
        .select(plan_models::model)
        .load(c)?;
    Ok(Some(row).map(
        |(
            (id, external_id, email, name, suspended_at),
            (_, plan, monthly_allowance, distributor_id),
            (cycle, allowance_left, credits, held, used, exhausted_at),
            (
                minute_start,
                minute,
                day,
                today,
                request_cycle,
                this_cycle,
                per_minute,
                per_day,
                per_month,
            ),
            (input_allowance, output_allowance, usage_cycle, input_used, output_used),
            (overage_cap, overage_price, overage_used, overage_cost),
        )| {
            let counted = super::tx::CycleUse::stored(
                usage_cycle.as_deref(),
                &current_cycle,
                (input_used, output_used, overage_used, overage_cost),
            );
            let overage = Overage::stored(overage_cap, overage_price);
            // Counts kept for a window that has passed are zero now (the reservation
            // starts them over when it next writes).
            let n = |v: i32, current: bool| {
                if current {
                    u32::try_from(v).unwrap_or(0)
                } else {
                    0
                }
            };
            let requests = RequestUse {
                limits: RequestLimits::stored(per_minute, per_day, per_month),
                this_minute: n(minute, minute_start == Some(windows.minute_start)),
                today: n(today, day.as_deref() == Some(windows.day_key())),
                this_cycle: n(
                    this_cycle,
                    request_cycle.as_deref() == Some(current_cycle.as_str()),
                ),
            };
            let resets = Cycle::parse(&cycle)
                .map(|cy| cy.ends_at(tz).to_rfc3339())
                .unwrap_or_default();
            UserSummary {
                id,
                distributor_id,
                external_id,
                email,
                name,
                plan,
                monthly_allowance,
                plan_models,
                suspended: suspended_at.is_some(),
                cycle,
                cycle_resets_at: resets,
                allowance_left,
                credits,
                held,
                used_this_cycle: used,
                remaining: allowance_left + credits - held,
                used_percent: crate::domain::used_percent(used, allowance_left + credits),
                blocked: super::stats::out_of_balance(
                    allowance_left,
                    credits,
                    exhausted_at.is_some(),
                    overage.is_some(),
                ),
                requests,
                sides: SidesUse {
                    allowances: SideAllowances::stored(input_allowance, output_allowance),
                    input_used: counted.sides.input,
                    output_used: counted.sides.output,
                },
                overage: OverageUse {
                    policy: overage,
                    tokens: counted.overage,
                    cost: counted.overage_cost,
                },
            }
        },
    ))
}

/// A plan as the dashboard lists it.
#[derive(Debug, Clone, Serialize)]
pub struct PlanRow {
    pub id: i64,
    /// Whose plan: 1 is the install's, offered to every distributor.
    pub distributor_id: i64,
    pub name: String,
    pub monthly_allowance: i64,
    #[serde(flatten)]
    pub sides: SideAllowances,
    /// Past the allowances: `None` blocks.
    pub overage: Option<Overage>,
    pub is_default: bool,
    pub users: i64,
    #[serde(serialize_with = "listed_models")]
    pub models: PlanModels,
    pub request_limits: RequestLimits,
    /// In centavos; `None`: not set.
    #[serde(rename = "monthly_price_centavos")]
    pub monthly_price: Option<Brl>,
    /// Users not suspended, services' accounts aside: those who pay the price this
    /// cycle.
    pub active_users: i64,
    /// Tokens the plan's users have used this cycle.
    pub used_this_cycle: i64,
    /// `monthly_price` times `active_users`, in centavos.
    #[serde(rename = "revenue_this_cycle_centavos")]
    pub revenue_this_cycle: i64,
    /// The LibreChat roles whose users it takes.
    pub roles: Vec<String>,
    /// Overage tokens its users were billed this cycle, and their price in
    /// micro-reais.
    pub overage_this_cycle: i64,
    #[serde(rename = "overage_revenue_this_cycle_micro")]
    pub overage_revenue_this_cycle: i64,
}

/// A plan's models in JSON: the list, empty for every model.
fn listed_models<S: serde::Serializer>(m: &PlanModels, s: S) -> Result<S::Ok, S::Error> {
    s.collect_seq(m.listed())
}

/// The plans `scope` sees (its own, and the install's, which every distributor may
/// give), each with the figures of the users `scope` reaches.
pub(super) fn plans(c: &mut Conn, scope: Scope, cycle: &str) -> QueryResult<Vec<PlanRow>> {
    type Row = (
        i64,
        i64,
        String,
        i64,
        i32,
        Option<i32>,
        Option<i32>,
        Option<i32>,
        Option<i64>,
        (Option<i64>, Option<i64>),
        (Option<i64>, Option<i64>),
    );
    let (lo, hi) = scope.bounds();
    let rows: Vec<Row> = plans::table
        .filter(
            plans::distributor_id
                .between(lo, hi)
                .or(plans::distributor_id.eq(DistributorId::DIRECT.get())),
        )
        .order((plans::distributor_id.asc(), plans::name.asc()))
        .select((
            plans::id,
            plans::distributor_id,
            plans::name,
            plans::monthly_allowance,
            plans::is_default,
            plans::requests_per_minute,
            plans::requests_per_day,
            plans::requests_per_month,
            plans::monthly_price,
            (plans::input_allowance, plans::output_allowance),
            (plans::overage_cap, plans::overage_price),
        ))
        .load(c)?;
    type Overages = (i64, Option<i64>, Option<i64>);
    let overages: Vec<Overages> = users::table
        .inner_join(balances::table)
        .filter(users::distributor_id.between(lo, hi))
        .filter(balances::usage_cycle.eq(cycle))
        .group_by(users::plan_id)
        .select((
            users::plan_id,
            sql::<diesel::sql_types::Nullable<BigInt>>(
                "CAST(SUM(balances.overage_used) AS BIGINT)",
            ),
            sql::<diesel::sql_types::Nullable<BigInt>>(
                "CAST(SUM(balances.overage_cost) AS BIGINT)",
            ),
        ))
        .load(c)?;
    let counts: Vec<(i64, i64)> = users::table
        .filter(users::distributor_id.between(lo, hi))
        .group_by(users::plan_id)
        .select((users::plan_id, diesel::dsl::count_star()))
        .load(c)?;
    // Who pays: not suspended, and not a service's account (LibreChat's RAG API).
    let active: Vec<(i64, i64)> = users::table
        .filter(users::distributor_id.between(lo, hi))
        .filter(super::revenue::paying())
        .group_by(users::plan_id)
        .select((users::plan_id, diesel::dsl::count_star()))
        .load(c)?;
    let used: Vec<(i64, Option<i64>)> = users::table
        .inner_join(balances::table)
        .filter(users::distributor_id.between(lo, hi))
        .filter(balances::cycle.eq(cycle))
        .group_by(users::plan_id)
        .select((
            users::plan_id,
            sql::<diesel::sql_types::Nullable<BigInt>>(
                "CAST(SUM(balances.used_this_cycle) AS BIGINT)",
            ),
        ))
        .load(c)?;
    let of =
        |rows: &[(i64, i64)], id: i64| rows.iter().find(|(p, _)| *p == id).map_or(0, |(_, n)| *n);
    let listed: Vec<(i64, String)> = plan_models::table
        .select((plan_models::plan_id, plan_models::model))
        .load(c)?;
    let roles: Vec<(i64, String)> = plan_roles::table
        .order(plan_roles::role.asc())
        .select((plan_roles::plan_id, plan_roles::role))
        .load(c)?;
    Ok(rows
        .into_iter()
        .map(
            |(
                id,
                distributor_id,
                name,
                monthly_allowance,
                is_default,
                m,
                d,
                mo,
                price,
                (input, output),
                (cap, overage_price),
            )| {
                let (overage_this_cycle, overage_revenue_this_cycle) = overages
                    .iter()
                    .find(|(p, _, _)| *p == id)
                    .map_or((0, 0), |(_, t, r)| (t.unwrap_or(0), r.unwrap_or(0)));
                let monthly_price = price.and_then(Brl::from_centavos);
                let active_users = of(&active, id);
                PlanRow {
                    id,
                    distributor_id,
                    name,
                    monthly_allowance,
                    sides: SideAllowances::stored(input, output),
                    overage: Overage::stored(cap, overage_price),
                    overage_this_cycle,
                    overage_revenue_this_cycle,
                    is_default: is_default != 0,
                    request_limits: RequestLimits::stored(m, d, mo),
                    users: of(&counts, id),
                    models: PlanModels::stored(
                        listed
                            .iter()
                            .filter(|(p, _)| *p == id)
                            .map(|(_, m)| m.clone()),
                    ),
                    monthly_price,
                    active_users,
                    used_this_cycle: used
                        .iter()
                        .find(|(p, _)| *p == id)
                        .and_then(|(_, n)| *n)
                        .unwrap_or(0),
                    revenue_this_cycle: monthly_price.map_or(0, |p| p.times(active_users)),
                    roles: roles
                        .iter()
                        .filter(|(p, _)| *p == id)
                        .map(|(_, r)| r.clone())
                        .collect(),
                }
            },
        )
        .collect())
}

/// The models the caller may use: those of the plan their next request will be on.
/// That is their LibreChat role's plan, if a plan takes that role and no admin has
/// chosen theirs; else, for a user tokengate has met, their plan; for one it has not,
/// that of the user an admin created with their email (whom their first request will
/// be), else the default plan.
pub(super) fn models_for(c: &mut Conn, who: &Identity) -> QueryResult<PlanModels> {
    let email = who.email.as_ref().map(|e| e.as_str());
    type Found = (i64, Option<String>, String);
    let columns = (users::plan_id, users::librechat_role, users::plan_source);
    let mut found: Option<Found> = users::table
        .filter(users::distributor_id.eq(who.distributor.get()))
        .filter(users::external_id.eq(who.key.as_str()))
        .select(columns)
        .first(c)
        .optional()?;
    if let (None, Some(email)) = (&found, email) {
        found = users::table
            .filter(users::distributor_id.eq(who.distributor.get()))
            .filter(users::external_id.is_null())
            .filter(users::email.eq(email))
            .order(users::id.asc())
            .select(columns)
            .first(c)
            .optional()?;
    }
    let source = found
        .as_ref()
        .map_or(PlanSource::Default, |f| PlanSource::stored(&f.2));
    let role = who
        .role
        .as_ref()
        .map(|r| r.as_str().to_owned())
        .or_else(|| found.as_ref().and_then(|f| f.1.clone()));
    let role_plan = match role {
        Some(role) if source != PlanSource::Admin => plan_roles::table
            .find(role)
            .select(plan_roles::plan_id)
            .first(c)
            .optional()?,
        _ => None,
    };
    let default_plan = |c: &mut Conn| super::plans::default_plan(c, who.distributor);
    // Where `plans::placement` will put them on their next request.
    let plan_id = match (role_plan, found) {
        (Some(id), _) => id,
        (None, Some((_, _, s))) if PlanSource::stored(&s) == PlanSource::Role => default_plan(c)?,
        (None, Some((id, ..))) => id,
        (None, None) => default_plan(c)?,
    };
    let names: Vec<String> = plan_models::table
        .filter(plan_models::plan_id.eq(plan_id))
        .select(plan_models::model)
        .load(c)?;
    Ok(PlanModels::stored(names))
}

/// A model with weights set, as the weights page lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModelRow {
    pub model: String,
    pub weights: crate::domain::Weights,
    /// The admin's figure, else the worst case known for the name.
    pub image_tokens: i64,
    pub call_extra: Option<i64>,
}

/// model, input and output weights, image tokens, extra per call.
type WeightColumns = (String, i64, i64, Option<i64>, Option<i64>);

pub(super) fn weights(c: &mut Conn) -> QueryResult<Vec<ModelRow>> {
    let rows: Vec<WeightColumns> = model_weights::table
        .order(model_weights::model.asc())
        .select((
            model_weights::model,
            model_weights::input_milli,
            model_weights::output_milli,
            model_weights::image_tokens,
            model_weights::call_extra,
        ))
        .load(c)?;
    Ok(rows
        .into_iter()
        .filter_map(|(model, i, o, image, call_extra)| {
            let image_tokens =
                image.unwrap_or_else(|| crate::domain::media::image_worst_case(&model));
            crate::domain::Weights::from_milli(i, o).map(|weights| ModelRow {
                model,
                weights,
                image_tokens,
                call_extra,
            })
        })
        .collect())
}

/// The columns of [`LedgerEntry`], in its field order.
const LEDGER_COLUMNS: (
    ledger::id,
    ledger::kind,
    ledger::delta_allowance,
    ledger::delta_credits,
    ledger::allowance_after,
    ledger::credits_after,
    ledger::cycle,
    ledger::actor,
    ledger::note,
    ledger::request_id,
    ledger::created_at,
) = (
    ledger::id,
    ledger::kind,
    ledger::delta_allowance,
    ledger::delta_credits,
    ledger::allowance_after,
    ledger::credits_after,
    ledger::cycle,
    ledger::actor,
    ledger::note,
    ledger::request_id,
    ledger::created_at,
);

pub(super) fn ledger_entries(c: &mut Conn, user_id: i64) -> QueryResult<Vec<LedgerEntry>> {
    ledger::table
        .filter(ledger::user_id.eq(user_id))
        .order(ledger::id.asc())
        .select(LEDGER_COLUMNS)
        .load(c)
}

pub(super) fn recent_ledger_entries(
    c: &mut Conn,
    user_id: i64,
    limit: i64,
) -> QueryResult<Vec<LedgerEntry>> {
    ledger::table
        .filter(ledger::user_id.eq(user_id))
        .order(ledger::id.desc())
        .limit(limit)
        .select(LEDGER_COLUMNS)
        .load(c)
}

pub(super) fn usage_records(
    c: &mut Conn,
    user_id: i64,
    newest: Option<i64>,
) -> QueryResult<Vec<UsageRecord>> {
    let mut q = usage_records::table
        .filter(usage_records::user_id.eq(user_id))
        .into_boxed();
    q = match newest {
        Some(n) => q.order(usage_records::id.desc()).limit(n),
        None => q.order(usage_records::id.asc()),
    };
    q.select((
        usage_records::request_id,
        usage_records::model,
        usage_records::endpoint,
        usage_records::stream,
        usage_records::prompt_tokens,
        usage_records::completion_tokens,
        usage_records::charged,
        usage_records::estimated,
        usage_records::outcome,
        usage_records::status,
        usage_records::latency_ms,
        usage_records::ttfb_ms,
        usage_records::created_at,
        usage_records::overage_tokens,
        usage_records::overage_cost,
    ))
    .load(c)
}

pub(super) fn all_holds(c: &mut Conn) -> QueryResult<Vec<HoldRow>> {
    holds::table
        .order(holds::created_at.asc())
        .select((
            holds::request_id,
            holds::user_id,
            holds::amount,
            holds::instance_id,
            holds::created_at,
            holds::expires_at,
            holds::prompt_tokens,
            holds::prompt_charge,
        ))
        .load(c)
}

/// The instances that beat after `alive_after` (the database's clock).
pub(super) fn live_instances(c: &mut Conn, alive_after: NaiveDateTime) -> QueryResult<Vec<String>> {
    instances::table
        .filter(instances::heartbeat_at.gt(alive_after))
        .select(instances::id)
        .load(c)
}

pub(super) fn invariant(c: &mut Conn, user_id: i64) -> QueryResult<InvariantReport> {
    let (allowance_left, credits, held): (i64, i64, i64) = balances::table
        .find(user_id)
        .select((balances::allowance_left, balances::credits, balances::held))
        .first(c)?;
    // SUM(BIGINT) is NUMERIC on PostgreSQL: cast back so both backends agree.
    let (ledger_allowance, ledger_credits): (i64, i64) = ledger::table
        .filter(ledger::user_id.eq(user_id))
        .select((
            sql::<BigInt>("CAST(COALESCE(SUM(delta_allowance), 0) AS BIGINT)"),
            sql::<BigInt>("CAST(COALESCE(SUM(delta_credits), 0) AS BIGINT)"),
        ))
        .first(c)?;
    let holds_total: i64 = holds::table
        .filter(holds::user_id.eq(user_id))
        .select(sql::<BigInt>("CAST(COALESCE(SUM(amount), 0) AS BIGINT)"))
        .first(c)?;
    Ok(InvariantReport {
        allowance_left,
        ledger_allowance,
        credits,
        ledger_credits,
        held,
        holds_total,
    })
}
