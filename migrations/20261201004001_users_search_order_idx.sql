-- no-transaction
-- The admin search's order (lowercased email, rows without one last, then user_id) with what its
-- filter reads, so walking it never touches the table (an index-only scan). lower(name) comes after
-- user_id, which is unique, so it never changes the order. Built CONCURRENTLY (hence one statement
-- and no transaction): a million-row `users` keeps taking sign-ins and syncs meanwhile.
CREATE INDEX CONCURRENTLY users_search_order_idx ON users
    ((lower(email) IS NULL), (coalesce(lower(email), '')), user_id, (coalesce(lower(name), '')))
    INCLUDE (email, name);
