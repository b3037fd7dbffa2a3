#!/bin/sh
# gateway-role.sh: creates the gateway's PostgreSQL login role sb_gateway, or updates it, and
# checks that the gateway's DSN logs in as it. Runs after `sbctl migrate` (sql/0009_rls.sql
# creates sb_api, the privileges the role is granted), in an image that has psql: the setup Job
# (setup-job.yaml) and the compose service gateway-role. Every run sets the password again, so
# rotating it is: change both secrets, run the setup again, restart the gateway.
#
#   PG_DSN_FILE            the owner role's DSN (sb); creating roles needs CREATEROLE
#   GATEWAY_PASSWORD_FILE  the password sb_gateway gets
#   GATEWAY_DSN_FILE       the gateway's DSN (SB_GATEWAY_PG_DSN_FILE)
#
# psql takes a DSN only as an argument, so the owner's and the gateway's are on this one-shot
# container's command lines; the password reaches the server inside ALTER ROLE (a server with
# log_statement = ddl or all logs that statement).
set -eu

fail() {
    echo "gateway-role: $*" >&2
    exit 1
}

for var in PG_DSN_FILE GATEWAY_PASSWORD_FILE GATEWAY_DSN_FILE; do
    eval "file=\${$var:-}"
    [ -n "$file" ] || fail "$var is not set"
    [ -s "$file" ] || fail "$var: $file is missing or empty"
done

# The password is read by psql itself (\set from a command), so it is on no command line.
psql -X -q -v ON_ERROR_STOP=1 -d "$(cat "$PG_DSN_FILE")" <<'EOF' ||
\set password `cat "$GATEWAY_PASSWORD_FILE"`
SET client_min_messages = warning;
DO $$
BEGIN
    IF NOT (SELECT rolsuper OR rolcreaterole FROM pg_roles WHERE rolname = current_user) THEN
        RAISE EXCEPTION 'role % may not create or change the gateway''s role sb_gateway',
            current_user
            USING HINT = format('as a superuser: ALTER ROLE %I CREATEROLE', current_user);
    END IF;
    IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'sb_api') THEN
        RAISE EXCEPTION 'role sb_api does not exist: run sbctl migrate first';
    END IF;
    IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'sb_gateway') THEN
        CREATE ROLE sb_gateway LOGIN;
    ELSIF (SELECT rolsuper OR rolbypassrls FROM pg_roles WHERE rolname = 'sb_gateway') THEN
        RAISE EXCEPTION 'role sb_gateway bypasses row-level security, which must bind the gateway'
            USING HINT = 'as a superuser: ALTER ROLE sb_gateway NOSUPERUSER NOBYPASSRLS';
    END IF;
END
$$;
ALTER ROLE sb_gateway LOGIN PASSWORD :'password';
GRANT sb_api TO sb_gateway;
EOF
    fail "could not create or update role sb_gateway (psql's message is above)"

# The gateway's DSN must name this role with this password: the owner's DSN there would run
# the gateway without row-level security.
who=$(psql -X -qAt -d "$(cat "$GATEWAY_DSN_FILE")" -c 'SELECT current_user') ||
    fail "the gateway's DSN ($GATEWAY_DSN_FILE) does not log in (psql's message is above):" \
        "it must name user sb_gateway with the password in $GATEWAY_PASSWORD_FILE"
[ "$who" = sb_gateway ] ||
    fail "the gateway's DSN ($GATEWAY_DSN_FILE) logs in as $who, not sb_gateway:" \
        "the gateway must run as the role that row-level security binds"
echo "gateway-role: role sb_gateway is ready"
