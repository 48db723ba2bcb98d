-- A distributor's admin's password hash is stored behind the mark `scoped:`, which
-- releases before distributors cannot parse: there, where every admin is global,
-- such an admin can never sign in (docs/upgrades.md). This marks the hashes stored
-- without it, and from now on the database refuses any.
UPDATE admins
SET password_hash = 'scoped:' || password_hash
WHERE distributor_id IS NOT NULL AND password_hash NOT LIKE 'scoped:%';
ALTER TABLE admins ADD CONSTRAINT admins_distributor_hash_marked
    CHECK (distributor_id IS NULL OR password_hash LIKE 'scoped:%');
