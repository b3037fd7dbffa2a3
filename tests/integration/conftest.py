"""Fixtures for the integration tests: they run against the real stack that scripts/test starts
(Kafka in KRaft mode, PostgreSQL, Redis, S3Proxy and the project's daemons, all on 127.0.0.1).

The stack describes itself in $SB_RUN_DIR/stack.env; nothing here starts a component or assumes
a port.
"""

import os
import pathlib
import shlex
import subprocess
import time
import uuid

import psycopg
import pytest
import requests
from confluent_kafka import Consumer, TopicPartition

REPO = pathlib.Path(__file__).resolve().parents[2]
READINGS_TOPIC = "sensor.readings.v1"


def load_stack_env():
    run_dir = pathlib.Path(os.environ.get("SB_RUN_DIR", REPO / ".run-test"))
    path = run_dir / "stack.env"
    if not path.exists():
        pytest.exit(f"{path} not found: start the stack with scripts/test (or scripts/run)", 2)
    env = {}
    for line in path.read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("export "):
            line = line[len("export "):]
        key, _, value = line.partition("=")
        parts = shlex.split(value) if value else [""]
        env[key] = parts[0] if parts else ""
    return env


STACK = load_stack_env()


def wait_until(what, predicate, timeout=60.0, interval=0.1):
    """Polls predicate() until it returns a truthy value; fails the test naming `what`."""
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = predicate()
        if last:
            return last
        time.sleep(interval)
    pytest.fail(f"timed out after {timeout:.0f}s waiting for {what} (last value: {last!r})")


class Stack:
    def __init__(self, env):
        self.env = env
        self.url = env["SB_GATEWAY_URL"].rstrip("/")
        self.pg_dsn = env["SB_PG_DSN"]
        self.kafka = env["SB_KAFKA_BOOTSTRAP"]
        self.build_dir = pathlib.Path(env.get("SB_BUILD_DIR", REPO / "build-test"))
        self.http = requests.Session()

    # --- tools -------------------------------------------------------------------------------
    def sbctl(self, *args, check=True):
        env = dict(os.environ)
        env.update(self.env)
        res = subprocess.run([str(self.build_dir / "sbctl"), *args], env=env,
                             capture_output=True, text=True, timeout=60)
        if check and res.returncode != 0:
            raise AssertionError(f"sbctl {' '.join(args)} failed ({res.returncode}): {res.stderr}")
        return res

    def stack(self, *args):
        env = dict(os.environ)
        env.update(self.env)
        res = subprocess.run([str(REPO / "scripts/stack"), *args], env=env, capture_output=True,
                             text=True, timeout=180)
        if res.returncode != 0:
            raise AssertionError(f"scripts/stack {' '.join(args)} failed: {res.stdout}{res.stderr}")
        return res

    def new_tenant(self, scopes="ingest,read"):
        """A fresh organisation, project and API key, so that tests never see each other's rows."""
        slug = "t" + uuid.uuid4().hex[:12]
        self.sbctl("orgs", "create", slug)
        project_id = self.sbctl("projects", "create", slug, "p1").stdout.strip()
        token = self.sbctl("keys", "create", "--org", slug, "--project", "p1", "--name", "test",
                           "--scopes", scopes).stdout.strip()
        assert token.startswith("lok_"), token
        return Tenant(self, slug, project_id, token)

    def new_person(self, password=None):
        """A person who registered with an organization of their own (its admin), signed in."""
        email = f"p-{uuid.uuid4().hex[:12]}@example.com"
        slug = "o" + uuid.uuid4().hex[:12]
        password = password or "pw-" + uuid.uuid4().hex
        r = self.http.post(self.url + "/auth/register", timeout=30, json={
            "email": email, "password": password, "name": "Test Person", "organization": slug})
        assert r.status_code == 201, f"/auth/register: {r.status_code} {r.text}"
        return Person(self, email, password, slug, r.json())

    # --- PostgreSQL --------------------------------------------------------------------------
    def sql(self, query, *params):
        with psycopg.connect(self.pg_dsn, autocommit=True) as conn:
            return conn.execute(query, params).fetchall()

    # --- Kafka -------------------------------------------------------------------------------
    def high_watermarks(self, topic=READINGS_TOPIC):
        """Sum of the topic's high watermarks: grows by one for every record Kafka accepted."""
        c = Consumer({"bootstrap.servers": self.kafka, "group.id": "sb-test-watermarks",
                      "enable.auto.commit": False})
        try:
            md = c.list_topics(topic, timeout=10)
            parts = md.topics[topic].partitions
            total = 0
            for p in parts:
                lo, hi = c.get_watermark_offsets(TopicPartition(topic, p), timeout=10)
                total += hi
            return total
        finally:
            c.close()

    def read_topic(self, topic, timeout=20.0):
        """Every record currently in `topic`, read from the beginning."""
        c = Consumer({"bootstrap.servers": self.kafka, "group.id": "sb-test-" + uuid.uuid4().hex,
                      "auto.offset.reset": "earliest", "enable.auto.commit": False,
                      "enable.partition.eof": True})
        try:
            md = c.list_topics(topic, timeout=10)
            nparts = len(md.topics[topic].partitions)
            c.subscribe([topic])
            out, eof = [], set()
            deadline = time.monotonic() + timeout
            while len(eof) < nparts and time.monotonic() < deadline:
                m = c.poll(0.5)
                if m is None:
                    continue
                if m.error():
                    if m.error().code() == -191:  # _PARTITION_EOF
                        eof.add(m.partition())
                        continue
                    raise AssertionError(str(m.error()))
                out.append(m)
            if len(eof) < nparts:
                raise AssertionError(f"read only {len(eof)} of {nparts} partitions of {topic} "
                                     f"to the end within {timeout:.0f}s")
            return out
        finally:
            c.close()


