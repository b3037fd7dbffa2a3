/* problem.c: RFC 9457 problem details, the one error format the gateway answers with. */
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#include "gateway.h"

/* Every slug the gateway uses, with its fixed title: a client can branch on "type" and show
 * "title" to a human; "detail" says what exactly was wrong with this request. */
static const struct {
    const char *slug;
    const char *title;
} problem_titles[] = {
    {"malformed-json", "Malformed JSON"},
    {"invalid-body", "Invalid request body"},
    {"invalid-reading", "Invalid reading"},
    {"invalid-fields", "Invalid fields"},
    {"conflict", "Conflict"},
    {"batch-too-large", "Too many readings"},
    {"body-too-large", "Request body too large"},
    {"headers-too-large", "Request header fields too large"},
    {"unsupported-media-type", "Unsupported media type"},
    {"unauthorized", "Unauthorized"},
    {"forbidden", "Forbidden"},
    {"not-found", "Not found"},
    {"method-not-allowed", "Method not allowed"},
    {"request-timeout", "Request timeout"},
    {"unavailable", "Service unavailable"},
    {"too-many-connections", "Too many connections"},
    {"internal-error", "Internal server error"},
    {"invalid-parameter", "Invalid query parameter"},
    {"invalid-cursor", "Invalid cursor"},
    {"invalid-reference", "Invalid reference"},
    {"rate-limited", "Too many requests"},
    {"idempotency-conflict", "Idempotency key reused with another request"},
    {"idempotency-in-progress", "A request with this idempotency key is in progress"},
    {"invalid-header", "Invalid header field"},
};

void gw_problem_set(gw_problem_t *p, int status, const char *slug, const char *fmt, ...)
{
    va_list ap;

    gw_problem_clear(p);
    p->status = status;
    p->slug = slug;
    p->title = "Error";
    for (size_t i = 0; i < sizeof(problem_titles) / sizeof(problem_titles[0]); i++)
        if (strcmp(problem_titles[i].slug, slug) == 0)
            p->title = problem_titles[i].title;
    va_start(ap, fmt);
    vsnprintf(p->detail, sizeof(p->detail), fmt, ap);
    va_end(ap);
}

void gw_problem_clear(gw_problem_t *p)
{
    json_decref(p->errors);
    p->errors = NULL;
}

char *gw_problem_render(const gw_problem_t *p, const char *request_id)
{
    char type[128];
    json_t *doc;
    char *out = NULL;

    snprintf(type, sizeof(type), GW_PROBLEM_BASE "%s", p->slug);
    doc = json_pack("{s:s, s:s, s:i, s:s}", "type", type, "title", p->title, "status", p->status,
                    "detail", p->detail);
    if (!doc)
        return NULL;
    if (request_id && json_object_set_new(doc, "request_id", json_string(request_id)) < 0)
        goto out;
    if (p->errors && json_object_set(doc, "errors", p->errors) < 0)
        goto out;
    out = json_dumps(doc, JSON_COMPACT);
out:
    json_decref(doc);
    return out;
}
