"""sb-order-processor end to end: orders.v1 commands produced to the real Kafka -> PostgreSQL
orders / order_events / order_commands -> orders.events.v1, and the Redis counts sb:orders:<org>.

Commands are produced here directly (as the gateway would), so that every rule, refusal and fault
can be set up exactly. Each test has its own organization, so no test sees another's orders.
"""

import json
import socket
import threading
import time
import urllib.parse
import uuid

import pytest
from confluent_kafka import Producer
from jsonschema import Draft202012Validator

from conftest import REPO, wait_until

COMMANDS_TOPIC = "orders.v1"
EVENTS_TOPIC = "orders.events.v1"
DLQ_TOPIC = "dlq.order-processor.v1"
STATUSES = ["pending", "pending_approval", "accepted", "rejected", "in_production", "shipped",
            "delivered", "cancelled"]
FINAL = {"rejected", "delivered", "cancelled"}
LONG_SKU = "\U0001F321" * 64  # the longest sku, in the longest UTF-8 characters


def schema(name):
    doc = json.loads((REPO / "proto" / name).read_text(encoding="utf-8"))
    return Draft202012Validator(doc, format_checker=Draft202012Validator.FORMAT_CHECKER)


EVENT_SCHEMA = schema("order_event.v1.json")
COMMAND_SCHEMA = schema("order_command.v1.json")


def now_rfc3339():
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


class Org:
    """A fresh organization with two customers: acme (route express-eu) and plain (no route)."""

    def __init__(self, stack):
        t = stack.new_tenant()
        self.stack = stack
        self.slug = t.org_slug
        self.project_id = t.project_id
        self.id = stack.sql("SELECT id::text FROM organizations WHERE slug = %s", self.slug)[0][0]
        stack.sbctl("customers", "create", "--org", self.slug, "acme", "--name", "ACME Corp",
                    "--route", "express-eu")
        stack.sbctl("customers", "create", "--org", self.slug, "plain")

    def create(self, customer="acme", sku="SB-TEMP-100", quantity=5, order_id=None, **extra):
        cmd = {"type": "create", "command_id": str(uuid.uuid4()),
               "order_id": order_id or str(uuid.uuid4()), "org_id": self.id,
               "project_id": self.project_id, "requested_at": now_rfc3339(),
               "request_id": "req-" + uuid.uuid4().hex[:12],
               "actor": {"kind": "user", "id": str(uuid.uuid4())},
               "order": {"customer_id": customer, "sku": sku, "quantity": quantity,
                         "shipping": {"name": "Ada Lovelace", "line1": "1 Main St",
                                      "city": "Lyon", "postal_code": "69001", "country": "FR"},
                         "notes": "leave at the door"}}
        cmd.update(extra)
        return cmd

    def transition(self, order_id, to, reason=None):
        cmd = {"type": "transition", "command_id": str(uuid.uuid4()), "order_id": order_id,
               "org_id": self.id, "to": to, "requested_at": now_rfc3339(),
               "request_id": "req-" + uuid.uuid4().hex[:12],
               "actor": {"kind": "key", "id": "abcdefghijkl"}}
        if reason is not None:
            cmd["reason"] = reason
        return cmd

    # --- PostgreSQL ------------------------------------------------------------------------
    def order(self, order_id):
        rows = self.stack.sql(
            "SELECT status, route, reject_reason, version, customer_id, sku, quantity, shipping, "
            "notes, org_id::text, project_id::text, request_id FROM orders WHERE id = %s",
            order_id)
        if not rows:
            return None
        keys = ["status", "route", "reject_reason", "version", "customer_id", "sku", "quantity",
                "shipping", "notes", "org_id", "project_id", "request_id"]
        return dict(zip(keys, rows[0]))

    def status(self, order_id):
        o = self.order(order_id)
        return o and o["status"]

    def wait_status(self, order_id, status, timeout=60):
        wait_until(f"order {order_id} to be {status}",
                   lambda: self.status(order_id) == status, timeout=timeout)
        return self.order(order_id)

    def events(self, order_id):
        """The order's events as the processor publishes them, from order_events."""
        rows = self.stack.sql(
            "SELECT event_id::text, order_id::text, org_id::text, seq, type, from_status, "
            "to_status, reason, route, command_id::text, "
            "to_char(at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"') "
            "FROM order_events WHERE order_id = %s ORDER BY seq", order_id)
        keys = ["event_id", "order_id", "org_id", "seq", "type", "from", "to", "reason", "route",
                "command_id", "at"]
        return [dict(zip(keys, r)) for r in rows]

    def commands_applied(self, order_id):
        return self.stack.sql("SELECT count(*) FROM order_commands WHERE order_id = %s",
                              order_id)[0][0]


