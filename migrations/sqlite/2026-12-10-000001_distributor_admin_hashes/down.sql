-- The marks stay: without them, a release before distributors would take every
-- distributor's admin for a global admin.
SELECT 1;
