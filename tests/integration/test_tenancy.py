"""Tenancy and administration over HTTP: projects, API keys, members and the audit log, each
organization confined to its own, against the real stack (docs/tenancy.md)."""

import datetime as dt
import re
import uuid

import pytest

from conftest import reading, wait_until

PASSWORD = "tenancy test password " + uuid.uuid4().hex
TOKEN_RE = re.compile(r"^lok_[a-z2-7]{12}\.[A-Za-z0-9_-]{43}$")


def assert_problem(r, status):
    assert r.status_code == status, r.text
    assert r.headers["Content-Type"] == "application/problem+json"
    return r.json()


class Person:
    """A registered person signed in to one organization."""

    def __init__(self, stack, email, slug, token, user_id, org_id):
        self.stack, self.email, self.slug = stack, email, slug
        self.token, self.user_id, self.org_id = token, user_id, org_id

    def call(self, method, path, body=None, request_id=None, token=None, **params):
        headers = {"Authorization": f"Bearer {token or self.token}"}
        if request_id:
            headers["X-Request-Id"] = request_id
        return self.stack.http.request(method, self.stack.url + path, json=body, params=params,
                                       headers=headers, timeout=30)

    def sign_in(self, slug):
        """The same person, signed in to organization `slug`."""
        r = self.stack.http.post(self.stack.url + "/auth/token", timeout=30, json={
            "email": self.email, "password": PASSWORD, "organization": slug})
        assert r.status_code == 200, r.text
        return Person(self.stack, self.email, slug, r.json()["access_token"], self.user_id,
                      None)

    def audit(self, **params):
        r = self.call("GET", "/audit-logs", limit=1000, **params)
        assert r.status_code == 200, r.text
        return r.json()["items"]


def register(stack):
    email = f"admin-{uuid.uuid4().hex[:10]}@example.com"
    slug = "o" + uuid.uuid4().hex[:12]
    r = stack.http.post(stack.url + "/auth/register", timeout=30, json={
        "email": email, "password": PASSWORD, "name": "Grace Hopper", "organization": slug})
    assert r.status_code == 201, r.text
    doc = r.json()
    r = stack.http.post(stack.url + "/auth/token", json={"email": email, "password": PASSWORD},
                        timeout=30)
    assert r.status_code == 200, r.text
    return Person(stack, email, slug, r.json()["access_token"], doc["user"]["id"],
                  doc["organization"]["id"])


@pytest.fixture
def admin(stack):
    return register(stack)


@pytest.fixture
def other_admin(stack):
    return register(stack)


def rid():
    return "tenancy-" + uuid.uuid4().hex


def make_project(person, slug="plant-1"):
    r = person.call("POST", "/projects", {"slug": slug, "name": "Plant 1"}, request_id=rid())
    assert r.status_code == 201, r.text
    return r.json()


def make_key(person, project_id, **extra):
    body = {"project_id": project_id, "name": "line 1", "scopes": ["ingest", "read"], **extra}
    r = person.call("POST", "/api-keys", body, request_id=rid())
    assert r.status_code == 201, r.text
    return r.json()


def post_reading(stack, token, **kw):
    return stack.http.post(stack.url + "/sensors/data", json=reading(**kw), timeout=30,
                           headers={"Authorization": f"Bearer {token}"})


def audit_row(person, action, request_id):
    rows = [row for row in person.audit(action=action) if row["request_id"] == request_id]
    assert len(rows) == 1, f"{action} {request_id}: {rows}"
    return rows[0]


def test_registering_is_audited(admin):
    rows = admin.audit()
    assert [(r["action"], r["actor"], r["target_id"]) for r in rows] == \
        [("organization.create", admin.user_id, admin.org_id)]


