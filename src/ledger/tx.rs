//! Transaction bodies and what they share (the balance row, the ledger, a model's
//! costs). Each runs inside a write transaction of the write engine (`db::engine`)
//! and may be run again whole after a lost race. The reservation and the settlement
//! have files of their own (`reserve`, `settle`).

use super::audit::{self, Action};
use super::{Actor, UserRef};
use crate::alerts::store as alert_store;
use crate::db::schema::{
    balances, holds, instances, ledger, model_weights, plan_roles, plans, users,
};
use crate::db::statement::{FixedUpdate, on_backend};
use crate::db::{AnyConnection, StoreError};
use crate::domain::plan::PlanSource;
use crate::domain::{
    Clock, Cycle, DistributorId, Email, Identity, SideUse, SystemClock, TokenAmount, Weights,
    used_percent,
};
use chrono::{DateTime, NaiveDateTime, Utc};
use chrono_tz::Tz;
use diesel::prelude::*;
use serde_json::json;

pub(super) type Conn = AnyConnection;

/// The moment a transaction runs in, and the cycle it falls in.
pub(super) struct Ctx {
    pub now: NaiveDateTime,
    pub cycle_key: String,
    /// Wall-clock time for scheduling mail: delivery runs in real time even when
    /// the ledger's clock is set (in tests) to another day.
    pub wall: NaiveDateTime,
    /// The configured time zone: cycles, and days for request limits.
    pub tz: Tz,
}

impl Ctx {
    pub fn new(now: DateTime<Utc>, tz: Tz) -> Self {
        Self {
            now: now.naive_utc(),
            cycle_key: Cycle::containing(now, tz).key(),
            wall: SystemClock.now().naive_utc(),
            tz,
        }
    }

    pub fn instant(&self) -> DateTime<Utc> {
        self.now.and_utc()
    }
}

#[derive(Debug, Clone, Queryable)]
pub(crate) struct BalanceRow {
    pub cycle: String,
    pub allowance_left: i64,
    pub credits: i64,
    pub held: i64,
    pub used_this_cycle: i64,
    pub exhausted_at: Option<NaiveDateTime>,
    pub notice_due: Option<NaiveDateTime>,
    /// Request counters (`ledger::requests`).
    pub minute_start: Option<NaiveDateTime>,
    pub minute_requests: i32,
    pub request_day: Option<String>,
    pub day_requests: i32,
    pub request_cycle: Option<String>,
    pub cycle_requests: i32,
    /// Each side's use (`domain::sides`) and the overage (`domain::overage`),
    /// counted in `usage_cycle`.
    pub usage_cycle: Option<String>,
    pub input_used: i64,
    pub output_used: i64,
    pub overage_used: i64,
    pub overage_cost: i64,
}

/// What a cycle's use counts besides the balance: each side, and the overage.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct CycleUse {
    pub sides: SideUse,
    pub overage: i64,
    /// In micro-reais.
    pub overage_cost: i64,
}

impl CycleUse {
    /// The counts as the balance row keeps them, in `cycle`: none when they are of
    /// an earlier cycle (rolled by a release that does not keep them).
    pub fn stored(
        counted_in: Option<&str>,
        cycle: &str,
        (input, output, overage, overage_cost): (i64, i64, i64, i64),
    ) -> Self {
        if counted_in != Some(cycle) {
            return Self::default();
        }
        Self {
            sides: SideUse { input, output },
            overage,
            overage_cost,
        }
    }
}

impl BalanceRow {
    /// This cycle's use in the cycle `ctx` is in (`CycleUse::stored`).
    pub fn usage(&self, ctx: &Ctx) -> CycleUse {
        CycleUse::stored(
            self.usage_cycle.as_deref(),
            &ctx.cycle_key,
            (
                self.input_used,
                self.output_used,
                self.overage_used,
                self.overage_cost,
            ),
        )
    }
}

