-- Distributors (tenants) who resell the service. Expand only: the previous release
-- reads none of the new columns, and every row it writes lands in the implicit
-- distributor 1, the install's own ("direct") users (docs/upgrades.md).
CREATE TABLE distributors (
    id BIGSERIAL PRIMARY KEY,
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
SELECT setval(pg_get_serial_sequence('distributors', 'id'), 1);

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

-- A user belongs to one distributor: the same LibreChat id under two is two users.
ALTER TABLE users ADD COLUMN distributor_id BIGINT NOT NULL DEFAULT 1 REFERENCES distributors (id);
ALTER TABLE users DROP CONSTRAINT users_external_id_key;
CREATE UNIQUE INDEX users_distributor_external ON users (distributor_id, external_id);
CREATE INDEX users_distributor ON users (distributor_id, id);

-- A plan is the install's (distributor 1: offered to every distributor) or one
-- distributor's own; names and the default are per distributor.
ALTER TABLE plans ADD COLUMN distributor_id BIGINT NOT NULL DEFAULT 1 REFERENCES distributors (id);
ALTER TABLE plans DROP CONSTRAINT plans_name_key;
CREATE UNIQUE INDEX plans_distributor_name ON plans (distributor_id, name);
DROP INDEX plans_single_default;
CREATE UNIQUE INDEX plans_single_default ON plans (distributor_id) WHERE is_default = 1;

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
    id BIGSERIAL PRIMARY KEY,
    distributor_id BIGINT NOT NULL,
    cycle TEXT NOT NULL,
    amount BIGINT NOT NULL
);
CREATE INDEX pool_charges_distributor ON pool_charges (distributor_id);
