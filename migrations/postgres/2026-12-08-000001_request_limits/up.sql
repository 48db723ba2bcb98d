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
    id BIGSERIAL PRIMARY KEY,
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
ALTER TABLE outbox ADD COLUMN limit_hit_id BIGINT REFERENCES limit_hits (id);
ALTER TABLE outbox DROP CONSTRAINT outbox_kind_check;
ALTER TABLE outbox DROP CONSTRAINT outbox_kind_request;
ALTER TABLE outbox ADD CONSTRAINT outbox_kind_check CHECK (kind IN ('alert',
    'credit_requested', 'credit_approved', 'credit_declined', 'request_limit'));
ALTER TABLE outbox ADD CONSTRAINT outbox_kind_request CHECK (
    (kind IN ('credit_requested', 'credit_approved', 'credit_declined'))
    = (credit_request_id IS NOT NULL));
ALTER TABLE outbox ADD CONSTRAINT outbox_kind_limit CHECK (
    (kind = 'request_limit') = (limit_hit_id IS NOT NULL));
