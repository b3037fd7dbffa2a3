/* svc_metrics.h: counters, gauges and histograms with Prometheus text exposition (format 0.0.4).
 *
 * Metrics are registered once (under a mutex) and updated lock-free with C11 atomics from any
 * thread. Several series of one family share a name and differ by their label string; HELP and
 * TYPE are written once per family.
 */
#pragma once

#include <stddef.h>

typedef struct svc_metrics svc_metrics_t;
typedef struct svc_metric svc_metric_t;

/** Creates an empty registry. 0 or -ENOMEM. */
int svc_metrics_new(svc_metrics_t **ret_metrics);
/** Frees the registry and every metric in it. Accepts NULL. */
void svc_metrics_free(svc_metrics_t *metrics);
/** The process-wide registry that daemons use (created on first call, never freed). */
svc_metrics_t *svc_metrics_default(void);

/**
 * Registers (or finds, if the same name and labels exist) a metric. @labels is the text between
 * the braces, e.g. `code="202",route="/sensors/data"`, or NULL. @name, @help and @labels are
 * copied. Registering an existing name with another type fails. Returns NULL on failure.
 */
svc_metric_t *svc_metrics_counter(svc_metrics_t *metrics, const char *name, const char *help,
                                  const char *labels);
svc_metric_t *svc_metrics_gauge(svc_metrics_t *metrics, const char *name, const char *help,
                                const char *labels);
/** @bounds: ascending upper bounds (the +Inf bucket is implicit); copied. */
svc_metric_t *svc_metrics_histogram(svc_metrics_t *metrics, const char *name, const char *help,
                                    const char *labels, const double *bounds, size_t nbounds);

void svc_metric_inc(svc_metric_t *m);               /* counter or gauge += 1 */
void svc_metric_add(svc_metric_t *m, double v);     /* counter (v >= 0) or gauge */
void svc_metric_set(svc_metric_t *m, double v);     /* gauge */
void svc_metric_observe(svc_metric_t *m, double v); /* histogram */
double svc_metric_value(const svc_metric_t *m);     /* counter/gauge value, histogram count */

/** Renders the registry as Prometheus text into a malloc'd buffer the caller frees. 0 or -errno. */
int svc_metrics_render(svc_metrics_t *metrics, char **ret_text, size_t *ret_len);

/** Default latency buckets in seconds: 0.5ms .. 10s. */
extern const double svc_metrics_latency_bounds[];
extern const size_t svc_metrics_latency_nbounds;
