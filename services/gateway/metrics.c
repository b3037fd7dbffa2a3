/* metrics.c: the gateway's Prometheus series. */
#include <errno.h>
#include <stdio.h>

#include "gateway.h"

static const char *const route_names[GW_ROUTE_COUNT] = {
    [GW_ROUTE_INGEST] = "/sensors/data",
    [GW_ROUTE_HEALTHZ] = "/healthz",
    [GW_ROUTE_READYZ] = "/readyz",
    [GW_ROUTE_METRICS] = "/metrics",
    [GW_ROUTE_AUTH_REGISTER] = "/auth/register",
    [GW_ROUTE_AUTH_TOKEN] = "/auth/token",
    [GW_ROUTE_AUTH_ME] = "/auth/me",
    [GW_ROUTE_AUTH_REFRESH] = "/auth/refresh",
    [GW_ROUTE_AUTH_LOGOUT] = "/auth/logout",
    [GW_ROUTE_OTHER] = "other",
};

const char *gw_route_name(gw_route_t route)
{
    return route_names[route];
}

int gw_metrics_init(gw_metrics_t *m, svc_metrics_t *registry)
{
    char labels[64];

    m->registry = registry;
    for (int i = 0; i < GW_ROUTE_COUNT; i++) {
        snprintf(labels, sizeof(labels), "route=\"%s\"", route_names[i]);
        m->latency[i] =
            svc_metrics_histogram(registry, "sb_gateway_http_request_duration_seconds",
                                  "Time from the request's arrival to its answer, by route.",
                                  labels, svc_metrics_latency_bounds, svc_metrics_latency_nbounds);
        if (!m->latency[i])
            return -ENOMEM;
    }
    m->readings_accepted =
        svc_metrics_counter(registry, "sb_gateway_readings_accepted_total",
                            "Readings acknowledged by Kafka and answered with 202.", NULL);
    m->produce_failures = svc_metrics_counter(
        registry, "sb_gateway_produce_failures_total",
        "Ingest requests answered 503 because Kafka did not acknowledge every record.", NULL);
    m->key_cache_hits = svc_metrics_counter(registry, "sb_gateway_key_cache_hits_total",
                                            "API key lookups served from the cache.", NULL);
    m->key_cache_misses = svc_metrics_counter(registry, "sb_gateway_key_cache_misses_total",
                                              "API key lookups that went to PostgreSQL.", NULL);
    m->connections_open = svc_metrics_gauge(registry, "sb_gateway_connections_open",
                                            "Client connections currently open.", NULL);
    m->connections_rejected = svc_metrics_counter(
        registry, "sb_gateway_connections_rejected_total",
        "Connections refused with 503 because max_connections was reached.", NULL);
    if (!m->readings_accepted || !m->produce_failures || !m->key_cache_hits ||
        !m->key_cache_misses || !m->connections_open || !m->connections_rejected)
        return -ENOMEM;
    return 0;
}

void gw_metrics_request(gw_metrics_t *m, gw_route_t route, int status, double seconds)
{
    svc_metric_t *c;

    if (status < 100 || status > 599)
        status = 599;
    c = atomic_load_explicit(&m->requests[route][status], memory_order_acquire);
    if (!c) {
        char labels[64];

        /* Two threads may race to register the same series; the registry returns the same
         * metric to both. */
        snprintf(labels, sizeof(labels), "code=\"%d\",route=\"%s\"", status, route_names[route]);
        c = svc_metrics_counter(m->registry, "sb_gateway_http_requests_total",
                                "HTTP requests answered, by route and status code.", labels);
        if (c)
            atomic_store_explicit(&m->requests[route][status], c, memory_order_release);
    }
    if (c)
        svc_metric_inc(c);
    svc_metric_observe(m->latency[route], seconds);
}
