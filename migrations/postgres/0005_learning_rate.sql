-- epochs.learning_rate: the rate the epoch trained with (its schedule's). 0 for epochs
-- recorded before it was kept.
ALTER TABLE epochs ADD COLUMN learning_rate DOUBLE PRECISION NOT NULL DEFAULT 0;
