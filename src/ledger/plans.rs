//! Plans: what they sell (`PlanSpec`), what a request must meet (`PlanPolicy`), and
//! moving a user between them. Every change is audited in the transaction that
//! makes it.

use super::audit::{self, Action};
use super::tx::{Conn, Ctx, LedgerChange, append_ledger, lock_and_roll};
use super::{Actor, LedgerError};
use crate::alerts::store as alert_store;
use crate::db::schema::{balances, ledger, plan_models, plan_roles, plans, users};
use crate::db::statement::on_backend;
use crate::db::{AnyConnection, StoreError, flag};
use crate::domain::DistributorId;
use crate::domain::identity::Role;
use crate::domain::plan::{Allowance, PlanSource};
use crate::domain::{
    Brl, Overage, PlanChange, PlanModels, PlanPolicy, PlanSpec, RequestLimit, RequestLimits,
    SideAllowances, used_percent,
};
use chrono::NaiveDateTime;
use diesel::prelude::*;
use serde_json::json;
use std::collections::BTreeSet;

/// What plan `plan_id` asks of a request, in one statement: on the hot path (every
/// reservation), one the statement cache keeps.
pub(super) fn policy(c: &mut Conn, plan_id: i64) -> Result<PlanPolicy, StoreError> {
    let lookup = plans::table
        .left_join(plan_models::table)
        .filter(plans::id.eq(plan_id))
        .select((
            plans::requests_per_minute,
            plans::requests_per_day,
            plans::requests_per_month,
            (plans::input_allowance, plans::output_allowance),
            (plans::overage_cap, plans::overage_price),
            plan_models::model.nullable(),
        ));
    type Pair = (Option<i64>, Option<i64>);
    type Row = (
        Option<i32>,
        Option<i32>,
        Option<i32>,
        Pair,
        Pair,
        Option<String>,
    );
    let rows: Vec<Row> = on_backend!(c, |c| lookup.load(c))?;
    let (limits, sides, overage) = rows
        .first()
        .map(|(m, d, mo, (input, output), (cap, price), _)| {
            (
                RequestLimits::stored(*m, *d, *mo),
                SideAllowances::stored(*input, *output),
                Overage::stored(*cap, *price),
            )
        })
        .unwrap_or_default();
    Ok(PlanPolicy {
        models: PlanModels::stored(rows.into_iter().filter_map(|r| r.5)),
        limits,
        sides,
        overage,
    })
}

/// The plan a LibreChat role takes its users to, if any.
pub(super) fn role_plan(c: &mut Conn, role: &str) -> Result<Option<i64>, StoreError> {
    Ok(plan_roles::table
        .find(role)
        .select(plan_roles::plan_id)
        .first(c)
        .optional()?)
}

/// Where a user's LibreChat role puts them, when that is not where they are: the
/// role's plan (`role_plan`); or, for a user their role placed whose role no longer
/// names a plan, the default plan. Nothing for a user an admin placed.
pub(super) fn placement(
    c: &mut Conn,
    distributor: DistributorId,
    plan_id: i64,
    source: PlanSource,
    role_plan: Option<i64>,
) -> Result<Option<(i64, PlanSource)>, StoreError> {
    let target = match (source, role_plan) {
        (PlanSource::Admin, _) => None,
        (_, Some(plan)) => Some((plan, PlanSource::Role)),
        (PlanSource::Role, None) => Some((default_plan(c, distributor)?, PlanSource::Default)),
        (PlanSource::Default, None) => None,
    };
    Ok(target.filter(|&(plan, to)| plan != plan_id || to != source))
}

/// The plan a distributor's new users start on: its own default, else the
/// install's.
pub(super) fn default_plan(c: &mut Conn, distributor: DistributorId) -> QueryResult<i64> {
    plans::table
        .filter(plans::distributor_id.eq_any([DistributorId::DIRECT.get(), distributor.get()]))
        .order((
            plans::is_default.desc(),
            plans::distributor_id.eq(distributor.get()).desc(),
            plans::id.asc(),
        ))
        .select(plans::id)
        .first(c)
}

