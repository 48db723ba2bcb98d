//! The settlement: what a request used is charged and its hold released, in one
//! transaction with any alert the usage crossed (docs/behaviour.md).

use super::requests;
use super::tx::{BalanceRow, Conn, Ctx, LedgerChange, append_ledger, lock_and_roll, millis};
use super::{Actor, NoticeBase, Outcome, SettleResult, Settlement};
use crate::alerts::{AlertPolicy, store as alert_store};
use crate::db::schema::{balances, holds, usage_records};
use crate::db::statement::{FixedUpdate, on_backend};
use crate::db::{AnyConnection, StoreError, flag};
use crate::domain::used_percent;
use chrono::NaiveDateTime;
use diesel::prelude::*;

/// Returns the result and how many alert messages were queued.
pub(super) fn settle(
    c: &mut Conn,
    ctx: &Ctx,
    s: &Settlement,
    policy: &AlertPolicy,
) -> Result<(SettleResult, usize), StoreError> {
    // Deleting the hold is the idempotency key: a second settlement finds nothing.
    let released = diesel::delete(holds::table.filter(holds::request_id.eq(&s.request_id)))
        .returning((
            holds::user_id,
            holds::amount,
            holds::model,
            holds::endpoint,
            holds::stream,
            holds::created_at,
            holds::counted,
        ));
    let hold: Option<(i64, i64, String, String, i32, NaiveDateTime, i32)> =
        on_backend!(c, |c| released.get_result(c).optional())?;
    let Some((user_id, held_amount, model, endpoint, stream, reserved_at, counted)) = hold else {
        return settle_late(c, ctx, s, policy);
    };
    let debited = debit(c, ctx, user_id, held_amount, s.charge, s, policy)?;
    if counted == 1 && requests::not_served(s) {
        // The request limits count requests served.
        requests::uncount(c, ctx, user_id, &debited.balance, reserved_at.and_utc())?;
    }
    let record = diesel::insert_into(usage_records::table).values((
        usage_records::request_id.eq(&s.request_id),
        usage_records::user_id.eq(user_id),
        usage_records::model.eq(&model),
        usage_records::endpoint.eq(&endpoint),
        usage_records::stream.eq(stream),
        usage_records::prompt_tokens.eq(s.prompt_tokens),
        usage_records::completion_tokens.eq(s.completion_tokens),
        usage_records::charged.eq(debited.charge),
        usage_records::estimated.eq(flag(s.estimated)),
        usage_records::outcome.eq(s.outcome.as_str()),
        usage_records::status.eq(i32::from(s.status)),
        usage_records::latency_ms.eq(millis(s.latency)),
        usage_records::ttfb_ms.eq(s.ttfb.map(millis)),
        usage_records::created_at.eq(ctx.now),
    ));
    on_backend!(c, |c| record.execute(c))?;
    Ok((
        SettleResult::Settled {
            charged: debited.charge,
            notice: debited.notice,
        },
        debited.queued,
    ))
}

/// A settlement whose hold is gone. Either it was written before (a retry, a replay
/// from the spool: nothing to do), or its hold was released as abandoned (its
/// instance looked dead, or the hold outlived `TOKENGATE_HOLD_MAX_AGE_SECS`),
/// charged its prompt, while the request in fact ended: the difference is charged
/// now (or given back, as credits, when the request ended costing less), and its
/// usage record says what really happened. Credits may dip below zero for it, as a
/// debt.
fn settle_late(
    c: &mut Conn,
    ctx: &Ctx,
    s: &Settlement,
    policy: &AlertPolicy,
) -> Result<(SettleResult, usize), StoreError> {
    if s.outcome == Outcome::Abandoned {
        return Ok((SettleResult::AlreadySettled, 0));
    }
    // The record's move from `abandoned` is the idempotency key here: of two late
    // settlements of one request at once, the second finds nothing to move (on
    // PostgreSQL it waits for the first one's row lock, then finds it moved).
    let abandoned = usage_records::table
        .filter(usage_records::request_id.eq(&s.request_id))
        .filter(usage_records::outcome.eq(Outcome::Abandoned.as_str()))
        .select((
            usage_records::id,
            usage_records::user_id,
            usage_records::charged,
        ));
    let found: Option<(i64, i64, i64)> = match c {
        AnyConnection::Postgresql(pg) => abandoned.for_update().first(pg).optional()?,
        AnyConnection::Sqlite(lite) => abandoned.first(lite).optional()?,
    };
    let Some((record_id, user_id, charged_before)) = found else {
        return Ok((SettleResult::AlreadySettled, 0));
    };
    diesel::update(
        usage_records::table
            .filter(usage_records::id.eq(record_id))
            .filter(usage_records::outcome.eq(Outcome::Abandoned.as_str())),
    )
    .set((
        usage_records::prompt_tokens.eq(s.prompt_tokens),
        usage_records::completion_tokens.eq(s.completion_tokens),
        usage_records::charged.eq(s.charge.max(0)),
        usage_records::estimated.eq(flag(s.estimated)),
        usage_records::outcome.eq(s.outcome.as_str()),
        usage_records::status.eq(i32::from(s.status)),
        usage_records::latency_ms.eq(millis(s.latency)),
        usage_records::ttfb_ms.eq(s.ttfb.map(millis)),
    ))
    .execute(c)?;
    let difference = s.charge.max(0) - charged_before;
    let (charged, queued) = if difference >= 0 {
        let debited = debit(c, ctx, user_id, 0, difference, s, policy)?;
        (debited.charge, debited.queued)
    } else {
        give_back(c, ctx, user_id, -difference, &s.request_id)?;
        (difference, 0)
    };
    Ok((SettleResult::SettledLate { charged }, queued))
}

