-- A distributor's admin's password hash is stored behind the mark `scoped:`, which
-- releases before distributors cannot parse: there, where every admin is global,
-- such an admin can never sign in (docs/upgrades.md). This marks the hashes stored
-- without it, and from now on the database refuses any (SQLite adds no CHECK to a
-- table in place: triggers stand for it; they compare the prefix exactly, as
-- SQLite's LIKE ignores case).
UPDATE admins
SET password_hash = 'scoped:' || password_hash
WHERE distributor_id IS NOT NULL AND password_hash NOT LIKE 'scoped:%';
CREATE TRIGGER admins_distributor_hash_marked_insert
BEFORE INSERT ON admins
WHEN NEW.distributor_id IS NOT NULL AND substr(NEW.password_hash, 1, 7) <> 'scoped:'
BEGIN
    SELECT RAISE(ABORT, 'a distributor''s admin''s password hash must be marked');
END;
CREATE TRIGGER admins_distributor_hash_marked_update
BEFORE UPDATE OF password_hash, distributor_id ON admins
WHEN NEW.distributor_id IS NOT NULL AND substr(NEW.password_hash, 1, 7) <> 'scoped:'
BEGIN
    SELECT RAISE(ABORT, 'a distributor''s admin''s password hash must be marked');
END;
