"""The orders API on the real stack: POST /orders produces a create command to orders.v1 only
after Kafka's ack, Idempotency-Key makes retries safe (even concurrent ones), GET /orders and
GET /orders/{id} read what sb-order-processor wrote, PUT /orders/{id}/status asks the processor
for a transition; roles, scopes and tenancy are enforced, and bad input gets problem+json."""

import concurrent.futures
import json
import uuid

import pytest
import requests

from conftest import STACK, wait_until

ORDERS_TOPIC = "orders.v1"
PROCESSOR = bool(STACK.get("SB_HEALTH_URL_ORDER_PROCESSOR"))
needs_processor = pytest.mark.skipif(not PROCESSOR, reason="sb-order-processor is not in the stack")


def order_body(customer_id, **over):
    body = {
        "customer_id": customer_id,
        "sku": "SB-TEMP-100",
        "quantity": 3,
        "shipping": {"name": "Ada Lovelace", "line1": "1 Analytical Way", "city": "London",
                     "postal_code": "N1 9GU", "country": "GB"},
        "notes": "leave at reception",
    }
    body.update(over)
    return body


def assert_problem(r, status, slug=None):
    assert r.status_code == status, r.text
    assert r.headers["Content-Type"].startswith("application/problem+json"), r.headers
    doc = r.json()
    assert doc["status"] == status
    if slug:
        assert doc["type"] == "https://sensorbus.dev/problems/" + slug, doc
    return doc


def headers_of(msg):
    return {k: (v.decode() if v is not None else None) for k, v in (msg.headers() or [])}


def commands_for(stack, order_id):
    """Every orders.v1 record keyed by this order id, in topic order."""
    return [m for m in stack.read_topic(ORDERS_TOPIC) if m.key() == order_id.encode()]


class Org:
    """A person's organization with a customer the processor knows, and its members."""

    def __init__(self, stack):
        self.stack = stack
        self.admin = stack.new_person()
        self.slug = self.admin.org_slug
        self.org_id = self.admin.org_id
        self.customer = "cust-" + uuid.uuid4().hex[:8]
        stack.sbctl("customers", "create", "--org", self.slug, self.customer)

    def member(self, role):
        """Someone else, added to this organization with @role, signed in to it."""
        p = self.stack.new_person()
        self.stack.sql("INSERT INTO memberships (user_id, org_id, role) "
                       "SELECT id, %s::uuid, %s FROM users WHERE lower(email) = lower(%s) RETURNING user_id",
                       self.org_id, role, p.email)
        p.org_slug = self.slug
        return p.sign_in()

    def create(self, body=None, who=None, headers=None):
        who = who or self.admin
        return who.post("/orders", body or order_body(self.customer), headers=headers)

    def get(self, order_id, who=None):
        return (who or self.admin).get(f"/orders/{order_id}")


@pytest.fixture
def org(stack):
    return Org(stack)


def key_post(stack, token, body, headers=None):
    h = {"Authorization": f"Bearer {token}"}
    h.update(headers or {})
    return stack.http.post(stack.url + "/orders", json=body, headers=h, timeout=30)


# --- POST /orders ----------------------------------------------------------------------------

def test_post_answers_202_after_the_create_command_is_in_orders_v1(stack, org):
    request_id = "orders-" + uuid.uuid4().hex
    body = order_body(org.customer)
    r = org.create(body, headers={"X-Request-Id": request_id})
    assert r.status_code == 202, r.text
    doc = r.json()
    order_id = doc["order_id"]
    assert uuid.UUID(order_id).version == 4
    assert doc["status"] == "pending"
    assert r.headers["Location"] == f"/orders/{order_id}"
    assert r.headers["X-Request-Id"] == request_id

    # 202 means Kafka acknowledged: the record is readable at once.
    records = commands_for(stack, order_id)
    assert len(records) == 1
    cmd = json.loads(records[0].value())
    assert cmd["type"] == "create" and cmd["order_id"] == order_id
    assert cmd["command_id"] == doc["command_id"]
    assert cmd["org_id"] == org.org_id and cmd["project_id"] is None
    assert cmd["request_id"] == request_id
    user_id = stack.sql("SELECT id::text FROM users WHERE email = %s", org.admin.email)[0][0]
    assert cmd["actor"] == {"kind": "user", "id": user_id}
    assert cmd["order"] == body
    h = headers_of(records[0])
    assert h["sb-org-id"] == org.org_id
    assert h["sb-request-id"] == request_id
    assert h["content-type"] == "application/json"
    assert "sb-project-id" not in h


