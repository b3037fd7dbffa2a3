"""sb-s3-archiver on the real stack: gateway -> Kafka -> archiver -> S3Proxy (SigV4 checked).

The objects are read back with a SigV4 client written here (not the project's libs/s3), gunzipped
and counted: every acknowledged reading id must be in exactly one object, across a SIGKILL of
the archiver and an S3 outage. `sbctl archive verify` must find no gap, and must name one when
an object is deleted.
"""

import collections
import datetime as dt
import gzip
import hashlib
import hmac
import json
import os
import subprocess
import threading
import time
import urllib.parse
import uuid
import xml.etree.ElementTree as ET

import pytest
import requests

from conftest import REPO, reading, wait_until

TOPIC = "sensor.readings.v1"
PREFIX = "archive"
# Small objects and a short age, so that a test sees many objects within seconds; commits
# every 10 s, so that a SIGKILL reliably finds objects uploaded but not yet committed.
FAST = ("SB_S3_ARCHIVER_FLUSH_AGE_MS=1000 SB_S3_ARCHIVER_FLUSH_RECORDS=100 "
        "SB_S3_ARCHIVER_KAFKA_AUTO_COMMIT_INTERVAL_MS=10000")
S3_NS = "{http://s3.amazonaws.com/doc/2006-03-01/}"


class S3:
    """Just enough of S3 for the test: signed GET, PUT, DELETE, HEAD and ListObjectsV2."""

    def __init__(self, env):
        self.endpoint = env["SB_S3_ENDPOINT"].rstrip("/")
        self.bucket = env["SB_S3_BUCKET"]
        self.access_key = env["SB_S3_ACCESS_KEY"]
        self.secret_key = env["SB_S3_SECRET_KEY"]
        self.region = "us-east-1"
        self.http = requests.Session()

    def request(self, method, key="", query=None, body=b"", headers=None):
        quote = lambda s: urllib.parse.quote(s, safe="-_.~")  # noqa: E731
        path = "/" + self.bucket + ("/" + urllib.parse.quote(key, safe="/-_.~") if key else "")
        q = "&".join(f"{quote(k)}={quote(v)}" for k, v in sorted((query or {}).items()))
        amz_date = dt.datetime.now(dt.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
        payload = hashlib.sha256(body).hexdigest()
        h = {"host": urllib.parse.urlparse(self.endpoint).netloc, "x-amz-date": amz_date,
             "x-amz-content-sha256": payload}
        h.update({k.lower(): v.strip() for k, v in (headers or {}).items()})
        signed = ";".join(sorted(h))
        canonical = "\n".join([method, path, q, "".join(f"{k}:{h[k]}\n" for k in sorted(h)),
                               signed, payload])
        scope = f"{amz_date[:8]}/{self.region}/s3/aws4_request"
        to_sign = "\n".join(["AWS4-HMAC-SHA256", amz_date, scope,
                             hashlib.sha256(canonical.encode()).hexdigest()])
        k = ("AWS4" + self.secret_key).encode()
        for part in (amz_date[:8], self.region, "s3", "aws4_request"):
            k = hmac.new(k, part.encode(), hashlib.sha256).digest()
        sig = hmac.new(k, to_sign.encode(), hashlib.sha256).hexdigest()
        h["authorization"] = (f"AWS4-HMAC-SHA256 Credential={self.access_key}/{scope}, "
                              f"SignedHeaders={signed}, Signature={sig}")
        del h["host"]
        url = self.endpoint + path + ("?" + q if q else "")
        return self.http.request(method, url, data=body, headers=h, timeout=30)

    def list(self, prefix):
        keys, token = [], None
        while True:
            query = {"list-type": "2", "prefix": prefix}
            if token:
                query["continuation-token"] = token
            r = self.request("GET", query=query)
            assert r.status_code == 200, r.text
            root = ET.fromstring(r.content)
            keys += [c.find(S3_NS + "Key").text for c in root.findall(S3_NS + "Contents")]
            if root.findtext(S3_NS + "IsTruncated") != "true":
                return keys
            token = root.findtext(S3_NS + "NextContinuationToken")

    def get(self, key):
        r = self.request("GET", key)
        assert r.status_code == 200, f"GET {key}: {r.status_code} {r.text}"
        return r.content, {k.lower()[len("x-amz-meta-"):]: v for k, v in r.headers.items()
                           if k.lower().startswith("x-amz-meta-")}


def stack_run(stack, *args, daemon_env=None):
    env = dict(os.environ)
    env.update(stack.env)
    if daemon_env is not None:
        env["SB_DAEMON_ENV"] = daemon_env
    res = subprocess.run([str(REPO / "scripts/stack"), *args], env=env, capture_output=True,
                         text=True, timeout=180)
    assert res.returncode == 0, f"scripts/stack {' '.join(args)}: {res.stdout}{res.stderr}"


def archiver_ready(stack):
    try:
        return requests.get(stack.env["SB_HEALTH_URL_S3_ARCHIVER"], timeout=5).status_code == 200
    except requests.RequestException:
        return False


def archiver_metric(stack, name):
    url = stack.env["SB_HEALTH_URL_S3_ARCHIVER"].rsplit("/", 1)[0] + "/metrics"
    for line in requests.get(url, timeout=5).text.splitlines():
        if line.startswith(name + " ") or line.startswith(name + "{"):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"{name} not in {url}")


