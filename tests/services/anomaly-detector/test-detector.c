/* test-detector.c: sb-anomaly-detector's per-sensor statistics, without Kafka. */
#include <criterion/criterion.h>
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <string.h>

#include <jansson.h>

#include "detector.h"

#define PROJECT "5e1d2c3b-4a59-4876-8a7b-9c0d1e2f3a4b"
#define MINUTE  60000000LL

/* A seeded PRNG (splitmix64) and Box-Muller normals, so every run sees the same series. */
typedef struct rng {
    uint64_t s;
} rng_t;

static uint64_t rng_next(rng_t *r)
{
    uint64_t z = (r->s += 0x9e3779b97f4a7c15ULL);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    return z ^ (z >> 31);
}

static double rng_uniform(rng_t *r) /* in (0, 1) */
{
    return ((double)(rng_next(r) >> 11) + 0.5) / 9007199254740992.0;
}

static double rng_range(rng_t *r, double lo, double hi)
{
    return lo + (hi - lo) * rng_uniform(r);
}

static double rng_normal(rng_t *r)
{
    return sqrt(-2.0 * log(rng_uniform(r))) * cos(2.0 * M_PI * rng_uniform(r));
}

static detector_t *new_detector(const detector_config_t *conf)
{
    detector_t *det = NULL;
    cr_assert_eq(detector_new(conf, &det), 0);
    return det;
}

static detector_t *default_detector(void)
{
    detector_config_t conf;
    detector_config_init(&conf);
    return new_detector(&conf);
}

static unsigned observe(detector_t *det, const char *sensor, const char *type, double value,
                        int64_t ts_us, detector_result_t *ret)
{
    detector_result_t res;
    cr_assert_eq(detector_observe(det, PROJECT, sensor, type, value, ts_us, &res), 0);
    if (ret)
        *ret = res;
    return res.fired;
}

/* Feeds @n noisy readings around @mean (stddev 1) one minute apart from @ts; returns the next ts.
 */
static int64_t feed_noise(detector_t *det, const char *sensor, const char *type, rng_t *r,
                          double mean, int n, int64_t ts)
{
    for (int i = 0; i < n; i++, ts += MINUTE)
        observe(det, sensor, type, mean + rng_normal(r), ts, NULL);
    return ts;
}

Test(detector, config_is_validated)
{
    detector_config_t conf;
    detector_t *det = NULL;

    detector_config_init(&conf);
    conf.defaults.alpha = 0;
    cr_assert_eq(detector_new(&conf, &det), -EINVAL);
    detector_config_init(&conf);
    conf.defaults.warmup = 1;
    cr_assert_eq(detector_new(&conf, &det), -EINVAL);
    detector_config_init(&conf);
    conf.defaults.max_rate = -1;
    cr_assert_eq(detector_new(&conf, &det), -EINVAL);

    detector_config_init(&conf);
    detector_type_conf_t types[] = {
        {.type = "temperature", .alpha = 0.05, .z = 4, .warmup = 30},
        {.type = "temperature", .alpha = 0.1, .z = 3, .warmup = 10},
    };
    conf.types = types;
    conf.ntypes = 2;
    cr_assert_eq(detector_new(&conf, &det), -EINVAL, "a type listed twice is refused");
    cr_assert_null(det);
    detector_free(NULL);

    det = default_detector();
    detector_result_t res;
    cr_assert_eq(detector_observe(det, PROJECT, "s", NULL, NAN, 0, &res), -EINVAL);
    cr_assert_eq(detector_observe(det, NULL, "s", NULL, 1, 0, &res), -EINVAL);
    cr_assert_eq(detector_sensor_set_limits(det, PROJECT, "s", 10, 0), -EINVAL);
    cr_assert_eq(detector_sensor_count(det), 0, "refused calls create no state");
    detector_free(det);
}

