"""Faults on the real stack while readings and orders flow through the gateway.

While clients post readings and orders continuously (retrying, with the same ids or
Idempotency-Key, until the gateway acknowledges) and a person polls the dashboard:
  - each consumer daemon is killed with SIGKILL and started again;
  - PostgreSQL, the S3 server and Redis are each stopped for 30 s and started again;
  - Kafka is restarted.
Afterwards, counting ids end to end (no sampling):
  - every acknowledged reading is in PostgreSQL exactly once, and nothing else is;
  - `sbctl archive verify` finds no gap, and every acknowledged reading is in the archive;
  - every acknowledged order is in `orders` once, in the state its rules decide, and that state
    is the last of its events, whose sequence numbers run 1..n without a gap or a repeat;
  - the dashboard answered every poll (from PostgreSQL while Redis was down).
"""

import datetime as dt
import json
import pathlib
import threading
import time
import uuid

import requests

from conftest import wait_until
from test_s3_archiver import S3, archived_readings, caught_up

OUTAGE_S = 30
DAEMONS = ("sensor-ingest", "anomaly-detector", "order-processor", "s3-archiver")
LIMIT = 100  # order-rules max quantity for SB-TEMP-100


class Load:
    """Client threads: readings, orders and dashboard polls, each recording what was acked."""

    def __init__(self, stack, token, person):
        self.stack = stack
        self.token = token
        self.person = person
        self.stop = threading.Event()
        self.lock = threading.Lock()
        self.readings = []  # acknowledged reading ids
        self.orders = {}  # acknowledged order id -> expected status
        self.polls = []  # (monotonic time, path, status, source)
        self.errors = []
        self.threads = [threading.Thread(target=f, daemon=True)
                        for f in (self.post_readings, self.post_orders, self.poll_dashboard)]

    def start(self):
        for t in self.threads:
            t.start()

    def finish(self):
        self.stop.set()
        for t in self.threads:
            t.join(timeout=300)
            assert not t.is_alive(), "a client thread did not finish"
        assert not self.errors, self.errors[:5]

    def acked_readings(self):
        with self.lock:
            return len(self.readings)

    def _retry(self, what, send):
        """Sends until the gateway acknowledges (the same body each time); returns the answer."""
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline:
            try:
                r = send()
                if r.status_code in (200, 201, 202):
                    return r
                if r.status_code not in (429, 502, 503, 504):
                    self.errors.append(f"{what}: {r.status_code} {r.text[:200]}")
                    return None
            except requests.RequestException:
                pass  # the gateway or Kafka is restarting: retry
            time.sleep(0.2)
        self.errors.append(f"{what}: not acknowledged within 240 s")
        return None

    def post_readings(self):
        http = requests.Session()
        n = 0
        while not self.stop.is_set():
            # Like a device: each reading carries its id and its time, so that a retry after a
            # 503 (whose records Kafka may have taken after all) is the same reading again.
            now = dt.datetime.now(dt.timezone.utc)
            batch = [{"id": str(uuid.uuid4()), "sensor_id": f"f-{(n + i) % 16}",
                      "ts": (now + dt.timedelta(microseconds=i)).isoformat(),
                      "value": 20.0 + ((n + i) % 7)} for i in range(25)]
            n += len(batch)
            r = self._retry("readings", lambda: http.post(
                self.stack.url + "/sensors/data", json=batch, timeout=10,
                headers={"Authorization": f"Bearer {self.token}"}))
            if r is None:
                return
            with self.lock:
                self.readings.extend(d["id"] for d in batch)
            time.sleep(0.01)  # a fleet's steady flow, not a flood: about 1,000 readings/s

    def post_orders(self):
        http = requests.Session()
        i = 0
        while not self.stop.is_set():
            i += 1
            if i % 7 == 0:
                body, expect = self.order("SB-NOPE-1", 1), "rejected"
            elif i % 5 == 0:
                body, expect = self.order("SB-TEMP-100", LIMIT + 1), "pending_approval"
            else:
                body, expect = self.order("SB-TEMP-100", 1 + i % LIMIT), "accepted"
            key = str(uuid.uuid4())
            r = self._retry("orders", lambda: http.post(
                self.stack.url + "/orders", json=body, timeout=10,
                headers={"Authorization": f"Bearer {self.token}", "Idempotency-Key": key}))
            if r is None:
                return
            with self.lock:
                self.orders[r.json()["order_id"]] = expect
            time.sleep(0.05)  # pacing: orders are a trickle next to readings

    @staticmethod
    def order(sku, quantity):
        return {"customer_id": "c-faults", "sku": sku, "quantity": quantity,
                "shipping": {"name": "Dock 4", "line1": "1 Harbour Road", "city": "Bergen",
                             "postal_code": "5003", "country": "NO"}}

    def poll_dashboard(self):
        http = requests.Session()
        while not self.stop.is_set():
            for path in ("/dashboard/metrics", "/dashboard/health"):
                try:
                    r = http.get(self.stack.url + path, timeout=10,
                                 headers=self.person.headers())
                    source = r.json().get("source") if r.status_code == 200 else None
                    status = r.status_code
                except requests.RequestException as e:
                    status, source = f"error: {e.__class__.__name__}", None
                with self.lock:
                    self.polls.append((time.monotonic(), path, status, source))
            time.sleep(0.25)


