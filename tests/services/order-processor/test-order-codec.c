/* test-order-codec.c: decoding orders.v1 commands and encoding orders.events.v1 events. */
#include <criterion/criterion.h>
#include <errno.h>
#include <string.h>

#include "order_codec.h"

#define CMD_ID   "6f1c2a64-3b7e-4d2a-9c1f-0e5b8a7d4c21"
#define ORDER_ID "0b5cbf0e-7d43-4c57-9f1e-58d4d9f1c2aa"
#define ORG_ID   "11111111-2222-4333-8444-555555555555"

#define SHIPPING                                                                                \
    "\"shipping\":{\"name\":\"Ada\",\"line1\":\"1 Main St\",\"city\":\"Lyon\",\"postal_code\":" \
    "\"69001\",\"country\":\"FR\"}"

static const char create_doc[] =
    "{\"type\":\"create\",\"command_id\":\"" CMD_ID "\",\"order_id\":\"" ORDER_ID
    "\",\"org_id\":\"" ORG_ID "\",\"project_id\":null,\"requested_at\":\"2026-11-23T09:40:01Z\","
    "\"request_id\":\"req-1\",\"actor\":{\"kind\":\"user\",\"id\":\"" ORG_ID "\"},"
    "\"order\":{\"customer_id\":\"acme\",\"sku\":\"SB-TEMP-100\",\"quantity\":12," SHIPPING
    ",\"notes\":\"ring twice\"}}";

static int decode(const char *doc, order_command_t *cmd, char *reason)
{
    return order_command_decode(doc, strlen(doc), cmd, reason, 256);
}

Test(order_command, create)
{
    order_command_t c;
    char reason[256];
    cr_assert_eq(decode(create_doc, &c, reason), 0, "%s", reason);
    cr_expect_eq(c.type, ORDER_CMD_CREATE);
    cr_expect_str_eq(c.command_id, CMD_ID);
    cr_expect_str_eq(c.order_id, ORDER_ID);
    cr_expect_str_eq(c.org_id, ORG_ID);
    cr_expect_str_eq(c.project_id, "");
    cr_expect_str_eq(c.request_id, "req-1");
    cr_expect_eq(c.requested_us, 1795426801000000LL);
    cr_expect_str_eq(c.customer_id, "acme");
    cr_expect_str_eq(c.sku, "SB-TEMP-100");
    cr_expect_eq(c.quantity, 12);
    cr_expect_str_eq(c.notes, "ring twice");
    cr_expect(json_is_object(c.shipping));
    cr_expect(json_is_object(c.actor));
    order_command_clear(&c);
    order_command_clear(&c); /* clearing twice is harmless */
}

Test(order_command, transition_with_upper_case_ids)
{
    static const char doc[] =
        "{\"type\":\"transition\",\"command_id\":\"6F1C2A64-3B7E-4D2A-9C1F-0E5B8A7D4C21\","
        "\"order_id\":\"" ORDER_ID "\",\"org_id\":\"" ORG_ID "\",\"to\":\"in_production\","
        "\"reason\":\"go\",\"requested_at\":\"2026-11-23T10:40:01.5+01:00\"}";
    order_command_t c;
    char reason[256];
    cr_assert_eq(decode(doc, &c, reason), 0, "%s", reason);
    cr_expect_eq(c.type, ORDER_CMD_TRANSITION);
    cr_expect_str_eq(c.command_id, CMD_ID);
    cr_expect_eq(c.to, ORDER_IN_PRODUCTION);
    cr_expect_str_eq(c.reason, "go");
    cr_expect_eq(c.requested_us, 1795426801500000LL);
    cr_expect_str_eq(c.request_id, "");
    cr_expect_null(c.actor);
    order_command_clear(&c);
}

/* A quantity the rules refuse still decodes: the order is then rejected, not dead-lettered. */
Test(order_command, out_of_range_quantity_decodes)
{
    static const char *const docs[] = {"0", "-3", "1e7", "2.0"};
    static const int64_t want[] = {0, -3, 10000000, 2};
    for (size_t i = 0; i < 4; i++) {
        char doc[1024], reason[256];
        const char *q = strstr(create_doc, "\"quantity\":12");
        snprintf(doc, sizeof(doc), "%.*s\"quantity\":%s%s", (int)(q - create_doc), create_doc,
                 docs[i], q + strlen("\"quantity\":12"));
        order_command_t c;
        cr_assert_eq(decode(doc, &c, reason), 0, "%s: %s", docs[i], reason);
        cr_expect_eq(c.quantity, want[i]);
        order_command_clear(&c);
    }
}

