//! More tokens for a user, besides an admin's grant: a request the user makes and
//! an admin decides, and codes worth tokens that a user redeems. Each grant is a
//! `topup` in the ledger and one audit line, written with the decision or the
//! redemption in one transaction; the mails they cause go through the outbox.

use super::audit::{self, Action};
use super::tx::{self, Ctx};
use super::{Actor, LedgerError, UserRef};
use crate::alerts::{DeliveryState, Role};
use crate::db::schema::{code_batches, credit_requests, outbox, redeem_codes, users};
use crate::db::{AnyConnection as Conn, StoreError};
use crate::domain::{DistributorId, Scope, TokenAmount};
use chrono::NaiveDateTime;
use diesel::prelude::*;
use serde_json::json;
use sha2::{Digest, Sha256};

/// Where a credit request stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub enum RequestState {
    Open,
    Approved,
    Declined,
}

impl RequestState {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Open => "open",
            Self::Approved => "approved",
            Self::Declined => "declined",
        }
    }

    fn parse(s: &str) -> Self {
        match s {
            "approved" => Self::Approved,
            "declined" => Self::Declined,
            _ => Self::Open,
        }
    }
}

/// Which requests to list.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Which {
    /// Waiting for a decision, oldest first.
    Open,
    /// Approved or declined, newest first.
    Decided,
    /// All, newest first.
    All,
}

/// A user's request for credits.
#[derive(Debug, Clone, serde::Serialize)]
pub struct CreditRequest {
    pub id: i64,
    pub user_id: i64,
    /// The user is suspended now (a grant would wait for reactivation to be used).
    pub user_suspended: bool,
    pub user_email: Option<String>,
    pub user_name: Option<String>,
    pub user_external_id: Option<String>,
    pub tokens: i64,
    pub note: Option<String>,
    pub state: RequestState,
    pub decided_by: Option<String>,
    pub reason: Option<String>,
    pub decided_at: Option<NaiveDateTime>,
    pub created_at: NaiveDateTime,
}

