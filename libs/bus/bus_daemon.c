/* bus_daemon.c: the common body of every consumer daemon (see bus_daemon.h). */
#include "bus_daemon.h"

#include <errno.h>
#include <pthread.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "svc_lifecycle.h"
#include "svc_log.h"
#include "svc_util.h"

#define PRODUCER_CLOSE_MS 10000

/* The runtime's own settings; the defaults depend on the descriptor, so the table is built at
 * start-up. */
typedef struct bus_daemon_conf {
    char *topics;
    char *group_id;
    char *dlq_topic;
    int64_t batch_max;
    int64_t batch_ms;
    char *health_listen;
    char *log_level;
} bus_daemon_conf_t;

struct bus_daemon {
    const bus_daemon_desc_t *desc;
    bus_daemon_conf_t common;
    svc_conf_entry_t table[8];
    char def_group[256], def_dlq[256], def_batch_max[32], def_batch_ms[32];
    void *conf; /* desc->conf_size bytes, filled by desc->conf */
    svc_conf_t *kconf;
    char **topics;

    svc_metrics_t *metrics;
    svc_health_t *health;
    bus_consumer_t *consumer;
    pthread_mutex_t producer_lock;
    bus_producer_t *producer;
    void *state;

    svc_metric_t *m_records, *m_batches, *m_retries, *m_dlq, *m_batch_seconds;
};

static void kafka_log(int level, const char *fac, const char *msg)
{
    /* syslog levels: 0-3 error, 4 warning, 5-6 notice/info, 7 debug. */
    svc_log_level_t l = level <= 3   ? SVC_LOG_ERROR
                        : level == 4 ? SVC_LOG_WARN
                        : level <= 6 ? SVC_LOG_INFO
                                     : SVC_LOG_DEBUG;

    svc_log(l, "librdkafka %s: %s", fac, msg);
}

static void table_build(bus_daemon_t *d)
{
    const bus_daemon_desc_t *desc = d->desc;
    int i = 0;

    snprintf(d->def_group, sizeof(d->def_group), "sb-%s", desc->name);
    snprintf(d->def_dlq, sizeof(d->def_dlq), "dlq.%s.v1", desc->name);
    snprintf(d->def_batch_max, sizeof(d->def_batch_max), "%zu",
             desc->batch_max ? desc->batch_max : 500);
    snprintf(d->def_batch_ms, sizeof(d->def_batch_ms), "%d", desc->batch_ms);

#define ENTRY(t, n, def, field, help, lo, hi)                                                  \
    d->table[i++] = (svc_conf_entry_t){(t),    (n), (def), offsetof(bus_daemon_conf_t, field), \
                                       (help), 0,   (lo),  (hi)}
    ENTRY(SVC_CONF_STR, "topics", desc->topics, topics, "comma-separated topics to consume", 0, 0);
    ENTRY(SVC_CONF_STR, "group_id", d->def_group, group_id, "Kafka consumer group", 0, 0);
    ENTRY(SVC_CONF_STR, "dlq_topic", d->def_dlq, dlq_topic,
          "dead-letter topic for records that can never be processed", 0, 0);
    ENTRY(SVC_CONF_INT, "batch_max", d->def_batch_max, batch_max, "records per batch", 1, 1000000);
    ENTRY(SVC_CONF_INT, "batch_ms", d->def_batch_ms, batch_ms,
          "longest time in ms a batch waits to fill", 0, 600000);
    ENTRY(SVC_CONF_STR, "health_listen", "127.0.0.1:0", health_listen,
          "host:port of /healthz, /readyz and /metrics", 0, 0);
    ENTRY(SVC_CONF_STR, "log_level", "info", log_level, "debug, info, warn or error", 0, 0);
#undef ENTRY
    d->table[i] = (svc_conf_entry_t){.type = SVC_CONF_END};
}

/* Splits "a, b,c" into a NULL-terminated array; -EINVAL when no topic is named. */
static int topics_split(const char *s, char ***ret_topics)
{
    char *copy = strdup(s ? s : ""), *save = NULL, *tok;
    char **topics = calloc(strlen(s ? s : "") / 2 + 2, sizeof(*topics));
    size_t n = 0;
    int r = -ENOMEM;

    if (!copy || !topics)
        goto fail;
    for (tok = strtok_r(copy, ",", &save); tok; tok = strtok_r(NULL, ",", &save)) {
        tok += strspn(tok, " \t");
        tok[strcspn(tok, " \t")] = '\0';
        if (*tok && !(topics[n++] = strdup(tok)))
            goto fail;
    }
    r = -EINVAL;
    if (n == 0)
        goto fail;
    free(copy);
    *ret_topics = topics;
    return 0;
fail:
    for (size_t i = 0; topics && i < n; i++)
        free(topics[i]);
    free(topics);
    free(copy);
    return r;
}

