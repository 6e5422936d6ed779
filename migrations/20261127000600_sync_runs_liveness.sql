-- The sync job (issue 6) needs two more facts per run:
-- * schedule_key: the cron tick that created a scheduled run ("incremental:1764201600"). Unique, so
--   several instances firing the same tick insert one row between them.
-- * heartbeat_at: bumped as a run makes progress. A queued/running row whose heartbeat is long
--   stale belongs to a process that died without a retry (e.g. a killed `quotebook sync`), and is
--   failed by the next trigger instead of blocking every future sync through the in-flight index.
-- * attempts: how many times a worker started this run (apalis retries and re-enqueues).
ALTER TABLE sync_runs
    ADD COLUMN schedule_key text,
    ADD COLUMN heartbeat_at timestamptz NOT NULL DEFAULT now(),
    ADD COLUMN attempts     integer NOT NULL DEFAULT 0;
CREATE UNIQUE INDEX sync_runs_schedule_key ON sync_runs (schedule_key);
CREATE INDEX sync_runs_created_at_idx ON sync_runs (created_at DESC);