@pytest.fixture(scope="module")
def producer(stack):
    p = Producer({"bootstrap.servers": stack.kafka, "enable.idempotence": True, "acks": "all",
                  "linger.ms": 5})
    yield p
    p.flush(30)


def produce(producer, cmd, key=None, headers=None, raw=None):
    """Produces one command as the gateway does and waits for the broker's acknowledgement."""
    errors = []
    if headers is None:
        headers = {"content-type": "application/json", "sb-contract": "order_command.v1",
                   "sb-org-id": cmd["org_id"], "sb-request-id": cmd.get("request_id", "")}
    value = raw if raw is not None else json.dumps(cmd).encode()
    producer.produce(COMMANDS_TOPIC, key=(key if key is not None else cmd["order_id"]).encode(),
                     value=value, headers=list(headers.items()),
                     on_delivery=lambda err, msg: errors.append(err) if err else None)
    assert producer.flush(30) == 0, "the broker did not acknowledge the command"
    assert not errors, errors


@pytest.fixture
def org(stack):
    return Org(stack)


def topic_events(stack, order_ids):
    """The events of these orders in orders.events.v1, deduplicated by event_id (a redelivered
    command re-publishes the same event), checking that every copy of an event is identical."""
    wanted = set(order_ids)
    seen = {}
    for m in stack.read_topic(EVENTS_TOPIC):
        doc = json.loads(m.value())
        if doc.get("order_id") not in wanted:
            continue
        EVENT_SCHEMA.validate(doc)
        assert m.key().decode() == doc["order_id"]
        headers = dict(m.headers())
        assert headers["content-type"] == b"application/json"
        assert headers["sb-contract"] == b"order_event.v1"
        assert headers["sb-org-id"] == doc["org_id"].encode()
        if doc["event_id"] in seen:
            assert seen[doc["event_id"]] == doc, "two different events share an event_id"
        seen[doc["event_id"]] = doc
    return sorted(seen.values(), key=lambda d: (d["order_id"], d["seq"]))


def assert_published(stack, org, order_ids):
    """Every stored event is in orders.events.v1, identical, and nothing else is."""
    db = sorted((e for oid in order_ids for e in org.events(oid)),
                key=lambda d: (d["order_id"], d["seq"]))

    def published():
        return topic_events(stack, order_ids) == db or None

    wait_until("the stored events in orders.events.v1", published, timeout=30, interval=1)
    for e in db:
        assert e["event_id"] == str(uuid.uuid5(uuid.UUID(e["command_id"]), str(e["seq"])))
    return db


def redis_command(url, *args):
    """One command on a fresh RESP2 connection (the venv has no Redis client)."""
    u = urllib.parse.urlsplit(url)
    with socket.create_connection((u.hostname, u.port or 6379), timeout=5) as s:
        f = s.makefile("rb")

        def reply():
            line = f.readline()
            kind, rest = line[:1], line[1:-2]
            if kind == b"-":
                raise AssertionError(f"Redis: {rest.decode()}")
            if kind == b"$":
                n = int(rest)
                return None if n < 0 else f.read(n + 2)[:-2].decode()
            if kind == b"*":
                return [reply() for _ in range(int(rest))]
            return rest.decode()

        def call(*words):
            data = [str(w).encode() for w in words]
            s.sendall(b"*%d\r\n" % len(data) + b"".join(b"$%d\r\n%s\r\n" % (len(w), w)
                                                         for w in data))
            return reply()

        if u.password:
            call("AUTH", *([urllib.parse.unquote(u.username)] if u.username else []),
                 urllib.parse.unquote(u.password))
        if u.path.strip("/"):
            call("SELECT", u.path.strip("/"))
        return call(*args)


def assert_redis_counts_exact(stack, org):
    def pg():
        rows = dict(stack.sql("SELECT status, count(*) FROM orders WHERE org_id = %s "
                              "GROUP BY status", org.id))
        return {s: rows.get(s, 0) for s in STATUSES}

    def redis():
        flat = redis_command(stack.env["SB_REDIS_URL"], "HGETALL", f"sb:orders:{org.id}")
        return {k: int(v) for k, v in zip(flat[::2], flat[1::2])}

    wait_until("sb:orders:<org> to equal the counts in PostgreSQL", lambda: redis() == pg(),
               timeout=20, interval=0.5)