def wait_for_progress(load, more=200, timeout=120):
    """Waits until `more` further readings were acknowledged: the system is flowing again."""
    start = load.acked_readings()
    wait_until(f"{more} more acknowledged readings",
               lambda: load.acked_readings() >= start + more, timeout=timeout)


def outage(stack, load, component):
    """Stops a component for OUTAGE_S seconds under load, then starts it again. Returns the
    (start, end) monotonic times of the outage."""
    stack.stack("stop-component", component)
    began = time.monotonic()
    # The outage itself is the point: clients keep posting against the degraded stack.
    load.stop.wait(OUTAGE_S)
    ended = time.monotonic()
    stack.stack("start-component", component)
    return began, ended


def archived_ids(stack, project_id):
    """reading id -> times archived, for the project: every object read back through the S3
    API with SigV4 (test_s3_archiver's client, which also checks each object's metadata)."""
    return archived_readings(S3(stack.env), project_id)


def test_nothing_acknowledged_is_lost_under_faults(stack):
    person = stack.new_person()
    slug = "faults"
    project_id = person.new_project(slug)
    token = stack.sbctl("keys", "create", "--org", person.org_slug, "--project", slug, "--name",
                        "faults", "--scopes", "ingest,orders,read").stdout.strip()
    stack.sbctl("customers", "create", "--org", person.org_slug, "c-faults", "--name", "Faults")
    stack.sbctl("order-rules", "set", "--org", person.org_slug, "--sku", "SB-TEMP-100",
                "--max-quantity", str(LIMIT))

    load = Load(stack, token, person)
    load.start()
    windows = {}
    try:
        wait_for_progress(load)
        for daemon in DAEMONS:
            stack.stack("kill", daemon)
            wait_for_progress(load, more=100)
            stack.stack("start-daemon", daemon)
            wait_for_progress(load)
        for component in ("pg", "s3", "redis"):
            windows[component] = outage(stack, load, component)
            wait_for_progress(load)
        stack.stack("stop-component", "kafka")
        stack.stack("start-component", "kafka")
        wait_for_progress(load)
    finally:
        load.finish()

    acked = load.readings
    assert len(acked) == len(set(acked)) and len(acked) > 1000, len(acked)

    # Every acknowledged reading in PostgreSQL exactly once, and nothing else.
    def rows():
        return stack.sql("SELECT count(*), count(DISTINCT reading_id) FROM sensor_readings "
                         "WHERE project_id = %s", project_id)[0]
    wait_until("every acknowledged reading in PostgreSQL", lambda: rows()[1] >= len(acked),
               timeout=240)
    total, distinct = rows()
    missing = stack.sql("SELECT count(*) FROM unnest(%s::uuid[]) a(id) WHERE NOT EXISTS ("
                        "SELECT 1 FROM sensor_readings s WHERE s.project_id = %s "
                        "AND s.reading_id = a.id)", acked, project_id)[0][0]
    assert missing == 0, f"{missing} acknowledged readings are not in PostgreSQL"
    assert total == distinct == len(acked), (total, distinct, len(acked))

    # The archive: no gap, and every acknowledged reading in it.
    # Caught up: every record Kafka has is archived and committed, and the verifier (exit 0)
    # finds no gap, on both archived topics.
    for topic in ("sensor.readings.v1", "orders.events.v1"):
        wait_until(f"the archive to cover all of {topic} with no gap",
                   lambda: caught_up(stack, topic), timeout=300, interval=2)
    archived = archived_ids(stack, project_id)
    lost = set(acked) - set(archived)
    assert not lost, f"{len(lost)} acknowledged readings are not in the archive"
    # The archive is the topic's records, each offset once (the verifier checks overlaps). A
    # reading id can be in two records: a POST answered 503 whose records Kafka took after all,
    # then retried. PostgreSQL (above) stores it once; so do consumers that dedupe by id.
    retried = sum(1 for n in archived.values() if n > 1)

    # Orders: each once, in the state the rules give, matching its last event.
    expected = load.orders
    assert len(expected) > 20, len(expected)

    def settled():
        return stack.sql("SELECT count(*) FROM orders WHERE id = ANY(%s::uuid[]) "
                         "AND status <> 'pending'", list(expected))[0][0]
    wait_until("every order processed", lambda: settled() == len(expected), timeout=240)
    got = dict(stack.sql("SELECT id::text, status FROM orders WHERE id = ANY(%s::uuid[])",
                         list(expected)))
    wrong = {k: (v, got.get(k)) for k, v in expected.items() if got.get(k) != v}
    assert not wrong, f"{len(wrong)} orders in an unexpected state, e.g. {list(wrong.items())[:3]}"
    events = stack.sql(
        "SELECT order_id::text, array_agg(seq ORDER BY seq), "
        "(array_agg(to_status ORDER BY seq DESC))[1] FROM order_events "
        "WHERE order_id = ANY(%s::uuid[]) GROUP BY order_id", list(expected))
    assert len(events) == len(expected)
    for order_id, seqs, last in events:
        assert seqs == list(range(1, len(seqs) + 1)), (order_id, seqs)
        assert last == got[order_id], (order_id, last, got[order_id])

    # The dashboard answered every poll; from PostgreSQL while Redis was down.
    failed = [p for p in load.polls if p[2] != 200]
    assert not failed, f"{len(failed)} dashboard polls failed, e.g. {failed[:3]}"
    began, ended = windows["redis"]
    during = [p for p in load.polls
              if p[1] == "/dashboard/metrics" and began + 2 < p[0] < ended - 1]
    assert during and all(p[3] == "postgresql" for p in during), during[:3]

    # What was counted, for the record (the closing note quotes it).
    summary = {"readings_acknowledged": len(acked), "readings_in_postgresql": total,
               "readings_archived": len(archived),
               "reading_ids_in_two_records_after_a_503_retry": retried,
               "orders_acknowledged": len(expected),
               "orders_by_status": {s: list(expected.values()).count(s)
                                    for s in sorted(set(expected.values()))},
               "dashboard_polls": len(load.polls),
               "dashboard_polls_from_postgresql_while_redis_down": len(during)}
    run_dir = pathlib.Path(stack.env.get("SB_RUN_DIR", "."))
    (run_dir / "faults-summary.json").write_text(json.dumps(summary, indent=2) + "\n")
