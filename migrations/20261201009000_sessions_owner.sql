-- Whose session a row is: the signed-in person's `sub` (`users.user_id`) and the provider's
-- session id (`sid`, OpenID Connect Back-Channel Logout 1.0 section 2.4), so every session of a
-- person, or of one provider session, can be found and ended at once (a user blocked or deleted
-- in Auth0, a back-channel logout). Written with the session by the session store.
ALTER TABLE sessions
    ADD COLUMN user_id text,
    ADD COLUMN sid text;

-- Sessions signed in before this column existed: the `user` entry is the session's JSON-encoded
-- `SessionUser`.
UPDATE sessions
SET user_id = (data -> 'data' ->> 'user')::jsonb ->> 'sub',
    sid = (data -> 'data' ->> 'user')::jsonb ->> 'sid'
WHERE data -> 'data' ? 'user';

CREATE INDEX sessions_user_id_idx ON sessions (user_id) WHERE user_id IS NOT NULL;
CREATE INDEX sessions_sid_idx ON sessions (sid) WHERE sid IS NOT NULL;
