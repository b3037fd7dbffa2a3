/* gateway.h: sb-gateway's internal interfaces, shared by its source files.
 *
 * Tour: main.c reads the configuration and runs the threads; server.c owns the sockets, the
 * per-thread evhttp servers, connection accounting, limits and the reply helpers; ingest.c is
 * POST /sensors/data (authenticate, validate, produce, answer after the broker's ack); body.c
 * decodes and validates request bodies; keys.c looks API keys up and caches them; problem.c
 * renders application/problem+json; routes.c serves /healthz, /readyz and /metrics; metrics.c
 * registers the gateway's Prometheus series; request_id.c sanitises X-Request-Id. The people side
 * of authentication: users.c serves the /auth/ routes (register, token, me, refresh, logout),
 * people.c checks their fields and makes refresh tokens, pwpool.c runs argon2id off the event
 * loops.
 *
 * The API around them: routes.c holds the route table and dispatches (path parameters, 404/405,
 * CORS preflight); auth.c turns a request's Authorization header into a gw_principal_t (an API
 * key or a person's JWT) and applies rate limits; op.c carries an asynchronous request between
 * database callbacks (gw_op_t) and holds the JSON body, query and cursor helpers. Endpoint
 * families each live in one file: admin.c (projects, API keys, members, audit logs), sensors.c
 * (sensors, reading queries, stats, anomalies), dashboard.c, orders.c, openapi.c.
 */
#pragma once

#include <pthread.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <jansson.h>

#include "auth_jwt.h"
#include "auth_key.h"
#include "bus_producer.h"
#include "contract.h"
#include "db.h"
#include "db_pool.h"
#include "svc_config.h"
#include "svc_metrics.h"

struct event;
struct event_base;
struct evhttp;
struct evhttp_bound_socket;
struct evhttp_request;
struct evkeyvalq;
struct cache_async;

/* ---- configuration (main.c) ------------------------------------------------------------- */

typedef struct gw_config {
    char *listen;
    int64_t threads;
    char *pg_dsn;
    char *key_pepper;
    int64_t key_cache_ttl_ms;
    int64_t key_cache_stale_ms;
    int64_t max_batch;
    int64_t max_body_bytes;
    int64_t max_header_bytes;
    int64_t request_timeout_ms;
    int64_t max_connections;
    int64_t produce_timeout_ms;
    char *topic;
    char *log_level;
    char *jwt_secret;
    char *jwt_issuer;
    char *jwt_audience;
    int64_t access_ttl_s;
    int64_t refresh_ttl_s;
    int64_t password_workers;
    char *cors_origins;     /* "", "*", or a comma-separated allow-list */
    int64_t key_rate_per_s; /* token bucket per API key (0: no limit) */
    int64_t key_rate_burst;
    int64_t user_rate_per_s; /* token bucket per person */
    int64_t user_rate_burst;
    char *redis_url; /* dashboard reads; NULL/empty: PostgreSQL only */
    char *orders_topic;
    /* Access tokens (users.c): our signing algorithm, and an optional external OIDC issuer. */
    char *jwt_alg;              /* HS256 (jwt_secret), RS256 or ES256 (jwt_private_key_file) */
    char *jwt_private_key_file; /* PEM */
    char *oidc_issuer;          /* "": no external issuer */
    char *oidc_audience;
    char *oidc_jwks_file;
    char *oidc_org_claim;   /* the claim holding our organization id */
    char *oidc_roles_claim; /* the claim listing the issuer's groups */
    char *oidc_role_map;    /* "group=role,...": which groups mean admin, operator, viewer */
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
    unsigned scopes;          /* GW_SCOPE_* */
    int64_t expires_us;       /* microseconds since the epoch; INT64_MAX = never */
    int64_t rate_limit_per_s; /* the key's own rate (burst twice that); 0: key_rate_per_s */
    char secret_hash[AUTH_KEY_HASH_HEX + 1];
    char org_id[37];
    char project_id[37];
} gw_key_t;

