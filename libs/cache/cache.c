/* cache.c: synchronous and libevent Redis clients over hiredis 0.14. */
#include "cache.h"

#include <ctype.h>
#include <errno.h>
#include <limits.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>

#include <event2/event.h>
#include <hiredis/async.h>
#include <hiredis/adapters/libevent.h>

#define CACHE_BACKOFF_MIN_MS 100
#define CACHE_BACKOFF_MAX_MS 2000

/* ---- URL ------------------------------------------------------------------------------------ */

typedef struct cache_url {
    char *host;
    int port;
    int db;
    char *user;     /* NULL when none */
    char *password; /* NULL when none */
} cache_url_t;

static void cache_url_done(cache_url_t *u)
{
    free(u->host);
    free(u->user);
    if (u->password) {
        explicit_bzero(u->password, strlen(u->password));
        free(u->password);
    }
    *u = (cache_url_t){0};
}

/* Decodes %XX escapes of @s (@len bytes) into a new string; NULL on a bad escape or no memory. */
static char *cache_url_unescape(const char *s, size_t len)
{
    char *out = malloc(len + 1), *w = out;
    if (!out)
        return NULL;
    for (size_t i = 0; i < len; i++) {
        if (s[i] != '%') {
            *w++ = s[i];
            continue;
        }
        if (i + 2 >= len || !isxdigit((unsigned char)s[i + 1]) ||
            !isxdigit((unsigned char)s[i + 2])) {
            explicit_bzero(out, len + 1);
            free(out);
            return NULL;
        }
        char hex[3] = {s[i + 1], s[i + 2], 0};
        *w++ = (char)strtol(hex, NULL, 16);
        i += 2;
    }
    *w = '\0';
    return out;
}

/* Parses a decimal number of @len bytes (digits only) within [min, max]; -1 when it is not. */
static long cache_url_number(const char *s, size_t len, long min, long max)
{
    long v = 0;
    if (len == 0 || len > 10)
        return -1;
    for (size_t i = 0; i < len; i++) {
        if (!isdigit((unsigned char)s[i]))
            return -1;
        v = v * 10 + (s[i] - '0');
    }
    return v < min || v > max ? -1 : v;
}