/// Puts a user where their LibreChat role says (`placement`), as an admin's move
/// would: the cycle's use carries over. An admin's choice made meanwhile wins.
pub(super) fn follow_role(
    c: &mut Conn,
    ctx: &Ctx,
    user_id: i64,
    (plan_id, source): (i64, PlanSource),
) -> Result<i64, StoreError> {
    move_user(c, ctx, user_id, plan_id, &Actor::Role, source).map_err(|e| match e {
        LedgerError::Store(e) => e,
        // The plan is a row this transaction just read.
        other => StoreError::Query(diesel::result::Error::QueryBuilderError(
            other.to_string().into(),
        )),
    })
}

/// The roles plan `plan_id` takes.
fn roles_of(c: &mut Conn, plan_id: i64) -> Result<BTreeSet<Role>, StoreError> {
    let names: Vec<String> = plan_roles::table
        .filter(plan_roles::plan_id.eq(plan_id))
        .select(plan_roles::role)
        .load(c)?;
    Ok(names.iter().filter_map(|r| Role::parse(r)).collect())
}

/// Makes `roles` exactly those plan `plan_id` takes; a role another plan takes is
/// refused.
fn write_roles(c: &mut Conn, plan_id: i64, roles: &BTreeSet<Role>) -> Result<(), LedgerError> {
    for role in roles {
        let taken: Option<String> = plan_roles::table
            .inner_join(plans::table)
            .filter(plan_roles::role.eq(role.as_str()))
            .filter(plan_roles::plan_id.ne(plan_id))
            .select(plans::name)
            .first(c)
            .optional()?;
        if let Some(plan) = taken {
            return Err(LedgerError::RoleTaken {
                role: role.to_string(),
                plan,
            });
        }
    }
    diesel::delete(plan_roles::table.filter(plan_roles::plan_id.eq(plan_id))).execute(c)?;
    for role in roles {
        diesel::insert_into(plan_roles::table)
            .values((
                plan_roles::role.eq(role.as_str()),
                plan_roles::plan_id.eq(plan_id),
            ))
            .execute(c)?;
    }
    Ok(())
}

fn role_names(roles: &BTreeSet<Role>) -> Vec<&str> {
    roles.iter().map(Role::as_str).collect()
}

/// A limit as its column keeps it.
fn column(limit: Option<RequestLimit>) -> Option<i32> {
    limit.and_then(|l| i32::try_from(l.get()).ok())
}

/// The limits as an audit line shows them (absent: none).
fn audited(limits: &RequestLimits) -> serde_json::Value {
    json!({
        "per_minute": limits.per_minute.map(RequestLimit::get),
        "per_day": limits.per_day.map(RequestLimit::get),
        "per_month": limits.per_month.map(RequestLimit::get),
    })
}

/// Replaces the models plan `plan_id` may use.
fn write_models(c: &mut Conn, plan_id: i64, models: &PlanModels) -> Result<(), StoreError> {
    diesel::delete(plan_models::table.filter(plan_models::plan_id.eq(plan_id))).execute(c)?;
    // One row at a time: Diesel has no batch insert across both backends (a plan
    // lists a few models).
    for model in models.listed() {
        diesel::insert_into(plan_models::table)
            .values((
                plan_models::plan_id.eq(plan_id),
                plan_models::model.eq(model),
            ))
            .execute(c)?;
    }
    Ok(())
}

