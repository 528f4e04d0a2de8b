-- Each trial's best validation values over its epochs, kept on the trial by triggers: the
-- sweep's best trial is chosen on validation data by the sweep's objective (highest
-- best_val_accuracy, or lowest best_val_loss), never on test data, and GetSweep ranks a
-- 1,000-trial sweep from the trial rows alone.
--
-- The insert trigger extends 0008's increment in the same UPDATE (no extra statement per
-- epoch). An upsert that rewrites an existing epoch (a trial resumed after a crash records
-- it again) changes no key, so it fires no insert trigger: the update trigger recomputes
-- from the trial's rows, as the delete trigger does.
ALTER TABLE trials ADD COLUMN best_val_accuracy REAL;
ALTER TABLE trials ADD COLUMN best_val_loss REAL;

UPDATE trials SET
    best_val_accuracy = (SELECT MAX(val_accuracy) FROM epochs WHERE epochs.trial_id = trials.id),
    best_val_loss = (SELECT MIN(val_loss) FROM epochs WHERE epochs.trial_id = trials.id);

DROP TRIGGER epochs_counted_after_insert;
CREATE TRIGGER epochs_counted_after_insert AFTER INSERT ON epochs BEGIN
    UPDATE trials SET
        epoch_count = epoch_count + 1,
        last_epoch = MAX(COALESCE(last_epoch, NEW.epoch), NEW.epoch),
        best_val_accuracy = MAX(COALESCE(best_val_accuracy, NEW.val_accuracy), NEW.val_accuracy),
        best_val_loss = MIN(COALESCE(best_val_loss, NEW.val_loss), NEW.val_loss)
    WHERE id = NEW.trial_id;
END;

DROP TRIGGER epochs_counted_after_delete;
CREATE TRIGGER epochs_counted_after_delete AFTER DELETE ON epochs BEGIN
    UPDATE trials SET
        epoch_count = (SELECT COUNT(*) FROM epochs WHERE epochs.trial_id = OLD.trial_id),
        last_epoch = (SELECT MAX(epoch) FROM epochs WHERE epochs.trial_id = OLD.trial_id),
        best_val_accuracy = (SELECT MAX(val_accuracy) FROM epochs WHERE epochs.trial_id = OLD.trial_id),
        best_val_loss = (SELECT MIN(val_loss) FROM epochs WHERE epochs.trial_id = OLD.trial_id)
    WHERE id = OLD.trial_id;
END;

DROP TRIGGER epochs_counted_after_update;
CREATE TRIGGER epochs_counted_after_update
AFTER UPDATE OF trial_id, epoch, val_accuracy, val_loss ON epochs BEGIN
    UPDATE trials SET
        epoch_count = (SELECT COUNT(*) FROM epochs WHERE epochs.trial_id = trials.id),
        last_epoch = (SELECT MAX(epoch) FROM epochs WHERE epochs.trial_id = trials.id),
        best_val_accuracy = (SELECT MAX(val_accuracy) FROM epochs WHERE epochs.trial_id = trials.id),
        best_val_loss = (SELECT MIN(val_loss) FROM epochs WHERE epochs.trial_id = trials.id)
    WHERE id IN (OLD.trial_id, NEW.trial_id);
END;
