-- Logout tokens already acted on (OpenID Connect Back-Channel Logout 1.0, section 2.6 step 7:
-- "verify that the Logout Token has not been recently received"), shared by every instance.
-- A row lives as long as its token could still be accepted (`expires_at`, from the token's
-- `iat` and `exp`); expired rows are reaped with the sessions.
CREATE TABLE logout_tokens_seen (
    issuer     text NOT NULL,
    jti        text NOT NULL,
    expires_at timestamptz NOT NULL,
    PRIMARY KEY (issuer, jti)
);
CREATE INDEX logout_tokens_seen_expires_at_idx ON logout_tokens_seen (expires_at);
