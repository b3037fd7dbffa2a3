/* detector.c: per-sensor streaming statistics; see detector.h for the rules. */
#include "detector.h"

#include <errno.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#define SNAPSHOT_VERSION 1
#define BUCKETS_MIN      64

typedef struct detector_sensor detector_sensor_t;

struct detector_sensor {
    detector_sensor_t *hnext;       /* bucket chain */
    detector_sensor_t *prev, *next; /* LRU list, most recently used first */
    uint64_t hash;
    uint64_t n; /* readings learnt */
    double mean, var;
    double min, max; /* NAN: no limit */
    bool has_last;
    int64_t last_ts_us; /* the newest reading seen, for the rate check */
    double last_value;
    size_t project_len, sensor_len;
    char key[]; /* project '\0' sensor '\0' */
};

struct detector {
    detector_type_conf_t defaults;
    detector_type_conf_t *types; /* type names owned */
    size_t ntypes;
    size_t max_sensors;
    detector_sensor_t **buckets;
    size_t nbuckets; /* a power of two */
    size_t count;
    detector_sensor_t *lru_head, *lru_tail;
    uint64_t evictions;
};

void detector_config_init(detector_config_t *conf)
{
    /* alpha 0.05 remembers about the last 40 readings, long enough for a usable stddev and short
     * enough to follow slow drift and daily cycles. A stddev estimated from ~40 readings is
     * itself noisy, which gives z-scores heavier tails than a Gaussian's: z 4.5 here alarms
     * about as rarely on plain noise as z 4.0 would with a known stddev (on the synthetic
     * benchmark in tests/services/anomaly-detector, 4.0 gave 5x the false alarms of 4.5 and
     * 5.0 missed twice as many events). warmup 30 readings is where a sample stddev stops being
     * wildly off. */
    *conf = (detector_config_t){
        .max_sensors = DETECTOR_MAX_SENSORS_DEFAULT,
        .defaults = {.alpha = 0.05, .z = 4.5, .warmup = 30, .max_rate = 0, .min_stddev = 0},
    };
}

static bool type_conf_valid(const detector_type_conf_t *tc)
{
    return tc->alpha > 0 && tc->alpha <= 1 && isfinite(tc->z) && tc->z > 0 && tc->warmup >= 2 &&
           isfinite(tc->max_rate) && tc->max_rate >= 0 && isfinite(tc->min_stddev) &&
           tc->min_stddev >= 0;
}

static void types_free(detector_type_conf_t *types, size_t n)
{
    for (size_t i = 0; i < n; i++)
        free((char *)types[i].type);
    free(types);
}

/* Checks @conf's thresholds and copies its types table into @ret_types (NULL when empty). */
static int types_copy(const detector_config_t *conf, detector_type_conf_t **ret_types)
{
    detector_type_conf_t *types = NULL;

    if (!type_conf_valid(&conf->defaults))
        return -EINVAL;
    for (size_t i = 0; i < conf->ntypes; i++) {
        if (!conf->types[i].type || !type_conf_valid(&conf->types[i]))
            return -EINVAL;
        for (size_t j = 0; j < i; j++)
            if (strcmp(conf->types[i].type, conf->types[j].type) == 0)
                return -EINVAL;
    }
    if (conf->ntypes && !(types = calloc(conf->ntypes, sizeof(*types))))
        return -ENOMEM;
    for (size_t i = 0; i < conf->ntypes; i++) {
        types[i] = conf->types[i];
        if (!(types[i].type = strdup(conf->types[i].type))) {
            types_free(types, i);
            return -ENOMEM;
        }
    }
    *ret_types = types;
    return 0;
}

int detector_config_set(detector_t *det, const detector_config_t *conf)
{
    detector_type_conf_t *types = NULL;
    int r;

    if (!det || !conf)
        return -EINVAL;
    if ((r = types_copy(conf, &types)) < 0)
        return r;
    types_free(det->types, det->ntypes);
    det->types = types;
    det->ntypes = conf->ntypes;
    det->defaults = conf->defaults;
    det->defaults.type = NULL;
    return 0;
}

int detector_new(const detector_config_t *conf, detector_t **ret_det)
{
    detector_t *det = NULL;
    int r;

    if (!conf || !ret_det)
        return -EINVAL;
    det = calloc(1, sizeof(*det));
    if (!det)
        return -ENOMEM;
    det->max_sensors = conf->max_sensors ? conf->max_sensors : DETECTOR_MAX_SENSORS_DEFAULT;
    if ((r = detector_config_set(det, conf)) < 0) {
        free(det);
        return r;
    }
    det->nbuckets = BUCKETS_MIN;
    det->buckets = calloc(det->nbuckets, sizeof(*det->buckets));
    if (!det->buckets) {
        r = -ENOMEM;
        goto fail;
    }
    *ret_det = det;
    return 0;

fail:
    detector_free(det);
    return r;
}

