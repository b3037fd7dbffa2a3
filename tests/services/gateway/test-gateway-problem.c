/* problem+json as a client reads it. */
#include <criterion/criterion.h>
#include <stdlib.h>
#include <string.h>

#include "gateway.h"

static json_t *render(const gw_problem_t *p, const char *request_id)
{
    char *text = gw_problem_render(p, request_id);
    json_t *doc;

    cr_assert_not_null(text);
    doc = json_loads(text, 0, NULL);
    cr_assert_not_null(doc, "not JSON: %s", text);
    free(text);
    return doc;
}

Test(problem, has_every_member_rfc9457_and_the_request_id)
{
    gw_problem_t p = {0};
    json_t *doc;

    gw_problem_set(&p, 415, "unsupported-media-type", "got %s", "text/plain");
    doc = render(&p, "req-1");
    cr_assert_str_eq(json_string_value(json_object_get(doc, "type")),
                     "https://sensorbus.dev/problems/unsupported-media-type");
    cr_assert_str_eq(json_string_value(json_object_get(doc, "title")), "Unsupported media type");
    cr_assert_eq(json_integer_value(json_object_get(doc, "status")), 415);
    cr_assert_str_eq(json_string_value(json_object_get(doc, "detail")), "got text/plain");
    cr_assert_str_eq(json_string_value(json_object_get(doc, "request_id")), "req-1");
    cr_assert_null(json_object_get(doc, "errors"));
    json_decref(doc);
    gw_problem_clear(&p);
}

Test(problem, errors_are_carried_and_request_id_is_optional)
{
    gw_problem_t p = {0};
    json_t *doc;

    gw_problem_set(&p, 422, "invalid-reading", "bad");
    p.errors = json_pack("[{s:i, s:s, s:s}]", "index", 3, "pointer", "/3/value", "reason", "x");
    doc = render(&p, NULL);
    cr_assert_null(json_object_get(doc, "request_id"));
    cr_assert_str_eq(json_string_value(json_object_get(
                         json_array_get(json_object_get(doc, "errors"), 0), "pointer")),
                     "/3/value");
    json_decref(doc);
    /* Setting the problem again replaces the errors of the earlier one. */
    gw_problem_set(&p, 400, "malformed-json", "again");
    cr_assert_null(p.errors);
    gw_problem_clear(&p);
}

Test(problem, detail_with_quotes_and_control_characters_stays_valid_json)
{
    gw_problem_t p = {0};
    json_t *doc;

    gw_problem_set(&p, 400, "malformed-json", "near '\"\\\n\t'");
    doc = render(&p, "r");
    cr_assert_str_eq(json_string_value(json_object_get(doc, "detail")), "near '\"\\\n\t'");
    json_decref(doc);
}

Test(problem, every_slug_the_gateway_uses_has_a_title)
{
    const char *slugs[] = {"malformed-json",
                           "invalid-body",
                           "invalid-reading",
                           "batch-too-large",
                           "body-too-large",
                           "headers-too-large",
                           "unsupported-media-type",
                           "unauthorized",
                           "forbidden",
                           "not-found",
                           "method-not-allowed",
                           "request-timeout",
                           "unavailable",
                           "too-many-connections",
                           "internal-error"};
    gw_problem_t p = {0};

    for (size_t i = 0; i < sizeof(slugs) / sizeof(slugs[0]); i++) {
        gw_problem_set(&p, 400, slugs[i], "x");
        cr_assert_str_neq(p.title, "Error", "no title for %s", slugs[i]);
    }
}
