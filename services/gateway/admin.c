/* admin.c: projects, API keys, members and audit logs (in progress). */
#include "gateway.h"

void gw_projects_create(gw_req_t *r)
{
    gw_reply_problemf(r, 501, "not-implemented", "%s %s is not implemented yet", r->method,
                      r->path);
}

void gw_projects_list(gw_req_t *r)
{
    gw_reply_problemf(r, 501, "not-implemented", "%s %s is not implemented yet", r->method,
                      r->path);
}

void gw_keys_create(gw_req_t *r)
{
    gw_reply_problemf(r, 501, "not-implemented", "%s %s is not implemented yet", r->method,
                      r->path);
}

void gw_keys_list(gw_req_t *r)
{
    gw_reply_problemf(r, 501, "not-implemented", "%s %s is not implemented yet", r->method,
                      r->path);
}

void gw_keys_revoke(gw_req_t *r)
{
    gw_reply_problemf(r, 501, "not-implemented", "%s %s is not implemented yet", r->method,
                      r->path);
}

void gw_members_list(gw_req_t *r)
{
    gw_reply_problemf(r, 501, "not-implemented", "%s %s is not implemented yet", r->method,
                      r->path);
}

void gw_members_add(gw_req_t *r)
{
    gw_reply_problemf(r, 501, "not-implemented", "%s %s is not implemented yet", r->method,
                      r->path);
}

void gw_members_remove(gw_req_t *r)
{
    gw_reply_problemf(r, 501, "not-implemented", "%s %s is not implemented yet", r->method,
                      r->path);
}

void gw_audit_list(gw_req_t *r)
{
    gw_reply_problemf(r, 501, "not-implemented", "%s %s is not implemented yet", r->method,
                      r->path);
}
