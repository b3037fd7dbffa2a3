/* test-sbctl.c: the sbctl binary against a real PostgreSQL (SB_TEST_PG_DSN).
 *
 * Each test runs sbctl in a schema of its own (PGOPTIONS sets search_path), so migrations run
 * from scratch and tests do not see each other's rows.
 */
#include <criterion/criterion.h>
#include <ctype.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "sb_test_pg.h"
#include "auth_key.h"
#include "db.h"
#include "sb-config.h"

typedef struct run {
    int status;
    char out[8192];
    char err[8192];
} run_t;

static char schema[64];
static char pgoptions[128];
static db_t *db;

static void setup(void)
{
    snprintf(schema, sizeof(schema), "sbctl_test_%d", (int)getpid());
    snprintf(pgoptions, sizeof(pgoptions), "-c search_path=%s", schema);
    setenv("PGOPTIONS", pgoptions, 1);
    cr_assert_eq(db_new(sb_test_pg_dsn(), &db), 0);
    cr_assert(db_connected(db), "cannot connect to SB_TEST_PG_DSN: %s", db_errmsg(db));
    char sql[256];
    snprintf(sql, sizeof(sql), "DROP SCHEMA IF EXISTS %s CASCADE; CREATE SCHEMA %s", schema,
             schema);
    cr_assert_eq(db_exec_simple(db, sql), 0, "%s", db_errmsg(db));
}

static void teardown(void)
{
    char sql[256];
    snprintf(sql, sizeof(sql), "DROP SCHEMA IF EXISTS %s CASCADE", schema);
    if (db)
        (void)db_exec_simple(db, sql);
    db_free(db);
}

static void slurp(FILE *f, char *buf, size_t size)
{
    rewind(f);
    size_t n = fread(buf, 1, size - 1, f);
    buf[n] = '\0';
    fclose(f);
}

/* Runs sbctl with @args (NULL-terminated) and NAME=VALUE @env additions. */
static run_t *sbctl(const char *const *env, const char *const *args)
{
    static run_t r;
    FILE *out = tmpfile(), *err = tmpfile();
    cr_assert(out && err);
    pid_t pid = fork();
    cr_assert_geq(pid, 0);
    if (pid == 0) {
        char *argv[32] = {(char *)SBCTL_BIN};
        for (int i = 0; args[i] && i < 30; i++)
            argv[i + 1] = (char *)args[i];
        setenv("SB_PG_DSN", sb_test_pg_dsn(), 1);
        setenv("SB_RUN_DIR", "/nonexistent", 1); /* no stack.env of a developer's stack */
        for (int i = 0; env && env[i]; i++)
            putenv((char *)env[i]);
        dup2(fileno(out), 1);
        dup2(fileno(err), 2);
        execv(SBCTL_BIN, argv);
        _exit(127);
    }
    int st;
    cr_assert_eq(waitpid(pid, &st, 0), pid);
    r.status = WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
    slurp(out, r.out, sizeof(r.out));
    slurp(err, r.err, sizeof(r.err));
    return &r;
}

#define ARGS(...) ((const char *const[]){__VA_ARGS__, NULL})

static char *query1(const char *sql, const char *param)
{
    const char *params[] = {param};
    PGresult *res = NULL;
    cr_assert_eq(db_exec(db, NULL, sql, param ? 1 : 0, params, &res), 0, "%s", db_errmsg(db));
    cr_assert_eq(PQntuples(res), 1, "%s", sql);
    char *v = strdup(PQgetisnull(res, 0, 0) ? "NULL" : PQgetvalue(res, 0, 0));
    PQclear(res);
    return v;
}

TestSuite(sbctl, .init = setup, .fini = teardown);

/* The number of migrations in the source tree's sql/ (files named NNNN_*.sql). */
static int migrations_on_disk(void)
{
    DIR *dir = opendir(SB_SQL_DIR);
    struct dirent *e;
    int n = 0;

    cr_assert_not_null(dir, "%s", SB_SQL_DIR);
    while ((e = readdir(dir))) {
        size_t len = strlen(e->d_name);
        if (len > 9 && isdigit((unsigned char)e->d_name[0]) && e->d_name[4] == '_' &&
            strcmp(e->d_name + len - 4, ".sql") == 0)
            n++;
    }
    closedir(dir);
    return n;
}

