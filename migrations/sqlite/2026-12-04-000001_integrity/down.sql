ALTER TABLE model_weights DROP COLUMN image_tokens;
ALTER TABLE balances DROP COLUMN exhausted_at;
ALTER TABLE instances DROP COLUMN owner;
ALTER TABLE instances DROP COLUMN run_id;
