/* routes.c: the route table and dispatch; GET /healthz, /readyz and /metrics.
 *
 * A route is a method and a path pattern whose segments are literals or "{name}" parameters; the
 * table is searched in order and literal routes come first where they overlap a parameter
 * ("/sensors/data" before "/sensors/{id}"). A path that matches a pattern with another method
 * gets 405 with Allow; OPTIONS on a known path is a CORS preflight; anything else 404. HEAD is
 * served as GET (evhttp sends no body for it).
 */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <event2/http.h>

#include "gateway.h"
#include "svc_log.h"
#include "svc_util.h"

/* /readyz reuses a loop's database verdict for this long, so that frequent probes cost at most
 * one query per second per thread, and a dead server at most one connect attempt. */
#define READYZ_DB_CACHE_MS 1000

typedef struct gw_route_def {
    gw_route_t id;
    const char *method;
    const char *pattern;
    void (*handler)(gw_req_t *r);
} gw_route_def_t;

static const gw_route_def_t routes[] = {
    {GW_ROUTE_HEALTHZ, "GET", "/healthz", gw_route_healthz},
    {GW_ROUTE_READYZ, "GET", "/readyz", gw_route_readyz},
    {GW_ROUTE_METRICS, "GET", "/metrics", gw_route_metrics},
    {GW_ROUTE_OPENAPI, "GET", "/openapi.json", gw_openapi_json},
    {GW_ROUTE_DOCS, "GET", "/docs", gw_openapi_docs},
    {GW_ROUTE_AUTH_REGISTER, "POST", "/auth/register", gw_auth_handle},
    {GW_ROUTE_AUTH_TOKEN, "POST", "/auth/token", gw_auth_handle},
    {GW_ROUTE_AUTH_ME, "GET", "/auth/me", gw_auth_handle},
    {GW_ROUTE_AUTH_REFRESH, "POST", "/auth/refresh", gw_auth_handle},
    {GW_ROUTE_AUTH_LOGOUT, "POST", "/auth/logout", gw_auth_handle},
    {GW_ROUTE_INGEST, "POST", "/sensors/data", gw_ingest_handle},
    {GW_ROUTE_READINGS_LIST, "GET", "/sensors/data", gw_readings_list},
    {GW_ROUTE_SENSORS_STATS, "GET", "/sensors/stats", gw_sensors_stats},
    {GW_ROUTE_ANOMALIES_COUNT, "GET", "/sensors/anomalies/count", gw_anomalies_count},
    {GW_ROUTE_ANOMALIES_LIST, "GET", "/sensors/anomalies", gw_anomalies_list},
    {GW_ROUTE_SENSORS_CREATE, "POST", "/sensors", gw_sensors_create},
    {GW_ROUTE_SENSORS_LIST, "GET", "/sensors", gw_sensors_list},
    {GW_ROUTE_SENSORS_GET, "GET", "/sensors/{id}", gw_sensors_get},
    {GW_ROUTE_ORDERS_CREATE, "POST", "/orders", gw_orders_create},
    {GW_ROUTE_ORDERS_LIST, "GET", "/orders", gw_orders_list},
    {GW_ROUTE_ORDERS_GET, "GET", "/orders/{id}", gw_orders_get},
    {GW_ROUTE_ORDERS_STATUS, "PUT", "/orders/{id}/status", gw_orders_status},
    {GW_ROUTE_DASHBOARD_METRICS, "GET", "/dashboard/metrics", gw_dashboard_metrics},
    {GW_ROUTE_DASHBOARD_HEALTH, "GET", "/dashboard/health", gw_dashboard_health},
    {GW_ROUTE_PROJECTS_CREATE, "POST", "/projects", gw_projects_create},
    {GW_ROUTE_PROJECTS_LIST, "GET", "/projects", gw_projects_list},
    {GW_ROUTE_KEYS_CREATE, "POST", "/api-keys", gw_keys_create},
    {GW_ROUTE_KEYS_LIST, "GET", "/api-keys", gw_keys_list},
    {GW_ROUTE_KEYS_REVOKE, "DELETE", "/api-keys/{id}", gw_keys_revoke},
    {GW_ROUTE_MEMBERS_LIST, "GET", "/members", gw_members_list},
    {GW_ROUTE_MEMBERS_ADD, "POST", "/members", gw_members_add},
    {GW_ROUTE_MEMBERS_REMOVE, "DELETE", "/members/{id}", gw_members_remove},
    {GW_ROUTE_AUDIT_LIST, "GET", "/audit-logs", gw_audit_list},
};
#define NROUTES (sizeof(routes) / sizeof(routes[0]))

