/* test-registry.c: sb-anomaly-detector's view of PostgreSQL (registered sensors, thresholds per
 * type) against the real sql/0006_detector.sql, in a schema of this process's own. */
#include <criterion/criterion.h>
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "db.h"
#include "registry.h"
#include "sb-config.h"
#include "sb_test_pg.h"

#define P1 "11111111-1111-4111-8111-111111111111"
#define P2 "22222222-2222-4222-8222-222222222222"

static db_t *db;
static char schema[64];

static void exec(const char *sql)
{
    cr_assert_eq(db_exec_simple(db, sql), 0, "%s: %s", sql, db_errmsg(db));
}

static void setup(void)
{
    char sql[320], path[512];
    cr_assert_eq(db_new(sb_test_pg_dsn(), &db), 0);
    cr_assert(db_connected(db), "%s", db_errmsg(db));
    snprintf(schema, sizeof(schema), "detector_test_%d", (int)getpid());
    snprintf(sql, sizeof(sql),
             "DROP SCHEMA IF EXISTS %s CASCADE; CREATE SCHEMA %s; SET search_path TO %s", schema,
             schema, schema);
    exec(sql);
    /* The columns the detector reads of the tables 0006 builds on (0003, 0004). */
    exec("CREATE TABLE anomalies (project_id uuid, reading_id uuid, PRIMARY KEY (project_id, "
         "reading_id));"
         "CREATE TABLE sensors (project_id uuid, id text, type text NOT NULL, min_value double "
         "precision, max_value double precision, PRIMARY KEY (project_id, id))");

    snprintf(path, sizeof(path), "%s/0006_detector.sql", SB_SQL_DIR);
    FILE *f = fopen(path, "r");
    cr_assert_not_null(f, "%s", path);
    static char text[16384];
    size_t n = fread(text, 1, sizeof(text) - 1, f);
    fclose(f);
    text[n] = '\0';
    exec(text);
}

static void teardown(void)
{
    char sql[128];
    snprintf(sql, sizeof(sql), "DROP SCHEMA IF EXISTS %s CASCADE", schema);
    (void)db_exec_simple(db, sql);
    db_free(db);
}

static detector_config_t fallback(void)
{
    detector_config_t conf;
    detector_config_init(&conf);
    conf.defaults.z = 3.25; /* different from the table's default row */
    conf.max_sensors = 77;
    return conf;
}

TestSuite(registry, .init = setup, .fini = teardown);