/// The balance row's columns, as `BalanceRow` reads them.
type BalanceColumns = (
    balances::cycle,
    balances::allowance_left,
    balances::credits,
    balances::held,
    balances::used_this_cycle,
    balances::exhausted_at,
    balances::notice_due,
    balances::minute_start,
    balances::minute_requests,
    balances::request_day,
    balances::day_requests,
    balances::request_cycle,
    balances::cycle_requests,
    balances::usage_cycle,
    balances::input_used,
    balances::output_used,
    balances::overage_used,
    balances::overage_cost,
);

const BALANCE_COLUMNS: BalanceColumns = (
    balances::cycle,
    balances::allowance_left,
    balances::credits,
    balances::held,
    balances::used_this_cycle,
    balances::exhausted_at,
    balances::notice_due,
    balances::minute_start,
    balances::minute_requests,
    balances::request_day,
    balances::day_requests,
    balances::request_cycle,
    balances::cycle_requests,
    balances::usage_cycle,
    balances::input_used,
    balances::output_used,
    balances::overage_used,
    balances::overage_cost,
);

pub(super) struct LedgerChange<'a> {
    pub kind: &'a str,
    pub delta_allowance: i64,
    pub delta_credits: i64,
    pub actor: String,
    pub note: Option<&'a str>,
    pub request_id: Option<&'a str>,
}

pub(super) fn grant_credits(
    c: &mut Conn,
    ctx: &Ctx,
    user: &UserRef,
    amount: TokenAmount,
    actor: &Actor,
    note: Option<&str>,
) -> Result<i64, super::LedgerError> {
    add_credits(c, ctx, user, amount, actor, note, Action::GrantCredits)
}

/// Adds credits (a grant, an approved request, a redeemed code): the balance, a
/// `topup` ledger entry, re-armed alerts and one audit line of `action`.
pub(super) fn add_credits(
    c: &mut Conn,
    ctx: &Ctx,
    user: &UserRef,
    amount: TokenAmount,
    actor: &Actor,
    note: Option<&str>,
    action: Action,
) -> Result<i64, super::LedgerError> {
    let user_id = super::views::find_user(c, user)?
        .ok_or_else(|| super::LedgerError::UserNotFound(describe(user)))?;
    let bal = lock_and_roll(c, ctx, user_id)?;
    let credits = bal.credits.saturating_add(amount.get());
    diesel::update(balances::table.filter(balances::user_id.eq(user_id)))
        .set((
            balances::credits.eq(credits),
            balances::updated_at.eq(ctx.now),
            // Raised: the next refusal, if any, judges exhaustion anew.
            balances::exhausted_at.eq(None::<NaiveDateTime>),
        ))
        .execute(c)?;
    append_ledger(
        c,
        ctx,
        user_id,
        &LedgerChange {
            kind: "topup",
            delta_allowance: 0,
            delta_credits: amount.get(),
            actor: actor.label(),
            note,
            request_id: None,
        },
        bal.allowance_left,
        credits,
    )?;
    alert_store::rearm(
        c,
        user_id,
        &ctx.cycle_key,
        used_percent(bal.used_this_cycle, bal.allowance_left + credits),
        ctx.now,
    )?;
    audit::record(
        c,
        actor,
        action,
        Some(user_id),
        &json!({"tokens": amount.get(), "note": note}),
        ctx.now,
    )?;
    Ok(user_id)
}

pub(super) fn create_user_by_email(
    c: &mut Conn,
    ctx: &Ctx,
    email: &Email,
    name: Option<&str>,
    actor: &Actor,
) -> Result<i64, super::LedgerError> {
    if let Some(id) = super::views::find_user(c, &UserRef::Email(email.clone()))? {
        return Ok(id);
    }
    let (id, _) = insert_user(
        c,
        ctx,
        &NewUser {
            // Admins create the install's own users; a distributor's come with scopes.
            distributor: DistributorId::DIRECT,
            external_id: None,
            email: Some(email.as_str()),
            name,
            role: None,
            plan_id: None,
        },
        &actor.label(),
    )?;
    audit::record(
        c,
        actor,
        Action::CreateUser,
        Some(id),
        &json!({"email": email.as_str(), "name": name}),
        ctx.now,
    )?;
    Ok(id)
}

