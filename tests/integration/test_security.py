"""The API's locks, attacked: forged and misused JWTs, API keys that must not work, one
organization against another's data across every route of the OpenAPI spec, the JWT signing
options and the external OIDC issuer, and secrets that must never reach a log or a Kafka record.
"""

import json
import os
import pathlib
import re
import socket
import subprocess
import time
import uuid

import pytest
from confluent_kafka.admin import AdminClient
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa, utils

from conftest import REPO, wait_until
from sb_api import (OIDC_KID, SPEC, Org, assert_problem, b64url, b64url_decode, cognito_claims,
                    cognito_token, jwt_parts, jwt_secret, jwt_sign, oidc_key, oidc_settings,
                    operations)

# Endpoints that authenticate through gw_auth_require(), each with what a valid admin's token
# gets there: the JWT attacks must turn every one of them into 401.
GUARDED = [("GET", "/sensors"), ("GET", "/orders"), ("GET", "/projects"),
           ("GET", "/api-keys"), ("GET", "/sensors/data"), ("POST", "/sensors/data")]


@pytest.fixture(scope="module")
def org_a(stack):
    return Org(stack)


@pytest.fixture(scope="module")
def org_b(stack):
    return Org(stack)


def call(org, method, path, token, **kw):
    if method == "POST" and path == "/sensors/data":
        kw.setdefault("params", {"project_id": org.project_id})
        kw.setdefault("json", {"sensor_id": "sec-1", "value": 1.0})
    return org.request(method, path, token=token, **kw)


# ---- JWT attacks ----------------------------------------------------------------------------


def own_claims(org, **over):
    now = int(time.time())
    claims = {"iss": "sensorbus", "aud": "sensorbus-api", "sub": org.user_id, "org": org.org_id,
              "roles": ["admin"], "iat": now, "exp": now + 300, "jti": str(uuid.uuid4())}
    claims.update(over)
    return {k: v for k, v in claims.items() if v is not None}


def jwt_attacks(org):
    """(name, token) pairs, each a token the gateway must refuse."""
    secret = jwt_secret()
    hs = {"alg": "HS256", "typ": "JWT"}
    now = int(time.time())
    real = org.sign_in()
    header, payload = real.split(".")[:2]
    tampered_payload = jwt_parts(real)[1] | {"roles": ["admin"], "org": str(uuid.uuid4())}
    public_pem = oidc_key().public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    return [
        ("alg none", jwt_sign({"alg": "none", "typ": "JWT"}, own_claims(org))),
        ("alg None", jwt_sign({"alg": "None", "typ": "JWT"}, own_claims(org))),
        # Algorithm confusion: HS256 keyed with the trusted issuer's RSA public key (a PEM any
        # attacker can fetch), claiming to be that issuer's token.
        ("HS256 with the RSA public key",
         jwt_sign({"alg": "HS256", "kid": OIDC_KID, "typ": "JWT"},
                  cognito_claims(org.org_id, ["sb-admins"]), public_pem)),
        ("HS256 with the RSA public key, no kid",
         jwt_sign(hs, cognito_claims(org.org_id, ["sb-admins"]), public_pem)),
        ("unexpected alg HS512", jwt_sign({"alg": "HS512", "typ": "JWT"}, own_claims(org), secret)),
        ("unexpected alg RS256 header on an HS256 MAC",
         jwt_sign(hs, own_claims(org), secret).replace(
             b64url(json.dumps(hs).encode()), b64url(json.dumps({"alg": "RS256"}).encode()), 1)),
        ("expired", jwt_sign(hs, own_claims(org, iat=now - 1000, exp=now - 120), secret)),
        ("not yet valid (nbf)", jwt_sign(hs, own_claims(org, nbf=now + 600), secret)),
        ("issued in the future", jwt_sign(hs, own_claims(org, iat=now + 600), secret)),
        ("wrong iss", jwt_sign(hs, own_claims(org, iss="https://evil.example"), secret)),
        ("wrong aud", jwt_sign(hs, own_claims(org, aud="another-api"), secret)),
        ("no exp", jwt_sign(hs, own_claims(org, exp=None), secret)),
        ("tampered payload", header + "." + b64url(json.dumps(tampered_payload).encode()) + "." +
         real.split(".")[2]),
        ("signature stripped", header + "." + payload + "."),
        ("wrong secret", jwt_sign(hs, own_claims(org), b"x" * 32)),
        ("kid holding a path", jwt_sign({"alg": "HS256", "kid": "../../../../../../dev/null"},
                                        own_claims(org), b"")),
        ("kid holding a path, signed with the secret",
         jwt_sign({"alg": "HS256", "kid": "/etc/passwd"}, own_claims(org), secret)),
        ("kid holding SQL", jwt_sign({"alg": "HS256", "kid": "x' OR '1'='1"}, own_claims(org),
                                     secret)),
        ("OIDC token for another audience",
         cognito_token(org.org_id, ["sb-admins"], aud="another-client")),
        ("OIDC claims with our issuer's name", cognito_token(org.org_id, ["sb-admins"],
                                                            iss="sensorbus", aud="sensorbus-api")),
        ("not a JWT", "eyJhbGciOiJIUzI1NiJ9"),
        ("garbage", "%%%.%%%.%%%"),
    ]


