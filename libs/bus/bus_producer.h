/* bus_producer.h: an idempotent, acks=all Kafka producer whose delivery reports arrive in the
 * caller's libevent loop.
 *
 * librdkafka is polled by one internal thread. Each produced record carries a small completion
 * that the delivery-report callback hands to the loop it came from: the completion is queued on
 * that loop's bus_notifier_t and the notifier's event is activated (thread-safe, needs
 * evthread_use_pthreads()), so the user's callback runs in the loop's own thread and never
 * blocks it. Records produced without a notifier get their callback on the poll thread.
 *
 * Forced settings: enable.idempotence=true, acks=all. Defaults the caller's kafka.* keys may
 * override: linger.ms=5, message.timeout.ms=10000, compression.type=lz4.
 */
#pragma once

#include <stddef.h>
#include <stdint.h>

#include <librdkafka/rdkafka.h>

#include "svc_config.h"

struct event_base;

typedef struct bus_producer bus_producer_t;
typedef struct bus_notifier bus_notifier_t;

typedef struct bus_header {
    const char *name;
    const void *value;
    size_t len;
} bus_header_t;

/**
 * Called once per record with its delivery result: err is RD_KAFKA_RESP_ERR_NO_ERROR when the
 * broker acknowledged it (acks=all), otherwise the reason (for example
 * RD_KAFKA_RESP_ERR__MSG_TIMED_OUT). @partition/@offset are valid on success.
 */
typedef void (*bus_delivery_fn)(rd_kafka_resp_err_t err, int32_t partition, int64_t offset,
                                void *opaque);

/**
 * Creates the producer from the kafka.* pass-through settings in @conf (borrowed) and starts its
 * poll thread. On failure returns a negative errno and writes the reason to @errbuf.
 */
int bus_producer_new(const svc_conf_t *conf, bus_producer_t **ret_producer, char *errbuf,
                     size_t errsize);

/**
 * Enqueues one record. Key, value and headers are copied. @notifier may be NULL (callback on the
 * poll thread). Returns 0 when enqueued (the callback will be called exactly once), -ENOBUFS
 * when the local queue is full, -EINVAL for an unknown topic or bad argument, -EMSGSIZE for a
 * record over message.max.bytes, -ESHUTDOWN while closing, -EIO once the idempotent producer hit
 * a fatal error (it must then be recreated); on any error the callback will not be called.
 */
int bus_producer_produce(bus_producer_t *producer, const char *topic, const void *key,
                         size_t key_len, const void *value, size_t value_len,
                         const bus_header_t *headers, size_t nheaders, bus_notifier_t *notifier,
                         bus_delivery_fn cb, void *opaque);

/** Waits until every enqueued record is delivered or failed, up to @timeout_ms.
 *  0, or -ETIMEDOUT with records still outstanding. */
int bus_producer_flush(bus_producer_t *producer, int timeout_ms);

/** Records enqueued and not yet reported (a report counts once it is handed to the notifier's
 *  loop, so the count may lag that loop's callbacks by a moment). */
int bus_producer_outq_len(bus_producer_t *producer);

/** True once the producer has a connection to at least one broker (for readiness). */
int bus_producer_connected(bus_producer_t *producer);

/** The underlying handle, borrowed (for metadata queries). */
rd_kafka_t *bus_producer_handle(bus_producer_t *producer);

/** Flushes up to @timeout_ms, stops the poll thread, destroys. Accepts NULL. */
void bus_producer_free(bus_producer_t *producer, int timeout_ms);

/**
 * Creates the completion queue of one event loop. @base is borrowed. 0 or -errno.
 * The base must be thread-safe: evthread_use_pthreads() has to run before event_base_new().
 * bus_producer_new() and this function call it, so creating the producer before the loops is
 * enough. Records produced with a notifier keep a pointer to it until their report is queued:
 * flush the producer (or free it) before freeing the notifier.
 */
int bus_notifier_new(struct event_base *base, bus_notifier_t **ret_notifier);

/** Frees the notifier, in its loop's thread or after the loop stopped; completions still
 *  queued are dropped without a callback (call after the producer is flushed). Accepts NULL. */
void bus_notifier_free(bus_notifier_t *notifier);

/**
 * librdkafka's own log lines (@level is syslog's) go to @fn for every handle libs/bus creates
 * afterwards; without it librdkafka prints them to stderr in its own format. Daemons route them
 * to svc_log. Call once, before creating producers or consumers.
 */
typedef void (*bus_log_fn)(int level, const char *fac, const char *msg);
void bus_set_log_fn(bus_log_fn fn);