# --- the happy path --------------------------------------------------------------------------


def test_create_is_accepted_routed_stored_and_published(stack, org, producer):
    cmd = org.create(customer="acme", quantity=5)
    COMMAND_SCHEMA.validate(cmd)
    plain = org.create(customer="plain", sku="SB-HUM-200", quantity=2)
    produce(producer, cmd)
    produce(producer, plain)

    o = org.wait_status(cmd["order_id"], "accepted")
    assert o["route"] == "express-eu"  # the customer's route
    assert (o["customer_id"], o["sku"], o["quantity"], o["version"]) == ("acme", "SB-TEMP-100",
                                                                          5, 1)
    assert o["shipping"] == cmd["order"]["shipping"] and o["notes"] == cmd["order"]["notes"]
    assert (o["org_id"], o["project_id"], o["request_id"]) == (org.id, org.project_id,
                                                               cmd["request_id"])
    assert o["reject_reason"] is None
    assert org.wait_status(plain["order_id"], "accepted")["route"] == "standard"  # the default

    events = org.events(cmd["order_id"])
    assert [(e["seq"], e["type"], e["from"], e["to"], e["route"]) for e in events] == [
        (1, "created", None, "pending", None),
        (2, "status_changed", "pending", "accepted", "express-eu")]
    assert {e["command_id"] for e in events} == {cmd["command_id"]}
    assert org.commands_applied(cmd["order_id"]) == 1

    assert_published(stack, org, [cmd["order_id"], plain["order_id"]])
    m = next(m for m in stack.read_topic(EVENTS_TOPIC)
             if json.loads(m.value())["event_id"] == events[0]["event_id"])
    assert dict(m.headers())["sb-request-id"] == cmd["request_id"].encode()
    assert_redis_counts_exact(stack, org)


# --- validation --------------------------------------------------------------------------------


@pytest.mark.parametrize("what,order,reason", [
    ("unknown sku", {"sku": "NOPE-1"}, "unknown sku 'NOPE-1'"),
    ("64 four-byte characters", {"sku": LONG_SKU}, f"unknown sku '{LONG_SKU}'"),
    ("quantity 0", {"quantity": 0}, "quantity 0 is not between 1 and 1000000"),
    ("quantity above the ceiling", {"quantity": 1000001},
     "quantity 1000001 is not between 1 and 1000000"),
])
def test_invalid_create_makes_a_rejected_order_with_its_reason(stack, org, producer, what, order,
                                                               reason):
    cmd = org.create(**order)
    produce(producer, cmd)
    o = org.wait_status(cmd["order_id"], "rejected")
    assert o["reject_reason"] == reason, what
    assert o["route"] is None
    events = org.events(cmd["order_id"])
    assert [(e["type"], e["from"], e["to"], e["reason"]) for e in events] == [
        ("created", None, "pending", None), ("rejected", "pending", "rejected", reason)]
    assert_published(stack, org, [cmd["order_id"]])


def test_a_customer_of_another_organization_is_rejected(stack, org, producer):
    other = Org(stack)
    stack.sbctl("customers", "create", "--org", other.slug, "globex")
    cmd = org.create(customer="globex")
    produce(producer, cmd)
    o = org.wait_status(cmd["order_id"], "rejected")
    assert o["reject_reason"] == "customer 'globex' is not a customer of the organization"
    # The same order in the customer's own organization is fine.
    ok = other.create(customer="globex")
    produce(producer, ok)
    assert other.wait_status(ok["order_id"], "accepted")["route"] == "standard"


def test_an_organization_sku_is_known_to_that_organization_only(stack, org, producer):
    stack.sql("INSERT INTO skus (org_id, sku, name) VALUES (%s, 'ACME-SPECIAL', 'Special') "
              "RETURNING sku", org.id)
    other = Org(stack)
    mine, theirs = org.create(sku="ACME-SPECIAL"), other.create(sku="ACME-SPECIAL")
    produce(producer, mine)
    produce(producer, theirs)
    org.wait_status(mine["order_id"], "accepted")
    assert other.wait_status(theirs["order_id"], "rejected")["reject_reason"] == \
        "unknown sku 'ACME-SPECIAL'"


# --- rules -------------------------------------------------------------------------------------


