-- For development only. SQLite cannot drop a column a foreign key names, and users
-- and plans keep their per-distributor uniqueness (rebuilding them back would refuse
-- duplicate names): only what can be undone is.
DROP TABLE pool_charges;
ALTER TABLE usage_records DROP COLUMN conversation_id;
ALTER TABLE usage_records DROP COLUMN plan_id;
ALTER TABLE holds DROP COLUMN distributor_id;
DROP INDEX audit_log_distributor;
ALTER TABLE audit_log DROP COLUMN distributor_id;
