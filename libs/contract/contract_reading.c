/* contract_reading.c: sensor_reading.v1, validated by hand to give exactly the verdict of
 * proto/sensor_reading.v1.json, and its canonical serialisation for Kafka. */
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "contract.h"

#define UUID_LEN 36

/* Writes "<parent>/<key>" as a JSON Pointer (RFC 6901: '~' is "~0", '/' is "~1"), cut short at
 * a UTF-8 character boundary when it does not fit. @key NULL means @parent itself. */
static void error_set(contract_error_t *err, const char *parent, const char *key, size_t key_len,
                      const char *reason)
{
    size_t n, cap = sizeof(err->pointer) - 1;

    if (!err)
        return;
    n = (size_t)snprintf(err->pointer, sizeof(err->pointer), "%s", parent);
    if (key) {
        if (n < cap)
            err->pointer[n++] = '/';
        for (size_t i = 0; i < key_len; i++) {
            const char *esc = key[i] == '~' ? "~0" : key[i] == '/' ? "~1" : NULL;
            size_t need = esc ? 2 : 1;

            if (n + need > cap) {
                while (n > 0 && ((unsigned char)err->pointer[n - 1] & 0xC0) == 0x80)
                    n--;
                if (n > 0 && ((unsigned char)err->pointer[n - 1] & 0x80))
                    n--; /* the lead byte of the character we just cut */
                break;
            }
            if (esc) {
                memcpy(err->pointer + n, esc, 2);
                n += 2;
            } else {
                err->pointer[n++] = key[i];
            }
        }
        err->pointer[n] = '\0';
    }
    snprintf(err->reason, sizeof(err->reason), "%s", reason);
}

static int fail(contract_error_t *err, const char *field, const char *reason)
{
    error_set(err, "", field, strlen(field), reason);
    return -EINVAL;
}

/* JSON Schema's maxLength counts Unicode code points; jansson holds valid UTF-8, so that is the
 * number of bytes that do not continue a multi-byte sequence. */
static size_t utf8_code_points(const char *s, size_t len)
{
    size_t n = 0;

    for (size_t i = 0; i < len; i++)
        n += ((unsigned char)s[i] & 0xC0) != 0x80;
    return n;
}

static bool is_alnum(char c)
{
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9');
}

static bool is_hex(char c)
{
    return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'f') || (c >= 'A' && c <= 'F');
}

static bool uuid_valid(const char *s, size_t len)
{
    if (len != UUID_LEN)
        return false;
    for (size_t i = 0; i < len; i++) {
        bool dash = i == 8 || i == 13 || i == 18 || i == 23;
        if (dash ? s[i] != '-' : !is_hex(s[i]))
            return false;
    }
    return true;
}

static bool sensor_id_valid(const char *s, size_t len)
{
    if (len < 1 || len > CONTRACT_SENSOR_ID_MAX || !is_alnum(s[0]))
        return false;
    for (size_t i = 1; i < len; i++)
        if (!is_alnum(s[i]) && !strchr("._:-", s[i]))
            return false;
    return true;
}

static bool unit_valid(const char *s, size_t len)
{
    if (len < 1 || len > CONTRACT_UNIT_MAX)
        return false;
    for (size_t i = 0; i < len; i++)
        if (s[i] < '!' || s[i] > '~')
            return false;
    return true;
}

static bool tag_key_valid(const char *s, size_t len)
{
    if (len < 1 || len > CONTRACT_TAG_KEY_MAX || s[0] < 'a' || s[0] > 'z')
        return false;
    for (size_t i = 1; i < len; i++)
        if (!(s[i] >= 'a' && s[i] <= 'z') && !(s[i] >= '0' && s[i] <= '9') && s[i] != '_')
            return false;
    return true;
}

static bool tag_value_valid(const char *s, size_t len)
{
    for (size_t i = 0; i < len; i++)
        if ((unsigned char)s[i] < 0x20 || s[i] == 0x7f)
            return false;
    return utf8_code_points(s, len) <= CONTRACT_TAG_VALUE_MAX;
}

static int tags_validate(json_t *tags, contract_error_t *err)
{
    const char *key;
    size_t key_len;
    json_t *val;

    if (!json_is_object(tags))
        return fail(err, "tags", "must be an object");
    if (json_object_size(tags) > CONTRACT_TAGS_MAX)
        return fail(err, "tags", "must have at most 16 tags");
    json_object_keylen_foreach(tags, key, key_len, val)
    {
        if (!tag_key_valid(key, key_len)) {
            error_set(err, "/tags", key, key_len,
                      "tag names must be 1-32 characters [a-z0-9_] starting with a letter a-z");
            return -EINVAL;
        }
        if (!json_is_string(val) ||
            !tag_value_valid(json_string_value(val), json_string_length(val))) {
            error_set(err, "/tags", key, key_len,
                      "must be a string of at most 64 characters without control characters");
            return -EINVAL;
        }
    }
    return 0;
}

