/* orders.c: the orders API. sb-order-processor is the single writer of order state; the gateway
 * checks the shape of a request, puts a command on orders.v1 and reads what the processor wrote.
 *
 *   POST /orders              key "orders" or operator+: record the request (order_requests),
 *                             produce a "create" command keyed by a new order id, answer 202
 *                             with Location once Kafka acknowledged it (acks=all)
 *   GET  /orders              key "read" or viewer+: the organization's orders, newest first
 *   GET  /orders/{id}         the order and its events; "received" while only the gateway knows it
 *   PUT  /orders/{id}/status  operator+ (people): produce a "transition" command, answer 202
 *
 * Idempotency-Key (POST): the request is reserved in order_requests before anything is produced,
 * keyed by (organization, key), with the SHA-256 of its canonical form (the normalised order and
 * project, keys sorted, compact), so that a repeated key replays the stored answer and another
 * body gets 409. A row whose request died between reserving and producing is claimed by the next
 * retry once its claim ran out, which produces the stored command again: same order and command
 * ids, applied once by the processor. docs/orders-api.md tells the whole protocol.
 *
 * Every request hops between callbacks (database, delivery report, timer) carrying an orders_op_t;
 * nothing blocks the loop. A delivery report may arrive after its request timed out: it holds an
 * orders_report_t, which the request detaches from when it stops waiting.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <event2/event.h>
#include <openssl/sha.h>

#include "gateway.h"
#include "svc_lifecycle.h"
#include "svc_log.h"
#include "svc_util.h"

#define ORDER_TEXT_MAX     64   /* customer_id, sku: characters */
#define ORDER_LINE_MAX     200  /* each shipping field */
#define ORDER_NOTES_MAX    1000 /* notes, reason */
#define ORDER_QUANTITY_MAX 1000000
#define ORDER_IDEM_MAX     255 /* Idempotency-Key */
#define ORDER_LIST_DEFAULT 50
#define ORDER_LIST_MAX     200
#define ORDER_CONTRACT     "order_command.v1"
#define ORDER_SHA_HEX      (2 * SHA256_DIGEST_LENGTH)

/* Statuses, and the ones a person may ask for (the processor alone decides pending_approval). */
static const char *const order_statuses[] = {"pending",   "pending_approval", "accepted",
                                             "rejected",  "in_production",    "shipped",
                                             "delivered", "cancelled",        NULL};
static const char *const order_targets[] = {
    "accepted", "rejected", "in_production", "shipped", "delivered", "cancelled", NULL};

typedef enum orders_kind {
    ORDERS_CREATE,
    ORDERS_TRANSITION,
} orders_kind_t;

typedef struct orders_op orders_op_t;

/* What a delivery report points at: its request, or NULL once the request stopped waiting. */
typedef struct orders_report {
    orders_op_t *o;
} orders_report_t;

struct orders_op {
    gw_op_t op;
    orders_kind_t kind;
    char order_id[37];
    char command_id[37];
    char project_id[37]; /* "" when the order has none */
    char *idem_key;      /* owned; NULL without Idempotency-Key */
    char body_sha256[ORDER_SHA_HEX + 1];
    char *command;           /* owned: the command's JSON, as produced */
    json_t *response;        /* owned: the 202 body */
    orders_report_t *report; /* while a delivery report is due */
    struct event *timer;     /* produce_timeout_ms */
    char failure[200];       /* the 503's detail, kept across the release query */
};

static void orders_timeout(evutil_socket_t fd, short what, void *arg);

/* ---- SQL ------------------------------------------------------------------------------------ */

#define SQL_TS(col) "to_char(" col " AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"')"

/* json_build_object's arguments for an order row `o` (without the closing parenthesis). */
#define SQL_ORDER_FIELDS                                                                     \
    "json_build_object('order_id', o.id, 'project_id', o.project_id, 'customer_id', "        \
    "o.customer_id, 'sku', o.sku, 'quantity', o.quantity, 'shipping', o.shipping, 'notes', " \
    "o.notes, 'status', o.status, 'route', o.route, 'reject_reason', o.reject_reason, "      \
    "'created_at', " SQL_TS("o.created_at") ", 'updated_at', " SQL_TS(                       \
        "o.updated_at") ", "                                                                 \
                        "'version', o.version"

#define SQL_EVENTS                                                                                \
    "coalesce((SELECT json_agg(json_build_object('seq', e.seq, 'event_id', e.event_id, 'type', "  \
    "e.type, 'from', e.from_status, 'to', e.to_status, 'reason', e.reason, 'route', e.route, "    \
    "'command_id', e.command_id, 'request_id', e.request_id, 'actor', e.actor, 'at', " SQL_TS(    \
        "e.at") ") ORDER BY e.seq) FROM order_events e WHERE e.org_id = o.org_id AND e.order_id " \
                "= o.id), '[]'::json)"

#define SQL_KEY_TTL "interval '24 hours'"

/* $1 org, $2 Idempotency-Key or NULL, $3 order id, $4 project or NULL, $5 body hash, $6 command,
 * $7 claim in seconds. Reserves the request: a new row, or an expired one of the same key taken
 * over. Returns (project is the organization's, reserved). Also deletes a few expired rows of
 * the organization: lazy expiry costs a little on each request rather than a sweeper. */