/// Why a request could not be made or decided.
#[derive(Debug, thiserror::Error)]
pub enum RequestError {
    #[error("the user already has an open request")]
    AlreadyOpen,
    #[error("the request was already decided")]
    AlreadyDecided,
    #[error("no such request")]
    NotFound,
    #[error(transparent)]
    Ledger(#[from] LedgerError),
}

impl From<StoreError> for RequestError {
    fn from(e: StoreError) -> Self {
        Self::Ledger(LedgerError::Store(e))
    }
}

impl From<diesel::result::Error> for RequestError {
    fn from(e: diesel::result::Error) -> Self {
        Self::Ledger(LedgerError::Store(e.into()))
    }
}

impl crate::db::RetryableError for RequestError {
    fn is_retryable(&self) -> bool {
        matches!(self, Self::Ledger(LedgerError::Store(e)) if e.is_retryable())
    }
}

/// A message about a credit request, queued in the outbox.
fn queue_mail(
    c: &mut Conn,
    request_id: i64,
    kind: &str,
    role: Role,
    recipient: &str,
    now: NaiveDateTime,
) -> Result<(), StoreError> {
    diesel::insert_into(outbox::table)
        .values((
            outbox::credit_request_id.eq(request_id),
            outbox::kind.eq(kind),
            outbox::role.eq(role.as_str()),
            outbox::recipient.eq(recipient),
            outbox::state.eq(DeliveryState::Pending.as_str()),
            outbox::attempts.eq(0),
            outbox::next_attempt_at.eq(now),
            outbox::created_at.eq(now),
        ))
        .execute(c)?;
    Ok(())
}

/// Opens a request; every admin address of the user (`admin_recipients`) gets a mail
/// about it. A user has at most
/// one open request (a unique index says so, whatever runs at once).
pub(super) fn open_request(
    c: &mut Conn,
    ctx: &Ctx,
    user_id: i64,
    tokens: TokenAmount,
    note: Option<&str>,
    admin_emails: &[String],
) -> Result<i64, RequestError> {
    let open: i64 = credit_requests::table
        .filter(credit_requests::user_id.eq(user_id))
        .filter(credit_requests::state.eq(RequestState::Open.as_str()))
        .count()
        .get_result(c)?;
    if open > 0 {
        return Err(RequestError::AlreadyOpen);
    }
    let id: i64 = match diesel::insert_into(credit_requests::table)
        .values((
            credit_requests::user_id.eq(user_id),
            credit_requests::tokens.eq(tokens.get()),
            credit_requests::note.eq(note),
            credit_requests::state.eq(RequestState::Open.as_str()),
            credit_requests::created_at.eq(ctx.now),
        ))
        .returning(credit_requests::id)
        .get_result(c)
    {
        Ok(id) => id,
        Err(diesel::result::Error::DatabaseError(
            diesel::result::DatabaseErrorKind::UniqueViolation,
            _,
        )) => return Err(RequestError::AlreadyOpen),
        Err(e) => return Err(e.into()),
    };
    for admin in crate::alerts::store::admin_recipients(c, user_id, admin_emails)? {
        queue_mail(c, id, "credit_requested", Role::Admin, &admin, ctx.wall)?;
    }
    Ok(id)
}

/// Approves (granting the tokens asked for) or declines (with `reason`) an open
/// request, and mails the user the decision when their address is known.
pub(super) fn decide_request(
    c: &mut Conn,
    ctx: &Ctx,
    id: i64,
    approve: bool,
    reason: Option<&str>,
    actor: &Actor,
    label: &str,
) -> Result<CreditRequest, RequestError> {
    let state = if approve {
        RequestState::Approved
    } else {
        RequestState::Declined
    };
    let decided = diesel::update(
        credit_requests::table
            .filter(credit_requests::id.eq(id))
            .filter(credit_requests::state.eq(RequestState::Open.as_str())),
    )
    .set((
        credit_requests::state.eq(state.as_str()),
        credit_requests::decided_by.eq(actor.label()),
        credit_requests::reason.eq(reason),
        credit_requests::decided_at.eq(ctx.now),
    ))
    .execute(c)?;
    let request = request_by_id(c, id)?.ok_or(RequestError::NotFound)?;
    if decided == 0 {
        return Err(RequestError::AlreadyDecided);
    }
    let note = format!("{label} #{id}");
    if approve {
        let amount = TokenAmount::new(request.tokens).map_err(|_| {
            RequestError::Ledger(LedgerError::Store(StoreError::Unavailable(
                "stored request amount is invalid".into(),
            )))
        })?;
        tx::add_credits(
            c,
            ctx,
            &UserRef::Id(request.user_id),
            amount,
            actor,
            Some(&note),
            Action::ApproveCreditRequest,
        )?;
    } else {
        audit::record(
            c,
            actor,
            Action::DeclineCreditRequest,
            Some(request.user_id),
            &json!({"tokens": request.tokens, "note": note, "reason": reason}),
            ctx.now,
        )?;
    }
    if let Some(email) = &request.user_email {
        let kind = if approve {
            "credit_approved"
        } else {
            "credit_declined"
        };
        queue_mail(c, id, kind, Role::User, email, ctx.wall)?;
    }
    Ok(request)
}

type RequestRow = (
    i64,
    i64,
    Option<NaiveDateTime>,
    Option<String>,
    Option<String>,
    Option<String>,
    i64,
    Option<String>,
    String,
    Option<String>,
    Option<String>,
    Option<NaiveDateTime>,
    NaiveDateTime,
);

type RequestColumns = (
    credit_requests::id,
    credit_requests::user_id,
    users::suspended_at,
    users::email,
    users::name,
    users::external_id,
    credit_requests::tokens,
    credit_requests::note,
    credit_requests::state,
    credit_requests::decided_by,
    credit_requests::reason,
    credit_requests::decided_at,
    credit_requests::created_at,
);

const REQUEST_COLUMNS: RequestColumns = (
    credit_requests::id,
    credit_requests::user_id,
    users::suspended_at,
    users::email,
    users::name,
    users::external_id,
    credit_requests::tokens,
    credit_requests::note,
    credit_requests::state,
    credit_requests::decided_by,
    credit_requests::reason,
    credit_requests::decided_at,
    credit_requests::created_at,
);

fn request_of(r: RequestRow) -> CreditRequest {
    CreditRequest {
        id: r.0,
        user_id: r.1,
        user_suspended: r.2.is_some(),
        user_email: r.3,
        user_name: r.4,
        user_external_id: r.5,
        tokens: r.6,
        note: r.7,
        state: RequestState::parse(&r.8),
        decided_by: r.9,
        reason: r.10,
        decided_at: r.11,
        created_at: r.12,
    }
}

pub(crate) fn request_by_id(c: &mut Conn, id: i64) -> Result<Option<CreditRequest>, StoreError> {
    Ok(credit_requests::table
        .inner_join(users::table)
        .select(REQUEST_COLUMNS)
        .filter(credit_requests::id.eq(id))
        .first::<RequestRow>(c)
        .optional()?
        .map(request_of))
}

/// Requests: `which` of them, of one user or of everyone `scope` reaches.
pub(super) fn requests(
    c: &mut Conn,
    scope: Scope,
    which: Which,
    user_id: Option<i64>,
    limit: i64,
) -> Result<Vec<CreditRequest>, StoreError> {
    let (lo, hi) = scope.bounds();
    let mut q = credit_requests::table
        .inner_join(users::table)
        .filter(users::distributor_id.between(lo, hi))
        .select(REQUEST_COLUMNS)
        .limit(limit)
        .into_boxed();
    let open = RequestState::Open.as_str();
    q = match which {
        Which::Open => q
            .filter(credit_requests::state.eq(open))
            .order(credit_requests::id.asc()),
        Which::Decided => q
            .filter(credit_requests::state.ne(open))
            .order(credit_requests::id.desc()),
        Which::All => q.order(credit_requests::id.desc()),
    };
    if let Some(u) = user_id {
        q = q.filter(credit_requests::user_id.eq(u));
    }
    Ok(q.load::<RequestRow>(c)?
        .into_iter()
        .map(request_of)
        .collect())
}

pub(super) fn open_requests(c: &mut Conn, scope: Scope) -> Result<i64, StoreError> {
    let (lo, hi) = scope.bounds();
    Ok(credit_requests::table
        .inner_join(users::table)
        .filter(users::distributor_id.between(lo, hi))
        .filter(credit_requests::state.eq(RequestState::Open.as_str()))
        .count()
        .get_result(c)?)
}

// --- codes ----------------------------------------------------------------------

/// Crockford's base32: no I, L, O or U, so a code read aloud or typed from paper
/// is not mistaken.
const ALPHABET: &[u8; 32] = b"0123456789ABCDEFGHJKMNPQRSTVWXYZ";
/// 20 symbols of 5 bits: 100 random bits per code.
const CODE_SYMBOLS: usize = 20;
pub const MAX_BATCH: i64 = 10_000;

/// A new code: `TG-` and five groups of four symbols.
fn new_code() -> Result<String, StoreError> {
    let mut raw = [0u8; CODE_SYMBOLS];
    getrandom::fill(&mut raw)
        .map_err(|e| StoreError::Unavailable(format!("no random bytes: {e}")))?;
    let symbols: Vec<char> = raw
        .iter()
        .map(|b| char::from(ALPHABET[usize::from(b & 31)]))
        .collect();
    let groups: Vec<String> = symbols.chunks(4).map(|g| g.iter().collect()).collect();
    Ok(format!("TG-{}", groups.join("-")))
}

/// A code as typed, reduced to its symbols: case, spaces, dashes and the `TG`
/// prefix do not matter, and the letters Crockford reads as digits are read so.
pub fn normalize_code(typed: &str) -> Option<String> {
    // Pasted from anywhere: a whole CSV line, an en dash from a word processor, a
    // full stop after it. Only the letters and digits of the first field count.
    let first_field = typed.split([',', ';', '\t']).next().unwrap_or("");
    let mut s: String = first_field
        .chars()
        .filter(char::is_ascii_alphanumeric)
        .map(|c| c.to_ascii_uppercase())
        .collect();
    if s.len() == CODE_SYMBOLS + 2 && s.starts_with("TG") {
        s.drain(..2);
    }
    let s: String = s
        .chars()
        .map(|c| match c {
            'O' => '0',
            'I' | 'L' => '1',
            other => other,
        })
        .collect();
    (s.len() == CODE_SYMBOLS && s.bytes().all(|b| ALPHABET.contains(&b))).then_some(s)
}

fn code_hash(normalized: &str) -> String {
    hex::encode(Sha256::digest(
        format!("tokengate-code:{normalized}").as_bytes(),
    ))
}

/// A batch as admins see it: never its codes.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Batch {
    pub id: i64,
    pub tokens: i64,
    pub codes: i32,
    pub redeemed: i64,
    pub expires_at: NaiveDateTime,
    pub note: Option<String>,
    pub created_by: String,
    pub created_at: NaiveDateTime,
}

