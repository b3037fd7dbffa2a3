/* sb-sensor-ingest: sensor.readings.v1 -> PostgreSQL sensor_readings, in batches, with COPY, and
 * the live dashboard aggregates in Redis.
 *
 * A batch becomes one transaction: COPY into a temporary staging table, then INSERT ... SELECT
 * ... ON CONFLICT DO NOTHING into sensor_readings. The primary key (project_id, reading_id, ts)
 * makes a redelivered record a no-op, so at-least-once delivery gives exactly one row. When
 * PostgreSQL rejects a batch for its data, the rows are retried one by one and only the ones it
 * still rejects go to the dead-letter topic: a poison record never blocks its partition.
 *
 * Aggregates (docs/aggregates.md): after the transaction committed, the rows the batch's records
 * own are handed to a cache_agg writer, which applies them exactly once per Kafka offset. A row
 * is owned by the record whose partition and offset it carries: a redelivered record owns the
 * row it wrote the first time (it is counted if Redis has not seen its offset yet), while a
 * client's retry of a reading (same id, another offset) owns nothing, so Redis counts what
 * PostgreSQL holds. Redis never holds back a batch: when it is down, the writer keeps the
 * updates (up to aggregates_max_pending readings) and applies them when it is back; /readyz
 * shows "redis": false meanwhile. Updates lost beyond that (the cap, a crash) show as offset
 * gaps, logged and counted; `sbctl aggregates rebuild` repairs them from PostgreSQL.
 */
#include <errno.h>
#include <inttypes.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>

#include "bus_daemon.h"
#include "cache.h"
#include "cache_agg.h"
#include "db.h"
#include "ingest_row.h"
#include "svc_log.h"
#include "svc_util.h"

typedef struct ingest_conf {
    char *pg_dsn;
    char *redis_url;
    int64_t redis_timeout_ms;
    int64_t aggregates_max_pending;
} ingest_conf_t;

static const svc_conf_entry_t ingest_conf_table[] = {
    {SVC_CONF_STR, "pg_dsn", NULL, offsetof(ingest_conf_t, pg_dsn),
     "PostgreSQL connection string (libpq key=value or URI), required", SVC_CONF_SECRET, 0, 0},
    {SVC_CONF_STR, "redis_url", "redis://127.0.0.1:6379/0", offsetof(ingest_conf_t, redis_url),
     "Redis for the dashboard aggregates, redis://[[user]:password@]host[:port][/db]; empty "
     "turns the aggregates off",
     SVC_CONF_SECRET, 0, 0},
    {SVC_CONF_INT, "redis_timeout_ms", "250", offsetof(ingest_conf_t, redis_timeout_ms),
     "bound on each Redis connect, read and write", 0, 1, 60000},
    {SVC_CONF_INT, "aggregates_max_pending", "200000",
     offsetof(ingest_conf_t, aggregates_max_pending),
     "readings whose aggregate updates wait while Redis is unreachable; beyond, they are dropped "
     "(run sbctl aggregates rebuild)",
     0, 1, 100000000},
    {SVC_CONF_END, NULL, NULL, 0, NULL, 0, 0, 0},
};

/* The offsets a batch covers in one partition. */
typedef struct ingest_span {
    const char *topic; /* borrowed from the batch */
    int32_t partition;
    int64_t lo, hi;
} ingest_span_t;

/* Where the aggregates stand, for logging changes once. */
typedef enum ingest_agg_state { AGG_OK, AGG_DOWN, AGG_PAUSED } ingest_agg_state_t;

typedef struct ingest {
    db_t *db;
    svc_health_t *health;
    svc_metric_t *m_inserted, *m_duplicates, *m_rejected, *m_seconds;
    ingest_row_t *rows;
    bus_record_t **row_recs; /* the record each row came from */
    bool *owned;             /* row i is owned by its record (see above) */
    size_t cap;
    ingest_buf_t copy;

    cache_t *cache; /* NULL: aggregates off */
    cache_agg_writer_t *agg;
    cache_agg_item_t *items;
    ingest_span_t *spans;
    ingest_agg_state_t agg_state;
    cache_agg_stats_t agg_seen; /* the stats already reported */
    int64_t agg_max_pending;
    svc_metric_t *m_agg_pending, *m_agg_applied, *m_agg_skipped, *m_agg_dropped, *m_agg_gaps,
        *m_agg_failures;
} ingest_t;

