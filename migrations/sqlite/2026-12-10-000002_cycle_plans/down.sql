DROP TABLE cycle_plans;
DROP TABLE cycle_closings;
