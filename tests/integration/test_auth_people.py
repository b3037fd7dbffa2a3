"""People's authentication on the gateway: /auth/register, /auth/token, /auth/me, /auth/refresh
and /auth/logout, against the real stack. Access tokens are forged here with the stdlib only."""

import base64
import concurrent.futures
import hashlib
import hmac
import json
import pathlib
import time
import uuid

import pytest

from conftest import wait_until

PASSWORD = "correct horse battery staple " + uuid.uuid4().hex  # unique: searched for in the logs


def b64url(data):
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def b64url_decode(s):
    return base64.urlsafe_b64decode(s + "=" * (-len(s) % 4))


def jwt_payload(token):
    return json.loads(b64url_decode(token.split(".")[1]))


def jwt_make(header, payload, key=None, alg=hashlib.sha256):
    signing_input = b64url(json.dumps(header).encode()) + "." + b64url(json.dumps(payload).encode())
    sig = b"" if key is None else hmac.new(key, signing_input.encode(), alg).digest()
    return signing_input + "." + b64url(sig)


class People:
    def __init__(self, stack):
        self.stack = stack

    def post(self, path, body=None, **kw):
        return self.stack.http.post(self.stack.url + path, json=body, timeout=30, **kw)

    def register(self, email=None, slug=None, password=PASSWORD, name="Ada Lovelace"):
        email = email or f"ada-{uuid.uuid4().hex[:10]}@example.com"
        slug = slug or "o" + uuid.uuid4().hex[:12]
        r = self.post("/auth/register", {"email": email, "password": password, "name": name,
                                         "organization": slug})
        return r, email, slug

    def token(self, email, password=PASSWORD, **extra):
        return self.post("/auth/token", {"email": email, "password": password, **extra})

    def me(self, access_token):
        return self.stack.http.get(self.stack.url + "/auth/me", timeout=30,
                                   headers={"Authorization": f"Bearer {access_token}"})

    def refresh(self, refresh_token):
        return self.post("/auth/refresh", {"refresh_token": refresh_token})


@pytest.fixture
def people(stack):
    return People(stack)


@pytest.fixture
def account(people):
    r, email, slug = people.register()
    assert r.status_code == 201, r.text
    return r.json(), email, slug


def assert_problem(r, status):
    assert r.status_code == status, r.text
    assert r.headers["Content-Type"] == "application/problem+json"
    doc = r.json()
    assert doc["status"] == status and doc["type"].startswith("https://sensorbus.dev/problems/")
    return doc


def test_register_then_token_json_and_form_then_me(stack, people):
    r, email, slug = people.register(email=f"Ada-{uuid.uuid4().hex[:8]}@Example.com")
    assert r.status_code == 201, r.text
    doc = r.json()
    assert doc["user"]["email"] == email and doc["user"]["name"] == "Ada Lovelace"
    assert doc["organization"]["slug"] == slug
    user_id, org_id = doc["user"]["id"], doc["organization"]["id"]
    assert stack.sql("SELECT role FROM memberships WHERE user_id = %s AND org_id = %s",
                     user_id, org_id) == [("admin",)]
    phc = stack.sql("SELECT password_hash FROM users WHERE id = %s", user_id)[0][0]
    assert phc.startswith("$argon2id$v=19$m=19456,t=2,p=1$") and PASSWORD not in phc

    # JSON, with the email in another case.
    t = people.token(email.lower())
    assert t.status_code == 200, t.text
    pair = t.json()
    assert pair["token_type"] == "bearer" and pair["expires_in"] == 900
    assert t.headers.get("Cache-Control") == "no-store"
    claims = jwt_payload(pair["access_token"])
    assert json.loads(b64url_decode(pair["access_token"].split(".")[0]))["alg"] == "HS256"
    assert claims["sub"] == user_id and claims["org"] == org_id and claims["roles"] == ["admin"]
    assert claims["iss"] == "sensorbus" and claims["aud"] == "sensorbus-api"
    assert claims["exp"] - claims["iat"] == 900 and claims["jti"]

    me = people.me(pair["access_token"])
    assert me.status_code == 200, me.text
    assert me.json() == {"id": user_id, "email": email, "name": "Ada Lovelace",
                         "organization": {"id": org_id, "slug": slug}, "roles": ["admin"]}

    # The OAuth2 password form, as FastAPI's OAuth2PasswordRequestForm clients send it.
    f = stack.http.post(stack.url + "/auth/token", timeout=30, data={
        "grant_type": "password", "username": email, "password": PASSWORD})
    assert f.status_code == 200, f.text
    assert people.me(f.json()["access_token"]).json()["id"] == user_id
    form_bad = stack.http.post(stack.url + "/auth/token", timeout=30, data={
        "grant_type": "client_credentials", "username": email, "password": PASSWORD})
    assert assert_problem(form_bad, 422)["errors"][0]["pointer"] == "/grant_type"

    # Naming the organization works for a member, and is refused for another one.
    assert people.token(email, organization=slug).status_code == 200
    other, _, other_slug = people.register()
    assert_problem(people.token(email, organization=other_slug), 403)

    # Only the refresh token's SHA-256 is stored.
    digest = hashlib.sha256(pair["refresh_token"].encode()).hexdigest()
    assert stack.sql("SELECT count(*) FROM refresh_tokens WHERE token_hash = %s", digest) == [(1,)]
    assert stack.sql("SELECT count(*) FROM refresh_tokens WHERE token_hash = %s",
                     pair["refresh_token"]) == [(0,)]
    assert len(b64url_decode(pair["refresh_token"])) == 32


