/* db.h: one PostgreSQL connection with reconnect, named prepared statements and COPY.
 *
 * A db_t is used by one thread at a time. When the connection breaks, the next call reconnects
 * (once per call) and re-prepares every statement registered with db_prepare(), so callers only
 * see -ECONNRESET for the call that met the broken connection and can retry it.
 *
 * Errors: -ECONNRESET / -ECONNREFUSED when the server is unreachable or the connection broke
 * (transient: retry later); -EAGAIN for a server condition that passes by itself (serialization
 * failure, deadlock, lock or statement timeout, out of resources: retry later, the data is fine);
 * -EINVAL for any other SQL error (the statement or the data is wrong); -ENOMEM.
 * db_errmsg() describes the last error (never contains the password), db_sqlstate() its code.
 *
 * A connection that died while idle (server restart, pg_terminate_backend) is noticed before the
 * next statement is sent, so that call reconnects transparently. A statement is never re-sent
 * after it may have reached the server: that call returns -ECONNRESET.
 *
 * Server notices (e.g. "relation already exists, skipping") are discarded: libraries don't log.
 * When the DSN sets no connect_timeout, 5 seconds is used.
 */
#pragma once

#include <stdbool.h>
#include <stddef.h>

#include <libpq-fe.h>

typedef struct db db_t;

/** Creates a handle for @dsn (copied) and tries to connect; a failed first connection is not
 *  an error (the next call retries). 0, -EINVAL when @dsn cannot be parsed, or -ENOMEM. */
int db_new(const char *dsn, db_t **ret_db);

/** Closes and frees. Accepts NULL. */
void db_free(db_t *db);

/** Connects if not connected. 0 or -ECONNREFUSED. */
int db_connect(db_t *db);

/** True when the connection is up (as far as libpq knows). */
bool db_connected(db_t *db);

/** The last error message, or "". */
const char *db_errmsg(const db_t *db);

/** The SQLSTATE of the last error ("23505"), or "" when it had none (connection errors). */
const char *db_sqlstate(const db_t *db);

/** Registers a prepared statement, prepared now if connected and again after each reconnect.
 *  @name and @sql are copied. -EEXIST when @name is registered; -EINVAL when the server rejects
 *  @sql (the statement is then not registered). */
int db_prepare(db_t *db, const char *name, const char *sql, int nparams);

/**
 * Runs a statement: a registered prepared one when @name is not NULL, else @sql with parameters
 * (text format). On success returns 0 and, if @ret_res is not NULL, gives the caller the result
 * to PQclear(); on failure no result is returned.
 */
int db_exec(db_t *db, const char *name, const char *sql, int nparams, const char *const *params,
            PGresult **ret_res);

/** Runs one or more SQL commands without parameters (migrations, BEGIN/COMMIT). */
int db_exec_simple(db_t *db, const char *sql);

/** Starts `COPY ... FROM STDIN` (@sql is the whole COPY statement). */
int db_copy_begin(db_t *db, const char *sql);
/** Sends data in COPY text format. */
int db_copy_put(db_t *db, const char *buf, size_t len);
/** Ends the COPY (or aborts it with @abort_reason when not NULL) and reads its result. */
int db_copy_end(db_t *db, const char *abort_reason);

/** Writes @s (@len bytes) into @buf escaped for COPY text format (backslash, tab, newline, CR,
 *  so a non-NULL value can never read as \N or end the data). No NUL is appended. Returns the
 *  number of bytes written, -ENOBUFS when @size is too small (2 * @len always suffices), or
 *  -EINVAL when @s contains a NUL byte (PostgreSQL text cannot hold one). */
int db_copy_escape(char *buf, size_t size, const char *s, size_t len);

/** The raw connection, borrowed, or NULL when not connected. */
PGconn *db_conn(db_t *db);
