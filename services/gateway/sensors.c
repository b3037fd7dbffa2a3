/* sensors.c: sensors, reading queries, stats and anomalies (in progress). */
#include "gateway.h"

void gw_sensors_create(gw_req_t *r)
{
    gw_reply_problemf(r, 501, "not-implemented", "%s %s is not implemented yet", r->method,
                      r->path);
}

void gw_sensors_list(gw_req_t *r)
{
    gw_reply_problemf(r, 501, "not-implemented", "%s %s is not implemented yet", r->method,
                      r->path);
}

void gw_sensors_get(gw_req_t *r)
{
    gw_reply_problemf(r, 501, "not-implemented", "%s %s is not implemented yet", r->method,
                      r->path);
}

void gw_readings_list(gw_req_t *r)
{
    gw_reply_problemf(r, 501, "not-implemented", "%s %s is not implemented yet", r->method,
                      r->path);
}

void gw_sensors_stats(gw_req_t *r)
{
    gw_reply_problemf(r, 501, "not-implemented", "%s %s is not implemented yet", r->method,
                      r->path);
}

void gw_anomalies_count(gw_req_t *r)
{
    gw_reply_problemf(r, 501, "not-implemented", "%s %s is not implemented yet", r->method,
                      r->path);
}

void gw_anomalies_list(gw_req_t *r)
{
    gw_reply_problemf(r, 501, "not-implemented", "%s %s is not implemented yet", r->method,
                      r->path);
}
