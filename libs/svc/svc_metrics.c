/* svc_metrics.c: a registry of counters, gauges and histograms, rendered as Prometheus text. */
#include "svc_metrics.h"

#include <errno.h>
#include <math.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef enum metric_type {
    METRIC_COUNTER,
    METRIC_GAUGE,
    METRIC_HISTOGRAM,
} metric_type_t;

static const char *const type_names[] = {"counter", "gauge", "histogram"};

typedef struct family family_t;

struct svc_metric {
    family_t *fam;
    char *labels; /* NULL when the series has none */
    /* Counter and gauge value as the bits of a double, so that it can live in an atomic. */
    _Atomic uint64_t bits;
    /* Histogram: per-bucket (not cumulative) counts, the last one being +Inf, and the sum. */
    double *bounds;
    size_t nbounds;
    _Atomic uint64_t *buckets;
    _Atomic uint64_t count;
    _Atomic uint64_t sum_bits;
    svc_metric_t *next;
};

struct family {
    char *name;
    char *help;
    metric_type_t type;
    svc_metric_t *first, *last;
    family_t *next;
};

struct svc_metrics {
    pthread_mutex_t lock; /* guards registration and the lists, not the values */
    family_t *first, *last;
};

const double svc_metrics_latency_bounds[] = {0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05,
                                             0.1,    0.25,  0.5,    1,     2.5,  5,     10};
const size_t svc_metrics_latency_nbounds =
    sizeof(svc_metrics_latency_bounds) / sizeof(svc_metrics_latency_bounds[0]);

static uint64_t d2u(double v)
{
    uint64_t u;

    memcpy(&u, &v, sizeof(u));
    return u;
}

static double u2d(uint64_t u)
{
    double v;

    memcpy(&v, &u, sizeof(v));
    return v;
}

/* Lock-free += on a double kept as bits: retry until no other thread changed it in between. */
static void atomic_add_double(_Atomic uint64_t *bits, double v)
{
    uint64_t old = atomic_load_explicit(bits, memory_order_relaxed);

    while (!atomic_compare_exchange_weak_explicit(bits, &old, d2u(u2d(old) + v),
                                                  memory_order_relaxed, memory_order_relaxed))
        ;
}

int svc_metrics_new(svc_metrics_t **ret_metrics)
{
    svc_metrics_t *metrics = calloc(1, sizeof(*metrics));

    if (!metrics)
        return -ENOMEM;
    pthread_mutex_init(&metrics->lock, NULL);
    *ret_metrics = metrics;
    return 0;
}

static void metric_free(svc_metric_t *m)
{
    free(m->labels);
    free(m->bounds);
    free(m->buckets);
    free(m);
}

void svc_metrics_free(svc_metrics_t *metrics)
{
    if (!metrics)
        return;
    for (family_t *f = metrics->first, *fnext; f; f = fnext) {
        fnext = f->next;
        for (svc_metric_t *m = f->first, *mnext; m; m = mnext) {
            mnext = m->next;
            metric_free(m);
        }
        free(f->name);
        free(f->help);
        free(f);
    }
    pthread_mutex_destroy(&metrics->lock);
    free(metrics);
}

static svc_metrics_t *default_metrics;
static pthread_once_t default_once = PTHREAD_ONCE_INIT;

static void default_init(void)
{
    if (svc_metrics_new(&default_metrics) < 0)
        default_metrics = NULL;
}

svc_metrics_t *svc_metrics_default(void)
{
    pthread_once(&default_once, default_init);
    return default_metrics;
}

/* Prometheus metric names: [a-zA-Z_:][a-zA-Z0-9_:]*. */
static bool name_valid(const char *name)
{
    if (!name || !*name || (name[0] >= '0' && name[0] <= '9'))
        return false;
    for (const char *p = name; *p; p++)
        if (!((*p >= 'a' && *p <= 'z') || (*p >= 'A' && *p <= 'Z') || (*p >= '0' && *p <= '9') ||
              *p == '_' || *p == ':'))
            return false;
    return true;
}

