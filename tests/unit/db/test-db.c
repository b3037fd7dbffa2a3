/* test-db.c: libs/db against a real PostgreSQL (SB_TEST_PG_DSN) plus pure COPY-escape tests. */
#include <criterion/criterion.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "sb_test_pg.h"
#include "db.h"

/* The server tests need a throwaway PostgreSQL; scripts/test provides the test stack's DSN. A
 * missing DSN fails loudly instead of passing without having tested anything. */

static db_t *test_db(void)
{
    db_t *db = NULL;
    cr_assert_eq(db_new(sb_test_pg_dsn(), &db), 0);
    cr_assert(db_connected(db), "cannot connect to SB_TEST_PG_DSN: %s", db_errmsg(db));
    return db;
}

static char *query_text(db_t *db, const char *sql)
{
    PGresult *res = NULL;
    cr_assert_eq(db_exec(db, NULL, sql, 0, NULL, &res), 0, "%s: %s", sql, db_errmsg(db));
    cr_assert_eq(PQntuples(res), 1);
    char *v = strdup(PQgetvalue(res, 0, 0));
    PQclear(res);
    return v;
}

static int escape_str(char *buf, size_t size, const char *s)
{
    return db_copy_escape(buf, size, s, strlen(s));
}

Test(db_copy_escape, plain_text_is_unchanged)
{
    char buf[64];
    int n = escape_str(buf, sizeof(buf), "temp-1 °C");
    cr_assert_eq(n, (int)strlen("temp-1 °C"));
    cr_assert_eq(memcmp(buf, "temp-1 °C", (size_t)n), 0);
}

Test(db_copy_escape, escapes_control_characters_and_backslash)
{
    char buf[64];
    int n = escape_str(buf, sizeof(buf), "a\tb\nc\rd\\e");
    cr_assert_eq(n, 13);
    cr_assert_eq(memcmp(buf, "a\\tb\\nc\\rd\\\\e", 13), 0);
}

Test(db_copy_escape, literal_backslash_n_never_reads_as_null)
{
    char buf[16];
    int n = escape_str(buf, sizeof(buf), "\\N");
    cr_assert_eq(n, 3);
    cr_assert_eq(memcmp(buf, "\\\\N", 3), 0);

    n = escape_str(buf, sizeof(buf), "\\.");
    cr_assert_eq(n, 3, "end-of-data marker must be escaped");
    cr_assert_eq(memcmp(buf, "\\\\.", 3), 0);
}

Test(db_copy_escape, empty_string_is_empty_not_null)
{
    char buf[4];
    cr_assert_eq(escape_str(buf, sizeof(buf), ""), 0);
}

Test(db_copy_escape, reports_short_buffer_and_nul)
{
    char buf[4];
    cr_assert_eq(escape_str(buf, sizeof(buf), "abcde"), -ENOBUFS);
    cr_assert_eq(escape_str(buf, 3, "ab\n"), -ENOBUFS, "escape needs two bytes");
    cr_assert_eq(db_copy_escape(buf, sizeof(buf), "a\0b", 3), -EINVAL);
}

Test(db, rejects_unparsable_dsn)
{
    db_t *db = NULL;
    cr_assert_eq(db_new("host=127.0.0.1 port", &db), -EINVAL);
    cr_assert_null(db);
}

Test(db, unreachable_server_is_connection_refused_without_password)
{
    db_t *db = NULL;
    cr_assert_eq(db_new("postgresql://sb:Sup3rSecretPw@127.0.0.1:1/x?connect_timeout=2", &db), 0);
    cr_assert_not(db_connected(db));
    cr_assert_eq(db_exec(db, NULL, "SELECT 1", 0, NULL, NULL), -ECONNREFUSED);
    cr_assert_neq(db_errmsg(db)[0], '\0');
    cr_assert_null(strstr(db_errmsg(db), "Sup3rSecretPw"), "%s", db_errmsg(db));
    cr_assert_null(db_conn(db));
    db_free(db);
}

Test(db, exec_with_params_returns_rows)
{
    db_t *db = test_db();
    const char *params[] = {"20", "22"};
    PGresult *res = NULL;
    cr_assert_eq(db_exec(db, NULL, "SELECT $1::int + $2::int", 2, params, &res), 0);
    cr_assert_str_eq(PQgetvalue(res, 0, 0), "42");
    PQclear(res);
    db_free(db);
}

