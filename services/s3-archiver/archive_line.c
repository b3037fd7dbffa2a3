/* archive_line.c: a record as an NDJSON line (see archive_line.h). */
#include "archive_line.h"

#include <errno.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <jansson.h>
#include <openssl/evp.h>

void archive_buf_free(archive_buf_t *buf)
{
    free(buf->data);
    memset(buf, 0, sizeof(*buf));
}

static int buf_reserve(archive_buf_t *b, size_t more)
{
    if (b->len + more + 1 > b->cap) {
        size_t cap = b->cap ? b->cap : 1024;
        char *p;

        while (cap < b->len + more + 1)
            cap *= 2;
        if (!(p = realloc(b->data, cap)))
            return -ENOMEM;
        b->data = p;
        b->cap = cap;
    }
    return 0;
}

static int buf_add(archive_buf_t *b, const void *data, size_t len)
{
    if (buf_reserve(b, len) < 0)
        return -ENOMEM;
    memcpy(b->data + b->len, data, len);
    b->len += len;
    b->data[b->len] = '\0';
    return 0;
}

static json_t *base64(const void *data, size_t len)
{
    char *out = malloc(4 * ((len + 2) / 3) + 1);
    json_t *s;

    if (!out)
        return NULL;
    EVP_EncodeBlock((unsigned char *)out, data, (int)len);
    s = json_string(out);
    free(out);
    return s;
}

/* Sets @name in @obj to the UTF-8 text @data, or in @fallback (created in @parent under
 * @fallback_name when needed) to its base64 when it is not UTF-8. */
static int text_or_base64(json_t *obj, const char *name, const void *data, size_t len,
                          json_t *parent, const char *fallback_name)
{
    json_t *s = json_stringn(data, len), *fb;

    if (s)
        return json_object_set_new(obj, name, s) == 0 ? 0 : -ENOMEM;
    fb = json_object_get(parent, fallback_name);
    if (!fb) {
        if (!(fb = json_object()) || json_object_set_new(parent, fallback_name, fb) < 0)
            return -ENOMEM;
    }
    s = base64(data, len);
    return s && json_object_set_new(fb, name, s) == 0 ? 0 : -ENOMEM;
}

static int envelope_build(const archive_record_t *rec, json_t *env)
{
    char ts[64];
    json_t *hdrs = NULL;
    int r = -ENOMEM;

    if (json_object_set_new(env, "topic", json_string(rec->topic)) < 0 ||
        json_object_set_new(env, "partition", json_integer(rec->partition)) < 0 ||
        json_object_set_new(env, "offset", json_integer(rec->offset)) < 0)
        return -ENOMEM;
    if (rec->timestamp_ms >= 0) {
        time_t secs = (time_t)(rec->timestamp_ms / 1000);
        struct tm tm;

        gmtime_r(&secs, &tm);
        snprintf(ts, sizeof(ts), "%04d-%02d-%02dT%02d:%02d:%02d.%03dZ", tm.tm_year + 1900,
                 tm.tm_mon + 1, tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec,
                 (int)(rec->timestamp_ms % 1000));
        if (json_object_set_new(env, "timestamp", json_string(ts)) < 0 ||
            json_object_set_new(env, "timestamp_ms", json_integer(rec->timestamp_ms)) < 0)
            return -ENOMEM;
    } else if (json_object_set_new(env, "timestamp", json_null()) < 0 ||
               json_object_set_new(env, "timestamp_ms", json_null()) < 0) {
        return -ENOMEM;
    }
    if (!rec->key) {
        if (json_object_set_new(env, "key", json_null()) < 0)
            return -ENOMEM;
    } else {
        json_t *k = json_stringn(rec->key, rec->key_len);

        if (k) {
            if (json_object_set_new(env, "key", k) < 0)
                return -ENOMEM;
        } else if (json_object_set_new(env, "key", json_null()) < 0 ||
                   json_object_set_new(env, "key_base64", base64(rec->key, rec->key_len)) < 0) {
            return -ENOMEM;
        }
    }
    if (!(hdrs = json_object()) || json_object_set_new(env, "headers", hdrs) < 0)
        return -ENOMEM;
    for (size_t i = 0; i < rec->nheaders; i++) {
        const archive_header_t *h = &rec->headers[i];

        /* A repeated header keeps its first value, as bus_record_header() reads it. */
        if (json_object_get(hdrs, h->name))
            continue;
        r = text_or_base64(hdrs, h->name, h->value ? h->value : "", h->value ? h->len : 0, env,
                           "headers_base64");
        if (r < 0)
            return r;
    }
    return 0;
}

int archive_line_format(const archive_record_t *rec, archive_buf_t *out)
{
    json_t *env = json_object(), *doc = NULL;
    json_error_t jerr;
    size_t n;
    bool is_json = false;
    int r = -ENOMEM;

    out->len = 0;
    if (!env || envelope_build(rec, env) < 0)
        goto out;
    if (rec->value) {
        doc = json_loadb(rec->value, rec->value_len, JSON_DECODE_ANY, &jerr);
        is_json = doc != NULL;
        if (!is_json &&
            json_object_set_new(env, "value_base64", base64(rec->value, rec->value_len)) < 0)
            goto out;
    }
    /* The envelope, then the value spliced in before its closing brace. */
    n = json_dumpb(env, NULL, 0, JSON_COMPACT | JSON_PRESERVE_ORDER);
    if (n == 0 || buf_reserve(out, n + rec->value_len + 16) < 0)
        goto out;
    out->len = json_dumpb(env, out->data, n, JSON_COMPACT | JSON_PRESERVE_ORDER) - 1;
    if (is_json) {
        size_t start = out->len;

        if (buf_add(out, ",\"value\":", 9) < 0 || buf_add(out, rec->value, rec->value_len) < 0)
            goto out;
        for (size_t i = start; i < out->len; i++)
            if (out->data[i] == '\n' || out->data[i] == '\r')
                out->data[i] = ' ';
    } else if (buf_add(out, ",\"value\":null", 13) < 0) {
        goto out;
    }
    r = buf_add(out, "}\n", 2);
out:
    json_decref(doc);
    json_decref(env);
    return r;
}
