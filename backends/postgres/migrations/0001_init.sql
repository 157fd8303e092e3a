-- flowgen postgres backend, schema version 1. Runs with search_path set to the
-- backend's schema (the schema= URL option, default flowgen).

-- One row per run: the fields of backend.Run.
CREATE TABLE runs (
	id          text COLLATE "C" PRIMARY KEY,
	workflow    text NOT NULL,
	version     text NOT NULL,
	status      text NOT NULL,
	priority    integer NOT NULL DEFAULT 0,
	input       bytea,
	result      bytea,
	failed_node text NOT NULL DEFAULT '',
	reason      text NOT NULL DEFAULT '',
	parent      text NOT NULL DEFAULT '',
	parent_node text NOT NULL DEFAULT '',
	metadata    jsonb,
	created     timestamptz NOT NULL,
	updated     timestamptz NOT NULL,
	-- A random number set by every transition: a process that cached the run's state
	-- at revision rev need not load it again.
	rev         bigint NOT NULL
);
-- The reconciler's scan (running, no progress since) and listing by status.
CREATE INDEX runs_status_updated ON runs (status, updated);
CREATE INDEX runs_status_created ON runs (status, created DESC, id DESC);
CREATE INDEX runs_created ON runs (created DESC, id DESC);

-- Each run's key-value state (completion records, arrivals, claims, counters). Written
-- only by transactions holding the run's row lock.
CREATE TABLE run_kv (
	run   text COLLATE "C" NOT NULL,
	key   text COLLATE "C" NOT NULL,
	value bytea NOT NULL,
	PRIMARY KEY (run, key)
);

-- The queue. A job is deliverable when it is not dead and visible_at has passed.
-- Dequeue leases a job by moving visible_at to the end of the lease and setting a
-- fresh lease_token, so visible_at is also the lease deadline (the stale-lease
-- threshold): an expired lease makes the job deliverable again, and deliveries counts
-- every lease, expired ones included. Ack, Requeue, Extend and DeadLetter match
-- (seq, lease_token), so a holder whose lease expired and was handed to another worker
-- changes nothing.
CREATE TABLE jobs (
	seq         bigserial PRIMARY KEY,
	id          text NOT NULL,
	run         text NOT NULL,
	workflow    text NOT NULL,
	version     text NOT NULL,
	kind        smallint NOT NULL,
	node        text NOT NULL,
	from_node   text NOT NULL,
	attempt     integer NOT NULL,
	priority    integer NOT NULL,
	not_before  timestamptz,
	err         text NOT NULL,
	visible_at  timestamptz NOT NULL,
	lease_token bigint,
	worker_id   text,
	deliveries  integer NOT NULL DEFAULT 0,
	dead        boolean NOT NULL DEFAULT false,
	dead_reason text,
	dead_at     timestamptz,
	enqueued    timestamptz NOT NULL DEFAULT now()
);
-- Dequeue order: priority (higher first), then the time a job became deliverable,
-- then arrival. visible_at <= now() is checked in the index, so leased and delayed
-- jobs cost no heap fetch.
CREATE INDEX jobs_ready ON jobs (priority DESC, visible_at, seq) WHERE NOT dead;
-- When the next job becomes deliverable (a delayed job, an expiring lease), for an idle
-- Dequeue to sleep until then.
CREATE INDEX jobs_visible ON jobs (visible_at) WHERE NOT dead;
CREATE INDEX jobs_dead ON jobs (dead_at) WHERE dead;
-- A queue table churns: vacuum it early.
ALTER TABLE jobs SET (autovacuum_vacuum_scale_factor = 0.02, autovacuum_vacuum_insert_scale_factor = 0.02);
