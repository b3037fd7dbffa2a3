-- 0009_rls: row-level security on every tenant table, and what the gateway's role may do.
-- Applied once by `sbctl migrate`, inside a transaction, and recorded in schema_migrations.
-- Runs after every other migration; a later migration that adds a tenant table calls
-- sb_rls_tenant() on it and grants sb_api what the gateway needs (docs/tenancy.md).
--
-- The model (docs/tenancy.md has the long form):
--   * sb_api is a NOLOGIN role holding exactly the privileges the HTTP API needs. The gateway logs
--     in as a member of it (sb_gateway, created with its password by the stack scripts). It owns
--     nothing, so row-level security always applies to it.
--   * Every statement the gateway makes for a caller runs with app.org_id set to the caller's
--     organization for that transaction only (db_pool_query_as). Every table with an org_id
--     column has RLS enabled and forced, with one policy: org_id = sb_current_org(). A query
--     that forgets its WHERE clause still sees (and can write) only that organization's rows;
--     with no organization set it sees nothing.
--   * The role that runs the migrations owns the tables and also runs the consumer daemons, which
--     write every tenant's rows (a batch of readings spans organizations). It must have BYPASSRLS
--     (or be a superuser): FORCE makes RLS apply to owners, and this is the one role meant to be
--     exempt.
--   * What must happen before an organization is known (an API key by prefix, a project's
--     organization, a sign-in by email, registering a new organization, refresh-token rotation
--     and logout, finding a user by email to add them) goes through the SECURITY DEFINER
--     functions below: each does one narrow thing, with a fixed search_path, and only sb_api
--     (not PUBLIC) may call them.
--
-- Everything names objects unqualified and uses current_schema(), so the migration applies to
-- whichever schema it runs in (the sbctl tests run migrations in a schema of their own).

DO $$
BEGIN
    IF NOT (SELECT rolsuper OR rolbypassrls FROM pg_roles WHERE rolname = current_user) THEN
        RAISE EXCEPTION 'role % runs the migrations and the consumer daemons, which write every '
            'tenant''s rows, so it must bypass row-level security', current_user
            USING HINT = format('as a superuser: ALTER ROLE %I BYPASSRLS', current_user);
    END IF;
    IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'sb_api') THEN
        BEGIN
            CREATE ROLE sb_api NOLOGIN;
        EXCEPTION WHEN insufficient_privilege THEN
            RAISE EXCEPTION 'role sb_api (the gateway''s privileges) does not exist and % may not '
                'create it', current_user
                USING HINT = 'as a superuser: CREATE ROLE sb_api NOLOGIN; then GRANT sb_api TO '
                             'the gateway''s login role';
        END;
    END IF;
    EXECUTE format('GRANT USAGE ON SCHEMA %I TO sb_api', current_schema());
END
$$;

-- The caller's organization, or NULL when none is set. NULLIF: once a session has set the
-- setting in some transaction, reading it afterwards gives '' rather than NULL, and ''::uuid
-- would be an error instead of "no organization".
CREATE FUNCTION sb_current_org() RETURNS uuid
LANGUAGE sql STABLE PARALLEL SAFE
AS $$ SELECT nullif(current_setting('app.org_id', true), '')::uuid $$;

-- Enables and forces RLS on a table with an org_id column, with the one tenant policy. For
-- migrations (it alters the table, so only its owner can run it); idempotent.
CREATE FUNCTION sb_rls_tenant(t regclass) RETURNS void
LANGUAGE plpgsql
AS $$
BEGIN
    EXECUTE format('ALTER TABLE %s ENABLE ROW LEVEL SECURITY, FORCE ROW LEVEL SECURITY', t);
    EXECUTE format('DROP POLICY IF EXISTS tenant_isolation ON %s', t);
    EXECUTE format('CREATE POLICY tenant_isolation ON %s USING (org_id = sb_current_org()) '
                   'WITH CHECK (org_id = sb_current_org())', t);
END
$$;
REVOKE ALL ON FUNCTION sb_rls_tenant(regclass) FROM PUBLIC;

-- Every table of this schema with an org_id column, found rather than listed, so that none is
-- forgotten. Partitions are skipped: they are reached through their parent, whose policy applies
-- to them, and no role but the owner has privileges on them directly (new monthly partitions of
-- sensor_readings appear at run time, see 0001).
DO $$
DECLARE
    t regclass;
BEGIN
    FOR t IN
        SELECT c.oid::regclass FROM information_schema.columns col
        JOIN pg_class c ON c.relname = col.table_name
            AND c.relnamespace = col.table_schema::regnamespace
        WHERE col.table_schema = current_schema() AND col.column_name = 'org_id'
            AND c.relkind IN ('r', 'p') AND NOT c.relispartition
        ORDER BY 1
    LOOP
        PERFORM sb_rls_tenant(t);
    END LOOP;