/* "GET /sensors/{id}" for each route id, built once. */
static char route_labels[GW_ROUTE_COUNT][64];
static pthread_once_t route_labels_once = PTHREAD_ONCE_INIT;

static void route_labels_make(void)
{
    snprintf(route_labels[GW_ROUTE_OTHER], sizeof(route_labels[0]), "other");
    snprintf(route_labels[GW_ROUTE_PREFLIGHT], sizeof(route_labels[0]), "OPTIONS *");
    for (size_t i = 0; i < NROUTES; i++)
        snprintf(route_labels[routes[i].id], sizeof(route_labels[0]), "%s %s", routes[i].method,
                 routes[i].pattern);
}

const char *gw_route_name(gw_route_t route)
{
    pthread_once(&route_labels_once, route_labels_make);
    return route_labels[route];
}

/* Matches @path against @pattern, copying parameters into @params. */
static bool route_match(const char *pattern, const char *path,
                        char params[GW_MAX_PARAMS][GW_PARAM_MAX + 1])
{
    size_t np = 0;

    while (*pattern && *path) {
        if (*pattern != '/' || *path != '/')
            return false;
        pattern++;
        path++;
        const char *pe = strchrnul(pattern, '/'), *se = strchrnul(path, '/');
        size_t plen = (size_t)(pe - pattern), slen = (size_t)(se - path);

        if (plen > 2 && pattern[0] == '{') {
            if (slen == 0 || slen > GW_PARAM_MAX || np == GW_MAX_PARAMS)
                return false;
            memcpy(params[np], path, slen);
            params[np++][slen] = '\0';
        } else if (plen != slen || memcmp(pattern, path, slen) != 0) {
            return false;
        }
        pattern = pe;
        path = se;
    }
    return *pattern == '\0' && *path == '\0';
}

void gw_route_dispatch(gw_req_t *r, const char *method)
{
    char params[GW_MAX_PARAMS][GW_PARAM_MAX + 1];
    char allow[96] = "";
    const char *want = strcmp(method, "HEAD") == 0 ? "GET" : method, *first = NULL;
    bool known;

    for (size_t i = 0; i < NROUTES; i++) {
        const gw_route_def_t *d = &routes[i];

        if (!route_match(d->pattern, r->path, params))
            continue;
        if (strcmp(d->method, want) == 0) {
            r->route = d->id;
            memcpy(r->params, params, sizeof(params));
            d->handler(r);
            return;
        }
        if (!first)
            first = d->pattern;
    }
    /* Several patterns can match one path ("/sensors/data" and "/sensors/{id}"): Allow lists the
     * methods of the first one, the pattern that is served. */
    known = first != NULL;
    for (size_t i = 0; known && i < NROUTES; i++) {
        size_t len = strlen(allow);

        if (strcmp(routes[i].pattern, first) != 0)
            continue;
        snprintf(allow + len, sizeof(allow) - len, "%s%s%s", len ? ", " : "", routes[i].method,
                 strcmp(routes[i].method, "GET") == 0 ? ", HEAD" : "");
    }
    if (!known) {
        gw_reply_problemf(r, 404, "not-found", "no route for %s", r->path);
        return;
    }
    if (strcmp(method, "OPTIONS") == 0) {
        r->route = GW_ROUTE_PREFLIGHT;
        gw_req_header(r, "Allow", allow);
        gw_req_header(r, "Access-Control-Allow-Methods", allow);
        gw_req_header(r, "Access-Control-Allow-Headers",
                      "Authorization, Content-Type, Idempotency-Key, X-Request-Id");
        gw_req_header(r, "Access-Control-Max-Age", "600");
        gw_reply(r, 204, NULL, "", 0);
        return;
    }
    gw_req_header(r, "Allow", allow);
    gw_reply_problemf(r, 405, "method-not-allowed", "%s accepts only %s", r->path, allow);
}

/* ---- CORS ---------------------------------------------------------------------------------- */

void gw_cors_headers(gw_req_t *r)
{
    char **origins = r->loop->gw->cors_origins;
    const char *origin;

    if (!origins || !(origin = gw_req_get_header(r, "Origin")))
        return;
    for (; *origins; origins++) {
        if (strcmp(*origins, "*") == 0 || strcmp(*origins, origin) == 0) {
            /* The origin itself rather than "*", so that credentials (Authorization) work. */
            gw_req_header(r, "Access-Control-Allow-Origin", origin);
            gw_req_header(
                r, "Access-Control-Expose-Headers",
                "X-Request-Id, Retry-After, Location, WWW-Authenticate, Idempotent-Replayed");
            break;
        }
    }
    gw_req_header(r, "Vary", "Origin");
}

/* ---- operations routes --------------------------------------------------------------------- */
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
