/* Request bodies of POST /sensors/data: what is accepted, and what each refusal says. */
#include <criterion/criterion.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "gateway.h"

static int parse(const char *body, gw_body_format_t format, size_t max_batch, gw_batch_t *batch,
                 gw_problem_t *p)
{
    return gw_batch_parse(batch, body, strlen(body), format, max_batch, p);
}

/* A JSON array of @n readings, the ones in @bad (index list ending in -1) without a value. */
static char *array_of(size_t n, const int *bad)
{
    json_t *arr = json_array();
    char *text;

    for (size_t i = 0; i < n; i++) {
        json_t *doc = json_pack("{s:s}", "sensor_id", "s-1");
        bool is_bad = false;

        for (const int *b = bad; b && *b >= 0; b++)
            is_bad |= (size_t)*b == i;
        if (!is_bad)
            json_object_set_new(doc, "value", json_real((double)i));
        json_array_append_new(arr, doc);
    }
    text = json_dumps(arr, JSON_COMPACT);
    json_decref(arr);
    return text;
}

Test(body, one_object_is_one_reading)
{
    gw_batch_t b;
    gw_problem_t p = {0};

    cr_assert_eq(parse("{\"sensor_id\":\"boiler-7\",\"value\":73.25,\"unit\":\"Cel\","
                       "\"tags\":{\"site\":\"north\"}}",
                       GW_BODY_JSON, 10, &b, &p),
                 0, "%s", p.detail);
    cr_assert_eq(b.n, 1);
    cr_assert(b.single);
    cr_assert_str_eq(b.readings[0].sensor_id, "boiler-7");
    cr_assert_float_eq(b.readings[0].value, 73.25, 1e-12);
    cr_assert_str_eq(json_string_value(json_object_get(b.readings[0].tags, "site")), "north");
    gw_batch_clear(&b);
}

Test(body, an_array_keeps_order)
{
    gw_batch_t b;
    gw_problem_t p = {0};
    char *text = array_of(5, NULL);

    cr_assert_eq(parse(text, GW_BODY_JSON, 10, &b, &p), 0, "%s", p.detail);
    cr_assert_eq(b.n, 5);
    cr_assert_not(b.single);
    for (size_t i = 0; i < 5; i++)
        cr_assert_float_eq(b.readings[i].value, (double)i, 1e-12);
    gw_batch_clear(&b);
    free(text);
}

Test(body, ndjson_skips_blank_lines_and_accepts_crlf)
{
    gw_batch_t b;
    gw_problem_t p = {0};
    const char *nd =
        "{\"sensor_id\":\"a\",\"value\":1}\r\n\n   \n{\"sensor_id\":\"b\",\"value\":2}\n"
        "{\"sensor_id\":\"c\",\"value\":3}";

    cr_assert_eq(parse(nd, GW_BODY_NDJSON, 10, &b, &p), 0, "%s", p.detail);
    cr_assert_eq(b.n, 3);
    cr_assert_str_eq(b.readings[1].sensor_id, "b");
    cr_assert_str_eq(b.readings[2].sensor_id, "c");
    gw_batch_clear(&b);
}

Test(body, malformed_json_is_400_with_line_and_column)
{
    gw_batch_t b;
    gw_problem_t p = {0};

    cr_assert_lt(parse("{\"sensor_id\": \"a\",\n \"value\": 1", GW_BODY_JSON, 10, &b, &p), 0);
    cr_assert_eq(p.status, 400);
    cr_assert_str_eq(p.slug, "malformed-json");
    cr_assert(strstr(p.detail, "line 2"), "%s", p.detail);
    cr_assert(strstr(p.detail, "column"), "%s", p.detail);
    cr_assert_null(b.docs);
}

Test(body, a_malformed_ndjson_line_is_named_by_its_line_number)
{
    gw_batch_t b;
    gw_problem_t p = {0};

    cr_assert_lt(parse("{\"sensor_id\":\"a\",\"value\":1}\n\n{\"sensor_id\":}\n", GW_BODY_NDJSON,
                       10, &b, &p),
                 0);
    cr_assert_eq(p.status, 400);
    cr_assert(strstr(p.detail, "line 3"), "%s", p.detail);
}

Test(body, empty_bodies_are_400)
{
    gw_batch_t b;
    gw_problem_t p = {0};

    cr_assert_lt(parse("", GW_BODY_JSON, 10, &b, &p), 0);
    cr_assert_eq(p.status, 400);
    cr_assert_lt(parse(" \n\n", GW_BODY_NDJSON, 10, &b, &p), 0);
    cr_assert_eq(p.status, 400);
}

Test(body, an_empty_array_is_422)
{
    gw_batch_t b;
    gw_problem_t p = {0};

    cr_assert_lt(parse("[]", GW_BODY_JSON, 10, &b, &p), 0);
    cr_assert_eq(p.status, 422);
    cr_assert_str_eq(p.slug, "invalid-body");
}

Test(body, duplicate_keys_are_malformed)
{
    gw_batch_t b;
    gw_problem_t p = {0};

    cr_assert_lt(parse("{\"sensor_id\":\"a\",\"value\":1,\"value\":2}", GW_BODY_JSON, 10, &b, &p),
                 0);
    cr_assert_eq(p.status, 400);
    cr_assert(strstr(p.detail, "duplicate"), "%s", p.detail);
}

