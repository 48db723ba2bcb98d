ALTER TABLE model_weights DROP COLUMN call_extra;
ALTER TABLE holds DROP COLUMN prompt_charge;
ALTER TABLE holds DROP COLUMN prompt_tokens;
