"""Row-level security, seen from the gateway's own database role (sb_gateway, a member of sb_api).

The tables are discovered from information_schema, so a tenant table added by a later migration is
checked without editing this file: RLS must be enabled and forced on it, and the gateway's role
must see nothing without an organization and only that organization's rows with one, even with a
query that has no WHERE clause. sql/0009_rls.sql and docs/tenancy.md describe the design.
"""

import pathlib
import uuid

import psycopg
import pytest
from psycopg import errors, sql

from conftest import STACK


def gateway_dsn():
    """The DSN the stack gives the gateway: role sb_gateway, password from the secrets dir."""
    if STACK.get("SB_PG_GATEWAY_DSN"):
        return STACK["SB_PG_GATEWAY_DSN"]
    password = (pathlib.Path(STACK["SB_RUN_DIR"]) / "secrets" / "pg_gateway_password").read_text()
    return (f"postgresql://sb_gateway:{password.strip()}@127.0.0.1:{STACK['SB_PG_PORT']}"
            "/sensorbus")


def tenant_tables(conn):
    """(name, is_partition) of every table of the public schema with an org_id column."""
    return conn.execute(
        "SELECT c.table_name, p.relispartition FROM information_schema.columns c "
        "JOIN information_schema.tables t USING (table_schema, table_name) "
        "JOIN pg_class p ON p.oid = format('%I.%I', c.table_schema, c.table_name)::regclass "
        "WHERE c.table_schema = 'public' AND c.column_name = 'org_id' "
        "AND t.table_type = 'BASE TABLE' ORDER BY 1").fetchall()


@pytest.fixture(scope="module")
def owner(stack):
    with psycopg.connect(stack.pg_dsn, autocommit=True) as conn:
        yield conn


@pytest.fixture
def gateway():
    with psycopg.connect(gateway_dsn()) as conn:
        yield conn


def as_org(conn, org_id):
    """Starts a transaction whose statements run as organization org_id (as db_pool_query_as)."""
    conn.execute("SELECT set_config('app.org_id', %s, true)", (org_id,))


@pytest.fixture(scope="module")
def orgs(owner):
    """Two organizations with rows in the core tenant tables, written as the owner."""
    owner.execute("SELECT sb_ensure_reading_partition(now())")
    ids = []
    for _ in range(2):
        slug = "r" + uuid.uuid4().hex[:12]
        org = owner.execute("INSERT INTO organizations (slug, name) VALUES (%s, %s) RETURNING id",
                            (slug, slug)).fetchone()[0]
        project = owner.execute("INSERT INTO projects (org_id, slug, name) VALUES (%s, 'p', 'p') "
                                "RETURNING id", (org,)).fetchone()[0]
        user = owner.execute(
            "INSERT INTO users (email, name, password_hash) VALUES (%s, 'R', '$argon2id$x') "
            "RETURNING id", (f"{slug}@example.com",)).fetchone()[0]
        owner.execute("INSERT INTO memberships (user_id, org_id, role) VALUES (%s, %s, 'admin')",
                      (user, org))
        owner.execute("INSERT INTO api_keys (org_id, project_id, prefix, secret_hash) "
                      "VALUES (%s, %s, %s, repeat('a', 64))",
                      (org, project, "".join("abcdefgh"[int(c, 16) % 8]
                                             for c in uuid.uuid4().hex[:12])))
        owner.execute("INSERT INTO audit_logs (org_id, actor, action, target_type, target_id) "
                      "VALUES (%s, 'test', 'project.create', 'project', %s)", (org, str(project)))
        owner.execute("INSERT INTO sensors (org_id, project_id, id, type) "
                      "VALUES (%s, %s, 's-1', 'temperature')", (org, project))
        owner.execute("INSERT INTO sensor_readings (org_id, project_id, reading_id, sensor_id, ts, "
                      "value, kafka_partition, kafka_offset) "
                      "VALUES (%s, %s, gen_random_uuid(), 's-1', now(), 1, 0, 0)", (org, project))
        owner.execute("INSERT INTO refresh_tokens (user_id, org_id, token_hash, family_id, "
                      "expires_at) VALUES (%s, %s, %s, gen_random_uuid(), now() + interval '1h')",
                      (user, org, uuid.uuid4().hex * 2))
        ids.append((str(org), str(project), str(user)))
    return ids


