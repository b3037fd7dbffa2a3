/* bus_daemon.h: everything a consumer daemon has in common, so that a daemon is a descriptor and
 * a handler (PipeWire's daemon over its libraries, git's builtins).
 *
 * bus_daemon_main() loads configuration (the runtime's common settings below plus the daemon's
 * own table), sets up logging, signals, metrics and the health side port, creates the
 * at-least-once consumer, calls init(), runs the loop until SIGINT/SIGTERM, then shuts down in
 * librdkafka's order (stop consuming, finish the batch, store and commit offsets, close the
 * consumer, flush producers, destroy) and calls fini().
 *
 * Common settings (env SB_<NAME>_<KEY>):
 *   topics        comma-separated topics (default: desc->topics)
 *   group_id      consumer group (default: "sb-<name>")
 *   dlq_topic     dead-letter topic (default: "dlq.<name>.v1")
 *   batch_max     records per batch (default: desc->batch_max)
 *   batch_ms      max batch wait in ms (default: desc->batch_ms)
 *   health_listen host:port of /healthz, /readyz, /metrics (default 127.0.0.1:0)
 *   log_level     debug|info|warn|error
 *   kafka.*       librdkafka properties (bootstrap.servers defaults to 127.0.0.1:9092)
 */
#pragma once

#include "bus_consumer.h"
#include "svc_config.h"
#include "svc_health.h"
#include "svc_metrics.h"

typedef struct bus_daemon bus_daemon_t;

typedef struct bus_daemon_desc {
    const char *name;             /* "sensor-ingest" */
    const char *summary;          /* one line for --help */
    const char *topics;           /* default subscription, comma-separated */
    const svc_conf_entry_t *conf; /* the daemon's own settings, or NULL */
    size_t conf_size;             /* size of the struct @conf fills (zeroed, owned by runtime) */
    size_t batch_max;
    int batch_ms;
    /* Called after configuration and before consuming. @conf is the filled struct. Return 0 or a
     * negative errno (the daemon then exits 1; log the reason first). */
    int (*init)(bus_daemon_t *d, void *conf, void **ret_state);
    bus_batch_fn handle_batch;
    bus_partitions_fn on_assign; /* optional */
    bus_partitions_fn on_revoke; /* optional */
    void (*tick)(void *state);   /* optional: about once a second, between batches */
    void (*fini)(void *state);   /* optional */
    /* Optional, for daemons whose effect outlives a batch (see bus_consumer.h): the runtime
     * stores no offsets, the daemon calls bus_daemon_offsets_store() once records are durable,
     * and on_revoke_flush runs before a revocation's (and shutdown's) synchronous commit. */
    bool manual_offsets;
    bus_partitions_fn on_revoke_flush;
} bus_daemon_desc_t;

/** Runs the daemon; returns the process exit status. */
int bus_daemon_main(const bus_daemon_desc_t *desc, int argc, char **argv);

/* For init(): the runtime's pieces, borrowed for the daemon's lifetime. */
svc_health_t *bus_daemon_health(bus_daemon_t *d); /* set the daemon's own checks ("db") */
svc_metrics_t *bus_daemon_metrics(bus_daemon_t *d);
const svc_conf_t *bus_daemon_conf(bus_daemon_t *d); /* kafka.* pass-through */
/** With desc->manual_offsets: everything in @topic [@partition] below @next_offset is durable
 *  (bus_consumer_offsets_store()). Only from the loop's thread: handle_batch, tick,
 *  on_revoke_flush. 0 or a negative errno (-ENOENT: the partition is not ours any more). */
int bus_daemon_offsets_store(bus_daemon_t *d, const char *topic, int32_t partition,
                             int64_t next_offset);
/** A producer for the daemon's own output topics (created on first call). NULL on failure. */
bus_producer_t *bus_daemon_producer(bus_daemon_t *d);
