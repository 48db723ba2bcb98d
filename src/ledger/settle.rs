//! The settlement: what a request used is charged and its hold released, in one
//! transaction with any alert the usage crossed (docs/behaviour.md).

use super::distributors;
use super::requests;
use super::tx::{BalanceRow, Conn, Ctx, LedgerChange, append_ledger, lock_and_roll, millis};
use super::{Actor, NoticeBase, Outcome, SettleResult, Settlement};
use crate::alerts::{AlertPolicy, store as alert_store};
use crate::db::schema::{balances, holds, plans, usage_records, users};
use crate::db::statement::{FixedUpdate, on_backend};
use crate::db::{AnyConnection, StoreError, flag};
use crate::domain::{Overage, Payment, SideAllowances, SideUse, used_percent};
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
            (holds::credits_held, holds::plan_id, holds::distributor_id),
        ));
    type Hold = (
        i64,
        i64,
        String,
        String,
        i32,
        NaiveDateTime,
        i32,
        (Option<i64>, Option<i64>, Option<i64>),
    );
    let hold: Option<Hold> = on_backend!(c, |c| released.get_result(c).optional())?;
    let Some((
        user_id,
        held_amount,
        model,
        endpoint,
        stream,
        reserved_at,
        counted,
        (credits_held, plan_id, pool),
    )) = hold
    else {
        return settle_late(c, ctx, s, policy);
    };
    let pooled = (credits_held, plan_id);
    // Reserved from pools: it is paid by the rules that admitted it (those of the
    // plan it was reserved on, should the user have moved since): each side up to
    // its own allowance, the overage past the credits.
    let pools = match pooled {
        (Some(_), plan_id) => Some(plan_pools(c, plan_id, user_id)?),
        (None, _) => None,
    };
    let debited = debit(c, ctx, user_id, held_amount, cost_of(s), pools, s, policy)?;
    if let Some(distributor) = pool {
        distributors::charge(c, ctx, distributor, debited.charge)?;
    }
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
        usage_records::overage_tokens.eq(debited.overage),
        usage_records::overage_cost.eq(debited.overage_cost),
        usage_records::estimated.eq(flag(s.estimated)),
        usage_records::outcome.eq(s.outcome.as_str()),
        usage_records::status.eq(i32::from(s.status)),
        usage_records::latency_ms.eq(millis(s.latency)),
        usage_records::ttfb_ms.eq(s.ttfb.map(millis)),
        usage_records::created_at.eq(ctx.now),
        usage_records::plan_id.eq(plan_id),
        usage_records::conversation_id.eq(s.conversation.as_deref()),
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
            (usage_records::overage_tokens, usage_records::overage_cost),
        ));
    type Found = (i64, i64, i64, (i64, i64));
    let found: Option<Found> = match c {
        AnyConnection::Postgresql(pg) => abandoned.for_update().first(pg).optional()?,
        AnyConnection::Sqlite(lite) => abandoned.first(lite).optional()?,
    };
    let Some((record_id, user_id, charged_before, (overage_before, overage_cost_before))) = found
    else {
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
    let (charged, queued, overage) = if difference >= 0 {
        // What was charged before was the prompt: the rest is the output first,
        // paid by the pools of the user's plan.
        let output = difference.min(cost_of(s).output);
        let cost = SideUse {
            input: difference - output,
            output,
        };
        let pools = plan_pools(c, None, user_id)?;
        let debited = debit(c, ctx, user_id, 0, cost, Some(pools), s, policy)?;
        (
            debited.charge,
            debited.queued,
            (
                overage_before + debited.overage,
                overage_cost_before + debited.overage_cost,
            ),
        )
    } else {
        // Cost less than the prompt charged at the release: the overage that
        // charge billed is taken back first, the rest given back as credits.
        let refund = -difference;
        let undone = undo_overage(refund, overage_before, overage_cost_before);
        give_back(c, ctx, user_id, refund, undone, &s.request_id)?;
        (
            difference,
            0,
            (overage_before - undone.0, overage_cost_before - undone.1),
        )
    };
    // What the release charged the distributor's pool moves with the charge.
    if let (distributor, Some(_)) = distributors::of_user(c, user_id)? {
        distributors::charge(c, ctx, distributor, charged)?;
    }
    diesel::update(usage_records::table.filter(usage_records::id.eq(record_id)))
        .set((
            usage_records::overage_tokens.eq(overage.0),
            usage_records::overage_cost.eq(overage.1),
        ))
        .execute(c)?;
    Ok((SettleResult::SettledLate { charged }, queued))
}

