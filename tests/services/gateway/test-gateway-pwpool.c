/* argon2id jobs run on worker threads and report back on the submitting loop's thread. */
#include <criterion/criterion.h>
#include <errno.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include <event2/event.h>
#include <event2/thread.h>

#include "gateway.h"

typedef struct result {
    int calls;
    int rc;
    char *phc;
    pthread_t thread;
    struct event_base *base;
    int want; /* leave the loop after this many callbacks */
    int *done;
} result_t;

static void on_done(int rc, char *phc, void *arg)
{
    result_t *res = arg;

    res->calls++;
    res->rc = rc;
    res->phc = phc;
    res->thread = pthread_self();
    if (++*res->done == res->want)
        event_base_loopbreak(res->base);
}

static void never(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    (void)arg;
}

/* A base kept alive by a far timer, as a gateway loop is by its listener: an event that is only
 * ever activated from another thread does not count as pending. */
static struct event_base *base_new(struct event **ret_keep)
{
    struct timeval tv = {.tv_sec = 3600};
    struct event_base *base;

    cr_assert_eq(evthread_use_pthreads(), 0);
    base = event_base_new();
    cr_assert_not_null(base);
    *ret_keep = evtimer_new(base, never, NULL);
    evtimer_add(*ret_keep, &tv);
    return base;
}

Test(pwpool, hashes_and_verifies_on_workers_and_answers_on_the_loop)
{
    struct event *keep;
    struct event_base *base = base_new(&keep);
    gw_pwpool_t *pool;
    int done = 0;
    result_t h = {.base = base, .want = 1, .done = &done};
    result_t ok = {.base = base, .want = 3, .done = &done};
    result_t bad = {.base = base, .want = 3, .done = &done};

    cr_assert_eq(gw_pwpool_new(2, 8, &pool), 0);
    cr_assert_eq(gw_pwpool_submit(pool, base, "twelve chars!", NULL, on_done, &h), 0);
    event_base_dispatch(base);
    cr_assert_eq(h.calls, 1);
    cr_assert_eq(h.rc, 0);
    cr_assert(pthread_equal(h.thread, pthread_self()), "the callback runs on the loop's thread");
    cr_assert_not_null(h.phc);
    cr_assert_eq(strncmp(h.phc, "$argon2id$", 10), 0);

    cr_assert_eq(gw_pwpool_submit(pool, base, "twelve chars!", h.phc, on_done, &ok), 0);
    cr_assert_eq(gw_pwpool_submit(pool, base, "twelve chars?", h.phc, on_done, &bad), 0);
    event_base_dispatch(base);
    cr_assert_eq(ok.calls, 1);
    cr_assert_eq(ok.rc, 0);
    cr_assert_null(ok.phc);
    cr_assert_eq(bad.calls, 1);
    cr_assert_eq(bad.rc, -EACCES);

    free(h.phc);
    gw_pwpool_free(pool);
    event_free(keep);
    event_base_free(base);
}

Test(pwpool, a_full_queue_refuses_and_free_cancels_what_waits)
{
    struct event *keep;
    struct event_base *base = base_new(&keep);
    gw_pwpool_t *pool;
    int done = 0, accepted = 0, refused = 0;
    result_t res[8];

    cr_assert_eq(gw_pwpool_new(1, 2, &pool), 0);
    for (int i = 0; i < 8; i++) {
        res[i] = (result_t){.base = base, .want = -1, .done = &done};
        int rc = gw_pwpool_submit(pool, base, "twelve chars!", NULL, on_done, &res[i]);

        if (rc == 0)
            accepted++;
        else if (rc == -EAGAIN)
            refused++;
    }
    /* One worker takes a job at a time and at most two wait: most of the eight are refused. */
    cr_assert_geq(accepted, 2);
    cr_assert_leq(accepted, 3 + 1);
    cr_assert_eq(accepted + refused, 8);

    gw_pwpool_free(pool);
    event_base_loop(base, EVLOOP_NONBLOCK);
    cr_assert_eq(done, accepted, "every accepted job reports, run or cancelled");
    for (int i = 0; i < 8; i++) {
        if (res[i].calls && res[i].rc == 0)
            free(res[i].phc);
        else if (res[i].calls)
            cr_assert_eq(res[i].rc, -ECANCELED);
    }
    event_free(keep);
    event_base_free(base);
}
