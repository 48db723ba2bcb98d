//! Logs (tracing, text or JSON) and Prometheus counters. Never logs prompts, keys or
//! passwords.

use crate::config::LogFormat;
use crate::ledger::Outcome;
use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};

pub fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = match format {
        LogFormat::Json => builder.json().try_init(),
        LogFormat::Text => builder.try_init(),
    };
}

const OUTCOMES: [Outcome; 7] = [
    Outcome::Completed,
    Outcome::UpstreamError,
    Outcome::UpstreamUnreachable,
    Outcome::UpstreamTimeout,
    Outcome::UpstreamBroken,
    Outcome::ClientDisconnected,
    Outcome::Abandoned,
];
const REJECTIONS: [&str; 7] = [
    "invalid_api_key",
    "insufficient_quota",
    "request_limit",
    "user_suspended",
    "not_reservable",
    "model_not_in_plan",
    "model_not_priced",
];

#[derive(Default)]
pub struct Metrics {
    settled: [AtomicU64; 7],
    charged: AtomicU64,
    rejected: [AtomicU64; REJECTIONS.len()],
    /// Alert mail: sent, attempts that will be retried, given up.
    mail: [AtomicU64; 3],
    /// tokengate's own time per phase of a metered request: microseconds and count.
    phase_micros: [AtomicU64; 4],
    phase_count: [AtomicU64; 4],
    /// Settlements charged after their hold had been released.
    late: AtomicU64,
    /// Sweeps for stale holds done.
    sweeps: AtomicU64,
}

/// The phases of a metered request, as in its `Server-Timing` header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Client key, body read and parse, identity, prompt estimate.
    Parse,
    /// The reservation's durable write.
    Reserve,
    /// From sending upstream to its response headers.
    Upstream,
    /// The settlement's durable write.
    Settle,
}

impl Phase {
    const ALL: [Self; 4] = [Self::Parse, Self::Reserve, Self::Upstream, Self::Settle];

    pub fn label(self) -> &'static str {
        match self {
            Self::Parse => "parse",
            Self::Reserve => "reserve",
            Self::Upstream => "upstream",
            Self::Settle => "settle",
        }
    }
}

/// What happened to one attempt at sending an alert message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MailResult {
    Sent,
    Retrying,
    Failed,
}

impl MailResult {
    const ALL: [Self; 3] = [Self::Sent, Self::Retrying, Self::Failed];

    fn label(self) -> &'static str {
        match self {
            Self::Sent => "sent",
            Self::Retrying => "retrying",
            Self::Failed => "failed",
        }
    }
}

impl Metrics {
    pub fn record_phase(&self, phase: Phase, took: std::time::Duration) {
        let micros = u64::try_from(took.as_micros()).unwrap_or(u64::MAX);
        self.phase_micros[phase as usize].fetch_add(micros, Ordering::Relaxed);
        self.phase_count[phase as usize].fetch_add(1, Ordering::Relaxed);
    }

    pub fn record_mail(&self, result: MailResult) {
        self.mail[result as usize].fetch_add(1, Ordering::Relaxed);
    }

    pub fn record_settlement(&self, outcome: Outcome, charged: i64) {
        if let Some(i) = OUTCOMES.iter().position(|o| *o == outcome) {
            self.settled[i].fetch_add(1, Ordering::Relaxed);
        }
        self.charged
            .fetch_add(u64::try_from(charged).unwrap_or(0), Ordering::Relaxed);
    }

    pub fn record_sweep(&self) {
        self.sweeps.fetch_add(1, Ordering::Relaxed);
    }

    pub fn record_late_settlement(&self) {
        self.late.fetch_add(1, Ordering::Relaxed);
    }

    pub fn record_rejection(&self, code: &str) {
        if let Some(i) = REJECTIONS.iter().position(|c| *c == code) {
            self.rejected[i].fetch_add(1, Ordering::Relaxed);
        }
    }

    pub fn rejections(&self, code: &str) -> u64 {
        REJECTIONS
            .iter()
            .position(|c| *c == code)
            .map_or(0, |i| self.rejected[i].load(Ordering::Relaxed))
    }

