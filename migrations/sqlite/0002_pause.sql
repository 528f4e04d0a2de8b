-- Paused sweeps keep their queued trials out of the queue until resumed.
ALTER TABLE sweeps ADD COLUMN paused INTEGER NOT NULL DEFAULT 0;
