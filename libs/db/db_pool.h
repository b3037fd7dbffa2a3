/* db_pool.h: asynchronous PostgreSQL connections for one libevent loop.
 *
 * A pool holds `size` non-blocking connections (PQconnectStart/PQconnectPoll driven by events on
 * their sockets) and a bounded FIFO of queries waiting for a free one. Nothing in it waits for
 * the server, so a loop serving many requests is never blocked by a slow query. Two exceptions,
 * both short: PQconnectStart resolves a host *name* synchronously (use an IP address in the DSN
 * to avoid it), and a query that times out is cancelled with PQcancel, which opens a connection
 * to the server and waits for it to accept the cancel request (a local round trip; against an
 * unreachable server it can block up to the TCP connect timeout).
 *
 * Threads: a pool belongs to the one thread running its event base (one pool per gateway loop).
 * It is not thread-safe, and every call must be made from that thread.
 *
 * Every connection runs in libpq pipeline mode. A query is sent as its statements plus a sync
 * point, so a query made with db_pool_query_as() is still one round trip:
 *     SELECT set_config('app.org_id', $1, true)   -- the org id is a bound parameter
 *     <the caller's statement with its parameters>
 *     Sync
 * Statements before a Sync share one transaction, so the setting is transaction-local: visible to
 * the statement (and to row-level security policies reading current_setting('app.org_id')) and
 * gone when the Sync commits, before the connection serves anyone else. An error in either
 * statement skips the rest and rolls the transaction back. Binding the org id as a parameter means
 * it is never interpolated into SQL; it is also required to be a canonical UUID, so that a
 * malformed tenant id is refused before it reaches the server. The caller's statement must not
 * contain BEGIN/COMMIT (a COMMIT would end the transaction early).
 *
 * Connections that break are reconnected in the background with exponential back-off. When no
 * connection has been up for connect_timeout_ms the pool is "down": new queries are refused at
 * once with -ECONNREFUSED and queued ones fail with -ECONNREFUSED, rather than waiting forever.
 */
#pragma once

#include <stddef.h>

#include <event2/event.h>
#include <libpq-fe.h>

typedef struct db_pool db_pool_t;

/** Tuning; a field left 0 takes its default. */
typedef struct db_pool_opts {
    size_t max_queue;       /* queries waiting for a connection; default 1024 */
    int connect_timeout_ms; /* one connection attempt, and the "pool is down" delay; default 5000 */
    int backoff_min_ms;     /* first reconnect delay, doubled per failure; default 100 */
    int backoff_max_ms;     /* longest reconnect delay; default 5000 */
} db_pool_opts_t;

/**
 * Called once per accepted query, always from the loop and never from inside db_pool_query().
 * @err: 0 with @res the rows (PGRES_TUPLES_OK or PGRES_COMMAND_OK);
 *   -EINVAL: the server rejected the statement (SQL error), @res holds the error: read its
 *     SQLSTATE with PQresultErrorField(res, PG_DIAG_SQLSTATE);
 *   -EAGAIN: a server condition that passes by itself (serialization failure, deadlock, lock
 *     timeout, out of resources), @res holds the error; retry later;
 *   -ETIMEDOUT: timeout_ms passed (the statement was cancelled if it had been sent; it may still
 *     have taken effect);
 *   -ECONNRESET: the connection broke while the query was in flight (it may have taken effect);
 *   -ECONNREFUSED: no connection could be made for connect_timeout_ms;
 *   -ECANCELED: db_pool_free() ran first.
 * @res is NULL unless stated; when given, the callback owns it and must PQclear() it.
 * The callback may call db_pool_query*() but not db_pool_free().
 */
typedef void (*db_pool_cb)(int err, PGresult *res, void *opaque);

/**
 * Creates a pool of @size connections to @dsn on @base and starts connecting (the first
 * connections come up later, in the loop). @opts may be NULL. Queries made before a connection
 * is up wait in the queue. 0, -EINVAL (@size 0 or a DSN libpq cannot parse), or -ENOMEM.
 */
int db_pool_new(struct event_base *base, const char *dsn, size_t size, const db_pool_opts_t *opts,
                db_pool_t **ret_pool);

/**
 * Cancels every query: queued and in-flight ones get their callback with -ECANCELED before this
 * returns (statements already running are cancelled on the server), then closes the connections
 * and frees. Accepts NULL. Not from inside a pool callback.
 */
void db_pool_free(db_pool_t *pool);

/**
 * Queues @sql with @nparams text parameters (@params[i] NULL for SQL NULL; everything is copied)
 * and sends it as soon as a connection is free. Results come back in text format. @timeout_ms
 * counts from this call, queue time included; 0 means no timeout.
 * Returns 0 when accepted (then @cb runs exactly once, later), or without calling @cb:
 * -EINVAL (bad arguments), -EAGAIN (max_queue queries are waiting already), -ECONNREFUSED (the
 * pool is down, see above), -ECANCELED (the pool is being freed), -ENOMEM.
 */
int db_pool_query(db_pool_t *pool, const char *sql, int nparams, const char *const *params,
                  db_pool_cb cb, void *opaque, int timeout_ms);

/**
 * Like db_pool_query(), with `app.org_id` set to @org_id for this statement only (see the top of
 * this file). -EINVAL when @org_id is not a canonical UUID (8-4-4-4-12 hex digits).
 */
int db_pool_query_as(db_pool_t *pool, const char *org_id, const char *sql, int nparams,
                     const char *const *params, db_pool_cb cb, void *opaque, int timeout_ms);

/** For /readyz and metrics: connections up (@ret_ready), of those the ones running a query
 *  (@ret_busy), and queries waiting (@ret_queued). Any pointer may be NULL. */
void db_pool_stats(const db_pool_t *pool, size_t *ret_ready, size_t *ret_busy, size_t *ret_queued);