def test_a_correctly_signed_token_is_accepted_everywhere_attacked(org_a):
    """The control: the harness's own well-formed token works, so each 401 below is the
    gateway refusing the attack, not the harness failing."""
    token = jwt_sign({"alg": "HS256", "typ": "JWT"}, own_claims(org_a), jwt_secret())
    for method, path in GUARDED:
        r = call(org_a, method, path, token)
        assert r.status_code < 400, f"{method} {path}: {r.status_code} {r.text}"


def test_jwt_attacks_are_401_on_every_guarded_endpoint(org_a):
    for name, token in jwt_attacks(org_a):
        for method, path in GUARDED:
            r = call(org_a, method, path, token)
            doc = assert_problem(r, 401, "unauthorized")
            assert "invalid_token" in r.headers.get("WWW-Authenticate", "") or \
                "access token" in doc["detail"] or "Bearer" in doc["detail"], (name, doc)


# ---- API keys -------------------------------------------------------------------------------


def test_api_keys_that_must_not_work_are_401(stack, org_a):
    prefix_part, secret = org_a.key.split(".", 1)
    malformed = ["lok_", "lok_abc", "lok_" + "a" * 12, "lok_" + "a" * 12 + ".",
                 "lok_" + "A" * 12 + "." + secret, prefix_part + "." + secret + " extra",
                 prefix_part + "." + secret[:-1], prefix_part + "..", "lok_" + secret]
    wrong = [prefix_part + "." + secret[::-1], prefix_part + "." + "A" * len(secret),
             "lok_" + "b" * 12 + "." + secret]
    for token in malformed + wrong:
        for method, path in [("GET", "/sensors"), ("POST", "/sensors/data"), ("GET", "/orders")]:
            assert_problem(call(org_a, method, path, token), 401, "unauthorized")

    # Revoked and expired: the key cache holds a lookup for key_cache_ttl_ms (1 s in the test
    # stack), so each is polled until it shows.
    revoked = org_a.new_key("read", name="to-revoke")
    assert call(org_a, "GET", "/sensors", revoked).status_code == 200
    stack.sbctl("keys", "revoke", revoked.split(".")[0][4:])
    wait_until("the revoked key refused",
               lambda: call(org_a, "GET", "/sensors", revoked).status_code == 401, timeout=15)
    assert "revoked" in assert_problem(call(org_a, "GET", "/sensors", revoked), 401)["detail"]

    expired = org_a.new_key("read", name="to-expire")
    assert call(org_a, "GET", "/sensors", expired).status_code == 200
    stack.sql("UPDATE api_keys SET expires_at = now() - interval '1 minute' WHERE prefix = %s "
              "RETURNING id",
              expired.split(".")[0][4:])
    wait_until("the expired key refused",
               lambda: call(org_a, "GET", "/sensors", expired).status_code == 401, timeout=15)
    assert "expired" in assert_problem(call(org_a, "GET", "/sensors", expired), 401)["detail"]


def test_api_key_without_the_scope_is_403(org_a):
    ingest_only, read_only = org_a.new_key("ingest"), org_a.new_key("read")
    assert_problem(call(org_a, "GET", "/sensors", ingest_only), 403, "forbidden")
    assert_problem(call(org_a, "GET", "/orders", ingest_only), 403, "forbidden")
    assert_problem(call(org_a, "POST", "/sensors/data", read_only), 403, "forbidden")
    assert_problem(org_a.post("/orders", token=read_only, json={}), 403, "forbidden")
    # People-only routes refuse every key.
    assert_problem(call(org_a, "GET", "/projects", org_a.key), 401, "unauthorized")
    # And the scope it has works.
    assert call(org_a, "GET", "/sensors", read_only).status_code == 200
    assert call(org_a, "POST", "/sensors/data", ingest_only).status_code == 202


