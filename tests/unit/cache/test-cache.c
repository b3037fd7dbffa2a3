/* test-cache.c: libs/cache against a real redis-server.
 *
 * Plain cases use SB_TEST_REDIS_URL when scripts/test provides it, else a server started here.
 * Cases that kill, restart or freeze (SIGSTOP) the server always start their own on a free port.
 */
#include <criterion/criterion.h>
#include <errno.h>
#include <event2/event.h>
#include <netinet/in.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "cache.h"
#include "redis_test.h"

/* The shared server's URL, or a private server's. */
static const char *test_url(server_t *own)
{
    const char *url = getenv("SB_TEST_REDIS_URL");
    if (url && *url)
        return url;
    server_start(own, 0, NULL, NULL);
    return own->url;
}

/* Keys unique to this process, so parallel runs on a shared server do not collide. */
static const char *key(const char *name)
{
    static char buf[8][96];
    static int i;
    i = (i + 1) % 8;
    snprintf(buf[i], sizeof(buf[i]), "sb-test-cache:%d:%s", (int)getpid(), name);
    return buf[i];
}

static cache_t *new_cache(const char *url, unsigned timeout_ms)
{
    cache_t *c = NULL;
    cr_assert_eq(cache_new(url, timeout_ms, &c), 0);
    cr_assert(cache_connected(c), "cannot connect to %s: %s", url, cache_errmsg(c));
    return c;
}

static int cmd(cache_t *c, redisReply **ret, const char *a0, const char *a1, const char *a2)
{
    const char *argv[] = {a0, a1, a2};
    return cache_command(c, a2 ? 3 : a1 ? 2 : 1, argv, NULL, ret);
}

/* ---- URL ------------------------------------------------------------------------------------ */

Test(cache, url_parsing)
{
    char err[256];
    cr_assert_eq(cache_url_check("redis://127.0.0.1:6379/0", err, sizeof(err)), 0);
    cr_assert_eq(cache_url_check("redis://localhost", err, sizeof(err)), 0);
    cr_assert_eq(cache_url_check("redis://[::1]:7000/3", err, sizeof(err)), 0);
    cr_assert_eq(cache_url_check("redis://user:p%40ss@h:1/15", err, sizeof(err)), 0);

    cr_assert_eq(cache_url_check("http://127.0.0.1:6379", err, sizeof(err)), -EINVAL);
    cr_assert(strstr(err, "redis://"), "%s", err);
    cr_assert_eq(cache_url_check("rediss://h:6379", err, sizeof(err)), -EINVAL);
    cr_assert(strstr(err, "TLS"), "%s", err);
    cr_assert_eq(cache_url_check("redis://h:0", err, sizeof(err)), -EINVAL);
    cr_assert(strstr(err, "port"), "%s", err);
    cr_assert_eq(cache_url_check("redis://h:65536", err, sizeof(err)), -EINVAL);
    cr_assert_eq(cache_url_check("redis://h:12ab", err, sizeof(err)), -EINVAL);
    cr_assert_eq(cache_url_check("redis://:6379", err, sizeof(err)), -EINVAL);
    cr_assert(strstr(err, "host"), "%s", err);
    cr_assert_eq(cache_url_check("redis://h:6379/x", err, sizeof(err)), -EINVAL);
    cr_assert(strstr(err, "database"), "%s", err);
    cr_assert_eq(cache_url_check("redis://h/0?timeout=1", err, sizeof(err)), -EINVAL);

    cache_t *c = NULL;
    cr_assert_eq(cache_new("redis://h:99999", 100, &c), -EINVAL);
    cr_assert_null(c);
    cr_assert_eq(cache_new("redis://127.0.0.1:1", 0, &c), -EINVAL);
}

Test(cache, password_never_in_url_errors)
{
    const char *bad[] = {"redis://:hunter2@h:99999/0", "redis://hunter2@h:6379",
                         "redis://:hunter2%zz@h", "redis://u:hunter2@:6379",
                         "redis://:hunter2@h:6379/db"};
    for (size_t i = 0; i < sizeof(bad) / sizeof(*bad); i++) {
        char err[256] = "";
        cr_assert_eq(cache_url_check(bad[i], err, sizeof(err)), -EINVAL, "%zu", i);
        cr_assert(err[0], "no message for case %zu", i);
        cr_assert_null(strstr(err, "hunter2"), "password leaked: %s", err);
    }
}

