"""proto/openapi.yaml against the running gateway.

The document is valid OpenAPI, describes exactly the routes the gateway serves, is what
GET /openapi.json serves, and GET /docs renders it without the internet. Then schemathesis
(property-based, from the spec) sends every operation generated requests, valid and invalid,
with both kinds of credentials, and checks every answer: no 5xx, a documented status code and
content type, a body that matches its schema, documented headers, and invalid input refused with
a 4xx. Bounded (max_examples per operation) and deterministic (derandomized).
"""

import json
import re
import uuid

import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, settings
from jsonschema import Draft202012Validator
from openapi_spec_validator import validate as validate_spec
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012
from schemathesis import checks as sc
from schemathesis.specs.openapi import checks as oc

from conftest import REPO, STACK
from sb_api import SPEC, operations

BASE_URL = STACK["SB_GATEWAY_URL"].rstrip("/")

# Examples per operation and credential: enough to reach every branch of a handler's
# validation, small enough that the whole run stays well under two minutes.
MAX_EXAMPLES = 40


# ---- the document itself ------------------------------------------------------------------


def test_spec_is_valid_openapi():
    validate_spec(SPEC)


def test_gateway_serves_the_spec_from_the_source(stack):
    r = stack.http.get(stack.url + "/openapi.json", timeout=10)
    assert r.status_code == 200
    assert r.headers["Content-Type"] == "application/json"
    assert r.json() == SPEC, "the gateway serves another spec: rebuild it (ninja) after editing " \
                             "proto/openapi.yaml"


def test_spec_describes_exactly_the_routes_the_gateway_serves():
    table = (REPO / "services/gateway/routes.c").read_text()
    routes = set(re.findall(r'\{GW_ROUTE_\w+,\s*"([A-Z]+)",\s*"([^"]+)",', table))
    assert len(routes) > 20, "could not read the route table in routes.c"
    described = {(m.upper(), p) for p, m, _ in operations()}
    assert routes - described == set(), "routes with no description in proto/openapi.yaml"
    assert described - routes == set(), "described operations that routes.c does not serve"


def test_every_request_body_has_an_example_its_schema_accepts():
    """The examples are documentation (the /docs page) and the cross-organization test's bodies:
    they must stay valid as the schemas change."""
    registry = Registry().with_resource("urn:sb-spec", Resource.from_contents(SPEC, DRAFT202012))
    for path, method, op in operations():
        for media_type, media in op.get("requestBody", {}).get("content", {}).items():
            if media_type == "application/x-ndjson":
                continue
            assert "example" in media, f"{method} {path} {media_type}: no example"
            pointer = "/".join(p.replace("~", "~0").replace("/", "~1") for p in
                               ["paths", path, method, "requestBody", "content", media_type,
                                "schema"])
            validator = Draft202012Validator({"$ref": "urn:sb-spec#/" + pointer},
                                             registry=registry)
            errors = [e.message for e in validator.iter_errors(media["example"])]
            assert not errors, f"{method} {path}: its example is invalid: {errors}"


def test_every_error_is_a_documented_problem():
    for path, method, op in operations():
        authenticated = op.get("security", SPEC.get("security")) not in (None, [])
        codes = set(op["responses"])
        if authenticated:
            assert "401" in codes, f"{method} {path}: 401 undocumented"
        if "x-sensorbus-access" in op and path != "/auth/me":
            # gw_auth_require(): 403 for a missing scope or role, 429 for an empty bucket.
            assert {"403", "429"} <= codes, f"{method} {path}: 403/429 undocumented"
        for code, resp in op["responses"].items():
            # /readyz's 503 is a probe's verdict in the same shape as its 200, not an error.
            if code.startswith(("4", "5")) and path != "/readyz":
                ref = resp.get("$ref", "")
                resp = SPEC["components"]["responses"][ref.rsplit("/", 1)[-1]] if ref else resp
                assert list(resp.get("content", {})) == ["application/problem+json"], \
                    f"{method} {path} {code}: not problem+json"