#define INGEST_STAGING "sb_ingest_staging"

static const char ingest_sql_staging[] =
    "BEGIN; CREATE TEMP TABLE IF NOT EXISTS " INGEST_STAGING " (org_id uuid, project_id uuid, "
    "reading_id uuid, sensor_id text, ts timestamptz, value double precision, unit text, "
    "tags jsonb, request_id text, kafka_partition integer, kafka_offset bigint) "
    "ON COMMIT DELETE ROWS";

/* Reports the connection state to /readyz and passes @r through. */
static int ingest_db_state(ingest_t *st, int r)
{
    svc_health_set(st->health, "db", db_connected(st->db));
    return r;
}

/* Creates the monthly partitions the rows need, each in its own short autocommit statement so
 * that the partitioned table's lock is not held for the whole batch. Two ingesters racing to
 * create one partition can make one fail: that is transient, the retry finds it. */
static int ingest_ensure_partitions(ingest_t *st, size_t nrows)
{
    int64_t done[8];
    size_t ndone = 0;
    for (size_t i = 0; i < nrows; i++) {
        int64_t month = ingest_row_month(&st->rows[i]);
        bool seen = false;
        for (size_t j = 0; j < ndone && !seen; j++)
            seen = done[j] == month;
        if (seen)
            continue;

        char ts[40];
        contract_format_rfc3339(st->rows[i].ts_us, ts, sizeof(ts));
        const char *params[] = {ts};
        int r = db_exec(st->db, "ingest_partition", NULL, 1, params, NULL);
        if (r < 0) {
            log_warn("cannot create the partition for %s: %s", ts, db_errmsg(st->db));
            return r == -EINVAL ? -EAGAIN : r;
        }
        if (ndone < sizeof(done) / sizeof(done[0]))
            done[ndone++] = month;
    }
    return 0;
}

static int ingest_row_cmp(const void *a, const void *b, void *opaque)
{
    const ingest_row_t *rows = opaque;
    const ingest_row_t *x = &rows[*(const size_t *)a], *y = &rows[*(const size_t *)b];
    if (x->partition != y->partition)
        return x->partition < y->partition ? -1 : 1;
    return x->offset < y->offset ? -1 : x->offset > y->offset;
}

/* Inside the batch's transaction: which rows do their records own? When every row was new, all
 * of them; otherwise PostgreSQL says which rows carry their record's partition and offset. */
static int ingest_owned_from_staging(ingest_t *st, size_t nrows, size_t inserted)
{
    PGresult *res = NULL;
    size_t *idx = NULL;
    int r;

    for (size_t i = 0; i < nrows; i++)
        st->owned[i] = inserted == nrows;
    if (!st->cache || inserted == nrows)
        return 0;
    r = db_exec(st->db, NULL,
                "SELECT s.kafka_partition, s.kafka_offset FROM " INGEST_STAGING
                " s JOIN sensor_readings r ON r.project_id = s.project_id AND r.reading_id = "
                "s.reading_id AND r.ts = s.ts AND r.kafka_partition = s.kafka_partition AND "
                "r.kafka_offset = s.kafka_offset",
                0, NULL, &res);
    if (r < 0)
        return r;
    if (!(idx = malloc(nrows * sizeof(*idx)))) {
        PQclear(res);
        return -ENOMEM;
    }
    for (size_t i = 0; i < nrows; i++)
        idx[i] = i;
    qsort_r(idx, nrows, sizeof(*idx), ingest_row_cmp, st->rows);
    for (int t = 0; t < PQntuples(res); t++) {
        ingest_row_t key = {.partition = (int32_t)strtol(PQgetvalue(res, t, 0), NULL, 10),
                            .offset = strtoll(PQgetvalue(res, t, 1), NULL, 10)};
        size_t lo = 0, hi = nrows;
        while (lo < hi) { /* the first row >= key */
            size_t mid = (lo + hi) / 2;
            const ingest_row_t *m = &st->rows[idx[mid]];
            if (m->partition < key.partition ||
                (m->partition == key.partition && m->offset < key.offset))
                lo = mid + 1;
            else
                hi = mid;
        }
        if (lo < nrows && st->rows[idx[lo]].partition == key.partition &&
            st->rows[idx[lo]].offset == key.offset)
            st->owned[idx[lo]] = true;
    }
    free(idx);
    PQclear(res);
    return 0;
}

