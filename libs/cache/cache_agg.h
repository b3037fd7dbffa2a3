/* cache_agg.h: the dashboard aggregates in Redis, and the exactly-once way daemons update them.
 *
 * The layout (docs/aggregates.md is the reference for readers such as the gateway's dashboard):
 *   sb:rpm:<project_id>:<unix_minute>   string: readings whose ts falls in that UTC minute;
 *                                       expires (EXPIREAT) 48 h after the minute ends
 *   sb:sensor:<project_id>:<sensor_id>  hash: count, min, max, last_value, last_ts
 *   sb:sensors:<project_id>             set: the sensor ids that have readings
 *   sb:anomalies:<project_id>           hash: total, zscore, limit_low, limit_high, rate
 *   sb:orders:<org_id>                  hash: <order status> -> count (sb-order-processor)
 *   sb:agg:offset:<consumer>            hash: "<topic>:<partition>" -> last applied offset
 *   sb:agg:rebuild                      exists while `sbctl aggregates rebuild` runs
 * Numbers are decimal strings: counts are integers, values the shortest text that reads back as
 * the same double (cache_agg_format_double()), times RFC 3339 UTC with 6 fractional digits.
 *
 * A writer (cache_agg_writer_t) holds the effects of records a daemon has made durable (rows
 * committed in PostgreSQL), per topic partition and in offset order, until they are applied.
 * It applies them with one Lua script call per chunk of a partition's offsets which, in one
 * atomic step, checks the partition's last applied offset in sb:agg:offset:<consumer>, applies
 * the chunk only when it lies wholly beyond it (a chunk that overlaps it is cut and sent again),
 * and records the chunk's last offset. A replayed record is therefore never counted twice, and a
 * record that was never applied (a crash, the pending cap) shows as a gap in the offsets, which
 * the writer reports. While sb:agg:rebuild exists, the script changes nothing and the writer
 * keeps its items for later.
 *
 * Redis being down never loses items up to the cap given to cache_agg_writer_new(): they wait,
 * and cache_agg_writer_flush() sends them once Redis answers again, backing off between tries.
 */
#pragma once

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "cache.h"

#define CACHE_AGG_LOCK_KEY  "sb:agg:rebuild"
#define CACHE_AGG_RPM_TTL_S (48 * 3600)
#define CACHE_AGG_KEY_MAX   192 /* enough for every key of the layout, NUL included */
#define CACHE_AGG_NAME_MAX  64  /* a sensor id (contract: 64), or a list of checks */
#define CACHE_AGG_NUM_MAX   64  /* a formatted double or timestamp, NUL included */

/* ---- Keys and formats ------------------------------------------------------------------------ */

/* Each writes the key into @buf and returns its length, or -ENOBUFS when @size is too small. */
int cache_agg_key_rpm(char *buf, size_t size, const char *project_id, int64_t minute);
int cache_agg_key_sensor(char *buf, size_t size, const char *project_id, const char *sensor_id);
int cache_agg_key_sensors(char *buf, size_t size, const char *project_id);
int cache_agg_key_anomalies(char *buf, size_t size, const char *project_id);
int cache_agg_key_orders(char *buf, size_t size, const char *org_id);
int cache_agg_key_offsets(char *buf, size_t size, const char *consumer);

/** The Unix minute of @ts_us (floor division, also before 1970). */
int64_t cache_agg_minute(int64_t ts_us);

/** When the per-minute counter of @minute expires (Unix seconds): 48 h after the minute ends.
 *  A minute whose counter would already have expired is not counted at all. */
int64_t cache_agg_rpm_expireat(int64_t minute);

/** The shortest "%.*g" text (1 to 17 significant digits) that strtod() reads back as exactly
 *  @v, without an exponent for magnitudes from 1 to 1e17: "0.1", "-4.25", "30", "1e-07". */
void cache_agg_format_double(double v, char buf[CACHE_AGG_NUM_MAX]);

/** "YYYY-MM-DDTHH:MM:SS.ffffffZ" (UTC, always 6 fractional digits, so that the strings of two
 *  times compare like the times). */
void cache_agg_format_ts(int64_t ts_us, char buf[CACHE_AGG_NUM_MAX]);

