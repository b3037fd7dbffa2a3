/* dashboard.c: GET /dashboard/metrics and GET /dashboard/health.
 *
 * /dashboard/metrics is what a dashboard polls: readings per minute over the last hour, the
 * sensors seen, anomaly counts and the organization's orders by status. It reads the live
 * aggregates the consumer daemons keep in Redis (layout in docs/api-reads.md and
 * docs/aggregates.md), and answers the same document from PostgreSQL when Redis is not
 * configured, unreachable, slow, or lacks a project's aggregates; "source" says which. The
 * assembled answer is kept per loop (thread-local) for DASH_CACHE_MS, so a wall of dashboards
 * polling every second costs one computation per organization, project and loop.
 *
 * When is Redis trusted? The readings aggregates of a project exist once sb:sensors:<project> does
 * (sensor-ingest adds every sensor it stores a reading of). A project in scope without it is
 * either empty or not aggregated (Redis was flushed, or the aggregator is not deployed), so the
 * answer comes from PostgreSQL, which is right either way. For a person, projects without a
 * single reading are known from PostgreSQL and skipped. The other keys are plain counters that
 * their writers create with their first increment, so a missing sb:rpm, sb:anomalies or sb:orders
 * key is a zero (`sbctl aggregates rebuild` restores them all after a flush).
 *
 * /dashboard/health is the pipeline as the caller may see it: the gateway's readiness, Kafka,
 * PostgreSQL and Redis reachability, and the newest reading of the caller's scope.
 */
#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <event2/keyvalq_struct.h>

#include "cache.h"
#include "contract.h"
#include "gateway.h"
#include "svc_log.h"
#include "svc_util.h"

#define DASH_MINUTES  60
#define DASH_CACHE_MS 2000
/* While PostgreSQL cannot be reached (and Redis cannot stand in for it), the last answer is
 * served for up to this long, with an Age header, rather than a 503. */
#define DASH_STALE_MS     600000
#define DASH_CACHE_SLOTS  64
#define DASH_REDIS_MS     250 /* past this, PostgreSQL answers instead */
#define DASH_MAX_PROJECTS 32  /* more projects in scope: PostgreSQL, rather than 3 commands each */

#define TS(col) "to_char(" col " AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"')"

/* The distinct sensor ids of project @p with a loose index scan: one probe of the index
 * (project_id, sensor_id, ts DESC) per sensor, rather than a scan of every reading. */
/* clang-format off */
#define SENSORS_OF(p)                                                                              \
    "WITH RECURSIVE d(sensor_id) AS ("                                                             \
    " (SELECT sensor_id FROM sensor_readings WHERE project_id = " p                                \
    "  ORDER BY sensor_id LIMIT 1)"                                                                \
    " UNION ALL SELECT (SELECT r.sensor_id FROM sensor_readings r WHERE r.project_id = " p         \
    "  AND r.sensor_id > d.sensor_id ORDER BY r.sensor_id LIMIT 1) FROM d"                         \
    "  WHERE d.sensor_id IS NOT NULL)"                                                             \
    " SELECT sensor_id FROM d WHERE sensor_id IS NOT NULL"
/* clang-format on */

static const char *const dash_checks[] = {"zscore", "limit_low", "limit_high", "rate"};
#define DASH_NCHECKS (sizeof(dash_checks) / sizeof(dash_checks[0]))

static const char *const dash_statuses[] = {"pending",   "pending_approval", "accepted",
                                            "rejected",  "in_production",    "shipped",
                                            "delivered", "cancelled"};
#define DASH_NSTATUSES (sizeof(dash_statuses) / sizeof(dash_statuses[0]))

/* ---- the per-loop answer cache ------------------------------------------------------------- */

typedef struct dash_slot {
    char key[80]; /* "<org>/<project or *>" */
    int64_t at_ms;
    char *body;
    size_t len;
    bool refreshing; /* a request is computing the next answer: others get this one meanwhile */
} dash_slot_t;

static pthread_key_t dash_cache_key;
static pthread_once_t dash_cache_once = PTHREAD_ONCE_INIT;