/* Error messages quote the host, port and db parts only: the userinfo may hold a password. */
static int cache_url_parse(const char *url, cache_url_t *u, char *err, size_t errsize)
{
    *u = (cache_url_t){.port = 6379};
#define URL_FAIL(...)                            \
    do {                                         \
        if (err && errsize)                      \
            snprintf(err, errsize, __VA_ARGS__); \
        goto fail;                               \
    } while (0)

    if (!url || !*url)
        URL_FAIL("empty Redis URL (expected redis://[[user]:password@]host[:port][/db])");
    if (!strncasecmp(url, "rediss://", 9))
        URL_FAIL("rediss:// (TLS) is not supported by this build's hiredis; use redis://");
    if (strncasecmp(url, "redis://", 8))
        URL_FAIL("Redis URL must start with redis:// (expected "
                 "redis://[[user]:password@]host[:port][/db])");

    const char *p = url + 8;
    size_t alen = strcspn(p, "/?#");
    if (p[alen] == '?' || p[alen] == '#' || (p[alen] == '/' && strpbrk(p + alen, "?#")))
        URL_FAIL("Redis URL options (?...) and fragments (#...) are not supported");

    /* The password may contain '@' when escaped only, so the last '@' ends the userinfo. */
    const char *at = memrchr(p, '@', alen);
    if (at) {
        const char *colon = memchr(p, ':', (size_t)(at - p));
        if (!colon)
            URL_FAIL("credentials in a Redis URL must be written user:password@ or :password@");
        if (colon > p && !(u->user = cache_url_unescape(p, (size_t)(colon - p))))
            URL_FAIL("bad %%-escape in the user name of the Redis URL");
        if (!(u->password = cache_url_unescape(colon + 1, (size_t)(at - colon - 1))))
            URL_FAIL("bad %%-escape in the password of the Redis URL");
        if (!u->password[0])
            URL_FAIL("empty password in the Redis URL");
        alen -= (size_t)(at + 1 - p);
        p = at + 1;
    }

    const char *host = p, *port = NULL;
    size_t hlen, plen = 0;
    if (*p == '[') {
        const char *close = memchr(p, ']', alen);
        if (!close)
            URL_FAIL("unterminated [ in the host of the Redis URL");
        host = p + 1;
        hlen = (size_t)(close - host);
        if (close + 1 < p + alen) {
            if (close[1] != ':')
                URL_FAIL("unexpected text after ] in the host of the Redis URL");
            port = close + 2;
            plen = (size_t)(p + alen - port);
        }
    } else {
        const char *colon = memchr(p, ':', alen);
        hlen = colon ? (size_t)(colon - p) : alen;
        if (colon) {
            port = colon + 1;
            plen = (size_t)(p + alen - port);
        }
    }
    if (hlen == 0)
        URL_FAIL("missing host in the Redis URL");
    for (size_t i = 0; i < hlen; i++) {
        unsigned char c = (unsigned char)host[i];
        if (!isalnum(c) && c != '.' && c != '-' && c != '_' && !(c == ':' && *p == '['))
            URL_FAIL("bad character in the host '%.*s' of the Redis URL", (int)hlen, host);
    }
    if (port) {
        long v = cache_url_number(port, plen, 1, 65535);
        if (v < 0)
            URL_FAIL("bad port '%.*s' in the Redis URL (expected 1-65535)", (int)plen, port);
        u->port = (int)v;
    }
    const char *path = p + alen;
    if (*path == '/' && path[1]) {
        long v = cache_url_number(path + 1, strlen(path + 1), 0, INT_MAX);
        if (v < 0)
            URL_FAIL("bad database '%s' in the Redis URL (expected a number such as /0)", path + 1);
        u->db = (int)v;
    }
    if (!(u->host = strndup(host, hlen)))
        URL_FAIL("out of memory");
    return 0;
#undef URL_FAIL

fail:
    cache_url_done(u);
    return -EINVAL;
}

int cache_url_check(const char *url, char *errbuf, size_t errsize)
{
    cache_url_t u;
    int r = cache_url_parse(url, &u, errbuf, errsize);
    if (r == 0)
        cache_url_done(&u);
    return r;
}

/* Formats an error message into @buf as one line, with every occurrence of @password masked (a
 * server may echo what it was sent). */
static void cache_format_error(char *buf, size_t size, const char *password, const char *fmt,
                               va_list ap)
{
    vsnprintf(buf, size, fmt, ap);
    for (char *c = buf; *c; c++)
        if (*c == '\r' || *c == '\n')
            *c = ' ';
    if (password && *password) {
        size_t plen = strlen(password);
        char *hit;
        while ((hit = strstr(buf, password))) {
            memcpy(hit, "***", plen < 3 ? plen : 3);
            memmove(hit + (plen < 3 ? plen : 3), hit + plen, strlen(hit + plen) + 1);
        }
    }
}

/* The errno for a server error reply, from its error code (the first word). */
static int cache_reply_errno(const char *msg)
{
    static const char *const transient[] = {"LOADING",    "BUSY",        "TRYAGAIN",
                                            "MASTERDOWN", "CLUSTERDOWN", "OOM"};
    static const char *const denied[] = {"NOAUTH", "WRONGPASS", "NOPERM"};
    size_t n = strcspn(msg, " ");

    for (size_t i = 0; i < sizeof(transient) / sizeof(*transient); i++)
        if (n == strlen(transient[i]) && !strncmp(msg, transient[i], n))
            return -EAGAIN;
    for (size_t i = 0; i < sizeof(denied) / sizeof(*denied); i++)
        if (n == strlen(denied[i]) && !strncmp(msg, denied[i], n))
            return -EACCES;
    return -EINVAL;
}