class Tenant:
    def __init__(self, stack, org_slug, project_id, token):
        self.stack = stack
        self.org_slug = org_slug
        self.project_id = project_id
        self.token = token

    def post(self, body, token=None, headers=None, raw=None, content_type="application/json"):
        h = {"Authorization": f"Bearer {token or self.token}", "Content-Type": content_type}
        h.update(headers or {})
        data = raw if raw is not None else __import__("json").dumps(body)
        return self.stack.http.post(self.stack.url + "/sensors/data", data=data, headers=h,
                                    timeout=30)

    def row_count(self, ids=None):
        if ids is None:
            return self.stack.sql("SELECT count(*) FROM sensor_readings WHERE project_id = %s",
                                  self.project_id)[0][0]
        return self.stack.sql("SELECT count(*) FROM sensor_readings WHERE project_id = %s "
                              "AND reading_id = ANY(%s::uuid[])", self.project_id, list(ids))[0][0]


class Person:
    """A person with an organization of their own (POST /auth/register, so they are its admin)
    and an access token (POST /auth/token). get/post/put/delete call the gateway as them."""

    def __init__(self, stack, email, password, org_slug, body):
        self.stack = stack
        self.email = email
        self.password = password
        self.org_slug = org_slug
        self.user_id = body["user"]["id"]
        self._org_id = body["organization"]["id"]
        self.access_token = None
        self.refresh_token = None
        self.sign_in()

    def sign_in(self):
        r = self.stack.http.post(self.stack.url + "/auth/token", timeout=30, json={
            "email": self.email, "password": self.password, "organization": self.org_slug})
        assert r.status_code == 200, f"/auth/token: {r.status_code} {r.text}"
        body = r.json()
        self.access_token = body["access_token"]
        self.refresh_token = body.get("refresh_token")
        return self

    @property
    def org_id(self):
        return self._org_id

    def headers(self, extra=None):
        h = {"Authorization": f"Bearer {self.access_token}"}
        h.update(extra or {})
        return h

    def request(self, method, path, headers=None, **kw):
        return self.stack.http.request(method, self.stack.url + path, timeout=30,
                                       headers=self.headers(headers), **kw)

    def get(self, path, **kw):
        return self.request("GET", path, **kw)

    def post(self, path, body=None, **kw):
        return self.request("POST", path, json=body, **kw)

    def put(self, path, body=None, **kw):
        return self.request("PUT", path, json=body, **kw)

    def delete(self, path, **kw):
        return self.request("DELETE", path, **kw)

    def new_project(self, slug=None):
        """A project in this person's organization (sbctl, the operator's way); its id."""
        slug = slug or "p" + uuid.uuid4().hex[:10]
        return self.stack.sbctl("projects", "create", self.org_slug, slug).stdout.strip()


@pytest.fixture(scope="session")
def stack():
    s = Stack(STACK)
    r = requests.get(s.url + "/readyz", timeout=10)
    assert r.status_code == 200, f"gateway not ready: {r.status_code} {r.text}"
    return s


@pytest.fixture
def tenant(stack):
    return stack.new_tenant()


@pytest.fixture
def person(stack):
    return stack.new_person()


def reading(sensor_id="s-1", value=21.5, **extra):
    doc = {"sensor_id": sensor_id, "value": value}
    doc.update(extra)
    return doc
