//! Distributors: their rows, their client keys, and their monthly pool.
//!
//! The pool is counted in three places, so that no settlement ever waits for a
//! distributor's row (which would order its locks against the reservations', and
//! deadlock replicas): `pool_used` on the distributor, what its users' requests in
//! flight hold (`holds.distributor_id`), and what settlements charged since a
//! reservation last added it up (`pool_charges`). The reservation locks the row,
//! reads the holds, then folds the charges in: read in that order, a settlement that
//! commits in between is counted twice, never missed.

use super::audit::{self, Action};
use super::tx::{Conn, Ctx};
use super::{Actor, LedgerError};
use crate::db::schema::{balances, client_keys, distributors, holds, pool_charges, users};
use crate::db::statement::{FixedUpdate, on_backend};
use crate::db::{AnyConnection, StoreError, flag};
use crate::domain::{DistributorId, DistributorName, Pool, TenantId, TokenAmount};
use chrono::NaiveDateTime;
use diesel::dsl::sql;
use diesel::prelude::*;
use diesel::sql_types::{BigInt, Nullable};
use serde_json::json;

/// A distributor as the command line and the dashboard show it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct DistributorRow {
    pub id: i64,
    pub name: String,
    pub contact: Option<String>,
    pub tenant: Option<String>,
    pub pool_cap: Option<i64>,
    /// What its users used of the pool this cycle (0 without a pool).
    pub pool_used: i64,
    pub users: i64,
    /// What its users used this cycle, and the cycle's revenue from its users'
    /// plan prices (centavos).
    pub used_this_cycle: i64,
    pub revenue_this_cycle: i64,
    pub keys: Vec<KeyRow>,
    pub created_at: NaiveDateTime,
}

/// A stored client key, without the key.
#[derive(Debug, Clone, serde::Serialize)]
pub struct KeyRow {
    pub label: String,
    pub names_distributors: bool,
    pub created_at: NaiveDateTime,
    pub revoked_at: Option<NaiveDateTime>,
}

/// What a new distributor is, or what changes of one (`None` keeps it).
#[derive(Debug, Clone, Default)]
pub struct DistributorChange {
    pub name: Option<DistributorName>,
    pub contact: Option<Option<String>>,
    pub tenant: Option<Option<TenantId>>,
    pub pool: Option<Option<Pool>>,
}

/// A key a distributor's LibreChat (or a shared one) presents.
#[derive(Debug, Clone)]
pub struct NewKey {
    pub digest_hex: String,
    pub label: String,
    pub names_distributors: bool,
}

/// Every live stored key (digest, distributor, may name distributors) and every
/// tenant id a shared LibreChat may send.
pub struct KeyRing {
    pub keys: Vec<(String, i64, bool)>,
    pub tenants: Vec<(String, i64)>,
}

/// How a distributor is named on the command line: its name, or `#id`.
pub(super) fn find(c: &mut Conn, raw: &str) -> Result<Option<i64>, StoreError> {
    let raw = raw.trim();
    if let Some(id) = raw.strip_prefix('#').and_then(|n| n.parse::<i64>().ok()) {
        return Ok(distributors::table
            .find(id)
            .filter(distributors::id.ne(DistributorId::DIRECT.get()))
            .select(distributors::id)
            .first(c)
            .optional()?);
    }
    Ok(distributors::table
        .filter(distributors::name.eq(raw))
        .filter(distributors::id.ne(DistributorId::DIRECT.get()))
        .select(distributors::id)
        .first(c)
        .optional()?)
}

