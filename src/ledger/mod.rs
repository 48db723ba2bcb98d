//! Balances, holds and the append-only ledger (docs/behaviour.md).
//!
//! Every mutation runs in one write transaction that first locks the user's balance
//! row, so reservations of one user are serialized on any number of replicas and a
//! user can never reserve more than `allowance_left + credits - held`.

pub mod audit;
pub mod credits;
pub mod distributors;
mod plans;
pub mod reports;
mod requests;
mod reserve;
pub mod revenue;
mod scope;
mod settle;
pub mod stats;
mod tx;
pub mod views;

use crate::alerts::AlertPolicy;
use crate::db::schema::balances;
use crate::db::{Database, StoreError};
use crate::domain::{
    Clock, Cycle, DistributorId, Email, Identity, PlanChange, PlanModels, PlanSpec, Scope, Side,
    TokenAmount, Weights,
};
use chrono::{DateTime, Utc};
use chrono_tz::Tz;
use diesel::prelude::*;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Notify;

pub use plans::PlanRef;
pub use scope::Scoped;
pub use views::{InvariantReport, UserSummary};

/// What a metered request asks to reserve.
#[derive(Debug, Clone)]
pub struct ReserveRequest {
    pub request_id: String,
    pub identity: Identity,
    pub model: String,
    pub endpoint: &'static str,
    pub stream: bool,
    pub prompt_tokens: i64,
    /// The completion the client asked for (or the configured default); `None` for
    /// endpoints that produce no completion (embeddings).
    pub requested_completion: Option<i64>,
    /// The smallest limit upstream accepts: a balance that pays for less is refused
    /// (the Responses API raises a smaller `max_output_tokens` to 16).
    pub min_completion: i64,
    /// How many completions the provider may generate and bill, each up to the
    /// limit (`n`, `best_of`, a list of prompts).
    pub completions: i64,
    /// Image parts, reserved at the most the model may bill for each.
    pub images: i64,
    /// The answer can carry the in-chat notice (a streamed text answer): a notice
    /// due is claimed by this request.
    pub notice_eligible: bool,
    /// The request uses something the provider bills beyond its text (its own
    /// tools, web search, content kept there): reserved at the admin's extra cost
    /// for the model, or refused without one.
    pub needs_extra: bool,
    /// Wait rather than be cut or refused because of the user's own requests in
    /// flight: `ReserveOutcome::Crowded` instead, with nothing written.
    pub patient: bool,
    /// What the model costs when no admin has set its weights.
    pub unpriced: crate::domain::tokens::UnpricedModels,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReserveOutcome {
    Reserved(Reservation),
    Blocked(Blocked),
    /// An admin suspended the user; `contact` is their distributor's.
    Suspended {
        contact: Option<String>,
    },
    /// The plan's request limit for a window is used up.
    LimitReached(LimitReached),
    /// The user's plan does not include the model; these are the ones it does.
    ModelNotInPlan(PlanModels),
    /// No admin has set the model's weights, and unpriced models are refused
    /// (`UnpricedModels::Refuse`).
    ModelNotPriced,
    /// The request needs an extra cost for its model (`needs_extra`) that the admin
    /// has not set.
    NotReservable,
    /// Only the holds of the user's own requests in flight keep this one from its
    /// whole limit (or from being served): nothing was written; try again once they
    /// end (`patient`). `held` is what they held then (`Ledger::held`).
    Crowded {
        user_id: i64,
        held: i64,
    },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reservation {
    pub request_id: String,
    pub user_id: i64,
    pub amount: i64,
    pub weights: Weights,
    /// How many completion tokens the balance pays for (`None` for embeddings).
    pub allowed_completion: Option<i64>,
    /// The prompt as reserved: the text's estimate and the images at their worst
    /// case. Charged when no usage comes back.
    pub prompt_estimate: i64,
    /// What the balance has left for other requests while this one holds its
    /// reservation (`x-tokengate-remaining`).
    pub remaining: i64,
    /// The in-chat notice this answer ends with, claimed from the balance.
    pub notice: Option<NoticeBase>,
    /// Charged all it holds, with every other request of the user's in flight
    /// charged all theirs, this request would reach the in-chat notice's threshold:
    /// its answer may be the one that crosses it, and waits for its settlement to
    /// know. Any other answer ends without waiting; should it cross after all
    /// (requests of the user's that began later ended first), the notice is due
    /// for the next answer.
    pub may_cross_notice: bool,
}

/// What the in-chat notice says, before this answer's own charge is known.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NoticeBase {
    /// Used this cycle before this request.
    pub used: i64,
    /// Used plus what is left (allowance and credits) before this request.
    pub total: i64,
}

/// Why a request was refused for balance.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Blocked {
    pub reason: BlockReason,
    pub plan_name: String,
    pub used_percent: u8,
    /// What the balance had left for this request: allowance and credits, less the
    /// holds of requests in flight.
    pub remaining: i64,
    /// Whom the user's distributor sends its users to; `None`: the install's contact.
    pub contact: Option<String>,
}

/// A request limit the user has reached, and when its window starts over.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LimitReached {
    pub period: crate::domain::Period,
    pub limit: crate::domain::RequestLimit,
    pub resets_at: chrono::DateTime<chrono::Utc>,
}

impl LimitReached {
    /// Whole seconds from `now` until the window starts over, at least one.
    pub fn seconds_left(&self, now: chrono::DateTime<chrono::Utc>) -> u64 {
        u64::try_from((self.resets_at - now).num_milliseconds())
            .unwrap_or(0)
            .div_ceil(1000)
            .max(1)
    }
}

