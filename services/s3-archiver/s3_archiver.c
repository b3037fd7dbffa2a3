/* sb-s3-archiver: sensor.readings.v1 and orders.events.v1 -> gzip NDJSON objects in S3.
 *
 * Records are buffered per topic partition, one open buffer at a time, compressed as they come.
 * A buffer is sealed when it holds flush_records records or flush_bytes bytes of NDJSON, when
 * it is flush_age_ms old (the tick: a quiet partition is archived too), when the next record
 * belongs to another hour, or when its partition is revoked. A sealed buffer becomes one object
 * (s3_archive.h names it after its first record) and a partition's offset is stored only up to
 * its oldest record not yet in an uploaded object. docs/archive.md explains why this leaves no
 * gap, across crashes, restarts and S3 outages:
 *
 * - Coverage only grows. When a buffer opens, a HEAD on its key tells whether an earlier run
 *   already uploaded an object starting at that offset (it crashed before its offsets were
 *   committed); if so, the records that object covers are skipped rather than archived again, so
 *   a restart walks forward over the objects it finds and never replaces one with a shorter one.
 * - While S3 fails, sealed buffers stay in memory and the handler refuses new batches (the
 *   runtime rewinds and retries them), so memory stays bounded, nothing is stored, nothing is
 *   lost and the consumer stays in its group; /readyz shows "s3" false until an upload succeeds.
 */
#include <errno.h>
#include <inttypes.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <zlib.h>

#include "archive_line.h"
#include "bus_daemon.h"
#include "s3.h"
#include "s3_archive.h"
#include "svc_log.h"
#include "svc_util.h"

#define HOUR_MS           3600000LL
#define OUT_CHUNK         65536
#define BACKOFF_BASE_MS   500
#define BACKOFF_MAX_MS    10000
#define MAX_HEADERS       32
#define ARCHIVER_TOPICS   "sensor.readings.v1,orders.events.v1"
#define ARCHIVER_BATCH    2000
#define ARCHIVER_BATCH_MS 500

typedef struct arch_conf {
    char *endpoint;
    char *region;
    char *bucket;
    char *access_key;
    char *secret_key;
    char *prefix;
    int64_t flush_bytes;
    int64_t flush_records;
    int64_t flush_age_ms;
} arch_conf_t;

static const svc_conf_entry_t arch_conf_table[] = {
    {SVC_CONF_STR, "endpoint", NULL, offsetof(arch_conf_t, endpoint),
     "S3 endpoint URL, path-style (http://127.0.0.1:9000), required", 0, 0, 0},
    {SVC_CONF_STR, "region", "us-east-1", offsetof(arch_conf_t, region),
     "S3 region the requests are signed for", 0, 0, 0},
    {SVC_CONF_STR, "bucket", NULL, offsetof(arch_conf_t, bucket),
     "bucket (created at start when missing), required", 0, 0, 0},
    {SVC_CONF_STR, "access_key", NULL, offsetof(arch_conf_t, access_key),
     "S3 access key id, required", 0, 0, 0},
    {SVC_CONF_STR, "secret_key", NULL, offsetof(arch_conf_t, secret_key),
     "S3 secret access key, required", SVC_CONF_SECRET, 0, 0},
    {SVC_CONF_STR, "prefix", "archive", offsetof(arch_conf_t, prefix),
     "key prefix: objects are <prefix>/<topic>/dt=YYYY-MM-DD/hour=HH/...", 0, 0, 0},
    {SVC_CONF_INT, "flush_bytes", "33554432", offsetof(arch_conf_t, flush_bytes),
     "upload a buffer once it holds this many bytes of NDJSON (before gzip)", 0, 1024, 1LL << 32},
    {SVC_CONF_INT, "flush_records", "100000", offsetof(arch_conf_t, flush_records),
     "upload a buffer once it holds this many records", 0, 1, 100000000},
    {SVC_CONF_INT, "flush_age_ms", "60000", offsetof(arch_conf_t, flush_age_ms),
     "upload a buffer this long after its first record arrived", 0, 100, 86400000},
    {SVC_CONF_END, NULL, NULL, 0, NULL, 0, 0, 0},
};

