/* sensors.c: the sensor registry, and the read API over readings and anomalies.
 *
 *   POST /sensors                  registers a sensor in a project: 201, or 409 when the id exists
 *   GET  /sensors                  registered sensors (project_id, type), keyset-paginated
 *   GET  /sensors/{id}             one registered sensor
 *   GET  /sensors/data             readings, newest first (sensor_id, from, to), keyset-paginated
 *   GET  /sensors/stats            per sensor: count, min, max, avg and last over a window
 *   GET  /sensors/anomalies/count  anomalies over a window: total and per check
 *   GET  /sensors/anomalies        anomalies, newest first, keyset-paginated
 *
 * Who sees what (docs/api-reads.md): an API key reads its own project (scope "read") and registers
 * sensors in it (scope "ingest": devices often register themselves); a person reads the whole
 * organization or the project named by ?project_id= (viewer and up) and registers sensors in a
 * project named in the body or the query (operator and up). Every statement runs as the caller's
 * organization (gw_op_query(), so row-level security applies) and names the organization and its
 * projects itself as well: `project_id IN (the organization's projects)` is also what lets
 * PostgreSQL use the (project_id, ...) indexes, since the reading tables have none on org_id.
 *
 * Lists are pages of at most ?limit= items (1-1000, default 100) with an opaque next_cursor: the
 * query asks for one row more than the page, and the cursor wraps the last item's sort key, which
 * the next query only ever binds as parameters.
 *
 * Nothing here blocks a loop: each request is an rd_op_t carried through db_pool callbacks.
 */
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <event2/http.h>
#include <event2/keyvalq_struct.h>

#include "contract.h"
#include "gateway.h"
#include "svc_util.h"

#define RD_MAXP          10
#define RD_LIMIT_DEFAULT 100
#define RD_LIMIT_MAX     1000
#define RD_WINDOW_US     (3600LL * 1000000) /* stats and counts: the last hour by default */
#define RD_TS_MAX        32

/* Timestamps leave PostgreSQL as the contract writes them: "2026-11-23T09:40:01.500000Z". */
#define TS(col) "to_char(" col " AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"')"

/* $1 the caller's organization, $2 a project or NULL for all of the organization's. */
#define SCOPE(t)                                                                            \
    t ".org_id = $1::uuid AND " t ".project_id IN (SELECT id FROM projects WHERE org_id = " \
      "$1::uuid AND ($2::uuid IS NULL OR id = $2::uuid))"

static const char *const rd_checks[] = {"zscore", "limit_low", "limit_high", "rate"};
#define RD_NCHECKS (sizeof(rd_checks) / sizeof(rd_checks[0]))

typedef struct rd_op rd_op_t;
typedef json_t *(*rd_item_fn)(PGresult *res, int row);

struct rd_op {
    gw_op_t op;
    char *pv[RD_MAXP]; /* SQL parameters (owned; NULL is SQL NULL): $1 org, $2 project */
    int np;
    const char *sql;
    db_pool_cb done;
    /* Lists: one row as an item, the columns of the sort key, the page size. */
    rd_item_fn item;
    int key_cols[2];
    int64_t limit;
    json_t *doc; /* the answer being built (owned): lists add items and next_cursor to it */
};

/* ---- the operation --------------------------------------------------------------------------- */

static void rd_cleanup(gw_op_t *gop)
{
    rd_op_t *op = (rd_op_t *)gop;

    for (int i = 0; i < RD_MAXP; i++)
        free(op->pv[i]);
    json_decref(op->doc);
}

/* A new operation for @who reading @project (NULL: the whole organization), with $1 and $2 set.
 * NULL after answering 500. */
static rd_op_t *rd_new(gw_req_t *r, const gw_principal_t *who, const char *project)
{
    rd_op_t *op = gw_op_new(r, who, sizeof(*op));

    if (!op)
        return NULL;
    op->op.cleanup = rd_cleanup;
    op->np = 2;
    op->pv[0] = strdup(who->org_id);
    op->pv[1] = project ? strdup(project) : NULL;
    op->doc = json_object();
    if (!op->pv[0] || (project && !op->pv[1]) || !op->doc) {
        gw_op_fail(&op->op, 500, "internal-error", "out of memory");
        return NULL;
    }
    return op;
}

/* Appends the next parameter (copied; @v NULL is SQL NULL). False when out of memory. */
static bool rd_param(rd_op_t *op, const char *v)
{
    op->pv[op->np] = v ? strdup(v) : NULL;
    return op->pv[op->np++] != NULL || v == NULL;
}

static bool rd_param_int(rd_op_t *op, int64_t v)
{
    char buf[24];

    snprintf(buf, sizeof(buf), "%lld", (long long)v);
    return rd_param(op, buf);
}

static void rd_query(rd_op_t *op)
{
    gw_op_query(&op->op, op->sql, op->np, (const char *const *)op->pv, op->done);
}

