/* op.c: a request served across database callbacks (gw_op_t), and what every handler parses:
 * JSON bodies, query parameters and keyset cursors.
 */
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <event2/buffer.h>
#include <event2/http.h>

#include "contract.h"
#include "gateway.h"
#include "svc_log.h"

/* ---- the operation's life ------------------------------------------------------------------ */

void *gw_op_new(gw_req_t *r, const gw_principal_t *who, size_t size)
{
    gw_op_t *op = calloc(1, size < sizeof(*op) ? sizeof(*op) : size);

    if (!op) {
        gw_reply_problemf(r, 500, "internal-error", "out of memory");
        return NULL;
    }
    op->r = r;
    op->loop = r->loop;
    if (who)
        op->who = *who;
    op->loop->nwaiting++;
    return op;
}

static void op_free(gw_op_t *op)
{
    if (op->cleanup)
        op->cleanup(op);
    op->loop->nwaiting--;
    free(op);
}

void gw_op_reply_json(gw_op_t *op, int status, json_t *doc)
{
    gw_reply_json(op->r, status, doc);
    op_free(op);
}

void gw_op_reply_raw(gw_op_t *op, int status, const char *content_type, const char *body,
                     size_t len)
{
    gw_reply(op->r, status, content_type, body, len);
    op_free(op);
}

void gw_op_reply_empty(gw_op_t *op, int status)
{
    gw_reply(op->r, status, NULL, "", 0);
    op_free(op);
}

void gw_op_fail(gw_op_t *op, int status, const char *slug, const char *fmt, ...)
{
    va_list ap;

    va_start(ap, fmt);
    gw_reply_problemv(op->r, status, slug, fmt, ap);
    va_end(ap);
    op_free(op);
}

void gw_op_fail_problem(gw_op_t *op, gw_problem_t *p)
{
    gw_reply_problem(op->r, p);
    gw_problem_clear(p);
    op_free(op);
}

bool gw_op_gone(gw_op_t *op)
{
    if (op->r->evreq)
        return false;
    gw_op_fail(op, 503, "unavailable", "the client went away");
    return true;
}

void gw_op_db_failed(gw_op_t *op, int err, PGresult *res)
{
    const char *msg = res ? PQresultErrorField(res, PG_DIAG_MESSAGE_PRIMARY) : NULL;
    const char *state = res ? PQresultErrorField(res, PG_DIAG_SQLSTATE) : NULL;

    gw_req_enter(op->r);
    if (err == -EINVAL && state) {
        /* Errors that are the request's doing, not ours. */
        if (strcmp(state, "23505") == 0) {
            gw_op_fail(op, 409, "conflict", "it exists already");
            return;
        }
        if (strcmp(state, "23503") == 0) {
            gw_op_fail(op, 422, "invalid-reference", "it refers to something that does not exist");
            return;
        }
        if (strncmp(state, "22", 2) == 0 || strcmp(state, "23514") == 0) {
            gw_op_fail(op, 422, "invalid-fields", "a value cannot be stored: %s",
                       msg ? msg : "invalid data");
            return;
        }
        /* Row-level security refused a row (42501): for this organization it does not exist. */
        if (strcmp(state, "42501") == 0) {
            gw_op_fail(op, 404, "not-found", "no such resource in this organization");
            return;
        }
    }
    if (err == -EINVAL) {
        log_error("query failed: %s (SQLSTATE %s)", msg ? msg : "unknown error",
                  state ? state : "-");
        gw_op_fail(op, 500, "internal-error", "the request could not be completed");
        return;
    }
    log_warn("query failed: %s", msg ? msg : strerror(-err));
    gw_op_fail(op, 503, "unavailable", "the database is unavailable; retry shortly");
}

int gw_op_query(gw_op_t *op, const char *sql, int nparams, const char *const *params, db_pool_cb cb)
{
    int rc = op->who.org_id[0]
                 ? db_pool_query_as(op->loop->pool, op->who.org_id, sql, nparams, params, cb, op,
                                    GW_DB_TIMEOUT_MS)
                 : db_pool_query(op->loop->pool, sql, nparams, params, cb, op, GW_DB_TIMEOUT_MS);

    if (rc < 0)
        gw_op_db_failed(op, rc == -EINVAL ? -EIO : rc, NULL);
    return rc;
}

/* ---- JSON bodies ------------------------------------------------------------------------------
 */

bool gw_content_type_is(const char *ct, const char *want)
{
    size_t n = strlen(want);

    return ct && strncasecmp(ct, want, n) == 0 && (ct[n] == '\0' || ct[n] == ';' || ct[n] == ' ');
}

json_t *gw_body_object(gw_req_t *r)
{
    struct evbuffer *input = evhttp_request_get_input_buffer(r->evreq);
    const char *ct = gw_req_get_header(r, "Content-Type");
    size_t len = evbuffer_get_length(input);
    const char *body;
    json_error_t jerr;
    json_t *doc;

    if (ct && !gw_content_type_is(ct, "application/json")) {
        gw_reply_problemf(r, 415, "unsupported-media-type", "send application/json");
        return NULL;
    }
    body = len ? (const char *)evbuffer_pullup(input, -1) : "";
    doc = body ? json_loadb(body, len, CONTRACT_JSON_DECODE_FLAGS, &jerr) : NULL;
    if (!doc) {
        gw_reply_problemf(r, 400, "malformed-json", "line %d, column %d: %s", jerr.line,
                          jerr.column, jerr.text);
        return NULL;
    }
    if (!json_is_object(doc)) {
        json_decref(doc);
        gw_reply_problemf(r, 422, "invalid-body", "the body must be a JSON object");
        return NULL;
    }
    return doc;
}