/* The records of one future object: consecutive records of one partition and one hour. */
typedef struct arch_buf {
    struct arch_buf *next;
    int64_t first, last; /* offsets */
    int64_t hour;        /* of the first record, hours since the epoch */
    size_t records, raw_bytes;
    int64_t opened_ms;
    bool sealed;
    bool checked; /* a HEAD found no object at the key when the buffer opened */
    z_stream z;
    unsigned char *out;
    size_t out_len, out_cap;
    char key[S3_ARCHIVE_KEY_MAX];
} arch_buf_t;

typedef struct arch_part {
    char *topic;
    int32_t partition;
    int64_t next;       /* offset after the last record handled; -1 before the first */
    int64_t skip_until; /* records at or below were archived by an earlier run; -1: none */
    int64_t stored;     /* last offset stored; -1: none */
    arch_buf_t *head;   /* oldest first; only the last one may be open */
    arch_buf_t *tail;
} arch_part_t;

typedef struct arch {
    bus_daemon_t *d;
    const arch_conf_t *conf;
    s3_client_t *s3;
    svc_health_t *health;
    arch_part_t **parts;
    size_t nparts;
    bool bucket_ok;
    int failures;     /* consecutive failed S3 rounds */
    int64_t retry_at; /* no S3 round before this (monotonic ms) while failing */
    uint32_t rnd;
    size_t buffered;
    archive_buf_t line;
    svc_metric_t *m_objects, *m_records, *m_bytes, *m_failures, *m_skipped, *m_buffered, *m_seconds;
} arch_t;

/* Out of memory halfway through a batch leaves buffers that cannot be trusted: stop the way a
 * crash would. Offsets are stored only after uploads, so the next run archives them again. */
static void arch_fatal(const char *what)
{
    log_error("%s: out of memory; exiting, the records will be archived after the restart", what);
    _exit(1);
}

/* ---- buffers --------------------------------------------------------------------------------- */

/* Feeds @len bytes to the buffer's gzip stream (@flush: Z_NO_FLUSH or Z_FINISH). */
static int buf_deflate(arch_buf_t *b, const void *data, size_t len, int flush)
{
    b->z.next_in = (Bytef *)data;
    b->z.avail_in = (uInt)len;
    for (;;) {
        int zr;

        if (b->out_cap - b->out_len < OUT_CHUNK / 4) {
            size_t cap = b->out_cap ? b->out_cap * 2 : OUT_CHUNK;
            unsigned char *p = realloc(b->out, cap);

            if (!p)
                return -ENOMEM;
            b->out = p;
            b->out_cap = cap;
        }
        b->z.next_out = b->out + b->out_len;
        b->z.avail_out = (uInt)(b->out_cap - b->out_len);
        zr = deflate(&b->z, flush);
        b->out_len = b->out_cap - b->z.avail_out;
        if (zr == Z_STREAM_ERROR)
            return -EIO;
        if (flush == Z_FINISH ? zr == Z_STREAM_END : b->z.avail_in == 0 && b->z.avail_out > 0)
            return 0;
    }
}

static void buf_free(arch_buf_t *b)
{
    if (!b)
        return;
    if (!b->sealed)
        deflateEnd(&b->z);
    free(b->out);
    free(b);
}

static void buf_seal(arch_buf_t *b)
{
    if (b->sealed)
        return;
    if (buf_deflate(b, NULL, 0, Z_FINISH) < 0)
        arch_fatal("sealing a buffer");
    deflateEnd(&b->z);
    b->sealed = true;
}

