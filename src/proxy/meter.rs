//! Settling a request, and the stream wrapper that passes upstream bytes through
//! unchanged while it reads usage on the side.

use super::estimate;
use super::sse::{SseScanner, Usage};
use crate::ledger::{Ledger, Outcome, SettleResult, Settlement};
use crate::telemetry::{Metrics, Phase};
use bytes::Bytes;
use futures_util::future::LocalBoxFuture;
use futures_util::{FutureExt, Stream, StreamExt};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

/// Everything needed to settle one reserved request.
#[derive(Clone)]
pub struct Meter {
    pub ledger: Ledger,
    pub metrics: Arc<Metrics>,
    pub request_id: String,
    pub weights: crate::domain::Weights,
    pub prompt_estimate: i64,
    pub started: Instant,
}

impl Meter {
    /// What to charge: upstream's reported usage when there is one, else an estimate
    /// from the prompt and the text that was delivered. Failures charge nothing.
    pub fn settlement(
        &self,
        outcome: Outcome,
        status: u16,
        usage: Option<Usage>,
        delivered_text: &str,
        ttfb: Option<Duration>,
    ) -> Settlement {
        let charges = matches!(
            outcome,
            Outcome::Completed | Outcome::ClientDisconnected | Outcome::UpstreamBroken
        );
        let (prompt, completion, estimated) = match (charges, usage) {
            (false, _) => (0, 0, false),
            (true, Some(u)) => (u.prompt_tokens, u.completion_tokens, false),
            (true, None) => (
                self.prompt_estimate,
                estimate::count_text(delivered_text),
                true,
            ),
        };
        Settlement {
            request_id: self.request_id.clone(),
            prompt_tokens: prompt,
            completion_tokens: completion,
            charge: if charges {
                self.weights.cost(prompt, completion)
            } else {
                0
            },
            estimated,
            outcome,
            status,
            latency: self.started.elapsed(),
            ttfb,
        }
    }

    /// Settles durably (`Ledger::settle`); on failure keeps retrying in the background
    /// so an acknowledged request is not lost to a database blip.
    pub async fn settle(&self, settlement: Settlement) {
        let settling = Instant::now();
        match self.ledger.settle(settlement.clone()).await {
            Ok(r) => {
                self.metrics.record_phase(Phase::Settle, settling.elapsed());
                self.record(&settlement, r);
            }
            Err(e) => {
                tracing::warn!(request_id = %settlement.request_id, error = %e, "settlement failed; retrying in the background");
                spawn_retry(self.clone(), settlement);
            }
        }
    }

