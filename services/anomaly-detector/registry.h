/* registry.h: what sb-anomaly-detector keeps in PostgreSQL: the registered sensors (type and
 * hard limits, table `sensors`), the thresholds per sensor type (table `detector_thresholds`)
 * and the partitions' state snapshots (table `detector_snapshots`, sql/0006_detector.sql).
 *
 * The registry is a cache of sensors by (project id, sensor id). An entry is either a registered
 * sensor or a negative entry for an id that is not registered, so that an unregistered sensor
 * costs one lookup per refresh, not one per reading. The daemon reloads every registered sensor
 * periodically (registry_load(), which drops the negative entries) and looks up the ids it has
 * never seen in one query per batch (registry_fetch()), so a sensor registered since the last
 * reload gets its limits from its first reading on.
 */
#pragma once

#include <stdbool.h>
#include <stddef.h>

#include "db.h"
#include "detector.h"

#define REGISTRY_TYPE_MAX 64

typedef struct registry_sensor {
    bool registered;                  /* false: a negative entry */
    char type[REGISTRY_TYPE_MAX + 1]; /* "" when not registered */
    double min, max;                  /* NAN: no limit on that side */
} registry_sensor_t;

typedef struct registry registry_t;

/** An empty registry. 0 or -ENOMEM. */
int registry_new(registry_t **ret_reg);

/** Frees. Accepts NULL. */
void registry_free(registry_t *reg);

/** The entry of (@project, @sensor), positive or negative, or NULL when never looked up. The
 *  pointer is valid until the next change to the registry. */
const registry_sensor_t *registry_get(const registry_t *reg, const char *project,
                                      const char *sensor);

/** Sets the entry of (@project, @sensor) (strings copied; @type NULL for a negative entry).
 *  0, -EINVAL (a type longer than REGISTRY_TYPE_MAX) or -ENOMEM. */
int registry_put(registry_t *reg, const char *project, const char *sensor, const char *type,
                 double min, double max);

/** The number of entries, negative ones included. */
size_t registry_count(const registry_t *reg);

/**
 * Replaces the whole registry with every row of `sensors`. On failure the registry is left as
 * it was. 0, or a db errno (db_errmsg() says why), or -ENOMEM.
 */
int registry_load(registry_t *reg, db_t *db);

/**
 * Looks up the @n sensors (@projects[i], @sensors[i]) in one query and enters each, as
 * registered or as a negative entry. 0, or a db errno, or -ENOMEM.
 */
int registry_fetch(registry_t *reg, db_t *db, const char *const *projects,
                   const char *const *sensors, size_t n);

/* ---- Thresholds ------------------------------------------------------------------------------ */

/* Thresholds loaded from detector_thresholds: a detector_config_t whose types it owns. */
typedef struct registry_thresholds {
    detector_config_t conf;
    detector_type_conf_t *types; /* conf.types; type names owned */
    bool has_default;            /* the table had a 'default' row */
} registry_thresholds_t;

/**
 * Loads detector_thresholds into @ret (release with registry_thresholds_clear()): the 'default'
 * row becomes conf.defaults, every other row a type; without a 'default' row, @fallback's
 * defaults apply. conf.max_sensors is @fallback's. 0, a db errno, -EINVAL for a row the detector
 * refuses (with its type in @errbuf), or -ENOMEM.
 */
int registry_thresholds_load(db_t *db, const detector_config_t *fallback,
                             registry_thresholds_t *ret, char *errbuf, size_t errsize);

/** Frees what registry_thresholds_load() filled in. Accepts a zeroed struct. */
void registry_thresholds_clear(registry_thresholds_t *t);

/** True when @a and @b hold the same thresholds (to log changes only). */
bool registry_thresholds_equal(const registry_thresholds_t *a, const registry_thresholds_t *b);

/* ---- Snapshots ------------------------------------------------------------------------------- */

/**
 * Writes @det's state (detector_snapshot()) as the snapshot of (@consumer, @topic, @partition),
 * replacing the previous one; @next_offset is the first offset the state has not learnt.
 * 0, a db errno (db_errmsg() says why), or -ENOMEM.
 */
int registry_snapshot_save(db_t *db, const char *consumer, const char *topic, int32_t partition,
                           int64_t next_offset, const detector_t *det);

/**
 * Restores into @det the snapshot of (@consumer, @topic, @partition) when it was taken less than
 * @max_age_s seconds ago. Returns 1 with its next offset, the sensors restored and its age in
 * seconds; 0 when there is no recent one (@det untouched); -EBADMSG for an unreadable snapshot
 * (@det is then empty); a db errno; or -ENOMEM.
 */
int registry_snapshot_load(db_t *db, const char *consumer, const char *topic, int32_t partition,
                           int64_t max_age_s, detector_t *det, int64_t *ret_next_offset,
                           size_t *ret_count, int64_t *ret_age_s);