def test_wrong_password_and_unknown_email_get_the_same_401(people, account):
    _, email, _ = account
    wrong = people.token(email, "not the password at all")
    unknown = people.token(f"nobody-{uuid.uuid4().hex[:8]}@example.com", PASSWORD)
    a, b = assert_problem(wrong, 401), assert_problem(unknown, 401)
    a.pop("request_id"), b.pop("request_id")
    assert a == b
    assert wrong.headers["WWW-Authenticate"].startswith("Bearer")
    assert_problem(people.token(email, ""), 422)


def test_duplicate_email_or_slug_is_409_and_leaves_nothing_behind(stack, people, account):
    _, email, slug = account
    new_slug = "o" + uuid.uuid4().hex[:12]
    r, _, _ = people.register(email=email.upper(), slug=new_slug)
    assert "email" in assert_problem(r, 409)["detail"]
    # One transaction: the organization of the refused registration was not created.
    assert stack.sql("SELECT count(*) FROM organizations WHERE slug = %s", new_slug) == [(0,)]

    new_email = f"eve-{uuid.uuid4().hex[:8]}@example.com"
    r, _, _ = people.register(email=new_email, slug=slug)
    assert slug in assert_problem(r, 409)["detail"]
    assert stack.sql("SELECT count(*) FROM users WHERE email = %s", new_email) == [(0,)]


@pytest.mark.parametrize("field,value", [
    ("password", "short"),
    ("password", "x" * 1025),
    ("email", "no-at-sign.example.com"),
    ("email", "two@at@example.com"),
    ("email", "a" * 250 + "@example.com"),
    ("organization", "Not A Slug"),
    ("organization", "-leading-dash"),
    ("name", ""),
])
def test_invalid_registration_fields_are_422(people, field, value):
    body = {"email": f"v-{uuid.uuid4().hex[:8]}@example.com", "password": PASSWORD,
            "name": "Val", "organization": "o" + uuid.uuid4().hex[:12], field: value}
    doc = assert_problem(people.post("/auth/register", body), 422)
    assert any(e["pointer"] == "/" + field for e in doc["errors"]), doc


def test_missing_fields_and_bad_bodies(people):
    doc = assert_problem(people.post("/auth/register", {}), 422)
    assert {e["pointer"] for e in doc["errors"]} == {"/email", "/password", "/name",
                                                     "/organization"}
    assert_problem(people.post("/auth/register", data="{nope",
                               headers={"Content-Type": "application/json"}), 400)
    assert_problem(people.post("/auth/refresh", {"refresh_token": 7}), 422)
    r = people.stack.http.get(people.stack.url + "/auth/token", timeout=30)
    assert_problem(r, 405)
    # A form value that is not UTF-8 is the client's mistake, not a server error.
    r = people.stack.http.post(people.stack.url + "/auth/token", timeout=30,
                               data="grant_type=password&username=%FF%FE@x&password=twelve+chars",
                               headers={"Content-Type": "application/x-www-form-urlencoded"})
    assert_problem(r, 422)


def test_refresh_rotates_and_reuse_revokes_the_family(people, account):
    _, email, _ = account
    first = people.token(email).json()
    r = people.refresh(first["refresh_token"])
    assert r.status_code == 200, r.text
    second = r.json()
    assert second["refresh_token"] != first["refresh_token"]
    assert people.me(second["access_token"]).status_code == 200

    # The old token is spent; presenting it again revokes the whole session, the new one too.
    assert_problem(people.refresh(first["refresh_token"]), 401)
    assert_problem(people.refresh(second["refresh_token"]), 401)

    # Another sign-in is a separate family, untouched.
    third = people.token(email).json()
    assert people.refresh(third["refresh_token"]).status_code == 200
    assert_problem(people.refresh("x" * 43), 401)


def test_logout_revokes_the_refresh_token(people, account):
    _, email, _ = account
    pair = people.token(email).json()
    r = people.post("/auth/logout", {"refresh_token": pair["refresh_token"]})
    assert r.status_code == 204 and r.content == b""
    assert_problem(people.refresh(pair["refresh_token"]), 401)
    # Logging out twice is harmless.
    assert people.post("/auth/logout", {"refresh_token": pair["refresh_token"]}).status_code == 204


ATTACKS = ["alg-none", "wrong-secret", "hs512-right-secret", "expired", "not-yet-valid",
           "wrong-iss", "wrong-aud", "tampered-payload", "kid-path", "garbage"]


