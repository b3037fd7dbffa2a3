/* test-cache-agg.c: the aggregates' layout and exactly-once writer against a real redis-server. */
#include <criterion/criterion.h>
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cache.h"
#include "cache_agg.h"
#include "redis_test.h"

#define P1    "11111111-1111-4111-8111-111111111111"
#define P2    "22222222-2222-4222-8222-222222222222"
#define TOPIC "sensor.readings.v1"

static server_t srv;
static cache_t *cache;

static void setup(void)
{
    server_start(&srv, 0, NULL, NULL);
    cr_assert_eq(cache_new(srv.url, 2000, &cache), 0);
}

static void teardown(void)
{
    cache_free(cache);
    server_kill(&srv);
}

/* A command's string reply (malloc'd), or NULL for nil. */
static char *get(const char *a0, const char *a1, const char *a2)
{
    const char *argv[] = {a0, a1, a2};
    redisReply *reply = NULL;
    int r = cache_command(cache, a2 ? 3 : 2, argv, NULL, &reply);
    cr_assert_eq(r, 0, "%s %s: %s", a0, a1, cache_errmsg(cache));
    char *s = NULL;
    if (reply->type == REDIS_REPLY_STRING)
        s = strdup(reply->str);
    else if (reply->type == REDIS_REPLY_INTEGER && asprintf(&s, "%lld", reply->integer) < 0)
        s = NULL;
    freeReplyObject(reply);
    return s;
}

static void expect(const char *want, const char *a0, const char *a1, const char *a2)
{
    char *got = get(a0, a1, a2);
    if (!want)
        cr_assert_null(got, "%s %s %s: %s", a0, a1, a2 ? a2 : "", got);
    else
        cr_assert(got && !strcmp(got, want), "%s %s %s: got %s, want %s", a0, a1, a2 ? a2 : "",
                  got ? got : "(nil)", want);
    free(got);
}

static cache_agg_item_t reading(int64_t offset, const char *project, const char *sensor,
                                int64_t ts_us, double value)
{
    cache_agg_item_t it = {
        .offset = offset, .kind = CACHE_AGG_READING, .ts_us = ts_us, .value = value};
    snprintf(it.project_id, sizeof(it.project_id), "%s", project);
    snprintf(it.name, sizeof(it.name), "%s", sensor);
    return it;
}

static int64_t now_us(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
}

static cache_agg_writer_t *new_writer(size_t max_items)
{
    cache_agg_writer_t *w = NULL;
    cr_assert_eq(cache_agg_writer_new(cache, "test", max_items, &w), 0);
    return w;
}

/* 100 readings of sensors s0..s4 in the current minute, offsets 0..99; value i. */
static void fill(cache_agg_item_t *items, int64_t t0)
{
    for (int i = 0; i < 100; i++) {
        char sensor[8];
        snprintf(sensor, sizeof(sensor), "s%d", i % 5);
        items[i] = reading(i, P1, sensor, t0 + i, (double)i);
    }
}

Test(cache_agg, formats_and_keys)
{
    char buf[CACHE_AGG_NUM_MAX], key[CACHE_AGG_KEY_MAX];
    const double values[] = {0.1, 21.5, -3, 1e-7, 123456789.123456789, 1.0 / 3, 5e-324, 1e300};
    for (size_t i = 0; i < sizeof(values) / sizeof(values[0]); i++) {
        cache_agg_format_double(values[i], buf);
        cr_assert_eq(strtod(buf, NULL), values[i], "%s", buf);
    }
    cache_agg_format_double(0.1, buf);
    cr_assert_str_eq(buf, "0.1", "the shortest text, not %%.17g");
    cache_agg_format_double(-3, buf);
    cr_assert_str_eq(buf, "-3");
    cache_agg_format_double(30, buf);
    cr_assert_str_eq(buf, "30", "no exponent for a plain number");
    cache_agg_format_double(1200000, buf);
    cr_assert_str_eq(buf, "1200000");

    cache_agg_format_ts(1795426801123456LL, buf);
    cr_assert_str_eq(buf, "2026-11-23T09:40:01.123456Z");
    cache_agg_format_ts(1795426801000000LL, buf);
    cr_assert_str_eq(buf, "2026-11-23T09:40:01.000000Z", "always 6 fractional digits");
    cache_agg_format_ts(-1, buf);
    cr_assert_str_eq(buf, "1969-12-31T23:59:59.999999Z");

    cr_assert_eq(cache_agg_minute(119999999), 1);
    cr_assert_eq(cache_agg_minute(120000000), 2);
    cr_assert_eq(cache_agg_minute(-1), -1);
    cr_assert_eq(cache_agg_rpm_expireat(10), 11 * 60 + 48 * 3600);

    cr_assert_gt(cache_agg_key_rpm(key, sizeof(key), P1, 29923780), 0);
    cr_assert_str_eq(key, "sb:rpm:" P1 ":29923780");
    cr_assert_gt(cache_agg_key_sensor(key, sizeof(key), P1, "pump-3"), 0);
    cr_assert_str_eq(key, "sb:sensor:" P1 ":pump-3");
    cr_assert_gt(cache_agg_key_offsets(key, sizeof(key), "sensor-ingest"), 0);
    cr_assert_str_eq(key, "sb:agg:offset:sensor-ingest");
    cr_assert_eq(cache_agg_key_sensors(key, 10, P1), -ENOBUFS);
}