typedef struct gw_keycache gw_keycache_t;

/** Longest cache key: an API key prefix, or "p:" + a project UUID (project lookups). */
#define GW_KEYCACHE_KEY_MAX 40

/** A cache of lookups, shared by every thread (one mutex). Entries are fresh for @ttl_ms and
 *  kept @stale_ms longer for gw_keycache_get_stale(); at most @max_entries are kept. 0 or
 *  -ENOMEM. */
int gw_keycache_new(int64_t ttl_ms, int64_t stale_ms, size_t max_entries,
                    gw_keycache_t **ret_cache);
void gw_keycache_free(gw_keycache_t *cache);

/** Copies a fresh entry (positive or negative) for @prefix into @ret_key and returns true;
 *  false when there is none or it is older than the TTL at @now_ms (monotonic). */
bool gw_keycache_get(gw_keycache_t *cache, const char *prefix, int64_t now_ms, gw_key_t *ret_key);

/** Like gw_keycache_get() for an entry younger than @max_age_ms (past its TTL): what the
 *  database said last, for when it cannot be asked. */
bool gw_keycache_get_stale(gw_keycache_t *cache, const char *prefix, int64_t now_ms,
                           int64_t max_age_ms, gw_key_t *ret_key);

/** Stores (or replaces) the entry for @prefix, stamped @now_ms. When the cache is full, expired
 *  entries are dropped first; if none are, the entry is not stored. */
void gw_keycache_put(gw_keycache_t *cache, const char *prefix, const gw_key_t *key, int64_t now_ms);

/** Number of entries held (fresh or not). */
size_t gw_keycache_size(gw_keycache_t *cache);

/** Registers the lookup statement on @db. 0 or a db_prepare() error. */
int gw_key_prepare(db_t *db);

/** Looks @prefix up. 0 with ret_key->found telling whether it exists, or a db_exec() error. */
int gw_key_fetch(db_t *db, const char *prefix, gw_key_t *ret_key);

/** Registers the project lookup (project id -> organization) on @db. */
int gw_project_prepare(db_t *db);
/** Looks project @project_id up: 0 with ret->found, ret->org_id and ret->project_id, or a
 *  db_exec() error. For people posting readings, who name their project per request. */
int gw_project_fetch(db_t *db, const char *project_id, gw_key_t *ret);

#define GW_KEY_TOUCH_INTERVAL_MS 60000

struct gw_loop;

/** Records that key @prefix (of organization @org_id) authenticated a request: at most once per
 *  GW_KEY_TOUCH_INTERVAL_MS per key, an UPDATE of api_keys.last_used_at goes out on @loop's pool.
 *  Nothing waits for it; a failure is logged. */
void gw_key_touch(struct gw_loop *loop, const char *org_id, const char *prefix);

/** Parses a PostgreSQL text[] literal ("{ingest,read}") into GW_SCOPE_* bits. */
unsigned gw_scopes_parse(const char *literal);

/* ---- people: field checks and refresh tokens (people.c) ---------------------------------- */

#define GW_PASSWORD_MIN      12  /* bytes */
#define GW_EMAIL_MAX         254 /* bytes */
#define GW_NAME_MAX          200 /* bytes */
#define GW_REFRESH_TOKEN_LEN 43  /* base64url characters of 32 random bytes, no padding */
#define GW_REFRESH_HASH_HEX  64  /* SHA-256 in hex */

/** NULL when @email looks deliverable enough to be an account name (one '@', a local part and a
 *  domain, no spaces or control characters, at most GW_EMAIL_MAX bytes), else a static reason. */
const char *gw_people_email_check(const char *email);
/** NULL when @slug follows organizations.slug's rule (^[a-z0-9][a-z0-9-]{0,62}$), else a reason. */
const char *gw_people_slug_check(const char *slug);
/** NULL when @password's length is within GW_PASSWORD_MIN..AUTH_PASSWORD_MAX_LEN bytes and it has
 *  no NUL byte (@len is its length as received), else a static reason. */