void detector_forget_all(detector_t *det)
{
    if (!det)
        return;
    for (detector_sensor_t *s = det->lru_head, *next; s; s = next) {
        next = s->next;
        free(s);
    }
    memset(det->buckets, 0, det->nbuckets * sizeof(*det->buckets));
    det->lru_head = det->lru_tail = NULL;
    det->count = 0;
}

void detector_free(detector_t *det)
{
    if (!det)
        return;
    if (det->buckets)
        detector_forget_all(det);
    free(det->buckets);
    types_free(det->types, det->ntypes);
    free(det);
}

size_t detector_sensor_count(const detector_t *det)
{
    return det ? det->count : 0;
}

uint64_t detector_eviction_count(const detector_t *det)
{
    return det ? det->evictions : 0;
}

static const detector_type_conf_t *type_conf(const detector_t *det, const char *type)
{
    /* A linear scan: the table holds a handful of types. */
    if (type)
        for (size_t i = 0; i < det->ntypes; i++)
            if (strcmp(det->types[i].type, type) == 0)
                return &det->types[i];
    return &det->defaults;
}

/* FNV-1a over both ids, the NUL between them included so that ("ab","c") != ("a","bc"). */
static uint64_t key_hash(const char *project, size_t plen, const char *sensor, size_t slen)
{
    uint64_t h = 0xcbf29ce484222325ULL;
    for (size_t i = 0; i <= plen; i++) {
        h ^= (unsigned char)project[i];
        h *= 0x100000001b3ULL;
    }
    for (size_t i = 0; i < slen; i++) {
        h ^= (unsigned char)sensor[i];
        h *= 0x100000001b3ULL;
    }
    return h;
}

static void lru_unlink(detector_t *det, detector_sensor_t *s)
{
    if (s->prev)
        s->prev->next = s->next;
    else
        det->lru_head = s->next;
    if (s->next)
        s->next->prev = s->prev;
    else
        det->lru_tail = s->prev;
    s->prev = s->next = NULL;
}

static void lru_push_front(detector_t *det, detector_sensor_t *s)
{
    s->prev = NULL;
    s->next = det->lru_head;
    if (det->lru_head)
        det->lru_head->prev = s;
    det->lru_head = s;
    if (!det->lru_tail)
        det->lru_tail = s;
}

static void bucket_unlink(detector_t *det, detector_sensor_t *s)
{
    detector_sensor_t **p = &det->buckets[s->hash & (det->nbuckets - 1)];
    while (*p != s)
        p = &(*p)->hnext;
    *p = s->hnext;
}

static detector_sensor_t *sensor_find(const detector_t *det, const char *project,
                                      const char *sensor)
{
    size_t plen = strlen(project), slen = strlen(sensor);
    uint64_t h = key_hash(project, plen, sensor, slen);
    for (detector_sensor_t *s = det->buckets[h & (det->nbuckets - 1)]; s; s = s->hnext)
        if (s->hash == h && s->project_len == plen && s->sensor_len == slen &&
            memcmp(s->key, project, plen) == 0 && memcmp(s->key + plen + 1, sensor, slen) == 0)
            return s;
    return NULL;
}

/* Doubles the table when the load passes 1; a failed grow is harmless (longer chains). */
static void buckets_grow(detector_t *det)
{
    size_t n = det->nbuckets * 2;
    detector_sensor_t **b = calloc(n, sizeof(*b));
    if (!b)
        return;
    for (size_t i = 0; i < det->nbuckets; i++)
        for (detector_sensor_t *s = det->buckets[i], *next; s; s = next) {
            next = s->hnext;
            s->hnext = b[s->hash & (n - 1)];
            b[s->hash & (n - 1)] = s;
        }
    free(det->buckets);
    det->buckets = b;
    det->nbuckets = n;
}

/* Finds the sensor's state, creating it (and evicting the least recently used sensor at the
 * cap) when absent, and marks it most recently used. */
static int sensor_get(detector_t *det, const char *project, const char *sensor,
                      detector_sensor_t **ret_s, bool *ret_created)
{
    detector_sensor_t *s = sensor_find(det, project, sensor);
    size_t plen, slen;

    *ret_created = false;
    if (s) {
        lru_unlink(det, s);
        lru_push_front(det, s);
        *ret_s = s;
        return 0;
    }

    plen = strlen(project);
    slen = strlen(sensor);
    s = calloc(1, sizeof(*s) + plen + slen + 2);
    if (!s)
        return -ENOMEM;
    s->hash = key_hash(project, plen, sensor, slen);
    s->project_len = plen;
    s->sensor_len = slen;
    memcpy(s->key, project, plen + 1);
    memcpy(s->key + plen + 1, sensor, slen + 1);
    s->min = s->max = NAN;

    if (det->count >= det->max_sensors) {
        detector_sensor_t *old = det->lru_tail;
        bucket_unlink(det, old);
        lru_unlink(det, old);
        free(old);
        det->count--;
        det->evictions++;
    }
    if (det->count >= det->nbuckets)
        buckets_grow(det);
    s->hnext = det->buckets[s->hash & (det->nbuckets - 1)];
    det->buckets[s->hash & (det->nbuckets - 1)] = s;
    lru_push_front(det, s);
    det->count++;
    *ret_s = s;
    *ret_created = true;
    return 0;
}

