"""GET /dashboard/metrics and GET /dashboard/health against the real stack.

The metrics are read from the Redis aggregates when they are there and from PostgreSQL otherwise,
in the same shape; every test compares the answer with what PostgreSQL (or the Redis keys the test
wrote, in the layout of docs/api-reads.md) says, whichever source answered. One test stops Redis.
"""

import datetime as dt
import uuid

import pytest

from conftest import wait_until
from sb_redis import Redis
from test_sensors_api import (Api, assert_problem, insert_anomaly, iso, make_reading, org_id,
                              person, post_readings, utcnow)

STATUSES = ["pending", "pending_approval", "accepted", "rejected", "in_production", "shipped",
            "delivered", "cancelled"]
CHECKS = ["zscore", "limit_low", "limit_high", "rate"]


@pytest.fixture
def rds(stack):
    with Redis(stack.env["SB_REDIS_URL"]) as r:
        yield r


def minute_of(label):
    return int(dt.datetime.fromisoformat(label.replace("Z", "+00:00")).timestamp()) // 60


def expected_from_pg(stack, org, project, minutes):
    """The metrics of @project (None: every project of @org), from PostgreSQL, for the minute
    buckets @minutes (unix minutes)."""
    scope = "org_id = %s AND (%s::uuid IS NULL OR project_id = %s::uuid)"
    per = dict(stack.sql(f"SELECT floor(extract(epoch FROM ts) / 60)::int8, count(*) FROM "
                         f"sensor_readings WHERE {scope} GROUP BY 1", org, project, project))
    seen = stack.sql(f"SELECT count(DISTINCT (project_id, sensor_id)) FROM sensor_readings "
                     f"WHERE {scope}", org, project, project)[0][0]
    checks = stack.sql(f"SELECT checks FROM anomalies WHERE {scope}", org, project, project)
    orders = dict(stack.sql("SELECT status, count(*) FROM orders WHERE org_id = %s "
                            "GROUP BY status", org))
    counts = [per.get(m, 0) for m in minutes]
    return {"readings": {"last_hour": sum(counts), "counts": counts}, "sensors_seen": seen,
            "anomalies": {"total": len(checks),
                          "by_check": {c: sum(c in row[0] for row in checks) for c in CHECKS}},
            "orders": {"total": sum(orders.values()),
                       "by_status": {s: orders.get(s, 0) for s in STATUSES}}}


def comparable(doc):
    """The answer's numbers, in expected_from_pg()'s shape."""
    return {"readings": {"last_hour": doc["readings"]["last_hour"],
                         "counts": [m["count"] for m in doc["readings"]["per_minute"]]},
            "sensors_seen": doc["sensors_seen"], "anomalies": doc["anomalies"],
            "orders": doc["orders"]}


def check_shape(doc, org, project):
    assert doc["source"] in ("redis", "postgresql")
    # project_id is there only when the answer is one project's.
    assert doc["organization_id"] == org and doc.get("project_id", None) == project
    assert ("project_id" in doc) == (project is not None)
    minutes = [minute_of(m["minute"]) for m in doc["readings"]["per_minute"]]
    assert len(minutes) == 60 and minutes == list(range(minutes[0], minutes[0] + 60))
    # The newest bucket is the minute the answer was made in.
    assert minutes[-1] == minute_of(doc["generated_at"])
    return minutes


def matches_pg(stack, api, org, project, **params):
    """Polls the dashboard until it agrees with PostgreSQL (aggregates trail the rows a little,
    and answers are cached for two seconds); returns the matching answer."""
    def attempt():
        r = api.get("/dashboard/metrics", **params)
        assert r.status_code == 200, r.text
        doc = r.json()
        minutes = check_shape(doc, org, project)
        return doc if comparable(doc) == expected_from_pg(stack, org, project, minutes) else None
    return wait_until("the dashboard to match PostgreSQL", attempt, timeout=30, interval=0.5)