Test(detector, hard_limits_fire_and_do_not_teach_the_baseline)
{
    detector_t *det = default_detector();
    detector_result_t res;
    rng_t r = {1};

    cr_assert_eq(detector_sensor_set_limits(det, PROJECT, "boiler", 0, 100), 0);
    /* Limits are judged from the very first reading, warm-up or not. */
    cr_assert_eq(observe(det, "boiler", NULL, 150, 0, &res), DETECTOR_LIMIT_HIGH);
    cr_assert(res.warming);
    cr_assert_eq(observe(det, "boiler", NULL, -0.5, MINUTE, NULL), DETECTOR_LIMIT_LOW);
    cr_assert_eq(observe(det, "boiler", NULL, 100, 2 * MINUTE, NULL), 0, "the limit itself is ok");

    int64_t ts = feed_noise(det, "boiler", NULL, &r, 50, 100, 3 * MINUTE);
    observe(det, "boiler", NULL, 50, ts, &res);
    double mean = res.mean;
    cr_assert(fabs(mean - 50) < 1.5, "mean %f: breaches before warm-up did not count", mean);

    /* An error code beyond the limits fires, and the next reading is judged as before it. */
    cr_assert_eq(observe(det, "boiler", NULL, -999, ts + MINUTE, NULL),
                 DETECTOR_LIMIT_LOW | DETECTOR_ZSCORE);
    observe(det, "boiler", NULL, 50, ts + 2 * MINUTE, &res);
    cr_assert_eq(res.fired, 0);
    cr_assert(fabs(res.mean - mean) < 0.2, "mean %f moved from %f", res.mean, mean);

    /* NAN opens a side. */
    cr_assert_eq(detector_sensor_set_limits(det, PROJECT, "boiler", NAN, 100), 0);
    cr_assert_eq(observe(det, "boiler", NULL, -0.5, ts + 3 * MINUTE, NULL) & DETECTOR_LIMIT_LOW, 0);
    cr_assert_eq(observe(det, "boiler", NULL, 101, ts + 4 * MINUTE, NULL) & DETECTOR_LIMIT_HIGH,
                 DETECTOR_LIMIT_HIGH);
    detector_free(det);
}

Test(detector, warmup_suppresses_zscore_alarms_per_type)
{
    detector_config_t conf;
    detector_type_conf_t types[] = {{.type = "fast", .alpha = 0.05, .z = 4, .warmup = 10}};
    detector_config_init(&conf);
    conf.types = types;
    conf.ntypes = 1;
    detector_t *det = new_detector(&conf);
    detector_result_t res;

    /* Same readings for a default sensor (warm-up 30) and a "fast" one (warm-up 10). */
    for (int i = 0; i < 29; i++) {
        double v = 20 + (i % 2 ? 0.5 : -0.5);
        cr_assert_eq(observe(det, "slow", NULL, v, i * MINUTE, NULL), 0);
        cr_assert_eq(observe(det, "fast", "fast", v, i * MINUTE, NULL), 0);
    }
    cr_assert_eq(observe(det, "slow", NULL, 1000, 29 * MINUTE, &res), 0);
    cr_assert(res.warming, "29 readings learnt: still warming up");
    cr_assert_eq(observe(det, "fast", "fast", 1000, 29 * MINUTE, &res), DETECTOR_ZSCORE);
    cr_assert_not(res.warming);
    cr_assert(res.z > 4, "z %f", res.z);
    cr_assert(fabs(res.mean - 20) < 0.1 && fabs(res.stddev - 0.5) < 0.1, "mean %f stddev %f",
              res.mean, res.stddev);

    /* An unknown type gets the defaults: the 30th reading of this sensor is judged. */
    for (int i = 0; i < 30; i++)
        observe(det, "other", "no-such-type", 20 + (i % 2 ? 0.5 : -0.5), i * MINUTE, NULL);
    cr_assert_eq(observe(det, "other", "no-such-type", 1000, 30 * MINUTE, &res), DETECTOR_ZSCORE);
    detector_free(det);
}

