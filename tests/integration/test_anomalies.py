"""sb-anomaly-detector end to end: device -> gateway -> Kafka -> detector -> anomalies.v1,
PostgreSQL `anomalies` and the Redis counters sb:anomalies:<project_id>; the sensors'
registration (hard limits, type), thresholds per type from detector_thresholds, and the
per-partition state that a restart restores instead of warming up again.

The signal is uniform noise around a level, so that no normal reading can ever be beyond a few
standard deviations whatever the seed, and a spike is far beyond them.
"""

import datetime as dt
import json
import random
import re
import uuid

import requests
from confluent_kafka import Consumer, TopicPartition
from jsonschema import Draft202012Validator

from conftest import READINGS_TOPIC, REPO, reading, wait_until
from sb_redis import Redis, redis_command

ANOMALIES_TOPIC = "anomalies.v1"
DETECTOR_GROUP = "sb-anomaly-detector"
LEVEL, HALF_WIDTH = 20.0, 1.0
SIGMA = HALF_WIDTH / 3 ** 0.5  # stddev of uniform noise on [-1, 1]
SCHEMA = json.loads((REPO / "proto" / "anomaly.v1.json").read_text(encoding="utf-8"))


def iso(t):
    return t.astimezone(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def steady(rng, sensor, start, n, first_second=0):
    """n normal readings of `sensor`, one second apart from start + first_second."""
    return [reading(sensor, LEVEL + rng.uniform(-HALF_WIDTH, HALF_WIDTH), id=str(uuid.uuid4()),
                    ts=iso(start + dt.timedelta(seconds=first_second + i))) for i in range(n)]


def anomaly_rows(stack, project_id):
    return stack.sql("SELECT reading_id::text, sensor_id, value, checks FROM anomalies "
                     "WHERE project_id = %s ORDER BY ts", project_id)


def wait_detector_caught_up(stack):
    """Waits until the detector's group has committed every record now in sensor.readings.v1."""
    c = Consumer({"bootstrap.servers": stack.kafka, "group.id": DETECTOR_GROUP,
                  "enable.auto.commit": False})
    try:
        parts = c.list_topics(READINGS_TOPIC, timeout=10).topics[READINGS_TOPIC].partitions
        tps = [TopicPartition(READINGS_TOPIC, p) for p in parts]
        ends = {tp.partition: c.get_watermark_offsets(tp, timeout=10)[1] for tp in tps}

        def behind():
            committed = {tp.partition: tp.offset for tp in c.committed(tps, timeout=10)}
            return {p: (committed[p], end) for p, end in ends.items()
                    if end > 0 and committed[p] < end}

        wait_until("the anomaly detector to commit every reading", lambda: not behind(),
                   timeout=60, interval=0.5)
    finally:
        c.close()


def test_one_spike_is_one_anomaly_in_kafka_postgres_and_redis(stack, tenant):
    rng = random.Random(20261123)
    start = dt.datetime.now(dt.timezone.utc).replace(microsecond=0) - dt.timedelta(minutes=10)
    spike_id = str(uuid.uuid4())
    spike_value = LEVEL + 50 * SIGMA
    batch = steady(rng, "pump-3", start, 200)
    batch.append(reading("pump-3", spike_value, id=spike_id,
                         ts=iso(start + dt.timedelta(seconds=200))))
    batch += steady(rng, "pump-3", start, 20, first_second=201)
    r = tenant.post(batch)
    assert r.status_code == 202, r.text
    assert r.json()["accepted"] == len(batch)
    request_id = r.headers["X-Request-Id"]

    wait_until("the spike in anomalies", lambda: anomaly_rows(stack, tenant.project_id))
    wait_detector_caught_up(stack)
    rows = anomaly_rows(stack, tenant.project_id)
    assert [row[0] for row in rows] == [spike_id], rows
    assert rows[0][1:] == ("pump-3", spike_value, ["zscore"])
    (z, mean, stddev, org_id), = stack.sql(
        "SELECT a.z, a.mean, a.stddev, p.org_id::text FROM anomalies a "
        "JOIN projects p ON p.id = a.project_id WHERE a.project_id = %s", tenant.project_id)
    assert z > 4.5 and abs(mean - LEVEL) < 0.5 and 0 < stddev < 2 * SIGMA, (z, mean, stddev)

    def topic_record():
        for m in stack.read_topic(ANOMALIES_TOPIC):
            if json.loads(m.value()).get("reading_id") == spike_id:
                return m
        return None

    m = wait_until("the spike in anomalies.v1", topic_record, timeout=30, interval=1)
    assert m.key() == f"{tenant.project_id}/pump-3".encode()
    headers = dict(m.headers())
    assert headers["content-type"] == b"application/json"
    assert headers["sb-contract"] == b"anomaly.v1"
    assert headers["sb-org-id"] == org_id.encode()
    assert headers["sb-project-id"] == tenant.project_id.encode()
    assert headers["sb-request-id"] == request_id.encode()
    doc = json.loads(m.value())
    Draft202012Validator(SCHEMA, format_checker=Draft202012Validator.FORMAT_CHECKER).validate(doc)
    assert (doc["project_id"], doc["org_id"], doc["sensor_id"]) == (tenant.project_id, org_id,
                                                                   "pump-3")
    assert doc["value"] == spike_value and doc["checks"] == ["zscore"]
    assert doc["ts"] == iso(start + dt.timedelta(seconds=200))

    key = f"sb:anomalies:{tenant.project_id}"
    wait_until("the Redis counter", lambda: redis_command(stack.env["SB_REDIS_URL"], "HGET", key,
                                                          "total") == "1", timeout=10)
    assert redis_command(stack.env["SB_REDIS_URL"], "HGET", key, "zscore") == "1"


def test_sigkill_mid_stream_makes_no_duplicate_anomaly(stack, tenant):
    rng = random.Random(7)
    start = dt.datetime.now(dt.timezone.utc).replace(microsecond=0) - dt.timedelta(minutes=20)
    spikes = [str(uuid.uuid4()), str(uuid.uuid4())]

    def post_then_spike(first_second, spike_id):
        batch = steady(rng, "fan-1", start, 200, first_second)
        batch.append(reading("fan-1", LEVEL - 50 * SIGMA, id=spike_id,
                             ts=iso(start + dt.timedelta(seconds=first_second + 200))))
        r = tenant.post(batch)
        assert r.status_code == 202, r.text

    post_then_spike(0, spikes[0])
    wait_until("the first spike in anomalies",
               lambda: [row[0] for row in anomaly_rows(stack, tenant.project_id)] == spikes[:1])
    # Killed before its offsets are surely committed: the restarted detector gets the tail of
    # the stream again, the first spike possibly included.
    stack.stack("kill", "anomaly-detector", "KILL")
    stack.stack("start-daemon", "anomaly-detector")
    post_then_spike(201, spikes[1])
    wait_until("the second spike in anomalies",
               lambda: len(anomaly_rows(stack, tenant.project_id)) >= 2)
    wait_detector_caught_up(stack)

    assert [row[0] for row in anomaly_rows(stack, tenant.project_id)] == spikes
    # Counted once each: a re-detected anomaly that was already stored is not counted again.
    key = f"sb:anomalies:{tenant.project_id}"
    assert redis_command(stack.env["SB_REDIS_URL"], "HGET", key, "total") == "2"


def register(stack, tenant, sensor, sensor_type, min_value=None, max_value=None):
    """Registers a sensor as POST /sensors would (the detector reads the table)."""
    stack.sql("INSERT INTO sensors (org_id, project_id, id, type, min_value, max_value) "
              "SELECT org_id, id, %s, %s, %s, %s FROM projects WHERE id = %s RETURNING id",
              sensor, sensor_type, min_value, max_value, tenant.project_id)


def detector_metric(stack, name):
    text = requests.get(stack.env["SB_HEALTH_URL_ANOMALY_DETECTOR"].replace("/readyz", "/metrics"),
                        timeout=5).text
    m = re.search(rf"^{name} (\S+)$", text, re.M)
    return float(m.group(1)) if m else 0.0


def post(tenant, batch):
    r = tenant.post(batch)
    assert r.status_code == 202, r.text


def test_registered_limits_fire_inside_the_zscore_band(stack, tenant):
    rng = random.Random(41)
    start = dt.datetime.now(dt.timezone.utc).replace(microsecond=0) - dt.timedelta(minutes=30)
    # Limits just outside the noise band [19, 21]: a value beyond them is still well inside the
    # 4.5-sigma band of the z-score (sigma ~0.58, so 4.5 sigma ~2.6 around 20).
    register(stack, tenant, "boiler-7", "boiler-temp", min_value=18.5, max_value=21.5)
    high, low = str(uuid.uuid4()), str(uuid.uuid4())
    batch = steady(rng, "boiler-7", start, 150)
    batch.append(reading("boiler-7", 21.8, id=high, ts=iso(start + dt.timedelta(seconds=150))))
    batch += steady(rng, "boiler-7", start, 20, first_second=151)
    batch.append(reading("boiler-7", 18.2, id=low, ts=iso(start + dt.timedelta(seconds=171))))
    post(tenant, batch)

    wait_until("both limit anomalies", lambda: len(anomaly_rows(stack, tenant.project_id)) >= 2)
    wait_detector_caught_up(stack)
    rows = anomaly_rows(stack, tenant.project_id)
    assert [(r[0], r[3]) for r in rows] == [(high, ["limit_high"]), (low, ["limit_low"])], rows
    zs = stack.sql("SELECT abs(z) FROM anomalies WHERE project_id = %s", tenant.project_id)
    assert all(0 < z < 4.5 for (z,) in zs), zs

    key = f"sb:anomalies:{tenant.project_id}"
    url = stack.env["SB_REDIS_URL"]
    wait_until("the Redis counters", lambda: redis_command(url, "HGET", key, "total") == "2",
               timeout=15)
    with Redis(url) as r:
        assert r.hgetall(key) == {"total": "2", "limit_high": "1", "limit_low": "1"}
        r("DEL", key)
    # sbctl rebuilds the counters from the anomalies table.
    stack.sbctl("aggregates", "rebuild", "--org", tenant.org_slug)
    with Redis(url) as r:
        assert r.hgetall(key) == {"total": "2", "limit_high": "1", "limit_low": "1"}


def test_a_threshold_change_for_a_sensor_type_takes_effect(stack, tenant):
    rng = random.Random(43)
    start = dt.datetime.now(dt.timezone.utc).replace(microsecond=0) - dt.timedelta(minutes=40)
    sensor_type = "press-" + uuid.uuid4().hex[:8]
    register(stack, tenant, "press-1", sensor_type)
    batch = steady(rng, "press-1", start, 200)
    # 3.5 sigma: normal for the default threshold (4.5).
    before = reading("press-1", LEVEL + 3.5 * SIGMA, id=str(uuid.uuid4()),
                     ts=iso(start + dt.timedelta(seconds=200)))
    post(tenant, batch + [before])
    wait_until("the readings in PostgreSQL", lambda: tenant.row_count() == len(batch) + 1)
    wait_detector_caught_up(stack)
    assert anomaly_rows(stack, tenant.project_id) == []

    changes = detector_metric(stack, "sb_anomaly_threshold_changes_total")
    stack.sql("INSERT INTO detector_thresholds (sensor_type, z_threshold, warmup, alpha) "
              "VALUES (%s, 2.5, 30, 0.05) RETURNING sensor_type", sensor_type)
    try:
        wait_until("the detector to reload its thresholds",
                   lambda: detector_metric(stack, "sb_anomaly_threshold_changes_total") > changes,
                   timeout=60, interval=0.5)
        after = reading("press-1", LEVEL + 3.5 * SIGMA, id=str(uuid.uuid4()),
                        ts=iso(start + dt.timedelta(seconds=202)))
        post(tenant, steady(rng, "press-1", start, 1, first_second=201) + [after])
        wait_until("the anomaly", lambda: anomaly_rows(stack, tenant.project_id))
        wait_detector_caught_up(stack)
        rows = anomaly_rows(stack, tenant.project_id)
        assert [(r[0], r[3]) for r in rows] == [(after["id"], ["zscore"])], rows
    finally:
        stack.sql("DELETE FROM detector_thresholds WHERE sensor_type = %s RETURNING sensor_type",
                  sensor_type)


def test_restart_restores_the_detector_state_instead_of_warming_up(stack, tenant):
    rng = random.Random(47)
    start = dt.datetime.now(dt.timezone.utc).replace(microsecond=0) - dt.timedelta(minutes=50)
    post(tenant, steady(rng, "mixer-2", start, 200))
    wait_until("the readings in PostgreSQL", lambda: tenant.row_count() == 200)
    wait_detector_caught_up(stack)

    # A graceful restart (a rebalance: the partitions are revoked, then assigned again).
    stack.stack("restart", "anomaly-detector")
    wait_until("a partition restored from its snapshot",
               lambda: detector_metric(stack, "sb_anomaly_snapshots_restored_total") > 0,
               timeout=60, interval=0.5)

    # Right after the restart: normal readings raise nothing, and a spike is judged at once
    # (a detector warming up again would judge no z-score for 30 readings).
    spike = reading("mixer-2", LEVEL + 20 * SIGMA, id=str(uuid.uuid4()),
                    ts=iso(start + dt.timedelta(seconds=230)))
    post(tenant, steady(rng, "mixer-2", start, 30, first_second=200) + [spike] +
         steady(rng, "mixer-2", start, 30, first_second=231))
    wait_until("the spike", lambda: anomaly_rows(stack, tenant.project_id))
    wait_detector_caught_up(stack)
    rows = anomaly_rows(stack, tenant.project_id)
    assert [(r[0], r[3]) for r in rows] == [(spike["id"], ["zscore"])], rows