@pytest.mark.parametrize("attack", ATTACKS)
def test_forged_access_tokens_are_401_invalid_token(stack, people, account, attack):
    _, email, _ = account
    real = people.token(email).json()["access_token"]
    secret = (pathlib.Path(stack.env["SB_RUN_DIR"]) / "secrets/jwt_secret").read_text().strip()
    key = secret.encode()
    now = int(time.time())
    header = {"alg": "HS256", "typ": "JWT"}
    claims = {**jwt_payload(real), "iat": now, "exp": now + 300, "jti": uuid.uuid4().hex}

    # Control: a token made here with the right secret and claims passes, so every refusal
    # below is for the one thing each attack changes.
    assert people.me(jwt_make(header, claims, key)).status_code == 200

    if attack == "alg-none":
        token = jwt_make({"alg": "none", "typ": "JWT"}, claims)
    elif attack == "wrong-secret":
        token = jwt_make(header, claims, b"0" * 64)
    elif attack == "hs512-right-secret":
        token = jwt_make({"alg": "HS512", "typ": "JWT"}, claims, key, hashlib.sha512)
    elif attack == "expired":
        token = jwt_make(header, {**claims, "iat": now - 7200, "exp": now - 3600}, key)
    elif attack == "not-yet-valid":
        token = jwt_make(header, {**claims, "nbf": now + 3600}, key)
    elif attack == "wrong-iss":
        token = jwt_make(header, {**claims, "iss": "someone-else"}, key)
    elif attack == "wrong-aud":
        token = jwt_make(header, {**claims, "aud": "another-api"}, key)
    elif attack == "tampered-payload":
        h, _, s = real.split(".")
        forged = {**jwt_payload(real), "roles": ["admin", "operator"], "sub": str(uuid.uuid4())}
        token = f"{h}.{b64url(json.dumps(forged).encode())}.{s}"
    elif attack == "kid-path":
        token = jwt_make({**header, "kid": "../../../../dev/null"}, claims, key)
    else:
        token = "not.a.jwt"

    r = people.me(token)
    assert_problem(r, 401)
    assert r.headers["WWW-Authenticate"] == 'Bearer error="invalid_token"'


def test_me_without_a_token_is_401(people):
    r = people.stack.http.get(people.stack.url + "/auth/me", timeout=30)
    assert_problem(r, 401)
    assert r.headers["WWW-Authenticate"].startswith("Bearer")


def test_passwords_and_tokens_never_reach_a_log(stack, people):
    r, email, _ = people.register()
    assert r.status_code == 201
    pair = people.token(email).json()
    assert people.token(email, PASSWORD + "-wrong").status_code == 401
    form = stack.http.post(stack.url + "/auth/token", timeout=30, data={
        "grant_type": "password", "username": email, "password": PASSWORD})
    assert form.status_code == 200
    assert people.refresh(pair["refresh_token"]).status_code == 200
    assert people.refresh(pair["refresh_token"]).status_code == 401  # reuse: logged as a warning

    secrets = [PASSWORD, pair["refresh_token"], pair["access_token"],
               pair["access_token"].split(".")[2], form.json()["refresh_token"]]
    logs = pathlib.Path(stack.env["SB_RUN_DIR"]) / "logs"
    user_id = r.json()["user"]["id"]

    def logged():
        return "\n".join(p.read_text(errors="replace") for p in logs.glob("*.log"))

    # The reuse warning names the user: wait for it, so the check below sees every line.
    wait_until("the reuse warning in the gateway log",
               lambda: f"revoked user_id={user_id}" in logged(), timeout=10)
    text = logged()
    for s in secrets:
        assert s not in text


def test_shutdown_with_sign_ins_in_flight_is_clean(stack, people, account):
    """SIGTERM while argon2id jobs and queries are in flight: every request gets an answer or a
    closed connection, the gateway exits through its normal path, and comes back."""
    _, email, _ = account
    log = pathlib.Path(stack.env["SB_RUN_DIR"]) / "logs/gateway.log"
    before = log.stat().st_size

    def sign_in(_):
        try:
            return people.token(email).status_code
        except Exception:  # the connection closed under us: acceptable during shutdown
            return None

    with concurrent.futures.ThreadPoolExecutor(16) as pool:
        futures = [pool.submit(sign_in, i) for i in range(48)]
        wait_until("sign-ins in flight", lambda: any(f.done() for f in futures), timeout=30,
                   interval=0.01)
        stack.stack("stop-daemon", "gateway")
        codes = [f.result() for f in futures]
    try:
        assert set(codes) <= {200, 503, None}, codes
        assert 200 in codes
        tail = log.read_bytes()[before:].decode(errors="replace")
        assert '"msg":"bye"' in tail, tail[-2000:]
        assert "Sanitizer" not in tail and "runtime error" not in tail, tail[-4000:]
    finally:
        stack.stack("start-daemon", "gateway")
    assert people.token(email).status_code == 200