/// Sets what a model costs: its weights, the most one image may cost with it
/// (`None` leaves the worst case tokengate knows for the name), and the most a call
/// may cost beyond its text (`None`: calls that need it are refused).
pub(super) fn set_weights(
    c: &mut Conn,
    model: &str,
    cost: &super::ModelCost,
    now: NaiveDateTime,
    actor: &Actor,
) -> Result<(), StoreError> {
    let w = cost.weights;
    let updated = diesel::update(model_weights::table.filter(model_weights::model.eq(model)))
        .set((
            model_weights::input_milli.eq(w.input_milli()),
            model_weights::output_milli.eq(w.output_milli()),
            model_weights::image_tokens.eq(cost.image_tokens),
            model_weights::call_extra.eq(cost.call_extra),
            model_weights::updated_at.eq(now),
        ))
        .execute(c)?;
    if updated == 0 {
        diesel::insert_into(model_weights::table)
            .values((
                model_weights::model.eq(model),
                model_weights::input_milli.eq(w.input_milli()),
                model_weights::output_milli.eq(w.output_milli()),
                model_weights::image_tokens.eq(cost.image_tokens),
                model_weights::call_extra.eq(cost.call_extra),
                model_weights::updated_at.eq(now),
            ))
            .execute(c)?;
    }
    audit::record(
        c,
        actor,
        Action::SetWeights,
        None,
        &json!({"model": model, "input_milli": w.input_milli(), "output_milli": w.output_milli(), "image_tokens": cost.image_tokens, "call_extra": cost.call_extra}),
        now,
    )?;
    Ok(())
}

pub(super) fn set_suspended(
    c: &mut Conn,
    user: &UserRef,
    suspended: bool,
    now: NaiveDateTime,
    actor: &Actor,
) -> Result<(), super::LedgerError> {
    let user_id = super::views::find_user(c, user)?
        .ok_or_else(|| super::LedgerError::UserNotFound(describe(user)))?;
    diesel::update(users::table.find(user_id))
        .set((
            users::suspended_at.eq(suspended.then_some(now)),
            users::updated_at.eq(now),
        ))
        .execute(c)?;
    let action = if suspended {
        Action::Suspend
    } else {
        Action::Reactivate
    };
    audit::record(c, actor, action, Some(user_id), &json!({}), now)?;
    Ok(())
}

/// The database's clock (UTC). Heartbeats are written and compared with it, so that
/// replicas whose own clocks disagree still agree on which of them are alive.
pub(super) fn db_now(c: &mut Conn) -> Result<NaiveDateTime, StoreError> {
    #[derive(QueryableByName)]
    struct Now {
        #[diesel(sql_type = diesel::sql_types::Timestamp)]
        now: NaiveDateTime,
    }
    let query = match c {
        AnyConnection::Sqlite(_) => "SELECT strftime('%Y-%m-%d %H:%M:%f', 'now') AS now",
        AnyConnection::Postgresql(_) => "SELECT (now() AT TIME ZONE 'UTC') AS now",
    };
    Ok(diesel::sql_query(query).get_result::<Now>(c)?.now)
}

/// What claiming an instance id found.
pub(super) enum Claim {
    /// The id is this run's now.
    Taken,
    /// Another run holds it and beat `heartbeat_at` (the database's clock), less
    /// than `dead_after` ago, from `owner`.
    Held {
        heartbeat_at: NaiveDateTime,
        owner: Option<String>,
    },
}