/// Of a refund of `refund` tokens on a request billed `tokens` of overage at
/// `cost`, the overage tokens and price taken back: as much of the overage as the
/// refund covers, its price in proportion (all of it with all the tokens).
fn undo_overage(refund: i64, tokens: i64, cost: i64) -> (i64, i64) {
    let undone = refund.clamp(0, tokens.max(0));
    if undone == tokens {
        return (undone, cost.max(0));
    }
    let price = i128::from(cost.max(0)) * i128::from(undone) / i128::from(tokens.max(1));
    (undone, i64::try_from(price).unwrap_or(0))
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
    /// The overage tokens billed, and their price in micro-reais.
    overage: i64,
    overage_cost: i64,
}

/// A settlement's charge on each side.
fn cost_of(s: &Settlement) -> SideUse {
    let charge = s.charge.max(0);
    let output = s.output_charge.clamp(0, charge);
    SideUse {
        input: charge - output,
        output,
    }
}

/// What a plan pays from besides the balance as one figure.
#[derive(Debug, Clone, Copy)]
struct Pools {
    sides: SideAllowances,
    overage: Option<Overage>,
}

/// The pools of plan `plan_id` (of the user's plan, for a hold that names none),
/// as they are now.
fn plan_pools(c: &mut Conn, plan_id: Option<i64>, user_id: i64) -> Result<Pools, StoreError> {
    type Pair = (Option<i64>, Option<i64>);
    let plan_id = match plan_id {
        Some(id) => id,
        None => users::table.find(user_id).select(users::plan_id).first(c)?,
    };
    let ((input, output), (cap, price)): (Pair, Pair) = plans::table
        .find(plan_id)
        .select((
            (plans::input_allowance, plans::output_allowance),
            (plans::overage_cap, plans::overage_price),
        ))
        .first(c)?;
    Ok(Pools {
        sides: SideAllowances::stored(input, output),
        overage: Overage::stored(cap, price),
    })
}