/* The AUTH and SELECT commands a fresh connection needs, in order; returns how many (0-2). */
static int cache_handshake(const cache_url_t *u, char dbbuf[16], const char *argv[2][3],
                           int argc[2])
{
    int n = 0;
    if (u->password) {
        argv[n][0] = "AUTH";
        argv[n][1] = u->user ? u->user : u->password;
        argv[n][2] = u->password;
        argc[n++] = u->user ? 3 : 2;
    }
    if (u->db) {
        snprintf(dbbuf, 16, "%d", u->db);
        argv[n][0] = "SELECT";
        argv[n][1] = dbbuf;
        argc[n++] = 2;
    }
    return n;
}

/* ---- Synchronous client ----------------------------------------------------------------------
 */

struct cache {
    cache_url_t url;
    struct timeval tv;
    redisContext *rc;
    char *pipe; /* RESP-formatted commands appended and not yet run */
    size_t pipe_len, pipe_cap, pipe_n;
    char errmsg[512];
};

static void cache_set_error(cache_t *cache, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    cache_format_error(cache->errmsg, sizeof(cache->errmsg), cache->url.password, fmt, ap);
    va_end(ap);
}

static void cache_disconnect(cache_t *cache)
{
    if (cache->rc)
        redisFree(cache->rc);
    cache->rc = NULL;
}

/* After hiredis reported an error on the connection (saved_errno is errno right after the
 * call): the connection is dropped, because a reply may still be on its way and would be read as
 * the answer to the next command. */
static int cache_io_fail(cache_t *cache, int saved_errno)
{
    int r = -ECONNRESET;
    if (cache->rc->err == REDIS_ERR_OOM)
        r = -ENOMEM;
    else if (cache->rc->err == REDIS_ERR_IO &&
             (saved_errno == EAGAIN || saved_errno == EWOULDBLOCK || saved_errno == ETIMEDOUT))
        r = -ETIMEDOUT;
    if (r == -ETIMEDOUT)
        cache_set_error(cache, "Redis at %s:%d did not answer within %ld ms", cache->url.host,
                        cache->url.port,
                        (long)(cache->tv.tv_sec * 1000 + cache->tv.tv_usec / 1000));
    else
        cache_set_error(cache, "connection to Redis at %s:%d failed: %s", cache->url.host,
                        cache->url.port, cache->rc->errstr[0] ? cache->rc->errstr : "lost");
    cache_disconnect(cache);
    return r;
}

/* Runs one command during connection setup; 0 or a negative errno (the caller disconnects). */
static int cache_setup_command(cache_t *cache, int argc, const char **argv)
{
    redisReply *reply = redisCommandArgv(cache->rc, argc, argv, NULL);
    if (!reply)
        return cache_io_fail(cache, errno);
    int r = 0;
    if (reply->type == REDIS_REPLY_ERROR) {
        r = cache_reply_errno(reply->str);
        if (!strcmp(argv[0], "AUTH") && r != -EAGAIN)
            r = -EACCES;
        cache_set_error(cache, "Redis at %s:%d rejected %s: %s", cache->url.host, cache->url.port,
                        argv[0], reply->str);
    }
    freeReplyObject(reply);
    return r;
}

int cache_connect(cache_t *cache)
{
    if (cache->rc)
        return 0;

    cache->rc = redisConnectWithTimeout(cache->url.host, cache->url.port, cache->tv);
    if (!cache->rc) {
        cache_set_error(cache, "out of memory connecting to Redis");
        return -ENOMEM;
    }
    if (cache->rc->err) {
        cache_set_error(cache, "cannot connect to Redis at %s:%d: %s", cache->url.host,
                        cache->url.port, cache->rc->errstr);
        cache_disconnect(cache);
        return -ECONNREFUSED;
    }
    if (redisSetTimeout(cache->rc, cache->tv) != REDIS_OK) {
        cache_set_error(cache, "cannot set the Redis socket timeout: %s", cache->rc->errstr);
        cache_disconnect(cache);
        return -ECONNREFUSED;
    }
    (void)redisEnableKeepAlive(cache->rc);

    char dbbuf[16];
    const char *argv[2][3];
    int argc[2];
    int n = cache_handshake(&cache->url, dbbuf, argv, argc);
    for (int i = 0; i < n; i++) {
        int r = cache_setup_command(cache, argc[i], argv[i]);
        if (r < 0) {
            cache_disconnect(cache);
            /* Trouble on the wire while setting up means the server is not usable yet. */
            return r == -ECONNRESET || r == -ETIMEDOUT ? -ECONNREFUSED : r;
        }
    }
    return 0;
}

