DROP TABLE rate_events;
DROP TABLE user_tokens;
