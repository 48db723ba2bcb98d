//! The mail worker: runs inside every tokengate process, claims due outbox rows,
//! renders and sends them, and records each result.
//!
//! A claim is a lease (`claimed_by`, `claimed_until`) taken in a write transaction,
//! so on any number of replicas each message has one sender at a time. A failed
//! attempt is retried with exponential backoff up to `TOKENGATE_MAIL_MAX_ATTEMPTS`,
//! then marked failed for admins to see; a message that cannot be built (an invalid
//! address) fails at once. One bad message never holds up the others.

use super::Role;
use super::store::{self, AlertFacts, Claimed};
use crate::config::{Config, Locale};
use crate::db::{Database, StoreError};
use crate::domain::{Cycle, used_percent};
use crate::i18n;
use crate::mail::{Delivered, Kind, MailError, Mailer, Outgoing, Templates};
use crate::telemetry::{MailResult, Metrics};
use chrono::NaiveDateTime;
use futures_util::StreamExt;
use serde::Serialize;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Notify;

/// Messages claimed per round.
const BATCH: i64 = 16;
/// Messages of a round in flight at once: SMTP servers limit connections per client.
const PARALLEL: usize = 4;
/// Longest idle wait: how soon a replica notices mail queued by another one.
const POLL: Duration = Duration::from_secs(5);

pub struct MailWorker {
    db: Database,
    /// The ledger's clock, for the links in users' mails (they expire by it).
    ledger: crate::ledger::Ledger,
    mailer: Arc<Mailer>,
    templates: Arc<Templates>,
    config: Arc<Config>,
    worker_id: String,
    signal: Arc<Notify>,
    metrics: Arc<Metrics>,
}

/// What one round did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Round {
    pub sent: usize,
    pub retrying: usize,
    pub failed: usize,
}

impl Round {
    pub fn handled(&self) -> usize {
        self.sent + self.retrying + self.failed
    }
}

impl MailWorker {
    pub fn new(
        ledger: crate::ledger::Ledger,
        mailer: Arc<Mailer>,
        templates: Arc<Templates>,
        config: Arc<Config>,
        worker_id: String,
        signal: Arc<Notify>,
        metrics: Arc<Metrics>,
    ) -> Self {
        Self {
            db: ledger.db().clone(),
            ledger,
            mailer,
            templates,
            config,
            worker_id,
            signal,
            metrics,
        }
    }

    /// Runs until the task is dropped.
    pub async fn run(self) {
        match self.write(store::release_claims).await {
            Ok(0) => {}
            Ok(n) => tracing::warn!(
                messages = n,
                "took back mail a previous run of this instance was sending"
            ),
            Err(e) => tracing::warn!(error = %e, "cannot release old mail claims"),
        }
        tracing::info!(transport = %self.mailer.describe(), "mail worker started");
        loop {
            match self.run_once().await {
                // Something was due: look again at once, more may be.
                Ok(round) if round.handled() > 0 => continue,
                Ok(_) => {}
                Err(e) => tracing::warn!(error = %e, "mail worker cannot read the outbox"),
            }
            let wait = self.idle_wait().await;
            tokio::select! {
                () = self.signal.notified() => {}
                () = tokio::time::sleep(wait) => {}
            }
        }
    }

    /// Claims one batch of due messages and delivers it.
    pub async fn run_once(&self) -> Result<Round, StoreError> {
        let now = wall_now();
        let lease = chrono::Duration::from_std(self.lease()).unwrap_or_default();
        let claimed = self
            .write(move |c, id| store::claim(c, id, now, now + lease, BATCH))
            .await?;
        let results: Vec<_> = futures_util::stream::iter(claimed)
            .map(|row| self.deliver(row))
            .buffer_unordered(PARALLEL)
            .collect()
            .await;
        let mut round = Round::default();
        for r in results {
            let result = r?;
            self.metrics.record_mail(result);
            match result {
                MailResult::Sent => round.sent += 1,
                MailResult::Retrying => round.retrying += 1,
                MailResult::Failed => round.failed += 1,
            }
        }
        Ok(round)
    }

