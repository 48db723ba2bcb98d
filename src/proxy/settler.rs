//! Settling metered requests after their answer has left.
//!
//! A client does not wait for its request's settlement: the request's hold keeps its
//! tokens out of every other reservation until the settlement replaces it with the
//! exact charge, so nothing can be overspent meanwhile, and the end of a stream (or a
//! whole title answer) reaches the client a settlement sooner. The settlement goes to
//! the write engine's next group commit (`Ledger::settle_queued`, `db::engine`),
//! which also owns retries of lost races and recovery from a panic. What is left
//! here:
//! - **A user's next request seeing the previous one settled.** LibreChat asks for a
//!   conversation's title the moment the first answer ends; a user near their limit
//!   would find that answer's hold still in the balance. `caught_up` makes a request
//!   wait for the settlements of the same user's requests that ended before it
//!   arrived (in this process). There is rarely one: it is a single hash lookup.
//! - **A settlement that cannot be written** (the database is down, SQLite's disk
//!   is full) goes to the spool on local disk (`spool`), fsynced, and is retried from
//!   there until it is written: across restarts, and whatever the hold's age (a hold
//!   released meanwhile is charged late, see `ledger::tx::settle`).
//! - **An answer's end waits for its settlement to be durable**, so that an answer
//!   a client has whole is charged after any crash (`Durable`). On PostgreSQL it
//!   waits for the commit: the database's own durability, beyond this host. On
//!   SQLite, whose commits are as durable as a file written beside it, it waits
//!   only for a note in the instance's journal (`spool::Spool::note`, one `write`),
//!   and for the commit itself only when it must know what the write did (it may
//!   cross the in-chat notice's threshold and say so) or when the journal cannot be
//!   written (a full disk).
//! - **Shutdown.** `drain` waits for the settlements on their first attempt, and
//!   spools those that are still not written when it gives up.

use super::spool::{Noted, Spool};
use crate::db::StoreError;
use crate::domain::UserKey;
use crate::ledger::{Ledger, SettleResult, Settlement};
use crate::telemetry::{Metrics, Phase};
use std::collections::HashMap;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};
use tokio::sync::Notify;

/// Most settlements waiting for their first attempt. Past it, new requests wait
/// before reserving (`caught_up`): a database that cannot keep up with settlements
/// slows admissions down instead of growing the queue and the holds without bound.
pub const MAX_WAITING: usize = 2048;
/// Longest an answer's end waits for its settlement's first attempt; after it, the
/// settlement goes to the spool, fsynced, and the answer ends (a database that
/// stalls delays the end of answers by this much, and loses none of them).
const DURABLE_WAIT: Duration = Duration::from_secs(1);
/// Pauses between rounds of retries from the spool while they fail.
const RETRY_FIRST: Duration = Duration::from_millis(250);
const RETRY_MAX: Duration = Duration::from_secs(30);

/// Hands settlements to the write engine and keeps what must not be lost; cheap to
/// clone.
#[derive(Clone)]
pub struct Settler {
    shared: Arc<Shared>,
}

struct Shared {
    ledger: Ledger,
    /// Settlements are noted in the spool's journal before their answer ends
    /// (SQLite); on PostgreSQL the answer waits for the commit (`Durable`).
    journal: bool,
    metrics: Arc<Metrics>,
    spool: Spool,
    in_flight: Mutex<InFlight>,
    /// Woken whenever a first attempt ends.
    changed: Notify,
    changed_blocking: Condvar,
    /// Woken when a settlement goes to the spool.
    spooled: Notify,
    /// Requests reserved and not settled yet, with when they started: their holds are
    /// kept alive while they run (`long_running`).
    running: Mutex<HashMap<String, Instant>>,
}