static const char sql_reserve[] =
    "WITH p AS (SELECT $4::uuid IS NULL OR EXISTS (SELECT 1 FROM projects WHERE id = $4::uuid "
    "AND org_id = $1::uuid) AS ok), "
    "gone AS (DELETE FROM order_requests WHERE order_id IN (SELECT order_id FROM order_requests "
    "WHERE org_id = $1::uuid AND created_at < now() - " SQL_KEY_TTL " AND ($2::text IS NULL "
    "OR idempotency_key IS DISTINCT FROM $2::text) LIMIT 16)), "
    "ins AS (INSERT INTO order_requests AS q (org_id, order_id, project_id, idempotency_key, "
    "body_sha256, command, claimed_until) SELECT $1::uuid, $3::uuid, $4::uuid, $2::text, $5::text, "
    "$6::text, now() + make_interval(secs => $7::float8) FROM p WHERE p.ok "
    "ON CONFLICT (org_id, idempotency_key) DO UPDATE SET order_id = excluded.order_id, "
    "project_id = excluded.project_id, body_sha256 = excluded.body_sha256, "
    "command = excluded.command, state = 'pending', claimed_until = excluded.claimed_until, "
    "response = NULL, created_at = now(), produced_at = NULL "
    "WHERE q.created_at < now() - " SQL_KEY_TTL " RETURNING q.order_id) "
    "SELECT p.ok, EXISTS (SELECT 1 FROM ins) FROM p";

/* $1 org, $2 key, $3 body hash, $4 claim in seconds. The key's row, claiming it when it is
 * pending, unclaimed and for the same body (the WHERE is re-checked on the latest row version, so
 * of two concurrent retries one claims). Returns (same body, state, response, claimed command). */
static const char sql_claim[] =
    "WITH c AS (UPDATE order_requests SET claimed_until = now() + make_interval(secs => "
    "$4::float8) WHERE org_id = $1::uuid AND idempotency_key = $2::text AND state = 'pending' "
    "AND claimed_until < now() AND body_sha256 = $3::text RETURNING order_id, command) "
    "SELECT q.body_sha256 = $3::text, q.state, q.response::text, c.command "
    "FROM order_requests q LEFT JOIN c ON c.order_id = q.order_id "
    "WHERE q.org_id = $1::uuid AND q.idempotency_key = $2::text";

static const char sql_finish[] =
    "UPDATE order_requests SET state = 'produced', produced_at = now(), response = $3::jsonb "
    "WHERE org_id = $1::uuid AND order_id = $2::uuid";

/* Kafka did not take the command: a keyed row is released for the next retry at once, a row
 * without a key (nobody can retry it) is dropped. */
static const char sql_release[] =
    "WITH d AS (DELETE FROM order_requests WHERE org_id = $1::uuid AND order_id = $2::uuid "
    "AND state = 'pending' AND idempotency_key IS NULL) "
    "UPDATE order_requests SET claimed_until = '-infinity' WHERE org_id = $1::uuid "
    "AND order_id = $2::uuid AND state = 'pending' AND idempotency_key IS NOT NULL";

static const char sql_exists[] =
    "SELECT EXISTS (SELECT 1 FROM orders WHERE org_id = $1::uuid AND id = $2::uuid) OR "
    "EXISTS (SELECT 1 FROM order_requests WHERE org_id = $1::uuid AND order_id = $2::uuid AND "
    "state = 'produced')";

/* $1 org, $2 order id, $3 the API key's project or NULL. The processor's row with its events,
 * else what the gateway produced (status "received"). */
static const char sql_get[] =
    "SELECT coalesce((SELECT " SQL_ORDER_FIELDS ", 'events', " SQL_EVENTS ") FROM orders o "
    "WHERE o.org_id = $1::uuid AND o.id = $2::uuid AND ($3::uuid IS NULL OR o.project_id = "
    "$3::uuid)), (SELECT json_build_object('order_id', q.order_id, 'project_id', q.project_id, "
    "'customer_id', c->'order'->'customer_id', 'sku', c->'order'->'sku', 'quantity', "
    "c->'order'->'quantity', 'shipping', c->'order'->'shipping', 'notes', c->'order'->'notes', "
    "'status', 'received', 'route', NULL, 'reject_reason', NULL, 'created_at', "
    "c->'requested_at', 'updated_at', " SQL_TS(
        "q.produced_at") ", 'version', 0, 'events', "
                         "'[]'::json) FROM order_requests q CROSS JOIN LATERAL (SELECT "
                         "q.command::json AS c) x "
                         "WHERE q.org_id = $1::uuid AND q.order_id = $2::uuid AND q.state = "
                         "'produced' "
                         "AND ($3::uuid IS NULL OR q.project_id = $3::uuid)))::text";

/* $1 org, $2 project, $3 status, $4 customer, $5 sku, $6 from, $7 to, $8/$9 the cursor's
 * (created_at, id), $10 limit. Newest first, on (created_at, id). */
static const char sql_list[] = "SELECT " SQL_ORDER_FIELDS ")::text, " SQL_TS(
    "o.created_at") ", o.id FROM orders o "
                    "WHERE o.org_id = $1::uuid AND ($2::uuid IS NULL OR o.project_id = $2::uuid) "
                    "AND ($3::text IS NULL OR o.status = $3::text) "
                    "AND ($4::text IS NULL OR o.customer_id = $4::text) AND ($5::text IS NULL OR "
                    "o.sku = $5::text) "
                    "AND ($6::timestamptz IS NULL OR o.created_at >= $6::timestamptz) "
                    "AND ($7::timestamptz IS NULL OR o.created_at < $7::timestamptz) "
                    "AND ($8::timestamptz IS NULL OR (o.created_at, o.id) < ($8::timestamptz, "
                    "$9::uuid)) "
                    "ORDER BY o.created_at DESC, o.id DESC LIMIT $10::int";

/* ---- the operation's life --------------------------------------------------------------------
 */