/* Replaces the first occurrence of @from in the create document by @to. */
static void mutate(char *out, size_t size, const char *from, const char *to)
{
    const char *p = strstr(create_doc, from);
    cr_assert_not_null(p, "%s", from);
    snprintf(out, size, "%.*s%s%s", (int)(p - create_doc), create_doc, to, p + strlen(from));
}

Test(order_command, bad_commands_say_why)
{
    static const struct {
        const char *from, *to, *reason;
    } cases[] = {
        {"{\"type\":\"create\",", "[", "invalid JSON"},
        {"\"type\":\"create\"", "\"type\":\"delete\"", "type must be"},
        {"\"type\":\"create\",", "", "missing type"},
        {"\"command_id\":\"" CMD_ID "\"", "\"command_id\":\"x\"", "command_id must be a UUID"},
        {"\"order_id\":\"" ORDER_ID "\",", "", "missing order_id"},
        {"\"org_id\":\"" ORG_ID "\"", "\"org_id\":7", "org_id must be a UUID"},
        {"\"project_id\":null", "\"project_id\":\"p1\"", "project_id must be a UUID"},
        {"\"requested_at\":\"2026-11-23T09:40:01Z\"", "\"requested_at\":\"yesterday\"",
         "requested_at must be"},
        {"\"actor\":{", "\"actor\":\"me\",\"x\":{", "actor must be an object"},
        {"\"customer_id\":\"acme\",", "", "missing order.customer_id"},
        {"\"customer_id\":\"acme\"", "\"customer_id\":\"\"", "order.customer_id must be 1-64"},
        {"\"customer_id\":\"acme\"", "\"customer_id\":\"a\\tb\"", "order.customer_id must be"},
        {"\"sku\":\"SB-TEMP-100\"",
         "\"sku\":\"12345678901234567890123456789012345678901234567890123456789012345\"",
         "order.sku must be 1-64"},
        {"\"quantity\":12", "\"quantity\":1.5", "order.quantity must be an integer"},
        {"\"quantity\":12", "\"quantity\":\"12\"", "order.quantity must be an integer"},
        {"\"quantity\":12,", "", "missing order.quantity"},
        {SHIPPING ",", "", "missing order.shipping"},
        {"\"city\":\"Lyon\",", "", "missing order.shipping.city"},
        {"\"notes\":\"ring twice\"", "\"notes\":5", "order.notes must be a string"},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        char doc[2048], reason[256] = "";
        order_command_t c;
        mutate(doc, sizeof(doc), cases[i].from, cases[i].to);
        cr_expect_eq(decode(doc, &c, reason), -EINVAL, "case %zu accepted: %s", i, doc);
        cr_expect(strstr(reason, cases[i].reason) != NULL, "case %zu: '%s' lacks '%s'", i, reason,
                  cases[i].reason);
        cr_expect_null(c.doc);
    }
}

Test(order_command, bad_transitions_say_why)
{
    static const struct {
        const char *doc, *reason;
    } cases[] = {
        {"{\"type\":\"transition\",\"command_id\":\"" CMD_ID "\",\"order_id\":\"" ORDER_ID
         "\",\"org_id\":\"" ORG_ID "\",\"requested_at\":\"2026-11-23T09:40:01Z\"}",
         "missing to"},
        {"{\"type\":\"transition\",\"command_id\":\"" CMD_ID "\",\"order_id\":\"" ORDER_ID
         "\",\"org_id\":\"" ORG_ID "\",\"to\":\"lost\",\"requested_at\":\"2026-11-23T09:40:01Z\"}",
         "to must be an order status"},
        {"\"just a string\"", "must be a JSON object"},
        {"{\"a\":1,\"a\":2}", "invalid JSON"},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        char reason[256] = "";
        order_command_t c;
        cr_expect_eq(decode(cases[i].doc, &c, reason), -EINVAL, "case %zu", i);
        cr_expect(strstr(reason, cases[i].reason) != NULL, "case %zu: '%s'", i, reason);
    }
    char reason[256];
    order_command_t c;
    cr_expect_eq(order_command_decode("", 0, &c, reason, sizeof(reason)), -EINVAL);
    cr_expect_eq(order_command_decode(NULL, 0, &c, reason, sizeof(reason)), -EINVAL);
}