def test_metrics_match_postgresql(stack, tenant):
    org = org_id(stack, tenant)
    now = utcnow()
    docs = [make_reading(f"dash-{i % 3}", float(i), now - dt.timedelta(seconds=20 * i))
            for i in range(24)]
    docs.append(make_reading("dash-old", 1.0, now - dt.timedelta(hours=3)))
    post_readings(tenant, docs)

    doc = matches_pg(stack, Api(stack, tenant.token), org, tenant.project_id)
    assert doc["sensors_seen"] == 4
    assert doc["readings"]["last_hour"] == 24
    # A person sees the organization (one project here, so the same numbers) or a project.
    viewer = person(stack, tenant.org_slug, "viewer")
    assert comparable(matches_pg(stack, viewer, org, None)) == comparable(doc)
    assert comparable(matches_pg(stack, viewer, org, tenant.project_id,
                                 project_id=tenant.project_id)) == comparable(doc)


def write_aggregates(rds, org, project, now_minute):
    """Redis aggregates in the documented layout: a distinct count for every minute around now,
    three sensors seen, anomaly and order counters. Returns the per-minute counts."""
    per_minute = {m: 1 + m % 97 for m in range(now_minute - 65, now_minute + 5)}
    for m, n in per_minute.items():
        rds("SET", f"sb:rpm:{project}:{m}", n, "EX", 3600)
    rds("SADD", f"sb:sensors:{project}", "r-1", "r-2", "r-3")
    rds("HSET", f"sb:anomalies:{project}", "total", 9, "zscore", 7, "limit_high", 3)
    rds("HSET", f"sb:orders:{org}", "pending", 4, "shipped", 2, "delivered", 1)
    return per_minute