static int ingest_write_batch(ingest_t *st, size_t nrows, size_t *ret_inserted)
{
    PGresult *res = NULL;
    int r;

    st->copy.len = 0;
    for (size_t i = 0; i < nrows; i++)
        if ((r = ingest_row_copy_append(&st->rows[i], &st->copy)) < 0)
            return r;

    if ((r = db_exec_simple(st->db, ingest_sql_staging)) < 0)
        goto fail;
    if ((r = db_copy_begin(st->db, "COPY " INGEST_STAGING " FROM STDIN")) < 0)
        goto fail;
    r = db_copy_put(st->db, st->copy.data, st->copy.len);
    int r2 = db_copy_end(st->db, r < 0 ? "sending COPY data failed" : NULL);
    if (r < 0 || (r = r2) < 0)
        goto fail;
    r = db_exec(st->db, NULL,
                "INSERT INTO sensor_readings (org_id, project_id, reading_id, sensor_id, ts, "
                "value, unit, tags, request_id, kafka_partition, kafka_offset) SELECT org_id, "
                "project_id, reading_id, sensor_id, ts, value, unit, tags, request_id, "
                "kafka_partition, kafka_offset FROM " INGEST_STAGING " ON CONFLICT DO NOTHING",
                0, NULL, &res);
    if (r < 0)
        goto fail;
    *ret_inserted = strtoull(PQcmdTuples(res), NULL, 10);
    PQclear(res);
    res = NULL;
    if ((r = ingest_owned_from_staging(st, nrows, *ret_inserted)) < 0)
        goto fail;
    if ((r = db_exec_simple(st->db, "COMMIT")) < 0)
        goto fail;
    return 0;

fail:
    if (db_connected(st->db))
        (void)db_exec_simple(st->db, "ROLLBACK");
    return r;
}

/* The slow path after PostgreSQL refused a batch for its data: one autocommit INSERT per row,
 * so that exactly the rows it still refuses are rejected and the others are kept. */
static int ingest_write_one_by_one(ingest_t *st, size_t nrows, size_t *ret_inserted,
                                   size_t *ret_rejected)
{
    size_t inserted = 0, rejected = 0;
    for (size_t i = 0; i < nrows; i++) {
        ingest_params_scratch_t scratch;
        const char *params[INGEST_NCOLS];
        PGresult *res = NULL;
        ingest_row_params(&st->rows[i], &scratch, params);
        int r = db_exec(st->db, "ingest_one", NULL, INGEST_NCOLS, params, &res);
        st->owned[i] = false;
        if (r == -EINVAL) {
            bus_record_reject(st->row_recs[i], "PostgreSQL rejected the row: %s",
                              db_errmsg(st->db));
            rejected++;
            continue;
        }
        if (r < 0)
            return r;
        size_t n = strtoull(PQcmdTuples(res), NULL, 10);
        PQclear(res);
        inserted += n;
        st->owned[i] = n == 1;
        if (n == 0 && st->cache) { /* a replay of this very record, or another's reading? */
            const char *key[] = {params[1], params[2], params[4], params[9], params[10]};
            if ((r = db_exec(st->db, "ingest_owner", NULL, 5, key, &res)) < 0)
                return r;
            st->owned[i] = PQntuples(res) == 1;
            PQclear(res);
        }
    }
    *ret_inserted = inserted;
    *ret_rejected = rejected;
    return 0;
}

