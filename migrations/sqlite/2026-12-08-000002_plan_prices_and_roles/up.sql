-- Expand only: the previous release never reads these (docs/upgrades.md).
--
-- What a plan is sold for each month, in centavos (reports and revenue); NULL: no
-- price set.
ALTER TABLE plans ADD COLUMN monthly_price BIGINT CHECK (monthly_price >= 0);
-- LibreChat roles whose users a plan takes: each role names at most one plan.
CREATE TABLE plan_roles (
    role TEXT PRIMARY KEY CHECK (length(role) BETWEEN 1 AND 256),
    plan_id BIGINT NOT NULL REFERENCES plans (id)
);
CREATE INDEX plan_roles_plan ON plan_roles (plan_id);
-- The role LibreChat last sent for the user, and who put them on their plan: the
-- default plan when they were created, their role, or an admin (then their role no
-- longer moves them).
ALTER TABLE users ADD COLUMN librechat_role TEXT;
ALTER TABLE users ADD COLUMN plan_source TEXT NOT NULL DEFAULT 'default'
    CHECK (plan_source IN ('default', 'role', 'admin'));
-- Users an admin moved before this release keep the admin's choice.
UPDATE users SET plan_source = 'admin'
    WHERE id IN (SELECT user_id FROM audit_log
                 WHERE action = 'change_plan' AND user_id IS NOT NULL);
