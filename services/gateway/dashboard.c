/* dashboard.c: dashboard reads (in progress). */
#include "gateway.h"

void gw_dashboard_metrics(gw_req_t *r)
{
    gw_reply_problemf(r, 501, "not-implemented", "%s %s is not implemented yet", r->method,
                      r->path);
}

void gw_dashboard_health(gw_req_t *r)
{
    gw_reply_problemf(r, 501, "not-implemented", "%s %s is not implemented yet", r->method,
                      r->path);
}
