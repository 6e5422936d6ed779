-- no-transaction
-- Finds rare substrings (and word starts) of names.
CREATE INDEX CONCURRENTLY user_search_name_trgm_idx ON user_search USING gin (name gin_trgm_ops);
