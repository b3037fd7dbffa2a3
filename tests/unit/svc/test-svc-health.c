/* Tests for svc_health over real HTTP on an ephemeral loopback port. */
#include <arpa/inet.h>
#include <criterion/criterion.h>
#include <errno.h>
#include <jansson.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <unistd.h>

#include "svc_health.h"

typedef struct response {
    int status;
    char head[4096];
    char *body;
} response_t;

static svc_metrics_t *reg;
static svc_health_t *health;

static void setup(void)
{
    cr_assert_eq(svc_metrics_new(&reg), 0);
    cr_assert_eq(svc_health_new("127.0.0.1", 0, reg, &health), 0);
    cr_assert_gt(svc_health_port(health), 0);
}

static void teardown(void)
{
    svc_health_free(health);
    svc_metrics_free(reg);
}

TestSuite(svc_health, .init = setup, .fini = teardown, .timeout = 30);

/* One HTTP/1.1 request with Connection: close; reads until the server closes. */
static response_t request(const char *method, const char *path)
{
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons(svc_health_port(health))};
    struct timeval tv = {.tv_sec = 10};
    response_t res = {0};
    size_t cap = 1 << 16, len = 0;
    char *buf = malloc(cap + 1), req[512], *sep;
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    ssize_t n;

    cr_assert(fd >= 0 && buf);
    inet_pton(AF_INET, "127.0.0.1", &sa.sin_addr);
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
    cr_assert_eq(connect(fd, (struct sockaddr *)&sa, sizeof(sa)), 0);
    n = snprintf(req, sizeof(req), "%s %s HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n",
                 method, path);
    cr_assert_eq(write(fd, req, (size_t)n), n);
    while ((n = read(fd, buf + len, cap - len)) > 0)
        len += (size_t)n;
    cr_assert_geq(n, 0, "read timed out or failed");
    close(fd);
    buf[len] = '\0';
    cr_assert_eq(sscanf(buf, "HTTP/1.1 %d", &res.status), 1, "%s", buf);
    sep = strstr(buf, "\r\n\r\n");
    cr_assert_not_null(sep, "%s", buf);
    snprintf(res.head, sizeof(res.head), "%.*s", (int)(sep - buf), buf);
    res.body = strdup(sep + 4);
    free(buf);
    return res;
}

static json_t *body_json(const response_t *res)
{
    json_error_t error;
    json_t *j = json_loads(res->body, 0, &error);

    cr_assert_not_null(j, "not JSON (%s): %s", error.text, res->body);
    return j;
}

static bool has_header(const response_t *res, const char *line)
{
    return strcasestr(res->head, line) != NULL;
}

Test(svc_health, healthz_is_ok)
{
    response_t res = request("GET", "/healthz");

    cr_assert_eq(res.status, 200);
    cr_assert(has_header(&res, "\r\nContent-Type: application/json"), "%s", res.head);
    cr_assert_str_eq(res.body, "{\"status\":\"ok\"}");
    free(res.body);
}

Test(svc_health, readyz_follows_the_checks)
{
    response_t res = request("GET", "/readyz");
    json_t *j;

    cr_assert_eq(res.status, 503, "no check registered yet: not ready");
    cr_assert_not(svc_health_ready(health));
    free(res.body);

    svc_health_set(health, "kafka", false);
    svc_health_set(health, "db", true);
    res = request("GET", "/readyz");
    cr_assert_eq(res.status, 503);
    j = body_json(&res);
    cr_assert_str_eq(json_string_value(json_object_get(j, "status")), "not ready");
    cr_assert(json_is_false(json_object_get(json_object_get(j, "checks"), "kafka")), "%s",
              res.body);
    cr_assert(json_is_true(json_object_get(json_object_get(j, "checks"), "db")), "%s", res.body);
    json_decref(j);
    free(res.body);

    svc_health_set(health, "kafka", true);
    cr_assert(svc_health_ready(health));
    res = request("GET", "/readyz");
    cr_assert_eq(res.status, 200);
    j = body_json(&res);
    cr_assert_str_eq(json_string_value(json_object_get(j, "status")), "ready");
    cr_assert_eq(json_object_size(json_object_get(j, "checks")), 2, "%s", res.body);
    json_decref(j);
    free(res.body);
}