pub(super) fn create_plan(
    c: &mut Conn,
    ctx: &Ctx,
    owner: DistributorId,
    spec: &PlanSpec,
    make_default: bool,
    actor: &Actor,
) -> Result<i64, LedgerError> {
    let name = spec.name.as_str();
    let exists: i64 = plans::table
        .filter(plans::distributor_id.eq(owner.get()))
        .filter(plans::name.eq(name))
        .count()
        .get_result(c)?;
    if exists > 0 {
        return Err(LedgerError::PlanExists(name.to_owned()));
    }
    // A role names one plan for every LibreChat: only the install's plans take roles.
    if !owner.is_direct() && !spec.roles.is_empty() {
        return Err(LedgerError::Invalid(
            "only the install's own plans take LibreChat roles".into(),
        ));
    }
    if make_default {
        diesel::update(
            plans::table
                .filter(plans::is_default.eq(1))
                .filter(plans::distributor_id.eq(owner.get())),
        )
        .set(plans::is_default.eq(0))
        .execute(c)?;
    }
    let id = diesel::insert_into(plans::table)
        .values((
            plans::name.eq(name),
            plans::monthly_allowance.eq(spec.monthly_allowance.get()),
            plans::is_default.eq(flag(make_default)),
            plans::created_at.eq(ctx.now),
            plans::requests_per_minute.eq(column(spec.limits.per_minute)),
            plans::requests_per_day.eq(column(spec.limits.per_day)),
            plans::requests_per_month.eq(column(spec.limits.per_month)),
            plans::monthly_price.eq(spec.monthly_price.map(Brl::centavos)),
            plans::input_allowance.eq(spec.sides.input.map(Allowance::get)),
            plans::output_allowance.eq(spec.sides.output.map(Allowance::get)),
            plans::overage_cap.eq(spec.overage.map(|o| o.cap.get())),
            plans::overage_price.eq(spec.overage.map(|o| o.price.micro())),
            plans::distributor_id.eq(owner.get()),
        ))
        .returning(plans::id)
        .get_result(c)?;
    write_models(c, id, &spec.models)?;
    write_roles(c, id, &spec.roles)?;
    audit::record_in(
        c,
        actor,
        Action::CreatePlan,
        None,
        owner,
        &json!({
            "plan": name,
            "allowance": spec.monthly_allowance.get(),
            "input_allowance": spec.sides.input.map(Allowance::get),
            "output_allowance": spec.sides.output.map(Allowance::get),
            "overage": spec.overage,
            "models": spec.models.listed(),
            "request_limits": audited(&spec.limits),
            "monthly_price_centavos": spec.monthly_price.map(Brl::centavos),
            "roles": role_names(&spec.roles),
            "default": make_default,
        }),
        ctx.now,
    )?;
    Ok(id)
}

/// Which plan: by id (the dashboard) or by name (the command line).
#[derive(Debug, Clone)]
pub enum PlanRef {
    Id(i64),
    Name(String),
}

