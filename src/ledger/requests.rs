//! Request counters: each user's requests in the current minute, local day and cycle,
//! kept on the balance row and counted in the reservation's own guarded write, so a
//! limit holds exactly at any concurrency and across replicas (docs/behaviour.md,
//! "Request limits").

use super::LimitReached;
use super::tx::{BalanceRow, Conn, Ctx};
use crate::alerts::{DeliveryState, Role};
use crate::db::StoreError;
use crate::db::schema::{balances, limit_hits, outbox, users};
use crate::domain::requests::Windows;
use crate::domain::{Cycle, Period, RequestCounts, RequestLimit};
use chrono::{DateTime, NaiveDateTime, Utc};
use diesel::prelude::*;

/// The windows this transaction counts in: its moment's, or later ones another
/// writer (whose clock is ahead) has already started.
pub(super) fn windows(bal: &BalanceRow, ctx: &Ctx) -> Windows {
    Windows::at(ctx.instant(), ctx.tz).at_least(bal.minute_start, bal.request_day.as_deref())
}

/// The user's requests in `windows` and in the balance's cycle: a count kept for an
/// earlier window is zero now.
pub(super) fn counts(bal: &BalanceRow, windows: &Windows) -> RequestCounts {
    let n = |count: i32, current: bool| {
        if current {
            u32::try_from(count).unwrap_or(0)
        } else {
            0
        }
    };
    RequestCounts {
        minute: n(
            bal.minute_requests,
            bal.minute_start == Some(windows.minute_start),
        ),
        day: n(
            bal.day_requests,
            bal.request_day.as_deref() == Some(windows.day_key()),
        ),
        month: n(
            bal.cycle_requests,
            bal.request_cycle.as_deref() == Some(bal.cycle.as_str()),
        ),
    }
}

/// The counters after one more request, as the guarded write sets them.
pub(super) struct Counted<'a> {
    pub minute_start: NaiveDateTime,
    pub minute: i32,
    pub day: &'a str,
    pub day_count: i32,
    pub cycle: &'a str,
    pub cycle_count: i32,
}

pub(super) fn one_more<'a>(
    counts: &RequestCounts,
    windows: &'a Windows,
    bal: &'a BalanceRow,
) -> Counted<'a> {
    let next = |n: u32| i32::try_from(n.saturating_add(1)).unwrap_or(i32::MAX);
    Counted {
        minute_start: windows.minute_start,
        minute: next(counts.minute),
        day: windows.day_key(),
        day_count: next(counts.day),
        cycle: &bal.cycle,
        cycle_count: next(counts.month),
    }
}

/// Whether a settlement is of a request the provider did not serve: it failed
/// there, never reached it, or was never sent (nothing used, whatever the weights).
pub(super) fn not_served(s: &super::Settlement) -> bool {
    s.outcome != super::Outcome::Completed && s.prompt_tokens == 0 && s.completion_tokens == 0
}

/// A refusal for a request limit. The first refusal in a day's or a cycle's window
/// records it and mails the user (once per window: the row is unique); a minute's is
/// only answered. Returns the outcome's facts and how many messages were queued.
pub(super) fn refuse(
    c: &mut Conn,
    ctx: &Ctx,
    user_id: i64,
    windows: &Windows,
    (period, limit): (Period, RequestLimit),
) -> Result<(LimitReached, usize), StoreError> {
    let resets_at = match period {
        Period::Minute => windows.next_minute(),
        Period::Day => windows.next_day(ctx.tz),
        Period::Month => Cycle::containing(ctx.instant(), ctx.tz).ends_at(ctx.tz),
    };
    let reached = LimitReached {
        period,
        limit,
        resets_at,
    };
    let key = match period {
        Period::Minute => return Ok((reached, 0)),
        Period::Day => windows.day_key(),
        Period::Month => ctx.cycle_key.as_str(),
    };
    let queued = record_hit(c, ctx, user_id, &reached, key)?;
    Ok((reached, queued))
}

