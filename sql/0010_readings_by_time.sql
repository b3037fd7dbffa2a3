-- 0010_readings_by_time: project-wide reading queries (GET /sensors/data and /sensors/stats
-- without a sensor_id) walk a project's readings newest first; without this index they scan the
-- month's whole partition. Per-sensor queries keep using sensor_readings_sensor_ts_idx.
CREATE INDEX sensor_readings_project_ts_idx ON sensor_readings (project_id, ts DESC, reading_id DESC);
