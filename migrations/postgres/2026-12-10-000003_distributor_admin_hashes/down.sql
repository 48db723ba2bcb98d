-- The marks stay: without them, a release before distributors would take every
-- distributor's admin for a global admin.
ALTER TABLE admins DROP CONSTRAINT admins_distributor_hash_marked;
