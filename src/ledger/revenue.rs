//! Revenue from plan prices, per cycle: the monthly price of the plan of each
//! paying user (not suspended, not a service's account).
//!
//! The current cycle's is read live. A past cycle's is what was recorded when it
//! closed: the first instance to see a new cycle (`turn`) closes the cycles before
//! it, writing each paying user's plan and price to `cycle_plans`, so later plan
//! changes never rewrite a month already sold. A cycle that no instance of this
//! release saw open has no record, and reports say so.

use super::reports::{GroupBy, Period};
use super::tx::Ctx;
use crate::db::schema::{cycle_closings, cycle_plans, plans, users};
use crate::db::statement::on_backend;
use crate::db::{AnyConnection, StoreError};
use crate::domain::{Cycle, Scope};
use chrono::Datelike;
use diesel::dsl::sql;
use diesel::expression::SqlLiteral;
use diesel::prelude::*;
use diesel::sql_types::{BigInt, Bool, Text};
use std::collections::BTreeMap;

type Conn = AnyConnection;

/// Who pays for their plan, as SQL on `users`: one definition for the live revenue,
/// the plans page and the record of a closed cycle.
const PAYING: &str = "users.suspended_at IS NULL \
     AND (users.external_id IS NULL OR users.external_id NOT LIKE 'service:%')";

pub(super) fn paying() -> SqlLiteral<Bool> {
    sql(PAYING)
}

/// Opens the current cycle, once, and closes every earlier one still open,
/// recording the plans of the users it had, as they stand (plan changes and
/// suspensions are not dated: a cycle closed late, after an outage over the turn
/// of the month, records them as they are then). Returns the cycles it closed.
/// Instances that turn at once close each cycle once: only the one whose update
/// marks it closed records it, and they take the cycles in the same order.
pub(super) fn turn(c: &mut Conn, ctx: &Ctx) -> Result<Vec<String>, StoreError> {
    // A replica whose clock is behind a cycle already closed leaves it all alone:
    // it would open, and a later turn close, a cycle the others have left. (One
    // whose clock is ahead closes the current cycle early; it cannot stop the
    // others from opening and closing the cycles after.)
    let last_closed: Option<String> = cycle_closings::table
        .filter(cycle_closings::closed_at.is_not_null())
        .select(diesel::dsl::max(cycle_closings::cycle))
        .first(c)?;
    if last_closed.is_some_and(|l| l >= ctx.cycle_key) {
        return Ok(Vec::new());
    }
    let open_current = diesel::insert_into(cycle_closings::table)
        .values((
            cycle_closings::cycle.eq(&ctx.cycle_key),
            cycle_closings::opened_at.eq(ctx.now),
        ))
        .on_conflict_do_nothing();
    on_backend!(c, |c| open_current.execute(c))?;
    let open: Vec<String> = cycle_closings::table
        .filter(cycle_closings::cycle.lt(&ctx.cycle_key))
        .filter(cycle_closings::closed_at.is_null())
        .order(cycle_closings::cycle.asc())
        .select(cycle_closings::cycle)
        .load(c)?;
    let mut closed = Vec::new();
    for cycle in open {
        let Some(ends) = Cycle::parse(&cycle).map(|k| k.ends_at(ctx.tz).naive_utc()) else {
            continue;
        };
        let won = diesel::update(
            cycle_closings::table
                .filter(cycle_closings::cycle.eq(&cycle))
                .filter(cycle_closings::closed_at.is_null()),
        )
        .set(cycle_closings::closed_at.eq(ctx.now))
        .execute(c)?;
        if won == 0 {
            continue;
        }
        // Users who came after the cycle ended were not in it.
        diesel::insert_into(cycle_plans::table)
            .values(
                users::table
                    .inner_join(plans::table)
                    .filter(paying())
                    .filter(users::created_at.lt(ends))
                    .select((
                        cycle.clone().into_sql::<Text>(),
                        users::id,
                        users::plan_id,
                        users::distributor_id,
                        plans::monthly_price,
                    )),
            )
            .into_columns((
                cycle_plans::cycle,
                cycle_plans::user_id,
                cycle_plans::plan_id,
                cycle_plans::distributor_id,
                cycle_plans::monthly_price,
            ))
            .execute(c)?;
        closed.push(cycle);
    }
    Ok(closed)
}