/* Converts the batch into st->rows, rejecting the records that can never become a row. */
static int ingest_convert(ingest_t *st, bus_record_t *recs, size_t n, size_t *ret_nrows)
{
    if (n > st->cap) {
        ingest_row_t *rows = realloc(st->rows, n * sizeof(*rows));
        if (!rows)
            return -ENOMEM;
        st->rows = rows;
        bus_record_t **row_recs = realloc(st->row_recs, n * sizeof(*row_recs));
        if (!row_recs)
            return -ENOMEM;
        st->row_recs = row_recs;
        bool *owned = realloc(st->owned, n * sizeof(*owned));
        if (!owned)
            return -ENOMEM;
        st->owned = owned;
        cache_agg_item_t *items = realloc(st->items, n * sizeof(*items));
        if (!items)
            return -ENOMEM;
        st->items = items;
        ingest_span_t *spans = realloc(st->spans, n * sizeof(*spans));
        if (!spans)
            return -ENOMEM;
        st->spans = spans;
        st->cap = n;
    }

    size_t nrows = 0;
    for (size_t i = 0; i < n; i++) {
        bus_record_t *rec = &recs[i];
        ingest_input_t in = {.value = rec->value,
                             .value_len = rec->value_len,
                             .partition = rec->partition,
                             .offset = rec->offset};
        if (bus_record_header(rec, "sb-org-id", &in.org_id, &in.org_id_len) < 0)
            in.org_id = NULL;
        if (bus_record_header(rec, "sb-project-id", &in.project_id, &in.project_id_len) < 0)
            in.project_id = NULL;
        if (bus_record_header(rec, "sb-request-id", &in.request_id, &in.request_id_len) < 0)
            in.request_id = NULL;

        char reason[256];
        int r = ingest_row_parse(&in, &st->rows[nrows], reason, sizeof(reason));
        if (r == -ENOMEM) {
            *ret_nrows = nrows;
            return r;
        }
        if (r < 0) {
            bus_record_reject(rec, "%s", reason);
            continue;
        }
        st->row_recs[nrows++] = rec;
    }
    *ret_nrows = nrows;
    return 0;
}

/* --- aggregates ------------------------------------------------------------------------------ */

/* Reports the writer's progress: metrics, /readyz, and a log line when something changes. */
static void ingest_agg_report(ingest_t *st, int r)
{
    const cache_agg_stats_t *now = cache_agg_writer_stats(st->agg);
    ingest_agg_state_t state = r == 0 ? AGG_OK : r == -EBUSY ? AGG_PAUSED : AGG_DOWN;

    svc_metric_set(st->m_agg_pending, (double)cache_agg_writer_pending(st->agg));
    svc_metric_add(st->m_agg_applied, (double)(now->applied - st->agg_seen.applied));
    svc_metric_add(st->m_agg_skipped, (double)(now->skipped - st->agg_seen.skipped));
    svc_metric_add(st->m_agg_dropped, (double)(now->dropped - st->agg_seen.dropped));
    svc_metric_add(st->m_agg_gaps, (double)(now->gap_offsets - st->agg_seen.gap_offsets));
    if (now->dropped > st->agg_seen.dropped)
        log_error("%" PRIu64 " readings' aggregate updates were dropped (%s); the Redis "
                  "aggregates are short until `sbctl aggregates rebuild` runs",
                  now->dropped - st->agg_seen.dropped,
                  r == -EINVAL ? cache_errmsg(st->cache)
                               : "more waited than aggregates_max_pending");
    if (now->gap_offsets > st->agg_seen.gap_offsets)
        log_warn("Redis aggregates missed %" PRIu64 " offsets (updates lost in a crash or "
                 "dropped); run `sbctl aggregates rebuild` to repair them",
                 now->gap_offsets - st->agg_seen.gap_offsets);
    st->agg_seen = *now;

    if (state == AGG_DOWN && r != -EINVAL) {
        svc_metric_inc(st->m_agg_failures);
        if (st->agg_state != AGG_DOWN)
            log_warn("Redis aggregates lag: %s; %zu readings wait (up to %zu)",
                     cache_errmsg(st->cache), cache_agg_writer_pending(st->agg),
                     (size_t)st->agg_max_pending);
    } else if (state == AGG_PAUSED && st->agg_state != AGG_PAUSED) {
        log_info("an aggregates rebuild runs; aggregate updates wait for it");
    } else if (state != AGG_DOWN && st->agg_state == AGG_DOWN) {
        log_info("Redis aggregates are applied again");
    }
    if (r != -EINVAL)
        st->agg_state = state;
    svc_health_note(st->health, "redis", st->agg_state != AGG_DOWN);
}

