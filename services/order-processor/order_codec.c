/* order_codec.c: see order_codec.h. */
#include "order_codec.h"

#include <errno.h>
#include <inttypes.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/evp.h>

#include "contract.h"

/* Integers above 2^53 are not exact in the double jansson decodes them to. */
#define ORDER_INT_EXACT 9007199254740992.0

/* Characters (code points) of a valid UTF-8 string, and whether it holds a control character. */
static size_t utf8_chars(const char *s, bool *ret_control)
{
    size_t n = 0;
    *ret_control = false;
    for (const unsigned char *p = (const unsigned char *)s; *p; p++) {
        if ((*p & 0xc0) != 0x80)
            n++;
        if (*p < 0x20 || *p == 0x7f)
            *ret_control = true;
    }
    return n;
}

/* The decoder's error: the field and what is wrong with it. */
#define FAIL(...)                                   \
    do {                                            \
        snprintf(reason, reason_size, __VA_ARGS__); \
        return -EINVAL;                             \
    } while (0)

static int get_uuid(json_t *obj, const char *key, const char *where, char out[37], char *reason,
                    size_t reason_size)
{
    json_t *v = json_object_get(obj, key);
    if (!v)
        FAIL("missing %s%s", where, key);
    if (!json_is_string(v) || !contract_uuid_copy(json_string_value(v), json_string_length(v), out))
        FAIL("%s%s must be a UUID", where, key);
    return 0;
}

/* A string member of 1..@max characters; with @control false, no control character. */
static int get_text(json_t *obj, const char *key, const char *where, size_t max, bool optional,
                    const char **ret, char *reason, size_t reason_size)
{
    json_t *v = json_object_get(obj, key);
    bool control;

    *ret = NULL;
    if (!v || (optional && json_is_null(v))) {
        if (optional)
            return 0;
        FAIL("missing %s%s", where, key);
    }
    if (!json_is_string(v))
        FAIL("%s%s must be a string", where, key);
    size_t n = utf8_chars(json_string_value(v), &control);
    if (optional ? n > max : (n < 1 || n > max || control))
        FAIL("%s%s must be %s%zu characters%s", where, key, optional ? "at most " : "1-", max,
             optional ? "" : " without control characters");
    *ret = json_string_value(v);
    return 0;
}

static int decode_create(order_command_t *c, char *reason, size_t reason_size)
{
    static const char *const shipping_required[] = {"name", "line1", "city", "postal_code",
                                                    "country"};
    json_t *order = json_object_get(c->doc, "order");
    const char *ignored;
    int r;

    if (!order)
        FAIL("missing order");
    if (!json_is_object(order))
        FAIL("order must be an object");
    if ((r = get_text(order, "customer_id", "order.", ORDER_TEXT_MAX, false, &c->customer_id,
                      reason, reason_size)) < 0 ||
        (r = get_text(order, "sku", "order.", ORDER_TEXT_MAX, false, &c->sku, reason,
                      reason_size)) < 0 ||
        (r = get_text(order, "notes", "order.", ORDER_NOTES_MAX, true, &c->notes, reason,
                      reason_size)) < 0)
        return r;

    json_t *q = json_object_get(order, "quantity");
    if (!q)
        FAIL("missing order.quantity");
    double d = json_number_value(q);
    if (!json_is_number(q) || d != floor(d) || fabs(d) > ORDER_INT_EXACT)
        FAIL("order.quantity must be an integer");
    c->quantity = (int64_t)d;

    c->shipping = json_object_get(order, "shipping");
    if (!c->shipping)
        FAIL("missing order.shipping");
    if (!json_is_object(c->shipping))
        FAIL("order.shipping must be an object");
    for (size_t i = 0; i < sizeof(shipping_required) / sizeof(shipping_required[0]); i++)
        if ((r = get_text(c->shipping, shipping_required[i], "order.shipping.", 200, false,
                          &ignored, reason, reason_size)) < 0)
            return r;
    return 0;
}

