-- Expand only: the previous release reads and writes these tables unaware of the
-- new columns, and serves every request without counting it (docs/upgrades.md).
--
-- How many requests a plan's users may make a minute, a day (local) and a cycle.
-- NULL: no limit.
ALTER TABLE plans ADD COLUMN requests_per_minute INTEGER CHECK (requests_per_minute > 0);
ALTER TABLE plans ADD COLUMN requests_per_day INTEGER CHECK (requests_per_day > 0);
ALTER TABLE plans ADD COLUMN requests_per_month INTEGER CHECK (requests_per_month > 0);
-- Each user's requests, counted in the reservation's own write: in the minute that
-- began at `minute_start`, on the local date `request_day`, and in the cycle
-- `request_cycle` (its own key: the previous release rolls `cycle` without knowing of
-- the count).
ALTER TABLE balances ADD COLUMN minute_start TIMESTAMP;
ALTER TABLE balances ADD COLUMN minute_requests INTEGER NOT NULL DEFAULT 0;
ALTER TABLE balances ADD COLUMN request_day TEXT;
ALTER TABLE balances ADD COLUMN day_requests INTEGER NOT NULL DEFAULT 0;
ALTER TABLE balances ADD COLUMN request_cycle TEXT;
ALTER TABLE balances ADD COLUMN cycle_requests INTEGER NOT NULL DEFAULT 0;
-- 1: the request was counted (a hold of the previous release's was not), so a
-- request the provider did not serve is taken back out of the counts.
ALTER TABLE holds ADD COLUMN counted INTEGER NOT NULL DEFAULT 0;
-- A user refused by a day's or a cycle's request limit: one row, and one mail, per
-- window.
CREATE TABLE limit_hits (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    user_id BIGINT NOT NULL REFERENCES users (id),
    period TEXT NOT NULL CHECK (period IN ('day', 'month')),
    -- The local date, or the cycle's key.
    period_key TEXT NOT NULL,
    request_limit INTEGER NOT NULL,
    resets_at TIMESTAMP NOT NULL,
    recipient TEXT,
    created_at TIMESTAMP NOT NULL,
    UNIQUE (user_id, period, period_key)
);
-- The outbox's kinds are checked in its table's definition: SQLite cannot change
-- that, so the table is rebuilt with its rows.
CREATE TABLE outbox_new (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    alert_id BIGINT REFERENCES alerts (id),
    credit_request_id BIGINT REFERENCES credit_requests (id),
    kind TEXT NOT NULL DEFAULT 'alert'
        CHECK (kind IN ('alert', 'credit_requested', 'credit_approved', 'credit_declined',
            'request_limit')),
    role TEXT NOT NULL CHECK (role IN ('user', 'admin')),
    recipient TEXT NOT NULL,
    state TEXT NOT NULL CHECK (state IN ('pending', 'sent', 'failed')),
    attempts INTEGER NOT NULL DEFAULT 0,
    next_attempt_at TIMESTAMP NOT NULL,
    claimed_by TEXT,
    claimed_until TIMESTAMP,
    last_error TEXT,
    created_at TIMESTAMP NOT NULL,
    sent_at TIMESTAMP,
    limit_hit_id BIGINT REFERENCES limit_hits (id),
    CHECK ((kind = 'alert') = (alert_id IS NOT NULL)),
    CHECK ((kind IN ('credit_requested', 'credit_approved', 'credit_declined'))
        = (credit_request_id IS NOT NULL)),
    CHECK ((kind = 'request_limit') = (limit_hit_id IS NOT NULL))
);
INSERT INTO outbox_new (id, alert_id, credit_request_id, kind, role, recipient, state,
    attempts, next_attempt_at, claimed_by, claimed_until, last_error, created_at, sent_at)
SELECT id, alert_id, credit_request_id, kind, role, recipient, state, attempts,
    next_attempt_at, claimed_by, claimed_until, last_error, created_at, sent_at FROM outbox;
-- AUTOINCREMENT's high-water mark goes with the rows: an id of a deleted message is
-- never given again (a message's Message-ID is made of it).
INSERT INTO sqlite_sequence (name, seq)
    SELECT 'outbox_new', 0
    WHERE NOT EXISTS (SELECT 1 FROM sqlite_sequence WHERE name = 'outbox_new');
UPDATE sqlite_sequence
    SET seq = MAX(seq, COALESCE((SELECT seq FROM sqlite_sequence WHERE name = 'outbox'), 0))
    WHERE name = 'outbox_new';
DROP TABLE outbox;
ALTER TABLE outbox_new RENAME TO outbox;
CREATE INDEX outbox_due ON outbox (state, next_attempt_at);
CREATE INDEX outbox_alert ON outbox (alert_id);
