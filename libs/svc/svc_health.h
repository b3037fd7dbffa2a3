/* svc_health.h: the small HTTP side port of consumer daemons.
 *
 * Serves, on its own thread and event loop:
 *   GET /healthz  200 {"status":"ok"} while the process runs its loop
 *   GET /readyz   200 when every registered check is ok, else 503; the body lists the checks:
 *                 {"status":"ready","checks":{"kafka":true,"db":true}} (status "degraded", still
 *                 200, when only checks registered with svc_health_note() fail)
 *   GET /metrics  the registry in Prometheus text format
 * Anything else is 404 application/problem+json.
 */
#pragma once

#include <stdbool.h>

#include "svc_metrics.h"

typedef struct svc_health svc_health_t;

/**
 * Binds @addr:@port (port 0 picks a free one, see svc_health_port()) and starts the server
 * thread. @metrics is borrowed and must outlive the server. 0 or -errno.
 */
int svc_health_new(const char *addr, int port, svc_metrics_t *metrics, svc_health_t **ret_health);

/** The port actually bound. */
int svc_health_port(const svc_health_t *health);

/** Sets (registering it on first use) a named readiness check. Thread-safe. */
void svc_health_set(svc_health_t *health, const char *check, bool ok);

/** Like svc_health_set() for a dependency the daemon works without (its Redis aggregates):
 *  listed in /readyz's checks, and a failing one makes the status "degraded", still 200. */
void svc_health_note(svc_health_t *health, const char *check, bool ok);

/** True when every registered check is ok (and at least one is registered). */
bool svc_health_ready(svc_health_t *health);

/** Stops the thread and frees. Accepts NULL. */
void svc_health_free(svc_health_t *health);
