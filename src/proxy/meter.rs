//! What one metered request is charged, and the stream wrapper that passes upstream
//! bytes through unchanged while it reads usage on the side.

use super::estimate;
use super::settler::Settler;
use super::sse::{SseScanner, Usage};
use crate::domain::UserKey;
use crate::ledger::{Outcome, Settlement};
use bytes::Bytes;
use futures_util::future::LocalBoxFuture;
use futures_util::{FutureExt, Stream, StreamExt};
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

/// Everything needed to settle one reserved request. It settles exactly once: by
/// `close`, or when dropped without it (the client went away while tokengate was
/// still waiting for upstream), as a request that reached upstream: its prompt is
/// charged, as an estimate.
pub struct Meter {
    pub settler: Settler,
    pub user: UserKey,
    /// tokengate's id of `user`, from the reservation.
    pub user_id: i64,
    pub request_id: String,
    pub weights: crate::domain::Weights,
    pub prompt_estimate: i64,
    /// The most completion tokens the reservation paid for: the limit sent upstream
    /// times the completions asked for (0 for embeddings). An estimate from the
    /// delivered text never charges more, so a charge without upstream's usage
    /// stays within what the balance held for it.
    pub completion_cap: i64,
    pub started: Instant,
    /// Not settled yet.
    pub open: bool,
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
                estimate::count_text(delivered_text).min(self.completion_cap),
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

    /// Ends the request: its settlement is written in the background (`Settler`),
    /// durably, while the answer goes out.
    pub fn close(
        mut self,
        outcome: Outcome,
        status: u16,
        usage: Option<Usage>,
        delivered_text: &str,
        ttfb: Option<Duration>,
    ) {
        self.submit(outcome, status, usage, delivered_text, ttfb);
    }

    fn submit(
        &mut self,
        outcome: Outcome,
        status: u16,
        usage: Option<Usage>,
        delivered_text: &str,
        ttfb: Option<Duration>,
    ) {
        if !std::mem::replace(&mut self.open, false) {
            return;
        }
        let s = self.settlement(outcome, status, usage, delivered_text, ttfb);
        self.settler.submit(self.user.clone(), self.user_id, s);
    }
}

impl Drop for Meter {
    fn drop(&mut self) {
        // The handler was dropped while it waited for upstream's headers or for a
        // whole answer: the client left, but the request had gone upstream.
        self.submit(Outcome::ClientDisconnected, 499, None, "", None);
    }
}

type ByteStream = Pin<Box<dyn Stream<Item = Result<Bytes, reqwest::Error>>>>;

/// A line of tokengate's own added to the end of a streamed text answer (the in-chat
/// notice), as one more chunk just before upstream's `data: [DONE]`. The answer's
/// bytes pass unchanged around it; only whole lines are passed on while it waits,
/// so the `[DONE]` line is never split. Its text is made from the answer's usage.
pub struct Notice {
    event: Option<Box<dyn FnOnce(Option<Usage>) -> Bytes>>,
    /// Called when the answer ended without the notice (an error, a client gone).
    unshown: Option<Box<dyn FnOnce()>>,
    /// The end of the bytes received, after their last line break.
    partial: bytes::BytesMut,
}

impl Notice {
    pub fn new(
        event: impl FnOnce(Option<Usage>) -> Bytes + 'static,
        unshown: impl FnOnce() + 'static,
    ) -> Self {
        Self {
            event: Some(Box::new(event)),
            unshown: Some(Box::new(unshown)),
            partial: bytes::BytesMut::new(),
        }
    }

    /// What of `chunk` may go on now: whole lines, with the notice before `[DONE]`
    /// unless the stream reported an error (`healthy` false).
    fn pass(&mut self, chunk: Bytes, usage: Option<Usage>, healthy: bool) -> Bytes {
        if self.event.is_none() {
            // Done (shown or given up): what was held goes first, in order.
            if self.partial.is_empty() {
                return chunk;
            }
            self.partial.extend_from_slice(&chunk);
            return self.partial.split().freeze();
        }
        self.partial.extend_from_slice(&chunk);
        let Some(last_break) = self.partial.iter().rposition(|b| *b == b'\n') else {
            return Bytes::new();
        };
        let lines = self.partial.split_to(last_break + 1).freeze();
        let done = lines
            .windows(DONE.len())
            .enumerate()
            .find(|(at, w)| *w == DONE && (*at == 0 || lines[at - 1] == b'\n'))
            .map(|(at, _)| at);
        match (done, self.event.take()) {
            // An answer that ended in an error gets no notice: it stays due.
            (Some(_), Some(_)) if !healthy => lines,
            (Some(at), Some(event)) => {
                self.unshown = None;
                let mut out = bytes::BytesMut::with_capacity(lines.len() + 512);
                out.extend_from_slice(&lines[..at]);
                out.extend_from_slice(&event(usage));
                out.extend_from_slice(&lines[at..]);
                out.freeze()
            }
            (None, event) => {
                self.event = event;
                lines
            }
            (Some(_), None) => lines,
        }
    }

    /// The bytes still held at the end of the stream.
    fn rest(&mut self) -> Bytes {
        self.partial.split().freeze()
    }
}

impl Drop for Notice {
    fn drop(&mut self) {
        if let Some(unshown) = self.unshown.take() {
            unshown();
        }
    }
}

const DONE: &[u8] = b"data: [DONE]";

/// Most bytes gathered into one write to the client.
const MAX_BURST: usize = 64 * 1024;