Test(detector, spike_does_not_poison_and_level_shift_is_learnt)
{
    detector_t *det = default_detector();
    detector_result_t res;
    rng_t r = {7};

    int64_t ts = feed_noise(det, "s", NULL, &r, 10, 200, 0);
    observe(det, "s", NULL, 10, ts, &res);
    double mean = res.mean, sd = res.stddev;
    cr_assert_eq(observe(det, "s", NULL, 1e6, ts + MINUTE, NULL), DETECTOR_ZSCORE);
    observe(det, "s", NULL, 10, ts + 2 * MINUTE, &res);
    cr_assert_eq(res.fired, 0, "the reading after a spike is normal again");
    cr_assert(fabs(res.mean - mean) <= 0.05 * 4.5 * sd + 0.05, "mean %f moved from %f", res.mean,
              mean);

    /* A lasting shift of 10 stddev alarms a few times, then is the new normal. */
    int alarms = 0, last_alarm = -1;
    ts += 3 * MINUTE;
    for (int i = 0; i < 200; i++, ts += MINUTE)
        if (observe(det, "s", NULL, 20 + rng_normal(&r), ts, NULL)) {
            alarms++;
            last_alarm = i;
        }
    cr_assert(alarms >= 1 && last_alarm < 10, "%d alarms, the last at reading %d", alarms,
              last_alarm);
    detector_free(det);
}

Test(detector, rate_of_change_depends_on_the_time_between_readings)
{
    detector_config_t conf;
    detector_type_conf_t types[] = {
        {.type = "level", .alpha = 0.05, .z = 4, .warmup = 1000, .max_rate = 1.0}};
    detector_config_init(&conf);
    conf.types = types;
    conf.ntypes = 1;
    detector_t *det = new_detector(&conf);
    detector_result_t res;
    const int64_t s = 1000000;

    cr_assert_eq(observe(det, "tank", "level", 20.0, 100 * s, &res), 0);
    cr_assert_eq(observe(det, "tank", "level", 20.5, 101 * s, &res), 0);
    cr_assert_float_eq(res.rate, 0.5, 1e-12);
    cr_assert_eq(observe(det, "tank", "level", 25.5, 102 * s, &res), DETECTOR_RATE);
    cr_assert_float_eq(res.rate, 5.0, 1e-12);
    /* The same jump over a minute is 5/60 per second. */
    cr_assert_eq(observe(det, "tank", "level", 30.5, 162 * s, &res), 0);

    /* Out of order and duplicate timestamps get no rate and do not move "previous". */
    cr_assert_eq(observe(det, "tank", "level", 90.0, 150 * s, &res), 0);
    cr_assert_eq(res.rate, 0);
    cr_assert_eq(observe(det, "tank", "level", 0.0, 162 * s, &res), 0);
    cr_assert_eq(res.rate, 0);
    cr_assert_eq(observe(det, "tank", "level", 31.0, 163 * s, &res), 0);
    cr_assert_float_eq(res.rate, 0.5, 1e-12, "judged against the newest reading (30.5 at 162 s)");

    /* The default type has no rate limit. */
    cr_assert_eq(observe(det, "pump", NULL, 20.0, 100 * s, NULL), 0);
    cr_assert_eq(observe(det, "pump", NULL, 25.5, 101 * s, &res), 0);
    cr_assert_eq(res.rate, 0);
    detector_free(det);
}

Test(detector, redelivered_reading_does_not_change_state)
{
    detector_t *det = default_detector();
    rng_t r = {3};
    detector_result_t a, b;

    for (int i = 0; i < 100; i++) {
        double v = 5 + rng_normal(&r);
        observe(det, "once", NULL, v, i * MINUTE, &a);
        observe(det, "twice", NULL, v, i * MINUTE, &b);
        if (i % 7 == 0)
            observe(det, "twice", NULL, v, i * MINUTE, NULL);
        cr_assert_eq(a.fired, b.fired);
        cr_assert_eq(a.mean, b.mean);
        cr_assert_eq(a.stddev, b.stddev);
    }
    detector_free(det);
}

Test(detector, forget_all_resets)
{
    detector_t *det = default_detector();
    detector_result_t res;
    rng_t r = {5};

    int64_t ts = feed_noise(det, "a", NULL, &r, 10, 50, 0);
    feed_noise(det, "b", NULL, &r, 10, 50, 0);
    cr_assert_eq(detector_sensor_set_limits(det, PROJECT, "a", 0, 20), 0);
    cr_assert_eq(detector_sensor_count(det), 2);
    cr_assert_eq(observe(det, "a", NULL, 30, ts, NULL), DETECTOR_LIMIT_HIGH | DETECTOR_ZSCORE);

    detector_forget_all(det);
    cr_assert_eq(detector_sensor_count(det), 0);
    json_t *snap = NULL;
    cr_assert_eq(detector_sensor_snapshot(det, PROJECT, "a", &snap), -ENOENT);
    cr_assert_eq(observe(det, "a", NULL, 30, ts + MINUTE, &res), 0, "limits and stats are gone");
    cr_assert(res.new_sensor && res.warming);
    cr_assert_eq(detector_sensor_count(det), 1);
    detector_free(det);
}

