//! Reports of use over a period, and the CSV exports of usage and of the ledger.
//!
//! A report sums the usage records of the users a scope reaches, grouped one way
//! (distributor, plan, user, model, day, conversation). Exports are written page by
//! page (`EXPORT_PAGE` rows, each page its own query), so that a large
//! export never holds more than a page in memory and never holds a long read open on
//! the database.
//!
//! Aggregates are SQL text built only from values tokengate formats itself (ids,
//! timestamps); nothing a user typed reaches them.

use crate::db::schema::{distributors, ledger, plans, usage_records, users};
use crate::db::{AnyConnection, StoreError};
use crate::domain::{Cycle, Scope};
use chrono::{DateTime, NaiveDate, NaiveDateTime, Utc};
use chrono_tz::Tz;
use diesel::dsl::sql;
use diesel::prelude::*;
use diesel::sql_types::{BigInt, Bool, Nullable, Text, Timestamp};
use std::collections::BTreeMap;

type Conn = AnyConnection;

/// Rows an export reads at a time.
pub const EXPORT_PAGE: i64 = 1_000;

/// How a report groups its rows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GroupBy {
    Distributor,
    Plan,
    User,
    Model,
    Day,
    Conversation,
}

impl GroupBy {
    pub const ALL: [Self; 6] = [
        Self::Day,
        Self::User,
        Self::Plan,
        Self::Model,
        Self::Distributor,
        Self::Conversation,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Distributor => "distributor",
            Self::Plan => "plan",
            Self::User => "user",
            Self::Model => "model",
            Self::Day => "day",
            Self::Conversation => "conversation",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|g| g.as_str() == s)
    }
}

/// Whole local days, `from` to `to` inclusive.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Period {
    pub from: NaiveDate,
    pub to: NaiveDate,
}

/// Longest period a report or an export covers, in days.
pub const MAX_PERIOD_DAYS: i64 = 3_660;

impl Period {
    /// `None` when `to` is before `from` or the period is longer than ten years.
    pub fn new(from: NaiveDate, to: NaiveDate) -> Option<Self> {
        let days = (to - from).num_days();
        (0..MAX_PERIOD_DAYS)
            .contains(&days)
            .then_some(Self { from, to })
    }

    /// The period's bounds in UTC: the start of `from` and of the day after `to`.
    pub fn bounds(self, tz: Tz) -> (NaiveDateTime, NaiveDateTime) {
        let midnight = |d: NaiveDate| {
            d.and_hms_opt(0, 0, 0)
                .and_then(|m| m.and_local_timezone(tz).earliest())
                .map_or_else(
                    || d.and_hms_opt(0, 0, 0).unwrap_or_default(),
                    |m| m.with_timezone(&Utc).naive_utc(),
                )
        };
        (
            midnight(self.from),
            midnight(self.to.succ_opt().unwrap_or(self.to)),
        )
    }
}

/// One row of a report.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct ReportRow {
    /// What the row is of: an id, a model, a day (YYYY-MM-DD), a conversation.
    pub key: String,
    /// How it reads: a name, an email; the key when there is nothing better.
    pub label: String,
    pub requests: i64,
    pub input_tokens: i64,
    pub output_tokens: i64,
    pub charged: i64,
    pub overage_tokens: i64,
    /// In micro-reais.
    pub overage_cost: i64,
    /// What plan prices brought in the cycles the period touches (centavos), for
    /// the groupings they divide into: plan, distributor, user.
    pub revenue: Option<i64>,
}

impl ReportRow {
    /// A row of `key` with nothing used, labelled by its key.
    fn unused(key: String) -> Self {
        Self {
            label: key.clone(),
            key,
            requests: 0,
            input_tokens: 0,
            output_tokens: 0,
            charged: 0,
            overage_tokens: 0,
            overage_cost: 0,
            revenue: None,
        }
    }
}

#[derive(QueryableByName)]
struct Sums {
    #[diesel(sql_type = Nullable<Text>)]
    key: Option<String>,
    #[diesel(sql_type = BigInt)]
    requests: i64,
    #[diesel(sql_type = BigInt)]
    input_tokens: i64,
    #[diesel(sql_type = BigInt)]
    output_tokens: i64,
    #[diesel(sql_type = BigInt)]
    charged: i64,
    #[diesel(sql_type = BigInt)]
    overage_tokens: i64,
    #[diesel(sql_type = BigInt)]
    overage_cost: i64,
}

fn ts(t: NaiveDateTime) -> String {
    t.format("%Y-%m-%d %H:%M:%S").to_string()
}

