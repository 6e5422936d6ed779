-- no-transaction
-- Finds rare substrings (and word starts) of the email for the admin search.
CREATE INDEX CONCURRENTLY users_email_trgm_idx ON users USING gin (lower(email) gin_trgm_ops);
