/* bus_consumer.c: the at-least-once consume loop (see bus_consumer.h for the contract).
 *
 * Everything here runs on the thread that calls bus_consumer_run(): librdkafka invokes the
 * rebalance callback from inside rd_kafka_consumer_poll() and rd_kafka_consumer_close(), so the
 * batch needs no lock. Only the DLQ delivery reports arrive on the DLQ producer's poll thread,
 * and they touch nothing but an atomic counter.
 *
 * A failed batch is retried by rewinding, not by keeping it: every partition of the batch is
 * paused and sought back to the batch's first offset, the loop keeps polling (so the member stays
 * in the group) and resumes the partitions when the backoff ends. A record that still arrives
 * from a paused partition was fetched before the seek: it is dropped and its partition sought
 * back again to the remembered position, so nothing is skipped.
 */
#include "bus_consumer.h"

#include <errno.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "bus_private.h"

#define POLL_MAX_MS      200
#define BACKOFF_FIRST_MS 100
#define BACKOFF_MAX_MS   5000
#define SEEK_TIMEOUT_MS  5000
#define DLQ_FLUSH_MS     30000
#define CLOSE_FLUSH_MS   10000

struct bus_consumer {
    rd_kafka_t *rk;
    bus_producer_t *dlq;
    bus_consumer_opts_t opts; /* strings and topics point at the copies below */
    char *group_id;
    char *dlq_topic;
    char *consumer_name;
    char **topics;

    bus_event_fn event_fn;
    void *event_opaque;
    atomic_bool assigned;
    int fatal; /* negative errno that ends the loop, 0 while none */

    rd_kafka_message_t **msgs; /* the batch: records stay valid until it is released */
    bus_record_t *recs;
    size_t n;
    int64_t batch_start_ms;

    int backoff_ms;        /* last backoff, 0 after a success */
    int64_t backoff_until; /* 0 while not backing off */
    bool reseek;           /* a rewind seek timed out: make it again before resuming */
    rd_kafka_topic_partition_list_t *rewind; /* where paused partitions resume */
    atomic_int dlq_failed;
};

/* Used when formatting a reason runs out of memory: the record must still go to the DLQ. */
static char reject_oom[] = "rejected (reason lost: out of memory)";

