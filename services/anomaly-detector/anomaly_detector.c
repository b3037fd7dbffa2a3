/* sb-anomaly-detector: sensor.readings.v1 -> anomalies.v1, PostgreSQL `anomalies`, Redis counters.
 *
 * Each assigned partition has its own detector_t (readings of a sensor share a partition, so the
 * statistics are never shared between threads or partitions). On assignment the partition's
 * state is restored from its latest snapshot in `detector_snapshots` when that is recent (else
 * its sensors warm up again); it is snapshotted on revocation, at shutdown and periodically.
 * The sensors' registration (type, hard limits) and the thresholds per type come from
 * PostgreSQL (registry.h), reloaded every refresh_ms.
 *
 * For every anomaly of a batch, in this order:
 *   1. a record on anomalies.v1, and the handler waits for the broker's acknowledgement;
 *   2. a row in `anomalies`, one transaction per batch; a conflicting row is left alone unless
 *      it was written by the same Kafka record (a redelivery), which the statement reports;
 *   3. the counters sb:anomalies:<project_id> total/<check>, through a cache_agg writer that
 *      applies each offset once (cache_agg.h), for the rows the batch's records own.
 * The handler returns 0 (offsets stored) only once 1 and 2 succeeded; a failure of either makes
 * the whole batch come again, and the duplicates it makes are harmless: the row's primary key is
 * (project_id, reading_id) and the topic's consumers dedupe by reading_id. Redis never holds back
 * a batch: the writer keeps the counters while it is down and applies them later.
 *
 * A redelivered batch must not teach the detector the same readings twice (it would pull the
 * baseline and the rate check). So each partition remembers the next offset it has not observed
 * yet and the anomalies found in offsets not yet acknowledged: a record below that offset is
 * re-parsed (to reject it again if needed) but not observed, and its earlier verdict is reused.
 * A restored snapshot sets that offset too: records the snapshot has learnt are not learnt again
 * (their anomalies were acknowledged before the snapshot was taken).
 */
#include <errno.h>
#include <inttypes.h>
#include <math.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "bus_daemon.h"
#include "bus_producer.h"
#include "cache.h"
#include "cache_agg.h"
#include "contract.h"
#include "db.h"
#include "detector.h"
#include "registry.h"
#include "svc_log.h"
#include "svc_util.h"

/* The name of this consumer in detector_snapshots and sb:agg:offset:<consumer>. */
#define ANOMALY_CONSUMER "anomaly-detector"
/* Longer than the producer's message.timeout.ms (10 s), so every report has arrived. */
#define ANOMALY_FLUSH_MS       15000
#define ANOMALY_REQUEST_ID_MAX CONTRACT_REQUEST_ID_MAX

typedef struct anomaly_conf {
    char *pg_dsn;
    char *redis_url;
    double z_threshold;
    int64_t warmup;
    double alpha;
    char *anomalies_topic;
    int64_t refresh_ms;
    int64_t snapshot_interval_ms;
    int64_t snapshot_max_age_s;
    int64_t redis_timeout_ms;
    int64_t aggregates_max_pending;
} anomaly_conf_t;

static const svc_conf_entry_t anomaly_conf_table[] = {
    {SVC_CONF_STR, "pg_dsn", NULL, offsetof(anomaly_conf_t, pg_dsn),
     "PostgreSQL connection string (libpq key=value or URI), required", SVC_CONF_SECRET, 0, 0},
    {SVC_CONF_STR, "redis_url", "redis://127.0.0.1:6379/0", offsetof(anomaly_conf_t, redis_url),
     "Redis for the anomaly counters, redis://[[user]:password@]host[:port][/db]", SVC_CONF_SECRET,
     0, 0},
    {SVC_CONF_DOUBLE, "z_threshold", "4.5", offsetof(anomaly_conf_t, z_threshold),
     "|z-score| threshold while detector_thresholds has no 'default' row, > 0", 0, 0, 0},
    {SVC_CONF_INT, "warmup", "30", offsetof(anomaly_conf_t, warmup),
     "warm-up in readings while detector_thresholds has no 'default' row, >= 2", 0, 0, 0},
    {SVC_CONF_DOUBLE, "alpha", "0.05", offsetof(anomaly_conf_t, alpha),
     "EWMA weight while detector_thresholds has no 'default' row, in (0, 1]", 0, 0, 0},
    {SVC_CONF_STR, "anomalies_topic", "anomalies.v1", offsetof(anomaly_conf_t, anomalies_topic),
     "topic the anomaly records are produced to", 0, 0, 0},
    {SVC_CONF_INT, "refresh_ms", "30000", offsetof(anomaly_conf_t, refresh_ms),
     "how often detector_thresholds and the registered sensors are reloaded", 0, 100, 86400000},
    {SVC_CONF_INT, "snapshot_interval_ms", "60000", offsetof(anomaly_conf_t, snapshot_interval_ms),
     "how often a partition's detector state is snapshotted (also on revocation)", 0, 100,
     86400000},
    {SVC_CONF_INT, "snapshot_max_age_s", "900", offsetof(anomaly_conf_t, snapshot_max_age_s),
     "a newly assigned partition restores a snapshot at most this old, else warms up", 0, 0,
     31536000},
    {SVC_CONF_INT, "redis_timeout_ms", "250", offsetof(anomaly_conf_t, redis_timeout_ms),
     "bound on each Redis connect, read and write", 0, 1, 60000},
    {SVC_CONF_INT, "aggregates_max_pending", "100000",
     offsetof(anomaly_conf_t, aggregates_max_pending),
     "anomalies whose Redis counters wait while Redis is unreachable; beyond, they are dropped "
     "(run sbctl aggregates rebuild)",
     0, 1, 100000000},
    {SVC_CONF_END, NULL, NULL, 0, NULL, 0, 0, 0},
};