pub(super) fn create(
    c: &mut Conn,
    ctx: &Ctx,
    change: &DistributorChange,
    actor: &Actor,
) -> Result<i64, LedgerError> {
    let Some(name) = &change.name else {
        return Err(LedgerError::Invalid("a distributor needs a name".into()));
    };
    let taken: i64 = distributors::table
        .filter(distributors::name.eq(name.as_str()))
        .count()
        .get_result(c)?;
    if taken > 0 {
        return Err(LedgerError::DistributorExists(name.to_string()));
    }
    let tenant = change.tenant.clone().flatten();
    check_tenant_free(c, tenant.as_ref(), None)?;
    let pool = change.pool.flatten();
    let id: i64 = diesel::insert_into(distributors::table)
        .values((
            distributors::name.eq(name.as_str()),
            distributors::contact.eq(change.contact.clone().flatten()),
            distributors::tenant.eq(tenant.as_ref().map(TenantId::as_str)),
            distributors::pool_cap.eq(pool.map(|p| p.cap.get())),
            distributors::pool_cycle.eq(&ctx.cycle_key),
            distributors::pool_used.eq(0_i64),
            distributors::created_at.eq(ctx.now),
        ))
        .returning(distributors::id)
        .get_result(c)?;
    audit::record_in(
        c,
        actor,
        Action::CreateDistributor,
        None,
        DistributorId::from_db(id),
        &json!({
            "distributor": name.as_str(),
            "contact": change.contact.clone().flatten(),
            "tenant": tenant.as_ref().map(TenantId::as_str),
            "pool": pool.map(|p| p.cap.get()),
        }),
        ctx.now,
    )?;
    Ok(id)
}

pub(super) fn edit(
    c: &mut Conn,
    ctx: &Ctx,
    id: i64,
    change: &DistributorChange,
    actor: &Actor,
) -> Result<(), LedgerError> {
    if let Some(name) = &change.name {
        let taken: i64 = distributors::table
            .filter(distributors::name.eq(name.as_str()))
            .filter(distributors::id.ne(id))
            .count()
            .get_result(c)?;
        if taken > 0 {
            return Err(LedgerError::DistributorExists(name.to_string()));
        }
        diesel::update(distributors::table.find(id))
            .set(distributors::name.eq(name.as_str()))
            .execute(c)?;
    }
    if let Some(contact) = &change.contact {
        diesel::update(distributors::table.find(id))
            .set(distributors::contact.eq(contact.as_deref()))
            .execute(c)?;
    }
    if let Some(tenant) = &change.tenant {
        check_tenant_free(c, tenant.as_ref(), Some(id))?;
        diesel::update(distributors::table.find(id))
            .set(distributors::tenant.eq(tenant.as_ref().map(TenantId::as_str)))
            .execute(c)?;
    }
    if let Some(pool) = change.pool {
        // The pool applies at once, and what the distributor's users used this
        // cycle counts against it: without a pool nothing kept count, so it is
        // taken from their balances (requests in flight now are not in it).
        let used: Option<i64> = users::table
            .inner_join(balances::table)
            .filter(users::distributor_id.eq(id))
            .filter(balances::cycle.eq(&ctx.cycle_key))
            .select(sql::<Nullable<BigInt>>(
                "CAST(SUM(balances.used_this_cycle) AS BIGINT)",
            ))
            .first(c)?;
        diesel::delete(pool_charges::table.filter(pool_charges::distributor_id.eq(id)))
            .execute(c)?;
        diesel::update(distributors::table.find(id))
            .set((
                distributors::pool_cap.eq(pool.map(|p| p.cap.get())),
                distributors::pool_cycle.eq(&ctx.cycle_key),
                distributors::pool_used.eq(used.unwrap_or(0)),
            ))
            .execute(c)?;
    }
    audit::record_in(
        c,
        actor,
        Action::EditDistributor,
        None,
        DistributorId::from_db(id),
        &json!({
            "name": change.name.as_ref().map(DistributorName::as_str),
            "contact": change.contact,
            "tenant": change.tenant.as_ref().map(|t| t.as_ref().map(TenantId::as_str)),
            "pool": change.pool.map(|p| p.map(|p| p.cap.get())),
        }),
        ctx.now,
    )?;
    Ok(())
}

