-- The user's own page (issue 20), PostgreSQL flavour. Keep in step with
-- ../../sqlite/2026-12-05-000001_user_page/up.sql.

-- One-time links (in alert mails and sign-in mails) and the sessions they open. Only
-- a SHA-256 of each token is stored: a copy of the database opens no one's page. A
-- link is deleted when used; a session when its user signs out.
CREATE TABLE user_tokens (
    token_hash TEXT PRIMARY KEY,
    user_id BIGINT NOT NULL REFERENCES users (id),
    kind TEXT NOT NULL CHECK (kind IN ('link', 'session')),
    expires_at TIMESTAMP NOT NULL,
    created_at TIMESTAMP NOT NULL
);
CREATE INDEX user_tokens_user ON user_tokens (user_id);
CREATE INDEX user_tokens_expiry ON user_tokens (expires_at);

-- Attempts that are rate-limited, counted by every replica: sign-in mails asked for
-- (`subject` is a hash of the address typed, never the address itself).
CREATE TABLE rate_events (
    id BIGSERIAL PRIMARY KEY,
    kind TEXT NOT NULL,
    subject TEXT NOT NULL,
    address TEXT NOT NULL,
    created_at TIMESTAMP NOT NULL
);
CREATE INDEX rate_events_subject ON rate_events (kind, subject, created_at);
CREATE INDEX rate_events_address ON rate_events (kind, address, created_at);

-- Set when a usage crosses an alert threshold below 100%: the user's next streamed
-- text answer in the chat ends with a notice line, once, and clears it.
ALTER TABLE balances ADD COLUMN notice_due TIMESTAMP;
