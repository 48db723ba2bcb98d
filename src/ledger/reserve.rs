//! The reservation: one guarded write that admits a metered request or says why not
//! (docs/behaviour.md, "What a request goes through").

use super::distributors::{self, PoolRoom};
use super::plans::policy as plan_policy;
use super::requests;
use super::tx::{BalanceRow, Conn, Ctx, lock_and_roll, model_costs, upsert_user};
use super::{BlockReason, Blocked, NoticeBase, Reservation, ReserveOutcome, ReserveRequest};
use crate::alerts::{AlertPolicy, store as alert_store};
use crate::db::schema::{balances, distributors as distributor_rows, holds, plans, users};
use crate::db::statement::{FixedUpdate, on_backend};
use crate::db::{StoreError, flag};
use crate::domain::tokens::UnpricedModels;
use crate::domain::{PlanPolicy, Room, Side, SideUse, used_percent};
use chrono::{DateTime, NaiveDateTime, Utc};
use diesel::dsl::sql;
use diesel::prelude::*;
use diesel::sql_types::{BigInt, Nullable};

/// Reserves what the request may cost at most, or says why the balance cannot pay.
/// Returns the outcome and how many alert messages were queued (an exhausted user's
/// 100% alert).
pub(super) fn reserve(
    c: &mut Conn,
    ctx: &Ctx,
    req: &ReserveRequest,
    instance_id: &str,
    expires_at: DateTime<Utc>,
    policy: &AlertPolicy,
) -> Result<(ReserveOutcome, usize), StoreError> {
    let mut user = upsert_user(c, ctx, &req.identity)?;
    if let Some(placement) = user.wants {
        user.plan_id = super::plans::follow_role(c, ctx, user.id, placement)?;
    }
    if user.suspended {
        let contact = super::distributors::contact_of(c, user.id)?;
        return Ok((ReserveOutcome::Suspended { contact }, 0));
    }
    let user_id = user.id;
    let plan = plan_policy(c, user.plan_id)?;
    if !plan.models.allows(&req.model) {
        return Ok((ReserveOutcome::ModelNotInPlan(plan.models), 0));
    }
    let bal = lock_and_roll(c, ctx, user_id)?;
    let windows = requests::windows(&bal, ctx);
    let counts = requests::counts(&bal, &windows);
    if let Some(reached) = plan.limits.reached(&counts) {
        let (reached, queued) = requests::refuse(c, ctx, user_id, &windows, reached)?;
        return Ok((ReserveOutcome::LimitReached(reached), queued));
    }
    let costs = model_costs(c, &req.model)?;
    let weights = match (costs.weights, req.unpriced) {
        (Some(weights), _) => weights,
        (None, UnpricedModels::Weight(weights)) => weights,
        (None, UnpricedModels::Refuse) => return Ok((ReserveOutcome::ModelNotPriced, 0)),
    };
    // What the provider may bill beyond the text: the admin's figure for the model,
    // without which such a request is not made at all.
    let extra = match (req.needs_extra, costs.call_extra) {
        (false, _) => 0,
        (true, Some(extra)) => extra,
        (true, None) => return Ok((ReserveOutcome::NotReservable, 0)),
    };
    // What the provider may bill for the input: the text's estimate, and each image
    // at the most the model may charge for one.
    let prompt = req
        .prompt_tokens
        .saturating_add(req.images.saturating_mul(costs.image_tokens));
    let prompt_cost = weights.cost(prompt, 0);
    // The input: the prompt and what the provider bills beyond the text.
    let input = prompt_cost.saturating_add(extra);

    let room = Rooms::of(c, ctx, &plan, user_id, &bal)?;
    // The distributor's pool, if it has one, bounds every one of its users.
    let pool = distributors::lock_pool(c, ctx, req.identity.distributor.get())?;
    let pool_left = pool.as_ref().map(PoolRoom::left);
    let own = room.remaining(input);
    let remaining = pool_left.map_or(own, |left| own.min(left));
    let fit = Fit::of(req, weights, prompt, prompt_cost, extra, remaining);
    if !fit.affordable || fit.cut {
        // Would the holds of the user's own requests in flight be what refuses or
        // cuts this one? Then it waits for them first (LibreChat sends a
        // conversation's title request at the moment of its first message; the
        // title holds a default limit it never uses), and nothing is written now.
        let alone = Fit::of(req, weights, prompt, prompt_cost, extra, {
            let alone = room.remaining_alone(input);
            // The user's own holds are part of what the pool holds.
            pool_left.map_or(alone, |left| alone.min(left.saturating_add(bal.held)))
        });
        if req.patient && bal.held > 0 && alone.better_than(&fit) {
            return Ok((
                ReserveOutcome::Crowded {
                    user_id,
                    held: bal.held,
                },
                0,
            ));
        }
    }
    if !fit.affordable && pool_left.is_some_and(|left| left < own) {
        // The user could pay; their distributor's pool cannot.
        return refuse_for_pool(c, user_id, &bal, remaining);
    }
    if !fit.affordable {
        // What the least of this request would cost: which side cannot pay that?
        let least = SideUse {
            input,
            output: match req.requested_completion {
                Some(_) => weights.cost(
                    0,
                    req.min_completion
                        .max(1)
                        .saturating_mul(req.completions.max(1)),
                ),
                None => 0,
            },
        };
        let shortfall = Shortfall {
            remaining: room.left(),
            short: room.short_side(least),
        };
        return refuse(c, ctx, user_id, &bal, req, policy, shortfall);
    }
    let cost = SideUse {
        input,
        output: fit.amount.saturating_sub(input),
    };

    // The guard makes the write itself refuse to overspend, whatever happened above.
    // The counts were read from the row this transaction holds locked.
    let amount = fit.amount;
    let counted = requests::one_more(&counts, &windows, &bal);
    // The overage a plan allows pays past the balance: read from the same locked row.
    let past_balance = room.overage_left();
    let guarded = FixedUpdate(
        diesel::update(
            balances::table
                .filter(balances::user_id.eq(user_id))
                .filter(
                    (balances::allowance_left + balances::credits - balances::held)
                        .ge(amount.saturating_sub(past_balance)),
                ),
        )
        .set((
            balances::held.eq(balances::held + amount),
            balances::updated_at.eq(ctx.now),
            balances::minute_start.eq(counted.minute_start),
            balances::minute_requests.eq(counted.minute),
            balances::request_day.eq(counted.day),
            balances::day_requests.eq(counted.day_count),
            balances::request_cycle.eq(counted.cycle),
            balances::cycle_requests.eq(counted.cycle_count),
        )),
    );
    let updated = on_backend!(c, |c| guarded.execute(c))?;
    if updated == 1
        && let Some(pool) = &pool
        && !distributors::guard(c, pool, amount)?
    {
        // The balance's write is in this transaction: the refusal rolls it back.
        return Err(StoreError::Query(diesel::result::Error::QueryBuilderError(
            "the pool refused what it was read to allow".into(),
        )));
    }
    if updated != 1 {
        let shortfall = Shortfall {
            remaining: room.left(),
            short: None,
        };
        return refuse(c, ctx, user_id, &bal, req, policy, shortfall);
    }
    if bal.exhausted_at.is_some() {
        // A request the balance still pays for: not blocked after all.
        diesel::update(balances::table.filter(balances::user_id.eq(user_id)))
            .set(balances::exhausted_at.eq(None::<NaiveDateTime>))
            .execute(c)?;
    }
    // A notice is due (a threshold was crossed by an answer that could not carry
    // it): this answer carries it, and no other does. The row is locked, so of
    // concurrent requests one claims it.
    let notice = (req.notice_eligible && bal.notice_due.is_some()).then(|| NoticeBase {
        used: bal.used_this_cycle,
        total: bal.used_this_cycle + bal.allowance_left + bal.credits,
    });
    if notice.is_some() {
        diesel::update(balances::table.filter(balances::user_id.eq(user_id)))
            .set(balances::notice_due.eq(None::<NaiveDateTime>))
            .execute(c)?;
    }
    // The prompt's cost goes with the hold: should this process die with the request
    // upstream, the prompt is what the provider billed at least, and it is charged
    // when the hold is released (`Ledger::release_holds`).
    let hold = diesel::insert_into(holds::table).values((
        holds::request_id.eq(&req.request_id),
        holds::user_id.eq(user_id),
        holds::amount.eq(amount),
        holds::model.eq(&req.model),
        holds::endpoint.eq(req.endpoint),
        holds::stream.eq(flag(req.stream)),
        holds::instance_id.eq(instance_id),
        holds::created_at.eq(ctx.now),
        holds::expires_at.eq(expires_at.naive_utc()),
        holds::prompt_tokens.eq(prompt),
        holds::prompt_charge.eq(prompt_cost),
        holds::counted.eq(1),
        holds::input_held.eq(cost.input),
        holds::output_held.eq(cost.output),
        holds::credits_held.eq(room.beyond_part(cost)),
        holds::plan_id.eq(user.plan_id),
        holds::distributor_id.eq(pool.as_ref().map(|p| p.distributor)),
    ));
    on_backend!(c, |c| hold.execute(c))?;
    let worst = bal.used_this_cycle + bal.held + amount;
    let may_cross_notice = req.notice_eligible
        && policy
            .notice_at()
            .is_some_and(|n| used_percent(worst, remaining - amount) >= n);
    Ok((
        ReserveOutcome::Reserved(Reservation {
            request_id: req.request_id.clone(),
            user_id,
            amount,
            weights,
            allowed_completion: fit.allowed,
            prompt_estimate: prompt,
            remaining: remaining - amount,
            notice,
            may_cross_notice,
        }),
        0,
    ))
}