def test_over_the_limit_waits_for_approval_then_is_approved(stack, org, producer):
    stack.sbctl("order-rules", "set", "--org", org.slug, "--sku", "*", "--max-quantity", "100")
    stack.sbctl("order-rules", "set", "--org", org.slug, "--sku", "SB-TEMP-100",
                "--max-quantity", "10")
    listing = stack.sbctl("order-rules", "list", "--org", org.slug).stdout
    assert "SB-TEMP-100" in listing and "*" in listing

    big = org.create(sku="SB-TEMP-100", quantity=11)   # the sku's own limit wins over '*'
    medium = org.create(sku="SB-HUM-200", quantity=50)  # under '*'
    huge = org.create(sku="SB-HUM-200", quantity=101)   # over '*'
    for c in (big, medium, huge):
        produce(producer, c)
    o = org.wait_status(big["order_id"], "pending_approval")
    assert o["route"] == "express-eu" and o["reject_reason"] is None
    org.wait_status(medium["order_id"], "accepted")
    org.wait_status(huge["order_id"], "pending_approval")
    assert org.events(big["order_id"])[-1]["reason"] == \
        "quantity 11 is above the limit of 10 for sku 'SB-TEMP-100'"

    produce(producer, org.transition(big["order_id"], "accepted", reason="approved by ops"))
    produce(producer, org.transition(huge["order_id"], "rejected", reason="too many"))
    o = org.wait_status(big["order_id"], "accepted")
    assert o["version"] == 2
    assert org.wait_status(huge["order_id"], "rejected")["reject_reason"] == "too many"
    last = org.events(big["order_id"])[-1]
    assert (last["seq"], last["type"], last["from"], last["to"], last["reason"]) == (
        3, "status_changed", "pending_approval", "accepted", "approved by ops")
    assert org.events(huge["order_id"])[-1]["type"] == "rejected"
    assert_published(stack, org, [big["order_id"], medium["order_id"], huge["order_id"]])
    assert_redis_counts_exact(stack, org)


# --- the state machine -------------------------------------------------------------------------


def test_full_lifecycle_to_delivered(stack, org, producer):
    cmd = org.create()
    produce(producer, cmd)
    oid = cmd["order_id"]
    for to in ("in_production", "shipped", "delivered"):
        produce(producer, org.transition(oid, to))
    o = org.wait_status(oid, "delivered")
    assert o["version"] == 4
    events = org.events(oid)
    assert [(e["seq"], e["type"], e["from"], e["to"]) for e in events] == [
        (1, "created", None, "pending"),
        (2, "status_changed", "pending", "accepted"),
        (3, "status_changed", "accepted", "in_production"),
        (4, "status_changed", "in_production", "shipped"),
        (5, "status_changed", "shipped", "delivered")]
    assert all(e["route"] == "express-eu" for e in events[1:])
    assert org.commands_applied(oid) == 4
    assert_published(stack, org, [oid])
    assert_redis_counts_exact(stack, org)


def test_an_invalid_transition_is_refused_recorded_and_never_applied(stack, org, producer):
    cmd = org.create()
    produce(producer, cmd)
    oid = cmd["order_id"]
    org.wait_status(oid, "accepted")
    produce(producer, org.transition(oid, "delivered"))  # skips in_production and shipped
    wait_until("the refusal", lambda: len(org.events(oid)) == 3)
    o = org.order(oid)
    assert (o["status"], o["version"]) == ("accepted", 1)
    refused = org.events(oid)[2]
    assert (refused["type"], refused["from"], refused["to"], refused["reason"]) == (
        "transition_refused", "accepted", "delivered",
        "an order that is accepted cannot become delivered")

    # Out of a final status nothing moves.
    produce(producer, org.transition(oid, "cancelled", reason="customer changed their mind"))
    produce(producer, org.transition(oid, "accepted"))
    wait_until("the second refusal", lambda: len(org.events(oid)) == 5)
    assert org.status(oid) == "cancelled"
    last = org.events(oid)[4]
    assert (last["type"], last["from"], last["to"], last["reason"]) == (
        "transition_refused", "cancelled", "accepted",
        "an order that is cancelled cannot become accepted (its status is final)")
    assert org.commands_applied(oid) == 4
    assert_published(stack, org, [oid])


# --- redelivery ------------------------------------------------------------------------------