static void orders_cleanup(gw_op_t *op)
{
    orders_op_t *o = (orders_op_t *)op;

    if (o->report)
        o->report->o = NULL; /* the report frees it when it comes */
    if (o->timer)
        event_free(o->timer);
    free(o->idem_key);
    free(o->command);
    json_decref(o->response);
}

static orders_op_t *orders_op_new(gw_req_t *r, const gw_principal_t *who, orders_kind_t kind)
{
    orders_op_t *o = gw_op_new(r, who, sizeof(*o));

    if (!o)
        return NULL;
    o->op.cleanup = orders_cleanup;
    o->kind = kind;
    o->timer = evtimer_new(r->loop->base, orders_timeout, o);
    if (!o->timer || svc_uuid4(o->order_id) < 0 || svc_uuid4(o->command_id) < 0) {
        gw_op_fail(&o->op, 500, "internal-error", "out of memory or no randomness");
        return NULL;
    }
    return o;
}

/* Seconds a pending row belongs to the request holding it: longer than producing and recording
 * can take, so a live request is never overtaken; short enough that a retry after a crash wins. */
static void orders_claim_secs(const orders_op_t *o, char out[24])
{
    snprintf(out, 24, "%.3f",
             (double)(o->op.loop->gw->cfg.produce_timeout_ms + 2 * GW_DB_TIMEOUT_MS) / 1000.0);
}

/* ---- field checks ----------------------------------------------------------------------------
 */

static bool in_list(const char *s, const char *const *list)
{
    for (size_t i = 0; s && list[i]; i++)
        if (strcmp(s, list[i]) == 0)
            return true;
    return false;
}

/* The string member @key of @obj: @min..@max characters, control characters refused unless
 * @freetext (then newline, tab and carriage return pass). NULL when absent or null (an error when
 * @min > 0) or wrong, with the error noted under @pointer. */
static const char *field_text(json_t *obj, const char *key, const char *pointer, size_t min,
                              size_t max, bool freetext, json_t *errors)
{
    json_t *v = json_object_get(obj, key);
    const unsigned char *p;
    size_t n = 0;
    char why[96];

    if (!v || json_is_null(v)) {
        if (min > 0)
            gw_field_error(errors, pointer, "is required");
        return NULL;
    }
    if (!json_is_string(v)) {
        gw_field_error(errors, pointer, "must be a string");
        return NULL;
    }
    for (p = (const unsigned char *)json_string_value(v); *p; p++) {
        bool line = *p == '\n' || *p == '\t' || *p == '\r';

        if ((*p < 0x20 && !(freetext && line)) || *p == 0x7f) {
            gw_field_error(errors, pointer, "must not contain control characters");
            return NULL;
        }
        n += (*p & 0xc0) != 0x80; /* UTF-8: count characters, not bytes */
    }
    if (n < min || n > max) {
        if (min > 0)
            snprintf(why, sizeof(why), "must be %zu to %zu characters", min, max);
        else
            snprintf(why, sizeof(why), "must be at most %zu characters", max);
        gw_field_error(errors, pointer, why);
        return NULL;
    }
    return json_string_value(v);
}

static void unknown_fields(json_t *obj, const char *const *known, const char *prefix,
                           json_t *errors)
{
    const char *key;
    json_t *v;
    char pointer[80];

    json_object_foreach(obj, key, v)
    {
        if (in_list(key, known))
            continue;
        snprintf(pointer, sizeof(pointer), "%s%.60s", prefix, key);
        gw_field_error(errors, pointer, "is not a known field");
    }
}

static json_t *shipping_parse(json_t *body, json_t *errors)
{
    static const char *const known[] = {"name",        "line1",   "line2", "city",
                                        "postal_code", "country", NULL};
    json_t *in = json_object_get(body, "shipping"), *out;
    const char *name, *line1, *line2, *city, *postal, *country;

    if (!in || json_is_null(in)) {
        gw_field_error(errors, "shipping", "is required");
        return NULL;
    }
    if (!json_is_object(in)) {
        gw_field_error(errors, "shipping", "must be an object");
        return NULL;
    }
    unknown_fields(in, known, "shipping/", errors);
    name = field_text(in, "name", "shipping/name", 1, ORDER_LINE_MAX, false, errors);
    line1 = field_text(in, "line1", "shipping/line1", 1, ORDER_LINE_MAX, false, errors);
    line2 = field_text(in, "line2", "shipping/line2", 0, ORDER_LINE_MAX, false, errors);
    city = field_text(in, "city", "shipping/city", 1, ORDER_LINE_MAX, false, errors);
    postal = field_text(in, "postal_code", "shipping/postal_code", 1, 32, false, errors);
    country = field_text(in, "country", "shipping/country", 1, 2, false, errors);
    if (country && (strlen(country) != 2 || country[0] < 'A' || country[0] > 'Z' ||
                    country[1] < 'A' || country[1] > 'Z')) {
        gw_field_error(errors, "shipping/country",
                       "must be an ISO 3166-1 alpha-2 code in capitals, such as DE");
        country = NULL;
    }
    if (!name || !line1 || !city || !postal || !country)
        return NULL;
    out = json_pack("{s:s, s:s}", "name", name, "line1", line1);
    if (out && line2)
        json_object_set_new(out, "line2", json_string(line2));
    if (out && json_object_set_new(out, "city", json_string(city)) == 0 &&
        json_object_set_new(out, "postal_code", json_string(postal)) == 0 &&
        json_object_set_new(out, "country", json_string(country)) == 0)
        return out;
    json_decref(out);
    return NULL;
}

/*
 * Checks a POST /orders body (every problem goes to @errors) and returns the normalised order the
 * command carries (fields in the contract's order, the quantity an integer), or NULL. The order's
 * project goes to @ret_project: an API key's own, or the person's body project_id ("" for none).
 */
