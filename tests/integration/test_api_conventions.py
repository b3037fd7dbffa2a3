"""What holds on every route: X-Request-Id (accepted, generated, returned, logged, carried into
Kafka), CORS for the configured origins only, rate limits with 429 + Retry-After, and errors as
application/problem+json with a stable type and a detail."""

import concurrent.futures
import json
import pathlib
import re
import uuid

import pytest
import requests

from conftest import READINGS_TOPIC, wait_until
from sb_api import Org, assert_problem

UUID_RE = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$")


@pytest.fixture(scope="module")
def org(stack):
    return Org(stack)


# ---- X-Request-Id ---------------------------------------------------------------------------


def test_request_id_is_echoed_when_sane_and_replaced_when_not(stack, org):
    for sane in ["abc", "checkout-1234_retry.2", "A" * 64, str(uuid.uuid4())]:
        r = stack.http.get(stack.url + "/healthz", headers={"X-Request-Id": sane}, timeout=10)
        assert r.headers["X-Request-Id"] == sane
    for insane in ["has space", "A" * 65, "semi;colon", "quote\"d", "new%0Aline", "ünï",
                   "<script>", "a/b"]:
        r = stack.http.get(stack.url + "/healthz", headers={"X-Request-Id": insane.encode()},
                           timeout=10)
        assert UUID_RE.match(r.headers["X-Request-Id"]), (insane, r.headers["X-Request-Id"])
    # Absent: a fresh UUID each time.
    ids = {stack.http.get(stack.url + "/healthz", timeout=10).headers["X-Request-Id"]
           for _ in range(3)}
    assert len(ids) == 3 and all(UUID_RE.match(i) for i in ids)


def test_request_id_is_on_every_answer_and_in_the_problem(stack, org):
    answers = [
        stack.http.get(stack.url + "/openapi.json", timeout=10),
        org.get("/sensors", token=org.key),
        org.post("/sensors/data", token=org.key, json={"sensor_id": "rid", "value": 1}),
        stack.http.options(stack.url + "/sensors", timeout=10),
        org.get("/sensors"),                                      # 401
        org.get("/projects", token=org.new_key("ingest")),        # 401 (keys not accepted)
        org.get("/nowhere"),                                      # 404
        stack.http.delete(stack.url + "/healthz", timeout=10),    # 405
        org.get("/sensors", token=org.key, params={"limit": "0"}),  # 400
        org.post("/sensors/data", token=org.key, data="{", headers={
            "Content-Type": "application/json"}),                 # 400
        org.post("/sensors/data", token=org.key, json={"value": 1}),  # 422
    ]
    for r in answers:
        rid = r.headers.get("X-Request-Id")
        assert rid, f"{r.request.method} {r.url}: no X-Request-Id"
        if r.status_code >= 400:
            assert r.json()["request_id"] == rid


def test_request_id_reaches_the_gateway_log_line(stack, org):
    rid = "log-check-" + uuid.uuid4().hex
    r = org.get("/sensors", headers={"X-Request-Id": rid})  # refused: logged at info
    assert r.status_code == 401 and r.headers["X-Request-Id"] == rid
    log = pathlib.Path(stack.env["SB_RUN_DIR"]) / "logs" / "gateway.log"

    def logged():
        for line in log.read_text(errors="replace").splitlines():
            if rid in line:
                return json.loads(line)
        return None

    entry = wait_until("the request's log line", logged, timeout=10)
    assert entry["request_id"] == rid and "/sensors" in entry["msg"] and "401" in entry["msg"]


def test_request_id_is_carried_into_the_kafka_record_headers(stack, org):
    rid = "kafka-check-" + uuid.uuid4().hex
    r = org.post("/sensors/data", token=org.key, headers={"X-Request-Id": rid},
                 json=[{"sensor_id": "rid-1", "value": 1.0}, {"sensor_id": "rid-2", "value": 2.0}])
    assert r.status_code == 202 and r.json()["request_id"] == rid
    ids = set(r.json()["ids"])
    records = [m for m in stack.read_topic(READINGS_TOPIC)
               if json.loads(m.value()).get("id") in ids]
    assert len(records) == 2
    for m in records:
        headers = dict(m.headers())
        assert headers["sb-request-id"] == rid.encode()
        assert headers["sb-org-id"] == org.org_id.encode()
        assert headers["sb-project-id"] == org.project_id.encode()


# ---- CORS -----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def allowed_origin(stack):
    origins = [o.strip() for o in stack.env.get("SB_CORS_ORIGINS", "").split(",") if o.strip()]
    if not origins or "*" in origins:
        pytest.skip(f"the stack allows CORS from {origins or 'nowhere'}; scripts/test sets an "
                    "allow-list (SB_CORS_ORIGINS)")
    return origins[0]