/* ---- The rebuild lock ------------------------------------------------------------------------ */

/** Takes sb:agg:rebuild with @token (a random string) for @ttl_ms. 0, -EBUSY when someone holds
 *  it, or a cache errno. */
int cache_agg_lock(cache_t *cache, const char *token, unsigned ttl_ms);

/** Extends the lock when @token still holds it. 0, -ENOLCK when it does not, or a cache errno. */
int cache_agg_lock_refresh(cache_t *cache, const char *token, unsigned ttl_ms);

/** Releases the lock when @token holds it. 0, -ENOLCK when it does not, or a cache errno. */
int cache_agg_unlock(cache_t *cache, const char *token);

/* ---- The writer ------------------------------------------------------------------------------ */

typedef enum cache_agg_kind {
    CACHE_AGG_READING, /* one row of sensor_readings: rpm, sensor hash, sensors set */
    CACHE_AGG_ANOMALY, /* one row of anomalies: sb:anomalies total and one field per check */
} cache_agg_kind_t;

/* The effect of one record. */
typedef struct cache_agg_item {
    int64_t offset;
    cache_agg_kind_t kind;
    char project_id[37];
    char name[CACHE_AGG_NAME_MAX + 1]; /* READING: the sensor id; ANOMALY: checks, "zscore,rate" */
    int64_t ts_us;                     /* READING */
    double value;                      /* READING, finite */
} cache_agg_item_t;

/* Cumulative counts since cache_agg_writer_new(). */
typedef struct cache_agg_stats {
    uint64_t applied;     /* items applied */
    uint64_t skipped;     /* items Redis had applied already (replays) */
    uint64_t dropped;     /* items given up: the pending cap, a revoked partition, a script error */
    uint64_t gap_offsets; /* offsets Redis never saw applied before a later chunk (lost updates) */
    uint64_t calls;       /* script calls that reached Redis */
} cache_agg_stats_t;

typedef struct cache_agg_writer cache_agg_writer_t;

/**
 * Creates a writer over @cache (borrowed: it must outlive the writer) for @consumer (copied;
 * names the offsets hash). At most @max_items items wait (>= 1). 0, -EINVAL or -ENOMEM.
 */
int cache_agg_writer_new(cache_t *cache, const char *consumer, size_t max_items,
                         cache_agg_writer_t **ret_writer);

/** Frees the writer and whatever it still holds. Accepts NULL. */
void cache_agg_writer_free(cache_agg_writer_t *w);

/**
 * Adds the effects of offsets [@first, @last] of @topic/@partition, now durable: @items (copied,
 * in ascending offset order, each within the range; records without an effect simply have no
 * item). A range that overlaps what is already pending (a replay) only adds the part beyond it.
 * When the items would exceed the cap, every pending item is dropped first (counted in
 * stats.dropped; Redis then sees a gap). 0, -EINVAL (bad range or order), or -ENOMEM.
 */
int cache_agg_writer_add(cache_agg_writer_t *w, const char *topic, int32_t partition, int64_t first,
                         int64_t last, const cache_agg_item_t *items, size_t n);

/**
 * Applies what is pending. 0 when nothing is pending any more; -EBUSY when a rebuild holds the
 * lock (kept for later); a negative errno of the cache (kept; the writer then backs off from
 * 100 ms to 5 s, and calls within the backoff return the same errno without touching Redis);
 * -EINVAL when Redis refused a chunk (e.g. a key of the wrong type: that chunk is dropped, the
 * rest applied; cache_errmsg() says why).
 */
int cache_agg_writer_flush(cache_agg_writer_t *w);

/** Gives up what is pending for @topic/@partition (a revoked partition; its next owner starts
 *  from the committed offsets). */
void cache_agg_writer_drop(cache_agg_writer_t *w, const char *topic, int32_t partition);

/** Items waiting. */
size_t cache_agg_writer_pending(const cache_agg_writer_t *w);

/** True when no partition has anything to apply (items or a range whose offset to record). */
bool cache_agg_writer_idle(const cache_agg_writer_t *w);

const cache_agg_stats_t *cache_agg_writer_stats(const cache_agg_writer_t *w);
