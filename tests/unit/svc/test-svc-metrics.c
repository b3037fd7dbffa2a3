/* Tests for svc_metrics: values, Prometheus text and concurrent updates. */
#include <criterion/criterion.h>
#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "svc_metrics.h"

static svc_metrics_t *reg;

static void setup(void)
{
    cr_assert_eq(svc_metrics_new(&reg), 0);
}

static void teardown(void)
{
    svc_metrics_free(reg);
}

TestSuite(svc_metrics, .init = setup, .fini = teardown);

static char *render(void)
{
    char *text = NULL;
    size_t len = 0;

    cr_assert_eq(svc_metrics_render(reg, &text, &len), 0);
    cr_assert_eq(strlen(text), len);
    return text;
}

Test(svc_metrics, counter_and_gauge_render_exactly)
{
    svc_metric_t *ok = svc_metrics_counter(reg, "sb_http_requests_total", "HTTP requests.",
                                           "code=\"202\",route=\"/sensors/data\"");
    svc_metric_t *bad = svc_metrics_counter(reg, "sb_http_requests_total", "HTTP requests.",
                                            "code=\"400\",route=\"/sensors/data\"");
    svc_metric_t *inflight = svc_metrics_gauge(reg, "sb_inflight", "Requests in flight.", NULL);
    char *text;

    cr_assert(ok && bad && inflight);
    svc_metric_inc(ok);
    svc_metric_inc(ok);
    svc_metric_add(ok, 3);
    svc_metric_inc(bad);
    svc_metric_set(inflight, 7);
    svc_metric_add(inflight, -2.5);
    cr_assert_float_eq(svc_metric_value(ok), 5.0, 1e-12);
    cr_assert_float_eq(svc_metric_value(inflight), 4.5, 1e-12);

    text = render();
    cr_assert_str_eq(text, "# HELP sb_http_requests_total HTTP requests.\n"
                           "# TYPE sb_http_requests_total counter\n"
                           "sb_http_requests_total{code=\"202\",route=\"/sensors/data\"} 5\n"
                           "sb_http_requests_total{code=\"400\",route=\"/sensors/data\"} 1\n"
                           "# HELP sb_inflight Requests in flight.\n"
                           "# TYPE sb_inflight gauge\n"
                           "sb_inflight 4.5\n");
    free(text);
}

Test(svc_metrics, histogram_buckets_are_cumulative_with_labels_merged)
{
    const double bounds[] = {0.1, 0.5, 1};
    svc_metric_t *h = svc_metrics_histogram(reg, "sb_batch_seconds", "Batch time.",
                                            "consumer=\"ingest\"", bounds, 3);
    svc_metric_t *plain =
        svc_metrics_histogram(reg, "sb_plain_seconds", "No labels.", NULL, bounds, 1);
    char *text;

    cr_assert(h && plain);
    svc_metric_observe(h, 0.05);
    svc_metric_observe(h, 0.1); /* upper bounds are inclusive */
    svc_metric_observe(h, 0.7);
    svc_metric_observe(h, 3);
    svc_metric_observe(plain, 0.25);
    cr_assert_float_eq(svc_metric_value(h), 4.0, 1e-12);

    text = render();
    cr_assert_str_eq(text, "# HELP sb_batch_seconds Batch time.\n"
                           "# TYPE sb_batch_seconds histogram\n"
                           "sb_batch_seconds_bucket{consumer=\"ingest\",le=\"0.1\"} 2\n"
                           "sb_batch_seconds_bucket{consumer=\"ingest\",le=\"0.5\"} 2\n"
                           "sb_batch_seconds_bucket{consumer=\"ingest\",le=\"1\"} 3\n"
                           "sb_batch_seconds_bucket{consumer=\"ingest\",le=\"+Inf\"} 4\n"
                           "sb_batch_seconds_sum{consumer=\"ingest\"} 3.85\n"
                           "sb_batch_seconds_count{consumer=\"ingest\"} 4\n"
                           "# HELP sb_plain_seconds No labels.\n"
                           "# TYPE sb_plain_seconds histogram\n"
                           "sb_plain_seconds_bucket{le=\"0.1\"} 0\n"
                           "sb_plain_seconds_bucket{le=\"+Inf\"} 1\n"
                           "sb_plain_seconds_sum 0.25\n"
                           "sb_plain_seconds_count 1\n");
    free(text);
}