def uncommitted_objects(stack):
    """Partitions with an object at or above the archiver group's committed offset (or with
    objects and nothing committed yet)."""
    _, doc = verify_json(stack)
    assert doc["kafka"], "Kafka must answer the verifier"
    return [(t["topic"], p["partition"]) for t in doc["topics"] for p in t["partitions"]
            if p["covered"] and (p["committed"] is None
                                 or p["covered"][-1]["to"] >= p["committed"])]


def verify(stack, *args):
    res = stack.sbctl("archive", "verify", *args, check=False)
    return res


def verify_json(stack):
    res = verify(stack, "--json")
    assert res.stdout.strip(), f"sbctl archive verify printed nothing: {res.stderr}"
    return res.returncode, json.loads(res.stdout)


def caught_up(stack, topic=TOPIC):
    """The verifier's report once every record Kafka has is archived and committed."""
    rc, doc = verify_json(stack)
    if not doc["kafka"]:
        return None
    for t in doc["topics"]:
        if t["topic"] != topic:
            continue
        for p in t["partitions"]:
            end = p["high_watermark"]
            if p["gaps"] or (end > p["log_start"] and p["committed"] != end):
                return None
        return doc if rc == 0 else None
    return None


def archived_readings(s3, project_id):
    """reading id -> number of times it is archived, for one project; checks every object."""
    seen = collections.Counter()
    for key in s3.list(f"{PREFIX}/{TOPIC}/"):
        data, meta = s3.get(key)
        base = key.rsplit("/", 1)[1]
        assert base.endswith(".json.gz"), key
        topic, partition, first = base[:-len(".json.gz")].rsplit("+", 2)
        assert topic == TOPIC
        lines = gzip.decompress(data).decode().splitlines()
        recs = [json.loads(line) for line in lines]
        offsets = [r["offset"] for r in recs]
        assert recs and offsets == sorted(set(offsets)), f"{key}: offsets {offsets[:10]}..."
        assert offsets[0] == int(first) == int(meta["sb-first-offset"]), key
        assert offsets[-1] == int(meta["sb-last-offset"]), key
        assert len(recs) == int(meta["sb-records"]), key
        hour = key.split("/")[-3:-1]
        for r in recs:
            assert r["topic"] == TOPIC and r["partition"] == int(partition), key
            # Records that are not JSON (poison records other tests produce) are kept too,
            # as value null plus value_base64: the archive is the topic's, byte for byte.
            assert isinstance(r["value"], dict) or "value_base64" in r, f"{key}: {r!r}"
            ts = dt.datetime.fromtimestamp(r["timestamp_ms"] / 1000, dt.timezone.utc)
            assert hour == [ts.strftime("dt=%Y-%m-%d"), ts.strftime("hour=%H")], key
            if r["headers"].get("sb-project-id") == project_id and isinstance(r["value"], dict):
                seen[r["value"]["id"]] += 1
    return seen


def post_readings(tenant, n, per_request=50, acked=None):
    acked = set() if acked is None else acked
    now = dt.datetime.now(dt.timezone.utc)
    for start in range(0, n, per_request):
        batch = [reading(f"arch-{i % 17}", float(i), id=str(uuid.uuid4()),
                         ts=(now + dt.timedelta(milliseconds=i)).isoformat())
                 for i in range(start, min(n, start + per_request))]
        deadline = time.monotonic() + 60
        while True:
            r = tenant.post(batch)
            if r.status_code == 202:
                acked.update(r.json()["ids"])
                break
            assert r.status_code == 503 and time.monotonic() < deadline, r.text
            time.sleep(0.2)
    return acked


@pytest.fixture(scope="module")
def fast_archiver(stack):
    """The archiver with small, young objects; the stack's own settings again afterwards."""
    base = stack.env.get("SB_DAEMON_ENV", "")
    stack_run(stack, "restart", "s3-archiver", daemon_env=f"{base} {FAST}".strip())
    yield base
    stack_run(stack, "restart", "s3-archiver", daemon_env=base)


@pytest.fixture(scope="module")
def s3(stack):
    return S3(stack.env)