Test(cache, auth_with_password_and_no_leak_on_rejection)
{
    server_t s = {0};
    server_start(&s, 0, "--requirepass", "Sup3rSecret");
    char url[160];

    snprintf(url, sizeof(url), "redis://:Sup3rSecret@127.0.0.1:%d/2", s.port);
    cache_t *c = new_cache(url, 2000);
    cr_assert_eq(cmd(c, NULL, "SET", "k", "v"), 0, "%s", cache_errmsg(c));
    cache_free(c);

    snprintf(url, sizeof(url), "redis://:WrongHorse@127.0.0.1:%d/0", s.port);
    cr_assert_eq(cache_new(url, 2000, &c), 0);
    cr_assert_not(cache_connected(c));
    cr_assert_eq(cache_connect(c), -EACCES);
    cr_assert(cache_errmsg(c)[0]);
    cr_assert_null(strstr(cache_errmsg(c), "WrongHorse"), "%s", cache_errmsg(c));
    cr_assert_eq(cmd(c, NULL, "PING", NULL, NULL), -EACCES);
    cache_free(c);
    server_kill(&s);
}

/* ---- Synchronous client ---------------------------------------------------------------------- */

Test(cache, set_get_round_trip)
{
    server_t s = {0};
    cache_t *c = new_cache(test_url(&s), 2000);
    redisReply *r = NULL;

    cr_assert_eq(cmd(c, NULL, "SET", key("rt"), "21.5"), 0, "%s", cache_errmsg(c));
    cr_assert_eq(cmd(c, &r, "GET", key("rt"), NULL), 0, "%s", cache_errmsg(c));
    cr_assert_eq(r->type, REDIS_REPLY_STRING);
    cr_assert_str_eq(r->str, "21.5");
    freeReplyObject(r);

    cr_assert_eq(cmd(c, &r, "GET", key("missing"), NULL), 0);
    cr_assert_eq(r->type, REDIS_REPLY_NIL);
    freeReplyObject(r);

    /* A server error reply is -EINVAL with the server's reason. */
    cr_assert_eq(cmd(c, NULL, "HINCRBY", key("rt"), "f"), -EINVAL);
    cr_assert(strstr(cache_errmsg(c), "wrong number of arguments"), "%s", cache_errmsg(c));
    cr_assert_eq(cmd(c, NULL, "DEL", key("rt"), NULL), 0, "connection still usable");
    cache_free(c);
    server_kill(&s);
}

Test(cache, pipeline_of_10000_hincrby)
{
    server_t s = {0};
    cache_t *c = new_cache(test_url(&s), 5000);
    const char *h = key("agg");
    cr_assert_eq(cmd(c, NULL, "DEL", h, NULL), 0);

    for (int i = 0; i < 10000; i++) {
        const char *argv[] = {"HINCRBY", h, "count", "1"};
        cr_assert_eq(cache_pipeline_append(c, 4, argv, NULL), 0);
    }
    const char *exp[] = {"EXPIRE", h, "600"};
    cr_assert_eq(cache_pipeline_append(c, 3, exp, NULL), 0);
    cr_assert_eq(cache_pipeline_len(c), 10001);
    cr_assert_eq(cache_pipeline_run(c), 0, "%s", cache_errmsg(c));
    cr_assert_eq(cache_pipeline_len(c), 0);

    redisReply *r = NULL;
    cr_assert_eq(cmd(c, &r, "HGET", h, "count"), 0);
    cr_assert_str_eq(r->str, "10000");
    freeReplyObject(r);

    /* Failed commands are counted, the others still run. */
    const char *good[] = {"HSET", h, "last", "7"};
    const char *wrong[] = {"INCR", h}; /* wrong type: h is a hash */
    cr_assert_eq(cache_pipeline_append(c, 4, good, NULL), 0);
    cr_assert_eq(cache_pipeline_append(c, 2, wrong, NULL), 0);
    cr_assert_eq(cache_pipeline_append(c, 2, wrong, NULL), 0);
    cr_assert_eq(cache_pipeline_run(c), 2);
    cr_assert(strstr(cache_errmsg(c), "WRONGTYPE"), "%s", cache_errmsg(c));
    cr_assert_eq(cmd(c, &r, "HGET", h, "last"), 0);
    cr_assert_str_eq(r->str, "7");
    freeReplyObject(r);

    cr_assert_eq(cache_pipeline_run(c), 0, "empty pipeline");
    cmd(c, NULL, "DEL", h, NULL);
    cache_free(c);
    server_kill(&s);
}

