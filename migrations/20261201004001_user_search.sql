-- What the admin search reads (issue 18), apart from `users`: the lowercased email and name of
-- every user, kept by triggers in the same transaction as every write to `users`.
--
-- Why a table of its own: the search's trigram and order indexes cost a write of a `users` row
-- two to three times as much as without them, and the sync rewrites every row on every full
-- sync, mostly without changing email or name. Here a row is written only when its email or
-- name changes; and a narrow table (about 100 bytes a row, against `users`' 700 with the raw
-- profile) keeps the rows the search rechecks in memory.
CREATE TABLE user_search (
    user_id  text PRIMARY KEY REFERENCES users (user_id) ON DELETE CASCADE ON UPDATE CASCADE,
    no_email boolean NOT NULL,   -- sorts users without an email last
    email    text NOT NULL,      -- lower(users.email), '' when there is none
    name     text                -- lower(users.name)
);

-- Statement-level, with transition tables: one INSERT per statement however many rows it
-- wrote (a sync batch is one statement), and nothing for rows whose email and name stayed.
CREATE FUNCTION user_search_inserted() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO user_search (user_id, no_email, email, name)
    SELECT user_id, email IS NULL, coalesce(lower(email), ''), lower(name) FROM inserted
    ON CONFLICT (user_id) DO UPDATE
        SET no_email = EXCLUDED.no_email, email = EXCLUDED.email, name = EXCLUDED.name;
    RETURN NULL;
END $$;

CREATE FUNCTION user_search_updated() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO user_search (user_id, no_email, email, name)
    SELECT n.user_id, n.email IS NULL, coalesce(lower(n.email), ''), lower(n.name)
    FROM updated_new n JOIN updated_old o USING (user_id)
    WHERE n.email IS DISTINCT FROM o.email OR n.name IS DISTINCT FROM o.name
    ON CONFLICT (user_id) DO UPDATE
        SET no_email = EXCLUDED.no_email, email = EXCLUDED.email, name = EXCLUDED.name;
    RETURN NULL;
END $$;

CREATE TRIGGER user_search_inserted AFTER INSERT ON users
    REFERENCING NEW TABLE AS inserted
    FOR EACH STATEMENT EXECUTE FUNCTION user_search_inserted();
CREATE TRIGGER user_search_updated AFTER UPDATE ON users
    REFERENCING OLD TABLE AS updated_old NEW TABLE AS updated_new
    FOR EACH STATEMENT EXECUTE FUNCTION user_search_updated();
