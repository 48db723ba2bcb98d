//! SQL for alerts and the outbox. Functions taking a connection run inside the
//! caller's transaction: the settlement's, or one of the worker's.

use super::{Alert, AlertPolicy, DeliveryState, OutboxMessage, Role};
use crate::db::schema::{admins, alerts, balances, outbox, plans, users};
use crate::db::{AnyConnection, StoreError};
use crate::domain::Scope;
use chrono::NaiveDateTime;
use diesel::prelude::*;

type Conn = AnyConnection;

/// The balance right after a usage, as the alert reports it.
pub(crate) struct Snapshot<'a> {
    pub user_id: i64,
    pub cycle: &'a str,
    pub used_percent: u8,
    pub used_this_cycle: i64,
    pub allowance_left: i64,
    pub credits: i64,
    pub request_id: Option<&'a str>,
}

/// What `record_crossings` wrote.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct Crossed {
    /// Messages queued in the outbox.
    pub queued: usize,
    /// The in-chat notice is now due (`balances.notice_due`).
    pub notice_armed: bool,
}

/// Writes an alert for every configured threshold the user has reached and that is
/// armed (no alert yet in this cycle, or re-armed by a top-up since). When one usage
/// crosses several thresholds, only the highest is mailed: one message says it all.
pub(crate) fn record_crossings(
    c: &mut Conn,
    policy: &AlertPolicy,
    s: &Snapshot<'_>,
    now: NaiveDateTime,
    queue_at: NaiveDateTime,
) -> Result<Crossed, StoreError> {
    let reached: Vec<i32> = policy
        .thresholds
        .iter()
        .filter(|t| s.used_percent >= **t)
        .map(|t| i32::from(*t))
        .collect();
    if reached.is_empty() {
        return Ok(Crossed::default());
    }
    let fired: Vec<i32> = alerts::table
        .filter(alerts::user_id.eq(s.user_id))
        .filter(alerts::cycle.eq(s.cycle))
        .filter(alerts::rearmed_at.is_null())
        .select(alerts::threshold)
        .load(c)?;
    let new: Vec<i32> = reached.into_iter().filter(|t| !fired.contains(t)).collect();
    let Some(&top) = new.iter().max() else {
        return Ok(Crossed::default());
    };
    // Crossing the highest threshold below 100% is also said in the chat, once (by
    // the answer that crossed it, or the next streamed text answer); lower
    // thresholds only mail, so one answer that claims the notice and crosses
    // another threshold does not arm a second. At 100% the block says it instead.
    let notice_due = if top >= 100 {
        Some(None)
    } else if policy
        .notice_at()
        .is_some_and(|n| new.contains(&i32::from(n)))
    {
        Some(Some(now))
    } else {
        None
    };
    if let Some(due) = notice_due {
        diesel::update(balances::table.filter(balances::user_id.eq(s.user_id)))
            .set(balances::notice_due.eq(due))
            .execute(c)?;
    }
    let email: Option<String> = users::table.find(s.user_id).select(users::email).first(c)?;
    let mut queued = 0;
    for threshold in new {
        let delivery = if threshold != top {
            "superseded"
        } else if email.is_some() {
            "mail"
        } else {
            "no_address"
        };
        let alert_id: i64 = diesel::insert_into(alerts::table)
            .values((
                alerts::user_id.eq(s.user_id),
                alerts::cycle.eq(s.cycle),
                alerts::threshold.eq(threshold),
                alerts::used_this_cycle.eq(s.used_this_cycle),
                alerts::allowance_left.eq(s.allowance_left),
                alerts::credits.eq(s.credits),
                alerts::recipient.eq(&email),
                alerts::delivery.eq(delivery),
                alerts::request_id.eq(s.request_id),
                alerts::created_at.eq(now),
            ))
            .returning(alerts::id)
            .get_result(c)?;
        if threshold != top {
            continue;
        }
        let user_copy = email.iter().map(|e| (Role::User, e.as_str()));
        let admins = admin_recipients(c, s.user_id, &policy.admin_emails)?;
        let admin_copies = admins.iter().map(|e| (Role::Admin, e.as_str()));
        for (role, recipient) in user_copy.chain(admin_copies) {
            diesel::insert_into(outbox::table)
                .values((
                    outbox::alert_id.eq(alert_id),
                    outbox::role.eq(role.as_str()),
                    outbox::recipient.eq(recipient),
                    outbox::state.eq(DeliveryState::Pending.as_str()),
                    outbox::attempts.eq(0),
                    outbox::next_attempt_at.eq(queue_at),
                    outbox::created_at.eq(queue_at),
                ))
                .execute(c)?;
            queued += 1;
        }
    }
    Ok(Crossed {
        queued,
        notice_armed: notice_due.is_some_and(|due| due.is_some()),
    })
}