static int64_t now_ms(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static void emit(bus_consumer_t *c, bus_event_t ev, long detail, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

static void emit(bus_consumer_t *c, bus_event_t ev, long detail, const char *fmt, ...)
{
    char text[512] = "";
    va_list ap;

    if (!c->event_fn)
        return;
    if (fmt) {
        va_start(ap, fmt);
        vsnprintf(text, sizeof(text), fmt, ap);
        va_end(ap);
    }
    c->event_fn(c->event_opaque, ev, detail, text);
}

int bus_record_header(const bus_record_t *rec, const char *name, const void **ret_value,
                      size_t *ret_len)
{
    rd_kafka_headers_t *hdrs;

    if (!rec->rkm || rd_kafka_message_headers((rd_kafka_message_t *)rec->rkm, &hdrs) !=
                         RD_KAFKA_RESP_ERR_NO_ERROR)
        return -ENOENT;
    if (rd_kafka_header_get(hdrs, 0, name, ret_value, ret_len) != RD_KAFKA_RESP_ERR_NO_ERROR)
        return -ENOENT;
    return 0;
}

static void reason_free(char *reason)
{
    if (reason != reject_oom)
        free(reason);
}

void bus_record_reject(bus_record_t *rec, const char *fmt, ...)
{
    char *reason;
    va_list ap;

    va_start(ap, fmt);
    if (vasprintf(&reason, fmt, ap) < 0)
        reason = reject_oom;
    va_end(ap);
    reason_free(rec->reject_reason);
    rec->reject_reason = reason;
}

static void batch_add(bus_consumer_t *c, rd_kafka_message_t *rkm)
{
    rd_kafka_timestamp_type_t tstype;
    int64_t ts = rd_kafka_message_timestamp(rkm, &tstype);

    if (c->n == 0)
        c->batch_start_ms = now_ms();
    c->msgs[c->n] = rkm;
    c->recs[c->n] = (bus_record_t){
        .topic = rd_kafka_topic_name(rkm->rkt),
        .partition = rkm->partition,
        .offset = rkm->offset,
        .key = rkm->key,
        .key_len = rkm->key_len,
        .value = rkm->payload,
        .value_len = rkm->len,
        .timestamp_ms = tstype == RD_KAFKA_TIMESTAMP_NOT_AVAILABLE ? -1 : ts,
        .rkm = rkm,
    };
    c->n++;
}

static void batch_release(bus_consumer_t *c)
{
    for (size_t i = 0; i < c->n; i++) {
        reason_free(c->recs[i].reject_reason);
        rd_kafka_message_destroy(c->msgs[i]);
    }
    c->n = 0;
}

/* Per partition of the batch: its first offset (@first) or the offset after its last record. */
static rd_kafka_topic_partition_list_t *batch_offsets(bus_consumer_t *c, bool first)
{
    rd_kafka_topic_partition_list_t *list = rd_kafka_topic_partition_list_new((int)c->n);

    for (size_t i = 0; list && i < c->n; i++) {
        const bus_record_t *rec = &c->recs[i];
        rd_kafka_topic_partition_t *tp =
            rd_kafka_topic_partition_list_find(list, rec->topic, rec->partition);

        if (!tp) {
            tp = rd_kafka_topic_partition_list_add(list, rec->topic, rec->partition);
            tp->offset = first ? rec->offset : rec->offset + 1;
        } else if (!first && rec->offset + 1 > tp->offset) {
            tp->offset = rec->offset + 1;
        }
    }
    return list;
}

static void dlq_delivered(rd_kafka_resp_err_t err, int32_t partition, int64_t offset, void *opaque)
{
    bus_consumer_t *c = opaque;

    (void)partition;
    (void)offset;
    if (err)
        atomic_fetch_add(&c->dlq_failed, 1);
}

static int dlq_produce(bus_consumer_t *c, const bus_record_t *rec)
{
    rd_kafka_headers_t *orig = NULL;
    bus_header_t *hdrs = NULL;
    size_t norig = 0, n = 0;
    char partition[16], offset[32];
    const char *name;
    const void *value;
    size_t len;
    int r;

    if (rd_kafka_message_headers((rd_kafka_message_t *)rec->rkm, &orig) == 0)
        norig = rd_kafka_header_cnt(orig);
    hdrs = calloc(norig + 5, sizeof(*hdrs));
    if (!hdrs)
        return -ENOMEM;
    for (size_t i = 0; i < norig; i++)
        if (rd_kafka_header_get_all(orig, i, &name, &value, &len) == 0)
            hdrs[n++] = (bus_header_t){name, value, len};
    snprintf(partition, sizeof(partition), "%" PRId32, rec->partition);
    snprintf(offset, sizeof(offset), "%" PRId64, rec->offset);
    hdrs[n++] = (bus_header_t){"sb-dlq-reason", rec->reject_reason, strlen(rec->reject_reason)};
    hdrs[n++] = (bus_header_t){"sb-dlq-topic", rec->topic, strlen(rec->topic)};
    hdrs[n++] = (bus_header_t){"sb-dlq-partition", partition, strlen(partition)};
    hdrs[n++] = (bus_header_t){"sb-dlq-offset", offset, strlen(offset)};
    hdrs[n++] = (bus_header_t){"sb-dlq-consumer", c->consumer_name, strlen(c->consumer_name)};
    r = bus_producer_produce(c->dlq, c->dlq_topic, rec->key, rec->key_len, rec->value,
                             rec->value_len, hdrs, n, NULL, dlq_delivered, c);
    free(hdrs);
    return r;
}

/* Sends the batch's rejected records to the DLQ and waits for the broker's acknowledgements. */
static int dlq_send(bus_consumer_t *c)
{
    size_t count = 0;
    int r = 0;

    atomic_store(&c->dlq_failed, 0);
    for (size_t i = 0; i < c->n && r == 0; i++) {
        if (!c->recs[i].reject_reason)
            continue;
        r = dlq_produce(c, &c->recs[i]);
        count++;
    }
    if (count == 0)
        return 0;
    if (r < 0) {
        emit(c, BUS_EV_ERROR, 0, "dead-letter topic %s: cannot produce: %s", c->dlq_topic,
             strerror(-r));
        bus_producer_flush(c->dlq, DLQ_FLUSH_MS);
        return r;
    }
    r = bus_producer_flush(c->dlq, DLQ_FLUSH_MS);
    if (r == 0 && atomic_load(&c->dlq_failed) > 0)
        r = -EIO;
    if (r < 0) {
        emit(c, BUS_EV_ERROR, 0, "dead-letter topic %s: %d of %zu records not acknowledged",
             c->dlq_topic, r == -ETIMEDOUT ? (int)count : atomic_load(&c->dlq_failed), count);
        return r;
    }
    emit(c, BUS_EV_DLQ, (long)count, NULL);
    return 0;
}

/* A seek that did not finish within SEEK_TIMEOUT_MS (a busy broker or machine) is not lost: its
 * partitions stay paused, and the seek is made again before they resume (c->reseek). */
static bool seek_err_retryable(rd_kafka_resp_err_t err)
{
    return err == RD_KAFKA_RESP_ERR__TIMED_OUT || err == RD_KAFKA_RESP_ERR__IN_PROGRESS;
}

/* 0; -EAGAIN when the seek must be made again before resuming; -EIO (fatal) otherwise. */
static int seek_to(bus_consumer_t *c, rd_kafka_topic_partition_list_t *list)
{
    rd_kafka_error_t *error = rd_kafka_seek_partitions(c->rk, list, SEEK_TIMEOUT_MS);
    bool again = false;
    int r = 0;

    if (error) {
        if (seek_err_retryable(rd_kafka_error_code(error))) {
            again = true;
        } else {
            emit(c, BUS_EV_ERROR, rd_kafka_error_code(error), "seek: %s",
                 rd_kafka_error_string(error));
            r = -EIO;
        }
        rd_kafka_error_destroy(error);
    }
    for (int i = 0; i < list->cnt; i++) {
        if (!list->elems[i].err)
            continue;
        if (seek_err_retryable(list->elems[i].err)) {
            again = true;
            continue;
        }
        emit(c, BUS_EV_ERROR, list->elems[i].err, "seek %s [%" PRId32 "]: %s", list->elems[i].topic,
             list->elems[i].partition, rd_kafka_err2str(list->elems[i].err));
        r = -EIO;
    }
    /* A partition that cannot be rewound would resume after the failed batch and its records
     * would be lost once later offsets are stored: stopping is the only safe answer. */
    if (r < 0) {
        c->fatal = r;
        return r;
    }
    if (again) {
        emit(c, BUS_EV_ERROR, RD_KAFKA_RESP_ERR__TIMED_OUT,
             "seek not finished within %d ms; the partitions stay paused and it is retried",
             SEEK_TIMEOUT_MS);
        c->reseek = true;
        return -EAGAIN;
    }
    return 0;
}

static void pause_assignment(bus_consumer_t *c, bool pause)
{
    rd_kafka_topic_partition_list_t *parts = NULL;

    if (rd_kafka_assignment(c->rk, &parts) != RD_KAFKA_RESP_ERR_NO_ERROR)
        return;
    if (pause)
        rd_kafka_pause_partitions(c->rk, parts);
    else
        rd_kafka_resume_partitions(c->rk, parts);
    rd_kafka_topic_partition_list_destroy(parts);
}

static void backoff_start(bus_consumer_t *c)
{
    c->backoff_ms = c->backoff_ms ? c->backoff_ms * 2 : BACKOFF_FIRST_MS;
    if (c->backoff_ms > BACKOFF_MAX_MS)
        c->backoff_ms = BACKOFF_MAX_MS;
    c->backoff_until = now_ms() + c->backoff_ms;
    if (c->rewind)
        rd_kafka_topic_partition_list_destroy(c->rewind);
    c->rewind = batch_offsets(c, true);
    if (!c->rewind) {
        c->fatal = -ENOMEM;
        return;
    }
    /* Pause first: pausing saves the application's position as the resume point, and the seek
     * that follows overrides it with the batch's first offset. */
    pause_assignment(c, true);
    seek_to(c, c->rewind);
}

static void backoff_end(bus_consumer_t *c, bool resume)
{
    /* Resuming a partition whose rewind never completed would skip the failed batch. */
    if (resume && c->reseek && c->rewind) {
        c->reseek = false;
        if (seek_to(c, c->rewind) == -EAGAIN) {
            c->backoff_until = now_ms() + c->backoff_ms;
            return;
        }
    }
    c->reseek = false;
    if (resume)
        pause_assignment(c, false);
    c->backoff_until = 0;
    if (c->rewind) {
        rd_kafka_topic_partition_list_destroy(c->rewind);
        c->rewind = NULL;
    }
}

/* A record from a paused partition was fetched before the seek: rewind that partition again. */
static void backoff_rewind(bus_consumer_t *c, const rd_kafka_message_t *rkm)
{
    const char *topic = rd_kafka_topic_name(rkm->rkt);
    rd_kafka_topic_partition_t *tp =
        rd_kafka_topic_partition_list_find(c->rewind, topic, rkm->partition);
    rd_kafka_topic_partition_list_t *one = rd_kafka_topic_partition_list_new(1);

    if (!one) {
        c->fatal = -ENOMEM;
        return;
    }
    if (!tp) {
        /* Not in the failed batch: nothing from it is pending, so this record is the first one
         * the handler has not seen. */
        tp = rd_kafka_topic_partition_list_add(c->rewind, topic, rkm->partition);
        tp->offset = rkm->offset;
    }
    rd_kafka_topic_partition_list_add(one, topic, rkm->partition)->offset = tp->offset;
    rd_kafka_pause_partitions(c->rk, one);
    seek_to(c, one);
    rd_kafka_topic_partition_list_destroy(one);
}

static void commit_sync(bus_consumer_t *c)
{
    rd_kafka_resp_err_t err = rd_kafka_commit(c->rk, NULL, 0);

    if (err && err != RD_KAFKA_RESP_ERR__NO_OFFSET)
        emit(c, BUS_EV_ERROR, err, "commit: %s", rd_kafka_err2str(err));
}

/* Hands the batch to the handler. On success stores its offsets; on failure rewinds and backs
 * off when @retry, else leaves the records to be delivered again (revocation, shutdown). */
static int batch_process(bus_consumer_t *c, bool retry)
{
    rd_kafka_topic_partition_list_t *offsets;
    int r;

    if (c->n == 0)
        return 0;
    r = c->opts.handle_batch(c->opts.opaque, c->recs, c->n);
    if (r > 0)
        r = 0;
    if (r == 0)
        r = dlq_send(c);
    if (r < 0) {
        emit(c, BUS_EV_BATCH_RETRY, r, "%zu records", c->n);
        if (retry)
            backoff_start(c);
        goto out;
    }
    if (c->opts.manual_offsets)
        goto done;
    offsets = batch_offsets(c, false);
    if (!offsets) {
        c->fatal = r = -ENOMEM;
        goto out;
    }
    if (rd_kafka_offsets_store(c->rk, offsets) != RD_KAFKA_RESP_ERR_NO_ERROR) {
        for (int i = 0; i < offsets->cnt; i++)
            if (offsets->elems[i].err)
                emit(c, BUS_EV_ERROR, offsets->elems[i].err, "store offset %s [%" PRId32 "]: %s",
                     offsets->elems[i].topic, offsets->elems[i].partition,
                     rd_kafka_err2str(offsets->elems[i].err));
    }
    rd_kafka_topic_partition_list_destroy(offsets);
done:
    c->backoff_ms = 0;
    emit(c, BUS_EV_BATCH_OK, (long)c->n, NULL);
out:
    batch_release(c);
    return r;
}

int bus_consumer_offsets_store(bus_consumer_t *c, const char *topic, int32_t partition,
                               int64_t next_offset)
{
    rd_kafka_topic_partition_list_t *list = rd_kafka_topic_partition_list_new(1);
    rd_kafka_resp_err_t err;

    if (!list)
        return -ENOMEM;
    rd_kafka_topic_partition_list_add(list, topic, partition)->offset = next_offset;
    err = rd_kafka_offsets_store(c->rk, list);
    if (!err)
        err = list->elems[0].err;
    rd_kafka_topic_partition_list_destroy(list);
    /* librdkafka answers _STATE (or _UNKNOWN_PARTITION) for a partition it no longer has. */
    if (err == RD_KAFKA_RESP_ERR__STATE || err == RD_KAFKA_RESP_ERR__UNKNOWN_PARTITION)
        return -ENOENT;
    return err ? bus_errno(err) : 0;
}

static void rebalance_cb(rd_kafka_t *rk, rd_kafka_resp_err_t err,
                         rd_kafka_topic_partition_list_t *parts, void *opaque)
{
    bus_consumer_t *c = opaque;
    rd_kafka_resp_err_t aerr;

    switch (err) {
    case RD_KAFKA_RESP_ERR__ASSIGN_PARTITIONS:
        aerr = rd_kafka_assign(rk, parts);
        if (aerr)
            emit(c, BUS_EV_ERROR, aerr, "assign: %s", rd_kafka_err2str(aerr));
        atomic_store(&c->assigned, true);
        if (c->opts.on_assign)
            c->opts.on_assign(c->opts.opaque, parts);
        emit(c, BUS_EV_ASSIGNED, parts->cnt, NULL);
        break;
    case RD_KAFKA_RESP_ERR__REVOKE_PARTITIONS:
        /* The eager protocol: whatever is pending is finished now, or left to the next owner. */
        batch_process(c, false);
        backoff_end(c, c->backoff_until != 0);
        if (c->opts.on_revoke_flush)
            c->opts.on_revoke_flush(c->opts.opaque, parts);
        commit_sync(c);
        if (c->opts.on_revoke)
            c->opts.on_revoke(c->opts.opaque, parts);
        rd_kafka_assign(rk, NULL);
        atomic_store(&c->assigned, false);
        emit(c, BUS_EV_REVOKED, parts->cnt, NULL);
        break;
    default:
        emit(c, BUS_EV_ERROR, err, "rebalance: %s", rd_kafka_err2str(err));
        batch_release(c);
        backoff_end(c, c->backoff_until != 0);
        rd_kafka_assign(rk, NULL);
        atomic_store(&c->assigned, false);
        break;
    }
}

static void message_handle(bus_consumer_t *c, rd_kafka_message_t *rkm)
{
    if (rkm->err) {
        if (rkm->err == RD_KAFKA_RESP_ERR__FATAL) {
            char reason[256];

            rd_kafka_fatal_error(c->rk, reason, sizeof(reason));
            emit(c, BUS_EV_ERROR, rkm->err, "fatal: %s", reason);
            c->fatal = -EIO;
        } else if (rkm->err != RD_KAFKA_RESP_ERR__PARTITION_EOF) {
            emit(c, BUS_EV_ERROR, rkm->err, "%s", rd_kafka_message_errstr(rkm));
        }
        rd_kafka_message_destroy(rkm);
        return;
    }
    if (c->backoff_until) {
        backoff_rewind(c, rkm);
        rd_kafka_message_destroy(rkm);
        return;
    }
    batch_add(c, rkm);
}

int bus_consumer_run(bus_consumer_t *c, bool (*stopping)(void))
{
    int tick_ms = c->opts.tick_ms > 0 ? c->opts.tick_ms : 1000;
    int64_t next_tick = now_ms() + tick_ms;

    while (!c->fatal && !stopping()) {
        int64_t now = now_ms();
        int64_t timeout = POLL_MAX_MS;
        rd_kafka_message_t *rkm;

        if (c->opts.on_tick && now >= next_tick) {
            c->opts.on_tick(c->opts.opaque);
            next_tick = now + tick_ms;
        }

        if (c->backoff_until) {
            if (now >= c->backoff_until)
                backoff_end(c, true);
            else if (c->backoff_until - now < timeout)
                timeout = c->backoff_until - now;
        } else if (c->n > 0) {
            int64_t left = c->batch_start_ms + c->opts.batch_ms - now;

            if (left <= 0) {
                batch_process(c, true);
                continue;
            }
            if (left < timeout)
                timeout = left;
        }
        rkm = rd_kafka_consumer_poll(c->rk, (int)timeout);
        if (rkm)
            message_handle(c, rkm);
        if (c->n >= c->opts.batch_max)
            batch_process(c, true);
    }
    if (c->fatal)
        batch_release(c);
    else
        batch_process(c, false);
    commit_sync(c);
    return c->fatal;
}

static void consumer_strings_free(bus_consumer_t *c)
{
    free(c->group_id);
    free(c->dlq_topic);
    free(c->consumer_name);
    for (size_t i = 0; c->topics && c->topics[i]; i++)
        free(c->topics[i]);
    free(c->topics);
}

static int opts_copy(bus_consumer_t *c, const bus_consumer_opts_t *opts, char *errbuf,
                     size_t errsize)
{
    size_t ntopics = 0;

    if (!opts->group_id || !*opts->group_id || !opts->dlq_topic || !*opts->dlq_topic ||
        !opts->handle_batch || !opts->topics || !opts->topics[0]) {
        snprintf(errbuf, errsize,
                 "consumer: group id, topics, dead-letter topic and batch "
                 "handler are required");
        return -EINVAL;
    }
    if (opts->batch_max < 1 || opts->batch_ms < 0) {
        snprintf(errbuf, errsize, "consumer: batch_max must be >= 1 and batch_ms >= 0");
        return -EINVAL;
    }
    while (opts->topics[ntopics])
        ntopics++;
    c->opts = *opts;
    c->group_id = strdup(opts->group_id);
    c->dlq_topic = strdup(opts->dlq_topic);
    c->consumer_name = strdup(opts->consumer_name ? opts->consumer_name : opts->group_id);
    c->topics = calloc(ntopics + 1, sizeof(*c->topics));
    if (!c->group_id || !c->dlq_topic || !c->consumer_name || !c->topics)
        goto oom;
    for (size_t i = 0; i < ntopics; i++)
        if (!(c->topics[i] = strdup(opts->topics[i])))
            goto oom;
    c->opts.group_id = c->group_id;
    c->opts.dlq_topic = c->dlq_topic;
    c->opts.consumer_name = c->consumer_name;
    c->opts.topics = (const char *const *)c->topics;
    return 0;
oom:
    snprintf(errbuf, errsize, "out of memory");
    return -ENOMEM;
}

int bus_consumer_new(const svc_conf_t *conf, const bus_consumer_opts_t *opts,
                     bus_consumer_t **ret_consumer, char *errbuf, size_t errsize)
{
    static const bus_kv_t defaults[] = {
        {"bootstrap.servers", "127.0.0.1:9092"},
        {"auto.offset.reset", "earliest"},
        {"enable.auto.commit", "true"},
        {"partition.assignment.strategy", "range,roundrobin"},
    };
    rd_kafka_topic_partition_list_t *subscription = NULL;
    rd_kafka_conf_t *kconf = NULL;
    bus_consumer_t *c;
    const char *strategy;
    char reason[512];
    rd_kafka_resp_err_t err;
    int r;

    c = calloc(1, sizeof(*c));
    if (!c) {
        snprintf(errbuf, errsize, "out of memory");
        return -ENOMEM;
    }
    if ((r = opts_copy(c, opts, errbuf, errsize)) < 0)
        goto fail;

    strategy = bus_conf_get(conf, "partition.assignment.strategy");
    if (strategy && strstr(strategy, "cooperative")) {
        snprintf(errbuf, errsize,
                 "kafka.partition.assignment.strategy: %s is not supported, the consumer loop "
                 "uses the eager protocol (range, roundrobin)",
                 strategy);
        r = -EINVAL;
        goto fail;
    }
    {
        const bus_kv_t forced[] = {
            {"group.id", c->group_id},
            {"enable.auto.offset.store", "false"},
        };
        r = bus_kafka_conf_new(conf, defaults, sizeof(defaults) / sizeof(defaults[0]), forced,
                               sizeof(forced) / sizeof(forced[0]), &kconf, errbuf, errsize);
    }
    if (r < 0)
        goto fail;
    rd_kafka_conf_set_rebalance_cb(kconf, rebalance_cb);
    rd_kafka_conf_set_opaque(kconf, c);

    c->msgs = calloc(opts->batch_max, sizeof(*c->msgs));
    c->recs = calloc(opts->batch_max, sizeof(*c->recs));
    if (!c->msgs || !c->recs) {
        snprintf(errbuf, errsize, "consumer: cannot allocate a batch of %zu records",
                 opts->batch_max);
        r = -ENOMEM;
        goto fail;
    }

    r = bus_producer_new(conf, &c->dlq, errbuf, errsize);
    if (r < 0)
        goto fail;

    c->rk = rd_kafka_new(RD_KAFKA_CONSUMER, kconf, reason, sizeof(reason));
    if (!c->rk) {
        snprintf(errbuf, errsize, "kafka consumer: %s", reason);
        r = -EINVAL;
        goto fail;
    }
    kconf = NULL; /* owned by rk now */
    rd_kafka_poll_set_consumer(c->rk);

    subscription = rd_kafka_topic_partition_list_new(1);
    for (size_t i = 0; c->topics[i]; i++)
        rd_kafka_topic_partition_list_add(subscription, c->topics[i], RD_KAFKA_PARTITION_UA);
    err = rd_kafka_subscribe(c->rk, subscription);
    rd_kafka_topic_partition_list_destroy(subscription);
    if (err) {
        snprintf(errbuf, errsize, "kafka consumer: subscribe: %s", rd_kafka_err2str(err));
        r = bus_errno(err);
        goto fail;
    }
    *ret_consumer = c;
    return 0;
fail:
    if (kconf)
        rd_kafka_conf_destroy(kconf);
    bus_consumer_free(c);
    return r;
}

void bus_consumer_set_event_cb(bus_consumer_t *c, bus_event_fn fn, void *opaque)
{
    c->event_fn = fn;
    c->event_opaque = opaque;
}

bool bus_consumer_assigned(bus_consumer_t *c)
{
    return atomic_load(&c->assigned);
}

void bus_consumer_free(bus_consumer_t *c)
{
    if (!c)
        return;
    if (c->rk) {
        /* Closing revokes the assignment through rebalance_cb, which finishes any pending
         * batch and commits synchronously before the member leaves the group. */
        rd_kafka_consumer_close(c->rk);
        batch_release(c); /* messages must not outlive their handle */
        rd_kafka_destroy(c->rk);
    }
    backoff_end(c, false);
    bus_producer_free(c->dlq, CLOSE_FLUSH_MS);
    free(c->msgs);
    free(c->recs);
    consumer_strings_free(c);
    free(c);
}
