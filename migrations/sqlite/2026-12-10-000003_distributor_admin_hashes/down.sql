-- The marks stay: without them, a release before distributors would take every
-- distributor's admin for a global admin.
DROP TRIGGER admins_distributor_hash_marked_update;
DROP TRIGGER admins_distributor_hash_marked_insert;