/* Runs when a loop's thread exits. */
static void dash_cache_free(void *p)
{
    dash_slot_t *slots = p;

    for (size_t i = 0; i < DASH_CACHE_SLOTS; i++)
        free(slots[i].body);
    free(slots);
}

static void dash_cache_init(void)
{
    (void)pthread_key_create(&dash_cache_key, dash_cache_free);
}

/* This thread's slots, made on first use (NULL without memory: then nothing is cached). */
static dash_slot_t *dash_cache(void)
{
    dash_slot_t *slots;

    pthread_once(&dash_cache_once, dash_cache_init);
    slots = pthread_getspecific(dash_cache_key);
    if (!slots && (slots = calloc(DASH_CACHE_SLOTS, sizeof(*slots))) &&
        pthread_setspecific(dash_cache_key, slots) != 0) {
        free(slots);
        slots = NULL;
    }
    return slots;
}

static const dash_slot_t *dash_cache_get(const char *key, int64_t max_age_ms)
{
    dash_slot_t *slots = dash_cache();
    int64_t now = svc_now_ms();

    for (size_t i = 0; slots && i < DASH_CACHE_SLOTS; i++)
        if (slots[i].body && now - slots[i].at_ms < max_age_ms && strcmp(slots[i].key, key) == 0)
            return &slots[i];
    return NULL;
}

/* A query failed: when the database is unreachable (not the request's fault) and this loop
 * answered the same question recently, answer that again with its Age, and return true. */
static bool dash_stale_reply(gw_op_t *op, const char *cache_key, int err)
{
    const dash_slot_t *hit;
    char age[24];

    if (err != -ECONNREFUSED && err != -ETIMEDOUT && err != -ECONNRESET && err != -EAGAIN)
        return false;
    if (!op->r->evreq || !(hit = dash_cache_get(cache_key, DASH_STALE_MS)))
        return false;
    snprintf(age, sizeof(age), "%lld", (long long)((svc_now_ms() - hit->at_ms) / 1000));
    gw_req_header(op->r, "Age", age);
    log_info("dashboard: database unreachable; answering with the answer of %s s ago", age);
    gw_op_reply_raw(op, 200, "application/json", hit->body, hit->len);
    return true;
}

/* The slot of @key, whatever its age, or NULL. */
static dash_slot_t *dash_cache_slot(const char *key)
{
    dash_slot_t *slots = dash_cache();

    for (size_t i = 0; slots && i < DASH_CACHE_SLOTS; i++)
        if (slots[i].body && strcmp(slots[i].key, key) == 0)
            return &slots[i];
    return NULL;
}

/* Stores @body (copied) under @key, in the slot of the same key or else the oldest. */
static void dash_cache_put(const char *key, const char *body, size_t len)
{
    dash_slot_t *slots = dash_cache(), *slot = NULL;
    char *copy;

    if (!slots || !(copy = malloc(len + 1)))
        return;
    memcpy(copy, body, len + 1);
    for (size_t i = 0; i < DASH_CACHE_SLOTS && !slot; i++)
        if (slots[i].body && strcmp(slots[i].key, key) == 0)
            slot = &slots[i];
    for (size_t i = 0; i < DASH_CACHE_SLOTS && !slot; i++)
        if (!slots[i].body)
            slot = &slots[i];
    if (!slot) {
        slot = &slots[0];
        for (size_t i = 1; i < DASH_CACHE_SLOTS; i++)
            if (slots[i].at_ms < slot->at_ms)
                slot = &slots[i];
    }
    free(slot->body);
    slot->refreshing = false;
    snprintf(slot->key, sizeof(slot->key), "%s", key);
    slot->at_ms = svc_now_ms();
    slot->body = copy;
    slot->len = len;
}

/* ---- the caller's scope ---------------------------------------------------------------------- */

/* Authenticates a read (API key with scope "read", or a viewer and up), allows only ?project_id=
 * and picks the project: an API key's own, the one a person names, or NULL for the whole
 * organization. 0 or -errno after answering. */
