/* db_pool.c: asynchronous PostgreSQL connections for one libevent loop (see db_pool.h). */
#include "db_pool.h"

#include <errno.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/queue.h>
#include <time.h>

#define DB_POOL_ORG_SQL  "SELECT set_config('app.org_id', $1, true)"
#define DB_POOL_UUID_LEN 36

typedef struct db_pool_conn db_pool_conn_t;

typedef struct db_pool_query {
    TAILQ_ENTRY(db_pool_query) link;
    db_pool_t *pool;
    db_pool_conn_t *conn; /* set once sent */
    struct event *timer;  /* NULL without a timeout */
    db_pool_cb cb;
    void *opaque;
    const char *sql;
    const char *org_id; /* NULL for a plain query */
    int nparams;
    const char *params[]; /* then the copied strings */
} db_pool_query_t;

typedef enum db_pool_state {
    DB_POOL_DOWN, /* waiting for the reconnect timer */
    DB_POOL_CONNECTING,
    DB_POOL_READY,
} db_pool_state_t;

struct db_pool_conn {
    db_pool_t *pool;
    PGconn *pg;
    db_pool_state_t state;
    struct event *io;
    short io_what;
    struct event *timer; /* connect timeout while connecting, back-off while down */
    int backoff_ms;
    /* A pipeline is in flight until its sync point comes back. Its query is @q, or NULL when the
     * query timed out: the results are then read and dropped before the connection is reused. */
    bool busy;
    db_pool_query_t *q;
    int nstmts, ndone;
    PGresult *res; /* the caller's statement's rows */
    PGresult *err; /* the first error of the pipeline */
};

struct db_pool {
    struct event_base *base;
    char *dsn;
    db_pool_opts_t opts;
    db_pool_conn_t *conns;
    size_t nconns;
    size_t nready;
    int64_t up_ms; /* when a connection was last up (or the pool was created) */
    TAILQ_HEAD(, db_pool_query) queue;
    size_t nqueued;
    bool closing;
};

static void db_pool_conn_on_io(evutil_socket_t fd, short what, void *arg);
static void db_pool_pump(db_pool_t *pool);

static int64_t db_pool_now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static struct timeval db_pool_tv(int ms)
{
    return (struct timeval){.tv_sec = ms / 1000, .tv_usec = (ms % 1000) * 1000};
}

static void db_pool_notice_ignore(void *arg, const char *message)
{
    (void)arg;
    (void)message;
}

/* The same mapping as db.c, so both handles report server errors alike. */
static int db_pool_errno(const PGresult *res)
{
    const char *state = res ? PQresultErrorField(res, PG_DIAG_SQLSTATE) : NULL;
    if (!state)
        return -EINVAL;
    if (!strncmp(state, "08", 2) || !strcmp(state, "57P01") || !strcmp(state, "57P02") ||
        !strcmp(state, "57P03"))
        return -ECONNRESET;
    if (!strncmp(state, "40", 2) || !strncmp(state, "53", 2) || !strcmp(state, "55P03") ||
        !strcmp(state, "57014"))
        return -EAGAIN;
    return -EINVAL;
}

/* Frees @q, then runs its callback: the callback may queue again, so the pool must already be
 * consistent when this is called. */
static void db_pool_query_finish(db_pool_query_t *q, int err, PGresult *res)
{
    db_pool_cb cb = q->cb;
    void *opaque = q->opaque;
    if (q->timer)
        event_free(q->timer);
    free(q);
    cb(err, res, opaque);
}

/* Asks the server to stop the statement running on @c. PQcancel blocks for one short round trip
 * to the server (see db_pool.h). False when the request could not be delivered. */
static bool db_pool_conn_cancel(db_pool_conn_t *c)
{
    char errbuf[256];
    PGcancel *k = PQgetCancel(c->pg);
    bool ok = k && PQcancel(k, errbuf, sizeof(errbuf));
    PQfreeCancel(k);
    return ok;
}

/* Watches @c's socket for @what. While connecting, libpq may close its socket and open another
 * one with the same number (next address, SSL fallback); epoll forgets a closed descriptor, so
 * then @force re-registers. */