Test(svc_health, a_noted_dependency_degrades_but_keeps_ready)
{
    response_t res;
    json_t *j;

    svc_health_set(health, "db", true);
    svc_health_note(health, "redis", false);
    cr_assert(svc_health_ready(health), "a noted check does not gate readiness");
    res = request("GET", "/readyz");
    cr_assert_eq(res.status, 200);
    j = body_json(&res);
    cr_assert_str_eq(json_string_value(json_object_get(j, "status")), "degraded");
    cr_assert(json_is_false(json_object_get(json_object_get(j, "checks"), "redis")), "%s",
              res.body);
    json_decref(j);
    free(res.body);

    svc_health_note(health, "redis", true);
    res = request("GET", "/readyz");
    j = body_json(&res);
    cr_assert_str_eq(json_string_value(json_object_get(j, "status")), "ready");
    json_decref(j);
    free(res.body);

    svc_health_set(health, "db", false);
    cr_assert_not(svc_health_ready(health));
}

Test(svc_health, metrics_serves_the_registry)
{
    svc_metric_t *m = svc_metrics_counter(reg, "sb_test_events_total", "Events.", "kind=\"a\"");
    response_t res;

    svc_metric_add(m, 3);
    res = request("GET", "/metrics");
    cr_assert_eq(res.status, 200);
    cr_assert(has_header(&res, "\r\nContent-Type: text/plain; version=0.0.4"), "%s", res.head);
    cr_assert_not_null(strstr(res.body, "# TYPE sb_test_events_total counter\n"), "%s", res.body);
    cr_assert_not_null(strstr(res.body, "\nsb_test_events_total{kind=\"a\"} 3\n"), "%s", res.body);
    free(res.body);
}

Test(svc_health, unknown_path_is_a_404_problem)
{
    response_t res = request("GET", "/nope?x=1");
    json_t *j;

    cr_assert_eq(res.status, 404);
    cr_assert(has_header(&res, "\r\nContent-Type: application/problem+json"), "%s", res.head);
    j = body_json(&res);
    cr_assert_str_eq(json_string_value(json_object_get(j, "type")),
                     "https://sensorbus.dev/problems/not-found");
    cr_assert_str_eq(json_string_value(json_object_get(j, "title")), "Not Found");
    cr_assert_eq(json_integer_value(json_object_get(j, "status")), 404);
    cr_assert_not_null(strstr(json_string_value(json_object_get(j, "detail")), "/nope"), "%s",
                       res.body);
    json_decref(j);
    free(res.body);
}

Test(svc_health, hostile_path_still_gives_valid_json)
{
    response_t res = request("GET", "/%22\"\\\xff");
    json_t *j;

    cr_assert_eq(res.status, 404);
    j = body_json(&res);
    json_decref(j);
    free(res.body);
}

Test(svc_health, post_to_a_known_path_is_405)
{
    response_t res = request("POST", "/healthz");

    cr_assert_eq(res.status, 405);
    cr_assert(has_header(&res, "\r\nAllow: GET, HEAD"), "%s", res.head);
    free(res.body);
}

Test(svc_health, busy_port_is_reported)
{
    svc_health_t *other = NULL;

    cr_assert_eq(svc_health_new("127.0.0.1", svc_health_port(health), reg, &other), -EADDRINUSE);
    cr_assert_null(other);
}

Test(svc_health, free_right_after_new_stops_the_thread)
{
    for (int i = 0; i < 20; i++) {
        svc_health_t *h = NULL;

        cr_assert_eq(svc_health_new("127.0.0.1", 0, reg, &h), 0);
        svc_health_free(h);
    }
    svc_health_free(NULL);
}