# ---- one organization against another --------------------------------------------------------


@pytest.fixture(scope="module")
def a_data(stack, org_a):
    """Org A's resources, one of each kind the API has ids for."""
    sensor_id = "sec-" + uuid.uuid4().hex[:10]
    r = org_a.post("/sensors", token=org_a.access_token, params={"project_id": org_a.project_id},
                   json={"id": sensor_id, "type": "temperature", "unit": "Cel"})
    assert r.status_code == 201, r.text
    r = org_a.post("/sensors/data", token=org_a.key, json={"sensor_id": sensor_id, "value": 4.5})
    assert r.status_code == 202, r.text
    reading_id = r.json()["ids"][0]
    r = org_a.post("/orders", token=org_a.key, json={
        "customer_id": "cust-" + uuid.uuid4().hex[:8], "sku": "SB-TEMP-100", "quantity": 2,
        "shipping": {"name": "A", "line1": "1 A St", "city": "Aville", "postal_code": "1000",
                     "country": "DE"}})
    assert r.status_code == 202, r.text
    order_id = r.json()["order_id"]
    key_id = str(stack.sql("SELECT id FROM api_keys WHERE prefix = %s", org_a.prefix)[0][0])
    wait_until("A's reading stored", lambda: stack.sql(
        "SELECT count(*) FROM sensor_readings WHERE reading_id = %s", reading_id)[0][0] == 1)
    return {"sensor": sensor_id, "order": order_id, "key": key_id, "member": org_a.user_id,
            "reading": reading_id}


# A path's {id} is the id of org A's resource of that kind.
PATH_IDS = {"/sensors/{id}": "sensor", "/orders/{id}": "order", "/orders/{id}/status": "order",
            "/api-keys/{id}": "key", "/members/{id}": "member"}


def cross_org_request(org_a, a_data, path, method, op):
    """The request org B makes against org A's data on one operation: A's ids in the path,
    A's project in project_id (query or body), the spec's example as the body. Returns
    (url path, params, body, whether it names something of A's)."""
    names_a = False
    url = path
    for param in re.findall(r"\{(\w+)\}", path):
        kind = PATH_IDS.get(path)
        assert kind, f"{method.upper()} {path}: add org A's resource for {{{param}}} to PATH_IDS"
        url = url.replace("{" + param + "}", a_data[kind])
        names_a = True
    params = {}
    for p in op.get("parameters", []):
        p = SPEC["components"]["parameters"][p["$ref"].rsplit("/", 1)[-1]] if "$ref" in p else p
        if p["in"] == "query" and p["name"] == "project_id":
            params["project_id"] = org_a.project_id
            names_a = True
    body = None
    media = op.get("requestBody", {}).get("content", {}).get("application/json")
    if media:
        body = json.loads(json.dumps(media["example"]))
        if isinstance(body, dict) and "project_id" in resolve(media["schema"]).get("properties",
                                                                                    {}):
            body["project_id"] = org_a.project_id
            names_a = True
    return url, params, body, names_a


def resolve(schema):
    while "$ref" in schema:
        schema = SPEC["components"]["schemas"][schema["$ref"].rsplit("/", 1)[-1]]
    return schema


