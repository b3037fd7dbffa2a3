/* svc_config.h: configuration declared as a table (Fluent Bit config_map, Redis static_configs).
 *
 * A program declares its settings as an array of svc_conf_entry_t ending in SVC_CONF_END, each
 * naming a field of the program's own struct by offsetof(). svc_conf_load() fills that struct
 * from, in rising precedence: the defaults in the table, an optional file (`--config FILE` or
 * SB_<SERVICE>_CONFIG), and environment variables SB_<SERVICE>_<NAME>, where <SERVICE> and
 * <NAME> are upper-cased with every non-alphanumeric character turned into '_'
 * ("sensor-ingest" + "batch_max" -> SB_SENSOR_INGEST_BATCH_MAX).
 *
 * Keys that start with "kafka." are passed through untouched to librdkafka. In the file they are
 * written as they are (`kafka.bootstrap.servers = 127.0.0.1:9092`); in the environment as
 * SB_<SERVICE>_KAFKA_<KEY> with '.' written as '_' (SB_GATEWAY_KAFKA_BOOTSTRAP_SERVERS).
 *
 * The file holds `name = value` lines; blank lines and lines whose first non-blank character is
 * '#' are skipped. A value is taken as written, after trimming blanks (no quotes, no trailing
 * comments: a password may contain '#').
 *
 * An SB_<SERVICE>_* variable or a file key that no table declares is an error naming the key.
 * Variables of another sensorbus program whose prefix extends this one's (SB_SENSOR_INGEST_* seen
 * by a program named "sensor") are left alone; svc_config.c lists those programs.
 * Secrets (SVC_CONF_SECRET) are never printed, and may also be read from a file named by
 * SB_<SERVICE>_<NAME>_FILE (a trailing newline is stripped).
 */
#pragma once

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

typedef enum svc_conf_type {
    SVC_CONF_END = 0, /* terminates a table */
    SVC_CONF_STR,     /* char *, owned by the target struct; freed by svc_conf_target_free() */
    SVC_CONF_INT,     /* int64_t */
    SVC_CONF_BOOL,    /* bool: true/false, yes/no, on/off, 1/0 */
    SVC_CONF_DOUBLE,  /* double */
} svc_conf_type_t;

enum {
    SVC_CONF_SECRET = 1 << 0, /* value never printed; may come from <ENV>_FILE */
};

typedef struct svc_conf_entry {
    svc_conf_type_t type;
    const char *name; /* lower-case, words separated by '_' */
    const char *def;  /* default, as text; NULL leaves a string NULL and a number 0 */
    size_t offset;    /* offsetof() the field in the target struct */
    const char *desc; /* one line, for --help */
    int flags;        /* SVC_CONF_* flags */
    int64_t min, max; /* for SVC_CONF_INT: accepted range, checked when min < max */
} svc_conf_entry_t;

/* One table and the struct it fills. A program may load several sections at once (the runtime's
 * common settings and the daemon's own), so that unknown-key checks see all of them. */
typedef struct svc_conf_section {
    const svc_conf_entry_t *table;
    void *target;
} svc_conf_section_t;

/* A librdkafka property collected from kafka.* keys. */
typedef struct svc_conf_kv {
    char *key; /* without the "kafka." prefix: "bootstrap.servers" */
    char *value;
} svc_conf_kv_t;

typedef struct svc_conf {
    svc_conf_kv_t *kafka; /* kafka.* pass-through properties, in the order seen */
    size_t kafka_count;
} svc_conf_t;

/**
 * Loads configuration for @service into every section's target.
 *
 * Recognises `--help`/`-h` (prints the table and the environment names to stdout, then returns
 * 1) and `--config FILE` in @argv; any other argument is an error. On error returns a negative
 * errno and writes a one-line message naming the key to @errbuf. On success returns 0 and, if
 * @ret_conf is not NULL, hands the caller a svc_conf_t (kafka pass-through) to free with
 * svc_conf_free().
 */
int svc_conf_load(const char *service, const char *summary, const svc_conf_section_t *sections,
                  size_t nsections, int argc, char **argv, svc_conf_t **ret_conf, char *errbuf,
                  size_t errsize);

/** Prints the --help text (settings, defaults, environment names) for the sections to @f. */
void svc_conf_print_help(const char *service, const char *summary,
                         const svc_conf_section_t *sections, size_t nsections, void *f);

/** Looks up a kafka pass-through value by key (without "kafka."), or NULL. */
const char *svc_conf_kafka_get(const svc_conf_t *conf, const char *key);

/** Adds or replaces a kafka pass-through value (used to apply defaults). 0 or -ENOMEM. */
int svc_conf_kafka_set(svc_conf_t *conf, const char *key, const char *value);

/** Frees the strings a load put into @target. Accepts NULL. */
void svc_conf_target_free(const svc_conf_entry_t *table, void *target);

/** Frees @conf. Accepts NULL. */
void svc_conf_free(svc_conf_t *conf);