END
$$;

-- Tenant data without an org_id column. An organization sees its own row; a person's row is
-- visible to the organizations they are a member of.
ALTER TABLE organizations ENABLE ROW LEVEL SECURITY, FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON organizations
    USING (id = sb_current_org()) WITH CHECK (id = sb_current_org());

ALTER TABLE users ENABLE ROW LEVEL SECURITY, FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON users
    USING (EXISTS (SELECT FROM memberships m
                   WHERE m.user_id = users.id AND m.org_id = sb_current_org()));

-- ---- what the gateway may do (as sb_api) --------------------------------------------------
-- Reads of every tenant table it serves; writes only where an endpoint writes. No grant at all
-- on refresh_tokens (the functions below do that work) or schema_migrations, and no UPDATE or
-- DELETE on audit_logs: the log is append-only.
GRANT SELECT ON organizations, projects, memberships, audit_logs, sensors, sensor_readings,
    anomalies, orders, order_events, order_requests TO sb_api;
-- Never the password hash: sign-in reads it through sb_login_lookup().
GRANT SELECT (id, email, name, created_at) ON users TO sb_api;
-- Never the secret's hash either: the key lookup is sb_api_key_lookup().
GRANT SELECT (id, org_id, project_id, prefix, name, scopes, created_at, expires_at, revoked_at,
              last_used_at, rate_limit_per_s) ON api_keys TO sb_api;
GRANT INSERT ON projects, api_keys, memberships, audit_logs, sensors TO sb_api;
GRANT UPDATE (revoked_at, last_used_at) ON api_keys TO sb_api;
-- role: removing a member locks the organization's admin rows (SELECT ... FOR UPDATE needs
-- UPDATE privilege), so that two removals cannot leave it without an admin.
GRANT UPDATE (role) ON memberships TO sb_api;
GRANT DELETE ON memberships TO sb_api;
-- POST /orders reserves, claims, completes and lazily expires its Idempotency-Key records.
GRANT INSERT, UPDATE, DELETE ON order_requests TO sb_api;

-- ---- lookups made before the organization is known (SECURITY DEFINER) ----------------------
-- They run as the owner (who bypasses RLS). Each returns only what its caller needs.

-- The gateway's API key check (keys.c): the key's organization, project, scopes, state and
-- the HMAC of its secret (the secret itself is stored nowhere).
CREATE FUNCTION sb_api_key_lookup(p_prefix text)
RETURNS TABLE (secret_hash text, org_id uuid, project_id uuid, scopes text[], revoked boolean,
               expires_us bigint, rate_limit_per_s integer)
LANGUAGE sql STABLE SECURITY DEFINER
AS $$
    SELECT k.secret_hash, k.org_id, k.project_id, k.scopes, k.revoked_at IS NOT NULL,
           (extract(epoch FROM k.expires_at) * 1000000)::bigint, k.rate_limit_per_s
    FROM api_keys k WHERE k.prefix = p_prefix
$$;

-- A project's organization (a person posting readings names the project per request; the
-- gateway compares the answer with the organization in their token).
CREATE FUNCTION sb_project_org(p_project_id uuid) RETURNS uuid
LANGUAGE sql STABLE SECURITY DEFINER
AS $$ SELECT org_id FROM projects WHERE id = p_project_id $$;

-- Sign-in: the person by email (case-insensitive) with one membership: the named
-- organization's, else their oldest. No row: unknown email; NULL org_id: not a member.
CREATE FUNCTION sb_login_lookup(p_email text, p_org_slug text)
RETURNS TABLE (user_id uuid, password_hash text, org_id uuid, role text)
LANGUAGE sql STABLE SECURITY DEFINER
AS $$
    SELECT u.id, u.password_hash, m.org_id, m.role FROM users u LEFT JOIN LATERAL (
        SELECT m.org_id, m.role FROM memberships m JOIN organizations o ON o.id = m.org_id
        WHERE m.user_id = u.id AND (p_org_slug IS NULL OR o.slug = p_org_slug)
        ORDER BY m.created_at, m.org_id LIMIT 1) m ON true
    WHERE lower(u.email) = lower(p_email)
$$;

-- POST /auth/register: a new organization, its first user and their admin membership, with the
-- audit row, in one statement. A taken email fails on users_email_lower_key, a taken slug on
-- organizations_slug_key.
CREATE FUNCTION sb_register(p_slug text, p_email text, p_name text, p_password_hash text,
                            p_request_id text)