    /// Prometheus text exposition format.
    pub fn render(&self) -> String {
        let mut out = String::new();
        out.push_str(
            "# HELP tokengate_requests_settled_total Metered requests settled, by outcome.\n",
        );
        out.push_str("# TYPE tokengate_requests_settled_total counter\n");
        for (i, o) in OUTCOMES.iter().enumerate() {
            let _ = writeln!(
                out,
                "tokengate_requests_settled_total{{outcome=\"{}\"}} {}",
                o.as_str(),
                self.settled[i].load(Ordering::Relaxed)
            );
        }
        out.push_str("# HELP tokengate_requests_rejected_total Requests refused before reaching upstream, by code.\n");
        out.push_str("# TYPE tokengate_requests_rejected_total counter\n");
        for (i, code) in REJECTIONS.iter().enumerate() {
            let _ = writeln!(
                out,
                "tokengate_requests_rejected_total{{code=\"{code}\"}} {}",
                self.rejected[i].load(Ordering::Relaxed)
            );
        }
        out.push_str(
            "# HELP tokengate_tokens_charged_total Weighted tokens debited from balances.\n",
        );
        out.push_str("# TYPE tokengate_tokens_charged_total counter\n");
        let _ = writeln!(
            out,
            "tokengate_tokens_charged_total {}",
            self.charged.load(Ordering::Relaxed)
        );
        out.push_str("# HELP tokengate_settlements_late_total Answered requests whose hold had been released uncharged (their instance looked dead, or the hold outlived TOKENGATE_HOLD_MAX_AGE_SECS), charged when their settlement arrived.\n");
        out.push_str("# TYPE tokengate_settlements_late_total counter\n");
        let _ = writeln!(
            out,
            "tokengate_settlements_late_total {}",
            self.late.load(Ordering::Relaxed)
        );
        out.push_str("# HELP tokengate_hold_sweeps_total Sweeps for the holds of dead instances and of holds past their maximum age.\n");
        out.push_str("# TYPE tokengate_hold_sweeps_total counter\n");
        let _ = writeln!(
            out,
            "tokengate_hold_sweeps_total {}",
            self.sweeps.load(Ordering::Relaxed)
        );
        out.push_str(
            "# HELP tokengate_mail_attempts_total Attempts at sending alert mail, by result.\n",
        );
        out.push_str("# TYPE tokengate_mail_attempts_total counter\n");
        for r in MailResult::ALL {
            let _ = writeln!(
                out,
                "tokengate_mail_attempts_total{{result=\"{}\"}} {}",
                r.label(),
                self.mail[r as usize].load(Ordering::Relaxed)
            );
        }
        out.push_str(
            "# HELP tokengate_phase_seconds tokengate's own time per phase of a metered request.\n",
        );
        out.push_str("# TYPE tokengate_phase_seconds summary\n");
        for p in Phase::ALL {
            let micros = self.phase_micros[p as usize].load(Ordering::Relaxed);
            let _ = writeln!(
                out,
                "tokengate_phase_seconds_sum{{phase=\"{}\"}} {}.{:06}",
                p.label(),
                micros / 1_000_000,
                micros % 1_000_000
            );
            let _ = writeln!(
                out,
                "tokengate_phase_seconds_count{{phase=\"{}\"}} {}",
                p.label(),
                self.phase_count[p as usize].load(Ordering::Relaxed)
            );
        }
        out
    }
}

/// Appends the settlements waiting in the spool (`proxy::spool`) to a `/metrics` text.
pub fn render_spooled(out: &mut String, spooled: usize) {
    out.push_str("# HELP tokengate_settlements_spooled Answered requests whose settlement could not be written yet, kept in the local spool and retried.\n");
    out.push_str("# TYPE tokengate_settlements_spooled gauge\n");
    let _ = writeln!(out, "tokengate_settlements_spooled {spooled}");
}

/// Appends SQLite's write paths (`db::WriteCounts`) to a `/metrics` text.
pub fn render_sqlite_writes(out: &mut String, w: crate::db::WriteCounts) {
    out.push_str("# HELP tokengate_sqlite_writes_total Writes on SQLite's one write connection, by path: inline (at once, on the caller's thread), queued (the connection was busy: the writer thread's next group commit), together (settlements, always group-committed by the writer thread).\n");
    out.push_str("# TYPE tokengate_sqlite_writes_total counter\n");
    for (path, n) in [
        ("inline", w.inline),
        ("queued", w.queued),
        ("together", w.together),
    ] {
        let _ = writeln!(out, "tokengate_sqlite_writes_total{{path=\"{path}\"}} {n}");
    }
    out.push_str("# HELP tokengate_sqlite_log_restarts_total Times SQLite's write-ahead log was started over under load, each holding writes back for a few milliseconds.\n");
    out.push_str("# TYPE tokengate_sqlite_log_restarts_total counter\n");
    let _ = writeln!(
        out,
        "tokengate_sqlite_log_restarts_total {}",
        w.log_restarts
    );
}
