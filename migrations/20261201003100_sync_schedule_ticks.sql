-- Issue 16: no scheduled run is lost.
--
-- Before, "one sync at a time" was a unique index over every queued or running run, so a full
-- tick that met an incremental run in flight (or fired in the same second and lost the race)
-- got that incremental run back, and the daily full sync, the only one that marks deletions,
-- did not happen. Now:
-- * at most one run *waits to start* (queued, never started). A request joins it; a full
--   request turns a waiting incremental run into a full one. A run already under way still
--   answers an incremental request, and a full request when it is full itself; a full request
--   meeting an incremental run under way queues a full run behind it. The run lock lets one
--   execute at a time.
-- * a cron tick is claimed in sync_schedule_ticks, so several instances firing one tick make
--   one run, even when the tick joined or upgraded a run that another trigger created. It
--   replaces sync_runs.schedule_key, which could only name the tick that created a run.
DROP INDEX sync_runs_one_in_flight;
CREATE UNIQUE INDEX sync_runs_one_waiting ON sync_runs ((true))
    WHERE status = 'queued' AND started_at IS NULL;

CREATE TABLE sync_schedule_ticks (
    schedule_key text PRIMARY KEY,                  -- "full:1764201600": mode and tick (UNIX seconds)
    -- The run that serves the tick; NULL only inside the claiming transaction.
    run_id       bigint REFERENCES sync_runs (id) ON DELETE CASCADE,
    fired_at     timestamptz NOT NULL DEFAULT now()
);
INSERT INTO sync_schedule_ticks (schedule_key, run_id, fired_at)
    SELECT schedule_key, id, created_at FROM sync_runs WHERE schedule_key IS NOT NULL;
ALTER TABLE sync_runs DROP COLUMN schedule_key;