static json_t *create_parse(json_t *body, const gw_principal_t *who, json_t *errors,
                            char ret_project[37])
{
    static const char *const known[] = {"customer_id", "sku",        "quantity", "shipping",
                                        "notes",       "project_id", NULL};
    const char *customer, *sku, *notes, *project;
    json_t *q = json_object_get(body, "quantity"), *shipping, *order;
    double quantity = 0;
    bool quantity_ok = false;

    unknown_fields(body, known, "", errors);
    customer = field_text(body, "customer_id", "customer_id", 1, ORDER_TEXT_MAX, false, errors);
    sku = field_text(body, "sku", "sku", 1, ORDER_TEXT_MAX, false, errors);
    if (!q || json_is_null(q)) {
        gw_field_error(errors, "quantity", "is required");
    } else {
        /* Bodies are decoded with integers as reals (CONTRACT_JSON_DECODE_FLAGS). */
        quantity = json_number_value(q);
        quantity_ok = json_is_number(q) && quantity == (double)(int64_t)quantity && quantity >= 1 &&
                      quantity <= ORDER_QUANTITY_MAX;
        if (!quantity_ok)
            gw_field_error(errors, "quantity", "must be an integer from 1 to 1000000");
    }
    shipping = shipping_parse(body, errors);
    notes = field_text(body, "notes", "notes", 0, ORDER_NOTES_MAX, true, errors);
    project = field_text(body, "project_id", "project_id", 0, 36, false, errors);
    ret_project[0] = '\0';
    if (who->kind == GW_PRINCIPAL_KEY) {
        if (project && strcmp(project, who->project_id) != 0)
            gw_field_error(errors, "project_id",
                           "an API key orders for its own project: leave project_id out");
        memcpy(ret_project, who->project_id, 37);
    } else if (project) {
        if (gw_is_uuid(project))
            memcpy(ret_project, project, 37);
        else
            gw_field_error(errors, "project_id", "must be a lower-case UUID");
    }
    if (json_array_size(errors) > 0 || !customer || !sku || !quantity_ok || !shipping) {
        json_decref(shipping);
        return NULL;
    }
    order = json_pack("{s:s, s:s, s:I, s:o}", "customer_id", customer, "sku", sku, "quantity",
                      (json_int_t)quantity, "shipping", shipping);
    if (order && notes && json_object_set_new(order, "notes", json_string(notes)) < 0) {
        json_decref(order);
        return NULL;
    }
    return order;
}

static bool idem_key_ok(const char *key)
{
    size_t n = strlen(key);

    if (n < 1 || n > ORDER_IDEM_MAX)
        return false;
    for (size_t i = 0; i < n; i++)
        if (key[i] < 0x20 || key[i] > 0x7e)
            return false;
    return true;
}

/* SHA-256 of what the request asks for, in a form that does not depend on key order, spacing or
 * how the quantity was written. */
static int request_hash(json_t *order, const char *project_id, char out[ORDER_SHA_HEX + 1])
{
    json_t *doc = json_pack("{s:O, s:o}", "order", order, "project_id",
                            project_id[0] ? json_string(project_id) : json_null());
    char *text = doc ? json_dumps(doc, JSON_COMPACT | JSON_SORT_KEYS) : NULL;
    unsigned char md[SHA256_DIGEST_LENGTH];

    json_decref(doc);
    if (!text)
        return -ENOMEM;
    SHA256((const unsigned char *)text, strlen(text), md);
    free(text);
    for (size_t i = 0; i < sizeof(md); i++)
        snprintf(out + 2 * i, 3, "%02x", md[i]);
    return 0;
}

/* {"kind": "user"|"key", "id": user id or key prefix}. */
static json_t *actor_json(const gw_principal_t *who)
{
    bool key = who->kind == GW_PRINCIPAL_KEY;
    const char *id = who->subject;

    if (key && strncmp(id, "key:", 4) == 0)
        id += 4;
    return json_pack("{s:s, s:s}", "kind", key ? "key" : "user", "id", id);
}

/* The 202 body of a create, from its command (also for a retry that produces a stored one). */
static json_t *create_response(const char *command)
{
    json_t *cmd = json_loads(command, 0, NULL), *doc = NULL;

    if (cmd)
        doc = json_pack("{s:O, s:s, s:O, s:O, s:O}", "order_id", json_object_get(cmd, "order_id"),
                        "status", "pending", "command_id", json_object_get(cmd, "command_id"),
                        "project_id", json_object_get(cmd, "project_id"), "requested_at",
                        json_object_get(cmd, "requested_at"));
    json_decref(cmd);
    return doc;
}

/* ---- producing a command ---------------------------------------------------------------------
 */

static void create_release_done(int err, PGresult *res, void *arg);
static void create_finish_done(int err, PGresult *res, void *arg);

/* Kafka did not take the command: 503 + Retry-After, after releasing a create's reservation. */
static void orders_failed(orders_op_t *o, const char *detail)
{
    const char *params[2] = {o->op.who.org_id, o->order_id};

    svc_metric_inc(o->op.loop->gw->metrics.produce_failures);
    gw_req_enter(o->op.r);
    log_warn("order command %s for order %s not produced: %s", o->command_id, o->order_id, detail);
    snprintf(o->failure, sizeof(o->failure), "%s", detail);
    if (o->kind == ORDERS_CREATE)
        gw_op_query(&o->op, sql_release, 2, params, create_release_done);
    else
        gw_op_fail(&o->op, 503, "unavailable", "%s", o->failure);
}

