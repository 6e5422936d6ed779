-- Sign-ins in flight (issue 15): one row per authorization request, keyed by its OAuth `state`
-- and bound to the browser that started it by a cookie whose SHA-256 is `browser_hash`. Each is
-- independent of the others (several tabs, a double click) and of the session, short-lived and
-- single use. A completed one keeps `next` and `sub` until it expires, so a callback replayed by
-- the person it signed in (Back, reload) goes where it went.
CREATE TABLE login_transactions (
    state         text PRIMARY KEY,
    browser_hash  text NOT NULL,
    origin        text NOT NULL,          -- the host:port the sign-in started on
    nonce         text,                   -- cleared once the callback has used it
    pkce_verifier text,                   -- cleared once the callback has used it
    next          text NOT NULL,          -- a local path
    organization  text,                   -- the Auth0 organization asked for, if any
    created_at    timestamptz NOT NULL DEFAULT now(),
    expires_at    timestamptz NOT NULL,
    completed_at  timestamptz,            -- set when a callback took it
    sub           text                    -- who it signed in, when it succeeded
);
CREATE INDEX login_transactions_expires_at_idx ON login_transactions (expires_at);
