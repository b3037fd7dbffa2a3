/* test-order-machine.c: the order state machine (every pair of statuses) and the rules that
 * judge a new order. */
#include <criterion/criterion.h>
#include <errno.h>
#include <stdio.h>
#include <string.h>

#include "order_machine.h"

/* The machine of docs/orders.md, written out pair by pair independently of the module's table. */
static const struct {
    order_status_t from, to;
} allowed[] = {
    {ORDER_PENDING, ORDER_ACCEPTED},           {ORDER_PENDING, ORDER_PENDING_APPROVAL},
    {ORDER_PENDING, ORDER_REJECTED},           {ORDER_PENDING, ORDER_CANCELLED},
    {ORDER_PENDING_APPROVAL, ORDER_ACCEPTED},  {ORDER_PENDING_APPROVAL, ORDER_REJECTED},
    {ORDER_PENDING_APPROVAL, ORDER_CANCELLED}, {ORDER_ACCEPTED, ORDER_IN_PRODUCTION},
    {ORDER_ACCEPTED, ORDER_CANCELLED},         {ORDER_IN_PRODUCTION, ORDER_SHIPPED},
    {ORDER_SHIPPED, ORDER_DELIVERED},
};
#define NALLOWED (sizeof(allowed) / sizeof(allowed[0]))

static bool expected(order_status_t from, order_status_t to)
{
    for (size_t i = 0; i < NALLOWED; i++)
        if (allowed[i].from == from && allowed[i].to == to)
            return true;
    return false;
}

Test(order_machine, every_pair_of_statuses)
{
    int nallowed = 0, nrefused = 0;
    for (int from = 0; from < ORDER_NSTATUS; from++)
        for (int to = 0; to < ORDER_NSTATUS; to++) {
            bool want = expected((order_status_t)from, (order_status_t)to);
            cr_expect_eq(order_transition_allowed((order_status_t)from, (order_status_t)to), want,
                         "%s -> %s should be %s", order_status_name((order_status_t)from),
                         order_status_name((order_status_t)to), want ? "allowed" : "refused");
            want ? nallowed++ : nrefused++;
        }
    cr_assert_eq(nallowed, (int)NALLOWED);
    cr_assert_eq(nrefused, ORDER_NSTATUS * ORDER_NSTATUS - (int)NALLOWED);
}

Test(order_machine, named_refusals)
{
    /* The ones a user is most likely to try. */
    cr_expect_not(order_transition_allowed(ORDER_ACCEPTED, ORDER_DELIVERED)); /* skips steps */
    cr_expect_not(order_transition_allowed(ORDER_SHIPPED, ORDER_CANCELLED));  /* too late */
    cr_expect_not(order_transition_allowed(ORDER_IN_PRODUCTION, ORDER_CANCELLED));
    cr_expect_not(order_transition_allowed(ORDER_REJECTED, ORDER_ACCEPTED)); /* final */
    cr_expect_not(order_transition_allowed(ORDER_DELIVERED, ORDER_SHIPPED)); /* backwards */
    cr_expect_not(order_transition_allowed(ORDER_CANCELLED, ORDER_PENDING));
    cr_expect_not(order_transition_allowed(ORDER_ACCEPTED, ORDER_ACCEPTED)); /* no self loop */
    cr_expect_not(order_transition_allowed(ORDER_ACCEPTED, ORDER_PENDING_APPROVAL));
}

Test(order_machine, out_of_range_statuses_are_refused)
{
    cr_expect_not(order_transition_allowed(ORDER_NSTATUS, ORDER_ACCEPTED));
    cr_expect_not(order_transition_allowed(ORDER_PENDING, ORDER_NSTATUS));
    cr_expect_not(order_transition_allowed((order_status_t)-1, ORDER_ACCEPTED));
    cr_expect_null(order_status_name(ORDER_NSTATUS));
    cr_expect_not(order_status_final(ORDER_NSTATUS));
}

Test(order_machine, final_statuses)
{
    for (int s = 0; s < ORDER_NSTATUS; s++) {
        bool final = s == ORDER_REJECTED || s == ORDER_DELIVERED || s == ORDER_CANCELLED;
        cr_expect_eq(order_status_final((order_status_t)s), final, "%s",
                     order_status_name((order_status_t)s));
    }
}

Test(order_machine, names_round_trip)
{
    static const char *const names[] = {"pending",   "pending_approval", "accepted",
                                        "rejected",  "in_production",    "shipped",
                                        "delivered", "cancelled"};
    order_status_t s;
    for (size_t i = 0; i < sizeof(names) / sizeof(names[0]); i++) {
        cr_assert_eq(order_status_parse(names[i], &s), 0, "%s", names[i]);
        cr_expect_str_eq(order_status_name(s), names[i]);
    }
    cr_expect_eq(order_status_parse("Accepted", &s), -EINVAL);
    cr_expect_eq(order_status_parse("accepted ", &s), -EINVAL);
    cr_expect_eq(order_status_parse("", &s), -EINVAL);
    cr_expect_eq(order_status_parse(NULL, &s), -EINVAL);
}