/// Who hears about a user as an admin: the configured addresses
/// (`TOKENGATE_ADMIN_EMAILS`), and the active admins of the user's distributor,
/// each address once.
pub(crate) fn admin_recipients(
    c: &mut Conn,
    user_id: i64,
    configured: &[String],
) -> Result<Vec<String>, StoreError> {
    let theirs: Vec<String> = admins::table
        .inner_join(users::table.on(admins::distributor_id.eq(users::distributor_id.nullable())))
        .filter(users::id.eq(user_id))
        .filter(admins::disabled_at.is_null())
        .order(admins::email.asc())
        .select(admins::email)
        .load(c)?;
    let mut all = configured.to_vec();
    for email in theirs {
        if !all.iter().any(|e| e.eq_ignore_ascii_case(&email)) {
            all.push(email);
        }
    }
    Ok(all)
}

/// Re-arms the thresholds a balance increase brought the user back under, so the
/// next crossing alerts again.
pub(crate) fn rearm(
    c: &mut Conn,
    user_id: i64,
    cycle: &str,
    used_percent: u8,
    now: NaiveDateTime,
) -> Result<usize, StoreError> {
    let rearmed = diesel::update(
        alerts::table
            .filter(alerts::user_id.eq(user_id))
            .filter(alerts::cycle.eq(cycle))
            .filter(alerts::rearmed_at.is_null())
            .filter(alerts::threshold.gt(i32::from(used_percent))),
    )
    .set(alerts::rearmed_at.eq(now))
    .execute(c)?;
    if rearmed > 0 {
        // Back under a threshold: a notice still due would say what is no longer so.
        diesel::update(balances::table.filter(balances::user_id.eq(user_id)))
            .set(balances::notice_due.eq(None::<NaiveDateTime>))
            .execute(c)?;
    }
    Ok(rearmed)
}

/// An outbox row a worker has leased.
#[derive(Debug, Clone, Queryable)]
pub(crate) struct Claimed {
    pub id: i64,
    pub alert_id: Option<i64>,
    pub credit_request_id: Option<i64>,
    pub kind: String,
    pub role: String,
    pub recipient: String,
    pub attempts: i32,
    pub limit_hit_id: Option<i64>,
}

