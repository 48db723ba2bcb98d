-- Expand only: the previous release writes and reads these tables unaware of the
-- new columns (docs/upgrades.md).
--
-- A hold keeps what its request's prompt costs, so that a hold left by a process
-- that died mid-request is charged its prompt (the provider billed it) instead of
-- being released free. NULL (a hold of the previous release): released free.
ALTER TABLE holds ADD COLUMN prompt_tokens BIGINT;
ALTER TABLE holds ADD COLUMN prompt_charge BIGINT;
-- The most a call of the model may cost beyond its text (web search and other tools
-- run at the provider, content kept there), set by an admin; reserved on every call
-- that uses such a feature. NULL: such calls are refused.
ALTER TABLE model_weights ADD COLUMN call_extra BIGINT CHECK (call_extra >= 0);