/* Hands the rows this batch's records own to the writer, per partition with the offsets the
 * batch covered there, and applies them. Never fails the batch. */
static void ingest_agg_batch(ingest_t *st, const bus_record_t *recs, size_t n, size_t nrows)
{
    size_t nspans = 0;

    if (!st->cache)
        return;
    for (size_t i = 0; i < n; i++) { /* a batch spans a few partitions */
        ingest_span_t *sp = st->spans;
        while (sp < st->spans + nspans &&
               (sp->partition != recs[i].partition || strcmp(sp->topic, recs[i].topic)))
            sp++;
        if (sp == st->spans + nspans) {
            *sp = (ingest_span_t){recs[i].topic, recs[i].partition, recs[i].offset, recs[i].offset};
            nspans++;
        }
        sp->lo = recs[i].offset < sp->lo ? recs[i].offset : sp->lo;
        sp->hi = recs[i].offset > sp->hi ? recs[i].offset : sp->hi;
    }
    for (ingest_span_t *sp = st->spans; sp < st->spans + nspans; sp++) {
        size_t nitems = 0;
        for (size_t k = 0; k < nrows; k++) {
            const ingest_row_t *row = &st->rows[k];
            const bus_record_t *from = st->row_recs[k];
            if (!st->owned[k] || from->partition != sp->partition || strcmp(from->topic, sp->topic))
                continue;
            cache_agg_item_t *it = &st->items[nitems++];
            *it = (cache_agg_item_t){.offset = row->offset,
                                     .kind = CACHE_AGG_READING,
                                     .ts_us = row->ts_us,
                                     .value = row->value};
            memcpy(it->project_id, row->project_id, sizeof(it->project_id));
            snprintf(it->name, sizeof(it->name), "%s", row->sensor_id);
        }
        int r = cache_agg_writer_add(st->agg, sp->topic, sp->partition, sp->lo, sp->hi, st->items,
                                     nitems);
        if (r < 0)
            log_error("cannot queue aggregate updates of %s [%d]: %s", sp->topic,
                      (int)sp->partition, strerror(-r));
    }
    ingest_agg_report(st, cache_agg_writer_flush(st->agg));
}

static int ingest_handle_batch(void *opaque, bus_record_t *recs, size_t n)
{
    ingest_t *st = opaque;
    int64_t start = svc_now_ms();
    size_t nrows = 0, inserted = 0, rejected = 0;

    int r = ingest_convert(st, recs, n, &nrows);
    if (r < 0 || nrows == 0)
        goto done;
    rejected = n - nrows;

    if ((r = ingest_ensure_partitions(st, nrows)) < 0)
        goto done;
    r = ingest_write_batch(st, nrows, &inserted);
    if (r == -EINVAL) {
        log_warn("PostgreSQL refused a batch of %zu rows (%s); retrying them one by one", nrows,
                 db_errmsg(st->db));
        size_t poison = 0;
        r = ingest_write_one_by_one(st, nrows, &inserted, &poison);
        rejected += poison;
    }
    if (r < 0) {
        log_warn("batch of %zu rows not written, will retry: %s", nrows, db_errmsg(st->db));
        goto done;
    }

    svc_metric_add(st->m_inserted, (double)inserted);
    svc_metric_add(st->m_duplicates, (double)(n - rejected - inserted));
    svc_metric_add(st->m_rejected, (double)rejected);
    svc_metric_observe(st->m_seconds, (double)(svc_now_ms() - start) / 1000.0);
    log_debug("batch: %zu records, %zu inserted, %zu duplicates, %zu rejected in %lld ms", n,
              inserted, n - rejected - inserted, rejected, (long long)(svc_now_ms() - start));

done:
    if (r == 0)
        ingest_agg_batch(st, recs, n, nrows);
    for (size_t i = 0; i < nrows; i++)
        ingest_row_clear(&st->rows[i]);
    if (r == 0 && nrows == 0)
        svc_metric_add(st->m_rejected, (double)n); /* every record was invalid */
    return ingest_db_state(st, r);
}