    async fn deliver(&self, row: Claimed) -> Result<MailResult, StoreError> {
        let composed = match (row.alert_id, row.credit_request_id, row.limit_hit_id) {
            (Some(alert_id), _, _) => self.compose_alert(&row, alert_id).await?,
            (None, Some(request_id), _) => self.compose_credit(&row, request_id).await?,
            (None, None, Some(hit_id)) => self.compose_limit(&row, hit_id).await?,
            (None, None, None) => Err(MailError::Build("a message about nothing".into())),
        };
        let outcome = match composed {
            Ok(mail) => self.mailer.send(&mail).await,
            Err(e) => Err(e),
        };
        let now = wall_now();
        let id = row.id;
        match outcome {
            Ok(delivered) => {
                let kept = self
                    .write(move |c, me| store::mark_sent(c, id, me, now))
                    .await?;
                match &delivered {
                    Delivered::Smtp => {
                        tracing::info!(outbox = id, kind = %row.kind, role = %row.role, "mail sent");
                    }
                    Delivered::File(path) => tracing::info!(
                        outbox = id,
                        kind = %row.kind,
                        role = %row.role,
                        file = %path.display(),
                        "mail written to a file (no TOKENGATE_SMTP_URL)"
                    ),
                }
                if !kept {
                    tracing::warn!(
                        outbox = id,
                        "mail was sent after its lease ran out; another worker may send it too"
                    );
                }
                Ok(MailResult::Sent)
            }
            Err(e) => {
                let attempts = u32::try_from(row.attempts).unwrap_or(0).saturating_add(1);
                let policy = self.config.mail_retry;
                let give_up = e.is_permanent() || attempts >= policy.max_attempts;
                let retry_at = (!give_up).then(|| {
                    now + chrono::Duration::from_std(policy.delay_after(attempts))
                        .unwrap_or_default()
                });
                let error = truncate(&e.to_string(), 500);
                self.write(move |c, me| store::mark_attempt_failed(c, id, me, &error, retry_at))
                    .await?;
                if give_up {
                    tracing::error!(outbox = id, kind = %row.kind, attempts, error = %e, "mail failed for good");
                    Ok(MailResult::Failed)
                } else {
                    tracing::warn!(outbox = id, kind = %row.kind, attempts, error = %e, "mail not sent; will retry");
                    Ok(MailResult::Retrying)
                }
            }
        }
    }

    /// An alert's message; the user's copy opens their page with a fresh one-time
    /// link per attempt, so a retried mail never carries a link an earlier attempt
    /// may have spent.
    async fn compose_alert(
        &self,
        row: &Claimed,
        alert_id: i64,
    ) -> Result<Result<Outgoing, MailError>, StoreError> {
        let Some(facts) = self
            .read(move |c, _| store::alert_facts(c, alert_id))
            .await?
        else {
            return Ok(Err(MailError::Build(format!("alert {alert_id} not found"))));
        };
        let page_link = if row.role == Role::User.as_str() {
            Some(self.page_link(facts.user_id).await?)
        } else {
            None
        };
        let locale = self.config.locale;
        let kind = if row.role == Role::Admin.as_str() {
            Kind::AlertAdmin
        } else {
            Kind::AlertUser
        };
        let contact = self.contact_for(facts.user_id).await?;
        let mut ctx = AlertContext::new(&facts, &self.config, locale, contact);
        ctx.page_link = page_link;
        Ok(self.outgoing(row, kind, &ctx, format!("alert-{alert_id}")))
    }

    /// A message about a credit request: to admins when it is made, to the user
    /// when it is decided (with a link to their page).
    async fn compose_credit(
        &self,
        row: &Claimed,
        request_id: i64,
    ) -> Result<Result<Outgoing, MailError>, StoreError> {
        let Some(request) = self
            .read(move |c, _| crate::ledger::credits::request_by_id(c, request_id))
            .await?
        else {
            return Ok(Err(MailError::Build(format!(
                "credit request {request_id} not found"
            ))));
        };
        let locale = self.config.locale;
        let (kind, page_link) = match row.kind.as_str() {
            "credit_requested" => (Kind::CreditRequested, None),
            "credit_approved" => (
                Kind::CreditApproved,
                Some(self.page_link(request.user_id).await?),
            ),
            _ => (
                Kind::CreditDeclined,
                Some(self.page_link(request.user_id).await?),
            ),
        };
        let ctx = CreditContext {
            name: request.user_name.clone(),
            user_label: crate::ledger::stats::label(
                request.user_id,
                request.user_email.as_deref(),
                request.user_name.as_deref(),
                request.user_external_id.as_deref(),
            ),
            tokens: i18n::tokens(request.tokens, locale),
            note: request.note.clone(),
            reason: request.reason.clone(),
            contact: self.contact_for(request.user_id).await?,
            queue_url: format!("{}/admin/requests", self.config.public_url),
            page_link,
        };
        Ok(self.outgoing(row, kind, &ctx, format!("credit-{request_id}")))
    }