/* Kafka has the command. */
static void orders_acked(orders_op_t *o)
{
    char location[64];
    json_t *doc;

    if (o->kind == ORDERS_CREATE) {
        char *response = json_dumps(o->response, JSON_COMPACT);
        const char *params[3] = {o->op.who.org_id, o->order_id, response};

        if (!response) {
            gw_op_fail(&o->op, 500, "internal-error", "out of memory");
            return;
        }
        gw_op_query(&o->op, sql_finish, 3, params, create_finish_done);
        free(response);
        return;
    }
    snprintf(location, sizeof(location), "/orders/%s", o->order_id);
    gw_req_header(o->op.r, "Location", location);
    doc = o->response;
    o->response = NULL;
    gw_op_reply_json(&o->op, 202, doc);
}

static void orders_delivered(rd_kafka_resp_err_t err, int32_t partition, int64_t offset,
                             void *opaque)
{
    orders_report_t *report = opaque;
    orders_op_t *o = report->o;
    char detail[200];

    (void)partition;
    (void)offset;
    free(report);
    if (!o)
        return; /* the request stopped waiting (timeout) and was answered */
    o->report = NULL;
    event_del(o->timer);
    if (err) {
        snprintf(detail, sizeof(detail),
                 "Kafka did not acknowledge the order command (%s); retry%s", rd_kafka_err2str(err),
                 o->kind == ORDERS_CREATE ? " with the same Idempotency-Key" : "");
        orders_failed(o, detail);
        return;
    }
    orders_acked(o);
}

static void orders_timeout(evutil_socket_t fd, short what, void *arg)
{
    orders_op_t *o = arg;
    char detail[200];

    (void)fd;
    (void)what;
    if (o->report) {
        o->report->o = NULL;
        o->report = NULL;
    }
    snprintf(detail, sizeof(detail),
             "Kafka did not acknowledge the order command within %lld ms; retry%s",
             (long long)o->op.loop->gw->cfg.produce_timeout_ms,
             o->kind == ORDERS_CREATE ? " with the same Idempotency-Key" : "");
    orders_failed(o, detail);
}

/* Produces o->command keyed by the order id, then waits for the delivery report. */
static void orders_produce(orders_op_t *o)
{
    gw_loop_t *loop = o->op.loop;
    gw_t *gw = loop->gw;
    gw_req_t *r = o->op.r;
    struct timeval tv = {.tv_sec = gw->cfg.produce_timeout_ms / 1000,
                         .tv_usec = (gw->cfg.produce_timeout_ms % 1000) * 1000};
    bus_header_t headers[5] = {
        {"content-type", "application/json", strlen("application/json")},
        {"sb-contract", ORDER_CONTRACT, strlen(ORDER_CONTRACT)},
        {"sb-request-id", r->request_id, strlen(r->request_id)},
        {"sb-org-id", o->op.who.org_id, strlen(o->op.who.org_id)},
        {"sb-project-id", o->project_id, strlen(o->project_id)},
    };
    orders_report_t *report = calloc(1, sizeof(*report));
    int rc;

    if (!report) {
        orders_failed(o, "out of memory; retry shortly");
        return;
    }
    rc = bus_producer_produce(gw->producer, gw->cfg.orders_topic, o->order_id, strlen(o->order_id),
                              o->command, strlen(o->command), headers, o->project_id[0] ? 5 : 4,
                              loop->notifier, orders_delivered, report);
    if (rc < 0) {
        free(report);
        if (rc == -EIO && !atomic_exchange(&gw->producer_failed, true)) {
            /* As in ingest.c: the idempotent producer must be recreated; a restart does it. */
            log_error("the Kafka producer hit a fatal error; stopping so that it is recreated");
            svc_request_stop();
        }
        orders_failed(o, rc == -ENOBUFS     ? "the Kafka producer queue is full; retry shortly"
                         : rc == -ESHUTDOWN ? "the gateway is shutting down; retry shortly"
                                            : "the order command could not be handed to Kafka; "
                                              "retry shortly");
        return;
    }
    report->o = o;
    o->report = report;
    evtimer_add(o->timer, &tv);
}

/* ---- POST /orders ----------------------------------------------------------------------------
 */

static void create_reply(orders_op_t *o, json_t *doc, bool replayed)
{
    char location[64];

    snprintf(location, sizeof(location), "/orders/%s", o->order_id);
    gw_req_header(o->op.r, "Location", location);
    if (replayed)
        gw_req_header(o->op.r, "Idempotent-Replayed", "true");
    gw_op_reply_json(&o->op, 202, doc);
}

static void create_release_done(int err, PGresult *res, void *arg)
{
    orders_op_t *o = arg;

    /* The answer is 503 either way; a reservation left claimed only delays a retry until its
     * claim runs out. */
    if (err < 0) {
        gw_req_enter(o->op.r);
        log_warn("order %s: the reservation could not be released", o->order_id);
    }
    PQclear(res);
    gw_op_fail(&o->op, 503, "unavailable", "%s", o->failure);
}

static void create_finish_done(int err, PGresult *res, void *arg)
{
    orders_op_t *o = arg;
    json_t *doc = o->response;

    /* Kafka has the order: it is accepted even if the record of the answer was not written (a
     * retry with the key then produces the command again, which the processor applies once). */
    if (err < 0) {
        gw_req_enter(o->op.r);
        log_warn("order %s was produced but its request record was not updated", o->order_id);
    }
    PQclear(res);
    o->response = NULL;
    create_reply(o, doc, false);
}