Test(svc_metrics, latency_bounds_render_as_written)
{
    svc_metric_t *h = svc_metrics_histogram(
        reg, "lat", "Latency.", NULL, svc_metrics_latency_bounds, svc_metrics_latency_nbounds);
    char *text, *p;
    const char *expected[] = {"0.0005", "0.001", "0.0025", "0.005", "0.01", "0.025", "0.05", "0.1",
                              "0.25",   "0.5",   "1",      "2.5",   "5",    "10",    "+Inf"};

    cr_assert_not_null(h);
    cr_assert_eq(svc_metrics_latency_nbounds, 14);
    text = render();
    p = text;
    for (size_t i = 0; i < sizeof(expected) / sizeof(expected[0]); i++) {
        char line[64];

        snprintf(line, sizeof(line), "lat_bucket{le=\"%s\"} 0\n", expected[i]);
        p = strstr(p, line);
        cr_assert_not_null(p, "missing or out of order: %s", line);
    }
    free(text);
}

Test(svc_metrics, registration_finds_existing_and_rejects_type_clash)
{
    svc_metric_t *a = svc_metrics_counter(reg, "sb_x_total", "X.", "k=\"v\"");

    cr_assert_not_null(a);
    cr_assert_eq(svc_metrics_counter(reg, "sb_x_total", "X.", "k=\"v\""), a);
    cr_assert_neq(svc_metrics_counter(reg, "sb_x_total", "X.", NULL), a);
    cr_assert_null(svc_metrics_gauge(reg, "sb_x_total", "X.", NULL));
    cr_assert_null(svc_metrics_counter(reg, "0bad", "Bad.", NULL));
    cr_assert_null(svc_metrics_counter(reg, "bad-name", "Bad.", NULL));
    const double unsorted[] = {1, 0.5};
    cr_assert_null(svc_metrics_histogram(reg, "sb_h", "H.", NULL, unsorted, 2));
}

Test(svc_metrics, counters_never_go_down_and_help_is_escaped)
{
    svc_metric_t *c = svc_metrics_counter(reg, "sb_c_total", "Line one\nback\\slash.", NULL);
    char *text;

    svc_metric_add(c, 2);
    svc_metric_add(c, -1);
    svc_metric_add(c, NAN);
    cr_assert_float_eq(svc_metric_value(c), 2.0, 1e-12);
    text = render();
    cr_assert_str_eq(text, "# HELP sb_c_total Line one\\nback\\\\slash.\n"
                           "# TYPE sb_c_total counter\n"
                           "sb_c_total 2\n");
    free(text);
}

static void *hammer(void *arg)
{
    svc_metric_t **m = arg;

    for (int i = 0; i < 100000; i++) {
        svc_metric_inc(m[0]);
        svc_metric_add(m[1], 0.5);
        svc_metric_observe(m[2], 0.002);
    }
    return NULL;
}

Test(svc_metrics, concurrent_updates_are_not_lost)
{
    svc_metric_t *m[3] = {
        svc_metrics_counter(reg, "sb_n_total", "N.", NULL),
        svc_metrics_gauge(reg, "sb_g", "G.", NULL),
        svc_metrics_histogram(reg, "sb_h_seconds", "H.", NULL, svc_metrics_latency_bounds,
                              svc_metrics_latency_nbounds),
    };
    pthread_t t[4];
    char *text;

    for (int i = 0; i < 4; i++)
        cr_assert_eq(pthread_create(&t[i], NULL, hammer, m), 0);
    for (int i = 0; i < 4; i++)
        pthread_join(t[i], NULL);
    cr_assert_eq(svc_metric_value(m[0]), 400000.0);
    cr_assert_eq(svc_metric_value(m[1]), 200000.0);
    cr_assert_eq(svc_metric_value(m[2]), 400000.0);
    text = render();
    cr_assert_not_null(strstr(text, "\nsb_n_total 400000\n"), "%s", text);
    cr_assert_not_null(strstr(text, "\nsb_h_seconds_bucket{le=\"0.001\"} 0\n"), "%s", text);
    cr_assert_not_null(strstr(text, "\nsb_h_seconds_bucket{le=\"0.0025\"} 400000\n"), "%s", text);
    cr_assert_not_null(strstr(text, "\nsb_h_seconds_count 400000\n"), "%s", text);
    free(text);
}

Test(svc_metrics, default_registry_is_shared)
{
    cr_assert_not_null(svc_metrics_default());
    cr_assert_eq(svc_metrics_default(), svc_metrics_default());
}