Test(body, more_readings_than_max_batch_is_413_stating_the_limit)
{
    gw_batch_t b;
    gw_problem_t p = {0};
    char *text = array_of(11, NULL), *nd = calloc(1, 11 * 40);

    cr_assert_eq(parse(text, GW_BODY_JSON, 11, &b, &p), 0);
    gw_batch_clear(&b);
    cr_assert_lt(parse(text, GW_BODY_JSON, 10, &b, &p), 0);
    cr_assert_eq(p.status, 413);
    cr_assert(strstr(p.detail, "10"), "%s", p.detail);
    for (int i = 0; i < 11; i++)
        strcat(nd, "{\"sensor_id\":\"a\",\"value\":1}\n");
    cr_assert_lt(parse(nd, GW_BODY_NDJSON, 10, &b, &p), 0);
    cr_assert_eq(p.status, 413);
    free(text);
    free(nd);
}

Test(body, every_invalid_record_is_named_and_nothing_is_returned)
{
    gw_batch_t b;
    gw_problem_t p = {0};
    const int bad[] = {1, 3, -1};
    char *text = array_of(5, bad);
    json_t *errors;

    cr_assert_lt(parse(text, GW_BODY_JSON, 10, &b, &p), 0);
    cr_assert_eq(p.status, 422);
    cr_assert_str_eq(p.slug, "invalid-reading");
    cr_assert_null(b.readings);
    errors = p.errors;
    cr_assert_eq(json_array_size(errors), 2);
    cr_assert_eq(json_integer_value(json_object_get(json_array_get(errors, 0), "index")), 1);
    cr_assert_eq(json_integer_value(json_object_get(json_array_get(errors, 1), "index")), 3);
    for (size_t i = 0; i < 2; i++) {
        json_t *e = json_array_get(errors, i);
        char want[8];

        snprintf(want, sizeof(want), "/%d", (int)json_integer_value(json_object_get(e, "index")));
        cr_assert_eq(strncmp(json_string_value(json_object_get(e, "pointer")), want, strlen(want)),
                     0);
        cr_assert_gt(strlen(json_string_value(json_object_get(e, "reason"))), 0);
    }
    gw_problem_clear(&p);
    free(text);
}

Test(body, a_bare_object_is_pointed_into_from_its_root)
{
    gw_batch_t b;
    gw_problem_t p = {0};

    cr_assert_lt(parse("{\"sensor_id\":\"bad id!\",\"value\":1}", GW_BODY_JSON, 10, &b, &p), 0);
    cr_assert_eq(p.status, 422);
    cr_assert_str_eq(json_string_value(json_object_get(json_array_get(p.errors, 0), "pointer")),
                     "/sensor_id");
    gw_problem_clear(&p);
}

Test(body, ndjson_errors_count_records_not_lines)
{
    gw_batch_t b;
    gw_problem_t p = {0};

    cr_assert_lt(parse("{\"sensor_id\":\"a\",\"value\":1}\n\n{\"sensor_id\":\"b\"}\n",
                       GW_BODY_NDJSON, 10, &b, &p),
                 0);
    cr_assert_eq(p.status, 422);
    cr_assert_eq(json_array_size(p.errors), 1);
    cr_assert_eq(json_integer_value(json_object_get(json_array_get(p.errors, 0), "index")), 1);
    gw_problem_clear(&p);
}

Test(body, the_error_list_is_capped_but_the_count_is_told)
{
    gw_batch_t b;
    gw_problem_t p = {0};
    int bad[GW_MAX_ERRORS + 51];
    char *text, count[32];

    for (int i = 0; i < GW_MAX_ERRORS + 50; i++)
        bad[i] = i;
    bad[GW_MAX_ERRORS + 50] = -1;
    text = array_of(GW_MAX_ERRORS + 60, bad);
    cr_assert_lt(parse(text, GW_BODY_JSON, 1000, &b, &p), 0);
    cr_assert_eq(json_array_size(p.errors), GW_MAX_ERRORS);
    snprintf(count, sizeof(count), "%d of %d", GW_MAX_ERRORS + 50, GW_MAX_ERRORS + 60);
    cr_assert(strstr(p.detail, count), "%s", p.detail);
    gw_problem_clear(&p);
    free(text);
}

Test(body, content_types)
{
    gw_body_format_t f;
    gw_problem_t p = {0};

    cr_assert_eq(gw_body_format("application/json", &f, &p), 0);
    cr_assert_eq(f, GW_BODY_JSON);
    cr_assert_eq(gw_body_format("Application/JSON; charset=utf-8", &f, &p), 0);
    cr_assert_eq(f, GW_BODY_JSON);
    cr_assert_eq(gw_body_format(NULL, &f, &p), 0);
    cr_assert_eq(f, GW_BODY_JSON);
    cr_assert_eq(gw_body_format("application/x-ndjson", &f, &p), 0);
    cr_assert_eq(f, GW_BODY_NDJSON);
    cr_assert_lt(gw_body_format("application/x-www-form-urlencoded", &f, &p), 0);
    cr_assert_eq(p.status, 415);
    cr_assert_lt(gw_body_format("application/jsonx", &f, &p), 0);
}

Test(body, a_json_scalar_is_an_invalid_reading_not_malformed_json)
{
    gw_batch_t b;
    gw_problem_t p = {0};

    cr_assert_lt(parse("\"t1\"", GW_BODY_JSON, 10, &b, &p), 0);
    cr_assert_eq(p.status, 422);
    cr_assert_str_eq(p.slug, "invalid-reading");
    gw_problem_clear(&p);
    cr_assert_lt(parse("{\"sensor_id\":\"a\",\"value\":1}\n42\n", GW_BODY_NDJSON, 10, &b, &p), 0);
    cr_assert_eq(p.status, 422);
    cr_assert_str_eq(json_string_value(json_object_get(json_array_get(p.errors, 0), "pointer")),
                     "/1");
    gw_problem_clear(&p);
}