static double stddev_floor(const detector_type_conf_t *tc, double mean)
{
    double rel = 1e-9 * fmax(1.0, fabs(mean));
    return fmax(tc->min_stddev, rel);
}

int detector_observe(detector_t *det, const char *project, const char *sensor, const char *type,
                     double value, int64_t ts_us, detector_result_t *ret_result)
{
    const detector_type_conf_t *tc;
    detector_sensor_t *s;
    detector_result_t res = {0};
    bool created, judged, duplicate;
    int r;

    if (!det || !project || !sensor || !ret_result || !isfinite(value))
        return -EINVAL;
    tc = type_conf(det, type);
    r = sensor_get(det, project, sensor, &s, &created);
    if (r < 0)
        return r;
    res.new_sensor = created;

    if (!isnan(s->min) && value < s->min)
        res.fired |= DETECTOR_LIMIT_LOW;
    if (!isnan(s->max) && value > s->max)
        res.fired |= DETECTOR_LIMIT_HIGH;

    duplicate = s->has_last && ts_us == s->last_ts_us && value == s->last_value;
    if (tc->max_rate > 0 && s->has_last && ts_us > s->last_ts_us) {
        res.rate = fabs(value - s->last_value) / ((double)(ts_us - s->last_ts_us) / 1e6);
        if (res.rate > tc->max_rate)
            res.fired |= DETECTOR_RATE;
    }

    res.mean = s->mean;
    res.stddev = s->n ? fmax(sqrt(s->var), stddev_floor(tc, s->mean)) : 0;
    judged = s->n >= tc->warmup;
    res.warming = !judged;
    if (judged) {
        res.z = (value - res.mean) / res.stddev;
        if (fabs(res.z) > tc->z)
            res.fired |= DETECTOR_ZSCORE;
    }

    if (!duplicate && !(res.fired & (DETECTOR_LIMIT_LOW | DETECTOR_LIMIT_HIGH))) {
        double x = value;
        if (res.fired & DETECTOR_ZSCORE)
            x = res.mean + copysign(tc->z * res.stddev, value - res.mean);
        /* 1/(n+1) for the first 1/alpha readings: the exact running mean and (population)
         * variance, then the exponential weights. */
        double a = fmax(tc->alpha, 1.0 / (double)(s->n + 1));
        double diff = x - s->mean, incr = a * diff;
        s->mean += incr;
        s->var = (1 - a) * (s->var + diff * incr);
        s->n++;
    }
    if (!s->has_last || ts_us > s->last_ts_us) {
        s->has_last = true;
        s->last_ts_us = ts_us;
        s->last_value = value;
    }
    *ret_result = res;
    return 0;
}

int detector_sensor_set_limits(detector_t *det, const char *project, const char *sensor, double min,
                               double max)
{
    detector_sensor_t *s;
    bool created;
    int r;

    if (!det || !project || !sensor || isinf(min) || isinf(max) || min > max)
        return -EINVAL;
    r = sensor_get(det, project, sensor, &s, &created);
    if (r < 0)
        return r;
    s->min = min;
    s->max = max;
    return 0;
}

int detector_sensor_snapshot(const detector_t *det, const char *project, const char *sensor,
                             json_t **ret_json)
{
    const detector_sensor_t *s;
    json_t *j = NULL;

    if (!det || !project || !sensor || !ret_json)
        return -EINVAL;
    s = sensor_find(det, project, sensor);
    if (!s)
        return -ENOENT;
    j = json_pack("{s:i, s:I, s:f, s:f}", "version", SNAPSHOT_VERSION, "n", (json_int_t)s->n,
                  "mean", s->mean, "var", s->var);
    if (!j)
        goto fail;
    if (!isnan(s->min) && json_object_set_new(j, "min", json_real(s->min)) < 0)
        goto fail;
    if (!isnan(s->max) && json_object_set_new(j, "max", json_real(s->max)) < 0)
        goto fail;
    if (s->has_last &&
        (json_object_set_new(j, "last_ts_us", json_integer((json_int_t)s->last_ts_us)) < 0 ||
         json_object_set_new(j, "last_value", json_real(s->last_value)) < 0))
        goto fail;
    *ret_json = j;
    return 0;

fail:
    json_decref(j);
    return -ENOMEM;
}