fn check_tenant_free(
    c: &mut Conn,
    tenant: Option<&TenantId>,
    except: Option<i64>,
) -> Result<(), LedgerError> {
    let Some(tenant) = tenant else {
        return Ok(());
    };
    let taken: i64 = distributors::table
        .filter(distributors::tenant.eq(tenant.as_str()))
        .filter(distributors::id.ne(except.unwrap_or(0)))
        .count()
        .get_result(c)?;
    if taken > 0 {
        return Err(LedgerError::TenantTaken(tenant.to_string()));
    }
    Ok(())
}

pub(super) fn add_key(
    c: &mut Conn,
    ctx: &Ctx,
    distributor: i64,
    key: &NewKey,
    actor: &Actor,
) -> Result<(), LedgerError> {
    diesel::insert_into(client_keys::table)
        .values((
            client_keys::digest.eq(&key.digest_hex),
            client_keys::distributor_id.eq(distributor),
            client_keys::names_distributors.eq(flag(key.names_distributors)),
            client_keys::label.eq(&key.label),
            client_keys::created_at.eq(ctx.now),
        ))
        .execute(c)?;
    audit::record_in(
        c,
        actor,
        Action::AddClientKey,
        None,
        DistributorId::from_db(distributor),
        &json!({ "key": key.label, "names_distributors": key.names_distributors }),
        ctx.now,
    )?;
    Ok(())
}

/// Revokes the live keys whose label is `label`; returns how many.
pub(super) fn revoke_key(
    c: &mut Conn,
    ctx: &Ctx,
    label: &str,
    actor: &Actor,
) -> Result<usize, LedgerError> {
    let owners: Vec<i64> = client_keys::table
        .filter(client_keys::label.eq(label))
        .filter(client_keys::revoked_at.is_null())
        .select(client_keys::distributor_id)
        .load(c)?;
    let n = diesel::update(
        client_keys::table
            .filter(client_keys::label.eq(label))
            .filter(client_keys::revoked_at.is_null()),
    )
    .set(client_keys::revoked_at.eq(Some(ctx.now)))
    .execute(c)?;
    for owner in owners {
        audit::record_in(
            c,
            actor,
            Action::RevokeClientKey,
            None,
            DistributorId::from_db(owner),
            &json!({ "key": label }),
            ctx.now,
        )?;
    }
    Ok(n)
}

pub(super) fn find_key(c: &mut Conn, digest_hex: &str) -> Result<Option<(i64, bool)>, StoreError> {
    let found: Option<(i64, i32)> = client_keys::table
        .find(digest_hex)
        .filter(client_keys::revoked_at.is_null())
        .select((client_keys::distributor_id, client_keys::names_distributors))
        .first(c)
        .optional()?;
    Ok(found.map(|(d, n)| (d, n == 1)))
}

pub(super) fn key_ring(c: &mut Conn) -> Result<KeyRing, StoreError> {
    let keys: Vec<(String, i64, i32)> = client_keys::table
        .filter(client_keys::revoked_at.is_null())
        .select((
            client_keys::digest,
            client_keys::distributor_id,
            client_keys::names_distributors,
        ))
        .load(c)?;
    let tenants: Vec<(Option<String>, i64)> = distributors::table
        .filter(distributors::tenant.is_not_null())
        .select((distributors::tenant, distributors::id))
        .load(c)?;
    Ok(KeyRing {
        keys: keys.into_iter().map(|(d, id, n)| (d, id, n == 1)).collect(),
        tenants: tenants
            .into_iter()
            .filter_map(|(t, id)| t.map(|t| (t, id)))
            .collect(),
    })
}

