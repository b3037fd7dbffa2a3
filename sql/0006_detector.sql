-- 0006_detector: sb-anomaly-detector's thresholds per sensor type, its per-partition state
-- snapshots, and which Kafka record wrote each anomaly (for the exactly-once Redis counters).

-- Thresholds per sensor type (sensors.type). A sensor whose type has no row, and a reading of an
-- unregistered sensor, use the 'default' row. The detector loads the table at start and again
-- every refresh_ms (30 s by default), so a change applies to running sensors within that time
-- without a restart (docs/architecture.md, "Anomaly detection").
CREATE TABLE detector_thresholds (
    sensor_type text PRIMARY KEY CHECK (sensor_type ~ '^[a-z0-9][a-z0-9_.-]{0,63}$'),
    -- |z-score| above which a reading is an anomaly.
    z_threshold double precision NOT NULL CHECK (z_threshold > 0 AND z_threshold < 'Infinity'),
    -- Readings of a sensor learnt before its z-scores are judged.
    warmup      integer NOT NULL CHECK (warmup >= 2),
    -- EWMA weight of a new reading: 0.05 remembers about the last 40 readings.
    alpha       double precision NOT NULL CHECK (alpha > 0 AND alpha <= 1),
    -- Largest |change| per second between consecutive readings, in the sensor's unit; 0 = off.
    max_rate    double precision NOT NULL DEFAULT 0
                CHECK (max_rate >= 0 AND max_rate < 'Infinity'),
    -- Floor of the standard deviation in the sensor's unit (its resolution), so that a sensor
    -- that has been constant does not alarm on its next tiny change; 0 = a relative floor only.
    min_stddev  double precision NOT NULL DEFAULT 0
                CHECK (min_stddev >= 0 AND min_stddev < 'Infinity'),
    updated_at  timestamptz NOT NULL DEFAULT now()
);
INSERT INTO detector_thresholds (sensor_type, z_threshold, warmup, alpha, max_rate, min_stddev)
VALUES ('default', 4.5, 30, 0.05, 0, 0);

-- The detector's state of one partition (every sensor's EWMA mean and variance, limits and last
-- reading), written on revocation, at shutdown and periodically, so that the partition's next
-- owner restores it instead of warming up again. next_offset is the first offset the state has
-- not seen: the new owner does not learn the records below it twice.
CREATE TABLE detector_snapshots (
    consumer    text NOT NULL,
    topic       text NOT NULL,
    kafka_partition integer NOT NULL,
    next_offset bigint NOT NULL,
    sensors     integer NOT NULL,
    state       text NOT NULL, -- detector_snapshot()'s JSON document
    taken_at    timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (consumer, topic, kafka_partition)
);

-- The record that wrote each anomaly, so that its Redis counters are applied once per Kafka
-- offset even when a client sent the same reading twice (rows before this migration have none).
ALTER TABLE anomalies ADD COLUMN kafka_partition integer, ADD COLUMN kafka_offset bigint;