/* Before sending: notice a connection the server closed while we were idle (restart, timeout),
 * which hiredis only learns by reading, and reconnect. Nothing is in flight between calls, so
 * any readable byte or EOF means the connection is unusable. */
static int cache_ensure(cache_t *cache)
{
    if (cache->rc) {
        char b;
        ssize_t n = recv(cache->rc->fd, &b, 1, MSG_PEEK | MSG_DONTWAIT);
        if (n >= 0 || (errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR))
            cache_disconnect(cache);
    }
    return cache_connect(cache);
}

int cache_new(const char *url, unsigned timeout_ms, cache_t **ret_cache)
{
    if (timeout_ms == 0)
        return -EINVAL;
    cache_t *cache = calloc(1, sizeof(*cache));
    if (!cache)
        return -ENOMEM;
    int r = cache_url_parse(url, &cache->url, NULL, 0);
    if (r < 0)
        goto fail;
    cache->tv =
        (struct timeval){.tv_sec = timeout_ms / 1000, .tv_usec = (timeout_ms % 1000) * 1000};

    (void)cache_connect(cache);
    *ret_cache = cache;
    return 0;

fail:
    cache_free(cache);
    return r;
}

void cache_free(cache_t *cache)
{
    if (!cache)
        return;
    cache_disconnect(cache);
    cache_url_done(&cache->url);
    free(cache->pipe);
    free(cache);
}

bool cache_connected(const cache_t *cache)
{
    return cache->rc && !cache->rc->err;
}

const char *cache_errmsg(const cache_t *cache)
{
    return cache->errmsg;
}

/* Sends one command and reads its reply, error replies included. 0 or a connection errno. */
static int cache_roundtrip(cache_t *cache, int argc, const char *const *argv, const size_t *argvlen,
                           redisReply **ret_reply)
{
    int r = cache_ensure(cache);
    if (r < 0)
        return r;
    if (redisAppendCommandArgv(cache->rc, argc, (const char **)argv, argvlen) != REDIS_OK)
        return cache_io_fail(cache, errno);
    if (redisGetReply(cache->rc, (void **)ret_reply) != REDIS_OK)
        return cache_io_fail(cache, errno);
    return 0;
}

int cache_command(cache_t *cache, int argc, const char *const *argv, const size_t *argvlen,
                  redisReply **ret_reply)
{
    redisReply *reply = NULL;
    if (argc < 1)
        return -EINVAL;
    int r = cache_roundtrip(cache, argc, argv, argvlen, &reply);
    if (r < 0)
        return r;

    if (reply->type == REDIS_REPLY_ERROR) {
        cache_set_error(cache, "Redis error: %s", reply->str);
        r = cache_reply_errno(reply->str);
        freeReplyObject(reply);
        return r;
    }
    if (ret_reply)
        *ret_reply = reply;
    else
        freeReplyObject(reply);
    return 0;
}

