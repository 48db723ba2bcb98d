-- Revenue from plan prices for past cycles. The first instance to see a new cycle
-- opens it here and closes the cycles before it, recording each paying user's plan
-- and its monthly price (centavos, NULL without one) as they stood at the close.
-- A cycle that no instance saw open has no record.
CREATE TABLE cycle_closings (
    cycle TEXT PRIMARY KEY,
    opened_at TIMESTAMP NOT NULL,
    closed_at TIMESTAMP
);
CREATE TABLE cycle_plans (
    cycle TEXT NOT NULL,
    user_id BIGINT NOT NULL REFERENCES users (id),
    plan_id BIGINT NOT NULL REFERENCES plans (id),
    distributor_id BIGINT NOT NULL,
    monthly_price BIGINT,
    PRIMARY KEY (cycle, user_id)
);
