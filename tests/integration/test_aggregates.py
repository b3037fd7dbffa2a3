"""The live dashboard aggregates in Redis (docs/aggregates.md), end to end: device -> gateway ->
Kafka -> sb-sensor-ingest -> PostgreSQL, then Redis. Whatever happens to the daemon or to Redis,
the aggregates end up equal to what PostgreSQL holds, counted once per reading."""

import datetime as dt
import random
import re
import threading
import time
import uuid

import requests

from conftest import reading, wait_until
from sb_redis import Redis, aggregates_in_postgres, aggregates_in_redis, rfc3339


def now_s():
    return dt.datetime.now(dt.timezone.utc).replace(microsecond=0)


def readings(sensors, n, start, step_s=7, rng=None):
    """n readings per sensor, step_s seconds apart from start, with ids; values random."""
    rng = rng or random.Random(1)
    return [reading(s, round(rng.uniform(-50, 50), 3), id=str(uuid.uuid4()),
                    ts=rfc3339(start + dt.timedelta(seconds=i * step_s, milliseconds=k)))
            for i in range(n) for k, s in enumerate(sensors)]


def post_all(tenant, batch, size=200):
    for i in range(0, len(batch), size):
        r = tenant.post(batch[i:i + size])
        assert r.status_code == 202, r.text


def expected_from(posted):
    """The aggregates the posted readings must make (one per id), computed here, not read."""
    by_id = {}
    for doc in posted:
        by_id.setdefault(doc["id"], doc)
    sensors, rpm = {}, {}
    for doc in by_id.values():
        ts = dt.datetime.strptime(doc["ts"], "%Y-%m-%dT%H:%M:%S.%fZ").replace(
            tzinfo=dt.timezone.utc)
        minute = int(ts.timestamp() // 60)
        rpm[minute] = rpm.get(minute, 0) + 1
        s = sensors.setdefault(doc["sensor_id"], {"count": 0, "min": doc["value"],
                                                  "max": doc["value"], "last": (ts, doc["value"])})
        s["count"] += 1
        s["min"] = min(s["min"], doc["value"])
        s["max"] = max(s["max"], doc["value"])
        s["last"] = max(s["last"], (ts, doc["value"]))
    for s in sensors.values():
        ts, value = s.pop("last")
        s.update(last_value=value, last_ts=rfc3339(ts))
    return {"rpm": rpm, "sensors": sensors, "seen": set(sensors)}


def wait_redis_equals_postgres(stack, tenant, rows, timeout=90):
    """Waits for every row in PostgreSQL, then for Redis to say the same; returns the aggregates."""
    wait_until(f"{rows} rows in PostgreSQL", lambda: tenant.row_count() >= rows, timeout=timeout)
    assert tenant.row_count() == rows
    url = stack.env["SB_REDIS_URL"]
    state = {}

    def equal():
        state["pg"] = aggregates_in_postgres(stack, tenant.project_id)
        try:
            state["redis"] = aggregates_in_redis(url, tenant.project_id)
        except (OSError, KeyError) as e:  # Redis restarting, or a key being replaced
            state["redis"] = repr(e)
        return state["redis"] == state["pg"]

    if not wait_until_quiet(equal, timeout):
        assert state["redis"] == state["pg"]
    return state["pg"]


def wait_until_quiet(predicate, timeout):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.2)
    return False


def health(stack, daemon="SENSOR_INGEST"):
    r = requests.get(stack.env[f"SB_HEALTH_URL_{daemon}"], timeout=5)
    return r.status_code, r.json()


def metric(stack, name, daemon="SENSOR_INGEST"):
    text = requests.get(stack.env[f"SB_HEALTH_URL_{daemon}"].replace("/readyz", "/metrics"),
                        timeout=5).text
    m = re.search(rf"^{name} (\S+)$", text, re.M)
    return float(m.group(1)) if m else None