/* Readiness also gets a fresh look when partitions move, not only when records arrive. */
static void ingest_on_assign(void *opaque, const rd_kafka_topic_partition_list_t *parts)
{
    ingest_t *st = opaque;
    (void)parts;
    (void)ingest_db_state(st, db_connect(st->db));
}

/* Between batches: a cheap round trip keeps /readyz true to PostgreSQL's state even when no
 * records arrive (libpq only learns of a dead connection when it uses it). */
static void ingest_tick(void *state)
{
    ingest_t *st = state;
    (void)ingest_db_state(st, db_exec_simple(st->db, "SELECT 1"));
    if (st->agg && !cache_agg_writer_idle(st->agg))
        ingest_agg_report(st, cache_agg_writer_flush(st->agg));
    else if (st->agg && st->agg_state == AGG_DOWN) /* nothing to send: is Redis back? */
        ingest_agg_report(st, cache_connect(st->cache) == 0 ? 0 : -ECONNREFUSED);
}

/* The next owner replays from the committed offsets and applies what this process could not:
 * a last try, then the rest is given up (Redis sees the gap if it was never applied). */
static void ingest_on_revoke(void *opaque, const rd_kafka_topic_partition_list_t *parts)
{
    ingest_t *st = opaque;
    if (!st->agg)
        return;
    int r = cache_agg_writer_flush(st->agg);
    for (int i = 0; i < parts->cnt; i++)
        cache_agg_writer_drop(st->agg, parts->elems[i].topic, parts->elems[i].partition);
    ingest_agg_report(st, r);
}

static void ingest_fini(void *state)
{
    ingest_t *st = state;
    if (!st)
        return;
    if (st->agg && !cache_agg_writer_idle(st->agg))
        (void)cache_agg_writer_flush(st->agg);
    cache_agg_writer_free(st->agg);
    cache_free(st->cache);
    db_free(st->db);
    free(st->rows);
    free(st->row_recs);
    free(st->owned);
    free(st->items);
    free(st->spans);
    ingest_buf_free(&st->copy);
    free(st);
}

static int ingest_agg_init(ingest_t *st, bus_daemon_t *d, const ingest_conf_t *c)
{
    svc_metrics_t *m = bus_daemon_metrics(d);
    char errbuf[256];
    int r;

    if (cache_url_check(c->redis_url, errbuf, sizeof(errbuf)) < 0) {
        log_error("redis_url: %s", errbuf);
        return -EINVAL;
    }
    st->m_agg_pending = svc_metrics_gauge(
        m, "sb_ingest_aggregate_pending",
        "Readings whose Redis aggregate updates wait (Redis down or a rebuild)", NULL);
    st->m_agg_applied = svc_metrics_counter(m, "sb_ingest_aggregate_applied_total",
                                            "Readings applied to the Redis aggregates", NULL);
    st->m_agg_skipped =
        svc_metrics_counter(m, "sb_ingest_aggregate_skipped_total",
                            "Readings Redis had applied already (replayed offsets)", NULL);
    st->m_agg_dropped = svc_metrics_counter(
        m, "sb_ingest_aggregate_dropped_total",
        "Readings whose aggregate updates were given up (sbctl aggregates rebuild repairs)", NULL);
    st->m_agg_gaps = svc_metrics_counter(
        m, "sb_ingest_aggregate_gap_offsets_total",
        "Offsets Redis never saw applied before later ones (lost updates; rebuild repairs)", NULL);
    st->m_agg_failures =
        svc_metrics_counter(m, "sb_ingest_aggregate_failures_total",
                            "Batches and ticks whose aggregates could not reach Redis", NULL);
    if (!st->m_agg_pending || !st->m_agg_applied || !st->m_agg_skipped || !st->m_agg_dropped ||
        !st->m_agg_gaps || !st->m_agg_failures)
        return -ENOMEM;
    st->agg_max_pending = c->aggregates_max_pending;
    if ((r = cache_new(c->redis_url, (unsigned)c->redis_timeout_ms, &st->cache)) < 0 ||
        (r = cache_agg_writer_new(st->cache, "sensor-ingest", (size_t)c->aggregates_max_pending,
                                  &st->agg)) < 0) {
        log_error("cannot create the Redis client: %s", strerror(-r));
        return r;
    }
    if (!cache_connected(st->cache)) {
        log_warn("Redis is not reachable yet; aggregates wait for it: %s", cache_errmsg(st->cache));
        st->agg_state = AGG_DOWN;
    }
    svc_health_note(st->health, "redis", st->agg_state != AGG_DOWN);
    return 0;
}