Test(registry, thresholds_come_from_the_table)
{
    detector_config_t fb = fallback();
    registry_thresholds_t a, b;
    char err[128] = "";

    cr_assert_eq(registry_thresholds_load(db, &fb, &a, err, sizeof(err)), 0, "%s", err);
    cr_assert(a.has_default, "the migration's 'default' row");
    cr_assert_eq(a.conf.defaults.z, 4.5);
    cr_assert_eq(a.conf.defaults.warmup, 30);
    cr_assert_eq(a.conf.defaults.alpha, 0.05);
    cr_assert_eq(a.conf.defaults.max_rate, 0);
    cr_assert_eq(a.conf.ntypes, 0);
    cr_assert_eq(a.conf.max_sensors, 77);

    exec("INSERT INTO detector_thresholds (sensor_type, z_threshold, warmup, alpha, max_rate, "
         "min_stddev) VALUES ('pressure', 3, 10, 0.2, 1.5, 0.01), ('level', 6, 50, 0.01, 0, 0)");
    cr_assert_eq(registry_thresholds_load(db, &fb, &b, err, sizeof(err)), 0, "%s", err);
    cr_assert_not(registry_thresholds_equal(&a, &b));
    cr_assert_eq(b.conf.ntypes, 2);
    cr_assert_str_eq(b.conf.types[0].type, "level", "sorted by type");
    const detector_type_conf_t *p = &b.conf.types[1];
    cr_assert_str_eq(p->type, "pressure");
    cr_assert(p->z == 3 && p->warmup == 10 && p->alpha == 0.2 && p->max_rate == 1.5 &&
              p->min_stddev == 0.01);

    /* The loaded thresholds drive a detector: a type's own threshold, the default for others. */
    detector_t *det = NULL;
    cr_assert_eq(detector_new(&b.conf, &det), 0);
    detector_result_t res, other;
    for (int i = 0; i <= 10; i++) {
        double v = 10 + (i % 2);
        cr_assert_eq(detector_observe(det, P1, "s", "pressure", v, i * 1000000LL, &res), 0);
        cr_assert_eq(detector_observe(det, P1, "t", "humidity", v, i * 1000000LL, &other), 0);
    }
    cr_assert_not(res.warming, "pressure: warm-up 10");
    cr_assert(other.warming, "humidity: the default warm-up, 30");
    detector_free(det);

    registry_thresholds_t c;
    cr_assert_eq(registry_thresholds_load(db, &fb, &c, err, sizeof(err)), 0);
    cr_assert(registry_thresholds_equal(&b, &c), "the same table, the same thresholds");
    registry_thresholds_clear(&c);

    /* Without a 'default' row, the settings apply to the other types. */
    exec("DELETE FROM detector_thresholds WHERE sensor_type = 'default'");
    cr_assert_eq(registry_thresholds_load(db, &fb, &c, err, sizeof(err)), 0);
    cr_assert_not(c.has_default);
    cr_assert_eq(c.conf.defaults.z, 3.25);
    cr_assert_eq(c.conf.ntypes, 2);

    /* The table refuses what the detector would. */
    cr_assert_eq(db_exec_simple(db, "INSERT INTO detector_thresholds (sensor_type, z_threshold, "
                                    "warmup, alpha) VALUES ('bad', 0, 30, 0.05)"),
                 -EINVAL);
    cr_assert_eq(db_exec_simple(db, "INSERT INTO detector_thresholds (sensor_type, z_threshold, "
                                    "warmup, alpha) VALUES ('bad', 4, 1, 0.05)"),
                 -EINVAL);
    cr_assert_eq(db_exec_simple(db, "INSERT INTO detector_thresholds (sensor_type, z_threshold, "
                                    "warmup, alpha) VALUES ('Bad Type', 4, 30, 0.05)"),
                 -EINVAL);
    registry_thresholds_clear(&a);
    registry_thresholds_clear(&b);
    registry_thresholds_clear(&c);
}

Test(registry, sensors_are_fetched_then_reloaded)
{
    registry_t *reg = NULL;
    cr_assert_eq(registry_new(&reg), 0);
    exec("INSERT INTO sensors VALUES ('" P1 "', 'boiler-1', 'boiler', 0, 90), "
         "('" P1 "', 'tank', 'level', NULL, 'Infinity'), ('" P2 "', 'boiler-1', 'boiler', -5, "
         "NULL)");

    const char *projects[] = {P1, P1, P2, P2};
    const char *sensors[] = {"boiler-1", "tank", "boiler-1", "nope"};
    cr_assert_eq(registry_fetch(reg, db, projects, sensors, 4), 0, "%s", db_errmsg(db));
    cr_assert_eq(registry_count(reg), 4);
    const registry_sensor_t *s = registry_get(reg, P1, "boiler-1");
    cr_assert(s && s->registered && !strcmp(s->type, "boiler") && s->min == 0 && s->max == 90);
    s = registry_get(reg, P1, "tank");
    cr_assert(s && s->registered && isnan(s->min) && isnan(s->max), "infinite is no limit");
    s = registry_get(reg, P2, "boiler-1");
    cr_assert(s && s->min == -5 && isnan(s->max), "per project");
    s = registry_get(reg, P2, "nope");
    cr_assert(s && !s->registered && !s->type[0], "a negative entry");
    cr_assert_null(registry_get(reg, P1, "nope"), "never looked up");

    /* Registered later, and a limit changed: a reload sees both and forgets negative entries. */
    exec("INSERT INTO sensors VALUES ('" P2 "', 'nope', 'fan', 1, 2);"
         "UPDATE sensors SET max_value = 95 WHERE id = 'boiler-1' AND project_id = '" P1 "'");
    cr_assert_eq(registry_load(reg, db), 0);
    cr_assert_eq(registry_count(reg), 4);
    s = registry_get(reg, P2, "nope");
    cr_assert(s && s->registered && s->max == 2);
    cr_assert_eq(registry_get(reg, P1, "boiler-1")->max, 95);

    /* A failed reload keeps what was there. */
    exec("ALTER TABLE sensors RENAME TO sensors_gone");
    cr_assert_lt(registry_load(reg, db), 0);
    cr_assert_eq(registry_count(reg), 4);
    registry_free(reg);
}

