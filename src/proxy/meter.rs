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
        let mut delay = Duration::from_millis(250);
        for _ in 0..12 {
            actix_web::rt::time::sleep(delay).await;
            if let Ok(r) = meter.ledger.settle(settlement.clone()).await {
                meter.record(&settlement, r);
                return;
            }
            delay = (delay * 2).min(Duration::from_secs(30));
        }
        tracing::error!(request_id = %settlement.request_id, "settlement failed after retries; the hold will be released by the sweeper");
    });
}

type ByteStream = Pin<Box<dyn Stream<Item = Result<Bytes, reqwest::Error>>>>;

/// Passes the upstream stream through chunk by chunk. When upstream ends, the request
/// is settled before the client sees the end of the body; when the client goes away
/// (the stream is dropped early), what was delivered is charged.
pub struct MeteredStream {
    upstream: ByteStream,
    scanner: SseScanner,
    meter: Option<Meter>,
    status: u16,
    first_byte: Option<Duration>,
    settling: Option<LocalBoxFuture<'static, ()>>,
    pending_error: Option<std::io::Error>,
    finished: bool,
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
            match this.upstream.poll_next_unpin(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Some(Ok(bytes))) => {
                    if this.first_byte.is_none() {
                        this.first_byte = this.meter.as_ref().map(|m| m.started.elapsed());
                    }
                    this.scanner.feed(&bytes);
                    return Poll::Ready(Some(Ok(bytes)));
                }
                Poll::Ready(Some(Err(e))) => {
                    tracing::warn!(error = %e, "upstream stream broke");
                    // Abort the client's connection after settling, so it sees a
                    // truncated stream rather than a clean end.
                    this.pending_error = Some(std::io::Error::other("upstream stream broke"));
                    this.start_settlement(Outcome::UpstreamBroken);
                }
                Poll::Ready(None) => this.start_settlement(Outcome::Completed),
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
