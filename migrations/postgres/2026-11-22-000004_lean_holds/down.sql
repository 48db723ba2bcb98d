CREATE INDEX holds_instance ON holds (instance_id);
CREATE INDEX holds_expires ON holds (expires_at);
CREATE INDEX holds_user ON holds (user_id);
