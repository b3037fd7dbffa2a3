/* Tests for svc_config: defaults, file, environment, kafka pass-through, secrets and --help.
 * Criterion runs each test in its own process; teardown still clears the variables it set. */
#include <criterion/criterion.h>
#include <criterion/redirect.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "svc_config.h"

typedef struct conf {
    char *listen;
    int64_t batch_max;
    bool compress;
    double ratio;
    char *db_password;
} conf_t;

static const svc_conf_entry_t table[] = {
    {SVC_CONF_STR, "listen", "0.0.0.0:8080", offsetof(conf_t, listen), "host:port to serve", 0, 0,
     0},
    {SVC_CONF_INT, "batch_max", "500", offsetof(conf_t, batch_max), "records per batch", 0, 1,
     100000},
    {SVC_CONF_BOOL, "compress", "no", offsetof(conf_t, compress), "compress output", 0, 0, 0},
    {SVC_CONF_DOUBLE, "ratio", "0.25", offsetof(conf_t, ratio), "sampling ratio", 0, 0, 0},
    {SVC_CONF_STR, "db_password", "defaultpw", offsetof(conf_t, db_password), "database password",
     SVC_CONF_SECRET, 0, 0},
    {.type = SVC_CONF_END},
};

static conf_t c;
static svc_conf_t *kc;
static char errbuf[512];
static char tmpdir[] = "/tmp/test-svc-config-XXXXXX";
static const char *set_vars[32];
static size_t nset;

static void setup(void)
{
    cr_assert_not_null(mkdtemp(tmpdir));
}

static void teardown(void)
{
    char cmd[128];

    for (size_t i = 0; i < nset; i++)
        unsetenv(set_vars[i]);
    svc_conf_target_free(table, &c);
    svc_conf_free(kc);
    snprintf(cmd, sizeof(cmd), "rm -rf %s", tmpdir);
    cr_assert_eq(system(cmd), 0);
}

TestSuite(svc_config, .init = setup, .fini = teardown);

static void env(const char *name, const char *value)
{
    cr_assert_eq(setenv(name, value, 1), 0);
    set_vars[nset++] = name;
}

/* Writes @text to a file in the test's directory and returns its path (static storage). */
static const char *file(const char *name, const char *text)
{
    static char paths[4][256];
    static int next;
    char *path = paths[next++ % 4];
    FILE *f;

    snprintf(path, sizeof(paths[0]), "%s/%s", tmpdir, name);
    f = fopen(path, "w");
    cr_assert_not_null(f);
    fputs(text, f);
    fclose(f);
    return path;
}

static int load_argv(const char *service, int argc, char **argv)
{
    svc_conf_section_t sec = {table, &c};

    return svc_conf_load(service, "A test service.", &sec, 1, argc, argv, &kc, errbuf,
                         sizeof(errbuf));
}

static int load(void)
{
    char *argv[] = {"test", NULL};

    return load_argv("gateway", 1, argv);
}

Test(svc_config, defaults_apply_without_file_or_env)
{
    cr_assert_eq(load(), 0, "%s", errbuf);
    cr_assert_str_eq(c.listen, "0.0.0.0:8080");
    cr_assert_eq(c.batch_max, 500);
    cr_assert_eq(c.compress, false);
    cr_assert_float_eq(c.ratio, 0.25, 1e-12);
    cr_assert_str_eq(c.db_password, "defaultpw");
    cr_assert_eq(kc->kafka_count, 0);
}

Test(svc_config, environment_overrides_defaults)
{
    env("SB_GATEWAY_LISTEN", "127.0.0.1:9000");
    env("SB_GATEWAY_BATCH_MAX", "42");
    env("SB_GATEWAY_COMPRESS", "ON");
    env("SB_GATEWAY_RATIO", "1e-3");
    cr_assert_eq(load(), 0, "%s", errbuf);
    cr_assert_str_eq(c.listen, "127.0.0.1:9000");
    cr_assert_eq(c.batch_max, 42);
    cr_assert_eq(c.compress, true);
    cr_assert_float_eq(c.ratio, 0.001, 1e-15);
}

