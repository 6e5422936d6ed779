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

-- Each function returns before its statement on `user_search` when it has no row to write
-- (below).
CREATE FUNCTION user_search_deleted() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM deleted) THEN
        RETURN NULL;
    END IF;
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
--
-- And neither touches `user_search` when it has no row to write: a statement on the table
-- takes its lock even for no row, and a sign-in that only moves `last_login` (an upsert, so
-- both triggers fire) would then wait for a build of the search's indexes
-- (`src/users/search_indexes.rs`).
CREATE OR REPLACE FUNCTION user_search_inserted() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM inserted) THEN
        RETURN NULL;
    END IF;
    INSERT INTO user_search (user_id, no_email, email, name)
    SELECT user_id, email IS NULL, coalesce(lower(email), ''), lower(name) FROM inserted;
    RETURN NULL;
END $$;

-- The changed rows are counted, not looked for with EXISTS: planned to stop at the first
-- row, EXISTS joined the two transition tables by a nested loop, and a batch of 5,000
-- unchanged rows (a nightly full sync) cost 25 million comparisons.
CREATE OR REPLACE FUNCTION user_search_updated() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    changed bigint;
BEGIN
    SELECT count(*) INTO changed
    FROM updated_new n JOIN updated_old o USING (user_id)
    WHERE n.email IS DISTINCT FROM o.email OR n.name IS DISTINCT FROM o.name;
    IF changed = 0 THEN
        RETURN NULL;
    END IF;
    INSERT INTO user_search (user_id, no_email, email, name)
    SELECT n.user_id, n.email IS NULL, coalesce(lower(n.email), ''), lower(n.name)
    FROM updated_new n JOIN updated_old o USING (user_id)
    WHERE n.email IS DISTINCT FROM o.email OR n.name IS DISTINCT FROM o.name
    ON CONFLICT (user_id) DO UPDATE
        SET no_email = EXCLUDED.no_email, email = EXCLUDED.email, name = EXCLUDED.name;
    RETURN NULL;
END $$;

-- A row over a conservative bound of what the order index (20261201004003) can hold is
-- refused as it is written, whether the index is there or not (the index itself compresses
-- and held some larger rows): a first sync builds the index after its load
-- (`src/users/search_indexes.rs`), and a row that got in meanwhile would make that build fail
-- for good. A B-tree entry holds at most about 2,700 bytes; 2,600 bytes of id, email and name
-- leave room for the entry's own overhead. No profile Auth0 accepts comes near it (a name has
-- at most 300 characters, an email 254 bytes). The sync skips a refused profile like any
-- value Postgres refuses (`src/users/store.rs`). NOT VALID: rows already stored fit the index.
ALTER TABLE user_search ADD CONSTRAINT user_search_fits_its_order_index
    CHECK (octet_length(user_id) + octet_length(email) + coalesce(octet_length(name), 0) <= 2600)
    NOT VALID;
