-- The users that existed before the triggers. Rows the triggers wrote meanwhile are newer and
-- stay. Reads `users` without blocking its writers.
INSERT INTO user_search (user_id, no_email, email, name)
SELECT user_id, email IS NULL, coalesce(lower(email), ''), lower(name) FROM users
ON CONFLICT (user_id) DO NOTHING;
