/* test-db-pool.c: libs/db's asynchronous pool against a real PostgreSQL (SB_TEST_PG_DSN). */
#include <criterion/criterion.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <event2/event.h>

#include "sb_test_pg.h"
#include "db_pool.h"

#define ORG_A "3f2b8c1e-9d4a-4e6b-8f0c-1a2b3c4d5e6f"

static int64_t now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* Runs @base until @cond holds, checking every 10 ms; fails the test after @ms. */
#define RUN_UNTIL(base, cond, ms)                                                  \
    do {                                                                           \
        int64_t deadline_ = now_ms() + (ms);                                       \
        struct timeval tick_ = {0, 10000};                                         \
        while (!(cond)) {                                                          \
            cr_assert_lt(now_ms(), deadline_, "timed out waiting for: %s", #cond); \
            event_base_loopexit((base), &tick_);                                   \
            event_base_dispatch(base);                                             \
        }                                                                          \
    } while (0)

typedef struct answer {
    bool done;
    int calls;
    int err;
    PGresult *res;
} answer_t;

static void on_answer(int err, PGresult *res, void *opaque)
{
    answer_t *a = opaque;
    a->calls++;
    a->done = true;
    a->err = err;
    a->res = res;
}

/* The single value of @a's result, copied; the result is cleared. */
static char *answer_value(answer_t *a)
{
    cr_assert_eq(a->err, 0, "query failed: %d %s", a->err,
                 a->res ? PQresultErrorMessage(a->res) : "");
    cr_assert_not_null(a->res);
    cr_assert_eq(PQntuples(a->res), 1);
    char *v = strdup(PQgetisnull(a->res, 0, 0) ? "<null>" : PQgetvalue(a->res, 0, 0));
    PQclear(a->res);
    a->res = NULL;
    return v;
}

typedef struct fixture {
    struct event_base *base;
    db_pool_t *pool;
} fixture_t;

static fixture_t fixture_new(size_t size, const db_pool_opts_t *opts)
{
    const char *dsn = sb_test_pg_dsn();
    fixture_t f = {.base = event_base_new()};
    cr_assert_not_null(f.base);
    cr_assert_eq(db_pool_new(f.base, dsn, size, opts, &f.pool), 0);
    size_t ready = 0;
    RUN_UNTIL(f.base, (db_pool_stats(f.pool, &ready, NULL, NULL), ready == size), 10000);
    return f;
}

static void fixture_free(fixture_t *f)
{
    db_pool_free(f->pool);
    event_base_free(f->base);
}

/* Runs one query to completion and returns its single value. */
static char *query_value(fixture_t *f, const char *org_id, const char *sql, int nparams,
                         const char *const *params)
{
    answer_t a = {0};
    int r = org_id ? db_pool_query_as(f->pool, org_id, sql, nparams, params, on_answer, &a, 5000)
                   : db_pool_query(f->pool, sql, nparams, params, on_answer, &a, 5000);
    cr_assert_eq(r, 0);
    RUN_UNTIL(f->base, a.done, 10000);
    return answer_value(&a);
}

Test(db_pool, rejects_bad_arguments)
{
    struct event_base *base = event_base_new();
    db_pool_t *pool = NULL;
    cr_assert_eq(db_pool_new(base, "host=127.0.0.1 port", 1, NULL, &pool), -EINVAL);
    cr_assert_eq(db_pool_new(base, "postgresql://127.0.0.1:1/x", 0, NULL, &pool), -EINVAL);
    cr_assert_null(pool);
    db_pool_free(NULL);
    event_base_free(base);
}

typedef struct slot {
    int i;
    int err;
    bool done;
    char value[16];
    int *ndone;
} slot_t;

static void on_slot(int err, PGresult *res, void *opaque)
{
    slot_t *s = opaque;
    s->err = err;
    if (!err && PQntuples(res) == 1)
        snprintf(s->value, sizeof(s->value), "%s", PQgetvalue(res, 0, 0));
    PQclear(res);
    s->done = true;
    (*s->ndone)++;
}

Test(db_pool, thousand_queries_on_four_connections_all_answered)
{
    fixture_t f = fixture_new(4, NULL);
    enum { N = 1000 };
    static slot_t slots[N];
    int ndone = 0;
    for (int i = 0; i < N; i++) {
        char arg[16];
        snprintf(arg, sizeof(arg), "%d", i);
        const char *params[] = {arg};
        slots[i] = (slot_t){.i = i, .ndone = &ndone};
        cr_assert_eq(db_pool_query(f.pool, "SELECT $1::int * 2", 1, params, on_slot, &slots[i], 0),
                     0);
    }
    RUN_UNTIL(f.base, ndone == N, 30000);
    for (int i = 0; i < N; i++) {
        char want[16];
        snprintf(want, sizeof(want), "%d", i * 2);
        cr_assert_eq(slots[i].err, 0, "query %d: %d", i, slots[i].err);
        cr_assert_str_eq(slots[i].value, want, "query %d", i);
    }
    size_t ready, busy, queued;
    db_pool_stats(f.pool, &ready, &busy, &queued);
    cr_assert_eq(ready, 4);
    cr_assert_eq(busy, 0);
    cr_assert_eq(queued, 0);
    fixture_free(&f);
}

typedef struct ticker {
    db_pool_t *pool;
    size_t max_busy;
    int ticks_while_busy; /* loop iterations while queries were running on the server */
} ticker_t;

static void on_tick(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    ticker_t *t = arg;
    size_t ready, busy, queued;
    db_pool_stats(t->pool, &ready, &busy, &queued);
    if (busy > t->max_busy)
        t->max_busy = busy;
    if (busy > 0)
        t->ticks_while_busy++;
}

Test(db_pool, loop_keeps_running_while_queries_sleep)
{
    fixture_t f = fixture_new(4, NULL);
    ticker_t t = {.pool = f.pool};
    struct event *tick = event_new(f.base, -1, EV_PERSIST, on_tick, &t);
    struct timeval ms1 = {0, 1000};
    event_add(tick, &ms1);

    int ndone = 0;
    slot_t slots[8];
    int64_t start = now_ms();
    for (int i = 0; i < 8; i++) {
        slots[i] = (slot_t){.i = i, .ndone = &ndone};
        cr_assert_eq(db_pool_query(f.pool, "SELECT pg_sleep(0.2)", 0, NULL, on_slot, &slots[i], 0),
                     0);
    }
    RUN_UNTIL(f.base, ndone == 8, 10000);
    int64_t elapsed = now_ms() - start;
    for (int i = 0; i < 8; i++)
        cr_assert_eq(slots[i].err, 0);
    /* Two waves of four parallel 200 ms sleeps: never faster than that. */
    cr_assert_geq(elapsed, 390);
    /* All four connections worked at once, and the loop kept turning while they did: a pool
     * that waited for the server would not run the timer at all during a query. These are
     * counts of what happened, not time limits, so a loaded machine cannot fail them. */
    cr_assert_eq(t.max_busy, 4, "at most %zu queries ran at once", t.max_busy);
    cr_assert_geq(t.ticks_while_busy, 10, "the loop ran only %d times during the queries",
                  t.ticks_while_busy);
    event_free(tick);
    fixture_free(&f);
}

Test(db_pool, timeout_cancels_the_query_and_the_connection_is_reused)
{
    fixture_t f = fixture_new(1, NULL);
    char *pid = query_value(&f, NULL, "SELECT pg_backend_pid()", 0, NULL);

    answer_t a = {0};
    int64_t start = now_ms();
    cr_assert_eq(db_pool_query(f.pool, "SELECT pg_sleep(5)", 0, NULL, on_answer, &a, 200), 0);
    RUN_UNTIL(f.base, a.done, 3000);
    cr_assert_eq(a.err, -ETIMEDOUT);
    cr_assert_null(a.res);

    /* The same backend answers long before the sleep would have ended: it was cancelled. */
    char *pid2 = query_value(&f, NULL, "SELECT pg_backend_pid()", 0, NULL);
    cr_assert_str_eq(pid2, pid);
    cr_assert_lt(now_ms() - start, 4500, "the 5 s sleep was waited for, not cancelled");
    cr_assert_eq(a.calls, 1);
    free(pid);
    free(pid2);
    fixture_free(&f);
}

Test(db_pool, queued_query_times_out_too)
{
    fixture_t f = fixture_new(1, NULL);
    answer_t busy = {0}, queued = {0};
    cr_assert_eq(db_pool_query(f.pool, "SELECT pg_sleep(5)", 0, NULL, on_answer, &busy, 300), 0);
    cr_assert_eq(db_pool_query(f.pool, "SELECT 1", 0, NULL, on_answer, &queued, 100), 0);
    RUN_UNTIL(f.base, queued.done, 3000);
    cr_assert_eq(queued.err, -ETIMEDOUT);
    cr_assert_not(busy.done, "the running query has its own, longer timeout");
    RUN_UNTIL(f.base, busy.done, 3000);
    cr_assert_eq(busy.err, -ETIMEDOUT);
    fixture_free(&f);
}

Test(db_pool, killed_backend_is_connreset_then_queries_succeed_after_reconnect)
{
    db_pool_opts_t opts = {.backoff_min_ms = 20};
    fixture_t f = fixture_new(2, &opts);
    char marker[64];
    snprintf(marker, sizeof(marker), "sb-pool-kill-%d", (int)getpid());
    char victim_sql[128];
    snprintf(victim_sql, sizeof(victim_sql), "SELECT pg_sleep(5) /* %s */", marker);

    answer_t victim = {0};
    cr_assert_eq(db_pool_query(f.pool, victim_sql, 0, NULL, on_answer, &victim, 0), 0);
    /* The other connection kills the victim once the server shows it running. */
    const char *params[] = {marker};
    int killed = 0;
    int64_t deadline = now_ms() + 4000;
    while (!killed) {
        cr_assert_lt(now_ms(), deadline, "the victim query never showed up in pg_stat_activity");
        answer_t k = {0};
        cr_assert_eq(db_pool_query(f.pool,
                                   "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                                   "WHERE query LIKE '%' || $1 || '%' AND pid <> pg_backend_pid()",
                                   1, params, on_answer, &k, 2000),
                     0);
        RUN_UNTIL(f.base, k.done, 3000);
        char *n = answer_value(&k);
        killed = atoi(n);
        free(n);
    }
    RUN_UNTIL(f.base, victim.done, 3000);
    cr_assert_eq(victim.err, -ECONNRESET);
    cr_assert_null(victim.res);

    size_t ready = 0;
    RUN_UNTIL(f.base, (db_pool_stats(f.pool, &ready, NULL, NULL), ready == 2), 5000);
    int ndone = 0;
    slot_t slots[4];
    for (int i = 0; i < 4; i++) {
        slots[i] = (slot_t){.i = i, .ndone = &ndone};
        cr_assert_eq(db_pool_query(f.pool, "SELECT 7", 0, NULL, on_slot, &slots[i], 0), 0);
    }
    RUN_UNTIL(f.base, ndone == 4, 5000);
    for (int i = 0; i < 4; i++) {
        cr_assert_eq(slots[i].err, 0);
        cr_assert_str_eq(slots[i].value, "7");
    }
    fixture_free(&f);
}

Test(db_pool, sql_error_is_einval_with_sqlstate_and_connection_survives)
{
    fixture_t f = fixture_new(1, NULL);
    answer_t a = {0};
    cr_assert_eq(
        db_pool_query(f.pool, "SELECT * FROM no_such_table_sb_pool", 0, NULL, on_answer, &a, 0), 0);
    RUN_UNTIL(f.base, a.done, 5000);
    cr_assert_eq(a.err, -EINVAL);
    cr_assert_not_null(a.res);
    cr_assert_str_eq(PQresultErrorField(a.res, PG_DIAG_SQLSTATE), "42P01");
    PQclear(a.res);

    char *v = query_value(&f, NULL, "SELECT 'still here'", 0, NULL);
    cr_assert_str_eq(v, "still here");
    free(v);
    fixture_free(&f);
}

Test(db_pool, full_queue_is_eagain)
{
    db_pool_opts_t opts = {.max_queue = 2};
    const char *dsn = sb_test_pg_dsn();
    struct event_base *base = event_base_new();
    db_pool_t *pool = NULL;
    cr_assert_eq(db_pool_new(base, dsn, 1, &opts, &pool), 0);
    /* Nothing is connected before the loop runs, so every query waits in the queue. */
    answer_t a = {0}, b = {0}, c = {0};
    cr_assert_eq(db_pool_query(pool, "SELECT 'a'", 0, NULL, on_answer, &a, 0), 0);
    cr_assert_eq(db_pool_query(pool, "SELECT 'b'", 0, NULL, on_answer, &b, 0), 0);
    cr_assert_eq(db_pool_query(pool, "SELECT 'c'", 0, NULL, on_answer, &c, 0), -EAGAIN);
    size_t queued = 0;
    db_pool_stats(pool, NULL, NULL, &queued);
    cr_assert_eq(queued, 2);

    RUN_UNTIL(base, a.done && b.done, 10000);
    char *va = answer_value(&a), *vb = answer_value(&b);
    cr_assert_str_eq(va, "a");
    cr_assert_str_eq(vb, "b");
    cr_assert_eq(c.calls, 0, "a refused query's callback must not run");
    free(va);
    free(vb);
    db_pool_free(pool);
    event_base_free(base);
}

Test(db_pool, free_cancels_queued_and_running_queries)
{
    fixture_t f = fixture_new(1, NULL);
    answer_t running = {0}, queued[3] = {{0}};
    cr_assert_eq(db_pool_query(f.pool, "SELECT pg_sleep(5)", 0, NULL, on_answer, &running, 0), 0);
    for (int i = 0; i < 3; i++)
        cr_assert_eq(db_pool_query(f.pool, "SELECT 1", 0, NULL, on_answer, &queued[i], 0), 0);
    size_t busy = 0, nqueued = 0;
    db_pool_stats(f.pool, NULL, &busy, &nqueued);
    cr_assert_eq(busy, 1);
    cr_assert_eq(nqueued, 3);

    int64_t start = now_ms();
    db_pool_free(f.pool);
    cr_assert_lt(now_ms() - start, 2000, "free must not wait for the running statement");
    cr_assert_eq(running.calls, 1);
    cr_assert_eq(running.err, -ECANCELED);
    for (int i = 0; i < 3; i++) {
        cr_assert_eq(queued[i].calls, 1);
        cr_assert_eq(queued[i].err, -ECANCELED);
    }
    event_base_free(f.base);
}

Test(db_pool, org_setting_is_visible_in_the_query_and_not_leaked)
{
    fixture_t f = fixture_new(1, NULL);
    const char *params[] = {"41"};
    char *v = query_value(
        &f, ORG_A, "SELECT current_setting('app.org_id', true) || ':' || ($1::int + 1)", 1, params);
    cr_assert_str_eq(v, ORG_A ":42");
    free(v);

    /* Same (only) connection, plain query: the setting ended with its transaction. */
    v = query_value(&f, NULL, "SELECT coalesce(current_setting('app.org_id', true), '')", 0, NULL);
    cr_assert_str_eq(v, "");
    free(v);

    /* A failing statement rolls the setting back too, and the error still reaches the caller. */
    answer_t a = {0};
    cr_assert_eq(db_pool_query_as(f.pool, ORG_A, "SELECT 1/0", 0, NULL, on_answer, &a, 0), 0);
    RUN_UNTIL(f.base, a.done, 5000);
    cr_assert_eq(a.err, -EINVAL);
    cr_assert_str_eq(PQresultErrorField(a.res, PG_DIAG_SQLSTATE), "22012");
    PQclear(a.res);
    v = query_value(&f, NULL, "SELECT coalesce(current_setting('app.org_id', true), '')", 0, NULL);
    cr_assert_str_eq(v, "");
    free(v);
    fixture_free(&f);
}

Test(db_pool, malformed_org_id_is_refused)
{
    fixture_t f = fixture_new(1, NULL);
    const char *bad[] = {
        "",
        "not-a-uuid",
        "3f2b8c1e-9d4a-4e6b-8f0c-1a2b3c4d5e6",   /* short */
        "3f2b8c1e-9d4a-4e6b-8f0c-1a2b3c4d5e6f0", /* long */
        "3f2b8c1e9d4a-4e6b-8f0c-1a2b3c4d5e6f0",  /* dash moved */
        "{3f2b8c1e-9d4a-4e6b-8f0c-1a2b3c4d5e6}",
        "3f2b8c1e-9d4a-4e6b-8f0c-1a2b3c4d5e6'",
        "3f2b8c1e-9d4a-4e6b-8f0c-1a2b3c4d5e6g",
    };
    answer_t a = {0};
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
        cr_assert_eq(db_pool_query_as(f.pool, bad[i], "SELECT 1", 0, NULL, on_answer, &a, 0),
                     -EINVAL, "accepted org id \"%s\"", bad[i]);
    cr_assert_eq(db_pool_query_as(f.pool, NULL, "SELECT 1", 0, NULL, on_answer, &a, 0), -EINVAL);
    size_t queued = 0, busy = 0;
    db_pool_stats(f.pool, NULL, &busy, &queued);
    cr_assert_eq(queued + busy, 0);
    cr_assert_eq(a.calls, 0);

    /* Upper-case hex is still a canonical UUID. */
    char *v = query_value(&f, "3F2B8C1E-9D4A-4E6B-8F0C-1A2B3C4D5E6F",
                          "SELECT current_setting('app.org_id', true)::uuid::text", 0, NULL);
    cr_assert_str_eq(v, ORG_A);
    free(v);
    fixture_free(&f);
}

Test(db_pool, unreachable_server_fails_fast_with_connrefused)
{
    db_pool_opts_t opts = {.connect_timeout_ms = 300, .backoff_min_ms = 20};
    struct event_base *base = event_base_new();
    db_pool_t *pool = NULL;
    cr_assert_eq(db_pool_new(base, "postgresql://sb@127.0.0.1:1/x", 2, &opts, &pool), 0);
    answer_t a = {0};
    int64_t start = now_ms();
    cr_assert_eq(db_pool_query(pool, "SELECT 1", 0, NULL, on_answer, &a, 0), 0,
                 "queries wait while the first connections are being made");
    RUN_UNTIL(base, a.done, 5000);
    cr_assert_eq(a.err, -ECONNREFUSED);
    cr_assert_geq(now_ms() - start, 290);
    cr_assert_eq(db_pool_query(pool, "SELECT 1", 0, NULL, on_answer, &a, 0), -ECONNREFUSED,
                 "a pool that is down refuses at once");
    cr_assert_eq(a.calls, 1);
    db_pool_free(pool);
    event_base_free(base);
}

Test(db_pool, idle_connection_killed_by_the_server_is_replaced_before_use)
{
    db_pool_opts_t opts = {.backoff_min_ms = 20};
    fixture_t f = fixture_new(1, &opts);
    db_pool_t *killer = NULL;
    cr_assert_eq(db_pool_new(f.base, sb_test_pg_dsn(), 1, NULL, &killer), 0);
    char *pid = query_value(&f, NULL, "SELECT pg_backend_pid()::text", 0, NULL);

    answer_t k = {0};
    const char *params[] = {pid};
    cr_assert_eq(db_pool_query(killer, "SELECT pg_terminate_backend($1::int)", 1, params, on_answer,
                               &k, 5000),
                 0);
    RUN_UNTIL(f.base, k.done, 10000);
    char *t = answer_value(&k);
    cr_assert_str_eq(t, "t");
    free(t);

    /* The pool notices the closed socket while idle, so no query has to fail to find out. */
    size_t ready = 1;
    RUN_UNTIL(f.base, (db_pool_stats(f.pool, &ready, NULL, NULL), ready == 0), 5000);
    RUN_UNTIL(f.base, (db_pool_stats(f.pool, &ready, NULL, NULL), ready == 1), 5000);
    char *pid2 = query_value(&f, NULL, "SELECT pg_backend_pid()::text", 0, NULL);
    cr_assert_str_neq(pid2, pid);
    free(pid);
    free(pid2);
    db_pool_free(killer);
    fixture_free(&f);
}