static void create_claim_done(int err, PGresult *res, void *arg)
{
    orders_op_t *o = arg;
    json_t *doc;

    if (err < 0) {
        gw_op_db_failed(&o->op, err, res);
        PQclear(res);
        return;
    }
    if (PQntuples(res) != 1) {
        /* The row expired and was replaced between our two statements: very rare, and safe to
         * retry. */
        gw_req_header(o->op.r, "Retry-After", "1");
        gw_op_fail(&o->op, 409, "idempotency-in-progress",
                   "a request with this Idempotency-Key is being processed; retry shortly");
    } else if (strcmp(PQgetvalue(res, 0, 0), "t") != 0) {
        gw_op_fail(&o->op, 409, "idempotency-conflict",
                   "this Idempotency-Key was used with a different request body in the last 24 "
                   "hours; use a new key for a new order");
    } else if (!PQgetisnull(res, 0, 3)) {
        /* A reservation whose request died or failed: produce its command again. */
        free(o->command);
        o->command = strdup(PQgetvalue(res, 0, 3));
        json_decref(o->response);
        o->response = o->command ? create_response(o->command) : NULL;
        doc = o->response;
        if (!doc) {
            gw_op_fail(&o->op, 500, "internal-error", "the stored order request is unreadable");
        } else {
            snprintf(o->order_id, sizeof(o->order_id), "%s",
                     json_string_value(json_object_get(doc, "order_id")));
            snprintf(o->command_id, sizeof(o->command_id), "%s",
                     json_string_value(json_object_get(doc, "command_id")));
            gw_req_enter(o->op.r);
            log_info("order %s: producing the stored create command again", o->order_id);
            orders_produce(o);
        }
    } else if (strcmp(PQgetvalue(res, 0, 1), "produced") == 0 && !PQgetisnull(res, 0, 2)) {
        doc = json_loads(PQgetvalue(res, 0, 2), 0, NULL);
        if (!doc) {
            gw_op_fail(&o->op, 500, "internal-error", "the stored response is unreadable");
        } else {
            snprintf(o->order_id, sizeof(o->order_id), "%s",
                     json_string_value(json_object_get(doc, "order_id")));
            create_reply(o, doc, true);
        }
    } else {
        gw_req_header(o->op.r, "Retry-After", "1");
        gw_op_fail(&o->op, 409, "idempotency-in-progress",
                   "a request with this Idempotency-Key is being processed; retry shortly");
    }
    PQclear(res);
}

static void create_reserved(int err, PGresult *res, void *arg)
{
    orders_op_t *o = arg;
    char claim[24];
    const char *params[4] = {o->op.who.org_id, o->idem_key, o->body_sha256, claim};
    bool project_ok, reserved;

    if (err < 0) {
        gw_op_db_failed(&o->op, err, res);
        PQclear(res);
        return;
    }
    project_ok = PQntuples(res) == 1 && strcmp(PQgetvalue(res, 0, 0), "t") == 0;
    reserved = PQntuples(res) == 1 && strcmp(PQgetvalue(res, 0, 1), "t") == 0;
    PQclear(res);
    if (!project_ok) {
        gw_problem_t p = {0};

        gw_problem_set(&p, 422, "invalid-fields",
                       "/project_id: your organization has no project %s", o->project_id);
        p.errors = json_array();
        gw_field_error(p.errors, "project_id", "your organization has no such project");
        gw_op_fail_problem(&o->op, &p);
        return;
    }
    if (reserved) {
        orders_produce(o);
        return;
    }
    orders_claim_secs(o, claim);
    gw_op_query(&o->op, sql_claim, 4, params, create_claim_done);
}

void gw_orders_create(gw_req_t *r)
{
    gw_principal_t who;
    const char *idem;
    json_t *body, *errors, *order, *command;
    char project[37], claim[24], requested_at[40];
    orders_op_t *o;

    if (gw_auth_require(r, GW_SCOPE_ORDERS, AUTH_ROLE_OPERATOR, &who) < 0)
        return;
    idem = gw_req_get_header(r, "Idempotency-Key");
    if (idem && !idem_key_ok(idem)) {
        gw_reply_problemf(r, 400, "invalid-header",
                          "Idempotency-Key must be 1 to 255 printable ASCII characters");
        return;
    }
    body = gw_body_object(r);
    if (!body)
        return;
    errors = json_array();
    order = create_parse(body, &who, errors, project);
    json_decref(body);
    if (gw_fields_rejected(r, errors)) {
        json_decref(order);
        return;
    }
    if (!order) {
        gw_reply_problemf(r, 500, "internal-error", "out of memory");
        return;
    }
    o = orders_op_new(r, &who, ORDERS_CREATE);
    if (!o) {
        json_decref(order);
        return;
    }
    memcpy(o->project_id, project, sizeof(project));
    contract_format_rfc3339(svc_wall_us(), requested_at, sizeof(requested_at));
    command =
        json_pack("{s:s, s:s, s:s, s:s, s:o, s:s, s:s, s:o, s:O}", "type", "create", "command_id",
                  o->command_id, "order_id", o->order_id, "org_id", who.org_id, "project_id",
                  project[0] ? json_string(project) : json_null(), "requested_at", requested_at,
                  "request_id", r->request_id, "actor", actor_json(&who), "order", order);
    o->command = command ? json_dumps(command, JSON_COMPACT) : NULL;
    json_decref(command);
    o->response = o->command ? create_response(o->command) : NULL;
    o->idem_key = idem ? strdup(idem) : NULL;
    if (!o->response || (idem && !o->idem_key) ||
        request_hash(order, project, o->body_sha256) < 0) {
        json_decref(order);
        gw_op_fail(&o->op, 500, "internal-error", "out of memory");
        return;
    }
    json_decref(order);
    orders_claim_secs(o, claim);
    {
        const char *params[7] = {
            who.org_id,     o->idem_key, o->order_id, project[0] ? project : NULL,
            o->body_sha256, o->command,  claim};

        gw_op_query(&o->op, sql_reserve, 7, params, create_reserved);
    }
}