int cache_pipeline_append(cache_t *cache, int argc, const char *const *argv, const size_t *argvlen)
{
    if (argc < 1)
        return -EINVAL;
    char *cmd = NULL;
    int len = redisFormatCommandArgv(&cmd, argc, (const char **)argv, argvlen);
    if (len < 0)
        return -ENOMEM;
    if (cache->pipe_len + (size_t)len > cache->pipe_cap) {
        size_t cap = cache->pipe_cap ? cache->pipe_cap : 4096;
        while (cap < cache->pipe_len + (size_t)len)
            cap *= 2;
        char *p = realloc(cache->pipe, cap);
        if (!p) {
            redisFreeCommand(cmd);
            return -ENOMEM;
        }
        cache->pipe = p;
        cache->pipe_cap = cap;
    }
    memcpy(cache->pipe + cache->pipe_len, cmd, (size_t)len);
    cache->pipe_len += (size_t)len;
    cache->pipe_n++;
    redisFreeCommand(cmd);
    return 0;
}

size_t cache_pipeline_len(const cache_t *cache)
{
    return cache->pipe_n;
}

void cache_pipeline_clear(cache_t *cache)
{
    cache->pipe_len = 0;
    cache->pipe_n = 0;
}

int cache_pipeline_run(cache_t *cache)
{
    int r = 0, failed = 0;
    if (cache->pipe_n == 0)
        return 0;
    r = cache_ensure(cache);
    if (r < 0)
        goto done;

    /* The buffer already holds RESP commands back to back, so it goes out as one "command". */
    if (redisAppendFormattedCommand(cache->rc, cache->pipe, cache->pipe_len) != REDIS_OK) {
        r = cache_io_fail(cache, errno);
        goto done;
    }
    for (size_t i = 0; i < cache->pipe_n; i++) {
        redisReply *reply = NULL;
        if (redisGetReply(cache->rc, (void **)&reply) != REDIS_OK) {
            r = cache_io_fail(cache, errno);
            goto done;
        }
        if (reply->type == REDIS_REPLY_ERROR) {
            if (failed == 0)
                cache_set_error(cache, "Redis error in pipelined command %zu of %zu: %s", i + 1,
                                cache->pipe_n, reply->str);
            if (failed < INT_MAX)
                failed++;
        }
        freeReplyObject(reply);
    }
    r = failed;

done:
    cache_pipeline_clear(cache);
    return r;
}

/* ---- Lua scripts ------------------------------------------------------------------------------
 */

static int cache_script_load(cache_t *cache, cache_script_t *script)
{
    const char *argv[] = {"SCRIPT", "LOAD", script->source};
    redisReply *reply = NULL;
    int r = cache_command(cache, 3, argv, NULL, &reply);
    if (r < 0)
        return r;
    if (reply->type != REDIS_REPLY_STRING || reply->len != 40) {
        cache_set_error(cache, "Redis answered SCRIPT LOAD without a SHA-1");
        freeReplyObject(reply);
        return -EINVAL;
    }
    memcpy(script->sha1, reply->str, 40);
    script->sha1[40] = '\0';
    freeReplyObject(reply);
    return 0;
}

int cache_script_run(cache_t *cache, cache_script_t *script, int nkeys, int argc,
                     const char *const *argv, const size_t *argvlen, redisReply **ret_reply)
{
    const char **v = NULL;
    size_t *vlen = NULL;
    char nkeys_buf[16];
    int r;

    if (!script || !script->source || nkeys < 0 || argc < nkeys)
        return -EINVAL;
    v = malloc(((size_t)argc + 3) * sizeof(*v));
    vlen = malloc(((size_t)argc + 3) * sizeof(*vlen));
    if (!v || !vlen) {
        r = -ENOMEM;
        goto done;
    }
    snprintf(nkeys_buf, sizeof(nkeys_buf), "%d", nkeys);
    v[0] = "EVALSHA";
    v[2] = nkeys_buf;
    for (int i = 0; i < argc; i++) {
        v[i + 3] = argv[i];
        vlen[i + 3] = argvlen ? argvlen[i] : strlen(argv[i]);
    }

    for (int attempt = 0;; attempt++) {
        redisReply *reply = NULL;
        if (!script->sha1[0] && (r = cache_script_load(cache, script)) < 0)
            goto done;
        v[1] = script->sha1;
        vlen[0] = 7;
        vlen[1] = 40;
        vlen[2] = strlen(nkeys_buf);
        if ((r = cache_roundtrip(cache, argc + 3, v, vlen, &reply)) < 0)
            goto done;
        if (reply->type == REDIS_REPLY_ERROR && !strncmp(reply->str, "NOSCRIPT", 8) &&
            attempt == 0) {
            /* The server lost its script cache: the script did not run. */
            freeReplyObject(reply);
            script->sha1[0] = '\0';
            continue;
        }
        if (reply->type == REDIS_REPLY_ERROR) {
            cache_set_error(cache, "Redis error: %s", reply->str);
            r = cache_reply_errno(reply->str);
            freeReplyObject(reply);
            goto done;
        }
        if (ret_reply)
            *ret_reply = reply;
        else
            freeReplyObject(reply);
        r = 0;
        goto done;
    }

done:
    free(v);
    free(vlen);
    return r;
}

