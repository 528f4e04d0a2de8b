-- A sweep's early-stopping policy (pruning::EarlyStopping as JSON).
ALTER TABLE sweeps ADD COLUMN early_stopping TEXT NOT NULL DEFAULT '{"kind":"none"}';
