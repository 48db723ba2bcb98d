-- SQLite flavour. Keep in step with ../../postgres/2026-12-05-000002_credits/up.sql.
-- Asking for credits, and codes worth tokens (issue 20).

-- A user's request for more credits, decided by an admin. One open request per user.
CREATE TABLE credit_requests (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    user_id BIGINT NOT NULL REFERENCES users (id),
    tokens BIGINT NOT NULL CHECK (tokens > 0),
    note TEXT,
    state TEXT NOT NULL CHECK (state IN ('open', 'approved', 'declined')),
    -- 'admin:EMAIL' or 'cli'; the reason given when declined.
    decided_by TEXT,
    reason TEXT,
    decided_at TIMESTAMP,
    created_at TIMESTAMP NOT NULL
);
CREATE UNIQUE INDEX credit_requests_one_open ON credit_requests (user_id) WHERE state = 'open';
CREATE INDEX credit_requests_state ON credit_requests (state, id);

-- A batch of single-use codes, each worth `tokens` until `expires_at`. The codes
-- themselves are shown once, when the batch is made; only their SHA-256 is kept.
CREATE TABLE code_batches (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    tokens BIGINT NOT NULL CHECK (tokens > 0),
    codes INTEGER NOT NULL CHECK (codes > 0),
    expires_at TIMESTAMP NOT NULL,
    note TEXT,
    created_by TEXT NOT NULL,
    created_at TIMESTAMP NOT NULL
);
CREATE TABLE redeem_codes (
    code_hash TEXT PRIMARY KEY,
    batch_id BIGINT NOT NULL REFERENCES code_batches (id),
    redeemed_by BIGINT REFERENCES users (id),
    redeemed_at TIMESTAMP
);
CREATE INDEX redeem_codes_batch ON redeem_codes (batch_id);

-- The outbox carries more than alerts: a message is about an alert or about a
-- credit request (`kind` says which, and what happened). SQLite cannot drop a NOT
-- NULL, so the table is rebuilt with its rows.
CREATE TABLE outbox_new (
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
INSERT INTO outbox_new (id, alert_id, role, recipient, state, attempts, next_attempt_at,
    claimed_by, claimed_until, last_error, created_at, sent_at)
SELECT id, alert_id, role, recipient, state, attempts, next_attempt_at,
    claimed_by, claimed_until, last_error, created_at, sent_at FROM outbox;
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