/* ---- Asynchronous client --------------------------------------------------------------------
 */

typedef enum cache_async_state {
    CACHE_ASYNC_DOWN,       /* waiting for the reconnect timer */
    CACHE_ASYNC_CONNECTING, /* TCP connect in progress */
    CACHE_ASYNC_HANDSHAKE,  /* AUTH / SELECT sent */
    CACHE_ASYNC_READY,
} cache_async_state_t;

/* One command. hiredis owns it (as callback privdata) until it calls cache_async_reply_cb(),
 * which happens exactly once: with the reply, or with NULL when the connection goes away. The
 * user's callback may run earlier (timeout, cancel): the request is then marked done and only
 * waits for hiredis to let go of it. */
typedef struct cache_req {
    cache_async_t *ca;
    cache_async_cb cb;
    void *opaque;
    struct event *timer;
    struct cache_req *prev, *next; /* in ca->live while not done */
    bool done;
} cache_req_t;

struct cache_async {
    struct event_base *base;
    cache_url_t url;
    unsigned timeout_ms;
    redisAsyncContext *ac;
    cache_async_state_t state;
    int handshake_left;
    struct event *retry;   /* reconnect with backoff */
    struct event *connect; /* bounds connecting + handshake */
    unsigned backoff_ms;
    cache_req_t *live;
    bool freeing;
    char errmsg[512];
};

static void cache_async_set_error(cache_async_t *ca, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    cache_format_error(ca->errmsg, sizeof(ca->errmsg), ca->url.password, fmt, ap);
    va_end(ap);
}

static struct timeval cache_tv(unsigned ms)
{
    return (struct timeval){.tv_sec = ms / 1000, .tv_usec = (ms % 1000) * 1000};
}

static void cache_req_unlink(cache_req_t *req)
{
    if (req->prev)
        req->prev->next = req->next;
    else
        req->ca->live = req->next;
    if (req->next)
        req->next->prev = req->prev;
    req->prev = req->next = NULL;
}

/* Ends @req for its caller (timeout, cancel, reply) while hiredis may still hold it. */
static void cache_req_finish(cache_req_t *req, int err, const redisReply *reply)
{
    req->done = true;
    cache_req_unlink(req);
    event_free(req->timer);
    req->timer = NULL;
    req->cb(err, reply, req->opaque);
}

/* The connection is gone (hiredis freed it or is about to): schedule a reconnect. Idempotent. */
static void cache_async_down(cache_async_t *ca)
{
    ca->ac = NULL;
    ca->state = CACHE_ASYNC_DOWN;
    event_del(ca->connect);
    if (ca->freeing || evtimer_pending(ca->retry, NULL))
        return;
    struct timeval tv = cache_tv(ca->backoff_ms);
    evtimer_add(ca->retry, &tv);
    ca->backoff_ms =
        ca->backoff_ms * 2 > CACHE_BACKOFF_MAX_MS ? CACHE_BACKOFF_MAX_MS : ca->backoff_ms * 2;
}

static void cache_async_ready(cache_async_t *ca)
{
    ca->state = CACHE_ASYNC_READY;
    ca->backoff_ms = CACHE_BACKOFF_MIN_MS;
    event_del(ca->connect);
}

