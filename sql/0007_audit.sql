-- 0007_audit: who changed what in an organization, and per-key rate limits.
-- Applied once by `sbctl migrate`, inside a transaction, and recorded in schema_migrations.

-- One row per administrative change (a project created, a key issued or revoked, a member added
-- or removed, an organization registered), written by the same statement as the change itself,
-- so that a change without its row (or a row without its change) cannot be committed.
-- Append-only for the gateway: its role may insert and read rows, never update or delete them
-- (see 0009_rls.sql).
CREATE TABLE audit_logs (
    id           uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    org_id       uuid NOT NULL REFERENCES organizations (id) ON DELETE CASCADE,
    at           timestamptz NOT NULL DEFAULT now(),
    -- A person's user id, or "key:<prefix>" for a machine (never a secret).
    actor        text NOT NULL CHECK (length(actor) BETWEEN 1 AND 64),
    -- "<target type>.<verb>": project.create, api_key.create, api_key.revoke, member.add,
    -- member.remove, organization.create.
    action       text NOT NULL CHECK (action ~ '^[a-z_]{1,32}\.[a-z_]{1,32}$'),
    target_type  text NOT NULL CHECK (target_type ~ '^[a-z_]{1,32}$'),
    target_id    text NOT NULL CHECK (length(target_id) BETWEEN 1 AND 128),
    -- The X-Request-Id the change was made under (the gateway's sanitised form).
    request_id   text CHECK (length(request_id) <= 64),
    -- What was changed, for a human reading the log. Never secrets, password hashes or tokens.
    details      jsonb NOT NULL DEFAULT '{}' CHECK (jsonb_typeof(details) = 'object')
);
-- GET /audit-logs pages newest first, optionally for one action.
CREATE INDEX audit_logs_org_at_idx ON audit_logs (org_id, at DESC, id DESC);
CREATE INDEX audit_logs_org_action_at_idx ON audit_logs (org_id, action, at DESC, id DESC);

-- A key's own token bucket rate (requests per second, burst twice that); NULL: the gateway's
-- key_rate_per_s setting.
ALTER TABLE api_keys ADD COLUMN rate_limit_per_s integer
    CHECK (rate_limit_per_s BETWEEN 1 AND 1000000);
