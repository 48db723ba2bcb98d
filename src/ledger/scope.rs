//! What an admin reaches. The dashboard reads and writes only through a `Scoped`
//! ledger, made from the signed-in admin's scope: every list is filtered by it and
//! every id is checked against it, and an id the scope does not reach is
//! `NotFound`, exactly as an id that does not exist (a 404 that never confirms
//! another distributor's rows exist). The dashboard's pages have no other handle on
//! the ledger, so a page cannot forget the scope; the isolation test tries every
//! route with another distributor's ids.
//!
//! Rows never change distributor (a user, a plan, a request, a code batch keeps
//! its owner for life), so a check read before a write stays true through it.

use super::{
    Actor, Ledger, LedgerError, PlanRef, UserRef, UserSummary, audit, credits, reports, stats,
    views,
};
use crate::alerts::Alert;
use crate::db::schema::{credit_requests, plans, users};
use crate::db::{AnyConnection, StoreError};
use crate::domain::{Cycle, DistributorId, PlanChange, PlanSpec, Scope, TokenAmount};
use chrono::{DateTime, NaiveDateTime, Utc};
use diesel::prelude::*;

/// The install's own distributor is blank in exports: an install without
/// distributors shows no such name.
fn shown_distributor(name: &str) -> &str {
    if name == crate::domain::distributor::DIRECT_NAME {
        ""
    } else {
        name
    }
}

/// `fields` with `distributor` put in at `at` when exports name distributors.
fn with_distributor<'a>(
    named: bool,
    at: usize,
    fields: &[&'a str],
    distributor: &'a str,
) -> Vec<&'a str> {
    let mut out = fields.to_vec();
    if named {
        out.insert(at.min(out.len()), distributor);
    }
    out
}

/// The ledger as one admin's scope reaches it.
#[derive(Clone)]
pub struct Scoped {
    ledger: Ledger,
    scope: Scope,
}

impl Ledger {
    /// The ledger as `scope` reaches it: the only handle the dashboard has.
    pub fn scoped(&self, scope: Scope) -> Scoped {
        Scoped {
            ledger: self.clone(),
            scope,
        }
    }
}

impl Scoped {
    pub fn scope(&self) -> Scope {
        self.scope
    }

    pub fn now(&self) -> DateTime<Utc> {
        self.ledger.now()
    }

    pub fn current_cycle(&self) -> Cycle {
        self.ledger.current_cycle()
    }

    /// The user's distributor, if this scope reaches the user.
    fn reach_user(&self, id: i64) -> Result<DistributorId, LedgerError> {
        let mut conn = self.ledger.db.conn()?;
        let owner: Option<i64> = users::table
            .find(id)
            .select(users::distributor_id)
            .first(&mut conn)
            .optional()?;
        match owner.map(DistributorId::from_db) {
            Some(d) if self.scope.reaches(d) => Ok(d),
            _ => Err(LedgerError::UserNotFound(format!("#{id}"))),
        }
    }

    /// A plan this scope may change: its own (the global scope: any).
    fn own_plan(&self, id: i64) -> Result<(), LedgerError> {
        match self.plan_owner(id)? {
            Some(d) if self.scope.reaches(d) => Ok(()),
            _ => Err(LedgerError::PlanNotFound(format!("#{id}"))),
        }
    }

    fn plan_owner(&self, id: i64) -> Result<Option<DistributorId>, LedgerError> {
        let mut conn = self.ledger.db.conn()?;
        Ok(plans::table
            .find(id)
            .select(plans::distributor_id)
            .first::<i64>(&mut conn)
            .optional()?
            .map(DistributorId::from_db))
    }

    fn reach_request(&self, id: i64) -> Result<(), LedgerError> {
        let mut conn = self.ledger.db.conn()?;
        let owner: Option<i64> = credit_requests::table
            .inner_join(users::table)
            .filter(credit_requests::id.eq(id))
            .select(users::distributor_id)
            .first(&mut conn)
            .optional()?;
        match owner.map(DistributorId::from_db) {
            Some(d) if self.scope.reaches(d) => Ok(()),
            _ => Err(LedgerError::UserNotFound(format!("request #{id}"))),
        }
    }

    fn global_only(&self) -> Result<(), LedgerError> {
        if self.scope.is_global() {
            Ok(())
        } else {
            Err(LedgerError::PlanNotFound("global settings".into()))
        }
    }

    /// Whether exports name each row's distributor: for a global admin of an
    /// install with distributors (an install without them never shows the word).
    fn names_distributors(&self) -> Result<bool, StoreError> {
        Ok(self.scope.is_global() && !self.ledger.list_distributors()?.is_empty())
    }

