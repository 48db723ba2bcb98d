DELETE FROM outbox WHERE kind <> 'alert';
ALTER TABLE outbox DROP CONSTRAINT outbox_kind_request;
ALTER TABLE outbox DROP CONSTRAINT outbox_kind_alert;
ALTER TABLE outbox DROP COLUMN kind;
ALTER TABLE outbox DROP COLUMN credit_request_id;
ALTER TABLE outbox ALTER COLUMN alert_id SET NOT NULL;
DROP TABLE redeem_codes;
DROP TABLE code_batches;
DROP TABLE credit_requests;
