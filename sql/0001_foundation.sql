-- 0001_foundation: tenants, machine API keys and time-partitioned sensor readings.
-- Applied once by `sbctl migrate`, inside a transaction, and recorded in schema_migrations.

CREATE TABLE organizations (
    id          uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    slug        text NOT NULL UNIQUE CHECK (slug ~ '^[a-z0-9][a-z0-9-]{0,62}$'),
    name        text NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE projects (
    id          uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    org_id      uuid NOT NULL REFERENCES organizations (id) ON DELETE CASCADE,
    slug        text NOT NULL CHECK (slug ~ '^[a-z0-9][a-z0-9-]{0,62}$'),
    name        text NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    UNIQUE (org_id, slug)
);

-- Machine credentials: `lok_<prefix>.<secret>`. Only the prefix and HMAC-SHA256(pepper, secret)
-- are stored; the secret is shown once, at creation.
CREATE TABLE api_keys (
    id            uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    org_id        uuid NOT NULL REFERENCES organizations (id) ON DELETE CASCADE,
    project_id    uuid NOT NULL REFERENCES projects (id) ON DELETE CASCADE,
    prefix        text NOT NULL UNIQUE CHECK (prefix ~ '^[a-z2-7]{12}$'),
    secret_hash   text NOT NULL CHECK (secret_hash ~ '^[0-9a-f]{64}$'),
    name          text NOT NULL DEFAULT '',
    scopes        text[] NOT NULL DEFAULT '{ingest}'
                  CHECK (scopes <@ ARRAY['ingest', 'orders', 'read']::text[]),
    created_at    timestamptz NOT NULL DEFAULT now(),
    expires_at    timestamptz,
    revoked_at    timestamptz,
    last_used_at  timestamptz
);
CREATE INDEX api_keys_project_idx ON api_keys (project_id);

-- One row per reading. The primary key makes redelivery idempotent: a record consumed twice
-- (same project, reading id and timestamp) never makes a second row. It has to include the
-- partition key `ts`, which PostgreSQL requires of unique indexes on partitioned tables.
CREATE TABLE sensor_readings (
    org_id          uuid NOT NULL,
    project_id      uuid NOT NULL,
    reading_id      uuid NOT NULL,
    sensor_id       text NOT NULL,
    ts              timestamptz NOT NULL,
    value           double precision NOT NULL,
    unit            text,
    tags            jsonb,
    request_id      text,
    kafka_partition integer NOT NULL,
    kafka_offset    bigint NOT NULL,
    ingested_at     timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (project_id, reading_id, ts)
) PARTITION BY RANGE (ts);
CREATE INDEX sensor_readings_sensor_ts_idx ON sensor_readings (project_id, sensor_id, ts DESC);

-- Monthly partitions, created on demand by sensor-ingest before it inserts a batch (and for the
-- current month here). Creating one that exists is a no-op, so concurrent callers are safe to
-- retry.
CREATE FUNCTION sb_ensure_reading_partition(t timestamptz) RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
    lo   timestamptz := date_trunc('month', t AT TIME ZONE 'UTC') AT TIME ZONE 'UTC';
    hi   timestamptz := lo + interval '1 month';
    name text := format('sensor_readings_y%sm%s', to_char(lo AT TIME ZONE 'UTC', 'YYYY'),
                        to_char(lo AT TIME ZONE 'UTC', 'MM'));
BEGIN
    IF to_regclass(name) IS NULL THEN
        EXECUTE format('CREATE TABLE IF NOT EXISTS %I PARTITION OF sensor_readings '
                       'FOR VALUES FROM (%L) TO (%L)', name, lo, hi);
    END IF;
END
$$;

SELECT sb_ensure_reading_partition(now());