#[derive(Default)]
struct InFlight {
    next_id: u64,
    /// Settlements on their first attempt, by id.
    attempting: HashMap<u64, Attempt>,
    /// Per user, the ids of their settlements on their first attempt, oldest first.
    by_user: HashMap<UserKey, Vec<u64>>,
    /// Requests waiting for a settlement of their user's (`user_settled`): woken by
    /// each, and how many wait.
    waiting: HashMap<UserKey, (Arc<Notify>, usize)>,
}

struct Attempt {
    user_id: i64,
    settlement: Arc<Settlement>,
    /// Noted in the journal: its line outlives the process until it is written.
    noted: bool,
}

/// A settlement on its first attempt, as its write's callback knows it.
struct Attempted {
    id: u64,
    user: UserKey,
    user_id: i64,
    settlement: Arc<Settlement>,
    /// Its line in the journal (SQLite), let go once it is written or spooled.
    noted: Option<Noted>,
    started: Instant,
}

impl Settler {
    pub fn new(ledger: Ledger, metrics: Arc<Metrics>, spool: Spool) -> Self {
        Self {
            shared: Arc::new(Shared {
                journal: matches!(ledger.db().url(), crate::config::DatabaseUrl::Sqlite(_)),
                ledger,
                metrics,
                spool,
                in_flight: Mutex::new(InFlight::default()),
                changed: Notify::new(),
                changed_blocking: Condvar::new(),
                spooled: Notify::new(),
                running: Mutex::new(HashMap::new()),
            }),
        }
    }

    /// A reserved request starts: until its settlement is submitted, its hold is kept
    /// alive however long it runs.
    pub fn started(&self, request_id: &str) {
        self.shared
            .running()
            .insert(request_id.to_owned(), Instant::now());
    }

    /// The requests that have run for longer than `age`, still unsettled.
    pub fn long_running(&self, age: Duration) -> Vec<String> {
        self.shared
            .running()
            .iter()
            .filter(|(_, started)| started.elapsed() >= age)
            .map(|(id, _)| id.clone())
            .collect()
    }

    /// Settles `settlement` of `user` (tokengate's id `user_id`) in the background.
    /// Returns at once; what it returns says when the settlement is durable, for an
    /// answer to wait for before its last bytes leave.
    pub fn submit(&self, user: UserKey, user_id: i64, settlement: Settlement) -> Durable {
        self.shared.running().remove(&settlement.request_id);
        let noted = self
            .shared
            .journal
            .then(|| self.shared.spool.note(user_id, &settlement))
            .flatten();
        let on_disk = noted.is_some();
        let settlement = Arc::new(settlement);
        let id = {
            let mut f = self.shared.lock();
            let id = f.next_id;
            f.next_id += 1;
            f.attempting.insert(
                id,
                Attempt {
                    user_id,
                    settlement: settlement.clone(),
                    noted: on_disk,
                },
            );
            f.by_user.entry(user.clone()).or_default().push(id);
            id
        };
        let shared = self.shared.clone();
        let (reply, written) = tokio::sync::oneshot::channel();
        let attempted = Attempted {
            id,
            user,
            user_id,
            settlement: settlement.clone(),
            noted,
            started: Instant::now(),
        };
        self.shared
            .ledger
            .settle_queued(user_id, settlement.clone(), move |result| {
                let _ = reply.send(shared.first_attempt_done(attempted, result));
            });
        Durable {
            written,
            on_disk,
            settler: self.clone(),
            user_id,
            settlement,
        }
    }

    /// Waits until a settlement of `user`'s is written (or spooled) in this process,
    /// or `limit` passes: a request that waits for its user's other requests to end
    /// wakes for theirs alone, not for every settlement.
    pub async fn user_settled(&self, user: &UserKey, limit: Duration) {
        let notify = {
            let mut f = self.shared.lock();
            let entry = f
                .waiting
                .entry(user.clone())
                .or_insert_with(|| (Arc::new(Notify::new()), 0));
            entry.1 += 1;
            entry.0.clone()
        };
        let _ = tokio::time::timeout(limit, notify.notified()).await;
        let mut f = self.shared.lock();
        if let Some(entry) = f.waiting.get_mut(user) {
            entry.1 -= 1;
            if entry.1 == 0 {
                f.waiting.remove(user);
            }
        }
    }

