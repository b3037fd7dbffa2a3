/* sbctl aggregates rebuild: recomputes the Redis dashboard aggregates from PostgreSQL.
 *
 * The live writers (sensor-ingest, anomaly-detector) apply each Kafka offset once and record the
 * last one applied per partition (cache_agg.h). A rebuild that ran beside them could count a row
 * twice (rebuilt from PostgreSQL, then applied again by a writer that had it pending) or lose
 * one (applied to a key the rebuild then replaced). So it takes the rebuild lock first: while it
 * holds sb:agg:rebuild the writers change nothing and keep their updates. It then reads the
 * offsets the writers have applied and rebuilds from exactly the rows those offsets cover (all
 * rows of a partition the writer never applied anything of); what the writers hold back is
 * beyond them and is applied after the lock is released. Every key is built under a temporary
 * name and RENAMEd over the old one, so a reader sees the old value or the new one; keys of the
 * layout that PostgreSQL no longer backs are deleted.
 */
#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "cache.h"
#include "cache_agg.h"
#include "sbctl.h"
#include "svc_util.h"

#define READINGS_TOPIC "sensor.readings.v1"
#define LOCK_TTL_MS    60000
#define PIPELINE_MAX   2000 /* commands sent per round trip */
#define NO_LIMIT       "9223372036854775807"

static int usage(FILE *f)
{
    fprintf(f,
            "Usage: sbctl aggregates rebuild [--org SLUG]\n"
            "\n"
            "Recomputes every Redis dashboard aggregate (docs/aggregates.md) from PostgreSQL:\n"
            "readings per minute of the last 48 hours, per-sensor count/min/max/last, the\n"
            "sensors seen, anomalies per project and, when the orders table exists, orders by\n"
            "status. With --org, only that organization's keys. Each key is replaced atomically\n"
            "(built under a temporary name, then RENAMEd); keys PostgreSQL no longer backs are\n"
            "deleted. sensor-ingest and anomaly-detector may keep running: their Redis updates\n"
            "wait while the rebuild holds the lock (sb:agg:rebuild) and apply afterwards, so\n"
            "nothing is counted twice or lost. Run it after a Redis outage that dropped updates\n"
            "(the daemons log it and count sb_*_aggregate_dropped_total / _gap_offsets_total)\n"
            "or after Redis lost its data; after data loss, rebuild without --org.\n"
            "\n"
            "Environment: SB_PG_DSN (or SB_PG_DSN_FILE), SB_REDIS_URL (or SB_REDIS_URL_FILE).\n");
    return f == stdout ? SBCTL_OK : SBCTL_USAGE;
}

typedef struct rebuild {
    db_t *db;
    cache_t *cache;
    char token[37];
    char tmp[64], tmp_set[64];      /* temporary keys: a set is built beside its sensors' hashes */
    const char *org_slug;           /* NULL: everything */
    char *projects, *orgs;          /* PostgreSQL uuid[] literals of the rebuilt tenants */
    char *ingest_cur, *anomaly_cur; /* bigint[] literals: last applied offset by partition + 1 */
    char **kept;                    /* every key written, to find the stale ones */
    size_t nkept, keptcap;
    size_t nprojects, nrpm, nsensors, nanomalies, norders, nstale;
    int64_t lock_at_ms;
} rebuild_t;

static int64_t now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* Sends the pipeline when it is long (@force: whatever it holds). 0 or -1 after a message. */
static int pipe_flush(rebuild_t *rb, bool force)
{
    if (!force && cache_pipeline_len(rb->cache) < PIPELINE_MAX)
        return 0;
    int r = cache_pipeline_run(rb->cache);
    if (r != 0) {
        sbctl_err("Redis: %s", cache_errmsg(rb->cache));
        return -1;
    }
    /* A long rebuild keeps its lock: the writers must not resume halfway. */
    if (now_ms() - rb->lock_at_ms > LOCK_TTL_MS / 3) {
        if ((r = cache_agg_lock_refresh(rb->cache, rb->token, LOCK_TTL_MS)) < 0) {
            sbctl_err("lost the rebuild lock (%s); the aggregates may be inexact, run the "
                      "rebuild again",
                      r == -ENOLCK ? "it expired" : cache_errmsg(rb->cache));
            return -1;
        }
        rb->lock_at_ms = now_ms();
    }
    return 0;
}