static int db_pool_conn_watch(db_pool_conn_t *c, short what, bool force)
{
    if (c->io && c->io_what == what && !force)
        return 0;
    if (c->io)
        event_free(c->io);
    c->io = event_new(c->pool->base, PQsocket(c->pg), what | EV_PERSIST, db_pool_conn_on_io, c);
    c->io_what = what;
    if (!c->io || event_add(c->io, NULL) < 0)
        return -ENOMEM;
    return 0;
}

/* Closes @c's connection and returns its query, if any, for the caller to finish. */
static db_pool_query_t *db_pool_conn_close(db_pool_conn_t *c)
{
    db_pool_query_t *q = c->q;
    if (c->io)
        event_free(c->io);
    c->io = NULL;
    evtimer_del(c->timer);
    if (c->state == DB_POOL_READY && --c->pool->nready == 0)
        c->pool->up_ms = db_pool_now_ms();
    PQclear(c->res);
    PQclear(c->err);
    PQfinish(c->pg);
    c->pg = NULL;
    c->res = c->err = NULL;
    c->q = NULL;
    c->busy = false;
    c->state = DB_POOL_DOWN;
    return q;
}

/* Fails every queued query when no connection has been up for connect_timeout_ms. */
static bool db_pool_down(db_pool_t *pool)
{
    return pool->nready == 0 && db_pool_now_ms() - pool->up_ms >= pool->opts.connect_timeout_ms;
}

static void db_pool_check_down(db_pool_t *pool)
{
    db_pool_query_t *q;
    while (db_pool_down(pool) && (q = TAILQ_FIRST(&pool->queue))) {
        TAILQ_REMOVE(&pool->queue, q, link);
        pool->nqueued--;
        db_pool_query_finish(q, -ECONNREFUSED, NULL);
    }
}

/* Closes @c and schedules a reconnect after the back-off; its query fails with @err. */
static void db_pool_conn_retry(db_pool_conn_t *c, int err)
{
    db_pool_query_t *q = db_pool_conn_close(c);
    struct timeval tv = db_pool_tv(c->backoff_ms);
    evtimer_add(c->timer, &tv);
    c->backoff_ms = c->backoff_ms > c->pool->opts.backoff_max_ms / 2 ? c->pool->opts.backoff_max_ms
                                                                     : c->backoff_ms * 2;
    if (q)
        db_pool_query_finish(q, err, NULL);
    db_pool_check_down(c->pool);
}

static void db_pool_conn_start(db_pool_conn_t *c)
{
    const char *const keys[] = {"dbname", NULL};
    const char *const vals[] = {c->pool->dsn, NULL};
    c->pg = PQconnectStartParams(keys, vals, 1);
    if (!c->pg || PQstatus(c->pg) == CONNECTION_BAD || PQsocket(c->pg) < 0) {
        db_pool_conn_retry(c, -ECONNRESET);
        return;
    }
    c->state = DB_POOL_CONNECTING;
    /* libpq ignores connect_timeout in PQconnectPoll: the caller times the attempt. */
    struct timeval tv = db_pool_tv(c->pool->opts.connect_timeout_ms);
    evtimer_add(c->timer, &tv);
    /* Right after PQconnectStart, libpq asks to wait until the socket is writable. */
    if (db_pool_conn_watch(c, EV_WRITE, true) < 0)
        db_pool_conn_retry(c, -ECONNRESET);
}

static void db_pool_conn_ready(db_pool_conn_t *c)
{
    evtimer_del(c->timer);
    PQsetNoticeProcessor(c->pg, db_pool_notice_ignore, NULL);
    if (PQsetnonblocking(c->pg, 1) < 0 || !PQenterPipelineMode(c->pg) ||
        db_pool_conn_watch(c, EV_READ, true) < 0) {
        db_pool_conn_retry(c, -ECONNRESET);
        return;
    }
    c->state = DB_POOL_READY;
    c->backoff_ms = c->pool->opts.backoff_min_ms;
    c->pool->nready++;
    c->pool->up_ms = db_pool_now_ms();
    db_pool_pump(c->pool);
}

