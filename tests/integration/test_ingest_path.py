"""The first end-to-end path: device -> gateway -> Kafka -> sensor-ingest -> PostgreSQL.

Every test counts reading ids end to end in PostgreSQL; none samples.
"""

import concurrent.futures
import datetime as dt
import threading
import time
import uuid

from conftest import reading, wait_until


def iso(t):
    return t.astimezone(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def test_one_reading_lands_in_postgres_exactly_once(stack, tenant):
    ts = dt.datetime.now(dt.timezone.utc).replace(microsecond=123456)
    r = tenant.post(reading("boiler-7", 73.25, ts=iso(ts), unit="degC", tags={"site": "north"}))
    assert r.status_code == 202, r.text
    body = r.json()
    assert body["accepted"] == 1
    (rid,) = body["ids"]
    assert r.headers.get("X-Request-Id")

    wait_until("the reading in PostgreSQL", lambda: tenant.row_count([rid]) == 1)
    rows = stack.sql("SELECT sensor_id, value, unit, ts, tags->>'site', request_id "
                     "FROM sensor_readings WHERE project_id = %s", tenant.project_id)
    assert len(rows) == 1
    sensor_id, value, unit, row_ts, site, request_id = rows[0]
    assert (sensor_id, value, unit, site) == ("boiler-7", 73.25, "degC", "north")
    assert row_ts == ts
    assert request_id == r.headers["X-Request-Id"]


def test_same_batch_posted_twice_leaves_one_row_per_id(stack, tenant):
    now = dt.datetime.now(dt.timezone.utc)
    batch = [reading("dup-sensor", float(i), id=str(uuid.uuid4()),
                     ts=iso(now + dt.timedelta(milliseconds=i))) for i in range(100)]
    ids = [d["id"] for d in batch]
    for _ in range(2):
        r = tenant.post(batch)
        assert r.status_code == 202, r.text
        assert sorted(r.json()["ids"]) == sorted(ids)

    # Every record of one sensor shares a partition and sensor-ingest applies a partition in
    # order, so once a sentinel posted after both copies is in PostgreSQL, both copies have been
    # consumed.
    sentinel = tenant.post(reading("dup-sensor", -1.0)).json()["ids"][0]
    wait_until("the sentinel reading", lambda: tenant.row_count([sentinel]) == 1)
    assert tenant.row_count(ids) == 100
    assert tenant.row_count() == 101


def test_50k_readings_survive_two_sigkills_of_sensor_ingest(stack):
    tenant = stack.new_tenant()
    total, per_request = 50_000, 500
    sensors = [f"fleet-{i:03d}" for i in range(200)]
    base = dt.datetime.now(dt.timezone.utc)
    batches = []
    for b in range(total // per_request):
        batches.append([reading(sensors[(b * per_request + i) % len(sensors)], float(i),
                                id=str(uuid.uuid4()),
                                ts=iso(base + dt.timedelta(microseconds=b * per_request + i)))
                        for i in range(per_request)])
    acked = set()
    lock = threading.Lock()
    done = [0]

    def send(batch):
        # A client retries a 503 with the same ids: that is what makes a retry idempotent.
        deadline = time.monotonic() + 120
        while True:
            r = tenant.post(batch)
            if r.status_code == 202:
                with lock:
                    acked.update(r.json()["ids"])
                    done[0] += 1
                return
            assert r.status_code == 503, r.text
            assert time.monotonic() < deadline, "gateway kept answering 503"
            time.sleep(float(r.headers.get("Retry-After", "1")))

    kills = []
    with concurrent.futures.ThreadPoolExecutor(max_workers=4) as pool:
        futures = [pool.submit(send, b) for b in batches]
        for at in (len(batches) // 3, 2 * len(batches) // 3):
            wait_until(f"{at} batches acknowledged", lambda: done[0] >= at, timeout=300,
                       interval=0.02)
            before = tenant.row_count()
            stack.stack("kill", "sensor-ingest", "KILL")
            stack.stack("start-daemon", "sensor-ingest")
            kills.append(before)
        for f in futures:
            f.result()

    assert len(acked) == total
    # The kills happened while rows were still arriving, not after everything was written.
    assert all(0 < k < total for k in kills), kills
    wait_until("all 50,000 readings in PostgreSQL", lambda: tenant.row_count() >= total,
               timeout=300, interval=0.5)
    (count, distinct), = stack.sql("SELECT count(*), count(DISTINCT reading_id) "
                                   "FROM sensor_readings WHERE project_id = %s",
                                   tenant.project_id)
    assert count == total and distinct == total
    assert tenant.row_count(list(acked)) == total


def test_poison_record_goes_to_the_dlq_and_does_not_block_the_partition(stack, tenant):
    from confluent_kafka import Producer

    key = f"{tenant.project_id}/poison-sensor".encode()
    marker = uuid.uuid4().hex
    p = Producer({"bootstrap.servers": stack.kafka, "enable.idempotence": True})
    p.produce("sensor.readings.v1", key=key, value=b'{"not json ' + marker.encode(),
              headers=[("sb-project-id", tenant.project_id.encode())])
    assert p.flush(10) == 0

    # A good reading for the same sensor lands on the same partition, after the poison record.
    good = tenant.post(reading("poison-sensor", 1.0)).json()["ids"][0]
    wait_until("the reading after the poison record", lambda: tenant.row_count([good]) == 1)

    def dlq_record():
        for m in stack.read_topic("dlq.sensor-ingest.v1"):
            if marker.encode() in (m.value() or b""):
                return m
        return None

    m = wait_until("the poison record in dlq.sensor-ingest.v1", dlq_record, timeout=30,
                   interval=1)
    headers = dict(m.headers())
    assert headers["sb-dlq-reason"]
    assert headers["sb-dlq-topic"] == b"sensor.readings.v1"
    assert m.key() == key