/* The checks, in the order they are reported. */
static const struct {
    unsigned bit;
    const char *name;
} anomaly_checks[] = {
    {DETECTOR_ZSCORE, "zscore"},
    {DETECTOR_LIMIT_LOW, "limit_low"},
    {DETECTOR_LIMIT_HIGH, "limit_high"},
    {DETECTOR_RATE, "rate"},
};
#define ANOMALY_NCHECKS (sizeof(anomaly_checks) / sizeof(anomaly_checks[0]))

/* One reading of the batch, and the verdict on it. */
typedef struct anomaly_hit {
    bool valid;        /* parsed; false for a record sent to the dead-letter topic */
    const char *topic; /* its partition's (anomaly_part_t.topic), once observed */
    int32_t partition;
    int64_t offset;
    char org_id[37];
    char project_id[37];
    char reading_id[37];
    char sensor_id[CONTRACT_SENSOR_ID_MAX + 1];
    char request_id[ANOMALY_REQUEST_ID_MAX + 1]; /* "" when the record had none */
    int64_t ts_us;
    double value;
    detector_result_t res;
    int64_t detected_us;
} anomaly_hit_t;

typedef struct anomaly_hits {
    anomaly_hit_t *v;
    size_t n, cap;
} anomaly_hits_t;

/* The offsets a batch covers in one partition. */
typedef struct anomaly_span {
    const char *topic; /* borrowed from the batch */
    int32_t partition;
    int64_t lo, hi;
} anomaly_span_t;

/* The state of one assigned partition. */
typedef struct anomaly_part {
    char *topic;
    int32_t partition;
    detector_t *det;
    int64_t next_offset;    /* first offset not observed yet; -1 before the first record */
    anomaly_hits_t pending; /* anomalies at offsets < next_offset not yet acknowledged */
    int64_t snap_offset;    /* next_offset when the last snapshot was written or restored */
    int64_t snap_at_ms;     /* when (monotonic) */
} anomaly_part_t;

typedef struct anomaly {
    bus_daemon_t *d;
    const anomaly_conf_t *conf;
    detector_config_t fallback;       /* from the settings, while the table has no default */
    registry_thresholds_t thresholds; /* in force: thresholds.conf */
    registry_t *registry;
    int64_t next_refresh_ms;
    bool refresh_failing; /* log a failing reload once */
    db_t *db;
    cache_t *cache;
    cache_agg_writer_t *agg;
    cache_agg_stats_t agg_seen;
    bool redis_down; /* log the outage once, not once per batch */
    svc_health_t *health;
    svc_metric_t *m_observed, *m_rejected, *m_redis_failures, *m_checks[ANOMALY_NCHECKS];
    svc_metric_t *m_snap_saved, *m_snap_restored, *m_thr_changes, *m_agg_pending, *m_agg_dropped,
        *m_agg_gaps;
    anomaly_part_t *parts;
    size_t nparts, partscap;
    anomaly_hits_t parsed;                      /* every record of the batch being handled */
    anomaly_hits_t batch;                       /* its anomalies */
    cache_agg_item_t *items;                    /* the counters of one partition's anomalies */
    anomaly_span_t *spans;                      /* the partitions of the batch */
    const char **miss_projects, **miss_sensors; /* sensors the registry has never seen */
    atomic_int delivery_errors;
    atomic_int last_delivery_error;
} anomaly_t;

static int anomaly_hits_push(anomaly_hits_t *hits, const anomaly_hit_t *hit)
{
    if (hits->n == hits->cap) {
        size_t cap = hits->cap ? 2 * hits->cap : 16;
        anomaly_hit_t *v = realloc(hits->v, cap * sizeof(*v));
        if (!v)
            return -ENOMEM;
        hits->v = v;
        hits->cap = cap;
    }
    hits->v[hits->n++] = *hit;
    return 0;
}

static int anomaly_db_state(anomaly_t *st, int r)
{
    svc_health_set(st->health, "db", db_connected(st->db));
    return r;
}

/* --- partitions --------------------------------------------------------------------------------
 */

static anomaly_part_t *anomaly_part_find(anomaly_t *st, const char *topic, int32_t partition)
{
    for (size_t i = 0; i < st->nparts; i++)
        if (st->parts[i].partition == partition && !strcmp(st->parts[i].topic, topic))
            return &st->parts[i];
    return NULL;
}

static int anomaly_part_add(anomaly_t *st, const char *topic, int32_t partition,
                            anomaly_part_t **ret_part)
{
    anomaly_part_t *p = anomaly_part_find(st, topic, partition);
    int r;

    if (p) {
        *ret_part = p;
        return 0;
    }
    if (st->nparts == st->partscap) {
        size_t cap = st->partscap ? 2 * st->partscap : 8;
        anomaly_part_t *v = realloc(st->parts, cap * sizeof(*v));
        if (!v)
            return -ENOMEM;
        st->parts = v;
        st->partscap = cap;
    }
    p = &st->parts[st->nparts];
    *p = (anomaly_part_t){
        .partition = partition, .next_offset = -1, .snap_offset = -1, .snap_at_ms = svc_now_ms()};
    if (!(p->topic = strdup(topic)))
        return -ENOMEM;
    if ((r = detector_new(&st->thresholds.conf, &p->det)) < 0) {
        free(p->topic);
        return r;
    }
    st->nparts++;
    *ret_part = p;
    return 0;
}

static void anomaly_part_drop(anomaly_t *st, anomaly_part_t *p)
{
    detector_free(p->det);
    free(p->topic);
    free(p->pending.v);
    *p = st->parts[--st->nparts];
}