/// Claims instance `id` for this run. A row whose last heartbeat is older than
/// `dead_after`, or whose owner is this run's (the same host and spool file, whose
/// lock this run holds, so that run is dead), is taken over.
pub(super) fn claim_instance(
    c: &mut Conn,
    id: &str,
    run_id: &str,
    owner: &str,
    dead_after: chrono::Duration,
) -> Result<Claim, StoreError> {
    let now = db_now(c)?;
    let row: Option<(NaiveDateTime, Option<String>, Option<String>)> = instances::table
        .find(id)
        .select((instances::heartbeat_at, instances::run_id, instances::owner))
        .first(c)
        .optional()?;
    if let Some((heartbeat_at, their_run, their_owner)) = row {
        let alive = heartbeat_at > now - dead_after;
        let ours = their_run.as_deref() == Some(run_id) || their_owner.as_deref() == Some(owner);
        if alive && !ours {
            return Ok(Claim::Held {
                heartbeat_at,
                owner: their_owner,
            });
        }
    }
    diesel::delete(instances::table.find(id)).execute(c)?;
    diesel::insert_into(instances::table)
        .values((
            instances::id.eq(id),
            instances::started_at.eq(now),
            instances::heartbeat_at.eq(now),
            instances::run_id.eq(run_id),
            instances::owner.eq(owner),
        ))
        .execute(c)?;
    Ok(Claim::Taken)
}

/// Beats for this run of instance `id`, with the database's clock; false when the
/// row is no longer this run's (another process claimed the id).
pub(super) fn heartbeat(c: &mut Conn, id: &str, run_id: &str) -> Result<bool, StoreError> {
    let now = db_now(c)?;
    let updated = diesel::update(
        instances::table
            .filter(instances::id.eq(id))
            .filter(instances::run_id.eq(run_id)),
    )
    .set(instances::heartbeat_at.eq(now))
    .execute(c)?;
    Ok(updated == 1)
}

/// Whether the hold of `request_id` is still to be released by the sweeper: it has
/// outlived its expiry, or its instance has not beaten for `dead_after` by the
/// database's clock. Read in the releasing transaction, so that what changed since
/// the sweeper listed the holds counts.
pub(super) fn still_stale(
    c: &mut Conn,
    ctx: &Ctx,
    request_id: &str,
    dead_after: chrono::Duration,
) -> Result<bool, StoreError> {
    let hold: Option<(String, NaiveDateTime)> = holds::table
        .find(request_id)
        .select((holds::instance_id, holds::expires_at))
        .first(c)
        .optional()?;
    let Some((instance, expires_at)) = hold else {
        return Ok(false);
    };
    if expires_at < ctx.now {
        return Ok(true);
    }
    let now = db_now(c)?;
    let beat: Option<NaiveDateTime> = instances::table
        .find(&instance)
        .select(instances::heartbeat_at)
        .first(c)
        .optional()?;
    Ok(beat.is_none_or(|b| b <= now - dead_after))
}

/// Moves the expiry of this instance's holds `request_ids` (requests still running)
/// to `until`.
pub(super) fn extend_holds(
    c: &mut Conn,
    instance_id: &str,
    request_ids: &[String],
    until: NaiveDateTime,
) -> Result<usize, StoreError> {
    let mut extended = 0;
    for chunk in request_ids.chunks(500) {
        extended += diesel::update(
            holds::table
                .filter(holds::instance_id.eq(instance_id))
                .filter(holds::request_id.eq_any(chunk)),
        )
        .set(holds::expires_at.eq(until))
        .execute(c)?;
    }
    Ok(extended)
}