static int cmd(rebuild_t *rb, int argc, const char *const *argv)
{
    if (cache_pipeline_append(rb->cache, argc, argv, NULL) < 0) {
        sbctl_err("out of memory");
        return -1;
    }
    return pipe_flush(rb, false);
}

static int keep(rebuild_t *rb, const char *key)
{
    if (rb->nkept == rb->keptcap) {
        size_t cap = rb->keptcap ? 2 * rb->keptcap : 1024;
        char **v = realloc(rb->kept, cap * sizeof(*v));
        if (!v)
            return -1;
        rb->kept = v;
        rb->keptcap = cap;
    }
    if (!(rb->kept[rb->nkept] = strdup(key)))
        return -1;
    rb->nkept++;
    return 0;
}

/* Starts building @key under the temporary name @tmp. */
static int key_begin(rebuild_t *rb, const char *tmp, const char *key)
{
    const char *del[] = {"DEL", tmp};
    if (keep(rb, key) < 0) {
        sbctl_err("out of memory");
        return -1;
    }
    return cmd(rb, 2, del);
}

/* Replaces @key with what was built under @tmp. */
static int key_end(rebuild_t *rb, const char *tmp, const char *key)
{
    const char *rename[] = {"RENAME", tmp, key};
    return cmd(rb, 3, rename);
}

static int query(rebuild_t *rb, const char *sql, int nparams, const char *const *params,
                 PGresult **ret_res)
{
    if (db_exec(rb->db, NULL, sql, nparams, params, ret_res) < 0) {
        sbctl_err("PostgreSQL: %s", db_errmsg(rb->db));
        return -1;
    }
    return 0;
}

/* A bigint[] literal, by partition + 1, of the offsets in writer @consumer's hash for the
 * readings topic ("{NULL,42}": nothing applied of partition 0, offset 42 of partition 1). */
static int read_offsets(rebuild_t *rb, const char *consumer, char **ret)
{
    char key[CACHE_AGG_KEY_MAX], prefix[64];
    redisReply *reply = NULL;
    int64_t *cur = NULL;
    size_t n = 0, len = 0;
    int r = -1;

    cache_agg_key_offsets(key, sizeof(key), consumer);
    snprintf(prefix, sizeof(prefix), "%s:", READINGS_TOPIC);
    const char *argv[] = {"HGETALL", key};
    if (cache_command(rb->cache, 2, argv, NULL, &reply) < 0) {
        sbctl_err("Redis: %s", cache_errmsg(rb->cache));
        return -1;
    }
    for (size_t i = 0; i + 1 < reply->elements; i += 2) {
        const char *field = reply->element[i]->str, *value = reply->element[i + 1]->str;
        long p;
        if (!field || !value || strncmp(field, prefix, strlen(prefix)) ||
            sbctl_parse_int(field + strlen(prefix), 0, 100000, &p) < 0)
            continue;
        if ((size_t)p >= n) {
            int64_t *v = realloc(cur, ((size_t)p + 1) * sizeof(*v));
            if (!v)
                goto done;
            for (size_t k = n; k <= (size_t)p; k++)
                v[k] = -1;
            cur = v;
            n = (size_t)p + 1;
        }
        cur[p] = strtoll(value, NULL, 10);
    }
    char *s = malloc(n * 24 + 3);
    if (!s)
        goto done;
    s[len++] = '{';
    for (size_t p = 0; p < n; p++)
        len += (size_t)(cur[p] < 0 ? sprintf(s + len, "%sNULL", p ? "," : "")
                                   : sprintf(s + len, "%s%" PRId64, p ? "," : "", cur[p]));
    strcpy(s + len, "}");
    *ret = s;
    r = 0;
done:
    if (r < 0)
        sbctl_err("out of memory");
    free(cur);
    freeReplyObject(reply);
    return r;
}

