/* ratelimit.c: token buckets per caller (API key prefix or user id), shared by every loop.
 *
 * A hash table split into stripes, each with its own lock, so that loops rarely wait for each
 * other. Tokens are kept in thousandths to stay in integers. A bucket that has refilled
 * completely holds no information, so those are dropped when a stripe fills up.
 */
#include <errno.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "gateway.h"

#define RL_STRIPES     16
#define RL_BUCKETS     1024 /* per stripe */
#define RL_MAX_PER_STR 8192 /* buckets per stripe before idle ones are swept */

typedef struct rl_entry {
    struct rl_entry *next;
    int64_t milli_tokens;
    int64_t stamp_ms;
    char key[64];
} rl_entry_t;

typedef struct rl_stripe {
    pthread_mutex_t lock;
    size_t count;
    rl_entry_t *buckets[RL_BUCKETS];
} rl_stripe_t;

struct gw_ratelimit {
    rl_stripe_t stripes[RL_STRIPES];
};

int gw_ratelimit_new(gw_ratelimit_t **ret)
{
    gw_ratelimit_t *rl = calloc(1, sizeof(*rl));

    if (!rl)
        return -ENOMEM;
    for (int i = 0; i < RL_STRIPES; i++)
        pthread_mutex_init(&rl->stripes[i].lock, NULL);
    *ret = rl;
    return 0;
}

void gw_ratelimit_free(gw_ratelimit_t *rl)
{
    if (!rl)
        return;
    for (int i = 0; i < RL_STRIPES; i++) {
        for (int b = 0; b < RL_BUCKETS; b++)
            for (rl_entry_t *e = rl->stripes[i].buckets[b], *next; e; e = next) {
                next = e->next;
                free(e);
            }
        pthread_mutex_destroy(&rl->stripes[i].lock);
    }
    free(rl);
}

static uint64_t rl_hash(const char *s)
{
    uint64_t h = 1469598103934665603ull; /* FNV-1a */

    for (; *s; s++)
        h = (h ^ (unsigned char)*s) * 1099511628211ull;
    return h;
}

/* Drops the stripe's buckets that have refilled completely: they hold no information. */
static void rl_sweep(rl_stripe_t *st, int64_t now_ms, int64_t rate, int64_t burst)
{
    for (int b = 0; b < RL_BUCKETS; b++)
        for (rl_entry_t **pp = &st->buckets[b]; *pp;) {
            rl_entry_t *e = *pp;

            if (e->milli_tokens + (now_ms - e->stamp_ms) * rate >= burst * 1000) {
                *pp = e->next;
                free(e);
                st->count--;
            } else {
                pp = &e->next;
            }
        }
}

int gw_ratelimit_take(gw_ratelimit_t *rl, const char *key, int64_t rate, int64_t burst,
                      int64_t now_ms, int64_t *ret_wait_ms)
{
    uint64_t h = rl_hash(key);
    rl_stripe_t *st = &rl->stripes[h % RL_STRIPES];
    rl_entry_t *e;
    int rc = 0;

    if (rate <= 0)
        return 0;
    if (burst < 1)
        burst = 1;
    pthread_mutex_lock(&st->lock);
    for (e = st->buckets[(h / RL_STRIPES) % RL_BUCKETS]; e; e = e->next)
        if (strcmp(e->key, key) == 0)
            break;
    if (!e) {
        if (st->count >= RL_MAX_PER_STR)
            rl_sweep(st, now_ms, rate, burst);
        /* More distinct callers active at once than the table holds (over 100,000), or out of
         * memory: let the request through untracked rather than refuse callers at random. */
        if (st->count >= RL_MAX_PER_STR || !(e = calloc(1, sizeof(*e)))) {
            pthread_mutex_unlock(&st->lock);
            return 0;
        }
        snprintf(e->key, sizeof(e->key), "%s", key);
        e->milli_tokens = burst * 1000;
        e->stamp_ms = now_ms;
        e->next = st->buckets[(h / RL_STRIPES) % RL_BUCKETS];
        st->buckets[(h / RL_STRIPES) % RL_BUCKETS] = e;
        st->count++;
    }
    if (now_ms > e->stamp_ms) {
        e->milli_tokens += (now_ms - e->stamp_ms) * rate; /* rate per s = rate per ms x 1000 */
        if (e->milli_tokens > burst * 1000)
            e->milli_tokens = burst * 1000;
        e->stamp_ms = now_ms;
    }
    if (e->milli_tokens >= 1000) {
        e->milli_tokens -= 1000;
    } else {
        *ret_wait_ms = (1000 - e->milli_tokens + rate - 1) / rate;
        rc = -EAGAIN;
    }
    pthread_mutex_unlock(&st->lock);
    return rc;
}
