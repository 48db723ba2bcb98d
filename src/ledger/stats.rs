//! Aggregates for the dashboard: usage today and this cycle, user states, top users,
//! a daily series, usage by model, and the searchable user list.
//!
//! Aggregates run as plain SQL with values tokengate formats itself (timestamps, ids,
//! cycle keys), never user input; the user search goes through Diesel's binds.

use crate::db::schema::{balances, plans, users};
use crate::db::{AnyConnection, StoreError};
use crate::domain::{Scope, used_percent};
use chrono::{DateTime, Duration, NaiveDate, NaiveDateTime, Utc};
use chrono_tz::Tz;
use diesel::prelude::*;
use diesel::sql_types::{BigInt, Text};
use serde::Serialize;
use std::collections::BTreeMap;

type Conn = AnyConnection;

/// The share of the balance that counts a user as "over 80%".
pub const NEAR_LIMIT_PERCENT: i64 = 80;

/// How a user stands in the current cycle.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum UserState {
    Ok,
    Over80,
    /// Nothing left: requests are refused.
    Blocked,
    Suspended,
}

impl UserState {
    pub const ALL: [Self; 4] = [Self::Ok, Self::Over80, Self::Blocked, Self::Suspended];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Ok => "ok",
            Self::Over80 => "over80",
            Self::Blocked => "blocked",
            Self::Suspended => "suspended",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|x| x.as_str() == s)
    }

    /// The rule, for a user read in full (the user list filters by the same rule in
    /// SQL: `filtered_users!`).
    pub fn of(
        suspended: bool,
        left: i64,
        credits: i64,
        used: i64,
        exhausted: bool,
        overage: bool,
    ) -> Self {
        if suspended {
            Self::Suspended
        } else if out_of_balance(left, credits, exhausted, overage) {
            Self::Blocked
        } else if i64::from(used_percent(used, left + credits)) >= NEAR_LIMIT_PERCENT {
            Self::Over80
        } else {
            Self::Ok
        }
    }
}

/// Nothing left (on a plan that blocks there: one with overage goes on), or
/// exhausted (a refusal found less left than the smallest useful request, overage
/// included): the dashboard and the command line call the user blocked.
pub fn out_of_balance(allowance_left: i64, credits: i64, exhausted: bool, overage: bool) -> bool {
    exhausted || (allowance_left + credits <= 0 && !overage)
}

#[derive(Debug, Clone, Serialize)]
pub struct Overview {
    pub used_today: i64,
    pub used_cycle: i64,
    pub active_users: i64,
    pub total_users: i64,
    pub over_80: i64,
    pub blocked: i64,
    pub suspended: i64,
    pub top_users: Vec<TopUser>,
    /// One entry per local day, oldest first, days without usage included.
    pub daily: Vec<(NaiveDate, i64)>,
}

#[derive(Debug, Clone, Serialize)]
pub struct TopUser {
    pub user_id: i64,
    pub label: String,
    pub tokens: i64,
}

#[derive(Debug, Clone, Serialize, QueryableByName)]
pub struct ModelUsage {
    #[diesel(sql_type = Text)]
    pub model: String,
    #[diesel(sql_type = BigInt)]
    pub requests: i64,
    #[diesel(sql_type = BigInt)]
    pub prompt_tokens: i64,
    #[diesel(sql_type = BigInt)]
    pub completion_tokens: i64,
    #[diesel(sql_type = BigInt)]
    pub charged: i64,
}

#[derive(QueryableByName)]
struct Totals {
    #[diesel(sql_type = BigInt)]
    tokens: i64,
    #[diesel(sql_type = BigInt)]
    users: i64,
}

#[derive(QueryableByName)]
struct UserTokens {
    #[diesel(sql_type = BigInt)]
    user_id: i64,
    #[diesel(sql_type = BigInt)]
    tokens: i64,
}

#[derive(QueryableByName)]
struct HourTokens {
    #[diesel(sql_type = Text)]
    hour: String,
    #[diesel(sql_type = BigInt)]
    tokens: i64,
}

/// Runs one query, written per backend where their SQL differs.
fn load<T>(c: &mut Conn, pg: &str, sqlite: &str) -> QueryResult<Vec<T>>
where
    T: QueryableByName<diesel::pg::Pg> + QueryableByName<diesel::sqlite::Sqlite> + 'static,
{
    match c {
        AnyConnection::Postgresql(conn) => diesel::sql_query(pg).load(conn),
        AnyConnection::Sqlite(conn) => diesel::sql_query(sqlite).load(conn),
    }
}