static void part_free(arch_t *st, arch_part_t *p)
{
    while (p->head) {
        arch_buf_t *b = p->head;

        p->head = b->next;
        st->buffered -= b->records;
        buf_free(b);
    }
    free(p->topic);
    free(p);
}

static arch_part_t *part_find(arch_t *st, const char *topic, int32_t partition, size_t *ret_index)
{
    for (size_t i = 0; i < st->nparts; i++)
        if (st->parts[i]->partition == partition && strcmp(st->parts[i]->topic, topic) == 0) {
            if (ret_index)
                *ret_index = i;
            return st->parts[i];
        }
    return NULL;
}

static arch_part_t *part_get(arch_t *st, const char *topic, int32_t partition)
{
    arch_part_t *p = part_find(st, topic, partition, NULL), **parts;

    if (p)
        return p;
    parts = realloc(st->parts, (st->nparts + 1) * sizeof(*parts));
    if (!parts || !(p = calloc(1, sizeof(*p))) || !(p->topic = strdup(topic)))
        arch_fatal("tracking a partition");
    st->parts = parts;
    p->partition = partition;
    p->next = p->skip_until = p->stored = -1;
    st->parts[st->nparts++] = p;
    return p;
}

static void part_drop(arch_t *st, const char *topic, int32_t partition)
{
    size_t i;
    arch_part_t *p = part_find(st, topic, partition, &i);

    if (!p)
        return;
    part_free(st, p);
    st->parts[i] = st->parts[--st->nparts];
}

/* ---- S3 state ----------------------------------------------------------------------------------
 */

static bool arch_s3_waiting(arch_t *st)
{
    return st->failures > 0 && svc_now_ms() < st->retry_at;
}

static void arch_s3_ok(arch_t *st)
{
    if (st->failures > 0)
        log_info("S3 answers again after %d failed rounds", st->failures);
    st->failures = 0;
    st->retry_at = 0;
    svc_health_set(st->health, "s3", true);
}

static void arch_s3_failed(arch_t *st, int r)
{
    s3_retry_t policy = {.base_ms = BACKOFF_BASE_MS, .max_ms = BACKOFF_MAX_MS};

    st->rnd = st->rnd * 1103515245u + 12345u;
    st->failures++;
    st->retry_at = svc_now_ms() + s3_retry_delay_ms(&policy, st->failures, st->rnd >> 8);
    svc_metric_inc(st->m_failures);
    svc_health_set(st->health, "s3", false);
    if (r == -ENOENT && strstr(s3_errmsg(st->s3), "NoSuchBucket"))
        st->bucket_ok = false;
    log_warn("S3: %s; nothing stored, retrying (%d failed rounds)", s3_errmsg(st->s3),
             st->failures);
}

static void arch_bucket_check(arch_t *st)
{
    int r = s3_bucket_ensure(st->s3);

    if (r < 0) {
        arch_s3_failed(st, r);
        return;
    }
    if (!st->bucket_ok)
        log_info("bucket %s is there", st->conf->bucket);
    st->bucket_ok = true;
    arch_s3_ok(st);
}

/* The last offset an existing object at @key covers, or -1 when there is none; -errno when S3
 * cannot tell. */
static int64_t arch_existing_last(arch_t *st, const char *key)
{
    s3_object_t obj;
    const char *last;
    int64_t v = -1;
    int r = s3_head(st->s3, key, &obj);

    if (r == -ENOENT)
        return -1;
    if (r < 0)
        return r;
    last = s3_object_meta(&obj, S3_ARCHIVE_META_LAST);
    if (last)
        v = strtoll(last, NULL, 10);
    s3_object_clear(&obj);
    return v; /* an object without our metadata is treated as absent, and replaced */
}

/* ---- offsets
 * ------------------------------------------------------------------------------------- */

/* Everything below the partition's oldest buffered record is in S3 (or was skipped as already
 * there): that is the offset to store. */
