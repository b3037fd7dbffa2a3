/* detector.h: the statistics of sb-anomaly-detector, per sensor, without I/O.
 *
 * One detector_t holds the state of the sensors of one Kafka partition: the daemon keeps one per
 * assigned partition and frees it (or calls detector_forget_all()) on revoke. Readings of a sensor
 * share a partition (the record key is <project_id>/<sensor_id>), so no state is ever shared.
 * Everything here is deterministic: the same readings in the same order give the same verdicts.
 *
 * Each reading goes through three checks, reported as DETECTOR_* bits:
 *
 *  - Hard limits (DETECTOR_LIMIT_LOW/HIGH): value < min or value > max, when the sensor has
 *    limits (detector_sensor_set_limits(), from the sensor's registration).
 *  - Z-score (DETECTOR_ZSCORE): |value - mean| / stddev > z, against an exponentially weighted
 *    mean and variance. The first `warmup` readings are learnt, not judged. The weight is
 *    max(alpha, 1/(n+1)), so the warm-up computes the plain mean and variance of the first
 *    readings instead of an EWMA biased towards the first value.
 *  - Rate of change (DETECTOR_RATE): |value - previous| / seconds between them > max_rate, when
 *    max_rate > 0. Only a reading newer than the newest one seen has a rate: an out-of-order or
 *    equal timestamp is still judged by the other checks but gets no rate and does not move the
 *    "previous" reading. A return from a spike is itself a fast change and fires too.
 *
 * What a reading teaches the baseline (so that anomalies do not poison it):
 *  - A z-score anomaly updates the statistics with the value clamped to mean ± z·stddev
 *    (winsorising). A lone spike moves the mean by at most alpha·z·stddev; a real level shift
 *    raises the variance with every clamped reading, so the detector accepts the new level after
 *    a few alarms instead of alarming forever (which skipping anomalies would do).
 *  - A value beyond the hard limits does not update the statistics at all: it is out of the
 *    physically possible range (often an error code like -999), not information about the process.
 *  - An exact repeat of the last reading (same ts_us and value: a redelivered record) is judged
 *    but does not update anything, so redelivery cannot pull the baseline.
 * During warm-up nothing is clamped (there is no trustworthy stddev yet).
 *
 * A sensor whose value is constant has a variance that decays towards 0; min_stddev (per type)
 * sets a floor in the sensor's unit, e.g. its resolution, so that the next small change is not an
 * infinite z-score. Without it the floor is 1e-9·max(1, |mean|).
 *
 * The number of sensors is capped (max_sensors). At the cap, the least recently used sensor is
 * evicted to make room (its statistics and limits are dropped; it warms up again when it comes
 * back): a partition whose set of sensors drifts keeps working, and memory stays bounded.
 * detector_result_t.new_sensor tells the caller that a sensor's state was (re)created, which is
 * when to set its limits again.
 */
#pragma once

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <jansson.h>

#define DETECTOR_MAX_SENSORS_DEFAULT 100000

/* Which checks fired, in detector_result_t.fired. */
enum {
    DETECTOR_LIMIT_LOW = 1 << 0,  /* value < the sensor's min */
    DETECTOR_LIMIT_HIGH = 1 << 1, /* value > the sensor's max */
    DETECTOR_ZSCORE = 1 << 2,     /* |z| > the type's z threshold */
    DETECTOR_RATE = 1 << 3,       /* |Δvalue/Δt| > the type's max_rate */
};

/* Thresholds for one sensor type. */
typedef struct detector_type_conf {
    const char *type;  /* sensor type ("temperature"); ignored in detector_config_t.defaults */
    double alpha;      /* EWMA weight of a new reading, in (0, 1] */
    double z;          /* z-score threshold, > 0 */
    uint32_t warmup;   /* readings learnt before z-scores are judged, >= 2 */
    double max_rate;   /* units per second; 0 turns the rate check off */
    double min_stddev; /* floor of the stddev in the sensor's unit; 0 = relative floor only */
} detector_type_conf_t;

typedef struct detector_config {
    size_t max_sensors;                /* cap on sensors; 0 means DETECTOR_MAX_SENSORS_DEFAULT */
    detector_type_conf_t defaults;     /* for sensors whose type is not in @types (or NULL) */
    const detector_type_conf_t *types; /* borrowed; detector_new() copies it */
    size_t ntypes;
} detector_config_t;

