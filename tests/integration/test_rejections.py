"""What a device gets for bad credentials and bad data: the right status, an
application/problem+json body that says why, and nothing produced to Kafka."""

import json
import uuid

import pytest

from conftest import reading, wait_until

PROBLEM = "application/problem+json"


def assert_problem(r, status):
    assert r.status_code == status, r.text
    assert r.headers["Content-Type"].startswith(PROBLEM)
    body = r.json()
    assert body["status"] == status
    assert body["type"].startswith("https://")
    assert body["title"] and body["detail"]
    return body


@pytest.fixture
def unchanged_topic(stack):
    """Asserts that the test produced nothing to sensor.readings.v1."""
    before = stack.high_watermarks()
    yield
    assert stack.high_watermarks() == before, "a rejected request reached Kafka"


def test_missing_and_malformed_credentials(stack, tenant, unchanged_topic):
    for auth in (None, "Basic Zm9vOmJhcg==", "Bearer ", "Bearer lok_short.secret",
                 "Bearer " + tenant.token + "x"):
        h = {"Content-Type": "application/json"}
        if auth is not None:
            h["Authorization"] = auth
        r = stack.http.post(stack.url + "/sensors/data", data=json.dumps(reading()), headers=h)
        assert_problem(r, 401)
        assert r.headers.get("WWW-Authenticate", "").startswith("Bearer")


def test_wrong_secret_for_a_real_prefix(stack, tenant, unchanged_topic):
    prefix, secret = tenant.token.split(".", 1)
    forged = prefix + "." + ("A" if secret[0] != "A" else "B") + secret[1:]
    assert_problem(tenant.post(reading(), token=forged), 401)


def test_unknown_key(stack, tenant, unchanged_topic):
    assert_problem(tenant.post(reading(), token="lok_abcdefghijkl." + "x" * 43), 401)


def test_revoked_key_stops_working(stack, tenant):
    assert tenant.post(reading()).status_code == 202
    prefix = tenant.token.split(".", 1)[0][len("lok_"):]
    stack.sbctl("keys", "revoke", prefix)
    # The gateway caches keys briefly (SB_GATEWAY_KEY_CACHE_TTL_MS, 1 s in the test stack).
    wait_until("the revoked key to be refused",
               lambda: tenant.post(reading()).status_code == 401, timeout=15, interval=0.2)
    before = stack.high_watermarks()
    assert_problem(tenant.post(reading()), 401)
    assert stack.high_watermarks() == before


def test_key_without_ingest_scope_is_forbidden(stack, unchanged_topic):
    reader = stack.new_tenant(scopes="read")
    assert_problem(reader.post(reading()), 403)


def test_malformed_json(tenant, unchanged_topic):
    body = assert_problem(tenant.post(None, raw='{"sensor_id": "a", "value": 1'), 400)
    assert "json" in body["detail"].lower()
    assert_problem(tenant.post(None, raw=""), 400)


def test_oversize_body(tenant, unchanged_topic):
    big = [reading(f"s-{i}", float(i), tags={"pad": "x" * 60}) for i in range(20000)]
    assert_problem(tenant.post(big), 413)


def test_too_many_readings_in_one_request(tenant, unchanged_topic):
    r = tenant.post([reading(f"s-{i}", 1.0) for i in range(1001)])
    assert r.status_code in (413, 422), r.text
    assert_problem(r, r.status_code)


def test_contract_violations_name_each_bad_record(tenant, unchanged_topic):
    batch = [reading("ok-1", 1.0), {"sensor_id": "no-value"}, reading("ok-2", 2.0),
             reading("bad id!", 3.0), reading("ok-3", "hot"),
             reading("ok-4", 4.0, ts="2026-02-30T00:00:00Z"), reading("ok-5", 5.0, colour="red")]
    body = assert_problem(tenant.post(batch), 422)
    bad = sorted({e["index"] for e in body["errors"]})
    assert bad == [1, 3, 4, 5, 6]
    for e in body["errors"]:
        assert e["reason"] and e["pointer"].startswith(f"/{e['index']}")


def test_single_invalid_object_and_ndjson(tenant, unchanged_topic):
    assert_problem(tenant.post({"value": 1.0}), 422)
    nd = "\n".join(json.dumps(d) for d in [reading("a", 1.0), {"sensor_id": "b"}])
    body = assert_problem(tenant.post(None, raw=nd, content_type="application/x-ndjson"), 422)
    assert [e["index"] for e in body["errors"]] == [1]


def test_ndjson_is_accepted(stack, tenant):
    docs = [reading("nd", float(i), id=str(uuid.uuid4())) for i in range(3)]
    r = tenant.post(None, raw="\n".join(json.dumps(d) for d in docs) + "\n",
                    content_type="application/x-ndjson")
    assert r.status_code == 202, r.text
    assert r.json()["accepted"] == 3
    wait_until("the NDJSON readings", lambda: tenant.row_count([d["id"] for d in docs]) == 3)