Test(detector, snapshot_restore_gives_the_same_verdicts)
{
    detector_t *a = default_detector(), *b = default_detector();
    detector_result_t ra, rb;
    rng_t r = {11};
    int64_t ts = 0;
    int fired = 0;

    cr_assert_eq(detector_sensor_set_limits(a, PROJECT, "s", -50, 50), 0);
    for (int i = 0; i < 150; i++, ts += MINUTE)
        observe(a, "s", NULL, 3 * sin(i / 20.0) + rng_normal(&r), ts, NULL);

    /* Through text, decoded as the daemon decodes records (integers as reals). */
    json_t *snap = NULL;
    cr_assert_eq(detector_sensor_snapshot(a, PROJECT, "s", &snap), 0);
    char *text = json_dumps(snap, JSON_COMPACT);
    json_decref(snap);
    cr_assert_not_null(text);
    json_t *back = json_loads(text, JSON_DECODE_INT_AS_REAL | JSON_REJECT_DUPLICATES, NULL);
    cr_assert_not_null(back, "%s", text);
    cr_assert_eq(detector_sensor_restore(b, PROJECT, "s", back), 0, "%s", text);
    json_decref(back);
    free(text);

    for (int i = 150; i < 400; i++, ts += MINUTE) {
        double v = 3 * sin(i / 20.0) + rng_normal(&r);
        if (i % 50 == 0)
            v += i % 100 ? 15 : 80; /* a spike, and a limit breach */
        observe(a, "s", NULL, v, ts, &ra);
        observe(b, "s", NULL, v, ts, &rb);
        cr_assert_not(rb.new_sensor || rb.warming);
        cr_assert_eq(ra.fired, rb.fired, "reading %d", i);
        cr_assert_eq(ra.z, rb.z, "reading %d", i);
        cr_assert_eq(ra.mean, rb.mean, "reading %d", i);
        cr_assert_eq(ra.stddev, rb.stddev, "reading %d", i);
        fired |= (int)ra.fired;
    }
    cr_assert_eq(fired, DETECTOR_ZSCORE | DETECTOR_LIMIT_HIGH, "the comparison saw both checks");

    /* Malformed snapshots are refused and change nothing. */
    const char *bad[] = {
        "{\"version\":2,\"n\":5,\"mean\":1,\"var\":1}",
        "{\"version\":1,\"n\":5,\"mean\":1,\"var\":-1}",
        "{\"version\":1,\"n\":5.5,\"mean\":1,\"var\":1}",
        "{\"version\":1,\"n\":5,\"var\":1}",
        "{\"version\":1,\"n\":5,\"mean\":1,\"var\":1,\"min\":3,\"max\":2}",
        "{\"version\":1,\"n\":5,\"mean\":1,\"var\":1,\"last_ts_us\":3}",
        "[1]",
    };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        json_t *j = json_loads(bad[i], JSON_DECODE_ANY, NULL);
        cr_assert_not_null(j);
        cr_assert_eq(detector_sensor_restore(b, PROJECT, "t", j), -EINVAL, "%s", bad[i]);
        json_decref(j);
    }
    cr_assert_eq(detector_sensor_count(b), 1);
    detector_free(a);
    detector_free(b);
}

