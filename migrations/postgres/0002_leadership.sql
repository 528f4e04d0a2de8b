-- Which daemon leads (issue 18). Two daemons may run on one database: the one holding the
-- advisory lock (src/leadership.rs) leads, and takes a new term here when it starts to lead.
-- Every write transaction of a leading daemon reads the term FOR SHARE and goes on only while
-- it is still its own: once a successor has bumped it, a deposed leader can write nothing
-- (and the successor's bump waits for the deposed leader's transactions already under way).
CREATE TABLE leadership (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    term BIGINT NOT NULL,
    holder TEXT NOT NULL,
    since TEXT NOT NULL
);
INSERT INTO leadership (id, term, holder, since) VALUES (1, 0, '', '');

-- The leader's heartbeat, renewed every half second on its lock connection (lock_pid): a
-- standby that finds it silent for longer than the lease ends that session, which frees the
-- lock. Kept apart from `leadership` so that renewals never wait for a write transaction's
-- FOR SHARE lock on the term.
CREATE TABLE leader_heartbeat (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    term BIGINT NOT NULL,
    lock_pid INTEGER NOT NULL,
    renewed_at TIMESTAMPTZ NOT NULL
);