pub(super) fn list(c: &mut Conn, ctx: &Ctx) -> Result<Vec<DistributorRow>, StoreError> {
    type Row = (
        i64,
        String,
        Option<String>,
        Option<String>,
        Option<i64>,
        Option<String>,
        i64,
        NaiveDateTime,
    );
    let rows: Vec<Row> = distributors::table
        .filter(distributors::id.ne(DistributorId::DIRECT.get()))
        .order(distributors::name.asc())
        .select((
            distributors::id,
            distributors::name,
            distributors::contact,
            distributors::tenant,
            distributors::pool_cap,
            distributors::pool_cycle,
            distributors::pool_used,
            distributors::created_at,
        ))
        .load(c)?;
    let mut out = Vec::with_capacity(rows.len());
    for (id, name, contact, tenant, pool_cap, pool_cycle, pool_used, created_at) in rows {
        let stored = if pool_cycle.as_deref() == Some(ctx.cycle_key.as_str()) {
            pool_used
        } else {
            0
        };
        let pending: Option<i64> = pool_charges::table
            .filter(pool_charges::distributor_id.eq(id))
            .filter(pool_charges::cycle.eq(&ctx.cycle_key))
            .select(sql::<Nullable<BigInt>>("CAST(SUM(amount) AS BIGINT)"))
            .first(c)?;
        let users: i64 = users::table
            .filter(users::distributor_id.eq(id))
            .count()
            .get_result(c)?;
        let used_this_cycle: Option<i64> = users::table
            .inner_join(balances::table)
            .filter(users::distributor_id.eq(id))
            .filter(balances::cycle.eq(&ctx.cycle_key))
            .select(sql::<Nullable<BigInt>>(
                "CAST(SUM(balances.used_this_cycle) AS BIGINT)",
            ))
            .first(c)?;
        let revenue_this_cycle = super::views::plans(
            c,
            crate::domain::Scope::Distributor(DistributorId::from_db(id)),
            &ctx.cycle_key,
        )?
        .iter()
        .map(|p| p.revenue_this_cycle)
        .sum();
        let keys = client_keys::table
            .filter(client_keys::distributor_id.eq(id))
            .order(client_keys::created_at.asc())
            .select((
                client_keys::label,
                client_keys::names_distributors,
                client_keys::created_at,
                client_keys::revoked_at,
            ))
            .load::<(String, i32, NaiveDateTime, Option<NaiveDateTime>)>(c)?
            .into_iter()
            .map(|(label, n, created_at, revoked_at)| KeyRow {
                label,
                names_distributors: n == 1,
                created_at,
                revoked_at,
            })
            .collect();
        out.push(DistributorRow {
            id,
            name,
            contact,
            tenant,
            pool_cap,
            pool_used: stored + pending.unwrap_or(0),
            users,
            used_this_cycle: used_this_cycle.unwrap_or(0),
            revenue_this_cycle,
            keys,
            created_at,
        });
    }
    Ok(out)
}

/// The contact a user's refusals and mails name: their distributor's, when it has
/// one (`None` for the install's own users, whom the configured support contact
/// serves).
pub(crate) fn contact_of(c: &mut Conn, user_id: i64) -> Result<Option<String>, StoreError> {
    Ok(users::table
        .inner_join(distributors::table)
        .filter(users::id.eq(user_id))
        .select(distributors::contact)
        .first::<Option<String>>(c)
        .optional()?
        .flatten())
}

/// The distributor a user belongs to, and its pool if it has one.
pub(super) fn of_user(c: &mut Conn, user_id: i64) -> Result<(i64, Option<i64>), StoreError> {
    Ok(users::table
        .inner_join(distributors::table)
        .filter(users::id.eq(user_id))
        .select((distributors::id, distributors::pool_cap))
        .first(c)?)
}

/// A distributor's pool as a reservation sees it, with the distributor's row locked.
#[derive(Debug, Clone, Copy)]
pub(super) struct PoolRoom {
    pub distributor: i64,
    pub pool: Pool,
    /// Used this cycle, settled.
    pub used: i64,
    /// Held by its users' requests in flight.
    pub held: i64,
}

impl PoolRoom {
    pub fn left(&self) -> i64 {
        self.pool.left(self.used, self.held)
    }
}