Test(cache_agg, readings_make_the_layout, .init = setup, .fini = teardown)
{
    cache_agg_writer_t *w = new_writer(1000);
    int64_t t0 = (now_us() / 60000000) * 60000000; /* the start of this minute */
    cache_agg_item_t items[] = {
        reading(10, P1, "pump-3", t0 + 5000000, 21.5),
        reading(11, P1, "pump-3", t0 + 1000000, -4.25), /* older: not the last one */
        reading(13, P1, "fan-1", t0 + 61000000, 0.1),   /* next minute */
        reading(14, P2, "pump-3", t0 + 2000000, 7),
        reading(15, P1, "pump-3", t0 + 5000000, 30), /* same ts as the last: the larger wins */
    };
    cr_assert_eq(cache_agg_writer_add(w, TOPIC, 3, 10, 16, items, 5), 0);
    cr_assert_eq(cache_agg_writer_pending(w), 5);
    cr_assert_eq(cache_agg_writer_flush(w), 0, "%s", cache_errmsg(cache));
    cr_assert_eq(cache_agg_writer_pending(w), 0);
    cr_assert(cache_agg_writer_idle(w));
    cr_assert_eq(cache_agg_writer_stats(w)->applied, 5);

    char key[CACHE_AGG_KEY_MAX], ts[CACHE_AGG_NUM_MAX], n[32];
    int64_t minute = cache_agg_minute(t0);
    cache_agg_key_rpm(key, sizeof(key), P1, minute);
    expect("3", "GET", key, NULL);
    char *ttl = get("TTL", key, NULL);
    long t = atol(ttl);
    free(ttl);
    cr_assert(t > 48 * 3600 - 5 && t <= 48 * 3600 + 60, "TTL %ld: 48 h after the minute", t);
    cache_agg_key_rpm(key, sizeof(key), P1, minute + 1);
    expect("1", "GET", key, NULL);
    cache_agg_key_rpm(key, sizeof(key), P2, minute);
    expect("1", "GET", key, NULL);

    cache_agg_key_sensor(key, sizeof(key), P1, "pump-3");
    expect("3", "HGET", key, "count");
    expect("-4.25", "HGET", key, "min");
    expect("30", "HGET", key, "max");
    expect("30", "HGET", key, "last_value");
    cache_agg_format_ts(t0 + 5000000, ts);
    expect(ts, "HGET", key, "last_ts");
    cache_agg_key_sensors(key, sizeof(key), P1);
    expect("2", "SCARD", key, NULL);
    expect("1", "SISMEMBER", key, "fan-1");
    snprintf(n, sizeof(n), "%d", 16);
    expect(n, "HGET", "sb:agg:offset:test", TOPIC ":3");

    /* A later chunk with an older reading does not move last_ts, but counts. */
    cache_agg_item_t older = reading(17, P1, "pump-3", t0, 100);
    cr_assert_eq(cache_agg_writer_add(w, TOPIC, 3, 17, 17, &older, 1), 0);
    cr_assert_eq(cache_agg_writer_flush(w), 0);
    cache_agg_key_sensor(key, sizeof(key), P1, "pump-3");
    expect("4", "HGET", key, "count");
    expect("100", "HGET", key, "max");
    expect("30", "HGET", key, "last_value");
    cr_assert_eq(cache_agg_writer_stats(w)->gap_offsets, 0);
    cache_agg_writer_free(w);
}

