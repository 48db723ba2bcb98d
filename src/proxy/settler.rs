//! Settling metered requests after their answer has left.
//!
//! A client does not wait for its request's settlement: the request's hold keeps its
//! tokens out of every other reservation until the settlement replaces it with the
//! exact charge, so nothing can be overspent meanwhile, and the end of a stream (or a
//! whole title answer) reaches the client a settlement sooner, about 250 µs on
//! SQLite. Three things must not be lost on the way:
//! - **A settlement at shutdown.** Settlements run on a thread and runtime of their
//!   own (`tokengate-settle`), not on the HTTP workers, whose tasks are dropped when
//!   the server stops; `drain` waits for them after it has stopped.
//! - **A user's next request seeing the previous one settled.** LibreChat asks for a
//!   conversation's title the moment the first answer ends; a user near their limit
//!   would find that answer's hold still in the balance. `caught_up` makes a request
//!   wait for the settlements of the same user's requests that ended before it
//!   arrived (in this process). There is rarely one: it is a single hash lookup.
//! - **A settlement that fails** (a database blip). It is retried in the background
//!   for as long as its hold lives.
//! - **The settlement thread itself, to a panic.** Were it to end, every later
//!   request would go unsettled and its hold be released uncharged: free service
//!   until a restart. A batch that panics is settled again one by one, and one that
//!   still fails (or panics) goes to retry like any other.
//!
//! Settlements waiting together are written together (`Ledger::settle_many`), each in
//! a savepoint of its own: one transaction and one commit on PostgreSQL, the writer
//! thread's group commit on SQLite. On PostgreSQL, where every commit waits for its
//! WAL flush, that is most of the cost of a settlement under load; one batch at a
//! time also keeps settlements from crowding reservations out of the connection pool.

use crate::db::StoreError;
use crate::domain::UserKey;
use crate::ledger::{Ledger, SettleResult, Settlement};
use crate::telemetry::{Metrics, Phase};
use std::collections::HashMap;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};
use tokio::sync::{Notify, mpsc};

/// Most settlements in one transaction: bounds how long it holds its locks.
const MAX_BATCH: usize = 256;
/// Most settlements waiting for their first attempt. Past it, new requests wait
/// before reserving (`caught_up`): a database that cannot keep up with settlements
/// slows admissions down instead of growing the queue and the holds without bound.
pub const MAX_WAITING: usize = 2048;

/// Hands settlements to the settlement thread; cheap to clone. When the last handle
/// is dropped, the thread writes what it was given and stops.
#[derive(Clone)]
pub struct Settler {
    shared: Arc<Shared>,
    jobs: mpsc::UnboundedSender<Job>,
}

struct Job {
    id: u64,
    user: UserKey,
    /// The balance row the settlement locks: batches lock rows in this order.
    user_id: i64,
    settlement: Settlement,
}

struct Shared {
    ledger: Ledger,
    metrics: Arc<Metrics>,
    in_flight: Mutex<InFlight>,
    /// Woken whenever a settlement is written or goes to retry.
    changed: Notify,
    changed_blocking: Condvar,
}

#[derive(Default)]
struct InFlight {
    next_id: u64,
    /// Settlements on their first attempt (the sum of `by_user`'s lengths).
    attempting: usize,
    /// Per user, the settlements on their first attempt, oldest first.
    by_user: HashMap<UserKey, Vec<u64>>,
    /// Every settlement not yet written, retries included.
    total: usize,
    /// Settlements waiting for a retry, kept to be logged if the process stops first.
    retrying: HashMap<u64, Settlement>,
}