static void arch_store(arch_t *st, arch_part_t *p)
{
    int64_t low = p->head ? p->head->first : p->next;
    int r;

    if (low < 0 || low <= p->stored)
        return;
    r = bus_daemon_offsets_store(st->d, p->topic, p->partition, low);
    if (r == 0)
        p->stored = low;
    else if (r != -ENOENT)
        log_warn("%s [%" PRId32 "]: cannot store offset %" PRId64 ": %s", p->topic, p->partition,
                 low, strerror(-r));
}

/* ---- uploads
 * -------------------------------------------------------------------------------------- */

static int arch_upload(arch_t *st, arch_part_t *p, arch_buf_t *b)
{
    char first[24], last[24], records[24], partition[16];
    const s3_meta_t meta[] = {
        {S3_ARCHIVE_META_FORMAT, S3_ARCHIVE_FORMAT},
        {S3_ARCHIVE_META_TOPIC, p->topic},
        {S3_ARCHIVE_META_PARTITION, partition},
        {S3_ARCHIVE_META_FIRST, first},
        {S3_ARCHIVE_META_LAST, last},
        {S3_ARCHIVE_META_RECORDS, records},
    };
    int64_t t0 = svc_now_ms();
    int r;

    if (!b->checked) {
        /* Opened while S3 could not tell: an earlier run may have uploaded this key already. */
        int64_t existing = arch_existing_last(st, b->key);

        if (existing < -1)
            return (int)existing;
        if (existing >= b->last) {
            log_info("%s covers offsets up to %" PRId64 " already; not replaced", b->key, existing);
            if (existing > p->skip_until)
                p->skip_until = existing;
            return 0;
        }
    }
    snprintf(first, sizeof(first), "%" PRId64, b->first);
    snprintf(last, sizeof(last), "%" PRId64, b->last);
    snprintf(records, sizeof(records), "%zu", b->records);
    snprintf(partition, sizeof(partition), "%" PRId32, p->partition);
    r = s3_put(st->s3, b->key, b->out, b->out_len, S3_ARCHIVE_CONTENT_TYPE, meta,
               sizeof(meta) / sizeof(meta[0]));
    if (r < 0)
        return r;
    svc_metric_inc(st->m_objects);
    svc_metric_add(st->m_records, (double)b->records);
    svc_metric_add(st->m_bytes, (double)b->out_len);
    svc_metric_observe(st->m_seconds, (double)(svc_now_ms() - t0) / 1000.0);
    log_debug("uploaded %s: %zu records, offsets %" PRId64 "-%" PRId64 ", %zu bytes", b->key,
              b->records, b->first, b->last, b->out_len);
    return 0;
}

/* Uploads the sealed buffers of @p, oldest first, and stores the offsets they free. */
static int arch_upload_part(arch_t *st, arch_part_t *p)
{
    int r = 0;

    while (p->head && p->head->sealed) {
        arch_buf_t *b = p->head;

        if ((r = arch_upload(st, p, b)) < 0)
            break;
        p->head = b->next;
        if (!p->head)
            p->tail = NULL;
        st->buffered -= b->records;
        buf_free(b);
    }
    arch_store(st, p);
    return r;
}

static bool arch_pending(arch_t *st)
{
    for (size_t i = 0; i < st->nparts; i++)
        if (st->parts[i]->head && st->parts[i]->head->sealed)
            return true;
    return false;
}

/* One round over every sealed buffer; stops at the first failure (S3 is likely down). */
static int arch_upload_all(arch_t *st)
{
    int r = 0;

    if (!arch_pending(st))
        return 0;
    if (arch_s3_waiting(st))
        return -EAGAIN;
    for (size_t i = 0; i < st->nparts && r == 0; i++)
        r = arch_upload_part(st, st->parts[i]);
    if (r < 0)
        arch_s3_failed(st, r);
    else
        arch_s3_ok(st);
    svc_metric_set(st->m_buffered, (double)st->buffered);
    return r;
}

/* ---- appending records -------------------------------------------------------------------------
 */