def test_project_and_key_lifecycle(stack, admin):
    # A project, audited under the request's X-Request-Id.
    request_id = rid()
    r = admin.call("POST", "/projects", {"slug": "plant-1", "name": "Plant 1"},
                   request_id=request_id)
    assert r.status_code == 201, r.text
    project = r.json()
    assert (project["slug"], project["name"]) == ("plant-1", "Plant 1")
    row = audit_row(admin, "project.create", request_id)
    assert (row["actor"], row["target_type"], row["target_id"]) == \
        (admin.user_id, "project", project["id"])
    assert_problem(admin.call("POST", "/projects", {"slug": "plant-1"}), 409)
    r = admin.call("GET", "/projects")
    assert r.status_code == 200 and [p["id"] for p in r.json()["items"]] == [project["id"]]

    # A key: its token once, in an answer no cache may keep.
    request_id = rid()
    r = admin.call("POST", "/api-keys", {"project_id": project["id"], "name": "line 1",
                                         "scopes": ["read", "ingest"]}, request_id=request_id)
    assert r.status_code == 201, r.text
    assert r.headers["Cache-Control"] == "no-store"
    key = r.json()
    assert TOKEN_RE.match(key["token"]) and key["token"].startswith(f"lok_{key['prefix']}.")
    assert (key["project_id"], key["scopes"], key["revoked_at"], key["expires_at"]) == \
        (project["id"], ["ingest", "read"], None, None)
    secret = key["token"].split(".", 1)[1]
    row = audit_row(admin, "api_key.create", request_id)
    assert (row["target_id"], row["details"]["prefix"]) == (key["id"], key["prefix"])
    assert secret not in str(row)
    assert stack.sql("SELECT count(*) FROM audit_logs WHERE details::text LIKE %s "
                     "OR details::text LIKE (SELECT '%%' || secret_hash || '%%' FROM api_keys "
                     "WHERE id = %s)", f"%{secret}%", key["id"])[0][0] == 0

    # The key works, and the reading lands in PostgreSQL (sensor-ingest writes under RLS too).
    r = post_reading(stack, key["token"], sensor_id="t-1")
    assert r.status_code == 202, r.text
    wait_until("the reading in PostgreSQL", lambda: stack.sql(
        "SELECT count(*) FROM sensor_readings WHERE project_id = %s", project["id"])[0][0] == 1)

    # The listing shows the key, never a secret, and its last use (recorded off the request path).
    def listed():
        items = admin.call("GET", "/api-keys", project_id=project["id"]).json()["items"]
        return items[0] if items and items[0]["last_used_at"] else None
    item = wait_until("last_used_at to be recorded", listed, timeout=10)
    assert item["prefix"] == key["prefix"] and "token" not in item
    assert not any(secret in str(v) for v in item.values())

    # Revoked: 204, again 204 (one audit row), and the key is refused.
    request_id = rid()
    r = admin.call("DELETE", f"/api-keys/{key['id']}", request_id=request_id)
    assert r.status_code == 204, r.text
    assert admin.call("DELETE", f"/api-keys/{key['id']}").status_code == 204
    audit_row(admin, "api_key.revoke", request_id)
    assert len(admin.audit(action="api_key.revoke")) == 1
    wait_until("the revoked key to be refused",
               lambda: post_reading(stack, key["token"]).status_code == 401, timeout=5)
    items = admin.call("GET", "/api-keys").json()["items"]
    assert [i["revoked_at"] is not None for i in items] == [True]
    assert_problem(admin.call("DELETE", f"/api-keys/{uuid.uuid4()}"), 404)


def test_key_fields_are_checked(admin, other_admin):
    project = make_project(admin)
    foreign = make_project(other_admin)
    base = {"project_id": project["id"], "scopes": ["ingest"]}
    past = (dt.datetime.now(dt.timezone.utc) - dt.timedelta(minutes=1)).isoformat()
    for body, pointer in [
        ({**base, "scopes": []}, "/scopes"),
        ({**base, "scopes": ["ingest", "admin"]}, "/scopes"),
        ({**base, "scopes": ["read", "read"]}, "/scopes"),
        ({"scopes": ["read"]}, "/project_id"),
        ({**base, "project_id": "not-a-uuid"}, "/project_id"),
        ({**base, "expires_at": past}, "/expires_at"),
        ({**base, "expires_at": "tomorrow"}, "/expires_at"),
        ({**base, "rate_limit_per_s": 0}, "/rate_limit_per_s"),
        ({**base, "rate_limit_per_s": "10"}, "/rate_limit_per_s"),
    ]:
        doc = assert_problem(admin.call("POST", "/api-keys", body), 422)
        assert pointer in [e["pointer"] for e in doc["errors"]], (body, doc)
    # Another organization's project does not exist for this one.
    assert_problem(admin.call("POST", "/api-keys", {**base, "project_id": foreign["id"]}), 404)
    assert admin.audit(action="api_key.create") == []
    r = admin.call("GET", "/api-keys", project_id=project["id"])
    assert r.status_code == 200 and r.json() == {"items": [], "next_cursor": None}