def test_every_reading_is_archived_once_across_a_sigkill(stack, fast_archiver, s3):
    tenant = stack.new_tenant()
    acked = set()
    errors = []

    def produce():
        try:
            post_readings(tenant, 1500, acked=acked)
        except Exception as e:  # noqa: BLE001  (reported by the main thread)
            errors.append(e)

    t = threading.Thread(target=produce)
    t.start()
    # Mid-stream: once objects of this run are in S3, so that some of them are uploaded but
    # not yet committed when the process dies.
    wait_until("some readings posted", lambda: len(acked) >= 500, timeout=60)
    wait_until("an object uploaded but not yet committed", lambda: uncommitted_objects(stack),
               timeout=30, interval=0.05)
    stack_run(stack, "kill", "s3-archiver")
    # Measured once the process is dead: no commit can follow.
    left_uncommitted = uncommitted_objects(stack)
    stack_run(stack, "start-daemon", "s3-archiver", daemon_env=f"{fast_archiver} {FAST}".strip())
    t.join(timeout=120)
    assert not errors, errors
    assert len(acked) == 1500

    doc = wait_until("the archive to cover every reading", lambda: caught_up(stack),
                     timeout=120, interval=1.0)
    readings = next(t for t in doc["topics"] if t["topic"] == TOPIC)
    assert sum(p["objects"] for p in readings["partitions"]) > 6, "expected several objects"
    assert all(not p["overlaps"] for p in readings["partitions"]), readings

    if left_uncommitted:
        # The restarted run re-read records the killed one had uploaded: it must have found
        # those objects and skipped what they cover rather than rewritten them.
        assert archiver_metric(stack, "sb_archiver_records_skipped_total") > 0

    seen = archived_readings(s3, tenant.project_id)
    assert set(seen) == acked, f"{len(acked - set(seen))} acknowledged readings not archived"
    dup = [i for i, n in seen.items() if n > 1]
    assert not dup, f"{len(dup)} readings archived more than once"


def test_s3_outage_loses_nothing_and_shows_in_readyz(stack, fast_archiver, s3):
    tenant = stack.new_tenant()
    acked = post_readings(tenant, 200)
    wait_until("the archiver ready", lambda: archiver_ready(stack), timeout=60)
    stack_run(stack, "stop-component", "s3")
    try:
        post_readings(tenant, 300, acked=acked)
        wait_until("/readyz to report S3 down", lambda: not archiver_ready(stack), timeout=60)
        post_readings(tenant, 300, acked=acked)
    finally:
        stack_run(stack, "start-component", "s3")
    wait_until("/readyz to recover", lambda: archiver_ready(stack), timeout=90)
    wait_until("the archive to cover every reading", lambda: caught_up(stack), timeout=120,
               interval=1.0)

    seen = archived_readings(s3, tenant.project_id)
    assert set(seen) == acked, f"{len(acked - set(seen))} acknowledged readings not archived"
    assert max(seen.values()) == 1


def test_verify_names_the_gap_of_a_deleted_object(stack, fast_archiver, s3):
    tenant = stack.new_tenant()

    def partition_with_three_objects():
        post_readings(tenant, 120)
        doc = wait_until("the archive to catch up", lambda: caught_up(stack), timeout=120,
                         interval=1.0)
        topic = next(t for t in doc["topics"] if t["topic"] == TOPIC)
        return next((p for p in topic["partitions"] if p["objects"] >= 3), None)

    partition = wait_until("a partition with three objects", partition_with_three_objects,
                           timeout=240, interval=0)["partition"]
    keys = [k for k in s3.list(f"{PREFIX}/{TOPIC}/")
            if k.rsplit("/", 1)[1].split("+")[1] == str(partition)]
    keys.sort(key=lambda k: int(k.rsplit("+", 1)[1].split(".")[0]))
    victim = keys[len(keys) // 2]
    data, meta = s3.get(victim)
    first, last = int(meta["sb-first-offset"]), int(meta["sb-last-offset"])

    assert s3.request("DELETE", victim).status_code == 204
    try:
        res = verify(stack, "--topic", TOPIC)
        assert res.returncode == 1, res.stdout + res.stderr
        assert f"gap {TOPIC} [{partition}] offsets {first}-{last} ({last - first + 1} missing)" \
            in res.stdout, res.stdout
        assert "1 gaps" in res.stdout, res.stdout
    finally:
        headers = {"content-type": "application/gzip"}
        headers.update({f"x-amz-meta-{k}": v for k, v in meta.items()})
        r = s3.request("PUT", victim, body=data, headers=headers)
        assert r.status_code == 200, r.text
    res = verify(stack, "--topic", TOPIC)
    assert res.returncode == 0, res.stdout + res.stderr