/// The use of the users `scope` reaches (of one user, with `user`) in `period`,
/// grouped by `group`, largest charge first (days in order).
pub(super) fn report(
    c: &mut Conn,
    scope: Scope,
    tz: Tz,
    period: Period,
    group: GroupBy,
    user: Option<i64>,
    current: Cycle,
) -> Result<Vec<ReportRow>, StoreError> {
    let (from, to) = period.bounds(tz);
    // Days are grouped by UTC hour in SQL and folded into local days below.
    let (pg_key, sqlite_key) = match group {
        GroupBy::Distributor => (
            "CAST(u.distributor_id AS TEXT)".to_owned(),
            "CAST(u.distributor_id AS TEXT)".to_owned(),
        ),
        GroupBy::Plan => (
            "CAST(r.plan_id AS TEXT)".to_owned(),
            "CAST(r.plan_id AS TEXT)".to_owned(),
        ),
        GroupBy::User => (
            "CAST(r.user_id AS TEXT)".to_owned(),
            "CAST(r.user_id AS TEXT)".to_owned(),
        ),
        GroupBy::Model => ("r.model".to_owned(), "r.model".to_owned()),
        GroupBy::Day => (
            "to_char(date_trunc('hour', r.created_at), 'YYYY-MM-DD HH24:00:00')".to_owned(),
            "strftime('%Y-%m-%d %H:00:00', r.created_at)".to_owned(),
        ),
        GroupBy::Conversation => (
            "r.conversation_id".to_owned(),
            "r.conversation_id".to_owned(),
        ),
    };
    let (lo, hi) = scope.bounds();
    let of_user = user.map_or(String::new(), |id| format!(" AND r.user_id = {id}"));
    let sql = |key: &str| {
        format!(
            "SELECT {key} AS key, CAST(COUNT(*) AS BIGINT) AS requests, \
             CAST(COALESCE(SUM(r.prompt_tokens), 0) AS BIGINT) AS input_tokens, \
             CAST(COALESCE(SUM(r.completion_tokens), 0) AS BIGINT) AS output_tokens, \
             CAST(COALESCE(SUM(r.charged), 0) AS BIGINT) AS charged, \
             CAST(COALESCE(SUM(r.overage_tokens), 0) AS BIGINT) AS overage_tokens, \
             CAST(COALESCE(SUM(r.overage_cost), 0) AS BIGINT) AS overage_cost \
             FROM usage_records r JOIN users u ON u.id = r.user_id \
             WHERE r.created_at >= '{}' AND r.created_at < '{}' \
             AND u.distributor_id BETWEEN {lo} AND {hi}{of_user} GROUP BY 1",
            ts(from),
            ts(to)
        )
    };
    let sums: Vec<Sums> = match c {
        AnyConnection::Postgresql(pg) => diesel::sql_query(sql(&pg_key)).load(pg)?,
        AnyConnection::Sqlite(lite) => diesel::sql_query(sql(&sqlite_key)).load(lite)?,
    };
    let mut rows: Vec<ReportRow> = if group == GroupBy::Day {
        by_local_day(sums, tz, period)
    } else {
        sums.into_iter()
            .map(|s| ReportRow {
                label: s.key.clone().unwrap_or_default(),
                key: s.key.unwrap_or_default(),
                requests: s.requests,
                input_tokens: s.input_tokens,
                output_tokens: s.output_tokens,
                charged: s.charged,
                overage_tokens: s.overage_tokens,
                overage_cost: s.overage_cost,
                revenue: None,
            })
            .collect()
    };
    if let Some(revenue) = super::revenue::by_key(c, scope, period, group, user, current)? {
        // Every plan and distributor that brought revenue is listed; users only
        // when they used something (every paying user would be a row).
        add_revenue(&mut rows, revenue, group != GroupBy::User);
    }
    label(c, group, &mut rows)?;
    if group != GroupBy::Day {
        rows.sort_by(|a, b| {
            b.charged
                .cmp(&a.charged)
                .then_with(|| a.label.cmp(&b.label))
        });
    }
    Ok(rows)
}

/// Each row's revenue, and with `unused`, a row (with no use) for each key that
/// brought revenue without using anything.
fn add_revenue(rows: &mut Vec<ReportRow>, mut revenue: BTreeMap<String, i64>, unused: bool) {
    for row in rows.iter_mut() {
        row.revenue = Some(revenue.remove(&row.key).unwrap_or(0));
    }
    if !unused {
        return;
    }
    revenue.retain(|_, centavos| *centavos > 0);
    rows.extend(revenue.into_iter().map(|(key, centavos)| ReportRow {
        revenue: Some(centavos),
        ..ReportRow::unused(key)
    }));
}