/* The verdict on one reading. */
typedef struct detector_result {
    unsigned fired;  /* DETECTOR_* bits; 0 = normal */
    double z;        /* (value - mean) / stddev; 0 while warming up */
    double mean;     /* the expectation the reading was judged against (before it was learnt) */
    double stddev;   /* idem, after the floor; 0 for a sensor's first reading */
    double rate;     /* |Δvalue|/s against the previous reading; 0 when not computed */
    bool warming;    /* z-score not judged: fewer than `warmup` readings learnt */
    bool new_sensor; /* this reading created the sensor's state (first seen, or after eviction) */
} detector_result_t;

typedef struct detector detector_t;

/** Fills @conf with the defaults: alpha 0.05, z 4.5, warmup 30, rate check off, no types. */
void detector_config_init(detector_config_t *conf);

/**
 * Creates a detector. @conf and its types table are copied (the caller keeps ownership).
 * Returns 0, -EINVAL for a threshold out of range or a type listed twice, or -ENOMEM.
 */
int detector_new(const detector_config_t *conf, detector_t **ret_det);

/**
 * Replaces the thresholds (@conf's defaults and types, copied; max_sensors is kept) and keeps
 * every sensor's state, so that a changed threshold applies from the next reading. A sensor
 * already past a shorter warm-up stays judged; one short of a longer warm-up learns on.
 * Returns 0, or -EINVAL / -ENOMEM with the old thresholds still in force.
 */
int detector_config_set(detector_t *det, const detector_config_t *conf);

/** Frees the detector and every sensor's state. Accepts NULL. */
void detector_free(detector_t *det);

/**
 * Judges one reading of sensor (@project, @sensor) of type @type (NULL: the defaults), then
 * learns from it as described above. The strings are borrowed. Fills @ret_result.
 * Returns 0, -EINVAL for a NULL id or a non-finite value, or -ENOMEM (state unchanged).
 */
int detector_observe(detector_t *det, const char *project, const char *sensor, const char *type,
                     double value, int64_t ts_us, detector_result_t *ret_result);

/**
 * Sets a sensor's hard limits; NAN leaves that side open. Creates the sensor's state when it has
 * none (counting towards the cap). Returns 0, -EINVAL (NULL id, min > max, infinite limit) or
 * -ENOMEM.
 */
int detector_sensor_set_limits(detector_t *det, const char *project, const char *sensor, double min,
                               double max);

/** Drops every sensor's state (on partition revoke). Counters are kept. */
void detector_forget_all(detector_t *det);

/** Sensors currently tracked. */
size_t detector_sensor_count(const detector_t *det);

/** Sensors evicted at the cap since detector_new(). */
uint64_t detector_eviction_count(const detector_t *det);

/**
 * A sensor's state as a small JSON object, so that a newly assigned partition can restore it
 * instead of warming up: {"version":1,"n":..,"mean":..,"var":..} plus "min"/"max" when set and
 * "last_ts_us"/"last_value" when known. Dump the doubles with 17 significant digits (jansson's
 * default) for an exact round trip. On success hands the caller a new reference in @ret_json.
 * Returns 0, -ENOENT when the sensor has no state, or -ENOMEM.
 */
int detector_sensor_snapshot(const detector_t *det, const char *project, const char *sensor,
                             json_t **ret_json);

/**
 * Replaces (or creates) a sensor's state from a detector_sensor_snapshot() object (borrowed).
 * Numbers may be integers or reals (documents decoded with JSON_DECODE_INT_AS_REAL restore too).
 * Returns 0, -EINVAL for a malformed snapshot (state unchanged), or -ENOMEM.
 */
int detector_sensor_restore(detector_t *det, const char *project, const char *sensor,
                            const json_t *snapshot);

/**
 * The state of every sensor, least recently used first, as one JSON document:
 * {"version":1,"sensors":[{"project":"..","sensor":"..","state":{<detector_sensor_snapshot()>}},
 * ...]}. A partition's snapshot, to restore on another consumer after a rebalance. On success
 * hands the caller a new reference in @ret_json. Returns 0 or -ENOMEM.
 */
int detector_snapshot(const detector_t *det, json_t **ret_json);

/**
 * Replaces every sensor's state with a detector_snapshot() document (borrowed), keeping its
 * least-recently-used order (beyond max_sensors, the least recently used are left out).
 * Returns 0 and the number of sensors restored in @ret_count (may be NULL); -EINVAL for a
 * malformed document, or -ENOMEM: the detector is then empty (its sensors warm up again).
 */
int detector_restore(detector_t *det, const json_t *snapshot, size_t *ret_count);