/* The tenants to rebuild, as uuid[] literals. */
static int read_tenants(rebuild_t *rb)
{
    PGresult *res = NULL;
    const char *params[] = {rb->org_slug};
    if (query(rb,
              rb->org_slug
                  ? "SELECT coalesce(array_agg(p.id), '{}')::text, "
                    "(SELECT array_agg(id)::text FROM organizations WHERE slug = $1), count(p.id) "
                    "FROM projects p JOIN organizations o ON o.id = p.org_id WHERE o.slug = $1"
                  : "SELECT (SELECT coalesce(array_agg(id), '{}') FROM projects)::text, "
                    "(SELECT coalesce(array_agg(id), '{}') FROM organizations)::text, "
                    "(SELECT count(*) FROM projects)",
              rb->org_slug ? 1 : 0, params, &res) < 0)
        return -1;
    if (PQgetisnull(res, 0, 1)) {
        sbctl_err("no organization '%s'", rb->org_slug);
        PQclear(res);
        return -1;
    }
    rb->projects = strdup(PQgetvalue(res, 0, 0));
    rb->orgs = strdup(PQgetvalue(res, 0, 1));
    rb->nprojects = strtoull(PQgetvalue(res, 0, 2), NULL, 10);
    PQclear(res);
    if (!rb->projects || !rb->orgs) {
        sbctl_err("out of memory");
        return -1;
    }
    return 0;
}

/* The rows a writer's offsets cover: all of a partition it has applied nothing of. */
#define COVERED(cur) \
    "kafka_offset <= coalesce((" cur "::bigint[])[kafka_partition + 1], " NO_LIMIT ")"

static int rebuild_rpm(rebuild_t *rb)
{
    /* The minutes whose counters have not expired: (minute + 1) * 60 + TTL > now. */
    int64_t now_s = (int64_t)time(NULL);
    int64_t first = (now_s - CACHE_AGG_RPM_TTL_S) / 60;
    char since[32];
    PGresult *res = NULL;

    snprintf(since, sizeof(since), "%" PRId64, first * 60);
    const char *params[] = {rb->projects, rb->ingest_cur, since};
    if (query(rb,
              "SELECT project_id::text, floor(extract(epoch FROM ts) / 60)::bigint, count(*) "
              "FROM sensor_readings WHERE project_id = ANY($1::uuid[]) AND " COVERED(
                  "$2") " AND ts >= to_timestamp($3) GROUP BY 1, 2",
              3, params, &res) < 0)
        return -1;
    for (int i = 0; i < PQntuples(res); i++) {
        char key[CACHE_AGG_KEY_MAX], expireat[32];
        int64_t minute = strtoll(PQgetvalue(res, i, 1), NULL, 10);
        cache_agg_key_rpm(key, sizeof(key), PQgetvalue(res, i, 0), minute);
        snprintf(expireat, sizeof(expireat), "%" PRId64, cache_agg_rpm_expireat(minute));
        const char *set[] = {"SET", rb->tmp, PQgetvalue(res, i, 2)};
        const char *exp[] = {"EXPIREAT", rb->tmp, expireat};
        if (key_begin(rb, rb->tmp, key) < 0 || cmd(rb, 3, set) < 0 || cmd(rb, 3, exp) < 0 ||
            key_end(rb, rb->tmp, key) < 0) {
            PQclear(res);
            return -1;
        }
        rb->nrpm++;
    }
    PQclear(res);
    return 0;
}