static int dash_begin(gw_req_t *r, gw_principal_t *who, const char **ret_project)
{
    int rc;

    if ((rc = gw_auth_require(r, GW_SCOPE_READ, AUTH_ROLE_VIEWER, who)) < 0)
        return rc;
    (void)gw_req_query(r, ""); /* parses the query string */
    for (struct evkeyval *kv = r->query ? r->query->tqh_first : NULL; kv; kv = kv->next.tqe_next)
        if (strcmp(kv->key, "project_id") != 0) {
            gw_reply_problemf(r, 400, "invalid-parameter",
                              "unknown query parameter \"%.64s\"; %s takes only project_id",
                              kv->key, r->path);
            return -EINVAL;
        }
    if ((rc = gw_query_uuid(r, "project_id", ret_project)) < 0)
        return rc;
    if (who->kind == GW_PRINCIPAL_KEY) {
        if (*ret_project && strcmp(*ret_project, who->project_id) != 0) {
            gw_reply_problemf(r, 404, "not-found", "this API key has no access to project %s",
                              *ret_project);
            return -ENOENT;
        }
        *ret_project = who->project_id;
    }
    return 0;
}

/* ---- GET /dashboard/metrics ------------------------------------------------------------------ */

typedef struct dash_totals {
    int64_t rpm[DASH_MINUTES]; /* oldest first; the last is the current minute */
    int64_t sensors_seen;
    int64_t anomalies;
    int64_t by_check[DASH_NCHECKS];
    int64_t orders[DASH_NSTATUSES];
} dash_totals_t;

typedef enum dash_cmd_kind { CMD_RPM, CMD_SENSORS, CMD_ANOMALIES, CMD_ORDERS } dash_cmd_kind_t;

typedef struct dash_op dash_op_t;

typedef struct dash_cmd {
    dash_op_t *op;
    dash_cmd_kind_t kind;
} dash_cmd_t;

struct dash_op {
    gw_op_t op;
    char project[37]; /* "" for the whole organization */
    char cache_key[80];
    int64_t minute;       /* the unix minute of the newest bucket */
    char (*projects)[37]; /* the projects to read from Redis */
    size_t nprojects;
    dash_cmd_t *cmds;  /* one per Redis command */
    size_t nsent;      /* commands sent */
    size_t pending;    /* of those, the ones whose reply is still due */
    bool redis_failed; /* an error, or aggregates missing: PostgreSQL answers */
    bool refreshing;   /* this op computes the successor of an expired cached answer */
    dash_totals_t t;
};

static void dash_cleanup(gw_op_t *gop)
{
    dash_op_t *op = (dash_op_t *)gop;
    dash_slot_t *slot = op->refreshing ? dash_cache_slot(op->cache_key) : NULL;

    /* Failed or done: either way the next request may compute again. */
    if (slot)
        slot->refreshing = false;

    free(op->projects);
    free(op->cmds);
}

static const char *dash_project_param(const dash_op_t *op)
{
    return op->project[0] ? op->project : NULL;
}

/* Renders @t, caches and answers it. */
static void dash_reply(dash_op_t *op, const char *source)
{
    json_t *doc, *per_minute = json_array(), *by_check = json_object(), *by_status = json_object();
    char ts[32], *body;
    int64_t sum = 0, orders = 0;

    for (size_t i = 0; i < DASH_MINUTES; i++) {
        contract_format_rfc3339((op->minute - DASH_MINUTES + 1 + (int64_t)i) * 60 * 1000000, ts,
                                sizeof(ts));
        json_array_append_new(
            per_minute, json_pack("{s:s, s:I}", "minute", ts, "count", (json_int_t)op->t.rpm[i]));
        sum += op->t.rpm[i];
    }
    for (size_t c = 0; c < DASH_NCHECKS; c++)
        json_object_set_new(by_check, dash_checks[c], json_integer(op->t.by_check[c]));
    for (size_t s = 0; s < DASH_NSTATUSES; s++) {
        json_object_set_new(by_status, dash_statuses[s], json_integer(op->t.orders[s]));
        orders += op->t.orders[s];
    }
    contract_format_rfc3339(svc_wall_us(), ts, sizeof(ts));
    doc = json_pack("{s:s, s:s, s:s, s:{s:I, s:o}, s:I, s:{s:I, s:o}, s:{s:I, s:o}}", "source",
                    source, "organization_id", op->op.who.org_id, "generated_at", ts, "readings",
                    "last_hour", (json_int_t)sum, "per_minute", per_minute, "sensors_seen",
                    (json_int_t)op->t.sensors_seen, "anomalies", "total",
                    (json_int_t)op->t.anomalies, "by_check", by_check, "orders", "total",
                    (json_int_t)orders, "by_status", by_status);
    /* Present only when the answer is one project's (the organization's otherwise). */
    if (doc && op->project[0])
        json_object_set_new(doc, "project_id", json_string(op->project));
    body = doc ? json_dumps(doc, JSON_COMPACT) : NULL;
    if (!body) {
        json_decref(doc);
        gw_op_fail(&op->op, 500, "internal-error", "out of memory");
        return;
    }
    dash_cache_put(op->cache_key, body, strlen(body));
    free(body);
    gw_op_reply_json(&op->op, 200, doc);
}