    /// To the user refused by a day's or a month's request limit: which, and when
    /// they may write again, with a link to their page.
    async fn compose_limit(
        &self,
        row: &Claimed,
        hit_id: i64,
    ) -> Result<Result<Outgoing, MailError>, StoreError> {
        let Some(hit) = self
            .read(move |c, _| store::limit_hit_facts(c, hit_id))
            .await?
        else {
            return Ok(Err(MailError::Build(format!(
                "request limit {hit_id} not found"
            ))));
        };
        let locale = self.config.locale;
        let tz = self.config.timezone;
        let ctx = LimitContext {
            name: hit.user_name.clone(),
            plan_name: hit.plan_name.clone(),
            per_day: hit.period == crate::domain::Period::Day.as_str(),
            messages: match (locale, hit.request_limit) {
                (Locale::PtBr, 1) => "1 mensagem".to_owned(),
                (Locale::PtBr, n) => format!("{} mensagens", i18n::tokens(i64::from(n), locale)),
                (Locale::En, 1) => "1 message".to_owned(),
                (Locale::En, n) => format!("{} messages", i18n::tokens(i64::from(n), locale)),
            },
            resets_at: i18n::datetime(hit.resets_at, tz, locale),
            contact: self.contact_for(hit.user_id).await?,
            page_link: Some(self.page_link(hit.user_id).await?),
        };
        Ok(self.outgoing(row, Kind::LimitUser, &ctx, format!("limit-{hit_id}")))
    }

    /// The row's message, rendered in the configured language. Its Message-ID names
    /// what it is `about` and the outbox row, so a resend after a crash keeps it.
    fn outgoing(
        &self,
        row: &Claimed,
        kind: Kind,
        ctx: &impl Serialize,
        about: String,
    ) -> Result<Outgoing, MailError> {
        self.templates
            .render(kind, self.config.locale, ctx)
            .map_err(|e| MailError::Build(e.to_string()))
            .map(|rendered| Outgoing {
                to: row.recipient.clone(),
                rendered,
                message_id: format!("tokengate.{about}.{}", row.id),
            })
    }

    /// The contact a user's mail names: their distributor's, else the configured one.
    async fn contact_for(&self, user_id: i64) -> Result<Option<String>, StoreError> {
        let theirs = self
            .read(move |c, _| crate::ledger::distributors::contact_of(c, user_id))
            .await?;
        Ok(theirs.or_else(|| self.config.support_contact.clone()))
    }

    /// A one-time link to the user's page, valid for a week.
    async fn page_link(&self, user_id: i64) -> Result<String, StoreError> {
        let token = crate::me::store::issue(
            &self.db,
            user_id,
            crate::me::store::TokenKind::Link,
            self.ledger.now().naive_utc(),
            crate::me::ALERT_LINK_TTL,
        )
        .await?;
        Ok(crate::me::mail::link_url(&self.config.public_url, &token))
    }

    /// Until the next message is due, within bounds.
    async fn idle_wait(&self) -> Duration {
        let next = self.read(|c, _| store::next_due(c)).await;
        match next {
            Ok(Some(at)) => (at - wall_now())
                .to_std()
                .unwrap_or(Duration::ZERO)
                .clamp(Duration::from_millis(10), POLL),
            _ => POLL,
        }
    }

    /// Long enough that a live sender never loses its lease: every SMTP step of a
    /// batch may hit its timeout.
    fn lease(&self) -> Duration {
        (self.config.smtp_timeout * 10).max(Duration::from_secs(600))
    }

