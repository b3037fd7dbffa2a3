/* bus_test.h: helpers shared by the libs/bus tests: a librdkafka mock cluster, hand-built
 * svc_conf_t values and a plain consumer that reads a topic back. */
#pragma once

#include <stdarg.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <criterion/criterion.h>
#include <librdkafka/rdkafka.h>
#include <librdkafka/rdkafka_mock.h>

#include "svc_config.h"

typedef struct mock {
    rd_kafka_t *rk; /* the handle that hosts the cluster */
    rd_kafka_mock_cluster_t *mcluster;
    const char *bootstraps;
} mock_t;

static inline int64_t test_now_ms(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static inline void test_nap(void)
{
    nanosleep(&(struct timespec){0, 10 * 1000000}, NULL);
}

/* Polls @cond every 10 ms until it holds or @timeout_ms passed; returns its last value. */
#define WAIT_UNTIL(cond, timeout_ms)                      \
    ({                                                    \
        int64_t deadline_ = test_now_ms() + (timeout_ms); \
        while (!(cond) && test_now_ms() < deadline_)      \
            test_nap();                                   \
        (cond);                                           \
    })

static inline void mock_start(mock_t *m)
{
    char errstr[256];
    rd_kafka_conf_t *kconf = rd_kafka_conf_new();

    rd_kafka_conf_set(kconf, "log_level", "3", errstr, sizeof(errstr));
    m->rk = rd_kafka_new(RD_KAFKA_PRODUCER, kconf, errstr, sizeof(errstr));
    cr_assert(m->rk, "rd_kafka_new: %s", errstr);
    m->mcluster = rd_kafka_mock_cluster_new(m->rk, 1);
    cr_assert(m->mcluster);
    m->bootstraps = rd_kafka_mock_cluster_bootstraps(m->mcluster);
}

static inline void mock_stop(mock_t *m)
{
    rd_kafka_mock_cluster_destroy(m->mcluster);
    rd_kafka_destroy(m->rk);
}

static inline void mock_topic(mock_t *m, const char *topic, int partitions)
{
    cr_assert_eq(rd_kafka_mock_topic_create(m->mcluster, topic, partitions, 1), 0);
}

/* A svc_conf_t as svc_conf_load() would hand it over; pairs of key, value, ending in NULL. */
typedef struct test_conf {
    svc_conf_kv_t kv[16];
    svc_conf_t conf;
} test_conf_t;

static inline void test_conf_init(test_conf_t *t, const char *key, ...)
{
    va_list ap;
    size_t n = 0;

    va_start(ap, key);
    for (; key && n < 16; key = va_arg(ap, const char *), n++) {
        t->kv[n].key = (char *)key;
        t->kv[n].value = (char *)va_arg(ap, const char *);
    }
    va_end(ap);
    t->conf = (svc_conf_t){t->kv, n};
}

/* A record read back, owned by the test: free with read_rec_free(). */
typedef struct read_rec {
    int32_t partition;
    int64_t offset;
    char *value; /* NUL-terminated copy */
    rd_kafka_headers_t *hdrs;
} read_rec_t;

static inline void read_rec_free(read_rec_t *r, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        free(r[i].value);
        if (r[i].hdrs)
            rd_kafka_headers_destroy(r[i].hdrs);
    }
}

/* The first header @name of @r as a NUL-terminated static copy, or NULL. */
static inline const char *read_rec_header(const read_rec_t *r, const char *name)
{
    static char buf[512];
    const void *v;
    size_t len;

    if (!r->hdrs || rd_kafka_header_get(r->hdrs, 0, name, &v, &len) != 0)
        return NULL;
    snprintf(buf, sizeof(buf), "%.*s", (int)len, (const char *)v);
    return buf;
}

/* Reads the records of partitions 0..@partitions-1 of @topic (at most @count), from the
 * beginning to the end each partition had when reached, with a consumer outside any group.
 * Returns how many were read; gives up after @timeout_ms. */