def test_a_person_may_name_a_project_of_their_organization_only(stack, org):
    project_id = org.admin.new_project()
    r = org.create(order_body(org.customer, project_id=project_id))
    assert r.status_code == 202, r.text
    rec = commands_for(stack, r.json()["order_id"])[0]
    assert headers_of(rec)["sb-project-id"] == project_id
    assert json.loads(rec.value())["project_id"] == project_id

    other = stack.new_person().new_project()
    doc = assert_problem(org.create(order_body(org.customer, project_id=other)), 422,
                         "invalid-fields")
    assert [e["pointer"] for e in doc["errors"]] == ["/project_id"]


def test_an_api_key_needs_the_orders_scope(stack, org):
    tenant = stack.new_tenant(scopes="orders")
    body = order_body("c-1")
    r = key_post(stack, tenant.token, body, {"X-Request-Id": "key-order-1"})
    assert r.status_code == 202, r.text
    rec = commands_for(stack, r.json()["order_id"])[0]
    h = headers_of(rec)
    assert h["sb-project-id"] == tenant.project_id and h["sb-request-id"] == "key-order-1"
    cmd = json.loads(rec.value())
    assert cmd["actor"]["kind"] == "key" and tenant.token.startswith("lok_" + cmd["actor"]["id"])
    assert cmd["project_id"] == tenant.project_id

    no_scope = stack.new_tenant(scopes="ingest,read")
    before = stack.high_watermarks(ORDERS_TOPIC)
    assert_problem(key_post(stack, no_scope.token, body), 403, "forbidden")
    assert stack.high_watermarks(ORDERS_TOPIC) == before


def test_bad_bodies_get_422_naming_every_bad_field(stack, org):
    before = stack.high_watermarks(ORDERS_TOPIC)
    bad = order_body(org.customer, quantity=0, sku="", colour="red")
    bad["shipping"] = {"name": "x", "line1": "y", "city": "z", "postal_code": "1", "country": "gb"}
    doc = assert_problem(org.create(bad), 422, "invalid-fields")
    pointers = sorted(e["pointer"] for e in doc["errors"])
    assert pointers == ["/colour", "/quantity", "/shipping/country", "/sku"], doc

    missing = {"quantity": 2.5}
    doc = assert_problem(org.create(missing), 422, "invalid-fields")
    assert sorted(e["pointer"] for e in doc["errors"]) == [
        "/customer_id", "/quantity", "/shipping", "/sku"]

    assert_problem(org.admin.post("/orders", ["not", "an", "object"]), 422)
    r = org.admin.request("POST", "/orders", data="{", headers={"Content-Type": "application/json"})
    assert_problem(r, 400, "malformed-json")
    assert_problem(org.create(headers={"Idempotency-Key": "k" * 256}), 400)
    assert stack.high_watermarks(ORDERS_TOPIC) == before


# --- Idempotency-Key -------------------------------------------------------------------------

def test_a_replayed_key_returns_the_same_order_and_produces_nothing_more(stack, org):
    key = {"Idempotency-Key": "retry-" + uuid.uuid4().hex}
    body = order_body(org.customer)
    before = stack.high_watermarks(ORDERS_TOPIC)
    first = org.create(body, headers=key)
    assert first.status_code == 202, first.text

    # The same request, written differently: keys reordered, quantity as 3.0.
    same = dict(reversed(list(body.items())))
    same["quantity"] = 3.0
    again = org.admin.request("POST", "/orders", data=json.dumps(same, indent=2),
                              headers={**key, "Content-Type": "application/json"})
    assert again.status_code == 202, again.text
    assert again.json()["order_id"] == first.json()["order_id"]
    assert again.json() == first.json()
    assert again.headers["Location"] == first.headers["Location"]
    assert again.headers.get("Idempotent-Replayed") == "true"
    assert stack.high_watermarks(ORDERS_TOPIC) == before + 1

    # Another organization's identical key is its own.
    other = Org(stack)
    third = other.create(order_body(other.customer), headers=key)
    assert third.status_code == 202 and third.json()["order_id"] != first.json()["order_id"]


