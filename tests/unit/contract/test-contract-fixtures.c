/* The C validator against every fixture in proto/examples: valid/ must pass (and its canonical
 * dump must pass again, with the same content), invalid/ must fail. */
#include <dirent.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <criterion/criterion.h>

#include "contract.h"

typedef void (*fixture_fn)(const char *path, const char *name);

/* Calls @fn on every *.json in proto/examples/@sub and returns how many there were. */
static int fixtures_foreach(const char *sub, fixture_fn fn)
{
    const char *src = getenv("SB_SOURCE_DIR");
    char dir[4096], path[4096 + 256];
    struct dirent *de;
    DIR *d;
    int n = 0;

    cr_assert(src, "SB_SOURCE_DIR is not set (meson test sets it)");
    snprintf(dir, sizeof(dir), "%s/proto/examples/%s", src, sub);
    d = opendir(dir);
    cr_assert(d, "cannot open %s: %s", dir, strerror(errno));
    while ((de = readdir(d))) {
        size_t len = strlen(de->d_name);

        if (len < 6 || strcmp(de->d_name + len - 5, ".json") != 0)
            continue;
        snprintf(path, sizeof(path), "%s/%s", dir, de->d_name);
        fn(path, de->d_name);
        n++;
    }
    closedir(d);
    return n;
}

static void check_valid(const char *path, const char *name)
{
    contract_reading_t r, r2;
    contract_error_t err = {0};
    json_error_t jerr;
    json_t *doc, *again;
    char *dump;

    doc = json_load_file(path, CONTRACT_JSON_DECODE_FLAGS, &jerr);
    cr_assert(doc, "valid/%s does not decode: %s", name, jerr.text);
    cr_expect_eq(contract_reading_validate(doc, &r, &err), 0, "valid/%s rejected at '%s': %s", name,
                 err.pointer, err.reason);

    dump = contract_reading_dump(&r);
    cr_assert(dump, "valid/%s: dump failed", name);
    again = json_loads(dump, CONTRACT_JSON_DECODE_FLAGS, &jerr);
    cr_assert(again, "valid/%s: dump %s does not decode: %s", name, dump, jerr.text);
    cr_expect_eq(contract_reading_validate(again, &r2, &err), 0,
                 "valid/%s: dump %s rejected at '%s': %s", name, dump, err.pointer, err.reason);

    /* The dump carries the same reading, not just some valid one. */
    cr_expect_str_eq(r2.sensor_id, r.sensor_id, "valid/%s: sensor_id changed", name);
    cr_expect(r2.value == r.value, "valid/%s: value %.17g became %.17g", name, r.value, r2.value);
    cr_expect_eq(r2.has_id, r.has_id, "valid/%s", name);
    cr_expect_str_eq(r2.id, r.id, "valid/%s: id changed", name);
    cr_expect_eq(r2.has_ts, r.has_ts, "valid/%s", name);
    cr_expect_eq(r2.ts_us, r.ts_us, "valid/%s: ts changed in %s", name, dump);
    cr_expect_eq(r2.has_unit, r.has_unit, "valid/%s", name);
    cr_expect_str_eq(r2.unit, r.unit, "valid/%s: unit changed", name);
    cr_expect(json_equal(r2.tags, r.tags) || (!r.tags && json_object_size(r2.tags) == 0) ||
                  (!r2.tags && json_object_size(r.tags) == 0),
              "valid/%s: tags changed in %s", name, dump);

    json_decref(again);
    free(dump);
    json_decref(doc);
}

static void check_invalid(const char *path, const char *name)
{
    contract_error_t err = {0};
    json_error_t jerr;
    json_t *doc;

    /* The gateway answers 400 to text jansson refuses as well; only numbers beyond a double
     * (which the schema rejects by its maximum) are expected to stop there. */
    doc = json_load_file(path, CONTRACT_JSON_DECODE_FLAGS, &jerr);
    if (!doc) {
        cr_expect(strstr(name, "overflow"), "invalid/%s does not even decode: %s", name, jerr.text);
        return;
    }
    cr_expect_eq(contract_reading_validate(doc, NULL, &err), -EINVAL, "invalid/%s was accepted",
                 name);
    cr_expect(err.reason[0], "invalid/%s: no reason given", name);
    json_decref(doc);
}

Test(contract_fixtures, valid_ones_pass_and_their_dump_passes_again)
{
    int n = fixtures_foreach("valid", check_valid);
    cr_expect_geq(n, 12, "only %d valid fixtures", n);
}

Test(contract_fixtures, invalid_ones_fail)
{
    int n = fixtures_foreach("invalid", check_invalid);
    cr_expect_geq(n, 25, "only %d invalid fixtures", n);
}