Test(svc_config, service_name_is_mapped_to_the_env_prefix)
{
    svc_conf_section_t sec = {table, &c};
    char *argv[] = {"test", NULL};

    env("SB_SENSOR_INGEST_BATCH_MAX", "7");
    cr_assert_eq(svc_conf_load("sensor-ingest", "x", &sec, 1, 1, argv, &kc, errbuf, sizeof(errbuf)),
                 0, "%s", errbuf);
    cr_assert_eq(c.batch_max, 7);
}

Test(svc_config, shorter_service_name_does_not_claim_a_longer_ones_variables)
{
    char *argv[] = {"test", NULL};

    env("SB_SENSOR_INGEST_BATCH_MAX", "7");
    env("SB_SENSORX_BATCH_MAX", "8");
    cr_assert_eq(load_argv("sensor", 1, argv), 0, "%s", errbuf);
    cr_assert_eq(c.batch_max, 500);
    env("SB_SENSOR_BATCH_MAX", "9");
    svc_conf_target_free(table, &c);
    svc_conf_free(kc);
    kc = NULL;
    cr_assert_eq(load_argv("sensor", 1, argv), 0, "%s", errbuf);
    cr_assert_eq(c.batch_max, 9);
}

Test(svc_config, file_sets_values_and_env_wins_over_it)
{
    const char *path = file("gw.conf", "# a comment\n"
                                       "\n"
                                       "  listen = 10.0.0.1:80  \n"
                                       "batch_max=99\r\n"
                                       "compress = true\n"
                                       "kafka.bootstrap.servers = filehost:9092\n"
                                       "kafka.linger.ms = 5\n");
    char *argv[] = {"test", "--config", (char *)path, NULL};

    env("SB_GATEWAY_BATCH_MAX", "77");
    env("SB_GATEWAY_KAFKA_LINGER_MS", "20");
    cr_assert_eq(load_argv("gateway", 3, argv), 0, "%s", errbuf);
    cr_assert_str_eq(c.listen, "10.0.0.1:80", "file over default");
    cr_assert_eq(c.batch_max, 77, "env over file");
    cr_assert_eq(c.compress, true);
    cr_assert_float_eq(c.ratio, 0.25, 1e-12, "default kept");
    cr_assert_str_eq(svc_conf_kafka_get(kc, "bootstrap.servers"), "filehost:9092");
    cr_assert_str_eq(svc_conf_kafka_get(kc, "linger.ms"), "20", "env over file for kafka too");
    cr_assert_eq(kc->kafka_count, 2, "a replaced kafka key appears once");
}

Test(svc_config, config_file_from_the_environment)
{
    env("SB_GATEWAY_CONFIG", file("env.conf", "listen = :1234\n"));
    cr_assert_eq(load(), 0, "%s", errbuf);
    cr_assert_str_eq(c.listen, ":1234");
}

Test(svc_config, kafka_properties_pass_through_from_env)
{
    env("SB_GATEWAY_KAFKA_BOOTSTRAP_SERVERS", "127.0.0.1:9092");
    env("SB_GATEWAY_KAFKA_ENABLE_IDEMPOTENCE", "true");
    cr_assert_eq(load(), 0, "%s", errbuf);
    cr_assert_str_eq(svc_conf_kafka_get(kc, "bootstrap.servers"), "127.0.0.1:9092");
    cr_assert_str_eq(svc_conf_kafka_get(kc, "enable.idempotence"), "true");
    cr_assert_null(svc_conf_kafka_get(kc, "acks"));
    cr_assert_eq(svc_conf_kafka_set(kc, "acks", "all"), 0);
    cr_assert_str_eq(svc_conf_kafka_get(kc, "acks"), "all");
}

Test(svc_config, unknown_env_key_is_an_error_naming_it)
{
    env("SB_GATEWAY_LISTN", "x");
    cr_assert_eq(load(), -EINVAL);
    cr_assert_not_null(strstr(errbuf, "SB_GATEWAY_LISTN"), "%s", errbuf);
    cr_assert_not_null(strstr(errbuf, "did you mean SB_GATEWAY_LISTEN"), "%s", errbuf);
    cr_assert_not_null(strstr(errbuf, "--help"), "%s", errbuf);
    cr_assert_null(c.listen, "strings are freed and cleared on error");
}