Test(sbctl, migrate_applies_once_and_records_checksums)
{
    run_t *r = sbctl(NULL, ARGS("migrate"));
    cr_assert_eq(r->status, 0, "%s", r->err);
    cr_assert(strstr(r->out, "applied 0001"), "%s", r->out);
    char *n =
        query1("SELECT count(*) FROM schema_migrations WHERE checksum ~ '^[0-9a-f]{64}$'", NULL);
    char want[16];
    snprintf(want, sizeof(want), "%d", migrations_on_disk());
    cr_assert_str_eq(n, want, "every sql/NNNN_*.sql file is recorded once");
    free(n);
    char *t = query1("SELECT to_regclass('sensor_readings')::text", NULL);
    cr_assert_str_eq(t, "sensor_readings");
    free(t);

    r = sbctl(NULL, ARGS("migrate"));
    cr_assert_eq(r->status, 0, "%s", r->err);
    cr_assert_null(strstr(r->out, "applied 0001"), "nothing applied twice: %s", r->out);
    cr_assert(strstr(r->out, "up to date"), "%s", r->out);
}

static void write_file(const char *path, const char *text)
{
    FILE *f = fopen(path, "w");
    cr_assert_not_null(f, "%s", path);
    fputs(text, f);
    fclose(f);
}

Test(sbctl, migrate_refuses_edited_file_and_rolls_back_failed_one)
{
    char dir[] = "/tmp/sbctl-sql-XXXXXX", path[256], env[300];
    cr_assert_not_null(mkdtemp(dir));
    snprintf(env, sizeof(env), "SB_SQL_DIR=%s", dir);
    const char *envs[] = {env, NULL};

    snprintf(path, sizeof(path), "%s/0001_one.sql", dir);
    write_file(path, "CREATE TABLE one (x int);\n");
    cr_assert_eq(sbctl(envs, ARGS("migrate"))->status, 0);

    char bad[256];
    snprintf(bad, sizeof(bad), "%s/0002_bad.sql", dir);
    write_file(bad, "CREATE TABLE two (x int);\nSELECT no_such_function();\n");
    run_t *r = sbctl(envs, ARGS("migrate"));
    cr_assert_eq(r->status, 1);
    cr_assert(strstr(r->err, "0002_bad.sql"), "%s", r->err);
    char *t = query1("SELECT coalesce(to_regclass('two')::text, 'none')", NULL);
    cr_assert_str_eq(t, "none", "a failed migration leaves nothing behind");
    free(t);
    unlink(bad);

    write_file(path, "CREATE TABLE one (x int, y int);\n");
    r = sbctl(envs, ARGS("migrate"));
    cr_assert_eq(r->status, 1);
    cr_assert(strstr(r->err, "0001_one.sql changed after it was applied"), "%s", r->err);
    unlink(path);
    rmdir(dir);
}

Test(sbctl, tenants_are_idempotent_and_keys_hash_with_the_pepper)
{
    cr_assert_eq(sbctl(NULL, ARGS("migrate"))->status, 0);
    run_t *r = sbctl(NULL, ARGS("orgs", "create", "acme", "--name", "Acme Inc"));
    cr_assert_eq(r->status, 0, "%s", r->err);
    char org_id[64];
    cr_assert_eq(strlen(r->out), 37, "one UUID line: %s", r->out);
    snprintf(org_id, sizeof(org_id), "%.36s", r->out);
    r = sbctl(NULL, ARGS("orgs", "create", "acme"));
    cr_assert_eq(strncmp(r->out, org_id, 36), 0, "same id again: %s", r->out);

    r = sbctl(NULL, ARGS("projects", "create", "acme", "plant-1"));
    cr_assert_eq(r->status, 0, "%s", r->err);
    char project_id[64];
    cr_assert_eq(strlen(r->out), 37, "one UUID line: %s", r->out);
    snprintf(project_id, sizeof(project_id), "%.36s", r->out);
    r = sbctl(NULL, ARGS("projects", "create", "acme", "plant-1"));
    cr_assert_eq(strncmp(r->out, project_id, 36), 0, "same id again: %s", r->out);
    cr_assert_eq(sbctl(NULL, ARGS("projects", "create", "nope", "plant-1"))->status, 1);

    const char *pepper[] = {"SB_KEY_PEPPER=test pepper", NULL};
    r = sbctl(pepper, ARGS("keys", "create", "--org", "acme", "--project", "plant-1", "--scopes",
                           "read,ingest", "--expires-in-days", "7"));
    cr_assert_eq(r->status, 0, "%s", r->err);
    cr_assert_eq(strlen(r->out), AUTH_KEY_TOKEN_LEN + 1, "only the token on stdout: %s", r->out);
    char prefix[AUTH_KEY_PREFIX_LEN + 1], secret[AUTH_KEY_SECRET_LEN + 1];
    cr_assert_eq(auth_key_parse(r->out, AUTH_KEY_TOKEN_LEN, prefix, secret), 0);
    cr_assert(strstr(r->err, prefix), "prefix reported on stderr: %s", r->err);

    char want[AUTH_KEY_HASH_HEX + 1];
    cr_assert_eq(auth_key_hash("test pepper", 11, secret, want), 0);
    char *hash = query1("SELECT secret_hash FROM api_keys WHERE prefix = $1", prefix);
    cr_assert_str_eq(hash, want);
    free(hash);
    char *row = query1("SELECT scopes::text || ' ' || (project_id::text = $1::text) || ' ' || "
                       "(expires_at BETWEEN now() + interval '6 days' AND now() + interval "
                       "'8 days') FROM api_keys",
                       project_id);
    cr_assert_str_eq(row, "{ingest,read} true true");
    free(row);

    r = sbctl(NULL, ARGS("keys", "list", "--org", "acme"));
    cr_assert_eq(r->status, 0);
    cr_assert(strstr(r->out, prefix) && strstr(r->out, "acme/plant-1"), "%s", r->out);
    cr_assert_null(strstr(r->out, secret), "never a secret in a listing");

    r = sbctl(NULL, ARGS("keys", "revoke", prefix));
    cr_assert_eq(r->status, 0, "%s", r->err);
    char *revoked = query1("SELECT revoked_at IS NOT NULL FROM api_keys WHERE prefix = $1", prefix);
    cr_assert_str_eq(revoked, "t");
    free(revoked);
    cr_assert_eq(sbctl(NULL, ARGS("keys", "revoke", prefix))->status, 0, "revoking is idempotent");
    cr_assert_eq(sbctl(NULL, ARGS("keys", "revoke", "aaaaaaaaaaaa"))->status, 1);
}

