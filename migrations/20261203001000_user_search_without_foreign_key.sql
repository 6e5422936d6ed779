-- `user_search` loses its foreign key to `users`: statement-level triggers remove its rows
-- instead, and the rows of new users are inserted without a conflict check (issue 18).
--
-- Why: the key made Postgres check every row the search triggers insert. That is one lookup
-- and one row lock on `users` per row, about 5 s of a first sync of 1,000,000 users on the
-- 2-core build machine. Only the triggers of 20261201004001 write `user_search`, from rows of
-- `users`. So the key could only ever catch a deletion, and a trigger per statement catches
-- that for the cost of one join. `users.user_id` is Auth0's key and is never updated, so the
-- key's ON UPDATE CASCADE had nothing to do.
ALTER TABLE user_search DROP CONSTRAINT user_search_user_id_fkey;

CREATE FUNCTION user_search_deleted() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    DELETE FROM user_search s USING deleted d WHERE s.user_id = d.user_id;
    RETURN NULL;
END $$;

CREATE FUNCTION user_search_truncated() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    TRUNCATE user_search;
    RETURN NULL;
END $$;

CREATE TRIGGER user_search_deleted AFTER DELETE ON users
    REFERENCING OLD TABLE AS deleted
    FOR EACH STATEMENT EXECUTE FUNCTION user_search_deleted();
CREATE TRIGGER user_search_truncated AFTER TRUNCATE ON users
    FOR EACH STATEMENT EXECUTE FUNCTION user_search_truncated();

-- A row new to `users` has none in `user_search`: a deletion of the same user took it
-- with it, by the trigger above, before anything could insert the user again. So the rows
-- of inserted users go in without ON CONFLICT, whose check before each row (an index probe
-- and a speculative insertion) was a quarter of Postgres' work in a first sync
-- (`perf`, `examples/sync_bench`). Rows changed by an upsert come through
-- `user_search_updated`, which keeps its ON CONFLICT.
CREATE OR REPLACE FUNCTION user_search_inserted() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO user_search (user_id, no_email, email, name)
    SELECT user_id, email IS NULL, coalesce(lower(email), ''), lower(name) FROM inserted;
    RETURN NULL;
END $$;