static inline size_t topic_read(const char *bootstraps, const char *topic, int partitions,
                                read_rec_t *out, size_t count, int timeout_ms)
{
    char errstr[256];
    rd_kafka_conf_t *kconf = rd_kafka_conf_new();
    rd_kafka_topic_partition_list_t *parts = rd_kafka_topic_partition_list_new(partitions);
    int64_t deadline = test_now_ms() + timeout_ms;
    bool eof[64] = {false};
    int neof = 0;
    size_t n = 0;
    rd_kafka_t *rk;

    cr_assert(partitions <= 64);
    rd_kafka_conf_set(kconf, "bootstrap.servers", bootstraps, errstr, sizeof(errstr));
    rd_kafka_conf_set(kconf, "group.id", "reader", errstr, sizeof(errstr));
    rd_kafka_conf_set(kconf, "enable.partition.eof", "true", errstr, sizeof(errstr));
    rk = rd_kafka_new(RD_KAFKA_CONSUMER, kconf, errstr, sizeof(errstr));
    cr_assert(rk, "%s", errstr);
    for (int p = 0; p < partitions; p++)
        rd_kafka_topic_partition_list_add(parts, topic, p)->offset = RD_KAFKA_OFFSET_BEGINNING;
    cr_assert_eq(rd_kafka_assign(rk, parts), 0);
    rd_kafka_topic_partition_list_destroy(parts);
    while (n < count && neof < partitions && test_now_ms() < deadline) {
        rd_kafka_message_t *rkm = rd_kafka_consumer_poll(rk, 100);

        if (!rkm)
            continue;
        if (rkm->err == RD_KAFKA_RESP_ERR__PARTITION_EOF && !eof[rkm->partition]) {
            eof[rkm->partition] = true;
            neof++;
        } else if (!rkm->err) {
            read_rec_t *r = &out[n++];

            r->partition = rkm->partition;
            r->offset = rkm->offset;
            r->value = strndup(rkm->payload ? rkm->payload : "", rkm->len);
            r->hdrs = NULL;
            rd_kafka_message_detach_headers(rkm, &r->hdrs);
        }
        rd_kafka_message_destroy(rkm);
    }
    rd_kafka_consumer_close(rk);
    rd_kafka_destroy(rk);
    return n;
}

/* Committed offset of @group for one partition (-1001 when none). */
static inline int64_t committed_offset(const char *bootstraps, const char *group, const char *topic,
                                       int partition)
{
    char errstr[256];
    rd_kafka_conf_t *kconf = rd_kafka_conf_new();
    rd_kafka_topic_partition_list_t *parts = rd_kafka_topic_partition_list_new(1);
    int64_t offset;
    rd_kafka_t *rk;

    rd_kafka_conf_set(kconf, "bootstrap.servers", bootstraps, errstr, sizeof(errstr));
    rd_kafka_conf_set(kconf, "group.id", group, errstr, sizeof(errstr));
    rk = rd_kafka_new(RD_KAFKA_CONSUMER, kconf, errstr, sizeof(errstr));
    cr_assert(rk, "%s", errstr);
    rd_kafka_topic_partition_list_add(parts, topic, partition);
    cr_assert_eq(rd_kafka_committed(rk, parts, 10000), 0);
    offset = parts->elems[0].offset;
    rd_kafka_topic_partition_list_destroy(parts);
    rd_kafka_destroy(rk);
    return offset;
}

static inline int64_t high_watermark(const char *bootstraps, const char *topic, int partition)
{
    char errstr[256];
    rd_kafka_conf_t *kconf = rd_kafka_conf_new();
    int64_t lo = -1, hi = -1;
    rd_kafka_t *rk;

    rd_kafka_conf_set(kconf, "bootstrap.servers", bootstraps, errstr, sizeof(errstr));
    rk = rd_kafka_new(RD_KAFKA_PRODUCER, kconf, errstr, sizeof(errstr));
    cr_assert(rk, "%s", errstr);
    cr_assert_eq(rd_kafka_query_watermark_offsets(rk, topic, partition, &lo, &hi, 10000), 0);
    rd_kafka_destroy(rk);
    return hi;
}