/* --- rules ------------------------------------------------------------------------------------ */

static order_facts_t good(void)
{
    return (order_facts_t){.quantity = 5,
                           .sku_known = true,
                           .customer_known = true,
                           .sku = "SB-TEMP-100",
                           .customer_id = "acme",
                           .route = NULL,
                           .max_quantity = 0,
                           .default_route = "standard"};
}

Test(order_rules, a_good_order_is_accepted_on_the_default_route)
{
    order_facts_t f = good();
    order_verdict_t v;
    order_decide(&f, &v);
    cr_assert_eq(v.status, ORDER_ACCEPTED);
    cr_expect_str_eq(v.reason, "");
    cr_expect_str_eq(v.route, "standard");
}

Test(order_rules, the_customer_route_wins)
{
    order_facts_t f = good();
    f.route = "express-eu";
    order_verdict_t v;
    order_decide(&f, &v);
    cr_assert_eq(v.status, ORDER_ACCEPTED);
    cr_expect_str_eq(v.route, "express-eu");
}

Test(order_rules, quantity_out_of_range_is_rejected)
{
    static const int64_t bad[] = {0, -1, ORDER_QUANTITY_MAX + 1, INT64_MIN};
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        order_facts_t f = good();
        f.quantity = bad[i];
        order_verdict_t v;
        order_decide(&f, &v);
        cr_expect_eq(v.status, ORDER_REJECTED, "quantity %lld", (long long)bad[i]);
        cr_expect(strstr(v.reason, "quantity") != NULL, "%s", v.reason);
        cr_expect_null(v.route);
    }
    order_facts_t f = good();
    f.quantity = ORDER_QUANTITY_MAX;
    order_verdict_t v;
    order_decide(&f, &v);
    cr_expect_eq(v.status, ORDER_ACCEPTED);
}

Test(order_rules, unknown_sku_is_rejected)
{
    order_facts_t f = good();
    f.sku_known = false;
    f.sku = "NOPE-1";
    order_verdict_t v;
    order_decide(&f, &v);
    cr_assert_eq(v.status, ORDER_REJECTED);
    cr_expect_str_eq(v.reason, "unknown sku 'NOPE-1'");
    cr_expect_null(v.route);
}

Test(order_rules, foreign_customer_is_rejected)
{
    order_facts_t f = good();
    f.customer_known = false;
    order_verdict_t v;
    order_decide(&f, &v);
    cr_assert_eq(v.status, ORDER_REJECTED);
    cr_expect_str_eq(v.reason, "customer 'acme' is not a customer of the organization");
}

Test(order_rules, the_first_broken_rule_is_the_reason)
{
    order_facts_t f = good();
    f.sku_known = false;
    f.customer_known = false;
    f.quantity = 10;
    f.max_quantity = 1;
    order_verdict_t v;
    order_decide(&f, &v);
    cr_assert_eq(v.status, ORDER_REJECTED);
    cr_expect(strstr(v.reason, "sku") != NULL, "%s", v.reason);
}

Test(order_rules, above_the_limit_waits_for_approval_with_its_route)
{
    order_facts_t f = good();
    f.quantity = 11;
    f.max_quantity = 10;
    f.route = "bulk";
    order_verdict_t v;
    order_decide(&f, &v);
    cr_assert_eq(v.status, ORDER_PENDING_APPROVAL);
    cr_expect_str_eq(v.reason, "quantity 11 is above the limit of 10 for sku 'SB-TEMP-100'");
    cr_expect_str_eq(v.route, "bulk");
}

Test(order_rules, at_the_limit_is_accepted)
{
    order_facts_t f = good();
    f.quantity = 10;
    f.max_quantity = 10;
    order_verdict_t v;
    order_decide(&f, &v);
    cr_expect_eq(v.status, ORDER_ACCEPTED);
}

/* A name of 64 characters of 4 UTF-8 bytes each is quoted whole: cutting it inside a character
 * would make text PostgreSQL refuses. */
Test(order_rules, the_longest_names_are_quoted_whole)
{
    char sku[64 * 4 + 1] = "", want[ORDER_REASON_MAX];
    for (int i = 0; i < 64; i++)
        strcat(sku, "\xf0\x9f\x8c\xa1"); /* U+1F321 THERMOMETER */
    order_facts_t f = good();
    f.sku = sku;
    f.sku_known = false;
    order_verdict_t v;
    order_decide(&f, &v);
    cr_assert_eq(v.status, ORDER_REJECTED);
    snprintf(want, sizeof(want), "unknown sku '%s'", sku);
    cr_expect_str_eq(v.reason, want);

    f = good();
    f.customer_id = sku;
    f.customer_known = false;
    order_decide(&f, &v);
    snprintf(want, sizeof(want), "customer '%s' is not a customer of the organization", sku);
    cr_expect_str_eq(v.reason, want);

    f = good();
    f.sku = sku;
    f.quantity = 5;
    f.max_quantity = 4;
    order_decide(&f, &v);
    cr_assert_eq(v.status, ORDER_PENDING_APPROVAL);
    cr_expect(strstr(v.reason, sku) != NULL);
}