/// Finds the caller's user row, linking a pre-created user by email or creating one
/// (on their LibreChat role's plan, else the default plan). Email, name and role are
/// written only when LibreChat sent new ones: most requests only read the row, which
/// keeps the hot path's writes (and on PostgreSQL, dead row versions) down.
/// Concurrency is settled by the balance row's lock taken next, and a lost race to
/// create the user by a retry.
pub(super) fn upsert_user(
    c: &mut Conn,
    ctx: &Ctx,
    who: &Identity,
) -> Result<UserOnFile, StoreError> {
    let email = who.email.as_ref().map(Email::as_str);
    let name = who.name.as_ref().map(|n| n.as_str());
    let role = who.role.as_ref().map(|r| r.as_str());
    // The plan the user's stored role takes its users to comes in the same read.
    let lookup = users::table
        .left_join(plan_roles::table.on(users::librechat_role.eq(plan_roles::role.nullable())))
        .filter(users::distributor_id.eq(who.distributor.get()))
        .filter(users::external_id.eq(who.key.as_str()))
        .select((
            users::id,
            users::plan_id,
            users::suspended_at,
            users::email,
            users::name,
            users::librechat_role,
            users::plan_source,
            plan_roles::plan_id.nullable(),
        ));
    let known: Option<KnownUser> = on_backend!(c, |c| lookup.first(c).optional())?;
    if let Some((
        id,
        plan_id,
        suspended_at,
        stored_email,
        stored_name,
        stored_role,
        source,
        stored_role_plan,
    )) = known
    {
        let new_role = role.is_some() && role != stored_role.as_deref();
        let changed = (email.is_some() && email != stored_email.as_deref())
            || (name.is_some() && name != stored_name.as_deref())
            || new_role;
        if changed {
            diesel::update(users::table.find(id))
                .set(&UserRefresh {
                    email,
                    name,
                    librechat_role: role,
                    updated_at: ctx.now,
                })
                .execute(c)?;
        }
        let role_plan = match (new_role, role) {
            (true, Some(role)) => super::plans::role_plan(c, role)?,
            _ => stored_role_plan,
        };
        let source = PlanSource::stored(&source);
        let wants = super::plans::placement(c, who.distributor, plan_id, source, role_plan)?;
        return Ok(UserOnFile {
            id,
            plan_id,
            suspended: suspended_at.is_some(),
            wants,
        });
    }
    if let Some(email) = email {
        let precreated: Option<i64> = users::table
            .filter(users::distributor_id.eq(who.distributor.get()))
            .filter(users::external_id.is_null())
            .filter(users::email.eq(email))
            .order(users::id.asc())
            .select(users::id)
            .first(c)
            .optional()?;
        if let Some(id) = precreated {
            let linked: Option<(i64, Option<NaiveDateTime>, String)> =
                diesel::update(users::table.find(id).filter(users::external_id.is_null()))
                    .set((
                        users::external_id.eq(who.key.as_str()),
                        users::name.eq(name),
                        users::librechat_role.eq(role),
                        users::updated_at.eq(ctx.now),
                    ))
                    .returning((users::plan_id, users::suspended_at, users::plan_source))
                    .get_result(c)
                    .optional()?;
            if let Some((plan_id, suspended_at, source)) = linked {
                let role_plan = match role {
                    Some(role) => super::plans::role_plan(c, role)?,
                    None => None,
                };
                let source = PlanSource::stored(&source);
                let wants =
                    super::plans::placement(c, who.distributor, plan_id, source, role_plan)?;
                return Ok(UserOnFile {
                    id,
                    plan_id,
                    suspended: suspended_at.is_some(),
                    wants,
                });
            }
        }
    }
    let role_plan = match role {
        Some(role) => super::plans::role_plan(c, role)?,
        None => None,
    };
    let (id, plan_id) = insert_user(
        c,
        ctx,
        &NewUser {
            distributor: who.distributor,
            external_id: Some(who.key.as_str()),
            email,
            name,
            role,
            plan_id: role_plan,
        },
        &Actor::System.label(),
    )?;
    Ok(UserOnFile {
        id,
        plan_id,
        suspended: false,
        wants: None,
    })
}

/// The caller's user row, as the reservation needs it.
pub(super) struct UserOnFile {
    pub id: i64,
    pub plan_id: i64,
    pub suspended: bool,
    /// Where the user's LibreChat role puts them, when that is not where they are
    /// (`plans::placement`): theirs from this request on.
    pub wants: Option<(i64, PlanSource)>,
}

/// id, plan_id, suspended_at, email, name, librechat_role, plan_source, and the
/// plan of that role.
type KnownUser = (
    i64,
    i64,
    Option<NaiveDateTime>,
    Option<String>,
    Option<String>,
    Option<String>,
    String,
    Option<i64>,
);

/// A user to create.
pub(super) struct NewUser<'a> {
    pub distributor: DistributorId,
    pub external_id: Option<&'a str>,
    pub email: Option<&'a str>,
    pub name: Option<&'a str>,
    pub role: Option<&'a str>,
    /// `None`: the default plan (the distributor's, else the install's).
    pub plan_id: Option<i64>,
}