static void db_pool_conn_on_timer(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    db_pool_conn_t *c = arg;
    if (c->state == DB_POOL_CONNECTING)
        db_pool_conn_retry(c, -ECONNRESET); /* the attempt took too long */
    else
        db_pool_conn_start(c);
}

/* Sends what libpq buffered and watches for writability while some is left. */
static int db_pool_conn_flush(db_pool_conn_t *c)
{
    int r = PQflush(c->pg);
    if (r < 0 || db_pool_conn_watch(c, r ? EV_READ | EV_WRITE : EV_READ, false) < 0) {
        db_pool_conn_retry(c, -ECONNRESET);
        return -ECONNRESET;
    }
    return 0;
}

static void db_pool_conn_send(db_pool_conn_t *c, db_pool_query_t *q)
{
    c->busy = true;
    c->q = q;
    q->conn = c;
    c->nstmts = q->org_id ? 2 : 1;
    c->ndone = 0;
    bool ok = true;
    if (q->org_id)
        ok = PQsendQueryParams(c->pg, DB_POOL_ORG_SQL, 1, NULL, &q->org_id, NULL, NULL, 0);
    ok = ok && PQsendQueryParams(c->pg, q->sql, q->nparams, NULL, q->params, NULL, NULL, 0);
    ok = ok && PQpipelineSync(c->pg);
    if (!ok) {
        /* Arguments were checked when queued, so this is connection trouble. */
        db_pool_conn_retry(c, -ECONNRESET);
        return;
    }
    (void)db_pool_conn_flush(c);
}

/* The pipeline's sync point arrived: the connection is free again. */
static void db_pool_conn_done(db_pool_conn_t *c)
{
    db_pool_query_t *q = c->q;
    PGresult *res = c->res, *err = c->err;
    c->q = NULL;
    c->res = c->err = NULL;
    c->busy = false;
    if (!q) {
        PQclear(res);
        PQclear(err);
    } else if (err || !res) {
        PQclear(res);
        db_pool_query_finish(q, db_pool_errno(err), err);
    } else {
        db_pool_query_finish(q, 0, res);
    }
    db_pool_pump(c->pool);
}

static void db_pool_conn_read(db_pool_conn_t *c)
{
    if (!PQconsumeInput(c->pg) || PQstatus(c->pg) == CONNECTION_BAD) {
        db_pool_conn_retry(c, -ECONNRESET);
        return;
    }
    /* An idle connection is watched only to notice the server closing it. */
    while (c->busy && !PQisBusy(c->pg)) {
        PGresult *res = PQgetResult(c->pg);
        if (PQstatus(c->pg) == CONNECTION_BAD) {
            PQclear(res);
            db_pool_conn_retry(c, -ECONNRESET);
            return;
        }
        if (!res) {
            /* NULL ends one statement's results; then only the sync point is due. */
            if (c->ndone >= c->nstmts)
                return;
            c->ndone++;
            continue;
        }
        ExecStatusType st = PQresultStatus(res);
        if (st == PGRES_PIPELINE_SYNC) {
            PQclear(res);
            db_pool_conn_done(c);
            return;
        }
        bool ok = st == PGRES_TUPLES_OK || st == PGRES_COMMAND_OK;
        if (ok && c->ndone == c->nstmts - 1 && !c->res)
            c->res = res;
        else if (!ok && st != PGRES_PIPELINE_ABORTED && !c->err)
            c->err = res;
        else
            PQclear(res);
    }
}

static void db_pool_conn_on_io(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    db_pool_conn_t *c = arg;
    if (c->state == DB_POOL_CONNECTING) {
        switch (PQconnectPoll(c->pg)) {
        case PGRES_POLLING_READING:
            if (db_pool_conn_watch(c, EV_READ, true) < 0)
                db_pool_conn_retry(c, -ECONNRESET);
            break;
        case PGRES_POLLING_WRITING:
            if (db_pool_conn_watch(c, EV_WRITE, true) < 0)
                db_pool_conn_retry(c, -ECONNRESET);
            break;
        case PGRES_POLLING_OK:
            db_pool_conn_ready(c);
            break;
        default:
            db_pool_conn_retry(c, -ECONNRESET);
            break;
        }
        return;
    }
    if ((what & EV_WRITE) && db_pool_conn_flush(c) < 0)
        return;
    if (what & EV_READ)
        db_pool_conn_read(c);
}

