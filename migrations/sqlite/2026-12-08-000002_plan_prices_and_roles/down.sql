ALTER TABLE users DROP COLUMN plan_source;
ALTER TABLE users DROP COLUMN librechat_role;
DROP TABLE plan_roles;
ALTER TABLE plans DROP COLUMN monthly_price;