/// A batch of codes to make: `count` codes worth `tokens` each until `expires_at`,
/// sold by `owner` (only its users redeem them).
#[derive(Debug, Clone)]
pub struct NewBatch {
    pub owner: DistributorId,
    pub tokens: TokenAmount,
    pub count: i64,
    pub expires_at: NaiveDateTime,
    pub note: Option<String>,
}

/// Makes a batch of codes and returns them: the only time they exist outside the
/// hands they are given to.
pub(super) fn create_batch(
    c: &mut Conn,
    ctx: &Ctx,
    batch: &NewBatch,
    actor: &Actor,
) -> Result<(i64, Vec<String>), StoreError> {
    let NewBatch {
        owner,
        tokens,
        count,
        expires_at,
        ref note,
    } = *batch;
    let note = note.as_deref();
    let id: i64 = diesel::insert_into(code_batches::table)
        .values((
            code_batches::tokens.eq(tokens.get()),
            code_batches::codes.eq(i32::try_from(count).unwrap_or(i32::MAX)),
            code_batches::expires_at.eq(expires_at),
            code_batches::note.eq(note),
            code_batches::created_by.eq(actor.label()),
            code_batches::created_at.eq(ctx.now),
            code_batches::distributor_id.eq(owner.get()),
        ))
        .returning(code_batches::id)
        .get_result(c)?;
    let mut codes = Vec::with_capacity(usize::try_from(count).unwrap_or(0));
    for _ in 0..count {
        let code = new_code()?;
        let normalized = normalize_code(&code)
            .ok_or_else(|| StoreError::Unavailable("a generated code does not read back".into()))?;
        diesel::insert_into(redeem_codes::table)
            .values((
                redeem_codes::code_hash.eq(code_hash(&normalized)),
                redeem_codes::batch_id.eq(id),
            ))
            .execute(c)?;
        codes.push(code);
    }
    audit::record_in(
        c,
        actor,
        Action::CreateCodeBatch,
        None,
        owner,
        &json!({"batch": id, "codes": count, "tokens": tokens.get(), "expires_at": expires_at.to_string(), "note": note}),
        ctx.now,
    )?;
    Ok((id, codes))
}