int contract_reading_validate(const json_t *doc, contract_reading_t *ret_reading,
                              contract_error_t *ret_error)
{
    static const char *const fields[] = {"id", "sensor_id", "ts", "value", "unit", "tags"};
    contract_reading_t r = {0};
    json_t *obj = (json_t *)doc; /* jansson's getters are not const-correct; nothing is changed */
    json_t *v;
    const char *key;
    size_t key_len, i;

    if (!json_is_object(obj)) {
        error_set(ret_error, "", NULL, 0, "a reading must be a JSON object");
        return -EINVAL;
    }
    json_object_keylen_foreach(obj, key, key_len, v)
    {
        for (i = 0; i < sizeof(fields) / sizeof(fields[0]); i++)
            if (strlen(fields[i]) == key_len && memcmp(fields[i], key, key_len) == 0)
                break;
        if (i == sizeof(fields) / sizeof(fields[0])) {
            error_set(ret_error, "", key, key_len,
                      "unknown field: a reading has only id, sensor_id, ts, value, unit and tags");
            return -EINVAL;
        }
    }

    v = json_object_get(obj, "id");
    if (v) {
        const char *s = json_string_value(v);

        if (!json_is_string(v) || !uuid_valid(s, json_string_length(v)))
            return fail(ret_error, "id",
                        "must be a UUID such as 0b5cbf0e-7d43-4c57-9f1e-58d4d9f1c2aa");
        for (i = 0; i < UUID_LEN; i++)
            r.id[i] = s[i] >= 'A' && s[i] <= 'F' ? (char)(s[i] - 'A' + 'a') : s[i];
        r.has_id = true;
    }

    v = json_object_get(obj, "sensor_id");
    if (!v)
        return fail(ret_error, "sensor_id", "is required");
    if (!json_is_string(v) || !sensor_id_valid(json_string_value(v), json_string_length(v)))
        return fail(ret_error, "sensor_id",
                    "must be a string of 1-64 characters [A-Za-z0-9._:-] starting with a letter or "
                    "digit");
    memcpy(r.sensor_id, json_string_value(v), json_string_length(v) + 1);

    v = json_object_get(obj, "ts");
    if (v) {
        /* An embedded NUL would hide the rest of the string from the parser. */
        if (!json_is_string(v) || strlen(json_string_value(v)) != json_string_length(v) ||
            contract_parse_rfc3339(json_string_value(v), &r.ts_us) < 0)
            return fail(ret_error, "ts",
                        "must be an RFC 3339 date-time in the years 2000-2099, such as "
                        "2026-11-23T09:40:01.5Z or 2026-11-23T10:40:01+01:00");
        r.has_ts = true;
    }

    v = json_object_get(obj, "value");
    if (!v)
        return fail(ret_error, "value", "is required");
    if (!json_is_number(v) || !isfinite(json_number_value(v)))
        return fail(ret_error, "value", "must be a number");
    r.value = json_number_value(v);

    v = json_object_get(obj, "unit");
    if (v) {
        if (!json_is_string(v) || !unit_valid(json_string_value(v), json_string_length(v)))
            return fail(ret_error, "unit",
                        "must be 1-16 printable ASCII characters without spaces, such as Cel or "
                        "kPa");
        memcpy(r.unit, json_string_value(v), json_string_length(v) + 1);
        r.has_unit = true;
    }

    v = json_object_get(obj, "tags");
    if (v) {
        if (tags_validate(v, ret_error) < 0)
            return -EINVAL;
        r.tags = v;
    }

    if (ret_reading)
        *ret_reading = r;
    return 0;
}

static int cmp_str(const void *a, const void *b)
{
    return strcmp(*(const char *const *)a, *(const char *const *)b);
}

/* The fewest significant digits that still read back as exactly @v: 21.4 rather than
 * 21.399999999999999, without losing a bit. */
static int shortest_precision(double v)
{
    char buf[32];

    for (int p = 1; p < 17; p++) {
        snprintf(buf, sizeof(buf), "%.*g", p, v);
        if (strtod(buf, NULL) == v)
            return p;
    }
    return 17;
}

char *contract_reading_dump(const contract_reading_t *reading)
{
    json_t *doc = NULL, *tags = NULL;
    const char **keys = NULL;
    char ts[40], *out = NULL;

    doc = json_object();
    if (!doc)
        goto fail;
    if (reading->has_id && json_object_set_new(doc, "id", json_string(reading->id)) < 0)
        goto fail;
    if (json_object_set_new(doc, "sensor_id", json_string(reading->sensor_id)) < 0)
        goto fail;
    if (reading->has_ts) {
        contract_format_rfc3339(reading->ts_us, ts, sizeof(ts));
        if (json_object_set_new(doc, "ts", json_string(ts)) < 0)
            goto fail;
    }
    if (json_object_set_new(doc, "value", json_real(reading->value)) < 0)
        goto fail;
    if (reading->has_unit && json_object_set_new(doc, "unit", json_string(reading->unit)) < 0)
        goto fail;

    if (reading->tags && json_object_size(reading->tags) > 0) {
        size_t n = 0;
        const char *key;
        json_t *val;

        /* Sorted tag names make the same reading always the same bytes. */
        keys = malloc(json_object_size(reading->tags) * sizeof(*keys));
        tags = json_object();
        if (!keys || !tags)
            goto fail;
        json_object_foreach(reading->tags, key, val) keys[n++] = key;
        qsort(keys, n, sizeof(*keys), cmp_str);
        for (size_t i = 0; i < n; i++)
            if (json_object_set(tags, keys[i], json_object_get(reading->tags, keys[i])) < 0)
                goto fail;
        if (json_object_set_new(doc, "tags", tags) < 0) {
            tags = NULL; /* set_new consumed it even on failure */
            goto fail;
        }
        tags = NULL;
    }

    out = json_dumps(doc, JSON_COMPACT | JSON_REAL_PRECISION(shortest_precision(reading->value)));
fail:
    free(keys);
    json_decref(tags);
    json_decref(doc);
    return out;
}
