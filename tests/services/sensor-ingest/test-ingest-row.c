/* test-ingest-row.c: sb-sensor-ingest's record -> row conversion, without Kafka. */
#include <criterion/criterion.h>
#include <errno.h>
#include <string.h>

#include "ingest_row.h"

#define ORG     "0b7c6a52-3f0e-4d55-9a1e-6c2f8d4b1a10"
#define PROJECT "5e1d2c3b-4a59-4876-8a7b-9c0d1e2f3a4b"
#define READING "7f3a1c2e-9b4d-4e8f-a1b2-c3d4e5f60718"

static ingest_input_t input(const char *value)
{
    return (ingest_input_t){
        .value = value,
        .value_len = value ? strlen(value) : 0,
        .org_id = ORG,
        .org_id_len = strlen(ORG),
        .project_id = PROJECT,
        .project_id_len = strlen(PROJECT),
        .request_id = "req-42",
        .request_id_len = 6,
        .partition = 3,
        .offset = 1234567890123,
    };
}

static const char full_reading[] = "{\"id\":\"" READING "\",\"sensor_id\":\"boiler-1.temp\","
                                   "\"ts\":\"2026-11-23T09:40:01.5Z\",\"value\":21.25,"
                                   "\"unit\":\"Cel\",\"tags\":{\"site\":\"Berlin\\\\Nord\","
                                   "\"floor\":\"2\"}}";

Test(ingest_row, valid_record_fills_every_column)
{
    ingest_input_t in = input(full_reading);
    ingest_row_t row;
    char reason[256] = "";
    cr_assert_eq(ingest_row_parse(&in, &row, reason, sizeof(reason)), 0, "%s", reason);
    cr_assert_str_eq(row.org_id, ORG);
    cr_assert_str_eq(row.project_id, PROJECT);
    cr_assert_str_eq(row.reading_id, READING);
    cr_assert_str_eq(row.sensor_id, "boiler-1.temp");
    cr_assert_eq(row.ts_us, 1795426801500000LL);
    cr_assert_eq(row.value, 21.25);
    cr_assert(row.has_unit);
    cr_assert_str_eq(row.unit, "Cel");
    cr_assert_str_eq(row.tags_json, "{\"floor\":\"2\",\"site\":\"Berlin\\\\Nord\"}");
    cr_assert(row.has_request_id);
    cr_assert_str_eq(row.request_id, "req-42");
    cr_assert_eq(row.partition, 3);
    cr_assert_eq(row.offset, 1234567890123);

    /* The COPY line: tab-separated, escaped, in ingest_columns order. The tag's backslash is
     * escaped once by JSON and once more by COPY. */
    ingest_buf_t buf = {0};
    cr_assert_eq(ingest_row_copy_append(&row, &buf), 0);
    const char *want = ORG "\t" PROJECT "\t" READING "\tboiler-1.temp\t"
                           "2026-11-23T09:40:01.500000Z\t21.25\tCel\t"
                           "{\"floor\":\"2\",\"site\":\"Berlin\\\\\\\\Nord\"}\treq-42\t3\t"
                           "1234567890123\n";
    cr_assert_eq(buf.len, strlen(want));
    cr_assert_eq(memcmp(buf.data, want, buf.len), 0, "got %.*s", (int)buf.len, buf.data);
    ingest_buf_free(&buf);
    ingest_row_clear(&row);
}

Test(ingest_row, optional_fields_become_null)
{
    ingest_input_t in = input("{\"id\":\"" READING "\",\"sensor_id\":\"s1\","
                              "\"ts\":\"2026-01-31T23:59:59+02:00\",\"value\":-3}");
    in.request_id = NULL;
    ingest_row_t row;
    char reason[256] = "";
    cr_assert_eq(ingest_row_parse(&in, &row, reason, sizeof(reason)), 0, "%s", reason);
    cr_assert_not(row.has_unit);
    cr_assert_null(row.tags_json);
    cr_assert_not(row.has_request_id);

    ingest_params_scratch_t scratch;
    const char *p[INGEST_NCOLS];
    ingest_row_params(&row, &scratch, p);
    cr_assert_str_eq(p[4], "2026-01-31T21:59:59.000000Z");
    cr_assert_str_eq(p[5], "-3");
    cr_assert_null(p[6]);
    cr_assert_null(p[7]);
    cr_assert_null(p[8]);

    ingest_buf_t buf = {0};
    cr_assert_eq(ingest_row_copy_append(&row, &buf), 0);
    const char *nulls = "\t-3\t\\N\t\\N\t\\N\t3\t";
    cr_assert(memmem(buf.data, buf.len, nulls, strlen(nulls)), "%.*s", (int)buf.len, buf.data);
    ingest_buf_free(&buf);
    ingest_row_clear(&row);
}