def test_the_gateway_role_is_bound_by_rls(owner, gateway):
    role = gateway.execute("SELECT rolsuper, rolbypassrls FROM pg_roles "
                           "WHERE rolname = current_user").fetchone()
    assert role == (False, False), "the gateway's role must neither be superuser nor bypass RLS"
    owned = gateway.execute("SELECT count(*) FROM pg_class WHERE relowner = "
                            "(SELECT oid FROM pg_roles WHERE rolname = current_user)").fetchone()
    assert owned[0] == 0, "the gateway's role must own no table (RLS does not bind owners)"
    # The migration owner, which also runs the consumer daemons, is the one exempt role.
    assert owner.execute("SELECT rolsuper OR rolbypassrls FROM pg_roles "
                         "WHERE rolname = current_user").fetchone()[0]


def test_rls_is_enabled_and_forced_on_every_tenant_table(owner):
    tables = tenant_tables(owner)
    assert {"projects", "api_keys", "memberships", "audit_logs", "sensor_readings"} <= \
        {t for t, _ in tables}
    for table, partition in tables:
        enabled, forced = owner.execute(
            "SELECT relrowsecurity, relforcerowsecurity FROM pg_class WHERE oid = %s::regclass",
            (table,)).fetchone()
        if partition:
            # Partitions are reached through their parent (whose policy applies); nobody but the
            # owner may touch one directly.
            assert not owner.execute("SELECT has_table_privilege('sb_gateway', %s, 'SELECT') "
                                     "OR has_table_privilege('sb_gateway', %s, 'INSERT')",
                                     (table, table)).fetchone()[0], table
            parent = owner.execute("SELECT inhparent::regclass::text FROM pg_inherits "
                                   "WHERE inhrelid = %s::regclass", (table,)).fetchone()[0]
            assert parent in {t for t, _ in tables}, table
            continue
        assert enabled and forced, f"{table}: RLS enabled={enabled} forced={forced}"
    for table in ("organizations", "users"):
        assert owner.execute("SELECT relrowsecurity AND relforcerowsecurity FROM pg_class "
                             "WHERE oid = %s::regclass", (table,)).fetchone()[0], table


def readable(owner, table):
    return owner.execute("SELECT has_any_column_privilege('sb_gateway', %s, 'SELECT')",
                         (table,)).fetchone()[0]


def test_no_organization_sees_nothing(owner, gateway, orgs):
    for table, partition in tenant_tables(owner):
        if partition:
            continue
        query = sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier(table))
        if not readable(owner, table):
            with pytest.raises(errors.InsufficientPrivilege):
                gateway.execute(query)
            gateway.rollback()
            continue
        assert gateway.execute(query).fetchone()[0] == 0, table
        gateway.commit()
        # Once a session has set app.org_id in some transaction, reading it gives '' rather
        # than NULL: still no organization, and no error.
        with gateway.transaction():
            as_org(gateway, orgs[0][0])
        assert gateway.execute(query).fetchone()[0] == 0, table
        gateway.commit()