/* PostgreSQL's version of every aggregate, in one statement (one snapshot). Column 0 counts the
 * projects in scope (0: a person named a project that is not their organization's); $3 is the
 * unix minute of the oldest bucket. */
/* clang-format off */
static const char sql_metrics[] =
    "WITH p AS (SELECT id FROM projects WHERE org_id = $1::uuid"
    "           AND ($2::uuid IS NULL OR id = $2::uuid)),"
    " m AS (SELECT floor(extract(epoch FROM r.ts) / 60)::int8 AS minute, count(*) AS n"
    "       FROM sensor_readings r WHERE r.org_id = $1::uuid AND r.project_id IN (SELECT id FROM p)"
    "       AND r.ts >= to_timestamp($3::int8 * 60) AND r.ts < to_timestamp(($3::int8 + 60) * 60)"
    "       GROUP BY 1),"
    " s AS (SELECT count(*) AS n FROM p CROSS JOIN LATERAL (" SENSORS_OF("p.id") ") x),"
    " a AS (SELECT count(*) AS total,"
    "       count(*) FILTER (WHERE 'zscore' = ANY(checks)) AS zscore,"
    "       count(*) FILTER (WHERE 'limit_low' = ANY(checks)) AS limit_low,"
    "       count(*) FILTER (WHERE 'limit_high' = ANY(checks)) AS limit_high,"
    "       count(*) FILTER (WHERE 'rate' = ANY(checks)) AS rate"
    "       FROM anomalies WHERE org_id = $1::uuid AND project_id IN (SELECT id FROM p)),"
    " o AS (SELECT status, count(*) AS n FROM orders WHERE org_id = $1::uuid GROUP BY status)"
    " SELECT (SELECT count(*) FROM p),"
    " (SELECT coalesce(json_object_agg(minute, n), '{}') FROM m), (SELECT n FROM s),"
    " a.total, a.zscore, a.limit_low, a.limit_high, a.rate,"
    " (SELECT coalesce(json_object_agg(status, n), '{}') FROM o) FROM a";
/* clang-format on */

static int64_t col_i64(PGresult *res, int col)
{
    return PQgetisnull(res, 0, col) ? 0 : strtoll(PQgetvalue(res, 0, col), NULL, 10);
}

static void dash_pg_done(int err, PGresult *res, void *arg)
{
    dash_op_t *op = arg;
    json_t *rpm = NULL, *orders = NULL;

    if (err < 0 && dash_stale_reply(&op->op, op->cache_key, err)) {
        PQclear(res);
        return;
    }
    if (err < 0) {
        gw_op_db_failed(&op->op, err, res);
        PQclear(res);
        return;
    }
    if (gw_op_gone(&op->op)) {
        PQclear(res);
        return;
    }
    if (PQntuples(res) != 1 || (op->project[0] && col_i64(res, 0) == 0)) {
        PQclear(res);
        gw_op_fail(&op->op, 404, "not-found", "your organization has no project %s", op->project);
        return;
    }
    memset(&op->t, 0, sizeof(op->t));
    rpm = json_loads(PQgetvalue(res, 0, 1), 0, NULL);
    for (size_t i = 0; i < DASH_MINUTES; i++) {
        char m[24];

        snprintf(m, sizeof(m), "%lld", (long long)(op->minute - DASH_MINUTES + 1 + (int64_t)i));
        op->t.rpm[i] = json_integer_value(json_object_get(rpm, m));
    }
    op->t.sensors_seen = col_i64(res, 2);
    op->t.anomalies = col_i64(res, 3);
    for (size_t c = 0; c < DASH_NCHECKS; c++)
        op->t.by_check[c] = col_i64(res, 4 + (int)c);
    orders = json_loads(PQgetvalue(res, 0, 8), 0, NULL);
    for (size_t s = 0; s < DASH_NSTATUSES; s++)
        op->t.orders[s] = json_integer_value(json_object_get(orders, dash_statuses[s]));
    json_decref(rpm);
    json_decref(orders);
    PQclear(res);
    dash_reply(op, "postgresql");
}