    // --- reads ---------------------------------------------------------------

    pub fn overview(&self) -> Result<stats::Overview, StoreError> {
        self.ledger.overview_in(self.scope)
    }

    /// Each distributor with its users and pool: the global scope's only.
    pub fn distributors(&self) -> Result<Vec<super::distributors::DistributorRow>, StoreError> {
        if !self.scope.is_global() {
            return Ok(Vec::new());
        }
        self.ledger.list_distributors()
    }

    /// A page of the users this scope reaches (whatever scope `q` names).
    pub fn list_users_page(
        &self,
        mut q: stats::UserQuery,
    ) -> Result<(Vec<stats::UserRow>, i64), StoreError> {
        q.scope = self.scope;
        self.ledger.list_users_page(&q)
    }

    pub fn user_summary(&self, id: i64) -> Result<UserSummary, LedgerError> {
        self.reach_user(id)?;
        self.ledger.user_summary(id)
    }

    pub fn recent_ledger_entries(
        &self,
        id: i64,
        limit: i64,
    ) -> Result<Vec<views::LedgerEntry>, LedgerError> {
        self.reach_user(id)?;
        Ok(self.ledger.recent_ledger_entries(id, limit)?)
    }

    pub fn usage_by_model(&self, id: i64) -> Result<Vec<stats::ModelUsage>, LedgerError> {
        self.reach_user(id)?;
        Ok(self.ledger.usage_by_model(id)?)
    }

    pub fn user_alerts(&self, id: i64, limit: i64) -> Result<Vec<Alert>, LedgerError> {
        self.reach_user(id)?;
        Ok(crate::alerts::list(
            &self.ledger.db,
            self.scope,
            Some(id),
            limit,
        )?)
    }

    pub fn user_audit(&self, id: i64, limit: i64) -> Result<Vec<audit::AuditEntry>, LedgerError> {
        self.reach_user(id)?;
        let mut conn = self.ledger.db.conn()?;
        Ok(audit::entries(&mut conn, self.scope, Some(id), limit, 0)?)
    }

    /// The plans this scope sees: its own and the install's.
    pub fn plans(&self) -> Result<Vec<views::PlanRow>, StoreError> {
        self.ledger.plans_in(self.scope)
    }

    /// The plans user `id` may be moved to by this scope: those offered to the
    /// user's distributor that this scope sees.
    pub fn plans_for_user(&self, id: i64) -> Result<Vec<views::PlanRow>, LedgerError> {
        let owner = self.reach_user(id)?;
        Ok(self
            .plans()?
            .into_iter()
            .filter(|p| {
                let plan_owner = DistributorId::from_db(p.distributor_id);
                plan_owner.is_direct() || plan_owner == owner
            })
            .collect())
    }

    pub fn weights(&self) -> Result<Vec<views::ModelRow>, LedgerError> {
        self.global_only()?;
        Ok(self.ledger.weights()?)
    }

    pub fn alerts(&self, limit: i64) -> Result<Vec<Alert>, StoreError> {
        crate::alerts::list(&self.ledger.db, self.scope, None, limit)
    }

    pub fn credit_requests(
        &self,
        which: credits::Which,
        limit: i64,
    ) -> Result<Vec<credits::CreditRequest>, StoreError> {
        let mut conn = self.ledger.db.conn()?;
        credits::requests(&mut conn, self.scope, which, None, limit)
    }

    pub fn user_credit_requests(
        &self,
        id: i64,
        limit: i64,
    ) -> Result<Vec<credits::CreditRequest>, LedgerError> {
        self.reach_user(id)?;
        let mut conn = self.ledger.db.conn()?;
        Ok(credits::requests(
            &mut conn,
            self.scope,
            credits::Which::All,
            Some(id),
            limit,
        )?)
    }

    pub fn open_credit_requests(&self) -> Result<i64, StoreError> {
        let mut conn = self.ledger.db.conn()?;
        credits::open_requests(&mut conn, self.scope)
    }

    pub fn code_batches(&self, limit: i64) -> Result<Vec<credits::Batch>, StoreError> {
        let mut conn = self.ledger.db.conn()?;
        credits::batches(&mut conn, self.scope, limit)
    }

    pub fn audit_count(&self) -> Result<i64, StoreError> {
        let mut conn = self.ledger.db.conn()?;
        audit::count(&mut conn, self.scope)
    }

    pub fn audit_entries(
        &self,
        limit: i64,
        offset: i64,
    ) -> Result<Vec<audit::AuditEntry>, StoreError> {
        let mut conn = self.ledger.db.conn()?;
        audit::entries(&mut conn, self.scope, None, limit, offset)
    }