static svc_metric_t *metric_register(svc_metrics_t *metrics, metric_type_t type, const char *name,
                                     const char *help, const char *labels, const double *bounds,
                                     size_t nbounds)
{
    family_t *f, *fnew = NULL;
    svc_metric_t *m = NULL;

    if (!metrics || !name_valid(name))
        return NULL;
    if (labels && !*labels)
        labels = NULL;
    for (size_t i = 1; i < nbounds; i++)
        if (!(bounds[i - 1] < bounds[i]))
            return NULL; /* bounds must ascend, or the cumulative counts would lie */

    pthread_mutex_lock(&metrics->lock);
    for (f = metrics->first; f; f = f->next)
        if (strcmp(f->name, name) == 0)
            break;
    if (f) {
        if (f->type != type)
            goto fail;
        for (m = f->first; m; m = m->next)
            if ((!m->labels && !labels) || (m->labels && labels && !strcmp(m->labels, labels)))
                goto out;
    } else {
        f = fnew = calloc(1, sizeof(*f));
        if (!f || !(f->name = strdup(name)) || !(f->help = strdup(help ? help : "")))
            goto fail;
        f->type = type;
    }

    m = calloc(1, sizeof(*m));
    if (!m || (labels && !(m->labels = strdup(labels))))
        goto fail;
    m->fam = f;
    if (type == METRIC_HISTOGRAM) {
        m->nbounds = nbounds;
        m->bounds = malloc((nbounds ? nbounds : 1) * sizeof(*m->bounds));
        m->buckets = calloc(nbounds + 1, sizeof(*m->buckets));
        if (!m->bounds || !m->buckets)
            goto fail;
        if (nbounds)
            memcpy(m->bounds, bounds, nbounds * sizeof(*bounds));
    }
    if (fnew) {
        if (metrics->last)
            metrics->last->next = fnew;
        else
            metrics->first = fnew;
        metrics->last = fnew;
    }
    if (f->last)
        f->last->next = m;
    else
        f->first = m;
    f->last = m;
out:
    pthread_mutex_unlock(&metrics->lock);
    return m;
fail:
    pthread_mutex_unlock(&metrics->lock);
    if (m)
        metric_free(m);
    if (fnew) {
        free(fnew->name);
        free(fnew->help);
        free(fnew);
    }
    return NULL;
}

svc_metric_t *svc_metrics_counter(svc_metrics_t *metrics, const char *name, const char *help,
                                  const char *labels)
{
    return metric_register(metrics, METRIC_COUNTER, name, help, labels, NULL, 0);
}

svc_metric_t *svc_metrics_gauge(svc_metrics_t *metrics, const char *name, const char *help,
                                const char *labels)
{
    return metric_register(metrics, METRIC_GAUGE, name, help, labels, NULL, 0);
}

svc_metric_t *svc_metrics_histogram(svc_metrics_t *metrics, const char *name, const char *help,
                                    const char *labels, const double *bounds, size_t nbounds)
{
    return metric_register(metrics, METRIC_HISTOGRAM, name, help, labels, bounds, nbounds);
}

/* Updates on a NULL metric (a failed registration) or of the wrong kind are ignored: a daemon
 * must not crash because a metric is missing. */
void svc_metric_inc(svc_metric_t *m)
{
    svc_metric_add(m, 1.0);
}

void svc_metric_add(svc_metric_t *m, double v)
{
    if (!m || m->fam->type == METRIC_HISTOGRAM || (m->fam->type == METRIC_COUNTER && !(v >= 0)))
        return;
    atomic_add_double(&m->bits, v);
}

void svc_metric_set(svc_metric_t *m, double v)
{
    if (m && m->fam->type == METRIC_GAUGE)
        atomic_store_explicit(&m->bits, d2u(v), memory_order_relaxed);
}

void svc_metric_observe(svc_metric_t *m, double v)
{
    size_t lo = 0, hi;

    if (!m || m->fam->type != METRIC_HISTOGRAM)
        return;
    /* First bucket whose upper bound is >= v; NaN lands in +Inf. */
    hi = m->nbounds;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        if (v <= m->bounds[mid])
            hi = mid;
        else
            lo = mid + 1;
    }
    atomic_fetch_add_explicit(&m->buckets[lo], 1, memory_order_relaxed);
    atomic_add_double(&m->sum_bits, v);
    atomic_fetch_add_explicit(&m->count, 1, memory_order_relaxed);
}

