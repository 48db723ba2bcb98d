CREATE TABLE outbox_old (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    alert_id BIGINT NOT NULL REFERENCES alerts (id),
    role TEXT NOT NULL CHECK (role IN ('user', 'admin')),
    recipient TEXT NOT NULL,
    state TEXT NOT NULL CHECK (state IN ('pending', 'sent', 'failed')),
    attempts INTEGER NOT NULL DEFAULT 0,
    next_attempt_at TIMESTAMP NOT NULL,
    claimed_by TEXT,
    claimed_until TIMESTAMP,
    last_error TEXT,
    created_at TIMESTAMP NOT NULL,
    sent_at TIMESTAMP
);
INSERT INTO outbox_old SELECT id, alert_id, role, recipient, state, attempts, next_attempt_at,
    claimed_by, claimed_until, last_error, created_at, sent_at FROM outbox WHERE kind = 'alert';
DROP TABLE outbox;
ALTER TABLE outbox_old RENAME TO outbox;
CREATE INDEX outbox_due ON outbox (state, next_attempt_at);
CREATE INDEX outbox_alert ON outbox (alert_id);
DROP TABLE redeem_codes;
DROP TABLE code_batches;
DROP TABLE credit_requests;
