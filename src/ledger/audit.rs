//! The audit log: every admin action (and every CLI change), written in the same
//! transaction as the change itself, so the log and the books never disagree.

use super::Actor;
use crate::db::schema::{audit_log, users};
use crate::db::{AnyConnection, StoreError};
use crate::domain::{DistributorId, Scope};
use chrono::NaiveDateTime;
use diesel::prelude::*;
use serde::Serialize;

/// What was done. Stored as text; the dashboard names each in the user's language.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    GrantCredits,
    ChangePlan,
    Suspend,
    Reactivate,
    CreatePlan,
    EditPlan,
    SetDefaultPlan,
    SetWeights,
    AddAdmin,
    DisableAdmin,
    EnableAdmin,
    ChangePassword,
    CreateUser,
    ApproveCreditRequest,
    DeclineCreditRequest,
    CreateCodeBatch,
    RedeemCode,
    CreateDistributor,
    EditDistributor,
    AddClientKey,
    RevokeClientKey,
}

impl Action {
    pub const ALL: [Self; 21] = [
        Self::GrantCredits,
        Self::ChangePlan,
        Self::Suspend,
        Self::Reactivate,
        Self::CreatePlan,
        Self::EditPlan,
        Self::SetDefaultPlan,
        Self::SetWeights,
        Self::AddAdmin,
        Self::DisableAdmin,
        Self::EnableAdmin,
        Self::ChangePassword,
        Self::CreateUser,
        Self::ApproveCreditRequest,
        Self::DeclineCreditRequest,
        Self::CreateCodeBatch,
        Self::RedeemCode,
        Self::CreateDistributor,
        Self::EditDistributor,
        Self::AddClientKey,
        Self::RevokeClientKey,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::GrantCredits => "grant_credits",
            Self::ChangePlan => "change_plan",
            Self::Suspend => "suspend",
            Self::Reactivate => "reactivate",
            Self::CreatePlan => "create_plan",
            Self::EditPlan => "edit_plan",
            Self::SetDefaultPlan => "set_default_plan",
            Self::SetWeights => "set_weights",
            Self::AddAdmin => "add_admin",
            Self::DisableAdmin => "disable_admin",
            Self::EnableAdmin => "enable_admin",
            Self::ChangePassword => "change_password",
            Self::CreateUser => "create_user",
            Self::ApproveCreditRequest => "approve_credit_request",
            Self::DeclineCreditRequest => "decline_credit_request",
            Self::CreateCodeBatch => "create_code_batch",
            Self::RedeemCode => "redeem_code",
            Self::CreateDistributor => "create_distributor",
            Self::EditDistributor => "edit_distributor",
            Self::AddClientKey => "add_client_key",
            Self::RevokeClientKey => "revoke_client_key",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|a| a.as_str() == s)
    }
}

/// One line of the audit log.
#[derive(Debug, Clone, Serialize, Queryable)]
pub struct AuditEntry {
    pub id: i64,
    pub actor: String,
    pub action: String,
    pub user_id: Option<i64>,
    /// JSON: amounts, names and notes of the change.
    pub details: String,
    pub created_at: NaiveDateTime,
}

/// Records an action unless the system itself made it (automatic changes are in the
/// ledger, not the audit log). An action on a user is filed under the user's
/// distributor; any other under the install's own (`record_in` names another).
pub(crate) fn record(
    c: &mut AnyConnection,
    actor: &Actor,
    action: Action,
    user_id: Option<i64>,
    details: &serde_json::Value,
    now: NaiveDateTime,
) -> Result<(), StoreError> {
    let distributor = match user_id {
        Some(id) => users::table
            .find(id)
            .select(users::distributor_id)
            .first::<i64>(c)
            .optional()?
            .map_or(DistributorId::DIRECT, DistributorId::from_db),
        None => DistributorId::DIRECT,
    };
    record_in(c, actor, action, user_id, distributor, details, now)
}

/// Records an action under `distributor`, whose admins see it.
pub(crate) fn record_in(
    c: &mut AnyConnection,
    actor: &Actor,
    action: Action,
    user_id: Option<i64>,
    distributor: DistributorId,
    details: &serde_json::Value,
    now: NaiveDateTime,
) -> Result<(), StoreError> {
    if matches!(actor, Actor::System) {
        return Ok(());
    }
    diesel::insert_into(audit_log::table)
        .values((
            audit_log::actor.eq(actor.label()),
            audit_log::action.eq(action.as_str()),
            audit_log::user_id.eq(user_id),
            audit_log::details.eq(details.to_string()),
            audit_log::created_at.eq(now),
            audit_log::distributor_id.eq(distributor.get()),
        ))
        .execute(c)?;
    Ok(())
}

/// How many entries `scope` reaches.
pub(crate) fn count(c: &mut AnyConnection, scope: Scope) -> Result<i64, StoreError> {
    let (lo, hi) = scope.bounds();
    Ok(audit_log::table
        .filter(audit_log::distributor_id.between(lo, hi))
        .count()
        .get_result(c)?)
}

/// The newest entries first, of one user or of everything `scope` reaches.
pub(crate) fn entries(
    c: &mut AnyConnection,
    scope: Scope,
    user_id: Option<i64>,
    limit: i64,
    offset: i64,
) -> Result<Vec<AuditEntry>, StoreError> {
    let (lo, hi) = scope.bounds();
    let mut q = audit_log::table
        .filter(audit_log::distributor_id.between(lo, hi))
        .select((
            audit_log::id,
            audit_log::actor,
            audit_log::action,
            audit_log::user_id,
            audit_log::details,
            audit_log::created_at,
        ))
        .order(audit_log::id.desc())
        .limit(limit)
        .offset(offset)
        .into_boxed();
    if let Some(id) = user_id {
        q = q.filter(audit_log::user_id.eq(id));
    }
    Ok(q.load(c)?)
}