void gw_field_error(json_t *errors, const char *field, const char *reason)
{
    char pointer[80];

    snprintf(pointer, sizeof(pointer), "/%s", field);
    json_array_append_new(errors, json_pack("{s:s, s:s}", "pointer", pointer, "reason", reason));
}

const char *gw_field_str(json_t *doc, const char *key, bool required, json_t *errors)
{
    json_t *v = json_object_get(doc, key);

    if (v && json_is_string(v))
        return json_string_value(v);
    if (v && !json_is_null(v))
        gw_field_error(errors, key, "must be a string");
    else if (required)
        gw_field_error(errors, key, "is required");
    return NULL;
}

bool gw_fields_rejected(gw_req_t *r, json_t *errors)
{
    gw_problem_t p = {0};
    size_t n = json_array_size(errors);

    if (n == 0) {
        json_decref(errors);
        return false;
    }
    gw_problem_set(&p, 422, "invalid-fields", "%s: %s",
                   json_string_value(json_object_get(json_array_get(errors, 0), "pointer")),
                   json_string_value(json_object_get(json_array_get(errors, 0), "reason")));
    p.errors = errors;
    gw_reply_problem(r, &p);
    gw_problem_clear(&p);
    return true;
}

bool gw_is_uuid(const char *s)
{
    if (!s || strlen(s) != 36)
        return false;
    for (int i = 0; i < 36; i++) {
        bool dash = i == 8 || i == 13 || i == 18 || i == 23;
        char c = s[i];

        if (dash ? c != '-' : !((c >= '0' && c <= '9') || (c >= 'a' && c <= 'f')))
            return false;
    }
    return true;
}

/* ---- query parameters -------------------------------------------------------------------------
 */

int gw_query_int(gw_req_t *r, const char *name, int64_t def, int64_t min, int64_t max, int64_t *ret)
{
    const char *v = gw_req_query(r, name);
    char *end;
    long long n;

    if (!v) {
        *ret = def;
        return 0;
    }
    errno = 0;
    n = strtoll(v, &end, 10);
    if (!*v || *end || errno || n < min || n > max) {
        gw_reply_problemf(r, 400, "invalid-parameter", "%s must be an integer from %lld to %lld",
                          name, (long long)min, (long long)max);
        return -EINVAL;
    }
    *ret = n;
    return 0;
}

int gw_query_time(gw_req_t *r, const char *name, int64_t def_us, int64_t *ret_us)
{
    const char *v = gw_req_query(r, name);

    if (!v) {
        *ret_us = def_us;
        return 0;
    }
    if (contract_parse_rfc3339(v, ret_us) < 0) {
        gw_reply_problemf(r, 400, "invalid-parameter",
                          "%s must be an RFC 3339 timestamp such as 2026-01-31T12:00:00Z", name);
        return -EINVAL;
    }
    return 0;
}

int gw_query_uuid(gw_req_t *r, const char *name, const char **ret)
{
    const char *v = gw_req_query(r, name);

    *ret = NULL;
    if (!v)
        return 0;
    if (!gw_is_uuid(v)) {
        gw_reply_problemf(r, 400, "invalid-parameter", "%s must be a lower-case UUID", name);
        return -EINVAL;
    }
    *ret = v;
    return 0;
}

/* ---- cursors ------------------------------------------------------------------------------------
 */

static const char b64url[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";

char *gw_cursor_encode(json_t *key)
{
    char *raw = json_dumps(key, JSON_COMPACT), *out;
    size_t n, o = 0;
    const unsigned char *s;

    if (!raw)
        return NULL;
    n = strlen(raw);
    s = (const unsigned char *)raw;
    out = malloc((n + 2) / 3 * 4 + 1);
    if (out) {
        for (size_t i = 0; i < n; i += 3) {
            uint32_t v = (uint32_t)s[i] << 16 | (i + 1 < n ? (uint32_t)s[i + 1] << 8 : 0) |
                         (i + 2 < n ? s[i + 2] : 0);

            out[o++] = b64url[v >> 18 & 63];
            out[o++] = b64url[v >> 12 & 63];
            if (i + 1 < n)
                out[o++] = b64url[v >> 6 & 63];
            if (i + 2 < n)
                out[o++] = b64url[v & 63];
        }
        out[o] = '\0';
    }
    free(raw);
    return out;
}

static int b64url_value(char c)
{
    const char *p = c ? strchr(b64url, c) : NULL;

    return p ? (int)(p - b64url) : -1;
}

int gw_query_cursor(gw_req_t *r, size_t n, json_t **ret_key)
{
    const char *v = gw_req_query(r, "cursor");
    size_t len, o = 0;
    unsigned char buf[512];
    uint32_t acc = 0;
    int bits = 0;
    json_t *key;

    *ret_key = NULL;
    if (!v)
        return 0;
    len = strlen(v);
    if (len == 0 || len > (sizeof(buf) / 3) * 4)
        goto bad;
    for (size_t i = 0; i < len; i++) {
        int d = b64url_value(v[i]);

        if (d < 0)
            goto bad;
        acc = acc << 6 | (uint32_t)d;
        bits += 6;
        if (bits >= 8) {
            bits -= 8;
            buf[o++] = (unsigned char)(acc >> bits);
        }
    }
    key = json_loadb((const char *)buf, o, CONTRACT_JSON_DECODE_FLAGS, NULL);
    if (!key || !json_is_array(key) || json_array_size(key) != n) {
        json_decref(key);
        goto bad;
    }
    *ret_key = key;
    return 0;

bad:
    gw_reply_problemf(r, 400, "invalid-cursor",
                      "cursor is not one this endpoint handed out; start again without it");
    return -EINVAL;
}