    /// The use of the users this scope reaches in `period`, grouped by `group`.
    pub fn report(
        &self,
        period: reports::Period,
        group: reports::GroupBy,
    ) -> Result<Vec<reports::ReportRow>, StoreError> {
        let mut conn = self.ledger.db.conn()?;
        reports::report(
            &mut conn,
            self.scope,
            self.ledger.tz,
            period,
            group,
            None,
            self.ledger.current_cycle(),
        )
    }

    /// Which cycles `period` touches, and whether each one's revenue is live,
    /// recorded at its close, or unknown.
    pub fn revenue_cycles(
        &self,
        period: reports::Period,
    ) -> Result<super::revenue::RevenueCycles, StoreError> {
        let mut conn = self.ledger.db.conn()?;
        super::revenue::cycles(&mut conn, period, self.ledger.current_cycle())
    }

    /// User `id`'s use in `period` per LibreChat conversation.
    pub fn user_conversations(
        &self,
        id: i64,
        period: reports::Period,
    ) -> Result<Vec<reports::ReportRow>, LedgerError> {
        self.reach_user(id)?;
        let mut conn = self.ledger.db.conn()?;
        Ok(reports::report(
            &mut conn,
            self.scope,
            self.ledger.tz,
            period,
            reports::GroupBy::Conversation,
            Some(id),
            self.ledger.current_cycle(),
        )?)
    }

    /// Writes the usage records of `period` as CSV, a page at a time, to `sink`;
    /// stops early (returning what was written) when `sink` says the reader is gone.
    pub fn export_usage(
        &self,
        period: reports::Period,
        sink: impl FnMut(String) -> bool,
    ) -> Result<u64, StoreError> {
        let bounds = period.bounds(self.ledger.tz);
        let named = self.names_distributors()?;
        let header = [
            "created_at",
            "request_id",
            "user_id",
            "user_email",
            "plan",
            "model",
            "conversation_id",
            "input_tokens",
            "output_tokens",
            "charged",
            "overage_tokens",
            "overage_cost_brl",
            "outcome",
        ];
        self.paged(
            &with_distributor(named, 1, &header, "distributor"),
            |c, after| reports::usage_page(c, self.scope, bounds, after),
            |r| (r.created_at, r.id),
            |out, r| {
                let numbers = [
                    r.user_id.to_string(),
                    r.prompt_tokens.to_string(),
                    r.completion_tokens.to_string(),
                    r.charged.to_string(),
                    r.overage_tokens.to_string(),
                ];
                let cost = crate::domain::money::format_micro_plain(r.overage_cost);
                let created = reports::iso(r.created_at);
                let fields = [
                    created.as_str(),
                    &r.request_id,
                    &numbers[0],
                    r.user_email.as_deref().unwrap_or(""),
                    r.plan.as_deref().unwrap_or(""),
                    &r.model,
                    r.conversation.as_deref().unwrap_or(""),
                    &numbers[1],
                    &numbers[2],
                    &numbers[3],
                    &numbers[4],
                    &cost,
                    &r.outcome,
                ];
                let distributor = shown_distributor(&r.distributor);
                reports::csv_line(out, &with_distributor(named, 1, &fields, distributor));
            },
            sink,
        )
    }

    /// Writes the ledger entries of `period` as CSV, as `export_usage`.
    pub fn export_ledger(
        &self,
        period: reports::Period,
        sink: impl FnMut(String) -> bool,
    ) -> Result<u64, StoreError> {
        let bounds = period.bounds(self.ledger.tz);
        let named = self.names_distributors()?;
        let header = [
            "created_at",
            "user_id",
            "user_email",
            "kind",
            "delta_allowance",
            "delta_credits",
            "allowance_after",
            "credits_after",
            "actor",
            "note",
            "request_id",
        ];
        self.paged(
            &with_distributor(named, 1, &header, "distributor"),
            |c, after| reports::ledger_page(c, self.scope, bounds, after.unwrap_or(0)),
            |r| r.id,
            |out, r| {
                let numbers = [
                    r.user_id.to_string(),
                    r.delta_allowance.to_string(),
                    r.delta_credits.to_string(),
                    r.allowance_after.to_string(),
                    r.credits_after.to_string(),
                ];
                let created = reports::iso(r.created_at);
                let fields = [
                    created.as_str(),
                    &numbers[0],
                    r.user_email.as_deref().unwrap_or(""),
                    &r.kind,
                    &numbers[1],
                    &numbers[2],
                    &numbers[3],
                    &numbers[4],
                    &r.actor,
                    r.note.as_deref().unwrap_or(""),
                    r.request_id.as_deref().unwrap_or(""),
                ];
                let distributor = shown_distributor(&r.distributor);
                reports::csv_line(out, &with_distributor(named, 1, &fields, distributor));
            },
            sink,
        )
    }

