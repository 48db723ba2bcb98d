ALTER TABLE balances DROP COLUMN notice_due;
DROP TABLE rate_events;
DROP TABLE user_tokens;
