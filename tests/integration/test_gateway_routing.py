"""The gateway's routing and callers, across every endpoint family: 404 and 405 (with Allow) as
problem+json, HEAD, and people posting readings with an access token and ?project_id=."""

import uuid

from conftest import reading, wait_until


def test_unknown_path_is_404_problem(stack):
    r = stack.http.get(stack.url + "/no/such/thing", timeout=10)
    assert r.status_code == 404
    assert r.headers["Content-Type"] == "application/problem+json"
    assert r.json()["type"].endswith("/not-found")
    assert r.headers["X-Request-Id"]


def test_wrong_method_is_405_with_allow(stack):
    r = stack.http.delete(stack.url + "/sensors/data", timeout=10)
    assert r.status_code == 405
    assert r.headers["Allow"] == "POST, GET, HEAD"
    assert r.json()["type"].endswith("/method-not-allowed")
    r = stack.http.post(stack.url + "/orders/" + str(uuid.uuid4()), timeout=10)
    assert r.status_code == 405
    assert r.headers["Allow"] == "GET, HEAD"


def test_head_is_served_as_get(stack):
    r = stack.http.head(stack.url + "/healthz", timeout=10)
    assert r.status_code == 200
    assert r.content == b""


def test_person_posts_readings_to_a_project_of_theirs(stack, person):
    project_id = person.new_project()
    doc = reading(id=str(uuid.uuid4()), sensor_id="jwt-1", value=3.5)
    r = person.post(f"/sensors/data?project_id={project_id}", doc)
    assert r.status_code == 202, r.text
    assert r.json()["ids"] == [doc["id"]]
    wait_until("the person's reading in PostgreSQL", lambda: stack.sql(
        "SELECT count(*) FROM sensor_readings WHERE project_id = %s AND reading_id = %s",
        project_id, doc["id"])[0][0] == 1)


def test_person_must_name_a_project_they_own(stack, person, tenant):
    doc = reading()
    r = person.post("/sensors/data", doc)
    assert r.status_code == 400
    assert "project_id" in r.json()["detail"]
    # Another organization's project: as if it did not exist.
    r = person.post(f"/sensors/data?project_id={tenant.project_id}", doc)
    assert r.status_code == 404
    r = person.post(f"/sensors/data?project_id={uuid.uuid4()}", doc)
    assert r.status_code == 404
    r = person.post("/sensors/data?project_id=not-a-uuid", doc)
    assert r.status_code == 400
    assert r.json()["type"].endswith("/invalid-parameter")