fn ts(t: DateTime<Utc>) -> String {
    t.naive_utc().format("%Y-%m-%d %H:%M:%S").to_string()
}

/// Midnight of the local day containing `now`, in UTC.
fn local_midnight(now: DateTime<Utc>, tz: Tz) -> DateTime<Utc> {
    let day = now.with_timezone(&tz).date_naive();
    day.and_hms_opt(0, 0, 0)
        .and_then(|m| m.and_local_timezone(tz).earliest())
        .map_or(now, |m| m.with_timezone(&Utc))
}

fn usage_since(c: &mut Conn, scope: Scope, since: DateTime<Utc>) -> QueryResult<(i64, i64)> {
    let q = format!(
        "SELECT CAST(COALESCE(SUM(charged), 0) AS BIGINT) AS tokens, \
         CAST(COUNT(DISTINCT user_id) AS BIGINT) AS users \
         FROM usage_records WHERE created_at >= '{}'{}",
        ts(since),
        scope.user_clause()
    );
    let rows: Vec<Totals> = load(c, &q, &q)?;
    Ok(rows.first().map_or((0, 0), |r| (r.tokens, r.users)))
}

/// The users a query selects (search and state), boxed: the SQL form of the state
/// rule, which `UserState::of` states for a row read whole.
macro_rules! filtered_users {
    ($q:expr, $cycle:expr) => {{
        let (lo, hi) = $q.scope.bounds();
        let mut q = users::table
            .inner_join(plans::table)
            .inner_join(balances::table)
            .filter(users::distributor_id.between(lo, hi))
            .into_boxed();
        if let Some(s) = $q
            .search
            .as_deref()
            .map(str::trim)
            .filter(|s| !s.is_empty())
        {
            if let Some(id) = s.strip_prefix('#').and_then(|n| n.parse::<i64>().ok()) {
                q = q.filter(users::id.eq(id));
            } else {
                let p = like_pattern(s);
                q = q.filter(
                    lower(users::email)
                        .like(p.clone())
                        .escape('\\')
                        .or(lower(users::name).like(p.clone()).escape('\\'))
                        .or(lower(users::external_id).like(p).escape('\\')),
                );
            }
        }
        let left = balances::allowance_left + balances::credits;
        // A plan with overage goes on past the balance: blocked only when exhausted.
        let goes_on = plans::overage_cap.is_not_null();
        let near = (balances::used_this_cycle * 100_i64).ge((balances::used_this_cycle
            + balances::allowance_left
            + balances::credits)
            * NEAR_LIMIT_PERCENT);
        match $q.state {
            None => {}
            Some(UserState::Suspended) => q = q.filter(users::suspended_at.is_not_null()),
            // Blocked: nothing left, or exhausted (a refusal found less left than
            // the smallest useful request).
            Some(UserState::Blocked) => {
                q = q
                    .filter(users::suspended_at.is_null())
                    .filter(balances::cycle.eq($cycle))
                    .filter(
                        left.le(0_i64)
                            .and(goes_on.eq(false))
                            .or(balances::exhausted_at.is_not_null()),
                    )
            }
            Some(UserState::Over80) => {
                q = q
                    .filter(users::suspended_at.is_null())
                    .filter(balances::cycle.eq($cycle))
                    .filter(left.gt(0_i64).or(goes_on))
                    .filter(balances::exhausted_at.is_null())
                    .filter(near)
            }
            Some(UserState::Ok) => {
                q = q.filter(users::suspended_at.is_null()).filter(
                    balances::cycle.ne($cycle).or(left
                        .gt(0_i64)
                        .and(near.eq(false))
                        .and(balances::exhausted_at.is_null())),
                )
            }
        }
        q
    }};
}