static void rd_project_done(int err, PGresult *res, void *arg)
{
    rd_op_t *op = arg;

    if (err < 0) {
        gw_op_db_failed(&op->op, err, res);
    } else if (!gw_op_gone(&op->op)) {
        if (PQntuples(res) == 1) {
            gw_key_t proj = {.found = true};
            char ckey[GW_KEYCACHE_KEY_MAX + 1];

            /* Only what exists is cached: under row-level security another organization's
             * project is invisible here, and a negative entry would hide it from its own. */
            snprintf(proj.org_id, sizeof(proj.org_id), "%s", op->pv[0]);
            snprintf(proj.project_id, sizeof(proj.project_id), "%s", op->pv[1]);
            snprintf(ckey, sizeof(ckey), "p:%s", op->pv[1]);
            gw_keycache_put(op->op.loop->gw->keys, ckey, &proj, svc_now_ms());
            rd_query(op);
        } else {
            gw_op_fail(&op->op, 404, "not-found", "your organization has no project %s", op->pv[1]);
        }
    }
    PQclear(res);
}

/* Runs op's query once its project is known to be the caller's: an API key's own project is; a
 * project a person names is looked up (through the key cache's project entries). */
static void rd_start(rd_op_t *op)
{
    gw_keycache_t *cache = op->op.loop->gw->keys;
    char ckey[GW_KEYCACHE_KEY_MAX + 1];
    gw_key_t proj;

    if (op->op.who.kind == GW_PRINCIPAL_KEY || !op->pv[1]) {
        rd_query(op);
        return;
    }
    snprintf(ckey, sizeof(ckey), "p:%s", op->pv[1]);
    if (gw_keycache_get(cache, ckey, svc_now_ms(), &proj) && proj.found) {
        if (strcmp(proj.org_id, op->pv[0]) == 0)
            rd_query(op);
        else
            gw_op_fail(&op->op, 404, "not-found", "your organization has no project %s", op->pv[1]);
        return;
    }
    gw_op_query(&op->op, "SELECT FROM projects WHERE id = $2::uuid AND org_id = $1::uuid", 2,
                (const char *const *)op->pv, rd_project_done);
}

/* ---- query parameters -------------------------------------------------------------------------
 */

/* 400 naming the first query parameter that is not in @allowed (NULL-terminated), so that a typo
 * ("sensorid=") is not silently ignored, widening the answer. 0 or -EINVAL after answering. */
static int rd_query_names(gw_req_t *r, const char *const *allowed)
{
    char list[256] = "";

    (void)gw_req_query(r, ""); /* parses the query string once */
    if (!r->query)
        return 0;
    for (struct evkeyval *kv = r->query->tqh_first; kv; kv = kv->next.tqe_next) {
        bool known = false;

        for (const char *const *a = allowed; *a && !known; a++)
            known = strcmp(*a, kv->key) == 0;
        if (known)
            continue;
        for (const char *const *a = allowed; *a; a++) {
            size_t len = strlen(list);

            snprintf(list + len, sizeof(list) - len, "%s%s", len ? ", " : "", *a);
        }
        gw_reply_problemf(r, 400, "invalid-parameter",
                          "unknown query parameter \"%.64s\"; %s %s takes %s", kv->key, r->method,
                          r->path, list);
        return -EINVAL;
    }
    return 0;
}

/* The rule of sensors.id and of a reading's sensor_id: ^[A-Za-z0-9][A-Za-z0-9._:-]{0,63}$. */
static bool rd_sensor_id_ok(const char *s)
{
    size_t n = strlen(s);

    if (n == 0 || n > CONTRACT_SENSOR_ID_MAX)
        return false;
    for (size_t i = 0; i < n; i++) {
        char c = s[i];
        bool alnum = (c >= '0' && c <= '9') || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z');

        if (!alnum && (i == 0 || !strchr("._:-", c)))
            return false;
    }
    return true;
}

/* sensors.type: ^[a-z0-9][a-z0-9_.-]{0,63}$. */
static bool rd_type_ok(const char *s)
{
    size_t n = strlen(s);

    if (n == 0 || n > 64)
        return false;
    for (size_t i = 0; i < n; i++) {
        char c = s[i];
        bool alnum = (c >= '0' && c <= '9') || (c >= 'a' && c <= 'z');

        if (!alnum && (i == 0 || !strchr("_.-", c)))
            return false;
    }
    return true;
}

static int rd_query_sensor(gw_req_t *r, const char **ret)
{
    const char *v = gw_req_query(r, "sensor_id");

    *ret = v;
    if (v && !rd_sensor_id_ok(v)) {
        gw_reply_problemf(r, 400, "invalid-parameter",
                          "sensor_id must be 1-64 characters from [A-Za-z0-9._:-], starting with a "
                          "letter or digit");
        return -EINVAL;
    }
    return 0;
}

/* ?from= and ?to= (RFC 3339): the window [from, to). With @window_us > 0 both have defaults: to
 * is now, from is @window_us before to. Otherwise an absent bound is open ("" in its buffer). */