def test_a_key_expires(stack, admin):
    project = make_project(admin)
    expires = dt.datetime.now(dt.timezone.utc) + dt.timedelta(seconds=2)
    key = make_key(admin, project["id"], expires_at=expires.isoformat())
    assert key["expires_at"].startswith(expires.strftime("%Y-%m-%dT%H:%M:%S"))
    assert post_reading(stack, key["token"]).status_code == 202
    wait_until("the key to expire", lambda: post_reading(stack, key["token"]).status_code == 401,
               timeout=10)


def test_per_key_rate_limit(stack, admin):
    project = make_project(admin)
    key = make_key(admin, project["id"], rate_limit_per_s=1)
    assert key["rate_limit_per_s"] == 1
    # 1 per second with a burst of 2: a third request at once is refused.
    statuses = [post_reading(stack, key["token"]).status_code for _ in range(3)]
    assert statuses[:2] == [202, 202] and statuses[2] == 429, statuses
    r = post_reading(stack, key["token"])
    assert r.status_code == 429 and int(r.headers["Retry-After"]) >= 1
    # sbctl keys create --rate-limit stores the same override.
    tenant = stack.new_tenant()
    token = stack.sbctl("keys", "create", "--org", tenant.org_slug, "--project", "p1",
                        "--rate-limit", "7").stdout.strip()
    prefix = token[4:16]
    assert stack.sql("SELECT rate_limit_per_s FROM api_keys WHERE prefix = %s",
                     prefix) == [(7,)]
    assert stack.sbctl("keys", "create", "--org", tenant.org_slug, "--project", "p1",
                       "--rate-limit", "0", check=False).returncode != 0


def test_members_and_roles(stack, admin):
    viewer = register(stack)  # a person with an organization of their own
    operator = register(stack)

    request_id = rid()
    r = admin.call("POST", "/members", {"email": viewer.email.upper(), "role": "viewer"},
                   request_id=request_id)
    assert r.status_code == 201, r.text
    assert (r.json()["user_id"], r.json()["role"]) == (viewer.user_id, "viewer")
    row = audit_row(admin, "member.add", request_id)
    assert (row["target_id"], row["details"]["role"]) == (viewer.user_id, "viewer")
    assert admin.call("POST", "/members", {"email": operator.email, "role": "operator"}
                      ).status_code == 201
    assert_problem(admin.call("POST", "/members", {"email": viewer.email, "role": "admin"}), 409)
    assert_problem(admin.call("POST", "/members", {"email": "nobody-" + viewer.email,
                                                   "role": "viewer"}), 404)
    assert_problem(admin.call("POST", "/members", {"email": viewer.email, "role": "owner"}), 422)

    members = admin.call("GET", "/members").json()["items"]
    assert {(m["user_id"], m["role"]) for m in members} == {
        (admin.user_id, "admin"), (viewer.user_id, "viewer"), (operator.user_id, "operator")}

    # Roles are enforced on every admin endpoint.
    project = make_project(admin)
    key = make_key(admin, project["id"])
    for person in (viewer.sign_in(admin.slug), operator.sign_in(admin.slug)):
        for method, path, body in [
            ("GET", "/projects", None), ("POST", "/projects", {"slug": "x"}),
            ("GET", "/api-keys", None),
            ("POST", "/api-keys", {"project_id": project["id"], "scopes": ["read"]}),
            ("DELETE", f"/api-keys/{key['id']}", None), ("GET", "/members", None),
            ("POST", "/members", {"email": admin.email, "role": "viewer"}),
            ("DELETE", f"/members/{admin.user_id}", None), ("GET", "/audit-logs", None),
        ]:
            assert_problem(person.call(method, path, body), 403)
        # An API key is no person: refused too.
        assert admin.call("GET", "/projects", token=key["token"]).status_code in (401, 403)
    assert post_reading(stack, key["token"]).status_code == 202, "the key was never revoked"

    # Removing: the last admin stays.
    request_id = rid()
    assert admin.call("DELETE", f"/members/{viewer.user_id}",
                      request_id=request_id).status_code == 204
    audit_row(admin, "member.remove", request_id)
    assert_problem(admin.call("DELETE", f"/members/{viewer.user_id}"), 404)
    doc = assert_problem(admin.call("DELETE", f"/members/{admin.user_id}"), 409)
    assert "last admin" in doc["detail"]
    assert admin.call("POST", "/members", {"email": viewer.email, "role": "admin"}
                      ).status_code == 201
    assert admin.call("DELETE", f"/members/{admin.user_id}").status_code == 204
    # The person removed can no longer sign in to the organization.
    r = stack.http.post(stack.url + "/auth/token", timeout=30, json={
        "email": admin.email, "password": PASSWORD, "organization": admin.slug})
    assert r.status_code == 403, r.text


