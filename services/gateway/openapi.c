/* openapi.c: GET /openapi.json and GET /docs.
 *
 * Both are compiled in: the build turns proto/openapi.yaml into compact JSON and embeds it with
 * the docs page (services/gateway/openapi_embed.py, a meson custom_target), so the document a
 * gateway serves is always the one its code was built with, and serving it touches no file.
 * The page is self-contained (no CDN: gateways often run where there is no internet) and renders
 * /openapi.json in the browser with a little JavaScript.
 */
#include <stddef.h>

#include "gateway.h"

/* openapi_spec.c, generated at build time. */
extern const unsigned char gw_openapi_spec[], gw_openapi_docs_page[];
extern const size_t gw_openapi_spec_len, gw_openapi_docs_page_len;

void gw_openapi_json(gw_req_t *r)
{
    /* Anyone may read the description of the API; a browser page on another origin too. */
    gw_req_header(r, "Cache-Control", "public, max-age=300");
    gw_reply(r, 200, "application/json", (const char *)gw_openapi_spec, gw_openapi_spec_len);
}

void gw_openapi_docs(gw_req_t *r)
{
    /* The page only fetches /openapi.json from its own origin and builds the DOM with
     * textContent; the policy holds it to exactly that. */
    gw_req_header(r, "Content-Security-Policy",
                  "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; "
                  "connect-src 'self'; base-uri 'none'; form-action 'none'; "
                  "frame-ancestors 'none'");
    gw_req_header(r, "X-Content-Type-Options", "nosniff");
    gw_req_header(r, "Cache-Control", "public, max-age=300");
    gw_reply(r, 200, "text/html; charset=utf-8", (const char *)gw_openapi_docs_page,
             gw_openapi_docs_page_len);
}