/// Leases up to `limit` due messages to `worker` until `lease_until`. On PostgreSQL
/// rows another worker is claiming are skipped (`FOR UPDATE SKIP LOCKED`); SQLite
/// runs this in a `BEGIN IMMEDIATE` transaction, which admits one writer at a time.
pub(crate) fn claim(
    c: &mut Conn,
    worker: &str,
    now: NaiveDateTime,
    lease_until: NaiveDateTime,
    limit: i64,
) -> Result<Vec<Claimed>, StoreError> {
    let due = outbox::table
        .filter(outbox::state.eq(DeliveryState::Pending.as_str()))
        .filter(outbox::next_attempt_at.le(now))
        .filter(
            outbox::claimed_until
                .is_null()
                .or(outbox::claimed_until.lt(now)),
        )
        .order(outbox::id.asc())
        .select(outbox::id)
        .limit(limit);
    let ids: Vec<i64> = match c {
        AnyConnection::Postgresql(pg) => due.for_update().skip_locked().load(pg)?,
        AnyConnection::Sqlite(lite) => due.load(lite)?,
    };
    if ids.is_empty() {
        return Ok(Vec::new());
    }
    // The conditions are repeated so the update itself can never take over a live lease.
    Ok(diesel::update(
        outbox::table
            .filter(outbox::id.eq_any(&ids))
            .filter(outbox::state.eq(DeliveryState::Pending.as_str()))
            .filter(
                outbox::claimed_until
                    .is_null()
                    .or(outbox::claimed_until.lt(now)),
            ),
    )
    .set((
        outbox::claimed_by.eq(worker),
        outbox::claimed_until.eq(lease_until),
    ))
    .returning((
        outbox::id,
        outbox::alert_id,
        outbox::credit_request_id,
        outbox::kind,
        outbox::role,
        outbox::recipient,
        outbox::attempts,
        outbox::limit_hit_id,
    ))
    .get_results(c)?)
}

/// Records a delivery; false when the lease was lost (another worker took over).
pub(crate) fn mark_sent(
    c: &mut Conn,
    id: i64,
    worker: &str,
    now: NaiveDateTime,
) -> Result<bool, StoreError> {
    let n = diesel::update(
        outbox::table
            .filter(outbox::id.eq(id))
            .filter(outbox::claimed_by.eq(worker)),
    )
    .set((
        outbox::state.eq(DeliveryState::Sent.as_str()),
        outbox::attempts.eq(outbox::attempts + 1),
        outbox::sent_at.eq(now),
        outbox::last_error.eq(None::<String>),
        outbox::claimed_by.eq(None::<String>),
        outbox::claimed_until.eq(None::<NaiveDateTime>),
    ))
    .execute(c)?;
    Ok(n == 1)
}

/// Records a failed attempt: retried at `retry_at`, or failed for good when `None`.
pub(crate) fn mark_attempt_failed(
    c: &mut Conn,
    id: i64,
    worker: &str,
    error: &str,
    retry_at: Option<NaiveDateTime>,
) -> Result<bool, StoreError> {
    let target = outbox::table
        .filter(outbox::id.eq(id))
        .filter(outbox::claimed_by.eq(worker));
    let released = (
        outbox::attempts.eq(outbox::attempts + 1),
        outbox::last_error.eq(error),
        outbox::claimed_by.eq(None::<String>),
        outbox::claimed_until.eq(None::<NaiveDateTime>),
    );
    let n = match retry_at {
        Some(at) => diesel::update(target)
            .set((
                outbox::state.eq(DeliveryState::Pending.as_str()),
                outbox::next_attempt_at.eq(at),
                released,
            ))
            .execute(c)?,
        None => diesel::update(target)
            .set((outbox::state.eq(DeliveryState::Failed.as_str()), released))
            .execute(c)?,
    };
    Ok(n == 1)
}

/// Frees the leases a previous run of this worker left (it was killed mid-send).
pub(crate) fn release_claims(c: &mut Conn, worker: &str) -> Result<usize, StoreError> {
    Ok(diesel::update(
        outbox::table
            .filter(outbox::claimed_by.eq(worker))
            .filter(outbox::state.eq(DeliveryState::Pending.as_str())),
    )
    .set((
        outbox::claimed_by.eq(None::<String>),
        outbox::claimed_until.eq(None::<NaiveDateTime>),
    ))
    .execute(c)?)
}

/// When the earliest pending message becomes due.
pub(crate) fn next_due(c: &mut Conn) -> Result<Option<NaiveDateTime>, StoreError> {
    Ok(outbox::table
        .filter(outbox::state.eq(DeliveryState::Pending.as_str()))
        .select(diesel::dsl::min(outbox::next_attempt_at))
        .first(c)?)
}