/* Reference values from Python's uuid.uuid5(uuid.UUID(CMD_ID), str(seq)). */
Test(order_event, ids_are_rfc4122_name_based)
{
    char id[37];
    cr_assert_eq(order_event_id(CMD_ID, 1, id), 0);
    cr_expect_str_eq(id, "9f032412-ca76-5a6b-9dad-d0f16dac8b70");
    cr_assert_eq(order_event_id(CMD_ID, 2, id), 0);
    cr_expect_str_eq(id, "5b5aca4e-74d2-5ae6-9f35-690e06d07af3");
    cr_assert_eq(order_event_id("6F1C2A64-3B7E-4D2A-9C1F-0E5B8A7D4C21", 17, id), 0);
    cr_expect_str_eq(id, "d71d5a37-1226-51e7-856b-a20730a9c21c");
    cr_expect_eq(order_event_id("not-a-uuid", 1, id), -EINVAL);
    cr_expect_eq(order_event_id(NULL, 1, id), -EINVAL);
}

Test(order_event, dump)
{
    order_event_t ev = {.event_id = "9f032412-ca76-5a6b-9dad-d0f16dac8b70",
                        .order_id = ORDER_ID,
                        .org_id = ORG_ID,
                        .command_id = CMD_ID,
                        .seq = 2,
                        .type = ORDER_EV_STATUS_CHANGED,
                        .from = "pending",
                        .to = "accepted",
                        .at = "2026-11-23T09:40:01.000000Z"};
    ev.route = strdup("express \"eu\"");
    char *s = order_event_dump(&ev);
    cr_assert_not_null(s);
    cr_expect_str_eq(
        s, "{\"event_id\":\"9f032412-ca76-5a6b-9dad-d0f16dac8b70\",\"order_id\":\"" ORDER_ID
           "\",\"org_id\":\"" ORG_ID "\",\"seq\":2,\"type\":\"status_changed\","
           "\"from\":\"pending\",\"to\":\"accepted\",\"reason\":null,"
           "\"route\":\"express \\\"eu\\\"\",\"command_id\":\"" CMD_ID "\","
           "\"at\":\"2026-11-23T09:40:01.000000Z\"}");
    free(s);
    order_event_clear(&ev);
    order_event_clear(&ev);

    order_event_t first = ev;
    first.type = ORDER_EV_CREATED;
    first.from = NULL;
    first.to = "pending";
    first.seq = 1;
    s = order_event_dump(&first);
    cr_assert_not_null(s);
    json_t *doc = json_loads(s, 0, NULL);
    cr_assert_not_null(doc);
    cr_expect(json_is_null(json_object_get(doc, "from")));
    cr_expect(json_is_null(json_object_get(doc, "route")));
    cr_expect_eq(json_integer_value(json_object_get(doc, "seq")), 1);
    json_decref(doc);
    free(s);
}

Test(order_event, type_names)
{
    static const char *const names[] = {"created", "status_changed", "rejected",
                                        "transition_refused"};
    const char *t;
    for (size_t i = 0; i < sizeof(names) / sizeof(names[0]); i++) {
        cr_assert_eq(order_event_type_parse(names[i], &t), 0, "%s", names[i]);
        cr_expect_str_eq(t, names[i]);
    }
    cr_expect_eq(order_event_type_parse("deleted", &t), -EINVAL);
    cr_expect_eq(order_event_type_parse(NULL, &t), -EINVAL);
}

static order_event_t event(const char *id)
{
    order_event_t ev = {.seq = 1, .type = ORDER_EV_CREATED, .to = "pending"};
    snprintf(ev.event_id, sizeof(ev.event_id), "%s", id);
    ev.reason = strdup("why");
    return ev;
}

Test(order_events, a_redelivered_event_is_queued_once)
{
    order_events_t list = {0};
    order_event_t a = event("9f032412-ca76-5a6b-9dad-d0f16dac8b70");
    order_event_t again = event("9f032412-ca76-5a6b-9dad-d0f16dac8b70");
    order_event_t b = event("5b5aca4e-74d2-5ae6-9f35-690e06d07af3");

    cr_assert_eq(order_events_push(&list, &a), 0);
    cr_assert_eq(order_events_push(&list, &again), 0);
    cr_assert_eq(order_events_push(&list, &b), 0);
    cr_assert_eq(list.n, 2);
    cr_expect_str_eq(list.v[0].event_id, "9f032412-ca76-5a6b-9dad-d0f16dac8b70");
    cr_expect_str_eq(list.v[1].event_id, "5b5aca4e-74d2-5ae6-9f35-690e06d07af3");
    cr_expect_str_eq(list.v[1].reason, "why");
    cr_expect_null(a.reason, "the list owns the strings now");
    cr_expect_null(again.reason, "a duplicate's strings are freed");
    order_events_truncate(&list, 1);
    cr_expect_eq(list.n, 1);
    order_events_free(&list);
    cr_expect_eq(list.n, 0);
    cr_expect_null(list.v);
}
