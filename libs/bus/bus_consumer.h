/* bus_consumer.h: the at-least-once consumer loop.
 *
 * enable.auto.offset.store=false and enable.auto.commit=true: a record's offset is *stored* only
 * after its handler succeeded (and, for a rejected record, after the dead-letter record was
 * acknowledged), and librdkafka commits stored offsets in the background and on close. The loop
 * collects records into batches bounded by count and time. On a transient failure (the handler
 * returns a negative errno) nothing is stored, every partition of the batch is sought back to its
 * first offset, and the batch is retried after a backoff that grows to 5 s: the partition is not
 * skipped and the consumer keeps polling, so it stays in the group.
 *
 * Rebalances use the eager protocol. Before partitions are revoked, the pending batch is
 * processed, its offsets stored and committed synchronously, then the daemon is told which
 * partitions it lost (on_revoke) so that per-partition state can be dropped.
 *
 * A daemon whose effect outlives a batch (records buffered across batches and written later, as
 * the S3 archiver does) sets manual_offsets: the loop then never stores a batch's offsets, the
 * daemon stores them with bus_consumer_offsets_store() once its effect is durable, and
 * on_revoke_flush gives it a last chance, before the synchronous commit of a revocation (and of
 * the close at shutdown), to make its buffers of the departing partitions durable.
 */
#pragma once

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <librdkafka/rdkafka.h>

#include "bus_producer.h"
#include "svc_config.h"

typedef struct bus_consumer bus_consumer_t;

/** A record as a handler sees it: borrowed, valid only during the callback. */
typedef struct bus_record {
    const char *topic;
    int32_t partition;
    int64_t offset;
    const void *key;
    size_t key_len;
    const void *value;
    size_t value_len;
    int64_t timestamp_ms;          /* -1 when the record has none */
    const rd_kafka_message_t *rkm; /* for headers; use bus_record_header() */
    char *reject_reason;           /* set by bus_record_reject(); owned by the loop */
} bus_record_t;

/** Finds the first header named @name. Returns 0 and the borrowed value, or -ENOENT. */
int bus_record_header(const bus_record_t *rec, const char *name, const void **ret_value,
                      size_t *ret_len);

/**
 * Marks a record as one that can never be processed. After the handler returns 0, the record is
 * produced to the dead-letter topic (same key, value and headers, plus `sb-dlq-reason`,
 * `sb-dlq-topic`, `sb-dlq-partition`, `sb-dlq-offset`, `sb-dlq-consumer`), and its offset is stored
 * only after the broker acknowledged the DLQ record.
 */
void bus_record_reject(bus_record_t *rec, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

/**
 * Processes a batch. Return 0 when every record not rejected has a durable effect; a negative
 * errno for a transient failure (the whole batch will be delivered again).
 */
typedef int (*bus_batch_fn)(void *opaque, bus_record_t *recs, size_t n);

/** Partition assignment change, after the pending batch was flushed. @parts is borrowed. */
typedef void (*bus_partitions_fn)(void *opaque, const rd_kafka_topic_partition_list_t *parts);

typedef struct bus_consumer_opts {
    const char *group_id;        /* required */
    const char *const *topics;   /* NULL-terminated, required */
    const char *dlq_topic;       /* required: "dlq.<consumer>.v1" */
    const char *consumer_name;   /* written in the sb-dlq-consumer header */
    size_t batch_max;            /* records per batch, >= 1 */
    int batch_ms;                /* max time a batch waits to fill, >= 0 */
    bus_batch_fn handle_batch;   /* required */
    bus_partitions_fn on_assign; /* optional */
    bus_partitions_fn on_revoke; /* optional */
    /* Optional: called on the loop's thread about every tick_ms (default 1000) whether or not
     * records arrive, between batches, so that a daemon can check its own dependencies. */
    void (*on_tick)(void *opaque);
    int tick_ms;
    /* Optional: the daemon stores offsets itself (bus_consumer_offsets_store()); the loop stores
     * none, not even those of rejected records after their DLQ acknowledgement. */
    bool manual_offsets;
    /* Optional: partitions are about to be revoked (a rebalance, or the close at shutdown); the
     * pending batch was handled. Runs before the synchronous commit and before on_revoke: the
     * place to flush per-partition buffers and store their offsets. */
    bus_partitions_fn on_revoke_flush;
    void *opaque;
} bus_consumer_opts_t;

/** Events the loop reports so that the daemon can log and count them. */
typedef enum bus_event {
    BUS_EV_ASSIGNED,    /* detail: partition count */
    BUS_EV_REVOKED,     /* detail: partition count */
    BUS_EV_BATCH_OK,    /* detail: records in the batch */
    BUS_EV_BATCH_RETRY, /* detail: -errno the handler returned */
    BUS_EV_DLQ,         /* detail: records sent to the DLQ */
    BUS_EV_ERROR,       /* text: librdkafka error */
} bus_event_t;
typedef void (*bus_event_fn)(void *opaque, bus_event_t ev, long detail, const char *text);

/**
 * Creates the consumer (subscribing to opts->topics) and its DLQ producer from the kafka.*
 * settings in @conf (borrowed). @opts is copied. 0, or a negative errno with the reason in
 * @errbuf.
 */
int bus_consumer_new(const svc_conf_t *conf, const bus_consumer_opts_t *opts,
                     bus_consumer_t **ret_consumer, char *errbuf, size_t errsize);

/** Reports loop events to @fn (called on the loop's thread). */
void bus_consumer_set_event_cb(bus_consumer_t *consumer, bus_event_fn fn, void *opaque);

/**
 * Runs the loop until @stopping() returns true (checked at least every 200 ms), then flushes the
 * pending batch, stores and commits offsets. Returns 0, or a negative errno on a fatal error.
 */
int bus_consumer_run(bus_consumer_t *consumer, bool (*stopping)(void));

/**
 * With manual_offsets: records that everything in @topic [@partition] below @next_offset has a
 * durable effect; librdkafka commits it in the background, at a revocation and at close. Call
 * only from the loop's thread (the handler, on_tick, on_revoke_flush). 0, or a negative errno
 * (-ENOENT when the partition is not assigned to this member any more).
 */
int bus_consumer_offsets_store(bus_consumer_t *consumer, const char *topic, int32_t partition,
                               int64_t next_offset);

/** True after the first assignment (even an empty one) and while the consumer is in the group. */
bool bus_consumer_assigned(bus_consumer_t *consumer);

/** Closes in librdkafka's documented order: commit, rd_kafka_consumer_close(), flush the DLQ
 *  producer, destroy. Accepts NULL. */
void bus_consumer_free(bus_consumer_t *consumer);