    /// An export's one loop: the header, then each page (`next_page` after the key
    /// of the previous page's last row, each page its own query on a connection held
    /// only for it) as CSV lines to `sink`, until a short page or a reader gone.
    /// Returns the rows written.
    fn paged<R, K>(
        &self,
        header: &[&str],
        mut next_page: impl FnMut(&mut AnyConnection, Option<K>) -> Result<Vec<R>, StoreError>,
        key_of: impl Fn(&R) -> K,
        mut line: impl FnMut(&mut String, &R),
        mut sink: impl FnMut(String) -> bool,
    ) -> Result<u64, StoreError> {
        let mut out = String::new();
        reports::csv_line(&mut out, header);
        let mut written = 0;
        let mut after = None;
        loop {
            let page = {
                let mut conn = self.ledger.db.conn()?;
                next_page(&mut conn, after)?
            };
            for r in &page {
                line(&mut out, r);
            }
            written += page.len() as u64;
            let full = page.len() as i64 == reports::EXPORT_PAGE;
            after = page.last().map(&key_of);
            if !sink(std::mem::take(&mut out)) || !full {
                return Ok(written);
            }
        }
    }

    // --- writes --------------------------------------------------------------

    pub fn grant_credits(
        &self,
        id: i64,
        amount: TokenAmount,
        actor: &Actor,
        note: Option<&str>,
    ) -> Result<UserSummary, LedgerError> {
        self.reach_user(id)?;
        self.ledger
            .grant_credits(&UserRef::Id(id), amount, actor, note)
    }

    /// Moves user `id` to plan `plan_id`: both within reach, and the plan offered
    /// to the user's distributor.
    pub fn change_plan(&self, id: i64, plan_id: i64, actor: &Actor) -> Result<(), LedgerError> {
        let owner = self.reach_user(id)?;
        match self.plan_owner(plan_id)? {
            Some(p) if p.is_direct() || (p == owner && self.scope.reaches(p)) => {}
            _ => return Err(LedgerError::PlanNotFound(format!("#{plan_id}"))),
        }
        self.ledger.change_plan(id, plan_id, actor)
    }

    pub fn set_suspended(
        &self,
        id: i64,
        suspended: bool,
        actor: &Actor,
    ) -> Result<(), LedgerError> {
        self.reach_user(id)?;
        self.ledger
            .set_suspended(&UserRef::Id(id), suspended, actor)
    }

    /// Creates a plan of this scope's own (the global scope's: the install's).
    pub fn create_plan(
        &self,
        spec: &PlanSpec,
        make_default: bool,
        actor: &Actor,
    ) -> Result<i64, LedgerError> {
        self.ledger
            .create_plan_of(self.scope.home(), spec, make_default, actor)
    }

    pub fn update_plan(
        &self,
        id: i64,
        change: &PlanChange,
        actor: &Actor,
    ) -> Result<i64, LedgerError> {
        self.own_plan(id)?;
        self.ledger.update_plan(&PlanRef::Id(id), change, actor)
    }

    pub fn set_default_plan(&self, id: i64, actor: &Actor) -> Result<(), LedgerError> {
        self.own_plan(id)?;
        self.ledger.set_default_plan(id, actor)
    }

    pub fn set_weights(
        &self,
        model: &str,
        cost: super::ModelCost,
        actor: &Actor,
    ) -> Result<(), LedgerError> {
        self.global_only()?;
        Ok(self.ledger.set_weights(model, cost, actor)?)
    }

    pub fn decide_credit_request(
        &self,
        id: i64,
        approve: bool,
        reason: Option<&str>,
        actor: &Actor,
        label: &'static str,
    ) -> Result<credits::CreditRequest, credits::RequestError> {
        self.reach_request(id)
            .map_err(|_| credits::RequestError::NotFound)?;
        self.ledger
            .decide_credit_request(id, approve, reason, actor, label)
    }

    /// A batch of codes this scope sells (its users redeem them).
    pub fn create_code_batch(
        &self,
        tokens: TokenAmount,
        count: i64,
        expires_at: NaiveDateTime,
        note: Option<&str>,
        actor: &Actor,
    ) -> Result<(i64, Vec<String>), StoreError> {
        self.ledger
            .create_code_batch_of(self.scope.home(), tokens, count, expires_at, note, actor)
    }
}