/// What redeeming a code did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Redeemed {
    /// The tokens were added.
    Added { tokens: i64 },
    /// Not a code of any batch (or mistyped).
    Unknown,
    /// Used already (by anyone).
    Used,
    /// Its batch expired.
    Expired,
}

/// Redeems a code for the user. Of concurrent redemptions of one code, one adds
/// the tokens (the code is marked in the statement that checks it is unused).
pub(super) fn redeem(
    c: &mut Conn,
    ctx: &Ctx,
    user_id: i64,
    typed: &str,
    label: &str,
) -> Result<Redeemed, LedgerError> {
    let Some(normalized) = normalize_code(typed) else {
        return Ok(Redeemed::Unknown);
    };
    let hash = code_hash(&normalized);
    // A distributor's codes are its users' only: another's read as no code at all.
    let distributor: i64 = users::table
        .find(user_id)
        .select(users::distributor_id)
        .first(c)
        .map_err(StoreError::from)?;
    let found: Option<(i64, i64, NaiveDateTime, Option<NaiveDateTime>)> = redeem_codes::table
        .inner_join(code_batches::table)
        .filter(redeem_codes::code_hash.eq(&hash))
        .filter(code_batches::distributor_id.eq(distributor))
        .select((
            code_batches::id,
            code_batches::tokens,
            code_batches::expires_at,
            redeem_codes::redeemed_at,
        ))
        .first(c)
        .optional()
        .map_err(StoreError::from)?;
    let Some((batch, tokens, expires_at, redeemed_at)) = found else {
        return Ok(Redeemed::Unknown);
    };
    if redeemed_at.is_some() {
        return Ok(Redeemed::Used);
    }
    if expires_at <= ctx.now {
        return Ok(Redeemed::Expired);
    }
    let marked = diesel::update(
        redeem_codes::table
            .filter(redeem_codes::code_hash.eq(&hash))
            .filter(redeem_codes::redeemed_at.is_null()),
    )
    .set((
        redeem_codes::redeemed_by.eq(user_id),
        redeem_codes::redeemed_at.eq(ctx.now),
    ))
    .execute(c)
    .map_err(StoreError::from)?;
    if marked != 1 {
        return Ok(Redeemed::Used);
    }
    let amount = TokenAmount::new(tokens)
        .map_err(|_| StoreError::Unavailable("stored code amount is invalid".into()))?;
    let note = format!("{label} #{batch}");
    tx::add_credits(
        c,
        ctx,
        &UserRef::Id(user_id),
        amount,
        &Actor::User(user_id),
        Some(&note),
        Action::RedeemCode,
    )?;
    Ok(Redeemed::Added { tokens })
}