static int ingest_init(bus_daemon_t *d, void *conf, void **ret_state)
{
    const ingest_conf_t *c = conf;
    svc_metrics_t *m = bus_daemon_metrics(d);
    int r;

    if (!c->pg_dsn || !*c->pg_dsn) {
        log_error("pg_dsn is not set (SB_SENSOR_INGEST_PG_DSN or SB_SENSOR_INGEST_PG_DSN_FILE)");
        return -EINVAL;
    }
    ingest_t *st = calloc(1, sizeof(*st));
    if (!st)
        return -ENOMEM;
    st->health = bus_daemon_health(d);
    st->m_inserted = svc_metrics_counter(m, "sb_ingest_rows_inserted_total",
                                         "Rows written to sensor_readings", NULL);
    st->m_duplicates =
        svc_metrics_counter(m, "sb_ingest_rows_duplicate_total",
                            "Valid records that were already stored (redeliveries)", NULL);
    st->m_rejected = svc_metrics_counter(
        m, "sb_ingest_rows_rejected_total",
        "Records sent to the dead-letter topic (invalid, or refused by PostgreSQL)", NULL);
    st->m_seconds = svc_metrics_histogram(m, "sb_ingest_batch_duration_seconds",
                                          "Time to convert and write one batch", NULL,
                                          svc_metrics_latency_bounds, svc_metrics_latency_nbounds);
    if (!st->m_inserted || !st->m_duplicates || !st->m_rejected || !st->m_seconds) {
        r = -ENOMEM;
        goto fail;
    }
    if (c->redis_url && *c->redis_url && (r = ingest_agg_init(st, d, c)) < 0)
        goto fail;

    if ((r = db_new(c->pg_dsn, &st->db)) < 0) {
        log_error("pg_dsn is not a valid PostgreSQL connection string");
        goto fail;
    }
    if (!db_connected(st->db))
        log_warn("PostgreSQL is not reachable yet, will retry: %s", db_errmsg(st->db));

    /* Statements that name the schema's objects are prepared now, so that a database that was
     * never migrated is reported at start instead of at the first record. */
    char one_sql[512];
    snprintf(one_sql, sizeof(one_sql),
             "INSERT INTO sensor_readings (%s) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, "
             "$11) ON CONFLICT DO NOTHING",
             ingest_columns);
    if ((r = db_prepare(st->db, "ingest_partition", "SELECT sb_ensure_reading_partition($1)", 1)) <
            0 ||
        (r = db_prepare(st->db, "ingest_one", one_sql, INGEST_NCOLS)) < 0 ||
        (r = db_prepare(st->db, "ingest_owner",
                        "SELECT 1 FROM sensor_readings WHERE project_id = $1 AND reading_id = $2 "
                        "AND ts = $3 AND kafka_partition = $4 AND kafka_offset = $5",
                        5)) < 0) {
        log_error("cannot prepare statements (has `sbctl migrate` run?): %s", db_errmsg(st->db));
        goto fail;
    }
    (void)ingest_db_state(st, 0);
    *ret_state = st;
    return 0;

fail:
    ingest_fini(st);
    return r;
}

static const bus_daemon_desc_t ingest_desc = {
    .name = "sensor-ingest",
    .summary = "writes sensor.readings.v1 into PostgreSQL (COPY, idempotent) and the Redis "
               "dashboard aggregates",
    .topics = "sensor.readings.v1",
    .conf = ingest_conf_table,
    .conf_size = sizeof(ingest_conf_t),
    .batch_max = 2000,
    .batch_ms = 200,
    .init = ingest_init,
    .handle_batch = ingest_handle_batch,
    .on_assign = ingest_on_assign,
    .on_revoke = ingest_on_revoke,
    .tick = ingest_tick,
    .fini = ingest_fini,
};

int main(int argc, char **argv)
{
    return bus_daemon_main(&ingest_desc, argc, argv);
}
