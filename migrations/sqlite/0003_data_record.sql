-- What a worker notes about a trial's data and start: skipped image files, carved splits,
-- transfer learning (JSON arrays of strings).
ALTER TABLE trials ADD COLUMN notes TEXT NOT NULL DEFAULT '[]';
ALTER TABLE trials ADD COLUMN frozen TEXT NOT NULL DEFAULT '[]';
ALTER TABLE trials ADD COLUMN reinitialised TEXT NOT NULL DEFAULT '[]';
ALTER TABLE trials ADD COLUMN skipped_files INTEGER NOT NULL DEFAULT 0;