class Poster(threading.Thread):
    """Posts batches of readings until told to stop; remembers every reading it got 202 for."""

    def __init__(self, tenant, sensors, batches, start):
        super().__init__(daemon=True)
        self.tenant, self.sensors, self.batches, self.start_ts = tenant, sensors, batches, start
        self.acked, self.errors = [], []

    def run(self):
        rng = random.Random(99)
        for b in range(self.batches):
            batch = readings(self.sensors, 25, self.start_ts + dt.timedelta(seconds=b), 60, rng)
            for _ in range(50):  # a 503 during a daemon restart is retried with the same ids
                r = self.tenant.post(batch)
                if r.status_code == 202:
                    self.acked += batch
                    break
                time.sleep(0.2)
            else:
                self.errors.append(r.status_code)
            time.sleep(0.02)


def test_aggregates_equal_postgres_and_a_retried_reading_counts_once(stack, tenant):
    start = now_s() - dt.timedelta(minutes=30)
    batch = readings(["pump-1", "pump-2", "fan.3:a"], 60, start)
    # Two readings of one sensor at the same instant: the larger value is the last one.
    batch.append(reading("pump-1", -49.5, id=str(uuid.uuid4()), ts=batch[-3]["ts"]))
    batch.append(reading("pump-1", 99.25, id=str(uuid.uuid4()), ts=batch[-4]["ts"]))
    post_all(tenant, batch)
    # A client retrying readings it already sent (same ids and times): one row, counted once.
    post_all(tenant, batch[:40])

    pg = wait_redis_equals_postgres(stack, tenant, len(batch))
    assert pg == expected_from(batch)
    assert pg["sensors"]["pump-1"]["last_value"] == 99.25
    assert sum(pg["rpm"].values()) == len(batch)

    # The exact text formats the dashboard reads.
    with Redis(stack.env["SB_REDIS_URL"]) as r:
        h = r.hgetall(f"sb:sensor:{tenant.project_id}:pump-1")
        assert h["last_value"] == "99.25"
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z", h["last_ts"]), h
        minute = min(pg["rpm"])
        ttl = r("TTL", f"sb:rpm:{tenant.project_id}:{minute}")
        expires = (minute + 1) * 60 + 48 * 3600
        assert abs(ttl - (expires - time.time())) < 5, ttl


def test_sigkill_sensor_ingest_mid_stream_keeps_counts_exact(stack, tenant):
    poster = Poster(tenant, ["k-1", "k-2", "k-3", "k-4"], 40, now_s() - dt.timedelta(hours=1))
    poster.start()
    wait_until("the first rows", lambda: tenant.row_count() > 0, timeout=60)
    # Killed while batches flow: its last offsets are applied to Redis but not yet committed
    # (auto-commit runs every few seconds), so the new process gets them again.
    stack.stack("kill", "sensor-ingest", "KILL")
    stack.stack("start-daemon", "sensor-ingest")
    poster.join(timeout=300)
    assert not poster.is_alive() and not poster.errors, poster.errors

    pg = wait_redis_equals_postgres(stack, tenant, len(poster.acked), timeout=120)
    assert pg == expected_from(poster.acked)
    assert sum(s["count"] for s in pg["sensors"].values()) == len(poster.acked)


def test_redis_outage_never_blocks_ingest_and_aggregates_catch_up(stack, tenant):
    start = now_s() - dt.timedelta(minutes=90)
    first = readings(["r-1", "r-2"], 50, start)
    post_all(tenant, first)
    wait_redis_equals_postgres(stack, tenant, len(first))

    stack.stack("stop-component", "redis")
    try:
        during = readings(["r-1", "r-2", "r-3"], 100, start + dt.timedelta(minutes=10))
        post_all(tenant, during)
        wait_until("PostgreSQL to get every reading while Redis is down",
                   lambda: tenant.row_count() == len(first) + len(during), timeout=60)

        def lagging():
            status, body = health(stack)
            pending = metric(stack, "sb_ingest_aggregate_pending")
            # Still ready (ingest into PostgreSQL works), but degraded.
            return status == 200 and body["status"] == "degraded" and \
                body["checks"].get("redis") is False and \
                body["checks"].get("db") is True and pending and pending >= len(during)
        wait_until("sensor-ingest to report the aggregates lagging", lagging, timeout=30)

        res = stack.sbctl("aggregates", "rebuild", check=False)
        assert res.returncode == 1 and "Redis" in res.stderr, (res.returncode, res.stderr)
    finally:
        stack.stack("start-component", "redis")

    # Caught up from what sensor-ingest kept, without a rebuild.
    pg = wait_redis_equals_postgres(stack, tenant, len(first) + len(during))
    assert pg == expected_from(first + during)
    wait_until("sensor-ingest no longer degraded",
               lambda: health(stack)[1]["status"] == "ready", timeout=30)
    assert metric(stack, "sb_ingest_aggregate_pending") == 0
    assert metric(stack, "sb_ingest_aggregate_dropped_total") == 0