/// Passes the upstream stream through unchanged. When upstream ends, the settlement
/// is handed to the `Settler` before the client sees the end of the body; when the
/// client goes away (the stream is dropped early), what was delivered is charged.
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
    pending_error: Option<std::io::Error>,
    finished: bool,
    /// Chunks received and not yet passed on.
    burst: Vec<Bytes>,
    burst_len: usize,
    /// Set after a chunk: the turn given to other tasks before looking for more.
    yielding: Option<LocalBoxFuture<'static, ()>>,
    notice: Option<Notice>,
}

impl MeteredStream {
    pub fn new(upstream: ByteStream, meter: Meter, status: u16) -> Self {
        Self {
            upstream,
            scanner: SseScanner::new(),
            meter: Some(meter),
            status,
            first_byte: None,
            pending_error: None,
            finished: false,
            burst: Vec::new(),
            burst_len: 0,
            yielding: None,
            notice: None,
        }
    }

    /// Ends the answer with `notice` (a streamed text answer only).
    pub fn with_notice(mut self, notice: Option<Notice>) -> Self {
        self.notice = notice;
        self
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

    /// Settles with what was read, once: at the end of upstream's stream, or when the
    /// client went away first.
    fn settle(&mut self, outcome: Outcome, status: u16) {
        if let Some(meter) = self.meter.take() {
            self.scanner.finish();
            meter.close(
                outcome,
                status,
                self.scanner.usage(),
                self.scanner.text(),
                self.first_byte,
            );
        }
    }
}

impl Stream for MeteredStream {
    type Item = Result<Bytes, std::io::Error>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = &mut *self;
        loop {
            if this.finished {
                return Poll::Ready(
                    this.take_burst()
                        .map(Ok)
                        .or_else(|| this.pending_error.take().map(Err)),
                );
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
                    let bytes = match this.notice.as_mut() {
                        Some(n) => n.pass(bytes, this.scanner.usage(), !this.scanner.error_seen()),
                        None => bytes,
                    };
                    this.burst_len += bytes.len();
                    if !bytes.is_empty() {
                        this.burst.push(bytes);
                    }
                    if this.burst_len >= MAX_BURST {
                        return Poll::Ready(this.take_burst().map(Ok));
                    }
                    this.yielding = Some(tokio::task::yield_now().boxed_local());
                }
                Poll::Ready(Some(Err(e))) => {
                    tracing::warn!(error = %e, "upstream stream broke");
                    // The client's connection is aborted after the last bytes, so it
                    // sees a truncated stream rather than a clean end.
                    this.pending_error = Some(std::io::Error::other("upstream stream broke"));
                    this.settle(Outcome::UpstreamBroken, this.status);
                    this.finished = true;
                }
                Poll::Ready(None) => {
                    if let Some(rest) = this.notice.as_mut().map(Notice::rest)
                        && !rest.is_empty()
                    {
                        this.burst_len += rest.len();
                        this.burst.push(rest);
                    }
                    this.scanner.finish();
                    // LiteLLM reports a provider's failure after its 200 as an error
                    // event: alone it generated nothing; after some text it is a
                    // broken stream, charged for what came.
                    let outcome = if this.scanner.error_only() {
                        Outcome::UpstreamError
                    } else if this.scanner.error_seen() {
                        Outcome::UpstreamBroken
                    } else {
                        Outcome::Completed
                    };
                    this.settle(outcome, this.status);
                    this.finished = true;
                }
            }
        }
    }
}

impl Drop for MeteredStream {
    fn drop(&mut self) {
        self.settle(Outcome::ClientDisconnected, 499);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::Cell;
    use std::rc::Rc;

    /// A notice whose event is `<N>` and that records whether it went unshown.
    fn notice() -> (Notice, Rc<Cell<bool>>) {
        let unshown = Rc::new(Cell::new(false));
        let flag = unshown.clone();
        (
            Notice::new(|_| Bytes::from_static(b"<N>"), move || flag.set(true)),
            unshown,
        )
    }

    fn run(n: &mut Notice, pieces: &[&str], healthy: bool) -> String {
        let mut out = Vec::new();
        for p in pieces {
            out.extend_from_slice(&n.pass(Bytes::copy_from_slice(p.as_bytes()), None, healthy));
        }
        out.extend_from_slice(&n.rest());
        String::from_utf8(out).unwrap_or_default()
    }

    #[test]
    fn the_notice_goes_just_before_done_however_the_bytes_are_cut() {
        let stream = "data: {\"a\":1}\r\n\r\ndata: {\"b\":\"[DONE]\"}\n\ndata: [DONE]\n\n";
        for cut in 1..stream.len() {
            let (mut n, unshown) = notice();
            let out = run(&mut n, &[&stream[..cut], &stream[cut..]], true);
            assert_eq!(
                out,
                stream.replacen("data: [DONE]", "<N>data: [DONE]", 1),
                "cut at {cut}"
            );
            drop(n);
            assert!(!unshown.get(), "shown, cut at {cut}");
        }
    }

    #[test]
    fn bytes_held_back_keep_their_order_after_the_notice() {
        let (mut n, _) = notice();
        let out = run(&mut n, &["data: [DONE]\n\nx", "y\n", "z"], true);
        assert_eq!(out, "<N>data: [DONE]\n\nxy\nz");
    }

    #[test]
    fn an_error_or_a_stream_without_done_leaves_the_notice_due() {
        let (mut n, unshown) = notice();
        let out = run(&mut n, &["data: {\"error\":1}\n\ndata: [DONE]\n\n"], false);
        assert!(!out.contains("<N>"));
        drop(n);
        assert!(unshown.get());
        let (mut n, unshown) = notice();
        let out = run(&mut n, &["data: {\"a\":1}\n\n"], true);
        assert_eq!(out, "data: {\"a\":1}\n\n");
        drop(n);
        assert!(unshown.get());
    }
}
