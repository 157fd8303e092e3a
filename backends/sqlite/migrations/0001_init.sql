-- 0001: the queue, the runs and their key-value state.
-- Times are Unix nanoseconds (0 for none).

-- jobs is the queue. seq orders jobs FIFO among equal priorities. A job may be
-- leased when dead = 0 and visible_at <= now; leasing sets lease_token to a fresh
-- random token and visible_at to the lease's end, so an expired lease makes the job
-- visible again, and a holder whose token no longer matches has lost the job.
CREATE TABLE jobs (
	seq         INTEGER PRIMARY KEY,
	id          TEXT    NOT NULL,
	run         TEXT    NOT NULL,
	workflow    TEXT    NOT NULL,
	version     TEXT    NOT NULL,
	kind        INTEGER NOT NULL,
	node        TEXT    NOT NULL,
	from_node   TEXT    NOT NULL,
	attempt     INTEGER NOT NULL,
	priority    INTEGER NOT NULL,
	not_before  INTEGER NOT NULL,
	err         TEXT    NOT NULL,
	visible_at  INTEGER NOT NULL,
	lease_token TEXT,
	deliveries  INTEGER NOT NULL DEFAULT 0,
	dead        INTEGER NOT NULL DEFAULT 0,
	dead_at     INTEGER NOT NULL DEFAULT 0,
	reason      TEXT    NOT NULL DEFAULT ''
);
-- Dequeue walks live jobs in delivery order and skips those not visible yet, without
-- reading the rows. (No partial indexes: their predicates would make SQLite prepare
-- again the statements whose parameters it compares with them.)
CREATE INDEX jobs_ready ON jobs (dead, priority DESC, seq, visible_at);
-- A waiting Dequeue asks when the next job falls due (a delayed job, an expiring
-- lease) without taking the write lock, and sleeps until then.
CREATE INDEX jobs_due ON jobs (dead, visible_at);

-- runs holds one record per run (backend.Run).
CREATE TABLE runs (
	id          TEXT    PRIMARY KEY,
	workflow    TEXT    NOT NULL,
	version     TEXT    NOT NULL,
	status      TEXT    NOT NULL,
	priority    INTEGER NOT NULL,
	input       BLOB,
	result      BLOB,
	failed_node TEXT    NOT NULL,
	reason      TEXT    NOT NULL,
	parent      TEXT    NOT NULL,
	parent_node TEXT    NOT NULL,
	metadata    TEXT,
	created     INTEGER NOT NULL,
	updated     INTEGER NOT NULL
);
-- The reconciler's query (running, not updated since) and the TTL cleanup.
CREATE INDEX runs_status_updated ON runs (status, updated);
-- ListRuns: newest first, optionally by workflow.
CREATE INDEX runs_created ON runs (created DESC, id DESC);
CREATE INDEX runs_workflow_created ON runs (workflow, created DESC, id DESC);

-- run_kv is each run's key-value state, clustered by run.
CREATE TABLE run_kv (
	run   TEXT NOT NULL,
	key   TEXT NOT NULL,
	value BLOB NOT NULL,
	PRIMARY KEY (run, key)
) WITHOUT ROWID;
