-- Expand only: the previous release neither reads nor writes this table, and its
-- users may use every model as before (docs/upgrades.md).
--
-- The models a plan may use. A plan with no rows here may use every model.
CREATE TABLE plan_models (
    plan_id BIGINT NOT NULL REFERENCES plans (id),
    model TEXT NOT NULL CHECK (length(model) BETWEEN 1 AND 256),
    PRIMARY KEY (plan_id, model)
);