/* gw_op_query(), except that a query the pool refuses at once (it is down) reaches @cb like one
 * that failed later, so that @cb can answer from the stale cache. */
static void dash_query(dash_op_t *op, const char *sql, int n, const char *const *params,
                       db_pool_cb cb)
{
    int rc = db_pool_query_as(op->op.loop->pool, op->op.who.org_id, sql, n, params, cb, op,
                              GW_DB_TIMEOUT_MS);

    if (rc < 0)
        cb(rc == -EINVAL ? -EIO : rc, NULL, op);
}

static void dash_from_pg(dash_op_t *op)
{
    char first[24];
    const char *params[3] = {op->op.who.org_id, dash_project_param(op), first};

    snprintf(first, sizeof(first), "%lld", (long long)(op->minute - DASH_MINUTES + 1));
    dash_query(op, sql_metrics, 3, params, dash_pg_done);
}

/* A Redis integer reply, or a bulk string holding one; false for anything else. */
static bool reply_int(const redisReply *reply, int64_t *ret)
{
    char *end;

    if (reply->type == REDIS_REPLY_INTEGER) {
        *ret = reply->integer;
        return true;
    }
    if (reply->type != REDIS_REPLY_STRING || reply->len == 0 || reply->len > 20)
        return false;
    *ret = strtoll(reply->str, &end, 10);
    return *end == '\0';
}

/* Adds an HGETALL reply's counters named in @names to @sums (other fields are ignored). */
static bool reply_hash(const redisReply *reply, const char *const *names, size_t n, int64_t *sums,
                       int64_t *ret_total)
{
    if (reply->type != REDIS_REPLY_ARRAY || reply->elements % 2)
        return false;
    for (size_t i = 0; i + 1 < reply->elements; i += 2) {
        const redisReply *f = reply->element[i], *v = reply->element[i + 1];
        int64_t x;

        if (f->type != REDIS_REPLY_STRING || !reply_int(v, &x))
            return false;
        if (ret_total && strcmp(f->str, "total") == 0)
            *ret_total += x;
        for (size_t k = 0; k < n; k++)
            if (strcmp(f->str, names[k]) == 0)
                sums[k] += x;
    }
    return true;
}

static void dash_redis_finish(dash_op_t *op)
{
    if (gw_op_gone(&op->op))
        return;
    if (op->op.loop->stopping) {
        gw_op_fail(&op->op, 503, "unavailable", "the gateway is shutting down");
        return;
    }
    if (op->redis_failed) {
        dash_from_pg(op);
        return;
    }
    dash_reply(op, "redis");
}

