/* db.c: one PostgreSQL connection with reconnect, named prepared statements and COPY. */
#include "db.h"

#include <errno.h>
#include <limits.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef struct db_stmt {
    char *name;
    char *sql;
    int nparams;
    bool prepared; /* on the current connection */
} db_stmt_t;

struct db {
    char *dsn;
    char *password; /* from the DSN, to scrub it from messages; NULL when none */
    PGconn *conn;
    db_stmt_t *stmts;
    size_t nstmts;
    bool in_copy;
    char sqlstate[6];
    char errmsg[512];
};

static void db_notice_ignore(void *arg, const char *message)
{
    (void)arg;
    (void)message;
}

/* Copies @msg into errmsg without trailing newlines, replacing the password if it appears (a
 * malformed DSN can be echoed back by libpq). */
static void db_set_error(db_t *db, const char *sqlstate, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(db->errmsg, sizeof(db->errmsg), fmt, ap);
    va_end(ap);
    snprintf(db->sqlstate, sizeof(db->sqlstate), "%s", sqlstate ? sqlstate : "");

    size_t n = strlen(db->errmsg);
    while (n > 0 && (db->errmsg[n - 1] == '\n' || db->errmsg[n - 1] == ' '))
        db->errmsg[--n] = '\0';
    /* One line: libpq separates its hints with "\n\t". */
    char *w = db->errmsg;
    for (const char *p = db->errmsg; *p; p++) {
        if (*p == '\n' || *p == '\t') {
            if (w > db->errmsg && w[-1] != ' ')
                *w++ = ' ';
        } else {
            *w++ = *p;
        }
    }
    *w = '\0';

    if (db->password && db->password[0]) {
        size_t plen = strlen(db->password);
        char *hit;
        while ((hit = strstr(db->errmsg, db->password))) {
            memset(hit, '*', plen < 3 ? plen : 3);
            memmove(hit + (plen < 3 ? plen : 3), hit + plen, strlen(hit + plen) + 1);
        }
    }
}

static void db_disconnect(db_t *db)
{
    if (db->conn)
        PQfinish(db->conn);
    db->conn = NULL;
    db->in_copy = false;
    for (size_t i = 0; i < db->nstmts; i++)
        db->stmts[i].prepared = false;
}

/* Maps a failed result (or a NULL one) to an errno and records the message. Connection trouble
 * drops the connection so that the next call reconnects. */
static int db_fail(db_t *db, PGresult *res)
{
    const char *state = res ? PQresultErrorField(res, PG_DIAG_SQLSTATE) : NULL;
    int r;

    /* An error without a SQLSTATE comes from libpq itself, not the server: the connection is
     * broken ("server closed the connection unexpectedly") even when PQstatus() still says OK,
     * which it can after a failed send; keeping it would fail every later statement. */
    if (!db->conn || PQstatus(db->conn) == CONNECTION_BAD || !state || !strncmp(state, "08", 2) ||
        (state && (!strcmp(state, "57P01") || !strcmp(state, "57P02") || !strcmp(state, "57P03"))))
        r = -ECONNRESET;
    else if (state && (!strncmp(state, "40", 2) || !strncmp(state, "53", 2) ||
                       !strcmp(state, "55P03") || !strcmp(state, "57014")))
        r = -EAGAIN;
    else
        r = -EINVAL;

    if (res && PQresultErrorField(res, PG_DIAG_MESSAGE_PRIMARY)) {
        const char *detail = PQresultErrorField(res, PG_DIAG_MESSAGE_DETAIL);
        db_set_error(db, state, "%s%s%s (SQLSTATE %s)",
                     PQresultErrorField(res, PG_DIAG_MESSAGE_PRIMARY), detail ? ": " : "",
                     detail ? detail : "", state ? state : "?");
    } else {
        db_set_error(db, state, "%s",
                     db->conn && *PQerrorMessage(db->conn) ? PQerrorMessage(db->conn)
                                                           : "connection to PostgreSQL lost");
    }
    if (r == -ECONNRESET)
        db_disconnect(db);
    if (res)
        PQclear(res);
    return r;
}

static int db_prepare_one(db_t *db, db_stmt_t *st)
{
    PGresult *res = PQprepare(db->conn, st->name, st->sql, st->nparams, NULL);
    if (!res || PQresultStatus(res) != PGRES_COMMAND_OK)
        return db_fail(db, res);
    PQclear(res);
    st->prepared = true;
    return 0;
}