RETURNS TABLE (user_id uuid, org_id uuid)
LANGUAGE sql VOLATILE SECURITY DEFINER
AS $$
    WITH o AS (INSERT INTO organizations (slug, name) VALUES (p_slug, p_slug) RETURNING id),
    u AS (INSERT INTO users (email, name, password_hash) VALUES (p_email, p_name, p_password_hash)
          RETURNING id),
    m AS (INSERT INTO memberships (user_id, org_id, role)
          SELECT u.id, o.id, 'admin' FROM u, o),
    a AS (INSERT INTO audit_logs (org_id, actor, action, target_type, target_id, request_id,
                                  details)
          SELECT o.id, u.id::text, 'organization.create', 'organization', o.id::text,
                 p_request_id, jsonb_build_object('slug', p_slug, 'admin_email', p_email)
          FROM u, o)
    SELECT u.id, o.id FROM u, o
$$;

-- POST /auth/token: stores a new refresh token's hash in a new family, if the person still is a
-- member of the organization. True when stored.
CREATE FUNCTION sb_refresh_issue(p_user_id uuid, p_org_id uuid, p_token_hash text,
                                 p_ttl_s float8)
RETURNS boolean
LANGUAGE sql VOLATILE SECURITY DEFINER
AS $$
    WITH ins AS (
        INSERT INTO refresh_tokens (user_id, org_id, token_hash, family_id, expires_at)
        SELECT m.user_id, m.org_id, p_token_hash, gen_random_uuid(),
               now() + make_interval(secs => p_ttl_s)
        FROM memberships m WHERE m.user_id = p_user_id AND m.org_id = p_org_id
        RETURNING 1)
    SELECT EXISTS (SELECT FROM ins)
$$;

-- POST /auth/refresh. One statement, so one snapshot: either the token is live and is rotated
-- (its membership must still exist), or it was already revoked and its whole family is revoked
-- (reuse: reused_by names the user), never both. No user_id: refused.
CREATE FUNCTION sb_refresh_rotate(p_token_hash text, p_new_id uuid, p_new_hash text,
                                  p_ttl_s float8)
RETURNS TABLE (user_id uuid, org_id uuid, role text, reused_by text)
LANGUAGE sql VOLATILE SECURITY DEFINER
AS $$
    WITH rot AS (
        UPDATE refresh_tokens t SET revoked_at = now(), replaced_by = p_new_id
        FROM memberships m WHERE t.token_hash = p_token_hash AND t.revoked_at IS NULL
            AND t.expires_at > now() AND m.user_id = t.user_id AND m.org_id = t.org_id
        RETURNING t.user_id, t.org_id, t.family_id, m.role),
    ins AS (
        INSERT INTO refresh_tokens (id, user_id, org_id, token_hash, family_id, expires_at)
        SELECT p_new_id, user_id, org_id, p_new_hash, family_id,
               now() + make_interval(secs => p_ttl_s)
        FROM rot),
    reuse AS (
        UPDATE refresh_tokens SET revoked_at = now() WHERE revoked_at IS NULL
            AND family_id IN (SELECT family_id FROM refresh_tokens
                              WHERE token_hash = p_token_hash AND revoked_at IS NOT NULL)
        RETURNING user_id)
    SELECT rot.user_id, rot.org_id, rot.role, (SELECT min(user_id::text) FROM reuse)
    FROM (VALUES (1)) v LEFT JOIN rot ON true
$$;

-- POST /auth/logout: revokes one refresh token; its user when it was live, else NULL.
CREATE FUNCTION sb_refresh_revoke(p_token_hash text) RETURNS uuid
LANGUAGE sql VOLATILE SECURITY DEFINER
AS $$
    UPDATE refresh_tokens SET revoked_at = now()
    WHERE token_hash = p_token_hash AND revoked_at IS NULL RETURNING user_id
$$;

-- POST /members: the id of the person with this email (case-insensitive), or NULL. People are
-- added to an organization by email, before they are visible to it.
CREATE FUNCTION sb_user_id_by_email(p_email text) RETURNS uuid
LANGUAGE sql STABLE SECURITY DEFINER
AS $$ SELECT id FROM users WHERE lower(email) = lower(p_email) $$;

-- Every SECURITY DEFINER function of this schema: a search_path fixed to this schema (pg_temp
-- last, so that a caller's temporary objects can never shadow ours), callable by sb_api only.
DO $$
DECLARE
    f regprocedure;
BEGIN
    FOR f IN SELECT p.oid::regprocedure FROM pg_proc p
             WHERE p.pronamespace = current_schema()::regnamespace AND p.prosecdef
    LOOP
        EXECUTE format('ALTER FUNCTION %s SET search_path = %I, pg_temp', f, current_schema());
        EXECUTE format('REVOKE ALL ON FUNCTION %s FROM PUBLIC', f);
        EXECUTE format('GRANT EXECUTE ON FUNCTION %s TO sb_api', f);
    END LOOP;
END
$$;