/* Writes the partition's state to detector_snapshots, when it has learnt something since the
 * last snapshot and every anomaly it found is acknowledged (so that whoever restores it may skip
 * the records below next_offset). Failures are logged: a missing snapshot only means a warm-up. */
static void anomaly_snapshot_save(anomaly_t *st, anomaly_part_t *p)
{
    p->snap_at_ms = svc_now_ms();
    if (p->next_offset < 0 || p->next_offset == p->snap_offset || p->pending.n > 0)
        return;
    int r = registry_snapshot_save(st->db, ANOMALY_CONSUMER, p->topic, p->partition, p->next_offset,
                                   p->det);
    if (r < 0) {
        log_warn("%s [%d]: detector snapshot not written: %s", p->topic, (int)p->partition,
                 r == -ENOMEM ? "out of memory" : db_errmsg(st->db));
        return;
    }
    p->snap_offset = p->next_offset;
    svc_metric_inc(st->m_snap_saved);
    log_debug("%s [%d]: snapshot of %zu sensors up to offset %lld", p->topic, (int)p->partition,
              detector_sensor_count(p->det), (long long)p->next_offset);
}

/* Restores a newly assigned partition from its snapshot when there is a recent one. */
static void anomaly_snapshot_restore(anomaly_t *st, anomaly_part_t *p)
{
    int64_t next_offset = 0, age = 0;
    size_t n = 0;
    int r = registry_snapshot_load(st->db, ANOMALY_CONSUMER, p->topic, p->partition,
                                   st->conf->snapshot_max_age_s, p->det, &next_offset, &n, &age);
    if (r == 1) {
        p->next_offset = p->snap_offset = next_offset;
        svc_metric_inc(st->m_snap_restored);
        log_info("%s [%d]: restored %zu sensors from a snapshot taken %lld s ago, up to offset "
                 "%lld",
                 p->topic, (int)p->partition, n, (long long)age, (long long)next_offset);
    } else if (r == 0) {
        log_info("%s [%d]: no detector snapshot from the last %lld s; its sensors warm up",
                 p->topic, (int)p->partition, (long long)st->conf->snapshot_max_age_s);
    } else {
        log_warn("%s [%d]: no detector snapshot (%s); its sensors warm up", p->topic,
                 (int)p->partition,
                 r == -EBADMSG  ? "it is unreadable"
                 : r == -ENOMEM ? "out of memory"
                                : db_errmsg(st->db));
    }
}

static void anomaly_on_assign(void *opaque, const rd_kafka_topic_partition_list_t *parts)
{
    anomaly_t *st = opaque;
    anomaly_part_t *p;

    (void)anomaly_db_state(st, db_connect(st->db));
    for (int i = 0; i < parts->cnt; i++) {
        if (anomaly_part_add(st, parts->elems[i].topic, parts->elems[i].partition, &p) < 0) {
            log_warn("out of memory for %s [%d]; its detector is created with its first record",
                     parts->elems[i].topic, (int)parts->elems[i].partition);
            continue;
        }
        anomaly_snapshot_restore(st, p);
    }
}

static void anomaly_on_revoke(void *opaque, const rd_kafka_topic_partition_list_t *parts)
{
    anomaly_t *st = opaque;

    /* The pending batch was handled before this: the states are as acknowledged. */
    if (st->agg)
        (void)cache_agg_writer_flush(st->agg);
    for (int i = 0; i < parts->cnt; i++) {
        anomaly_part_t *p = anomaly_part_find(st, parts->elems[i].topic, parts->elems[i].partition);
        if (st->agg)
            cache_agg_writer_drop(st->agg, parts->elems[i].topic, parts->elems[i].partition);
        if (!p)
            continue;
        anomaly_snapshot_save(st, p);
        anomaly_part_drop(st, p);
    }
}

/* --- registry ----------------------------------------------------------------------------------
 */

static void anomaly_thresholds_log(const registry_thresholds_t *t)
{
    log_info("thresholds: default z %g, warm-up %u, alpha %g, max rate %g/s%s; %zu sensor "
             "type(s) of their own",
             t->conf.defaults.z, t->conf.defaults.warmup, t->conf.defaults.alpha,
             t->conf.defaults.max_rate, t->has_default ? "" : " (from the settings)",
             t->conf.ntypes);
}

/* Reloads the thresholds and the registered sensors; a change of thresholds applies to every
 * partition's sensors from their next reading. @starting: log the thresholds even unchanged. */
static void anomaly_refresh(anomaly_t *st, bool starting)
{
    registry_thresholds_t t;
    char err[256] = "";
    int r;

    if ((r = registry_thresholds_load(st->db, &st->fallback, &t, err, sizeof(err))) == 0) {
        if (!registry_thresholds_equal(&t, &st->thresholds)) {
            for (size_t i = 0; i < st->nparts && r == 0; i++)
                r = detector_config_set(st->parts[i].det, &t.conf);
            registry_thresholds_clear(&st->thresholds);
            st->thresholds = t;
            svc_metric_inc(st->m_thr_changes);
            anomaly_thresholds_log(&st->thresholds);
        } else {
            registry_thresholds_clear(&t);
            if (starting)
                anomaly_thresholds_log(&st->thresholds);
        }
    }
    if (r == 0 && (r = registry_load(st->registry, st->db)) == 0) {
        if (st->refresh_failing)
            log_info("thresholds and sensors reloaded again (%zu sensors registered)",
                     registry_count(st->registry));
        st->refresh_failing = false;
        return;
    }
    if (!st->refresh_failing)
        log_warn("cannot reload thresholds and sensors, keeping the ones in force: %s",
                 err[0]         ? err
                 : r == -ENOMEM ? "out of memory"
                                : db_errmsg(st->db));
    st->refresh_failing = true;
}