/// Changes a plan in one transaction: what `change` leaves out stays, so an edit
/// made meanwhile elsewhere is not written over. Its name, models, request limits,
/// side allowances and overage apply at once (counted from what each user has
/// already used in the window or the cycle); its monthly allowance from each user's
/// next cycle (the audit line says so). A change that changes nothing writes nothing.
/// Returns the plan's id.
pub(super) fn update_plan(
    c: &mut Conn,
    ctx: &Ctx,
    plan: &PlanRef,
    change: &PlanChange,
    actor: &Actor,
) -> Result<i64, LedgerError> {
    let columns = (
        plans::id,
        plans::name,
        plans::monthly_allowance,
        plans::is_default,
        plans::monthly_price,
        plans::distributor_id,
    );
    // By name: the install's own plans (a distributor's are named by #id).
    let found: Option<(i64, String, i64, i32, Option<i64>, i64)> = match plan {
        PlanRef::Id(id) => plans::table.find(*id).select(columns).first(c),
        PlanRef::Name(name) => plans::table
            .filter(plans::distributor_id.eq(DistributorId::DIRECT.get()))
            .filter(plans::name.eq(name))
            .select(columns)
            .first(c),
    }
    .optional()?;
    let (plan_id, old_name, old_allowance, is_default, old_price, owner) =
        found.ok_or_else(|| {
            LedgerError::PlanNotFound(match plan {
                PlanRef::Id(id) => format!("#{id}"),
                PlanRef::Name(name) => name.clone(),
            })
        })?;
    let PlanPolicy {
        models: old_models,
        limits: old_limits,
        sides: old_sides,
        overage: old_overage,
    } = policy(c, plan_id)?;
    let new_limits = change.limits(old_limits);
    let new_sides = change.sides(old_sides);
    let new_overage = change.overage.unwrap_or(old_overage);
    let new_price = change
        .monthly_price
        .map_or(old_price, |p| p.map(Brl::centavos));
    let old_roles = roles_of(c, plan_id)?;
    let new_roles = change.roles.as_ref().unwrap_or(&old_roles);
    let name = change
        .name
        .as_ref()
        .map_or(old_name.as_str(), |n| n.as_str());
    // A monthly allowance that is its two sides added up (as `plans create` makes
    // it without one) stays so when a side changes and it is not given anew.
    let derived = old_sides.total().map(Allowance::get) == Some(old_allowance);
    let allowance = match change.monthly_allowance.map(Allowance::get) {
        Some(given) if given != old_allowance => given,
        _ if derived && new_sides != old_sides => {
            new_sides.total().map_or(old_allowance, Allowance::get)
        }
        _ => old_allowance,
    };
    let new_models = change.models.as_ref().unwrap_or(&old_models);
    let owner = DistributorId::from_db(owner);
    if !owner.is_direct() && change.roles.as_ref().is_some_and(|r| !r.is_empty()) {
        return Err(LedgerError::Invalid(
            "only the install's own plans take LibreChat roles".into(),
        ));
    }
    if name != old_name {
        let clash: i64 = plans::table
            .filter(plans::distributor_id.eq(owner.get()))
            .filter(plans::name.eq(name))
            .filter(plans::id.ne(plan_id))
            .count()
            .get_result(c)?;
        if clash > 0 {
            return Err(LedgerError::PlanExists(name.to_owned()));
        }
    }
    if name != old_name
        || allowance != old_allowance
        || *new_models != old_models
        || new_limits != old_limits
        || new_sides != old_sides
        || new_overage != old_overage
        || new_price != old_price
        || *new_roles != old_roles
    {
        // Only what changes is written: on PostgreSQL an edit committed meanwhile by
        // another admin keeps what this one leaves alone.
        if name != old_name {
            diesel::update(plans::table.find(plan_id))
                .set(plans::name.eq(name))
                .execute(c)?;
        }
        if allowance != old_allowance {
            diesel::update(plans::table.find(plan_id))
                .set(plans::monthly_allowance.eq(allowance))
                .execute(c)?;
        }
        if *new_models != old_models {
            write_models(c, plan_id, new_models)?;
        }
        if *new_roles != old_roles {
            write_roles(c, plan_id, new_roles)?;
        }
        if new_price != old_price {
            diesel::update(plans::table.find(plan_id))
                .set(plans::monthly_price.eq(new_price))
                .execute(c)?;
        }
        if new_sides.input != old_sides.input {
            diesel::update(plans::table.find(plan_id))
                .set(plans::input_allowance.eq(new_sides.input.map(Allowance::get)))
                .execute(c)?;
        }
        if new_sides.output != old_sides.output {
            diesel::update(plans::table.find(plan_id))
                .set(plans::output_allowance.eq(new_sides.output.map(Allowance::get)))
                .execute(c)?;
        }
        if new_overage != old_overage {
            diesel::update(plans::table.find(plan_id))
                .set((
                    plans::overage_cap.eq(new_overage.map(|o| o.cap.get())),
                    plans::overage_price.eq(new_overage.map(|o| o.price.micro())),
                ))
                .execute(c)?;
        }
        if new_limits.per_minute != old_limits.per_minute {
            diesel::update(plans::table.find(plan_id))
                .set(plans::requests_per_minute.eq(column(new_limits.per_minute)))
                .execute(c)?;
        }
        if new_limits.per_day != old_limits.per_day {
            diesel::update(plans::table.find(plan_id))
                .set(plans::requests_per_day.eq(column(new_limits.per_day)))
                .execute(c)?;
        }
        if new_limits.per_month != old_limits.per_month {
            diesel::update(plans::table.find(plan_id))
                .set(plans::requests_per_month.eq(column(new_limits.per_month)))
                .execute(c)?;
        }
        audit::record_in(
            c,
            actor,
            Action::EditPlan,
            None,
            owner,
            &json!({
                "plan": name,
                "old_name": old_name,
                "allowance": allowance,
                "old_allowance": old_allowance,
                "allowance_from": "next_cycle",
                "input_allowance": new_sides.input.map(Allowance::get),
                "old_input_allowance": old_sides.input.map(Allowance::get),
                "output_allowance": new_sides.output.map(Allowance::get),
                "old_output_allowance": old_sides.output.map(Allowance::get),
                "side_allowances_from": "now",
                "overage": new_overage,
                "old_overage": old_overage,
                "overage_from": "now",
                "models": new_models.listed(),
                "old_models": old_models.listed(),
                "models_from": "now",
                "request_limits": audited(&new_limits),
                "old_request_limits": audited(&old_limits),
                "request_limits_from": "now",
                "monthly_price_centavos": new_price,
                "old_monthly_price_centavos": old_price,
                "monthly_price_from": "now",
                "roles": role_names(new_roles),
                "old_roles": role_names(&old_roles),
                "roles_from": "each user's next request",
            }),
            ctx.now,
        )?;
    }
    if change.make_default && is_default == 0 {
        set_default_plan(c, ctx, plan_id, actor)?;
    }
    Ok(plan_id)
}