static void dash_redis_cb(int err, const redisReply *reply, void *arg)
{
    dash_cmd_t *cmd = arg;
    dash_op_t *op = cmd->op;
    dash_totals_t *t = &op->t;
    int64_t n;
    bool ok = err == 0 && reply;

    if (ok) {
        switch (cmd->kind) {
        case CMD_RPM:
            ok = reply->type == REDIS_REPLY_ARRAY && reply->elements == DASH_MINUTES;
            for (size_t i = 0; ok && i < DASH_MINUTES; i++) {
                if (reply->element[i]->type == REDIS_REPLY_NIL)
                    continue;
                ok = reply_int(reply->element[i], &n);
                t->rpm[i] += ok ? n : 0;
            }
            break;
        case CMD_SENSORS:
            /* 0: the key is missing, so this project's aggregates are not there. */
            ok = reply_int(reply, &n) && n > 0;
            t->sensors_seen += ok ? n : 0;
            break;
        case CMD_ANOMALIES:
            ok = reply_hash(reply, dash_checks, DASH_NCHECKS, t->by_check, &t->anomalies);
            break;
        case CMD_ORDERS:
            ok = reply_hash(reply, dash_statuses, DASH_NSTATUSES, t->orders, NULL);
            break;
        }
    }
    if (!ok && !op->redis_failed && err != 0 && err != -ECANCELED) {
        gw_req_enter(op->op.r);
        log_warn("dashboard: Redis read failed (%s); answering from PostgreSQL",
                 err == -ETIMEDOUT ? "timeout" : strerror(-err));
    }
    op->redis_failed |= !ok;
    if (--op->pending == 0)
        dash_redis_finish(op);
}

/* Sends one command; on refusal marks the read failed. */
static void dash_redis_send(dash_op_t *op, dash_cmd_kind_t kind, int argc, const char *const *argv)
{
    dash_cmd_t *cmd = &op->cmds[op->nsent];

    if (op->redis_failed)
        return;
    cmd->op = op;
    cmd->kind = kind;
    if (cache_async_command(op->op.loop->redis, argc, argv, NULL, DASH_REDIS_MS, dash_redis_cb,
                            cmd) < 0) {
        op->redis_failed = true;
        return;
    }
    op->nsent++;
    op->pending++;
}

/* Reads every aggregate of op->projects and the organization's orders from Redis, then answers
 * (or falls back to PostgreSQL) when the last reply is in. */
static void dash_from_redis(dash_op_t *op)
{
    char keys[DASH_MINUTES][96], key[96];
    const char *argv[1 + DASH_MINUTES];

    if (!op->op.loop->redis || !cache_async_connected(op->op.loop->redis) ||
        op->nprojects > DASH_MAX_PROJECTS ||
        !(op->cmds = calloc(3 * op->nprojects + 1, sizeof(*op->cmds)))) {
        dash_from_pg(op);
        return;
    }
    for (size_t p = 0; p < op->nprojects; p++) {
        argv[0] = "MGET";
        for (size_t i = 0; i < DASH_MINUTES; i++) {
            snprintf(keys[i], sizeof(keys[i]), "sb:rpm:%s:%lld", op->projects[p],
                     (long long)(op->minute - DASH_MINUTES + 1 + (int64_t)i));
            argv[1 + i] = keys[i];
        }
        dash_redis_send(op, CMD_RPM, 1 + DASH_MINUTES, argv);
        snprintf(key, sizeof(key), "sb:sensors:%s", op->projects[p]);
        dash_redis_send(op, CMD_SENSORS, 2, (const char *[]){"SCARD", key});
        snprintf(key, sizeof(key), "sb:anomalies:%s", op->projects[p]);
        dash_redis_send(op, CMD_ANOMALIES, 2, (const char *[]){"HGETALL", key});
    }
    snprintf(key, sizeof(key), "sb:orders:%s", op->op.who.org_id);
    dash_redis_send(op, CMD_ORDERS, 2, (const char *[]){"HGETALL", key});
    if (op->pending == 0)
        dash_from_pg(op);
}

/* A person's projects in scope, each with whether it has any reading. Ordered by sensor_id so
 * that it is one probe of the index (project_id, sensor_id, ts DESC): as a plain EXISTS the
 * planner may bitmap-scan every index entry of the project. */
/* clang-format off */
static const char sql_projects[] =
    "SELECT p.id, (SELECT true FROM sensor_readings r WHERE r.project_id = p.id"
    "              ORDER BY r.sensor_id LIMIT 1) IS NOT NULL"
    " FROM projects p WHERE p.org_id = $1::uuid AND ($2::uuid IS NULL OR p.id = $2::uuid)"
    " ORDER BY p.id";
/* clang-format on */