static int rd_query_window(gw_req_t *r, int64_t window_us, char from[RD_TS_MAX], char to[RD_TS_MAX])
{
    bool has_from = gw_req_query(r, "from") != NULL, has_to = gw_req_query(r, "to") != NULL;
    int64_t f = 0, t = 0;
    int rc;

    if ((rc = gw_query_time(r, "from", 0, &f)) < 0 || (rc = gw_query_time(r, "to", 0, &t)) < 0)
        return rc;
    if (window_us > 0) {
        if (!has_to)
            t = svc_wall_us();
        if (!has_from)
            f = t - window_us;
        has_from = has_to = true;
    }
    if (has_from && has_to && f >= t) {
        gw_reply_problemf(r, 400, "invalid-parameter", "from must be earlier than to");
        return -EINVAL;
    }
    from[0] = to[0] = '\0';
    if (has_from)
        contract_format_rfc3339(f, from, RD_TS_MAX);
    if (has_to)
        contract_format_rfc3339(t, to, RD_TS_MAX);
    return 0;
}

/* The cursor of a list sorted by (time, uuid), as two canonical strings (@ts "" when absent). */
static int rd_query_cursor_ts(gw_req_t *r, char ts[RD_TS_MAX], char id[37])
{
    json_t *key;
    int64_t us;
    const char *t, *u;
    int rc = gw_query_cursor(r, 2, &key);

    ts[0] = id[0] = '\0';
    if (rc < 0 || !key)
        return rc;
    t = json_string_value(json_array_get(key, 0));
    u = json_string_value(json_array_get(key, 1));
    if (!t || !u || contract_parse_rfc3339(t, &us) < 0 || !gw_is_uuid(u)) {
        json_decref(key);
        gw_reply_problemf(r, 400, "invalid-cursor",
                          "cursor is not one this endpoint handed out; start again without it");
        return -EINVAL;
    }
    contract_format_rfc3339(us, ts, RD_TS_MAX);
    snprintf(id, 37, "%s", u);
    json_decref(key);
    return 0;
}

/* The cursor of a list sorted by (project, sensor id). */
static int rd_query_cursor_sensor(gw_req_t *r, char project[37], char sensor[65])
{
    json_t *key;
    const char *p, *s;
    int rc = gw_query_cursor(r, 2, &key);

    project[0] = sensor[0] = '\0';
    if (rc < 0 || !key)
        return rc;
    p = json_string_value(json_array_get(key, 0));
    s = json_string_value(json_array_get(key, 1));
    if (!p || !s || !gw_is_uuid(p) || !rd_sensor_id_ok(s)) {
        json_decref(key);
        gw_reply_problemf(r, 400, "invalid-cursor",
                          "cursor is not one this endpoint handed out; start again without it");
        return -EINVAL;
    }
    snprintf(project, 37, "%s", p);
    snprintf(sensor, 65, "%s", s);
    json_decref(key);
    return 0;
}

/* Authenticates a read (API key with scope "read", or a viewer and up), checks the query's
 * parameter names and picks the project: an API key's own (?project_id= may only repeat it), or
 * the one a person names, or NULL for the whole organization. 0 or -errno after answering. */
