/* Tests for contract_reading_record_decode: the sensor.readings.v1 Kafka record as every
 * consumer reads it (tenant headers, canonical value, optional request id). */
#include <criterion/criterion.h>
#include <errno.h>
#include <string.h>

#include "contract.h"

#define ORG     "0b8f6c4e-7d0a-4f7e-9a51-2f3c4d5e6f70"
#define PROJECT "1C2D3E4F-5A6B-4C7D-8E9F-0A1B2C3D4E5F"
#define VALUE                                                                      \
    "{\"id\":\"6f1c0c7e-2b1a-4d3c-9e8f-7a6b5c4d3e2f\",\"sensor_id\":\"boiler-7\"," \
    "\"ts\":\"2026-11-23T09:40:01.500000Z\",\"value\":73.25,\"tags\":{\"site\":\"north\"}}"

static contract_record_in_t good_input(void)
{
    return (contract_record_in_t){
        .value = VALUE,
        .value_len = strlen(VALUE),
        .org_id = ORG,
        .org_id_len = strlen(ORG),
        .project_id = PROJECT,
        .project_id_len = strlen(PROJECT),
        .request_id = "req-42",
        .request_id_len = 6,
    };
}

static void expect_rejected(const contract_record_in_t *in, const char *fragment)
{
    contract_reading_record_t rec;
    char reason[256] = "";

    cr_assert_eq(contract_reading_record_decode(in, &rec, reason, sizeof(reason)), -EINVAL);
    cr_assert(strstr(reason, fragment), "reason \"%s\" lacks \"%s\"", reason, fragment);
}

Test(contract_record, a_gateway_record_decodes_with_lower_case_tenant_ids)
{
    contract_record_in_t in = good_input();
    contract_reading_record_t rec;
    char reason[256] = "";

    cr_assert_eq(contract_reading_record_decode(&in, &rec, reason, sizeof(reason)), 0, "%s",
                 reason);
    cr_assert_str_eq(rec.org_id, ORG);
    cr_assert_str_eq(rec.project_id, "1c2d3e4f-5a6b-4c7d-8e9f-0a1b2c3d4e5f");
    cr_assert_str_eq(rec.request_id, "req-42");
    cr_assert_str_eq(rec.reading.id, "6f1c0c7e-2b1a-4d3c-9e8f-7a6b5c4d3e2f");
    cr_assert_str_eq(rec.reading.sensor_id, "boiler-7");
    cr_assert_eq(rec.reading.value, 73.25);
    cr_assert_str_eq(json_string_value(json_object_get(rec.reading.tags, "site")), "north");
    contract_reading_record_clear(&rec);
    cr_assert_null(rec.doc);
    contract_reading_record_clear(&rec); /* twice is harmless */
}

Test(contract_record, the_request_id_is_kept_only_when_printable)
{
    contract_record_in_t in = good_input();
    contract_reading_record_t rec;
    char reason[256];

    in.request_id = "bad id";
    in.request_id_len = 6;
    cr_assert_eq(contract_reading_record_decode(&in, &rec, reason, sizeof(reason)), 0);
    cr_assert_str_eq(rec.request_id, "", "a request id with a space is dropped, not rejected");
    contract_reading_record_clear(&rec);

    in.request_id = NULL;
    cr_assert_eq(contract_reading_record_decode(&in, &rec, reason, sizeof(reason)), 0);
    cr_assert_str_eq(rec.request_id, "");
    contract_reading_record_clear(&rec);
}

Test(contract_record, integers_beyond_int64_are_numbers_as_the_schema_says)
{
    const char *v = "{\"id\":\"6f1c0c7e-2b1a-4d3c-9e8f-7a6b5c4d3e2f\",\"sensor_id\":\"s\","
                    "\"ts\":\"2026-11-23T09:40:01Z\",\"value\":123456789012345678901234567890}";
    contract_record_in_t in = good_input();
    contract_reading_record_t rec;
    char reason[256] = "";

    in.value = v;
    in.value_len = strlen(v);
    cr_assert_eq(contract_reading_record_decode(&in, &rec, reason, sizeof(reason)), 0, "%s",
                 reason);
    cr_assert_float_eq(rec.reading.value, 1.2345678901234568e29, 1e15);
    contract_reading_record_clear(&rec);
}

Test(contract_record, every_unusable_record_is_rejected_with_a_reason)
{
    contract_record_in_t in = good_input();

    in.org_id = NULL;
    expect_rejected(&in, "missing header sb-org-id");

    in = good_input();
    in.project_id = "not-a-uuid";
    in.project_id_len = strlen("not-a-uuid");
    expect_rejected(&in, "header sb-project-id is not a UUID");

    in = good_input();
    in.value_len = 0;
    expect_rejected(&in, "empty record value");

    in = good_input();
    in.value = "{\"sensor_id\":";
    in.value_len = strlen("{\"sensor_id\":");
    expect_rejected(&in, "invalid JSON");

    in = good_input();
    in.value = "{\"sensor_id\":\"s\",\"value\":1,\"value\":2}";
    in.value_len = strlen(in.value);
    expect_rejected(&in, "invalid JSON"); /* duplicate keys: decode rule of the contract */

    in = good_input();
    in.value = "{\"sensor_id\":\"s\",\"value\":\"hot\"}";
    in.value_len = strlen(in.value);
    expect_rejected(&in, "sensor_reading.v1: /value");

    in = good_input();
    in.value = "{\"sensor_id\":\"s\",\"value\":1,\"ts\":\"2026-11-23T09:40:01Z\"}";
    in.value_len = strlen(in.value);
    expect_rejected(&in, "reading has no id");
}