    /// Waits until the settlements of `user`'s requests submitted before this call are
    /// written (or have gone to the spool), and until fewer than `MAX_WAITING`
    /// settlements wait to be written, for at most `limit`; false if that did not
    /// happen. Returns at once in the usual case, where there is nothing to wait for.
    pub async fn caught_up(&self, user: &UserKey, limit: Duration) -> bool {
        let last = {
            let f = self.shared.lock();
            let last = f.by_user.get(user).and_then(|ids| ids.last().copied());
            if last.is_none() && f.attempting.len() < MAX_WAITING {
                return true;
            }
            last
        };
        self.shared
            .wait_until(limit, |f| {
                let own_done =
                    last.is_none_or(|last| f.by_user.get(user).is_none_or(|ids| ids[0] > last));
                own_done && f.attempting.len() < MAX_WAITING
            })
            .await
    }

    /// Waits, off the async runtime, until every settlement submitted so far has been
    /// written or has gone to the spool, for at most `limit`; false if not. For tests
    /// and tools that read balances right after an answer.
    pub fn attempted_blocking(&self, limit: Duration) -> bool {
        let f = self.shared.lock();
        let (f, _) = self
            .shared
            .changed_blocking
            .wait_timeout_while(f, limit, |f| !f.attempting.is_empty())
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        f.attempting.is_empty()
    }

    /// Settlements are noted in the journal (SQLite): an answer need not wait for
    /// its write unless it must know what the write did.
    pub fn uses_journal(&self) -> bool {
        self.shared.journal
    }

    /// The spool's file, which is also this instance's lock.
    pub fn spool_path(&self) -> &std::path::Path {
        self.shared.spool.path()
    }

    /// How many settlements wait in the spool.
    pub fn spooled(&self) -> usize {
        self.shared.spool.len()
    }

    /// Writes every settlement of the spool, off the async runtime: at start, before
    /// the holds a previous run left are released. Errs (and keeps the rest) when the
    /// database cannot be reached; a settlement that fails otherwise (a bug) is logged,
    /// kept in the spool for the retries, and does not hold up the others or the start.
    pub fn replay_blocking(&self) -> Result<usize, StoreError> {
        let mut written = 0;
        for spooled in self.shared.spool.pending(usize::MAX) {
            match self.shared.ledger.settle_blocking(&spooled.settlement) {
                Ok(result) => {
                    self.shared.record(&spooled.settlement, result);
                    self.shared.spool.done(&spooled.settlement.request_id);
                    written += 1;
                }
                Err(e @ StoreError::Unavailable(_)) => return Err(e),
                Err(e) => {
                    tracing::error!(request_id = %spooled.settlement.request_id, charge = spooled.settlement.charge, error = %e, "a spooled settlement cannot be written; it stays in the spool");
                }
            }
        }
        Ok(written)
    }

    /// Retries the spool's settlements until they are written, for as long as the
    /// process runs: at once after one is added, then at growing intervals while
    /// they fail. One that keeps failing for another reason than an unreachable
    /// database (a bug) is logged each round and never holds up the others.
    pub async fn retry_spooled(self) {
        let mut pause = RETRY_FIRST;
        loop {
            let spooled = self.shared.spooled.notified();
            tokio::pin!(spooled);
            spooled.as_mut().enable();
            let waiting = self.shared.spool.pending(usize::MAX);
            if waiting.is_empty() {
                spooled.await;
                pause = RETRY_FIRST;
                continue;
            }
            let mut failed = false;
            for s in &waiting {
                match self.shared.ledger.settle(s.settlement.clone()).await {
                    Ok(result) => {
                        self.shared.record(&s.settlement, result);
                        self.shared.spool.done(&s.settlement.request_id);
                    }
                    Err(e) => {
                        failed = true;
                        let unreachable = matches!(e, StoreError::Unavailable(_));
                        if unreachable {
                            tracing::warn!(request_id = %s.settlement.request_id, error = %e, spooled = waiting.len(), "settlement still cannot be written; kept in the spool");
                            break;
                        }
                        tracing::error!(request_id = %s.settlement.request_id, charge = s.settlement.charge, error = %e, "a spooled settlement cannot be written; it stays in the spool");
                    }
                }
            }
            if failed {
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(RETRY_MAX);
            } else {
                pause = RETRY_FIRST;
            }
        }
    }

