-- no-transaction
-- The admin list's order (email, users without one last, then user_id) with the name, so a walk
-- in that order reads only the index. CONCURRENTLY (hence one statement and no transaction):
-- sign-ins and syncs go on meanwhile.
CREATE INDEX CONCURRENTLY user_search_order_idx ON user_search (no_email, email, user_id)
    INCLUDE (name);