Test(detector, threshold_changes_apply_to_running_sensors)
{
    detector_config_t conf;
    detector_type_conf_t types[] = {{.type = "temperature", .alpha = 0.05, .z = 4.5, .warmup = 30}};
    detector_config_init(&conf);
    conf.types = types;
    conf.ntypes = 1;
    detector_t *det = new_detector(&conf);
    detector_result_t res;
    rng_t r = {13};

    int64_t ts = feed_noise(det, "t1", "temperature", &r, 20, 200, 0);
    feed_noise(det, "p1", NULL, &r, 20, 200, 0);
    observe(det, "t1", "temperature", 20, ts, &res);
    double off = 3.8 * res.stddev; /* z about 3.8: normal at 4.5 */
    cr_assert_eq(observe(det, "t1", "temperature", res.mean + off, ts + MINUTE, &res), 0);
    cr_assert(res.z > 3.5 && res.z < 4.5, "z %f", res.z);

    /* temperature's threshold drops to 2.5, its rate check comes on; the defaults stay. */
    types[0].z = 2.5;
    types[0].max_rate = 1e-3;
    cr_assert_eq(detector_config_set(det, &conf), 0);
    observe(det, "t1", "temperature", 20, ts + 2 * MINUTE, &res);
    unsigned fired = observe(det, "t1", "temperature", res.mean + off, ts + 3 * MINUTE, &res);
    cr_assert_eq(fired, DETECTOR_ZSCORE | DETECTOR_RATE, "fired %u z %f rate %f", fired, res.z,
                 res.rate);
    cr_assert_not(res.new_sensor || res.warming, "the sensor kept its statistics");
    observe(det, "p1", NULL, 20, ts, &res);
    cr_assert_eq(observe(det, "p1", NULL, res.mean + 3.8 * res.stddev, ts + MINUTE, &res), 0,
                 "z %f: the default threshold is still 4.5", res.z);

    /* A longer warm-up holds back a sensor that is still short of it. */
    types[0].warmup = 500;
    cr_assert_eq(detector_config_set(det, &conf), 0);
    cr_assert_eq(observe(det, "t1", "temperature", 1e6, ts + 4 * MINUTE, &res) & DETECTOR_ZSCORE,
                 0);
    cr_assert(res.warming);

    /* An invalid change is refused and the thresholds in force stay. */
    types[0].warmup = 30;
    types[0].alpha = 2;
    cr_assert_eq(detector_config_set(det, &conf), -EINVAL);
    cr_assert_eq(observe(det, "t1", "temperature", 1e6, ts + 5 * MINUTE, &res) & DETECTOR_ZSCORE, 0,
                 "warm-up 500 is still in force");
    detector_free(det);
}

Test(detector, partition_snapshot_round_trip)
{
    detector_t *a = default_detector(), *b = default_detector();
    detector_result_t ra, rb;
    const char *sensors[] = {"s1", "s2", "s3"};
    rng_t r = {17};
    int64_t ts = 0;

    cr_assert_eq(detector_sensor_set_limits(a, PROJECT, "s2", NAN, 25), 0);
    for (int i = 0; i < 100; i++, ts += MINUTE)
        for (int k = 0; k < 3; k++)
            observe(a, sensors[k], NULL, 20 + k + rng_normal(&r), ts, NULL);
    observe(a, "s1", NULL, 20, ts, NULL); /* s2 is now the least recently used */

    /* Through text, decoded as the daemon decodes it (integers as reals). */
    json_t *snap = NULL;
    cr_assert_eq(detector_snapshot(a, &snap), 0);
    char *text = json_dumps(snap, JSON_COMPACT);
    json_decref(snap);
    json_t *back = json_loads(text, JSON_DECODE_INT_AS_REAL | JSON_REJECT_DUPLICATES, NULL);
    cr_assert_not_null(back, "%s", text);
    size_t n = 0;
    cr_assert_eq(detector_restore(b, back, &n), 0, "%s", text);
    cr_assert_eq(n, 3);
    cr_assert_eq(detector_sensor_count(b), 3);

    ts += MINUTE;
    for (int i = 0; i < 200; i++, ts += MINUTE)
        for (int k = 0; k < 3; k++) {
            double v = 20 + k + rng_normal(&r) + (i % 40 == 0 ? 12 : 0);
            observe(a, sensors[k], NULL, v, ts, &ra);
            observe(b, sensors[k], NULL, v, ts, &rb);
            cr_assert_not(rb.new_sensor || rb.warming, "%s was restored", sensors[k]);
            cr_assert_eq(ra.fired, rb.fired, "%s reading %d", sensors[k], i);
            cr_assert_eq(ra.z, rb.z);
            cr_assert_eq(ra.mean, rb.mean);
        }

    /* Least recently used first: a smaller detector keeps the most recent sensors. */
    detector_config_t conf;
    detector_config_init(&conf);
    conf.max_sensors = 2;
    detector_t *c = new_detector(&conf);
    cr_assert_eq(detector_restore(c, back, &n), 0);
    cr_assert_eq(n, 2);
    json_t *s2 = NULL;
    cr_assert_eq(detector_sensor_snapshot(c, PROJECT, "s2", &s2), -ENOENT, "s2 was the oldest");
    cr_assert_eq(detector_sensor_snapshot(c, PROJECT, "s1", &s2), 0);
    json_decref(s2);
    json_decref(back);
    free(text);

    /* A malformed document leaves the detector empty rather than half restored. */
    const char *bad[] = {
        "{\"version\":2,\"sensors\":[]}",
        "{\"version\":1}",
        "{\"version\":1,\"sensors\":[{\"project\":\"p\",\"sensor\":\"x\","
        "\"state\":{\"version\":1,\"n\":3,\"mean\":1,\"var\":1}},{\"project\":\"p\"}]}",
    };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        json_t *j = json_loads(bad[i], 0, NULL);
        cr_assert_not_null(j, "%s", bad[i]);
        cr_assert_eq(detector_restore(b, j, NULL), -EINVAL, "%s", bad[i]);
        cr_assert_eq(detector_sensor_count(b), 0);
        json_decref(j);
    }
    detector_free(a);
    detector_free(b);
    detector_free(c);
}

