//! What one metered request is charged, and the stream wrapper that passes upstream
//! bytes through unchanged while it reads usage on the side.

use super::estimate;
use super::settler::{Durable, Settler};
use super::sse::{SseScanner, Usage};
use crate::domain::UserKey;
use crate::ledger::{NoticeBase, Outcome, SettleResult, Settlement};
use bytes::{Bytes, BytesMut};
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
    /// LibreChat's conversation, for the user's page and the reports.
    pub conversation: Option<String>,
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
        // A request upstream took and did not answer in time was billed its prompt
        // at least, as one whose client left.
        let charges = matches!(
            outcome,
            Outcome::Completed
                | Outcome::ClientDisconnected
                | Outcome::UpstreamBroken
                | Outcome::UpstreamTimeout
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
        let charge = if charges {
            self.weights.cost(prompt, completion)
        } else {
            0
        };
        Settlement {
            request_id: self.request_id.clone(),
            prompt_tokens: prompt,
            completion_tokens: completion,
            charge,
            // What the answer added to the prompt's cost: the split the reservation
            // made (`ledger::reserve`), so that rounding never moves a token from one
            // side's allowance to the other's.
            output_charge: charge - self.weights.cost(prompt, 0).min(charge),
            estimated,
            outcome,
            status,
            latency: self.started.elapsed(),
            ttfb,
            can_carry_notice: false,
            conversation: self.conversation.clone(),
        }
    }

    /// Ends the request: its settlement is written in the background (`Settler`).
    /// The answer's last bytes wait for what this returns: the settlement durable.
    pub fn close(
        mut self,
        outcome: Outcome,
        status: u16,
        usage: Option<Usage>,
        delivered_text: &str,
        ttfb: Option<Duration>,
    ) -> Durable {
        let s = self.settlement(outcome, status, usage, delivered_text, ttfb);
        self.submit(s)
    }

    fn submit(&mut self, s: Settlement) -> Durable {
        self.open = false;
        self.settler.submit(self.user.clone(), self.user_id, s)
    }
}

impl Drop for Meter {
    fn drop(&mut self) {
        // The handler was dropped while it waited for upstream's headers or for a
        // whole answer: the client left, but the request had gone upstream.
        if self.open {
            let s = self.settlement(Outcome::ClientDisconnected, 499, None, "", None);
            drop(self.submit(s));
        }
    }
}

type ByteStream = Pin<Box<dyn Stream<Item = Result<Bytes, reqwest::Error>>>>;

/// The line a streamed text answer may end with, said by tokengate itself, as one
/// more chunk just before upstream's `data: [DONE]`: the in-chat notice after a
/// threshold, or why an answer stopped short. Its text is made once the answer's
/// settlement is written (`EndLine::text`).
pub struct EndLine {
    /// Makes the chunk of a text, as the answer's model.
    pub chunk: Box<dyn Fn(&str) -> Bytes>,
    /// The notice's text, from what was used before this answer and its charge.
    pub notice: Box<dyn Fn(NoticeBase, i64) -> String>,
    /// The text for an answer the balance stopped.
    pub stopped: String,
    /// A notice this answer claimed when it was reserved (due since an earlier
    /// answer crossed the threshold).
    pub claimed: Option<NoticeBase>,
    /// The limit the reservation lowered the answer to, when it did.
    pub lowered_to: Option<i64>,
    /// This answer may cross the notice's threshold (`Reservation::may_cross_notice`):
    /// its end waits to learn whether it did.
    pub may_cross: bool,
    /// Called when a notice this answer took (claimed, or crossed) ends up unshown
    /// (an error, no `[DONE]`, a client gone): it is due again, for the next answer.
    pub still_due: Option<Box<dyn FnOnce()>>,
    /// This answer has taken a notice and not shown it yet.
    pub pending: bool,
}

impl EndLine {
    /// The line for this answer, if any (why it stopped, when the balance stopped
    /// it; else the notice, claimed at the reservation or by the settlement that
    /// crossed the threshold), and whether it took a notice. `charged`: this
    /// answer's own charge, which the notice counts as used.
    fn text(
        &self,
        usage: Option<Usage>,
        hit_limit: bool,
        written: Option<&SettleResult>,
        charged: i64,
    ) -> (Option<String>, bool) {
        let crossed = match written {
            Some(SettleResult::Settled { notice, .. }) => *notice,
            _ => None,
        };
        let notice = self.claimed.or(crossed);
        let stopped = self
            .lowered_to
            .is_some_and(|limit| hit_limit || usage.is_some_and(|u| u.completion_tokens >= limit));
        if stopped {
            // Why it stopped says more than the notice, which it replaces.
            return (Some(self.stopped.clone()), notice.is_some());
        }
        (
            notice.map(|base| (self.notice)(base, charged.max(0))),
            notice.is_some(),
        )
    }
}

