-- 0004_sensors: the sensors a project registers (POST /sensors), with the hard limits the
-- anomaly detector applies to their readings.
--
-- Registration is optional for ingest: a reading for an unregistered sensor id is stored all the
-- same (devices come online before anyone registers them); it simply has no hard limits.
CREATE TABLE sensors (
    org_id      uuid NOT NULL REFERENCES organizations (id) ON DELETE CASCADE,
    project_id  uuid NOT NULL REFERENCES projects (id) ON DELETE CASCADE,
    id          text NOT NULL CHECK (id ~ '^[A-Za-z0-9][A-Za-z0-9._:-]{0,63}$'),
    type        text NOT NULL CHECK (type ~ '^[a-z0-9][a-z0-9_.-]{0,63}$'),
    unit        text CHECK (unit IS NULL OR length(unit) BETWEEN 1 AND 32),
    min_value   double precision,
    max_value   double precision,
    name        text NOT NULL DEFAULT '' CHECK (length(name) <= 200),
    created_at  timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (project_id, id),
    CHECK (min_value IS NULL OR max_value IS NULL OR min_value < max_value)
);
CREATE INDEX sensors_org_idx ON sensors (org_id);
CREATE INDEX sensors_type_idx ON sensors (project_id, type);