pub(crate) fn overview(
    c: &mut Conn,
    scope: Scope,
    now: DateTime<Utc>,
    tz: Tz,
    cycle_key: &str,
    cycle_start: DateTime<Utc>,
) -> Result<Overview, StoreError> {
    let (used_today, _) = usage_since(c, scope, local_midnight(now, tz))?;
    let (used_cycle, active_users) = usage_since(c, scope, cycle_start)?;
    // Each state counted by the user list's own filter: one rule for both.
    let mut in_state = |state| -> QueryResult<i64> {
        let q = UserQuery {
            scope,
            search: None,
            state: Some(state),
            sort: UserSort::default(),
            page: 1,
            per_page: 1,
        };
        filtered_users!(q, cycle_key).count().get_result(c)
    };
    let over_80 = in_state(UserState::Over80)?;
    let blocked = in_state(UserState::Blocked)?;
    let suspended = in_state(UserState::Suspended)?;
    let (lo, hi) = scope.bounds();
    let total_users: i64 = users::table
        .filter(users::distributor_id.between(lo, hi))
        .count()
        .get_result(c)?;
    let top_sql = format!(
        "SELECT user_id, CAST(SUM(charged) AS BIGINT) AS tokens FROM usage_records \
         WHERE created_at >= '{}'{} GROUP BY user_id ORDER BY tokens DESC, user_id LIMIT 10",
        ts(cycle_start),
        scope.user_clause()
    );
    let top: Vec<UserTokens> = load(c, &top_sql, &top_sql)?;
    let mut top_users = Vec::with_capacity(top.len());
    for t in top {
        let who: Option<(Option<String>, Option<String>, Option<String>)> = users::table
            .find(t.user_id)
            .select((users::email, users::name, users::external_id))
            .first(c)
            .optional()?;
        top_users.push(TopUser {
            user_id: t.user_id,
            label: who
                .map(|(e, n, x)| label(t.user_id, e.as_deref(), n.as_deref(), x.as_deref()))
                .unwrap_or_else(|| format!("#{}", t.user_id)),
            tokens: t.tokens,
        });
    }
    Ok(Overview {
        used_today,
        used_cycle,
        active_users,
        total_users,
        over_80,
        blocked,
        suspended,
        top_users,
        daily: daily(c, now, tz, 30, Daily::Scope(scope))?,
    })
}

/// Whose usage a daily series sums.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Daily {
    User(i64),
    Scope(Scope),
}

/// Tokens per local day over the last `days` days, of one user or of a scope's users. Grouped by UTC hour in SQL, then
/// by local day here: time zones with half-hour offsets put at most 30 minutes of a
/// day's usage on the neighbouring day.
pub(crate) fn daily(
    c: &mut Conn,
    now: DateTime<Utc>,
    tz: Tz,
    days: i64,
    whose: Daily,
) -> QueryResult<Vec<(NaiveDate, i64)>> {
    let of_user = match whose {
        Daily::User(id) => format!(" AND user_id = {id}"),
        Daily::Scope(scope) => scope.user_clause(),
    };
    let today = now.with_timezone(&tz).date_naive();
    let first = today - Duration::days(days - 1);
    let since = local_midnight(now - Duration::days(days - 1), tz) - Duration::hours(1);
    let pg = format!(
        "SELECT to_char(date_trunc('hour', created_at), 'YYYY-MM-DD HH24:00:00') AS hour, \
         CAST(SUM(charged) AS BIGINT) AS tokens FROM usage_records \
         WHERE created_at >= '{0}'{of_user} GROUP BY 1",
        ts(since)
    );
    let sqlite = format!(
        "SELECT strftime('%Y-%m-%d %H:00:00', created_at) AS hour, \
         CAST(SUM(charged) AS BIGINT) AS tokens FROM usage_records \
         WHERE created_at >= '{0}'{of_user} GROUP BY 1",
        ts(since)
    );
    let rows: Vec<HourTokens> = load(c, &pg, &sqlite)?;
    let mut per_day: BTreeMap<NaiveDate, i64> =
        (0..days).map(|i| (first + Duration::days(i), 0)).collect();
    for r in rows {
        let Ok(hour) = NaiveDateTime::parse_from_str(&r.hour, "%Y-%m-%d %H:%M:%S") else {
            continue;
        };
        let day = hour.and_utc().with_timezone(&tz).date_naive();
        if let Some(total) = per_day.get_mut(&day) {
            *total += r.tokens;
        }
    }
    Ok(per_day.into_iter().collect())
}

/// A user's usage per model since `since`, most expensive first.
pub(crate) fn usage_by_model(
    c: &mut Conn,
    user_id: i64,
    since: DateTime<Utc>,
) -> QueryResult<Vec<ModelUsage>> {
    let q = format!(
        "SELECT model, CAST(COUNT(*) AS BIGINT) AS requests, \
         CAST(SUM(prompt_tokens) AS BIGINT) AS prompt_tokens, \
         CAST(SUM(completion_tokens) AS BIGINT) AS completion_tokens, \
         CAST(SUM(charged) AS BIGINT) AS charged FROM usage_records \
         WHERE user_id = {user_id} AND created_at >= '{}' \
         GROUP BY model ORDER BY charged DESC, model",
        ts(since)
    );
    load(c, &q, &q)
}

/// How a user is named where one line must do: email, else name, else LibreChat id.
pub fn label(id: i64, email: Option<&str>, name: Option<&str>, external: Option<&str>) -> String {
    email
        .or(name)
        .map(str::to_owned)
        .or_else(|| external.map(|x| format!("#{id} ({x})")))
        .unwrap_or_else(|| format!("#{id}"))
}