static int64_t record_hour(int64_t ts_ms)
{
    return ts_ms < 0 ? 0 : ts_ms / HOUR_MS;
}

/* Opens a buffer for @rec, or returns NULL after marking the records an existing object covers
 * as skipped. */
static arch_buf_t *arch_buf_open(arch_t *st, arch_part_t *p, const bus_record_t *rec)
{
    arch_buf_t *b = calloc(1, sizeof(*b));

    if (!b)
        arch_fatal("opening a buffer");
    if (s3_archive_key(st->conf->prefix, rec->topic, rec->partition, rec->offset, rec->timestamp_ms,
                       b->key, sizeof(b->key)) < 0) {
        log_error("%s [%" PRId32 "]: archive key too long (shorten the prefix)", rec->topic,
                  rec->partition);
        _exit(1);
    }
    if (!arch_s3_waiting(st)) {
        int64_t existing = arch_existing_last(st, b->key);

        if (existing >= rec->offset) {
            log_info("%s exists (offsets %" PRId64 "-%" PRId64 "): skipping what it covers", b->key,
                     rec->offset, existing);
            p->skip_until = existing;
            free(b);
            return NULL;
        }
        if (existing < -1)
            arch_s3_failed(st, (int)existing);
        else
            b->checked = true;
    }
    if (deflateInit2(&b->z, Z_DEFAULT_COMPRESSION, Z_DEFLATED, 15 + 16, 8, Z_DEFAULT_STRATEGY) !=
        Z_OK)
        arch_fatal("starting gzip");
    b->first = rec->offset;
    b->hour = record_hour(rec->timestamp_ms);
    b->opened_ms = svc_now_ms();
    if (p->tail)
        p->tail->next = b;
    else
        p->head = b;
    p->tail = b;
    return b;
}

static void arch_append(arch_t *st, const bus_record_t *rec)
{
    arch_part_t *p = part_get(st, rec->topic, rec->partition);
    archive_header_t hdrs[MAX_HEADERS];
    rd_kafka_headers_t *kh = NULL;
    size_t nhdrs = 0;
    arch_buf_t *b = p->tail && !p->tail->sealed ? p->tail : NULL;

    /* Delivered again after a retried batch: it is in a buffer already. */
    if (p->next >= 0 && rec->offset < p->next)
        return;
    p->next = rec->offset + 1;
    if (rec->offset <= p->skip_until) {
        svc_metric_inc(st->m_skipped);
        return;
    }
    if (b && b->hour != record_hour(rec->timestamp_ms)) {
        buf_seal(b);
        b = NULL;
    }
    if (!b && !(b = arch_buf_open(st, p, rec))) {
        svc_metric_inc(st->m_skipped);
        return;
    }

    if (rec->rkm && rd_kafka_message_headers((rd_kafka_message_t *)rec->rkm, &kh) == 0) {
        const char *name;
        const void *value;
        size_t len;

        for (size_t i = 0;
             nhdrs < MAX_HEADERS && rd_kafka_header_get_all(kh, i, &name, &value, &len) == 0; i++)
            hdrs[nhdrs++] = (archive_header_t){name, value, len};
    }
    if (archive_line_format(&(archive_record_t){.topic = rec->topic,
                                                .partition = rec->partition,
                                                .offset = rec->offset,
                                                .timestamp_ms = rec->timestamp_ms,
                                                .key = rec->key,
                                                .key_len = rec->key_len,
                                                .value = rec->value,
                                                .value_len = rec->value_len,
                                                .headers = hdrs,
                                                .nheaders = nhdrs},
                            &st->line) < 0 ||
        buf_deflate(b, st->line.data, st->line.len, Z_NO_FLUSH) < 0)
        arch_fatal("archiving a record");
    b->last = rec->offset;
    b->records++;
    b->raw_bytes += st->line.len;
    st->buffered++;
    if (b->records >= (size_t)st->conf->flush_records ||
        b->raw_bytes >= (size_t)st->conf->flush_bytes)
        buf_seal(b);
}