static int rebuild_sensors(rebuild_t *rb)
{
    PGresult *res = NULL;
    const char *params[] = {rb->projects, rb->ingest_cur};
    int r = -1;

    /* Ordered by project, so that each project's set is built in one go. The last reading is
     * the newest, the larger value among equal times: as the writers decide it. */
    if (query(rb,
              "WITH r AS (SELECT * FROM sensor_readings WHERE project_id = ANY($1::uuid[]) "
              "AND " COVERED(
                  "$2") "), "
                        "a AS (SELECT project_id, sensor_id, count(*) n, min(value) lo, max(value) "
                        "hi "
                        "FROM r GROUP BY 1, 2), "
                        "l AS (SELECT DISTINCT ON (project_id, sensor_id) project_id, sensor_id, "
                        "(extract(epoch FROM ts) * 1000000)::bigint ts_us, value FROM r "
                        "ORDER BY project_id, sensor_id, ts DESC, value DESC) "
                        "SELECT a.project_id::text, a.sensor_id, a.n, a.lo, a.hi, l.ts_us, l.value "
                        "FROM a JOIN l USING (project_id, sensor_id) ORDER BY 1, 2",
              2, params, &res) < 0)
        return -1;
    int rows = PQntuples(res);
    for (int i = 0; i < rows; i++) {
        const char *project = PQgetvalue(res, i, 0), *sensor = PQgetvalue(res, i, 1);
        char key[CACHE_AGG_KEY_MAX], lo[CACHE_AGG_NUM_MAX], hi[CACHE_AGG_NUM_MAX],
            last[CACHE_AGG_NUM_MAX], ts[CACHE_AGG_NUM_MAX];
        cache_agg_format_double(strtod(PQgetvalue(res, i, 3), NULL), lo);
        cache_agg_format_double(strtod(PQgetvalue(res, i, 4), NULL), hi);
        cache_agg_format_ts(strtoll(PQgetvalue(res, i, 5), NULL, 10), ts);
        cache_agg_format_double(strtod(PQgetvalue(res, i, 6), NULL), last);
        cache_agg_key_sensor(key, sizeof(key), project, sensor);
        const char *hset[] = {"HSET",       rb->tmp, "count",   PQgetvalue(res, i, 2),
                              "min",        lo,      "max",     hi,
                              "last_value", last,    "last_ts", ts};
        if (key_begin(rb, rb->tmp, key) < 0 || cmd(rb, 12, hset) < 0 ||
            key_end(rb, rb->tmp, key) < 0)
            goto done;
        rb->nsensors++;

        /* The project's set, once its last sensor is reached. */
        cache_agg_key_sensors(key, sizeof(key), project);
        if ((i == 0 || strcmp(PQgetvalue(res, i - 1, 0), project)) &&
            key_begin(rb, rb->tmp_set, key) < 0)
            goto done;
        const char *sadd[] = {"SADD", rb->tmp_set, sensor};
        if (cmd(rb, 3, sadd) < 0)
            goto done;
        if ((i + 1 == rows || strcmp(PQgetvalue(res, i + 1, 0), project)) &&
            key_end(rb, rb->tmp_set, key) < 0)
            goto done;
    }
    r = 0;
done:
    PQclear(res);
    return r;
}

static int rebuild_anomalies(rebuild_t *rb)
{
    static const char *const checks[] = {"zscore", "limit_low", "limit_high", "rate"};
    PGresult *res = NULL;
    const char *params[] = {rb->projects, rb->anomaly_cur};

    /* Rows from before sql/0006 have no offset: the writer counted them long ago. */
    if (query(rb,
              "SELECT project_id::text, count(*), count(*) FILTER (WHERE 'zscore' = ANY(checks)), "
              "count(*) FILTER (WHERE 'limit_low' = ANY(checks)), count(*) FILTER (WHERE "
              "'limit_high' = ANY(checks)), count(*) FILTER (WHERE 'rate' = ANY(checks)) "
              "FROM anomalies WHERE project_id = ANY($1::uuid[]) AND (kafka_partition IS NULL "
              "OR " COVERED("$2") ") GROUP BY 1",
              2, params, &res) < 0)
        return -1;
    for (int i = 0; i < PQntuples(res); i++) {
        char key[CACHE_AGG_KEY_MAX];
        const char *argv[2 + 2 * 5] = {"HSET", rb->tmp, "total", PQgetvalue(res, i, 1)};
        int argc = 4;
        /* Like the writer, which only ever increments the checks that fired. */
        for (int c = 0; c < 4; c++)
            if (strcmp(PQgetvalue(res, i, 2 + c), "0")) {
                argv[argc++] = checks[c];
                argv[argc++] = PQgetvalue(res, i, 2 + c);
            }
        cache_agg_key_anomalies(key, sizeof(key), PQgetvalue(res, i, 0));
        if (key_begin(rb, rb->tmp, key) < 0 || cmd(rb, argc, argv) < 0 ||
            key_end(rb, rb->tmp, key) < 0) {
            PQclear(res);
            return -1;
        }
        rb->nanomalies++;
    }
    PQclear(res);
    return 0;
}