const char *gw_people_password_check(const char *password, size_t len);
/** NULL when @name is 1..GW_NAME_MAX bytes without control characters, else a static reason. */
const char *gw_people_name_check(const char *name);

/** A new refresh token: 32 random bytes in base64url (@ret_token, NUL-terminated) and its
 *  SHA-256 in hex (@ret_hash), the only form that is stored. 0 or -errno from getrandom. */
int gw_refresh_token_new(char ret_token[GW_REFRESH_TOKEN_LEN + 1],
                         char ret_hash[GW_REFRESH_HASH_HEX + 1]);
/** SHA-256 of @len bytes of @token, in lower-case hex. */
void gw_refresh_token_hash(const char *token, size_t len, char ret_hash[GW_REFRESH_HASH_HEX + 1]);

/* ---- password hashing off the loops (pwpool.c) ------------------------------------------- */

typedef struct gw_pwpool gw_pwpool_t;

/**
 * Runs on the submitting loop's thread when the work is done. @rc: for a hash 0 with @phc the
 * new PHC string (owned by the callback: free() it), for a verification 0 (match) or -EACCES
 * (mismatch) with @phc NULL; otherwise an auth_password error, or -ECANCELED when the pool was
 * freed before the job ran.
 */
typedef void (*gw_pwpool_cb)(int rc, char *phc, void *opaque);

/** Starts @nworkers threads (1..64) that take at most @max_queue waiting jobs. 0, -EINVAL,
 *  -ENOMEM or -errno from pthread_create. Caller owns *@ret_pool (gw_pwpool_free()). */
int gw_pwpool_new(size_t nworkers, size_t max_queue, gw_pwpool_t **ret_pool);

/** Lets running jobs finish, joins the threads, and completes every job still queued with
 *  -ECANCELED (its callback runs the next time its loop runs). Accepts NULL. */
void gw_pwpool_free(gw_pwpool_t *pool);

/**
 * Queues hashing @password (@phc NULL) or verifying it against @phc. Both strings are copied
 * (the copy of the password is wiped when the job ends). @cb runs once, on @base's thread.
 * 0 when queued, -EAGAIN when max_queue jobs wait already, -ENOMEM.
 */
int gw_pwpool_submit(gw_pwpool_t *pool, struct event_base *base, const char *password,
                     const char *phc, gw_pwpool_cb cb, void *opaque);

/* ---- metrics (metrics.c) ---------------------------------------------------------------- */

typedef enum gw_route {
    GW_ROUTE_OTHER, /* 404s, 405s, and answers given before routing (408, 503 at the cap) */
    GW_ROUTE_HEALTHZ,
    GW_ROUTE_READYZ,
    GW_ROUTE_METRICS,
    GW_ROUTE_OPENAPI,
    GW_ROUTE_DOCS,
    GW_ROUTE_PREFLIGHT, /* OPTIONS on any route (CORS) */
    GW_ROUTE_AUTH_REGISTER,
    GW_ROUTE_AUTH_TOKEN,
    GW_ROUTE_AUTH_ME,
    GW_ROUTE_AUTH_REFRESH,
    GW_ROUTE_AUTH_LOGOUT,
    GW_ROUTE_INGEST,
    GW_ROUTE_READINGS_LIST,
    GW_ROUTE_SENSORS_CREATE,
    GW_ROUTE_SENSORS_LIST,
    GW_ROUTE_SENSORS_GET,
    GW_ROUTE_SENSORS_STATS,
    GW_ROUTE_ANOMALIES_COUNT,
    GW_ROUTE_ANOMALIES_LIST,
    GW_ROUTE_ORDERS_CREATE,
    GW_ROUTE_ORDERS_LIST,
    GW_ROUTE_ORDERS_GET,
    GW_ROUTE_ORDERS_STATUS,
    GW_ROUTE_DASHBOARD_METRICS,
    GW_ROUTE_DASHBOARD_HEALTH,
    GW_ROUTE_PROJECTS_CREATE,
    GW_ROUTE_PROJECTS_LIST,
    GW_ROUTE_KEYS_CREATE,
    GW_ROUTE_KEYS_LIST,
    GW_ROUTE_KEYS_REVOKE,
    GW_ROUTE_MEMBERS_LIST,
    GW_ROUTE_MEMBERS_ADD,
    GW_ROUTE_MEMBERS_REMOVE,
    GW_ROUTE_AUDIT_LIST,
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
    svc_metric_t *rate_limited;
    /* Requests by route and status code, registered on first use. */
    _Atomic(svc_metric_t *) requests[GW_ROUTE_COUNT][600];
} gw_metrics_t;