static void cache_async_handshake_cb(redisAsyncContext *ac, void *r, void *privdata)
{
    cache_async_t *ca = privdata;
    redisReply *reply = r;
    (void)ac;
    if (!reply || ca->state != CACHE_ASYNC_HANDSHAKE)
        return; /* the connection is going away; the disconnect callback handles it */
    if (reply->type == REDIS_REPLY_ERROR) {
        cache_async_set_error(ca, "Redis at %s:%d rejected the connection setup: %s", ca->url.host,
                              ca->url.port, reply->str);
        /* Deferred by hiredis until this callback returns; the disconnect callback follows. */
        redisAsyncFree(ca->ac);
        return;
    }
    if (--ca->handshake_left == 0)
        cache_async_ready(ca);
}

static void cache_async_connect_cb(const redisAsyncContext *ac, int status)
{
    cache_async_t *ca = ac->data;
    if (status != REDIS_OK) {
        cache_async_set_error(ca, "cannot connect to Redis at %s:%d: %s", ca->url.host,
                              ca->url.port, ac->errstr);
        cache_async_down(ca); /* hiredis frees the context */
        return;
    }

    char dbbuf[16];
    const char *argv[2][3];
    int argc[2];
    int n = cache_handshake(&ca->url, dbbuf, argv, argc);
    if (n == 0) {
        cache_async_ready(ca);
        return;
    }
    ca->state = CACHE_ASYNC_HANDSHAKE;
    ca->handshake_left = n;
    for (int i = 0; i < n; i++)
        (void)redisAsyncCommandArgv(ca->ac, cache_async_handshake_cb, ca, argc[i], argv[i], NULL);
}

static void cache_async_disconnect_cb(const redisAsyncContext *ac, int status)
{
    cache_async_t *ca = ac->data;
    if (status != REDIS_OK)
        cache_async_set_error(ca, "connection to Redis at %s:%d lost: %s", ca->url.host,
                              ca->url.port, ac->errstr);
    cache_async_down(ca);
}

static void cache_async_start(cache_async_t *ca)
{
    /* Note: a host name is resolved here, blocking the loop; use an address in production. */
    redisAsyncContext *ac = redisAsyncConnect(ca->url.host, ca->url.port);
    if (!ac) {
        cache_async_set_error(ca, "out of memory connecting to Redis");
        goto fail;
    }
    if (ac->err) {
        cache_async_set_error(ca, "cannot connect to Redis at %s:%d: %s", ca->url.host,
                              ca->url.port, ac->errstr);
        goto fail;
    }
    ac->data = ca;
    if (redisLibeventAttach(ac, ca->base) != REDIS_OK) {
        cache_async_set_error(ca, "cannot attach the Redis connection to the event loop");
        goto fail;
    }
    redisAsyncSetConnectCallback(ac, cache_async_connect_cb);
    redisAsyncSetDisconnectCallback(ac, cache_async_disconnect_cb);
    ca->ac = ac;
    ca->state = CACHE_ASYNC_CONNECTING;
    struct timeval tv = cache_tv(ca->timeout_ms);
    evtimer_add(ca->connect, &tv);
    return;

fail:
    if (ac)
        redisAsyncFree(ac);
    cache_async_down(ca);
}

static void cache_async_retry_cb(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    cache_async_start(arg);
}

/* Connecting or the handshake took too long (a black-holed address, a hung server). */
static void cache_async_connect_timeout_cb(evutil_socket_t fd, short what, void *arg)
{
    cache_async_t *ca = arg;
    (void)fd;
    (void)what;
    cache_async_set_error(ca, "connecting to Redis at %s:%d timed out after %u ms", ca->url.host,
                          ca->url.port, ca->timeout_ms);
    redisAsyncContext *ac = ca->ac;
    ca->ac = NULL;
    if (ac)
        redisAsyncFree(ac); /* may call the disconnect callback */
    cache_async_down(ca);
}