int db_connect(db_t *db)
{
    if (db->conn && PQstatus(db->conn) == CONNECTION_OK)
        return 0;
    db_disconnect(db);

    /* Keywords are applied in order and the expanded DSN comes last, so a connect_timeout in the
     * DSN wins over our default. */
    const char *const keys[] = {"connect_timeout", "dbname", NULL};
    const char *const vals[] = {"5", db->dsn, NULL};
    db->conn = PQconnectdbParams(keys, vals, 1);
    if (!db->conn) {
        db_set_error(db, NULL, "out of memory connecting to PostgreSQL");
        return -ENOMEM;
    }
    if (PQstatus(db->conn) != CONNECTION_OK) {
        db_set_error(db, NULL, "%s", PQerrorMessage(db->conn));
        db_disconnect(db);
        return -ECONNREFUSED;
    }
    PQsetNoticeProcessor(db->conn, db_notice_ignore, NULL);

    for (size_t i = 0; i < db->nstmts; i++) {
        int r = db_prepare_one(db, &db->stmts[i]);
        if (r == -ECONNRESET)
            return -ECONNREFUSED;
        /* A statement the server rejects now is retried (and reported) when it is used. */
    }
    return 0;
}

/* Before sending a statement: reconnect when the connection is known to be broken, and notice a
 * server that closed an idle connection, which libpq only learns by reading the socket. */
static int db_ensure(db_t *db)
{
    if (db->conn && !db->in_copy && PQtransactionStatus(db->conn) == PQTRANS_IDLE) {
        if (!PQconsumeInput(db->conn) || PQstatus(db->conn) == CONNECTION_BAD)
            db_disconnect(db);
    }
    return db_connect(db);
}

int db_new(const char *dsn, db_t **ret_db)
{
    char *err = NULL;
    PQconninfoOption *opts = PQconninfoParse(dsn, &err);
    if (!opts) {
        bool oom = !err;
        PQfreemem(err);
        return oom ? -ENOMEM : -EINVAL;
    }

    db_t *db = calloc(1, sizeof(*db));
    if (!db)
        goto fail;
    db->dsn = strdup(dsn);
    if (!db->dsn)
        goto fail;
    for (PQconninfoOption *o = opts; o->keyword; o++) {
        if (!strcmp(o->keyword, "password") && o->val && o->val[0]) {
            db->password = strdup(o->val);
            if (!db->password)
                goto fail;
        }
    }
    PQconninfoFree(opts);

    (void)db_connect(db);
    *ret_db = db;
    return 0;

fail:
    PQconninfoFree(opts);
    db_free(db);
    return -ENOMEM;
}

void db_free(db_t *db)
{
    if (!db)
        return;
    db_disconnect(db);
    for (size_t i = 0; i < db->nstmts; i++) {
        free(db->stmts[i].name);
        free(db->stmts[i].sql);
    }
    free(db->stmts);
    free(db->dsn);
    if (db->password) {
        explicit_bzero(db->password, strlen(db->password));
        free(db->password);
    }
    free(db);
}

bool db_connected(db_t *db)
{
    return db->conn && PQstatus(db->conn) == CONNECTION_OK;
}

const char *db_errmsg(const db_t *db)
{
    return db->errmsg;
}

const char *db_sqlstate(const db_t *db)
{
    return db->sqlstate;
}

PGconn *db_conn(db_t *db)
{
    return db_connected(db) ? db->conn : NULL;
}

static db_stmt_t *db_stmt_find(db_t *db, const char *name)
{
    for (size_t i = 0; i < db->nstmts; i++)
        if (!strcmp(db->stmts[i].name, name))
            return &db->stmts[i];
    return NULL;
}

int db_prepare(db_t *db, const char *name, const char *sql, int nparams)
{
    if (db_stmt_find(db, name))
        return -EEXIST;
    db_stmt_t *stmts = realloc(db->stmts, (db->nstmts + 1) * sizeof(*stmts));
    if (!stmts)
        return -ENOMEM;
    db->stmts = stmts;

    db_stmt_t *st = &db->stmts[db->nstmts];
    *st = (db_stmt_t){.name = strdup(name), .sql = strdup(sql), .nparams = nparams};
    if (!st->name || !st->sql) {
        free(st->name);
        free(st->sql);
        return -ENOMEM;
    }
    db->nstmts++;

    if (db_ensure(db) < 0)
        return 0; /* prepared after the next successful connect */
    int r = db_prepare_one(db, st);
    if (r == -EINVAL) {
        db->nstmts--;
        free(st->name);
        free(st->sql);
        return r;
    }
    return 0;
}

/* Runs @res's checks for statements that return rows or nothing. */
static int db_result(db_t *db, PGresult *res, PGresult **ret_res)
{
    ExecStatusType st = res ? PQresultStatus(res) : PGRES_FATAL_ERROR;
    if (st != PGRES_COMMAND_OK && st != PGRES_TUPLES_OK)
        return db_fail(db, res);
    if (ret_res)
        *ret_res = res;
    else
        PQclear(res);
    return 0;
}

