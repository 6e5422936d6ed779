-- Issue 16: a profile that cannot be stored is skipped, never fatal. The run counts how many it
-- skipped (each is logged with its user_id), and the admin page and API show the count.
ALTER TABLE sync_runs ADD COLUMN skipped integer NOT NULL DEFAULT 0;