static void dash_projects_done(int err, PGresult *res, void *arg)
{
    dash_op_t *op = arg;
    int n;

    if (err < 0 && dash_stale_reply(&op->op, op->cache_key, err)) {
        PQclear(res);
        return;
    }
    if (err < 0) {
        gw_op_db_failed(&op->op, err, res);
        PQclear(res);
        return;
    }
    if (gw_op_gone(&op->op)) {
        PQclear(res);
        return;
    }
    n = PQntuples(res);
    if (n == 0 && op->project[0]) {
        PQclear(res);
        gw_op_fail(&op->op, 404, "not-found", "your organization has no project %s", op->project);
        return;
    }
    op->projects = calloc((size_t)n + 1, sizeof(*op->projects));
    for (int i = 0; op->projects && i < n; i++)
        if (strcmp(PQgetvalue(res, i, 1), "t") == 0)
            snprintf(op->projects[op->nprojects++], 37, "%s", PQgetvalue(res, i, 0));
    PQclear(res);
    if (!op->projects)
        gw_op_fail(&op->op, 500, "internal-error", "out of memory");
    else
        dash_from_redis(op);
}

void gw_dashboard_metrics(gw_req_t *r)
{
    gw_principal_t who;
    const char *project;
    const dash_slot_t *hit;
    dash_slot_t *stale;
    char cache_key[80];
    dash_op_t *op;

    if (dash_begin(r, &who, &project) < 0)
        return;
    snprintf(cache_key, sizeof(cache_key), "%s/%s", who.org_id, project ? project : "*");
    if ((hit = dash_cache_get(cache_key, DASH_CACHE_MS))) {
        gw_reply(r, 200, "application/json", hit->body, hit->len);
        return;
    }
    /* Expired, and another request is computing its successor: rather than every request of a
     * busy dashboard querying at once, the others get the previous answer meanwhile. */
    stale = dash_cache_slot(cache_key);
    if (stale && stale->refreshing && svc_now_ms() - stale->at_ms < DASH_STALE_MS) {
        gw_reply(r, 200, "application/json", stale->body, stale->len);
        return;
    }
    if (!(op = gw_op_new(r, &who, sizeof(*op))))
        return;
    if (stale) {
        stale->refreshing = true;
        op->refreshing = true;
    }
    op->op.cleanup = dash_cleanup;
    snprintf(op->project, sizeof(op->project), "%s", project ? project : "");
    memcpy(op->cache_key, cache_key, sizeof(cache_key));
    op->minute = svc_wall_us() / 1000000 / 60;
    if (!r->loop->redis || !cache_async_connected(r->loop->redis)) {
        dash_from_pg(op);
    } else if (who.kind == GW_PRINCIPAL_KEY) {
        /* An API key's project: no database round trip when Redis has it all. */
        if (!(op->projects = calloc(1, sizeof(*op->projects)))) {
            gw_op_fail(&op->op, 500, "internal-error", "out of memory");
            return;
        }
        memcpy(op->projects[0], who.project_id, 37);
        op->nprojects = 1;
        dash_from_redis(op);
    } else {
        const char *params[2] = {who.org_id, project};

        dash_query(op, sql_projects, 2, params, dash_projects_done);
    }
}

/* ---- GET /dashboard/health ------------------------------------------------------------------- */

typedef struct health_op {
    gw_op_t op;
    char project[37];
    size_t pending;
    bool kafka, pg, redis_configured, redis;
    bool found;   /* the project is the caller's (or none was named) */
    json_t *last; /* the newest reading in scope, or JSON null */
} health_op_t;

static void health_cleanup(gw_op_t *gop)
{
    json_decref(((health_op_t *)gop)->last);
}

/* The newest reading of each sensor (one index probe per sensor, SENSORS_OF), and of those
 * the newest: its time, when sensor-ingest stored it, and the delay between the two. */