/* Looks up, in one query, the sensors of the batch the registry has never seen. */
static int anomaly_registry_fetch(anomaly_t *st)
{
    size_t n = 0;

    for (size_t i = 0; i < st->parsed.n; i++) {
        const anomaly_hit_t *h = &st->parsed.v[i];
        bool seen = !h->valid || registry_get(st->registry, h->project_id, h->sensor_id);
        for (size_t j = 0; j < n && !seen; j++)
            seen = !strcmp(st->miss_sensors[j], h->sensor_id) &&
                   !strcmp(st->miss_projects[j], h->project_id);
        if (seen)
            continue;
        st->miss_projects[n] = h->project_id;
        st->miss_sensors[n++] = h->sensor_id;
    }
    int r = registry_fetch(st->registry, st->db, st->miss_projects, st->miss_sensors, n);
    if (r < 0) {
        log_warn("cannot look %zu sensor(s) up in `sensors`, the batch will be retried: %s", n,
                 r == -ENOMEM ? "out of memory" : db_errmsg(st->db));
        return r == -EINVAL ? -EAGAIN : r;
    }
    return 0;
}

/* --- records -----------------------------------------------------------------------------------
 */

/* Fills @hit's identity from the record, or returns -EINVAL with the reason for the DLQ. */
static int anomaly_record_parse(const bus_record_t *rec, anomaly_hit_t *hit, char *reason,
                                size_t reason_size)
{
    contract_record_in_t in = {.value = rec->value, .value_len = rec->value_len};
    contract_reading_record_t dec;

    *hit = (anomaly_hit_t){.partition = rec->partition, .offset = rec->offset};
    bus_record_header(rec, "sb-org-id", &in.org_id, &in.org_id_len);
    bus_record_header(rec, "sb-project-id", &in.project_id, &in.project_id_len);
    bus_record_header(rec, "sb-request-id", &in.request_id, &in.request_id_len);
    if (contract_reading_record_decode(&in, &dec, reason, reason_size) < 0)
        return -EINVAL;
    memcpy(hit->org_id, dec.org_id, sizeof(hit->org_id));
    memcpy(hit->project_id, dec.project_id, sizeof(hit->project_id));
    memcpy(hit->reading_id, dec.reading.id, sizeof(hit->reading_id));
    memcpy(hit->request_id, dec.request_id, sizeof(hit->request_id));
    snprintf(hit->sensor_id, sizeof(hit->sensor_id), "%s", dec.reading.sensor_id);
    hit->ts_us = dec.reading.ts_us;
    hit->value = dec.reading.value;
    hit->valid = true;
    contract_reading_record_clear(&dec);
    return 0;
}

/* Observes one parsed record (or, when it was observed before, reuses its verdict) and appends
 * its anomaly, if any, to st->batch. 0 or -ENOMEM. */
static int anomaly_record_observe(anomaly_t *st, bus_record_t *rec, anomaly_hit_t *hit)
{
    const registry_sensor_t *rs = registry_get(st->registry, hit->project_id, hit->sensor_id);
    anomaly_part_t *p;
    int r;

    if ((r = anomaly_part_add(st, rec->topic, rec->partition, &p)) < 0)
        return r;
    hit->topic = p->topic;
    if (rec->offset < p->next_offset) { /* redelivered after a failed batch, or restored */
        for (size_t i = 0; i < p->pending.n; i++)
            if (p->pending.v[i].offset == rec->offset)
                return anomaly_hits_push(&st->batch, &p->pending.v[i]);
        return 0;
    }

    /* The registration as it is now: limits that changed apply from this reading on. */
    r = detector_sensor_set_limits(p->det, hit->project_id, hit->sensor_id, rs ? rs->min : NAN,
                                   rs ? rs->max : NAN);
    if (r == -ENOMEM)
        return r;
    r = detector_observe(p->det, hit->project_id, hit->sensor_id,
                         rs && rs->registered ? rs->type : NULL, hit->value, hit->ts_us, &hit->res);
    if (r == -EINVAL) { /* cannot happen after the contract, which demands a finite value */
        bus_record_reject(rec, "the detector refused the reading");
        svc_metric_add(st->m_rejected, 1);
        return 0;
    }
    if (r < 0)
        return r;
    svc_metric_add(st->m_observed, 1);
    if (hit->res.fired) {
        hit->detected_us = svc_wall_us();
        if ((r = anomaly_hits_push(&p->pending, hit)) < 0) {
            /* The state has moved but the verdict cannot be kept for a retry: forget the
             * partition's statistics rather than lose or double-learn the reading. */
            detector_forget_all(p->det);
            p->next_offset = -1;
            return r;
        }
    }
    p->next_offset = rec->offset + 1;
    return hit->res.fired ? anomaly_hits_push(&st->batch, hit) : 0;
}

/* --- outputs -----------------------------------------------------------------------------------
 */

static void anomaly_checks_append(json_t *arr, char *pg, size_t pgsize, unsigned fired)
{
    size_t len = 0;
    pg[len++] = '{';
    for (size_t i = 0; i < ANOMALY_NCHECKS; i++) {
        if (!(fired & anomaly_checks[i].bit))
            continue;
        if (arr)
            json_array_append_new(arr, json_string(anomaly_checks[i].name));
        len += (size_t)snprintf(pg + len, pgsize - len, "%s%s", len > 1 ? "," : "",
                                anomaly_checks[i].name);
    }
    snprintf(pg + len, pgsize - len, "}");
}

static json_t *anomaly_json_number(double v)
{
    return isfinite(v) ? json_real(v) : json_null();
}