Test(ingest_row, upper_case_tenant_headers_are_normalised)
{
    ingest_input_t in = input(full_reading);
    const char *upper = "0B7C6A52-3F0E-4D55-9A1E-6C2F8D4B1A10";
    in.org_id = upper;
    ingest_row_t row;
    char reason[256];
    cr_assert_eq(ingest_row_parse(&in, &row, reason, sizeof(reason)), 0);
    cr_assert_str_eq(row.org_id, ORG);
    ingest_row_clear(&row);
}

Test(ingest_row, odd_request_id_is_dropped_not_rejected)
{
    ingest_input_t in = input(full_reading);
    in.request_id = "has space";
    in.request_id_len = 9;
    ingest_row_t row;
    char reason[256];
    cr_assert_eq(ingest_row_parse(&in, &row, reason, sizeof(reason)), 0);
    cr_assert_not(row.has_request_id);
    ingest_row_clear(&row);
}

Test(ingest_row, month_key_follows_utc)
{
    ingest_input_t in = input("{\"id\":\"" READING "\",\"sensor_id\":\"s1\","
                              "\"ts\":\"2026-02-01T00:30:00+01:00\",\"value\":1}");
    ingest_row_t row;
    char reason[256];
    cr_assert_eq(ingest_row_parse(&in, &row, reason, sizeof(reason)), 0, "%s", reason);
    cr_assert_eq(ingest_row_month(&row), (2026 - 1970) * 12 + 0, "still January in UTC");
    ingest_row_clear(&row);
}

/* Every way a record can be unusable, with a fragment the reason must contain. */
static void assert_rejected(ingest_input_t in, const char *fragment)
{
    ingest_row_t row;
    char reason[256] = "";
    cr_assert_eq(ingest_row_parse(&in, &row, reason, sizeof(reason)), -EINVAL);
    cr_assert(strstr(reason, fragment), "reason \"%s\" lacks \"%s\"", reason, fragment);
}

Test(ingest_row, rejects_bad_json)
{
    assert_rejected(input("{\"sensor_id\": "), "invalid JSON");
    assert_rejected(input(NULL), "empty record value");
}

Test(ingest_row, rejects_contract_violations_with_pointer)
{
    assert_rejected(input("{\"id\":\"" READING "\",\"sensor_id\":\"a/b\","
                          "\"ts\":\"2026-11-23T09:40:01Z\",\"value\":1}"),
                    "/sensor_id");
    assert_rejected(input("{\"id\":\"" READING "\",\"sensor_id\":\"s\","
                          "\"ts\":\"2026-11-23T09:40:01Z\",\"value\":1,\"extra\":true}"),
                    "sensor_reading.v1");
}

Test(ingest_row, rejects_missing_or_bad_tenant_headers)
{
    ingest_input_t in = input(full_reading);
    in.project_id = NULL;
    assert_rejected(in, "missing header sb-project-id");

    in = input(full_reading);
    in.org_id = NULL;
    assert_rejected(in, "missing header sb-org-id");

    in = input(full_reading);
    in.org_id = "not-a-uuid";
    in.org_id_len = 10;
    assert_rejected(in, "header sb-org-id is not a UUID");
}

Test(ingest_row, rejects_readings_that_bypassed_the_gateway)
{
    assert_rejected(input("{\"sensor_id\":\"s\",\"ts\":\"2026-11-23T09:40:01Z\",\"value\":1}"),
                    "no id");
    assert_rejected(input("{\"id\":\"" READING "\",\"sensor_id\":\"s\",\"value\":1}"), "no ts");
}