int gw_metrics_init(gw_metrics_t *m, svc_metrics_t *registry);
/** Counts one answered request and observes its latency. */
void gw_metrics_request(gw_metrics_t *m, gw_route_t route, int status, double seconds);
/** The route's label: "GET /sensors/{id}" (routes.c, from the route table). */
const char *gw_route_name(gw_route_t route);

/* ---- the process and its loops (main.c, server.c) ---------------------------------------- */

typedef struct gw gw_t;
typedef struct gw_loop gw_loop_t;
typedef struct gw_ratelimit gw_ratelimit_t;
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
    /* People's authentication (users.c): the signing key, a verifier pinned to HS256 and our
     * issuer and audience, the argon2id workers, and a hash of a random password that unknown
     * emails are verified against, so that they cost what a wrong password costs. */
    auth_jwt_key_t *jwt_key;
    auth_jwt_verifier_t *jwt_verifier;
    auth_jwt_verifier_t *oidc_verifier; /* an external issuer's tokens; NULL when not configured */
    gw_pwpool_t *pwpool;
    char *dummy_phc;
    gw_ratelimit_t *ratelimit; /* token buckets per API key and per person (auth.c) */
    char **cors_origins;       /* NULL-terminated allow-list; NULL: no CORS; {"*"}: any */
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
    db_pool_t *pool;           /* asynchronous connections for every route but ingest */
    struct cache_async *redis; /* dashboard reads; NULL without redis_url */
    int64_t db_retry_at_ms;    /* after a failed connect, fail fast until then */
    struct event *stop_ev;
    struct event *adopt_ev;
    struct event *drain_ev;
    struct event *resume_ev; /* re-enables accepting after EMFILE */
    gw_conn_t *fresh;        /* accepted, not yet adopted (see server.c) */
    gw_pending_t *pending;   /* ingest requests with delivery reports due */
    size_t nwaiting;         /* of those, and of /auth/ requests in flight, the ones not answered */
    size_t nwriting;         /* responses handed to evhttp and not yet written */
    bool stopping;
    int64_t stop_deadline_ms;
    /* /readyz's database verdict, reused for a second so probes never hammer a dead server. */
    int64_t db_checked_ms;
    bool db_ok;
};

#define GW_MAX_PARAMS 2
#define GW_PARAM_MAX  127

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
    char key_prefix[AUTH_KEY_PREFIX_LEN + 1];     /* for the access log, when authenticated */
    char params[GW_MAX_PARAMS][GW_PARAM_MAX + 1]; /* path parameters, in pattern order */
    struct evkeyvalq *query;                      /* parsed on first gw_req_query() */
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
/** Answers and frees @r (consumes it; a gone client only gets counted and logged).
 *  @content_type NULL sends no Content-Type (for 204). */
