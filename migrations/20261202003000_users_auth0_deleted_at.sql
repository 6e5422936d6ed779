-- When Auth0 itself said the user was deleted: a `user.deleted` event's time, or when a read of
-- the user answered 404 (issue 17). Unlike `deleted_at` set by a full sync that no longer found
-- the user (absence, which a later sighting disproves), this is evidence: a profile no newer
-- than it (a sync's export made before the deletion) must not bring the user back; a newer one
-- (the user created again under the same id) does, and clears it.
ALTER TABLE users ADD COLUMN auth0_deleted_at timestamptz;
UPDATE users u SET auth0_deleted_at = u.deleted_at
FROM auth0_stream_events e
WHERE e.user_id = u.user_id AND u.deleted_at IS NOT NULL
  AND e.outcome = 'deleted';