/// What a balance has left to pay a request with. A plan with neither side
/// allowances nor overage has one figure, the balance less its holds; one with them
/// pays from pools, and asks, besides, what the user's requests in flight hold of
/// each side and past the plan (one read of their holds, on the balance's row lock).
enum Rooms {
    Whole {
        remaining: i64,
        held: i64,
    },
    Pools {
        room: Room,
        alone: Room,
        overage_left: i64,
    },
}

impl Rooms {
    fn of(
        c: &mut Conn,
        ctx: &Ctx,
        plan: &PlanPolicy,
        user_id: i64,
        bal: &BalanceRow,
    ) -> Result<Self, StoreError> {
        if !plan.pooled() {
            return Ok(Self::Whole {
                remaining: bal.allowance_left + bal.credits - bal.held,
                held: bal.held,
            });
        }
        let held = holds::table.filter(holds::user_id.eq(user_id)).select((
            sql::<Nullable<BigInt>>("CAST(SUM(input_held) AS BIGINT)"),
            sql::<Nullable<BigInt>>("CAST(SUM(output_held) AS BIGINT)"),
            sql::<Nullable<BigInt>>("CAST(SUM(credits_held) AS BIGINT)"),
        ));
        let (input, output, credits): (Option<i64>, Option<i64>, Option<i64>) =
            on_backend!(c, |c| held.first(c))?;
        let used = bal.usage(ctx);
        let overage_left = plan.overage.map_or(0, |o| o.left(used.overage));
        let room = |held: i64, held_sides: SideUse, held_beyond: i64| {
            Room::of(
                plan.sides,
                bal.allowance_left,
                bal.credits.saturating_add(overage_left),
                used.sides,
                held,
                held_sides,
                held_beyond,
            )
        };
        Ok(Self::Pools {
            overage_left,
            room: room(
                bal.held,
                SideUse {
                    input: input.unwrap_or(0),
                    output: output.unwrap_or(0),
                },
                credits.unwrap_or(0),
            ),
            alone: room(0, SideUse::default(), 0),
        })
    }

