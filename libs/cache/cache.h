/* cache.h: Redis clients for dashboard aggregates (hiredis 0.14, RESP2, no TLS).
 *
 * Two clients share one URL format, `redis://[[user]:password@]host[:port][/db]` (port 6379 and
 * db 0 by default, IPv6 hosts in brackets, %XX escapes allowed in user and password). With a
 * password the client sends AUTH (AUTH user password when a user is given), with a db SELECT,
 * on every (re)connect. The password never appears in an error message.
 *
 * cache_t is the synchronous client of the consumer daemons, used by one thread at a time, in
 * the spirit of libs/db: when the connection breaks, the next call reconnects (once per call); a
 * connection that died while idle (server restart) is noticed before the next command is sent,
 * so that call reconnects transparently. A command is never re-sent after it may have reached the
 * server: that call fails and the caller decides whether to retry. Every socket operation is
 * bounded by the timeout given to cache_new(), so a hung server cannot block a daemon forever.
 *
 * cache_async_t is the asynchronous client of the gateway, bound to one libevent event_base and
 * used only from that loop's thread. It reconnects by itself with exponential backoff, and while
 * it is not connected commands fail at once with -ECONNREFUSED, so the caller can fall back to
 * PostgreSQL without waiting.
 *
 * Errors: -ECONNREFUSED when the server cannot be reached (transient); -ECONNRESET when the
 * connection broke during the call (transient, the command may or may not have run); -ETIMEDOUT
 * when the server did not answer in time (transient, the command may or may not have run);
 * -EAGAIN for a server condition that passes by itself (LOADING, BUSY, TRYAGAIN, MASTERDOWN, OOM);
 * -EACCES when the server rejects the credentials or the command (NOAUTH, WRONGPASS, NOPERM);
 * -EINVAL for a bad URL or a command the server answered with any other error; -ENOMEM.
 */
#pragma once

#include <stdbool.h>
#include <stddef.h>

#include <hiredis/hiredis.h>

struct event_base;

/** Checks @url without connecting. 0, or -EINVAL with a one-line reason in @errbuf (which never
 *  contains the password); @errbuf may be NULL. Use it to explain a -EINVAL from the _new calls. */
int cache_url_check(const char *url, char *errbuf, size_t errsize);

/* ---- Synchronous client ---------------------------------------------------------------------- */

typedef struct cache cache_t;

/** Creates a client for @url (copied), where @timeout_ms (> 0) bounds connecting and every
 *  read or write. Tries to connect; a failed first connection is not an error (the next call
 *  retries). 0, -EINVAL for a bad URL or timeout, or -ENOMEM. */
int cache_new(const char *url, unsigned timeout_ms, cache_t **ret_cache);

/** Closes and frees, discarding any appended pipeline commands. Accepts NULL. */
void cache_free(cache_t *cache);

/** Connects (AUTH, SELECT) if not connected. 0, -ECONNREFUSED (unreachable, or no answer in
 *  time), -EACCES (credentials rejected) or -EINVAL (SELECT rejected). */
int cache_connect(cache_t *cache);

/** True when the connection is up, as far as the client knows. */
bool cache_connected(const cache_t *cache);

/** The last error message, or "". */
const char *cache_errmsg(const cache_t *cache);

/**
 * Runs one command given as @argc arguments (@argvlen[i] bytes each, binary-safe; @argvlen may be
 * NULL for NUL-terminated strings). On success returns 0 and, if @ret_reply is not NULL, gives
 * the caller the reply to freeReplyObject(). A server error reply is -EINVAL (or -EAGAIN, see
 * above) with the server's message in cache_errmsg(); no reply is returned then.
 */
int cache_command(cache_t *cache, int argc, const char *const *argv, const size_t *argvlen,
                  redisReply **ret_reply);

/** Appends a command (as for cache_command) to the client's pipeline, kept in memory until
 *  cache_pipeline_run(); appending never touches the network. 0, -EINVAL (argc < 1), -ENOMEM. */
