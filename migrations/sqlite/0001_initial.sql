-- Sweeps, their trials, per-epoch metrics and the event log that WatchSweep replays.
-- The daemon is the only writer (WAL mode); see src/store.rs.

CREATE TABLE sweeps (
    id           TEXT PRIMARY KEY,
    name         TEXT NOT NULL,
    dataset      TEXT NOT NULL,
    strategy     TEXT NOT NULL,
    varied       TEXT NOT NULL,            -- JSON array of hyperparameter names
    spec         TEXT NOT NULL,            -- JSON of the normalised request
    objective    TEXT NOT NULL,
    priority     INTEGER NOT NULL DEFAULT 0,
    max_parallel INTEGER NOT NULL DEFAULT 0,
    device       TEXT NOT NULL DEFAULT 'auto',
    status       TEXT NOT NULL,            -- queued | running | finished | cancelled
    created_at   TEXT NOT NULL,
    finished_at  TEXT
);

CREATE TABLE trials (
    id              TEXT PRIMARY KEY,
    sweep_id        TEXT NOT NULL REFERENCES sweeps(id),
    idx             INTEGER NOT NULL,
    params          TEXT NOT NULL,         -- JSON of sweep::TrialParams
    status          TEXT NOT NULL,         -- queued | running | succeeded | failed | cancelled | pruned
    priority        INTEGER NOT NULL DEFAULT 0,
    queue_seq       INTEGER NOT NULL,      -- FIFO order within a priority
    device          TEXT NOT NULL DEFAULT 'auto',
    epochs_planned  INTEGER NOT NULL,
    worker          TEXT,
    generation      INTEGER NOT NULL DEFAULT 0,  -- lease fencing token
    attempts        INTEGER NOT NULL DEFAULT 0,
    error           TEXT,
    parameter_count INTEGER,
    train_examples  INTEGER,
    val_examples    INTEGER,
    test_examples   INTEGER,
    test_loss       REAL,
    test_accuracy   REAL,
    best_epoch      INTEGER,
    weights_path    TEXT,
    ran_on          TEXT,                  -- device the trial actually ran on
    started_at      TEXT,
    finished_at     TEXT,
    UNIQUE (sweep_id, idx)
);
CREATE INDEX trials_by_queue ON trials(status, priority DESC, queue_seq);
CREATE INDEX trials_by_sweep ON trials(sweep_id, idx);

CREATE TABLE epochs (
    trial_id          TEXT NOT NULL REFERENCES trials(id),
    epoch             INTEGER NOT NULL,
    train_loss        REAL NOT NULL,
    train_accuracy    REAL NOT NULL,
    val_loss          REAL NOT NULL,
    val_accuracy      REAL NOT NULL,
    seconds           REAL NOT NULL,
    images_per_second REAL NOT NULL,
    recorded_at       TEXT NOT NULL,
    PRIMARY KEY (trial_id, epoch)
) WITHOUT ROWID;

CREATE TABLE events (
    id       INTEGER PRIMARY KEY AUTOINCREMENT,
    sweep_id TEXT NOT NULL,
    at       TEXT NOT NULL,
    payload  TEXT NOT NULL                 -- JSON of store::Event
);
CREATE INDEX events_by_sweep ON events(sweep_id, id);
