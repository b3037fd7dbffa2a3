/* request_id.c: X-Request-Id. A client's id is echoed and logged only when it cannot smuggle
 * anything into a header or a log line; otherwise the gateway makes its own. */
#include <stdio.h>
#include <string.h>

#include "gateway.h"
#include "svc_util.h"

bool gw_request_id_sane(const char *s)
{
    size_t n = 0;

    if (!s)
        return false;
    for (; s[n]; n++) {
        char c = s[n];

        if (n >= GW_REQUEST_ID_MAX)
            return false;
        if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
              c == '.' || c == '_' || c == '-'))
            return false;
    }
    return n > 0;
}

int gw_request_id_pick(const char *client, char out[GW_REQUEST_ID_MAX + 1])
{
    if (gw_request_id_sane(client)) {
        snprintf(out, GW_REQUEST_ID_MAX + 1, "%s", client);
        return 0;
    }
    return svc_uuid4(out);
}