type BatchRow = (
    i64,
    i64,
    i32,
    NaiveDateTime,
    Option<String>,
    String,
    NaiveDateTime,
);

pub(super) fn batches(c: &mut Conn, scope: Scope, limit: i64) -> Result<Vec<Batch>, StoreError> {
    let (lo, hi) = scope.bounds();
    let rows: Vec<BatchRow> = code_batches::table
        .filter(code_batches::distributor_id.between(lo, hi))
        .order(code_batches::id.desc())
        .limit(limit)
        .select((
            code_batches::id,
            code_batches::tokens,
            code_batches::codes,
            code_batches::expires_at,
            code_batches::note,
            code_batches::created_by,
            code_batches::created_at,
        ))
        .load(c)?;
    let mut out = Vec::with_capacity(rows.len());
    for r in rows {
        let redeemed: i64 = redeem_codes::table
            .filter(redeem_codes::batch_id.eq(r.0))
            .filter(redeem_codes::redeemed_at.is_not_null())
            .count()
            .get_result(c)?;
        out.push(Batch {
            id: r.0,
            tokens: r.1,
            codes: r.2,
            redeemed,
            expires_at: r.3,
            note: r.4,
            created_by: r.5,
            created_at: r.6,
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_read_back_however_they_are_typed() -> Result<(), String> {
        let code = new_code().map_err(|e| e.to_string())?;
        assert_eq!(code.len(), 3 + 20 + 4);
        let n = normalize_code(&code).ok_or("does not read back")?;
        assert_eq!(
            normalize_code(&code.to_lowercase()).as_deref(),
            Some(n.as_str())
        );
        assert_eq!(
            normalize_code(&code.replace('-', " ")).as_deref(),
            Some(n.as_str())
        );
        assert_eq!(normalize_code(&code[3..]).as_deref(), Some(n.as_str()));
        assert_eq!(
            normalize_code("TG-0000-0000-0000-0000-000O").as_deref(),
            Some("00000000000000000000")
        );
        assert_eq!(
            normalize_code(&code.replace('-', "\u{2013}")).as_deref(),
            Some(n.as_str())
        );
        assert_eq!(
            normalize_code(&format!("{code}.")).as_deref(),
            Some(n.as_str())
        );
        assert_eq!(
            normalize_code(&format!("{code},1000,2026-12-05,1")).as_deref(),
            Some(n.as_str())
        );
        assert_eq!(normalize_code("TG-1234"), None);
        assert_eq!(normalize_code("TG-UUUU-0000-0000-0000-0000"), None);
        assert_eq!(normalize_code(""), None);
        Ok(())
    }
}