/// What a message about a request limit says.
#[derive(Debug, Clone)]
pub(crate) struct LimitHitFacts {
    pub user_id: i64,
    pub user_name: Option<String>,
    pub period: String,
    pub request_limit: i32,
    pub resets_at: NaiveDateTime,
    pub plan_name: String,
}

pub(crate) fn limit_hit_facts(
    c: &mut Conn,
    hit_id: i64,
) -> Result<Option<LimitHitFacts>, StoreError> {
    use crate::db::schema::limit_hits;
    let row: Option<(i64, Option<String>, String, i32, NaiveDateTime, String)> = limit_hits::table
        .inner_join(users::table.inner_join(plans::table))
        .filter(limit_hits::id.eq(hit_id))
        .select((
            users::id,
            users::name,
            limit_hits::period,
            limit_hits::request_limit,
            limit_hits::resets_at,
            plans::name,
        ))
        .first(c)
        .optional()?;
    Ok(row.map(
        |(user_id, user_name, period, request_limit, resets_at, plan_name)| LimitHitFacts {
            user_id,
            user_name,
            period,
            request_limit,
            resets_at,
            plan_name,
        },
    ))
}

/// What a message about one alert says.
#[derive(Debug, Clone)]
pub(crate) struct AlertFacts {
    pub user_id: i64,
    pub external_id: Option<String>,
    pub user_email: Option<String>,
    pub user_name: Option<String>,
    pub cycle: String,
    pub threshold: i32,
    pub used_this_cycle: i64,
    pub allowance_left: i64,
    pub credits: i64,
    pub plan_name: String,
    pub plan_allowance: i64,
    /// Whether the user was mailed (an address was known when the alert was written).
    pub user_notified: bool,
    /// The plan's overage now, unless its cap is used up: past 100% the chat goes
    /// on, billed.
    pub overage: Option<crate::domain::Overage>,
}

pub(crate) fn alert_facts(c: &mut Conn, alert_id: i64) -> Result<Option<AlertFacts>, StoreError> {
    type Row = (
        i64,
        Option<String>,
        Option<String>,
        Option<String>,
        String,
        i32,
        i64,
        i64,
        i64,
        String,
        i64,
        Option<String>,
        (Option<i64>, Option<i64>, Option<String>, i64),
    );
    let row: Option<Row> = alerts::table
        .inner_join(
            users::table
                .inner_join(plans::table)
                .inner_join(balances::table),
        )
        .filter(alerts::id.eq(alert_id))
        .select((
            users::id,
            users::external_id,
            users::email,
            users::name,
            alerts::cycle,
            alerts::threshold,
            alerts::used_this_cycle,
            alerts::allowance_left,
            alerts::credits,
            plans::name,
            plans::monthly_allowance,
            alerts::recipient,
            (
                plans::overage_cap,
                plans::overage_price,
                balances::usage_cycle,
                balances::overage_used,
            ),
        ))
        .first(c)
        .optional()?;
    Ok(row.map(
        |(
            user_id,
            external_id,
            user_email,
            user_name,
            cycle,
            threshold,
            used,
            left,
            credits,
            plan_name,
            plan_allowance,
            recipient,
            (overage_cap, overage_price, usage_cycle, overage_used),
        )| AlertFacts {
            // The overage goes on unless its cap is used up in the alert's cycle.
            overage: crate::domain::Overage::stored(overage_cap, overage_price).filter(|o| {
                usage_cycle.as_deref() != Some(cycle.as_str()) || o.left(overage_used) > 0
            }),
            user_id,
            external_id,
            user_email,
            user_name,
            cycle,
            threshold,
            used_this_cycle: used,
            allowance_left: left,
            credits,
            plan_name,
            plan_allowance,
            user_notified: recipient.is_some(),
        },
    ))
}

