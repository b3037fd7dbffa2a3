/* Tests for archive_line.c: what one archived record looks like. */
#include <string.h>

#include <criterion/criterion.h>
#include <jansson.h>

#include "archive_line.h"

/* Formats @rec, checks it is exactly one line of JSON, and returns it parsed. */
static json_t *line_of(const archive_record_t *rec, archive_buf_t *buf)
{
    json_error_t err;
    json_t *doc;

    cr_assert_eq(archive_line_format(rec, buf), 0);
    cr_assert_gt(buf->len, 1);
    cr_assert_eq(buf->data[buf->len - 1], '\n', "%s", buf->data);
    cr_assert_eq(memchr(buf->data, '\n', buf->len), buf->data + buf->len - 1,
                 "more than one line: %s", buf->data);
    doc = json_loadb(buf->data, buf->len, 0, &err);
    cr_assert_not_null(doc, "%s: %s", err.text, buf->data);
    return doc;
}

Test(archive_line, record_with_everything)
{
    static const char value[] = "{\"id\":\"r1\",\n  \"value\":21.50,\r\n\"unit\":\"degC\"}";
    const archive_header_t hdrs[] = {
        {"sb-org-id", "o1", 2},
        {"sb-project-id", "p1", 2},
        {"sb-org-id", "second", 6},
    };
    archive_buf_t buf = {0};
    json_t *doc = line_of(&(archive_record_t){.topic = "sensor.readings.v1",
                                              .partition = 3,
                                              .offset = 1234,
                                              .timestamp_ms = 1795426801500LL,
                                              .key = "p1/boiler-7",
                                              .key_len = 11,
                                              .value = value,
                                              .value_len = strlen(value),
                                              .headers = hdrs,
                                              .nheaders = 3},
                          &buf);

    cr_expect_str_eq(json_string_value(json_object_get(doc, "topic")), "sensor.readings.v1");
    cr_expect_eq(json_integer_value(json_object_get(doc, "partition")), 3);
    cr_expect_eq(json_integer_value(json_object_get(doc, "offset")), 1234);
    cr_expect_str_eq(json_string_value(json_object_get(doc, "timestamp")),
                     "2026-11-23T09:40:01.500Z");
    cr_expect_eq(json_integer_value(json_object_get(doc, "timestamp_ms")), 1795426801500LL);
    cr_expect_str_eq(json_string_value(json_object_get(doc, "key")), "p1/boiler-7");
    cr_expect_str_eq(
        json_string_value(json_object_get(json_object_get(doc, "headers"), "sb-org-id")), "o1",
        "a repeated header keeps its first value");
    cr_expect_str_eq(
        json_string_value(json_object_get(json_object_get(doc, "headers"), "sb-project-id")), "p1");
    cr_expect_str_eq(json_string_value(json_object_get(json_object_get(doc, "value"), "id")), "r1");
    /* The value is the producer's bytes: 21.50 keeps its spelling. */
    cr_expect(strstr(buf.data, "\"value\":21.50,"), "%s", buf.data);
    cr_expect_null(json_object_get(doc, "value_base64"));
    json_decref(doc);
    archive_buf_free(&buf);
}

Test(archive_line, what_is_not_json_or_utf8_is_kept_in_base64)
{
    const archive_header_t hdrs[] = {{"bin", "\xff\x01", 2}};
    archive_buf_t buf = {0};
    json_t *doc = line_of(&(archive_record_t){.topic = "t",
                                              .offset = 7,
                                              .timestamp_ms = -1,
                                              .key = "\xc3\x28",
                                              .key_len = 2,
                                              .value = "not json\n",
                                              .value_len = 9,
                                              .headers = hdrs,
                                              .nheaders = 1},
                          &buf);

    cr_expect(json_is_null(json_object_get(doc, "timestamp")));
    cr_expect(json_is_null(json_object_get(doc, "key")));
    cr_expect_str_eq(json_string_value(json_object_get(doc, "key_base64")), "wyg=");
    cr_expect(json_is_null(json_object_get(doc, "value")));
    cr_expect_str_eq(json_string_value(json_object_get(doc, "value_base64")), "bm90IGpzb24K");
    cr_expect_null(json_object_get(json_object_get(doc, "headers"), "bin"));
    cr_expect_str_eq(
        json_string_value(json_object_get(json_object_get(doc, "headers_base64"), "bin")), "/wE=");
    json_decref(doc);
    archive_buf_free(&buf);
}

Test(archive_line, no_key_no_value_and_buffer_reuse)
{
    archive_buf_t buf = {0};
    json_t *doc = line_of(&(archive_record_t){.topic = "t", .offset = 1, .timestamp_ms = 0}, &buf);

    cr_expect(json_is_null(json_object_get(doc, "key")));
    cr_expect(json_is_null(json_object_get(doc, "value")));
    cr_expect_str_eq(json_string_value(json_object_get(doc, "timestamp")),
                     "1970-01-01T00:00:00.000Z");
    json_decref(doc);
    /* A second record replaces the first. */
    doc = line_of(&(archive_record_t){.topic = "u", .offset = 2, .value = "[1]", .value_len = 3},
                  &buf);
    cr_expect_str_eq(json_string_value(json_object_get(doc, "topic")), "u");
    cr_expect_eq(json_integer_value(json_array_get(json_object_get(doc, "value"), 0)), 1);
    json_decref(doc);
    archive_buf_free(&buf);
}