Test(cache, binary_safe_values)
{
    server_t s = {0};
    cache_t *c = new_cache(test_url(&s), 2000);
    const char val[] = {'a', '\0', 'b', '\r', '\n', '\0', (char)0xff};
    const char *k = key("bin");

    const char *argv[] = {"SET", k, val};
    const size_t lens[] = {3, strlen(k), sizeof(val)};
    cr_assert_eq(cache_command(c, 3, argv, lens, NULL), 0, "%s", cache_errmsg(c));

    redisReply *r = NULL;
    cr_assert_eq(cmd(c, &r, "GET", k, NULL), 0);
    cr_assert_eq(r->len, sizeof(val));
    cr_assert_eq(memcmp(r->str, val, sizeof(val)), 0);
    freeReplyObject(r);

    /* The same through the pipeline, with a NUL in the field name too. */
    const char *hargv[] = {"HSET", k, "f\0x", val};
    const size_t hlens[] = {4, strlen(k), 3, sizeof(val)};
    cr_assert_eq(cmd(c, NULL, "DEL", k, NULL), 0);
    cr_assert_eq(cache_pipeline_append(c, 4, hargv, hlens), 0);
    cr_assert_eq(cache_pipeline_run(c), 0, "%s", cache_errmsg(c));
    const char *gargv[] = {"HGET", k, "f\0x"};
    const size_t glens[] = {4, strlen(k), 3};
    cr_assert_eq(cache_command(c, 3, gargv, glens, &r), 0);
    cr_assert_eq(r->len, sizeof(val));
    cr_assert_eq(memcmp(r->str, val, sizeof(val)), 0);
    freeReplyObject(r);

    cmd(c, NULL, "DEL", k, NULL);
    cache_free(c);
    server_kill(&s);
}

Test(cache, server_killed_then_restarted)
{
    server_t s = {0};
    server_start(&s, 0, NULL, NULL);
    cache_t *c = new_cache(s.url, 2000);
    cr_assert_eq(cmd(c, NULL, "SET", "k", "1"), 0);

    int port = s.port;
    server_kill(&s);
    int r = cmd(c, NULL, "GET", "k", NULL);
    cr_assert(r == -ECONNRESET || r == -ECONNREFUSED, "got %d (%s)", r, cache_errmsg(c));
    cr_assert(strstr(cache_errmsg(c), "127.0.0.1"), "%s", cache_errmsg(c));
    cr_assert_eq(cmd(c, NULL, "PING", NULL, NULL), -ECONNREFUSED, "still down");
    cr_assert_eq(cache_pipeline_append(c, 1, (const char *[]){"PING"}, NULL), 0);
    cr_assert_eq(cache_pipeline_run(c), -ECONNREFUSED);

    server_start(&s, port, NULL, NULL);
    cr_assert_eq(cmd(c, NULL, "SET", "k", "2"), 0, "reconnects: %s", cache_errmsg(c));

    /* A connection that died while idle is replaced before the next command is sent. */
    server_kill(&s);
    server_start(&s, port, NULL, NULL);
    redisReply *rep = NULL;
    cr_assert_eq(cmd(c, &rep, "ECHO", "back", NULL), 0, "%s", cache_errmsg(c));
    cr_assert_str_eq(rep->str, "back");
    freeReplyObject(rep);
    cache_free(c);
    server_kill(&s);
}

Test(cache, hung_server_times_out)
{
    server_t s = {0};
    server_start(&s, 0, NULL, NULL);
    cache_t *c = new_cache(s.url, 300);
    cr_assert_eq(cmd(c, NULL, "SET", "k", "v"), 0);

    kill(s.pid, SIGSTOP);
    long long t0 = now_ms();
    int r = cmd(c, NULL, "GET", "k", NULL);
    long long took = now_ms() - t0;
    kill(s.pid, SIGCONT);
    cr_assert_eq(r, -ETIMEDOUT, "got %d (%s)", r, cache_errmsg(c));
    cr_assert(took >= 250 && took < 3000, "took %lld ms", took);
    cr_assert(strstr(cache_errmsg(c), "did not answer"), "%s", cache_errmsg(c));

    /* The late reply to GET must not be taken as the answer to the next command. */
    redisReply *rep = NULL;
    cr_assert_eq(cmd(c, &rep, "ECHO", "fresh", NULL), 0, "%s", cache_errmsg(c));
    cr_assert_str_eq(rep->str, "fresh");
    freeReplyObject(rep);
    cache_free(c);
    server_kill(&s);
}

/* ---- Asynchronous client --------------------------------------------------------------------- */

static void tick_cb(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    (void)arg;
}