def test_cors_allows_the_listed_origin_only(stack, org, allowed_origin):
    evil = "https://evil.example"
    r = org.get("/sensors", token=org.key, headers={"Origin": allowed_origin})
    assert r.status_code == 200
    assert r.headers["Access-Control-Allow-Origin"] == allowed_origin
    assert "X-Request-Id" in r.headers["Access-Control-Expose-Headers"]
    assert "Origin" in r.headers.get("Vary", "")
    # Errors too: a browser must be able to read a 401's problem.
    r = org.get("/sensors", headers={"Origin": allowed_origin})
    assert r.status_code == 401 and r.headers["Access-Control-Allow-Origin"] == allowed_origin

    pre = stack.http.options(stack.url + "/sensors/data", timeout=10, headers={
        "Origin": allowed_origin, "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "authorization, content-type, x-request-id"})
    assert pre.status_code == 204
    assert pre.headers["Access-Control-Allow-Origin"] == allowed_origin
    assert "POST" in pre.headers["Access-Control-Allow-Methods"]
    allowed_headers = pre.headers["Access-Control-Allow-Headers"].lower()
    for h in ("authorization", "content-type", "x-request-id", "idempotency-key"):
        assert h in allowed_headers

    for origin in [evil, allowed_origin + ".evil.example", allowed_origin.replace("https", "http"),
                   "null"]:
        r = org.get("/sensors", token=org.key, headers={"Origin": origin})
        assert r.status_code == 200 and "Access-Control-Allow-Origin" not in r.headers, origin
        pre = stack.http.options(stack.url + "/sensors/data", timeout=10, headers={
            "Origin": origin, "Access-Control-Request-Method": "POST"})
        assert "Access-Control-Allow-Origin" not in pre.headers, origin


# ---- rate limits ----------------------------------------------------------------------------


def test_a_person_over_their_bucket_gets_429_then_it_refills(stack):
    # A fresh person: their own bucket (user_rate_per_s 50, burst 100 by default).
    person = Org(stack)
    session = requests.Session()
    adapter = requests.adapters.HTTPAdapter(pool_connections=16, pool_maxsize=16)
    session.mount("http://", adapter)
    headers = {"Authorization": f"Bearer {person.access_token}"}

    def one(_):
        return session.get(stack.url + "/sensors", headers=headers, timeout=30)

    with concurrent.futures.ThreadPoolExecutor(16) as pool:
        answers = list(pool.map(one, range(400)))
    codes = [r.status_code for r in answers]
    assert codes.count(200) >= 100, codes  # the burst, at least
    limited = [r for r in answers if r.status_code == 429]
    assert limited, "400 requests as fast as possible never hit the rate limit"
    assert set(codes) <= {200, 429}, set(codes)
    for r in limited[:5]:
        doc = assert_problem(r, 429, "rate-limited")
        assert int(r.headers["Retry-After"]) >= 1, r.headers
        assert "per second" in doc["detail"]
    # Other callers are not affected...
    org_other = Org(stack)
    assert org_other.get("/sensors", token=org_other.access_token).status_code == 200
    # ...and the bucket refills: within a few Retry-Afters, requests pass again.
    wait_until("the bucket refilled", lambda: one(0).status_code == 200,
               timeout=5 * int(limited[-1].headers["Retry-After"]))


# ---- errors ---------------------------------------------------------------------------------


def test_every_error_is_problem_json_with_a_stable_type(stack, org):
    big = json.dumps([{"sensor_id": "big", "value": 1.0}] * 60000)  # > max_body_bytes (1 MiB)
    cases = [
        (org.get("/sensors"), 401, "unauthorized"),
        (org.get("/sensors", token="lok_nope"), 401, "unauthorized"),
        (org.get("/sensors", token=org.new_key("ingest")), 403, "forbidden"),
        (org.get("/nowhere"), 404, "not-found"),
        (org.get("/sensors/nope-" + uuid.uuid4().hex[:6], token=org.key), 404, "not-found"),
        (org.request("PATCH", "/sensors"), 405, "method-not-allowed"),
        (org.get("/sensors", token=org.key, params={"limit": "many"}), 400, "invalid-parameter"),
        (org.get("/sensors/data", token=org.key, params={"cursor": "!!"}), 400, "invalid-cursor"),
        (org.post("/sensors/data", token=org.key, data="{", headers={
            "Content-Type": "application/json"}), 400, "malformed-json"),
        (org.post("/sensors/data", token=org.key, data="x", headers={
            "Content-Type": "text/plain"}), 415, "unsupported-media-type"),
        (org.post("/sensors/data", token=org.key, json={"value": 1}), 422, "invalid-reading"),
        (org.post("/projects", token=org.access_token, json={"slug": "Not A Slug"}), 422,
         "invalid-fields"),
        (org.post("/sensors/data", token=org.key, data=big, headers={
            "Content-Type": "application/json"}), 413, "body-too-large"),
        (org.post("/auth/register", json={"email": org.email, "password": "x" * 20, "name": "N",
                                          "organization": "o" + uuid.uuid4().hex[:8]}), 409,
         "conflict"),
    ]
    titles = {}
    for r, status, slug in cases:
        doc = assert_problem(r, status, slug)
        assert len(doc["detail"]) > 10
        # One slug, one title: clients may show it.
        assert titles.setdefault(slug, doc["title"]) == doc["title"]
    # The same error twice is the same problem but for the request id.
    a, b = (org.get("/sensors").json() for _ in range(2))
    assert a.pop("request_id") != b.pop("request_id") and a == b
