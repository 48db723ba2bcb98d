-- Distributors (tenants) who resell the service. Expand only: the previous release
-- reads none of the new columns, and every row it writes lands in the implicit
-- distributor 1, the install's own ("direct") users (docs/upgrades.md).
-- `users` and `plans` are rebuilt, SQLite's way of dropping a UNIQUE constraint;
-- foreign keys are off around the migrations and checked before they commit
-- (db::run_migrations).
CREATE TABLE distributors (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    name TEXT NOT NULL UNIQUE,
    -- Who the distributor's users are sent to (block texts, mails); NULL: the
    -- install's own contact.
    contact TEXT,
    -- The value LibreChat sends as {{LIBRECHAT_USER_TENANTID}} for this distributor's
    -- users, when one LibreChat serves several distributors.
    tenant TEXT UNIQUE,
    -- The most its users may use together in a cycle (weighted tokens); NULL: no pool.
    pool_cap BIGINT CHECK (pool_cap > 0),
    -- What its users used in the cycle `pool_cycle` (settled; holds are summed apart).
    pool_cycle TEXT,
    pool_used BIGINT NOT NULL DEFAULT 0,
    created_at TIMESTAMP NOT NULL
);
INSERT INTO distributors (id, name, created_at) VALUES (1, 'direct', CURRENT_TIMESTAMP);

-- Client keys kept in the database (those in TOKENGATE_CLIENT_KEYS belong to
-- distributor 1 and stay in the environment): only the SHA-256 digest is stored.
CREATE TABLE client_keys (
    digest TEXT PRIMARY KEY,
    distributor_id BIGINT NOT NULL REFERENCES distributors (id),
    -- A shared LibreChat's key may name the distributor of each request in a header.
    names_distributors INTEGER NOT NULL DEFAULT 0 CHECK (names_distributors IN (0, 1)),
    -- The key's first characters, to tell keys apart in a list.
    label TEXT NOT NULL,
    created_at TIMESTAMP NOT NULL,
    revoked_at TIMESTAMP
);

-- A plan is the install's (distributor 1: offered to every distributor) or one
-- distributor's own; names and the default are per distributor.
CREATE TABLE plans_new (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    name TEXT NOT NULL,
    monthly_allowance BIGINT NOT NULL CHECK (monthly_allowance >= 0),
    is_default INTEGER NOT NULL DEFAULT 0 CHECK (is_default IN (0, 1)),
    created_at TIMESTAMP NOT NULL,
    requests_per_minute INTEGER CHECK (requests_per_minute > 0),
    requests_per_day INTEGER CHECK (requests_per_day > 0),
    requests_per_month INTEGER CHECK (requests_per_month > 0),
    monthly_price BIGINT CHECK (monthly_price >= 0),
    input_allowance BIGINT CHECK (input_allowance >= 0),
    output_allowance BIGINT CHECK (output_allowance >= 0),
    overage_cap BIGINT CHECK (overage_cap > 0),
    overage_price BIGINT CHECK (overage_price >= 0),
    distributor_id BIGINT NOT NULL DEFAULT 1 REFERENCES distributors (id)
);
INSERT INTO plans_new (id, name, monthly_allowance, is_default, created_at,
    requests_per_minute, requests_per_day, requests_per_month, monthly_price,
    input_allowance, output_allowance, overage_cap, overage_price)
SELECT id, name, monthly_allowance, is_default, created_at,
    requests_per_minute, requests_per_day, requests_per_month, monthly_price,
    input_allowance, output_allowance, overage_cap, overage_price FROM plans;
DROP TABLE plans;
ALTER TABLE plans_new RENAME TO plans;
CREATE UNIQUE INDEX plans_distributor_name ON plans (distributor_id, name);
CREATE UNIQUE INDEX plans_single_default ON plans (distributor_id) WHERE is_default = 1;

-- A user belongs to one distributor: the same LibreChat id under two is two users.
CREATE TABLE users_new (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    -- LibreChat's user id; NULL for a user an admin created by email before their first chat.
    external_id TEXT,
    email TEXT,
    name TEXT,
    plan_id BIGINT NOT NULL REFERENCES plans (id),
    suspended_at TIMESTAMP,
    created_at TIMESTAMP NOT NULL,
    updated_at TIMESTAMP NOT NULL,
    librechat_role TEXT,
    plan_source TEXT NOT NULL DEFAULT 'default'
        CHECK (plan_source IN ('default', 'role', 'admin')),
    distributor_id BIGINT NOT NULL DEFAULT 1 REFERENCES distributors (id)
);
INSERT INTO users_new (id, external_id, email, name, plan_id, suspended_at, created_at,
    updated_at, librechat_role, plan_source)
SELECT id, external_id, email, name, plan_id, suspended_at, created_at, updated_at,
    librechat_role, plan_source FROM users;
DROP TABLE users;
ALTER TABLE users_new RENAME TO users;
CREATE INDEX users_email ON users (email);
CREATE UNIQUE INDEX users_distributor_external ON users (distributor_id, external_id);
CREATE INDEX users_distributor ON users (distributor_id, id);

-- NULL: an admin of everything; else of that distributor only.
ALTER TABLE admins ADD COLUMN distributor_id BIGINT REFERENCES distributors (id);
-- Codes are sold by one distributor and redeemed by its users only.
ALTER TABLE code_batches ADD COLUMN distributor_id BIGINT NOT NULL DEFAULT 1 REFERENCES distributors (id);
-- Whose audit entry it is (the user's, the plan's, or the admin's distributor).
ALTER TABLE audit_log ADD COLUMN distributor_id BIGINT NOT NULL DEFAULT 1;
CREATE INDEX audit_log_distributor ON audit_log (distributor_id, id);
-- The pool a hold counts in: NULL when its user's distributor has none.
ALTER TABLE holds ADD COLUMN distributor_id BIGINT;
-- For reports: the plan that admitted the request, and LibreChat's conversation.
ALTER TABLE usage_records ADD COLUMN plan_id BIGINT;
ALTER TABLE usage_records ADD COLUMN conversation_id TEXT;

-- What settled requests used of a distributor's pool, not yet added to its
-- pool_used: a settlement only inserts here (it never waits for the distributor's
-- row, which would order its locks against the reservations'); the next
-- reservation, holding that row, adds them up and deletes them.
CREATE TABLE pool_charges (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    distributor_id BIGINT NOT NULL,
    cycle TEXT NOT NULL,
    amount BIGINT NOT NULL
);
CREATE INDEX pool_charges_distributor ON pool_charges (distributor_id);