/* ---- PUT /orders/{id}/status -----------------------------------------------------------------
 */

static void status_checked(int err, PGresult *res, void *arg)
{
    orders_op_t *o = arg;
    bool found;

    if (err < 0) {
        gw_op_db_failed(&o->op, err, res);
        PQclear(res);
        return;
    }
    found = PQntuples(res) == 1 && strcmp(PQgetvalue(res, 0, 0), "t") == 0;
    PQclear(res);
    if (!found) {
        gw_op_fail(&o->op, 404, "not-found", "your organization has no order %s", o->order_id);
        return;
    }
    if (gw_op_gone(&o->op))
        return;
    orders_produce(o);
}

void gw_orders_status(gw_req_t *r)
{
    const char *id = r->params[0], *to, *reason;
    gw_principal_t who;
    json_t *body, *errors, *command;
    char requested_at[40];
    orders_op_t *o;

    if (gw_auth_require(r, 0, AUTH_ROLE_OPERATOR, &who) < 0)
        return;
    if (!gw_is_uuid(id)) {
        gw_reply_problemf(r, 404, "not-found", "no order has the id \"%.64s\"", id);
        return;
    }
    body = gw_body_object(r);
    if (!body)
        return;
    errors = json_array();
    unknown_fields(body, (const char *const[]){"status", "reason", NULL}, "", errors);
    to = field_text(body, "status", "status", 1, 32, false, errors);
    if (to && !in_list(to, order_targets)) {
        gw_field_error(errors, "status",
                       in_list(to, order_statuses)
                           ? "cannot be requested: the processor alone moves an order there"
                           : "must be one of accepted, rejected, in_production, shipped, "
                             "delivered, cancelled");
        to = NULL;
    }
    reason = field_text(body, "reason", "reason", 0, ORDER_NOTES_MAX, true, errors);
    if (gw_fields_rejected(r, errors) || !(o = orders_op_new(r, &who, ORDERS_TRANSITION))) {
        json_decref(body);
        return;
    }
    memcpy(o->order_id, id, sizeof(o->order_id));
    contract_format_rfc3339(svc_wall_us(), requested_at, sizeof(requested_at));
    command = json_pack("{s:s, s:s, s:s, s:s, s:s, s:s, s:s, s:o}", "type", "transition",
                        "command_id", o->command_id, "order_id", o->order_id, "org_id", who.org_id,
                        "to", to, "requested_at", requested_at, "request_id", r->request_id,
                        "actor", actor_json(&who));
    if (command && reason)
        json_object_set_new(command, "reason", json_string(reason));
    o->command = command ? json_dumps(command, JSON_COMPACT) : NULL;
    o->response = json_pack("{s:s, s:s, s:s}", "order_id", o->order_id, "command_id", o->command_id,
                            "requested_status", to);
    json_decref(command);
    json_decref(body);
    if (!o->command || !o->response) {
        gw_op_fail(&o->op, 500, "internal-error", "out of memory");
        return;
    }
    {
        const char *params[2] = {who.org_id, o->order_id};

        gw_op_query(&o->op, sql_exists, 2, params, status_checked);
    }
}

/* ---- GET /orders/{id} ------------------------------------------------------------------------
 */

static void get_done(int err, PGresult *res, void *arg)
{
    gw_op_t *op = arg;
    json_t *doc;

    if (err < 0) {
        gw_op_db_failed(op, err, res);
    } else if (PQntuples(res) != 1 || PQgetisnull(res, 0, 0)) {
        gw_op_fail(op, 404, "not-found", "your organization has no order %s", op->r->params[0]);
    } else if (!(doc = json_loads(PQgetvalue(res, 0, 0), 0, NULL))) {
        gw_op_fail(op, 500, "internal-error", "the order could not be read");
    } else {
        gw_op_reply_json(op, 200, doc);
    }
    PQclear(res);
}

void gw_orders_get(gw_req_t *r)
{
    const char *id = r->params[0];
    gw_principal_t who;
    gw_op_t *op;

    if (gw_auth_require(r, GW_SCOPE_READ, AUTH_ROLE_VIEWER, &who) < 0)
        return;
    if (!gw_is_uuid(id)) {
        gw_reply_problemf(r, 404, "not-found", "no order has the id \"%.64s\"", id);
        return;
    }
    op = gw_op_new(r, &who, sizeof(*op));
    if (op) {
        const char *params[3] = {who.org_id, id, who.project_id[0] ? who.project_id : NULL};

        gw_op_query(op, sql_get, 3, params, get_done);
    }
}

/* ---- GET /orders -----------------------------------------------------------------------------
 */

typedef struct list_op {
    gw_op_t op;
    int64_t limit;
    char *params[10]; /* owned copies, for the list query after the project check */
} list_op_t;

static void list_cleanup(gw_op_t *op)
{
    list_op_t *l = (list_op_t *)op;

    for (size_t i = 0; i < sizeof(l->params) / sizeof(l->params[0]); i++)
        free(l->params[i]);
}