#[derive(AsChangeset)]
#[diesel(table_name = users)]
struct UserRefresh<'a> {
    email: Option<&'a str>,
    name: Option<&'a str>,
    librechat_role: Option<&'a str>,
    updated_at: NaiveDateTime,
}

/// Creates a user on their plan (else the default plan) with a full first allowance.
fn insert_user(
    c: &mut Conn,
    ctx: &Ctx,
    new: &NewUser<'_>,
    actor: &str,
) -> Result<(i64, i64), StoreError> {
    // A plan of another distributor is never given (a role's plan is looked up
    // among all): the install's plans are offered to everyone.
    let offered = [DistributorId::DIRECT.get(), new.distributor.get()];
    let chosen = match new.plan_id {
        Some(id) => plans::table
            .find(id)
            .filter(plans::distributor_id.eq_any(offered))
            .select((plans::id, plans::monthly_allowance))
            .first(c)
            .optional()?,
        None => None,
    };
    let source = if chosen.is_some() {
        PlanSource::Role
    } else {
        PlanSource::Default
    };
    let (plan_id, allowance): (i64, i64) = match chosen {
        Some(plan) => plan,
        // The distributor's own default first, then the install's.
        None => plans::table
            .filter(plans::distributor_id.eq_any(offered))
            .order((
                plans::is_default.desc(),
                plans::distributor_id.eq(new.distributor.get()).desc(),
                plans::id.asc(),
            ))
            .select((plans::id, plans::monthly_allowance))
            .first(c)?,
    };
    let user_id: i64 = diesel::insert_into(users::table)
        .values((
            users::distributor_id.eq(new.distributor.get()),
            users::external_id.eq(new.external_id),
            users::email.eq(new.email),
            users::name.eq(new.name),
            users::librechat_role.eq(new.role),
            users::plan_id.eq(plan_id),
            users::plan_source.eq(source.as_str()),
            users::created_at.eq(ctx.now),
            users::updated_at.eq(ctx.now),
        ))
        .returning(users::id)
        .get_result(c)?;
    diesel::insert_into(balances::table)
        .values((
            balances::user_id.eq(user_id),
            balances::cycle.eq(&ctx.cycle_key),
            balances::allowance_left.eq(allowance),
            balances::credits.eq(0_i64),
            balances::held.eq(0_i64),
            balances::used_this_cycle.eq(0_i64),
            balances::updated_at.eq(ctx.now),
        ))
        .execute(c)?;
    append_ledger(
        c,
        ctx,
        user_id,
        &LedgerChange {
            kind: "cycle_grant",
            delta_allowance: allowance,
            delta_credits: 0,
            actor: actor.to_owned(),
            note: None,
            request_id: None,
        },
        allowance,
        0,
    )?;
    Ok((user_id, plan_id))
}