Test(detector, sensor_cap_evicts_the_least_recently_used)
{
    detector_config_t conf;
    detector_config_init(&conf);
    conf.max_sensors = 3;
    detector_t *det = new_detector(&conf);
    detector_result_t res;
    const char *sensors[] = {"s1", "s2", "s3"};

    for (int i = 0; i < 3; i++)
        for (int k = 0; k < 40; k++)
            observe(det, sensors[i], NULL, k % 2, k * MINUTE, NULL);
    cr_assert_eq(detector_sensor_count(det), 3);
    observe(det, "s1", NULL, 0, 40 * MINUTE, NULL); /* s2 is now the least recently used */

    observe(det, "s4", NULL, 0, 0, &res);
    cr_assert(res.new_sensor);
    cr_assert_eq(detector_sensor_count(det), 3);
    cr_assert_eq(detector_eviction_count(det), 1);
    observe(det, "s1", NULL, 1, 41 * MINUTE, &res);
    cr_assert_not(res.new_sensor || res.warming, "s1 kept its state");
    observe(det, "s2", NULL, 1, 41 * MINUTE, &res);
    cr_assert(res.new_sensor && res.warming, "s2 was evicted and warms up again");
    cr_assert_eq(detector_sensor_count(det), 3);
    cr_assert_eq(detector_eviction_count(det), 2);

    /* Keys are (project, sensor) pairs, not their concatenation. */
    detector_result_t r1, r2;
    cr_assert_eq(detector_observe(det, "ab", "c", NULL, 1, 0, &r1), 0);
    cr_assert_eq(detector_observe(det, "a", "bc", NULL, 1, 0, &r2), 0);
    cr_assert(r1.new_sensor && r2.new_sensor);
    detector_free(det);
}

/* The synthetic benchmark. Each sensor reads once a minute: a daily sine, slow drift and
 * Gaussian noise. Events are injected at seeded positions, one per slot of the series so that
 * they do not overlap: spikes (one reading off by 6-12 noise stddev), level shifts (a lasting
 * offset of 6-12 stddev) and stuck-then-jump (the value freezes for 60 readings, then comes back
 * 6-12 stddev away and stays there). An event is detected when an alarm falls in its window (the
 * spike itself; the first WINDOW readings of a shift or of the jump); an alarm is a true positive
 * when it falls in some event's window, otherwise a false positive. */
#define N_SENSORS 6
#define N_READ    6000
#define N_EVENTS  12
#define WINDOW    10
#define STUCK     60

enum { EV_SPIKE, EV_SHIFT, EV_STUCK };