def test_a_key_reused_with_another_body_gets_409(stack, org):
    key = {"Idempotency-Key": "reuse-" + uuid.uuid4().hex}
    assert org.create(headers=key).status_code == 202
    before = stack.high_watermarks(ORDERS_TOPIC)
    doc = assert_problem(org.create(order_body(org.customer, quantity=4), headers=key), 409,
                         "idempotency-conflict")
    assert "Idempotency-Key" in doc["detail"]
    assert stack.high_watermarks(ORDERS_TOPIC) == before


def test_concurrent_requests_with_one_key_make_one_order(stack, org):
    key = {"Idempotency-Key": "race-" + uuid.uuid4().hex}
    body = order_body(org.customer)
    before = stack.high_watermarks(ORDERS_TOPIC)

    def post(_):
        with requests.Session() as s:
            return s.post(stack.url + "/orders", json=body, timeout=30,
                          headers={**org.admin.headers(), **key})

    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(post, range(8)))
    ok = [a for a in answers if a.status_code == 202]
    busy = [a for a in answers if a.status_code == 409]
    assert len(ok) + len(busy) == len(answers), [(a.status_code, a.text) for a in answers]
    assert ok, [a.text for a in answers]
    for a in busy:
        assert_problem(a, 409, "idempotency-in-progress")
        assert a.headers["Retry-After"]
    assert len({a.json()["order_id"] for a in ok}) == 1
    # The ones told to retry get the same order when they do.
    retry = wait_until("the retried request", lambda: (lambda a: a if a.status_code == 202
                                                       else None)(post(0)), timeout=30)
    assert retry.json()["order_id"] == ok[0].json()["order_id"]
    assert stack.high_watermarks(ORDERS_TOPIC) == before + 1
    assert stack.sql("SELECT count(*) FROM order_requests WHERE org_id = %s "
                     "AND idempotency_key = %s", org.org_id, key["Idempotency-Key"])[0][0] == 1


def test_a_reservation_left_by_a_crash_is_produced_by_the_retry(stack, org):
    """A gateway that died after reserving the key and before producing: once the claim has run
    out, a retry produces the stored command (same order id) rather than a new order."""
    key = "crash-" + uuid.uuid4().hex
    body = order_body(org.customer)
    first = org.create(body, headers={"Idempotency-Key": key})
    assert first.status_code == 202
    order_id = first.json()["order_id"]
    # Put the row back as the crash would have left it: reserved, never produced, claim expired.
    stack.sql("UPDATE order_requests SET state = 'pending', response = NULL, produced_at = NULL, "
              "claimed_until = now() - interval '1 second' WHERE org_id = %s "
              "AND idempotency_key = %s RETURNING order_id", org.org_id, key)
    again = org.create(body, headers={"Idempotency-Key": key})
    assert again.status_code == 202, again.text
    assert again.json()["order_id"] == order_id
    assert "Idempotent-Replayed" not in again.headers
    records = commands_for(stack, order_id)
    assert len(records) == 2  # the same command twice; the processor applies it once
    assert records[0].value() == records[1].value()
    assert stack.sql("SELECT state FROM order_requests WHERE order_id = %s",
                     order_id)[0][0] == "produced"