Test(cache_agg, replays_count_once_whatever_the_batch_boundaries, .init = setup, .fini = teardown)
{
    int64_t t0 = now_us();
    cache_agg_item_t items[100];
    fill(items, t0);

    /* First life: offsets 0..59 applied in two batches. */
    cache_agg_writer_t *w = new_writer(1000);
    cr_assert_eq(cache_agg_writer_add(w, TOPIC, 0, 0, 29, items, 30), 0);
    cr_assert_eq(cache_agg_writer_add(w, TOPIC, 0, 30, 59, items + 30, 30), 0);
    cr_assert_eq(cache_agg_writer_flush(w), 0);
    cache_agg_writer_free(w);

    /* A restarted daemon gets 20..99 again, cut differently: only 60..99 count. */
    w = new_writer(1000);
    cr_assert_eq(cache_agg_writer_add(w, TOPIC, 0, 20, 69, items + 20, 50), 0);
    cr_assert_eq(cache_agg_writer_add(w, TOPIC, 0, 70, 99, items + 70, 30), 0);
    cr_assert_eq(cache_agg_writer_add(w, TOPIC, 0, 50, 99, items + 50, 50), 0, "overlap");
    cr_assert_eq(cache_agg_writer_pending(w), 80, "the overlapping add added nothing");
    cr_assert_eq(cache_agg_writer_flush(w), 0, "%s", cache_errmsg(cache));
    cr_assert_eq(cache_agg_writer_stats(w)->skipped, 40);
    cr_assert_eq(cache_agg_writer_stats(w)->applied, 40);
    cr_assert_eq(cache_agg_writer_stats(w)->gap_offsets, 0);

    /* Everything once more: nothing changes. */
    cr_assert_eq(cache_agg_writer_add(w, TOPIC, 0, 0, 99, items, 100), 0);
    cr_assert_eq(cache_agg_writer_flush(w), 0);
    cache_agg_writer_free(w);

    char key[CACHE_AGG_KEY_MAX];
    for (int s = 0; s < 5; s++) {
        char sensor[8];
        snprintf(sensor, sizeof(sensor), "s%d", s);
        cache_agg_key_sensor(key, sizeof(key), P1, sensor);
        expect("20", "HGET", key, "count");
    }
    cache_agg_key_rpm(key, sizeof(key), P1, cache_agg_minute(t0));
    char *a = get("GET", key, NULL);
    cache_agg_key_rpm(key, sizeof(key), P1, cache_agg_minute(t0) + 1);
    char *b = get("GET", key, NULL);
    cr_assert_eq((a ? atoi(a) : 0) + (b ? atoi(b) : 0), 100);
    free(a);
    free(b);
}

Test(cache_agg, large_batch_is_chunked_and_exact, .init = setup, .fini = teardown)
{
    enum { N = 5000 }; /* 3 operations each: several script calls */
    cache_agg_item_t *items = calloc(N, sizeof(*items));
    int64_t t0 = now_us();
    for (int i = 0; i < N; i++) {
        char sensor[16];
        snprintf(sensor, sizeof(sensor), "dev-%d", i);
        items[i] = reading(1000 + 2 * i, P1, sensor, t0, i); /* odd offsets: no reading */
    }
    cache_agg_writer_t *w = new_writer(N);
    cr_assert_eq(cache_agg_writer_add(w, TOPIC, 1, 1000, 1000 + 2 * N, items, N), 0);
    cr_assert_eq(cache_agg_writer_flush(w), 0, "%s", cache_errmsg(cache));
    cr_assert_gt(cache_agg_writer_stats(w)->calls, 2);
    cr_assert_eq(cache_agg_writer_stats(w)->gap_offsets, 0, "chunks are contiguous");
    cr_assert_eq(cache_agg_writer_stats(w)->applied, N);
    char key[CACHE_AGG_KEY_MAX], n[32];
    cache_agg_key_sensors(key, sizeof(key), P1);
    snprintf(n, sizeof(n), "%d", N);
    expect(n, "SCARD", key, NULL);
    snprintf(n, sizeof(n), "%d", 1000 + 2 * N);
    expect(n, "HGET", "sb:agg:offset:test", TOPIC ":1");
    cache_agg_writer_free(w);
    free(items);
}