static const char *const order_statuses[8] = {"pending",   "pending_approval", "accepted",
                                              "rejected",  "in_production",    "shipped",
                                              "delivered", "cancelled"};

/* Orders by status, when sb-order-processor's table exists. Returns 1 when it does not. */
static int rebuild_orders(rebuild_t *rb)
{
    PGresult *res = NULL;
    const char *params[] = {rb->orgs};

    if (query(rb, "SELECT to_regclass('orders') IS NOT NULL", 0, NULL, &res) < 0)
        return -1;
    bool exists = !strcmp(PQgetvalue(res, 0, 0), "t");
    PQclear(res);
    if (!exists)
        return 1;
    if (query(rb,
              "SELECT o.id::text, c.status::text, c.n FROM organizations o LEFT JOIN "
              "(SELECT org_id, status, count(*) n FROM orders GROUP BY 1, 2) c ON c.org_id = "
              "o.id WHERE o.id = ANY($1::uuid[]) ORDER BY 1, 2",
              1, params, &res) < 0)
        return -1;
    int rows = PQntuples(res);
    for (int i = 0; i < rows; i++) {
        char key[CACHE_AGG_KEY_MAX];
        const char *org = PQgetvalue(res, i, 0);
        cache_agg_key_orders(key, sizeof(key), org);
        if (i == 0 || strcmp(PQgetvalue(res, i - 1, 0), org)) {
            /* As sb-order-processor writes it: every status, 0 when it has no orders (and an
             * organization without orders has all zeros). */
            const char *zeros[2 + 2 * 8] = {"HSET", rb->tmp};
            for (int k = 0; k < 8; k++) {
                zeros[2 + 2 * k] = order_statuses[k];
                zeros[3 + 2 * k] = "0";
            }
            if (key_begin(rb, rb->tmp, key) < 0 || cmd(rb, 18, zeros) < 0)
                goto fail;
        }
        const char *hset[] = {"HSET", rb->tmp, PQgetvalue(res, i, 1), PQgetvalue(res, i, 2)};
        if (!PQgetisnull(res, i, 1) && cmd(rb, 4, hset) < 0)
            goto fail;
        if (i + 1 == rows || strcmp(PQgetvalue(res, i + 1, 0), org)) {
            if (key_end(rb, rb->tmp, key) < 0)
                goto fail;
            rb->norders++;
        }
    }
    PQclear(res);
    return 0;
fail:
    PQclear(res);
    return -1;
}

/* Full rebuild: a partition a writer has never applied anything of is now covered up to its
 * newest row, so that updates the writer still holds for those rows are not applied twice. */
static int record_offsets(rebuild_t *rb, const char *consumer, const char *table, const char *cur)
{
    char key[CACHE_AGG_KEY_MAX], field[64];
    PGresult *res = NULL;
    const char *params[] = {cur};
    char sql[320];

    snprintf(sql, sizeof(sql),
             "SELECT kafka_partition, max(kafka_offset) FROM %s WHERE kafka_partition IS NOT NULL "
             "AND ($1::bigint[])[kafka_partition + 1] IS NULL GROUP BY 1",
             table);
    if (query(rb, sql, 1, params, &res) < 0)
        return -1;
    cache_agg_key_offsets(key, sizeof(key), consumer);
    for (int i = 0; i < PQntuples(res); i++) {
        snprintf(field, sizeof(field), "%s:%s", READINGS_TOPIC, PQgetvalue(res, i, 0));
        const char *hset[] = {"HSETNX", key, field, PQgetvalue(res, i, 1)};
        if (cmd(rb, 4, hset) < 0) {
            PQclear(res);
            return -1;
        }
    }
    PQclear(res);
    return 0;
}