Test(registry, snapshot_round_trip_through_postgres)
{
    detector_config_t conf;
    detector_t *a = NULL, *b = NULL;
    detector_result_t ra, rb;
    int64_t next = 0, age = -1;
    size_t n = 0;

    detector_config_init(&conf);
    cr_assert_eq(detector_new(&conf, &a), 0);
    cr_assert_eq(detector_new(&conf, &b), 0);
    cr_assert_eq(detector_sensor_set_limits(a, P1, "s1", -10, 10), 0);
    for (int i = 0; i < 100; i++) {
        cr_assert_eq(detector_observe(a, P1, "s1", NULL, sin(i) * 2, i * 1000000LL, &ra), 0);
        cr_assert_eq(detector_observe(a, P2, "s2", NULL, cos(i) / 3, i * 1000000LL, &ra), 0);
    }

    cr_assert_eq(registry_snapshot_load(db, "c", "t", 3, 600, b, &next, &n, &age), 0, "none yet");
    cr_assert_eq(registry_snapshot_save(db, "c", "t", 3, 4242, a), 0, "%s", db_errmsg(db));
    cr_assert_eq(registry_snapshot_save(db, "c", "t", 3, 4243, a), 0, "replaces");
    cr_assert_eq(registry_snapshot_load(db, "c", "t", 4, 600, b, &next, &n, &age), 0,
                 "another partition");
    cr_assert_eq(registry_snapshot_load(db, "c", "t", 3, 600, b, &next, &n, &age), 1);
    cr_assert_eq(next, 4243);
    cr_assert_eq(n, 2);
    cr_assert(age >= 0 && age < 60, "%lld", (long long)age);
    for (int i = 100; i < 200; i++) {
        double v = i == 150 ? 30 : sin(i) * 2;
        cr_assert_eq(detector_observe(a, P1, "s1", NULL, v, i * 1000000LL, &ra), 0);
        cr_assert_eq(detector_observe(b, P1, "s1", NULL, v, i * 1000000LL, &rb), 0);
        cr_assert_not(rb.warming);
        cr_assert_eq(ra.fired, rb.fired, "reading %d", i);
        cr_assert_eq(ra.mean, rb.mean, "reading %d", i);
        cr_assert_eq(ra.stddev, rb.stddev, "reading %d", i);
    }
    cr_assert_eq(rb.fired, 0);

    /* Too old is none; unreadable leaves the detector empty. */
    exec("UPDATE detector_snapshots SET taken_at = now() - interval '2 hours'");
    cr_assert_eq(registry_snapshot_load(db, "c", "t", 3, 3600, b, &next, &n, &age), 0);
    cr_assert_eq(detector_sensor_count(b), 2, "untouched");
    exec("UPDATE detector_snapshots SET taken_at = now(), state = '{\"version\":9}'");
    cr_assert_eq(registry_snapshot_load(db, "c", "t", 3, 3600, b, &next, &n, &age), -EBADMSG);
    cr_assert_eq(detector_sensor_count(b), 0);
    detector_free(a);
    detector_free(b);
}