/// Locks the distributor's row and reads its pool: `None` without one. Rolls the
/// pool to the current cycle and folds the settlements' charges into it.
pub(super) fn lock_pool(
    c: &mut Conn,
    ctx: &Ctx,
    distributor: i64,
) -> Result<Option<PoolRoom>, StoreError> {
    let read = distributors::table.find(distributor).select((
        distributors::pool_cap,
        distributors::pool_cycle,
        distributors::pool_used,
    ));
    type PoolRow = (Option<i64>, Option<String>, i64);
    let mut row: PoolRow = on_backend!(c, |c| read.first(c))?;
    // PostgreSQL: a distributor with a pool has its row locked by each reservation of
    // its users, so that what they read of the pool below is not read by two at once.
    // Without a pool nothing is locked: the install's own users never queue on it.
    // (SQLite's write transaction already holds the whole database.) NO KEY: a new
    // user's row takes a KEY SHARE lock on its distributor's (the foreign key), and
    // two such reservations asking for a full lock next would deadlock.
    if row.0.is_some()
        && let AnyConnection::Postgresql(pg) = c
    {
        row = read.for_no_key_update().first(pg)?;
    }
    let (cap, cycle, used) = row;
    let Some(cap) = cap.and_then(|n| TokenAmount::new(n).ok()) else {
        return Ok(None);
    };
    // The holds first, then the charges (see the module's comment).
    let held: Option<i64> = holds::table
        .filter(holds::distributor_id.eq(distributor))
        .select(sql::<Nullable<BigInt>>("CAST(SUM(amount) AS BIGINT)"))
        .first(c)?;
    let charges =
        diesel::delete(pool_charges::table.filter(pool_charges::distributor_id.eq(distributor)))
            .returning((pool_charges::cycle, pool_charges::amount));
    let charged: Vec<(String, i64)> = on_backend!(c, |c| charges.get_results(c))?;
    let mut used = if cycle.as_deref() == Some(ctx.cycle_key.as_str()) {
        used
    } else {
        0
    };
    let folded: i64 = charged
        .iter()
        .filter(|(cycle, _)| *cycle == ctx.cycle_key)
        .map(|(_, amount)| *amount)
        .sum();
    if !charged.is_empty() || cycle.as_deref() != Some(ctx.cycle_key.as_str()) {
        used = used.saturating_add(folded);
        diesel::update(distributors::table.find(distributor))
            .set((
                distributors::pool_cycle.eq(&ctx.cycle_key),
                distributors::pool_used.eq(used),
            ))
            .execute(c)?;
    }
    Ok(Some(PoolRoom {
        distributor,
        pool: Pool { cap },
        used,
        held: held.unwrap_or(0),
    }))
}

/// The guarded write: the pool pays `amount` on top of what it has used and holds,
/// or nothing is written (and the caller refuses the request).
pub(super) fn guard(c: &mut Conn, room: &PoolRoom, amount: i64) -> Result<bool, StoreError> {
    let guarded = FixedUpdate(
        diesel::update(
            distributors::table
                .filter(distributors::id.eq(room.distributor))
                .filter(
                    distributors::pool_cap
                        .assume_not_null()
                        .ge(distributors::pool_used + room.held.saturating_add(amount)),
                ),
        )
        .set(distributors::pool_used.eq(distributors::pool_used)),
    );
    Ok(on_backend!(c, |c| guarded.execute(c))? == 1)
}

/// What a settlement charged of a distributor's pool (negative: given back).
pub(super) fn charge(
    c: &mut Conn,
    ctx: &Ctx,
    distributor: i64,
    amount: i64,
) -> Result<(), StoreError> {
    if amount == 0 {
        return Ok(());
    }
    diesel::insert_into(pool_charges::table)
        .values((
            pool_charges::distributor_id.eq(distributor),
            pool_charges::cycle.eq(&ctx.cycle_key),
            pool_charges::amount.eq(amount),
        ))
        .execute(c)?;
    Ok(())
}
