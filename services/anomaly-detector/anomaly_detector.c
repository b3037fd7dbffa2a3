/* sb-anomaly-detector: sensor.readings.v1 -> anomalies.v1, PostgreSQL `anomalies`, Redis counters.
 *
 * Each assigned partition has its own detector_t (readings of a sensor share a partition, so the
 * statistics are never shared between threads or partitions), created on assign and freed on
 * revoke. For every anomaly of a batch, in this order:
 *   1. a record on anomalies.v1, and the handler waits for the broker's acknowledgement;
 *   2. a row in `anomalies`, INSERT ... ON CONFLICT DO NOTHING, one transaction per batch;
 *   3. HINCRBY sb:anomalies:<project_id> total/<check> for the rows that were new, pipelined.
 * The handler returns 0 (offsets stored) only once 1 and 2 succeeded; a failure of either makes
 * the whole batch come again, and the duplicates it makes are harmless: the row's primary key is
 * (project_id, reading_id) and the topic's consumers dedupe by reading_id. Redis holds only
 * dashboard counters that can be rebuilt from PostgreSQL, so a Redis failure is logged and
 * counted, never allowed to hold back the batch.
 *
 * A redelivered batch must not teach the detector the same readings twice (it would pull the
 * baseline and the rate check). So each partition remembers the next offset it has not observed
 * yet and the anomalies found in offsets not yet acknowledged: a record below that offset is
 * re-parsed (to reject it again if needed) but not observed, and its earlier verdict is reused.
 */
#include <errno.h>
#include <math.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "bus_daemon.h"
#include "bus_producer.h"
#include "cache.h"
#include "contract.h"
#include "db.h"
#include "detector.h"
#include "svc_log.h"
#include "svc_util.h"

/* Readings carry no sensor type until sensor registration exists: every sensor uses the
 * detector's defaults (tuned by z_threshold, warmup and alpha) under this type name. */
#define ANOMALY_SENSOR_TYPE "default"
/* Longer than the producer's message.timeout.ms (10 s), so every report has arrived. */
#define ANOMALY_FLUSH_MS       15000
#define ANOMALY_REDIS_TIMEOUT  500
#define ANOMALY_REQUEST_ID_MAX CONTRACT_REQUEST_ID_MAX

typedef struct anomaly_conf {
    char *pg_dsn;
    char *redis_url;
    double z_threshold;
    int64_t warmup;
    double alpha;
    char *anomalies_topic;
} anomaly_conf_t;