def test_another_organization_can_neither_read_nor_change_our_data(stack, org_a, org_b, a_data):
    markers = {org_a.org_id, org_a.project_id, org_a.prefix, org_a.user_id, org_a.email,
               org_a.slug, a_data["sensor"], a_data["order"], a_data["key"], a_data["reading"]}
    checked, problems = [], []
    for path, method, op in operations():
        schemes = {name for req in op.get("security", []) for name in req}
        if not schemes or path.startswith("/auth/"):
            continue  # public, or about the caller alone
        url, params, body, names_a = cross_org_request(org_a, a_data, path, method, op)
        for kind in sorted(schemes):
            token = org_b.key if kind == "apiKey" else org_b.access_token
            r = org_b.request(method.upper(), url, token=token, params=params, json=body)
            label = f"org B ({kind}) {method.upper()} {url} {params or ''}"
            checked.append(label)
            if r.status_code >= 500:
                problems.append(f"{label}: {r.status_code} {r.text[:200]}")
            # Another organization's resource: refused, never revealed. A body naming A's
            # project may also be refused as an invalid field.
            allowed = {403, 404} | ({422} if body and "project_id" in body else set())
            if names_a and r.status_code not in allowed:
                problems.append(f"{label}: {r.status_code}, not one of {sorted(allowed)}: "
                                f"{r.text[:200]}")
            # Echoing back an id B sent (in a 404's detail) reveals nothing.
            sent = url + json.dumps(params) + json.dumps(body)
            leaked = [m for m in markers if m in r.text and m not in sent]
            if leaked:
                problems.append(f"{label}: the answer holds org A's {leaked}: {r.text[:200]}")
    assert len(checked) >= 20, checked
    assert not problems, "\n".join(problems)

    # Nothing of A's changed: its key still works, its member and sensor are there, and no
    # command was produced for its order.
    assert call(org_a, "GET", "/sensors", org_a.key).status_code == 200
    assert stack.sql("SELECT count(*) FROM memberships WHERE user_id = %s AND org_id = %s",
                     org_a.user_id, org_a.org_id)[0][0] == 1
    assert stack.sql("SELECT revoked_at FROM api_keys WHERE id = %s", a_data["key"])[0][0] is None
    r = org_a.get(f"/sensors/{a_data['sensor']}", token=org_a.access_token)
    assert r.status_code == 200, r.text
    commands = [json.loads(m.value()) for m in stack.read_topic("orders.v1")
                if m.key() and m.key().decode() == a_data["order"]]
    assert [c["type"] for c in commands] == ["create"], commands


# ---- the spec's access rules, checked against the gateway -------------------------------------

ROLES = ["viewer", "operator", "admin"]
SCOPES = ["ingest", "orders", "read"]


def member(stack, org, role):
    """A person with @role in @org: registered (their own organization first), then added."""
    other = Org(stack)
    r = org.post("/members", token=org.access_token, json={"email": other.email, "role": role})
    assert r.status_code == 201, r.text
    r = org.post("/auth/token", json={"email": other.email, "password": other.password,
                                      "organization": org.slug})
    assert r.status_code == 200, r.text
    return r.json()["access_token"]


def test_each_operation_admits_exactly_the_scope_and_role_the_spec_names(stack, org_a, a_data):
    """x-sensorbus-access in proto/openapi.yaml is the authorization table (docs/api.md shows
    it): one scope short or one role short is 403, exactly enough is let through."""
    people = {role: member(stack, org_a, role) for role in ROLES[:2]}
    people["admin"] = org_a.access_token
    keys = {scope: org_a.new_key(scope) for scope in SCOPES}
    problems = []
    for path, method, op in operations():
        access = op.get("x-sensorbus-access")
        schemes = {name for req in op.get("security", []) for name in req}
        if not access or path.startswith("/auth/"):
            continue
        url, params, body, _ = cross_org_request(org_a, a_data, path, method, op)
        params = {k: v for k, v in params.items() if k != "project_id"}
        if isinstance(body, dict) and "project_id" in body:
            body["project_id"] = org_a.project_id
        # Ids that do not exist: a 404 is past authorization, and nothing of A's is revoked,
        # removed or transitioned along the way.
        for kind, value in a_data.items():
            url = url.replace(value, "nope-1" if kind == "sensor" else str(uuid.uuid4()))

        def status(token):
            return org_a.request(method.upper(), url, token=token, params=params,
                                 json=body).status_code

        label = f"{method.upper()} {path}"
        if "role" in access:
            need = ROLES.index(access["role"])
            for i, role in enumerate(ROLES):
                got = status(people[role])
                if i < need and got != 403:
                    problems.append(f"{label} as {role}: {got}, want 403")
                if i >= need and got in (401, 403):
                    problems.append(f"{label} as {role}: {got}, want it let through")
        for scope in SCOPES:
            got = status(keys[scope])
            if "apiKey" not in schemes:
                if got not in (401, 403):
                    problems.append(f"{label} with a key: {got}, want 401/403 (people only)")
            elif scope == access.get("scope") and got in (401, 403):
                problems.append(f"{label} with scope {scope}: {got}, want it let through")
            elif scope != access.get("scope") and got != 403:
                problems.append(f"{label} with scope {scope} only: {got}, want 403")
    assert not problems, "\n".join(problems)


