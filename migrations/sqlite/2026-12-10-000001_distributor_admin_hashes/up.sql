-- A distributor's admin's password hash is stored behind the mark `scoped:`, which
-- releases before distributors cannot parse: there, where every admin is global,
-- such an admin can never sign in (docs/upgrades.md). This marks the admins that
-- the release which brought distributors stored unmarked.
UPDATE admins
SET password_hash = 'scoped:' || password_hash
WHERE distributor_id IS NOT NULL AND password_hash NOT LIKE 'scoped:%';