static int decode_transition(order_command_t *c, char *reason, size_t reason_size)
{
    json_t *to = json_object_get(c->doc, "to");
    int r;

    if (!to)
        FAIL("missing to");
    if (!json_is_string(to) || order_status_parse(json_string_value(to), &c->to) < 0)
        FAIL("to must be an order status");
    if ((r = get_text(c->doc, "reason", "", ORDER_NOTES_MAX, true, &c->reason, reason,
                      reason_size)) < 0)
        return r;
    return 0;
}

static int decode(order_command_t *c, char *reason, size_t reason_size)
{
    json_t *doc = c->doc, *v;
    int r;

    if (!json_is_object(doc))
        FAIL("the command must be a JSON object");
    v = json_object_get(doc, "type");
    if (!v)
        FAIL("missing type");
    if (json_is_string(v) && !strcmp(json_string_value(v), "create"))
        c->type = ORDER_CMD_CREATE;
    else if (json_is_string(v) && !strcmp(json_string_value(v), "transition"))
        c->type = ORDER_CMD_TRANSITION;
    else
        FAIL("type must be \"create\" or \"transition\"");

    if ((r = get_uuid(doc, "command_id", "", c->command_id, reason, reason_size)) < 0 ||
        (r = get_uuid(doc, "order_id", "", c->order_id, reason, reason_size)) < 0 ||
        (r = get_uuid(doc, "org_id", "", c->org_id, reason, reason_size)) < 0)
        return r;
    v = json_object_get(doc, "project_id");
    if (v && !json_is_null(v) &&
        (r = get_uuid(doc, "project_id", "", c->project_id, reason, reason_size)) < 0)
        return r;

    v = json_object_get(doc, "requested_at");
    if (!v)
        FAIL("missing requested_at");
    if (!json_is_string(v) || contract_parse_rfc3339(json_string_value(v), &c->requested_us) < 0)
        FAIL("requested_at must be an RFC 3339 date-time");

    /* Tracing only: kept when it is short printable ASCII, never a reason to reject. */
    v = json_object_get(doc, "request_id");
    if (json_is_string(v) && json_string_length(v) <= ORDER_REQUEST_ID_MAX) {
        const char *s = json_string_value(v);
        bool ok = true;
        for (size_t i = 0; s[i] && ok; i++)
            ok = s[i] > 0x20 && s[i] < 0x7f;
        if (ok)
            snprintf(c->request_id, sizeof(c->request_id), "%s", s);
    }
    v = json_object_get(doc, "actor");
    if (v && !json_is_null(v) && !json_is_object(v))
        FAIL("actor must be an object");
    c->actor = json_is_object(v) ? v : NULL;

    return c->type == ORDER_CMD_CREATE ? decode_create(c, reason, reason_size)
                                       : decode_transition(c, reason, reason_size);
}

#undef FAIL

int order_command_decode(const void *value, size_t len, order_command_t *ret, char *reason,
                         size_t reason_size)
{
    json_error_t jerr;
    int r;

    *ret = (order_command_t){0};
    if (!value || len == 0) {
        snprintf(reason, reason_size, "empty record value");
        return -EINVAL;
    }
    ret->doc = json_loadb(value, len, CONTRACT_JSON_DECODE_FLAGS, &jerr);
    if (!ret->doc) {
        snprintf(reason, reason_size, "invalid JSON at line %d column %d: %s", jerr.line,
                 jerr.column, jerr.text);
        return -EINVAL;
    }
    if ((r = decode(ret, reason, reason_size)) < 0)
        order_command_clear(ret);
    return r;
}

void order_command_clear(order_command_t *cmd)
{
    json_decref(cmd->doc);
    *cmd = (order_command_t){0};
}