/* clang-format off */
static const char sql_health[] =
    "WITH p AS (SELECT id FROM projects WHERE org_id = $1::uuid"
    "           AND ($2::uuid IS NULL OR id = $2::uuid)),"
    " l AS (SELECT n.ts, n.ingested_at FROM p"
    "       CROSS JOIN LATERAL (" SENSORS_OF("p.id") ") d"
    "       CROSS JOIN LATERAL (SELECT r.ts, r.ingested_at FROM sensor_readings r"
    "                           WHERE r.project_id = p.id AND r.sensor_id = d.sensor_id"
    "                           ORDER BY r.ts DESC LIMIT 1) n"
    "       ORDER BY n.ts DESC LIMIT 1)"
    " SELECT (SELECT count(*) FROM p), " TS("l.ts") ", " TS("l.ingested_at") ","
    " extract(epoch FROM l.ingested_at - l.ts)::float8 FROM (VALUES (1)) v LEFT JOIN l ON true";
/* clang-format on */

static void health_reply(health_op_t *op)
{
    bool ok = op->kafka && op->pg && (op->redis || !op->redis_configured);
    json_t *doc;

    if (gw_op_gone(&op->op))
        return;
    if (!op->found) {
        gw_op_fail(&op->op, 404, "not-found", "your organization has no project %s", op->project);
        return;
    }
    doc = json_pack("{s:s, s:s, s:{s:b}, s:{s:b}, s:{s:b}, s:{s:b, s:b}, s:O}", "status",
                    ok ? "ok" : "degraded", "organization_id", op->op.who.org_id, "gateway",
                    "ready", op->kafka && op->pg, "kafka", "connected", op->kafka, "postgresql",
                    "reachable", op->pg, "redis", "configured", op->redis_configured, "reachable",
                    op->redis, "readings", op->last ? op->last : json_null());
    if (doc && op->project[0])
        json_object_set_new(doc, "project_id", json_string(op->project));
    gw_op_reply_json(&op->op, 200, doc);
}

static void health_pg_done(int err, PGresult *res, void *arg)
{
    health_op_t *op = arg;

    op->pg = err == 0 || err == -EINVAL || err == -EAGAIN; /* it answered, if with an error */
    if (err == -EINVAL) {
        gw_req_enter(op->op.r);
        log_error("dashboard health query failed: %s",
                  PQresultErrorField(res, PG_DIAG_MESSAGE_PRIMARY));
    }
    if (err == 0 && PQntuples(res) == 1) {
        op->found = strcmp(PQgetvalue(res, 0, 0), "0") != 0 || !op->project[0];
        if (!PQgetisnull(res, 0, 1))
            op->last = json_pack("{s:s, s:s, s:f}", "last_ts", PQgetvalue(res, 0, 1),
                                 "last_ingested_at", PQgetvalue(res, 0, 2), "ingest_delay_seconds",
                                 strtod(PQgetvalue(res, 0, 3), NULL));
    }
    PQclear(res);
    if (--op->pending == 0)
        health_reply(op);
}

static void health_redis_done(int err, const redisReply *reply, void *arg)
{
    health_op_t *op = arg;

    op->redis = err == 0 && reply && reply->type == REDIS_REPLY_STATUS;
    if (--op->pending == 0)
        health_reply(op);
}

void gw_dashboard_health(gw_req_t *r)
{
    gw_t *gw = r->loop->gw;
    gw_principal_t who;
    const char *project, *params[2];
    health_op_t *op;

    if (dash_begin(r, &who, &project) < 0 || !(op = gw_op_new(r, &who, sizeof(*op))))
        return;
    op->op.cleanup = health_cleanup;
    snprintf(op->project, sizeof(op->project), "%s", project ? project : "");
    op->found = true; /* unless PostgreSQL says otherwise */
    op->kafka = bus_producer_connected(gw->producer) != 0 && !atomic_load(&gw->producer_failed);
    op->redis_configured = r->loop->redis != NULL;
    /* Both probes run at once; whichever answers last replies. */
    op->pending = 1;
    if (op->redis_configured && cache_async_connected(r->loop->redis) &&
        cache_async_command(r->loop->redis, 1, (const char *[]){"PING"}, NULL, DASH_REDIS_MS,
                            health_redis_done, op) == 0)
        op->pending++;
    params[0] = who.org_id;
    params[1] = project;
    if (db_pool_query_as(r->loop->pool, who.org_id, sql_health, 2, params, health_pg_done, op,
                         GW_DB_TIMEOUT_MS) < 0 &&
        --op->pending == 0)
        health_reply(op);
}