# ---- JWT signing options and the external issuer -------------------------------------------


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def gateway_env(stack, **settings):
    """The environment of an extra gateway on the test stack: no SB_* variable but its own."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("SB_")}
    env.update({"SB_GATEWAY_PG_DSN": stack.pg_dsn, "SB_GATEWAY_KAFKA_BOOTSTRAP_SERVERS":
                stack.kafka, "SB_GATEWAY_KEY_PEPPER_FILE": stack.env["SB_KEY_PEPPER_FILE"],
                "SB_GATEWAY_THREADS": "1", "SB_GATEWAY_PASSWORD_WORKERS": "1"})
    env.update({"SB_GATEWAY_" + k.upper(): v for k, v in settings.items()})
    return env


def private_pem(key):
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


@pytest.fixture(scope="module", params=["RS256", "ES256"])
def asym_gateway(request, stack, tmp_path_factory):
    """A second gateway on the test stack signing access tokens with jwt_alg RS256 or ES256."""
    alg = request.param
    key = rsa.generate_private_key(65537, 2048) if alg == "RS256" else \
        ec.generate_private_key(ec.SECP256R1())
    path = tmp_path_factory.mktemp("jwt") / "signing.pem"
    path.write_bytes(private_pem(key))
    path.chmod(0o600)
    port = free_port()
    log = pathlib.Path(stack.env["SB_RUN_DIR"]) / "logs" / f"gateway-{alg.lower()}.log"
    with open(log, "ab") as out:
        proc = subprocess.Popen([str(stack.build_dir / "sb-gateway")], stdout=out, stderr=out,
                                env=gateway_env(stack, listen=f"127.0.0.1:{port}", jwt_alg=alg,
                                                jwt_private_key_file=str(path)))
    url = f"http://127.0.0.1:{port}"

    def ready():
        assert proc.poll() is None, f"the {alg} gateway exited: see {log}"
        try:
            return stack.http.get(url + "/readyz", timeout=2).status_code == 200
        except OSError:
            return False

    wait_until(f"the {alg} gateway ready", ready, timeout=30)
    yield alg, key, url
    proc.terminate()
    assert proc.wait(timeout=30) == 0, f"the {alg} gateway did not stop cleanly: see {log}"


def test_rs256_and_es256_signing_and_algorithm_confusion(stack, asym_gateway):
    alg, key, url = asym_gateway
    slug = "k" + uuid.uuid4().hex[:12]
    email, password = f"{slug}@example.com", "asymmetric signing " + uuid.uuid4().hex
    r = stack.http.post(url + "/auth/register", timeout=30, json={
        "email": email, "password": password, "name": "Asym", "organization": slug})
    assert r.status_code == 201, r.text
    r = stack.http.post(url + "/auth/token", timeout=30, json={"email": email,
                                                              "password": password})
    assert r.status_code == 200, r.text
    token = r.json()["access_token"]
    header, claims = jwt_parts(token)
    assert header["alg"] == alg

    # The signature verifies with the public key: the gateway really signs with the file's key.
    signing_input, sig = token.rsplit(".", 1)
    raw = b64url_decode(sig)
    if alg == "RS256":
        key.public_key().verify(raw, signing_input.encode(), padding.PKCS1v15(), hashes.SHA256())
    else:
        der = utils.encode_dss_signature(int.from_bytes(raw[:32], "big"),
                                         int.from_bytes(raw[32:], "big"))
        key.public_key().verify(der, signing_input.encode(), ec.ECDSA(hashes.SHA256()))

    auth = {"Authorization": f"Bearer {token}"}
    assert stack.http.get(url + "/auth/me", headers=auth, timeout=30).status_code == 200
    assert stack.http.get(url + "/projects", headers=auth, timeout=30).status_code == 200
    # The main gateway (HS256) does not take it, nor does this one take an HS256 token.
    assert_problem(stack.http.get(stack.url + "/projects", headers=auth, timeout=30), 401)
    public_pem = key.public_key().public_bytes(serialization.Encoding.PEM,
                                               serialization.PublicFormat.SubjectPublicKeyInfo)
    for forged in [jwt_sign({"alg": "HS256", "typ": "JWT"}, claims, public_pem),
                   jwt_sign({"alg": "HS256", "typ": "JWT"}, claims, jwt_secret()),
                   jwt_sign({"alg": "none"}, claims)]:
        r = stack.http.get(url + "/projects", headers={"Authorization": f"Bearer {forged}"},
                           timeout=30)
        assert_problem(r, 401, "unauthorized")


@pytest.mark.parametrize("settings, complaint", [
    ({"jwt_alg": "RS256"}, "jwt_private_key_file"),
    ({"jwt_alg": "PS256"}, "HS256, RS256 or ES256"),
    ({"jwt_alg": "RS256", "jwt_private_key_file": "/nonexistent.pem"}, "/nonexistent.pem"),
    ({"jwt_alg": "RS256", "jwt_private_key_file": "PUBLIC"}, "private key"),
    ({"oidc_issuer": "https://idp.example.test"}, "oidc_audience"),
    ({"oidc_issuer": "https://idp.example.test", "oidc_audience": "x",
      "oidc_jwks_file": str(REPO / "tests/integration/oidc/jwks.json"),
      "oidc_role_map": "admins=root"}, "oidc_role_map"),
])
def test_bad_signing_or_issuer_settings_stop_the_gateway_with_a_reason(stack, tmp_path, settings,
                                                                       complaint):
    if settings.get("jwt_private_key_file") == "PUBLIC":
        pub = tmp_path / "public.pem"
        pub.write_bytes(oidc_key().public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
        settings = settings | {"jwt_private_key_file": str(pub)}
    env = gateway_env(stack, listen=f"127.0.0.1:{free_port()}", **settings)
    env["SB_GATEWAY_JWT_SECRET_FILE"] = stack.env["SB_JWT_SECRET_FILE"]
    res = subprocess.run([str(stack.build_dir / "sb-gateway")], env=env, capture_output=True,
                         text=True, timeout=30)
    assert res.returncode != 0
    assert complaint in res.stderr, res.stderr


@pytest.fixture(scope="module")
def oidc(stack):
    iss, aud = oidc_settings()
    if not iss:
        pytest.skip("the stack's gateway trusts no OIDC issuer (SB_DAEMON_ENV has no "
                    "SB_GATEWAY_OIDC_ISSUER): run through scripts/test")
    return iss, aud


def test_cognito_tokens_map_to_the_configured_org_and_role(stack, oidc, org_a, a_data):
    def as_(groups, method, path, **kw):
        return org_a.request(method, path, token=cognito_token(org_a.org_id, groups), **kw)

    reading = {"json": {"sensor_id": a_data["sensor"], "value": 2.0},
               "params": {"project_id": org_a.project_id}}
    # Viewer: reads the organization's data, may not post readings.
    r = as_(["sb-viewers"], "GET", "/sensors")
    assert r.status_code == 200, r.text
    assert a_data["sensor"] in [s["id"] for s in r.json()["items"]]
    assert_problem(as_(["sb-viewers"], "POST", "/sensors/data", **reading), 403, "forbidden")
    # Operator (unmapped groups beside it are ignored): posts readings, is no admin.
    assert as_(["eu-staff", "sb-operators"], "POST", "/sensors/data", **reading).status_code == 202
    assert_problem(as_(["sb-operators"], "GET", "/projects"), 403, "forbidden")
    # Admin: the organization's projects, and only them.
    r = as_(["sb-viewers", "sb-admins"], "GET", "/projects")
    assert r.status_code == 200, r.text
    ids = {p["id"] for p in r.json()["items"]}
    assert org_a.project_id in ids
    assert ids == {str(i) for (i,) in stack.sql("SELECT id FROM projects WHERE org_id = %s",
                                                 org_a.org_id)}
    # The org claim decides whose data: another organization's id shows that one's, not A's.
    other = Org(stack)
    r = other.request("GET", "/sensors", token=cognito_token(other.org_id, ["sb-admins"]))
    assert r.status_code == 200 and a_data["sensor"] not in r.text


def test_cognito_tokens_that_must_not_work(stack, oidc, org_a):
    iss, aud = oidc
    now = int(time.time())
    other_key = rsa.generate_private_key(65537, 2048)
    bad = {
        "wrong issuer": cognito_token(org_a.org_id, ["sb-admins"], iss=iss + "-other"),
        "wrong audience": cognito_token(org_a.org_id, ["sb-admins"], aud="another-client"),
        "audience list without ours": cognito_token(org_a.org_id, ["sb-admins"],
                                                    aud=["a", "b"]),
        "expired": cognito_token(org_a.org_id, ["sb-admins"], exp=now - 120, iat=now - 900),
        "signed by another key with the issuer's kid": cognito_token(
            org_a.org_id, ["sb-admins"], key=other_key),
        "unknown kid": cognito_token(org_a.org_id, ["sb-admins"],
                                     header={"alg": "RS256", "kid": "rotated-away"}),
        "no mapped group": cognito_token(org_a.org_id, ["eu-staff"]),
        "no groups": cognito_token(org_a.org_id, None),
        "no organization": cognito_token(None, ["sb-admins"]),
        "organization not a UUID": cognito_token(org_a.slug, ["sb-admins"]),
        "groups not a list": cognito_token(org_a.org_id, {"sb-admins": True}),
    }
    for name, token in bad.items():
        r = org_a.get("/sensors", token=token)
        assert r.status_code == 401, f"{name}: {r.status_code} {r.text}"
        assert_problem(r, 401, "unauthorized")
    # The audience may also be a list holding ours.
    ok = cognito_token(org_a.org_id, ["sb-admins"], aud=["another-client", aud])
    assert org_a.get("/sensors", token=ok).status_code == 200


# ---- canaries -------------------------------------------------------------------------------


def test_canary_password_and_api_secret_never_reach_a_log_or_kafka(stack):
    password = "canary-password-" + uuid.uuid4().hex
    org = Org(stack, password=password)
    # Sign in every way, right and wrong.
    org.sign_in()
    assert stack.http.post(stack.url + "/auth/token", timeout=30, data={
        "grant_type": "password", "username": org.email, "password": password}).status_code == 200
    for attempt in [password + "x", password[::-1]]:
        assert org.post("/auth/token", json={"email": org.email, "password": attempt}) \
            .status_code == 401
    assert org.post("/auth/register", json={"email": org.email, "password": password,
                                            "name": "Again", "organization": org.slug}) \
        .status_code == 409

    # An API key made through the API (its secret shown once), used right and wrong.
    r = org.post("/api-keys", token=org.access_token,
                 json={"project_id": org.project_id, "name": "canary",
                       "scopes": ["ingest", "orders", "read"]})
    assert r.status_code == 201, r.text
    token = r.json()["token"]
    secret = token.split(".", 1)[1]
    rid = org.post("/sensors/data", token=token,
                   json={"sensor_id": "canary", "value": 1.0}).json()["ids"][0]
    assert org.post("/orders", token=token, json={
        "customer_id": "canary", "sku": "SB-TEMP-100", "quantity": 1,
        "shipping": {"name": "C", "line1": "1 C St", "city": "Cville", "postal_code": "1",
                     "country": "DE"}}).status_code == 202
    for forged in [token[:-1], token + "x", token.split(".")[0] + "." + secret[::-1],
                   "lok_" + "c" * 12 + "." + secret]:
        assert org.get("/sensors", token=forged).status_code == 401
    assert org.get("/sensors", headers={"Authorization": "Basic " + secret}).status_code == 401
    assert org.post("/sensors/data", token=token,
                    json={"sensor_id": "canary", "value": "not a number"}).status_code == 422
    wait_until("the canary reading stored", lambda: stack.sql(
        "SELECT count(*) FROM sensor_readings WHERE reading_id = %s", rid)[0][0] == 1)

    canaries = {"password": password, "API secret": secret}
    logs = sorted((pathlib.Path(stack.env["SB_RUN_DIR"]) / "logs").glob("*.log"))
    assert logs
    for log in logs:
        text = log.read_text(errors="replace")
        for what, value in canaries.items():
            assert value not in text, f"the canary {what} is in {log}"
    topics = [t for t in AdminClient({"bootstrap.servers": stack.kafka}).list_topics(
        timeout=10).topics if not t.startswith("__")]
    assert "sensor.readings.v1" in topics and "orders.v1" in topics
    for topic in topics:
        for m in stack.read_topic(topic):
            blob = (m.key() or b"") + (m.value() or b"") + b"".join(
                (k.encode() + (v or b"")) for k, v in (m.headers() or []))
            for what, value in canaries.items():
                assert value.encode() not in blob, f"the canary {what} is in a {topic} record"
