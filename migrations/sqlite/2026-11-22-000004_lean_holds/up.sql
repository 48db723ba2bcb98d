-- Holds live for one request: every metered request inserts and deletes one. The
-- table only ever holds the requests in flight, so the sweeper's and the invariant
-- check's scans are cheap without secondary indexes, while each index cost a page
-- write on both the insert and the delete of every request (issue 6). Keyed by
-- request id without a rowid, a hold is one B-tree entry instead of two.
CREATE TABLE holds_lean (
    request_id TEXT PRIMARY KEY,
    user_id BIGINT NOT NULL REFERENCES users (id),
    amount BIGINT NOT NULL CHECK (amount >= 0),
    model TEXT NOT NULL,
    endpoint TEXT NOT NULL,
    stream INTEGER NOT NULL,
    instance_id TEXT NOT NULL,
    created_at TIMESTAMP NOT NULL,
    expires_at TIMESTAMP NOT NULL
) WITHOUT ROWID;
INSERT INTO holds_lean SELECT request_id, user_id, amount, model, endpoint, stream,
    instance_id, created_at, expires_at FROM holds;
DROP TABLE holds;
ALTER TABLE holds_lean RENAME TO holds;