/// Hours folded into the period's local days, every day listed.
fn by_local_day(sums: Vec<Sums>, tz: Tz, period: Period) -> Vec<ReportRow> {
    let mut days: BTreeMap<NaiveDate, ReportRow> = BTreeMap::new();
    let mut day = period.from;
    while day <= period.to {
        let key = day.format("%Y-%m-%d").to_string();
        days.insert(day, ReportRow::unused(key));
        match day.succ_opt() {
            Some(next) => day = next,
            None => break,
        }
    }
    for s in sums {
        let Some(hour) = s
            .key
            .as_deref()
            .and_then(|k| NaiveDateTime::parse_from_str(k, "%Y-%m-%d %H:%M:%S").ok())
        else {
            continue;
        };
        let local = hour.and_utc().with_timezone(&tz).date_naive();
        if let Some(row) = days.get_mut(&local) {
            row.requests += s.requests;
            row.input_tokens += s.input_tokens;
            row.output_tokens += s.output_tokens;
            row.charged += s.charged;
            row.overage_tokens += s.overage_tokens;
            row.overage_cost += s.overage_cost;
        }
    }
    days.into_values().collect()
}

/// Names the rows' keys: a distributor's or a plan's name, a user's email.
fn label(c: &mut Conn, group: GroupBy, rows: &mut [ReportRow]) -> Result<(), StoreError> {
    let ids: Vec<i64> = rows.iter().filter_map(|r| r.key.parse().ok()).collect();
    let names: BTreeMap<i64, String> = names_of(c, group, &ids)?.into_iter().collect();
    for row in rows.iter_mut() {
        if let Some(name) = row.key.parse::<i64>().ok().and_then(|id| names.get(&id)) {
            row.label.clone_from(name);
        }
    }
    Ok(())
}

/// The names of `ids` of a grouping's kind.
fn names_of(c: &mut Conn, group: GroupBy, ids: &[i64]) -> Result<Vec<(i64, String)>, StoreError> {
    Ok(match group {
        GroupBy::Distributor => distributors::table
            .filter(distributors::id.eq_any(ids))
            .select((distributors::id, distributors::name))
            .load(c)?,
        GroupBy::Plan => plans::table
            .filter(plans::id.eq_any(ids))
            .select((plans::id, plans::name))
            .load(c)?,
        GroupBy::User => users::table
            .filter(users::id.eq_any(ids))
            .select((users::id, users::email, users::name, users::external_id))
            .load::<(i64, Option<String>, Option<String>, Option<String>)>(c)?
            .into_iter()
            .map(|(id, e, n, x)| {
                (
                    id,
                    super::stats::label(id, e.as_deref(), n.as_deref(), x.as_deref()),
                )
            })
            .collect(),
        _ => Vec::new(),
    })
}

/// One usage record as the usage export writes it.
#[derive(Debug, Clone, Queryable)]
pub struct UsageLine {
    pub id: i64,
    pub created_at: NaiveDateTime,
    pub request_id: String,
    pub distributor: String,
    pub user_id: i64,
    pub user_email: Option<String>,
    pub plan: Option<String>,
    pub model: String,
    pub conversation: Option<String>,
    pub prompt_tokens: i64,
    pub completion_tokens: i64,
    pub charged: i64,
    pub overage_tokens: i64,
    pub overage_cost: i64,
    pub outcome: String,
}

/// The next page of usage records in the period after `after` (time and id, the
/// last row of the previous page): a range of the time index (SQLite's holds the
/// row id beside the time; PostgreSQL sorts the few rows of one instant), so each
/// page costs the same however deep into the export it is.
pub(super) fn usage_page(
    c: &mut Conn,
    scope: Scope,
    (from, to): (NaiveDateTime, NaiveDateTime),
    after: Option<(NaiveDateTime, i64)>,
) -> Result<Vec<UsageLine>, StoreError> {
    let (lo, hi) = scope.bounds();
    let (since, last) = after.unwrap_or((from, 0));
    let past = sql::<Bool>("(usage_records.created_at, usage_records.id) > (")
        .bind::<Timestamp, _>(since)
        .sql(", ")
        .bind::<BigInt, _>(last)
        .sql(")");
    Ok(usage_records::table
        .inner_join(users::table.inner_join(distributors::table))
        .left_join(plans::table.on(usage_records::plan_id.eq(plans::id.nullable())))
        .filter(users::distributor_id.between(lo, hi))
        .filter(usage_records::created_at.ge(from))
        .filter(usage_records::created_at.lt(to))
        .filter(past)
        .order((usage_records::created_at.asc(), usage_records::id.asc()))
        .limit(EXPORT_PAGE)
        .select((
            usage_records::id,
            usage_records::created_at,
            usage_records::request_id,
            distributors::name,
            usage_records::user_id,
            users::email,
            plans::name.nullable(),
            usage_records::model,
            usage_records::conversation_id,
            usage_records::prompt_tokens,
            usage_records::completion_tokens,
            usage_records::charged,
            usage_records::overage_tokens,
            usage_records::overage_cost,
            usage_records::outcome,
        ))
        .load(c)?)
}