static int str_cmp(const void *a, const void *b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

/* Deletes the keys matching @pattern that the rebuild did not write. */
static int delete_stale(rebuild_t *rb, const char *pattern)
{
    char cursor[32] = "0";
    do {
        redisReply *reply = NULL;
        const char *scan[] = {"SCAN", cursor, "MATCH", pattern, "COUNT", "1000"};
        if (cache_command(rb->cache, 6, scan, NULL, &reply) < 0) {
            sbctl_err("Redis: %s", cache_errmsg(rb->cache));
            return -1;
        }
        snprintf(cursor, sizeof(cursor), "%s", reply->element[0]->str);
        const redisReply *keys = reply->element[1];
        for (size_t i = 0; i < keys->elements; i++) {
            const char *k = keys->element[i]->str;
            if (bsearch(&k, rb->kept, rb->nkept, sizeof(*rb->kept), str_cmp))
                continue;
            const char *del[] = {"DEL", k};
            if (cmd(rb, 2, del) < 0) {
                freeReplyObject(reply);
                return -1;
            }
            rb->nstale++;
        }
        freeReplyObject(reply);
    } while (strcmp(cursor, "0"));
    return 0;
}

/* The patterns of the keys this rebuild owns: every tenant's, or one organization's. */
static int delete_stale_all(rebuild_t *rb, bool orders)
{
    static const char *const families[] = {"sb:rpm:%s:*", "sb:sensor:%s:*", "sb:sensors:%s",
                                           "sb:anomalies:%s"};
    char pattern[CACHE_AGG_KEY_MAX];

    qsort(rb->kept, rb->nkept, sizeof(*rb->kept), str_cmp);
    if (!rb->org_slug) {
        for (size_t f = 0; f < 4; f++) {
            snprintf(pattern, sizeof(pattern), families[f], "*");
            if (delete_stale(rb, pattern) < 0)
                return -1;
        }
        return orders ? delete_stale(rb, "sb:orders:*") : 0;
    }
    /* "{id,id}": each project of the organization. */
    char *list = strdup(rb->projects + 1), *save = NULL;
    if (!list)
        return -1;
    list[strcspn(list, "}")] = '\0';
    for (char *id = strtok_r(list, ",", &save); id; id = strtok_r(NULL, ",", &save))
        for (size_t f = 0; f < 4; f++) {
            snprintf(pattern, sizeof(pattern), families[f], id);
            if (delete_stale(rb, pattern) < 0) {
                free(list);
                return -1;
            }
        }
    free(list);
    if (orders) {
        char org[40];
        snprintf(org, sizeof(org), "%.36s", rb->orgs + 1);
        cache_agg_key_orders(pattern, sizeof(pattern), org);
        return delete_stale(rb, pattern);
    }
    return 0;
}

static int rebuild_run(rebuild_t *rb)
{
    int orders;

    if (read_offsets(rb, "sensor-ingest", &rb->ingest_cur) < 0 ||
        read_offsets(rb, "anomaly-detector", &rb->anomaly_cur) < 0)
        return -1;
    /* One snapshot for every query: the rows of partitions no writer covers yet must be the
     * same for the per-minute counters and the sensors. */
    if (db_exec_simple(rb->db, "BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY") < 0) {
        sbctl_err("PostgreSQL: %s", db_errmsg(rb->db));
        return -1;
    }
    if (read_tenants(rb) < 0 || rebuild_rpm(rb) < 0 || rebuild_sensors(rb) < 0 ||
        rebuild_anomalies(rb) < 0 || (orders = rebuild_orders(rb)) < 0)
        return -1;
    if (!rb->org_slug &&
        (record_offsets(rb, "sensor-ingest", "sensor_readings", rb->ingest_cur) < 0 ||
         record_offsets(rb, "anomaly-detector", "anomalies", rb->anomaly_cur) < 0))
        return -1;
    (void)db_exec_simple(rb->db, "COMMIT");
    if (pipe_flush(rb, true) < 0 || delete_stale_all(rb, orders == 0) < 0 ||
        pipe_flush(rb, true) < 0)
        return -1;
    char orders_text[64];
    snprintf(orders_text, sizeof(orders_text),
             orders == 0 ? "%zu organization(s) with orders" : "no orders table", rb->norders);
    printf("rebuilt %s: %zu project(s), %zu per-minute counter(s), %zu sensor(s), %zu anomaly "
           "hash(es), %s; %zu stale key(s) deleted\n",
           rb->org_slug ? rb->org_slug : "every organization", rb->nprojects, rb->nrpm,
           rb->nsensors, rb->nanomalies, orders_text, rb->nstale);
    return 0;
}

static int aggregates_rebuild(const char *org_slug)
{
    rebuild_t rb = {.org_slug = org_slug};
    char *url = NULL;
    bool locked = false;
    int r, status = SBCTL_FAIL;

    if (org_slug && !sbctl_slug_valid(org_slug)) {
        sbctl_err("invalid organization slug '%s'", org_slug);
        return SBCTL_USAGE;
    }
    if (!(url = sbctl_secret("SB_REDIS_URL", true, NULL)))
        return SBCTL_FAIL;
    char errbuf[256];
    if (cache_url_check(url, errbuf, sizeof(errbuf)) < 0) {
        sbctl_err("SB_REDIS_URL: %s", errbuf);
        goto done;
    }
    if (!(rb.db = sbctl_db_open()))
        goto done;
    if (cache_new(url, 10000, &rb.cache) < 0 || cache_connect(rb.cache) < 0) {
        sbctl_err("cannot connect to Redis: %s",
                  rb.cache ? cache_errmsg(rb.cache) : "out of memory");
        goto done;
    }
    if (svc_uuid4(rb.token) < 0) {
        sbctl_err("no random bytes for the lock token");
        goto done;
    }
    snprintf(rb.tmp, sizeof(rb.tmp), "sb:agg:tmp:%s", rb.token);
    snprintf(rb.tmp_set, sizeof(rb.tmp_set), "sb:agg:tmp:%s:set", rb.token);
    if ((r = cache_agg_lock(rb.cache, rb.token, LOCK_TTL_MS)) < 0) {
        sbctl_err(r == -EBUSY ? "another rebuild is running (%s is held); try again when it ends"
                              : "cannot take the rebuild lock %s: %s",
                  CACHE_AGG_LOCK_KEY, cache_errmsg(rb.cache));
        goto done;
    }
    locked = true;
    rb.lock_at_ms = now_ms();
    if (rebuild_run(&rb) == 0)
        status = SBCTL_OK;

done:
    if (rb.cache) {
        cache_pipeline_clear(rb.cache);
        const char *del[] = {"DEL", rb.tmp, rb.tmp_set};
        if (rb.tmp[0])
            (void)cache_command(rb.cache, 3, del, NULL, NULL);
        if (locked && cache_agg_unlock(rb.cache, rb.token) < 0)
            sbctl_err("could not release %s (%s); it expires within %d s", CACHE_AGG_LOCK_KEY,
                      cache_errmsg(rb.cache), LOCK_TTL_MS / 1000);
    }
    for (size_t i = 0; i < rb.nkept; i++)
        free(rb.kept[i]);
    free(rb.kept);
    free(rb.projects);
    free(rb.orgs);
    free(rb.ingest_cur);
    free(rb.anomaly_cur);
    cache_free(rb.cache);
    db_free(rb.db);
    free(url);
    return status;
}

int sbctl_aggregates_run(int argc, char **argv)
{
    static const struct option opts[] = {
        {"org", required_argument, NULL, 'o'}, {"help", no_argument, NULL, 'h'}, {0}};
    const char *org = NULL;
    int c;

    if (argc < 2)
        return usage(stderr);
    if (!strcmp(argv[1], "--help") || !strcmp(argv[1], "-h") || !strcmp(argv[1], "help"))
        return usage(stdout);
    if (strcmp(argv[1], "rebuild")) {
        sbctl_err("unknown aggregates command '%s' (see sbctl aggregates --help)", argv[1]);
        return SBCTL_USAGE;
    }
    optind = 0;
    while ((c = getopt_long(argc - 1, argv + 1, "h", opts, NULL)) != -1) {
        if (c == 'h')
            return usage(stdout);
        if (c != 'o')
            return usage(stderr);
        org = optarg;
    }
    if (optind < argc - 1) {
        sbctl_err("unexpected argument '%s'", argv[optind + 1]);
        return SBCTL_USAGE;
    }
    return aggregates_rebuild(org);
}