/* Runs @base until *@flag is true or @ms pass; a 10 ms tick keeps the loop returning. */
static bool loop_until(struct event_base *base, const bool *flag, const cache_async_t *ca,
                       bool want_connected, int ms)
{
    struct event *tick = event_new(base, -1, EV_PERSIST, tick_cb, NULL);
    struct timeval tv = {0, 10000};
    event_add(tick, &tv);
    long long deadline = now_ms() + ms;
    bool ok = false;
    while (now_ms() < deadline) {
        if ((flag && *flag) || (ca && cache_async_connected(ca) == want_connected)) {
            ok = true;
            break;
        }
        event_base_loop(base, EVLOOP_ONCE);
    }
    event_free(tick);
    return ok;
}

typedef struct result {
    int calls, err;
    long long integer, at_ms;
    char str[64];
    pthread_t thread;
    bool done;
} result_t;

static void on_result(int err, const redisReply *reply, void *opaque)
{
    result_t *res = opaque;
    res->calls++;
    res->err = err;
    res->at_ms = now_ms();
    res->thread = pthread_self();
    if (reply && reply->type == REDIS_REPLY_INTEGER)
        res->integer = reply->integer;
    if (reply && reply->str)
        snprintf(res->str, sizeof(res->str), "%s", reply->str);
    res->done = true;
}

static int acmd(cache_async_t *ca, result_t *res, unsigned timeout_ms, const char *a0,
                const char *a1)
{
    const char *argv[] = {a0, a1};
    *res = (result_t){0};
    return cache_async_command(ca, a1 ? 2 : 1, argv, NULL, timeout_ms, on_result, res);
}

typedef struct many {
    const char *url;
    int answered, bad_order, errors;
    bool all_done, submitting, sync_callback;
    pthread_t loop_thread, wrong_thread;
    bool wrong;
    const char *fail;
} many_t;

static void on_incr(int err, const redisReply *reply, void *opaque)
{
    many_t *m = opaque;
    if (m->submitting)
        m->sync_callback = true;
    if (!pthread_equal(pthread_self(), m->loop_thread))
        m->wrong = true;
    m->answered++;
    if (err || !reply || reply->integer != m->answered)
        m->errors++;
    if (m->answered == 1000)
        m->all_done = true;
}

/* Criterion's asserts must run on the test's thread, so the loop thread records failures. */
#define LOOP_CHECK(cond, msg) \
    do {                      \
        if (!(cond)) {        \
            m->fail = msg;    \
            goto out;         \
        }                     \
    } while (0)

static void *loop_thread(void *arg)
{
    many_t *m = arg;
    struct event_base *base = event_base_new();
    cache_async_t *ca = NULL;
    const char *k = key("incr");
    result_t del;

    m->loop_thread = pthread_self();
    LOOP_CHECK(cache_async_new(base, m->url, 2000, &ca) == 0, "cache_async_new failed");
    LOOP_CHECK(loop_until(base, NULL, ca, true, 5000), "no connection");
    LOOP_CHECK(acmd(ca, &del, 0, "DEL", k) == 0, "DEL refused");
    LOOP_CHECK(loop_until(base, &del.done, NULL, false, 5000), "DEL not answered");
    m->submitting = true;
    for (int i = 0; i < 1000; i++) {
        const char *argv[] = {"INCR", k};
        LOOP_CHECK(cache_async_command(ca, 2, argv, NULL, 5000, on_incr, m) == 0, "INCR refused");
    }
    m->submitting = false;
    LOOP_CHECK(loop_until(base, &m->all_done, NULL, false, 10000), "not all answered in 10 s");
    if (acmd(ca, &del, 0, "DEL", k) == 0)
        loop_until(base, &del.done, NULL, false, 5000);
out:
    cache_async_free(ca);
    event_base_free(base);
    return NULL;
}

Test(cache, async_1000_commands_answered_in_loop_thread)
{
    server_t s = {0};
    many_t m = {.url = test_url(&s)};
    pthread_t t;
    cr_assert_eq(pthread_create(&t, NULL, loop_thread, &m), 0);
    pthread_join(t, NULL);
    cr_assert_null(m.fail, "%s", m.fail);
    cr_assert_eq(m.answered, 1000);
    cr_assert_eq(m.errors, 0, "replies out of order or failed");
    cr_assert_not(m.sync_callback, "callback ran inside cache_async_command");
    cr_assert_not(m.wrong, "callback ran outside the loop thread");
    cr_assert_not(pthread_equal(m.loop_thread, pthread_self()));
    server_kill(&s);
}