Test(cache_agg, anomalies_count_total_and_checks, .init = setup, .fini = teardown)
{
    cache_agg_item_t a[] = {{.offset = 5, .kind = CACHE_AGG_ANOMALY, .name = "zscore"},
                            {.offset = 9, .kind = CACHE_AGG_ANOMALY, .name = "limit_high,rate"},
                            {.offset = 12, .kind = CACHE_AGG_ANOMALY, .name = "zscore,rate"}};
    for (int i = 0; i < 3; i++)
        memcpy(a[i].project_id, P2, 37);
    cache_agg_writer_t *w = new_writer(100);
    cr_assert_eq(cache_agg_writer_add(w, TOPIC, 2, 0, 20, a, 3), 0);
    cr_assert_eq(cache_agg_writer_flush(w), 0);
    expect("3", "HGET", "sb:anomalies:" P2, "total");
    expect("2", "HGET", "sb:anomalies:" P2, "zscore");
    expect("2", "HGET", "sb:anomalies:" P2, "rate");
    expect("1", "HGET", "sb:anomalies:" P2, "limit_high");
    expect(NULL, "HGET", "sb:anomalies:" P2, "limit_low");
    cache_agg_writer_free(w);
}

Test(cache_agg, rebuild_lock_pauses_the_writer, .init = setup, .fini = teardown)
{
    cache_agg_item_t items[100];
    fill(items, now_us());
    cache_agg_writer_t *w = new_writer(1000);

    cr_assert_eq(cache_agg_lock(cache, "tok-1", 10000), 0);
    cr_assert_eq(cache_agg_lock(cache, "tok-2", 10000), -EBUSY, "one rebuild at a time");
    cr_assert_eq(cache_agg_lock_refresh(cache, "tok-2", 10000), -ENOLCK);
    cr_assert_eq(cache_agg_unlock(cache, "tok-2"), -ENOLCK, "only the holder unlocks");
    cr_assert_eq(cache_agg_lock_refresh(cache, "tok-1", 20000), 0);

    cr_assert_eq(cache_agg_writer_add(w, TOPIC, 0, 0, 99, items, 100), 0);
    cr_assert_eq(cache_agg_writer_flush(w), -EBUSY);
    cr_assert_eq(cache_agg_writer_pending(w), 100, "kept for later");
    expect(NULL, "HGET", "sb:agg:offset:test", TOPIC ":0");
    expect(NULL, "HGET", "sb:sensor:" P1 ":s0", "count");

    cr_assert_eq(cache_agg_unlock(cache, "tok-1"), 0);
    cr_assert_eq(cache_agg_writer_flush(w), 0);
    expect("20", "HGET", "sb:sensor:" P1 ":s0", "count");
    expect("99", "HGET", "sb:agg:offset:test", TOPIC ":0");
    cache_agg_writer_free(w);
}

Test(cache_agg, redis_down_keeps_items_until_it_is_back, .init = setup, .fini = teardown)
{
    cache_agg_item_t items[100];
    fill(items, now_us());
    cache_agg_writer_t *w = new_writer(1000);
    int port = srv.port;

    server_kill(&srv);
    cr_assert_eq(cache_agg_writer_add(w, TOPIC, 0, 0, 49, items, 50), 0);
    int r = cache_agg_writer_flush(w);
    cr_assert_lt(r, 0);
    cr_assert_eq(cache_agg_writer_flush(w), r, "backing off: the same answer without trying");
    cr_assert_eq(cache_agg_writer_add(w, TOPIC, 0, 50, 99, items + 50, 50), 0);
    cr_assert_eq(cache_agg_writer_pending(w), 100);

    server_start(&srv, port, NULL, NULL);
    long long deadline = now_ms() + 10000;
    while ((r = cache_agg_writer_flush(w)) != 0 && now_ms() < deadline)
        usleep(20000);
    cr_assert_eq(r, 0, "%s", cache_errmsg(cache));
    expect("20", "HGET", "sb:sensor:" P1 ":s4", "count");
    expect("99", "HGET", "sb:agg:offset:test", TOPIC ":0");
    cache_agg_writer_free(w);
}