static void list_done(int err, PGresult *res, void *arg)
{
    list_op_t *l = arg;
    int n = err < 0 ? 0 : PQntuples(res);
    json_t *items, *key, *doc;
    char *cursor = NULL;

    if (err < 0) {
        gw_op_db_failed(&l->op, err, res);
        PQclear(res);
        return;
    }
    items = json_array();
    for (int i = 0; items && i < n && i < l->limit; i++) {
        json_t *item = json_loads(PQgetvalue(res, i, 0), 0, NULL);

        if (!item || json_array_append_new(items, item) < 0) {
            json_decref(items);
            items = NULL;
        }
    }
    /* One row more than asked for means there is a next page, starting after the last shown. */
    if (items && n > l->limit) {
        key = json_pack("[s, s]", PQgetvalue(res, (int)l->limit - 1, 1),
                        PQgetvalue(res, (int)l->limit - 1, 2));
        cursor = key ? gw_cursor_encode(key) : NULL;
        json_decref(key);
        if (!cursor) {
            json_decref(items);
            items = NULL;
        }
    }
    PQclear(res);
    doc = items ? json_pack("{s:o, s:o}", "items", items, "next_cursor",
                            cursor ? json_string(cursor) : json_null())
                : NULL;
    free(cursor);
    if (!doc)
        gw_op_fail(&l->op, 500, "internal-error", "out of memory");
    else
        gw_op_reply_json(&l->op, 200, doc);
}

/* A text filter of 1..ORDER_TEXT_MAX bytes: 0, or -EINVAL after answering 400. */
static int query_text(gw_req_t *r, const char *name, const char **ret)
{
    const char *v = gw_req_query(r, name);

    size_t chars = 0;

    *ret = v;
    for (const unsigned char *c = (const unsigned char *)v; c && *c; c++)
        chars += (*c & 0xc0) != 0x80; /* UTF-8: count lead bytes, not continuations */
    if (v && (!*v || chars > ORDER_TEXT_MAX)) {
        gw_reply_problemf(r, 400, "invalid-parameter", "%s must be 1 to %d characters", name,
                          ORDER_TEXT_MAX);
        return -EINVAL;
    }
    return 0;
}

/* A person named a project: it must be their organization's (RLS shows no other), else 404. */
static void list_project_checked(int err, PGresult *res, void *arg)
{
    list_op_t *l = arg;

    if (gw_op_gone(&l->op)) {
        PQclear(res);
        return;
    }
    if (err < 0)
        gw_op_db_failed(&l->op, err, res);
    else if (PQntuples(res) != 1)
        gw_op_fail(&l->op, 404, "not-found", "your organization has no project %s", l->params[1]);
    else
        gw_op_query(&l->op, sql_list, 10, (const char *const *)l->params, list_done);
    PQclear(res);
}

void gw_orders_list(gw_req_t *r)
{
    const char *project, *status, *customer, *sku, *cursor_ts = NULL, *cursor_id = NULL;
    char from_s[40] = "", to_s[40] = "", limit_s[24];
    int64_t limit, from_us, to_us, ignored;
    json_t *cursor = NULL;
    gw_principal_t who;
    list_op_t *l;

    if (gw_auth_require(r, GW_SCOPE_READ, AUTH_ROLE_VIEWER, &who) < 0)
        return;
    if (gw_query_uuid(r, "project_id", &project) < 0 || query_text(r, "status", &status) < 0 ||
        query_text(r, "customer_id", &customer) < 0 || query_text(r, "sku", &sku) < 0 ||
        gw_query_time(r, "from", INT64_MIN, &from_us) < 0 ||
        gw_query_time(r, "to", INT64_MIN, &to_us) < 0 ||
        gw_query_int(r, "limit", ORDER_LIST_DEFAULT, 1, ORDER_LIST_MAX, &limit) < 0 ||
        gw_query_cursor(r, 2, &cursor) < 0)
        return;
    if (who.kind == GW_PRINCIPAL_KEY) {
        if (project && strcmp(project, who.project_id) != 0) {
            json_decref(cursor);
            gw_reply_problemf(r, 404, "not-found",
                              "this API key belongs to another project than %s", project);
            return;
        }
        project = who.project_id;
    }
    if (status && !in_list(status, order_statuses)) {
        json_decref(cursor);
        gw_reply_problemf(r, 400, "invalid-parameter",
                          "status must be one of pending, pending_approval, accepted, rejected, "
                          "in_production, shipped, delivered, cancelled");
        return;
    }
    if (cursor) {
        cursor_ts = json_string_value(json_array_get(cursor, 0));
        cursor_id = json_string_value(json_array_get(cursor, 1));
        if (!cursor_ts || !cursor_id || contract_parse_rfc3339(cursor_ts, &ignored) < 0 ||
            !gw_is_uuid(cursor_id)) {
            json_decref(cursor);
            gw_reply_problemf(r, 400, "invalid-cursor",
                              "cursor is not one this endpoint handed out; start again without it");
            return;
        }
    }
    if (from_us != INT64_MIN)
        contract_format_rfc3339(from_us, from_s, sizeof(from_s));
    if (to_us != INT64_MIN)
        contract_format_rfc3339(to_us, to_s, sizeof(to_s));
    snprintf(limit_s, sizeof(limit_s), "%lld", (long long)limit + 1);
    l = gw_op_new(r, &who, sizeof(*l));
    if (l) {
        const char *params[10] = {who.org_id,
                                  project,
                                  status,
                                  customer,
                                  sku,
                                  from_s[0] ? from_s : NULL,
                                  to_s[0] ? to_s : NULL,
                                  cursor_ts,
                                  cursor_id,
                                  limit_s};

        l->limit = limit;
        l->op.cleanup = list_cleanup;
        for (size_t i = 0; i < 10; i++)
            if (params[i] && !(l->params[i] = strdup(params[i]))) {
                gw_op_fail(&l->op, 500, "internal-error", "out of memory");
                json_decref(cursor);
                return;
            }
        if (who.kind == GW_PRINCIPAL_USER && project) {
            const char *check[] = {project};

            gw_op_query(&l->op, "SELECT 1 FROM projects WHERE id = $1::uuid", 1, check,
                        list_project_checked);
        } else {
            gw_op_query(&l->op, sql_list, 10, (const char *const *)l->params, list_done);
        }
    }
    json_decref(cursor);
}
