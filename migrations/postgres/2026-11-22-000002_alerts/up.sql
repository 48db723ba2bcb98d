-- Alerts (SPEC section 7), PostgreSQL flavour. Keep in step with
-- ../../sqlite/2026-11-22-000002_alerts/up.sql.

-- One row per threshold crossing, written in the transaction of the usage that
-- crossed it. `rearmed_at` is set when a top-up brings the user back under the
-- threshold; the partial unique index allows one armed alert per user, cycle and
-- threshold, so concurrent settlements can never write two.
CREATE TABLE alerts (
    id BIGSERIAL PRIMARY KEY,
    user_id BIGINT NOT NULL REFERENCES users (id),
    cycle TEXT NOT NULL,
    threshold INTEGER NOT NULL CHECK (threshold BETWEEN 1 AND 100),
    -- The balance right after the crossing, as the mail reports it.
    used_this_cycle BIGINT NOT NULL,
    allowance_left BIGINT NOT NULL,
    credits BIGINT NOT NULL,
    -- The user's address when the alert was written; NULL when none was known.
    recipient TEXT,
    -- 'mail': deliveries queued in outbox; 'no_address': nobody to tell but admins;
    -- 'superseded': a higher threshold crossed by the same usage carries the news.
    delivery TEXT NOT NULL,
    request_id TEXT,
    created_at TIMESTAMP NOT NULL,
    rearmed_at TIMESTAMP
);
CREATE UNIQUE INDEX alerts_one_armed ON alerts (user_id, cycle, threshold)
    WHERE rearmed_at IS NULL;
CREATE INDEX alerts_created ON alerts (created_at);

-- One row per message to send: the user's mail and each admin's copy.
CREATE TABLE outbox (
    id BIGSERIAL PRIMARY KEY,
    alert_id BIGINT NOT NULL REFERENCES alerts (id),
    role TEXT NOT NULL CHECK (role IN ('user', 'admin')),
    recipient TEXT NOT NULL,
    state TEXT NOT NULL CHECK (state IN ('pending', 'sent', 'failed')),
    attempts INTEGER NOT NULL DEFAULT 0,
    next_attempt_at TIMESTAMP NOT NULL,
    -- A worker's lease while it sends; expired leases are taken over.
    claimed_by TEXT,
    claimed_until TIMESTAMP,
    last_error TEXT,
    created_at TIMESTAMP NOT NULL,
    sent_at TIMESTAMP
);
CREATE INDEX outbox_due ON outbox (state, next_attempt_at);
CREATE INDEX outbox_alert ON outbox (alert_id);