impl Settler {
    /// Starts the settlement thread.
    pub fn start(ledger: Ledger, metrics: Arc<Metrics>) -> std::io::Result<Self> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .thread_name("tokengate-settle")
            .build()?;
        let shared = Arc::new(Shared {
            ledger,
            metrics,
            in_flight: Mutex::new(InFlight::default()),
            changed: Notify::new(),
            changed_blocking: Condvar::new(),
        });
        let (jobs, queue) = mpsc::unbounded_channel();
        let writer = shared.clone();
        std::thread::Builder::new()
            .name("tokengate-settle".into())
            .spawn(move || runtime.block_on(writer.run(queue)))?;
        Ok(Self { shared, jobs })
    }

    /// Settles `settlement` of `user` (tokengate's id `user_id`) in the background.
    /// Returns at once.
    pub fn submit(&self, user: UserKey, user_id: i64, settlement: Settlement) {
        let id = {
            let mut f = self.shared.lock();
            let id = f.next_id;
            f.next_id += 1;
            f.total += 1;
            f.attempting += 1;
            f.by_user.entry(user.clone()).or_default().push(id);
            id
        };
        let job = Job {
            id,
            user,
            user_id,
            settlement,
        };
        if let Err(mpsc::error::SendError(job)) = self.jobs.send(job) {
            // Only if the settlement thread died: the hold is released uncharged by
            // the sweeper, so say what it was.
            tracing::error!(request_id = %job.settlement.request_id, charge = job.settlement.charge, "the settlement thread is gone; settlement lost");
            self.shared.finished(&job, false);
        }
    }

    /// Waits until the settlements of `user`'s requests submitted before this call are
    /// written (or have gone to retry), and until fewer than `MAX_WAITING`
    /// settlements wait to be written, for at most `limit`; false if that did not
    /// happen. Returns at once in the usual case, where there is nothing to wait for.
    pub async fn caught_up(&self, user: &UserKey, limit: Duration) -> bool {
        let last = {
            let f = self.shared.lock();
            let last = f.by_user.get(user).and_then(|ids| ids.last().copied());
            if last.is_none() && f.attempting < MAX_WAITING {
                return true;
            }
            last
        };
        self.shared
            .wait_until(limit, |f| {
                let own_done =
                    last.is_none_or(|last| f.by_user.get(user).is_none_or(|ids| ids[0] > last));
                own_done && f.attempting < MAX_WAITING
            })
            .await
    }

    /// Waits until no settlement is in flight, for at most `limit`; false if some are
    /// still unwritten then.
    async fn idle(&self, limit: Duration) -> bool {
        self.shared.wait_until(limit, |f| f.total == 0).await
    }

    /// Waits, off the async runtime, until every settlement submitted so far has been
    /// written or has gone to retry, for at most `limit`; false if not. For tests and
    /// tools that read balances right after an answer.
    pub fn attempted_blocking(&self, limit: Duration) -> bool {
        let f = self.shared.lock();
        let (f, _) = self
            .shared
            .changed_blocking
            .wait_timeout_while(f, limit, |f| f.attempting > 0)
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        f.attempting == 0
    }

    /// At shutdown, once no request can start: waits up to `limit` for the
    /// settlements in flight, and logs, with their charges, those that could not be
    /// written (their holds are released uncharged at the next start).
    pub async fn drain(&self, limit: Duration) {
        if self.idle(limit).await {
            return;
        }
        let f = self.shared.lock();
        for s in f.retrying.values() {
            log_unwritten(s, "stopping with this settlement unwritten");
        }
        tracing::error!(
            unwritten = f.total,
            "stopping with settlements unwritten; their holds are released uncharged"
        );
    }
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, InFlight> {
        // The counters stay consistent under a panic elsewhere: keep going.
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

    fn wake(&self) {
        self.changed.notify_waiters();
        self.changed_blocking.notify_all();
    }

    /// The first attempt is over: later requests of this user no longer wait for it.
    /// A settlement going to retry stays counted in `total` until `retried`.
    fn finished(&self, job: &Job, retrying: bool) {
        {
            let mut f = self.lock();
            f.attempting -= 1;
            if let Some(ids) = f.by_user.get_mut(&job.user) {
                ids.retain(|i| *i != job.id);
                if ids.is_empty() {
                    f.by_user.remove(&job.user);
                }
            }
            if retrying {
                f.retrying.insert(job.id, job.settlement.clone());
            } else {
                f.total -= 1;
            }
        }
        self.wake();
    }

    fn retried(&self, id: u64) {
        {
            let mut f = self.lock();
            f.retrying.remove(&id);
            f.total -= 1;
        }
        self.wake();
    }

    /// The settlement thread: takes what is waiting, writes it in one transaction,
    /// and sends what failed to be retried on its own.
    async fn run(self: Arc<Self>, mut queue: mpsc::UnboundedReceiver<Job>) {
        let mut batch = Vec::with_capacity(MAX_BATCH);
        while queue.recv_many(&mut batch, MAX_BATCH).await > 0 {
            batch.sort_by_key(|j: &Job| (j.user_id, j.id));
            let settling = Instant::now();
            let settlements: Arc<[Settlement]> =
                batch.iter().map(|j| j.settlement.clone()).collect();
            let results = match unwinding(self.ledger.settle_many(settlements)).await {
                Ok(results) => results,
                Err(panic) => {
                    tracing::error!(panic = %panic, settlements = batch.len(), "settling a batch panicked; settling each alone");
                    Ok(self.settle_each(&batch).await)
                }
            };
            let took = settling.elapsed();
            let mut results = match results {
                Ok(r) => r,
                Err(e) => {
                    tracing::warn!(error = %e, settlements = batch.len(), "writing settlements failed; retrying each in the background");
                    Vec::new()
                }
            }
            .into_iter();
            for job in batch.drain(..) {
                match results.next() {
                    Some(Ok(result)) => {
                        self.metrics.record_phase(Phase::Settle, took);
                        self.record(&job.settlement, result);
                        self.finished(&job, false);
                    }
                    failed => {
                        if let Some(Err(e)) = failed {
                            tracing::warn!(request_id = %job.settlement.request_id, error = %e, "settlement failed; retrying in the background");
                        }
                        self.finished(&job, true);
                        let shared = self.clone();
                        tokio::spawn(async move {
                            shared.retry(&job.settlement).await;
                            shared.retried(job.id);
                        });
                    }
                }
            }
        }
    }

    /// Settles each job in a transaction of its own, a panic counting as a failure.
    async fn settle_each(&self, batch: &[Job]) -> Vec<Result<SettleResult, StoreError>> {
        let mut results = Vec::with_capacity(batch.len());
        for job in batch {
            let settled = unwinding(self.ledger.settle(job.settlement.clone())).await;
            results.push(settled.unwrap_or_else(|panic| {
                Err(StoreError::Unavailable(format!(
                    "settling panicked: {panic}"
                )))
            }));
        }
        results
    }

    async fn retry(&self, s: &Settlement) {
        let hold_life = self.ledger.hold_max_age().saturating_sub(s.latency);
        for delay in retry_delays(hold_life) {
            tokio::time::sleep(delay).await;
            match unwinding(self.ledger.settle(s.clone())).await {
                Ok(Ok(result)) => {
                    self.record(s, result);
                    return;
                }
                Ok(Err(_)) => {}
                Err(panic) => {
                    tracing::error!(request_id = %s.request_id, panic = %panic, "settling panicked; retrying")
                }
            }
        }
        log_unwritten(
            s,
            "settlement failed for as long as its hold lives; the sweeper releases the hold uncharged",
        );
    }

    fn record(&self, s: &Settlement, result: SettleResult) {
        if let SettleResult::Settled { charged } = result {
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
    }
}

/// Runs `f` to completion, a panic inside it becoming its message. The settlement
/// thread's state is safe to reuse after one: `InFlight` is not held while settling,
/// and the write connection is replaced after a panic (`db::batch`).
async fn unwinding<F: std::future::Future>(f: F) -> Result<F::Output, String> {
    use futures_util::FutureExt;
    std::panic::AssertUnwindSafe(f)
        .catch_unwind()
        .await
        .map_err(|panic| {
            panic
                .downcast_ref::<&str>()
                .map(|m| (*m).to_owned())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "a panic without a message".to_owned())
        })
}

