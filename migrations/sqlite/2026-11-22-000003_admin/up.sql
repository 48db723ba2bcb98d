-- Admin dashboard (SPEC section 8), SQLite flavour. Keep in step with
-- ../../postgres/2026-11-22-000003_admin/up.sql.

-- Who did what to whom, and when: every admin action, written in the transaction of
-- the action itself.
CREATE TABLE audit_log (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    -- 'admin:EMAIL' or 'cli'.
    actor TEXT NOT NULL,
    action TEXT NOT NULL,
    user_id BIGINT REFERENCES users (id),
    -- What changed, as JSON (amounts, plan names, notes), rendered per language.
    details TEXT NOT NULL,
    created_at TIMESTAMP NOT NULL
);
CREATE INDEX audit_log_user ON audit_log (user_id, id);

-- Failed sign-ins, counted per account and per address by every replica.
CREATE TABLE login_failures (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    email TEXT NOT NULL,
    address TEXT NOT NULL,
    created_at TIMESTAMP NOT NULL
);
CREATE INDEX login_failures_email ON login_failures (email, created_at);
CREATE INDEX login_failures_address ON login_failures (address, created_at);
