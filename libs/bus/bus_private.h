/* bus_private.h: helpers shared by the files of libs/bus; not part of the interface. */
#pragma once

#include <stddef.h>

#include <librdkafka/rdkafka.h>

#include "svc_config.h"

typedef struct bus_kv {
    const char *key;
    const char *value;
} bus_kv_t;

/**
 * Builds a librdkafka configuration: @defaults first, then the caller's kafka.* keys from @conf
 * (borrowed, may be NULL), then @forced, so that forced keys always win. Installs the log
 * callback set by bus_set_log_fn(). 0, or -EINVAL with "kafka.<key>: <reason>" in @errbuf.
 */
int bus_kafka_conf_new(const svc_conf_t *conf, const bus_kv_t *defaults, size_t ndefaults,
                       const bus_kv_t *forced, size_t nforced, rd_kafka_conf_t **ret_kconf,
                       char *errbuf, size_t errsize);

/** The kafka.* value the caller set for @key, or NULL (no dependency on svc_config.c). */
const char *bus_conf_get(const svc_conf_t *conf, const char *key);

/** Maps a librdkafka error to a negative errno. */
int bus_errno(rd_kafka_resp_err_t err);
