-- Each trial's epoch count and highest epoch number, kept on the trial by triggers.
-- GetSweep reads every trial of a sweep with both; counting a 1,000-trial sweep's epoch rows
-- on each read cost about half of the query (benches/control_plane.rs). The triggers
-- recompute from the epochs table (one trial's rows, by primary key), so the columns equal
-- COUNT(*) and MAX(epoch) whatever writes the epochs: upserts, deletes, INSERT OR REPLACE.
ALTER TABLE trials ADD COLUMN epoch_count INTEGER NOT NULL DEFAULT 0;
ALTER TABLE trials ADD COLUMN last_epoch INTEGER;

UPDATE trials SET
    epoch_count = (SELECT COUNT(*) FROM epochs WHERE epochs.trial_id = trials.id),
    last_epoch = (SELECT MAX(epoch) FROM epochs WHERE epochs.trial_id = trials.id);

CREATE TRIGGER epochs_counted_after_insert AFTER INSERT ON epochs BEGIN
    UPDATE trials SET
        epoch_count = (SELECT COUNT(*) FROM epochs WHERE epochs.trial_id = NEW.trial_id),
        last_epoch = (SELECT MAX(epoch) FROM epochs WHERE epochs.trial_id = NEW.trial_id)
    WHERE id = NEW.trial_id;
END;

CREATE TRIGGER epochs_counted_after_delete AFTER DELETE ON epochs BEGIN
    UPDATE trials SET
        epoch_count = (SELECT COUNT(*) FROM epochs WHERE epochs.trial_id = OLD.trial_id),
        last_epoch = (SELECT MAX(epoch) FROM epochs WHERE epochs.trial_id = OLD.trial_id)
    WHERE id = OLD.trial_id;
END;

CREATE TRIGGER epochs_counted_after_update AFTER UPDATE OF trial_id, epoch ON epochs BEGIN
    UPDATE trials SET
        epoch_count = (SELECT COUNT(*) FROM epochs WHERE epochs.trial_id = trials.id),
        last_epoch = (SELECT MAX(epoch) FROM epochs WHERE epochs.trial_id = trials.id)
    WHERE id IN (OLD.trial_id, NEW.trial_id);
END;
