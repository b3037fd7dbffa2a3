/* archive_line.h: one Kafka record as one NDJSON line of an archive object (docs/archive.md).
 *
 *   {"topic":"sensor.readings.v1","partition":3,"offset":1234,"timestamp":"2026-11-23T09:40:01.500Z",
 *    "timestamp_ms":1795426801500,"key":"<project>/<sensor>","headers":{"sb-org-id":"..."},
 *    "value":{...the record's JSON value, byte for byte...}}
 *
 * The value is copied as it was produced (numbers keep their spelling) after a check that it is
 * one JSON document; its line breaks, which JSON only allows as whitespace, become spaces so
 * that the line stays one line. What cannot be written that way is kept in base64 rather than
 * dropped: a value that is not JSON as "value_base64", a key or header value that is not UTF-8
 * as "key_base64" or under "headers_base64". A record without a key or timestamp has null ones.
 * No file here touches Kafka, so that tests/services/s3-archiver can test it directly.
 */
#pragma once

#include <stddef.h>
#include <stdint.h>

typedef struct archive_header {
    const char *name;
    const void *value;
    size_t len;
} archive_header_t;

typedef struct archive_record {
    const char *topic;
    int32_t partition;
    int64_t offset;
    int64_t timestamp_ms; /* < 0: none */
    const void *key;      /* NULL: none */
    size_t key_len;
    const void *value; /* NULL: none (a tombstone), written as null */
    size_t value_len;
    const archive_header_t *headers;
    size_t nheaders;
} archive_record_t;

/** A reusable output buffer. */
typedef struct archive_buf {
    char *data;
    size_t len, cap;
} archive_buf_t;

void archive_buf_free(archive_buf_t *buf);

/** Replaces @out's content with the line for @rec, ending in '\n'. 0 or -ENOMEM. */
int archive_line_format(const archive_record_t *rec, archive_buf_t *out);
