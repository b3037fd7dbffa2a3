"""Helpers the API tests share (test_security.py, test_api_conventions.py, test_openapi.py):
organizations with a person, a project and an API key; JWTs made by hand (HS256 with the
stack's secret, RS256/ES256 with the cryptography package) so that tests can forge exactly the
token they mean; and the OpenAPI document.
"""

import base64
import hashlib
import hmac
import json
import pathlib
import sys
import time
import uuid

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, utils

from conftest import REPO, STACK

sys.path.insert(0, str(REPO / "services/gateway"))
import openapi_embed  # noqa: E402  (the build's own loader: same bundling, same strictness)

SPEC = openapi_embed.load(str(REPO / "proto/openapi.yaml"))
METHODS = ("get", "put", "post", "delete", "patch")
OIDC_DIR = REPO / "tests/integration/oidc"
OIDC_KID = "sb-test-oidc-1"


def operations(spec=SPEC):
    """(path, method, operation) for every operation the spec describes."""
    for path, item in spec["paths"].items():
        for method in METHODS:
            if method in item:
                yield path, method, item[method]


def daemon_env():
    """The SB_<DAEMON>_<NAME>=VALUE settings scripts/test gave the daemons (SB_DAEMON_ENV)."""
    return dict(w.split("=", 1) for w in STACK.get("SB_DAEMON_ENV", "").split() if "=" in w)


# ---- JWTs -----------------------------------------------------------------------------------


def b64url(data):
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def b64url_decode(s):
    return base64.urlsafe_b64decode(s + "=" * (-len(s) % 4))


def jwt_parts(token):
    h, p, _ = token.split(".")
    return json.loads(b64url_decode(h)), json.loads(b64url_decode(p))


def jwt_sign(header, payload, key=None):
    """A JWT of @header and @payload signed as header["alg"] says: HS* with @key (bytes), RS256 or
    ES256 with @key (a cryptography private key), "none" unsigned."""
    signing_input = (b64url(json.dumps(header).encode()) + "." +
                     b64url(json.dumps(payload).encode())).encode()
    alg = header.get("alg")
    if alg in ("HS256", "HS384", "HS512"):
        digest = {"HS256": hashlib.sha256, "HS384": hashlib.sha384, "HS512": hashlib.sha512}[alg]
        sig = hmac.new(key, signing_input, digest).digest()
    elif alg == "RS256":
        sig = key.sign(signing_input, padding.PKCS1v15(), hashes.SHA256())
    elif alg == "ES256":
        r, s = utils.decode_dss_signature(key.sign(signing_input, ec.ECDSA(hashes.SHA256())))
        sig = r.to_bytes(32, "big") + s.to_bytes(32, "big")
    else:
        sig = b""
    return signing_input.decode() + "." + b64url(sig)


def jwt_secret():
    """The HS256 key of the stack's gateway (scripts/stack keeps it in the run dir)."""
    return pathlib.Path(STACK["SB_JWT_SECRET_FILE"]).read_bytes().strip()


def oidc_key():
    return serialization.load_pem_private_key((OIDC_DIR / "test-issuer-key.pem").read_bytes(),
                                              password=None)


def oidc_settings():
    env = daemon_env()
    return env.get("SB_GATEWAY_OIDC_ISSUER"), env.get("SB_GATEWAY_OIDC_AUDIENCE")


def cognito_claims(org_id, groups, **over):
    """An ID token's claims as Amazon Cognito shapes them, for the issuer scripts/test trusts."""
    iss, aud = oidc_settings()
    now = int(time.time())
    claims = {"sub": str(uuid.uuid4()), "iss": iss, "aud": aud, "token_use": "id",
              "cognito:username": "dev-" + uuid.uuid4().hex[:6], "cognito:groups": groups,
              "custom:org": org_id, "email": "dev@example.com", "auth_time": now, "iat": now,
              "exp": now + 600}
    claims.update(over)
    return {k: v for k, v in claims.items() if v is not None}


def cognito_token(org_id, groups, key=None, header=None, **over):
    return jwt_sign(header or {"alg": "RS256", "kid": OIDC_KID, "typ": "JWT"},
                    cognito_claims(org_id, groups, **over), key or oidc_key())


# ---- organizations --------------------------------------------------------------------------


class Org:
    """A fresh organization: its admin (registered through the API), a project and an API key
    with every scope (made with sbctl), and the admin's access token."""

    def __init__(self, stack, password=None, scopes="ingest,orders,read"):
        self.stack = stack
        self.slug = "o" + uuid.uuid4().hex[:12]
        self.email = f"admin-{self.slug}@example.com"
        self.password = password or "org admin password " + uuid.uuid4().hex
        r = self.post("/auth/register", json={"email": self.email, "password": self.password,
                                              "name": "Admin", "organization": self.slug})
        assert r.status_code == 201, r.text
        self.user_id = r.json()["user"]["id"]
        self.org_id = r.json()["organization"]["id"]
        self.project_id = stack.sbctl("projects", "create", self.slug, "p1").stdout.strip()
        self.key = self.new_key(scopes)
        self.prefix = self.key.split(".")[0][4:]
        self.access_token = self.sign_in()

    def new_key(self, scopes, name="test"):
        token = self.stack.sbctl("keys", "create", "--org", self.slug, "--project", "p1",
                                 "--name", name, "--scopes", scopes).stdout.strip()
        assert token.startswith("lok_"), token
        return token

    def sign_in(self, password=None):
        r = self.post("/auth/token", json={"email": self.email,
                                           "password": password or self.password})
        assert r.status_code == 200, r.text
        return r.json()["access_token"]

    def request(self, method, path, token=None, **kw):
        headers = dict(kw.pop("headers", None) or {})
        if token:
            headers["Authorization"] = f"Bearer {token}"
        return self.stack.http.request(method, self.stack.url + path, headers=headers,
                                       timeout=30, **kw)

    def post(self, path, **kw):
        return self.request("POST", path, **kw)

    def get(self, path, **kw):
        return self.request("GET", path, **kw)


def assert_problem(r, status, slug=None):
    """@r is an RFC 9457 problem with @status (and @slug); returns its body."""
    assert r.status_code == status, f"{r.request.method} {r.url}: {r.status_code} {r.text}"
    assert r.headers.get("Content-Type") == "application/problem+json", r.headers
    doc = r.json()
    assert doc["status"] == status and doc["title"] and doc["detail"], doc
    assert doc["type"].startswith("https://sensorbus.dev/problems/"), doc
    if slug:
        assert doc["type"] == "https://sensorbus.dev/problems/" + slug, doc
    assert doc.get("request_id") == r.headers.get("X-Request-Id"), doc
    return doc