def test_docs_page_renders_the_spec_without_the_internet(stack):
    r = stack.http.get(stack.url + "/docs", timeout=10)
    assert r.status_code == 200
    assert r.headers["Content-Type"].startswith("text/html")
    page = r.text
    assert "openapi.json" in page
    # Nothing loaded from elsewhere: no external scripts, styles, images or fonts.
    assert not re.search(r'<(script|link|img|iframe)\b[^>]*\b(src|href)\s*=\s*"(https?:)?//', page)
    assert "@import" not in page and "url(" not in page
    assert "default-src 'none'" in r.headers.get("Content-Security-Policy", "")


# ---- schemathesis ---------------------------------------------------------------------------


class Credentials:
    """A person (the admin who registered a fresh organization) and an API key of a project in
    that same organization, so that both kinds of callers can see the same data."""

    def __init__(self, stack):
        slug = "oa" + uuid.uuid4().hex[:12]
        email = f"fuzz-{slug}@example.com"
        password = "fuzzing password " + uuid.uuid4().hex
        r = stack.http.post(stack.url + "/auth/register", timeout=30, json={
            "email": email, "password": password, "name": "Fuzz", "organization": slug})
        assert r.status_code == 201, r.text
        self.project_id = stack.sbctl("projects", "create", slug, "p1").stdout.strip()
        self.key = stack.sbctl("keys", "create", "--org", slug, "--project", "p1", "--name",
                               "fuzz", "--scopes", "ingest,orders,read").stdout.strip()
        assert self.key.startswith("lok_")
        r = stack.http.post(stack.url + "/auth/token", timeout=30,
                            json={"email": email, "password": password})
        assert r.status_code == 200, r.text
        self.access_token = r.json()["access_token"]

    def headers_for(self, operation):
        """One Authorization header per credential kind the operation accepts (one without any
        for public operations)."""
        schemes = {name for req in operation.get("security", []) for name in req}
        out = []
        if "apiKey" in schemes:
            out.append({"Authorization": f"Bearer {self.key}"})
        if "accessToken" in schemes:
            out.append({"Authorization": f"Bearer {self.access_token}"})
        return out or [{}]


@pytest.fixture(scope="module")
def credentials(stack):
    return Credentials(stack)


@schemathesis.serializer("application/x-ndjson")
def ndjson_serializer(ctx, value):
    """POST /sensors/data's NDJSON form: one JSON document per line (an array's items, or the
    value itself when the generator made something else, so that the gateway judges it)."""
    items = value if isinstance(value, list) else [value]
    return "".join(json.dumps(v) + "\n" for v in items).encode()


schema = schemathesis.openapi.from_dict(SPEC)
schema.config.generation.update(max_examples=MAX_EXAMPLES, deterministic=True,
                                with_security_parameters=False, allow_extra_parameters=False)

EVHTTP_METHODS = {"GET", "POST", "HEAD", "PUT", "DELETE", "OPTIONS", "TRACE", "CONNECT", "PATCH"}

CHECKS = [
    sc.not_a_server_error,
    oc.status_code_conformance,
    oc.content_type_conformance,
    oc.response_headers_conformance,
    oc.response_schema_conformance,
    oc.negative_data_rejection,
]


@schema.parametrize()
@settings(max_examples=MAX_EXAMPLES, derandomize=True, deadline=None, database=None,
          phases=[Phase.explicit, Phase.generate], suppress_health_check=list(HealthCheck))
def test_api_conforms_to_its_spec(case, credentials):
    op = SPEC["paths"][case.operation.path][case.operation.method.lower()]
    if case.method.upper() not in EVHTTP_METHODS:
        # libevent 2.1's parser knows only these methods and answers any other (QUERY,
        # PROPFIND...) itself with 501 and a small HTML page, before the gateway sees the
        # request: RFC 9110's answer to a method the server does not recognise.
        assert case.call(base_url=BASE_URL, timeout=30).status_code == 501
        return
    for headers in credentials.headers_for(op):
        # Generated headers (a fuzzed Authorization among them) give way to real credentials.
        case.headers = {k: v for k, v in (case.headers or {}).items()
                        if k.lower() != "authorization"}
        case.call_and_validate(base_url=BASE_URL, headers=headers, checks=CHECKS, timeout=30)
