-- Where a trial's numbers come from: cnnd and libtorch versions, device, a hash of the data
-- (JSON object of strings).
ALTER TABLE trials ADD COLUMN provenance TEXT NOT NULL DEFAULT '{}';