def test_kafka_down_gives_503_and_the_retry_with_the_key_makes_the_same_order(stack, org):
    """No 2xx for a command Kafka does not have; the reservation is released so the client's
    retry produces at once, and names the order that was reserved first."""
    key = "outage-" + uuid.uuid4().hex
    body = order_body(org.customer)
    stack.stack("stop-component", "kafka")
    try:
        r = org.create(body, headers={"Idempotency-Key": key})
        assert_problem(r, 503, "unavailable")
        assert int(r.headers["Retry-After"]) >= 1
        keyless = org.create(body)
        assert_problem(keyless, 503, "unavailable")
    finally:
        stack.stack("start-component", "kafka")
    rows = stack.sql("SELECT order_id::text, state, claimed_until = '-infinity' "
                     "FROM order_requests WHERE org_id = %s", org.org_id)
    assert len(rows) == 1, rows  # the keyless request's row is gone: nobody can retry it
    reserved, state, released = rows[0]
    assert state == "pending" and released

    wait_until("the gateway to be ready again",
               lambda: requests.get(stack.url + "/readyz", timeout=5).status_code == 200,
               timeout=60, interval=0.5)
    again = wait_until("a 202 for the retry", lambda: (lambda a: a if a.status_code == 202
                       else None)(org.create(body, headers={"Idempotency-Key": key})),
                       timeout=60, interval=0.5)
    assert again.json()["order_id"] == reserved
    values = {m.value() for m in commands_for(stack, reserved)}
    assert len(values) == 1  # a late first delivery and the retry carry the same command
    assert stack.sql("SELECT count(*) FROM order_requests WHERE org_id = %s AND "
                     "idempotency_key = %s AND state = 'produced'", org.org_id, key)[0][0] == 1
    if PROCESSOR:
        wait_until("the order accepted", lambda: org.get(reserved).json()["status"] == "accepted",
                   timeout=60)


# --- reads, transitions, roles and tenancy ---------------------------------------------------

def test_get_shows_received_until_the_processor_has_the_order(stack, org):
    r = org.create()
    order_id = r.json()["order_id"]
    got = org.get(order_id)
    assert got.status_code == 200, got.text
    doc = got.json()
    assert doc["order_id"] == order_id
    assert doc["customer_id"] == org.customer and doc["quantity"] == 3
    assert doc["status"] in ("received", "pending", "accepted"), doc
    assert isinstance(doc["events"], list)


@needs_processor
def test_the_processor_accepts_the_order_and_get_shows_its_events(stack, org):
    request_id = "accept-" + uuid.uuid4().hex
    created = org.create(headers={"X-Request-Id": request_id}).json()
    order_id = created["order_id"]
    doc = wait_until("the order accepted",
                     lambda: (lambda d: d if d.get("status") == "accepted" else None)(
                         org.get(order_id).json()), timeout=60)
    assert [e["seq"] for e in doc["events"]] == list(range(1, len(doc["events"]) + 1))
    assert doc["events"][0]["type"] == "created"
    assert doc["events"][-1]["to"] == "accepted"
    assert {e["command_id"] for e in doc["events"]} == {created["command_id"]}
    assert {e["request_id"] for e in doc["events"]} == {request_id}
    assert doc["sku"] == "SB-TEMP-100" and doc["shipping"]["country"] == "GB"


@needs_processor
def test_an_operator_changes_the_status_and_the_processor_applies_it(stack, org):
    order_id = org.create().json()["order_id"]
    wait_until("the order accepted", lambda: org.get(order_id).json().get("status") == "accepted")
    operator = org.member("operator")
    request_id = "transition-" + uuid.uuid4().hex
    r = operator.put(f"/orders/{order_id}/status", {"status": "in_production", "reason": "go"},
                     headers={"X-Request-Id": request_id})
    assert r.status_code == 202, r.text
    command_id = r.json()["command_id"]
    assert r.json()["order_id"] == order_id and r.json()["requested_status"] == "in_production"

    rec = [m for m in commands_for(stack, order_id) if json.loads(m.value())["type"] == "transition"]
    assert len(rec) == 1
    cmd = json.loads(rec[0].value())
    assert cmd["command_id"] == command_id and cmd["to"] == "in_production"
    assert cmd["reason"] == "go" and cmd["request_id"] == request_id
    assert headers_of(rec[0])["sb-request-id"] == request_id

    doc = wait_until("the transition applied",
                     lambda: (lambda d: d if d.get("status") == "in_production" else None)(
                         org.get(order_id).json()))
    last = doc["events"][-1]
    assert last["command_id"] == command_id and last["from"] == "accepted"
    assert last["type"] == "status_changed"

    # A transition the machine forbids is the processor's to refuse, not the gateway's.
    r = operator.put(f"/orders/{order_id}/status", {"status": "delivered"})
    assert r.status_code == 202
    refused = r.json()["command_id"]
    doc = wait_until("the refusal recorded",
                     lambda: (lambda d: d if any(e["command_id"] == refused for e in d["events"])
                              else None)(org.get(order_id).json()))
    assert doc["status"] == "in_production"
    assert doc["events"][-1]["type"] == "transition_refused"