def test_metrics_read_the_redis_aggregates(stack, tenant, rds):
    org = org_id(stack, tenant)
    per_minute = write_aggregates(rds, org, tenant.project_id, int(utcnow().timestamp()) // 60)
    # One row, so that a person's scope counts the project among those with readings; the
    # numbers below are Redis's, not this row's. Written straight to PostgreSQL so that no
    # aggregator counts it on top of the keys above.
    stack.sql("INSERT INTO sensor_readings (org_id, project_id, reading_id, sensor_id, ts, value, "
              "kafka_partition, kafka_offset) VALUES (%s, %s, %s, 'r-1', now() - interval "
              "'2 hours', 1.0, 0, 0) RETURNING 1", org, tenant.project_id, str(uuid.uuid4()))

    def expected(doc):
        counts = [per_minute[minute_of(m["minute"])] for m in doc["readings"]["per_minute"]]
        return {"readings": {"last_hour": sum(counts), "counts": counts}, "sensors_seen": 3,
                "anomalies": {"total": 9, "by_check": {"zscore": 7, "limit_low": 0,
                                                       "limit_high": 3, "rate": 0}},
                "orders": {"total": 7, "by_status": {**{s: 0 for s in STATUSES}, "pending": 4,
                                                     "shipped": 2, "delivered": 1}}}

    viewer = person(stack, tenant.org_slug, "viewer")
    for api, project, params in ((Api(stack, tenant.token), tenant.project_id, {}),
                                 (viewer, None, {}),
                                 (viewer, tenant.project_id, {"project_id": tenant.project_id})):
        doc = api.ok("/dashboard/metrics", **params)
        check_shape(doc, org, project)
        assert doc["source"] == "redis", doc
        assert comparable(doc) == expected(doc)


def test_metrics_are_cached_for_two_seconds(stack, tenant, rds):
    org = org_id(stack, tenant)
    write_aggregates(rds, org, tenant.project_id, int(utcnow().timestamp()) // 60)
    key = Api(stack, tenant.token)  # one keep-alive connection: one gateway thread, one cache
    first = key.ok("/dashboard/metrics")
    assert first["source"] == "redis" and first["sensors_seen"] == 3
    rds("SADD", f"sb:sensors:{tenant.project_id}", "r-4")
    assert key.ok("/dashboard/metrics") == first  # served from the cache
    wait_until("the new sensor on the dashboard",
               lambda: key.ok("/dashboard/metrics")["sensors_seen"] == 4, timeout=10)


def test_metrics_answer_from_postgresql_while_redis_is_down(stack, tenant, rds):
    org = org_id(stack, tenant)
    now = utcnow()
    write_aggregates(rds, org, tenant.project_id, int(now.timestamp()) // 60)
    post_readings(tenant, [make_reading(f"down-{i % 2}", float(i), now - dt.timedelta(minutes=i))
                           for i in range(10)])
    for i, checks in enumerate((["zscore"], ["limit_low", "rate"], ["zscore", "limit_high"])):
        insert_anomaly(stack, org, tenant.project_id, "down-0", now - dt.timedelta(minutes=i),
                       checks)
    for status in ("pending", "pending", "accepted", "cancelled"):
        stack.sql("INSERT INTO orders (id, org_id, project_id, customer_id, sku, quantity, "
                  "shipping, status, command_id, created_at) VALUES (%s, %s, %s, 'c-1', "
                  "'SB-TEMP-100', 1, '{}', %s, %s, now()) RETURNING 1", str(uuid.uuid4()), org,
                  tenant.project_id, status, str(uuid.uuid4()))
    key = Api(stack, tenant.token)
    assert key.ok("/dashboard/metrics")["source"] == "redis"

    stack.stack("stop-component", "redis")
    try:
        doc = matches_pg(stack, key, org, tenant.project_id)
        assert doc["source"] == "postgresql"
        assert doc["orders"]["by_status"]["pending"] == 2
        assert doc["anomalies"]["by_check"] == {"zscore": 2, "limit_low": 1, "limit_high": 1,
                                                "rate": 1}
        health = key.ok("/dashboard/health")
        assert health["status"] == "degraded"
        assert health["redis"] == {"configured": True, "reachable": False}
        assert health["postgresql"] == {"reachable": True}
    finally:
        stack.stack("start-component", "redis")
    # The gateway reconnects by itself; Redis kept the keys (append-only file).
    wait_until("the dashboard back on Redis",
               lambda: key.ok("/dashboard/metrics")["source"] == "redis", timeout=30,
               interval=0.5)
    assert key.ok("/dashboard/health")["status"] == "ok"


def test_health_reports_the_pipeline_and_the_newest_reading(stack, tenant):
    key = Api(stack, tenant.token)
    doc = key.ok("/dashboard/health")
    assert doc == {"status": "ok", "organization_id": org_id(stack, tenant),
                   "project_id": tenant.project_id, "gateway": {"ready": True},
                   "kafka": {"connected": True}, "postgresql": {"reachable": True},
                   "redis": {"configured": True, "reachable": True}, "readings": None}

    newest = utcnow().replace(microsecond=250000) - dt.timedelta(seconds=30)
    post_readings(tenant, [make_reading("h-1", 1.0, newest - dt.timedelta(minutes=5)),
                           make_reading("h-2", 2.0, newest),
                           make_reading("h-1", 3.0, newest - dt.timedelta(minutes=1))])
    ingested = stack.sql("SELECT ingested_at FROM sensor_readings WHERE project_id = %s "
                         "AND sensor_id = 'h-2'", tenant.project_id)[0][0]
    readings = key.ok("/dashboard/health")["readings"]
    assert readings["last_ts"] == iso(newest)
    assert readings["last_ingested_at"] == iso(ingested)
    assert readings["ingest_delay_seconds"] == pytest.approx((ingested - newest).total_seconds())

    viewer = person(stack, tenant.org_slug, "viewer")
    doc = viewer.ok("/dashboard/health")
    assert "project_id" not in doc and doc["readings"]["last_ts"] == iso(newest)


def test_dashboard_scope_and_errors(stack, tenant):
    other = stack.new_tenant()
    key = Api(stack, tenant.token)
    admin_elsewhere = person(stack, other.org_slug, "admin")
    for path in ("/dashboard/metrics", "/dashboard/health"):
        assert_problem(Api(stack, None).get(path), 401)
        assert_problem(Api(stack, stack.new_tenant(scopes="ingest").token).get(path), 403,
                       "forbidden", "read")
        assert_problem(key.get(path, project_id=other.project_id), 404, "not-found")
        assert_problem(admin_elsewhere.get(path, project_id=tenant.project_id), 404, "not-found")
        assert_problem(key.get(path, project_id="nope"), 400, "invalid-parameter", "project_id")
        assert_problem(key.get(path, window="1h"), 400, "invalid-parameter", "window")
    # Another organization's numbers never leak into this one's.
    post_readings(tenant, [make_reading("iso-1", 1.0, utcnow())])
    doc = admin_elsewhere.ok("/dashboard/metrics")
    assert doc["readings"]["last_hour"] == 0 and doc["sensors_seen"] == 0
    assert admin_elsewhere.ok("/dashboard/health")["readings"] is None