typedef struct event {
    int kind, at, len; /* the anomalous readings are [at, at + len) */
} event_t;

Test(detector, synthetic_series_precision_and_recall)
{
    detector_t *det = default_detector();
    rng_t r = {20261123};
    int alarms = 0, true_alarms = 0, false_alarms = 0, events = 0, detected = 0;
    static const int kinds[N_EVENTS] = {EV_SPIKE, EV_SHIFT, EV_SPIKE, EV_STUCK, EV_SPIKE, EV_SPIKE,
                                        EV_SHIFT, EV_SPIKE, EV_STUCK, EV_SPIKE, EV_SPIKE, EV_SHIFT};

    for (int si = 0; si < N_SENSORS; si++) {
        char name[32];
        snprintf(name, sizeof(name), "site-%d.temp", si);
        double noise = rng_range(&r, 0.1, 2.0);
        double base = rng_range(&r, -20, 40);
        double amp = noise * rng_range(&r, 2, 8);
        double phase = rng_range(&r, 0, 2 * M_PI);
        double drift = noise * rng_range(&r, -10, 10) / N_READ;

        /* Slots after a settling time of 300 readings; each event in the first half of its
         * slot, so the detector is settled again before the next one. */
        event_t ev[N_EVENTS];
        int slot = (N_READ - 300) / N_EVENTS;
        for (int e = 0; e < N_EVENTS; e++) {
            ev[e].kind = kinds[(e + si) % N_EVENTS];
            ev[e].at = 300 + e * slot + (int)rng_range(&r, 0, slot / 2 - STUCK);
            ev[e].len = ev[e].kind == EV_SPIKE ? 1 : WINDOW;
        }

        double offset = 0, stuck_value = 0;
        int e = 0, hit[N_EVENTS] = {0};
        for (int i = 0; i < N_READ; i++) {
            double v = base + amp * sin(2 * M_PI * i / 1440.0 + phase) + drift * i +
                       noise * rng_normal(&r) + offset;
            double mag = noise * rng_range(&r, 6, 12) * (rng_uniform(&r) < 0.5 ? -1 : 1);
            if (e < N_EVENTS && ev[e].kind == EV_STUCK && i >= ev[e].at - STUCK && i < ev[e].at) {
                if (i == ev[e].at - STUCK)
                    stuck_value = v;
                v = stuck_value;
            }
            if (e < N_EVENTS && i == ev[e].at) {
                if (ev[e].kind == EV_SPIKE) {
                    v += mag;
                } else {
                    offset += mag;
                    v += mag;
                }
            }

            detector_result_t res;
            observe(det, name, NULL, v, (int64_t)i * MINUTE, &res);
            if (res.fired) {
                alarms++;
                if (e < N_EVENTS && i >= ev[e].at && i < ev[e].at + ev[e].len) {
                    true_alarms++;
                    hit[e] = 1;
                } else {
                    false_alarms++;
                    fprintf(stderr, "false alarm: %s reading %d z %.2f\n", name, i, res.z);
                }
            }
            if (e < N_EVENTS && i >= ev[e].at + ev[e].len - 1)
                e++;
        }
        for (e = 0; e < N_EVENTS; e++) {
            events++;
            detected += hit[e];
            if (!hit[e])
                fprintf(stderr, "missed: %s event %d (kind %d) at %d\n", name, e, ev[e].kind,
                        ev[e].at);
        }
    }

    /* Event precision counts the alarms inside one event's window once, so that the several
     * alarms of a level shift do not outweigh false alarms; alarm precision is per alarm. */
    double precision = detected + false_alarms ? (double)detected / (detected + false_alarms) : 0;
    double alarm_precision = alarms ? (double)true_alarms / alarms : 0;
    double recall = (double)detected / events;
    fprintf(
        stderr,
        "anomaly-detector synthetic: %d sensors x %d readings, %d events, %d alarms (%d false): "
        "event precision %.3f (per alarm %.3f), recall %.3f\n",
        N_SENSORS, N_READ, events, alarms, false_alarms, precision, alarm_precision, recall);
    cr_assert_geq(precision, 0.9);
    cr_assert_geq(recall, 0.9);
    detector_free(det);
}