def test_viewers_read_but_cannot_order_or_change_status(stack, org):
    order_id = org.create().json()["order_id"]
    viewer = org.member("viewer")
    assert viewer.get(f"/orders/{order_id}").status_code == 200
    assert viewer.get("/orders").status_code == 200
    assert_problem(viewer.post("/orders", order_body(org.customer)), 403, "forbidden")
    assert_problem(viewer.put(f"/orders/{order_id}/status", {"status": "cancelled"}), 403,
                   "forbidden")


def test_put_status_checks_the_order_and_the_status_name(stack, org):
    order_id = org.create().json()["order_id"]
    before = stack.high_watermarks(ORDERS_TOPIC)
    for status in ("teleported", "pending", "pending_approval", 7):
        doc = assert_problem(org.admin.put(f"/orders/{order_id}/status", {"status": status}),
                             422, "invalid-fields")
        assert doc["errors"][0]["pointer"] == "/status"
    assert_problem(org.admin.put(f"/orders/{uuid.uuid4()}/status", {"status": "cancelled"}),
                   404, "not-found")
    assert_problem(org.admin.put("/orders/not-a-uuid/status", {"status": "cancelled"}), 404)
    tenant = stack.new_tenant(scopes="orders,read")
    r = stack.http.put(stack.url + f"/orders/{order_id}/status", json={"status": "cancelled"},
                       headers={"Authorization": f"Bearer {tenant.token}"}, timeout=30)
    assert "for people" in assert_problem(r, 401, "unauthorized")["detail"]
    assert stack.high_watermarks(ORDERS_TOPIC) == before


def test_another_organization_gets_404(stack, org):
    order_id = org.create().json()["order_id"]
    stranger = stack.new_person()
    before = stack.high_watermarks(ORDERS_TOPIC)
    assert_problem(stranger.get(f"/orders/{order_id}"), 404, "not-found")
    assert_problem(stranger.put(f"/orders/{order_id}/status", {"status": "cancelled"}), 404,
                   "not-found")
    assert order_id not in stranger.get("/orders").text
    assert stack.high_watermarks(ORDERS_TOPIC) == before


@needs_processor
def test_list_filters_and_pages_newest_first(stack, org):
    second = "cust-" + uuid.uuid4().hex[:8]
    stack.sbctl("customers", "create", "--org", org.slug, second)
    ids = [org.create(order_body(c, quantity=q)).json()["order_id"]
           for c, q in ((org.customer, 1), (second, 2), (org.customer, 3), ("nobody", 4))]
    wait_until("all orders processed", lambda: all(
        org.get(i).json().get("status") in ("accepted", "rejected") for i in ids))

    page1 = org.admin.get("/orders?limit=3").json()
    assert [o["order_id"] for o in page1["items"]] == ids[::-1][:3]
    page2 = org.admin.get(f"/orders?limit=3&cursor={page1['next_cursor']}").json()
    assert [o["order_id"] for o in page2["items"]] == [ids[0]] and page2["next_cursor"] is None

    mine = org.admin.get(f"/orders?customer_id={org.customer}").json()["items"]
    assert [o["order_id"] for o in mine] == [ids[2], ids[0]]
    rejected = org.admin.get("/orders?status=rejected").json()["items"]
    assert [o["order_id"] for o in rejected] == [ids[3]]
    assert org.admin.get("/orders?sku=SB-HUM-200").json()["items"] == []
    created = org.get(ids[1]).json()["created_at"]
    since = org.admin.get("/orders", params={"from": created}).json()["items"]
    assert [o["order_id"] for o in since] == ids[::-1][:3]
    until = org.admin.get("/orders", params={"to": created}).json()["items"]
    assert [o["order_id"] for o in until] == [ids[0]]

    assert_problem(org.admin.get("/orders?status=lost"), 400, "invalid-parameter")
    assert_problem(org.admin.get("/orders?limit=0"), 400, "invalid-parameter")
    assert_problem(org.admin.get("/orders?cursor=bm90LWEtY3Vyc29y"), 400, "invalid-cursor")