/// One ledger entry as the ledger export writes it.
#[derive(Debug, Clone, Queryable)]
pub struct LedgerLine {
    pub id: i64,
    pub created_at: NaiveDateTime,
    pub distributor: String,
    pub user_id: i64,
    pub user_email: Option<String>,
    pub kind: String,
    pub delta_allowance: i64,
    pub delta_credits: i64,
    pub allowance_after: i64,
    pub credits_after: i64,
    pub actor: String,
    pub note: Option<String>,
    pub request_id: Option<String>,
}

/// The next page of ledger entries after `after` (by id) in the period. The ledger
/// is append-only and has no index on time: its id range is the page.
pub(super) fn ledger_page(
    c: &mut Conn,
    scope: Scope,
    (from, to): (NaiveDateTime, NaiveDateTime),
    after: i64,
) -> Result<Vec<LedgerLine>, StoreError> {
    let (lo, hi) = scope.bounds();
    Ok(ledger::table
        .inner_join(users::table.inner_join(distributors::table))
        .filter(users::distributor_id.between(lo, hi))
        .filter(ledger::id.gt(after))
        .filter(ledger::created_at.ge(from))
        .filter(ledger::created_at.lt(to))
        .order(ledger::id.asc())
        .limit(EXPORT_PAGE)
        .select((
            ledger::id,
            ledger::created_at,
            distributors::name,
            ledger::user_id,
            users::email,
            ledger::kind,
            ledger::delta_allowance,
            ledger::delta_credits,
            ledger::allowance_after,
            ledger::credits_after,
            ledger::actor,
            ledger::note,
            ledger::request_id,
        ))
        .load(c)?)
}

/// A CSV field: quoted when it holds a separator, a quote or a line break, and
/// with a leading apostrophe when a spreadsheet would take it for a formula.
pub fn csv_field(out: &mut String, value: &str) {
    // A number (a negative delta, a debt) stays a number.
    let number = value.parse::<i64>().is_ok() || value.parse::<f64>().is_ok_and(f64::is_finite);
    let formula = !number && value.starts_with(['=', '+', '-', '@', '\t', '\r']);
    let quote = formula || value.contains([',', '"', '\n', '\r', ';']);
    if quote {
        out.push('"');
    }
    if formula {
        out.push('\'');
    }
    for ch in value.chars() {
        if ch == '"' {
            out.push('"');
        }
        out.push(ch);
    }
    if quote {
        out.push('"');
    }
}

/// A CSV line of `fields`, ended by CRLF.
pub fn csv_line(out: &mut String, fields: &[&str]) {
    for (i, f) in fields.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        csv_field(out, f);
    }
    out.push_str("\r\n");
}

/// A time as the exports write it: UTC, ISO 8601.
pub fn iso(t: NaiveDateTime) -> String {
    DateTime::<Utc>::from_naive_utc_and_offset(t, Utc).to_rfc3339()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn csv_fields_are_quoted_and_never_formulas() {
        let mut out = String::new();
        csv_line(
            &mut out,
            &[
                "a",
                "b,c",
                "say \"hi\"",
                "=HYPERLINK(\"x\")",
                "-1",
                "-2+3",
                "line\nbreak",
            ],
        );
        // A number stays a number (a negative delta, a debt); a formula is text.
        assert_eq!(
            out,
            "a,\"b,c\",\"say \"\"hi\"\"\",\"'=HYPERLINK(\"\"x\"\")\",-1,\"'-2+3\",\"line\nbreak\"\r\n"
        );
    }

    #[test]
    fn a_period_is_whole_local_days_and_bounded() {
        let d = |s: &str| NaiveDate::parse_from_str(s, "%Y-%m-%d").unwrap_or_default();
        let Some(p) = Period::new(d("2026-12-01"), d("2026-12-31")) else {
            panic!("a valid period")
        };
        let (from, to) = p.bounds(chrono_tz::America::Sao_Paulo);
        assert_eq!(ts(from), "2026-12-01 03:00:00");
        assert_eq!(ts(to), "2027-01-01 03:00:00");
        assert!(Period::new(d("2026-12-02"), d("2026-12-01")).is_none());
        assert!(Period::new(d("2000-01-01"), d("2026-12-01")).is_none());
        assert!(Period::new(d("2026-12-01"), d("2026-12-01")).is_some());
    }

    #[test]
    fn every_grouping_reads_back() {
        for g in GroupBy::ALL {
            assert_eq!(GroupBy::parse(g.as_str()), Some(g));
        }
        assert_eq!(GroupBy::parse("users; DROP TABLE"), None);
    }
}