int cache_async_new(struct event_base *base, const char *url, unsigned timeout_ms,
                    cache_async_t **ret_ca)
{
    if (!base || timeout_ms == 0)
        return -EINVAL;
    cache_async_t *ca = calloc(1, sizeof(*ca));
    if (!ca)
        return -ENOMEM;
    int r = cache_url_parse(url, &ca->url, NULL, 0);
    if (r < 0)
        goto fail;
    r = -ENOMEM;
    ca->base = base;
    ca->timeout_ms = timeout_ms;
    ca->backoff_ms = CACHE_BACKOFF_MIN_MS;
    ca->retry = evtimer_new(base, cache_async_retry_cb, ca);
    ca->connect = evtimer_new(base, cache_async_connect_timeout_cb, ca);
    if (!ca->retry || !ca->connect)
        goto fail;

    cache_async_start(ca);
    *ret_ca = ca;
    return 0;

fail:
    cache_async_free(ca);
    return r;
}

void cache_async_free(cache_async_t *ca)
{
    if (!ca)
        return;
    ca->freeing = true;
    while (ca->live)
        cache_req_finish(ca->live, -ECANCELED, NULL);
    if (ca->ac) {
        /* Hands every request back through cache_async_reply_cb(), which frees them now. */
        redisAsyncContext *ac = ca->ac;
        ca->ac = NULL;
        redisAsyncFree(ac);
    }
    if (ca->retry)
        event_free(ca->retry);
    if (ca->connect)
        event_free(ca->connect);
    cache_url_done(&ca->url);
    free(ca);
}

bool cache_async_connected(const cache_async_t *ca)
{
    return ca->state == CACHE_ASYNC_READY;
}

const char *cache_async_errmsg(const cache_async_t *ca)
{
    return ca->errmsg;
}

static void cache_async_reply_cb(redisAsyncContext *ac, void *r, void *privdata)
{
    cache_req_t *req = privdata;
    redisReply *reply = r;
    (void)ac;

    if (!req->done) {
        int err = 0;
        if (!reply)
            err = req->ca->freeing ? -ECANCELED : -ECONNRESET;
        else if (reply->type == REDIS_REPLY_ERROR)
            err = cache_reply_errno(reply->str);
        cache_req_finish(req, err, reply);
    }
    /* A reply to a request that already timed out is dropped here: it is the only safe point,
     * since hiredis matches replies to requests by order. */
    free(req);
}

static void cache_async_timeout_cb(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    cache_req_finish(arg, -ETIMEDOUT, NULL);
}

int cache_async_command(cache_async_t *ca, int argc, const char *const *argv, const size_t *argvlen,
                        unsigned timeout_ms, cache_async_cb cb, void *opaque)
{
    if (ca->freeing)
        return -ECANCELED;
    if (argc < 1 || !cb)
        return -EINVAL;
    if (ca->state != CACHE_ASYNC_READY)
        return -ECONNREFUSED;

    cache_req_t *req = calloc(1, sizeof(*req));
    if (!req)
        return -ENOMEM;
    *req = (cache_req_t){.ca = ca, .cb = cb, .opaque = opaque};
    req->timer = evtimer_new(ca->base, cache_async_timeout_cb, req);
    if (!req->timer)
        goto fail;
    if (redisAsyncCommandArgv(ca->ac, cache_async_reply_cb, req, argc, (const char **)argv,
                              argvlen) != REDIS_OK)
        goto fail;

    struct timeval tv = cache_tv(timeout_ms ? timeout_ms : ca->timeout_ms);
    evtimer_add(req->timer, &tv);
    req->next = ca->live;
    if (ca->live)
        ca->live->prev = req;
    ca->live = req;
    return 0;

fail:
    if (req->timer)
        event_free(req->timer);
    free(req);
    /* hiredis refuses commands only when out of memory or while the context is closing. */
    return ca->ac && ca->ac->err ? -ECONNREFUSED : -ENOMEM;
}