/* A finite number member; absent is 1 (when optional), malformed is -EINVAL. */
static int snap_number(const json_t *snap, const char *key, bool optional, double *ret)
{
    const json_t *v = json_object_get(snap, key);
    if (!v)
        return optional ? 1 : -EINVAL;
    if (!json_is_number(v) || !isfinite(json_number_value(v)))
        return -EINVAL;
    *ret = json_number_value(v);
    return 0;
}

/* An integer member, as jansson's integer or as an integral real below 2^53. */
static int snap_int(const json_t *snap, const char *key, bool optional, int64_t *ret)
{
    const json_t *v = json_object_get(snap, key);
    if (!v)
        return optional ? 1 : -EINVAL;
    if (json_is_integer(v)) {
        *ret = json_integer_value(v);
        return 0;
    }
    double d = json_is_real(v) ? json_real_value(v) : NAN;
    if (!(fabs(d) < 9007199254740992.0) || d != floor(d))
        return -EINVAL;
    *ret = (int64_t)d;
    return 0;
}

int detector_sensor_restore(detector_t *det, const char *project, const char *sensor,
                            const json_t *snapshot)
{
    detector_sensor_t *s;
    int64_t version, n, last_ts_us = 0;
    double mean, var, min = NAN, max = NAN, last_value = 0;
    bool created;
    int r, has_ts, has_value;

    if (!det || !project || !sensor || !json_is_object(snapshot))
        return -EINVAL;
    /* Everything is checked before the state is touched. */
    if (snap_int(snapshot, "version", false, &version) < 0 || version != SNAPSHOT_VERSION ||
        snap_int(snapshot, "n", false, &n) < 0 || n < 0 ||
        snap_number(snapshot, "mean", false, &mean) < 0 ||
        snap_number(snapshot, "var", false, &var) < 0 || var < 0 ||
        snap_number(snapshot, "min", true, &min) < 0 ||
        snap_number(snapshot, "max", true, &max) < 0 || min > max)
        return -EINVAL;
    has_ts = snap_int(snapshot, "last_ts_us", true, &last_ts_us);
    has_value = snap_number(snapshot, "last_value", true, &last_value);
    if (has_ts < 0 || has_value < 0 || has_ts != has_value)
        return -EINVAL;

    r = sensor_get(det, project, sensor, &s, &created);
    if (r < 0)
        return r;
    s->n = (uint64_t)n;
    s->mean = mean;
    s->var = var;
    s->min = min;
    s->max = max;
    s->has_last = has_ts == 0;
    s->last_ts_us = last_ts_us;
    s->last_value = last_value;
    return 0;
}

int detector_snapshot(const detector_t *det, json_t **ret_json)
{
    json_t *doc = NULL, *arr = json_array();

    if (!arr)
        return -ENOMEM;
    for (const detector_sensor_t *s = det->lru_tail; s; s = s->prev) {
        const char *project = s->key, *sensor = s->key + s->project_len + 1;
        json_t *state = NULL;
        if (detector_sensor_snapshot(det, project, sensor, &state) < 0 ||
            json_array_append_new(arr, json_pack("{s:s, s:s, s:o}", "project", project, "sensor",
                                                 sensor, "state", state)) < 0)
            goto fail;
    }
    doc = json_pack("{s:i, s:o}", "version", SNAPSHOT_VERSION, "sensors", arr);
    if (!doc)
        return -ENOMEM; /* json_pack's "o" consumed arr */
    *ret_json = doc;
    return 0;

fail:
    json_decref(arr);
    return -ENOMEM;
}

int detector_restore(detector_t *det, const json_t *snapshot, size_t *ret_count)
{
    const json_t *sensors = json_object_get(snapshot, "sensors"), *e;
    int64_t version;
    size_t i, n = 0;
    int r = -EINVAL;

    if (!det)
        return -EINVAL;
    detector_forget_all(det);
    if (!json_is_object(snapshot) || snap_int(snapshot, "version", false, &version) < 0 ||
        version != SNAPSHOT_VERSION || !json_is_array(sensors))
        return -EINVAL;
    json_array_foreach(sensors, i, e)
    {
        const char *project = json_string_value(json_object_get(e, "project"));
        const char *sensor = json_string_value(json_object_get(e, "sensor"));
        if (!project || !sensor ||
            (r = detector_sensor_restore(det, project, sensor, json_object_get(e, "state"))) < 0)
            goto fail;
        n++;
    }
    if (ret_count)
        *ret_count = n < det->count ? n : det->count;
    return 0;

fail:
    detector_forget_all(det);
    return r < 0 ? r : -EINVAL;
}
