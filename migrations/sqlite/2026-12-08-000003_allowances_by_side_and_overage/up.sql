-- Expand only: the previous release never reads these (docs/upgrades.md).
--
-- A plan may cap the input and the output tokens it pays each cycle, each on its
-- own (weighted, as the monthly allowance); NULL: no such cap.
ALTER TABLE plans ADD COLUMN input_allowance BIGINT CHECK (input_allowance >= 0);
ALTER TABLE plans ADD COLUMN output_allowance BIGINT CHECK (output_allowance >= 0);
-- Overage: past its allowances (and the user's credits) a plan may go on up to
-- `overage_cap` tokens a cycle, billed at `overage_price` micro-reais (millionths of
-- a real) per 1,000 tokens. NULL: the plan blocks.
ALTER TABLE plans ADD COLUMN overage_cap BIGINT CHECK (overage_cap > 0);
ALTER TABLE plans ADD COLUMN overage_price BIGINT CHECK (overage_price >= 0);
-- What the user used of each side (whoever paid it: the plan or credits), and the
-- overage tokens and their price, in the cycle `usage_cycle`: keyed by their cycle,
-- as the previous release rolls cycles without resetting them. A move to another
-- plan keeps them.
ALTER TABLE balances ADD COLUMN usage_cycle TEXT;
ALTER TABLE balances ADD COLUMN input_used BIGINT NOT NULL DEFAULT 0;
ALTER TABLE balances ADD COLUMN output_used BIGINT NOT NULL DEFAULT 0;
ALTER TABLE balances ADD COLUMN overage_used BIGINT NOT NULL DEFAULT 0;
ALTER TABLE balances ADD COLUMN overage_cost BIGINT NOT NULL DEFAULT 0;
-- What a hold keeps of each side, and of it what credits and overage must pay: NULL
-- when the plan had neither side caps nor overage when it was reserved.
ALTER TABLE holds ADD COLUMN input_held BIGINT NOT NULL DEFAULT 0;
ALTER TABLE holds ADD COLUMN output_held BIGINT NOT NULL DEFAULT 0;
ALTER TABLE holds ADD COLUMN credits_held BIGINT;
-- The plan whose rules admitted it: its settlement pays by them, whatever move or
-- edit came in between.
ALTER TABLE holds ADD COLUMN plan_id BIGINT;
-- The overage a request was billed: tokens, and their price in micro-reais.
ALTER TABLE usage_records ADD COLUMN overage_tokens BIGINT NOT NULL DEFAULT 0;
ALTER TABLE usage_records ADD COLUMN overage_cost BIGINT NOT NULL DEFAULT 0;