/// What `debit` did.
struct Debited {
    charge: i64,
    /// The balance row as the debit read it, locked (its request counts unchanged).
    balance: BalanceRow,
    queued: usize,
    /// The in-chat notice this answer ends with: its usage crossed the threshold
    /// and it can carry the line itself.
    notice: Option<NoticeBase>,
}

/// Charges `charge` to the user's balance and releases `held` of it: allowance
/// first, then credits, a ledger entry, and any alert the usage crossed. Usage beyond
/// the reservation (a prompt estimate below the real count) is still charged: credits
/// may dip below zero, as a debt.
fn debit(
    c: &mut Conn,
    ctx: &Ctx,
    user_id: i64,
    held: i64,
    charge: i64,
    s: &Settlement,
    policy: &AlertPolicy,
) -> Result<Debited, StoreError> {
    let bal = lock_and_roll(c, ctx, user_id)?;
    let charge = charge.max(0);
    let from_allowance = charge.min(bal.allowance_left.max(0));
    let from_credits = charge - from_allowance;
    let allowance_left = bal.allowance_left - from_allowance;
    let credits = bal.credits - from_credits;
    let debit = FixedUpdate(
        diesel::update(balances::table.filter(balances::user_id.eq(user_id))).set((
            balances::allowance_left.eq(allowance_left),
            balances::credits.eq(credits),
            balances::held.eq(balances::held - held),
            balances::used_this_cycle.eq(balances::used_this_cycle + charge),
            balances::updated_at.eq(ctx.now),
        )),
    );
    on_backend!(c, |c| debit.execute(c))?;
    if charge == 0 {
        return Ok(Debited {
            charge,
            balance: bal,
            queued: 0,
            notice: None,
        });
    }
    append_ledger(
        c,
        ctx,
        user_id,
        &LedgerChange {
            kind: "usage",
            delta_allowance: -from_allowance,
            delta_credits: -from_credits,
            actor: Actor::System.label(),
            note: None,
            request_id: Some(&s.request_id),
        },
        allowance_left,
        credits,
    )?;
    let used = bal.used_this_cycle + charge;
    let crossed = alert_store::record_crossings(
        c,
        policy,
        &alert_store::Snapshot {
            user_id,
            cycle: &ctx.cycle_key,
            used_percent: used_percent(used, allowance_left + credits),
            used_this_cycle: used,
            allowance_left,
            credits,
            request_id: Some(&s.request_id),
        },
        ctx.now,
        ctx.wall,
    )?;
    // The answer that crossed the threshold says so itself when it can (a streamed
    // text answer still open): the notice is claimed back at once.
    let notice = (crossed.notice_armed && s.can_carry_notice).then(|| NoticeBase {
        used: bal.used_this_cycle,
        total: bal.used_this_cycle + bal.allowance_left + bal.credits,
    });
    if notice.is_some() {
        diesel::update(balances::table.filter(balances::user_id.eq(user_id)))
            .set(balances::notice_due.eq(None::<NaiveDateTime>))
            .execute(c)?;
    }
    Ok(Debited {
        charge,
        balance: bal,
        queued: crossed.queued,
        notice,
    })
}

/// Gives `amount` back as credits: an abandoned hold charged its prompt, and the
/// request's own settlement, arriving later, says it cost less (it failed upstream).
fn give_back(
    c: &mut Conn,
    ctx: &Ctx,
    user_id: i64,
    amount: i64,
    request_id: &str,
) -> Result<(), StoreError> {
    let bal = lock_and_roll(c, ctx, user_id)?;
    let credits = bal.credits.saturating_add(amount);
    diesel::update(balances::table.filter(balances::user_id.eq(user_id)))
        .set((
            balances::credits.eq(credits),
            balances::used_this_cycle.eq((bal.used_this_cycle - amount).max(0)),
            balances::updated_at.eq(ctx.now),
        ))
        .execute(c)?;
    append_ledger(
        c,
        ctx,
        user_id,
        &LedgerChange {
            kind: "adjustment",
            delta_allowance: 0,
            delta_credits: amount,
            actor: Actor::System.label(),
            note: Some("settled after release"),
            request_id: Some(request_id),
        },
        bal.allowance_left,
        credits,
    )?;
    Ok(())
}
