/* Tests for svc_log: every line is one valid JSON object with the documented fields. */
#include <criterion/criterion.h>
#include <errno.h>
#include <fcntl.h>
#include <jansson.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "svc_log.h"

static int fds[2];

static void setup(void)
{
    cr_assert_eq(pipe2(fds, O_NONBLOCK), 0);
    /* Room for everything a test writes, so the writer never blocks on a full pipe. */
    fcntl(fds[1], F_SETPIPE_SZ, 1 << 20);
    svc_log_set_fd(fds[1]);
    svc_log_init("gateway", SVC_LOG_INFO);
}

static void teardown(void)
{
    svc_log_set_fd(2);
    close(fds[0]);
    close(fds[1]);
}

TestSuite(svc_log, .init = setup, .fini = teardown);

/* Everything written so far, as a NUL-terminated string the caller frees. */
static char *drain(void)
{
    size_t cap = 1 << 20, len = 0;
    char *buf = malloc(cap + 1);
    ssize_t n;

    cr_assert_not_null(buf);
    while ((n = read(fds[0], buf + len, cap - len)) > 0)
        len += (size_t)n;
    buf[len] = '\0';
    return buf;
}

/* Parses the next line of @*cursor as JSON, asserting it is one valid object. */
static json_t *next_line(char **cursor)
{
    char *nl = strchr(*cursor, '\n');
    json_error_t error;
    json_t *obj;

    cr_assert_not_null(nl, "no complete line left in: %s", *cursor);
    obj = json_loadb(*cursor, (size_t)(nl - *cursor), 0, &error);
    cr_assert_not_null(obj, "invalid JSON (%s): %.*s", error.text, (int)(nl - *cursor), *cursor);
    cr_assert(json_is_object(obj));
    *cursor = nl + 1;
    return obj;
}

static const char *field(json_t *obj, const char *key)
{
    return json_string_value(json_object_get(obj, key));
}

Test(svc_log, line_has_the_documented_fields)
{
    char *out, *cur;
    json_t *o;
    const char *ts;

    log_info("listening on %s:%d", "0.0.0.0", 8080);
    cur = out = drain();
    o = next_line(&cur);
    cr_assert_str_eq(field(o, "level"), "info");
    cr_assert_str_eq(field(o, "service"), "gateway");
    cr_assert_str_eq(field(o, "msg"), "listening on 0.0.0.0:8080");
    cr_assert_null(json_object_get(o, "request_id"));
    ts = field(o, "ts");
    cr_assert_not_null(ts);
    /* 2026-11-23T09:40:01.123Z */
    cr_assert_eq(strlen(ts), 24, "%s", ts);
    cr_assert(ts[4] == '-' && ts[7] == '-' && ts[10] == 'T' && ts[13] == ':' && ts[16] == ':' &&
                  ts[19] == '.' && ts[23] == 'Z',
              "%s", ts);
    cr_assert_str_eq(cur, "", "exactly one line");
    json_decref(o);
    free(out);
}

Test(svc_log, hostile_text_is_escaped_into_valid_json)
{
    const char raw[] = "quote\" back\\ nl\n tab\t bell\a bad\xff\xfe utf8 \xc3\xa9 cut\xe2\x82 "
                       "overlong\xc0\xaf surrogate\xed\xa0\x80 end";
    char *out, *cur;
    json_t *o;

    log_warn("%s", raw);
    cur = out = drain();
    cr_assert_null(strchr(out, '\a'), "control characters are escaped, not written raw");
    o = next_line(&cur);
    cr_assert_str_eq(field(o, "level"), "warn");
    cr_assert_str_eq(field(o, "msg"),
                     "quote\" back\\ nl\n tab\t bell\a bad\xef\xbf\xbd\xef\xbf\xbd utf8 \xc3\xa9 "
                     "cut\xef\xbf\xbd\xef\xbf\xbd overlong\xef\xbf\xbd\xef\xbf\xbd "
                     "surrogate\xef\xbf\xbd\xef\xbf\xbd\xef\xbf\xbd end");
    cr_assert_not_null(strstr(out, "bell\\u0007"));
    json_decref(o);
    free(out);
}

Test(svc_log, level_filter_skips_lower_levels_without_formatting)
{
    char *out, *cur;
    json_t *o;
    int formatted = 0;

    log_debug("not shown %d", ++formatted);
    cr_assert_eq(formatted, 0, "the macro checks the level before evaluating arguments");
    log_error("shown");
    svc_log_init("gateway", SVC_LOG_DEBUG);
    log_debug("now shown");
    cur = out = drain();
    o = next_line(&cur);
    cr_assert_str_eq(field(o, "level"), "error");
    json_decref(o);
    o = next_line(&cur);
    cr_assert_str_eq(field(o, "level"), "debug");
    cr_assert_str_eq(field(o, "msg"), "now shown");
    cr_assert_str_eq(cur, "");
    json_decref(o);
    free(out);
}

static void *other_thread(void *arg)
{
    (void)arg;
    log_info("from another thread");
    return NULL;
}

Test(svc_log, request_id_is_per_thread_and_escaped)
{
    pthread_t t;
    char *out, *cur;
    json_t *o;

    svc_log_set_request_id("req-\"1\"");
    log_info("with id");
    cr_assert_eq(pthread_create(&t, NULL, other_thread, NULL), 0);
    pthread_join(t, NULL);
    svc_log_set_request_id(NULL);
    log_info("cleared");

    cur = out = drain();
    o = next_line(&cur);
    cr_assert_str_eq(field(o, "request_id"), "req-\"1\"");
    json_decref(o);
    o = next_line(&cur);
    cr_assert_str_eq(field(o, "msg"), "from another thread");
    cr_assert_null(json_object_get(o, "request_id"));
    json_decref(o);
    o = next_line(&cur);
    cr_assert_null(json_object_get(o, "request_id"));
    json_decref(o);
    free(out);
}

Test(svc_log, long_messages_are_cut_and_stay_valid)
{
    size_t n = 100000;
    char *big = malloc(n + 1), *out, *cur;
    json_t *o;

    /* Worst case for escaping: every byte becomes a six-character \u00XX. */
    memset(big, '\x01', n);
    big[n] = '\0';
    svc_log_set_request_id("r1");
    log_error("%s", big);
    memset(big, 'a', n);
    log_error("%s", big);

    cur = out = drain();
    for (int i = 0; i < 2; i++) {
        o = next_line(&cur);
        cr_assert_str_eq(field(o, "request_id"), "r1", "the tail survives the cut");
        cr_assert_gt(strlen(field(o, "msg")), 500);
        cr_assert_lt(strlen(field(o, "msg")), 4100);
        cr_assert_eq(strcmp(field(o, "msg") + strlen(field(o, "msg")) - 3, "..."), 0);
        json_decref(o);
    }
    cr_assert_str_eq(cur, "");
    free(big);
    free(out);
}

Test(svc_log, level_names_parse)
{
    svc_log_level_t l;

    cr_assert_eq(svc_log_level_parse("debug", &l), 0);
    cr_assert_eq(l, SVC_LOG_DEBUG);
    cr_assert_eq(svc_log_level_parse("WARNING", &l), 0);
    cr_assert_eq(l, SVC_LOG_WARN);
    cr_assert_eq(svc_log_level_parse("error", &l), 0);
    cr_assert_eq(l, SVC_LOG_ERROR);
    cr_assert_eq(svc_log_level_parse("verbose", &l), -EINVAL);
    cr_assert_eq(svc_log_level_parse(NULL, &l), -EINVAL);
}