int order_event_id(const char *command_id, int64_t seq, char out[37])
{
    unsigned char buf[16 + 24], md[EVP_MAX_MD_SIZE];
    unsigned int mdlen = 0;
    char lower[37];

    if (!command_id || !contract_uuid_copy(command_id, strlen(command_id), lower))
        return -EINVAL;
    for (size_t i = 0, j = 0; i < 16; i++, j += 2) {
        if (lower[j] == '-')
            j++;
        unsigned hi = (unsigned)(lower[j] <= '9' ? lower[j] - '0' : lower[j] - 'a' + 10);
        unsigned lo =
            (unsigned)(lower[j + 1] <= '9' ? lower[j + 1] - '0' : lower[j + 1] - 'a' + 10);
        buf[i] = (unsigned char)(hi << 4 | lo);
    }
    int n = snprintf((char *)buf + 16, sizeof(buf) - 16, "%" PRId64, seq);
    if (!EVP_Digest(buf, 16 + (size_t)n, md, &mdlen, EVP_sha1(), NULL) || mdlen < 16)
        return -EIO;
    md[6] = (unsigned char)((md[6] & 0x0f) | 0x50); /* version 5 */
    md[8] = (unsigned char)((md[8] & 0x3f) | 0x80); /* RFC 4122 variant */
    snprintf(out, 37, "%02x%02x%02x%02x-%02x%02x-%02x%02x-%02x%02x-%02x%02x%02x%02x%02x%02x", md[0],
             md[1], md[2], md[3], md[4], md[5], md[6], md[7], md[8], md[9], md[10], md[11], md[12],
             md[13], md[14], md[15]);
    return 0;
}

int order_event_type_parse(const char *name, const char **ret_type)
{
    static const char *const types[] = {ORDER_EV_CREATED, ORDER_EV_STATUS_CHANGED,
                                        ORDER_EV_REJECTED, ORDER_EV_TRANSITION_REFUSED};
    for (size_t i = 0; name && i < sizeof(types) / sizeof(types[0]); i++)
        if (!strcmp(name, types[i])) {
            *ret_type = types[i];
            return 0;
        }
    return -EINVAL;
}

static json_t *string_or_null(const char *s)
{
    return s ? json_string(s) : json_null();
}

char *order_event_dump(const order_event_t *ev)
{
    json_t *doc = json_pack("{s:s, s:s, s:s, s:I, s:s, s:o, s:s, s:o, s:o, s:s, s:s}", "event_id",
                            ev->event_id, "order_id", ev->order_id, "org_id", ev->org_id, "seq",
                            (json_int_t)ev->seq, "type", ev->type, "from", string_or_null(ev->from),
                            "to", ev->to, "reason", string_or_null(ev->reason), "route",
                            string_or_null(ev->route), "command_id", ev->command_id, "at", ev->at);
    if (!doc)
        return NULL;
    char *s = json_dumps(doc, JSON_COMPACT | JSON_PRESERVE_ORDER);
    json_decref(doc);
    return s;
}

void order_event_clear(order_event_t *ev)
{
    free(ev->reason);
    free(ev->route);
    ev->reason = ev->route = NULL;
}

int order_events_push(order_events_t *list, order_event_t *ev)
{
    for (size_t i = 0; i < list->n; i++)
        if (!strcmp(list->v[i].event_id, ev->event_id)) {
            order_event_clear(ev);
            return 0;
        }
    if (list->n == list->cap) {
        size_t cap = list->cap ? 2 * list->cap : 64;
        order_event_t *v = realloc(list->v, cap * sizeof(*v));
        if (!v) {
            order_event_clear(ev);
            return -ENOMEM;
        }
        list->v = v;
        list->cap = cap;
    }
    list->v[list->n++] = *ev;
    *ev = (order_event_t){0};
    return 0;
}

void order_events_truncate(order_events_t *list, size_t n)
{
    while (list->n > n)
        order_event_clear(&list->v[--list->n]);
}

void order_events_free(order_events_t *list)
{
    order_events_truncate(list, 0);
    free(list->v);
    *list = (order_events_t){0};
}