/* ---- the daemon's callbacks ---------------------------------------------------------------------
 */

static int arch_handle_batch(void *state, bus_record_t *recs, size_t n)
{
    arch_t *st = state;
    int r;

    /* Room first: while sealed buffers cannot be uploaded the batch is refused whole (the
     * runtime rewinds it and retries after a backoff), so memory stays bounded. */
    if ((r = arch_upload_all(st)) < 0)
        return -EAGAIN;
    for (size_t i = 0; i < n; i++)
        arch_append(st, &recs[i]);
    (void)arch_upload_all(st); /* what this batch filled; a failure is retried later */
    for (size_t i = 0; i < st->nparts; i++)
        arch_store(st, st->parts[i]);
    svc_metric_set(st->m_buffered, (double)st->buffered);
    return 0;
}

static void arch_tick(void *state)
{
    arch_t *st = state;
    int64_t now = svc_now_ms();

    if (!st->bucket_ok && !arch_s3_waiting(st))
        arch_bucket_check(st);
    for (size_t i = 0; i < st->nparts; i++) {
        arch_buf_t *b = st->parts[i]->tail;

        if (b && !b->sealed && now - b->opened_ms >= st->conf->flush_age_ms)
            buf_seal(b);
    }
    if (arch_pending(st))
        (void)arch_upload_all(st);
    else if (st->failures > 0 && st->bucket_ok && !arch_s3_waiting(st))
        arch_bucket_check(st); /* nothing to upload: probe, so /readyz recovers */
}

/* The partitions are leaving: upload what they hold (one round, no waiting), so that the commit
 * that follows covers it. What cannot be uploaded is read again by the next owner. */
static void arch_revoke_flush(void *state, const rd_kafka_topic_partition_list_t *parts)
{
    arch_t *st = state;
    bool failed = false;

    for (int i = 0; i < parts->cnt && !failed; i++) {
        arch_part_t *p = part_find(st, parts->elems[i].topic, parts->elems[i].partition, NULL);
        int r;

        if (!p)
            continue;
        if (p->tail)
            buf_seal(p->tail);
        if ((r = arch_upload_part(st, p)) < 0) {
            log_warn("%s [%" PRId32 "] revoked with records not uploaded (the next owner "
                     "archives them): %s",
                     p->topic, p->partition, s3_errmsg(st->s3));
            arch_s3_failed(st, r);
            failed = true;
        }
    }
}

static void arch_on_revoke(void *state, const rd_kafka_topic_partition_list_t *parts)
{
    arch_t *st = state;

    for (int i = 0; i < parts->cnt; i++)
        part_drop(st, parts->elems[i].topic, parts->elems[i].partition);
    svc_metric_set(st->m_buffered, (double)st->buffered);
}

/* The eager protocol assigns everything anew: a partition starts over from its committed
 * offset, so whatever was kept from before (after an assignment was lost without a revocation)
 * is dropped. */
static void arch_on_assign(void *state, const rd_kafka_topic_partition_list_t *parts)
{
    arch_t *st = state;

    (void)parts;
    while (st->nparts > 0)
        part_free(st, st->parts[--st->nparts]);
    svc_metric_set(st->m_buffered, (double)st->buffered);
}

static void arch_fini(void *state)
{
    arch_t *st = state;

    if (!st)
        return;
    while (st->nparts > 0)
        part_free(st, st->parts[--st->nparts]);
    free(st->parts);
    archive_buf_free(&st->line);
    s3_client_free(st->s3);
    free(st);
}

