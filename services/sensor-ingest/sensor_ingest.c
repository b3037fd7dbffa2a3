/* sb-sensor-ingest: sensor.readings.v1 -> PostgreSQL sensor_readings, in batches, with COPY.
 *
 * A batch becomes one transaction: COPY into a temporary staging table, then INSERT ... SELECT
 * ... ON CONFLICT DO NOTHING into sensor_readings. The primary key (project_id, reading_id, ts)
 * makes a redelivered record a no-op, so at-least-once delivery gives exactly one row. When
 * PostgreSQL rejects a batch for its data, the rows are retried one by one and only the ones it
 * still rejects go to the dead-letter topic: a poison record never blocks its partition.
 */
#include <errno.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>

#include "bus_daemon.h"
#include "db.h"
#include "ingest_row.h"
#include "svc_log.h"
#include "svc_util.h"

typedef struct ingest_conf {
    char *pg_dsn;
} ingest_conf_t;

static const svc_conf_entry_t ingest_conf_table[] = {
    {SVC_CONF_STR, "pg_dsn", NULL, offsetof(ingest_conf_t, pg_dsn),
     "PostgreSQL connection string (libpq key=value or URI), required", SVC_CONF_SECRET, 0, 0},
    {SVC_CONF_END, NULL, NULL, 0, NULL, 0, 0, 0},
};

typedef struct ingest {
    db_t *db;
    svc_health_t *health;
    svc_metric_t *m_inserted, *m_duplicates, *m_rejected, *m_seconds;
    ingest_row_t *rows;
    bus_record_t **row_recs; /* the record each row came from */
    size_t cap;
    ingest_buf_t copy;
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
        if (r == -EINVAL) {
            bus_record_reject(st->row_recs[i], "PostgreSQL rejected the row: %s",
                              db_errmsg(st->db));
            rejected++;
            continue;
        }
        if (r < 0)
            return r;
        inserted += strtoull(PQcmdTuples(res), NULL, 10);
        PQclear(res);
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
}

static void ingest_fini(void *state)
{
    ingest_t *st = state;
    if (!st)
        return;
    db_free(st->db);
    free(st->rows);
    free(st->row_recs);
    ingest_buf_free(&st->copy);
    free(st);
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
        (r = db_prepare(st->db, "ingest_one", one_sql, INGEST_NCOLS)) < 0) {
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
    .summary = "writes sensor.readings.v1 into PostgreSQL (COPY, idempotent)",
    .topics = "sensor.readings.v1",
    .conf = ingest_conf_table,
    .conf_size = sizeof(ingest_conf_t),
    .batch_max = 2000,
    .batch_ms = 200,
    .init = ingest_init,
    .handle_batch = ingest_handle_batch,
    .on_assign = ingest_on_assign,
    .tick = ingest_tick,
    .fini = ingest_fini,
};

int main(int argc, char **argv)
{
    return bus_daemon_main(&ingest_desc, argc, argv);
}