/// Why a balance could not pay (docs/behaviour.md).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BlockReason {
    /// The plan is used up: no request of the user's is in flight, and what remains
    /// is below the smallest useful request. Counts as crossing 100% for alerts and
    /// as blocked in the dashboard.
    Exhausted,
    /// The user's requests in flight hold what this one needs: it may pass once they
    /// end.
    InFlight,
    /// This request alone (a long conversation, images, many choices) costs more
    /// than a balance that is otherwise healthy.
    TooLarge,
    /// The plan's allowance of one side (input or output) is used up, and credits
    /// do not pay for it: as `Exhausted` for alerts and the dashboard.
    SideUsedUp(Side),
    /// The monthly pool of the user's distributor is used up (by all its users):
    /// the user's own balance is not, so no alert of theirs.
    PoolUsedUp,
}

impl BlockReason {
    pub fn as_str(&self) -> &'static str {
        match self {
            Self::Exhausted => "exhausted",
            Self::InFlight => "in_flight",
            Self::TooLarge => "too_large",
            Self::SideUsedUp(Side::Input) => "input_used_up",
            Self::SideUsedUp(Side::Output) => "output_used_up",
            Self::PoolUsedUp => "pool_used_up",
        }
    }

    /// Whether the user can make no request until their balance grows: counted as
    /// crossing 100%, and as blocked.
    pub fn used_up(&self) -> bool {
        matches!(self, Self::Exhausted | Self::SideUsedUp(_))
    }
}

/// How a request ended, recorded with its usage.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Completed,
    UpstreamError,
    UpstreamUnreachable,
    UpstreamTimeout,
    /// The upstream stream broke after some bytes were sent.
    UpstreamBroken,
    ClientDisconnected,
    /// Released by the sweeper or at restart: the request's process died.
    Abandoned,
}

impl Outcome {
    /// The outcome an `as_str` name stands for.
    pub fn parse(s: &str) -> Option<Self> {
        [
            Self::Completed,
            Self::UpstreamError,
            Self::UpstreamUnreachable,
            Self::UpstreamTimeout,
            Self::UpstreamBroken,
            Self::ClientDisconnected,
            Self::Abandoned,
        ]
        .into_iter()
        .find(|o| o.as_str() == s)
    }

    pub fn as_str(&self) -> &'static str {
        match self {
            Self::Completed => "completed",
            Self::UpstreamError => "upstream_error",
            Self::UpstreamUnreachable => "upstream_unreachable",
            Self::UpstreamTimeout => "upstream_timeout",
            Self::UpstreamBroken => "upstream_broken",
            Self::ClientDisconnected => "client_disconnected",
            Self::Abandoned => "abandoned",
        }
    }
}

/// The end of a metered request: what to charge and what to record.
#[derive(Debug, Clone)]
pub struct Settlement {
    pub request_id: String,
    pub prompt_tokens: i64,
    pub completion_tokens: i64,
    /// The weighted cost to debit; 0 releases the hold without a charge.
    pub charge: i64,
    /// Of `charge`, what the output cost (the rest is the input's): what a plan's
    /// separate output allowance pays (`domain::sides`).
    pub output_charge: i64,
    /// True when the usage was counted by tokengate, not reported by upstream.
    pub estimated: bool,
    pub outcome: Outcome,
    pub status: u16,
    pub latency: Duration,
    pub ttfb: Option<Duration>,
    /// The answer waits for this settlement and can still end with the in-chat
    /// notice, should its usage cross the threshold (a streamed text answer).
    pub can_carry_notice: bool,
    /// LibreChat's conversation, when it names one (`{{LIBRECHAT_BODY_CONVERSATIONID}}`).
    pub conversation: Option<String>,
}

