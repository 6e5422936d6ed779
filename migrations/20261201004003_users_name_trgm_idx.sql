-- no-transaction
-- Finds rare substrings (and word starts) of the name for the admin search.
CREATE INDEX CONCURRENTLY users_name_trgm_idx ON users USING gin (lower(name) gin_trgm_ops);