    /// Settles without waiting (used from `Drop`, where nothing can be awaited).
    pub fn settle_detached(self, settlement: Settlement) {
        actix_web::rt::spawn(async move { self.settle(settlement).await });
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

fn spawn_retry(meter: Meter, settlement: Settlement) {
    actix_web::rt::spawn(async move {
        let hold_life = meter
            .ledger
            .hold_max_age()
            .saturating_sub(meter.started.elapsed());
        for delay in retry_delays(hold_life) {
            actix_web::rt::time::sleep(delay).await;
            if let Ok(r) = meter.ledger.settle(settlement.clone()).await {
                meter.record(&settlement, r);
                return;
            }
        }
        tracing::error!(
            request_id = %settlement.request_id,
            prompt_tokens = settlement.prompt_tokens,
            completion_tokens = settlement.completion_tokens,
            charge = settlement.charge,
            "settlement failed for as long as its hold lives; the sweeper releases the hold uncharged"
        );
    });
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

type ByteStream = Pin<Box<dyn Stream<Item = Result<Bytes, reqwest::Error>>>>;

/// Most bytes gathered into one write to the client.
const MAX_BURST: usize = 64 * 1024;

/// Passes the upstream stream through unchanged. When upstream ends, the request is
/// settled before the client sees the end of the body; when the client goes away
/// (the stream is dropped early), what was delivered is charged.
///
/// Chunks that upstream sent together leave together. hyper hands over a response
/// body one chunk at a time, each after its connection task has run, and actix
/// writes to the socket whenever the body has nothing ready, so a burst of N events
/// cost N socket writes (about 20 per benchmark stream, a fifth of tokengate's CPU).
/// After each chunk this stream lets the other ready tasks run once
/// (`tokio::task::yield_now`) and takes whatever has arrived meanwhile; it never waits
/// for data, so a lone chunk is only delayed by that one turn of the scheduler.
pub struct MeteredStream {
    upstream: ByteStream,
    scanner: SseScanner,
    meter: Option<Meter>,
    status: u16,
    first_byte: Option<Duration>,
    settling: Option<LocalBoxFuture<'static, ()>>,
    pending_error: Option<std::io::Error>,
    finished: bool,
    /// Chunks received and not yet passed on.
    burst: Vec<Bytes>,
    burst_len: usize,
    /// Set after a chunk: the turn given to other tasks before looking for more.
    yielding: Option<LocalBoxFuture<'static, ()>>,
}

impl MeteredStream {
    pub fn new(upstream: ByteStream, meter: Meter, status: u16) -> Self {
        Self {
            upstream,
            scanner: SseScanner::new(),
            meter: Some(meter),
            status,
            first_byte: None,
            settling: None,
            pending_error: None,
            finished: false,
            burst: Vec::new(),
            burst_len: 0,
            yielding: None,
        }
    }

    /// The chunks gathered so far, as one.
    fn take_burst(&mut self) -> Option<Bytes> {
        self.burst_len = 0;
        match self.burst.len() {
            0 => None,
            1 => self.burst.pop(),
            _ => {
                let mut joined =
                    bytes::BytesMut::with_capacity(self.burst.iter().map(Bytes::len).sum());
                for chunk in self.burst.drain(..) {
                    joined.extend_from_slice(&chunk);
                }
                Some(joined.freeze())
            }
        }
    }

    fn start_settlement(&mut self, outcome: Outcome) {
        self.scanner.finish();
        if let Some(meter) = self.meter.take() {
            let s = meter.settlement(
                outcome,
                self.status,
                self.scanner.usage(),
                self.scanner.text(),
                self.first_byte,
            );
            self.settling = Some(async move { meter.settle(s).await }.boxed_local());
        }
    }
}

impl Stream for MeteredStream {
    type Item = Result<Bytes, std::io::Error>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = &mut *self;
        loop {
            if let Some(fut) = this.settling.as_mut() {
                match fut.poll_unpin(cx) {
                    Poll::Pending => return Poll::Pending,
                    Poll::Ready(()) => {
                        this.settling = None;
                        this.finished = true;
                    }
                }
            }
            if this.finished {
                return Poll::Ready(this.pending_error.take().map(Err));
            }
            if let Some(turn) = this.yielding.as_mut() {
                if turn.poll_unpin(cx).is_pending() {
                    return Poll::Pending;
                }
                this.yielding = None;
            }
            match this.upstream.poll_next_unpin(cx) {
                Poll::Pending => {
                    return this
                        .take_burst()
                        .map_or(Poll::Pending, |b| Poll::Ready(Some(Ok(b))));
                }
                Poll::Ready(Some(Ok(bytes))) => {
                    if this.first_byte.is_none() {
                        this.first_byte = this.meter.as_ref().map(|m| m.started.elapsed());
                    }
                    this.scanner.feed(&bytes);
                    this.burst_len += bytes.len();
                    this.burst.push(bytes);
                    if this.burst_len >= MAX_BURST {
                        return Poll::Ready(this.take_burst().map(Ok));
                    }
                    this.yielding = Some(tokio::task::yield_now().boxed_local());
                }
                Poll::Ready(Some(Err(e))) => {
                    tracing::warn!(error = %e, "upstream stream broke");
                    // Abort the client's connection after settling, so it sees a
                    // truncated stream rather than a clean end.
                    this.pending_error = Some(std::io::Error::other("upstream stream broke"));
                    this.start_settlement(Outcome::UpstreamBroken);
                    if let Some(b) = this.take_burst() {
                        return Poll::Ready(Some(Ok(b)));
                    }
                }
                Poll::Ready(None) => {
                    this.start_settlement(Outcome::Completed);
                    if let Some(b) = this.take_burst() {
                        return Poll::Ready(Some(Ok(b)));
                    }
                }
            }
        }
    }
}

impl Drop for MeteredStream {
    fn drop(&mut self) {
        if let Some(meter) = self.meter.take() {
            self.scanner.finish();
            let s = meter.settlement(
                Outcome::ClientDisconnected,
                499,
                self.scanner.usage(),
                self.scanner.text(),
                self.first_byte,
            );
            meter.settle_detached(s);
        }
    }
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