static int handle_batch(void *opaque, bus_record_t *recs, size_t n)
{
    bus_daemon_t *d = opaque;
    int64_t t0 = svc_now_ms();
    int r = d->desc->handle_batch(d->state, recs, n);

    svc_metric_observe(d->m_batch_seconds, (double)(svc_now_ms() - t0) / 1000.0);
    return r;
}

static void on_assign(void *opaque, const rd_kafka_topic_partition_list_t *parts)
{
    bus_daemon_t *d = opaque;

    if (d->desc->on_assign)
        d->desc->on_assign(d->state, parts);
}

static void on_tick(void *opaque)
{
    bus_daemon_t *d = opaque;

    if (d->desc->tick)
        d->desc->tick(d->state);
}

static void on_revoke(void *opaque, const rd_kafka_topic_partition_list_t *parts)
{
    bus_daemon_t *d = opaque;

    if (d->desc->on_revoke)
        d->desc->on_revoke(d->state, parts);
}

static void on_revoke_flush(void *opaque, const rd_kafka_topic_partition_list_t *parts)
{
    bus_daemon_t *d = opaque;

    if (d->state) /* the close after a failed init revokes nothing the daemon holds */
        d->desc->on_revoke_flush(d->state, parts);
}

static void on_event(void *opaque, bus_event_t ev, long detail, const char *text)
{
    bus_daemon_t *d = opaque;

    switch (ev) {
    case BUS_EV_ASSIGNED:
        log_info("assigned %ld partitions", detail);
        svc_health_set(d->health, "kafka", bus_consumer_assigned(d->consumer));
        break;
    case BUS_EV_REVOKED:
        log_info("revoked %ld partitions", detail);
        svc_health_set(d->health, "kafka", bus_consumer_assigned(d->consumer));
        break;
    case BUS_EV_BATCH_OK:
        svc_metric_add(d->m_records, (double)detail);
        svc_metric_inc(d->m_batches);
        break;
    case BUS_EV_BATCH_RETRY:
        svc_metric_inc(d->m_retries);
        log_warn("batch of %s failed, retrying after backoff: %s", text, strerror((int)-detail));
        break;
    case BUS_EV_DLQ:
        svc_metric_add(d->m_dlq, (double)detail);
        log_warn("sent %ld records to dead-letter topic %s", detail, d->common.dlq_topic);
        break;
    case BUS_EV_ERROR:
        log_warn("kafka: %s", text);
        break;
    }
}

static int metrics_register(bus_daemon_t *d)
{
    char labels[256];

    snprintf(labels, sizeof(labels), "consumer=\"%s\"", d->desc->name);
    d->m_records = svc_metrics_counter(d->metrics, "sb_consumer_records_total",
                                       "Records processed successfully.", labels);
    d->m_batches = svc_metrics_counter(d->metrics, "sb_consumer_batches_total",
                                       "Batches processed successfully.", labels);
    d->m_retries = svc_metrics_counter(d->metrics, "sb_consumer_batch_retries_total",
                                       "Batches that failed transiently and were retried.", labels);
    d->m_dlq = svc_metrics_counter(d->metrics, "sb_consumer_dlq_total",
                                   "Records sent to the dead-letter topic.", labels);
    d->m_batch_seconds = svc_metrics_histogram(
        d->metrics, "sb_consumer_batch_seconds", "Time the handler spent on one batch.", labels,
        svc_metrics_latency_bounds, svc_metrics_latency_nbounds);
    if (!d->m_records || !d->m_batches || !d->m_retries || !d->m_dlq || !d->m_batch_seconds)
        return -ENOMEM;
    return 0;
}

svc_health_t *bus_daemon_health(bus_daemon_t *d)
{
    return d->health;
}

svc_metrics_t *bus_daemon_metrics(bus_daemon_t *d)
{
    return d->metrics;
}

const svc_conf_t *bus_daemon_conf(bus_daemon_t *d)
{
    return d->kconf;
}

int bus_daemon_offsets_store(bus_daemon_t *d, const char *topic, int32_t partition,
                             int64_t next_offset)
{
    return bus_consumer_offsets_store(d->consumer, topic, partition, next_offset);
}

bus_producer_t *bus_daemon_producer(bus_daemon_t *d)
{
    char errbuf[512];

    pthread_mutex_lock(&d->producer_lock);
    if (!d->producer && bus_producer_new(d->kconf, &d->producer, errbuf, sizeof(errbuf)) < 0)
        log_error("cannot create producer: %s", errbuf);
    pthread_mutex_unlock(&d->producer_lock);
    return d->producer;
}

