/* ingest_row.c: record -> row conversion and its COPY / INSERT forms. */
#include "ingest_row.h"

#include <ctype.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "db.h"

const char ingest_columns[] = "org_id, project_id, reading_id, sensor_id, ts, value, unit, tags, "
                              "request_id, kafka_partition, kafka_offset";

/* Copies a header holding a UUID, lower-cased; false unless it is exactly 8-4-4-4-12 hex. */
static bool ingest_uuid_copy(const void *v, size_t len, char out[37])
{
    const char *s = v;
    if (len != 36)
        return false;
    for (size_t i = 0; i < 36; i++) {
        bool dash = i == 8 || i == 13 || i == 18 || i == 23;
        if (dash ? s[i] != '-' : !isxdigit((unsigned char)s[i]))
            return false;
        out[i] = (char)tolower((unsigned char)s[i]);
    }
    out[36] = '\0';
    return true;
}

static int ingest_header_uuid(const char *name, const void *v, size_t len, char out[37],
                              char *reason, size_t reason_size)
{
    if (!v) {
        snprintf(reason, reason_size, "missing header %s", name);
        return -EINVAL;
    }
    if (!ingest_uuid_copy(v, len, out)) {
        snprintf(reason, reason_size, "header %s is not a UUID", name);
        return -EINVAL;
    }
    return 0;
}

int ingest_row_parse(const ingest_input_t *in, ingest_row_t *ret_row, char *reason,
                     size_t reason_size)
{
    ingest_row_t row = {.partition = in->partition, .offset = in->offset};
    json_t *doc = NULL;
    int r = -EINVAL;

    if (ingest_header_uuid("sb-org-id", in->org_id, in->org_id_len, row.org_id, reason,
                           reason_size) < 0 ||
        ingest_header_uuid("sb-project-id", in->project_id, in->project_id_len, row.project_id,
                           reason, reason_size) < 0)
        goto fail;

    if (!in->value || in->value_len == 0) {
        snprintf(reason, reason_size, "empty record value");
        goto fail;
    }
    json_error_t jerr;
    doc = json_loadb(in->value, in->value_len, 0, &jerr);
    if (!doc) {
        snprintf(reason, reason_size, "invalid JSON at line %d column %d: %s", jerr.line,
                 jerr.column, jerr.text);
        goto fail;
    }

    contract_reading_t reading;
    contract_error_t cerr;
    if (contract_reading_validate(doc, &reading, &cerr) < 0) {
        snprintf(reason, reason_size, "%s: %s: %s", CONTRACT_READING_V1,
                 cerr.pointer[0] ? cerr.pointer : "/", cerr.reason);
        goto fail;
    }
    /* The gateway always fills id and ts; a record without them did not come through it. */
    if (!reading.has_id || !reading.has_ts) {
        snprintf(reason, reason_size, "reading has no %s (records must come from the gateway)",
                 reading.has_id ? "ts" : "id");
        goto fail;
    }

    memcpy(row.reading_id, reading.id, sizeof(row.reading_id));
    snprintf(row.sensor_id, sizeof(row.sensor_id), "%s", reading.sensor_id);
    row.ts_us = reading.ts_us;
    row.value = reading.value;
    row.has_unit = reading.has_unit;
    if (reading.has_unit)
        snprintf(row.unit, sizeof(row.unit), "%s", reading.unit);
    if (reading.tags) {
        row.tags_json = json_dumps(reading.tags, JSON_COMPACT | JSON_SORT_KEYS);
        if (!row.tags_json) {
            r = -ENOMEM;
            snprintf(reason, reason_size, "out of memory");
            goto fail;
        }
    }

    /* The request id is only for tracing: keep it when it is short printable ASCII, which is
     * what the gateway sends, rather than reject a reading over it. */
    if (in->request_id && in->request_id_len > 0 && in->request_id_len <= INGEST_REQUEST_ID_MAX) {
        const char *s = in->request_id;
        bool ok = true;
        for (size_t i = 0; i < in->request_id_len && ok; i++)
            ok = s[i] > 0x20 && s[i] < 0x7f;
        if (ok) {
            memcpy(row.request_id, s, in->request_id_len);
            row.request_id[in->request_id_len] = '\0';
            row.has_request_id = true;
        }
    }

    json_decref(doc);
    *ret_row = row;
    return 0;

fail:
    json_decref(doc);
    ingest_row_clear(&row);
    return r;
}

void ingest_row_clear(ingest_row_t *row)
{
    free(row->tags_json);
    row->tags_json = NULL;
}

static int ingest_buf_reserve(ingest_buf_t *buf, size_t extra)
{
    if (buf->cap - buf->len >= extra)
        return 0;
    size_t cap = buf->cap ? buf->cap : 4096;
    while (cap - buf->len < extra)
        cap *= 2;
    char *data = realloc(buf->data, cap);
    if (!data)
        return -ENOMEM;
    buf->data = data;
    buf->cap = cap;
    return 0;
}

void ingest_buf_free(ingest_buf_t *buf)
{
    free(buf->data);
    *buf = (ingest_buf_t){0};
}

/* Appends one field (escaped, or \N for NULL) and its separator. */
static int ingest_buf_field(ingest_buf_t *buf, const char *s, char sep)
{
    size_t len = s ? strlen(s) : 0;
    if (ingest_buf_reserve(buf, 2 * len + 3) < 0)
        return -ENOMEM;
    if (s) {
        int n = db_copy_escape(buf->data + buf->len, buf->cap - buf->len, s, len);
        if (n < 0)
            return n;
        buf->len += (size_t)n;
    } else {
        memcpy(buf->data + buf->len, "\\N", 2);
        buf->len += 2;
    }
    buf->data[buf->len++] = sep;
    return 0;
}

void ingest_row_params(const ingest_row_t *row, ingest_params_scratch_t *scratch,
                       const char *ret_params[INGEST_NCOLS])
{
    contract_format_rfc3339(row->ts_us, scratch->ts, sizeof(scratch->ts));
    snprintf(scratch->value, sizeof(scratch->value), "%.17g", row->value);
    snprintf(scratch->partition, sizeof(scratch->partition), "%d", (int)row->partition);
    snprintf(scratch->offset, sizeof(scratch->offset), "%lld", (long long)row->offset);

    const char *p[INGEST_NCOLS] = {
        row->org_id,
        row->project_id,
        row->reading_id,
        row->sensor_id,
        scratch->ts,
        scratch->value,
        row->has_unit ? row->unit : NULL,
        row->tags_json,
        row->has_request_id ? row->request_id : NULL,
        scratch->partition,
        scratch->offset,
    };
    memcpy(ret_params, p, sizeof(p));
}

int ingest_row_copy_append(const ingest_row_t *row, ingest_buf_t *buf)
{
    ingest_params_scratch_t scratch;
    const char *p[INGEST_NCOLS];
    ingest_row_params(row, &scratch, p);
    for (size_t i = 0; i < INGEST_NCOLS; i++) {
        int r = ingest_buf_field(buf, p[i], i + 1 < INGEST_NCOLS ? '\t' : '\n');
        if (r < 0)
            return r;
    }
    return 0;
}

int64_t ingest_row_month(const ingest_row_t *row)
{
    /* Floor division, so that instants before 1970 land in the right month too. */
    int64_t secs = row->ts_us / 1000000 - (row->ts_us % 1000000 < 0);
    time_t t = (time_t)secs;
    struct tm tm;
    gmtime_r(&t, &tm);
    return ((int64_t)tm.tm_year - 70) * 12 + tm.tm_mon;
}
