-- no-transaction
-- Finds rare substrings (and word starts) of emails.
CREATE INDEX CONCURRENTLY user_search_email_trgm_idx ON user_search USING gin (email gin_trgm_ops);