Test(svc_config, unknown_file_key_is_an_error_naming_file_line_and_key)
{
    char *argv[] = {"test", "--config", (char *)file("bad.conf", "listen = x\nbogus_key = 1\n"),
                    NULL};

    cr_assert_eq(load_argv("gateway", 3, argv), -EINVAL);
    cr_assert_not_null(strstr(errbuf, "bad.conf:2"), "%s", errbuf);
    cr_assert_not_null(strstr(errbuf, "'bogus_key'"), "%s", errbuf);
    cr_assert_not_null(strstr(errbuf, "--help"), "%s", errbuf);
}

Test(svc_config, malformed_file_line_is_an_error)
{
    char *argv[] = {"test", "--config", (char *)file("m.conf", "listen\n"), NULL};

    cr_assert_eq(load_argv("gateway", 3, argv), -EINVAL);
    cr_assert_not_null(strstr(errbuf, "m.conf:1: expected 'name = value'"), "%s", errbuf);
}

Test(svc_config, missing_file_is_an_error)
{
    char *argv[] = {"test", "--config=/nonexistent/x.conf", NULL};

    cr_assert_eq(load_argv("gateway", 2, argv), -ENOENT);
    cr_assert_not_null(strstr(errbuf, "/nonexistent/x.conf"), "%s", errbuf);
}

Test(svc_config, bad_numbers_and_booleans_are_rejected)
{
    const char *bad_ints[] = {"12x", "", " 5", "0x10", "1.5", "99999999999999999999"};
    const char *bad_bools[] = {"maybe", "", "2", "truee"};

    for (size_t i = 0; i < sizeof(bad_ints) / sizeof(bad_ints[0]); i++) {
        env("SB_GATEWAY_BATCH_MAX", bad_ints[i]);
        cr_assert_lt(load(), 0, "'%s' accepted", bad_ints[i]);
        cr_assert_not_null(strstr(errbuf, "SB_GATEWAY_BATCH_MAX"), "%s", errbuf);
        svc_conf_free(kc);
        kc = NULL;
    }
    unsetenv("SB_GATEWAY_BATCH_MAX");
    for (size_t i = 0; i < sizeof(bad_bools) / sizeof(bad_bools[0]); i++) {
        env("SB_GATEWAY_COMPRESS", bad_bools[i]);
        cr_assert_eq(load(), -EINVAL, "'%s' accepted", bad_bools[i]);
        cr_assert_not_null(strstr(errbuf, "is not a boolean"), "%s", errbuf);
    }
    unsetenv("SB_GATEWAY_COMPRESS");
    env("SB_GATEWAY_RATIO", "0.5abc");
    cr_assert_eq(load(), -EINVAL);
    cr_assert_not_null(strstr(errbuf, "SB_GATEWAY_RATIO: '0.5abc' is not a finite number"), "%s",
                       errbuf);
    env("SB_GATEWAY_RATIO", "nan");
    cr_assert_eq(load(), -EINVAL);
}

Test(svc_config, integer_range_is_enforced)
{
    env("SB_GATEWAY_BATCH_MAX", "0");
    cr_assert_eq(load(), -ERANGE);
    cr_assert_not_null(strstr(errbuf, "SB_GATEWAY_BATCH_MAX: 0 is out of range (1..100000)"), "%s",
                       errbuf);
    env("SB_GATEWAY_BATCH_MAX", "100001");
    cr_assert_eq(load(), -ERANGE);
    env("SB_GATEWAY_BATCH_MAX", "100000");
    cr_assert_eq(load(), 0, "%s", errbuf);
    cr_assert_eq(c.batch_max, 100000);
}

Test(svc_config, secret_from_file_strips_the_trailing_newline)
{
    env("SB_GATEWAY_DB_PASSWORD_FILE", file("pw", "s3cr3t-value\n"));
    cr_assert_eq(load(), 0, "%s", errbuf);
    cr_assert_str_eq(c.db_password, "s3cr3t-value");
}

Test(svc_config, secret_from_env_and_file_at_once_is_an_error)
{
    env("SB_GATEWAY_DB_PASSWORD", "a");
    env("SB_GATEWAY_DB_PASSWORD_FILE", file("pw", "b\n"));
    cr_assert_eq(load(), -EINVAL);
    cr_assert_not_null(strstr(errbuf, "not both"), "%s", errbuf);
}

