"""The read API and the sensor registry against the real stack: POST/GET /sensors,
GET /sensors/{id}, /sensors/data, /sensors/stats, /sensors/anomalies and /sensors/anomalies/count.

Readings go the real way (gateway -> Kafka -> sensor-ingest -> PostgreSQL); anomaly rows are
written straight into the `anomalies` table (the endpoints read the table, whoever fills it).
Every expected value is computed here from what the test posted.
"""

import base64
import datetime as dt
import json
import statistics
import uuid

import pytest
import requests

from conftest import reading, wait_until

PASSWORD = "sensors api password " + uuid.uuid4().hex


def iso(t):
    return t.astimezone(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def utcnow():
    return dt.datetime.now(dt.timezone.utc)


class Api:
    """Calls the gateway as one principal (an API key or a person's access token)."""

    def __init__(self, stack, token):
        self.stack = stack
        self.token = token

    def headers(self):
        return {"Authorization": f"Bearer {self.token}"} if self.token else {}

    def get(self, path, **params):
        return self.stack.http.get(self.stack.url + path, params=params, headers=self.headers(),
                                   timeout=30)

    def post(self, path, body, **params):
        return self.stack.http.post(self.stack.url + path, json=body, params=params,
                                    headers=self.headers(), timeout=30)

    def ok(self, path, **params):
        r = self.get(path, **params)
        assert r.status_code == 200, r.text
        return r.json()

    def walk(self, path, **params):
        """Every item of a paginated list, page by page, and the number of pages."""
        items, pages, cursor = [], 0, None
        while True:
            doc = self.ok(path, **params, **({"cursor": cursor} if cursor else {}))
            pages += 1
            assert len(doc["items"]) <= int(params.get("limit", 100))
            items += doc["items"]
            cursor = doc["next_cursor"]
            if cursor is None:
                return items, pages
            assert doc["items"], "a page with a next_cursor must not be empty"
            assert pages < 10_000


def person(stack, org_slug=None, role="admin"):
    """A person's access token. Registering makes a new organization with them as its admin; with
    @org_slug they are also made a member of that organization with @role and sign in there."""
    email = f"p-{uuid.uuid4().hex[:12]}@example.com"
    own = "o" + uuid.uuid4().hex[:12]
    r = stack.http.post(stack.url + "/auth/register", timeout=30,
                        json={"email": email, "password": PASSWORD, "name": "Pat",
                              "organization": own})
    assert r.status_code == 201, r.text
    if org_slug:
        stack.sql("INSERT INTO memberships (user_id, org_id, role) SELECT %s, id, %s "
                  "FROM organizations WHERE slug = %s RETURNING 1", r.json()["user"]["id"], role, org_slug)
    r = stack.http.post(stack.url + "/auth/token", timeout=30,
                        json={"email": email, "password": PASSWORD,
                              "organization": org_slug or own})
    assert r.status_code == 200, r.text
    return Api(stack, r.json()["access_token"])


def add_project(stack, tenant, slug):
    return stack.sbctl("projects", "create", tenant.org_slug, slug).stdout.strip()


def org_id(stack, tenant):
    return stack.sql("SELECT id::text FROM organizations WHERE slug = %s", tenant.org_slug)[0][0]


def post_readings(tenant, docs):
    """Posts @docs (each with an id) and waits until every one is in PostgreSQL."""
    for i in range(0, len(docs), 1000):
        r = tenant.post(docs[i:i + 1000])
        assert r.status_code == 202, r.text
    ids = [d["id"] for d in docs]
    wait_until(f"{len(ids)} readings in PostgreSQL", lambda: tenant.row_count(ids) == len(ids))


def make_reading(sensor, value, ts, **extra):
    return reading(sensor, value, id=str(uuid.uuid4()), ts=iso(ts), **extra)


def insert_anomaly(stack, org, project, sensor, ts, checks, value=99.0):
    rid = str(uuid.uuid4())
    stack.sql("INSERT INTO anomalies (org_id, project_id, reading_id, sensor_id, ts, value, "
              "checks, z, mean, stddev, detected_at) VALUES (%s, %s, %s, %s, %s, %s, %s, 5.5, "
              "20.0, 1.5, now()) RETURNING 1", org, project, rid, sensor, ts, value, checks)
    return rid


def assert_problem(r, status, slug=None, mentions=None):
    assert r.status_code == status, r.text
    assert r.headers["Content-Type"] == "application/problem+json"
    doc = r.json()
    assert doc["status"] == status
    if slug:
        assert doc["type"] == "https://sensorbus.dev/problems/" + slug, doc
    if mentions:
        assert mentions in doc["detail"], doc
    return doc


def reading_order(docs):
    """The order /sensors/data lists readings in: newest first, ties broken by id (descending)."""
    return sorted(docs, key=lambda d: (d["ts"], d["id"]), reverse=True)


# ---- the sensor registry ---------------------------------------------------------------------

def test_register_then_get_and_list_a_sensor(stack, tenant):
    key = Api(stack, tenant.token)
    body = {"id": "boiler:7", "type": "temperature", "unit": "degC", "min_value": -20.5,
            "max_value": 120, "name": "Boiler room"}
    r = key.post("/sensors", body)
    assert r.status_code == 201, r.text
    created = r.json()
    assert {k: created[k] for k in body} == {**body, "max_value": 120.0}
    assert created["project_id"] == tenant.project_id
    assert created["created_at"] == created["updated_at"]
    assert r.headers["Location"] == f"/sensors/boiler:7?project_id={tenant.project_id}"
    assert stack.sql("SELECT type, unit, min_value, max_value, name FROM sensors "
                     "WHERE project_id = %s AND id = 'boiler:7'", tenant.project_id) == \
        [("temperature", "degC", -20.5, 120.0, "Boiler room")]

    assert key.ok("/sensors/boiler:7") == created
    assert key.ok("/sensors/boiler%3A7") == created  # ':' percent-encoded by some clients
    assert key.ok("/sensors") == {"items": [created], "next_cursor": None}

    # Registering is not an upsert: the same id again is a conflict and changes nothing.
    again = key.post("/sensors", {"id": "boiler:7", "type": "humidity"})
    assert_problem(again, 409, "conflict", "boiler:7")
    assert key.ok("/sensors/boiler:7") == created

    # Only id and type are required; the rest default to null (and name to "").
    r = key.post("/sensors", {"id": "bare", "type": "co2"})
    assert r.status_code == 201, r.text
    assert {k: r.json()[k] for k in ("unit", "min_value", "max_value", "name")} == \
        {"unit": None, "min_value": None, "max_value": None, "name": ""}


def test_register_rejects_bad_fields_naming_each(stack, tenant):
    key = Api(stack, tenant.token)
    r = key.post("/sensors", {"id": "-starts-with-dash", "type": "Upper", "unit": "",
                              "min_value": 5, "max_value": 5, "colour": "red", "name": 7})
    doc = assert_problem(r, 422, "invalid-fields")
    pointers = {e["pointer"] for e in doc["errors"]}
    assert pointers == {"/id", "/type", "/unit", "/max_value", "/colour", "/name"}
    doc = assert_problem(key.post("/sensors", {}), 422, "invalid-fields")
    assert {e["pointer"] for e in doc["errors"]} == {"/id", "/type"}
    doc = assert_problem(key.post("/sensors", {"id": "x" * 65, "type": "t", "min_value": "1"}),
                         422, "invalid-fields")
    assert {e["pointer"] for e in doc["errors"]} == {"/id", "/min_value"}
    assert stack.sql("SELECT count(*) FROM sensors WHERE project_id = %s",
                     tenant.project_id) == [(0,)]


def test_who_may_register_sensors(stack, tenant):
    other = stack.new_tenant()
    read_only = stack.new_tenant(scopes="read")
    assert_problem(Api(stack, read_only.token).post("/sensors", {"id": "s", "type": "t"}), 403,
                   "forbidden", "ingest")
    assert_problem(Api(stack, None).post("/sensors", {"id": "s", "type": "t"}), 401)

    viewer = person(stack, tenant.org_slug, "viewer")
    assert_problem(viewer.post("/sensors", {"id": "s", "type": "t",
                                            "project_id": tenant.project_id}), 403, "forbidden")

    operator = person(stack, tenant.org_slug, "operator")
    doc = assert_problem(operator.post("/sensors", {"id": "s", "type": "t"}), 422)
    assert doc["errors"][0]["pointer"] == "/project_id"
    r = operator.post("/sensors", {"id": "by-query", "type": "t"}, project_id=tenant.project_id)
    assert r.status_code == 201 and r.json()["project_id"] == tenant.project_id, r.text
    r = operator.post("/sensors", {"id": "by-body", "type": "t", "project_id": tenant.project_id})
    assert r.status_code == 201 and r.json()["project_id"] == tenant.project_id, r.text
    # Another organization's project does not exist for this person.
    assert_problem(operator.post("/sensors", {"id": "s", "type": "t",
                                              "project_id": other.project_id}), 404, "not-found")
    # An API key registers in its own project only.
    key = Api(stack, tenant.token)
    assert_problem(key.post("/sensors", {"id": "s", "type": "t"}, project_id=other.project_id),
                   404, "not-found")
    doc = assert_problem(key.post("/sensors", {"id": "s", "type": "t",
                                               "project_id": other.project_id}), 422)
    assert doc["errors"][0]["pointer"] == "/project_id"
    assert stack.sql("SELECT count(*) FROM sensors WHERE project_id = %s",
                     other.project_id) == [(0,)]


def test_sensor_list_filters_and_pages(stack, tenant):
    key = Api(stack, tenant.token)
    p2 = add_project(stack, tenant, "p2")
    admin = person(stack, tenant.org_slug, "admin")
    ids = [f"s{i:02d}" for i in range(7)]
    for i, sid in enumerate(ids):
        assert key.post("/sensors", {"id": sid, "type": "temp" if i % 2 else "co2"}).status_code \
            == 201
    for sid in ("a", "b", "c"):
        r = admin.post("/sensors", {"id": sid, "type": "temp"}, project_id=p2)
        assert r.status_code == 201, r.text

    items, pages = key.walk("/sensors", limit=3)
    assert [s["id"] for s in items] == ids and pages == 3
    assert [s["id"] for s in key.ok("/sensors", type="temp")["items"]] == ids[1::2]

    # A person sees the whole organization, ordered by project then id, unless they name one.
    expected = sorted([(tenant.project_id, s) for s in ids] + [(p2, s) for s in "abc"])
    items, pages = admin.walk("/sensors", limit=4)
    assert [(s["project_id"], s["id"]) for s in items] == expected and pages == 3
    assert [s["id"] for s in admin.ok("/sensors", project_id=p2)["items"]] == ["a", "b", "c"]
    assert [(s["project_id"], s["id"]) for s in admin.ok("/sensors", type="temp")["items"]] == \
        sorted([(tenant.project_id, s) for s in ids[1::2]] + [(p2, s) for s in "abc"])


def test_get_sensor_needs_the_project_when_an_id_is_in_two(stack, tenant):
    p2 = add_project(stack, tenant, "p2")
    admin = person(stack, tenant.org_slug, "admin")
    for project, kind in ((tenant.project_id, "temp"), (p2, "co2")):
        assert admin.post("/sensors", {"id": "dup", "type": kind},
                          project_id=project).status_code == 201
    assert admin.post("/sensors", {"id": "only-p2", "type": "t"}, project_id=p2).status_code == 201

    assert_problem(admin.get("/sensors/dup"), 400, "invalid-parameter", "project_id")
    assert admin.ok("/sensors/dup", project_id=p2)["type"] == "co2"
    assert admin.ok("/sensors/dup", project_id=tenant.project_id)["type"] == "temp"
    assert admin.ok("/sensors/only-p2")["project_id"] == p2
    assert_problem(admin.get("/sensors/only-p2", project_id=tenant.project_id), 404, "not-found")
    assert_problem(admin.get("/sensors/nope"), 404, "not-found")
    # The key sees its own project's sensor, never the other.
    key = Api(stack, tenant.token)
    assert key.ok("/sensors/dup")["type"] == "temp"
    assert_problem(key.get("/sensors/only-p2"), 404, "not-found")


# ---- readings ----------------------------------------------------------------------------------

def test_readings_pagination_returns_each_reading_once_in_order(stack, tenant):
    key = Api(stack, tenant.token)
    base = utcnow().replace(microsecond=0) - dt.timedelta(minutes=30)
    # Triples share a timestamp, so that pages also break ties on the reading id.
    docs = [make_reading("pg-1", 20 + (i % 7) / 10, base + dt.timedelta(seconds=i // 3),
                         unit="degC", tags={"i": str(i)}) for i in range(230)]
    others = [make_reading("pg-2", 5.0, base + dt.timedelta(seconds=i, milliseconds=500))
              for i in range(20)]
    post_readings(tenant, docs + others)

    items, pages = key.walk("/sensors/data", sensor_id="pg-1", limit=7)
    expected = reading_order(docs)
    assert [i["id"] for i in items] == [d["id"] for d in expected]
    assert pages == 33  # 230 / 7, rounded up
    first = items[0]
    assert first == {"id": expected[0]["id"], "project_id": tenant.project_id,
                     "sensor_id": "pg-1", "ts": expected[0]["ts"], "value": expected[0]["value"],
                     "unit": "degC", "tags": expected[0]["tags"]}

    # Without a sensor filter, every reading of the project, each once.
    items, _ = key.walk("/sensors/data", limit=100)
    assert [i["id"] for i in items] == [d["id"] for d in reading_order(docs + others)]

    # [from, to): from inclusive, to exclusive.
    lo, hi = base + dt.timedelta(seconds=10), base + dt.timedelta(seconds=20)
    window = [d for d in docs if iso(lo) <= d["ts"] < iso(hi)]
    assert len(window) == 30
    items, _ = key.walk("/sensors/data", sensor_id="pg-1", limit=1000, **{"from": iso(lo)},
                        to=iso(hi))
    assert [i["id"] for i in items] == [d["id"] for d in reading_order(window)]

    # A person names the project or reads the organization's readings.
    admin = person(stack, tenant.org_slug, "viewer")
    items, _ = admin.walk("/sensors/data", sensor_id="pg-2", project_id=tenant.project_id)
    assert [i["id"] for i in items] == [d["id"] for d in reading_order(others)]
    items, _ = admin.walk("/sensors/data", sensor_id="pg-2")
    assert [i["id"] for i in items] == [d["id"] for d in reading_order(others)]


def test_stats_per_sensor_over_a_window(stack, tenant):
    key = Api(stack, tenant.token)
    now = utcnow()
    values = {"st-a": [3.5, -1.25, 10.0, 7.75], "st-b": [100.0], "st-c": [0.1, 0.2, 0.3]}
    docs = []
    for sensor, vals in values.items():
        for i, v in enumerate(vals):
            docs.append(make_reading(sensor, v, now - dt.timedelta(minutes=50 - i)))
    old = make_reading("st-a", 1000.0, now - dt.timedelta(hours=2))
    post_readings(tenant, docs + [old])

    def expected(sensor, vals, last_ts):
        return {"sensor_id": sensor, "project_id": tenant.project_id, "count": len(vals),
                "min": min(vals), "max": max(vals), "avg": pytest.approx(statistics.fmean(vals),
                                                                        rel=1e-12),
                "last": {"value": vals[-1], "ts": last_ts}}

    last_ts = {s: max(d["ts"] for d in docs if d["sensor_id"] == s) for s in values}
    doc = key.ok("/sensors/stats")
    assert doc["next_cursor"] is None
    assert doc["items"] == [expected(s, v, last_ts[s]) for s, v in values.items()]
    # The default window is the hour before now.
    frm, to = (dt.datetime.fromisoformat(doc[k].replace("Z", "+00:00")) for k in ("from", "to"))
    assert to - frm == dt.timedelta(hours=1) and abs((to - utcnow()).total_seconds()) < 60

    assert key.ok("/sensors/stats", sensor_id="st-b")["items"] == \
        [expected("st-b", values["st-b"], last_ts["st-b"])]
    # A window that reaches the old reading counts it (it is not the last one: older).
    doc = key.ok("/sensors/stats", sensor_id="st-a", **{"from": iso(now - dt.timedelta(hours=3))})
    assert doc["items"] == [{**expected("st-a", [1000.0] + values["st-a"], last_ts["st-a"]),
                             "last": {"value": values["st-a"][-1], "ts": last_ts["st-a"]}}]
    # Pages of one sensor each.
    items, pages = key.walk("/sensors/stats", limit=1)
    assert [i["sensor_id"] for i in items] == list(values) and pages == 3
    # An empty window.
    assert key.ok("/sensors/stats", to=iso(now - dt.timedelta(hours=5)))["items"] == []


# ---- anomalies -----------------------------------------------------------------------------------

def test_anomalies_count_and_list(stack, tenant):
    key = Api(stack, tenant.token)
    org = org_id(stack, tenant)
    now = utcnow().replace(microsecond=0)
    plan = [("an-1", ["zscore"]), ("an-1", ["limit_high"]), ("an-1", ["zscore", "rate"]),
            ("an-2", ["limit_low"]), ("an-2", ["zscore"]), ("an-2", ["limit_high", "zscore"])]
    rows = []
    for i, (sensor, checks) in enumerate(plan * 2):
        ts = now - dt.timedelta(minutes=40, seconds=-i)
        rows.append({"reading_id": insert_anomaly(stack, org, tenant.project_id, sensor, ts, checks),
                     "sensor_id": sensor, "ts": iso(ts), "checks": checks})
    old_ts = now - dt.timedelta(hours=3)
    rows.append({"reading_id": insert_anomaly(stack, org, tenant.project_id, "an-1", old_ts,
                                              ["rate"]),
                 "sensor_id": "an-1", "ts": iso(old_ts), "checks": ["rate"]})
    recent = rows[:-1]

    def counts(subset):
        return {"total": len(subset),
                "by_check": {c: sum(c in r["checks"] for r in subset)
                             for c in ("zscore", "limit_low", "limit_high", "rate")}}

    doc = key.ok("/sensors/anomalies/count")
    assert {k: doc[k] for k in ("total", "by_check")} == counts(recent)
    assert doc["by_check"] == {"zscore": 8, "limit_low": 2, "limit_high": 4, "rate": 2}
    doc = key.ok("/sensors/anomalies/count", sensor_id="an-2")
    assert {k: doc[k] for k in ("total", "by_check")} == \
        counts([r for r in recent if r["sensor_id"] == "an-2"])
    doc = key.ok("/sensors/anomalies/count", **{"from": iso(now - dt.timedelta(hours=4))})
    assert {k: doc[k] for k in ("total", "by_check")} == counts(rows)

    order = sorted(rows, key=lambda r: (r["ts"], r["reading_id"]), reverse=True)
    items, pages = key.walk("/sensors/anomalies", limit=5)
    assert [i["reading_id"] for i in items] == [r["reading_id"] for r in order] and pages == 3
    assert items[0] == {"reading_id": order[0]["reading_id"], "project_id": tenant.project_id,
                        "sensor_id": order[0]["sensor_id"], "ts": order[0]["ts"], "value": 99.0,
                        "checks": order[0]["checks"], "z": 5.5, "mean": 20.0, "stddev": 1.5,
                        "detected_at": items[0]["detected_at"]}
    items, _ = key.walk("/sensors/anomalies", check="zscore", sensor_id="an-1", limit=2)
    assert [i["reading_id"] for i in items] == \
        [r["reading_id"] for r in order if r["sensor_id"] == "an-1" and "zscore" in r["checks"]]
    items, _ = key.walk("/sensors/anomalies", to=iso(now - dt.timedelta(hours=1)))
    assert [i["reading_id"] for i in items] == [rows[-1]["reading_id"]]


# ---- errors and isolation --------------------------------------------------------------------------

def cursor_of(value):
    return base64.urlsafe_b64encode(json.dumps(value).encode()).rstrip(b"=").decode()


BAD_PARAMETERS = [
    ("/sensors/data", {"limit": "0"}, "limit"),
    ("/sensors/data", {"limit": "1001"}, "limit"),
    ("/sensors/data", {"limit": "ten"}, "limit"),
    ("/sensors/data", {"from": "yesterday"}, "from"),
    ("/sensors/data", {"to": "2026-13-01T00:00:00Z"}, "to"),
    ("/sensors/data", {"from": "2026-01-02T00:00:00Z", "to": "2026-01-01T00:00:00Z"}, "from"),
    ("/sensors/data", {"sensor_id": "has space"}, "sensor_id"),
    ("/sensors/data", {"project_id": "not-a-uuid"}, "project_id"),
    ("/sensors/data", {"cursor": "%%%"}, "cursor"),
    ("/sensors/data", {"cursor": cursor_of(["2026-01-01T00:00:00Z"])}, "cursor"),
    ("/sensors/data", {"cursor": cursor_of(["yesterday", str(uuid.uuid4())])}, "cursor"),
    ("/sensors/data", {"sensorid": "x"}, "sensorid"),
    ("/sensors", {"type": "Not Valid"}, "type"),
    ("/sensors", {"cursor": cursor_of([1, 2])}, "cursor"),
    ("/sensors", {"limit": "-1"}, "limit"),
    ("/sensors/stats", {"sensor_id": "-bad"}, "sensor_id"),
    ("/sensors/stats", {"to": "2026-01-01"}, "to"),
    ("/sensors/stats", {"window": "1h"}, "window"),
    ("/sensors/anomalies", {"check": "bogus"}, "check"),
    ("/sensors/anomalies", {"limit": "100000"}, "limit"),
    ("/sensors/anomalies/count", {"from": "2099-01-01T00:00:00Z",
                                  "to": "2098-01-01T00:00:00Z"}, "from"),
    ("/sensors/anomalies/count", {"limit": "5"}, "limit"),
    ("/sensors/s-1", {"project_id": "x"}, "project_id"),
]


@pytest.mark.parametrize("path,params,name", BAD_PARAMETERS)
def test_bad_parameters_are_400_naming_the_parameter(stack, tenant, path, params, name):
    doc = assert_problem(Api(stack, tenant.token).get(path, **params), 400)
    assert doc["type"] in ("https://sensorbus.dev/problems/invalid-parameter",
                           "https://sensorbus.dev/problems/invalid-cursor")
    assert name in doc["detail"], doc


def test_reads_need_a_read_credential(stack, tenant):
    ingest_only = Api(stack, stack.new_tenant(scopes="ingest").token)
    for path in ("/sensors", "/sensors/x", "/sensors/data", "/sensors/stats",
                 "/sensors/anomalies", "/sensors/anomalies/count"):
        assert_problem(Api(stack, None).get(path), 401)
        assert_problem(ingest_only.get(path), 403, "forbidden", "read")


def test_an_organization_cannot_read_another_ones_sensors(stack, tenant):
    now = utcnow()
    mine = Api(stack, tenant.token)
    assert mine.post("/sensors", {"id": "secret-1", "type": "t"}).status_code == 201
    post_readings(tenant, [make_reading("secret-1", 42.0, now - dt.timedelta(minutes=5))])
    insert_anomaly(stack, org_id(stack, tenant), tenant.project_id, "secret-1", now, ["zscore"])
    assert mine.ok("/sensors/anomalies/count")["total"] == 1

    other = stack.new_tenant()
    theirs_key = Api(stack, other.token)
    theirs_admin = person(stack, other.org_slug, "admin")
    for api in (theirs_key, theirs_admin):
        assert_problem(api.get("/sensors/secret-1"), 404, "not-found")
        assert api.ok("/sensors")["items"] == []
        assert api.ok("/sensors/data", sensor_id="secret-1")["items"] == []
        assert api.ok("/sensors/data")["items"] == []
        assert api.ok("/sensors/stats")["items"] == []
        assert api.ok("/sensors/anomalies")["items"] == []
        assert api.ok("/sensors/anomalies/count")["total"] == 0
        # Naming the other organization's project is a 404, never its data.
        for path in ("/sensors", "/sensors/secret-1", "/sensors/data", "/sensors/stats",
                     "/sensors/anomalies", "/sensors/anomalies/count"):
            assert_problem(api.get(path, project_id=tenant.project_id), 404, "not-found")
