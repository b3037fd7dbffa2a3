/* order_counts.c: see order_counts.h. */
#include "order_counts.h"

#include <errno.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cache_agg.h"
#include "order_machine.h"
#include "order_store.h"
#include "svc_log.h"
#include "svc_util.h"

#define COUNTS_RETRY_MS 2000
#define COUNTS_MARKS    1024 /* organizations remembered one by one; beyond, recount all */
#define COUNTS_GEN_KEY  "sb:agg:orders-gen"

struct order_counts {
    cache_t *cache;
    db_t *db;
    svc_health_t *health;
    svc_metric_t *m_failures;
    char (*marked)[37];
    size_t nmarked;
    bool all; /* recount every organization */
    bool down;
    int64_t retry_ms;
};

/* KEYS: the hash, the generations hash, the rebuild lock. ARGV: org id, generation, then
 * status/count pairs. */
static const char counts_script[] = "if redis.call('EXISTS', KEYS[3]) == 1 then return 0 end\n"
                                    "local g = tonumber(redis.call('HGET', KEYS[2], ARGV[1]))\n"
                                    "if g and g > tonumber(ARGV[2]) then return 0 end\n"
                                    "redis.call('HSET', KEYS[2], ARGV[1], ARGV[2])\n"
                                    "redis.call('HSET', KEYS[1], unpack(ARGV, 3))\n"
                                    "return 1\n";

int order_counts_new(cache_t *cache, db_t *db, svc_health_t *health, svc_metrics_t *metrics,
                     order_counts_t **ret_counts)
{
    order_counts_t *oc = calloc(1, sizeof(*oc));
    if (!oc || !(oc->marked = calloc(COUNTS_MARKS, sizeof(*oc->marked))) ||
        !(oc->m_failures = svc_metrics_counter(metrics, "sb_orders_redis_failures_total",
                                               "Attempts to write the Redis order counts that "
                                               "failed",
                                               NULL))) {
        order_counts_free(oc);
        return -ENOMEM;
    }
    oc->cache = cache;
    oc->db = db;
    oc->health = health;
    oc->all = true;
    svc_health_note(health, "redis", cache_connected(cache));
    *ret_counts = oc;
    return 0;
}

void order_counts_free(order_counts_t *oc)
{
    if (!oc)
        return;
    free(oc->marked);
    free(oc);
}

void order_counts_mark(order_counts_t *oc, const char *org_id)
{
    if (oc->all)
        return;
    for (size_t i = 0; i < oc->nmarked; i++)
        if (!strcmp(oc->marked[i], org_id))
            return;
    if (oc->nmarked == COUNTS_MARKS) {
        oc->all = true;
        oc->nmarked = 0;
        return;
    }
    memcpy(oc->marked[oc->nmarked++], org_id, 37);
}

/* Appends the EVAL of one organization's counts (@counts indexed by status). */
static int counts_append(order_counts_t *oc, const char *org_id, const char *generation,
                         const long long *counts)
{
    char key[CACHE_AGG_KEY_MAX], values[ORDER_NSTATUS][24];
    const char *argv[8 + 2 * ORDER_NSTATUS] = {
        "EVAL", counts_script, "3", key, COUNTS_GEN_KEY, CACHE_AGG_LOCK_KEY, org_id, generation,
    };

    if (cache_agg_key_orders(key, sizeof(key), org_id) < 0)
        return -EINVAL;
    for (int s = 0; s < ORDER_NSTATUS; s++) {
        snprintf(values[s], sizeof(values[s]), "%lld", counts[s]);
        argv[8 + 2 * s] = order_status_name((order_status_t)s);
        argv[9 + 2 * s] = values[s];
    }
    return cache_pipeline_append(oc->cache, 8 + 2 * ORDER_NSTATUS, argv, NULL);
}

void order_counts_flush(order_counts_t *oc)
{
    PGresult *res = NULL;
    char *orgs = NULL;
    int r;

    if (!oc->all && oc->nmarked == 0)
        return;
    if (oc->down && svc_now_ms() < oc->retry_ms)
        return;
    if (!oc->all) {
        if (!(orgs = malloc(oc->nmarked * 37 + 3)))
            return;
        size_t len = (size_t)sprintf(orgs, "{");
        for (size_t i = 0; i < oc->nmarked; i++)
            len += (size_t)sprintf(orgs + len, "%s%s", i ? "," : "", oc->marked[i]);
        strcpy(orgs + len, "}");
    }
    r = order_store_counts(oc->db, orgs, &res);
    free(orgs);
    if (r < 0)
        return; /* PostgreSQL's state is the batch's business; the marks wait */

    /* Rows come grouped by organization: one EVAL per group. */
    long long counts[ORDER_NSTATUS] = {0};
    for (int i = 0, n = PQntuples(res); i < n && r == 0; i++) {
        order_status_t s;
        if (!PQgetisnull(res, i, 2) && order_status_parse(PQgetvalue(res, i, 2), &s) == 0)
            counts[s] = strtoll(PQgetvalue(res, i, 3), NULL, 10);
        if (i + 1 == n || strcmp(PQgetvalue(res, i, 0), PQgetvalue(res, i + 1, 0)) != 0) {
            r = counts_append(oc, PQgetvalue(res, i, 0), PQgetvalue(res, i, 1), counts);
            memset(counts, 0, sizeof(counts));
        }
    }
    PQclear(res);
    if (r == 0)
        r = cache_pipeline_run(oc->cache);
    else
        cache_pipeline_clear(oc->cache);
    if (r != 0) {
        svc_metric_inc(oc->m_failures);
        if (!oc->down)
            log_warn("Redis order counts not written (%s); orders go on, counts follow later",
                     r < 0 ? strerror(-r) : cache_errmsg(oc->cache));
        oc->down = true;
        oc->retry_ms = svc_now_ms() + COUNTS_RETRY_MS;
        svc_health_note(oc->health, "redis", false);
        return;
    }
    if (oc->down)
        log_info("Redis order counts are written again");
    oc->down = false;
    oc->all = false;
    oc->nmarked = 0;
    svc_health_note(oc->health, "redis", true);
}