impl Settlement {
    /// Releases a hold without a charge.
    pub fn released(request_id: String, outcome: Outcome, status: u16) -> Self {
        Self {
            request_id,
            prompt_tokens: 0,
            completion_tokens: 0,
            charge: 0,
            output_charge: 0,
            estimated: false,
            outcome,
            status,
            latency: Duration::ZERO,
            ttfb: None,
            can_carry_notice: false,
            conversation: None,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SettleResult {
    Settled {
        charged: i64,
        /// The in-chat notice for this answer to end with: its usage crossed the
        /// threshold, and it said it could carry the line (`can_carry_notice`).
        notice: Option<NoticeBase>,
    },
    /// The request's hold had been released as abandoned (its instance looked
    /// dead, or the hold outlived its maximum age), charged its prompt, although
    /// the request went on: what it really cost is settled now (`charged` is the
    /// difference, negative when given back).
    SettledLate { charged: i64 },
    /// The request id was settled before: nothing changed.
    AlreadySettled,
}

/// What an admin sets for a model: what a token of it costs from the balance, the
/// most one image may cost with it (`None`: the worst case tokengate knows for the
/// name), and the most a call may cost beyond its text when it uses what the
/// provider bills apart (its own tools, web search, content kept there; `None`:
/// such calls are refused). Reserved on every such call, on top of the rest.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ModelCost {
    pub weights: Weights,
    pub image_tokens: Option<i64>,
    pub call_extra: Option<i64>,
}

impl From<Weights> for ModelCost {
    fn from(weights: Weights) -> Self {
        Self {
            weights,
            ..Self::default()
        }
    }
}

/// Who made a ledger change.
#[derive(Debug, Clone)]
pub enum Actor {
    System,
    Admin(String),
    Cli,
    /// A user acting on their own balance (redeeming a code), by tokengate id.
    User(i64),
    /// The user's LibreChat role, moving them to its plan.
    Role,
}

impl Actor {
    pub fn label(&self) -> String {
        match self {
            Self::System => "system".into(),
            Self::Admin(email) => format!("admin:{email}"),
            Self::Cli => "cli".into(),
            Self::User(id) => format!("user:#{id}"),
            Self::Role => "librechat-role".into(),
        }
    }
}

/// Why an instance could not start under its id.
#[derive(Debug, thiserror::Error)]
pub enum ClaimError {
    #[error(
        "another tokengate with the instance id {instance:?} is alive (its lock: {owner}); stop it, or give this one its own TOKENGATE_INSTANCE_ID"
    )]
    Alive { instance: String, owner: String },
    #[error(transparent)]
    Store(#[from] StoreError),
}

#[derive(Debug, thiserror::Error)]
pub enum LedgerError {
    #[error("no user matches {0:?}")]
    UserNotFound(String),
    #[error("no plan named {0:?}")]
    PlanNotFound(String),
    #[error("a plan named {0:?} already exists")]
    PlanExists(String),
    /// A LibreChat role names one plan at most.
    #[error("the role {role:?} already takes its users to the plan {plan:?}")]
    RoleTaken { role: String, plan: String },
    #[error("no distributor named {0:?}")]
    DistributorNotFound(String),
    #[error("a distributor named {0:?} already exists")]
    DistributorExists(String),
    #[error("the tenant id {0:?} already names another distributor")]
    TenantTaken(String),
    #[error("{0}")]
    Invalid(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl From<diesel::result::Error> for LedgerError {
    fn from(e: diesel::result::Error) -> Self {
        Self::Store(StoreError::from(e))
    }
}

impl crate::db::RetryableError for LedgerError {
    fn is_retryable(&self) -> bool {
        matches!(self, Self::Store(e) if e.is_retryable())
    }
}

/// How a user is named on the command line or in the dashboard: LibreChat id, email
/// or tokengate's numeric id.
pub fn parse_user_ref(raw: &str) -> UserRef {
    let raw = raw.trim();
    if let Ok(email) = Email::parse(raw) {
        UserRef::Email(email)
    } else if let Some(id) = raw.strip_prefix('#').and_then(|n| n.parse().ok()) {
        UserRef::Id(id)
    } else {
        UserRef::External(raw.to_owned())
    }
}

#[derive(Debug, Clone)]
pub enum UserRef {
    Id(i64),
    External(String),
    Email(Email),
}

/// Handle on the ledger; cheap to clone.
#[derive(Clone)]
pub struct Ledger {
    db: Database,
    clock: Arc<dyn Clock>,
    tz: Tz,
    instance_id: String,
    /// This run of the instance (a fresh id per process start).
    run_id: String,
    hold_max_age: Duration,
    alerts: Arc<AlertPolicy>,
    /// Woken when a settlement queues alert mail, so the worker sends at once.
    outbox_signal: Arc<Notify>,
}

impl Ledger {
    pub fn new(
        db: Database,
        clock: Arc<dyn Clock>,
        tz: Tz,
        instance_id: String,
        hold_max_age: Duration,
    ) -> Self {
        Self {
            db,
            clock,
            tz,
            instance_id,
            run_id: uuid::Uuid::now_v7().to_string(),
            hold_max_age,
            alerts: Arc::new(AlertPolicy::default()),
            outbox_signal: Arc::new(Notify::new()),
        }
    }

    /// Sets the thresholds and admin copies alerts are written with.
    pub fn with_alert_policy(mut self, policy: AlertPolicy) -> Self {
        self.alerts = Arc::new(policy);
        self
    }

    pub fn outbox_signal(&self) -> Arc<Notify> {
        self.outbox_signal.clone()
    }

    pub fn instance_id(&self) -> &str {
        &self.instance_id
    }

    pub fn db(&self) -> &Database {
        &self.db
    }

    pub fn now(&self) -> DateTime<Utc> {
        self.clock.now()
    }

    pub fn timezone(&self) -> Tz {
        self.tz
    }

    pub fn current_cycle(&self) -> Cycle {
        Cycle::containing(self.now(), self.tz)
    }

    /// Identifies (and if new, provisions) the user and reserves tokens for one request
    /// in a single transaction (on SQLite, run inline or in the next group commit; see
    /// `db::engine`). Should the caller stop waiting (a client that went away), the
    /// reservation is still written, and `abandoned` gets it, to release it.
    pub async fn reserve(
        &self,
        req: ReserveRequest,
        abandoned: impl FnOnce(Reservation) + Send + 'static,
    ) -> Result<ReserveOutcome, StoreError> {
        let now = self.now();
        let ctx = tx::Ctx::new(now, self.tz);
        let expires = now + chrono::Duration::from_std(self.hold_max_age).unwrap_or_default();
        let instance_id = self.instance_id.clone();
        let policy = self.alerts.clone();
        let (outcome, queued) = self
            .db
            .write_or(
                move |c| reserve::reserve(c, &ctx, &req, &instance_id, expires, &policy),
                |(outcome, _)| {
                    if let ReserveOutcome::Reserved(r) = outcome {
                        abandoned(r);
                    }
                },
            )
            .await?;
        if queued > 0 {
            self.outbox_signal.notify_one();
        }
        Ok(outcome)
    }

    /// The body of a settlement's transaction: charges what a request used and
    /// releases its hold, writing any alert the usage crossed in the same
    /// transaction. Idempotent per request id. The moment it is written in is read
    /// when it runs.
    fn settle_tx(
        &self,
        s: Arc<Settlement>,
    ) -> impl FnMut(&mut crate::db::AnyConnection) -> Result<SettleResult, StoreError> + Send + 'static
    {
        let (clock, tz, policy, signal) = (
            self.clock.clone(),
            self.tz,
            self.alerts.clone(),
            self.outbox_signal.clone(),
        );
        move |c| {
            let ctx = tx::Ctx::new(clock.now(), tz);
            let (result, queued) = settle::settle(c, &ctx, &s, &policy)?;
            if queued > 0 {
                // Committed only with the rest; a worker that wakes early finds
                // nothing and waits again.
                signal.notify_one();
            }
            Ok(result)
        }
    }

    /// Settles one request; returns once the settlement is durable.
    pub async fn settle(&self, s: Settlement) -> Result<SettleResult, StoreError> {
        self.db.write(self.settle_tx(Arc::new(s))).await
    }

    /// Hands a settlement to the next group commit (`Database::queue`) and returns
    /// at once; `done` gets the result once it is written (or failed). Groups lock
    /// balance rows in the order of the user's id, so that replicas settling at once
    /// never deadlock.
    pub fn settle_queued(
        &self,
        user_id: i64,
        s: Arc<Settlement>,
        done: impl FnOnce(Result<SettleResult, StoreError>) + Send + 'static,
    ) {
        self.db.queue(user_id, self.settle_tx(s), done);
    }

    /// `settle` for callers off the async runtime (the hold sweeper).
    pub fn settle_blocking(&self, s: &Settlement) -> Result<SettleResult, StoreError> {
        self.db.write_blocking(self.settle_tx(Arc::new(s.clone())))
    }

    /// Adds non-expiring credits; takes effect on the user's very next request.
    pub fn grant_credits(
        &self,
        user: &UserRef,
        amount: TokenAmount,
        actor: &Actor,
        note: Option<&str>,
    ) -> Result<UserSummary, LedgerError> {
        let ctx = tx::Ctx::new(self.now(), self.tz);
        let (user, actor, note) = (user.clone(), actor.clone(), note.map(str::to_owned));
        let user_id = self.db.write_blocking(move |c| {
            tx::grant_credits(c, &ctx, &user, amount, &actor, note.as_deref())
        })?;
        self.user_summary(user_id)
    }

    /// Creates a user by email before their first chat; their first request that
    /// carries this email links to it. Returns the existing user if one has the email.
    pub fn create_user_by_email(
        &self,
        email: &Email,
        name: Option<&str>,
        actor: &Actor,
    ) -> Result<i64, LedgerError> {
        let ctx = tx::Ctx::new(self.now(), self.tz);
        let (email, name, actor) = (email.clone(), name.map(str::to_owned), actor.clone());
        self.db.write_blocking(move |c| {
            tx::create_user_by_email(c, &ctx, &email, name.as_deref(), &actor)
        })
    }

    /// Creates a distributor; returns its id.
    pub fn create_distributor(
        &self,
        change: &distributors::DistributorChange,
        actor: &Actor,
    ) -> Result<i64, LedgerError> {
        let ctx = tx::Ctx::new(self.now(), self.tz);
        let (change, actor) = (change.clone(), actor.clone());
        self.db
            .write_blocking(move |c| distributors::create(c, &ctx, &change, &actor))
    }

    /// Changes a distributor (what `change` leaves out stays).
    pub fn edit_distributor(
        &self,
        distributor: &str,
        change: &distributors::DistributorChange,
        actor: &Actor,
    ) -> Result<i64, LedgerError> {
        let ctx = tx::Ctx::new(self.now(), self.tz);
        let (name, change, actor) = (distributor.to_owned(), change.clone(), actor.clone());
        self.db.write_blocking(move |c| {
            let id = distributors::find(c, &name)?
                .ok_or_else(|| LedgerError::DistributorNotFound(name.clone()))?;
            distributors::edit(c, &ctx, id, &change, &actor)?;
            Ok(id)
        })
    }

    /// The distributor `raw` names (its name or `#id`), if any.
    pub fn find_distributor(&self, raw: &str) -> Result<Option<i64>, StoreError> {
        let mut conn = self.db.conn()?;
        distributors::find(&mut conn, raw)
    }

    /// Every distributor but the install's own, with its pool and keys.
    pub fn list_distributors(&self) -> Result<Vec<distributors::DistributorRow>, StoreError> {
        let ctx = tx::Ctx::new(self.now(), self.tz);
        let mut conn = self.db.conn()?;
        distributors::list(&mut conn, &ctx)
    }

    /// Stores a client key's digest for a distributor (`None`: the install's own).
    pub fn add_client_key(
        &self,
        distributor: Option<&str>,
        key: &distributors::NewKey,
        actor: &Actor,
    ) -> Result<(), LedgerError> {
        let ctx = tx::Ctx::new(self.now(), self.tz);
        let (name, key, actor) = (distributor.map(str::to_owned), key.clone(), actor.clone());
        self.db.write_blocking(move |c| {
            let id = match &name {
                None => crate::domain::DistributorId::DIRECT.get(),
                Some(name) => distributors::find(c, name)?
                    .ok_or_else(|| LedgerError::DistributorNotFound(name.clone()))?,
            };
            distributors::add_key(c, &ctx, id, &key, &actor)
        })
    }

    /// Revokes the stored keys with this label; returns how many.
    pub fn revoke_client_key(&self, label: &str, actor: &Actor) -> Result<usize, LedgerError> {
        let ctx = tx::Ctx::new(self.now(), self.tz);
        let (label, actor) = (label.to_owned(), actor.clone());
        self.db
            .write_blocking(move |c| distributors::revoke_key(c, &ctx, &label, &actor))
    }

    /// A live stored key by its digest: its distributor, and whether it may name
    /// distributors.
    pub fn find_client_key(&self, digest_hex: &str) -> Result<Option<(i64, bool)>, StoreError> {
        let mut conn = self.db.conn()?;
        distributors::find_key(&mut conn, digest_hex)
    }

    /// The stored client keys and tenant ids, for the proxy's key check.
    pub fn key_ring(&self) -> Result<distributors::KeyRing, StoreError> {
        let mut conn = self.db.conn()?;
        distributors::key_ring(&mut conn)
    }

    /// Creates one of the install's plans (offered to every distributor); with
    /// `make_default`, new users start on it.
    pub fn create_plan(
        &self,
        spec: &PlanSpec,
        make_default: bool,
        actor: &Actor,
    ) -> Result<i64, LedgerError> {
        self.create_plan_of(DistributorId::DIRECT, spec, make_default, actor)
    }

    /// Creates a plan of `owner`'s; with `make_default`, its new users start on it.
    pub fn create_plan_of(
        &self,
        owner: DistributorId,
        spec: &PlanSpec,
        make_default: bool,
        actor: &Actor,
    ) -> Result<i64, LedgerError> {
        let ctx = tx::Ctx::new(self.now(), self.tz);
        let (spec, actor) = (spec.clone(), actor.clone());
        self.db.write_blocking(move |c| {
            plans::create_plan(c, &ctx, owner, &spec, make_default, &actor)
        })
    }

    /// Changes a plan in one transaction (what `change` leaves out stays): its name
    /// and models at once, its allowance from each user's next cycle. Returns its id.
    pub fn update_plan(
        &self,
        plan: &PlanRef,
        change: &PlanChange,
        actor: &Actor,
    ) -> Result<i64, LedgerError> {
        let ctx = tx::Ctx::new(self.now(), self.tz);
        let (plan, change, actor) = (plan.clone(), change.clone(), actor.clone());
        self.db
            .write_blocking(move |c| plans::update_plan(c, &ctx, &plan, &change, &actor))
    }

    pub fn set_default_plan(&self, plan_id: i64, actor: &Actor) -> Result<(), LedgerError> {
        let ctx = tx::Ctx::new(self.now(), self.tz);
        let actor = actor.clone();
        self.db
            .write_blocking(move |c| plans::set_default_plan(c, &ctx, plan_id, &actor))
    }

    /// Moves a user to another plan now; this cycle's allowance becomes the new
    /// plan's, less what the allowance already paid for this cycle.
    pub fn change_plan(
        &self,
        user_id: i64,
        plan_id: i64,
        actor: &Actor,
    ) -> Result<(), LedgerError> {
        let ctx = tx::Ctx::new(self.now(), self.tz);
        let actor = actor.clone();
        self.db
            .write_blocking(move |c| plans::change_plan(c, &ctx, user_id, plan_id, &actor))
    }

    /// Sets what a model costs (`ModelCost`).
    pub fn set_weights(
        &self,
        model: &str,
        cost: ModelCost,
        actor: &Actor,
    ) -> Result<(), StoreError> {
        let now = self.now().naive_utc();
        let (model, actor) = (model.to_owned(), actor.clone());
        self.db
            .write_blocking(move |c| tx::set_weights(c, &model, &cost, now, &actor))
    }

    pub fn set_suspended(
        &self,
        user: &UserRef,
        suspended: bool,
        actor: &Actor,
    ) -> Result<(), LedgerError> {
        let now = self.now().naive_utc();
        let (user, actor) = (user.clone(), actor.clone());
        self.db
            .write_blocking(move |c| tx::set_suspended(c, &user, suspended, now, &actor))
    }

    /// What a user's requests in flight hold now: a read, without a lock.
    pub fn held(&self, user_id: i64) -> Result<i64, StoreError> {
        let mut conn = self.db.conn()?;
        Ok(balances::table
            .find(user_id)
            .select(balances::held)
            .first(&mut conn)?)
    }

    /// The overview of usage and user states of the users `scope` reaches.
    pub fn overview_in(&self, scope: Scope) -> Result<stats::Overview, StoreError> {
        let now = self.now();
        let cycle = self.current_cycle();
        let mut conn = self.db.conn()?;
        stats::overview(
            &mut conn,
            scope,
            now,
            self.tz,
            &cycle.key(),
            cycle.starts_at(self.tz),
        )
    }

    /// A page of the user list and the number of users that match.
    pub fn list_users_page(
        &self,
        q: &stats::UserQuery,
    ) -> Result<(Vec<stats::UserRow>, i64), StoreError> {
        let key = self.current_cycle().key();
        let mut conn = self.db.conn()?;
        stats::list_users(&mut conn, q, &key)
    }

    /// A user asks for `tokens` more; admins are mailed.
    pub fn request_credits(
        &self,
        user_id: i64,
        tokens: TokenAmount,
        note: Option<&str>,
    ) -> Result<i64, credits::RequestError> {
        let ctx = tx::Ctx::new(self.now(), self.tz);
        let note = note.map(str::to_owned);
        let admins = self.alerts.admin_emails.clone();
        let id = self.db.write_blocking(move |c| {
            credits::open_request(c, &ctx, user_id, tokens, note.as_deref(), &admins)
        })?;
        self.outbox_signal.notify_one();
        Ok(id)
    }

    /// An admin approves (the tokens are granted) or declines an open request; the
    /// user is mailed either way.
    /// `label` names the request in the ledger's note ("pedido de créditos" makes
    /// "pedido de créditos #12").
    pub fn decide_credit_request(
        &self,
        id: i64,
        approve: bool,
        reason: Option<&str>,
        actor: &Actor,
        label: &'static str,
    ) -> Result<credits::CreditRequest, credits::RequestError> {
        let ctx = tx::Ctx::new(self.now(), self.tz);
        let (reason, actor) = (reason.map(str::to_owned), actor.clone());
        let decided = self.db.write_blocking(move |c| {
            credits::decide_request(c, &ctx, id, approve, reason.as_deref(), &actor, label)
        })?;
        self.outbox_signal.notify_one();
        Ok(decided)
    }

    /// Credit requests: open ones oldest first, decided ones newest first.
    pub fn credit_requests(
        &self,
        which: credits::Which,
        user_id: Option<i64>,
        limit: i64,
    ) -> Result<Vec<credits::CreditRequest>, StoreError> {
        let mut conn = self.db.conn()?;
        credits::requests(&mut conn, Scope::All, which, user_id, limit)
    }

    /// A batch of the install's codes; the codes are returned here and never again.
    pub fn create_code_batch(
        &self,
        tokens: TokenAmount,
        count: i64,
        expires_at: chrono::NaiveDateTime,
        note: Option<&str>,
        actor: &Actor,
    ) -> Result<(i64, Vec<String>), StoreError> {
        self.create_code_batch_of(
            DistributorId::DIRECT,
            tokens,
            count,
            expires_at,
            note,
            actor,
        )
    }

    /// A batch of `owner`'s codes, which only its users redeem.
    pub fn create_code_batch_of(
        &self,
        owner: DistributorId,
        tokens: TokenAmount,
        count: i64,
        expires_at: chrono::NaiveDateTime,
        note: Option<&str>,
        actor: &Actor,
    ) -> Result<(i64, Vec<String>), StoreError> {
        let ctx = tx::Ctx::new(self.now(), self.tz);
        let batch = credits::NewBatch {
            owner,
            tokens,
            count,
            expires_at,
            note: note.map(str::to_owned),
        };
        let actor = actor.clone();
        self.db
            .write_blocking(move |c| credits::create_batch(c, &ctx, &batch, &actor))
    }

    /// `label` names the batch in the ledger's note ("código do lote" makes
    /// "código do lote #3").
    pub fn redeem_code(
        &self,
        user_id: i64,
        code: &str,
        label: &'static str,
    ) -> Result<credits::Redeemed, LedgerError> {
        let ctx = tx::Ctx::new(self.now(), self.tz);
        let code = code.to_owned();
        self.db
            .write_blocking(move |c| credits::redeem(c, &ctx, user_id, &code, label))
    }

    /// An answer that claimed the in-chat notice ended without showing it (an
    /// error, a client gone): the notice is due again, for the next answer. Written
    /// in the background; a notice lost to a crash here costs no money.
    pub fn notice_still_due(&self, user_id: i64) {
        let db = self.db.clone();
        let now = self.now().naive_utc();
        actix_web::rt::spawn(async move {
            let restored = db
                .write(move |c| {
                    diesel::update(
                        balances::table
                            .filter(balances::user_id.eq(user_id))
                            .filter(balances::notice_due.is_null()),
                    )
                    .set(balances::notice_due.eq(now))
                    .execute(c)
                    .map_err(StoreError::from)
                })
                .await;
            if let Err(e) = restored {
                tracing::warn!(user = user_id, error = %e, "in-chat notice not kept for the next answer");
            }
        });
    }

    /// What a user spent this cycle, per model.
    pub fn usage_by_model(&self, user_id: i64) -> Result<Vec<stats::ModelUsage>, StoreError> {
        let since = self.current_cycle().starts_at(self.tz);
        let mut conn = self.db.conn()?;
        Ok(stats::usage_by_model(&mut conn, user_id, since)?)
    }

    /// Every plan, with its users, their use this cycle and its revenue.
    pub fn plans(&self) -> Result<Vec<views::PlanRow>, StoreError> {
        self.plans_in(Scope::All)
    }

    /// The plans `scope` sees, with the figures of the users it reaches.
    pub fn plans_in(&self, scope: Scope) -> Result<Vec<views::PlanRow>, StoreError> {
        let mut conn = self.db.conn()?;
        Ok(views::plans(&mut conn, scope, &self.current_cycle().key())?)
    }

    /// The plan named `name`.
    pub fn plan(&self, name: &str) -> Result<views::PlanRow, LedgerError> {
        self.plans()?
            .into_iter()
            .find(|p| p.name == name)
            .ok_or_else(|| LedgerError::PlanNotFound(name.to_owned()))
    }

    /// The models the caller may use (`/v1/models`): a user known to LibreChat as
    /// `who.key`, or about to be linked by `who.email` to one an admin created.
    pub fn models_for(&self, who: &Identity) -> Result<PlanModels, StoreError> {
        let mut conn = self.db.conn()?;
        Ok(views::models_for(&mut conn, who)?)
    }

    /// Every model with a weight set, and what it costs.
    pub fn weights(&self) -> Result<Vec<views::ModelRow>, StoreError> {
        let mut conn = self.db.conn()?;
        Ok(views::weights(&mut conn)?)
    }

    /// A user's newest ledger entries first.
    pub fn recent_ledger_entries(
        &self,
        user_id: i64,
        limit: i64,
    ) -> Result<Vec<views::LedgerEntry>, StoreError> {
        let mut conn = self.db.conn()?;
        Ok(views::recent_ledger_entries(&mut conn, user_id, limit)?)
    }

    /// The audit log, newest first (of one user, or of everything).
    pub fn audit_entries(
        &self,
        user_id: Option<i64>,
        limit: i64,
        offset: i64,
    ) -> Result<Vec<audit::AuditEntry>, StoreError> {
        let mut conn = self.db.conn()?;
        audit::entries(&mut conn, Scope::All, user_id, limit, offset)
    }

    /// Claims this instance's id for this run, and frees every hold a previous run of
    /// it left behind (this run holds none yet, so all of them are dead). `owner` says
    /// where this run's lock is (host and spool file): a previous run with the same
    /// owner is dead, since this run holds its lock. Another owner's row is taken over
    /// only once it is dead by the sweeper's rule (silent for `dead_after`); should
    /// its heartbeat advance meanwhile, another live process uses the id, and this
    /// one is refused.
    pub fn claim_instance(&self, owner: &str, dead_after: Duration) -> Result<usize, ClaimError> {
        let dead_after_db = chrono::Duration::from_std(dead_after).unwrap_or_default();
        let mut first_seen = None;
        loop {
            let (id, run, owner_now) = (
                self.instance_id.clone(),
                self.run_id.clone(),
                owner.to_owned(),
            );
            let claim = self.db.write_blocking(move |c| {
                tx::claim_instance(c, &id, &run, &owner_now, dead_after_db)
            })?;
            match claim {
                tx::Claim::Taken => break,
                tx::Claim::Held {
                    heartbeat_at,
                    owner: their_owner,
                } => match first_seen {
                    None => {
                        tracing::warn!(instance = %self.instance_id, their_owner = ?their_owner, "another process beat with this instance id recently; waiting to see whether it is alive");
                        first_seen = Some(heartbeat_at);
                    }
                    Some(first) if first != heartbeat_at => {
                        return Err(ClaimError::Alive {
                            instance: self.instance_id.clone(),
                            owner: their_owner.unwrap_or_else(|| "unknown".into()),
                        });
                    }
                    Some(_) => {}
                },
            }
            std::thread::sleep(
                (dead_after / 20).clamp(Duration::from_millis(10), Duration::from_secs(1)),
            );
        }
        Ok(self.release_holds(|h| h.instance_id == self.instance_id, None)?)
    }

    /// Beats for this run, with the database's clock; false when another process has
    /// claimed the instance id since.
    pub fn heartbeat(&self) -> Result<bool, StoreError> {
        let (id, run) = (self.instance_id.clone(), self.run_id.clone());
        self.db.write_blocking(move |c| tx::heartbeat(c, &id, &run))
    }

    /// Opens the current cycle and closes those before it, recording what their
    /// paying users' plans brought (`revenue`). Every instance calls it as it
    /// beats; the first to see a new cycle does the closing. Returns the cycles
    /// closed.
    pub fn turn_cycles(&self) -> Result<Vec<String>, StoreError> {
        let ctx = tx::Ctx::new(self.now(), self.tz);
        self.db.write_blocking(move |c| revenue::turn(c, &ctx))
    }

    /// Keeps the holds of requests still running (`request_ids`, this instance's)
    /// alive for another `TOKENGATE_HOLD_MAX_AGE_SECS`: a generation may outlast it.
    pub fn extend_holds(&self, request_ids: Vec<String>) -> Result<usize, StoreError> {
        if request_ids.is_empty() {
            return Ok(0);
        }
        let until = (self.now()
            + chrono::Duration::from_std(self.hold_max_age).unwrap_or_default())
        .naive_utc();
        let id = self.instance_id.clone();
        self.db
            .write_blocking(move |c| tx::extend_holds(c, &id, &request_ids, until))
    }

    /// Releases the holds of instances that stopped beating `instance_timeout` ago
    /// by the database's clock, and holds that outlived their maximum age.
    pub fn sweep_stale_holds(&self, instance_timeout: Duration) -> Result<usize, StoreError> {
        let live = {
            let mut conn = self.db.conn()?;
            let db_now = tx::db_now(&mut conn)?;
            let dead_before =
                db_now - chrono::Duration::from_std(instance_timeout).unwrap_or_default();
            views::live_instances(&mut conn, dead_before)?
        };
        let now = self.now().naive_utc();
        self.release_holds(
            |h| h.expires_at < now || !live.contains(&h.instance_id),
            Some(instance_timeout),
        )
    }

    /// Releases the holds `pick` chooses, each charged its prompt (the requests
    /// were sent upstream, which bills at least that). With `dead_after`, each is
    /// judged again inside its own transaction (its expiry, its instance's last
    /// heartbeat by the database's clock), so that a hold extended, or an instance
    /// that beat again, since the list was read keeps its hold.
    fn release_holds(
        &self,
        pick: impl Fn(&views::HoldRow) -> bool,
        dead_after: Option<Duration>,
    ) -> Result<usize, StoreError> {
        let holds = {
            let mut conn = self.db.conn()?;
            views::all_holds(&mut conn)?
        };
        let mut released = 0;
        for hold in holds.iter().filter(|h| pick(h)) {
            let age = (self.now().naive_utc() - hold.created_at)
                .to_std()
                .unwrap_or_default();
            // The request was sent upstream, which bills at least its prompt.
            let mut release = Settlement::released(hold.request_id.clone(), Outcome::Abandoned, 0);
            release.prompt_tokens = hold.prompt_tokens.unwrap_or(0);
            release.charge = hold.prompt_charge.unwrap_or(0);
            release.estimated = true;
            release.latency = age;
            let (clock, tz, policy, signal) = (
                self.clock.clone(),
                self.tz,
                self.alerts.clone(),
                self.outbox_signal.clone(),
            );
            let dead_after = dead_after.map(|d| chrono::Duration::from_std(d).unwrap_or_default());
            let result = self.db.write_blocking(move |c| {
                let ctx = tx::Ctx::new(clock.now(), tz);
                if let Some(dead_after) = dead_after
                    && !tx::still_stale(c, &ctx, &release.request_id, dead_after)?
                {
                    return Ok(SettleResult::AlreadySettled);
                }
                let (result, queued) = settle::settle(c, &ctx, &release, &policy)?;
                if queued > 0 {
                    signal.notify_one();
                }
                Ok::<_, StoreError>(result)
            })?;
            if result != SettleResult::AlreadySettled {
                released += 1;
            }
        }
        Ok(released)
    }

    /// How long a hold lives before the sweeper releases it uncharged.
    pub fn hold_max_age(&self) -> Duration {
        self.hold_max_age
    }

    pub fn find_user(&self, user: &UserRef) -> Result<Option<i64>, StoreError> {
        let mut conn = self.db.conn()?;
        Ok(views::find_user(&mut conn, user)?)
    }

    /// A user's balance as of now (rolling the cycle first if it ended).
    pub fn user_summary(&self, user_id: i64) -> Result<UserSummary, LedgerError> {
        self.roll_if_needed(user_id)?;
        let mut conn = self.db.conn()?;
        views::user_summary(&mut conn, user_id, self.tz, self.now())?
            .ok_or_else(|| LedgerError::UserNotFound(format!("#{user_id}")))
    }

    pub fn list_users(&self) -> Result<Vec<UserSummary>, LedgerError> {
        let ids = {
            let mut conn = self.db.conn()?;
            views::user_ids(&mut conn)?
        };
        ids.into_iter().map(|id| self.user_summary(id)).collect()
    }

    pub fn ledger_entries(&self, user_id: i64) -> Result<Vec<views::LedgerEntry>, StoreError> {
        let mut conn = self.db.conn()?;
        Ok(views::ledger_entries(&mut conn, user_id)?)
    }

    /// Every usage record of the user, oldest first.
    pub fn usage_records(&self, user_id: i64) -> Result<Vec<views::UsageRecord>, StoreError> {
        let mut conn = self.db.conn()?;
        Ok(views::usage_records(&mut conn, user_id, None)?)
    }

    /// The user's `n` newest usage records, newest first.
    pub fn recent_usage(
        &self,
        user_id: i64,
        n: i64,
    ) -> Result<Vec<views::UsageRecord>, StoreError> {
        let mut conn = self.db.conn()?;
        Ok(views::usage_records(&mut conn, user_id, Some(n))?)
    }

    /// The user's use this cycle per LibreChat conversation, most used first.
    pub fn conversations(&self, user_id: i64) -> Result<Vec<reports::ReportRow>, StoreError> {
        let now = self.now();
        let from = self
            .current_cycle()
            .starts_at(self.tz)
            .with_timezone(&self.tz)
            .date_naive();
        let to = now.with_timezone(&self.tz).date_naive();
        let Some(period) = reports::Period::new(from, to) else {
            return Ok(Vec::new());
        };
        let mut conn = self.db.conn()?;
        reports::report(
            &mut conn,
            Scope::All,
            self.tz,
            period,
            reports::GroupBy::Conversation,
            Some(user_id),
            self.current_cycle(),
        )
    }

    /// Whom the user's distributor sends its users to, if it says.
    pub fn contact_of(&self, user_id: i64) -> Result<Option<String>, StoreError> {
        let mut conn = self.db.conn()?;
        distributors::contact_of(&mut conn, user_id)
    }

    /// What the user spent per local day of the current cycle, up to today.
    pub fn daily_usage(&self, user_id: i64) -> Result<Vec<(chrono::NaiveDate, i64)>, StoreError> {
        let now = self.now();
        let start = self.current_cycle().starts_at(self.tz);
        let days = (now.with_timezone(&self.tz).date_naive()
            - start.with_timezone(&self.tz).date_naive())
        .num_days()
            + 1;
        let mut conn = self.db.conn()?;
        Ok(stats::daily(
            &mut conn,
            now,
            self.tz,
            days.clamp(1, 31),
            stats::Daily::User(user_id),
        )?)
    }

    pub fn holds(&self) -> Result<Vec<views::HoldRow>, StoreError> {
        let mut conn = self.db.conn()?;
        Ok(views::all_holds(&mut conn)?)
    }

    /// Checks that the stored balance equals the sum of the ledger and that `held`
    /// equals the holds in flight.
    pub fn check_invariant(&self, user_id: i64) -> Result<InvariantReport, StoreError> {
        let mut conn = self.db.conn()?;
        Ok(views::invariant(&mut conn, user_id)?)
    }

    /// Starts a new cycle for the user if the calendar moved on (a page view counts
    /// as much as a request).
    fn roll_if_needed(&self, user_id: i64) -> Result<(), StoreError> {
        let ctx = tx::Ctx::new(self.now(), self.tz);
        let stale = {
            let mut conn = self.db.conn()?;
            views::balance_cycle(&mut conn, user_id)?.is_some_and(|c| c != ctx.cycle_key)
        };
        if stale {
            self.db
                .write_blocking(move |c| tx::lock_and_roll(c, &ctx, user_id).map(|_| ()))?;
        }
        Ok(())
    }
}