/* The anomaly.v1 value (see proto/anomaly.v1.json). A malloc'd string, or NULL on ENOMEM. */
static char *anomaly_value_dump(const anomaly_hit_t *h)
{
    char ts[40], detected[40], pg[64];
    json_t *checks = json_array();
    contract_format_rfc3339(h->ts_us, ts, sizeof(ts));
    contract_format_rfc3339(h->detected_us, detected, sizeof(detected));
    anomaly_checks_append(checks, pg, sizeof(pg), h->res.fired);
    json_t *doc =
        json_pack("{s:s, s:s, s:s, s:s, s:s, s:f, s:o, s:o, s:o, s:o, s:s}", "reading_id",
                  h->reading_id, "project_id", h->project_id, "org_id", h->org_id, "sensor_id",
                  h->sensor_id, "ts", ts, "value", h->value, "checks", checks, "z",
                  anomaly_json_number(h->res.z), "mean", anomaly_json_number(h->res.mean), "stddev",
                  anomaly_json_number(h->res.stddev), "detected_at", detected);
    if (!doc)
        return NULL;
    char *s = json_dumps(doc, JSON_COMPACT);
    json_decref(doc);
    return s;
}

static void anomaly_delivered(rd_kafka_resp_err_t err, int32_t partition, int64_t offset,
                              void *opaque)
{
    anomaly_t *st = opaque;
    (void)partition;
    (void)offset;
    if (err != RD_KAFKA_RESP_ERR_NO_ERROR) {
        atomic_fetch_add(&st->delivery_errors, 1);
        atomic_store(&st->last_delivery_error, (int)err);
    }
}

/* Produces one anomalies.v1 record per anomaly of the batch and waits for every report. */
static int anomaly_produce(anomaly_t *st)
{
    bus_producer_t *prod = bus_daemon_producer(st->d);
    int r;

    if (!prod)
        return -EAGAIN;
    atomic_store(&st->delivery_errors, 0);
    for (size_t i = 0; i < st->batch.n; i++) {
        const anomaly_hit_t *h = &st->batch.v[i];
        char key[37 + 1 + CONTRACT_SENSOR_ID_MAX + 1];
        int klen = snprintf(key, sizeof(key), "%s/%s", h->project_id, h->sensor_id);
        char *value = anomaly_value_dump(h);
        if (!value)
            return -ENOMEM;
        bus_header_t headers[] = {
            {"content-type", "application/json", strlen("application/json")},
            {"sb-contract", "anomaly.v1", strlen("anomaly.v1")},
            {"sb-org-id", h->org_id, 36},
            {"sb-project-id", h->project_id, 36},
            {"sb-request-id", h->request_id, strlen(h->request_id)},
        };
        size_t nheaders = sizeof(headers) / sizeof(headers[0]) - (h->request_id[0] ? 0 : 1);
        r = bus_producer_produce(prod, st->conf->anomalies_topic, key, (size_t)klen, value,
                                 strlen(value), headers, nheaders, NULL, anomaly_delivered, st);
        free(value);
        if (r < 0) {
            log_warn("cannot produce to %s: %s; the batch will be retried",
                     st->conf->anomalies_topic, strerror(-r));
            (void)bus_producer_flush(prod, ANOMALY_FLUSH_MS); /* no report may outlive the batch */
            return r == -ENOBUFS || r == -EIO || r == -ESHUTDOWN ? -EAGAIN : r;
        }
    }
    if ((r = bus_producer_flush(prod, ANOMALY_FLUSH_MS)) < 0) {
        log_warn("%s: deliveries not acknowledged within %d ms; the batch will be retried",
                 st->conf->anomalies_topic, ANOMALY_FLUSH_MS);
        return -ETIMEDOUT;
    }
    int errors = atomic_load(&st->delivery_errors);
    if (errors > 0) {
        log_warn("%d record(s) to %s failed (%s); the batch will be retried", errors,
                 st->conf->anomalies_topic,
                 rd_kafka_err2str((rd_kafka_resp_err_t)atomic_load(&st->last_delivery_error)));
        return -EAGAIN;
    }
    return 0;
}

/* Inserts the batch's anomalies in one transaction. @inserted[i]: row i is new; @owned[i]: the
 * row is this record's (new, or written by the same partition and offset before: a redelivery),
 * which is when its Redis counters are due (the writer applies each offset once). */
static int anomaly_store(anomaly_t *st, bool *inserted, bool *owned)
{
    int r;

    if ((r = db_exec_simple(st->db, "BEGIN")) < 0)
        goto fail;
    for (size_t i = 0; i < st->batch.n; i++) {
        const anomaly_hit_t *h = &st->batch.v[i];
        char ts[40], detected[40], value[32], z[32], mean[32], stddev[32], checks[64];
        char partition[16], offset[24];
        PGresult *res = NULL;

        contract_format_rfc3339(h->ts_us, ts, sizeof(ts));
        contract_format_rfc3339(h->detected_us, detected, sizeof(detected));
        snprintf(value, sizeof(value), "%.17g", h->value);
        snprintf(z, sizeof(z), "%.17g", h->res.z);
        snprintf(mean, sizeof(mean), "%.17g", h->res.mean);
        snprintf(stddev, sizeof(stddev), "%.17g", h->res.stddev);
        snprintf(partition, sizeof(partition), "%d", (int)h->partition);
        snprintf(offset, sizeof(offset), "%lld", (long long)h->offset);
        anomaly_checks_append(NULL, checks, sizeof(checks), h->res.fired);
        const char *params[] = {
            h->org_id, h->project_id, h->reading_id, h->sensor_id, ts,        value, checks,
            z,         mean,          stddev,        detected,     partition, offset};
        if ((r = db_exec(st->db, "anomaly_insert", NULL, 13, params, &res)) < 0)
            goto fail;
        owned[i] = PQntuples(res) == 1;
        inserted[i] = owned[i] && !strcmp(PQgetvalue(res, 0, 0), "t");
        PQclear(res);
    }
    if ((r = db_exec_simple(st->db, "COMMIT")) < 0)
        goto fail;
    return 0;

fail:
    log_warn("%zu anomalies not written, the batch will be retried: %s", st->batch.n,
             db_errmsg(st->db));
    if (db_connected(st->db))
        (void)db_exec_simple(st->db, "ROLLBACK");
    return r == -EINVAL ? -EAGAIN : r; /* no row is the reading's fault: keep retrying */
}