/// New users start on the default plan.
pub(super) fn set_default_plan(
    c: &mut Conn,
    ctx: &Ctx,
    plan_id: i64,
    actor: &Actor,
) -> Result<(), LedgerError> {
    let name: String = plans::table
        .find(plan_id)
        .select(plans::name)
        .first(c)
        .optional()?
        .ok_or_else(|| LedgerError::PlanNotFound(format!("#{plan_id}")))?;
    // One default per distributor: the install's, and each distributor's own.
    let owner: i64 = plans::table
        .find(plan_id)
        .select(plans::distributor_id)
        .first(c)?;
    diesel::update(
        plans::table
            .filter(plans::is_default.eq(1))
            .filter(plans::distributor_id.eq(owner)),
    )
    .set(plans::is_default.eq(0))
    .execute(c)?;
    diesel::update(plans::table.find(plan_id))
        .set(plans::is_default.eq(1))
        .execute(c)?;
    audit::record_in(
        c,
        actor,
        Action::SetDefaultPlan,
        None,
        DistributorId::from_db(owner),
        &json!({"plan": name}),
        ctx.now,
    )?;
    Ok(())
}

/// An admin (or the command line) moves a user to another plan at once: see
/// `move_user`. The admin's choice stays whatever the user's LibreChat role.
pub(super) fn change_plan(
    c: &mut Conn,
    ctx: &Ctx,
    user_id: i64,
    plan_id: i64,
    actor: &Actor,
) -> Result<(), LedgerError> {
    move_user(c, ctx, user_id, plan_id, actor, PlanSource::Admin).map(|_| ())
}

