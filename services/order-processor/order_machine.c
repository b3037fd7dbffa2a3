/* order_machine.c: see order_machine.h. */
#include "order_machine.h"

#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <string.h>

static const char *const order_status_names[ORDER_NSTATUS] = {
    [ORDER_PENDING] = "pending",
    [ORDER_PENDING_APPROVAL] = "pending_approval",
    [ORDER_ACCEPTED] = "accepted",
    [ORDER_REJECTED] = "rejected",
    [ORDER_IN_PRODUCTION] = "in_production",
    [ORDER_SHIPPED] = "shipped",
    [ORDER_DELIVERED] = "delivered",
    [ORDER_CANCELLED] = "cancelled",
};

#define BIT(s) (1u << (s))

/* The machine as a table: the set of statuses each status may move to. */
static const unsigned order_next[ORDER_NSTATUS] = {
    [ORDER_PENDING] = BIT(ORDER_ACCEPTED) | BIT(ORDER_PENDING_APPROVAL) | BIT(ORDER_REJECTED) |
                      BIT(ORDER_CANCELLED),
    [ORDER_PENDING_APPROVAL] = BIT(ORDER_ACCEPTED) | BIT(ORDER_REJECTED) | BIT(ORDER_CANCELLED),
    [ORDER_ACCEPTED] = BIT(ORDER_IN_PRODUCTION) | BIT(ORDER_CANCELLED),
    [ORDER_IN_PRODUCTION] = BIT(ORDER_SHIPPED),
    [ORDER_SHIPPED] = BIT(ORDER_DELIVERED),
};

const char *order_status_name(order_status_t status)
{
    return (unsigned)status < ORDER_NSTATUS ? order_status_names[status] : NULL;
}

int order_status_parse(const char *name, order_status_t *ret_status)
{
    for (int s = 0; name && s < ORDER_NSTATUS; s++)
        if (!strcmp(name, order_status_names[s])) {
            *ret_status = (order_status_t)s;
            return 0;
        }
    return -EINVAL;
}

bool order_status_final(order_status_t status)
{
    return (unsigned)status < ORDER_NSTATUS && order_next[status] == 0;
}

bool order_transition_allowed(order_status_t from, order_status_t to)
{
    return (unsigned)from < ORDER_NSTATUS && (unsigned)to < ORDER_NSTATUS &&
           (order_next[from] & BIT(to));
}

void order_decide(const order_facts_t *f, order_verdict_t *v)
{
    *v = (order_verdict_t){.status = ORDER_REJECTED};

    if (f->quantity < 1 || f->quantity > ORDER_QUANTITY_MAX) {
        snprintf(v->reason, sizeof(v->reason), "quantity %" PRId64 " is not between 1 and %d",
                 f->quantity, ORDER_QUANTITY_MAX);
        return;
    }
    if (!f->sku_known) {
        snprintf(v->reason, sizeof(v->reason), "unknown sku '%s'", f->sku);
        return;
    }
    if (!f->customer_known) {
        snprintf(v->reason, sizeof(v->reason),
                 "customer '%s' is not a customer of the organization", f->customer_id);
        return;
    }
    v->route = f->route ? f->route : f->default_route;
    if (f->max_quantity > 0 && f->quantity > f->max_quantity) {
        v->status = ORDER_PENDING_APPROVAL;
        snprintf(v->reason, sizeof(v->reason),
                 "quantity %" PRId64 " is above the limit of %" PRId64 " for sku '%s'", f->quantity,
                 f->max_quantity, f->sku);
        return;
    }
    v->status = ORDER_ACCEPTED;
}