void gw_reply(gw_req_t *r, int status, const char *content_type, const char *body, size_t len);
/** Like gw_reply() with @doc serialised as application/json; steals @doc. */
void gw_reply_json(gw_req_t *r, int status, json_t *doc);
/** Like gw_reply() with @p rendered as application/problem+json; @p stays the caller's. */
void gw_reply_problem(gw_req_t *r, const gw_problem_t *p);
/** gw_problem_set() + gw_reply_problem() in one call. */
void gw_reply_problemf(gw_req_t *r, int status, const char *slug, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
void gw_reply_problemv(gw_req_t *r, int status, const char *slug, const char *fmt, va_list ap)
    __attribute__((format(printf, 4, 0)));

/** The query parameter @name of @r (percent-decoded), or NULL. The query string is parsed once;
 *  a malformed one counts as empty. */
const char *gw_req_query(gw_req_t *r, const char *name);

/* ingest.c */
void gw_ingest_handle(gw_req_t *r);
/** At shutdown's deadline: answers every request still waiting on @loop with 503. */
void gw_ingest_abandon(gw_loop_t *loop);
/** At teardown, after the producer is gone: frees what waits for reports that never came. */
void gw_ingest_release(gw_loop_t *loop);

/* users.c */
/** People's auth routes: POST /auth/register, /auth/token, /auth/refresh, /auth/logout and
 *  GET /auth/me (the route in r->route picks which; the method is already checked). */
void gw_auth_handle(gw_req_t *r);
/** Makes the signing key, verifier, password workers and dummy hash on @gw. 0 or -errno
 *  (logged). */
int gw_auth_init(gw_t *gw);
/** Stops the password workers (before the loops are torn down). */
void gw_auth_stop(gw_t *gw);
/** Frees what gw_auth_init() made. */
void gw_auth_free(gw_t *gw);
/** Verifies a person's access token: ours, or else the external OIDC issuer's when one is
 *  configured. Like auth_jwt_verify(); *@ret_reason is the more telling of the two refusals. */
int gw_jwt_verify(gw_t *gw, const char *token, size_t len, auth_jwt_verified_t **ret_claims,
                  const char **ret_reason);

/* ---- callers (auth.c) --------------------------------------------------------------------- */

typedef enum gw_principal_kind {
    GW_PRINCIPAL_KEY = 1 << 0,  /* a machine: Bearer lok_<prefix>.<secret> */
    GW_PRINCIPAL_USER = 1 << 1, /* a person: Bearer <JWT access token> */
} gw_principal_kind_t;

/** Who is calling, once authenticated. Every query a handler makes is scoped by org_id (and RLS
 *  enforces it: gw_op_query() runs as this organization). */
typedef struct gw_principal {
    gw_principal_kind_t kind;
    char org_id[37];
    char project_id[37]; /* an API key's project; "" for a person (they name one per request) */
    char subject[64];    /* a person's user id, or "key:<prefix>" (audit logs' actor) */
    unsigned scopes;     /* GW_SCOPE_* (keys) */
    unsigned role;       /* one AUTH_ROLE_* bit (people) */
} gw_principal_t;

/**
 * Authenticates @r's "Authorization: Bearer ..." as one of the kinds in @accept (a token starting
 * "lok_" is an API key, anything else a JWT), then takes one token from the caller's rate-limit
 * bucket. 0 with @ret filled, or a negative errno after answering: 401 (missing, malformed,
 * unknown, revoked, expired, bad signature or claims; with WWW-Authenticate), 429 (rate limit,
 * with Retry-After) or 503 (the key store is unreachable).
 */
int gw_authenticate(gw_req_t *r, unsigned accept, gw_principal_t *ret);

/**
 * Authorizes an authenticated caller: an API key needs every bit of @scopes (0: keys refused), a
 * person needs a role at least @min_role (admin > operator > viewer; 0: people refused).
 * 0, or -EACCES after answering 403 naming what is missing.
 */
int gw_authorize(gw_req_t *r, const gw_principal_t *who, unsigned scopes, unsigned min_role);

/** gw_authenticate() + gw_authorize() with @accept derived from which of @scopes/@min_role is
 *  set. */
int gw_auth_require(gw_req_t *r, unsigned scopes, unsigned min_role, gw_principal_t *ret);

/** "admin", "operator", "viewer" for one AUTH_ROLE_* bit; NULL otherwise. And back (0 when
 *  unknown). */
const char *gw_role_name(unsigned role);
unsigned gw_role_parse(const char *name);

/**
 * Token buckets keyed by caller, shared by every loop (striped locks). Each bucket refills at
 * @rate per second up to @burst. Idle buckets are dropped once full again.
 */
int gw_ratelimit_new(gw_ratelimit_t **ret);
void gw_ratelimit_free(gw_ratelimit_t *rl);
/** Takes one token from @key's bucket at @now_ms (monotonic). 0 when granted; otherwise -EAGAIN
 *  with the milliseconds until a token is due in @ret_wait_ms. @rate 0 always grants. */
int gw_ratelimit_take(gw_ratelimit_t *rl, const char *key, int64_t rate, int64_t burst,
                      int64_t now_ms, int64_t *ret_wait_ms);

/* ---- asynchronous requests (op.c) --------------------------------------------------------- */

#define GW_DB_TIMEOUT_MS 5000

typedef struct gw_op gw_op_t;

/**
 * A request being served across callbacks. Handlers embed it as the first member of their own
 * state (struct sensors_op { gw_op_t op; ... }) and allocate with gw_op_new(). Every path ends in
 * gw_op_reply*() or gw_op_fail*(), which answer @r and free the op (calling @cleanup first).
 * Until then the request counts in loop->nwaiting, so that shutdown waits for it.
 */
struct gw_op {
    gw_req_t *r;
    gw_loop_t *loop;
    gw_principal_t who;
    void (*cleanup)(gw_op_t *op); /* optional: frees what the handler hung on its state */
};

/** Allocates @size zeroed bytes (at least sizeof(gw_op_t)) starting with a gw_op_t for @r and
 *  @who (copied; may be NULL for unauthenticated routes). NULL after answering 500. */
void *gw_op_new(gw_req_t *r, const gw_principal_t *who, size_t size);
/** Answers @status with @doc (stolen) and frees @op. */
void gw_op_reply_json(gw_op_t *op, int status, json_t *doc);
/** Answers @status with @len bytes of @body (copied) and frees @op. */
void gw_op_reply_raw(gw_op_t *op, int status, const char *content_type, const char *body,
                     size_t len);
/** Answers with @status and no body (204) and frees @op. */
void gw_op_reply_empty(gw_op_t *op, int status);
/** Answers a problem and frees @op. */
void gw_op_fail(gw_op_t *op, int status, const char *slug, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
/** Answers @p (the caller's; cleared here) and frees @op. */
void gw_op_fail_problem(gw_op_t *op, gw_problem_t *p);
/**
 * A query callback's failure, mapped to an answer (and @op freed; @res is not cleared):
 * unique violation 409 conflict, foreign key 422/404-ish "invalid-reference", data exception 422,
 * RLS/privilege refusal 404, timeouts and unreachable database 503, anything else 500 (logged
 * with the server's primary message only: DETAIL lines can quote row values).
 */
void gw_op_db_failed(gw_op_t *op, int err, PGresult *res);
/** True (after answering and freeing @op) when the client is gone. Call first in callbacks. */
bool gw_op_gone(gw_op_t *op);
/**
 * Sends @sql on the loop's pool as op->who's organization (app.org_id, see db_pool.h: row-level
 * security scopes every statement to it). With no principal (org_id ""), as no organization.
 * Returns 0 (then @cb runs later with @op as its opaque) or a negative errno after answering.
 */
int gw_op_query(gw_op_t *op, const char *sql, int nparams, const char *const *params,
                db_pool_cb cb);

/* JSON bodies and fields (op.c). */

/** @r's body as one JSON object (Content-Type application/json or none), or NULL after
 *  answering 400 malformed-json, 415 or 422 invalid-body. */
json_t *gw_body_object(gw_req_t *r);
/** Appends {"pointer": "/<field>", "reason": ...} to @errors. */
void gw_field_error(json_t *errors, const char *field, const char *reason);
/** The string member @key of @doc, or NULL with an error noted (type, or absent when
 *  @required). */
const char *gw_field_str(json_t *doc, const char *key, bool required, json_t *errors);
/** Answers 422 invalid-fields naming every error and returns true; false (and @errors freed)
 *  when there is none. Steals @errors. */
bool gw_fields_rejected(gw_req_t *r, json_t *errors);
/** True when Content-Type @ct is the media type @want (parameters ignored). */
bool gw_content_type_is(const char *ct, const char *want);
/** True for a canonical lower-case UUID. */
bool gw_is_uuid(const char *s);

/* Query parameters (op.c). Each returns 0 with the value (or @def when absent), or -EINVAL
 * after answering 400 invalid-parameter naming @name and what was expected. */
int gw_query_int(gw_req_t *r, const char *name, int64_t def, int64_t min, int64_t max,
                 int64_t *ret);
/** An RFC 3339 timestamp, as microseconds since the epoch. */
int gw_query_time(gw_req_t *r, const char *name, int64_t def_us, int64_t *ret_us);
/** A UUID (canonical, lower-case), or NULL in @ret when absent. */
int gw_query_uuid(gw_req_t *r, const char *name, const char **ret);

/* Keyset pagination: a cursor is an opaque base64url string wrapping a small JSON array of the
 * last row's sort key. Decoding never trusts it beyond shape: it is only ever a bound parameter. */

/** A malloc'd cursor for @key (not stolen), or NULL on ENOMEM. */
char *gw_cursor_encode(json_t *key);
/** The "cursor" query parameter: 0 with @ret_key NULL (absent) or a new reference to a JSON
 *  array of @n elements; -EINVAL after answering 400 invalid-cursor. */
int gw_query_cursor(gw_req_t *r, size_t n, json_t **ret_key);

/* ---- endpoint families (each file's handlers; the method and path are checked already) ---- */

/* admin.c */
void gw_projects_create(gw_req_t *r);
void gw_projects_list(gw_req_t *r);
void gw_keys_create(gw_req_t *r);
void gw_keys_list(gw_req_t *r);
void gw_keys_revoke(gw_req_t *r); /* params[0]: key id */
void gw_members_list(gw_req_t *r);
void gw_members_add(gw_req_t *r);
void gw_members_remove(gw_req_t *r); /* params[0]: user id */
void gw_audit_list(gw_req_t *r);

/* sensors.c */
void gw_sensors_create(gw_req_t *r);
void gw_sensors_list(gw_req_t *r);
void gw_sensors_get(gw_req_t *r); /* params[0]: sensor id */
void gw_readings_list(gw_req_t *r);
void gw_sensors_stats(gw_req_t *r);
void gw_anomalies_count(gw_req_t *r);
void gw_anomalies_list(gw_req_t *r);

/* dashboard.c */
void gw_dashboard_metrics(gw_req_t *r);
void gw_dashboard_health(gw_req_t *r);

/* orders.c */
void gw_orders_create(gw_req_t *r);
void gw_orders_list(gw_req_t *r);
void gw_orders_get(gw_req_t *r);    /* params[0]: order id */
void gw_orders_status(gw_req_t *r); /* params[0]: order id */

/* openapi.c */
void gw_openapi_json(gw_req_t *r);
void gw_openapi_docs(gw_req_t *r);

/* routes.c */
/** Routes @r by method and path (filling r->route and r->params) and calls its handler; answers
 *  404, 405 (with Allow) or a CORS preflight itself. */
void gw_route_dispatch(gw_req_t *r, const char *method);
/** Adds the CORS response headers for @r's Origin when it is allowed (every answer). */
void gw_cors_headers(gw_req_t *r);
void gw_route_healthz(gw_req_t *r);
void gw_route_readyz(gw_req_t *r);
void gw_route_metrics(gw_req_t *r);