/// Charges `cost` to the user's balance and releases `held` of it: allowance
/// first (with `pools`, each side only as far as its own allowance goes), then
/// credits, then the overage the plan allows (`domain::overage::Payment`), a ledger
/// entry, and any alert the usage crossed. Usage beyond the reservation (a prompt
/// estimate below the real count) is still charged: credits may dip below zero, as
/// a debt.
#[allow(clippy::too_many_arguments)]
fn debit(
    c: &mut Conn,
    ctx: &Ctx,
    user_id: i64,
    held: i64,
    cost: SideUse,
    pools: Option<Pools>,
    s: &Settlement,
    policy: &AlertPolicy,
) -> Result<Debited, StoreError> {
    let bal = lock_and_roll(c, ctx, user_id)?;
    let cost = SideUse {
        input: cost.input.max(0),
        output: cost.output.max(0),
    };
    let charge = cost.input + cost.output;
    let used = bal.usage(ctx);
    let plan = match pools {
        Some(p) => p.sides.plan_pays(used.sides, cost, bal.allowance_left),
        None => charge.min(bal.allowance_left.max(0)),
    };
    let overage = pools.and_then(|p| p.overage);
    let pay = Payment::of(
        charge,
        plan,
        bal.credits,
        overage.map_or(0, |o| o.left(used.overage)),
    );
    let overage_cost = overage.map_or(0, |o| o.price.cost_of(pay.overage));
    let (from_allowance, from_credits) = (pay.allowance, pay.credits);
    let allowance_left = bal.allowance_left - from_allowance;
    let credits = bal.credits - from_credits;
    let debit = FixedUpdate(
        diesel::update(balances::table.filter(balances::user_id.eq(user_id))).set((
            balances::allowance_left.eq(allowance_left),
            balances::credits.eq(credits),
            balances::held.eq(balances::held - held),
            balances::used_this_cycle.eq(balances::used_this_cycle + charge),
            balances::usage_cycle.eq(&ctx.cycle_key),
            balances::input_used.eq(used.sides.input.saturating_add(cost.input)),
            balances::output_used.eq(used.sides.output.saturating_add(cost.output)),
            balances::overage_used.eq(used.overage.saturating_add(pay.overage)),
            balances::overage_cost.eq(used.overage_cost.saturating_add(overage_cost)),
            balances::updated_at.eq(ctx.now),
        )),
    );
    on_backend!(c, |c| debit.execute(c))?;
    let mut debited = Debited {
        charge,
        balance: bal,
        queued: 0,
        notice: None,
        overage: pay.overage,
        overage_cost,
    };
    if charge == 0 {
        return Ok(debited);
    }
    let bal = &debited.balance;
    // Overage alone moves neither the allowance nor the credits: the usage record
    // keeps it, the ledger has nothing to add.
    if from_allowance != 0 || from_credits != 0 {
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
    }
    let used = bal.used_this_cycle + charge;
    let crossed = alert_store::record_crossings(
        c,
        policy,
        &alert_store::Snapshot {
            user_id,
            cycle: &ctx.cycle_key,
            // Overage billed means the plan is used up (a side of it, at least):
            // the 100% alert says so, and that overage is now billed.
            used_percent: if pay.overage > 0 {
                100
            } else {
                used_percent(used, allowance_left + credits)
            },
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
    debited.queued = crossed.queued;
    debited.notice = notice;
    Ok(debited)
}

/// Gives `amount` back: an abandoned hold charged its prompt, and the request's own
/// settlement, arriving later, says it cost less (it failed upstream). The overage
/// that charge billed (`undone`: tokens, price) is taken back; the rest is given
/// back as credits.
fn give_back(
    c: &mut Conn,
    ctx: &Ctx,
    user_id: i64,
    amount: i64,
    undone: (i64, i64),
    request_id: &str,
) -> Result<(), StoreError> {
    let bal = lock_and_roll(c, ctx, user_id)?;
    let as_credits = amount - undone.0;
    let credits = bal.credits.saturating_add(as_credits);
    // What was charged before was the prompt: the input's use goes back down.
    let used = bal.usage(ctx);
    diesel::update(balances::table.filter(balances::user_id.eq(user_id)))
        .set((
            balances::credits.eq(credits),
            balances::used_this_cycle.eq((bal.used_this_cycle - amount).max(0)),
            balances::usage_cycle.eq(&ctx.cycle_key),
            balances::input_used.eq((used.sides.input - amount).max(0)),
            balances::output_used.eq(used.sides.output),
            balances::overage_used.eq((used.overage - undone.0).max(0)),
            balances::overage_cost.eq((used.overage_cost - undone.1).max(0)),
            balances::updated_at.eq(ctx.now),
        ))
        .execute(c)?;
    if as_credits != 0 {
        append_ledger(
            c,
            ctx,
            user_id,
            &LedgerChange {
                kind: "adjustment",
                delta_allowance: 0,
                delta_credits: as_credits,
                actor: Actor::System.label(),
                note: Some("settled after release"),
                request_id: Some(request_id),
            },
            bal.allowance_left,
            credits,
        )?;
    }
    Ok(())
}