    /// At shutdown, once no request can start: waits up to `limit` for the
    /// settlements on their first attempt, then spools those still unwritten, so
    /// that the next start writes them.
    pub async fn drain(&self, limit: Duration) {
        let done = self
            .shared
            .wait_until(limit, |f| f.attempting.is_empty())
            .await;
        self.shared.spool.empty_journal();
        if !done {
            let left: Vec<(i64, Arc<Settlement>, bool)> = self
                .shared
                .lock()
                .attempting
                .values()
                .map(|a| (a.user_id, a.settlement.clone(), a.noted))
                .collect();
            for (user_id, s, noted) in &left {
                if *noted {
                    self.shared.spool.add_journaled(*user_id, s);
                } else {
                    self.shared.spool.add(*user_id, s);
                }
            }
            tracing::warn!(
                spooled = left.len(),
                "stopping with settlements still being written; they are kept in the spool for the next start"
            );
        }
        let waiting = self.shared.spool.pending(usize::MAX);
        if !waiting.is_empty() {
            let lost: Vec<&str> = waiting
                .iter()
                .filter(|s| !s.durable)
                .map(|s| s.settlement.request_id.as_str())
                .collect();
            for s in waiting.iter().filter(|s| !s.durable) {
                log_lost(&s.settlement);
            }
            tracing::warn!(
                spooled = waiting.len(),
                lost = lost.len(),
                spool = %self.shared.spool.path().display(),
                "stopping with settlements in the spool; the next start writes them"
            );
        }
    }
}

/// A settlement on its way to the database, for the answer that waits for it.
pub struct Durable {
    written: tokio::sync::oneshot::Receiver<Option<SettleResult>>,
    /// Noted in the journal: it survives a crash already.
    on_disk: bool,
    settler: Settler,
    user_id: i64,
    settlement: Arc<Settlement>,
}

impl Durable {
    /// Resolves once the settlement is durable, with what the write did when the
    /// answer needs it (`Settlement::can_carry_notice`): at once when it is noted
    /// in the journal (SQLite) and nothing is needed; else once written (what it wrote), or
    /// in the spool (`None`). A first attempt still running after `DURABLE_WAIT` (a
    /// database that stalls) is not waited for: a settlement not in the journal is
    /// spooled then, and written once, whichever of the two gets there first
    /// (settling is idempotent).
    pub async fn wait(self) -> Option<SettleResult> {
        if self.on_disk && !self.settlement.can_carry_notice {
            return None;
        }
        match tokio::time::timeout(DURABLE_WAIT, self.written).await {
            Ok(Ok(written)) => written,
            // In the journal: the write goes on, and a crash leaves it to the next
            // start. (A write dropped unrun, a bug, is spooled below.)
            Err(_) if self.on_disk => None,
            Ok(Err(_)) | Err(_) => {
                tracing::warn!(request_id = %self.settlement.request_id, "settlement not written within a second; kept in the spool");
                let shared = self.settler.shared.clone();
                let (user_id, settlement) = (self.user_id, self.settlement.clone());
                let noted = self.on_disk;
                // An fsync: off the async runtime.
                let spooled = tokio::task::spawn_blocking(move || {
                    if noted {
                        // Its write was dropped unrun (a bug): its line stays.
                        shared.spool.add_journaled(user_id, &settlement);
                    } else {
                        shared.spool.add(user_id, &settlement);
                    }
                    shared.spooled.notify_one();
                })
                .await;
                if spooled.is_err() {
                    tracing::error!(request_id = %self.settlement.request_id, "spooling a settlement failed");
                }
                None
            }
        }
    }
}

