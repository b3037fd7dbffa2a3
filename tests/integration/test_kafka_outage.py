"""While Kafka is down the gateway refuses readings with 503 + Retry-After (never a 2xx for a
record Kafka does not have), and it recovers by itself when Kafka is back."""

import uuid

import requests

from conftest import reading, wait_until


def test_kafka_down_gives_503_and_nothing_is_lost_after_recovery(stack, tenant):
    stack.stack("stop-component", "kafka")
    try:
        r = tenant.post(reading("outage", 1.0, id=str(uuid.uuid4())))
        assert r.status_code == 503, r.text
        assert r.headers["Content-Type"].startswith("application/problem+json")
        assert int(r.headers["Retry-After"]) >= 1
        assert r.json()["status"] == 503
    finally:
        stack.stack("start-component", "kafka")

    wait_until("the gateway to be ready again",
               lambda: requests.get(stack.url + "/readyz", timeout=5).status_code == 200,
               timeout=60, interval=0.5)
    # A client retries with the same id until it gets a 202; the row then exists once.
    rid = str(uuid.uuid4())
    doc = reading("outage", 2.0, id=rid)
    wait_until("a 202 after Kafka came back", lambda: tenant.post(doc).status_code == 202,
               timeout=60, interval=0.5)
    wait_until("the reading in PostgreSQL", lambda: tenant.row_count([rid]) == 1, timeout=60)
    assert tenant.row_count([rid]) == 1