static int rd_begin(gw_req_t *r, const char *const *allowed, gw_principal_t *who,
                    const char **ret_project)
{
    int rc;

    if ((rc = gw_auth_require(r, GW_SCOPE_READ, AUTH_ROLE_VIEWER, who)) < 0 ||
        (rc = rd_query_names(r, allowed)) < 0 || (rc = gw_query_uuid(r, "project_id", ret_project)))
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

/* ---- rows to JSON ------------------------------------------------------------------------------
 */

static json_t *col_str(PGresult *res, int row, int col)
{
    json_t *v = PQgetisnull(res, row, col) ? NULL : json_string(PQgetvalue(res, row, col));

    return v ? v : json_null();
}

static json_t *col_real(PGresult *res, int row, int col)
{
    double d = PQgetisnull(res, row, col) ? NAN : strtod(PQgetvalue(res, row, col), NULL);

    return isfinite(d) ? json_real(d) : json_null();
}

static json_t *col_int(PGresult *res, int row, int col)
{
    return json_integer(PQgetisnull(res, row, col) ? 0
                                                   : strtoll(PQgetvalue(res, row, col), NULL, 10));
}

static json_t *col_json(PGresult *res, int row, int col)
{
    json_t *v = PQgetisnull(res, row, col) ? NULL : json_loads(PQgetvalue(res, row, col), 0, NULL);

    return v ? v : json_null();
}

/* The answer to a list: the page's items and the cursor of the next page (null on the last). */
static void rd_list_done(int err, PGresult *res, void *arg)
{
    rd_op_t *op = arg;
    json_t *items, *key;
    char *cursor = NULL;
    int n;

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
    items = json_array();
    for (int i = 0; i < n && i < op->limit; i++)
        json_array_append_new(items, op->item(res, i));
    if (n > op->limit) {
        key = json_pack("[o, o]", col_str(res, (int)op->limit - 1, op->key_cols[0]),
                        col_str(res, (int)op->limit - 1, op->key_cols[1]));
        cursor = key ? gw_cursor_encode(key) : NULL;
        json_decref(key);
    }
    PQclear(res);
    if (!items || (n > op->limit && !cursor)) {
        json_decref(items);
        gw_op_fail(&op->op, 500, "internal-error", "out of memory");
        return;
    }
    json_object_set_new(op->doc, "items", items);
    json_object_set_new(op->doc, "next_cursor", cursor ? json_string(cursor) : json_null());
    free(cursor);
    gw_op_reply_json(&op->op, 200, json_incref(op->doc));
}

/* ---- sensors ------------------------------------------------------------------------------------
 */

/* clang-format off */
#define SENSOR_COLS                                                                                \
    "s.id, s.project_id, s.type, s.unit, s.min_value, s.max_value, s.name, "                       \
    TS("s.created_at") ", " TS("s.updated_at")
/* clang-format on */

static json_t *sensor_item(PGresult *res, int row)
{
    return json_pack("{s:o, s:o, s:o, s:o, s:o, s:o, s:o, s:o, s:o}", "id", col_str(res, row, 0),
                     "project_id", col_str(res, row, 1), "type", col_str(res, row, 2), "unit",
                     col_str(res, row, 3), "min_value", col_real(res, row, 4), "max_value",
                     col_real(res, row, 5), "name", col_str(res, row, 6), "created_at",
                     col_str(res, row, 7), "updated_at", col_str(res, row, 8));
}

/* The project exists in the caller's organization (column 0 counts it), and the sensor is
 * inserted unless the project has one with that id already (then the other columns are NULL). */
/* clang-format off */
static const char sql_sensor_insert[] =
    "WITH p AS (SELECT id FROM projects WHERE id = $2::uuid AND org_id = $1::uuid),"
    " s AS (INSERT INTO sensors (org_id, project_id, id, type, unit, min_value, max_value, name)"
    "       SELECT $1::uuid, p.id, $3, $4, $5, $6::float8, $7::float8, coalesce($8, '') FROM p"
    "       ON CONFLICT (project_id, id) DO NOTHING RETURNING *)"
    " SELECT (SELECT count(*) FROM p), " SENSOR_COLS " FROM (VALUES (1)) v LEFT JOIN s ON true";
/* clang-format on */

static void sensors_create_done(int err, PGresult *res, void *arg)
{
    rd_op_t *op = arg;
    char location[256];

    if (err < 0) {
        gw_op_db_failed(&op->op, err, res);
    } else if (!gw_op_gone(&op->op)) {
        if (PQntuples(res) != 1 || strcmp(PQgetvalue(res, 0, 0), "0") == 0) {
            gw_op_fail(&op->op, 404, "not-found", "your organization has no project %s", op->pv[1]);
        } else if (PQgetisnull(res, 0, 1)) {
            gw_op_fail(&op->op, 409, "conflict",
                       "sensor \"%s\" already exists in project %s (sensors are not replaced)",
                       op->pv[2], op->pv[1]);
        } else {
            /* Columns 1.. are sensor_item()'s 0.. */
            json_t *doc =
                json_pack("{s:o, s:o, s:o, s:o, s:o, s:o, s:o, s:o, s:o}", "id", col_str(res, 0, 1),
                          "project_id", col_str(res, 0, 2), "type", col_str(res, 0, 3), "unit",
                          col_str(res, 0, 4), "min_value", col_real(res, 0, 5), "max_value",
                          col_real(res, 0, 6), "name", col_str(res, 0, 7), "created_at",
                          col_str(res, 0, 8), "updated_at", col_str(res, 0, 9));

            snprintf(location, sizeof(location), "/sensors/%s?project_id=%s", op->pv[2], op->pv[1]);
            gw_req_header(op->op.r, "Location", location);
            gw_op_reply_json(&op->op, 201, doc);
        }
    }
    PQclear(res);
}

/* A string member that, when present, passes @ok; NULL when absent or null. */
static const char *body_str(json_t *doc, const char *key, bool required, bool (*ok)(const char *),
                            const char *why, json_t *errors)
{
    const char *v = gw_field_str(doc, key, required, errors);

    if (v && ok && !ok(v)) {
        gw_field_error(errors, key, why);
        return NULL;
    }
    return v;
}

static bool unit_ok(const char *s)
{
    size_t chars = 0;

    for (const unsigned char *p = (const unsigned char *)s; *p; p++) {
        if (*p < 0x20 || *p == 0x7f)
            return false;
        chars += (*p & 0xc0) != 0x80;
    }
    return chars >= 1 && chars <= 32;
}

static bool name_ok(const char *s)
{
    size_t chars = 0;

    for (const unsigned char *p = (const unsigned char *)s; *p; p++) {
        if (*p < 0x20 || *p == 0x7f)
            return false;
        chars += (*p & 0xc0) != 0x80;
    }
    return chars <= 200;
}

/* A number member (or null/absent: @ret_set false). */
static void body_num(json_t *doc, const char *key, double *ret, bool *ret_set, json_t *errors)
{
    json_t *v = json_object_get(doc, key);

    *ret_set = v && json_is_number(v);
    if (*ret_set)
        *ret = json_number_value(v);
    else if (v && !json_is_null(v))
        gw_field_error(errors, key, "must be a number");
}

void gw_sensors_create(gw_req_t *r)
{
    static const char *const fields[] = {"id",        "type", "unit",       "min_value",
                                         "max_value", "name", "project_id", NULL};
    static const char *const params[] = {"project_id", NULL};
    gw_principal_t who;
    const char *id, *type, *unit, *name, *project, *qproject, *key;
    double lo = 0, hi = 0;
    bool has_lo, has_hi, ok;
    char num[2][32];
    json_t *doc, *errors, *v;
    rd_op_t *op;

    if (gw_auth_require(r, GW_SCOPE_INGEST, AUTH_ROLE_OPERATOR, &who) < 0 ||
        rd_query_names(r, params) < 0 || gw_query_uuid(r, "project_id", &qproject) < 0)
        return;
    if (who.kind == GW_PRINCIPAL_KEY && qproject && strcmp(qproject, who.project_id) != 0) {
        gw_reply_problemf(r, 404, "not-found", "this API key has no access to project %s",
                          qproject);
        return;
    }
    if (!(doc = gw_body_object(r)))
        return;
    errors = json_array();
    json_object_foreach(doc, key, v)
    {
        bool known = false;

        for (const char *const *f = fields; *f && !known; f++)
            known = strcmp(*f, key) == 0;
        if (!known)
            gw_field_error(errors, key, "is not a field of a sensor");
    }
    id = body_str(doc, "id", true, rd_sensor_id_ok,
                  "must be 1-64 characters from [A-Za-z0-9._:-], starting with a letter or digit",
                  errors);
    type = body_str(doc, "type", true, rd_type_ok,
                    "must be 1-64 characters from [a-z0-9_.-], starting with a letter or digit",
                    errors);
    unit = body_str(doc, "unit", false, unit_ok,
                    "must be 1-32 characters without control characters", errors);
    name = body_str(doc, "name", false, name_ok,
                    "must be at most 200 characters without control characters", errors);
    project = body_str(doc, "project_id", false, gw_is_uuid, "must be a lower-case UUID", errors);
    body_num(doc, "min_value", &lo, &has_lo, errors);
    body_num(doc, "max_value", &hi, &has_hi, errors);
    if (has_lo && has_hi && !(lo < hi))
        gw_field_error(errors, "max_value", "must be greater than min_value");
    if (project && qproject && strcmp(project, qproject) != 0)
        gw_field_error(errors, "project_id", "differs from the project_id query parameter");
    if (!project)
        project = qproject;
    if (who.kind == GW_PRINCIPAL_KEY) {
        if (project && strcmp(project, who.project_id) != 0)
            gw_field_error(errors, "project_id", "an API key registers sensors in its own project");
        project = who.project_id;
    } else if (!project && !json_object_get(doc, "project_id")) {
        gw_field_error(errors, "project_id",
                       "is required when a person registers a sensor (in the body or the query)");
    }
    if (gw_fields_rejected(r, errors) || !(op = rd_new(r, &who, project))) {
        json_decref(doc);
        return;
    }
    snprintf(num[0], sizeof(num[0]), "%.17g", lo);
    snprintf(num[1], sizeof(num[1]), "%.17g", hi);
    ok = rd_param(op, id) && rd_param(op, type) && rd_param(op, unit) &&
         rd_param(op, has_lo ? num[0] : NULL) && rd_param(op, has_hi ? num[1] : NULL) &&
         rd_param(op, name);
    json_decref(doc);
    if (!ok) {
        gw_op_fail(&op->op, 500, "internal-error", "out of memory");
        return;
    }
    gw_op_query(&op->op, sql_sensor_insert, op->np, (const char *const *)op->pv,
                sensors_create_done);
}

/* clang-format off */
static const char sql_sensors_list[] =
    "SELECT " SENSOR_COLS " FROM sensors s WHERE " SCOPE("s")
    " AND ($3::text IS NULL OR s.type = $3::text)"
    " AND ($4::uuid IS NULL OR (s.project_id, s.id) > ($4::uuid, $5::text))"
    " ORDER BY s.project_id, s.id LIMIT $6::int8";
/* clang-format on */

void gw_sensors_list(gw_req_t *r)
{
    static const char *const params[] = {"project_id", "type", "limit", "cursor", NULL};
    gw_principal_t who;
    const char *project, *type;
    char cproject[37], csensor[65];
    int64_t limit;
    rd_op_t *op;

    if (rd_begin(r, params, &who, &project) < 0 ||
        gw_query_int(r, "limit", RD_LIMIT_DEFAULT, 1, RD_LIMIT_MAX, &limit) < 0 ||
        rd_query_cursor_sensor(r, cproject, csensor) < 0)
        return;
    if ((type = gw_req_query(r, "type")) && !rd_type_ok(type)) {
        gw_reply_problemf(r, 400, "invalid-parameter",
                          "type must be 1-64 characters from [a-z0-9_.-], starting with a letter "
                          "or digit");
        return;
    }
    if (!(op = rd_new(r, &who, project)))
        return;
    op->sql = sql_sensors_list;
    op->done = rd_list_done;
    op->item = sensor_item;
    op->key_cols[0] = 1; /* project_id */
    op->key_cols[1] = 0; /* id */
    op->limit = limit;
    if (!rd_param(op, type) || !rd_param(op, cproject[0] ? cproject : NULL) ||
        !rd_param(op, cproject[0] ? csensor : NULL) || !rd_param_int(op, limit + 1)) {
        gw_op_fail(&op->op, 500, "internal-error", "out of memory");
        return;
    }
    rd_start(op);
}

/* Two rows at most: a person who names no project may have the id in several. */
/* clang-format off */
static const char sql_sensor_get[] =
    "SELECT " SENSOR_COLS " FROM sensors s WHERE " SCOPE("s") " AND s.id = $3"
    " ORDER BY s.project_id LIMIT 2";
/* clang-format on */

static void sensors_get_done(int err, PGresult *res, void *arg)
{
    rd_op_t *op = arg;

    if (err < 0) {
        gw_op_db_failed(&op->op, err, res);
    } else if (!gw_op_gone(&op->op)) {
        if (PQntuples(res) == 0)
            gw_op_fail(&op->op, 404, "not-found", "no sensor \"%s\" is registered%s%s", op->pv[2],
                       op->pv[1] ? " in project " : " in your organization",
                       op->pv[1] ? op->pv[1] : "");
        else if (PQntuples(res) > 1)
            gw_op_fail(&op->op, 400, "invalid-parameter",
                       "project_id is required: sensor \"%s\" is registered in more than one "
                       "project of your organization",
                       op->pv[2]);
        else
            gw_op_reply_json(&op->op, 200, sensor_item(res, 0));
    }
    PQclear(res);
}

void gw_sensors_get(gw_req_t *r)
{
    static const char *const params[] = {"project_id", NULL};
    gw_principal_t who;
    const char *project;
    char *id;
    rd_op_t *op;

    if (rd_begin(r, params, &who, &project) < 0)
        return;
    /* Sensor ids may hold ':', which clients may send percent-encoded. */
    id = evhttp_uridecode(r->params[0], 0, NULL);
    if (!id || !rd_sensor_id_ok(id)) {
        gw_reply_problemf(r, 404, "not-found", "no sensor \"%.64s\" is registered",
                          id ? id : r->params[0]);
        free(id);
        return;
    }
    op = rd_new(r, &who, project);
    if (op && !rd_param(op, id)) {
        gw_op_fail(&op->op, 500, "internal-error", "out of memory");
        op = NULL;
    }
    free(id);
    if (!op)
        return;
    op->sql = sql_sensor_get;
    op->done = sensors_get_done;
    rd_start(op);
}

/* ---- readings ----------------------------------------------------------------------------------
 */

/* Per sensor this walks the index (project_id, sensor_id, ts DESC) from the cursor down; ties
 * on ts are broken by reading_id (an incremental sort of the few rows sharing a ts). */
/* clang-format off */
static const char sql_readings[] =
    "SELECT r.reading_id, r.project_id, r.sensor_id, " TS("r.ts") ", r.value, r.unit, r.tags"
    " FROM sensor_readings r WHERE " SCOPE("r")
    " AND ($3::text IS NULL OR r.sensor_id = $3::text)"
    " AND ($4::timestamptz IS NULL OR r.ts >= $4::timestamptz)"
    " AND ($5::timestamptz IS NULL OR r.ts < $5::timestamptz)"
    " AND ($6::timestamptz IS NULL OR (r.ts, r.reading_id) < ($6::timestamptz, $7::uuid))"
    " ORDER BY r.ts DESC, r.reading_id DESC LIMIT $8::int8";
/* clang-format on */

static json_t *reading_item(PGresult *res, int row)
{
    return json_pack("{s:o, s:o, s:o, s:o, s:o, s:o, s:o}", "id", col_str(res, row, 0),
                     "project_id", col_str(res, row, 1), "sensor_id", col_str(res, row, 2), "ts",
                     col_str(res, row, 3), "value", col_real(res, row, 4), "unit",
                     col_str(res, row, 5), "tags", col_json(res, row, 6));
}

void gw_readings_list(gw_req_t *r)
{
    static const char *const params[] = {"project_id", "sensor_id", "from", "to",
                                         "limit",      "cursor",    NULL};
    gw_principal_t who;
    const char *project, *sensor;
    char from[RD_TS_MAX], to[RD_TS_MAX], cts[RD_TS_MAX], cid[37];
    int64_t limit;
    rd_op_t *op;

    if (rd_begin(r, params, &who, &project) < 0 || rd_query_sensor(r, &sensor) < 0 ||
        rd_query_window(r, 0, from, to) < 0 ||
        gw_query_int(r, "limit", RD_LIMIT_DEFAULT, 1, RD_LIMIT_MAX, &limit) < 0 ||
        rd_query_cursor_ts(r, cts, cid) < 0 || !(op = rd_new(r, &who, project)))
        return;
    op->sql = sql_readings;
    op->done = rd_list_done;
    op->item = reading_item;
    op->key_cols[0] = 3; /* ts */
    op->key_cols[1] = 0; /* reading id */
    op->limit = limit;
    if (!rd_param(op, sensor) || !rd_param(op, from[0] ? from : NULL) ||
        !rd_param(op, to[0] ? to : NULL) || !rd_param(op, cts[0] ? cts : NULL) ||
        !rd_param(op, cts[0] ? cid : NULL) || !rd_param_int(op, limit + 1)) {
        gw_op_fail(&op->op, 500, "internal-error", "out of memory");
        return;
    }
    rd_start(op);
}

/* "last" is the value of the newest reading (ties on ts broken by reading id, as in lists). */
/* clang-format off */
static const char sql_stats[] =
    "SELECT r.project_id, r.sensor_id, count(*), min(r.value), max(r.value), avg(r.value),"
    " (array_agg(r.value ORDER BY r.ts DESC, r.reading_id DESC))[1], " TS("max(r.ts)")
    " FROM sensor_readings r WHERE " SCOPE("r")
    " AND r.ts >= $3::timestamptz AND r.ts < $4::timestamptz"
    " AND ($5::text IS NULL OR r.sensor_id = $5::text)"
    " AND ($6::uuid IS NULL OR (r.project_id, r.sensor_id) > ($6::uuid, $7::text))"
    " GROUP BY r.project_id, r.sensor_id ORDER BY r.project_id, r.sensor_id LIMIT $8::int8";
/* clang-format on */

static json_t *stats_item(PGresult *res, int row)
{
    return json_pack("{s:o, s:o, s:o, s:o, s:o, s:o, s:{s:o, s:o}}", "sensor_id",
                     col_str(res, row, 1), "project_id", col_str(res, row, 0), "count",
                     col_int(res, row, 2), "min", col_real(res, row, 3), "max",
                     col_real(res, row, 4), "avg", col_real(res, row, 5), "last", "value",
                     col_real(res, row, 6), "ts", col_str(res, row, 7));
}

void gw_sensors_stats(gw_req_t *r)
{
    static const char *const params[] = {"project_id", "sensor_id", "from", "to",
                                         "limit",      "cursor",    NULL};
    gw_principal_t who;
    const char *project, *sensor;
    char from[RD_TS_MAX], to[RD_TS_MAX], cproject[37], csensor[65];
    int64_t limit;
    rd_op_t *op;

    if (rd_begin(r, params, &who, &project) < 0 || rd_query_sensor(r, &sensor) < 0 ||
        rd_query_window(r, RD_WINDOW_US, from, to) < 0 ||
        gw_query_int(r, "limit", RD_LIMIT_DEFAULT, 1, RD_LIMIT_MAX, &limit) < 0 ||
        rd_query_cursor_sensor(r, cproject, csensor) < 0 || !(op = rd_new(r, &who, project)))
        return;
    op->sql = sql_stats;
    op->done = rd_list_done;
    op->item = stats_item;
    op->key_cols[0] = 0; /* project_id */
    op->key_cols[1] = 1; /* sensor_id */
    op->limit = limit;
    json_object_set_new(op->doc, "from", json_string(from));
    json_object_set_new(op->doc, "to", json_string(to));
    if (!rd_param(op, from) || !rd_param(op, to) || !rd_param(op, sensor) ||
        !rd_param(op, cproject[0] ? cproject : NULL) ||
        !rd_param(op, cproject[0] ? csensor : NULL) || !rd_param_int(op, limit + 1)) {
        gw_op_fail(&op->op, 500, "internal-error", "out of memory");
        return;
    }
    rd_start(op);
}

/* ---- anomalies ---------------------------------------------------------------------------------
 */

/* One count per check of rd_checks[], in that order: a reading that failed several checks counts
 * once in the total and once under each of them. */
/* clang-format off */
static const char sql_anomalies_count[] =
    "SELECT count(*),"
    " count(*) FILTER (WHERE 'zscore' = ANY(a.checks)),"
    " count(*) FILTER (WHERE 'limit_low' = ANY(a.checks)),"
    " count(*) FILTER (WHERE 'limit_high' = ANY(a.checks)),"
    " count(*) FILTER (WHERE 'rate' = ANY(a.checks))"
    " FROM anomalies a WHERE " SCOPE("a")
    " AND a.ts >= $3::timestamptz AND a.ts < $4::timestamptz"
    " AND ($5::text IS NULL OR a.sensor_id = $5::text)";
/* clang-format on */

static void anomalies_count_done(int err, PGresult *res, void *arg)
{
    rd_op_t *op = arg;

    if (err < 0) {
        gw_op_db_failed(&op->op, err, res);
    } else if (!gw_op_gone(&op->op)) {
        json_t *by = json_object();

        for (size_t c = 0; c < RD_NCHECKS; c++)
            json_object_set_new(by, rd_checks[c], col_int(res, 0, 1 + (int)c));
        json_object_set_new(op->doc, "total", col_int(res, 0, 0));
        json_object_set_new(op->doc, "by_check", by);
        gw_op_reply_json(&op->op, 200, json_incref(op->doc));
    }
    PQclear(res);
}

void gw_anomalies_count(gw_req_t *r)
{
    static const char *const params[] = {"project_id", "sensor_id", "from", "to", NULL};
    gw_principal_t who;
    const char *project, *sensor;
    char from[RD_TS_MAX], to[RD_TS_MAX];
    rd_op_t *op;

    if (rd_begin(r, params, &who, &project) < 0 || rd_query_sensor(r, &sensor) < 0 ||
        rd_query_window(r, RD_WINDOW_US, from, to) < 0 || !(op = rd_new(r, &who, project)))
        return;
    op->sql = sql_anomalies_count;
    op->done = anomalies_count_done;
    json_object_set_new(op->doc, "from", json_string(from));
    json_object_set_new(op->doc, "to", json_string(to));
    if (!rd_param(op, from) || !rd_param(op, to) || !rd_param(op, sensor)) {
        gw_op_fail(&op->op, 500, "internal-error", "out of memory");
        return;
    }
    rd_start(op);
}

/* clang-format off */
static const char sql_anomalies[] =
    "SELECT a.reading_id, a.project_id, a.sensor_id, " TS("a.ts") ", a.value,"
    " array_to_json(a.checks), a.z, a.mean, a.stddev, " TS("a.detected_at")
    " FROM anomalies a WHERE " SCOPE("a")
    " AND ($3::text IS NULL OR a.sensor_id = $3::text)"
    " AND ($4::text IS NULL OR $4::text = ANY(a.checks))"
    " AND ($5::timestamptz IS NULL OR a.ts >= $5::timestamptz)"
    " AND ($6::timestamptz IS NULL OR a.ts < $6::timestamptz)"
    " AND ($7::timestamptz IS NULL OR (a.ts, a.reading_id) < ($7::timestamptz, $8::uuid))"
    " ORDER BY a.ts DESC, a.reading_id DESC LIMIT $9::int8";
/* clang-format on */

static json_t *anomaly_item(PGresult *res, int row)
{
    return json_pack("{s:o, s:o, s:o, s:o, s:o, s:o, s:o, s:o, s:o, s:o}", "reading_id",
                     col_str(res, row, 0), "project_id", col_str(res, row, 1), "sensor_id",
                     col_str(res, row, 2), "ts", col_str(res, row, 3), "value",
                     col_real(res, row, 4), "checks", col_json(res, row, 5), "z",
                     col_real(res, row, 6), "mean", col_real(res, row, 7), "stddev",
                     col_real(res, row, 8), "detected_at", col_str(res, row, 9));
}

void gw_anomalies_list(gw_req_t *r)
{
    static const char *const params[] = {"project_id", "sensor_id", "check",  "from",
                                         "to",         "limit",     "cursor", NULL};
    gw_principal_t who;
    const char *project, *sensor, *check;
    char from[RD_TS_MAX], to[RD_TS_MAX], cts[RD_TS_MAX], cid[37];
    int64_t limit;
    bool known = false;
    rd_op_t *op;

    if (rd_begin(r, params, &who, &project) < 0 || rd_query_sensor(r, &sensor) < 0 ||
        rd_query_window(r, 0, from, to) < 0 ||
        gw_query_int(r, "limit", RD_LIMIT_DEFAULT, 1, RD_LIMIT_MAX, &limit) < 0 ||
        rd_query_cursor_ts(r, cts, cid) < 0)
        return;
    check = gw_req_query(r, "check");
    for (size_t c = 0; check && c < RD_NCHECKS; c++)
        known |= strcmp(check, rd_checks[c]) == 0;
    if (check && !known) {
        gw_reply_problemf(r, 400, "invalid-parameter",
                          "check must be one of zscore, limit_low, limit_high, rate");
        return;
    }
    if (!(op = rd_new(r, &who, project)))
        return;
    op->sql = sql_anomalies;
    op->done = rd_list_done;
    op->item = anomaly_item;
    op->key_cols[0] = 3; /* ts */
    op->key_cols[1] = 0; /* reading id */
    op->limit = limit;
    if (!rd_param(op, sensor) || !rd_param(op, check) || !rd_param(op, from[0] ? from : NULL) ||
        !rd_param(op, to[0] ? to : NULL) || !rd_param(op, cts[0] ? cts : NULL) ||
        !rd_param(op, cts[0] ? cid : NULL) || !rd_param_int(op, limit + 1)) {
        gw_op_fail(&op->op, 500, "internal-error", "out of memory");
        return;
    }
    rd_start(op);
}
