/* routes.c: GET /healthz, /readyz and /metrics. */
#include <stdlib.h>
#include <string.h>

#include "gateway.h"
#include "svc_log.h"
#include "svc_util.h"

/* /readyz reuses a loop's database verdict for this long, so that frequent probes cost at most
 * one query per second per thread, and a dead server at most one connect attempt. */
#define READYZ_DB_CACHE_MS 1000

void gw_route_healthz(gw_req_t *r)
{
    static const char body[] = "{\"status\":\"ok\"}";

    gw_reply(r, 200, "application/json", body, sizeof(body) - 1);
}

static bool db_ready(gw_loop_t *loop)
{
    int64_t now = svc_now_ms();
    db_t *db;

    if (loop->db_checked_ms && now - loop->db_checked_ms < READYZ_DB_CACHE_MS)
        return loop->db_ok;
    loop->db_ok = gw_loop_db(loop, &db) == 0 && db_exec_simple(db, "SELECT 1") == 0;
    if (!loop->db_ok) {
        gw_loop_db_failed(loop);
        log_warn("readiness: PostgreSQL is not reachable: %s", db_errmsg(loop->db));
    }
    loop->db_checked_ms = now;
    return loop->db_ok;
}

void gw_route_readyz(gw_req_t *r)
{
    bool kafka = bus_producer_connected(r->loop->gw->producer) != 0 &&
                 !atomic_load(&r->loop->gw->producer_failed);
    bool db = db_ready(r->loop);
    json_t *reasons = json_array();

    if (!kafka)
        json_array_append_new(reasons, json_string("kafka: no connection to any broker"));
    if (!db)
        json_array_append_new(reasons, json_string("postgresql: not reachable"));
    gw_reply_json(r, kafka && db ? 200 : 503,
                  json_pack("{s:s, s:{s:b, s:b}, s:o}", "status",
                            kafka && db ? "ready" : "unavailable", "checks", "kafka", kafka, "db",
                            db, "reasons", reasons));
}

void gw_route_metrics(gw_req_t *r)
{
    char *text = NULL;
    size_t len = 0;

    if (svc_metrics_render(r->loop->gw->metrics.registry, &text, &len) < 0) {
        gw_reply_problemf(r, 500, "internal-error", "cannot render the metrics");
        return;
    }
    gw_reply(r, 200, "text/plain; version=0.0.4; charset=utf-8", text, len);
    free(text);
}