/* Reports the writer's state: metrics, /readyz, and a log line when it changes. */
static void anomaly_agg_report(anomaly_t *st, int r)
{
    const cache_agg_stats_t *now = cache_agg_writer_stats(st->agg);
    bool down = r < 0 && r != -EBUSY && r != -EINVAL;

    svc_metric_set(st->m_agg_pending, (double)cache_agg_writer_pending(st->agg));
    svc_metric_add(st->m_agg_dropped, (double)(now->dropped - st->agg_seen.dropped));
    svc_metric_add(st->m_agg_gaps, (double)(now->gap_offsets - st->agg_seen.gap_offsets));
    if (now->dropped > st->agg_seen.dropped || now->gap_offsets > st->agg_seen.gap_offsets)
        log_warn("Redis anomaly counters lost updates (%" PRIu64 " dropped: %s; %" PRIu64
                 " offsets missed); run `sbctl aggregates rebuild` to repair them",
                 now->dropped - st->agg_seen.dropped,
                 r == -EINVAL ? cache_errmsg(st->cache) : "too many waited",
                 now->gap_offsets - st->agg_seen.gap_offsets);
    st->agg_seen = *now;
    if (down) {
        svc_metric_add(st->m_redis_failures, 1);
        if (!st->redis_down)
            log_warn("Redis anomaly counters lag: %s; %zu anomalies wait", cache_errmsg(st->cache),
                     cache_agg_writer_pending(st->agg));
    } else if (st->redis_down && r != -EINVAL) {
        log_info("Redis anomaly counters are applied again");
    }
    if (r != -EINVAL)
        st->redis_down = down;
    svc_health_note(st->health, "redis", !st->redis_down);
}

/* Hands the counters of the anomalies this batch's records own to the writer, per partition
 * with the offsets the batch covered there, and applies them. Never fails the batch. */
static void anomaly_count(anomaly_t *st, bus_record_t *recs, size_t n, const bool *owned)
{
    size_t nspans = 0;

    if (!st->agg)
        return;
    for (size_t i = 0; i < n; i++) { /* a batch spans a few partitions */
        anomaly_span_t *sp = st->spans;
        while (sp < st->spans + nspans &&
               (sp->partition != recs[i].partition || strcmp(sp->topic, recs[i].topic)))
            sp++;
        if (sp == st->spans + nspans) {
            *sp =
                (anomaly_span_t){recs[i].topic, recs[i].partition, recs[i].offset, recs[i].offset};
            nspans++;
        }
        sp->lo = recs[i].offset < sp->lo ? recs[i].offset : sp->lo;
        sp->hi = recs[i].offset > sp->hi ? recs[i].offset : sp->hi;
    }
    for (anomaly_span_t *sp = st->spans; sp < st->spans + nspans; sp++) {
        size_t nitems = 0;
        for (size_t k = 0; k < st->batch.n; k++) {
            const anomaly_hit_t *h = &st->batch.v[k];
            char pg[64];
            if (!owned[k] || h->partition != sp->partition || strcmp(h->topic, sp->topic))
                continue;
            cache_agg_item_t *it = &st->items[nitems++];
            *it = (cache_agg_item_t){.offset = h->offset, .kind = CACHE_AGG_ANOMALY};
            memcpy(it->project_id, h->project_id, sizeof(it->project_id));
            anomaly_checks_append(NULL, pg, sizeof(pg), h->res.fired);
            /* "{zscore,rate}" -> "zscore,rate" */
            snprintf(it->name, sizeof(it->name), "%.*s", (int)strlen(pg) - 2, pg + 1);
        }
        int r = cache_agg_writer_add(st->agg, sp->topic, sp->partition, sp->lo, sp->hi, st->items,
                                     nitems);
        if (r < 0)
            log_error("cannot queue anomaly counters of %s [%d]: %s", sp->topic, (int)sp->partition,
                      strerror(-r));
    }
    anomaly_agg_report(st, cache_agg_writer_flush(st->agg));
}

/* Room for a batch of @n records in the per-batch arrays. */
static int anomaly_batch_reserve(anomaly_t *st, size_t n)
{
    if (n <= st->parsed.cap)
        return 0;
    anomaly_hit_t *v = realloc(st->parsed.v, n * sizeof(*v));
    if (!v)
        return -ENOMEM;
    st->parsed.v = v;
    st->parsed.cap = n;
    cache_agg_item_t *items = realloc(st->items, n * sizeof(*items));
    if (!items)
        return -ENOMEM;
    st->items = items;
    anomaly_span_t *spans = realloc(st->spans, n * sizeof(*spans));
    if (!spans)
        return -ENOMEM;
    st->spans = spans;
    const char **mp = realloc(st->miss_projects, n * sizeof(*mp));
    if (!mp)
        return -ENOMEM;
    st->miss_projects = mp;
    const char **ms = realloc(st->miss_sensors, n * sizeof(*ms));
    if (!ms)
        return -ENOMEM;
    st->miss_sensors = ms;
    return 0;
}