/// The cycles a period touches (up to the current one), and where each one's
/// revenue comes from.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RevenueCycles {
    /// The period starts or ends inside a month: each month it touches still
    /// counts whole (plan prices are monthly).
    pub partial: bool,
    /// The current cycle, when the period touches it: read live, so far.
    pub live: Option<Cycle>,
    /// Past cycles recorded when they closed.
    pub recorded: Vec<Cycle>,
    /// Past cycles without a record (before this release ran, or never opened).
    pub unrecorded: Vec<Cycle>,
}

/// Where the revenue of the cycles `period` touches comes from.
pub(super) fn cycles(
    c: &mut Conn,
    period: Period,
    current: Cycle,
) -> Result<RevenueCycles, StoreError> {
    let mut touched = Vec::new();
    let (mut cycle, last) = (Cycle::of_date(period.from), Cycle::of_date(period.to));
    while cycle <= last {
        touched.push(cycle);
        cycle = cycle.next();
    }
    let keys: Vec<String> = touched.iter().map(Cycle::key).collect();
    let closed: Vec<String> = cycle_closings::table
        .filter(cycle_closings::cycle.eq_any(&keys))
        .filter(cycle_closings::closed_at.is_not_null())
        .select(cycle_closings::cycle)
        .load(c)?;
    let whole_months =
        period.from.day() == 1 && period.to.succ_opt().is_none_or(|next| next.day() == 1);
    let mut out = RevenueCycles {
        partial: !whole_months,
        ..RevenueCycles::default()
    };
    for cycle in touched {
        if cycle > current {
            break;
        } else if cycle == current {
            out.live = Some(cycle);
        } else if closed.contains(&cycle.key()) {
            out.recorded.push(cycle);
        } else {
            out.unrecorded.push(cycle);
        }
    }
    Ok(out)
}

#[derive(QueryableByName)]
struct Revenue {
    #[diesel(sql_type = Text)]
    key: String,
    #[diesel(sql_type = BigInt)]
    centavos: i64,
}

/// The revenue (centavos) of the cycles `period` touches, per plan, distributor or
/// user (`None` for the other groupings, which plan prices do not divide into),
/// within `scope` (of one user, with `user`).
pub(super) fn by_key(
    c: &mut Conn,
    scope: Scope,
    period: Period,
    group: GroupBy,
    user: Option<i64>,
    current: Cycle,
) -> Result<Option<BTreeMap<String, i64>>, StoreError> {
    let column = match group {
        GroupBy::Plan => "plan_id",
        GroupBy::Distributor => "distributor_id",
        GroupBy::User => "user_id",
        GroupBy::Model | GroupBy::Day | GroupBy::Conversation => return Ok(None),
    };
    let cycles = cycles(c, period, current)?;
    let (lo, hi) = scope.bounds();
    // Only ids and cycle keys tokengate formats itself are written into the SQL.
    let mut queries = Vec::new();
    if !cycles.recorded.is_empty() {
        let keys: Vec<String> = cycles.recorded.iter().map(|c| format!("'{c}'")).collect();
        let of_user = user.map_or(String::new(), |id| format!(" AND user_id = {id}"));
        queries.push(format!(
            "SELECT CAST({column} AS TEXT) AS key, \
             CAST(COALESCE(SUM(monthly_price), 0) AS BIGINT) AS centavos \
             FROM cycle_plans WHERE cycle IN ({}) \
             AND distributor_id BETWEEN {lo} AND {hi}{of_user} GROUP BY 1",
            keys.join(", ")
        ));
    }
    if cycles.live.is_some() {
        let column = if column == "user_id" { "id" } else { column };
        let of_user = user.map_or(String::new(), |id| format!(" AND users.id = {id}"));
        queries.push(format!(
            "SELECT CAST(users.{column} AS TEXT) AS key, \
             CAST(COALESCE(SUM(plans.monthly_price), 0) AS BIGINT) AS centavos \
             FROM users JOIN plans ON plans.id = users.plan_id WHERE {PAYING} \
             AND users.distributor_id BETWEEN {lo} AND {hi}{of_user} GROUP BY 1"
        ));
    }
    let mut sums = BTreeMap::new();
    for query in queries {
        let rows: Vec<Revenue> = match c {
            AnyConnection::Postgresql(pg) => diesel::sql_query(query).load(pg)?,
            AnyConnection::Sqlite(lite) => diesel::sql_query(query).load(lite)?,
        };
        for row in rows {
            *sums.entry(row.key).or_insert(0) += row.centavos;
        }
    }
    Ok(Some(sums))
}
