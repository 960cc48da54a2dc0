-- Schema 1: tokens, the audit trail, the readiness probe's row.

-- One row per token: a user's current one (slot 0) and the rotated-out
-- one in its grace window (slot 1). UNIQUE (user_id, slot) is what makes
-- "one live token per user" hold across replicas, whatever they race.
CREATE TABLE tokens (
    hash bytea PRIMARY KEY CHECK (octet_length(hash) = 32),
    user_id text NOT NULL,
    slot smallint NOT NULL CHECK (slot IN (0, 1)),
    prefix text NOT NULL,
    created_at bigint NOT NULL,
    last_used_at bigint,
    grace_until bigint,
    CHECK ((slot = 0) = (grace_until IS NULL)),
    UNIQUE (user_id, slot)
);

-- Grace expiry reads only the rotated-out tokens, oldest end first.
CREATE INDEX tokens_grace_until ON tokens (grace_until) WHERE slot = 1;

CREATE TABLE audit_events (
    id bigserial PRIMARY KEY,
    at bigint NOT NULL,
    kind text NOT NULL,
    actor text NOT NULL,
    user_id text,
    token_prefix text,
    previous_prefix text,
    request_id text,
    address text,
    detail text
);

-- A user's events newest first; the retention sweep by time.
CREATE INDEX audit_events_user ON audit_events (user_id, at, id);
CREATE INDEX audit_events_at ON audit_events (at);

-- /readyz proves a durable write works by updating this row.
CREATE TABLE readiness (
    id smallint PRIMARY KEY,
    at bigint NOT NULL
);