/// Logs a settlement that will not be written, with what it would have charged, so
/// that it can be reconciled by hand: its hold is released uncharged.
fn log_unwritten(s: &Settlement, why: &str) {
    tracing::error!(
        request_id = %s.request_id,
        prompt_tokens = s.prompt_tokens,
        completion_tokens = s.completion_tokens,
        charge = s.charge,
        "{why}"
    );
}

/// When a failed settlement is tried again: doubling from 250 ms to 30 s apart, for
/// as long as the request's hold still lives. Once the sweeper has released the hold
/// (after `TOKENGATE_HOLD_MAX_AGE_SECS`) the charge could no longer be written, so a
/// database outage shorter than that loses no charge.
fn retry_delays(hold_life: Duration) -> impl Iterator<Item = Duration> {
    let mut next = Duration::from_millis(250);
    let mut waited = Duration::ZERO;
    std::iter::from_fn(move || {
        let delay = next;
        waited += delay;
        next = (next * 2).min(Duration::from_secs(30));
        (waited < hold_life).then_some(delay)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retries_last_as_long_as_the_hold() {
        let hour = Duration::from_secs(3600);
        let delays: Vec<Duration> = retry_delays(hour).collect();
        let total: Duration = delays.iter().sum();
        assert_eq!(delays[0], Duration::from_millis(250));
        assert!(delays.iter().all(|d| *d <= Duration::from_secs(30)));
        assert!(
            total < hour && total > hour - Duration::from_secs(30),
            "{total:?}"
        );
        // Well past the 3 minutes that twelve retries used to cover.
        assert!(delays.len() > 100);
        assert_eq!(retry_delays(Duration::ZERO).count(), 0);
    }
}