/// Moves a user to another plan at once: this cycle's allowance becomes the new
/// plan's, less what the allowance already paid for this cycle (never below zero), as
/// an `adjustment` in the ledger. It depends only on the plan moved to, not on the
/// way there: A to B and back to A leaves what staying on A would have. `source`
/// says who placed them; a move by their role (`Actor::System`) does not undo an
/// admin's placement made meanwhile. Returns the user's plan.
fn move_user(
    c: &mut Conn,
    ctx: &Ctx,
    user_id: i64,
    plan_id: i64,
    actor: &Actor,
    source: PlanSource,
) -> Result<i64, LedgerError> {
    // The user's row first, then the balance's: the order a request takes them in
    // (it may refresh the user's row before it locks the balance), so neither waits
    // on the other in a circle.
    let lock_user = users::table.find(user_id).select(users::id);
    match c {
        AnyConnection::Postgresql(pg) => {
            lock_user.for_update().first::<i64>(pg)?;
        }
        // A write transaction holds the whole database.
        AnyConnection::Sqlite(_) => {}
    }
    let bal = lock_and_roll(c, ctx, user_id)?;
    let (old_id, old_name, old_source): (i64, String, String) = users::table
        .inner_join(plans::table)
        .filter(users::id.eq(user_id))
        .select((plans::id, plans::name, users::plan_source))
        .first(c)?;
    if source != PlanSource::Admin && PlanSource::stored(&old_source) == PlanSource::Admin {
        return Ok(old_id);
    }
    // Only a plan offered to the user's distributor: its own, or the install's.
    let distributor: i64 = users::table
        .find(user_id)
        .select(users::distributor_id)
        .first(c)?;
    let (new_name, new_allowance): (String, i64) = plans::table
        .find(plan_id)
        .filter(plans::distributor_id.eq_any([DistributorId::DIRECT.get(), distributor]))
        .select((plans::name, plans::monthly_allowance))
        .first(c)
        .optional()?
        .ok_or_else(|| LedgerError::PlanNotFound(format!("#{plan_id}")))?;
    if old_id == plan_id {
        if PlanSource::stored(&old_source) != source {
            diesel::update(users::table.find(user_id))
                .set(users::plan_source.eq(source.as_str()))
                .execute(c)?;
            audit::record(
                c,
                actor,
                Action::ChangePlan,
                Some(user_id),
                &json!({"from": old_name, "to": new_name, "allowance_delta": 0, "placed_by": source.as_str()}),
                ctx.now,
            )?;
        }
        return Ok(plan_id);
    }
    let allowance_spent = allowance_spent_this_cycle(c, user_id, &ctx.cycle_key)?;
    let allowance_left = new_allowance.saturating_sub(allowance_spent).max(0);
    let delta = allowance_left - bal.allowance_left;
    diesel::update(users::table.find(user_id))
        .set((
            users::plan_id.eq(plan_id),
            users::updated_at.eq(ctx.now),
            users::plan_source.eq(source.as_str()),
        ))
        .execute(c)?;
    diesel::update(balances::table.filter(balances::user_id.eq(user_id)))
        .set((
            balances::allowance_left.eq(allowance_left),
            balances::exhausted_at.eq(None::<NaiveDateTime>),
        ))
        .execute(c)?;
    let note = format!("{old_name} -> {new_name}");
    if delta != 0 {
        append_ledger(
            c,
            ctx,
            user_id,
            &LedgerChange {
                kind: "adjustment",
                delta_allowance: delta,
                delta_credits: 0,
                actor: actor.label(),
                note: Some(&note),
                request_id: None,
            },
            allowance_left,
            bal.credits,
        )?;
    }
    alert_store::rearm(
        c,
        user_id,
        &ctx.cycle_key,
        used_percent(bal.used_this_cycle, allowance_left + bal.credits),
        ctx.now,
    )?;
    audit::record(
        c,
        actor,
        Action::ChangePlan,
        Some(user_id),
        &json!({"from": old_name, "to": new_name, "allowance_delta": delta, "placed_by": source.as_str()}),
        ctx.now,
    )?;
    Ok(plan_id)
}

/// What this cycle's usage took from the allowance (not from credits), from the
/// ledger.
fn allowance_spent_this_cycle(c: &mut Conn, user_id: i64, cycle: &str) -> Result<i64, StoreError> {
    let taken: Option<i64> = ledger::table
        .filter(ledger::user_id.eq(user_id))
        .filter(ledger::cycle.eq(cycle))
        .filter(ledger::kind.eq("usage"))
        .select(diesel::dsl::sql::<
            diesel::sql_types::Nullable<diesel::sql_types::BigInt>,
        >("CAST(SUM(delta_allowance) AS BIGINT)"))
        .first(c)?;
    Ok(-taken.unwrap_or(0))
}