    /// The most a request whose input costs `input` may cost.
    fn remaining(&self, input: i64) -> i64 {
        match self {
            Self::Whole { remaining, .. } => *remaining,
            Self::Pools { room, .. } => room.budget(input),
        }
    }

    /// The same, were none of the user's requests in flight.
    fn remaining_alone(&self, input: i64) -> i64 {
        match self {
            Self::Whole { remaining, held } => remaining + held,
            Self::Pools { alone, .. } => alone.budget(input),
        }
    }

    /// The side whose allowance refuses a request of `cost`, if one does.
    fn short_side(&self, cost: SideUse) -> Option<Short> {
        match self {
            Self::Whole { .. } => None,
            Self::Pools { room, .. } => room.short_side(cost).map(|side| Short {
                side,
                left: room.can_pay(side),
            }),
        }
    }

    /// What is paid past the plan (credits, overage) of a request of `cost`, kept
    /// on its hold; `None` for a plan without pools, whose holds are paid allowance
    /// first at settlement.
    fn beyond_part(&self, cost: SideUse) -> Option<i64> {
        match self {
            Self::Whole { .. } => None,
            Self::Pools { room, .. } => Some(room.split(cost).beyond),
        }
    }

    /// What the overage the plan allows has left this cycle.
    fn overage_left(&self) -> i64 {
        match self {
            Self::Whole { .. } => 0,
            Self::Pools { overage_left, .. } => *overage_left,
        }
    }