static int anomaly_handle_batch(void *opaque, bus_record_t *recs, size_t n)
{
    anomaly_t *st = opaque;
    bool *inserted = NULL, *owned = NULL;
    char reason[320];
    int r;

    st->batch.n = 0;
    st->parsed.n = 0;
    if ((r = anomaly_batch_reserve(st, n)) < 0)
        goto done;
    for (size_t i = 0; i < n; i++, st->parsed.n++)
        if (anomaly_record_parse(&recs[i], &st->parsed.v[i], reason, sizeof(reason)) < 0) {
            bus_record_reject(&recs[i], "%s", reason);
            svc_metric_add(st->m_rejected, 1);
        }
    if ((r = anomaly_registry_fetch(st)) < 0)
        goto done;
    for (size_t i = 0; i < n && r == 0; i++)
        if (st->parsed.v[i].valid)
            r = anomaly_record_observe(st, &recs[i], &st->parsed.v[i]);
    if (r < 0 || st->batch.n == 0)
        goto done;

    inserted = calloc(st->batch.n, sizeof(*inserted));
    owned = calloc(st->batch.n, sizeof(*owned));
    if (!inserted || !owned) {
        r = -ENOMEM;
        goto done;
    }
    if ((r = anomaly_produce(st)) < 0 || (r = anomaly_store(st, inserted, owned)) < 0)
        goto done;
    for (size_t i = 0; i < st->batch.n; i++)
        for (size_t c = 0; c < ANOMALY_NCHECKS; c++)
            if (inserted[i] && (st->batch.v[i].res.fired & anomaly_checks[c].bit))
                svc_metric_add(st->m_checks[c], 1);
    log_debug("batch: %zu records, %zu anomalies", n, st->batch.n);

done:
    if (r == 0) {
        /* Acknowledged: the verdicts of this batch's offsets are no longer needed. */
        for (size_t i = 0; i < n; i++) {
            anomaly_part_t *p = anomaly_part_find(st, recs[i].topic, recs[i].partition);
            size_t k = 0;
            for (size_t j = 0; p && j < p->pending.n; j++)
                if (p->pending.v[j].offset > recs[i].offset)
                    p->pending.v[k++] = p->pending.v[j];
            if (p)
                p->pending.n = k;
        }
        static const bool none = false;
        anomaly_count(st, recs, n, owned ? owned : &none);
    }
    free(inserted);
    free(owned);
    return anomaly_db_state(st, r);
}

/* --- lifecycle ---------------------------------------------------------------------------------
 */

static void anomaly_tick(void *state)
{
    anomaly_t *st = state;
    int64_t now = svc_now_ms();

    (void)anomaly_db_state(st, db_exec_simple(st->db, "SELECT 1"));
    if (now >= st->next_refresh_ms) {
        anomaly_refresh(st, false);
        st->next_refresh_ms = now + st->conf->refresh_ms;
    }
    for (size_t i = 0; i < st->nparts; i++)
        if (now - st->parts[i].snap_at_ms >= st->conf->snapshot_interval_ms)
            anomaly_snapshot_save(st, &st->parts[i]);
    if (st->agg && !cache_agg_writer_idle(st->agg))
        anomaly_agg_report(st, cache_agg_writer_flush(st->agg));
}

static void anomaly_fini(void *state)
{
    anomaly_t *st = state;
    if (!st)
        return;
    while (st->nparts > 0) { /* normally none left: revocation at close snapshotted them */
        anomaly_snapshot_save(st, &st->parts[0]);
        anomaly_part_drop(st, &st->parts[0]);
    }
    if (st->agg && !cache_agg_writer_idle(st->agg))
        (void)cache_agg_writer_flush(st->agg);
    cache_agg_writer_free(st->agg);
    free(st->parts);
    free(st->batch.v);
    free(st->parsed.v);
    free(st->items);
    free(st->spans);
    free(st->miss_projects);
    free(st->miss_sensors);
    registry_free(st->registry);
    registry_thresholds_clear(&st->thresholds);
    db_free(st->db);
    cache_free(st->cache);
    free(st);
}

static int anomaly_metrics_init(anomaly_t *st, svc_metrics_t *m)
{
    st->m_observed = svc_metrics_counter(m, "sb_anomaly_readings_observed_total",
                                         "Readings judged by the detector", NULL);
    st->m_rejected = svc_metrics_counter(m, "sb_anomaly_readings_rejected_total",
                                         "Records sent to the dead-letter topic", NULL);
    st->m_redis_failures =
        svc_metrics_counter(m, "sb_anomaly_redis_failures_total",
                            "Batches and ticks whose Redis counters could not be updated", NULL);
    st->m_snap_saved = svc_metrics_counter(m, "sb_anomaly_snapshots_saved_total",
                                           "Partition states written to detector_snapshots", NULL);
    st->m_snap_restored =
        svc_metrics_counter(m, "sb_anomaly_snapshots_restored_total",
                            "Assigned partitions restored from a snapshot (not warmed up)", NULL);
    st->m_thr_changes =
        svc_metrics_counter(m, "sb_anomaly_threshold_changes_total",
                            "Loads of detector_thresholds that changed the thresholds in force "
                            "(applied to running sensors)",
                            NULL);
    st->m_agg_pending = svc_metrics_gauge(m, "sb_anomaly_aggregate_pending",
                                          "Anomalies whose Redis counters wait", NULL);
    st->m_agg_dropped =
        svc_metrics_counter(m, "sb_anomaly_aggregate_dropped_total",
                            "Anomalies whose Redis counters were given up (rebuild repairs)", NULL);
    st->m_agg_gaps = svc_metrics_counter(
        m, "sb_anomaly_aggregate_gap_offsets_total",
        "Offsets Redis never saw applied before later ones (rebuild repairs)", NULL);
    bool ok = st->m_observed && st->m_rejected && st->m_redis_failures && st->m_snap_saved &&
              st->m_snap_restored && st->m_thr_changes && st->m_agg_pending && st->m_agg_dropped &&
              st->m_agg_gaps;
    for (size_t i = 0; i < ANOMALY_NCHECKS; i++) {
        char labels[32];
        snprintf(labels, sizeof(labels), "check=\"%s\"", anomaly_checks[i].name);
        st->m_checks[i] = svc_metrics_counter(m, "sb_anomaly_anomalies_total",
                                              "Anomalies stored, by check that fired", labels);
        ok = ok && st->m_checks[i];
    }
    return ok ? 0 : -ENOMEM;
}

