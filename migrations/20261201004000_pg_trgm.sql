-- Trigram indexes for the admin search (issue 18): pg_trgm ships with Postgres (Debian's
-- postgresql-contrib) and is available on Neon.
CREATE EXTENSION IF NOT EXISTS pg_trgm;