int bus_daemon_main(const bus_daemon_desc_t *desc, int argc, char **argv)
{
    bus_daemon_t *d = NULL;
    svc_conf_section_t sections[2];
    size_t nsections = 1;
    svc_log_level_t level;
    char errbuf[512], host[256];
    int port, r, status = 1;

    r = svc_lifecycle_init();
    if (r < 0) {
        fprintf(stderr, "%s: cannot install signal handlers: %s\n", desc->name, strerror(-r));
        return 1;
    }
    d = calloc(1, sizeof(*d));
    if (d)
        pthread_mutex_init(&d->producer_lock, NULL);
    if (!d || (desc->conf_size && !(d->conf = calloc(1, desc->conf_size)))) {
        fprintf(stderr, "%s: out of memory\n", desc->name);
        goto out;
    }
    d->desc = desc;
    table_build(d);
    sections[0] = (svc_conf_section_t){d->table, &d->common};
    if (desc->conf)
        sections[nsections++] = (svc_conf_section_t){desc->conf, d->conf};

    r = svc_conf_load(desc->name, desc->summary, sections, nsections, argc, argv, &d->kconf, errbuf,
                      sizeof(errbuf));
    if (r == 1) {
        status = 0; /* --help */
        goto out;
    }
    status = 2;
    if (r < 0) {
        fprintf(stderr, "%s: %s\n", desc->name, errbuf);
        goto out;
    }
    if (svc_log_level_parse(d->common.log_level, &level) < 0) {
        fprintf(stderr, "%s: log_level: '%s' is not one of debug, info, warn, error\n", desc->name,
                d->common.log_level);
        goto out;
    }
    if (svc_parse_hostport(d->common.health_listen, host, sizeof(host), &port) < 0) {
        fprintf(stderr, "%s: health_listen: '%s' is not host:port\n", desc->name,
                d->common.health_listen);
        goto out;
    }
    if (topics_split(d->common.topics, &d->topics) < 0) {
        fprintf(stderr, "%s: topics: name at least one topic\n", desc->name);
        goto out;
    }
    svc_log_init(desc->name, level);
    bus_set_log_fn(kafka_log);

    status = 1;
    d->metrics = svc_metrics_default();
    if (metrics_register(d) < 0) {
        log_error("cannot register metrics");
        goto out;
    }
    r = svc_health_new(host, port, d->metrics, &d->health);
    if (r < 0) {
        log_error("cannot serve health on %s:%d: %s", host, port, strerror(-r));
        goto out;
    }
    svc_health_set(d->health, "kafka", false);
    log_info("health, readiness and metrics on http://%s:%d", host, svc_health_port(d->health));

    r = bus_consumer_new(d->kconf,
                         &(bus_consumer_opts_t){
                             .group_id = d->common.group_id,
                             .topics = (const char *const *)d->topics,
                             .dlq_topic = d->common.dlq_topic,
                             .consumer_name = desc->name,
                             .batch_max = (size_t)d->common.batch_max,
                             .batch_ms = (int)d->common.batch_ms,
                             .handle_batch = handle_batch,
                             .on_assign = on_assign,
                             .on_revoke = on_revoke,
                             .on_tick = on_tick,
                             .manual_offsets = desc->manual_offsets,
                             .on_revoke_flush = desc->on_revoke_flush ? on_revoke_flush : NULL,
                             .opaque = d,
                         },
                         &d->consumer, errbuf, sizeof(errbuf));
    if (r < 0) {
        log_error("cannot create consumer: %s", errbuf);
        status = r == -EINVAL ? 2 : 1;
        goto out;
    }
    bus_consumer_set_event_cb(d->consumer, on_event, d);

    if (desc->init && (r = desc->init(d, d->conf, &d->state)) < 0)
        goto out; /* init logged the reason */

    log_info("consuming %s as group %s", d->common.topics, d->common.group_id);
    r = bus_consumer_run(d->consumer, svc_stopping);
    if (r < 0) {
        log_error("consumer stopped on a fatal error: %s", strerror(-r));
        goto out;
    }
    log_info("stopping: offsets committed");
    status = 0;
out:
    if (d) {
        /* librdkafka's order: the consumer finishes, commits and leaves the group first; the
         * daemon's own output is flushed before its state goes away. */
        bus_consumer_free(d->consumer);
        bus_producer_free(d->producer, PRODUCER_CLOSE_MS);
        if (desc->fini && d->state)
            desc->fini(d->state);
        svc_health_free(d->health);
        for (size_t i = 0; d->topics && d->topics[i]; i++)
            free(d->topics[i]);
        free(d->topics);
        if (desc->conf)
            svc_conf_target_free(desc->conf, d->conf);
        svc_conf_target_free(d->table, &d->common);
        svc_conf_free(d->kconf);
        pthread_mutex_destroy(&d->producer_lock);
        free(d->conf);
        free(d);
    }
    return status;
}