static int anomaly_init(bus_daemon_t *d, void *conf, void **ret_state)
{
    const anomaly_conf_t *c = conf;
    char errbuf[256];
    int r;

    if (!c->pg_dsn || !*c->pg_dsn) {
        log_error("pg_dsn is not set (SB_ANOMALY_DETECTOR_PG_DSN or "
                  "SB_ANOMALY_DETECTOR_PG_DSN_FILE)");
        return -EINVAL;
    }
    if (!c->anomalies_topic || !*c->anomalies_topic) {
        log_error("anomalies_topic must not be empty");
        return -EINVAL;
    }
    if (c->redis_url && *c->redis_url &&
        cache_url_check(c->redis_url, errbuf, sizeof(errbuf)) < 0) {
        log_error("redis_url: %s", errbuf);
        return -EINVAL;
    }
    anomaly_t *st = calloc(1, sizeof(*st));
    if (!st)
        return -ENOMEM;
    st->d = d;
    st->conf = c;
    st->health = bus_daemon_health(d);

    /* The settings are the thresholds until detector_thresholds is read (and whenever it has
     * no 'default' row). */
    detector_config_init(&st->fallback);
    st->fallback.defaults.z = c->z_threshold;
    st->fallback.defaults.warmup =
        c->warmup < 0 || c->warmup > UINT32_MAX ? 0 : (uint32_t)c->warmup;
    st->fallback.defaults.alpha = c->alpha;
    detector_t *probe = NULL;
    if ((r = detector_new(&st->fallback, &probe)) < 0) {
        log_error("invalid detector settings: z_threshold %g (> 0), warmup %lld (>= 2), alpha %g "
                  "(in (0, 1])",
                  c->z_threshold, (long long)c->warmup, c->alpha);
        goto fail;
    }
    detector_free(probe);
    st->thresholds.conf = st->fallback;
    if ((r = anomaly_metrics_init(st, bus_daemon_metrics(d))) < 0 ||
        (r = registry_new(&st->registry)) < 0)
        goto fail;

    if (c->redis_url && *c->redis_url) {
        if ((r = cache_new(c->redis_url, (unsigned)c->redis_timeout_ms, &st->cache)) < 0 ||
            (r = cache_agg_writer_new(st->cache, ANOMALY_CONSUMER,
                                      (size_t)c->aggregates_max_pending, &st->agg)) < 0) {
            log_error("cannot create the Redis client: %s", strerror(-r));
            goto fail;
        }
        st->redis_down = !cache_connected(st->cache);
        if (st->redis_down)
            log_warn("Redis is not reachable yet; anomaly counters wait for it: %s",
                     cache_errmsg(st->cache));
        svc_health_note(st->health, "redis", !st->redis_down);
    }

    if ((r = db_new(c->pg_dsn, &st->db)) < 0) {
        log_error("pg_dsn is not a valid PostgreSQL connection string");
        goto fail;
    }
    if (!db_connected(st->db))
        log_warn("PostgreSQL is not reachable yet, will retry: %s", db_errmsg(st->db));
    if ((r = db_prepare(st->db, "anomaly_insert",
                        "INSERT INTO anomalies (org_id, project_id, reading_id, sensor_id, ts, "
                        "value, checks, z, mean, stddev, detected_at, kafka_partition, "
                        "kafka_offset) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, "
                        "$13) ON CONFLICT (project_id, reading_id) DO UPDATE SET kafka_offset = "
                        "EXCLUDED.kafka_offset WHERE anomalies.kafka_partition = "
                        "EXCLUDED.kafka_partition AND anomalies.kafka_offset = "
                        "EXCLUDED.kafka_offset RETURNING xmax = 0",
                        13)) < 0 ||
        (r = db_prepare(st->db, "anomaly_tables",
                        "SELECT FROM detector_thresholds, detector_snapshots LIMIT 0", 0)) < 0) {
        log_error("cannot prepare statements (has `sbctl migrate` run?): %s", db_errmsg(st->db));
        goto fail;
    }
    if (db_connected(st->db))
        anomaly_refresh(st, true);
    st->next_refresh_ms = svc_now_ms() + c->refresh_ms;
    (void)anomaly_db_state(st, 0);
    *ret_state = st;
    return 0;

fail:
    anomaly_fini(st);
    return r;
}

static const bus_daemon_desc_t anomaly_desc = {
    .name = "anomaly-detector",
    .summary = "flags anomalous sensor.readings.v1 readings (anomalies.v1, PostgreSQL, Redis)",
    .topics = "sensor.readings.v1",
    .conf = anomaly_conf_table,
    .conf_size = sizeof(anomaly_conf_t),
    .batch_max = 2000,
    .batch_ms = 200,
    .init = anomaly_init,
    .handle_batch = anomaly_handle_batch,
    .on_assign = anomaly_on_assign,
    .on_revoke = anomaly_on_revoke,
    .tick = anomaly_tick,
    .fini = anomaly_fini,
};

int main(int argc, char **argv)
{
    return bus_daemon_main(&anomaly_desc, argc, argv);
}
