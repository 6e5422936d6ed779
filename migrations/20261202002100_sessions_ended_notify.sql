-- Every instance keeps the sessions it read in the last second in memory. When sessions end
-- (a logout, a back-channel logout, a blocked or deleted user, "sign out the others"), the
-- instances that remember them are told at once: every DELETE on `sessions` notifies the
-- channel `quotebook_sessions_ended` with the ids of the unexpired sessions it removed
-- (space-separated), or `*` ("forget them all") when they would not fit in one notification
-- (Postgres caps a payload at 8000 bytes). Expired rows, which no instance serves anyway, are
-- left out, so the reaper stays quiet. A notification is delivered when the deleting
-- transaction commits, whichever connection (or pooler) ran it; instances listen on the direct
-- URL (`auth::session_events`).
CREATE FUNCTION notify_sessions_ended() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    ended_ids text;
BEGIN
    SELECT CASE WHEN count(*) > 150 THEN '*' ELSE string_agg(id, ' ') END
    INTO ended_ids
    FROM ended
    WHERE expires_at IS NULL OR expires_at > now();
    IF ended_ids IS NOT NULL THEN
        PERFORM pg_notify('quotebook_sessions_ended', ended_ids);
    END IF;
    RETURN NULL;
END
$$;

CREATE TRIGGER sessions_ended
    AFTER DELETE ON sessions
    REFERENCING OLD TABLE AS ended
    FOR EACH STATEMENT
    EXECUTE FUNCTION notify_sessions_ended();
