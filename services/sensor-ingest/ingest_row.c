/* ingest_row.c: record -> row conversion and its COPY / INSERT forms. */
#include "ingest_row.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "db.h"

const char ingest_columns[] = "org_id, project_id, reading_id, sensor_id, ts, value, unit, tags, "
                              "request_id, kafka_partition, kafka_offset";

int ingest_row_parse(const ingest_input_t *in, ingest_row_t *ret_row, char *reason,
                     size_t reason_size)
{
    ingest_row_t row = {.partition = in->partition, .offset = in->offset};
    contract_reading_record_t rec;
    const contract_record_in_t cin = {
        .value = in->value,
        .value_len = in->value_len,
        .org_id = in->org_id,
        .org_id_len = in->org_id_len,
        .project_id = in->project_id,
        .project_id_len = in->project_id_len,
        .request_id = in->request_id,
        .request_id_len = in->request_id_len,
    };
    int r = contract_reading_record_decode(&cin, &rec, reason, reason_size);

    if (r < 0)
        return r;
    memcpy(row.org_id, rec.org_id, sizeof(row.org_id));
    memcpy(row.project_id, rec.project_id, sizeof(row.project_id));
    memcpy(row.reading_id, rec.reading.id, sizeof(row.reading_id));
    snprintf(row.sensor_id, sizeof(row.sensor_id), "%s", rec.reading.sensor_id);
    row.ts_us = rec.reading.ts_us;
    row.value = rec.reading.value;
    row.has_unit = rec.reading.has_unit;
    if (rec.reading.has_unit)
        snprintf(row.unit, sizeof(row.unit), "%s", rec.reading.unit);
    if (rec.reading.tags) {
        row.tags_json = json_dumps(rec.reading.tags, JSON_COMPACT | JSON_SORT_KEYS);
        if (!row.tags_json) {
            snprintf(reason, reason_size, "out of memory");
            contract_reading_record_clear(&rec);
            return -ENOMEM;
        }
    }
    row.has_request_id = rec.request_id[0] != '\0';
    memcpy(row.request_id, rec.request_id, sizeof(row.request_id));
    contract_reading_record_clear(&rec);
    *ret_row = row;
    return 0;
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