int cache_pipeline_append(cache_t *cache, int argc, const char *const *argv, const size_t *argvlen);

/** The number of commands appended and not yet run. */
size_t cache_pipeline_len(const cache_t *cache);

/**
 * Sends every appended command in one write and reads all their replies, then empties the
 * pipeline whatever the outcome. Returns the number of commands the server answered with an
 * error (>= 0; cache_errmsg() holds the first one), or a negative errno when the connection
 * failed, in which case any prefix of the commands may have run. An empty pipeline returns 0
 * without touching the network.
 */
int cache_pipeline_run(cache_t *cache);

/** Empties the pipeline without sending anything. */
void cache_pipeline_clear(cache_t *cache);

/* ---- Lua scripts (synchronous client) ---------------------------------------------------------
 */

/* A Lua script run with EVALSHA. Declare one per script, statically initialised with its source
 * ({.source = "..."}); the client fills in the SHA-1 the server gives it. Used by one thread at a
 * time, like the cache_t it runs on. */
typedef struct cache_script {
    const char *source; /* borrowed: must outlive the struct (a string literal) */
    char sha1[41];      /* "" until loaded */
} cache_script_t;

/**
 * Runs @script with EVALSHA on @argc strings: its @nkeys keys first, then its arguments
 * (@argvlen as for cache_command()). The script is loaded with SCRIPT LOAD on first use, and
 * again when the server answers NOSCRIPT (it restarted or its script cache was flushed), in
 * which case the script had not run and is run once more. Returns as cache_command(): 0 with
 * the reply in @ret_reply (may be NULL), or a negative errno; an error the script raises is
 * -EINVAL with its message in cache_errmsg().
 */
int cache_script_run(cache_t *cache, cache_script_t *script, int nkeys, int argc,
                     const char *const *argv, const size_t *argvlen, redisReply **ret_reply);

/* ---- Asynchronous client (libevent) --------------------------------------------------------- */

typedef struct cache_async cache_async_t;

/**
 * Called exactly once per accepted command, always from inside the event loop, never from inside
 * cache_async_command(). @err is 0 with the server's @reply; -EINVAL/-EAGAIN with the error
 * @reply; or -ETIMEDOUT, -ECONNRESET, -ECANCELED with @reply NULL. @reply is borrowed: it is
 * freed when the callback returns. The callback may issue new commands, but must not call
 * cache_async_free().
 */
typedef void (*cache_async_cb)(int err, const redisReply *reply, void *opaque);

/** Creates a client for @url on @base (borrowed: it must outlive the client) and starts
 *  connecting. @timeout_ms (> 0) bounds connecting and is the default per-command timeout.
 *  0, -EINVAL for a bad URL or timeout, or -ENOMEM. */
int cache_async_new(struct event_base *base, const char *url, unsigned timeout_ms,
                    cache_async_t **ret_ca);

/** Calls the callback of every pending command with -ECANCELED, closes and frees. Call it from
 *  the loop's thread, outside any of this client's callbacks, before freeing the event_base.
 *  Accepts NULL. */
void cache_async_free(cache_async_t *ca);

/** True when connected and ready for commands. */
bool cache_async_connected(const cache_async_t *ca);

/** Why the client last lost or failed to make its connection (for the caller's log), or "". */
const char *cache_async_errmsg(const cache_async_t *ca);

/**
 * Sends a command (arguments as for cache_command, copied) whose result is handed to @cb with
 * @opaque. @timeout_ms bounds the wait for the reply (0: the client's timeout); a command that
 * timed out is reported once with -ETIMEDOUT and its late reply is dropped. Returns 0 when the
 * command was accepted (@cb will be called), else @cb is never called and the return is
 * -ECONNREFUSED while not connected, -EINVAL (argc < 1) or -ENOMEM.
 */
int cache_async_command(cache_async_t *ca, int argc, const char *const *argv, const size_t *argvlen,
                        unsigned timeout_ms, cache_async_cb cb, void *opaque);