impl Drop for EndLine {
    fn drop(&mut self) {
        if self.pending
            && let Some(still_due) = self.still_due.take()
        {
            still_due();
        }
    }
}

const DONE: &[u8] = b"data: [DONE]";

/// Where a line `data: [DONE]` starts in `bytes`.
fn done_line(bytes: &[u8]) -> Option<usize> {
    let mut from = 0;
    while let Some(at) = memchr::memmem::find(&bytes[from..], DONE) {
        let at = from + at;
        if at == 0 || matches!(bytes[at - 1], b'\n' | b'\r') {
            return Some(at);
        }
        from = at + 1;
    }
    None
}

/// The end of a streamed answer, held back from the client until the answer's
/// settlement is durable: everything from the event that carries the usage, or from
/// the `data: [DONE]` line, whichever comes first. With `whole_lines`, bytes go on
/// only by whole lines, so that a line can be put in before `[DONE]`.
struct Tail {
    whole_lines: bool,
    /// The end of the bytes received, after their last line break (`whole_lines`).
    partial: BytesMut,
    held: BytesMut,
    holding: bool,
}

impl Tail {
    fn new(whole_lines: bool) -> Self {
        Self {
            whole_lines,
            partial: BytesMut::new(),
            held: BytesMut::new(),
            holding: false,
        }
    }

    /// What of `chunk` may go to the client now. `end_seen`: the scanner has read
    /// the usage or `[DONE]`, in this chunk or before.
    fn pass(&mut self, chunk: Bytes, end_seen: bool) -> Bytes {
        let lines = if self.whole_lines {
            if self.partial.is_empty() && chunk.last() == Some(&b'\n') {
                chunk
            } else {
                self.partial.extend_from_slice(&chunk);
                match self.partial.iter().rposition(|b| *b == b'\n') {
                    Some(last) => self.partial.split_to(last + 1).freeze(),
                    None => return Bytes::new(),
                }
            }
        } else {
            chunk
        };
        if self.holding || end_seen {
            self.holding = true;
            self.held.extend_from_slice(&lines);
            return Bytes::new();
        }
        match done_line(&lines) {
            Some(at) => {
                self.holding = true;
                self.held.extend_from_slice(&lines[at..]);
                lines.slice(..at)
            }
            None => lines,
        }
    }

    /// What was held back, with `line` (a chunk of tokengate's own) put in before
    /// the `[DONE]` line, if there is one; and whether it was.
    fn release(mut self, line: Option<Bytes>) -> (Bytes, bool) {
        self.held.extend_from_slice(&self.partial);
        let Some(line) = line else {
            return (self.held.freeze(), false);
        };
        let Some(at) = done_line(&self.held) else {
            return (self.held.freeze(), false);
        };
        let mut out = BytesMut::with_capacity(self.held.len() + line.len());
        out.extend_from_slice(&self.held[..at]);
        out.extend_from_slice(&line);
        out.extend_from_slice(&self.held[at..]);
        (out.freeze(), true)
    }
}

/// Most bytes gathered into one write to the client.
const MAX_BURST: usize = 64 * 1024;

/// Where a metered stream is.
enum Phase {
    /// Passing upstream's bytes on.
    Streaming,
    /// Upstream ended; the settlement is on its way to being durable, and the tail
    /// waits for it.
    Settling {
        durable: LocalBoxFuture<'static, Option<SettleResult>>,
        usage: Option<Usage>,
        /// What the answer is charged.
        charge: i64,
        /// The answer ended as it should (no error, no break): it may get its line.
        whole: bool,
        /// The stream broke: the client's connection is aborted after the tail.
        broke: bool,
    },
    Done,
}

