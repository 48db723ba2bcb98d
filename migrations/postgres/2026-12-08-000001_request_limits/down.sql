DELETE FROM outbox WHERE kind = 'request_limit';
ALTER TABLE outbox DROP CONSTRAINT outbox_kind_limit;
ALTER TABLE outbox DROP CONSTRAINT outbox_kind_request;
ALTER TABLE outbox DROP CONSTRAINT outbox_kind_check;
ALTER TABLE outbox ADD CONSTRAINT outbox_kind_check CHECK (kind IN ('alert',
    'credit_requested', 'credit_approved', 'credit_declined'));
ALTER TABLE outbox ADD CONSTRAINT outbox_kind_request CHECK ((kind = 'alert') = (credit_request_id IS NULL));
ALTER TABLE outbox DROP COLUMN limit_hit_id;
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