/// Locks the user's balance row and starts a new cycle if the calendar moved on.
pub(super) fn lock_and_roll(
    c: &mut Conn,
    ctx: &Ctx,
    user_id: i64,
) -> Result<BalanceRow, StoreError> {
    let bal: BalanceRow = match c {
        // SQLite's write transactions begin IMMEDIATE (`db::engine`): the
        // whole database is already locked against other writers, so reading the row
        // is enough, one write fewer per request. (Were a caller's transaction
        // deferred, a writer in between would make its first write fail with
        // SQLITE_BUSY, never let it write over a newer balance.)
        AnyConnection::Sqlite(c) => balances::table
            .filter(balances::user_id.eq(user_id))
            .select(BALANCE_COLUMNS)
            .first(c)?,
        // PostgreSQL locks rows: a write blocks the row's other writers until commit.
        AnyConnection::Postgresql(c) => FixedUpdate(
            diesel::update(balances::table.filter(balances::user_id.eq(user_id)))
                .set(balances::updated_at.eq(ctx.now))
                .returning(BALANCE_COLUMNS),
        )
        .get_result(c)?,
    };
    if bal.cycle == ctx.cycle_key {
        return Ok(bal);
    }
    // Only forward: a clock that steps back must never grant a cycle twice.
    let (Some(stored), Some(current)) = (Cycle::parse(&bal.cycle), Cycle::parse(&ctx.cycle_key))
    else {
        return Ok(bal);
    };
    if stored > current {
        return Ok(bal);
    }
    let allowance: i64 = users::table
        .inner_join(plans::table)
        .filter(users::id.eq(user_id))
        .select(plans::monthly_allowance)
        .first(c)?;
    if bal.allowance_left != 0 {
        append_ledger(
            c,
            ctx,
            user_id,
            &LedgerChange {
                kind: "expiry",
                delta_allowance: -bal.allowance_left,
                delta_credits: 0,
                actor: Actor::System.label(),
                note: Some(&bal.cycle),
                request_id: None,
            },
            0,
            bal.credits,
        )?;
    }
    append_ledger(
        c,
        ctx,
        user_id,
        &LedgerChange {
            kind: "cycle_grant",
            delta_allowance: allowance,
            delta_credits: 0,
            actor: Actor::System.label(),
            note: None,
            request_id: None,
        },
        allowance,
        bal.credits,
    )?;
    diesel::update(balances::table.filter(balances::user_id.eq(user_id)))
        .set((
            balances::cycle.eq(&ctx.cycle_key),
            balances::allowance_left.eq(allowance),
            balances::used_this_cycle.eq(0_i64),
            balances::exhausted_at.eq(None::<NaiveDateTime>),
            balances::notice_due.eq(None::<NaiveDateTime>),
        ))
        .execute(c)?;
    Ok(BalanceRow {
        cycle: ctx.cycle_key.clone(),
        allowance_left: allowance,
        used_this_cycle: 0,
        exhausted_at: None,
        notice_due: None,
        ..bal
    })
}

pub(super) fn append_ledger(
    c: &mut Conn,
    ctx: &Ctx,
    user_id: i64,
    change: &LedgerChange<'_>,
    allowance_after: i64,
    credits_after: i64,
) -> Result<(), StoreError> {
    let entry = diesel::insert_into(ledger::table).values((
        ledger::user_id.eq(user_id),
        ledger::kind.eq(change.kind),
        ledger::delta_allowance.eq(change.delta_allowance),
        ledger::delta_credits.eq(change.delta_credits),
        ledger::allowance_after.eq(allowance_after),
        ledger::credits_after.eq(credits_after),
        ledger::cycle.eq(&ctx.cycle_key),
        ledger::actor.eq(&change.actor),
        ledger::note.eq(change.note),
        ledger::request_id.eq(change.request_id),
        ledger::created_at.eq(ctx.now),
    ));
    on_backend!(c, |c| entry.execute(c))?;
    Ok(())
}

/// What a model costs: its weights (`None`: no admin has set them), the most one
/// image may cost with it (the
/// admin's figure, else the worst case its provider documents, `domain::media`), and
/// the most a call may cost beyond its text, when the admin has said
/// (`call_extra`).
pub(super) struct ModelCosts {
    pub weights: Option<Weights>,
    pub image_tokens: i64,
    pub call_extra: Option<i64>,
}

pub(super) fn model_costs(c: &mut Conn, model: &str) -> Result<ModelCosts, StoreError> {
    let lookup = model_weights::table.find(model).select((
        model_weights::input_milli,
        model_weights::output_milli,
        model_weights::image_tokens,
        model_weights::call_extra,
    ));
    let row: Option<(i64, i64, Option<i64>, Option<i64>)> =
        on_backend!(c, |c| lookup.first(c).optional())?;
    Ok(ModelCosts {
        weights: row.and_then(|(i, o, _, _)| Weights::from_milli(i, o)),
        image_tokens: row
            .and_then(|(_, _, image, _)| image)
            .unwrap_or_else(|| crate::domain::media::image_worst_case(model)),
        call_extra: row.and_then(|(_, _, _, extra)| extra),
    })
}

pub(super) fn millis(d: std::time::Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

fn describe(user: &UserRef) -> String {
    match user {
        UserRef::Id(id) => format!("#{id}"),
        UserRef::External(id) => id.clone(),
        UserRef::Email(e) => e.to_string(),
    }
}
