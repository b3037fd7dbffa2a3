/* gateway.h: sb-gateway's internal interfaces, shared by its source files.
 *
 * Tour: main.c reads the configuration and runs the threads; server.c owns the sockets, the
 * per-thread evhttp servers, connection accounting, limits and the reply helpers; ingest.c is
 * POST /sensors/data (authenticate, validate, produce, answer after the broker's ack); body.c
 * decodes and validates request bodies; keys.c looks API keys up and caches them; problem.c
 * renders application/problem+json; routes.c serves /healthz, /readyz and /metrics; metrics.c
 * registers the gateway's Prometheus series; request_id.c sanitises X-Request-Id.
 */
#pragma once

#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <jansson.h>

#include "auth_key.h"
#include "bus_producer.h"
#include "contract.h"
#include "db.h"
#include "svc_config.h"
#include "svc_metrics.h"

struct event;
struct event_base;
struct evhttp;
struct evhttp_bound_socket;
struct evhttp_request;

/* ---- configuration (main.c) ------------------------------------------------------------- */

typedef struct gw_config {
    char *listen;
    int64_t threads;
    char *pg_dsn;
    char *key_pepper;
    int64_t key_cache_ttl_ms;
    int64_t max_batch;
    int64_t max_body_bytes;
    int64_t max_header_bytes;
    int64_t request_timeout_ms;
    int64_t max_connections;
    int64_t produce_timeout_ms;
    char *topic;
    char *log_level;
} gw_config_t;

/* ---- problem+json (problem.c) ----------------------------------------------------------- */

#define GW_PROBLEM_BASE "https://sensorbus.dev/problems/"

/** One RFC 9457 problem. Headers that go with a status (Retry-After for 503, WWW-Authenticate
 *  for 401) are added by gw_reply_problem(). */
typedef struct gw_problem {
    int status;
    const char *slug;  /* static: "malformed-json" */
    const char *title; /* static, from the slug */
    char detail[320];
    json_t *errors; /* owned; written as "errors" when not NULL */
} gw_problem_t;

/** Fills @p (title looked up from @slug) with a printf-style detail. Frees an earlier
 *  p->errors. */
