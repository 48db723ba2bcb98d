CREATE TABLE holds_rowid (
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
INSERT INTO holds_rowid SELECT request_id, user_id, amount, model, endpoint, stream,
    instance_id, created_at, expires_at FROM holds;
DROP TABLE holds;
ALTER TABLE holds_rowid RENAME TO holds;
CREATE INDEX holds_instance ON holds (instance_id);
CREATE INDEX holds_expires ON holds (expires_at);
CREATE INDEX holds_user ON holds (user_id);