Test(cache, async_fail_fast_while_down_then_reconnect)
{
    server_t s = {0};
    server_start(&s, 0, NULL, NULL);
    struct event_base *base = event_base_new();
    cache_async_t *ca = NULL;
    result_t res;

    cr_assert_eq(cache_async_new(base, s.url, 1000, &ca), 0);
    cr_assert_eq(acmd(ca, &res, 0, "PING", NULL), -ECONNREFUSED, "not connected yet");
    cr_assert(loop_until(base, NULL, ca, true, 5000), "%s", cache_async_errmsg(ca));
    cr_assert_eq(acmd(ca, &res, 0, "PING", NULL), 0);
    cr_assert(loop_until(base, &res.done, NULL, false, 5000));
    cr_assert_eq(res.err, 0);
    cr_assert_str_eq(res.str, "PONG");

    int port = s.port;
    server_kill(&s);
    cr_assert(loop_until(base, NULL, ca, false, 5000), "disconnect not noticed");
    cr_assert(cache_async_errmsg(ca)[0]);
    long long t0 = now_ms();
    /* Refused by the call itself, without waiting for any timeout. */
    cr_assert_eq(acmd(ca, &res, 0, "PING", NULL), -ECONNREFUSED);
    cr_assert_lt(now_ms() - t0, 1000);
    cr_assert_eq(res.calls, 0, "no callback after a refused command");

    server_start(&s, port, NULL, NULL);
    cr_assert(loop_until(base, NULL, ca, true, 10000), "no reconnect: %s", cache_async_errmsg(ca));
    cr_assert_eq(acmd(ca, &res, 0, "ECHO", "again"), 0);
    cr_assert(loop_until(base, &res.done, NULL, false, 5000));
    cr_assert_eq(res.err, 0);
    cr_assert_str_eq(res.str, "again");

    cache_async_free(ca);
    event_base_free(base);
    server_kill(&s);
}

Test(cache, async_per_command_timeout_and_late_reply_ignored)
{
    server_t s = {0};
    server_start(&s, 0, NULL, NULL);
    struct event_base *base = event_base_new();
    cache_async_t *ca = NULL;
    result_t res, slow;

    cr_assert_eq(cache_async_new(base, s.url, 1000, &ca), 0);
    cr_assert(loop_until(base, NULL, ca, true, 5000), "%s", cache_async_errmsg(ca));
    cr_assert_eq(acmd(ca, &res, 0, "SET", "k"), 0); /* wrong arity: an error reply */
    cr_assert(loop_until(base, &res.done, NULL, false, 5000));
    cr_assert_eq(res.err, -EINVAL);
    cr_assert(strstr(res.str, "wrong number"), "%s", res.str);

    kill(s.pid, SIGSTOP);
    long long t0 = now_ms();
    cr_assert_eq(acmd(ca, &slow, 200, "ECHO", "late"), 0);
    cr_assert(loop_until(base, &slow.done, NULL, false, 5000));
    cr_assert_eq(slow.err, -ETIMEDOUT);
    cr_assert(slow.at_ms - t0 >= 190 && slow.at_ms - t0 < 2000, "after %lld ms", slow.at_ms - t0);
    kill(s.pid, SIGCONT);

    /* The late "late" reply arrives first and must be dropped, not given to this command. */
    cr_assert_eq(acmd(ca, &res, 0, "ECHO", "fresh"), 0);
    cr_assert(loop_until(base, &res.done, NULL, false, 5000));
    cr_assert_eq(res.err, 0);
    cr_assert_str_eq(res.str, "fresh");
    cr_assert_eq(slow.calls, 1, "a timed-out command is reported once");

    cache_async_free(ca);
    event_base_free(base);
    server_kill(&s);
}

Test(cache, async_free_cancels_pending)
{
    server_t s = {0};
    server_start(&s, 0, NULL, NULL);
    struct event_base *base = event_base_new();
    cache_async_t *ca = NULL;
    result_t res[10], timed;

    cr_assert_eq(cache_async_new(base, s.url, 1000, &ca), 0);
    cr_assert(loop_until(base, NULL, ca, true, 5000), "%s", cache_async_errmsg(ca));
    kill(s.pid, SIGSTOP); /* nothing will be answered */
    cr_assert_eq(acmd(ca, &timed, 50, "PING", NULL), 0);
    cr_assert(loop_until(base, &timed.done, NULL, false, 5000));
    cr_assert_eq(timed.err, -ETIMEDOUT);
    for (int i = 0; i < 10; i++)
        cr_assert_eq(acmd(ca, &res[i], 5000, "PING", NULL), 0);
    event_base_loop(base, EVLOOP_NONBLOCK); /* let them reach the socket */

    cache_async_free(ca);
    for (int i = 0; i < 10; i++) {
        cr_assert_eq(res[i].calls, 1, "command %d", i);
        cr_assert_eq(res[i].err, -ECANCELED, "command %d", i);
    }
    cr_assert_eq(timed.calls, 1, "a timed-out command is not cancelled again");
    event_base_free(base);
    server_kill(&s);
}
