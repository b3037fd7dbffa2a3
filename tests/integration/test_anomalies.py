"""sb-anomaly-detector end to end: device -> gateway -> Kafka -> detector -> anomalies.v1,
PostgreSQL `anomalies` and the Redis counters sb:anomalies:<project_id>.

The signal is uniform noise around a level, so that no normal reading can ever be beyond a few
standard deviations whatever the seed, and the spike is 50 standard deviations out.
"""

import datetime as dt
import json
import random
import socket
import urllib.parse
import uuid

from confluent_kafka import Consumer, TopicPartition
from jsonschema import Draft202012Validator

from conftest import READINGS_TOPIC, REPO, reading, wait_until

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


def redis_command(url, *args):
    """One command on a fresh connection (RESP2), enough for HGET: the venv has no Redis client."""
    u = urllib.parse.urlsplit(url)
    with socket.create_connection((u.hostname, u.port or 6379), timeout=5) as s:
        f = s.makefile("rb")

        def call(*words):
            data = [w.encode() for w in words]
            s.sendall(b"*%d\r\n" % len(data) + b"".join(b"$%d\r\n%s\r\n" % (len(w), w)
                                                         for w in data))
            line = f.readline()
            kind, rest = line[:1], line[1:-2]
            if kind == b"-":
                raise AssertionError(f"Redis: {rest.decode()}")
            if kind == b"$":
                n = int(rest)
                return None if n < 0 else f.read(n + 2)[:-2].decode()
            return rest.decode()

        if u.password:
            call("AUTH", *([urllib.parse.unquote(u.username)] if u.username else []),
                 urllib.parse.unquote(u.password))
        if u.path.strip("/"):
            call("SELECT", u.path.strip("/"))
        return call(*args)


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