type AlertRow = (
    i64,
    i64,
    String,
    i32,
    i64,
    i64,
    i64,
    Option<String>,
    String,
    Option<String>,
    NaiveDateTime,
    Option<NaiveDateTime>,
);

type MessageRow = (
    i64,
    Option<i64>,
    String,
    String,
    String,
    String,
    i32,
    NaiveDateTime,
    Option<String>,
    NaiveDateTime,
    Option<NaiveDateTime>,
);

const MESSAGE_COLUMNS: (
    outbox::id,
    outbox::alert_id,
    outbox::kind,
    outbox::role,
    outbox::recipient,
    outbox::state,
    outbox::attempts,
    outbox::next_attempt_at,
    outbox::last_error,
    outbox::created_at,
    outbox::sent_at,
) = (
    outbox::id,
    outbox::alert_id,
    outbox::kind,
    outbox::role,
    outbox::recipient,
    outbox::state,
    outbox::attempts,
    outbox::next_attempt_at,
    outbox::last_error,
    outbox::created_at,
    outbox::sent_at,
);

fn message(r: MessageRow) -> OutboxMessage {
    OutboxMessage {
        id: r.0,
        alert_id: r.1,
        kind: r.2,
        role: Role::parse(&r.3),
        recipient: r.4,
        state: DeliveryState::parse(&r.5),
        attempts: r.6,
        next_attempt_at: r.7,
        last_error: r.8,
        created_at: r.9,
        sent_at: r.10,
    }
}

/// The newest alerts (of one user, or of everyone `scope` reaches), each with its
/// messages.
pub(crate) fn list(
    c: &mut Conn,
    scope: Scope,
    user_id: Option<i64>,
    limit: i64,
) -> Result<Vec<Alert>, StoreError> {
    let (lo, hi) = scope.bounds();
    let mut query = alerts::table
        .inner_join(users::table)
        .filter(users::distributor_id.between(lo, hi))
        .select((
            alerts::id,
            alerts::user_id,
            alerts::cycle,
            alerts::threshold,
            alerts::used_this_cycle,
            alerts::allowance_left,
            alerts::credits,
            alerts::recipient,
            alerts::delivery,
            alerts::request_id,
            alerts::created_at,
            alerts::rearmed_at,
        ))
        .order(alerts::id.desc())
        .limit(limit)
        .into_boxed();
    if let Some(id) = user_id {
        query = query.filter(alerts::user_id.eq(id));
    }
    let rows: Vec<AlertRow> = query.load(c)?;
    let ids: Vec<i64> = rows.iter().map(|r| r.0).collect();
    let messages: Vec<OutboxMessage> = outbox::table
        .filter(outbox::alert_id.eq_any(&ids))
        .order(outbox::id.asc())
        .select(MESSAGE_COLUMNS)
        .load::<MessageRow>(c)?
        .into_iter()
        .map(message)
        .collect();
    Ok(rows
        .into_iter()
        .map(|r| Alert {
            id: r.0,
            user_id: r.1,
            cycle: r.2,
            threshold: u8::try_from(r.3).unwrap_or(100),
            used_this_cycle: r.4,
            allowance_left: r.5,
            credits: r.6,
            recipient: r.7,
            delivery: r.8,
            request_id: r.9,
            created_at: r.10,
            rearmed_at: r.11,
            messages: messages
                .iter()
                .filter(|m| m.alert_id == Some(r.0))
                .cloned()
                .collect(),
        })
        .collect())
}

/// Every outbox message in order, for operators and tests.
pub(crate) fn messages(c: &mut Conn) -> Result<Vec<OutboxMessage>, StoreError> {
    Ok(outbox::table
        .order(outbox::id.asc())
        .select(MESSAGE_COLUMNS)
        .load::<MessageRow>(c)?
        .into_iter()
        .map(message)
        .collect())
}
