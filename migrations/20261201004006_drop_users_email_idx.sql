-- no-transaction
-- Only the admin search read it, in the order user_search_order_idx now holds.
DROP INDEX CONCURRENTLY IF EXISTS users_email_idx;
