-- Billing integrity (issue 18).

-- Each run of an instance claims its row (`run_id`); `owner` is where its lock lives
-- (host and spool file). A second live process with the same id is refused at start,
-- and heartbeats are written with the database's clock.
ALTER TABLE instances ADD COLUMN run_id TEXT;
ALTER TABLE instances ADD COLUMN owner TEXT;

-- Set when a refusal for balance found the user exhausted (SPEC section 5): counted
-- as blocked, and cleared when the balance is raised or a new cycle starts.
ALTER TABLE balances ADD COLUMN exhausted_at TIMESTAMP;

-- The most tokens the provider may bill for one image sent to the model; NULL: the
-- worst case tokengate knows for the model's name.
ALTER TABLE model_weights ADD COLUMN image_tokens BIGINT CHECK (image_tokens >= 0);