/// Which users to list, and how.
#[derive(Debug, Clone)]
pub struct UserQuery {
    /// Whose users: never defaulted, so no list forgets it.
    pub scope: Scope,
    pub search: Option<String>,
    pub state: Option<UserState>,
    pub sort: UserSort,
    pub page: i64,
    pub per_page: i64,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum UserSort {
    /// Most used this cycle first.
    #[default]
    Used,
    /// Least left first.
    Remaining,
    Name,
    Newest,
}

impl UserSort {
    pub const ALL: [Self; 4] = [Self::Used, Self::Remaining, Self::Name, Self::Newest];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Used => "used",
            Self::Remaining => "remaining",
            Self::Name => "name",
            Self::Newest => "newest",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|x| x.as_str() == s)
    }
}

/// One row of the user list, with this cycle's figures (a user whose cycle has not
/// rolled yet shows what the rollover will give them).
#[derive(Debug, Clone, Serialize)]
pub struct UserRow {
    pub id: i64,
    pub external_id: Option<String>,
    pub email: Option<String>,
    pub name: Option<String>,
    pub plan: String,
    pub used: i64,
    pub remaining: i64,
    pub used_percent: u8,
    pub state: UserState,
}

type ListRow = (
    i64,
    Option<String>,
    Option<String>,
    Option<String>,
    Option<NaiveDateTime>,
    String,
    i64,
    String,
    i64,
    i64,
    i64,
    i64,
    Option<NaiveDateTime>,
    Option<i64>,
);

diesel::define_sql_function! {
    /// SQL `lower`, the same on both backends.
    fn lower(x: diesel::sql_types::Nullable<Text>) -> diesel::sql_types::Nullable<Text>;
}

/// Escapes `%`, `_` and `\` so a search string matches literally inside `LIKE`.
fn like_pattern(s: &str) -> String {
    let mut out = String::from("%");
    for ch in s.to_lowercase().chars() {
        if matches!(ch, '%' | '_' | '\\') {
            out.push('\\');
        }
        out.push(ch);
    }
    out.push('%');
    out
}

/// A page of users and how many match in all.
pub(crate) fn list_users(
    c: &mut Conn,
    q: &UserQuery,
    cycle_key: &str,
) -> Result<(Vec<UserRow>, i64), StoreError> {
    let total: i64 = filtered_users!(q, cycle_key).count().get_result(c)?;
    let per_page = q.per_page.clamp(1, 200);
    let page = q.page.max(1);
    let base = filtered_users!(q, cycle_key).select((
        users::id,
        users::external_id,
        users::email,
        users::name,
        users::suspended_at,
        plans::name,
        plans::monthly_allowance,
        balances::cycle,
        balances::allowance_left,
        balances::credits,
        balances::held,
        balances::used_this_cycle,
        balances::exhausted_at,
        plans::overage_cap,
    ));
    let sorted = match q.sort {
        UserSort::Used => base.order((balances::used_this_cycle.desc(), users::id.asc())),
        UserSort::Remaining => base.order((
            (balances::allowance_left + balances::credits).asc(),
            users::id.asc(),
        )),
        UserSort::Name => base.order((
            lower(users::name).asc(),
            lower(users::email).asc(),
            users::id.asc(),
        )),
        UserSort::Newest => base.order(users::id.desc()),
    };
    let rows: Vec<ListRow> = sorted
        .limit(per_page)
        .offset((page - 1).saturating_mul(per_page))
        .load(c)?;
    let out = rows
        .into_iter()
        .map(
            |(
                id,
                external_id,
                email,
                name,
                suspended_at,
                plan,
                allowance,
                cycle,
                left,
                credits,
                held,
                used,
                exhausted_at,
                overage_cap,
            )| {
                // Not rolled yet: the next request or page view starts the new cycle.
                let (left, used, exhausted) = if cycle == cycle_key {
                    (left, used, exhausted_at.is_some())
                } else {
                    (allowance, 0, false)
                };
                let pct = used_percent(used, left + credits);
                let state = UserState::of(
                    suspended_at.is_some(),
                    left,
                    credits,
                    used,
                    exhausted,
                    overage_cap.is_some(),
                );
                UserRow {
                    id,
                    external_id,
                    email,
                    name,
                    plan,
                    used,
                    remaining: left + credits - held,
                    used_percent: pct,
                    state,
                }
            },
        )
        .collect();
    Ok((out, total))
}