def test_one_organization_cannot_see_or_change_another(stack, admin, other_admin):
    project = make_project(admin)
    key = make_key(admin, project["id"])
    b = other_admin

    for path in ("/projects", "/api-keys", "/members", "/audit-logs"):
        r = b.call("GET", path)
        assert r.status_code == 200, r.text
        text = r.text
        assert project["id"] not in text and key["id"] not in text and admin.user_id not in text
    assert_problem(b.call("POST", "/api-keys", {"project_id": project["id"],
                                                "scopes": ["ingest"]}), 404)
    assert_problem(b.call("DELETE", f"/api-keys/{key['id']}"), 404)
    assert_problem(b.call("DELETE", f"/members/{admin.user_id}"), 404)
    assert_problem(b.call("GET", "/api-keys", project_id=project["id"]), 404)
    # Nothing changed for organization A.
    assert post_reading(stack, key["token"]).status_code == 202
    assert [m["user_id"] for m in admin.call("GET", "/members").json()["items"]] == \
        [admin.user_id]
    assert [a["action"] for a in b.audit()] == ["organization.create"]


def test_audit_log_pages_and_filters(admin):
    before = dt.datetime.now(dt.timezone.utc) - dt.timedelta(seconds=1)
    made = [make_project(admin, f"p{i}")["id"] for i in range(5)]
    seen, cursor = [], None
    while True:
        params = {"action": "project.create", "limit": 2, **({"cursor": cursor} if cursor else {})}
        r = admin.call("GET", "/audit-logs", **params)
        assert r.status_code == 200, r.text
        page = r.json()
        assert len(page["items"]) <= 2
        seen += page["items"]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert [row["target_id"] for row in seen] == list(reversed(made)), "newest first, each once"
    times = [row["at"] for row in seen]
    assert times == sorted(times, reverse=True)
    assert admin.audit(action="project.create", to=before.isoformat()) == []
    assert len(admin.audit(action="project.create", **{"from": before.isoformat()})) == 5
    assert_problem(admin.call("GET", "/audit-logs", cursor="bm90LWEtY3Vyc29y"), 400)
    assert_problem(admin.call("GET", "/audit-logs", action="DROP TABLE"), 400)
    assert_problem(admin.call("GET", "/audit-logs", limit=0), 400)


def test_projects_page_through(admin):
    made = [make_project(admin, f"q{i}")["id"] for i in range(3)]
    r = admin.call("GET", "/projects", limit=2)
    first = r.json()
    assert [p["id"] for p in first["items"]] == made[:2] and first["next_cursor"]
    second = admin.call("GET", "/projects", limit=2, cursor=first["next_cursor"]).json()
    assert [p["id"] for p in second["items"]] == made[2:] and second["next_cursor"] is None