/// Passes the upstream stream through unchanged. When upstream ends, the settlement
/// is handed to the `Settler`, and the end of the answer (`Tail`) reaches the client
/// once the settlement is durable; when the client goes away (the stream is dropped
/// early), what was delivered is charged.
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
    phase: Phase,
    pending_error: Option<std::io::Error>,
    /// Chunks received and not yet passed on.
    burst: Vec<Bytes>,
    burst_len: usize,
    /// Set after a chunk: the turn given to other tasks before looking for more.
    yielding: Option<LocalBoxFuture<'static, ()>>,
    tail: Option<Tail>,
    end_line: Option<EndLine>,
}

impl MeteredStream {
    pub fn new(upstream: ByteStream, meter: Meter, status: u16) -> Self {
        Self {
            upstream,
            scanner: SseScanner::new(),
            meter: Some(meter),
            status,
            first_byte: None,
            phase: Phase::Streaming,
            pending_error: None,
            burst: Vec::new(),
            burst_len: 0,
            yielding: None,
            tail: Some(Tail::new(false)),
            end_line: None,
        }
    }

    /// A streamed text answer: it may end with a line of tokengate's own, so its
    /// bytes go on by whole lines.
    pub fn with_end_line(mut self, end_line: Option<EndLine>) -> Self {
        if end_line.is_some() {
            self.tail = Some(Tail::new(true));
        }
        self.end_line = end_line;
        self
    }

    fn push(&mut self, bytes: Bytes) {
        self.burst_len += bytes.len();
        if !bytes.is_empty() {
            self.burst.push(bytes);
        }
    }

    /// The chunks gathered so far, as one.
    fn take_burst(&mut self) -> Option<Bytes> {
        self.burst_len = 0;
        match self.burst.len() {
            0 => None,
            1 => self.burst.pop(),
            _ => {
                let mut joined = BytesMut::with_capacity(self.burst.iter().map(Bytes::len).sum());
                for chunk in self.burst.drain(..) {
                    joined.extend_from_slice(&chunk);
                }
                Some(joined.freeze())
            }
        }
    }

    /// Upstream is done: settles with what was read, and waits for it to be
    /// durable before the tail goes out.
    fn settle(&mut self, outcome: Outcome, broke: bool) {
        self.scanner.finish();
        let Some(meter) = self.meter.take() else {
            self.phase = Phase::Done;
            return;
        };
        let mut settlement = meter.settlement(
            outcome,
            self.status,
            self.scanner.usage(),
            self.scanner.text(),
            self.first_byte,
        );
        let whole = outcome == Outcome::Completed;
        settlement.can_carry_notice = whole
            && self
                .end_line
                .as_ref()
                .is_some_and(|e| e.claimed.is_none() && e.may_cross);
        let charge = settlement.charge;
        let mut meter = meter;
        let durable = meter.submit(settlement);
        self.phase = Phase::Settling {
            durable: durable.wait().boxed_local(),
            usage: self.scanner.usage(),
            charge,
            whole,
            broke,
        };
    }

    /// The settlement is durable: the tail goes out, with its line when it has one.
    fn finish(
        &mut self,
        written: Option<SettleResult>,
        usage: Option<Usage>,
        charge: i64,
        whole: bool,
    ) {
        let hit_limit = self.scanner.hit_limit();
        let (line, took_notice) = match (self.end_line.as_ref(), whole) {
            (Some(end), true) => {
                let (text, took_notice) = end.text(usage, hit_limit, written.as_ref(), charge);
                (text.map(|text| (end.chunk)(&text)), took_notice)
            }
            _ => (None, false),
        };
        if let Some(tail) = self.tail.take() {
            let (bytes, shown) = tail.release(line);
            if let Some(end) = self.end_line.as_mut() {
                // A notice taken (at the reservation, or by this settlement) and not
                // shown is due again; one shown, or replaced by why the answer
                // stopped, is not.
                end.pending = (end.pending || took_notice) && !shown;
            }
            self.push(bytes);
        }
        self.phase = Phase::Done;
    }
}

