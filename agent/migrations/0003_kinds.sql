-- What a segment holds ('plain', 'ring', 'semaphore' or 'event') and the
-- kind's parameters, so a restarted agent knows a ring from plain bytes.
-- Rows from before kinds existed are plain.
ALTER TABLE segments ADD COLUMN kind TEXT NOT NULL DEFAULT 'plain';
ALTER TABLE segments ADD COLUMN ring_capacity_bytes INTEGER;
ALTER TABLE segments ADD COLUMN ring_max_message_bytes INTEGER;
ALTER TABLE segments ADD COLUMN ring_producers INTEGER;
ALTER TABLE segments ADD COLUMN semaphore_initial_value INTEGER;
