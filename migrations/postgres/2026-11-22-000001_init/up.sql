-- tokengate schema, PostgreSQL flavour. Keep column names and types in step with
-- ../../sqlite/2026-11-22-000001_init/up.sql: src/db/schema.rs describes both.
-- Flags are INTEGER 0/1 (Diesel's MultiConnection has no Bool); times are UTC.

CREATE TABLE plans (
    id BIGSERIAL PRIMARY KEY,
    name TEXT NOT NULL UNIQUE,
    monthly_allowance BIGINT NOT NULL CHECK (monthly_allowance >= 0),
    is_default INTEGER NOT NULL DEFAULT 0 CHECK (is_default IN (0, 1)),
    created_at TIMESTAMP NOT NULL
);
-- At most one default plan.
CREATE UNIQUE INDEX plans_single_default ON plans (is_default) WHERE is_default = 1;
INSERT INTO plans (name, monthly_allowance, is_default, created_at)
VALUES ('Mensal', 1000000, 1, (now() AT TIME ZONE 'UTC'));

CREATE TABLE users (
    id BIGSERIAL PRIMARY KEY,
    -- LibreChat's user id; NULL for a user an admin created by email before their first chat.
    external_id TEXT UNIQUE,
    email TEXT,
    name TEXT,
    plan_id BIGINT NOT NULL REFERENCES plans (id),
    suspended_at TIMESTAMP,
    created_at TIMESTAMP NOT NULL,
    updated_at TIMESTAMP NOT NULL
);
CREATE INDEX users_email ON users (email);

CREATE TABLE balances (
    user_id BIGINT PRIMARY KEY REFERENCES users (id),
    cycle TEXT NOT NULL,
    allowance_left BIGINT NOT NULL,
    credits BIGINT NOT NULL,
    held BIGINT NOT NULL CHECK (held >= 0),
    used_this_cycle BIGINT NOT NULL,
    updated_at TIMESTAMP NOT NULL
);

-- Tokens reserved by requests in flight. A row lives from reservation to settlement.
CREATE TABLE holds (
    request_id TEXT PRIMARY KEY,
    user_id BIGINT NOT NULL REFERENCES users (id),
    amount BIGINT NOT NULL CHECK (amount >= 0),
    model TEXT NOT NULL,
    endpoint TEXT NOT NULL,
    stream INTEGER NOT NULL,
    instance_id TEXT NOT NULL,
    created_at TIMESTAMP NOT NULL,
    expires_at TIMESTAMP NOT NULL
);
CREATE INDEX holds_instance ON holds (instance_id);
CREATE INDEX holds_expires ON holds (expires_at);
CREATE INDEX holds_user ON holds (user_id);

-- Append-only: every change to allowance or credits. The balance equals its sum.
CREATE TABLE ledger (
    id BIGSERIAL PRIMARY KEY,
    user_id BIGINT NOT NULL REFERENCES users (id),
    kind TEXT NOT NULL,
    delta_allowance BIGINT NOT NULL,
    delta_credits BIGINT NOT NULL,
    allowance_after BIGINT NOT NULL,
    credits_after BIGINT NOT NULL,
    cycle TEXT NOT NULL,
    actor TEXT NOT NULL,
    note TEXT,
    request_id TEXT,
    created_at TIMESTAMP NOT NULL
);
CREATE INDEX ledger_user ON ledger (user_id, id);
CREATE FUNCTION ledger_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN RAISE EXCEPTION 'ledger is append-only'; END;
$$;
CREATE TRIGGER ledger_no_update BEFORE UPDATE OR DELETE ON ledger
FOR EACH ROW EXECUTE FUNCTION ledger_append_only();

CREATE TABLE usage_records (
    id BIGSERIAL PRIMARY KEY,
    request_id TEXT NOT NULL UNIQUE,
    user_id BIGINT NOT NULL REFERENCES users (id),
    model TEXT NOT NULL,
    endpoint TEXT NOT NULL,
    stream INTEGER NOT NULL,
    prompt_tokens BIGINT NOT NULL,
    completion_tokens BIGINT NOT NULL,
    charged BIGINT NOT NULL,
    estimated INTEGER NOT NULL,
    outcome TEXT NOT NULL,
    status INTEGER NOT NULL,
    latency_ms BIGINT NOT NULL,
    ttfb_ms BIGINT,
    created_at TIMESTAMP NOT NULL
);
CREATE INDEX usage_user_time ON usage_records (user_id, created_at);
CREATE INDEX usage_time ON usage_records (created_at);

-- Weights in thousandths: 1000 = 1.0.
CREATE TABLE model_weights (
    model TEXT PRIMARY KEY,
    input_milli BIGINT NOT NULL CHECK (input_milli >= 0),
    output_milli BIGINT NOT NULL CHECK (output_milli >= 0),
    updated_at TIMESTAMP NOT NULL
);

CREATE TABLE settings (
    key TEXT PRIMARY KEY,
    value TEXT NOT NULL
);

CREATE TABLE admins (
    id BIGSERIAL PRIMARY KEY,
    email TEXT NOT NULL UNIQUE,
    password_hash TEXT NOT NULL,
    disabled_at TIMESTAMP,
    created_at TIMESTAMP NOT NULL
);

-- Live tokengate processes; a hold whose instance stopped beating is released.
CREATE TABLE instances (
    id TEXT PRIMARY KEY,
    started_at TIMESTAMP NOT NULL,
    heartbeat_at TIMESTAMP NOT NULL
);