Test(svc_config, file_variant_of_a_non_secret_is_unknown)
{
    env("SB_GATEWAY_LISTEN_FILE", file("l", "x"));
    cr_assert_eq(load(), -EINVAL);
    cr_assert_not_null(strstr(errbuf, "SB_GATEWAY_LISTEN_FILE"), "%s", errbuf);
}

Test(svc_config, unknown_argument_is_an_error)
{
    char *argv[] = {"test", "--verbose", NULL};

    cr_assert_eq(load_argv("gateway", 2, argv), -EINVAL);
    cr_assert_not_null(strstr(errbuf, "'--verbose'"), "%s", errbuf);
    char *argv2[] = {"test", "--config", NULL};
    cr_assert_eq(load_argv("gateway", 2, argv2), -EINVAL);
    cr_assert_not_null(strstr(errbuf, "--config needs a file name"), "%s", errbuf);
}

static char *read_all(FILE *f)
{
    size_t cap = 65536, len;
    char *buf = malloc(cap);

    cr_assert_not_null(buf);
    len = fread(buf, 1, cap - 1, f);
    buf[len] = '\0';
    return buf;
}

Test(svc_config, help_returns_1_and_lists_settings_without_secrets, .init = cr_redirect_stdout)
{
    char *argv[] = {"test", "--help", NULL};
    char *out;

    env("SB_GATEWAY_DB_PASSWORD", "hunter2-live");
    cr_assert_eq(load_argv("gateway", 2, argv), 1);
    fflush(stdout);
    out = read_all(cr_get_redirected_stdout());
    cr_assert_not_null(strstr(out, "A test service."), "%s", out);
    cr_assert_not_null(strstr(out, "SB_GATEWAY_LISTEN"), "%s", out);
    cr_assert_not_null(strstr(out, "SB_GATEWAY_BATCH_MAX"), "%s", out);
    cr_assert_not_null(strstr(out, "SB_GATEWAY_DB_PASSWORD"), "%s", out);
    cr_assert_not_null(strstr(out, "0.0.0.0:8080"), "%s", out);
    cr_assert_not_null(strstr(out, "(1..100000)"), "%s", out);
    cr_assert_not_null(strstr(out, "(secret)"), "%s", out);
    cr_assert_null(strstr(out, "defaultpw"), "a secret's default is never shown");
    cr_assert_null(strstr(out, "hunter2-live"), "a secret's value is never shown");
    free(out);
}

Test(svc_config, print_help_writes_a_table_row_per_setting)
{
    char *text = NULL;
    size_t len = 0;
    FILE *f = open_memstream(&text, &len);
    svc_conf_section_t sec = {table, &c};
    const char *row;

    svc_conf_print_help("sensor-ingest", "Ingests.", &sec, 1, f);
    fclose(f);
    row = strstr(text, "  batch_max ");
    cr_assert_not_null(row, "%s", text);
    cr_assert_not_null(strstr(row, "int"), "%s", row);
    cr_assert(strstr(row, "500") < strstr(row, "SB_SENSOR_INGEST_BATCH_MAX"), "%s", row);
    cr_assert(strstr(row, "SB_SENSOR_INGEST_BATCH_MAX") < strstr(row, "records per batch"), "%s",
              row);
    cr_assert_not_null(strstr(text, "SB_SENSOR_INGEST_DB_PASSWORD[_FILE]"), "%s", text);
    cr_assert_null(strstr(text, "defaultpw"));
    free(text);
}

Test(svc_config, bad_secret_value_is_not_echoed)
{
    static const svc_conf_entry_t t[] = {
        {SVC_CONF_INT, "pin", "1", 0, "a secret number", SVC_CONF_SECRET, 0, 0},
        {.type = SVC_CONF_END},
    };
    int64_t pin;
    svc_conf_section_t sec = {t, &pin};
    char *argv[] = {"test", NULL};

    env("SB_GATEWAY_PIN", "12ab-secret");
    cr_assert_eq(svc_conf_load("gateway", "x", &sec, 1, 1, argv, &kc, errbuf, sizeof(errbuf)),
                 -EINVAL);
    cr_assert_not_null(strstr(errbuf, "SB_GATEWAY_PIN"), "%s", errbuf);
    cr_assert_null(strstr(errbuf, "12ab-secret"), "%s", errbuf);
}