Test(sbctl, usage_errors_and_missing_settings)
{
    cr_assert_eq(sbctl(NULL, ARGS("frobnicate"))->status, 2);
    cr_assert_eq(sbctl(NULL, ARGS("orgs", "create"))->status, 2);
    cr_assert_eq(sbctl(NULL, ARGS("orgs", "create", "Not_A_Slug"))->status, 2);
    cr_assert_eq(sbctl(NULL, ARGS("keys", "create", "--org", "acme"))->status, 2);
    cr_assert_eq(
        sbctl(NULL, ARGS("keys", "create", "--org", "a", "--project", "b", "--scopes", "admin"))
            ->status,
        2);

    run_t *r = sbctl(NULL, ARGS("keys", "--help"));
    cr_assert_eq(r->status, 0);
    cr_assert(strstr(r->out, "Usage: sbctl keys create"), "%s", r->out);

    const char *no_pepper[] = {"SB_KEY_PEPPER=", "SB_KEY_PEPPER_FILE=", NULL};
    r = sbctl(no_pepper, ARGS("keys", "create", "--org", "a", "--project", "b"));
    cr_assert_eq(r->status, 1);
    cr_assert(strstr(r->err, "SB_KEY_PEPPER"), "%s", r->err);

    const char *bad_dsn[] = {"SB_PG_DSN=postgresql://sb@127.0.0.1:1/x", NULL};
    r = sbctl(bad_dsn, ARGS("migrate"));
    cr_assert_eq(r->status, 1);
    cr_assert(strstr(r->err, "cannot connect to PostgreSQL"), "%s", r->err);
}

Test(sbctl, pg_dsn_can_come_from_a_file)
{
    char path[] = "/tmp/sbctl-dsn-XXXXXX";
    int fd = mkstemp(path);
    cr_assert_geq(fd, 0);
    FILE *f = fdopen(fd, "w");
    fprintf(f, "%s\n", sb_test_pg_dsn());
    fclose(f);

    char file_env[64];
    snprintf(file_env, sizeof(file_env), "SB_PG_DSN_FILE=%s", path);
    const char *from_file[] = {"SB_PG_DSN=", file_env, NULL};
    run_t *r = sbctl(from_file, ARGS("migrate"));
    cr_assert_eq(r->status, 0, "%s", r->err);

    /* Both at once is ambiguous: refused, naming both. */
    const char *both[] = {file_env, NULL};
    r = sbctl(both, ARGS("migrate"));
    cr_assert_eq(r->status, 1);
    cr_assert(strstr(r->err, "SB_PG_DSN_FILE") && strstr(r->err, "not both"), "%s", r->err);
    unlink(path);
}