static void db_pool_query_on_timeout(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    db_pool_query_t *q = arg;
    db_pool_conn_t *c = q->conn;
    if (c) {
        /* The connection stays busy until the cancelled pipeline's sync point is read. */
        c->q = NULL;
        if (!db_pool_conn_cancel(c))
            db_pool_conn_retry(c, -ECONNRESET);
    } else {
        TAILQ_REMOVE(&q->pool->queue, q, link);
        q->pool->nqueued--;
    }
    db_pool_query_finish(q, -ETIMEDOUT, NULL);
}

static void db_pool_pump(db_pool_t *pool)
{
    for (size_t i = 0; i < pool->nconns && !pool->closing; i++) {
        db_pool_conn_t *c = &pool->conns[i];
        db_pool_query_t *q = TAILQ_FIRST(&pool->queue);
        if (!q)
            return;
        if (c->state != DB_POOL_READY || c->busy)
            continue;
        TAILQ_REMOVE(&pool->queue, q, link);
        pool->nqueued--;
        db_pool_conn_send(c, q);
    }
}

int db_pool_new(struct event_base *base, const char *dsn, size_t size, const db_pool_opts_t *opts,
                db_pool_t **ret_pool)
{
    if (!base || !dsn || size == 0)
        return -EINVAL;
    char *perr = NULL;
    PQconninfoOption *parsed = PQconninfoParse(dsn, &perr);
    if (!parsed) {
        bool oom = !perr;
        PQfreemem(perr);
        return oom ? -ENOMEM : -EINVAL;
    }
    PQconninfoFree(parsed);

    db_pool_t *pool = calloc(1, sizeof(*pool));
    if (!pool)
        goto fail;
    pool->base = base;
    TAILQ_INIT(&pool->queue);
    pool->opts = opts ? *opts : (db_pool_opts_t){0};
    if (!pool->opts.max_queue)
        pool->opts.max_queue = 1024;
    if (pool->opts.connect_timeout_ms <= 0)
        pool->opts.connect_timeout_ms = 5000;
    if (pool->opts.backoff_min_ms <= 0)
        pool->opts.backoff_min_ms = 100;
    if (pool->opts.backoff_max_ms < pool->opts.backoff_min_ms)
        pool->opts.backoff_max_ms =
            pool->opts.backoff_min_ms > 5000 ? pool->opts.backoff_min_ms : 5000;
    pool->up_ms = db_pool_now_ms(); /* the first attempts get connect_timeout_ms */
    pool->dsn = strdup(dsn);
    pool->conns = calloc(size, sizeof(*pool->conns));
    if (!pool->dsn || !pool->conns)
        goto fail;
    for (size_t i = 0; i < size; i++, pool->nconns++) {
        db_pool_conn_t *c = &pool->conns[i];
        c->pool = pool;
        c->backoff_ms = pool->opts.backoff_min_ms;
        c->timer = evtimer_new(base, db_pool_conn_on_timer, c);
        if (!c->timer)
            goto fail;
    }
    for (size_t i = 0; i < size; i++)
        db_pool_conn_start(&pool->conns[i]);
    *ret_pool = pool;
    return 0;

fail:
    db_pool_free(pool);
    return -ENOMEM;
}

void db_pool_free(db_pool_t *pool)
{
    if (!pool)
        return;
    pool->closing = true;
    for (size_t i = 0; i < pool->nconns; i++) {
        db_pool_conn_t *c = &pool->conns[i];
        if (c->q)
            (void)db_pool_conn_cancel(c); /* so the server does not run it to the end */
        db_pool_query_t *q = db_pool_conn_close(c);
        if (q)
            db_pool_query_finish(q, -ECANCELED, NULL);
    }
    db_pool_query_t *q;
    while ((q = TAILQ_FIRST(&pool->queue))) {
        TAILQ_REMOVE(&pool->queue, q, link);
        pool->nqueued--;
        db_pool_query_finish(q, -ECANCELED, NULL);
    }
    for (size_t i = 0; i < pool->nconns; i++)
        event_free(pool->conns[i].timer);
    free(pool->conns);
    free(pool->dsn);
    free(pool);
}