double svc_metric_value(const svc_metric_t *m)
{
    if (!m)
        return 0;
    if (m->fam->type == METRIC_HISTOGRAM)
        return (double)atomic_load_explicit(&m->count, memory_order_relaxed);
    return u2d(atomic_load_explicit(&m->bits, memory_order_relaxed));
}

/* Prometheus float text: the shortest form that reads back exactly, and +Inf/-Inf/NaN. */
static void value_format(char *buf, size_t size, double v)
{
    if (isnan(v)) {
        snprintf(buf, size, "NaN");
    } else if (isinf(v)) {
        snprintf(buf, size, v > 0 ? "+Inf" : "-Inf");
    } else {
        snprintf(buf, size, "%.15g", v);
        if (strtod(buf, NULL) != v)
            snprintf(buf, size, "%.17g", v);
    }
}

/* HELP text escapes backslash and newline (exposition format 0.0.4). */
static void help_write(FILE *out, const char *help)
{
    for (const char *p = help; *p; p++) {
        if (*p == '\\')
            fputs("\\\\", out);
        else if (*p == '\n')
            fputs("\\n", out);
        else
            fputc(*p, out);
    }
}

static void series_write(FILE *out, const char *name, const char *suffix, const char *labels,
                         const char *le, const char *value)
{
    fprintf(out, "%s%s", name, suffix);
    if (labels || le) {
        fputc('{', out);
        if (labels)
            fputs(labels, out);
        if (labels && le)
            fputc(',', out);
        if (le)
            fprintf(out, "le=\"%s\"", le);
        fputc('}', out);
    }
    fprintf(out, " %s\n", value);
}

static void histogram_write(FILE *out, const svc_metric_t *m)
{
    const char *name = m->fam->name;
    char le[64], value[64];
    uint64_t cumulative = 0;

    for (size_t i = 0; i <= m->nbounds; i++) {
        cumulative += atomic_load_explicit(&m->buckets[i], memory_order_relaxed);
        if (i < m->nbounds)
            value_format(le, sizeof(le), m->bounds[i]);
        else
            snprintf(le, sizeof(le), "+Inf");
        snprintf(value, sizeof(value), "%llu", (unsigned long long)cumulative);
        series_write(out, name, "_bucket", m->labels, le, value);
    }
    value_format(value, sizeof(value),
                 u2d(atomic_load_explicit(&m->sum_bits, memory_order_relaxed)));
    series_write(out, name, "_sum", m->labels, NULL, value);
    /* _count is the +Inf bucket, read above, so the two always agree even while observations
     * land during rendering (Prometheus expects them equal). */
    snprintf(value, sizeof(value), "%llu", (unsigned long long)cumulative);
    series_write(out, name, "_count", m->labels, NULL, value);
}

int svc_metrics_render(svc_metrics_t *metrics, char **ret_text, size_t *ret_len)
{
    char *text = NULL, value[64];
    size_t len = 0;
    FILE *out = open_memstream(&text, &len);

    if (!out)
        return -errno;
    pthread_mutex_lock(&metrics->lock);
    for (const family_t *f = metrics->first; f; f = f->next) {
        fprintf(out, "# HELP %s ", f->name);
        help_write(out, f->help);
        fprintf(out, "\n# TYPE %s %s\n", f->name, type_names[f->type]);
        for (const svc_metric_t *m = f->first; m; m = m->next) {
            if (f->type == METRIC_HISTOGRAM) {
                histogram_write(out, m);
            } else {
                value_format(value, sizeof(value), svc_metric_value(m));
                series_write(out, f->name, "", m->labels, NULL, value);
            }
        }
    }
    pthread_mutex_unlock(&metrics->lock);
    if (ferror(out) | fclose(out)) {
        free(text);
        return -ENOMEM;
    }
    *ret_text = text;
    if (ret_len)
        *ret_len = len;
    return 0;
}