void gw_problem_set(gw_problem_t *p, int status, const char *slug, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

/** Releases p->errors. Accepts a zeroed problem. */
void gw_problem_clear(gw_problem_t *p);

/** Renders the JSON body; @request_id may be NULL. A malloc'd string, or NULL on ENOMEM. */
char *gw_problem_render(const gw_problem_t *p, const char *request_id);

/* ---- X-Request-Id (request_id.c) -------------------------------------------------------- */

#define GW_REQUEST_ID_MAX 64

/** True when @s is 1-64 characters of [A-Za-z0-9._-], safe to echo and log. */
bool gw_request_id_sane(const char *s);

/** Writes @client into @out when it is sane, else a new random UUID. 0 or -errno. */
int gw_request_id_pick(const char *client, char out[GW_REQUEST_ID_MAX + 1]);

/* ---- request bodies (body.c) ------------------------------------------------------------ */

typedef enum gw_body_format {
    GW_BODY_JSON,   /* one object, or an array of objects */
    GW_BODY_NDJSON, /* one object per line, blank lines ignored */
} gw_body_format_t;

/** Most entries listed in a 422's "errors" array; "invalid_count" gives the total. */
#define GW_MAX_ERRORS 100

/** A decoded, validated batch. */
typedef struct gw_batch {
    json_t *docs;                 /* owned: every decoded document, in order */
    contract_reading_t *readings; /* owned array of n; tags are borrowed from docs */
    size_t n;
    bool single; /* the body was one bare object */
} gw_batch_t;

/** Maps a Content-Type (parameters ignored; NULL counts as JSON) to a format.
 *  0, or -EPROTONOSUPPORT with @problem set to 415. */
int gw_body_format(const char *content_type, gw_body_format_t *ret_format, gw_problem_t *problem);

/**
 * Decodes @len bytes of @buf and validates every record against sensor_reading.v1. On success
 * returns 0 and fills @batch (free with gw_batch_clear()). Otherwise returns -EINVAL and fills
 * @problem: 400 malformed-json (line/column), 413 batch-too-large (more than @max_batch
 * records), 422 invalid-body (no records, or a root that is not an object or array) or 422
 * invalid-reading with "errors": [{"index", "pointer", "reason"}] naming every bad record (up to
 * GW_MAX_ERRORS). -ENOMEM on allocation failure.
 */
int gw_batch_parse(gw_batch_t *batch, const char *buf, size_t len, gw_body_format_t format,
                   size_t max_batch, gw_problem_t *problem);

/** Frees what a parse put into @batch and zeroes it. */
void gw_batch_clear(gw_batch_t *batch);

/* ---- API keys (keys.c) ------------------------------------------------------------------ */

enum {
    GW_SCOPE_INGEST = 1 << 0,
    GW_SCOPE_ORDERS = 1 << 1,
    GW_SCOPE_READ = 1 << 2,
};

/** What the database says about one prefix (found=false: no such key). */
typedef struct gw_key {
    bool found;
    bool revoked;
    unsigned scopes;    /* GW_SCOPE_* */
    int64_t expires_us; /* microseconds since the epoch; INT64_MAX = never */
    char secret_hash[AUTH_KEY_HASH_HEX + 1];
    char org_id[37];
    char project_id[37];
} gw_key_t;

typedef struct gw_keycache gw_keycache_t;

/** A cache of lookups, shared by every thread (one mutex). Entries live @ttl_ms; at most
 *  @max_entries are kept. 0 or -ENOMEM. */
int gw_keycache_new(int64_t ttl_ms, size_t max_entries, gw_keycache_t **ret_cache);
void gw_keycache_free(gw_keycache_t *cache);

/** Copies a fresh entry (positive or negative) for @prefix into @ret_key and returns true;
 *  false when there is none or it is older than the TTL at @now_ms (monotonic). */
bool gw_keycache_get(gw_keycache_t *cache, const char *prefix, int64_t now_ms, gw_key_t *ret_key);

/** Stores (or replaces) the entry for @prefix, stamped @now_ms. When the cache is full, expired
 *  entries are dropped first; if none are, the entry is not stored. */
void gw_keycache_put(gw_keycache_t *cache, const char *prefix, const gw_key_t *key, int64_t now_ms);

/** Number of entries held (fresh or not). */
size_t gw_keycache_size(gw_keycache_t *cache);

/** Registers the lookup statement on @db. 0 or a db_prepare() error. */
int gw_key_prepare(db_t *db);

/** Looks @prefix up. 0 with ret_key->found telling whether it exists, or a db_exec() error. */
int gw_key_fetch(db_t *db, const char *prefix, gw_key_t *ret_key);

/** Parses a PostgreSQL text[] literal ("{ingest,read}") into GW_SCOPE_* bits. */
unsigned gw_scopes_parse(const char *literal);

/* ---- metrics (metrics.c) ---------------------------------------------------------------- */

typedef enum gw_route {
    GW_ROUTE_INGEST,
    GW_ROUTE_HEALTHZ,
    GW_ROUTE_READYZ,
    GW_ROUTE_METRICS,
    GW_ROUTE_OTHER, /* 404s, 405s, and answers given before routing (408, 503 at the cap) */
    GW_ROUTE_COUNT,
} gw_route_t;

typedef struct gw_metrics {
    svc_metrics_t *registry;
    svc_metric_t *latency[GW_ROUTE_COUNT];
    svc_metric_t *readings_accepted;
    svc_metric_t *produce_failures;
    svc_metric_t *key_cache_hits;
    svc_metric_t *key_cache_misses;
    svc_metric_t *connections_open;
    svc_metric_t *connections_rejected;
    /* Requests by route and status code, registered on first use. */
    _Atomic(svc_metric_t *) requests[GW_ROUTE_COUNT][600];
} gw_metrics_t;

int gw_metrics_init(gw_metrics_t *m, svc_metrics_t *registry);
/** Counts one answered request and observes its latency. */
void gw_metrics_request(gw_metrics_t *m, gw_route_t route, int status, double seconds);
const char *gw_route_name(gw_route_t route);

/* ---- the process and its loops (main.c, server.c) ---------------------------------------- */

typedef struct gw gw_t;
typedef struct gw_loop gw_loop_t;
typedef struct gw_conn gw_conn_t;
typedef struct gw_pending gw_pending_t;

struct gw {
    gw_config_t cfg;
    svc_conf_t *conf;
    bus_producer_t *producer;
    gw_keycache_t *keys;
    gw_metrics_t metrics;
    int listen_fd;
    gw_loop_t *loops;
    size_t nloops;
    /* Connections by file descriptor: an fd belongs to one connection, and so to one loop,
     * while it is open, so each slot is only touched by that loop's thread. */
    gw_conn_t **conns;
    size_t conns_size;
    atomic_long open_connections;
    atomic_bool producer_failed; /* fatal idempotence error: the process restarts */
};

/** One thread: its event base, evhttp server, Kafka completion queue and database handle. */
struct gw_loop {
    gw_t *gw;
    size_t index;
    pthread_t thread;
    struct event_base *base;
    struct evhttp *http;
    struct evhttp_bound_socket *bound;
    bus_notifier_t *notifier;
    db_t *db;
    int64_t db_retry_at_ms; /* after a failed connect, fail fast until then */
    struct event *stop_ev;
    struct event *adopt_ev;
    struct event *drain_ev;
    struct event *resume_ev; /* re-enables accepting after EMFILE */
    gw_conn_t *fresh;        /* accepted, not yet adopted (see server.c) */
    gw_pending_t *pending;   /* ingest requests with delivery reports due */
    size_t nwaiting;         /* of those, the ones not answered yet */
    size_t nwriting;         /* responses handed to evhttp and not yet written */
    bool stopping;
    int64_t stop_deadline_ms;
    /* /readyz's database verdict, reused for a second so probes never hammer a dead server. */
    int64_t db_checked_ms;
    bool db_ok;
};

/** One request being handled. Owned by the handler from dispatch until gw_reply*(), which
 *  answers it and frees it. */
typedef struct gw_req {
    gw_loop_t *loop;
    gw_conn_t *conn;              /* NULL once the connection is gone */
    struct evhttp_request *evreq; /* NULL once the connection is gone */
    gw_route_t route;
    int64_t start_us;
    char method[8];
    char path[128];
    char request_id[GW_REQUEST_ID_MAX + 1];
    char key_prefix[AUTH_KEY_PREFIX_LEN + 1]; /* for the access log, when authenticated */
} gw_req_t;

/* server.c */
int gw_server_listen(gw_t *gw);
int gw_loop_init(gw_loop_t *loop);
void *gw_loop_run(void *loop);
void gw_loop_teardown(gw_loop_t *loop);
/** Makes @loop's db usable, honouring the reconnect back-off. 0 or -ECONNREFUSED. */
int gw_loop_db(gw_loop_t *loop, db_t **ret_db);
void gw_loop_db_failed(gw_loop_t *loop);
/** Sets this request's thread-local log context (request id). */
void gw_req_enter(gw_req_t *r);
void gw_req_header(gw_req_t *r, const char *name, const char *value);
/** The request's header @name, or NULL. */
const char *gw_req_get_header(gw_req_t *r, const char *name);
/** Answers and frees @r (consumes it; a gone client only gets counted and logged). */
void gw_reply(gw_req_t *r, int status, const char *content_type, const char *body, size_t len);
/** Like gw_reply() with @doc serialised as application/json; steals @doc. */
void gw_reply_json(gw_req_t *r, int status, json_t *doc);
/** Like gw_reply() with @p rendered as application/problem+json; @p stays the caller's. */
void gw_reply_problem(gw_req_t *r, const gw_problem_t *p);
/** gw_problem_set() + gw_reply_problem() in one call. */
void gw_reply_problemf(gw_req_t *r, int status, const char *slug, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

/* ingest.c */
void gw_ingest_handle(gw_req_t *r);
/** At shutdown's deadline: answers every request still waiting on @loop with 503. */
void gw_ingest_abandon(gw_loop_t *loop);
/** At teardown, after the producer is gone: frees what waits for reports that never came. */
void gw_ingest_release(gw_loop_t *loop);

/* routes.c */
void gw_route_healthz(gw_req_t *r);
void gw_route_readyz(gw_req_t *r);
void gw_route_metrics(gw_req_t *r);