impl Shared {
    fn running(&self) -> MutexGuard<'_, HashMap<String, Instant>> {
        self.running
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn lock(&self) -> MutexGuard<'_, InFlight> {
        // The bookkeeping stays consistent under a panic elsewhere: keep going.
        self.in_flight
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Waits until `done` holds, for at most `limit`; false if it did not.
    async fn wait_until(&self, limit: Duration, done: impl Fn(&InFlight) -> bool) -> bool {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            let changed = self.changed.notified();
            tokio::pin!(changed);
            // Registered before the check, so a change right after it still wakes us.
            changed.as_mut().enable();
            if done(&self.lock()) {
                return true;
            }
            if tokio::time::timeout_at(deadline, changed).await.is_err() {
                return done(&self.lock());
            }
        }
    }

    /// The first attempt is over (on the writer thread): written, or spooled.
    /// Returns what was written, `None` when it went to the spool.
    fn first_attempt_done(
        &self,
        a: Attempted,
        result: Result<SettleResult, StoreError>,
    ) -> Option<SettleResult> {
        let Attempted {
            id,
            user,
            user_id,
            settlement: s,
            noted,
            started,
        } = a;
        let user = &user;
        let written = match result {
            Ok(result) => {
                self.metrics.record_phase(Phase::Settle, started.elapsed());
                self.record(&s, result);
                if let Some(noted) = noted {
                    noted.written();
                }
                Some(result)
            }
            Err(e) => {
                tracing::warn!(request_id = %s.request_id, error = %e, "settlement failed; kept in the spool and retried");
                // Its journal line goes only once the spool has it on disk.
                match noted {
                    Some(noted) => self.spool.add_noted(user_id, &s, noted),
                    None => self.spool.add(user_id, &s),
                };
                self.spooled.notify_one();
                None
            }
        };
        {
            let mut f = self.lock();
            if let Some((waiters, _)) = f.waiting.get(user) {
                waiters.notify_waiters();
            }
            f.attempting.remove(&id);
            if let Some(ids) = f.by_user.get_mut(user) {
                ids.retain(|i| *i != id);
                if ids.is_empty() {
                    f.by_user.remove(user);
                }
            }
        }
        self.changed.notify_waiters();
        self.changed_blocking.notify_all();
        written
    }

    fn record(&self, s: &Settlement, result: SettleResult) {
        match result {
            SettleResult::Settled { charged, .. } => {
                self.metrics.record_settlement(s.outcome, charged);
                tracing::info!(
                    request_id = %s.request_id,
                    outcome = s.outcome.as_str(),
                    status = s.status,
                    prompt_tokens = s.prompt_tokens,
                    completion_tokens = s.completion_tokens,
                    charged,
                    estimated = s.estimated,
                    latency_ms = s.latency.as_millis() as u64,
                    "settled"
                );
            }
            SettleResult::SettledLate { charged } => {
                self.metrics.record_settlement(s.outcome, charged);
                self.metrics.record_late_settlement();
                tracing::error!(
                    request_id = %s.request_id,
                    outcome = s.outcome.as_str(),
                    charged,
                    "settlement arrived after its hold was released; charged now"
                );
            }
            SettleResult::AlreadySettled => {}
        }
    }
}

/// Logs a settlement that will not be written, with what it would have charged, so
/// that it can be reconciled by hand.
fn log_lost(s: &Settlement) {
    tracing::error!(
        request_id = %s.request_id,
        prompt_tokens = s.prompt_tokens,
        completion_tokens = s.completion_tokens,
        charge = s.charge,
        "settlement never reached the disk and the process is stopping: it is lost"
    );
}
