/* metrics.c: the gateway's Prometheus series. */
#include <errno.h>
#include <stdio.h>

#include "gateway.h"

int gw_metrics_init(gw_metrics_t *m, svc_metrics_t *registry)
{
    char labels[96];

    m->registry = registry;
    for (int i = 0; i < GW_ROUTE_COUNT; i++) {
        snprintf(labels, sizeof(labels), "route=\"%s\"", gw_route_name((gw_route_t)i));
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
    m->rate_limited = svc_metrics_counter(
        registry, "sb_gateway_rate_limited_total",
        "Requests answered 429 because the caller's token bucket was empty.", NULL);
    if (!m->readings_accepted || !m->produce_failures || !m->key_cache_hits ||
        !m->key_cache_misses || !m->connections_open || !m->connections_rejected ||
        !m->rate_limited)
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
        char labels[96];

        /* Two threads may race to register the same series; the registry returns the same
         * metric to both. */
        snprintf(labels, sizeof(labels), "code=\"%d\",route=\"%s\"", status, gw_route_name(route));
        c = svc_metrics_counter(m->registry, "sb_gateway_http_requests_total",
                                "HTTP requests answered, by route and status code.", labels);
        if (c)
            atomic_store_explicit(&m->requests[route][status], c, memory_order_release);
    }
    if (c)
        svc_metric_inc(c);
    svc_metric_observe(m->latency[route], seconds);
}