def test_an_organization_sees_only_its_rows_without_a_where_clause(owner, gateway, orgs):
    org_a = orgs[0][0]
    for table, partition in tenant_tables(owner):
        if partition or not readable(owner, table):
            continue
        ident = sql.Identifier(table)
        theirs = owner.execute(sql.SQL("SELECT count(*) FROM {} WHERE org_id = %s").format(ident),
                               (org_a,)).fetchone()[0]
        with gateway.transaction():
            as_org(gateway, org_a)
            seen = gateway.execute(sql.SQL("SELECT count(*) FROM {}").format(ident)).fetchone()[0]
            foreign = gateway.execute(sql.SQL(
                "SELECT count(*) FROM {} WHERE org_id IS DISTINCT FROM %s").format(ident),
                (org_a,)).fetchone()[0]
        assert (seen, foreign) == (theirs, 0), table
    # The seeded tables hold the other organization's rows too, so the check above is not vacuous.
    for table in ("projects", "api_keys", "memberships", "audit_logs", "sensors",
                  "sensor_readings"):
        others = owner.execute(sql.SQL("SELECT count(*) FROM {} WHERE org_id = %s").format(
            sql.Identifier(table)), (orgs[1][0],)).fetchone()[0]
        assert others > 0, table
    # Organizations and people: one's own row, and one's own members.
    with gateway.transaction():
        as_org(gateway, org_a)
        assert gateway.execute("SELECT id::text FROM organizations").fetchall() == [(org_a,)]
        assert gateway.execute("SELECT id::text FROM users").fetchall() == [(orgs[0][2],)]


def test_writes_for_another_organization_are_refused(gateway, orgs):
    (org_a, _, _), (org_b, project_b, user_b) = orgs
    for statement, params in [
        ("INSERT INTO projects (org_id, slug, name) VALUES (%s, 'x', 'x')", (org_b,)),
        ("INSERT INTO audit_logs (org_id, actor, action, target_type, target_id) "
         "VALUES (%s, 'x', 'project.create', 'project', 'x')", (org_b,)),
        ("INSERT INTO memberships (user_id, org_id, role) VALUES (%s, %s, 'admin')",
         (user_b, org_b)),
    ]:
        with pytest.raises(errors.InsufficientPrivilege):
            with gateway.transaction():
                as_org(gateway, org_a)
                gateway.execute(statement, params)
    # Updates and deletes cannot reach the other organization's rows.
    with gateway.transaction():
        as_org(gateway, org_a)
        assert gateway.execute("UPDATE api_keys SET revoked_at = now() WHERE project_id = %s",
                               (project_b,)).rowcount == 0
        assert gateway.execute("DELETE FROM memberships WHERE org_id = %s",
                               (org_b,)).rowcount == 0


def test_secrets_and_tokens_are_out_of_reach(gateway, orgs):
    for statement in ("SELECT password_hash FROM users", "SELECT secret_hash FROM api_keys",
                      "SELECT count(*) FROM refresh_tokens", "SELECT count(*) FROM schema_migrations",
                      "UPDATE audit_logs SET actor = 'x'", "DELETE FROM audit_logs"):
        with pytest.raises(errors.InsufficientPrivilege):
            with gateway.transaction():
                as_org(gateway, orgs[0][0])
                gateway.execute(statement)


def test_security_definer_functions_are_pinned_and_private(owner):
    rows = owner.execute(
        "SELECT p.oid::regprocedure::text, p.proconfig, "
        "has_function_privilege('sb_gateway', p.oid, 'EXECUTE'), "
        "EXISTS (SELECT FROM aclexplode(coalesce(p.proacl, acldefault('f', p.proowner))) a "
        "        WHERE a.grantee = 0) "
        "FROM pg_proc p WHERE p.pronamespace = 'public'::regnamespace AND p.prosecdef").fetchall()
    names = {name.split("(")[0] for name, *_ in rows}
    assert {"sb_api_key_lookup", "sb_project_org", "sb_login_lookup", "sb_register",
            "sb_refresh_rotate", "sb_refresh_revoke"} <= names
    for name, config, callable_by_gateway, public in rows:
        assert config and "search_path=public, pg_temp" in config, (name, config)
        assert callable_by_gateway and not public, name


def test_a_key_lookup_reveals_that_key_only(gateway, owner, orgs):
    """Before the organization is known, the gateway finds a key by prefix, and nothing else."""
    prefix = owner.execute("SELECT prefix FROM api_keys WHERE org_id = %s",
                           (orgs[1][0],)).fetchone()[0]
    rows = gateway.execute("SELECT org_id::text, project_id::text FROM sb_api_key_lookup(%s)",
                           (prefix,)).fetchall()
    assert rows == [(orgs[1][0], orgs[1][1])]
    assert gateway.execute("SELECT count(*) FROM api_keys").fetchone()[0] == 0