static bool db_pool_uuid_valid(const char *s)
{
    for (int i = 0; i < DB_POOL_UUID_LEN; i++) {
        bool dash = i == 8 || i == 13 || i == 18 || i == 23;
        char ch = s[i];
        bool hex = (ch >= '0' && ch <= '9') || (ch >= 'a' && ch <= 'f') || (ch >= 'A' && ch <= 'F');
        if (dash ? ch != '-' : !hex)
            return false; /* also stops at a NUL, before reading past a short string */
    }
    return s[DB_POOL_UUID_LEN] == '\0';
}

static int db_pool_submit(db_pool_t *pool, const char *org_id, const char *sql, int nparams,
                          const char *const *params, db_pool_cb cb, void *opaque, int timeout_ms)
{
    if (!pool || !sql || !cb || nparams < 0 || nparams > 65535 || (nparams && !params) ||
        timeout_ms < 0)
        return -EINVAL;
    if (pool->closing)
        return -ECANCELED;
    if (db_pool_down(pool))
        return -ECONNREFUSED;
    if (pool->nqueued >= pool->opts.max_queue)
        return -EAGAIN;

    size_t size = sizeof(db_pool_query_t) + (size_t)nparams * sizeof(char *) + strlen(sql) + 1 +
                  (org_id ? DB_POOL_UUID_LEN + 1 : 0);
    for (int i = 0; i < nparams; i++)
        size += params[i] ? strlen(params[i]) + 1 : 0;
    db_pool_query_t *q = calloc(1, size);
    if (!q)
        return -ENOMEM;
    *q = (db_pool_query_t){.pool = pool, .cb = cb, .opaque = opaque, .nparams = nparams};
    char *p = (char *)&q->params[nparams];
    for (int i = 0; i < nparams; i++) {
        if (params[i]) {
            q->params[i] = p;
            p = stpcpy(p, params[i]) + 1;
        }
    }
    q->sql = p;
    p = stpcpy(p, sql) + 1;
    if (org_id) {
        q->org_id = p;
        strcpy(p, org_id);
    }
    if (timeout_ms > 0) {
        struct timeval tv = db_pool_tv(timeout_ms);
        q->timer = evtimer_new(pool->base, db_pool_query_on_timeout, q);
        if (!q->timer || evtimer_add(q->timer, &tv) < 0) {
            if (q->timer)
                event_free(q->timer);
            free(q);
            return -ENOMEM;
        }
    }
    TAILQ_INSERT_TAIL(&pool->queue, q, link);
    pool->nqueued++;
    db_pool_pump(pool);
    return 0;
}

int db_pool_query(db_pool_t *pool, const char *sql, int nparams, const char *const *params,
                  db_pool_cb cb, void *opaque, int timeout_ms)
{
    return db_pool_submit(pool, NULL, sql, nparams, params, cb, opaque, timeout_ms);
}

int db_pool_query_as(db_pool_t *pool, const char *org_id, const char *sql, int nparams,
                     const char *const *params, db_pool_cb cb, void *opaque, int timeout_ms)
{
    if (!org_id || !db_pool_uuid_valid(org_id))
        return -EINVAL;
    return db_pool_submit(pool, org_id, sql, nparams, params, cb, opaque, timeout_ms);
}

void db_pool_stats(const db_pool_t *pool, size_t *ret_ready, size_t *ret_busy, size_t *ret_queued)
{
    size_t busy = 0;
    for (size_t i = 0; i < pool->nconns; i++)
        busy += pool->conns[i].state == DB_POOL_READY && pool->conns[i].busy;
    if (ret_ready)
        *ret_ready = pool->nready;
    if (ret_busy)
        *ret_busy = busy;
    if (ret_queued)
        *ret_queued = pool->nqueued;
}