static int arch_init(bus_daemon_t *d, void *conf, void **ret_state)
{
    const arch_conf_t *c = conf;
    svc_metrics_t *m = bus_daemon_metrics(d);
    char errbuf[512];
    arch_t *st;
    int r;

    if (!c->endpoint || !c->bucket || !c->access_key || !c->secret_key || !*c->endpoint ||
        !*c->bucket || !*c->access_key || !*c->secret_key) {
        log_error("endpoint, bucket, access_key and secret_key are required "
                  "(SB_S3_ARCHIVER_ENDPOINT, _BUCKET, _ACCESS_KEY, _SECRET_KEY or "
                  "_SECRET_KEY_FILE)");
        return -EINVAL;
    }
    if (!(st = calloc(1, sizeof(*st))))
        return -ENOMEM;
    st->d = d;
    st->conf = c;
    st->health = bus_daemon_health(d);
    st->rnd = (uint32_t)svc_now_ms() ^ (uint32_t)getpid();
    r = s3_client_new(&(s3_conf_t){.endpoint = c->endpoint,
                                   .region = c->region,
                                   .bucket = c->bucket,
                                   .access_key = c->access_key,
                                   .secret_key = c->secret_key,
                                   .retry = {.max_attempts = 3}},
                      &st->s3, errbuf, sizeof(errbuf));
    if (r < 0) {
        log_error("%s", errbuf);
        goto fail;
    }
    st->m_objects = svc_metrics_counter(m, "sb_archiver_objects_total", "Objects uploaded", NULL);
    st->m_records =
        svc_metrics_counter(m, "sb_archiver_records_total", "Records in uploaded objects", NULL);
    st->m_bytes =
        svc_metrics_counter(m, "sb_archiver_bytes_total", "Bytes uploaded (gzip'd NDJSON)", NULL);
    st->m_failures = svc_metrics_counter(m, "sb_archiver_s3_failures_total",
                                         "S3 rounds that failed (each retried later)", NULL);
    st->m_skipped = svc_metrics_counter(
        m, "sb_archiver_records_skipped_total",
        "Records found already archived by an earlier run (after a crash)", NULL);
    st->m_buffered = svc_metrics_gauge(m, "sb_archiver_buffered_records",
                                       "Records held in memory, not yet uploaded", NULL);
    st->m_seconds =
        svc_metrics_histogram(m, "sb_archiver_upload_seconds", "Time to upload one object", NULL,
                              svc_metrics_latency_bounds, svc_metrics_latency_nbounds);
    if (!st->m_objects || !st->m_records || !st->m_bytes || !st->m_failures || !st->m_skipped ||
        !st->m_buffered || !st->m_seconds) {
        r = -ENOMEM;
        goto fail;
    }
    svc_health_set(st->health, "s3", false);
    arch_bucket_check(st);
    if (!st->bucket_ok)
        log_warn("S3 is not usable yet, will retry: %s", s3_errmsg(st->s3));
    log_info("archiving to %s bucket %s under %s/ (flush at %" PRId64 " records, %" PRId64
             " bytes or %" PRId64 " ms)",
             c->endpoint, c->bucket, c->prefix, c->flush_records, c->flush_bytes, c->flush_age_ms);
    *ret_state = st;
    return 0;
fail:
    arch_fini(st);
    return r;
}

static const bus_daemon_desc_t arch_desc = {
    .name = "s3-archiver",
    .summary = "archives sensor.readings.v1 and orders.events.v1 to S3 as gzip'd NDJSON",
    .topics = ARCHIVER_TOPICS,
    .conf = arch_conf_table,
    .conf_size = sizeof(arch_conf_t),
    .batch_max = ARCHIVER_BATCH,
    .batch_ms = ARCHIVER_BATCH_MS,
    .init = arch_init,
    .handle_batch = arch_handle_batch,
    .on_assign = arch_on_assign,
    .on_revoke = arch_on_revoke,
    .tick = arch_tick,
    .fini = arch_fini,
    .manual_offsets = true,
    .on_revoke_flush = arch_revoke_flush,
};

int main(int argc, char **argv)
{
    return bus_daemon_main(&arch_desc, argc, argv);
}