def test_the_same_command_twice_is_applied_once(stack, org, producer):
    cmd = org.create()
    oid = cmd["order_id"]
    start = org.transition(oid, "in_production")
    produce(producer, cmd)
    produce(producer, cmd)
    produce(producer, start)
    produce(producer, start)
    # A create for an existing order under a new command id is not a second order either.
    again = dict(cmd, command_id=str(uuid.uuid4()))
    again["order"] = dict(cmd["order"], quantity=999)
    produce(producer, again)
    ship = org.transition(oid, "shipped")
    produce(producer, ship)  # processed after every duplicate above (same partition)
    org.wait_status(oid, "shipped")

    assert stack.sql("SELECT count(*) FROM orders WHERE id = %s", oid)[0][0] == 1
    assert org.order(oid)["quantity"] == 5
    events = org.events(oid)
    assert [(e["seq"], e["to"]) for e in events] == [
        (1, "pending"), (2, "accepted"), (3, "in_production"), (4, "shipped")]
    assert org.commands_applied(oid) == 4  # create, transition, the ignored create, ship
    assert_published(stack, org, [oid])


# --- bad records ---------------------------------------------------------------------------


def test_records_that_are_not_commands_go_to_the_dead_letter_topic(stack, org, producer):
    good = org.create()
    unknown_order = org.transition(str(uuid.uuid4()), "shipped")
    missing = org.create()
    del missing["order"]["sku"]
    forged = org.create()
    stranger = dict(org.create(), org_id=str(uuid.uuid4()))
    wrong_key = "wrong-key-" + uuid.uuid4().hex
    cases = {  # key -> the reason the DLQ header must give
        "not-json-" + uuid.uuid4().hex: ("invalid JSON", b"{not json"),
        wrong_key: ("the record key must be the order id", None),
        missing["order_id"]: ("missing order.sku", None),
        unknown_order["order_id"]: ("no order", None),
        forged["order_id"]: ("header sb-org-id does not match", None),
        stranger["order_id"]: ("unknown organization", None),
    }
    produce(producer, good, key=None, raw=None)
    produce(producer, good, key=wrong_key)
    cases_keys = list(cases)
    produce(producer, {"order_id": cases_keys[0], "org_id": org.id}, raw=cases[cases_keys[0]][1])
    produce(producer, missing)
    produce(producer, unknown_order)
    produce(producer, forged, headers={"content-type": "application/json",
                                       "sb-org-id": str(uuid.uuid4())})
    produce(producer, stranger)
    org.wait_status(good["order_id"], "accepted")

    def dlq():
        out = {}
        for m in stack.read_topic(DLQ_TOPIC):
            key = (m.key() or b"").decode()
            h = dict(m.headers())
            out[key] = h["sb-dlq-reason"].decode()
            assert h["sb-dlq-consumer"] == b"order-processor"
            assert h["sb-dlq-topic"] == COMMANDS_TOPIC.encode()
        return out

    def all_there():
        got = dlq()
        return all(k in got for k in cases) and got

    got = wait_until("the bad records in the DLQ", all_there, timeout=30, interval=1)
    for key, (reason, _) in cases.items():
        assert reason in got[key], (key, got[key])
    assert stack.sql("SELECT count(*) FROM orders WHERE id = ANY(%s::uuid[])",
                     [missing["order_id"], forged["order_id"], stranger["order_id"]])[0][0] == 0


# --- faults ----------------------------------------------------------------------------------