/// Writes the window's one limit hit, and its mail to the user, unless the window
/// has one already. The balance row is locked: of concurrent refusals, one writes.
fn record_hit(
    c: &mut Conn,
    ctx: &Ctx,
    user_id: i64,
    reached: &LimitReached,
    key: &str,
) -> Result<usize, StoreError> {
    let period = reached.period.as_str();
    let known: i64 = limit_hits::table
        .filter(limit_hits::user_id.eq(user_id))
        .filter(limit_hits::period.eq(period))
        .filter(limit_hits::period_key.eq(key))
        .count()
        .get_result(c)?;
    if known > 0 {
        return Ok(0);
    }
    let email: Option<String> = users::table.find(user_id).select(users::email).first(c)?;
    let hit_id: i64 = diesel::insert_into(limit_hits::table)
        .values((
            limit_hits::user_id.eq(user_id),
            limit_hits::period.eq(period),
            limit_hits::period_key.eq(key),
            limit_hits::request_limit.eq(i32::try_from(reached.limit.get()).unwrap_or(i32::MAX)),
            limit_hits::resets_at.eq(reached.resets_at.naive_utc()),
            limit_hits::recipient.eq(&email),
            limit_hits::created_at.eq(ctx.now),
        ))
        .returning(limit_hits::id)
        .get_result(c)?;
    let Some(email) = email else {
        return Ok(0);
    };
    diesel::insert_into(outbox::table)
        .values((
            outbox::limit_hit_id.eq(hit_id),
            outbox::kind.eq("request_limit"),
            outbox::role.eq(Role::User.as_str()),
            outbox::recipient.eq(email),
            outbox::state.eq(DeliveryState::Pending.as_str()),
            outbox::attempts.eq(0),
            outbox::next_attempt_at.eq(ctx.wall),
            outbox::created_at.eq(ctx.wall),
        ))
        .execute(c)?;
    Ok(1)
}

/// Takes back the count of a request the provider did not serve (`not_served`): a
/// limit counts requests served. Only the windows it was counted in, when they are
/// still the row's, lose one; the row was read, locked, by this transaction.
pub(super) fn uncount(
    c: &mut Conn,
    ctx: &Ctx,
    user_id: i64,
    bal: &BalanceRow,
    counted_at: DateTime<Utc>,
) -> Result<(), StoreError> {
    let then = Windows::at(counted_at, ctx.tz);
    let less = |n: i32, same: bool| if same { (n - 1).max(0) } else { n };
    let cycle = Cycle::containing(counted_at, ctx.tz).key();
    diesel::update(balances::table.filter(balances::user_id.eq(user_id)))
        .set((
            balances::minute_requests.eq(less(
                bal.minute_requests,
                bal.minute_start == Some(then.minute_start),
            )),
            balances::day_requests.eq(less(
                bal.day_requests,
                bal.request_day.as_deref() == Some(then.day_key()),
            )),
            balances::cycle_requests.eq(less(
                bal.cycle_requests,
                bal.request_cycle.as_deref() == Some(cycle.as_str()),
            )),
        ))
        .execute(c)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ledger::{Outcome, Settlement};

    #[test]
    fn only_a_request_that_used_nothing_is_taken_back() {
        let never_sent = Settlement::released("r".into(), Outcome::ClientDisconnected, 499);
        assert!(not_served(&never_sent));
        assert!(not_served(&Settlement::released(
            "r".into(),
            Outcome::UpstreamError,
            500
        )));
        // Stopped by the user after the prompt went upstream: served, even on a
        // model that costs nothing.
        let stopped = Settlement {
            prompt_tokens: 12,
            ..Settlement::released("r".into(), Outcome::ClientDisconnected, 499)
        };
        assert!(!not_served(&stopped));
        assert!(!not_served(&Settlement::released(
            "r".into(),
            Outcome::Completed,
            200
        )));
    }
}
