/* orders.c: orders (in progress). */
#include "gateway.h"

void gw_orders_create(gw_req_t *r)
{
    gw_reply_problemf(r, 501, "not-implemented", "%s %s is not implemented yet", r->method,
                      r->path);
}

void gw_orders_list(gw_req_t *r)
{
    gw_reply_problemf(r, 501, "not-implemented", "%s %s is not implemented yet", r->method,
                      r->path);
}

void gw_orders_get(gw_req_t *r)
{
    gw_reply_problemf(r, 501, "not-implemented", "%s %s is not implemented yet", r->method,
                      r->path);
}

void gw_orders_status(gw_req_t *r)
{
    gw_reply_problemf(r, 501, "not-implemented", "%s %s is not implemented yet", r->method,
                      r->path);
}