    /// Runs `f` as a write transaction (the write engine's).
    async fn write<T, F>(&self, mut f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnMut(&mut crate::db::AnyConnection, &str) -> Result<T, StoreError> + Send + 'static,
    {
        let id = self.worker_id.clone();
        self.db.write(move |c| f(c, &id)).await
    }

    /// Runs `f` on a pooled connection, off the async threads, for reading.
    async fn read<T, F>(&self, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&mut crate::db::AnyConnection, &str) -> Result<T, StoreError> + Send + 'static,
    {
        let db = self.db.clone();
        let id = self.worker_id.clone();
        actix_web::web::block(move || {
            let mut conn = db.conn()?;
            f(&mut conn, &id)
        })
        .await
        .map_err(|_| StoreError::Unavailable("mail worker task was cancelled".into()))?
    }
}

/// The values credit-request templates see.
#[derive(Serialize)]
struct CreditContext {
    name: Option<String>,
    user_label: String,
    tokens: String,
    note: Option<String>,
    reason: Option<String>,
    contact: Option<String>,
    queue_url: String,
    page_link: Option<String>,
}

/// The values the request-limit templates see.
#[derive(Serialize)]
struct LimitContext {
    name: Option<String>,
    plan_name: String,
    /// A day's limit; else the month's.
    per_day: bool,
    /// The limit, with its noun: "50 mensagens".
    messages: String,
    resets_at: String,
    contact: Option<String>,
    page_link: Option<String>,
}

/// The values alert templates see, formatted for the locale.
#[derive(Serialize)]
struct AlertContext {
    name: Option<String>,
    user_label: String,
    threshold: i32,
    percent: u8,
    blocked: bool,
    /// The plan goes on past 100% (its overage's cap not used up), billed at this
    /// price per 1,000 tokens, up to this many tokens.
    overage: bool,
    overage_price: String,
    overage_cap: String,
    plan_name: String,
    plan_allowance: String,
    used: String,
    left: String,
    resets_on: String,
    contact: Option<String>,
    notified: bool,
    dashboard_url: String,
    /// The user's copy: a one-time link to their page.
    page_link: Option<String>,
}

impl AlertContext {
    fn new(f: &AlertFacts, config: &Config, locale: Locale, contact: Option<String>) -> Self {
        let left = f.allowance_left + f.credits;
        let resets_on = Cycle::parse(&f.cycle)
            .map(|c| {
                let start = c.next().starts_at(config.timezone);
                i18n::date(start.with_timezone(&config.timezone).date_naive(), locale)
            })
            .unwrap_or_default();
        let user_label = match (&f.user_email, &f.external_id) {
            (Some(email), _) => email.clone(),
            (None, Some(ext)) => format!("#{} ({})", f.user_id, truncate(ext, 64)),
            (None, None) => format!("#{}", f.user_id),
        };
        Self {
            name: f.user_name.clone(),
            user_label,
            threshold: f.threshold,
            // A user refused with a few tokens left is exhausted: the plan is used up.
            percent: if f.threshold >= 100 {
                100
            } else {
                used_percent(f.used_this_cycle, left)
            },
            blocked: f.threshold >= 100 && f.overage.is_none(),
            overage: f.overage.is_some(),
            overage_price: f
                .overage
                .map_or_else(String::new, |o| o.price.in_reais(locale == Locale::PtBr)),
            overage_cap: f
                .overage
                .map_or_else(String::new, |o| i18n::tokens(o.cap.get(), locale)),
            plan_name: f.plan_name.clone(),
            plan_allowance: i18n::tokens(f.plan_allowance, locale),
            used: i18n::tokens(f.used_this_cycle, locale),
            left: i18n::tokens(left.max(0), locale),
            resets_on,
            contact,
            notified: f.user_notified,
            dashboard_url: format!("{}/admin/users/{}", config.public_url, f.user_id),
            page_link: None,
        }
    }
}

fn wall_now() -> NaiveDateTime {
    crate::domain::Clock::now(&crate::domain::SystemClock).naive_utc()
}

fn truncate(s: &str, max_chars: usize) -> String {
    s.chars().take(max_chars).collect()
}