def test_rebuild_repairs_keys_and_runs_beside_live_ingest(stack, tenant):
    start = now_s() - dt.timedelta(minutes=20)
    batch = readings(["b-1", "b-2", "b-3"], 40, start)
    post_all(tenant, batch)
    pg = wait_redis_equals_postgres(stack, tenant, len(batch))

    # Damage: a lost hash, a wrong counter, a sensor PostgreSQL never saw.
    p = tenant.project_id
    with Redis(stack.env["SB_REDIS_URL"]) as r:
        r("DEL", f"sb:sensor:{p}:b-2")
        r("SET", f"sb:rpm:{p}:{min(pg['rpm'])}", 999)
        r("SADD", f"sb:sensors:{p}", "ghost")
        r("HSET", f"sb:sensor:{p}:ghost", "count", 5)
        r("SET", f"sb:rpm:{p}:{min(pg['rpm']) - 100}", 3)
    assert aggregates_in_redis(stack.env["SB_REDIS_URL"], p) != pg

    res = stack.sbctl("aggregates", "rebuild", "--org", tenant.org_slug)
    assert "rebuilt" in res.stdout, res.stdout
    assert aggregates_in_redis(stack.env["SB_REDIS_URL"], p) == pg
    with Redis(stack.env["SB_REDIS_URL"]) as r:
        assert r("EXISTS", f"sb:sensor:{p}:ghost") == 0
        assert r("EXISTS", CACHE_LOCK) == 0, "the lock is released"
        ttl = r("TTL", f"sb:rpm:{p}:{min(pg['rpm'])}")
        assert 0 < ttl <= 48 * 3600 + 60, ttl
        # Orders by status, as sb-order-processor writes them: every status, here all 0.
        (org_id,), = stack.sql("SELECT org_id::text FROM projects WHERE id = %s", p)
        assert r.hgetall(f"sb:orders:{org_id}") == {s: "0" for s in ORDER_STATUSES}

    # Full rebuilds while readings keep coming: nothing counted twice, nothing lost.
    poster = Poster(tenant, ["b-1", "b-4"], 30, start + dt.timedelta(minutes=5))
    poster.start()
    rebuilds = 0
    while poster.is_alive() and rebuilds < 4:
        stack.sbctl("aggregates", "rebuild")
        rebuilds += 1
    poster.join(timeout=300)
    assert not poster.errors, poster.errors
    pg = wait_redis_equals_postgres(stack, tenant, len(batch) + len(poster.acked))
    assert pg == expected_from(batch + poster.acked)
    assert rebuilds >= 2, "the rebuilds ran while readings were posted"


def test_rebuild_usage_errors(stack):
    res = stack.sbctl("aggregates", "rebuild", "--org", "no-such-org-" + uuid.uuid4().hex[:8],
                      check=False)
    assert res.returncode == 1 and "no organization" in res.stderr, res.stderr
    res = stack.sbctl("aggregates", "frobnicate", check=False)
    assert res.returncode == 2, res.stderr
    assert "rebuild" in stack.sbctl("aggregates", "--help").stdout


CACHE_LOCK = "sb:agg:rebuild"
ORDER_STATUSES = ("pending", "pending_approval", "accepted", "rejected", "in_production",
                  "shipped", "delivered", "cancelled")