static json_t *load_fixture(const char *rel)
{
    char path[4096];
    json_error_t jerr;
    json_t *doc;

    snprintf(path, sizeof(path), "%s/proto/examples/%s", getenv("SB_SOURCE_DIR"), rel);
    doc = json_load_file(path, CONTRACT_JSON_DECODE_FLAGS, &jerr);
    cr_assert(doc, "%s: %s", rel, jerr.text);
    return doc;
}

Test(contract_fixtures, canonical_dump_of_the_full_example)
{
    json_t *doc = load_fixture("valid/full.json");
    contract_reading_t r;
    char *dump;

    cr_assert_eq(contract_reading_validate(doc, &r, NULL), 0);
    dump = contract_reading_dump(&r);
    /* UTC with microseconds, shortest exact value, tag names sorted. */
    cr_expect_str_eq(
        dump, "{\"id\":\"0b5cbf0e-7d43-4c57-9f1e-58d4d9f1c2aa\","
              "\"sensor_id\":\"greenhouse-7.temp\","
              "\"ts\":\"2026-11-23T09:40:01.500000Z\",\"value\":21.4,\"unit\":\"Cel\","
              "\"tags\":{\"firmware_rev\":\"4.1.0-rc2\",\"floor\":\"2\",\"site\":\"lyon\"}}");
    free(dump);
    json_decref(doc);
}

Test(contract_fixtures, id_is_lower_cased_and_integers_dump_as_numbers)
{
    json_t *doc = load_fixture("valid/id_upper_case.json");
    contract_reading_t r;

    cr_assert_eq(contract_reading_validate(doc, &r, NULL), 0);
    cr_expect(r.has_id);
    cr_expect_str_eq(r.id, "0b5cbf0e-7d43-4c57-9f1e-58d4d9f1c2aa");
    json_decref(doc);

    doc = load_fixture("valid/value_integer.json");
    cr_assert_eq(contract_reading_validate(doc, &r, NULL), 0);
    cr_expect(!r.has_id && !r.has_ts && !r.has_unit && !r.tags);
    char *dump = contract_reading_dump(&r);
    cr_expect_str_eq(dump, "{\"sensor_id\":\"door-3\",\"value\":1.0}");
    free(dump);
    json_decref(doc);
}

static void expect_error(const char *rel, const char *pointer)
{
    json_t *doc = load_fixture(rel);
    contract_error_t err = {0};

    cr_expect_eq(contract_reading_validate(doc, NULL, &err), -EINVAL, "%s accepted", rel);
    cr_expect_str_eq(err.pointer, pointer, "%s: reason '%s'", rel, err.reason);
    json_decref(doc);
}

Test(contract_fixtures, errors_point_at_the_offending_field)
{
    expect_error("invalid/not_an_object_array.json", "");
    expect_error("invalid/missing_value.json", "/value");
    expect_error("invalid/additional_property.json", "/temperature");
    expect_error("invalid/sensor_id_65_chars.json", "/sensor_id");
    expect_error("invalid/ts_leap_second_60.json", "/ts");
    expect_error("invalid/unit_non_ascii_degree_sign.json", "/unit");
    expect_error("invalid/tags_17.json", "/tags");
    expect_error("invalid/tag_name_upper_case.json", "/tags/Site");
    expect_error("invalid/tag_value_65_code_points_multibyte.json", "/tags/label");
}

Test(contract_fixtures, pointer_escapes_and_truncates_long_keys)
{
    contract_error_t err = {0};
    char key[300];
    json_t *doc;

    doc = json_pack("{s:s, s:f, s:{s:s}}", "sensor_id", "t1", "value", 1.0, "tags", "a/b~c", "x");
    cr_assert(doc);
    cr_expect_eq(contract_reading_validate(doc, NULL, &err), -EINVAL);
    cr_expect_str_eq(err.pointer, "/tags/a~1b~0c");
    json_decref(doc);

    /* 299 two-byte characters: the pointer is cut, but never inside a character. */
    for (size_t i = 0; i + 1 < sizeof(key); i += 2)
        memcpy(key + i, "\xc3\xa9", 2);
    key[sizeof(key) - 2] = '\0';
    doc = json_pack("{s:s, s:f, s:s}", "sensor_id", "t1", "value", 1.0, key, "x");
    cr_assert(doc);
    cr_expect_eq(contract_reading_validate(doc, NULL, &err), -EINVAL);
    cr_expect_lt(strlen(err.pointer), sizeof(err.pointer));
    cr_expect_eq(strlen(err.pointer) % 2, 1, "'/' plus whole two-byte characters");
    json_decref(doc);
}
