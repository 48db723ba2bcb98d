DROP TABLE outbox;
DROP TABLE alerts;