    /// What the next request could use, after the holds in flight.
    fn left(&self) -> i64 {
        match self {
            Self::Whole { remaining, .. } => *remaining,
            Self::Pools { room, .. } => room.plan.saturating_add(room.beyond),
        }
    }
}

/// A refusal because the distributor's pool cannot pay what the user's balance
/// could. Nothing of the user's is marked: their balance is not used up.
fn refuse_for_pool(
    c: &mut Conn,
    user_id: i64,
    bal: &BalanceRow,
    remaining: i64,
) -> Result<(ReserveOutcome, usize), StoreError> {
    let (plan_name, contact) = plan_and_contact(c, user_id)?;
    Ok((
        ReserveOutcome::Blocked(Blocked {
            reason: BlockReason::PoolUsedUp,
            plan_name,
            used_percent: used_percent(bal.used_this_cycle, bal.allowance_left + bal.credits),
            remaining: remaining.max(0),
            contact,
        }),
        0,
    ))
}

/// The user's plan's name, and their distributor's contact.
fn plan_and_contact(c: &mut Conn, user_id: i64) -> Result<(String, Option<String>), StoreError> {
    Ok(users::table
        .inner_join(plans::table)
        .inner_join(distributor_rows::table)
        .filter(users::id.eq(user_id))
        .select((plans::name, distributor_rows::contact))
        .first(c)?)
}

/// A side whose allowance refuses a request, and what it can still pay (its room
/// and the credits).
#[derive(Debug, Clone, Copy)]
struct Short {
    side: Side,
    left: i64,
}

/// Why a balance cannot pay a request: what it has left after its holds, and the
/// side whose allowance refuses it, if one does.
#[derive(Debug, Clone, Copy)]
struct Shortfall {
    remaining: i64,
    short: Option<Short>,
}

/// How a request fits in what a balance has left: what it would reserve, and
/// whether its completion limit had to be lowered (`cut`) or it cannot be paid at all.
struct Fit {
    amount: i64,
    allowed: Option<i64>,
    affordable: bool,
    cut: bool,
}