Test(db, sql_error_is_einval_with_message_and_connection_survives)
{
    db_t *db = test_db();
    cr_assert_eq(db_exec(db, NULL, "SELECT * FROM no_such_table_here", 0, NULL, NULL), -EINVAL);
    cr_assert(strstr(db_errmsg(db), "no_such_table_here"), "%s", db_errmsg(db));
    cr_assert_str_eq(db_sqlstate(db), "42P01");
    cr_assert(db_connected(db));
    char *v = query_text(db, "SELECT 'still here'");
    cr_assert_str_eq(v, "still here");
    free(v);
    db_free(db);
}

Test(db, statement_timeout_is_transient)
{
    db_t *db = test_db();
    cr_assert_eq(db_exec_simple(db, "SET statement_timeout = '20ms'"), 0);
    cr_assert_eq(db_exec(db, NULL, "SELECT pg_sleep(2)", 0, NULL, NULL), -EAGAIN);
    cr_assert_str_eq(db_sqlstate(db), "57014");
    db_free(db);
}

Test(db, prepared_statements)
{
    db_t *db = test_db();
    cr_assert_eq(db_prepare(db, "add", "SELECT $1::int + 1", 1), 0);
    cr_assert_eq(db_prepare(db, "add", "SELECT 1", 0), -EEXIST);
    cr_assert_eq(db_prepare(db, "bad", "SELEC nonsense", 0), -EINVAL);
    cr_assert_eq(db_exec(db, "bad", NULL, 0, NULL, NULL), -ENOENT, "rejected SQL not registered");

    const char *params[] = {"41"};
    PGresult *res = NULL;
    cr_assert_eq(db_exec(db, "add", NULL, 1, params, &res), 0, "%s", db_errmsg(db));
    cr_assert_str_eq(PQgetvalue(res, 0, 0), "42");
    PQclear(res);
    cr_assert_eq(db_exec(db, "add", NULL, 0, NULL, NULL), -EINVAL, "wrong parameter count");
    db_free(db);
}

static bool backend_alive(db_t *admin, const char *pid)
{
    const char *params[] = {pid};
    PGresult *res = NULL;
    cr_assert_eq(db_exec(admin, NULL, "SELECT count(*) FROM pg_stat_activity WHERE pid = $1::int",
                         1, params, &res),
                 0);
    bool alive = strcmp(PQgetvalue(res, 0, 0), "0") != 0;
    PQclear(res);
    return alive;
}

Test(db, reconnects_and_reprepares_after_backend_terminated)
{
    db_t *db = test_db(), *admin = test_db();
    cr_assert_eq(db_prepare(db, "pid", "SELECT pg_backend_pid()::text", 0), 0);
    PGresult *res = NULL;
    cr_assert_eq(db_exec(db, "pid", NULL, 0, NULL, &res), 0);
    char *pid1 = strdup(PQgetvalue(res, 0, 0));
    PQclear(res);

    const char *params[] = {pid1};
    cr_assert_eq(db_exec(admin, NULL, "SELECT pg_terminate_backend($1::int)", 1, params, NULL), 0);
    struct timespec start;
    clock_gettime(CLOCK_MONOTONIC, &start);
    while (backend_alive(admin, pid1)) {
        struct timespec now;
        clock_gettime(CLOCK_MONOTONIC, &now);
        cr_assert_lt(now.tv_sec - start.tv_sec, 10, "backend %s did not exit", pid1);
        nanosleep(&(struct timespec){.tv_nsec = 10 * 1000 * 1000}, NULL);
    }

    /* The promise: at most the call that meets the broken connection fails, the next one
     * reconnects and finds its prepared statement again. */
    int r = db_exec(db, "pid", NULL, 0, NULL, &res);
    if (r == -ECONNRESET)
        r = db_exec(db, "pid", NULL, 0, NULL, &res);
    cr_assert_eq(r, 0, "after reconnect: %s", db_errmsg(db));
    cr_assert_str_neq(PQgetvalue(res, 0, 0), pid1, "expected a new backend");
    PQclear(res);
    free(pid1);
    db_free(admin);
    db_free(db);
}

