-- Users copied from Auth0 (sync job) or created at first sign-in.
CREATE TABLE users (
    user_id          text PRIMARY KEY,              -- Auth0 `sub`, e.g. auth0|abc or google-oauth2|123
    email            text,
    email_verified   boolean,
    name             text,
    nickname         text,
    picture          text,
    blocked          boolean,
    logins_count     integer,
    last_login       timestamptz,
    auth0_created_at timestamptz,
    auth0_updated_at timestamptz,                   -- Auth0's `updated_at`: newer rows win
    app_metadata     jsonb,
    user_metadata    jsonb,
    identities       jsonb,
    raw              jsonb,                         -- the profile as received
    first_seen_at    timestamptz NOT NULL DEFAULT now(),
    synced_at        timestamptz,                   -- last time a sync wrote this row
    deleted_at       timestamptz                    -- set when a full sync no longer sees the user
);
CREATE INDEX users_email_idx ON users (lower(email));
CREATE INDEX users_synced_at_idx ON users (synced_at);

-- The seed guide's table: one quote per user.
CREATE TABLE user_messages (
    user_id    text PRIMARY KEY REFERENCES users (user_id) ON DELETE CASCADE,
    create_ts  timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now(),
    message    text NOT NULL
);

-- async-session store: the id is a hash of the cookie value, never the cookie itself.
CREATE TABLE sessions (
    id         text PRIMARY KEY,
    expires_at timestamptz,
    data       jsonb NOT NULL
);
CREATE INDEX sessions_expires_at_idx ON sessions (expires_at);

CREATE TABLE sync_runs (
    id          bigserial PRIMARY KEY,
    trigger     text NOT NULL CHECK (trigger IN ('schedule', 'admin', 'cli')),
    mode        text NOT NULL CHECK (mode IN ('full', 'incremental')),
    status      text NOT NULL CHECK (status IN ('queued', 'running', 'succeeded', 'failed')),
    created_at  timestamptz NOT NULL DEFAULT now(),
    started_at  timestamptz,
    finished_at timestamptz,
    fetched     integer NOT NULL DEFAULT 0,
    upserted    integer NOT NULL DEFAULT 0,
    deleted     integer NOT NULL DEFAULT 0,
    pages       integer NOT NULL DEFAULT 0,
    total       integer,
    error       text
);
-- At most one run in flight across all instances.
CREATE UNIQUE INDEX sync_runs_one_in_flight ON sync_runs ((true)) WHERE status IN ('queued', 'running');

-- The incremental cursor: a single row.
CREATE TABLE sync_state (
    id          boolean PRIMARY KEY DEFAULT true CHECK (id),
    watermark   timestamptz,
    updated_at  timestamptz NOT NULL DEFAULT now()
);
INSERT INTO sync_state (id) VALUES (true);