impl Fit {
    fn of(
        req: &ReserveRequest,
        weights: crate::domain::Weights,
        prompt: i64,
        prompt_cost: i64,
        extra: i64,
        remaining: i64,
    ) -> Self {
        // Each of the completions may run to the limit sent upstream: the limit is
        // what the balance pays for all of them, after the extra.
        let completions = req.completions.max(1);
        let (amount, allowed) = match req.requested_completion {
            None => (prompt_cost.saturating_add(extra), None),
            Some(requested) => {
                let each = weights.affordable_completion(remaining - extra, prompt) / completions;
                let allowed = requested.min(each);
                (
                    weights
                        .cost(prompt, allowed.max(0).saturating_mul(completions))
                        .saturating_add(extra),
                    Some(allowed),
                )
            }
        };
        Self {
            amount,
            allowed,
            affordable: remaining > 0
                && remaining >= amount
                && allowed.is_none_or(|n| n >= req.min_completion.max(1)),
            cut: matches!((allowed, req.requested_completion), (Some(a), Some(r)) if a < r),
        }
    }

    /// Whether this fit lets the request through where `other` does not, or with
    /// a higher limit.
    fn better_than(&self, other: &Fit) -> bool {
        self.affordable
            && (!other.affordable || self.allowed.unwrap_or(0) > other.allowed.unwrap_or(0))
    }
}

/// The least a balance must keep for a request to be worth making: below it (or
/// below 1% of the cycle's allowance and credits), with nothing in flight, the user
/// is exhausted (docs/behaviour.md).
const SMALLEST_USEFUL_REQUEST: i64 = 1_000;

/// A refusal for balance, and why. An exhausted user's first refusal (per arming)
/// writes the 100% alert and marks the balance, so that the dashboard counts the
/// user as blocked although a few tokens remain: the clamp stops a user just short
/// of the end, where used_percent alone says 99.
fn refuse(
    c: &mut Conn,
    ctx: &Ctx,
    user_id: i64,
    bal: &BalanceRow,
    req: &ReserveRequest,
    policy: &AlertPolicy,
    Shortfall { remaining, short }: Shortfall,
) -> Result<(ReserveOutcome, usize), StoreError> {
    let (plan_name, contact) = plan_and_contact(c, user_id)?;
    let total = bal.used_this_cycle + remaining + bal.held;
    let (reason, remaining) = match short {
        _ if bal.held > 0 => (BlockReason::InFlight, remaining),
        // A side's allowance refuses: used up (with the credits), or too small for
        // this request.
        Some(short) if short.left < SMALLEST_USEFUL_REQUEST => {
            (BlockReason::SideUsedUp(short.side), short.left)
        }
        Some(short) => (BlockReason::TooLarge, short.left),
        None if remaining < (total / 100).max(SMALLEST_USEFUL_REQUEST) => {
            (BlockReason::Exhausted, remaining)
        }
        None => (BlockReason::TooLarge, remaining),
    };
    let mut queued = 0;
    if reason.used_up() && bal.exhausted_at.is_none() {
        diesel::update(balances::table.filter(balances::user_id.eq(user_id)))
            .set(balances::exhausted_at.eq(Some(ctx.now)))
            .execute(c)?;
        queued = alert_store::record_crossings(
            c,
            policy,
            &alert_store::Snapshot {
                user_id,
                cycle: &ctx.cycle_key,
                // Exhaustion counts as crossing 100%.
                used_percent: 100,
                used_this_cycle: bal.used_this_cycle,
                allowance_left: bal.allowance_left,
                credits: bal.credits,
                request_id: Some(&req.request_id),
            },
            ctx.now,
            ctx.wall,
        )?
        .queued;
    }
    let used_percent = if reason.used_up() {
        100
    } else {
        used_percent(bal.used_this_cycle, bal.allowance_left + bal.credits)
    };
    Ok((
        ReserveOutcome::Blocked(Blocked {
            reason,
            plan_name,
            used_percent,
            remaining: remaining.max(0),
            contact,
        }),
        queued,
    ))
}
