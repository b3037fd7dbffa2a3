/* openapi.c: the OpenAPI document and its page (in progress). */
#include "gateway.h"

void gw_openapi_json(gw_req_t *r)
{
    gw_reply_problemf(r, 501, "not-implemented", "%s %s is not implemented yet", r->method,
                      r->path);
}

void gw_openapi_docs(gw_req_t *r)
{
    gw_reply_problemf(r, 501, "not-implemented", "%s %s is not implemented yet", r->method,
                      r->path);
}