Test(db, connection_lost_during_call_is_econnreset_then_recovers)
{
    db_t *db = test_db();
    cr_assert_eq(db_prepare(db, "one", "SELECT 1", 0), 0);
    cr_assert_eq(db_exec(db, NULL, "SELECT pg_terminate_backend(pg_backend_pid())", 0, NULL, NULL),
                 -ECONNRESET);
    cr_assert_not(db_connected(db));
    cr_assert_neq(db_errmsg(db)[0], '\0');
    cr_assert_eq(db_exec(db, "one", NULL, 0, NULL, NULL), 0, "%s", db_errmsg(db));
    cr_assert(db_connected(db));
    db_free(db);
}

static int copy_field(char *line, size_t size, size_t *pos, const char *s, bool last)
{
    int n = s ? db_copy_escape(line + *pos, size - *pos, s, strlen(s)) : 2;
    cr_assert_geq(n, 0);
    if (!s)
        memcpy(line + *pos, "\\N", 2);
    *pos += (size_t)n;
    line[(*pos)++] = last ? '\n' : '\t';
    return 0;
}

Test(db, copy_round_trips_every_special_value)
{
    const char *values[] = {"plain", "tab\there", "new\nline", "cr\rhere", "back\\slash",
                            "\\N",   "",          "\\.",       "ünïcødé"};
    size_t nvalues = sizeof(values) / sizeof(values[0]);
    db_t *db = test_db();
    cr_assert_eq(db_exec_simple(db, "CREATE TEMP TABLE t (i int, v text)"), 0);
    cr_assert_eq(db_copy_begin(db, "COPY t (i, v) FROM STDIN"), 0, "%s", db_errmsg(db));
    char line[256];
    for (size_t i = 0; i <= nvalues; i++) {
        size_t pos = 0;
        char num[16];
        snprintf(num, sizeof(num), "%zu", i);
        copy_field(line, sizeof(line), &pos, num, false);
        copy_field(line, sizeof(line), &pos, i < nvalues ? values[i] : NULL, true);
        cr_assert_eq(db_copy_put(db, line, pos), 0);
    }
    cr_assert_eq(db_copy_end(db, NULL), 0, "%s", db_errmsg(db));

    PGresult *res = NULL;
    cr_assert_eq(db_exec(db, NULL, "SELECT v FROM t ORDER BY i", 0, NULL, &res), 0);
    cr_assert_eq(PQntuples(res), (int)nvalues + 1);
    for (size_t i = 0; i < nvalues; i++) {
        cr_assert_not(PQgetisnull(res, (int)i, 0), "value %zu read back as NULL", i);
        cr_assert_str_eq(PQgetvalue(res, (int)i, 0), values[i]);
    }
    cr_assert(PQgetisnull(res, (int)nvalues, 0));
    PQclear(res);
    db_free(db);
}

Test(db, copy_bad_data_is_einval_and_abort_keeps_nothing)
{
    db_t *db = test_db();
    cr_assert_eq(db_exec_simple(db, "CREATE TEMP TABLE t (i int)"), 0);
    cr_assert_eq(db_copy_begin(db, "COPY t FROM STDIN"), 0);
    cr_assert_eq(db_exec(db, NULL, "SELECT 1", 0, NULL, NULL), -EBUSY, "no query during COPY");
    cr_assert_eq(db_copy_put(db, "1\nnot-a-number\n", 15), 0);
    cr_assert_eq(db_copy_end(db, NULL), -EINVAL);
    cr_assert(strstr(db_errmsg(db), "not-a-number"), "%s", db_errmsg(db));

    cr_assert_eq(db_copy_begin(db, "COPY t FROM STDIN"), 0);
    cr_assert_eq(db_copy_put(db, "7\n", 2), 0);
    cr_assert_eq(db_copy_end(db, "changed my mind"), 0, "%s", db_errmsg(db));

    char *count = query_text(db, "SELECT count(*) FROM t");
    cr_assert_str_eq(count, "0");
    free(count);
    cr_assert_eq(db_copy_begin(db, "SELECT 1"), -EINVAL, "not a COPY");
    db_free(db);
}