impl Stream for MeteredStream {
    type Item = Result<Bytes, std::io::Error>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = &mut *self;
        loop {
            match &mut this.phase {
                Phase::Done => {
                    return Poll::Ready(
                        this.take_burst()
                            .map(Ok)
                            .or_else(|| this.pending_error.take().map(Err)),
                    );
                }
                Phase::Settling {
                    durable,
                    usage,
                    charge,
                    whole,
                    broke,
                } => {
                    let Poll::Ready(written) = durable.poll_unpin(cx) else {
                        // What came before the tail goes out meanwhile.
                        return this
                            .take_burst()
                            .map_or(Poll::Pending, |b| Poll::Ready(Some(Ok(b))));
                    };
                    let (usage, charge, whole, broke) = (*usage, *charge, *whole, *broke);
                    if broke {
                        // The client's connection is aborted after the last bytes,
                        // so it sees a truncated stream rather than a clean end.
                        this.pending_error = Some(std::io::Error::other("upstream stream broke"));
                    }
                    this.finish(written, usage, charge, whole);
                }
                Phase::Streaming => {
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
                            let end_seen =
                                this.scanner.usage().is_some() || this.scanner.done_seen();
                            let bytes = match this.tail.as_mut() {
                                Some(tail) => tail.pass(bytes, end_seen),
                                None => bytes,
                            };
                            this.push(bytes);
                            if this.burst_len >= MAX_BURST {
                                return Poll::Ready(this.take_burst().map(Ok));
                            }
                            this.yielding = Some(tokio::task::yield_now().boxed_local());
                        }
                        Poll::Ready(Some(Err(e))) => {
                            tracing::warn!(error = %e, "upstream stream broke");
                            this.settle(Outcome::UpstreamBroken, true);
                        }
                        Poll::Ready(None) => {
                            this.scanner.finish();
                            // LiteLLM reports a provider's failure after its 200 as an
                            // error event: alone it generated nothing; after some
                            // text it is a broken stream, charged for what came.
                            let outcome = if this.scanner.error_only() {
                                Outcome::UpstreamError
                            } else if this.scanner.error_seen() {
                                Outcome::UpstreamBroken
                            } else {
                                Outcome::Completed
                            };
                            this.settle(outcome, false);
                        }
                    }
                }
            }
        }
    }
}

impl Drop for MeteredStream {
    fn drop(&mut self) {
        // The client went away before upstream ended: what was delivered is
        // charged. (Once settling, the settlement is already on its way.)
        if let Some(meter) = self.meter.take() {
            self.scanner.finish();
            drop(meter.close(
                Outcome::ClientDisconnected,
                499,
                self.scanner.usage(),
                self.scanner.text(),
                self.first_byte,
            ));
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn run(tail: &mut Tail, pieces: &[&str], end_seen_after: Option<usize>) -> String {
        let mut out = Vec::new();
        for (i, p) in pieces.iter().enumerate() {
            let seen = end_seen_after.is_some_and(|n| i >= n);
            out.extend_from_slice(&tail.pass(Bytes::copy_from_slice(p.as_bytes()), seen));
        }
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn the_line_goes_just_before_done_however_the_bytes_are_cut() {
        let stream = "data: {\"a\":1}\r\n\r\ndata: {\"b\":\"data: [DONE]\"}\n\ndata: [DONE]\n\n";
        for cut in 1..stream.len() {
            let mut tail = Tail::new(true);
            let before = run(&mut tail, &[&stream[..cut], &stream[cut..]], None);
            assert!(!before.contains("data: [DONE]\n"), "cut at {cut}: {before}");
            let (rest, shown) = tail.release(Some(Bytes::from_static(b"<N>")));
            assert!(shown, "cut at {cut}");
            let whole = format!("{before}{}", String::from_utf8(rest.to_vec()).unwrap());
            assert_eq!(
                whole,
                stream.replacen("data: [DONE]\n", "<N>data: [DONE]\n", 1),
                "cut at {cut}"
            );
        }
    }

    #[test]
    fn everything_from_the_usage_on_waits_for_the_settlement() {
        let mut tail = Tail::new(false);
        let out = run(
            &mut tail,
            &[
                "data: {\"a\":1}\n\n",
                "data: {\"usage\":{}}\n\n",
                "data: [DONE]\n\n",
            ],
            Some(1),
        );
        assert_eq!(out, "data: {\"a\":1}\n\n");
        let (rest, shown) = tail.release(None);
        assert!(!shown);
        assert_eq!(rest, "data: {\"usage\":{}}\n\ndata: [DONE]\n\n");
    }

    #[test]
    fn a_stream_without_done_gets_no_line_and_keeps_its_bytes() {
        let mut tail = Tail::new(true);
        let out = run(&mut tail, &["data: {\"a\":1}\n\nda", "ta: x"], None);
        assert_eq!(out, "data: {\"a\":1}\n\n");
        let (rest, shown) = tail.release(Some(Bytes::from_static(b"<N>")));
        assert!(!shown);
        assert_eq!(rest, "data: x");
    }
}
