CREATE TABLE outbox_old (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    alert_id BIGINT REFERENCES alerts (id),
    credit_request_id BIGINT REFERENCES credit_requests (id),
    kind TEXT NOT NULL DEFAULT 'alert'
        CHECK (kind IN ('alert', 'credit_requested', 'credit_approved', 'credit_declined')),
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
    CHECK ((kind = 'alert') = (alert_id IS NOT NULL)),
    CHECK ((kind = 'alert') = (credit_request_id IS NULL))
);
INSERT INTO outbox_old (id, alert_id, credit_request_id, kind, role, recipient, state,
    attempts, next_attempt_at, claimed_by, claimed_until, last_error, created_at, sent_at)
SELECT id, alert_id, credit_request_id, kind, role, recipient, state, attempts,
    next_attempt_at, claimed_by, claimed_until, last_error, created_at, sent_at FROM outbox
    WHERE kind <> 'request_limit';
INSERT INTO sqlite_sequence (name, seq)
    SELECT 'outbox_old', 0
    WHERE NOT EXISTS (SELECT 1 FROM sqlite_sequence WHERE name = 'outbox_old');
UPDATE sqlite_sequence
    SET seq = MAX(seq, COALESCE((SELECT seq FROM sqlite_sequence WHERE name = 'outbox'), 0))
    WHERE name = 'outbox_old';
DROP TABLE outbox;
ALTER TABLE outbox_old RENAME TO outbox;
CREATE INDEX outbox_due ON outbox (state, next_attempt_at);
CREATE INDEX outbox_alert ON outbox (alert_id);
DROP TABLE limit_hits;
ALTER TABLE holds DROP COLUMN counted;
ALTER TABLE balances DROP COLUMN cycle_requests;
ALTER TABLE balances DROP COLUMN request_cycle;
ALTER TABLE balances DROP COLUMN day_requests;
ALTER TABLE balances DROP COLUMN request_day;
ALTER TABLE balances DROP COLUMN minute_requests;
ALTER TABLE balances DROP COLUMN minute_start;
ALTER TABLE plans DROP COLUMN requests_per_month;
ALTER TABLE plans DROP COLUMN requests_per_day;
ALTER TABLE plans DROP COLUMN requests_per_minute;