Test(cache_agg, items_beyond_the_cap_are_dropped_and_show_as_a_gap, .init = setup, .fini = teardown)
{
    cache_agg_item_t items[100];
    fill(items, now_us());
    cache_agg_writer_t *w = new_writer(60);

    cr_assert_eq(cache_agg_writer_add(w, TOPIC, 0, 0, 9, items, 10), 0);
    cr_assert_eq(cache_agg_writer_flush(w), 0);
    cr_assert_eq(cache_agg_lock(cache, "tok", 10000), 0); /* hold the items back */
    cr_assert_eq(cache_agg_writer_add(w, TOPIC, 0, 10, 49, items + 10, 40), 0);
    cr_assert_eq(cache_agg_writer_flush(w), -EBUSY);
    cr_assert_eq(cache_agg_writer_add(w, TOPIC, 0, 50, 99, items + 50, 50), 0);
    cr_assert_eq(cache_agg_writer_stats(w)->dropped, 40);
    cr_assert_eq(cache_agg_writer_pending(w), 50);
    cr_assert_eq(cache_agg_unlock(cache, "tok"), 0);
    cr_assert_eq(cache_agg_writer_flush(w), 0);
    cr_assert_eq(cache_agg_writer_stats(w)->gap_offsets, 40, "offsets 10..49 never applied");

    /* A revoked partition's items are given up as well. */
    cr_assert_eq(cache_agg_writer_add(w, TOPIC, 5, 0, 0, items, 1), 0);
    cache_agg_writer_drop(w, TOPIC, 5);
    cr_assert(cache_agg_writer_idle(w));
    cr_assert_eq(cache_agg_writer_stats(w)->dropped, 41);
    cache_agg_writer_free(w);
}

Test(cache_agg, a_key_of_the_wrong_type_writes_nothing_of_its_chunk, .init = setup,
     .fini = teardown)
{
    cache_agg_item_t items[100];
    fill(items, now_us());
    cache_agg_writer_t *w = new_writer(1000);
    const char *argv[] = {"SET", "sb:sensors:" P1, "not a set"};
    cr_assert_eq(cache_command(cache, 3, argv, NULL, NULL), 0);

    cr_assert_eq(cache_agg_writer_add(w, TOPIC, 0, 0, 9, items, 10), 0);
    cr_assert_eq(cache_agg_writer_flush(w), -EINVAL);
    cr_assert(strstr(cache_errmsg(cache), "WRONGTYPE"), "%s", cache_errmsg(cache));
    expect(NULL, "HGET", "sb:sensor:" P1 ":s0", "count");
    cr_assert_eq(cache_agg_writer_stats(w)->dropped, 10);
    cr_assert(cache_agg_writer_idle(w));
    cache_agg_writer_free(w);
}

Test(cache_agg, script_cache_flush_is_survived, .init = setup, .fini = teardown)
{
    cache_agg_item_t items[100];
    fill(items, now_us());
    cache_agg_writer_t *w = new_writer(1000);
    cr_assert_eq(cache_agg_writer_add(w, TOPIC, 0, 0, 9, items, 10), 0);
    cr_assert_eq(cache_agg_writer_flush(w), 0);
    const char *argv[] = {"SCRIPT", "FLUSH"};
    cr_assert_eq(cache_command(cache, 2, argv, NULL, NULL), 0);
    cr_assert_eq(cache_agg_writer_add(w, TOPIC, 0, 10, 19, items + 10, 10), 0);
    cr_assert_eq(cache_agg_writer_flush(w), 0, "%s", cache_errmsg(cache));
    expect("4", "HGET", "sb:sensor:" P1 ":s0", "count");
    cache_agg_writer_free(w);
}

Test(cache_agg, bad_input_is_refused, .init = setup, .fini = teardown)
{
    cache_agg_writer_t *w = new_writer(10);
    cache_agg_item_t items[2] = {reading(5, P1, "a", 0, 1), reading(4, P1, "a", 0, 1)};
    cr_assert_eq(cache_agg_writer_add(w, TOPIC, 0, 0, 9, items, 2), -EINVAL, "out of order");
    cr_assert_eq(cache_agg_writer_add(w, TOPIC, 0, 6, 9, items, 1), -EINVAL, "out of range");
    cr_assert_eq(cache_agg_writer_add(w, TOPIC, 0, 9, 8, NULL, 0), -EINVAL);
    items[0].value = NAN;
    cr_assert_eq(cache_agg_writer_add(w, TOPIC, 0, 0, 9, items, 1), -EINVAL);
    cr_assert(cache_agg_writer_idle(w));
    cache_agg_writer_free(w);
    cache_agg_writer_free(NULL);
}
