-- Run once by the postgres service, as its superuser, when it initializes its volume (the
-- image runs /docker-entrypoint-initdb.d/*.sql with psql). It sets up what deploy/README.md asks
-- of a PostgreSQL for Kubernetes: the role sb, which owns the database, runs the migrations and
-- the consumer daemons, bypasses row-level security (they write every tenant's rows; 0009_rls.sql
-- refuses to run otherwise) and may create the gateway's role (the gateway-role service).
-- The password is read by psql from the secret, so it is on no command line.
\set password `cat /run/secrets/pg_password`
CREATE ROLE sb LOGIN BYPASSRLS CREATEROLE PASSWORD :'password';
CREATE DATABASE sensorbus OWNER sb;