def test_sigkill_mid_stream_loses_nothing_and_applies_nothing_twice(stack, org, producer):
    n = 150
    ids = []
    stop = threading.Event()
    failures = []

    def feed():
        try:
            p = Producer({"bootstrap.servers": stack.kafka, "enable.idempotence": True,
                          "acks": "all", "linger.ms": 5})
            for i in range(n):
                cmd = org.create(quantity=1 + i % 7)
                ids.append(cmd["order_id"])
                cmds = [cmd] + [org.transition(cmd["order_id"], to)
                                for to in ("in_production", "shipped", "delivered")]
                for c in cmds:
                    p.produce(COMMANDS_TOPIC, key=c["order_id"].encode(),
                              value=json.dumps(c).encode(), headers=[("sb-org-id", org.id)],
                              on_delivery=lambda err, msg: err and failures.append(err))
                p.poll(0)
                time.sleep(0.02)
                if stop.is_set():
                    break
            assert p.flush(60) == 0
        except Exception as e:  # reported by the main thread
            failures.append(e)

    feeder = threading.Thread(target=feed)
    feeder.start()
    try:
        wait_until("some orders processed", lambda: stack.sql(
            "SELECT count(*) FROM orders WHERE org_id = %s", org.id)[0][0] >= 20)
        stack.stack("kill", "order-processor", "KILL")
        stack.stack("start-daemon", "order-processor")
    finally:
        feeder.join(120)
    assert not failures, failures
    assert len(ids) == n

    def delivered():
        return stack.sql("SELECT count(*) FROM orders WHERE org_id = %s AND status = 'delivered'",
                         org.id)[0][0]

    wait_until(f"all {n} orders delivered", lambda: delivered() == n, timeout=120, interval=0.5)

    # Every order: final, with exactly the five events of its four commands, seq 1..5 without
    # a gap or a duplicate, and its status equal to the last event's.
    rows = stack.sql("SELECT o.id::text, o.status, o.version, array_agg(e.seq ORDER BY e.seq), "
                     "array_agg(e.to_status ORDER BY e.seq), count(DISTINCT e.command_id) "
                     "FROM orders o JOIN order_events e ON e.order_id = o.id "
                     "WHERE o.org_id = %s GROUP BY o.id", org.id)
    assert len(rows) == n
    for oid, status, version, seqs, tos, ncmds in rows:
        assert status in FINAL
        assert seqs == [1, 2, 3, 4, 5], (oid, seqs)
        assert tos[-1] == status and version == 4 and ncmds == 4, (oid, tos, version)
    assert stack.sql("SELECT count(*) FROM order_commands WHERE org_id = %s",
                     org.id)[0][0] == 4 * n
    assert stack.sql("SELECT count(*) FROM order_events WHERE org_id = %s AND type = "
                     "'transition_refused'", org.id)[0][0] == 0
    assert_published(stack, org, ids)
    assert_redis_counts_exact(stack, org)


def test_redis_down_holds_no_order_back_and_the_counts_catch_up(stack, org, producer):
    ready_url = stack.env["SB_HEALTH_URL_ORDER_PROCESSOR"]

    def redis_check():
        return stack.http.get(ready_url, timeout=5).json()["checks"].get("redis")

    first = org.create()
    produce(producer, first)
    org.wait_status(first["order_id"], "accepted")
    stack.stack("stop-component", "redis")
    try:
        cmds = [org.create(), org.create(sku="NOPE-2")]
        for c in cmds:
            produce(producer, c)
        org.wait_status(cmds[0]["order_id"], "accepted")
        org.wait_status(cmds[1]["order_id"], "rejected")
        wait_until("/readyz to report Redis down", lambda: redis_check() is False, timeout=20)
        produce(producer, org.transition(first["order_id"], "cancelled"))
        org.wait_status(first["order_id"], "cancelled")
    finally:
        stack.stack("start-component", "redis")
    wait_until("/readyz to report Redis up", lambda: redis_check() is True, timeout=20)
    assert_redis_counts_exact(stack, org)


# --- sbctl -------------------------------------------------------------------------------------


def test_sbctl_customers_and_rules(stack, org):
    listing = stack.sbctl("customers", "list", "--org", org.slug).stdout
    assert "acme" in listing and "express-eu" in listing and "plain" in listing
    # Running create again updates; --route '' returns the customer to the default route.
    stack.sbctl("customers", "create", "--org", org.slug, "acme", "--route", "")
    assert stack.sql("SELECT name, route FROM customers WHERE org_id = %s AND id = 'acme'",
                     org.id) == [("ACME Corp", None)]

    bad = stack.sbctl("order-rules", "set", "--org", org.slug, "--sku", "a b",
                      "--max-quantity", "5", check=False)
    assert bad.returncode == 2 and "invalid sku" in bad.stderr
    bad = stack.sbctl("order-rules", "set", "--org", org.slug, "--sku", "*",
                      "--max-quantity", "0", check=False)
    assert bad.returncode == 2 and "--max-quantity" in bad.stderr
    bad = stack.sbctl("customers", "create", "--org", "no-such-org-" + uuid.uuid4().hex[:8], "x",
                      check=False)
    assert bad.returncode == 1 and "no organization" in bad.stderr
    bad = stack.sbctl("customers", "create", "--org", org.slug, "--route", "no spaces", "x",
                      check=False)
    assert bad.returncode == 2 and "invalid route" in bad.stderr
    assert stack.sbctl("customers", "--help").stdout.startswith("Usage: sbctl customers")
    assert stack.sbctl("order-rules", "--help").stdout.startswith("Usage: sbctl order-rules")
