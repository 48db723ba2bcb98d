-- Holds live for one request: every metered request inserts and deletes one. The
-- table only ever holds the requests in flight, so the sweeper's and the invariant
-- check's scans are cheap without indexes, while each index cost a page write on
-- both the insert and the delete of every request (issue 6).
DROP INDEX holds_instance;
DROP INDEX holds_expires;
DROP INDEX holds_user;