int db_exec(db_t *db, const char *name, const char *sql, int nparams, const char *const *params,
            PGresult **ret_res)
{
    if (db->in_copy) {
        db_set_error(db, NULL, "a COPY is in progress");
        return -EBUSY;
    }
    int r = db_ensure(db);
    if (r < 0)
        return r;

    PGresult *res;
    if (name) {
        db_stmt_t *st = db_stmt_find(db, name);
        if (!st) {
            db_set_error(db, NULL, "no prepared statement named %s", name);
            return -ENOENT;
        }
        if (nparams != st->nparams) {
            db_set_error(db, NULL, "statement %s takes %d parameters, got %d", name, st->nparams,
                         nparams);
            return -EINVAL;
        }
        if (!st->prepared && (r = db_prepare_one(db, st)) < 0)
            return r;
        res = PQexecPrepared(db->conn, name, nparams, params, NULL, NULL, 0);
    } else {
        res = PQexecParams(db->conn, sql, nparams, NULL, params, NULL, NULL, 0);
    }
    return db_result(db, res, ret_res);
}

int db_exec_simple(db_t *db, const char *sql)
{
    if (db->in_copy) {
        db_set_error(db, NULL, "a COPY is in progress");
        return -EBUSY;
    }
    int r = db_ensure(db);
    if (r < 0)
        return r;
    return db_result(db, PQexec(db->conn, sql), NULL);
}

int db_copy_begin(db_t *db, const char *sql)
{
    if (db->in_copy) {
        db_set_error(db, NULL, "a COPY is in progress");
        return -EBUSY;
    }
    int r = db_ensure(db);
    if (r < 0)
        return r;
    PGresult *res = PQexec(db->conn, sql);
    if (!res || PQresultStatus(res) != PGRES_COPY_IN) {
        if (res && PQresultStatus(res) != PGRES_FATAL_ERROR) {
            PQclear(res);
            db_set_error(db, NULL, "not a COPY ... FROM STDIN statement");
            return -EINVAL;
        }
        return db_fail(db, res);
    }
    PQclear(res);
    db->in_copy = true;
    return 0;
}

int db_copy_put(db_t *db, const char *buf, size_t len)
{
    if (!db->in_copy) {
        db_set_error(db, NULL, "no COPY in progress");
        return -EINVAL;
    }
    /* PQputCopyData takes an int length: feed large buffers in slices. */
    while (len > 0) {
        int n = len > (1u << 30) ? 1 << 30 : (int)len;
        if (PQputCopyData(db->conn, buf, n) != 1)
            return db_fail(db, NULL);
        buf += n;
        len -= (size_t)n;
    }
    return 0;
}

int db_copy_end(db_t *db, const char *abort_reason)
{
    if (!db->in_copy) {
        db_set_error(db, NULL, "no COPY in progress");
        return -EINVAL;
    }
    db->in_copy = false;
    if (PQputCopyEnd(db->conn, abort_reason) != 1)
        return db_fail(db, NULL);

    int r = 0;
    PGresult *res;
    while ((res = PQgetResult(db->conn))) {
        if (r == 0 && PQresultStatus(res) != PGRES_COMMAND_OK) {
            const char *state = PQresultErrorField(res, PG_DIAG_SQLSTATE);
            /* An abort we asked for ends in query_canceled: that is success. */
            if (abort_reason && state && !strcmp(state, "57014") &&
                PQstatus(db->conn) == CONNECTION_OK) {
                PQclear(res);
                continue;
            }
            r = db_fail(db, res);
            if (!db->conn)
                return r;
            continue;
        }
        PQclear(res);
    }
    if (r == 0 && PQstatus(db->conn) == CONNECTION_BAD)
        return db_fail(db, NULL);
    return r;
}

int db_copy_escape(char *buf, size_t size, const char *s, size_t len)
{
    size_t o = 0;
    if (size > INT_MAX)
        size = INT_MAX; /* the result must fit the int return value */
    for (size_t i = 0; i < len; i++) {
        char c = s[i], e = 0;
        switch (c) {
        case '\0':
            return -EINVAL;
        case '\\':
            e = '\\';
            break;
        case '\t':
            e = 't';
            break;
        case '\n':
            e = 'n';
            break;
        case '\r':
            e = 'r';
            break;
        default:
            break;
        }
        if (o + (e ? 2 : 1) > size)
            return -ENOBUFS;
        if (e) {
            buf[o++] = '\\';
            buf[o++] = e;
        } else {
            buf[o++] = c;
        }
    }
    return (int)o;
}
