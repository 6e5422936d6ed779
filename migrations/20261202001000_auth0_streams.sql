-- Changes Auth0 pushes to the app (issue 17): Event Streams deliver CloudEvents that carry the
-- profile, Log Streams deliver tenant log events that name a user to re-read.

-- One row per delivered user change that was taken on: the ledger that makes a redelivery a
-- no-op (Auth0 delivers at least once), and what the admin page shows. `stream` says which
-- kind of id `id` is: a CloudEvent `id` (`evt_...`) or a log event's `log_id`.
CREATE TABLE auth0_stream_events (
    stream text NOT NULL CHECK (stream IN ('events', 'logs')),
    id text NOT NULL,
    -- `user.created` / `user.updated` / `user.deleted`, or the log event type code (`s`, `sapi`).
    type text NOT NULL,
    user_id text NOT NULL,
    -- When the change happened at Auth0: the CloudEvent `time`, the log event's `data.date`.
    occurred_at timestamptz,
    received_at timestamptz NOT NULL DEFAULT now(),
    -- When the worker finished with it, and how: `applied`, `stale` (an older profile than the
    -- row's, or older than the user's deletion), `deleted`, `refreshed`, `unusable`, `failed`.
    processed_at timestamptz,
    outcome text,
    PRIMARY KEY (stream, id)
);

CREATE INDEX auth0_stream_events_received_idx ON auth0_stream_events (received_at DESC);
-- The worker closes a user's log events when their refresh is done; the admin page counts
-- what is waiting.
CREATE INDEX auth0_stream_events_waiting_idx ON auth0_stream_events (user_id)
    WHERE processed_at IS NULL;

-- Users with a refresh (`GET /api/v2/users/{id}`) queued and not yet started: log events for a
-- user already here add no second job (refreshes coalesce per user). The worker removes the
-- row when it starts reading, so a change that lands during the read queues another refresh.
CREATE TABLE user_refreshes (
    user_id text PRIMARY KEY,
    requested_at timestamptz NOT NULL DEFAULT now()
);
