/* s3_archive.h: the layout of the Kafka archive in S3, shared by sb-s3-archiver (which writes
 * it) and `sbctl archive verify` (which checks it). See docs/archive.md.
 *
 * An object holds consecutive records of one topic partition, as gzip'd NDJSON, under
 *   <prefix>/<topic>/dt=YYYY-MM-DD/hour=HH/<topic>+<partition>+<first offset>.json.gz
 * where the date and hour (UTC) are those of its first record's timestamp. Its metadata names
 * the offset range it covers, so that the archive can be checked without downloading it.
 */
#pragma once

#include <stddef.h>
#include <stdint.h>

#define S3_ARCHIVE_EXT          ".json.gz"
#define S3_ARCHIVE_CONTENT_TYPE "application/gzip"
#define S3_ARCHIVE_FORMAT       "ndjson-gzip-v1"

/* x-amz-meta-* names. The object covers every offset in [first-offset, last-offset]: offsets
 * in between that hold no record (transaction markers) are covered too. */
#define S3_ARCHIVE_META_FORMAT    "sb-format"
#define S3_ARCHIVE_META_TOPIC     "sb-topic"
#define S3_ARCHIVE_META_PARTITION "sb-partition"
#define S3_ARCHIVE_META_FIRST     "sb-first-offset"
#define S3_ARCHIVE_META_LAST      "sb-last-offset"
#define S3_ARCHIVE_META_RECORDS   "sb-records"

/** Longest key s3_archive_key() writes, with the terminator (prefix up to 256 bytes). */
#define S3_ARCHIVE_KEY_MAX 640

/**
 * Writes "<prefix>/<topic>/" into @buf ("<topic>/" when @prefix is NULL or empty; slashes at
 * either end of @prefix are ignored). 0, or -ENAMETOOLONG.
 */
int s3_archive_topic_prefix(const char *prefix, const char *topic, char *buf, size_t size);

/**
 * Writes the key of the object whose first record is @topic [@partition] at @first_offset with
 * timestamp @ts_ms (milliseconds since the epoch; a negative value, "no timestamp", counts as
 * 0 so that the key stays deterministic). 0, or -ENAMETOOLONG.
 */
int s3_archive_key(const char *prefix, const char *topic, int32_t partition, int64_t first_offset,
                   int64_t ts_ms, char *buf, size_t size);

/**
 * Parses an archive key: checks the layout above (any prefix) and returns its topic (into
 * @topic), partition and first offset. 0, or -EINVAL for a key that is not an archive object.
 */
int s3_archive_key_parse(const char *key, char *topic, size_t topic_size, int32_t *ret_partition,
                         int64_t *ret_first_offset);