static const svc_conf_entry_t anomaly_conf_table[] = {
    {SVC_CONF_STR, "pg_dsn", NULL, offsetof(anomaly_conf_t, pg_dsn),
     "PostgreSQL connection string (libpq key=value or URI), required", SVC_CONF_SECRET, 0, 0},
    {SVC_CONF_STR, "redis_url", "redis://127.0.0.1:6379/0", offsetof(anomaly_conf_t, redis_url),
     "Redis for the anomaly counters, redis://[[user]:password@]host[:port][/db]", SVC_CONF_SECRET,
     0, 0},
    {SVC_CONF_DOUBLE, "z_threshold", "4.5", offsetof(anomaly_conf_t, z_threshold),
     "|z-score| above which a reading is an anomaly, > 0", 0, 0, 0},
    {SVC_CONF_INT, "warmup", "30", offsetof(anomaly_conf_t, warmup),
     "readings of a sensor learnt before its z-scores are judged, >= 2", 0, 0, 0},
    {SVC_CONF_DOUBLE, "alpha", "0.05", offsetof(anomaly_conf_t, alpha),
     "EWMA weight of a new reading, in (0, 1]", 0, 0, 0},
    {SVC_CONF_STR, "anomalies_topic", "anomalies.v1", offsetof(anomaly_conf_t, anomalies_topic),
     "topic the anomaly records are produced to", 0, 0, 0},
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

/* One anomalous reading. */
typedef struct anomaly_hit {
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

/* The state of one assigned partition. */
typedef struct anomaly_part {
    char *topic;
    int32_t partition;
    detector_t *det;
    int64_t next_offset;    /* first offset not observed yet; -1 before the first record */
    anomaly_hits_t pending; /* anomalies at offsets < next_offset not yet acknowledged */
} anomaly_part_t;

typedef struct anomaly {
    bus_daemon_t *d;
    const anomaly_conf_t *conf;
    detector_config_t dconf;
    db_t *db;
    cache_t *cache;
    svc_health_t *health;
    svc_metric_t *m_observed, *m_rejected, *m_redis_failures, *m_checks[ANOMALY_NCHECKS];
    anomaly_part_t *parts;
    size_t nparts, partscap;
    anomaly_hits_t batch; /* the anomalies of the batch being handled */
    atomic_int delivery_errors;
    atomic_int last_delivery_error;
    bool redis_down; /* log the outage once, not once per batch */
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
    *p = (anomaly_part_t){.partition = partition, .next_offset = -1};
    if (!(p->topic = strdup(topic)))
        return -ENOMEM;
    if ((r = detector_new(&st->dconf, &p->det)) < 0) {
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

static void anomaly_on_assign(void *opaque, const rd_kafka_topic_partition_list_t *parts)
{
    anomaly_t *st = opaque;
    anomaly_part_t *p;

    for (int i = 0; i < parts->cnt; i++)
        if (anomaly_part_add(st, parts->elems[i].topic, parts->elems[i].partition, &p) < 0)
            log_warn("out of memory for %s [%d]; its detector is created with its first record",
                     parts->elems[i].topic, (int)parts->elems[i].partition);
    (void)anomaly_db_state(st, db_connect(st->db));
}

static void anomaly_on_revoke(void *opaque, const rd_kafka_topic_partition_list_t *parts)
{
    anomaly_t *st = opaque;

    for (int i = 0; i < parts->cnt; i++) {
        anomaly_part_t *p = anomaly_part_find(st, parts->elems[i].topic, parts->elems[i].partition);
        if (p)
            anomaly_part_drop(st, p);
    }
}

/* --- records -----------------------------------------------------------------------------------
 */

/* Copies a header holding a UUID, lower-cased; false unless it is exactly 8-4-4-4-12 hex. */
/* Fills @hit's identity from the record, or returns -EINVAL with the reason for the DLQ. */
static int anomaly_record_parse(const bus_record_t *rec, anomaly_hit_t *hit, char *reason,
                                size_t reason_size)
{
    contract_record_in_t in = {.value = rec->value, .value_len = rec->value_len};
    contract_reading_record_t dec;

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
    hit->offset = rec->offset;
    contract_reading_record_clear(&dec);
    return 0;
}

/* Observes one record (or, when it was observed before, reuses its verdict) and appends its
 * anomaly, if any, to st->batch. Invalid records are rejected. 0 or -ENOMEM. */
static int anomaly_record_handle(anomaly_t *st, bus_record_t *rec)
{
    anomaly_hit_t hit = {0};
    anomaly_part_t *p;
    char reason[320];
    int r;

    if (anomaly_record_parse(rec, &hit, reason, sizeof(reason)) < 0) {
        bus_record_reject(rec, "%s", reason);
        svc_metric_add(st->m_rejected, 1);
        return 0;
    }
    if ((r = anomaly_part_add(st, rec->topic, rec->partition, &p)) < 0)
        return r;

    if (rec->offset < p->next_offset) { /* redelivered after a failed batch */
        for (size_t i = 0; i < p->pending.n; i++)
            if (p->pending.v[i].offset == rec->offset)
                return anomaly_hits_push(&st->batch, &p->pending.v[i]);
        return 0;
    }

    r = detector_observe(p->det, hit.project_id, hit.sensor_id, ANOMALY_SENSOR_TYPE, hit.value,
                         hit.ts_us, &hit.res);
    if (r == -EINVAL) { /* cannot happen after the contract, which demands a finite value */
        bus_record_reject(rec, "the detector refused the reading");
        svc_metric_add(st->m_rejected, 1);
        return 0;
    }
    if (r < 0)
        return r;
    svc_metric_add(st->m_observed, 1);
    if (hit.res.fired) {
        hit.detected_us = svc_wall_us();
        if ((r = anomaly_hits_push(&p->pending, &hit)) < 0) {
            /* The state has moved but the verdict cannot be kept for a retry: forget the
             * partition's statistics rather than lose or double-learn the reading. */
            detector_forget_all(p->det);
            p->next_offset = -1;
            return r;
        }
    }
    p->next_offset = rec->offset + 1;
    return hit.res.fired ? anomaly_hits_push(&st->batch, &hit) : 0;
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

/* Inserts the batch's anomalies in one transaction; @inserted[i] tells whether row i was new. */
static int anomaly_store(anomaly_t *st, bool *inserted)
{
    int r;

    if ((r = db_exec_simple(st->db, "BEGIN")) < 0)
        goto fail;
    for (size_t i = 0; i < st->batch.n; i++) {
        const anomaly_hit_t *h = &st->batch.v[i];
        char ts[40], detected[40], value[32], z[32], mean[32], stddev[32], checks[64];
        PGresult *res = NULL;

        contract_format_rfc3339(h->ts_us, ts, sizeof(ts));
        contract_format_rfc3339(h->detected_us, detected, sizeof(detected));
        snprintf(value, sizeof(value), "%.17g", h->value);
        snprintf(z, sizeof(z), "%.17g", h->res.z);
        snprintf(mean, sizeof(mean), "%.17g", h->res.mean);
        snprintf(stddev, sizeof(stddev), "%.17g", h->res.stddev);
        anomaly_checks_append(NULL, checks, sizeof(checks), h->res.fired);
        const char *params[] = {h->org_id, h->project_id, h->reading_id, h->sensor_id,
                                ts,        value,         checks,        z,
                                mean,      stddev,        detected};
        if ((r = db_exec(st->db, "anomaly_insert", NULL, 11, params, &res)) < 0)
            goto fail;
        inserted[i] = PQntuples(res) == 1;
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

/* Counts the new rows in Redis. Never fails the batch: the counters can be rebuilt from
 * PostgreSQL (SELECT project_id, count(*) ... FROM anomalies GROUP BY project_id). */
static void anomaly_count(anomaly_t *st, const bool *inserted)
{
    char key[64];
    int r = 0;

    for (size_t i = 0; i < st->batch.n && r == 0; i++) {
        if (!inserted[i])
            continue;
        const anomaly_hit_t *h = &st->batch.v[i];
        snprintf(key, sizeof(key), "sb:anomalies:%s", h->project_id);
        const char *argv[] = {"HINCRBY", key, "total", "1"};
        r = cache_pipeline_append(st->cache, 4, argv, NULL);
        for (size_t c = 0; c < ANOMALY_NCHECKS && r == 0; c++) {
            if (!(h->res.fired & anomaly_checks[c].bit))
                continue;
            argv[2] = anomaly_checks[c].name;
            r = cache_pipeline_append(st->cache, 4, argv, NULL);
        }
    }
    if (r == 0)
        r = cache_pipeline_run(st->cache);
    else
        cache_pipeline_clear(st->cache);
    if (r != 0) {
        svc_metric_add(st->m_redis_failures, 1);
        if (!st->redis_down)
            log_warn("Redis anomaly counters not updated (%s); continuing without them",
                     r < 0 ? strerror(-r) : cache_errmsg(st->cache));
        st->redis_down = true;
    } else if (st->redis_down) {
        log_info("Redis anomaly counters are updated again");
        st->redis_down = false;
    }
}

static int anomaly_handle_batch(void *opaque, bus_record_t *recs, size_t n)
{
    anomaly_t *st = opaque;
    bool *inserted = NULL;
    int r = 0;

    st->batch.n = 0;
    for (size_t i = 0; i < n && r == 0; i++)
        r = anomaly_record_handle(st, &recs[i]);
    if (r < 0 || st->batch.n == 0)
        goto done;

    if (!(inserted = calloc(st->batch.n, sizeof(*inserted)))) {
        r = -ENOMEM;
        goto done;
    }
    if ((r = anomaly_produce(st)) < 0 || (r = anomaly_store(st, inserted)) < 0)
        goto done;
    for (size_t i = 0; i < st->batch.n; i++)
        for (size_t c = 0; c < ANOMALY_NCHECKS; c++)
            if (inserted[i] && (st->batch.v[i].res.fired & anomaly_checks[c].bit))
                svc_metric_add(st->m_checks[c], 1);
    anomaly_count(st, inserted);
    log_debug("batch: %zu records, %zu anomalies", n, st->batch.n);

done:
    if (r == 0) /* acknowledged: the verdicts of this batch's offsets are no longer needed */
        for (size_t i = 0; i < n; i++) {
            anomaly_part_t *p = anomaly_part_find(st, recs[i].topic, recs[i].partition);
            size_t k = 0;
            for (size_t j = 0; p && j < p->pending.n; j++)
                if (p->pending.v[j].offset > recs[i].offset)
                    p->pending.v[k++] = p->pending.v[j];
            if (p)
                p->pending.n = k;
        }
    free(inserted);
    return anomaly_db_state(st, r);
}

/* --- lifecycle ---------------------------------------------------------------------------------
 */

static void anomaly_tick(void *state)
{
    anomaly_t *st = state;
    (void)anomaly_db_state(st, db_exec_simple(st->db, "SELECT 1"));
}

static void anomaly_fini(void *state)
{
    anomaly_t *st = state;
    if (!st)
        return;
    while (st->nparts > 0)
        anomaly_part_drop(st, &st->parts[0]);
    free(st->parts);
    free(st->batch.v);
    db_free(st->db);
    cache_free(st->cache);
    free(st);
}

static int anomaly_init(bus_daemon_t *d, void *conf, void **ret_state)
{
    const anomaly_conf_t *c = conf;
    svc_metrics_t *m = bus_daemon_metrics(d);
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
    if (cache_url_check(c->redis_url ? c->redis_url : "", errbuf, sizeof(errbuf)) < 0) {
        log_error("redis_url: %s", errbuf);
        return -EINVAL;
    }
    anomaly_t *st = calloc(1, sizeof(*st));
    if (!st)
        return -ENOMEM;
    st->d = d;
    st->conf = c;
    st->health = bus_daemon_health(d);

    /* The settings' defaults are detector_config_init()'s; they apply to every sensor type
     * until per-type thresholds come with sensor registration. */
    detector_config_init(&st->dconf);
    st->dconf.defaults.z = c->z_threshold;
    st->dconf.defaults.warmup = c->warmup < 0 || c->warmup > UINT32_MAX ? 0 : (uint32_t)c->warmup;
    st->dconf.defaults.alpha = c->alpha;
    detector_t *probe = NULL;
    if ((r = detector_new(&st->dconf, &probe)) < 0) {
        log_error("invalid detector settings: z_threshold %g (> 0), warmup %lld (>= 2), alpha %g "
                  "(in (0, 1])",
                  c->z_threshold, (long long)c->warmup, c->alpha);
        goto fail;
    }
    detector_free(probe);

    st->m_observed = svc_metrics_counter(m, "sb_anomaly_readings_observed_total",
                                         "Readings judged by the detector", NULL);
    st->m_rejected = svc_metrics_counter(m, "sb_anomaly_readings_rejected_total",
                                         "Records sent to the dead-letter topic", NULL);
    st->m_redis_failures =
        svc_metrics_counter(m, "sb_anomaly_redis_failures_total",
                            "Batches whose Redis counters could not be updated", NULL);
    bool ok = st->m_observed && st->m_rejected && st->m_redis_failures;
    for (size_t i = 0; i < ANOMALY_NCHECKS; i++) {
        char labels[32];
        snprintf(labels, sizeof(labels), "check=\"%s\"", anomaly_checks[i].name);
        st->m_checks[i] = svc_metrics_counter(m, "sb_anomaly_anomalies_total",
                                              "Anomalies stored, by check that fired", labels);
        ok = ok && st->m_checks[i];
    }
    if (!ok) {
        r = -ENOMEM;
        goto fail;
    }

    if ((r = cache_new(c->redis_url, ANOMALY_REDIS_TIMEOUT, &st->cache)) < 0) {
        log_error("cannot create the Redis client: %s", strerror(-r));
        goto fail;
    }
    if (!cache_connected(st->cache))
        log_warn("Redis is not reachable yet; anomaly counters wait for it: %s",
                 cache_errmsg(st->cache));

    if ((r = db_new(c->pg_dsn, &st->db)) < 0) {
        log_error("pg_dsn is not a valid PostgreSQL connection string");
        goto fail;
    }
    if (!db_connected(st->db))
        log_warn("PostgreSQL is not reachable yet, will retry: %s", db_errmsg(st->db));
    if ((r = db_prepare(st->db, "anomaly_insert",
                        "INSERT INTO anomalies (org_id, project_id, reading_id, sensor_id, ts, "
                        "value, checks, z, mean, stddev, detected_at) VALUES ($1, $2, $3, $4, $5, "
                        "$6, $7, $8, $9, $10, $11) ON CONFLICT DO NOTHING RETURNING reading_id",
                        11)) < 0) {
        log_error("cannot prepare statements (has `sbctl migrate` run?): %s", db_errmsg(st->db));
        goto fail;
    }
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
