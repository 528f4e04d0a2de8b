-- Workers on other machines share nothing with the daemon but the worker protocol: data,
-- checkpoints and results move by SHA-256 digest, and leases outlive a daemon restart.
--
-- sweeps.manifest_digest: the data manifest recorded at submit (every file of the data set
-- by name, digest and size; stored in the daemon's blob store).
-- epochs.checkpoint_*: the checkpoint written after that epoch, uploaded before its report:
-- a trial resumes from the checkpoint of its last recorded epoch and no other. (In the
-- epoch row, so the group commit of reports writes it without another statement.)
-- trials.weights_*: the best epoch's weights, uploaded before the trial's finish.
-- trials.input_record: how the trial saw its images (what Predict needs), as JSON.
-- trials.checkpoint_format: the checkpoint format of the worker that last leased it: a
-- checkpointed trial is leased only to workers that read that format.
-- trials.lease_expires_at: when a running trial's lease runs out without heartbeats (ms
-- since the Unix epoch); a restarted daemon re-queues only leases that ran out.
ALTER TABLE sweeps ADD COLUMN manifest_digest TEXT;
ALTER TABLE epochs ADD COLUMN checkpoint_digest TEXT;
ALTER TABLE epochs ADD COLUMN checkpoint_size INTEGER;
ALTER TABLE trials ADD COLUMN weights_digest TEXT;
ALTER TABLE trials ADD COLUMN weights_size INTEGER;
ALTER TABLE trials ADD COLUMN input_record TEXT;
ALTER TABLE trials ADD COLUMN checkpoint_format INTEGER;
ALTER TABLE trials ADD COLUMN lease_expires_at INTEGER;
