DROP TABLE plan_models;
