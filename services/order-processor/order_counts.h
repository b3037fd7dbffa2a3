/* order_counts.h: the dashboard counts sb:orders:<org_id> (a hash: order status -> count).
 *
 * They are recomputed from PostgreSQL for the organizations a committed batch touched, never
 * incremented, so a replayed command cannot skew them. The whole hash (all eight statuses, zeros
 * included) is written by a Lua script with the generation the counts were read at
 * (order_org_generation): an older generation never overwrites a newer one, so two processors
 * finishing in either order leave the newest counts. While `sbctl aggregates rebuild` holds its
 * lock (CACHE_AGG_LOCK_KEY) the script writes nothing: the rebuild reads PostgreSQL after taking
 * the lock, so its counts include every batch committed before.
 *
 * Redis being down never holds orders back: the organizations stay marked and are written by a
 * later flush (at most every COUNTS_RETRY_MS while Redis fails); the "redis" readiness check
 * says whether the last attempt worked.
 */
#pragma once

#include "cache.h"
#include "db.h"
#include "svc_health.h"
#include "svc_metrics.h"

typedef struct order_counts order_counts_t;

/** Creates the writer over @cache, @db and @health (borrowed; they must outlive it), with every
 *  organization marked: a crash may have left any count stale. 0 or -ENOMEM. */
int order_counts_new(cache_t *cache, db_t *db, svc_health_t *health, svc_metrics_t *metrics,
                     order_counts_t **ret_counts);

/** Frees. Accepts NULL. */
void order_counts_free(order_counts_t *oc);

/** Marks an organization whose orders changed in a committed transaction. */
void order_counts_mark(order_counts_t *oc, const char *org_id);

/** Recounts the marked organizations in PostgreSQL and writes them to Redis; what cannot be
 *  written stays marked. Logs an outage once, and its end. */
void order_counts_flush(order_counts_t *oc);
