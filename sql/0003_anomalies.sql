-- 0003_anomalies: the anomalous readings sb-anomaly-detector found (one row per reading).
-- The primary key makes redelivery idempotent: the detector inserts with ON CONFLICT DO NOTHING,
-- so a batch consumed twice (after a crash or a failed batch) never makes a second row.
CREATE TABLE anomalies (
    org_id       uuid NOT NULL,
    project_id   uuid NOT NULL,
    reading_id   uuid NOT NULL,
    sensor_id    text NOT NULL,
    ts           timestamptz NOT NULL,
    value        double precision NOT NULL,
    checks       text[] NOT NULL CHECK (cardinality(checks) > 0 AND
                 checks <@ ARRAY['zscore', 'limit_low', 'limit_high', 'rate']::text[]),
    z            double precision NOT NULL,
    mean         double precision NOT NULL,
    stddev       double precision NOT NULL,
    detected_at  timestamptz NOT NULL,
    PRIMARY KEY (project_id, reading_id)
);
-- A sensor's anomalies, newest first (dashboards, and rebuilding the Redis counters).
CREATE INDEX anomalies_sensor_ts_idx ON anomalies (project_id, sensor_id, ts DESC);
